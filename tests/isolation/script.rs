//! The randomized scripts: for each client a list of sessions (login to
//! Terminate or to vanishing), each a list of steps, each step one or more
//! writes with the exact answers a direct connection gives. Everything is
//! generated from the seed before anything runs, so a script never depends
//! on timing or on what a run received.

use bytes::Bytes;

use crate::model::{Row, Schema, Session};
use crate::steps;
use crate::wire_out::Out;

/// SplitMix64: small, and stable across dependency updates, so a seed
/// names the same scripts for good.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)].clone()
    }

    /// One of `items`, each as likely as its weight (weight 0: never).
    pub fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u64 = items.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut n = self.next_u64() % total;
        for (item, weight) in items {
            if n < u64::from(*weight) {
                return *item;
            }
            n -= u64::from(*weight);
        }
        unreachable!("n < total")
    }
}

/// What the harness does for one write.
#[derive(Debug, Clone)]
pub enum Action {
    /// Write `send` at once, then read until `expect` is complete (as many
    /// ReadyForQuery as it holds, or as many messages when it holds none).
    /// With `cancel`, a CancelRequest follows once the query is seen running.
    Exchange { send: Bytes, sent: String, expect: Vec<String>, cancel: bool },
    /// Write `send` without reading the answers, wait, and drop the socket.
    Vanish { send: Bytes, pause_ms: u64 },
}

impl Action {
    pub fn exchange(out: Out, expect: Vec<String>) -> Action {
        let (send, sent) = out.finish();
        Action::Exchange { send, sent, expect, cancel: false }
    }

    pub fn query(sql: &str, expect: Vec<String>) -> Action {
        let mut out = Out::default();
        out.query(sql);
        Action::exchange(out, expect)
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub number: usize,
    pub kind: String,
    pub marker: String,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone)]
pub struct SessionScript {
    pub owner: String,
    pub startup: Schema,
    /// Takes session state: holds one of the few pin permits while it runs.
    pub stateful: bool,
    pub steps: Vec<Step>,
    /// Ends by dropping the socket instead of Terminate.
    pub vanishes: bool,
    /// The rows of t this session commits, as (schema, value, marker), sorted.
    pub committed: Vec<Row>,
}

#[derive(Debug, Clone)]
pub struct ClientScript {
    pub id: usize,
    pub sessions: Vec<SessionScript>,
}

impl ClientScript {
    pub fn steps(&self) -> usize {
        self.sessions.iter().map(|s| s.steps.len()).sum()
    }
}

/// Script sizes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub clients: usize,
    pub steps_per_client: usize,
}

/// One client's script: sessions until `steps_per_client` steps are planned.
pub fn client_script(seed: u64, client: usize, sizes: Sizes) -> ClientScript {
    let mut rng = Rng::new(seed ^ (client as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let startup = if client % 2 == 0 { Schema::Int } else { Schema::Text };
    let mut sessions = Vec::new();
    let mut step_number = 0;
    while step_number < sizes.steps_per_client {
        let number = sessions.len();
        let stateful = rng.chance(30);
        let mut s = Session::new(client, number, startup, stateful);
        let mut planned = Vec::new();
        let length = rng.range(3, 14);
        for _ in 0..length {
            step_number += 1;
            planned.push(steps::random_step(&mut s, &mut rng, step_number));
        }
        // A last look at the session's state catches anything left over.
        step_number += 1;
        planned.push(steps::probe_step(&mut s, &mut rng, step_number));
        let vanishes = rng.chance(15);
        if vanishes {
            step_number += 1;
            planned.push(steps::vanish_step(&mut s, &mut rng, step_number));
        }
        let mut committed = s.rows.clone();
        committed.sort();
        sessions.push(SessionScript { owner: s.owner.clone(), startup, stateful, steps: planned, vanishes, committed });
    }
    ClientScript { id: client, sessions }
}

pub fn marker(client: usize, step: usize) -> String {
    format!("c{client:02}-s{step:04}")
}
