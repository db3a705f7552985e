//! Linux's own ways: the mount table in /proc, read-ahead in /sys, umount2, fusermount3, several
//! FUSE threads with cloned descriptors, passthrough, direct I/O, hole punching, glibc's
//! allocator tunables. Taken unless `ISOMOUNT_FORCE_PORTABLE=1`.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{Busy, FuseSession};

/// Linux has a setuid mount helper (fusermount3, package fuse3).
pub const HAS_MOUNT_HELPER: bool = true;

/// Four threads reading /dev/fuse, each on its own cloned descriptor (each hands reads to tokio
/// and goes back for more), and every kernel feature that helps a read-only image.
pub const FUSE_SESSION: FuseSession = FuseSession {
    threads: 4,
    clone_fd: true,
    passthrough: true,
    max_pages: true,
};

/// The mount table's own listing of the calling process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Octal escapes of the mount table (`\040` for a space) undone.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The type of the file system mounted at `path` (e.g. `fuse.isomount`), from the mount table.
pub fn mounted_at(path: &Path) -> Option<String> {
    let table = std::fs::read_to_string(MOUNTINFO).ok()?;
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = fields.get(4)?;
        if unescape_mountinfo(point) != path.as_os_str().as_bytes() {
            return None;
        }
        let dash = fields.iter().position(|f| *f == "-")?;
        Some(fields.get(dash + 1)?.to_string())
    })
}

fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c_path.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmount as umount(8) would: the system call as root, fusermount3 -u for a normal user.
pub fn unmount(path: &Path, busy: Busy) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return helper_unmount(path, busy);
    }
    match busy {
        Busy::Refuse => umount2(path, 0),
        Busy::GoAnyway => detach(path),
    }
}

/// Take the mount out of the tree now (as libfuse does); it goes when its last file is closed.
pub fn detach(path: &Path) -> io::Result<()> {
    umount2(path, libc::MNT_DETACH)
}

pub fn helper_mount(mountpoint: &Path, options: &str) -> io::Result<OwnedFd> {
    super::fusermount::mount(mountpoint, options)
}

pub fn helper_unmount(mountpoint: &Path, busy: Busy) -> io::Result<()> {
    super::fusermount::unmount(mountpoint, busy)
}

/// The INIT reply cannot raise read-ahead past the kernel's default (128 KiB), but root may
/// through the mount's backing device info. Sequential readers then keep many large requests in
/// flight instead of one 128 KiB request.
pub fn raise_readahead(mountpoint: &Path, bytes: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(err) = std::fs::write(&knob, (bytes / 1024).to_string()) {
        tracing::debug!("read-ahead stays at the kernel default ({knob}: {err})");
    }
}

/// pipe2 with both ends closed on exec, atomically.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// O_DIRECT: writes skip the copy into the page cache and the file system's per-page work. None
/// where the file system refuses it (tmpfs).
pub fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// fallocate(PUNCH_HOLE | KEEP_SIZE).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: fallocate on a valid, owned descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Err(io::Error::new(io::ErrorKind::Unsupported, err)),
        _ => Err(err),
    }
}

/// Data buffers of a few hundred KiB are allocated and freed at line rate. glibc's default is
/// to hand such memory back to the kernel as soon as it is free and fault it in again on the next
/// allocation, which cost a sixth of the CPU time of a cold `cat` (measured with perf). Keep it:
/// allocations up to 32 MiB come from the heap, and free memory is returned only beyond 256 MiB.
pub fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator tunables; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// madvise(MADV_HUGEPAGE): with transparent huge pages on `madvise`, as distributions set them,
/// the range is faulted in and pinned 2 MiB at a time.
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    // SAFETY: madvise with MADV_HUGEPAGE only changes how the kernel backs the range, which the
    // caller owns; it never changes its contents.
    let _ = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
}

/// malloc_trim(0): glibc gives the free pages of every arena back to the kernel.
#[cfg(target_env = "gnu")]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases memory the allocator holds free; no pointer is involved.
    let _ = unsafe { libc::malloc_trim(0) };
}

/// posix_fadvise(POSIX_FADV_SEQUENTIAL) over the whole file.
pub fn advise_sequential(file: &File) {
    // SAFETY: posix_fadvise only changes the read-ahead of the descriptor, which we own.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
}

/// MADV_POPULATE_READ (Linux 5.14) over every mapping of this program's own file, found in
/// /proc/self/maps.
pub fn keep_code_resident() {
    /// MADV_POPULATE_READ, not in every libc crate version.
    const MADV_POPULATE_READ: libc::c_int = 22;
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = exe.to_string_lossy();
    for line in maps.lines() {
        // "start-end perms offset dev inode path"
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if fields.nth(3) != Some(&exe) || !perms.starts_with('r') || perms.contains('w') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is one of this process's own read-only file mappings; populating it
        // only faults its pages in, never changes their contents.
        let _ = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end.saturating_sub(start),
                MADV_POPULATE_READ,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page faults this thread has taken so far.
    fn faults() -> i64 {
        // SAFETY: getrusage writes one rusage into the zeroed value we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        usage.ru_minflt
    }

    /// Resident and total KiB of this program's read-only mappings of its own file.
    fn own_code_kib() -> (u64, u64) {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let (mut rss, mut size, mut ours) = (0, 0, false);
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                let perms = fields.next().unwrap_or("");
                ours = fields.nth(3) == exe.to_str() && !perms.contains('w');
            } else if ours && first == "Size:" {
                size += fields.next().unwrap().parse::<u64>().unwrap();
            } else if ours && first == "Rss:" {
                rss += fields.next().unwrap().parse::<u64>().unwrap();
            }
        }
        (rss, size)
    }

    #[test]
    fn the_programs_own_code_is_mapped_in_whole() {
        let (_, size) = own_code_kib();
        assert!(size > 1024, "this test binary maps {size} KiB of itself");
        keep_code_resident();
        let (rss, size) = own_code_kib();
        assert!(
            rss * 100 >= size * 95,
            "{rss} KiB of {size} KiB of our own code and read-only data resident"
        );
    }

    #[test]
    fn a_region_advised_for_huge_pages_faults_in_a_huge_page_at_a_time() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if thp.as_deref().map_or(true, |t| t.contains("[never]")) {
            eprintln!("transparent huge pages are off here: nothing to check");
            return;
        }
        const LEN: usize = 8 << 20;
        let layout = std::alloc::Layout::from_size_align(LEN, 2 << 20).unwrap();
        // SAFETY: a non-zero layout; freed below with the same layout.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        advise_huge_pages(ptr, LEN);
        let before = faults();
        // SAFETY: the allocation is LEN bytes long and ours.
        unsafe { std::ptr::write_bytes(ptr, 1, LEN) };
        let taken = faults() - before;
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(ptr, layout) };
        // 2048 pages of 4 KiB: one fault each without huge pages, 4 with (a few more where the
        // kernel found no free huge page for one of them).
        assert!(taken < 1024, "{taken} page faults for {LEN} bytes");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo("/mnt/\\13"), b"/mnt/\\13");
    }

    #[test]
    fn the_mount_table_names_types() {
        assert_eq!(mounted_at(Path::new("/proc")).as_deref(), Some("proc"));
    }
}
