//! libFuzzer entry point for `checks::spiffe_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::checks::spiffe_id(data));
