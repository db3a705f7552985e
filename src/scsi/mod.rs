//! The SCSI vocabulary, one for initiator and target: operation codes ([`opcode`]), sense data
//! ([`sense`]), vital product data pages ([`vpd`]), status codes and device types; and the
//! initiator's CDB builders and response parsers for INQUIRY (SPC-4 §6.6), REPORT LUNS
//! (SPC-4 §6.33), TEST UNIT READY, READ CAPACITY(10)/(16) (SBC-3 §5.15–5.16; MMC-6 §6.23),
//! READ(10)/(12)/(16) (SBC-3 §5.8–5.10; MMC-6 §6.19), and the LUN addressing methods of SAM-5
//! §4.7. The target's logical unit (`crate::target::scsi`) answers in the same terms.
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

/// REPORT LUNS: the LUNs listed, each decoded from its 8-byte LUN field.
pub fn parse_report_luns(data: &[u8]) -> Result<Vec<Lun>, ScsiError> {
    need("REPORT LUNS", data, 8)?;
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let list = &data[8..data.len().min(8usize.saturating_add(len))];
    Ok(list
        .chunks_exact(8)
        .map(|entry| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(entry);
            Lun::from_wire(u64::from_be_bytes(raw))
        })
        .collect())
}

/// A logical unit as its 8-byte LUN field addresses it (SAM-5 §4.7), decoded by addressing
/// method. Decoding is faithful: `Lun::from_wire(raw).to_wire() == raw` for every `raw`, so two
/// different fields never become the same LUN.
///
/// ```text
///  byte 0                  byte 1          bytes 2..8
///  7 6 | 5 4 3 2 1 0     | 7 … 0          |
///  0 0 | BUS IDENTIFIER  | TARGET OR LUN  | zero          peripheral device addressing
///  0 1 | FLAT SPACE LUN (14 bits)         | zero          flat space addressing
///  anything else (logical unit or extended addressing, more levels)    opaque
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lun {
    /// Peripheral device addressing (SAM-5 §4.7.7.2) at a single level: with bus 0, the
    /// second byte is the LUN; with another bus, a target on that bus.
    Peripheral { bus: u8, target_or_lun: u8 },
    /// Flat space addressing (SAM-5 §4.7.7.3) at a single level: a 14-bit LUN.
    Flat(u16),
    /// Any other field (logical unit or extended addressing, several levels), kept whole.
    Opaque(u64),
}

/// The first two bytes of a LUN field, the rest of it zero (a single-level LUN).
const SINGLE_LEVEL_REST: u64 = 0x0000_ffff_ffff_ffff;
/// Numbers below this are single-level LUNs (SAM-5 §4.7); larger ones are the LUN field itself.
const FIRST_FIELD_NUMBER: u64 = 0x4000;

impl Lun {
    pub fn from_wire(raw: u64) -> Lun {
        if raw & SINGLE_LEVEL_REST != 0 {
            return Lun::Opaque(raw);
        }
        let [first, second, ..] = raw.to_be_bytes();
        match first >> 6 {
            0b00 => Lun::Peripheral {
                bus: first & 0x3f,
                target_or_lun: second,
            },
            0b01 => Lun::Flat(u16::from_be_bytes([first & 0x3f, second])),
            _ => Lun::Opaque(raw),
        }
    }

    pub fn to_wire(self) -> u64 {
        match self {
            Lun::Peripheral { bus, target_or_lun } => {
                u64::from(u16::from_be_bytes([bus & 0x3f, target_or_lun])) << 48
            }
            Lun::Flat(lun) => u64::from(0x4000 | (lun & 0x3fff)) << 48,
            Lun::Opaque(raw) => raw,
        }
    }

    /// The LUN a catalog or URL names by number: peripheral addressing below 256, flat space
    /// addressing up to 16383, else the LUN field itself.
    pub fn from_number(number: u64) -> Lun {
        match u8::try_from(number) {
            Ok(lun) => Lun::Peripheral {
                bus: 0,
                target_or_lun: lun,
            },
            Err(_) if number < FIRST_FIELD_NUMBER => Lun::Flat(number as u16),
            Err(_) => Lun::from_wire(number),
        }
    }

    /// The number that names this LUN in a catalog or URL ([`Lun::from_number`] gives it back);
    /// `None` for the few multi-level fields whose value is below 16384, which no number names.
    pub fn number(self) -> Option<u64> {
        match self {
            Lun::Peripheral {
                bus: 0,
                target_or_lun,
            } => Some(u64::from(target_or_lun)),
            Lun::Flat(lun) if lun > 0xff => Some(u64::from(lun)),
            _ => Some(self.to_wire()).filter(|&raw| raw >= FIRST_FIELD_NUMBER),
        }
    }
}

/// The number alone for the usual LUNs; the number (or the field, when no number names it) and
/// the addressing for the others, so that no two LUNs look alike.
impl std::fmt::Display for Lun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addressing = match *self {
            Lun::Peripheral {
                bus: 0,
                target_or_lun,
            } => return write!(f, "{target_or_lun}"),
            Lun::Flat(lun) if lun > 0xff => return write!(f, "{lun}"),
            Lun::Peripheral { bus, target_or_lun } => {
                format!("peripheral addressing, bus {bus}, target {target_or_lun}")
            }
            Lun::Flat(lun) => format!("flat space addressing, LUN {lun}"),
            Lun::Opaque(raw) => format!("LUN field {raw:#018x}"),
        };
        match self.number() {
            Some(number) => write!(f, "{number} ({addressing})"),
            None => write!(f, "{addressing}"),
        }
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
        data.extend_from_slice(&Lun::from_number(0).to_wire().to_be_bytes());
        data.extend_from_slice(&Lun::from_number(300).to_wire().to_be_bytes());
        let luns = parse_report_luns(&data).unwrap();
        assert_eq!(luns, vec![Lun::from_number(0), Lun::from_number(300)]);
        assert_eq!(luns[1], Lun::Flat(300));
        assert_eq!(Lun::from_number(1).to_wire(), 0x0001_0000_0000_0000);
        assert_eq!(Lun::from_number(300).to_wire(), 0x412c_0000_0000_0000);
        assert!(parse_report_luns(&[0; 4]).is_err());
    }

    /// LUN fields of each addressing method (SAM-5 §4.7), as REPORT LUNS lists them.
    const LUN_FIELDS: [([u8; 8], Lun, &str); 9] = [
        (
            [0x00, 0x00, 0, 0, 0, 0, 0, 0],
            Lun::Peripheral {
                bus: 0,
                target_or_lun: 0,
            },
            "0",
        ),
        (
            [0x00, 0x07, 0, 0, 0, 0, 0, 0],
            Lun::Peripheral {
                bus: 0,
                target_or_lun: 7,
            },
            "7",
        ),
        (
            [0x01, 0x00, 0, 0, 0, 0, 0, 0],
            Lun::Peripheral {
                bus: 1,
                target_or_lun: 0,
            },
            "72057594037927936 (peripheral addressing, bus 1, target 0)",
        ),
        ([0x41, 0x2c, 0, 0, 0, 0, 0, 0], Lun::Flat(300), "300"),
        (
            [0x40, 0x05, 0, 0, 0, 0, 0, 0],
            Lun::Flat(5),
            "4613093393310941184 (flat space addressing, LUN 5)",
        ),
        (
            [0x80, 0x21, 0, 0, 0, 0, 0, 0],
            Lun::Opaque(0x8021_0000_0000_0000),
            "9232660711086227456 (LUN field 0x8021000000000000)",
        ),
        (
            [0xd2, 0x00, 0x12, 0x34, 0x56, 0, 0, 0],
            Lun::Opaque(0xd200_1234_5600_0000),
            "15132114763955306496 (LUN field 0xd200123456000000)",
        ),
        (
            [0x00, 0x01, 0x00, 0x02, 0, 0, 0, 0],
            Lun::Opaque(0x0001_0002_0000_0000),
            "281483566645248 (LUN field 0x0001000200000000)",
        ),
        (
            [0, 0, 0, 0, 0, 0, 0x00, 0x2a],
            Lun::Opaque(0x2a),
            "LUN field 0x000000000000002a",
        ),
    ];

    #[test]
    fn lun_fields_decode_by_addressing_method() {
        for (field, lun, shown) in LUN_FIELDS {
            let raw = u64::from_be_bytes(field);
            assert_eq!(Lun::from_wire(raw), lun, "{field:02x?}");
            assert_eq!(lun.to_wire(), raw, "{field:02x?}");
            assert_eq!(lun.to_string(), shown, "{field:02x?}");
            match lun.number() {
                Some(number) => assert_eq!(Lun::from_number(number), lun, "{field:02x?}"),
                None => assert!(raw < FIRST_FIELD_NUMBER, "{field:02x?}"),
            }
        }
    }

    /// Peripheral addressing on another bus is not LUN 0: `discover -l` lists both, once each.
    #[test]
    fn report_luns_keeps_every_lun_distinct() {
        let mut data = vec![0, 0, 0, (LUN_FIELDS.len() * 8) as u8, 0, 0, 0, 0];
        for (field, _, _) in LUN_FIELDS {
            data.extend_from_slice(&field);
        }
        let luns = parse_report_luns(&data).unwrap();
        let expected: Vec<Lun> = LUN_FIELDS.iter().map(|(_, lun, _)| *lun).collect();
        assert_eq!(luns, expected);
        let shown: std::collections::HashSet<String> = luns.iter().map(Lun::to_string).collect();
        assert_eq!(shown.len(), luns.len(), "{shown:?}");
    }

    #[test]
    fn every_lun_field_round_trips() {
        let mut raw = 0x9e37_79b9_7f4a_7c15u64;
        let edges = (0..=0xffffu64).map(|first| first << 48);
        let spread = (0..100_000).map(|_| {
            raw = raw
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            raw
        });
        for field in edges.chain(spread).chain([1, 0x3fff, 0x4000, u64::MAX]) {
            let lun = Lun::from_wire(field);
            assert_eq!(lun.to_wire(), field, "{field:#018x}");
            if let Some(number) = lun.number() {
                assert_eq!(Lun::from_number(number), lun, "{field:#018x}");
            }
        }
        for number in (0..0x1_0000).chain([u64::MAX]) {
            let lun = Lun::from_number(number);
            assert_eq!(Lun::from_wire(lun.to_wire()), lun, "{number}");
        }
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
