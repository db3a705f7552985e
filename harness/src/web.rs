//! Web servers for the HTTP(S) block source's tests and benchmark, each on a loopback port of its
//! own and stopped when dropped, with its logs kept under `test-logs/` when the test fails:
//!
//! - [`Nginx`] over http (HTTP/1.1) or https (HTTP/1.1 and HTTP/2 by ALPN) with a [`TestCa`]
//!   made by the `openssl` tool at test time;
//! - [`PythonHttp`], Python's `http.server`, which answers every GET with 200 and the whole file
//!   (it ignores Range) and closes each connection (HTTP/1.0);
//! - [`ForwardProxy`], a forward proxy for `https_proxy` (CONNECT tunnels) and `http_proxy`
//!   (absolute-form requests) that records what it was asked for;
//! - [`OddServer`], a small HTTP/1.1 server with the quirks of real mirrors that nginx cannot be
//!   made to show: no Content-Length, a chunked body, a Content-Range other than the one asked.
//!
//! Every forwarded or served connection goes to 127.0.0.1 only.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ports::free_tcp_port;
use crate::process::{kill_and_reap, run_bounded, spawn_tied, WorkDir};

const START_ATTEMPTS: usize = 10;
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest request head the proxy and the odd server read.
const MAX_HEAD: usize = 64 << 10;
/// How long a connection of the proxy or the odd server may sit idle before it is closed.
const IDLE: Duration = Duration::from_secs(120);

/// A certificate authority made for one test, and a server certificate it signed for
/// `127.0.0.1` and `localhost`. Clients trust it through its PEM file ([`TestCa::ca_pem`]).
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Generates the CA and the server certificate (P-256 keys, valid for two days) with the
    /// `openssl` command-line tool. Panics with openssl's output if it fails.
    pub fn generate() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("isomount-test-ca-")
            .tempdir()
            .expect("create a directory for the test CA");
        let p = |name: &str| dir.path().join(name);
        fs::write(
            p("server.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write the server certificate's extensions");
        let args = |list: &[&str]| -> Vec<std::ffi::OsString> {
            list.iter()
                .map(|a| match a.strip_prefix('@') {
                    Some(file) => p(file).into_os_string(),
                    None => a.into(),
                })
                .collect()
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let mut ca = vec!["req", "-x509", "-new"];
        ca.extend(key.split(' '));
        ca.extend(["-days", "2", "-subj", "/CN=isomount test CA"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        ca.extend(["-keyout", "@ca.key", "-out", "@ca.pem"]);
        openssl(args(&ca));
        let mut csr = vec!["req", "-new"];
        csr.extend(key.split(' '));
        csr.extend([
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "@server.key",
            "-out",
            "@server.csr",
        ]);
        openssl(args(&csr));
        let serial = (crate::ports::random_u64() >> 2).to_string();
        openssl(args(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-set_serial",
            &serial,
            "-in",
            "@server.csr",
            "-CA",
            "@ca.pem",
            "-CAkey",
            "@ca.key",
            "-extfile",
            "@server.ext",
            "-out",
            "@server.pem",
        ]));
        TestCa { dir }
    }

    /// The CA certificate (PEM) a client must trust: isomount reads it from `ISOMOUNT_CA_FILE`.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

fn openssl(args: Vec<std::ffi::OsString>) {
    let mut cmd = Command::new("openssl");
    cmd.args(&args);
    let (ok, out) = run_bounded(cmd, OPENSSL_TIMEOUT);
    assert!(ok, "openssl {args:?} failed: {out}");
}

/// One line of nginx's access log, as the harness formats it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// `GET /image.iso HTTP/1.1`
    pub request: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// The request's Range header, empty when there was none.
    pub range: String,
    /// nginx's connection serial number (requests on one connection share it).
    pub connection: u64,
}

/// A running nginx on 127.0.0.1 serving `root`. Dropping it kills it; if the test is panicking
/// its logs (`error.log`, `access.log`) and `nginx.conf` are kept under `test-logs/<test>/`.
pub struct Nginx {
    child: Option<Child>,
    port: u16,
    tls: bool,
    work: WorkDir,
}

impl Nginx {
    /// nginx over plain http (HTTP/1.1) serving the files under `root`.
    pub fn start(test: &str, root: &Path) -> Nginx {
        Nginx::start_with(test, root, None, "")
    }

    /// nginx over https with `ca`'s server certificate, HTTP/2 offered by ALPN.
    pub fn start_tls(test: &str, root: &Path, ca: &TestCa) -> Nginx {
        Nginx::start_with(test, root, Some(ca), "")
    }

    /// nginx with `server_conf` added inside its `server { }` block (locations that redirect,
    /// for example; `$harness_port` in it stands for nginx's own port).
    pub fn start_with(test: &str, root: &Path, tls: Option<&TestCa>, server_conf: &str) -> Nginx {
        let work = WorkDir::new(test, "nginx");
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("nginx root {}: {e}", root.display()));
        let mut last_failure = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_tcp_port();
            let conf = nginx_conf(&work, port, &root, tls, server_conf);
            fs::write(work.path().join("nginx.conf"), conf).expect("write nginx.conf");
            match launch_nginx(&work, port) {
                Ok(child) => {
                    return Nginx {
                        child: Some(child),
                        port,
                        tls: tls.is_some(),
                        work,
                    }
                }
                Err(why) => {
                    work.note(
                        "error.log",
                        &format!("harness: attempt {attempt} failed: {why}"),
                    );
                    last_failure = why;
                }
            }
        }
        panic!(
            "nginx did not start after {START_ATTEMPTS} attempts: {last_failure}\n{}",
            work.read("error.log")
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The URL of `path` (relative to the served root, with or without a leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// Every request served so far, in order.
    pub fn served(&self) -> Vec<Served> {
        self.work
            .read("access.log")
            .lines()
            .filter_map(parse_served)
            .collect()
    }

    /// The error log so far.
    pub fn log(&self) -> String {
        self.work.read("error.log")
    }

    /// Starts nginx again after [`Nginx::kill`], on the same port with the same configuration
    /// (a mirror coming back). Panics if it cannot (the port taken meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        match launch_nginx(&self.work, self.port) {
            Ok(child) => self.child = Some(child),
            Err(why) => panic!(
                "nginx did not restart: {why}\n{}",
                self.work.read("error.log")
            ),
        }
    }

    /// Kills nginx: the port refuses connections from now on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
            self.work.note("error.log", "harness: killed");
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fields are separated by tabs: request, status, bytes, range, connection.
const ACCESS_FORMAT: &str = "$request\\t$status\\t$body_bytes_sent\\t$http_range\\t$connection";

fn parse_served(line: &str) -> Option<Served> {
    let mut f = line.split('\t');
    let request = f.next()?.to_string();
    let status = f.next()?.parse().ok()?;
    let bytes = f.next()?.parse().ok()?;
    let range = f.next()?;
    let connection = f.next()?.parse().ok()?;
    Some(Served {
        request,
        status,
        bytes,
        range: if range == "-" {
            String::new()
        } else {
            range.into()
        },
        connection,
    })
}

fn nginx_conf(
    work: &WorkDir,
    port: u16,
    root: &Path,
    tls: Option<&TestCa>,
    server_conf: &str,
) -> String {
    let w = work.path().display();
    let mut conf = String::new();
    let _ = write!(
        conf,
        "daemon off;\n\
         master_process off;\n\
         pid {w}/nginx.pid;\n\
         error_log {w}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   default_type application/octet-stream;\n\
         \x20   log_format harness \"{ACCESS_FORMAT}\";\n\
         \x20   access_log {w}/access.log harness;\n\
         \x20   client_body_temp_path {w}/tmp/body;\n\
         \x20   proxy_temp_path {w}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {w}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {w}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {w}/tmp/scgi;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   keepalive_requests 100000;\n\
         \x20   keepalive_timeout 120s;\n"
    );
    let listen = match tls {
        Some(ca) => {
            let _ = write!(
                conf,
                "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n",
                ca.server_cert().display(),
                ca.server_key().display()
            );
            format!("127.0.0.1:{port} ssl http2")
        }
        None => format!("127.0.0.1:{port}"),
    };
    let extra = server_conf.replace("$harness_port", &port.to_string());
    let _ = write!(
        conf,
        "    server {{\n        listen {listen};\n        root {};\n{extra}\n    }}\n}}\n",
        root.display()
    );
    conf
}

fn launch_nginx(work: &WorkDir, port: u16) -> Result<Child, String> {
    let _ = fs::create_dir_all(work.path().join("tmp"));
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(work.path())
        .arg("-c")
        .arg(work.path().join("nginx.conf"))
        .arg("-e")
        .arg(work.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(work.log("error.log"))
        .stderr(work.log("error.log"));
    let child = spawn_tied(cmd).map_err(|e| format!("cannot run nginx: {e}"))?;
    wait_listening(child, port, "nginx")
}

/// Waits until something accepts on `127.0.0.1:port` while `child` still runs.
fn wait_listening(mut child: Child, port: u16, what: &str) -> Result<Child, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited early ({status})"));
        }
        if TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), POLL).is_ok() {
            // The port answers; make sure it is ours and not a process that took it meanwhile.
            std::thread::sleep(Duration::from_millis(20));
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child);
            return Err(format!("{what} not listening after {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const POLL: Duration = Duration::from_millis(200);

/// Python's `http.server` on 127.0.0.1 serving `root`: every GET gets 200 and the whole file,
/// whatever its Range header says. Dropping it kills it; its log (one line per request) is kept
/// when the test fails.
pub struct PythonHttp {
    child: Option<Child>,
    port: u16,
    work: WorkDir,
}

impl PythonHttp {
    pub fn start(test: &str, root: &Path) -> PythonHttp {
        let work = WorkDir::new(test, "python-http");
        let mut last_failure = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_tcp_port();
            let mut cmd = Command::new("python3");
            cmd.args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(work.log("http.log"))
            .stderr(work.log("http.log"));
            let started = spawn_tied(cmd)
                .map_err(|e| format!("cannot run python3: {e}"))
                .and_then(|child| wait_listening(child, port, "python3 -m http.server"));
            match started {
                Ok(child) => {
                    return PythonHttp {
                        child: Some(child),
                        port,
                        work,
                    }
                }
                Err(why) => {
                    work.note(
                        "http.log",
                        &format!("harness: attempt {attempt} failed: {why}"),
                    );
                    last_failure = why;
                }
            }
        }
        panic!(
            "python3 -m http.server did not start: {last_failure}\n{}",
            work.read("http.log")
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `path` under the served root.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Request lines served so far (`GET /image.iso HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.work
            .read("http.log")
            .lines()
            .filter_map(|l| Some(l.split_once("] \"")?.1.split_once('"')?.0.to_string()))
            .collect()
    }
}

impl Drop for PythonHttp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

/// Threads and open sockets of a small server, closed and joined on drop.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Server {
    /// Listens on an ephemeral 127.0.0.1 port; `serve` runs on its own thread for each client.
    fn start<F>(name: &str, serve: F) -> Server
    where
        F: Fn(TcpStream, &Arc<Mutex<Vec<TcpStream>>>) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let serve = Arc::new(serve);
        let (stop2, open2, workers2) = (stop.clone(), open.clone(), workers.clone());
        let thread_name = name.to_string();
        let acceptor = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || {
                for client in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let _ = client.set_nodelay(true);
                    let _ = client.set_read_timeout(Some(IDLE));
                    if let Ok(c) = client.try_clone() {
                        lock(&open2).push(c);
                    }
                    let (serve, open) = (serve.clone(), open2.clone());
                    if let Ok(h) = std::thread::Builder::new()
                        .name(thread_name.clone())
                        .spawn(move || serve(client, &open))
                    {
                        lock(&workers2).push(h);
                    }
                }
            })
            .expect("spawn an accept thread");
        Server {
            addr,
            stop,
            open,
            acceptor: Some(acceptor),
            workers,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, POLL);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in lock(&self.open).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request head: the request line and the headers (names lower-cased).
struct Head {
    line: String,
    headers: Vec<(String, String)>,
    raw: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head; None at end of stream, on a timeout or on a head that is too long.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut raw = Vec::new();
    let mut headers = Vec::new();
    let mut request_line = None;
    loop {
        let mut l = String::new();
        let n = reader.read_line(&mut l).ok()?;
        if n == 0 || raw.len() + n > MAX_HEAD {
            return None;
        }
        raw.extend_from_slice(l.as_bytes());
        let trimmed = l.trim_end_matches(['\r', '\n']);
        if request_line.is_none() {
            if trimmed.is_empty() {
                continue;
            }
            request_line = Some(trimmed.to_string());
            continue;
        }
        if trimmed.is_empty() {
            break;
        }
        if let Some((n, v)) = trimmed.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Some(Head {
        line: request_line?,
        headers,
        raw,
    })
}

/// A forward proxy on 127.0.0.1, for `https_proxy=http://127.0.0.1:PORT` (CONNECT tunnels) and
/// `http_proxy` (absolute-form requests, forwarded as they are to the named host; one upstream
/// per client connection). It refuses to reach anything but 127.0.0.1.
pub struct ForwardProxy {
    asked: Arc<Mutex<Vec<String>>>,
    server: Server,
}

impl ForwardProxy {
    pub fn start() -> ForwardProxy {
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = asked.clone();
        let server = Server::start("forward-proxy", move |client, open| {
            let _ = proxy_one(client, &log, open);
        });
        ForwardProxy { asked, server }
    }

    /// `http://127.0.0.1:PORT`, the value for `https_proxy` / `http_proxy`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The first request line of every connection so far (`CONNECT 127.0.0.1:443 HTTP/1.1`,
    /// `GET http://127.0.0.1:80/x HTTP/1.1`).
    pub fn asked(&self) -> Vec<String> {
        lock(&self.asked).clone()
    }
}

fn proxy_one(
    client: TcpStream,
    asked: &Mutex<Vec<String>>,
    open: &Mutex<Vec<TcpStream>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(head) = read_head(&mut reader) else {
        return Ok(());
    };
    lock(asked).push(head.line.clone());
    let mut parts = head.line.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let authority = if method == "CONNECT" {
        target.to_string()
    } else {
        let rest = target.strip_prefix("http://").unwrap_or("");
        rest.split('/').next().unwrap_or("").to_string()
    };
    let mut client_w = client.try_clone()?;
    let upstream = match authority
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.ip().is_loopback())
    {
        Some(addr) => TcpStream::connect_timeout(&addr, READY_TIMEOUT)?,
        None => {
            client_w.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
    };
    let _ = upstream.set_nodelay(true);
    lock(open).push(upstream.try_clone()?);
    let mut upstream_w = upstream.try_clone()?;
    if method == "CONNECT" {
        client_w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    } else {
        upstream_w.write_all(&head.raw)?;
    }
    // Bytes the reader already took past the head belong upstream.
    let buffered = reader.buffer().to_vec();
    upstream_w.write_all(&buffered)?;
    let mut up = upstream.try_clone()?;
    let down = std::thread::spawn(move || {
        let _ = io::copy(&mut up, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    let mut client_r = reader.into_inner();
    let _ = io::copy(&mut client_r, &mut upstream_w);
    let _ = upstream_w.shutdown(Shutdown::Write);
    let _ = down.join();
    Ok(())
}

/// How an [`OddServer`] departs from a well-behaved server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quirk {
    /// 206 with Content-Range but no Content-Length: the body ends when the server closes the
    /// connection.
    NoContentLength,
    /// 206 with `Transfer-Encoding: chunked` (no Content-Length), the connection kept.
    Chunked,
    /// 206 for bytes 512 further on than asked, with a Content-Range that says so.
    WrongContentRange,
    /// 206 with the asked Content-Range and Content-Length, but the connection closes halfway
    /// through the body.
    ShortBody,
}

/// A small HTTP/1.1 server for one file (at every path), honest about everything but its quirk:
/// it answers HEAD and GET, Range `bytes=A-B` with 206, no Range with 200, and gives every
/// response the same ETag and Last-Modified.
pub struct OddServer {
    requests: Arc<AtomicU64>,
    server: Server,
}

impl OddServer {
    pub fn start(file: &Path, quirk: Quirk) -> OddServer {
        let data: Arc<[u8]> = fs::read(file)
            .unwrap_or_else(|e| panic!("odd server: {}: {e}", file.display()))
            .into();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let server = Server::start("odd-server", move |client, _| {
            let _ = serve_odd(client, &data, quirk, &counter);
        });
        OddServer { requests, server }
    }

    /// The URL of the file (any path serves it).
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}/{}",
            self.server.addr,
            path.trim_start_matches('/')
        )
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve_odd(client: TcpStream, data: &[u8], quirk: Quirk, count: &AtomicU64) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut out = client;
    let size = data.len() as u64;
    while let Some(head) = read_head(&mut reader) {
        count.fetch_add(1, Ordering::SeqCst);
        let head_only = head.line.starts_with("HEAD ");
        let common = format!(
            "ETag: \"odd-{size}\"\r\nLast-Modified: Sat, 01 Jan 2000 00:00:00 GMT\r\n\
             Accept-Ranges: bytes\r\n"
        );
        let range = head.header("range").and_then(|r| parse_range(r, size));
        let Some((first, last)) = range else {
            let h = format!("HTTP/1.1 200 OK\r\n{common}Content-Length: {size}\r\n\r\n");
            out.write_all(h.as_bytes())?;
            if !head_only {
                out.write_all(data)?;
            }
            continue;
        };
        let (first, last) = match quirk {
            Quirk::WrongContentRange => {
                let shift = 512.min(size - 1 - last);
                (first + shift, last + shift)
            }
            _ => (first, last),
        };
        let body = &data[first as usize..=last as usize];
        let mut h = format!("HTTP/1.1 206 Partial Content\r\n{common}Content-Range: bytes {first}-{last}/{size}\r\n");
        match quirk {
            Quirk::NoContentLength => h.push_str("Connection: close\r\n"),
            Quirk::Chunked => h.push_str("Transfer-Encoding: chunked\r\n"),
            _ => {
                let _ = write!(h, "Content-Length: {}\r\n", body.len());
            }
        }
        h.push_str("\r\n");
        out.write_all(h.as_bytes())?;
        if head_only {
            continue;
        }
        match quirk {
            Quirk::NoContentLength => {
                out.write_all(body)?;
                return out.shutdown(Shutdown::Both);
            }
            Quirk::Chunked => {
                for piece in body.chunks(10_000) {
                    write!(out, "{:x}\r\n", piece.len())?;
                    out.write_all(piece)?;
                    out.write_all(b"\r\n")?;
                }
                out.write_all(b"0\r\n\r\n")?;
            }
            Quirk::ShortBody => {
                out.write_all(&body[..body.len() / 2])?;
                return out.shutdown(Shutdown::Both);
            }
            Quirk::WrongContentRange => out.write_all(body)?,
        }
    }
    Ok(())
}

/// `bytes=A-B` or `bytes=A-` within a file of `size` bytes, as (first, last) inclusive.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let first: u64 = a.trim().parse().ok()?;
    let last: u64 = match b.trim() {
        "" => size.checked_sub(1)?,
        b => b.parse::<u64>().ok()?.min(size.checked_sub(1)?),
    };
    (first <= last).then_some((first, last))
}

/// A copy of `src` at `dst` with `len` bytes at `offset` inverted: a mirror serving it lies about
/// the chunks those bytes fall in.
pub fn corrupt_copy(src: &Path, dst: &Path, offset: u64, len: usize) -> PathBuf {
    fs::copy(src, dst)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)
        .unwrap_or_else(|e| panic!("open {}: {e}", dst.display()));
    use std::io::Seek;
    let mut bytes = vec![0u8; len];
    f.seek(io::SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut bytes)
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", dst.display()));
    for b in &mut bytes {
        *b = !*b;
    }
    f.seek(io::SeekFrom::Start(offset)).unwrap();
    f.write_all(&bytes).unwrap();
    dst.to_path_buf()
}

/// `127.0.0.1:PORT` where nothing listens: connections are refused (a dead iSCSI portal or web
/// mirror).
pub fn dead_portal() -> String {
    format!("127.0.0.1:{}", free_tcp_port())
}
