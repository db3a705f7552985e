//! The read-only iSCSI target behind `isomount serve`.
//!
//! - [`scsi`]: a read-only disk or CD-ROM logical unit (SPC-4, SBC-3, MMC-6), without I/O.
//! - [`config`]: target names, device types, the CIDR allow-list (LUN masking) and CHAP secrets.

pub mod config;
pub mod scsi;

/// Why the target could not be set up or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A bad `serve` option or image.
    #[error("{0}")]
    Config(String),
    /// Socket I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
