//! libFuzzer's entry to the `cache_index` target; its body and invariants are in `src/cache_index.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isomount_fuzz::cache_index::run(data));
