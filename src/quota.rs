//! Quota: paces hubgate's own calls to Security Hub with a token bucket per operation, at the
//! account's documented quotas times this replica's share, so that hubgate never causes a
//! throttle and callers wait for quota instead of failing. With `[coordination]` the buckets
//! live in Redis and are shared by every replica (`coordination::pacing`); while Redis is out
//! of reach each replica paces locally at its fallback share.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};

use crate::config::{Limit, QuotaConfig};
use crate::coordination::{pacing, Coordination};

/// The wait for quota outlasted the request's deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("hubgate's {operation} quota ({rate}/s) had no room within {waited_ms} ms")]
pub struct QuotaExhausted {
    pub operation: &'static str,
    pub rate: f64,
    pub waited_ms: u64,
}

struct Bucket {
    limiter: DefaultDirectRateLimiter,
    rate: f64,
}

impl Bucket {
    fn new(limit: Limit, share: f64) -> Bucket {
        let rate = limit.rate * share;
        // One call less than the burst: network jitter can bring calls paced exactly at the
        // quota to Security Hub closer together than they left.
        let burst = ((limit.burst as f64 * share).floor() as u32)
            .saturating_sub(1)
            .max(1);
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Bucket {
            limiter: RateLimiter::direct(quota),
            rate,
        }
    }
}

/// One token bucket per upstream operation hubgate calls.
pub struct Pacer {
    buckets: HashMap<&'static str, Bucket>,
    default: Bucket,
    max_wait: Duration,
    shared: Option<Shared>,
    /// Per operation and caller (principal id), the line its requests wait in for the
    /// caller's one place among those trying the bucket. The bucket serves whoever tries when
    /// a call is due, so without it every waiting request was a ticket: one member keeping
    /// thirty writes waiting left an administrator's write one call in thirty-one, and it ran
    /// out of `max_wait_ms` (429). Now each caller with requests waiting holds one ticket. Per
    /// caller, not per account: in one line per account, an administrator's write waited
    /// behind every request a member principal of the same account had queued. Callers come
    /// from the callers file (or the static identity), so this stays small.
    lines: std::sync::Mutex<HashMap<&'static str, HashMap<Arc<str>, Line>>>,
}

/// One account's line for one operation's quota (`Pacer::lines`).
type Line = Arc<tokio::sync::Mutex<()>>;

/// The fleet's buckets in Redis, and the local ones a replica falls back to.
struct Shared {
    coord: Arc<Coordination>,
    /// Operation -> (µs between calls, burst), the same rates a lone replica paces to.
    cells: HashMap<&'static str, (u64, u32)>,
    default_cell: (u64, u32),
    fallback: HashMap<&'static str, Bucket>,
    fallback_default: Bucket,
}

/// A bucket's GCRA parameters: the emission interval and the burst, with the same call of
/// headroom as the local buckets.
fn cell(limit: Limit, share: f64) -> (u64, u32) {
    let rate = (limit.rate * share).max(1e-6);
    let burst = ((limit.burst as f64 * share).floor() as u32)
        .saturating_sub(1)
        .max(1);
    ((1_000_000.0 / rate).ceil() as u64, burst)
}

impl Pacer {
    pub fn new(config: &QuotaConfig) -> Pacer {
        Self::build(config, None)
    }

    /// Pacing shared by every replica through `coord`; `fallback_share` (of `config.share`)
    /// is what this replica takes alone while Redis is out of reach.
    pub fn shared(config: &QuotaConfig, coord: Arc<Coordination>, fallback_share: f64) -> Pacer {
        Self::build(config, Some((coord, fallback_share)))
    }

    fn build(config: &QuotaConfig, shared: Option<(Arc<Coordination>, f64)>) -> Pacer {
        let ops = crate::routes::operations();
        let buckets = ops
            .iter()
            .map(|op| (op.name, Bucket::new(config.limit(op.name), config.share)))
            .collect();
        let shared = shared.map(|(coord, fallback_share)| {
            let share = config.share * fallback_share;
            Shared {
                coord,
                cells: ops
                    .iter()
                    .map(|op| (op.name, cell(config.limit(op.name), config.share)))
                    .collect(),
                default_cell: cell(config.limit("default"), config.share),
                fallback: ops
                    .iter()
                    .map(|op| (op.name, Bucket::new(config.limit(op.name), share)))
                    .collect(),
                fallback_default: Bucket::new(config.limit("default"), share),
            }
        });
        Pacer {
            buckets,
            default: Bucket::new(config.limit("default"), config.share),
            max_wait: Duration::from_millis(config.max_wait_ms),
            shared,
            lines: Default::default(),
        }
    }

    /// The line `caller`'s requests wait in for `operation`'s quota.
    fn line(&self, operation: &'static str, caller: &str) -> Line {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let callers = lines.entry(operation).or_default();
        // Found by the borrowed name: the key is allocated once per caller, not per request.
        if let Some(line) = callers.get(caller) {
            return line.clone();
        }
        callers.entry(Arc::from(caller)).or_default().clone()
    }

    /// The Redis coordination this pacer shares through, if configured (for /readyz).
    pub fn coordination(&self) -> Option<&Arc<Coordination>> {
        self.shared.as_ref().map(|s| &s.coord)
    }

    /// The deadline for a request that starts now.
    pub fn deadline_from(&self, start: Instant) -> Instant {
        start + self.max_wait
    }

    /// The calls per second hubgate paces `operation` to.
    pub fn rate(&self, operation: &str) -> f64 {
        match &self.shared {
            Some(s) if s.coord.healthy() => {
                let (interval, _) = *s.cells.get(operation).unwrap_or(&s.default_cell);
                1_000_000.0 / interval as f64
            }
            _ => self.bucket(operation).rate,
        }
    }

    fn bucket(&self, operation: &str) -> &Bucket {
        match &self.shared {
            // Local pacing with coordination configured means Redis is out of reach.
            Some(s) => s.fallback.get(operation).unwrap_or(&s.fallback_default),
            None => self.buckets.get(operation).unwrap_or(&self.default),
        }
    }

    /// Takes one call from the fleet's shared bucket, waiting (until `deadline`, if any) while
    /// it is empty. None: Redis is out of reach, pace locally instead.
    async fn acquire_in_redis(
        &self,
        operation: &'static str,
        deadline: Option<Instant>,
    ) -> Option<Result<(), QuotaExhausted>> {
        let shared = self.shared.as_ref()?;
        let (interval, burst) = *shared.cells.get(operation).unwrap_or(&shared.default_cell);
        let started = Instant::now();
        loop {
            let wait_us = pacing::take(&shared.coord, operation, interval, burst).await?;
            if wait_us == 0 {
                return Some(Ok(()));
            }
            // Jitter spreads the replicas that were told the same instant.
            let wait = Duration::from_micros(wait_us)
                + Duration::from_micros(rand::random::<u64>() % 5_000);
            if let Some(deadline) = deadline {
                if Instant::now() + wait > deadline {
                    // No room before the deadline: say so now, without taking quota.
                    return Some(Err(QuotaExhausted {
                        operation,
                        rate: 1_000_000.0 / interval as f64,
                        waited_ms: started.elapsed().as_millis() as u64,
                    }));
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for one call's worth of `operation` quota for a request of `caller` (a principal
    /// id), until `deadline` at the latest, taking turns with the other callers' requests (and
    /// hubgate's own lookups, which wait as one), first come first served within a caller (see
    /// `lines`).
    pub async fn acquire(
        &self,
        operation: &'static str,
        deadline: Instant,
        caller: &str,
    ) -> Result<Duration, QuotaExhausted> {
        let started = Instant::now();
        let line = self.line(operation, caller);
        let Ok(_turn) = tokio::time::timeout_at(deadline.into(), line.lock()).await else {
            return Err(QuotaExhausted {
                operation,
                rate: self.rate(operation),
                waited_ms: started.elapsed().as_millis() as u64,
            });
        };
        if let Some(done) = self.acquire_in_redis(operation, Some(deadline)).await {
            return done.map(|()| started.elapsed());
        }
        let bucket = self.bucket(operation);
        // Jitter spreads waiters that would otherwise all poll the bucket at the same instant.
        let ready = bucket
            .limiter
            .until_ready_with_jitter(Jitter::up_to(Duration::from_millis(5)));
        match tokio::time::timeout_at(deadline.into(), ready).await {
            Ok(()) => Ok(started.elapsed()),
            Err(_) => Err(QuotaExhausted {
                operation,
                rate: bucket.rate,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Waits for quota with no deadline: for work shared by many requests, each of which
    /// stops waiting at its own deadline.
    pub async fn acquire_shared(&self, operation: &'static str) {
        if let Some(Ok(())) = self.acquire_in_redis(operation, None).await {
            return;
        }
        self.bucket(operation)
            .limiter
            .until_ready_with_jitter(Jitter::up_to(Duration::from_millis(5)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: f64, burst: u32, share: f64) -> Pacer {
        let mut config = QuotaConfig {
            share,
            ..Default::default()
        };
        config
            .limits
            .insert("GetFindings".into(), Limit { rate, burst });
        Pacer::new(&config)
    }

    #[tokio::test]
    async fn the_burst_passes_at_once_then_calls_are_paced() {
        // burst 4 less the one call of headroom
        let p = pacer(20.0, 4, 1.0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let t = Instant::now();
        for _ in 0..3 {
            p.acquire("GetFindings", deadline, "1").await.unwrap();
        }
        assert!(t.elapsed() < Duration::from_millis(40), "{:?}", t.elapsed());
        // the next two need one period (50 ms) each
        for _ in 0..2 {
            p.acquire("GetFindings", deadline, "1").await.unwrap();
        }
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_deadline_ends_the_wait_without_taking_quota() {
        let p = pacer(1.0, 1, 1.0);
        let soon = Instant::now() + Duration::from_millis(50);
        p.acquire("GetFindings", soon, "1").await.unwrap();
        let err = p.acquire("GetFindings", soon, "1").await.unwrap_err();
        assert_eq!(err.operation, "GetFindings");
        assert!(err.to_string().contains("GetFindings quota"), "{err}");
    }

    #[tokio::test]
    async fn a_request_waiting_in_its_callers_line_stops_at_its_deadline() {
        let p = Arc::new(pacer(1.0, 2, 1.0));
        let deadline = Instant::now() + Duration::from_secs(5);
        p.acquire("GetFindings", deadline, "a").await.unwrap();
        // holds a's line, waiting for the next call (in a second)
        let first = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire("GetFindings", deadline, "a").await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        let err = p
            .acquire("GetFindings", t + Duration::from_millis(100), "a")
            .await
            .unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(err.operation, "GetFindings");
        first.abort();
    }

    #[tokio::test]
    async fn callers_take_turns_whatever_their_requests_waiting() {
        // one call per 20 ms after the first
        let p = Arc::new(pacer(50.0, 2, 1.0));
        let deadline = Instant::now() + Duration::from_secs(5);
        p.acquire("GetFindings", deadline, "a").await.unwrap();
        let mut many = Vec::new();
        for _ in 0..40 {
            let p = p.clone();
            many.push(tokio::spawn(async move {
                p.acquire("GetFindings", deadline, "a").await.unwrap();
                Instant::now()
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        p.acquire("GetFindings", deadline, "b").await.unwrap();
        let b = Instant::now();
        let mut before_b = 0;
        for a in many {
            before_b += usize::from(a.await.unwrap() < b);
        }
        // Which of the waiters trying the bucket wakes first is random (the jitter), so b
        // holding one of two places in line goes within k calls with probability 1 - 2^-k:
        // 14 or more of a's before b is a chance of 1 in 16,000. With a place per request,
        // b held one of 41 and waited for most of a's.
        assert!(before_b < 14, "{before_b} of a's requests went before b's");
    }

    #[test]
    fn shares_and_defaults() {
        let config = QuotaConfig::default();
        assert_eq!(
            config.limit("GetFindings"),
            Limit {
                rate: 3.0,
                burst: 6
            }
        );
        assert_eq!(
            config.limit("CreateInsight"),
            Limit {
                rate: 10.0,
                burst: 30
            }
        );
        let p = pacer(3.0, 6, 0.5);
        assert!((p.bucket("GetFindings").rate - 1.5).abs() < 1e-9);
        assert!((p.bucket("NoSuchOperation").rate - 5.0).abs() < 1e-9);
    }
}
