//! Frontend messages for one write, with a readable description of what was
//! sent (`Q(select 1) | P(s1: ...) B(s1) E S`) for the failure report.

use bytes::{BufMut, Bytes, BytesMut};
use pgrelay::wire;

#[derive(Default)]
pub struct Out {
    bytes: BytesMut,
    desc: Vec<String>,
}

impl Out {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn finish(self) -> (Bytes, String) {
        (self.bytes.freeze(), self.desc.join(" "))
    }

    pub fn query(&mut self, sql: &str) {
        wire::put_query(&mut self.bytes, sql);
        self.desc.push(format!("Q({sql})"));
    }

    /// Parse with no parameter types (the server infers them).
    pub fn parse(&mut self, name: &str, sql: &str) {
        let mut rest = sql.as_bytes().to_vec();
        rest.extend_from_slice(&[0, 0, 0]);
        wire::put_parse_renamed(&mut self.bytes, name.as_bytes(), &rest);
        self.desc.push(format!("P({name:?}: {sql})"));
    }

    /// Bind of `statement` to the unnamed portal with text parameters.
    pub fn bind(&mut self, statement: &str, params: &[String]) {
        let mut rest = Vec::new();
        rest.extend_from_slice(&0u16.to_be_bytes());
        rest.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            rest.extend_from_slice(&(p.len() as u32).to_be_bytes());
            rest.extend_from_slice(p.as_bytes());
        }
        rest.extend_from_slice(&0u16.to_be_bytes());
        wire::put_bind_renamed(&mut self.bytes, b"", statement.as_bytes(), &rest);
        self.desc.push(format!("B({statement:?} {params:?})"));
    }

    /// Execute of the unnamed portal; `max_rows` 0 means all.
    pub fn execute(&mut self, max_rows: u32) {
        self.bytes.put_u8(b'E');
        self.bytes.put_u32(9);
        self.bytes.put_u8(0);
        self.bytes.put_u32(max_rows);
        self.desc.push(if max_rows == 0 { "E".to_owned() } else { format!("E(max {max_rows})") });
    }

    pub fn describe_portal(&mut self) {
        self.bytes.put_u8(b'D');
        self.bytes.put_u32(6);
        self.bytes.put_u8(b'P');
        self.bytes.put_u8(0);
        self.desc.push("D(portal)".to_owned());
    }

    pub fn describe_statement(&mut self, name: &str) {
        wire::put_statement_op(&mut self.bytes, b'D', name.as_bytes());
        self.desc.push(format!("D(statement {name:?})"));
    }

    pub fn close_statement(&mut self, name: &str) {
        wire::put_statement_op(&mut self.bytes, b'C', name.as_bytes());
        self.desc.push(format!("C(statement {name:?})"));
    }

    pub fn sync(&mut self) {
        wire::put_sync(&mut self.bytes);
        self.desc.push("S".to_owned());
    }

    pub fn flush(&mut self) {
        self.bytes.put_u8(b'H');
        self.bytes.put_u32(4);
        self.desc.push("H".to_owned());
    }

    pub fn copy_data(&mut self, data: &str) {
        self.bytes.put_u8(b'd');
        self.bytes.put_u32(4 + data.len() as u32);
        self.bytes.put_slice(data.as_bytes());
        self.desc.push(format!("d({data:?})"));
    }

    pub fn copy_done(&mut self) {
        self.bytes.put_u8(b'c');
        self.bytes.put_u32(4);
        self.desc.push("c".to_owned());
    }

    pub fn copy_fail(&mut self, reason: &str) {
        self.bytes.put_u8(b'f');
        self.bytes.put_u32(4 + reason.len() as u32 + 1);
        self.bytes.put_slice(reason.as_bytes());
        self.bytes.put_u8(0);
        self.desc.push(format!("f({reason})"));
    }
}
