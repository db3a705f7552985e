//! Real FUSE mounts of `isomount mount` (run as root). Every mount is undone in Drop, so a failing
//! test leaves no stale mount behind; every wait is bounded.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{isomount, random_file};

/// Run `cmd`, killing it if it takes longer than `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(want))
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mountpoint that is unmounted (lazily, for sure) when dropped.
struct Mountpoint {
    path: PathBuf,
}

impl Mountpoint {
    fn new(dir: &Path, name: &str) -> Mountpoint {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        Mountpoint {
            path: path.canonicalize().unwrap(),
        }
    }
}

impl Drop for Mountpoint {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = run_bounded(
                Command::new("fusermount3")
                    .args(["-u", "-z", "--"])
                    .arg(&self.path),
                Duration::from_secs(10),
            );
        }
        if is_mounted(&self.path) {
            let _ = run_bounded(
                Command::new("umount").arg("-l").arg(&self.path),
                Duration::from_secs(10),
            );
        }
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

fn unmount_ok(mountpoint: &Mountpoint) {
    let out = run_bounded(
        isomount().arg("unmount").arg(&mountpoint.path),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "unmount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mountpoint.path));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
    assert_eq!(read(&readahead_knob(&mp.path)), "1024\n");
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

#[test]
fn eight_concurrent_readers_at_random_offsets_get_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24 << 20;
    let disk = random_file(dir.path(), "disk.img", size, 3);
    let mp = Mountpoint::new(dir.path(), "mnt");
    mount_ok(&disk, &mp);
    let mounted = mp.path.join("disk.img");
    std::thread::scope(|scope| {
        for reader in 0..8u64 {
            let (mounted, disk) = (&mounted, &disk);
            scope.spawn(move || {
                let ours = std::fs::File::open(mounted).unwrap();
                let truth = std::fs::File::open(disk).unwrap();
                let mut state = reader.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
                for _ in 0..40 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let offset = state % size;
                    let len = ((state >> 32) % (300 << 10)) as usize + 1;
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("already mounted (fuse.isomount)"));

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

    mount_ok(&disk, &mp);
    let pid = daemon_pid(&mp.path);
    // SAFETY: kill on the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until(Duration::from_secs(30), "SIGTERM to unmount", || {
        !is_mounted(&mp.path)
    });
}

/// The kernel's read-ahead setting for the mount at `path`.
fn readahead_knob(path: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    ))
}

/// The pid of the daemon serving `mountpoint`, from /proc.
fn daemon_pid(mountpoint: &Path) -> i32 {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.first().is_some_and(|a| a.ends_with(b"isomount"));
        if ours && args.contains(&want) {
            return pid;
        }
    }
    panic!("no daemon for {}", mountpoint.display());
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
