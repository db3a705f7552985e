//! libFuzzer's entry to the `susp` target; its body and invariants are in `src/susp.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::susp::run(data));
