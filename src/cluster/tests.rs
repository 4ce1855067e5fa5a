use std::time::Duration;

use super::decide::*;
use super::{NodeStatus, StandbyPositions, SyncState, Topology};
use crate::config::Role;

const MB: u64 = 1 << 20;
const LIMITS: LagLimits = LagLimits { bytes: MB, time: Duration::from_secs(10) };
const RULE: Hysteresis = Hysteresis { leave_after: 2, rejoin_after: 3 };

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("pg{i}")).collect()
}

fn base(n: usize) -> Vec<NodeStatus> {
    names(n)
        .into_iter()
        .enumerate()
        .map(|(i, name)| NodeStatus {
            name,
            host: "127.0.0.1".into(),
            port: 6000 + i as u16,
            role: None,
            lag_bytes: None,
            lag: None,
            wal_lsn: None,
            excluded: None,
            application_name: format!("pg{i}"),
            sync_state: SyncState::Unknown,
            streamed: None,
        })
        .collect()
}

/// A primary at `lsn` whose clock reads `now` seconds.
fn primary(lsn: u64, now: i64) -> Observation {
    Observation::Up(Probe {
        in_recovery: false,
        wal_lsn: Some(lsn),
        replay_micros: None,
        now_micros: now * 1_000_000,
        standbys: Vec::new(),
        synchronous_standby_names: String::new(),
    })
}

/// A replica that replayed up to `lsn`, last at `replayed` seconds.
fn replica(lsn: u64, replayed: Option<i64>) -> Observation {
    Observation::Up(Probe {
        in_recovery: true,
        wal_lsn: Some(lsn),
        replay_micros: replayed.map(|s| s * 1_000_000),
        now_micros: 0,
        standbys: Vec::new(),
        synchronous_standby_names: String::new(),
    })
}

fn down() -> Observation {
    Observation::Unreachable("connection refused".into())
}

#[test]
fn elects_exactly_one_primary() {
    use Observation::Unchecked;
    let cases: Vec<(Vec<Observation>, Election)> = vec![
        (vec![primary(1, 0), replica(1, None), replica(1, None)], Election::Primary(0)),
        (vec![down(), primary(1, 0), replica(1, None)], Election::Primary(1)),
        (
            vec![down(), replica(1, None), Unchecked],
            Election::NoPrimary("pg0 unreachable (connection refused), pg1 in recovery, pg2 not checked yet".into()),
        ),
        (vec![primary(1, 0), primary(2, 0), replica(1, None)], Election::SplitBrain(vec![0, 1])),
        (vec![primary(1, 0), primary(2, 0), primary(3, 0)], Election::SplitBrain(vec![0, 1, 2])),
    ];
    for (observations, want) in cases {
        assert_eq!(elect(&names(observations.len()), &observations), want, "{observations:?}");
    }
    let reason = split_brain_reason(&names(2), &[0, 1]);
    assert!(reason.starts_with("split brain: pg0 and pg1 all report"), "{reason}");
}

#[test]
fn measures_lag_only_while_lsns_differ() {
    let probe = |o: Observation| match o {
        Observation::Up(p) => p,
        _ => unreachable!(),
    };
    let cases = [
        // Idle primary: the replica replayed everything long ago; that is no lag.
        (replica(100, Some(0)), primary(100, 1000), Lag { bytes: Some(0), time: Some(Duration::ZERO) }),
        (replica(100, Some(990)), primary(300, 1000), Lag { bytes: Some(200), time: Some(Duration::from_secs(10)) }),
        (replica(100, None), primary(300, 1000), Lag { bytes: Some(200), time: None }),
        // The replica was checked after the primary and is ahead of its probe.
        (replica(400, Some(990)), primary(300, 1000), Lag { bytes: Some(0), time: Some(Duration::ZERO) }),
    ];
    for (r, p, want) in cases {
        assert_eq!(measure_lag(&probe(r.clone()), &probe(p)), want, "{r:?}");
    }
}

#[test]
fn checks_replicas_with_reasons() {
    let p = match primary(10 * MB, 1000) {
        Observation::Up(p) => p,
        _ => unreachable!(),
    };
    let cases: Vec<(Observation, Option<&Probe>, Result<(), &str>)> = vec![
        (replica(10 * MB, Some(0)), Some(&p), Ok(())),
        (replica(9 * MB + 1, Some(999)), Some(&p), Ok(())),
        (replica(8 * MB, Some(999)), Some(&p), Err("lag 2097152 bytes > max_replica_lag_bytes (1048576 bytes)")),
        (replica(10 * MB - 1, Some(985)), Some(&p), Err("lag 15.0s > max_replica_lag (10.0s)")),
        (replica(0, Some(0)), None, Ok(())),
        (down(), Some(&p), Err("unreachable (connection refused)")),
        (primary(1, 0), Some(&p), Err("not in recovery")),
        (Observation::Unchecked, Some(&p), Err("not checked yet")),
    ];
    for (observation, primary, want) in cases {
        let got = check_replica(&observation, primary, LIMITS).map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_owned), "{observation:?}");
    }
}

#[test]
fn membership_flips_only_after_a_run_of_checks() {
    // (checks, membership after each)
    let in_ = |bad| Membership::In { bad };
    let out = |good| Membership::Out { good };
    let cases: Vec<(&str, Vec<Membership>)> = vec![
        ("g", vec![in_(0)]),
        ("b", vec![out(0)]),
        ("gbb", vec![in_(0), in_(1), out(0)]),
        ("gbgb", vec![in_(0), in_(1), in_(0), in_(1)]),
        ("bggg", vec![out(0), out(1), out(2), in_(0)]),
        ("bggbggg", vec![out(0), out(1), out(2), out(0), out(1), out(2), in_(0)]),
    ];
    for (checks, want) in cases {
        let mut state = Membership::Unknown;
        let got: Vec<Membership> = checks
            .chars()
            .map(|c| {
                state = state.next(c == 'g', RULE);
                state
            })
            .collect();
        assert_eq!(got, want, "{checks}");
    }
    let once = Hysteresis { leave_after: 1, rejoin_after: 1 };
    assert_eq!(Membership::In { bad: 0 }.next(false, once), Membership::Out { good: 0 });
    assert_eq!(Membership::Out { good: 0 }.next(true, once), Membership::In { bad: 0 });
}

/// Feeds rounds of observations (one per node each) into a fresh state.
fn after(rounds: &[Vec<Observation>]) -> Topology {
    let n = rounds[0].len();
    let mut state = ClusterState::new(names(n), RULE, LIMITS);
    for round in rounds {
        for (i, observation) in round.iter().enumerate() {
            state.observe(i, observation.clone());
        }
    }
    state.topology(&base(n))
}

#[test]
fn builds_topology_with_hysteresis_and_reasons() {
    let healthy = vec![primary(5 * MB, 100), replica(5 * MB, Some(90)), replica(5 * MB, Some(90))];
    let lagging = vec![primary(5 * MB, 100), replica(5 * MB, Some(90)), replica(MB, Some(99))];
    let t = after(std::slice::from_ref(&healthy));
    assert_eq!((t.primary, t.read_set.clone(), t.split_brain), (Some(0), vec![1, 2], false));
    assert_eq!(
        t.nodes.iter().map(|n| n.role).collect::<Vec<_>>(),
        [Some(Role::Primary), Some(Role::Replica), Some(Role::Replica)]
    );

    // One bad check is not enough to leave; two are.
    assert_eq!(after(&[healthy.clone(), lagging.clone()]).read_set, [1, 2]);
    let t = after(&[healthy.clone(), lagging.clone(), lagging.clone()]);
    assert_eq!(t.read_set, [1]);
    assert_eq!(t.nodes[2].lag_bytes, Some(4 * MB));
    assert_eq!(t.nodes[2].excluded.as_deref(), Some("lag 4194304 bytes > max_replica_lag_bytes (1048576 bytes)"));

    // Coming back takes three good checks, and says so meanwhile.
    let t = after(&[healthy.clone(), lagging.clone(), lagging.clone(), healthy.clone(), healthy.clone()]);
    assert_eq!(t.read_set, [1]);
    assert_eq!(t.nodes[2].excluded.as_deref(), Some("rejoining: 2 of 3 good checks"));
    let t = after(&[healthy.clone(), lagging.clone(), lagging, healthy.clone(), healthy.clone(), healthy.clone()]);
    assert_eq!(t.read_set, [1, 2]);

    // A promoted replica leaves the read set at once and becomes the primary.
    let failed_over = vec![down(), primary(6 * MB, 101), replica(5 * MB, Some(90))];
    let t = after(&[healthy.clone(), failed_over]);
    assert_eq!((t.primary, t.read_set.clone()), (Some(1), vec![2]));
    assert_eq!(t.nodes[0].excluded.as_deref(), Some("unreachable (connection refused)"));
}

#[test]
fn no_primary_and_split_brain_topologies() {
    let t = after(&[vec![down(), replica(1, None), replica(1, None)]]);
    assert_eq!((t.primary, t.split_brain), (None, false));
    assert_eq!(
        t.no_primary_reason.as_deref(),
        Some("pg0 unreachable (connection refused), pg1 in recovery, pg2 in recovery")
    );
    assert_eq!(t.read_set, [1, 2], "replicas keep serving reads while no primary is known");

    let t = after(&[vec![primary(1, 0), primary(1, 0), replica(1, None)]]);
    assert_eq!((t.primary, t.split_brain, t.read_set.clone()), (None, true, vec![2]));
    assert!(t.no_primary_reason.as_deref().is_some_and(|r| r.contains("pg0 and pg1")), "{t:?}");
    assert_eq!(t.nodes[1].excluded.as_deref(), Some("not in recovery"));
}

#[test]
fn fences_the_former_primary() {
    let healthy = vec![primary(1, 0), replica(1, None), replica(1, None)];
    let primary_down = vec![down(), replica(1, None), replica(1, None)];
    let promoted = vec![down(), primary(2, 0), replica(1, None)];
    let split = vec![primary(1, 0), primary(2, 0), replica(1, None)];
    let demoted = vec![replica(1, None), primary(2, 0), replica(1, None)];
    let rejoined_as_replica = vec![replica(1, None), replica(1, None), replica(1, None)];
    // (sequence of rounds, node fenced after each)
    type Case<'a> = (Vec<&'a Vec<Observation>>, Vec<Option<usize>>);
    let cases: Vec<Case> = vec![
        (vec![&healthy, &healthy], vec![None, None]),
        (vec![&healthy, &primary_down, &primary_down, &promoted], vec![None, None, None, Some(0)]),
        (vec![&healthy, &split, &primary_down, &promoted], vec![None, Some(0), None, None]),
        (vec![&healthy, &demoted], vec![None, Some(0)]),
        (vec![&healthy, &rejoined_as_replica, &healthy], vec![None, Some(0), None]),
        (vec![&primary_down, &promoted, &demoted], vec![None, None, None]),
    ];
    for (rounds, want) in cases {
        let mut fencer = Fencer::default();
        let got: Vec<Option<usize>> = rounds.iter().map(|round| fencer.update(&after(&[(*round).clone()]))).collect();
        assert_eq!(got, want, "{rounds:?}");
    }
}

#[test]
fn publishes_routing_changes_only() {
    let view = super::ClusterView::new(after(&[vec![primary(1, 0), replica(1, None)]]));
    let changes = view.subscribe();
    let mut lag_only = view.load().as_ref().clone();
    lag_only.nodes[1].lag_bytes = Some(7);
    view.store(lag_only);
    assert!(!changes.has_changed().expect("sender alive"), "lag figures alone wake nobody");
    view.store(after(&[vec![down(), replica(1, None)]]));
    assert!(changes.has_changed().expect("sender alive"));
    assert_eq!(view.load().primary, None);
}

#[test]
fn counts_a_primary_change_only_when_another_node_takes_over() {
    let pg0_primary = || after(&[vec![primary(1, 0), replica(1, None)]]);
    let pg1_primary = || after(&[vec![replica(1, None), primary(1, 0)]]);
    let view = super::ClusterView::new(after(&[vec![down(), down()]]));
    view.store(pg0_primary());
    assert_eq!(view.primary_changes(), 0, "the first primary seen is no change");
    view.store(after(&[vec![down(), replica(1, None)]]));
    view.store(pg0_primary());
    assert_eq!(view.primary_changes(), 0, "the same primary back after an outage is no change");
    view.store(after(&[vec![down(), replica(1, None)]]));
    view.store(pg1_primary());
    view.store(pg1_primary());
    assert_eq!(view.primary_changes(), 1, "pg0 -> (none) -> pg1");
    view.store(pg0_primary());
    assert_eq!(view.primary_changes(), 2, "and back");
    let excluded = view.load().excluded_replicas();
    assert_eq!(excluded, None, "every replica is in the read set");
}

#[tokio::test]
async fn waiters_wake_on_a_new_primary_or_give_up_at_the_deadline() {
    use super::{ClusterView, Wait};
    use std::sync::Arc;
    use tokio::time::Instant;

    let no_primary = || after(&[vec![down(), replica(1, None)]]);
    let decide = |t: &Arc<Topology>| match (t.primary, t.split_brain) {
        (Some(p), _) => Ok(p),
        (None, false) => Err(Wait::Retry(t.no_primary_reason.clone().unwrap_or_default())),
        (None, true) => Err(Wait::Fail("split".to_owned())),
    };
    let view = Arc::new(ClusterView::new(no_primary()));
    let publisher = view.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        publisher.store(after(&[vec![down(), primary(2, 0)]]));
    });
    let started = Instant::now();
    assert_eq!(view.wait_for(started + Duration::from_secs(5), decide).await, Ok(1));
    assert!(started.elapsed() < Duration::from_secs(5));

    let view = ClusterView::new(no_primary());
    let got = view.wait_for(Instant::now() + Duration::from_millis(50), decide).await;
    assert_eq!(got, Err("pg0 unreachable (connection refused), pg1 in recovery".to_owned()));

    let view = ClusterView::new(after(&[vec![primary(1, 0), primary(1, 0)]]));
    assert_eq!(view.wait_for(Instant::now() + Duration::from_secs(60), decide).await, Err("split".to_owned()));
}

/// `GET /cluster` as Patroni 3.0 answers it (trimmed: xlog and timeline details).
const CLUSTER_BODY: &str = r#"{"members": [
  {"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni",
   "host": "127.0.0.1", "port": 6000, "timeline": 2},
  {"name": "pg1", "role": "replica", "state": "streaming", "api_url": "http://127.0.0.1:8009/patroni",
   "host": "127.0.0.1", "port": 6001, "timeline": 2, "lag": 0, "tags": {"noloadbalance": true}},
  {"name": "node-c", "role": "replica", "state": "running", "api_url": "http://127.0.0.1:8010/patroni",
   "host": "127.0.0.1", "port": 6002, "timeline": 2, "lag": "unknown", "tags": {"nofailover": "true"}}
], "scope": "demo"}"#;

fn patroni_nodes() -> Vec<(String, String, u16)> {
    names(3).into_iter().enumerate().map(|(i, n)| (n, "127.0.0.1".to_owned(), 6000 + i as u16)).collect()
}

#[test]
fn reads_patroni_cluster_bodies() {
    use super::patroni::{parse_cluster, PatroniView};
    let view = parse_cluster(CLUSTER_BODY.as_bytes(), &patroni_nodes()).expect("parses");
    let want = PatroniView {
        leader: Some(0),
        no_leader_reason: None,
        noloadbalance: vec![false, true, false],
        nofailover: vec![false, false, true],
    };
    assert_eq!(view, want, "node-c is matched by host and port");

    let switched = CLUSTER_BODY.replacen("\"leader\"", "\"replica\"", 1).replacen(
        "\"replica\", \"state\": \"streaming\"",
        "\"leader\", \"state\": \"running\"",
        1,
    );
    assert_eq!(parse_cluster(switched.as_bytes(), &patroni_nodes()).expect("parses").leader, Some(1));
    let leaderless = CLUSTER_BODY.replacen("\"leader\"", "\"replica\"", 1);
    let view = parse_cluster(leaderless.as_bytes(), &patroni_nodes()).expect("parses");
    assert_eq!((view.leader, view.no_leader_reason.as_deref()), (None, Some("Patroni reports no leader")));
    let stranger = CLUSTER_BODY.replacen("\"name\": \"pg0\"", "\"name\": \"other\"", 1).replacen("6000", "7000", 1);
    let view = parse_cluster(stranger.as_bytes(), &patroni_nodes()).expect("parses");
    assert_eq!(
        view.no_leader_reason.as_deref(),
        Some("the Patroni leader \"other\" is not one of the configured [[nodes]]")
    );
    assert!(parse_cluster(b"<html>", &patroni_nodes()).is_err());
}

#[test]
fn patroni_leader_decides_the_primary() {
    use super::patroni::parse_cluster;
    let view = parse_cluster(CLUSTER_BODY.as_bytes(), &patroni_nodes()).expect("parses");
    let n = names(3);
    let cases: Vec<(Vec<Observation>, Election)> = vec![
        (vec![primary(1, 0), replica(1, None), replica(1, None)], Election::Primary(0)),
        // Another node out of recovery is not a split brain: the leader key decides.
        (vec![primary(1, 0), primary(1, 0), replica(1, None)], Election::Primary(0)),
        (
            vec![replica(1, None), primary(1, 0), replica(1, None)],
            Election::NoPrimary("pg0 is the Patroni leader but still in recovery".into()),
        ),
        (
            vec![down(), primary(1, 0), replica(1, None)],
            Election::NoPrimary("pg0 is the Patroni leader but unreachable (connection refused)".into()),
        ),
    ];
    for (observations, want) in cases {
        assert_eq!(elect_leader(&n, &observations, Some(&view), None), want, "{observations:?}");
    }
    let none = elect_leader(&n, &[down(), down(), down()], None, Some("refused"));
    assert_eq!(none, Election::NoPrimary("no answer from the Patroni REST API yet (refused)".into()));

    // In a topology: noloadbalance keeps pg1 out of the read set; a stale view survives an error.
    let mut state = ClusterState::new(n, RULE, LIMITS).with_patroni();
    for (i, o) in [primary(1, 0), replica(1, None), replica(1, None)].into_iter().enumerate() {
        state.observe(i, o);
    }
    assert!(!state.all_checked(), "Patroni has not answered yet");
    state.observe_patroni(Ok(view));
    state.observe_patroni(Err("timeout".into()));
    assert!(state.all_checked());
    let t = state.topology(&base(3));
    assert_eq!((t.primary, t.read_set.clone()), (Some(0), vec![2]));
    assert_eq!(t.nodes[1].excluded.as_deref(), Some("Patroni tag noloadbalance"));
}

#[tokio::test]
async fn fetches_cluster_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        // Patroni's http.server answers HTTP/1.0 with a Content-Length and closes.
        for status in ["200 OK", "503 Service Unavailable"] {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0; 4096];
            let n = socket.read(&mut request).await.expect("read");
            assert!(
                request[..n].starts_with(b"GET /cluster HTTP/1.1\r\n"),
                "{:?}",
                String::from_utf8_lossy(&request[..n])
            );
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                CLUSTER_BODY.len()
            );
            socket.write_all(head.as_bytes()).await.expect("write");
            socket.write_all(CLUSTER_BODY.as_bytes()).await.expect("write");
        }
    });
    let base = format!("http://{addr}/");
    let body = super::patroni::fetch_cluster(&base, Duration::from_secs(5)).await.expect("fetched");
    assert_eq!(body, CLUSTER_BODY.as_bytes());
    let error = super::patroni::fetch_cluster(&base, Duration::from_secs(5)).await.expect_err("503");
    assert_eq!(error.to_string(), format!("http://{addr}/cluster: HTTP status 503"));
    let error = super::patroni::fetch_cluster("http://127.0.0.1:1", Duration::from_secs(5)).await.expect_err("refused");
    assert!(error.to_string().starts_with("http://127.0.0.1:1/cluster: "), "{error}");
}

#[test]
fn a_reload_keeps_what_is_known_about_unchanged_nodes() {
    let round = vec![primary(100, 10), replica(100, Some(10)), replica(100, Some(10))];
    let known = after(&vec![round; 3]);
    assert_eq!((known.primary, known.read_set.clone()), (Some(0), vec![1, 2]));
    let node = |name: &str, port: u16| crate::config::Node {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        role: None,
        patroni: None,
        server_require_auth: crate::config::RequireAuth::DEFAULT,
        application_name: name.into(),
    };
    // pg1 is removed, pg2 kept, pg3 added; pg0 (the primary) moves to the end.
    let rebased = known.rebased(&[node("pg2", 6002), node("pg3", 6003), node("pg0", 6000)]);
    assert_eq!(rebased.primary, Some(2), "the primary is found under its new position");
    assert_eq!(rebased.read_set, [0], "pg2 keeps serving reads; the new pg3 waits for a check");
    assert_eq!(rebased.nodes[1].excluded.as_deref(), Some("not checked yet"));
    assert_eq!(rebased.nodes[0], known.nodes[2]);
    // A new application_name applies at once (the next monitors match by it).
    let renamed = crate::config::Node { application_name: "member-2".into(), ..node("pg2", 6002) };
    let rebased = known.rebased(&[renamed]);
    assert_eq!((rebased.nodes[0].application_name.as_str(), rebased.read_set.as_slice()), ("member-2", &[0][..]));

    // A node that kept its name but moved is a new node.
    let moved = known.rebased(&[node("pg0", 7000), node("pg2", 6002)]);
    assert_eq!(moved.primary, None);
    assert!(moved.no_primary_reason.is_some());
}

#[test]
fn replicas_take_their_sync_state_from_the_primary_by_application_name() {
    let Observation::Up(mut p) = primary(MB, 100) else { unreachable!() };
    p.synchronous_standby_names = "FIRST 1 (pg2, other)".into();
    // pg1 streams twice (an old walsender not yet gone): the most synchronous counts.
    let standby = |name: &str, sync_state, replayed: u64| Standby {
        application_name: name.into(),
        sync_state,
        positions: StandbyPositions {
            write_lsn: Some(replayed + 20),
            flush_lsn: Some(replayed + 10),
            replay_lsn: Some(replayed),
        },
    };
    p.standbys = vec![
        standby("pg1", SyncState::Async, 1),
        standby("pg2", SyncState::Sync, 2),
        standby("pg1", SyncState::Potential, 3),
        standby("stranger", SyncState::Quorum, 4),
    ];
    let t = after(&[vec![Observation::Up(p.clone()), replica(MB, None), replica(MB, None)]]);
    let states: Vec<SyncState> = t.nodes.iter().map(|n| n.sync_state).collect();
    assert_eq!(states, [SyncState::Unknown, SyncState::Potential, SyncState::Sync]);
    // The positions come from the same row as the sync state.
    let replayed: Vec<Option<u64>> = t.nodes.iter().map(|n| n.streamed.and_then(|s| s.replay_lsn)).collect();
    assert_eq!(replayed, [None, Some(3), Some(2)]);
    assert_eq!(t.nodes[2].streamed.and_then(|s| s.write_lsn), Some(22));
    assert_eq!(t.synchronous_standby_names.as_deref(), Some("FIRST 1 (pg2, other)"));

    // A node matched by its own application_name, not by its name.
    let mut renamed = base(3);
    renamed[1].application_name = "stranger".into();
    let mut state = ClusterState::new(names(3), RULE, LIMITS);
    for (i, o) in [Observation::Up(p), replica(MB, None), down()].into_iter().enumerate() {
        state.observe(i, o);
    }
    let t = state.topology(&renamed);
    let states: Vec<SyncState> = t.nodes.iter().map(|n| n.sync_state).collect();
    assert_eq!(states, [SyncState::Unknown, SyncState::Quorum, SyncState::Unknown], "pg2 is unreachable");

    // Without a primary nobody is synchronous to anything.
    let t = after(&[vec![down(), replica(MB, None), replica(MB, None)]]);
    assert!(t.nodes.iter().all(|n| n.sync_state == SyncState::Unknown));
    assert_eq!(t.synchronous_standby_names, None);
}
