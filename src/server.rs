//! Server: the proxy and admin listeners (HTTP/1.1 and h2c), signals (SIGHUP reload,
//! SIGTERM/SIGINT/SIGQUIT graceful stop, SIGUSR1/SIGUSR2 ignored) and the admin endpoints
//! `/healthz`, `/readyz` and `/metrics`.

pub mod conn;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::coordination::Coordination;
use crate::enrich::Enricher;
use crate::envelope::Rejection;
use crate::framing::RawHead;
use crate::identity::Identity;
use crate::metrics::{KindLabels, Metrics, ReasonLabels};
use crate::policy::PolicySet;
use crate::proxy::{self, Stages};
use crate::quota::Pacer;
use crate::upstream::Upstream;

/// Why the service hands hyper no response: over HTTP/1 hyper then closes the connection; over
/// h2 it resets the stream with the h2 reason it finds among the error's sources (else
/// INTERNAL_ERROR).
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("the client went away")]
    ClientGone(#[source] proxy::ClientGone),
    /// The connection is closing (`conn::CloseReason`): the request was not handled, which
    /// REFUSED_STREAM tells an h2 client (it may send it again on a new connection).
    #[error("the connection is closing; the request was not handled")]
    Closing(#[source] h2::Error),
}

fn client_gone(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<proxy::ClientGone>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The server's state: what every request needs (`proxy::Stages`), and what only the server
/// reads (the listener's TLS, the last policy reload's error for /readyz).
pub struct Gate {
    pub stages: Arc<Stages>,
    /// TLS on the proxy listener, when configured.
    pub tls: Option<tls::Tls>,
    /// Why the last policy reload failed, while the previous set stays in force.
    pub last_reload_error: std::sync::Mutex<Option<String>>,
    /// Held by the reload that runs: reloads run one at a time, in the order they were asked.
    reloading: std::sync::Mutex<()>,
    /// A reload is asked for and has not started reading the files yet.
    reload_pending: std::sync::atomic::AtomicBool,
    /// When the reload that runs began reading the files.
    reload_began: std::sync::Mutex<Option<std::time::Instant>>,
    /// The settings of the configuration file that changed on disk since start, as the last
    /// reload found them: they need a restart.
    config_changed: std::sync::Mutex<Vec<String>>,
    /// Set once SIGTERM/SIGINT/SIGQUIT has closed the proxy listener: /readyz answers 503 from
    /// then on.
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Startup(String),
    #[error("cannot listen on {addr} ({setting}): {reason}")]
    Bind {
        addr: String,
        setting: &'static str,
        reason: String,
    },
    #[error(
        "the audit writer did not finish within {}s of the drain (its sink takes no writes): \
         {queued} queued record(s) and those it was writing were not written",
        WRITER_FINISH.as_secs()
    )]
    AuditUnfinished { queued: usize },
    #[error(transparent)]
    AuditSinkFailed(#[from] crate::audit::SinkLost),
}

/// How long a stop waits for the audit writer to take the last records, flush and fsync.
const WRITER_FINISH: Duration = Duration::from_secs(5);

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one h2 connection may have open at once (RFC 9113 §6.5.2 advises at least 100); a
/// client that wants more waits for one to end, it is not refused.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// The most an HTTP/1 connection buffers of what it was sent and not yet used: so also the
/// longest request head. hyper's default (about 400 KiB) let every connection of
/// server.max_connections hold that much (and the raw head's copy) for header_read_timeout_ms
/// before it named any caller: about 570 KiB each, so a few hundred connections from a client
/// without keys went past the memory limit of the shipped manifests. SDK heads are a few KiB;
/// this still takes a request target up to hyper's URI limit (64 KiB), which is answered 414.
pub(crate) const H1_MAX_BUFFER: usize = 96 * 1024;

/// h2 keep-alive: a ping this long after the connection was last heard from, and the connection
/// closed if the ping is not answered within the timeout.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a connection asked to close, with no request in progress any more, has for its
/// graceful shutdown (an h2 GOAWAY, the client's acknowledgement of hyper's ping, the final
/// GOAWAY) before it is dropped. Requests it starts meanwhile are refused.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A stop's signal to one connection, held for as long as the connection is served.
type Stop = tokio::sync::watch::Receiver<()>;

/// Connections over server.max_connections that are still answered with a 503 at once; past
/// this many, further ones are closed at accept (answering costs a task and a file descriptor).
const MAX_REFUSING: usize = 64;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One of server.max_connections, held for a connection's life; counts open connections.
struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Serves one accepted (and, with TLS, handshaken) connection until it closes, shutdown, or
/// its clock expires (idle, or a request head read too slowly).
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    mut stop: Stop,
    io: I,
    gate: Arc<Gate>,
    remote: std::net::SocketAddr,
    peer: Option<Arc<tls::PeerCert>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let server = &gate.stages.config.server;
    let clock = conn::Clock::new(
        ms(server.header_read_timeout_ms),
        ms(server.idle_timeout_ms),
        ms(server.response_send_timeout_ms),
    );
    let answering = gate.clone();
    let answerer: conn::HeadAnswerer = Arc::new(move |refused, date| {
        Box::pin(proxy::refuse_head(
            answering.stages.clone(),
            remote,
            refused,
            date,
        ))
    });
    let io = TokioIo::new(conn::ClockedIo::new(io, clock.clone()).answering(answerer));
    let metrics_gate = gate.clone();
    let requests = clock.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        // Called as soon as hyper has parsed a head: the request is in progress from here
        // until its response body has been sent. hyper's size hint is exact for a body framed
        // by Content-Length (or absent), which is then also its length on the wire.
        let body_len = hyper::body::Body::size_hint(req.body()).exact();
        // A connection asked to close handles no request that starts after (an h2 client may
        // open streams until it has read the GOAWAY, or ignore it).
        let refused = requests.is_closing();
        let (mut guard, head, heads_lost) = requests.request_started(body_len);
        if let Some(head) = head {
            req.extensions_mut().insert(RawHead(head));
        }
        let gate = gate.clone();
        // Checked when the request arrives, and again by the proxy after a quota wait (a TLS
        // reload may remove a CA meanwhile).
        let check: Option<crate::identity::CertCheck> = match (&peer, &gate.tls) {
            (Some(peer), Some(_)) => {
                let (peer, gate) = (peer.clone(), gate.clone());
                Some(Arc::new(move || {
                    let tls = gate.tls.as_ref()?;
                    Some(tls.recheck(&peer, std::time::SystemTime::now()))
                }))
            }
            _ => None,
        };
        let cert = check.as_ref().and_then(|check| check());
        // A connection whose certificate no longer verifies gets its 401 (from identity) and
        // is closed: its client connects again, and the handshake tells it why.
        let lapsed = cert.as_ref().is_some_and(|c| c.lapsed.is_some());
        if lapsed {
            // Over h2 a Connection header means nothing: the connection is shut down (GOAWAY)
            // once this request's 401 is sent, and the requests its client opens meanwhile
            // are refused.
            guard.then_close(conn::CloseReason::CertificateLapsed);
        }
        async move {
            if refused {
                return Err(Unanswered::Closing(h2::Reason::REFUSED_STREAM.into()));
            }
            // The request runs in its own task: hyper drops this future when the client goes
            // away (or resets its stream), and a request already forwarded must still get its
            // audit record. `_present` is dropped with this future, so a request still waiting
            // for quota then sends nothing.
            let (_present, departure) = proxy::presence();
            let handled = proxy::handle(gate.stages.clone(), req, remote, cert, check, departure);
            let response = match tokio::spawn(handled).await {
                Ok(response) => response,
                Err(e) => proxy::internal_error(&format!("the request handler failed: {e}")),
            };
            // An error from the service makes hyper close the connection without answering.
            if response.extensions().get::<proxy::ClientGone>().is_some() {
                return Err(Unanswered::ClientGone(proxy::ClientGone));
            }
            let mut response = response;
            if heads_lost || lapsed {
                // The next request's head could not be checked on this connection (after a
                // chunked body, hubgate cannot tell where it starts), or the connection's
                // client certificate no longer verifies: the client sends it on a new one.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            guard.sending();
            Ok(response.map(|body| proxy::Held::new(body, guard)))
        }
    });
    // When the clock expires below, dropping the connection ends every request on it: over
    // HTTP/1 the response body (and with it the in-flight permit) is dropped with it, and over
    // h2 each stream's task is woken with the connection's error and drops its body.
    let served = builder.serve_connection(io, service).into_owned();
    tokio::pin!(served);
    // Shut down gracefully once (an h2 GOAWAY; HTTP/1 closes after the response under way):
    // when hubgate stops, or when the clock is asked to close the connection.
    let mut going_away = false;
    let kind = loop {
        tokio::select! {
            result = served.as_mut() => break match result {
                Ok(()) => None,
                // The client left mid-request: counted as the request's 499, not as a
                // connection error.
                Err(e) if client_gone(&*e) => None,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                    Some(conn::error_kind(&*e))
                }
            },
            _ = stop.changed(), if !going_away => {
                going_away = true;
                served.as_mut().graceful_shutdown();
                // The drain is for the requests under way: a request that starts from now on
                // (an h2 client that ignores the GOAWAY) is refused, not forwarded.
                clock.close(conn::CloseReason::Stopping);
            }
            _ = clock.closing(), if !going_away => {
                going_away = true;
                tracing::debug!(%remote, "shutting the connection down");
                served.as_mut().graceful_shutdown();
            }
            // Dropping the connection closes the socket.
            expired = clock.expired() => {
                tracing::debug!(%remote, kind = expired.kind(), "closing the connection");
                if let conn::Expired::Closed(_) = expired {
                    // The GOAWAY (sent now, if the branch above has not run yet) is on its
                    // way: a client that acknowledges it lets hyper end the connection
                    // cleanly; one that does not is dropped after this.
                    if !going_away {
                        served.as_mut().graceful_shutdown();
                    }
                    let _ = tokio::time::timeout(CLOSE_LINGER, served.as_mut()).await;
                }
                break Some(expired.kind());
            }
        }
    };
    // A connection asked to close is counted under its reason, however it then ended (hyper
    // may close it itself once its last answer is sent); one closed because hubgate stops is
    // not counted at all.
    let kind = match clock.close_reason() {
        Some(conn::CloseReason::Stopping) => None,
        Some(why) => Some(conn::Expired::Closed(why).kind()),
        None => kind,
    };
    if let Some(kind) = kind {
        metrics_gate
            .stages
            .metrics
            .connection_errors
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }
}

/// A connection over server.max_connections: answered with one 503 OVERLOADED (Connection:
/// close) to its first request, within header_read_timeout; or, with TLS (a handshake is the
/// dearest part of a connection) or too many such answers under way, closed at once.
fn refuse_connection(
    gate: &Arc<Gate>,
    builder: &auto::Builder<TokioExecutor>,
    refusing: &Arc<Semaphore>,
    stream: TcpStream,
) {
    let count = |gate: &Gate, kind: &str| {
        gate.stages
            .metrics
            .connections_refused
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    };
    let permit = match refusing.clone().try_acquire_owned() {
        Ok(permit) if gate.tls.is_none() => permit,
        _ => {
            count(gate, "closed");
            return;
        }
    };
    let gate = gate.clone();
    let builder = builder.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let limit = gate.stages.config.server.max_connections;
        let flag = answered.clone();
        let service = service_fn(move |_req: Request<Incoming>| {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut response = Rejection::Overloaded {
                setting: "server.max_connections",
                limit,
            }
            .to_response(&uuid::Uuid::new_v4().to_string());
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            async move { Ok::<_, Infallible>(response) }
        });
        let _ = tokio::time::timeout(
            ms(gate.stages.config.server.header_read_timeout_ms),
            builder.serve_connection(TokioIo::new(stream), service),
        )
        .await;
        let kind = if answered.load(std::sync::atomic::Ordering::Relaxed) {
            "overloaded"
        } else {
            "closed"
        };
        count(&gate, kind);
    });
}

/// Set by every SIGHUP from `catch_early_signals` on; read once, when serving begins.
static EARLY_HANGUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True while hubgate starts: a stop signal then ends the process at once
/// (`catch_early_signals`).
static STARTING: std::sync::LazyLock<Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(std::sync::atomic::AtomicBool::new(true)));

/// The first thing `hubgate serve` does, for the signals that come before `serve` listens for
/// them (reading the configuration, which may be a pipe that takes its time, loading the
/// policies, probing Redis, fetching credentials: seconds, up to a minute).
///
/// SIGHUP's default action ends the process: a reload signal then (a config reloader reacting
/// to the change that restarted the pod) killed hubgate. Now it is a reload once serving.
///
/// SIGTERM, SIGINT and SIGQUIT end hubgate at once while it starts (status 0: it has served
/// nothing, so there is nothing to drain or record). Left to their default action they did
/// the same, except where the signal was ignored: as a container's PID 1 (the shipped image),
/// whose signals without a handler the kernel drops, or started with it ignored (a shell's
/// background job has SIGINT and SIGQUIT ignored). There the stop was lost: hubgate went on to
/// serve, taking requests, until the SIGKILL at the end of the termination grace period cut
/// the forwards in flight without their records.
pub fn catch_early_signals() -> std::io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGHUP, &EARLY_HANGUP)?;
    for stop in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGQUIT,
    ] {
        signal_hook::flag::register_conditional_shutdown(stop, 0, STARTING.clone())?;
    }
    Ok(())
}

/// Runs hubgate until SIGTERM, SIGINT or SIGQUIT, then drains and flushes.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let startup = |e: &dyn std::fmt::Display| ServeError::Startup(e.to_string());
    // Loading the policies can take seconds; a SIGHUP meanwhile waits in this stream and
    // reloads once serving (one before this line is in EARLY_HANGUP).
    let mut hup = signal(SignalKind::hangup()).map_err(|e| startup(&e))?;
    for caution in config
        .cautions()
        .into_iter()
        .chain(crate::audit::key_cautions(&config.audit))
    {
        tracing::warn!(%caution, "a setting weakens a guarantee");
    }
    let identity = Identity::load(
        &config.identity,
        &config.upstream.region,
        config.passthrough(),
    )
    .map_err(|e| startup(&e))?;
    identity
        .refuse_demo_keys(&config.identity.callers, &config.upstream_uri)
        .map_err(|e| startup(&e))?;
    let policy = PolicySet::load(
        &config.policy.dir,
        Duration::from_millis(config.policy.eval_timeout_ms),
    )
    .map_err(|e| startup(&e))?;
    policy.covers(&config).map_err(|e| startup(&e))?;
    let upstream = Upstream::new(&config).await.map_err(|e| startup(&e))?;
    let metrics = Metrics::new();
    metrics
        .runtime_workers
        .set(tokio::runtime::Handle::current().metrics().num_workers() as i64);
    let coordination =
        Coordination::start(&config, metrics.coordination.clone()).map_err(|e| startup(&e))?;
    let pacer = Arc::new(match &coordination {
        Some(coord) => Pacer::shared(
            &config.quota,
            coord.clone(),
            config.coordination.fallback_share,
        ),
        None => Pacer::new(&config.quota),
    });
    let enricher = config.enrichment.enabled.then(|| {
        let enricher = Enricher::new(
            upstream.clone(),
            pacer.clone(),
            &config.enrichment,
            metrics.enrich.clone(),
        );
        match &coordination {
            Some(coord) => enricher.share_through(coord.clone()),
            None => enricher,
        }
    });
    if let Some(coord) = &coordination {
        // The first probe decides whether this replica starts shared or on its own.
        coord.probe().await;
        tokio::spawn(coord.clone().run_probe());
    }
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::Tls::load(cert, key, config.server.client_ca.as_deref())
                .map_err(|e| startup(&e))?,
        ),
        _ => None,
    };
    if let Some(tls) = &tls {
        tls_loaded(tls, &metrics);
    }
    let (audit, writer) = AuditLog::start(
        &config.audit,
        config.server.max_in_flight,
        &config.upstream.region,
        metrics.audit.clone(),
    )
    .map_err(|e| startup(&e))?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: config.listen.to_string(),
            setting: "server.listen",
            reason: e.to_string(),
        })?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: config.admin_listen.to_string(),
            setting: "server.admin_listen",
            reason: e.to_string(),
        })?;
    tracing::info!(
        proxy = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = %config.upstream.endpoint,
        revision = %policy.revision,
        callers = identity.caller_count(),
        "hubgate is serving"
    );

    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let config_server = config.server.clone();
    let gate = Arc::new(Gate {
        stages: Arc::new(Stages {
            config,
            identity: ArcSwap::from_pointee(identity),
            policy: ArcSwap::from_pointee(policy),
            upstream,
            pacer,
            enricher,
            audit,
            metrics,
            in_flight: Arc::new(Semaphore::new(config_server.max_in_flight)),
            shares: crate::admission::Shares::new(
                config_server.caller_share(),
                config_server.caller_byte_share(),
            ),
            // Validated at most 2^40, under tokio's MAX_PERMITS on 64-bit targets.
            body_bytes: Arc::new(Semaphore::new(
                usize::try_from(config_server.max_in_flight_body_bytes)
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            )),
            halt: Default::default(),
        }),
        tls,
        last_reload_error: std::sync::Mutex::new(None),
        reloading: std::sync::Mutex::new(()),
        reload_pending: std::sync::atomic::AtomicBool::new(false),
        reload_began: std::sync::Mutex::new(None),
        config_changed: std::sync::Mutex::new(Vec::new()),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    gate.stages
        .metrics
        .set_revision(&gate.stages.policy.load().revision);
    gate.stages.metrics.reload_success_time.set(unix_now());

    let admin_task = tokio::spawn(serve_admin(admin, gate.clone()));
    let watch_task = (gate.stages.config.policy.watch_interval_ms > 0).then(|| {
        tokio::spawn(watch_files(
            gate.clone(),
            Duration::from_millis(gate.stages.config.policy.watch_interval_ms),
        ))
    });
    let mut stops = Stops::listen().map_err(|e| startup(&e))?;
    // From here a stop signal is a graceful stop (`stops`), no longer an exit at once.
    STARTING.store(false, std::sync::atomic::Ordering::SeqCst);
    // SIGUSR1 and SIGUSR2 mean nothing to hubgate, and their default action ends the process
    // at once: no drain, and a request forwarded at that moment (Security Hub may apply it)
    // never recorded. Sent by habit (a logrotate `postrotate` that tells nginx to reopen its
    // logs, a supervisor's "reopen" or "dump" action), they are logged and otherwise ignored.
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| startup(&e))?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(|e| startup(&e))?;
    // Each connection holds a receiver while it is served: a stop sends on it (each connection
    // shuts down gracefully) and then waits until every receiver is gone.
    let (graceful, _) = tokio::sync::watch::channel(());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timer needs a timer to run at all. It starts when hyper begins to
    // wait for a head, idle time included, so it is set to idle + header: a backstop behind
    // each connection's clock (server::conn), which keeps the two waits apart.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(
            config_server.idle_timeout_ms + config_server.header_read_timeout_ms
        ))
        .max_buf_size(H1_MAX_BUFFER);
    // h2: one connection may not open more streams than this at once (each holds an in-flight
    // permit while it runs), and a peer that stops answering pings is dropped with its streams.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(H2_KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let connections = Arc::new(Semaphore::new(config_server.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    if EARLY_HANGUP.swap(false, std::sync::atomic::Ordering::SeqCst) {
        tracing::info!("a SIGHUP came while hubgate started; reloading");
        ask_reload(&gate);
    }

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Responses are written as head then body; don't let Nagle hold the body back.
                let _ = stream.set_nodelay(true);
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    refuse_connection(&gate, &builder, &refusing, stream);
                    continue;
                };
                gate.stages.metrics.connections_open.inc();
                let slot = ConnectionSlot { _permit: permit, open: gate.stages.metrics.connections_open.clone() };
                let gate = gate.clone();
                let builder = builder.clone();
                let mut stop = graceful.subscribe();
                tokio::spawn(async move {
                    let _slot = slot;
                    let Some(tls) = gate.tls.as_ref() else {
                        serve_connection(&builder, stop, stream, gate, remote, None).await;
                        return;
                    };
                    let accepting = tls.accepting();
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting.acceptor().accept(stream));
                    let handshaken = tokio::select! {
                        handshaken = handshake => handshaken,
                        // A stop waits for the requests under way, and a connection still in its
                        // handshake has none: a client that connected and sent nothing (no key,
                        // no certificate needed) held every graceful stop for the handshake
                        // timeout, or past a shorter shutdown_grace_ms into the halt.
                        _ = stop.changed() => {
                            tracing::debug!(%remote, "stopping: handshake abandoned");
                            return;
                        }
                    };
                    match handshaken {
                        Ok(Ok(stream)) => {
                            let peer = accepting.peer(stream.get_ref().1, std::time::SystemTime::now());
                            serve_connection(&builder, stop, stream, gate, remote, peer).await;
                        }
                        Ok(Err(e)) => {
                            let reason = tls::failure_reason(&e);
                            gate.stages.metrics.tls_handshake_failures.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
                            tracing::info!(%remote, reason, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            gate.stages.metrics.tls_handshake_failures.get_or_create(&ReasonLabels { reason: "timeout".to_string() }).inc();
                            tracing::info!(%remote, "TLS handshake timed out");
                        }
                    }
                });
            }
            _ = hup.recv() => {
                // The accept loop goes on meanwhile.
                ask_reload(&gate);
            }
            _ = usr1.recv() => ignored_signal("SIGUSR1"),
            _ = usr2.recv() => ignored_signal("SIGUSR2"),
            _ = stops.recv() => break,
        }
    }

    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: draining in-flight requests"
    );
    drop(listener);
    // The admin listener serves on through the drain: a load balancer that probes /readyz
    // must see this replica leave now. It answered 200 (ready) while the proxy port refused
    // every connection, so new requests kept being sent here for as long as the drain lasted.
    gate.stopping
        .store(true, std::sync::atomic::Ordering::Release);
    let stop_by = tokio::time::Instant::now() + grace;
    // Requests whose client went away run on in their own tasks (for their audit records):
    // every in-flight permit back means every such request has finished.
    let in_flight = gate.stages.in_flight.clone();
    let max_in_flight = gate.stages.config.server.max_in_flight as u32;
    let drain = async move {
        let _ = graceful.send(());
        graceful.closed().await;
        let _all = in_flight.acquire_many(max_in_flight).await;
    };
    tokio::select! {
        drained = tokio::time::timeout_at(stop_by, drain) => {
            if drained.is_err() {
                if let Some(coord) = &coordination {
                    coord.cut_off(HALT_REDIS);
                }
                halt(&gate, &mut stops).await;
            }
        }
        // An operator who signals twice wants out now, drained or not.
        _ = stops.recv() => second_signal(),
    }
    // The lookups still running end with the runtime: their claims would hold the other
    // replicas' lookups of those findings off for lookup_claim_ms (within op_timeout_ms).
    // Up to twice op_timeout_ms (the claims being taken, then the release): a second signal
    // still exits at once, as everywhere else in the stop.
    if let Some(coord) = gate.stages.pacer.coordination() {
        tokio::select! {
            () = crate::coordination::cache::release_all(coord) => {}
            _ = stops.recv() => second_signal(),
        }
    }
    admin_task.abort();
    // The writer's last records take up to WRITER_FINISH (a sink that takes no writes): a
    // second signal then still exits at once. It went unheard there, and hubgate ended 5 s
    // later whatever the operator asked.
    tokio::select! {
        finished = finish_audit(gate, writer, watch_task) => finished?,
        _ = stops.recv() => second_signal(),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Closes the audit log once the requests are done: the writer takes what was queued, flushes
/// and fsyncs, within WRITER_FINISH.
async fn finish_audit(
    gate: Arc<Gate>,
    writer: crate::audit::AuditWriter,
    watch_task: Option<tokio::task::JoinHandle<()>>,
) -> Result<(), ServeError> {
    // One bound for closing the queue and for the writer to finish: closing takes a place in
    // the queue, and with a sink that takes no writes (a reader that stopped reading) the
    // queue stays full: the stop waited there for good, a SIGTERM never ended hubgate.
    let writer_by = tokio::time::Instant::now() + WRITER_FINISH;
    let queued = gate.stages.audit.queue_depth();
    let closed = tokio::time::timeout_at(writer_by, gate.stages.audit.close())
        .await
        .is_ok();
    if let Some(task) = watch_task {
        task.abort();
    }
    drop(gate);
    // The writer drains what was queued before close, flushes, fsyncs and ends.
    let flushed = tokio::task::spawn_blocking(move || writer.finish());
    let finished = match closed {
        true => tokio::time::timeout_at(writer_by, flushed).await.ok(),
        false => None,
    };
    match finished {
        Some(Ok(Ok(()))) => {}
        // Said on stderr and in the exit status, as below: the log is not whole.
        Some(Ok(Err(lost))) => return Err(lost.into()),
        Some(Err(_)) | None => {
            // Said on stderr and in the exit status: a supervisor sees a stop that lost records.
            tracing::error!(
                queued,
                "the audit writer did not finish; the records still queued were not written"
            );
            return Err(ServeError::AuditUnfinished { queued });
        }
    }
    Ok(())
}

/// How long the requests still in hubgate when the grace period runs out have to end and be
/// recorded: each evicts what it may have written (a Redis call at most) and waits for its
/// record to be written, which the writer, still running, does at once.
const HALT_WAIT: Duration = Duration::from_secs(3);

/// How long after the halt Redis calls may still run (`Coordination::cut_off`): the evictions
/// of the forwards it interrupts, well within HALT_WAIT, so that their records are written.
const HALT_REDIS: Duration = Duration::from_secs(1);

/// The grace period ran out: the requests still in hubgate are ended (`proxy::Halt`), each
/// with its record, before the audit log is closed; then the remaining connections are closed
/// with the runtime.
async fn halt(gate: &Gate, stops: &mut Stops) {
    let halt = &gate.stages.halt;
    tracing::warn!(
        unrecorded = halt.unrecorded(),
        "grace period over; ending the requests still in hubgate (each is recorded) and \
         closing the remaining connections"
    );
    halt.halt();
    tokio::select! {
        ended = tokio::time::timeout(HALT_WAIT, halt.all_recorded()) => {
            if ended.is_err() {
                tracing::error!(
                    unrecorded = halt.unrecorded(),
                    "requests did not end within {} ms of the halt; those forwarded are \
                     recorded if they end while the audit writer finishes (else the stop exits \
                     1), the others have no audit record",
                    HALT_WAIT.as_millis()
                );
            }
        }
        _ = stops.recv() => second_signal(),
    }
}

/// What the watched files look like: names and each file's identity (device, inode, size,
/// modification and change times; see `FileId`). Kubernetes swaps ConfigMap contents through
/// symlinks, so paths are followed (`metadata`, not `symlink_metadata`).
fn fingerprint(gate: &Gate) -> Fingerprint {
    // Of the policy folder, what a set can be made of: `.rego` and `.json` files (rules,
    // data.json, schemas), hidden entries left out as `policy::list_files` leaves them. Every
    // file used to count, so an audit log or a note kept beside the policies changed the
    // fingerprint with every write, and the set was reloaded every watch interval under
    // traffic; a ConfigMap's swap still shows through its visible links.
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_none_or(|n| n.starts_with('.'));
                if hidden {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rego" || e == "json") {
                    out.push(path);
                }
            }
        }
    }
    // The configuration file is not reloaded, but a change to it is reported (`config_drift`).
    let mut paths = vec![
        gate.stages.config.identity.callers.clone(),
        gate.stages.config.file.clone(),
    ];
    // A secret rotated (or revoked) by rewriting its secret_file is a change to the callers.
    paths.extend_from_slice(gate.stages.identity.load().secret_files());
    if let Some(tls) = &gate.tls {
        paths.extend(tls.files());
    }
    walk(&gate.stages.config.policy.dir, &mut paths);
    paths.sort();
    crate::files::seen(paths)
}

/// How long the watched files must look the same before a change is reloaded. A file written
/// in place (an editor, a shell's `>`, Python's `write_text`) is truncated first and written
/// after; a reload between the two would read an empty callers file and refuse every caller
/// until the next check (a CI run of test_keys.py caught it once).
const SETTLE: Duration = Duration::from_millis(250);

/// How many settle periods a change may keep changing before it is reloaded as it stands (the
/// next check picks up whatever follows).
const MAX_SETTLES: usize = 8;

type Fingerprint = crate::files::Seen;

async fn look(gate: &Arc<Gate>) -> Option<Fingerprint> {
    let gate = gate.clone();
    tokio::task::spawn_blocking(move || fingerprint(&gate))
        .await
        .ok()
}

/// Reloads when a watched file changes (policies, callers and their secret files, TLS, the
/// configuration), as SIGHUP does, once the change has settled.
async fn watch_files(gate: Arc<Gate>, every: Duration) {
    let mut seen = fingerprint(&gate);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(mut now) = look(&gate).await else {
            continue;
        };
        if now == seen {
            continue;
        }
        for _ in 0..MAX_SETTLES {
            tokio::time::sleep(SETTLE).await;
            match look(&gate).await {
                Some(again) if again == now => break,
                Some(again) => now = again,
                None => {}
            }
        }
        if now != seen {
            tracing::info!("policy or callers files changed; reloading");
            seen = now;
            if let Some(reloading) = ask_reload(&gate) {
                let _ = reloading.await;
            }
        }
    }
}

/// The signals that stop hubgate gracefully: SIGTERM (Kubernetes, systemd, `docker stop`),
/// SIGINT (Ctrl-C) and SIGQUIT (Ctrl-\, and the STOPSIGNAL of images that follow nginx's
/// convention). SIGQUIT's default action ended the process at once, without a drain, and a
/// request forwarded at that moment had no audit record though Security Hub may have applied
/// it. A second one of any of them during the stop exits at once.
struct Stops {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Stops {
    fn listen() -> std::io::Result<Stops> {
        Ok(Stops {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next stop signal, whichever it is.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = self.quit.recv() => {}
        }
    }
}

fn ignored_signal(name: &'static str) {
    tracing::warn!(
        signal = name,
        "signal ignored: hubgate reloads on SIGHUP and stops on SIGTERM, SIGINT or SIGQUIT"
    );
}

fn second_signal() -> ! {
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(1)
}

/// Asks for a reload that reads the files after this call (SIGHUP, a watched change). Reloads
/// run one at a time: run side by side, one started before a change (its compile slower) could
/// store the old set after one started after it, and a storm of signals compiled the set once
/// per signal, all at once. A reload already asked for and not yet started answers every
/// later ask too, since it reads the files after them; so at most one runs and one waits.
fn ask_reload(gate: &Arc<Gate>) -> Option<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    // A reload that reads a file which never answers (a hung network mount) cannot be
    // stopped, and every later one waits behind it: that used to happen without a word.
    let running = *gate.reload_began.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(began) = running.filter(|b| b.elapsed() >= RELOAD_STUCK) {
        tracing::error!(
            running_s = began.elapsed().as_secs(),
            "a reload has not finished: a file it reads does not answer (a hung mount?); \
             this reload waits for it, and the files in force are unchanged"
        );
    }
    if gate.reload_pending.swap(true, Ordering::AcqRel) {
        return None;
    }
    let gate = gate.clone();
    // Compiling policies is CPU work; keep it off the request threads.
    Some(tokio::task::spawn_blocking(move || {
        let _one = gate.reloading.lock().unwrap_or_else(|p| p.into_inner());
        gate.reload_pending.store(false, Ordering::Release);
        let _running = Running::begin(&gate.reload_began);
        reload(&gate);
    }))
}

/// Marks a reload as running from `begin` until dropped, a reload that panicked included
/// (else /readyz would report it stuck for ever).
struct Running<'a>(&'a std::sync::Mutex<Option<std::time::Instant>>);

impl<'a> Running<'a> {
    fn begin(began: &'a std::sync::Mutex<Option<std::time::Instant>>) -> Running<'a> {
        *began.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        Running(began)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// How long a reload runs before a later ask says it is stuck. Compiling the shipped set takes
/// well under a second; a large one, a few.
const RELOAD_STUCK: Duration = Duration::from_secs(5);

/// Re-reads the callers file and the policy set; a broken new version keeps the old one and
/// says why on /readyz, in the log and in the reload-failure metric.
fn reload(gate: &Gate) {
    let mut errors = Vec::new();
    let config = &gate.stages.config;
    // A demo key (public secret) is refused on reload as at start: added to a running
    // hubgate's callers file, it used to be taken in, and its public secret to act as its caller.
    let loaded = Identity::load(
        &config.identity,
        &config.upstream.region,
        config.passthrough(),
    )
    .map_err(|e| e.to_string())
    .and_then(|identity| {
        identity
            .refuse_demo_keys(&config.identity.callers, &config.upstream_uri)
            .map_err(|e| e.to_string())?;
        Ok(identity)
    });
    match loaded {
        Ok(identity) => {
            let n = identity.caller_count();
            gate.stages.identity.store(Arc::new(identity));
            tracing::info!(callers = n, "callers reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "callers reload failed; keeping the previous callers");
            errors.push(e);
        }
    }
    // Before the policy set, whose compile can take seconds: a reload that revokes a client CA
    // or a caller must not wait for it.
    let mut tls_failed = false;
    if let Some(tls) = &gate.tls {
        match tls.reload() {
            Ok(()) => {
                tracing::info!("TLS certificate reloaded");
                tls_loaded(tls, &gate.stages.metrics);
            }
            Err(e) => {
                // Reported by the tls check of /readyz, from Tls::last_error.
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate");
                tls_failed = true;
            }
        }
    }
    match PolicySet::load(
        &gate.stages.config.policy.dir,
        Duration::from_millis(gate.stages.config.policy.eval_timeout_ms),
    )
    .and_then(|p| p.covers(&gate.stages.config).map(|()| p))
    {
        Ok(policy) => {
            let revision = policy.revision.clone();
            let changed = revision != gate.stages.policy.load().revision;
            gate.stages.policy.store(Arc::new(policy));
            gate.stages.metrics.set_revision(&revision);
            if changed {
                tracing::info!(%revision, "policies reloaded");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "policy reload failed; keeping the previous policy set");
            errors.push(e.to_string());
        }
    }
    // Success means every part loaded: set on the policies' success alone, a failed callers
    // file or certificate left both times equal, and the alert "failure newer than success"
    // never fired for them.
    if errors.is_empty() && !tls_failed {
        gate.stages.metrics.reload_success_time.set(unix_now());
    } else {
        gate.stages.metrics.reload_failure_time.set(unix_now());
    }
    config_drift(gate);
    let previous = std::mem::replace(
        &mut *gate
            .last_reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
        (!errors.is_empty()).then(|| errors.join("; ")),
    );
    log_recovery(previous.as_deref(), errors.is_empty());
}

/// Puts the loaded certificates' expiries in /metrics and logs what they cannot do now.
fn tls_loaded(tls: &tls::Tls, metrics: &Metrics) {
    let expiries = tls.expiries();
    for (certificate, at) in [
        ("serving", expiries.serving),
        ("client_ca", expiries.client_ca),
    ] {
        if let Some(at) = at {
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            metrics
                .tls_not_after
                .get_or_create(&crate::metrics::CertificateLabels { certificate })
                .set(secs);
        }
    }
    for caution in tls.cautions(std::time::SystemTime::now()) {
        tracing::warn!(%caution, "a TLS certificate in force cannot do its job");
    }
}

/// The configuration file is not reloaded. A reload says which of its settings changed on disk
/// (names only: values can be secrets), in the log, on /readyz and in a metric, so that an
/// edit that needs a restart (`policy.mode`, a listener, the audit sink) is not taken for one
/// in force.
fn config_drift(gate: &Gate) {
    let config = &gate.stages.config;
    let changed = match std::fs::read_to_string(&config.file) {
        Ok(text) => config.source.changed_settings(&text),
        Err(e) => vec![format!("(the file cannot be read: {})", e.kind())],
    };
    if !changed.is_empty() {
        tracing::warn!(
            file = %config.file.display(),
            settings = %changed.join(", "),
            "the configuration file has changed since hubgate started; a reload does not apply it: restart hubgate to apply these settings"
        );
    }
    gate.stages
        .metrics
        .config_restart_needed
        .set(i64::from(!changed.is_empty()));
    *gate
        .config_changed
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = changed;
}

/// After a failed reload, the first good one says so: whoever watched the error sees it end.
fn log_recovery(previous_error: Option<&str>, ok: bool) {
    if let (Some(previous), true) = (previous_error, ok) {
        tracing::info!(
            previous_error = previous,
            "reload succeeded; the previous reload error is resolved and /readyz is no longer stale"
        );
    }
}

/// Admin connections open at once. Probes and scrapers use one or two each; past this many, a
/// new one is closed at accept. Without a cap, anyone who could reach the admin port (the pod
/// network, in the Kubernetes manifests) could open connections until the process ran out of
/// file descriptors, after which the proxy listener could accept nothing either.
const ADMIN_MAX_CONNECTIONS: usize = 64;

async fn serve_admin(listener: TcpListener, gate: Arc<Gate>) {
    // HTTP/1 only: probes and scrapers speak it, and an h2 connection would bring streams,
    // windows and pings that nothing on this port needs.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    // hyper's own header timer as a backstop behind each connection's clock (below), as on
    // the proxy listener; left unset, hyper's default (30 s) would cut a longer configured one.
    let header_ms = gate.stages.config.server.header_read_timeout_ms;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(header_ms.saturating_mul(2)));
    let open = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            gate.stages
                .metrics
                .connections_refused
                .get_or_create(&KindLabels {
                    kind: "admin".to_string(),
                })
                .inc();
            continue;
        };
        let gate = gate.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The proxy's per-connection clock, with the header-read timeout as the idle one
            // too: a connection that sends nothing, or keeps a request head coming slowly, or
            // does not read its answer, is closed. hyper's own header timer never sees a
            // connection that has sent no byte (hyper-util reads the first bytes with no timer).
            let server = &gate.stages.config.server;
            let clock = conn::Clock::new(
                ms(server.header_read_timeout_ms),
                ms(server.header_read_timeout_ms),
                ms(server.response_send_timeout_ms),
            );
            let io = TokioIo::new(conn::ClockedIo::new(stream, clock.clone()));
            let requests = clock.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let (guard, _, _) = requests.request_started(None);
                let gate = gate.clone();
                async move {
                    let response = admin(&gate, &req).await;
                    guard.sending();
                    Ok::<_, Infallible>(response.map(|body| proxy::Held::new(body, guard)))
                }
            });
            tokio::select! {
                _ = builder.serve_connection(io, service) => {}
                // Dropping the connection closes the socket.
                _ = clock.expired() => {}
            }
        });
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn admin(gate: &Gate, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let json_response = |status: StatusCode, body: serde_json::Value| {
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
        ("GET", "/readyz") => {
            let (ready, checks) = readiness(gate).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = json!({"ready": ready, "checks": checks});
            if let Some(coord) = gate.stages.pacer.coordination() {
                body["coordination"] = json!(coord.status().0);
            }
            json_response(status, body)
        }
        ("GET", "/metrics") => {
            if let Some(enricher) = &gate.stages.enricher {
                enricher.sample_metrics();
            }
            gate.stages
                .metrics
                .audit_queue_depth
                .set(gate.stages.audit.queue_depth() as i64);
            for (operation, pace) in gate.stages.pacer.slowed() {
                gate.stages
                    .metrics
                    .quota_pace
                    .get_or_create(&crate::metrics::OperationLabels {
                        operation: operation.into(),
                    })
                    .set(pace);
            }
            let free = gate.stages.in_flight.available_permits();
            gate.stages
                .metrics
                .requests_in_flight
                .set(gate.stages.config.server.max_in_flight.saturating_sub(free) as i64);
            let mut resp = Response::new(Full::new(Bytes::from(gate.stages.metrics.render())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// Ready means: a policy set is loaded (and the last reload did not fail), the audit sink takes
/// records, and hubgate can get credentials to sign upstream calls.
async fn readiness(gate: &Gate) -> (bool, serde_json::Value) {
    let revision = gate.stages.policy.load().revision.clone();
    let reload_error = gate
        .last_reload_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let config_changed = gate
        .config_changed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // A reload stuck on a file that never answers leaves whatever is on disk unapplied, as
    // a failed one does.
    let reload_stuck_s = gate
        .reload_began
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .filter(|began| began.elapsed() >= RELOAD_STUCK)
        .map(|began| began.elapsed().as_secs());
    let audit_ok = gate.stages.audit.is_healthy();
    let credentials = tokio::time::timeout(
        Duration::from_secs(2),
        gate.stages.upstream.credentials_available(),
    )
    .await;
    let (credentials_ok, credentials_error) = match credentials {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (
            false,
            Some("resolving credentials took longer than 2 s".to_string()),
        ),
    };
    // A failed reload leaves the last good set serving: the replica stays ready (turning every
    // replica unready over one bad commit would be an outage) and says what failed. So policy
    // and TLS report `ok: true` always, and only audit and credentials decide readiness.
    let mut checks = json!({
        "policy": {
            "ok": true,
            "revision": revision,
            "stale": reload_error.is_some() || reload_stuck_s.is_some(),
            "last_reload_error": reload_error,
            "reload_running_s": reload_stuck_s,
        },
        "audit": {"ok": audit_ok},
        "upstream_credentials": {"ok": credentials_ok, "error": credentials_error},
        // Never fails: the settings in force still serve.
        "config": {"ok": true, "restart_needed": !config_changed.is_empty(), "changed_settings": config_changed},
    });
    if let Some(tls) = &gate.tls {
        let error = tls
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // As with policies, the previous certificate keeps serving.
        checks["tls"] = json!({"ok": true, "stale": error.is_some(), "last_reload_error": error});
    }
    let stopping = gate.stopping.load(std::sync::atomic::Ordering::Acquire);
    if stopping {
        checks["stopping"] = json!({"ok": false});
    }
    if let Some(coord) = gate.stages.pacer.coordination() {
        // Degraded is still ready: the replica paces to its fallback share and judges with
        // its local cache, so taking it out of the Service would only shed capacity.
        let (state, error) = coord.status();
        checks["coordination"] = json!({
            "ok": true,
            "state": state,
            "redis": coord.display_url(),
            "last_error": error,
        });
    }
    (audit_ok && credentials_ok && !stopping, checks)
}
