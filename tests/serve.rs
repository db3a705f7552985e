//! `isomount serve` against real initiators: libiscsi's tools and its conformance suite (compared
//! with tgtd on the same read-only image), a raw-PDU client built on the shared codec (byte-exact
//! reads with and without digests, masking by source address, hostile PDUs), and CHAP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::initiator::{connect_from, read10, RawInitiator};
use common::serve::{Serve, PREFIX};
use isomount::iscsi::pdu::Bhs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn sample_iso() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample.iso")
}

#[test]
fn libiscsi_tools_list_and_describe_every_lun() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "disk.img", 3 << 20, 7);
    let iso = sample_iso();
    let serve = Serve::start(&[&disk, &iso], &[]);

    let (ok, out) =
        run(Command::new("iscsi-ls").args(["-s", &format!("iscsi://{}", serve.portal)]));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{PREFIX}:disk")), "{out}");
    assert!(out.contains(&format!("{PREFIX}:sample")), "{out}");
    assert!(
        out.contains("Type:DISK") || out.contains("Type:DIRECT_ACCESS"),
        "{out}"
    );
    assert!(out.contains("Type:MMC"), "{out}");

    let (ok, out) = run(Command::new("iscsi-inq").arg(serve.url("disk")));
    assert!(ok, "{out}");
    assert!(out.contains("Vendor:ISOMOUNT"), "{out}");
    let (ok, out) =
        run(Command::new("iscsi-inq").args(["-e", "1", "-c", "0xb0", &serve.url("disk")]));
    assert!(ok, "{out}");

    for (stem, path) in [("disk", &disk), ("sample", &iso)] {
        let (ok, out) = run(Command::new("iscsi-readcapacity16").arg(serve.url(stem)));
        assert!(ok, "{out}");
        let size = std::fs::metadata(path).unwrap().len();
        assert!(out.contains(&format!("Total size:{size}")), "{stem}: {out}");
    }
}

#[test]
fn iscsi_perf_runs_against_serve() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "perf.img", 8 << 20, 3);
    let serve = Serve::start(&[&disk], &[]);
    let (ok, out) = run(Command::new("iscsi-perf").args(["-t", "2", &serve.url("perf")]));
    assert!(ok, "{out}");
    assert!(out.contains("iops average"), "{out}");
}

/// Failed-test count from iscsi-test-cu's "Run Summary" tests line.
fn cu_failures(out: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("tests"))
        .unwrap_or_else(|| panic!("no summary in iscsi-test-cu output:\n{out}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    // tests  Total  Ran  Passed  Failed  Inactive
    fields[4].parse().expect("failed count")
}

#[test]
fn iscsi_test_cu_fails_no_more_against_serve_than_against_tgtd() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "cu.img", 16 << 20, 11);
    let serve = Serve::start(&[&disk], &[]);
    let tgtd_iqn = "iqn.2026-01.test.serve:cu";
    let tgtd = common::Tgtd::start(
        "serve-test-cu",
        &[common::TargetSpec::new(
            tgtd_iqn,
            vec![common::LunSpec::disk(&disk)],
        )],
    );
    tgtd.tgtadm(&[
        "--op",
        "update",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
        "--params",
        "readonly=1",
    ]);
    let cu = |url: &str| {
        let (_, out) = run(Command::new("timeout").args([
            "300",
            "iscsi-test-cu",
            "-i",
            "iqn.2026-01.test:cu",
            url,
        ]));
        out
    };
    let ours = cu_failures(&cu(&serve.url("cu")));
    let theirs = cu_failures(&cu(&tgtd.url(tgtd_iqn, 1)));
    println!("iscsi-test-cu failures: serve {ours}, tgtd {theirs}");
    assert!(ours <= theirs, "serve failed {ours} tests, tgtd {theirs}");
}

#[test]
fn chap_one_way_and_mutual() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "chap.img", 1 << 20, 5);
    let secret = dir.path().join("secret");
    let target_secret = dir.path().join("target-secret");
    std::fs::write(&secret, "initiator-secret-1\n").unwrap();
    std::fs::write(&target_secret, "target-secret-22\n").unwrap();
    for f in [&secret, &target_secret] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let serve = Serve::start(
        &[&disk],
        &[
            "--chap-user",
            "alice",
            "--chap-secret-file",
            secret.to_str().unwrap(),
            "--chap-target-user",
            "mirror",
            "--chap-target-secret-file",
            target_secret.to_str().unwrap(),
        ],
    );
    let inq = |env: &[(&str, &str)]| {
        let mut cmd = Command::new("iscsi-inq");
        cmd.arg(serve.url("chap"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let (ok, out) = inq(&[]);
    assert!(!ok, "no credentials must fail: {out}");
    let (ok, out) = inq(&[
        ("LIBISCSI_CHAP_USERNAME", "alice"),
        ("LIBISCSI_CHAP_PASSWORD", "wrong-secret-000"),
    ]);
    assert!(!ok, "a wrong secret must fail: {out}");
    let (ok, out) = inq(&[
        ("LIBISCSI_CHAP_USERNAME", "alice"),
        ("LIBISCSI_CHAP_PASSWORD", "initiator-secret-1"),
    ]);
    assert!(ok, "one-way CHAP: {out}");
    let (ok, out) = inq(&[
        ("LIBISCSI_CHAP_USERNAME", "alice"),
        ("LIBISCSI_CHAP_PASSWORD", "initiator-secret-1"),
        ("LIBISCSI_CHAP_TARGET_USERNAME", "mirror"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", "target-secret-22"),
    ]);
    assert!(ok, "mutual CHAP: {out}");
    let (ok, out) = inq(&[
        ("LIBISCSI_CHAP_USERNAME", "alice"),
        ("LIBISCSI_CHAP_PASSWORD", "initiator-secret-1"),
        ("LIBISCSI_CHAP_TARGET_USERNAME", "mirror"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", "not-the-target-secret"),
    ]);
    assert!(
        !ok,
        "mutual CHAP must catch a target with the wrong secret: {out}"
    );
}

#[test]
fn a_world_readable_secret_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "d.img", 1 << 20, 1);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "very-secret-value\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = common::isomount()
        .arg("serve")
        .arg(&disk)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--chap-user",
            "u",
            "--chap-secret-file",
        ])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains("very-secret-value"), "{err}");
}

// ---- a raw client on the shared codec ----

async fn raw_from(portal: &str, source: &str) -> RawInitiator {
    RawInitiator::new(connect_from(portal, source).await.unwrap())
}

async fn read_all(raw: &mut RawInitiator, block: u32, size: u64) -> Vec<u8> {
    let blocks = (size / u64::from(block)) as u32;
    let mut out = Vec::with_capacity(size as usize);
    let mut lba = 0u32;
    let mut step = 1u32;
    while lba < blocks {
        let n = step.min(blocks - lba);
        let (done, data) = raw
            .command(&read10(lba, n as u16), n * block)
            .await
            .unwrap();
        assert_eq!(done.status, 0);
        out.extend_from_slice(&data);
        lba += n;
        step = step % 97 + 13; // varied sizes: some below, some above MaxBurstLength
    }
    out
}

/// The whole image in reads of 1 MiB and odd sizes, each Data-In piece put where its offset
/// says (the load client's way: segments streamed, not gathered); each range is first read and
/// discarded unseen, which must leave the session in step for the next read.
async fn read_all_streamed(raw: &mut RawInitiator, block: u32, size: u64) -> Vec<u8> {
    let blocks = (size / u64::from(block)) as u32;
    let mut out = vec![0u8; size as usize];
    let mut lba = 0u32;
    let mut big = true;
    while lba < blocks {
        let step = if big { (1 << 20) / block } else { 77 };
        let n = step.min(blocks - lba);
        let start = (lba * block) as usize;
        let want = n * block;
        let discarded = raw
            .command_discarding(&read10(lba, n as u16), want)
            .await
            .unwrap();
        assert_eq!((discarded.status, discarded.data_len), (0, want as usize));
        let done = raw
            .command_streamed(&read10(lba, n as u16), want, |at, data| {
                let from = start + at as usize;
                out[from..from + data.len()].copy_from_slice(data);
            })
            .await
            .unwrap();
        assert_eq!((done.status, done.data_len), (0, want as usize));
        lba += n;
        big = !big;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reads_are_byte_exact_with_and_without_digests() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "exact.img", 2 << 20, 9);
    let iso = sample_iso();
    let serve = Serve::start(&[&disk, &iso], &[]);
    for (stem, path, block) in [("exact", &disk, 512u32), ("sample", &iso, 2048)] {
        let want = std::fs::read(path).unwrap();
        for digests in [false, true] {
            let mut raw = raw_from(&serve.portal, "127.0.0.1").await;
            let name = format!("{PREFIX}:{stem}");
            assert_eq!(raw.login_normal(&name, digests).await.unwrap(), (0, 0));
            assert_eq!(raw.framing.header_digest, digests);
            let got = read_all(&mut raw, block, want.len() as u64).await;
            assert!(
                got == want,
                "{stem} (digests {digests}) differs from the file"
            );
            // Large segments (the image's data sent from the file where the system can),
            // streamed by the client.
            let mut raw = raw_from(&serve.portal, "127.0.0.1").await;
            raw.max_recv = 256 * 1024;
            assert_eq!(raw.login_normal(&name, digests).await.unwrap(), (0, 0));
            let got = read_all_streamed(&mut raw, block, want.len() as u64).await;
            assert!(
                got == want,
                "{stem} (digests {digests}, streamed) differs from the file"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residuals_sense_and_write_protection() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "res.img", 1 << 20, 2);
    let want = std::fs::read(&disk).unwrap();
    let serve = Serve::start(&[&disk], &[]);
    let mut raw = raw_from(&serve.portal, "127.0.0.1").await;
    assert_eq!(
        raw.login_normal(&format!("{PREFIX}:res"), false)
            .await
            .unwrap(),
        (0, 0)
    );
    // The initiator expects less than the command transfers: it gets what it asked for.
    let (done, data) = raw.command(&read10(4, 8), 1000).await.unwrap();
    assert_eq!(done.status, 0);
    assert_eq!(data, &want[2048..3048]);
    // Past the end: CHECK CONDITION, ILLEGAL REQUEST, LBA OUT OF RANGE.
    let (done, _) = raw.command(&read10(2048, 1), 512).await.unwrap();
    assert_eq!(done.status, 2);
    assert_eq!(done.sense_code(), Some((0x05, 0x21)));
    // WRITE(10): DATA PROTECT, WRITE PROTECTED.
    let mut write = read10(0, 1);
    write[0] = 0x2a;
    let (done, _) = raw.command(&write, 0).await.unwrap();
    assert_eq!(done.status, 2);
    assert_eq!(done.sense_code(), Some((0x07, 0x27)));
    // An unknown opcode: INVALID COMMAND OPERATION CODE.
    let (done, _) = raw.command(&[0xc7, 0, 0, 0, 0, 0], 0).await.unwrap();
    assert_eq!(done.status, 2);
    assert_eq!(done.sense_code(), Some((0x05, 0x20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masking_hides_targets_from_disallowed_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "masked.img", 1 << 20, 4);
    let serve = Serve::start(&[&disk], &["--allow", "127.0.0.1/32"]);
    let name = format!("{PREFIX}:masked");

    let mut denied = raw_from(&serve.portal, "127.0.0.2").await;
    assert_eq!(
        denied.login_normal(&name, false).await.unwrap(),
        (2, 2),
        "authorization failure for 127.0.0.2"
    );

    for (source, visible) in [("127.0.0.2", false), ("127.0.0.1", true)] {
        let mut raw = raw_from(&serve.portal, source).await;
        assert_eq!(raw.login_discovery().await.unwrap(), (0, 0));
        let pairs = raw.send_targets("All").await.unwrap();
        let seen = pairs.iter().any(|(k, v)| k == "TargetName" && *v == name);
        assert_eq!(seen, visible, "{source}: {pairs:?}");
    }

    let mut allowed = raw_from(&serve.portal, "127.0.0.1").await;
    assert_eq!(allowed.login_normal(&name, false).await.unwrap(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pdus_get_reject_and_the_target_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "hostile.img", 1 << 20, 6);
    let serve = Serve::start(&[&disk], &[]);
    let name = format!("{PREFIX}:hostile");

    // Garbage instead of a login: the connection is closed, nothing else.
    let mut junk = connect_from(&serve.portal, "127.0.0.1").await.unwrap();
    junk.write_all(&[0xffu8; 200]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), junk.read_to_end(&mut sink)).await;

    // An unknown opcode in the full feature phase: Reject carrying its header.
    let mut raw = raw_from(&serve.portal, "127.0.0.1").await;
    assert_eq!(raw.login_normal(&name, false).await.unwrap(), (0, 0));
    let mut header = [0u8; 48];
    header[0] = 0x1c;
    header[16..20].copy_from_slice(&77u32.to_be_bytes());
    raw.stream.write_all(&header).await.unwrap();
    let pdu = raw.recv().await.unwrap().expect("reject");
    let Bhs::Reject(reject) = pdu.bhs else {
        panic!("expected Reject, got {:?}", pdu.bhs)
    };
    assert_eq!(reject.reason, 0x05);
    assert_eq!(pdu.data.len(), 48);
    assert_eq!(pdu.data[0] & 0x3f, 0x1c);
    // The session still works.
    let (done, data) = raw.command(&read10(0, 1), 512).await.unwrap();
    assert_eq!(done.status, 0);
    assert_eq!(data.len(), 512);
    // A data segment larger than we accept ends the connection, not the target.
    let mut big = [0u8; 48];
    big[0] = 0x01;
    big[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    raw.stream.write_all(&big).await.unwrap();
    assert!(raw.recv().await.unwrap().is_none(), "connection closed");

    let mut again = raw_from(&serve.portal, "127.0.0.1").await;
    assert_eq!(again.login_normal(&name, false).await.unwrap(), (0, 0));
}

#[test]
fn our_initiator_reads_serve_byte_exact_and_discovers_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "ours.img", 5 << 20, 21);
    let iso = sample_iso();
    let serve = Serve::start(&[&disk, &iso], &[]);
    for (stem, path) in [("ours", &disk), ("sample", &iso)] {
        let out = common::isomount()
            .args(["cat", &serve.url(stem)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == std::fs::read(path).unwrap(), "{stem} differs");
    }
    let out = common::isomount()
        .args(["discover", "-l", &serve.portal])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{PREFIX}:ours")), "{text}");
    assert!(text.contains(&format!("{PREFIX}:sample")), "{text}");
}

#[test]
fn demo_once_shows_the_sample_cds_files() {
    let out = common::isomount()
        .args(["demo", "--once"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("README.TXT  (332 bytes)"), "{text}");
    assert!(text.contains("pattern.bin  (40960 bytes)"), "{text}");
    assert!(text.contains("iscsifs.txt"), "{text}");
}

/// A catalog entry for `image` served by `portal` (as `isomount publish` writes it).
fn publish(dir: &Path, name: &str, image: &Path, target: &str, portal: &str) -> PathBuf {
    use isomount::catalog::{upsert_entry, PublishedEntry};
    use isomount::manifest::Manifest;
    let bytes = std::fs::read(image).unwrap();
    let manifest =
        Manifest::build(&bytes[..], 64 << 10, isomount::manifest::HashAlg::Sha256).unwrap();
    std::fs::write(dir.join(format!("{name}.manifest")), manifest.to_bytes()).unwrap();
    let catalog = dir.join("catalog.toml");
    let entry = PublishedEntry {
        name: name.into(),
        description: None,
        target: Some(target.into()),
        lun: 0,
        portals: vec![portal.into()],
        urls: Vec::new(),
        size: bytes.len() as u64,
        manifest: format!("{name}.manifest"),
        manifest_sha256: manifest.pin(),
    };
    upsert_entry(&catalog, &entry).unwrap();
    catalog
}

#[test]
fn lazy_mirror_serves_a_catalog_image_from_the_verified_cache() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::random_file(dir.path(), "upstream.img", 3 << 20, 31);
    let want = std::fs::read(&disk).unwrap();
    let upstream = Serve::start(&[&disk], &[]);
    let catalog = publish(
        dir.path(),
        "lab-disk",
        &disk,
        &format!("{PREFIX}:upstream"),
        &upstream.portal,
    );
    let cache = dir.path().join("mirror-cache");
    let mirror = Serve::start(
        &[Path::new("lab-disk")],
        &[
            "--catalog",
            catalog.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--iqn-prefix",
            "iqn.2026-01.org.example.lab",
        ],
    );
    let url = format!(
        "iscsi://{}/iqn.2026-01.org.example.lab:lab-disk/0",
        mirror.portal
    );
    let cat = || common::isomount().args(["cat", &url]).output().unwrap();
    let out = cat();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == want, "first read through the mirror differs");
    // The upstream goes away: everything is in the mirror's cache now.
    drop(upstream);
    let out = cat();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == want, "cached read through the mirror differs");
}
