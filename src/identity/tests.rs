use super::*;
use crate::config::IdentityConfig;
use std::io::Write;

const KEY: &str = "HGTESTMEMBER00000001";
const SECRET: &str = "member-secret";

fn body(bytes: &'static [u8]) -> Payload {
    Payload::new(bytes::Bytes::from_static(bytes))
}

fn identity(mode: IdentityMode, static_principal: Option<&str>) -> (Identity, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callers.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        r#"
[[caller]]
id = "member"
account_id = "222222222222"
role = "member"
access_key_id = "{KEY}"
secret_access_key = "{SECRET}"
[caller.attributes]
team = "soar"
"#
    )
    .unwrap();
    let config = IdentityConfig {
        mode,
        callers: path,
        static_principal: static_principal.map(String::from),
    };
    (Identity::load(&config, "us-east-1", false).unwrap(), dir)
}

/// Signs like an SDK client would: host, content-type and x-amz-date.
fn signed_request(secret: &str, at: SystemTime, body: &[u8]) -> http::request::Parts {
    let mut req = http::Request::builder()
        .method("PATCH")
        .uri("/findings/batchupdate")
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let credentials = Credentials::new(KEY, secret, None, None, "test");
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("securityhub")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "PATCH",
        "http://127.0.0.1:8080/findings/batchupdate",
        [
            ("host", "127.0.0.1:8080"),
            ("content-type", "application/json"),
        ]
        .into_iter(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut req);
    req.into_parts().0
}

#[test]
fn a_correct_signature_maps_to_the_principal() {
    let (id, _dir) = identity(IdentityMode::Sigv4, None);
    let now = SystemTime::now();
    let parts = signed_request(SECRET, now, b"{}");
    let p = id.authenticate(&parts, &body(b"{}"), now, None).unwrap();
    assert_eq!(p.id, "member");
    assert_eq!(p.account_id, "222222222222");
    assert_eq!(p.role, Role::Member);
    assert_eq!(p.attributes["team"], "soar");
}

#[test]
fn a_changed_body_or_wrong_secret_fails() {
    let (id, _dir) = identity(IdentityMode::Sigv4, None);
    let now = SystemTime::now();
    let parts = signed_request(SECRET, now, b"{}");
    assert!(matches!(
        id.authenticate(&parts, &body(b"{ }"), now, None),
        Err(AuthError::BadSignature(_))
    ));
    let parts = signed_request("not-the-secret", now, b"{}");
    let err = id
        .authenticate(&parts, &body(b"{}"), now, None)
        .unwrap_err();
    assert!(matches!(err, AuthError::BadSignature(_)));
    assert_eq!(err.error_type(), "InvalidSignatureException");
}

#[test]
fn stale_and_future_requests_fail() {
    let (id, _dir) = identity(IdentityMode::Sigv4, None);
    let now = SystemTime::now();
    for at in [
        now - Duration::from_secs(16 * 60),
        now + Duration::from_secs(16 * 60),
    ] {
        let parts = signed_request(SECRET, at, b"{}");
        let err = id
            .authenticate(&parts, &body(b"{}"), now, None)
            .unwrap_err();
        // The key the head named is in the message, the decision record's word of who tried.
        assert!(
            err.to_string().ends_with(&format!("(access key id {KEY})")),
            "{err}"
        );
        assert_eq!(err.error_type(), "InvalidSignatureException");
        assert!(matches!(bare(err), AuthError::Stale(_)));
    }
    // within the window is fine
    let parts = signed_request(SECRET, now - Duration::from_secs(14 * 60), b"{}");
    assert!(id.authenticate(&parts, &body(b"{}"), now, None).is_ok());
}

#[test]
fn missing_and_unknown_keys_fail() {
    let (id, _dir) = identity(IdentityMode::Sigv4, None);
    let now = SystemTime::now();
    let mut parts = signed_request(SECRET, now, b"{}");
    let auth = parts.headers["authorization"]
        .to_str()
        .unwrap()
        .replace(KEY, "HGUNKNOWN");
    parts.headers.insert("authorization", auth.parse().unwrap());
    let err = id
        .authenticate(&parts, &body(b"{}"), now, None)
        .unwrap_err();
    // Too short for an access key id: not shown, as a secret in its place would not be.
    assert!(matches!(err, AuthError::UnknownKey(ref k) if k.starts_with("(not shown")));
    assert_eq!(err.error_type(), "UnrecognizedClientException");
    for (claimed, shown) in [
        ("HGUNKNOWN0000000000A", true),
        ("AKIAIOSFODNN7EXAMPLE", true),
        // The key id and the secret swapped: the secret goes where the key id belongs (one
        // with a `/` breaks the credential scope apart, and is refused as malformed).
        ("wJalrXUtnFEMI+K7MDENG+bPxRfiCYEXAMPLEKEY", false),
        ("member-secret-from-env-7Qz9", false),
        ("admin-secret", false),
    ] {
        let mut parts = signed_request(SECRET, now, b"{}");
        let auth = parts.headers["authorization"]
            .to_str()
            .unwrap()
            .replace(KEY, claimed);
        parts.headers.insert("authorization", auth.parse().unwrap());
        let err = id
            .authenticate(&parts, &body(b"{}"), now, None)
            .unwrap_err();
        assert!(matches!(err, AuthError::UnknownKey(_)), "{claimed}: {err}");
        assert_eq!(err.to_string().contains(claimed), shown, "{claimed}: {err}");
    }
    parts.headers.remove("authorization");
    assert!(matches!(
        id.authenticate(&parts, &body(b"{}"), now, None),
        Err(AuthError::Missing)
    ));
}

#[test]
fn authorization_header_parsing() {
    let sig = "a".repeat(64);
    let h = format!("AWS4-HMAC-SHA256 Credential=AK/20261124/us-east-1/securityhub/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}");
    let a = Authorization::parse(&h).unwrap();
    assert_eq!(a.access_key_id, "AK");
    assert_eq!(a.region, "us-east-1");
    assert_eq!(a.signed_headers, vec!["content-type", "host", "x-amz-date"]);
    for bad in [
        "Basic abc",
        "AWS4-HMAC-SHA256 Credential=AK/20261124/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=aa",
        "AWS4-HMAC-SHA256 Credential=AK/2026/us-east-1/securityhub/aws4_request, SignedHeaders=host, Signature=aa",
        "AWS4-HMAC-SHA256 SignedHeaders=host",
    ] {
        assert!(Authorization::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn authorization_components_appear_exactly_once() {
    // In passthrough hubgate maps the claimed key while AWS reads the header itself: with two
    // Credentials (or two of anything) the two could disagree on who the caller is.
    let sig = "a".repeat(64);
    let cred = "Credential=AK/20261124/us-east-1/securityhub/aws4_request";
    let admin = "Credential=ADMIN/20261124/us-east-1/securityhub/aws4_request";
    let signed = "SignedHeaders=host;x-amz-date";
    let signature = format!("Signature={sig}");
    let repeated = [
        (
            format!("{cred}, {signed}, {signature}, {admin}"),
            "Credential",
        ),
        (
            format!("{admin}, {cred}, {signed}, {signature}"),
            "Credential",
        ),
        (
            format!("{cred}, {cred}, {signed}, {signature}"),
            "Credential",
        ),
        (
            format!("{cred}, {signed}, SignedHeaders=host, {signature}"),
            "SignedHeaders",
        ),
        (
            format!(
                "{cred}, {signed}, {signature}, Signature={}",
                "b".repeat(64)
            ),
            "Signature",
        ),
    ];
    for (rest, name) in repeated {
        let h = format!("AWS4-HMAC-SHA256 {rest}");
        match Authorization::parse(&h) {
            Err(AuthError::Malformed(m)) => {
                assert_eq!(
                    m,
                    format!("the {name} component appears more than once"),
                    "{h}"
                )
            }
            other => panic!("{h}: {other:?}"),
        }
    }
    // Unknown components, and empty ones (a stray comma), are refused by place; none of their
    // text is shown, not even a name before `=` (it could be a pasted secret).
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    for (rest, shown, hidden) in [
        (
            format!("{cred}, {signed}, {signature}, Foo=bar"),
            "component 4 after AWS4-HMAC-SHA256 is not a Credential, SignedHeaders or Signature component",
            "Foo",
        ),
        (
            format!("{cred}, {signed}, {signature},"),
            "component 4 after AWS4-HMAC-SHA256 is empty",
            "\"",
        ),
        (
            format!("{cred}, credential=X/20261124/us-east-1/securityhub/aws4_request, {signed}, {signature}"),
            "component 2 after",
            "credential=",
        ),
        (format!("{cred}, {signed}, {signature}, {secret}"), "component 4 after", secret),
        (format!("{cred}, {signed}, {signature}, {secret}=x"), "component 4 after", "wJalr"),
        (format!("{secret}, {cred}, {signed}, {signature}"), "component 1 after", "wJalr"),
    ] {
        let h = format!("AWS4-HMAC-SHA256 {rest}");
        match Authorization::parse(&h) {
            Err(AuthError::Malformed(m)) => {
                assert!(m.contains(shown), "{h}: {m}");
                assert!(!m.contains(hidden), "{h}: {m}");
                // The e2e suite scans every audit file for it, as the mark of a leaked header.
                assert!(!m.contains("Signature="), "{h}: {m}");
            }
            other => panic!("{h}: {other:?}"),
        }
    }
    // Each one missing.
    for (rest, name) in [
        (format!("{signed}, {signature}"), "Credential"),
        (format!("{cred}, {signature}"), "SignedHeaders"),
        (format!("{cred}, {signed}"), "Signature"),
    ] {
        let h = format!("AWS4-HMAC-SHA256 {rest}");
        match Authorization::parse(&h) {
            Err(AuthError::Malformed(m)) => assert_eq!(m, format!("{name} is missing"), "{h}"),
            other => panic!("{h}: {other:?}"),
        }
    }
    // Any order of the three, once each, is accepted (SigV4 does not fix the order).
    let h = format!("AWS4-HMAC-SHA256 {signature}, {cred}, {signed}");
    assert_eq!(Authorization::parse(&h).unwrap().access_key_id, "AK");
}

#[test]
fn static_mode_needs_no_signature() {
    let (id, _dir) = identity(IdentityMode::Static, Some("member"));
    let parts = http::Request::new(()).into_parts().0;
    let p = id
        .authenticate(&parts, &body(b""), SystemTime::now(), None)
        .unwrap();
    assert_eq!(p.id, "member");
}

#[test]
fn a_demo_secret_under_a_key_id_of_its_own_is_a_demo_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callers.toml");
    std::fs::write(
        &path,
        "[[caller]]\nid = \"ops\"\naccount_id = \"111111111111\"\nrole = \"administrator\"\n\
         access_key_id = \"HGPRODADMIN000000001\"\n\
         secret_access_key = \"demo-admin-secret-DO-NOT-USE-IN-PRODUCTION\"\n",
    )
    .unwrap();
    let config = IdentityConfig {
        mode: IdentityMode::Sigv4,
        callers: path.clone(),
        static_principal: None,
    };
    let loaded = Identity::load(&config, "us-east-1", false).unwrap();
    let aws: http::Uri = "https://securityhub.us-east-1.amazonaws.com"
        .parse()
        .unwrap();
    let local: http::Uri = "http://127.0.0.1:8085".parse().unwrap();
    for refused in [
        loaded
            .refuse_demo_keys(&path, &aws)
            .unwrap_err()
            .to_string(),
        refuse_demo_keys(&path, &aws).unwrap_err().to_string(),
    ] {
        assert!(
            refused.contains("the secret of a demo key (under access key id HGPRODADMIN000000001)"),
            "{refused}"
        );
        assert!(!refused.contains("DO-NOT-USE"), "{refused}");
    }
    assert!(loaded.refuse_demo_keys(&path, &local).is_ok());
    assert!(refuse_demo_keys(&path, &local).is_ok());
}

/// The refusal without the access key id it names.
fn bare(err: AuthError) -> AuthError {
    match err {
        AuthError::OfKey { error, .. } => *error,
        err => err,
    }
}

#[test]
fn secrets_never_print() {
    let s = Secret("hunter2".into());
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn a_secret_is_read_without_its_trailing_newlines_and_never_with_surrounding_whitespace() {
    // A secret file, or an environment variable filled from one, ends in a newline.
    for text in ["s3cr/t+K", "s3cr/t+K\n", "s3cr/t+K\r\n\n"] {
        assert_eq!(Secret::read(text).unwrap().0, "s3cr/t+K", "{text:?}");
    }
    for text in [
        "",
        "\n",
        " s3cr",
        "s3cr ",
        "s3cr\t\n",
        "s3\rcr",
        "s3\u{0}cr",
        "\u{feff}s3cr",
        "s3\u{200b}cr",
        "s3cr\u{a0}",
        "s3cr\u{e9}",
    ] {
        let why = Secret::read(text)
            .err()
            .unwrap_or_else(|| panic!("{text:?} was read"));
        assert!(!why.contains("s3"), "{why}");
    }
}

#[test]
fn an_access_key_id_no_credential_can_carry_does_not_load() {
    for key in ["HGMEMBER000000000001", "AKIA_x-y.z"] {
        assert!(super::is_sendable_key_id(key), "{key}");
    }
    for key in ["", "HG/KEY", "HG,KEY", " HGKEY", "HG KEY", "HG\u{e9}KEY"] {
        assert!(!super::is_sendable_key_id(key), "{key:?}");
    }
}

#[test]
fn a_secret_pasted_as_an_env_name_or_an_account_id_is_never_shown() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callers.toml");
    let config = IdentityConfig {
        mode: IdentityMode::Sigv4,
        callers: path.clone(),
        static_principal: None,
    };
    let load = |account: &str, secret_line: &str| {
        std::fs::write(
            &path,
            format!(
                "[[caller]]\nid = \"ci\"\naccount_id = \"{account}\"\nrole = \"member\"\n\
                 access_key_id = \"{KEY}\"\n{secret_line}\n"
            ),
        )
        .unwrap();
        Identity::load(&config, "us-east-1", false)
            .unwrap_err()
            .to_string()
    };
    for message in [
        load("222222222222", &format!("secret_env = \"{secret}\"")),
        load(secret, "secret_access_key = \"s\""),
    ] {
        assert!(!message.contains("wJalr"), "{message}");
        assert!(
            message.contains("(not shown: it could be a secret)"),
            "{message}"
        );
    }
    // What has the shape of what belongs there is still named.
    let unset = load("222222222222", "secret_env = \"HG_NO_SUCH_VARIABLE_SET\"");
    assert!(unset.contains("\"HG_NO_SUCH_VARIABLE_SET\""), "{unset}");
    let typo = load("22222222222", "secret_access_key = \"s\"");
    assert!(typo.contains("\"22222222222\""), "{typo}");
}

#[test]
fn a_session_token_beside_a_hubgate_key_is_refused_but_passthrough_keeps_it() {
    let (id, dir) = identity(IdentityMode::Sigv4, None);
    let now = SystemTime::now();
    let mut parts = signed_request(SECRET, now, b"{}");
    parts.headers.insert(
        "x-amz-security-token",
        "FwoGZXIvYXdzEXAMPLE".parse().unwrap(),
    );
    let err = id
        .authenticate(&parts, &body(b"{}"), now, None)
        .unwrap_err();
    assert_eq!(err.error_type(), "UnrecognizedClientException");
    assert!(matches!(bare(err), AuthError::SessionToken));
    // In the query string too.
    let mut parts = signed_request(SECRET, now, b"{}");
    parts.uri = "/findings/batchupdate?X-Amz-Security-Token=abc"
        .parse()
        .unwrap();
    assert!(matches!(
        id.authenticate(&parts, &body(b"{}"), now, None)
            .map_err(bare),
        Err(AuthError::SessionToken)
    ));
    // Passthrough: the caller's keys are real AWS keys and the token is theirs.
    let config = IdentityConfig {
        mode: IdentityMode::Sigv4,
        callers: dir.path().join("callers.toml"),
        static_principal: None,
    };
    let passthrough = Identity::load(&config, "us-east-1", true).unwrap();
    let mut parts = signed_request(SECRET, now, b"{}");
    parts.headers.insert(
        "x-amz-security-token",
        "FwoGZXIvYXdzEXAMPLE".parse().unwrap(),
    );
    assert_eq!(
        passthrough
            .authenticate(&parts, &body(b"{}"), now, None)
            .unwrap()
            .id,
        "member"
    );
}

#[test]
fn query_string_credentials_beside_the_header_are_refused_in_both_upstream_modes() {
    let (id, dir) = identity(IdentityMode::Sigv4, None);
    let config = IdentityConfig {
        mode: IdentityMode::Sigv4,
        callers: dir.path().join("callers.toml"),
        static_principal: None,
    };
    let passthrough = Identity::load(&config, "us-east-1", true).unwrap();
    let now = SystemTime::now();
    for query in [
        "X-Amz-Credential=AKIDOTHER%2F20260101%2Fus-east-1%2Fsecurityhub%2Faws4_request",
        "MaxResults=5&X-Amz-Signature=00",
        "x-amz-algorithm=AWS4-HMAC-SHA256",
        // percent-decoded, as AWS reads the name
        "X%2DAmz-SignedHeaders=host",
    ] {
        for identity in [&id, &passthrough] {
            let mut parts = signed_request(SECRET, now, b"{}");
            parts.uri = format!("/products?{query}").parse().unwrap();
            let err = identity
                .authenticate(&parts, &body(b"{}"), now, None)
                .unwrap_err();
            let shown = err.to_string();
            assert!(
                matches!(bare(err), AuthError::QueryCredentials(_)),
                "{query}: {shown}"
            );
        }
    }
    // An encoded session token name is a session token too.
    let mut parts = signed_request(SECRET, now, b"{}");
    parts.uri = "/products?X%2DAmz%2DSecurity%2DToken=abc".parse().unwrap();
    assert!(matches!(
        id.authenticate(&parts, &body(b"{}"), now, None)
            .map_err(bare),
        Err(AuthError::SessionToken)
    ));
}

/// In passthrough every forward carries the caller's own signature to AWS, also when a
/// certificate or the static principal names the caller: its head is checked as sigv4 mode's
/// is (here static mode), before a lookup is spent on a request AWS can only refuse.
#[test]
fn passthrough_checks_the_signed_head_whatever_names_the_caller() {
    let (_, dir) = identity(IdentityMode::Static, Some("member"));
    let config = IdentityConfig {
        mode: IdentityMode::Static,
        callers: dir.path().join("callers.toml"),
        static_principal: Some("member".into()),
    };
    let now = SystemTime::now();
    let east = Identity::load(&config, "us-east-1", true).unwrap();
    let parts = signed_request(SECRET, now, b"{}");
    assert_eq!(
        east.claim(&parts, now, None)
            .map(|c| c.claimed().id.clone())
            .unwrap(),
        "member"
    );
    let west = Identity::load(&config, "eu-west-1", true).unwrap();
    let err = west.claim(&parts, now, None).err().unwrap();
    assert!(err.to_string().contains("sign for eu-west-1"), "{err}");
    let mut unsigned = signed_request(SECRET, now, b"{}");
    unsigned.headers.remove("authorization");
    assert!(matches!(
        east.claim(&unsigned, now, None).err(),
        Some(AuthError::Missing)
    ));
    // Re-signed (not passthrough), static mode reads no head: hubgate signs the forward.
    let resign = Identity::load(&config, "eu-west-1", false).unwrap();
    assert!(resign.claim(&unsigned, now, None).is_ok());
}

/// Every call goes to upstream.region, so a signature scoped to another region is refused in
/// both modes: re-signed, a change the caller meant for another region's Security Hub would land
/// in this one; in passthrough AWS refuses it at upstream.endpoint (after lookups were spent).
#[test]
fn only_signatures_scoped_to_the_upstream_region_are_mapped() {
    let (_, dir) = identity(IdentityMode::Sigv4, None);
    let config = IdentityConfig {
        mode: IdentityMode::Sigv4,
        callers: dir.path().join("callers.toml"),
        static_principal: None,
    };
    let now = SystemTime::now();
    let parts = signed_request(SECRET, now, b"{}");
    for passthrough in [false, true] {
        let east = Identity::load(&config, "us-east-1", passthrough).unwrap();
        assert_eq!(
            east.authenticate(&parts, &body(b"{}"), now, None)
                .unwrap()
                .id,
            "member"
        );
        let west = Identity::load(&config, "eu-west-1", passthrough).unwrap();
        let err = west
            .authenticate(&parts, &body(b"{}"), now, None)
            .unwrap_err();
        assert!(err.to_string().contains("sign for eu-west-1"), "{err}");
    }
    // In passthrough, a signature without Host, which AWS refuses.
    let east = Identity::load(&config, "us-east-1", true).unwrap();
    let mut hostless = signed_request(SECRET, now, b"{}");
    let auth = hostless.headers["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(auth.contains(";host;"), "{auth}");
    hostless.headers.insert(
        "authorization",
        auth.replace(";host;", ";").parse().unwrap(),
    );
    let err = east
        .authenticate(&hostless, &body(b"{}"), now, None)
        .unwrap_err();
    assert!(err.to_string().contains("must include host"), "{err}");
}

#[test]
fn a_broken_callers_file_is_reported_without_its_text() {
    let leaked = "RlZvTe+/cm1sQ9AaaSE41LQ2F+iSLHl4EUS75eGY";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callers.toml");
    for (line, place, reason) in [
        (
            format!("secret_acces_key = \"{leaked}\""),
            "line 6, column 1",
            "unknown field `(not shown)`, expected one of `id`, `account_id`",
        ),
        (
            format!("secret_access_key = \"{leaked}"),
            "line 6, column 62",
            "expected `\"`",
        ),
        (
            format!("role = \"{leaked}\""),
            "line 6, column 8",
            "unknown variant `(not shown)`, expected `administrator` or `member`",
        ),
        (
            format!("secret_access_key = {leaked}"),
            "line 6, column 21",
            "string values must be quoted",
        ),
    ] {
        // The broken line is line 6.
        let fifth = if line.starts_with("role") {
            "secret_env = \"UNSET\""
        } else {
            "role = \"member\""
        };
        std::fs::write(
            &path,
            format!(
                "[[caller]]\nid = \"m\"\naccount_id = \"222222222222\"\naccess_key_id = \"{KEY}\"\n{fifth}\n{line}\n"
            ),
        )
        .unwrap();
        let message = read_callers_file(&path).unwrap_err().to_string();
        assert!(!message.contains(leaked), "{line}: {message}");
        assert!(!message.contains("RlZ"), "{line}: {message}");
        assert!(message.contains(place), "{line}: {message}");
        assert!(message.contains(reason), "{line}: {message}");
    }
}

#[test]
fn a_signed_header_named_more_than_once_is_refused_before_any_signing() {
    let (id, _dir) = identity(IdentityMode::Sigv4, None);
    let now = SystemTime::now();
    // 40000 mentions of `host` used to become 40000 headers for the signature library, whose
    // header map panics past 32768; two mentions are refused the same way.
    for repeats in [1, 40_000] {
        let mut parts = signed_request(SECRET, now, b"{}");
        let auth = parts.headers["authorization"].to_str().unwrap().replace(
            "SignedHeaders=",
            &format!("SignedHeaders={}", "host;".repeat(repeats)),
        );
        parts.headers.insert("authorization", auth.parse().unwrap());
        match id.authenticate(&parts, &body(b"{}"), now, None) {
            Err(AuthError::Malformed(m)) => assert!(m.contains("more than once"), "{m}"),
            other => panic!("{repeats}: {other:?}"),
        }
    }
    // Each name once still verifies.
    let parts = signed_request(SECRET, now, b"{}");
    assert!(id.authenticate(&parts, &body(b"{}"), now, None).is_ok());
}

#[test]
fn a_host_that_is_not_a_host_name_is_refused_before_any_signing() {
    let (id, _dir) = identity(IdentityMode::Sigv4, None);
    let now = SystemTime::now();
    for host in [
        "localhost/findings",
        "localhost?x=1",
        "localhost#f",
        "user@localhost",
        "local host",
        "",
    ] {
        let mut parts = signed_request(SECRET, now, b"{}");
        parts.headers.insert("host", host.parse().unwrap());
        match id
            .authenticate(&parts, &body(b"{}"), now, None)
            .map_err(bare)
        {
            Err(AuthError::Malformed(m)) => assert!(m.contains("host name"), "{host}: {m}"),
            other => panic!("{host}: {other:?}"),
        }
    }
    // Names, IPv4 and IPv6 literals, with or without a port, are read as before.
    for host in [
        "securityhub.us-east-1.amazonaws.com",
        "127.0.0.1:8443",
        "[::1]:443",
    ] {
        let mut parts = signed_request(SECRET, now, b"{}");
        parts.headers.insert("host", host.parse().unwrap());
        assert!(
            !matches!(
                id.authenticate(&parts, &body(b"{}"), now, None),
                Err(AuthError::Malformed(_))
            ),
            "{host}"
        );
    }
}

/// An mtls-mode identity loaded from a callers file of `text`.
fn mtls_identity(text: &str) -> (Identity, tempfile::TempDir) {
    let (loaded, dir) = mtls_load(text);
    (loaded.unwrap(), dir)
}

/// Loading an mtls-mode identity from a callers file of `text`.
fn mtls_load(text: &str) -> (Result<Identity, CallersError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callers.toml");
    std::fs::write(&path, text).unwrap();
    let config = IdentityConfig {
        mode: IdentityMode::Mtls,
        callers: path,
        static_principal: None,
    };
    (Identity::load(&config, "us-east-1", false), dir)
}

#[test]
fn a_client_certificate_maps_to_one_caller_or_to_none() {
    let (identity, _dir) = mtls_identity(
        r#"
[[caller]]
id = "runner"
account_id = "222222222222"
role = "member"
client_cert_san = "spiffe://corp/runner"
client_cert_cn = "runner"

[[caller]]
id = "admin"
account_id = "111111111111"
role = "administrator"
client_cert_san = "spiffe://corp/admin"
client_cert_cn = "admin"
"#,
    );
    assert_eq!(
        identity.caller_count(),
        2,
        "two callers, each with a SAN and a CN"
    );
    let cert = |sans: &[&str], cns: &[&str]| ClientCert {
        sans: sans.iter().map(|s| s.to_string()).collect(),
        cns: cns.iter().map(|s| s.to_string()).collect(),
        ..ClientCert::default()
    };
    let who = |c: ClientCert| identity.by_certificate(Some(&c)).map(|p| p.id.clone());
    assert_eq!(
        who(cert(&["x", "spiffe://corp/runner"], &[])).unwrap(),
        "runner"
    );
    // The same caller named twice is still that caller; a SAN still wins over the CN.
    assert_eq!(
        who(cert(
            &["spiffe://corp/runner", "spiffe://corp/runner"],
            &["admin"]
        ))
        .unwrap(),
        "runner"
    );
    assert_eq!(who(cert(&["x"], &["y", "admin"])).unwrap(), "admin");
    // Two callers, whatever their order: neither.
    for (sans, cns) in [
        (
            &["spiffe://corp/runner", "spiffe://corp/admin"][..],
            &[][..],
        ),
        (
            &["spiffe://corp/admin", "x", "spiffe://corp/runner"][..],
            &[][..],
        ),
        (&[][..], &["runner", "admin"][..]),
    ] {
        match who(cert(sans, cns)) {
            Err(AuthError::AmbiguousClientCert(m)) => {
                assert!(m.contains("runner") && m.contains("admin"), "{m}")
            }
            other => panic!("{sans:?} {cns:?}: {other:?}"),
        }
    }
}

/// A verified certificate with these SANs, its chain DNS-bound by a CA's name constraints
/// (`constrained`) or unconstrained.
fn named(sans: &[&str], constrained: bool) -> ClientCert {
    ClientCert {
        sans: sans.iter().map(|s| s.to_string()).collect(),
        constraints: match constrained {
            true => super::ChainConstraints::DnsBound,
            false => super::ChainConstraints::None,
        },
        ..ClientCert::default()
    }
}

#[test]
fn the_cn_of_a_name_constrained_chain_names_no_one_but_its_san_still_does() {
    let (identity, _dir) = mtls_identity(
        r#"
[[caller]]
id = "runner"
account_id = "222222222222"
role = "member"
client_cert_san = "runner.teamx.corp"

[[caller]]
id = "admin"
account_id = "111111111111"
role = "administrator"
client_cert_cn = "admin-cli"
"#,
    );
    let cert = |sans: &[&str], constrained: bool| ClientCert {
        cns: vec!["admin-cli".to_string()],
        ..named(sans, constrained)
    };
    let who = |c: ClientCert| identity.by_certificate(Some(&c)).map(|p| p.id.clone());
    assert_eq!(who(cert(&[], false)).unwrap(), "admin");
    assert_eq!(who(cert(&["runner.teamx.corp"], true)).unwrap(), "runner");
    for sans in [&[][..], &["svc.teamx.corp"][..]] {
        match who(cert(sans, true)) {
            Err(AuthError::UnknownClientCert(m)) => {
                assert!(
                    m.contains("CN=admin-cli") && m.contains("name constraints"),
                    "{m}"
                )
            }
            other => panic!("{sans:?}: {other:?}"),
        }
    }
}

#[test]
fn the_uri_san_of_a_name_constrained_chain_names_no_one_but_its_dns_san_still_does() {
    let (identity, _dir) = mtls_identity(
        r#"
[[caller]]
id = "runner"
account_id = "222222222222"
role = "member"
client_cert_san = "runner.teamx.corp"

[[caller]]
id = "admin"
account_id = "111111111111"
role = "administrator"
client_cert_san = "spiffe://corp/admin"
"#,
    );
    let cert = named;
    let who = |c: ClientCert| identity.by_certificate(Some(&c)).map(|p| p.id.clone());
    assert_eq!(who(cert(&["spiffe://corp/admin"], false)).unwrap(), "admin");
    // A CA delegated DNS subtrees wrote the URI freely: only the DNS SAN it was bound for counts.
    let both = &["spiffe://corp/admin", "runner.teamx.corp"][..];
    assert_eq!(who(cert(both, true)).unwrap(), "runner");
    match who(cert(&["spiffe://corp/admin", "svc.teamx.corp"], true)) {
        Err(AuthError::UnknownClientCert(m)) => {
            assert!(
                m.contains("spiffe://corp/admin") && m.contains("its URI SANs name no caller"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A constrained CA that lists no DNS subtree (an IP range, say) wrote its DNS SANs freely.
    let unbound = ClientCert {
        sans: vec!["runner.teamx.corp".into()],
        constraints: super::ChainConstraints::NothingBound,
        ..ClientCert::default()
    };
    match who(unbound) {
        Err(AuthError::UnknownClientCert(m)) => {
            assert!(m.contains("none of its names names a caller"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_san_counts_only_as_the_kind_of_name_it_is_shaped_as() {
    for uri in [
        "spiffe://corp/ns/a/sa/b",
        "urn:uuid:1234",
        "https://x.example/y",
    ] {
        assert!(super::is_uri(uri) && !super::is_host_name(uri), "{uri}");
    }
    for host in ["runner.corp.internal", "*.corp.internal", "runner"] {
        assert!(super::is_host_name(host) && !super::is_uri(host), "{host}");
    }
    for neither in ["", "runner corp", "//corp/admin", "1x:y", "/admin"] {
        assert!(
            !super::is_uri(neither) && !super::is_host_name(neither),
            "{neither:?}"
        );
    }
}

#[test]
fn a_reloaded_callers_file_still_names_a_key_only_with_its_secret_and_principal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callers.toml");
    let entry = |secret: &str, role: &str| {
        format!(
            "[[caller]]\nid = \"ci\"\naccount_id = \"222222222222\"\nrole = \"{role}\"\n\
             access_key_id = \"{KEY}\"\nsecret_access_key = \"{secret}\"\n"
        )
    };
    let config = IdentityConfig {
        mode: IdentityMode::Sigv4,
        callers: path.clone(),
        static_principal: None,
    };
    let load = |text: String| {
        std::fs::write(&path, text).unwrap();
        Identity::load(&config, "us-east-1", false).unwrap()
    };
    let before = load(entry("s1", "member"));
    let parts = signed_request("s1", SystemTime::now(), b"{}");
    let claim = before.claim(&parts, SystemTime::now(), None).unwrap();
    let credential = claim.credential().clone();
    let principal = claim.verify(&parts, &body(b"{}")).unwrap();
    let same = load(entry("s1", "member"));
    assert_eq!(same.still_names(&credential).as_deref(), Some(&*principal));
    assert!(load(entry("s2", "member"))
        .still_names(&credential)
        .is_none());
    let promoted = load(entry("s1", "administrator"));
    assert_ne!(
        promoted.still_names(&credential).as_deref(),
        Some(&*principal)
    );
    assert!(load(String::new()).still_names(&credential).is_none());
}

#[test]
fn a_401_shows_a_few_certificate_names_escaped_and_how_many() {
    let names = (0..20).map(|i| format!("host-{i}.corp"));
    let shown = super::shown_cert_names(names);
    assert!(shown.starts_with("host-0.corp, host-1.corp"), "{shown}");
    assert!(
        shown.contains("host-7.corp") && !shown.contains("host-8.corp"),
        "{shown}"
    );
    assert!(shown.ends_with(", … (20 names in all)"), "{shown}");
    let odd = super::shown_cert_names(["CN=a\nINFO forged".to_string()].into_iter());
    assert_eq!(odd, "CN=a\\nINFO forged");
    let long = super::shown_cert_names(["x".repeat(5000)].into_iter());
    assert!(long.ends_with("(5000 bytes in all)"), "{long}");
}

#[test]
fn a_certificate_whose_names_cannot_be_read_is_named_as_such() {
    // The TLS layer verified it, but x509-parser cannot read it: the caller learns that, not
    // that no certificate was presented.
    let cert = ClientCert::from_der(b"\x30\x03\x02\x01\x01");
    assert!(cert.unreadable.is_some() && cert.sans.is_empty() && cert.cns.is_empty());
    let (identity, _dir) = mtls_identity(
        "[[caller]]\nid = \"admin\"\naccount_id = \"111111111111\"\nrole = \"administrator\"\nclient_cert_cn = \"admin\"\n",
    );
    match identity.by_certificate(Some(&cert)) {
        Err(e @ AuthError::UnreadableClientCert(_)) => {
            assert!(e.to_string().contains("cannot read its names"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn callers_swapped_while_they_are_read_are_read_again() {
    // The old callers file names a secret file that is a FIFO, so the read waits on it; while
    // it waits, the callers file is replaced (as a Secret volume's swap does), and only then
    // does the old secret arrive. The old caller with the old secret must not be what loads.
    let dir = tempfile::tempdir().unwrap();
    let callers = dir.path().join("callers.toml");
    let fifo = dir.path().join("old.secret");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let entry = |id: &str, secret: &str| {
        format!(
            "[[caller]]\nid = \"{id}\"\naccount_id = \"222222222222\"\nrole = \"member\"\n\
             access_key_id = \"{KEY}\"\n{secret}\n"
        )
    };
    std::fs::write(&callers, entry("old", "secret_file = \"old.secret\"")).unwrap();
    let swapper = {
        let (callers, fifo, dir) = (callers.clone(), fifo.clone(), dir.path().to_path_buf());
        let new = entry("new", &format!("secret_access_key = \"{SECRET}\""));
        std::thread::spawn(move || {
            // Blocks until the load opens the FIFO to read the old secret.
            let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let next = dir.join("callers.toml.new");
            std::fs::write(&next, new).unwrap();
            std::fs::rename(&next, &callers).unwrap();
            writer.write_all(b"old-secret").unwrap();
        })
    };
    let loaded = load_callers_settled(&callers).unwrap();
    swapper.join().unwrap();
    let ids: Vec<&str> = loaded.iter().map(|c| c.principal.id.as_str()).collect();
    assert_eq!(ids, ["new"]);
}

/// AWS refuses a temporary key id without its session token and a long-term one with one; in
/// passthrough such a request is refused before a lookup is spent on it.
#[test]
fn a_session_token_must_fit_the_kind_of_key_in_passthrough() {
    let parts = |uri: &str, token: bool| {
        let mut b = http::Request::builder().uri(uri);
        if token {
            b = b.header("x-amz-security-token", "FwoGZXIvYXdzEXAMPLE");
        }
        b.body(()).unwrap().into_parts().0
    };
    let temporary = "ASIAIOSFODNN7EXAMPLE";
    let long_term = "AKIAIOSFODNN7EXAMPLE";
    for (uri, token) in [
        ("/findings", true),
        ("/accounts?X-Amz-Security-Token=t", false),
    ] {
        assert!(session_token_fits(&parts(uri, token), temporary).is_ok());
        let err = session_token_fits(&parts(uri, token), long_term).unwrap_err();
        assert!(
            err.to_string().contains("takes no X-Amz-Security-Token"),
            "{err}"
        );
    }
    assert!(session_token_fits(&parts("/findings", false), long_term).is_ok());
    let err = session_token_fits(&parts("/findings", false), temporary).unwrap_err();
    assert!(
        err.to_string().contains("needs its X-Amz-Security-Token"),
        "{err}"
    );
    // An empty header is no token.
    let mut empty = parts("/findings", false);
    empty
        .headers
        .insert("x-amz-security-token", http::HeaderValue::from_static(""));
    assert!(session_token_fits(&empty, long_term).is_ok());
    assert!(session_token_fits(&empty, temporary).is_err());
    // Key ids of other shapes (hubgate-issued keys) are not judged by their prefix.
    for token in [false, true] {
        assert!(session_token_fits(&parts("/findings", token), "HGKEXAMPLE0000000001").is_ok());
    }
}

#[test]
fn a_dns_san_names_its_caller_in_any_case_and_a_uri_only_as_written() {
    let (identity, _dir) = mtls_identity(
        r#"
[[caller]]
id = "runner"
account_id = "222222222222"
role = "member"
client_cert_san = "Runner.TeamX.corp"

[[caller]]
id = "admin"
account_id = "111111111111"
role = "administrator"
client_cert_san = "spiffe://corp/Admin"
"#,
    );
    let who = |sans: &[&str]| {
        identity
            .by_certificate(Some(&named(sans, false)))
            .map(|p| p.id.clone())
    };
    assert_eq!(who(&["runner.teamx.corp"]).unwrap(), "runner");
    assert_eq!(who(&["RUNNER.TEAMX.CORP"]).unwrap(), "runner");
    assert_eq!(who(&["spiffe://corp/Admin"]).unwrap(), "admin");
    assert!(who(&["spiffe://corp/admin"]).is_err());
}

#[test]
fn one_dns_name_in_two_cases_is_one_name_used_twice() {
    let (loaded, _dir) = mtls_load(
        r#"
[[caller]]
id = "runner"
account_id = "222222222222"
role = "member"
client_cert_san = "runner.teamx.corp"

[[caller]]
id = "admin"
account_id = "111111111111"
role = "administrator"
client_cert_san = "RUNNER.teamx.corp"
"#,
    );
    let err = loaded.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("client_cert_san") && err.contains("used twice"),
        "{err}"
    );
}
