//! Catalogs, manifests and the verified cache against real tgtd targets, through the binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;
const IQN: &str = "iqn.2026-11.org.isomount.test:cache";

/// A published image served by tgtd, with a catalog and a cache directory of its own.
struct Published {
    dir: tempfile::TempDir,
    tgtd: Tgtd,
    image: PathBuf,
    catalog: PathBuf,
    /// The chunk hash algorithm it is published with.
    hash: &'static str,
}

impl Published {
    fn new(test: &str, size: u64, seed: u64) -> Published {
        Published::hashed(test, size, seed, "sha256")
    }

    /// [`Published::new`] with chunk hashes of `hash` (`publish --hash`).
    fn hashed(test: &str, size: u64, seed: u64, hash: &'static str) -> Published {
        let dir = tempfile::tempdir().unwrap();
        let image = random_file(dir.path(), "image.img", size, seed);
        let tgtd = Tgtd::start(test, &[TargetSpec::new(IQN, vec![LunSpec::disk(&image)])]);
        let catalog = dir.path().join("catalog.toml");
        let p = Published {
            dir,
            tgtd,
            image,
            catalog,
            hash,
        };
        let portal = p.tgtd.portal();
        p.publish("img", &[&portal]);
        p
    }

    fn publish(&self, name: &str, portals: &[&str]) {
        let mut cmd = isomount();
        cmd.arg("publish")
            .arg(&self.image)
            .args(["--name", name, "--target", IQN, "--lun", "1"])
            .args(["--hash", self.hash, "-o"])
            .arg(&self.catalog);
        for p in portals {
            cmd.args(["--portal", p]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "publish: {}", text(&out.stderr));
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `isomount` with this catalog and cache, and `args`.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = isomount();
        cmd.arg("--catalog")
            .arg(&self.catalog)
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.image).unwrap()
    }

    fn store_data(&self) -> PathBuf {
        only_store(&self.cache_dir()).join("data")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", text(&out.stderr));
}

/// Flip one byte of a file in place.
fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x55;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

/// A fully cached `cat NAME` streams the image without waiting for its mirror, here one that
/// takes the connection and never answers: every byte is out while that connection still hangs
/// open; once it is cut, the cat says so, once, and succeeds.
#[test]
fn a_fully_cached_cat_does_not_wait_for_its_mirror() {
    use std::io::Read;
    let mut p = Published::new("cache_cat_no_wait", 3 * MIB + 512, 21);
    assert_ok(&p.run(&["fetch", "img"]), "fetch");
    let want = p.bytes();
    let portal = p.tgtd.portal();
    p.tgtd.kill();
    let silent = std::net::TcpListener::bind(&portal).unwrap();
    silent.set_nonblocking(true).unwrap();
    let mut child = p
        .command(&["cat", "img"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut conn = loop {
        match silent.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "cat never connected"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let mut got = vec![0u8; want.len()];
    child.stdout.as_mut().unwrap().read_exact(&mut got).unwrap();
    assert!(got == want, "the cached image, byte-exact");
    // The connection is still open on cat's side: what it sent can be read, then nothing (no
    // end of stream).
    conn.set_nonblocking(true).unwrap();
    let mut sent = [0u8; 4096];
    loop {
        match conn.read(&mut sent) {
            Ok(0) => panic!("cat gave up on the mirror before writing the image"),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    drop(conn);
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "cat");
    assert!(out.stdout.is_empty(), "nothing more after the image");
    let warnings = text(&out.stderr);
    assert_eq!(
        warnings.matches("serving cached chunks only").count(),
        1,
        "one warning: {warnings}"
    );
}

/// A cached image's first bytes are not fetched again while connecting: a `cat` of the fully
/// cached image still logs in to its mirror, but what crosses the wire is the login and the
/// probe, not the 256 KiB the connection reads ahead for an image that is not cached.
#[test]
fn connecting_for_a_cached_image_reads_none_of_its_bytes() {
    let p = Published::new("cache_connect_cached", 3 * MIB + 512, 22);
    let proxy = FaultProxy::start(&p.tgtd.portal(), Faults::default());
    p.publish("img", &[&proxy.portal()]);
    assert_ok(&p.run(&["fetch", "img"]), "fetch");
    let fetched = proxy.bytes_to_client();
    assert!(
        fetched >= 3 * MIB,
        "the fetch came through the proxy: {fetched} bytes"
    );

    let out = p.run(&["cat", "img"]);
    assert_ok(&out, "cat");
    assert!(out.stdout == p.bytes(), "the cached image, byte-exact");
    assert!(
        proxy.connections() >= 2,
        "cat connected to its mirror too ({} connections)",
        proxy.connections()
    );
    let connecting = proxy.bytes_to_client() - fetched;
    assert!(
        connecting < 64 << 10,
        "{connecting} bytes reached the client while it connected for a cached image"
    );
}

#[test]
fn publish_list_cat_fetch_offline_and_target_gone() {
    let mut p = Published::new("cache_publish_cat", 6 * MIB + 1536, 11);
    let want = p.bytes();

    let list = p.run(&["list"]);
    assert_ok(&list, "list");
    let listing = text(&list.stdout);
    assert!(listing.contains("img"), "{listing}");
    assert!(listing.contains(&p.tgtd.portal()), "{listing}");
    assert!(listing.contains("(0%)"), "{listing}");

    let cold = p.run(&["cat", "img"]);
    assert_ok(&cold, "cold cat");
    assert!(cold.stdout == want, "cold cat is byte-exact");
    assert!(text(&p.run(&["list"]).stdout).contains("(100%)"));

    let again = p.run(&["fetch", "img"]);
    assert_ok(&again, "second fetch");
    assert!(
        text(&again.stderr).contains("fetched 0 B"),
        "{}",
        text(&again.stderr)
    );

    p.tgtd.kill();
    let gone = p.run(&["cat", "img"]);
    assert_ok(&gone, "cat with the target gone");
    assert!(gone.stdout == want);
    let warnings = text(&gone.stderr);
    assert_eq!(
        warnings.matches("no portal reachable").count(),
        1,
        "one warning: {warnings}"
    );
    assert!(
        !warnings.contains('\x1b'),
        "no terminal colours in a pipe: {warnings:?}"
    );

    let offline = p.run(&["--offline", "cat", "img"]);
    assert_ok(&offline, "offline cat");
    assert!(offline.stdout == want);
    assert!(offline.stderr.is_empty(), "{}", text(&offline.stderr));

    assert_ok(&p.run(&["cache", "evict", "img"]), "evict");
    let miss = p.run(&["--offline", "cat", "img"]);
    assert!(!miss.status.success());
    assert!(
        text(&miss.stderr).contains("img: bytes 0..")
            && text(&miss.stderr).contains("not cached and isomount is offline"),
        "{}",
        text(&miss.stderr)
    );
    assert!(miss.stdout.is_empty());
}

#[test]
fn corrupt_cache_is_detected_never_served_and_healed() {
    corrupt_cache_is_detected_never_served_and_healed_under(Published::new(
        "cache_corrupt",
        4 * MIB,
        12,
    ));
}

/// The same under a manifest of BLAKE3 chunk hashes: `cache verify` and reads re-hash with BLAKE3,
/// and `info` says which algorithm.
#[test]
fn corrupt_cache_under_a_blake3_manifest_is_detected_and_healed() {
    let p = Published::hashed("cache_corrupt_blake3", 4 * MIB, 14, "blake3");
    let info = p.run(&["info", "img"]);
    assert_ok(&info, "info");
    let line = text(&info.stdout)
        .lines()
        .find(|l| l.starts_with("chunk-hash"))
        .map(str::to_string);
    assert_eq!(
        line.as_deref()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["chunk-hash", "blake3"]),
        "{}",
        text(&info.stdout)
    );
    corrupt_cache_is_detected_never_served_and_healed_under(p);
}

fn corrupt_cache_is_detected_never_served_and_healed_under(mut p: Published) {
    let want = p.bytes();
    assert_ok(&p.run(&["fetch", "img"]), "fetch");
    let data = p.store_data();
    flip(&data, 3 * MIB + 17);
    let verify = p.run(&["cache", "verify"]);
    assert!(
        !verify.status.success(),
        "verify must fail on a corrupt chunk"
    );
    let chunk = (3 * MIB + 17) / (64 << 10);
    assert!(
        text(&verify.stderr).contains(&format!("img: chunk {chunk} is corrupt")),
        "{}",
        text(&verify.stderr)
    );
    assert_ok(&p.run(&["cache", "verify"]), "verify after dropping");

    flip(&data, MIB + 5);
    p.tgtd.kill();
    let partial = p.run(&["cat", "img"]);
    assert!(
        !partial.status.success(),
        "a corrupt chunk with no target must fail"
    );
    assert!(partial.stdout.len() < want.len());
    assert!(want.starts_with(&partial.stdout), "output is a true prefix");
    assert!(partial.stdout.len() as u64 <= MIB);

    p.tgtd.restart();
    let healed = p.run(&["cat", "img"]);
    assert_ok(&healed, "cat after the target returned");
    assert!(healed.stdout == want);
    assert_ok(&p.run(&["cache", "verify"]), "verify after healing");
    assert!(p.run(&["--offline", "cat", "img"]).stdout == want);
}

#[test]
fn tampered_image_fails_naming_verification_with_a_true_prefix() {
    let p = Published::new("cache_tampered", 5 * MIB, 13);
    let want = p.bytes();
    let at = 3 * MIB + 100;
    flip(&p.image, at);
    let out = p.run(&["cat", "img"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let chunk = at / (64 << 10);
    assert!(
        err.contains(&format!("chunk {chunk} failed verification")) && err.contains("img"),
        "{err}"
    );
    assert!(want.starts_with(&out.stdout), "output is a true prefix");
    assert!((out.stdout.len() as u64) <= chunk * (64 << 10));
}

#[test]
fn kill_9_during_fetch_leaves_a_verifiable_cache() {
    let p = Published::new("cache_kill9", 48 * MIB, 14);
    let want = p.bytes();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = p
            .command(&["fetch", "img"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + seed % 300));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let verify = p.run(&["cache", "verify"]);
    assert_ok(&verify, "verify after kill -9");
    assert_ok(&p.run(&["fetch", "img"]), "fetch to completion");
    assert!(p.run(&["--offline", "cat", "img"]).stdout == want);
}

#[test]
fn two_mirrors_with_the_first_dead() {
    let dir_portal = format!("127.0.0.1:{}", free_tcp_port());
    let p = Published::new("cache_mirrors", 3 * MIB, 15);
    let live = p.tgtd.portal();
    p.publish("img", &[&dir_portal, &live]);
    let started = std::time::Instant::now();
    let out = p.run(&["cat", "img"]);
    assert_ok(&out, "cat through the second mirror");
    assert!(out.stdout == p.bytes());
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn eviction_keeps_the_cache_under_its_size() {
    let p = Published::new("cache_evict", 4 * MIB, 16);
    let second = random_file(p.dir.path(), "second.img", 4 * MIB, 17);
    let tgtd2 = Tgtd::start(
        "cache_evict_2",
        &[TargetSpec::new(IQN, vec![LunSpec::disk(&second)])],
    );
    let out = isomount()
        .arg("publish")
        .arg(&second)
        .args([
            "--name",
            "second",
            "--target",
            IQN,
            "--portal",
            &tgtd2.portal(),
            "-o",
        ])
        .arg(&p.catalog)
        .output()
        .unwrap();
    assert_ok(&out, "publish second");
    assert_ok(&p.run(&["--cache-size", "6M", "fetch", "img"]), "fetch img");
    std::thread::sleep(Duration::from_millis(1100));
    assert_ok(
        &p.run(&["--cache-size", "6M", "fetch", "second"]),
        "fetch second",
    );
    let list = text(&p.run(&["cache", "list"]).stdout);
    let total: u64 = {
        let stores = std::fs::read_dir(p.cache_dir().join("images")).unwrap();
        stores
            .map(|s| {
                let data = s.unwrap().path().join("data");
                std::fs::metadata(&data)
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.blocks() * 512
                    })
                    .unwrap_or(0)
            })
            .sum()
    };
    assert!(
        total <= 6 * MIB + 64 * 1024,
        "{total} bytes on disk\n{list}"
    );
    let offline_second = p.run(&["--offline", "cat", "second"]);
    assert!(
        offline_second.stdout == std::fs::read(&second).unwrap(),
        "most recent image kept whole"
    );
    let offline_first = p.run(&["--offline", "cat", "img"]);
    assert!(
        !offline_first.status.success(),
        "the least recently used chunks went first"
    );
}

#[test]
fn broken_catalogs_and_unknown_names_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[image]]\nname = \"a\"\ntarget = \"iqn.2000-01.x:a\"\nportals = [\"h\"]\nsize = 1\nfoo = 2\n",
            ":6: key `foo`: unknown field `foo`",
        ),
        (
            "[[image]]\nname = \"a\"\ntarget = \"iqn.2000-01.x:a\"\nportals = [\"h\"]\nsize = 1\n[[image]]\nname = \"a\"\ntarget = \"iqn.2000-01.x:a\"\nportals = [\"h\"]\nsize = 1\n",
            ":7: key `name`: duplicate image name `a`",
        ),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let out = isomount()
            .arg("--catalog")
            .arg(&file)
            .arg("list")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("bad{i}.toml{expected}")), "{err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[image]]\nname = \"netbsd-5.0\"\ntarget = \"iqn.2000-01.x:a\"\nportals = [\"127.0.0.1:9\"]\nsize = 4096\n",
    )
    .unwrap();
    let out = isomount()
        .arg("--catalog")
        .arg(&good)
        .args(["--offline", "cat", "netbsd5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("did you mean `netbsd-5.0`"),
        "{}",
        text(&out.stderr)
    );
    let out = isomount()
        .args(["--catalog", "http://127.0.0.1:9/c.toml", "list"])
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("plain http is refused"));
}

/// A small tmpfs, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the suite runs as root)"
        );
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_degrades_to_uncached_reads_with_one_warning() {
    let p = Published::new("cache_full_disk", 4 * MIB, 18);
    let _fs = SmallFs::mount(&p.cache_dir(), "1m");
    let out = p.run(&["cat", "img"]);
    assert_ok(&out, "cat onto a full cache disk");
    assert!(out.stdout == p.bytes());
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("continuing without caching").count(),
        1,
        "{err}"
    );
    assert_ok(&p.run(&["cache", "verify"]), "what did get cached verifies");
}

#[test]
fn two_processes_share_one_cache() {
    let p = Published::new("cache_two_procs", 16 * MIB, 19);
    let want = p.bytes();
    let spawn = || {
        isomount()
            .arg("--catalog")
            .arg(&p.catalog)
            .arg("--cache-dir")
            .arg(p.cache_dir())
            .args(["cat", "img"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_ok(&a, "first reader");
    assert_ok(&b, "second reader");
    assert!(a.stdout == want && b.stdout == want);
    assert_ok(&p.run(&["cache", "verify"]), "verify after concurrent use");
    assert!(p.run(&["--offline", "cat", "img"]).stdout == want);
}

#[test]
fn fetch_files_pulls_only_those_files() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("sample.iso");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample.iso"),
        &iso,
    )
    .unwrap();
    let tgtd = Tgtd::start(
        "cache_fetch_files",
        &[TargetSpec::new(IQN, vec![LunSpec::cd(&iso)])],
    );
    let catalog = dir.path().join("catalog.toml");
    let cache = dir.path().join("cache");
    let out = isomount()
        .arg("publish")
        .arg(&iso)
        .args([
            "--name",
            "sample",
            "--target",
            IQN,
            "--portal",
            &tgtd.portal(),
            "-o",
        ])
        .arg(&catalog)
        .output()
        .unwrap();
    assert_ok(&out, "publish");
    let run = |args: &[&str]| {
        isomount()
            .arg("--catalog")
            .arg(&catalog)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .output()
            .unwrap()
    };
    assert_ok(
        &run(&["fetch", "sample", "--files", "/docs/usage.txt"]),
        "fetch --files",
    );
    assert_ok(
        &run(&["--offline", "fetch", "sample", "--files", "/docs/usage.txt"]),
        "the file is cached",
    );
    let listing = text(&run(&["list"]).stdout);
    assert!(
        !listing.contains("(100%)") && !listing.contains("(0%)"),
        "{listing}"
    );
    let missing = run(&["fetch", "sample", "--files", "/no/such/file"]);
    let err = text(&missing.stderr);
    assert!(!missing.status.success());
    assert!(err.contains("/no/such/file"), "{err}");
}

#[test]
fn fetch_fails_saying_how_much_is_missing_and_why() {
    let p = Published::new("cache_fetch_honest", 4 * MIB, 21);
    let last_line = |out: &Output| {
        let err = text(&out.stderr);
        assert!(!out.status.success(), "fetch must fail: {err}");
        err.lines().last().unwrap_or("").to_string()
    };
    {
        let _fs = SmallFs::mount(&p.cache_dir(), "1m");
        let out = p.run(&["fetch", "img"]);
        let last = last_line(&out);
        assert!(
            last.contains("img: ") && last.contains("of 4.00 MiB are not cached"),
            "{last}"
        );
        assert!(last.contains("No space left on device"), "{last}");
        let list = text(&p.run(&["list"]).stdout);
        assert!(!list.contains("(100%)"), "{list}");
    }
    // A cache bound smaller than the image: the chunks are fetched, then evicted.
    let out = p.run(&["--cache-size", "2M", "fetch", "img"]);
    let last = last_line(&out);
    assert!(
        last.contains("are not cached") && last.contains("--cache-size 2M"),
        "{last}"
    );
    // Offline with a partial cache: nothing fetched, and it says so.
    let out = p.run(&["--offline", "fetch", "img"]);
    let last = last_line(&out);
    assert!(last.contains("offline"), "{last}");
    // And when it all lands, success says so.
    let out = p.run(&["fetch", "img"]);
    assert_ok(&out, "fetch with room");
    assert!(
        text(&out.stderr).contains("4.00 MiB complete and verified"),
        "{}",
        text(&out.stderr)
    );
    assert!(p.run(&["--offline", "cat", "img"]).stdout == p.bytes());
}

#[test]
fn cache_verify_repairs_a_damaged_manifest_copy_and_keeps_the_chunks() {
    let mut p = Published::new("cache_manifest_copy", 4 * MIB, 22);
    let want = p.bytes();
    assert_ok(&p.run(&["fetch", "img"]), "fetch");
    let copy = p.store_data().with_file_name("manifest");
    flip(&copy, 100);
    flip(&copy, 200);
    let verify = p.run(&["cache", "verify"]);
    let err = text(&verify.stderr);
    assert!(!verify.status.success(), "damage found is reported: {err}");
    assert!(
        err.contains("img: the cache's copy of its manifest was damaged")
            && err.contains("does not match the catalog's pin")
            && err.contains("repaired from")
            && err.contains("img.manifest"),
        "{err}"
    );
    assert!(!err.contains("is corrupt"), "no chunk condemned: {err}");
    assert!(
        text(&verify.stdout).contains("64 cached chunk(s) checked, 0 corrupt"),
        "{}",
        text(&verify.stdout)
    );
    assert_ok(&p.run(&["cache", "verify"]), "verify after the repair");
    assert!(text(&p.run(&["list"]).stdout).contains("(100%)"));

    // Nothing to repair it from: the copy is named, and the chunks are kept.
    flip(&copy, 300);
    let source = p.dir.path().join("img.manifest");
    let aside = p.dir.path().join("aside.manifest");
    std::fs::rename(&source, &aside).unwrap();
    let verify = p.run(&["cache", "verify"]);
    let err = text(&verify.stderr);
    assert!(!verify.status.success(), "{err}");
    assert!(
        err.contains(&copy.display().to_string())
            && err.contains("64 cached chunk(s) were kept unchecked")
            && err.contains("cache verify"),
        "{err}"
    );
    assert!(!err.contains("is corrupt"), "{err}");
    std::fs::rename(&aside, &source).unwrap();
    assert!(text(&p.run(&["list"]).stdout).contains("(100%)"));
    p.tgtd.kill();
    let offline = p.run(&["--offline", "cat", "img"]);
    assert!(offline.stdout == want, "{}", text(&offline.stderr));

    // A chunk that fails against a manifest matching its pin is still dropped.
    let verify = p.run(&["cache", "verify"]);
    assert!(text(&verify.stderr).contains("repaired from"));
    flip(&p.store_data(), MIB + 3);
    let verify = p.run(&["cache", "verify"]);
    assert!(
        text(&verify.stderr).contains(&format!("img: chunk {} is corrupt", MIB / (64 << 10))),
        "{}",
        text(&verify.stderr)
    );
}

/// An https manifest's kept copy is replaced only by a download that matches the pin: a mirror
/// serving a damaged manifest leaves the good kept copy in place, and it is used, with a warning.
#[test]
fn a_bad_https_manifest_never_replaces_the_good_kept_copy() {
    let p = Published::new("cache_https_manifest", 2 * MIB, 23);
    let ca = TestCa::generate();
    let nginx = Nginx::start_tls("cache_https_manifest", p.dir.path(), &ca);
    let url = nginx.url("catalog.toml");
    let run = |cache: &str, args: &[&str]| {
        isomount()
            .env("ISOMOUNT_CA_FILE", ca.ca_pem())
            .arg("--catalog")
            .arg(&url)
            .arg("--cache-dir")
            .arg(p.dir.path().join(cache))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let served = p.dir.path().join("img.manifest");
    let good = std::fs::read(&served).unwrap();
    let pin = hex::encode(isomount::manifest::sha256(&good));
    let kept = p.dir.path().join("cache/manifests").join(&pin);

    let first = run("cache", &["cat", "img"]);
    assert_ok(&first, "cat with the manifest over https");
    assert!(first.stdout == p.bytes());
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        good,
        "the good manifest is kept"
    );

    // The mirror now serves a damaged manifest; the image's store (and its own copy of the
    // manifest) is gone, so the manifest is fetched again.
    let mut damaged = good.clone();
    damaged[100] ^= 1;
    std::fs::write(&served, &damaged).unwrap();
    assert_ok(&run("cache", &["cache", "evict", "img"]), "evict");
    let again = run("cache", &["cat", "img"]);
    assert_ok(
        &again,
        "cat with a damaged manifest served and a good one kept",
    );
    assert!(again.stdout == p.bytes());
    let warning = text(&again.stderr);
    assert!(
        warning.contains(&format!(
            "{}: what it serves now is refused",
            nginx.url("img.manifest")
        )) && warning.contains("does not match the catalog's pin")
            && warning.contains("using the copy kept from before"),
        "{warning}"
    );
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        good,
        "the kept copy is not replaced"
    );

    // With no good copy kept, the damaged download is refused and not kept.
    let fresh = run("fresh-cache", &["cat", "img"]);
    assert!(!fresh.status.success() && fresh.stdout.is_empty());
    let err = text(&fresh.stderr);
    assert!(
        err.contains(&format!("{url}:1: manifest of `img`: "))
            && err.contains("what it serves now is refused")
            && err.contains("does not match the catalog's pin")
            && err.contains("no copy is kept"),
        "{err}"
    );
    assert!(!p
        .dir
        .path()
        .join("fresh-cache/manifests")
        .join(&pin)
        .exists());

    // A kept copy damaged on disk is named by `list`, not passed over as never fetched.
    flip(&kept, 100);
    let list = run("cache", &["list"]);
    let err = text(&list.stderr);
    assert!(
        !list.status.success() && err.contains("the copy kept from before is refused"),
        "{err}"
    );
}

#[test]
fn cat_to_a_reader_that_stops_early_writes_a_true_prefix_and_ends_quietly() {
    use std::io::Read;
    let p = Published::new("cache_cat_prefix", 4 * MIB, 23);
    let want = p.bytes();
    let mut child = p
        .command(&["cat", "img"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = vec![0u8; 300_001];
    stdout.read_exact(&mut head).unwrap();
    assert!(head[..] == want[..head.len()], "a true prefix");
    drop(stdout);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cat did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "a closed stdout ends quietly: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `cat` streams a fully cached image from the cache on one thread. A cached chunk that went
/// bad meanwhile is caught there, fetched again and the output stays byte-exact; with no target
/// to fetch it from, the output is a true prefix that ends before the bad chunk.
#[test]
fn cat_of_a_fully_cached_image_heals_a_bad_chunk_or_stops_before_it() {
    let mut p = Published::new("cache_cat_whole", 5 * MIB, 23);
    let want = p.bytes();
    assert_ok(&p.run(&["fetch", "img"]), "fetch");
    let data = p.store_data();
    let chunk_of = |at: u64| at / (64 << 10);

    let first = 2 * MIB + 4242;
    flip(&data, first);
    let healed = p.run(&["cat", "img"]);
    assert_ok(&healed, "cat of a cached image with a bad chunk");
    assert!(healed.stdout == want, "byte-exact");
    let said = text(&healed.stderr);
    assert!(
        said.contains(&format!(
            "cached chunk {} failed verification",
            chunk_of(first)
        )),
        "{said}"
    );
    let again = p.run(&["fetch", "img"]);
    assert!(
        text(&again.stderr).contains("fetched 0 B"),
        "the chunk fetched by cat was kept: {}",
        text(&again.stderr)
    );

    let second = 3 * MIB + 777;
    flip(&data, second);
    p.tgtd.kill();
    let cut = p.run(&["cat", "img"]);
    assert!(
        !cut.status.success(),
        "no target to fetch the bad chunk from"
    );
    assert!(want.starts_with(&cut.stdout), "output is a true prefix");
    assert!(cut.stdout.len() as u64 <= chunk_of(second) * (64 << 10));
}
