//! What a user and a mirror operator are told, against real tgtd targets and `isomount serve`:
//! which LUN `publish` records, which of portal, target, LUN or authentication is at fault, a
//! portal that accepts and never logs in, what `-v` and `-vv` show, the range an offline read
//! misses, and a manifest that does not match its pin.

mod common;

use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
const IQN: &str = "iqn.2026-11.org.isomount.test:messages";
const CHAP_IQN: &str = "iqn.2026-11.org.isomount.test:messages-chap";
const USER: &str = "carol";
const SECRET: &str = "carols-secret-4711";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", text(&out.stderr));
}

struct Setup {
    dir: tempfile::TempDir,
    tgtd: Tgtd,
    image: PathBuf,
    catalog: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let image = random_file(dir.path(), "image.img", 4 * MIB, 31);
        let tgtd = Tgtd::start(
            test,
            &[
                TargetSpec::new(IQN, vec![LunSpec::disk(&image)]),
                TargetSpec::new(CHAP_IQN, vec![LunSpec::disk(&image)]).with_chap(USER, SECRET),
            ],
        );
        let catalog = dir.path().join("catalog.toml");
        Setup {
            dir,
            tgtd,
            image,
            catalog,
        }
    }

    fn publish(&self, name: &str, target: &str, portals: &[&str], extra: &[&str]) -> Output {
        let mut cmd = isomount();
        cmd.arg("publish")
            .arg(&self.image)
            .args(["--name", name, "--target", target, "-o"])
            .arg(&self.catalog)
            .args(extra);
        for p in portals {
            cmd.args(["--portal", p]);
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_cache("cache", args)
    }

    fn run_with_cache(&self, cache: &str, args: &[&str]) -> Output {
        isomount()
            .arg("--catalog")
            .arg(&self.catalog)
            .arg("--cache-dir")
            .arg(self.dir.path().join(cache))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The `lun = N` the catalog records for `name`.
    fn catalog_lun(&self, name: &str) -> u64 {
        let catalog = std::fs::read_to_string(&self.catalog).unwrap();
        let entry = catalog
            .split("[[image]]")
            .find(|e| e.contains(&format!("name = \"{name}\"")))
            .unwrap_or_else(|| panic!("no {name} in {catalog}"));
        entry
            .lines()
            .find_map(|l| l.trim().strip_prefix("lun = "))
            .unwrap_or_else(|| panic!("no lun for {name}: {entry}"))
            .parse()
            .unwrap()
    }
}

/// `isomount serve IMAGE --listen 127.0.0.1:0`, killed on drop.
struct Served {
    child: Child,
    portal: String,
}

impl Served {
    fn start(image: &Path) -> Served {
        let mut child = isomount()
            .arg("serve")
            .arg(image)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--iqn-prefix",
                "iqn.2026-11.org.test",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let portal = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve said {line:?}"))
            .to_string();
        Served { child, portal }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn publish_records_the_lun_that_holds_the_image_and_errors_name_the_fault() {
    let s = Setup::new("messages_publish_lun");
    let portal = s.tgtd.portal();
    let want = std::fs::read(&s.image).unwrap();

    // Asked of tgtd (LUN 0 is its controller, the image is LUN 1).
    ok(
        &s.publish("asked", IQN, &[&portal], &[]),
        "publish asking tgtd",
    );
    assert_eq!(s.catalog_lun("asked"), 1);
    assert!(s.run(&["cat", "asked"]).stdout == want);

    // Asked of `isomount serve`: LUN 0.
    let served = Served::start(&s.image);
    let served_iqn = "iqn.2026-11.org.test:image";
    ok(
        &s.publish("served", served_iqn, &[&served.portal], &[]),
        "publish asking serve",
    );
    assert_eq!(s.catalog_lun("served"), 0);
    assert!(s.run(&["cat", "served"]).stdout == want);

    // No portal answers: LUN 0, the one `serve` exports, and it says so.
    let dead = format!("127.0.0.1:{}", free_tcp_port());
    let out = s.publish("unasked", served_iqn, &[&dead], &[]);
    ok(&out, "publish with no portal answering");
    assert!(text(&out.stderr).contains("LUN 0"), "{}", text(&out.stderr));
    assert_eq!(s.catalog_lun("unasked"), 0);

    // The wrong target and the wrong credentials are refused by name.
    let out = s.publish(
        "typo",
        "iqn.2026-11.org.isomount.test:nosuch",
        &[&portal],
        &[],
    );

    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("nosuch") && err.contains("--lun"), "{err}");
    let out = s.publish("locked", CHAP_IQN, &[&portal], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("authentication"),
        "{}",
        text(&out.stderr)
    );

    // A LUN the target does not have: reading says so, and which LUNs it has (with a cache of
    // its own: the image is the same, and cached already).
    ok(
        &s.publish("wrong", IQN, &[&portal], &["--lun", "3"]),
        "publish --lun 3",
    );
    let out = s.run_with_cache("other-cache", &["cat", "wrong"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("target {IQN} at {portal} has no LUN 3"))
            && err.contains("it has LUN 0, 1"),
        "{err}"
    );
    assert!(
        err.contains("no portal serves it") && !err.contains("no portal reachable"),
        "{err}"
    );
    assert!(!err.contains("ILLEGAL REQUEST"), "{err}");
}

/// A portal that accepts connections and never says a word, until dropped.
struct SilentPortal {
    portal: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentPortal {
    fn start() -> SilentPortal {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let portal = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SilentPortal {
            portal,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentPortal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_portal_that_never_logs_in_is_passed_over_with_a_warning() {
    let s = Setup::new("messages_silent_portal");
    let silent = SilentPortal::start();
    let live = s.tgtd.portal();
    ok(
        &s.publish("img", IQN, &[&silent.portal, &live], &["--lun", "1"]),
        "publish",
    );
    let out = s.run(&["cat", "img"]);
    ok(&out, "cat past a silent portal");
    assert!(out.stdout == std::fs::read(&s.image).unwrap());
    let err = text(&out.stderr);
    assert!(
        err.contains(&silent.portal)
            && err.contains("no login within 2 s")
            && err.contains("trying the next portal"),
        "{err}"
    );
}

#[test]
fn verbose_shows_connection_login_negotiation_failover_and_cache_decisions() {
    let s = Setup::new("messages_verbose");
    let portal = s.tgtd.portal();
    let url = s.tgtd.url(IQN, 1);

    let quiet = s.run(&["info", &url]);
    ok(&quiet, "info");
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));

    let out = s.run(&["-v", "info", &url]);
    ok(&out, "-v info");
    let err = text(&out.stderr);
    for want in [
        format!("connecting to {portal} for {IQN} LUN 1"),
        format!("logged in to {IQN} at {portal}"),
        "negotiated HeaderDigest=".to_string(),
        "MaxBurstLength=".to_string(),
        "blocks of 512 bytes".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} in {err}");
    }
    assert!(
        !err.contains("READ opcode"),
        "per-command detail is -vv: {err}"
    );

    // CHAP: the user is shown, never the secret.
    let chap_url = s.tgtd.url(CHAP_IQN, 1);
    let out = isomount()
        .args(["-vv", "info", &chap_url])
        .env("LIBISCSI_CHAP_USERNAME", USER)
        .env("LIBISCSI_CHAP_PASSWORD", SECRET)
        .output()
        .unwrap();
    ok(&out, "-vv info with CHAP");
    let err = text(&out.stderr);
    assert!(err.contains(&format!("CHAP as user `{USER}`")), "{err}");
    assert!(!err.contains(SECRET), "secret leaked: {err}");

    // A catalog name: failover past a dead portal, the cache store, and with -vv each command.
    let dead = format!("127.0.0.1:{}", free_tcp_port());
    ok(
        &s.publish("img", IQN, &[&dead, &portal], &["--lun", "1"]),
        "publish",
    );
    let out = s.run(&["-vv", "cat", "img"]);
    ok(&out, "-vv cat");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("img: cannot connect to {dead}"))
            && err.contains("trying the next portal"),
        "{err}"
    );
    assert!(
        err.contains(&format!("img: connected to {portal}")),
        "{err}"
    );
    assert!(
        err.contains("img: cache store ") && err.contains("0 of 64 chunks of 65536 bytes present"),
        "{err}"
    );
    assert!(err.contains("chunks cached, fetching the rest"), "{err}");
    let out = s.run(&["-v", "cat", "img"]);
    ok(&out, "-v cat, cached");
    let err = text(&out.stderr);
    assert!(
        err.contains("64 of 64 chunks of 65536 bytes present"),
        "{err}"
    );
    assert!(
        !err.contains("fetching the rest"),
        "per-read detail is -vv: {err}"
    );
    let out = s.run(&["-vv", "cat", &url]);
    ok(&out, "-vv cat URL");
    assert!(
        text(&out.stderr).contains("READ opcode 0x28, LBA 0"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn offline_names_the_missing_range_and_a_bad_pin_names_the_catalog_line() {
    let s = Setup::new("messages_offline_range");
    let portal = s.tgtd.portal();
    ok(
        &s.publish("img", IQN, &[&portal], &["--lun", "1"]),
        "publish",
    );
    ok(&s.run(&["fetch", "img"]), "fetch");
    // Damage chunk 5, so `cache verify` drops it: one chunk missing.
    let store = only_store(&s.dir.path().join("cache"));
    let data = store.join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5 * 65536 + 9] ^= 0x20;
    std::fs::write(&data, &bytes).unwrap();
    assert!(!s.run(&["cache", "verify"]).status.success());
    let out = s.run(&["--offline", "cat", "img"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("img: bytes 327680..393216 are not cached and isomount is offline"),
        "{err}"
    );

    // The published manifest no longer matches its pin: named with the catalog's file and line.
    let manifest = s.dir.path().join("img.manifest");
    let mut m = std::fs::read(&manifest).unwrap();
    m[100] ^= 1;
    std::fs::write(&manifest, &m).unwrap();
    let catalog = s.catalog.display().to_string();
    let out = s.run_with_cache("fresh-cache", &["cat", "img"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{catalog}:1: manifest of `img`"))
            && err.contains("does not match the catalog's pin"),
        "{err}"
    );
    let out = s.run(&["list"]);
    assert!(
        !out.status.success(),
        "list accepts a catalog it cannot use"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{catalog}:1: `img`")) && err.contains("does not match"),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("manifest refused"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_only_portal_is_waited_for_past_the_short_login_bound() {
    let s = Setup::new("messages_slow_sole_portal");
    let live = s.tgtd.portal();
    ok(&s.publish("img", IQN, &[&live], &[]), "publish");
    // Every exchange through this link takes 2.4 s: past the 2 s that passes a portal over
    // for another one, but this catalog names no other.
    let slow = FaultProxy::start(&live, Faults::delayed(Duration::from_millis(1200)));
    let catalog = std::fs::read_to_string(&s.catalog).unwrap();
    std::fs::write(&s.catalog, catalog.replace(&live, &slow.portal())).unwrap();
    let out = s.run(&["cat", "img"]);
    ok(&out, "cat over a slow link to the only portal");
    assert!(out.stdout == std::fs::read(&s.image).unwrap());
    assert!(
        slow.connections() >= 1,
        "the read went through the slow link"
    );
}
