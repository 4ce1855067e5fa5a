//! The lists `[[nodes]]`, `[[users]]` and `[[databases]]` -> validated types,
//! with the rules that span entries: at least one entry, unique names, unique
//! node addresses, and exactly one primary when roles are static.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use super::locate::{error_at, Locations, Origin};
use super::raw::{RawDatabase, RawInt, RawNode, RawUser};
use super::validate::choice;
use super::{AuthType, Cluster, ConfigError, Database, Node, PoolMode, RequireAuth, Role, Source, User};

/// One entry of a list while it is validated: names it in errors.
struct EntryRef<'a> {
    locations: &'a Locations<'a>,
    list: &'static str,
    index: usize,
    name: String,
}

impl EntryRef<'_> {
    fn label(&self) -> String {
        format!("[[{}]] {:?}", self.list, self.name)
    }

    /// An error about one key of the entry, at that key's line.
    fn key_error(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        let origin = self.locations.entry_key(self.list, self.index, key);
        error_at(&origin, format!("{} {key}", self.label()), message)
    }

    /// An error about the entry as a whole, at its `[[list]]` line.
    fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{}{} {message}", line_prefix(&self.locations.entry(self.list, self.index)), self.label()))
    }
}

fn line_prefix(origin: &Origin) -> String {
    origin.line().map(|line| format!("line {line}: ")).unwrap_or_default()
}

fn lines_of(locations: &Locations<'_>, list: &str, key: &str, first: usize, second: usize) -> String {
    match (locations.entry_key(list, first, key).line(), locations.entry_key(list, second, key).line()) {
        (Some(a), Some(b)) => format!("lines {a} and {b}"),
        _ => format!("entries {} and {}", first + 1, second + 1),
    }
}

/// Validates each entry of a list with `build`, after checking the list is
/// not empty and each name is present and unique.
fn build_list<R, T>(
    list: &'static str,
    raws: Vec<R>,
    locations: &Locations<'_>,
    name_of: impl Fn(&R) -> Option<&str>,
    mut build: impl FnMut(R, &EntryRef<'_>) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    if raws.is_empty() {
        return Err(ConfigError(format!("no [[{list}]] entries: at least one is required")));
    }
    let mut first_index: HashMap<String, usize> = HashMap::new();
    let mut built = Vec::with_capacity(raws.len());
    for (index, raw) in raws.into_iter().enumerate() {
        let origin = locations.entry_key(list, index, "name");
        let name = match name_of(&raw) {
            None => {
                let message = format!("[[{list}]] entry has no name (add name = \"...\")");
                return Err(ConfigError(format!("{}{message}", line_prefix(&locations.entry(list, index)))));
            }
            Some("") => return Err(error_at(&origin, format!("[[{list}]] name"), "must not be empty")),
            Some(name) => name.to_owned(),
        };
        if let Some(first) = first_index.get(&name) {
            let lines = lines_of(locations, list, "name", *first, index);
            let message = format!("[[{list}]] name {name:?} appears twice ({lines})");
            return Err(ConfigError(format!("{}{message}", line_prefix(&origin))));
        }
        first_index.insert(name.clone(), index);
        built.push(build(raw, &EntryRef { locations, list, index, name })?);
    }
    Ok(built)
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Postgres => "postgres",
        Source::Patroni => "patroni",
        Source::Static => "static",
    }
}

pub(super) fn nodes(
    raws: Vec<RawNode>,
    cluster: &Cluster,
    locations: &Locations<'_>,
) -> Result<Vec<Node>, ConfigError> {
    let source = cluster.source;
    let nodes = build_list("nodes", raws, locations, |r| r.name.as_deref(), |raw, entry| node(raw, entry, cluster))?;
    let mut seen: HashMap<(String, u16), usize> = HashMap::new();
    for (index, node) in nodes.iter().enumerate() {
        if let Some(&first) = seen.get(&(node.host.to_ascii_lowercase(), node.port)) {
            let lines = match (locations.entry("nodes", first).line(), locations.entry("nodes", index).line()) {
                (Some(a), Some(b)) => format!("lines {a} and {b}"),
                _ => format!("entries {} and {}", first + 1, index + 1),
            };
            let message = format!(
                "[[nodes]] {:?} has the same host and port ({}:{}) as {:?} ({lines})",
                node.name, node.host, node.port, nodes[first].name
            );
            return Err(ConfigError(format!("{}{message}", line_prefix(&locations.entry("nodes", index)))));
        }
        seen.insert((node.host.to_ascii_lowercase(), node.port), index);
    }
    if source == Source::Static {
        check_one_primary(&nodes, locations)?;
    }
    Ok(nodes)
}

fn node(raw: RawNode, entry: &EntryRef<'_>, cluster: &Cluster) -> Result<Node, ConfigError> {
    let source = cluster.source;
    let host = raw.host.unwrap_or_else(|| "127.0.0.1".to_owned());
    if host.is_empty() {
        return Err(entry.key_error("host", "must not be empty"));
    }
    let port = match raw.port.map(|n| n.0) {
        None => 5432,
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| entry.key_error("port", format!("{port} is not a valid port (1-65535)")))?,
    };
    let roles = [("primary", Role::Primary), ("replica", Role::Replica)];
    let role = match raw.role.as_deref() {
        Some(text) => Some(choice(Some(text), Role::Replica, &roles, |m| entry.key_error("role", m))?),
        None => None,
    };
    match (source, role) {
        (Source::Static, None) => {
            return Err(entry.error(
                "has no role; with [cluster] source = \"static\" every node needs role = \"primary\" or \"replica\"",
            ))
        }
        (Source::Postgres | Source::Patroni, Some(_)) => {
            let here = source_name(source);
            // Since "postgres" became the default, a file with roles and no
            // source needs one line added: say which.
            let message = if entry.locations.key("cluster", "source") == Origin::Default {
                format!(
                    "only allowed with [cluster] source = \"static\" (source is {here:?}, the default; add \
                     [cluster] source = \"static\" to keep static roles)"
                )
            } else {
                format!("only allowed with [cluster] source = \"static\" (here source = {here:?})")
            };
            return Err(entry.key_error("role", message));
        }
        _ => {}
    }
    let patroni = check_patroni(raw.patroni, entry, source)?;
    let server_require_auth = match raw.server_require_auth.as_deref() {
        Some(text) => RequireAuth::parse(text).map_err(|e| entry.key_error("server_require_auth", e))?,
        None => cluster.server_require_auth,
    };
    let application_name = match raw.application_name {
        Some(name) if name.is_empty() || name.len() >= 64 => {
            return Err(entry.key_error("application_name", "must be 1 to 63 bytes, as PostgreSQL keeps it"));
        }
        Some(name) => name,
        None => entry.name.clone(),
    };
    Ok(Node { name: entry.name.clone(), host, port, role, patroni, server_require_auth, application_name })
}

fn check_patroni(url: Option<String>, entry: &EntryRef<'_>, source: Source) -> Result<Option<String>, ConfigError> {
    match (source, url) {
        (Source::Patroni, None) => Err(entry.error(
            "has no patroni URL; with [cluster] source = \"patroni\" every node needs patroni = \"http://<host>:8008\"",
        )),
        (Source::Patroni, Some(url)) => match url.strip_prefix("http://") {
            Some(rest) if !rest.is_empty() => Ok(Some(url)),
            _ => Err(entry.key_error(
                "patroni",
                format!("invalid URL {url:?}: must start with http:// (e.g. \"http://10.0.0.1:8008\")"),
            )),
        },
        (_, Some(_)) => {
            let here = source_name(source);
            let message = format!("only allowed with [cluster] source = \"patroni\" (here source = {here:?})");
            Err(entry.key_error("patroni", message))
        }
        (_, None) => Ok(None),
    }
}

fn check_one_primary(nodes: &[Node], locations: &Locations<'_>) -> Result<(), ConfigError> {
    let primaries: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].role == Some(Role::Primary)).collect();
    match primaries[..] {
        [] => Err(ConfigError(
            "no [[nodes]] entry has role = \"primary\": with [cluster] source = \"static\" exactly one node must be \
             the primary"
                .to_owned(),
        )),
        [_] => Ok(()),
        [first, second, ..] => {
            let origin = locations.entry_key("nodes", second, "role");
            let lines = lines_of(locations, "nodes", "role", first, second);
            let message = format!(
                "{:?} and {:?} both have role = \"primary\" ({lines}); with [cluster] source = \"static\" exactly \
                 one node is the primary",
                nodes[first].name, nodes[second].name
            );
            Err(error_at(&origin, "[[nodes]] role", message))
        }
    }
}

/// `may_be_empty` when users are looked up in the database (`[auth]`).
pub(super) fn users(
    raws: Vec<RawUser>,
    cluster: &Cluster,
    locations: &Locations<'_>,
    may_be_empty: bool,
) -> Result<Vec<User>, ConfigError> {
    if raws.is_empty() && may_be_empty {
        return Ok(Vec::new());
    }
    build_list("users", raws, locations, |r| r.name.as_deref(), |raw, entry| user(raw, entry, cluster))
}

fn user(raw: RawUser, entry: &EntryRef<'_>, cluster: &Cluster) -> Result<User, ConfigError> {
    let types = [("scram-sha-256", AuthType::ScramSha256), ("md5", AuthType::Md5), ("trust", AuthType::Trust)];
    let auth_type =
        choice(raw.auth_type.as_deref(), AuthType::ScramSha256, &types, |m| entry.key_error("auth_type", m))?;
    check_password(auth_type, raw.password.as_deref(), entry)?;
    if raw.server_user.as_deref() == Some("") {
        return Err(entry.key_error("server_user", "must not be empty (leave it out to use the user's own name)"));
    }
    let server_password_from_cluster = raw.server_password_from_cluster.unwrap_or(false);
    if server_password_from_cluster && raw.server_password.is_some() {
        return Err(entry.key_error(
            "server_password_from_cluster",
            "cannot be combined with server_password: say which password logs in to the servers",
        ));
    }
    if server_password_from_cluster && cluster.password.is_empty() {
        return Err(entry.key_error(
            "server_password_from_cluster",
            "[cluster] password is empty (set it, or PGRELAY_CLUSTER_PASSWORD, or leave this out)",
        ));
    }
    Ok(User {
        name: entry.name.clone(),
        password: raw.password,
        auth_type,
        server_user: raw.server_user,
        server_password: raw.server_password,
        server_password_from_cluster,
        pool_size: positive(raw.pool_size, entry, "pool_size")?,
        pool_mode: pool_mode(raw.pool_mode.as_deref(), entry)?,
        max_user_connections: positive(raw.max_user_connections, entry, "max_user_connections")?,
    })
}

/// An entry's own pool mode, when given.
fn pool_mode(value: Option<&str>, entry: &EntryRef<'_>) -> Result<Option<PoolMode>, ConfigError> {
    let modes = [("transaction", Some(PoolMode::Transaction)), ("session", Some(PoolMode::Session))];
    choice(value, None, &modes, |m| entry.key_error("pool_mode", m))
}

/// An entry's own count that must be above 0 when given (else `[pool]`'s applies).
fn positive(value: Option<RawInt>, entry: &EntryRef<'_>, key: &str) -> Result<Option<NonZeroUsize>, ConfigError> {
    let Some(RawInt(value)) = value else { return Ok(None) };
    let positive = usize::try_from(value).ok().and_then(NonZeroUsize::new);
    positive.map(Some).ok_or_else(|| entry.key_error(key, format!("must be greater than 0 (got {value})")))
}

/// Whether `password` can serve `auth_type`. Messages never quote the
/// password itself.
fn check_password(auth_type: AuthType, password: Option<&str>, entry: &EntryRef<'_>) -> Result<(), ConfigError> {
    if password.is_some_and(|p| p.starts_with(SCRAM_PREFIX) && !scram_verifier_shape_ok(p)) {
        return Err(entry.key_error(
            "password",
            "malformed SCRAM-SHA-256 verifier (expected \"SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>\" \
             as stored in pg_authid)",
        ));
    }
    let message = match (auth_type, password) {
        (AuthType::Trust, _) => return Ok(()),
        (_, None) => {
            let kind = if auth_type == AuthType::Md5 { "md5" } else { "scram-sha-256" };
            return Err(entry.error(format!(
                "has no password; auth_type = {kind:?} needs one (plain text, a \"SCRAM-SHA-256$...\" verifier or an \
                 \"md5...\" hash), or use auth_type = \"trust\""
            )));
        }
        (_, Some("")) => "must not be empty",
        (AuthType::Md5, Some(p)) if p.starts_with(SCRAM_PREFIX) => {
            "a SCRAM-SHA-256 verifier cannot answer md5 authentication; give the plain text password or its \
             \"md5...\" hash, or use auth_type = \"scram-sha-256\""
        }
        (AuthType::ScramSha256, Some(p)) if is_md5_hash(p) => {
            "an md5 hash cannot verify SCRAM-SHA-256 authentication; give the plain text password or a \
             \"SCRAM-SHA-256$...\" verifier, or use auth_type = \"md5\""
        }
        _ => return Ok(()),
    };
    Err(entry.key_error("password", message))
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`; only the
/// shape: the auth layer decodes it.
fn scram_verifier_shape_ok(text: &str) -> bool {
    let Some((iterations_salt, keys)) = text.strip_prefix(SCRAM_PREFIX).and_then(|r| r.split_once('$')) else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored_key, server_key))) =
        (iterations_salt.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    iterations.parse::<u32>().is_ok_and(|n| n > 0) && ![salt, stored_key, server_key].contains(&"")
}

/// `md5` followed by 32 hex digits, as PostgreSQL stores md5 passwords.
fn is_md5_hash(text: &str) -> bool {
    text.len() == 35 && text.starts_with("md5") && text[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn databases(raws: Vec<RawDatabase>, locations: &Locations<'_>) -> Result<Vec<Database>, ConfigError> {
    build_list(
        "databases",
        raws,
        locations,
        |r| r.name.as_deref(),
        |raw, entry| {
            if ["pgrelay", "pgbouncer"].contains(&entry.name.as_str()) {
                return Err(entry.key_error("name", "is reserved for the admin console"));
            }
            let server_dbname = raw.dbname.unwrap_or_else(|| entry.name.clone());
            if server_dbname.is_empty() {
                return Err(entry.key_error("dbname", "must not be empty (leave it out to use the name)"));
            }
            let pool_size = positive(raw.pool_size, entry, "pool_size")?;
            let pool_mode = pool_mode(raw.pool_mode.as_deref(), entry)?;
            let max_db_connections = positive(raw.max_db_connections, entry, "max_db_connections")?;
            Ok(Database { name: entry.name.clone(), server_dbname, pool_size, pool_mode, max_db_connections })
        },
    )
}
