//! libFuzzer's entry to the `scsi_response` target; its body and invariants are in `src/scsi_response.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::scsi_response::run(data));
