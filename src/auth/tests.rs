use super::scram::*;
use super::*;

fn scram_exchange(verifier: &ScramVerifier, secret: &ScramSecret) -> Result<[u8; 32], AuthError> {
    let (client, first) = ScramClient::start();
    let (server, server_first) = ScramServer::start(first.as_bytes(), verifier, NO_BINDING)?;
    let fin = client.answer(server_first.as_bytes(), secret, u32::MAX)?;
    let verified = server.finish(fin.client_final.as_bytes(), verifier)?;
    fin.verify_server(verified.server_final.as_bytes())?;
    Ok(verified.client_key)
}

#[test]
fn scram_with_password_round_trips() {
    let verifier = ScramVerifier::from_password("s3cret");
    assert!(scram_exchange(&verifier, &ScramSecret::password("s3cret")).is_ok());
}

#[test]
fn scram_wrong_password_is_rejected() {
    let verifier = ScramVerifier::from_password("s3cret");
    let err = scram_exchange(&verifier, &ScramSecret::password("nope")).unwrap_err();
    assert_eq!(err, AuthError::WrongPassword);
}

#[test]
fn recovered_client_key_logs_in_again() {
    let verifier = ScramVerifier::from_password("s3cret");
    let key = scram_exchange(&verifier, &ScramSecret::password("s3cret")).unwrap();
    let passthrough = ScramSecret::ClientKey { client_key: key, verifier: verifier.clone() };
    assert!(scram_exchange(&verifier, &passthrough).is_ok());
    // Against a server whose verifier has another salt, the key is useless.
    let other = ScramVerifier::from_password("s3cret");
    assert_eq!(scram_exchange(&other, &passthrough).unwrap_err(), AuthError::VerifierMismatch);
}

#[test]
fn verifier_parses_postgres_format() {
    // Produced by PostgreSQL 15 for the password "app-secret".
    let text = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let v = ScramVerifier::parse(text).unwrap();
    assert_eq!(v.iterations, 4096);
    assert_eq!(v.salt, b"saltsaltsaltsalt");
    assert_eq!(v.server_key, [1u8; 32]);
    assert!(ScramVerifier::parse("SCRAM-SHA-256$0:xx$yy:zz").is_none());
    assert!(ScramVerifier::parse("md5abc").is_none());
}

#[test]
fn md5_matches_postgres() {
    // select 'md5' || md5('secret' || 'app')
    let stored = md5::stored_hash("secret", "app");
    assert_eq!(stored, "md56a422f785c9e20873908ce25d1736ae2");
    assert_eq!(md5::salted_answer(&stored, [1, 2, 3, 4]), "md5911f527656472583a006e7727877b33e");
    assert!(md5::is_stored_hash(&stored));
    assert!(!md5::is_stored_hash("md5xyz"));
}

const NO_BINDING: Binding<'static> = Binding { chosen: false, data: None };

/// A client's SCRAM exchange with `gs2` as its header and `c=` made of
/// `gs2` and `binding_data`, against a server offering `binding`; returns
/// how the server took the final message.
fn bound_exchange(password: &str, gs2: &str, binding_data: &[u8], binding: Binding<'_>) -> Result<(), AuthError> {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let verifier = ScramVerifier::from_password("s3cret");
    let bare = "n=,r=clientnonce";
    let (server, server_first) = ScramServer::start(format!("{gs2}{bare}").as_bytes(), &verifier, binding)?;
    let nonce = server_first.split(',').find_map(|a| a.strip_prefix("r=")).unwrap();
    let without_proof = format!("c={},r={nonce}", b64.encode([gs2.as_bytes(), binding_data].concat()));
    let (client_key, _) = derive_keys(password, &verifier.salt, verifier.iterations);
    let stored_key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(client_key).into();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&stored_key).unwrap();
    mac.update(format!("{bare},{server_first},{without_proof}").as_bytes());
    let signature: [u8; 32] = mac.finalize().into_bytes().into();
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
    server.finish(format!("{without_proof},p={}", b64.encode(proof)).as_bytes(), &verifier).map(drop)
}

#[test]
fn channel_binding_follows_postgres_rules() {
    let end_point = [7u8; 32];
    let offered = Binding { chosen: false, data: Some(&end_point) };
    let plus = Binding { chosen: true, data: Some(&end_point) };
    let tse = "p=tls-server-end-point,,";
    // PLUS with the connection's data logs in; a wrong password still fails.
    assert_eq!(bound_exchange("s3cret", tse, &end_point, plus), Ok(()));
    assert_eq!(bound_exchange("wrong", tse, &end_point, plus), Err(AuthError::WrongPassword));
    // Data of another connection (a man in the middle's certificate) is refused.
    let err = bound_exchange("s3cret", tse, &[8u8; 32], plus).unwrap_err();
    assert!(matches!(err, AuthError::ChannelBinding(m) if m.contains("does not match")), "{err}");
    // Without binding: "n" is fine on TLS, "y" only where PLUS was not offered.
    assert_eq!(bound_exchange("s3cret", "n,,", b"", offered), Ok(()));
    assert_eq!(bound_exchange("s3cret", "y,,", b"", NO_BINDING), Ok(()));
    let err = bound_exchange("s3cret", "y,,", b"", offered).unwrap_err();
    assert!(matches!(err, AuthError::ChannelBinding(m) if m.contains("thinks pgrelay does not")), "{err}");
    // The header must agree with the mechanism chosen.
    assert!(matches!(bound_exchange("s3cret", tse, &end_point, offered), Err(AuthError::ChannelBinding(_))));
    assert!(matches!(bound_exchange("s3cret", "n,,", b"", plus), Err(AuthError::ChannelBinding(_))));
    let other_type = bound_exchange("s3cret", "p=tls-unique,,", b"", plus).unwrap_err();
    assert_eq!(other_type, AuthError::Unsupported("a channel binding type other than tls-server-end-point"));
    let authzid = bound_exchange("s3cret", "n,a=admin,", b"", NO_BINDING).unwrap_err();
    assert_eq!(authzid, AuthError::Unsupported("a SCRAM authorization identity"));
}

#[test]
fn plus_is_offered_first_on_tls_and_only_there() {
    let users = config("[[users]]\nname = \"app\"\npassword = \"pw\"\n");
    let user = UserDb::from_config(&users).unwrap().get("app").unwrap().clone();
    let (_, plain) = ClientAuth::start(user.clone(), None);
    let (mut tls, offer) = ClientAuth::start(user, Some(&[1u8; 32]));
    let text = |step: &AuthStep| match step {
        AuthStep::Continue(m) => String::from_utf8_lossy(&m[9..]).into_owned(),
        AuthStep::Done(_) => panic!("a SCRAM user needs a password"),
    };
    assert_eq!(text(&plain), "SCRAM-SHA-256\0\0");
    assert_eq!(text(&offer), "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    // PLUS may not be chosen where it was not offered, nor another mechanism.
    let (mut plain, _) = ClientAuth::start(tls.user.clone(), None);
    let initial = |mechanism: &str| [mechanism.as_bytes(), b"\0\0\0\0\x10n,,n=,r=abcdefgh"].concat();
    assert!(matches!(plain.step(&initial("SCRAM-SHA-256-PLUS")), Err(AuthError::Unsupported(_))));
    assert!(matches!(tls.step(&initial("SCRAM-SHA-1")), Err(AuthError::Unsupported(_))));
}

#[test]
fn derived_keys_are_cached_per_salt() {
    let ScramSecret::Password(password) = ScramSecret::password("s3cret") else { unreachable!() };
    let secret = ScramSecret::Password(password.clone());
    let verifier = ScramVerifier::from_password("s3cret");
    assert!(!password.has_keys_for(&verifier.salt, verifier.iterations));
    assert!(scram_exchange(&verifier, &secret).is_ok());
    assert!(password.has_keys_for(&verifier.salt, verifier.iterations), "clones share the cache");
    assert!(scram_exchange(&verifier, &secret).is_ok(), "cached keys still produce a valid proof");
    let other = ScramVerifier::from_password("s3cret");
    assert!(scram_exchange(&other, &secret).is_ok(), "a new salt derives new keys");
    assert!(password.has_keys_for(&other.salt, other.iterations));
    assert_eq!(scram_exchange(&other, &ScramSecret::password("wrong")).unwrap_err(), AuthError::WrongPassword);
}

fn config(users: &str) -> Config {
    let text = format!("[[nodes]]\nname = \"pg0\"\n\n{users}\n[[databases]]\nname = \"app\"\n");
    Config::parse(&text).expect("test config")
}

/// Runs a client-facing exchange for `user` with `password` as a real
/// client would answer; returns each message pgrelay sent (as its
/// authentication request code) and how it ended.
fn client_exchange(user: Arc<UserEntry>, password: &str) -> (Vec<u32>, Result<(), AuthError>) {
    let code = |message: &Bytes| u32::from_be_bytes(message[5..9].try_into().expect("an auth request"));
    let (mut auth, mut step) = ClientAuth::start(user.clone(), None);
    let mut sent = Vec::new();
    let mut scram = None;
    loop {
        let message = match step {
            AuthStep::Done(_) => return (sent, Ok(())),
            AuthStep::Continue(message) => message,
        };
        sent.push(code(&message));
        let answer = match code(&message) {
            5 => {
                let salt: [u8; 4] = message[9..13].try_into().unwrap();
                let mut answer = md5::salted_answer(&md5::stored_hash(password, &user.name), salt).into_bytes();
                answer.push(0);
                answer
            }
            10 => {
                let (client, first) = ScramClient::start();
                scram = Some(client);
                let mut answer = format!("{}\0", MECHANISM).into_bytes();
                answer.extend_from_slice(&(first.len() as u32).to_be_bytes());
                answer.extend_from_slice(first.as_bytes());
                answer
            }
            11 => {
                let client = scram.take().expect("SASL started");
                let fin = client
                    .answer(&message[9..], &ScramSecret::password(password), u32::MAX)
                    .expect("a valid challenge");
                fin.client_final.into_bytes()
            }
            other => panic!("unexpected auth request {other}"),
        };
        step = match auth.step(&answer) {
            Ok(next) => next,
            Err(e) => return (sent, Err(e)),
        };
    }
}

#[test]
fn an_unknown_user_is_challenged_like_a_user_with_a_wrong_password() {
    let db = UserDb::from_config(&config("[[users]]\nname = \"app\"\npassword = \"secret\"\n")).unwrap();
    let app = db.get("app").unwrap().clone();
    assert_eq!(client_exchange(app.clone(), "secret"), (vec![10, 11], Ok(())));
    let wrong = client_exchange(app, "wrong");
    assert_eq!(wrong, (vec![10, 11], Err(AuthError::WrongPassword)));
    let unknown = db.unknown("nobody");
    assert!(unknown.is_unknown());
    assert_eq!(client_exchange(unknown, "wrong"), wrong);
    // Whatever the password: nobody can log in as a user that does not exist.
    assert_eq!(client_exchange(db.unknown("nobody"), "").1, Err(AuthError::WrongPassword));
}

#[test]
fn an_unknown_users_salt_is_stable_per_name_and_looks_real() {
    let db = UserDb::from_config(&config("[[users]]\nname = \"app\"\npassword = \"secret\"\n")).unwrap();
    let verifier = |name: &str| match &db.unknown(name).client {
        ClientSecret::Unknown(Mock::Scram(v)) => v.clone(),
        other => panic!("{other:?}"),
    };
    let ClientSecret::Scram(real) = &db.get("app").unwrap().client else { panic!("SCRAM user") };
    assert_eq!(verifier("nobody"), verifier("nobody"));
    assert_ne!(verifier("nobody").salt, verifier("somebody").salt);
    assert_eq!((verifier("nobody").salt.len(), verifier("nobody").iterations), (real.salt.len(), 4096));
    // Across a reload too.
    let reloaded = UserDb::from_config(&config("[[users]]\nname = \"app\"\npassword = \"secret\"\n")).unwrap();
    let ClientSecret::Unknown(Mock::Scram(again)) = &reloaded.unknown("nobody").client else { panic!() };
    assert_eq!(again, &verifier("nobody"));
}

#[test]
fn unknown_users_get_the_method_most_users_have() {
    let md5_users = "[[users]]\nname = \"a\"\npassword = \"a\"\nauth_type = \"md5\"\n\n\
                     [[users]]\nname = \"b\"\npassword = \"b\"\nauth_type = \"md5\"\n\n\
                     [[users]]\nname = \"c\"\npassword = \"c\"\n\n\
                     [[users]]\nname = \"t\"\nauth_type = \"trust\"\n";
    let db = UserDb::from_config(&config(md5_users)).unwrap();
    let wrong = client_exchange(db.get("a").unwrap().clone(), "wrong");
    assert_eq!(wrong, (vec![5], Err(AuthError::WrongPassword)));
    assert_eq!(client_exchange(db.unknown("nobody"), "wrong"), wrong);
    // A tie goes to SCRAM, PostgreSQL's default.
    let tie =
        "[[users]]\nname = \"a\"\npassword = \"a\"\nauth_type = \"md5\"\n\n[[users]]\nname = \"c\"\npassword = \"c\"\n";
    let db = UserDb::from_config(&config(tie)).unwrap();
    assert_eq!(client_exchange(db.unknown("nobody"), "x").0, vec![10, 11]);
}

#[test]
fn looked_up_users_follow_the_pg_hba_method_postgresql_would_use() {
    use crate::config::AuthType::{Md5, ScramSha256};
    let verifier = ScramVerifier::from_password("pw").to_rolpassword();
    let md5_hash = md5::stored_hash("pw", "u");
    let scram = looked_up_user("u", &verifier, ScramSha256).expect("a verifier serves SCRAM");
    assert!(matches!(scram.client, ClientSecret::Scram(_)));
    assert_eq!(scram.server.describe(), "the ClientKey recovered from its clients' SCRAM proofs");
    let still_scram = looked_up_user("u", &verifier, Md5).expect("md5 takes a verifier with SCRAM");
    assert!(matches!(still_scram.client, ClientSecret::Scram(_)));
    let md5_user = looked_up_user("u", &md5_hash, Md5).expect("an md5 hash serves md5");
    assert!(matches!(md5_user.client, ClientSecret::Md5 { .. }));
    assert_eq!(md5_user.server.describe(), "its md5 hash (answers md5 only)");
    assert!(looked_up_user("u", &md5_hash, ScramSha256).is_none(), "scram-sha-256 cannot use an md5 hash");
    assert!(looked_up_user("u", "SCRAM-SHA-256$broken", ScramSha256).is_none());
    assert!(scram.server.same_secret(&looked_up_user("u", &verifier, ScramSha256).unwrap().server));
    let other = ScramVerifier::from_password("pw").to_rolpassword();
    assert!(!scram.server.same_secret(&looked_up_user("u", &other, ScramSha256).unwrap().server), "a new salt");
}
