//! The properties are in pgrelay's src/fuzzing/sql.rs, shared with the seed replay in cargo test.
#![no_main]

use std::sync::LazyLock;

/// The statement-split property fails on a classifier that reads only the
/// first statement; PGRELAY_FUZZ_SQL_NO_SPLIT=1 leaves it out to fuzz the rest.
static SPLIT: LazyLock<bool> = LazyLock::new(|| std::env::var_os("PGRELAY_FUZZ_SQL_NO_SPLIT").is_none());

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgrelay::fuzzing::sql::check(data);
    if *SPLIT {
        pgrelay::fuzzing::sql::check_statement_split(data);
    }
});
