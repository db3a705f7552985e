//! Manifest parser ([`isomount::manifest`]): never panics, and an accepted manifest re-serializes
//! to the same bytes (its pin is the pin of the file). Each input is parsed as it is and again
//! with its header CRC32C made right, so mutations of the header fields reach the checks behind
//! the checksum.

use isomount::manifest::Manifest;

pub fn run(data: &[u8]) {
    check(data);
    if let Some(fixed) = crate::with_header_crc(data) {
        check(&fixed);
    }
}

fn check(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data) {
        assert_eq!(
            m.to_bytes(),
            data,
            "an accepted manifest re-serializes to itself"
        );
        assert!(m.hash(m.chunks() - 1).is_some());
        assert!(m.hash(m.chunks()).is_none());
        assert!(m.image_size() > (m.chunks() - 1) * u64::from(m.chunk_size()));
        assert!(m.image_size() <= m.chunks() * u64::from(m.chunk_size()));
    }
}

pub fn accepts(data: &[u8]) -> bool {
    Manifest::parse(data).is_ok()
}
