//! The properties the fuzz targets in `fuzz/` check, one function per
//! target, so that the fuzzers and the seed replay in `cargo test` share a
//! single copy of each. Every `check` takes arbitrary bytes and panics when
//! a property does not hold. Built for tests and with the `fuzzing` feature
//! only; not part of pgrelay's API.

pub mod frame;
pub mod scram_client;
mod scram_oracle;
pub mod scram_server;
pub mod sql;
pub mod startup;
#[cfg(test)]
mod tests;
pub mod tracker;

/// Hands out a fuzz input piece by piece; past its end every read answers
/// zeros or nothing, so any input decodes to something.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.data.split_first() else { return 0 };
        self.data = rest;
        first
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// A piece whose length is the next byte.
    fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte());
        self.take(len)
    }
}

/// Splits `data` at its first `sep` (the whole of it and nothing when there is none).
fn split_once(data: &[u8], sep: u8) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// Replaces each `from` byte in `data` with `to`.
fn substitute(data: &[u8], from: u8, to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + to.len());
    for &b in data {
        if b == from {
            out.extend_from_slice(to);
        } else {
            out.push(b);
        }
    }
    out
}
