//! Configuration: the TOML contract of DESIGN.md, parsed strictly and validated before serving.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::routes::Routing;

pub const DEFAULT_CONFIG: &str = "config/hubgate.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Parse { file: PathBuf, reason: String },
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

/// The most rotated audit files kept (`audit.max_files`).
pub const MAX_AUDIT_FILES: u32 = 10_000;

fn invalid(file: &Path, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    upstream: UpstreamConfig,
    #[serde(default)]
    identity: IdentityConfig,
    #[serde(default)]
    policy: PolicyConfig,
    #[serde(default)]
    enrichment: EnrichmentConfig,
    #[serde(default)]
    quota: QuotaConfig,
    #[serde(default)]
    coordination: CoordinationConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    log: LogConfig,
    /// Per-operation routing: operation name -> deny | policy | forward.
    #[serde(default)]
    operations: std::collections::BTreeMap<String, Routing>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Operational logs (stderr). Levels come from RUST_LOG (default "info").
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    pub max_body_bytes: u64,
    pub shutdown_grace_ms: u64,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// A client must send a request's whole head (request line and headers) within this time
    /// of its first byte; otherwise the connection is closed.
    pub header_read_timeout_ms: u64,
    /// A request's whole body must arrive within this time, else 408 REQUEST_TIMEOUT.
    pub body_read_timeout_ms: u64,
    /// A connection with no request in progress is closed after this long.
    pub idle_timeout_ms: u64,
    /// A response must be sent whole within this time of being ready; else the connection is
    /// closed (and every request on it ends), so a client that does not read cannot hold an
    /// in-flight permit.
    pub response_send_timeout_ms: u64,
    /// Open connections on the proxy listener; past it a connection gets one 503 OVERLOADED.
    pub max_connections: usize,
    /// Requests being handled at once; past it a request gets 503 OVERLOADED.
    pub max_in_flight: usize,
    /// Requests one caller may have in flight at once; past it that caller's request gets 503
    /// OVERLOADED while other callers are served. None: a quarter of max_in_flight.
    pub max_in_flight_per_caller: Option<usize>,
    /// Body bytes of the requests in flight, together (each counted at its Content-Length, or
    /// at max_body_bytes when it declares none); past it a request gets 503 OVERLOADED. What a
    /// request holds while it waits grows with its body (about five times it), so this, not
    /// max_in_flight alone, bounds hubgate's memory.
    pub max_in_flight_body_bytes: u64,
    /// Threads that run requests. None: one per CPU this process may use (cgroup quota and
    /// affinity included). A sidecar sharing its cores with the application does better with
    /// fewer: idle workers that look for work to steal, and requests moved between cores,
    /// cost CPU that a busy core shared with others does not have to spare.
    pub worker_threads: Option<usize>,
}

impl ServerConfig {
    /// One caller's share of the in-flight cap: by default a quarter, so that one caller
    /// holding its whole share (waiting for quota, or sending its bodies slowly) leaves three
    /// quarters to everyone else.
    pub fn caller_share(&self) -> usize {
        self.max_in_flight_per_caller
            .unwrap_or((self.max_in_flight / 4).max(1))
    }

    /// One caller's share of the body bytes in flight: the fraction of
    /// max_in_flight_body_bytes its share is of max_in_flight (a quarter by default), and never
    /// less than one request of max_body_bytes.
    pub fn caller_byte_share(&self) -> u64 {
        let share = self.caller_share().min(self.max_in_flight) as u128;
        let bytes =
            u128::from(self.max_in_flight_body_bytes) * share / (self.max_in_flight.max(1) as u128);
        u64::try_from(bytes).unwrap_or(u64::MAX).clamp(
            self.max_body_bytes,
            self.max_in_flight_body_bytes.max(self.max_body_bytes),
        )
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: 1_048_576,
            shutdown_grace_ms: 10_000,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            response_send_timeout_ms: 30_000,
            max_connections: 1024,
            max_in_flight: 256,
            max_in_flight_per_caller: None,
            max_in_flight_body_bytes: 64 * 1_048_576,
            worker_threads: None,
        }
    }
}

/// Timeouts above a day are configuration mistakes (and would overflow deadline arithmetic).
/// Also the longest `enrichment.cache_ttl_ms` any replica can run with, which a retirement of
/// shared cache entries outlasts (`coordination::cache::retire_accounts`).
pub(crate) const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The least quota.max_wait_ms: a request that needs a lookup waits for its GetFindings
/// answer within it too. With 0 the lookup was never even sent (the wait was over before the
/// queue was served), so every member request was refused 429 "had no room within 0 ms",
/// with the quota full, and SDKs retried it for ever; `hubgate check` called that valid.
pub(crate) const MIN_MAX_WAIT_MS: u64 = 100;

/// The least `enrichment.max_cache_bytes`: room for a few dozen findings' state. Below it the
/// cache would keep next to nothing and every decision would spend GetFindings quota.
const MIN_CACHE_BYTES: u64 = 64 * 1024;
/// Caps above this are mistakes: each connection holds a file descriptor and a task.
const MAX_CAP: usize = 1_000_000;
/// Whether two listeners' addresses would claim the same port: equal, or either a wildcard
/// of a family the other can be reached on (`::` is dual-stack on Linux by default).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

/// Whether two paths name one file: the same inode when both exist (links, `./` and `..`
/// included), else the same absolute path.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => match (std::path::absolute(a), std::path::absolute(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        },
    }
}

/// More threads than this is a mistake on any machine hubgate runs on (each has its own stack).
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    Resign,
    Passthrough,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub endpoint: String,
    pub region: String,
    pub auth: UpstreamAuth,
    pub timeout_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            endpoint: "https://securityhub.us-east-1.amazonaws.com".into(),
            region: "us-east-1".into(),
            auth: UpstreamAuth::Resign,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    Sigv4,
    Static,
    Mtls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub mode: IdentityMode,
    pub callers: PathBuf,
    /// `static` mode: the id of the callers-file entry every request is attributed to.
    pub static_principal: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            mode: IdentityMode::Sigv4,
            callers: PathBuf::from("callers.toml"),
            static_principal: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    Enforce,
    DryRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartialDeny {
    Reject,
    ForwardAllowed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub dir: PathBuf,
    pub mode: PolicyMode,
    pub on_partial_deny: PartialDeny,
    /// Evaluation time limit; a policy that runs longer is a POLICY_ERROR (fail closed).
    pub eval_timeout_ms: u64,
    /// How often the policy directory and the callers file are checked for changes, which
    /// reload them like SIGHUP does (0: only on SIGHUP).
    pub watch_interval_ms: u64,
    /// The operations routed `forward` that members may call unconfined, as hubgate's role
    /// (`reads`); None: `DEFAULT_MEMBERS_MAY_CALL`.
    pub members_may_call: Option<Vec<String>>,
}

/// The forwarded operations members may call unconfined by default (`reads`): catalogues that
/// hold no account's data.
pub const DEFAULT_MEMBERS_MAY_CALL: &[&str] = &[
    "DescribeProducts",
    "DescribeProductsV2",
    "DescribeStandards",
    "GetSecurityControlDefinition",
    "ListSecurityControlDefinitions",
];

impl PolicyConfig {
    /// Whether `members_may_call` in force lists `operation`.
    pub fn member_may_call(&self, operation: &str) -> bool {
        match &self.members_may_call {
            Some(list) => list.iter().any(|o| o == operation),
            None => DEFAULT_MEMBERS_MAY_CALL.contains(&operation),
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: PathBuf::from("policies"),
            mode: PolicyMode::Enforce,
            on_partial_deny: PartialDeny::Reject,
            eval_timeout_ms: 100,
            watch_interval_ms: 2000,
            members_may_call: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichmentConfig {
    pub enabled: bool,
    /// How long a looked-up (or written-through) finding state is trusted: the bound on
    /// staleness from writers outside hubgate.
    pub cache_ttl_ms: u64,
    /// How long "not found" is remembered.
    pub negative_ttl_ms: u64,
    /// Findings the cache holds at most.
    pub max_cache_entries: usize,
    /// Bytes the cache's entries hold at most, their identifiers included: a finding cached
    /// as not found holds identifiers a caller chose, of any length the body allows.
    pub max_cache_bytes: u64,
    /// How long a write hubgate forwarded is laid over what GetFindings reports (Security Hub
    /// applies BatchUpdateFindings asynchronously), and how long a write it cannot model
    /// leaves a finding's state unknown. 0 turns this off.
    pub settle_ms: u64,
}

impl Default for EnrichmentConfig {
    fn default() -> Self {
        EnrichmentConfig {
            enabled: true,
            cache_ttl_ms: 5_000,
            negative_ttl_ms: 1_000,
            max_cache_entries: 50_000,
            max_cache_bytes: 256 * 1024 * 1024,
            settle_ms: 300_000,
        }
    }
}

/// One operation's quota: sustained calls per second and burst.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub rate: f64,
    pub burst: u32,
}

/// Security Hub's per-account quotas, which hubgate paces its own upstream calls to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// This replica's share of the account's quotas (0 < share <= 1).
    pub share: f64,
    /// Longest a request waits for quota (pacing and throttle retries) before 429 THROTTLED.
    pub max_wait_ms: u64,
    /// Operation name (or "default") -> limit; merged over the documented quotas.
    pub limits: std::collections::BTreeMap<String, Limit>,
}

/// The quotas of the Security Hub API documentation (per account and Region).
pub const DOCUMENTED_QUOTAS: [(&str, Limit); 7] = [
    (
        "GetFindings",
        Limit {
            rate: 3.0,
            burst: 6,
        },
    ),
    (
        "BatchUpdateFindings",
        Limit {
            rate: 10.0,
            burst: 30,
        },
    ),
    (
        "BatchImportFindings",
        Limit {
            rate: 10.0,
            burst: 30,
        },
    ),
    (
        "UpdateFindings",
        Limit {
            rate: 1.0,
            burst: 5,
        },
    ),
    (
        "BatchEnableStandards",
        Limit {
            rate: 1.0,
            burst: 1,
        },
    ),
    (
        "UpdateStandardsControl",
        Limit {
            rate: 1.0,
            burst: 5,
        },
    ),
    (
        "default",
        Limit {
            rate: 10.0,
            burst: 30,
        },
    ),
];

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            share: 1.0,
            max_wait_ms: 10_000,
            limits: Default::default(),
        }
    }
}

impl QuotaConfig {
    /// The limit hubgate paces `operation` to, before the share is applied.
    pub fn limit(&self, operation: &str) -> Limit {
        let lookup = |name: &str| {
            self.limits.get(name).copied().or_else(|| {
                DOCUMENTED_QUOTAS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, l)| *l)
            })
        };
        lookup(operation)
            .or_else(|| lookup("default"))
            .unwrap_or(Limit {
                rate: 10.0,
                burst: 30,
            })
    }
}

/// Replicas sharing quota pacing and finding state through Redis (see `coordination`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://` for TLS; unset: this replica
    /// paces and caches alone.
    pub redis_url: Option<String>,
    /// Environment variable holding the Redis password (keeps it out of the config map).
    pub redis_password_env: Option<String>,
    /// The share of the account's quotas this replica paces to on its own while Redis is
    /// unreachable: conservative, since the other replicas do the same.
    pub fallback_share: f64,
    /// Longest one Redis call may take before this replica falls back.
    pub op_timeout_ms: u64,
    /// How often a degraded replica tries Redis again.
    pub probe_interval_ms: u64,
    /// How long one replica's claim on looking up a finding holds off the others.
    pub lookup_claim_ms: u64,
    /// Names the quota the replicas share: replicas whose credentials reach the same account
    /// and Region must use the same scope. Default: the upstream endpoint and Region.
    pub quota_scope: Option<String>,
    /// Prefix of every key hubgate writes, so several fleets can share one Redis.
    pub key_prefix: String,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            redis_url: None,
            redis_password_env: None,
            fallback_share: 0.25,
            op_timeout_ms: 100,
            probe_interval_ms: 1_000,
            lookup_claim_ms: 2_000,
            quota_scope: None,
            key_prefix: "hubgate".into(),
        }
    }
}

impl CoordinationConfig {
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            // The URL may hold a password: errors name the key, never the value.
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    file,
                    "coordination.redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                return Err(invalid(
                    file,
                    "coordination.redis_url",
                    format!("is not a Redis URL ({:?})", e.kind()),
                ));
            }
        } else if self.redis_password_env.is_some() {
            return Err(invalid(
                file,
                "coordination.redis_password_env",
                "needs coordination.redis_url",
            ));
        }
        if !(self.fallback_share > 0.0 && self.fallback_share <= 1.0) {
            return Err(invalid(
                file,
                "coordination.fallback_share",
                format!("{} is not in (0, 1]", self.fallback_share),
            ));
        }
        for (key, ms) in [
            ("coordination.op_timeout_ms", self.op_timeout_ms),
            ("coordination.probe_interval_ms", self.probe_interval_ms),
            ("coordination.lookup_claim_ms", self.lookup_claim_ms),
        ] {
            if !(1..=60_000).contains(&ms) {
                return Err(invalid(
                    file,
                    key,
                    format!("must be between 1 and 60000, not {ms}"),
                ));
            }
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                file,
                "coordination.key_prefix",
                "must be a non-empty word",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditSink {
    Stdout,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditFormat {
    Hubgate,
    Ocsf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fsync {
    /// fsync after every write batch: a record the caller was answered for is on disk.
    Always,
    /// fsync at most every `fsync_interval_ms`.
    Interval,
    /// Leave it to the operating system.
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub sink: AuditSink,
    pub path: PathBuf,
    pub format: AuditFormat,
    pub fsync: Fsync,
    pub fsync_interval_ms: u64,
    /// Rotate the file sink when it grows past this many bytes (0: never rotate).
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest … `path.N` oldest); older ones are deleted.
    pub max_files: u32,
    /// Key the hash chain with HMAC-SHA-256, the key read from this environment variable...
    pub hmac_key_env: Option<String>,
    /// ...or from this file.
    pub hmac_key_file: Option<PathBuf>,
    /// JSON pointers into the record (e.g. "/input/update/note/text") whose values are erased.
    pub mask: Vec<String>,
    /// Include the policy input document (masked) in each record, as OPA's decision logs do.
    pub include_input: bool,
    /// Records waiting for the writer; past this, requests wait for room.
    pub queue_capacity: usize,
    /// How long a request waits for room before it is refused with 503 AUDIT_UNAVAILABLE.
    pub enqueue_timeout_ms: u64,
    /// How long an answer waits for its record to be written before it goes out anyway.
    pub write_timeout_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sink: AuditSink::Stdout,
            path: PathBuf::from("hubgate-audit.ndjson"),
            format: AuditFormat::Hubgate,
            fsync: Fsync::Interval,
            fsync_interval_ms: 1000,
            max_bytes: 0,
            max_files: 10,
            hmac_key_env: None,
            hmac_key_file: None,
            mask: Vec::new(),
            include_input: true,
            queue_capacity: 256,
            enqueue_timeout_ms: 2000,
            write_timeout_ms: 2000,
        }
    }
}

/// An environment variable's name as a message shows it: quoted when it has the shape
/// deployments give names (upper-case letters, digits and `_`, not starting with a digit),
/// otherwise not at all. A secret pasted where its variable's name belongs (`secret_env`,
/// `audit.hmac_key_env`, `coordination.redis_password_env`) would otherwise reach the log,
/// `hubgate check` and /readyz in the error that says the variable is not set.
pub fn shown_env_name(name: &str) -> String {
    let shaped = (1..=128).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if shaped {
        format!("{name:?}")
    } else {
        "(not shown: it could be a secret)".to_string()
    }
}

/// A parse error's text with the user and password of every URL in it replaced. toml quotes
/// the offending line, and `coordination.redis_url` may carry a password on it (misspelt, its
/// quote lost, or of the wrong type): the error reaches the log and `hubgate check`, which
/// never show that password (README, `[coordination]`).
fn without_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        match url.rsplit_once('@') {
            Some((_, host)) => {
                out.push_str("(user and password not shown)@");
                out.push_str(host);
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The configuration file's text as it was loaded, for a reload to tell which settings changed
/// on disk since (they take a restart). Never printed: it can hold a Redis password.
#[derive(Clone, Default)]
pub struct SourceText(String);

impl fmt::Debug for SourceText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceText(not shown)")
    }
}

impl SourceText {
    /// The settings (`section.key`, or the section of a table that is added or removed whole)
    /// whose values differ between the text in force and `now`; their names only, never their
    /// values. A text that no longer parses is one entry saying so.
    pub fn changed_settings(&self, now: &str) -> Vec<String> {
        if now == self.0 {
            return Vec::new();
        }
        let (Ok(then), Ok(now)) = (
            toml::from_str::<toml::Table>(&self.0),
            toml::from_str::<toml::Table>(now),
        ) else {
            return vec!["(the file no longer parses)".into()];
        };
        let mut out = Vec::new();
        diff_tables("", &then, &now, &mut out);
        out
    }
}

fn diff_tables(prefix: &str, then: &toml::Table, now: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = then.keys().chain(now.keys()).collect();
    for key in keys {
        let name = format!("{prefix}{key}");
        match (then.get(key), now.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                diff_tables(&format!("{name}."), a, b, out);
            }
            (a, b) if a != b => out.push(name),
            _ => {}
        }
    }
}

/// The validated configuration, with every relative path resolved against the file's folder.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// The file's text as loaded.
    pub source: SourceText,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub upstream_uri: http::Uri,
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    pub enrichment: EnrichmentConfig,
    pub quota: QuotaConfig,
    pub coordination: CoordinationConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub operations: std::collections::BTreeMap<String, Routing>,
}

impl fmt::Display for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamAuth::Resign => "resign",
            UpstreamAuth::Passthrough => "passthrough",
        })
    }
}

impl Config {
    /// Settings that are valid but leave a guarantee weaker than it looks: `hubgate check`
    /// prints each, and `serve` logs each as a warning when it starts.
    pub fn cautions(&self) -> Vec<String> {
        let mut out = Vec::new();
        let e = &self.enrichment;
        if e.enabled && e.settle_ms > 0 && e.settle_ms <= e.cache_ttl_ms {
            out.push(format!(
                "enrichment.settle_ms ({}) is not above enrichment.cache_ttl_ms ({}): the settle \
                 journal covers a lag of settle_ms - cache_ttl_ms, so none of Security Hub's, and \
                 a write of hubgate's still being processed can be read as the old state and \
                 undone by a member; raise settle_ms (300000 by default), or set it to 0 to turn \
                 the journal off knowingly",
                e.settle_ms, e.cache_ttl_ms
            ));
        }
        // Plain http:// is for an emulator on this machine. Elsewhere the finding state the
        // policies judge crosses the network unauthenticated: whoever sits on the path can
        // answer GetFindings with a state that makes a denied change look allowed.
        if self.upstream_uri.scheme_str() == Some("http")
            && !crate::identity::is_loopback(&self.upstream_uri)
        {
            out.push(format!(
                "upstream.endpoint \"{}\" is plain http:// to a host that is not loopback: \
                 the finding state hubgate's policies judge, and every forwarded body, cross \
                 the network unencrypted and unauthenticated, so anyone on the path can change \
                 what the policies see; use https:// (http:// is meant for an emulator on this \
                 machine)",
                self.upstream.endpoint
            ));
        }
        // Nothing at start said the policies were not enforced: a dry-run file carried over
        // from staging let members suppress their findings, with only the records to tell.
        if self.policy.mode == PolicyMode::DryRun {
            out.push(
                "policy.mode = \"dry-run\": a request the policies deny is forwarded anyway \
                 (recorded as dry_run_deny), so a member can suppress its findings or lower \
                 their severity; set policy.mode = \"enforce\" to refuse them"
                    .to_string(),
            );
        }
        // max_files = 0 deletes the full file at each rotation: records and the chain's
        // history before it are gone, which no other setting does to the audit log.
        if self.audit.sink == AuditSink::File
            && self.audit.max_bytes > 0
            && self.audit.max_files == 0
        {
            out.push(format!(
                "audit.max_files = 0 with audit.max_bytes = {}: each rotation deletes the full \
                 audit file, records included, so the log keeps only what was written since the \
                 last one; keep rotated files (max_files >= 1) and ship them before they age out",
                self.audit.max_bytes
            ));
        }
        if self.identity.mode == IdentityMode::Static && !self.listen.ip().is_loopback() {
            out.push(format!(
                "identity.mode = \"static\" on listen = \"{}\", which is not a loopback \
                 address: every client that can reach it is taken for the static principal, \
                 with no authentication (a sidecar listens on 127.0.0.1)",
                self.listen
            ));
        }
        out
    }

    /// Whether callers' own signatures go upstream (upstream.auth = "passthrough").
    pub fn passthrough(&self) -> bool {
        self.upstream.auth == UpstreamAuth::Passthrough
    }

    /// What hubgate does with an operation: the configured routing, else the default.
    pub fn routing(&self, op: &crate::routes::OperationSpec) -> Routing {
        match self.operations.get(op.name) {
            Some(r) => *r,
            None => op.default_routing(),
        }
    }

    /// Reads and validates a configuration file. Errors name the file, the key and the reason.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            reason: without_userinfo(e.to_string().trim_end()),
        })?;
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let RawConfig {
            mut server,
            upstream,
            mut identity,
            mut policy,
            enrichment,
            quota,
            coordination,
            mut audit,
            log,
            operations,
        } = raw;
        coordination.validate(file)?;
        // An empty name (a template's unset value) read as "names , which is not set"; a name
        // with '=' or NUL is no variable any environment can hold.
        for (key, name) in [
            ("audit.hmac_key_env", &audit.hmac_key_env),
            (
                "coordination.redis_password_env",
                &coordination.redis_password_env,
            ),
        ] {
            if let Some(name) = name {
                if name.trim().is_empty() || name.contains(['=', '\0']) {
                    return Err(invalid(
                        file,
                        key,
                        format!(
                            "{} is not an environment variable name",
                            shown_env_name(name)
                        ),
                    ));
                }
            }
        }
        // Longer than an hour would be a journal no lag calls for, and a Retry-After no client
        // waits out.
        if enrichment.settle_ms > 3_600_000 {
            return Err(invalid(
                file,
                "enrichment.settle_ms",
                format!(
                    "must be at most 3600000 (an hour), not {}",
                    enrichment.settle_ms
                ),
            ));
        }
        // Durations past a day are mistakes, and some reach what refuses them: Redis refuses
        // the expiry a cache_ttl_ms of 2^63 gives a shared cache entry, and each replica then
        // ran degraded for good (fallback share, local cache) under a configuration check
        // called valid; a max_wait_ms that long holds a request for quota without end.
        for (key, ms) in [
            ("server.shutdown_grace_ms", server.shutdown_grace_ms),
            ("upstream.timeout_ms", upstream.timeout_ms),
            ("policy.eval_timeout_ms", policy.eval_timeout_ms),
            ("policy.watch_interval_ms", policy.watch_interval_ms),
            ("enrichment.cache_ttl_ms", enrichment.cache_ttl_ms),
            ("enrichment.negative_ttl_ms", enrichment.negative_ttl_ms),
            ("quota.max_wait_ms", quota.max_wait_ms),
            ("audit.fsync_interval_ms", audit.fsync_interval_ms),
            ("audit.enqueue_timeout_ms", audit.enqueue_timeout_ms),
            ("audit.write_timeout_ms", audit.write_timeout_ms),
        ] {
            if ms > MAX_TIMEOUT_MS {
                return Err(invalid(
                    file,
                    key,
                    format!("must be at most {MAX_TIMEOUT_MS} (one day), not {ms}"),
                ));
            }
        }
        if quota.max_wait_ms < MIN_MAX_WAIT_MS {
            return Err(invalid(
                file,
                "quota.max_wait_ms",
                format!(
                    "must be at least {MIN_MAX_WAIT_MS}, not {}: a request waits for its lookups' \
                     answers within it too, and below a round trip every request that needs one \
                     is refused (429)",
                    quota.max_wait_ms
                ),
            ));
        }
        if !(quota.share > 0.0 && quota.share <= 1.0) {
            return Err(invalid(
                file,
                "quota.share",
                format!("{} is not in (0, 1]", quota.share),
            ));
        }
        for (name, limit) in &quota.limits {
            let key = format!("quota.limits.{name}");
            if name != "default" && !crate::routes::operations().iter().any(|o| o.name == name) {
                return Err(invalid(
                    file,
                    &key,
                    "is not a Security Hub operation or \"default\"",
                ));
            }
            if !(limit.rate > 0.0 && limit.rate.is_finite()) || limit.burst == 0 {
                return Err(invalid(
                    file,
                    &key,
                    "needs rate > 0 (calls per second) and burst >= 1",
                ));
            }
        }
        if enrichment.max_cache_entries == 0 {
            return Err(invalid(
                file,
                "enrichment.max_cache_entries",
                "must be at least 1",
            ));
        }
        if enrichment.max_cache_bytes < MIN_CACHE_BYTES {
            return Err(invalid(
                file,
                "enrichment.max_cache_bytes",
                format!("must be at least {MIN_CACHE_BYTES} (64 KiB)"),
            ));
        }
        for (name, routing) in &operations {
            let key = format!("operations.{name}");
            if !crate::routes::operations().iter().any(|o| o.name == name) {
                return Err(invalid(file, &key, "is not a Security Hub operation"));
            }
            if *routing == Routing::Policy && crate::request::Judged::from_name(name).is_none() {
                return Err(invalid(
                    file,
                    &key,
                    format!(
                        "\"policy\" applies to {} only: hubgate has no policy input for other operations",
                        crate::request::Judged::ALL.map(|j| j.name()).join(", ")
                    ),
                ));
            }
        }
        for name in policy.members_may_call.iter().flatten() {
            let key = "policy.members_may_call";
            let Some(op) = crate::routes::operations().iter().find(|o| o.name == name) else {
                return Err(invalid(
                    file,
                    key,
                    format!("{name:?} is not a Security Hub operation"),
                ));
            };
            let routing = operations
                .get(name)
                .copied()
                .unwrap_or_else(|| op.default_routing());
            if routing != Routing::Forward {
                return Err(invalid(
                    file,
                    key,
                    format!(
                        "{name} is routed \"{}\", not \"forward\": listing it changes nothing \
                         (the list names forwarded operations members may call)",
                        match routing {
                            Routing::Deny => "deny",
                            _ => "policy",
                        }
                    ),
                ));
            }
        }

        let listen: SocketAddr = server.listen.parse().map_err(|e| {
            invalid(
                file,
                "server.listen",
                format!("{:?} is not a socket address: {e}", server.listen),
            )
        })?;
        let admin_listen: SocketAddr = server.admin_listen.parse().map_err(|e| {
            invalid(
                file,
                "server.admin_listen",
                format!("{:?} is not a socket address: {e}", server.admin_listen),
            )
        })?;
        // Equal addresses are not the only clash: a wildcard (0.0.0.0, ::) holds its port on
        // every address of its family (:: on IPv4's too, dual-stack), so `check` called
        // 0.0.0.0:8080 beside 127.0.0.1:8080 valid and `serve` could never bind both.
        if listen.port() == admin_listen.port()
            && listen.port() != 0
            && overlap(listen, admin_listen)
        {
            return Err(invalid(
                file,
                "server.admin_listen",
                "must differ from server.listen: admin endpoints never share the proxy port (an address 0.0.0.0 or :: holds its port on every address of its family)",
            ));
        }
        if server.max_body_bytes == 0 {
            return Err(invalid(file, "server.max_body_bytes", "must be at least 1"));
        }
        for (key, ms) in [
            (
                "server.header_read_timeout_ms",
                server.header_read_timeout_ms,
            ),
            ("server.body_read_timeout_ms", server.body_read_timeout_ms),
            ("server.idle_timeout_ms", server.idle_timeout_ms),
            (
                "server.response_send_timeout_ms",
                server.response_send_timeout_ms,
            ),
        ] {
            if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
                return Err(invalid(
                    file,
                    key,
                    format!("must be between 1 and {MAX_TIMEOUT_MS} (one day), not {ms}"),
                ));
            }
        }
        for (key, n) in [
            ("server.max_connections", server.max_connections),
            ("server.max_in_flight", server.max_in_flight),
        ] {
            if !(1..=MAX_CAP).contains(&n) {
                return Err(invalid(
                    file,
                    key,
                    format!("must be between 1 and {MAX_CAP}, not {n}"),
                ));
            }
        }
        // Past 2^40 no in-flight cap could hold one request: the error named
        // max_in_flight_body_bytes with a range no value of it fits.
        if server.max_body_bytes > 1 << 40 {
            return Err(invalid(
                file,
                "server.max_body_bytes",
                format!(
                    "must be between 1 and {}, not {}",
                    1u64 << 40,
                    server.max_body_bytes
                ),
            ));
        }
        // A request of max_body_bytes must fit alone; past 2^40 the cap bounds nothing.
        let bytes = server.max_in_flight_body_bytes;
        if !(server.max_body_bytes..=1 << 40).contains(&bytes) {
            return Err(invalid(
                file,
                "server.max_in_flight_body_bytes",
                format!(
                    "must be between server.max_body_bytes ({}) and {}, not {bytes}",
                    server.max_body_bytes,
                    1u64 << 40
                ),
            ));
        }
        if let Some(n) = server.max_in_flight_per_caller {
            if !(1..=server.max_in_flight).contains(&n) {
                return Err(invalid(
                    file,
                    "server.max_in_flight_per_caller",
                    format!(
                        "must be between 1 and server.max_in_flight ({}), not {n}",
                        server.max_in_flight
                    ),
                ));
            }
        }
        if let Some(n) = server.worker_threads {
            if !(1..=MAX_WORKER_THREADS).contains(&n) {
                return Err(invalid(
                    file,
                    "server.worker_threads",
                    format!("must be between 1 and {MAX_WORKER_THREADS}, not {n}"),
                ));
            }
        }
        match (&server.tls_cert, &server.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    file,
                    "server.tls_key",
                    "is required with server.tls_cert",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    file,
                    "server.tls_cert",
                    "is required with server.tls_key",
                ))
            }
            _ => {}
        }
        if server.client_ca.is_some() && server.tls_cert.is_none() {
            return Err(invalid(
                file,
                "server.client_ca",
                "client certificates need TLS: set server.tls_cert and server.tls_key",
            ));
        }
        server.tls_cert = server.tls_cert.as_deref().map(resolve);
        server.tls_key = server.tls_key.as_deref().map(resolve);
        server.client_ca = server.client_ca.as_deref().map(resolve);

        // A user and password in the endpoint are never sent (Security Hub takes SigV4 only),
        // and the endpoint is logged at start and names the shared quota in Redis: refused,
        // and a message never quotes an endpoint that has an `@` in it.
        let userinfo = upstream.endpoint.contains('@');
        let upstream_uri: http::Uri = upstream.endpoint.parse().map_err(|e| {
            let shown = if userinfo {
                "it".to_string()
            } else {
                format!("{:?}", upstream.endpoint)
            };
            invalid(
                file,
                "upstream.endpoint",
                format!("{shown} is not a URL: {e}"),
            )
        })?;
        if userinfo {
            return Err(invalid(
                file,
                "upstream.endpoint",
                "must not hold a user or password (`user:password@`): hubgate signs with SigV4 \
                 and never sends them",
            ));
        }
        match upstream_uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(invalid(
                    file,
                    "upstream.endpoint",
                    "must start with https:// (or http:// for a local emulator)",
                ))
            }
        }
        if upstream_uri.host().is_none() {
            return Err(invalid(file, "upstream.endpoint", "has no host"));
        }
        if !matches!(upstream_uri.path(), "" | "/") || upstream_uri.query().is_some() {
            return Err(invalid(
                file,
                "upstream.endpoint",
                "must be a scheme and host (and port) only, without a path or query",
            ));
        }
        if upstream.region.trim().is_empty() {
            return Err(invalid(file, "upstream.region", "must not be empty"));
        }
        // The region scopes every signature: hubgate's own, and the one each caller's must
        // carry to be mapped. "us-east-1 " or "US-EAST-1" passed check, and then no SDK's
        // signature matched it (every caller 401) and Security Hub refused hubgate's.
        if !upstream
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                file,
                "upstream.region",
                "is not an AWS Region name: lower-case letters, digits and '-' only (e.g. \
                 \"us-east-1\"); every caller signs for it, and so does hubgate",
            ));
        }
        if upstream.timeout_ms == 0 {
            return Err(invalid(file, "upstream.timeout_ms", "must be at least 1"));
        }
        match identity.mode {
            IdentityMode::Mtls if server.client_ca.is_none() => {
                return Err(invalid(
                    file,
                    "server.client_ca",
                    "is required when identity.mode = \"mtls\": name the CA bundle client certificates must chain to",
                ))
            }
            IdentityMode::Static if identity.static_principal.is_none() => {
                return Err(invalid(
                    file,
                    "identity.static_principal",
                    "is required when identity.mode = \"static\": name the callers-file entry every request acts as",
                ))
            }
            // Set and not read, it would look like a principal hubgate maps callers to.
            IdentityMode::Sigv4 | IdentityMode::Mtls if identity.static_principal.is_some() => {
                return Err(invalid(
                    file,
                    "identity.static_principal",
                    "only applies when identity.mode = \"static\"",
                ))
            }
            _ => {}
        }
        identity.callers = resolve(&identity.callers);

        policy.dir = resolve(&policy.dir);
        if policy.on_partial_deny == PartialDeny::ForwardAllowed
            && upstream.auth == UpstreamAuth::Passthrough
        {
            return Err(invalid(
                file,
                "policy.on_partial_deny",
                "\"forward-allowed\" rewrites the body, which upstream.auth = \"passthrough\" cannot do: the caller's signature covers the original bytes",
            ));
        }
        if policy.eval_timeout_ms == 0 {
            return Err(invalid(
                file,
                "policy.eval_timeout_ms",
                "must be at least 1",
            ));
        }

        audit.path = resolve(&audit.path);
        audit.hmac_key_file = audit.hmac_key_file.as_deref().map(resolve);
        // The file sink appends to its path: named like a file hubgate reads, it wrote records
        // into it. The configuration file then no longer parsed, so the next restart failed;
        // the callers file stopped reloading; a key file changed the key.
        if audit.sink == AuditSink::File {
            let read = [
                ("the configuration file", Some(file)),
                ("identity.callers", Some(identity.callers.as_path())),
                ("audit.hmac_key_file", audit.hmac_key_file.as_deref()),
                ("server.tls_cert", server.tls_cert.as_deref()),
                ("server.tls_key", server.tls_key.as_deref()),
                ("server.client_ca", server.client_ca.as_deref()),
            ];
            for (what, path) in read {
                if path.is_some_and(|p| same_file(p, &audit.path)) {
                    return Err(invalid(
                        file,
                        "audit.path",
                        format!(
                            "is {what}: the file sink appends audit records to it, which would \
                             corrupt it; give the audit log a file of its own"
                        ),
                    ));
                }
            }
        }
        if audit.hmac_key_env.is_some() && audit.hmac_key_file.is_some() {
            return Err(invalid(
                file,
                "audit.hmac_key_file",
                "give hmac_key_env or hmac_key_file, not both",
            ));
        }
        for pointer in &audit.mask {
            if !pointer.starts_with('/') {
                return Err(invalid(
                    file,
                    "audit.mask",
                    format!("{pointer:?} is not a JSON pointer (it must start with '/')"),
                ));
            }
            if pointer.starts_with("/chain") || pointer == "/decision_id" {
                return Err(invalid(
                    file,
                    "audit.mask",
                    format!("{pointer:?} cannot be masked: the record is useless without it"),
                ));
            }
        }
        // tokio's channel panics on a bound past usize::MAX >> 3: `check` passed such a
        // capacity and `serve` died at start (exit 101) instead of refusing it (exit 2).
        if !(1..=MAX_CAP).contains(&audit.queue_capacity) {
            return Err(invalid(
                file,
                "audit.queue_capacity",
                format!(
                    "must be between 1 and {MAX_CAP}, not {}",
                    audit.queue_capacity
                ),
            ));
        }
        if audit.write_timeout_ms == 0 {
            // Every answer would go out before its record, each with a warning.
            return Err(invalid(
                file,
                "audit.write_timeout_ms",
                "must be at least 1",
            ));
        }
        if audit.fsync == Fsync::Interval && audit.fsync_interval_ms == 0 {
            return Err(invalid(
                file,
                "audit.fsync_interval_ms",
                "must be at least 1 (or set audit.fsync = \"always\")",
            ));
        }
        // Rotation moves every kept file up one, looking for each: the writer thread would
        // spend hours on a rotation with u32::MAX, while records queue up unwritten and a stop
        // gives up on them.
        if audit.max_files > MAX_AUDIT_FILES {
            return Err(invalid(
                file,
                "audit.max_files",
                format!("must be at most {MAX_AUDIT_FILES}"),
            ));
        }
        if audit.sink == AuditSink::Stdout && audit.max_bytes > 0 {
            return Err(invalid(
                file,
                "audit.max_bytes",
                "rotation applies to audit.sink = \"file\" only",
            ));
        }

        Ok(Config {
            file: file.to_path_buf(),
            source: SourceText(text.to_string()),
            listen,
            admin_listen,
            server,
            upstream,
            upstream_uri,
            identity,
            policy,
            enrichment,
            quota,
            coordination,
            audit,
            log,
            operations,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_changed_file_names_the_settings_it_changes_never_their_values() {
        let then = super::SourceText(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[policy]\nmode = \"dry-run\"\n\
             [coordination]\nredis_url = \"redis://u:hunter2@h:6379/0\"\n"
                .into(),
        );
        assert!(then.changed_settings(&then.0).is_empty());
        let now = "[server]\nlisten = \"127.0.0.1:8080\"\n[policy]\nmode = \"enforce\"\n\
                   [coordination]\nredis_url = \"redis://u:hunter3@h:6379/0\"\n\
                   [audit]\nformat = \"ocsf\"\n";
        assert_eq!(
            then.changed_settings(now),
            ["audit", "coordination.redis_url", "policy.mode"]
        );
        // a comment or a reordering changes no setting
        let same = "# edited\n[policy]\nmode = \"dry-run\" # for now\n\
                    [coordination]\nredis_url = \"redis://u:hunter2@h:6379/0\"\n\
                    [server]\nlisten = \"127.0.0.1:8080\"\n";
        assert!(then.changed_settings(same).is_empty());
        assert_eq!(
            then.changed_settings("[policy\nmode = \"hunter2\""),
            ["(the file no longer parses)"]
        );
        assert!(!format!("{then:?}").contains("hunter2"));
    }

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/hubgate/hubgate.toml"), text)
    }

    #[test]
    fn an_upstream_endpoint_with_a_password_is_refused_without_showing_it() {
        for endpoint in [
            "https://hub:s3cretpw@securityhub.us-east-1.amazonaws.com",
            "https://hub:s3cret pw@securityhub.us-east-1.amazonaws.com",
            "http://:s3cretpw@127.0.0.1:4000",
        ] {
            let err = parse(&format!("[upstream]\nendpoint = \"{endpoint}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("upstream.endpoint"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_parse_error_never_shows_a_url_password() {
        for text in [
            "[coordination]\nredis_url = \"redis://hub:s3cretpw@redis:6379/0",
            "[coordination]\nredis_ur = \"rediss://:s3cretpw@redis:6379/0\"",
            "[coordination]\nredis_url = [\"redis://hub:s3cretpw@redis\"]",
            "[coordination]\nredis_url = redis://hub:s3cret@pw@redis:6379",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{text}: {e}");
            assert!(
                e.contains("(user and password not shown)@redis"),
                "{text}: {e}"
            );
        }
        // Everything else of the message is toml's, line and all.
        let e = parse("[server]\nlisen = \"127.0.0.1:8080\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen = \"127.0.0.1:8080\""), "{e}");
        assert_eq!(without_userinfo("a http://h/p b"), "a http://h/p b");
    }

    #[test]
    fn settings_that_weaken_a_guarantee_are_cautioned_about() {
        let cautions = |text: &str| parse(text).unwrap().cautions();
        assert!(cautions("").is_empty(), "the defaults");
        let short = cautions("[enrichment]\ncache_ttl_ms = 5000\nsettle_ms = 5000");
        assert_eq!(short.len(), 1, "{short:?}");
        assert!(
            short[0].contains("settle_ms (5000) is not above"),
            "{short:?}"
        );
        for quiet in [
            "[enrichment]\ncache_ttl_ms = 5000\nsettle_ms = 5001",
            "[enrichment]\nsettle_ms = 0",
            "[enrichment]\nenabled = false\nsettle_ms = 1",
            "[policy]\nmode = \"enforce\"",
            "[audit]\nsink = \"file\"\nmax_bytes = 1000\nmax_files = 1",
            "[audit]\nsink = \"file\"\nmax_files = 0",
        ] {
            assert!(cautions(quiet).is_empty(), "{quiet}");
        }
        for (text, said) in [
            ("[policy]\nmode = \"dry-run\"", "policy.mode = \"dry-run\""),
            (
                "[audit]\nsink = \"file\"\nmax_bytes = 1000\nmax_files = 0",
                "audit.max_files = 0",
            ),
        ] {
            let got = cautions(text);
            assert!(got.len() == 1 && got[0].contains(said), "{text}: {got:?}");
        }
        let open = cautions(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[identity]\nmode = \"static\"\nstatic_principal = \"w\"",
        );
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(open[0].contains("not a loopback address"), "{open:?}");
        let pod = "[server]\nlisten = \"127.0.0.1:8080\"\n[identity]\nmode = \"static\"\nstatic_principal = \"w\"";
        assert!(cautions(pod).is_empty());
        assert!(
            cautions("[server]\nlisten = \"0.0.0.0:8080\"").is_empty(),
            "SigV4 callers"
        );
        let plain =
            cautions("[upstream]\nendpoint = \"http://securityhub.us-east-1.amazonaws.com\"");
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert!(plain[0].contains("plain http://"), "{plain:?}");
        for local in [
            "http://127.0.0.1:4566",
            "http://localhost:4566",
            "http://[::1]:4566",
            "https://securityhub.eu-west-1.amazonaws.com",
        ] {
            assert!(
                cautions(&format!("[upstream]\nendpoint = \"{local}\"")).is_empty(),
                "{local}"
            );
        }
    }

    #[test]
    fn variable_names_are_names() {
        for text in [
            "[audit]\nhmac_key_env = \"\"",
            "[audit]\nhmac_key_env = \" \"",
            "[audit]\nhmac_key_env = \"A=B\"",
            "[coordination]\nredis_url = \"redis://h:6379/0\"\nredis_password_env = \"\"",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("is not an environment variable name"), "{e}");
        }
        assert!(parse("[audit]\nhmac_key_env = \"HUBGATE_AUDIT_KEY\"").is_ok());
    }

    #[test]
    fn the_cache_byte_bound_leaves_room_for_some_findings() {
        assert_eq!(
            parse("").unwrap().enrichment.max_cache_bytes,
            256 * 1024 * 1024
        );
        assert!(parse("[enrichment]\nmax_cache_bytes = 65536\n").is_ok());
        let e = parse("[enrichment]\nmax_cache_bytes = 65535\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("enrichment.max_cache_bytes: must be at least 65536"),
            "{e}"
        );
    }

    #[test]
    fn a_variable_name_is_shown_only_in_the_shape_of_one() {
        assert_eq!(shown_env_name("HUBGATE_AUDIT_KEY"), "\"HUBGATE_AUDIT_KEY\"");
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        for pasted in [secret, "hubgate_key", "1KEY", ""] {
            assert!(!shown_env_name(pasted).contains(pasted) || pasted.is_empty());
        }
        let e = parse(&format!("[audit]\nhmac_key_env = \"{secret}=\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an environment variable name"), "{e}");
        assert!(!e.contains(secret), "{e}");
    }

    #[test]
    fn an_answer_must_be_allowed_to_wait_for_its_record() {
        assert_eq!(parse("").unwrap().audit.write_timeout_ms, 2000);
        let e = parse("[audit]\nwrite_timeout_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("audit.write_timeout_ms: must be at least 1"),
            "{e}"
        );
        assert!(parse("[audit]\nwrite_timeout_ms = 1\n").is_ok());
    }

    #[test]
    fn durations_are_at_most_a_day() {
        for (section, key) in [
            ("server", "shutdown_grace_ms"),
            ("upstream", "timeout_ms"),
            ("policy", "eval_timeout_ms"),
            ("policy", "watch_interval_ms"),
            ("enrichment", "cache_ttl_ms"),
            ("enrichment", "negative_ttl_ms"),
            ("quota", "max_wait_ms"),
            ("audit", "fsync_interval_ms"),
            ("audit", "enqueue_timeout_ms"),
            ("audit", "write_timeout_ms"),
        ] {
            assert!(parse(&format!("[{section}]\n{key} = 86400000\n")).is_ok());
            let e = parse(&format!("[{section}]\n{key} = 86400001\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{section}.{key}: must be at most 86400000")),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.server.max_body_bytes, 1_048_576);
        assert_eq!(c.upstream.auth, UpstreamAuth::Resign);
        assert_eq!(c.policy.mode, PolicyMode::Enforce);
        assert_eq!(c.audit.sink, AuditSink::Stdout);
        // relative paths hang off the configuration file's folder
        assert_eq!(c.policy.dir, PathBuf::from("/etc/hubgate/policies"));
        assert_eq!(
            c.identity.callers,
            PathBuf::from("/etc/hubgate/callers.toml")
        );
    }

    #[test]
    fn coordination_is_optional_and_checked_without_echoing_the_url() {
        let c = parse("").unwrap();
        assert!(c.coordination.redis_url.is_none());
        assert_eq!(c.coordination.fallback_share, 0.25);
        let c = parse(
            "[coordination]\nredis_url = \"rediss://:pw@cache:6380/1\"\nredis_password_env = \"P\"\nfallback_share = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.coordination.fallback_share, 0.5);
        for (text, key) in [
            (
                "redis_url = \"http://u:secret@h/\"",
                "coordination.redis_url",
            ),
            (
                "redis_url = \"redis://u:secret@h:notaport/\"",
                "coordination.redis_url",
            ),
            ("fallback_share = 0.0", "coordination.fallback_share"),
            ("fallback_share = 1.5", "coordination.fallback_share"),
            (
                "redis_password_env = \"P\"",
                "coordination.redis_password_env",
            ),
            ("op_timeout_ms = 0", "coordination.op_timeout_ms"),
            ("key_prefix = \"\"", "coordination.key_prefix"),
        ] {
            let err = parse(&format!("[coordination]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(!err.contains("secret"), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let err = parse("[server]\nlisen = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/hubgate/hubgate.toml"), "{err}");
        assert!(err.contains("lisen"), "{err}");
        let err = parse("[nonsense]\n").unwrap_err().to_string();
        assert!(err.contains("nonsense"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (text, key) in [
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
            ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
            ("[upstream]\nendpoint = \"ftp://x\"", "upstream.endpoint"),
            (
                "[upstream]\nendpoint = \"https://x/path\"",
                "upstream.endpoint",
            ),
            ("[upstream]\ntimeout_ms = 0", "upstream.timeout_ms"),
            ("[enrichment]\nsettle_ms = 3600001", "enrichment.settle_ms"),
            ("[identity]\nmode = \"static\"", "identity.static_principal"),
            (
                "[server]\ntls_cert = \"c\"\ntls_key = \"k\"\nclient_ca = \"ca\"\n\
                 [identity]\nmode = \"mtls\"\nstatic_principal = \"w\"",
                "identity.static_principal",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:7\"\nadmin_listen = \"127.0.0.1:7\"",
                "server.admin_listen",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = parse("[policy]\nmode = \"maybe\"").unwrap_err().to_string();
        assert!(err.contains("maybe"), "{err}");
    }

    #[test]
    fn the_audit_file_is_no_file_hubgate_reads() {
        for (text, what) in [
            ("path = \"hubgate.toml\"", "the configuration file"),
            ("path = \"./callers.toml\"", "identity.callers"),
            (
                "path = \"/etc/hubgate/k\"\nhmac_key_file = \"k\"",
                "audit.hmac_key_file",
            ),
        ] {
            let text = format!("[audit]\nsink = \"file\"\n{text}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("audit.path: is ") && err.contains(what),
                "{text}: {err}"
            );
        }
        assert!(parse("[audit]\nsink = \"file\"\npath = \"audit.ndjson\"").is_ok());
        // The stdout sink writes no file: its (default) path is not read.
        assert!(parse("[audit]\npath = \"hubgate.toml\"").is_ok());
    }

    #[test]
    fn socket_limits_have_defaults_and_are_validated() {
        let c = parse("").unwrap();
        assert_eq!(c.server.header_read_timeout_ms, 10_000);
        assert_eq!(c.server.body_read_timeout_ms, 30_000);
        assert_eq!(c.server.idle_timeout_ms, 60_000);
        assert_eq!(c.server.response_send_timeout_ms, 30_000);
        assert_eq!(c.server.max_connections, 1024);
        assert_eq!(c.server.max_in_flight, 256);
        let c = parse(
            "[server]\nheader_read_timeout_ms = 1000\nbody_read_timeout_ms = 2000\n\
             idle_timeout_ms = 3000\nresponse_send_timeout_ms = 4000\nmax_connections = 4\n\
             max_in_flight = 1",
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout_ms, 1000);
        assert_eq!(c.server.body_read_timeout_ms, 2000);
        assert_eq!(c.server.idle_timeout_ms, 3000);
        assert_eq!(c.server.response_send_timeout_ms, 4000);
        assert_eq!(c.server.max_connections, 4);
        assert_eq!(c.server.max_in_flight, 1);
        for key in [
            "header_read_timeout_ms",
            "body_read_timeout_ms",
            "idle_timeout_ms",
            "response_send_timeout_ms",
            "max_connections",
            "max_in_flight",
        ] {
            for bad in ["0", "100000000000"] {
                let text = format!("[server]\n{key} = {bad}");
                let err = parse(&text).unwrap_err().to_string();
                assert!(err.contains(&format!("server.{key}")), "{text}: {err}");
            }
            // Negative numbers do not fit the type: the parse error names the key.
            let text = format!("[server]\n{key} = -1");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert_eq!(parse("").unwrap().server.caller_share(), 64);
        // A caller's share of the body bytes follows its share of the requests, and holds one
        // request of max_body_bytes at least.
        assert_eq!(
            parse("").unwrap().server.caller_byte_share(),
            16 * 1_048_576
        );
        let c = parse("[server]\nmax_in_flight = 8\nmax_in_flight_per_caller = 8").unwrap();
        assert_eq!(c.server.caller_byte_share(), 64 * 1_048_576);
        let c = parse("[server]\nmax_body_bytes = 1000\nmax_in_flight_body_bytes = 2000").unwrap();
        assert_eq!(c.server.caller_byte_share(), 1000);
        // The body-bytes cap must hold one request of max_body_bytes.
        let c = parse("[server]\nmax_body_bytes = 1000\nmax_in_flight_body_bytes = 1000").unwrap();
        assert_eq!(c.server.max_in_flight_body_bytes, 1000);
        for bad in ["999", "1099511627777", "0"] {
            let text = format!("[server]\nmax_body_bytes = 1000\nmax_in_flight_body_bytes = {bad}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("server.max_in_flight_body_bytes")
                    && err.contains("max_body_bytes (1000)"),
                "{text}: {err}"
            );
        }
        assert_eq!(
            parse("[server]\nmax_in_flight = 3")
                .unwrap()
                .server
                .caller_share(),
            1
        );
        for bad in ["0", "99"] {
            let err = parse(&format!("[quota]\nmax_wait_ms = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("quota.max_wait_ms") && err.contains("at least 100"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse("[quota]\nmax_wait_ms = 100")
                .unwrap()
                .quota
                .max_wait_ms,
            100
        );
        let c = parse("[server]\nmax_in_flight = 8\nmax_in_flight_per_caller = 8").unwrap();
        assert_eq!(c.server.caller_share(), 8);
        for bad in ["0", "9"] {
            let text = format!("[server]\nmax_in_flight = 8\nmax_in_flight_per_caller = {bad}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("server.max_in_flight_per_caller")
                    && err.contains("between 1 and server.max_in_flight (8)"),
                "{text}: {err}"
            );
        }
        // A wildcard claims the port on every address of its family: serve could never bind
        // both, so the configuration is refused as an equal pair is.
        for (listen, admin) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("0.0.0.0:8080", "[::]:8080"),
        ] {
            let text = format!("[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("server.admin_listen"), "{text}: {err}");
        }
        for (listen, admin) in [
            ("127.0.0.1:8080", "[::1]:8080"),
            ("0.0.0.0:8080", "[::1]:8080"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("0.0.0.0:0", "0.0.0.0:0"),
            ("0.0.0.0:8080", "0.0.0.0:9090"),
        ] {
            let text = format!("[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"");
            assert!(parse(&text).is_ok(), "{text}");
        }
        for bad in ["us-east-1 ", "US-EAST-1", "us-east-1/x", " "] {
            let text = format!("[upstream]\nregion = \"{bad}\"");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("upstream.region"), "{text}: {err}");
        }
        assert!(parse("[upstream]\nregion = \"eu-central-2\"").is_ok());
        let err = parse("[server]\nmax_body_bytes = 1099511627777")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.max_body_bytes"), "{err}");
        // The audit queue's bound: tokio's channel panics past usize::MAX >> 3.
        assert!(parse("[audit]\nqueue_capacity = 1000000").is_ok());
        for bad in ["0", "1000001", "2305843009213693952"] {
            let text = format!("[audit]\nqueue_capacity = {bad}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("audit.queue_capacity") && err.contains("between 1 and 1000000"),
                "{text}: {err}"
            );
        }
        assert_eq!(c.server.worker_threads, None);
        let c = parse("[server]\nworker_threads = 1").unwrap();
        assert_eq!(c.server.worker_threads, Some(1));
        for bad in ["0", "1025"] {
            let text = format!("[server]\nworker_threads = {bad}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("server.worker_threads") && err.contains("between 1 and 1024"),
                "{text}: {err}"
            );
        }
    }
}
