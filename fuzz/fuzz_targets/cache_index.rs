//! Cache index header parser: never panics; an accepted header re-encodes to itself.
#![no_main]

use isomount::cache::Geometry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(g) = Geometry::parse_header(data) {
        assert_eq!(&g.header()[..], &data[..64]);
        let _ = g.chunk_len(g.chunks().saturating_sub(1));
    }
});
