//! The console's commands and their parsing: case-insensitive words, with
//! trailing `;` and whitespace allowed. Parsing is pure; running is not.

use crate::app::StopMode;

/// What SHOW can list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Stats,
    StatsTotals,
    StatsAverages,
    Servers,
    Clients,
    Databases,
    Config,
    Lists,
    Users,
    Nodes,
    Version,
}

impl Show {
    const ALL: [(&'static str, Show); 12] = [
        ("POOLS", Show::Pools),
        ("STATS", Show::Stats),
        ("STATS_TOTALS", Show::StatsTotals),
        ("STATS_AVERAGES", Show::StatsAverages),
        ("SERVERS", Show::Servers),
        ("CLIENTS", Show::Clients),
        ("DATABASES", Show::Databases),
        ("CONFIG", Show::Config),
        ("LISTS", Show::Lists),
        ("USERS", Show::Users),
        ("NODES", Show::Nodes),
        ("VERSION", Show::Version),
    ];
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string (or only `;`).
    Empty,
    Show(Show),
    /// `SHOW HELP`: answered with a notice, as PgBouncer does.
    Help,
    Pause,
    Resume,
    /// `PAUSE db` / `RESUME db`: recognised, so the answer can say it is unsupported.
    PerDatabase {
        command: &'static str,
        database: String,
    },
    Reload,
    Shutdown(StopMode),
}

impl Command {
    /// The command's name for logs and permission errors, for commands that
    /// change pgrelay (only `admin_users` may run them); `None` for SHOW.
    pub fn control_name(&self) -> Option<&'static str> {
        match self {
            Command::Empty | Command::Show(_) | Command::Help => None,
            Command::Pause => Some("PAUSE"),
            Command::Resume => Some("RESUME"),
            Command::PerDatabase { command, .. } => Some(command),
            Command::Reload => Some("RELOAD"),
            Command::Shutdown(StopMode::Immediate) => Some("SHUTDOWN"),
            Command::Shutdown(StopMode::WaitForServers) => Some("SHUTDOWN WAIT_FOR_SERVERS"),
            Command::Shutdown(StopMode::WaitForClients) => Some("SHUTDOWN WAIT_FOR_CLIENTS"),
        }
    }
}

/// A query that is not a console command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the admin console runs one command per query")]
    MoreThanOne,
    #[error("unknown admin console command \"{0}\"; the commands are: {USAGE}")]
    Unknown(String),
}

/// Every command, for errors and SHOW HELP.
pub const USAGE: &str = "SHOW POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|SERVERS|CLIENTS|DATABASES|CONFIG|LISTS|USERS|\
                         NODES|VERSION|HELP, PAUSE, RESUME, RELOAD, SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]";

/// Parses one simple-query string.
pub fn parse(query: &str) -> Result<Command, ParseError> {
    let text = query.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    if text.contains(';') {
        return Err(ParseError::MoreThanOne);
    }
    let words: Vec<String> = text.split_whitespace().map(str::to_ascii_uppercase).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let unknown = || ParseError::Unknown(text.trim().to_owned());
    let command = match words.as_slice() {
        [] => Command::Empty,
        ["SHOW", "HELP"] => Command::Help,
        ["SHOW", what] => {
            Show::ALL.iter().find(|(name, _)| name == what).map(|(_, s)| Command::Show(*s)).ok_or_else(unknown)?
        }
        ["PAUSE"] => Command::Pause,
        ["RESUME"] => Command::Resume,
        [verb @ ("PAUSE" | "RESUME"), _] => {
            // The name as written: database names are case-sensitive.
            let database = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let command = if *verb == "PAUSE" { "PAUSE" } else { "RESUME" };
            Command::PerDatabase { command, database }
        }
        ["RELOAD"] => Command::Reload,
        ["SHUTDOWN"] => Command::Shutdown(StopMode::Immediate),
        ["SHUTDOWN", "WAIT_FOR_SERVERS"] => Command::Shutdown(StopMode::WaitForServers),
        ["SHUTDOWN", "WAIT_FOR_CLIENTS"] => Command::Shutdown(StopMode::WaitForClients),
        _ => return Err(unknown()),
    };
    Ok(command)
}
