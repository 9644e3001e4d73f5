//! Enrichment: the current state of the findings a request targets, read with GetFindings and
//! kept in a bounded cache. Lookups from concurrent requests are coalesced and batched (at most
//! 20 ids per call, as the API allows), paced to the account's GetFindings quota, and retried
//! with jittered backoff when Security Hub throttles; writes hubgate forwards are written
//! through to (or evicted from) the cache. With `[coordination]` this cache is the local tier
//! of a shared one (`coordination::cache`): lookups ask Redis first, batches claim their
//! findings there so one replica looks each up, and writes update or evict the shared entries
//! before the caller is answered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use tokio::sync::Notify;

use crate::config::EnrichmentConfig;
use crate::coordination::cache::{self as shared, Claim, Looked, Tag, ToStore, ToWrite};
use crate::coordination::Coordination;
// Re-exported where they used to be defined: benches/ imports them from here.
use crate::decide::{
    Changed, FindingState, Lookup, LookupError, LookupFailure, LookupStats, Replay,
};
pub use crate::finding::FindingKey;
use crate::finding::KeyMap;
use crate::identity::CallerId;
pub use crate::metrics::EnrichMetrics;
use crate::metrics::OperationLabels;
use crate::policy::input::{EntryTemplate, Patch, StateFacts, Update, CURRENT_FIELDS};
use crate::policy::state::approximate_size;
pub use crate::policy::state::CurrentFinding;
use crate::quota::{Pacer, QuotaExhausted};
use crate::upstream::{Upstream, UpstreamError};
use queue::{LookupQueue, Who};
pub use sending::WriteId;
use sending::{InFlightEffect, Sending};
use settle::{Journal, Source, Write};

mod queue;
mod sending;
mod settle;

/// GetFindings accepts at most 20 values per filter attribute.
pub const IDS_PER_LOOKUP: usize = 20;
/// A runaway NextToken chain must not hold a lookup forever.
const MAX_PAGES_PER_LOOKUP: usize = 20;
/// Throttled lookups are retried this often before the waiting requests hear about it.
const MAX_THROTTLE_RETRIES: u32 = 6;
/// A lookup that failed as a server's fault (a 5xx, a connection refused or reset) is asked
/// again as often as an SDK's standard retries would: a read changes nothing, and one such
/// answer among a 100-finding update's five lookups failed the whole update at once.
const MAX_TRANSIENT_RETRIES: u32 = 2;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// What a batch call found for one finding: its state (None: not found) or why it failed.
type Outcome = Result<Option<Arc<CurrentFinding>>, UpstreamError>;

/// The account a finding was read as belonging to; None when it was not found.
fn owner_of(state: &Option<Arc<CurrentFinding>>) -> Option<&str> {
    state.as_ref().and_then(|s| s.account_id.as_deref())
}

#[derive(Clone)]
struct Delivery {
    outcome: Outcome,
    call: Arc<CallProgress>,
    /// The generation of writes when it was handed over.
    generation: u64,
    /// Calls made for it before it was asked for again (see `State::ask_again`).
    earlier: Vec<Arc<CallProgress>>,
}

/// One request's wait for the findings it queued: each delivery fills its place, and the
/// request is woken once, when the last arrives. (A channel per finding was an allocation, a
/// wake-up and a timer registration per finding of every cold request.)
struct Waiter {
    slots: Mutex<Slots>,
    all_in: Notify,
    /// The request stopped waiting (it answered, gave up or was dropped): a finding only it
    /// waits for need not be looked up.
    gone: AtomicBool,
    /// The caller the request is of: a finding asked for again waits in that caller's turn of
    /// asked-again findings (`State::requeue`).
    caller: Who,
}

struct Slots {
    got: Vec<Option<Delivery>>,
    left: usize,
}

impl Waiter {
    fn new(n: usize, caller: CallerId<'_>) -> Waiter {
        Waiter {
            caller: Who::from(caller),
            slots: Mutex::new(Slots {
                got: vec![None; n],
                left: n,
            }),
            all_in: Notify::new(),
            gone: AtomicBool::new(false),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while filling a slot leaves the slots as they were before it.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, at: usize, delivery: Delivery) {
        let mut slots = self.slots();
        if let Some(slot @ None) = slots.got.get_mut(at) {
            *slot = Some(delivery);
            slots.left -= 1;
            if slots.left == 0 {
                // A stored permit if the request is not polling yet: no wake-up is lost.
                self.all_in.notify_one();
            }
        }
    }

    async fn all_delivered(&self) {
        while self.slots().left > 0 {
            self.all_in.notified().await;
        }
    }

    fn waiting(&self) -> bool {
        !self.gone.load(Ordering::Relaxed)
    }
}

/// Marks the waiter gone when the request stops waiting, however it stops; one that goes
/// before all its findings came in counts the findings it queued into `State::gone_queued`.
struct StopsWaiting {
    waiter: Arc<Waiter>,
    queued: usize,
    gone_queued: Arc<AtomicUsize>,
}

impl Drop for StopsWaiting {
    fn drop(&mut self) {
        self.waiter.gone.store(true, Ordering::Relaxed);
        if self.queued > 0 && self.waiter.slots().left > 0 {
            self.gone_queued.fetch_add(self.queued, Ordering::Relaxed);
        }
    }
}

/// One batch: which it was, and what it has cost so far (a request that stops waiting still
/// reports the calls made for it).
#[cfg_attr(test, derive(Default))]
struct CallProgress {
    id: u64,
    calls: AtomicUsize,
    /// Security Hub throttled one of its calls: the audit record says so. It stays set once the
    /// retry is sent; whether a request that ran out of time waited for quota is `for_quota`.
    throttled: AtomicBool,
    /// The batch is waiting for quota (to retry a failed call, or for its next page), not for
    /// Security Hub's answer to a call sent. A request whose deadline comes then ran out of
    /// quota (429): it was told Security Hub "did not answer within" its wait (504), when
    /// Security Hub had answered a 5xx in milliseconds and hubgate was pacing the retry.
    for_quota: AtomicBool,
}

struct Cached {
    at: Instant,
    /// None: Security Hub does not have the finding.
    state: Option<Arc<CurrentFinding>>,
    /// The shared value this state was read from or written as, if any.
    tag: Option<Tag>,
    /// What the entry holds, its key included (`held_bytes`), as counted in `State::bytes`
    /// when it was stored: removing it takes away exactly that.
    bytes: usize,
}

/// What a cache entry for `key` holding `state` costs, roughly: the state's values and the
/// key's texts. The key counts for a finding cached as not found too: its identifiers are
/// whatever a caller sent (up to `server.max_body_bytes`), and an entry counted as nothing let
/// a member's distinct made-up identifiers fill memory unseen, bounded only by the number of
/// entries.
fn held_bytes(key: &FindingKey, state: &Option<Arc<CurrentFinding>>) -> usize {
    const ENTRY: usize = 96;
    ENTRY + key.id.len() + key.product_arn.len() + state.as_ref().map_or(0, |s| s.bytes)
}

/// Accounts whose cached findings a write retired without naming them (V2 identifiers name
/// accounts, not findings GetFindings can read), each with when. An entry of such an account
/// read at or before then is stale. It is checked as entries are read, so the write does not
/// search the whole cache, under the state lock, for that account's entries.
#[derive(Default)]
struct Retired {
    accounts: HashMap<Arc<str>, Instant>,
    /// Found findings whose account is not known: any account's write may have touched them.
    unowned: Option<Instant>,
    /// Every found finding: a write of notes of findings hubgate cannot name, with no account
    /// (`Reach::Notes`), which voids no lookup in flight; what such a lookup read before it
    /// then reads as a miss once delivered.
    everything: Option<Instant>,
}

impl Retired {
    /// Whether a write retired what `cached` says. A finding cached as not found stays so: a
    /// write cannot create it.
    fn covers(&self, cached: &Cached) -> bool {
        let Some(state) = &cached.state else {
            return false;
        };
        let retired = match state.account_id.as_deref() {
            Some(account) => self.accounts.get(account),
            None => self.unowned.as_ref(),
        };
        retired
            .into_iter()
            .chain(&self.everything)
            .any(|at| cached.at <= *at)
    }

    /// A write at `now` touched any finding (see `everything`).
    fn retire_everything(&mut self, now: Instant) {
        self.everything = Some(now);
    }

    /// A write at `now` touched findings of `accounts`; entries live `ttl` from their read, so
    /// a retirement older than that covers nothing still cached and is forgotten.
    fn retire(&mut self, accounts: &[Arc<str>], now: Instant, ttl: Duration) {
        if let Some(cut) = now.checked_sub(ttl) {
            self.accounts.retain(|_, at| *at > cut);
        }
        for account in accounts {
            self.accounts.insert(account.clone(), now);
        }
        self.unowned = Some(now);
    }
}

#[derive(Default)]
struct State {
    cache: KeyMap<Cached>,
    /// Entries of `cache` that account-scoped writes retired.
    retired: Retired,
    bytes: usize,
    /// Findings waiting for a batch, per account, served in turn.
    queue: LookupQueue,
    /// Queue entries past which the queue is next rid of the findings nobody waits for any
    /// more (`State::make_room_in_queue`).
    compact_at: usize,
    /// Findings queued by requests that stopped waiting before they all came in, since the
    /// queue was last rid of the findings nobody waits for (added to as they stop, without
    /// the lock).
    gone_queued: Arc<AtomicUsize>,
    /// Requests waiting on each queued or in-flight finding, each with the finding's place
    /// in its wait.
    waiting: KeyMap<Vec<(Arc<Waiter>, usize)>>,
    /// The batch each in-flight finding is in.
    in_flight: KeyMap<Arc<CallProgress>>,
    /// Bumped by every write: a lookup that started before it must not cache what it read.
    generation: u64,
    /// Each finding's writes, kept while a batch (or a decision's read) that began before
    /// them is in flight: the batch must not cache what it read for that finding, but may for
    /// the others. A generation check alone dropped the answers of every batch that overlapped
    /// a write to any finding, so concurrent bulk requests kept looking the same findings up.
    /// In order of generation, each with the patch it laid over the finding, or None when its
    /// effect is unknown (an eviction), and the write in flight it answers.
    written: KeyMap<Vec<Written>>,
    /// The entries of `written` in the order they were made, so that the oldest batch's end
    /// drops what no batch needs any more without visiting every finding still written.
    written_order: VecDeque<(u64, FindingKey)>,
    /// The generation of the last write that may have touched every finding.
    cleared: u64,
    /// Per account, the generation of the last write that may have touched any of its
    /// findings (V2 identifiers name accounts, not findings GetFindings can read): kept while a
    /// batch that began before it is in flight, like `written`. Only findings read as that
    /// account's are touched: a write to one account's findings must not make every other
    /// account's lookups start again.
    cleared_accounts: std::collections::HashMap<Arc<str>, u64>,
    /// Batches in flight, by the generation they began at.
    batches: BTreeMap<u64, usize>,
    /// Queued findings whose shared claim is already settled (handed over by a replica that
    /// gave up on them): the shared generation and write count to store against, if any.
    preclaimed: KeyMap<Option<(String, String)>>,
    /// Claims of findings dropped from the queue before their lookup was sent
    /// (`drop_preclaimed`), with the generation each was taken in: `drive` releases them, so
    /// the other replicas need not wait them out.
    unclaimed: Vec<(FindingKey, String)>,
    /// The calls already made for a finding that was asked for again: the requests waiting on
    /// it are charged for them too when it is delivered.
    spent: KeyMap<Vec<Arc<CallProgress>>>,
    /// The writes Security Hub may not have applied yet.
    journal: Journal,
    /// The writes sent and not answered yet.
    sending: Sending,
    /// The account each finding was last read as, kept past its cache entry (a write evicts
    /// that): a member's request is refused as settling, before any lookup, only for findings
    /// known to be its own (`Enricher::settled`). A finding's account never changes. Emptied
    /// when it reaches `Inner::max_entries` entries.
    owners: KeyMap<Arc<str>>,
}

/// A forwarded write whose outcome or effect hubgate cannot tell.
#[derive(Clone, Copy)]
pub enum Unapplied<'a> {
    /// A BatchUpdateFindings Security Hub may or may not have applied.
    Update(&'a Update),
    /// An import, by operation, with the account each finding (by position) claims.
    Import(&'static str, &'a [Option<String>], Importer<'a>),
}

/// Who sent an import: which findings of an identifier its claims can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Importer<'a> {
    /// A member of this account: it can create or change only that account's finding of an
    /// identifier, so a finding claiming that account changes no other account's finding of
    /// it. Counted as a write to every finding of the identifier, a member's import naming
    /// another account's finding (refused by Security Hub) locked that account's finding
    /// (review 49).
    Member(&'a str),
    /// An administrator: it can give any account, its own included, a copy of any identifier,
    /// which a member's update naming the identifier, judged on the one owner read before,
    /// would reach too. Its import may touch the finding whoever owns it. Scoped to the account
    /// it claimed, a member's update of "its" finding, decided while an administrator's import
    /// of that identifier into another account was in flight, changed the new copy (review
    /// 53).
    Administrator,
}

/// One write's answer to a finding (`State::written`): its generation, the patch it laid over
/// the finding (None: evicted), the write in flight it answers, and the one account whose
/// finding it can have changed (an import claiming it; None: whoever owns it).
type Written = (u64, Option<Arc<Patch>>, Option<WriteId>, Option<Arc<str>>);

/// Whether a write's answer may have changed the finding read as `owner`'s (None: not found,
/// which an import can create, or of no known account). An import claiming an account changes
/// no other account's finding: counted as a write to every finding of its identifier, a
/// member's imports naming another account's finding (refused by Security Hub), one every
/// tenth of a second, had that finding's lookup asked for again until its request ran out of
/// time (review 49).
fn written_to(written: &Written, owner: Option<&str>) -> bool {
    match (&written.3, owner) {
        (Some(account), Some(owner)) => **account == *owner,
        _ => true,
    }
}

/// Whether a write's answer is one a decision already took into account while the write was
/// in flight.
fn already_considered(written: &Written, considered: &[WriteId]) -> bool {
    written.2.is_some_and(|id| considered.contains(&id))
}

impl Unapplied<'_> {
    /// What an update does to each finding it names: its change, or an effect hubgate cannot
    /// model.
    fn update_write(update: &Update) -> Write {
        match update.patch() {
            Some(patch) => Write::Patch(Arc::new(patch)),
            None => Write::Unknown("BatchUpdateFindings", None),
        }
    }

    /// What an import (by `operation`, from `by`) does to its finding at place `i`: an effect
    /// hubgate cannot model, on a finding of the account it claims there when that is the
    /// member's own (`Importer`). A claim that is not an account id as AWS writes one
    /// (`"222222222222 "`, a typo) may still be read by Security Hub as that account: its
    /// write may touch the finding whoever owns it.
    fn import_write(
        operation: &'static str,
        accounts: &[Option<String>],
        by: Importer<'_>,
        i: usize,
    ) -> Write {
        Write::Unknown(operation, Self::import_account(accounts, by, i))
    }

    /// The one account whose finding an import's finding at place `i` can change, if any
    /// (see `import_write`).
    fn import_account(accounts: &[Option<String>], by: Importer<'_>, i: usize) -> Option<Arc<str>> {
        let Importer::Member(own) = by else {
            return None;
        };
        accounts
            .get(i)
            .and_then(|a| a.as_deref())
            .filter(|a| *a == own && crate::finding::is_account_id(a))
            .map(Arc::from)
    }
}

impl State {
    /// `keys` were written to with `patch`, or (None) in a way hubgate cannot tell (evicted),
    /// by the write registered in flight as `sent`; with `scope`, only that account's findings
    /// of those identifiers (an import claiming it).
    fn wrote<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k FindingKey>,
        patch: Option<&Arc<Patch>>,
        sent: Option<WriteId>,
        scope: Option<&Arc<str>>,
    ) {
        self.generation += 1;
        // With no batch in flight, every later batch begins after this write.
        if !self.batches.is_empty() {
            for key in keys {
                self.written.entry(key.clone()).or_default().push((
                    self.generation,
                    patch.cloned(),
                    sent,
                    scope.cloned(),
                ));
                self.written_order.push_back((self.generation, key.clone()));
            }
        }
    }

    /// A write touched findings hubgate cannot name.
    fn wrote_all(&mut self) {
        self.generation += 1;
        self.cleared = self.generation;
    }

    /// A write of notes only touched findings hubgate cannot name: it changes no fact a
    /// decision is judged on, so no lookup or decision in flight is voided (what they read is
    /// still kept from the cache by `Retired`, by read time). Voided, an administrator's
    /// playbook commenting through V2 one finding after another had every member decision on
    /// the account look its findings up again at each comment's answer, until it ran out of
    /// time (504 after 10 s and some 30 GetFindings calls, the quota every account shares).
    fn wrote_notes(&mut self) {
        // Answers Redis gave before it may predate it (`shared_lookup`'s `storable`).
        self.generation += 1;
    }

    /// A write touched findings of `accounts` hubgate cannot name.
    fn wrote_accounts(&mut self, accounts: &[Arc<str>]) {
        self.generation += 1;
        if !self.batches.is_empty() {
            for account in accounts {
                self.cleared_accounts
                    .insert(account.clone(), self.generation);
            }
        }
    }

    /// Whether a write of unknown scope since `since` may have touched a finding read as
    /// `owner`'s (None: not found; a write cannot create a finding).
    fn cleared_since(&self, owner: Option<&str>, since: u64) -> bool {
        self.cleared > since
            || owner
                .and_then(|a| self.cleared_accounts.get(a))
                .is_some_and(|at| *at > since)
    }

    /// Whether what a batch that began at `since` read for `key` (as `owner`'s) may be cached;
    /// or, for a decision, whether it is still what was read, but for the writes in flight it
    /// already `considered` (laid over, and judged both ways).
    fn unwritten_since(
        &self,
        key: &FindingKey,
        owner: Option<&str>,
        since: u64,
        considered: &[WriteId],
    ) -> bool {
        !self.cleared_since(owner, since)
            && self
                .written
                .get(key)
                .and_then(|w| {
                    w.iter()
                        .rev()
                        .find(|w| !already_considered(w, considered) && written_to(w, owner))
                })
                .is_none_or(|(at, ..)| *at <= since)
    }

    /// The patches written to `key` (read as `owner`'s) since `since`, in order, but for the
    /// writes in flight already `considered`; None if a write since then had an effect hubgate
    /// cannot tell.
    fn patches_since(
        &self,
        key: &FindingKey,
        owner: Option<&str>,
        since: u64,
        considered: &[WriteId],
    ) -> Option<Vec<&Arc<Patch>>> {
        if self.cleared_since(owner, since) {
            return None;
        }
        self.written
            .get(key)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|w| w.0 > since && !already_considered(w, considered) && written_to(w, owner))
            .map(|(_, patch, ..)| patch.as_ref())
            .collect()
    }

    fn batch_began(&mut self) -> u64 {
        let now = self.generation;
        self.hold(now);
        now
    }

    /// Keeps the writes after `since` known, as a batch that began then does.
    fn hold(&mut self, since: u64) {
        *self.batches.entry(since).or_default() += 1;
    }

    /// `key` goes back to the queue for everyone waiting on it: what a call read for it may
    /// be older than a write hubgate has since forwarded and answered, and a request that
    /// came after that write must not be handed the state from before it.
    fn ask_again(&mut self, key: &FindingKey) {
        let call = self.in_flight.remove(key);
        if self.waiting.contains_key(key) {
            self.spent.entry(key.clone()).or_default().extend(call);
            self.requeue(key);
        }
    }

    /// Queues `key` again, in the turn of findings asked for again of each caller whose
    /// requests wait for it (see `LookupQueue`).
    fn requeue(&mut self, key: &FindingKey) {
        let mut callers: Vec<Who> = Vec::new();
        for (waiter, _) in self.waiting.get(key).into_iter().flatten() {
            if !callers.contains(&waiter.caller) {
                callers.push(waiter.caller.clone());
            }
        }
        if callers.is_empty() {
            // Nobody waits for it: nothing to look up.
            self.forget(key);
            self.drop_preclaimed(key);
            return;
        }
        self.queue.push_again(&callers, key.clone());
    }

    /// `key` will not be looked up for its shared claim: the claim goes to be released.
    fn drop_preclaimed(&mut self, key: &FindingKey) {
        if let Some(Some((generation, _))) = self.preclaimed.remove(key) {
            self.unclaimed.push((key.clone(), generation));
        }
    }

    /// Before `n` more findings are queued (and, with none, whenever the driver checks for
    /// work): the queue is rid of the findings nobody waits for any more (their requests
    /// answered, gave up or were dropped) once it has doubled since it last was, or once the
    /// requests that stopped waiting had queued half as many findings as it holds. The queue
    /// drops those as they reach its front (`has_live_work`), but behind a request waiting for
    /// quota, the findings of a member's requests that hung up at once stayed queued with
    /// their waiters: 24,000 of them, 60 MB, in 3 s at one request in flight (review 53),
    /// growing with the rate of such requests and not bounded by anything in flight. Each
    /// compaction, linear in the queue, is paid for by the doubling or by the findings of the
    /// requests gone.
    fn make_room_in_queue(&mut self, n: usize) {
        const COMPACT_FLOOR: usize = 1024;
        let entries = self.queue.entries();
        let gone = self.gone_queued.load(Ordering::Relaxed);
        let doubled = entries + n > self.compact_at.max(COMPACT_FLOOR);
        let left = gone > 0 && entries > 0 && 2 * gone >= entries;
        if !(doubled || left) {
            return;
        }
        self.gone_queued.store(0, Ordering::Relaxed);
        let mut removed = Vec::new();
        let (waiting, in_flight) = (&mut self.waiting, &self.in_flight);
        self.queue.retain(
            |key| {
                // A copy of a finding a call already serves: its waiters get that call's answer.
                !in_flight.contains_key(key)
                    && waiting.get_mut(key).is_some_and(|w| {
                        w.retain(|(waiter, _)| waiter.waiting());
                        !w.is_empty()
                    })
            },
            &mut removed,
        );
        for key in &removed {
            if !self.in_flight.contains_key(key) {
                self.forget(key);
                self.drop_preclaimed(key);
            }
        }
        self.compact_at = 2 * (self.queue.entries() + n);
    }

    /// Nobody waits for `key` any more.
    fn forget(&mut self, key: &FindingKey) {
        self.waiting.remove(key);
        self.spent.remove(key);
    }

    /// When the write `sent`, registered for `keys`, was sent, if it is still registered.
    fn sent_at(&self, keys: &[FindingKey], sent: Option<WriteId>) -> Option<Instant> {
        let id = sent?;
        keys.iter().find_map(|k| self.sending.sent_at(id, k))
    }

    /// Journals `write` (a patch) to `keys`, but those another write of other facts was in
    /// flight to beside it (`Sending::contested`), which are journaled as unknown: Security Hub
    /// applies such writes in the order it gets them and answers in any, so neither order can
    /// be ruled out. Returns the split when some are contested.
    fn journal_patch(
        &mut self,
        keys: &[FindingKey],
        write: Write,
        now: Instant,
    ) -> Option<Contested> {
        if !keys.iter().any(|k| self.sending.contested(k)) {
            self.journal.record(keys, write, now);
            return None;
        }
        let (contested, alone): (Vec<FindingKey>, Vec<FindingKey>) = keys
            .iter()
            .cloned()
            .partition(|k| self.sending.contested(k));
        self.journal.record(&alone, write, now);
        let unknown = Write::Unknown("BatchUpdateFindings", None);
        self.journal.record(&contested, unknown, now);
        Some(Contested { contested, alone })
    }

    fn batch_ended(&mut self, began: u64) {
        if let Some(n) = self.batches.get_mut(&began) {
            *n -= 1;
            if *n == 0 {
                self.batches.remove(&began);
            }
        }
        let Some((&oldest, _)) = self.batches.first_key_value() else {
            self.written.clear();
            self.written_order.clear();
            self.cleared_accounts.clear();
            return;
        };
        if !self.cleared_accounts.is_empty() {
            self.cleared_accounts.retain(|_, at| *at > oldest);
        }
        while let Some((at, _)) = self.written_order.front() {
            if *at > oldest {
                break;
            }
            let Some((_, key)) = self.written_order.pop_front() else {
                break;
            };
            if let Some(writes) = self.written.get_mut(&key) {
                // In order of generation: what no batch in flight began before is a prefix.
                let done = writes.partition_point(|(at, ..)| *at <= oldest);
                writes.drain(..done);
                if writes.is_empty() {
                    self.written.remove(&key);
                }
            }
        }
    }
}

/// A write's findings split by `State::journal_patch`: those contested, and the others.
struct Contested {
    contested: Vec<FindingKey>,
    alone: Vec<FindingKey>,
}

/// One batch of lookups in flight, from the generation it began at; ends when dropped, so a
/// batch whose task ends early still lets `written` shrink.
struct Batch {
    inner: Arc<Inner>,
    began: u64,
}

/// When each state a lookup returned was read, as generations of this replica's writes: held
/// from the lookup's start until the request is forwarded, so the writes since stay known.
struct ReadMark {
    held: Batch,
    /// The generation the states without an entry in `delivered` were read at: the local
    /// cache's, or (states from Redis) the lookup's start.
    read_at: u64,
    /// The generation each state handed over by a GetFindings call was delivered at (no write
    /// to it came in between its call's start and then; see `fetch_and_deliver`).
    delivered: KeyMap<u64>,
    /// The writes in flight the decision's states already take into account (laid over, and
    /// judged both ways), sorted: their answers change nothing it did not consider.
    considered: Vec<WriteId>,
    /// The latest write registered when the writes in flight to the findings read were last
    /// taken into account (`Sending::latest`): while it is still the latest, none is new.
    sent_before: WriteId,
    /// Every finding the lookup asked about (found or not). A decision made again on a replay
    /// may forward findings the check that made the replay was not asked about (a partial
    /// forward whose allowed set grows), so a replay brings all of them up to date.
    looked_up: Arc<[FindingKey]>,
}

/// `state` with `patch` laid over it; the same state when it already holds what the patch sets.
fn laid_over(state: &Arc<CurrentFinding>, patch: &Patch) -> Arc<CurrentFinding> {
    if patch.holds(&state.entry) {
        state.clone()
    } else {
        Arc::new(state.patched(patch))
    }
}

impl crate::decide::Reads for ReadMark {
    fn changed(
        &self,
        keys: &[FindingKey],
        read: &KeyMap<Arc<CurrentFinding>>,
        unsettled: Option<&KeyMap<Arc<CurrentFinding>>>,
    ) -> Changed {
        let mut st = self.held.inner.lock();
        let changed = self.check(&mut st, keys, read, unsettled);
        if !matches!(changed, Changed::Patched(_)) || keys.is_empty() {
            return changed;
        }
        // Decided again on the replay, the request may forward findings beyond `keys`: what
        // was written to those since the read (answered, or in flight) goes into the replay too.
        let asked: crate::finding::KeySet = keys.iter().cloned().collect();
        let more: Vec<&FindingKey> = self
            .looked_up
            .iter()
            .filter(|k| !asked.contains(*k))
            .collect();
        if more.is_empty() {
            return changed;
        }
        let all: Vec<FindingKey> = keys.iter().chain(more).cloned().collect();
        let replay = self.check(&mut st, &all, read, unsettled);
        // The first replay's batch ends under the lock: released first.
        drop(st);
        drop(changed);
        replay
    }
}

impl ReadMark {
    fn check(
        &self,
        st: &mut State,
        keys: &[FindingKey],
        read: &KeyMap<Arc<CurrentFinding>>,
        unsettled: Option<&KeyMap<Arc<CurrentFinding>>>,
    ) -> Changed {
        if keys.is_empty() {
            return match st.generation > self.held.began {
                true => Changed::Unknown,
                false => Changed::No,
            };
        }
        // Writes sent since the read and not answered yet: they may land before this one.
        let flying = match st.sending.latest() == self.sent_before {
            true => None,
            false => match st
                .sending
                .effect(keys, Some(read), &self.considered, Instant::now())
            {
                InFlightEffect::None => None,
                InFlightEffect::Unknown(_) => return Changed::Unknown,
                InFlightEffect::Patches(patches) => Some(patches),
            },
        };
        let mut now = None;
        let mut reported = None;
        // Per finding an in-flight write changes, its state without that write: the request
        // must hold whether the write lands or not.
        let mut without: Vec<(FindingKey, Arc<CurrentFinding>)> = Vec::new();
        for (position, key) in keys.iter().enumerate() {
            let at = self.delivered.get(key).copied().unwrap_or(self.read_at);
            let owner = read.get(key).and_then(|s| s.account_id.as_deref());
            let answered = match st.unwritten_since(key, owner, at, &self.considered) {
                true => None,
                // A finding Security Hub processed a write for exists, whatever was read.
                false => match (
                    st.patches_since(key, owner, at, &self.considered),
                    read.get(key),
                ) {
                    (Some(patches), Some(_)) => Some(patches),
                    _ => return Changed::Unknown,
                },
            };
            // A write in flight cannot create a finding read as not found.
            let sent = flying
                .as_ref()
                .and_then(|f| f.change(position))
                .filter(|_| read.contains_key(key));
            let Some(state) = read
                .get(key)
                .filter(|_| answered.is_some() || sent.is_some())
            else {
                continue;
            };
            let patched = |state: &Arc<CurrentFinding>| {
                answered
                    .iter()
                    .flatten()
                    .fold(state.clone(), |state, patch| laid_over(&state, patch))
            };
            let with_answered = patched(state);
            let with_sent = match sent {
                Some(patch) => laid_over(&with_answered, patch),
                None => with_answered.clone(),
            };
            if answered.is_none() && Arc::ptr_eq(&with_sent, state) {
                // Only writes in flight, which change nothing this decision read.
                continue;
            }
            if !Arc::ptr_eq(&with_sent, &with_answered) {
                without.push((key.clone(), with_answered));
            }
            now.get_or_insert_with(|| read.clone())
                .insert(key.clone(), with_sent);
            if let Some(states) = unsettled {
                if let Some(state) = states.get(key) {
                    reported
                        .get_or_insert_with(|| states.clone())
                        .insert(key.clone(), patched(state));
                }
            }
        }
        let Some(current) = now else {
            return Changed::No;
        };
        let unsettled = match reported.or_else(|| unsettled.cloned()) {
            Some(states) => Some(states),
            None if without.is_empty() => None,
            None => {
                let mut states = current.clone();
                states.extend(without);
                Some(states)
            }
        };
        // `effect` left out the writes considered before: these are new to the list.
        let mut considered = self.considered.clone();
        considered.extend(flying.iter().flat_map(|f| f.ids.iter().copied()));
        considered.sort_unstable();
        let began = st.batch_began();
        let reads: Box<dyn crate::decide::Reads> = Box::new(ReadMark {
            held: Batch {
                inner: self.held.inner.clone(),
                began,
            },
            read_at: began,
            delivered: KeyMap::default(),
            considered,
            looked_up: self.looked_up.clone(),
            // The lookup's, not the latest write's: the writes in flight were looked for among
            // `keys` only, and a decision made again on this replay may forward findings beyond
            // them (a partial forward whose allowed set grows). Those sent since the first read
            // go on being looked for, as they were before the fast path.
            sent_before: self.sent_before,
        });
        Changed::Patched(Replay {
            current,
            unsettled,
            reads: std::sync::Mutex::new(Some(reads)),
        })
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.inner.lock().batch_ended(self.began);
    }
}

struct Inner {
    upstream: Arc<Upstream>,
    pacer: Arc<Pacer>,
    ttl: Duration,
    negative_ttl: Duration,
    /// `enrichment.settle_ms`.
    settle: Duration,
    /// A write's journal entry did not reach Redis, or the replica fell back (Redis may have
    /// lost what it shared): the journal is shared again (see `Enricher::share_again`) once it
    /// can be.
    journal_lost: AtomicBool,
    max_entries: usize,
    /// `enrichment.max_cache_bytes`: what the entries may hold at most (`held_bytes`).
    max_bytes: usize,
    state: Mutex<State>,
    work: Notify,
    next_call: AtomicU64,
    metrics: EnrichMetrics,
    coord: Option<Arc<Coordination>>,
}

pub struct Enricher {
    inner: Arc<Inner>,
    driver: OnceLock<()>,
    /// Held by a request from checking that its decision still holds to registering its
    /// write as in flight (see `send_order`).
    send_order: Mutex<()>,
}

/// A write hubgate has sent, or is about to send, to Security Hub (what `Enricher::sending`
/// registers).
#[derive(Clone, Copy)]
pub enum Sent<'a> {
    /// These findings, by `write`.
    Findings {
        keys: &'a [FindingKey],
        write: Unapplied<'a>,
    },
    /// Findings hubgate cannot name (filters, OCSF identifiers), by `operation`; with
    /// `accounts`, only findings of those accounts; `reach`: what it may change in them.
    Everything {
        operation: &'static str,
        accounts: Option<&'a [String]>,
        reach: Reach,
    },
}

/// What a write of findings hubgate cannot name may change in them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Their notes only (a V2 `Comment`, an `UpdateFindings` `Note`): no fact a decision is
    /// judged on. Their cached states are still retired (a rule may read `current.Note`), but
    /// neither in flight nor once answered does it leave them unknown: as for two notes in
    /// flight at once, refusing every decision on those findings for `settle_ms` would lock
    /// their members out over a note (one V2 comment on one finding refused every finding of
    /// its account for five minutes), and refusing them while it is in flight did so for as
    /// long as comments kept coming.
    Notes,
    /// Anything: the state of every finding it may touch is unknown from when it is sent
    /// until the settle window after its answer has passed.
    State,
}

impl Reach {
    /// What a write setting `update` may change.
    pub fn of(update: &crate::policy::input::Update) -> Reach {
        match update.sets_only_note() {
            true => Reach::Notes,
            false => Reach::State,
        }
    }
}

/// A write registered as in flight. It leaves the register when dropped: its holder drops it
/// once the answer has been written through to the cache or evicted from it, so that there is
/// no moment at which neither the register nor the cache and journal know of the write.
pub struct InFlight {
    inner: Arc<Inner>,
    id: WriteId,
    keys: Vec<FindingKey>,
}

impl InFlight {
    pub fn id(&self) -> WriteId {
        self.id
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.sending.done(self.id, &self.keys);
        self.inner
            .metrics
            .writes_in_flight
            .set(st.sending.writes() as i64);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `cached` says, if it is neither expired nor retired by an account's write.
    fn fresh<'a>(
        &self,
        cached: &'a Cached,
        retired: &Retired,
        now: Instant,
    ) -> Option<&'a Option<Arc<CurrentFinding>>> {
        (now.duration_since(cached.at) < self.ttl_for(&cached.state) && !retired.covers(cached))
            .then_some(&cached.state)
    }

    fn report(&self, st: &State) {
        self.metrics.entries.set(st.cache.len() as i64);
        self.metrics.queued.set(st.queue.entries() as i64);
        self.metrics.queued_callers.set(st.queue.callers() as i64);
        self.metrics.bytes.set(st.bytes as i64);
        self.metrics.settling.set(st.journal.findings() as i64);
        self.metrics
            .writes_in_flight
            .set(st.sending.writes() as i64);
        self.metrics
            .settling_all
            .set(st.journal.everything_left(Instant::now()).as_secs() as i64);
    }

    /// Redis, while this replica shares through it.
    fn shared(&self) -> Option<&Coordination> {
        self.coord.as_deref().filter(|c| c.healthy())
    }

    fn ttl_for(&self, state: &Option<Arc<CurrentFinding>>) -> Duration {
        if state.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        }
    }

    /// Stores a finding's state (None: not found), keeping the cache within its bound; `tag`
    /// names the shared value it matches. The entry's time to live counts from `at`: for a
    /// GetFindings answer, when its lookup began, not when the answer came in (see
    /// `fetch_and_deliver`).
    fn store_tagged(
        &self,
        st: &mut State,
        key: FindingKey,
        state: Option<Arc<CurrentFinding>>,
        tag: Option<Tag>,
        at: Instant,
        now: Instant,
    ) {
        let ttl = self.ttl_for(&state);
        if ttl.is_zero() || now.saturating_duration_since(at) >= ttl {
            return;
        }
        // What it replaces goes first: the bounds below are about the other entries.
        self.remove(st, &key);
        let bytes = held_bytes(&key, &state);
        if bytes > self.max_bytes {
            // Larger than the whole cache may hold: looked up again when asked for again.
            return;
        }
        let full =
            |st: &State| st.cache.len() >= self.max_entries || st.bytes + bytes > self.max_bytes;
        if full(st) {
            let retired = &st.retired;
            st.cache
                .retain(|_, c| self.fresh(c, retired, now).is_some());
            st.bytes = st.cache.values().map(|c| c.bytes).sum();
            if full(st) {
                // Still full of live entries: the oldest go, a tenth of each bound at least,
                // rather than the cache growing past them.
                let entries_goal = self.max_entries - (self.max_entries / 10).max(1);
                let bytes_goal = (self.max_bytes - self.max_bytes / 10).saturating_sub(bytes);
                let mut ages: Vec<(Instant, FindingKey)> =
                    st.cache.iter().map(|(k, c)| (c.at, k.clone())).collect();
                ages.sort_unstable_by_key(|(at, _)| *at);
                for (_, k) in ages {
                    if st.cache.len() <= entries_goal && st.bytes <= bytes_goal {
                        break;
                    }
                    self.remove(st, &k);
                }
            }
        }
        st.bytes += bytes;
        st.cache.insert(
            key,
            Cached {
                at,
                state,
                tag,
                bytes,
            },
        );
    }

    fn remove(&self, st: &mut State, key: &FindingKey) {
        if let Some(old) = st.cache.remove(key) {
            st.bytes -= old.bytes;
        }
    }
}

impl Enricher {
    pub fn new(
        upstream: Arc<Upstream>,
        pacer: Arc<Pacer>,
        config: &EnrichmentConfig,
        metrics: EnrichMetrics,
    ) -> Enricher {
        Enricher {
            inner: Arc::new(Inner {
                upstream,
                pacer,
                ttl: Duration::from_millis(config.cache_ttl_ms),
                negative_ttl: Duration::from_millis(config.negative_ttl_ms),
                settle: Duration::from_millis(config.settle_ms),
                journal_lost: AtomicBool::new(false),
                max_entries: config.max_cache_entries.max(1),
                max_bytes: usize::try_from(config.max_cache_bytes).unwrap_or(usize::MAX),
                state: Mutex::new(State {
                    journal: Journal::new(Duration::from_millis(config.settle_ms)),
                    ..State::default()
                }),
                work: Notify::new(),
                next_call: AtomicU64::new(1),
                metrics,
                coord: None,
            }),
            driver: OnceLock::new(),
            send_order: Mutex::new(()),
        }
    }

    /// Makes this cache the local tier of the replicas' shared one. When the replica falls
    /// back to its own state, what it cached may be stale (other replicas' writes reached
    /// only Redis), so it is dropped.
    pub fn share_through(mut self, coord: Arc<Coordination>) -> Enricher {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.coord = Some(coord.clone());
        }
        let weak = Arc::downgrade(&self.inner);
        let (rejoins, inner) = (coord.clone(), weak.clone());
        tokio::spawn(async move {
            loop {
                rejoins.rejoined().notified().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                share_again(&inner).await;
            }
        });
        coord.on_fallback(move || {
            if let Some(inner) = weak.upgrade() {
                // What this replica shared may be gone when it rejoins (Redis restarted
                // empty, flushed, or failed over to a replica behind it): its whole journal
                // is shared again then, or another replica would judge without its writes.
                inner.journal_lost.store(true, Ordering::SeqCst);
                let mut st = inner.lock();
                st.wrote_all();
                st.cache.clear();
                st.bytes = 0;
                inner.report(&st);
            }
        });
        self
    }

    /// Asks the shared cache for `keys`. Returns the keys it did not answer, or None when
    /// Redis is not in use (then the local cache answers).
    async fn shared_lookup(
        &self,
        keys: &[FindingKey],
        found: &mut KeyMap<Arc<CurrentFinding>>,
        stats: &mut LookupStats,
    ) -> Option<Vec<FindingKey>> {
        let coord = self.inner.shared()?;
        // The shared cache sees every replica's writes, this one only its own: a local entry
        // is used only when Redis confirms it still holds the same value.
        let (tags, generation) = {
            let st = self.inner.lock();
            let now = Instant::now();
            let tags: Vec<Option<Tag>> = keys
                .iter()
                .map(|k| {
                    st.cache
                        .get(k)
                        .filter(|c| self.inner.fresh(c, &st.retired, now).is_some())
                        .and_then(|c| c.tag.clone())
                })
                .collect();
            (tags, st.generation)
        };
        let asked: Vec<(&FindingKey, Option<&str>)> = keys
            .iter()
            .zip(&tags)
            .map(|(k, t)| (k, t.as_deref()))
            .collect();
        let looked = shared::lookup(coord, &asked).await?;
        let mut misses = Vec::new();
        let mut st = self.inner.lock();
        let now = Instant::now();
        // A local write since the question: what Redis answered may predate it.
        let storable = st.generation == generation;
        let mut hits = 0u64;
        for ((key, tag), looked) in keys.iter().zip(tags).zip(looked) {
            match looked {
                // Fresh again: an account's write may have retired it since the question.
                Looked::Same => match st.cache.get(key).filter(|c| {
                    tag.is_some() && c.tag == tag && self.inner.fresh(c, &st.retired, now).is_some()
                }) {
                    Some(c) => {
                        hits += 1;
                        if let Some(f) = &c.state {
                            found.insert(key.clone(), f.clone());
                        }
                    }
                    None => misses.push(key.clone()),
                },
                Looked::Value(tag, state) => {
                    hits += 1;
                    if let Some(f) = &state {
                        found.insert(key.clone(), f.clone());
                    }
                    if storable {
                        self.inner
                            .store_tagged(&mut st, key.clone(), state, Some(tag), now, now);
                    }
                }
                Looked::Miss => misses.push(key.clone()),
            }
        }
        stats.cache_hits += hits as usize;
        coord.metrics().shared_hits.inc_by(hits);
        self.inner.report(&st);
        Some(misses)
    }

    /// Current state of each (Id, ProductArn); a key missing from the result was not found.
    /// Findings not cached are queued as `caller`'s. Waits for shared batches until
    /// `deadline`, then gives up with a quota error. The mark says when each state was read.
    async fn lookup(
        &self,
        keys: &[FindingKey],
        caller: CallerId<'_>,
        member_of: Option<&str>,
        deadline: Instant,
    ) -> Result<(KeyMap<Arc<CurrentFinding>>, LookupStats, ReadMark), LookupFailure> {
        let mut found = KeyMap::with_capacity_and_hasher(keys.len(), Default::default());
        let mut stats = LookupStats::default();
        // Refused before any call is spent on it.
        self.settled(keys, member_of)?;
        let mut pending = Vec::new();
        let waiting;
        let held = Batch {
            inner: self.inner.clone(),
            began: self.inner.lock().batch_began(),
        };
        let shared_misses = self.shared_lookup(keys, &mut found, &mut stats).await;
        let (keys, local_hits) = match &shared_misses {
            Some(misses) => (misses.as_slice(), false),
            None => (keys, true),
        };
        let mut mark = ReadMark {
            read_at: held.began,
            held,
            delivered: KeyMap::default(),
            considered: Vec::new(),
            // Set when the lookup takes the writes in flight into account.
            sent_before: WriteId::MAX,
            // Set by the lookup that asked about them all (`keys` here may be Redis's misses).
            looked_up: Arc::new([]),
        };
        {
            let mut st = self.inner.lock();
            if local_hits {
                mark.read_at = st.generation;
            }
            let now = Instant::now();
            for key in keys {
                if let Some(state) = st
                    .cache
                    .get(key)
                    .filter(|_| local_hits)
                    .and_then(|c| self.inner.fresh(c, &st.retired, now))
                {
                    stats.cache_hits += 1;
                    if let Some(f) = state {
                        found.insert(key.clone(), f.clone());
                    }
                    continue;
                }
                pending.push(key.clone());
            }
            let waiter =
                (!pending.is_empty()).then(|| Arc::new(Waiter::new(pending.len(), caller)));
            let mut queued = Vec::new();
            for (at, key) in pending.iter().enumerate() {
                let Some(waiter) = &waiter else { break };
                let at = (waiter.clone(), at);
                match st.waiting.get_mut(key) {
                    // Already queued or in flight for another request: share that call. One
                    // still queued is queued in this caller's turn too, so that another
                    // caller's backlog (or a request naming this caller's findings behind
                    // one) cannot hold it back; whichever turn comes first looks it up.
                    Some(waiters) => {
                        waiters.push(at);
                        if !st.in_flight.contains_key(key) {
                            queued.push(key.clone());
                        }
                    }
                    None => {
                        st.waiting.insert(key.clone(), vec![at]);
                        queued.push(key.clone());
                    }
                }
            }
            waiting = waiter.map(|waiter| StopsWaiting {
                waiter,
                queued: queued.len(),
                gone_queued: st.gone_queued.clone(),
            });
            if !queued.is_empty() {
                // Only findings a waiter waits for are queued.
                if let Some(waiter) = &waiting {
                    st.make_room_in_queue(queued.len());
                    st.queue.push_back(&waiter.waiter.caller, queued);
                }
                self.inner.work.notify_one();
            }
        }
        stats.misses = pending.len();
        if pending.is_empty() {
            return Ok((found, stats, mark));
        }
        self.driver.get_or_init(|| {
            tokio::spawn(drive(self.inner.clone()));
        });
        let wait_started = Instant::now();

        let mut seen_calls: Vec<u64> = Vec::new();
        let mut count = |stats: &mut LookupStats, call: &CallProgress| {
            if !seen_calls.contains(&call.id) {
                seen_calls.push(call.id);
                stats.calls += call.calls.load(Ordering::Relaxed);
                stats.throttled |= call.throttled.load(Ordering::Relaxed);
            }
        };
        // Marks the request gone when it returns, however it returns.
        let Some(StopsWaiting { waiter, .. }) = &waiting else {
            return Ok((found, stats, mark));
        };
        let in_time = tokio::time::timeout_at(deadline.into(), waiter.all_delivered())
            .await
            .is_ok();
        let got = std::mem::take(&mut waiter.slots().got);
        if !in_time {
            // The wait ran out before every finding's batch answered; what was spent on them
            // so far still counts. A failure Security Hub already answered for one of them is
            // the error, as it would have been had the request stopped there.
            let mut upstream = None;
            // Whether some finding was still waiting for quota (queued, or its call being
            // retried after a throttle) rather than for the answer to a call sent.
            let mut for_quota = false;
            let st = self.inner.lock();
            for (key, delivery) in pending.iter().zip(&got) {
                match delivery {
                    Some(d) => {
                        for call in std::iter::once(&d.call).chain(&d.earlier) {
                            count(&mut stats, call);
                        }
                        if let Err(e) = &d.outcome {
                            upstream.get_or_insert_with(|| e.clone());
                        }
                    }
                    None => {
                        let call = st.in_flight.get(key);
                        // Not `throttled`: a retry sent after a throttle, with quota, that
                        // Security Hub is slow to answer is Security Hub's delay (504).
                        for_quota |= call.is_none_or(|c| c.for_quota.load(Ordering::Relaxed));
                        let earlier = st.spent.get(key).map_or(&[][..], Vec::as_slice);
                        for call in call.into_iter().chain(earlier) {
                            count(&mut stats, call);
                        }
                    }
                }
            }
            let waited_ms = wait_started.elapsed().as_millis() as u64;
            let error = match upstream {
                Some(e) => LookupError::Upstream(e),
                // Every call it waited for had gone out with quota to spare: Security Hub was
                // slow, and saying the quota had no room sent whoever read it after the quota.
                None if !for_quota => {
                    LookupError::Upstream(UpstreamError::Timeout { ms: waited_ms })
                }
                None => LookupError::Quota(QuotaExhausted {
                    operation: "GetFindings",
                    rate: self.inner.pacer.rate("GetFindings"),
                    waited_ms,
                    account: None,
                }),
            };
            return Err(LookupFailure { error, stats });
        }
        let mut failure: Option<LookupError> = None;
        for (key, delivery) in pending.into_iter().zip(got) {
            // Every slot is filled once all are in.
            let Some(delivery) = delivery else { continue };
            count(&mut stats, &delivery.call);
            for call in &delivery.earlier {
                count(&mut stats, call);
            }
            if delivery.outcome.is_ok() {
                mark.delivered.insert(key.clone(), delivery.generation);
            }
            match delivery.outcome {
                Ok(Some(f)) => {
                    found.insert(key, f);
                }
                Ok(None) => {}
                Err(e) => {
                    failure.get_or_insert(LookupError::Upstream(e));
                }
            }
        }
        match failure {
            Some(error) => Err(LookupFailure { error, stats }),
            None => Ok((found, stats, mark)),
        }
    }

    /// A forwarded BatchUpdateFindings was processed for `processed`: their cached state
    /// becomes the state the update set, so the next decision needs no lookup. An entry whose
    /// change hubgate cannot apply is evicted instead. Returns once the shared cache (if any)
    /// agrees, so that a caller's next request, through any replica, sees the change.
    pub async fn write_through(
        &self,
        processed: &[FindingKey],
        update: &Update,
        sent: Option<WriteId>,
    ) {
        let Some(patch) = update.patch() else {
            return self.evict(processed, Unapplied::Update(update), sent).await;
        };
        let patch = Arc::new(patch);
        let sharing = self.inner.coord.is_some();
        let mut writes = Vec::with_capacity(processed.len());
        let sent_at;
        let split = {
            let mut st = self.inner.lock();
            // A finding another write of other facts was in flight to beside this one may hold
            // either's values (`State::journal_patch`). Written through in the order answered,
            // an administrator's LOW answered after their CRITICAL sent later left LOW cached
            // over Security Hub's CRITICAL, and a member's LOW was judged no lowering: such a
            // finding is evicted instead, its state unknown for the settle window.
            let now = Instant::now();
            // Only Redis asks (`share_change`).
            sent_at = sharing.then(|| st.sent_at(processed, sent)).flatten();
            let split = st.journal_patch(processed, Write::Patch(patch.clone()), now);
            match &split {
                None => st.wrote(processed, Some(&patch), sent, None),
                Some(split) => {
                    st.wrote(&split.contested, None, sent, None);
                    st.wrote(&split.alone, Some(&patch), sent, None);
                }
            }
            // The same for every finding of this write (see the loop's use of it).
            let beside = sent.and_then(|id| st.sending.beside(id)).cloned();
            for key in processed {
                if split.is_some() && st.sending.contested(key) {
                    self.inner.remove(&mut st, key);
                    writes.push((key, None, None));
                    continue;
                }
                // The entry keeps the age of its read: the update changed only the fields it
                // set, so the others are as stale as before, and a write must not prolong
                // (or revive) what Security Hub was last read to say about them.
                let fresh = st
                    .cache
                    .get(key)
                    .filter(|c| self.inner.fresh(c, &st.retired, now).is_some());
                // A write of findings hubgate cannot name (V2 identifiers of the finding's
                // account, filters) in flight beside this one may have been applied last: an
                // entry read after its answer may hold its value, and this answer, coming
                // later, does not say this change won. Laid over that read, an administrator's
                // LOW (sent first, answered last) left LOW cached over the V2 CRITICAL Security
                // Hub applied last, and a member's LOW was judged no lowering (settle_ms = 0;
                // otherwise the journal leaves the account's findings unknown meanwhile).
                let Some((read_at, Some(state), expected)) = fresh
                    .filter(|c| {
                        !beside
                            .as_ref()
                            .is_some_and(|b| b.may_touch(owner_of(&c.state)))
                    })
                    .map(|c| {
                        (
                            c.at,
                            c.state.as_ref().map(|f| laid_over(f, &patch)),
                            c.tag.clone(),
                        )
                    })
                else {
                    // Not cached, expired, cached as not found, or maybe changed by a write
                    // beside this one: nothing to lay the change over.
                    self.inner.remove(&mut st, key);
                    writes.push((key, None, None));
                    continue;
                };
                if !sharing {
                    // In place: the key, its age, its tag and the entry's size stay as they were.
                    if let Some(c) = st.cache.get_mut(key) {
                        c.state = Some(state);
                    }
                    continue;
                }
                let tag = shared::new_tag();
                self.inner.store_tagged(
                    &mut st,
                    key.clone(),
                    Some(state.clone()),
                    Some(tag.clone()),
                    read_at,
                    now,
                );
                writes.push((key, expected, Some((tag, state))));
            }
            self.inner.report(&st);
            split
        };
        if let Some(coord) = &self.inner.coord {
            let items = writes
                .iter()
                .map(|(key, expected, new)| ToWrite {
                    key,
                    expected: expected.as_deref(),
                    value: new.as_ref().map(|(tag, f)| shared::encode(tag, Some(f))),
                })
                .collect();
            shared::write(coord, items).await;
            self.share_patch(processed, &patch, split.as_ref(), sent_at)
                .await;
        }
    }

    /// Adds a patch to the shared journal as `State::journal_patch` split it: the contested
    /// findings as an unknown write. `sent_at`: when the write was sent (None: not known).
    async fn share_patch(
        &self,
        keys: &[FindingKey],
        patch: &Patch,
        split: Option<&Contested>,
        sent_at: Option<Instant>,
    ) {
        match split {
            None => self.share_change(keys, patch, sent_at).await,
            Some(split) => {
                self.share_change(&split.alone, patch, sent_at).await;
                let contested = &split.contested;
                let write = shared::Journaled::Unknown(contested, "BatchUpdateFindings", None);
                self.share_write(write).await;
            }
        }
    }

    /// Adds a change to the shared journal. Redis compares it with the changes other
    /// replicas shared while it was in flight (`JOURNAL_WRITE`): `Sending::contested` sees
    /// only this replica's writes.
    async fn share_change(&self, keys: &[FindingKey], patch: &Patch, sent_at: Option<Instant>) {
        if self.inner.settle.is_zero() {
            return;
        }
        if let Some(coord) = &self.inner.coord {
            share_again(&self.inner).await;
            // Measured before the call, so padded by the longest a call may take before Redis
            // runs it; a write whose sending is not known counts as in flight for the window.
            let in_flight = match sent_at {
                Some(at) => at.elapsed() + coord.op_timeout(),
                None => self.inner.settle,
            };
            let in_flight_ms = (in_flight.as_millis() as u64).max(1);
            if !journal_change(coord, self.inner.settle, keys, patch, in_flight_ms).await {
                self.inner.journal_lost.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Forgets what a write may have changed, here and in the shared cache. What the write was
    /// decides what the next decisions may assume while Security Hub may still be applying it.
    pub async fn evict(&self, keys: &[FindingKey], write: Unapplied<'_>, sent: Option<WriteId>) {
        let write = match write {
            Unapplied::Update(update) => Ok(Unapplied::update_write(update)),
            // Each finding's scope, worked out once from the claims, for this replica's state
            // and the shared journal alike: a claim that is not an account id (`"222222222222
            // "`) scopes to no account. Shared as the raw claim, it scoped the write on every
            // other replica to that text, so the finding of 222222222222 was not settling there
            // (review 50).
            Unapplied::Import(operation, accounts, by) => Err((
                operation,
                (0..keys.len())
                    .map(|i| Unapplied::import_account(accounts, by, i))
                    .collect::<Vec<_>>(),
            )),
        };
        // Findings another write of other facts is in flight to (`State::journal_patch`):
        // whether or not this one landed, neither order can be ruled out.
        let mut split = None;
        let sent_at;
        {
            let mut st = self.inner.lock();
            let now = Instant::now();
            sent_at = self
                .inner
                .coord
                .as_ref()
                .and_then(|_| st.sent_at(keys, sent));
            match &write {
                Ok(write) => {
                    st.wrote(keys, None, sent, None);
                    match write {
                        Write::Patch(_) => split = st.journal_patch(keys, write.clone(), now),
                        Write::Unknown(..) => st.journal.record(keys, write.clone(), now),
                    }
                    for key in keys {
                        self.inner.remove(&mut st, key);
                    }
                }
                Err((operation, scopes)) => {
                    for (key, account) in keys.iter().zip(scopes) {
                        let one = std::slice::from_ref(key);
                        st.wrote(one, None, sent, account.as_ref());
                        st.journal
                            .record(one, Write::Unknown(operation, account.clone()), now);
                        // Another account's finding of the identifier is as it was, and a
                        // lookup of it in flight is not asked again (`wrote` is scoped to
                        // the claimed account); but its entry goes too: the identifier may now
                        // have a second owner, which a member's update naming it must be
                        // judged against on a fresh read. Kept, it let a member's update of
                        // "its" finding change the copy an administrator had just imported
                        // into another account, judged on the entry that named one owner
                        // (review 53).
                        self.inner.remove(&mut st, key);
                    }
                }
            }
            self.inner.report(&st);
        }
        if let Some(coord) = &self.inner.coord {
            unshare(coord, keys).await;
            match &write {
                Ok(Write::Patch(patch)) => {
                    self.share_patch(keys, patch, split.as_ref(), sent_at).await
                }
                Ok(Write::Unknown(operation, _)) => {
                    let write = shared::Journaled::Unknown(keys, operation, None);
                    self.share_write(write).await;
                }
                Err((operation, scopes)) => {
                    let write = shared::Journaled::Unknown(keys, operation, Some(scopes));
                    self.share_write(write).await;
                }
            }
        }
    }

    /// Security Hub reports that it does not have `keys` (a write's `FindingNotFound`): the
    /// write changed none of them, so nothing is laid over what is read for them (nor kept in
    /// the settle journal, which holds a write's findings for `settle_ms`), and what was cached
    /// for them goes, here and in the shared cache.
    pub async fn forget(&self, keys: &[FindingKey]) {
        {
            let mut st = self.inner.lock();
            for key in keys {
                self.inner.remove(&mut st, key);
            }
            self.inner.report(&st);
        }
        if let Some(coord) = &self.inner.coord {
            unshare(coord, keys).await;
        }
    }

    /// Forgets everything: for writes (by `operation`) that name findings hubgate cannot map to
    /// cache entries. With `accounts`, the write can have changed only findings of those
    /// accounts (OCSF identifiers name theirs), and only their state is unknown meanwhile.
    pub async fn evict_all(
        &self,
        operation: &'static str,
        accounts: Option<&[String]>,
        reach: Reach,
    ) {
        // Only a write that may change what decisions are judged on leaves state unknown.
        let journaled = reach == Reach::State;
        {
            let mut st = self.inner.lock();
            match accounts {
                Some(accounts) => {
                    let accounts: Vec<Arc<str>> =
                        accounts.iter().map(|a| Arc::from(a.as_str())).collect();
                    match reach {
                        Reach::State => st.wrote_accounts(&accounts),
                        Reach::Notes => st.wrote_notes(),
                    }
                    let now = Instant::now();
                    if journaled {
                        st.journal.record_accounts(&accounts, operation, now);
                    }
                    // Only those accounts' findings, and any whose account is not known; they
                    // read as misses from now on and go as they expire or the cache fills.
                    st.retired.retire(&accounts, now, self.inner.ttl);
                }
                None => {
                    match reach {
                        Reach::State => st.wrote_all(),
                        Reach::Notes => {
                            st.wrote_notes();
                            st.retired.retire_everything(Instant::now());
                        }
                    }
                    if journaled {
                        st.journal.record_everything(operation, Instant::now());
                    }
                    st.cache.clear();
                    st.bytes = 0;
                }
            }
            self.inner.report(&st);
        }
        if let Some(coord) = &self.inner.coord {
            // Retired in Redis even when this replica's settle journal outlasts its own
            // entries: the journal entry lasts this replica's settle_ms, while an entry another
            // replica stored lasts that replica's cache_ttl_ms, which may be longer (replicas
            // part-way through a change of it). Until review 45 nothing was retired then, and
            // after the window a member's lowering was judged on an entry read before the
            // write. It costs one Redis call and no lookup: the journal refuses these accounts'
            // findings for the window anyway. Only those accounts' entries go (each names its owner), so a
            // member's writes to its own account cannot make every account's lookups start
            // over.
            match accounts {
                None => shared::evict_all(coord).await,
                Some(accounts) => shared::retire_accounts(coord, accounts).await,
            }
            if journaled {
                let write = match accounts {
                    Some(accounts) => shared::Journaled::Accounts(accounts, operation),
                    None => shared::Journaled::Everything(operation),
                };
                self.share_write(write).await;
            }
        }
    }
}

impl Enricher {
    /// Held while a request checks that the state its decision read has not changed and then
    /// registers its own write: two requests' checks and registrations never interleave, so
    /// of two conflicting writes, the one registered second was decided knowing of the first.
    pub fn send_order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.send_order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a write that is about to be sent: from now until the returned guard is
    /// dropped, a decision that reads one of its findings holds whether it lands or not
    /// (`sending`).
    pub fn sending(&self, sent: Sent<'_>) -> InFlight {
        let now = Instant::now();
        let (write_keys, writes): (&[FindingKey], Vec<Write>) = match sent {
            Sent::Findings {
                keys,
                write: Unapplied::Update(update),
            } => (keys, vec![Unapplied::update_write(update)]),
            Sent::Findings {
                keys,
                write: Unapplied::Import(operation, accounts, by),
            } => {
                let writes = (0..keys.len())
                    .map(|i| Unapplied::import_write(operation, accounts, by, i))
                    .collect();
                (keys, writes)
            }
            Sent::Everything { .. } => (&[], Vec::new()),
        };
        let mut st = self.inner.lock();
        let id = match sent {
            Sent::Findings { .. } => st.sending.findings(write_keys, &writes, now),
            // Even a write of notes is registered in flight (a write answered beside it may
            // have landed before it), but no decision waits for it (`Sending::effect`).
            Sent::Everything {
                operation,
                accounts: Some(accounts),
                reach,
            } => {
                let accounts: Vec<Arc<str>> =
                    accounts.iter().map(|a| Arc::from(a.as_str())).collect();
                st.sending.accounts(&accounts, operation, reach, now)
            }
            Sent::Everything {
                operation,
                accounts: None,
                reach,
            } => st.sending.everything(operation, reach, now),
        };
        self.inner
            .metrics
            .writes_in_flight
            .set(st.sending.writes() as i64);
        drop(st);
        InFlight {
            inner: self.inner.clone(),
            id,
            keys: write_keys.to_vec(),
        }
    }

    /// Brings the gauges up to date, for a scrape: the journal expires as time passes, not
    /// only when requests come.
    pub fn sample_metrics(&self) {
        let mut st = self.inner.lock();
        st.journal.expire(Instant::now());
        self.inner.report(&st);
    }

    /// What the other replicas wrote to `keys` within the settle window, from Redis. None
    /// without Redis (or while it fails: then this replica is on its own, as for the cache).
    async fn shared_journal(
        &self,
        keys: &[FindingKey],
        states: &KeyMap<Arc<CurrentFinding>>,
    ) -> Option<settle::Shared> {
        if self.inner.settle.is_zero() {
            return None;
        }
        self.share_again().await;
        let coord = self.inner.shared()?;
        let mut accounts: Vec<&str> = Vec::new();
        for state in states.values() {
            if let Some(a) = state.account_id.as_deref() {
                if !accounts.contains(&a) {
                    accounts.push(a);
                }
            }
        }
        let settle_ms = self.inner.settle.as_millis() as u64;
        let read = shared::journal_read(coord, settle_ms, keys, &accounts).await?;
        let left = |(op, ms): (String, u64)| (op, Duration::from_millis(ms));
        let mut out = settle::Shared {
            everything: read.everything.map(left),
            ..Default::default()
        };
        for (account, write) in accounts.iter().zip(read.accounts) {
            if let Some(write) = write {
                out.accounts.insert(account.to_string(), left(write));
            }
        }
        // Findings written to together hold the same items: one patch for all of them.
        let mut parsed: Vec<(Vec<String>, Option<Arc<Patch>>)> = Vec::new();
        for (key, finding) in keys.iter().zip(read.findings) {
            let shared::JournalFinding {
                unknown,
                owned,
                items,
            } = finding;
            if let Some(u) = unknown {
                out.unknown.insert(key.clone(), left(u));
            }
            if !owned.is_empty() {
                let owned = owned
                    .into_iter()
                    .map(|(account, op, ms)| (account, op, Duration::from_millis(ms)))
                    .collect();
                out.owned.insert(key.clone(), owned);
            }
            if items.is_empty() {
                continue;
            }
            let patch = match parsed.iter().find(|(i, _)| *i == items) {
                Some((_, p)) => p.clone(),
                None => {
                    let p = Patch::from_items(&items).map(Arc::new);
                    parsed.push((items, p.clone()));
                    p
                }
            };
            match patch {
                Some(p) => {
                    out.patches.insert(key.clone(), p);
                }
                // A change this replica cannot read (another version wrote it): its effect
                // is unknown.
                None => {
                    out.unknown.insert(
                        key.clone(),
                        ("BatchUpdateFindings".to_string(), self.inner.settle),
                    );
                }
            }
        }
        Some(out)
    }

    /// Tells the other replicas, through Redis, what a write did, before its caller is
    /// answered. Returns whether Redis took it (true when there is nothing to share).
    async fn share_write(&self, write: shared::Journaled<'_>) -> bool {
        if self.inner.settle.is_zero() {
            return true;
        }
        let Some(coord) = &self.inner.coord else {
            return true;
        };
        self.share_again().await;
        let settle_ms = self.inner.settle.as_millis() as u64;
        let shared = shared::journal_write(coord, settle_ms, write).await;
        if !shared {
            self.inner.journal_lost.store(true, Ordering::SeqCst);
        }
        shared
    }

    async fn share_again(&self) {
        share_again(&self.inner).await
    }

    /// Refuses a lookup of findings whose state a recent write left unknown. For a member
    /// (`member_of`), only of findings known to be its own (`State::owners`): the others are
    /// read, and refused as settling only if they are (`judged_by`).
    fn settled(&self, keys: &[FindingKey], member_of: Option<&str>) -> Result<(), LookupFailure> {
        let st = self.inner.lock();
        let own: Vec<FindingKey>;
        let keys = match member_of {
            None => keys,
            Some(member) => {
                own = keys
                    .iter()
                    .filter(|k| st.owners.get(*k).is_some_and(|a| **a == *member))
                    .cloned()
                    .collect();
                if own.is_empty() {
                    return Ok(());
                }
                &own
            }
        };
        let now = Instant::now();
        let in_flight = match st.sending.effect(keys, None, &[], now) {
            InFlightEffect::Unknown(u) => Some(u),
            InFlightEffect::None | InFlightEffect::Patches(_) => None,
        };
        match in_flight.or_else(|| st.journal.unsettled(keys, now, None, None)) {
            None => Ok(()),
            Some(u) => {
                self.inner.metrics.settle_refused.inc();
                Err(LookupFailure {
                    error: LookupError::Unsettled(u),
                    stats: LookupStats::default(),
                })
            }
        }
    }
}

/// The findings whose state the decision for a caller judges: for a member (`member_of`),
/// those found of its own account. Another account's finding (or one of no account) and one
/// not found reach a member's policy input alike, as not found (`Document::withheld`), and
/// are refused whatever their state: settling or not changes no judgement (a write does not
/// move a finding to another account). A refusal as settling told the member of another
/// account's finding that, when and how an administrator had just changed it; of an
/// identifier not found (503 while a write of any finding settled, 403 for another account's)
/// that it exists nowhere, which its own credentials cannot tell.
fn judged_by<'k>(
    keys: &'k [FindingKey],
    current: &KeyMap<Arc<CurrentFinding>>,
    member_of: Option<&str>,
) -> std::borrow::Cow<'k, [FindingKey]> {
    let Some(member) = member_of else {
        // An administrator is judged by them all: no copy of the keys.
        return std::borrow::Cow::Borrowed(keys);
    };
    keys.iter()
        .filter(|k| {
            current
                .get(*k)
                .is_some_and(|s| s.account_id.as_deref() == Some(member))
        })
        .cloned()
        .collect()
}

impl Enricher {
    async fn judged_lookup(
        &self,
        keys: &[FindingKey],
        caller: CallerId<'_>,
        member_of: Option<&str>,
        deadline: Instant,
    ) -> Result<Option<Lookup>, LookupFailure> {
        let (mut current, stats, mut mark) =
            Enricher::lookup(self, keys, caller, member_of, deadline).await?;
        // Read after the states were: a write another replica forwarded before then is in it.
        let shared = self.shared_journal(keys, &current).await;
        let judged = judged_by(keys, &current, member_of);
        // A member naming none of its own findings: nothing it is judged by settles (a
        // write of unknown scope, `everything`, would refuse it whatever it names).
        let nothing_judged = member_of.is_some() && judged.is_empty();
        let unsettled = {
            let mut st = self.inner.lock();
            if st.owners.len() >= self.inner.max_entries {
                st.owners.clear();
            }
            for (key, state) in &current {
                if let Some(account) = &state.account_id {
                    // Mostly known already (a finding's account never changes): no copy then.
                    if st.owners.get(key) != Some(account) {
                        st.owners.insert(key.clone(), account.clone());
                    }
                }
            }
            let now = Instant::now();
            st.journal.expire(now);
            st.journal.learn(keys, now, shared.as_ref(), &current);
            let unsettled = match nothing_judged {
                true => None,
                false => st
                    .journal
                    .unsettled(&judged, now, shared.as_ref(), Some(&current)),
            };
            if let Some(u) = unsettled {
                self.inner.metrics.settle_refused.inc();
                return Err(LookupFailure {
                    error: LookupError::Unsettled(u),
                    stats,
                });
            }
            let State { journal, cache, .. } = &mut *st;
            let reported = journal.lay_over(
                keys,
                &mut current,
                |k, state| {
                    if mark.delivered.contains_key(k) {
                        return Source::SecurityHub;
                    }
                    match cache.get(k) {
                        Some(c) if c.state.as_ref().is_some_and(|s| Arc::ptr_eq(s, state)) => {
                            Source::Cache { read_at: c.at }
                        }
                        _ => Source::Other,
                    }
                },
                now,
                shared.as_ref(),
            );
            if reported.is_some() {
                self.inner.metrics.settle_overlaid.inc();
            }
            // Writes sent and not answered yet, laid over on top of the journal's: the
            // request must hold whether they land or not.
            mark.sent_before = st.sending.latest();
            mark.looked_up = keys.into();
            let effect = match nothing_judged {
                true => InFlightEffect::None,
                false => st.sending.effect(&judged, Some(&current), &[], now),
            };
            let reported = match effect {
                InFlightEffect::None => reported,
                InFlightEffect::Unknown(u) => {
                    self.inner.metrics.settle_refused.inc();
                    return Err(LookupFailure {
                        error: LookupError::Unsettled(u),
                        stats,
                    });
                }
                InFlightEffect::Patches(flights) => {
                    let mut reported = reported;
                    for (position, key) in judged.iter().enumerate() {
                        let (Some(sent), Some(read)) = (flights.change(position), current.get(key))
                        else {
                            continue;
                        };
                        let state = laid_over(read, sent);
                        if !Arc::ptr_eq(&state, read) {
                            reported.get_or_insert_with(|| current.clone());
                            current.insert(key.clone(), state);
                        }
                    }
                    mark.considered = flights.ids;
                    reported
                }
            };
            // The gauges are brought up to date at scrape time (`sample_metrics`).
            reported
        };
        Ok(Some(Lookup {
            current,
            unsettled,
            stats,
            reads: Some(Box::new(mark)),
        }))
    }
}

impl FindingState for Enricher {
    async fn lookup(
        &self,
        keys: &[FindingKey],
        caller: CallerId<'_>,
        deadline: Instant,
    ) -> Result<Option<Lookup>, LookupFailure> {
        self.judged_lookup(keys, caller, None, deadline).await
    }

    async fn lookup_for_member(
        &self,
        keys: &[FindingKey],
        caller: CallerId<'_>,
        member_of: &str,
        deadline: Instant,
    ) -> Result<Option<Lookup>, LookupFailure> {
        self.judged_lookup(keys, caller, Some(member_of), deadline)
            .await
    }
}

/// Adds a change to the shared journal, kept `settle` from now (a change it cannot spell is
/// shared as unknown). Returns whether Redis took it.
async fn journal_change(
    coord: &Coordination,
    settle: Duration,
    keys: &[FindingKey],
    patch: &Patch,
    in_flight_ms: u64,
) -> bool {
    let settle_ms = settle.as_millis() as u64;
    match patch.items() {
        Some(items) => {
            let write = shared::Journaled::Change(keys, &items, in_flight_ms);
            shared::journal_write(coord, settle_ms, write).await
        }
        None => {
            let write = shared::Journaled::Unknown(keys, "BatchUpdateFindings", None);
            shared::journal_write(coord, settle_ms, write).await
        }
    }
}

/// After writes that did not reach Redis, shares this replica's whole journal again, once
/// Redis is back: until then the other replicas judge without them. They are shared as
/// written now, so each is kept a little longer than its own window, and one composed
/// with another replica's writes meanwhile lands after them.
async fn share_again(inner: &Inner) {
    let Some(coord) = inner.shared() else {
        return;
    };
    if !inner.journal_lost.swap(false, Ordering::SeqCst) {
        return;
    }
    // Lost again unless every write below was answered: a sharing cut off part-way (its
    // request's future dropped, the runtime's end) left the flag cleared and the rest of the
    // journal unshared for good (the claims' release had the same shape, 749b5d7).
    struct Unshared<'a>(&'a AtomicBool);
    impl Drop for Unshared<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let unshared = Unshared(&inner.journal_lost);
    let snapshot = inner.lock().journal.snapshot(Instant::now());
    let settle_ms = inner.settle.as_millis() as u64;
    let mut ok = true;
    if let Some(op) = snapshot.everything {
        ok &= shared::journal_write(coord, settle_ms, shared::Journaled::Everything(op)).await;
    }
    for (op, accounts) in &snapshot.accounts {
        ok &= shared::journal_write(coord, settle_ms, shared::Journaled::Accounts(accounts, op))
            .await;
    }
    for (patch, keys) in &snapshot.changes {
        // Shared again, dated now: its order against the changes other replicas shared
        // meanwhile is unknown, so it counts as in flight beside every one in the window. Taken
        // as sent now, an administrator's LOW answered while this replica's connection stalled
        // was composed after their CRITICAL through another replica, sent later, and a member's
        // HIGH was judged no lowering.
        let whole_window = settle_ms.max(1);
        ok &= journal_change(coord, inner.settle, keys, patch, whole_window).await;
    }
    for (op, keys) in &snapshot.unknown {
        ok &= shared::journal_write(coord, settle_ms, shared::Journaled::Unknown(keys, op, None))
            .await;
    }
    for (op, key, account) in &snapshot.owned {
        let accounts = [account.clone()];
        let write = shared::Journaled::Unknown(std::slice::from_ref(key), op, Some(&accounts));
        ok &= shared::journal_write(coord, settle_ms, write).await;
    }
    if ok {
        std::mem::forget(unshared);
    }
}

/// Runs forever: waits for queued findings and for GetFindings quota, then sends the next
/// queued findings (up to 20, from the account whose turn it is: `queue`) in one call.
/// Findings queued while it waits for quota join the next call, which is what batches
/// concurrent requests together.
async fn drive(inner: Arc<Inner>) {
    loop {
        loop {
            let notified = inner.work.notified();
            let live = {
                let mut st = inner.lock();
                let live = has_live_work(&mut st);
                release_unclaimed(&inner, &mut st);
                live
            };
            if live {
                break;
            }
            notified.await;
        }
        // The requests may all go while the call waits for quota: the wait then ends, taking
        // nothing (it took a call's quota, and the queue had nothing left to ask for).
        // Biased: quota that is there at once answers before the poll's timer is armed.
        let acquired = tokio::select! {
            biased;
            () = inner.pacer.acquire_shared("GetFindings") => true,
            () = no_live_work(&inner) => false,
        };
        if !acquired {
            continue;
        }
        let progress = Arc::new(CallProgress {
            id: inner.next_call.fetch_add(1, Ordering::Relaxed),
            calls: AtomicUsize::new(0),
            throttled: AtomicBool::new(false),
            for_quota: AtomicBool::new(false),
        });
        let (chunk, batch) = {
            let mut st = inner.lock();
            let mut chunk = Vec::with_capacity(IDS_PER_LOOKUP);
            while chunk.len() < IDS_PER_LOOKUP {
                let Some(key) = next_to_look_up(&mut st) else {
                    break;
                };
                st.in_flight.insert(key.clone(), progress.clone());
                chunk.push(key);
            }
            st.queue.end_batch();
            if chunk.is_empty() {
                continue;
            }
            let began = st.batch_began();
            (
                chunk,
                Batch {
                    inner: inner.clone(),
                    began,
                },
            )
        };
        let (chunk, claims) = match inner.coord.clone() {
            Some(coord) => claim_chunk(&inner, &coord, chunk, batch.began, &progress).await,
            None => (chunk, KeyMap::default()),
        };
        release_unclaimed(&inner, &mut inner.lock());
        if chunk.is_empty() {
            // Other replicas had it all: the quota taken for it is spent, which happens only
            // when replicas look up the same findings at the same moment.
            continue;
        }
        // Nothing has been read yet, so the call reads after every write known now: the batch
        // begins again here. A fallback while claiming voids every batch in flight (see
        // `share_through`); it voided this one too, and a Redis that fails every claim after
        // each rejoin then made every lookup start over until its request gave up (429).
        // Its start moves with it: what it caches is read after the writes answered so far,
        // which the settle journal must lay over it (it takes a state cached as read before a
        // write for one the write was written through to).
        let (fresh, started) = {
            let mut st = inner.lock();
            let fresh = Batch {
                inner: inner.clone(),
                began: st.batch_began(),
            };
            (fresh, Instant::now())
        };
        // Ended once the lock is free (dropping a batch takes it).
        drop(batch);
        let batch = fresh;
        tokio::spawn(fetch_and_deliver(
            inner.clone(),
            chunk,
            batch,
            started,
            progress,
            claims,
        ));
    }
}

/// A finding's claim in the shared cache: the shared generation and its write count then.
type SharedClaim = (String, String);

/// Releases, in the background, the claims of findings dropped before their lookup was sent.
fn release_unclaimed(inner: &Inner, st: &mut State) {
    let (Some(coord), false) = (inner.coord.clone(), st.unclaimed.is_empty()) else {
        return;
    };
    let mut by_generation: HashMap<String, Vec<FindingKey>> = HashMap::new();
    for (key, generation) in st.unclaimed.drain(..) {
        by_generation.entry(generation).or_default().push(key);
    }
    tokio::spawn(async move {
        for (generation, keys) in by_generation {
            shared::release(&coord, &generation, &keys).await;
        }
    });
}

/// Releases a batch's claims before it ends (`store` releases those not released).
async fn release_claims(coord: &Coordination, claims: &KeyMap<SharedClaim>) {
    let mut by_generation: HashMap<&str, Vec<FindingKey>> = HashMap::new();
    for (key, (generation, _)) in claims {
        by_generation
            .entry(generation.as_str())
            .or_default()
            .push(key.clone());
    }
    for (generation, keys) in by_generation {
        shared::release(coord, generation, &keys).await;
    }
}

/// Resolves once no request waits for any finding of `chunk`.
async fn everyone_gone(inner: &Inner, chunk: &[FindingKey]) {
    const POLL: Duration = Duration::from_millis(50);
    loop {
        tokio::time::sleep(POLL).await;
        if !anyone_waiting(inner, chunk) {
            return;
        }
    }
}

/// Removes `keys`' entries from the shared cache.
async fn unshare(coord: &Coordination, keys: &[FindingKey]) {
    let items = keys
        .iter()
        .map(|key| ToWrite {
            key,
            expected: None,
            value: None,
        })
        .collect();
    shared::write(coord, items).await;
}

/// Hands a finding's outcome to every request waiting for it.
fn deliver(st: &mut State, key: &FindingKey, outcome: &Outcome, call: &Arc<CallProgress>) {
    st.in_flight.remove(key);
    let earlier = st.spent.remove(key).unwrap_or_default();
    for (waiter, at) in st.waiting.remove(key).unwrap_or_default() {
        waiter.put(
            at,
            Delivery {
                outcome: outcome.clone(),
                call: call.clone(),
                generation: st.generation,
                earlier: earlier.clone(),
            },
        );
    }
}

fn no_call(inner: &Inner) -> Arc<CallProgress> {
    Arc::new(CallProgress {
        id: inner.next_call.fetch_add(1, Ordering::Relaxed),
        calls: AtomicUsize::new(0),
        throttled: AtomicBool::new(false),
        for_quota: AtomicBool::new(false),
    })
}

/// Settles with the other replicas which findings of a batch this replica looks up: those
/// another replica stored meanwhile are delivered from the shared cache, those another
/// replica is looking up are waited for (`await_other_replica`), the rest are claimed. Room
/// they leave in the batch is filled from the queue.
async fn claim_chunk(
    inner: &Arc<Inner>,
    coord: &Arc<Coordination>,
    mut candidates: Vec<FindingKey>,
    generation: u64,
    progress: &Arc<CallProgress>,
) -> (Vec<FindingKey>, KeyMap<SharedClaim>) {
    let mut mine = Vec::with_capacity(IDS_PER_LOOKUP);
    let mut claims = KeyMap::default();
    for round in 0..3 {
        let mut to_claim = Vec::new();
        {
            let mut st = inner.lock();
            for key in candidates.drain(..) {
                match st.preclaimed.remove(&key) {
                    Some(claim) => {
                        if let Some(claim) = claim {
                            claims.insert(key.clone(), claim);
                        }
                        mine.push(key);
                    }
                    None => to_claim.push(key),
                }
            }
        }
        if !to_claim.is_empty() {
            let answer = match coord.healthy() {
                true => shared::claim(coord, &to_claim).await,
                false => None,
            };
            match answer {
                None => mine.extend(to_claim),
                Some((shared_generation, answers)) => {
                    let mut busy = Vec::new();
                    let mut st = inner.lock();
                    let now = Instant::now();
                    let call = no_call(inner);
                    for (key, answer) in to_claim.into_iter().zip(answers) {
                        match answer {
                            Claim::Mine(version) => {
                                if !version.is_empty() {
                                    claims
                                        .insert(key.clone(), (shared_generation.clone(), version));
                                }
                                mine.push(key);
                            }
                            Claim::Cached(tag, state) => {
                                coord.metrics().shared_hits.inc();
                                if st.unwritten_since(&key, owner_of(&state), generation, &[]) {
                                    inner.store_tagged(
                                        &mut st,
                                        key.clone(),
                                        state.clone(),
                                        Some(tag),
                                        now,
                                        now,
                                    );
                                    deliver(&mut st, &key, &Ok(state), &call);
                                } else {
                                    st.ask_again(&key);
                                }
                            }
                            Claim::Busy => busy.push(key),
                        }
                    }
                    inner.report(&st);
                    if !busy.is_empty() {
                        coord.metrics().coalesced.inc_by(busy.len() as u64);
                        // Held from here, not from the task's first poll: this batch may end
                        // before then, and with it the record of writes since it began.
                        st.hold(generation);
                        let held = Batch {
                            inner: inner.clone(),
                            began: generation,
                        };
                        tokio::spawn(await_other_replica(
                            inner.clone(),
                            coord.clone(),
                            busy,
                            held,
                        ));
                    }
                }
            }
        }
        if mine.len() >= IDS_PER_LOOKUP || round == 2 {
            break;
        }
        let mut st = inner.lock();
        if !has_live_work(&mut st) {
            break;
        }
        while mine.len() + candidates.len() < IDS_PER_LOOKUP {
            let Some(key) = next_to_look_up(&mut st) else {
                break;
            };
            st.in_flight.insert(key.clone(), progress.clone());
            candidates.push(key);
        }
        st.queue.end_batch();
        if candidates.is_empty() {
            break;
        }
    }
    (mine, claims)
}

/// Waits for findings another replica is looking up, polling the shared cache. When that
/// replica gives up (its claim is gone) or takes longer than its claim, this replica looks
/// them up itself: a wait never turns into an answer nobody checked.
async fn await_other_replica(
    inner: Arc<Inner>,
    coord: Arc<Coordination>,
    mut keys: Vec<FindingKey>,
    // The batch these findings were taken in: writes since it began are known while it is held.
    held: Batch,
) {
    const POLL: Duration = Duration::from_millis(20);
    let until = Instant::now() + coord.lookup_claim + POLL;
    {
        let call = no_call(&inner);
        let mut st = inner.lock();
        for key in &keys {
            st.in_flight.insert(key.clone(), call.clone());
        }
    }
    let mut handed_back: Vec<(FindingKey, Option<SharedClaim>)> = Vec::new();
    loop {
        tokio::time::sleep(POLL).await;
        {
            // Checked and forgotten under one lock: a request that joins a finding in between
            // must not be left waiting on one nobody looks up.
            let mut st = inner.lock();
            if !waited_for(&st, &keys) {
                for key in keys.drain(..) {
                    st.in_flight.remove(&key);
                    st.forget(&key);
                }
                // Those already handed back are still handed back below: returning here left
                // them marked in flight with no lookup behind them (every later request for
                // one waited to its deadline, for good) and their claims taken.
                break;
            }
        }
        let Some((shared_generation, answers)) = shared::claim(&coord, &keys).await else {
            handed_back.extend(keys.drain(..).map(|k| (k, None)));
            break;
        };
        let mut still = Vec::new();
        {
            let mut st = inner.lock();
            let call = no_call(&inner);
            for (key, answer) in keys.drain(..).zip(answers) {
                match answer {
                    Claim::Cached(_, state) => {
                        coord.metrics().shared_hits.inc();
                        // Not kept locally: the next lookup asks Redis first anyway. Handed
                        // over only if no local write came in since the batch began: Redis
                        // learns of a write after this replica does.
                        if st.unwritten_since(&key, owner_of(&state), held.began, &[]) {
                            deliver(&mut st, &key, &Ok(state), &call);
                        } else {
                            handed_back.push((key, None));
                        }
                    }
                    Claim::Mine(version) => {
                        let claim =
                            (!version.is_empty()).then(|| (shared_generation.clone(), version));
                        handed_back.push((key, claim));
                    }
                    Claim::Busy => still.push(key),
                }
            }
        }
        if still.is_empty() {
            break;
        }
        if Instant::now() >= until {
            handed_back.extend(still.into_iter().map(|k| (k, None)));
            break;
        }
        // Looked up now, not once the slowest of the others comes in: a request for one of
        // them waited for every finding of this wait (to lookup_claim_ms, past its deadline).
        hand_back(&inner, &mut handed_back);
        keys = still;
    }
    hand_back(&inner, &mut handed_back);
}

/// Queues findings another replica no longer holds to be looked up here, with the claims this
/// replica took on them.
fn hand_back(inner: &Inner, handed_back: &mut Vec<(FindingKey, Option<SharedClaim>)>) {
    if handed_back.is_empty() {
        return;
    }
    let mut st = inner.lock();
    for (key, claim) in handed_back.drain(..) {
        st.in_flight.remove(&key);
        st.preclaimed.insert(key.clone(), claim);
        st.requeue(&key);
    }
    inner.work.notify_one();
}

/// The next queued finding to look up, past copies of findings another caller's turn already
/// took (in flight, or delivered and no longer waited for).
fn next_to_look_up(st: &mut State) -> Option<FindingKey> {
    has_live_work(st).then(|| st.queue.pop_front()).flatten()
}

/// Drops queued findings nobody waits for any more; true when some are left. Asked again
/// when a chunk is taken, after the wait for quota: a client can leave during that wait
/// (its decision stops waiting), and its findings were then looked up for nobody.
fn has_live_work(st: &mut State) -> bool {
    // Also while nothing is queued anew: the driver asks this while it waits for quota, so the
    // findings of requests that hung up after the last one was queued leave too.
    st.make_room_in_queue(0);
    while let Some(key) = st.queue.front() {
        if st.in_flight.contains_key(key) {
            // A copy of a finding another turn took: its waiters are served by that call.
            st.queue.drop_front();
            continue;
        }
        let live = st
            .waiting
            .get_mut(key)
            .map(|w| {
                w.retain(|(waiter, _)| waiter.waiting());
                !w.is_empty()
            })
            .unwrap_or(false);
        if live {
            return true;
        }
        if let Some(key) = st.queue.drop_front() {
            st.forget(&key);
            st.drop_preclaimed(&key);
        }
    }
    false
}

/// Waits for the quota of one more GetFindings call for `chunk` (a retry, or its next page);
/// false when every request waiting for it has gone, which ends the wait, taking nothing. The
/// wait went on for nobody, and took its quota at the end: after a throttle, a slot of the
/// slowed pace (up to 3 s at its floor) that the next caller then waited for, no call going
/// out.
async fn quota_for(inner: &Inner, chunk: &[FindingKey]) -> bool {
    tokio::select! {
        biased;
        () = inner.pacer.acquire_shared("GetFindings") => anyone_waiting(inner, chunk),
        () = everyone_gone(inner, chunk) => false,
    }
}

/// Returns once nothing queued is waited for any more (polled, as `everyone_gone` is).
async fn no_live_work(inner: &Inner) {
    const POLL: Duration = Duration::from_millis(50);
    loop {
        tokio::time::sleep(POLL).await;
        if !has_live_work(&mut inner.lock()) {
            return;
        }
    }
}

fn anyone_waiting(inner: &Inner, chunk: &[FindingKey]) -> bool {
    waited_for(&inner.lock(), chunk)
}

fn waited_for(st: &State, chunk: &[FindingKey]) -> bool {
    chunk.iter().any(|k| {
        st.waiting
            .get(k)
            .is_some_and(|w| w.iter().any(|(waiter, _)| waiter.waiting()))
    })
}

async fn fetch_and_deliver(
    inner: Arc<Inner>,
    chunk: Vec<FindingKey>,
    // Dropped last, after the lock below is released: the batch ends once it has delivered.
    batch: Batch,
    // When the batch began (with `batch.began`): what it reads is kept, here and in Redis, for
    // `cache_ttl_ms` from then, not from when the answer came in. A write forwarded while the
    // call was in flight is kept in the settle journal for `settle_ms` from its forwarding, so
    // with `cache_ttl_ms <= settle_ms` no entry that may predate it outlives its journal entry
    // (review 29 F1: an answer that came in late, stored for a full TTL, outlived the journal
    // and was then served to every replica).
    started: Instant,
    progress: Arc<CallProgress>,
    claims: KeyMap<SharedClaim>,
) {
    let mut attempt = 0;
    let mut pages = Pages::default();
    let fetched = async {
        loop {
            match fetch_chunk(&inner, &chunk, &progress, &mut pages).await {
                Err(e) if e.is_throttle() || e.is_transient() => {
                    // From the answer on, until the retry is sent, the batch waits for quota.
                    progress.for_quota.store(true, Ordering::Relaxed);
                    let most = match e.is_throttle() {
                        true => {
                            progress.throttled.store(true, Ordering::Relaxed);
                            inner.pacer.throttled("GetFindings");
                            inner
                                .metrics
                                .throttled
                                .get_or_create(&OperationLabels {
                                    operation: "GetFindings".into(),
                                })
                                .inc();
                            MAX_THROTTLE_RETRIES
                        }
                        false => MAX_TRANSIENT_RETRIES,
                    };
                    attempt += 1;
                    if attempt > most || !anyone_waiting(&inner, &chunk) {
                        break Err(e);
                    }
                    // Full jitter: concurrent retries spread out instead of hitting the quota
                    // together again.
                    let cap = BACKOFF_BASE
                        .saturating_mul(1 << attempt.min(5))
                        .min(BACKOFF_CAP);
                    let wait = cap.mul_f64(rand::random::<f64>());
                    tokio::time::sleep(wait).await;
                    if !quota_for(&inner, &chunk).await {
                        // Everyone gave up while this call waited: spend no more quota on it.
                        break Err(e);
                    }
                }
                other => break other,
            }
        }
    };
    // When every request waiting for the lookup has gone, its claims are released: the other
    // replicas' requests need not wait for an answer nobody here wants. The call runs on: a
    // caller's retry (an SDK retries the 504 its request got) joins it, and its answer is
    // still stored if no write came in since the claim.
    let result = match (&inner.coord, claims.is_empty()) {
        (Some(coord), false) => {
            tokio::pin!(fetched);
            tokio::select! {
                result = &mut fetched => result,
                () = everyone_gone(&inner, &chunk) => {
                    release_claims(coord, &claims).await;
                    fetched.await
                }
            }
        }
        _ => fetched.await,
    };
    let mut outcomes: KeyMap<Outcome> =
        KeyMap::with_capacity_and_hasher(chunk.len(), Default::default());
    let found = result.is_ok();
    match result {
        Ok(findings) => {
            let states = findings
                .into_iter()
                .enumerate()
                .filter_map(|(at, p)| p.into_state(&chunk, at));
            for (key, current) in states {
                // The filter ORs ids and product ARNs, so pairs that were not asked for can
                // come back.
                if !chunk.contains(&key) {
                    continue;
                }
                match outcomes.entry(key) {
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(Ok(Some(Arc::new(current))));
                    }
                    // (Id, ProductArn) is unique per product only by the provider's promise: a
                    // partner product's Id can recur in another account (a member can import a
                    // copy of a victim's finding). Security Hub then answers one key with
                    // findings of two accounts, and BatchUpdateFindings names both; judging
                    // whichever came last let a member's copy stand for the victim's finding.
                    // Such a key has no one owner: it is judged as a found finding whose owner
                    // and severity hubgate cannot read, which the rules refuse for members. So
                    // are two copies of one account's that differ (which state would the rules
                    // judge "not lower" by?); only the same state read twice is that state.
                    std::collections::hash_map::Entry::Occupied(mut slot) => {
                        let one_state = matches!(slot.get(),
                            Ok(Some(first)) if first.account_id.is_some()
                                && first.account_id == current.account_id
                                && first.entry == current.entry);
                        if !one_state {
                            let key = slot.key().clone();
                            *slot.get_mut() = Ok(Some(Arc::new(CurrentFinding::from_facts(
                                &key,
                                &StateFacts::default(),
                                regorus::Value::new_object(),
                                0,
                            ))));
                        }
                    }
                }
            }
            for key in &chunk {
                outcomes.entry(key.clone()).or_insert(Ok(None));
            }
        }
        Err(e) => {
            for key in &chunk {
                outcomes.insert(key.clone(), Err(e.clone()));
            }
        }
    }
    let tags = match &inner.coord {
        Some(coord) if !claims.is_empty() => {
            share_outcomes(&inner, coord, &outcomes, &claims, found, started).await
        }
        _ => KeyMap::default(),
    };
    let mut st = inner.lock();
    let now = Instant::now();
    let mut again = false;
    for (key, outcome) in &outcomes {
        if let Ok(state) = outcome {
            if !st.unwritten_since(key, owner_of(state), batch.began, &[]) {
                // Read before a write to it was answered: neither kept nor handed over.
                st.ask_again(key);
                again = true;
                continue;
            }
            let tag = tags.get(key).cloned();
            inner.store_tagged(&mut st, key.clone(), state.clone(), tag, started, now);
        }
        deliver(&mut st, key, outcome, &progress);
    }
    inner.report(&st);
    drop(st);
    if again {
        inner.work.notify_one();
    }
}

/// Stores a claimed batch's answers in the shared cache (each only if no write came in for
/// it since the claim) and releases the claims; a failed batch only releases them, so the
/// replicas waiting on it look the findings up themselves. Returns the tags stored.
async fn share_outcomes(
    inner: &Inner,
    coord: &Coordination,
    outcomes: &KeyMap<Outcome>,
    claims: &KeyMap<SharedClaim>,
    found: bool,
    started: Instant,
) -> KeyMap<Tag> {
    let age = started.elapsed();
    let mut by_generation: HashMap<&str, Vec<(&FindingKey, &str)>> = HashMap::new();
    for (key, (generation, version)) in claims {
        by_generation
            .entry(generation.as_str())
            .or_default()
            .push((key, version.as_str()));
    }
    let mut tags = KeyMap::default();
    for (generation, keys) in by_generation {
        let mut items = Vec::with_capacity(keys.len());
        let mut item_tags = Vec::with_capacity(keys.len());
        for (key, version) in keys {
            let state = match outcomes.get(key) {
                Some(Ok(state)) if found => state,
                // No answer: a write count that never matches stores nothing, releases the claim.
                _ => {
                    items.push(ToStore {
                        key,
                        version: "-",
                        ttl_ms: 1,
                        value: Vec::new(),
                    });
                    item_tags.push(None);
                    continue;
                }
            };
            // What is left of the TTL counted from the batch's start; none left stores nothing.
            let ttl_ms = inner.ttl_for(state).saturating_sub(age).as_millis() as u64;
            let tag = shared::new_tag();
            items.push(ToStore {
                key,
                version: if ttl_ms == 0 { "-" } else { version },
                ttl_ms,
                value: shared::encode(&tag, state.as_deref()),
            });
            item_tags.push(Some((key, tag)));
        }
        if let Some(stored) = shared::store(coord, generation, items).await {
            for (ok, tag) in stored.into_iter().zip(item_tags) {
                if let (true, Some((key, tag))) = (ok, tag) {
                    tags.insert(key.clone(), tag);
                }
            }
        }
    }
    tags
}

/// The GetFindings request body for one chunk of at most 20 findings. Serialised straight
/// from the chunk's keys: building it as a `serde_json::Value` first cost a tree of
/// allocations per lookup call.
pub fn lookup_body<'a>(chunk: &'a [FindingKey], next_token: Option<&'a str>) -> LookupBody<'a> {
    let mut arns: Vec<&str> = chunk.iter().map(|k| &*k.product_arn).collect();
    arns.sort_unstable();
    arns.dedup();
    LookupBody {
        filters: LookupFilters {
            id: chunk.iter().map(|k| Equals::from(&*k.id)).collect(),
            product_arn: arns.into_iter().map(Equals::from).collect(),
        },
        max_results: 100,
        next_token,
    }
}

/// A GetFindings request as `lookup_body` makes it.
#[derive(serde::Serialize)]
pub struct LookupBody<'a> {
    #[serde(rename = "Filters")]
    filters: LookupFilters<'a>,
    #[serde(rename = "MaxResults")]
    max_results: u32,
    #[serde(rename = "NextToken", skip_serializing_if = "Option::is_none")]
    next_token: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct LookupFilters<'a> {
    #[serde(rename = "Id")]
    id: Vec<Equals<'a>>,
    #[serde(rename = "ProductArn")]
    product_arn: Vec<Equals<'a>>,
}

/// A string filter matching the value exactly, as sent: no trimming or case folding.
#[derive(serde::Serialize)]
struct Equals<'a> {
    #[serde(rename = "Value")]
    value: &'a str,
    #[serde(rename = "Comparison")]
    comparison: &'static str,
}

impl<'a> From<&'a str> for Equals<'a> {
    fn from(value: &'a str) -> Equals<'a> {
        Equals {
            value,
            comparison: "EQUALS",
        }
    }
}

/// One GetFindings answer as enrichment reads it: each finding that names its Id and
/// ProductArn, with its state as policies see it, and the answer's NextToken. Findings without
/// a key are skipped (they cannot be matched to a request). Public for the fuzz target
/// `lookup_page`, which holds it to the JSON path (`CurrentFinding::new`). `asked` is what the
/// call named, in order (see `PageSeed`); what is read does not depend on it.
pub fn read_page(bytes: &[u8], asked: &[FindingKey]) -> Result<Page, serde_json::Error> {
    let page = LookupPage::read(bytes, asked)?;
    Ok(Page {
        findings: page
            .findings
            .into_iter()
            .enumerate()
            .filter_map(|(at, p)| p.into_state(asked, at))
            .collect(),
        next_token: page.next_token,
    })
}

/// A GetFindings answer as `read_page` reads it.
pub struct Page {
    pub findings: Vec<(FindingKey, CurrentFinding)>,
    pub next_token: Option<String>,
}

/// One GetFindings page, keeping of each finding only what policies read.
struct LookupPage {
    findings: Vec<Projected>,
    next_token: Option<String>,
}

/// A looked-up finding reduced while it is parsed: its key and the fields of CURRENT_FIELDS.
/// Resources, descriptions and the rest (most of a finding's 2-3 KB) are skipped, never built;
/// the projected fields are read straight into the policy input's values.
struct Projected {
    id: Option<Arc<str>>,
    /// The memo's one copy of the text, shared by its findings' keys and entries.
    product_arn: Option<Arc<str>>,
    /// What it shares with every finding the memo read whose projected fields are the same
    /// texts; None only without a ProductArn, and such a finding is dropped.
    shared: Option<SharedState>,
    bytes: usize,
}

/// What findings whose projected fields are the same texts share: their entry but the Id, and
/// the facts of those texts (StateFacts), read once, not once per finding.
#[derive(Clone)]
struct SharedState {
    template: EntryTemplate,
    account_id: Option<Arc<str>>,
    severity_rank: Option<u64>,
}

/// The projected fields already built, by their JSON text, kept on each worker thread across
/// the pages it reads. The findings of one lookup mostly share their product, generator, types,
/// compliance, severity and workflow, and so do the five pages of a 100-finding lookup and the
/// next request's: identical text builds an identical value, so it is built once and shared
/// (regorus values are reference counted), rather than allocated again per finding or per page.
/// Building each page's values afresh was 3-4% of a cold lookup's CPU.
///
/// Hashed with foldhash, seeded per memo: every projected member of every finding is hashed
/// here, and SipHash was most of the memo's cost. Texts come from findings members can write,
/// so the memo is bounded (`PageMemo::MAX_TEXTS`, `MAX_TEXT_BYTES`) and emptied, between pages,
/// when full: chosen texts can cost a rebuild per page, as before, never unbounded memory.
///
/// The findings a bulk triage looks up together mostly come from one control and so share all
/// of their projected fields; those findings share one `current` object too, keyed by which
/// built text each field is (a finding's key and entry stay its own).
#[derive(Default)]
struct PageMemo {
    /// Where in `builds` each text's build is.
    built: std::collections::HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    /// What was built, in the order it was: equal indices mean equal texts.
    builds: Vec<Built>,
    templates:
        std::collections::HashMap<CurrentTexts, Option<SharedState>, foldhash::fast::RandomState>,
    /// The bytes of the texts `built` holds.
    text_bytes: usize,
}

thread_local! {
    static PAGE_MEMO: std::cell::RefCell<PageMemo> = std::cell::RefCell::default();
}

/// Of each field of CURRENT_FIELDS, the index in `PageMemo::builds` of its text, or ABSENT.
type CurrentTexts = [usize; CURRENT_FIELDS.len()];
const ABSENT: usize = usize::MAX;

struct Built {
    value: regorus::Value,
    bytes: usize,
    /// The text as JSON, for the members facts are read from (see StateFacts).
    json: Option<Value>,
}

impl PageMemo {
    /// Enough for the distinct texts of many bulk lookups (a page of one control has about
    /// ten), small beside the cache it feeds.
    const MAX_TEXTS: usize = 2048;
    const MAX_TEXT_BYTES: usize = 512 * 1024;

    /// Called before each page, never within one: a page's findings hold indices into it.
    fn make_room(&mut self) {
        if self.builds.len() >= Self::MAX_TEXTS
            || self.templates.len() >= Self::MAX_TEXTS
            || self.text_bytes >= Self::MAX_TEXT_BYTES
        {
            *self = PageMemo::default();
        }
    }

    /// The index of `text`, built now if it was not before.
    fn index_of<E: serde::de::Error>(&mut self, text: &str) -> Result<usize, E> {
        // One search of the map when the text was built before, the usual case.
        if let Some(&index) = self.built.get(text) {
            return Ok(index);
        }
        // By JSON meaning (PlainValue): stored maps hold keys members choose.
        let value = serde_json::from_str::<crate::policy::input::PlainValue>(text)
            .map_err(E::custom)?
            .0;
        let index = self.builds.len();
        self.builds.push(Built {
            bytes: approximate_size(&value),
            value,
            json: None,
        });
        self.text_bytes += text.len();
        self.built.insert(text.into(), index);
        Ok(index)
    }

    /// What was built from `text`, found at `index` (from `index_of` on the same text, in the
    /// same page), with its JSON too when `as_json`.
    fn built<E: serde::de::Error>(
        &mut self,
        index: usize,
        text: &str,
        as_json: bool,
    ) -> Result<&Built, E> {
        let Some(built) = self.builds.get_mut(index) else {
            return Err(E::custom("the page memo lost a text it built"));
        };
        if as_json && built.json.is_none() {
            // By JSON meaning, as the policy value was: not serde_json's own Value, which reads
            // an object whose first key is its raw-value marker as raw JSON text.
            let mut reader = serde_json::Deserializer::from_str(text);
            built.json = Some(crate::validate::plain_json(&mut reader).map_err(E::custom)?);
        }
        Ok(built)
    }
}

impl PageMemo {
    /// What a finding whose projected fields are `texts` shares with the other such findings
    /// the memo has read. Its facts and ProductArn come from those texts, so the first such
    /// finding's stand for all of them: `facts` (the index and text of each member of
    /// StateFacts::MEMBERS the finding has) are read only when no finding had these texts.
    fn shared<E: serde::de::Error>(
        &mut self,
        texts: &CurrentTexts,
        facts: &FactTexts<'_>,
        product_arn: Option<&Arc<str>>,
    ) -> Result<Option<SharedState>, E> {
        if let Some(shared) = self.templates.get(texts) {
            return Ok(shared.clone());
        }
        let mut read = StateFacts::default();
        for (member, fact) in StateFacts::MEMBERS.iter().zip(facts) {
            if let Some((index, text)) = *fact {
                if let Some(json) = &self.built::<E>(index, text, true)?.json {
                    read.read_member(member, json);
                }
            }
        }
        let builds = &self.builds;
        // In key order already, so the map is built without a search per member.
        let object: BTreeMap<regorus::Value, regorus::Value> = field_keys()
            .iter()
            .zip(texts)
            .filter_map(|(k, &i)| Some((k.clone(), builds.get(i)?.value.clone())))
            .collect();
        let shared = product_arn.and_then(|arn| {
            let arn = regorus::Value::String(arn.clone());
            Some(SharedState {
                template: read.template(arn, regorus::Value::from(object))?,
                account_id: read.account_id.as_deref().map(Arc::from),
                severity_rank: read.severity_rank(),
            })
        });
        self.templates.insert(*texts, shared.clone());
        Ok(shared)
    }
}

/// Of each member of StateFacts::MEMBERS a finding has, the index of its text in
/// `PageMemo::builds` and the text.
type FactTexts<'de> = [Option<(usize, &'de str)>; StateFacts::MEMBERS.len()];

/// The object keys of `current`, made once.
fn field_keys() -> &'static [regorus::Value; CURRENT_FIELDS.len()] {
    static KEYS: std::sync::OnceLock<[regorus::Value; CURRENT_FIELDS.len()]> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| CURRENT_FIELDS.map(regorus::Value::from))
}

impl LookupPage {
    /// Reads the answer to a call that named `asked`, in that order (see `PageSeed`).
    fn read(bytes: &[u8], asked: &[FindingKey]) -> Result<LookupPage, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let page = serde::de::DeserializeSeed::deserialize(PageSeed(asked), &mut de)?;
        de.end()?;
        Ok(page)
    }
}

/// A GetFindings answer read against the keys the call asked for, in the order asked:
/// Security Hub mostly answers in that order, and a finding whose Id is the text asked for at
/// its place shares that key's copy of the text instead of allocating its own.
struct PageSeed<'a>(&'a [FindingKey]);

impl<'de> serde::de::DeserializeSeed<'de> for PageSeed<'_> {
    type Value = LookupPage;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<LookupPage, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PageSeed<'_> {
    type Value = LookupPage;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a GetFindings answer")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<LookupPage, A::Error> {
        PAGE_MEMO.with_borrow_mut(|memo| {
            memo.make_room();
            let (mut findings, mut next_token) = (None, None);
            while let Some(key) = map.next_key::<Key<'de>>()? {
                match key.0.as_ref() {
                    b"Findings" if findings.is_some() => {
                        return Err(serde::de::Error::duplicate_field("Findings"))
                    }
                    b"Findings" => {
                        findings = Some(map.next_value_seed(FindingsSeed(&mut *memo, self.0))?)
                    }
                    b"NextToken" if next_token.is_some() => {
                        return Err(serde::de::Error::duplicate_field("NextToken"))
                    }
                    b"NextToken" => next_token = Some(map.next_value::<Option<String>>()?),
                    _ => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            Ok(LookupPage {
                findings: findings.ok_or_else(|| serde::de::Error::missing_field("Findings"))?,
                next_token: next_token.flatten(),
            })
        })
    }
}

/// An object key as its unescaped bytes, borrowed from the answer unless it has escapes.
/// serde's own `Cow<str>` always allocates, which was one allocation per member of every
/// looked-up finding; and a key is only compared with the few names hubgate reads, so its
/// UTF-8 need not be checked (an invalid one matches none and is skipped with its value).
struct Key<'de>(std::borrow::Cow<'de, [u8]>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_bytes<E>(self, b: &'de [u8]) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(b)))
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(b.to_owned())))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A string value, borrowed from the answer unless it has escapes; unlike a key it is read as
/// JSON text, checked as UTF-8 and for control characters.
struct Text<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The page's findings, each read with the thread's memo and the key asked for at its place.
struct FindingsSeed<'a>(&'a mut PageMemo, &'a [FindingKey]);

impl<'de> serde::de::DeserializeSeed<'de> for FindingsSeed<'_> {
    type Value = Vec<Projected>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<Projected>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FindingsSeed<'_> {
    type Value = Vec<Projected>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of findings")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(100));
        let mut last = [None; CURRENT_FIELDS.len()];
        loop {
            let asked = self.1.get(out.len());
            let seed = ProjectedSeed(&mut *self.0, &mut last, asked);
            let Some(p) = seq.next_element_seed(seed)? else {
                break;
            };
            out.push(p);
        }
        Ok(out)
    }
}

/// One finding, read with the thread's memo and, per projected field, the text the page's
/// previous finding had there with its index: the findings of one control repeat their texts,
/// and comparing a text with the last one is cheaper than hashing it to search the memo. The
/// key asked for at the finding's place, if any, lends the finding its Id's text.
struct ProjectedSeed<'a, 'de>(
    &'a mut PageMemo,
    &'a mut LastTexts<'de>,
    Option<&'a FindingKey>,
);

type LastTexts<'de> = [Option<(&'de str, usize)>; CURRENT_FIELDS.len()];

impl<'de> serde::de::DeserializeSeed<'de> for ProjectedSeed<'_, 'de> {
    type Value = Projected;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Projected, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ProjectedSeed<'_, 'de> {
    type Value = Projected;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a finding")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Projected, A::Error> {
        let (memo, last, asked) = (self.0, self.1, self.2);
        let (mut id, mut product_arn) = (None, None);
        let mut texts: CurrentTexts = [ABSENT; CURRENT_FIELDS.len()];
        let mut facts: FactTexts<'de> = [None; StateFacts::MEMBERS.len()];
        let mut bytes = 0;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let k = key.0.as_ref();
            if k == b"Id" {
                let text = map.next_value::<Text<'de>>()?.0;
                id = Some(match asked {
                    Some(key) if *key.id == *text => key.id.clone(),
                    _ => Arc::from(&*text),
                });
                continue;
            }
            let Some(at) = CURRENT_FIELDS.iter().position(|f| f.as_bytes() == k) else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            let field = CURRENT_FIELDS[at];
            let text = map.next_value::<&'de serde_json::value::RawValue>()?.get();
            let index = match last[at] {
                Some((before, index)) if before == text => index,
                _ => {
                    let index = memo.index_of::<A::Error>(text)?;
                    last[at] = Some((text, index));
                    index
                }
            };
            if let Some(m) = StateFacts::MEMBERS.iter().position(|f| *f == field) {
                facts[m] = Some((index, text));
            }
            let built = memo.built::<A::Error>(index, text, false)?;
            bytes += field.len() + 24 + built.bytes;
            texts[at] = index;
            if field == "ProductArn" {
                product_arn = match &built.value {
                    regorus::Value::String(arn) => Some(arn.clone()),
                    _ => None,
                };
            }
        }
        let shared = memo.shared::<A::Error>(&texts, &facts, product_arn.as_ref())?;
        Ok(Projected {
            id,
            product_arn,
            shared,
            bytes,
        })
    }
}

impl Projected {
    /// `asked` is the chunk the page answers, and `at` this finding's place in the answer.
    /// Security Hub mostly answers in the order asked, so the key asked for at the same place
    /// is tried first: the same texts make an equal key, and reusing it spares hashing the
    /// finding's texts and comparing them, rather than the pointers, in every map it passes.
    fn into_state(self, asked: &[FindingKey], at: usize) -> Option<(FindingKey, CurrentFinding)> {
        let (id, arn) = (self.id?, self.product_arn?);
        let key = match asked.get(at) {
            // The Id is the asked key's own text when it was read as that (PageSeed).
            Some(k) if (Arc::ptr_eq(&k.id, &id) || *k.id == *id) && *k.product_arn == *arn => {
                k.clone()
            }
            _ => FindingKey::new(id, arn),
        };
        let shared = self.shared?;
        let state = CurrentFinding::from_template(
            &key,
            &shared.template,
            shared.account_id,
            shared.severity_rank,
            self.bytes,
        );
        Some((key, state))
    }
}

/// The pages of one chunk read so far: a throttled page is asked for again from where the
/// chain stopped. Starting over from the first page (as it did) spent again every page already
/// read, on each of up to MAX_THROTTLE_RETRIES retries, when the account's quota had just run
/// out.
#[derive(Default)]
struct Pages {
    findings: Vec<Projected>,
    /// The NextToken of the next page to read (None: the first).
    token: Option<String>,
    /// Every token followed so far. One Security Hub hands back again leads, page after page,
    /// to what was read already: the chain is a loop, and following it to the page limit
    /// spent a third of a minute's worth of the account's GetFindings quota (shared by every
    /// caller) for an answer that was always going to fail.
    followed: Vec<String>,
    /// Pages read.
    read: usize,
}

/// One chunk's findings, following NextToken from where `pages` stopped; every page after the
/// first waits for quota too (a page asked for again after a throttle has waited already).
async fn fetch_chunk(
    inner: &Inner,
    chunk: &[FindingKey],
    progress: &CallProgress,
    pages: &mut Pages,
) -> Result<Vec<Projected>, UpstreamError> {
    while pages.read < MAX_PAGES_PER_LOOKUP {
        let n = pages.read + 1;
        let body = lookup_body(chunk, pages.token.as_deref());
        progress.for_quota.store(false, Ordering::Relaxed);
        progress.calls.fetch_add(1, Ordering::Relaxed);
        inner.metrics.lookups.inc();
        let page = inner
            .upstream
            .call_json("GetFindings", Method::POST, "/findings", &body, |bytes| {
                LookupPage::read(bytes, chunk)
            })
            .await?;
        pages.read = n;
        pages.findings.extend(page.findings);
        pages.token = page.next_token.filter(|t| !t.is_empty());
        let Some(next) = &pages.token else {
            return Ok(std::mem::take(&mut pages.findings));
        };
        if pages.followed.contains(next) {
            return Err(UpstreamError::BadResponse {
                operation: "GetFindings",
                detail: format!(
                    "page {n} for {} findings gave a NextToken already followed: the \
                     pages loop",
                    chunk.len()
                ),
            });
        }
        pages.followed.push(next.clone());
        if pages.read < MAX_PAGES_PER_LOOKUP {
            progress.for_quota.store(true, Ordering::Relaxed);
            // Everyone gave up while the next page waited for quota (as a retry checks): the
            // page was sent for nobody, spending the account's GetFindings quota.
            if !quota_for(inner, chunk).await {
                return Err(UpstreamError::local(
                    "read the next page of a lookup",
                    std::io::Error::other("every request waiting for it had gone"),
                ));
            }
        }
    }
    Err(UpstreamError::BadResponse {
        operation: "GetFindings",
        detail: format!(
            "more than {MAX_PAGES_PER_LOOKUP} pages for {} findings",
            chunk.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The caller the tests' lookups are for: a member account's one principal.
    fn member() -> CallerId<'static> {
        CallerId {
            account: "222222222222",
            principal: "222222222222",
        }
    }

    /// A member is judged by its own findings only; another account's, one of no account and
    /// one not found are left out of the settle refusals alike. An administrator is judged by
    /// all.
    #[test]
    fn a_member_is_judged_by_findings_not_of_another_account() {
        let keys: Vec<FindingKey> = ["mine", "theirs", "nobodys", "missing"]
            .iter()
            .map(|id| FindingKey::new(*id, "p"))
            .collect();
        let mut current = KeyMap::default();
        for (key, account) in keys
            .iter()
            .zip([Some("222222222222"), Some("333333333333"), None])
        {
            let facts = StateFacts {
                account_id: account.map(String::from),
                ..StateFacts::default()
            };
            let state = CurrentFinding::from_facts(key, &facts, regorus::Value::new_object(), 0);
            current.insert(key.clone(), Arc::new(state));
        }
        let ids = |judged: std::borrow::Cow<[FindingKey]>| -> Vec<String> {
            judged.iter().map(|k| k.id.to_string()).collect()
        };
        assert_eq!(
            ids(judged_by(&keys, &current, Some("222222222222"))),
            ["mine"]
        );
        assert_eq!(ids(judged_by(&keys, &current, None)).len(), 4);
    }

    /// An import scopes its write to the account it claims only when the claim is an account
    /// id as AWS writes one; any other spelling may touch the finding whoever owns it.
    #[test]
    fn an_import_claiming_an_odd_account_spelling_has_no_account_scope() {
        let accounts = [
            Some("222222222222".to_string()),
            Some("222222222222 ".to_string()),
            Some("0222222222222".to_string()),
            None,
        ];
        let scope = |by, i| match Unapplied::import_write("BatchImportFindings", &accounts, by, i) {
            Write::Unknown(_, account) => account.map(|a| a.to_string()),
            Write::Patch(_) => panic!("an import is never a patch"),
        };
        let member = Importer::Member("222222222222");
        assert_eq!(scope(member, 0).as_deref(), Some("222222222222"));
        assert_eq!(scope(member, 1), None);
        assert_eq!(scope(member, 2), None);
        assert_eq!(scope(member, 3), None);
    }

    /// Only a member's claim of its own account scopes an import: another member's account,
    /// or any claim of an administrator's (who can give any account a copy of an identifier),
    /// may touch the finding whoever owns it.
    #[test]
    fn an_import_is_scoped_only_to_a_members_own_account() {
        let accounts = [Some("222222222222".to_string())];
        let scope = |by| match Unapplied::import_write("BatchImportFindings", &accounts, by, 0) {
            Write::Unknown(_, account) => account.map(|a| a.to_string()),
            Write::Patch(_) => panic!("an import is never a patch"),
        };
        assert_eq!(
            scope(Importer::Member("222222222222")).as_deref(),
            Some("222222222222")
        );
        assert_eq!(scope(Importer::Member("333333333333")), None);
        assert_eq!(scope(Importer::Administrator), None);
    }

    #[test]
    fn lookup_body_filters_ids_and_distinct_arns() {
        let chunk = vec![
            FindingKey::new("a", "arn:1"),
            FindingKey::new("b", "arn:1"),
            FindingKey::new("c", "arn:2"),
        ];
        let body = serde_json::to_value(lookup_body(&chunk, Some("tok"))).unwrap();
        assert_eq!(body["Filters"]["Id"].as_array().unwrap().len(), 3);
        assert_eq!(body["Filters"]["ProductArn"].as_array().unwrap().len(), 2);
        assert_eq!(body["Filters"]["Id"][0]["Comparison"], "EQUALS");
        assert_eq!(body["NextToken"], "tok");
        assert_eq!(body["MaxResults"], 100);
        assert_eq!(body["Filters"]["Id"][2]["Value"], "c");
        assert_eq!(body["Filters"]["ProductArn"][1]["Value"], "arn:2");
        let untokened = serde_json::to_value(lookup_body(&chunk, None)).unwrap();
        assert!(untokened.get("NextToken").is_none());
    }

    /// GetFindings answers are read straight into policy-input values; the entry must be the
    /// one the JSON path (`CurrentFinding::new`, used by eval and the tests) builds.
    #[test]
    fn a_parsed_page_gives_the_entries_the_json_path_gives() {
        let findings = json!([
            {"Id": "f1", "ProductArn": "p", "AwsAccountId": "222222222222",
             "Severity": {"Label": "HIGH", "Normalized": 70, "Original": "7"},
             "Workflow": {"Status": "NEW"}, "Types": ["a/b/c"], "Note": {"Text": "t", "UpdatedBy": "u"},
             "Resources": [{"Type": "Other", "Id": "r", "Details": {"Big": [1, 2, 3]}}],
             "Confidence": 3, "UserDefinedFields": {"k": "v"}, "Compliance": {"Status": "FAILED"}},
            // a float Normalized gives no label on either path; null members stay null
            {"Id": "f2", "ProductArn": "p", "AwsAccountId": null, "Severity": {"Normalized": 70.0},
             "Workflow": null, "Description": "skipped"},
            // no Severity or Workflow at all
            {"Id": "f3", "ProductArn": "p"}
        ]);
        let page = serde_json::to_vec(&json!({"Findings": findings, "NextToken": "t"})).unwrap();
        let page = read_page(&page, &[]).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("t"));
        assert_eq!(page.findings.len(), 3);
        for ((key, got), f) in page.findings.into_iter().zip(findings.as_array().unwrap()) {
            let id = key.id.clone();
            let expected = CurrentFinding::new(&key.id, &key.product_arn, f);
            assert_eq!(got.entry, expected.entry, "{id}");
            assert_eq!(got.account_id, expected.account_id, "{id}");
            assert_eq!(got.severity_rank, expected.severity_rank, "{id}");
            assert!(got.entry["current"]
                .as_object()
                .unwrap()
                .get(&"Resources".into())
                .is_none());
        }
    }

    /// A write of notes of findings hubgate cannot name voids no batch or decision in flight
    /// (it changes no fact), but what they read before it is not cached as fresh.
    #[test]
    fn a_write_of_notes_voids_nothing_in_flight_but_retires_what_was_read_before_it() {
        let mut st = State::default();
        let a = FindingKey::new("a", "p");
        let account = "222222222222";
        let began = st.batch_began();
        let read_at = Instant::now();
        st.wrote_notes();
        st.retired.retire_everything(Instant::now());
        assert!(st.unwritten_since(&a, Some(account), began, &[]));
        assert!(st.unwritten_since(&a, None, began, &[]));
        let read = |at: Instant| Cached {
            at,
            state: Some(Arc::new(CurrentFinding::from_shared(
                regorus::Value::Null,
                Some(Arc::from(account)),
                None,
                0,
            ))),
            tag: None,
            bytes: 0,
        };
        assert!(st.retired.covers(&read(read_at)));
        let later = Instant::now() + Duration::from_millis(1);
        assert!(!st.retired.covers(&read(later)), "read after the write");
        st.batch_ended(began);
        // A write that may change facts still voids them.
        let began = st.batch_began();
        st.wrote_accounts(&[Arc::from(account)]);
        assert!(!st.unwritten_since(&a, Some(account), began, &[]));
    }

    /// A batch of lookups keeps what it read for every finding no write touched since it
    /// began; a write of unknown scope touches them all; and what is remembered of writes
    /// goes once no batch that began before them is in flight.
    #[test]
    fn a_batch_caches_what_no_write_touched_since_it_began() {
        let mut st = State::default();
        let (a, b) = (FindingKey::new("a", "p"), FindingKey::new("b", "p"));
        st.wrote([&a], None, None, None);
        assert!(
            st.written.is_empty(),
            "no batch in flight: nothing to remember"
        );
        let first = st.batch_began();
        assert!(
            st.unwritten_since(&a, None, first, &[]) && st.unwritten_since(&b, None, first, &[])
        );
        st.wrote([&a], None, None, None);
        assert!(!st.unwritten_since(&a, None, first, &[]));
        assert!(st.unwritten_since(&b, None, first, &[]));
        let second = st.batch_began();
        assert!(
            st.unwritten_since(&a, None, second, &[]),
            "began after the write"
        );
        st.batch_ended(first);
        assert!(
            st.written.is_empty(),
            "the only batch older than the write ended"
        );
        st.wrote_all();
        assert!(!st.unwritten_since(&b, None, second, &[]));
        let third = st.batch_began();
        assert!(st.unwritten_since(&b, None, third, &[]));
        st.wrote([&b], None, None, None);
        st.batch_ended(second);
        assert!(
            !st.unwritten_since(&b, None, third, &[]),
            "third is still in flight"
        );
        st.batch_ended(third);
        assert!(st.batches.is_empty() && st.written.is_empty());
        assert!(st.written_order.is_empty());
        // Of one finding's writes, the oldest batch's end drops only those before the next.
        let fourth = st.batch_began();
        st.wrote([&a], None, None, None);
        let fifth = st.batch_began();
        st.wrote([&a, &b], None, None, None);
        st.batch_ended(fourth);
        assert!(!st.unwritten_since(&a, None, st.generation - 1, &[]));
        assert_eq!(
            st.written[&a].len(),
            1,
            "the write before fifth began is dropped"
        );
        assert_eq!(st.written_order.len(), 2);
        assert!(!st.unwritten_since(&b, None, fifth, &[]));
        st.batch_ended(fifth);
        assert!(st.written.is_empty() && st.written_order.is_empty());
        // A write to an account's findings touches only findings read as that account's.
        let sixth = st.batch_began();
        st.wrote_accounts(&[Arc::from("111111111111")]);
        assert!(!st.unwritten_since(&a, Some("111111111111"), sixth, &[]));
        assert!(st
            .patches_since(&a, Some("111111111111"), sixth, &[])
            .is_none());
        assert!(st.unwritten_since(&a, Some("222222222222"), sixth, &[]));
        assert!(
            st.unwritten_since(&a, None, sixth, &[]),
            "not found: a write cannot create it"
        );
        assert!(st
            .patches_since(&b, Some("222222222222"), sixth, &[])
            .is_some());
        st.batch_ended(sixth);
        assert!(st.cleared_accounts.is_empty());
    }

    /// An account's write retires that account's entries read before it, and those of found
    /// findings whose account is not known; not another account's, not a finding cached as
    /// not found, not what was read after the write. A retirement older than the entries'
    /// time to live is forgotten.
    #[test]
    fn an_accounts_write_retires_only_its_entries_read_before_it() {
        let t0 = Instant::now();
        let entry = |account: Option<&str>, at: Instant| Cached {
            at,
            state: Some(Arc::new(CurrentFinding::from_shared(
                regorus::Value::Null,
                account.map(Arc::from),
                None,
                0,
            ))),
            tag: None,
            bytes: 0,
        };
        let ttl = Duration::from_secs(60);
        let (a, b) = ("111111111111", "222222222222");
        let mut retired = Retired::default();
        let before = [entry(Some(a), t0), entry(Some(b), t0), entry(None, t0)];
        assert!(before.iter().all(|c| !retired.covers(c)));
        let write = t0 + Duration::from_secs(1);
        retired.retire(&[Arc::from(a)], write, ttl);
        assert!(retired.covers(&before[0]));
        assert!(!retired.covers(&before[1]), "another account's entry");
        assert!(
            retired.covers(&before[2]),
            "a found finding of no known account"
        );
        let not_found = Cached {
            at: t0,
            state: None,
            tag: None,
            bytes: 0,
        };
        assert!(!retired.covers(&not_found));
        assert!(
            retired.covers(&entry(Some(a), write)),
            "read as the write was sent"
        );
        let after = entry(Some(a), write + Duration::from_millis(1));
        assert!(!retired.covers(&after), "read after the write");
        // A write a time to live later: the first covers nothing still cached.
        let later = write + ttl + Duration::from_millis(1);
        retired.retire(&[Arc::from(b)], later, ttl);
        assert_eq!(retired.accounts.len(), 1);
        assert!(!retired.covers(&after) && retired.covers(&entry(Some(b), later)));
    }

    /// Review 49: an import claiming an account is a write to that account's finding of its
    /// identifier only (and to one not found, which it may create).
    #[test]
    fn an_import_claiming_an_account_writes_only_that_accounts_finding() {
        let mut st = State::default();
        let a = FindingKey::new("a", "p");
        let began = st.batch_began();
        let member: Arc<str> = Arc::from("222222222222");
        st.wrote([&a], None, None, Some(&member));
        assert!(st.unwritten_since(&a, Some("333333333333"), began, &[]));
        assert_eq!(
            st.patches_since(&a, Some("333333333333"), began, &[])
                .map(|p| p.len()),
            Some(0)
        );
        assert!(!st.unwritten_since(&a, Some("222222222222"), began, &[]));
        assert!(st
            .patches_since(&a, Some("222222222222"), began, &[])
            .is_none());
        assert!(
            !st.unwritten_since(&a, None, began, &[]),
            "not found: it may create it"
        );
        st.wrote([&a], None, None, None);
        assert!(!st.unwritten_since(&a, Some("333333333333"), began, &[]));
    }

    /// A finding written while a call for it was out goes back to the queue (the findings
    /// asked for again take a turn of their own) for the requests waiting on it; one nobody
    /// waits for is dropped. A hold keeps writes known as a batch does, after the batch that
    /// took it has ended.
    #[test]
    fn a_finding_written_during_its_call_is_asked_for_again() {
        let mut st = State::default();
        let (a, b, c) = (
            FindingKey::new("a", "p"),
            FindingKey::new("b", "p"),
            FindingKey::new("c", "p"),
        );
        let waiter = Arc::new(Waiter::new(1, member()));
        st.waiting.insert(a.clone(), vec![(waiter.clone(), 0)]);
        st.queue.push_back(&Who::from(member()), vec![c.clone()]);
        let began = st.batch_began();
        st.hold(began);
        for k in [&a, &b] {
            st.in_flight
                .insert(k.clone(), Arc::new(CallProgress::default()));
        }
        st.wrote([&a, &b], None, None, None);
        st.batch_ended(began);
        assert!(!st.unwritten_since(&a, None, began, &[]), "still held");
        st.ask_again(&a);
        st.ask_again(&b);
        let queued: Vec<FindingKey> = std::iter::from_fn(|| st.queue.pop_front()).collect();
        assert_eq!(
            queued,
            [c.clone(), a.clone()],
            "a queued again, in its turn after the account already waiting; b has nobody waiting"
        );
        assert!(st.in_flight.is_empty());
        // a's waiter is charged for the first call too when a is delivered
        assert!(!st.spent.contains_key(&b));
        deliver(&mut st, &a, &Ok(None), &Arc::new(CallProgress::default()));
        let delivery = waiter.slots().got[0].take().expect("delivered");
        assert_eq!(delivery.earlier.len(), 1);
        assert!(st.spent.is_empty());
        st.batch_ended(began);
        assert!(st.written.is_empty() && st.batches.is_empty());
    }

    /// The findings of requests that stopped waiting leave the queue, and their waiters the
    /// map, once the queue has doubled: not only when they reach its front.
    #[test]
    fn findings_nobody_waits_for_leave_the_queue_once_it_doubles() {
        let mut st = State::default();
        let who = Who::from(member());
        let live = Arc::new(Waiter::new(1, member()));
        let front = FindingKey::new("front", "p");
        st.waiting.insert(front.clone(), vec![(live.clone(), 0)]);
        st.queue.push_back(&who, vec![front.clone()]);
        let mut gone = Vec::new();
        for r in 0..12 {
            let waiter = Arc::new(Waiter::new(100, member()));
            let keys: Vec<FindingKey> = (0..100)
                .map(|i| FindingKey::new(format!("dead-{r}-{i}"), "p"))
                .collect();
            for (at, k) in keys.iter().enumerate() {
                st.waiting.insert(k.clone(), vec![(waiter.clone(), at)]);
            }
            st.make_room_in_queue(keys.len());
            st.queue.push_back(&who, keys);
            // The request hangs up at once.
            waiter.gone.store(true, Ordering::Relaxed);
            gone.push(waiter);
        }
        // 1,201 queued would pass the floor of 1,024: the 1,000 before were dropped.
        assert_eq!(
            st.queue.entries(),
            201,
            "only the live finding and the last request's"
        );
        assert_eq!(st.waiting.len(), 201);
        assert!(st.waiting.contains_key(&front));
        assert_eq!(
            st.compact_at,
            2 * (1 + 100),
            "twice what was left and then queued"
        );
        // A finding a call is out for is served by that call: its queued copy goes, and its
        // waiters stay for the answer.
        st.in_flight
            .insert(front.clone(), Arc::new(CallProgress::default()));
        st.compact_at = 0;
        st.make_room_in_queue(2000);
        assert_eq!(st.queue.entries(), 0);
        assert!(st.waiting.contains_key(&front) && st.waiting.len() == 1);

        // Without a doubling: requests that hang up before their findings came in count
        // them, and once those are half the queue, the driver's next check drops them.
        let mut st = State::default();
        st.waiting.insert(front.clone(), vec![(live.clone(), 0)]);
        st.queue.push_back(&who, vec![front.clone()]);
        let mut requests = Vec::new();
        for r in 0..3 {
            let waiter = Arc::new(Waiter::new(100, member()));
            let keys: Vec<FindingKey> = (0..100)
                .map(|i| FindingKey::new(format!("gone-{r}-{i}"), "p"))
                .collect();
            for (at, k) in keys.iter().enumerate() {
                st.waiting.insert(k.clone(), vec![(waiter.clone(), at)]);
            }
            st.make_room_in_queue(keys.len());
            requests.push(StopsWaiting {
                waiter,
                queued: keys.len(),
                gone_queued: st.gone_queued.clone(),
            });
            st.queue.push_back(&who, keys);
        }
        assert_eq!(st.queue.entries(), 301);
        has_live_work(&mut st);
        assert_eq!(st.queue.entries(), 301, "nobody has gone yet");
        // One that got all its findings counts nothing when it goes.
        let done = Arc::new(Waiter::new(1, member()));
        deliver_to(&done);
        drop(StopsWaiting {
            waiter: done,
            queued: 1,
            gone_queued: st.gone_queued.clone(),
        });
        drop(requests);
        assert_eq!(st.gone_queued.load(Ordering::Relaxed), 300);
        assert!(has_live_work(&mut st));
        assert_eq!((st.queue.entries(), st.waiting.len()), (1, 1));
        assert_eq!(st.gone_queued.load(Ordering::Relaxed), 0);
    }

    fn deliver_to(waiter: &Waiter) {
        let delivery = Delivery {
            outcome: Ok(None),
            call: Arc::new(CallProgress::default()),
            generation: 0,
            earlier: Vec::new(),
        };
        waiter.put(0, delivery);
    }

    /// Member names are matched as their unescaped bytes: an escaped name is still the member
    /// it spells, a name that is not UTF-8 matches nothing and is skipped, and the Id, a value,
    /// is still checked as text.
    #[test]
    fn member_names_match_unescaped_and_only_values_are_checked_as_text() {
        let with_ff = |before: &[u8], after: &[u8]| [before, &[0xff_u8][..], after].concat();
        let page = with_ff(
            br#"{"Findings": [{"Id": "f\u0031", "Product\u0041rn": "p",
                "Sever\u0069ty": {"Label": "HIGH"}, "X"#,
            br#"": {"Label": "LOW"}, "AwsAccountId": "1"}]}"#,
        );
        let page = read_page(&page, &[]).unwrap();
        let [(key, f)] = <[_; 1]>::try_from(page.findings).ok().unwrap();
        assert_eq!((&*key.id, &*key.product_arn), ("f1", "p"));
        assert_eq!(f.severity_rank, Some(3));
        assert_eq!(
            f.entry["current"]["Severity"]["Label"],
            regorus::Value::from("HIGH")
        );
        assert_eq!(f.account_id.as_deref(), Some("1"));
        let bad_id = with_ff(br#"{"Findings": [{"Id": "f"#, br#"", "ProductArn": "p"}]}"#);
        assert!(read_page(&bad_id, &[]).is_err());
    }

    /// Findings of one page that share a member's text share its built value, and each still
    /// gets its own facts; a member that differs is built on its own.
    #[test]
    fn a_page_builds_each_distinct_member_once() {
        let compliance = json!({"Status": "FAILED", "RelatedRequirements": ["NIST AC-3"]});
        let findings = json!([
            {"Id": "f1", "ProductArn": "p", "AwsAccountId": "111111111111",
             "Severity": {"Label": "HIGH"}, "Compliance": compliance, "Workflow": {"Status": "NEW"}},
            {"Id": "f2", "ProductArn": "p", "AwsAccountId": "222222222222",
             "Severity": {"Label": "LOW"}, "Compliance": compliance, "Workflow": {"Status": "NEW"}},
        ]);
        let bytes = serde_json::to_vec(&json!({"Findings": findings})).unwrap();
        let page = read_page(&bytes, &[]).unwrap();
        let [(_, a), (_, b)] = <[_; 2]>::try_from(page.findings).ok().unwrap();
        let member = |f: &CurrentFinding, name: &str| {
            let current = f.entry["current"].as_object().unwrap();
            current.get(&regorus::Value::from(name)).unwrap().clone()
        };
        let shared = |x: &regorus::Value, y: &regorus::Value| match (x, y) {
            (regorus::Value::Object(x), regorus::Value::Object(y)) => Arc::ptr_eq(x, y),
            _ => false,
        };
        assert!(shared(&member(&a, "Compliance"), &member(&b, "Compliance")));
        assert!(shared(&member(&a, "Workflow"), &member(&b, "Workflow")));
        assert!(!shared(&member(&a, "Severity"), &member(&b, "Severity")));
        assert_eq!(a.account_id.as_deref(), Some("111111111111"));
        assert_eq!(b.account_id.as_deref(), Some("222222222222"));
        assert_eq!((a.severity_rank, b.severity_rank), (Some(3), Some(1)));
        for ((_, got), f) in read_page(&bytes, &[])
            .unwrap()
            .findings
            .iter()
            .zip(findings.as_array().unwrap())
        {
            let expected = CurrentFinding::new("x", "p", f);
            assert_eq!(got.entry["current"], expected.entry["current"]);
        }
    }

    /// The memo outlives a page: the next page read on this thread shares the values built
    /// for the last one, and findings of both pages with the same projected texts share their
    /// `current` object. Filled to its bound, it starts again between pages, and what it built
    /// before stays right.
    #[test]
    fn pages_read_in_turn_share_their_built_values_and_the_memo_is_bounded() {
        let compliance = json!({"Status": "FAILED", "RelatedRequirements": ["NIST AC-3"]});
        let finding = |id: &str, note: &str| {
            json!({"Id": id, "ProductArn": "p", "AwsAccountId": "111111111111",
                "Severity": {"Label": "HIGH"}, "Compliance": compliance,
                "Note": {"Text": note}})
        };
        let page = |findings: Vec<Value>| {
            let bytes = serde_json::to_vec(&json!({"Findings": findings})).unwrap();
            read_page(&bytes, &[]).unwrap().findings
        };
        let current = |f: &CurrentFinding| match &f.entry["current"] {
            regorus::Value::Object(o) => o.clone(),
            other => panic!("current is {other:?}"),
        };
        let first = page(vec![finding("f1", "same")]);
        let second = page(vec![finding("f2", "same")]);
        assert!(Arc::ptr_eq(&current(&first[0].1), &current(&second[0].1)));
        // Fill the memo past its bound with distinct texts, one page at a time.
        let per_page = 64;
        for n in 0..(2 * PageMemo::MAX_TEXTS / per_page) {
            let findings = (0..per_page)
                .map(|i| finding(&format!("g{n}-{i}"), &format!("note {n} {i}")))
                .collect();
            page(findings);
        }
        let held = PAGE_MEMO.with_borrow(|m| m.builds.len());
        assert!(
            held <= PageMemo::MAX_TEXTS + per_page,
            "the memo holds {held} texts"
        );
        let third = page(vec![finding("f3", "same")]);
        let expected = CurrentFinding::new("f3", "p", &finding("f3", "same"));
        assert_eq!(third[0].1.entry["current"], expected.entry["current"]);
        assert_eq!(first[0].1.entry["current"], expected.entry["current"]);
    }

    /// The facts (owner, severity) are read once per distinct set of projected texts and
    /// shared by the findings that have them; a finding that differs in one fact member gets
    /// its own, on every page, in whatever order the findings come.
    #[test]
    fn findings_share_their_facts_only_with_findings_of_the_same_texts() {
        let f = |id: &str, account: &str, label: &str, status: &str| {
            json!({"Id": id, "ProductArn": "p", "AwsAccountId": account,
                   "Severity": {"Label": label}, "Workflow": {"Status": status}})
        };
        let pages = [
            vec![
                f("a", "111111111111", "HIGH", "NEW"),
                f("b", "222222222222", "HIGH", "NEW"),
                f("c", "111111111111", "LOW", "NEW"),
                f("d", "111111111111", "HIGH", "NOTIFIED"),
            ],
            vec![
                f("d2", "111111111111", "HIGH", "NOTIFIED"),
                f("c2", "111111111111", "LOW", "NEW"),
                f("a2", "111111111111", "HIGH", "NEW"),
                f("b2", "222222222222", "HIGH", "NEW"),
            ],
        ];
        let mut read = Vec::new();
        for findings in &pages {
            let bytes = serde_json::to_vec(&json!({"Findings": findings})).unwrap();
            let page = read_page(&bytes, &[]).unwrap();
            for ((key, got), f) in page.findings.into_iter().zip(findings) {
                let expected = CurrentFinding::new(&key.id, &key.product_arn, f);
                assert_eq!(got.entry, expected.entry, "{}", key.id);
                assert_eq!(got.account_id, expected.account_id, "{}", key.id);
                assert_eq!(got.severity_rank, expected.severity_rank, "{}", key.id);
                read.push((key.id.to_string(), got));
            }
        }
        let state = |id: &str| &read.iter().find(|(i, _)| i == id).unwrap().1;
        let owner = |id: &str| state(id).account_id.clone().unwrap();
        // the same texts on another page: one shared copy of the owner
        assert!(Arc::ptr_eq(&owner("a"), &owner("a2")));
        assert!(Arc::ptr_eq(&owner("c"), &owner("c2")));
        assert_eq!(&*owner("b2"), "222222222222");
        assert_eq!(state("c").severity_rank, Some(1));
        assert_eq!(state("d2").severity_rank, Some(3));
    }

    /// A finding answered at the place it was asked takes the asked key, texts and all; one
    /// answered elsewhere gets a key of its own that is equal to the asked one.
    #[test]
    fn a_finding_answered_in_the_order_asked_keeps_the_asked_key() {
        let asked = [FindingKey::new("f1", "p"), FindingKey::new("f2", "p")];
        let bytes = serde_json::to_vec(&json!({"Findings": [
            {"Id": "f1", "ProductArn": "p"}, {"Id": "f2", "ProductArn": "p"}]}))
        .unwrap();
        // Read against the asked keys, a finding at its asked place shares the asked Id's text;
        // read against them in the other order, none does.
        let LookupPage { findings, .. } = LookupPage::read(&bytes, &asked).unwrap();
        for (p, want) in findings.iter().zip(&asked) {
            assert!(Arc::ptr_eq(p.id.as_ref().unwrap(), &want.id));
        }
        let reversed = [asked[1].clone(), asked[0].clone()];
        let LookupPage { findings, .. } = LookupPage::read(&bytes, &reversed).unwrap();
        for (p, want) in findings.iter().zip(&asked) {
            assert_eq!(p.id.as_deref(), Some(&*want.id));
            assert!(!Arc::ptr_eq(p.id.as_ref().unwrap(), &want.id));
        }
        let mut in_order = Vec::new();
        let mut swapped = Vec::new();
        for (at, p) in findings.into_iter().enumerate() {
            let id = p.id.clone();
            let product_arn = p.product_arn.clone();
            let again = Projected {
                id,
                product_arn,
                shared: p.shared.clone(),
                bytes: p.bytes,
            };
            in_order.push(p.into_state(&asked, at).unwrap().0);
            swapped.push(again.into_state(&asked, 1 - at).unwrap().0);
        }
        for (got, want) in in_order.iter().zip(&asked) {
            assert!(
                Arc::ptr_eq(&got.id, &want.id) && Arc::ptr_eq(&got.product_arn, &want.product_arn)
            );
        }
        for (got, want) in swapped.iter().zip(&asked) {
            assert_eq!(got, want);
            assert!(!Arc::ptr_eq(&got.id, &want.id));
        }
    }

    /// Findings whose projected fields are the same texts share one `current` object; a
    /// finding that differs in any field, or lacks one, gets its own. Each finding's object
    /// is the one `CurrentFinding::new` builds from it alone, whatever sharing happened.
    #[test]
    fn findings_with_the_same_projected_fields_share_their_current_object() {
        let base = json!({"ProductArn": "p", "AwsAccountId": "111111111111",
            "Severity": {"Label": "HIGH"}, "Workflow": {"Status": "NEW"}, "Types": ["a"],
            "Description": "not projected"});
        let mut other_description = base.clone();
        other_description["Description"] = json!("also not projected");
        let mut no_workflow = base.clone();
        no_workflow.as_object_mut().unwrap().remove("Workflow");
        let mut with_note = base.clone();
        with_note["Note"] = json!({"Text": "t", "UpdatedBy": "u", "UpdatedAt": "x"});
        let findings: Vec<Value> = [&base, &other_description, &no_workflow, &with_note, &base]
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut f = (*f).clone();
                f["Id"] = json!(format!("f{i}"));
                f
            })
            .collect();
        let bytes = serde_json::to_vec(&json!({"Findings": findings})).unwrap();
        let page = read_page(&bytes, &[]).unwrap();
        let current: Vec<&regorus::Value> = page
            .findings
            .iter()
            .map(|(_, f)| &f.entry["current"])
            .collect();
        let shared = |x: &regorus::Value, y: &regorus::Value| match (x, y) {
            (regorus::Value::Object(x), regorus::Value::Object(y)) => Arc::ptr_eq(x, y),
            _ => false,
        };
        assert!(shared(current[0], current[1]));
        assert!(shared(current[0], current[4]));
        assert!(!shared(current[0], current[2]));
        assert!(!shared(current[0], current[3]));
        assert!(!shared(current[2], current[3]));
        let workflow = regorus::Value::from("Workflow");
        assert!(current[2].as_object().unwrap().get(&workflow).is_none());
        for ((key, got), f) in page.findings.iter().zip(&findings) {
            let expected = CurrentFinding::new(f["Id"].as_str().unwrap(), "p", f);
            assert_eq!(got.entry, expected.entry, "{}", key.id);
        }
    }

    /// Findings that share their `current` object and entry template are still separate
    /// states: a processed update laid over one leaves the other as it was read.
    #[test]
    fn patching_a_finding_that_shares_its_objects_leaves_the_others_alone() {
        let f = |id: &str| {
            json!({"Id": id, "ProductArn": "p", "AwsAccountId": "111111111111",
            "Severity": {"Label": "HIGH"}, "Workflow": {"Status": "NEW"}})
        };
        let bytes = serde_json::to_vec(&json!({"Findings": [f("a"), f("b")]})).unwrap();
        let page = read_page(&bytes, &[]).unwrap();
        let [(_, a), (_, b)] = <[_; 2]>::try_from(page.findings).ok().unwrap();
        let before = b.entry.clone();
        let body = json!({"FindingIdentifiers": [{"Id": "a", "ProductArn": "p"}],
            "Severity": {"Label": "LOW"}, "Workflow": {"Status": "RESOLVED"}});
        let update =
            crate::policy::input::update_for(crate::request::Judged::BatchUpdateFindings, &body)
                .unwrap();
        let patched = a.patched(&update.patch().expect("a modelled change"));
        assert_eq!(patched.entry["severity_label"], regorus::Value::from("LOW"));
        assert_eq!(
            patched.entry["current"]["Workflow"]["Status"],
            regorus::Value::from("RESOLVED")
        );
        assert_eq!(patched.entry["Id"], regorus::Value::from("a"));
        assert_eq!(b.entry, before);
        assert_eq!(
            a.entry["current"]["Workflow"]["Status"],
            regorus::Value::from("NEW")
        );
        assert_eq!(b.entry["Id"], regorus::Value::from("b"));
    }

    proptest::proptest! {
        /// Findings drawn from a few values per projected field (or none): each finding's
        /// entry is what it would be alone, and two findings share a `current` object exactly
        /// when their projected fields are equal.
        #[test]
        fn shared_current_objects_are_exactly_the_equal_ones(
            picks in proptest::collection::vec(
                proptest::collection::vec(0usize..3, CURRENT_FIELDS.len()), 1..12)
        ) {
            let findings: Vec<Value> = picks.iter().enumerate().map(|(i, pick)| {
                let mut f = serde_json::Map::new();
                f.insert("Id".into(), json!(format!("f{i}")));
                for (field, &p) in CURRENT_FIELDS.iter().zip(pick) {
                    let value = match (*field, p) {
                        (_, 0) => continue,
                        ("ProductArn", _) => json!("p"),
                        ("Severity", 1) => json!({"Label": "LOW"}),
                        ("Severity", _) => json!({"Normalized": 90}),
                        ("Workflow", 1) => json!({"Status": "NEW"}),
                        ("AwsAccountId", 1) => json!("111111111111"),
                        (_, 1) => json!("one"),
                        (_, _) => json!([2, {"two": null}]),
                    };
                    f.insert(field.to_string(), value);
                }
                f.insert("ProductArn".into(), json!("p"));
                Value::Object(f)
            }).collect();
            let bytes = serde_json::to_vec(&json!({"Findings": findings})).unwrap();
            let page = read_page(&bytes, &[]).unwrap();
            proptest::prop_assert_eq!(page.findings.len(), findings.len());
            for (i, (_, got)) in page.findings.iter().enumerate() {
                let expected = CurrentFinding::new(&format!("f{i}"), "p", &findings[i]);
                proptest::prop_assert_eq!(&got.entry, &expected.entry);
                for (_, other) in &page.findings[..i] {
                    let (a, b) = (&got.entry["current"], &other.entry["current"]);
                    let shared = match (a, b) {
                        (regorus::Value::Object(x), regorus::Value::Object(y)) => Arc::ptr_eq(x, y),
                        _ => false,
                    };
                    proptest::prop_assert_eq!(shared, a == b);
                }
            }
        }
    }

    /// A second Findings or NextToken member is refused, as the derived reader refused it.
    #[test]
    fn a_page_with_a_repeated_member_is_refused() {
        assert!(read_page(br#"{"Findings": [], "Findings": []}"#, &[]).is_err());
        assert!(read_page(
            br#"{"Findings": [], "NextToken": "a", "NextToken": "b"}"#,
            &[]
        )
        .is_err());
        assert!(read_page(br#"{"NextToken": "a"}"#, &[]).is_err());
        let page = read_page(br#"{"Findings": [], "NextToken": null, "Other": [1]}"#, &[]).unwrap();
        assert!(page.next_token.is_none());
    }

    /// An enricher with the settings `toml` gives and no Security Hub behind it.
    async fn enricher(toml: &str) -> Enricher {
        let config = crate::config::Config::parse(std::path::Path::new("/x/hubgate.toml"), toml)
            .expect("a valid configuration");
        let upstream = Upstream::new(&config).await.expect("an upstream");
        let pacer = Arc::new(Pacer::new(&config.quota));
        Enricher::new(
            upstream,
            pacer,
            &config.enrichment,
            EnrichMetrics::default(),
        )
    }

    /// A re-share of the journal cut off part-way (its request's future dropped) leaves the
    /// journal marked lost, so that the next write shares it again: Redis is paused, the
    /// re-share waits on its first write and is dropped.
    #[tokio::test]
    async fn a_reshare_cut_off_leaves_the_journal_lost() {
        use crate::coordination::testing::{coordination_on, redis_server};
        let Some(server) = redis_server() else {
            return;
        };
        let coord = coordination_on(&server);
        coord.probe().await;
        assert!(coord.healthy(), "{:?}", coord.status());
        let enricher = enricher("").await.share_through(coord.clone());
        {
            let mut st = enricher.inner.lock();
            st.journal
                .record_everything("UpdateFindings", Instant::now());
        }
        enricher.inner.journal_lost.store(true, Ordering::SeqCst);
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", server.1)).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(400)
            .arg("WRITE")
            .query_async(&mut con)
            .await
            .unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(100), share_again(&enricher.inner));
        assert!(cut.await.is_err(), "the paused write was answered");
        assert!(
            enricher.inner.journal_lost.load(Ordering::SeqCst),
            "a re-share cut off part-way counted as done"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        share_again(&enricher.inner).await;
        assert!(!enricher.inner.journal_lost.load(Ordering::SeqCst));
    }

    /// An enricher with the default settings and no Security Hub behind it, holding
    /// `findings` (id, account, severity label) in its cache.
    async fn cached(findings: &[(&str, &str, &str)]) -> Enricher {
        let enricher = enricher("").await;
        {
            let mut st = enricher.inner.lock();
            let now = Instant::now();
            for (id, account, label) in findings {
                let finding = json!({"Id": id, "ProductArn": "p", "AwsAccountId": account,
                    "Severity": {"Label": label}, "Workflow": {"Status": "NEW"}});
                let state = Arc::new(CurrentFinding::new(id, "p", &finding));
                enricher.inner.store_tagged(
                    &mut st,
                    FindingKey::new(*id, "p"),
                    Some(state),
                    None,
                    now,
                    now,
                );
            }
        }
        enricher
    }

    /// Findings cached as not found count their identifiers, which a caller chose: a member
    /// naming made-up identifiers of 100 KB each keeps the cache within max_cache_bytes (the
    /// oldest go), and the gauge says what it holds; an entry larger than the whole bound is
    /// not kept. Before, such entries counted as nothing and stayed until the entry count
    /// was reached.
    #[tokio::test]
    async fn made_up_identifiers_count_and_stay_within_the_byte_bound() {
        let enricher = enricher("[enrichment]\nmax_cache_bytes = 1048576\n").await;
        let inner = &enricher.inner;
        let mut st = inner.lock();
        let now = Instant::now();
        let id = |i: usize| format!("{i}-{}", "x".repeat(100_000));
        for i in 0..50 {
            // Read in turn, a millisecond apart.
            let at = now - Duration::from_millis(100 - i as u64);
            inner.store_tagged(&mut st, FindingKey::new(id(i), "p"), None, None, at, now);
            let counted: usize = st.cache.values().map(|c| c.bytes).sum();
            assert_eq!(st.bytes, counted);
            assert!(st.bytes <= 1_048_576, "{} bytes after {i}", st.bytes);
            assert!(st.bytes >= st.cache.len() * 100_000);
        }
        assert!((5..=10).contains(&st.cache.len()), "{}", st.cache.len());
        assert!(
            st.cache.contains_key(&FindingKey::new(id(49), "p")),
            "the newest stays"
        );
        assert!(
            !st.cache.contains_key(&FindingKey::new(id(0), "p")),
            "the oldest went"
        );
        let huge = FindingKey::new("y".repeat(2_000_000), "p");
        inner.store_tagged(&mut st, huge.clone(), None, None, now, now);
        assert!(!st.cache.contains_key(&huge));
        assert!(st.bytes <= 1_048_576);
    }

    /// The read mark a replay hands to the decision made on it.
    fn mark_of(replay: &Replay) -> Box<dyn crate::decide::Reads> {
        let mut mark = replay.reads.lock().unwrap();
        mark.take().expect("the replay's mark")
    }

    fn label(states: &KeyMap<Arc<CurrentFinding>>, key: &FindingKey) -> String {
        let entry = states[key].entry.as_object().expect("an entry");
        entry
            .get(&regorus::Value::from("severity_label"))
            .expect("a severity")
            .as_string()
            .expect("a label")
            .to_string()
    }

    async fn lookup(enricher: &Enricher, keys: &[FindingKey]) -> Lookup {
        let deadline = Instant::now() + Duration::from_secs(5);
        match FindingState::lookup(enricher, keys, member(), deadline).await {
            Ok(Some(found)) => found,
            Ok(None) => panic!("no state"),
            Err(e) => panic!("refused: {}", e.error),
        }
    }

    fn update(body: serde_json::Value) -> Update {
        crate::policy::input::update_for(crate::request::Judged::BatchUpdateFindings, &body)
            .expect("a valid update")
    }

    /// From the moment a write is sent until its answer has been written through: a decision
    /// that read before it is made again with it laid over, judged both ways; one that reads
    /// meanwhile gets it laid over, judged both ways, and is not made again for it; after the
    /// answer the cache holds the write and nothing is judged twice.
    #[tokio::test]
    async fn a_decision_holds_whether_a_write_in_flight_lands_or_not() {
        let enricher = cached(&[("a", "222222222222", "MEDIUM")]).await;
        let a = FindingKey::new("a", "p");
        let keys = [a.clone()];
        let before = lookup(&enricher, &keys).await;
        assert_eq!(label(&before.current, &a), "MEDIUM");
        assert!(before.unsettled.is_none());

        let raise = update(
            json!({"FindingIdentifiers": [{"Id": "a", "ProductArn": "p"}],
            "Severity": {"Label": "CRITICAL"}}),
        );
        let sent = enricher.sending(Sent::Findings {
            keys: &keys,
            write: Unapplied::Update(&raise),
        });
        let reads = before.reads.as_ref().expect("a read mark");
        let Changed::Patched(replay) = reads.changed(&keys, &before.current, None) else {
            panic!("the write in flight went unnoticed");
        };
        assert_eq!(label(&replay.current, &a), "CRITICAL");
        let without = replay.unsettled.as_ref().expect("judged both ways");
        assert_eq!(label(without, &a), "MEDIUM");

        let during = lookup(&enricher, &keys).await;
        assert_eq!(label(&during.current, &a), "CRITICAL");
        let without = during.unsettled.as_ref().expect("judged both ways");
        assert_eq!(label(without, &a), "MEDIUM");
        let reads = during.reads.as_ref().expect("a read mark");
        assert!(
            matches!(
                reads.changed(&keys, &during.current, during.unsettled.as_ref()),
                Changed::No
            ),
            "a write already laid over is not news"
        );

        // A write in flight that changes nothing this decision read does not void it.
        let again = enricher.sending(Sent::Findings {
            keys: &keys,
            write: Unapplied::Update(&raise),
        });
        let replayed = mark_of(&replay);
        assert!(matches!(
            replayed.changed(&keys, &replay.current, replay.unsettled.as_ref()),
            Changed::No
        ));
        drop(again);

        enricher.write_through(&keys, &raise, Some(sent.id())).await;
        let reads = during.reads.as_ref().expect("a read mark");
        assert!(
            matches!(
                reads.changed(&keys, &during.current, during.unsettled.as_ref()),
                Changed::No
            ),
            "the answer of a write already laid over is not news either"
        );
        let reads = before.reads.as_ref().expect("a read mark");
        let Changed::Patched(replay) = reads.changed(&keys, &before.current, None) else {
            panic!("the answered write went unnoticed");
        };
        assert_eq!(label(&replay.current, &a), "CRITICAL");
        assert!(replay.unsettled.is_none(), "answered: judged once, with it");
        drop(sent);
        assert!(enricher.inner.lock().sending.is_empty());
        let after = lookup(&enricher, &keys).await;
        assert_eq!(label(&after.current, &a), "CRITICAL", "written through");
        assert!(after.unsettled.is_none(), "nothing in flight: judged once");
    }

    /// A decision made again on a replay may check more findings at forwarding than the check
    /// that made the replay did (a partial forward whose allowed set grows: a policy reloaded
    /// in between, or one that judges a finding by the others). Raises of b and then of a are
    /// sent after the first read (and, with `answered`, answered); the first check is asked
    /// about a alone; the check after the decision made again, about a and b. Returns b's
    /// label as the decision made again sees it.
    async fn b_after_a_replay_on_more_findings(answered: bool) -> String {
        let enricher = cached(&[
            ("a", "222222222222", "MEDIUM"),
            ("b", "222222222222", "MEDIUM"),
        ])
        .await;
        let (a, b) = (FindingKey::new("a", "p"), FindingKey::new("b", "p"));
        let both = [a.clone(), b.clone()];
        let before = lookup(&enricher, &both).await;
        let raise = |id: &str| {
            update(
                json!({"FindingIdentifiers": [{"Id": id, "ProductArn": "p"}],
                "Severity": {"Label": "CRITICAL"}}),
            )
        };
        let (raise_a, raise_b) = (raise("a"), raise("b"));
        let mut in_flight = Vec::new();
        for (key, write) in [(&b, &raise_b), (&a, &raise_a)] {
            let sent = enricher.sending(Sent::Findings {
                keys: std::slice::from_ref(key),
                write: Unapplied::Update(write),
            });
            match answered {
                true => {
                    let (keys, id) = (std::slice::from_ref(key), Some(sent.id()));
                    enricher.write_through(keys, write, id).await;
                }
                false => in_flight.push(sent),
            }
        }
        // The first decision forwards a alone (b denied): the check sees the write to a.
        let reads = before.reads.as_ref().expect("a read mark");
        let Changed::Patched(replay) =
            reads.changed(std::slice::from_ref(&a), &before.current, None)
        else {
            panic!("the write to a went unnoticed");
        };
        assert_eq!(label(&replay.current, &a), "CRITICAL");
        // The second decision, on the replay, forwards a and b: whether the replay's state or
        // the check after it lays the raise over b.
        let replayed = mark_of(&replay);
        let b_now = match replayed.changed(&both, &replay.current, replay.unsettled.as_ref()) {
            Changed::Patched(again) => label(&again.current, &b),
            Changed::Unknown => "unknown".into(),
            Changed::No => label(&replay.current, &b),
        };
        drop(in_flight);
        b_now
    }

    #[tokio::test]
    async fn a_replay_checked_on_more_findings_sees_their_writes_in_flight() {
        let b = b_after_a_replay_on_more_findings(false).await;
        assert_ne!(
            b, "MEDIUM",
            "the write in flight to b was never laid over b"
        );
    }

    #[tokio::test]
    async fn a_replay_checked_on_more_findings_sees_their_writes_answered() {
        let b = b_after_a_replay_on_more_findings(true).await;
        assert_ne!(b, "MEDIUM", "the answered raise of b was never laid over b");
    }

    /// A write whose effect hubgate cannot tell refuses a lookup of its findings while it is in
    /// flight, and makes a decision that read before it read again.
    #[tokio::test]
    async fn a_write_it_cannot_model_in_flight_refuses_its_findings() {
        let enricher = cached(&[
            ("a", "222222222222", "MEDIUM"),
            ("b", "222222222222", "LOW"),
        ])
        .await;
        let (a, b) = (FindingKey::new("a", "p"), FindingKey::new("b", "p"));
        let before = lookup(&enricher, &[a.clone(), b.clone()]).await;
        let claims = [Some("222222222222".to_string())];
        let sent = enricher.sending(Sent::Findings {
            keys: std::slice::from_ref(&a),
            write: Unapplied::Import(
                "BatchImportFindings",
                &claims,
                Importer::Member("222222222222"),
            ),
        });
        let reads = before.reads.as_ref().expect("a read mark");
        assert!(matches!(
            reads.changed(&[a.clone(), b.clone()], &before.current, None),
            Changed::Unknown
        ));
        assert!(
            matches!(
                reads.changed(std::slice::from_ref(&b), &before.current, None),
                Changed::No
            ),
            "another finding is untouched"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = FindingState::lookup(&enricher, &[b.clone(), a.clone()], member(), deadline)
            .await
            .err()
            .expect("refused while the import is in flight");
        let LookupError::Unsettled(u) = refused.error else {
            panic!("refused for another reason");
        };
        assert_eq!(u.finding.as_ref(), Some(&a));
        assert!(u.in_flight, "{u}");
        drop(sent);
        lookup(&enricher, &[a.clone(), b.clone()]).await;
    }
}
