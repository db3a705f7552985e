//! libFuzzer's entry to the `catalog` target; its body and invariants are in `src/catalog.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::catalog::run(data));
