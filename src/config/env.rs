//! Environment overrides: `PGRELAY_<SECTION>_<KEY>` sets one key of the
//! single-table sections (`PGRELAY_POOL_DEFAULT_POOL_SIZE=5`). They are
//! applied to the parsed document before it is deserialized, so they go
//! through exactly the validation a value in the file gets.

use toml_edit::{Item, Table, Value};

use super::locate::Locations;
use super::raw::{self, BOOL_KEYS, INTEGER_KEYS, LIST_KEYS, TABLES};
use super::ConfigError;

const PREFIX: &str = "PGRELAY_";

/// One override, already typed for its key.
#[derive(Debug, Clone)]
pub(super) struct Override {
    pub var: String,
    pub section: &'static str,
    pub key: &'static str,
    pub value: Value,
}

/// Picks the overrides out of `env`, in name order. A variable named like a
/// section override (`PGRELAY_POOL_...`) that names no key of that section is
/// an error; other variables, `PGRELAY_LOG` among them, are ignored.
pub(super) fn overrides(env: impl IntoIterator<Item = (String, String)>) -> Result<Vec<Override>, ConfigError> {
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(name, _)| name.starts_with(PREFIX)).collect();
    vars.sort();
    let mut overrides = Vec::new();
    for (var, text) in vars {
        let Some((section, key_name)) = split_name(&var) else { continue };
        let known = raw::keys(section).unwrap_or_default();
        let Some(key) = known.iter().copied().find(|k| k.eq_ignore_ascii_case(key_name)) else {
            let key = key_name.to_ascii_lowercase();
            return Err(ConfigError(format!(
                "{var}: unknown setting: [{section}] has no key {key:?} (known keys: {})",
                known.join(", ")
            )));
        };
        let value = if INTEGER_KEYS.contains(&(section, key)) {
            let number = text
                .trim()
                .parse::<i64>()
                .map_err(|_| ConfigError(format!("{var}: [{section}] {key}: expected an integer, got {text:?}")))?;
            Value::from(number)
        } else if BOOL_KEYS.contains(&(section, key)) {
            let flag = match text.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ConfigError(format!("{var}: [{section}] {key}: expected true or false, got {text:?}")))
                }
            };
            Value::from(flag)
        } else if LIST_KEYS.contains(&(section, key)) {
            Value::Array(text.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
        } else {
            Value::from(text)
        };
        overrides.push(Override { var, section, key, value });
    }
    Ok(overrides)
}

/// `PGRELAY_POOL_MODE` -> `("pool", "MODE")`; `None` for variables that are
/// not about a section.
fn split_name(var: &str) -> Option<(&'static str, &str)> {
    let rest = var.strip_prefix(PREFIX)?;
    TABLES.iter().find_map(|section| {
        let after = rest.get(..section.len()).filter(|head| head.eq_ignore_ascii_case(section))?;
        rest[after.len()..].strip_prefix('_').map(|key| (*section, key))
    })
}

/// Writes the overrides into the document `root` and records them in
/// `locations`, so errors about these keys name the variable, not a line.
pub(super) fn apply(root: &mut Item, overrides: Vec<Override>, locations: &mut Locations<'_>) {
    for Override { var, section, key, value } in overrides {
        let Some(root) = root.as_table_like_mut() else { return };
        if !root.contains_key(section) {
            let mut table = Table::new();
            table.set_implicit(true);
            root.insert(section, Item::Table(table));
        }
        // The scan already rejected a section that is not a table.
        if let Some(table) = root.get_mut(section).and_then(Item::as_table_like_mut) {
            table.insert(key, Item::Value(value));
            locations.note_env(section, key, &var);
        }
    }
}

/// The process's `PGRELAY_*` variables. A value that is not UTF-8 is an
/// error rather than skipped, so a password is never silently ignored.
pub(super) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok().filter(|n| n.starts_with(PREFIX))?;
            Some(match value.into_string() {
                Ok(value) => Ok((name, value)),
                Err(_) => Err(ConfigError(format!("{name}: value is not valid UTF-8"))),
            })
        })
        .collect()
}
