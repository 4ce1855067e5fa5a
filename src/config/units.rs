//! Parsing of the value syntaxes the config shares: durations (`"250ms"`),
//! sizes (`"16MB"`, PostgreSQL's units) and listen addresses. Errors are the
//! tail of a message; the caller adds the key and line.

use std::net::SocketAddr;
use std::time::Duration;

const KB: u64 = 1024;

/// Size units as PostgreSQL spells them (`kB` = 1024), plus the `KB` and
/// IEC spellings people write out of habit, all binary.
const SIZE_UNITS: [(&str, u64); 10] = [
    ("B", 1),
    ("kB", KB),
    ("KB", KB),
    ("KiB", KB),
    ("MB", KB * KB),
    ("MiB", KB * KB),
    ("GB", KB * KB * KB),
    ("GiB", KB * KB * KB),
    ("TB", KB * KB * KB * KB),
    ("TiB", KB * KB * KB * KB),
];

/// A humantime duration: `"30s"`, `"250ms"`, `"10m"`, `"1h 30m"`.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("invalid duration {text:?} (use e.g. \"30s\" or \"250ms\")"))
}

/// A size in bytes: digits, optionally followed by a unit (`"16MB"`,
/// `"512 kB"`, `"8192"`).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!("invalid size {text:?} (use e.g. \"16MB\", \"512kB\" or a number of bytes; units B, kB, MB, GB, TB)")
    };
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let unit = unit.trim_start();
    let multiplier = match unit {
        "" => 1,
        _ => SIZE_UNITS.iter().find(|(name, _)| *name == unit).map(|(_, m)| *m).ok_or_else(invalid)?,
    };
    let number: u64 = digits.parse().map_err(|_| format!("size {text:?} is too large"))?;
    number.checked_mul(multiplier).ok_or_else(|| format!("size {text:?} is too large"))
}

/// A size given as a TOML integer: bytes, and not negative.
pub(super) fn size_from_int(bytes: i64) -> Result<u64, String> {
    u64::try_from(bytes).map_err(|_| format!("size must not be negative (got {bytes})"))
}

/// An IP address and port; host names are not resolved for listeners.
pub(super) fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("invalid address {text:?} (use an IP address and port, e.g. \"127.0.0.1:5432\")"))
}

/// Whether two listeners could not both bind: same non-zero port on the
/// same IP, or on an unspecified IP that covers the other (`0.0.0.0` covers
/// IPv4, `::` covers both families on a dual-stack host).
pub(super) fn listeners_collide(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}
