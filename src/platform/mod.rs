//! Every difference between operating systems, in one place.
//!
//! isomount runs wherever there is FUSE, as the NetBSD paper promised. Linux has faster or more
//! exact ways for some things (`linux.rs`); every other system takes the portable ways (`unix.rs`),
//! and so does a Linux build when `ISOMOUNT_FORCE_PORTABLE=1` is set, which is how the tests run
//! the path other systems take. Nothing outside this module names an operating system, /proc or
//! /sys, or calls a system-specific function.
//!
//! | concern | Linux | portable (FreeBSD, macOS, NetBSD; Linux when forced) |
//! |---|---|---|
//! | is something mounted here | /proc/self/mountinfo | the path's device differs from its parent's; type from statfs |
//! | mount as a normal user | fusermount3 (ours: /dev/fuse may be closed to users) | fuser's own (mount_fusefs, macFUSE) |
//! | unmount on a signal, files open | detach (MNT_DETACH) | unmount(2) again once they are closed |
//! | `isomount unmount` | umount2, or fusermount3 -u | unmount(2), else the helper if there is one |
//! | unmount a stale mount | detach | unmount(2), forced if busy |
//! | a stale mount's error | ENOTCONN | ENOTCONN (FreeBSD), ENXIO (macFUSE) |
//! | FUSE session | 4 threads, clone_fd, passthrough, max_pages | 1 thread, none of those |
//! | kernel read-ahead | /sys/class/bdi/MAJ:MIN/read_ahead_kb (root) | the kernel's default |
//! | cache writes | O_DIRECT | through the page cache |
//! | space of evicted chunks | fallocate(PUNCH_HOLE) | FreeBSD fspacectl, macOS F_PUNCHHOLE, else none: the store is rewritten |
//! | freed memory | kept (glibc mallopt) | the allocator's default |
//! | I/O buffers | huge pages (madvise MADV_HUGEPAGE) | the system's pages |
//! | host name | gethostname(3) | gethostname(3) |
//!
//! The harness crate has its own small platform file (`harness/src/platform.rs`) for the one
//! difference it has: children that die with the test process.

#[cfg(target_os = "linux")]
mod fusermount;
#[cfg(target_os = "linux")]
mod linux;
mod unix;

/// What the system this was built for has, whichever ways are taken.
#[cfg(target_os = "linux")]
use linux as native;
#[cfg(not(target_os = "linux"))]
use unix as native;

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::OnceLock;

/// Set to `1`, makes a Linux build take the portable ways.
pub const FORCE_PORTABLE: &str = "ISOMOUNT_FORCE_PORTABLE";

/// Which ways this process takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Linux's own: /proc, /sys, fusermount3, several FUSE threads, passthrough, O_DIRECT.
    Linux,
    /// What FreeBSD, macOS and NetBSD do, and Linux with `ISOMOUNT_FORCE_PORTABLE=1`.
    Portable,
}

/// The ways this process takes (decided once, from the build and the environment).
pub fn flavour() -> Flavour {
    static FLAVOUR: OnceLock<Flavour> = OnceLock::new();
    *FLAVOUR.get_or_init(|| {
        let forced = std::env::var_os(FORCE_PORTABLE).is_some_and(|v| v == "1");
        if cfg!(target_os = "linux") && !forced {
            Flavour::Linux
        } else {
            Flavour::Portable
        }
    })
}

/// True when Linux's own ways are taken.
#[cfg(target_os = "linux")]
fn linux_ways() -> bool {
    flavour() == Flavour::Linux
}

/// Whether this build can mount at all; why not, when it cannot.
pub fn can_mount() -> Result<(), &'static str> {
    if cfg!(target_os = "netbsd") {
        return Err(
            "isomount cannot mount on NetBSD: fuser does not ask perfused for mounts \
                    (README, Platforms); cat, fetch and serve work",
        );
    }
    if cfg!(feature = "macos-no-mount") {
        return Err("this build has no mount code (built with the macos-no-mount feature)");
    }
    Ok(())
}

/// How the FUSE session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuseSession {
    /// Threads reading FUSE requests (fuser refuses more than one off Linux).
    pub threads: usize,
    /// Each thread reads its own descriptor (`FUSE_DEV_IOC_CLONE`, Linux only).
    pub clone_fd: bool,
    /// The kernel may read a fully cached image from the cache's file itself (FUSE passthrough,
    /// Linux 6.9, root).
    pub passthrough: bool,
    /// Requests may be bigger than 32 pages (`FUSE_MAX_PAGES`, Linux 4.20).
    pub max_pages: bool,
}

pub fn fuse_session() -> FuseSession {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        return linux::FUSE_SESSION;
    }
    unix::FUSE_SESSION
}

/// Mount options every isomount mount carries: read-only, no set-id files, no device files.
pub fn fixed_mount_options() -> Vec<fuser::MountOption> {
    unix::fixed_mount_options()
}

/// The option that names the file system's subtype in the mount table (`fuse.isomount`), where
/// the system's mount takes one.
pub fn subtype_option(subtype: &str) -> Option<fuser::MountOption> {
    unix::subtype_option(subtype)
}

/// Whether a normal user mounts through our own call of the setuid helper (Linux's
/// fusermount3), rather than through fuser's mount.
pub fn mounts_through_helper() -> bool {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        return true;
    }
    false
}

/// Mount through the setuid helper with `options` (its `-o` syntax); the /dev/fuse descriptor to
/// serve the mount on. Only where [`mounts_through_helper`].
pub fn helper_mount(mountpoint: &Path, options: &str) -> io::Result<OwnedFd> {
    native::helper_mount(mountpoint, options)
}

/// Undo a [`helper_mount`], detaching the mount if files in it are still open.
pub fn helper_unmount(mountpoint: &Path) -> io::Result<()> {
    native::helper_unmount(mountpoint, Busy::GoAnyway)
}

/// What an unmount does while files in the mount are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Fail with EBUSY, as umount(8) does.
    Refuse,
    /// The mount goes now: Linux detaches it (open files read on until closed); other systems
    /// force it (open files fail), which is what a stale mount, whose daemon is gone, needs.
    GoAnyway,
}

/// Whether the mount at `path` lost its daemon: the kernel then answers what it cannot serve
/// from its caches with ENOTCONN (Linux, FreeBSD) or ENXIO (macFUSE). The root's attributes may
/// still be cached, so this lists the directory.
pub fn is_stale_mount(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|_| std::fs::read_dir(path).map(drop))
        .is_err_and(|err| matches!(err.raw_os_error(), Some(libc::ENOTCONN | libc::ENXIO)))
}

/// Whether a type [`mounted_at`] gave is an isomount mount's (`fuse.isomount` in Linux's mount
/// table, `fusefs.isomount` in FreeBSD's statfs). Other systems' types do not say.
pub fn is_isomount_type(kind: &str) -> bool {
    matches!(kind, "fuse.isomount" | "fusefs.isomount")
}

/// The type of the file system mounted at `path` (absolute, resolved), if one is mounted there.
pub fn mounted_at(path: &Path) -> Option<String> {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        return linux::mounted_at(path);
    }
    unix::mounted_at(path)
}

/// Unmount `path` as umount(8) would: the system call, or for a normal user the helper where
/// there is one.
pub fn unmount(path: &Path, busy: Busy) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        return linux::unmount(path, busy);
    }
    match unix::unmount(path, busy) {
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied && native::HAS_MOUNT_HELPER => {
            native::helper_unmount(path, busy)
        }
        result => result,
    }
}

/// The command a user would type to unmount `path` by hand: fusermount3 where mounts go
/// through it, umount(8) elsewhere.
pub fn manual_unmount_command(path: &Path) -> String {
    if mounts_through_helper() && native::HAS_MOUNT_HELPER {
        format!("fusermount3 -u {}", path.display())
    } else {
        format!("umount {}", path.display())
    }
}

/// Whether an unmount failed because files in the mount are open: EBUSY from the system call,
/// or the helper's report of it.
pub fn is_busy(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EBUSY) || err.to_string().contains("resource busy")
}

/// Unmount `path`, which a plain unmount refused because files in it are open (EBUSY). Linux
/// detaches it at once; elsewhere this waits, serving, until the last file is closed.
pub fn unmount_busy(path: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        return linux::detach(path);
    }
    unix::unmount_when_closed(path)
}

/// Widen the kernel's read-ahead for the mount at `mountpoint` to `bytes`, where the system
/// lets us (best effort).
pub fn raise_readahead(mountpoint: &Path, bytes: u32) {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        linux::raise_readahead(mountpoint, bytes);
    }
    let _ = (mountpoint, bytes);
}

/// A pipe whose two ends are closed on exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    native::pipe()
}

/// The cache's data file at `path`, opened for writes that bypass the page cache, where the
/// system has them (the caller aligns offsets, lengths and buffers to 4096 bytes). None: write
/// the usual way.
pub fn open_direct(path: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        return linux::open_direct(path);
    }
    let _ = path;
    None
}

/// Give the space of `len` bytes at `offset` of `file` back to the file system, keeping the
/// file's size (the range then reads as zeros). `Unsupported` where the system cannot: the
/// caller rewrites the file instead.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        return linux::punch_hole(file, offset, len);
    }
    unix::punch_hole(file, offset, len)
}

/// Tune the allocator for data buffers allocated and freed at line rate. Call before any thread
/// starts.
pub fn keep_freed_memory() {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        linux::keep_freed_memory();
    }
}

/// Ask the system to back `len` bytes at `ptr` (aligned to a huge page) with huge pages, where
/// it can; a hint, whose refusal changes nothing but speed.
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        linux::advise_huge_pages(ptr, len);
    }
    let _ = (ptr, len);
}

/// Hand memory the allocator holds free back to the system, where it can (glibc keeps freed
/// memory in its arenas; `malloc_trim` returns their whole free pages). A hint for an idle
/// process; elsewhere nothing (other systems' allocators give memory back on their own). It
/// follows the allocator, glibc, not the kernel: the portable path on Linux uses it too.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    linux::release_free_memory();
}

/// Tell the system `file` will be read mostly in order, so that it reads ahead further (a
/// hint: on Linux, twice the device's read-ahead window).
pub fn advise_sequential(file: &File) {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        linux::advise_sequential(file);
    }
    let _ = file;
}

/// Map in the pages of this program's own code and read-only data now, where the system can, so
/// that a long-running daemon does not stall on faults for them later: after memory pressure or
/// drop_caches, a fault on a cold page of the binary reads megabytes from disk (the kernel reads
/// around the fault) in the middle of serving a read. Pages mapped this way stay resident as
/// long as they are mapped; a hint, whose refusal changes nothing but speed.
pub fn keep_code_resident() {
    #[cfg(target_os = "linux")]
    if linux_ways() {
        linux::keep_code_resident();
    }
}

/// This machine's host name (gethostname(3)), if it has one.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length; gethostname writes at most that much.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    // POSIX leaves a truncated name unterminated: take what is there.
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_name_is_the_kernels() {
        let name = host_name().expect("a host name");
        let uts = std::process::Command::new("uname").arg("-n").output();
        if let Ok(out) = uts {
            assert_eq!(name, String::from_utf8_lossy(&out.stdout).trim());
        }
    }

    #[test]
    fn root_is_a_mount_and_a_fresh_directory_is_not() {
        assert!(mounted_at(Path::new("/")).is_some());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        assert_eq!(mounted_at(&path), None);
        assert_eq!(unix::mounted_at(&path), None);
        assert!(unix::mounted_at(Path::new("/")).is_some());
    }

    #[test]
    fn punched_or_refused_never_changes_other_bytes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        file.write_all_at(&[7u8; 3 * 65536], 0).unwrap();
        let result = punch_hole(&file, 65536, 65536);
        let mut back = vec![0u8; 3 * 65536];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..65536].iter().all(|&b| b == 7));
        assert!(back[2 * 65536..].iter().all(|&b| b == 7));
        match result {
            Ok(()) => assert!(back[65536..2 * 65536].iter().all(|&b| b == 0)),
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::Unsupported);
                assert!(back[65536..2 * 65536].iter().all(|&b| b == 7));
            }
        }
        assert_eq!(file.metadata().unwrap().len(), 3 * 65536);
    }
}
