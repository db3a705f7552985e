//! Manifest parser: never panics, and an accepted manifest re-serializes to the same bytes.
#![no_main]

use isomount::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        assert_eq!(m.to_bytes(), data);
        assert!(m.hash(m.chunks() - 1).is_some());
        assert!(m.hash(m.chunks()).is_none());
    }
});
