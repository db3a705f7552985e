//! The SCSI vocabulary, one for initiator and target: operation codes ([`opcode`]), sense data
//! ([`sense`]), vital product data pages ([`vpd`]), status codes and device types; and the
//! initiator's CDB builders and response parsers for INQUIRY (SPC-4 §6.6), REPORT LUNS
//! (SPC-4 §6.33), TEST UNIT READY, READ CAPACITY(10)/(16) (SBC-3 §5.15–5.16; MMC-6 §6.23),
//! READ(10)/(12)/(16) (SBC-3 §5.8–5.10; MMC-6 §6.19), and the single-level LUN encoding of
//! SAM-5 §4.7. The target's logical unit (`crate::target::scsi`) answers in the same terms.
//!
//! No I/O and no knowledge of iSCSI: every parser takes bytes and fails on short or malformed input.

pub mod opcode;
pub mod sense;
pub mod vpd;

pub use sense::{parse_sense, sense_key, Sense};
pub use vpd::{parse_device_id, parse_serial, parse_supported_pages, vpd_payload};

/// SCSI status codes (SAM-5 §5.3).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Peripheral device type of a direct-access block device (SBC).
pub const TYPE_DISK: u8 = 0x00;
/// Peripheral device type of a CD/DVD (MMC) device.
pub const TYPE_MMC: u8 = 0x05;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScsiError {
    #[error("{what}: response of {len} bytes is too short")]
    Short { what: &'static str, len: usize },
    #[error("{0}")]
    Malformed(String),
    #[error("SCSI status {status:#04x}{}", .sense.map(|s| format!(", {s}")).unwrap_or_default())]
    Status { status: u8, sense: Option<Sense> },
}

impl ScsiError {
    /// The sense data of a CHECK CONDITION, if any.
    pub fn sense(&self) -> Option<Sense> {
        match self {
            Self::Status { sense, .. } => *sense,
            _ => None,
        }
    }
}

fn need(what: &'static str, data: &[u8], len: usize) -> Result<(), ScsiError> {
    if data.len() < len {
        return Err(ScsiError::Short {
            what,
            len: data.len(),
        });
    }
    Ok(())
}

/// A 16-byte CDB slot as the iSCSI SCSI Command PDU carries it.
pub type Cdb = [u8; 16];

pub fn inquiry(evpd: bool, page: u8, alloc: u16) -> Cdb {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode::INQUIRY;
    cdb[1] = u8::from(evpd);
    cdb[2] = page;
    cdb[3..5].copy_from_slice(&alloc.to_be_bytes());
    cdb
}

pub fn test_unit_ready() -> Cdb {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode::TEST_UNIT_READY;
    cdb
}

pub fn report_luns(alloc: u32) -> Cdb {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode::REPORT_LUNS;
    cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
    cdb
}

pub fn read_capacity10() -> Cdb {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode::READ_CAPACITY_10;
    cdb
}

pub fn read_capacity16(alloc: u32) -> Cdb {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode::SERVICE_ACTION_IN_16;
    cdb[1] = opcode::READ_CAPACITY_16_ACTION;
    cdb[10..14].copy_from_slice(&alloc.to_be_bytes());
    cdb
}

/// Which READ CDB a device takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// Block devices: READ(10) where it fits, else READ(16).
    Disk,
    /// MMC devices (tgtd's CD LUNs refuse READ(16)): READ(10), else READ(12).
    Mmc,
}

/// A READ of `blocks` blocks at `lba`. `None` when the request cannot be expressed (an MMC device
/// past a 32-bit LBA).
pub fn read(kind: ReadKind, lba: u64, blocks: u32) -> Option<Cdb> {
    let mut cdb = [0u8; 16];
    let lba32 = u32::try_from(lba).ok();
    match (lba32, u16::try_from(blocks)) {
        (Some(lba), Ok(n)) => {
            cdb[0] = opcode::READ_10;
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&n.to_be_bytes());
        }
        (Some(lba), Err(_)) if kind == ReadKind::Mmc => {
            cdb[0] = opcode::READ_12;
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[6..10].copy_from_slice(&blocks.to_be_bytes());
        }
        _ if kind == ReadKind::Mmc => return None,
        _ => {
            cdb[0] = opcode::READ_16;
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        }
    }
    Some(cdb)
}

/// Standard INQUIRY data (SPC-4 §6.6.2), the parts we show.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inquiry {
    pub qualifier: u8,
    pub device_type: u8,
    pub removable: bool,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

/// A fixed-width ASCII field as text: trimmed of spaces and NULs, control characters dropped.
fn ascii(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

pub fn parse_inquiry(data: &[u8]) -> Result<Inquiry, ScsiError> {
    need("INQUIRY", data, 36)?;
    Ok(Inquiry {
        qualifier: data[0] >> 5,
        device_type: data[0] & 0x1f,
        removable: data[1] & 0x80 != 0,
        vendor: ascii(&data[8..16]),
        product: ascii(&data[16..32]),
        revision: ascii(&data[32..36]),
    })
}

/// Capacity: number of blocks and block length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub blocks: u64,
    pub block_size: u32,
}

impl Capacity {
    pub fn bytes(&self) -> Option<u64> {
        self.blocks.checked_mul(u64::from(self.block_size))
    }
}

fn checked_capacity(last_lba: u64, block_size: u32) -> Result<Capacity, ScsiError> {
    if block_size == 0 || block_size > 1 << 20 {
        return Err(ScsiError::Malformed(format!(
            "implausible block size {block_size}"
        )));
    }
    let blocks = last_lba
        .checked_add(1)
        .ok_or_else(|| ScsiError::Malformed("capacity overflows".into()))?;
    let cap = Capacity { blocks, block_size };
    cap.bytes()
        .ok_or_else(|| ScsiError::Malformed("capacity overflows".into()))?;
    Ok(cap)
}

pub fn parse_read_capacity10(data: &[u8]) -> Result<Capacity, ScsiError> {
    need("READ CAPACITY(10)", data, 8)?;
    let last = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let size = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    checked_capacity(u64::from(last), size)
}

pub fn parse_read_capacity16(data: &[u8]) -> Result<Capacity, ScsiError> {
    need("READ CAPACITY(16)", data, 12)?;
    let mut last = [0u8; 8];
    last.copy_from_slice(&data[0..8]);
    let size = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    checked_capacity(u64::from_be_bytes(last), size)
}

/// REPORT LUNS: the LUN numbers listed.
pub fn parse_report_luns(data: &[u8]) -> Result<Vec<u64>, ScsiError> {
    need("REPORT LUNS", data, 8)?;
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let list = &data[8..data.len().min(8usize.saturating_add(len))];
    Ok(list
        .chunks_exact(8)
        .map(|entry| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(entry);
            lun_from_wire(u64::from_be_bytes(raw))
        })
        .collect())
}

/// A LUN number as the 8-byte LUN field (SAM-5 §4.7: peripheral addressing below 256, flat
/// space addressing up to 16383, else the raw value).
pub fn lun_to_wire(lun: u64) -> u64 {
    match lun {
        0..=255 => lun << 48,
        256..=16383 => (0x4000 | lun) << 48,
        _ => lun,
    }
}

/// The inverse of [`lun_to_wire`] for the addressing methods it produces.
pub fn lun_from_wire(raw: u64) -> u64 {
    let first = (raw >> 48) as u16;
    match first >> 14 {
        0 if raw & 0x0000_ffff_ffff_ffff == 0 => u64::from(first & 0xff),
        1 if raw & 0x0000_ffff_ffff_ffff == 0 => u64::from(first & 0x3fff),
        _ => raw,
    }
}

/// A human name for a peripheral device type (SPC-4 Table 49).
pub fn device_type_name(device_type: u8) -> &'static str {
    match device_type {
        0x00 => "direct-access block device (disk)",
        0x01 => "sequential-access device (tape)",
        0x05 => "CD/DVD device (MMC)",
        0x07 => "optical memory device",
        0x0c => "storage array controller",
        0x0d => "enclosure services device",
        0x1f => "unknown or no device",
        _ => "other device",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tgtd's standard INQUIRY data for a disk LUN.
    #[test]
    fn inquiry_fixture() {
        let mut data = vec![0x00, 0x00, 0x05, 0x12, 0x3b, 0, 0, 0x02];
        data.extend_from_slice(b"IET     VIRTUAL-DISK    0001");
        data.resize(66, 0);
        let inq = parse_inquiry(&data).unwrap();
        assert_eq!(inq.device_type, 0);
        assert_eq!(inq.vendor, "IET");
        assert_eq!(inq.product, "VIRTUAL-DISK");
        assert_eq!(inq.revision, "0001");
        assert!(parse_inquiry(&data[..35]).is_err());
    }

    #[test]
    fn vpd_pages() {
        let serial = [0x00, 0x80, 0x00, 0x06, b'b', b'e', b'a', b'f', b'1', b' '];
        assert_eq!(parse_serial(&serial).unwrap(), "beaf1");
        assert!(parse_serial(&[0x00, 0x83, 0, 0]).is_err());
        let pages = [0x00, 0x00, 0x00, 0x03, 0x00, 0x80, 0x83];
        assert_eq!(parse_supported_pages(&pages).unwrap(), vec![0, 0x80, 0x83]);
        let devid = [
            0x00, 0x83, 0x00, 0x0c, 0x01, 0x03, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(parse_device_id(&devid).unwrap().len(), 12);
        let bad = [0x00, 0x83, 0x00, 0x05, 0x01, 0x03, 0x00, 0x08, 1];
        assert!(parse_device_id(&bad).is_err());
    }

    #[test]
    fn capacities() {
        let rc10 = [0x00, 0x00, 0x07, 0xff, 0x00, 0x00, 0x08, 0x00];
        assert_eq!(
            parse_read_capacity10(&rc10).unwrap(),
            Capacity {
                blocks: 2048,
                block_size: 2048
            }
        );
        let mut rc16 = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 0];
        rc16.resize(32, 0);
        let cap = parse_read_capacity16(&rc16).unwrap();
        assert_eq!(cap.blocks, (1 << 32) + 1);
        assert_eq!(cap.bytes(), Some(((1u64 << 32) + 1) * 512));
        let overflow = [0xff; 12];
        assert!(parse_read_capacity16(&overflow).is_err());
        assert!(parse_read_capacity10(&[0, 0, 0, 1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn read_cdbs() {
        let r10 = read(ReadKind::Disk, 0x1234, 8).unwrap();
        assert_eq!(&r10[..10], &[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        let r16 = read(ReadKind::Disk, 1 << 33, 8).unwrap();
        assert_eq!(r16[0], 0x88);
        assert_eq!(&r16[2..10], &(1u64 << 33).to_be_bytes());
        let r12 = read(ReadKind::Mmc, 16, 70_000).unwrap();
        assert_eq!(r12[0], 0xa8);
        assert_eq!(&r12[6..10], &70_000u32.to_be_bytes());
        assert_eq!(read(ReadKind::Mmc, 1 << 33, 1), None);
        let big_disk = read(ReadKind::Disk, 0, 70_000).unwrap();
        assert_eq!(big_disk[0], 0x88);
    }

    #[test]
    fn report_luns_and_lun_encoding() {
        let mut data = vec![0, 0, 0, 16, 0, 0, 0, 0];
        data.extend_from_slice(&lun_to_wire(0).to_be_bytes());
        data.extend_from_slice(&lun_to_wire(300).to_be_bytes());
        assert_eq!(parse_report_luns(&data).unwrap(), vec![0, 300]);
        assert_eq!(lun_to_wire(1), 0x0001_0000_0000_0000);
        assert_eq!(lun_to_wire(300), 0x412c_0000_0000_0000);
        assert!(parse_report_luns(&[0; 4]).is_err());
    }

    #[test]
    fn sense_formats() {
        let mut fixed = vec![0x70, 0, 0x06, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x29, 0x00];
        fixed.resize(18, 0);
        let sense = parse_sense(&fixed).unwrap();
        assert_eq!((sense.key, sense.asc, sense.ascq), (6, 0x29, 0));
        assert!(sense.to_string().contains("UNIT ATTENTION"));
        let desc = [0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0];
        assert_eq!(parse_sense(&desc).unwrap().key, sense_key::ILLEGAL_REQUEST);
        assert!(parse_sense(&[0x70, 0, 6]).is_err());
        assert!(parse_sense(&[0x10]).is_err());
    }
}
