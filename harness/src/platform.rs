//! The harness's platform module: every difference between operating systems that the harness
//! and the tests meet (the crate is separate from isomount's, whose `src/platform/` holds the
//! program's). No other file of the harness or of `tests/` names an operating system or reads
//! /proc or /sys.
//!
//! A child is asked to die with its parent: Linux's prctl(PR_SET_PDEATHSIG) and FreeBSD's
//! procctl(PROC_PDEATHSIG_CTL) deliver SIGKILL when the parent goes, even by SIGKILL. macOS and
//! NetBSD have no such request; there a child outlives a test process that is killed outright
//! (one that ends normally still kills its children in `Drop`).

use std::io;
use std::os::fd::BorrowedFd;

/// Run in the forked child before exec (async-signal-safe calls only): SIGKILL this process
/// when its parent thread ends.
pub(crate) fn die_with_parent() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[cfg(target_os = "freebsd")]
    {
        let mut signal: libc::c_int = libc::SIGKILL;
        // SAFETY: procctl on our own pid with a pointer to a live int; async-signal-safe.
        let rc = unsafe {
            libc::procctl(
                libc::P_PID,
                0,
                libc::PROC_PDEATHSIG_CTL,
                (&mut signal as *mut libc::c_int).cast(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// What tests read about processes and mounts. Linux answers from /proc and /sys; elsewhere each
// answer is `None` (or "unknown"), and the tests that need it say so instead of guessing.

/// A memory figure of a process, in KiB.
#[derive(Clone, Copy, Debug)]
pub enum Memory {
    /// Resident now (VmRSS).
    Resident,
    /// The highest resident so far (VmHWM).
    Peak,
}

/// `which` memory of process `pid` in KiB, if this system tells.
pub fn memory_kib(pid: u32, which: Memory) -> Option<u64> {
    let key = match which {
        Memory::Resident => "VmRSS:",
        Memory::Peak => "VmHWM:",
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` exists (a zombie counts), by signal 0.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether something is mounted at `path`: the mount table on Linux, otherwise a device change
/// between `path` and its parent (what `statfs`-less checks can see).
pub fn is_mounted(path: &std::path::Path) -> bool {
    if let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") {
        let want = path.to_str().unwrap_or_default();
        return table
            .lines()
            .any(|line| line.split(' ').nth(4) == Some(want));
    }
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(path);
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        // A FUSE mount whose daemon is gone answers ENOTCONN: still mounted.
        (Err(e), _) => e.raw_os_error() == Some(libc::ENOTCONN),
        _ => false,
    }
}

/// The kernel's read-ahead knob (KiB) for the file system mounted at `path`, where it has one.
#[cfg(target_os = "linux")]
pub fn read_ahead_knob(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let knob = std::path::PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    ));
    knob.exists().then_some(knob)
}

/// The kernel's read-ahead knob: none known off Linux.
#[cfg(not(target_os = "linux"))]
pub fn read_ahead_knob(_path: &std::path::Path) -> Option<std::path::PathBuf> {
    None
}

/// Threads of `pid` whose name starts with `prefix`, where the system lists them.
pub fn threads_named(pid: u32, prefix: &str) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.starts_with(prefix))
            })
            .count(),
    )
}

/// Processes whose program name ends with `program` and which have `arg` among their arguments.
pub fn processes_with(program: &str, arg: &std::ffi::OsStr) -> Vec<u32> {
    let want = arg.as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let ours = args.first()?.ends_with(program.as_bytes());
            (ours && args.contains(&want)).then_some(pid)
        })
        .collect()
}

/// Take up to `len` received bytes off the stream socket `socket` without copying them anywhere:
/// Linux's recv(MSG_TRUNC), which on TCP discards (what a load client that does not look at the
/// data needs, so its CPU goes to the protocol and not to a copy). How many went (0: the peer
/// closed); `WouldBlock` when none are there; `Unsupported` elsewhere: read them instead.
pub fn discard_received(socket: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: with MSG_TRUNC, TCP writes nothing to the (null) buffer.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(got).map_err(|_| io::Error::last_os_error())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, len);
        Err(io::ErrorKind::Unsupported.into())
    }
}
