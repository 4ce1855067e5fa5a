//! Raw serde types mirroring `config/pgrelay.toml` key for key. Every value is
//! kept loose here (strings, `i64`) so that `validate` can reject it with a
//! message naming the key and line, rather than serde's generic wording.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Sections that are one table (`[pool]`); their keys can be overridden from
/// the environment.
pub(super) const TABLES: [&str; 7] = ["listen", "pool", "routing", "cluster", "admin", "tls", "auth"];
/// Sections that are lists of tables (`[[nodes]]`).
pub(super) const LISTS: [&str; 3] = ["nodes", "users", "databases"];

/// Keys whose TOML type is an integer, so an environment override's text is
/// parsed as one. Every other table key takes a string (sizes take either).
pub(super) const INTEGER_KEYS: [(&str, &str); 19] = [
    ("pool", "default_pool_size"),
    ("pool", "min_pool_size"),
    ("pool", "reserve_pool_size"),
    ("pool", "max_db_connections"),
    ("pool", "max_user_connections"),
    ("pool", "workers"),
    ("pool", "max_client_conn"),
    ("pool", "max_prepared_statements"),
    ("pool", "max_client_prepared_statements"),
    ("pool", "max_pre_auth_conn"),
    ("pool", "max_pre_auth_conn_per_addr"),
    ("pool", "tcp_keepcnt"),
    ("routing", "causal_max_ids"),
    ("cluster", "leave_after_checks"),
    ("cluster", "rejoin_after_checks"),
    ("cluster", "server_scram_max_iterations"),
    ("auth", "auth_cache_size"),
    ("auth", "auth_query_concurrency"),
    ("auth", "auth_query_rate"),
];

/// Keys whose TOML type is a boolean; an environment override gives `true` or `false`.
pub(super) const BOOL_KEYS: [(&str, &str); 2] = [("pool", "tcp_keepalive"), ("pool", "application_name_add_host")];

/// Keys whose TOML type is a list of strings; an environment override gives
/// them comma-separated.
pub(super) const LIST_KEYS: [(&str, &str); 2] = [("admin", "admin_users"), ("admin", "stats_users")];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub listen: RawListen,
    pub pool: RawPool,
    pub routing: RawRouting,
    pub cluster: RawCluster,
    pub admin: RawAdmin,
    pub tls: RawTls,
    pub auth: RawAuth,
    pub nodes: Vec<RawNode>,
    pub users: Vec<RawUser>,
    pub databases: Vec<RawDatabase>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub rw: Option<String>,
    pub ro: Option<String>,
    pub http: Option<String>,
    pub http_header_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub mode: Option<String>,
    pub default_pool_size: Option<RawInt>,
    pub max_client_conn: Option<RawInt>,
    pub max_pre_auth_conn: Option<RawInt>,
    pub max_pre_auth_conn_per_addr: Option<RawInt>,
    pub query_wait_timeout: Option<RawDuration>,
    pub server_connect_timeout: Option<RawDuration>,
    pub server_reset_timeout: Option<RawDuration>,
    pub server_idle_timeout: Option<RawDuration>,
    pub server_lifetime: Option<RawDuration>,
    pub server_check_delay: Option<RawDuration>,
    pub min_pool_size: Option<RawInt>,
    pub reserve_pool_size: Option<RawInt>,
    pub reserve_pool_timeout: Option<RawDuration>,
    pub max_db_connections: Option<RawInt>,
    pub max_user_connections: Option<RawInt>,
    pub client_login_timeout: Option<RawDuration>,
    pub max_message_size: Option<RawSize>,
    pub session_state: Option<String>,
    pub max_prepared_statements: Option<RawInt>,
    pub max_client_prepared_statements: Option<RawInt>,
    pub shutdown_grace: Option<RawDuration>,
    pub workers: Option<RawInt>,
    pub tcp_keepalive: Option<bool>,
    pub tcp_keepidle: Option<RawDuration>,
    pub tcp_keepintvl: Option<RawDuration>,
    pub tcp_keepcnt: Option<RawInt>,
    pub tcp_user_timeout: Option<RawDuration>,
    pub application_name_add_host: Option<bool>,
    // Client timeouts, PgBouncer's names.
    pub client_idle_timeout: Option<RawDuration>,
    pub idle_transaction_timeout: Option<RawDuration>,
    pub query_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub admin_users: Option<Vec<String>>,
    pub stats_users: Option<Vec<String>>,
    pub stats_period: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub server_tls_sslmode: Option<String>,
    pub server_tls_ca_file: Option<String>,
    pub server_tls_cert_file: Option<String>,
    pub server_tls_key_file: Option<String>,
    pub server_tls_protocols: Option<String>,
    pub client_tls_sslmode: Option<String>,
    pub client_tls_cert_file: Option<String>,
    pub client_tls_key_file: Option<String>,
    pub client_tls_ca_file: Option<String>,
    pub client_tls_protocols: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    pub auth_dbname: Option<String>,
    pub auth_query: Option<String>,
    pub auth_type: Option<String>,
    pub auth_cache_ttl: Option<RawDuration>,
    pub auth_cache_size: Option<RawInt>,
    pub auth_query_concurrency: Option<RawInt>,
    pub auth_query_rate: Option<RawInt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    pub max_replica_lag_bytes: Option<RawSize>,
    pub max_replica_lag: Option<RawDuration>,
    pub ro_fallback: Option<String>,
    pub prefer: Option<String>,
    pub read_your_writes_wait: Option<RawDuration>,
    pub causal_expiry: Option<RawDuration>,
    pub causal_max_ids: Option<RawInt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub source: Option<String>,
    pub check_interval: Option<RawDuration>,
    pub check_timeout: Option<RawDuration>,
    pub leave_after_checks: Option<RawInt>,
    pub rejoin_after_checks: Option<RawInt>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub server_require_auth: Option<String>,
    pub server_scram_max_iterations: Option<RawInt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<RawInt>,
    pub role: Option<String>,
    pub patroni: Option<String>,
    pub server_require_auth: Option<String>,
    pub application_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub name: Option<String>,
    pub password: Option<String>,
    pub auth_type: Option<String>,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
    pub server_password_from_cluster: Option<bool>,
    pub pool_size: Option<RawInt>,
    pub pool_mode: Option<String>,
    pub max_user_connections: Option<RawInt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub name: Option<String>,
    pub dbname: Option<String>,
    pub pool_size: Option<RawInt>,
    pub pool_mode: Option<String>,
    pub max_db_connections: Option<RawInt>,
}

/// A TOML integer; its own type so a type error says "an integer", not "i64".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawInt(pub i64);

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;
        impl Visitor<'_> for IntVisitor {
            type Value = RawInt;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInt, E> {
                i64::try_from(v).map(RawInt).map_err(|_| E::custom("integer is too large"))
            }
        }
        deserializer.deserialize_any(IntVisitor)
    }
}

/// A duration as written (`"30s"`); its own type so that `timeout = 30`
/// is answered with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawDuration(pub String);

impl std::ops::Deref for RawDuration {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"30s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A size as written: `"16MB"` or a plain number of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16MB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                i64::try_from(v).map(RawSize::Bytes).map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// The keys a section accepts, or `None` for an unknown section.
pub(super) fn keys(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "listen" => keys_of::<RawListen>(),
        "pool" => keys_of::<RawPool>(),
        "routing" => keys_of::<RawRouting>(),
        "cluster" => keys_of::<RawCluster>(),
        "admin" => keys_of::<RawAdmin>(),
        "tls" => keys_of::<RawTls>(),
        "auth" => keys_of::<RawAuth>(),
        "nodes" => keys_of::<RawNode>(),
        "users" => keys_of::<RawUser>(),
        "databases" => keys_of::<RawDatabase>(),
        _ => return None,
    })
}

/// The field names of a derived `Deserialize` struct, read by asking it to
/// deserialize from a probe. Keeps the unknown-key check and the environment
/// overrides in step with the structs above without a second list.
pub(super) fn keys_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let fields = Cell::new(&[][..]);
    let _probe_always_fails = T::deserialize(FieldProbe(&fields));
    fields.get()
}

struct FieldProbe<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}
