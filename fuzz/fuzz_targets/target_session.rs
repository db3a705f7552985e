//! libFuzzer's entry to the `target_session` target; its body and invariants are in `src/target_session.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::target_session::run(data));
