//! pgrelay following a real primary + 2 streaming replicas with
//! `source = "postgres"` (and `"patroni"` with a stand-in REST API):
//! lagging replicas leave and rejoin the read set, an unplanned failover,
//! a split brain, a replica restart, a Patroni leader change. Every test
//! destroys its topology, so each starts its own cluster, and the tests run
//! one at a time (a failover on 2 shared cores is timing-sensitive enough).

#[path = "../support/mod.rs"]
mod support;

mod common;
mod connect_retry;
mod failover;
mod lag;
mod min_pool_size;
mod patroni;
mod read_your_writes;
mod replicas;
mod split_brain;
mod survive;
mod switchover;
mod sync;
