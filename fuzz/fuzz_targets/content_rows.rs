#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pochta_fuzz::content_rows(data));
