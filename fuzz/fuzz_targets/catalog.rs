//! Catalog parser: never panics; an accepted catalog's entries are valid.
#![no_main]

use isomount::catalog::{parse, Origin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Origin::File("/fuzz/catalog.toml".into());
    match parse(text, &origin) {
        Ok(entries) => {
            for e in entries {
                assert!(!e.name.is_empty() && e.size > 0);
                assert!(!e.portals().is_empty() || !e.urls.is_empty());
                assert!(e.urls.is_empty() || e.manifest.is_some());
            }
        }
        Err(err) => assert!(err.to_string().starts_with("/fuzz/catalog.toml:")),
    }
});
