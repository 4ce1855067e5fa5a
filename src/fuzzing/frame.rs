//! `frame`: message framing (Frame::peek, Frame::needed, split_message) and
//! the ErrorResponse field readers, over arbitrary bytes.
//!
//! Input: one byte choosing the maximum message length (small, so lengths
//! on both sides of it are common), then the buffer.

use bytes::BytesMut;

use crate::wire::{self, ErrorFields, Frame, WireError};

pub fn check(data: &[u8]) {
    let Some((&max_byte, buf)) = data.split_first() else { return };
    // 0..=1020, and a few lengths around the smallest possible message.
    let max_len = if max_byte < 8 { usize::from(max_byte) + 2 } else { usize::from(max_byte) * 4 };
    for start in 0..buf.len().min(8) {
        check_peek(&buf[start..], max_len);
    }
    check_split(buf, max_len);
}

fn header_len(buf: &[u8]) -> u32 {
    u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]])
}

fn check_peek(buf: &[u8], max_len: usize) {
    let needed = Frame::needed(buf);
    match Frame::peek(buf, max_len) {
        Ok(Some(frame)) => {
            assert!(frame.total_len >= 5, "a frame counts its tag and length: {frame:?}");
            assert!(frame.total_len <= buf.len(), "{frame:?} is longer than the {}-byte buffer", buf.len());
            assert!(frame.total_len <= max_len, "{frame:?} exceeds the maximum {max_len}");
            assert_eq!(frame.total_len as u64, u64::from(header_len(buf)) + 1, "length is the header's + 1");
            assert_eq!(frame.tag, buf[0]);
            assert_eq!(needed, 0, "a complete frame needs no more bytes");
        }
        Ok(None) => {
            if buf.len() >= 5 {
                let len = header_len(buf);
                assert!(len >= 4, "a length below 4 must be refused, not waited on");
                assert!((len as usize) < max_len, "a length above the maximum must be refused, not waited on");
                assert!(buf.len() < len as usize + 1, "a complete message was not returned");
            }
            assert!(needed > 0, "an incomplete frame needs more bytes");
            assert_eq!(needed, bytes_needed_in_all(buf) - buf.len());
        }
        Err(WireError::LengthTooShort { len }) => {
            assert_eq!(len, header_len(buf));
            assert!(len < 4);
        }
        Err(WireError::TooLong { len, max }) => {
            assert_eq!(max, max_len);
            assert_eq!(len as u64, u64::from(header_len(buf)) + 1);
            assert!(len > max);
        }
        Err(other) => panic!("unexpected error from Frame::peek: {other:?}"),
    }
}

/// What a buffer needs in all: 5 bytes for the header, then the whole message.
fn bytes_needed_in_all(buf: &[u8]) -> usize {
    if buf.len() < 5 {
        5
    } else {
        header_len(buf) as usize + 1
    }
}

/// Splits messages off until the buffer runs dry or fails; what was split
/// off and what is left add up to the input.
fn check_split(data: &[u8], max_len: usize) {
    let mut buf = BytesMut::from(data);
    let mut consumed = 0;
    loop {
        let before = buf.len();
        match wire::split_message(&mut buf, max_len) {
            Ok(Some(msg)) => {
                assert!(msg.len() >= 5 && msg.len() <= max_len);
                assert_eq!(&msg[..], &data[consumed..consumed + msg.len()], "a message is the input's bytes");
                assert_eq!(buf.len(), before - msg.len());
                consumed += msg.len();
                check_error_fields(wire::body(&msg));
            }
            Ok(None) | Err(_) => {
                assert_eq!(buf.len(), before, "nothing is consumed without a message");
                break;
            }
        }
    }
    assert_eq!(&buf[..], &data[consumed..], "what is left is the rest of the input");
}

/// The fields of an ErrorResponse/NoticeResponse body, as the protocol
/// defines them: (type, value) pairs of a byte and a C string, until a zero
/// type byte; a field without its NUL ends the walk.
fn fields(mut body: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let Some(nul) = rest.iter().position(|&b| b == 0) else { break };
        out.push((kind, &rest[..nul]));
        body = &rest[nul + 1..];
    }
    out
}

fn check_error_fields(body: &[u8]) {
    let fields = fields(body);
    let first = |kind: u8| fields.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v);
    let last = |kind: u8| fields.iter().rev().find(|(k, _)| *k == kind).map(|(_, v)| *v);
    for kind in [b'C', b'M', b'S', b'V', b'H', 0xff] {
        assert_eq!(wire::error_field(body, kind), first(kind), "field {:?}", char::from(kind));
    }
    assert_eq!(wire::error_code(body), first(b'C'));
    let parsed = ErrorFields::parse(body);
    let text = |v: Option<&[u8]>| v.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    assert_eq!(parsed.code, text(last(b'C')));
    assert_eq!(parsed.message, text(last(b'M')));
    // V (never localised) wins over S, whichever comes first.
    let mut severity = String::new();
    for (kind, value) in &fields {
        match kind {
            b'V' => severity = text(Some(value)),
            b'S' if severity.is_empty() => severity = text(Some(value)),
            _ => {}
        }
    }
    assert_eq!(parsed.severity, severity);
    let fatal = matches!(first(b'V').or(first(b'S')), Some(b"FATAL" | b"PANIC"));
    assert_eq!(wire::is_fatal_error(body), fatal);
}
