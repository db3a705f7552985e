//! Catalog parser ([`isomount::catalog::parse`]): never panics; an accepted catalog's entries
//! are valid, and a refusal names the file.

use isomount::catalog::{parse, Origin};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Origin::File("/fuzz/catalog.toml".into());
    match parse(text, &origin) {
        Ok(entries) => {
            for e in entries {
                assert!(!e.name.is_empty() && e.size > 0);
                assert!(!e.portals().is_empty() || !e.urls.is_empty(), "{e:?}");
                assert!(e.urls.is_empty() || e.manifest.is_some(), "{e:?}");
            }
        }
        Err(err) => assert!(err.to_string().starts_with("/fuzz/catalog.toml:"), "{err}"),
    }
}

pub fn accepts(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| {
        parse(text, &Origin::File("/fuzz/catalog.toml".into())).is_ok_and(|e| !e.is_empty())
    })
}
