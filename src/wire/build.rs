//! Builders for the messages pgrelay originates itself. Forwarded messages
//! are never rebuilt.

use bytes::{BufMut, Bytes, BytesMut};

use super::{backend, frontend, TxStatus};

/// SQLSTATE codes pgrelay itself answers with.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const UNDEFINED_OBJECT: &str = "42704";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Writes the tag and a placeholder length, runs `body`, then patches the length.
fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let len_at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - len_at) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// An ErrorResponse with severity, SQLSTATE and message (and optional hint).
pub fn error_response(severity: Severity, code: &str, text: &str, hint: Option<&str>) -> Bytes {
    let mut buf = BytesMut::with_capacity(32 + text.len());
    put_error_response(&mut buf, severity, code, text, hint);
    buf.freeze()
}

pub fn put_error_response(buf: &mut BytesMut, severity: Severity, code: &str, text: &str, hint: Option<&str>) {
    message(buf, backend::ERROR_RESPONSE, |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str().as_bytes());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str().as_bytes());
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, text.as_bytes());
        if let Some(hint) = hint {
            b.put_u8(b'H');
            put_cstr(b, hint.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn put_auth_ok(buf: &mut BytesMut) {
    message(buf, backend::AUTHENTICATION, |b| b.put_u32(0));
}

pub fn put_auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, backend::AUTHENTICATION, |b| {
        b.put_u32(5);
        b.put_slice(&salt);
    });
}

pub fn put_auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, backend::AUTHENTICATION, |b| {
        b.put_u32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn put_auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, backend::AUTHENTICATION, |b| {
        b.put_u32(11);
        b.put_slice(data);
    });
}

pub fn put_auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, backend::AUTHENTICATION, |b| {
        b.put_u32(12);
        b.put_slice(data);
    });
}

pub fn put_parameter_status(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    message(buf, backend::PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn put_backend_key_data(buf: &mut BytesMut, pid: u32, secret: u32) {
    message(buf, backend::BACKEND_KEY_DATA, |b| {
        b.put_u32(pid);
        b.put_u32(secret);
    });
}

pub fn put_ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    message(buf, backend::READY_FOR_QUERY, |b| b.put_u8(status.as_byte()));
}

/// A RowDescription of text-format columns, each given as (name, type OID).
pub fn put_row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    put_row_description_in(buf, columns, 0);
}

/// The same with every column in `format` (0 text, 1 binary).
pub fn put_row_description_in(buf: &mut BytesMut, columns: &[(&str, u32)], format: u16) {
    message(buf, backend::ROW_DESCRIPTION, |b| {
        b.put_u16(columns.len() as u16);
        for (name, type_oid) in columns {
            put_cstr(b, name.as_bytes());
            b.put_u32(0); // no table
            b.put_u16(0); // no column number
            b.put_u32(*type_oid);
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_u16(format);
        }
    });
}

/// A DataRow of text values; `None` is NULL.
pub fn put_data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) {
    message(buf, backend::DATA_ROW, |b| {
        b.put_u16(values.len() as u16);
        for value in values {
            match value {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// CommandComplete with its tag (`"SHOW"`, `"PAUSE"`).
pub fn put_command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, backend::COMMAND_COMPLETE, |b| put_cstr(b, tag.as_bytes()));
}

pub fn put_empty_query_response(buf: &mut BytesMut) {
    message(buf, backend::EMPTY_QUERY_RESPONSE, |_| {});
}

/// A NoticeResponse (severity NOTICE, SQLSTATE 00000) with a message and a detail.
pub fn put_notice_response(buf: &mut BytesMut, text: &str, detail: &str) {
    message(buf, backend::NOTICE_RESPONSE, |b| {
        for (field, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', text), (b'D', detail)] {
            b.put_u8(field);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn put_parse_complete(buf: &mut BytesMut) {
    message(buf, backend::PARSE_COMPLETE, |_| {});
}

pub fn put_close_complete(buf: &mut BytesMut) {
    message(buf, backend::CLOSE_COMPLETE, |_| {});
}

pub fn put_bind_complete(buf: &mut BytesMut) {
    message(buf, backend::BIND_COMPLETE, |_| {});
}

pub fn put_no_data(buf: &mut BytesMut) {
    message(buf, backend::NO_DATA, |_| {});
}

/// A ParameterDescription of a statement without parameters.
pub fn put_no_parameters(buf: &mut BytesMut) {
    message(buf, backend::PARAMETER_DESCRIPTION, |b| b.put_u16(0));
}

/// StartupMessage (protocol 3.0) with the given parameters.
pub fn put_startup_message<'a>(buf: &mut BytesMut, params: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    let len_at = buf.len();
    buf.put_u32(0);
    buf.put_u32(super::PROTOCOL_VERSION_3);
    for (k, v) in params {
        put_cstr(buf, k);
        put_cstr(buf, v);
    }
    buf.put_u8(0);
    let len = (buf.len() - len_at) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_password_message(buf: &mut BytesMut, password: &[u8]) {
    message(buf, frontend::PASSWORD, |b| put_cstr(b, password));
}

pub fn put_sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(buf, frontend::PASSWORD, |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn put_sasl_response(buf: &mut BytesMut, data: &[u8]) {
    message(buf, frontend::PASSWORD, |b| b.put_slice(data));
}

pub fn put_query(buf: &mut BytesMut, sql: &str) {
    message(buf, frontend::QUERY, |b| put_cstr(b, sql.as_bytes()));
}

pub fn put_terminate(buf: &mut BytesMut) {
    message(buf, frontend::TERMINATE, |_| {});
}

/// Parse with a new statement name; `rest` is the original body after the name
/// (query text, parameter types).
pub fn put_parse_renamed(buf: &mut BytesMut, name: &[u8], rest: &[u8]) {
    message(buf, frontend::PARSE, |b| {
        put_cstr(b, name);
        b.put_slice(rest);
    });
}

/// Bind with its statement name replaced; `portal` and `rest` are the original fields.
pub fn put_bind_renamed(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    message(buf, frontend::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_slice(rest);
    });
}

/// Describe or Close of a statement (`'S'`) under a new name.
pub fn put_statement_op(buf: &mut BytesMut, tag: u8, statement: &[u8]) {
    message(buf, tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, statement);
    });
}

pub fn put_sync(buf: &mut BytesMut) {
    message(buf, frontend::SYNC, |_| {});
}

/// CancelRequest packet (no tag).
pub fn cancel_request(pid: u32, secret: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&super::CANCEL_REQUEST_CODE.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..].copy_from_slice(&secret.to_be_bytes());
    out
}

/// Parse of `sql` as statement `name`, with parameter type OIDs.
pub fn put_parse(buf: &mut BytesMut, name: &[u8], sql: &str, param_types: &[u32]) {
    message(buf, frontend::PARSE, |b| {
        put_cstr(b, name);
        put_cstr(b, sql.as_bytes());
        b.put_u16(param_types.len() as u16);
        for oid in param_types {
            b.put_u32(*oid);
        }
    });
}

/// Bind of `statement` to `portal` with text parameters and text results.
pub fn put_bind_text(buf: &mut BytesMut, portal: &[u8], statement: &[u8], params: &[&[u8]]) {
    message(buf, frontend::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_u16(0);
        b.put_u16(params.len() as u16);
        for value in params {
            b.put_i32(value.len() as i32);
            b.put_slice(value);
        }
        b.put_u16(0);
    });
}

/// Execute of `portal`, all rows.
pub fn put_execute(buf: &mut BytesMut, portal: &[u8]) {
    message(buf, frontend::EXECUTE, |b| {
        put_cstr(b, portal);
        b.put_u32(0);
    });
}

/// CopyFail with the reason the server reports in its error.
pub fn put_copy_fail(buf: &mut BytesMut, reason: &str) {
    message(buf, frontend::COPY_FAIL, |b| put_cstr(b, reason.as_bytes()));
}

pub fn put_flush(buf: &mut BytesMut) {
    message(buf, frontend::FLUSH, |_| {});
}

/// An SSLRequest: the packet that asks a server to switch to TLS.
pub fn put_ssl_request(buf: &mut BytesMut) {
    buf.put_u32(8);
    buf.put_u32(super::SSL_REQUEST_CODE);
}
