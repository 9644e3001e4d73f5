//! Quota: paces hubgate's own calls to Security Hub with a token bucket per operation, at the
//! account's documented quotas times this replica's share, so that hubgate never causes a
//! throttle and callers wait for quota instead of failing. With `[coordination]` the buckets
//! live in Redis and are shared by every replica (`coordination::pacing`); while Redis is out
//! of reach each replica paces locally at its fallback share. When Security Hub throttles a
//! call paced within the quota anyway, another client of the account is spending part of it:
//! the operation's pace is halved, then recovers gradually (`Slowdown`).
//!
//! In passthrough a forward is the caller's own signed call, which AWS charges to the
//! caller's account: such forwards pace on a bucket per operation and caller account
//! (`Payer::Account`), so that one account's writes never wait for another's.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};

use crate::config::{Limit, QuotaConfig};
use crate::coordination::{pacing, Coordination};
use crate::identity::CallerId;

/// The wait for quota outlasted the request's deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} {operation} quota ({rate}/s) had no room within {waited_ms} ms", whose(.account.as_deref()))]
pub struct QuotaExhausted {
    pub operation: &'static str,
    pub rate: f64,
    pub waited_ms: u64,
    /// The caller account whose quota it was (passthrough); None: hubgate's own.
    pub account: Option<Arc<str>>,
}

impl QuotaExhausted {
    /// When a retry may find room: one call's time at the rate paced (rounded up to whole
    /// seconds, as `Retry-After` counts), at most a minute (a slowed pace of a tiny rate).
    pub fn retry_after_s(&self) -> u64 {
        (1.0 / self.rate.max(1e-3)).ceil().clamp(1.0, 60.0) as u64
    }
}

fn whose(account: Option<&str>) -> String {
    match account {
        None => "hubgate's".into(),
        Some(account) => format!("account {account}'s"),
    }
}

/// Whose account quota an upstream call spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payer<'a> {
    /// hubgate's own credentials sign the call: every lookup, and every forward in resign mode.
    Hubgate,
    /// The caller's own signature goes upstream (passthrough): AWS charges its account.
    Account(&'a str),
}

/// The operations hubgate calls on its own credentials (enrichment's lookups). A passthrough
/// forward of one of them still paces on hubgate's bucket: hubgate does not know its own
/// account, which may be the caller's, and the two together must stay within it.
const OWN_CALLS: [&str; 1] = ["GetFindings"];

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
        let quota = Quota::with_period(period(rate))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Bucket {
            limiter: RateLimiter::direct(quota),
            rate,
        }
    }
}

/// The time between calls at `rate` per second: at least a nanosecond, governor's unit. A
/// faster rate (1e10/s, say, to leave an emulator unpaced) rounded to a zero period, which
/// governor refuses, and the bucket fell back to one call a second: the higher the rate
/// configured, the slower hubgate paced. At most 1e6 s (a rate of 1e-6/s).
fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate.max(1e-6)).max(Duration::from_nanos(1))
}

/// A throttle halves the operation's pace (`SLOWDOWN`), down to `MIN_PACE` of it, and the pace
/// recovers by `RECOVERY_PER_SEC` of the full rate each second without one: additive increase
/// and multiplicative decrease, which settles just under what the other clients leave. The
/// recovery is slow next to the halving, so a pace that finds the room again overshoots it
/// for a few calls, not for seconds.
const SLOWDOWN: f64 = 0.5;
const MIN_PACE: f64 = 0.1;
const RECOVERY_PER_SEC: f64 = 0.05;
/// Throttles within this time of a halving answer calls sent before it (concurrent calls of
/// one burst are throttled together): they halve nothing more.
const SLOWDOWN_GAP: Duration = Duration::from_secs(1);

/// One operation's slowed pace after a throttle: calls are spaced at `rate × pace` on top of
/// the token bucket, which stays at the full rate (governor's buckets have a fixed rate).
#[derive(Debug, Clone, Copy)]
struct Slowdown {
    /// The share of the full rate at `since`, the last halving.
    pace: f64,
    since: Instant,
    /// When the next call may go at the slowed pace.
    next: Instant,
}

impl Slowdown {
    fn pace_at(&self, now: Instant) -> f64 {
        let recovered = RECOVERY_PER_SEC * now.saturating_duration_since(self.since).as_secs_f64();
        (self.pace + recovered).min(1.0)
    }
}

/// What `Pacer::take_slowed` found.
enum Slowed<'a> {
    /// The operation is not slowed (or has recovered): only its bucket paces it.
    No,
    /// The next slot comes at this instant; nothing was taken.
    Due(Instant),
    Taken(SlowedSlot<'a>),
}

/// A slot of a slowed pace, taken for a call about to go. Dropped unused (the request was
/// refused by its bucket, or stopped waiting), it is given back, unless another slot was taken
/// or a throttle moved the pace since: a call that never went spends no slot.
struct SlowedSlot<'a> {
    pacer: &'a Pacer,
    operation: &'static str,
    /// The operation's next slot before this one was taken, and after.
    before: Instant,
    set: Instant,
}

impl SlowedSlot<'_> {
    /// The call went: the slot stays spent.
    fn used(self) {
        std::mem::forget(self);
    }

    /// The call went, slowed (`Some`) or not.
    fn spend(slot: Option<Self>) {
        if let Some(slot) = slot {
            slot.used();
        }
    }
}

impl Drop for SlowedSlot<'_> {
    fn drop(&mut self) {
        let mut slowdowns = self
            .pacer
            .slowdowns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slowed) = slowdowns.get_mut(self.operation) {
            if slowed.next == self.set {
                slowed.next = self.before;
            }
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
    /// caller's one place in its account's line (`account_lines`). The bucket serves whoever
    /// tries when a call is due, so without lines every waiting request was a ticket: one
    /// member keeping thirty writes waiting left an administrator's write one call in
    /// thirty-one, and it ran out of `max_wait_ms` (429). Callers come from the callers file
    /// (or the static identity), so this stays small.
    lines: Lines,
    /// Per operation and account, the line the account's callers' first requests wait in for
    /// the account's one ticket at the bucket: accounts take turns, and within an account its
    /// callers do (tokio's mutex is first come, first served). With a ticket per caller, an
    /// account running ten busy principals held ten tickets to another account's one; with a
    /// line per account alone, an administrator's write waited behind every request another
    /// principal of its account had queued.
    account_lines: Lines,
    /// The operations Security Hub throttled recently, and their slowed pace. Local to this
    /// replica, with or without Redis: each replica slows for the throttles it sees.
    slowdowns: std::sync::Mutex<HashMap<&'static str, Slowdown>>,
    /// Per operation and caller account, the local bucket of passthrough forwards
    /// (`Payer::Account`), made on first use at the operation's limit times `account_share`.
    /// Accounts come from the callers file (or the static identity), so this stays small.
    accounts: std::sync::Mutex<HashMap<&'static str, AccountBuckets>>,
    /// The limits account buckets are made at.
    limits: QuotaConfig,
    /// The share of a caller account's quota a local account bucket paces to: `quota.share`,
    /// or its fallback part while Redis, which holds the fleet's account buckets, is out of
    /// reach.
    account_share: f64,
}

/// One operation's local buckets of passthrough forwards, by caller account (`Pacer::accounts`).
type AccountBuckets = HashMap<Arc<str>, Arc<Bucket>>;

/// One caller's, or one account's, line for one operation's quota (`Pacer::lines`).
type Line = Arc<tokio::sync::Mutex<()>>;

/// Lines by operation, then by caller or account.
type Lines = std::sync::Mutex<HashMap<&'static str, HashMap<Arc<str>, Line>>>;

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
        let account_share = config.share * shared.as_ref().map_or(1.0, |(_, fallback)| *fallback);
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
            account_lines: Default::default(),
            slowdowns: Default::default(),
            accounts: Default::default(),
            limits: config.clone(),
            account_share,
        }
    }

    /// The local bucket of `account`'s `operation` quota.
    fn account_bucket(&self, operation: &'static str, account: &str) -> Arc<Bucket> {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = accounts.entry(operation).or_default();
        // Found by the borrowed name: the key is allocated once per account, not per request.
        if let Some(bucket) = buckets.get(account) {
            return bucket.clone();
        }
        let bucket = Arc::new(Bucket::new(
            self.limits.limit(operation),
            self.account_share,
        ));
        buckets.insert(Arc::from(account), bucket.clone());
        bucket
    }

    /// The line `who`'s requests wait in for `operation`'s quota, in `lines` (by caller or by
    /// account).
    fn line(lines: &Lines, operation: &'static str, who: &str) -> Line {
        let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = lines.entry(operation).or_default();
        // Found by the borrowed name: the key is allocated once per caller, not per request.
        if let Some(line) = waiting.get(who) {
            return line.clone();
        }
        waiting.entry(Arc::from(who)).or_default().clone()
    }

    /// The Redis coordination this pacer shares through, if configured (for /readyz).
    pub fn coordination(&self) -> Option<&Arc<Coordination>> {
        self.shared.as_ref().map(|s| &s.coord)
    }

    /// The deadline for a request that starts now.
    pub fn deadline_from(&self, start: Instant) -> Instant {
        start + self.max_wait
    }

    /// The calls per second hubgate paces `operation` to, slowed after a throttle.
    pub fn rate(&self, operation: &str) -> f64 {
        self.full_rate(operation) * self.pace(operation, Instant::now())
    }

    /// The share of the full rate `operation` is paced at now: 1 unless it was throttled.
    pub fn pace(&self, operation: &str, now: Instant) -> f64 {
        let slowdowns = self.slowdowns.lock().unwrap_or_else(|e| e.into_inner());
        slowdowns.get(operation).map_or(1.0, |s| s.pace_at(now))
    }

    /// The operations throttled since start, and their pace now (for /metrics).
    pub fn slowed(&self) -> Vec<(&'static str, f64)> {
        let now = Instant::now();
        let slowdowns = self.slowdowns.lock().unwrap_or_else(|e| e.into_inner());
        slowdowns
            .iter()
            .map(|(op, s)| (*op, s.pace_at(now)))
            .collect()
    }

    /// Security Hub throttled a call of `operation` that this pacer let through: slow down.
    pub fn throttled(&self, operation: &'static str) {
        let now = Instant::now();
        let mut slowdowns = self.slowdowns.lock().unwrap_or_else(|e| e.into_inner());
        let slowed = slowdowns.entry(operation).or_insert(Slowdown {
            pace: 1.0,
            since: now.checked_sub(SLOWDOWN_GAP).unwrap_or(now),
            next: now,
        });
        let full = self.full_rate(operation);
        // The account's bucket is empty now: the next call waits one slowed interval, or a
        // retry right after the throttle would meet it still empty.
        let after = |pace: f64| now + Duration::from_secs_f64(1.0 / (full * pace).max(1e-6));
        if now.saturating_duration_since(slowed.since) < SLOWDOWN_GAP && slowed.pace < 1.0 {
            slowed.next = slowed.next.max(after(slowed.pace_at(now)));
            return;
        }
        let pace = (slowed.pace_at(now) * SLOWDOWN).max(MIN_PACE);
        tracing::info!(
            operation,
            pace,
            "Security Hub throttled a call paced within its quota; slowing this operation down"
        );
        *slowed = Slowdown {
            pace,
            since: now,
            next: slowed.next.max(after(pace)),
        };
    }

    /// Takes `operation`'s next slot at its slowed pace if it is due now. Nothing is reserved
    /// ahead: a slot reserved when a request began to wait stayed taken when the request
    /// stopped waiting (its client hung up, or the bucket or Redis refused it right after), and
    /// a member sending reads and hanging up pushed the next slot past every other caller's
    /// deadline (429 at once, with no call going out). Err when the next slot comes after
    /// `deadline`.
    fn take_slowed(
        &self,
        operation: &'static str,
        deadline: Option<Instant>,
    ) -> Result<Slowed<'_>, ()> {
        let now = Instant::now();
        let mut slowdowns = self.slowdowns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slowed) = slowdowns.get_mut(operation) else {
            return Ok(Slowed::No);
        };
        let pace = slowed.pace_at(now);
        // A recovered operation keeps its entry (at most one per operation), for /metrics.
        if pace >= 1.0 {
            return Ok(Slowed::No);
        }
        let at = slowed.next.max(now);
        if deadline.is_some_and(|d| at > d) {
            return Err(());
        }
        if at > now {
            return Ok(Slowed::Due(at));
        }
        // Only a slowed call needs the rate: every paced call passes here.
        let full = self.full_rate(operation);
        let before = slowed.next;
        slowed.next = now + Duration::from_secs_f64(1.0 / (full * pace).max(1e-6));
        Ok(Slowed::Taken(SlowedSlot {
            pacer: self,
            operation,
            before,
            set: slowed.next,
        }))
    }

    /// Waits for `operation`'s next slot at its slowed pace (until `deadline`, if any) and takes
    /// it; see `take_slowed`. None: the operation is not slowed.
    async fn wait_slowed(
        &self,
        operation: &'static str,
        deadline: Option<Instant>,
    ) -> Result<Option<SlowedSlot<'_>>, ()> {
        loop {
            match self.take_slowed(operation, deadline)? {
                Slowed::No => return Ok(None),
                Slowed::Taken(slot) => return Ok(Some(slot)),
                // Jitter spreads the accounts' requests that wait for the same slot: the first
                // to wake takes it, the others wait for the next.
                Slowed::Due(at) => {
                    let jitter = Duration::from_micros(rand::random::<u64>() % 5_000);
                    tokio::time::sleep_until((at + jitter).into()).await;
                }
            }
        }
    }

    /// The calls per second `operation`'s quota allows this replica.
    fn full_rate(&self, operation: &str) -> f64 {
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
        account: Option<&str>,
        deadline: Option<Instant>,
    ) -> Option<Result<(), QuotaExhausted>> {
        let shared = self.shared.as_ref()?;
        let (interval, burst) = *shared.cells.get(operation).unwrap_or(&shared.default_cell);
        let started = Instant::now();
        loop {
            let wait_us = pacing::take(&shared.coord, operation, account, interval, burst).await?;
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
                        account: account.map(Arc::from),
                    }));
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for one call's worth of `operation` quota for a request of `caller`, until
    /// `deadline` at the latest, taking turns with the other accounts' requests (and
    /// hubgate's own lookups, which wait as one), then with the other callers' of its account,
    /// first come first served within a caller (see `lines`). `payer` is whose account quota
    /// the call spends.
    pub async fn acquire(
        &self,
        operation: &'static str,
        deadline: Instant,
        caller: CallerId<'_>,
        payer: Payer<'_>,
    ) -> Result<Duration, QuotaExhausted> {
        let started = Instant::now();
        let account = match payer {
            Payer::Account(account) if !OWN_CALLS.contains(&operation) => Some(account),
            _ => None,
        };
        let exhausted = |rate: f64| QuotaExhausted {
            operation,
            rate,
            waited_ms: started.elapsed().as_millis() as u64,
            account: account.map(Arc::from),
        };
        let out_of_time = || {
            exhausted(match account {
                None => self.rate(operation),
                Some(_) => self.limits.limit(operation).rate * self.limits.share,
            })
        };
        let line = Self::line(&self.lines, operation, caller.principal);
        let Ok(_turn) = tokio::time::timeout_at(deadline.into(), line.lock()).await else {
            return Err(out_of_time());
        };
        let account_line = Self::line(&self.account_lines, operation, caller.account);
        let Ok(_account_turn) = tokio::time::timeout_at(deadline.into(), account_line.lock()).await
        else {
            return Err(out_of_time());
        };
        let account_bucket;
        let mut slowed = None;
        let bucket: &Bucket = match account {
            // No slowdown: AWS throttling a caller's own call slows nobody (`throttled`).
            Some(account) => {
                if let Some(done) = self
                    .acquire_in_redis(operation, Some(account), Some(deadline))
                    .await
                {
                    return done.map(|()| started.elapsed());
                }
                account_bucket = self.account_bucket(operation, account);
                &account_bucket
            }
            None => {
                // Given back if the call does not go after all (dropped with this function's
                // future, or refused below).
                slowed = match self.wait_slowed(operation, Some(deadline)).await {
                    Ok(slot) => slot,
                    Err(()) => return Err(exhausted(self.rate(operation))),
                };
                if let Some(done) = self.acquire_in_redis(operation, None, Some(deadline)).await {
                    return done.map(|()| {
                        SlowedSlot::spend(slowed);
                        started.elapsed()
                    });
                }
                self.bucket(operation)
            }
        };
        // A call the bucket cannot give before the deadline, even were nobody else waiting, is
        // refused now, taking nothing: it waited out its deadline before the 429, holding its
        // in-flight slot and its account's place at the bucket for nothing. (The Redis buckets
        // and a slowed pace already answered at once.)
        match bucket.limiter.check() {
            Ok(()) => {
                SlowedSlot::spend(slowed);
                return Ok(started.elapsed());
            }
            Err(not_until) => {
                let earliest = not_until.wait_time_from(bucket.limiter.clock().now());
                if Instant::now() + earliest > deadline {
                    return Err(exhausted(bucket.rate));
                }
            }
        }
        // Jitter spreads waiters that would otherwise all poll the bucket at the same instant.
        let ready = bucket
            .limiter
            .until_ready_with_jitter(Jitter::up_to(Duration::from_millis(5)));
        match tokio::time::timeout_at(deadline.into(), ready).await {
            Ok(()) => {
                SlowedSlot::spend(slowed);
                Ok(started.elapsed())
            }
            Err(_) => Err(exhausted(bucket.rate)),
        }
    }

    /// Waits for quota with no deadline: for work shared by many requests, each of which
    /// stops waiting at its own deadline. Dropped before it returns (the requests have all
    /// gone), it takes nothing.
    pub async fn acquire_shared(&self, operation: &'static str) {
        // Given back if this wait is dropped before the call's quota is all there.
        let slowed = self.wait_slowed(operation, None).await.ok().flatten();
        if let Some(Ok(())) = self.acquire_in_redis(operation, None, None).await {
            SlowedSlot::spend(slowed);
            return;
        }
        self.bucket(operation)
            .limiter
            .until_ready_with_jitter(Jitter::up_to(Duration::from_millis(5)))
            .await;
        SlowedSlot::spend(slowed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller that is its account's only one.
    fn lone(id: &str) -> CallerId<'_> {
        CallerId {
            account: id,
            principal: id,
        }
    }

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
            p.acquire("GetFindings", deadline, lone("1"), Payer::Hubgate)
                .await
                .unwrap();
        }
        assert!(t.elapsed() < Duration::from_millis(40), "{:?}", t.elapsed());
        // the next two need one period (50 ms) each
        for _ in 0..2 {
            p.acquire("GetFindings", deadline, lone("1"), Payer::Hubgate)
                .await
                .unwrap();
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
        p.acquire("GetFindings", soon, lone("1"), Payer::Hubgate)
            .await
            .unwrap();
        let err = p
            .acquire("GetFindings", soon, lone("1"), Payer::Hubgate)
            .await
            .unwrap_err();
        assert_eq!(err.operation, "GetFindings");
        assert!(err.to_string().contains("GetFindings quota"), "{err}");
    }

    /// A call the bucket cannot give before the deadline is refused at once, not when the
    /// deadline comes; one it can give in time is waited for.
    #[tokio::test]
    async fn a_wait_that_cannot_end_in_time_is_refused_at_once() {
        // one call a second, no burst beyond the first
        let p = pacer(1.0, 2, 1.0);
        let far = Instant::now() + Duration::from_secs(5);
        p.acquire("GetFindings", far, lone("1"), Payer::Hubgate)
            .await
            .unwrap();
        let t = Instant::now();
        let err = p
            .acquire(
                "GetFindings",
                t + Duration::from_millis(500),
                lone("1"),
                Payer::Hubgate,
            )
            .await
            .unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "waited {:?} for a call due in a second",
            t.elapsed()
        );
        assert_eq!(err.retry_after_s(), 1);
        // nothing was taken: the next call is due a second after the first, not two
        let waited = p
            .acquire("GetFindings", far, lone("1"), Payer::Hubgate)
            .await
            .unwrap();
        assert!(waited < Duration::from_millis(1500), "{waited:?}");
    }

    #[tokio::test]
    async fn a_request_waiting_in_its_callers_line_stops_at_its_deadline() {
        let p = Arc::new(pacer(1.0, 2, 1.0));
        let deadline = Instant::now() + Duration::from_secs(5);
        p.acquire("GetFindings", deadline, lone("a"), Payer::Hubgate)
            .await
            .unwrap();
        // holds a's line, waiting for the next call (in a second)
        let first = {
            let p = p.clone();
            tokio::spawn(async move {
                p.acquire("GetFindings", deadline, lone("a"), Payer::Hubgate)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        let err = p
            .acquire(
                "GetFindings",
                t + Duration::from_millis(100),
                lone("a"),
                Payer::Hubgate,
            )
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

    /// Accounts take turns before their callers do: an account with ten principals waiting
    /// holds one ticket at the bucket, as an account with one does.
    #[tokio::test]
    async fn an_account_with_many_callers_gets_no_more_turns_than_one_with_one() {
        // one call per 10 ms after the first
        let p = Arc::new(pacer(100.0, 2, 1.0));
        let deadline = Instant::now() + Duration::from_secs(10);
        p.acquire("GetFindings", deadline, lone("warm"), Payer::Hubgate)
            .await
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut wait = |account: &'static str, principal: String| {
            let (p, order) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let caller = CallerId {
                    account,
                    principal: &principal,
                };
                if p.acquire("GetFindings", deadline, caller, Payer::Hubgate)
                    .await
                    .is_ok()
                {
                    order.lock().unwrap().push(account);
                }
            }));
        };
        for n in 0..10 {
            for _ in 0..8 {
                wait("many", format!("role-{n}"));
            }
        }
        for _ in 0..60 {
            wait("lone", "lone".into());
        }
        while order.lock().unwrap().len() < 60 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lone = order.lock().unwrap()[..60]
            .iter()
            .filter(|a| **a == "lone")
            .count();
        for t in tasks {
            t.abort();
        }
        // Two tickets, and which of them wakes first is random (the jitter): about 30 of 60,
        // and fewer than 18 is a chance of 1 in 2,000. With a ticket per caller the lone
        // account held one of 11 and got about 5.
        assert!(
            lone >= 18,
            "the lone account got {lone} of the first 60 calls"
        );
    }

    #[tokio::test]
    async fn callers_take_turns_whatever_their_requests_waiting() {
        // one call per 20 ms after the first
        let p = Arc::new(pacer(50.0, 2, 1.0));
        let deadline = Instant::now() + Duration::from_secs(5);
        p.acquire("GetFindings", deadline, lone("a"), Payer::Hubgate)
            .await
            .unwrap();
        let mut many = Vec::new();
        for _ in 0..40 {
            let p = p.clone();
            many.push(tokio::spawn(async move {
                p.acquire("GetFindings", deadline, lone("a"), Payer::Hubgate)
                    .await
                    .unwrap();
                Instant::now()
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        p.acquire("GetFindings", deadline, lone("b"), Payer::Hubgate)
            .await
            .unwrap();
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

    #[tokio::test]
    async fn a_throttle_halves_the_pace_once_per_burst_and_it_recovers() {
        // a bucket of 100/s with room for 50 calls at once: only the slowdown spaces them
        let p = pacer(100.0, 51, 1.0);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(p.pace("GetFindings", Instant::now()), 1.0);
        p.throttled("GetFindings");
        // throttles of the same burst halve nothing more
        p.throttled("GetFindings");
        p.throttled("GetFindings");
        let now = Instant::now();
        assert!((p.pace("GetFindings", now) - 0.5).abs() < 0.01);
        assert!((p.rate("GetFindings") - 50.0).abs() < 1.0);
        // at half of 100/s, 6 calls take 5 intervals of 20 ms
        let t = Instant::now();
        for _ in 0..6 {
            p.acquire("GetFindings", deadline, lone("1"), Payer::Hubgate)
                .await
                .unwrap();
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(95), "{took:?}");
        // another operation is not slowed
        let t = Instant::now();
        for _ in 0..6 {
            p.acquire("BatchUpdateFindings", deadline, lone("1"), Payer::Hubgate)
                .await
                .unwrap();
        }
        assert!(t.elapsed() < Duration::from_millis(40), "{:?}", t.elapsed());
        // recovery: 0.05 of the full rate a second, whole after 10 s
        let later = now + Duration::from_secs(4);
        assert!((p.pace("GetFindings", later) - 0.7).abs() < 0.01);
        assert_eq!(p.pace("GetFindings", now + Duration::from_secs(11)), 1.0);
        assert_eq!(p.slowed().len(), 1);
    }

    #[tokio::test]
    async fn a_second_throttle_after_the_gap_halves_again_down_to_the_floor() {
        let p = pacer(3.0, 6, 1.0);
        p.throttled("GetFindings");
        {
            // as if the halving were more than the gap ago
            let mut slowdowns = p.slowdowns.lock().unwrap();
            let s = slowdowns.get_mut("GetFindings").unwrap();
            s.since -= SLOWDOWN_GAP;
        }
        p.throttled("GetFindings");
        let pace = p.pace("GetFindings", Instant::now());
        // 0.5 recovered by a second's 0.05, then halved
        assert!((pace - 0.275).abs() < 0.01, "{pace}");
        for _ in 0..20 {
            let mut slowdowns = p.slowdowns.lock().unwrap();
            slowdowns.get_mut("GetFindings").unwrap().since -= SLOWDOWN_GAP;
            drop(slowdowns);
            p.throttled("GetFindings");
        }
        let pace = p.pace("GetFindings", Instant::now());
        assert!((MIN_PACE..MIN_PACE + 0.06).contains(&pace), "{pace}");
    }

    #[tokio::test]
    async fn after_a_throttle_the_next_call_waits_a_slowed_interval_or_is_refused() {
        // slowed to 5/s: the next call is due 200 ms after the throttle, then every 200 ms
        let p = pacer(10.0, 3, 1.0);
        let throttled_at = Instant::now();
        p.throttled("GetFindings");
        let t = Instant::now();
        let err = p
            .acquire(
                "GetFindings",
                t + Duration::from_millis(50),
                lone("1"),
                Payer::Hubgate,
            )
            .await
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(40), "{:?}", t.elapsed());
        assert!(err.rate < 5.1, "{err}");
        // nothing was reserved: the call that waits gets the slot 200 ms after the throttle
        let deadline = Instant::now() + Duration::from_secs(2);
        p.acquire("GetFindings", deadline, lone("1"), Payer::Hubgate)
            .await
            .unwrap();
        let first = throttled_at.elapsed();
        assert!(first >= Duration::from_millis(195), "{first:?}");
        assert!(first < Duration::from_millis(350), "{first:?}");
        p.acquire("GetFindings", deadline, lone("1"), Payer::Hubgate)
            .await
            .unwrap();
        assert!(throttled_at.elapsed() >= Duration::from_millis(395));
    }

    /// Requests that stop waiting for a slowed pace's slot take none: a member hanging up
    /// its reads, one after another, left each one's slot reserved, and the next caller's was
    /// past its deadline (429 at once, no call going out). A slot taken for a call that is
    /// then refused is given back.
    #[tokio::test]
    async fn requests_that_stop_waiting_for_a_slowed_slot_take_none() {
        // slowed to 5/s: a slot every 200 ms
        let p = Arc::new(pacer(10.0, 30, 1.0));
        p.throttled("GetFindings");
        let throttled_at = Instant::now();
        let far = throttled_at + Duration::from_secs(5);
        for _ in 0..5 {
            let waiting = {
                let p = p.clone();
                tokio::spawn(async move {
                    p.acquire("GetFindings", far, lone("m"), Payer::Hubgate)
                        .await
                })
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            waiting.abort();
        }
        p.acquire(
            "GetFindings",
            throttled_at + Duration::from_millis(400),
            lone("admin"),
            Payer::Hubgate,
        )
        .await
        .unwrap();
        let waited = throttled_at.elapsed();
        assert!(waited < Duration::from_millis(300), "{waited:?}");
        // taken when due, then dropped unused: the next call may have it
        let Ok(Slowed::Due(due)) = p.take_slowed("GetFindings", None) else {
            panic!("the admin's call took the slot; the next is due later");
        };
        tokio::time::sleep_until(due.into()).await;
        let Ok(Slowed::Taken(slot)) = p.take_slowed("GetFindings", None) else {
            panic!("the slot is due");
        };
        drop(slot);
        assert!(matches!(
            p.take_slowed("GetFindings", None),
            Ok(Slowed::Taken(_))
        ));
    }

    #[tokio::test]
    async fn passthrough_forwards_pace_per_caller_account() {
        let mut config = QuotaConfig::default();
        config.limits.insert(
            "BatchUpdateFindings".into(),
            Limit {
                rate: 1.0,
                burst: 3,
            },
        );
        let p = Pacer::new(&config);
        let soon = || Instant::now() + Duration::from_millis(100);
        let a = Payer::Account("222222222222");
        // the burst less its call of headroom, then account a's bucket is empty
        for _ in 0..2 {
            p.acquire("BatchUpdateFindings", soon(), lone("m"), a)
                .await
                .unwrap();
        }
        let err = p
            .acquire("BatchUpdateFindings", soon(), lone("m"), a)
            .await
            .unwrap_err();
        assert_eq!(err.account.as_deref(), Some("222222222222"));
        assert!(
            err.to_string()
                .starts_with("account 222222222222's BatchUpdateFindings quota (1/s)"),
            "{err}"
        );
        // another account's, and hubgate's own, are whole
        let b = Payer::Account("333333333333");
        for _ in 0..2 {
            p.acquire("BatchUpdateFindings", soon(), lone("n"), b)
                .await
                .unwrap();
            p.acquire("BatchUpdateFindings", soon(), lone("h"), Payer::Hubgate)
                .await
                .unwrap();
        }
        let own = p
            .acquire("BatchUpdateFindings", soon(), lone("h"), Payer::Hubgate)
            .await
            .unwrap_err();
        assert_eq!(own.account, None);
        assert!(own.to_string().starts_with("hubgate's"), "{own}");
        // an operation hubgate calls itself stays on hubgate's bucket whoever pays: its own
        // account may be the caller's
        config.limits.insert(
            "GetFindings".into(),
            Limit {
                rate: 1.0,
                burst: 3,
            },
        );
        let p = Pacer::new(&config);
        p.acquire("GetFindings", soon(), lone("h"), Payer::Hubgate)
            .await
            .unwrap();
        p.acquire("GetFindings", soon(), lone("m"), a)
            .await
            .unwrap();
        let err = p
            .acquire("GetFindings", soon(), lone("n"), b)
            .await
            .unwrap_err();
        assert_eq!(err.account, None);
    }

    #[tokio::test]
    async fn a_rate_too_fast_to_space_calls_paces_nothing_rather_than_one_a_second() {
        let p = pacer(1e12, 3, 1.0);
        let soon = Instant::now() + Duration::from_millis(200);
        for _ in 0..50 {
            p.acquire("GetFindings", soon, lone("1"), Payer::Hubgate)
                .await
                .unwrap();
        }
        assert_eq!(period(1e12), Duration::from_nanos(1));
        assert_eq!(period(1e-9), Duration::from_secs(1_000_000));
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
