//! The tokio side of the initiator: [`Conn`], one TCP connection in the login and setup phase
//! (one request at a time: login, the LUN probe, SendTargets, logout), and [`Driver`], the task
//! that runs the full-feature phase's [`Machine`] over a connection: it reads PDUs with the one
//! [`PduReader`], writes what the machine transmits, opens new connections when it asks
//! (through [`Reconnect`]) and wakes it at its deadlines.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::login::{Login, LoginConfig, LoginError, LoginOutcome, LoginStep};
use super::pdu::{self, Bhs, Framing, Pdu, RESERVED_TAG};
use super::reader::{Buffering, PduReader, ReadError};
use super::session::{
    framing_for, logout_request, nop_reply, note_sequence, progress, Action, Assembly,
    CommandOutcome, CommandSpec, Machine, Progress, Reply, Seq, Timing,
};
use super::text::Params;
use super::IscsiError;

/// Most Text Request/Response exchanges of one text negotiation (continuations included).
const MAX_TEXT_EXCHANGES: usize = 64;
/// Most PDUs one batch of setup commands may take (Data-In segments, NOP-Ins) before the
/// target is held to be stuck.
const MAX_SETUP_PDUS: usize = 100_000;

/// A TCP connection in the login or setup phase: one request at a time.
pub struct Conn {
    stream: TcpStream,
    pdus: PduReader,
    pub portal: String,
    timeout: Duration,
    exchanges: u32,
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
                        pdus: PduReader::new(Framing::default(), Buffering::Aligned),
                        portal: portal.to_string(),
                        timeout,
                        exchanges: 1,
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

    fn lost(&self, reason: impl Into<String>) -> IscsiError {
        IscsiError::Lost {
            portal: self.portal.clone(),
            reason: reason.into(),
        }
    }

    pub async fn send(&mut self, pdu: &Pdu) -> Result<(), IscsiError> {
        let bytes = pdu.to_bytes(&self.pdus.framing());
        self.write(&bytes).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), IscsiError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| self.lost("timed out sending"))?
            .map_err(|e| self.lost(e.to_string()))
    }

    /// Request/response exchanges on this connection so far, its TCP handshake included: login
    /// requests, and flights of commands sent together.
    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    pub async fn recv(&mut self) -> Result<Pdu, IscsiError> {
        match tokio::time::timeout(self.timeout, self.pdus.read(&mut self.stream)).await {
            Err(_) => Err(self.lost("no response from the target")),
            Ok(Ok(Some(pdu))) => Ok(pdu),
            Ok(Ok(None)) => Err(self.lost("connection closed by the target")),
            Ok(Err(e @ (ReadError::Io(_) | ReadError::Truncated))) => Err(self.lost(e.to_string())),
            Ok(Err(e)) => Err(self.protocol(e.to_string())),
        }
    }

    /// Run a login to completion, within the connection's timeout in all.
    pub async fn login(
        &mut self,
        cfg: LoginConfig,
        itt: u32,
    ) -> Result<LoginOutcome, LoginFailure> {
        let limit = self.timeout;
        tokio::time::timeout(limit, self.login_exchanges(cfg, itt))
            .await
            .unwrap_or_else(|_| {
                Err(LoginFailure::Io(self.lost(format!(
                    "login took longer than {}s",
                    limit.as_secs()
                ))))
            })
    }

    async fn login_exchanges(
        &mut self,
        cfg: LoginConfig,
        itt: u32,
    ) -> Result<LoginOutcome, LoginFailure> {
        let (mut login, first) = Login::start(cfg, itt, 1);
        self.exchanges += 1;
        self.send(&first).await.map_err(LoginFailure::Io)?;
        loop {
            let pdu = self.recv().await.map_err(LoginFailure::Io)?;
            match login.receive(pdu).map_err(LoginFailure::Refused)? {
                LoginStep::Send(next) => {
                    self.exchanges += 1;
                    self.send(&next).await.map_err(LoginFailure::Io)?
                }
                LoginStep::Redirect(address) => return Err(LoginFailure::Redirect(address)),
                LoginStep::Done(outcome) => {
                    self.pdus.set_framing(framing_for(&outcome.params));
                    return Ok(outcome);
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
        let mut outcomes = self
            .commands(seq, std::slice::from_ref(spec), |_, _| false)
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| self.protocol("command never completed"))
    }

    /// Run several SCSI commands at once (pipelined: sent together as far as the CmdSN window
    /// allows) and wait for every one to end, answering target NOP-Ins meanwhile. A command
    /// whose outcome `again(index, outcome)` declines is sent again at once, with the next
    /// flight. The outcomes are in the order of `specs`.
    pub async fn commands(
        &mut self,
        seq: &mut Seq,
        specs: &[CommandSpec],
        mut again: impl FnMut(usize, &CommandOutcome) -> bool,
    ) -> Result<Vec<CommandOutcome>, IscsiError> {
        let mut unsent: VecDeque<usize> = (0..specs.len()).collect();
        // (ITT, index in `specs`, Data-In so far) of each command in flight.
        let mut in_flight: Vec<(u32, usize, Assembly)> = Vec::with_capacity(specs.len());
        let mut outcomes: Vec<Option<CommandOutcome>> = specs.iter().map(|_| None).collect();
        for _ in 0..MAX_SETUP_PDUS {
            let mut flight = BytesMut::new();
            while seq.window_open() {
                let Some(at) = unsent.pop_front() else { break };
                let itt = seq.itt();
                specs[at]
                    .pdu(itt, seq)
                    .encode(&self.pdus.framing(), &mut flight);
                seq.cmd_sn = seq.cmd_sn.wrapping_add(1);
                in_flight.push((itt, at, Assembly::Empty));
            }
            if !flight.is_empty() {
                self.exchanges += 1;
                self.write(&flight).await?;
            }
            if in_flight.is_empty() && unsent.is_empty() {
                return Ok(outcomes.into_iter().flatten().collect());
            }
            let pdu = self.recv().await?;
            note_sequence(seq, &pdu.bhs);
            let itt = match &pdu.bhs {
                Bhs::DataIn(d) => d.itt,
                Bhs::ScsiResponse(r) => r.itt,
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
            };
            let Some(slot) = in_flight.iter().position(|(t, _, _)| *t == itt) else {
                return Err(
                    self.protocol(format!("response for ITT {itt:#x}, which was never issued"))
                );
            };
            let (_, at, data) = &mut in_flight[slot];
            let at = *at;
            match progress(pdu, specs[at].read_len, data).map_err(|e| self.protocol(e))? {
                Progress::More => {}
                Progress::Done(outcome) => {
                    in_flight.swap_remove(slot);
                    if again(at, &outcome) {
                        unsent.push_back(at);
                    } else {
                        outcomes[at] = Some(outcome);
                    }
                }
            }
        }
        Err(self.protocol("commands never completed"))
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
        for _ in 0..MAX_TEXT_EXCHANGES {
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

    fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf, PduReader) {
        let (r, w) = self.stream.into_split();
        (r, w, self.pdus)
    }
}

/// Why a login did not happen.
#[derive(Debug)]
pub enum LoginFailure {
    Io(IscsiError),
    Refused(LoginError),
    /// Log in at this address instead.
    Redirect(String),
}

/// How the session reaches its target again after a loss: connect, log in, check identity.
/// Implemented by the LUN layer, which knows what "the same LUN" means.
#[async_trait::async_trait]
pub trait Reconnect: Send + Sync + 'static {
    /// A fresh logged-in, verified connection to `portal`.
    async fn reconnect(&self, portal: &str) -> Result<(Conn, Seq, Params), IscsiError>;
}

/// A request to the session driver.
pub enum Request {
    Command(CommandSpec, Reply),
    Logout(oneshot::Sender<()>),
}

/// Shared, observable facts of the running session.
#[derive(Debug)]
pub struct Shared {
    pub portal: Mutex<String>,
    pub params: Mutex<Params>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<(Conn, Seq, Params), IscsiError>> + Send>>;

/// Runs a [`Machine`] over tokio.
pub struct Driver;

impl Driver {
    /// Start the driver on a logged-in connection to `portals[current]`.
    pub fn spawn(
        conn: Conn,
        seq: Seq,
        portals: Vec<String>,
        current: usize,
        timing: Timing,
        reconnect: Arc<dyn Reconnect>,
        shared: Arc<Shared>,
    ) -> mpsc::Sender<Request> {
        let (tx, rx) = mpsc::channel(1024);
        let machine = Machine::new(timing, portals, current, seq, now());
        tokio::spawn(run(machine, conn, rx, reconnect, shared));
        tx
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn run(
    mut machine: Machine,
    conn: Conn,
    mut rx: mpsc::Receiver<Request>,
    reconnect: Arc<dyn Reconnect>,
    shared: Arc<Shared>,
) {
    let (r, w, pdus) = conn.into_split();
    let mut reader = Some((r, pdus));
    let mut writer = Some(w);
    let mut framing = reader
        .as_ref()
        .map_or_else(Framing::default, |(_, p)| p.framing());
    let mut wbuf = BytesMut::new();
    let mut connecting: Option<Connecting> = None;
    let mut requests_open = true;
    loop {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Close => {
                    reader = None;
                    writer = None;
                    wbuf.clear();
                }
                Action::Connect { portal } => {
                    let reconnect = reconnect.clone();
                    connecting = Some(Box::pin(async move { reconnect.reconnect(&portal).await }));
                }
                Action::Finished => {
                    if let Some(mut w) = writer.take() {
                        let _ = w.shutdown().await;
                    }
                    return;
                }
            }
        }
        while let Some(pdu) = machine.poll_transmit() {
            if writer.is_some() {
                pdu.encode(&framing, &mut wbuf);
            }
        }
        if let Some(w) = &writer {
            if let Err(e) = flush(w, &mut wbuf) {
                machine.handle_send_error(now(), e);
                continue;
            }
        }
        let deadline = machine.poll_timeout();
        let take_requests = requests_open && machine.wants_requests();
        tokio::select! {
            read = fill(&mut reader) => {
                let now = now();
                match read {
                    Ok(0) => machine.handle_closed(now),
                    Ok(_) => {
                        machine.handle_bytes(now);
                        if let Some((_, pdus)) = &mut reader {
                            loop {
                                match pdus.buffered() {
                                    Ok(Some(pdu)) => machine.handle_pdu(now, pdu),
                                    Ok(None) => break,
                                    Err(e) => {
                                        machine.handle_read_error(now, e);
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => machine.handle_read_error(now, e),
                }
            }
            request = rx.recv(), if take_requests => {
                let now = now();
                match request {
                    Some(Request::Command(spec, reply)) => {
                        machine.handle_request(now, spec, reply);
                        while machine.wants_requests() {
                            match rx.try_recv() {
                                Ok(Request::Command(spec, reply)) => {
                                    machine.handle_request(now, spec, reply)
                                }
                                Ok(Request::Logout(done)) => {
                                    machine.handle_shutdown(now, Some(done));
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Some(Request::Logout(done)) => machine.handle_shutdown(now, Some(done)),
                    None => {
                        requests_open = false;
                        machine.handle_shutdown(now, None);
                    }
                }
            }
            made = connected(&mut connecting) => {
                connecting = None;
                let now = now();
                match made {
                    Ok((conn, seq, params)) => {
                        *lock(&shared.portal) = conn.portal.clone();
                        *lock(&shared.params) = params;
                        let (r, w, pdus) = conn.into_split();
                        framing = pdus.framing();
                        reader = Some((r, pdus));
                        writer = Some(w);
                        wbuf.clear();
                        tracing::info!("reconnected to {}", machine.portal());
                        machine.handle_connected(now, seq);
                    }
                    Err(e) => machine.handle_connect_failed(now, e),
                }
            }
            _ = sleep_until(deadline) => machine.handle_timeout(now()),
            writable = writable(&writer, !wbuf.is_empty()) => {
                if let Err(e) = writable {
                    machine.handle_send_error(now(), e);
                }
            }
        }
    }
}

async fn fill(reader: &mut Option<(OwnedReadHalf, PduReader)>) -> Result<usize, ReadError> {
    match reader {
        Some((r, pdus)) => pdus.fill(r).await,
        None => std::future::pending().await,
    }
}

async fn connected(connecting: &mut Option<Connecting>) -> Result<(Conn, Seq, Params), IscsiError> {
    match connecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn writable(writer: &Option<OwnedWriteHalf>, waiting: bool) -> std::io::Result<()> {
    match writer {
        Some(w) if waiting => w.writable().await,
        _ => std::future::pending().await,
    }
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

    /// A scripted target on a loopback socket: drives the real driver through a NOP-In, an
    /// asynchronous logout request, a hostile PDU, and reconnects, and checks what it sends.
    mod scripted {
        use super::*;
        use crate::iscsi::pdu::{AsyncMessage, DataIn, LogoutResponse, NopIn, ScsiCommand};
        use crate::iscsi::session::DataLength;
        use bytes::Bytes;
        use tokio::io::AsyncReadExt;
        use tokio::net::TcpListener;

        struct Fake {
            portal: String,
        }

        #[async_trait::async_trait]
        impl Reconnect for Fake {
            async fn reconnect(&self, portal: &str) -> Result<(Conn, Seq, Params), IscsiError> {
                assert_eq!(portal, self.portal);
                let conn = Conn::connect(&self.portal, Duration::from_secs(5)).await?;
                Ok((conn, test_seq(), Params::default()))
            }
        }

        fn test_seq() -> Seq {
            Seq::new(
                &crate::iscsi::login::LoginOutcome {
                    params: Params::default(),
                    tsih: 1,
                    cmd_sn: 1,
                    exp_stat_sn: 1,
                    max_cmd_sn: 64,
                    target_alias: None,
                    exchanges: 1,
                },
                1,
            )
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

        /// Setup commands go out together as far as the CmdSN window allows (two here, as tgtd
        /// opens it at login); the rest follow as soon as a response opens it, with a command
        /// the caller wants sent again (a UNIT ATTENTION) in the same flight. Outcomes come back
        /// in the caller's order.
        #[tokio::test]
        async fn setup_commands_fill_the_window_and_resend_in_the_next_flight() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let portal = listener.local_addr().unwrap().to_string();
            let mut conn = Conn::connect(&portal, Duration::from_secs(5))
                .await
                .unwrap();
            let mut peer = Peer::accept(&listener).await;
            let spec = |lba| CommandSpec {
                lun: 0,
                cdb: crate::scsi::read(crate::scsi::ReadKind::Disk, lba, 1).unwrap(),
                read_len: 4,
                expect: DataLength::AtMost,
            };
            let specs: Vec<CommandSpec> = (0..4).map(spec).collect();
            let initiator = tokio::spawn(async move {
                let mut seq = test_seq();
                seq.max_cmd_sn = 2;
                let mut resent = false;
                let outcomes = conn
                    .commands(&mut seq, &specs, |at, outcome| {
                        let again = at == 0 && outcome.status == 2 && !resent;
                        resent |= again;
                        again
                    })
                    .await
                    .unwrap();
                (outcomes, conn.exchanges())
            });
            let lba = |cmd: &ScsiCommand| u32::from_be_bytes(cmd.cdb[2..6].try_into().unwrap());
            let mut first = Vec::new();
            for _ in 0..2 {
                let Bhs::ScsiCommand(cmd) = peer.recv().await.bhs else {
                    panic!("expected a command")
                };
                first.push(cmd);
            }
            assert_eq!(first.iter().map(lba).collect::<Vec<_>>(), [0, 1]);
            // The first meets a CHECK CONDITION; the response opens the window wide.
            peer.send(Pdu::new(Bhs::ScsiResponse(pdu::ScsiResponse {
                status: 2,
                itt: first[0].itt,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 64,
                ..pdu::ScsiResponse::default()
            })))
            .await;
            let mut second = Vec::new();
            for _ in 0..3 {
                let Bhs::ScsiCommand(cmd) = peer.recv().await.bhs else {
                    panic!("expected a command")
                };
                second.push(cmd);
            }
            assert_eq!(second.iter().map(lba).collect::<Vec<_>>(), [2, 3, 0]);
            assert_ne!(second[2].itt, first[0].itt);
            let answers: [(u32, &'static [u8]); 4] = [
                (second[2].itt, b"aaaa"),
                (first[1].itt, b"bbbb"),
                (second[0].itt, b"cccc"),
                (second[1].itt, b"dddd"),
            ];
            for (itt, data) in answers.into_iter().rev() {
                peer.send(data_in_done(itt, data)).await;
            }
            let (outcomes, exchanges) = initiator.await.unwrap();
            let data: Vec<&[u8]> = outcomes.iter().map(|o| &o.data[..]).collect();
            assert_eq!(data, [b"aaaa", b"bbbb", b"cccc", b"dddd"]);
            // The TCP handshake and two flights.
            assert_eq!(exchanges, 3);
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
                read_timeout: Duration::from_secs(60),
                queue_depth: 8,
            };
            let shared = Arc::new(Shared {
                portal: Mutex::new(portal.clone()),
                params: Mutex::new(Params::default()),
            });
            let fake = Arc::new(Fake {
                portal: portal.clone(),
            });
            let tx = Driver::spawn(
                conn,
                test_seq(),
                vec![portal.clone()],
                0,
                timing,
                fake,
                shared,
            );
            let (reply_tx, reply_rx) = oneshot::channel();
            let spec = CommandSpec {
                lun: 1 << 48,
                cdb: crate::scsi::read(crate::scsi::ReadKind::Disk, 7, 1).unwrap(),
                read_len: 4,
                expect: DataLength::Exactly,
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

            // Connection 2: the read is reissued; the target answers with a hostile length (a
            // protocol fault: counted, the same portal tried again).
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
