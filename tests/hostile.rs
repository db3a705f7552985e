//! The initiator against a hostile target (harness `HostileTarget`, one misbehaviour each): the
//! first MiB is served honestly, every READ past it breaks the protocol. For each misbehaviour:
//! - `isomount cat URL` (the session alone) and `isomount cat NAME` (through a catalog, the image
//!   core and the cache) end within the bound with exit 1 and one clear line naming the portal,
//!   no panic, bounded memory, and what they wrote is a true prefix of the image;
//! - a real mount of NAME answers EIO for a read past the honest MiB, within the bound, and keeps
//!   serving the MiB it read before, from its cache.
//!
//! The trickling target is given up after `ISOMOUNT_STALL_TIMEOUT` of no progress; the tests set
//! it to 2 s (the default, 8 s, would make that mode take 24 s).

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;
/// The bound every mode must end within (the default read bound is 90 s).
const BOUND: Duration = Duration::from_secs(90);
/// Seconds without progress before a connection is given up, for these tests.
const STALL_SECS: &str = "2";

/// An `isomount` command with none of the user's settings that would change what it does.
fn isomount_clean() -> Command {
    let mut cmd = isomount();
    cmd.env_remove("ISOMOUNT_DIGEST")
        .env_remove("LIBISCSI_CHAP_USERNAME")
        .env_remove("LIBISCSI_CHAP_PASSWORD")
        .env("ISOMOUNT_STALL_TIMEOUT", STALL_SECS);
    cmd
}

/// A hostile target serving 2 MiB of random bytes, honest for the first MiB.
struct Scene {
    dir: tempfile::TempDir,
    image: Vec<u8>,
    target: HostileTarget,
}

impl Scene {
    fn new(misbehaviour: Misbehaviour) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let path = random_file(dir.path(), "hostile.img", 2 * MIB as u64, 61);
        let image = std::fs::read(path).unwrap();
        let target = HostileTarget::start(image.clone(), MIB as u64, misbehaviour);
        Scene { dir, image, target }
    }

    /// A catalog naming the image `hostile` at the target, with its manifest (`publish`).
    fn catalog(&self) -> PathBuf {
        let catalog = self.dir.path().join("catalog.toml");
        let out = isomount_clean()
            .arg("publish")
            .arg(self.dir.path().join("hostile.img"))
            .args(["--name", "hostile", "--target", HOSTILE_IQN, "--lun", "0"])
            .args(["--portal", &self.target.portal(), "-o"])
            .arg(&catalog)
            .output()
            .expect("run isomount publish");
        assert!(out.status.success(), "publish: {out:?}");
        catalog
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

/// Run `cmd` (an `isomount cat`) and check how it ends against a target misbehaving this way.
fn check_cat(scene: &Scene, misbehaviour: Misbehaviour, what: &str, mut cmd: Command) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run isomount");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        buf
    });
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND + Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{misbehaviour:?}, {what}: still running after {:?}",
                started.elapsed()
            );
        }
        if let Some(kib) = platform::memory_kib(pid, platform::Memory::Peak) {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let written = out.join().unwrap();
    let stderr = err.join().unwrap();
    let case = format!("{misbehaviour:?}, {what}");
    eprintln!(
        "{case}: ended in {elapsed:?}, {} bytes written, peak RSS {peak_kib} KiB: {stderr}",
        written.len()
    );
    assert_eq!(status.code(), Some(1), "{case}: {status}");
    assert!(elapsed <= BOUND, "{case}: took {elapsed:?}");
    assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{case}: {stderr}");
    assert!(
        lines[0].contains(&scene.target.portal()),
        "{case}: the line does not name the portal: {stderr}"
    );
    assert!(written.len() < scene.image.len(), "{case}");
    assert!(
        written[..] == scene.image[..written.len()],
        "{case}: output is not a prefix of the image"
    );
    assert!(peak_kib < 256 * 1024, "{case}: peak RSS {peak_kib} KiB");
    assert!(scene.target.logins() >= 1);
}

/// `isomount cat URL`: the session alone.
fn cat_url(misbehaviour: Misbehaviour) {
    let scene = Scene::new(misbehaviour);
    let mut cmd = isomount_clean();
    cmd.args(["cat", &scene.target.url()]);
    check_cat(&scene, misbehaviour, "cat URL", cmd);
}

/// `isomount cat NAME`: a catalog entry, through the image core, its cache and its fault budget.
fn cat_name(misbehaviour: Misbehaviour) {
    let scene = Scene::new(misbehaviour);
    let catalog = scene.catalog();
    let mut cmd = isomount_clean();
    cmd.arg("--catalog")
        .arg(&catalog)
        .arg("--cache-dir")
        .arg(scene.cache())
        .args(["cat", "hostile"]);
    check_cat(&scene, misbehaviour, "cat NAME", cmd);
}

/// A FUSE mount, lazily unmounted when dropped (a failing test leaves no mount behind).
struct Mounted {
    path: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}

/// Drop the page cache's copy of `file` (its pages only), so the next read reaches the mount.
fn forget_pages(file: &std::fs::File) {
    // SAFETY: a valid open descriptor; the advice only affects that file's cached pages.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// The mount's `info/stats` count of cache hits.
fn cache_hits(mounted: &Mounted) -> u64 {
    let stats = std::fs::read_to_string(mounted.path.join("info/stats")).unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("hits: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no hits in info/stats:\n{stats}"))
}

/// A read of `len` bytes at `offset` of the mounted image: its bytes, or the errno it failed with.
fn read_at(file: &std::fs::File, offset: usize, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset as u64)
        .map(|()| buf)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// A real mount of NAME: the honest MiB reads and is cached; a read past it fails with EIO
/// within the bound; the honest MiB is still served afterwards, from the cache.
fn mount(misbehaviour: Misbehaviour) {
    let scene = Scene::new(misbehaviour);
    let catalog = scene.catalog();
    let mountpoint = scene.dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let out = isomount_clean()
        .arg("--catalog")
        .arg(&catalog)
        .arg("--cache-dir")
        .arg(scene.cache())
        .args(["mount", "hostile"])
        .arg(&mountpoint)
        .stdin(Stdio::null())
        .output()
        .expect("run isomount mount");
    let mounted = Mounted { path: mountpoint };
    assert!(out.status.success(), "{misbehaviour:?}: mount: {out:?}");
    let file = std::fs::File::open(mounted.path.join("hostile.img")).unwrap();
    // The honest MiB is read before anything past it: backwards, and with the kernel's
    // read-ahead off for the file, so that neither the kernel nor the image core reads ahead
    // into the hostile part (their reads would drop the portal with honest reads in flight).
    // SAFETY: a valid open descriptor; the advice only affects this file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(rc, 0, "posix_fadvise");
    let honest = &scene.image[..MIB];
    const PIECE: usize = 64 << 10;
    for offset in (0..MIB).step_by(PIECE).rev() {
        let got = read_at(&file, offset, PIECE);
        assert!(
            got.as_deref() == Ok(&honest[offset..offset + PIECE]),
            "{misbehaviour:?}: honest bytes at {offset}: {:?}",
            got.err()
        );
    }

    let started = Instant::now();
    let bad = read_at(&file, MIB + 8192, 4096);
    let elapsed = started.elapsed();
    assert_eq!(
        bad,
        Err(libc::EIO),
        "{misbehaviour:?}: a read past the honest MiB"
    );
    assert!(elapsed <= BOUND, "{misbehaviour:?}: EIO after {elapsed:?}");

    let hits_before = cache_hits(&mounted);
    forget_pages(&file);
    let again = read_at(&file, 0, MIB);
    assert!(
        again.as_deref() == Ok(honest),
        "{misbehaviour:?}: the cached MiB after the fault: {:?}",
        again.err()
    );
    assert!(
        cache_hits(&mounted) > hits_before,
        "{misbehaviour:?}: the MiB did not come from the cache"
    );
    // The portal is dropped for this image: the next bad read fails at once.
    let started = Instant::now();
    assert_eq!(read_at(&file, MIB + 65536, 4096), Err(libc::EIO));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{misbehaviour:?}"
    );
    eprintln!("{misbehaviour:?}, mount: EIO after {elapsed:?}, cached MiB still served");
    drop(file);
    drop(mounted);
}

/// One test per misbehaviour, running `$check` against a target misbehaving that way.
macro_rules! each_misbehaviour {
    ($check:ident) => {
        use super::*;

        #[test]
        fn an_oversized_data_segment() {
            $check(Misbehaviour::OversizedSegment);
        }

        #[test]
        fn data_in_past_the_transfer_length() {
            $check(Misbehaviour::Overrun);
        }

        #[test]
        fn a_reserved_opcode() {
            $check(Misbehaviour::ReservedOpcode);
        }

        #[test]
        fn a_response_for_an_itt_never_issued() {
            $check(Misbehaviour::UnknownItt);
        }

        #[test]
        fn random_bytes() {
            $check(Misbehaviour::RandomBytes);
        }

        #[test]
        fn data_in_trickling_a_byte_a_second() {
            $check(Misbehaviour::Trickle);
        }

        #[test]
        fn good_status_without_data() {
            $check(Misbehaviour::GoodWithoutData);
        }

        #[test]
        fn a_reject_of_a_valid_command() {
            $check(Misbehaviour::RejectValidCommand);
        }
    };
}

mod cat_url {
    each_misbehaviour!(cat_url);
}

mod cat_name {
    each_misbehaviour!(cat_name);
}

mod mount {
    each_misbehaviour!(mount);
}
