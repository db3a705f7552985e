//! libFuzzer's entry to the `http_range` target; its body and invariants are in
//! `src/http_range.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::http_range::run(data));
