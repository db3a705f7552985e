//! System Use Sharing Protocol (SUSP 1.12) entries and the Rock Ridge Interchange Protocol
//! (RRIP 1.12) entries this reader understands: PX (mode, links, owner), NM (name), SL (symlink
//! target), TF (times), CL/RE (relocated directories), plus SP/ER (detection) and CE
//! (continuation areas, which the caller reads and feeds back). ZF (zisofs) is recorded so that
//! compressed files are refused rather than read as wrong bytes. Unknown entries are skipped.
//!
//! ```text
//! SUSP entry: 0 signature (2 ASCII bytes)  2 length of the entry, header included  3 version
//! CE: 4 block  12 offset  20 length (each both-endian 32)
//! PX: 4 mode  12 links  20 uid  28 gid  [36 serial]   (each both-endian 32)
//! NM/SL: 4 flags, 5.. content; SL content is component records: flags, length, bytes
//! TF: 4 flags, then one 7-byte (or 17-byte with LONG_FORM) date per flag bit set, in bit order
//! ```

use super::record::{long_date, short_date};

/// Longest name accepted from NM entries (bytes); longer is a hostile image.
pub const MAX_NAME: usize = 1024;
/// Longest symlink target accepted from SL entries (bytes), like Linux's PATH_MAX.
pub const MAX_LINK: usize = 4096;

const NM_CURRENT: u8 = 2;
const NM_PARENT: u8 = 4;

const SL_CONTINUE: u8 = 1;
const SL_CURRENT: u8 = 2;
const SL_PARENT: u8 = 4;
const SL_ROOT: u8 = 8;

const TF_LONG_FORM: u8 = 0x80;

/// What the system use entries of one directory record said, accumulated over the record's own
/// area and its continuation areas.
#[derive(Debug, Default, Clone)]
pub struct SystemUse {
    /// SP: SUSP is in use; the number of bytes to skip in every other record's area.
    pub sp_skip: Option<u8>,
    /// ER naming the Rock Ridge extension.
    pub rrip_extension: bool,
    /// Any Rock Ridge entry seen (PX, NM, SL, TF, CL, RE, PL, RR).
    pub rock_ridge: bool,
    pub px: Option<Px>,
    pub name: Option<Vec<u8>>,
    pub link: Option<Vec<u8>>,
    link_state: LinkState,
    pub mtime: Option<i64>,
    pub atime: Option<i64>,
    pub ctime: Option<i64>,
    /// CL: this record stands for a directory relocated to this block.
    pub child_link: Option<u32>,
    /// RE: this is the relocated directory itself; hidden from its actual parent.
    pub relocated: bool,
    /// ZF: the file's data is zisofs-compressed.
    pub zisofs: bool,
}

/// POSIX attributes from a PX entry.
#[derive(Debug, Clone, Copy)]
pub struct Px {
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A CE entry: where the next part of the system use area is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    pub block: u32,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Default, Clone)]
struct LinkState {
    /// The last component record asked to be continued by the next one.
    continuing: bool,
    /// A separator goes before the next component.
    need_separator: bool,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl SystemUse {
    /// Parses one system use area (or continuation area) into `self`, returning the CE entry it
    /// names, if any. Padding (a zero signature or fewer than four bytes left) ends the area; an
    /// entry whose length is shorter than its header or runs past the area is malformed.
    pub fn parse_area(&mut self, area: &[u8]) -> Result<Option<Continuation>, &'static str> {
        let mut next = None;
        let mut rest = area;
        while rest.len() >= 4 && rest[0] != 0 {
            let len = rest[2] as usize;
            if len < 4 || len > rest.len() {
                return Err("system use entry with a bad length");
            }
            let (entry, tail) = rest.split_at(len);
            rest = tail;
            match &entry[..2] {
                b"ST" => break,
                b"CE" => next = Some(parse_ce(entry)?),
                _ => self.parse_entry(entry)?,
            }
        }
        Ok(next)
    }

    fn parse_entry(&mut self, e: &[u8]) -> Result<(), &'static str> {
        let sig = [e[0], e[1]];
        match &sig {
            b"SP" if e.len() >= 7 && e[4] == 0xBE && e[5] == 0xEF => self.sp_skip = Some(e[6]),
            b"ER" if e.len() >= 8 => {
                let id_len = e[4] as usize;
                let id = e.get(8..8 + id_len).ok_or("ER identifier past its entry")?;
                if matches!(id, b"RRIP_1991A" | b"IEEE_P1282" | b"IEEE_1282") {
                    self.rrip_extension = true;
                }
            }
            b"PX" => {
                if e.len() < 36 {
                    return Err("PX entry too short");
                }
                self.rock_ridge = true;
                self.px = Some(Px {
                    mode: le32(e, 4),
                    nlink: le32(e, 12),
                    uid: le32(e, 20),
                    gid: le32(e, 28),
                });
            }
            b"NM" => {
                self.rock_ridge = true;
                let flags = *e.get(4).ok_or("NM entry too short")?;
                if flags & (NM_CURRENT | NM_PARENT) == 0 {
                    let name = self.name.get_or_insert_with(Vec::new);
                    if name.len() + e.len().saturating_sub(5) > MAX_NAME {
                        return Err("Rock Ridge name too long");
                    }
                    name.extend_from_slice(e.get(5..).unwrap_or(&[]));
                }
            }
            b"SL" => {
                self.rock_ridge = true;
                self.parse_sl(e)?;
            }
            b"TF" => {
                self.rock_ridge = true;
                self.parse_tf(e)?;
            }
            b"CL" => {
                if e.len() < 12 {
                    return Err("CL entry too short");
                }
                self.rock_ridge = true;
                self.child_link = Some(le32(e, 4));
            }
            b"RE" => {
                self.rock_ridge = true;
                self.relocated = true;
            }
            b"PL" | b"RR" => self.rock_ridge = true,
            b"ZF" => self.zisofs = true,
            _ => {}
        }
        Ok(())
    }

    fn parse_sl(&mut self, e: &[u8]) -> Result<(), &'static str> {
        let mut comps = e.get(5..).ok_or("SL entry too short")?;
        let link = self.link.get_or_insert_with(Vec::new);
        let state = &mut self.link_state;
        while !comps.is_empty() {
            if comps.len() < 2 {
                return Err("SL component record truncated");
            }
            let (flags, len) = (comps[0], comps[1] as usize);
            let content = comps.get(2..2 + len).ok_or("SL component past its entry")?;
            comps = &comps[2 + len..];
            if flags & SL_ROOT != 0 {
                link.clear();
                link.push(b'/');
                state.need_separator = false;
                state.continuing = false;
                continue;
            }
            if !state.continuing && state.need_separator {
                link.push(b'/');
            }
            if flags & SL_CURRENT != 0 {
                link.push(b'.');
            } else if flags & SL_PARENT != 0 {
                link.extend_from_slice(b"..");
            } else {
                link.extend_from_slice(content);
            }
            if link.len() > MAX_LINK {
                return Err("Rock Ridge symlink target too long");
            }
            state.continuing = flags & SL_CONTINUE != 0;
            state.need_separator = true;
        }
        Ok(())
    }

    fn parse_tf(&mut self, e: &[u8]) -> Result<(), &'static str> {
        let flags = *e.get(4).ok_or("TF entry too short")?;
        let width = if flags & TF_LONG_FORM != 0 { 17 } else { 7 };
        let mut at = 5;
        for bit in 0..7 {
            if flags & (1 << bit) == 0 {
                continue;
            }
            let stamp = e
                .get(at..at + width)
                .ok_or("TF entry shorter than its flags")?;
            at += width;
            let time = if width == 17 {
                long_date(stamp)
            } else {
                short_date(stamp)
            };
            match bit {
                1 => self.mtime = time,
                2 => self.atime = time,
                3 => self.ctime = time,
                _ => {}
            }
        }
        Ok(())
    }
}

fn parse_ce(e: &[u8]) -> Result<Continuation, &'static str> {
    if e.len() < 28 {
        return Err("CE entry too short");
    }
    Ok(Continuation {
        block: le32(e, 4),
        offset: le32(e, 12),
        len: le32(e, 20),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
        let mut e = vec![sig[0], sig[1], (body.len() + 4) as u8, 1];
        e.extend_from_slice(body);
        e
    }

    fn both32(v: u32) -> Vec<u8> {
        let mut b = v.to_le_bytes().to_vec();
        b.extend_from_slice(&v.to_be_bytes());
        b
    }

    #[test]
    fn rock_ridge_entries_accumulate() {
        let mut area = Vec::new();
        area.extend(entry(b"NM", b"\x01long-"));
        area.extend(entry(b"NM", b"\x00name"));
        let px: Vec<u8> = [0o100644, 3, 1000, 100]
            .into_iter()
            .flat_map(both32)
            .collect();
        area.extend(entry(b"PX", &px));
        // SL "/usr/../lib" split over two entries, "lib" itself continued.
        area.extend(entry(b"SL", b"\x00\x08\x00\x00\x03usr\x04\x00"));
        area.extend(entry(b"SL", b"\x00\x01\x02li\x00\x01b"));
        area.extend(entry(
            b"TF",
            &[0x06, 124, 2, 29, 12, 34, 56, 4, 70, 1, 1, 0, 0, 0, 0],
        ));
        area.extend(entry(b"XX", b"unknown entries are skipped"));
        let mut ce = Vec::new();
        ce.extend(both32(30));
        ce.extend(both32(100));
        ce.extend(both32(50));
        area.extend(entry(b"CE", &ce));
        area.extend([0, 0, 0]);
        let mut su = SystemUse::default();
        let next = su.parse_area(&area).unwrap();
        assert_eq!(
            next,
            Some(Continuation {
                block: 30,
                offset: 100,
                len: 50
            })
        );
        assert_eq!(su.name.as_deref(), Some(&b"long-name"[..]));
        let px = su.px.unwrap();
        assert_eq!(
            (px.mode, px.nlink, px.uid, px.gid),
            (0o100644, 3, 1000, 100)
        );
        assert_eq!(su.link.as_deref(), Some(&b"/usr/../lib"[..]));
        assert_eq!(su.mtime, Some(1_709_206_496));
        assert_eq!(su.atime, Some(0));
        assert!(su.rock_ridge);
    }

    #[test]
    fn bad_entries_are_errors() {
        let mut su = SystemUse::default();
        assert!(su.parse_area(b"NM\x02\x01").is_err(), "length below header");
        assert!(
            su.parse_area(b"NM\x09\x01\x00ab").is_err(),
            "length past area"
        );
        assert!(su.parse_area(&entry(b"PX", &[0; 8])).is_err());
        assert!(su.parse_area(&entry(b"TF", &[0x02, 1, 2])).is_err());
        assert!(su.parse_area(&entry(b"SL", &[0, 9, b'a'])).is_err());
        let long: Vec<u8> = std::iter::repeat_n(entry(b"NM", &[1; 200]), 6)
            .flatten()
            .collect();
        assert!(su.parse_area(&long).is_err(), "name over the limit");
    }
}
