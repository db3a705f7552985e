//! Text parameter parser and negotiation rules: never panic, and parsed pairs re-encode losslessly.
#![no_main]

use isomount::iscsi::text::{accept, encode, parse, respond, Params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pairs) = parse(data) else {
        return;
    };
    assert_eq!(parse(&encode(&pairs)).expect("re-encoded text parses"), pairs);
    let mut params = Params::default();
    for (key, value) in &pairs {
        let _ = respond(key, value, value);
        let _ = accept(key, value, value);
        let _ = params.set(key, value);
    }
});
