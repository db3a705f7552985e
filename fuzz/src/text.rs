//! Text parameter parser and negotiation rules ([`isomount::iscsi::text`]): never panic, and
//! parsed pairs re-encode losslessly.

use isomount::iscsi::text::{accept, encode, parse, respond, Params};

pub fn run(data: &[u8]) {
    let Ok(pairs) = parse(data) else {
        return;
    };
    assert_eq!(
        parse(&encode(&pairs)).expect("re-encoded text parses"),
        pairs
    );
    let mut params = Params::default();
    for (key, value) in &pairs {
        let _ = respond(key, value, value);
        let _ = accept(key, value, value);
        let _ = params.set(key, value);
    }
    let _ = params.describe();
}

pub fn accepts(data: &[u8]) -> bool {
    parse(data).is_ok_and(|pairs| !pairs.is_empty())
}
