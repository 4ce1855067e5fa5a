//! Backend messages as short strings (`T[m:25]`, `D['c07-s0042']`,
//! `C[SELECT 1]`, `E[22012]`, `Z[I]`, ...), so an expected sequence and a
//! received one compare as plain lists and print readably side by side.
//! The model builds its expectations with the constructors below.

use bytes::Buf;

use crate::client::{error_fields, Msg};

pub const INT4: u32 = 23;
pub const INT8: u32 = 20;
pub const TEXT: u32 = 25;
pub const VOID: u32 = 2278;

/// `own_pid`: the pid of the client's BackendKeyData, which a notification
/// the client sent to itself must carry.
pub fn render(msg: &Msg, own_pid: u32) -> String {
    render_with(msg, own_pid, false)
}

/// As [`render`], with error messages spelled out (for reports).
pub fn render_verbose(msg: &Msg, own_pid: u32) -> String {
    render_with(msg, own_pid, true)
}

fn render_with(msg: &Msg, own_pid: u32, verbose: bool) -> String {
    let mut body = msg.body.clone();
    let tag = char::from(msg.tag);
    match msg.tag {
        b'T' => {
            let count = body.try_get_u16().unwrap_or(0);
            let mut cols = Vec::new();
            for _ in 0..count {
                let name = cstr(&mut body);
                // table oid (4), column (2), type oid (4), size (2), modifier (4), format (2)
                if body.remaining() < 18 {
                    return format!("T[malformed {:?}]", msg.body);
                }
                body.advance(6);
                let oid = body.get_u32();
                body.advance(8);
                cols.push(format!("{name}:{oid}"));
            }
            format!("T[{}]", cols.join(","))
        }
        b'D' => {
            let count = body.try_get_u16().unwrap_or(0);
            let mut values = Vec::new();
            for _ in 0..count {
                let len = body.try_get_i32().unwrap_or(-1);
                if len < 0 || body.remaining() < len as usize {
                    values.push("NULL".to_owned());
                } else {
                    let value = body.split_to(len as usize);
                    values.push(format!("'{}'", String::from_utf8_lossy(&value)));
                }
            }
            format!("D[{}]", values.join(","))
        }
        b'C' => format!("C[{}]", cstr(&mut body)),
        b'E' | b'N' => {
            let (code, message) = error_fields(&msg.body);
            if verbose {
                format!("{tag}[{code} {message}]")
            } else {
                format!("{tag}[{code}]")
            }
        }
        b'Z' => format!("Z[{}]", msg.body.first().map_or('?', |b| char::from(*b))),
        b't' => {
            let count = body.try_get_u16().unwrap_or(0);
            let oids: Vec<String> = (0..count).map(|_| body.try_get_u32().unwrap_or(0).to_string()).collect();
            format!("t[{}]", oids.join(","))
        }
        b'G' | b'H' => {
            body.advance(1.min(body.remaining()));
            format!("{tag}[{}]", body.try_get_u16().unwrap_or(0))
        }
        b'd' => format!("d[{:?}]", String::from_utf8_lossy(&msg.body)),
        b'A' => {
            let pid = body.try_get_u32().unwrap_or(0);
            let channel = cstr(&mut body);
            let payload = cstr(&mut body);
            if pid == own_pid {
                format!("A[{channel},{payload},own pid]")
            } else {
                format!("A[{channel},{payload},pid {pid} but BackendKeyData said {own_pid}]")
            }
        }
        b'S' => {
            let name = cstr(&mut body);
            let value = cstr(&mut body);
            format!("S[{name}={value}]")
        }
        b'1' | b'2' | b'3' | b'n' | b's' | b'I' | b'c' => tag.to_string(),
        _ => format!("{tag}[{} bytes]", msg.body.len()),
    }
}

fn cstr(body: &mut bytes::Bytes) -> String {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let text = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance((end + 1).min(body.remaining()));
    text
}

pub fn row_desc(cols: &[(&str, u32)]) -> String {
    let cols: Vec<String> = cols.iter().map(|(name, oid)| format!("{name}:{oid}")).collect();
    format!("T[{}]", cols.join(","))
}

pub fn row<S: AsRef<str>>(values: &[S]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("'{}'", v.as_ref())).collect();
    format!("D[{}]", values.join(","))
}

pub fn complete(tag: &str) -> String {
    format!("C[{tag}]")
}

pub fn error(code: &str) -> String {
    format!("E[{code}]")
}

pub fn ready(status: char) -> String {
    format!("Z[{status}]")
}

pub fn param_desc(oids: &[u32]) -> String {
    let oids: Vec<String> = oids.iter().map(u32::to_string).collect();
    format!("t[{}]", oids.join(","))
}

pub fn copy_data(text: &str) -> String {
    format!("d[{text:?}]")
}

pub fn notification(channel: &str, payload: &str) -> String {
    format!("A[{channel},{payload},own pid]")
}

pub fn parameter_status(name: &str, value: &str) -> String {
    format!("S[{name}={value}]")
}
