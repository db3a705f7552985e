//! libFuzzer's entry to the `url` target; its body and invariants are in `src/url.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::url::run(data));
