use bytes::{BufMut, Bytes, BytesMut};

use super::*;

#[test]
fn frame_peek_checks_length_before_anything_else() {
    type Case<'a> = (&'a [u8], usize, Result<Option<Frame>, WireError>);
    let cases: &[Case] = &[
        (b"", 100, Ok(None)),
        (b"Q\0\0\0", 100, Ok(None)),
        (b"Q\0\0\0\x05", 100, Ok(None)),
        (b"Q\0\0\0\x05x", 100, Ok(Some(Frame { tag: b'Q', total_len: 6 }))),
        (b"Q\0\0\0\x05xyz", 100, Ok(Some(Frame { tag: b'Q', total_len: 6 }))),
        (b"Q\0\0\0\x03", 100, Err(WireError::LengthTooShort { len: 3 })),
        (b"Q\0\0\0\0", 100, Err(WireError::LengthTooShort { len: 0 })),
        // Refused on the header alone, before the body arrives.
        (b"Q\0\x01\0\0", 1000, Err(WireError::TooLong { len: 65537, max: 1000 })),
        (b"Q\xff\xff\xff\xff", usize::MAX >> 1, Ok(None)),
    ];
    for (buf, max, want) in cases {
        assert_eq!(&Frame::peek(buf, *max), want, "{buf:?}");
    }
    assert_eq!(Frame::needed(b"Q\0\0\0\x08ab"), 2);
    assert_eq!(Frame::needed(b"Q"), 4);
}

fn packet(code: u32, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(8 + body.len() as u32);
    b.put_u32(code);
    b.put_slice(body);
    b.freeze()
}

#[test]
fn startup_packets_parse() {
    assert_eq!(StartupPacket::parse(packet(SSL_REQUEST_CODE, b"")), Ok(StartupPacket::SslRequest));
    assert_eq!(StartupPacket::parse(packet(GSSENC_REQUEST_CODE, b"")), Ok(StartupPacket::GssEncRequest));
    assert_eq!(
        StartupPacket::parse(packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 0, 9])),
        Ok(StartupPacket::Cancel { pid: 7, secret: 9 })
    );
    let parsed = StartupPacket::parse(packet(PROTOCOL_VERSION_3, b"user\0app\0application_name\0x\0\0")).unwrap();
    let StartupPacket::Startup(params) = parsed else { panic!("{parsed:?}") };
    assert_eq!((params.user.as_str(), params.database.as_str()), ("app", "app"), "database defaults to the user");
    assert_eq!(params.settings, [("application_name".to_owned(), "x".to_owned())]);
    assert_eq!(StartupPacket::parse(packet(PROTOCOL_VERSION_3, b"database\0d\0\0")), Err(WireError::NoUser));
    assert!(StartupPacket::parse(packet(PROTOCOL_VERSION_3, b"user\0app")).is_err(), "unterminated");
    assert_eq!(
        StartupPacket::parse(packet(PROTOCOL_VERSION_3, b"user\0app\0\0x")),
        Err(WireError::BadStartup("expected terminator as last byte"))
    );
    assert!(StartupPacket::parse(packet(1234, b"")).is_err(), "unknown version");
    assert!(StartupPacket::parse(packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7])).is_err());
}

#[test]
fn startup_length_is_bounded() {
    assert_eq!(StartupPacket::peek(&[]), Ok(StartupPeek::Incomplete));
    assert_eq!(StartupPacket::peek(&[0, 0, 0]), Ok(StartupPeek::Incomplete));
    assert_eq!(StartupPacket::peek(&[0, 0, 0, 8]), Ok(StartupPeek::Packet(8)));
    assert!(StartupPacket::peek(&[0, 0, 0, 7]).is_err());
    assert!(StartupPacket::peek(b"GET ").is_err(), "an HTTP request is not a startup packet");
}

#[test]
fn a_terminate_in_place_of_a_startup_packet_is_recognised() {
    assert_eq!(StartupPacket::peek(b"X"), Ok(StartupPeek::Incomplete));
    assert_eq!(StartupPacket::peek(b"X\0\0\0"), Ok(StartupPeek::Incomplete));
    assert_eq!(StartupPacket::peek(b"X\0\0\0\x04"), Ok(StartupPeek::Terminate));
    assert_eq!(StartupPacket::peek(b"X\0\0\0\x04more"), Ok(StartupPeek::Terminate));
    assert!(StartupPacket::peek(b"X\0\0\0\x05").is_err(), "only a Terminate, not any 'X'");
    assert!(StartupPacket::peek(b"X\0\x01\0").is_err());
}

/// A StartupMessage body with `user` and `n - 1` more parameters.
fn params(n: usize) -> Vec<u8> {
    let mut body = b"user\0app\0".to_vec();
    for i in 1..n {
        body.extend_from_slice(format!("p{i}\0v\0").as_bytes());
    }
    body.push(0);
    body
}

#[test]
fn startup_parameters_are_bounded() {
    let at_limit = StartupPacket::parse(packet(PROTOCOL_VERSION_3, &params(MAX_STARTUP_PARAMETERS)));
    let Ok(StartupPacket::Startup(at_limit)) = at_limit else { panic!("{at_limit:?}") };
    assert_eq!(at_limit.settings.len(), MAX_STARTUP_PARAMETERS - 1);
    let beyond = StartupPacket::parse(packet(PROTOCOL_VERSION_3, &params(MAX_STARTUP_PARAMETERS + 1)));
    assert_eq!(beyond, Err(WireError::TooManyStartupParameters { max: MAX_STARTUP_PARAMETERS }));
    assert_eq!(
        WireError::TooManyStartupParameters { max: 64 }.to_string(),
        "invalid startup packet: more than 64 parameters (pgrelay's limit)"
    );
    // Refused after the limit, not after reading everything: the rest may even be malformed.
    let mut truncated = params(MAX_STARTUP_PARAMETERS + 1);
    truncated.pop();
    truncated.extend_from_slice(b"unterminated");
    assert!(matches!(
        StartupPacket::parse(packet(PROTOCOL_VERSION_3, &truncated)),
        Err(WireError::TooManyStartupParameters { .. })
    ));
}

#[test]
fn error_response_round_trips() {
    let msg = error_response(Severity::Fatal, sqlstate::TOO_MANY_CONNECTIONS, "too many", Some("wait"));
    let frame = Frame::peek(&msg, 1 << 20).unwrap().unwrap();
    assert_eq!((frame.tag, frame.total_len), (b'E', msg.len()));
    let fields = ErrorFields::parse(body(&msg));
    assert_eq!(fields, ErrorFields { severity: "FATAL".into(), code: "53300".into(), message: "too many".into() });
    assert_eq!(error_code(body(&msg)), Some(&b"53300"[..]));
    assert_eq!(error_code(b"Mno code\0\0"), None);
    assert_eq!(error_code(b"Cunterminated"), None);
}

#[test]
fn split_message_takes_whole_messages_only() {
    let mut buf = BytesMut::new();
    put_query(&mut buf, "select 1");
    put_sync(&mut buf);
    buf.put_slice(b"Q\0\0");
    let first = split_message(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(&first[..], b"Q\0\0\0\x0dselect 1\0");
    assert_eq!(&split_message(&mut buf, 1024).unwrap().unwrap()[..], b"S\0\0\0\x04");
    assert_eq!(split_message(&mut buf, 1024), Ok(None));
    assert_eq!(buf.len(), 3);
}
