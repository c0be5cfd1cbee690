#![no_main]
//! `ferry_s3::fuzz::object_lock`: see crates/ferry-s3/src/fuzz.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_s3::fuzz::object_lock(data));
