//! Isolation between clients under transaction pooling: a client only ever
//! receives answers to its own messages, in order, and sees only its own
//! session state, exactly as on a direct connection.
//!
//! `randomized_clients_get_only_their_own_answers` runs 32 clients over a
//! pool of 4 server connections, each client a random script (seeded) of
//! simple and extended queries, pipelines, errors in batches, COPY both
//! ways (also failing with Sync and a Query pipelined behind the bad row),
//! cancels, transactions, clients vanishing mid-transaction, session state
//! (SET, set_config, advisory locks, LISTEN, SQL PREPARE, temp tables, each
//! also hidden as the second statement of a query), DISCARD/DEALLOCATE
//! ALL, per-group search_path with the same prepared text, and DDL that
//! changes a prepared statement's result type. Each step's answers are
//! computed by a model (`model.rs`); the same scripts run first straight
//! against PostgreSQL (which checks the model) and then through pgrelay
//! with its default `session_state = "pin"`.
//!
//! Runs:
//!
//! ```text
//! cargo test --test isolation                 # fixed seed, ~1 min, plus the regressions
//! PGRELAY_ISOLATION_SEED=<n|random> PGRELAY_ISOLATION_SECS=600 \
//!     cargo test --release --test isolation randomized -- --nocapture
//! ```
//!
//! With `PGRELAY_ISOLATION_SECS` the run repeats rounds (each with a new
//! seed derived from the first) until the time is up, and stops at the
//! first round with a mismatch; the seed it prints reproduces that round
//! alone (`PGRELAY_ISOLATION_SEED=<printed seed> cargo test --test
//! isolation randomized -- --nocapture`). `PGRELAY_ISOLATION_DIRECT=0`
//! skips the direct passes; `PGRELAY_ISOLATION_DUMP=<session>` prints every
//! write of that session (as named in a mismatch) as it is sent. The
//! output: the seed, steps, writes and transactions run, and "0 crossings"
//! or every mismatch with its client, session, step, step kind, what was
//! sent, expected and received.
//!
//! `regressions.rs` reproduces known crossings one at a time.

#[path = "../support/mod.rs"]
mod support;

mod batch;
mod client;
mod copy_steps;
mod harness;
mod model;
mod regressions;
mod render;
mod script;
mod state_steps;
mod steps;
mod wire_out;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use script::{client_script, ClientScript, Sizes};

/// The tests of this binary run one at a time: they share the cluster, and
/// the randomized run's timing bounds assume it has the machine to itself.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEFAULT_SEED: u64 = 20_240_611;
const SIZES: Sizes = Sizes { clients: 32, steps_per_client: 250 };
/// Bounds of one round's passes (count bounds come from SIZES).
const DIRECT_LIMIT: Duration = Duration::from_secs(20);
const RELAY_LIMIT: Duration = Duration::from_secs(35);
/// Transaction pooling, 4 server connections for 32 clients.
const POOL: &str = "default_pool_size = 4\nquery_wait_timeout = \"5s\"";

struct Settings {
    seed: u64,
    /// Keep running rounds until this much time has passed.
    budget: Option<Duration>,
    direct: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let seed = match std::env::var("PGRELAY_ISOLATION_SEED") {
            Ok(v) if v == "random" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                now.as_nanos() as u64 % 1_000_000_000
            }
            Ok(v) => v.parse().unwrap_or_else(|_| panic!("PGRELAY_ISOLATION_SEED={v:?}: a number or \"random\"")),
            Err(_) => DEFAULT_SEED,
        };
        let budget = std::env::var("PGRELAY_ISOLATION_SECS").ok().map(|v| {
            Duration::from_secs(v.parse().unwrap_or_else(|_| panic!("PGRELAY_ISOLATION_SECS={v:?}: seconds")))
        });
        let direct = std::env::var("PGRELAY_ISOLATION_DIRECT").map_or(true, |v| v != "0");
        Settings { seed, budget, direct }
    }
}

/// The seed of round `round` of a run started with `seed`.
fn round_seed(seed: u64, round: u64) -> u64 {
    if round == 0 {
        return seed;
    }
    script::Rng::new(seed ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64() % 1_000_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_clients_get_only_their_own_answers() {
    let _serial = SERIAL.lock().await;
    let settings = Settings::from_env();
    let started = Instant::now();
    let mut totals = (0usize, 0usize, 0usize);
    for round in 0.. {
        let seed = round_seed(settings.seed, round);
        let scripts: Vec<ClientScript> = (0..SIZES.clients).map(|c| client_script(seed, c, SIZES)).collect();
        println!(
            "isolation round {round}: seed {seed} (reproduce: PGRELAY_ISOLATION_SEED={seed}), {} clients, pool of 4, {} steps planned",
            SIZES.clients,
            scripts.iter().map(ClientScript::steps).sum::<usize>()
        );
        let mut failures = Vec::new();
        if settings.direct {
            let primary = support::cluster().primary().addr();
            let report = pass(primary, &scripts, DIRECT_LIMIT).await;
            println!("  {}", report.summary("direct to PostgreSQL"));
            if !report.mismatches.is_empty() {
                failures.push(details("the model disagrees with PostgreSQL itself (a harness bug)", seed, &report));
            }
        }
        let app = support::relay::start_default(support::cluster(), POOL).await;
        let report = pass(app.rw_addr, &scripts, RELAY_LIMIT).await;
        app.shutdown(Duration::from_secs(5)).await;
        println!("  {}", report.summary("through pgrelay"));
        totals = (totals.0 + report.steps, totals.1 + report.writes, totals.2 + report.transactions);
        if !report.mismatches.is_empty() {
            failures.push(details("pgrelay's answers differ from PostgreSQL's", seed, &report));
        }
        if !failures.is_empty() {
            panic!("{}", failures.join("\n\n"));
        }
        let done = settings.budget.is_none_or(|budget| started.elapsed() >= budget);
        if done {
            println!(
                "isolation: {} round(s), {} steps, {} writes, {} transactions through pgrelay in {:.0} s: 0 crossings",
                round + 1,
                totals.0,
                totals.1,
                totals.2,
                started.elapsed().as_secs_f64()
            );
            break;
        }
    }
}

async fn pass(addr: SocketAddr, scripts: &[ClientScript], limit: Duration) -> harness::PassReport {
    harness::prepare_database(SIZES.clients).await;
    harness::run_pass(addr, scripts, Instant::now() + limit).await
}

/// The report of a failed pass: the summary, then the first mismatches of
/// each step kind (all of them are counted in the summary).
fn details(what: &str, seed: u64, report: &harness::PassReport) -> String {
    const PER_KIND: usize = 3;
    let mut text = format!("{what}; seed {seed}\n{}\n", report.summary("mismatches"));
    let mut shown: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for m in &report.mismatches {
        let count = shown.entry(m.kind.as_str()).or_default();
        *count += 1;
        if *count <= PER_KIND {
            text.push_str(&format!("\nseed {seed}, {m}\n"));
        }
    }
    let hidden: usize = shown.values().map(|n| n.saturating_sub(PER_KIND)).sum();
    if hidden > 0 {
        text.push_str(&format!("\n({hidden} more mismatches of the same step kinds not shown)\n"));
    }
    text
}
