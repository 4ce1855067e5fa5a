//! Each pool's traffic: queries, transactions and waits for a server
//! connection, each a histogram of durations in microseconds. They are
//! counted where they happen, on every worker, without a lock or a cache
//! line another worker writes: each worker adds to a shard of its own
//! (relaxed atomic adds), and a scrape or SHOW STATS adds the shards up.
//! Exported as Prometheus counters and histograms labelled by pool (node,
//! database, user), never by worker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto;

use crate::worker;

/// Bucket upper bounds, in microseconds: 100 µs to 30 s, as the other
/// duration histograms.
pub const BOUNDS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Observations per bucket (the last one above every bound) and their sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    #[inline]
    fn observe(&self, us: u64) {
        // Most observations fall in the first buckets: a scan from the
        // start ends sooner than a binary search.
        let bucket = BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        // Most waits are 0: one atomic add for them.
        if us > 0 {
            self.sum_us.fetch_add(us, Relaxed);
        }
    }

    fn add_to(&self, totals: &mut Totals) {
        for (total, bucket) in totals.buckets.iter_mut().zip(&self.buckets) {
            let n = bucket.load(Relaxed);
            *total += n;
            totals.count += n;
        }
        totals.sum_us += self.sum_us.load(Relaxed);
    }
}

/// What one worker counted for one pool. Aligned so that no two workers'
/// shards share a cache line (or the pair of lines fetched together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    queries: Histogram,
    transactions: Histogram,
    waits: Histogram,
}

/// One pool's traffic since start.
#[derive(Debug)]
pub struct PoolTraffic {
    shards: Box<[Shard]>,
}

impl PoolTraffic {
    fn new(shards: usize) -> PoolTraffic {
        PoolTraffic { shards: (0..shards.max(1)).map(|_| Shard::default()).collect() }
    }

    /// This thread's shard: its worker's (threads that are no worker count
    /// as worker 0; atomic adds keep a shared shard correct).
    #[inline]
    fn shard(&self) -> &Shard {
        &self.shards[worker::current().min(self.shards.len() - 1)]
    }

    /// A query ended (see `frontend::session::timing` for what a query is).
    #[inline]
    pub fn query(&self, duration: Duration) {
        self.shard().queries.observe(micros(duration));
    }

    /// A transaction ended.
    #[inline]
    pub fn transaction(&self, duration: Duration) {
        self.shard().transactions.observe(micros(duration));
    }

    /// A client was assigned a server connection after waiting this long (0: one was free).
    #[inline]
    pub fn wait(&self, duration: Duration) {
        self.shard().waits.observe(micros(duration));
    }

    /// The sums over every worker.
    pub fn totals(&self) -> TrafficTotals {
        let mut totals = TrafficTotals::default();
        for shard in self.shards.iter() {
            shard.queries.add_to(&mut totals.queries);
            shard.transactions.add_to(&mut totals.transactions);
            shard.waits.add_to(&mut totals.waits);
        }
        totals
    }
}

fn micros(duration: Duration) -> u64 {
    // Without as_micros' 128-bit arithmetic.
    duration.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(duration.subsec_micros()))
}

/// One histogram's sums: observations per bucket (not cumulative), how many, and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    pub sum_us: u64,
}

/// A pool's (or several pools') traffic summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    pub queries: Totals,
    pub transactions: Totals,
    pub waits: Totals,
}

impl TrafficTotals {
    pub fn add(&mut self, other: &TrafficTotals) {
        for (total, part) in [
            (&mut self.queries, &other.queries),
            (&mut self.transactions, &other.transactions),
            (&mut self.waits, &other.waits),
        ] {
            total.buckets.iter_mut().zip(&part.buckets).for_each(|(t, p)| *t += p);
            total.count += part.count;
            total.sum_us += part.sum_us;
        }
    }
}

/// A pool's labels, in the order Prometheus sorts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLabels {
    pub database: String,
    pub node: String,
    pub user: String,
}

/// Every pool's traffic, as the Prometheus families below. A pool's series
/// outlives the pool (a failover or reload closes pools; a new pool for the
/// same node, database and user continues it), so totals never drop.
/// Clones share the pools (the registry holds one).
#[derive(Debug, Clone)]
pub struct TrafficFamilies {
    shards: usize,
    pools: Arc<Mutex<Vec<LabelledPool>>>,
    descs: Vec<Desc>,
}

type LabelledPool = (PoolLabels, Arc<PoolTraffic>);

/// The families exported: (name, help, what).
const FAMILIES: [(&str, &str, Family); 5] = [
    (
        "pgrelay_queries_total",
        "Queries run: from the first byte of a client's request to the server's ReadyForQuery; requests pipelined \
         behind unanswered ones count with them, as in PgBouncer.",
        Family::Count(Part::Queries),
    ),
    ("pgrelay_query_duration_seconds", "How long queries took.", Family::Histogram(Part::Queries)),
    (
        "pgrelay_transactions_total",
        "Transactions run: from the first byte of their first query to the ReadyForQuery that ends them.",
        Family::Count(Part::Transactions),
    ),
    ("pgrelay_transaction_duration_seconds", "How long transactions took.", Family::Histogram(Part::Transactions)),
    (
        "pgrelay_checkout_wait_seconds",
        "Time a client waited for a server connection (0 when one was free), per connection assigned.",
        Family::Histogram(Part::Waits),
    ),
];

#[derive(Debug, Clone, Copy)]
enum Part {
    Queries,
    Transactions,
    Waits,
}

#[derive(Debug, Clone, Copy)]
enum Family {
    Count(Part),
    Histogram(Part),
}

impl TrafficFamilies {
    /// Families whose pools keep one shard per worker (`[pool] workers`).
    pub fn new(workers: usize) -> TrafficFamilies {
        let labels = || ["database", "node", "user"].map(str::to_owned).to_vec();
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| {
                Desc::new((*name).to_owned(), (*help).to_owned(), labels(), Default::default())
                    .expect("valid metric definition")
            })
            .collect();
        TrafficFamilies { shards: workers, pools: Arc::default(), descs }
    }

    /// The traffic of pool (node, database, user), created on first use.
    pub fn pool(&self, node: &str, database: &str, user: &str) -> Arc<PoolTraffic> {
        let mut pools = self.pools.lock().expect("metrics lock");
        let found = pools.iter().find(|(l, _)| l.node == node && l.database == database && l.user == user);
        if let Some((_, traffic)) = found {
            return traffic.clone();
        }
        let labels = PoolLabels { database: database.to_owned(), node: node.to_owned(), user: user.to_owned() };
        let traffic = Arc::new(PoolTraffic::new(self.shards));
        pools.push((labels, traffic.clone()));
        traffic
    }

    /// Every pool's totals.
    pub fn totals(&self) -> Vec<(PoolLabels, TrafficTotals)> {
        let pools: Vec<_> = self.pools.lock().expect("metrics lock").clone();
        pools.into_iter().map(|(labels, traffic)| (labels, traffic.totals())).collect()
    }
}

impl Collector for TrafficFamilies {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let pools = self.totals();
        FAMILIES
            .iter()
            .map(|(name, help, family)| {
                let mut mf = proto::MetricFamily::default();
                mf.set_name((*name).to_owned());
                mf.set_help((*help).to_owned());
                let metrics = pools.iter().map(|(labels, totals)| {
                    let mut metric = proto::Metric::default();
                    metric.set_label(label_pairs(labels));
                    match *family {
                        Family::Count(part) => {
                            let mut counter = proto::Counter::default();
                            counter.set_value(part_of(totals, part).count as f64);
                            metric.set_counter(counter);
                        }
                        Family::Histogram(part) => metric.set_histogram(histogram(part_of(totals, part))),
                    }
                    metric
                });
                mf.set_metric(metrics.collect());
                let kind = match family {
                    Family::Count(_) => proto::MetricType::COUNTER,
                    Family::Histogram(_) => proto::MetricType::HISTOGRAM,
                };
                mf.set_field_type(kind);
                mf
            })
            .collect()
    }
}

fn part_of(totals: &TrafficTotals, part: Part) -> &Totals {
    match part {
        Part::Queries => &totals.queries,
        Part::Transactions => &totals.transactions,
        Part::Waits => &totals.waits,
    }
}

fn label_pairs(labels: &PoolLabels) -> Vec<proto::LabelPair> {
    [("database", &labels.database), ("node", &labels.node), ("user", &labels.user)]
        .into_iter()
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(name.to_owned());
            pair.set_value(value.clone());
            pair
        })
        .collect()
}

fn histogram(totals: &Totals) -> proto::Histogram {
    let mut histogram = proto::Histogram::default();
    histogram.set_sample_count(totals.count);
    histogram.set_sample_sum(totals.sum_us as f64 / 1e6);
    let mut cumulative = 0;
    let buckets = BOUNDS_US
        .iter()
        .zip(&totals.buckets)
        .map(|(bound, n)| {
            cumulative += n;
            let mut bucket = proto::Bucket::default();
            bucket.set_cumulative_count(cumulative);
            bucket.set_upper_bound(*bound as f64 / 1e6);
            bucket
        })
        .collect();
    histogram.set_bucket(buckets);
    histogram
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_sum_over_shards() {
        let families = TrafficFamilies::new(2);
        let pool = families.pool("pg0", "app", "alice");
        pool.query(Duration::from_micros(100));
        pool.query(Duration::from_micros(101));
        pool.query(Duration::from_secs(60));
        // Another worker's shard.
        pool.shards[1].queries.observe(50);
        pool.transaction(Duration::from_millis(2));
        pool.wait(Duration::ZERO);
        let totals = pool.totals();
        assert_eq!(totals.queries.count, 4);
        assert_eq!(totals.queries.sum_us, 100 + 101 + 60_000_000 + 50);
        assert_eq!(&totals.queries.buckets[..2], &[2, 1], "<= 100 µs twice, then <= 250 µs");
        assert_eq!(totals.queries.buckets[BUCKETS - 1], 1, "above 30 s");
        assert_eq!((totals.transactions.count, totals.transactions.sum_us), (1, 2000));
        assert_eq!((totals.waits.count, totals.waits.buckets[0]), (1, 1));
        assert!(Arc::ptr_eq(&pool, &families.pool("pg0", "app", "alice")), "one series per pool");
    }

    #[test]
    fn exported_as_cumulative_histograms_and_counters() {
        let families = TrafficFamilies::new(1);
        families.pool("pg0", "app", "alice").query(Duration::from_micros(300));
        families.pool("pg0", "app", "alice").query(Duration::from_millis(20));
        let mfs = families.collect();
        let family = |name: &str| mfs.iter().find(|mf| mf.name() == name).expect(name);
        let queries = &family("pgrelay_queries_total").get_metric()[0];
        assert_eq!(queries.get_counter().get_value(), 2.0);
        let labels: Vec<_> = queries.get_label().iter().map(|l| (l.name(), l.value())).collect();
        assert_eq!(labels, [("database", "app"), ("node", "pg0"), ("user", "alice")]);
        let histogram = family("pgrelay_query_duration_seconds").get_metric()[0].get_histogram();
        assert_eq!(histogram.get_sample_count(), 2);
        assert!((histogram.get_sample_sum() - 0.0203).abs() < 1e-9);
        let cumulative: Vec<u64> = histogram.get_bucket().iter().map(|b| b.cumulative_count()).collect();
        assert_eq!(&cumulative[..8], &[0, 0, 1, 1, 1, 1, 1, 2]);
        assert_eq!(family("pgrelay_transactions_total").get_metric()[0].get_counter().get_value(), 0.0);
    }
}
