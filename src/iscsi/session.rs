//! The full-feature phase (RFC 7143 §4.2, §11): one connection per session, many SCSI commands
//! outstanding inside the target's CmdSN window (§4.2.2.1, serial arithmetic per RFC 1982),
//! Data-In reassembly (§11.7) with status in the last Data-In or a SCSI Response (§11.4), NOP-In
//! answered and NOP-Out pings on an idle link (§11.18–§11.19), Asynchronous Messages (§11.9),
//! Reject (§11.17), Logout (§11.14) and session recovery at ErrorRecoveryLevel 0 (§7.1.4.1):
//! reconnect with backoff, log in again with the same ISID and TSIH 0, check that the LUN is the
//! same one, and reissue every outstanding command.
//!
//! One driver task owns the connection's state. It reads the socket itself (reads are cancel
//! safe) and hands finished commands their data; a writer task sends the encoded PDUs it queues.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::login::{Login, LoginConfig, LoginError, LoginOutcome, LoginStep};
use super::pdu::{
    self, Bhs, DataIn, Framing, LogoutRequest, NopOut, Pdu, ScsiCommand, RESERVED_TAG,
};
use super::text::Params;
use super::IscsiError;
use crate::scsi::Cdb;

/// `a < b` in 32-bit serial number arithmetic (RFC 1982).
pub fn serial_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// `a <= b` in serial number arithmetic.
pub fn serial_le(a: u32, b: u32) -> bool {
    a == b || serial_lt(a, b)
}

/// Sequence numbers of a session (§4.2.2).
#[derive(Debug, Clone)]
pub struct Seq {
    pub cmd_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_stat_sn: u32,
    next_itt: u32,
}

impl Seq {
    pub fn new(outcome: &LoginOutcome, next_itt: u32) -> Self {
        Self {
            cmd_sn: outcome.cmd_sn,
            exp_cmd_sn: outcome.cmd_sn,
            max_cmd_sn: outcome.max_cmd_sn,
            exp_stat_sn: outcome.exp_stat_sn,
            next_itt,
        }
    }

    pub fn itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG {
                return itt;
            }
        }
    }

    /// The CmdSN window is open: a non-immediate command may be sent.
    pub fn window_open(&self) -> bool {
        serial_le(self.cmd_sn, self.max_cmd_sn)
    }

    /// Take ExpCmdSN/MaxCmdSN from a response (§4.2.2.1: ignored when MaxCmdSN < ExpCmdSN - 1).
    pub fn update_window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) {
        if serial_lt(max_cmd_sn, exp_cmd_sn.wrapping_sub(1)) {
            return;
        }
        if serial_lt(self.exp_cmd_sn, exp_cmd_sn) {
            self.exp_cmd_sn = exp_cmd_sn;
        }
        if serial_lt(self.max_cmd_sn, max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    /// A PDU carrying a StatSN acknowledges it.
    pub fn saw_stat_sn(&mut self, stat_sn: u32) {
        let next = stat_sn.wrapping_add(1);
        if serial_lt(self.exp_stat_sn, next) {
            self.exp_stat_sn = next;
        }
    }
}

/// A finished SCSI command.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    pub status: u8,
    pub data: Bytes,
    pub sense: Bytes,
}

/// Data-In segments of one command, joined in order without copying when there is only one.
#[derive(Debug, Default)]
enum Assembly {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Assembly {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    /// Add a segment at `offset`; segments must arrive in order (DataPDUInOrder=Yes) and stay
    /// within `limit` bytes.
    fn push(&mut self, offset: u32, data: Bytes, limit: u32) -> Result<(), String> {
        let at = self.len();
        if offset as usize != at {
            return Err(format!("Data-In at offset {offset}, expected {at}"));
        }
        let end = at
            .checked_add(data.len())
            .filter(|&e| e <= limit as usize)
            .ok_or_else(|| format!("Data-In past the expected {limit} bytes"))?;
        if data.is_empty() {
            return Ok(());
        }
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(data),
            Self::One(first) => {
                let mut joined = BytesMut::with_capacity(limit as usize);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Self::Many(joined)
            }
            Self::Many(mut joined) => {
                joined.extend_from_slice(&data);
                Self::Many(joined)
            }
        };
        debug_assert_eq!(self.len(), end);
        Ok(())
    }

    fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}

/// A command as the caller asked for it.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub lun: u64,
    pub cdb: Cdb,
    pub read_len: u32,
}

impl CommandSpec {
    fn pdu(&self, itt: u32, seq: &Seq) -> Pdu {
        Pdu::new(Bhs::ScsiCommand(ScsiCommand {
            immediate: false,
            fin: true,
            read: self.read_len > 0,
            write: false,
            attr: 1,
            lun: self.lun,
            itt,
            expected_length: self.read_len,
            cmd_sn: seq.cmd_sn,
            exp_stat_sn: seq.exp_stat_sn,
            cdb: self.cdb,
        }))
    }
}

/// What a received PDU did to a command in progress.
enum Progress {
    More,
    Done(CommandOutcome),
}

/// Apply a Data-In or SCSI Response to a command's assembly.
fn progress(pdu: Pdu, read_len: u32, data: &mut Assembly) -> Result<Progress, String> {
    match pdu.bhs {
        Bhs::DataIn(DataIn {
            buffer_offset,
            status,
            ..
        }) => {
            data.push(buffer_offset, pdu.data, read_len)?;
            Ok(match status {
                Some(status) => Progress::Done(CommandOutcome {
                    status,
                    data: data.take(),
                    sense: Bytes::new(),
                }),
                None => Progress::More,
            })
        }
        Bhs::ScsiResponse(resp) => {
            if resp.response != 0 {
                return Err(format!(
                    "target failure (iSCSI response {:#04x})",
                    resp.response
                ));
            }
            let (sense, _) = pdu::split_sense(&pdu.data).map_err(|e| e.to_string())?;
            Ok(Progress::Done(CommandOutcome {
                status: resp.status,
                data: data.take(),
                sense,
            }))
        }
        other => Err(format!("unexpected {:?} for a command", other.opcode())),
    }
}

/// A TCP connection in the login or setup phase: one request at a time.
pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    pub framing: Framing,
    pub portal: String,
    timeout: Duration,
}

// Socket buffers are left to the kernel's autotuning: setting SO_RCVBUF would cap the window at
// net.core.rmem_max (208 KiB on many systems), far below what a 20 ms link needs.

impl Conn {
    /// Connect to `host:port` (IPv6 in brackets), bounded by `timeout`.
    pub async fn connect(portal: &str, timeout: Duration) -> Result<Self, IscsiError> {
        let fail = |reason: String| IscsiError::Connect {
            portal: portal.to_string(),
            reason,
        };
        let (host, port) = super::url::split_host_port(portal).map_err(fail)?;
        let addrs: Vec<_> = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| fail("name lookup timed out".into()))?
            .map_err(|e| fail(e.to_string()))?
            .collect();
        let mut last = "no address".to_string();
        for addr in addrs {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| fail(e.to_string()))?;
            match tokio::time::timeout(timeout, socket.connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Self {
                        stream,
                        rbuf: BytesMut::with_capacity(64 * 1024),
                        framing: Framing::default(),
                        portal: portal.to_string(),
                        timeout,
                    });
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "connection timed out".into(),
            }
        }
        Err(fail(last))
    }

    fn protocol(&self, reason: impl Into<String>) -> IscsiError {
        IscsiError::Protocol {
            portal: self.portal.clone(),
            reason: reason.into(),
        }
    }

    pub async fn send(&mut self, pdu: &Pdu) -> Result<(), IscsiError> {
        let bytes = pdu.to_bytes(&self.framing);
        tokio::time::timeout(self.timeout, self.stream.write_all(&bytes))
            .await
            .map_err(|_| self.protocol("timed out sending"))?
            .map_err(|e| self.protocol(format!("connection lost: {e}")))
    }

    pub async fn recv(&mut self) -> Result<Pdu, IscsiError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match pdu::decode(&mut self.rbuf, &self.framing) {
                Ok(Some(pdu)) => return Ok(pdu),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            self.rbuf.reserve(64 * 1024);
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf))
                .await
                .map_err(|_| self.protocol("no response from target"))?
                .map_err(|e| self.protocol(format!("connection lost: {e}")))?;
            if n == 0 {
                return Err(self.protocol("connection closed by target"));
            }
        }
    }

    /// Run a login to completion. A redirect comes back as `Ok(Err(address))`.
    pub async fn login(
        &mut self,
        cfg: LoginConfig,
        itt: u32,
    ) -> Result<Result<LoginOutcome, String>, LoginFailure> {
        let (mut login, first) = Login::start(cfg, itt, 1);
        self.send(&first).await.map_err(LoginFailure::Io)?;
        loop {
            let pdu = self.recv().await.map_err(LoginFailure::Io)?;
            match login.receive(pdu).map_err(LoginFailure::Refused)? {
                LoginStep::Send(next) => self.send(&next).await.map_err(LoginFailure::Io)?,
                LoginStep::Redirect(address) => return Ok(Err(address)),
                LoginStep::Done(outcome) => {
                    self.framing = framing_for(&outcome.params);
                    return Ok(Ok(outcome));
                }
            }
        }
    }

    /// Run one SCSI command and wait for its end, answering target NOP-Ins meanwhile.
    pub async fn command(
        &mut self,
        seq: &mut Seq,
        spec: &CommandSpec,
    ) -> Result<CommandOutcome, IscsiError> {
        let itt = seq.itt();
        let pdu = spec.pdu(itt, seq);
        seq.cmd_sn = seq.cmd_sn.wrapping_add(1);
        self.send(&pdu).await?;
        let mut data = Assembly::Empty;
        for _ in 0..100_000 {
            let pdu = self.recv().await?;
            note_sequence(seq, &pdu.bhs);
            match &pdu.bhs {
                Bhs::DataIn(d) if d.itt == itt => {}
                Bhs::ScsiResponse(r) if r.itt == itt => {}
                Bhs::NopIn(nop) if nop.ttt != RESERVED_TAG => {
                    let reply = nop_reply(nop, seq);
                    self.send(&reply).await?;
                    continue;
                }
                Bhs::Reject(r) => {
                    return Err(
                        self.protocol(format!("target rejected a PDU (reason {:#04x})", r.reason))
                    )
                }
                Bhs::AsyncMessage(_) | Bhs::NopIn(_) => continue,
                other => return Err(self.protocol(format!("unexpected {:?}", other.opcode()))),
            }
            match progress(pdu, spec.read_len, &mut data).map_err(|e| self.protocol(e))? {
                Progress::More => {}
                Progress::Done(outcome) => return Ok(outcome),
            }
        }
        Err(self.protocol("command never completed"))
    }

    /// A Text Request exchange (used by SendTargets), following continuations.
    pub async fn text(
        &mut self,
        seq: &mut Seq,
        keys: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, IscsiError> {
        let itt = seq.itt();
        let mut buffer = super::text::TextBuffer::default();
        let mut request = Pdu::with_data(
            Bhs::TextRequest(pdu::TextRequest {
                immediate: false,
                fin: true,
                cont: false,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn: seq.cmd_sn,
                exp_stat_sn: seq.exp_stat_sn,
            }),
            super::text::encode(keys),
        );
        for _ in 0..1024 {
            self.send(&request).await?;
            let pdu = loop {
                let pdu = self.recv().await?;
                note_sequence(seq, &pdu.bhs);
                match &pdu.bhs {
                    Bhs::TextResponse(r) if r.itt == itt => break pdu,
                    Bhs::NopIn(nop) if nop.ttt != RESERVED_TAG => {
                        let reply = nop_reply(nop, seq);
                        self.send(&reply).await?;
                    }
                    Bhs::Reject(r) => {
                        return Err(self.protocol(format!(
                            "target rejected the text request (reason {:#04x})",
                            r.reason
                        )))
                    }
                    Bhs::AsyncMessage(_) | Bhs::NopIn(_) => {}
                    other => return Err(self.protocol(format!("unexpected {:?}", other.opcode()))),
                }
            };
            let Bhs::TextResponse(resp) = &pdu.bhs else {
                unreachable!("matched above")
            };
            buffer
                .push(&pdu.data)
                .map_err(|e| self.protocol(e.to_string()))?;
            if resp.fin && !resp.cont {
                seq.cmd_sn = seq.cmd_sn.wrapping_add(1);
                return buffer.take().map_err(|e| self.protocol(e.to_string()));
            }
            seq.cmd_sn = seq.cmd_sn.wrapping_add(1);
            request = Pdu::new(Bhs::TextRequest(pdu::TextRequest {
                immediate: false,
                fin: true,
                cont: false,
                lun: 0,
                itt,
                ttt: resp.ttt,
                cmd_sn: seq.cmd_sn,
                exp_stat_sn: seq.exp_stat_sn,
            }));
        }
        Err(self.protocol("text response never ended"))
    }

    /// Close the session politely; errors are of no interest at this point.
    pub async fn logout(&mut self, seq: &mut Seq) {
        let itt = seq.itt();
        let request = logout_request(itt, seq);
        if self.send(&request).await.is_ok() {
            for _ in 0..64 {
                match self.recv().await {
                    Ok(Pdu {
                        bhs: Bhs::LogoutResponse(_),
                        ..
                    })
                    | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let _ = self.stream.shutdown().await;
    }

    fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf, BytesMut, Framing) {
        let (r, w) = self.stream.into_split();
        (r, w, self.rbuf, self.framing)
    }
}

/// Why a login did not happen.
#[derive(Debug)]
pub enum LoginFailure {
    Io(IscsiError),
    Refused(LoginError),
}

pub fn framing_for(params: &Params) -> Framing {
    Framing {
        header_digest: params.header_digest == super::text::Digest::Crc32c,
        data_digest: params.data_digest == super::text::Digest::Crc32c,
        max_recv_data: params.max_recv_data_segment_length,
    }
}

fn logout_request(itt: u32, seq: &Seq) -> Pdu {
    Pdu::new(Bhs::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt,
        cid: 0,
        cmd_sn: seq.cmd_sn,
        exp_stat_sn: seq.exp_stat_sn,
    }))
}

fn nop_reply(nop: &pdu::NopIn, seq: &Seq) -> Pdu {
    Pdu::new(Bhs::NopOut(NopOut {
        immediate: true,
        lun: nop.lun,
        itt: RESERVED_TAG,
        ttt: nop.ttt,
        cmd_sn: seq.cmd_sn,
        exp_stat_sn: seq.exp_stat_sn,
    }))
}

/// Track StatSN and the CmdSN window from any target PDU.
fn note_sequence(seq: &mut Seq, bhs: &Bhs) {
    let (stat_sn, exp, max) = match bhs {
        Bhs::ScsiResponse(p) => (Some(p.stat_sn), p.exp_cmd_sn, p.max_cmd_sn),
        Bhs::DataIn(p) => (p.status.map(|_| p.stat_sn), p.exp_cmd_sn, p.max_cmd_sn),
        Bhs::NopIn(p) => (
            (p.itt != RESERVED_TAG).then_some(p.stat_sn),
            p.exp_cmd_sn,
            p.max_cmd_sn,
        ),
        Bhs::TextResponse(p) => (Some(p.stat_sn), p.exp_cmd_sn, p.max_cmd_sn),
        Bhs::LogoutResponse(p) => (Some(p.stat_sn), p.exp_cmd_sn, p.max_cmd_sn),
        Bhs::TaskMgmtResponse(p) => (Some(p.stat_sn), p.exp_cmd_sn, p.max_cmd_sn),
        Bhs::R2t(p) => (None, p.exp_cmd_sn, p.max_cmd_sn),
        Bhs::AsyncMessage(p) => (Some(p.stat_sn), p.exp_cmd_sn, p.max_cmd_sn),
        Bhs::Reject(p) => (Some(p.stat_sn), p.exp_cmd_sn, p.max_cmd_sn),
        _ => return,
    };
    if let Some(s) = stat_sn {
        seq.saw_stat_sn(s);
    }
    seq.update_window(exp, max);
}

/// How the session reaches its target again after a loss: connect, log in, check identity.
/// Implemented by the LUN layer, which knows what "the same LUN" means.
#[async_trait::async_trait]
pub trait Reconnect: Send + Sync + 'static {
    /// A fresh logged-in, verified connection, or an error. `Err(fatal=true)` stops retrying.
    async fn reconnect(&self, attempt: u32) -> Result<(Conn, Seq, Params), (IscsiError, bool)>;
}

/// Timing of the session driver.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Send a NOP-Out ping when nothing has arrived for this long.
    pub nop_interval: Duration,
    /// Declare the connection dead when nothing has arrived for this long while we wait.
    pub stall_timeout: Duration,
    /// Stop reconnecting after this long and fail what is outstanding.
    pub give_up_after: Duration,
    /// Most commands in flight at once (also bounded by the CmdSN window).
    pub queue_depth: usize,
}

/// A request to the session driver.
pub enum Request {
    Command(
        CommandSpec,
        oneshot::Sender<Result<CommandOutcome, IscsiError>>,
    ),
    Logout(oneshot::Sender<()>),
}

struct Task {
    order: u64,
    spec: CommandSpec,
    reply: oneshot::Sender<Result<CommandOutcome, IscsiError>>,
    data: Assembly,
}

/// Shared, observable facts of the running session.
#[derive(Debug)]
pub struct Shared {
    pub portal: Mutex<String>,
    pub params: Mutex<Params>,
}

/// Why one connection ended.
enum Ended {
    Lost(String),
    /// Reconnect after this delay (logout request, target announced drop).
    Rejoin(Duration),
    Shutdown,
}

/// The driver: owns connections and outstanding tasks.
pub struct Driver {
    rx: mpsc::Receiver<Request>,
    pending: VecDeque<Task>,
    inflight: HashMap<u32, Task>,
    next_order: u64,
    timing: Timing,
    reconnect: Arc<dyn Reconnect>,
    shared: Arc<Shared>,
    logout_waiters: Vec<oneshot::Sender<()>>,
}

impl Driver {
    pub fn spawn(
        conn: Conn,
        seq: Seq,
        timing: Timing,
        reconnect: Arc<dyn Reconnect>,
        shared: Arc<Shared>,
    ) -> mpsc::Sender<Request> {
        let (tx, rx) = mpsc::channel(1024);
        let driver = Driver {
            rx,
            pending: VecDeque::new(),
            inflight: HashMap::new(),
            next_order: 0,
            timing,
            reconnect,
            shared,
            logout_waiters: Vec::new(),
        };
        tokio::spawn(driver.run(conn, seq));
        tx
    }

    async fn run(mut self, conn: Conn, seq: Seq) {
        let mut current = Some((conn, seq));
        loop {
            let (conn, seq) = match current.take() {
                Some(c) => c,
                None => match self.recover(Duration::ZERO).await {
                    Some(c) => c,
                    None => return,
                },
            };
            match self.serve(conn, seq).await {
                Ended::Shutdown => {
                    for waiter in self.logout_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                    return;
                }
                Ended::Lost(reason) => {
                    tracing::warn!("connection lost: {reason}; reconnecting");
                    self.requeue_inflight();
                }
                Ended::Rejoin(delay) => {
                    tracing::info!("target asked us to log out; logging in again");
                    self.requeue_inflight();
                    match self.recover(delay).await {
                        Some(c) => current = Some(c),
                        None => return,
                    }
                }
            }
        }
    }

    fn requeue_inflight(&mut self) {
        let mut tasks: Vec<Task> = self.inflight.drain().map(|(_, t)| t).collect();
        tasks.sort_by_key(|t| t.order);
        for mut task in tasks.into_iter().rev() {
            task.data = Assembly::Empty;
            self.pending.push_front(task);
        }
    }

    fn fail_all(&mut self, err: &IscsiError) {
        for task in self
            .pending
            .drain(..)
            .chain(self.inflight.drain().map(|(_, t)| t))
        {
            let _ = task.reply.send(Err(err.clone()));
        }
    }

    /// Reconnect with backoff until it works or `give_up_after` passes. On giving up, fail what
    /// is outstanding, then wait for the next request before trying again. `None`: shut down.
    async fn recover(&mut self, first_delay: Duration) -> Option<(Conn, Seq)> {
        let mut delay = first_delay;
        loop {
            let started = Instant::now();
            let mut attempt = 0u32;
            let mut backoff = Duration::from_millis(100);
            let err = loop {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                    delay = Duration::ZERO;
                }
                match self.reconnect.reconnect(attempt).await {
                    Ok((conn, seq, params)) => {
                        *lock(&self.shared.portal) = conn.portal.clone();
                        *lock(&self.shared.params) = params;
                        return Some((conn, seq));
                    }
                    Err((err, true)) => break err,
                    Err((err, false)) => {
                        tracing::warn!("reconnect attempt {attempt} failed: {err}");
                        let elapsed = started.elapsed();
                        if elapsed >= self.timing.give_up_after {
                            break IscsiError::GaveUp {
                                secs: self.timing.give_up_after.as_secs(),
                                last: err.to_string(),
                            };
                        }
                        tokio::time::sleep(backoff.min(self.timing.give_up_after - elapsed)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        attempt += 1;
                    }
                }
            };
            self.fail_all(&err);
            // Wait for work (or the end) before trying again.
            match self.rx.recv().await {
                None => return None,
                Some(Request::Logout(done)) => {
                    let _ = done.send(());
                    return None;
                }
                Some(Request::Command(spec, reply)) => self.enqueue(spec, reply),
            }
        }
    }

    fn enqueue(
        &mut self,
        spec: CommandSpec,
        reply: oneshot::Sender<Result<CommandOutcome, IscsiError>>,
    ) {
        self.pending.push_back(Task {
            order: self.next_order,
            spec,
            reply,
            data: Assembly::Empty,
        });
        self.next_order += 1;
    }

    async fn serve(&mut self, conn: Conn, mut seq: Seq) -> Ended {
        let portal = conn.portal.clone();
        let (mut reader, writer, mut rbuf, framing) = conn.into_split();
        // PDUs to send, written straight from this task: no hand-off on the command path.
        let mut wbuf = BytesMut::new();
        let mut last_rx = Instant::now();
        let mut ping: Option<u32> = None;
        // Some(deadline) while draining for a target-requested logout.
        let mut draining: Option<Instant> = None;
        let mut logout_itt: Option<u32> = None;
        let mut shutting_down = false;
        let mut rejoin_delay =
            Duration::from_secs(u64::from(lock(&self.shared.params).default_time2wait));
        let tick = self.timing.nop_interval.min(self.timing.stall_timeout) / 2;
        let mut ticker = tokio::time::interval(tick.max(Duration::from_millis(50)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            // Send what the window allows.
            while draining.is_none()
                && !shutting_down
                && seq.window_open()
                && self.inflight.len() < self.timing.queue_depth
            {
                let Some(task) = self.pending.pop_front() else {
                    break;
                };
                if task.reply.is_closed() {
                    continue;
                }
                let itt = seq.itt();
                task.spec.pdu(itt, &seq).encode(&framing, &mut wbuf);
                seq.cmd_sn = seq.cmd_sn.wrapping_add(1);
                self.inflight.insert(itt, task);
            }
            if let Some(deadline) = draining {
                if logout_itt.is_none() && (self.inflight.is_empty() || Instant::now() >= deadline)
                {
                    let itt = seq.itt();
                    logout_request(itt, &seq).encode(&framing, &mut wbuf);
                    logout_itt = Some(itt);
                }
            }
            let can_take = draining.is_none()
                && !shutting_down
                && self.pending.is_empty()
                && seq.window_open()
                && self.inflight.len() < self.timing.queue_depth;
            let drain_deadline = draining.unwrap_or_else(|| Instant::now() + tick);
            if let Err(e) = flush(&writer, &mut wbuf) {
                break Ended::Lost(format!("connection lost while sending: {e}"));
            }
            // Data segments are split off this buffer without copying. Room for a whole PDU
            // ahead, in big allocations, means a PDU that straddles two reads is rarely moved.
            let room = framing.max_recv_data as usize + 4096;
            if rbuf.capacity() - rbuf.len() < room {
                rbuf.reserve((4 << 20).max(2 * room));
            }
            tokio::select! {
                read = reader.read_buf(&mut rbuf) => {
                    match read {
                        Ok(0) => break Ended::Lost("connection closed by target".into()),
                        Err(e) => break Ended::Lost(format!("connection lost: {e}")),
                        Ok(_) => last_rx = Instant::now(),
                    }
                    let mut result = None;
                    for _ in 0..10_000 {
                        let pdu = match pdu::decode(&mut rbuf, &framing) {
                            Ok(Some(pdu)) => pdu,
                            Ok(None) => break,
                            Err(e) => {
                                result = Some(Ended::Lost(format!("bad PDU from {portal}: {e}")));
                                break;
                            }
                        };
                        note_sequence(&mut seq, &pdu.bhs);
                        match self.dispatch(pdu, &mut seq, &mut ping, (&framing, &mut wbuf), &mut draining, logout_itt) {
                            Dispatch::Continue => {}
                            Dispatch::LoggedOut(t2w) => {
                                result = Some(if shutting_down {
                                    Ended::Shutdown
                                } else {
                                    Ended::Rejoin(t2w.max(rejoin_delay))
                                });
                                break;
                            }
                            Dispatch::Drop(delay) => {
                                rejoin_delay = delay;
                                result = Some(Ended::Rejoin(delay));
                                break;
                            }
                            Dispatch::Fatal(reason) => {
                                result = Some(Ended::Lost(reason));
                                break;
                            }
                        }
                    }
                    if let Some(r) = result {
                        break r;
                    }
                }
                request = self.rx.recv(), if can_take => {
                    match request {
                        Some(Request::Command(spec, reply)) => {
                            self.enqueue(spec, reply);
                            // Take what else is queued, up to what could be sent now.
                            while self.pending.len() < self.timing.queue_depth {
                                match self.rx.try_recv() {
                                    Ok(Request::Command(spec, reply)) => self.enqueue(spec, reply),
                                    Ok(Request::Logout(done)) => {
                                        self.logout_waiters.push(done);
                                        shutting_down = true;
                                        draining = Some(Instant::now() + Duration::from_secs(5));
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                        Some(Request::Logout(done)) => {
                            self.logout_waiters.push(done);
                            shutting_down = true;
                            draining = Some(Instant::now() + Duration::from_secs(5));
                        }
                        None => {
                            shutting_down = true;
                            draining = Some(Instant::now() + Duration::from_secs(5));
                        }
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline), if logout_itt.is_none() && draining.is_some() => {}
                writable = writer.writable(), if !wbuf.is_empty() => {
                    if let Err(e) = writable {
                        break Ended::Lost(format!("connection lost while sending: {e}"));
                    }
                }
                _ = ticker.tick() => {
                    let idle = last_rx.elapsed();
                    let waiting = !self.inflight.is_empty() || ping.is_some() || logout_itt.is_some();
                    if waiting && idle >= self.timing.stall_timeout {
                        if shutting_down {
                            break Ended::Shutdown;
                        }
                        break Ended::Lost(format!("no response from {portal} for {}s", idle.as_secs()));
                    }
                    if ping.is_none() && idle >= self.timing.nop_interval {
                        let itt = seq.itt();
                        Pdu::new(Bhs::NopOut(NopOut {
                            immediate: true,
                            lun: 0,
                            itt,
                            ttt: RESERVED_TAG,
                            cmd_sn: seq.cmd_sn,
                            exp_stat_sn: seq.exp_stat_sn,
                        }))
                        .encode(&framing, &mut wbuf);
                        ping = Some(itt);
                    }
                }
            }
        };
        ended
    }

    fn dispatch(
        &mut self,
        pdu: Pdu,
        seq: &mut Seq,
        ping: &mut Option<u32>,
        (framing, out): (&Framing, &mut BytesMut),
        draining: &mut Option<Instant>,
        logout_itt: Option<u32>,
    ) -> Dispatch {
        match &pdu.bhs {
            Bhs::DataIn(DataIn { itt, .. }) | Bhs::ScsiResponse(pdu::ScsiResponse { itt, .. }) => {
                let itt = *itt;
                let Some(task) = self.inflight.get_mut(&itt) else {
                    return Dispatch::Fatal(format!("response for unknown task {itt:#x}"));
                };
                match progress(pdu, task.spec.read_len, &mut task.data) {
                    Ok(Progress::More) => {}
                    Ok(Progress::Done(outcome)) => {
                        if let Some(task) = self.inflight.remove(&itt) {
                            let _ = task.reply.send(Ok(outcome));
                        }
                    }
                    Err(reason) => return Dispatch::Fatal(reason),
                }
            }
            Bhs::NopIn(nop) => {
                if nop.ttt != RESERVED_TAG {
                    nop_reply(nop, seq).encode(framing, out);
                }
                if Some(nop.itt) == *ping {
                    *ping = None;
                }
            }
            Bhs::AsyncMessage(msg) => match msg.event {
                1 => {
                    if draining.is_none() {
                        let within = Duration::from_secs(u64::from(msg.parameter3).max(1));
                        *draining = Some(Instant::now() + within / 2);
                    }
                }
                2 | 3 => {
                    return Dispatch::Drop(Duration::from_secs(u64::from(msg.parameter2)));
                }
                4 => {
                    if draining.is_none() {
                        *draining = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
                _ => tracing::debug!("asynchronous event {} ignored", msg.event),
            },
            Bhs::LogoutResponse(resp) if Some(resp.itt) == logout_itt => {
                return Dispatch::LoggedOut(Duration::from_secs(u64::from(resp.time2wait)));
            }
            Bhs::Reject(reject) => {
                let rejected_itt = pdu
                    .data
                    .get(16..20)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                match rejected_itt.and_then(|itt| self.inflight.remove(&itt).map(|t| (itt, t))) {
                    Some((_, task)) => {
                        let _ = task.reply.send(Err(IscsiError::Rejected {
                            reason: reject.reason,
                        }));
                    }
                    None if rejected_itt.is_some() && rejected_itt == *ping => *ping = None,
                    None => {
                        tracing::debug!("target rejected a PDU (reason {:#04x})", reject.reason)
                    }
                }
            }
            Bhs::R2t(_) => return Dispatch::Fatal("R2T for a read-only session".into()),
            other => {
                tracing::debug!("ignored {:?} in full-feature phase", other.opcode());
            }
        }
        Dispatch::Continue
    }
}

enum Dispatch {
    Continue,
    LoggedOut(Duration),
    Drop(Duration),
    Fatal(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write what the socket takes now without waiting; the rest stays queued for `writable()`.
fn flush(writer: &OwnedWriteHalf, wbuf: &mut BytesMut) -> std::io::Result<()> {
    while !wbuf.is_empty() {
        match writer.try_write(wbuf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = wbuf.split_to(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(serial_lt(1, 2));
        assert!(serial_lt(u32::MAX, 0));
        assert!(!serial_lt(0, u32::MAX));
        assert!(serial_le(5, 5));
        assert!(!serial_le(6, 5));
    }

    fn seq(cmd_sn: u32, max_cmd_sn: u32) -> Seq {
        Seq {
            cmd_sn,
            exp_cmd_sn: cmd_sn,
            max_cmd_sn,
            exp_stat_sn: 0,
            next_itt: 0,
        }
    }

    #[test]
    fn window_opens_and_closes_across_wrap() {
        let mut s = seq(u32::MAX - 1, u32::MAX);
        assert!(s.window_open());
        s.cmd_sn = s.cmd_sn.wrapping_add(2);
        assert!(!s.window_open(), "cmd_sn 0 is past max {}", s.max_cmd_sn);
        s.update_window(0, 3);
        assert!(s.window_open());
        // A MaxCmdSN below ExpCmdSN - 1 is ignored; an older one never shrinks the window.
        s.update_window(10, 2);
        assert_eq!(s.max_cmd_sn, 3);
        s.update_window(0, 1);
        assert_eq!(s.max_cmd_sn, 3);
        // MaxCmdSN = ExpCmdSN - 1: window closed (zero).
        let mut z = seq(5, 4);
        assert!(!z.window_open());
        z.update_window(5, 5);
        assert!(z.window_open());
    }

    #[test]
    fn itts_skip_the_reserved_tag() {
        let mut s = seq(0, 0);
        s.next_itt = RESERVED_TAG;
        assert_eq!(s.itt(), 0);
    }

    fn data_in(offset: u32, data: &'static [u8], status: Option<u8>) -> Pdu {
        Pdu::with_data(
            Bhs::DataIn(DataIn {
                fin: status.is_some(),
                buffer_offset: offset,
                status,
                ..DataIn::default()
            }),
            Bytes::from_static(data),
        )
    }

    #[test]
    fn data_in_reassembly() {
        let mut a = Assembly::Empty;
        assert!(matches!(
            progress(data_in(0, b"abc", None), 6, &mut a),
            Ok(Progress::More)
        ));
        let Ok(Progress::Done(out)) = progress(data_in(3, b"def", Some(0)), 6, &mut a) else {
            panic!()
        };
        assert_eq!(&out.data[..], b"abcdef");
        let mut one = Assembly::Empty;
        let Ok(Progress::Done(out)) = progress(data_in(0, b"xy", Some(0)), 2, &mut one) else {
            panic!()
        };
        assert_eq!(&out.data[..], b"xy");
    }

    #[test]
    fn data_in_out_of_order_or_too_long_is_refused() {
        let mut a = Assembly::Empty;
        assert!(progress(data_in(4, b"abc", None), 8, &mut a).is_err());
        let mut b = Assembly::Empty;
        assert!(progress(data_in(0, b"abcdef", None), 4, &mut b).is_err());
    }

    #[test]
    fn scsi_response_carries_sense() {
        let mut a = Assembly::Empty;
        let mut sense = vec![0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0];
        sense.resize(18, 0);
        let resp = Pdu::with_data(
            Bhs::ScsiResponse(pdu::ScsiResponse {
                status: 2,
                ..Default::default()
            }),
            pdu::sense_segment(&sense),
        );
        let Ok(Progress::Done(out)) = progress(resp, 0, &mut a) else {
            panic!()
        };
        assert_eq!(out.status, 2);
        assert_eq!(crate::scsi::parse_sense(&out.sense).unwrap().asc, 0x29);
    }

    /// A scripted target on a loopback socket: drives the real driver through a NOP-In, an
    /// asynchronous logout request, a hostile PDU, and reconnects, and checks what it sends.
    mod scripted {
        use super::*;
        use crate::iscsi::pdu::{AsyncMessage, LogoutResponse, NopIn};
        use tokio::net::TcpListener;

        struct Fake {
            portal: String,
        }

        #[async_trait::async_trait]
        impl Reconnect for Fake {
            async fn reconnect(
                &self,
                _attempt: u32,
            ) -> Result<(Conn, Seq, Params), (IscsiError, bool)> {
                let conn = Conn::connect(&self.portal, Duration::from_secs(5))
                    .await
                    .map_err(|e| (e, false))?;
                Ok((conn, test_seq(), Params::default()))
            }
        }

        fn test_seq() -> Seq {
            Seq {
                cmd_sn: 1,
                exp_cmd_sn: 1,
                max_cmd_sn: 64,
                exp_stat_sn: 1,
                next_itt: 1,
            }
        }

        struct Peer {
            stream: TcpStream,
            buf: BytesMut,
        }

        impl Peer {
            async fn accept(listener: &TcpListener) -> Peer {
                let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                    .await
                    .expect("initiator reconnects")
                    .unwrap();
                Peer {
                    stream,
                    buf: BytesMut::new(),
                }
            }

            async fn recv(&mut self) -> Pdu {
                let framing = Framing::default();
                loop {
                    if let Some(pdu) = pdu::decode(&mut self.buf, &framing).unwrap() {
                        return pdu;
                    }
                    self.buf.reserve(4096);
                    let n = tokio::time::timeout(
                        Duration::from_secs(10),
                        self.stream.read_buf(&mut self.buf),
                    )
                    .await
                    .expect("initiator sends")
                    .unwrap();
                    assert!(n > 0, "initiator closed the connection");
                }
            }

            async fn send(&mut self, pdu: Pdu) {
                let bytes = pdu.to_bytes(&Framing::default());
                self.stream.write_all(&bytes).await.unwrap();
            }

            async fn send_raw(&mut self, bytes: &[u8]) {
                self.stream.write_all(bytes).await.unwrap();
            }
        }

        fn data_in_done(itt: u32, data: &'static [u8]) -> Pdu {
            Pdu::with_data(
                Bhs::DataIn(DataIn {
                    fin: true,
                    status: Some(0),
                    itt,
                    ttt: RESERVED_TAG,
                    stat_sn: 1,
                    exp_cmd_sn: 2,
                    max_cmd_sn: 64,
                    ..DataIn::default()
                }),
                Bytes::from_static(data),
            )
        }

        #[tokio::test]
        async fn nop_async_logout_hostile_pdu_and_reissue() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let portal = listener.local_addr().unwrap().to_string();
            let conn = Conn::connect(&portal, Duration::from_secs(5))
                .await
                .unwrap();
            let mut peer = Peer::accept(&listener).await;
            let timing = Timing {
                nop_interval: Duration::from_secs(30),
                stall_timeout: Duration::from_secs(30),
                give_up_after: Duration::from_secs(30),
                queue_depth: 8,
            };
            let shared = Arc::new(Shared {
                portal: Mutex::new(portal.clone()),
                params: Mutex::new(Params::default()),
            });
            let fake = Arc::new(Fake {
                portal: portal.clone(),
            });
            let tx = Driver::spawn(conn, test_seq(), timing, fake, shared);
            let (reply_tx, reply_rx) = oneshot::channel();
            let spec = CommandSpec {
                lun: 1 << 48,
                cdb: crate::scsi::read(crate::scsi::ReadKind::Disk, 7, 1).unwrap(),
                read_len: 4,
            };
            tx.send(Request::Command(spec, reply_tx))
                .await
                .ok()
                .unwrap();

            // Connection 1: the command arrives; a target ping must be echoed.
            let Bhs::ScsiCommand(cmd) = peer.recv().await.bhs else {
                panic!("expected the read")
            };
            assert_eq!(cmd.cdb[0], 0x28);
            assert!(cmd.read && cmd.fin);
            peer.send(Pdu::new(Bhs::NopIn(NopIn {
                lun: 5,
                itt: RESERVED_TAG,
                ttt: 0x1234,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 64,
            })))
            .await;
            let Bhs::NopOut(nop) = peer.recv().await.bhs else {
                panic!("expected a NOP-Out echo")
            };
            assert_eq!((nop.ttt, nop.lun, nop.itt), (0x1234, 5, RESERVED_TAG));
            assert!(nop.immediate);

            // The target asks for a logout within 2 s; the initiator logs out.
            peer.send(Pdu::new(Bhs::AsyncMessage(AsyncMessage {
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 64,
                event: 1,
                parameter3: 2,
                ..AsyncMessage::default()
            })))
            .await;
            let Bhs::LogoutRequest(logout) = peer.recv().await.bhs else {
                panic!("expected a logout")
            };
            peer.send(Pdu::new(Bhs::LogoutResponse(LogoutResponse {
                itt: logout.itt,
                stat_sn: 2,
                exp_cmd_sn: 2,
                max_cmd_sn: 64,
                ..LogoutResponse::default()
            })))
            .await;

            // Connection 2: the read is reissued; the target answers with a hostile length.
            let mut peer = Peer::accept(&listener).await;
            let Bhs::ScsiCommand(again) = peer.recv().await.bhs else {
                panic!("expected the reissued read")
            };
            assert_eq!(again.cdb, cmd.cdb);
            let mut hostile = Bhs::DataIn(DataIn::default()).to_bytes();
            hostile[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
            peer.send_raw(&hostile).await;

            // Connection 3: reissued once more, answered properly.
            let mut peer = Peer::accept(&listener).await;
            let Bhs::ScsiCommand(third) = peer.recv().await.bhs else {
                panic!("expected the read a third time")
            };
            peer.send(data_in_done(third.itt, b"data")).await;
            let outcome = tokio::time::timeout(Duration::from_secs(10), reply_rx)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(outcome.status, 0);
            assert_eq!(&outcome.data[..], b"data");
        }
    }
}
