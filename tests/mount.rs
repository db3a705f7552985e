//! Real FUSE mounts of `isomount mount` (run as root). Every mount is undone in Drop, so a failing
//! test leaves no stale mount behind; every wait is bounded.
//!
//! `scripts/test.sh` runs this suite twice: as Linux runs isomount, and with
//! `ISOMOUNT_FORCE_PORTABLE=1`, the path FreeBSD, macOS and NetBSD take (one FUSE thread, no
//! passthrough, no read-ahead knob, unmounting a busy mount once its files are closed).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{
    is_mounted, iso_from_dir, isomount, only_store, platform, random_file, run_bounded, IsoFlavour,
    Mountpoint,
};

/// Whether isomount takes the portable path in this run.
fn portable() -> bool {
    std::env::var_os("ISOMOUNT_FORCE_PORTABLE").is_some_and(|v| v == "1")
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A source tree and the ISO 9660 image xorriso makes of it (Rock Ridge + Joliet).
fn make_iso(dir: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("docs/deep")).unwrap();
    std::fs::write(tree.join("README"), b"isomount test image\n").unwrap();
    std::fs::write(tree.join("docs/deep/notes.txt"), b"lazy reads\n").unwrap();
    random_file(&tree, "kernel.bin", 3 << 20, 1);
    random_file(&tree.join("docs"), "set.tgz", 700_001, 2);
    std::os::unix::fs::symlink("docs/deep/notes.txt", tree.join("NOTES")).unwrap();
    let script = tree.join("docs/run.sh");
    std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let iso = dir.join("image.iso");
    let out = run_bounded(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
            .arg(&iso)
            .arg(&tree),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "xorriso: {out:?}");
    (tree, iso)
}

fn mount_local(image: &Path, mountpoint: &Mountpoint, extra: &[&str]) -> Output {
    run_bounded(
        isomount()
            .args(["mount", "--local-file"])
            .arg(image)
            .arg(&mountpoint.path)
            .args(extra),
        Duration::from_secs(60),
    )
}

fn mount_ok(image: &Path, mountpoint: &Mountpoint) {
    let out = mount_local(image, mountpoint, &[]);
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mountpoint.path), "exit 0 but nothing mounted");
}

/// `isomount unmount PATH` succeeds, and nothing is mounted there after.
fn isomount_unmount_ok(path: &Path) {
    let out = run_bounded(isomount().arg("unmount").arg(path), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "unmount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(path));
}

fn unmount_ok(mountpoint: &Mountpoint) {
    assert!(
        find_daemon(&mountpoint.path).is_some(),
        "no daemon serves the mount"
    );
    isomount_unmount_ok(&mountpoint.path);
    wait_until(Duration::from_secs(20), "the daemon to exit", || {
        find_daemon(&mountpoint.path).is_none()
    });
}

/// `diff -r` finds no difference between the source tree and the mounted `files/`.
fn assert_same_tree(tree: &Path, files: &Path) {
    let out = run_bounded(
        Command::new("diff").arg("-r").arg(tree).arg(files),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "diff -r: {out:?}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A mount that sits idle lets go of the memory its reads left behind (the chunks kept in memory
/// and the read buffers kept for reuse), and reads on as before afterwards.
#[test]
fn an_idle_mount_lets_go_of_the_memory_its_reads_left_behind() {
    use platform::Memory::Resident;
    let dir = tempfile::tempdir().unwrap();
    let image = random_file(dir.path(), "disk.img", 64 << 20, 31);
    let truth = std::fs::read(&image).unwrap();
    let mp = Mountpoint::new(dir.path(), "mnt");
    let out = run_bounded(
        isomount()
            .env("ISOMOUNT_IDLE_RELEASE", "1")
            .args(["mount", "--local-file"])
            .arg(&image)
            .arg(&mp.path),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "mount: {out:?}");
    let pid = daemon_pid(&mp.path) as u32;
    let mounted = mp.path.join("disk.img");
    assert!(
        std::fs::read(&mounted).unwrap() == truth,
        "image bytes differ"
    );
    let Some(after_read) = platform::memory_kib(pid, Resident) else {
        eprintln!("skipped: this system does not tell a process's memory");
        unmount_ok(&mp);
        return;
    };
    wait_until(
        Duration::from_secs(20),
        "the idle mount to let go of 16 MiB or more",
        || platform::memory_kib(pid, Resident).is_some_and(|now| now + (16 << 10) < after_read),
    );
    assert!(
        std::fs::read(&mounted).unwrap() == truth,
        "the image reads the same after"
    );
    unmount_ok(&mp);
}

#[test]
fn mounted_image_is_byte_exact_with_info_and_unmounts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (_tree, iso) = make_iso(dir.path());
    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&iso, &mp);

    let mut names: Vec<String> = std::fs::read_dir(&mp.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["files", "image.iso", "info"]);
    let mounted = std::fs::read(mp.path.join("image.iso")).unwrap();
    assert!(
        mounted == std::fs::read(&iso).unwrap(),
        "image bytes differ"
    );
    let size = std::fs::metadata(&iso).unwrap().len();
    assert_eq!(read(&mp.path.join("info/size")), format!("{size}\n"));
    assert_eq!(read(&mp.path.join("info/block-size")), "2048\n");
    let stats = read(&mp.path.join("info/stats"));
    assert!(stats.contains("errors: 0"), "{stats}");
    let daemon = daemon_pid(&mp.path);
    if portable() {
        assert_ne!(read(&readahead_knob(&mp.path)), "16384\n");
        assert_eq!(fuse_threads(daemon), 1, "fuser runs one thread off Linux");
    } else {
        assert_eq!(read(&readahead_knob(&mp.path)), "16384\n");
        assert_eq!(fuse_threads(daemon), 4);
    }
    assert!(std::fs::write(mp.path.join("image.iso"), b"x").is_err());

    unmount_ok(&mp);
    assert_eq!(std::fs::read_dir(&mp.path).unwrap().count(), 0);
}

#[test]
fn a_non_iso_image_is_called_img() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", 1 << 20, 7);
    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&disk, &mp);
    let got = std::fs::read(mp.path.join("disk.img")).unwrap();
    assert!(got == std::fs::read(&disk).unwrap());
    unmount_ok(&mp);
}

#[test]
fn xorriso_lists_the_source_tree_from_the_mounted_image() {
    let dir = tempfile::tempdir().unwrap();
    let (_tree, iso) = make_iso(dir.path());
    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&iso, &mp);
    let listing = |image: &Path| {
        let out = run_bounded(
            Command::new("xorriso")
                .args(["-indev"])
                .arg(image)
                .args(["-find", "/", "-exec", "lsdl"]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "xorriso: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let mounted = listing(&mp.path.join("image.iso"));
    assert!(
        mounted
            .iter()
            .any(|l| l.ends_with("'/docs/deep/notes.txt'")),
        "{mounted:?}"
    );
    assert!(mounted.iter().any(|l| l.ends_with("'/kernel.bin'")));
    assert_eq!(mounted, listing(&iso));
    unmount_ok(&mp);
}

/// `readers` threads each read `reads` random ranges (up to `max_len` bytes) of `mounted` and
/// compare them with the same ranges of `truth`. `seed` varies the offsets between tests.
fn concurrent_random_reads(
    mounted: &Path,
    truth: &Path,
    readers: u64,
    reads: usize,
    max_len: u64,
    seed: u64,
) {
    let size = std::fs::metadata(truth).unwrap().len();
    std::thread::scope(|scope| {
        for reader in 0..readers {
            scope.spawn(move || {
                let ours = std::fs::File::open(mounted).unwrap();
                let truth = std::fs::File::open(truth).unwrap();
                let mut state = (reader + seed).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
                for _ in 0..reads {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let offset = state % size;
                    let len = ((state >> 32) % max_len) as usize + 1;
                    let len = len.min((size - offset) as usize);
                    let mut got = vec![0u8; len];
                    let mut want = vec![0u8; len];
                    ours.read_exact_at(&mut got, offset).unwrap();
                    truth.read_exact_at(&mut want, offset).unwrap();
                    assert!(
                        got == want,
                        "reader {reader}: bytes differ at {offset}+{len}"
                    );
                }
            });
        }
    });
}

#[test]
fn eight_concurrent_readers_at_random_offsets_get_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24 << 20;
    let disk = random_file(dir.path(), "disk.img", size, 3);
    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&disk, &mp);
    concurrent_random_reads(&mp.path.join("disk.img"), &disk, 8, 40, 300 << 10, 0);
    unmount_ok(&mp);
}

#[test]
fn mount_fails_clearly_like_mount8() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", 1 << 20, 4);
    let missing = dir.path().join("missing");
    let out = run_bounded(
        isomount()
            .args(["mount", "--local-file"])
            .arg(&disk)
            .arg(&missing),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line per failure: {err}");

    let full = Mountpoint::new(dir.path(), "full");
    std::fs::write(full.path.join("x"), b"x").unwrap();
    let out = mount_local(&disk, &full, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));

    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&disk, &mp);
    let out = mount_local(&disk, &mp, &[]);
    assert!(!out.status.success());
    // Linux's mount table names the subtype; statfs, which the portable path asks, does not.
    let kind = if portable() { "fuse" } else { "fuse.isomount" };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("already mounted ({kind})")), "{err}");

    let out = mount_local(&disk, &mp, &["-o", "ro,frobnicate"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option `frobnicate`"));
    unmount_ok(&mp);
}

#[test]
fn foreground_mount_unmounts_on_sigint_and_sigterm_unmounts_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", 1 << 20, 5);
    let mp = Mountpoint::new(dir.path(), "mnt");
    let mut child = isomount()
        .args(["mount", "-f", "--local-file"])
        .arg(&disk)
        .arg(&mp.path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the foreground mount", || {
        is_mounted(&mp.path)
    });
    assert_eq!(
        std::fs::read(mp.path.join("disk.img")).unwrap().len(),
        1 << 20
    );
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    wait_until(
        Duration::from_secs(30),
        "the foreground process to exit",
        || child.try_wait().unwrap().is_some(),
    );
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&mp.path));

    // A file held open does not keep the mount on Linux: it is detached, and the open file
    // still reads until it is closed; then the daemon goes. Systems that cannot detach keep the
    // mount, serving, until the file is closed, then unmount.
    mount_ok(&disk, &mp);
    let pid = daemon_pid(&mp.path);
    let held = std::fs::File::open(mp.path.join("disk.img")).unwrap();
    // SAFETY: kill on the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if portable() {
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            is_mounted(&mp.path),
            "a busy mount stays until its files close"
        );
    } else {
        wait_until(Duration::from_secs(30), "SIGTERM to unmount", || {
            !is_mounted(&mp.path)
        });
    }
    let mut tail = vec![0u8; 4096];
    held.read_exact_at(&mut tail, (1 << 20) - 4096).unwrap();
    assert!(tail == std::fs::read(&disk).unwrap()[(1 << 20) - 4096..]);
    drop(held);
    wait_until(
        Duration::from_secs(30),
        "the unmount once the file is closed",
        || !is_mounted(&mp.path),
    );
    wait_until(Duration::from_secs(30), "the daemon to exit", || {
        find_daemon(&mp.path).is_none()
    });
}

/// The kernel's read-ahead setting for the mount at `path`.
fn readahead_knob(path: &Path) -> PathBuf {
    platform::read_ahead_knob(path).expect("this system shows no read-ahead setting")
}

/// Threads of `pid` that read FUSE requests (fuser names them `fuser-N`).
fn fuse_threads(pid: i32) -> usize {
    platform::threads_named(pid as u32, "fuser-").expect("this system lists no threads")
}

/// The pid of the daemon serving `mountpoint`.
fn daemon_pid(mountpoint: &Path) -> i32 {
    find_daemon(mountpoint).unwrap_or_else(|| panic!("no daemon for {}", mountpoint.display()))
}

fn find_daemon(mountpoint: &Path) -> Option<i32> {
    let pid = *platform::processes_with("isomount", mountpoint.as_os_str()).first()?;
    i32::try_from(pid).ok()
}

#[test]
fn files_matches_the_source_tree_with_links_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, iso) = make_iso(dir.path());
    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&iso, &mp);
    let files = mp.path.join("files");
    let out = run_bounded(
        Command::new("diff").arg("-r").arg(&tree).arg(&files),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "diff -r: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let link = std::fs::read_link(files.join("NOTES")).unwrap();
    assert_eq!(link, Path::new("docs/deep/notes.txt"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(files.join("docs/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let copy = dir.path().join("kernel.copy");
    std::fs::copy(files.join("kernel.bin"), &copy).unwrap();
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(tree.join("kernel.bin")).unwrap());
    unmount_ok(&mp);
}

const CD_IQN: &str = "iqn.2026-11.org.isomount.test:mount-cd";

/// A CD image served by a real tgtd and published in a catalog as `testcd`.
struct Published {
    tgtd: Option<common::Tgtd>,
    tree: PathBuf,
    iso: PathBuf,
    catalog: PathBuf,
    cache: PathBuf,
}

fn publish_cd(dir: &Path, test: &str) -> Published {
    let (tree, iso) = make_iso(dir);
    publish(dir, test, tree, iso, true)
}

/// `image` served as LUN 1 of a real tgtd (a CD or a disk) and published as `testcd`.
fn publish(dir: &Path, test: &str, tree: PathBuf, iso: PathBuf, cd: bool) -> Published {
    publish_with(dir, test, tree, iso, cd, &[])
}

/// [`publish`] with more `publish` options (`--hash blake3`).
fn publish_with(
    dir: &Path,
    test: &str,
    tree: PathBuf,
    iso: PathBuf,
    cd: bool,
    options: &[&str],
) -> Published {
    let lun = if cd {
        common::LunSpec::cd(&iso)
    } else {
        common::LunSpec::disk(&iso)
    };
    let tgtd = common::Tgtd::start(test, &[common::TargetSpec::new(CD_IQN, vec![lun])]);
    let catalog = dir.join("catalog.toml");
    let out = run_bounded(
        isomount()
            .arg("publish")
            .arg(&iso)
            .args(["--name", "testcd", "--target", CD_IQN, "--lun", "1"])
            .args(["--portal", &tgtd.portal()])
            .args(options)
            .arg("-o")
            .arg(&catalog),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "publish: {out:?}");
    Published {
        tgtd: Some(tgtd),
        tree,
        iso,
        catalog,
        cache: dir.join("cache"),
    }
}

impl Published {
    fn mount(&self, name: &str, mountpoint: &Mountpoint, extra: &[&str]) -> Output {
        run_bounded(
            isomount()
                .arg("--catalog")
                .arg(&self.catalog)
                .arg("--cache-dir")
                .arg(&self.cache)
                .args(extra)
                .arg("mount")
                .arg(name)
                .arg(&mountpoint.path),
            Duration::from_secs(120),
        )
    }

    fn mount_ok(&self, mountpoint: &Mountpoint, extra: &[&str]) {
        let out = self.mount("testcd", mountpoint, extra);
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(&mountpoint.path), "exit 0 but nothing mounted");
    }
}

#[test]
fn published_cd_mounts_exact_and_an_offline_remount_serves_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut cd = publish_cd(dir.path(), "published_cd_mounts_exact");
    let portal = cd.tgtd.as_ref().unwrap().portal();
    let mp = Mountpoint::new(dir.path(), "mnt");
    cd.mount_ok(&mp, &[]);

    let mut names: Vec<String> = std::fs::read_dir(&mp.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["files", "info", "testcd.iso"]);
    let truth = std::fs::read(&cd.iso).unwrap();
    assert!(std::fs::read(mp.path.join("testcd.iso")).unwrap() == truth);
    assert_eq!(read(&mp.path.join("info/target")), format!("{CD_IQN}\n"));
    assert_eq!(read(&mp.path.join("info/lun")), "1\n");
    assert_eq!(read(&mp.path.join("info/portal")), format!("{portal}\n"));
    assert_eq!(
        read(&mp.path.join("info/size")),
        format!("{}\n", truth.len())
    );
    assert_eq!(read(&mp.path.join("info/block-size")), "2048\n");
    assert!(!read(&mp.path.join("info/vendor")).trim().is_empty());
    assert!(!read(&mp.path.join("info/manifest")).trim().is_empty());
    let stats = read(&mp.path.join("info/stats"));
    assert!(stats.contains("bytes fetched"), "{stats}");

    assert_same_tree(&cd.tree, &mp.path.join("files"));
    unmount_ok(&mp);

    // The way mount(8) and /etc/fstab get here: mount.fuse3 runs `isomount NAME DIR -o OPTS`.
    let bin = Path::new(env!("CARGO_BIN_EXE_isomount")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let options = format!(
        "ro,allow_other,catalog={},cache_dir={}",
        cd.catalog.display(),
        cd.cache.display()
    );
    let out = run_bounded(
        Command::new("mount.fuse3")
            .arg("testcd")
            .arg(&mp.path)
            .args(["-t", "fuse.isomount", "-o", &options])
            .env("PATH", path),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "mount.fuse3: {out:?}");
    assert!(std::fs::read(mp.path.join("testcd.iso")).unwrap() == truth);
    let out = run_bounded(
        Command::new("umount").arg(&mp.path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "umount: {out:?}");
    assert!(!is_mounted(&mp.path));

    drop(cd.tgtd.take());
    cd.mount_ok(&mp, &["--offline"]);
    assert!(std::fs::read(mp.path.join("testcd.iso")).unwrap() == truth);
    assert_eq!(read(&mp.path.join("info/portal")), "offline\n");
    unmount_ok(&mp);
}

/// A CD published with BLAKE3 chunk hashes (manifest version 2): the mount reads it byte-exact
/// from tgtd, says which algorithm in `info/`, and an offline remount serves it from a cache
/// whose records are BLAKE3 hashes.
#[test]
fn a_blake3_published_cd_mounts_exact_and_remounts_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, iso) = make_iso(dir.path());
    let mut cd = publish_with(
        dir.path(),
        "blake3_published_cd",
        tree,
        iso,
        true,
        &["--hash", "blake3"],
    );
    let manifest = std::fs::read(dir.path().join("testcd.manifest")).unwrap();
    assert_eq!(&manifest[8..12], &[0, 2, 0, 2], "version 2, BLAKE3");
    let truth = std::fs::read(&cd.iso).unwrap();
    let mp = Mountpoint::new(dir.path(), "mnt");
    cd.mount_ok(&mp, &[]);
    assert!(std::fs::read(mp.path.join("testcd.iso")).unwrap() == truth);
    assert_eq!(read(&mp.path.join("info/chunk-hash")), "blake3\n");
    assert_same_tree(&cd.tree, &mp.path.join("files"));
    let stats = read(&mp.path.join("info/stats"));
    assert!(stats.contains("verification failures: 0"), "{stats}");
    unmount_ok(&mp);

    drop(cd.tgtd.take());
    cd.mount_ok(&mp, &["--offline"]);
    assert!(std::fs::read(mp.path.join("testcd.iso")).unwrap() == truth);
    unmount_ok(&mp);
}

#[test]
fn published_cd_serves_eight_concurrent_readers_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cd = publish_cd(dir.path(), "published_cd_eight_readers");
    let mp = Mountpoint::new(dir.path(), "mnt");
    cd.mount_ok(&mp, &[]);
    concurrent_random_reads(&mp.path.join("testcd.iso"), &cd.iso, 8, 16, 200 << 10, 11);
    unmount_ok(&mp);
}

#[test]
fn offline_and_uncached_is_eio_with_a_log_line_and_an_empty_cache_does_not_mount() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", 32 << 20, 9);
    let mut cd = publish(
        dir.path(),
        "offline_uncached_is_eio",
        dir.path().to_path_buf(),
        disk,
        false,
    );
    let mp = Mountpoint::new(dir.path(), "mnt");

    // Cache only the start of the image (the mount itself reads the volume descriptors).
    cd.mount_ok(&mp, &[]);
    let mut head = vec![0u8; 64 << 10];
    std::fs::File::open(mp.path.join("testcd.img"))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    unmount_ok(&mp);
    drop(cd.tgtd.take());

    let log = dir.path().join("mount.log");
    let option = format!("log={}", log.display());
    let out = run_bounded(
        isomount()
            .arg("--catalog")
            .arg(&cd.catalog)
            .arg("--cache-dir")
            .arg(&cd.cache)
            .args(["--offline", "mount", "testcd"])
            .arg(&mp.path)
            .args(["-o", &option]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    let file = std::fs::File::open(mp.path.join("testcd.img")).unwrap();
    let size = file.metadata().unwrap().len();
    let far = size - (1 << 20);
    let mut buf = vec![0u8; 4096];
    let err = file.read_exact_at(&mut buf, far).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let mut cached = vec![0u8; 4096];
    file.read_exact_at(&mut cached, 0).unwrap();
    assert!(cached[..] == head[..4096]);
    drop(file);
    let stats = read(&mp.path.join("info/stats"));
    assert!(
        stats.contains("failed reads: ") && !stats.contains("failed reads: 0\n"),
        "{stats}"
    );
    unmount_ok(&mp);
    let logged = read(&log);
    assert!(
        logged.contains("testcd") && logged.contains(&far.to_string()),
        "log names neither image nor range: {logged}"
    );

    let empty = dir.path().join("empty-cache");
    let out = run_bounded(
        isomount()
            .arg("--catalog")
            .arg(&cd.catalog)
            .arg("--cache-dir")
            .arg(&empty)
            .args(["--offline", "mount", "testcd"])
            .arg(&mp.path),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(!is_mounted(&mp.path));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn an_unknown_name_suggests_the_close_one() {
    let dir = tempfile::tempdir().unwrap();
    let cd = publish_cd(dir.path(), "unknown_name_suggests");
    let mp = Mountpoint::new(dir.path(), "mnt");
    let out = cd.mount("testdc", &mp, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("testcd"), "{err}");
    assert!(!is_mounted(&mp.path));
}

/// `files/` of an image with no Rock Ridge: Joliet names, or plain level-1 names without `;1`.
/// The source trees use names each flavour keeps as they are, so `diff -r` compares them directly.
#[test]
fn files_matches_the_source_tree_of_joliet_and_level1_images() {
    for (flavour, names) in [
        (
            IsoFlavour::JolietOnly,
            [
                "Read Me First.txt",
                "Docs",
                "Deep Notes",
                "kernel-image.bin",
            ],
        ),
        (
            IsoFlavour::Level1,
            ["README.TXT", "DOCS", "DEEP", "KERNEL.BIN"],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let deep = tree.join(names[1]).join(names[2]);
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(tree.join(names[0]), b"no rock ridge here\n").unwrap();
        std::fs::write(deep.join(names[0]), b"nested\n").unwrap();
        random_file(&tree.join(names[1]), names[3], 1_500_001, 7);
        let iso = iso_from_dir(&tree, &dir.path().join("image.iso"), flavour);
        let mp = Mountpoint::new(dir.path(), "mnt");
        mount_ok(&iso, &mp);
        let out = run_bounded(
            Command::new("diff")
                .arg("-r")
                .arg(&tree)
                .arg(mp.path.join("files")),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{flavour:?}: diff -r: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        unmount_ok(&mp);
    }
}

/// The `info/stats` line of this name, without the name.
fn stat(mountpoint: &Mountpoint, name: &str) -> String {
    let stats = read(&mountpoint.path.join("info/stats"));
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in stats:\n{stats}"))
        .to_string()
}

/// A fully cached image is read by the kernel straight from the cache (FUSE passthrough; root
/// only), but only once every chunk verifies: a damaged cached chunk found at open sends that
/// open down the ordinary path, where the chunk is fetched again; a later open passes through,
/// and its reads never reach isomount.
#[test]
fn a_fully_cached_image_passes_through_only_once_every_chunk_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cd = publish_cd(dir.path(), "passthrough");
    let truth = std::fs::read(&cd.iso).unwrap();
    let mp = Mountpoint::new(dir.path(), "mnt");
    let image = mp.path.join("testcd.iso");
    cd.mount_ok(&mp, &[]);
    assert!(std::fs::read(&image).unwrap() == truth);
    unmount_ok(&mp);

    // Damage one cached chunk (its CRC32C no longer matches).
    let store = only_store(&cd.cache);
    let data = store.join("data");
    let mut raw = std::fs::read(&data).unwrap();
    raw[3 * 65536 + 100] ^= 0x20;
    std::fs::write(&data, &raw).unwrap();

    cd.mount_ok(&mp, &[]);
    assert!(
        std::fs::read(&image).unwrap() == truth,
        "the damaged chunk is fetched again"
    );
    assert_eq!(stat(&mp, "passthrough"), "off");
    assert_ne!(stat(&mp, "bytes fetched"), "0");
    if portable() {
        // No passthrough off Linux: every open is the ordinary way, served from the cache.
        for _ in 0..3 {
            assert!(std::fs::read(&image).unwrap() == truth);
        }
        assert_eq!(stat(&mp, "passthrough"), "off");
    }
    // SAFETY: geteuid has no preconditions.
    if !portable() && unsafe { libc::geteuid() } == 0 {
        // The ordinary open's release reaches isomount after close returns: try a few opens.
        wait_until(Duration::from_secs(10), "a passthrough open", || {
            std::fs::read(&image).unwrap() == truth && stat(&mp, "passthrough") != "off"
        });
        let hits = stat(&mp, "hits");
        let mut file = std::fs::File::open(&image).unwrap();
        let mut again = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut again).unwrap();
        assert!(again == truth);
        assert_eq!(stat(&mp, "hits"), hits, "passthrough reads bypass isomount");
    }
    unmount_ok(&mp);
}

/// A whole cache store is sealed once the image has been read and verified. A later mount of a
/// sealed store still catches a byte that went bad without any timestamp moving (here: sealed
/// again after the damage), fetching it again, and writes nothing to the store's index while
/// reading from it.
#[test]
fn a_sealed_store_still_catches_bad_bytes_and_reading_it_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cd = publish_cd(dir.path(), "sealed");
    let truth = std::fs::read(&cd.iso).unwrap();
    let mp = Mountpoint::new(dir.path(), "mnt");
    let image = mp.path.join("testcd.iso");
    cd.mount_ok(&mp, &[]);
    assert!(std::fs::read(&image).unwrap() == truth);
    let store = only_store(&cd.cache);
    // Sealed when the image file is closed (on the daemon's blocking pool, after the reply).
    wait_until(Duration::from_secs(10), "the store to be sealed", || {
        store.join("seal").exists()
    });
    unmount_ok(&mp);

    let data = std::fs::OpenOptions::new()
        .write(true)
        .open(store.join("data"))
        .unwrap();
    let at = 3 * 65536 + 100;
    data.write_all_at(&[truth[at] ^ 0x20], at as u64).unwrap();
    let sealed = isomount::cache::Store::open_existing(&store).unwrap();
    assert!(
        sealed.seal().unwrap(),
        "sealed again as if nothing had moved"
    );
    drop(sealed);

    cd.mount_ok(&mp, &[]);
    assert!(stat(&mp, "sealed").starts_with("yes"));
    assert!(
        std::fs::read(&image).unwrap() == truth,
        "the damaged chunk is caught and fetched again"
    );
    assert_ne!(stat(&mp, "bytes fetched"), "0");
    assert_eq!(
        stat(&mp, "verification failures"),
        "0",
        "the mirror never lied"
    );
    assert_eq!(stat(&mp, "passthrough"), "off");
    wait_until(
        Duration::from_secs(10),
        "the store to be sealed again",
        || isomount::cache::Store::open_existing(&store).is_ok_and(|s| s.sealed()),
    );
    unmount_ok(&mp);

    let index = std::fs::read(store.join("index")).unwrap();
    cd.mount_ok(&mp, &[]);
    assert!(std::fs::read(&image).unwrap() == truth);
    assert_eq!(stat(&mp, "bytes fetched"), "0", "all of it from the cache");
    assert!(
        std::fs::read(store.join("index")).unwrap() == index,
        "reading from the cache wrote nothing to the store's index"
    );
    unmount_ok(&mp);
}

/// `isomount demo` until it says it is waiting; returns the child and its mountpoint.
fn start_demo(tmp: &Path) -> (std::process::Child, PathBuf) {
    use std::io::BufRead;
    let mut child = isomount()
        .arg("demo")
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut mountpoint = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the demo did not get to waiting");
            }
        };
        if let Some(at) = line.strip_prefix("mounted sample at ") {
            mountpoint = Some(PathBuf::from(at));
        }
        if line.starts_with("press Ctrl-C") {
            break;
        }
    }
    let mountpoint = mountpoint.expect("the demo mounted the sample");
    (child, mountpoint)
}

#[test]
fn demo_cleans_up_on_sigterm_sigint_and_sighup_alike() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut child, path) = start_demo(tmp.path());
        // Unmounted on drop should the demo fail to.
        let mp = Mountpoint { path: path.clone() };
        assert!(is_mounted(&mp.path), "{signal}: {}", mp.path.display());
        assert!(std::fs::read_dir(mp.path.join("files")).is_ok());
        assert!(find_daemon(&mp.path).is_some());
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_until(Duration::from_secs(30), "the demo to exit", || {
            child.try_wait().unwrap().is_some()
        });
        assert!(child.wait().unwrap().success(), "signal {signal}");
        assert!(!is_mounted(&mp.path), "signal {signal}: still mounted");
        wait_until(Duration::from_secs(20), "the mount daemon to exit", || {
            find_daemon(&mp.path).is_none()
        });
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "signal {signal}: left behind {left:?}");
    }
}

/// A mount whose daemon is gone: listing it fails with ENOTCONN (its root's attributes may
/// still be cached).
fn is_stale(path: &Path) -> bool {
    std::fs::read_dir(path).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

#[test]
fn a_stale_mount_is_recognised_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", 1 << 20, 6);
    let mp = Mountpoint::new(dir.path(), "mnt");
    let kill_daemon = |mp: &Mountpoint| {
        let pid = daemon_pid(&mp.path);
        // SAFETY: kill on the daemon we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_until(Duration::from_secs(20), "the mount to go stale", || {
            is_stale(&mp.path)
        });
    };

    // Ours: the mount command clears it and mounts again. The portable path cannot tell whose a
    // dead mount is (statfs fails on it too): it names it, and `isomount unmount` clears it.
    mount_ok(&disk, &mp);
    kill_daemon(&mp);
    let out = mount_local(&disk, &mp, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    if portable() {
        assert!(!out.status.success());
        assert!(
            err.contains("is a stale mount (unknown type)") && err.contains("isomount unmount"),
            "{err}"
        );
        isomount_unmount_ok(&mp.path);
        mount_ok(&disk, &mp);
    } else {
        assert!(out.status.success(), "{err}");
        assert!(err.contains("stale"), "{err}");
    }
    assert_eq!(
        std::fs::metadata(mp.path.join("disk.img")).unwrap().len(),
        1 << 20
    );
    unmount_ok(&mp);

    // Another file system's: named, with how to clear it; `isomount unmount` does.
    let out = mount_local(&disk, &mp, &["-o", "subtype=other"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kill_daemon(&mp);
    let out = mount_local(&disk, &mp, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let kind = if portable() {
        "unknown type"
    } else {
        "fuse.other"
    };
    assert!(
        err.contains(&format!("is a stale mount ({kind})"))
            && err.contains("whose daemon is gone (it no longer answers)")
            && err.contains("isomount unmount"),
        "{err}"
    );
    isomount_unmount_ok(&mp.path);
}

/// `isomount NAME MNT` is usable within five round trips of the link (the proxy counts them as
/// connections and turns of request and response, never time): the TCP handshake, one login
/// exchange, the probe (two flights on tgtd, whose login opens a window of two commands) with
/// the image's first bytes in it, and nothing more for the volume descriptors and the root
/// directory the mount reads before it is ready. `info/stats` shows what connecting took.
#[test]
fn a_published_cd_is_usable_within_five_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let cd = publish_cd(
        dir.path(),
        "a_published_cd_is_usable_within_five_round_trips",
    );
    let portal = cd.tgtd.as_ref().unwrap().portal();
    let proxy = common::FaultProxy::start(&portal, common::Faults::default());
    let catalog = std::fs::read_to_string(&cd.catalog).unwrap();
    std::fs::write(&cd.catalog, catalog.replace(&portal, &proxy.portal())).unwrap();
    let mp = Mountpoint::new(dir.path(), "mnt");
    let before = proxy.connections() + proxy.client_turns();
    let out = cd.mount("testcd", &mp, &[]);
    let round_trips = proxy.connections() + proxy.client_turns() - before;
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(round_trips <= 5, "the mount took {round_trips} round trips");
    let connect = stat(&mp, "connect");
    eprintln!("mount usable after {round_trips} round trips; connect: {connect}");
    assert!(connect.ends_with(" round trips"), "{connect}");
    let counted: u64 = connect
        .rsplit(", ")
        .next()
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("connect: {connect}"));
    assert!(
        counted <= round_trips,
        "{connect}, the proxy saw {round_trips}"
    );
    assert!(std::fs::read_dir(mp.path.join("files")).unwrap().count() > 0);
    assert!(std::fs::read(mp.path.join("testcd.iso")).unwrap() == std::fs::read(&cd.iso).unwrap());
    unmount_ok(&mp);
}

#[test]
fn unmount_waits_briefly_for_files_being_closed_and_names_a_busy_mount() {
    let dir = tempfile::tempdir().unwrap();
    let disk = random_file(dir.path(), "disk.img", 1 << 20, 8);
    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&disk, &mp);

    // A file still open for the whole grace: refused, and the message says why.
    let held = std::fs::File::open(mp.path.join("disk.img")).unwrap();
    let out = run_bounded(
        isomount().arg("unmount").arg(&mp.path),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unmounted under an open file");
    assert!(err.contains("files in it are still open"), "{err}");
    assert!(is_mounted(&mp.path));

    // A file closed while `unmount` waits: unmounted.
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        drop(held);
    });
    isomount_unmount_ok(&mp.path);
    closer.join().unwrap();
    wait_until(Duration::from_secs(20), "the daemon to exit", || {
        find_daemon(&mp.path).is_none()
    });
}
