//! `isomount serve --root`: a served tree that follows its files with no restart (images added,
//! renamed over, removed, truncated in place, while clients read), `--config` masks and CHAP
//! per subtree with SIGHUP reloads, and the service side: sd_notify readiness, stats, SIGTERM
//! logging sessions out. Also the scale checks that are not about speed: thousands of idle
//! sessions within a memory bound, a tree of a thousand images, a descriptor limit too low.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::initiator::{read10, RawInitiator};
use common::load::{rss_kib, Fleet};
use common::serve::{Serve, PREFIX};

/// Write `data` to ROOT/`name` the way a careful publisher does: a hidden temp file renamed
/// into place.
fn put(root: &Path, name: &str, data: &[u8]) {
    let tmp = root.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, root.join(name)).unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

fn serve_tree(root: &Path, extra: &[&str]) -> Serve {
    let mut args: Vec<&OsStr> = vec![OsStr::new("--root"), root.as_os_str()];
    args.extend(["--settle", "0", "--logout-timeout", "1"].map(OsStr::new));
    args.extend(extra.iter().map(OsStr::new));
    Serve::start_args(&args, &[])
}

async fn session(serve: &Serve, stem: &str) -> RawInitiator {
    let mut raw = RawInitiator::connect(&serve.portal).await.unwrap();
    let status = raw
        .login_normal(&format!("{PREFIX}:{stem}"), false)
        .await
        .unwrap();
    assert_eq!(status, (0, 0), "login to {stem}");
    raw
}

/// Read the whole LUN in 64 KiB commands.
async fn read_whole(raw: &mut RawInitiator, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut lba = 0u32;
    while out.len() < size {
        let blocks = ((size - out.len()) / 512).min(128) as u16;
        let (done, data) = raw
            .command(&read10(lba, blocks), u32::from(blocks) * 512)
            .await
            .unwrap();
        assert_eq!(done.status, 0, "READ at {lba}: {:?}", done.sense_code());
        out.extend_from_slice(&data);
        lba += u32::from(blocks);
    }
    out
}

async fn targets(serve: &Serve) -> Vec<String> {
    let mut raw = RawInitiator::connect(&serve.portal).await.unwrap();
    assert_eq!(raw.login_discovery().await.unwrap(), (0, 0));
    let names = raw
        .send_targets("All")
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    let _ = raw.logout().await;
    names
}

/// Wait until the served targets include (or lack) `stem`.
async fn wait_for_target(serve: &Serve, stem: &str, present: bool) {
    let name = format!("{PREFIX}:{stem}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = targets(serve).await;
        if now.contains(&name) == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {} after 20 s: {now:?}",
            if present {
                "not served"
            } else {
                "still served"
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_tree_follows_added_renamed_and_removed_images_with_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let steady = pattern(4 << 20, 1);
    let old_b = pattern(1 << 20, 2);
    put(root, "steady.img", &steady);
    put(root, "b.img", &old_b);
    let mut serve = serve_tree(root, &[]);
    let pid = serve.pid();

    // A client reads the steady image over and over, byte-exact, through everything below.
    let portal = serve.portal.clone();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let reader = {
        let steady = steady.clone();
        tokio::spawn(async move {
            let mut raw = RawInitiator::connect(&portal).await.unwrap();
            assert_eq!(
                raw.login_normal(&format!("{PREFIX}:steady"), false)
                    .await
                    .unwrap(),
                (0, 0)
            );
            let mut rounds = 0;
            while !*stopped.borrow_and_update() || rounds == 0 {
                let got = read_whole(&mut raw, steady.len()).await;
                assert!(got == steady, "the steady image changed under its reader");
                rounds += 1;
            }
            rounds
        })
    };

    let mut old_b_session = session(&serve, "b").await;

    // Added.
    let c = pattern(2 << 20, 3);
    put(root, "c.img", &c);
    wait_for_target(&serve, "c", true).await;
    let mut c_session = session(&serve, "c").await;
    assert!(read_whole(&mut c_session, c.len()).await == c, "c differs");

    // Added in a new subdirectory.
    std::fs::create_dir(root.join("sub")).unwrap();
    let d = pattern(512 << 10, 4);
    put(&root.join("sub"), "d.iso", &d);
    wait_for_target(&serve, "sub-d", true).await;
    let mut d_session = session(&serve, "sub-d").await;
    assert!(
        read_whole(&mut d_session, d.len()).await == d,
        "sub/d differs"
    );

    // Renamed over: new logins get the new bytes, the old session keeps the old ones.
    let new_b = pattern(3 << 20, 5);
    put(root, "b.img", &new_b);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut fresh = session(&serve, "b").await;
        let (done, data) = fresh.command(&read10(0, 8), 4096).await.unwrap();
        assert_eq!(done.status, 0);
        if data[..] == new_b[..4096] {
            assert!(
                read_whole(&mut fresh, new_b.len()).await == new_b,
                "new b differs"
            );
            break;
        }
        assert!(
            data[..] == old_b[..4096],
            "b is neither its old nor its new self"
        );
        assert!(Instant::now() < deadline, "the renamed-over b never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        read_whole(&mut old_b_session, old_b.len()).await == old_b,
        "a session of the replaced b must keep reading the old bytes"
    );

    // Removed while a session reads it: CHECK CONDITION, a logout request, then the end.
    std::fs::remove_file(root.join("c.img")).unwrap();
    wait_for_target(&serve, "c", false).await;
    let (done, _) = c_session.command(&read10(0, 8), 4096).await.unwrap();
    assert_eq!(
        done.status, 2,
        "a removed image's READ is a CHECK CONDITION"
    );
    assert_eq!(
        done.sense_code(),
        Some((0x05, 0x25)),
        "LOGICAL UNIT NOT SUPPORTED"
    );
    let mut events = c_session.events.clone();
    while !events.contains(&2) {
        match c_session.wait_event(Duration::from_secs(10)).await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => break,
            Err(e) => panic!("the removed image's session did not end cleanly: {e}"),
        }
    }
    assert!(events.contains(&1), "a logout request: {events:?}");
    let mut again = RawInitiator::connect(&serve.portal).await.unwrap();
    let status = again
        .login_normal(&format!("{PREFIX}:c"), false)
        .await
        .unwrap();
    assert_eq!(status, (2, 3), "a removed image is not found");

    stop.send(true).unwrap();
    let rounds = reader.await.expect("the steady reader failed");
    println!("steady image read {rounds} times, byte-exact");
    assert!(serve.running(), "serve must still run");
    assert_eq!(serve.pid(), pid, "no restart");
    let log = serve.log();
    assert!(log.contains("withdrawn (removed)"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_truncated_in_place_ends_its_readers_cleanly_and_serve_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let big = pattern(32 << 20, 7);
    let other = pattern(1 << 20, 8);
    put(root, "big.img", &big);
    put(root, "other.img", &other);
    let mut serve = serve_tree(root, &[]);
    let mut reader = session(&serve, "big").await;
    let mut digests = RawInitiator::connect(&serve.portal).await.unwrap();
    assert_eq!(
        digests
            .login_normal(&format!("{PREFIX}:big"), true)
            .await
            .unwrap(),
        (0, 0)
    );
    assert!(digests.framing.data_digest);
    // Both read the first MiB, so the mapping is in use.
    let (done, _) = reader.command(&read10(0, 2048), 1 << 20).await.unwrap();
    assert_eq!(done.status, 0);
    let (done, _) = digests.command(&read10(0, 2048), 1 << 20).await.unwrap();
    assert_eq!(done.status, 0);

    // Logged in before the cut, so that its target is the old one (64 KiB Data-In segments).
    let mut straddler = RawInitiator::connect(&serve.portal).await.unwrap();
    straddler.max_recv = 256 * 1024;
    let status = straddler
        .login_normal(&format!("{PREFIX}:big"), false)
        .await
        .unwrap();
    assert_eq!(status, (0, 0));
    straddler.clear_unit_attention().await.unwrap();

    // What an operator should never do, and may: cut the served file in place.
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("big.img"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    // A read that starts inside the new end and runs past it: its Data-In header promises
    // bytes that are gone, so the connection ends rather than carry a short segment.
    let straddling = straddler
        .command_with(&read10(0, 128), 64 << 10, |_, _| {})
        .await;
    assert!(
        !matches!(straddling, Ok(ref done) if done.status == 0),
        "a read across the new end got GOOD: {straddling:?}"
    );
    // Reads past the new end, straight away (before any rescan) and after: each ends in a
    // clean way (an error status, or the connection closed), never with wrong bytes.
    for client in [&mut reader, &mut digests] {
        for at in [8 << 20, 16 << 20, 24 << 20] {
            let lba = (at / 512) as u32;
            let mut bytes = Vec::new();
            match client
                .command_with(&read10(lba, 128), 64 << 10, |_, d| {
                    bytes.extend_from_slice(d)
                })
                .await
            {
                Ok(done) if done.status == 0 => {
                    assert!(
                        bytes[..] == big[at..at + (64 << 10)],
                        "GOOD status with bytes that are not the image's"
                    );
                }
                Ok(_) | Err(_) => break,
            }
        }
    }
    assert!(serve.running(), "serve died: {}", serve.log());
    // The other image is untouched, and big comes back at its new size once rescanned.
    let mut fine = session(&serve, "other").await;
    assert!(read_whole(&mut fine, other.len()).await == other);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // While serve withdraws big and serves it again (once settled), a login may find no
        // such target, and a session may see its target withdrawn under it: try again.
        let mut fresh = RawInitiator::connect(&serve.portal).await.unwrap();
        let status = fresh
            .login_normal(&format!("{PREFIX}:big"), false)
            .await
            .unwrap();
        // READ CAPACITY(10): the last LBA.
        let capacity = match status {
            (0, 0) => Some(
                fresh
                    .command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8)
                    .await
                    .unwrap(),
            ),
            (2, 3) => None,
            other => panic!("login to big: {other:?}"),
        };
        if let Some((done, data)) = capacity {
            assert!(
                done.status == 0 || done.sense_code() == Some((0x05, 0x25)),
                "READ CAPACITY: status {} {:?}",
                done.status,
                done.sense_code()
            );
            if done.status == 0 && u32::from_be_bytes([data[0], data[1], data[2], data[3]]) == 7 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "big never came back at 4096 bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        serve.log().contains("withdrawn (modified in place)"),
        "{}",
        serve.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_masks_and_chap_per_subtree_and_sighup_reloads_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("lab")).unwrap();
    std::fs::create_dir_all(root.join("private")).unwrap();
    put(&root, "public.img", &pattern(64 << 10, 1));
    put(&root.join("lab"), "x.img", &pattern(64 << 10, 2));
    put(&root.join("private"), "y.img", &pattern(64 << 10, 3));
    let secret = dir.path().join("private.secret");
    std::fs::write(&secret, "private-secret-1\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("serve.toml");
    let write_config = |lab_allow: &str| {
        std::fs::write(
            &config,
            format!(
                "root = \"tree\"\nsettle_seconds = 0\n\n\
                 [[subtree]]\npath = \"lab\"\nallow = [\"{lab_allow}\"]\n\n\
                 [[subtree]]\npath = \"private\"\nchap_user = \"alice\"\n\
                 chap_secret_file = \"private.secret\"\n"
            ),
        )
        .unwrap();
    };
    write_config("127.0.0.2/32");
    let serve = Serve::start_args(&[OsStr::new("--config"), config.as_os_str()], &[]);

    let login = |stem: &'static str| {
        let portal = serve.portal.clone();
        async move {
            let mut raw = RawInitiator::connect(&portal).await.unwrap();
            raw.login_normal(&format!("{PREFIX}:{stem}"), false)
                .await
                .unwrap()
        }
    };
    assert_eq!(login("public").await, (0, 0));
    assert_eq!(login("lab-x").await, (2, 2), "lab is masked from 127.0.0.1");
    assert_eq!(login("private-y").await, (2, 1), "private needs CHAP");
    let seen = targets(&serve).await;
    assert!(!seen.contains(&format!("{PREFIX}:lab-x")), "{seen:?}");
    assert!(seen.contains(&format!("{PREFIX}:public")), "{seen:?}");

    // Open lab to 127.0.0.1 and reload.
    write_config("127.0.0.0/8");
    serve.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while login("lab-x").await != (0, 0) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the masks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        serve.log().contains("configuration reloaded"),
        "{}",
        serve.log()
    );
    assert!(
        !serve.log().contains("private-secret-1"),
        "a secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_manager_sees_readiness_stats_and_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let image = pattern(1 << 20, 9);
    put(&root, "one.img", &image);
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let stats = dir.path().join("serve.stats");
    let mut serve = Serve::start_args(
        &[
            OsStr::new("--root"),
            root.as_os_str(),
            OsStr::new("--stats-file"),
            stats.as_os_str(),
            OsStr::new("--stats-interval"),
            OsStr::new("0.2"),
            OsStr::new("--logout-timeout"),
            OsStr::new("3"),
            OsStr::new("--settle"),
            OsStr::new("0"),
        ],
        &[("NOTIFY_SOCKET", notify_path.as_os_str())],
    );
    let mut message = [0u8; 512];
    let n = notify.recv(&mut message).expect("a READY=1 notification");
    let text = String::from_utf8_lossy(&message[..n]).to_string();
    assert!(text.lines().any(|l| l == "READY=1"), "{text}");

    let mut raw = session(&serve, "one").await;
    assert!(read_whole(&mut raw, image.len()).await == image);
    // The stats file shows the session and what it read.
    let wanted = format!("{PREFIX}:one 1 1 {} served", image.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&stats).unwrap_or_default();
        if text.contains(&wanted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats file never showed {wanted:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = common::isomount()
        .args(["serve", "--status", "--stats-file"])
        .arg(&stats)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains(&wanted), "{shown}");

    // SIGTERM: the session is asked to log out, logs out, and serve exits 0.
    serve.signal(libc::SIGTERM);
    let event = raw.wait_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(event, Some(1), "a logout request");
    assert_eq!(raw.logout().await.unwrap(), 0);
    let status = serve
        .wait_exit(Duration::from_secs(20))
        .expect("serve exits");
    assert!(status.success(), "{status:?}\n{}", serve.log());
    let n = notify
        .recv(&mut message)
        .expect("a STOPPING=1 notification");
    assert!(String::from_utf8_lossy(&message[..n]).contains("STOPPING=1"));
    assert!(
        serve
            .log()
            .contains("SIGTERM: asking 1 sessions to log out"),
        "{}",
        serve.log()
    );
}

/// Idle sessions cost the server little memory, and a thousand-image tree is served; counts
/// and loose memory bounds only (speed is `scripts/bench.sh`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_sessions_and_a_thousand_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    const IMAGES: usize = 1000;
    for i in 0..IMAGES {
        std::fs::write(root.join(format!("img{i:04}.img")), vec![i as u8; 4096]).unwrap();
    }
    let started = Instant::now();
    let serve = serve_tree(root, &[]);
    let listed = targets(&serve).await;
    println!(
        "{} of {IMAGES} images served {:.2?} after start",
        listed.len(),
        started.elapsed()
    );
    assert_eq!(listed.len(), IMAGES);

    const SESSIONS: usize = 1024;
    let before = rss_kib(serve.pid()).unwrap();
    let mut fleet = Fleet::log_in(
        &serve.portal,
        &format!("{PREFIX}:img0007"),
        0,
        SESSIONS,
        128,
    )
    .await;
    assert_eq!(fleet.logged_in(), SESSIONS, "{:?}", fleet.failures);
    assert_eq!(fleet.idle_for(Duration::from_secs(1)).await, SESSIONS);
    let after = rss_kib(serve.pid()).unwrap();
    let per_session = after.saturating_sub(before) as f64 / SESSIONS as f64;
    println!("{SESSIONS} idle sessions: {before} KiB → {after} KiB, {per_session:.1} KiB each");
    assert!(per_session <= 64.0, "{per_session:.1} KiB per idle session");
    let expected = Bytes::from(vec![7u8; 4096]);
    let report = fleet
        .read_for(64, 4096, Duration::from_secs(1), Some(expected))
        .await;
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.mismatched_bytes, 0);
    assert!(report.commands > 0);
    assert_eq!(fleet.log_out().await, SESSIONS);
}

/// A descriptor limit too low for the connections asked for: serve says so at start (naming the
/// limit and how many connections fit), serves that many, and keeps the rest waiting rather than
/// failing on EMFILE; a good client gets in as the half logins time out, and reads byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_limit_too_low_is_reported_and_connections_fit_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = common::random_file(dir.path(), "image.img", 1 << 20, 14);
    let want = std::fs::read(&image).unwrap();
    const LIMIT: u64 = 200;
    let mut serve = Serve::start_with_nofile(
        &[&image],
        &["--max-connections", "1000", "--login-timeout", "1"],
        LIMIT,
    );
    let log = serve.log();
    let line = log
        .lines()
        .find(|l| l.contains("file descriptor limit"))
        .unwrap_or_else(|| panic!("no word of the descriptor limit:\n{log}"));
    assert!(
        line.contains(&format!("limit {LIMIT} (the hard limit)")) && line.contains("not 1000"),
        "{line}"
    );

    // More connections than fit, none of them logging in; then a good client.
    let half_open = common::rude::half_logins(&serve.portal, 300).await.unwrap();
    let started = Instant::now();
    let mut good = session(&serve, "image").await;
    assert!(
        read_whole(&mut good, want.len()).await == want,
        "the good client got wrong bytes"
    );
    println!(
        "with {LIMIT} descriptors and 300 half logins ahead of it, the good client read after {:.1?}",
        started.elapsed()
    );
    drop(half_open);
    let log = serve.log();
    assert!(
        !log.contains("Too many open files") && !log.contains("panicked"),
        "{log}"
    );
    assert!(serve.running(), "{log}");
}
