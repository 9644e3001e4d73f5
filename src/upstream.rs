//! Upstream: hubgate's pooled client to Security Hub, its own AWS credentials (the standard
//! chain, via aws-config) and SigV4 re-signing of every request it sends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;
use crate::payload::Payload;

/// Lookups read whole responses; this bounds what one GetFindings page may hold.
const MAX_LOOKUP_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// How much of an error answer to a forward is read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Refresh temporary credentials this long before they expire.
const CREDENTIAL_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// How long one fetch of hubgate's own credentials may take before it is abandoned (or
/// upstream.timeout_ms, if longer). The SDK's own timeouts bound a source that never answers
/// (2 s to connect, 5 s to the response head, three attempts: about 20 s), but not one that
/// sends a response head and then stalls in the body: without this, such a fetch never ended
/// and every later request waited on it, an outage that outlived the source's recovery.
const CREDENTIAL_FETCH_LIMIT: Duration = Duration::from_secs(30);
/// How long after a fetch ends the next refresh of still-valid credentials may start.
const CREDENTIAL_REFRESH_RETRY: Duration = Duration::from_secs(10);
/// How long after one fetch started because AWS refused the credentials the next such fetch
/// may start: a source that keeps giving refused credentials is asked once per this, not at
/// every request.
const CREDENTIAL_REFUSED_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("Security Hub is unreachable: {0}")]
    Unreachable(String),
    #[error("Security Hub did not answer within {ms} ms")]
    Timeout { ms: u64 },
    #[error("hubgate has no AWS credentials to sign with: {0}")]
    Credentials(String),
    #[error(
        "Security Hub refused hubgate's {operation} call with HTTP {status}: {detail}{}",
        request_id.as_deref().map(|id| format!(" (request id {id})")).unwrap_or_default()
    )]
    Refused {
        operation: &'static str,
        status: u16,
        detail: String,
        /// The answer's `x-amzn-RequestId`: what AWS support asks for. A lookup's refusal has
        /// no record field of its own, so the message carries it; a forward's goes into the
        /// record's `upstream_request_id` too ([`UpstreamError::answer`]).
        request_id: Option<String>,
    },
    #[error("Security Hub sent an unreadable {operation} response: {detail}")]
    BadResponse {
        operation: &'static str,
        detail: String,
    },
    #[error("Security Hub throttled hubgate's {operation} call: {detail}")]
    Throttled {
        operation: &'static str,
        detail: String,
    },
    /// AWS refused the credentials hubgate signed with, not the call: nothing was applied,
    /// and the same call signed with the credentials being fetched may succeed.
    #[error("{0}")]
    CredentialsRefused(Box<CredentialsRefused>),
    /// hubgate's stop ran out of its grace period while the call was in flight: it may have
    /// been applied, but no answer will say.
    #[error(
        "hubgate stopped (its shutdown grace period ran out) while the {operation} call was in \
         flight; whether Security Hub applied it is unknown"
    )]
    Interrupted { operation: &'static str },
    /// hubgate failed before anything was sent (building or signing the request, a lookup task
    /// that went away): a fault of hubgate's, answered 500, never shown as Security Hub's.
    #[error("hubgate could not {what}: {cause}")]
    Local {
        what: &'static str,
        #[source]
        cause: LocalCause,
    },
}

/// The cause of a local failure; shared, since one failed lookup answers every request that
/// waited on it.
pub type LocalCause = Arc<dyn std::error::Error + Send + Sync>;

impl UpstreamError {
    pub fn local(
        what: &'static str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        UpstreamError::Local {
            what,
            cause: Arc::new(cause),
        }
    }

    /// A fault of hubgate's own, not of Security Hub or the network.
    pub fn is_local(&self) -> bool {
        matches!(self, UpstreamError::Local { .. })
    }
}

impl UpstreamError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }

    /// A failure of the server's or the network's that the same call may not meet again: a
    /// 5xx that is not a throttle, a connection refused or cut. Worth asking again only for a
    /// call that changes nothing (a lookup).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            UpstreamError::Refused {
                status: 500 | 502 | 503 | 504,
                ..
            } | UpstreamError::Unreachable(_)
        )
    }

    pub fn is_interrupted(&self) -> bool {
        matches!(self, UpstreamError::Interrupted { .. })
    }

    pub fn is_throttle(&self) -> bool {
        matches!(self, UpstreamError::Throttled { .. })
    }

    pub fn is_credentials_refused(&self) -> bool {
        matches!(self, UpstreamError::CredentialsRefused(_))
    }

    /// The status and request id of the answer this error is made from, when Security Hub
    /// answered the call.
    pub fn answer(&self) -> Option<(u16, Option<&str>)> {
        match self {
            UpstreamError::CredentialsRefused(r) => Some((r.status, r.request_id.as_deref())),
            UpstreamError::Refused {
                status, request_id, ..
            } => Some((*status, request_id.as_deref())),
            _ => None,
        }
    }

    /// The call may have been applied although no answer says so: state hubgate cached about
    /// what it touched can no longer be trusted.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            UpstreamError::Timeout { .. }
                | UpstreamError::Unreachable(_)
                | UpstreamError::BadResponse { .. }
                | UpstreamError::Interrupted { .. }
        )
    }
}

/// Error types botocore's standard retry mode treats as throttling
/// (`ThrottledRetryableChecker` in botocore/retries/standard.py), all of them: Security Hub sits
/// behind AWS's front ends, which spell a throttle more ways than the service's model does
/// (`SlowDown` on a 503, `BandwidthLimitExceeded`, ...). One left out made a throttled lookup a
/// 502 at once, with no retry within the deadline and no slowing down.
const THROTTLING_ERROR_TYPES: [&str; 14] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// An answer refusing the credentials a call was signed with (`CREDENTIAL_ERROR_TYPES`).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "Security Hub refused hubgate's own AWS credentials on its {operation} call \
     ({error_type}: {detail}); nothing was applied, and hubgate is fetching new credentials \
     from its source: retry"
)]
pub struct CredentialsRefused {
    operation: &'static str,
    error_type: String,
    detail: String,
    /// The answer's: Security Hub did answer.
    status: u16,
    request_id: Option<String>,
}

impl CredentialsRefused {
    /// The refusal an answer is, if it is one (`body`: as for [`is_throttle`]); `detail` is
    /// filled in from its body later.
    fn of(
        operation: &'static str,
        status: http::StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Option<CredentialsRefused> {
        let error_type = credentials_refused(status, headers, body)?;
        Some(CredentialsRefused {
            operation,
            error_type,
            detail: String::new(),
            status: status.as_u16(),
            request_id: request_id(headers),
        })
    }
}

/// Error types with which AWS refuses the credentials a call was signed with rather than the
/// call: an expired session token, or an access key it does not know (deleted, rotated, or a
/// session it no longer honours). The credential source may already hold newer ones: temporary
/// credentials are fetched again only near their expiry, and an expiry the source reported
/// is not AWS's word (a revoked role session, a clock that is off).
const CREDENTIAL_ERROR_TYPES: [&str; 4] = [
    "ExpiredTokenException",
    "ExpiredToken",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
];

/// Error types of an answer refusing a call's signature itself (not its credentials).
const SIGNATURE_ERROR_TYPES: [&str; 3] = [
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "SignatureDoesNotMatch",
];

/// Whether an answer refuses the signature of the call it answers (`body`: as for
/// [`is_throttle`]).
fn signature_refused(status: http::StatusCode, headers: &HeaderMap, body: Option<&[u8]>) -> bool {
    status.is_client_error()
        && answer_error_type(headers, body)
            .is_some_and(|t| SIGNATURE_ERROR_TYPES.contains(&t.as_str()))
}

/// The request id AWS gave an answer (`x-amzn-RequestId`).
fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The error name in an error type as AWS spells it, header or body: `Name`,
/// `Name:<namespace URL>` or `<namespace>#Name`, cut as botocore cuts it (before the first
/// `:`, then after the last `#`; Smithy's restJson1 asks clients to accept both forms). The
/// header was cut only at `:`, so `x-amzn-ErrorType: com.amazon.coral.service#
/// InvalidSignatureException` was no refusal of hubgate's signature: AWS's answer, which
/// repeats the request it expected with hubgate's session token in it, was relayed to the
/// caller whole. An `ExpiredTokenException` so spelled reached the caller as its own token's
/// expiry (and no new credentials were fetched), a `ThrottlingException` as a 400 nobody
/// backed off on.
fn error_name(raw: &str) -> &str {
    let name = raw.split(':').next().unwrap_or(raw);
    name.rsplit('#').next().unwrap_or(name)
}

/// The error type an answer's `x-amzn-ErrorType` names ([`error_name`]).
fn error_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(error_name)
}

/// The error type an error answer's JSON body names, as botocore's rest-json parser reads it
/// when the header is absent: a top-level `code` or `Code` if there is one (it overrides
/// `__type`: `RestJSONParser._inject_error_code`), else `__type`, cut by [`error_name`]. Read `__type` first and without `Code`, a
/// throttle answered `{"Code": "Throttling", ...}` or `{"__type": "...", "code":
/// "ThrottlingException"}`, which SDKs back off on, was a fault: 502 at once, no retry, the
/// pace not slowed.
fn body_error_type(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = ["code", "Code", "__type"]
        .iter()
        .find_map(|member| value.get(member))
        .and_then(|t| t.as_str())?;
    Some(error_name(name).to_owned())
}

/// The error type an answer names, as SDKs read it: `x-amzn-ErrorType` or, without that
/// header, the body (`body`: None when the answer is relayed unread, as a forward's is).
fn answer_error_type(headers: &HeaderMap, body: Option<&[u8]>) -> Option<String> {
    match error_type(headers) {
        Some(name) => Some(name.to_owned()),
        None => body.and_then(body_error_type),
    }
}

/// Whether an upstream answer is Security Hub throttling hubgate: HTTP 429, or a throttling
/// error type ([`answer_error_type`]). SDKs read the error type the same way, so what they
/// would back off on is what hubgate backs off on.
pub fn is_throttle(status: http::StatusCode, headers: &HeaderMap, body: Option<&[u8]>) -> bool {
    if status == http::StatusCode::TOO_MANY_REQUESTS {
        return true;
    }
    if status.is_success() {
        return false;
    }
    answer_error_type(headers, body)
        .is_some_and(|name| THROTTLING_ERROR_TYPES.contains(&name.as_str()))
}

/// The error type, when an upstream answer refuses the credentials the call was signed with
/// (always a 4xx), read as [`is_throttle`] reads a throttle. A lookup's refusal named by its
/// body alone was a 502 (SDKs retry it, and it fails again), and no new credentials were
/// fetched until the old ones neared the expiry their source had reported.
fn credentials_refused(
    status: http::StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Option<String> {
    if !status.is_client_error() {
        return None;
    }
    answer_error_type(headers, body).filter(|name| CREDENTIAL_ERROR_TYPES.contains(&name.as_str()))
}

/// What an error answer's body says: its `message`, or the start of the body, without the
/// request AWS echoes back ([`without_signed_echo`]).
fn error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
    match message {
        Some(m) => {
            let m = without_signed_echo(&m);
            if m.chars().count() > MAX_ERROR_MESSAGE_CHARS {
                let mut clipped: String = m.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
                clipped.push('…');
                clipped
            } else {
                m.into_owned()
            }
        }
        None => without_signed_echo(&String::from_utf8_lossy(body))
            .chars()
            .take(200)
            .collect(),
    }
}

/// Where AWS's answer to a signature it could not match starts repeating the request it
/// expected ("The Canonical String for this request should have been '…x-amz-security-token:
/// <token>…'", then "The String-to-Sign …"): every signed header's value, the session token
/// of hubgate's credentials among them (they are temporary wherever hubgate runs on a role).
/// An IncompleteSignatureException repeats the Authorization header instead ("Authorization
/// header requires 'Signature' parameter. Authorization=AWS4-HMAC-SHA256 Credential=…,
/// SignedHeaders=…, Signature=<hubgate's signature>"): with long-term keys no session token
/// comes before the signature to cut at.
/// The message is repeated in the envelope any caller reads, the audit record and the log, so
/// it is cut before the first of these, whichever comes first, in any letter case.
const SIGNED_REQUEST_ECHO: [&str; 5] = [
    "the canonical string",
    "the string-to-sign",
    "x-amz-security-token",
    "authorization=",
    "signature=",
];

/// `message` up to AWS's echo of the signed request (see [`SIGNED_REQUEST_ECHO`]), saying
/// that the rest was left out.
fn without_signed_echo(message: &str) -> std::borrow::Cow<'_, str> {
    let lower = message.to_ascii_lowercase();
    match SIGNED_REQUEST_ECHO
        .iter()
        .filter_map(|marker| lower.find(marker))
        .min()
    {
        // ASCII lower-casing keeps byte offsets, so `cut` is a char boundary of `message` too.
        Some(cut) => {
            let kept = message[..cut].trim_end();
            let rest = "(the rest, which repeats the signed request, is not shown)";
            if kept.is_empty() {
                rest.into()
            } else {
                format!("{kept} {rest}").into()
            }
        }
        None => message.into(),
    }
}

/// How much of Security Hub's own error message hubgate repeats: it goes into the envelope,
/// the audit record (three times in OCSF) and the log, and its length is the upstream's to
/// choose (up to the lookup answer's limit, megabytes); AWS's messages are a sentence or two.
const MAX_ERROR_MESSAGE_CHARS: usize = 1024;

/// The error type a forward's 4xx without `x-amzn-ErrorType` names in its body (read by
/// [`Upstream::forward`]), kept in the answer's extensions (never relayed) for what judges the
/// answer after it: a throttle so named is one SDKs back off on, and so must hubgate.
#[derive(Debug, Clone)]
pub struct BodyErrorType(pub String);

impl BodyErrorType {
    pub fn is_throttle(&self) -> bool {
        THROTTLING_ERROR_TYPES.contains(&self.0.as_str())
    }
}

/// A forwarded answer's body: Security Hub's, streamed, or the bytes of one hubgate read.
pub type Relayed = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Headers that describe one hop; never forwarded. (Content-Length is recomputed from the
/// same bytes and Transfer-Encoding does not survive buffering the body.)
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The caller's headers a re-signed forward carries: an allow-list. hubgate signs only `host`
/// and `content-type` (as the SDKs do), so dropping any other caller header never breaks the
/// signature, and nothing hubgate did not look at goes up under hubgate's own role. These are
/// the headers the AWS SDKs and CLI send besides their signature (the caller's credentials,
/// its `Host` and `X-Amz-*` signing headers are replaced by hubgate's own).
const RESIGN_FORWARDED: [&str; 8] = [
    "content-type",
    "accept",
    "accept-encoding",
    "user-agent",
    "x-amz-user-agent",
    "x-amzn-trace-id",
    "amz-sdk-invocation-id",
    "amz-sdk-request",
];

/// The header names a request's `Connection` header lists: hop-by-hop for that connection
/// alone (RFC 9110 §7.6.1), so never forwarded. Lower-case, as `HeaderName`s are.
fn connection_options(headers: &HeaderMap) -> Vec<String> {
    let mut options = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let text = String::from_utf8_lossy(value.as_bytes());
        options.extend(
            text.split(',')
                .map(|o| o.trim().to_ascii_lowercase())
                .filter(|o| !o.is_empty()),
        );
    }
    options
}

/// The caller's headers that `keep` accepts and `Connection` does not name.
fn forwarded_headers(caller: &HeaderMap, keep: impl Fn(&str) -> bool) -> HeaderMap {
    let hop = connection_options(caller);
    let mut out = HeaderMap::with_capacity(caller.len());
    for (name, value) in caller {
        let n = name.as_str();
        if keep(n) && !hop.iter().any(|h| h == n) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The caller's headers that a re-signed forward carries (before hubgate adds its own `Host`
/// and signature): those on [`RESIGN_FORWARDED`].
fn resign_headers(caller: &HeaderMap) -> HeaderMap {
    forwarded_headers(caller, |n| RESIGN_FORWARDED.contains(&n))
}

/// The caller's headers that a passthrough forward carries: all but the fixed hop-by-hop ones
/// (see [`Upstream::forward_exact`] for why not an allow-list).
fn passthrough_headers(caller: &HeaderMap) -> HeaderMap {
    forwarded_headers(caller, |n| !HOP_BY_HOP.contains(&n))
}

/// Drops from an upstream answer's head what describes hubgate's own connection to Security
/// Hub (RFC 9110 §7.6.1): the fixed hop-by-hop headers and those its `Connection` header names,
/// all but `Content-Length`, which a streamed answer's framing still needs. Relayed, an
/// upstream's `Connection: close` (a load balancer ending its connection to hubgate) closed
/// the caller's keep-alive connection to hubgate as well, and `Keep-Alive`, `Upgrade` or
/// `Proxy-Authenticate` told the caller about a hop it never used. A `Content-Length` beside
/// a `Transfer-Encoding` goes too: the body was framed by the coding, so the length is not
/// its length (RFC 9112 §6.3), and relayed alone it would cut the body short, as a whole answer.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named = connection_options(headers);
    for name in HOP_BY_HOP.iter().filter(|n| **n != "content-length") {
        headers.remove(*name);
    }
    for name in named.iter().filter(|n| *n != "content-length") {
        headers.remove(name.as_str());
    }
}

pub struct Upstream {
    client: HttpsClient,
    endpoint: Uri,
    host: HeaderValue,
    region: String,
    timeout: Duration,
    credentials: CredentialSource,
}

/// hubgate's own credentials: the last ones the chain gave, and the fetch of the next, which
/// runs as a task of its own. A fetch used to run in the request that needed it, under a lock
/// every other request queued on: a credential source that stalled (an STS or container
/// endpoint accepting and not answering) held every request for as long as the SDK's own
/// timeouts and retries took (19 s with `upstream.timeout_ms = 500`). A request now waits for
/// the fetch at most `upstream.timeout_ms`, and a request that gives up does not cancel it: a
/// slow source still delivers, where cancelling each attempt at the timeout would never let it.
/// Credentials that are still valid but near their expiry are used while the next are fetched.
struct CredentialSource {
    provider: Option<SharedCredentialsProvider>,
    timeout: Duration,
    /// How long the fetch task may run: `CREDENTIAL_FETCH_LIMIT`, or `timeout` if longer.
    fetch_limit: Duration,
    state: Arc<std::sync::Mutex<CredentialState>>,
}

#[derive(Default)]
struct CredentialState {
    current: Option<Credentials>,
    /// The fetch under way: its outcome is sent here (None until it ends).
    fetching: Option<tokio::sync::watch::Receiver<Option<Result<Credentials, UpstreamError>>>>,
    /// When the last fetch ended: still-valid credentials are refreshed no sooner than
    /// `CREDENTIAL_REFRESH_RETRY` after it.
    last_ended: Option<tokio::time::Instant>,
    /// When the last fetch started because AWS refused the credentials (`refused`).
    last_refused: Option<tokio::time::Instant>,
}

impl CredentialSource {
    fn new(provider: Option<SharedCredentialsProvider>, timeout: Duration) -> CredentialSource {
        CredentialSource {
            provider,
            timeout,
            fetch_limit: timeout.max(CREDENTIAL_FETCH_LIMIT),
            state: Default::default(),
        }
    }

    async fn get(&self) -> Result<Credentials, UpstreamError> {
        let mut waiting = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = SystemTime::now();
            // The credentials to sign with now, and whether to fetch the next meanwhile.
            let usable = state.current.as_ref().and_then(|c| match c.expiry() {
                None => Some((c.clone(), false)),
                Some(at) if at > now + CREDENTIAL_REFRESH_MARGIN => Some((c.clone(), false)),
                Some(at) if at > now => Some((c.clone(), true)),
                Some(_) => None,
            });
            match usable {
                Some((c, refresh)) => {
                    // Still valid: a failed start is tried again by a later request. A source
                    // that keeps giving credentials within the margin (instance metadata
                    // until it rotates them) is asked again after a pause, not at once.
                    let rested = state
                        .last_ended
                        .is_none_or(|t| t.elapsed() >= CREDENTIAL_REFRESH_RETRY);
                    if refresh && rested {
                        let _ = self.fetch(&mut state);
                    }
                    return Ok(c);
                }
                None => self.fetch(&mut state)?,
            }
        };
        let outcome = tokio::time::timeout(self.timeout, async {
            loop {
                if let Some(done) = waiting.borrow_and_update().clone() {
                    return done;
                }
                if waiting.changed().await.is_err() {
                    // The fetch task went away without an outcome (a panic in the chain).
                    return Err(UpstreamError::Credentials(
                        "the fetch of hubgate's AWS credentials ended without an outcome".into(),
                    ));
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| {
            Err(UpstreamError::Credentials(format!(
                "the AWS credential source did not answer within upstream.timeout_ms ({} ms); \
                 hubgate keeps waiting for it in the background",
                self.timeout.as_millis()
            )))
        })
    }

    /// AWS refused the credentials with access key `key_id`: fetch again now, so that a
    /// caller's retry is signed with what the source gives now; unless that key is no longer
    /// the current one, a fetch is under way, or the last fetch started this way began under
    /// `CREDENTIAL_REFUSED_RETRY` ago. The refused credentials stay current until the fetch
    /// ends: requests meanwhile are refused by AWS, not left waiting, and a source that gives
    /// the same key again is asked once per `CREDENTIAL_REFUSED_RETRY` at most.
    fn refused(&self, key_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let current = state
            .current
            .as_ref()
            .is_some_and(|c| c.access_key_id() == key_id);
        let rested = state
            .last_refused
            .is_none_or(|t| t.elapsed() >= CREDENTIAL_REFUSED_RETRY);
        if current && rested && state.fetching.is_none() {
            state.last_refused = Some(tokio::time::Instant::now());
            tracing::warn!(
                "Security Hub refused hubgate's AWS credentials; fetching new ones from the \
                 credential source"
            );
            let _ = self.fetch(&mut state);
        }
    }

    /// Starts a fetch unless one is under way; returns where its outcome will be sent.
    fn fetch(
        &self,
        state: &mut CredentialState,
    ) -> Result<
        tokio::sync::watch::Receiver<Option<Result<Credentials, UpstreamError>>>,
        UpstreamError,
    > {
        // A task that ended without clearing `fetching` (it panicked) dropped its sender: it
        // is replaced, or every later request would wait on it and fail, for good.
        if let Some(rx) = state
            .fetching
            .as_ref()
            .filter(|rx| rx.has_changed().is_ok())
        {
            return Ok(rx.clone());
        }
        let provider = self.provider.clone().ok_or_else(|| {
            UpstreamError::Credentials("no credentials provider is configured".into())
        })?;
        let (tx, rx) = tokio::sync::watch::channel(None);
        state.fetching = Some(rx.clone());
        let shared = self.state.clone();
        let limit = self.fetch_limit;
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(limit, provider.provide_credentials()).await {
                Err(_) => Err(UpstreamError::Credentials(format!(
                    "the AWS credential source gave no credentials within {} s; the next \
                     request starts another fetch",
                    limit.as_secs()
                ))),
                Ok(Err(e)) => Err(credentials_error(&e)),
                Ok(Ok(c)) => unexpired(c, SystemTime::now()),
            };
            let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(c) = &outcome {
                state.current = Some(c.clone());
            }
            state.fetching = None;
            state.last_ended = Some(tokio::time::Instant::now());
            // Nobody may be waiting any more; the credentials are kept either way.
            let _ = tx.send(Some(outcome));
        });
        Ok(rx)
    }
}

/// Credentials a source gave that have already expired sign nothing: Security Hub would refuse
/// them with a 403 that reads as the caller's own (non-retryable) failure.
fn unexpired(c: Credentials, now: SystemTime) -> Result<Credentials, UpstreamError> {
    match c.expiry() {
        Some(at) if at <= now => Err(UpstreamError::Credentials(format!(
            "the AWS credential source gave credentials that expired {} s ago (is this \
             machine's clock right?)",
            now.duration_since(at).unwrap_or_default().as_secs()
        ))),
        _ => Ok(c),
    }
}

/// Why the upstream client could not be set up; hubgate does not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("TLS setup failed: {0}")]
    Tls(#[source] rustls::Error),
    #[error("upstream.endpoint has no host")]
    NoHost,
    #[error("{0}")]
    Host(#[source] http::header::InvalidHeaderValue),
}

impl Upstream {
    pub async fn new(config: &Config) -> Result<Arc<Upstream>, SetupError> {
        let client = https_client(Duration::from_millis(config.upstream.timeout_ms))?;
        let aws_http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.upstream.region.clone()))
            .http_client(aws_http)
            .load()
            .await;

        let endpoint = config.upstream_uri.clone();
        let authority = endpoint.authority().ok_or(SetupError::NoHost)?.clone();
        // The signed Host leaves out the scheme's default port, as every SDK does.
        let default_port = match endpoint.scheme_str() {
            Some("https") => 443,
            _ => 80,
        };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => authority.as_str().to_string(),
            _ => authority.host().to_string(),
        };
        Ok(Arc::new(Upstream {
            client,
            host: HeaderValue::from_str(&host).map_err(SetupError::Host)?,
            endpoint,
            region: config.upstream.region.clone(),
            timeout: Duration::from_millis(config.upstream.timeout_ms),
            credentials: CredentialSource::new(
                sdk.credentials_provider(),
                Duration::from_millis(config.upstream.timeout_ms),
            ),
        }))
    }

    async fn credentials(&self) -> Result<Credentials, UpstreamError> {
        self.credentials.get().await
    }

    /// Can hubgate sign right now? Readiness asks this.
    pub async fn credentials_available(&self) -> Result<(), UpstreamError> {
        self.credentials().await.map(|_| ())
    }

    fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let mut parts = self.endpoint.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|e| UpstreamError::local("build the upstream path", e))?,
        );
        Uri::from_parts(parts).map_err(|e| UpstreamError::local("build the upstream URI", e))
    }

    /// Signs `headers` + body for the upstream host with hubgate's credentials; also returns
    /// the access key id signed with (`refused`).
    async fn signed_request(
        &self,
        method: &Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Payload,
    ) -> Result<(Request<Full<Bytes>>, String), UpstreamError> {
        let creds = self.credentials().await?;
        let key_id = creds.access_key_id().to_owned();
        let uri = self.uri_for(path_and_query)?;
        headers.insert(header::HOST, self.host.clone());
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(Full::new(body.bytes().clone()))
            .map_err(|e| UpstreamError::local("build the upstream request", e))?;
        *request.headers_mut() = headers;

        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("securityhub")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| UpstreamError::local("set up request signing", e))?
            .into();
        // Only host and content-type are signed, as the SDKs do; other headers pass unsigned.
        let mut signed: Vec<(&str, &str)> = vec![("host", self.host.to_str().unwrap_or(""))];
        if let Some(ct) = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            signed.push(("content-type", ct));
        }
        let uri_string = uri.to_string();
        let signable = SignableRequest::new(
            method.as_str(),
            uri_string.as_str(),
            signed.into_iter(),
            // With sigv4 callers, a forwarded body's hash is the one its signature was
            // verified with: the same bytes, hashed once.
            SignableBody::Precomputed(body.sha256_hex().to_owned()),
        )
        .map_err(|e| UpstreamError::local("sign the upstream request", e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| UpstreamError::local("sign the upstream request", e))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        Ok((request, key_id))
    }

    /// A call signed with `key_id` was answered with a refusal of the credentials: the
    /// error to answer with, once a fetch of new ones is under way.
    fn refused(&self, key_id: &str, mut refusal: CredentialsRefused, body: &[u8]) -> UpstreamError {
        self.credentials.refused(key_id);
        refusal.detail = error_message(body);
        UpstreamError::CredentialsRefused(Box::new(refusal))
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout {
                ms: self.timeout.as_millis() as u64,
            }),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// When a call or a read starting now must end: `upstream.timeout_ms` from now.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    /// Reads an answer's body, at most `limit` bytes, by `deadline`.
    async fn read_by(
        &self,
        body: Incoming,
        limit: usize,
        deadline: tokio::time::Instant,
        operation: &'static str,
    ) -> Result<Bytes, UpstreamError> {
        let collected = tokio::time::timeout_at(deadline, Limited::new(body, limit).collect())
            .await
            .map_err(|_| UpstreamError::Timeout {
                ms: self.timeout.as_millis() as u64,
            })?
            .map_err(|e| UpstreamError::BadResponse {
                operation,
                detail: e.to_string(),
            })?;
        Ok(collected.to_bytes())
    }

    /// Forwards a caller's request: same method, path, query and body bytes; caller
    /// credentials stripped; re-signed with hubgate's own. An answer refusing those
    /// credentials is hubgate's failure, not the caller's: relayed, AWS's 403 "the security
    /// token included in the request is expired" would tell a caller whose own signature
    /// hubgate had verified that its token expired, and SDKs do not retry it.
    pub async fn forward(
        &self,
        operation: &'static str,
        parts: &http::request::Parts,
        body: Payload,
    ) -> Result<Response<Relayed>, UpstreamError> {
        let headers = resign_headers(&parts.headers);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let (request, key_id) = self
            .signed_request(&parts.method, path_and_query, headers, body)
            .await?;
        let (head, incoming) = self.send(request).await?.into_parts();
        // A refusal without x-amzn-ErrorType names its error type in its body, where SDKs read
        // it: relayed unread, an InvalidSignatureException so named reached the caller with
        // AWS's echo of the request it expected (hubgate's session token in it), and an
        // ExpiredTokenException as the caller's own token's expiry. So such a 4xx is read
        // (an error body is small) and relayed as the bytes read.
        let untyped = head.status.is_client_error() && error_type(&head.headers).is_none();
        // Ok: the bytes read; Err: the body, unread.
        let answer: Result<Bytes, Incoming> = match untyped {
            false => Err(incoming),
            true => Ok(self
                .read_by(incoming, MAX_ERROR_BODY_BYTES, self.deadline(), operation)
                .await?),
        };
        let read = answer.as_ref().ok().map(|b| &b[..]);
        let refused = CredentialsRefused::of(operation, head.status, &head.headers, read);
        let own_signature = signature_refused(head.status, &head.headers, read);
        if refused.is_none() && !own_signature {
            let mut head = head;
            if let Some(name) = read.and_then(body_error_type) {
                head.extensions.insert(BodyErrorType(name));
            }
            let body = match answer {
                Ok(bytes) => Full::new(bytes).map_err(|never| match never {}).boxed(),
                Err(incoming) => incoming.boxed(),
            };
            return Ok(Response::from_parts(head, body));
        }
        let status = head.status.as_u16();
        let request_id = request_id(&head.headers);
        // An error body is small; what it says is only for the message.
        let body = match answer {
            Ok(bytes) => bytes,
            Err(incoming) => self
                .read_by(incoming, MAX_ERROR_BODY_BYTES, self.deadline(), operation)
                .await
                .unwrap_or_default(),
        };
        match refused {
            Some(refused) => Err(self.refused(&key_id, refused, &body)),
            // AWS could not match hubgate's own signature (the caller's was verified): the
            // caller's request is not at fault, and AWS's answer goes on with the canonical
            // request it expected, hubgate's session token in it. Relayed, both reached the
            // caller; it is hubgate's failure, its message cut (`error_message`).
            None => Err(UpstreamError::Refused {
                operation,
                status,
                detail: error_message(&body),
                request_id,
            }),
        }
    }

    /// Passthrough: the caller's request as it came, bytes and signed headers unchanged (the
    /// caller signed for the real Security Hub host, so its `Host` stays too); only
    /// hop-by-hop headers go, the fixed ones and those its `Connection` header names. AWS
    /// verifies the caller's signature.
    ///
    /// A deny-list here, not resign's allow-list: the caller chooses which headers it signs
    /// (SDKs differ: `x-amz-security-token`, `amz-sdk-*`, `x-amz-content-sha256`, ...), and
    /// every signed one must arrive or AWS refuses the signature. An allow-list would have to
    /// admit every header the caller lists in SignedHeaders, so a caller could pass any header
    /// by signing it and the list would add nothing. What could change how Security Hub reads
    /// the request is refused before this point instead (`framing::check`: operation and
    /// method overrides, content and transfer codings, repeated security headers).
    pub async fn forward_exact(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Relayed>, UpstreamError> {
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut request = Request::builder()
            .method(parts.method.clone())
            .uri(self.uri_for(path_and_query)?)
            .body(Full::new(body))
            .map_err(|e| UpstreamError::local("build the upstream request", e))?;
        let headers = request.headers_mut();
        *headers = passthrough_headers(&parts.headers);
        if !headers.contains_key(header::HOST) {
            // HTTP/2 carries the authority in the URI, not in a Host header.
            if let Some(authority) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        Ok(self.send(request).await?.map(BodyExt::boxed))
    }

    /// hubgate's own JSON call (e.g. GetFindings), read whole within the timeout; a
    /// successful answer's bytes are parsed by `read`, which may keep only what hubgate needs
    /// of them (a seeded parse that knows what was asked, say).
    pub async fn call_json<T>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
        read: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<T, UpstreamError> {
        // Never an empty body signed in its place: a body that cannot be written is hubgate's
        // fault, answered as one, and nothing is sent.
        let bytes = Bytes::from(
            serde_json::to_vec(body)
                .map_err(|e| UpstreamError::local("serialise the request body", e))?,
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            HeaderName::from_static("user-agent"),
            HeaderValue::from_static(concat!("hubgate/", env!("CARGO_PKG_VERSION"))),
        );
        let (request, key_id) = self
            .signed_request(&method, path, headers, Payload::new(bytes))
            .await?;
        let deadline = self.deadline();
        let response = tokio::time::timeout_at(deadline, self.send(request))
            .await
            .map_err(|_| UpstreamError::Timeout {
                ms: self.timeout.as_millis() as u64,
            })??;
        let status = response.status();
        let (head, body) = response.into_parts();
        let collected = self
            .read_by(body, MAX_LOOKUP_RESPONSE_BYTES, deadline, operation)
            .await?;
        if !status.is_success() {
            if let Some(refused) =
                CredentialsRefused::of(operation, status, &head.headers, Some(&collected))
            {
                return Err(self.refused(&key_id, refused, &collected));
            }
            let detail = error_message(&collected);
            if is_throttle(status, &head.headers, Some(&collected)) {
                return Err(UpstreamError::Throttled { operation, detail });
            }
            return Err(UpstreamError::Refused {
                operation,
                status: status.as_u16(),
                detail,
                request_id: request_id(&head.headers),
            });
        }
        read(&collected).map_err(|e| UpstreamError::BadResponse {
            operation,
            detail: e.to_string(),
        })
    }
}

/// An error with its causes, which is where hyper puts "connection refused".
/// What hubgate says when the standard chain yields no credentials: every source it tried and
/// what to set. The SDK's own error names only the last source tried (instance metadata), which
/// misleads anyone not on EC2; it is logged at debug level.
const NO_CREDENTIALS: &str = "no source of the standard AWS credential chain has any. hubgate \
tried, in order: environment (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), profile \
(AWS_PROFILE, ~/.aws/credentials or ~/.aws/config), web identity (AWS_WEB_IDENTITY_TOKEN_FILE \
and AWS_ROLE_ARN, as EKS IRSA sets them), container (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or \
_FULL_URI, as ECS sets them), instance metadata (an EC2 instance profile). Give hubgate's \
process one of them; `aws sts get-caller-identity` run in hubgate's environment shows what the \
chain finds";

fn https_client(connect_timeout: Duration) -> Result<HttpsClient, SetupError> {
    // Without TCP_NODELAY a request written as head then body waits on the peer's delayed
    // ACK: about 40 ms per forwarded request.
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(SetupError::Tls)?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

fn credentials_error(e: &aws_credential_types::provider::error::CredentialsError) -> UpstreamError {
    use aws_credential_types::provider::error::CredentialsError;
    // Read to tell "no source" from "a source failed", never shown: a source's words are not
    // hubgate's to repeat. A credential_process's stderr, an STS answer echoing the web
    // identity token, a profile file's line: each can hold a secret, and this text reached
    // every caller's envelope, the audit record, /readyz and the log (review 55b).
    let detail = error_chain(e);
    // Instance metadata is the chain's last source: its failure means no earlier one had any.
    let none_found =
        matches!(e, CredentialsError::CredentialsNotLoaded(_)) || detail.contains("IMDS");
    let what = match e {
        _ if none_found => {
            tracing::debug!("the AWS credential chain yielded no credentials: no source has any");
            return UpstreamError::Credentials(NO_CREDENTIALS.to_string());
        }
        CredentialsError::ProviderTimedOut(_) => "the AWS credential source did not answer in time",
        CredentialsError::InvalidConfiguration(_) => {
            "the AWS credential source is configured in a way it cannot use"
        }
        _ => {
            "the AWS credential source failed (a role that cannot be assumed, a \
              credential_process that failed, a token refused)"
        }
    };
    tracing::debug!(
        reason = what,
        "the AWS credential chain yielded no credentials"
    );
    UpstreamError::Credentials(format!(
        "{what}; its own words are not repeated (they can hold a secret): \
         `aws sts get-caller-identity` run in hubgate's environment shows them"
    ))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream {
            client: https_client(Duration::from_secs(1)).unwrap(),
            endpoint: Uri::from_static("http://127.0.0.1:4000"),
            host: HeaderValue::from_static("127.0.0.1:4000"),
            region: "us-east-1".into(),
            timeout: Duration::from_secs(1),
            credentials: CredentialSource {
                provider: None,
                timeout: Duration::from_secs(1),
                fetch_limit: CREDENTIAL_FETCH_LIMIT,
                state: Arc::new(std::sync::Mutex::new(CredentialState {
                    current: Some(Credentials::new(
                        "AKIDHUBGATE",
                        "hubgate-secret",
                        None,
                        None,
                        "test",
                    )),
                    fetching: None,
                    last_ended: None,
                    last_refused: None,
                })),
            },
        }
    }

    /// The signature aws-sigv4 makes over the bytes themselves, at the signed request's time.
    fn signature_over_bytes(request: &Request<Full<Bytes>>, body: &[u8]) -> String {
        let amz_date = request.headers()["x-amz-date"].to_str().unwrap();
        let format =
            time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let time = time::PrimitiveDateTime::parse(amz_date, format)
            .unwrap()
            .assume_utc();
        let identity = Credentials::new("AKIDHUBGATE", "hubgate-secret", None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("securityhub")
            .time(time.into())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let uri = request.uri().to_string();
        let signable = SignableRequest::new(
            "POST",
            uri.as_str(),
            [
                ("host", "127.0.0.1:4000"),
                ("content-type", "application/json"),
            ]
            .into_iter(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        sign(signable, &params).unwrap().into_parts().1
    }

    #[tokio::test]
    async fn a_payload_hashed_by_verification_signs_as_its_bytes_do() {
        let up = upstream();
        let bytes = Bytes::from_static(br#"{"FindingIdentifiers":[],"Note":{"Text":"x"}}"#);
        // As after a caller's SigV4 verification: the hash is already made.
        let verified = Payload::new(bytes.clone());
        let _ = verified.sha256_hex();
        // Without verification (static or mTLS callers), the re-sign makes the hash itself.
        let unhashed = Payload::new(bytes.clone());
        for payload in [verified, unhashed] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let (request, _) = up
                .signed_request(&Method::POST, "/findings/batchupdate", headers, payload)
                .await
                .unwrap();
            let authorization = request.headers()[header::AUTHORIZATION].to_str().unwrap();
            let expected = signature_over_bytes(&request, &bytes);
            assert!(
                authorization.ends_with(&format!("Signature={expected}")),
                "{authorization} against {expected}"
            );
            // A different body signs differently: the hash in the signature is the body's.
            let other = signature_over_bytes(&request, b"{}");
            assert_ne!(expected, other);
        }
    }
    fn caller_headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// A credential source that behaves, call by call, as `script` says: `Stall` never
    /// answers, `Panic` panics, `Expired` gives credentials that expired a minute ago, `Good`
    /// gives credentials valid for an hour. Past the script, `Good`.
    #[derive(Clone, Copy, Debug)]
    enum Fetch {
        Stall,
        Panic,
        Expired,
        NearExpiry,
        Good,
    }

    #[derive(Debug)]
    struct Scripted {
        script: Vec<Fetch>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl ProvideCredentials for Scripted {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let step = self.script.get(n).copied().unwrap_or(Fetch::Good);
            aws_credential_types::provider::future::ProvideCredentials::new(async move {
                let valid = |d: i64| {
                    let at = match d >= 0 {
                        true => SystemTime::now() + Duration::from_secs(d as u64),
                        false => SystemTime::now() - Duration::from_secs((-d) as u64),
                    };
                    Credentials::new(format!("AKID{n}"), "s", Some("t".into()), Some(at), "test")
                };
                match step {
                    Fetch::Stall => std::future::pending().await,
                    Fetch::Panic => panic!("a credential provider that panics"),
                    Fetch::Expired => Ok(valid(-60)),
                    Fetch::NearExpiry => Ok(valid(120)),
                    Fetch::Good => Ok(valid(3600)),
                }
            })
        }
    }

    fn scripted(script: &[Fetch]) -> (CredentialSource, Arc<Scripted>) {
        let provider = Arc::new(Scripted {
            script: script.to_vec(),
            calls: Default::default(),
        });
        let shared = SharedCredentialsProvider::new(ScriptedRef(provider.clone()));
        (
            CredentialSource::new(Some(shared), Duration::from_millis(500)),
            provider,
        )
    }

    #[derive(Debug)]
    struct ScriptedRef(Arc<Scripted>);

    impl ProvideCredentials for ScriptedRef {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.0.provide_credentials()
        }
    }

    fn calls(p: &Scripted) -> usize {
        p.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_that_never_ends_is_abandoned_and_the_next_one_delivers() {
        // A source that sent a response head and stalls in the body: the SDK's timeouts do
        // not end that fetch. Every request waited on it, however long the source had been
        // answering new connections again.
        let (source, provider) = scripted(&[Fetch::Stall]);
        let e = source.get().await.expect_err("the first fetch stalls");
        assert!(e.to_string().contains("did not answer within"), "{e}");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            source.get().await.is_err(),
            "still within the fetch's limit"
        );
        assert_eq!(calls(&provider), 1, "requests share the fetch under way");
        tokio::time::sleep(CREDENTIAL_FETCH_LIMIT).await;
        source
            .get()
            .await
            .expect("a new fetch, once the stalled one was abandoned");
        assert_eq!(calls(&provider), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_keeps_giving_credentials_near_expiry_is_not_asked_at_every_request() {
        // Instance metadata serves the old credentials until shortly before they expire
        // ("at least five minutes before": hubgate's own margin). Each request found them
        // within the margin and started a refresh as soon as the last one ended: the source
        // was asked at the rate requests came, for minutes.
        let (source, provider) = scripted(&[Fetch::NearExpiry; 1000]);
        for _ in 0..200 {
            source.get().await.expect("valid credentials sign");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // 2 s of requests: the first fetch, and no refresh sooner than the pause after it.
        assert_eq!(calls(&provider), 1, "fetches");
        tokio::time::sleep(CREDENTIAL_REFRESH_RETRY).await;
        source.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls(&provider), 2, "refreshes are tried again, spaced");
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_aws_refused_are_fetched_again_at_once_and_at_most_once_a_second() {
        // Valid for an hour by the source's word: before, hubgate signed with them until
        // 5 minutes before that hour was up, every call refused (a revoked role session,
        // a rotated key).
        let (source, provider) = scripted(&[Fetch::Good; 10]);
        let first = source.get().await.unwrap();
        source.refused("AKIDSOMEONEELSE");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls(&provider), 1, "another key's refusal fetches nothing");
        source.refused(first.access_key_id());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls(&provider), 2, "a refusal fetches at once");
        let second = source.get().await.unwrap();
        assert_ne!(second.access_key_id(), first.access_key_id());
        // Refusals of keys already replaced (calls signed before the fetch ended) and
        // refusals within the second after the last such fetch ask the source nothing.
        source.refused(first.access_key_id());
        source.refused(second.access_key_id());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls(&provider), 2);
        tokio::time::sleep(CREDENTIAL_REFUSED_RETRY).await;
        source.refused(second.access_key_id());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls(&provider), 3);
    }

    /// AWS's InvalidSignatureException message repeats the canonical request it expected,
    /// hubgate's session token in it: only the words before it are kept.
    #[test]
    fn aws_echo_of_the_signed_request_is_cut_from_its_message() {
        let message = "The request signature we calculated does not match the signature you \
            provided.\n\nThe Canonical String for this request should have been\n'POST\n/findings\n\n\
            host:h\nx-amz-security-token:SECRETTOKEN\n'\n\nThe String-to-Sign should have been\n'x'";
        let body = serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap();
        let shown = error_message(&body);
        assert_eq!(
            shown,
            "The request signature we calculated does not match the signature you provided. \
             (the rest, which repeats the signed request, is not shown)"
        );
        let raw = format!("<Error>{message}</Error>");
        assert!(!error_message(raw.as_bytes()).contains("SECRETTOKEN"));
        let bare = r#"{"message": "X-Amz-Security-Token: SECRETTOKEN is expired"}"#;
        assert_eq!(
            error_message(bare.as_bytes()),
            "(the rest, which repeats the signed request, is not shown)"
        );
        assert_eq!(
            error_message(br#"{"message": "Rate exceeded"}"#),
            "Rate exceeded"
        );
        let incomplete = r#"{"message": "Authorization header requires 'Signature' parameter. Authorization=AWS4-HMAC-SHA256 Credential=AKID/20261206/us-east-1/securityhub/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123abcd"}"#;
        assert_eq!(
            error_message(incomplete.as_bytes()),
            "Authorization header requires 'Signature' parameter. \
             (the rest, which repeats the signed request, is not shown)"
        );
        let bare = r#"{"message": "bad Signature=0123abcd"}"#;
        assert!(!error_message(bare.as_bytes()).contains("0123abcd"));
    }

    /// Security Hub's error message is repeated in the envelope, the record and the log: at
    /// most MAX_ERROR_MESSAGE_CHARS of it.
    #[test]
    fn an_upstream_error_message_is_clipped() {
        let long = "x".repeat(100_000);
        let body = serde_json::to_vec(&serde_json::json!({ "message": long })).unwrap();
        let shown = error_message(&body);
        assert_eq!(shown.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(
            error_message(br#"{"Message": "Rate exceeded"}"#),
            "Rate exceeded"
        );
    }

    #[test]
    fn a_throttle_is_read_as_sdks_read_it_from_the_header_or_else_the_body() {
        let throttle = |status: u16, error_type: Option<&str>, body: Option<&[u8]>| {
            let mut h = HeaderMap::new();
            if let Some(t) = error_type {
                h.insert("x-amzn-errortype", HeaderValue::from_str(t).unwrap());
            }
            is_throttle(http::StatusCode::from_u16(status).unwrap(), &h, body)
        };
        assert!(throttle(503, Some("SlowDown"), None));
        assert!(throttle(
            400,
            Some("BandwidthLimitExceeded:http://internal/"),
            None
        ));
        assert!(throttle(429, None, Some(b"<html>Too Many Requests</html>")));
        let typed = br#"{"__type": "com.amazonaws.securityhub#ThrottlingException"}"#;
        assert!(throttle(400, None, Some(typed)));
        assert!(throttle(
            400,
            None,
            Some(br#"{"code": "RequestLimitExceeded"}"#)
        ));
        // A namespace before a `#` is cut from the header as from the body.
        assert!(throttle(
            400,
            Some("com.amazonaws.securityhub#ThrottlingException"),
            None
        ));
        assert!(throttle(
            400,
            None,
            Some(br#"{"__type": "aws#ThrottlingException:http://internal/#x"}"#)
        ));
        // botocore's rest-json parser: a top-level `code` or `Code` overrides `__type`.
        assert!(throttle(
            400,
            None,
            Some(br#"{"Code": "Throttling", "Message": "Rate exceeded"}"#)
        ));
        assert!(throttle(
            400,
            None,
            Some(br#"{"__type": "InternalFailure", "code": "ThrottlingException"}"#)
        ));
        assert!(!throttle(
            400,
            None,
            Some(br#"{"__type": "ThrottlingException", "Code": "InvalidInputException"}"#)
        ));
        // The header wins over the body, as in botocore; a relayed body is not read.
        assert!(!throttle(400, Some("InvalidInputException"), Some(typed)));
        assert!(!throttle(400, None, None));
        assert!(!throttle(
            503,
            None,
            Some(br#"{"message": "Service Unavailable"}"#)
        ));
        assert!(!throttle(200, Some("ThrottlingException"), Some(typed)));
    }

    #[test]
    fn only_refusals_of_the_credentials_themselves_count_as_such() {
        let answer = |status: u16, error_type: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "x-amzn-errortype",
                HeaderValue::from_str(error_type).unwrap(),
            );
            credentials_refused(http::StatusCode::from_u16(status).unwrap(), &h, None)
        };
        assert_eq!(
            answer(
                403,
                "ExpiredTokenException:http://internal.amazon.com/coral/"
            ),
            Some("ExpiredTokenException".into())
        );
        assert_eq!(
            answer(403, "UnrecognizedClientException"),
            Some("UnrecognizedClientException".into())
        );
        assert_eq!(answer(400, "ExpiredToken"), Some("ExpiredToken".into()));
        assert_eq!(
            answer(403, "com.amazon.coral.service#ExpiredTokenException"),
            Some("ExpiredTokenException".into())
        );
        // Permissions, signatures, throttles and 5xx are not about which credentials signed.
        assert_eq!(answer(403, "AccessDeniedException"), None);
        assert_eq!(answer(403, "InvalidSignatureException"), None);
        assert_eq!(answer(429, "ThrottlingException"), None);
        assert_eq!(answer(500, "ExpiredTokenException"), None);
        assert_eq!(
            credentials_refused(http::StatusCode::FORBIDDEN, &HeaderMap::new(), None),
            None
        );
        // A lookup's body names it when the header is absent (a relayed answer's is unread).
        let typed = br#"{"__type": "com.amazonaws.securityhub#ExpiredTokenException"}"#;
        let body =
            |b: &[u8]| credentials_refused(http::StatusCode::FORBIDDEN, &HeaderMap::new(), Some(b));
        assert_eq!(body(typed), Some("ExpiredTokenException".into()));
        assert_eq!(body(br#"{"__type": "AccessDeniedException"}"#), None);
    }

    #[tokio::test]
    async fn a_fetch_that_panics_does_not_stop_the_next() {
        let (source, provider) = scripted(&[Fetch::Panic]);
        let e = source.get().await.expect_err("the fetch panicked");
        assert!(e.to_string().contains("without an outcome"), "{e}");
        source
            .get()
            .await
            .expect("a new fetch, not the dead one again");
        assert_eq!(calls(&provider), 2);
    }

    #[tokio::test]
    async fn expired_credentials_from_the_source_sign_nothing() {
        let (source, provider) = scripted(&[Fetch::Expired]);
        let e = source.get().await.expect_err("expired credentials");
        assert!(e.to_string().contains("expired 60 s ago"), "{e}");
        // Not kept: the next request fetches again.
        source.get().await.expect("fresh credentials");
        assert_eq!(calls(&provider), 2);
    }

    #[test]
    fn a_resigned_forward_carries_only_allow_listed_headers() {
        let caller = caller_headers(&[
            ("host", "hubgate:8080"),
            ("authorization", "AWS4-HMAC-SHA256 ..."),
            ("x-amz-date", "20261124T000000Z"),
            ("x-amz-security-token", "t"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("user-agent", "aws-cli/2"),
            ("amz-sdk-invocation-id", "i"),
            ("amz-sdk-request", "attempt=1"),
            ("x-amzn-trace-id", "Root=1"),
            ("x-custom-anything", "v"),
            ("expect", "100-continue"),
            ("connection", "keep-alive, X-Amzn-Trace-Id"),
        ]);
        let out = resign_headers(&caller);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        // x-amzn-trace-id is allow-listed, but Connection names it: hop-by-hop.
        assert_eq!(
            names,
            [
                "amz-sdk-invocation-id",
                "amz-sdk-request",
                "content-type",
                "user-agent"
            ]
        );
    }

    #[test]
    fn an_answers_hop_by_hop_headers_are_not_relayed_nor_a_length_beside_a_coding() {
        let mut answer = caller_headers(&[
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("x-amzn-requestid", "r-1"),
            ("connection", "close, X-Hop"),
            ("x-hop", "v"),
            ("keep-alive", "timeout=1"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "h2c"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_hop_by_hop(&mut answer);
        let mut names: Vec<&str> = answer.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            // The length goes with the coding that framed the body instead.
            ["content-type", "x-amzn-requestid"]
        );
        let mut plain = caller_headers(&[("content-length", "12"), ("connection", "close")]);
        strip_hop_by_hop(&mut plain);
        let names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn a_passthrough_forward_drops_hop_by_hop_headers_and_those_connection_names() {
        let caller = caller_headers(&[
            ("host", "securityhub.us-east-1.amazonaws.com"),
            ("authorization", "AWS4-HMAC-SHA256 ..."),
            ("x-amz-date", "20261124T000000Z"),
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("keep-alive", "timeout=5"),
            ("x-signed-by-caller", "v"),
            ("x-dropped", "v"),
            ("connection", "keep-alive"),
            ("connection", " X-Dropped ,"),
        ]);
        let out = passthrough_headers(&caller);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "authorization",
                "content-type",
                "host",
                "x-amz-date",
                "x-signed-by-caller"
            ]
        );
    }
}
