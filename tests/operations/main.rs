//! Operating a running pgrelay in front of the shared primary + 2 replicas:
//! live reloads under load (`reload`), and the real binary's signals —
//! drains, pause and resume, reload, immediate stop (`signals`).

#[path = "../support/mod.rs"]
mod support;

mod common;
mod process;
mod reload;
mod signals;
