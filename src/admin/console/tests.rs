use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::command::{parse, Command, ParseError, Show};
use super::settings;
use super::show::{self, ClientSample, PoolSample, StatsSample};
use crate::app::{ClientState, StopMode};
use crate::config::{Config, PoolMode};
use crate::metrics::periods::Figures;

#[test]
fn commands_parse_case_insensitively_with_trailing_semicolons() {
    let cases: &[(&str, Result<Command, ParseError>)] = &[
        ("SHOW POOLS", Ok(Command::Show(Show::Pools))),
        ("show pools;", Ok(Command::Show(Show::Pools))),
        ("  Show   Stats ; ; \n", Ok(Command::Show(Show::Stats))),
        ("SHOW stats_totals", Ok(Command::Show(Show::StatsTotals))),
        ("show nodes", Ok(Command::Show(Show::Nodes))),
        ("SHOW HELP", Ok(Command::Help)),
        ("", Ok(Command::Empty)),
        (";", Ok(Command::Empty)),
        ("pause", Ok(Command::Pause)),
        ("RESUME;", Ok(Command::Resume)),
        ("PAUSE MyDb", Ok(Command::PerDatabase { command: "PAUSE", database: "MyDb".into() })),
        ("resume app", Ok(Command::PerDatabase { command: "RESUME", database: "app".into() })),
        ("reload", Ok(Command::Reload)),
        ("SHUTDOWN", Ok(Command::Shutdown(StopMode::Immediate))),
        ("shutdown wait_for_servers", Ok(Command::Shutdown(StopMode::WaitForServers))),
        ("SHUTDOWN WAIT_FOR_CLIENTS;", Ok(Command::Shutdown(StopMode::WaitForClients))),
        ("SHOW POOLS; SHOW STATS", Err(ParseError::MoreThanOne)),
        ("SHOW FOO", Err(ParseError::Unknown("SHOW FOO".into()))),
        ("select 1", Err(ParseError::Unknown("select 1".into()))),
        ("SHUTDOWN NOW", Err(ParseError::Unknown("SHUTDOWN NOW".into()))),
    ];
    for (query, expected) in cases {
        assert_eq!(&parse(query), expected, "{query:?}");
    }
}

#[test]
fn only_controls_need_admin_rights() {
    assert_eq!(parse("SHOW CONFIG").map(|c| c.control_name()), Ok(None));
    assert_eq!(parse("PAUSE").map(|c| c.control_name()), Ok(Some("PAUSE")));
    assert_eq!(parse("PAUSE app").map(|c| c.control_name()), Ok(Some("PAUSE")));
    assert_eq!(parse("SHUTDOWN WAIT_FOR_CLIENTS").map(|c| c.control_name()), Ok(Some("SHUTDOWN WAIT_FOR_CLIENTS")));
    let unknown = parse("FLY").expect_err("unknown").to_string();
    assert!(unknown.contains("SHOW POOLS|STATS") && unknown.contains("RELOAD"), "{unknown}");
}

fn pool(database: &str, user: &str, idle: usize, in_use: usize) -> PoolSample {
    PoolSample {
        database: database.into(),
        user: user.into(),
        mode: PoolMode::Transaction,
        idle,
        due_check: 0,
        in_use,
        logging_in: 0,
        testing: 0,
        being_canceled: 0,
    }
}

fn client(database: &str, user: &str, state: ClientState, since: Instant) -> ClientSample {
    ClientSample { database: database.into(), user: user.into(), state, since, server: None }
}

#[test]
fn pools_are_one_row_per_database_and_user_over_every_node() {
    let now = Instant::now();
    // Of the second pool's 5 slots in use: 1 logging in, 1 being reset, 1 held
    // for a cancel; of its 2 idle connections, 1 is due a check.
    let busy = PoolSample { logging_in: 1, testing: 1, being_canceled: 1, due_check: 1, ..pool("app", "alice", 2, 5) };
    let pools = [pool("app", "alice", 2, 1), busy, pool("app", "bob", 0, 0)];
    // The active client's server connection has a cancel being forwarded to it.
    let server: SocketAddr = "127.0.0.1:5432".parse().expect("addr");
    let cancels = [(server, 77), (server, 78)];
    let clients = [
        ClientSample { server: Some((server, 77)), ..client("app", "alice", ClientState::Active, now) },
        client("app", "alice", ClientState::Waiting, now - Duration::from_micros(2_500_123)),
        client("app", "alice", ClientState::Waiting, now - Duration::from_millis(10)),
        client("app", "alice", ClientState::Idle, now),
        client("other", "carol", ClientState::Waiting, now),
    ];
    let table = show::pools_table(&pools, &clients, &cancels, PoolMode::Session, now);
    assert_eq!(table.names(), show::POOLS.map(|(name, _)| name));
    let rows: Vec<Vec<&str>> =
        table.rows.iter().map(|r| r.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect()).collect();
    assert_eq!(
        rows,
        [
            ["app", "alice", "1", "2", "1", "0", "3", "1", "1", "3", "1", "1", "1", "2", "500123", "transaction"],
            ["app", "bob", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "transaction"],
            // No pool yet: the configured mode.
            ["other", "carol", "0", "1", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "session"],
        ]
    );
}

#[test]
fn stats_have_totals_then_averages_in_pgbouncer_order() {
    let totals = Figures {
        xact_count: 7,
        query_count: 9,
        bytes_received: 100,
        bytes_sent: 200,
        xact_time: 1234,
        query_time: 987,
        wait_time: 56,
    };
    let averages = Figures {
        xact_count: 1,
        query_count: 2,
        bytes_received: 3,
        bytes_sent: 4,
        xact_time: 5,
        query_time: 6,
        wait_time: 7,
    };
    let stats = [("app".to_owned(), StatsSample { totals, averages })].into_iter().collect();
    let table = show::stats_table(&stats);
    assert_eq!(table.names(), show::STATS.map(|(name, _)| name));
    let row: Vec<&str> = table.rows[0].iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
    assert_eq!(row, ["app", "7", "9", "100", "200", "1234", "987", "56", "1", "2", "3", "4", "5", "6", "7"]);
    let totals = show::stats_totals_table(&stats);
    assert_eq!(totals.names(), show::STATS_PARTS.map(|(name, _)| name));
    assert_eq!(totals.rows[0].iter().map(|v| v.as_deref().unwrap_or("")).collect::<Vec<_>>()[1..], row[1..8]);
    let averages = show::stats_averages_table(&stats);
    assert_eq!(averages.rows[0].iter().map(|v| v.as_deref().unwrap_or("")).collect::<Vec<_>>()[1..], row[8..]);
}

fn config(extra: &str) -> Config {
    Config::parse(&format!(
        "[[nodes]]\nname = \"pg0\"\nhost = \"db\"\n\n[[users]]\nname = \"u\"\npassword = \"secret-pw\"\n\n\
         [[databases]]\nname = \"d\"\n\n{extra}"
    ))
    .expect("valid config")
}

#[test]
fn config_lists_every_setting_with_its_default_and_no_password() {
    let config = config("[pool]\ndefault_pool_size = 7\nserver_idle_timeout = \"off\"\n\n[cluster]\npassword = \"cluster-pw\"\n\n[admin]\nadmin_users = [\"u\", \"v\"]\n");
    let table = settings::config_table(&config);
    assert_eq!(table.names(), ["key", "value", "default", "changeable"]);
    let find = |key: &str| {
        let row = table.rows.iter().find(|r| r[0].as_deref() == Some(key)).unwrap_or_else(|| panic!("{key}"));
        row.iter().map(|v| v.clone().unwrap_or_default()).collect::<Vec<_>>()
    };
    assert_eq!(find("pool.default_pool_size"), ["pool.default_pool_size", "7", "20", "yes"]);
    assert_eq!(find("pool.server_idle_timeout"), ["pool.server_idle_timeout", "off", "10m", "yes"]);
    assert_eq!(find("pool.max_message_size"), ["pool.max_message_size", "16MB", "16MB", "yes"]);
    assert_eq!(find("pool.query_wait_timeout")[1], "30s");
    assert_eq!(find("listen.rw")[3], "no");
    assert_eq!(find("admin.admin_users")[1], "u,v");
    assert_eq!(find("cluster.server_require_auth")[1..3], ["scram-sha-256,none", "scram-sha-256,none"]);
    assert_eq!(find("cluster.server_scram_max_iterations")[2], "100000");
    assert_eq!(find("tls.server_tls_sslmode")[1..3], ["prefer", "prefer"]);
    assert_eq!(find("tls.server_tls_protocols")[1], "tlsv1.2,tlsv1.3");
    assert_eq!(find("tls.client_tls_sslmode")[1..3], ["disable", "disable"]);
    assert_eq!(find("tls.client_tls_cert_file")[1], "");
    assert_eq!(find("auth.auth_user")[1..3], ["", ""]);
    assert_eq!(find("admin.stats_period")[1..], ["1m", "1m", "yes"]);
    // Again under PgBouncer's names, in its format (what pgbouncer_exporter looks up).
    assert_eq!(find("max_client_conn"), ["max_client_conn", "1000", "1000", "yes"]);
    assert_eq!(find("default_pool_size")[1..3], ["7", "20"]);
    assert_eq!(find("pool_mode")[1], "transaction");
    assert_eq!(find("query_wait_timeout")[1..3], ["30", "30"]);
    assert_eq!(find("server_idle_timeout")[1..3], ["0", "600"], "off is 0");
    assert_eq!(find("stats_period")[1..3], ["60", "60"]);
    assert!(table.rows.iter().all(|r| r[0].as_deref() != Some("workers")), "not a PgBouncer key");
    let everything = format!("{:?}", table.rows);
    assert!(!everything.contains("secret-pw") && !everything.contains("cluster-pw"), "{everything}");
    assert!(!everything.contains("password"), "{everything}");
}

#[test]
fn config_lists_users_from_the_database_without_their_password() {
    let config = config("[auth]\nauth_user = \"lookup\"\nauth_password = \"auth-pw\"\nauth_cache_ttl = \"5s\"\n\n[tls]\nserver_tls_sslmode = \"disable\"\n");
    let table = settings::config_table(&config);
    let value = |key: &str| {
        let row = table.rows.iter().find(|r| r[0].as_deref() == Some(key)).unwrap_or_else(|| panic!("{key}"));
        row[1].clone().unwrap_or_default()
    };
    assert_eq!(value("auth.auth_user"), "lookup");
    assert_eq!(value("auth.auth_dbname"), "postgres");
    assert_eq!(value("auth.auth_type"), "scram-sha-256");
    assert_eq!(value("auth.auth_cache_ttl"), "5s");
    assert_eq!(value("auth.auth_query_rate"), "50");
    assert_eq!(value("tls.server_tls_sslmode"), "disable");
    let everything = format!("{:?}", table.rows);
    assert!(!everything.contains("auth-pw"), "{everything}");
}

#[test]
fn nodes_show_roles_lag_and_exclusions() {
    let config = config("");
    let mut topology = crate::cluster::Topology::unchecked(&config);
    let table = settings::nodes_table(&topology);
    let row: Vec<&str> = table.rows[0].iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
    let unchecked = ["pg0", "db", "5432", "unknown", "f", "NULL", "NULL", "f", "not checked yet", "NULL", "pg0"];
    assert_eq!(row, [&unchecked[..], &["NULL"; 4]].concat());
    topology.nodes[0].role = Some(crate::config::Role::Replica);
    topology.nodes[0].lag_bytes = Some(42);
    topology.nodes[0].lag = Some(Duration::from_millis(1500));
    topology.nodes[0].excluded = None;
    topology.nodes[0].sync_state = crate::cluster::SyncState::Quorum;
    topology.nodes[0].wal_lsn = Some((1 << 32) | 0x100);
    topology.nodes[0].streamed = Some(crate::cluster::StandbyPositions {
        write_lsn: Some((1 << 32) | 0x300),
        flush_lsn: Some((1 << 32) | 0x200),
        replay_lsn: None,
    });
    topology.read_set = vec![0];
    let table = settings::nodes_table(&topology);
    let row: Vec<&str> = table.rows[0].iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
    let replica = ["pg0", "db", "5432", "replica", "t", "42", "1.500", "t", "NULL", "quorum", "pg0"];
    assert_eq!(row, [&replica[..], &["1/100", "1/300", "1/200", "NULL"]].concat());
}

#[test]
fn a_table_encodes_as_row_description_data_rows_and_show() {
    use super::table::{num, ColumnType, Table};
    let mut table = Table::new(&[("a", ColumnType::Text), ("b", ColumnType::Int4)]);
    table.push(vec![None, num(5)]);
    let mut out = bytes::BytesMut::new();
    table.encode(&mut out);
    let mut tags = Vec::new();
    let mut rest = out.clone();
    while let Ok(Some(message)) = crate::wire::split_message(&mut rest, 1024) {
        tags.push(message[0]);
    }
    assert_eq!(tags, b"TDC");
    // The DataRow: 2 columns, NULL (-1), then "5".
    let data_row = &out[out.len() - 26..out.len() - 10];
    assert_eq!(data_row, [b'D', 0, 0, 0, 15, 0, 2, 255, 255, 255, 255, 0, 0, 0, 1, b'5']);
}
