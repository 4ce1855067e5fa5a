//! Replays the saved seed inputs (`fuzz/seeds/<target>/`) through the fuzz
//! targets' checks, so that `cargo test` runs them without a fuzzer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("seed directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "seeds failing {target}: {failed:#?}");
}

#[test]
fn frame_seeds() {
    replay("frame", super::frame::check);
}

#[test]
fn startup_seeds() {
    replay("startup", super::startup::check);
}

#[test]
fn scram_server_seeds() {
    replay("scram_server", super::scram_server::check);
}

#[test]
fn scram_client_seeds() {
    replay("scram_client", super::scram_client::check);
}

#[test]
fn tracker_seeds() {
    replay("tracker", super::tracker::check);
}

#[test]
fn sql_seeds() {
    replay("sql", super::sql::check);
}

#[test]
fn sql_statement_split_seeds() {
    replay("sql", super::sql::check_statement_split);
}
