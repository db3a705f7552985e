//! libFuzzer's entry to the `send_targets` target; its body and invariants are in `src/send_targets.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::send_targets::run(data));
