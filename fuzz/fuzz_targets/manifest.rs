//! libFuzzer's entry to the `manifest` target; its body and invariants are in `src/manifest.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::manifest::run(data));
