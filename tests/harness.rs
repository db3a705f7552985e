//! The test harness itself, checked with independent tools: libiscsi's command-line utilities
//! against the tgtd instances it starts.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use common::*;

const MIB: u64 = 1 << 20;

/// Runs a libiscsi tool with optional mutual-CHAP environment; returns (success, output).
fn libiscsi(tool: &str, args: &[&str], target_chap: Option<(&str, &str)>) -> (bool, String) {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env_remove("LIBISCSI_CHAP_USERNAME")
        .env_remove("LIBISCSI_CHAP_PASSWORD")
        .env_remove("LIBISCSI_CHAP_TARGET_USERNAME")
        .env_remove("LIBISCSI_CHAP_TARGET_PASSWORD");
    if let Some((user, secret)) = target_chap {
        cmd.env("LIBISCSI_CHAP_TARGET_USERNAME", user)
            .env("LIBISCSI_CHAP_TARGET_PASSWORD", secret);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn inq(url: &str, target_chap: Option<(&str, &str)>) -> (bool, String) {
    libiscsi("iscsi-inq", &[url], target_chap)
}

/// `iscsi://[user%secret@]127.0.0.1:PORT/IQN/LUN`
fn url(tgtd: &Tgtd, creds: Option<(&str, &str)>, iqn: &str, lun: u64) -> String {
    match creds {
        Some((u, s)) => format!("iscsi://{u}%{s}@{}/{iqn}/{lun}", tgtd.portal()),
        None => tgtd.url(iqn, lun),
    }
}

const PLAIN: &str = "iqn.2026-11.org.isomount.test:plain";
const CHAP: &str = "iqn.2026-11.org.isomount.test:chap";
const MUTUAL: &str = "iqn.2026-11.org.isomount.test:mutual";
const ALICE: (&str, &str) = ("alice", "alice-secret-0123");
const BOB: (&str, &str) = ("bob", "bob-secret-456789");
const TARGET: (&str, &str) = ("target-m", "target-secret-abcd");

fn four_targets(dir: &Path) -> Vec<TargetSpec> {
    let disk = random_file(dir, "disk.img", 8 * MIB, 1);
    let cd = random_file(dir, "cd.iso", 4 * MIB, 2);
    let chap_disk = random_file(dir, "chap.img", 2 * MIB, 3);
    let mutual_disk = random_file(dir, "mutual.img", 3 * MIB, 4);
    vec![
        TargetSpec::new(PLAIN, vec![LunSpec::disk(disk), LunSpec::cd(cd)]),
        TargetSpec::new(CHAP, vec![LunSpec::disk(chap_disk)]).with_chap(ALICE.0, ALICE.1),
        TargetSpec::new(MUTUAL, vec![LunSpec::disk(mutual_disk)])
            .with_chap(BOB.0, BOB.1)
            .with_mutual(TARGET.0, TARGET.1),
    ]
}

#[test]
fn tgtd_serves_disk_cd_chap_and_mutual_targets() {
    let dir = tempfile::tempdir().unwrap();
    let tgtd = Tgtd::start(
        "tgtd_serves_disk_cd_chap_and_mutual_targets",
        &four_targets(dir.path()),
    );

    let (ok, listing) = libiscsi("iscsi-ls", &[&format!("iscsi://{}", tgtd.portal())], None);
    assert!(ok, "iscsi-ls failed: {listing}");
    for iqn in [PLAIN, CHAP, MUTUAL] {
        assert!(listing.contains(iqn), "discovery misses {iqn}: {listing}");
        assert!(
            listing.contains(&tgtd.portal()),
            "discovery misses the portal: {listing}"
        );
    }

    let (ok, disk) = inq(&tgtd.url(PLAIN, 1), None);
    assert!(ok && disk.contains("DIRECT_ACCESS"), "disk LUN: {disk}");
    let (ok, cap) = libiscsi("iscsi-readcapacity16", &[&tgtd.url(PLAIN, 1)], None);
    assert!(
        ok && cap.contains(&format!("Total size:{}", 8 * MIB)),
        "disk capacity: {cap}"
    );
    let (ok, cd) = inq(&tgtd.url(PLAIN, 2), None);
    assert!(ok && cd.contains("MMC"), "CD LUN: {cd}");

    let (ok, out) = inq(&url(&tgtd, Some(ALICE), CHAP, 1), None);
    assert!(ok && out.contains("DIRECT_ACCESS"), "CHAP login: {out}");
    let (ok, out) = inq(
        &url(&tgtd, Some((ALICE.0, "wrong-secret-0000")), CHAP, 1),
        None,
    );
    assert!(!ok, "a wrong CHAP secret was accepted: {out}");
    let (ok, out) = inq(&url(&tgtd, None, CHAP, 1), None);
    assert!(!ok, "a CHAP target accepted an anonymous login: {out}");

    let (ok, out) = inq(&url(&tgtd, Some(BOB), MUTUAL, 1), Some(TARGET));
    assert!(
        ok && out.contains("DIRECT_ACCESS"),
        "mutual CHAP login: {out}"
    );
    let (ok, out) = inq(
        &url(&tgtd, Some(BOB), MUTUAL, 1),
        Some((TARGET.0, "not-the-target-secret")),
    );
    assert!(
        !ok,
        "a target that cannot prove the mutual secret was accepted: {out}"
    );
    let (ok, out) = inq(
        &url(&tgtd, Some((BOB.0, "wrong-secret-0000")), MUTUAL, 1),
        Some(TARGET),
    );
    assert!(
        !ok,
        "a wrong initiator secret was accepted by the mutual target: {out}"
    );
}

#[test]
fn tgtd_drop_kills_and_frees_the_portal() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", MIB, 9);
    let tgtd = Tgtd::start(
        "tgtd_drop_kills",
        &[TargetSpec::new(PLAIN, vec![LunSpec::disk(disk)])],
    );
    let portal = tgtd.portal();
    let pid = tgtd.pid().expect("running");
    TcpStream::connect(&portal).expect("portal accepts connections");
    drop(tgtd);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "tgtd {pid} still exists"
    );
    assert!(
        TcpStream::connect(&portal).is_err(),
        "portal still open after drop"
    );
}

#[test]
fn tgtd_restart_serves_the_same_portal_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", MIB, 10);
    let mut tgtd = Tgtd::start(
        "tgtd_restart",
        &[TargetSpec::new(PLAIN, vec![LunSpec::disk(disk)])],
    );
    let portal = tgtd.portal();
    tgtd.kill();
    assert!(
        TcpStream::connect(&portal).is_err(),
        "portal open while killed"
    );
    tgtd.restart();
    assert_eq!(tgtd.portal(), portal);
    let (ok, out) = inq(&tgtd.url(PLAIN, 1), None);
    assert!(ok && out.contains("DIRECT_ACCESS"), "after restart: {out}");
}

#[test]
fn tgtd_instances_in_parallel_never_share_ports() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", MIB, 11);
    let spec = vec![TargetSpec::new(PLAIN, vec![LunSpec::disk(disk)])];
    let daemons: Vec<Tgtd> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let spec = &spec;
                s.spawn(move || Tgtd::start(&format!("tgtd_parallel_{i}"), spec))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports: Vec<u16> = daemons.iter().map(Tgtd::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), daemons.len(), "two instances share a port");
    for tgtd in &daemons {
        let (ok, out) = inq(&tgtd.url(PLAIN, 1), None);
        assert!(
            ok && out.contains("DIRECT_ACCESS"),
            "{}: {out}",
            tgtd.portal()
        );
    }
}

#[test]
fn tgtd_log_is_kept_when_the_test_panics() {
    let name = format!("tgtd_log_kept_{}", std::process::id());
    let kept = logs_root().join(&name);
    let _ = std::fs::remove_dir_all(&kept);
    let result = std::panic::catch_unwind(|| {
        let _tgtd = Tgtd::start(&name, &[]);
        panic!("deliberate panic to test log keeping");
    });
    assert!(result.is_err());
    let logs: Vec<_> = std::fs::read_dir(&kept)
        .unwrap_or_else(|e| panic!("{} not created: {e}", kept.display()))
        .flatten()
        .flat_map(|instance| std::fs::read_dir(instance.path()).unwrap().flatten())
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(logs.iter().any(|f| f == "tgtd.log"), "kept: {logs:?}");
    assert!(logs.iter().any(|f| f == "tgtadm.log"), "kept: {logs:?}");
    std::fs::remove_dir_all(&kept).unwrap();
}

#[test]
fn random_file_is_deterministic_and_seed_dependent() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(random_file(dir.path(), "a", 100_003, 7)).unwrap();
    let b = std::fs::read(random_file(dir.path(), "b", 100_003, 7)).unwrap();
    let c = std::fs::read(random_file(dir.path(), "c", 100_003, 8)).unwrap();
    assert_eq!(a.len(), 100_003);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a[..4096], a[4096..8192], "content repeats");
}
