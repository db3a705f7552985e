//! Cache index header parser ([`isomount::cache::Geometry`]): never panics, and an accepted
//! header re-encodes to itself. Each input is parsed as it is and again with its header CRC32C
//! made right, so mutations of the header fields reach the checks behind the checksum.

use isomount::cache::Geometry;

pub fn run(data: &[u8]) {
    check(data);
    if let Some(fixed) = crate::with_header_crc(data) {
        check(&fixed);
    }
}

fn check(data: &[u8]) {
    if let Some(g) = Geometry::parse_header(data) {
        assert_eq!(
            &g.header()[..],
            &data[..64],
            "an accepted header re-encodes to itself"
        );
        assert!(g.chunks() > 0);
        let last = g.chunk_len(g.chunks() - 1);
        assert!(last > 0 && last <= g.chunk_size as usize);
        assert_eq!(g.chunk_len(g.chunks()), 0);
    }
}

pub fn accepts(data: &[u8]) -> bool {
    Geometry::parse_header(data).is_some()
}
