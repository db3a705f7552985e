//! libFuzzer's entry to the `iso9660` target; its body and invariants are in `src/iso9660.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::iso9660::run(data));
