//! SCSI emulation of one read-only logical unit, without I/O.
//!
//! Implements the subsets of SPC-4 (INQUIRY §6.6 with VPD pages 0x00, 0x80, 0x83 §7.8, REPORT
//! LUNS §6.33, MODE SENSE(6/10) §6.11–6.12, REQUEST SENSE §6.39, TEST UNIT READY §6.47, fixed
//! sense data §4.5.3), SBC-3 (READ CAPACITY(10/16) §5.16–5.17, READ(6/10/12/16) §5.8–5.11,
//! VERIFY and PRE-FETCH range checks, Block Limits VPD 0xB0 §6.5.3) and MMC-6 (READ TOC §6.33,
//! GET CONFIGURATION §6.6) that a read-only disk or CD-ROM needs.
//!
//! [`LogicalUnit::execute`] turns a CDB into an [`Outcome`]: data to return, a byte range to read
//! from the image, or CHECK CONDITION with sense. The connection layer does the reading, so every
//! rule here is tested with CDB byte fixtures. Every field taken from a CDB is range-checked
//! with checked arithmetic; the media is never written. Opcodes, sense data and VPD page codes
//! are the initiator's too ([`crate::scsi`]).

pub use crate::scsi::Sense;
use crate::scsi::{opcode as op, vpd, TYPE_DISK, TYPE_MMC};

/// The kind of device a LUN presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// Direct-access block device (SBC), 512-byte blocks.
    Disk,
    /// CD-ROM (MMC), 2048-byte blocks, removable.
    Cd,
}

impl DeviceType {
    /// SPC peripheral device type code.
    pub fn peripheral_type(self) -> u8 {
        match self {
            DeviceType::Disk => TYPE_DISK,
            DeviceType::Cd => TYPE_MMC,
        }
    }

    /// Logical block size served for this type.
    pub fn block_size(self) -> u32 {
        match self {
            DeviceType::Disk => 512,
            DeviceType::Cd => 2048,
        }
    }
}

/// What a command produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD status and no data.
    Good,
    /// GOOD status with these bytes (already cut to the allocation length).
    Data(Vec<u8>),
    /// GOOD status with `len` bytes of the image at `offset`. The range lies within the LUN's
    /// capacity; the part of it past the image's size (a partial last block) reads as zeros.
    Read { offset: u64, len: u64 },
    /// VERIFY with BYTCHK: GOOD if the `len` bytes of Data-Out equal the image at `offset`,
    /// else MISCOMPARE.
    Compare { offset: u64, len: u64 },
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// The largest READ this target accepts, in bytes; advertised in the Block Limits VPD page.
/// Reads are streamed in pieces, so this bounds time per command, not memory.
pub const MAX_TRANSFER_BYTES: u64 = 32 * 1024 * 1024;

const VENDOR: &str = "ISOMOUNT";
const REVISION: &str = env!("CARGO_PKG_VERSION");

/// The fixed facts of one read-only logical unit.
#[derive(Debug, Clone)]
pub struct LogicalUnit {
    device: DeviceType,
    /// Image size in bytes.
    size: u64,
    /// Number of logical blocks: the size rounded up to whole blocks.
    blocks: u64,
    product: String,
    serial: String,
    /// Locally assigned NAA identifier (NAA type 3, 60 bits).
    naa: u64,
    target_name: String,
}

impl LogicalUnit {
    /// A LUN over an image of `size` bytes (must be > 0). `serial` and `target_name` identify it
    /// in VPD pages 0x80 and 0x83; `product` is the INQUIRY product field (cut to 16 bytes).
    pub fn new(
        device: DeviceType,
        size: u64,
        product: &str,
        serial: &str,
        target_name: &str,
    ) -> LogicalUnit {
        let bs = u64::from(device.block_size());
        let blocks = size.div_ceil(bs);
        let naa = (0x3u64 << 60) | (fnv1a(serial.as_bytes()) & 0x0fff_ffff_ffff_ffff);
        LogicalUnit {
            device,
            size,
            blocks,
            product: product.to_string(),
            serial: serial.to_string(),
            naa,
            target_name: target_name.to_string(),
        }
    }

    pub fn device(&self) -> DeviceType {
        self.device
    }

    pub fn block_size(&self) -> u32 {
        self.device.block_size()
    }

    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Image size in bytes (the last block may be partial).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Execute one CDB addressed to this LUN.
    pub fn execute(&self, cdb: &[u8]) -> Outcome {
        let Some(&opcode) = cdb.first() else {
            return Outcome::Check(Sense::INVALID_OPCODE);
        };
        if cdb.len() < cdb_length(opcode) {
            return Outcome::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        let result = match opcode {
            op::TEST_UNIT_READY => Ok(Outcome::Good),
            op::REQUEST_SENSE => Ok(request_sense(cdb, Sense::NO_SENSE)),
            op::INQUIRY => self.inquiry(cdb),
            op::REPORT_LUNS => report_luns(cdb),
            op::READ_CAPACITY_10 => self.read_capacity_10(cdb),
            op::SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == op::READ_CAPACITY_16_ACTION => {
                self.read_capacity_16(cdb)
            }
            op::READ_6 => {
                let lba = u64::from(u32::from_be_bytes([0, cdb[1] & 0x1f, cdb[2], cdb[3]]));
                let blocks = match cdb[4] {
                    0 => 256,
                    n => u64::from(n),
                };
                self.read(lba, blocks)
            }
            op::READ_10 | op::READ_12 | op::READ_16 => {
                if cdb[1] & 0xe0 != 0 {
                    // RDPROTECT: this LUN has no protection information.
                    return Outcome::Check(Sense::INVALID_FIELD_IN_CDB);
                }
                let (lba, blocks) = lba_and_length(cdb);
                self.read(lba, blocks)
            }
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.verify(cdb),
            op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
                let (lba, blocks) = lba_and_length(cdb);
                self.check_range(lba, blocks).map(|_| Outcome::Good)
            }
            op::SYNCHRONIZE_CACHE_10
            | op::SYNCHRONIZE_CACHE_16
            | op::START_STOP_UNIT
            | op::PREVENT_ALLOW_MEDIUM_REMOVAL => Ok(Outcome::Good),
            op::MODE_SENSE_6 => self.mode_sense(cdb, false),
            op::MODE_SENSE_10 => self.mode_sense(cdb, true),
            op::READ_TOC if self.device == DeviceType::Cd => self.read_toc(cdb),
            op::GET_CONFIGURATION if self.device == DeviceType::Cd => self.get_configuration(cdb),
            _ if is_write_type(cdb) => Err(Sense::WRITE_PROTECTED),
            _ => Err(Sense::INVALID_OPCODE),
        };
        result.unwrap_or_else(Outcome::Check)
    }

    fn inquiry(&self, cdb: &[u8]) -> Result<Outcome, Sense> {
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let alloc = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
        if cdb[1] & 0xfe != 0 || (!evpd && page != 0) {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let data = if evpd {
            self.vpd(page)?
        } else {
            self.standard_inquiry()
        };
        Ok(truncated(data, alloc))
    }

    fn standard_inquiry(&self) -> Vec<u8> {
        let mut d = vec![0u8; 96];
        d[0] = self.device.peripheral_type();
        d[1] = if self.device == DeviceType::Cd {
            0x80
        } else {
            0
        }; // RMB
        d[2] = 0x06; // SPC-4
        d[3] = 0x10 | 0x02; // HiSup, response data format 2
        d[4] = (d.len() - 5) as u8;
        d[7] = 0x02; // CmdQue
        put_ascii(&mut d[8..16], VENDOR);
        put_ascii(&mut d[16..32], &self.product);
        put_ascii(&mut d[32..36], REVISION);
        let command_set: u16 = match self.device {
            DeviceType::Disk => 0x04c0, // SBC-3
            DeviceType::Cd => 0x05a0,   // MMC-5
        };
        // Version descriptors: SAM-5, iSCSI, SPC-4, and the command set.
        for (i, v) in [0x00a0u16, 0x0960, 0x0460, command_set].iter().enumerate() {
            d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        d
    }

    fn supported_vpd_pages(&self) -> &'static [u8] {
        match self.device {
            DeviceType::Disk => &[
                vpd::SUPPORTED_PAGES,
                vpd::UNIT_SERIAL_NUMBER,
                vpd::DEVICE_IDENTIFICATION,
                vpd::BLOCK_LIMITS,
            ],
            DeviceType::Cd => &[
                vpd::SUPPORTED_PAGES,
                vpd::UNIT_SERIAL_NUMBER,
                vpd::DEVICE_IDENTIFICATION,
            ],
        }
    }

    fn vpd(&self, page: u8) -> Result<Vec<u8>, Sense> {
        if !self.supported_vpd_pages().contains(&page) {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let body = match page {
            vpd::SUPPORTED_PAGES => self.supported_vpd_pages().to_vec(),
            vpd::UNIT_SERIAL_NUMBER => {
                let mut s = self.serial.as_bytes().to_vec();
                s.truncate(252);
                s
            }
            vpd::DEVICE_IDENTIFICATION => self.device_identification(),
            _ => self.block_limits(),
        };
        Ok(vpd::page(self.device.peripheral_type(), page, &body))
    }

    /// Designation descriptors (SPC-4 §7.8.6): NAA locally assigned, T10 vendor id, and the
    /// target's iSCSI name as a SCSI name string.
    fn device_identification(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // NAA (type 3), binary, associated with the logical unit.
        out.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
        out.extend_from_slice(&self.naa.to_be_bytes());
        // T10 vendor identification (type 1), ASCII: vendor (8 bytes) + serial.
        let mut t10 = vec![b' '; 8];
        put_ascii(&mut t10, VENDOR);
        t10.extend(self.serial.bytes().take(64));
        out.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
        out.extend_from_slice(&t10);
        // SCSI name string (type 8), UTF-8, iSCSI protocol, associated with the target device:
        // null-terminated and padded to a multiple of 4.
        let mut name: Vec<u8> = self.target_name.bytes().take(223).collect();
        name.push(0);
        while name.len() % 4 != 0 {
            name.push(0);
        }
        out.extend_from_slice(&[0x53, 0xa8, 0x00, name.len() as u8]);
        out.extend_from_slice(&name);
        out
    }

    /// Block Limits (SBC-3 §6.5.3).
    fn block_limits(&self) -> Vec<u8> {
        let bs = u64::from(self.block_size());
        let mut b = vec![0u8; 0x3c];
        // Offsets below are page offsets minus the 4-byte header.
        b[2..4].copy_from_slice(&1u16.to_be_bytes()); // optimal transfer length granularity
        b[4..8].copy_from_slice(&((MAX_TRANSFER_BYTES / bs) as u32).to_be_bytes());
        b[8..12].copy_from_slice(&(((1024 * 1024) / bs) as u32).to_be_bytes());
        b
    }

    fn read_capacity_10(&self, cdb: &[u8]) -> Result<Outcome, Sense> {
        let pmi = cdb[8] & 0x01 != 0;
        if !pmi && cdb[2..6] != [0, 0, 0, 0] {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let last = u32::try_from(self.blocks - 1).unwrap_or(u32::MAX);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&last.to_be_bytes());
        d.extend_from_slice(&self.block_size().to_be_bytes());
        Ok(Outcome::Data(d))
    }

    fn read_capacity_16(&self, cdb: &[u8]) -> Result<Outcome, Sense> {
        let alloc = u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]) as usize;
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&(self.blocks - 1).to_be_bytes());
        d[8..12].copy_from_slice(&self.block_size().to_be_bytes());
        Ok(truncated(d, alloc))
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn read(&self, lba: u64, blocks: u64) -> Result<Outcome, Sense> {
        self.check_range(lba, blocks)?;
        let bs = u64::from(self.block_size());
        let len = blocks.checked_mul(bs).ok_or(Sense::INVALID_FIELD_IN_CDB)?;
        if len > MAX_TRANSFER_BYTES {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        if len == 0 {
            return Ok(Outcome::Good);
        }
        let offset = lba.checked_mul(bs).ok_or(Sense::LBA_OUT_OF_RANGE)?;
        Ok(Outcome::Read { offset, len })
    }

    /// VERIFY (SBC-3 §5.26): BYTCHK 0 checks the range only; BYTCHK 1 compares the Data-Out
    /// with the medium. VRPROTECT must be 0 (no protection information).
    fn verify(&self, cdb: &[u8]) -> Result<Outcome, Sense> {
        let vrprotect = cdb[1] >> 5;
        let bytchk = (cdb[1] >> 1) & 0x03;
        if vrprotect != 0 || bytchk > 1 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let (lba, blocks) = lba_and_length(cdb);
        self.check_range(lba, blocks)?;
        if bytchk == 0 || blocks == 0 {
            return Ok(Outcome::Good);
        }
        let bs = u64::from(self.block_size());
        let len = blocks.checked_mul(bs).ok_or(Sense::INVALID_FIELD_IN_CDB)?;
        if len > MAX_TRANSFER_BYTES {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let offset = lba.checked_mul(bs).ok_or(Sense::LBA_OUT_OF_RANGE)?;
        Ok(Outcome::Compare { offset, len })
    }

    fn mode_sense(&self, cdb: &[u8], ten: bool) -> Result<Outcome, Sense> {
        let dbd = cdb[1] & 0x08 != 0;
        let llbaa = ten && cdb[1] & 0x10 != 0;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        let subpage = cdb[3];
        let alloc = if ten {
            usize::from(u16::from_be_bytes([cdb[7], cdb[8]]))
        } else {
            usize::from(cdb[4])
        };
        if pc == 3 {
            return Err(Sense::SAVING_NOT_SUPPORTED);
        }
        let pages: &[u8] = match self.device {
            DeviceType::Disk => &[0x08, 0x0a, 0x1c],
            DeviceType::Cd => &[0x0a, 0x1c, 0x2a],
        };
        let wanted: Vec<u8> = match (page, subpage) {
            (0x3f, 0x00 | 0xff) => pages.to_vec(),
            (p, 0x00) if pages.contains(&p) => vec![p],
            _ => return Err(Sense::INVALID_FIELD_IN_CDB),
        };
        let mut body = Vec::new();
        for p in wanted {
            body.extend_from_slice(&self.mode_page(p, pc == 1));
        }

        // Block descriptor (SPC-4 §7.5.5): disks only, short or long LBA form.
        let mut blockdesc = Vec::new();
        if !dbd && self.device == DeviceType::Disk {
            let bs = self.block_size();
            if llbaa {
                blockdesc.extend_from_slice(&self.blocks.to_be_bytes());
                blockdesc.extend_from_slice(&[0, 0, 0, 0]);
                blockdesc.extend_from_slice(&bs.to_be_bytes());
            } else {
                let n = u32::try_from(self.blocks)
                    .unwrap_or(u32::MAX)
                    .min(0x00ff_ffff);
                blockdesc.push(0); // density code
                blockdesc.extend_from_slice(&n.to_be_bytes()[1..]);
                blockdesc.push(0);
                blockdesc.extend_from_slice(&bs.to_be_bytes()[1..]);
            }
        }
        // WP: the medium is write-protected; DPOFUA (disks): DPO and FUA bits are accepted.
        let device_specific = match self.device {
            DeviceType::Disk => 0x90,
            DeviceType::Cd => 0x80,
        };
        let mut d = Vec::new();
        if ten {
            let total = 8 + blockdesc.len() + body.len();
            d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
            d.push(0); // medium type
            d.push(device_specific);
            d.push(u8::from(llbaa && !blockdesc.is_empty()));
            d.push(0);
            d.extend_from_slice(&(blockdesc.len() as u16).to_be_bytes());
        } else {
            let total = 4 + blockdesc.len() + body.len();
            d.push(u8::try_from(total - 1).unwrap_or(u8::MAX));
            d.push(0);
            d.push(device_specific);
            d.push(blockdesc.len() as u8);
        }
        d.extend_from_slice(&blockdesc);
        d.extend_from_slice(&body);
        Ok(truncated(d, alloc))
    }

    /// One mode page; `changeable` gives the mask of changeable bits (none: all zero).
    fn mode_page(&self, page: u8, changeable: bool) -> Vec<u8> {
        let mut p = match page {
            0x08 => vec![0u8; 20], // Caching: WCE=0, RCD=0
            0x0a => {
                // Control: queue algorithm modifier 1 (unrestricted reordering), SWP set.
                let mut p = vec![0u8; 12];
                p[3] = 0x10;
                p[4] = 0x08;
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
                p
            }
            0x1c => vec![0u8; 12], // Informational Exceptions Control: nothing reported
            _ => {
                // MM Capabilities and Mechanical Status (MMC-3 §5.5.10): CD read, tray loader.
                let mut p = vec![0u8; 22];
                p[6] = 0x20;
                p
            }
        };
        p[0] = page;
        p[1] = (p.len() - 2) as u8;
        if changeable {
            p[2..].fill(0);
        }
        p
    }

    /// READ TOC/PMA/ATIP (MMC-6 §6.33), formats 0 (TOC) and 1 (session information): one data
    /// track starting at LBA 0, and the lead-out after the last block.
    fn read_toc(&self, cdb: &[u8]) -> Result<Outcome, Sense> {
        let msf = cdb[1] & 0x02 != 0;
        let format = cdb[2] & 0x0f;
        let track = cdb[6];
        let alloc = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
        let leadout = u32::try_from(self.blocks).unwrap_or(u32::MAX);
        let address = |lba: u32| -> [u8; 4] {
            if msf {
                let f = u64::from(lba) + 150;
                let m = u8::try_from(f / (60 * 75)).unwrap_or(u8::MAX);
                [0, m, ((f / 75) % 60) as u8, (f % 75) as u8]
            } else {
                lba.to_be_bytes()
            }
        };
        let mut descriptors = Vec::new();
        match format {
            0 => {
                if track > 1 && track != 0xaa {
                    return Err(Sense::INVALID_FIELD_IN_CDB);
                }
                if track <= 1 {
                    descriptors.extend_from_slice(&[0, 0x14, 1, 0]);
                    descriptors.extend_from_slice(&address(0));
                }
                descriptors.extend_from_slice(&[0, 0x14, 0xaa, 0]);
                descriptors.extend_from_slice(&address(leadout));
            }
            1 => {
                descriptors.extend_from_slice(&[0, 0x14, 1, 0]);
                descriptors.extend_from_slice(&address(0));
            }
            _ => return Err(Sense::INVALID_FIELD_IN_CDB),
        }
        let mut d = Vec::new();
        d.extend_from_slice(&((descriptors.len() + 2) as u16).to_be_bytes());
        d.extend_from_slice(&[1, 1]); // first and last track (or session)
        d.extend_from_slice(&descriptors);
        Ok(truncated(d, alloc))
    }

    /// GET CONFIGURATION (MMC-6 §6.6): the CD-ROM profile with the Profile List, Core,
    /// Removable Medium, Random Readable and CD Read features, all current.
    fn get_configuration(&self, cdb: &[u8]) -> Result<Outcome, Sense> {
        let rt = cdb[1] & 0x03;
        let start = u16::from_be_bytes([cdb[2], cdb[3]]);
        let alloc = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
        if rt == 3 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        const PROFILE_CD_ROM: u16 = 0x0008;
        let features: [(u16, u8, Vec<u8>); 5] = [
            (
                0x0000,
                0x03,
                [PROFILE_CD_ROM.to_be_bytes().as_slice(), &[1, 0]].concat(),
            ),
            (0x0001, 0x0b, vec![0, 0, 0, 1, 0, 0, 0, 0]), // Core v2: SCSI physical interface
            (0x0003, 0x03, vec![0x20, 0, 0, 0]),          // Removable Medium: tray
            (0x0010, 0x01, {
                let mut v = self.block_size().to_be_bytes().to_vec();
                v.extend_from_slice(&[0, 1, 0, 0]); // blocking 1
                v
            }),
            (0x001e, 0x09, vec![0, 0, 0, 0]), // CD Read v2
        ];
        let mut d = vec![0u8; 8];
        d[6..8].copy_from_slice(&PROFILE_CD_ROM.to_be_bytes());
        for (code, flags, data) in features {
            let selected = match rt {
                2 => code == start,
                _ => code >= start,
            };
            if selected {
                d.extend_from_slice(&code.to_be_bytes());
                d.push(flags);
                d.push(data.len() as u8);
                d.extend_from_slice(&data);
            }
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        Ok(truncated(d, alloc))
    }
}

/// Execute a CDB addressed to a LUN that does not exist (SPC-4 §4.6.20 and INQUIRY's
/// peripheral qualifier 3).
pub fn execute_without_lun(cdb: &[u8]) -> Outcome {
    let Some(&opcode) = cdb.first() else {
        return Outcome::Check(Sense::INVALID_OPCODE);
    };
    if cdb.len() < cdb_length(opcode) {
        return Outcome::Check(Sense::INVALID_FIELD_IN_CDB);
    }
    let result = match opcode {
        op::INQUIRY if cdb[1] & 0x01 == 0 && cdb[2] == 0 => {
            let alloc = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
            let mut d = vec![0u8; 36];
            d[0] = 0x7f; // qualifier 3, device type 0x1f: no logical unit here
            d[2] = 0x06;
            d[3] = 0x02;
            d[4] = 31;
            Ok(truncated(d, alloc))
        }
        op::REPORT_LUNS => report_luns(cdb),
        op::REQUEST_SENSE => Ok(request_sense(cdb, Sense::LUN_NOT_SUPPORTED)),
        _ => Err(Sense::LUN_NOT_SUPPORTED),
    };
    result.unwrap_or_else(Outcome::Check)
}

/// REPORT LUNS (SPC-4 §6.33): every target here has exactly LUN 0.
fn report_luns(cdb: &[u8]) -> Result<Outcome, Sense> {
    let select = cdb[2];
    let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
    if alloc < 16 {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    let luns = match select {
        0x00 | 0x02 => 1u32,
        0x01 => 0, // well-known LUNs only: none
        _ => return Err(Sense::INVALID_FIELD_IN_CDB),
    };
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&(luns * 8).to_be_bytes());
    for _ in 0..luns {
        d.extend_from_slice(&[0u8; 8]); // LUN 0, peripheral device addressing
    }
    Ok(truncated(d, alloc))
}

/// REQUEST SENSE (SPC-4 §6.39): this target reports sense with each failed command, so there is
/// never pending sense; `current` is what is reported.
fn request_sense(cdb: &[u8], current: Sense) -> Outcome {
    let alloc = usize::from(cdb[4]);
    let data = if cdb[1] & 0x01 != 0 {
        current.descriptor().to_vec()
    } else {
        current.fixed().to_vec()
    };
    truncated(data, alloc)
}

/// LBA and transfer length of READ/VERIFY/PRE-FETCH/WRITE (10), (12) and (16).
fn lba_and_length(cdb: &[u8]) -> (u64, u64) {
    match cdb[0] >> 5 {
        // Group 1: 10-byte CDBs.
        1 => (
            u64::from(u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]])),
            u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
        ),
        // Group 5: 12-byte CDBs.
        5 => (
            u64::from(u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]])),
            u64::from(u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]])),
        ),
        // Group 4: 16-byte CDBs.
        _ => (
            u64::from_be_bytes([
                cdb[2], cdb[3], cdb[4], cdb[5], cdb[6], cdb[7], cdb[8], cdb[9],
            ]),
            u64::from(u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]])),
        ),
    }
}

/// The CDB length implied by the opcode's group code (SPC-4 §4.2.5.1).
fn cdb_length(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 1, // vendor-specific or reserved groups: nothing to parse
    }
}

/// Commands that would modify the medium (SBC-3): refused with DATA PROTECT.
fn is_write_type(cdb: &[u8]) -> bool {
    match cdb[0] {
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_VERIFY_10
        | op::WRITE_VERIFY_12
        | op::WRITE_VERIFY_16
        | op::WRITE_SAME_10
        | op::WRITE_SAME_16
        | op::WRITE_LONG_10
        | op::WRITE_ATOMIC_16
        | op::UNMAP
        | op::COMPARE_AND_WRITE
        | op::ORWRITE_16
        | op::FORMAT_UNIT
        | op::REASSIGN_BLOCKS
        | op::SANITIZE => true,
        // WRITE LONG (16) is a service action of SERVICE ACTION OUT (16).
        op::SERVICE_ACTION_OUT_16 => cdb.get(1).is_some_and(|b| b & 0x1f == 0x11),
        _ => false,
    }
}

fn truncated(mut data: Vec<u8>, alloc: usize) -> Outcome {
    data.truncate(alloc);
    Outcome::Data(data)
}

/// Copy `text` into `field`, space-padded, keeping only printable ASCII.
fn put_ascii(field: &mut [u8], text: &str) {
    field.fill(b' ');
    let printable = text.bytes().filter(|b| (0x20..0x7f).contains(b));
    for (dst, src) in field.iter_mut().zip(printable) {
        *dst = src;
    }
}

/// FNV-1a, 64 bits: a stable hash for deriving the NAA identifier from the serial.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MiB + 100 byte disk image: 2049 blocks of 512, the last one partial.
    fn disk() -> LogicalUnit {
        LogicalUnit::new(
            DeviceType::Disk,
            1024 * 1024 + 100,
            "sample",
            "0123abcd",
            "iqn.2026-01.test:sample",
        )
    }

    /// A 40-block CD.
    fn cd() -> LogicalUnit {
        LogicalUnit::new(DeviceType::Cd, 40 * 2048, "sample-cd", "cd01", "iqn.x:cd")
    }

    fn data(outcome: Outcome) -> Vec<u8> {
        match outcome {
            Outcome::Data(d) => d,
            other => panic!("expected data, got {other:?}"),
        }
    }

    fn sense(outcome: Outcome) -> Sense {
        match outcome {
            Outcome::Check(s) => s,
            other => panic!("expected CHECK CONDITION, got {other:?}"),
        }
    }

    #[test]
    fn fixed_sense_layout() {
        let s = Sense::LBA_OUT_OF_RANGE.fixed();
        assert_eq!(
            s,
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0]
        );
        assert_eq!(Sense::WRITE_PROTECTED.fixed()[2], 0x07);
        assert_eq!(Sense::WRITE_PROTECTED.fixed()[12], 0x27);
    }

    #[test]
    fn test_unit_ready_is_good() {
        assert_eq!(disk().execute(&[0x00, 0, 0, 0, 0, 0]), Outcome::Good);
    }

    #[test]
    fn standard_inquiry() {
        // INQUIRY, EVPD=0, page 0, allocation length 96.
        let d = data(disk().execute(&[0x12, 0, 0, 0, 96, 0]));
        assert_eq!(d.len(), 96);
        assert_eq!(d[0], 0x00, "disk");
        assert_eq!(d[1], 0x00, "not removable");
        assert_eq!(d[2], 0x06, "SPC-4");
        assert_eq!(d[3] & 0x0f, 2, "response data format");
        assert_eq!(usize::from(d[4]) + 5, 96);
        assert_eq!(&d[8..16], b"ISOMOUNT");
        assert_eq!(&d[16..32], b"sample          ");
        assert_eq!(&d[58..60], &[0x00, 0xa0]);
        assert_eq!(&d[64..66], &[0x04, 0xc0]);

        let c = data(cd().execute(&[0x12, 0, 0, 0, 36, 0]));
        assert_eq!(c.len(), 36, "cut to the allocation length");
        assert_eq!(c[0], 0x05, "CD-ROM");
        assert_eq!(c[1], 0x80, "removable");
    }

    #[test]
    fn inquiry_rejects_page_without_evpd_and_unknown_pages() {
        assert_eq!(
            sense(disk().execute(&[0x12, 0, 0x80, 0, 255, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
        assert_eq!(
            sense(disk().execute(&[0x12, 1, 0xb1, 0, 255, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
        assert_eq!(
            sense(cd().execute(&[0x12, 1, 0xb0, 0, 255, 0])),
            Sense::INVALID_FIELD_IN_CDB,
            "no block limits on a CD"
        );
    }

    #[test]
    fn vpd_supported_pages_and_serial() {
        let d = data(disk().execute(&[0x12, 1, 0x00, 0, 255, 0]));
        assert_eq!(d, [0x00, 0x00, 0, 4, 0x00, 0x80, 0x83, 0xb0]);
        let s = data(disk().execute(&[0x12, 1, 0x80, 0, 255, 0]));
        assert_eq!(&s[..4], &[0x00, 0x80, 0, 8]);
        assert_eq!(&s[4..], b"0123abcd");
    }

    #[test]
    fn vpd_device_identification() {
        let d = data(disk().execute(&[0x12, 1, 0x83, 0x01, 0x00, 0]));
        let page_len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        assert_eq!(page_len + 4, d.len());
        // Walk the designators: NAA, T10 vendor id, SCSI name string.
        let mut at = 4;
        let mut types = Vec::new();
        while at < d.len() {
            let len = usize::from(d[at + 3]);
            types.push(d[at + 1] & 0x0f);
            let body = &d[at + 4..at + 4 + len];
            match d[at + 1] & 0x0f {
                3 => {
                    assert_eq!(len, 8);
                    assert_eq!(body[0] >> 4, 3, "NAA locally assigned");
                }
                1 => assert_eq!(&body[..8], b"ISOMOUNT"),
                8 => {
                    assert_eq!(len % 4, 0);
                    assert!(body.starts_with(b"iqn.2026-01.test:sample\0"));
                }
                other => panic!("unexpected designator type {other}"),
            }
            at += 4 + len;
        }
        assert_eq!(at, d.len());
        assert_eq!(types, [3, 1, 8]);
        // Stable: the same serial gives the same NAA.
        assert_eq!(d, data(disk().execute(&[0x12, 1, 0x83, 0x01, 0x00, 0])));
    }

    #[test]
    fn vpd_block_limits() {
        let d = data(disk().execute(&[0x12, 1, 0xb0, 0, 255, 0]));
        assert_eq!(&d[..4], &[0x00, 0xb0, 0x00, 0x3c]);
        let max = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        assert_eq!(u64::from(max) * 512, MAX_TRANSFER_BYTES);
    }

    #[test]
    fn read_capacity_rounds_a_partial_last_block_up() {
        // 1 MiB + 100 bytes = 2048 full blocks and one partial: last LBA 2048.
        let d = data(disk().execute(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(d, [0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9e;
        rc16[1] = 0x10;
        rc16[13] = 32;
        let d = data(disk().execute(&rc16));
        assert_eq!(d.len(), 32);
        assert_eq!(&d[..12], &[0, 0, 0, 0, 0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
        rc16[13] = 12;
        assert_eq!(data(disk().execute(&rc16)).len(), 12);
    }

    #[test]
    fn read_capacity_10_rejects_lba_without_pmi() {
        assert_eq!(
            sense(disk().execute(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
    }

    #[test]
    fn reads_of_every_size_map_to_byte_ranges() {
        let lun = disk();
        // READ(6): LBA 0x01_0203 is beyond 2049 blocks.
        assert_eq!(
            sense(lun.execute(&[0x08, 0x01, 0x02, 0x03, 1, 0])),
            Sense::LBA_OUT_OF_RANGE
        );
        // READ(6): LBA 2, length 0 means 256 blocks.
        assert_eq!(
            lun.execute(&[0x08, 0, 0, 2, 0, 0]),
            Outcome::Read {
                offset: 1024,
                len: 256 * 512
            }
        );
        // READ(10): LBA 2048 (the partial block), 1 block.
        assert_eq!(
            lun.execute(&[0x28, 0, 0, 0, 0x08, 0x00, 0, 0, 1, 0]),
            Outcome::Read {
                offset: 2048 * 512,
                len: 512
            }
        );
        // READ(10) one block past the end.
        assert_eq!(
            sense(lun.execute(&[0x28, 0, 0, 0, 0x08, 0x00, 0, 0, 2, 0])),
            Sense::LBA_OUT_OF_RANGE
        );
        // READ(10) with zero blocks is GOOD with no data.
        assert_eq!(
            lun.execute(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Outcome::Good
        );
        // READ(12): LBA 1, 4 blocks.
        assert_eq!(
            lun.execute(&[0xa8, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0]),
            Outcome::Read {
                offset: 512,
                len: 2048
            }
        );
        // READ(16): LBA 0xffff_ffff_ffff_ffff + 1 block overflows: out of range, no panic.
        let mut r16 = [0u8; 16];
        r16[0] = 0x88;
        r16[2..10].fill(0xff);
        r16[13] = 1;
        assert_eq!(sense(lun.execute(&r16)), Sense::LBA_OUT_OF_RANGE);
        // READ(16): LBA 16, 8 blocks.
        r16[2..10].copy_from_slice(&16u64.to_be_bytes());
        r16[13] = 8;
        assert_eq!(
            lun.execute(&r16),
            Outcome::Read {
                offset: 16 * 512,
                len: 8 * 512
            }
        );
        // RDPROTECT set: no protection information here.
        assert_eq!(
            sense(lun.execute(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
    }

    #[test]
    fn oversized_transfer_is_refused() {
        let big = LogicalUnit::new(DeviceType::Disk, 1 << 40, "big", "s", "iqn.x:big");
        let blocks = (MAX_TRANSFER_BYTES / 512 + 1) as u32;
        let mut r12 = [0u8; 12];
        r12[0] = 0xa8;
        r12[6..10].copy_from_slice(&blocks.to_be_bytes());
        assert_eq!(sense(big.execute(&r12)), Sense::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn cd_blocks_are_2048_bytes() {
        let lun = cd();
        assert_eq!(
            data(lun.execute(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
            [0, 0, 0, 39, 0, 0, 0x08, 0x00]
        );
        assert_eq!(
            lun.execute(&[0x28, 0, 0, 0, 0, 16, 0, 0, 2, 0]),
            Outcome::Read {
                offset: 16 * 2048,
                len: 4096
            }
        );
    }

    #[test]
    fn writes_are_data_protect() {
        let lun = disk();
        for cdb in [
            &[0x0a, 0, 0, 0, 1, 0][..],
            &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            &[0x93, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0x9f, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(
                sense(lun.execute(cdb)),
                Sense::WRITE_PROTECTED,
                "{cdb:02x?}"
            );
        }
    }

    #[test]
    fn unknown_opcodes_are_invalid_command_operation_code() {
        assert_eq!(
            sense(disk().execute(&[0xc5, 0, 0, 0, 0, 0])),
            Sense::INVALID_OPCODE
        );
        // READ TOC is an MMC command: not on a disk.
        assert_eq!(
            sense(disk().execute(&[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0])),
            Sense::INVALID_OPCODE
        );
        assert_eq!(sense(disk().execute(&[])), Sense::INVALID_OPCODE);
        // A CDB shorter than its group's length: invalid field, no panic.
        assert_eq!(
            sense(disk().execute(&[0x88, 0, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
    }

    #[test]
    fn report_luns_lists_lun_zero() {
        let cdb = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(
            data(disk().execute(&cdb)),
            [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(data(execute_without_lun(&cdb)).len(), 16);
        let short = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
        assert_eq!(sense(disk().execute(&short)), Sense::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn missing_lun_answers_inquiry_with_qualifier_3() {
        let d = data(execute_without_lun(&[0x12, 0, 0, 0, 36, 0]));
        assert_eq!(d[0], 0x7f);
        assert_eq!(
            sense(execute_without_lun(&[0x00, 0, 0, 0, 0, 0])),
            Sense::LUN_NOT_SUPPORTED
        );
        let rs = data(execute_without_lun(&[0x03, 0, 0, 0, 18, 0]));
        assert_eq!((rs[2], rs[12]), (0x05, 0x25));
    }

    #[test]
    fn request_sense_reports_no_sense() {
        let d = data(disk().execute(&[0x03, 0, 0, 0, 252, 0]));
        assert_eq!(d, Sense::NO_SENSE.fixed());
        let d = data(disk().execute(&[0x03, 1, 0, 0, 252, 0]));
        assert_eq!(d[0], 0x72, "descriptor format when DESC=1");
    }

    #[test]
    fn mode_sense_6_sets_write_protect() {
        // MODE SENSE(6), all pages, allocation 255.
        let d = data(disk().execute(&[0x1a, 0, 0x3f, 0, 255, 0]));
        assert_eq!(usize::from(d[0]) + 1, d.len());
        assert_eq!(d[2], 0x90, "WP and DPOFUA");
        assert_eq!(d[3], 8, "one short block descriptor");
        assert_eq!(&d[4..12], &[0, 0, 0x08, 0x01, 0, 0, 0x02, 0x00]);
        // Pages follow in ascending order: caching, control, informational exceptions.
        assert_eq!((d[12], d[13]), (0x08, 18));
        assert_eq!((d[32], d[33]), (0x0a, 10));
        assert_eq!(d[36] & 0x08, 0x08, "SWP");
        assert_eq!((d[44], d[45]), (0x1c, 10));
        assert_eq!(d.len(), 56);
        // DBD: no block descriptor.
        let d = data(disk().execute(&[0x1a, 0x08, 0x0a, 0, 255, 0]));
        assert_eq!(d[3], 0);
        assert_eq!(&d[4..6], &[0x0a, 10]);
        // Truncation keeps the full mode data length.
        let d = data(disk().execute(&[0x1a, 0, 0x3f, 0, 4, 0]));
        assert_eq!(d.len(), 4);
        assert_eq!(d[0], 55);
    }

    #[test]
    fn mode_sense_10_long_lba_and_errors() {
        let d = data(disk().execute(&[0x5a, 0x10, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0]));
        assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
        assert_eq!(d[3] & 0x80, 0x80, "WP");
        assert_eq!(d[4] & 1, 1, "LONGLBA");
        assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
        assert_eq!(&d[8..16], &2049u64.to_be_bytes());
        assert_eq!(d[24], 0x08);
        // Saved values are not supported; an unknown page is an invalid field.
        assert_eq!(
            sense(disk().execute(&[0x5a, 0, 0xc8, 0, 0, 0, 0, 0x01, 0x00, 0])),
            Sense::SAVING_NOT_SUPPORTED
        );
        assert_eq!(
            sense(disk().execute(&[0x5a, 0, 0x19, 0, 0, 0, 0, 0x01, 0x00, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
        // Changeable values: all zero.
        let d = data(disk().execute(&[0x1a, 0x08, 0x4a, 0, 255, 0]));
        assert!(d[6..].iter().all(|&b| b == 0));
    }

    #[test]
    fn read_toc_lba_and_msf() {
        // READ TOC format 0, LBA form.
        let d = data(cd().execute(&[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0]));
        assert_eq!(
            d,
            [
                0, 18, 1, 1, //
                0, 0x14, 1, 0, 0, 0, 0, 0, //
                0, 0x14, 0xaa, 0, 0, 0, 0, 40
            ]
        );
        // MSF: lead-out at LBA 40 = 190 frames = 00:02:40.
        let d = data(cd().execute(&[0x43, 0x02, 0, 0, 0, 0, 0, 0, 100, 0]));
        assert_eq!(&d[8..12], &[0, 0, 2, 0], "track 1 at 00:02:00");
        assert_eq!(&d[16..20], &[0, 0, 2, 40]);
        // Starting at the lead-out gives only the lead-out.
        let d = data(cd().execute(&[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 100, 0]));
        assert_eq!(d.len(), 12);
        // Session information.
        let d = data(cd().execute(&[0x43, 0, 1, 0, 0, 0, 0, 0, 100, 0]));
        assert_eq!(&d[..4], &[0, 10, 1, 1]);
        // A track that does not exist.
        assert_eq!(
            sense(cd().execute(&[0x43, 0, 0, 0, 0, 0, 2, 0, 100, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
    }

    #[test]
    fn get_configuration_reports_cd_rom_profile() {
        let d = data(cd().execute(&[0x46, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 0]));
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize + 4,
            d.len()
        );
        assert_eq!(&d[6..8], &[0x00, 0x08], "current profile CD-ROM");
        // First feature: profile list with CD-ROM current.
        assert_eq!(&d[8..16], &[0, 0, 0x03, 4, 0, 0x08, 1, 0]);
        // RT=2: only the Random Readable feature, with the block size.
        let d = data(cd().execute(&[0x46, 0x02, 0, 0x10, 0, 0, 0, 0x01, 0x00, 0]));
        assert_eq!(d.len(), 8 + 12);
        assert_eq!(&d[8..10], &[0x00, 0x10]);
        assert_eq!(&d[12..16], &2048u32.to_be_bytes());
        assert_eq!(
            sense(cd().execute(&[0x46, 0x03, 0, 0, 0, 0, 0, 0, 8, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
    }

    #[test]
    fn verify_and_prefetch_check_the_range() {
        let lun = disk();
        assert_eq!(
            lun.execute(&[0x2f, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
            Outcome::Good
        );
        assert_eq!(
            sense(lun.execute(&[0x34, 0, 0, 0, 0x08, 0x01, 0, 0, 1, 0])),
            Sense::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            lun.execute(&[0x2f, 0x02, 0, 0, 0, 4, 0, 0, 8, 0]),
            Outcome::Compare {
                offset: 4 * 512,
                len: 8 * 512
            },
            "BYTCHK=1 compares the Data-Out"
        );
        assert_eq!(
            sense(lun.execute(&[0x2f, 0x06, 0, 0, 0, 0, 0, 0, 8, 0])),
            Sense::INVALID_FIELD_IN_CDB,
            "BYTCHK=3 is not supported"
        );
        assert_eq!(
            sense(lun.execute(&[0x2f, 0x22, 0, 0, 0x08, 0x01, 0, 0, 1, 0])),
            Sense::INVALID_FIELD_IN_CDB,
            "VRPROTECT"
        );
    }
}
