//! libFuzzer's entry to the `pdu` target; its body and invariants are in `src/pdu.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::pdu::run(data));
