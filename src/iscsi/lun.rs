//! One LUN of one target: connect (portals in order, redirects followed),
//! probe what the LUN is, then read with READ(10)/(12)/(16) as the device takes them, clamped to
//! the capacity.
//!
//! Connecting takes few round trips: the TCP handshake, one login exchange without CHAP (see
//! [`super::login`]), and one flight of probe commands sent together: TEST UNIT READY (to drain
//! the UNIT ATTENTIONs a new session starts with; commands that meet one are sent again), INQUIRY,
//! VPD 0x80 and 0x83 (a page the device lacks is answered with CHECK CONDITION and left out),
//! READ CAPACITY(10) and (16) (MMC devices use (10) only), and, when the caller names them
//! ([`ConnectOptions::first_read`]), the LUN's first bytes. That READ goes out before the block
//! size is known: it counts 512-byte blocks and bounds the transfer by its Expected Data
//! Transfer Length, so a device with larger blocks sends just those bytes and reports the rest
//! as residual overflow (RFC 7143 §11.4.5.1). Reads of that range are then answered from it.
//!
//! Recovery (RFC 7143 §6.2.1 session reinstatement is not used: ErrorRecoveryLevel 0 with a new
//! session, same ISID, TSIH 0) reconnects through `Connector`, which checks the LUN's identity.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::login::{Chap, DigestOffer, LoginConfig, LoginError, LoginOutcome, Opening};
use super::session::{CommandOutcome, CommandSpec, DataLength, Seq, Timing};
use super::text::Params;
use super::transport::{Conn, Driver, LoginFailure, Reconnect, Request, Shared};
use super::IscsiError;
use crate::scsi::{
    self, sense_key, status, vpd, Capacity, Inquiry, Lun, ReadKind, ScsiError, Sense,
};

/// Bytes per READ command unless a caller asks otherwise; the target's MaxBurstLength caps it
/// (256 KiB on tgtd, which serves bigger reads with less CPU per byte).
pub const DEFAULT_MAX_READ: u32 = 1 << 20;

/// Longest wait for a portal to accept a connection and complete login when there are other
/// mirrors to try: one that accepts and then says nothing is passed over for the next one this
/// soon (it may be tried again later).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for login when the portal is the only place the bytes can come from: nothing to
/// pass over to, so a slow link (a satellite hop, a congested mirror) gets the setup bound.
pub const SOLE_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Ping a link this long idle (or half the stall timeout, when that is shorter).
pub const DEFAULT_NOP_INTERVAL: Duration = Duration::from_secs(3);

/// Give a connection up when nothing arrives for this long while we wait for the target, or
/// when bytes arrive but no command makes progress ([`super::stall_timeout_from_env`]).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(8);

/// The default bound on one read, reconnects included.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(90);

/// How to reach a LUN. [`ConnectOptions::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` or `[::1]:3260`; tried in order.
    pub portals: Vec<String>,
    pub target: String,
    pub lun: u64,
    pub chap: Option<Chap>,
    pub initiator_name: String,
    /// Which header and data digests to offer.
    pub digest: DigestOffer,
    /// Fail outstanding reads when the target stays away this long.
    pub give_up_after: Duration,
    /// No read waits longer than this in all, reconnects included.
    pub read_timeout: Duration,
    /// Bound on connecting, logging in and each setup exchange.
    pub timeout: Duration,
    /// Bound on connecting and completing login, together ([`LOGIN_TIMEOUT`] with several
    /// portals, [`SOLE_LOGIN_TIMEOUT`] with one).
    pub login_timeout: Duration,
    /// Ping an idle link after this long.
    pub nop_interval: Duration,
    /// Declare a link dead when nothing arrives for this long while we wait for the target.
    pub stall_timeout: Duration,
    /// Most commands in flight.
    pub queue_depth: usize,
    /// Largest READ we issue (also bounded by the negotiated MaxBurstLength).
    pub max_read: u32,
    /// Bytes from the start of the LUN to read while connecting, in the probe's round trip:
    /// what the caller reads first (an ISO's volume descriptors and root directory).
    pub first_read: Option<u32>,
}

impl ConnectOptions {
    /// Defaults: our initiator name, no CHAP (or libiscsi's environment variables), digests as
    /// `ISOMOUNT_DIGEST` says (else the target's choice), the stall timeout as
    /// `ISOMOUNT_STALL_TIMEOUT` says (else 8 s), give up after 60 s.
    pub fn new(portals: Vec<String>, target: impl Into<String>, lun: u64) -> Self {
        let stall_timeout = super::stall_timeout_from_env().unwrap_or(DEFAULT_STALL_TIMEOUT);
        let portals_given = portals.len();
        Self {
            portals,
            target: target.into(),
            lun,
            chap: Chap::from_env(),
            initiator_name: super::default_initiator_name(),
            digest: super::digest_from_env(),
            give_up_after: Duration::from_secs(60),
            read_timeout: DEFAULT_READ_TIMEOUT,
            timeout: Duration::from_secs(10),
            login_timeout: if portals_given > 1 {
                LOGIN_TIMEOUT
            } else {
                SOLE_LOGIN_TIMEOUT
            },
            nop_interval: DEFAULT_NOP_INTERVAL.min(stall_timeout / 2),
            stall_timeout,
            queue_depth: 64,
            max_read: DEFAULT_MAX_READ,
            first_read: None,
        }
    }

    /// Options for an `iscsi://` URL.
    pub fn from_url(url: &super::IscsiUrl) -> Self {
        let mut opts = Self::new(vec![url.portal()], url.target.clone(), url.lun);
        opts.chap = url.chap.clone();
        if let Some(digest) = url.digest {
            opts.digest = digest;
        }
        opts
    }
}

/// What a LUN is, and how the session to it was negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    pub target: String,
    pub lun: u64,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: Option<String>,
    pub device_id: Option<Vec<u8>>,
    pub device_type: u8,
    pub block_size: u32,
    pub blocks: u64,
    /// Bytes.
    pub capacity: u64,
    pub portal: String,
    pub target_alias: Option<String>,
    /// Negotiated parameters, `(key, value)`.
    pub parameters: Vec<(String, String)>,
    /// What connecting took: TCP, login and probe.
    pub connect: ConnectCost,
}

/// What connecting to a LUN took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectCost {
    pub time: Duration,
    /// Request/response exchanges: TCP handshakes, login exchanges, flights of probe commands
    /// (those of attempts that were redirected or refused included).
    pub round_trips: u32,
}

impl std::fmt::Display for ConnectCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.time.as_secs_f64() * 1000.0;
        write!(f, "{ms:.1} ms, {} round trips", self.round_trips)
    }
}

impl LunInfo {
    pub fn device_type_name(&self) -> &'static str {
        scsi::device_type_name(self.device_type)
    }
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    inquiry: Inquiry,
    serial: Option<String>,
    device_id: Option<Vec<u8>>,
    capacity: Capacity,
}

impl Probe {
    fn same_lun(&self, other: &Probe) -> Result<(), String> {
        if self.serial != other.serial {
            return Err(format!(
                "serial changed from {:?} to {:?}",
                self.serial, other.serial
            ));
        }
        if self.device_id != other.device_id {
            return Err("device identifier changed".into());
        }
        if self.capacity != other.capacity {
            return Err(format!(
                "capacity changed from {} to {} blocks of {}",
                self.capacity.blocks, other.capacity.blocks, other.capacity.block_size
            ));
        }
        Ok(())
    }
}

/// Connects, logs in and probes; remembers the first probe to check later reconnects against.
struct Connector {
    opts: ConnectOptions,
    isid: [u8; 6],
    first: Mutex<Option<Probe>>,
}

struct Established {
    conn: Conn,
    seq: Seq,
    params: Params,
    probe: Probe,
    target_alias: Option<String>,
    /// The LUN's first bytes, when asked for and read whole.
    first_bytes: Option<Bytes>,
    /// Round trips in all, those of redirected or refused attempts included.
    round_trips: u32,
}

/// A logged-in connection, and the round trips of attempts before it.
struct LoggedIn {
    conn: Conn,
    seq: Seq,
    outcome: LoginOutcome,
    spent: u32,
}

/// Most login redirects followed.
const MAX_REDIRECTS: u32 = 4;

impl Connector {
    fn login_error(&self, portal: &str, failure: LoginFailure) -> IscsiError {
        match failure {
            LoginFailure::Io(e) => e,
            LoginFailure::Refused(LoginError::Protocol(reason)) => IscsiError::Protocol {
                portal: portal.to_string(),
                reason: format!("during login: {reason}"),
            },
            LoginFailure::Refused(source) => IscsiError::Login {
                target: self.opts.target.clone(),
                portal: portal.to_string(),
                reason: source.to_string(),
            },
            LoginFailure::Redirect(_) => IscsiError::Protocol {
                portal: portal.to_string(),
                reason: "too many login redirects".into(),
            },
        }
    }

    /// Connect and log in, following redirects; each portal gets `login_timeout` for both. The
    /// login goes straight to the operational stage; a target that refuses that (an initiator
    /// error) is logged in to again through the security stage.
    async fn login(&self, portal: &str) -> Result<LoggedIn, IscsiError> {
        let mut address = portal.to_string();
        let mut opening = Opening::Direct;
        let mut redirects = 0;
        let mut spent = 0;
        loop {
            tracing::info!(
                "connecting to {address} for {} LUN {}",
                self.opts.target,
                self.opts.lun
            );
            if let Some(chap) = &self.opts.chap {
                let mutual = if chap.target_user.is_some() {
                    " (mutual)"
                } else {
                    ""
                };
                tracing::info!("{address}: CHAP as user `{}`{mutual}", chap.user);
            }
            let bound = self.opts.login_timeout;
            let attempt = tokio::time::timeout(bound, self.login_once(&address, opening)).await;
            let Ok(attempt) = attempt else {
                return Err(IscsiError::Connect {
                    portal: address,
                    reason: format!("no login within {} s", bound.as_secs_f32()),
                });
            };
            let (conn, result) = attempt?;
            match result {
                Ok(outcome) => {
                    let seq = Seq::new(&outcome, 1);
                    let params: Vec<String> = outcome
                        .params
                        .describe()
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    tracing::info!(
                        "logged in to {} at {address}; negotiated {}",
                        self.opts.target,
                        params.join(", ")
                    );
                    return Ok(LoggedIn {
                        spent,
                        conn,
                        seq,
                        outcome,
                    });
                }
                Err(LoginFailure::Redirect(to)) if redirects < MAX_REDIRECTS => {
                    tracing::info!("{address} redirects us to {to}");
                    spent += conn.exchanges();
                    redirects += 1;
                    address = to;
                }
                Err(failure @ LoginFailure::Redirect(_)) => {
                    return Err(self.login_error(portal, failure))
                }
                Err(LoginFailure::Refused(e @ LoginError::Initiator { .. }))
                    if opening == Opening::Direct && self.opts.chap.is_none() =>
                {
                    tracing::info!(
                        "{address} refused a login that skips the security stage ({e}); \
                         logging in through it"
                    );
                    spent += conn.exchanges();
                    opening = Opening::Staged;
                }
                Err(failure) => return Err(self.login_error(&address, failure)),
            }
        }
    }

    /// One connection and login exchange at `address`: the connection, and the session or why
    /// there is none (a redirect among them).
    async fn login_once(
        &self,
        address: &str,
        opening: Opening,
    ) -> Result<(Conn, Result<LoginOutcome, LoginFailure>), IscsiError> {
        let mut conn = Conn::connect(address, self.opts.timeout).await?;
        let cfg = LoginConfig {
            initiator_name: self.opts.initiator_name.clone(),
            target: Some(self.opts.target.clone()),
            isid: self.isid,
            tsih: 0,
            cid: 0,
            chap: self.opts.chap.clone(),
            digest: self.opts.digest,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16_776_192,
            opening,
        };
        let result = match conn.login(cfg, 0).await {
            Err(LoginFailure::Io(e)) => return Err(e),
            other => other,
        };
        Ok((conn, result))
    }

    async fn establish(&self, portal: &str) -> Result<Established, IscsiError> {
        let LoggedIn {
            mut conn,
            mut seq,
            outcome,
            spent,
        } = self.login(portal).await?;
        // The first bytes only for the first connection; a reconnect has no use for them.
        let first_read = self.opts.first_read.filter(|_| lock(&self.first).is_none());
        let (probe, first_bytes) = match probe(
            &mut conn,
            &mut seq,
            Lun::from_number(self.opts.lun),
            first_read,
        )
        .await
        {
            Ok(probed) => probed,
            Err(ProbeError::NoSuchLun) => {
                // Say what the target does have: a wrong LUN is a mistake in the catalog.
                let available = setup_command(
                    &mut conn,
                    &mut seq,
                    Lun::from_number(0),
                    scsi::report_luns(4096),
                    4096,
                )
                .await
                .ok()
                .and_then(|data| scsi::parse_report_luns(&data).ok());
                conn.logout(&mut seq).await;
                return Err(IscsiError::NoSuchLun {
                    target: self.opts.target.clone(),
                    portal: portal.to_string(),
                    lun: self.opts.lun,
                    available,
                });
            }
            Err(ProbeError::Failed(e)) => return Err(e),
        };
        let info = &probe.inquiry;
        tracing::info!(
            "{portal}: LUN {} is {} {} ({}), {} blocks of {} bytes",
            self.opts.lun,
            info.vendor,
            info.product,
            scsi::device_type_name(info.device_type),
            probe.capacity.blocks,
            probe.capacity.block_size
        );
        Ok(Established {
            round_trips: spent + conn.exchanges(),
            conn,
            seq,
            params: outcome.params,
            probe,
            target_alias: outcome.target_alias,
            first_bytes,
        })
    }
}

/// One LUN as REPORT LUNS and INQUIRY describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSummary {
    pub lun: Lun,
    pub device_type: u8,
    pub vendor: String,
    pub product: String,
    /// Blocks and block size, where the device reports them.
    pub capacity: Option<Capacity>,
}

/// Log in to `opts.target` at its first portal and describe every LUN it reports.
pub async fn list_luns(opts: &ConnectOptions) -> Result<Vec<LunSummary>, IscsiError> {
    let connector = Connector {
        opts: opts.clone(),
        isid: random_isid(),
        first: Mutex::new(None),
    };
    let portal = opts.portals.first().ok_or(IscsiError::Closed)?;
    let LoggedIn {
        mut conn, mut seq, ..
    } = connector.login(portal).await?;
    let data = setup_command(
        &mut conn,
        &mut seq,
        Lun::from_number(0),
        scsi::report_luns(4096),
        4096,
    )
    .await?;
    let mut out = Vec::new();
    for lun in scsi::parse_report_luns(&data)?.into_iter().take(256) {
        let data = setup_command(&mut conn, &mut seq, lun, scsi::inquiry(false, 0, 96), 96).await?;
        let inquiry = scsi::parse_inquiry(&data)?;
        let capacity =
            match setup_command(&mut conn, &mut seq, lun, scsi::read_capacity10(), 8).await {
                Ok(data) => scsi::parse_read_capacity10(&data).ok(),
                Err(_) => None,
            };
        out.push(LunSummary {
            lun,
            device_type: inquiry.device_type,
            vendor: inquiry.vendor,
            product: inquiry.product,
            capacity,
        });
    }
    conn.logout(&mut seq).await;
    Ok(out)
}

fn random_isid() -> [u8; 6] {
    let mut isid = [0x80u8, 0, 0, 0, 0, 0];
    isid[1..].copy_from_slice(&rand::random::<[u8; 5]>());
    isid
}

#[async_trait]
impl Reconnect for Connector {
    /// Log in at `portal` and check that the LUN is the one first probed.
    async fn reconnect(&self, portal: &str) -> Result<(Conn, Seq, Params), IscsiError> {
        let est = self.establish(portal).await?;
        if let Some(first) = &*lock(&self.first) {
            if let Err(reason) = first.same_lun(&est.probe) {
                return Err(IscsiError::IdentityChanged {
                    portal: portal.to_string(),
                    reason,
                });
            }
        }
        Ok((est.conn, est.seq, est.params))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run a command on a setup connection, retrying UNIT ATTENTION and busy statuses.
async fn setup_command(
    conn: &mut Conn,
    seq: &mut Seq,
    lun: Lun,
    cdb: scsi::Cdb,
    read_len: u32,
) -> Result<Bytes, IscsiError> {
    let mut results = setup_commands(conn, seq, lun, &[(cdb, read_len)]).await?;
    Ok(results
        .pop()
        .unwrap_or(Err(ScsiError::Malformed("no outcome".into())))?)
}

/// Run commands on a setup connection all at once (one flight as far as the CmdSN window
/// allows). One that meets a UNIT ATTENTION is sent again at once with the next flight (a TEST
/// UNIT READY is there to take it and is not); those that meet NOT READY or a busy status are
/// sent again after a pause, a few times. Each command's own outcome comes back: its data, or
/// the SCSI status it ended with; the connection failing fails them all.
async fn setup_commands(
    conn: &mut Conn,
    seq: &mut Seq,
    lun: Lun,
    commands: &[(scsi::Cdb, u32)],
) -> Result<Vec<Result<Bytes, ScsiError>>, IscsiError> {
    const ATTEMPTS: u32 = 10;
    let mut results: Vec<Result<Bytes, ScsiError>> = commands
        .iter()
        .map(|_| Err(ScsiError::Malformed("command kept failing".into())))
        .collect();
    let mut sent = vec![0u32; commands.len()];
    let mut waiting: Vec<usize> = (0..commands.len()).collect();
    for round in 0..u64::from(ATTEMPTS) {
        if waiting.is_empty() {
            break;
        }
        if round > 1 {
            tokio::time::sleep(Duration::from_millis(20 * (round - 1))).await;
        }
        let specs: Vec<CommandSpec> = waiting
            .iter()
            .map(|&at| {
                let (cdb, read_len) = commands[at];
                tracing::debug!(
                    "LUN {lun}: command opcode {:#04x}, {read_len} bytes in",
                    cdb[0]
                );
                CommandSpec {
                    lun: lun.to_wire(),
                    cdb,
                    read_len,
                    expect: DataLength::AtMost,
                }
            })
            .collect();
        let resend = |index: usize, outcome: &CommandOutcome| {
            let at = waiting[index];
            sent[at] += 1;
            let (cdb, _) = commands[at];
            unit_attention(outcome) && cdb[0] != TEST_UNIT_READY && sent[at] < ATTEMPTS
        };
        let outcomes = conn.commands(seq, &specs, resend).await?;
        let mut again = Vec::new();
        for (&at, outcome) in waiting.iter().zip(outcomes) {
            let taken = commands[at].0[0] == TEST_UNIT_READY && unit_attention(&outcome);
            results[at] = match check(&outcome) {
                _ if taken => Ok(outcome.data),
                Ok(()) => Ok(outcome.data),
                Err(Verdict::Retry(e)) => {
                    again.push(at);
                    Err(e)
                }
                Err(Verdict::Fail(e)) => Err(e),
            };
        }
        waiting = again;
    }
    Ok(results)
}

/// The opcode of TEST UNIT READY (SPC-4 §6.47).
const TEST_UNIT_READY: u8 = 0x00;

/// CHECK CONDITION with UNIT ATTENTION: reported once, so the same command sent again meets it no
/// more (SAM-5 §5.14).
fn unit_attention(outcome: &CommandOutcome) -> bool {
    outcome.status == status::CHECK_CONDITION
        && scsi::parse_sense(&outcome.sense).is_ok_and(|s| s.key == sense_key::UNIT_ATTENTION)
}

enum Verdict {
    Retry(ScsiError),
    Fail(ScsiError),
}

/// GOOD, or whether the status is worth a retry (UNIT ATTENTION, NOT READY, BUSY, TASK SET FULL).
fn check(outcome: &CommandOutcome) -> Result<(), Verdict> {
    match outcome.status {
        status::GOOD => Ok(()),
        status::CHECK_CONDITION => {
            let sense = scsi::parse_sense(&outcome.sense).ok();
            let err = ScsiError::Status {
                status: outcome.status,
                sense,
            };
            match sense.map(|s| s.key) {
                Some(sense_key::UNIT_ATTENTION) | Some(sense_key::NOT_READY) => {
                    Err(Verdict::Retry(err))
                }
                _ => Err(Verdict::Fail(err)),
            }
        }
        status::BUSY | status::TASK_SET_FULL => Err(Verdict::Retry(ScsiError::Status {
            status: outcome.status,
            sense: None,
        })),
        other => Err(Verdict::Fail(ScsiError::Status {
            status: other,
            sense: None,
        })),
    }
}

/// Why a probe failed: the LUN does not exist, or anything else.
enum ProbeError {
    NoSuchLun,
    Failed(IscsiError),
}

impl<E: Into<IscsiError>> From<E> for ProbeError {
    fn from(e: E) -> Self {
        ProbeError::Failed(e.into())
    }
}

/// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (SPC-4 §4.5.6, ASC 0x25).
fn lun_not_supported(e: &ScsiError) -> bool {
    let unsupported = Sense::LUN_NOT_SUPPORTED;
    e.sense()
        .is_some_and(|s| (s.key, s.asc) == (unsupported.key, unsupported.asc))
}

/// What the LUN is, from one flight of commands (see the module documentation), and its first
/// `first_read` bytes when asked for and read whole.
async fn probe(
    conn: &mut Conn,
    seq: &mut Seq,
    lun: Lun,
    first_read: Option<u32>,
) -> Result<(Probe, Option<Bytes>), ProbeError> {
    let mut commands = vec![
        (scsi::test_unit_ready(), 0),
        (scsi::inquiry(false, 0, 96), 96),
        (scsi::inquiry(true, vpd::UNIT_SERIAL_NUMBER, 255), 255),
        (scsi::inquiry(true, vpd::DEVICE_IDENTIFICATION, 1024), 1024),
        (scsi::read_capacity10(), 8),
        (scsi::read_capacity16(32), 32),
    ];
    // READ(10) up to 32 MiB of 512-byte blocks, which every device type takes.
    let first_read = first_read
        .filter(|&len| len > 0 && len.div_ceil(512) <= u32::from(u16::MAX))
        .and_then(|len| Some((scsi::read(ReadKind::Disk, 0, len.div_ceil(512))?, len)));
    commands.extend(first_read);
    let mut results = setup_commands(conn, seq, lun, &commands).await?.into_iter();
    let mut next = || {
        results
            .next()
            .unwrap_or(Err(ScsiError::Malformed("no outcome".into())))
    };
    let (ready, inquiry, serial, device_id) = (next(), next(), next(), next());
    let (capacity10, capacity16, first_bytes) = (next(), next(), next());
    match ready {
        Err(e) if lun_not_supported(&e) => return Err(ProbeError::NoSuchLun),
        other => other?,
    };
    let inquiry = scsi::parse_inquiry(&inquiry?)?;
    if inquiry.qualifier != 0 || inquiry.device_type == 0x1f {
        return Err(ProbeError::NoSuchLun);
    }
    let serial = match serial {
        Ok(data) => Some(scsi::parse_serial(&data)?).filter(|s| !s.is_empty()),
        Err(_) => None,
    };
    let device_id = match device_id {
        Ok(data) => Some(scsi::parse_device_id(&data)?),
        Err(_) => None,
    };
    let capacity = match (inquiry.device_type == scsi::TYPE_MMC, capacity16) {
        (false, Ok(data)) => scsi::parse_read_capacity16(&data)?,
        _ => scsi::parse_read_capacity10(&capacity10?)?,
    };
    // Kept only when it is all of what was asked, within the LUN.
    let first_bytes = match (first_read, first_bytes) {
        (Some((_, len)), Ok(data))
            if data.len() == len as usize
                && capacity.bytes().is_some_and(|size| size >= u64::from(len)) =>
        {
            Some(data)
        }
        _ => None,
    };
    let probe = Probe {
        inquiry,
        serial,
        device_id,
        capacity,
    };
    Ok((probe, first_bytes))
}

/// A LUN read over one iSCSI session. Many reads may run at once.
pub struct IscsiLun {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    info: LunInfo,
    read_kind: ReadKind,
    lun_wire: u64,
    max_read_blocks: u32,
    /// The LUN's first bytes, read while connecting; reads within them are answered from here
    /// until one reaches their end.
    first_bytes: crate::iobuf::HeldStart,
}

impl std::fmt::Debug for IscsiLun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiLun")
            .field("target", &self.info.target)
            .field("lun", &self.info.lun)
            .finish_non_exhaustive()
    }
}

impl IscsiLun {
    /// Log in (portals tried in order) and probe the LUN.
    pub async fn connect(opts: ConnectOptions) -> Result<Arc<IscsiLun>, IscsiError> {
        if opts.portals.is_empty() {
            return Err(IscsiError::Protocol {
                portal: String::new(),
                reason: "no portal given".into(),
            });
        }
        let started = std::time::Instant::now();
        let connector = Arc::new(Connector {
            opts: opts.clone(),
            isid: random_isid(),
            first: Mutex::new(None),
        });
        let mut last = None;
        let mut established = None;
        for (index, portal) in opts.portals.iter().enumerate() {
            match connector.establish(portal).await {
                Ok(est) => {
                    established = Some((index, est));
                    break;
                }
                Err(e) => {
                    if index + 1 < opts.portals.len() {
                        tracing::warn!("{e}; trying the next portal");
                    }
                    last = Some(e);
                }
            }
        }
        let Some((current, est)) = established else {
            return Err(last.unwrap_or(IscsiError::Closed));
        };
        let portal = opts.portals[current].clone();
        *lock(&connector.first) = Some(est.probe.clone());
        let probe = est.probe;
        let capacity = probe.capacity.bytes().unwrap_or(0);
        let block_size = probe.capacity.block_size;
        let burst = est
            .params
            .max_burst_length
            .min(opts.max_read)
            .max(block_size);
        let info = LunInfo {
            target: opts.target.clone(),
            lun: opts.lun,
            vendor: probe.inquiry.vendor.clone(),
            product: probe.inquiry.product.clone(),
            revision: probe.inquiry.revision.clone(),
            serial: probe.serial.clone(),
            device_id: probe.device_id.clone(),
            device_type: probe.inquiry.device_type,
            block_size,
            blocks: probe.capacity.blocks,
            capacity,
            portal: portal.clone(),
            target_alias: est.target_alias,
            parameters: Vec::new(),
            connect: ConnectCost {
                time: started.elapsed(),
                round_trips: est.round_trips,
            },
        };
        tracing::info!("{portal}: connected in {}", info.connect);
        let shared = Arc::new(Shared {
            portal: Mutex::new(portal),
            params: Mutex::new(est.params),
        });
        let timing = Timing {
            nop_interval: opts.nop_interval,
            stall_timeout: opts.stall_timeout,
            give_up_after: opts.give_up_after,
            read_timeout: opts.read_timeout,
            queue_depth: opts.queue_depth.max(1),
        };
        let tx = Driver::spawn(
            est.conn,
            est.seq,
            opts.portals.clone(),
            current,
            timing,
            connector,
            shared.clone(),
        );
        Ok(Arc::new(IscsiLun {
            tx,
            shared,
            read_kind: if info.device_type == scsi::TYPE_MMC {
                ReadKind::Mmc
            } else {
                ReadKind::Disk
            },
            lun_wire: Lun::from_number(opts.lun).to_wire(),
            max_read_blocks: burst / block_size,
            first_bytes: crate::iobuf::HeldStart::new(est.first_bytes),
            info,
        }))
    }

    pub fn info(&self) -> LunInfo {
        let mut info = self.info.clone();
        info.portal = self.current_portal();
        info.parameters = lock(&self.shared.params)
            .describe()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        info
    }

    pub fn current_portal(&self) -> String {
        lock(&self.shared.portal).clone()
    }

    /// Log out (waiting up to a few seconds for outstanding commands).
    pub async fn logout(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Logout(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }

    /// The largest read issued as one command, in bytes.
    pub fn max_read(&self) -> u32 {
        self.max_read_blocks * self.info.block_size
    }

    async fn submit(
        &self,
        spec: CommandSpec,
    ) -> Result<oneshot::Receiver<Result<CommandOutcome, IscsiError>>, IscsiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Command(spec, tx))
            .await
            .map_err(|_| IscsiError::Closed)?;
        Ok(rx)
    }

    /// Run a command to GOOD status, retrying UNIT ATTENTION and busy statuses a few times.
    pub async fn execute(&self, cdb: scsi::Cdb, read_len: u32) -> Result<Bytes, IscsiError> {
        let spec = CommandSpec {
            lun: self.lun_wire,
            cdb,
            read_len,
            expect: DataLength::AtMost,
        };
        let rx = self.submit(spec.clone()).await?;
        self.finish(&spec, rx).await
    }

    async fn finish(
        &self,
        spec: &CommandSpec,
        mut rx: oneshot::Receiver<Result<CommandOutcome, IscsiError>>,
    ) -> Result<Bytes, IscsiError> {
        let mut last = None;
        for attempt in 0..10u64 {
            let outcome = rx.await.map_err(|_| IscsiError::Closed)??;
            match check(&outcome) {
                Ok(()) => return Ok(outcome.data),
                Err(Verdict::Fail(e)) => return Err(e.into()),
                Err(Verdict::Retry(e)) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                    rx = self.submit(spec.clone()).await?;
                }
            }
        }
        Err(last
            .unwrap_or(ScsiError::Malformed("command kept failing".into()))
            .into())
    }

    /// REPORT LUNS through this session.
    pub async fn report_luns(&self) -> Result<Vec<Lun>, IscsiError> {
        let data = self.execute(scsi::report_luns(4096), 4096).await?;
        Ok(scsi::parse_report_luns(&data)?)
    }

    /// Read `blocks` blocks at `lba` as commands of at most `max_read` bytes, all in flight at
    /// once; the result is exactly `blocks * block_size` bytes, one piece per command (each a
    /// single Data-In segment, never copied).
    async fn read_blocks(&self, lba: u64, blocks: u64) -> Result<Vec<Bytes>, IscsiError> {
        let end = lba
            .checked_add(blocks)
            .filter(|&e| e <= self.info.blocks)
            .ok_or(IscsiError::OutOfRange)?;
        let mut specs = Vec::new();
        let mut at = lba;
        while at < end {
            let n = (end - at).min(u64::from(self.max_read_blocks)) as u32;
            let cdb = scsi::read(self.read_kind, at, n).ok_or(IscsiError::OutOfRange)?;
            tracing::debug!(
                "LUN {}: READ opcode {:#04x}, LBA {at}, {n} blocks",
                self.info.lun,
                cdb[0]
            );
            specs.push(CommandSpec {
                lun: self.lun_wire,
                cdb,
                read_len: n * self.info.block_size,
                expect: DataLength::Exactly,
            });
            at += u64::from(n);
        }
        let mut receivers = Vec::with_capacity(specs.len());
        for spec in &specs {
            receivers.push(self.submit(spec.clone()).await?);
        }
        let mut pieces = Vec::with_capacity(specs.len());
        for (spec, rx) in specs.iter().zip(receivers) {
            let data = self.finish(spec, rx).await?;
            if data.len() != spec.read_len as usize {
                return Err(IscsiError::ShortRead {
                    wanted: spec.read_len,
                    got: data.len(),
                });
            }
            pieces.push(data);
        }
        Ok(pieces)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.info.capacity
    }

    /// The logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.info.block_size
    }

    /// Any byte range within the LUN as one buffer; unaligned ranges are read as whole blocks
    /// and cut.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, IscsiError> {
        Ok(crate::iobuf::join(self.read_range(offset, len).await?))
    }

    /// The pieces of `len` bytes at `offset` (whole blocks read, then cut), one per command.
    pub async fn read_range(&self, offset: u64, len: usize) -> Result<Vec<Bytes>, IscsiError> {
        let size = self.info.capacity;
        offset
            .checked_add(len as u64)
            .filter(|&e| e <= size)
            .ok_or(IscsiError::OutOfRange)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let head = self.first_bytes.head(offset, len);
        let (offset, len) = match &head {
            Some(head) if head.len() == len => return Ok(vec![head.clone()]),
            Some(head) => (offset + head.len() as u64, len - head.len()),
            None => (offset, len),
        };
        let end = offset + len as u64;
        let bs = u64::from(self.info.block_size);
        let first = offset / bs;
        let last = end.div_ceil(bs);
        let mut pieces = self.read_blocks(first, last - first).await?;
        let mut skip = (offset - first * bs) as usize;
        let mut left = len;
        for piece in &mut pieces {
            let take = (piece.len() - skip).min(left);
            *piece = piece.slice(skip..skip + take);
            left -= take;
            skip = 0;
        }
        pieces.retain(|p| !p.is_empty());
        pieces.splice(0..0, head);
        Ok(pieces)
    }
}
