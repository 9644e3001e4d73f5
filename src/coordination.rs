//! Coordination: what hubgate replicas share through Redis (`[coordination] redis_url`): the
//! account's upstream quota, paced by one GCRA bucket per operation (`pacing`), and the
//! finding-state cache with cross-replica single-flight lookups (`cache`). It owns the Redis
//! connection, bounds every call to it, and decides when a replica is on its own: while Redis
//! is unreachable or slow the replica paces to its fallback share and uses its local cache,
//! says so in /readyz and /metrics, and rejoins when a probe gets through.

pub mod cache;
pub mod pacing;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{Config, CoordinationConfig};
pub use crate::metrics::CoordinationMetrics;
use crate::metrics::OpLabels;

#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error("coordination.redis_url ({url}) is not usable: {reason}")]
    Url { url: String, reason: String },
    #[error("coordination.redis_password_env names {0}, which is not set or is empty")]
    PasswordEnv(String),
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// The shared state's handle: one per replica.
pub struct Coordination {
    manager: ConnectionManager,
    healthy: AtomicBool,
    /// A write this replica forwarded did not reach the shared cache: before it trusts the
    /// shared cache again it must invalidate it (a new generation).
    dirty: AtomicBool,
    op_timeout: Duration,
    probe_interval: Duration,
    pub(crate) lookup_claim: Duration,
    prefix: String,
    quota_scope: String,
    /// upstream.region: with the caller's account, names the quota a passthrough forward
    /// spends (`pacing::bucket_key`).
    region: String,
    /// Redis without its password, for logs and /readyz.
    display_url: String,
    last_error: Mutex<Option<String>>,
    metrics: CoordinationMetrics,
    /// Run when the replica falls back (the local cache forgets what other replicas' writes
    /// may have made stale while it relied on the shared one).
    on_fallback: Mutex<Vec<Hook>>,
    /// Woken each time the replica joins (or rejoins) Redis.
    rejoined: tokio::sync::Notify,
    /// The marker (`P:epoch`) this replica last found in Redis. A Redis that was flushed, or
    /// restarted without its data, has lost it: what the replicas shared (the settle journal
    /// above all) is gone, though no call failed.
    epoch: Mutex<Option<String>>,
    /// Redis's count of keys it evicted (`INFO stats`), as this replica's last probe that got
    /// an answer found it; None before the first, or when Redis does not say.
    evicted: Mutex<Option<String>>,
    /// Set at a stop's halt (`cut_off`): no Redis call runs past this instant.
    cut_off: std::sync::OnceLock<tokio::time::Instant>,
    /// The lookup claims this replica holds (`cache::Claims`): released when their lookup
    /// ends, however it ends, and all at once when the replica stops.
    pub(crate) claims: cache::Claims,
}

/// The probe: returns Redis's marker, setting one when there is none (a new or emptied Redis).
/// It writes the marker every time, so that a Redis that answers but takes no writes (full
/// under `noeviction`, a read-only replica after a failover, an ACL) fails the probe: rejoined,
/// the replica would fall back at its next write, over and over. It also returns Redis's count
/// of evicted keys ('' when INFO is refused, by an ACL for instance): a Redis whose
/// maxmemory-policy evicts may have dropped any of the replicas' keys, which every one of them
/// has a TTL for, so a volatile-* policy (ElastiCache's default) picks them first. Read after
/// the write, which Redis before 5 refuses after a non-deterministic command.
const EPOCH: &str = r#"
local v = redis.call('GET', KEYS[1]) or ARGV[1]
redis.call('SET', KEYS[1], v)
local ok, info = pcall(redis.call, 'INFO', 'stats')
local evicted = ok and type(info) == 'string' and string.match(info, 'evicted_keys:(%d+)')
return {v, evicted or ''}
"#;

fn epoch_script() -> &'static redis::Script {
    static S: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    S.get_or_init(|| redis::Script::new(EPOCH))
}

/// `scheme://host:port/db`, never the user or password.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{host}")
}

/// The Redis client of `[coordination]` (the URL with the password of `redis_password_env`),
/// without connecting: what `serve` refuses to start without, and `hubgate check` checks.
/// None when `redis_url` is not set.
pub fn client(c: &CoordinationConfig) -> Result<Option<redis::Client>, CoordinationError> {
    let Some(url) = &c.redis_url else {
        return Ok(None);
    };
    let bad = |reason: String| CoordinationError::Url {
        url: redacted(url),
        reason,
    };
    let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|e| bad(format!("{:?}", e.kind())))?;
    if let Some(var) = &c.redis_password_env {
        let password = std::env::var(var)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| CoordinationError::PasswordEnv(crate::config::shown_env_name(var)))?;
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
        .map(Some)
        .map_err(|e| bad(format!("{:?}", e.kind())))
}

impl Coordination {
    /// None when `[coordination] redis_url` is not set. Does not wait for Redis: a replica
    /// whose Redis is down starts on its own and joins when it can reach it.
    pub fn start(
        config: &Config,
        metrics: CoordinationMetrics,
    ) -> Result<Option<Arc<Coordination>>, CoordinationError> {
        let c = &config.coordination;
        let (Some(client), Some(url)) = (client(c)?, &c.redis_url) else {
            return Ok(None);
        };
        let display_url = redacted(url);
        let op_timeout = Duration::from_millis(c.op_timeout_ms);
        // Reconnects are the probe's job, at its own interval: the manager's own retries
        // would hold a request's Redis call past op_timeout.
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(op_timeout));
        let manager =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| {
                CoordinationError::Url {
                    url: display_url.clone(),
                    reason: format!("{:?}", e.kind()),
                }
            })?;
        let quota_scope = c.quota_scope.clone().unwrap_or_else(|| {
            format!(
                "{}|{}",
                config.upstream.endpoint.trim_end_matches('/'),
                config.upstream.region
            )
        });
        metrics.up.set(0);
        Ok(Some(Arc::new(Coordination {
            manager,
            healthy: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            op_timeout,
            probe_interval: Duration::from_millis(c.probe_interval_ms),
            lookup_claim: Duration::from_millis(c.lookup_claim_ms),
            prefix: c.key_prefix.clone(),
            quota_scope,
            region: config.upstream.region.clone(),
            display_url,
            last_error: Mutex::new(Some("not connected yet".into())),
            metrics,
            on_fallback: Mutex::new(Vec::new()),
            rejoined: tokio::sync::Notify::new(),
            epoch: Mutex::new(None),
            evicted: Mutex::new(None),
            cut_off: std::sync::OnceLock::new(),
            claims: cache::Claims::default(),
        })))
    }

    /// Probes Redis until the process ends: the first probe runs now, so a replica whose
    /// Redis is up serves shared from its first request.
    pub async fn run_probe(self: Arc<Self>) {
        loop {
            self.probe().await;
            tokio::time::sleep(self.probe_interval).await;
        }
    }

    /// One probe: joins (or rejoins) when Redis answers, falls back when it does not, and
    /// falls back (to rejoin at the next probe) when Redis has lost what the replicas shared.
    pub async fn probe(&self) {
        let mut con = self.manager.clone();
        let key = format!("{}:epoch", self.prefix);
        let started = std::time::Instant::now();
        let ping = tokio::time::timeout(
            self.op_timeout.max(Duration::from_millis(250)),
            epoch_script()
                .key(key)
                .arg(cache::new_tag())
                .invoke_async::<(String, String)>(&mut con),
        )
        .await;
        match ping {
            Ok(Ok((epoch, evicted))) => {
                let known = self
                    .epoch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(epoch.clone());
                if known.is_some_and(|k| k != epoch) {
                    // Flushed, or restarted empty between two calls, so that no call failed:
                    // the replica falls back and rejoins at once, which makes it share its
                    // settle journal again (the fallback hooks).
                    self.fail(
                        "probe",
                        "Redis lost the replicas' shared state (flushed or restarted)",
                    );
                }
                let evicted_before = self
                    .evicted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(evicted.clone());
                if !evicted.is_empty()
                    && evicted_before.is_some_and(|e| !e.is_empty() && e != evicted)
                {
                    // Keys went that no call saw go: a settle journal entry (another replica
                    // then judged a member's lowering without the administrator's raise),
                    // a write count (a lookup read before a write could be stored over it),
                    // a retirement mark. As after a flush the replica falls back, so that it
                    // shares its journal again when it rejoins, and it retires the shared
                    // cache then; it rejoins only once a probe finds no new eviction, so a
                    // Redis that keeps evicting keeps it on its own rather than flapping.
                    self.mark_dirty();
                    self.fail(
                        "probe",
                        "Redis evicted keys since the last probe, so what the replicas shared \
                         may be gone: its maxmemory-policy must be noeviction",
                    );
                    return;
                }
                if self.healthy() {
                    return;
                }
                // The probe may take longer than a call (it may have to connect first), but a
                // Redis that answers it more slowly than calls may take would make the replica
                // fall back at its next call, over and over: it stays on its own until the
                // probe is as quick as a call.
                let took = started.elapsed();
                if took > self.op_timeout {
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                        "probe: answered in {} ms, slower than op_timeout_ms",
                        took.as_millis()
                    ));
                    return;
                }
                // Writes forwarded while this replica was on its own never reached the
                // shared cache; entries other replicas left there may be stale. A new
                // generation retires all of them before this replica trusts it again.
                if self.dirty.load(Ordering::Acquire) {
                    let bumped = tokio::time::timeout(
                        self.op_timeout.max(Duration::from_millis(250)),
                        cache::new_generation(&mut con, &self.prefix),
                    )
                    .await;
                    if !matches!(bumped, Ok(Ok(_))) {
                        return;
                    }
                    self.dirty.store(false, Ordering::Release);
                }
                self.healthy.store(true, Ordering::Release);
                self.rejoined.notify_waiters();
                self.metrics.up.set(1);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(redis = %self.display_url, "coordination: sharing quota and cache through Redis");
            }
            Ok(Err(e)) => self.fail("probe", &e.to_string()),
            Err(_) => self.fail("probe", "timed out"),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// For /readyz: ("ok" | "degraded", the last error while degraded).
    pub fn status(&self) -> (&'static str, Option<String>) {
        if self.healthy() {
            ("ok", None)
        } else {
            (
                "degraded",
                self.last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            )
        }
    }

    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    pub fn metrics(&self) -> &CoordinationMetrics {
        &self.metrics
    }

    /// Registers what to run when the replica falls back to its own state.
    pub fn on_fallback(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.on_fallback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(hook));
    }

    /// Notified each time the replica joins or rejoins Redis: for what it could not share
    /// while it was on its own.
    pub fn rejoined(&self) -> &tokio::sync::Notify {
        &self.rejoined
    }

    /// `call` for a write the other replicas must learn of: when it fails, this replica is
    /// marked, so that it retires the shared cache when it rejoins.
    pub(crate) async fn call_write<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let done = self.call(op, f).await;
        if done.is_none() {
            self.mark_dirty();
        }
        done
    }

    /// A forwarded write could not update the shared cache.
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    fn fail(&self, op: &'static str, reason: &str) {
        self.metrics
            .errors
            .get_or_create(&OpLabels { op: op.into() })
            .inc();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{op}: {reason}"));
        if self.healthy.swap(false, Ordering::AcqRel) {
            self.metrics.up.set(0);
            self.metrics.fallbacks.inc();
            tracing::warn!(
                redis = %self.display_url,
                op,
                reason,
                "coordination: Redis unreachable or slow; pacing to the fallback share and using the local cache"
            );
            for hook in self
                .on_fallback
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                hook();
            }
        }
    }

    /// Runs one Redis call within op_timeout. None: Redis is not in use right now (this
    /// replica is on its own, or the call just failed and it fell back).
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.healthy() {
            return None;
        }
        self.call_regardless(op, f).await
    }

    /// `call`, also while this replica is on its own: for a stop's release of its claims. A
    /// call that took longer than op_timeout_ms a moment before (a loaded machine) made the
    /// replica fall back until its next probe, and a stop then released nothing: the other
    /// replicas waited its claims out. Redis may well answer; if not, this fails within
    /// op_timeout_ms as any call does.
    pub(crate) async fn call_regardless<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let by = tokio::time::Instant::now() + self.op_timeout;
        let by = self.cut_off.get().map_or(by, |cut_off| by.min(*cut_off));
        match tokio::time::timeout_at(by, f(self.manager.clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.fail(op, &e.to_string());
                None
            }
            Err(_) => {
                self.fail(op, "timed out");
                None
            }
        }
    }

    /// A stop's grace period has run out: the requests still in hubgate must end and be
    /// recorded within the halt's few seconds, and a forward interrupted there evicts its
    /// findings through Redis first. With a Redis that hangs, each of those calls waited its
    /// whole op_timeout_ms (up to 60 s, and an eviction makes several): the stop gave up on
    /// the request before its record was written, though Security Hub may have applied it.
    /// From `within` on, every call fails at once (as a timeout: the replica falls back, and
    /// a write not shared marks it dirty, as any failed call does).
    pub(crate) fn cut_off(&self, within: Duration) {
        let _ = self.cut_off.set(tokio::time::Instant::now() + within);
    }

    /// The longest a Redis call may take.
    pub(crate) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn quota_scope(&self) -> &str {
        &self.quota_scope
    }

    pub(crate) fn region(&self) -> &str {
        &self.region
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A redis-server for unit tests of any module that shares through Redis.
    use super::*;

    /// A redis-server of the test's own on a free 127.0.0.1 port, killed on drop. Without
    /// redis-server the test fails (HUBGATE_ALLOW_SKIP=1 makes it pass vacuously locally).
    pub(crate) struct Server(std::process::Child, pub(crate) u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub(crate) fn redis_server() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if std::env::var_os("HUBGATE_ALLOW_SKIP").is_some() => {
                eprintln!("skipped: redis-server: {e}");
                return None;
            }
            Err(e) => panic!("redis-server is needed (apt-get install redis-server): {e}"),
        };
        let server = Server(child, port);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on {port}");
    }

    /// A coordination of this test's own on `server`, not yet probed.
    pub(crate) fn coordination_on(server: &Server) -> Arc<Coordination> {
        let config = Config::parse(
            std::path::Path::new("/tmp/hubgate-test.toml"),
            &format!(
                "[coordination]\nredis_url = \"redis://127.0.0.1:{}/0\"\nop_timeout_ms = 500\n",
                server.1
            ),
        )
        .unwrap();
        Coordination::start(&config, CoordinationMetrics::default())
            .unwrap()
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{coordination_on, redis_server};
    use super::*;
    use crate::coordination::cache::{self, Claim, Looked, ToStore, ToWrite};
    use crate::finding::FindingKey;
    use crate::policy::state::CurrentFinding;

    fn finding(label: &str) -> Arc<CurrentFinding> {
        Arc::new(CurrentFinding::new(
            "f1",
            "arn:p",
            &serde_json::json!({"AwsAccountId": "222222222222", "Severity": {"Label": label},
                                "Workflow": {"Status": "NEW"}}),
        ))
    }

    fn label(state: &Option<Arc<CurrentFinding>>) -> String {
        let entry = &state.as_ref().expect("a finding").entry;
        entry["severity_label"]
            .as_string()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// A Redis that evicted keys since the last probe may have dropped any the replicas
    /// shared: the replica falls back, stays on its own while evictions go on, and rejoins
    /// after a probe that finds none, retiring the shared cache (a new generation) as it does.
    #[tokio::test]
    async fn a_probe_that_finds_keys_evicted_falls_back_until_evictions_stop() {
        let Some(server) = redis_server() else {
            return;
        };
        let coord = coordination_on(&server);
        coord.probe().await;
        assert!(coord.healthy(), "{:?}", coord.status());
        let mut con = coord.manager.clone();
        let set = |k: String| redis::cmd("SET").arg(k).arg(vec![b'x'; 100_000]).to_owned();
        let _: () = set("big:0".into()).query_async(&mut con).await.unwrap();
        let used: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut con)
            .await
            .unwrap();
        let used: u64 = used
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        for (k, v) in [
            ("maxmemory-policy", "allkeys-lru".to_string()),
            ("maxmemory", (used + 50_000).to_string()),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query_async(&mut con)
                .await
                .unwrap();
        }
        // each big key written now evicts another
        let _: () = set("big:1".into()).query_async(&mut con).await.unwrap();
        coord.probe().await;
        assert!(!coord.healthy());
        assert!(coord.status().1.unwrap().contains("evicted keys"));
        let _: () = set("big:2".into()).query_async(&mut con).await.unwrap();
        coord.probe().await;
        assert!(!coord.healthy(), "rejoined while Redis was still evicting");
        let generation: Option<i64> = redis::cmd("GET")
            .arg("hubgate:gen")
            .query_async(&mut con)
            .await
            .unwrap();
        coord.probe().await;
        assert!(coord.healthy(), "{:?}", coord.status());
        let after: i64 = redis::cmd("GET")
            .arg("hubgate:gen")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            after,
            generation.unwrap_or(0) + 1,
            "the shared cache was not retired"
        );
    }

    /// After a stop's halt no Redis call outlives the cut-off, whatever op_timeout_ms says:
    /// a call Redis does not answer (a BLPOP on an empty list) ends at the cut-off.
    #[tokio::test]
    async fn no_call_runs_past_the_halts_cut_off() {
        let Some(server) = redis_server() else {
            return;
        };
        let coord = coordination_on(&server);
        coord.probe().await;
        assert!(coord.healthy(), "{:?}", coord.status());
        coord.cut_off(Duration::from_millis(50));
        let started = std::time::Instant::now();
        let answered: Option<Option<Vec<String>>> = coord
            .call("blpop", |mut con| async move {
                redis::cmd("BLPOP")
                    .arg("hubgate-test:never")
                    .arg(0)
                    .query_async(&mut con)
                    .await
            })
            .await;
        assert!(answered.is_none());
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "{took:?}: past the cut-off"
        );
        assert!(!coord.healthy(), "a call cut off is a failed call");
    }

    /// A stop releases this replica's claims even while it is on its own: a call that took
    /// longer than op_timeout_ms a moment before (a loaded machine) made it fall back, and the
    /// stop released nothing, so the other replicas waited its claims out.
    #[tokio::test]
    async fn a_stop_releases_its_claims_while_on_its_own() {
        let Some(server) = redis_server() else {
            return;
        };
        let (coord, other) = (coordination_on(&server), coordination_on(&server));
        coord.probe().await;
        other.probe().await;
        let k = FindingKey::new("held-at-the-stop", "arn:p");
        let (_, mine) = cache::claim(&coord, std::slice::from_ref(&k))
            .await
            .unwrap();
        assert!(matches!(mine[0], Claim::Mine(_)));
        coord.fail("cache_claim", "timed out");
        assert!(!coord.healthy());
        cache::release_all(&coord).await;
        let (_, theirs) = cache::claim(&other, std::slice::from_ref(&k))
            .await
            .unwrap();
        assert!(
            matches!(theirs[0], Claim::Mine(_)),
            "the claim was left to expire"
        );
    }

    #[tokio::test]
    async fn scripts_against_a_real_redis() {
        let Some(server) = redis_server() else {
            return;
        };
        let coord = coordination_on(&server);
        let fell_back = Arc::new(AtomicBool::new(false));
        let flag = fell_back.clone();
        coord.on_fallback(move || flag.store(true, Ordering::SeqCst));
        coord.probe().await;
        assert!(coord.healthy(), "{:?}", coord.status());

        // GCRA: the burst at once, then one call per interval; a refusal takes nothing
        for _ in 0..3 {
            assert_eq!(pacing::take(&coord, "Op", None, 100_000, 3).await, Some(0));
        }
        let wait = pacing::take(&coord, "Op", None, 100_000, 3).await.unwrap();
        assert!(wait > 50_000 && wait <= 100_000, "{wait}");
        assert!(pacing::take(&coord, "Op", None, 100_000, 3).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_micros(wait + 5_000)).await;
        assert_eq!(pacing::take(&coord, "Op", None, 100_000, 3).await, Some(0));
        // buckets are per operation
        assert_eq!(
            pacing::take(&coord, "Other", None, 100_000, 3).await,
            Some(0)
        );
        // and per caller account for passthrough forwards: "Op" is empty for hubgate's own
        // quota, not for an account's, and one account's burst leaves another's whole
        for account in ["222222222222", "333333333333"] {
            for _ in 0..3 {
                let took = pacing::take(&coord, "Op", Some(account), 100_000, 3).await;
                assert_eq!(took, Some(0), "{account}");
            }
            let next = pacing::take(&coord, "Op", Some(account), 100_000, 3).await;
            assert!(next.is_some_and(|w| w > 0), "{account}: {next:?}");
        }

        // a claim: the first replica looks the finding up, the next one waits
        let k = FindingKey::new("f1", "arn:p");
        let (generation, claims) = cache::claim(&coord, std::slice::from_ref(&k))
            .await
            .unwrap();
        let version = match &claims[0] {
            Claim::Mine(v) => v.clone(),
            _ => panic!("the first claim is this replica's"),
        };
        let (_, again) = cache::claim(&coord, std::slice::from_ref(&k))
            .await
            .unwrap();
        assert!(matches!(again[0], Claim::Busy));
        // released by the replica holding it, not by another one (its token)
        let other = coordination_on(&server);
        other.probe().await;
        let released = FindingKey::new("released", "arn:p");
        let (g, mine) = cache::claim(&coord, std::slice::from_ref(&released))
            .await
            .unwrap();
        assert!(matches!(mine[0], Claim::Mine(_)));
        cache::release(&other, &g, std::slice::from_ref(&released)).await;
        let (_, held) = cache::claim(&other, std::slice::from_ref(&released))
            .await
            .unwrap();
        assert!(matches!(held[0], Claim::Busy), "another replica's release");
        cache::release(&coord, &g, std::slice::from_ref(&released)).await;
        let (g, theirs) = cache::claim(&other, std::slice::from_ref(&released))
            .await
            .unwrap();
        assert!(
            matches!(theirs[0], Claim::Mine(_)),
            "released by its replica"
        );
        // a stopping replica releases what it holds and claims no more
        cache::release_all(&other).await;
        assert!(cache::claim(&other, std::slice::from_ref(&released))
            .await
            .is_none());
        let (_, free) = cache::claim(&coord, std::slice::from_ref(&released))
            .await
            .unwrap();
        assert!(matches!(free[0], Claim::Mine(_)), "released at the stop");
        cache::release(&coord, &g, std::slice::from_ref(&released)).await;
        let tag = cache::new_tag();
        let stored = cache::store(
            &coord,
            &generation,
            vec![ToStore {
                key: &k,
                version: &version,
                ttl_ms: 60_000,
                value: cache::encode(&tag, Some(&finding("HIGH"))),
            }],
        )
        .await
        .unwrap();
        assert_eq!(stored, vec![true]);
        // the waiting replica now finds it, decoded as it was stored
        let (_, after) = cache::claim(&coord, std::slice::from_ref(&k))
            .await
            .unwrap();
        match &after[0] {
            Claim::Cached(t, state) => {
                assert_eq!(t, &tag);
                assert_eq!(label(state), "HIGH");
                assert_eq!(state.as_ref().unwrap().severity_rank, Some(3));
            }
            _ => panic!("stored state expected"),
        }
        // asking with the tag held: no value travels
        let looked = cache::lookup(&coord, &[(&k, Some(tag.as_str()))])
            .await
            .unwrap();
        assert!(matches!(looked[0], Looked::Same));

        // a write-through over the value it was computed from replaces it ...
        let tag2 = cache::new_tag();
        let w = cache::write(
            &coord,
            vec![ToWrite {
                key: &k,
                expected: Some(&tag),
                value: Some(cache::encode(&tag2, Some(&finding("CRITICAL")))),
            }],
        )
        .await
        .unwrap();
        assert_eq!(w, vec![true]);
        match &cache::lookup(&coord, &[(&k, None)]).await.unwrap()[0] {
            Looked::Value(t, state) => {
                assert_eq!(t, &tag2);
                assert_eq!(label(state), "CRITICAL");
            }
            _ => panic!("written-through state expected"),
        }
        // ... one computed from a value another replica has since replaced evicts instead
        let w = cache::write(
            &coord,
            vec![ToWrite {
                key: &k,
                expected: Some(&tag),
                value: Some(cache::encode(&cache::new_tag(), Some(&finding("LOW")))),
            }],
        )
        .await
        .unwrap();
        assert_eq!(w, vec![false]);
        assert!(matches!(
            cache::lookup(&coord, &[(&k, None)]).await.unwrap()[0],
            Looked::Miss
        ));

        // a write-through keeps the remaining TTL of the read it was computed from: writing
        // over a value about to expire does not keep it (or its unwritten fields) alive
        let k3 = FindingKey::new("f3", "arn:p");
        let (generation, claims) = cache::claim(&coord, std::slice::from_ref(&k3))
            .await
            .unwrap();
        let Claim::Mine(version) = &claims[0] else {
            panic!("claim expected")
        };
        let tag3 = cache::new_tag();
        let stored = cache::store(
            &coord,
            &generation,
            vec![ToStore {
                key: &k3,
                version,
                ttl_ms: 800,
                value: cache::encode(&tag3, Some(&finding("HIGH"))),
            }],
        )
        .await
        .unwrap();
        assert_eq!(stored, vec![true]);
        let w = cache::write(
            &coord,
            vec![ToWrite {
                key: &k3,
                expected: Some(&tag3),
                value: Some(cache::encode(&cache::new_tag(), Some(&finding("CRITICAL")))),
            }],
        )
        .await
        .unwrap();
        assert_eq!(w, vec![true]);
        assert!(matches!(
            cache::lookup(&coord, &[(&k3, None)]).await.unwrap()[0],
            Looked::Value(..)
        ));
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            matches!(
                cache::lookup(&coord, &[(&k3, None)]).await.unwrap()[0],
                Looked::Miss
            ),
            "the written value outlived the read it was computed from"
        );

        // a lookup that a write overtook stores nothing
        let k2 = FindingKey::new("f2", "arn:p");
        let (generation, claims) = cache::claim(&coord, std::slice::from_ref(&k2))
            .await
            .unwrap();
        let Claim::Mine(version) = &claims[0] else {
            panic!("claim expected")
        };
        cache::write(
            &coord,
            vec![ToWrite {
                key: &k2,
                expected: None,
                value: None,
            }],
        )
        .await
        .unwrap();
        let stored = cache::store(
            &coord,
            &generation,
            vec![ToStore {
                key: &k2,
                version,
                ttl_ms: 60_000,
                value: cache::encode(&cache::new_tag(), None),
            }],
        )
        .await
        .unwrap();
        assert_eq!(stored, vec![false]);

        // a new generation retires every entry, and stores of the old one are refused
        let (generation, claims) = cache::claim(&coord, std::slice::from_ref(&k2))
            .await
            .unwrap();
        let Claim::Mine(version) = &claims[0] else {
            panic!("claim expected")
        };
        cache::evict_all(&coord).await;
        let stored = cache::store(
            &coord,
            &generation,
            vec![ToStore {
                key: &k2,
                version,
                ttl_ms: 60_000,
                value: cache::encode(&cache::new_tag(), None),
            }],
        )
        .await
        .unwrap();
        assert_eq!(stored, vec![false]);

        // Redis gone: calls answer None within the timeout, the replica falls back once and
        // marks the shared cache for retirement when it rejoins
        drop(server);
        let started = std::time::Instant::now();
        assert_eq!(pacing::take(&coord, "Op", None, 100_000, 3).await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!coord.healthy() && fell_back.load(Ordering::SeqCst));
        assert_eq!(coord.status().0, "degraded");
        assert!(cache::write(
            &coord,
            vec![ToWrite {
                key: &k,
                expected: None,
                value: None
            }]
        )
        .await
        .is_none());
        assert!(coord.dirty.load(Ordering::SeqCst));
        assert_eq!(coord.metrics().up.get(), 0);
        assert_eq!(coord.metrics().fallbacks.get(), 1);
    }

    /// A write to some accounts' findings retires those accounts' shared entries only: the
    /// others', and findings cached as not found, stay; an entry read before the retirement
    /// (its lookup claimed before, stored after) is dead too; a write-through keeps the read
    /// time of the value it replaces.
    #[tokio::test]
    async fn retiring_an_account_against_a_real_redis() {
        let Some(server) = redis_server() else {
            return;
        };
        let coord = coordination_on(&server);
        coord.probe().await;
        let owned = |id: &str, account: &str| {
            Arc::new(CurrentFinding::new(
                id,
                "arn:p",
                &serde_json::json!({"AwsAccountId": account, "Severity": {"Label": "HIGH"}}),
            ))
        };
        let (a, b, gone, late) = (
            FindingKey::new("a", "arn:p"),
            FindingKey::new("b", "arn:p"),
            FindingKey::new("gone", "arn:p"),
            FindingKey::new("late", "arn:p"),
        );
        let store = |generation: String, key: FindingKey, version: String, state| {
            let coord = coord.clone();
            async move {
                let value = cache::encode(&cache::new_tag(), state);
                let item = ToStore {
                    key: &key,
                    version: &version,
                    ttl_ms: 60_000,
                    value,
                };
                cache::store(&coord, &generation, vec![item]).await.unwrap()
            }
        };
        let mine = |claims: &[Claim], i: usize| match &claims[i] {
            Claim::Mine(v) => v.clone(),
            _ => panic!("claim {i} expected"),
        };
        let keys = [a.clone(), b.clone(), gone.clone(), late.clone()];
        let (generation, claims) = cache::claim(&coord, &keys).await.unwrap();
        let fa = owned("a", "222222222222");
        let fb = owned("b", "333333333333");
        let fl = owned("late", "222222222222");
        let written = [
            store(generation.clone(), a.clone(), mine(&claims, 0), Some(&*fa)).await,
            store(generation.clone(), b.clone(), mine(&claims, 1), Some(&*fb)).await,
            store(generation.clone(), gone.clone(), mine(&claims, 2), None).await,
        ];
        assert_eq!(written, [vec![true], vec![true], vec![true]]);
        // stored after the retirement, from a lookup claimed before it
        let late_version = mine(&claims, 3);
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache::retire_accounts(&coord, &["222222222222".to_string()]).await;
        // the mark outlives an entry of the longest cache_ttl_ms any replica may run with,
        // not only this replica's
        let left: i64 = redis::cmd("PTTL")
            .arg("hubgate:ar:222222222222")
            .query_async(&mut coord.manager.clone())
            .await
            .unwrap();
        assert!(left > crate::config::MAX_TIMEOUT_MS as i64, "{left}");
        assert_eq!(
            store(generation.clone(), late.clone(), late_version, Some(&*fl)).await,
            vec![true]
        );
        let looked = cache::lookup(
            &coord,
            &[(&a, None), (&b, None), (&gone, None), (&late, None)],
        )
        .await
        .unwrap();
        assert!(
            matches!(looked[0], Looked::Miss),
            "the retired account's entry"
        );
        assert!(
            matches!(&looked[1], Looked::Value(_, Some(s)) if s.account_id.as_deref() == Some("333333333333"))
        );
        assert!(
            matches!(looked[2], Looked::Value(_, None)),
            "not found stays so"
        );
        assert!(
            matches!(looked[3], Looked::Miss),
            "read before the retirement"
        );
        // a claim now gets the retired findings to look up again, and what it stores lives
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (generation, claims) = cache::claim(&coord, std::slice::from_ref(&a))
            .await
            .unwrap();
        let tag = cache::new_tag();
        let item = ToStore {
            key: &a,
            version: &mine(&claims, 0),
            ttl_ms: 60_000,
            value: cache::encode(&tag, Some(&fa)),
        };
        assert_eq!(
            cache::store(&coord, &generation, vec![item]).await.unwrap(),
            vec![true]
        );
        // a write-through over it keeps its read time: still alive; over b's likewise
        let written = cache::write(
            &coord,
            vec![ToWrite {
                key: &a,
                expected: Some(&tag),
                value: Some(cache::encode(&cache::new_tag(), Some(&fa))),
            }],
        )
        .await
        .unwrap();
        assert_eq!(written, vec![true]);
        let looked = cache::lookup(&coord, &[(&a, None)]).await.unwrap();
        assert!(matches!(looked[0], Looked::Value(_, Some(_))));
        // retired again: the written-through value is as old as its read, so it goes too
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache::retire_accounts(&coord, &["222222222222".to_string()]).await;
        let looked = cache::lookup(&coord, &[(&a, None), (&b, None)])
            .await
            .unwrap();
        assert!(matches!(looked[0], Looked::Miss));
        assert!(matches!(looked[1], Looked::Value(_, Some(_))));
    }

    #[test]
    fn redaction_keeps_the_password_out() {
        assert_eq!(
            redacted("redis://user:s3cret@cache:6379/2"),
            "redis://cache:6379/2"
        );
        assert_eq!(redacted("rediss://:p@ss@h:1/0"), "rediss://h:1/0");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }

    /// The shared settle journal: changes compose in Redis as `Patch::then` composes them, and
    /// writes hubgate cannot model come back with the time left in their window.
    #[tokio::test]
    async fn the_settle_journal_against_a_real_redis() {
        use crate::policy::input::{update_for, Patch};
        use cache::Journaled;
        let Some(server) = redis_server() else {
            return;
        };
        let coord = coordination_on(&server);
        coord.probe().await;
        assert!(coord.healthy(), "{:?}", coord.status());
        let patch = |update: serde_json::Value| {
            let mut body =
                serde_json::json!({"FindingIdentifiers": [{"Id": "a", "ProductArn": "p"}]});
            body.as_object_mut()
                .unwrap()
                .extend(update.as_object().unwrap().clone());
            update_for(crate::request::Judged::BatchUpdateFindings, &body)
                .unwrap()
                .patch()
                .unwrap()
        };
        let (a, b, c) = (
            FindingKey::new("a", "p"),
            FindingKey::new("b", "p"),
            FindingKey::new("c", "p"),
        );
        let first = patch(serde_json::json!({"Severity": {"Label": "CRITICAL"},
            "Note": {"Text": "one", "UpdatedBy": "u"}, "Workflow": {"Status": "NOTIFIED"}}));
        let second = patch(
            serde_json::json!({"Note": {"Text": "two", "UpdatedBy": "u"},
            "Severity": {"Normalized": 45}}),
        );
        let items = |p: &Patch| p.items().unwrap();
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Change(&[a.clone(), b.clone()], &items(&first), 0),
        )
        .await;
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Change(std::slice::from_ref(&a), &items(&second), 0),
        )
        .await;
        // c: a change, then an import claiming an account, which leaves the change alone
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Change(std::slice::from_ref(&c), &items(&second), 0),
        )
        .await;
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Unknown(
                std::slice::from_ref(&c),
                "BatchImportFindings",
                Some(&[Some(Arc::from("222222222222"))]),
            ),
        )
        .await;
        // d: an import whose claim is not an account id, which Security Hub may still read
        // as 222222222222: shared unscoped, whoever owns the finding, never scoped to the text
        // (review 50: the other replicas kept the finding of 222222222222 as it was read)
        let d = FindingKey::new("d", "p");
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Unknown(
                std::slice::from_ref(&d),
                "BatchImportFindings",
                Some(&[Some(Arc::from("222222222222 "))]),
            ),
        )
        .await;
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Accounts(&["333333333333".to_string()], "BatchUpdateFindingsV2"),
        )
        .await;
        let read = cache::journal_read(
            &coord,
            60_000,
            &[a.clone(), b.clone(), c.clone(), d.clone()],
            &["222222222222", "333333333333"],
        )
        .await
        .unwrap();
        assert!(read.everything.is_none());
        let owned_c = read.findings[2].owned.clone();
        assert!(
            read.findings[3].owned.is_empty(),
            "{:?}",
            read.findings[3].owned
        );
        assert_eq!(
            read.findings[3].unknown.as_ref().map(|(op, _)| op.as_str()),
            Some("BatchImportFindings")
        );
        let [(ua, ia), (ub, ib), (uc, ic), _] = <[_; 4]>::try_from(
            read.findings
                .into_iter()
                .map(|f| (f.unknown, f.items))
                .collect::<Vec<_>>(),
        )
        .ok()
        .unwrap();
        assert!(ua.is_none() && ub.is_none());
        let composed = Patch::from_items(&ia).unwrap();
        assert!(composed.same_change(&first.then(&second)), "{ia:?}");
        assert!(
            Patch::from_items(&ib).unwrap().same_change(&first),
            "{ib:?}"
        );
        assert!(uc.is_none());
        let [(account, op, left)] = <[_; 1]>::try_from(owned_c).ok().unwrap();
        assert_eq!(
            (account.as_str(), op.as_str()),
            ("222222222222", "BatchImportFindings")
        );
        assert!(left > 55_000 && left <= 60_000, "{left}");
        assert_eq!(ic, items(&second), "the change is kept beside the claim");
        assert!(read.accounts[0].is_none());
        assert_eq!(
            read.accounts[1].as_ref().unwrap().0,
            "BatchUpdateFindingsV2"
        );
        // an unknown write replaces the change kept for the finding
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Unknown(std::slice::from_ref(&a), "BatchUpdateFindings", None),
        )
        .await;
        cache::journal_write(&coord, 30_000, Journaled::Everything("UpdateFindings")).await;
        let read = cache::journal_read(&coord, 60_000, std::slice::from_ref(&a), &[])
            .await
            .unwrap();
        let (op, left) = read.everything.unwrap();
        assert_eq!(op, "UpdateFindings");
        assert!(left > 25_000 && left <= 30_000, "{left}");
        // each item leaves the window with its own write
        let d = FindingKey::new("d", "p");
        cache::journal_write(
            &coord,
            60_000,
            Journaled::Change(std::slice::from_ref(&d), &items(&first), 0),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let short = cache::journal_read(&coord, 10, std::slice::from_ref(&d), &[]).await;
        assert!(short.unwrap().findings[0].items.is_empty());
        let long = cache::journal_read(&coord, 60_000, std::slice::from_ref(&d), &[]).await;
        assert_eq!(long.unwrap().findings[0].items, items(&first));
        let (op, _) = read.findings[0].unknown.as_ref().unwrap();
        assert_eq!(op, "BatchUpdateFindings");
        assert!(read.findings[0].items.is_empty());
        // A write sent before another replica shared a change setting a fact to another value
        // leaves the finding unknown; one sent after it, or setting the same value, or only a
        // note, is composed.
        let low = patch(serde_json::json!({"Severity": {"Label": "LOW"}}));
        let note = patch(serde_json::json!({"Note": {"Text": "n", "UpdatedBy": "u"}}));
        let (e, f, g, h) = (
            FindingKey::new("e", "p"),
            FindingKey::new("f", "p"),
            FindingKey::new("g", "p"),
            FindingKey::new("h", "p"),
        );
        for k in [&e, &f, &g, &h] {
            let crit = Journaled::Change(std::slice::from_ref(k), &items(&first), 0);
            cache::journal_write(&coord, 60_000, crit).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (k, p, in_flight_ms) in [(&e, &low, 5_000), (&f, &low, 10), (&g, &first, 5_000)] {
            let write = Journaled::Change(std::slice::from_ref(k), &items(p), in_flight_ms);
            cache::journal_write(&coord, 60_000, write).await;
        }
        let write = Journaled::Change(std::slice::from_ref(&h), &items(&note), 5_000);
        cache::journal_write(&coord, 60_000, write).await;
        let read = cache::journal_read(&coord, 60_000, &[e, f, g, h], &[])
            .await
            .unwrap();
        let (op, _) = read.findings[0].unknown.as_ref().unwrap();
        assert_eq!(op, "BatchUpdateFindings", "overlapped, other severity");
        assert!(read.findings[0].items.is_empty());
        for (i, expected) in [
            (1, first.then(&low)),
            (2, Patch::from_items(&items(&first)).unwrap()),
            (3, first.then(&note)),
        ] {
            assert!(read.findings[i].unknown.is_none(), "{i}");
            let got = Patch::from_items(&read.findings[i].items).unwrap();
            assert!(
                got.same_change(&expected),
                "{i}: {:?}",
                read.findings[i].items
            );
        }
    }
}
