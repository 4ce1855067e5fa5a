use super::*;
use crate::cluster::{NodeStatus, Topology};
use crate::config::Role;

fn topology(roles: &[Option<Role>], read_set: &[usize]) -> Topology {
    let nodes = roles
        .iter()
        .enumerate()
        .map(|(i, role)| NodeStatus {
            name: format!("pg{i}"),
            host: "127.0.0.1".into(),
            port: 6000 + i as u16,
            role: *role,
            lag_bytes: None,
            lag: None,
            excluded: None,
        })
        .collect::<Vec<_>>();
    let primary = roles.iter().position(|r| *r == Some(Role::Primary));
    Topology {
        nodes,
        primary,
        read_set: read_set.to_vec(),
        no_primary_reason: primary.is_none().then(|| "down".into()),
        split_brain: false,
    }
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
        let got = route(RouteInput { listener: *listener, tick: *tick }, *fallback, topology);
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
    let ro = RouteInput { listener: ListenerKind::ReadOnly, tick: 0 };
    let rw = RouteInput { listener: ListenerKind::ReadWrite, tick: 0 };
    type Case<'a> = (&'a Topology, RouteInput, RoFallback, Result<usize, RouteError>);
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
