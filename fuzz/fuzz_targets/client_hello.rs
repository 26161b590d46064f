//! libFuzzer entry point for `checks::client_hello`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::checks::client_hello(data));
