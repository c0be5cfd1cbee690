#![no_main]
//! `ferry_s3::fuzz::lifecycle_xml`: see crates/ferry-s3/src/fuzz.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_s3::fuzz::lifecycle_xml(data));
