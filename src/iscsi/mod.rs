//! The iSCSI protocol (RFC 7143), initiator side, and the codec shared with the target.
//!
//! - [`pdu`], [`digest`], [`text`]: the wire codec, no I/O (§11, §6, §13).

pub mod digest;
pub mod pdu;
pub mod text;
