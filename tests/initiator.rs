//! The initiator against real targets: byte-exact `cat` of disk, CD, CHAP, mutual-CHAP and
//! CRC32C-digest LUNs on tgtd (a target requiring digests is read with no flag), clean failures,
//! discovery, `info`, and reads through faults.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const MIB: u64 = 1 << 20;

const PLAIN: &str = "iqn.2026-11.org.isomount.test:init-plain";
const CHAP: &str = "iqn.2026-11.org.isomount.test:init-chap";
const MUTUAL: &str = "iqn.2026-11.org.isomount.test:init-mutual";
const ALICE: (&str, &str) = ("alice", "alice-secret-0123");
const BOB: (&str, &str) = ("bob", "bob-secret-456789");
const TARGET: (&str, &str) = ("target-m", "target-secret-abcd");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = isomount();
    cmd.args(args)
        .env_remove("LIBISCSI_CHAP_USERNAME")
        .env_remove("LIBISCSI_CHAP_PASSWORD")
        .env_remove("LIBISCSI_CHAP_TARGET_USERNAME")
        .env_remove("LIBISCSI_CHAP_TARGET_PASSWORD")
        .env_remove("ISOMOUNT_DIGEST");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run isomount")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_cat_exact(url: &str, env: &[(&str, &str)], file: &Path) {
    let out = run(&["cat", url], env);
    assert!(out.status.success(), "cat {url} failed: {}", stderr(&out));
    let want = std::fs::read(file).unwrap();
    assert_eq!(out.stdout.len(), want.len(), "cat {url}: length");
    assert!(out.stdout == want, "cat {url}: bytes differ");
}

struct Setup {
    _dir: tempfile::TempDir,
    tgtd: Tgtd,
    disk: std::path::PathBuf,
    cd: std::path::PathBuf,
    chap_disk: std::path::PathBuf,
    mutual_disk: std::path::PathBuf,
}

fn setup(test: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // Sizes that are not a multiple of the 1 MiB read size, to exercise the tail.
    let disk = random_file(dir.path(), "disk.img", 40 * MIB + 512 * 3, 11);
    let cd = random_file(dir.path(), "cd.iso", 6 * MIB + 2048 * 5, 12);
    let chap_disk = random_file(dir.path(), "chap.img", 3 * MIB, 13);
    let mutual_disk = random_file(dir.path(), "mutual.img", 5 * MIB + 4096, 14);
    let targets = vec![
        TargetSpec::new(PLAIN, vec![LunSpec::disk(&disk), LunSpec::cd(&cd)]),
        TargetSpec::new(CHAP, vec![LunSpec::disk(&chap_disk)]).with_chap(ALICE.0, ALICE.1),
        TargetSpec::new(MUTUAL, vec![LunSpec::disk(&mutual_disk)])
            .with_chap(BOB.0, BOB.1)
            .with_mutual(TARGET.0, TARGET.1),
    ];
    let tgtd = Tgtd::start(test, &targets);
    Setup {
        _dir: dir,
        tgtd,
        disk,
        cd,
        chap_disk,
        mutual_disk,
    }
}

#[test]
fn cat_is_byte_exact_for_disk_cd_and_chap_luns() {
    let s = setup("cat_is_byte_exact_for_disk_cd_and_chap_luns");
    assert_cat_exact(&s.tgtd.url(PLAIN, 1), &[], &s.disk);
    assert_cat_exact(&s.tgtd.url(PLAIN, 2), &[], &s.cd);
    let chap_url = format!(
        "iscsi://{}%{}@{}/{CHAP}/1",
        ALICE.0,
        ALICE.1,
        s.tgtd.portal()
    );
    assert_cat_exact(&chap_url, &[], &s.chap_disk);
    // Mutual CHAP with every credential from libiscsi's environment variables.
    assert_cat_exact(
        &s.tgtd.url(MUTUAL, 1),
        &[
            ("LIBISCSI_CHAP_USERNAME", BOB.0),
            ("LIBISCSI_CHAP_PASSWORD", BOB.1),
            ("LIBISCSI_CHAP_TARGET_USERNAME", TARGET.0),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", TARGET.1),
        ],
        &s.mutual_disk,
    );
}

#[test]
fn info_shows_the_cd_block_size_and_negotiated_parameters() {
    let s = setup("info_shows_the_cd_block_size_and_negotiated_parameters");
    let out = run(&["info", &s.tgtd.url(PLAIN, 2)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(field("block size"), "2048");
    assert!(field("device type").contains("MMC"), "{text}");
    assert_eq!(
        field("capacity"),
        format!("{} bytes", std::fs::metadata(&s.cd).unwrap().len())
    );
    assert_eq!(field("portal"), s.tgtd.portal());
    assert_eq!(field("MaxConnections"), "1");
    assert!(!field("vendor").is_empty());
    // TCP, one login exchange, the probe in two flights (tgtd's login opens room for two).
    assert!(field("connect").ends_with(" ms, 4 round trips"), "{text}");
    let disk = run(&["info", &s.tgtd.url(PLAIN, 1)], &[]);
    let disk_text = String::from_utf8_lossy(&disk.stdout);
    assert!(
        disk_text.contains("block size                      512"),
        "{disk_text}"
    );
}

#[test]
fn wrong_chap_secret_fails_cleanly_without_the_secret() {
    let s = setup("wrong_chap_secret_fails_cleanly_without_the_secret");
    let secret = "not-the-secret-xyz";
    let url = format!("iscsi://{}%{secret}@{}/{CHAP}/1", ALICE.0, s.tgtd.portal());
    let out = run(&["cat", &url], &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("authentication"), "{err}");
    assert!(
        err.contains(CHAP) && err.contains(&s.tgtd.portal()),
        "{err}"
    );
    assert!(!err.contains(secret), "secret leaked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A wrong mutual secret: the target cannot prove itself.
    let out = run(
        &["info", &s.tgtd.url(MUTUAL, 1)],
        &[
            ("LIBISCSI_CHAP_USERNAME", BOB.0),
            ("LIBISCSI_CHAP_PASSWORD", BOB.1),
            ("LIBISCSI_CHAP_TARGET_USERNAME", TARGET.0),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", "wrong-target-secret"),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("authentication"), "{err}");
    assert!(
        !err.contains("wrong-target-secret") && !err.contains(BOB.1),
        "{err}"
    );
}

#[test]
fn discover_lists_every_target_and_its_luns() {
    let s = setup("discover_lists_every_target_and_its_luns");
    let out = run(&["discover", &s.tgtd.portal()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for iqn in [PLAIN, CHAP, MUTUAL] {
        assert!(text.lines().any(|l| l == iqn), "{iqn} missing: {text}");
    }
    assert!(
        text.contains(&format!("portal {}", s.tgtd.portal())),
        "{text}"
    );
    let out = run(&["discover", "-l", &s.tgtd.portal()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let disk_size = std::fs::metadata(&s.disk).unwrap().len();
    assert!(
        text.contains("lun 1: ") && text.contains(&format!("{disk_size} bytes")),
        "{text}"
    );
    assert!(text.contains("2048-byte blocks"), "{text}");
}

/// The `info` line of a negotiated key, e.g. `HeaderDigest` → `CRC32C`.
fn negotiated(info: &Output, key: &str) -> String {
    let text = String::from_utf8_lossy(&info.stdout);
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_string()
}

#[test]
fn a_target_requiring_crc32c_digests_is_read_with_no_flag() {
    let s = setup("a_target_requiring_crc32c_digests_is_read_with_no_flag");
    // By default the target chooses: tgtd left alone picks None.
    let out = run(&["info", &s.tgtd.url(PLAIN, 1)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(negotiated(&out, "HeaderDigest"), "None");
    // `?digest=crc32c` only prefers CRC32C: tgtd left alone offers None alone, and is read.
    let out = run(
        &["info", &format!("{}?digest=crc32c", s.tgtd.url(PLAIN, 1))],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(negotiated(&out, "DataDigest"), "None");
    // Now tgtd requires CRC32C header and data digests.
    for key in ["HeaderDigest", "DataDigest"] {
        s.tgtd.tgtadm(&[
            "--mode", "target", "--op", "update", "--tid", "1", "--name", key, "--value", "CRC32C",
        ]);
    }
    let url = s.tgtd.url(PLAIN, 1);
    let out = run(&["info", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(negotiated(&out, "HeaderDigest"), "CRC32C");
    assert_eq!(negotiated(&out, "DataDigest"), "CRC32C");
    assert_cat_exact(&url, &[], &s.disk);
    assert_cat_exact(
        &s.tgtd.url(PLAIN, 2),
        &[("ISOMOUNT_DIGEST", "crc32c")],
        &s.cd,
    );
    // `none` insists: tgtd, which would pick CRC32C from our default offer, settles for None.
    let out = run(&["info", &format!("{url}?digest=none")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(negotiated(&out, "HeaderDigest"), "None");
}

#[test]
fn a_missing_target_and_a_closed_port_fail_in_one_line() {
    let s = setup("a_missing_target_and_a_closed_port_fail_in_one_line");
    let out = run(
        &["cat", &s.tgtd.url("iqn.2026-11.org.example:nope", 1)],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let port = free_tcp_port();
    let out = run(
        &["info", &format!("iscsi://127.0.0.1:{port}/{PLAIN}/1")],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot connect"), "{err}");
}

/// A read through the fault proxy: `cat` must still be byte-exact.
fn cat_through(test: &str, faults: Faults, size: u64) -> (FaultProxy, Tgtd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", size, 21);
    let tgtd = Tgtd::start(test, &[TargetSpec::new(PLAIN, vec![LunSpec::disk(&disk)])]);
    let proxy = FaultProxy::start(&tgtd.portal(), faults);
    let url = format!("iscsi://{}/{PLAIN}/1", proxy.portal());
    assert_cat_exact(&url, &[], &disk);
    (proxy, tgtd, dir)
}

#[test]
fn cat_survives_a_reset_every_24_mib() {
    let faults = Faults {
        reset_every: Some(24 * MIB),
        ..Faults::default()
    };
    let (proxy, _tgtd, _dir) = cat_through("cat_survives_a_reset_every_24_mib", faults, 80 * MIB);
    assert!(proxy.resets() >= 3, "only {} resets", proxy.resets());
    assert!(proxy.connections() >= 4);
}

#[test]
fn cat_is_exact_over_a_20ms_round_trip() {
    let faults = Faults::delayed(std::time::Duration::from_millis(10));
    let (proxy, _tgtd, _dir) = cat_through("cat_is_exact_over_a_20ms_round_trip", faults, 32 * MIB);
    assert!(proxy.bytes_to_client() >= 32 * MIB);
}

mod library {
    //! The same LUNs through the library: recovery timing made short, target restarts.

    use super::*;
    use isomount::iscsi::{ConnectOptions, IscsiLun};
    use std::time::{Duration, Instant};

    fn quick(portal: String, give_up_after: Duration) -> ConnectOptions {
        let mut opts = ConnectOptions::new(vec![portal], PLAIN, 1);
        opts.chap = None;
        opts.nop_interval = Duration::from_millis(500);
        opts.stall_timeout = Duration::from_secs(2);
        opts.give_up_after = give_up_after;
        opts
    }

    /// Read all of `lun` with many reads in flight and compare with `file`.
    async fn read_all_exact(lun: &IscsiLun, file: &Path) {
        let want = std::fs::read(file).unwrap();
        assert_eq!(lun.size(), want.len() as u64);
        let chunk = 1 << 20;
        let mut offset = 0usize;
        while offset < want.len() {
            let batch: Vec<_> = (0..8)
                .map(|i| offset + i * chunk)
                .filter(|&o| o < want.len())
                .map(|o| {
                    let len = chunk.min(want.len() - o);
                    async move { (o, lun.read_at(o as u64, len).await) }
                })
                .collect();
            for fut in batch {
                let (o, got) = fut.await;
                let got = got.unwrap_or_else(|e| panic!("read at {o}: {e}"));
                assert!(got[..] == want[o..o + got.len()], "bytes differ at {o}");
                offset = offset.max(o + got.len());
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unaligned_reads_and_the_end_of_disk_and_cd_luns() {
        let dir = tempfile::tempdir().unwrap();
        let disk = random_file(dir.path(), "disk.img", 3 * MIB + 512, 41);
        let cd = random_file(dir.path(), "cd.iso", 2 * MIB + 2048 * 3, 42);
        let tgtd = Tgtd::start(
            "unaligned_reads_and_the_end_of_disk_and_cd_luns",
            &[TargetSpec::new(
                PLAIN,
                vec![LunSpec::disk(&disk), LunSpec::cd(&cd)],
            )],
        );
        for (lun_no, file, block) in [(1u64, &disk, 512u32), (2, &cd, 2048)] {
            let mut opts = quick(tgtd.portal(), Duration::from_secs(10));
            opts.lun = lun_no;
            let lun = IscsiLun::connect(opts).await.unwrap();
            let want = std::fs::read(file).unwrap();
            assert_eq!(lun.block_size(), block);
            assert_eq!(lun.size(), want.len() as u64);
            let size = want.len();
            for (offset, len) in [
                (1000usize, 5000usize),
                (0, 1),
                (size - 1, 1),
                (size - 3000, 3000),
                (7, 2 * MIB as usize + 11),
            ] {
                let got = lun.read_at(offset as u64, len).await.unwrap();
                assert!(
                    got[..] == want[offset..offset + len],
                    "lun {lun_no} at {offset}+{len}"
                );
            }
            assert!(lun.read_at(size as u64 - 10, 11).await.is_err());
            assert!(lun.read_at(u64::MAX - 1, 4).await.is_err());
            assert!(lun.read_at(size as u64, 0).await.unwrap().is_empty());
            let identity = lun.info();
            assert!(identity.serial.is_some() && identity.device_id.is_some());
            lun.logout().await;
        }
    }

    /// Connecting costs the TCP handshake, one login exchange and one flight of probe commands
    /// (round trips counted by the proxy as turns of request and response), and the first bytes
    /// asked for come in that flight, a CD LUN's 2048-byte blocks included (its READ is bounded
    /// by the transfer length); reads of them then send nothing. tgtd opens its CmdSN window
    /// to two commands at login, so the probe takes two flights there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connecting_takes_three_round_trips_and_brings_the_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = random_file(dir.path(), "disk.img", 3 * MIB, 43);
        let cd = random_file(dir.path(), "cd.iso", 2 * MIB, 44);
        let tgtd = Tgtd::start(
            "connecting_takes_three_round_trips_and_brings_the_first_bytes",
            &[TargetSpec::new(
                PLAIN,
                vec![LunSpec::disk(&disk), LunSpec::cd(&cd)],
            )],
        );
        let scripted = HostileTarget::start(
            std::fs::read(&disk).unwrap(),
            3 * MIB,
            Misbehaviour::Overrun,
        );
        const FIRST: usize = 256 << 10;
        for (portal, target, lun_no, file, round_trips) in [
            (scripted.portal(), HOSTILE_IQN, 0u64, &disk, 3),
            (tgtd.portal(), PLAIN, 1, &disk, 4),
            (tgtd.portal(), PLAIN, 2, &cd, 4),
        ] {
            let proxy = FaultProxy::start(&portal, Faults::default());
            let turns = || proxy.connections() + proxy.client_turns();
            let want = std::fs::read(file).unwrap();
            let mut opts = quick(proxy.portal(), Duration::from_secs(10));
            opts.target = target.to_string();
            opts.lun = lun_no;
            opts.nop_interval = Duration::from_secs(60);
            opts.first_read = Some(FIRST as u32);
            let lun = IscsiLun::connect(opts).await.unwrap();
            assert_eq!(turns(), round_trips, "{target} LUN {lun_no}: connecting");
            assert_eq!(lun.info().connect.round_trips, round_trips as u32);
            for (offset, len) in [(4096usize, 4096usize), (1000, 70_000), (0, FIRST)] {
                let got = lun.read_at(offset as u64, len).await.unwrap();
                assert!(
                    got[..] == want[offset..offset + len],
                    "{target} LUN {lun_no} at {offset}"
                );
            }
            assert_eq!(
                turns(),
                round_trips,
                "{target} LUN {lun_no}: the first bytes"
            );
            // Once read to their end they are let go: the next read goes to the target.
            let got = lun.read_at(0, 4096).await.unwrap();
            assert!(got[..] == want[..4096]);
            assert_eq!(
                turns(),
                round_trips + 1,
                "{target} LUN {lun_no}: a later read"
            );
            lun.logout().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_continue_through_a_stall_longer_than_the_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let disk = random_file(dir.path(), "disk.img", 24 * MIB, 31);
        let tgtd = Tgtd::start(
            "reads_continue_through_a_stall_longer_than_the_timeouts",
            &[TargetSpec::new(PLAIN, vec![LunSpec::disk(&disk)])],
        );
        let proxy = FaultProxy::start(
            &tgtd.portal(),
            Faults {
                stall_after: Some((4 * MIB, Duration::from_secs(5))),
                ..Faults::default()
            },
        );
        let lun = IscsiLun::connect(quick(proxy.portal(), Duration::from_secs(60)))
            .await
            .unwrap();
        let started = Instant::now();
        read_all_exact(&lun, &disk).await;
        assert!(proxy.stalled());
        assert!(proxy.connections() >= 2, "no reconnect after the stall");
        assert!(started.elapsed() >= Duration::from_secs(2));
        lun.logout().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outstanding_reads_survive_a_target_restart() {
        let dir = tempfile::tempdir().unwrap();
        let disk = random_file(dir.path(), "disk.img", 16 * MIB, 32);
        let mut tgtd = Tgtd::start(
            "outstanding_reads_survive_a_target_restart",
            &[TargetSpec::new(PLAIN, vec![LunSpec::disk(&disk)])],
        );
        let lun = IscsiLun::connect(quick(tgtd.portal(), Duration::from_secs(60)))
            .await
            .unwrap();
        let before = lun.info();
        read_all_exact(&lun, &disk).await;
        tgtd.kill();
        // Reads issued while the target is gone wait for it instead of failing.
        let reader = {
            let lun = lun.clone();
            let disk = disk.clone();
            tokio::spawn(async move { read_all_exact(&lun, &disk).await })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!reader.is_finished());
        let _tgtd = tokio::task::spawn_blocking(move || {
            tgtd.restart();
            tgtd
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("reads finished after the restart")
            .unwrap();
        let after = lun.info();
        assert_eq!(before.serial, after.serial);
        assert_eq!(before.capacity, after.capacity);
        lun.logout().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_target_that_stays_away_gives_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let disk = random_file(dir.path(), "disk.img", 4 * MIB, 33);
        let mut tgtd = Tgtd::start(
            "a_target_that_stays_away_gives_one_clear_error",
            &[TargetSpec::new(PLAIN, vec![LunSpec::disk(&disk)])],
        );
        let lun = IscsiLun::connect(quick(tgtd.portal(), Duration::from_secs(3)))
            .await
            .unwrap();
        tgtd.kill();
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(30), lun.read_at(0, 4096))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "gave up too early"
        );
        assert!(err.to_string().contains("giving up"), "{err}");
    }
}

/// `cat` of a 4 GiB LUN streams: peak RSS stays under 128 MiB. The LUN is a sparse file with
/// markers at known offsets, checked as the bytes go by.
#[test]
fn cat_of_a_4_gib_lun_keeps_peak_rss_under_128_mib() {
    use std::io::{Read, Seek, SeekFrom, Write};
    const SIZE: u64 = 4 << 30;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    let mut file = std::fs::File::create(&path).unwrap();
    file.set_len(SIZE).unwrap();
    let markers: Vec<u64> = vec![0, 1 << 30, (2 << 30) + 12345, (3 << 30) + 1, SIZE - 16];
    for (i, &at) in markers.iter().enumerate() {
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&[0xa0 + i as u8; 16]).unwrap();
    }
    drop(file);
    let tgtd = Tgtd::start(
        "cat_of_a_4_gib_lun_keeps_peak_rss_under_128_mib",
        &[TargetSpec::new(PLAIN, vec![LunSpec::disk(&path)])],
    );
    let mut child = isomount()
        .args(["cat", &tgtd.url(PLAIN, 1)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        let mut seen = Vec::new();
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                return (offset, seen);
            }
            for (i, &at) in markers.iter().enumerate() {
                if at >= offset && at + 16 <= offset + n as u64 {
                    let s = (at - offset) as usize;
                    seen.push((i, buf[s..s + 16] == [0xa0 + i as u8; 16]));
                }
            }
            offset += n as u64;
        }
    });
    let mut peak_kib = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "cat took too long");
        if let Some(kib) = platform::memory_kib(pid, platform::Memory::Peak) {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let (total, seen) = reader.join().unwrap();
    assert!(status.success());
    assert_eq!(total, SIZE);
    // Markers straddling a read boundary are not seen; most are, and every one seen is right.
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|&(_, ok)| ok), "{seen:?}");
    assert!(peak_kib > 0, "no RSS sample");
    assert!(peak_kib < 128 * 1024, "peak RSS {peak_kib} KiB");
    eprintln!("cat of 4 GiB: peak RSS {peak_kib} KiB");
}

/// istgt, a second independent target, started with a minimal configuration of its own (the
/// harness's tgtd covers the rest). Killed (SIGKILL) on drop.
struct IstgtProcess {
    child: std::process::Child,
    portal: String,
    _dir: tempfile::TempDir,
}

impl IstgtProcess {
    /// `use_digest`: istgt's `UseDigest` (`Auto`, or `Header Data` to require CRC32C).
    fn start(image: &Path, use_digest: &str) -> IstgtProcess {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_tcp_port();
        let control = free_tcp_port();
        std::fs::write(
            dir.path().join("auth.conf"),
            "[AuthGroup1]\n  Comment \"none\"\n",
        )
        .unwrap();
        let conf = format!(
            "[Global]\n  NodeBase \"iqn.2026-11.org.isomount.istgt\"\n  PidFile {d}/istgt.pid\n  \
             AuthFile {d}/auth.conf\n  MediaDirectory {d}\n  Timeout 30\n  NopInInterval 20\n  \
             DiscoveryAuthMethod Auto\n  MaxSessions 16\n  MaxConnections 4\n  \
             FirstBurstLength 262144\n  MaxBurstLength 1048576\n  \
             MaxRecvDataSegmentLength 262144\n\
             [UnitControl]\n  AuthMethod None\n  Portal UC1 127.0.0.1:{control}\n  Netmask 127.0.0.1\n\
             [PortalGroup1]\n  Portal DA1 127.0.0.1:{port}\n\
             [InitiatorGroup1]\n  InitiatorName \"ALL\"\n  Netmask 127.0.0.0/8\n\
             [LogicalUnit1]\n  TargetName disk1\n  Mapping PortalGroup1 InitiatorGroup1\n  \
             AuthMethod None\n  AuthGroup AuthGroup1\n  UseDigest {use_digest}\n  UnitType Disk\n  \
             LUN0 Storage {} Auto\n",
            image.display()
        );
        let conf_path = dir.path().join("istgt.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("istgt.log")).unwrap();
        let child = std::process::Command::new("istgt")
            .arg("-c")
            .arg(&conf_path)
            .arg("-D")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run istgt");
        let portal = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(&portal).is_err() {
            assert!(std::time::Instant::now() < deadline, "istgt did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        IstgtProcess {
            child,
            portal,
            _dir: dir,
        }
    }
}

impl Drop for IstgtProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn istgt_discover_info_and_exact_cat_also_through_resets() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "istgt.img", 48 * MIB, 51);
    let istgt = IstgtProcess::start(&disk, "Auto");
    let iqn = "iqn.2026-11.org.isomount.istgt:disk1";
    let out = run(&["discover", &istgt.portal], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == iqn));
    let url = format!("iscsi://{}/{iqn}/0", istgt.portal);
    let out = run(&["info", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FreeBSD"), "{text}");
    assert!(text.contains(&format!("{} bytes", 48 * MIB)), "{text}");
    // istgt takes the login straight to the operational stage: at most the probe's flights
    // follow it (a refused short login would cost a connection and two exchanges more).
    let connect = text
        .lines()
        .find_map(|l| l.strip_prefix("connect"))
        .unwrap_or_else(|| panic!("no connect in {text}"));
    assert!(
        connect.ends_with(", 3 round trips") || connect.ends_with(", 4 round trips"),
        "{text}"
    );
    assert_cat_exact(&url, &[], &disk);
    let proxy = FaultProxy::start(
        &istgt.portal,
        Faults {
            reset_every: Some(16 * MIB),
            ..Faults::default()
        },
    );
    assert_cat_exact(&format!("iscsi://{}/{iqn}/0", proxy.portal()), &[], &disk);
    assert!(proxy.resets() >= 2);
}

#[test]
fn istgt_requiring_digests_is_read_with_no_flag() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "istgt-digest.img", 6 * MIB + 512, 52);
    let istgt = IstgtProcess::start(&disk, "Header Data");
    let url = format!(
        "iscsi://{}/iqn.2026-11.org.isomount.istgt:disk1/0",
        istgt.portal
    );
    let out = run(&["info", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(negotiated(&out, "HeaderDigest"), "CRC32C");
    assert_eq!(negotiated(&out, "DataDigest"), "CRC32C");
    assert_cat_exact(&url, &[], &disk);
}
