//! The full-feature phase (RFC 7143 §4.2, §11) as a state machine without I/O: one connection
//! per session, many SCSI commands outstanding inside the target's CmdSN window (§4.2.2.1, serial
//! arithmetic per RFC 1982), Data-In reassembly (§11.7) with status in the last Data-In or a SCSI
//! Response (§11.4), NOP-In answered and NOP-Out pings on an idle link (§11.18–§11.19),
//! Asynchronous Messages (§11.9), Reject (§11.17), Logout (§11.14), and session recovery at
//! ErrorRecoveryLevel 0 (§7.1.4.1): reconnect, log in again with the same ISID and TSIH 0, and
//! reissue every outstanding command.
//!
//! [`Machine`] takes the time and events in (`handle_*`: a request, a PDU, bytes arriving, a
//! connection made or lost, a timer) and gives out PDUs to send, connections to open or close
//! and its next deadline (`poll_*`); commands complete through the reply each request carries.
//! `transport` drives it over tokio; unit tests drive it with byte fixtures and a simulated clock.
//!
//! ## Faults
//! Every way a connection ends is a [`Fault`]. A network fault (reset, refused, a stall with
//! nothing arriving, a target restart or logout request) keeps the session reconnecting, next
//! portal first, until `give_up_after` of absence. A protocol fault (a PDU against RFC 7143 or
//! the negotiated limits, a response contradicting its command, an unknown ITT, a reserved
//! opcode, a Reject of our valid PDU, Data-In that makes no progress for `stall_timeout` while
//! bytes keep coming) counts against the portal: after [`MAX_PROTOCOL_FAULTS`] the portal is
//! dropped and the next one tried; with every portal dropped, outstanding and later commands fail
//! at once with one message naming the portal and the violation. No command waits longer than
//! `read_timeout` in all.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use tokio::sync::oneshot;

use super::login::LoginOutcome;
use super::pdu::{
    self, Bhs, DataIn, Framing, LogoutRequest, NopOut, Pdu, ScsiCommand, RESERVED_TAG,
};
use super::reader::ReadError;
use super::text::Params;
use super::IscsiError;
use crate::iobuf::{pool, AlignedBuffer};
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

/// Data-In segments of one command, joined in order without copying when there is only one
/// (several are copied into one page-aligned buffer, as the reader lands a single segment).
#[derive(Debug, Default)]
pub(super) enum Assembly {
    #[default]
    Empty,
    One(Bytes),
    Many(AlignedBuffer),
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
                let mut joined = pool::READS
                    .take(limit as usize)
                    .ok_or_else(|| format!("no memory for {limit} bytes of Data-In"))?;
                joined.put_slice(&first);
                joined.put_slice(&data);
                Self::Many(joined)
            }
            Self::Many(mut joined) => {
                joined.put_slice(&data);
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
            Self::Many(b) => pool::READS.freeze(b),
        }
    }
}

/// How much data a command must return with GOOD status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLength {
    /// All `read_len` bytes (a READ): less with GOOD status contradicts the command.
    Exactly,
    /// Up to `read_len` bytes (INQUIRY and the like return what they have).
    AtMost,
}

/// A command as the caller asked for it.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub lun: u64,
    pub cdb: Cdb,
    pub read_len: u32,
    pub expect: DataLength,
}

impl CommandSpec {
    pub(super) fn pdu(&self, itt: u32, seq: &Seq) -> Pdu {
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
pub(super) enum Progress {
    More,
    Done(CommandOutcome),
}

/// Apply a Data-In or SCSI Response to a command's assembly.
pub(super) fn progress(pdu: Pdu, read_len: u32, data: &mut Assembly) -> Result<Progress, String> {
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

pub(super) fn logout_request(itt: u32, seq: &Seq) -> Pdu {
    Pdu::new(Bhs::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt,
        cid: 0,
        cmd_sn: seq.cmd_sn,
        exp_stat_sn: seq.exp_stat_sn,
    }))
}

pub(super) fn nop_reply(nop: &pdu::NopIn, seq: &Seq) -> Pdu {
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
pub(super) fn note_sequence(seq: &mut Seq, bhs: &Bhs) {
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

/// `host:port`-free framing of a logged-in connection: digests and our data segment limit.
pub fn framing_for(params: &Params) -> Framing {
    Framing {
        header_digest: params.header_digest == super::text::Digest::Crc32c,
        data_digest: params.data_digest == super::text::Digest::Crc32c,
        max_recv_data: params.max_recv_data_segment_length,
    }
}

/// Protocol faults a portal may commit before it is dropped for this session.
pub const MAX_PROTOCOL_FAULTS: u32 = 3;
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First wait after a failed reconnect attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a shutdown waits for outstanding commands before logging out anyway.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Timing of the session.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Send a NOP-Out ping when nothing has arrived for this long.
    pub nop_interval: Duration,
    /// A connection is dead when nothing arrives for this long while we wait for the target,
    /// and faulty when bytes arrive but no command makes progress for this long.
    pub stall_timeout: Duration,
    /// Stop reconnecting after this long away and fail what is outstanding.
    pub give_up_after: Duration,
    /// No command waits longer than this in all, reconnects included.
    pub read_timeout: Duration,
    /// Most commands in flight at once (also bounded by the CmdSN window).
    pub queue_depth: usize,
}

/// Why a connection ended, by whose fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The link failed or the target went away for a while: reconnect; not held against it.
    Network(String),
    /// The target broke RFC 7143 or the negotiated limits, or contradicted a command: counted
    /// against the portal.
    Protocol(String),
}

impl Fault {
    /// How a failed connect, login or setup counts.
    pub fn of(err: &IscsiError) -> Option<Fault> {
        match err {
            IscsiError::Protocol { reason, .. } => Some(Fault::Protocol(reason.clone())),
            IscsiError::IdentityChanged { .. } | IscsiError::NoSuchLun { .. } => None,
            other => Some(Fault::Network(other.to_string())),
        }
    }
}

/// Where a finished (or failed) command's result goes.
pub type Reply = oneshot::Sender<Result<CommandOutcome, IscsiError>>;

/// What the machine asks of its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Connect to this portal, log in and check the LUN; report with `handle_connected` or
    /// `handle_connect_failed`.
    Connect { portal: String },
    /// Close the current connection (what follows is already decided).
    Close,
    /// The session is over: logged out, every reply answered.
    Finished,
}

struct Task {
    order: u64,
    spec: CommandSpec,
    /// `None` once the caller has had its answer (timed out): the task only absorbs the
    /// target's Data-In until it ends.
    reply: Option<Reply>,
    deadline: Instant,
    data: Assembly,
}

impl Task {
    fn answer(&mut self, result: Result<CommandOutcome, IscsiError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

/// One portal's standing in this session.
#[derive(Debug)]
struct Portal {
    address: String,
    protocol_faults: u32,
    /// The violation that dropped it.
    dropped: Option<String>,
}

/// Our NOP-Out ping on an idle link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    Idle,
    Sent { itt: u32 },
}

/// What follows a logout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterLogout {
    /// The target asked for it: log in again after this delay.
    Rejoin(Duration),
    /// We are shutting down.
    Finish,
}

/// The full-feature phase of a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Commands flow.
    Running,
    /// No new commands; Logout goes out once nothing is in flight or at `deadline`.
    Draining {
        deadline: Instant,
        then: AfterLogout,
    },
    /// Logout sent; waiting for its response.
    LoggingOut { itt: u32, then: AfterLogout },
}

/// A logged-in connection.
struct Connection {
    seq: Seq,
    phase: Phase,
    ping: Ping,
    /// When bytes last arrived.
    last_rx: Instant,
    /// When a command last made progress (or waiting for one began).
    last_progress: Instant,
}

/// Where the session stands.
enum Link {
    Up(Connection),
    /// Between connections: connect to `portal` at `at`; away since `since`.
    Down {
        portal: usize,
        at: Instant,
        since: Instant,
        backoff: Duration,
        connecting: bool,
    },
    /// Reconnecting failed for `give_up_after` (or the LUN changed): outstanding commands were
    /// failed; the next request tries again.
    Resting,
    /// Every portal was dropped for protocol faults: every command fails at once with this.
    Failed(IscsiError),
    /// Logged out for good.
    Closed,
}

/// What one PDU did to the connection.
enum Dispatched {
    Continue,
    /// The connection ends (not by a violation); reconnect after the delay.
    End(Fault, Duration),
    /// Our logout is answered; the session is over.
    LoggedOut,
}

/// The session state machine. See the module documentation.
pub struct Machine {
    timing: Timing,
    portals: Vec<Portal>,
    current: usize,
    link: Link,
    pending: VecDeque<Task>,
    inflight: HashMap<u32, Task>,
    next_order: u64,
    next_itt: u32,
    transmit: VecDeque<Pdu>,
    actions: VecDeque<Action>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

impl Machine {
    /// A machine whose first connection to `portals[current]` is already logged in.
    pub fn new(
        timing: Timing,
        portals: Vec<String>,
        current: usize,
        seq: Seq,
        now: Instant,
    ) -> Self {
        let mut machine = Self {
            timing,
            portals: portals
                .into_iter()
                .map(|address| Portal {
                    address,
                    protocol_faults: 0,
                    dropped: None,
                })
                .collect(),
            current,
            link: Link::Resting,
            pending: VecDeque::new(),
            inflight: HashMap::new(),
            next_order: 0,
            next_itt: 1,
            transmit: VecDeque::new(),
            actions: VecDeque::new(),
            shutdown_waiters: Vec::new(),
        };
        machine.handle_connected(now, seq);
        machine
    }

    /// The portal in use (or being connected to).
    pub fn portal(&self) -> &str {
        &self.portals[self.current].address
    }

    /// Whether the transport should take more requests now (backpressure: commands wait in the
    /// channel, not here, while the window is full).
    pub fn wants_requests(&self) -> bool {
        match &self.link {
            Link::Up(conn) => {
                conn.phase == Phase::Running
                    && self.pending.is_empty()
                    && conn.seq.window_open()
                    && self.inflight.len() < self.timing.queue_depth
            }
            Link::Down { .. } => self.pending.len() < self.timing.queue_depth,
            Link::Resting | Link::Failed(_) | Link::Closed => true,
        }
    }

    /// A command to run.
    pub fn handle_request(&mut self, now: Instant, spec: CommandSpec, reply: Reply) {
        match &self.link {
            Link::Failed(err) => {
                let _ = reply.send(Err(err.clone()));
                return;
            }
            Link::Closed => {
                let _ = reply.send(Err(IscsiError::Closed));
                return;
            }
            Link::Resting => self.reconnect_now(now),
            Link::Up(_) | Link::Down { .. } => {}
        }
        self.pending.push_back(Task {
            order: self.next_order,
            spec,
            reply: Some(reply),
            deadline: now + self.timing.read_timeout,
            data: Assembly::Empty,
        });
        self.next_order += 1;
        self.pump(now);
    }

    /// Log out and finish, waiting a little for outstanding commands; `done` is told at the end.
    pub fn handle_shutdown(&mut self, now: Instant, done: Option<oneshot::Sender<()>>) {
        self.shutdown_waiters.extend(done);
        match &mut self.link {
            Link::Up(conn) => match conn.phase {
                Phase::LoggingOut { ref mut then, .. } | Phase::Draining { ref mut then, .. } => {
                    *then = AfterLogout::Finish
                }
                Phase::Running => {
                    conn.phase = Phase::Draining {
                        deadline: now + SHUTDOWN_DRAIN,
                        then: AfterLogout::Finish,
                    }
                }
            },
            _ => self.finish(),
        }
        self.pump(now);
    }

    /// A new connection is logged in (and the LUN checked).
    pub fn handle_connected(&mut self, now: Instant, seq: Seq) {
        if let Link::Down { portal, .. } = self.link {
            self.current = portal;
        }
        self.link = Link::Up(Connection {
            seq,
            phase: Phase::Running,
            ping: Ping::Idle,
            last_rx: now,
            last_progress: now,
        });
        self.pump(now);
    }

    /// Connecting, logging in or checking the LUN failed.
    pub fn handle_connect_failed(&mut self, now: Instant, err: IscsiError) {
        let Link::Down {
            portal,
            since,
            backoff,
            ..
        } = self.link
        else {
            return;
        };
        tracing::warn!("reconnecting to {}: {err}", self.portals[portal].address);
        let Some(fault) = Fault::of(&err) else {
            self.rest(err);
            return;
        };
        let next = match &fault {
            Fault::Protocol(reason) => match self.count_protocol_fault(portal, reason) {
                Some(next) => next,
                None => return,
            },
            Fault::Network(_) => self.next_portal(portal),
        };
        if now.duration_since(since) >= self.timing.give_up_after {
            self.rest(IscsiError::GaveUp {
                secs: self.timing.give_up_after.as_secs(),
                last: err.to_string(),
            });
            return;
        }
        self.link = Link::Down {
            portal: next,
            at: now + backoff,
            since,
            backoff: (backoff * 2).min(MAX_BACKOFF),
            connecting: false,
        };
    }

    /// Bytes arrived on the connection (whole PDUs or not).
    pub fn handle_bytes(&mut self, now: Instant) {
        if let Link::Up(conn) = &mut self.link {
            conn.last_rx = now;
        }
    }

    /// The connection could not be read: closed, reset, or bytes that are not a PDU.
    pub fn handle_read_error(&mut self, now: Instant, err: ReadError) {
        let fault = match err {
            ReadError::Io(e) => Fault::Network(format!("connection lost: {e}")),
            ReadError::Truncated => Fault::Network("connection closed by the target".into()),
            ReadError::Malformed(e) | ReadError::Dropped { error: e, .. } => {
                Fault::Protocol(e.to_string())
            }
        };
        self.connection_ended(now, fault, Duration::ZERO);
    }

    /// The target closed the connection between PDUs.
    pub fn handle_closed(&mut self, now: Instant) {
        let fault = Fault::Network("connection closed by the target".into());
        self.connection_ended(now, fault, Duration::ZERO);
    }

    /// Sending failed.
    pub fn handle_send_error(&mut self, now: Instant, err: std::io::Error) {
        let fault = Fault::Network(format!("connection lost while sending: {err}"));
        self.connection_ended(now, fault, Duration::ZERO);
    }

    /// A PDU from the target.
    pub fn handle_pdu(&mut self, now: Instant, pdu: Pdu) {
        let Link::Up(conn) = &mut self.link else {
            return;
        };
        note_sequence(&mut conn.seq, &pdu.bhs);
        match self.dispatch(now, pdu) {
            Ok(Dispatched::Continue) => {}
            Ok(Dispatched::End(fault, delay)) => self.connection_ended(now, fault, delay),
            Ok(Dispatched::LoggedOut) => {
                self.actions.push_back(Action::Close);
                self.finish();
            }
            Err(violation) => {
                self.connection_ended(now, Fault::Protocol(violation), Duration::ZERO)
            }
        }
        self.pump(now);
    }

    /// Time has passed: deadlines of commands, pings, stalls, reconnects.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        let timing = self.timing;
        let mut ended = None;
        match &mut self.link {
            Link::Up(conn) => {
                let waiting = !self.inflight.is_empty()
                    || conn.ping != Ping::Idle
                    || matches!(conn.phase, Phase::LoggingOut { .. });
                let silent = now.duration_since(conn.last_rx);
                let stuck = now.duration_since(conn.last_progress);
                if waiting && silent >= timing.stall_timeout {
                    ended = Some(Fault::Network(format!(
                        "no response from {} for {}s",
                        self.portals[self.current].address,
                        silent.as_secs()
                    )));
                } else if !self.inflight.is_empty() && stuck >= timing.stall_timeout {
                    ended = Some(Fault::Protocol(format!(
                        "no Data-In progress for {}s while the target kept sending",
                        stuck.as_secs()
                    )));
                } else if conn.ping == Ping::Idle && silent >= timing.nop_interval {
                    let itt = take_itt(&mut self.next_itt);
                    self.transmit.push_back(Pdu::new(Bhs::NopOut(NopOut {
                        immediate: true,
                        lun: 0,
                        itt,
                        ttt: RESERVED_TAG,
                        cmd_sn: conn.seq.cmd_sn,
                        exp_stat_sn: conn.seq.exp_stat_sn,
                    })));
                    conn.ping = Ping::Sent { itt };
                }
            }
            _ => self.poll_connect(now),
        }
        if let Some(fault) = ended {
            let finishing = matches!(
                &self.link,
                Link::Up(Connection {
                    phase: Phase::LoggingOut {
                        then: AfterLogout::Finish,
                        ..
                    } | Phase::Draining {
                        then: AfterLogout::Finish,
                        ..
                    },
                    ..
                })
            );
            if finishing {
                self.actions.push_back(Action::Close);
                self.finish();
            } else {
                self.connection_ended(now, fault, Duration::ZERO);
            }
        }
        self.pump(now);
    }

    /// The next PDU to send.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        self.transmit.pop_front()
    }

    /// The next thing the transport must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tasks = self
            .pending
            .iter()
            .chain(self.inflight.values())
            .filter(|t| t.reply.is_some())
            .map(|t| t.deadline)
            .min();
        let link = match &self.link {
            Link::Up(conn) => {
                let mut due = conn.last_rx + self.timing.stall_timeout;
                if conn.ping == Ping::Idle {
                    due = due.min(conn.last_rx + self.timing.nop_interval);
                }
                if !self.inflight.is_empty() {
                    due = due.min(conn.last_progress + self.timing.stall_timeout);
                }
                if let Phase::Draining { deadline, .. } = conn.phase {
                    due = due.min(deadline);
                }
                Some(due)
            }
            Link::Down {
                at,
                connecting: false,
                ..
            } => Some(*at),
            _ => None,
        };
        match (tasks, link) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Apply one target PDU; `Err`: a protocol violation.
    fn dispatch(&mut self, now: Instant, pdu: Pdu) -> Result<Dispatched, String> {
        let Link::Up(conn) = &mut self.link else {
            return Ok(Dispatched::Continue);
        };
        let drain = |conn: &mut Connection, deadline: Instant| {
            if conn.phase == Phase::Running {
                conn.phase = Phase::Draining {
                    deadline,
                    then: AfterLogout::Rejoin(Duration::ZERO),
                };
            }
        };
        match &pdu.bhs {
            Bhs::DataIn(DataIn { itt, .. }) | Bhs::ScsiResponse(pdu::ScsiResponse { itt, .. }) => {
                let itt = *itt;
                let Some(task) = self.inflight.get_mut(&itt) else {
                    return Err(format!("response for ITT {itt:#x}, which was never issued"));
                };
                conn.last_progress = now;
                if let Progress::Done(outcome) = progress(pdu, task.spec.read_len, &mut task.data)?
                {
                    let short = outcome.status == crate::scsi::status::GOOD
                        && task.spec.expect == DataLength::Exactly
                        && outcome.data.len() != task.spec.read_len as usize;
                    if short {
                        return Err(format!(
                            "GOOD status with {} of the {} bytes read",
                            outcome.data.len(),
                            task.spec.read_len
                        ));
                    }
                    if let Some(mut task) = self.inflight.remove(&itt) {
                        task.answer(Ok(outcome));
                    }
                }
            }
            Bhs::NopIn(nop) => {
                if nop.ttt != RESERVED_TAG {
                    self.transmit.push_back(nop_reply(nop, &conn.seq));
                }
                match conn.ping {
                    Ping::Sent { itt } if itt == nop.itt => conn.ping = Ping::Idle,
                    _ if nop.itt == RESERVED_TAG => {}
                    _ => return Err(format!("NOP-In for ITT {:#x}, never issued", nop.itt)),
                }
            }
            Bhs::AsyncMessage(msg) => match msg.event {
                // The target asks for a logout within Parameter3 seconds.
                1 => {
                    let within = Duration::from_secs(u64::from(msg.parameter3).max(1));
                    drain(conn, now + within / 2);
                }
                // The target will drop the connection (or all of them): rejoin after Time2Wait.
                2 | 3 => {
                    let wait = Duration::from_secs(u64::from(msg.parameter2));
                    return Ok(Dispatched::End(
                        Fault::Network("the target dropped the connection".into()),
                        wait,
                    ));
                }
                // Renegotiation requested: log out and in again.
                4 => drain(conn, now + Duration::from_secs(1)),
                event => tracing::debug!("asynchronous event {event} ignored"),
            },
            Bhs::LogoutResponse(resp) => {
                let Phase::LoggingOut { itt, then } = conn.phase else {
                    return Err(format!(
                        "Logout Response for ITT {:#x}, never issued",
                        resp.itt
                    ));
                };
                if resp.itt != itt {
                    return Err(format!(
                        "Logout Response for ITT {:#x}, never issued",
                        resp.itt
                    ));
                }
                return Ok(match then {
                    AfterLogout::Finish => Dispatched::LoggedOut,
                    AfterLogout::Rejoin(delay) => Dispatched::End(
                        Fault::Network("the target asked us to log out".into()),
                        delay.max(Duration::from_secs(u64::from(resp.time2wait))),
                    ),
                });
            }
            Bhs::Reject(reject) => {
                let rejected = pdu
                    .data
                    .get(16..20)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                match (rejected, conn.ping) {
                    (Some(itt), Ping::Sent { itt: ping }) if itt == ping => conn.ping = Ping::Idle,
                    _ => {
                        return Err(format!(
                            "the target rejected our valid PDU (reason {:#04x})",
                            reject.reason
                        ))
                    }
                }
            }
            Bhs::Unknown(u) => return Err(format!("reserved opcode {:#04x}", u.opcode)),
            other => {
                return Err(format!(
                    "unexpected {:?} in the full-feature phase",
                    other.opcode()
                ))
            }
        }
        Ok(Dispatched::Continue)
    }

    /// Send what the window allows; send the logout a drain is waiting for.
    fn pump(&mut self, now: Instant) {
        self.expire(now);
        let Link::Up(conn) = &mut self.link else {
            return;
        };
        if conn.phase == Phase::Running {
            while conn.seq.window_open() && self.inflight.len() < self.timing.queue_depth {
                let Some(task) = self.pending.pop_front() else {
                    break;
                };
                if task.reply.as_ref().is_none_or(|r| r.is_closed()) {
                    continue;
                }
                if self.inflight.is_empty() {
                    conn.last_progress = now;
                }
                let itt = take_itt(&mut self.next_itt);
                self.transmit.push_back(task.spec.pdu(itt, &conn.seq));
                conn.seq.cmd_sn = conn.seq.cmd_sn.wrapping_add(1);
                self.inflight.insert(itt, task);
            }
        }
        if let Phase::Draining { deadline, then } = conn.phase {
            if self.inflight.is_empty() || now >= deadline {
                let itt = take_itt(&mut self.next_itt);
                self.transmit.push_back(logout_request(itt, &conn.seq));
                conn.phase = Phase::LoggingOut { itt, then };
            }
        }
    }

    /// Answer commands whose time is up.
    fn expire(&mut self, now: Instant) {
        let timed_out = |secs| IscsiError::TimedOut { secs };
        let secs = self.timing.read_timeout.as_secs();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for mut task in self.pending.drain(..) {
            if now >= task.deadline {
                task.answer(Err(timed_out(secs)));
            } else {
                kept.push_back(task);
            }
        }
        self.pending = kept;
        // In flight, the task stays to absorb its Data-In; only its caller is answered.
        for task in self.inflight.values_mut() {
            if now >= task.deadline {
                task.answer(Err(timed_out(secs)));
            }
        }
    }

    /// The connection is over: requeue what was in flight and decide what comes next.
    fn connection_ended(&mut self, now: Instant, fault: Fault, delay: Duration) {
        if !matches!(self.link, Link::Up(_)) {
            return;
        }
        self.actions.push_back(Action::Close);
        let mut tasks: Vec<Task> = self.inflight.drain().map(|(_, t)| t).collect();
        tasks.sort_by_key(|t| t.order);
        for mut task in tasks.into_iter().rev() {
            if task.reply.is_some() {
                task.data = Assembly::Empty;
                self.pending.push_front(task);
            }
        }
        let portal = self.current;
        let next = match &fault {
            Fault::Protocol(reason) => {
                tracing::info!(
                    "{}: protocol violation: {reason}; reconnecting",
                    self.portals[portal].address
                );
                match self.count_protocol_fault(portal, reason) {
                    Some(next) => next,
                    None => return,
                }
            }
            Fault::Network(reason) => {
                tracing::warn!("{}: {reason}; reconnecting", self.portals[portal].address);
                if delay.is_zero() {
                    self.next_portal(portal)
                } else {
                    portal
                }
            }
        };
        self.link = Link::Down {
            portal: next,
            at: now + delay,
            since: now,
            backoff: FIRST_BACKOFF,
            connecting: false,
        };
        self.poll_connect(now);
    }

    /// Count a protocol fault; the portal to try next, or `None` when every portal is dropped
    /// (everything outstanding has then failed).
    fn count_protocol_fault(&mut self, portal: usize, reason: &str) -> Option<usize> {
        let p = &mut self.portals[portal];
        p.protocol_faults += 1;
        if p.protocol_faults < MAX_PROTOCOL_FAULTS {
            return Some(portal);
        }
        tracing::info!(
            "{}: dropped after {} protocol faults, the last: {reason}",
            p.address,
            p.protocol_faults
        );
        p.dropped = Some(reason.to_string());
        match self.portals.iter().position(|p| p.dropped.is_none()) {
            Some(_) => Some(self.next_portal(portal)),
            None => {
                let err = IscsiError::Protocol {
                    portal: self.portals[portal].address.clone(),
                    reason: format!(
                        "{reason} (dropped after {MAX_PROTOCOL_FAULTS} protocol faults)"
                    ),
                };
                self.fail_all(&err);
                self.link = Link::Failed(err);
                None
            }
        }
    }

    /// The next portal after `from` that is not dropped (`from` itself if it is the only one).
    fn next_portal(&self, from: usize) -> usize {
        let n = self.portals.len();
        (1..=n)
            .map(|i| (from + i) % n)
            .find(|&i| self.portals[i].dropped.is_none())
            .unwrap_or(from)
    }

    /// Ask the transport for a connection when one is due.
    fn poll_connect(&mut self, now: Instant) {
        if let Link::Down {
            portal,
            at,
            ref mut connecting,
            ..
        } = self.link
        {
            if !*connecting && now >= at {
                *connecting = true;
                self.actions.push_back(Action::Connect {
                    portal: self.portals[portal].address.clone(),
                });
            }
        }
    }

    /// Start reconnecting now (after resting).
    fn reconnect_now(&mut self, now: Instant) {
        let portal = self.next_portal(self.current);
        self.link = Link::Down {
            portal,
            at: now,
            since: now,
            backoff: FIRST_BACKOFF,
            connecting: false,
        };
        self.poll_connect(now);
    }

    /// Fail what is outstanding and wait for the next request before trying again.
    fn rest(&mut self, err: IscsiError) {
        self.fail_all(&err);
        self.link = Link::Resting;
    }

    fn fail_all(&mut self, err: &IscsiError) {
        for mut task in self.pending.drain(..) {
            task.answer(Err(err.clone()));
        }
        for (_, mut task) in self.inflight.drain() {
            task.answer(Err(err.clone()));
        }
    }

    fn finish(&mut self) {
        self.fail_all(&IscsiError::Closed);
        self.link = Link::Closed;
        self.actions.push_back(Action::Finished);
        for waiter in self.shutdown_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

fn take_itt(next: &mut u32) -> u32 {
    loop {
        let itt = *next;
        *next = next.wrapping_add(1);
        if itt != RESERVED_TAG {
            return itt;
        }
    }
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

    /// The machine driven through every fault with a simulated clock: no sockets.
    mod machine {
        use super::*;
        use crate::iscsi::pdu::{AsyncMessage, LogoutResponse, NopIn, PduError, R2t, Reject};
        use tokio::sync::oneshot::error::TryRecvError;

        type Outcome = oneshot::Receiver<Result<CommandOutcome, IscsiError>>;

        const S: Duration = Duration::from_secs(1);

        fn timing() -> Timing {
            Timing {
                nop_interval: 3 * S,
                stall_timeout: 8 * S,
                give_up_after: 60 * S,
                read_timeout: 90 * S,
                queue_depth: 8,
            }
        }

        fn machine(portals: &[&str], timing: Timing, t0: Instant) -> Machine {
            let portals = portals.iter().map(|p| p.to_string()).collect();
            Machine::new(timing, portals, 0, seq(1, 64), t0)
        }

        fn read(m: &mut Machine, now: Instant, len: u32) -> Outcome {
            let (tx, rx) = oneshot::channel();
            let spec = CommandSpec {
                lun: 0,
                cdb: crate::scsi::read(crate::scsi::ReadKind::Disk, 0, len / 512).unwrap(),
                read_len: len,
                expect: DataLength::Exactly,
            };
            m.handle_request(now, spec, tx);
            rx
        }

        fn sent(m: &mut Machine) -> Vec<Bhs> {
            std::iter::from_fn(|| m.poll_transmit())
                .map(|p| p.bhs)
                .collect()
        }

        fn actions(m: &mut Machine) -> Vec<Action> {
            std::iter::from_fn(|| m.poll_action()).collect()
        }

        /// The ITT of the one SCSI command sent.
        fn command_itt(m: &mut Machine) -> u32 {
            let cmds: Vec<u32> = sent(m)
                .into_iter()
                .filter_map(|b| match b {
                    Bhs::ScsiCommand(c) => Some(c.itt),
                    _ => None,
                })
                .collect();
            assert_eq!(cmds.len(), 1, "{cmds:?}");
            cmds[0]
        }

        fn data(itt: u32, offset: u32, bytes: Vec<u8>, status: Option<u8>) -> Pdu {
            Pdu::with_data(
                Bhs::DataIn(DataIn {
                    fin: status.is_some(),
                    status,
                    itt,
                    buffer_offset: offset,
                    exp_cmd_sn: 1,
                    max_cmd_sn: 64,
                    ..DataIn::default()
                }),
                Bytes::from(bytes),
            )
        }

        fn connect_to(portal: &str) -> Action {
            Action::Connect {
                portal: portal.to_string(),
            }
        }

        #[test]
        fn a_read_is_reassembled_from_its_data_in() {
            let t0 = Instant::now();
            let mut m = machine(&["a"], timing(), t0);
            let mut rx = read(&mut m, t0, 1024);
            let itt = command_itt(&mut m);
            m.handle_pdu(t0, data(itt, 0, vec![1; 512], None));
            assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
            m.handle_pdu(t0, data(itt, 512, vec![2; 512], Some(0)));
            let out = rx.try_recv().unwrap().unwrap();
            assert_eq!(out.data.len(), 1024);
            assert_eq!((out.data[0], out.data[1023]), (1, 2));
            assert!(actions(&mut m).is_empty());
        }

        #[test]
        fn an_idle_link_is_pinged_and_a_silent_one_is_a_network_fault() {
            let t0 = Instant::now();
            let mut m = machine(&["a", "b"], timing(), t0);
            assert_eq!(m.poll_timeout(), Some(t0 + 3 * S));
            m.handle_timeout(t0 + 3 * S);
            let ping = match sent(&mut m).as_slice() {
                [Bhs::NopOut(nop)] => nop.clone(),
                other => panic!("{other:?}"),
            };
            assert!(ping.immediate && ping.ttt == RESERVED_TAG);
            // The target's own ping is echoed with its TTT; its answer to ours clears our ping.
            let nop_in = |itt, ttt| {
                Pdu::new(Bhs::NopIn(NopIn {
                    itt,
                    ttt,
                    lun: 7,
                    ..NopIn::default()
                }))
            };
            m.handle_pdu(t0 + 4 * S, nop_in(RESERVED_TAG, 0x55));
            m.handle_pdu(t0 + 4 * S, nop_in(ping.itt, RESERVED_TAG));
            match sent(&mut m).as_slice() {
                [Bhs::NopOut(echo)] => assert_eq!((echo.ttt, echo.lun), (0x55, 7)),
                other => panic!("{other:?}"),
            }
            // A read, then silence: a network fault, so the next portal is tried.
            m.handle_bytes(t0 + 4 * S);
            let mut rx = read(&mut m, t0 + 4 * S, 512);
            let itt = command_itt(&mut m);
            m.handle_timeout(t0 + 7 * S);
            assert!(matches!(sent(&mut m).as_slice(), [Bhs::NopOut(_)]));
            m.handle_timeout(t0 + 12 * S);
            assert_eq!(actions(&mut m), [Action::Close, connect_to("b")]);
            // Reissued on the new connection, with a new ITT, and answered there.
            m.handle_connected(t0 + 13 * S, seq(10, 20));
            let again = command_itt(&mut m);
            assert_ne!(again, itt);
            m.handle_pdu(t0 + 13 * S, data(again, 0, vec![9; 512], Some(0)));
            assert_eq!(rx.try_recv().unwrap().unwrap().data[0], 9);
            assert_eq!(m.portal(), "b");
        }

        /// Each protocol violation, as the machine meets it on a connection with a 4 KiB read
        /// in flight (ITT `itt`).
        /// Commits a violation on a machine at a time, with the read in flight as this ITT.
        type Commit = Box<dyn Fn(&mut Machine, Instant, u32)>;

        fn violations() -> Vec<(&'static str, Commit)> {
            let pdu = |f: fn(u32) -> Pdu| -> Commit {
                Box::new(move |m, now, itt| m.handle_pdu(now, f(itt)))
            };
            vec![
                (
                    "Data-In past the expected 4096 bytes",
                    pdu(|itt| data(itt, 0, vec![0; 8192], Some(0))),
                ),
                (
                    "never issued",
                    pdu(|itt| data(itt + 1000, 0, vec![0; 512], None)),
                ),
                (
                    "reserved opcode 0x1c",
                    pdu(|_| {
                        let mut raw = [0u8; pdu::BHS_LEN];
                        raw[0] = 0x1c;
                        Pdu::new(Bhs::from_bytes(&raw).unwrap())
                    }),
                ),
                (
                    "rejected our valid PDU",
                    pdu(|itt| {
                        let mut header = Bhs::ScsiCommand(ScsiCommand {
                            itt,
                            ..ScsiCommand::default()
                        })
                        .to_bytes()
                        .to_vec();
                        header.truncate(pdu::BHS_LEN);
                        Pdu::with_data(
                            Bhs::Reject(Reject {
                                reason: 9,
                                ..Reject::default()
                            }),
                            Bytes::from(header),
                        )
                    }),
                ),
                (
                    "unexpected R2t",
                    pdu(|itt| {
                        Pdu::new(Bhs::R2t(R2t {
                            itt,
                            ..R2t::default()
                        }))
                    }),
                ),
                (
                    "GOOD status with 0 of the 4096 bytes read",
                    pdu(|itt| data(itt, 0, Vec::new(), Some(0))),
                ),
                (
                    "exceeds the negotiated limit",
                    Box::new(|m, now, _| {
                        let e = PduError::DataTooLong {
                            len: 1 << 20,
                            max: 262_144,
                        };
                        m.handle_read_error(now, ReadError::Malformed(e))
                    }),
                ),
                (
                    "malformed PDU",
                    Box::new(|m, now, _| {
                        // Random bytes: whatever the codec makes of them is not a PDU.
                        let e = PduError::Malformed("reserved login stage 2");
                        m.handle_read_error(now, ReadError::Malformed(e))
                    }),
                ),
                (
                    "no Data-In progress",
                    Box::new(|m, now, _| {
                        // One byte a second, never a whole PDU.
                        for s in 1..=9 {
                            m.handle_bytes(now + s * S);
                            m.handle_timeout(now + s * S);
                        }
                    }),
                ),
            ]
        }

        #[test]
        fn protocol_faults_drop_a_portal_after_three_then_every_read_fails_at_once() {
            for (violation, commit) in violations() {
                let t0 = Instant::now();
                let mut m = machine(&["a", "b"], timing(), t0);
                let mut rx = read(&mut m, t0, 4096);
                let mut now = t0;
                for (round, portal) in ["a", "a", "a", "b", "b", "b"].into_iter().enumerate() {
                    let itt = command_itt(&mut m);
                    commit(&mut m, now, itt);
                    let acts = actions(&mut m);
                    assert_eq!(acts.first(), Some(&Action::Close), "{violation}: {acts:?}");
                    now += 10 * S;
                    if round == 5 {
                        assert_eq!(acts.len(), 1, "{violation}: {acts:?}");
                        break;
                    }
                    // Retried on the same portal until it is dropped, then on the next.
                    let next = if round == 2 { "b" } else { portal };
                    assert_eq!(acts[1..], [connect_to(next)], "{violation} round {round}");
                    m.handle_connected(now, seq(1, 64));
                }
                let err = rx.try_recv().unwrap().unwrap_err();
                let text = err.to_string();
                assert!(text.starts_with("b: "), "{violation}: {text}");
                assert!(text.contains(violation), "{violation}: {text}");
                assert!(matches!(err, IscsiError::Protocol { .. }));
                // Later reads fail at once, with the same line.
                let mut later = read(&mut m, now, 512);
                assert_eq!(later.try_recv().unwrap().unwrap_err().to_string(), text);
                assert!(sent(&mut m).is_empty() && actions(&mut m).is_empty());
            }
        }

        #[test]
        fn network_faults_are_not_counted() {
            let t0 = Instant::now();
            let mut m = machine(&["a"], timing(), t0);
            let mut rx = read(&mut m, t0, 512);
            let mut now = t0;
            for _ in 0..10 {
                command_itt(&mut m);
                let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                m.handle_read_error(now, ReadError::Io(reset));
                assert_eq!(actions(&mut m), [Action::Close, connect_to("a")]);
                now += S;
                m.handle_connected(now, seq(1, 64));
            }
            let itt = command_itt(&mut m);
            m.handle_pdu(now, data(itt, 0, vec![3; 512], Some(0)));
            assert!(rx.try_recv().unwrap().is_ok());
        }

        #[test]
        fn a_logout_request_drains_logs_out_and_rejoins_after_time2wait() {
            let t0 = Instant::now();
            let mut m = machine(&["a"], timing(), t0);
            let mut rx = read(&mut m, t0, 512);
            let itt = command_itt(&mut m);
            m.handle_pdu(
                t0,
                Pdu::new(Bhs::AsyncMessage(AsyncMessage {
                    event: 1,
                    parameter3: 10,
                    exp_cmd_sn: 2,
                    max_cmd_sn: 64,
                    ..AsyncMessage::default()
                })),
            );
            // No new command goes out while draining; the logout waits for the read in flight.
            let mut queued = read(&mut m, t0, 512);
            assert!(sent(&mut m).is_empty());
            m.handle_pdu(t0 + S, data(itt, 0, vec![1; 512], Some(0)));
            assert!(rx.try_recv().unwrap().is_ok());
            let logout = match sent(&mut m).as_slice() {
                [Bhs::LogoutRequest(l)] => l.clone(),
                other => panic!("{other:?}"),
            };
            m.handle_pdu(
                t0 + S,
                Pdu::new(Bhs::LogoutResponse(LogoutResponse {
                    itt: logout.itt,
                    time2wait: 2,
                    ..LogoutResponse::default()
                })),
            );
            assert_eq!(actions(&mut m), [Action::Close]);
            assert_eq!(m.poll_timeout().map(|t| t - t0), Some(3 * S));
            m.handle_timeout(t0 + 3 * S);
            assert_eq!(actions(&mut m), [connect_to("a")]);
            m.handle_connected(t0 + 3 * S, seq(5, 64));
            let again = command_itt(&mut m);
            m.handle_pdu(t0 + 3 * S, data(again, 0, vec![2; 512], Some(0)));
            assert!(queued.try_recv().unwrap().is_ok());
        }

        /// A machine on portal "a" whose connection closed at `t0` with a read in flight.
        fn lost_with_a_read(timing: Timing, t0: Instant) -> (Machine, Outcome) {
            let mut m = machine(&["a"], timing, t0);
            let rx = read(&mut m, t0, 512);
            command_itt(&mut m);
            m.handle_closed(t0);
            (m, rx)
        }

        /// The target's port refuses every connection the machine asks for.
        fn refuse_connects(m: &mut Machine, now: Instant) {
            for action in actions(m) {
                if let Action::Connect { portal } = action {
                    let reason = "refused".to_string();
                    m.handle_connect_failed(now, IscsiError::Connect { portal, reason });
                }
            }
        }

        #[test]
        fn no_read_waits_longer_than_the_read_timeout() {
            let t0 = Instant::now();
            let timing = Timing {
                read_timeout: 5 * S,
                ..timing()
            };
            let (mut m, mut rx) = lost_with_a_read(timing, t0);
            let mut now = t0;
            while now < t0 + 5 * S {
                refuse_connects(&mut m, now);
                assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
                now = m.poll_timeout().unwrap();
                m.handle_timeout(now);
            }
            assert!(matches!(
                rx.try_recv().unwrap().unwrap_err(),
                IscsiError::TimedOut { secs: 5 }
            ));
        }

        #[test]
        fn giving_up_fails_what_is_outstanding_and_the_next_read_tries_again() {
            let t0 = Instant::now();
            let timing = Timing {
                give_up_after: 3 * S,
                ..timing()
            };
            let (mut m, mut rx) = lost_with_a_read(timing, t0);
            let mut now = t0;
            for _ in 0..100 {
                if rx.try_recv().is_ok() {
                    break;
                }
                refuse_connects(&mut m, now);
                now = m.poll_timeout().unwrap_or(now);
                m.handle_timeout(now);
            }
            assert!(now >= t0 + 3 * S);
            let _later = read(&mut m, now, 512);
            assert_eq!(actions(&mut m), [connect_to("a")]);
        }

        #[test]
        fn shutdown_logs_out_and_finishes() {
            let t0 = Instant::now();
            let mut m = machine(&["a"], timing(), t0);
            let (done, mut told) = oneshot::channel();
            m.handle_shutdown(t0, Some(done));
            let Some(Bhs::LogoutRequest(logout)) = sent(&mut m).pop() else {
                panic!("no logout")
            };
            m.handle_pdu(
                t0,
                Pdu::new(Bhs::LogoutResponse(LogoutResponse {
                    itt: logout.itt,
                    ..LogoutResponse::default()
                })),
            );
            assert_eq!(actions(&mut m), [Action::Close, Action::Finished]);
            assert!(told.try_recv().is_ok());
            let mut late = read(&mut m, t0, 512);
            assert!(matches!(late.try_recv().unwrap(), Err(IscsiError::Closed)));
        }
    }
}
