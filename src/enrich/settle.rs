//! What hubgate wrote that Security Hub may not have applied yet. Security Hub applies
//! BatchUpdateFindings asynchronously ("can take several minutes"), so for a while after a
//! write hubgate forwarded, GetFindings may still show the finding as it was before. The
//! journal keeps each write for `enrichment.settle_ms`:
//! - a change hubgate can model is laid over every state read for the finding, and the
//!   decision must also hold on the state as read (Security Hub may not have applied the
//!   write, or another writer may have changed the finding since);
//! - after a write it cannot model (an import, OCSF identifiers, filters) the finding's state
//!   cannot be known, and a decision that reads it is refused until the window has passed;
//!   writes that can only touch one account's findings leave only those unknown.
//!
//! This is the replica's own journal. With Redis, every replica's writes are also in a shared
//! one (`coordination::cache`, composed there by the same rules), which a lookup reads and
//! hands in as `Shared`.
//!
//! The cache cannot do this alone: it holds a write only while the finding's entry is cached
//! and fresh, which `cache_ttl_ms = 0`, an uncached finding or an expired entry all defeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decide::Unsettled;
use crate::finding::{FindingKey, KeyMap};
use crate::policy::input::{path_replaces, Patch};
use crate::policy::state::CurrentFinding;

/// One write to findings.
#[derive(Clone)]
pub enum Write {
    /// A change hubgate can lay over a state.
    Patch(Arc<Patch>),
    /// A write whose effect hubgate cannot tell, by what made it; with an account, only if
    /// the finding belongs to that account (an import can change only the findings of the
    /// account it names: one claiming another account's finding is refused by Security Hub).
    Unknown(&'static str, Option<Arc<str>>),
}

/// Where a state handed to `Journal::lay_over` came from.
pub enum Source {
    /// A GetFindings answer for this lookup.
    SecurityHub,
    /// The local cache, holding what was read at `read_at` with hubgate's writes since then
    /// written through.
    Cache { read_at: Instant },
    /// Anywhere else (the shared cache): nothing is assumed.
    Other,
}

/// What is kept for one finding.
#[derive(Default)]
struct Kept {
    /// Every change written in the window, composed in order (see `Patch::then`, kept without
    /// a memo).
    patch: Option<Composed>,
    /// The last write hubgate cannot model: when, and by what.
    unknown: Option<(Instant, &'static str)>,
    /// The last write hubgate cannot model limited to an account, per account claimed: when,
    /// by what, and the account. Kept apart: a claim for an account the finding does not
    /// belong to changes nothing, so it must neither clear the change above nor replace an
    /// unknown write that holds for every account.
    owned: Vec<(Instant, &'static str, Arc<str>)>,
}

impl Kept {
    fn has_unknown(&self) -> bool {
        self.unknown.is_some() || !self.owned.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.patch.is_none() && !self.has_unknown()
    }
}

struct Composed {
    /// When the oldest part still in it was written.
    first: Instant,
    /// When its last part was written.
    last: Instant,
    patch: Arc<Patch>,
    /// When each value it sets (by `Patch::paths`) was last written: a value leaves the
    /// composition when its own write leaves the window, however often the finding is
    /// written to since. Shared by the findings written to together.
    times: Arc<[(String, Instant)]>,
}

/// `old` times with the values `new` sets dated `now` (`Patch::then`'s replacement rule).
fn retimed(old: &[(String, Instant)], new: &Patch, now: Instant) -> Arc<[(String, Instant)]> {
    let paths = new.paths().unwrap_or_default();
    let mut out: Vec<(String, Instant)> = old
        .iter()
        .filter(|(p, _)| !paths.iter().any(|n| path_replaces(n, p)))
        .cloned()
        .collect();
    out.extend(paths.into_iter().map(|p| (p, now)));
    out.into()
}

pub struct Journal {
    window: Duration,
    by_key: KeyMap<Kept>,
    /// The last write that may have changed any finding, and what made it.
    everything: Option<(Instant, &'static str)>,
    /// Per account, the last write that may have changed any of its findings (OCSF
    /// identifiers name the account, not a finding GetFindings can read).
    accounts: std::collections::HashMap<Arc<str>, (Instant, &'static str)>,
    /// When the journal is next swept for what left the window. Between sweeps, reads
    /// skip what has left it (a composed change whole; its older values at most one sweep
    /// interval late). A sweep, not a queue of every write's findings: at thousands of
    /// writes a second, that queue held hundreds of megabytes of keys for `settle_ms`.
    next_sweep: Instant,
    /// Findings with a write hubgate cannot model in the window: while there are none, no
    /// lookup needs to ask for each of its findings.
    unknowns: usize,
    /// Other replicas' writes hubgate cannot model that refused a lookup here (read from the
    /// shared journal after the lookup's GetFindings calls), per finding and for every
    /// finding, with when their windows end. SDKs retry the refusal's 503: the retry is
    /// refused before it spends GetFindings quota again. Never shared, and it only ever adds
    /// refusals.
    learned: KeyMap<(Instant, String)>,
    learned_everything: Option<(Instant, String)>,
}

impl Default for Journal {
    /// A journal that keeps nothing (`settle_ms = 0`).
    fn default() -> Journal {
        Journal::new(Duration::ZERO)
    }
}

impl Journal {
    pub fn new(window: Duration) -> Journal {
        Journal {
            window,
            by_key: KeyMap::default(),
            everything: None,
            accounts: Default::default(),
            next_sweep: Instant::now(),
            unknowns: 0,
            learned: KeyMap::default(),
            learned_everything: None,
        }
    }

    /// Findings with a write in the window.
    pub fn findings(&self) -> usize {
        self.by_key.len()
    }

    /// How long every finding's state stays unknown (zero when it is not).
    pub fn everything_left(&self, now: Instant) -> Duration {
        self.everything.map_or(Duration::ZERO, |(at, _)| {
            self.window
                .saturating_sub(now.saturating_duration_since(at))
        })
    }

    /// `keys` were written to, at `now`.
    pub fn record(&mut self, keys: &[FindingKey], write: Write, now: Instant) {
        if self.window.is_zero() || keys.is_empty() {
            return;
        }
        self.expire(now);
        let fresh = match &write {
            Write::Patch(p) => Some(Arc::new(p.fresh())),
            Write::Unknown(..) => None,
        };
        // Findings written to together were mostly written to together before: their
        // earlier change is composed with this one once, and the result shared.
        type Times = Arc<[(String, Instant)]>;
        let mut composed: Vec<(*const Patch, Arc<Patch>, Times)> = Vec::new();
        let mut compose = |old: &Composed, new: &Arc<Patch>| {
            let ptr = Arc::as_ptr(&old.patch);
            if let Some((_, c, t)) = composed.iter().find(|(p, ..)| *p == ptr) {
                return (c.clone(), t.clone());
            }
            let c = match old.patch.same_change(new) {
                true => old.patch.clone(),
                false => Arc::new(old.patch.then(new)),
            };
            let t = retimed(&old.times, new, now);
            composed.push((ptr, c.clone(), t.clone()));
            (c, t)
        };
        let new_times: Option<Times> = fresh.as_ref().map(|p| retimed(&[], p, now));
        for key in keys {
            let kept = self.by_key.entry(key.clone()).or_default();
            match (&write, &fresh) {
                (Write::Unknown(operation, account), _) => {
                    if !kept.has_unknown() {
                        self.unknowns += 1;
                    }
                    match account {
                        Some(account) => {
                            kept.owned.retain(|(_, _, a)| a != account);
                            kept.owned.push((now, operation, account.clone()));
                        }
                        None => {
                            // The changes before it are moot while it is in the window, and
                            // they leave the window before it does.
                            kept.patch = None;
                            kept.unknown = Some((now, operation));
                        }
                    }
                }
                (Write::Patch(_), Some(new)) => {
                    let (patch, times) = match &kept.patch {
                        None => (new.clone(), new_times.clone().unwrap_or_default()),
                        Some(old) => compose(old, new),
                    };
                    kept.patch = Some(Composed {
                        first: times.iter().map(|(_, t)| *t).min().unwrap_or(now),
                        last: now,
                        patch,
                        times,
                    });
                }
                (Write::Patch(_), None) => {}
            }
        }
    }

    /// A write may have changed any finding, at `now`. What was kept before leaves the window
    /// before it does, so it is dropped.
    pub fn record_everything(&mut self, operation: &'static str, now: Instant) {
        if self.window.is_zero() {
            return;
        }
        self.everything = Some((now, operation));
        self.by_key.clear();
        self.unknowns = 0;
    }

    /// A write may have changed any finding of `accounts`, at `now`.
    pub fn record_accounts(
        &mut self,
        accounts: &[Arc<str>],
        operation: &'static str,
        now: Instant,
    ) {
        if self.window.is_zero() {
            return;
        }
        self.expire(now);
        for account in accounts {
            self.accounts.insert(account.clone(), (now, operation));
        }
    }

    /// Drops what left the window, once per sweep interval (a tenth of the window, at most
    /// a second).
    pub fn expire(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + (self.window / 10).min(Duration::from_secs(1));
        let Some(cutoff) = now.checked_sub(self.window) else {
            return;
        };
        if self.everything.is_some_and(|(at, _)| at <= cutoff) {
            self.everything = None;
        }
        if self
            .learned_everything
            .as_ref()
            .is_some_and(|(end, _)| *end <= now)
        {
            self.learned_everything = None;
        }
        if !self.learned.is_empty() {
            self.learned.retain(|_, (end, _)| *end > now);
        }
        if !self.accounts.is_empty() {
            self.accounts.retain(|_, (at, _)| *at > cutoff);
        }
        // Findings written to together are trimmed together: once per composition.
        type Trimmed = (*const Patch, Arc<Patch>, Arc<[(String, Instant)]>);
        let mut trimmed: Vec<Trimmed> = Vec::new();
        let unknowns = &mut self.unknowns;
        self.by_key.retain(|_, kept| {
            {
                {
                    if kept.patch.as_ref().is_some_and(|c| c.last <= cutoff) {
                        kept.patch = None;
                    }
                    // Some of its parts left the window: the values they alone set go.
                    if let Some(c) = kept.patch.as_mut().filter(|c| c.first <= cutoff) {
                        let ptr = Arc::as_ptr(&c.patch);
                        let (patch, times) = match trimmed.iter().find(|(p, ..)| *p == ptr) {
                            Some((_, patch, times)) => (patch.clone(), times.clone()),
                            None => {
                                let (gone, kept_times): (Vec<_>, Vec<_>) =
                                    c.times.iter().cloned().partition(|(_, t)| *t <= cutoff);
                                let gone: Vec<String> = gone.into_iter().map(|(p, _)| p).collect();
                                let patch = Arc::new(c.patch.without(&gone));
                                let times: Arc<[(String, Instant)]> = kept_times.into();
                                trimmed.push((ptr, patch.clone(), times.clone()));
                                (patch, times)
                            }
                        };
                        c.first = times.iter().map(|(_, t)| *t).min().unwrap_or(c.last);
                        c.patch = patch;
                        c.times = times;
                        if c.patch.is_empty() {
                            kept.patch = None;
                        }
                    }
                    let had = kept.has_unknown();
                    if kept.unknown.is_some_and(|(at, _)| at <= cutoff) {
                        kept.unknown = None;
                    }
                    kept.owned.retain(|(at, ..)| *at > cutoff);
                    if had && !kept.has_unknown() {
                        *unknowns -= 1;
                    }
                }
            }
            !kept.is_empty()
        });
    }

    /// Everything in the window, as writes to share again: after this replica could not
    /// reach Redis, the other replicas have not learnt of what it wrote meanwhile.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let cutoff = now.checked_sub(self.window);
        let live = |at: Instant| cutoff.is_none_or(|c| at > c);
        let mut out = Snapshot {
            everything: self
                .everything
                .filter(|(at, _)| live(*at))
                .map(|(_, op)| op),
            ..Default::default()
        };
        for (account, (at, op)) in &self.accounts {
            if !live(*at) {
                continue;
            }
            match out.accounts.iter_mut().find(|(o, _)| o == op) {
                Some((_, list)) => list.push(account.to_string()),
                None => out.accounts.push((op, vec![account.to_string()])),
            }
        }
        for (key, kept) in &self.by_key {
            if let Some(c) = kept.patch.as_ref().filter(|c| live(c.last)) {
                let ptr = Arc::as_ptr(&c.patch);
                match out.changes.iter_mut().find(|(p, ..)| Arc::as_ptr(p) == ptr) {
                    Some((_, keys)) => keys.push(key.clone()),
                    None => out.changes.push((c.patch.clone(), vec![key.clone()])),
                }
            }
            if let Some((_, op)) = kept.unknown.filter(|(at, _)| live(*at)) {
                match out.unknown.iter_mut().find(|(o, _)| *o == op) {
                    Some((_, keys)) => keys.push(key.clone()),
                    None => out.unknown.push((op, vec![key.clone()])),
                }
            }
            for (_, op, account) in kept.owned.iter().filter(|(at, ..)| live(*at)) {
                out.owned.push((*op, key.clone(), Some(account.clone())));
            }
        }
        out
    }

    /// Why the state of one of `keys` cannot be known yet (the one whose window ends last),
    /// from this replica's writes and the other replicas' (`shared`), if so. Writes limited to
    /// an account count only once the `states` read show which findings belong to it.
    pub fn unsettled(
        &self,
        keys: &[FindingKey],
        now: Instant,
        shared: Option<&Shared>,
        states: Option<&KeyMap<Arc<CurrentFinding>>>,
    ) -> Option<Unsettled> {
        let owner = |key: &FindingKey| -> Option<&str> { states?.get(key)?.account_id.as_deref() };
        let cutoff = now.checked_sub(self.window);
        let live = |at: Instant| cutoff.is_none_or(|c| at > c);
        // (time left in the window, the finding or None for all, the operation)
        let mut best: Option<(Duration, Option<FindingKey>, String)> = None;
        let mut take = |left: Duration, finding: Option<&FindingKey>, op: &str| {
            if best.as_ref().is_none_or(|(l, _, _)| left > *l) {
                best = Some((left, finding.cloned(), op.to_string()));
            }
        };
        let left_of = |at: Instant| {
            self.window
                .saturating_sub(now.saturating_duration_since(at))
        };
        if let Some((at, op)) = self.everything.filter(|(at, _)| live(*at)) {
            take(left_of(at), None, op);
        }
        if self.unknowns > 0 {
            for key in keys {
                let Some(kept) = self.by_key.get(key) else {
                    continue;
                };
                if let Some((at, op)) = kept.unknown.filter(|(at, _)| live(*at)) {
                    take(left_of(at), Some(key), op);
                }
                for (at, op, account) in &kept.owned {
                    if live(*at) && owner(key) == Some(&**account) {
                        take(left_of(*at), Some(key), op);
                    }
                }
            }
        }
        if !self.accounts.is_empty() {
            for key in keys {
                if let Some((at, op)) = owner(key).and_then(|a| self.accounts.get(a)) {
                    if live(*at) {
                        take(left_of(*at), Some(key), op);
                    }
                }
            }
        }
        let ends = |end: Instant| end.checked_duration_since(now).filter(|l| !l.is_zero());
        if let Some((left, op)) = self
            .learned_everything
            .as_ref()
            .and_then(|(end, op)| Some((ends(*end)?, op)))
        {
            take(left, None, op);
        }
        if !self.learned.is_empty() {
            for key in keys {
                if let Some((left, op)) = self
                    .learned
                    .get(key)
                    .and_then(|(end, op)| Some((ends(*end)?, op)))
                {
                    take(left, Some(key), op);
                }
            }
        }
        if let Some(shared) = shared {
            shared.refusals(keys, states, &mut take);
        }
        let (left, finding, operation) = best?;
        Some(Unsettled {
            finding,
            operation,
            since_ms: self.window.saturating_sub(left).as_millis() as u64,
            // Rounded up: a client that waits this long finds the window over.
            retry_after_s: left.as_millis().div_ceil(1000).max(1) as u64,
            in_flight: false,
        })
    }

    /// Keeps what refuses a lookup of `keys` only once their states are read (`states`): the
    /// other replicas' writes (`shared`), and this replica's limited to an account. The same
    /// findings are then refused before their next lookup, for as long as that holds.
    pub fn learn(
        &mut self,
        keys: &[FindingKey],
        now: Instant,
        shared: Option<&Shared>,
        states: &KeyMap<Arc<CurrentFinding>>,
    ) {
        let local = !self.accounts.is_empty() || self.unknowns > 0;
        if self.window.is_zero() || (shared.is_none() && !local) {
            return;
        }
        let mut found: Vec<(Duration, Option<FindingKey>, String)> = Vec::new();
        let mut take = |left: Duration, finding: Option<&FindingKey>, op: &str| {
            found.push((left, finding.cloned(), op.to_string()));
        };
        if let Some(shared) = shared {
            shared.refusals(keys, Some(states), &mut take);
        }
        if local {
            let cutoff = now.checked_sub(self.window);
            let left_of = |at: Instant| {
                (cutoff.is_none_or(|c| at > c)).then(|| {
                    self.window
                        .saturating_sub(now.saturating_duration_since(at))
                })
            };
            for key in keys {
                let Some(owner) = states.get(key).and_then(|s| s.account_id.as_deref()) else {
                    continue;
                };
                if let Some((at, op)) = self.accounts.get(owner) {
                    if let Some(left) = left_of(*at) {
                        take(left, Some(key), op);
                    }
                }
                let owned = self.by_key.get(key).map_or(&[][..], |k| &k.owned[..]);
                for (at, op, account) in owned {
                    if **account == *owner {
                        if let Some(left) = left_of(*at) {
                            take(left, Some(key), op);
                        }
                    }
                }
            }
        }
        let (learned, everything) = (&mut self.learned, &mut self.learned_everything);
        for (left, finding, op) in found {
            let end = now + left;
            let slot = match &finding {
                Some(key) => learned.get_mut(key),
                None => everything.as_mut(),
            };
            match (slot, finding) {
                (Some(slot), _) if slot.0 >= end => {}
                (Some(slot), _) => *slot = (end, op),
                (None, Some(key)) => {
                    learned.insert(key, (end, op));
                }
                (None, None) => *everything = Some((end, op)),
            }
        }
    }

    /// Lays the changes in the window, this replica's and then the other replicas' (`shared`,
    /// which holds this replica's too, in the order Redis received them), over `current` (the
    /// states read for `keys`). Returns the states as they were read when that changed any of
    /// them.
    ///
    /// `source` says where each state came from. A state Security Hub itself just reported
    /// that already shows a change shows it applied: the change is not laid over it, and one
    /// kept here is dropped, so that from then on another writer's later change to the same
    /// fields is seen as it is. A cached state read before the first part of a change kept
    /// here was written has had every part written through to it.
    pub fn lay_over(
        &mut self,
        keys: &[FindingKey],
        current: &mut KeyMap<Arc<CurrentFinding>>,
        source: impl Fn(&FindingKey, &Arc<CurrentFinding>) -> Source,
        now: Instant,
        shared: Option<&Shared>,
    ) -> Option<KeyMap<Arc<CurrentFinding>>> {
        let shared = shared.filter(|s| !s.patches.is_empty());
        if self.by_key.is_empty() && shared.is_none() {
            return None;
        }
        let cutoff = now.checked_sub(self.window);
        // Fresh copies, one per kept change, dropped with this call: laying a patch over a
        // state, or asking whether the state shows it, memoises that state in the patch.
        let mut copies: Vec<(*const Patch, Patch)> = Vec::new();
        let mut reported: Option<KeyMap<Arc<CurrentFinding>>> = None;
        let mut applied = Vec::new();
        // The journal holds every finding written in the window, mostly out of the processor's
        // caches: its entries are found first, in a loop with nothing else in it, so that the
        // processor waits on several findings' cache misses at once rather than on each in turn.
        let found: Vec<_> = keys
            .iter()
            .map(|key| {
                let kept = self
                    .by_key
                    .get(key)
                    .and_then(|k| k.patch.as_ref())
                    .filter(|k| cutoff.is_none_or(|c| k.last > c));
                (kept, shared.and_then(|s| s.patches.get(key)))
            })
            .collect();
        for (key, (kept, theirs)) in keys.iter().zip(found) {
            if kept.is_none() && theirs.is_none() {
                continue;
            }
            let Some(read) = current.get(key) else {
                continue;
            };
            let source = source(key, read);
            let shown = |patch: &Patch| {
                matches!(source, Source::SecurityHub) && patch.shown_by(&read.entry)
            };
            let mut state = read.clone();
            if let Some(kept) = kept {
                let ptr = Arc::as_ptr(&kept.patch);
                let copy = match copies.iter().position(|(p, _)| *p == ptr) {
                    Some(i) => &copies[i].1,
                    None => {
                        copies.push((ptr, kept.patch.fresh()));
                        &copies[copies.len() - 1].1
                    }
                };
                if shown(copy) {
                    // Shown, so not laid over this read; forgotten only if that means applied.
                    if copy.settles_when_shown() {
                        applied.push(key);
                    }
                } else if !matches!(source, Source::Cache { read_at } if read_at < kept.first) {
                    state = super::laid_over(&state, copy);
                }
            }
            if let Some(theirs) = theirs.filter(|p| !shown(p)) {
                state = super::laid_over(&state, theirs);
            }
            if !Arc::ptr_eq(&state, read) {
                reported.get_or_insert_with(|| current.clone());
                current.insert(key.clone(), state);
            }
        }
        for key in applied {
            if let Some(kept) = self.by_key.get_mut(key) {
                kept.patch = None;
                if kept.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
        reported
    }
}

/// What the journal holds, as writes (see `Journal::snapshot`).
#[derive(Default)]
pub struct Snapshot {
    pub everything: Option<&'static str>,
    /// (operation, accounts)
    pub accounts: Vec<(&'static str, Vec<String>)>,
    /// (change, findings)
    pub changes: Vec<(Arc<Patch>, Vec<FindingKey>)>,
    /// (operation, findings)
    pub unknown: Vec<(&'static str, Vec<FindingKey>)>,
    /// (operation, finding, account)
    pub owned: Vec<(&'static str, FindingKey, Option<Arc<str>>)>,
}

/// What the replicas' shared journal (Redis) holds for the findings of one lookup.
#[derive(Default)]
pub struct Shared {
    /// The last write that may have changed any finding: (operation, time left).
    pub everything: Option<(String, Duration)>,
    /// Per finding, its last write hubgate cannot model: (operation, time left).
    pub unknown: KeyMap<(String, Duration)>,
    /// Per finding, its last write hubgate cannot model limited to an account, per account:
    /// (account, operation, time left).
    pub owned: KeyMap<Vec<(String, String, Duration)>>,
    /// Per account, the last write that may have changed any of its findings.
    pub accounts: std::collections::HashMap<String, (String, Duration)>,
    /// Per finding, every replica's changes composed (findings written to together share one).
    pub patches: KeyMap<Arc<Patch>>,
}

impl Shared {
    /// Each write here that leaves the state of one of `keys` unknown, as (time left, the
    /// finding or None for all, operation). Writes limited to an account count for the
    /// findings `states` show belong to it.
    fn refusals(
        &self,
        keys: &[FindingKey],
        states: Option<&KeyMap<Arc<CurrentFinding>>>,
        mut take: impl FnMut(Duration, Option<&FindingKey>, &str),
    ) {
        let owner = |key: &FindingKey| -> Option<&str> { states?.get(key)?.account_id.as_deref() };
        if let Some((op, left)) = &self.everything {
            take(*left, None, op);
        }
        for key in keys {
            if let Some((op, left)) = self.unknown.get(key) {
                take(*left, Some(key), op);
            }
            for (account, op, left) in self.owned.get(key).into_iter().flatten() {
                if owner(key) == Some(account.as_str()) {
                    take(*left, Some(key), op);
                }
            }
            if let Some((op, left)) = owner(key).and_then(|a| self.accounts.get(a)) {
                take(*left, Some(key), op);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::input::update_for;
    use crate::request::Judged;
    use regorus::Value as RValue;
    use serde_json::json;

    fn key(id: &str) -> FindingKey {
        FindingKey::new(id, "p")
    }

    fn state(id: &str, label: &str) -> Arc<CurrentFinding> {
        Arc::new(CurrentFinding::new(
            id,
            "p",
            &json!({"Id": id, "ProductArn": "p", "AwsAccountId": "222222222222",
                "Severity": {"Label": label}, "Workflow": {"Status": "NEW"}}),
        ))
    }

    fn patch(update: serde_json::Value) -> Write {
        let mut body = json!({"FindingIdentifiers": [{"Id": "a", "ProductArn": "p"}]});
        body.as_object_mut()
            .unwrap()
            .extend(update.as_object().unwrap().clone());
        let update = update_for(Judged::BatchUpdateFindings, &body).unwrap();
        Write::Patch(Arc::new(update.patch().expect("a modelled change")))
    }

    /// Records a change of `update` to finding `id` at `at`.
    fn change(j: &mut Journal, id: &str, update: serde_json::Value, at: Instant) {
        j.record(&[key(id)], patch(update), at);
    }

    fn label(states: &KeyMap<Arc<CurrentFinding>>, id: &str) -> RValue {
        states[&key(id)].entry["severity_label"].clone()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_change_is_laid_over_what_is_read_and_the_read_is_kept_beside_it() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        let mut current: KeyMap<_> = [
            (key("a"), state("a", "MEDIUM")),
            (key("b"), state("b", "LOW")),
        ]
        .into_iter()
        .collect();
        let reported = j
            .lay_over(
                &[key("a"), key("b")],
                &mut current,
                |_, _| Source::SecurityHub,
                t0 + SECOND,
                None,
            )
            .expect("the read does not show the change yet");
        assert_eq!(label(&current, "a"), RValue::from("CRITICAL"));
        assert_eq!(label(&reported, "a"), RValue::from("MEDIUM"));
        // A finding nothing was written to is the same in both.
        assert!(Arc::ptr_eq(&current[&key("b")], &reported[&key("b")]));
        // Kept: what Security Hub reported did not show it applied.
        assert_eq!(j.findings(), 1);
    }

    #[test]
    fn a_change_security_hub_reports_applied_is_dropped_and_one_from_the_cache_is_not() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        let mut cached: KeyMap<_> = [(key("a"), state("a", "CRITICAL"))].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut cached, |_, _| Source::Other, t0, None)
            .is_none());
        assert_eq!(
            j.findings(),
            1,
            "a cached state holds the write because hubgate put it there"
        );
        let mut read: KeyMap<_> = [(key("a"), state("a", "CRITICAL"))].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut read, |_, _| Source::SecurityHub, t0, None)
            .is_none());
        assert_eq!(j.findings(), 0);
        // Another writer's later lowering is now seen as it is.
        let mut lowered: KeyMap<_> = [(key("a"), state("a", "LOW"))].into_iter().collect();
        assert!(j
            .lay_over(
                &[key("a")],
                &mut lowered,
                |_, _| Source::SecurityHub,
                t0,
                None
            )
            .is_none());
        assert_eq!(label(&lowered, "a"), RValue::from("LOW"));
    }

    #[test]
    fn what_security_hub_adds_or_recomputes_beside_a_change_still_shows_it_applied() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(
            &mut j,
            "a",
            json!({"Severity": {"Label": "CRITICAL"},
            "Note": {"Text": "t", "UpdatedBy": "u"}}),
            t0,
        );
        let reported = Arc::new(CurrentFinding::new(
            "a",
            "p",
            &json!({"Id": "a", "ProductArn": "p",
            "Severity": {"Label": "CRITICAL", "Normalized": 90},
            "Note": {"Text": "t", "UpdatedBy": "u", "UpdatedAt": "2026-12-04T00:00:00Z"}}),
        ));
        let mut read: KeyMap<_> = [(key("a"), reported.clone())].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut read, |_, _| Source::SecurityHub, t0, None)
            .is_none());
        assert!(
            Arc::ptr_eq(&read[&key("a")], &reported),
            "taken as reported"
        );
        assert_eq!(j.findings(), 0);
        // A different note text is not the change applied.
        change(
            &mut j,
            "a",
            json!({"Note": {"Text": "t2", "UpdatedBy": "u"}}),
            t0,
        );
        let mut read: KeyMap<_> = [(key("a"), reported)].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut read, |_, _| Source::SecurityHub, t0, None)
            .is_some());
        assert_eq!(j.findings(), 1);
    }

    #[test]
    fn a_cached_state_is_laid_over_only_when_it_was_read_after_the_change_began() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(
            &mut j,
            "a",
            json!({"Severity": {"Label": "CRITICAL"}}),
            t0 + SECOND,
        );
        let cached =
            |read_at| move |_: &FindingKey, _: &Arc<CurrentFinding>| Source::Cache { read_at };
        // Read before the write: the write-through put the change in it already.
        let mut before: KeyMap<_> = [(key("a"), state("a", "MEDIUM"))].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut before, cached(t0), t0 + SECOND, None)
            .is_none());
        // Read after it, possibly before Security Hub applied it.
        let mut after: KeyMap<_> = [(key("a"), state("a", "MEDIUM"))].into_iter().collect();
        assert!(j
            .lay_over(
                &[key("a")],
                &mut after,
                cached(t0 + 2 * SECOND),
                t0 + 2 * SECOND,
                None
            )
            .is_some());
        assert_eq!(label(&after, "a"), RValue::from("CRITICAL"));
        assert_eq!(
            j.findings(),
            1,
            "a cached state never shows a change applied"
        );
    }

    #[test]
    fn a_change_and_its_revert_are_not_taken_as_applied_when_the_old_state_shows_them() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(&mut j, "a", json!({"Severity": {"Label": "LOW"}}), t0);
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        // Security Hub has applied neither: CRITICAL is what it showed before both.
        let from_hub = |_: &FindingKey, _: &Arc<CurrentFinding>| Source::SecurityHub;
        let mut before: KeyMap<_> = [(key("a"), state("a", "CRITICAL"))].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut before, from_hub, t0, None)
            .is_none());
        assert_eq!(j.findings(), 1, "kept: the lowering may still be applied");
        // It is: the revert is laid over what Security Hub shows meanwhile.
        let mut between: KeyMap<_> = [(key("a"), state("a", "LOW"))].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut between, from_hub, t0, None)
            .is_some());
        assert_eq!(label(&between, "a"), RValue::from("CRITICAL"));
    }

    #[test]
    fn a_write_limited_to_an_account_leaves_only_that_accounts_findings_unknown() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        let owned_by = |account: &str| -> KeyMap<Arc<CurrentFinding>> {
            ["a", "b"]
                .into_iter()
                .map(|id| {
                    let f = json!({"Id": id, "ProductArn": "p", "AwsAccountId": account,
                        "Severity": {"Label": "LOW"}});
                    (key(id), Arc::new(CurrentFinding::new(id, "p", &f)))
                })
                .collect()
        };
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        // An import of "a" claiming account 1, and a V2 write naming account 2.
        j.record(
            &[key("a")],
            Write::Unknown("BatchImportFindings", Some(Arc::from("111111111111"))),
            t0,
        );
        j.record_accounts(&[Arc::from("222222222222")], "BatchUpdateFindingsV2", t0);
        // Before the states are read, neither can be told to apply.
        assert!(j.unsettled(&[key("a"), key("b")], t0, None, None).is_none());
        let mine = owned_by("111111111111");
        let u = j
            .unsettled(&[key("a"), key("b")], t0, None, Some(&mine))
            .unwrap();
        assert_eq!(
            (u.finding, u.operation.as_str()),
            (Some(key("a")), "BatchImportFindings")
        );
        let theirs = owned_by("222222222222");
        let u = j.unsettled(&[key("b")], t0, None, Some(&theirs)).unwrap();
        assert_eq!(u.operation, "BatchUpdateFindingsV2");
        let others = owned_by("333333333333");
        assert!(j
            .unsettled(&[key("a"), key("b")], t0, None, Some(&others))
            .is_none());
        // Learnt from the states read, both refuse before the next lookup reads anything.
        j.learn(&[key("a")], t0, None, &mine);
        j.learn(&[key("b")], t0, None, &theirs);
        for k in ["a", "b"] {
            assert!(j.unsettled(&[key(k)], t0, None, None).is_some(), "{k}");
        }
        assert!(j.unsettled(&[key("c")], t0, None, None).is_none());
        assert!(j
            .unsettled(&[key("a")], t0 + 11 * SECOND, None, None)
            .is_none());
        // The claim for account 1 did not clear the change kept for "a".
        let mut read = others.clone();
        assert!(j
            .lay_over(&[key("a")], &mut read, |_, _| Source::Other, t0, None)
            .is_some());
        assert_eq!(label(&read, "a"), RValue::from("CRITICAL"));
        j.expire(t0 + 11 * SECOND);
        assert!(j.accounts.is_empty());
    }

    /// What another replica's unknown write refused is refused again before the next lookup
    /// (no states read yet), until its window ends there; findings it did not refuse are not.
    #[test]
    fn a_refusal_from_the_shared_journal_is_kept_until_its_window_ends() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        let keys = [key("a"), key("b"), key("c")];
        let states: KeyMap<Arc<CurrentFinding>> = keys
            .iter()
            .map(|k| (k.clone(), state(&k.id, "LOW")))
            .collect();
        let mut shared = Shared::default();
        shared
            .unknown
            .insert(key("a"), ("BatchUpdateFindings".into(), 4 * SECOND));
        // "b"'s claim names another account than the one "b" belongs to: it changes nothing.
        shared.owned.insert(
            key("b"),
            vec![(
                "111111111111".into(),
                "BatchImportFindings".into(),
                9 * SECOND,
            )],
        );
        shared.accounts.insert(
            "222222222222".into(),
            ("BatchUpdateFindingsV2".into(), 2 * SECOND),
        );
        assert!(j.unsettled(&keys, t0, None, None).is_none());
        j.learn(&keys, t0, Some(&shared), &states);
        let u = j.unsettled(&[key("a")], t0, None, None).unwrap();
        assert_eq!(
            (u.finding, u.operation.as_str(), u.retry_after_s),
            (Some(key("a")), "BatchUpdateFindings", 4)
        );
        // "b" and "c" are refused for their account's write only: "b"'s claim is moot.
        for k in ["b", "c"] {
            let u = j.unsettled(&[key(k)], t0, None, None).unwrap();
            assert_eq!(
                (u.operation.as_str(), u.retry_after_s),
                ("BatchUpdateFindingsV2", 2)
            );
        }
        // Three seconds on, only "a"'s own write still holds.
        let t3 = t0 + 3 * SECOND;
        assert!(j.unsettled(&[key("b"), key("c")], t3, None, None).is_none());
        assert!(j.unsettled(&[key("a")], t3, None, None).is_some());
        assert!(
            j.snapshot(t3).unknown.is_empty(),
            "learned writes are not shared again"
        );
        j.expire(t0 + 5 * SECOND);
        assert!(j.learned.is_empty());
        // A write that may have changed every finding is kept for all of them.
        shared = Shared {
            everything: Some(("BatchUpdateFindingsV2".into(), 6 * SECOND)),
            ..Default::default()
        };
        j.learn(&keys[..1], t3, Some(&shared), &states);
        let u = j.unsettled(&[key("z")], t3, None, None).unwrap();
        assert_eq!((u.finding, u.retry_after_s), (None, 6));
        assert!(j
            .unsettled(&[key("z")], t3 + 6 * SECOND, None, None)
            .is_none());
    }

    #[test]
    fn a_value_leaves_the_window_with_its_own_write_however_often_the_finding_is_written() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        let note = |text: &str| patch(json!({"Note": {"Text": text, "UpdatedBy": "u"}}));
        let read = || -> KeyMap<_> { [(key("a"), state("a", "LOW"))].into_iter().collect() };
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        j.record(&[key("a")], note("one"), t0 + 4 * SECOND);
        j.record(&[key("a")], note("two"), t0 + 8 * SECOND);
        let mut before = read();
        j.lay_over(
            &[key("a")],
            &mut before,
            |_, _| Source::Other,
            t0 + 9 * SECOND,
            None,
        );
        assert_eq!(label(&before, "a"), RValue::from("CRITICAL"));
        // The raise was written more than 10 s ago: only the notes are laid over now.
        j.record(&[key("a")], note("three"), t0 + 11 * SECOND);
        let mut after = read();
        j.lay_over(
            &[key("a")],
            &mut after,
            |_, _| Source::Other,
            t0 + 11 * SECOND,
            None,
        );
        assert_eq!(label(&after, "a"), RValue::from("LOW"));
        assert_eq!(
            after[&key("a")].entry["current"]["Note"]["Text"],
            RValue::from("three")
        );
    }

    #[test]
    fn changes_leave_the_window_and_equal_ones_in_a_row_are_kept_once() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        let raise = || patch(json!({"Severity": {"Label": "CRITICAL"}}));
        j.record(&[key("a")], raise(), t0);
        j.record(&[key("a")], raise(), t0 + 5 * SECOND);
        // Dated by the later write: still there after the first one's window.
        j.expire(t0 + 12 * SECOND);
        assert_eq!(j.findings(), 1);
        j.expire(t0 + 15 * SECOND);
        assert_eq!(j.findings(), 0);
    }

    #[test]
    fn changes_are_laid_over_in_the_order_they_were_written() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        change(&mut j, "a", json!({"Severity": {"Label": "LOW"}}), t0);
        let mut current: KeyMap<_> = [(key("a"), state("a", "MEDIUM"))].into_iter().collect();
        j.lay_over(
            &[key("a")],
            &mut current,
            |_, _| Source::SecurityHub,
            t0,
            None,
        );
        assert_eq!(label(&current, "a"), RValue::from("LOW"));
    }

    #[test]
    fn a_write_hubgate_cannot_model_leaves_the_state_unknown_until_the_window_ends() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        j.record(
            &[key("a")],
            Write::Unknown("BatchImportFindings", None),
            t0 + SECOND,
        );
        assert!(j.unsettled(&[key("b")], t0 + SECOND, None, None).is_none());
        let u = j
            .unsettled(&[key("b"), key("a")], t0 + 3 * SECOND, None, None)
            .unwrap();
        assert_eq!(u.finding, Some(key("a")));
        assert_eq!(u.operation, "BatchImportFindings");
        assert_eq!(u.since_ms, 2000);
        assert_eq!(u.retry_after_s, 8);
        assert!(j
            .unsettled(&[key("a")], t0 + 11 * SECOND, None, None)
            .is_none());
        j.expire(t0 + 11 * SECOND);
        assert_eq!((j.unknowns, j.findings()), (0, 0));
    }

    #[test]
    fn a_write_to_findings_hubgate_cannot_name_leaves_every_state_unknown() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        change(&mut j, "a", json!({"Severity": {"Label": "CRITICAL"}}), t0);
        j.record_everything("BatchUpdateFindingsV2", t0 + SECOND);
        let u = j
            .unsettled(&[key("z")], t0 + 2 * SECOND, None, None)
            .unwrap();
        assert_eq!(u.finding, None);
        assert_eq!(u.operation, "BatchUpdateFindingsV2");
        assert!(u.to_string().starts_with("any finding was changed"), "{u}");
        j.expire(t0 + 11 * SECOND);
        assert!(j
            .unsettled(&[key("z")], t0 + 11 * SECOND, None, None)
            .is_none());
    }

    #[test]
    fn changes_to_one_finding_are_composed_and_the_last_of_each_field_stands() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        for i in 0..50 {
            let text = format!("pass {i}");
            j.record(
                &[key("a"), key("b")],
                patch(json!({"Severity": {"Label": "HIGH"},
                "Note": {"Text": text, "UpdatedBy": "u"}})),
                t0,
            );
        }
        change(&mut j, "a", json!({"Workflow": {"Status": "NOTIFIED"}}), t0);
        let Some(Composed { patch: a, .. }) = &j.by_key[&key("a")].patch else {
            panic!("kept")
        };
        let Some(Composed { patch: b, .. }) = &j.by_key[&key("b")].patch else {
            panic!("kept")
        };
        let reported = |label: &str, status: &str, text: &str| {
            Arc::new(CurrentFinding::new(
                "a",
                "p",
                &json!({"Id": "a", "ProductArn": "p",
                "Severity": {"Label": label}, "Workflow": {"Status": status},
                "Note": {"Text": text, "UpdatedBy": "u"}}),
            ))
        };
        assert!(a.shown_by(&reported("HIGH", "NOTIFIED", "pass 49").entry));
        assert!(!a.shown_by(&reported("HIGH", "NOTIFIED", "pass 48").entry));
        assert!(!a.shown_by(&reported("HIGH", "NEW", "pass 49").entry));
        assert!(b.shown_by(&reported("HIGH", "NEW", "pass 49").entry));
        assert!(!b.shown_by(&reported("LOW", "NEW", "pass 49").entry));
    }

    #[test]
    fn a_zero_window_keeps_nothing() {
        let mut j = Journal::new(Duration::ZERO);
        let t0 = Instant::now();
        j.record(&[key("a")], Write::Unknown("BatchImportFindings", None), t0);
        j.record_everything("UpdateFindings", t0);
        assert!(j.unsettled(&[key("a")], t0, None, None).is_none());
        assert_eq!(j.findings(), 0);
    }
}
