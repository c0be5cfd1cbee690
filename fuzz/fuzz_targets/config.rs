#![no_main]
//! `ferry_core::fuzz::config`: see crates/ferry-core/src/fuzz.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_core::fuzz::config(data));
