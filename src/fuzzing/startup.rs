//! `startup`: the packets a client opens a connection with
//! (StartupPacket::peek_len and StartupPacket::parse), over arbitrary bytes.
//!
//! Input: the bytes a client sends first (length included); the same bytes
//! are also tried as the body of a packet whose length pgrelay is given.

use bytes::Bytes;

use crate::wire::{
    StartupPacket, StartupParams, StartupPeek, WireError, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET,
    SSL_REQUEST_CODE,
};

pub fn check(data: &[u8]) {
    check_stream(data);
    if data.len() + 4 <= MAX_STARTUP_PACKET {
        let mut packet = Vec::with_capacity(data.len() + 4);
        packet.extend_from_slice(&(data.len() as u32 + 4).to_be_bytes());
        packet.extend_from_slice(data);
        check_stream(&packet);
    }
}

/// As the login reads a connection's first bytes: the length, then (once
/// they are all there) the packet.
fn check_stream(buf: &[u8]) {
    let len = match StartupPacket::peek(buf) {
        Ok(StartupPeek::Packet(len)) => len,
        Ok(StartupPeek::Incomplete) => {
            assert!(buf.len() < 4 || buf.starts_with(&[b'X', 0, 0, 0]), "a length was there to read");
            return;
        }
        Ok(StartupPeek::Terminate) => {
            assert!(buf.starts_with(&[b'X', 0, 0, 0, 4]), "a Terminate is only a Terminate");
            return;
        }
        Err(e) => {
            assert_eq!(e, WireError::BadStartup("invalid length"));
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            assert!(!(8..=MAX_STARTUP_PACKET).contains(&len), "length {len} is within PostgreSQL's bounds");
            return;
        }
    };
    assert_eq!(len, u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize);
    assert!((8..=MAX_STARTUP_PACKET).contains(&len));
    if buf.len() < len {
        return;
    }
    let packet = &buf[..len];
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let Ok(parsed) = StartupPacket::parse(Bytes::copy_from_slice(packet)) else { return };
    match parsed {
        StartupPacket::SslRequest => assert_eq!(code, SSL_REQUEST_CODE),
        StartupPacket::GssEncRequest => assert_eq!(code, GSSENC_REQUEST_CODE),
        StartupPacket::Cancel { pid, secret } => {
            assert_eq!(code, CANCEL_REQUEST_CODE);
            assert_eq!(packet.len(), 16, "a cancel request is 16 bytes");
            assert_eq!(pid.to_be_bytes(), packet[8..12]);
            assert_eq!(secret.to_be_bytes(), packet[12..16]);
        }
        StartupPacket::Startup(params) => {
            assert_eq!(code >> 16, 3, "only protocol 3.x has parameters");
            assert_eq!(params, expected_params(&packet[8..]), "parameters of {packet:?}");
        }
    }
}

/// The parameters of an accepted StartupMessage body, as PostgreSQL reads
/// it: NUL-terminated name/value pairs, all UTF-8 here, ending in an empty
/// name that is the packet's last byte.
fn expected_params(body: &[u8]) -> StartupParams {
    let cstr = |b: &'_ [u8]| b.iter().position(|&c| c == 0).map(|nul| (b[..nul].to_vec(), b[nul + 1..].to_vec()));
    let text = |b: Vec<u8>| String::from_utf8(b).expect("parameters are UTF-8");
    let mut params = StartupParams::default();
    let mut rest = body.to_vec();
    loop {
        let (name, tail) = cstr(&rest).expect("the parameter list is terminated");
        if name.is_empty() {
            assert!(tail.is_empty(), "the terminator is the packet's last byte");
            break;
        }
        let (value, tail) = cstr(&tail).expect("every name has a value");
        let (name, value) = (text(name), text(value));
        match name.as_str() {
            "user" => params.user = value,
            "database" => params.database = value,
            _ => params.settings.push((name, value)),
        }
        rest = tail;
    }
    assert!(!params.user.is_empty(), "a StartupMessage names a user");
    if params.database.is_empty() {
        params.database = params.user.clone();
    }
    params
}
