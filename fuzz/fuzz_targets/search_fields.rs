#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pochta_fuzz::search_fields(data));
