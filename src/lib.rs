//! isomount: a portable userspace iSCSI initiator for published read-only images.
//!
//! The path of a byte: FUSE read → image core (offset → chunks) → cache (hit: verified bytes) or
//! fetcher (miss: coalesced READs on the session) → verify against the manifest → cache → reply.
//! Layers never reach back up: `iscsi` knows no cache and no FUSE; `cache` knows no network.

pub mod cache;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod fs;
pub mod http;
pub mod image;
pub mod iobuf;
pub mod iscsi;
pub mod iso9660;
pub mod manifest;
pub mod platform;
pub mod scsi;
pub mod signature;
pub mod source;
pub mod target;
pub mod tree;

pub use cli::run;
