//! Identity: who is calling. Loads the callers file and turns a request into a Principal,
//! by verifying the caller's SigV4 signature (`sigv4`) or by configuration (`static`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::{IdentityConfig, IdentityMode};
use crate::payload::Payload;

/// SigV4 requests dated further than this from hubgate's clock are refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Administrator,
    Member,
}

/// The caller as policies see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Principal {
    pub id: String,
    pub account_id: String,
    pub role: Role,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Principal {
    pub fn caller(&self) -> CallerId<'_> {
        CallerId {
            account: &self.account_id,
            principal: &self.id,
        }
    }
}

/// Who spends quota: what hubgate shares Security Hub's quota by. Accounts take turns, and
/// within an account its callers do (`quota::Pacer::acquire`, `enrich::queue`), so that
/// neither an account running many principals nor one principal's backlog crowds the others
/// out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerId<'a> {
    pub account: &'a str,
    /// The caller's principal id.
    pub principal: &'a str,
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A secret as a callers-file source holds it: trailing newlines trimmed (a secret file
    /// ends in one, and so does an environment variable filled from one, e.g. a Kubernetes
    /// `secretKeyRef` to a Secret made with `--from-file`), then refused when empty, when
    /// whitespace surrounds it or when it holds a control character. No client signs with such
    /// a secret (the AWS CLI's config file strips surrounding whitespace): loaded, it only
    /// made the caller's every request a 401 that said nothing of why. The reason never
    /// quotes the secret.
    fn read(text: &str) -> Result<Secret, &'static str> {
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() {
            return Err("is empty");
        }
        if secret.starts_with(char::is_whitespace) || secret.ends_with(char::is_whitespace) {
            return Err("begins or ends with whitespace (its text is not shown)");
        }
        if secret.chars().any(char::is_control) {
            return Err("holds a control character (its text is not shown)");
        }
        // A byte-order mark (a secret file saved by a Windows editor), a zero-width or a
        // non-breaking space pasted from a web page or chat, or a letter whose bytes depend on
        // its Unicode normalisation: invisible in the file, signed by no client that was given
        // the key as it looks. AWS's and `hubgate keys new`'s secrets are printable ASCII.
        if !secret.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(
                "holds a character other than printable ASCII, e.g. a byte-order mark or a \
                 zero-width space (its text is not shown)",
            );
        }
        Ok(Secret(secret.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    id: String,
    account_id: String,
    role: Role,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    client_cert_san: Option<String>,
    client_cert_cn: Option<String>,
    #[serde(default)]
    attributes: toml::Table,
}

#[derive(Debug)]
struct Caller {
    principal: Arc<Principal>,
    secret: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallersError {
    #[error("{file}: cannot read the callers file (identity.callers): {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Parse { file: PathBuf, reason: String },
    #[error("{file}: caller {id:?}: {reason}")]
    Invalid {
        file: PathBuf,
        id: String,
        reason: String,
    },
    #[error(
        "{file}: the callers file or its secret files kept changing while they were read \
         ({attempts} times); the callers in force stay until a read sees them settled"
    )]
    Changing { file: PathBuf, attempts: usize },
}

/// A callers file holds a shipped demo key while the upstream is not this machine.
#[derive(Debug, thiserror::Error)]
#[error(
    "{file}: caller {id:?} uses {what}, and \
     upstream.endpoint ({endpoint}) is not this machine: anyone could act as {id:?} there. \
     Make a key of its own with `hubgate keys new --id {id} --account {account} --role {role}` \
     and replace the entry (the demo keys work only with a loopback upstream, as in \
     config/demo/hubgate.toml)"
)]
pub struct DemoKeyInUse {
    file: PathBuf,
    id: String,
    account: String,
    role: &'static str,
    /// Which demo key's part it uses, and its access key id.
    what: String,
    endpoint: String,
}

/// The access key ids of config/demo/callers.toml. Their secrets are in the repository.
pub const DEMO_ACCESS_KEY_IDS: [&str; 2] = ["HGDEMOADMIN000000001", "HGDEMOMEMBER00000001"];

/// The secrets of config/demo/callers.toml. An access key id is no secret (it is in logs,
/// audit records and 503 messages), so a demo secret under a key id of the operator's own (the
/// demo entry copied with its key id renamed) is as public as the demo key itself.
const DEMO_SECRETS: [&str; 2] = [
    "demo-admin-secret-DO-NOT-USE-IN-PRODUCTION",
    "demo-member-secret-DO-NOT-USE-IN-PRODUCTION",
];

/// What a caller uses of a demo key, when it uses one: its key id, or its secret.
fn demo_part(key: &str, secret: Option<&str>) -> Option<String> {
    if DEMO_ACCESS_KEY_IDS.contains(&key) {
        Some(format!(
            "the demo access key id {key}, whose secret is public"
        ))
    } else if secret.is_some_and(|s| DEMO_SECRETS.contains(&s)) {
        Some(format!(
            "the secret of a demo key (under access key id {key}), which is public"
        ))
    } else {
        None
    }
}

/// Whether `upstream` is this machine: a loopback address or `localhost`.
pub fn is_loopback(upstream: &http::Uri) -> bool {
    let Some(host) = upstream.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a callers file that holds a shipped demo key when the upstream is not loopback:
/// those secrets are public, and would open a real Security Hub to anyone who can reach
/// hubgate.
pub fn refuse_demo_keys(callers: &Path, upstream: &http::Uri) -> Result<(), Box<DemoKeyInUse>> {
    if is_loopback(upstream) {
        return Ok(());
    }
    // An unreadable file is reported by Identity::load, with its own message.
    let Ok(file) = read_callers_file(callers) else {
        return Ok(());
    };
    // Only an inline secret is compared here; Identity::refuse_demo_keys, at start and on a
    // reload, compares every secret as loaded.
    match file.caller.into_iter().find_map(|c| {
        let key = c.access_key_id.as_deref()?;
        let what = demo_part(key, c.secret_access_key.as_deref())?;
        Some((what, c))
    }) {
        Some((what, c)) => Err(Box::new(DemoKeyInUse {
            file: callers.to_path_buf(),
            what,
            account: c.account_id,
            role: role_name(c.role),
            id: c.id,
            endpoint: upstream.to_string().trim_end_matches('/').to_string(),
        })),
        None => Ok(()),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Administrator => "administrator",
        Role::Member => "member",
    }
}

/// Why a caller could not be established. Each maps to 401 UNAUTHENTICATED.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the request is not signed: an AWS SigV4 Authorization header is required")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
    #[error("unknown access key id {0}")]
    UnknownKey(String),
    #[error(
        "the request signature does not match the signature hubgate computed for access key id {0}"
    )]
    BadSignature(String),
    /// A refusal of a request whose head named a known access key: the key is named (it is a
    /// key id of the callers file, never a secret).
    #[error("{error} (access key id {key})")]
    OfKey { key: String, error: Box<AuthError> },
    #[error("the request is dated {0}, more than 15 minutes from hubgate's clock")]
    Stale(String),
    #[error(
        "X-Amz-Security-Token is not accepted: hubgate-issued keys are long-term keys, \
         not temporary AWS credentials"
    )]
    SessionToken,
    #[error(
        "the query string carries SigV4 authentication parameter {0} beside the Authorization \
         header: a request is signed one way, with one set of credentials"
    )]
    QueryCredentials(&'static str),
    #[error("no client certificate was presented")]
    NoClientCert,
    #[error(
        "the client certificate verified, but hubgate cannot read its names ({0}), so it names \
         no caller"
    )]
    UnreadableClientCert(String),
    #[error("no caller is mapped to the client certificate ({0})")]
    UnknownClientCert(String),
    #[error(
        "the client certificate names more than one caller ({0}): a certificate must name \
         exactly one caller in the callers file"
    )]
    AmbiguousClientCert(String),
    #[error(
        "the callers file was reloaded while the request waited for quota, and it no longer \
         names the request's caller as it was authenticated (removed, given another secret, or \
         another role, account or attributes): nothing was sent; send the request again to \
         have it judged by the callers file as it is now"
    )]
    CallerChanged,
    #[error(
        "the client certificate this connection was opened with no longer verifies ({0}): it \
         has expired, or its CA is no longer in server.client_ca, since the connection began; \
         connect again with a valid certificate"
    )]
    ClientCertLapsed(String),
}

impl AuthError {
    /// The AWS exception name SDKs map to a typed error.
    pub fn error_type(&self) -> &'static str {
        match self {
            AuthError::OfKey { error, .. } => error.error_type(),
            AuthError::BadSignature(_) | AuthError::Stale(_) => "InvalidSignatureException",
            _ => "UnrecognizedClientException",
        }
    }

    /// `error`, refusing a request whose head named the known access key `key`, as it names
    /// that key: the message is the decision record's only word of who was tried (the
    /// principal stays unset until the signature is proven).
    fn of_key(key: &str, error: AuthError) -> AuthError {
        match error {
            // These name the key already.
            AuthError::BadSignature(_) | AuthError::UnknownKey(_) | AuthError::OfKey { .. } => {
                error
            }
            error => AuthError::OfKey {
                key: key.to_string(),
                error: Box::new(error),
            },
        }
    }
}

/// The loaded callers and the mode that reads them.
#[derive(Debug)]
pub struct Identity {
    mode: IdentityMode,
    /// False in upstream passthrough: callers hold real AWS keys hubgate never sees, AWS
    /// verifies their signatures, hubgate maps the claimed key.
    verify_signatures: bool,
    /// upstream.region: the region every call goes to, so the only one a caller's signature
    /// may be scoped to (in passthrough, the only one AWS accepts it for at hubgate's endpoint).
    region: String,
    by_key: HashMap<String, Caller>,
    by_san: HashMap<String, Arc<Principal>>,
    by_cn: HashMap<String, Arc<Principal>>,
    static_principal: Option<Arc<Principal>>,
    /// The `secret_file`s the callers file names, resolved: watched for changes with it.
    secret_files: Vec<PathBuf>,
}

/// The principals a callers file defines, without resolving any secret (for `hubgate eval`).
pub fn principals(path: &Path) -> Result<Vec<Principal>, CallersError> {
    Ok(read_callers_file(path)?
        .caller
        .into_iter()
        .map(|c| Principal {
            id: c.id,
            account_id: c.account_id,
            role: c.role,
            attributes: match serde_json::to_value(&c.attributes) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => Default::default(),
            },
        })
        .collect())
}

/// One callers-file entry after its secret has been resolved.
struct LoadedCaller {
    principal: Arc<Principal>,
    access_key_id: Option<String>,
    secret: Option<Secret>,
    /// Where the secret was read from, when it was a `secret_file`.
    secret_file: Option<PathBuf>,
    san: Option<String>,
    cn: Option<String>,
}

/// Checks a connection's client certificate again, now (the TLS layer's `recheck`): what it
/// says of its holder, with `lapsed` set once it has expired or lost its CA.
pub type CertCheck = std::sync::Arc<dyn Fn() -> Option<std::sync::Arc<ClientCert>> + Send + Sync>;

/// What the name constraints of the CAs on a client certificate's path bound of its names.
/// webpki holds a name to a CA's constraints only where they list subtrees of that name's form,
/// and never reads the subject CN: a CA delegated DNS names under `teamx.corp` (the usual way
/// to delegate issuance) is bound for its DNS SANs, and could still write `CN=admin-cli` or
/// `URI:spiffe://corp/admin` (a URI subtree would bind URIs, but webpki refuses every URI under
/// one); a CA limited to IP ranges could write any DNS name too.
/// Ordered by how little is bound: a chain counts as its least-binding CA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChainConstraints {
    /// No CA on the path has name constraints: every SAN and the CN may name a caller.
    #[default]
    None,
    /// Every constrained CA on the path lists DNS subtrees: its DNS SANs alone may name a caller.
    DnsBound,
    /// A constrained CA on the path lists no DNS subtree (or cannot be read): no name of the
    /// certificate may name a caller.
    NothingBound,
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientCert {
    /// URI and DNS subject alternative names, in certificate order.
    pub sans: Vec<String>,
    /// The subject's common names (almost always one), in certificate order.
    pub cns: Vec<String>,
    /// Why the certificate no longer verifies, when it has expired or lost its CA since the
    /// connection's handshake: it then names no caller, in any mode.
    pub lapsed: Option<String>,
    /// Why its names could not be read, when the TLS layer accepted a certificate that
    /// x509-parser cannot parse: it names no caller, and the caller is told so rather than
    /// that no certificate was presented.
    pub unreadable: Option<String>,
    /// Whether a CA that may be on its chain's path has name constraints, and which of its
    /// names they bound: see [`ChainConstraints`].
    pub constraints: ChainConstraints,
}

impl ClientCert {
    /// The SANs and CNs that may name a caller: those its chain's name constraints bound (all
    /// of them on a chain without any). A name no constraint bound was its CA's free choice,
    /// whatever it was delegated.
    fn constrained_names(&self) -> (Vec<&String>, Vec<&String>) {
        match self.constraints {
            ChainConstraints::None => (self.sans.iter().collect(), self.cns.iter().collect()),
            ChainConstraints::DnsBound => (
                self.sans.iter().filter(|s| !is_uri(s)).collect(),
                Vec::new(),
            ),
            ChainConstraints::NothingBound => (Vec::new(), Vec::new()),
        }
    }

    /// Reads the names of a DER certificate (already verified by the TLS layer).
    pub fn from_der(der: &[u8]) -> ClientCert {
        use x509_parser::extensions::GeneralName;
        let cert = match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => cert,
            Err(e) => {
                return ClientCert {
                    unreadable: Some(e.to_string()),
                    ..ClientCert::default()
                }
            }
        };
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                // `client_cert_san` does not say which kind of name it is, so each kind counts
                // only in its own shape, and no name can pass for the other kind: a DNS name
                // `spiffe://corp/admin` (a CA that lets requesters choose DNS names need not
                // check their syntax) named the caller of the URI `spiffe://corp/admin`.
                match name {
                    GeneralName::URI(u) if is_uri(u) => sans.push(u.to_string()),
                    GeneralName::DNSName(d) if is_host_name(d) => sans.push(d.to_string()),
                    _ => {}
                }
            }
        }
        let cns = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_string)
            .collect();
        ClientCert {
            sans,
            cns,
            lapsed: None,
            unreadable: None,
            constraints: ChainConstraints::None,
        }
    }
}

/// A URI as a SAN holds one: a scheme (RFC 3986 §3.1) and a colon, then anything.
fn is_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// A DNS name (or wildcard) as a SAN holds one: letters, digits, `-`, `_`, `.` and `*`, so
/// never a colon or a slash, and never anything `is_uri` takes.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b))
}

/// A SAN as callers are found by it: a DNS name in lower case, as DNS names are compared
/// (RFC 4343); a URI as it is (its path is case-sensitive). Compared exactly, a certificate
/// naming `Runner.TeamX.corp` matched no `client_cert_san = "runner.teamx.corp"`, and two
/// callers could be given the one name in two cases.
fn san_key(name: &str) -> std::borrow::Cow<'_, str> {
    match !is_uri(name) && name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(name.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(name),
    }
}

/// How many of a certificate's names a message shows.
const SHOWN_CERT_NAMES: usize = 8;

/// A certificate's names as a 401 shows them: the first few, each quoted short with its
/// control characters escaped, then how many there are. The message goes into the envelope,
/// the log line and the decision record of every request on the connection, and a
/// certificate (sent once per connection) can carry thousands of names: listed whole, each
/// small request wrote all of them to the audit disk again.
fn shown_cert_names(names: impl Iterator<Item = String>) -> String {
    let mut shown = Vec::with_capacity(SHOWN_CERT_NAMES);
    let mut count = 0usize;
    for name in names {
        count += 1;
        if shown.len() < SHOWN_CERT_NAMES {
            shown.push(crate::quoted::quoted(&name.escape_debug().to_string()));
        }
    }
    let mut text = shown.join(", ");
    if count > SHOWN_CERT_NAMES {
        text.push_str(&format!(", … ({count} names in all)"));
    }
    text
}

fn read_callers_file(path: &Path) -> Result<CallersFile, CallersError> {
    let text = std::fs::read_to_string(path).map_err(|e| CallersError::Read {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| CallersError::Parse {
        file: path.to_path_buf(),
        reason: shown_toml_error(&text, &e),
    })
}

/// The names a callers file is made of: the only quoted text of a TOML error that is shown.
const CALLERS_FILE_WORDS: [&str; 13] = [
    "caller",
    "id",
    "account_id",
    "role",
    "access_key_id",
    "secret_access_key",
    "secret_env",
    "secret_file",
    "client_cert_san",
    "client_cert_cn",
    "attributes",
    "administrator",
    "member",
];

/// A callers-file TOML error as messages show it: its line and column and toml's reason,
/// never the text of the file. toml's own Display quotes the offending line, and in a callers
/// file that line can hold a secret (`secret_acces_key = "..."`, a lost closing quote); the
/// message reaches the log, `hubgate check` and /readyz. toml's reason may quote a value too
/// (a secret pasted into `role` is an unknown variant), so each quoted part of it is shown
/// only when it is a callers-file name or bare punctuation; its place is enough to find it.
fn shown_toml_error(text: &str, error: &toml::de::Error) -> String {
    let mut reason = String::with_capacity(error.message().len());
    let mut rest = error.message().trim_end();
    while let Some(open) = rest.find(['`', '"']) {
        reason.push_str(&rest[..open]);
        let quote = &rest[open..=open];
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            // An unterminated quote: whatever follows could be the value.
            reason.push_str(quote);
            reason.push_str("(not shown)");
            rest = "";
            break;
        };
        let quoted = &after[..close];
        let harmless = CALLERS_FILE_WORDS.contains(&quoted)
            || !quoted.bytes().any(|b| b.is_ascii_alphanumeric());
        reason.push_str(quote);
        reason.push_str(if harmless { quoted } else { "(not shown)" });
        reason.push_str(quote);
        rest = &after[close + 1..];
    }
    reason.push_str(rest);
    let place = error.span().and_then(|span| {
        let before = text.get(..span.start)?;
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        Some(format!(" at line {line}, column {column}"))
    });
    format!(
        "TOML parse error{}: {reason} (the line is not shown: it could hold a secret)",
        place.unwrap_or_default()
    )
}

/// How many times a load reads callers that changed while they were read before giving up.
const READ_ATTEMPTS: usize = 4;

/// Reads the callers file and its secret files until a read sees them unchanged from start to
/// end, as the policy load does (`Texts::read`): a Kubernetes Secret volume swaps every file in
/// one rename, and a reload running across the swap paired the callers file of one version
/// with the secrets of the other. The secret files are known only once the callers file is
/// read, so a read is judged against the files the previous read named: with secret files,
/// the first load reads twice.
fn load_callers_settled(path: &Path) -> Result<Vec<LoadedCaller>, CallersError> {
    let paths = |read: &Result<Vec<LoadedCaller>, CallersError>| {
        let secrets = read.iter().flatten().filter_map(|c| c.secret_file.clone());
        crate::files::seen(std::iter::once(path.to_path_buf()).chain(secrets))
    };
    let mut before = crate::files::seen([path.to_path_buf()]);
    for _ in 0..READ_ATTEMPTS {
        let read = load_callers(path);
        // A file's identity (inode, change time) never comes back to an earlier value, so the
        // same files, unchanged, before and after means the read saw one version.
        let after = paths(&read);
        if after == before {
            return read;
        }
        before = after;
    }
    Err(CallersError::Changing {
        file: path.to_path_buf(),
        attempts: READ_ATTEMPTS,
    })
}

fn load_callers(path: &Path) -> Result<Vec<LoadedCaller>, CallersError> {
    let file = read_callers_file(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut seen_ids = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(file.caller.len());
    for entry in file.caller {
        let bad = |reason: String| CallersError::Invalid {
            file: path.to_path_buf(),
            id: entry.id.clone(),
            reason,
        };
        if entry.id.trim().is_empty() {
            return Err(bad("id must not be empty".into()));
        }
        if !seen_ids.insert(entry.id.clone()) {
            return Err(bad("id is used twice".into()));
        }
        if !crate::finding::is_account_id(&entry.account_id) {
            // A typo'd account id is shown; anything else in its place could be a secret.
            let typo = entry.account_id.len() <= 24
                && entry
                    .account_id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"- ".contains(&b));
            return Err(bad(format!(
                "account_id {} is not a 12-digit AWS account id",
                shown_value(&entry.account_id, typo)
            )));
        }
        let sources = [
            entry.secret_access_key.is_some(),
            entry.secret_env.is_some(),
            entry.secret_file.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources > 1 {
            return Err(bad(
                "give at most one of secret_access_key, secret_env, secret_file".into(),
            ));
        }
        let mut secret_file = None;
        // The secret's text and where it came from, as a refusal names it.
        let source = if let Some(s) = &entry.secret_access_key {
            Some((s.clone(), "secret_access_key".to_string()))
        } else if let Some(var) = &entry.secret_env {
            let text = std::env::var(var).map_err(|_| {
                bad(format!(
                    "secret_env names {}, which is not set",
                    crate::config::shown_env_name(var)
                ))
            })?;
            Some((text, format!("secret_env {var}")))
        } else if let Some(f) = &entry.secret_file {
            let f = if f.is_absolute() {
                f.clone()
            } else {
                base.join(f)
            };
            let text = std::fs::read_to_string(&f).map_err(|e| {
                let shown = crate::files::shown_secret_path(&f);
                bad(format!("secret_file {shown}: {e}"))
            })?;
            let from = format!("secret_file {}", f.display());
            secret_file = Some(f);
            Some((text, from))
        } else {
            None
        };
        let secret = match source {
            Some((text, from)) => Some(
                Secret::read(&text)
                    .map_err(|why| bad(format!("the secret access key ({from}) {why}")))?,
            ),
            None => None,
        };
        if secret.is_some() && entry.access_key_id.is_none() {
            return Err(bad("a secret needs an access_key_id".into()));
        }
        if let Some(key) = entry
            .access_key_id
            .as_deref()
            .filter(|k| !is_sendable_key_id(k))
        {
            return Err(bad(format!(
                "access_key_id {} cannot be sent in a SigV4 Credential (it must be printable \
                 ASCII without whitespace, `/` or `,`): no request could name this caller",
                shown_value(key, shown_key_id(key) == key)
            )));
        }
        if let Some(san) = &entry.client_cert_san {
            if !is_uri(san) && !is_host_name(san) {
                return Err(bad(format!(
                    "client_cert_san {san:?} is neither a URI (scheme:...) nor a DNS name: no \
                     certificate's subject alternative name is matched against it"
                )));
            }
        }
        let attributes = match serde_json::to_value(&entry.attributes) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(bad("attributes must be a table".into())),
        };
        let principal = Arc::new(Principal {
            id: entry.id.clone(),
            account_id: entry.account_id.clone(),
            role: entry.role,
            attributes,
        });
        out.push(LoadedCaller {
            principal,
            access_key_id: entry.access_key_id.clone(),
            secret,
            secret_file,
            san: entry
                .client_cert_san
                .as_deref()
                .map(|s| san_key(s).into_owned()),
            cn: entry.client_cert_cn.clone(),
        });
    }
    Ok(out)
}

/// The request's SigV4 `Authorization` header, parsed.
fn authorization(parts: &http::request::Parts) -> Result<Authorization<'_>, AuthError> {
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed("not visible ASCII".into()))?;
    Authorization::parse(header)
}

impl Identity {
    /// `region`: upstream.region, the region a caller's signature must be scoped to.
    /// `passthrough`: upstream.auth = "passthrough", where sigv4 mode maps the claimed key and
    /// AWS checks the signature.
    pub fn load(
        config: &IdentityConfig,
        region: &str,
        passthrough: bool,
    ) -> Result<Identity, CallersError> {
        let callers = load_callers_settled(&config.callers)?;
        let mut by_key = HashMap::new();
        let mut by_san = HashMap::new();
        let mut by_cn = HashMap::new();
        let mut static_principal = None;
        let mut secret_files = Vec::new();
        for LoadedCaller {
            principal,
            access_key_id: key,
            secret,
            secret_file,
            san,
            cn,
        } in callers
        {
            secret_files.extend(secret_file);
            if config.static_principal.as_deref() == Some(principal.id.as_str()) {
                static_principal = Some(principal.clone());
            }
            for (name, map, what) in [
                (san, &mut by_san, "client_cert_san"),
                (cn, &mut by_cn, "client_cert_cn"),
            ] {
                if let Some(name) = name {
                    if map.insert(name.clone(), principal.clone()).is_some() {
                        return Err(CallersError::Invalid {
                            file: config.callers.clone(),
                            id: principal.id.clone(),
                            reason: format!("{what} {name:?} is used twice"),
                        });
                    }
                }
            }
            if let Some(key) = key {
                if config.mode == IdentityMode::Sigv4 && !passthrough && secret.is_none() {
                    return Err(CallersError::Invalid {
                        file: config.callers.clone(),
                        id: principal.id.clone(),
                        reason: "identity.mode = \"sigv4\" needs a secret (secret_access_key, secret_env or secret_file)".into(),
                    });
                }
                if by_key.contains_key(&key) {
                    return Err(CallersError::Invalid {
                        file: config.callers.clone(),
                        id: principal.id.clone(),
                        reason: format!("access_key_id {key} is used twice"),
                    });
                }
                by_key.insert(key, Caller { principal, secret });
            }
        }
        if let Some(wanted) = &config.static_principal {
            if static_principal.is_none() {
                return Err(CallersError::Invalid {
                    file: config.callers.clone(),
                    id: wanted.clone(),
                    reason: "identity.static_principal names no caller in this file".into(),
                });
            }
        }
        Ok(Identity {
            mode: config.mode,
            verify_signatures: !passthrough,
            region: region.to_owned(),
            by_key,
            by_san,
            by_cn,
            static_principal,
            secret_files,
        })
    }

    /// [`refuse_demo_keys`] for callers already loaded (from `file`): what a reload checks, so
    /// that a demo entry added to a running hubgate's callers file is refused as it is at start,
    /// and the callers checked are the ones that would serve (not the file read again).
    pub fn refuse_demo_keys(
        &self,
        file: &Path,
        upstream: &http::Uri,
    ) -> Result<(), Box<DemoKeyInUse>> {
        if is_loopback(upstream) {
            return Ok(());
        }
        // By key id, so that the same file always names the same caller.
        let mut callers: Vec<(&String, &Caller)> = self.by_key.iter().collect();
        callers.sort_by_key(|(key, _)| *key);
        match callers.into_iter().find_map(|(key, c)| {
            let what = demo_part(key, c.secret.as_ref().map(|s| s.0.as_str()))?;
            Some((what, c))
        }) {
            Some((what, c)) => Err(Box::new(DemoKeyInUse {
                file: file.to_path_buf(),
                what,
                account: c.principal.account_id.clone(),
                role: role_name(c.principal.role),
                id: c.principal.id.clone(),
                endpoint: upstream.to_string().trim_end_matches('/').to_string(),
            })),
            None => Ok(()),
        }
    }

    /// The secret files the callers file names: a change to one is a change to the callers.
    pub fn secret_files(&self) -> &[PathBuf] {
        &self.secret_files
    }

    pub fn caller_count(&self) -> usize {
        match self.mode {
            // A caller with both a SAN and a CN is one caller.
            IdentityMode::Mtls => self
                .by_san
                .values()
                .chain(self.by_cn.values())
                .map(Arc::as_ptr)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            _ => self.by_key.len(),
        }
    }

    /// The caller a verified client certificate belongs to: a URI or DNS SAN first, then the CN.
    fn by_certificate(&self, cert: Option<&ClientCert>) -> Result<Arc<Principal>, AuthError> {
        let cert = cert.ok_or(AuthError::NoClientCert)?;
        if let Some(why) = &cert.unreadable {
            return Err(AuthError::UnreadableClientCert(why.clone()));
        }
        let shown = |names: &[&String], cn: bool| -> String {
            shown_cert_names(names.iter().map(|n| match cn {
                true => format!("CN={n}"),
                false => n.to_string(),
            }))
        };
        // The names a name-constrained chain's CAs did not have to respect name no one.
        let (sans, cns) = cert.constrained_names();
        for (names, map, cn) in [(sans, &self.by_san, false), (cns, &self.by_cn, true)] {
            let mut found: Option<&Arc<Principal>> = None;
            let mut matched: Vec<&String> = Vec::new();
            for name in names {
                let found_by = match cn {
                    true => std::borrow::Cow::Borrowed(name.as_str()),
                    false => san_key(name),
                };
                let Some(p) = map.get(found_by.as_ref()) else {
                    continue;
                };
                matched.push(name);
                match found {
                    None => found = Some(p),
                    // A certificate that names two callers would be mapped by the order of its
                    // names, which its issuer chose, not the operator: it names no one.
                    Some(q) if !Arc::ptr_eq(p, q) => {
                        return Err(AuthError::AmbiguousClientCert(shown(&matched, cn)))
                    }
                    Some(_) => {}
                }
            }
            if let Some(p) = found {
                return Ok(p.clone());
            }
        }
        let names = cert.sans.iter().cloned();
        let names = names.chain(cert.cns.iter().map(|cn| format!("CN={cn}")));
        let mut shown = shown_cert_names(names);
        let unbound = match cert.constraints {
            ChainConstraints::None => None,
            ChainConstraints::DnsBound => {
                match (cert.sans.iter().any(|s| is_uri(s)), !cert.cns.is_empty()) {
                    (true, true) => Some("its URI SANs and CN name no caller"),
                    (true, false) => Some("its URI SANs name no caller"),
                    (false, true) => Some("its CN names no caller"),
                    (false, false) => None,
                }
            }
            ChainConstraints::NothingBound => Some("none of its names names a caller"),
        };
        if let Some(unbound) = unbound {
            shown.push_str(&format!(
                "; {unbound}: a CA of its chain has name constraints, which bind only the DNS \
                 SANs of a chain whose constrained CAs all list DNS subtrees"
            ));
        }
        Err(AuthError::UnknownClientCert(shown))
    }

    /// Establishes the caller. In sigv4 mode this needs the exact body bytes (their hash is
    /// signed); the hash stays with the payload for the re-sign.
    pub fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &Payload,
        now: SystemTime,
        client_cert: Option<&ClientCert>,
    ) -> Result<Arc<Principal>, AuthError> {
        self.claim(parts, now, client_cert)?.verify(parts, body)
    }

    /// The caller the request's head names, checked as far as the head allows: everything but
    /// a SigV4 signature, whose payload hash needs the body. A request is claimed before its
    /// body is read, so that one without a caller is refused before it can hold anything
    /// while it sends slowly, and the rest wait within their caller's share.
    pub fn claim<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        now: SystemTime,
        client_cert: Option<&ClientCert>,
    ) -> Result<Claim<'a>, AuthError> {
        // With server.client_ca every mode requires a valid certificate, also on a connection
        // that outlived its certificate's validity or its CA.
        if let Some(why) = client_cert.and_then(|c| c.lapsed.as_deref()) {
            return Err(AuthError::ClientCertLapsed(why.to_string()));
        }
        let (principal, signature, key_id, credential) = match self.mode {
            IdentityMode::Static => (
                self.static_principal.clone().ok_or(AuthError::Missing)?,
                None,
                None,
                Credential::Static,
            ),
            IdentityMode::Mtls => {
                let principal = self.by_certificate(client_cert)?;
                let cert = client_cert.cloned().unwrap_or_default();
                (principal, None, None, Credential::Certificate(cert))
            }
            IdentityMode::Sigv4 => {
                let (caller, key_id, signature) = self.claim_sigv4(parts, now)?;
                let credential = Credential::Key {
                    id: key_id.to_string(),
                    secret: caller.secret.clone(),
                };
                (
                    caller.principal.clone(),
                    signature,
                    Some(key_id),
                    credential,
                )
            }
        };
        // Sigv4 mode read the head in `claim_sigv4`; the others name the caller otherwise (a
        // certificate's caller is named before its head is judged), but in passthrough they
        // forward the caller's own signature all the same.
        if self.mode != IdentityMode::Sigv4 && !self.verify_signatures {
            self.check_passthrough_head(parts, now)?;
        }
        Ok(Claim {
            principal,
            signature,
            key_id,
            credential,
        })
    }

    fn claim_sigv4<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        now: SystemTime,
    ) -> Result<(&'a Caller, &'a str, Option<Unverified<'a>>), AuthError> {
        let auth = authorization(parts)?;
        let caller = self
            .by_key
            .get(auth.access_key_id)
            .ok_or_else(|| AuthError::UnknownKey(shown_key_id(auth.access_key_id)))?;
        let key = auth.access_key_id;
        self.check_sigv4(parts, now, auth, caller)
            .map_err(|e| AuthError::of_key(key, e))
    }

    /// What AWS will read of a SigV4 head besides the signature itself, checked before
    /// anything is spent on the request: the date, the credential scope's date and region, no
    /// second set of credentials in the query string, and (in passthrough) `host` signed.
    /// Returns when the request was signed.
    fn check_signed_head(
        &self,
        parts: &http::request::Parts,
        now: SystemTime,
        auth: &Authorization<'_>,
    ) -> Result<SystemTime, AuthError> {
        let amz_date = parts
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| AuthError::Malformed("the X-Amz-Date header is missing".into()))?;
        let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
            AuthError::Malformed(format!(
                "X-Amz-Date {} is not YYYYMMDDTHHMMSSZ",
                shown_date(amz_date)
            ))
        })?;
        let skew = match now.duration_since(signed_at) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > MAX_CLOCK_SKEW {
            return Err(AuthError::Stale(amz_date.to_string()));
        }
        if !amz_date.starts_with(auth.date) {
            return Err(AuthError::Malformed(
                "the credential scope date differs from X-Amz-Date".into(),
            ));
        }
        // A presigned URL's credentials beside the header's: hubgate maps the header's key
        // while AWS could read the query's, and run the call as a caller the audit record and
        // the routing never saw (in passthrough hubgate checks neither signature).
        if let Some(name) = query_names(&parts.uri).find_map(|n| {
            QUERY_SIGNATURE_PARAMS
                .into_iter()
                .find(|p| n.eq_ignore_ascii_case(p))
        }) {
            return Err(AuthError::QueryCredentials(name));
        }
        // Every call goes to upstream.region: a caller that signed for another region meant
        // its change for that region's Security Hub, and re-signed it would land in this one.
        // In passthrough AWS refuses such a signature at upstream.endpoint anyway, after the
        // lookups were spent. Refused here, with the reason, before anything is spent on it.
        if auth.region != self.region {
            let region = &self.region;
            return Err(AuthError::Malformed(format!(
                "the credential scope's region is not {region}, the region hubgate forwards \
                 to: sign for {region}"
            )));
        }
        if !self.verify_signatures {
            // AWS refuses a signature that leaves Host out ("'Host' or ':authority' must be a
            // 'SignedHeader'"): refused before a lookup is spent on it.
            if !auth.signed_headers.contains(&"host") {
                return Err(AuthError::Malformed(
                    "SignedHeaders must include host: AWS refuses a signature without it".into(),
                ));
            }
            session_token_fits(parts, auth.access_key_id)?;
        }
        Ok(signed_at)
    }

    /// In passthrough every forward carries the caller's own SigV4 signature to AWS, whatever
    /// names the caller to hubgate. With a client certificate (or the static principal)
    /// naming it, the head was not read at all: a request signed for another region, without
    /// `host`, with a presigned URL's credentials in its query, or not signed, was looked up
    /// on hubgate's own GetFindings quota, decided, and forwarded for AWS to refuse. The same
    /// head checks as sigv4 mode's, before anything is spent; the key id need not be in the
    /// callers file (the certificate names the caller).
    fn check_passthrough_head(
        &self,
        parts: &http::request::Parts,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let auth = authorization(parts)?;
        self.check_signed_head(parts, now, &auth).map(|_| ())
    }

    /// The rest of [`Identity::claim_sigv4`], once the head names a known key.
    fn check_sigv4<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        now: SystemTime,
        auth: Authorization<'a>,
        caller: &'a Caller,
    ) -> Result<(&'a Caller, &'a str, Option<Unverified<'a>>), AuthError> {
        let signed_at = self.check_signed_head(parts, now, &auth)?;
        if !self.verify_signatures {
            // Passthrough: AWS checks the signature against the bytes hubgate forwards unchanged.
            // The caller's keys are real AWS keys, so a session token is theirs to send.
            return Ok((caller, auth.access_key_id, None));
        }
        // hubgate issues long-term keys only. A session token beside one is either a
        // confused client or an attempt to smuggle real AWS credentials through: refuse it,
        // in a header or in the query string.
        let token_in_query =
            query_names(&parts.uri).any(|n| n.eq_ignore_ascii_case("X-Amz-Security-Token"));
        if parts.headers.contains_key("x-amz-security-token") || token_in_query {
            return Err(AuthError::SessionToken);
        }
        let secret = caller
            .secret
            .as_ref()
            .ok_or_else(|| AuthError::UnknownKey(shown_key_id(auth.access_key_id)))?;
        if !auth.signed_headers.contains(&"host") || !auth.signed_headers.contains(&"x-amz-date") {
            return Err(AuthError::Malformed(
                "SignedHeaders must include host and x-amz-date".into(),
            ));
        }

        let not_a_host = || {
            AuthError::Malformed("the Host header is not a host name with an optional port".into())
        };
        // A Host header is what SDKs sign, so it is the one checked whenever there is one; the
        // URI's authority (h2's :authority) only stands in for a missing one. A Host that is
        // not text is refused, not passed over for the authority: the request would be checked
        // against one host and carry another.
        let host = crate::framing::host(&parts.headers, &parts.uri)
            .ok_or_else(|| AuthError::Malformed("the request has no Host".into()))?
            .map_err(|_| not_a_host())?;
        // The signature is checked over `http://{host}{path}`: a Host holding `/`, `?`, `#` or
        // `@` would move part of itself into the path, query or user info that are checked,
        // away from the path that was routed. A host name (or IP literal) and port only.
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
        {
            return Err(not_a_host());
        }
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(auth.signed_headers.len());
        for name in &auth.signed_headers {
            if *name == "host" {
                headers.push(("host", host));
                continue;
            }
            let mut values = parts.headers.get_all(*name).iter().peekable();
            if values.peek().is_none() {
                // The name is the caller's: quoted short.
                return Err(AuthError::Malformed(format!(
                    "signed header {} is not in the request",
                    crate::quoted::quoted(name)
                )));
            }
            for v in values {
                let v = v.to_str().map_err(|_| {
                    AuthError::Malformed(format!("signed header {name} is not visible ASCII"))
                })?;
                headers.push((name, v));
            }
        }
        let key_id = auth.access_key_id;
        let unverified = Unverified {
            auth,
            secret,
            signed_at,
            host,
            headers,
        };
        Ok((caller, key_id, Some(unverified)))
    }
}

/// What proved a request's caller: asked of a reloaded callers file, it says whether that
/// file still names the same caller ([`Identity::still_names`]).
#[derive(Debug, Clone)]
pub enum Credential {
    /// An access key, with the secret its signature was checked with (none in passthrough).
    Key { id: String, secret: Option<Secret> },
    /// A client certificate's names.
    Certificate(ClientCert),
    /// identity.mode = "static".
    Static,
}

impl Identity {
    /// The caller `credential` names in this callers file: the same key with the same secret,
    /// the same certificate mapping, or the static principal.
    pub fn still_names(&self, credential: &Credential) -> Option<Arc<Principal>> {
        match credential {
            Credential::Key { id, secret } => {
                let caller = self.by_key.get(id)?;
                let same_secret = match (&caller.secret, secret) {
                    (Some(now), Some(then)) => {
                        bool::from(now.0.as_bytes().ct_eq(then.0.as_bytes()))
                    }
                    (None, None) => true,
                    _ => false,
                };
                same_secret.then(|| caller.principal.clone())
            }
            Credential::Certificate(cert) => self.by_certificate(Some(cert)).ok(),
            Credential::Static => self.static_principal.clone(),
        }
    }
}

/// A caller named by a request's head, not yet proven: see [`Identity::claim`].
pub struct Claim<'a> {
    principal: Arc<Principal>,
    /// The SigV4 signature still to check against the body (sigv4 mode, hubgate's own keys).
    signature: Option<Unverified<'a>>,
    /// What proves the caller, once the signature (if any) is checked.
    credential: Credential,
    /// The access key id the head showed (sigv4 mode).
    key_id: Option<&'a str>,
}

/// What the signature check needs from the head, read and checked once.
struct Unverified<'a> {
    auth: Authorization<'a>,
    secret: &'a Secret,
    signed_at: SystemTime,
    host: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Claim<'a> {
    /// What proves the caller (valid once [`Claim::verify`] has succeeded).
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The caller the head names. Not proven in sigv4 mode until [`Claim::verify`]: good for
    /// bounding what the request may hold meanwhile, never for a decision or a record.
    pub fn claimed(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// The claim as a refusal may name it to the client before the caller is proven: by the
    /// access key id the client sent itself (sigv4 mode), never by the caller's id in the
    /// callers file, which a client that knows only a key id must not learn. A client
    /// certificate was verified in the handshake: its caller is named.
    pub fn shown(&self) -> String {
        shown_caller(self.key_id, &self.principal)
    }

    /// The access key id the head showed (sigv4 mode), for naming the caller as `shown` does
    /// once the claim is spent.
    pub fn key_id(&self) -> Option<&'a str> {
        self.key_id
    }

    /// Whether the head alone proves the caller: a client certificate verified in the
    /// handshake, or the static principal. A key id is only named by the head: its signature
    /// needs the body (and in passthrough, AWS checks it).
    pub fn proven(&self) -> bool {
        self.key_id.is_none()
    }

    /// Whether [`Claim::verify`] proves the caller by its signature. Not in passthrough, where
    /// hubgate maps the key id the head names and AWS checks the signature after the forward.
    pub fn verifies(&self) -> bool {
        self.signature.is_some()
    }

    /// The caller, once the signature (if any) matches the exact body bytes.
    pub fn verify(
        self,
        parts: &http::request::Parts,
        body: &Payload,
    ) -> Result<Arc<Principal>, AuthError> {
        let Some(u) = self.signature else {
            return Ok(self.principal);
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = format!("http://{}{path_and_query}", u.host);
        let malformed =
            |why: String| AuthError::of_key(u.auth.access_key_id, AuthError::Malformed(why));

        let credentials = Credentials::new(
            u.auth.access_key_id,
            &u.secret.0,
            None,
            None,
            "hubgate-callers",
        );
        let identity = credentials.into();
        let mut settings = SigningSettings::default();
        // The caller decides what it signed; hubgate must not drop any of it.
        settings.excluded_headers = None;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(u.auth.region)
            .name(u.auth.service)
            .time(u.signed_at)
            .settings(settings)
            .build()
            .map_err(|e| malformed(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            parts.method.as_str(),
            uri,
            u.headers.iter().copied(),
            SignableBody::Precomputed(body.sha256_hex().to_owned()),
        )
        .map_err(|e| malformed(e.to_string()))?;
        let (_, expected) = sign(signable, &params)
            .map_err(|e| malformed(e.to_string()))?
            .into_parts();
        if expected
            .as_bytes()
            .ct_eq(u.auth.signature.as_bytes())
            .into()
        {
            Ok(self.principal)
        } else {
            Err(AuthError::BadSignature(u.auth.access_key_id.to_string()))
        }
    }
}

/// AWS pairs an access key id with a session token by the key's kind: a temporary key id
/// (`ASIA…`, from STS) is refused without its `X-Amz-Security-Token`, a long-term one
/// (`AKIA…`) with one (an `AWS_SESSION_TOKEN` left beside new long-term keys is a common slip).
/// In passthrough such a request was looked up on hubgate's own GetFindings quota, decided and
/// forwarded for AWS to refuse; it is refused here, before anything is spent. Key ids of other
/// shapes (hubgate-issued keys in the callers file, say) are AWS's to judge.
fn session_token_fits(parts: &http::request::Parts, key_id: &str) -> Result<(), AuthError> {
    // An empty header is no token (no SDK sends one): AWS is left to judge it.
    let token = parts
        .headers
        .get("x-amz-security-token")
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
        || query_names(&parts.uri).any(|n| n.eq_ignore_ascii_case("X-Amz-Security-Token"));
    let why = match (key_id.get(..4), token) {
        (Some("ASIA"), false) => {
            "a temporary access key id (ASIA…) needs its X-Amz-Security-Token: AWS refuses it \
             without one"
        }
        (Some("AKIA"), true) => {
            "a long-term access key id (AKIA…) takes no X-Amz-Security-Token: AWS refuses the \
             pair (is an AWS_SESSION_TOKEN left over beside new keys?)"
        }
        _ => return Ok(()),
    };
    Err(AuthError::Malformed(why.into()))
}

/// SigV4's query-string authentication parameters (a presigned URL's credentials).
const QUERY_SIGNATURE_PARAMS: [&str; 4] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-SignedHeaders",
];

/// The names of a request's query parameters, percent-decoded as AWS reads them: a check of
/// the raw text let `X%2DAmz-Credential` through.
fn query_names(uri: &http::Uri) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    uri.query().into_iter().flat_map(|q| {
        q.split('&').map(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            percent_encoding::percent_decode_str(name).decode_utf8_lossy()
        })
    })
}

/// The parts of `AWS4-HMAC-SHA256 Credential=.., SignedHeaders=.., Signature=..`.
#[derive(Debug, PartialEq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

impl<'a> Authorization<'a> {
    fn parse(header: &'a str) -> Result<Self, AuthError> {
        let rest = header
            .strip_prefix("AWS4-HMAC-SHA256 ")
            .ok_or_else(|| AuthError::Malformed("only AWS4-HMAC-SHA256 is accepted".into()))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for (position, part) in rest.split(',').enumerate() {
            let part = part.trim();
            let (name, slot, value) = if let Some(v) = part.strip_prefix("Credential=") {
                ("Credential", &mut credential, v)
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                ("SignedHeaders", &mut signed, v)
            } else if let Some(v) = part.strip_prefix("Signature=") {
                ("Signature", &mut signature, v)
            } else {
                // Only the three names are known. None of the component's text is echoed, not
                // even a name before `=`: it could be a secret pasted in the wrong place, and
                // the message reaches the audit record. Its place is enough to find it.
                let what = if part.is_empty() {
                    "is empty (a stray comma)"
                } else {
                    "is not a Credential, SignedHeaders or Signature component (its text is not shown: \
                     it could be a secret)"
                };
                return Err(AuthError::Malformed(format!(
                    "component {} after AWS4-HMAC-SHA256 {what}",
                    position + 1
                )));
            };
            // A repeated component is refused, never overwritten or skipped: in passthrough
            // hubgate maps the claimed key to a principal while AWS reads the header itself,
            // and with two Credentials the two could read two different callers.
            if slot.replace(value).is_some() {
                return Err(AuthError::Malformed(format!(
                    "the {name} component appears more than once"
                )));
            }
        }
        let credential =
            credential.ok_or_else(|| AuthError::Malformed("Credential is missing".into()))?;
        let signed =
            signed.ok_or_else(|| AuthError::Malformed("SignedHeaders is missing".into()))?;
        let signature =
            signature.ok_or_else(|| AuthError::Malformed("Signature is missing".into()))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(AuthError::Malformed(
                "Credential must be KEY/DATE/REGION/SERVICE/aws4_request".into(),
            ));
        };
        if terminator != "aws4_request" || access_key_id.is_empty() || date.len() != 8 {
            return Err(AuthError::Malformed(
                "Credential must be KEY/DATE/REGION/SERVICE/aws4_request".into(),
            ));
        }
        if service != "securityhub" {
            // The service is not echoed: it is free text of the header, which a caller may have
            // filled with a secret, and hubgate-issued secrets can look like a service name.
            return Err(AuthError::Malformed(
                "the credential scope is for another service than securityhub".into(),
            ));
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed(
                "Signature must be 64 hex digits".into(),
            ));
        }
        let signed_headers: Vec<&str> = signed.split(';').collect();
        if signed_headers
            .iter()
            .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Err(AuthError::Malformed(
                "SignedHeaders must be lower-case names separated by ';'".into(),
            ));
        }
        // SigV4 lists each signed header once. A repeated name is refused, not folded: every
        // mention became one more header handed to the signature library, whose header map
        // panics past 32768 entries, and `host` needs no header of the request to be named
        // again and again. With each name once, the entries are bounded by the request's own
        // headers (hyper's and h2's limits).
        let mut names = std::collections::HashSet::with_capacity(signed_headers.len());
        if !signed_headers.iter().all(|h| names.insert(*h)) {
            return Err(AuthError::Malformed(
                "SignedHeaders names a header more than once".into(),
            ));
        }
        Ok(Authorization {
            access_key_id,
            date,
            region,
            service,
            signed_headers,
            signature,
        })
    }
}

/// Parses a SigV4 `Authorization` header the way authentication does, keeping only whether it
/// is well formed: the way in for the `sigv4_authorization` fuzz target (fuzz/).
pub fn parse_authorization(header: &str) -> Result<(), AuthError> {
    Authorization::parse(header).map(|_| ())
}

/// A caller as a refusal may name it before or after it is proven (`Claim::shown`): by the
/// access key id the client sent, when it sent one.
pub fn shown_caller(key_id: Option<&str>, principal: &Principal) -> String {
    match key_id {
        Some(key) => format!("the caller of access key {}", shown_key_id(key)),
        None => format!("caller {}", principal.id),
    }
}

/// The claimed access key id as an error message shows it. A caller who swapped its key id and
/// secret (a common slip) sends the secret in its place, and the message reaches the audit
/// record, so only text of an access key id's shape is shown: 16 to 128 upper-case letters and
/// digits (AWS's and `hubgate keys new`'s), which a secret (mixed case, `+`, `/`) is not.
fn shown_key_id(key: &str) -> String {
    let shaped = (16..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if shaped {
        key.to_string()
    } else {
        "(not shown: it does not look like an access key id, and could be a secret)".to_string()
    }
}

/// Whether a SigV4 `Authorization` header can carry `key` as its access key id: the header is
/// visible ASCII, its components are split at `,` and its Credential at `/`, so a key id with
/// any of those (or whitespace, or none at all) names no caller in any request.
fn is_sendable_key_id(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',')
}

/// A refused callers-file value as a message shows it: quoted when it has the shape of what
/// belongs there, otherwise not at all. A value of another shape can be a secret pasted in the
/// wrong place (`secret_env = "<the secret>"`, the secret in `account_id`), and the message
/// reaches the log, `hubgate check` and /readyz.
fn shown_value(value: &str, shaped: bool) -> String {
    if shaped {
        format!("{value:?}")
    } else {
        "(not shown: it could be a secret)".to_string()
    }
}

/// An unparsable X-Amz-Date as an error message shows it: quoted when it is made of what dates
/// are made of, otherwise not at all (a header's free text could be a secret).
fn shown_date(value: &str) -> String {
    let date_like = value.len() <= 32
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || b"TZ:-.+ ".contains(&b));
    if date_like {
        format!("{value:?}")
    } else {
        "(not shown)".to_string()
    }
}

fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(s, format).ok()?.assume_utc();
    Some(t.into())
}

#[cfg(test)]
mod tests;
