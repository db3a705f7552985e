//! The read-only iSCSI target behind `isomount serve`.
//!
//! [`scsi`] emulates a read-only disk or CD-ROM logical unit (SPC-4, SBC-3, MMC-6) without I/O.
pub mod scsi;
