//! Every rejected config gives one line that names the key and, when the
//! value is in the file, the right line.

use super::{with, DATABASE, NODE, STATIC, STATIC_NODE, USER};
use crate::config::Config;

fn error_of(text: &str) -> String {
    match Config::parse(text) {
        Ok(config) => panic!("accepted invalid config:\n{text}\n{config:?}"),
        Err(error) => error.to_string(),
    }
}

/// The 1-based line of the `nth` (1-based) line of `text` containing `needle`.
fn line(text: &str, needle: &str, nth: usize) -> usize {
    let mut found = text.lines().enumerate().filter(|(_, l)| l.contains(needle));
    found.nth(nth - 1).map(|(i, _)| i + 1).unwrap_or_else(|| panic!("{needle:?} #{nth} not in:\n{text}"))
}

#[track_caller]
fn assert_error(text: &str, at: Option<usize>, needles: &[&str]) {
    let message = error_of(text);
    assert!(!message.contains('\n'), "not one line: {message:?}");
    match at {
        Some(at) => assert!(message.starts_with(&format!("line {at}: ")), "expected line {at}: {message:?}\n{text}"),
        None => assert!(!message.starts_with("line "), "expected no line: {message:?}"),
    }
    for needle in needles {
        assert!(message.contains(needle), "{message:?} does not mention {needle:?}");
    }
}

/// A config with `head` before one valid node, user and database.
fn base(head: &str) -> String {
    with(&[head, NODE, USER, DATABASE])
}

#[test]
fn unknown_keys_and_sections() {
    let text = base("[pool]\nmode = \"transaction\"\ndefualt_pool_size = 5\n");
    let message = error_of(&text);
    assert!(message.starts_with("line 3: unknown key \"defualt_pool_size\" in [pool]"), "{message}");
    assert!(message.contains("default_pool_size"), "lists the known keys: {message}");

    assert_error(&base("[pols]\nmode = \"x\"\n"), Some(1), &["unknown section [pols]", "pool"]);
    assert_error(&base("verbose = true\n"), Some(1), &["verbose"]);
    assert_error(&base("[pool.extra]\nx = 1\n"), Some(1), &["\"extra\"", "[pool]"]);
    let text = with(&[NODE, "[[nodes]]\nname = \"pg1\"\nprot = 1\n", USER, DATABASE]);
    assert_error(&text, Some(line(&text, "prot", 1)), &["unknown key \"prot\" in [[nodes]]"]);
    let text = with(&[NODE, USER, "[[databases]]\nname = \"app\"\npoolsize = 1\n"]);
    assert_error(&text, Some(line(&text, "poolsize", 1)), &["\"poolsize\"", "[[databases]]"]);
}

#[test]
fn wrong_section_forms() {
    assert_error(&with(&["[[pool]]\nmode = \"x\"\n", NODE, USER, DATABASE]), Some(1), &["[pool]", "single table"]);
    let text = with(&["[nodes]\nname = \"pg0\"\n", USER, DATABASE]);
    assert_error(&text, Some(1), &["[[nodes]]", "list of tables"]);
    assert_error(&with(&["nodes = [1, 2]\n", USER, DATABASE]), Some(1), &["[[nodes]]", "list of tables"]);
}

#[test]
fn toml_syntax_errors() {
    assert_error(&base("[pool]\nmode = \"transaction\n"), Some(2), &[]);
    let text = base("[pool]\nmode = \"session\"\nmode = \"transaction\"\n");
    assert_error(&text, Some(3), &["duplicate key", "mode"]);
    assert_error("\n\n[pool\n", Some(3), &[]);
}

#[test]
fn wrong_value_types() {
    assert_error(&base("[pool]\n\ndefault_pool_size = \"20\"\n"), Some(3), &["[pool] default_pool_size", "string"]);
    assert_error(&base("[routing]\nmax_replica_lag_bytes = true\n"), Some(2), &["[routing] max_replica_lag_bytes"]);
    assert_error(&base("[listen]\nrw = 5432\n"), Some(2), &["[listen] rw"]);
    assert_error(&base("[pool]\nquery_wait_timeout = 30\n"), Some(2), &["[pool] query_wait_timeout", "\"30s\""]);
    let text = with(&[NODE, "[[nodes]]\nname = \"pg1\"\nport = \"6433\"\n", USER, DATABASE]);
    assert_error(&text, Some(line(&text, "\"6433\"", 1)), &["[[nodes]] port"]);
}

#[test]
fn invalid_values_name_their_key_and_line() {
    let message = error_of(&base("[pool]\n\n\n\n\n\nquery_wait_timeout = \"5 parsecs\"\n"));
    assert_eq!(
        message,
        "line 7: [pool] query_wait_timeout: invalid duration \"5 parsecs\" (use e.g. \"30s\" or \"250ms\")"
    );
    let cases = [
        ("[pool]\nmode = \"txn\"\n", "[pool] mode: invalid value \"txn\" (expected \"transaction\" or \"session\")"),
        ("[pool]\nsession_state = \"ignore\"\n", "[pool] session_state: invalid value \"ignore\""),
        ("[pool]\ndefault_pool_size = 0\n", "[pool] default_pool_size: must be greater than 0"),
        ("[pool]\nmax_client_conn = -1\n", "[pool] max_client_conn: must be greater than 0 (got -1)"),
        ("[pool]\nmax_pre_auth_conn = 0\n", "[pool] max_pre_auth_conn: must be greater than 0 (got 0)"),
        ("[pool]\nmax_pre_auth_conn_per_addr = 0\n", "[pool] max_pre_auth_conn_per_addr: must be greater than 0"),
        ("[pool]\nserver_connect_timeout = \"0s\"\n", "[pool] server_connect_timeout: must be greater than 0"),
        ("[pool]\nserver_idle_timeout = \"never\"\n", "[pool] server_idle_timeout: invalid duration \"never\""),
        ("[pool]\nmax_message_size = \"16 parsecs\"\n", "[pool] max_message_size: invalid size \"16 parsecs\""),
        ("[pool]\nmax_message_size = \"32kB\"\n", "[pool] max_message_size: 32768 bytes is out of range"),
        ("[pool]\nmax_message_size = \"2GB\"\n", "[pool] max_message_size: 2147483648 bytes is out of range"),
        ("[routing]\nmax_replica_lag_bytes = -5\n", "[routing] max_replica_lag_bytes: size must not be negative"),
        ("[routing]\nmax_replica_lag = \"ten seconds\"\n", "[routing] max_replica_lag: invalid duration"),
        ("[routing]\nro_fallback = \"replica\"\n", "[routing] ro_fallback: invalid value \"replica\""),
        ("[routing]\nprefer = \"quorum\"\n", "[routing] prefer: invalid value \"quorum\""),
        ("[cluster]\nsource = \"etcd\"\n", "[cluster] source: invalid value \"etcd\""),
        ("[cluster]\ncheck_interval = \"0ms\"\n", "[cluster] check_interval: must be greater than 0"),
        ("[cluster]\nuser = \"\"\n", "[cluster] user: must not be empty"),
        ("[listen]\nhttp = \"localhost:9930\"\n", "[listen] http: invalid address \"localhost:9930\""),
        ("[listen]\nhttp_header_timeout = \"0s\"\n", "[listen] http_header_timeout: must be greater than 0"),
        ("[admin]\nstats_period = \"50ms\"\n", "[admin] stats_period: must be at least 100ms (got 50ms)"),
        ("[admin]\nstats_period = \"a minute\"\n", "[admin] stats_period: invalid duration \"a minute\""),
    ];
    for (head, expected) in cases {
        assert_error(&base(head), Some(2), &[expected]);
    }
}

#[test]
fn listen_addresses_must_differ() {
    let text = base("[listen]\nrw = \"127.0.0.1:6000\"\nro = \"127.0.0.1:6001\"\nhttp = \"127.0.0.1:6000\"\n");
    assert_error(&text, Some(4), &["[listen] http", "rw", "line 2", "127.0.0.1:6000"]);
    assert_error(&base("[listen]\nro = \"0.0.0.0:5432\"\n"), Some(2), &["[listen] ro", "rw", "default"]);
    let text = base("[listen]\nrw = \"0.0.0.0:5433\"\n");
    assert_error(&text, Some(2), &["[listen] rw: 0.0.0.0:5433 collides with [listen] ro = 0.0.0.0:5433 (default)"]);
    let text = base("[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n");
    assert!(Config::parse(&text).is_ok(), "port 0 may repeat");
}

#[test]
fn lists_need_entries_with_names() {
    assert_error(&with(&[USER, DATABASE]), None, &["[[nodes]]", "at least one"]);
    assert_error(&with(&[NODE, DATABASE]), None, &["[[users]]", "at least one"]);
    assert_error(&with(&[NODE, USER]), None, &["[[databases]]", "at least one"]);
    assert_error(&with(&["nodes = []\n", USER, DATABASE]), None, &["[[nodes]]", "at least one"]);
    let text = with(&[NODE, USER, DATABASE, "[[nodes]]\nport = 6433\n"]);
    assert_error(&text, Some(line(&text, "[[nodes]]", 2)), &["[[nodes]]", "no name"]);
    let text = with(&[NODE, "[[users]]\nname = \"\"\npassword = \"x\"\n", DATABASE]);
    assert_error(&text, Some(line(&text, "name = \"\"", 1)), &["[[users]] name", "must not be empty"]);
}

#[test]
fn duplicates() {
    let text = with(&[NODE, USER, "[[nodes]]\nname = \"pg0\"\nport = 6433\n", DATABASE]);
    let (first, second) = (line(&text, "name = \"pg0\"", 1), line(&text, "name = \"pg0\"", 2));
    let message = error_of(&text);
    assert_eq!(message, format!("line {second}: [[nodes]] name \"pg0\" appears twice (lines {first} and {second})"));

    let text = with(&[NODE, "[[nodes]]\nname = \"pg1\"\nport = 6432\n", USER, DATABASE]);
    let (first, second) = (line(&text, "[[nodes]]", 1), line(&text, "[[nodes]]", 2));
    let expected = format!(
        "[[nodes]] \"pg1\" has the same host and port (127.0.0.1:6432) as \"pg0\" (lines {first} and {second})"
    );
    assert_error(&text, Some(second), &[&expected]);

    let text = with(&[NODE, USER, DATABASE, USER]);
    // `name = "app"` is the user, then the database, then the second user.
    let (first, second) = (line(&text, "name = \"app\"", 1), line(&text, "name = \"app\"", 3));
    let lines = format!("(lines {first} and {second})");
    assert_error(&text, Some(second), &["[[users]] name \"app\" appears twice", &lines]);

    let text = with(&[NODE, USER, DATABASE, "[[databases]]\nname = \"app\"\ndbname = \"other\"\n"]);
    assert_error(&text, Some(line(&text, "name = \"app\"", 3)), &["[[databases]] name \"app\" appears twice"]);
}

#[test]
fn static_roles() {
    let replica = "[[nodes]]\nname = \"pg1\"\nport = 6433\nrole = \"replica\"\n";
    let text = with(&[STATIC, replica, USER, DATABASE]);
    assert_error(&text, None, &["role = \"primary\"", "exactly one", "source = \"static\""]);

    let text = with(&[STATIC, STATIC_NODE, &replica.replace("replica", "primary"), USER, DATABASE]);
    let second = line(&text, "role = \"primary\"", 2);
    let lines = format!("lines {} and {second}", line(&text, "role = \"primary\"", 1));
    assert_error(&text, Some(second), &["[[nodes]] role", "\"pg0\" and \"pg1\" both", &lines, "exactly one"]);

    let text = with(&[STATIC, STATIC_NODE, "[[nodes]]\nname = \"pg1\"\nport = 6433\n", USER, DATABASE]);
    assert_error(&text, Some(line(&text, "[[nodes]]", 2)), &["\"pg1\" has no role", "source = \"static\""]);

    let text = with(&[STATIC, STATIC_NODE, &replica.replace("\"replica\"", "\"standby\""), USER, DATABASE]);
    assert_error(&text, Some(line(&text, "standby", 1)), &["[[nodes]] \"pg1\" role: invalid value \"standby\""]);

    assert!(Config::parse(&with(&[STATIC, STATIC_NODE, replica, USER, DATABASE])).is_ok());
}

#[test]
fn roles_only_with_static_source() {
    // Left at the default, the message says so and what to add.
    let text = with(&[STATIC_NODE, USER, DATABASE]);
    let needles = ["[[nodes]] \"pg0\" role", "only allowed with [cluster] source = \"static\"", "the default"];
    assert_error(&text, Some(line(&text, "role =", 1)), &needles);
    for source in ["postgres", "patroni"] {
        let head = format!("[cluster]\nsource = \"{source}\"\n");
        let text = with(&[&head, STATIC_NODE, USER, DATABASE]);
        let here = format!("(here source = \"{source}\")");
        let needles = ["[[nodes]] \"pg0\" role", "only allowed with", "source = \"static\"", &here];
        assert_error(&text, Some(line(&text, "role =", 1)), &needles);
        assert!(!error_of(&text).contains("the default"), "{source} was set");
    }
    assert!(Config::parse(&with(&["[cluster]\nsource = \"postgres\"\n", NODE, USER, DATABASE])).is_ok());
    assert!(Config::parse(&with(&[NODE, USER, DATABASE])).is_ok());
}

#[test]
fn patroni_urls() {
    let url = "port = 6432\npatroni = \"http://h:8008\"";
    let text = base("").replace("port = 6432", url);
    let needles = ["[[nodes]] \"pg0\" patroni", "source = \"patroni\"", "(here source = \"postgres\")"];
    assert_error(&text, Some(line(&text, "patroni =", 1)), &needles);
    let text = with(&[STATIC, &STATIC_NODE.replace("port = 6432", url), USER, DATABASE]);
    let needles = ["[[nodes]] \"pg0\" patroni", "source = \"patroni\"", "(here source = \"static\")"];
    assert_error(&text, Some(line(&text, "patroni =", 1)), &needles);

    let patroni = "[cluster]\nsource = \"patroni\"\n";
    let node = "[[nodes]]\nname = \"pg0\"\nport = 6432\npatroni = \"http://127.0.0.1:8008\"\n";
    assert!(Config::parse(&with(&[patroni, node, USER, DATABASE])).is_ok());

    let text = with(&[patroni, node, "[[nodes]]\nname = \"pg1\"\nport = 6433\n", USER, DATABASE]);
    assert_error(&text, Some(line(&text, "[[nodes]]", 2)), &["\"pg1\" has no patroni URL"]);

    let text = with(&[patroni, &node.replace("http://", "https://"), USER, DATABASE]);
    assert_error(&text, Some(line(&text, "patroni =", 1)), &["patroni: invalid URL", "http://"]);
}

#[test]
fn nodes_need_valid_addresses() {
    let text = base("").replace("port = 6432", "port = 70000");
    assert_error(&text, Some(line(&text, "70000", 1)), &["[[nodes]] \"pg0\" port", "70000"]);
    let text = base("").replace("port = 6432", "port = 6432\nhost = \"\"");
    assert_error(&text, Some(line(&text, "host", 1)), &["[[nodes]] \"pg0\" host: must not be empty"]);
}

#[test]
fn user_passwords() {
    let cases = [
        ("auth_type = \"scram-sha-256\"", "has no password", "[[users]]"),
        ("auth_type = \"md5\"", "has no password", "auth_type = \"md5\""),
        ("", "has no password", "scram-sha-256"),
    ];
    for (auth, expected, also) in cases {
        let text = with(&[NODE, &format!("[[users]]\nname = \"u\"\n{auth}\n"), DATABASE]);
        assert_error(&text, Some(line(&text, "[[users]]", 1)), &[expected, also, "\"u\""]);
    }
    let trust = with(&[NODE, "[[users]]\nname = \"u\"\nauth_type = \"trust\"\n", DATABASE]);
    assert!(Config::parse(&trust).is_ok());

    let verifier = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy";
    let text =
        with(&[NODE, &format!("[[users]]\nname = \"u\"\nauth_type = \"md5\"\npassword = \"{verifier}\"\n"), DATABASE]);
    assert_error(&text, Some(line(&text, "password", 1)), &["[[users]] \"u\" password", "cannot answer md5"]);
    assert!(!error_of(&text).contains("c2FsdA"), "never echo a secret");
    assert!(Config::parse(&text.replace("\"md5\"", "\"scram-sha-256\"")).is_ok(), "SCRAM accepts a verifier");

    let hash = "md5".to_owned() + &"0123456789abcdef".repeat(2);
    let text = with(&[NODE, &format!("[[users]]\nname = \"u\"\npassword = \"{hash}\"\n"), DATABASE]);
    assert_error(&text, Some(line(&text, "password", 1)), &["[[users]] \"u\" password", "md5 hash"]);
    assert!(Config::parse(&text.replace("password", "auth_type = \"md5\"\npassword")).is_ok(), "md5 accepts a hash");

    let text = with(&[NODE, "[[users]]\nname = \"u\"\npassword = \"SCRAM-SHA-256$x\"\n", DATABASE]);
    assert_error(&text, Some(line(&text, "password", 1)), &["[[users]] \"u\" password", "malformed"]);
    let text = with(&[NODE, "[[users]]\nname = \"u\"\nauth_type = \"ldap\"\npassword = \"p\"\n", DATABASE]);
    assert_error(&text, Some(line(&text, "ldap", 1)), &["[[users]] \"u\" auth_type: invalid value \"ldap\""]);
}

#[test]
fn database_values() {
    let text = with(&[NODE, USER, "[[databases]]\nname = \"app\"\npool_size = 0\n"]);
    assert_error(
        &text,
        Some(line(&text, "pool_size", 1)),
        &["[[databases]] \"app\" pool_size: must be greater than 0"],
    );
    let text = with(&[NODE, USER, "[[databases]]\nname = \"app\"\ndbname = \"\"\n"]);
    assert_error(&text, Some(line(&text, "dbname", 1)), &["[[databases]] \"app\" dbname: must not be empty"]);
    let text = with(&[NODE, USER, "[[databases]]\nname = \"pgbouncer\"\n"]);
    assert_error(
        &text,
        Some(line(&text, "name = \"pgbouncer\"", 1)),
        &["[[databases]] \"pgbouncer\" name: is reserved for the admin console"],
    );
}

#[test]
fn server_login_keys() {
    let text = base("[cluster]\n\nserver_require_auth = \"scram-sha-256,md6\"\n");
    assert_error(&text, Some(3), &["[cluster] server_require_auth", "\"md6\"", "password, md5, scram-sha-256, none"]);
    assert_error(&base("[cluster]\nserver_require_auth = \"md5,!none\"\n"), Some(2), &["mixes negated"]);
    let text = base("[cluster]\nserver_scram_max_iterations = 0\n");
    assert_error(&text, Some(2), &["[cluster] server_scram_max_iterations", "got 0"]);
    let text = with(&[NODE, "[[nodes]]\nname = \"pg1\"\nport = 1\nserver_require_auth = \"gss\"\n", USER, DATABASE]);
    let at = line(&text, "gss", 1);
    assert_error(&text, Some(at), &["[[nodes]] \"pg1\" server_require_auth", "cannot answer"]);

    let from_cluster = "[[users]]\nname = \"t\"\nauth_type = \"trust\"\nserver_password_from_cluster = true\n";
    let text = with(&[NODE, from_cluster, DATABASE]);
    let at = line(&text, "server_password_from_cluster", 1);
    assert_error(&text, Some(at), &["[[users]] \"t\" server_password_from_cluster", "[cluster] password is empty"]);
    let both = format!("{from_cluster}server_password = \"p\"\n");
    let text = with(&["[cluster]\npassword = \"m\"\n", NODE, &both, DATABASE]);
    assert_error(&text, Some(line(&text, "server_password_from_cluster", 1)), &["cannot be combined"]);
    assert!(Config::parse(&with(&["[cluster]\npassword = \"m\"\n", NODE, from_cluster, DATABASE])).is_ok());
}

/// A directory of PEM files for the `[tls]` tests: a CA, a certificate
/// with its key, an expired certificate, another key, and garbage.
fn tls_files(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgrelay-tls-config-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["pgrelay".to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let mut expired = rcgen::CertificateParams::new(vec!["pgrelay".to_owned()]).unwrap();
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = expired.signed_by(&key, &ca, &ca_key).unwrap();
    for (name, text) in [
        ("ca.crt", ca.pem()),
        ("client.crt", cert.pem()),
        ("expired.crt", expired.pem()),
        ("client.key", key.serialize_pem()),
        ("other.key", rcgen::KeyPair::generate().unwrap().serialize_pem()),
        ("garbage.key", "not a key\n".to_owned()),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

#[test]
fn server_tls_files_are_checked_at_load() {
    let dir = tls_files("load");
    let tls = |body: String| base(&format!("[tls]\n{body}"));
    let path = |name: &str| dir.join(name).display().to_string();
    let good = format!(
        "server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"\nserver_tls_cert_file = \"{}\"\n\
         server_tls_key_file = \"{}\"\n",
        path("ca.crt"),
        path("client.crt"),
        path("client.key")
    );
    let config = Config::parse(&tls(good.clone())).expect("valid [tls]");
    assert_eq!(config.tls.server.sslmode, crate::config::ServerSslMode::VerifyFull);
    assert!(config.tls.server.client_config.is_some());

    let missing = tls(good.replace("client.key", "nosuch.key"));
    assert_error(
        &missing,
        Some(line(&missing, "server_tls_key_file", 1)),
        &["[tls] server_tls_key_file", "nosuch.key"],
    );
    let garbage = tls(good.replace("client.key", "garbage.key"));
    assert_error(
        &garbage,
        Some(line(&garbage, "server_tls_key_file", 1)),
        &["server_tls_key_file", "not a PEM private key"],
    );
    let expired = tls(good.replace("client.crt", "expired.crt"));
    assert_error(
        &expired,
        Some(line(&expired, "server_tls_cert_file", 1)),
        &["server_tls_cert_file", "expired.crt", "is valid only from", "not now"],
    );
    let other = tls(good.replace("client.key", "other.key"));
    assert_error(&other, Some(line(&other, "server_tls_key_file", 1)), &["server_tls_key_file", "does not fit"]);
    let not_a_ca = tls(good.replace("ca.crt", "garbage.key"));
    assert_error(
        &not_a_ca,
        Some(line(&not_a_ca, "server_tls_ca_file", 1)),
        &["server_tls_ca_file", "no PEM certificate"],
    );
    let no_ca = tls("server_tls_sslmode = \"verify-ca\"\n".to_owned());
    assert_error(&no_ca, None, &["[tls] server_tls_ca_file", "must be set", "verify-ca"]);
    let cert_alone = tls(format!("server_tls_cert_file = \"{}\"\n", path("client.crt")));
    assert_error(&cert_alone, None, &["[tls] server_tls_key_file", "must be set"]);
    let mode = tls("server_tls_sslmode = \"verify\"\n".to_owned());
    assert_error(&mode, Some(line(&mode, "server_tls_sslmode", 1)), &["\"verify-full\"", "\"prefer\""]);
    let protocols = tls("server_tls_protocols = \"tlsv1.1\"\n".to_owned());
    assert_error(&protocols, Some(line(&protocols, "server_tls_protocols", 1)), &["tlsv1.1"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn client_tls_files_and_modes_are_checked_at_load() {
    use crate::config::ClientSslMode;
    let dir = tls_files("client");
    let tls = |body: String| base(&format!("[tls]\n{body}"));
    let path = |name: &str| dir.join(name).display().to_string();
    let files = format!(
        "client_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n",
        path("client.crt"),
        path("client.key")
    );
    // A certificate alone turns TLS on for clients that ask (prefer).
    let config = Config::parse(&tls(files.clone())).expect("valid [tls]");
    assert_eq!(config.tls.client.sslmode, ClientSslMode::Prefer);
    assert!(config.tls.client.acceptor.is_some());
    // No certificate: disable, and no acceptor.
    let config = Config::parse(&tls(String::new())).expect("valid [tls]");
    assert_eq!(config.tls.client.sslmode, ClientSslMode::Disable);
    assert!(config.tls.client.acceptor.is_none());
    let verify = format!("{files}client_tls_sslmode = \"verify-full\"\nclient_tls_ca_file = \"{}\"\n", path("ca.crt"));
    let config = Config::parse(&tls(verify.clone())).expect("valid [tls]");
    assert_eq!(config.tls.client.acceptor.as_ref().map(|a| a.sslmode), Some(ClientSslMode::VerifyFull));

    let require_alone = tls("client_tls_sslmode = \"require\"\n".to_owned());
    assert_error(&require_alone, None, &["[tls] client_tls_cert_file", "must be set", "require"]);
    let no_key = tls(format!("client_tls_cert_file = \"{}\"\n", path("client.crt")));
    assert_error(&no_key, None, &["[tls] client_tls_key_file", "must be set"]);
    let no_ca = tls(format!("{files}client_tls_sslmode = \"verify-ca\"\n"));
    assert_error(&no_ca, None, &["[tls] client_tls_ca_file", "must be set", "verify-ca"]);
    let ca_unused = tls(format!("client_tls_ca_file = \"{}\"\n", path("ca.crt")));
    assert_error(&ca_unused, Some(line(&ca_unused, "client_tls_ca_file", 1)), &["client_tls_sslmode is \"disable\""]);
    let missing = tls(files.replace("client.key", "nosuch.key"));
    assert_error(
        &missing,
        Some(line(&missing, "client_tls_key_file", 1)),
        &["[tls] client_tls_key_file", "nosuch.key"],
    );
    let garbage = tls(files.replace("client.key", "garbage.key"));
    assert_error(&garbage, Some(line(&garbage, "client_tls_key_file", 1)), &["not a PEM private key"]);
    let expired = tls(files.replace("client.crt", "expired.crt"));
    assert_error(&expired, Some(line(&expired, "client_tls_cert_file", 1)), &["expired.crt", "not now"]);
    let other = tls(files.replace("client.key", "other.key"));
    assert_error(&other, Some(line(&other, "client_tls_key_file", 1)), &["client_tls_key_file", "does not fit"]);
    let not_a_ca = tls(verify.replace("ca.crt", "garbage.key"));
    assert_error(&not_a_ca, Some(line(&not_a_ca, "client_tls_ca_file", 1)), &["no PEM certificate"]);
    let mode = tls(format!("{files}client_tls_sslmode = \"on\"\n"));
    assert_error(&mode, Some(line(&mode, "client_tls_sslmode", 1)), &["\"allow\"", "\"verify-full\""]);
    let protocols = tls(format!("{files}client_tls_protocols = \"sslv3\"\n"));
    assert_error(&protocols, Some(line(&protocols, "client_tls_protocols", 1)), &["sslv3"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_node_application_name_is_one_to_63_bytes() {
    let node = |name: &str| format!("[[nodes]]\nname = \"pg1\"\nport = 1\napplication_name = \"{name}\"\n");
    for bad in [String::new(), "x".repeat(64)] {
        let text = with(&[NODE, &node(&bad), USER, DATABASE]);
        let at = line(&text, "application_name", 1);
        assert_error(&text, Some(at), &["[[nodes]] \"pg1\" application_name", "1 to 63 bytes"]);
    }
    let config = Config::parse(&with(&[NODE, &node("member-1"), USER, DATABASE])).expect("valid");
    assert_eq!(
        (config.nodes[0].application_name.as_str(), config.nodes[1].application_name.as_str()),
        ("pg0", "member-1")
    );
}
