//! The portable ways: what FreeBSD, macOS and NetBSD take, and Linux when
//! `ISOMOUNT_FORCE_PORTABLE=1`. POSIX calls, with a line or two per system where a call's name or
//! a structure differs; every line here runs in the Linux test suite's portable pass, except
//! those under another system's `cfg`.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use fuser::MountOption;

use super::FuseSession;

/// Only Linux has a setuid FUSE mount helper that isomount calls itself; fuser finds FreeBSD's
/// mount_fusefs and macFUSE's on its own.
#[cfg(not(target_os = "linux"))]
pub const HAS_MOUNT_HELPER: bool = false;

/// One thread reading FUSE requests (it hands each read to tokio and goes back for more); fuser
/// runs more only on Linux, and the kernels here offer neither passthrough nor `max_pages`.
pub const FUSE_SESSION: FuseSession = FuseSession {
    threads: 1,
    clone_fd: false,
    passthrough: false,
    max_pages: false,
};

/// How often an unmount refused for open files is tried again.
const BUSY_RETRY: Duration = Duration::from_millis(200);

pub fn fixed_mount_options() -> Vec<MountOption> {
    if cfg!(target_os = "freebsd") {
        // Device files exist only on devfs there, and mount_fusefs refuses `nodev`.
        vec![MountOption::RO, MountOption::NoSuid]
    } else {
        vec![MountOption::RO, MountOption::NoDev, MountOption::NoSuid]
    }
}

pub fn subtype_option(subtype: &str) -> Option<MountOption> {
    // macFUSE's mount tool knows no subtype (every volume's type is macfuse).
    (!cfg!(target_os = "macos")).then(|| MountOption::CUSTOM(format!("subtype={subtype}")))
}

/// Whether `path` is a mount point, by stat(2) alone: its device differs from its parent's (or
/// it is its own parent, `/`). The type comes from statfs where the system names it.
pub fn mounted_at(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let here = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) => {
            return match err.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => None,
                // A FUSE mount whose daemon is gone (or that is closed to us) answers with an
                // error of its own; an ordinary directory would not.
                _ => Some("unknown type".to_string()),
            };
        }
    };
    let parent = std::fs::metadata(path.join("..")).ok()?;
    let mount_point = here.dev() != parent.dev() || here.ino() == parent.ino();
    mount_point.then(|| fs_type(path).unwrap_or_else(|| "unknown type".to_string()))
}

/// The type statfs(2) names (`fusefs.isomount`, `macfuse`, `ufs`).
#[cfg(any(target_os = "freebsd", target_os = "macos"))]
fn fs_type(path: &Path) -> Option<String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain data; all-zero is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is writable.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let name: Vec<u8> = stat
        .f_fstypename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&name).into_owned())
}

/// Linux's statfs(2) gives a magic number, not a name: the few that matter here.
#[cfg(target_os = "linux")]
fn fs_type(path: &Path) -> Option<String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain data; all-zero is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is writable.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let name = match stat.f_type {
        libc::FUSE_SUPER_MAGIC => "fuse".to_string(),
        libc::PROC_SUPER_MAGIC => "proc".to_string(),
        libc::TMPFS_MAGIC => "tmpfs".to_string(),
        other => format!("type {other:#x}"),
    };
    Some(name)
}

/// NetBSD's statvfs names the type, but the libc crate does not show that field.
#[cfg(not(any(target_os = "freebsd", target_os = "macos", target_os = "linux")))]
fn fs_type(_path: &Path) -> Option<String> {
    None
}

/// unmount(2) (Linux spells it umount2) with `flags` (0 or MNT_FORCE).
fn sys_unmount(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    #[cfg(target_os = "linux")]
    // SAFETY: c_path is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), flags) };
    #[cfg(not(target_os = "linux"))]
    // SAFETY: c_path is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::unmount(c_path.as_ptr(), flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// unmount(2); refused while files in the mount are open, unless `busy` says go anyway: then
/// forced (MNT_FORCE; nothing else can detach a busy mount here).
pub fn unmount(path: &Path, busy: super::Busy) -> io::Result<()> {
    match sys_unmount(path, 0) {
        Err(err) if err.raw_os_error() == Some(libc::EBUSY) && busy == super::Busy::GoAnyway => {
            sys_unmount(path, libc::MNT_FORCE)
        }
        result => result,
    }
}

/// No system but Linux can detach a busy mount, and forcing it (MNT_FORCE) would fail the reads
/// of whoever holds its files: keep serving and unmount once the last of them is closed.
pub fn unmount_when_closed(path: &Path) -> io::Result<()> {
    tracing::info!(
        "{} is in use: it is unmounted once its open files are closed",
        path.display()
    );
    loop {
        std::thread::sleep(BUSY_RETRY);
        match sys_unmount(path, 0) {
            Ok(()) => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => continue,
            // Unmounted meanwhile by someone else.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

/// The systems here have no helper isomount calls itself (see [`HAS_MOUNT_HELPER`]).
#[cfg(not(target_os = "linux"))]
pub fn helper_mount(_mountpoint: &Path, _options: &str) -> io::Result<std::os::fd::OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this system has no FUSE mount helper for isomount to call",
    ))
}

#[cfg(not(target_os = "linux"))]
pub fn helper_unmount(_mountpoint: &Path, _busy: super::Busy) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this system has no FUSE mount helper for isomount to call",
    ))
}

/// pipe(2), then close-on-exec on both ends (not atomic: call before threads exist).
#[cfg(not(target_os = "linux"))]
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe succeeded, so both descriptors are open and owned by nobody else.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in fds {
        // SAFETY: fd is open (owned by `ends`).
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(ends)
}

/// FreeBSD 14's fspacectl(SPACECTL_DEALLOC).
#[cfg(target_os = "freebsd")]
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let range = libc::spacectl_range {
        r_offset: libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?,
        r_len: libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?,
    };
    // SAFETY: valid descriptor; range is read, the remainder pointer may be null.
    let rc = unsafe {
        libc::fspacectl(
            file.as_raw_fd(),
            libc::SPACECTL_DEALLOC,
            &range,
            0,
            std::ptr::null_mut(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    unsupported_if(
        io::Error::last_os_error(),
        &[libc::EOPNOTSUPP, libc::EINVAL],
    )
}

/// macOS's fcntl(F_PUNCHHOLE) (APFS).
#[cfg(target_os = "macos")]
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let hole = libc::fpunchhole_t {
        fp_flags: 0,
        reserved: 0,
        fp_offset: libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?,
        fp_length: libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?,
    };
    // SAFETY: valid descriptor; F_PUNCHHOLE reads one fpunchhole_t.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_PUNCHHOLE, &hole) } == 0 {
        return Ok(());
    }
    unsupported_if(io::Error::last_os_error(), &[libc::ENOTSUP, libc::EINVAL])
}

/// No portable way to give part of a file back (NetBSD; Linux when forced).
#[cfg(not(any(target_os = "freebsd", target_os = "macos")))]
pub fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this system cannot punch holes in files",
    ))
}

/// `err` as `Unsupported` when it is one of `codes` (the file system cannot do it).
#[cfg(any(target_os = "freebsd", target_os = "macos"))]
fn unsupported_if(err: io::Error, codes: &[i32]) -> io::Result<()> {
    match err.raw_os_error() {
        Some(code) if codes.contains(&code) => Err(io::Error::new(io::ErrorKind::Unsupported, err)),
        _ => Err(err),
    }
}
