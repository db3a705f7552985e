//! libFuzzer's entry to the `text` target; its body and invariants are in `src/text.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::text::run(data));
