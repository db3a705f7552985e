//! ECMA-119 on-disk structures: volume descriptors (§8.1–8.5), directory records (§9.1) and the
//! two date formats (§8.4.26.1 and §9.1.5).
//!
//! Every function here parses bytes already in memory and fails with a short description of what
//! is malformed; the caller adds the byte position. Both-endian fields are read from their
//! little-endian half, as Linux does: some mastering tools get the big-endian half wrong.
//!
//! ```text
//! directory record (§9.1)             volume descriptor (§8.4), one 2048-byte sector
//!  0  length of record                 0  type: 1 primary, 2 supplementary, 255 terminator
//!  1  extended attribute record length 1  "CD001"
//!  2  extent location    (both-endian) 6  version (1)
//! 10  data length        (both-endian) 80 volume space size (both-endian 32)
//! 18  recording date, 7 bytes          88 escape sequences (Joliet: %/@ %/C %/E)
//! 25  flags                           128 logical block size (both-endian 16)
//! 26  file unit size, 27 gap size     156 root directory record, 34 bytes
//! 28  volume sequence number
//! 32  length of file identifier (n)
//! 33  file identifier, n bytes, then one pad byte when n is even, then the system use area
//! ```

/// Size of a logical sector: volume descriptors and directory records never cross one.
pub const SECTOR: usize = 2048;
/// The first volume descriptor lives in sector 16, after the system area.
pub const FIRST_DESCRIPTOR_SECTOR: u64 = 16;

/// The directory flag (§9.1.6 bit 1).
pub const FLAG_DIRECTORY: u8 = 0x02;
/// Associated file (§9.1.6 bit 2): hidden, like Linux and the BSDs hide it.
pub const FLAG_ASSOCIATED: u8 = 0x04;
/// Not the final record of a multi-extent file (§9.1.6 bit 7).
pub const FLAG_MULTI_EXTENT: u8 = 0x80;

/// The fields of a volume descriptor this reader uses.
#[derive(Debug)]
pub enum Descriptor {
    /// The primary volume descriptor.
    Primary { block_size: u16, root: [u8; 34] },
    /// A supplementary volume descriptor announcing Joliet (UCS-2 names).
    Joliet { block_size: u16, root: [u8; 34] },
    /// The volume descriptor set terminator.
    Terminator,
    /// Boot records, partitions, non-Joliet supplementary descriptors.
    Other,
}

/// Parses one volume descriptor sector.
pub fn parse_descriptor(sector: &[u8]) -> Result<Descriptor, &'static str> {
    if sector.len() < SECTOR {
        return Err("volume descriptor shorter than a sector");
    }
    if &sector[1..6] != b"CD001" {
        return Err("no CD001 volume descriptor");
    }
    let block_size = u16::from_le_bytes([sector[128], sector[129]]);
    let mut root = [0u8; 34];
    root.copy_from_slice(&sector[156..190]);
    match sector[0] {
        1 => Ok(Descriptor::Primary { block_size, root }),
        2 if is_joliet_escape(&sector[88..120]) => Ok(Descriptor::Joliet { block_size, root }),
        255 => Ok(Descriptor::Terminator),
        _ => Ok(Descriptor::Other),
    }
}

/// Joliet announces UCS-2 level 1, 2 or 3 with the escape sequences `%/@`, `%/C`, `%/E`.
fn is_joliet_escape(escapes: &[u8]) -> bool {
    escapes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'/' && matches!(w[2], b'@' | b'C' | b'E'))
}

/// One directory record, borrowing its identifier and system use area.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// Length of the whole record in bytes.
    pub len: usize,
    pub xattr_len: u8,
    pub lba: u32,
    pub size: u32,
    pub date: [u8; 7],
    pub flags: u8,
    /// File unit size or interleave gap set: data is interleaved.
    pub interleaved: bool,
    pub ident: &'a [u8],
    pub system_use: &'a [u8],
}

impl Record<'_> {
    /// The `.` (0x00) and `..` (0x01) records.
    pub fn is_self_or_parent(&self) -> bool {
        self.ident.len() == 1 && self.ident[0] <= 1
    }
}

/// Parses the directory record at the start of `buf`; `buf` ends where the record must end at
/// the latest (the end of its sector or of its directory).
pub fn parse_record(buf: &[u8]) -> Result<Record<'_>, &'static str> {
    let len = *buf
        .first()
        .ok_or("directory record past the end of its sector")? as usize;
    if len < 34 {
        return Err("directory record shorter than 34 bytes");
    }
    if len > buf.len() {
        return Err("directory record crosses its sector or directory end");
    }
    let rec = &buf[..len];
    let ident_len = rec[32] as usize;
    if ident_len == 0 {
        return Err("directory record with an empty identifier");
    }
    let ident_end = 33 + ident_len;
    if ident_end > len {
        return Err("file identifier longer than its directory record");
    }
    let su_start = ident_end + usize::from(ident_len % 2 == 0);
    let system_use = rec.get(su_start..).unwrap_or(&[]);
    let mut date = [0u8; 7];
    date.copy_from_slice(&rec[18..25]);
    Ok(Record {
        len,
        xattr_len: rec[1],
        lba: u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]),
        size: u32::from_le_bytes([rec[10], rec[11], rec[12], rec[13]]),
        date,
        flags: rec[25],
        interleaved: rec[26] != 0 || rec[27] != 0,
        ident: &rec[33..ident_end],
        system_use,
    })
}

/// The 7-byte date of directory records and Rock Ridge short-form TF (§9.1.5), as seconds since
/// the Unix epoch. `None` when unset or out of range.
pub fn short_date(d: &[u8]) -> Option<i64> {
    let &[year, month, day, hour, minute, second, offset] = d else {
        return None;
    };
    if d.iter().all(|&b| b == 0) {
        return None;
    }
    civil_to_unix(
        1900 + i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
        offset as i8,
    )
}

/// The 17-byte date of volume descriptors and Rock Ridge long-form TF (§8.4.26.1): "YYYYMMDDhhmmsscc"
/// in ASCII digits and an offset from GMT in 15-minute steps.
pub fn long_date(d: &[u8]) -> Option<i64> {
    if d.len() != 17 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        d[range].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = num(0..4)?;
    if year == 0 {
        return None;
    }
    let field = |range| num(range).and_then(|v| u8::try_from(v).ok());
    civil_to_unix(
        i64::from(year),
        field(4..6)?,
        field(6..8)?,
        field(8..10)?,
        field(10..12)?,
        field(12..14)?,
        d[16] as i8,
    )
}

fn civil_to_unix(
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    gmt_offset_quarters: i8,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || !(-48..=52).contains(&gmt_offset_quarters)
    {
        return None;
    }
    let days = days_since_epoch(year, u32::from(month), u32::from(day));
    let local = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    Some(local - i64::from(gmt_offset_quarters) * 15 * 60)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date. Years are counted from March so
/// that the leap day is the last day of a counting year; 400-year eras repeat exactly.
fn days_since_epoch(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days separate 0000-03-01 from 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_to_unix_time() {
        assert_eq!(days_since_epoch(1970, 1, 1), 0);
        assert_eq!(days_since_epoch(2000, 3, 1), 11_017);
        assert_eq!(days_since_epoch(1969, 12, 31), -1);
        // 2024-02-29 12:34:56 at GMT+1 (4 quarters) is 11:34:56 UTC.
        assert_eq!(
            short_date(&[124, 2, 29, 12, 34, 56, 4]),
            Some(1_709_206_496)
        );
        assert_eq!(short_date(&[0; 7]), None);
        assert_eq!(short_date(&[124, 13, 1, 0, 0, 0, 0]), None);
        assert_eq!(long_date(b"2024022912345600\x04"), Some(1_709_206_496));
        assert_eq!(long_date(b"0000000000000000\x00"), None);
        assert_eq!(long_date(b"20x4022912345600\x00"), None);
    }

    #[test]
    fn record_lengths_are_checked() {
        let mut rec = [0u8; 40];
        rec[0] = 40;
        rec[32] = 6;
        rec[33..39].copy_from_slice(b"ABC;1\0");
        let r = parse_record(&rec).unwrap();
        assert_eq!(r.ident, b"ABC;1\0");
        assert_eq!(r.system_use, &[] as &[u8]);
        assert!(
            parse_record(&rec[..39]).is_err(),
            "record longer than its sector"
        );
        rec[32] = 7;
        assert!(parse_record(&rec).is_ok());
        rec[32] = 8;
        assert!(parse_record(&rec).is_err(), "identifier past record end");
        rec[0] = 20;
        assert!(parse_record(&rec).is_err(), "too short");
        assert!(parse_record(&[]).is_err());
    }
}
