//! One connection of the target: login, then the full feature phase (RFC 7143 §4.2 command
//! numbering, §11.2–11.7 SCSI Command/Response and Data-In, §11.5–11.6 task management,
//! §11.10–11.11 Text (SendTargets, Appendix C), §11.14–11.15 Logout, §11.17 Reject,
//! §11.18–11.19 NOP) on a single connection per session, ErrorRecoveryLevel 0.
//!
//! The reader decodes PDUs and keeps the command window; each SCSI command runs as its own task
//! (at most [`TASKS_PER_SESSION`] at once, so a flood of commands waits in TCP, not in memory);
//! one writer stamps StatSN/ExpCmdSN/MaxCmdSN in send order and batches PDUs into few writes.
//! Read data is streamed from the source in pieces of [`READ_PIECE`] bytes (a mapped image's in
//! pieces of a burst or more) and cut into Data-In PDUs of the initiator's
//! MaxRecvDataSegmentLength, the status riding in the last one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

use super::export::Payload;
use super::login::{Login, Negotiated, Step, CMD_WINDOW, MAX_RECV_DATA};
use super::scsi::{self, Outcome, Sense};
use super::{Availability, ExportedTarget, LunData, Server};
use crate::iscsi::pdu::{
    self, AsyncMessage, Bhs, DataIn, Framing, LogoutResponse, NopIn, Pdu, PduError, Reject,
    ScsiCommand, ScsiResponse, TaskMgmtResponse, TextResponse, BHS_LEN, RESERVED_TAG,
};
use crate::iscsi::reader::{Buffering, PduReader, ReadError};
use crate::iscsi::text;

/// Commands executing at once in one session.
pub const TASKS_PER_SESSION: usize = 32;
/// Bytes read from the source at a time for one command.
pub const READ_PIECE: usize = 64 * 1024;
/// Bytes taken from a mapped image at a time for one command: slices of the mapping cost no
/// memory, so a whole burst goes out as one Data-In (fewer, larger PDUs for both ends to handle).
const MAPPED_PIECE: usize = 1024 * 1024;
/// How long logout waits for running commands.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes the writer gathers before one write.
const WRITE_BATCH: usize = 1024 * 1024;

/// Reject reasons (§11.17.1).
mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// Serve one TCP (or test) connection until logout, error or EOF.
pub async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    server: Arc<Server>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut pdus = PduReader::new(Framing::default(), Buffering::Frugal);
    let limits = *server.limits();
    let negotiated = match tokio::time::timeout(
        limits.login_timeout,
        login(&mut reader, &mut writer, &mut pdus, peer, &server),
    )
    .await
    {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(_) => {
            tracing::info!(
                "{peer}: login not finished within {:?}: closed",
                limits.login_timeout
            );
            return;
        }
    };
    tracing::info!(
        "{peer}: {} logged in to {}",
        negotiated.initiator_name,
        negotiated
            .target
            .as_ref()
            .map_or("discovery", |t| t.name.as_str())
    );
    let framing = Framing {
        header_digest: negotiated.header_digest,
        data_digest: negotiated.data_digest,
        max_recv_data: MAX_RECV_DATA,
    };
    let shared = Arc::new(Shared {
        exp_cmd_sn: AtomicU32::new(negotiated.exp_cmd_sn),
    });
    let (tx, rx) = mpsc::channel(4 * TASKS_PER_SESSION);
    let writer_task = tokio::spawn(write_loop(
        writer,
        rx,
        framing,
        negotiated.stat_sn,
        shared.clone(),
        limits.nop_timeout,
    ));
    let registration = Registration::new(
        &server,
        SessionHandle {
            target: negotiated.target.clone(),
            tx: tx.downgrade(),
        },
    );
    let mut session = Session {
        peer,
        local,
        server,
        target: negotiated.target.clone(),
        tx,
        shared,
        tasks: Arc::new(Mutex::new(HashMap::new())),
        permits: Arc::new(Semaphore::new(TASKS_PER_SESSION)),
        limits: DataLimits {
            max_xmit: negotiated.max_xmit_data.clamp(512, pdu::MAX_DATA_SEGMENT) as usize,
            max_burst: negotiated.max_burst.max(512) as usize,
            // Data digests are computed in user space, which must not touch mapped pages.
            read_for: if negotiated.data_digest {
                ReadFor::Inspection
            } else {
                ReadFor::Sending
            },
        },
        pending_text: None,
        next_ttt: 1,
    };
    pdus.set_framing(framing);
    let ended = session.run(&mut reader, &mut pdus).await;
    session.abort_all();
    drop(session);
    drop(registration);
    let writer_end = writer_task.await.ok().flatten();
    // One line per connection: the writer's reason when it was the writer that stopped.
    match (ended, writer_end) {
        (Err(End::WriterGone), Some(why)) => tracing::info!("{peer}: connection closed: {why}"),
        (Err(why), _) => tracing::info!("{peer}: connection closed: {why}"),
        (Ok(()), _) => {}
    }
}

/// Why the writer stopped before the session ended it.
#[derive(Debug, thiserror::Error)]
enum WriteEnd {
    /// EFAULT here is a served file truncated under its mapping (see `target::export`).
    #[error("write failed: {0}")]
    Failed(std::io::Error),
    #[error("the initiator took no responses for {0:?}")]
    Stalled(Duration),
}

/// What the server keeps of a session in the full feature phase: its target, and a way to
/// send it PDUs of the server's own (asynchronous messages) that does not keep it alive.
pub(super) struct SessionHandle {
    target: Option<Arc<ExportedTarget>>,
    tx: mpsc::WeakSender<Outgoing>,
}

impl SessionHandle {
    /// `None`: a discovery session.
    pub(super) fn target(&self) -> Option<&Arc<ExportedTarget>> {
        self.target.as_ref()
    }

    /// Ask the initiator to log out within `within` (§11.9.1, AsyncEvent 1, Parameter3 in
    /// seconds); past that, tell it the connection is dropped (AsyncEvent 2) and close it.
    pub(super) fn request_logout(&self, within: Duration) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let seconds = u16::try_from(within.as_secs().max(1)).unwrap_or(u16::MAX);
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let request = AsyncMessage {
                event: 1,
                parameter3: seconds,
                ..Default::default()
            };
            if tx
                .send(Outgoing::new(Bhs::AsyncMessage(request)))
                .await
                .is_err()
            {
                return;
            }
            drop(tx);
            tokio::time::sleep(within).await;
            let Some(tx) = weak.upgrade() else {
                return;
            };
            let drop_notice = AsyncMessage {
                event: 2,
                parameter2: 0,
                parameter3: 0,
                ..Default::default()
            };
            let _ = tx
                .send(Outgoing {
                    close_after: true,
                    ..Outgoing::new(Bhs::AsyncMessage(drop_notice))
                })
                .await;
        });
    }
}

/// A session's place in the server's registry and its target's session count, for as long as
/// the session lives.
struct Registration {
    server: Arc<Server>,
    id: u64,
    target: Option<Arc<ExportedTarget>>,
}

impl Registration {
    fn new(server: &Arc<Server>, handle: SessionHandle) -> Registration {
        let target = handle.target.clone();
        if let Some(t) = &target {
            t.stats.session_started();
        }
        let id = server.register(handle);
        Registration {
            server: server.clone(),
            id,
            target,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.server.unregister(self.id);
        if let Some(t) = &self.target {
            t.stats.session_ended();
        }
    }
}

/// Read login PDUs and answer them until the full feature phase or a refusal.
async fn login<R, W>(
    reader: &mut R,
    writer: &mut W,
    pdus: &mut PduReader,
    peer: SocketAddr,
    server: &Server,
) -> Option<Negotiated>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let framing = pdus.framing();
    let mut challenge = [0u8; 17];
    rand::Rng::fill(&mut rand::thread_rng(), &mut challenge[..]);
    let mut login = Login::new(
        peer.ip(),
        server.exports(),
        server.discovery_chap.clone(),
        server.next_tsih(),
        challenge,
    );
    loop {
        let pdu = match pdus.read(reader).await {
            Ok(Some(pdu)) => pdu,
            Ok(None) => return None,
            Err(why) => {
                tracing::info!("{peer}: during login: {why}");
                return None;
            }
        };
        let Bhs::LoginRequest(req) = &pdu.bhs else {
            tracing::info!("{peer}: expected a Login Request, got {:?}", pdu.opcode());
            return None;
        };
        let (reply, result) = match login.step(req, &pdu.data) {
            Step::Continue(reply) => (reply, None),
            Step::Done(reply, negotiated) => (reply, Some(Ok(*negotiated))),
            Step::Refused(reply, why) => (reply, Some(Err(why))),
        };
        if writer.write_all(&reply.to_bytes(&framing)).await.is_err() {
            return None;
        }
        match result {
            None => continue,
            Some(Ok(negotiated)) => return Some(negotiated),
            Some(Err(why)) => {
                tracing::warn!("{peer}: login refused: {why}");
                let _ = writer.flush().await;
                return None;
            }
        }
    }
}

/// Sequence state the reader shares with the writer.
struct Shared {
    exp_cmd_sn: AtomicU32,
}

/// A PDU for the writer (which stamps its sequence numbers); `close_after`: the connection ends
/// once it is written (logout, target reset); `mapped`: its data segment is pages of a mapped
/// file, which only the kernel may read (see `target::export`), so the writer never copies it.
pub(super) struct Outgoing {
    pdu: Pdu,
    close_after: bool,
    mapped: bool,
}

impl Outgoing {
    fn new(bhs: Bhs) -> Outgoing {
        Outgoing::with_data(bhs, Bytes::new())
    }

    fn with_data(bhs: Bhs, data: Bytes) -> Outgoing {
        Outgoing {
            pdu: Pdu::with_data(bhs, data),
            close_after: false,
            mapped: false,
        }
    }
}

/// How a session reads image bytes: straight from a mapping into the socket, or into memory
/// that user space may read (to compute data digests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFor {
    Sending,
    Inspection,
}

/// Limits on what we send, from the login.
#[derive(Debug, Clone, Copy)]
struct DataLimits {
    max_xmit: usize,
    max_burst: usize,
    read_for: ReadFor,
}

struct Session {
    peer: SocketAddr,
    local: SocketAddr,
    server: Arc<Server>,
    /// `None`: a discovery session.
    target: Option<Arc<ExportedTarget>>,
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<HashMap<u32, AbortHandle>>>,
    permits: Arc<Semaphore>,
    limits: DataLimits,
    /// The rest of a long Text Response, sent when the initiator asks with this TTT.
    pending_text: Option<(u32, Bytes)>,
    next_ttt: u32,
}

/// Why the full feature phase ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("the writer stopped")]
    WriterGone,
    #[error("no answer to NOP-In within {0:?}")]
    NopTimeout(Duration),
    #[error("logged out")]
    Logout,
    #[error("peer closed the connection")]
    Eof,
    #[error("target reset")]
    Reset,
    #[error("the initiator stopped reading responses")]
    Stalled,
}

impl Session {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        pdus: &mut PduReader,
    ) -> Result<(), End> {
        let (nop_interval, nop_timeout) = {
            let limits = self.server.limits();
            (limits.nop_interval, limits.nop_timeout)
        };
        let mut ping_sent: Option<tokio::time::Instant> = None;
        loop {
            let wait = match ping_sent {
                Some(at) => nop_timeout.saturating_sub(at.elapsed()),
                None => nop_interval,
            };
            let read = tokio::select! {
                read = tokio::time::timeout(wait, pdus.read(reader)) => read,
                // The writer ended (the initiator stopped taking responses, a write failed):
                // nothing more can be answered.
                _ = self.tx.closed() => return Err(End::WriterGone),
            };
            let pdu = match read {
                Err(_) if ping_sent.is_some() => return Err(End::NopTimeout(nop_timeout)),
                Err(_) => {
                    ping_sent = Some(tokio::time::Instant::now());
                    let ttt = self.take_ttt();
                    let ping = NopIn {
                        itt: RESERVED_TAG,
                        ttt,
                        ..Default::default()
                    };
                    self.send(Pdu::new(Bhs::NopIn(ping))).await?;
                    continue;
                }
                Ok(Ok(Some(pdu))) => pdu,
                Ok(Ok(None)) => return Err(End::Eof),
                Ok(Err(ReadError::Dropped { error, header })) => {
                    ping_sent = None;
                    let reason = if error == PduError::DataDigest {
                        reject::DATA_DIGEST
                    } else {
                        reject::INVALID_PDU_FIELD
                    };
                    self.reject(reason, header).await?;
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
            };
            ping_sent = None;
            self.dispatch(pdu).await?;
        }
    }

    async fn dispatch(&mut self, pdu: Pdu) -> Result<(), End> {
        let header = pdu.bhs.to_bytes();
        match pdu.bhs {
            Bhs::ScsiCommand(cmd) => {
                if !self.in_window(cmd.immediate, cmd.cmd_sn) {
                    return Ok(());
                }
                let Some(target) = self.target.clone() else {
                    return self.reject(reject::PROTOCOL_ERROR, header).await;
                };
                self.start_command(cmd, pdu.data, target).await
            }
            Bhs::NopOut(nop) => {
                if !self.in_window(nop.immediate, nop.cmd_sn) || nop.itt == RESERVED_TAG {
                    // An answer to our ping (or out of window): nothing to send.
                    return Ok(());
                }
                let reply = NopIn {
                    lun: nop.lun,
                    itt: nop.itt,
                    ttt: RESERVED_TAG,
                    ..Default::default()
                };
                let echo = pdu.data.slice(..pdu.data.len().min(self.limits.max_xmit));
                self.send(Pdu::with_data(Bhs::NopIn(reply), echo)).await
            }
            Bhs::TextRequest(req) => {
                if !self.in_window(req.immediate, req.cmd_sn) {
                    return Ok(());
                }
                let body = if req.ttt != RESERVED_TAG {
                    match self.pending_text.take() {
                        Some((ttt, rest)) if ttt == req.ttt => rest,
                        _ => return self.reject(reject::INVALID_PDU_FIELD, header).await,
                    }
                } else {
                    self.pending_text = None;
                    match text::parse(&pdu.data) {
                        Ok(pairs) => self.text_answer(&pairs),
                        Err(_) => return self.reject(reject::INVALID_PDU_FIELD, header).await,
                    }
                };
                let (chunk, rest) = if body.len() > self.limits.max_xmit {
                    (
                        body.slice(..self.limits.max_xmit),
                        Some(body.slice(self.limits.max_xmit..)),
                    )
                } else {
                    (body, None)
                };
                let ttt = match rest {
                    Some(rest) => {
                        let ttt = self.take_ttt();
                        self.pending_text = Some((ttt, rest));
                        ttt
                    }
                    None => RESERVED_TAG,
                };
                let resp = TextResponse {
                    fin: ttt == RESERVED_TAG,
                    cont: ttt != RESERVED_TAG,
                    lun: req.lun,
                    itt: req.itt,
                    ttt,
                    ..Default::default()
                };
                self.send(Pdu::with_data(Bhs::TextResponse(resp), chunk))
                    .await
            }
            Bhs::TaskMgmtRequest(tmf) => {
                if !self.in_window(tmf.immediate, tmf.cmd_sn) {
                    return Ok(());
                }
                let response = self.task_management(tmf.function, tmf.lun, tmf.referenced_tag);
                let resp = TaskMgmtResponse {
                    response,
                    itt: tmf.itt,
                    ..Default::default()
                };
                let cold_reset = tmf.function == 7 && response == 0;
                self.queue(Outgoing {
                    close_after: cold_reset,
                    ..Outgoing::new(Bhs::TaskMgmtResponse(resp))
                })
                .await?;
                if cold_reset {
                    return Err(End::Reset);
                }
                Ok(())
            }
            Bhs::LogoutRequest(req) => {
                self.in_window(req.immediate, req.cmd_sn);
                // Let running commands finish so their responses precede the logout response.
                let all = TASKS_PER_SESSION as u32;
                let _drained =
                    tokio::time::timeout(DRAIN_TIMEOUT, self.permits.acquire_many(all)).await;
                let response = match req.reason {
                    0 | 1 => 0,
                    _ => 2, // connection recovery is not supported
                };
                let resp = LogoutResponse {
                    response,
                    itt: req.itt,
                    ..Default::default()
                };
                self.queue(Outgoing {
                    close_after: true,
                    ..Outgoing::new(Bhs::LogoutResponse(resp))
                })
                .await?;
                Err(End::Logout)
            }
            // No R2T is ever sent, so Data-Out is unsolicited data for a refused write: dropped.
            Bhs::DataOut(_) => Ok(()),
            Bhs::Unknown(_) => self.reject(reject::COMMAND_NOT_SUPPORTED, header).await,
            // SNACK needs ErrorRecoveryLevel > 0; a login or any target-to-initiator PDU here
            // is a protocol error.
            _ => self.reject(reject::PROTOCOL_ERROR, header).await,
        }
    }

    /// Check CmdSN against the window (§4.2.2.1) and advance ExpCmdSN. Out of window: ignore.
    fn in_window(&self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        let exp = self.shared.exp_cmd_sn.load(Ordering::Acquire);
        // Serial number arithmetic (RFC 1982): distance from ExpCmdSN within the window.
        let ahead = cmd_sn.wrapping_sub(exp);
        if ahead >= CMD_WINDOW {
            tracing::debug!(
                "{}: CmdSN {cmd_sn} outside [{exp}, +{CMD_WINDOW})",
                self.peer
            );
            return false;
        }
        self.shared
            .exp_cmd_sn
            .store(cmd_sn.wrapping_add(1), Ordering::Release);
        true
    }

    async fn start_command(
        &mut self,
        cmd: ScsiCommand,
        data_out: Bytes,
        target: Arc<ExportedTarget>,
    ) -> Result<(), End> {
        // All permits held for this long means the initiator stopped reading responses.
        let nop_timeout = self.server.limits().nop_timeout;
        let permit = tokio::time::timeout(nop_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| End::Stalled)?
            .map_err(|_| End::WriterGone)?;
        let tx = self.tx.clone();
        let limits = self.limits;
        let itt = cmd.itt;
        let mut work = Box::pin(async move {
            let result = run_command(cmd, data_out, &target, &tx, limits).await;
            drop(permit);
            result
        });
        // Most commands (a page-cached file, a cache hit) finish without waiting: run them here
        // and save a task and two thread hops. One that waits goes on as its own task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if work.as_mut().poll(&mut cx).is_ready() {
            return Ok(());
        }
        let tasks = self.tasks.clone();
        let mut registry = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let handle = tokio::spawn(async move {
            let result = work.await;
            tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&itt);
            result
        });
        registry.insert(itt, handle.abort_handle());
        Ok(())
    }

    /// Task management (§11.5.1): returns the response code.
    fn task_management(&self, function: u8, lun: u64, referenced: u32) -> u8 {
        const COMPLETE: u8 = 0;
        const NO_LUN: u8 = 2;
        const REASSIGN_UNSUPPORTED: u8 = 4;
        const NOT_SUPPORTED: u8 = 5;
        let lun_scoped = matches!(function, 1..=5);
        if lun_scoped && lun != 0 {
            return NO_LUN;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        match function {
            // ABORT TASK: the task is gone when we answer (or had completed already).
            1 => {
                if let Some(handle) = tasks.remove(&referenced) {
                    handle.abort();
                }
                COMPLETE
            }
            // ABORT TASK SET, CLEAR ACA, CLEAR TASK SET, LUN RESET, TARGET WARM/COLD RESET.
            2..=7 => {
                for (_, handle) in tasks.drain() {
                    handle.abort();
                }
                COMPLETE
            }
            8 => REASSIGN_UNSUPPORTED,
            _ => NOT_SUPPORTED,
        }
    }

    fn abort_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, handle) in tasks.drain() {
            handle.abort();
        }
    }

    /// The answer to a Text Request: SendTargets (Appendix C) lists what this initiator may see;
    /// anything else is negotiated with the login rules.
    fn text_answer(&self, pairs: &[(String, String)]) -> Bytes {
        let mut answer: Vec<(String, String)> = Vec::new();
        for (key, value) in pairs {
            if key == "SendTargets" {
                let portal = match self.local {
                    SocketAddr::V4(a) => format!("{}:{},1", a.ip(), a.port()),
                    SocketAddr::V6(a) => format!("[{}]:{},1", a.ip(), a.port()),
                };
                let exports = self.server.exports();
                let visible = exports
                    .iter()
                    .filter(|t| t.allow.allows(self.peer.ip()))
                    .filter(|t| match (&self.target, value.as_str()) {
                        // A normal session reports only its own target.
                        (Some(own), _) => Arc::ptr_eq(own, t),
                        (None, "All") => true,
                        (None, name) => t.name.eq_ignore_ascii_case(name),
                    });
                for t in visible {
                    answer.push(("TargetName".into(), t.name.clone()));
                    answer.push(("TargetAddress".into(), portal.clone()));
                }
            } else if let Some(reply) = text::respond(key, value, "") {
                answer.push((key.clone(), reply));
            }
        }
        text::encode(&answer)
    }

    fn take_ttt(&mut self) -> u32 {
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        ttt
    }

    async fn reject(&self, reason: u8, header: [u8; BHS_LEN]) -> Result<(), End> {
        let bhs = Bhs::Reject(Reject {
            reason,
            ..Default::default()
        });
        self.send(Pdu::with_data(bhs, Bytes::copy_from_slice(&header)))
            .await
    }

    async fn send(&self, pdu: Pdu) -> Result<(), End> {
        self.queue(Outgoing {
            pdu,
            close_after: false,
            mapped: false,
        })
        .await
    }

    async fn queue(&self, out: Outgoing) -> Result<(), End> {
        self.tx.send(out).await.map_err(|_| End::WriterGone)
    }
}

/// Execute one SCSI command and send its Data-In and status. `data_out` is the command's
/// immediate data (the only Data-Out this target takes: it never sends R2T).
async fn run_command(
    cmd: ScsiCommand,
    data_out: Bytes,
    target: &ExportedTarget,
    tx: &mpsc::Sender<Outgoing>,
    limits: DataLimits,
) -> Result<(), ()> {
    let outcome = if let Availability::Withdrawn(_) = target.availability() {
        // The image is gone: its LUN with it.
        Outcome::Check(Sense::LUN_NOT_SUPPORTED)
    } else if cmd.lun == 0 {
        target.lun.execute(&cmd.cdb)
    } else {
        scsi::execute_without_lun(&cmd.cdb)
    };
    let expected = if cmd.read {
        u64::from(cmd.expected_length)
    } else {
        0
    };
    match outcome {
        Outcome::Good => send_status(tx, &cmd, 0, Residual::of(0, expected), None).await,
        Outcome::Check(sense) => send_status(tx, &cmd, 2, Residual::None, Some(sense)).await,
        Outcome::Data(data) => {
            let residual = Residual::of(data.len() as u64, expected);
            let mut data = Bytes::from(data);
            data.truncate(expected as usize);
            if data.is_empty() {
                return send_status(tx, &cmd, 0, residual, None).await;
            }
            let mut stream = DataInStream::new(&cmd, limits, data.len() as u64);
            stream.send(tx, Payload::Owned(data), residual).await
        }
        Outcome::Compare { offset, len } => {
            if data_out.len() as u64 != len || !cmd.write {
                let sense = Some(Sense::INVALID_FIELD_IN_CDB);
                return send_status(tx, &cmd, 2, Residual::None, sense).await;
            }
            let sense = match compare(target, offset, &data_out).await {
                Ok(true) => None,
                Ok(false) => Some(Sense::MISCOMPARE_DURING_VERIFY),
                Err(why) => {
                    tracing::warn!("{}: verify read at {offset} failed: {why}", target.name);
                    Some(Sense::UNRECOVERED_READ_ERROR)
                }
            };
            let status = if sense.is_some() { 2 } else { 0 };
            send_status(tx, &cmd, status, Residual::None, sense).await
        }
        Outcome::Read { offset, len } => {
            let residual = Residual::of(len, expected);
            let total = len.min(expected);
            if total == 0 {
                return send_status(tx, &cmd, 0, residual, None).await;
            }
            let mut stream = DataInStream::new(&cmd, limits, total);
            let piece_len = match (&target.data, limits.read_for) {
                (LunData::Mapped(_), ReadFor::Sending) => MAPPED_PIECE,
                _ => READ_PIECE,
            };
            let mut done = 0u64;
            while done < total {
                let piece = (total - done).min(piece_len as u64) as usize;
                match read_padded(target, offset + done, piece, limits.read_for).await {
                    Ok(data) => {
                        target.stats.add_bytes_read(data.len() as u64);
                        stream.send(tx, data, residual).await?
                    }
                    Err(why) => {
                        tracing::warn!(
                            "{}: read of {piece} bytes at {} failed: {why}",
                            target.name,
                            offset + done
                        );
                        let sense = Some(Sense::UNRECOVERED_READ_ERROR);
                        return send_status(tx, &cmd, 2, Residual::None, sense).await;
                    }
                }
                done += piece as u64;
            }
            Ok(())
        }
    }
}

/// Residual count of a command (§11.4.5): what the initiator expected versus what there was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Residual {
    None,
    Overflow(u32),
    Underflow(u32),
}

impl Residual {
    fn of(have: u64, expected: u64) -> Residual {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        match have.cmp(&expected) {
            std::cmp::Ordering::Equal => Residual::None,
            std::cmp::Ordering::Greater => Residual::Overflow(clamp(have - expected)),
            std::cmp::Ordering::Less => Residual::Underflow(clamp(expected - have)),
        }
    }

    fn flags(self) -> (bool, bool, u32) {
        match self {
            Residual::None => (false, false, 0),
            Residual::Overflow(n) => (true, false, n),
            Residual::Underflow(n) => (false, true, n),
        }
    }
}

async fn send_status(
    tx: &mpsc::Sender<Outgoing>,
    cmd: &ScsiCommand,
    status: u8,
    residual: Residual,
    sense: Option<Sense>,
) -> Result<(), ()> {
    let (overflow, underflow, residual) = residual.flags();
    let resp = ScsiResponse {
        overflow,
        underflow,
        residual,
        status,
        itt: cmd.itt,
        ..Default::default()
    };
    let data = sense.map_or_else(Bytes::new, |s| pdu::sense_segment(&s.fixed()));
    let out = Outgoing::with_data(Bhs::ScsiResponse(resp), data);
    tx.send(out).await.map_err(|_| ())
}

/// The Data-In PDUs of one command: DataSN, buffer offset, sequence (burst) boundaries, and
/// the GOOD status with the residual in the last one.
struct DataInStream {
    itt: u32,
    lun: u64,
    limits: DataLimits,
    total: u64,
    sent: u64,
    data_sn: u32,
    in_burst: usize,
}

impl DataInStream {
    fn new(cmd: &ScsiCommand, limits: DataLimits, total: u64) -> DataInStream {
        DataInStream {
            itt: cmd.itt,
            lun: cmd.lun,
            limits,
            total,
            sent: 0,
            data_sn: 0,
            in_burst: 0,
        }
    }

    async fn send(
        &mut self,
        tx: &mpsc::Sender<Outgoing>,
        mut data: Payload,
        residual: Residual,
    ) -> Result<(), ()> {
        while !data.is_empty() {
            let room = (self.limits.max_burst - self.in_burst).min(self.limits.max_xmit);
            let chunk = data.split_to(room.min(data.len()));
            let offset = self.sent;
            self.sent += chunk.len() as u64;
            self.in_burst += chunk.len();
            let last = self.sent >= self.total;
            let end_of_burst = last || self.in_burst >= self.limits.max_burst;
            if end_of_burst {
                self.in_burst = 0;
            }
            let (overflow, underflow, residual) = if last {
                residual.flags()
            } else {
                (false, false, 0)
            };
            let bhs = DataIn {
                fin: end_of_burst,
                status: last.then_some(0),
                overflow,
                underflow,
                residual,
                lun: self.lun,
                itt: self.itt,
                ttt: RESERVED_TAG,
                data_sn: self.data_sn,
                buffer_offset: offset as u32,
                ..Default::default()
            };
            self.data_sn = self.data_sn.wrapping_add(1);
            let (data, mapped) = match chunk {
                Payload::Owned(b) => (b, false),
                Payload::Mapped(b) => (b, true),
            };
            let out = Outgoing {
                pdu: Pdu::with_data(Bhs::DataIn(bhs), data),
                close_after: false,
                mapped,
            };
            tx.send(out).await.map_err(|_| ())?;
        }
        Ok(())
    }
}

/// Whether `expected` equals the image at `offset`, read piece by piece.
async fn compare(
    target: &ExportedTarget,
    offset: u64,
    expected: &[u8],
) -> Result<bool, crate::source::SourceError> {
    for (i, want) in expected.chunks(READ_PIECE).enumerate() {
        let at = offset + (i * READ_PIECE) as u64;
        let got = read_padded(target, at, want.len(), ReadFor::Inspection).await?;
        if got.bytes().as_ref() != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Read `len` bytes at `offset`; the part past the image's end (a partial last block) is zeros.
/// Bytes to inspect, and a padded block, are always ordinary memory.
async fn read_padded(
    target: &ExportedTarget,
    offset: u64,
    len: usize,
    read_for: ReadFor,
) -> Result<Payload, crate::source::SourceError> {
    let size = target.lun.size();
    let available = size.saturating_sub(offset).min(len as u64) as usize;
    let data = if available == 0 {
        Payload::Owned(Bytes::new())
    } else if read_for == ReadFor::Sending && available == len {
        target.data.read_to_send(offset, len).await?
    } else {
        Payload::Owned(target.data.read_to_inspect(offset, available).await?)
    };
    if data.len() != available {
        return Err(crate::source::SourceError::Io(format!(
            "source returned {} bytes instead of {available}",
            data.len()
        )));
    }
    if available == len {
        return Ok(data);
    }
    let mut padded = BytesMut::with_capacity(len);
    padded.extend_from_slice(data.bytes());
    padded.resize(len, 0);
    Ok(Payload::Owned(padded.freeze()))
}

/// Stamp sequence numbers in send order, batch PDUs, write them. Headers and small data
/// segments are gathered into one buffer; large data segments, and any pages of a mapped file,
/// go out as they are (vectored writes), so read data is not copied again on its way to the
/// socket. Each batch must be taken by the initiator within `stall_limit`. An idle writer
/// holds no buffer.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    framing: Framing,
    mut stat_sn: u32,
    shared: Arc<Shared>,
    stall_limit: Duration,
) -> Option<WriteEnd> {
    const COPY_BELOW: usize = 4096;
    const BATCH_BUFFER: usize = 64 * 1024;
    let mut small = BytesMut::new();
    let mut segments: VecDeque<Bytes> = VecDeque::new();
    while let Some(first) = rx.recv().await {
        small.reserve(BATCH_BUFFER);
        let mut close = false;
        let mut queued = 0usize;
        let mut next = Some(first);
        while let Some(mut out) = next.take() {
            let exp = shared.exp_cmd_sn.load(Ordering::Acquire);
            stamp(
                &mut out.pdu.bhs,
                &mut stat_sn,
                exp,
                exp.wrapping_add(CMD_WINDOW - 1),
            );
            let pdu = &out.pdu;
            pdu.encode_header(&framing, &mut small);
            let data_len = pdu.wire_data().len();
            if data_len >= COPY_BELOW || (out.mapped && data_len > 0) {
                segments.push_back(small.split().freeze());
                segments.push_back(pdu.data.slice(..data_len));
            } else {
                small.extend_from_slice(pdu.wire_data());
            }
            pdu.encode_trailer(&framing, &mut small);
            queued += BHS_LEN + data_len;
            if out.close_after {
                close = true;
                break;
            }
            if queued < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !small.is_empty() {
            segments.push_back(small.split().freeze());
        }
        match tokio::time::timeout(stall_limit, write_all_segments(&mut writer, &mut segments))
            .await
        {
            Ok(Ok(())) => {}
            // Closing our side tells the initiator at once, and a well-behaved one closes its
            // side, which ends the reader too.
            Ok(Err(e)) => {
                let _ = writer.shutdown().await;
                return Some(WriteEnd::Failed(e));
            }
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_millis(100), writer.shutdown()).await;
                return Some(WriteEnd::Stalled(stall_limit));
            }
        }
        if close {
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
            return None;
        }
        if rx.is_empty() {
            small = BytesMut::new();
        }
    }
    let _ = writer.shutdown().await;
    None
}

/// Write every segment, in order, with as few system calls as the socket allows.
async fn write_all_segments<W: AsyncWrite + Unpin>(
    writer: &mut W,
    segments: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    const MAX_SLICES: usize = 64;
    while !segments.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> = segments
            .iter()
            .take(MAX_SLICES)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = segments.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                segments.pop_front();
            } else {
                let _ = front.split_to(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// Fill StatSN (advancing it for PDUs that carry status), ExpCmdSN and MaxCmdSN (§4.2.2).
fn stamp(bhs: &mut Bhs, stat_sn: &mut u32, exp: u32, max: u32) {
    let mut next = || {
        let sn = *stat_sn;
        *stat_sn = stat_sn.wrapping_add(1);
        sn
    };
    match bhs {
        Bhs::ScsiResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (next(), exp, max),
        Bhs::DataIn(p) => {
            if p.status.is_some() {
                p.stat_sn = next();
            }
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp, max);
        }
        Bhs::NopIn(p) => {
            // A ping (ITT reserved) shows the next StatSN without advancing it.
            p.stat_sn = if p.itt == RESERVED_TAG {
                *stat_sn
            } else {
                next()
            };
            (p.exp_cmd_sn, p.max_cmd_sn) = (exp, max);
        }
        Bhs::TextResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (next(), exp, max),
        Bhs::TaskMgmtResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (next(), exp, max),
        Bhs::LogoutResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (next(), exp, max),
        Bhs::Reject(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (next(), exp, max),
        _ => {}
    }
}
