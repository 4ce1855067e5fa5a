//! The properties are in pgrelay's src/fuzzing/startup.rs, shared with the seed replay in cargo test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgrelay::fuzzing::startup::check(data));
