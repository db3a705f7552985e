//! libFuzzer's entry to the `cdb` target; its body and invariants are in `src/cdb.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::cdb::run(data));
