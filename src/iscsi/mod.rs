//! The iSCSI protocol (RFC 7143), initiator side, and the codec shared with the target.
//!
//! - [`pdu`], [`digest`], [`text`]: the wire codec, no I/O (§11, §6, §13).
//! - [`reader`]: the one PDU read loop, shared with the target.
//! - [`login`]: login and CHAP as a state machine, no I/O (§6.3, §12.1.3).
//! - [`session`]: the full-feature phase and recovery as a state machine, no I/O (§4.2, §7.1.4.1);
//!   [`transport`] drives it (and the login and setup exchanges) over tokio.
//! - [`lun`]: one LUN: connect, probe, read, reconnect; [`discovery`]: SendTargets.
//! - [`url`] parses `iscsi://user%secret@host:port/target/lun?digest=crc32c` (user, secret, port
//!   and query optional).
//!
//! Header and data digests are offered as `None,CRC32C` (the target chooses); `?digest=crc32c`,
//! a catalog's `digest = "crc32c"` or `ISOMOUNT_DIGEST=crc32c` prefer CRC32C, and `none` insists
//! on no digests.
//!
//! Nothing here knows the image core: `crate::source::iscsi` adapts a LUN to the block-source
//! seam and classifies its faults.

pub mod digest;
pub mod discovery;
pub mod login;
pub mod lun;
pub mod pdu;
pub mod reader;
pub mod session;
pub mod text;
pub mod transport;
pub mod url;

pub use discovery::{discover, DiscoveredTarget};
pub use login::{Chap, DigestOffer, Secret};
pub use lun::{ConnectOptions, IscsiLun, LunInfo};
pub use url::IscsiUrl;

use crate::scsi::ScsiError;

/// Why an iSCSI operation failed. Messages never contain a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IscsiError {
    #[error("cannot connect to {portal}: {reason}")]
    Connect { portal: String, reason: String },
    #[error("login to {target} at {portal} failed: {reason}")]
    Login {
        target: String,
        portal: String,
        reason: String,
    },
    /// The target broke the protocol or contradicted a command.
    #[error("{portal}: {reason}")]
    Protocol { portal: String, reason: String },
    /// The connection failed after it was made (reset, closed, silent).
    #[error("connection to {portal} lost: {reason}")]
    Lost { portal: String, reason: String },
    #[error("target {target} at {portal} has no LUN {lun}{}", luns_it_has(.available))]
    NoSuchLun {
        target: String,
        portal: String,
        lun: u64,
        /// What REPORT LUNS lists, when it answered.
        available: Option<Vec<crate::scsi::Lun>>,
    },
    #[error("after reconnecting to {portal}, the LUN is not the same one: {reason}")]
    IdentityChanged { portal: String, reason: String },
    #[error("target unreachable for {secs}s, giving up: {last}")]
    GaveUp { secs: u64, last: String },
    #[error("no answer within {secs}s")]
    TimedOut { secs: u64 },
    #[error("target rejected the command (reason {reason:#04x})")]
    Rejected { reason: u8 },
    #[error("read past the end of the LUN")]
    OutOfRange,
    #[error("short read: wanted {wanted} bytes, got {got}")]
    ShortRead { wanted: u32, got: usize },
    #[error("the iSCSI session is closed")]
    Closed,
    #[error(transparent)]
    Scsi(#[from] ScsiError),
}

fn luns_it_has(available: &Option<Vec<crate::scsi::Lun>>) -> String {
    match available.as_deref() {
        None => String::new(),
        Some([]) => " (it reports no LUNs)".to_string(),
        Some(luns) => {
            let list: Vec<String> = luns.iter().map(ToString::to_string).collect();
            format!(" (it has LUN {})", list.join(", "))
        }
    }
}

/// Our initiator name: `iqn.2024-01.org.isomount:` and the host name.
pub fn default_initiator_name() -> String {
    let host = crate::platform::host_name()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "initiator".to_string());
    format!("iqn.2024-01.org.isomount:{host}")
}

/// `ISOMOUNT_STALL_TIMEOUT=SECONDS` (a decimal number, 0.1 to 3600): how long a connection may
/// stay silent while we wait for the target, or send bytes without any command making progress,
/// before it is given up (8 s unless set). Tests shorten it; an unusable value is ignored with a
/// warning.
pub fn stall_timeout_from_env() -> Option<std::time::Duration> {
    let text = std::env::var("ISOMOUNT_STALL_TIMEOUT").ok()?;
    let secs = text
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.1..=3600.0).contains(s));
    if secs.is_none() {
        tracing::warn!("ISOMOUNT_STALL_TIMEOUT=`{text}` ignored: seconds from 0.1 to 3600");
    }
    secs.map(std::time::Duration::from_secs_f64)
}

/// `ISOMOUNT_DIGEST=crc32c` prefers CRC32C digests, `none` refuses them; unset (or any other
/// value) leaves the choice to the target.
pub fn digest_from_env() -> DigestOffer {
    std::env::var("ISOMOUNT_DIGEST")
        .ok()
        .and_then(|v| DigestOffer::parse(&v))
        .unwrap_or_default()
}
