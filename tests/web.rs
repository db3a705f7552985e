//! Web mirrors through the binary, against real web servers on loopback: nginx over http and
//! over https (HTTP/2, a test CA), Python's http.server (which ignores Range), a mirror serving one
//! wrong chunk, and a dead iSCSI portal beside a web mirror, each with `cat`, `fetch`, `fetch
//! --files` and a real FUSE mount, byte-exact; and through mounts: a mirror whose link goes
//! silent (hedged to the next), ranges growing with a sequential reader, what one small file
//! costs after a mount, a portal and a web mirror ranked together, a dead web mirror passed over
//! and preferred again once back.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(120);
const IQN: &str = "iqn.2026-11.org.isomount.test:web";

/// An ISO image built from a small tree, in a web root of its own.
struct Image {
    dir: tempfile::TempDir,
    tree: PathBuf,
    /// The web root: `image.iso` is the image.
    www: PathBuf,
}

impl Image {
    fn new(test: &str) -> Image {
        let dir = test_dir(test);
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("docs/deep")).unwrap();
        std::fs::write(tree.join("README"), b"isomount over the web\n").unwrap();
        std::fs::write(tree.join("docs/deep/notes.txt"), b"ranges\n").unwrap();
        random_file(&tree, "kernel.bin", 3 << 20, 1);
        random_file(&tree.join("docs"), "set.tgz", 700_001, 2);
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        iso_from_dir(&tree, &www.join("image.iso"), IsoFlavour::RockRidgeJoliet);
        Image { dir, tree, www }
    }

    fn iso(&self) -> PathBuf {
        self.www.join("image.iso")
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.iso()).unwrap()
    }

    /// Publish the image as `name` with these mirrors into `catalog.toml` (the manifest beside
    /// it); returns a client for it.
    fn publish(&self, name: &str, portals: &[&str], urls: &[&str]) -> Client {
        self.publish_hashed(name, portals, urls, "sha256")
    }

    /// [`Image::publish`] with chunk hashes of `hash` (`publish --hash`).
    fn publish_hashed(&self, name: &str, portals: &[&str], urls: &[&str], hash: &str) -> Client {
        let catalog = self.dir.path().join("catalog.toml");
        let mut cmd = isomount();
        cmd.arg("publish")
            .arg(self.iso())
            .args(["--name", name, "--hash", hash, "-o"])
            .arg(&catalog);
        if !portals.is_empty() {
            cmd.args(["--target", IQN]);
        }
        for p in portals {
            cmd.args(["--portal", p]);
        }
        for u in urls {
            cmd.args(["--url", u]);
        }
        let out = run_bounded(&mut cmd, LIMIT);
        assert!(out.status.success(), "publish: {}", text(&out.stderr));
        Client {
            catalog,
            dir: self.dir.path().to_path_buf(),
            name: name.to_string(),
            env: Vec::new(),
        }
    }

    /// A copy of the image with one byte of the chunk holding `offset` changed, in a web root
    /// of its own.
    fn corrupt_copy(&self, offset: u64) -> PathBuf {
        let www = self.dir.path().join("www-corrupt");
        std::fs::create_dir_all(&www).unwrap();
        corrupt_copy(&self.iso(), &www.join("image.iso"), offset, 1);
        www
    }
}

/// Runs the binary against one catalog, with a fresh cache directory per label.
struct Client {
    /// A catalog file (or an https URL).
    catalog: PathBuf,
    dir: PathBuf,
    name: String,
    env: Vec<(String, String)>,
}

impl Client {
    fn with_env(mut self, key: &str, value: &Path) -> Client {
        self.env.push((key.into(), value.display().to_string()));
        self
    }

    fn cache(&self, label: &str) -> PathBuf {
        self.dir.join(format!("cache-{label}"))
    }

    /// `isomount --catalog C --cache-dir cache-LABEL ARGS…` (NAME stands for the image's name).
    fn run(&self, label: &str, args: &[&str]) -> Output {
        let mut cmd = isomount();
        cmd.arg("--catalog")
            .arg(&self.catalog)
            .arg("--cache-dir")
            .arg(self.cache(label))
            .args(
                args.iter()
                    .map(|a| if *a == "NAME" { &self.name } else { *a }),
            )
            .env_remove("ISOMOUNT_CA_FILE")
            .env("no_proxy", "*");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_bounded(&mut cmd, LIMIT)
    }

    fn ok(&self, label: &str, args: &[&str]) -> Output {
        let out = self.run(label, args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            text(&out.stderr)
        );
        out
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `disk` published as `disk` with these web mirrors into `dir/catalog.toml`; a client for it.
fn publish_disk(dir: &Path, disk: &Path, urls: &[String]) -> Client {
    let catalog = dir.join("catalog.toml");
    let mut cmd = isomount();
    cmd.arg("publish")
        .arg(disk)
        .args(["--name", "disk", "-o"])
        .arg(&catalog);
    for url in urls {
        cmd.args(["--url", url]);
    }
    let out = run_bounded(&mut cmd, LIMIT);
    assert!(out.status.success(), "publish: {}", text(&out.stderr));
    Client {
        catalog,
        dir: dir.to_path_buf(),
        name: "disk".into(),
        env: Vec::new(),
    }
}

/// 4 KiB of the mounted `image` at `at` (one read, at an offset of the caller's choosing, so
/// scattered reads have no read-ahead behind them) must be `want`'s.
fn check_at(image: &std::fs::File, want: &[u8], at: u64) {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    image.read_exact_at(&mut buf, at).unwrap();
    assert!(
        buf == want[at as usize..at as usize + 4096],
        "bytes at {at}"
    );
}

/// `cat`, `fetch --files`, `fetch` and a FUSE mount of the image through `client`, each from an
/// empty cache and each byte-exact; `source` is what `info/source` must say. Returns the
/// mount's `info/stats`.
fn every_way_byte_exact(image: &Image, client: &Client, source: &str) -> String {
    let want = image.bytes();

    let cat = client.ok("cat", &["cat", "NAME"]);
    assert!(cat.stdout == want, "cat is not byte-exact");

    // Only the file's extents are fetched: the rest is not cached.
    client.ok(
        "files",
        &["fetch", "NAME", "--files", "/kernel.bin", "/docs/deep"],
    );
    client.ok(
        "files",
        &[
            "--offline",
            "fetch",
            "NAME",
            "--files",
            "/kernel.bin",
            "/docs/deep/notes.txt",
        ],
    );
    let partial = client.run("files", &["--offline", "cat", "NAME"]);
    assert!(
        !partial.status.success(),
        "the whole image was fetched for --files"
    );
    client.ok("files", &["fetch", "NAME"]);
    let offline = client.ok("files", &["--offline", "cat", "NAME"]);
    assert!(
        offline.stdout == want,
        "fetch then offline cat is not byte-exact"
    );

    let mnt = Mountpoint::new(&client.dir, "mnt");
    client.ok("mount", &["NAME", mnt.path.to_str().unwrap()]);
    assert!(is_mounted(&mnt.path));
    let mounted = std::fs::read(mnt.path.join(format!("{}.iso", client.name))).unwrap();
    assert!(mounted == want, "the mounted image is not byte-exact");
    for file in [
        "README",
        "kernel.bin",
        "docs/set.tgz",
        "docs/deep/notes.txt",
    ] {
        let got = std::fs::read(mnt.path.join("files").join(file)).unwrap();
        assert!(
            got == std::fs::read(image.tree.join(file)).unwrap(),
            "files/{file}"
        );
    }
    assert_eq!(read(&mnt.path.join("info/source")), format!("{source}\n"));
    let stats = read(&mnt.path.join("info/stats"));
    let out = client.run("mount", &["unmount", mnt.path.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", text(&out.stderr));
    assert!(!is_mounted(&mnt.path));
    stats
}

#[test]
fn nginx_over_http_serves_cat_fetch_files_and_a_mount() {
    let image = Image::new("web_nginx_http");
    let nginx = Nginx::start("web_nginx_http", &image.www);
    let client = image.publish("webcd", &[], &[&nginx.url("image.iso")]);
    let stats = every_way_byte_exact(&image, &client, "http");
    assert!(
        stats.contains(&format!("portal: {}", nginx.url("image.iso"))),
        "{stats}"
    );
    let served = nginx.served();
    assert!(served.iter().all(|s| s.status == 206), "{served:?}");
    // `list` names the kind of mirror.
    let list = text(&client.ok("list", &["list"]).stdout);
    assert!(
        list.contains(&format!("web {}", nginx.url("image.iso"))),
        "{list}"
    );
}

#[test]
fn nginx_over_https_with_http2_serves_cat_fetch_files_and_a_mount() {
    let image = Image::new("web_nginx_https");
    let ca = TestCa::generate();
    let nginx = Nginx::start_tls("web_nginx_https", &image.www, &ca);
    let client = image.publish("webcd", &[], &[&nginx.url("image.iso")]);
    // Without the test CA the certificate is refused, and the read fails saying so.
    let untrusted = client.run("untrusted", &["cat", "NAME"]);
    assert!(!untrusted.status.success());
    assert!(
        text(&untrusted.stderr).contains("certificate"),
        "{}",
        text(&untrusted.stderr)
    );
    let mut client = client.with_env("ISOMOUNT_CA_FILE", &ca.ca_pem());
    every_way_byte_exact(&image, &client, "http");
    let served = nginx.served();
    assert!(!served.is_empty());
    assert!(served
        .iter()
        .all(|s| s.request.ends_with("HTTP/2.0") && s.status == 206));

    let info = text(&client.ok("info", &["info", "NAME"]).stdout);
    for line in ["source", "http-version", "etag", "last-modified"] {
        assert!(info.lines().any(|l| l.starts_with(line)), "{line}: {info}");
    }
    assert!(info.contains("HTTP/2.0"), "{info}");

    // The catalog and its manifest from the same server, trusted through the same CA.
    for file in ["catalog.toml", "webcd.manifest"] {
        std::fs::copy(image.dir.path().join(file), image.www.join(file)).unwrap();
    }
    client.catalog = nginx.url("catalog.toml").into();
    let cat = client.ok("https-catalog", &["cat", "NAME"]);
    assert!(
        cat.stdout == image.bytes(),
        "cat with an https catalog is not byte-exact"
    );
}

#[test]
fn a_mirror_that_ignores_range_is_passed_over_without_being_downloaded() {
    let image = Image::new("web_python");
    let python = PythonHttp::start("web_python", &image.www);
    let nginx = Nginx::start("web_python", &image.www);
    let python_url = python.url("image.iso");

    // Alone, it cannot serve the image: a clear error, at once. (That its 200 is dropped unread
    // rather than downloaded is shown with a 1 GiB file in tests/web_client.rs.)
    let alone = image.publish("webcd", &[], &[&python_url]);
    let out = alone.run("alone", &["cat", "NAME"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "bytes came out");
    assert!(
        text(&out.stderr).contains("ignores Range"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(python.requests().len(), 1, "{:?}", python.requests());

    // First in the list, before nginx: passed over, and nginx serves everything.
    let client = image.publish("webcd", &[], &[&python_url, &nginx.url("image.iso")]);
    every_way_byte_exact(&image, &client, "http");
    // Asked at most once by each of the processes that needed the network (cat, two fetches,
    // the mount; an offline run asks nothing), and never again once it said 200.
    let asked = python.requests().len();
    assert!((2..=5).contains(&asked), "python was asked {asked} times");
    assert!(nginx.served().iter().all(|s| s.status == 206));
}

#[test]
fn a_mirror_serving_one_wrong_chunk_is_caught_and_the_next_one_serves_it() {
    wrong_chunk_is_caught_and_the_next_mirror_serves_it("web_wrong_chunk", "sha256");
}

#[test]
fn a_mirror_serving_one_wrong_chunk_is_caught_under_a_blake3_manifest() {
    wrong_chunk_is_caught_and_the_next_mirror_serves_it("web_wrong_chunk_blake3", "blake3");
}

/// A mirror serving one wrong chunk, with the image published with chunk hashes of `hash`: alone
/// it is refused, naming the chunk; beside a good mirror, every way of reading is byte-exact.
fn wrong_chunk_is_caught_and_the_next_mirror_serves_it(test: &str, hash: &str) {
    let image = Image::new(test);
    // One byte inside kernel.bin (well past the ISO's directories) is wrong on the first mirror.
    let iso = image.bytes();
    let kernel = std::fs::read(image.tree.join("kernel.bin")).unwrap();
    let at = iso
        .windows(64)
        .position(|w| w == &kernel[1 << 20..(1 << 20) + 64])
        .expect("kernel.bin in the image") as u64;
    let liar = Nginx::start(test, &image.corrupt_copy(at));
    let good = Nginx::start(test, &image.www);

    // Alone, the lie is refused: cat stops before the bad chunk, naming it.
    let alone = image.publish_hashed("webcd", &[], &[&liar.url("image.iso")], hash);
    let out = alone.run("alone", &["cat", "NAME"]);
    assert!(!out.status.success(), "a lie was served");
    assert!(
        text(&out.stderr).contains("failed verification")
            && text(&out.stderr).contains(&format!("({hash} ")),
        "the error names the failure and the algorithm: {}",
        text(&out.stderr)
    );
    assert!(
        out.stdout.len() as u64 <= at,
        "bytes past the bad chunk came out"
    );
    assert!(
        iso.starts_with(&out.stdout),
        "what came out is not a prefix of the image"
    );

    let client = image.publish_hashed(
        "webcd",
        &[],
        &[&liar.url("image.iso"), &good.url("image.iso")],
        hash,
    );
    let stats = every_way_byte_exact(&image, &client, "http");
    assert!(!stats.contains("verification failures: 0"), "{stats}");
    assert!(good.served().iter().any(|s| s.status == 206));
}

#[test]
fn a_dead_iscsi_portal_beside_a_web_mirror() {
    let image = Image::new("web_dead_portal");
    let nginx = Nginx::start("web_dead_portal", &image.www);
    let dead = dead_portal();
    let client = image.publish("webcd", &[&dead], &[&nginx.url("image.iso")]);
    let list = text(&client.ok("list", &["list"]).stdout);
    assert!(
        list.contains(&format!("iscsi {dead}; web {}", nginx.url("image.iso"))),
        "{list}"
    );
    every_way_byte_exact(&image, &client, "http");
}

#[test]
fn one_small_file_of_a_fresh_mount_costs_two_round_trips_at_most() {
    let image = Image::new("web_small_file");
    let nginx = Nginx::start("web_small_file", &image.www);
    let link = FaultProxy::start(
        &nginx.authority(),
        Faults::delayed(Duration::from_millis(10)),
    );
    let url = format!("http://{}/image.iso", link.portal());
    let client = image.publish("webcd", &[], &[&url]);
    let mnt = Mountpoint::new(&client.dir, "mnt");
    client.ok("mount", &["NAME", mnt.path.to_str().unwrap()]);
    // What the mount itself cost is not counted; everything after it is.
    // README's bytes lie past the first 256 KiB the mount read while connecting (xorriso puts
    // them after kernel.bin): reading it needs the network.
    let iso = image.bytes();
    let at = iso
        .windows(22)
        .position(|w| w == b"isomount over the web\n")
        .expect("README in the image");
    assert!(at > 1 << 20, "README at {at}: within what the mount read");
    // What the mount itself cost is not counted; everything after it is.
    let (turns, conns, down, up) = (
        link.client_turns(),
        link.connections(),
        link.bytes_to_client(),
        link.bytes_to_server(),
    );
    let before = nginx.served().len();
    let got = std::fs::read(mnt.path.join("files/README")).unwrap();
    assert_eq!(got, b"isomount over the web\n");
    // A request on a connection opened for it is two round trips (the TCP handshake, then the
    // request); one on a connection kept from the mount is one.
    let trips = (link.client_turns() - turns) + (link.connections() - conns);
    let wire = (link.bytes_to_client() - down) + (link.bytes_to_server() - up);
    let after = nginx.served()[before..].to_vec();
    let out = client.run("mount", &["unmount", mnt.path.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", text(&out.stderr));
    assert!(!after.is_empty(), "README came without a request");
    assert!(
        trips <= 2 && after.len() <= 2,
        "{trips} round trips for one small file: {after:?}"
    );
    assert!(
        wire <= 256 << 10,
        "{wire} bytes on the wire for one small file: {after:?}"
    );
}

#[test]
fn a_web_mirror_that_stalls_is_hedged_to_the_next_one_within_the_read_timeout() {
    let image = Image::new("web_hedge");
    let first = Nginx::start("web_hedge", &image.www);
    let second = Nginx::start("web_hedge", &image.www);
    // The first mirror's link goes silent for far longer than the read timeout once 1 MiB has
    // come through it: after the mount, in the middle of kernel.bin.
    let link = FaultProxy::start(
        &first.authority(),
        Faults {
            stall_after: Some((1 << 20, Duration::from_secs(100))),
            ..Faults::default()
        },
    );
    let url = format!("http://{}/image.iso", link.portal());
    let client = image.publish("webcd", &[], &[&url, &second.url("image.iso")]);
    let mnt = Mountpoint::new(&client.dir, "mnt");
    client.ok(
        "mount",
        &[
            "--read-timeout",
            "10",
            "mount",
            "NAME",
            mnt.path.to_str().unwrap(),
        ],
    );
    let before = second.served().len();
    // Reads at scattered offsets (no read-ahead behind them), from the end of the image down,
    // until the link has gone silent and three more reads have been answered. Without hedging
    // the read under way when it goes silent would fail at the read timeout (10 s, before the
    // mirror's own stall bound of 15 s): instead, a request slower than the mirror's recent
    // latency is also sent to the second mirror, and its verified answer wins.
    let iso = image.bytes();
    let file = std::fs::File::open(mnt.path.join("webcd.iso")).unwrap();
    let mut at = iso.len() - 8192;
    let mut after_stall = 0;
    let mut failed = None;
    while after_stall < 3 && at > 300 << 10 {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 4096];
        if let Err(e) = file.read_exact_at(&mut buf, at as u64) {
            failed = Some(format!("read at {at}: {e}"));
            break;
        }
        assert!(buf == iso[at..at + 4096], "bytes at {at}");
        if link.stalled() {
            after_stall += 1;
        }
        at -= 160 << 10;
    }
    drop(file);
    let stats = read(&mnt.path.join("info/stats"));
    let out = client.run("mount", &["unmount", mnt.path.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", text(&out.stderr));
    assert_eq!(failed, None, "{stats}");
    assert_eq!(after_stall, 3, "the first mirror's link never stalled");
    assert!(second.served()[before..].iter().any(|s| s.status == 206));
    assert!(stats.contains("errors: 0"), "{stats}");
}

#[test]
fn ranges_grow_with_sequential_reading_up_to_a_few_mib() {
    let dir = test_dir("web_ranges_grow");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let disk = random_file(&www, "disk.img", 24 << 20, 11);
    let want = std::fs::read(&disk).unwrap();
    let nginx = Nginx::start("web_ranges_grow", &www);
    let client = publish_disk(dir.path(), &disk, &[nginx.url("disk.img")]);
    let mnt = Mountpoint::new(dir.path(), "mnt");
    client.ok("mount", &["NAME", mnt.path.to_str().unwrap()]);
    let before = nginx.served().len();
    // A reader going through the image 128 KiB at a time, as `dd` would, with the kernel's own
    // read-ahead off: its 1 MiB requests, many in flight, would race isomount's read-ahead to
    // each range and, on a loaded machine, win every race (every range 1 MiB).
    let mut got = Vec::with_capacity(want.len());
    let mut file = std::fs::File::open(mnt.path.join("disk.img")).unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open; advice has no other effect on memory.
        let advised =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        assert_eq!(advised, 0, "posix_fadvise");
    }
    let mut buf = vec![0u8; 128 << 10];
    loop {
        use std::io::Read;
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    drop(file);
    let out = client.run("mount", &["unmount", mnt.path.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", text(&out.stderr));
    assert!(got == want, "the mounted image is not byte-exact");
    let sizes: Vec<u64> = nginx.served()[before..].iter().map(|s| s.bytes).collect();
    assert!(
        nginx.served().iter().all(|s| s.status == 206),
        "{:?}",
        nginx.served()
    );
    // Small at first, growing as the reader keeps going, never more than the 4 MiB bound: far
    // fewer requests than 64 KiB chunks.
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        sizes[0] <= 1 << 20,
        "the first range was {}: {sizes:?}",
        sizes[0]
    );
    assert!(largest >= 2 << 20, "no range grew past 2 MiB: {sizes:?}");
    assert!(largest <= 4 << 20, "a range of {largest} bytes: {sizes:?}");
    assert!(sizes.len() < 100, "{} requests: {sizes:?}", sizes.len());
}

/// A cold `cat NAME` reads a web mirror one whole range of the mirror's size (4 MiB) at a time,
/// many in flight: not in halves of it that each pay a round trip of their own.
#[test]
fn a_cold_cat_reads_a_web_mirror_in_whole_ranges() {
    const RANGE: u64 = 4 << 20;
    let dir = test_dir("web_cat_ranges");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let size: u64 = 40 << 20;
    let disk = random_file(&www, "disk.img", size, 12);
    let want = std::fs::read(&disk).unwrap();
    let nginx = Nginx::start("web_cat_ranges", &www);
    let client = publish_disk(dir.path(), &disk, &[nginx.url("disk.img")]);
    let out = client.ok("cat", &["cat", "NAME"]);
    assert!(out.stdout == want, "cat is not byte-exact");
    let served = nginx.served();
    assert!(served.iter().all(|s| s.status == 206), "{served:?}");
    let sizes: Vec<u64> = served.iter().map(|s| s.bytes).collect();
    assert_eq!(sizes.iter().sum::<u64>(), size, "{sizes:?}");
    // The first request learns what the mirror serves (the image's first bytes); one other
    // brings the rest of the first range (logged in the order they ended); every other one is a
    // whole range.
    let probe = sizes[0];
    let mut rest = sizes[1..].to_vec();
    rest.sort_unstable();
    assert_eq!(rest.first(), Some(&(RANGE - probe)), "{sizes:?}");
    assert!(
        rest[1..].iter().all(|&n| n == RANGE),
        "ranges other than 4 MiB: {sizes:?}"
    );
}

#[test]
fn a_dead_web_mirror_is_passed_over_and_used_again_once_it_is_back() {
    let dir = test_dir("web_comes_back");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let disk = random_file(&www, "disk.img", 24 << 20, 12);
    let want = std::fs::read(&disk).unwrap();
    let mut first = Nginx::start("web_comes_back", &www);
    let second = Nginx::start("web_comes_back", &www);
    let urls = [first.url("disk.img"), second.url("disk.img")];
    let client = publish_disk(dir.path(), &disk, &urls);
    let mnt = Mountpoint::new(dir.path(), "mnt");
    client.ok("mount", &["NAME", mnt.path.to_str().unwrap()]);
    let image = std::fs::File::open(mnt.path.join("disk.img")).unwrap();
    let check = |at: u64| check_at(&image, &want, at);
    let portal = || {
        let stats = read(&mnt.path.join("info/stats"));
        let line = stats.lines().find(|l| l.starts_with("portal: "));
        line.unwrap_or_default()
            .trim_start_matches("portal: ")
            .to_string()
    };
    check(20 << 20);
    assert_eq!(portal(), first.url("disk.img"));
    first.kill();
    check(2 << 20);
    assert_eq!(
        portal(),
        second.url("disk.img"),
        "the second mirror took over"
    );
    // Once the first answers again it is preferred again (after its rest is over).
    first.restart();
    let mut at = 23 << 20;
    while portal() != first.url("disk.img") {
        assert!(at > 4 << 20, "the first mirror was not used again");
        check(at);
        at -= 256 << 10;
        std::thread::sleep(Duration::from_millis(200));
    }
    check(3 << 20);
    drop(image);
    let out = client.run("mount", &["unmount", mnt.path.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", text(&out.stderr));
    assert!(second.served().iter().any(|s| s.status == 206));
    assert!(first.served().iter().all(|s| s.status == 206));
}

#[test]
fn publish_writes_web_mirrors_and_refuses_bad_mirror_arguments() {
    let dir = test_dir("web_publish");
    let image = random_file(dir.path(), "a b.img", 100_000, 3);
    let catalog = dir.path().join("c.toml");
    let publish = |args: &[&str]| {
        run_bounded(
            isomount()
                .arg("publish")
                .arg(&image)
                .args(["--name", "ab", "-o"])
                .arg(&catalog)
                .args(args),
            LIMIT,
        )
    };
    let out = publish(&[
        "--url",
        "http://127.0.0.1:9/a.img",
        "--url",
        "https://h.example/a.img",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = read(&catalog);
    assert!(
        written.contains("urls = [\"http://127.0.0.1:9/a.img\", \"https://h.example/a.img\"]"),
        "{written}"
    );
    assert!(
        !written.contains("target") && !written.contains("portals"),
        "{written}"
    );

    let refused: &[(&[&str], &str)] = &[
        (
            &[],
            "needs --portal HOST:PORT (iSCSI), --url URL (web) or both",
        ),
        (&["--portal", "127.0.0.1:3260"], "--portal needs --target"),
        (
            &["--target", IQN, "--url", "http://h/a"],
            "--target is for --portal",
        ),
        (
            &["--url", "ftp://h/a.img"],
            "`ftp://h/a.img` is not an http:// or https:// URL",
        ),
        (
            &["--url", "https://me:pw@h/a.img"],
            "carries a user or password",
        ),
    ];
    for (args, want) in refused {
        let out = publish(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        read(&catalog),
        written,
        "a refused publish changed the catalog"
    );

    // A tree: each image at the root URL plus its path, percent-encoded.
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("net bsd")).unwrap();
    random_file(&root.join("net bsd"), "cd #1.iso", 50_000, 4);
    let tree_catalog = dir.path().join("tree.toml");
    let out = run_bounded(
        isomount()
            .args(["publish", "--root"])
            .arg(&root)
            .args(["--url", "https://cdn.example.org/pub/", "-o"])
            .arg(&tree_catalog),
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = read(&tree_catalog);
    assert!(
        written.contains("urls = [\"https://cdn.example.org/pub/net%20bsd/cd%20%231.iso\"]"),
        "{written}"
    );
}

#[test]
fn a_portal_and_a_web_mirror_are_ranked_together_and_the_portal_comes_back() {
    let dir = test_dir("web_mixed");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let disk = random_file(&www, "disk.img", 24 << 20, 9);
    let want = std::fs::read(&disk).unwrap();
    let mut tgtd = Tgtd::start(
        "web_mixed",
        &[TargetSpec::new(IQN, vec![LunSpec::disk(&disk)])],
    );
    let nginx = Nginx::start("web_mixed", &www);
    let catalog = dir.path().join("catalog.toml");
    let out = run_bounded(
        isomount()
            .arg("publish")
            .arg(&disk)
            .args(["--name", "disk", "--target", IQN, "--lun", "1"])
            .args([
                "--portal",
                &tgtd.portal(),
                "--url",
                &nginx.url("disk.img"),
                "-o",
            ])
            .arg(&catalog),
        LIMIT,
    );
    assert!(out.status.success(), "publish: {}", text(&out.stderr));
    let mnt = Mountpoint::new(dir.path(), "mnt");
    let out = run_bounded(
        isomount()
            .arg("--catalog")
            .arg(&catalog)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["--read-timeout", "60", "mount", "disk"])
            .arg(&mnt.path),
        LIMIT,
    );
    assert!(out.status.success(), "mount: {}", text(&out.stderr));
    let image = std::fs::File::open(mnt.path.join("disk.img")).unwrap();
    let check = |at: u64| check_at(&image, &want, at);
    let source = || read(&mnt.path.join("info/source"));
    check(20 << 20);
    assert_eq!(source(), "iscsi\n");
    tgtd.kill();
    check(2 << 20);
    assert_eq!(source(), "http\n", "the web mirror took over");
    assert!(nginx.served().iter().any(|s| s.status == 206));
    // Once the portal answers again it is preferred again (after its rest is over).
    tgtd.restart();
    let mut at = 23 << 20;
    while source() != "iscsi\n" {
        assert!(at > 4 << 20, "the portal was not used again");
        check(at);
        at -= 256 << 10;
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(image);
    let out = run_bounded(isomount().arg("unmount").arg(&mnt.path), LIMIT);
    assert!(out.status.success(), "unmount: {}", text(&out.stderr));
}
