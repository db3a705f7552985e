//! Mounting as a normal user through the setuid `fusermount3` helper (libfuse's protocol: the
//! helper opens /dev/fuse, mounts, and passes the descriptor back over the socket named by
//! `_FUSE_COMMFD` as SCM_RIGHTS ancillary data, `unix(7)`).
//!
//! fuser falls back to fusermount only when `mount(2)` says EPERM; where /dev/fuse itself is
//! closed to users (mode 0600) it gives up instead, so isomount asks the helper directly.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Busy;

pub const HELPER: &str = "fusermount3";

/// How long the helper may take to hand over the descriptor.
const HELPER_DEADLINE: Duration = Duration::from_secs(30);

/// Mount a FUSE filesystem at `mountpoint` with `options` (fusermount's `-o` syntax) and return
/// the /dev/fuse descriptor to serve it on.
pub fn mount(mountpoint: &Path, options: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_read_timeout(Some(HELPER_DEADLINE))?;
    let inherited = theirs.as_raw_fd();
    let mut command = Command::new(HELPER);
    command
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", inherited.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe, on a descriptor that
    // stays open in the parent until the helper has been spawned.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(inherited, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|err| io::Error::new(err.kind(), format!("cannot run {HELPER}: {err}")))?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let output = child.wait_with_output()?;
    match received {
        Ok(fd) => Ok(fd),
        Err(err) => {
            let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
            let kind = if said.contains("ermission") || said.contains("not allowed") {
                io::ErrorKind::PermissionDenied
            } else {
                err.kind()
            };
            Err(io::Error::new(
                kind,
                if said.is_empty() {
                    err.to_string()
                } else {
                    said
                },
            ))
        }
    }
}

/// Receive one descriptor sent with SCM_RIGHTS.
fn receive_fd(socket: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsghdr carrying one int, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let received = loop {
        // SAFETY: msg points at valid buffers that outlive the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    if received == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{HELPER} sent no descriptor"),
        ));
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/CMSG_DATA stay within msg_controllen.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        if header.is_null()
            || (*header).cmsg_level != libc::SOL_SOCKET
            || (*header).cmsg_type != libc::SCM_RIGHTS
            || ((*header).cmsg_len as usize) < libc::CMSG_LEN(4) as usize
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{HELPER} sent no descriptor"),
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>());
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{HELPER} sent a bad descriptor"),
            ));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unmount through the helper; [`Busy::GoAnyway`] detaches a mount whose files are open.
pub fn unmount(mountpoint: &Path, busy: Busy) -> io::Result<()> {
    let mut command = Command::new(HELPER);
    command.arg("-u");
    if busy == Busy::GoAnyway {
        command.arg("-z");
    }
    let output = command
        .arg("--")
        .arg(OsString::from(mountpoint.as_os_str()))
        .stdin(Stdio::null())
        .output()
        .map_err(|err| io::Error::new(err.kind(), format!("cannot run {HELPER}: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}
