//! The untagged packets a client may open a connection with.

use bytes::{Buf, Bytes};

use super::{read_cstr, WireError};

pub const PROTOCOL_VERSION_3: u32 = 196_608;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// PostgreSQL's own limit for a startup packet.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// pgrelay's limit on the parameters of a StartupMessage (user and database
/// included). PostgreSQL has none, but each setting is applied on every
/// server connection a client uses, so a client's cost must be bounded.
pub const MAX_STARTUP_PARAMETERS: usize = 64;

/// A Terminate message, which a client may send where its startup packet belongs.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// What a client opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(StartupParams),
    SslRequest,
    GssEncRequest,
    Cancel { pid: u32, secret: u32 },
}

/// What the start of a connection's buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupPeek {
    /// More bytes are needed.
    Incomplete,
    /// A packet of this many bytes (its length word included).
    Packet(usize),
    /// A Terminate instead of a startup packet: the client is leaving.
    Terminate,
}

/// Parameters of a StartupMessage, in the order the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub user: String,
    pub database: String,
    /// Everything else (application_name, options, client_encoding, ...).
    pub settings: Vec<(String, String)>,
}

impl StartupPacket {
    /// What starts `buf`: the length of a packet once its 4-byte length is
    /// there, rejecting lengths outside PostgreSQL's own bounds, or a
    /// Terminate. (A Terminate's first four bytes read as a length far above
    /// the bound, so the two are never confused.)
    pub fn peek(buf: &[u8]) -> Result<StartupPeek, WireError> {
        let seen = buf.len().min(TERMINATE.len());
        if seen > 0 && buf[..seen] == TERMINATE[..seen] {
            return Ok(if seen == TERMINATE.len() { StartupPeek::Terminate } else { StartupPeek::Incomplete });
        }
        if buf.len() < 4 {
            return Ok(StartupPeek::Incomplete);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if !(8..=MAX_STARTUP_PACKET).contains(&len) {
            return Err(WireError::BadStartup("invalid length"));
        }
        Ok(StartupPeek::Packet(len))
    }

    /// Parses one whole packet (length prefix included).
    pub fn parse(mut packet: Bytes) -> Result<StartupPacket, WireError> {
        packet.advance(4);
        let code = packet.get_u32();
        match code {
            SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
            GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
            CANCEL_REQUEST_CODE => {
                if packet.len() != 8 {
                    return Err(WireError::BadStartup("cancel request of wrong length"));
                }
                Ok(StartupPacket::Cancel { pid: packet.get_u32(), secret: packet.get_u32() })
            }
            PROTOCOL_VERSION_3 => parse_params(&packet).map(StartupPacket::Startup),
            v if v >> 16 == 3 => parse_params(&packet).map(StartupPacket::Startup),
            _ => Err(WireError::BadStartup("unsupported protocol version")),
        }
    }
}

/// One pass over the parameters, stopping at the first beyond the limit.
fn parse_params(mut rest: &[u8]) -> Result<StartupParams, WireError> {
    let mut params = StartupParams::default();
    let mut count = 0;
    loop {
        let (key, tail) = read_cstr(rest).ok_or(WireError::BadStartup("parameters not terminated"))?;
        if key.is_empty() {
            // As PostgreSQL: nothing may follow the list's terminator.
            if !tail.is_empty() {
                return Err(WireError::BadStartup("expected terminator as last byte"));
            }
            break;
        }
        count += 1;
        if count > MAX_STARTUP_PARAMETERS {
            return Err(WireError::TooManyStartupParameters { max: MAX_STARTUP_PARAMETERS });
        }
        let (value, tail) = read_cstr(tail).ok_or(WireError::BadStartup("parameter without value"))?;
        let key = std::str::from_utf8(key).map_err(|_| WireError::BadStartup("parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value).map_err(|_| WireError::BadStartup("parameter value is not UTF-8"))?;
        match key {
            "user" => params.user = value.to_owned(),
            "database" => params.database = value.to_owned(),
            _ => params.settings.push((key.to_owned(), value.to_owned())),
        }
        rest = tail;
    }
    if params.user.is_empty() {
        return Err(WireError::NoUser);
    }
    if params.database.is_empty() {
        params.database = params.user.clone();
    }
    Ok(params)
}
