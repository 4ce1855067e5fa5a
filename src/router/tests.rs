use super::*;
use crate::cluster::{NodeStatus, SyncState, Topology};
use crate::config::{Prefer, Role};

fn topology(roles: &[Option<Role>], read_set: &[usize]) -> Topology {
    Topology::with_roles(roles, roles.iter().position(|r| *r == Some(Role::Primary)), read_set)
}

#[test]
fn routes_by_listener() {
    let p = Some(Role::Primary);
    let r = Some(Role::Replica);
    let t = topology(&[p, r, r], &[1, 2]);
    let t_no_replica = topology(&[p, r, r], &[]);
    let t_no_primary = topology(&[None, r, r], &[1, 2]);
    type Case<'a> = (&'a Topology, ListenerKind, usize, RoFallback, Result<usize, &'a str>);
    let cases: &[Case] = &[
        (&t, ListenerKind::ReadWrite, 0, RoFallback::Primary, Ok(0)),
        (&t, ListenerKind::ReadWrite, 7, RoFallback::Error, Ok(0)),
        (&t, ListenerKind::ReadOnly, 0, RoFallback::Primary, Ok(1)),
        (&t, ListenerKind::ReadOnly, 1, RoFallback::Primary, Ok(2)),
        (&t, ListenerKind::ReadOnly, 2, RoFallback::Primary, Ok(1)),
        (&t_no_replica, ListenerKind::ReadOnly, 0, RoFallback::Primary, Ok(0)),
        (&t_no_replica, ListenerKind::ReadOnly, 0, RoFallback::Error, Err("no replica")),
        (&t_no_primary, ListenerKind::ReadWrite, 0, RoFallback::Primary, Err("no primary available: down")),
        (&t_no_primary, ListenerKind::ReadOnly, 3, RoFallback::Primary, Ok(2)),
    ];
    for (topology, listener, tick, fallback, expected) in cases {
        let got = route(
            RouteInput { listener: *listener, turn: *tick, load: NO_LOAD, prefer: Prefer::Any },
            *fallback,
            topology,
        );
        match (expected, got) {
            (Ok(want), Ok(node)) => assert_eq!(*want, node, "{listener:?} tick {tick}"),
            (Err(want), Err(e)) => assert!(e.to_string().contains(want), "{e}"),
            (want, got) => panic!("{listener:?} tick {tick}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn explains_refusals() {
    let r = Some(Role::Replica);
    let mut lagging = topology(&[Some(Role::Primary), r, r], &[]);
    lagging.nodes[1].excluded = Some("lag 5000 bytes > max_replica_lag_bytes (1024 bytes)".into());
    lagging.nodes[2].excluded = Some("unreachable (connection refused)".into());
    let mut split = topology(&[Some(Role::Primary), Some(Role::Primary), r], &[2]);
    split.primary = None;
    split.split_brain = true;
    split.no_primary_reason = Some("split brain: pg0 and pg1".into());
    let ro = RouteInput { listener: ListenerKind::ReadOnly, turn: 0, load: NO_LOAD, prefer: Prefer::Any };
    let rw = RouteInput { listener: ListenerKind::ReadWrite, turn: 0, load: NO_LOAD, prefer: Prefer::Any };
    type Case<'a> = (&'a Topology, RouteInput<'a>, RoFallback, Result<usize, RouteError>);
    let cases: &[Case] = &[
        (
            &lagging,
            ro,
            RoFallback::Error,
            Err(RouteError::NoReplica(
                "pg1: lag 5000 bytes > max_replica_lag_bytes (1024 bytes); pg2: unreachable (connection refused) \
                 (ro_fallback = \"error\")"
                    .into(),
            )),
        ),
        (&lagging, ro, RoFallback::Primary, Ok(0)),
        (&split, rw, RoFallback::Primary, Err(RouteError::SplitBrain("split brain: pg0 and pg1".into()))),
        (&split, ro, RoFallback::Error, Ok(2)),
    ];
    for (topology, input, fallback, expected) in cases {
        assert_eq!(&route(*input, *fallback, topology), expected, "{input:?} {fallback:?}");
    }
    let message = route(rw, RoFallback::Primary, &split).expect_err("split brain").to_string();
    assert_eq!(message, "no primary available: split brain: pg0 and pg1");
}

#[test]
fn reads_go_to_the_least_busy_replica_and_take_turns_among_equals() {
    let r = Some(Role::Replica);
    let t = topology(&[Some(Role::Primary), r, r, r], &[1, 2, 3]);
    let read = |turn, load: &(dyn Fn(&NodeStatus) -> usize + Sync)| {
        route(RouteInput { listener: ListenerKind::ReadOnly, turn, load, prefer: Prefer::Any }, RoFallback::Primary, &t)
            .unwrap()
    };
    // Equal loads: the turn decides, so a client's reads go round.
    let picks: Vec<usize> = (7..13).map(|turn| read(turn, NO_LOAD)).collect();
    assert_eq!(picks, [2, 3, 1, 2, 3, 1]);
    // pg2 is busiest, pg1 and pg3 are equal: pg3 from turn 2, else pg1 first.
    let loads = |n: &NodeStatus| match n.name.as_str() {
        "pg2" => 5,
        _ => 1,
    };
    assert_eq!(read(2, &loads), 3);
    assert_eq!(read(0, &loads), 1);
    assert_eq!(read(1, &loads), 3, "from pg2 on, pg3 is the first of the least busy");
    // One idle replica wins whatever the turn.
    let idle_pg3 = |n: &NodeStatus| usize::from(n.name != "pg3") * 4;
    assert!((0..6).all(|turn| read(turn, &idle_pg3) == 3));
    // The primary is never a read target while replicas are in the read set,
    // however busy they are.
    assert!((0..6).all(|turn| read(turn, &|_| 1000) != 0));
}

#[test]
fn prefer_narrows_reads_to_sync_or_async_standbys_and_falls_back_to_the_rest() {
    let r = Some(Role::Replica);
    let mut t = topology(&[Some(Role::Primary), r, r, r], &[1, 2, 3]);
    t.nodes[1].sync_state = SyncState::Sync;
    t.nodes[2].sync_state = SyncState::Async;
    t.nodes[3].sync_state = SyncState::Potential;
    let picks = |t: &Topology, prefer| -> Vec<usize> {
        (0..6)
            .map(|turn| {
                let input = RouteInput { listener: ListenerKind::ReadOnly, turn, load: NO_LOAD, prefer };
                route(input, RoFallback::Primary, t).unwrap()
            })
            .collect()
    };
    assert_eq!(picks(&t, Prefer::Any), [1, 2, 3, 1, 2, 3]);
    assert_eq!(picks(&t, Prefer::Sync), [1; 6]);
    assert_eq!(picks(&t, Prefer::Async), [2, 3, 2, 3, 2, 3], "async and potential take turns");
    // Quorum standbys are synchronous too.
    t.nodes[3].sync_state = SyncState::Quorum;
    assert_eq!(picks(&t, Prefer::Sync), [1, 3, 1, 3, 1, 3]);
    assert_eq!(picks(&t, Prefer::Async), [2; 6]);
    // The sync standby out of the read set (lagging): the others serve, not the primary.
    t.read_set = vec![2];
    assert_eq!(picks(&t, Prefer::Sync), [2; 6]);
    // Nothing known (no privilege, or no primary): every replica alike.
    let mut unknown = topology(&[Some(Role::Primary), r, r], &[1, 2]);
    unknown.nodes[1].sync_state = SyncState::Unknown;
    assert_eq!(picks(&unknown, Prefer::Async), [1, 2, 1, 2, 1, 2]);
    // Load still decides among the preferred.
    t.read_set = vec![1, 2, 3];
    let busy_pg1 = |n: &NodeStatus| usize::from(n.name == "pg1") * 3;
    let input = RouteInput { listener: ListenerKind::ReadOnly, turn: 0, load: &busy_pg1, prefer: Prefer::Sync };
    assert_eq!(route(input, RoFallback::Primary, &t), Ok(3));
}

#[test]
fn reads_at_a_position_go_where_it_was_replayed() {
    let (p, r) = (Some(Role::Primary), Some(Role::Replica));
    let with_lsns = |lsns: [Option<u64>; 3], read_set: &[usize]| {
        let mut t = topology(&[p, r, r], read_set);
        for (node, lsn) in t.nodes.iter_mut().zip(lsns) {
            node.wal_lsn = lsn;
        }
        t
    };
    let busy_pg2: &(dyn Fn(&NodeStatus) -> usize + Sync) = &|n| usize::from(n.name == "pg2") * 3;
    type Case<'a> = (Topology, u64, usize, &'a (dyn Fn(&NodeStatus) -> usize + Sync), LsnRead);
    let cases: Vec<Case> = vec![
        // Both far enough: the least busy, the first of equals from the turn.
        (with_lsns([Some(900), Some(500), Some(600)], &[1, 2]), 500, 0, NO_LOAD, LsnRead::CaughtUp(1)),
        (with_lsns([Some(900), Some(500), Some(600)], &[1, 2]), 500, 1, NO_LOAD, LsnRead::CaughtUp(2)),
        (with_lsns([Some(900), Some(500), Some(600)], &[1, 2]), 500, 1, busy_pg2, LsnRead::CaughtUp(1)),
        // Only pg2 is, however busy.
        (with_lsns([Some(900), Some(400), Some(600)], &[1, 2]), 500, 0, busy_pg2, LsnRead::CaughtUp(2)),
        // Neither: the one furthest along is checked, the least busy of equals.
        (with_lsns([Some(900), Some(400), Some(450)], &[1, 2]), 500, 0, NO_LOAD, LsnRead::Check(2)),
        (with_lsns([Some(900), None, None], &[1, 2]), 500, 0, busy_pg2, LsnRead::Check(1)),
        // pg2 out of the read set is never chosen, however far along.
        (with_lsns([Some(900), Some(400), Some(800)], &[1]), 500, 0, NO_LOAD, LsnRead::Check(1)),
        (with_lsns([Some(900), Some(400), Some(800)], &[]), 500, 0, NO_LOAD, LsnRead::NoReplica),
    ];
    for (i, (topology, min_lsn, turn, load, expected)) in cases.into_iter().enumerate() {
        let input = RouteInput { listener: ListenerKind::ReadOnly, turn, load, prefer: Prefer::Any };
        assert_eq!(route_at_lsn(input, min_lsn, &topology), expected, "case {i}");
    }
    let wait = std::time::Duration::from_millis(300);
    assert_eq!(after_lsn_wait(RoFallback::Primary, 5, wait), Ok(ListenerKind::ReadWrite));
    let refused = after_lsn_wait(RoFallback::Error, (1 << 32) | 0xA0, wait).expect_err("ro_fallback = error");
    assert!(refused.to_string().contains("up to 1/A0 within read_your_writes_wait (300ms)"), "{refused}");
}

#[test]
fn a_read_at_a_position_prefers_the_preferred_among_the_replicas_far_enough() {
    let r = Some(Role::Replica);
    let mut t = topology(&[Some(Role::Primary), r, r], &[1, 2]);
    t.nodes[1].wal_lsn = Some(600);
    t.nodes[2].wal_lsn = Some(600);
    t.nodes[2].sync_state = SyncState::Sync;
    let at = |turn, prefer, t: &Topology| {
        let input = RouteInput { listener: ListenerKind::ReadOnly, turn, load: NO_LOAD, prefer };
        route_at_lsn(input, 500, t)
    };
    assert_eq!((at(0, Prefer::Any, &t), at(1, Prefer::Any, &t)), (LsnRead::CaughtUp(1), LsnRead::CaughtUp(2)));
    assert_eq!((at(0, Prefer::Sync, &t), at(1, Prefer::Sync, &t)), (LsnRead::CaughtUp(2), LsnRead::CaughtUp(2)));
    // Only the async one far enough: it serves, preference or not.
    t.nodes[2].wal_lsn = Some(400);
    assert_eq!(at(1, Prefer::Sync, &t), LsnRead::CaughtUp(1));
}
