//! Sans-IO PostgreSQL v3 protocol: frame headers with length checks, the
//! startup/SSL/cancel packets, and builders for the few messages pgrelay
//! produces itself. Nothing here touches a socket; messages that are only
//! forwarded are never decoded beyond their tag and length.

mod build;
mod startup;
#[cfg(test)]
mod tests;

pub use build::*;
pub use startup::*;

use bytes::Bytes;

/// Tags of messages a client sends.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share this tag.
    pub const PASSWORD: u8 = b'p';
}

/// Tags of messages a server sends.
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid message length {len} (a message length counts itself and is at least 4)")]
    LengthTooShort { len: u32 },
    #[error("message of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLong { len: usize, max: usize },
    #[error("invalid startup packet: {0}")]
    BadStartup(&'static str),
    #[error("invalid startup packet: more than {max} parameters (pgrelay's limit)")]
    TooManyStartupParameters { max: usize },
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unexpected message type '{}'", char::from(*.0))]
    UnexpectedTag(u8),
}

/// One complete tagged message found at the start of a buffer: its tag and
/// its whole length including the tag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub total_len: usize,
}

impl Frame {
    /// Checks the header at the start of `buf`. `Ok(None)` means more bytes
    /// are needed; a bad length is rejected before anything is allocated.
    #[inline]
    pub fn peek(buf: &[u8], max_len: usize) -> Result<Option<Frame>, WireError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(WireError::LengthTooShort { len });
        }
        let total_len = len as usize + 1;
        if total_len > max_len {
            return Err(WireError::TooLong { len: total_len, max: max_len });
        }
        if buf.len() < total_len {
            return Ok(None);
        }
        Ok(Some(Frame { tag: buf[0], total_len }))
    }

    /// Bytes the buffer needs before this header's message is complete.
    pub fn needed(buf: &[u8]) -> usize {
        if buf.len() < 5 {
            return 5 - buf.len();
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
        len.saturating_sub(buf.len())
    }
}

/// The body of a message (after tag and length).
#[inline]
pub fn body(msg: &[u8]) -> &[u8] {
    &msg[5..]
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the rest.
#[inline]
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Fields of an ErrorResponse/NoticeResponse that pgrelay reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let Some((value, tail)) = read_cstr(tail) else { break };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => fields.severity = value,
                b'S' if fields.severity.is_empty() => fields.severity = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                _ => {}
            }
            rest = tail;
        }
        fields
    }
}

/// The SQLSTATE ('C' field) of an ErrorResponse/NoticeResponse body, found
/// without allocating.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    error_field(body, b'C')
}

/// One field of an ErrorResponse/NoticeResponse body, found without allocating.
pub fn error_field(body: &[u8], field: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let (value, tail) = read_cstr(tail)?;
        if kind == field {
            return Some(value);
        }
        rest = tail;
    }
    None
}

/// A FATAL or PANIC ErrorResponse: the server closes the connection after it.
pub fn is_fatal_error(body: &[u8]) -> bool {
    matches!(error_field(body, b'V').or_else(|| error_field(body, b'S')), Some(b"FATAL" | b"PANIC"))
}

/// Whether an ErrorResponse body is the FATAL a server sends as it goes
/// away or refuses to go on (shutdown, crash, recovery, lost connection):
/// what it says ends the server connection, not the client's transaction's
/// fate.
pub fn is_server_going_away(body: &[u8]) -> bool {
    is_fatal_error(body) && matches!(error_code(body), Some(b"57P01" | b"57P02" | b"57P03" | b"08006"))
}

/// Splits the first complete message off `bytes` (used where messages are
/// handled one at a time, e.g. during startup).
pub fn split_message(buf: &mut bytes::BytesMut, max_len: usize) -> Result<Option<Bytes>, WireError> {
    match Frame::peek(buf, max_len)? {
        Some(frame) => Ok(Some(buf.split_to(frame.total_len).freeze())),
        None => Ok(None),
    }
}
