//! The request's path, stage by stage: route, admit (the caller the head names, and its share),
//! read, content type, authenticate, validate, decide (policy, with enrichment), forward,
//! respond, and one audit record for every request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tracing::Instrument;

use crate::admission::{self, Share, Shares};
use crate::audit::{
    group_violations, AuditLog, Partial, ProductFindings, Record, RecordError, RecordMetrics,
    RecordPrincipal, Slot, Verdict,
};
use crate::config::{Config, IdentityMode, PartialDeny, PolicyMode, UpstreamAuth};
use crate::decide::{
    judge, Changed, FindingState, JudgeError, Judgement, LookupError, Replay, StateRead,
};
use crate::enrich::{Enricher, Importer, InFlight, Reach, Sent, Unapplied, WriteId};
use crate::envelope::Rejection;
use crate::finding::{FindingKey, KeyMap};
use crate::identity::{
    AuthError, CallerId, CertCheck, Claim, ClientCert, Credential, Identity, Principal, Role,
};
use crate::metrics::{DecisionLabel, KindLabels, Metrics, OperationLabels, RequestLabels};
use crate::payload::Payload;
use crate::policy::input::{RequestFacts, Update};
use crate::policy::{Decision, PolicySet, Violation};
use crate::quota::Payer;
use crate::request::Judged;
use crate::routes::Routing;
use crate::routes::{self, OperationSpec};
use crate::upstream::{Upstream, UpstreamError};
use crate::validate;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Request headers a policy may read; credentials are never among them.
const INPUT_HEADERS: [&str; 6] = [
    "content-type",
    "host",
    "user-agent",
    "x-amz-date",
    "x-amzn-trace-id",
    "amz-sdk-invocation-id",
];

/// Everything a request needs, shared by all connections.
pub struct Stages {
    pub config: Config,
    pub identity: ArcSwap<Identity>,
    pub policy: ArcSwap<PolicySet>,
    pub upstream: Arc<Upstream>,
    /// Paces every upstream call to the account's Security Hub quotas.
    pub pacer: Arc<crate::quota::Pacer>,
    pub enricher: Option<Enricher>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// server.max_in_flight permits; a request takes one once its head names a caller (`admit`)
    /// and holds it until it is answered, a forwarded one until Security Hub's response body
    /// has been sent on.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Each caller's share of server.max_in_flight (server.max_in_flight_per_caller).
    pub shares: Arc<Shares>,
    /// server.max_in_flight_body_bytes permits, one per body byte a request in flight may hold
    /// (`admit`), taken and given back with its in-flight slot.
    pub body_bytes: Arc<tokio::sync::Semaphore>,
    /// Set once a stop's grace period has run out (see `Halt`).
    pub halt: Halt,
}

/// Set when a stop's grace period has run out, before the audit log closes: each request still
/// in hubgate ends at once and is recorded, not cut off with the runtime. A request that has
/// not been sent is refused (`Rejection::Stopping`); one whose call to Security Hub is in
/// flight ends with `UpstreamError::Interrupted`, its outcome unknown and its findings
/// evicted. Left to the runtime's end, a forward in flight at that moment had no record at
/// all, though Security Hub may have applied it.
#[derive(Default)]
pub struct Halt {
    halted: tokio::sync::watch::Sender<bool>,
    /// Requests between their arrival and their record (`Unrecorded`).
    unrecorded: std::sync::atomic::AtomicUsize,
    all_recorded: tokio::sync::Notify,
}

/// Held by `handle` until the request's record has been written (or given up on).
struct Unrecorded<'a>(&'a Halt);

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        if self.0.unrecorded.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_recorded.notify_waiters();
        }
    }
}

impl Halt {
    pub fn halt(&self) {
        self.halted.send_replace(true);
    }

    /// Requests not yet recorded.
    pub fn unrecorded(&self) -> usize {
        self.unrecorded.load(Ordering::Acquire)
    }

    /// Resolves once no request is left unrecorded.
    pub async fn all_recorded(&self) {
        loop {
            let notified = self.all_recorded.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read, so a last record in between still wakes it.
            notified.as_mut().enable();
            if self.unrecorded() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn arrived(&self) -> Unrecorded<'_> {
        self.unrecorded.fetch_add(1, Ordering::AcqRel);
        Unrecorded(self)
    }

    /// Resolves once `halt` has been called.
    async fn halted(&self) {
        let mut halted = self.halted.subscribe();
        // The sender lives in `Stages`, as long as any request: an error cannot happen.
        let _ = halted.wait_for(|h| *h).await;
    }
}

/// What the audit record says about one request, filled in as it moves along the path.
#[derive(Default)]
struct Trail {
    operation: Option<&'static str>,
    principal: Option<Arc<Principal>>,
    findings: Vec<ProductFindings>,
    update: Option<Value>,
    decision: Option<Decision>,
    dry_run: bool,
    forwarded: bool,
    upstream_status: Option<u16>,
    upstream_request_id: Option<String>,
    revision: Option<String>,
    policy_ns: u64,
    enrich_ns: u64,
    upstream_ns: u64,
    lookups: usize,
    cache_hits: usize,
    misses: usize,
    /// Per-finding enforcement as decided: (findings to forward, findings denied). Read
    /// through `partial`, which says it only for a cut request that went out: a cut refused
    /// before it was sent (hubgate's own quota, the audit sink, the caller gone or changed)
    /// was recorded as `partial: {forwarded: 1, ...}` beside `forwarded: false`, one finding
    /// said sent that never left.
    cut: Option<(usize, usize)>,
    /// A throttle (Security Hub's, or hubgate's own pacing running out of time) decided the
    /// answer.
    throttled: bool,
    /// The forward failed in a way that leaves its outcome unknown (a timeout, a connection
    /// lost, an unreadable answer): Security Hub may have applied it.
    outcome_unknown: bool,
    /// Set just before the request goes to Security Hub. Read by `handle` when the stop halts
    /// requests: one not yet sent is dropped there, one sent finishes, with its answer or as
    /// interrupted (`Halt`).
    sending: Arc<std::sync::atomic::AtomicBool>,
    /// The last input document evaluated, for the audit record.
    input: Option<regorus::Value>,
    /// The deciding state's findings with hubgate's own recent writes laid over them.
    settling: Vec<FindingKey>,
    /// The findings of another account (or of none) a member's input held as not found.
    withheld: Vec<FindingKey>,
    /// Quota taken for a forward that a voided decision did not send, and how long it was
    /// waited for. Deciding again on the writes laid over (no lookup) takes no time, so that
    /// decision is sent with it: waiting again would waste the quota taken, and give writes
    /// landing meanwhile another chance to void it.
    quota_held: Option<(&'static str, Duration)>,
    /// The callers file that authenticated the caller, and what proved it: asked again before
    /// a forward that waited for quota, when the callers file has been reloaded since.
    proof: Option<(Arc<Identity>, Credential)>,
    /// Checks the connection's client certificate again, after a quota wait.
    cert_check: Option<CertCheck>,
    /// Tells when the client has gone, so that a request waiting for quota stops waiting.
    departure: Departure,
    /// The record's place in the audit queue, reserved before the request may be forwarded
    /// (`send`). Its record goes there whatever happens next: a forward that times out, or
    /// is interrupted by a stop's halt, is recorded in the place it was sent with. It used to
    /// be dropped on those paths and a new place asked for, which a full queue, or the log
    /// closed by a stop, refused: the record of a call Security Hub may have applied then
    /// reached stderr only (logged as "a rejected request"), and the stop exited 0.
    slot: Option<Slot>,
}

impl Trail {
    /// What the judge found and spent, whatever it decided. A request decided again (its
    /// findings changed while it waited for quota) is recorded with its last decision and
    /// what every decision spent.
    fn judged(&mut self, judgement: &mut Judgement) {
        self.findings = findings_by_product(&judgement.keys, &judgement.claimed_accounts);
        self.settling = std::mem::take(&mut judgement.overlaid);
        self.withheld = std::mem::take(&mut judgement.withheld);
        // The record is its last reader: the decision was made on the policy input's copy.
        self.update = Some(std::mem::take(&mut judgement.update_json));
        self.policy_ns += judgement.policy_ns;
        self.enrich_ns += judgement.enrich_ns;
        self.lookups += judgement.stats.calls;
        self.cache_hits += judgement.stats.cache_hits;
        self.misses += judgement.stats.misses;
        self.throttled |= judgement.stats.throttled;
    }

    /// The record's `partial`: the cut request's counts once it was sent, answered or left
    /// unanswered (outcome unknown); None for one that never left.
    fn partial(&self) -> Option<(usize, usize)> {
        self.cut.filter(|_| self.forwarded || self.outcome_unknown)
    }

    /// The answer's head came but not the rest of it (cut short, or too slow): Security Hub
    /// may have applied the write, and nobody can tell what it answered. Recorded as an answer
    /// that never came is (README: `forwarded`, `outcome_unknown`): left as forwarded with the
    /// head's 200, the record of a write that may have landed read as one Security Hub had
    /// answered, and its OCSF event as Allowed, not Unknown.
    fn answer_lost(&mut self) {
        self.forwarded = false;
        self.outcome_unknown = true;
    }

    /// Records what the upstream call did, for the audit record and metrics.
    fn upstream_answered(
        &mut self,
        response: Result<Response<ProxyBody>, crate::upstream::UpstreamError>,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Rejection> {
        self.upstream_ns = started.elapsed().as_nanos() as u64;
        let response = response.inspect_err(|e| {
            self.outcome_unknown = e.outcome_unknown();
            // Answered, but not with what the caller gets (a refusal of hubgate's credentials).
            if let Some((status, request_id)) = e.answer() {
                self.forwarded = true;
                self.upstream_status = Some(status);
                self.upstream_request_id = request_id.map(str::to_string);
            }
        })?;
        self.forwarded = true;
        self.upstream_status = Some(response.status().as_u16());
        self.upstream_request_id = response
            .headers()
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(response)
    }
}

/// Whether the client of a request is still there. The request runs in its own task, so
/// that what it already sent upstream is recorded whatever the client does; this tells that
/// task when hyper dropped the connection's side of the request (the client closed the
/// connection, or reset its h2 stream). A request that was still waiting for quota then sends
/// nothing: forwarded anyway, the write of a client that gave up (an SDK's read timeout, a
/// Lambda's) was applied up to `quota.max_wait_ms` later, beside the retry it had sent, each
/// spending the account's quota; and the request held its caller's place in line meanwhile.
#[derive(Clone, Default)]
pub struct Departure(Option<tokio::sync::watch::Receiver<()>>);

/// Held by the connection's side of a request; dropping it tells `Departure` the client left.
pub struct Presence(#[allow(dead_code)] tokio::sync::watch::Sender<()>);

/// A request's `Presence` (for the connection) and `Departure` (for the request's task).
pub fn presence() -> (Presence, Departure) {
    let (present, watched) = tokio::sync::watch::channel(());
    (Presence(present), Departure(Some(watched)))
}

impl Departure {
    /// Resolves once the client has gone; never, for a request no connection watches.
    async fn gone(&self) {
        match &self.0 {
            Some(watched) => {
                let mut watched = watched.clone();
                // Nothing is ever sent: `changed` ends only when the sender is dropped.
                while watched.changed().await.is_ok() {}
            }
            None => std::future::pending().await,
        }
    }

    fn has_gone(&self) -> bool {
        self.0.as_ref().is_some_and(|w| w.has_changed().is_err())
    }
}

/// What is known of a request before any stage reads it.
struct Received {
    started: Instant,
    decision_id: String,
    method: String,
    path: String,
    remote: SocketAddr,
}

/// A forwarded request's answer (streamed from upstream, or rebuilt with denied findings merged
/// in); its record's place is in the trail.
struct Forwarded(Response<ProxyBody>);

/// An upstream BatchUpdateFindings answer is read whole to merge denied findings into it;
/// this bounds it (100 findings' results are a few KB).
const MAX_MERGED_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

pub async fn handle(
    gate: Arc<Stages>,
    req: Request<Incoming>,
    remote: SocketAddr,
    client_cert: Option<Arc<ClientCert>>,
    cert_check: Option<CertCheck>,
    departure: Departure,
) -> Response<ProxyBody> {
    let _unrecorded = gate.halt.arrived();
    let received = Received {
        started: Instant::now(),
        decision_id: uuid::Uuid::new_v4().to_string(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        remote,
    };
    let span = tracing::info_span!("request", decision_id = %received.decision_id);
    let mut ctx = Ctx {
        gate: &gate,
        received: &received,
        client_cert: client_cert.as_deref(),
        trail: Trail {
            cert_check,
            departure,
            ..Trail::default()
        },
        admitted: None,
    };
    // Boxed where it is made: the request's future is large, and each move of it into a
    // wrapper's state copies the whole. Unboxed, catch_unwind's wrappers cost a 100-finding
    // denial 6% more instructions (about 110 KB more memcpy); boxed, within 0.5%.
    let sending = ctx.trail.sending.clone();
    let result = {
        let run = Box::pin(run(&mut ctx, req).instrument(span));
        let mut run = std::pin::pin!(unwound(run, &received.decision_id));
        tokio::select! {
            biased;
            result = &mut run => result,
            () = gate.halt.halted() => match sending.load(Ordering::Acquire) {
                // Its own stages see the halt too, and end with the call's outcome unknown.
                true => run.await,
                false => Err(Rejection::Stopping),
            },
        }
    };
    let (trail, admitted) = (ctx.trail, ctx.admitted);
    // A forwarded answer's body streams from Security Hub: the request is in flight, holding
    // an upstream connection, until that body has been sent. hubgate's own envelope is whole
    // in memory once made, and its request is done then: a client that never reads it (an
    // HTTP/2 window of 0) must not keep the slot until the connection's send timeout, or
    // every client without keys could keep every slot busy by reconnecting.
    let streams = result.is_ok();
    let response = respond(&gate, &received, trail, result).await;
    match admitted {
        Some(admitted) if streams => response.map(|body| Held::new(body, admitted).boxed()),
        Some(_) | None => response,
    }
}

/// A request head the HTTP layer refused (`framing::HeadRefused`): recorded like any request
/// refused before routing, and answered with the envelope, as the raw HTTP/1.1 response that
/// takes the place of hyper's own (`server::conn`), which closes the connection. `date` is
/// the Date hyper gave its answer.
pub async fn refuse_head(
    gate: Arc<Stages>,
    remote: SocketAddr,
    refused: crate::framing::HeadRefused,
    date: Bytes,
) -> Bytes {
    let received = Received {
        started: Instant::now(),
        decision_id: uuid::Uuid::new_v4().to_string(),
        method: refused.method.clone(),
        path: refused.path.clone(),
        remote,
    };
    let response = respond(
        &gate,
        &received,
        Trail::default(),
        Err(Rejection::HeadRefused(refused)),
    )
    .await;
    let (parts, body) = response.into_parts();
    // An envelope is whole in memory: collecting it cannot fail or wait.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut raw = Vec::with_capacity(256 + body.len());
    raw.extend_from_slice(b"HTTP/1.1 ");
    raw.extend_from_slice(parts.status.as_str().as_bytes());
    raw.push(b' ');
    raw.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Bad Request")
            .as_bytes(),
    );
    raw.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"connection: close\r\ncontent-length: ");
    raw.extend_from_slice(body.len().to_string().as_bytes());
    raw.extend_from_slice(b"\r\ndate: ");
    raw.extend_from_slice(&date);
    raw.extend_from_slice(b"\r\n\r\n");
    raw.extend_from_slice(&body);
    Bytes::from(raw)
}

/// A request whose handling panicked is answered and recorded like any other failure: the
/// record is written from what the trail holds (`forwarded` included, had the request gone out
/// before the panic). Left to the task, the panic would reach the server as a failed task,
/// answered with no audit record, and a slot reserved for a forwarded request would be dropped
/// unwritten. The request's state is not used again after a panic, only its trail's fields.
async fn unwound<F>(run: F, decision_id: &str) -> Result<Forwarded, Rejection>
where
    F: std::future::Future<Output = Result<Forwarded, Rejection>>,
{
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            // The panic hook has printed its message to stderr already. The envelope and the
            // record say only that the handler failed: a panic's text is not vetted for what
            // it may quote.
            drop(panic);
            tracing::error!(decision_id, "the request handler panicked");
            Err(Rejection::Internal(
                "the request handler failed; the request's record says how far it got".into(),
            ))
        }
    }
}

/// The response to send, its status, and the envelope's code and message when hubgate answered
/// itself.
fn answer(
    result: Result<Forwarded, Rejection>,
    decision_id: &str,
) -> (Response<ProxyBody>, u16, Option<RecordError>) {
    match result {
        Ok(Forwarded(resp)) => {
            let status = resp.status().as_u16();
            let (mut parts, body) = resp.into_parts();
            crate::upstream::strip_hop_by_hop(&mut parts.headers);
            if let Ok(v) = HeaderValue::from_str(decision_id) {
                parts.headers.insert("x-hubgate-decision-id", v);
            }
            (Response::from_parts(parts, body), status, None)
        }
        Err(rejection) => {
            let mut resp = rejection.to_response(decision_id);
            if let Rejection::ClientAborted(_) | Rejection::ClientLeft = rejection {
                resp.extensions_mut().insert(ClientGone);
            }
            let status = resp.status().as_u16();
            let error = RecordError {
                code: rejection.code().into(),
                message: rejection.to_string(),
            };
            if let Rejection::Upstream(_) | Rejection::Policy(_) | Rejection::AuditUnavailable(_) =
                rejection
            {
                tracing::warn!(decision_id, code = rejection.code(), error = %rejection, "request failed");
            }
            (
                resp.map(|b| b.map_err(|never| match never {}).boxed()),
                status,
                Some(error),
            )
        }
    }
}

/// Respond: the forwarded answer (with the decision id) or the envelope, and the decision
/// record, written to the place reserved before forwarding (`Trail::slot`) or, for a request
/// that never reserved one, to a new one.
async fn respond(
    gate: &Stages,
    received: &Received,
    mut trail: Trail,
    result: Result<Forwarded, Rejection>,
) -> Response<ProxyBody> {
    let Received {
        started,
        ref decision_id,
        ref method,
        ref path,
        ..
    } = *received;
    if let Err(Rejection::Quota(e)) = &result {
        gate.metrics
            .quota_exhausted
            .get_or_create(&OperationLabels {
                operation: e.operation.to_string(),
            })
            .inc();
    }
    let (response, status, error) = answer(result, decision_id);
    let slot = trail.slot.take();

    observe(&gate.metrics, &trail, status, error.is_some(), started);
    let audited = record(gate, trail, received, status, error);
    let written = match slot {
        Some(slot) => slot.write(audited),
        None => match gate.audit.reserve().await {
            Ok(slot) => slot.write(audited),
            // The request was not forwarded, so nothing happened that lacks a record; say so
            // loudly, with the record.
            Err(e) => {
                let record = gate.audit.unqueued(audited);
                tracing::error!(decision_id, error = %e, record = %record, "audit record of a rejected request was not written");
                return response;
            }
        },
    };
    // The answer waits for its record: a caller that was answered never lacks one, even if
    // hubgate is killed (OOM, SIGKILL) the next moment. Past the wait the answer goes out
    // anyway, since a forwarded change has happened whatever the log does; the record is still
    // queued.
    if let Err(e) = gate.audit.written(written).await {
        gate.metrics.audit.unconfirmed.inc();
        tracing::warn!(decision_id, error = %e, "answered before the audit record was written");
    }
    tracing::debug!(decision_id, method, path, status, "request");
    response
}

/// A response body that keeps `guard` alive until hyper is done with the body (sent whole, or
/// the connection ended).
pub struct Held<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> Held<B, G> {
    pub fn new(body: B, guard: G) -> Self {
        Held {
            body,
            _guard: guard,
        }
    }
}

impl<B: hyper::body::Body + Unpin, G: Unpin> hyper::body::Body for Held<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// What the phases of one request share (Pingora's `CTX`): the stages, what was known on
/// arrival, and the trail the audit record is built from.
struct Ctx<'a> {
    gate: &'a Stages,
    received: &'a Received,
    client_cert: Option<&'a ClientCert>,
    trail: Trail,
    /// The request's in-flight slot and its place in its caller's share, once admitted.
    admitted: Option<Admitted>,
}

/// What an admitted request holds while it is in flight: a slot of server.max_in_flight, a
/// place in its caller's share of them (none in static mode), and its body's bytes of
/// server.max_in_flight_body_bytes.
type Admitted = (
    tokio::sync::OwnedSemaphorePermit,
    Option<Share>,
    tokio::sync::OwnedSemaphorePermit,
);

/// The request's path, one phase per stage of DESIGN.md. Each phase returns what the next
/// needs; what the record needs goes into `ctx.trail`.
async fn run(ctx: &mut Ctx<'_>, req: Request<Incoming>) -> Result<Forwarded, Rejection> {
    let (spec, routing) = route(ctx, &req)?;
    let (parts, body) = req.into_parts();
    let body_bytes = declared_length(ctx, &parts, hyper::body::Body::size_hint(&body).exact())?;
    let identity = ctx.gate.identity.load_full();
    let claim = admit(ctx, &identity, &parts, body_bytes)?;
    let (key_id, verifies) = (claim.key_id(), claim.verifies());
    let body = Payload::new(read(ctx, &parts, body, routing).await?);
    let principal = authenticate(ctx, &identity, claim, &parts, &body)?;
    if verifies {
        proven(ctx, &principal, key_id, body.bytes().len())?;
    }
    // From here on the request may wait for quota, up to quota.max_wait_ms.
    let deadline = ctx.gate.pacer.deadline_from(Instant::now());
    if routing == Routing::Forward {
        let listed = ctx.gate.config.policy.member_may_call(spec.name);
        let own_signature = ctx.gate.config.upstream.auth == UpstreamAuth::Passthrough;
        if crate::reads::confine(spec, &principal, body.bytes(), listed, own_signature)? {
            crate::reads::confined_head(&parts)?;
        }
        // A finding-changing operation routed "forward" changes findings hubgate cannot name.
        let touched = Touched(spec.changes_findings.then_some(Sent::Everything {
            operation: spec.name,
            accounts: None,
            reach: Reach::State,
        }));
        return forward(
            ctx.gate,
            &parts,
            body,
            &mut ctx.trail,
            deadline,
            touched,
            None,
        )
        .await;
    }
    let operation = validate(spec, &parts)?;
    let (mut decisions, mut reads) = (0, 0);
    let mut replay: Option<Box<Replay>> = None;
    loop {
        let (bytes, gate) = (body.bytes(), ctx.gate);
        let decided = match replay.take() {
            None => {
                reads += 1;
                let state = gate.enricher.as_ref();
                decide(ctx, operation, &parts, bytes, &principal, deadline, state).await?
            }
            // The writes since were laid over what was read: decided again with no lookup.
            Some(r) => {
                decide(
                    ctx,
                    operation,
                    &parts,
                    bytes,
                    &principal,
                    deadline,
                    Some(&*r),
                )
                .await?
            }
        };
        decisions += 1;
        let enforced = enforce(ctx, &parts, body.clone(), decided, &principal, deadline).await;
        if let Err(Rejection::StateChanged { .. }) = enforced {
            // A voided decision sent nothing: its partial forward must not be recorded with
            // the decision made again (which may refuse, or forward everything), nor with
            // the refusal after the last one.
            ctx.trail.cut = None;
        }
        match enforced {
            Err(Rejection::StateChanged { replay: next, .. })
                if decisions < MAX_DECISIONS && (next.is_some() || reads < MAX_READS) =>
            {
                tracing::info!(
                    decisions,
                    replayed = next.is_some(),
                    "the request's findings changed while it waited for quota; deciding again"
                );
                voided(ctx.gate, if next.is_some() { "replayed" } else { "reread" });
                replay = next;
            }
            Err(Rejection::StateChanged { .. }) => {
                voided(ctx.gate, "refused");
                return Err(Rejection::StateChanged {
                    decisions,
                    replay: None,
                });
            }
            done => return done,
        }
    }
}

/// How many times a request is decided on a new read when the findings it read keep changing
/// under it before it is forwarded; then it is refused as retryable. A read may cost lookups,
/// and so quota.
const MAX_READS: usize = 3;

/// How many times a request is decided in all. A decision made again on what was read, with
/// the writes since laid over it, costs a policy evaluation and no lookup, and each is voided
/// only by another write sent to the request's findings meanwhile: with the limit at three in
/// all, 16 members' notes on one finding sent at once left one or two refused 503
/// STATE_CHANGED about one run in two, each voided by the others' notes (review 54).
const MAX_DECISIONS: usize = 16;

fn voided(gate: &Stages, then: &str) {
    gate.metrics
        .decisions_voided
        .get_or_create(&KindLabels {
            kind: then.to_string(),
        })
        .inc();
}

/// Route: framing checks of the head, then the operation and its routing.
fn route(
    ctx: &mut Ctx<'_>,
    req: &Request<Incoming>,
) -> Result<(&'static OperationSpec, Routing), Rejection> {
    // An ambiguous head is refused before anything reads it.
    crate::framing::check(req)?;
    let spec: &'static OperationSpec = routes::route(req.method(), req.uri().path())?;
    ctx.trail.operation = Some(spec.name);
    let routing = ctx.gate.config.routing(spec);
    if routing == Routing::Deny {
        return Err(Rejection::OperationNotAllowed {
            operation: spec.name,
        });
    }
    Ok((spec, routing))
}

/// The most body bytes the request can bring: its Content-Length, else the length its framing
/// gives (none for a GET), else max_body_bytes (a body without one is cut off there). A body
/// declared larger than max_body_bytes is refused (413) before anything else is read of it.
fn declared_length(
    ctx: &Ctx<'_>,
    parts: &http::request::Parts,
    exact: Option<u64>,
) -> Result<u64, Rejection> {
    let limit = ctx.gate.config.server.max_body_bytes;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        // No Content-Length: hyper knows a body's exact length when the framing gives it (an
        // HTTP/1 request with neither Content-Length nor chunked coding, an HTTP/2 head that
        // ends its stream has none). Counted as max_body_bytes, one caller's 17 concurrent
        // bodiless reads took its whole byte share (review 54).
        .or(exact);
    match declared {
        Some(n) if n > limit => Err(Rejection::PayloadTooLarge { limit }),
        Some(n) => Ok(n),
        None => Ok(limit),
    }
}

/// Admit: the caller the head names (everything of authentication but a signature over the
/// body), then a slot of server.max_in_flight and a place in that caller's share of them, all
/// before the body is read. A request that names no caller is refused at once and holds
/// nothing, so a client without keys cannot hold in-flight slots by sending its bodies slowly,
/// and gets its 401 (which SDKs do not retry) even while hubgate is full. Past the cap or the
/// share, a retryable 503, nothing forwarded, recorded like any other. What is taken is kept
/// in `ctx` for as long as the request is in flight. So are `body_bytes` of
/// server.max_in_flight_body_bytes: what a request holds while it waits grows with its body
/// (about 1.8 MB for a 366 KB update), so 256 requests of the largest bodies held about 510 MB,
/// past the 512Mi limit of deploy/kubernetes; the slots alone did not bound memory.
fn admit<'a>(
    ctx: &mut Ctx<'_>,
    identity: &'a Identity,
    parts: &'a http::request::Parts,
    body_bytes: u64,
) -> Result<Claim<'a>, Rejection> {
    let claim = identity.claim(parts, SystemTime::now(), ctx.client_cert)?;
    let slot = ctx
        .gate
        .in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| Rejection::Overloaded {
            setting: "server.max_in_flight",
            limit: ctx.gate.config.server.max_in_flight,
        })?;
    // In static mode every request is the one configured caller: a share would only be a
    // smaller max_in_flight. A caller the head only names (by key id) takes the share of its
    // claims from the peer's address (an IPv6 peer's /64) until it is proven (`proven`).
    let share = match ctx.gate.config.identity.mode {
        IdentityMode::Static => None,
        _ => {
            let from = (!claim.proven()).then(|| admission::claim_source(ctx.received.remote.ip()));
            Some(
                ctx.gate
                    .shares
                    .take(claim.claimed(), from, body_bytes, || claim.shown())?,
            )
        }
    };
    // At most max_body_bytes (declared_length), which the configuration keeps within the cap.
    let bytes = ctx
        .gate
        .body_bytes
        .clone()
        .try_acquire_many_owned(u32::try_from(body_bytes).unwrap_or(u32::MAX))
        .map_err(|_| Rejection::Overloaded {
            setting: "server.max_in_flight_body_bytes",
            limit: ctx.gate.config.server.max_in_flight_body_bytes as usize,
        })?;
    ctx.admitted = Some((slot, share, bytes));
    Ok(claim)
}

/// The caller's signature is proven: a request that held the share of its claims from its
/// peer's address moves to its caller's share, with the body bytes it has. Past that share, a
/// retryable 503 as at admission; nothing is forwarded. Not in passthrough, where AWS checks
/// the signature after the forward: there a request keeps its claim's place for as long as it
/// is in flight. Moved on the key id alone, a keyless client's requests naming the
/// administrator's key id, forwarded and then never reading their answers (an h2 window of
/// 0), held the administrator's own share until response_send_timeout_ms (review 54).
fn proven(
    ctx: &mut Ctx<'_>,
    principal: &Arc<Principal>,
    key_id: Option<&str>,
    body_bytes: usize,
) -> Result<(), Rejection> {
    let Some((_, share, _)) = &mut ctx.admitted else {
        return Ok(());
    };
    if share.as_ref().is_none_or(Share::proven) {
        return Ok(());
    }
    let caller = ctx
        .gate
        .shares
        .take(principal, None, body_bytes as u64, || {
            crate::identity::shown_caller(key_id, principal)
        })?;
    *share = Some(caller);
    Ok(())
}

/// Read: the whole body, up to server.max_body_bytes and within server.body_read_timeout_ms,
/// and the content type of a body hubgate will read.
async fn read(
    ctx: &Ctx<'_>,
    parts: &http::request::Parts,
    body: Incoming,
    routing: Routing,
) -> Result<Bytes, Rejection> {
    let server = &ctx.gate.config.server;
    let limit = server.max_body_bytes;
    // The whole body must arrive in time: a client cannot hold a request (and its in-flight
    // permit) open by sending slowly.
    let body_ms = server.body_read_timeout_ms;
    let collected = tokio::time::timeout(
        std::time::Duration::from_millis(body_ms),
        Limited::new(body, limit as usize).collect(),
    )
    .await
    .map_err(|_| Rejection::RequestTimeout { ms: body_ms })?;
    let body = match collected {
        // Trailers would be dropped on the way up (the forward sends the body whole, with a
        // Content-Length), and a trailer field may claim to change what the head said: refused.
        Ok(collected) if collected.trailers().is_some_and(|t| !t.is_empty()) => {
            return Err(crate::framing::FramingError::Trailers.into())
        }
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Rejection::PayloadTooLarge { limit })
        }
        Err(e) if client_went_away(&*e) => return Err(Rejection::ClientAborted(e)),
        Err(e) => return Err(Rejection::BodyRead(e)),
    };
    if routing == Routing::Policy {
        validate::check_content_type(parts.headers.get(http::header::CONTENT_TYPE))
            .map_err(Rejection::UnsupportedMediaType)?;
    }
    Ok(body)
}

/// The body ended before its declared length because the connection closed: the client left.
fn client_went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(connection_lost)
        {
            return true;
        }
        // Over h2 a client leaves by resetting its stream (CANCEL, as SDKs do on a timeout) or
        // closing the connection (GOAWAY, or the socket). h2's error hides its IO error from
        // `source`, so it is asked for directly; a reset h2 made itself (a body longer than its
        // content-length, say) is not the client leaving.
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.is_remote() || h2.get_io().is_some_and(connection_lost) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

fn connection_lost(io: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        io.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Set on the response to a request whose client went away: the server closes the
/// connection instead of sending it, so no envelope goes out (the record is written).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client went away before its request was read")]
pub struct ClientGone;

/// Authenticate: the claimed caller, proven by its signature over the exact body (sigv4
/// mode) or already by the head (mtls, static), against the callers file as it is once the
/// body has come.
fn authenticate(
    ctx: &mut Ctx<'_>,
    claimed_from: &Arc<Identity>,
    claim: Claim<'_>,
    parts: &http::request::Parts,
    body: &Payload,
) -> Result<Arc<Principal>, Rejection> {
    let current = ctx.gate.identity.load();
    // The callers file was reloaded while the body was read (up to body_read_timeout_ms).
    // Proven by the callers it was claimed from, a key revoked meanwhile would still get its
    // request forwarded, and a caller demoted meanwhile would be judged in its old role: the
    // request is authenticated again, whole, by the callers as they are now.
    let claim = if Arc::ptr_eq(&current, claimed_from) {
        claim
    } else {
        drop(claim);
        current.claim(parts, SystemTime::now(), ctx.client_cert)?
    };
    let credential = claim.credential().clone();
    let principal = claim.verify(parts, body)?;
    ctx.trail.principal = Some(principal.clone());
    ctx.trail.proof = Some((current.clone(), credential));
    Ok(principal)
}

fn validate(spec: &OperationSpec, parts: &http::request::Parts) -> Result<Judged, Rejection> {
    if parts.uri.query().is_some() {
        // The operation has no query members; hubgate does not forward what it did not check.
        return Err(validate::ValidationErrors::whole(
            spec.name,
            format!("{} takes no query string", spec.name),
        )
        .into());
    }
    // Config validation refuses "policy" routing for an operation hubgate cannot judge.
    Judged::from_name(spec.name).ok_or(Rejection::OperationNotAllowed {
        operation: spec.name,
    })
}

/// What the decision phase hands to enforcement.
struct Decided {
    operation: Judged,
    keys: Vec<FindingKey>,
    body_without_ids: Value,
    identifiers: Option<Value>,
    update: Update,
    /// Set when the policy denies and this is not a dry run.
    refusal: Option<Refusal>,
    /// When the finding state the decision read was read (None: it read none).
    reads: Option<StateRead>,
    /// The account each of `keys` belongs to by the request's own say (V2, imports).
    claimed_accounts: Vec<Option<String>>,
}

struct Refusal {
    /// The findings denied one by one; None if any violation is about the whole request.
    denied: Option<KeyMap<Vec<String>>>,
    /// The answer when nothing is forwarded.
    rejection: Rejection,
}

/// Decide: `judge` parses, validates and normalises the body, looks up the findings' state in
/// `state` when the policy needs it, and runs the policy passes.
async fn decide<S: FindingState>(
    ctx: &mut Ctx<'_>,
    operation: Judged,
    parts: &http::request::Parts,
    body: &Bytes,
    principal: &Principal,
    deadline: Instant,
    state: Option<&S>,
) -> Result<Decided, Rejection> {
    let gate = ctx.gate;
    let trail = &mut ctx.trail;
    let policy = gate.policy.load_full();
    trail.revision = Some(policy.revision.clone());
    let facts = RequestFacts {
        operation: operation.name(),
        principal,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        headers: input_headers(parts),
        source_ip: ctx.received.remote.ip().to_string(),
        request_id: &ctx.received.decision_id,
        time: now_rfc3339(),
    };
    let dry_run = gate.config.policy.mode == PolicyMode::DryRun;
    trail.dry_run = dry_run;
    // A client gone while its decision waits for lookups stops waiting: its findings still
    // queued are then not looked up for it (`has_live_work` drops them), and the quota they
    // would have spent is left for the callers still there.
    let judged = judge(&policy, operation, body, &facts, state, dry_run, deadline);
    let mut judgement = tokio::select! {
        biased;
        judged = judged => judged?,
        () = trail.departure.gone() => return Err(Rejection::ClientLeft),
    };
    trail.judged(&mut judgement);
    if let Some(failed) = judgement.failed.take() {
        if let LookupError::Quota(_) = failed {
            trail.throttled = true;
        }
        return Err(JudgeError::from(failed).into());
    }
    conclude(trail, operation, judgement, dry_run)
}

/// The last policy pass's decision, and the refusal when it denies.
fn conclude(
    trail: &mut Trail,
    operation: Judged,
    judgement: Judgement,
    dry_run: bool,
) -> Result<Decided, Rejection> {
    let Judgement {
        keys,
        body: body_without_ids,
        identifiers,
        passes,
        update,
        reads,
        claimed_accounts,
        ..
    } = judgement;
    let Some(last) = passes.into_iter().next_back() else {
        return Err(Rejection::Policy(crate::policy::PolicyError::Eval(
            "no policy pass ran".into(),
        )));
    };
    trail.input = Some(last.input);
    let decision = last.decision;
    let refusal = (!decision.allowed() && !dry_run).then(|| Refusal {
        denied: crate::decide::denied_one_by_one(last.enrichment, &decision, &keys),
        rejection: Rejection::PolicyDenied {
            message: decision.message(),
            violations: decision.deny.iter().map(|v| v.to_json()).collect(),
        },
    });
    trail.decision = Some(decision);
    Ok(Decided {
        operation,
        keys,
        body_without_ids,
        identifiers,
        update,
        refusal,
        reads,
        claimed_accounts,
    })
}

/// Enforce the decision: forward the request as it came, forward only the allowed findings,
/// or refuse.
async fn enforce(
    ctx: &mut Ctx<'_>,
    parts: &http::request::Parts,
    body: Payload,
    decided: Decided,
    principal: &Principal,
    deadline: Instant,
) -> Result<Forwarded, Rejection> {
    let Decided {
        operation,
        keys,
        body_without_ids,
        identifiers,
        update,
        refusal,
        reads,
        claimed_accounts,
    } = decided;
    // The accounts a V2 request's identifiers name: it can change findings of those only.
    // None when any finding is named without one (MetadataUids), or with one that is not an
    // account id as AWS writes one: Security Hub may read `"222222222222 "` as the account,
    // and a write hubgate scoped to that text would leave the account's cached state stale.
    let v2_accounts: Option<Vec<String>> = (operation == Judged::BatchUpdateFindingsV2
        && !claimed_accounts.is_empty())
    .then(|| {
        let mut accounts: Vec<String> = Vec::new();
        for a in &claimed_accounts {
            let a = a.as_ref().filter(|a| crate::finding::is_account_id(a))?;
            if !accounts.contains(a) {
                accounts.push(a.clone());
            }
        }
        Some(accounts)
    })
    .flatten();
    // Only BatchUpdateFindings names findings by (Id, ProductArn) in a list hubgate can cut;
    // every other operation is refused whole.
    let partial = ctx.gate.config.policy.on_partial_deny == PartialDeny::ForwardAllowed
        && operation == Judged::BatchUpdateFindings;
    let touched = Touched(Some(match operation {
        Judged::BatchUpdateFindings => Sent::Findings {
            keys: &keys,
            write: Unapplied::Update(&update),
        },
        Judged::BatchImportFindings => Sent::Findings {
            keys: &keys,
            write: Unapplied::Import(
                operation.name(),
                &claimed_accounts,
                match principal.role {
                    Role::Member => Importer::Member(&principal.account_id),
                    Role::Administrator => Importer::Administrator,
                },
            ),
        },
        // OCSF identifiers and filters do not name cache entries.
        Judged::BatchUpdateFindingsV2 => Sent::Everything {
            operation: operation.name(),
            accounts: v2_accounts.as_deref(),
            reach: Reach::of(&update),
        },
        Judged::UpdateFindings => Sent::Everything {
            operation: operation.name(),
            accounts: None,
            reach: Reach::of(&update),
        },
    }));
    let trail = &mut ctx.trail;
    match (refusal, identifiers) {
        (None, _) => forward(ctx.gate, parts, body, trail, deadline, touched, reads).await,
        (
            Some(Refusal {
                denied: Some(denied),
                rejection,
            }),
            Some(Value::Array(ids)),
        ) if partial && denied.len() < keys.len() => {
            let rewrite = Rewrite {
                body_without_ids,
                identifiers: ids,
                keys: &keys,
                denied: &denied,
                refusal: rejection,
            };
            forward_allowed(ctx.gate, parts, rewrite, trail, deadline, &update, reads).await
        }
        (Some(Refusal { rejection, .. }), _) => Err(rejection),
    }
}

/// What a forwarded request may change in the enrichment cache: the write, as it is registered
/// while in flight (a processed BatchUpdateFindings is written through), or nothing.
#[derive(Clone, Copy)]
struct Touched<'a>(Option<Sent<'a>>);

impl<'a> Touched<'a> {
    /// Security Hub may have applied the write (registered in flight as `sent`) without saying
    /// which findings it processed.
    async fn evict(self, gate: &Stages, sent: Option<WriteId>) {
        let Some(enricher) = &gate.enricher else {
            return;
        };
        match self.0 {
            Some(Sent::Findings { keys, write }) => enricher.evict(keys, write, sent).await,
            Some(Sent::Everything {
                operation,
                accounts,
                reach,
            }) => enricher.evict_all(operation, accounts, reach).await,
            None => {}
        }
    }

    /// Security Hub answered a BatchUpdateFindings (`answered`). A finding it sent and the
    /// answer does not list as processed (or also reports as unprocessed) is evicted: Security Hub reports a finding
    /// another writer is changing as unprocessed (ConcurrentUpdateError), may fail one after
    /// applying part of it (InternalFailure), and one it lists under another identifier is
    /// one whose state hubgate cannot tell. Only the findings the request named take its
    /// change: a listed finding it did not name (another case of an Id, an answer that is not
    /// this request's) was written through too, so the cache said that finding had the values
    /// the update set, which Security Hub never gave it, and a member's lowering of it was
    /// judged on them. Such a finding is evicted, as one the write may or may not have changed.
    ///
    /// A named finding the answer reports Security Hub does not have (`FindingNotFound`) took
    /// none of the write: it is dropped from the cache, and not kept in the settle journal as
    /// a write that may have landed. Kept there, a member's made-up identifiers (forwarded in
    /// dry-run, up to the body's size each) were held for `settle_ms`, hundreds of megabytes
    /// within minutes.
    async fn processed(self, gate: &Stages, answered: &Answered, sent: Option<WriteId>) {
        let processed = &answered.processed[..];
        match (self.0, &gate.enricher) {
            (
                Some(Sent::Findings {
                    keys,
                    write: Unapplied::Update(update),
                }),
                Some(enricher),
            ) => {
                // Each listed finding found among the named ones (one map, one pass): a
                // named finding it does not list is unlisted, a listed one it does not name
                // a stray.
                let named: std::collections::HashMap<&FindingKey, usize, crate::finding::KeyHash> =
                    keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
                let mut listed = vec![false; keys.len()];
                let mut strays: Vec<FindingKey> = Vec::new();
                for k in processed {
                    match named.get(k) {
                        Some(&i) => listed[i] = true,
                        None => strays.push(k.clone()),
                    }
                }
                let named_processed: std::borrow::Cow<[FindingKey]> = match strays.is_empty() {
                    true => std::borrow::Cow::Borrowed(processed),
                    false => processed
                        .iter()
                        .filter(|k| named.contains_key(k))
                        .cloned()
                        .collect(),
                };
                enricher.write_through(&named_processed, update, sent).await;
                let unlisted: Vec<FindingKey> = keys
                    .iter()
                    .zip(&listed)
                    .filter(|(_, listed)| !**listed)
                    .map(|(k, _)| k.clone())
                    .collect();
                if !unlisted.is_empty() {
                    let (absent, unlisted): (Vec<FindingKey>, Vec<FindingKey>) = unlisted
                        .into_iter()
                        .partition(|k| answered.not_found.contains(k));
                    if !unlisted.is_empty() {
                        // Some of these Security Hub may have applied in part.
                        enricher
                            .evict(&unlisted, Unapplied::Update(update), sent)
                            .await;
                    }
                    if !absent.is_empty() {
                        enricher.forget(&absent).await;
                    }
                }
                if !strays.is_empty() {
                    // Not as this write's: a decision that took the write in flight into
                    // account did so for the findings it names, not for these.
                    enricher
                        .evict(&strays, Unapplied::Update(update), None)
                        .await;
                }
            }
            _ => self.evict(gate, sent).await,
        }
    }

    /// The findings it names (none for the others).
    fn keys(&self) -> &'a [FindingKey] {
        match self.0 {
            Some(Sent::Findings { keys, .. }) => keys,
            Some(Sent::Everything { .. }) | None => &[],
        }
    }

    /// The cache must learn from the answer what was processed.
    fn wants_answer(self, gate: &Stages) -> bool {
        gate.enricher.is_some()
            && matches!(
                self.0,
                Some(Sent::Findings {
                    write: Unapplied::Update(_),
                    ..
                })
            )
    }
}

/// What a BatchUpdateFindings answer says Security Hub did with the findings.
#[derive(Debug, PartialEq)]
struct Answered {
    /// Listed in `ProcessedFindings` and not reported in `UnprocessedFindings`: only these
    /// take the write's change.
    processed: Vec<FindingKey>,
    /// Reported only as `FindingNotFound` (and never as processed): the write changed none
    /// of them.
    not_found: crate::finding::KeySet,
}

/// Reads a BatchUpdateFindings answer once, both lists together; None when it does not read
/// as one (the caller then evicts). `ProcessedFindings` is read strictly, straight from the
/// bytes, borrowing the texts (a `serde_json::Value` of a 100-finding answer was a few
/// hundred allocations for two fields); `UnprocessedFindings` leniently: an entry of another
/// shape says nothing, and its finding stays one the write may have changed.
///
/// A finding the answer reports both ways is not processed: Security Hub may not have applied
/// the write to it (`InternalFailure`). Read from `ProcessedFindings` alone it was written
/// through, so the cache said the finding had the update's values while Security Hub kept
/// the old ones, and a member's lowering of it was judged on the update's. Nor is it "not
/// found" then: it may have taken the write, so it is evicted as unknown, never forgotten.
///
/// A listed finding the request named (`requested`, usually in the same order) is that key,
/// shared; only another one is made (and hashed) anew.
fn answered(answer: &[u8], requested: &[FindingKey]) -> Option<Answered> {
    use std::borrow::Cow;
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(rename = "ProcessedFindings", borrow)]
        processed: Vec<Processed<'a>>,
        #[serde(rename = "UnprocessedFindings", default)]
        unprocessed: Value,
    }
    #[derive(serde::Deserialize)]
    struct Processed<'a> {
        #[serde(rename = "Id", borrow)]
        id: Cow<'a, str>,
        #[serde(rename = "ProductArn", borrow)]
        product_arn: Cow<'a, str>,
    }
    let answer: Answer = serde_json::from_slice(answer).ok()?;
    let named = |key: &FindingKey, f: &Processed<'_>| {
        *key.id == *f.id && *key.product_arn == *f.product_arn
    };
    // Each finding a readable unprocessed entry reports, and whether every entry reporting it
    // says FindingNotFound.
    let mut reported: std::collections::HashMap<(&str, &str), bool> = Default::default();
    if let Value::Array(entries) = &answer.unprocessed {
        for entry in entries {
            let ident = entry.get("FindingIdentifier");
            let text = |m: &str| ident.and_then(|i| i.get(m)).and_then(Value::as_str);
            let (Some(id), Some(product_arn)) = (text("Id"), text("ProductArn")) else {
                continue;
            };
            let missing = entry.get("ErrorCode").and_then(Value::as_str) == Some("FindingNotFound");
            *reported.entry((id, product_arn)).or_insert(true) &= missing;
        }
    }
    let is_reported = |f: &Processed<'_>| reported.contains_key(&(&*f.id, &*f.product_arn));
    let mut next = 0;
    let processed = answer
        .processed
        .iter()
        .filter(|f| !is_reported(f))
        .map(|f| {
            let at = match requested.get(next) {
                Some(key) if named(key, f) => Some(next),
                // Bounded: a request names at most 100 findings.
                _ => requested.iter().position(|key| named(key, f)),
            };
            match at {
                Some(at) => {
                    next = at + 1;
                    requested[at].clone()
                }
                None => FindingKey::new(&*f.id, &*f.product_arn),
            }
        })
        .collect();
    let not_found = requested
        .iter()
        .filter(|k| {
            reported.get(&(&*k.id, &*k.product_arn)) == Some(&true)
                && !answer.processed.iter().any(|f| named(k, f))
        })
        .cloned()
        .collect();
    Some(Answered {
        processed,
        not_found,
    })
}

fn observe(metrics: &Metrics, trail: &Trail, status: u16, rejected: bool, started: Instant) {
    let decision = match &trail.decision {
        Some(d) if d.allowed() => DecisionLabel::Allow,
        // Never enforced, whatever became of the forward: a dry-run denial whose forward went
        // unanswered counted as `deny` made a rollout's dashboard show enforcement.
        Some(_) if trail.dry_run => DecisionLabel::DryRunDeny,
        // The allowed part was sent: answered, or left unanswered and maybe applied. Counted
        // as `deny`, a partial forward that timed out showed a dashboard nothing going out.
        Some(_) if trail.partial().is_some() => DecisionLabel::Partial,
        Some(_) => DecisionLabel::Deny,
        None if rejected => DecisionLabel::Rejected,
        None => DecisionLabel::Allow,
    };
    metrics
        .requests
        .get_or_create(&RequestLabels {
            operation: trail.operation.unwrap_or("unknown").to_string(),
            decision: decision.as_str().to_string(),
            status: status.to_string(),
        })
        .inc();
    metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    if trail.decision.is_some() {
        metrics.policy_seconds.observe(trail.policy_ns as f64 / 1e9);
    }
    if trail.forwarded {
        metrics
            .upstream_seconds
            .observe(trail.upstream_ns as f64 / 1e9);
    }
    metrics.enrichment_hits.inc_by(trail.cache_hits as u64);
    metrics.enrichment_misses.inc_by(trail.misses as u64);
}

/// Whether the connection's client certificate still verifies, and the callers file in force
/// still names the request's caller as it was authenticated (the same key and secret,
/// certificate mapping or static principal, to an equal principal).
fn still_the_caller(gate: &Stages, trail: &mut Trail) -> Result<(), AuthError> {
    // The connection's certificate too: a TLS reload that removed its CA, or its expiry,
    // during the wait (a pointer and a time compare when neither happened).
    let lapsed = trail.cert_check.as_ref().and_then(|check| check());
    if let Some(why) = lapsed.as_deref().and_then(|c| c.lapsed.as_deref()) {
        return Err(AuthError::ClientCertLapsed(why.to_string()));
    }
    let Some((checked, credential)) = &mut trail.proof else {
        return Ok(());
    };
    let current = gate.identity.load_full();
    if Arc::ptr_eq(&current, checked) {
        return Ok(());
    }
    match (current.still_names(credential), &trail.principal) {
        (Some(now), Some(then)) if *now == **then => {
            *checked = current;
            Ok(())
        }
        _ => Err(AuthError::CallerChanged),
    }
}

/// Waits for quota, sends the request upstream and records what happened. A throttle, by
/// Security Hub or by hubgate's own pacing running out of time, is the 429 envelope. With
/// `read` (the decision read finding state), a write hubgate sent meanwhile for any of
/// `touched`'s findings voids the decision: nothing is sent, and `run` decides again.
///
/// A write is registered as in flight before it leaves (`enrich::sending`); the returned guard
/// keeps it registered, and its holder drops it once the answer has been applied to the cache.
/// When Security Hub may have applied the write without answering (timeout, unreachable),
/// what it touched is evicted here, before the registration goes. Also returned: the instant
/// by which an answer hubgate reads whole must have come in (`read_answer`). The record's
/// place in the audit queue is reserved first, in `trail.slot`.
async fn send(
    gate: &Stages,
    parts: &http::request::Parts,
    body: Payload,
    trail: &mut Trail,
    deadline: Instant,
    touched: Touched<'_>,
    read: Option<StateRead>,
) -> Result<(Response<ProxyBody>, Option<InFlight>, Instant), Rejection> {
    // Room for the record first: a request is never forwarded without it. Reserved here, where
    // the request goes out, so that the sink is checked again just before (see below); kept
    // in the trail, where the record goes whatever the forward's outcome (and where a
    // decision made again finds it).
    if trail.slot.is_none() {
        trail.slot = Some(gate.audit.reserve_forward().await?);
    }
    let operation = trail.operation.unwrap_or("default");
    // Authentication comes before any forward: the principal is known here.
    let principal = trail.principal.clone();
    let caller = principal.as_deref().map_or(
        CallerId {
            account: "",
            principal: "",
        },
        Principal::caller,
    );
    // In passthrough the caller's own signature goes up: AWS charges the caller's account.
    let payer = match (&gate.config.upstream.auth, principal.as_deref()) {
        (UpstreamAuth::Passthrough, Some(p)) => Payer::Account(&p.account_id),
        _ => Payer::Hubgate,
    };
    let waited = match trail.quota_held.take() {
        Some((held, waited)) if held == operation => waited,
        _ => {
            let acquired = tokio::select! {
                biased;
                () = trail.departure.gone() => Err(None),
                acquired = gate.pacer.acquire(operation, deadline, caller, payer) => {
                    acquired.map_err(Some)
                }
            };
            acquired.map_err(|e| {
                let Some(e) = e else {
                    return Rejection::ClientLeft;
                };
                // The waits that ran out are the longest: leaving them out showed waits short
                // exactly while callers were getting 429.
                gate.metrics
                    .quota_wait_seconds
                    .observe(e.waited_ms as f64 / 1000.0);
                trail.throttled = true;
                Rejection::Quota(e)
            })?
        }
    };
    // Gone while the decision or its quota was waited for (the quota may have been held from
    // a voided decision): nothing was sent, and nobody is left to send it for.
    if trail.departure.has_gone() {
        return Err(Rejection::ClientLeft);
    }
    // The wait can be quota.max_wait_ms long: a caller removed, re-keyed or given another role
    // meanwhile would otherwise be forwarded as it was when it was authenticated.
    still_the_caller(gate, trail)?;
    // The sink may have failed since the record's place was reserved (the quota wait above
    // can be quota.max_wait_ms long): sent then, the request's record reached only stderr,
    // forwarded while /readyz said the sink had failed.
    if let Some(slot) = &trail.slot {
        slot.usable()?;
    }
    let in_flight = {
        // The check and the registration as one step (see `Enricher::send_order`).
        let _order = gate.enricher.as_ref().map(|e| e.send_order());
        // Dropped here: once the request has its quota, writes need no longer be remembered
        // for it.
        match read.map(|reads| reads.changed(touched.keys())) {
            None | Some(Changed::No) => {}
            Some(Changed::Patched(replay)) => {
                trail.quota_held = Some((operation, waited));
                return Err(Rejection::StateChanged {
                    decisions: 1,
                    replay: Some(Box::new(replay)),
                });
            }
            Some(Changed::Unknown) => {
                return Err(Rejection::StateChanged {
                    decisions: 1,
                    replay: None,
                })
            }
        }
        gate.enricher
            .as_ref()
            .zip(touched.0)
            .map(|(enricher, sent)| enricher.sending(sent))
    };
    gate.metrics
        .quota_wait_seconds
        .observe(waited.as_secs_f64());
    let t = Instant::now();
    let answer_by = t + Duration::from_millis(gate.config.upstream.timeout_ms);
    trail.sending.store(true, Ordering::Release);
    let call = async {
        match gate.config.upstream.auth {
            UpstreamAuth::Resign => gate.upstream.forward(operation, parts, body).await,
            UpstreamAuth::Passthrough => {
                gate.upstream.forward_exact(parts, body.into_bytes()).await
            }
        }
    };
    let response = tokio::select! {
        biased;
        response = call => response,
        () = gate.halt.halted() => Err(UpstreamError::Interrupted { operation }),
    };
    let response = match trail.upstream_answered(response, t) {
        Ok(response) => response,
        Err(rejection) => {
            if let Rejection::Upstream(e) = &rejection {
                if e.outcome_unknown() {
                    touched
                        .evict(gate, in_flight.as_ref().map(InFlight::id))
                        .await;
                }
            }
            return Err(rejection);
        }
    };
    // The answer's body is relayed unread (only its status and error type header tell), but
    // for a resigned forward's 4xx without that header, whose body's error type was read.
    let body_type = response
        .extensions()
        .get::<crate::upstream::BodyErrorType>()
        .cloned();
    if crate::upstream::is_throttle(response.status(), response.headers(), None)
        || body_type.as_ref().is_some_and(|t| t.is_throttle())
    {
        trail.throttled = true;
        gate.metrics
            .enrich
            .throttled
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .inc();
        if gate.config.upstream.auth == UpstreamAuth::Passthrough {
            // The caller's own call, signed with its own keys, throttled on its own account's
            // quota: AWS's answer is the caller's, like its 403, and goes back as it came. The
            // envelope said "Security Hub throttled hubgate's call" (sending whoever read it
            // to hubgate's account) and dropped AWS's request id. Nor does it slow the pace:
            // one caller whose account is busy elsewhere must not slow everyone's.
            return Ok((response, in_flight, answer_by));
        }
        // hubgate's own account: another client of it spends part of the quota.
        gate.pacer.throttled(operation);
        let detail = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or(body_type.map(|t| t.0))
            .unwrap_or_else(|| "HTTP 429".to_string());
        return Err(Rejection::Upstream(UpstreamError::Throttled {
            operation,
            detail,
        }));
    }
    Ok((response, in_flight, answer_by))
}

/// Reads a BatchUpdateFindings answer whole (to learn what was processed, or to merge into
/// it), by `answer_by` (`upstream.timeout_ms` from when it was sent); one that cannot be read
/// leaves the write's outcome unknown, so its findings go. The upstream client's timeout
/// covers only the answer's head: a body that stalled after it held the request, its audit
/// slot and its write's registration in flight for as long as the connection stayed open.
async fn read_answer(
    gate: &Stages,
    incoming: ProxyBody,
    touched: Touched<'_>,
    sent: Option<WriteId>,
    answer_by: Instant,
    trail: &mut Trail,
) -> Result<Bytes, Rejection> {
    let operation = "BatchUpdateFindings";
    let collect = Limited::new(incoming, MAX_MERGED_RESPONSE_BYTES).collect();
    // Every way of not reading the answer leaves by one exit: the answer is lost (the record
    // says outcome unknown, not forwarded) and the findings go. The stop's halt returned
    // early and skipped the first, so its record said forwarded with the head's 200 and no
    // outcome_unknown, for a write whose ProcessedFindings nobody read.
    let failure = tokio::select! {
        biased;
        read = tokio::time::timeout_at(answer_by.into(), collect) => match read {
            Ok(Ok(b)) => return Ok(b.to_bytes()),
            Ok(Err(e)) => UpstreamError::BadResponse {
                operation,
                detail: e.to_string(),
            },
            Err(_) => UpstreamError::Timeout {
                ms: gate.config.upstream.timeout_ms,
            },
        },
        () = gate.halt.halted() => UpstreamError::Interrupted { operation },
    };
    trail.answer_lost();
    touched.evict(gate, sent).await;
    Err(Rejection::Upstream(failure))
}

async fn forward(
    gate: &Stages,
    parts: &http::request::Parts,
    body: Payload,
    trail: &mut Trail,
    deadline: Instant,
    touched: Touched<'_>,
    read: Option<StateRead>,
) -> Result<Forwarded, Rejection> {
    let wants_answer = touched.wants_answer(gate);
    let identity;
    let parts = if wants_answer && gate.config.upstream.auth == UpstreamAuth::Resign {
        // The answer is read for what was processed, so it must come back as plain JSON.
        let mut p = parts.clone();
        p.headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        identity = p;
        &identity
    } else {
        parts
    };
    // Kept until the answer has been applied to the cache, whichever way this returns.
    let (response, in_flight, answer_by) =
        send(gate, parts, body, trail, deadline, touched, read).await?;
    let sent = in_flight.as_ref().map(InFlight::id);
    let status = response.status();
    let encoded = response
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if !(wants_answer && status.is_success() && !encoded) {
        // A refused write (4xx) changed nothing; anything else may have changed something.
        if !status.is_client_error() {
            touched.evict(gate, sent).await;
        }
        return Ok(Forwarded(response));
    }
    let (mut head, incoming) = response.into_parts();
    let bytes = read_answer(gate, incoming, touched, sent, answer_by, trail).await?;
    match answered(&bytes, touched.keys()) {
        Some(answered) => touched.processed(gate, &answered, sent).await,
        None => touched.evict(gate, sent).await,
    }
    head.headers.remove(http::header::TRANSFER_ENCODING);
    head.headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let body = Full::new(bytes).map_err(|never| match never {}).boxed();
    Ok(Forwarded(Response::from_parts(head, body)))
}

/// `on_partial_deny = "forward-allowed"`: forwards the request rewritten to the allowed
/// findings (re-serialised, then signed like any request) and merges the denied ones into
/// the answer's UnprocessedFindings, so an SDK caller sees one ordinary response.
/// The request cut down to its allowed findings.
struct Rewrite<'a> {
    body_without_ids: Value,
    identifiers: Vec<Value>,
    /// The findings the request names, de-duplicated (`identifiers` may repeat one).
    keys: &'a [FindingKey],
    denied: &'a KeyMap<Vec<String>>,
    /// The answer when nothing is left to forward.
    refusal: Rejection,
}

async fn forward_allowed(
    gate: &Stages,
    parts: &http::request::Parts,
    rewrite: Rewrite<'_>,
    trail: &mut Trail,
    deadline: Instant,
    update: &Update,
    read: Option<StateRead>,
) -> Result<Forwarded, Rejection> {
    let Rewrite {
        mut body_without_ids,
        identifiers,
        keys,
        denied,
        refusal,
    } = rewrite;
    let key_of = |v: &Value| -> Option<FindingKey> {
        Some(FindingKey::new(
            v.get("Id")?.as_str()?,
            v.get("ProductArn")?.as_str()?,
        ))
    };
    let allowed: Vec<Value> = identifiers
        .into_iter()
        .filter(|v| key_of(v).is_some_and(|k| !denied.contains_key(&k)))
        .collect();
    if allowed.is_empty() {
        // Nothing left to apply: an empty batch is never forwarded.
        return Err(refusal);
    }
    // The findings sent, each once (as a whole forward names them): the write registered in
    // flight, written through and counted. Read off the identifiers sent, a finding named
    // twice was recorded as two findings forwarded, and its first place, unmatched in the
    // answer, was evicted as a write that may or may not have landed.
    let forwarded_keys: Vec<FindingKey> = keys
        .iter()
        .filter(|k| !denied.contains_key(k))
        .cloned()
        .collect();
    trail.cut = Some((forwarded_keys.len(), denied.len()));
    if let Some(obj) = body_without_ids.as_object_mut() {
        obj.insert("FindingIdentifiers".into(), Value::Array(allowed));
    }
    // New bytes, so a new payload: hashed for the re-sign, never the caller's hash.
    let rewritten = Payload::new(Bytes::from(
        serde_json::to_vec(&body_without_ids).unwrap_or_default(),
    ));
    // The answer is read and merged, so it must come back as plain JSON.
    let mut parts = parts.clone();
    parts.headers.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let touched = Touched(Some(Sent::Findings {
        keys: &forwarded_keys,
        write: Unapplied::Update(update),
    }));
    // Kept until the answer has been applied to the cache, whichever way this returns.
    let (response, in_flight, answer_by) =
        send(gate, &parts, rewritten, trail, deadline, touched, read).await?;
    let sent = in_flight.as_ref().map(InFlight::id);
    let (mut head, incoming) = response.into_parts();
    let unmergeable = |detail: String| {
        Rejection::Upstream(crate::upstream::UpstreamError::BadResponse {
            operation: "BatchUpdateFindings",
            detail,
        })
    };
    let bytes = read_answer(gate, incoming, touched, sent, answer_by, trail).await?;
    if !head.status.is_success() {
        if !head.status.is_client_error() {
            touched.evict(gate, sent).await;
        }
        // Security Hub refused the whole batch; its answer goes back as it came.
        return Ok(Forwarded(Response::from_parts(
            head,
            Full::new(bytes).map_err(|never| match never {}).boxed(),
        )));
    }
    if let Some(encoding) = head
        .headers
        .get(http::header::CONTENT_ENCODING)
        .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        touched.evict(gate, sent).await;
        return Err(unmergeable(format!(
            "the answer is {encoding:?}-encoded although identity was asked for; the denied findings cannot be merged into it"
        )));
    }
    let mut answer = match serde_json::from_slice::<Value>(&bytes) {
        Ok(answer @ Value::Object(_)) => answer,
        _ => {
            touched.evict(gate, sent).await;
            return Err(unmergeable(
                "the answer is not a JSON object; the denied findings cannot be merged into it"
                    .into(),
            ));
        }
    };
    match answered(&bytes, touched.keys()) {
        Some(answered) => touched.processed(gate, &answered, sent).await,
        None => touched.evict(gate, sent).await,
    }
    let mut extra: Vec<Value> = denied
        .iter()
        .map(|(key, reasons)| {
            json!({
                "FindingIdentifier": {"Id": key.id, "ProductArn": key.product_arn},
                "ErrorCode": "PolicyDenied",
                "ErrorMessage": reasons.join("; "),
            })
        })
        .collect();
    extra.sort_by(|a, b| {
        a["FindingIdentifier"]["Id"]
            .as_str()
            .cmp(&b["FindingIdentifier"]["Id"].as_str())
    });
    match answer.get_mut("UnprocessedFindings") {
        Some(Value::Array(list)) => list.extend(extra),
        _ => answer["UnprocessedFindings"] = Value::Array(extra),
    }
    let merged = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
    head.headers.remove(http::header::TRANSFER_ENCODING);
    head.headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(merged.len()),
    );
    let body = Full::new(merged).map_err(|never| match never {}).boxed();
    Ok(Forwarded(Response::from_parts(head, body)))
}

/// The envelope for a failure inside hubgate itself (a handler that panicked).
pub fn internal_error(message: &str) -> Response<ProxyBody> {
    let id = uuid::Uuid::new_v4().to_string();
    tracing::error!(decision_id = %id, error = message, "internal error");
    Rejection::Internal(message.to_string())
        .to_response(&id)
        .map(|b| b.map_err(|never| match never {}).boxed())
}

/// The findings a request names, grouped by product and claimed account (`claims`, parallel
/// to `keys`) in the order they first appear.
fn findings_by_product(keys: &[FindingKey], claims: &[Option<String>]) -> Vec<ProductFindings> {
    let mut groups: Vec<ProductFindings> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let claim = claims.get(i).and_then(Option::as_deref);
        match groups
            .iter_mut()
            .find(|g| g.product_arn == key.product_arn && g.account_id.as_deref() == claim)
        {
            Some(group) => group.ids.push(key.id.clone()),
            None => groups.push(ProductFindings {
                product_arn: key.product_arn.clone(),
                ids: vec![key.id.clone()],
                account_id: claim.map(Arc::from),
            }),
        }
    }
    groups
}

/// The input document as the audit record keeps it: the findings are listed once, as the
/// record's `findings`, not again here with their state (which would make a 100-finding
/// record several times the size of its request).
fn audited_input(mut input: regorus::Value) -> regorus::Value {
    if let Ok(doc) = input.as_object_mut() {
        doc.remove(&regorus::Value::from("findings"));
    }
    input
}

/// The allow-listed headers of the policy input. `host` is the host the signature was checked
/// against (`framing::host`): over h2 that is `:authority`, not a header.
fn input_headers(parts: &http::request::Parts) -> Map<String, Value> {
    INPUT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = match *name {
                "host" => crate::framing::host(&parts.headers, &parts.uri)?.ok(),
                _ => parts.headers.get(*name).and_then(|v| v.to_str().ok()),
            };
            value.map(|v| (name.to_string(), Value::from(v)))
        })
        .collect()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The decision record, from everything the request's path left in the trail.
fn record(
    gate: &Stages,
    mut trail: Trail,
    received: &Received,
    status: u16,
    error: Option<RecordError>,
) -> Record {
    // `forwarded` says Security Hub answered; a write it never answered may still have been
    // applied, which the record must not leave a reader to guess from the error code (a
    // timed-out lookup, which sent nothing, has the same one).
    let error = error.map(|mut e| {
        if trail.outcome_unknown {
            e.message
                .push_str("; the request was forwarded: Security Hub may have applied it");
        }
        e
    });
    let input = trail
        .input
        .take()
        .filter(|_| gate.config.audit.include_input)
        .map(audited_input);
    let allow = match &trail.decision {
        Some(d) => d.allowed(),
        None => error.is_none(),
    };
    let partial = trail.partial();
    let pairs = |v: Vec<Violation>| v.into_iter().map(|v| (v.msg, v.finding));
    let (violations, warnings) = match trail.decision {
        Some(d) => (
            group_violations(pairs(d.deny), &trail.findings),
            group_violations(pairs(d.warn), &trail.findings),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let settling = (!trail.settling.is_empty())
        .then(|| {
            let keys = trail.settling.iter().map(|k| (&*k.id, &*k.product_arn));
            crate::audit::places_of(keys, &trail.findings)
        })
        .filter(|p| !p.is_empty());
    let withheld = (!trail.withheld.is_empty())
        .then(|| {
            let keys = trail.withheld.iter().map(|k| (&*k.id, &*k.product_arn));
            crate::audit::places_of(keys, &trail.findings)
        })
        .filter(|p| !p.is_empty());
    Record {
        record_version: 2,
        input,
        decision_id: received.decision_id.clone(),
        timestamp: now_rfc3339(),
        path: "hubgate/deny".into(),
        operation: trail.operation.map(Into::into),
        principal: trail.principal.as_ref().map(|p| RecordPrincipal {
            id: p.id.clone(),
            account_id: p.account_id.clone(),
            role: Some(p.role),
        }),
        source_ip: received.remote.ip().to_string(),
        method: received.method.clone(),
        request_path: crate::quoted::clipped(&received.path, routes::RECORDED_PATH_CHARS)
            .into_owned(),
        findings: trail.findings,
        update: trail.update,
        result: Verdict {
            allow,
            violations,
            warnings,
        },
        error,
        dry_run: trail.dry_run,
        partial: partial.map(|(forwarded, denied)| Partial { forwarded, denied }),
        forwarded: trail.forwarded,
        outcome_unknown: trail.outcome_unknown,
        throttled: trail.throttled,
        status,
        upstream_status: trail.upstream_status,
        upstream_request_id: trail.upstream_request_id,
        settling,
        withheld,
        revision: trail
            .revision
            .unwrap_or_else(|| gate.policy.load().revision.clone()),
        metrics: RecordMetrics {
            timer_total_ns: received.started.elapsed().as_nanos() as u64,
            timer_policy_ns: trail.policy_ns,
            timer_enrich_ns: trail.enrich_ns,
            timer_upstream_ns: trail.upstream_ns,
            counter_lookup_calls: trail.lookups,
            counter_cache_hits: trail.cache_hits,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cut request counts as partial only once it went out: refused before (quota, audit
    /// sink, caller gone), it forwarded nothing.
    #[test]
    fn a_cut_request_is_partial_only_once_sent() {
        let mut trail = Trail {
            cut: Some((1, 2)),
            ..Trail::default()
        };
        assert_eq!(trail.partial(), None);
        trail.outcome_unknown = true;
        assert_eq!(trail.partial(), Some((1, 2)));
        trail.outcome_unknown = false;
        trail.forwarded = true;
        assert_eq!(trail.partial(), Some((1, 2)));
    }

    /// The record names each finding with the account the request named for it (V2,
    /// imports): one product's findings of two accounts are two groups, and a finding named
    /// without an account (BatchUpdateFindings, MetadataUids) has none.
    #[test]
    fn the_record_groups_findings_by_product_and_claimed_account() {
        let keys = [
            FindingKey::new("a", "p"),
            FindingKey::new("b", "p"),
            FindingKey::new("c", "p"),
            FindingKey::new("d", "q"),
        ];
        let claims = [
            Some("111111111111".to_string()),
            Some("222222222222".to_string()),
            Some("111111111111".to_string()),
            None,
        ];
        let groups = findings_by_product(&keys, &claims);
        let seen: Vec<(Vec<&str>, &str, Option<&str>)> = groups
            .iter()
            .map(|g| {
                let ids = g.ids.iter().map(|i| &**i).collect();
                (ids, &*g.product_arn, g.account_id.as_deref())
            })
            .collect();
        assert_eq!(
            seen,
            [
                (vec!["a", "c"], "p", Some("111111111111")),
                (vec!["b"], "p", Some("222222222222")),
                (vec!["d"], "q", None),
            ]
        );
        let unclaimed = findings_by_product(&keys[..2], &[]);
        assert_eq!(unclaimed.len(), 1);
        assert_eq!(unclaimed[0].account_id, None);
    }

    /// A handler that panics is a failure like any other: the internal-error rejection, which
    /// `respond` answers and records, not a failed task the server answers with no record.
    #[tokio::test]
    async fn a_panicking_handler_becomes_an_internal_error_that_is_recorded() {
        let panics = async {
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("a handler bug that quotes the caller's secret");
            }
            Err(Rejection::Internal("unreached".into()))
        };
        match unwound(panics, "d-1").await {
            Err(Rejection::Internal(m)) => {
                assert!(m.contains("handler failed"), "{m}");
                assert!(!m.contains("secret"), "the panic's text is not shown: {m}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a panic forwarded"),
        }
        // A handler that returns is passed through as it is.
        let refused = async {
            Err(Rejection::OperationNotAllowed {
                operation: "GetFindings",
            })
        };
        assert!(matches!(
            unwound(refused, "d-2").await,
            Err(Rejection::OperationNotAllowed { .. })
        ));
    }

    /// Of the named findings an answer does not list as processed, only those it reports as
    /// FindingNotFound, by both texts, and in no other way, are absent; any other error, shape
    /// or answer leaves them findings the write may have changed.
    #[test]
    fn only_findings_reported_not_found_are_absent() {
        let named = [
            FindingKey::new("gone", "p"),
            FindingKey::new("busy", "p"),
            FindingKey::new("odd", "p"),
            FindingKey::new("twice", "p"),
            FindingKey::new("both", "p"),
        ];
        let answer = br#"{"ProcessedFindings": [{"Id": "both", "ProductArn": "p"}],
            "UnprocessedFindings": [
            {"FindingIdentifier": {"Id": "gone", "ProductArn": "p"}, "ErrorCode": "FindingNotFound"},
            {"FindingIdentifier": {"Id": "busy", "ProductArn": "p"}, "ErrorCode": "ConcurrentUpdateError"},
            {"FindingIdentifier": {"Id": "odd"}, "ErrorCode": "FindingNotFound"},
            {"FindingIdentifier": {"Id": "twice", "ProductArn": "p"}, "ErrorCode": "FindingNotFound"},
            {"FindingIdentifier": {"Id": "twice", "ProductArn": "p"}, "ErrorCode": "InternalFailure"},
            {"FindingIdentifier": {"Id": "both", "ProductArn": "p"}, "ErrorCode": "FindingNotFound"},
            {"FindingIdentifier": {"Id": "other", "ProductArn": "p"}, "ErrorCode": "FindingNotFound"},
            "not an entry"]}"#;
        let read = answered(answer, &named).unwrap();
        assert_eq!(read.not_found.len(), 1);
        assert!(read.not_found.contains(&named[0]));
        // Reported both ways: not processed, and not absent either.
        assert!(read.processed.is_empty(), "{read:?}");
        for odd in [
            br#"{"ProcessedFindings": [], "UnprocessedFindings": {}}"#,
            &br#"{"ProcessedFindings": []}"#[..],
        ] {
            let read = answered(odd, &named).unwrap();
            assert!(read.not_found.is_empty() && read.processed.is_empty());
        }
    }

    /// A finding listed as processed and reported as unprocessed (by both texts) is not
    /// processed: Security Hub may not have applied the write to it.
    #[test]
    fn a_finding_reported_both_ways_is_not_processed() {
        let named = [FindingKey::new("a", "p"), FindingKey::new("b", "p")];
        let answer = br#"{"ProcessedFindings": [{"Id": "a", "ProductArn": "p"},
            {"Id": "b", "ProductArn": "p"}], "UnprocessedFindings": [
            {"FindingIdentifier": {"Id": "a", "ProductArn": "p"}, "ErrorCode": "InternalFailure"},
            {"FindingIdentifier": {"Id": "b", "ProductArn": "q"}, "ErrorCode": "InternalFailure"}]}"#;
        let read = answered(answer, &named).unwrap();
        assert_eq!(read.processed, [named[1].clone()]);
        assert!(read.not_found.is_empty());
    }

    /// What the cache is written through for: exactly the pairs the answer lists (escaped
    /// text unescaped); an answer that does not read as a BatchUpdateFindings answer names
    /// nothing, so the caller evicts instead.
    #[test]
    fn processed_findings_are_read_from_the_answer_or_not_at_all() {
        let answer = br#"{"ProcessedFindings": [{"Id": "a", "ProductArn": "p", "X": 1},
            {"Id": "b\u0031", "ProductArn": "p"}], "UnprocessedFindings": []}"#;
        // Named by the request in order, out of order, or not at all: the same keys.
        let requested = [FindingKey::new("b1", "p"), FindingKey::new("a", "p")];
        for requested in [&requested[..], &requested[1..], &[]] {
            let processed = answered(answer, requested).unwrap().processed;
            assert_eq!(
                processed,
                [FindingKey::new("a", "p"), FindingKey::new("b1", "p")]
            );
            for key in &processed {
                let shared = requested.iter().any(|r| Arc::ptr_eq(&r.id, &key.id));
                assert_eq!(shared, requested.contains(key), "{key:?}");
            }
        }
        // A pair that only shares its Id (or its ProductArn) with a requested key is another key.
        let near = [FindingKey::new("a", "q"), FindingKey::new("x", "p")];
        assert_eq!(
            answered(
                br#"{"ProcessedFindings": [{"Id": "a", "ProductArn": "p"}]}"#,
                &near
            )
            .map(|a| a.processed),
            Some(vec![FindingKey::new("a", "p")])
        );
        for bad in [
            &br#"{"UnprocessedFindings": []}"#[..],
            br#"{"ProcessedFindings": [{"Id": "a"}]}"#,
            br#"{"ProcessedFindings": [{"Id": 1, "ProductArn": "p"}]}"#,
            br#"{"ProcessedFindings": [], "ProcessedFindings": [{"Id": "a", "ProductArn": "p"}]}"#,
            b"[]",
            b"not json",
        ] {
            assert_eq!(
                answered(bad, &[FindingKey::new("a", "p")]),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
