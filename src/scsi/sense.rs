//! Sense data (SPC-4 §4.5): one [`Sense`] for both sides. The target encodes it (fixed format,
//! §4.5.3; descriptor format, §4.5.2); the initiator parses either format and decides by the key
//! whether to retry.

use super::ScsiError;

/// Sense keys (SPC-4 §4.5.6, table 27).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const MISCOMPARE: u8 = 0xe;
}

/// One sense condition: key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const NO_SENSE: Sense = Sense::new(sense_key::NO_SENSE, 0x00, 0x00);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(sense_key::MEDIUM_ERROR, 0x11, 0x00);
    pub const INVALID_OPCODE: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x25, 0x00);
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x39, 0x00);
    pub const WRITE_PROTECTED: Sense = Sense::new(sense_key::DATA_PROTECT, 0x27, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(sense_key::MISCOMPARE, 0x1d, 0x00);

    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq }
    }

    /// Fixed-format sense data (SPC-4 §4.5.3), response code 0x70 (current error).
    pub fn fixed(&self) -> [u8; 18] {
        let mut out = [0u8; 18];
        out[0] = 0x70;
        out[2] = self.key & 0x0f;
        out[7] = 10; // additional sense length: bytes 8..18
        out[12] = self.asc;
        out[13] = self.ascq;
        out
    }

    /// Descriptor-format sense data (SPC-4 §4.5.2) with no descriptors.
    pub fn descriptor(&self) -> [u8; 8] {
        [0x72, self.key & 0x0f, self.asc, self.ascq, 0, 0, 0, 0]
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.key {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0xb => "ABORTED COMMAND",
            _ => "sense key",
        };
        write!(
            f,
            "{name} ({:#x}) asc/ascq {:#04x}/{:#04x}",
            self.key, self.asc, self.ascq
        )
    }
}

/// Parse fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.
pub fn parse_sense(data: &[u8]) -> Result<Sense, ScsiError> {
    super::need("sense data", data, 1)?;
    match data[0] & 0x7f {
        0x70 | 0x71 => {
            super::need("fixed sense data", data, 14)?;
            Ok(Sense {
                key: data[2] & 0x0f,
                asc: data[12],
                ascq: data[13],
            })
        }
        0x72 | 0x73 => {
            super::need("descriptor sense data", data, 4)?;
            Ok(Sense {
                key: data[1] & 0x0f,
                asc: data[2],
                ascq: data[3],
            })
        }
        code => Err(ScsiError::Malformed(format!(
            "unknown sense response code {code:#04x}"
        ))),
    }
}
