//! The properties are in pgrelay's src/fuzzing/scram_client.rs, shared with the seed replay in cargo test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgrelay::fuzzing::scram_client::check(data));
