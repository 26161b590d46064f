//! libFuzzer entry point for `checks::path_normalize`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::checks::path_normalize(data));
