//! iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment, Additional Header Segments,
//! the data segment with its padding, and the optional CRC32C digests (§11.2.3–§11.2.4).
//!
//! Every PDU of both directions is here: the initiator's requests (§11.1.1) and the target's
//! responses (§11.1.2). No I/O: [`decode`] takes bytes received so far and returns `Ok(None)`
//! while a PDU is incomplete; [`Pdu::encode`] cannot fail. Decoding fails only on malformed input
//! (a reserved stage, a digest mismatch, a data segment above the negotiated limit); an opcode we
//! do not know is data ([`Bhs::Unknown`]) so the receiver can answer with a Reject.
//! All multi-byte fields are big-endian (network order) as §11.2.1 requires.

use bytes::{BufMut, Bytes, BytesMut};

use super::digest;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Largest data segment a PDU can carry (DataSegmentLength is 24 bits).
pub const MAX_DATA_SEGMENT: u32 = (1 << 24) - 1;
/// The Initiator Task Tag value reserved for "no task" (§11.1.3).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// The opcode in byte 0 of the BHS (§11.1.1, §11.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2t,
    AsyncMessage,
    Reject,
    Unknown(u8),
}

impl Opcode {
    pub fn from_u8(byte: u8) -> Self {
        match byte & 0x3f {
            0x00 => Self::NopOut,
            0x01 => Self::ScsiCommand,
            0x02 => Self::TaskMgmtRequest,
            0x03 => Self::LoginRequest,
            0x04 => Self::TextRequest,
            0x05 => Self::DataOut,
            0x06 => Self::LogoutRequest,
            0x10 => Self::SnackRequest,
            0x20 => Self::NopIn,
            0x21 => Self::ScsiResponse,
            0x22 => Self::TaskMgmtResponse,
            0x23 => Self::LoginResponse,
            0x24 => Self::TextResponse,
            0x25 => Self::DataIn,
            0x26 => Self::LogoutResponse,
            0x31 => Self::R2t,
            0x32 => Self::AsyncMessage,
            0x3f => Self::Reject,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::NopOut => 0x00,
            Self::ScsiCommand => 0x01,
            Self::TaskMgmtRequest => 0x02,
            Self::LoginRequest => 0x03,
            Self::TextRequest => 0x04,
            Self::DataOut => 0x05,
            Self::LogoutRequest => 0x06,
            Self::SnackRequest => 0x10,
            Self::NopIn => 0x20,
            Self::ScsiResponse => 0x21,
            Self::TaskMgmtResponse => 0x22,
            Self::LoginResponse => 0x23,
            Self::TextResponse => 0x24,
            Self::DataIn => 0x25,
            Self::LogoutResponse => 0x26,
            Self::R2t => 0x31,
            Self::AsyncMessage => 0x32,
            Self::Reject => 0x3f,
            Self::Unknown(byte) => byte & 0x3f,
        }
    }
}

/// Login stages (CSG/NSG, §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Security,
    Operational,
    FullFeature,
}

impl Stage {
    fn from_bits(bits: u8) -> Result<Self, PduError> {
        match bits & 3 {
            0 => Ok(Self::Security),
            1 => Ok(Self::Operational),
            3 => Ok(Self::FullFeature),
            _ => Err(PduError::Malformed("reserved login stage 2")),
        }
    }
    fn bits(self) -> u8 {
        match self {
            Self::Security => 0,
            Self::Operational => 1,
            Self::FullFeature => 3,
        }
    }
}

/// Why received bytes are not a PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("PDU data segment of {len} bytes exceeds the negotiated limit of {max}")]
    DataTooLong { len: u32, max: u32 },
    #[error("PDU header digest mismatch")]
    HeaderDigest,
    #[error("PDU data digest mismatch")]
    DataDigest,
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
}

/// NOP-Out (§11.18).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Command (§11.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub fin: bool,
    pub read: bool,
    pub write: bool,
    /// Task attributes (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA).
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

/// Task Management Function Request (§11.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (§11.12). Always immediate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Request (§11.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub fin: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Data-Out (§11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOut {
    pub fin: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout Request (§11.14). Reason 0: close the session; 1: the connection; 2: for recovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (§11.16).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub kind: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// NOP-In (§11.19).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Response (§11.4). The data segment holds SenseLength + sense data ([`split_sense`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI service response: 0 command completed at target, 1 target failure.
    pub response: u8,
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, 8 BUSY, …).
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

/// Task Management Function Response (§11.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login Response (§11.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

/// Text Response (§11.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub fin: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-In (§11.7). `status` is `Some` when the S bit is set (status carried in this PDU).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataIn {
    pub fin: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub status: Option<u8>,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

/// Logout Response (§11.15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (§11.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_length: u32,
}

/// Asynchronous Message (§11.9). Event 1: the target requests a logout (Parameter3 = Time2Wait).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
}

/// Reject (§11.17). The data segment carries the rejected PDU's BHS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// A BHS whose opcode we do not implement, kept whole so the receiver can Reject it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBhs {
    pub opcode: u8,
    pub raw: [u8; BHS_LEN],
}

/// The decoded Basic Header Segment: one variant per opcode, each with its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
    Unknown(UnknownBhs),
}

/// One PDU: header, Additional Header Segments (raw, a multiple of 4 bytes) and data segment
/// (without padding or digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Bytes,
    pub data: Bytes,
}

/// How PDUs are framed on a connection: the digests in effect and the largest data segment we
/// accept (our MaxRecvDataSegmentLength). During login no digests are in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_recv_data: u32,
}

impl Default for Framing {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_recv_data: 8192,
        }
    }
}

impl Pdu {
    pub fn new(bhs: Bhs) -> Self {
        Self {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
        }
    }

    pub fn with_data(bhs: Bhs, data: Bytes) -> Self {
        Self {
            bhs,
            ahs: Bytes::new(),
            data,
        }
    }

    pub fn opcode(&self) -> Opcode {
        self.bhs.opcode()
    }

    /// The header bytes: BHS, AHS (padded to 4) and the header digest when in effect.
    pub fn encode_header(&self, framing: &Framing, out: &mut BytesMut) {
        let ahs_pad = padding(self.ahs.len());
        let ahs_words = (self.ahs.len() + ahs_pad) / 4;
        let mut bhs = self.bhs.to_bytes();
        // TotalAHSLength is one byte of 4-byte words; longer AHS are cut to what it can express.
        let ahs_words = ahs_words.min(255);
        let ahs_len = self.ahs.len().min(ahs_words * 4);
        bhs[4] = ahs_words as u8;
        let data_len = (self.data.len() as u32).min(MAX_DATA_SEGMENT);
        bhs[5..8].copy_from_slice(&data_len.to_be_bytes()[1..4]);
        let start = out.len();
        out.reserve(BHS_LEN + ahs_words * 4 + 4);
        out.put_slice(&bhs);
        out.put_slice(&self.ahs[..ahs_len]);
        out.put_bytes(0, ahs_words * 4 - ahs_len);
        if framing.header_digest {
            let crc = digest::crc32c(&out[start..]);
            out.put_slice(&digest::to_wire(crc));
        }
    }

    /// What follows the data segment on the wire: padding to 4 and the data digest when in effect.
    pub fn encode_trailer(&self, framing: &Framing, out: &mut BytesMut) {
        let data = self.wire_data();
        let pad = padding(data.len());
        out.put_bytes(0, pad);
        if framing.data_digest && !data.is_empty() {
            let crc = digest::crc32c_append(digest::crc32c(data), &[0u8; 3][..pad]);
            out.put_slice(&digest::to_wire(crc));
        }
    }

    /// The data segment as it goes on the wire (at most [`MAX_DATA_SEGMENT`] bytes).
    pub fn wire_data(&self) -> &[u8] {
        &self.data[..self.data.len().min(MAX_DATA_SEGMENT as usize)]
    }

    /// The whole PDU into `out`.
    pub fn encode(&self, framing: &Framing, out: &mut BytesMut) {
        self.encode_header(framing, out);
        out.put_slice(self.wire_data());
        self.encode_trailer(framing, out);
    }

    /// The whole PDU as three buffers (header, data, trailer) for a vectored write without copying
    /// the data segment.
    pub fn encode_parts(&self, framing: &Framing) -> [Bytes; 3] {
        let mut head = BytesMut::new();
        self.encode_header(framing, &mut head);
        let mut tail = BytesMut::new();
        self.encode_trailer(framing, &mut tail);
        let data = self.data.slice(..self.wire_data().len());
        [head.freeze(), data, tail.freeze()]
    }

    pub fn to_bytes(&self, framing: &Framing) -> Bytes {
        let mut out = BytesMut::with_capacity(BHS_LEN + 8 + self.data.len() + 8);
        self.encode(framing, &mut out);
        out.freeze()
    }
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Where the parts of a frame lie, from the start of its BHS (§11.1: BHS, AHS, header digest,
/// data segment, padding to 4, data digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// End of the BHS and AHS (what the header digest covers).
    pub header_end: usize,
    /// Start of the data segment (after the header digest, when in effect).
    pub data_start: usize,
    /// The data segment's length without its padding.
    pub data_len: usize,
    /// The data segment's length with its padding (what the data digest covers).
    pub padded_len: usize,
    /// Length of the data digest: 4 when in effect and there is data, else 0.
    pub data_digest_len: usize,
}

impl Layout {
    /// Total length on the wire.
    pub fn total(&self) -> usize {
        self.data_start + self.padded_len + self.data_digest_len
    }
}

/// The layout of the PDU at the start of `buf`, once its BHS is there. Checks the data segment
/// against `framing.max_recv_data` before anything is allocated.
pub fn layout(buf: &[u8], framing: &Framing) -> Result<Option<Layout>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let ahs_len = usize::from(buf[4]) * 4;
    let data_len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]);
    if data_len > framing.max_recv_data {
        return Err(PduError::DataTooLong {
            len: data_len,
            max: framing.max_recv_data,
        });
    }
    let data_len = data_len as usize;
    let header_end = BHS_LEN + ahs_len;
    let header_digest = if framing.header_digest { 4 } else { 0 };
    let data_digest_len = if framing.data_digest && data_len > 0 {
        4
    } else {
        0
    };
    Ok(Some(Layout {
        header_end,
        data_start: header_end + header_digest,
        data_len,
        padded_len: data_len + padding(data_len),
        data_digest_len,
    }))
}

/// Total length on the wire of the PDU at the start of `buf`, once its BHS is there.
/// Checks the data segment against `framing.max_recv_data` before anything is allocated.
pub fn frame_len(buf: &[u8], framing: &Framing) -> Result<Option<usize>, PduError> {
    Ok(layout(buf, framing)?.map(|l| l.total()))
}

/// The BHS of a frame's `header` (its first `layout.data_start` bytes), once the header digest,
/// when in effect, matches.
fn check_header(header: &[u8], layout: &Layout, framing: &Framing) -> Result<Bhs, PduError> {
    if framing.header_digest {
        let want = digest::crc32c(&header[..layout.header_end]);
        if header[layout.header_end..layout.data_start] != digest::to_wire(want) {
            return Err(PduError::HeaderDigest);
        }
    }
    let mut raw = [0u8; BHS_LEN];
    raw.copy_from_slice(&header[..BHS_LEN]);
    Bhs::from_bytes(&raw)
}

/// Whether the data segment with its padding matches the data digest that followed it, when
/// one is in effect.
fn check_data(padded: &[u8], data_digest: &[u8], layout: &Layout) -> Result<(), PduError> {
    if layout.data_digest_len > 0 && data_digest != digest::to_wire(digest::crc32c(padded)) {
        return Err(PduError::DataDigest);
    }
    Ok(())
}

/// Take one PDU off the front of `buf`. `Ok(None)`: not all of it has arrived (more capacity is
/// reserved for it). The data segment is split off `buf` without copying.
pub fn decode(buf: &mut BytesMut, framing: &Framing) -> Result<Option<Pdu>, PduError> {
    let Some(layout) = layout(buf, framing)? else {
        return Ok(None);
    };
    let total = layout.total();
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let bhs = check_header(&buf[..layout.data_start], &layout, framing)?;
    let padded_end = layout.data_start + layout.padded_len;
    check_data(
        &buf[layout.data_start..padded_end],
        &buf[padded_end..total],
        &layout,
    )?;
    let mut frame = buf.split_to(total);
    let ahs = frame
        .split_to(layout.header_end)
        .split_off(BHS_LEN)
        .freeze();
    let mut data = frame.split_off(layout.data_start - layout.header_end);
    data.truncate(layout.data_len);
    Ok(Some(Pdu {
        bhs,
        ahs,
        data: data.freeze(),
    }))
}

/// A PDU received in parts: `header` (BHS, AHS and header digest: `layout.data_start` bytes), its
/// data segment with its padding `padded` (received elsewhere, e.g. into an aligned buffer; kept
/// without copying), and the data digest that followed it (`layout.data_digest_len` bytes).
pub fn decode_parts(
    header: &[u8],
    padded: Bytes,
    data_digest: &[u8],
    layout: &Layout,
    framing: &Framing,
) -> Result<Pdu, PduError> {
    if header.len() != layout.data_start
        || padded.len() != layout.padded_len
        || data_digest.len() != layout.data_digest_len
    {
        return Err(PduError::Malformed("a PDU's parts do not match its header"));
    }
    let bhs = check_header(header, layout, framing)?;
    check_data(&padded, data_digest, layout)?;
    Ok(Pdu {
        bhs,
        ahs: Bytes::copy_from_slice(&header[BHS_LEN..layout.header_end]),
        data: padded.slice(..layout.data_len),
    })
}

/// Split a SCSI Response's data segment into sense data and response data (§11.4.7).
pub fn split_sense(data: &Bytes) -> Result<(Bytes, Bytes), PduError> {
    if data.is_empty() {
        return Ok((Bytes::new(), Bytes::new()));
    }
    if data.len() < 2 {
        return Err(PduError::Malformed(
            "SCSI response data shorter than SenseLength",
        ));
    }
    let sense_len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let end = 2usize
        .checked_add(sense_len)
        .filter(|&end| end <= data.len())
        .ok_or(PduError::Malformed("SenseLength exceeds the data segment"))?;
    Ok((data.slice(2..end), data.slice(end..)))
}

/// Build a SCSI Response data segment from sense data (the inverse of [`split_sense`]).
pub fn sense_segment(sense: &[u8]) -> Bytes {
    let len = sense.len().min(usize::from(u16::MAX));
    let mut out = BytesMut::with_capacity(2 + len);
    out.put_u16(len as u16);
    out.put_slice(&sense[..len]);
    out.freeze()
}

fn u16_at(b: &[u8; BHS_LEN], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; BHS_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; BHS_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

fn put16(b: &mut [u8; BHS_LEN], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8; BHS_LEN], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8; BHS_LEN], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn bit(b: u8, mask: u8) -> bool {
    b & mask != 0
}

fn flag(set: bool, mask: u8) -> u8 {
    if set {
        mask
    } else {
        0
    }
}

const F: u8 = 0x80;
const C: u8 = 0x40;

impl Bhs {
    pub fn opcode(&self) -> Opcode {
        match self {
            Self::NopOut(_) => Opcode::NopOut,
            Self::ScsiCommand(_) => Opcode::ScsiCommand,
            Self::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Self::LoginRequest(_) => Opcode::LoginRequest,
            Self::TextRequest(_) => Opcode::TextRequest,
            Self::DataOut(_) => Opcode::DataOut,
            Self::LogoutRequest(_) => Opcode::LogoutRequest,
            Self::SnackRequest(_) => Opcode::SnackRequest,
            Self::NopIn(_) => Opcode::NopIn,
            Self::ScsiResponse(_) => Opcode::ScsiResponse,
            Self::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Self::LoginResponse(_) => Opcode::LoginResponse,
            Self::TextResponse(_) => Opcode::TextResponse,
            Self::DataIn(_) => Opcode::DataIn,
            Self::LogoutResponse(_) => Opcode::LogoutResponse,
            Self::R2t(_) => Opcode::R2t,
            Self::AsyncMessage(_) => Opcode::AsyncMessage,
            Self::Reject(_) => Opcode::Reject,
            Self::Unknown(u) => Opcode::Unknown(u.opcode),
        }
    }

    /// The Initiator Task Tag, where the PDU has one.
    pub fn itt(&self) -> Option<u32> {
        match self {
            Self::NopOut(p) => Some(p.itt),
            Self::ScsiCommand(p) => Some(p.itt),
            Self::TaskMgmtRequest(p) => Some(p.itt),
            Self::LoginRequest(p) => Some(p.itt),
            Self::TextRequest(p) => Some(p.itt),
            Self::DataOut(p) => Some(p.itt),
            Self::LogoutRequest(p) => Some(p.itt),
            Self::SnackRequest(p) => Some(p.itt),
            Self::NopIn(p) => Some(p.itt),
            Self::ScsiResponse(p) => Some(p.itt),
            Self::TaskMgmtResponse(p) => Some(p.itt),
            Self::LoginResponse(p) => Some(p.itt),
            Self::TextResponse(p) => Some(p.itt),
            Self::DataIn(p) => Some(p.itt),
            Self::LogoutResponse(p) => Some(p.itt),
            Self::R2t(p) => Some(p.itt),
            Self::AsyncMessage(_) | Self::Reject(_) | Self::Unknown(_) => None,
        }
    }

    /// Decode a BHS. Fails only on a reserved login stage.
    pub fn from_bytes(b: &[u8; BHS_LEN]) -> Result<Self, PduError> {
        let immediate = bit(b[0], 0x40);
        let f = b[1];
        let fin = bit(f, F);
        let lun = u64_at(b, 8);
        let itt = u32_at(b, 16);
        Ok(match Opcode::from_u8(b[0]) {
            Opcode::NopOut => Self::NopOut(NopOut {
                immediate,
                lun,
                itt,
                ttt: u32_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
            }),
            Opcode::ScsiCommand => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Self::ScsiCommand(ScsiCommand {
                    immediate,
                    fin,
                    read: bit(f, 0x40),
                    write: bit(f, 0x20),
                    attr: f & 0x07,
                    lun,
                    itt,
                    expected_length: u32_at(b, 20),
                    cmd_sn: u32_at(b, 24),
                    exp_stat_sn: u32_at(b, 28),
                    cdb,
                })
            }
            Opcode::TaskMgmtRequest => Self::TaskMgmtRequest(TaskMgmtRequest {
                immediate,
                function: f & 0x7f,
                lun,
                itt,
                referenced_tag: u32_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
                ref_cmd_sn: u32_at(b, 32),
                exp_data_sn: u32_at(b, 36),
            }),
            Opcode::LoginRequest => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Self::LoginRequest(LoginRequest {
                    transit: bit(f, F),
                    cont: bit(f, C),
                    csg: Stage::from_bits(f >> 2)?,
                    nsg: Stage::from_bits(f)?,
                    version_max: b[2],
                    version_min: b[3],
                    isid,
                    tsih: u16_at(b, 14),
                    itt,
                    cid: u16_at(b, 20),
                    cmd_sn: u32_at(b, 24),
                    exp_stat_sn: u32_at(b, 28),
                })
            }
            Opcode::TextRequest => Self::TextRequest(TextRequest {
                immediate,
                fin,
                cont: bit(f, C),
                lun,
                itt,
                ttt: u32_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
            }),
            Opcode::DataOut => Self::DataOut(DataOut {
                fin,
                lun,
                itt,
                ttt: u32_at(b, 20),
                exp_stat_sn: u32_at(b, 28),
                data_sn: u32_at(b, 36),
                buffer_offset: u32_at(b, 40),
            }),
            Opcode::LogoutRequest => Self::LogoutRequest(LogoutRequest {
                immediate,
                reason: f & 0x7f,
                itt,
                cid: u16_at(b, 20),
                cmd_sn: u32_at(b, 24),
                exp_stat_sn: u32_at(b, 28),
            }),
            Opcode::SnackRequest => Self::SnackRequest(SnackRequest {
                kind: f & 0x0f,
                lun,
                itt,
                ttt: u32_at(b, 20),
                exp_stat_sn: u32_at(b, 28),
                beg_run: u32_at(b, 40),
                run_length: u32_at(b, 44),
            }),
            Opcode::NopIn => Self::NopIn(NopIn {
                lun,
                itt,
                ttt: u32_at(b, 20),
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
            }),
            Opcode::ScsiResponse => Self::ScsiResponse(ScsiResponse {
                bidi_overflow: bit(f, 0x10),
                bidi_underflow: bit(f, 0x08),
                overflow: bit(f, 0x04),
                underflow: bit(f, 0x02),
                response: b[2],
                status: b[3],
                itt,
                snack_tag: u32_at(b, 20),
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
                exp_data_sn: u32_at(b, 36),
                bidi_residual: u32_at(b, 40),
                residual: u32_at(b, 44),
            }),
            Opcode::TaskMgmtResponse => Self::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt,
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
            }),
            Opcode::LoginResponse => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Self::LoginResponse(LoginResponse {
                    transit: bit(f, F),
                    cont: bit(f, C),
                    csg: Stage::from_bits(f >> 2)?,
                    nsg: Stage::from_bits(f)?,
                    version_max: b[2],
                    version_active: b[3],
                    isid,
                    tsih: u16_at(b, 14),
                    itt,
                    stat_sn: u32_at(b, 24),
                    exp_cmd_sn: u32_at(b, 28),
                    max_cmd_sn: u32_at(b, 32),
                    status_class: b[36],
                    status_detail: b[37],
                })
            }
            Opcode::TextResponse => Self::TextResponse(TextResponse {
                fin,
                cont: bit(f, C),
                lun,
                itt,
                ttt: u32_at(b, 20),
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
            }),
            Opcode::DataIn => Self::DataIn(DataIn {
                fin,
                ack: bit(f, 0x40),
                overflow: bit(f, 0x04),
                underflow: bit(f, 0x02),
                status: bit(f, 0x01).then_some(b[3]),
                lun,
                itt,
                ttt: u32_at(b, 20),
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
                data_sn: u32_at(b, 36),
                buffer_offset: u32_at(b, 40),
                residual: u32_at(b, 44),
            }),
            Opcode::LogoutResponse => Self::LogoutResponse(LogoutResponse {
                response: b[2],
                itt,
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
                time2wait: u16_at(b, 40),
                time2retain: u16_at(b, 42),
            }),
            Opcode::R2t => Self::R2t(R2t {
                lun,
                itt,
                ttt: u32_at(b, 20),
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
                r2t_sn: u32_at(b, 36),
                buffer_offset: u32_at(b, 40),
                desired_length: u32_at(b, 44),
            }),
            Opcode::AsyncMessage => Self::AsyncMessage(AsyncMessage {
                lun,
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
                event: b[36],
                vcode: b[37],
                parameter1: u16_at(b, 38),
                parameter2: u16_at(b, 40),
                parameter3: u16_at(b, 42),
            }),
            Opcode::Reject => Self::Reject(Reject {
                reason: b[2],
                stat_sn: u32_at(b, 24),
                exp_cmd_sn: u32_at(b, 28),
                max_cmd_sn: u32_at(b, 32),
                data_sn: u32_at(b, 36),
            }),
            Opcode::Unknown(opcode) => Self::Unknown(UnknownBhs { opcode, raw: *b }),
        })
    }

    /// Encode the BHS. TotalAHSLength and DataSegmentLength (bytes 4–7) are left zero here; the
    /// PDU encoder fills them in from the actual segments.
    pub fn to_bytes(&self) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        if let Self::Unknown(u) = self {
            b = u.raw;
            b[0] = (b[0] & 0xc0) | (u.opcode & 0x3f);
            b[4..8].fill(0);
            return b;
        }
        b[0] = self.opcode().to_u8();
        let immediate = |b: &mut [u8; BHS_LEN], on: bool| b[0] |= flag(on, 0x40);
        match self {
            Self::NopOut(p) => {
                immediate(&mut b, p.immediate);
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Self::ScsiCommand(p) => {
                immediate(&mut b, p.immediate);
                b[1] = flag(p.fin, F) | flag(p.read, 0x40) | flag(p.write, 0x20) | (p.attr & 7);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.expected_length);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
                b[32..48].copy_from_slice(&p.cdb);
            }
            Self::TaskMgmtRequest(p) => {
                immediate(&mut b, p.immediate);
                b[1] = F | (p.function & 0x7f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.referenced_tag);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 32, p.ref_cmd_sn);
                put32(&mut b, 36, p.exp_data_sn);
            }
            Self::LoginRequest(p) => {
                immediate(&mut b, true);
                b[1] = flag(p.transit, F) | flag(p.cont, C) | p.csg.bits() << 2 | p.nsg.bits();
                b[2] = p.version_max;
                b[3] = p.version_min;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Self::TextRequest(p) => {
                immediate(&mut b, p.immediate);
                b[1] = flag(p.fin, F) | flag(p.cont, C);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Self::DataOut(p) => {
                b[1] = flag(p.fin, F);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 36, p.data_sn);
                put32(&mut b, 40, p.buffer_offset);
            }
            Self::LogoutRequest(p) => {
                immediate(&mut b, p.immediate);
                b[1] = F | (p.reason & 0x7f);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Self::SnackRequest(p) => {
                b[1] = F | (p.kind & 0x0f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 40, p.beg_run);
                put32(&mut b, 44, p.run_length);
            }
            Self::NopIn(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Self::ScsiResponse(p) => {
                b[1] = F
                    | flag(p.bidi_overflow, 0x10)
                    | flag(p.bidi_underflow, 0x08)
                    | flag(p.overflow, 0x04)
                    | flag(p.underflow, 0x02);
                b[2] = p.response;
                b[3] = p.status;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.snack_tag);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.exp_data_sn);
                put32(&mut b, 40, p.bidi_residual);
                put32(&mut b, 44, p.residual);
            }
            Self::TaskMgmtResponse(p) => {
                b[1] = F;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Self::LoginResponse(p) => {
                b[1] = flag(p.transit, F) | flag(p.cont, C) | p.csg.bits() << 2 | p.nsg.bits();
                b[2] = p.version_max;
                b[3] = p.version_active;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                b[36] = p.status_class;
                b[37] = p.status_detail;
            }
            Self::TextResponse(p) => {
                b[1] = flag(p.fin, F) | flag(p.cont, C);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Self::DataIn(p) => {
                b[1] = flag(p.fin, F)
                    | flag(p.ack, 0x40)
                    | flag(p.overflow, 0x04)
                    | flag(p.underflow, 0x02)
                    | flag(p.status.is_some(), 0x01);
                b[3] = p.status.unwrap_or(0);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.data_sn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.residual);
            }
            Self::LogoutResponse(p) => {
                b[1] = F;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put16(&mut b, 40, p.time2wait);
                put16(&mut b, 42, p.time2retain);
            }
            Self::R2t(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.r2t_sn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.desired_length);
            }
            Self::AsyncMessage(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                b[36] = p.event;
                b[37] = p.vcode;
                put16(&mut b, 38, p.parameter1);
                put16(&mut b, 40, p.parameter2);
                put16(&mut b, 42, p.parameter3);
            }
            Self::Reject(p) => {
                b[1] = F;
                b[2] = p.reason;
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.data_sn);
            }
            Self::Unknown(_) => {}
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).unwrap()
    }

    fn roundtrip(pdu: &Pdu, framing: &Framing) -> Pdu {
        let mut buf = BytesMut::new();
        pdu.encode(framing, &mut buf);
        let wire = buf.clone();
        // Every strict prefix is incomplete, never an error.
        for cut in [0, 1, 47, 48, wire.len() - 1] {
            if cut >= wire.len() {
                continue;
            }
            let mut part = BytesMut::from(&wire[..cut]);
            assert_eq!(decode(&mut part, framing), Ok(None), "prefix {cut}");
        }
        let back = decode(&mut buf, framing).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(&back, pdu);
        back
    }

    /// A Login Request as sent by an initiator (annotated bytes, RFC 7143 §11.12).
    #[test]
    fn login_request_fixture() {
        let wire = hex("43 87 00 00  00 00 00 10  80 12 34 56 78 9a 00 00 \
             00 00 00 01  00 00 00 00  00 00 00 05  00 00 00 00 \
             00 00 00 00  00 00 00 00  00 00 00 00  00 00 00 00 \
             41 75 74 68  4d 65 74 68  6f 64 3d 4e  6f 6e 65 00");
        let mut buf = BytesMut::from(&wire[..]);
        let pdu = decode(&mut buf, &Framing::default()).unwrap().unwrap();
        let Bhs::LoginRequest(req) = &pdu.bhs else {
            panic!("not a login request: {pdu:?}")
        };
        assert!(req.transit && !req.cont);
        assert_eq!((req.csg, req.nsg), (Stage::Operational, Stage::FullFeature));
        assert_eq!(req.isid, [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!((req.tsih, req.itt, req.cid, req.cmd_sn), (0, 1, 0, 5));
        assert_eq!(&pdu.data[..], b"AuthMethod=None\0");
        assert_eq!(&pdu.to_bytes(&Framing::default())[..], &wire[..]);
    }

    /// A Data-In carrying status (S bit) with a residual underflow and 5 data bytes + 3 padding.
    #[test]
    fn data_in_with_status_fixture() {
        let wire = hex("25 83 00 00  00 00 00 05  00 01 00 00 00 00 00 00 \
             00 00 00 07  ff ff ff ff  00 00 00 10  00 00 00 20 \
             00 00 00 30  00 00 00 02  00 00 10 00  00 00 00 03 \
             01 02 03 04  05 00 00 00");
        let mut buf = BytesMut::from(&wire[..]);
        let pdu = decode(&mut buf, &Framing::default()).unwrap().unwrap();
        let expected = DataIn {
            fin: true,
            ack: false,
            overflow: false,
            underflow: true,
            status: Some(0),
            lun: 0x0001_0000_0000_0000,
            itt: 7,
            ttt: RESERVED_TAG,
            stat_sn: 0x10,
            exp_cmd_sn: 0x20,
            max_cmd_sn: 0x30,
            data_sn: 2,
            buffer_offset: 0x1000,
            residual: 3,
        };
        assert_eq!(pdu.bhs, Bhs::DataIn(expected));
        assert_eq!(&pdu.data[..], &[1, 2, 3, 4, 5]);
        assert_eq!(&pdu.to_bytes(&Framing::default())[..], &wire[..]);
    }

    #[test]
    fn every_pdu_type_roundtrips_with_and_without_digests() {
        let login_req = LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 9,
            itt: 1,
            cid: 2,
            cmd_sn: 3,
            exp_stat_sn: 4,
        };
        let login_resp = LoginResponse {
            transit: true,
            cont: true,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 7,
            itt: 1,
            stat_sn: 11,
            exp_cmd_sn: 12,
            max_cmd_sn: 13,
            status_class: 2,
            status_detail: 1,
        };
        let mut cdb = [0u8; 16];
        cdb[0] = 0x28;
        cdb[8] = 1;
        let all = vec![
            Bhs::NopOut(NopOut {
                immediate: true,
                lun: 5,
                itt: 1,
                ttt: RESERVED_TAG,
                cmd_sn: 2,
                exp_stat_sn: 3,
            }),
            Bhs::ScsiCommand(ScsiCommand {
                immediate: false,
                fin: true,
                read: true,
                write: false,
                attr: 1,
                lun: 1 << 48,
                itt: 9,
                expected_length: 512,
                cmd_sn: 1,
                exp_stat_sn: 2,
                cdb,
            }),
            Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: 1,
                lun: 3,
                itt: 4,
                referenced_tag: 5,
                cmd_sn: 6,
                exp_stat_sn: 7,
                ref_cmd_sn: 8,
                exp_data_sn: 9,
            }),
            Bhs::LoginRequest(login_req),
            Bhs::TextRequest(TextRequest {
                immediate: true,
                fin: true,
                cont: false,
                lun: 0,
                itt: 3,
                ttt: RESERVED_TAG,
                cmd_sn: 4,
                exp_stat_sn: 5,
            }),
            Bhs::DataOut(DataOut {
                fin: true,
                lun: 1,
                itt: 2,
                ttt: 3,
                exp_stat_sn: 4,
                data_sn: 5,
                buffer_offset: 6,
            }),
            Bhs::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: 0,
                itt: 8,
                cid: 0,
                cmd_sn: 9,
                exp_stat_sn: 10,
            }),
            Bhs::SnackRequest(SnackRequest {
                kind: 1,
                lun: 0,
                itt: 2,
                ttt: 3,
                exp_stat_sn: 4,
                beg_run: 5,
                run_length: 6,
            }),
            Bhs::NopIn(NopIn {
                lun: 1,
                itt: RESERVED_TAG,
                ttt: 77,
                stat_sn: 2,
                exp_cmd_sn: 3,
                max_cmd_sn: 4,
            }),
            Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: true,
                overflow: true,
                underflow: false,
                response: 0,
                status: 2,
                itt: 3,
                snack_tag: 0,
                stat_sn: 4,
                exp_cmd_sn: 5,
                max_cmd_sn: 6,
                exp_data_sn: 7,
                bidi_residual: 8,
                residual: 9,
            }),
            Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: 0,
                itt: 4,
                stat_sn: 5,
                exp_cmd_sn: 6,
                max_cmd_sn: 7,
            }),
            Bhs::LoginResponse(login_resp),
            Bhs::TextResponse(TextResponse {
                fin: false,
                cont: true,
                lun: 0,
                itt: 3,
                ttt: 99,
                stat_sn: 4,
                exp_cmd_sn: 5,
                max_cmd_sn: 6,
            }),
            Bhs::DataIn(DataIn {
                fin: false,
                ack: true,
                overflow: false,
                underflow: false,
                status: None,
                lun: 0,
                itt: 1,
                ttt: RESERVED_TAG,
                stat_sn: 0,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data_sn: 4,
                buffer_offset: 5,
                residual: 0,
            }),
            Bhs::LogoutResponse(LogoutResponse {
                response: 0,
                itt: 1,
                stat_sn: 2,
                exp_cmd_sn: 3,
                max_cmd_sn: 4,
                time2wait: 2,
                time2retain: 20,
            }),
            Bhs::R2t(R2t {
                lun: 0,
                itt: 1,
                ttt: 2,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
                r2t_sn: 6,
                buffer_offset: 7,
                desired_length: 8,
            }),
            Bhs::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                event: 1,
                vcode: 0,
                parameter1: 0,
                parameter2: 0,
                parameter3: 2,
            }),
            Bhs::Reject(Reject {
                reason: 4,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data_sn: 0,
            }),
        ];
        let framings = [
            Framing::default(),
            Framing {
                header_digest: true,
                data_digest: true,
                max_recv_data: 65536,
            },
        ];
        for framing in &framings {
            for bhs in &all {
                for data in [&b""[..], b"x", b"abcd", b"hello world"] {
                    let pdu = Pdu::with_data(bhs.clone(), Bytes::copy_from_slice(data));
                    assert_eq!(Opcode::from_u8(pdu.opcode().to_u8()), pdu.opcode());
                    roundtrip(&pdu, framing);
                }
            }
        }
    }

    #[test]
    fn unknown_opcode_is_data_and_keeps_its_header() {
        let mut raw = [0u8; BHS_LEN];
        raw[0] = 0x1c;
        raw[16..20].copy_from_slice(&5u32.to_be_bytes());
        raw[30] = 0xab;
        let mut buf = BytesMut::from(&raw[..]);
        let pdu = decode(&mut buf, &Framing::default()).unwrap().unwrap();
        assert_eq!(pdu.opcode(), Opcode::Unknown(0x1c));
        assert_eq!(&pdu.to_bytes(&Framing::default())[..], &raw[..]);
    }

    #[test]
    fn ahs_is_kept_and_padded() {
        let mut pdu = Pdu::new(Bhs::NopIn(NopIn::default()));
        pdu.ahs = Bytes::from_static(&[0, 5, 1, 0, 1, 2, 3, 4]);
        let back = roundtrip(&pdu, &Framing::default());
        assert_eq!(back.ahs.len(), 8);
    }

    #[test]
    fn data_above_the_negotiated_limit_is_refused_before_allocation() {
        let mut bhs = Bhs::NopIn(NopIn::default()).to_bytes();
        bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let mut buf = BytesMut::from(&bhs[..]);
        let err = decode(&mut buf, &Framing::default()).unwrap_err();
        assert_eq!(
            err,
            PduError::DataTooLong {
                len: MAX_DATA_SEGMENT,
                max: 8192
            }
        );
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn corrupted_digests_are_detected() {
        let framing = Framing {
            header_digest: true,
            data_digest: true,
            max_recv_data: 8192,
        };
        let pdu = Pdu::with_data(Bhs::NopIn(NopIn::default()), Bytes::from_static(b"ping"));
        let wire = pdu.to_bytes(&framing);
        let mut bad_header = BytesMut::from(&wire[..]);
        bad_header[20] ^= 1;
        assert_eq!(
            decode(&mut bad_header, &framing),
            Err(PduError::HeaderDigest)
        );
        let mut bad_data = BytesMut::from(&wire[..]);
        bad_data[53] ^= 1;
        assert_eq!(decode(&mut bad_data, &framing), Err(PduError::DataDigest));
    }

    #[test]
    fn reserved_login_stage_is_malformed() {
        let mut bhs = Bhs::LoginResponse(LoginResponse {
            transit: false,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Security,
            version_max: 0,
            version_active: 0,
            isid: [0; 6],
            tsih: 0,
            itt: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            status_class: 0,
            status_detail: 0,
        })
        .to_bytes();
        bhs[1] = 0x08;
        let mut buf = BytesMut::from(&bhs[..]);
        assert!(matches!(
            decode(&mut buf, &Framing::default()),
            Err(PduError::Malformed(_))
        ));
    }

    #[test]
    fn sense_segment_splits() {
        let seg = sense_segment(&[0x70, 0, 6]);
        let (sense, rest) = split_sense(&seg).unwrap();
        assert_eq!(&sense[..], &[0x70, 0, 6]);
        assert!(rest.is_empty());
        assert!(split_sense(&Bytes::from_static(&[0, 9, 1])).is_err());
    }
}
