//! Loopback ports that no other test, in this process or another, is using.
//!
//! Ports are drawn at random below the kernel's ephemeral range (32768 and up on Linux), so they
//! never collide with the source ports of outgoing connections, and are handed out at most once
//! per process. A port another process grabs between our check and the daemon's bind makes the
//! daemon fail to start; callers retry with a fresh port.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const TCP_PORTS: std::ops::Range<u16> = 20000..32000;
/// tgtd's control "port" only names its Unix socket, `/var/run/tgtd/socket.N`.
const CONTROL_PORTS: std::ops::Range<u16> = 1000..20000;
const ATTEMPTS: usize = 1000;

static HANDED_OUT: Mutex<Option<HashSet<(bool, u16)>>> = Mutex::new(None);

/// A pseudo-random u64, different on every call and in every process (no cryptographic claim).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    crate::fixtures::splitmix64(&mut x)
}

fn pick(control: bool, range: std::ops::Range<u16>, usable: impl Fn(u16) -> bool) -> u16 {
    let span = u64::from(range.end - range.start);
    for _ in 0..ATTEMPTS {
        let port = range.start + (random_u64() % span) as u16;
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        let handed = guard.get_or_insert_with(HashSet::new);
        if handed.contains(&(control, port)) || !usable(port) {
            continue;
        }
        handed.insert((control, port));
        return port;
    }
    panic!("no free port in {range:?} after {ATTEMPTS} attempts");
}

/// A TCP port on which 127.0.0.1 can listen right now.
pub fn free_tcp_port() -> u16 {
    pick(false, TCP_PORTS, |p| {
        TcpListener::bind(("127.0.0.1", p)).is_ok()
    })
}

/// A tgtd control port whose lock file no running tgtd holds (tgtd itself refuses a held one).
pub(crate) fn free_control_port() -> u16 {
    pick(true, CONTROL_PORTS, |p| {
        !std::path::Path::new(&format!("/var/run/tgtd/socket.{p}")).exists()
            || !control_lock_held(p)
    })
}

fn control_lock_held(port: u16) -> bool {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/tgtd/socket.{port}.lock");
    let Ok(file) = std::fs::File::open(&path) else {
        return false;
    };
    // tgtd holds a POSIX record lock (lockf) on this file; F_GETLK asks without taking it.
    // SAFETY: a zeroed `flock` is a valid value; fcntl only reads and writes that struct.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as libc::c_short;
    probe.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: valid descriptor owned by `file`, valid pointer to `probe`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) };
    rc == 0 && probe.l_type != libc::F_UNLCK as libc::c_short
}
