//! The server-login state machine fed the requests a server (honest or not)
//! sends, against what `server_require_auth` and the iteration cap allow.

use std::num::NonZeroU32;

use bytes::BytesMut;

use super::{LoginRefused, ServerLogin};
use crate::auth::scram::{Binding, ScramServer, ScramVerifier, MECHANISM};
use crate::auth::{md5, AuthError, UserDb};
use crate::config::{Config, RequireAuth, ServerAuthMethod, ServerAuthPolicy};

const PASSWORD: &str = "s3cret";

fn policy(require_auth: &str, max_iterations: u32) -> ServerAuthPolicy {
    ServerAuthPolicy {
        require_auth: RequireAuth::parse(require_auth).expect("valid require_auth"),
        scram_max_iterations: NonZeroU32::new(max_iterations).expect("not zero"),
    }
}

fn users(entry: &str) -> UserDb {
    let text = format!(
        "[cluster]\npassword = \"monitor\"\n\n[[nodes]]\nname = \"pg0\"\n\n[[users]]\nname = \"app\"\n{entry}\n\
         [[databases]]\nname = \"app\"\n"
    );
    UserDb::from_config(&Config::parse(&text).expect("test config")).expect("valid users")
}

fn request(code: u32, rest: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(rest);
    body
}

/// The body of the password message ('p') pgrelay wrote.
fn answer(out: &BytesMut) -> &[u8] {
    assert_eq!(out.first(), Some(&b'p'), "a password message");
    &out[5..]
}

/// A SCRAM server, honest up to where the test makes it lie.
struct Server {
    verifier: ScramVerifier,
    state: Option<ScramServer>,
}

impl Server {
    fn new(iterations: u32) -> Server {
        Server { verifier: ScramVerifier::with_iterations(PASSWORD, iterations), state: None }
    }

    fn sasl() -> Vec<u8> {
        request(10, format!("{MECHANISM}\0\0").as_bytes())
    }

    /// SASLContinue answering pgrelay's SASLInitialResponse in `out`.
    fn first(&mut self, out: &BytesMut) -> Vec<u8> {
        let body = answer(out);
        let rest = &body[MECHANISM.len() + 1 + 4..];
        let (state, server_first) =
            ScramServer::start(rest, &self.verifier, Binding { chosen: false, data: None }).expect("client-first");
        self.state = Some(state);
        request(11, server_first.as_bytes())
    }

    /// The server-final-message answering pgrelay's SASLResponse in `out`.
    fn last(&mut self, out: &BytesMut) -> Vec<u8> {
        let verified = self.state.take().expect("started").finish(answer(out), &self.verifier).expect("proof");
        request(12, verified.server_final.as_bytes())
    }
}

/// Feeds `body`, returning what pgrelay answered.
fn feed(login: &mut ServerLogin<'_>, body: &[u8]) -> Result<BytesMut, LoginRefused> {
    let mut out = BytesMut::new();
    login.on_request(body, &mut out).map(|()| out)
}

#[test]
fn require_auth_reads_as_libpq_does() {
    use ServerAuthMethod::*;
    let cases: [(&str, &[ServerAuthMethod]); 5] = [
        ("scram-sha-256,none", &[ScramSha256, None]),
        ("md5", &[Md5]),
        ("!password, !md5", &[ScramSha256, None]),
        ("!none", &[Password, Md5, ScramSha256]),
        ("password,md5,scram-sha-256,none", &[Password, Md5, ScramSha256, None]),
    ];
    for (text, allowed) in cases {
        let parsed = RequireAuth::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        for method in ServerAuthMethod::ALL {
            assert_eq!(parsed.allows(method), allowed.contains(&method), "{text}: {method}");
        }
    }
    assert_eq!(RequireAuth::parse("scram-sha-256,none").unwrap(), RequireAuth::DEFAULT);
    let refused = [
        ("md5,!none", "mixes negated and plain"),
        ("md5,md5", "twice"),
        ("gss", "cannot answer"),
        ("scram", "unknown method"),
        ("", "unknown method"),
        ("!password,!md5,!scram-sha-256,!none", "no method"),
    ];
    for (text, needle) in refused {
        let error = RequireAuth::parse(text).expect_err(text);
        assert!(error.contains(needle), "{text}: {error}");
    }
}

#[test]
fn a_full_scram_exchange_ends_authenticated() {
    let db = users("password = \"s3cret\"");
    let mut login = ServerLogin::new(&db.get("app").unwrap().server, policy("scram-sha-256", 4096));
    let mut server = Server::new(4096);
    let out = feed(&mut login, &Server::sasl()).unwrap();
    let out = feed(&mut login, &server.first(&out)).unwrap();
    assert!(feed(&mut login, &server.last(&out)).unwrap().is_empty());
    assert!(!login.is_authenticated(), "not before AuthenticationOk");
    feed(&mut login, &request(0, b"")).unwrap();
    assert!(login.is_authenticated());
    assert_eq!(feed(&mut login, &request(0, b"")), Err(LoginRefused::OutOfOrder("a second AuthenticationOk")));
}

#[test]
fn authentication_ok_before_a_verified_sasl_final_is_refused() {
    let db = users("password = \"s3cret\"");
    let creds = &db.get("app").unwrap().server;
    // Right after AuthenticationSASL, and after SASLContinue.
    let mut login = ServerLogin::new(creds, policy("scram-sha-256,none", 4096));
    feed(&mut login, &Server::sasl()).unwrap();
    assert_eq!(feed(&mut login, &request(0, b"")), Err(LoginRefused::ScramUnfinished));
    assert!(!login.is_authenticated());
    let mut login = ServerLogin::new(creds, policy("scram-sha-256,none", 4096));
    let mut server = Server::new(4096);
    let out = feed(&mut login, &Server::sasl()).unwrap();
    feed(&mut login, &server.first(&out)).unwrap();
    assert_eq!(feed(&mut login, &request(0, b"")), Err(LoginRefused::ScramUnfinished));
}

#[test]
fn a_wrong_server_signature_is_refused() {
    let db = users("password = \"s3cret\"");
    let mut login = ServerLogin::new(&db.get("app").unwrap().server, policy("scram-sha-256", 4096));
    let mut server = Server::new(4096);
    let out = feed(&mut login, &Server::sasl()).unwrap();
    let out = feed(&mut login, &server.first(&out)).unwrap();
    let honest = server.last(&out);
    let forged = request(12, format!("v={}", "A".repeat(43) + "=").as_bytes());
    assert_ne!(honest, forged);
    assert_eq!(feed(&mut login, &forged), Err(LoginRefused::Auth(AuthError::ServerSignature)));
    assert_eq!(feed(&mut login, &request(0, b"")), Err(LoginRefused::OutOfOrder("a second AuthenticationOk")));
    assert!(!login.is_authenticated());
}

#[test]
fn sasl_messages_out_of_order_are_refused() {
    let db = users("password = \"s3cret\"");
    let creds = &db.get("app").unwrap().server;
    let fresh = || ServerLogin::new(creds, policy("scram-sha-256", 4096));
    assert_eq!(feed(&mut fresh(), &request(11, b"r=x")), Err(LoginRefused::OutOfOrder("SASLContinue")));
    assert_eq!(feed(&mut fresh(), &request(12, b"v=x")), Err(LoginRefused::OutOfOrder("SASLFinal")));
    let mut login = fresh();
    feed(&mut login, &Server::sasl()).unwrap();
    assert_eq!(feed(&mut login, &request(12, b"v=x")), Err(LoginRefused::OutOfOrder("SASLFinal")));
    let mut login = fresh();
    feed(&mut login, &Server::sasl()).unwrap();
    assert_eq!(
        feed(&mut login, &request(5, b"salt")),
        Err(LoginRefused::OutOfOrder("a second authentication request"))
    );
    assert_eq!(feed(&mut fresh(), &request(7, b"")), Err(LoginRefused::Unsupported(7)));
    assert_eq!(feed(&mut fresh(), &[0, 0]), Err(LoginRefused::Malformed("Authentication")));
}

#[test]
fn iteration_counts_are_capped_and_zero_is_refused() {
    let db = users("password = \"s3cret\"");
    let creds = &db.get("app").unwrap().server;
    let run = |iterations: u32, cap: u32| {
        let mut login = ServerLogin::new(creds, policy("scram-sha-256", cap));
        let mut server = Server::new(iterations.max(1));
        server.verifier.iterations = iterations;
        let out = feed(&mut login, &Server::sasl()).unwrap();
        feed(&mut login, &server.first(&out)).map(drop)
    };
    assert_eq!(run(1000, 1000), Ok(()), "at the cap");
    assert_eq!(run(1001, 1000), Err(LoginRefused::Auth(AuthError::TooManyIterations { asked: 1001, max: 1000 })));
    assert_eq!(run(0, 1000), Err(LoginRefused::Auth(AuthError::ZeroIterations)));
}

#[test]
fn a_client_key_derives_nothing_so_the_cap_does_not_apply_to_it() {
    let verifier = ScramVerifier::with_iterations(PASSWORD, 5000);
    let db = users(&format!("password = \"{}\"", verifier.to_rolpassword()));
    let entry = db.get("app").unwrap();
    // What a client's SCRAM login against pgrelay leaves behind.
    let (derived_client_key, _) = crate::auth::scram::derive_keys(PASSWORD, &verifier.salt, 5000);
    entry.server.remember_client_key(derived_client_key);
    let mut login = ServerLogin::new(&entry.server, policy("scram-sha-256", 1000));
    let mut server = Server { verifier, state: None };
    let out = feed(&mut login, &Server::sasl()).unwrap();
    let out = feed(&mut login, &server.first(&out)).unwrap();
    feed(&mut login, &server.last(&out)).unwrap();
    feed(&mut login, &request(0, b"")).unwrap();
    assert!(login.is_authenticated());
}

#[test]
fn md5_and_password_are_sent_only_when_allowed() {
    let db = users("password = \"s3cret\"");
    let creds = &db.get("app").unwrap().server;
    let md5_request = request(5, &[1, 2, 3, 4]);
    let refused = feed(&mut ServerLogin::new(creds, policy("scram-sha-256,none", 4096)), &md5_request);
    let allowed = RequireAuth::DEFAULT;
    assert_eq!(refused, Err(LoginRefused::MethodNotAllowed { method: ServerAuthMethod::Md5, allowed }));
    let cleartext = feed(&mut ServerLogin::new(creds, policy("!md5", 4096)), &request(3, b""));
    assert_eq!(answer(&cleartext.unwrap()), b"s3cret\0");
    let refused = feed(&mut ServerLogin::new(creds, policy("!password", 4096)), &request(3, b""));
    assert!(matches!(refused, Err(LoginRefused::MethodNotAllowed { method: ServerAuthMethod::Password, .. })));

    let mut login = ServerLogin::new(creds, policy("md5", 4096));
    let out = feed(&mut login, &md5_request).unwrap();
    let expected = md5::salted_answer(&md5::stored_hash(PASSWORD, "app"), [1, 2, 3, 4]);
    assert_eq!(answer(&out), [expected.as_bytes(), b"\0"].concat());
    feed(&mut login, &request(0, b"")).unwrap();
    assert!(login.is_authenticated());
    // Trust is "none": refused when only challenges are allowed.
    let trust = feed(&mut ServerLogin::new(creds, policy("md5", 4096)), &request(0, b""));
    assert!(matches!(trust, Err(LoginRefused::MethodNotAllowed { method: ServerAuthMethod::None, .. })));
}

#[test]
fn a_user_without_a_password_never_gets_the_monitors_password() {
    // [cluster] password = "monitor" in every config of these tests.
    let db = users("auth_type = \"trust\"");
    let creds = &db.get("app").unwrap().server;
    let mut login = ServerLogin::new(creds, policy("password,md5,scram-sha-256,none", 4096));
    feed(&mut login, &request(0, b"")).unwrap();
    assert!(login.is_authenticated(), "a trusting server takes it");
    for asks in [request(3, b""), request(5, &[1, 2, 3, 4])] {
        let mut login = ServerLogin::new(creds, policy("password,md5,scram-sha-256,none", 4096));
        let Err(LoginRefused::Auth(AuthError::NoServerCredentials(why))) = feed(&mut login, &asks) else {
            panic!("a password was sent")
        };
        assert!(why.contains("server_password_from_cluster"), "{why}");
    }
    let mut login = ServerLogin::new(creds, policy("scram-sha-256", 4096));
    let out = feed(&mut login, &Server::sasl()).unwrap();
    let refused = feed(&mut login, &Server::new(4096).first(&out));
    assert!(matches!(refused, Err(LoginRefused::Auth(AuthError::NoServerCredentials(_)))), "{refused:?}");
    assert!(creds.describe().starts_with("no password"), "{}", creds.describe());

    // Only when the entry says so.
    let db = users("auth_type = \"trust\"\nserver_password_from_cluster = true");
    let creds = &db.get("app").unwrap().server;
    assert_eq!(creds.password(), Ok("monitor"));
    assert!(creds.describe().contains("server_password_from_cluster"), "{}", creds.describe());
}

#[test]
fn an_md5_hash_answers_md5_for_its_own_name_only() {
    let stored = md5::stored_hash(PASSWORD, "app");
    let db = users(&format!("password = \"{stored}\"\nauth_type = \"md5\""));
    let creds = &db.get("app").unwrap().server;
    let mut login = ServerLogin::new(creds, policy("md5", 4096));
    let out = feed(&mut login, &request(5, &[9, 9, 9, 9])).unwrap();
    assert_eq!(answer(&out), [md5::salted_answer(&stored, [9, 9, 9, 9]).as_bytes(), b"\0"].concat());
    assert!(creds.password().is_err() && creds.scram_secret().is_err());
    let db = users(&format!("password = \"{stored}\"\nauth_type = \"md5\"\nserver_user = \"other\""));
    assert!(db.get("app").unwrap().server.md5_answer([0; 4]).is_err(), "salted with another name");
}
