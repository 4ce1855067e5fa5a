//! Config parsing: the shipped example, defaults, value syntaxes and
//! environment overrides. Error messages are tested in `tests/errors.rs`.

mod errors;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use super::raw::{self, keys_of, RawConfig, LISTS, TABLES};
use super::units::{listeners_collide, parse_duration, parse_size};
use super::*;

const EXAMPLE: &str = include_str!("../../config/pgrelay.toml");

/// A node as the default `source = "postgres"` wants it: no role.
const NODE: &str = "[[nodes]]\nname = \"pg0\"\nport = 6432\n";
/// Roles are only allowed with this `[cluster]` section.
const STATIC: &str = "[cluster]\nsource = \"static\"\n";
/// The primary of a `source = "static"` config.
const STATIC_NODE: &str = "[[nodes]]\nname = \"pg0\"\nport = 6432\nrole = \"primary\"\n";
const USER: &str = "[[users]]\nname = \"app\"\npassword = \"app\"\n";
const DATABASE: &str = "[[databases]]\nname = \"app\"\n";

/// A config made of `parts`, one after another.
fn with(parts: &[&str]) -> String {
    parts.join("\n")
}

/// The smallest valid config: no `[cluster]`, so `source = "postgres"`.
fn minimal() -> String {
    with(&[NODE, USER, DATABASE])
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
    Config::parse_with_env(text, env(vars)).map_err(|e| e.to_string())
}

#[test]
fn example_file_parses() {
    let config = Config::parse(EXAMPLE).unwrap_or_else(|e| panic!("config/pgrelay.toml: {e}"));
    assert_eq!(config.listen.rw, addr("0.0.0.0:5432"));
    assert_eq!(config.cluster.source, Source::Postgres);
    let node = |name: &str, port| Node {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        role: None,
        patroni: None,
        server_require_auth: RequireAuth::DEFAULT,
        application_name: name.into(),
    };
    assert_eq!(config.nodes, [node("pg0", 6432), node("pg1", 6433), node("pg2", 6434)]);
    assert_eq!(config.users[0].name, "app");
    assert_eq!(config.users[0].password.as_deref(), Some("app"));
    assert_eq!(config.users[0].auth_type, AuthType::ScramSha256);
    assert_eq!(config.databases[0].server_dbname, "app");
}

#[test]
fn example_file_sets_every_key_to_its_default() {
    let example = Config::parse(EXAMPLE).expect("example parses");
    let defaults = Config::parse(&with(&[&EXAMPLE[EXAMPLE.find("\n[[nodes]]\n").expect("nodes")..]])).expect("parses");
    assert_eq!((&example.listen, &example.pool), (&defaults.listen, &defaults.pool));
    assert_eq!((&example.routing, &example.cluster), (&defaults.routing, &defaults.cluster));
}

#[test]
fn example_file_documents_every_key() {
    for section in TABLES.iter().chain(&LISTS) {
        for key in raw::keys(section).expect("known section") {
            let documented =
                EXAMPLE.lines().any(|line| line.trim_start_matches(['#', ' ']).starts_with(&format!("{key} =")));
            assert!(documented, "config/pgrelay.toml does not document [{section}] {key}");
        }
    }
}

#[test]
fn section_lists_match_the_raw_types() {
    let sections: BTreeSet<&str> = TABLES.iter().chain(&LISTS).copied().collect();
    assert_eq!(sections, keys_of::<RawConfig>().iter().copied().collect());
    assert!(keys_of::<raw::RawPool>().contains(&"default_pool_size"));
    assert!(raw::keys("nosuch").is_none());
}

#[test]
fn defaults_from_a_minimal_file() {
    let config = Config::parse(&minimal()).expect("minimal config parses");
    assert_eq!(
        config.listen,
        Listen {
            rw: addr("0.0.0.0:5432"),
            ro: addr("0.0.0.0:5433"),
            http: addr("0.0.0.0:9930"),
            http_header_timeout: Duration::from_secs(10),
        }
    );
    let pool = Pool {
        mode: PoolMode::Transaction,
        default_pool_size: NonZeroUsize::new(20).expect("20"),
        max_client_conn: 1000,
        max_pre_auth_conn: 256,
        max_pre_auth_conn_per_addr: 64,
        query_wait_timeout: Duration::from_secs(30),
        server_connect_timeout: Duration::from_secs(5),
        server_reset_timeout: Duration::from_secs(5),
        server_idle_timeout: Some(Duration::from_secs(600)),
        server_lifetime: Some(Duration::from_secs(3600)),
        server_check_delay: Duration::from_secs(30),
        min_pool_size: 0,
        reserve_pool_size: 0,
        reserve_pool_timeout: Some(Duration::from_secs(5)),
        max_db_connections: 0,
        max_user_connections: 0,
        client_login_timeout: Duration::from_secs(15),
        max_message_size: 16 << 20,
        session_state: SessionStatePolicy::Pin,
        max_prepared_statements: 200,
        max_client_prepared_statements: 1000,
        shutdown_grace: Duration::from_secs(30),
        workers: super::default_workers(),
        tcp: TcpOptions { keepalive: Some(Keepalive::default()), user_timeout: None },
        application_name_add_host: false,
        client_timeouts: ClientTimeouts { client_idle: None, idle_transaction: None, query: None },
    };
    assert_eq!(config.pool, pool);
    assert_eq!(config.admin, Admin::default());
    let routing = Routing {
        max_replica_lag_bytes: 16 << 20,
        max_replica_lag: Duration::from_secs(10),
        ro_fallback: RoFallback::Primary,
        prefer: Prefer::Any,
        read_your_writes_wait: Duration::from_millis(300),
        causal_expiry: Duration::from_secs(300),
        causal_max_ids: std::num::NonZeroUsize::new(10_000).expect("not zero"),
    };
    assert_eq!(config.routing, routing);
    let cluster = Cluster {
        source: Source::Postgres,
        check_interval: Duration::from_secs(1),
        check_timeout: Duration::from_secs(1),
        leave_after_checks: 2,
        rejoin_after_checks: 2,
        user: "postgres".into(),
        password: String::new(),
        server_require_auth: RequireAuth::DEFAULT,
        server_scram_max_iterations: std::num::NonZeroU32::new(100_000).unwrap(),
    };
    assert_eq!(config.cluster, cluster);
    let node = Node {
        name: "pg0".into(),
        host: "127.0.0.1".into(),
        port: 6432,
        role: None,
        patroni: None,
        server_require_auth: RequireAuth::DEFAULT,
        application_name: "pg0".into(),
    };
    assert_eq!(config.nodes, [node]);
    let user = User {
        name: "app".into(),
        password: Some("app".into()),
        auth_type: AuthType::ScramSha256,
        server_user: None,
        server_password: None,
        server_password_from_cluster: false,
        pool_size: None,
        pool_mode: None,
        max_user_connections: None,
    };
    assert_eq!(config.users, [user]);
    let database = Database {
        name: "app".into(),
        server_dbname: "app".into(),
        pool_size: None,
        pool_mode: None,
        max_db_connections: None,
    };
    assert_eq!(config.databases, [database]);
}

#[test]
fn a_node_may_override_what_servers_may_ask_for() {
    let text = with(&[
        "[cluster]\nserver_require_auth = \"!password\"\nserver_scram_max_iterations = 5000\n",
        NODE,
        "[[nodes]]\nname = \"pg1\"\nport = 6433\nserver_require_auth = \"md5\"\n",
        USER,
        DATABASE,
    ]);
    let config = Config::parse(&text).expect("parses");
    let policy = |node: &str| {
        let p = config.server_auth_policy(node);
        (p.require_auth.to_string(), p.scram_max_iterations.get())
    };
    assert_eq!(policy("pg0"), ("md5,scram-sha-256,none".to_owned(), 5000));
    assert_eq!(policy("pg1"), ("md5".to_owned(), 5000));
    assert_eq!(policy("gone"), policy("pg0"), "a node no longer configured gets [cluster]'s rules");
}

#[test]
fn explicit_values_are_used() {
    let text = with(&[
        "[pool]\nmode = \"session\"\nsession_state = \"refuse\"\nmax_message_size = 65536\n",
        "[routing]\nro_fallback = \"error\"\nmax_replica_lag_bytes = \"1GB\"\nmax_replica_lag = \"250ms\"\n",
        "[cluster]\nsource = \"static\"\n",
        "[[nodes]]\nname = \"a\"\nhost = \"db1\"\nrole = \"primary\"\n",
        "[[nodes]]\nname = \"b\"\nhost = \"db2\"\nrole = \"replica\"\n",
        "[[users]]\nname = \"t\"\nauth_type = \"trust\"\nserver_user = \"u\"\nserver_password = \"p\"\n",
        "[[databases]]\nname = \"app\"\ndbname = \"app_prod\"\npool_size = 3\n",
        "[admin]\nstats_period = \"15s\"\n",
    ]);
    let config = Config::parse(&text).expect("parses");
    assert_eq!(config.admin.stats_period, Duration::from_secs(15));
    assert_eq!((config.pool.mode, config.pool.session_state), (PoolMode::Session, SessionStatePolicy::Refuse));
    assert_eq!(config.pool.max_message_size, 65536);
    assert_eq!(config.routing.ro_fallback, RoFallback::Error);
    assert_eq!(config.routing.max_replica_lag_bytes, 1 << 30);
    assert_eq!(config.routing.max_replica_lag, Duration::from_millis(250));
    assert_eq!(config.cluster.source, Source::Static);
    assert_eq!(config.nodes[0].role, Some(Role::Primary));
    assert_eq!(
        (config.nodes[1].host.as_str(), config.nodes[1].port, config.nodes[1].role),
        ("db2", 5432, Some(Role::Replica))
    );
    assert_eq!(config.users[0].password, None);
    assert_eq!(config.users[0].server_user.as_deref(), Some("u"));
    assert_eq!(config.databases[0].server_dbname, "app_prod");
    assert_eq!(config.databases[0].pool_size, NonZeroUsize::new(3));
}

#[test]
fn server_idle_timeout_off() {
    for (text, expected) in
        [("\"0\"", None), ("\"off\"", None), ("\"0s\"", None), ("\"90s\"", Some(Duration::from_secs(90)))]
    {
        let config = Config::parse(&with(&[&format!("[pool]\nserver_idle_timeout = {text}\n"), &minimal()]));
        assert_eq!(config.expect(text).pool.server_idle_timeout, expected, "{text}");
    }
}

#[test]
fn client_timeouts_are_off_unless_set() {
    let keys = ["client_idle_timeout", "idle_transaction_timeout", "query_timeout"];
    for (i, key) in keys.iter().enumerate() {
        for (text, expected) in [("\"0\"", None), ("\"off\"", None), ("\"250ms\"", Some(Duration::from_millis(250)))] {
            let config = Config::parse(&with(&[&format!("[pool]\n{key} = {text}\n"), &minimal()])).expect(text);
            let timeouts = config.pool.client_timeouts;
            let values = [timeouts.client_idle, timeouts.idle_transaction, timeouts.query];
            for (j, value) in values.iter().enumerate() {
                assert_eq!(*value, if i == j { expected } else { None }, "{key} = {text}");
            }
            assert_eq!(timeouts.any(), expected.is_some());
        }
    }
    let error = Config::parse(&with(&["[pool]\nquery_timeout = 30\n", &minimal()])).expect_err("not a duration");
    assert!(error.0.contains("query_timeout"), "{}", error.0);
}

#[test]
fn size_parsing() {
    let ok = [
        ("8192", 8192),
        ("0", 0),
        ("1B", 1),
        ("512kB", 512 << 10),
        ("512KB", 512 << 10),
        ("512KiB", 512 << 10),
        ("16MB", 16 << 20),
        ("16 MB", 16 << 20),
        ("16MiB", 16 << 20),
        ("1GB", 1 << 30),
        ("2GiB", 2 << 30),
        ("1TB", 1 << 40),
        ("3TiB", 3 << 40),
    ];
    for (text, bytes) in ok {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for text in ["", "MB", "16mb", "16 parsecs", "1.5GB", "-1", "16MBB", "99999999999999999999", "20000000TB"] {
        let error = parse_size(text).expect_err(text);
        assert!(error.contains(&format!("{text:?}")), "{error}");
    }
}

#[test]
fn duration_parsing() {
    let ok = [
        ("5s", Duration::from_secs(5)),
        ("250ms", Duration::from_millis(250)),
        ("10m", Duration::from_secs(600)),
        ("1h 30m", Duration::from_secs(5400)),
    ];
    for (text, duration) in ok {
        assert_eq!(parse_duration(text), Ok(duration), "{text}");
    }
    for text in ["", "5", "5 parsecs", "fast", "-1s"] {
        let error = parse_duration(text).expect_err(text);
        assert!(error.contains("invalid duration") && error.contains("\"30s\""), "{error}");
    }
}

#[test]
fn listener_collisions() {
    let cases = [
        ("127.0.0.1:5432", "127.0.0.1:5432", true),
        ("0.0.0.0:5432", "127.0.0.1:5432", true),
        ("[::]:5432", "127.0.0.1:5432", true),
        ("0.0.0.0:5432", "[::1]:5432", false),
        ("127.0.0.1:5432", "127.0.0.2:5432", false),
        ("127.0.0.1:5432", "127.0.0.1:5433", false),
        ("127.0.0.1:0", "127.0.0.1:0", false),
    ];
    for (a, b, collide) in cases {
        assert_eq!(listeners_collide(addr(a), addr(b)), collide, "{a} {b}");
        assert_eq!(listeners_collide(addr(b), addr(a)), collide, "{b} {a}");
    }
}

#[test]
fn env_overrides_keys() {
    let text = with(&["[pool]\ndefault_pool_size = 7\n", &minimal()]);
    let vars = [
        ("PGRELAY_LISTEN_RW", "127.0.0.1:6000"),
        ("PGRELAY_POOL_DEFAULT_POOL_SIZE", "5"),
        ("PGRELAY_POOL_MAX_MESSAGE_SIZE", "1MB"),
        ("PGRELAY_ROUTING_MAX_REPLICA_LAG_BYTES", "4096"),
        ("PGRELAY_CLUSTER_PASSWORD", "x"),
        ("PGRELAY_LOG", "debug"),
        ("PATH", "/usr/bin"),
    ];
    let config = parse_env(&text, &vars).expect("overrides apply");
    assert_eq!(config.listen.rw, addr("127.0.0.1:6000"));
    assert_eq!(config.pool.default_pool_size.get(), 5, "the environment wins over the file");
    assert_eq!(config.pool.max_message_size, 1 << 20);
    assert_eq!(config.routing.max_replica_lag_bytes, 4096);
    assert_eq!(config.cluster.password, "x");
    assert_eq!(Config::parse(&text).expect("parses").pool.default_pool_size.get(), 7, "parse ignores the env");
}

#[test]
fn every_table_key_can_be_overridden() {
    let values = [
        (
            "listen",
            [
                ("rw", "127.0.0.1:7001"),
                ("ro", "127.0.0.1:7002"),
                ("http", "127.0.0.1:7003"),
                ("http_header_timeout", "3s"),
            ]
            .as_slice(),
        ),
        (
            "pool",
            &[
                ("mode", "session"),
                ("default_pool_size", "3"),
                ("max_client_conn", "9"),
                ("max_pre_auth_conn", "8"),
                ("max_pre_auth_conn_per_addr", "2"),
                ("query_wait_timeout", "1s"),
                ("server_connect_timeout", "2s"),
                ("server_reset_timeout", "3s"),
                ("server_idle_timeout", "off"),
                ("server_lifetime", "0"),
                ("server_check_delay", "0"),
                ("min_pool_size", "2"),
                ("reserve_pool_size", "3"),
                ("reserve_pool_timeout", "1s"),
                ("max_db_connections", "10"),
                ("max_user_connections", "11"),
                ("client_login_timeout", "4s"),
                ("max_message_size", "65536"),
                ("session_state", "refuse"),
                ("max_prepared_statements", "7"),
                ("max_client_prepared_statements", "8"),
                ("shutdown_grace", "5s"),
                ("workers", "3"),
                ("tcp_keepalive", "false"),
                ("tcp_keepidle", "30s"),
                ("tcp_keepintvl", "10s"),
                ("tcp_keepcnt", "3"),
                ("tcp_user_timeout", "45s"),
                ("application_name_add_host", "true"),
                ("client_idle_timeout", "10m"),
                ("idle_transaction_timeout", "1m"),
                ("query_timeout", "30s"),
            ],
        ),
        (
            "routing",
            &[
                ("max_replica_lag_bytes", "1kB"),
                ("max_replica_lag", "1s"),
                ("ro_fallback", "error"),
                ("prefer", "sync"),
                ("read_your_writes_wait", "50ms"),
                ("causal_expiry", "1m"),
                ("causal_max_ids", "100"),
            ],
        ),
        (
            "cluster",
            &[
                ("source", "static"),
                ("check_interval", "2s"),
                ("check_timeout", "1s"),
                ("leave_after_checks", "3"),
                ("rejoin_after_checks", "4"),
                ("user", "mon"),
                ("password", "pw"),
                ("server_require_auth", "!password"),
                ("server_scram_max_iterations", "5000"),
            ],
        ),
        ("admin", &[("admin_users", "ops"), ("stats_users", "monitor, exporter"), ("stats_period", "10s")]),
    ];
    for (section, keys) in values {
        let listed: BTreeSet<&str> = keys.iter().map(|(key, _)| *key).collect();
        assert_eq!(listed, raw::keys(section).expect("section").iter().copied().collect(), "[{section}]");
        for (key, value) in keys {
            let var = format!("PGRELAY_{}_{}", section.to_uppercase(), key.to_uppercase());
            // A static source needs a node with a role, which the default
            // source refuses: the override must take effect to parse.
            let base = if *key == "source" { with(&[STATIC_NODE, USER, DATABASE]) } else { minimal() };
            let result = parse_env(&base, &[(var.as_str(), value)]);
            assert!(result.is_ok(), "{var}={value}: {result:?}");
        }
    }
}

#[test]
fn env_errors_name_the_variable() {
    let error = parse_env(&minimal(), &[("PGRELAY_POOL_DEFAULT_POL_SIZE", "5")]).expect_err("unknown key");
    assert!(error.starts_with("PGRELAY_POOL_DEFAULT_POL_SIZE: "), "{error}");
    assert!(error.contains("default_pol_size") && error.contains("[pool]"), "{error}");

    let error = parse_env(&minimal(), &[("PGRELAY_POOL_DEFAULT_POOL_SIZE", "many")]).expect_err("not an integer");
    assert!(error.starts_with("PGRELAY_POOL_DEFAULT_POOL_SIZE: [pool] default_pool_size"), "{error}");

    let error = parse_env(&minimal(), &[("PGRELAY_POOL_QUERY_WAIT_TIMEOUT", "5 parsecs")]).expect_err("bad duration");
    let expected = "PGRELAY_POOL_QUERY_WAIT_TIMEOUT: [pool] query_wait_timeout: invalid duration \"5 parsecs\"";
    assert!(error.starts_with(expected), "{error}");

    let error = parse_env(&minimal(), &[("PGRELAY_POOL_DEFAULT_POOL_SIZE", "0")]).expect_err("zero");
    assert!(error.starts_with("PGRELAY_POOL_DEFAULT_POOL_SIZE: [pool] default_pool_size: must be greater"), "{error}");

    let error = parse_env(&minimal(), &[("PGRELAY_LISTEN_RO", "0.0.0.0:5432")]).expect_err("collision");
    assert!(error.starts_with("PGRELAY_LISTEN_RO: [listen] ro:") && error.contains("rw"), "{error}");

    let config =
        Config::parse_with_env(&minimal(), [("PGRELAY_ADMIN_STATS_USERS".to_owned(), "monitor, exporter".to_owned())])
            .expect("list override");
    assert_eq!(config.admin.stats_users, ["monitor", "exporter"], "a list override is split at commas");

    for ignored in ["PGRELAY_LOG", "PGRELAY_POOLING_X", "PGRELAY_NODES_PG0_PORT", "pgrelay_pool_nosuch"] {
        assert!(parse_env(&minimal(), &[(ignored, "1")]).is_ok(), "{ignored} is not an override");
    }
}

#[test]
fn env_source_changes_node_rules() {
    let text = with(&[STATIC, STATIC_NODE, USER, DATABASE]);
    assert_eq!(parse_env(&text, &[]).expect("static config").nodes[0].role, Some(Role::Primary));
    let error = parse_env(&text, &[("PGRELAY_CLUSTER_SOURCE", "postgres")]).expect_err("role not allowed");
    assert!(error.starts_with("line 7: [[nodes]] \"pg0\" role:"), "{error}");
    assert!(error.contains("only allowed with [cluster] source = \"static\" (here source = \"postgres\")"), "{error}");

    let error = parse_env(&minimal(), &[("PGRELAY_CLUSTER_SOURCE", "static")]).expect_err("role missing");
    assert!(error.starts_with("line 1: [[nodes]] \"pg0\" has no role"), "{error}");
}

#[test]
fn source_defaults_to_postgres() {
    let text = minimal();
    assert!(!text.contains("[cluster]") && !text.contains("role"), "{text}");
    let config = Config::parse(&text).expect("minimal config parses");
    assert_eq!(config.cluster.source, Source::Postgres);
    assert_eq!(config.nodes[0].role, None);
    // An empty [cluster] section is the same default.
    let config = Config::parse(&with(&["[cluster]\n", NODE, USER, DATABASE])).expect("parses");
    assert_eq!(config.cluster.source, Source::Postgres);

    // A node with a role but no source = "static": say that role needs it.
    let text = with(&[STATIC_NODE, USER, DATABASE]);
    let error = Config::parse(&text).expect_err("role without source = \"static\"").0;
    let expected = "line 4: [[nodes]] \"pg0\" role: only allowed with [cluster] source = \"static\" (source is \
                    \"postgres\", the default; add [cluster] source = \"static\" to keep static roles)";
    assert_eq!(error, expected);
    let config = Config::parse(&with(&[STATIC, &text])).expect("the same nodes with source = \"static\"");
    assert_eq!(config.cluster.source, Source::Static);
    assert_eq!(config.nodes[0].role, Some(Role::Primary));
}

#[test]
fn cluster_check_keys() {
    let parse_with = |extra: &str| {
        let text = minimal().replacen("[[nodes]]", &format!("[cluster]\n{extra}\n\n[[nodes]]"), 1);
        Config::parse(&text).map(|c| c.cluster).map_err(|e| e.0)
    };
    let cluster = parse_with("check_interval = \"200ms\"").expect("valid");
    assert_eq!(cluster.check_timeout, Duration::from_millis(200), "check_timeout defaults to check_interval");
    assert_eq!((cluster.leave_after_checks, cluster.rejoin_after_checks), (2, 2));
    let cluster = parse_with("check_timeout = \"3s\"\nleave_after_checks = 1\nrejoin_after_checks = 5").expect("valid");
    assert_eq!(cluster.check_timeout, Duration::from_secs(3));
    assert_eq!((cluster.leave_after_checks, cluster.rejoin_after_checks), (1, 5));
    let cases = [
        ("check_timeout = \"0s\"", "[cluster] check_timeout: must be greater than 0"),
        ("leave_after_checks = 0", "[cluster] leave_after_checks: must be greater than 0"),
        ("rejoin_after_checks = -1", "[cluster] rejoin_after_checks: must be greater than 0"),
        ("rejoin_after_checks = \"2\"", "rejoin_after_checks"),
    ];
    for (extra, want) in cases {
        let error = parse_with(extra).expect_err(extra);
        assert!(error.contains(want), "{extra}: {error}");
    }
}

#[test]
fn tcp_keys() {
    let parse_with = |extra: &str| {
        Config::parse(&with(&[&format!("[pool]\n{extra}\n"), &minimal()])).map(|c| c.pool.tcp).map_err(|e| e.0)
    };
    let tcp =
        parse_with("tcp_keepidle = \"2m\"\ntcp_keepintvl = \"15s\"\ntcp_keepcnt = 4\ntcp_user_timeout = \"1500ms\"");
    let keepalive =
        Keepalive { idle: Some(Duration::from_secs(120)), interval: Some(Duration::from_secs(15)), count: Some(4) };
    assert_eq!(tcp, Ok(TcpOptions { keepalive: Some(keepalive), user_timeout: Some(Duration::from_millis(1500)) }));
    let system_defaults = "tcp_keepidle = \"0\"\ntcp_keepintvl = \"0s\"\ntcp_keepcnt = 0\ntcp_user_timeout = \"0\"";
    let tcp = parse_with(system_defaults).expect("0 is the system default");
    assert_eq!(tcp, TcpOptions { keepalive: Some(Keepalive::default()), user_timeout: None });
    let off = parse_with("tcp_keepalive = false\ntcp_keepidle = \"0\"").expect("0 tunes nothing");
    assert_eq!(off.keepalive, None);
    let cases = [
        ("tcp_keepidle = \"1500ms\"", "[pool] tcp_keepidle: must be a whole number of seconds up to 9h 6m 7s"),
        ("tcp_keepintvl = \"32768s\"", "[pool] tcp_keepintvl: must be a whole number of seconds"),
        ("tcp_keepidle = 60", "tcp_keepidle"),
        ("tcp_keepcnt = 128", "[pool] tcp_keepcnt: must be between 1 and 127, or 0 for the system default"),
        ("tcp_keepcnt = -1", "[pool] tcp_keepcnt: must be between 1 and 127"),
        ("tcp_user_timeout = \"1us\"", "[pool] tcp_user_timeout: must be a whole number of milliseconds"),
        ("tcp_user_timeout = \"soon\"", "or \"0\" for the system default"),
        ("tcp_keepalive = false\ntcp_keepcnt = 3", "[pool] tcp_keepcnt: has no effect with tcp_keepalive = false"),
        ("tcp_keepalive = \"yes\"", "tcp_keepalive"),
    ];
    for (extra, want) in cases {
        let error = parse_with(extra).expect_err(extra);
        assert!(error.contains(want), "{extra}: {error}");
    }
    let from_env = parse_env(&minimal(), &[("PGRELAY_POOL_TCP_KEEPALIVE", "FALSE")]).expect("a boolean override");
    assert_eq!(from_env.pool.tcp.keepalive, None);
    let error = parse_env(&minimal(), &[("PGRELAY_POOL_TCP_KEEPALIVE", "1")]).expect_err("not a boolean");
    assert!(error.starts_with("PGRELAY_POOL_TCP_KEEPALIVE: [pool] tcp_keepalive: expected true or false"), "{error}");
}

#[test]
fn application_name_add_host_key() {
    let parse = |pool: &str| {
        let text = with(&[&format!("[pool]\n{pool}\n"), &minimal()]);
        Config::parse(&text).map(|c| c.pool.application_name_add_host).map_err(|e| e.0)
    };
    assert_eq!(parse(""), Ok(false), "off by default, as in PgBouncer");
    assert_eq!(parse("application_name_add_host = true"), Ok(true));
    let error = parse("application_name_add_host = 1").expect_err("not a boolean");
    assert!(error.contains("application_name_add_host"), "{error}");
    let from_env = parse_env(&minimal(), &[("PGRELAY_POOL_APPLICATION_NAME_ADD_HOST", "true")]).expect("override");
    assert!(from_env.pool.application_name_add_host);
}

/// The Kubernetes example's embedded pgrelay.toml must stay a valid config.
#[test]
fn kubernetes_example_config_is_valid() {
    let yaml = include_str!("../../deploy/kubernetes/pgrelay-sidecar.yaml");
    let start = yaml.find("pgrelay.toml: |\n").expect("the ConfigMap has pgrelay.toml") + "pgrelay.toml: |\n".len();
    let block: Vec<&str> = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    let config = Config::parse(&block.join("\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.nodes.len(), 3);
    assert_eq!(config.cluster.source, Source::Postgres);
}

#[test]
fn auth_is_off_without_auth_user_and_has_documented_defaults() {
    assert_eq!(Config::parse(&minimal()).unwrap().auth, None);
    let config = Config::parse(&with(&["[auth]\nauth_user = \"pgrelay_auth\"\n", &minimal()])).unwrap();
    let auth = config.auth.expect("on");
    assert_eq!(auth.user, "pgrelay_auth");
    assert_eq!((auth.password.as_str(), auth.dbname.as_str()), ("", "postgres"));
    assert_eq!(auth.query, "SELECT usename, passwd FROM pg_shadow WHERE usename = $1");
    assert_eq!(auth.auth_type, AuthType::ScramSha256);
    assert_eq!(auth.cache_ttl, Duration::from_secs(60));
    assert_eq!((auth.cache_size.get(), auth.concurrency.get(), auth.rate.get()), (10_000, 4, 50));
    let from_env = parse_env(&minimal(), &[("PGRELAY_AUTH_AUTH_USER", "u"), ("PGRELAY_AUTH_AUTH_QUERY_RATE", "7")]);
    assert_eq!(from_env.unwrap().auth.map(|a| a.rate.get()), Some(7));
}

#[test]
fn auth_keys_are_checked() {
    let error = |auth: &str| Config::parse(&with(&[auth, &minimal()])).unwrap_err().to_string();
    assert!(error("[auth]\nauth_query = \"SELECT 1\"\n").contains("has no effect without [auth] auth_user"));
    assert!(error("[auth]\nauth_user = \"u\"\nauth_query = \"SELECT 1\"\n").contains("must take the user name as $1"));
    assert!(error("[auth]\nauth_user = \"u\"\nauth_type = \"trust\"\n").contains("[auth] auth_type"));
    assert!(error("[auth]\nauth_user = \"u\"\nauth_query_rate = 0\n").contains("[auth] auth_query_rate"));
}

#[test]
fn users_may_all_come_from_the_database() {
    let without = with(&[NODE, DATABASE]);
    let error = Config::parse(&without).unwrap_err().to_string();
    assert!(error.contains("no [[users]] entries"), "{error}");
    let config = Config::parse(&with(&["[auth]\nauth_user = \"pgrelay_auth\"\n", &without])).unwrap();
    assert!(config.users.is_empty());
    assert!(config.auth.is_some());
}
