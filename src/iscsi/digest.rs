//! CRC32C header and data digests (RFC 7143 §11.2.3, §13.1; the polynomial and examples of
//! RFC 3720 Appendix B.4).
//!
//! The digest is the CRC32C (Castagnoli) of the header (BHS + AHS) or of the data segment with its
//! padding. On the wire its least significant byte comes first: RFC 3720 B.4 shows the CRC of 32
//! zero bytes, 0x8a9136aa, sent as `aa 36 91 8a`.

/// The CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continue a CRC32C over more bytes.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// A digest in wire byte order.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 Appendix B.4 examples.
    #[test]
    fn rfc3720_examples() {
        assert_eq!(to_wire(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(to_wire(crc32c(&[0xffu8; 32])), [0x43, 0xab, 0xa8, 0x62]);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(to_wire(crc32c(&ascending)), [0x4e, 0x79, 0xdd, 0x46]);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(to_wire(crc32c(&descending)), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn append_equals_whole() {
        let data = b"header digest over two parts";
        assert_eq!(crc32c_append(crc32c(&data[..7]), &data[7..]), crc32c(data));
    }
}
