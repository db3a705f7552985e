//! A TCP proxy on 127.0.0.1 that injects the faults a real network has: connection resets, a
//! link that stalls, and latency.
//!
//! Latency delays without serialising: each direction is a delay line (a reader thread stamps
//! every chunk with its arrival time, a writer thread sends it `latency` later), so a pipelined
//! stream keeps its throughput however long the added delay. Each delay line holds at most
//! `DELAY_LINE_BYTES`; a full line pushes back on the sender through TCP as a real link would.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CHUNK: usize = 256 * 1024;
const DELAY_LINE_BYTES: usize = 32 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often blocked waits look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// What goes wrong on the link. The default is a perfect link.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Reset (TCP RST both ways) each connection once it has carried this many bytes to the
    /// client. Every new connection gets the same budget.
    pub reset_every: Option<u64>,
    /// Once this many bytes in total have reached clients, stop forwarding target→client bytes
    /// for this long (once per proxy), then carry on if the connection is still there.
    pub stall_after: Option<(u64, Duration)>,
    /// Added one-way delay, applied in each direction (so the round trip grows by twice this).
    pub latency: Option<Duration>,
}

impl Faults {
    /// A link that only delays: `one_way` added in each direction (the round trip grows by
    /// twice this).
    pub fn delayed(one_way: Duration) -> Faults {
        Faults {
            latency: Some(one_way),
            ..Faults::default()
        }
    }
}

/// A running proxy. Dropping it closes its listener and every connection through it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    faults: Faults,
    stop: AtomicBool,
    to_client: AtomicU64,
    to_server: AtomicU64,
    client_turns: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    stalled: AtomicBool,
    /// Open connections (client side, upstream side), so `drop` can close them.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Listens on an ephemeral 127.0.0.1 port and forwards each connection to `upstream`
    /// ("host:port"). Panics if it cannot listen or `upstream` does not resolve.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let upstream = upstream
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("fault proxy: upstream {upstream}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("fault proxy: upstream {upstream} has no address"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("fault proxy: listen on loopback");
        let addr = listener.local_addr().expect("fault proxy: local address");
        let shared = Arc::new(Shared {
            upstream,
            faults,
            stop: AtomicBool::new(false),
            to_client: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            client_turns: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("faultproxy-accept".into())
            .spawn(move || accept_loop(listener, accepting))
            .expect("fault proxy: spawn the accept thread");
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`, to use in place of the upstream portal.
    pub fn portal(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Bytes delivered to clients so far, over all connections.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }

    /// Bytes delivered to upstream so far, over all connections.
    pub fn bytes_to_server(&self) -> u64 {
        self.shared.to_server.load(Ordering::SeqCst)
    }

    /// Times a client spoke first on a connection or again after the server had answered, over
    /// all connections: the round trips a request/response protocol such as HTTP/1.1 made (one
    /// per request), not counting each connection's TCP handshake (see `connections`).
    pub fn client_turns(&self) -> u64 {
        self.shared.client_turns.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections reset by `reset_every` so far.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Whether the one stall of `stall_after` has begun.
    pub fn stalled(&self) -> bool {
        self.shared.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, (client, server)) in lock(&self.shared.open).drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for (id, client) in (0u64..).zip(listener.incoming()) {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else {
            continue;
        };
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        if let Err(e) = start_connection(id, client, server, &shared) {
            eprintln!("fault proxy: connection {id}: {e}");
        }
    }
}

fn start_connection(
    id: u64,
    client: TcpStream,
    server: TcpStream,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    lock(&shared.open).insert(id, (client.try_clone()?, server.try_clone()?));
    let conn = Arc::new(Connection {
        id,
        client: client.try_clone()?,
        server: server.try_clone()?,
        sent_to_client: AtomicU64::new(0),
        server_spoke: AtomicBool::new(true),
        directions_left: AtomicU64::new(2),
    });
    let mut handles = Vec::new();
    for to_client in [false, true] {
        let (from, to) = if to_client {
            (server.try_clone()?, client.try_clone()?)
        } else {
            (client.try_clone()?, server.try_clone()?)
        };
        handles.extend(pump(from, to, to_client, conn.clone(), shared.clone())?);
    }
    lock(&shared.workers).extend(handles);
    Ok(())
}

struct Connection {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    sent_to_client: AtomicU64,
    /// The server has sent bytes since the client last did (true before the client's first).
    server_spoke: AtomicBool,
    directions_left: AtomicU64,
}

impl Connection {
    /// Aborts both sides with a TCP RST and wakes every thread blocked on them.
    fn reset(&self) {
        for s in [&self.client, &self.server] {
            abort(s);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Closes both sides (FIN), after an error on one of them.
    fn close(&self) {
        for s in [&self.client, &self.server] {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn direction_done(&self, shared: &Shared) {
        if self.directions_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            lock(&shared.open).remove(&self.id);
        }
    }
}

/// SO_LINGER 0 plus a disconnect (connect to AF_UNSPEC): the kernel sends RST now, even while
/// other threads still hold the descriptor.
fn abort(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC is the documented way to dissolve a TCP
    // association; the descriptor is valid for the lifetime of `stream`.
    unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            stream.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

/// One direction of one connection: a reader and, with latency, a writer behind a delay line.
fn pump(
    mut from: TcpStream,
    to: TcpStream,
    to_client: bool,
    conn: Arc<Connection>,
    shared: Arc<Shared>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let name = format!(
        "faultproxy-{}-{}",
        conn.id,
        if to_client { "down" } else { "up" }
    );
    let mut out = Sender {
        to,
        to_client,
        conn: conn.clone(),
        shared: shared.clone(),
    };
    let Some(latency) = shared.faults.latency else {
        let reader = std::thread::Builder::new().name(name).spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if out.send(&buf[..n]).is_err() {
                    out.conn.close();
                    break;
                }
            }
            out.finish();
        })?;
        return Ok(vec![reader]);
    };
    let line = Arc::new(DelayLine::default());
    let feeding = line.clone();
    let stop_shared = shared.clone();
    let reader = std::thread::Builder::new()
        .name(format!("{name}-read"))
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if !feeding.push(
                    Instant::now() + latency,
                    buf[..n].to_vec(),
                    &stop_shared.stop,
                ) {
                    break;
                }
            }
            feeding.close();
        })?;
    let writer = std::thread::Builder::new()
        .name(format!("{name}-write"))
        .spawn(move || {
            while let Some((due, data)) = line.pop(&shared.stop) {
                if !sleep_until(due, &shared.stop) || out.send(&data).is_err() {
                    out.conn.close();
                    break;
                }
            }
            line.close();
            out.finish();
        })?;
    Ok(vec![reader, writer])
}

/// The sending end of one direction, where resets, stalls and the byte counter apply.
struct Sender {
    to: TcpStream,
    to_client: bool,
    conn: Arc<Connection>,
    shared: Arc<Shared>,
}

impl Sender {
    fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.to_client {
            if !data.is_empty() && self.conn.server_spoke.swap(false, Ordering::SeqCst) {
                self.shared.client_turns.fetch_add(1, Ordering::SeqCst);
            }
            self.to.write_all(data)?;
            self.shared
                .to_server
                .fetch_add(data.len() as u64, Ordering::SeqCst);
            return Ok(());
        }
        if !data.is_empty() {
            self.conn.server_spoke.store(true, Ordering::SeqCst);
        }
        while !data.is_empty() {
            let mut n = data.len() as u64;
            let sent = self.conn.sent_to_client.load(Ordering::SeqCst);
            let total = self.shared.to_client.load(Ordering::SeqCst);
            let reset_at = self.shared.faults.reset_every.map(|every| every.max(1));
            if let Some(every) = reset_at {
                n = n.min(every.saturating_sub(sent));
            }
            let stall = self
                .shared
                .faults
                .stall_after
                .filter(|_| !self.shared.stalled.load(Ordering::SeqCst));
            if let Some((after, _)) = stall {
                n = n.min(after.saturating_sub(total));
            }
            let (now, rest) = data.split_at(n as usize);
            self.to.write_all(now)?;
            self.conn.sent_to_client.fetch_add(n, Ordering::SeqCst);
            self.shared.to_client.fetch_add(n, Ordering::SeqCst);
            data = rest;
            if reset_at.is_some_and(|every| sent + n >= every) {
                self.shared.resets.fetch_add(1, Ordering::SeqCst);
                self.conn.reset();
                return Err(io::Error::from(io::ErrorKind::ConnectionReset));
            }
            if let Some((after, pause)) = stall {
                if total + n >= after && !self.shared.stalled.swap(true, Ordering::SeqCst) {
                    sleep_until(Instant::now() + pause, &self.shared.stop);
                }
            }
        }
        Ok(())
    }

    /// The source closed: pass the half-close on.
    fn finish(&mut self) {
        let _ = self.to.shutdown(Shutdown::Write);
        self.conn.direction_done(&self.shared);
    }
}

/// Sleeps until `due` unless the proxy stops first; returns false if it stopped.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(POLL));
    }
}

/// A byte-bounded FIFO of (due time, chunk) between a reader and a writer thread.
#[derive(Default)]
struct DelayLine {
    state: Mutex<LineState>,
    changed: Condvar,
}

#[derive(Default)]
struct LineState {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    closed: bool,
}

impl DelayLine {
    /// Queues a chunk, waiting while the line is full; false once the line is closed or stopped.
    fn push(&self, due: Instant, data: Vec<u8>, stop: &AtomicBool) -> bool {
        let mut state = lock(&self.state);
        while state.bytes >= DELAY_LINE_BYTES && !state.closed {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if state.closed {
            return false;
        }
        state.bytes += data.len();
        state.chunks.push_back((due, data));
        self.changed.notify_all();
        true
    }

    /// The next chunk; None once the line is closed and drained, or the proxy stops.
    fn pop(&self, stop: &AtomicBool) -> Option<(Instant, Vec<u8>)> {
        let mut state = lock(&self.state);
        loop {
            if let Some(chunk) = state.chunks.pop_front() {
                state.bytes -= chunk.1.len();
                self.changed.notify_all();
                return Some(chunk);
            }
            if state.closed || stop.load(Ordering::SeqCst) {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }
}
