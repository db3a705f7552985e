//! System use areas ([`isomount::iso9660::susp`]: SUSP entries and the Rock Ridge entries in
//! them). The first byte is the length of the directory record's own area; the rest after it is
//! a continuation area parsed into the same record, as a CE entry would lead to. Never panics;
//! names and link targets stay within their limits.

use isomount::iso9660::susp::{SystemUse, MAX_LINK, MAX_NAME};

fn areas(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some(rest.split_at(usize::from(first).min(rest.len())))
}

pub fn run(data: &[u8]) {
    let Some((own, continuation)) = areas(data) else {
        return;
    };
    let mut su = SystemUse::default();
    let ok = su.parse_area(own).is_ok() && su.parse_area(continuation).is_ok();
    if ok {
        assert!(su.name.as_ref().is_none_or(|n| n.len() <= MAX_NAME));
        assert!(su.link.as_ref().is_none_or(|l| l.len() <= MAX_LINK));
    }
}

pub fn accepts(data: &[u8]) -> bool {
    let Some((own, continuation)) = areas(data) else {
        return false;
    };
    let mut su = SystemUse::default();
    su.parse_area(own).is_ok() && su.parse_area(continuation).is_ok() && su.rock_ridge
}
