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
    // A bounded run: libiscsi's tools can spin forever on a target's odd answer.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return (false, format!("{tool} timed out"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
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
        !isomount_harness::platform::process_exists(pid),
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

/// A TCP server on loopback that answers every connection with the byte stream `stream_byte`
/// defines, `len` bytes long, then closes.
fn source_server(len: u64) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                use std::io::Write;
                let block: Vec<u8> = (0..65536u64).map(stream_byte).collect();
                let mut left = len;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if stream.write_all(&block[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    (addr, handle)
}

fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// Reads until EOF or an error; returns the bytes and whether it ended in an error.
fn read_all(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, true),
        }
    }
}

fn assert_stream_prefix(got: &[u8]) {
    let bad = got
        .iter()
        .enumerate()
        .position(|(i, b)| *b != stream_byte(i as u64 % 65536));
    assert_eq!(bad, None, "wrong byte through the proxy");
}

#[test]
fn proxy_without_faults_forwards_every_byte_and_counts_them() {
    let (upstream, _server) = source_server(5_000_000);
    let proxy = FaultProxy::start(&upstream, Faults::default());
    let mut client = TcpStream::connect(proxy.portal()).unwrap();
    let (got, failed) = read_all(&mut client);
    assert!(!failed);
    assert_eq!(got.len(), 5_000_000);
    assert_stream_prefix(&got);
    assert_eq!(proxy.bytes_to_client(), 5_000_000);
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn proxy_resets_each_connection_after_n_bytes() {
    let (upstream, _server) = source_server(1_000_000);
    let proxy = FaultProxy::start(
        &upstream,
        Faults {
            reset_every: Some(100_000),
            ..Faults::default()
        },
    );
    for round in 1..=2u64 {
        let mut client = TcpStream::connect(proxy.portal()).unwrap();
        let (got, failed) = read_all(&mut client);
        assert!(failed, "the connection ended without a reset");
        assert_eq!(got.len(), 100_000);
        assert_stream_prefix(&got);
        assert_eq!(proxy.resets(), round);
        assert_eq!(proxy.bytes_to_client(), round * 100_000);
    }
}

#[test]
fn proxy_stalls_once_then_resumes() {
    let (upstream, _server) = source_server(300_000);
    let proxy = FaultProxy::start(
        &upstream,
        Faults {
            stall_after: Some((120_000, std::time::Duration::from_millis(1500))),
            ..Faults::default()
        },
    );
    let mut client = TcpStream::connect(proxy.portal()).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let (got, timed_out) = read_all(&mut client);
    assert!(timed_out, "no stall seen");
    assert_eq!(got.len(), 120_000, "stalled at the wrong place");
    assert!(proxy.stalled());
    client.set_read_timeout(None).unwrap();
    let (rest, failed) = read_all(&mut client);
    assert!(!failed);
    let all = [got, rest].concat();
    assert_eq!(all.len(), 300_000);
    assert_stream_prefix(&all);
}

#[test]
fn proxy_latency_delays_without_serialising() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = s.try_clone().unwrap();
        std::io::copy(&mut r, &mut s).ok();
    });
    let proxy = FaultProxy::start(&upstream, Faults::delayed(Duration::from_millis(10)));
    let mut client = TcpStream::connect(proxy.portal()).unwrap();
    client.set_nodelay(true).unwrap();
    let mut reply = [0u8; 1024];

    let start = Instant::now();
    client.write_all(&[7u8; 1024]).unwrap();
    client.read_exact(&mut reply).unwrap();
    let round_trip = start.elapsed();
    assert!(
        round_trip >= Duration::from_millis(20),
        "no latency added: {round_trip:?}"
    );

    // 200 messages in flight at once: one round trip plus transfer time if the delay is a
    // pipeline, 200 round trips (4 s) if the proxy serialised them.
    let messages = 200;
    let start = Instant::now();
    let mut reader = client.try_clone().unwrap();
    let collector = std::thread::spawn(move || {
        let mut all = vec![0u8; 1024 * messages];
        reader.read_exact(&mut all).unwrap();
        all
    });
    for i in 0..messages {
        client.write_all(&[i as u8; 1024]).unwrap();
    }
    let all = collector.join().unwrap();
    let pipelined = start.elapsed();
    for (i, message) in all.chunks(1024).enumerate() {
        assert!(message.iter().all(|b| *b == i as u8), "message {i} garbled");
    }
    assert!(
        pipelined < Duration::from_secs(1),
        "200 pipelined messages took {pipelined:?}: latency is serialising"
    );
}

#[test]
fn proxy_latency_keeps_bulk_throughput() {
    let len = 64_000_000;
    let (upstream, _server) = source_server(len);
    let proxy = FaultProxy::start(
        &upstream,
        Faults::delayed(std::time::Duration::from_millis(10)),
    );
    let start = std::time::Instant::now();
    let mut client = TcpStream::connect(proxy.portal()).unwrap();
    let (got, failed) = read_all(&mut client);
    let elapsed = start.elapsed();
    assert!(!failed);
    assert_eq!(got.len() as u64, len);
    assert_stream_prefix(&got);
    eprintln!(
        "bulk through 10 ms latency: {:.0} MB/s",
        len as f64 / elapsed.as_secs_f64() / 1e6
    );
}

#[test]
fn proxy_drop_closes_open_connections() {
    let (upstream, _server) = source_server(u64::MAX);
    let proxy = FaultProxy::start(&upstream, Faults::default());
    let mut client = TcpStream::connect(proxy.portal()).unwrap();
    let mut first = [0u8; 1000];
    std::io::Read::read_exact(&mut client, &mut first).unwrap();
    let portal = proxy.portal();
    drop(proxy);
    let (_, _) = read_all(&mut client);
    assert!(TcpStream::connect(portal).is_err(), "listener still open");
}

const CD: &str = "iqn.2026-11.org.isomount.test:cd";

#[test]
fn istgt_serves_disk_cd_chap_and_mutual_targets() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", 8 * MIB, 21);
    let cd = random_file(dir.path(), "cd.iso", 4 * MIB, 22);
    let istgt = Istgt::start(
        "istgt_serves_disk_cd_chap_and_mutual_targets",
        &[
            TargetSpec::new(PLAIN, vec![LunSpec::disk(disk.clone())]),
            TargetSpec::new(CD, vec![LunSpec::cd(cd)]),
            TargetSpec::new(CHAP, vec![LunSpec::disk(disk.clone())]).with_chap(ALICE.0, ALICE.1),
            TargetSpec::new(MUTUAL, vec![LunSpec::disk(disk)])
                .with_chap(BOB.0, BOB.1)
                .with_mutual(TARGET.0, TARGET.1),
        ],
    );
    // No iscsi-ls here: libiscsi's iscsi-ls spins forever on istgt's SendTargets answer.
    let (ok, out) = inq(&istgt.lun_url(PLAIN, 0), None);
    assert!(ok && out.contains("DIRECT_ACCESS"), "disk LUN: {out}");
    let (ok, cap) = libiscsi("iscsi-readcapacity16", &[&istgt.url(PLAIN, 0)], None);
    assert!(
        ok && cap.contains(&format!("Total size:{}", 8 * MIB)),
        "capacity: {cap}"
    );
    let (ok, out) = inq(&istgt.lun_url(CD, 0), None);
    assert!(ok && out.contains("MMC"), "CD LUN: {out}");

    let chap = |creds: (&str, &str), iqn: &str| {
        format!("iscsi://{}%{}@{}/{iqn}/0", creds.0, creds.1, istgt.portal())
    };
    let (ok, out) = inq(&chap(ALICE, CHAP), None);
    assert!(ok && out.contains("DIRECT_ACCESS"), "CHAP login: {out}");
    let (ok, out) = inq(&chap((ALICE.0, "wrong-secret-0000"), CHAP), None);
    assert!(!ok, "a wrong CHAP secret was accepted: {out}");
    let (ok, out) = inq(&istgt.url(CHAP, 0), None);
    assert!(!ok, "a CHAP target accepted an anonymous login: {out}");
    let (ok, out) = inq(&chap(BOB, MUTUAL), Some(TARGET));
    assert!(
        ok && out.contains("DIRECT_ACCESS"),
        "mutual CHAP login: {out}"
    );
    let (ok, out) = inq(
        &chap(BOB, MUTUAL),
        Some((TARGET.0, "not-the-target-secret")),
    );
    assert!(
        !ok,
        "a target that cannot prove the mutual secret was accepted: {out}"
    );
}

#[test]
fn istgt_drop_kills_and_restart_reuses_the_portal() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", MIB, 23);
    let spec = [TargetSpec::new(PLAIN, vec![LunSpec::disk(disk)])];
    let mut istgt = Istgt::start("istgt_drop_kills", &spec);
    let portal = istgt.portal();
    istgt.restart();
    assert_eq!(istgt.portal(), portal);
    let (ok, out) = inq(&istgt.url(PLAIN, 0), None);
    assert!(ok && out.contains("DIRECT_ACCESS"), "after restart: {out}");
    let pid = istgt.pid().expect("running");
    drop(istgt);
    assert!(
        !isomount_harness::platform::process_exists(pid),
        "istgt {pid} still exists"
    );
    assert!(
        TcpStream::connect(&portal).is_err(),
        "portal still open after drop"
    );
}

#[test]
fn tgtd_and_istgt_number_luns_their_own_way() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", MIB, 24);
    let spec = [TargetSpec::new(PLAIN, vec![LunSpec::disk(disk)])];
    let tgtd = Tgtd::start("lun_numbering_tgtd", &spec);
    let istgt = Istgt::start("lun_numbering_istgt", &spec);
    let targets: [&dyn IscsiTarget; 2] = [&tgtd, &istgt];
    for target in targets {
        let (ok, out) = libiscsi("iscsi-readcapacity16", &[&target.lun_url(PLAIN, 0)], None);
        assert!(
            ok && out.contains(&format!("Total size:{MIB}")),
            "{}: {out}",
            target.portal()
        );
    }
}

/// The file names xorriso reads back from `iso` (Rock Ridge, else Joliet, else plain names).
fn iso_names(iso: &Path) -> Vec<String> {
    let out = Command::new("xorriso")
        .arg("-indev")
        .arg(iso)
        .args(["-find", "/"])
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_matches('\'').to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn iso_from_dir_writes_each_flavour() {
    let dir = test_dir("iso_from_dir_writes_each_flavour");
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/LongFileName.txt"), b"hello\n").unwrap();
    random_file(&src, "data.bin", 100_000, 5);
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (flavour, names, rock_ridge, joliet) in [
        (
            IsoFlavour::RockRidgeJoliet,
            ["/", "/data.bin", "/sub", "/sub/LongFileName.txt"],
            true,
            true,
        ),
        (
            IsoFlavour::JolietOnly,
            ["/", "/data.bin", "/sub", "/sub/LongFileName.txt"],
            false,
            true,
        ),
        (
            IsoFlavour::Level1,
            ["/", "/DATA.BIN", "/SUB", "/SUB/LONGFILE.TXT"],
            false,
            false,
        ),
    ] {
        let iso = iso_from_dir(&src, &dir.path().join("out.iso"), flavour);
        assert_eq!(iso_names(&iso), names, "{flavour:?}");
        let bytes = std::fs::read(&iso).unwrap();
        assert_eq!(bytes.len() % 2048, 0);
        assert_eq!(
            &bytes[32769..32774],
            b"CD001",
            "{flavour:?}: no volume descriptor"
        );
        let has_rr = contains(&bytes, b"IEEE_1282") || contains(&bytes, b"RRIP_1991A");
        assert_eq!(has_rr, rock_ridge, "{flavour:?}: Rock Ridge");
        assert_eq!(contains(&bytes, b"%/E"), joliet, "{flavour:?}: Joliet");
    }
}
