#![no_main]
//! cargo-fuzz entry point; the body is `sluice_fuzz_targets::cesql` (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz_targets::cesql(data));
