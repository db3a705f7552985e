//! The harness's platform module: its differences between operating systems (the crate is
//! separate from isomount's, whose `src/platform/` holds all the others). No other file of the
//! harness names an operating system.
//!
//! A child is asked to die with its parent: Linux's prctl(PR_SET_PDEATHSIG) and FreeBSD's
//! procctl(PROC_PDEATHSIG_CTL) deliver SIGKILL when the parent goes, even by SIGKILL. macOS and
//! NetBSD have no such request; there a child outlives a test process that is killed outright
//! (one that ends normally still kills its children in `Drop`).

use std::io;

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

/// Resident memory of process `pid` in KiB: Linux's `/proc/PID/status` (VmRSS), elsewhere
/// `ps -o rss=`. `None` when the process is gone or the figure cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let out = std::process::Command::new("ps")
            .args(["-o", "rss=", "-p", &pid.to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}
