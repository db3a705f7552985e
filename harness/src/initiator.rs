//! A raw iSCSI initiator on isomount's own PDU codec, for driving targets from tests, the load
//! client and the hostile initiator: one connection, one command at a time, and every check a
//! test wants on what comes back (DataSN and buffer offsets in order, Data-In within our
//! MaxRecvDataSegmentLength, status only in the final PDU). Pings (NOP-In) are answered and
//! asynchronous messages recorded while it waits.

use std::cell::RefCell;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use isomount::iscsi::pdu::{
    self, Bhs, DataIn, Framing, LoginRequest, LogoutRequest, NopOut, Pdu, ScsiCommand, Stage,
    TextRequest, BHS_LEN, RESERVED_TAG,
};
use isomount::iscsi::text;

use crate::platform;
use std::os::fd::AsFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

/// What we declare as our MaxRecvDataSegmentLength unless told otherwise: small, so that
/// tests see reads cut into many Data-In PDUs.
pub const MAX_RECV: u32 = 8192;

/// Why an exchange with the target failed.
#[derive(Debug)]
pub enum RawError {
    Io(std::io::Error),
    Pdu(pdu::PduError),
    /// Nothing arrived within the client's timeout.
    Timeout,
    /// The target closed the connection.
    Closed,
    /// The target broke a rule this client checks.
    Protocol(String),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Io(e) => write!(f, "{e}"),
            RawError::Pdu(e) => write!(f, "{e}"),
            RawError::Timeout => f.write_str("no answer in time"),
            RawError::Closed => f.write_str("connection closed by the target"),
            RawError::Protocol(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RawError {}

impl From<std::io::Error> for RawError {
    fn from(e: std::io::Error) -> Self {
        RawError::Io(e)
    }
}

/// The end of one SCSI command.
#[derive(Debug, Clone)]
pub struct Completion {
    pub status: u8,
    /// Sense data of a CHECK CONDITION (empty otherwise).
    pub sense: Bytes,
    /// Data-In bytes received.
    pub data_len: usize,
}

impl Completion {
    /// Sense key, ASC of a CHECK CONDITION.
    pub fn sense_code(&self) -> Option<(u8, u8)> {
        (self.sense.len() >= 13).then(|| (self.sense[2] & 0x0f, self.sense[12]))
    }
}

/// The checks on one command's Data-In sequence: ITT, DataSN and buffer offsets in order,
/// segments within our MaxRecvDataSegmentLength, status only with the F bit.
struct DataInProgress {
    itt: u32,
    max_recv: u32,
    next_sn: u32,
    received: usize,
}

impl DataInProgress {
    fn new(itt: u32, max_recv: u32) -> DataInProgress {
        DataInProgress {
            itt,
            max_recv,
            next_sn: 0,
            received: 0,
        }
    }

    /// A Data-In of `len` bytes about to be taken: is it the one due?
    fn check(&self, d: &DataIn, len: usize) -> Result<(), RawError> {
        let broken = |why: String| Err(RawError::Protocol(why));
        if d.itt != self.itt {
            return broken(format!("Data-In for ITT {} during {}", d.itt, self.itt));
        }
        if d.data_sn != self.next_sn {
            return broken(format!(
                "DataSN {} where {} was due",
                d.data_sn, self.next_sn
            ));
        }
        if d.buffer_offset as usize != self.received {
            return broken(format!(
                "buffer offset {} where {} was due",
                d.buffer_offset, self.received
            ));
        }
        if len > self.max_recv as usize {
            return broken(format!(
                "a Data-In of {len} bytes, past our MaxRecvDataSegmentLength"
            ));
        }
        Ok(())
    }

    /// A checked Data-In of `len` bytes taken: the command's end when it carried the status.
    fn received(&mut self, d: &DataIn, len: usize) -> Result<Option<Completion>, RawError> {
        self.next_sn += 1;
        self.received += len;
        match d.status {
            Some(_) if !d.fin => Err(RawError::Protocol(
                "status in a Data-In without the F bit".into(),
            )),
            Some(status) => Ok(Some(Completion {
                status,
                sense: Bytes::new(),
                data_len: self.received,
            })),
            None => Ok(None),
        }
    }

    /// A whole PDU answering the command: its data shown to `on_data`; the command's end when
    /// it carried the status.
    fn answer(
        &mut self,
        pdu: &Pdu,
        on_data: impl FnOnce(u32, &Bytes),
    ) -> Result<Option<Completion>, RawError> {
        match &pdu.bhs {
            Bhs::DataIn(d) => {
                self.check(d, pdu.data.len())?;
                on_data(d.buffer_offset, &pdu.data);
                self.received(d, pdu.data.len())
            }
            Bhs::ScsiResponse(r) => {
                if r.itt != self.itt {
                    return Err(RawError::Protocol(format!(
                        "SCSI Response for ITT {} during {}",
                        r.itt, self.itt
                    )));
                }
                let (sense, _) = pdu::split_sense(&pdu.data).map_err(RawError::Pdu)?;
                Ok(Some(Completion {
                    status: r.status,
                    sense,
                    data_len: self.received,
                }))
            }
            other => Err(RawError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}

/// What a streamed command does with its Data-In bytes.
enum Landing<F> {
    /// Shown to the caller (offset in the command's data, bytes).
    Shown(F),
    /// Taken off the socket unseen.
    Discarded,
}

impl<F: FnMut(u32, &[u8])> Landing<F> {
    fn show(&mut self, at: u32, data: &[u8]) {
        if let Landing::Shown(on_data) = self {
            on_data(at, data);
        }
    }
}

/// One connection to a target.
pub struct RawInitiator {
    pub stream: TcpStream,
    buf: BytesMut,
    pub framing: Framing,
    cmd_sn: u32,
    itt: u32,
    exp_stat_sn: u32,
    /// Bound on every wait for the target.
    pub timeout: Duration,
    /// The LUN commands go to (tgtd's first disk is LUN 1; `isomount serve`'s LUN 0).
    pub lun: u64,
    /// The MaxRecvDataSegmentLength a login declares (and Data-In is checked against).
    pub max_recv: u32,
    /// Asynchronous message events received (AsyncEvent codes), in order.
    pub events: Vec<u8>,
}

/// Bytes of a Data-In segment read at a time by [`RawInitiator::command_streamed`].
const SCRATCH_LEN: usize = 256 * 1024;

thread_local! {
    /// Where [`RawInitiator::command_streamed`] lands Data-In: one buffer per thread, shared by
    /// every session the thread serves, so the kernel's copy writes memory that stays in cache
    /// (thousands of sessions each with their own buffer would write a GiB of cold memory).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_LEN]);
}

/// The opcode of a Data-In PDU (RFC 7143 §11.7).
const DATA_IN_OPCODE: u8 = 0x25;

/// READ(10) of `blocks` blocks at `lba`.
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// Connect to `portal` from the local address `source` (any port).
pub async fn connect_from(portal: &str, source: &str) -> std::io::Result<TcpStream> {
    let portal: std::net::SocketAddr = portal
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if portal.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let source: std::net::IpAddr = source
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let stream = socket.connect(portal).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl RawInitiator {
    pub fn new(stream: TcpStream) -> RawInitiator {
        RawInitiator {
            stream,
            buf: BytesMut::new(),
            framing: Framing::default(),
            cmd_sn: 1,
            itt: 1,
            exp_stat_sn: 0,
            timeout: Duration::from_secs(20),
            lun: 0,
            max_recv: MAX_RECV,
            events: Vec::new(),
        }
    }

    pub async fn connect(portal: &str) -> Result<RawInitiator, RawError> {
        Ok(RawInitiator::new(connect_from(portal, "127.0.0.1").await?))
    }

    pub async fn send(&mut self, pdu: Pdu) -> Result<(), RawError> {
        let bytes = pdu.to_bytes(&self.framing);
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    /// The next PDU; `Ok(None)`: the target closed the connection between PDUs.
    pub async fn recv(&mut self) -> Result<Option<Pdu>, RawError> {
        let framing = Framing {
            max_recv_data: 1 << 20,
            ..self.framing
        };
        loop {
            if let Some(pdu) = pdu::decode(&mut self.buf, &framing).map_err(RawError::Pdu)? {
                if let Some(sn) = stat_sn(&pdu.bhs) {
                    self.exp_stat_sn = sn.wrapping_add(1);
                }
                return Ok(Some(pdu));
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| RawError::Timeout)??;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// The next PDU that is not a ping (answered) or an asynchronous message (recorded).
    pub async fn recv_answer(&mut self) -> Result<Pdu, RawError> {
        loop {
            let pdu = self.recv().await?.ok_or(RawError::Closed)?;
            match &pdu.bhs {
                Bhs::NopIn(nop) if nop.ttt != RESERVED_TAG => self.answer_ping(nop.ttt).await?,
                Bhs::AsyncMessage(msg) => self.events.push(msg.event),
                _ => return Ok(pdu),
            }
        }
    }

    async fn answer_ping(&mut self, ttt: u32) -> Result<(), RawError> {
        let nop = NopOut {
            immediate: true,
            itt: RESERVED_TAG,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..Default::default()
        };
        self.send(Pdu::new(Bhs::NopOut(nop))).await
    }

    /// Wait (answering pings) until the target sends an asynchronous message, or closes the
    /// connection (`Ok(None)`), or `within` passes.
    pub async fn wait_event(&mut self, within: Duration) -> Result<Option<u8>, RawError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let pdu = match tokio::time::timeout(left, self.recv()).await {
                Err(_) => return Err(RawError::Timeout),
                Ok(pdu) => pdu?,
            };
            match pdu.map(|p| p.bhs) {
                None => return Ok(None),
                Some(Bhs::NopIn(nop)) if nop.ttt != RESERVED_TAG => {
                    self.answer_ping(nop.ttt).await?
                }
                Some(Bhs::AsyncMessage(msg)) => {
                    self.events.push(msg.event);
                    return Ok(Some(msg.event));
                }
                Some(other) => {
                    return Err(RawError::Protocol(format!("unexpected {other:?}")));
                }
            }
        }
    }

    /// Log in (operational stage straight to full feature); returns (class, detail).
    pub async fn login(&mut self, pairs: &[(&str, &str)]) -> Result<(u8, u8), RawError> {
        let req = LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
        };
        self.send(Pdu::with_data(Bhs::LoginRequest(req), text::encode(pairs)))
            .await?;
        let pdu = self.recv().await?.ok_or(RawError::Closed)?;
        let Bhs::LoginResponse(resp) = pdu.bhs else {
            return Err(RawError::Protocol(format!(
                "expected a login response, got {:?}",
                pdu.bhs
            )));
        };
        if resp.status_class == 0 {
            let answers = text::parse(&pdu.data)
                .map_err(|e| RawError::Protocol(format!("login answer: {e}")))?;
            let on = |k: &str| answers.iter().any(|(key, v)| key == k && v == "CRC32C");
            self.framing.header_digest = on("HeaderDigest");
            self.framing.data_digest = on("DataDigest");
        }
        Ok((resp.status_class, resp.status_detail))
    }

    /// A discovery session's login.
    pub async fn login_discovery(&mut self) -> Result<(u8, u8), RawError> {
        self.login(&[
            ("InitiatorName", "iqn.2026-01.test:raw"),
            ("SessionType", "Discovery"),
        ])
        .await
    }

    /// A normal session's login to `target`, CRC32C digests or none.
    pub async fn login_normal(
        &mut self,
        target: &str,
        digests: bool,
    ) -> Result<(u8, u8), RawError> {
        let digest = if digests { "CRC32C" } else { "None" };
        let recv = self.max_recv.to_string();
        self.login(&[
            ("InitiatorName", "iqn.2026-01.test:raw"),
            ("SessionType", "Normal"),
            ("TargetName", target),
            ("HeaderDigest", digest),
            ("DataDigest", digest),
            ("MaxRecvDataSegmentLength", &recv),
            ("MaxBurstLength", "262144"),
        ])
        .await
    }

    /// The next (ITT, CmdSN).
    pub fn next_ids(&mut self) -> (u32, u32) {
        let ids = (self.itt, self.cmd_sn);
        self.itt = self.itt.wrapping_add(1);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        ids
    }

    /// Send a SCSI command expecting `expected` bytes of Data-In; its ITT.
    async fn send_command(&mut self, cdb: &[u8], expected: u32) -> Result<u32, RawError> {
        let (itt, cmd_sn) = self.next_ids();
        let mut full = [0u8; 16];
        full[..cdb.len()].copy_from_slice(cdb);
        let cmd = ScsiCommand {
            fin: true,
            read: expected > 0,
            attr: 1,
            lun: isomount::scsi::Lun::from_number(self.lun).to_wire(),
            itt,
            expected_length: expected,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: full,
            ..Default::default()
        };
        self.send(Pdu::new(Bhs::ScsiCommand(cmd))).await?;
        Ok(itt)
    }

    /// One SCSI command; `on_data(offset, bytes)` sees each Data-In segment as it arrives.
    pub async fn command_with(
        &mut self,
        cdb: &[u8],
        expected: u32,
        mut on_data: impl FnMut(u32, &Bytes),
    ) -> Result<Completion, RawError> {
        let itt = self.send_command(cdb, expected).await?;
        let mut progress = DataInProgress::new(itt, self.max_recv);
        loop {
            let pdu = self.recv_answer().await?;
            if let Some(done) = progress.answer(&pdu, |at, data| on_data(at, data))? {
                return Ok(done);
            }
        }
    }

    /// As [`RawInitiator::command_with`], for load: a Data-In's segment is read from the socket
    /// in pieces straight into a buffer of this thread's, each piece shown to `on_data` (its
    /// offset in the command's data, its bytes) and not kept. With digests, or a PDU with AHS,
    /// the whole PDU goes through the codec as in `command_with`.
    pub async fn command_streamed(
        &mut self,
        cdb: &[u8],
        expected: u32,
        on_data: impl FnMut(u32, &[u8]),
    ) -> Result<Completion, RawError> {
        self.stream_command(cdb, expected, Landing::Shown(on_data))
            .await
    }

    /// As [`RawInitiator::command_streamed`], for load that does not look at the data: the
    /// Data-In bytes are taken off the socket without being copied out where the system can
    /// (the harness's `platform::discard_received`), so the client's CPU goes to the protocol.
    pub async fn command_discarding(
        &mut self,
        cdb: &[u8],
        expected: u32,
    ) -> Result<Completion, RawError> {
        self.stream_command(cdb, expected, Landing::<fn(u32, &[u8])>::Discarded)
            .await
    }

    async fn stream_command<F: FnMut(u32, &[u8])>(
        &mut self,
        cdb: &[u8],
        expected: u32,
        mut landing: Landing<F>,
    ) -> Result<Completion, RawError> {
        let itt = self.send_command(cdb, expected).await?;
        let mut progress = DataInProgress::new(itt, self.max_recv);
        let plain = !self.framing.header_digest && !self.framing.data_digest;
        loop {
            self.fill_header().await?;
            let head: [u8; BHS_LEN] = self.buf[..BHS_LEN].try_into().expect("a whole header");
            let streamable = plain && head[0] & 0x3f == DATA_IN_OPCODE && head[4] == 0;
            if !streamable {
                let pdu = self.recv_answer().await?;
                if let Some(done) = progress.answer(&pdu, |at, data| landing.show(at, data))? {
                    return Ok(done);
                }
                continue;
            }
            let bhs = Bhs::from_bytes(&head).map_err(RawError::Pdu)?;
            if let Some(sn) = stat_sn(&bhs) {
                self.exp_stat_sn = sn.wrapping_add(1);
            }
            let Bhs::DataIn(d) = bhs else {
                return Err(RawError::Protocol("a Data-In that does not decode".into()));
            };
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            progress.check(&d, len)?;
            self.buf.advance(BHS_LEN);
            self.stream_segment(d.buffer_offset, len, &mut landing)
                .await?;
            if let Some(done) = progress.received(&d, len)? {
                return Ok(done);
            }
        }
    }

    /// Read until `buf` holds at least a basic header, and no further (the data segment that
    /// follows is for [`RawInitiator::stream_segment`]).
    async fn fill_header(&mut self) -> Result<(), RawError> {
        let mut piece = [0u8; BHS_LEN];
        while self.buf.len() < BHS_LEN {
            let want = BHS_LEN - self.buf.len();
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut piece[..want]))
                .await
                .map_err(|_| RawError::Timeout)??;
            if n == 0 {
                return Err(RawError::Closed);
            }
            self.buf.extend_from_slice(&piece[..n]);
        }
        Ok(())
    }

    /// A data segment of `len` bytes (and its padding) at `offset` in the command's data: what
    /// `buf` already holds, then the socket's bytes, read into this thread's scratch buffer or
    /// discarded.
    async fn stream_segment<F: FnMut(u32, &[u8])>(
        &mut self,
        offset: u32,
        len: usize,
        landing: &mut Landing<F>,
    ) -> Result<(), RawError> {
        let padded = len + (4 - len % 4) % 4;
        let held = self.buf.len().min(padded);
        let shown = held.min(len);
        if shown > 0 {
            landing.show(offset, &self.buf[..shown]);
        }
        self.buf.advance(held);
        let mut done = held;
        let mut discard = matches!(landing, Landing::Discarded);
        while done < padded {
            tokio::time::timeout(self.timeout, self.stream.readable())
                .await
                .map_err(|_| RawError::Timeout)??;
            let want = padded - done;
            if discard {
                let stream = &self.stream;
                match stream.try_io(Interest::READABLE, || {
                    platform::discard_received(stream.as_fd(), want)
                }) {
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => discard = false,
                    Ok(0) => return Err(RawError::Closed),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let want = want.min(scratch.len());
                let n = self.stream.try_read(&mut scratch[..want])?;
                let data_end = len.saturating_sub(done).min(n);
                if data_end > 0 {
                    landing.show(offset + done as u32, &scratch[..data_end]);
                }
                Ok::<usize, std::io::Error>(n)
            });
            match read {
                Ok(0) => return Err(RawError::Closed),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// TEST UNIT READY until GOOD (at most a few times): a new session's UNIT ATTENTION
    /// (power on, reset) is taken, so the next command meets no surprise.
    pub async fn clear_unit_attention(&mut self) -> Result<(), RawError> {
        let mut last = None;
        for _ in 0..4 {
            let (done, _) = self.command(&[0u8; 6], 0).await?;
            if done.status == 0 {
                return Ok(());
            }
            last = Some(done.sense_code());
        }
        Err(RawError::Protocol(format!(
            "TEST UNIT READY kept failing: {last:?}"
        )))
    }

    /// One SCSI command, its data gathered.
    pub async fn command(
        &mut self,
        cdb: &[u8],
        expected: u32,
    ) -> Result<(Completion, Vec<u8>), RawError> {
        let mut data = Vec::new();
        let done = self
            .command_with(cdb, expected, |_, bytes| data.extend_from_slice(bytes))
            .await?;
        Ok((done, data))
    }

    /// SendTargets with `value` (`All`, or a target name): the answer's pairs.
    pub async fn send_targets(&mut self, value: &str) -> Result<Vec<(String, String)>, RawError> {
        let mut answer = BytesMut::new();
        let mut ttt = RESERVED_TAG;
        let data = text::encode(&[("SendTargets", value)]);
        loop {
            let (itt, cmd_sn) = self.next_ids();
            let req = TextRequest {
                fin: true,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                ..Default::default()
            };
            let body = if ttt == RESERVED_TAG {
                data.clone()
            } else {
                Bytes::new()
            };
            self.send(Pdu::with_data(Bhs::TextRequest(req), body))
                .await?;
            let pdu = self.recv_answer().await?;
            let Bhs::TextResponse(resp) = pdu.bhs else {
                return Err(RawError::Protocol(format!(
                    "expected a Text Response, got {:?}",
                    pdu.bhs
                )));
            };
            answer.extend_from_slice(&pdu.data);
            if resp.fin || !resp.cont {
                break;
            }
            ttt = resp.ttt;
        }
        // A big tree's answer is longer than the codec takes in one text (a login's bound):
        // parse it pair by pair.
        let mut pairs = Vec::new();
        for pair in answer.split_inclusive(|&b| b == 0) {
            let parsed = text::parse(pair)
                .map_err(|e| RawError::Protocol(format!("SendTargets answer: {e}")))?;
            pairs.extend(parsed);
        }
        Ok(pairs)
    }

    /// Log out (close the session); the target's response code.
    pub async fn logout(&mut self) -> Result<u8, RawError> {
        let (itt, cmd_sn) = self.next_ids();
        let req = LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..Default::default()
        };
        self.send(Pdu::new(Bhs::LogoutRequest(req))).await?;
        let pdu = self.recv_answer().await?;
        match pdu.bhs {
            Bhs::LogoutResponse(resp) => Ok(resp.response),
            other => Err(RawError::Protocol(format!(
                "expected a Logout Response, got {other:?}"
            ))),
        }
    }
}

/// The StatSN a target PDU carries, if it advances the sequence.
fn stat_sn(bhs: &Bhs) -> Option<u32> {
    match bhs {
        Bhs::ScsiResponse(p) => Some(p.stat_sn),
        Bhs::DataIn(p) if p.status.is_some() => Some(p.stat_sn),
        Bhs::TextResponse(p) => Some(p.stat_sn),
        Bhs::LogoutResponse(p) => Some(p.stat_sn),
        Bhs::NopIn(p) if p.itt != RESERVED_TAG => Some(p.stat_sn),
        _ => None,
    }
}
