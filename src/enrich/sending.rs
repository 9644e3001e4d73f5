//! Writes hubgate has sent to Security Hub and not yet heard back about. From the moment a
//! write leaves, Security Hub may apply it, but what it did is written through to the cache
//! and kept in the settle journal only once the answer comes. Until then, a decision that
//! reads one of its findings must hold whether the write lands or not:
//! - a change hubgate can model is laid over the state read, and the request is also judged
//!   on the state without it (as the settle journal does);
//! - a write it cannot model (an import, a `BatchUpdateFindings` of fields hubgate does not
//!   write through, OCSF identifiers, filters) leaves the state unknown, and the decision is
//!   refused as settling until the answer; but one of their notes only (`Reach::Notes`, a V2
//!   `Comment`, an `UpdateFindings` `Note`) changes no fact a decision is judged on, and is
//!   only registered (a write answered beside it still knows it may have landed last).
//!
//! Each write is registered under the enricher's lock, with an id, and leaves when its answer
//! has been applied to the cache and the journal (`InFlight` in `enrich`). This is the
//! replica's own: another replica learns of a write when it is answered.

use std::sync::Arc;
use std::time::Instant;

use super::settle::Write;
use super::Reach;
use crate::decide::Unsettled;
use crate::finding::{FindingKey, KeyMap};
use crate::policy::input::Patch;
use crate::policy::state::CurrentFinding;

/// One registered write's id, unique within the replica and increasing.
pub type WriteId = u64;

#[derive(Default)]
pub struct Sending {
    next: WriteId,
    /// Per finding, the writes to it in flight.
    findings: KeyMap<Flight>,
    /// Writes that may change any finding of an account: (id, when, by what, account, what
    /// they may change in it).
    accounts: Vec<(WriteId, Instant, &'static str, Arc<str>, Reach)>,
    /// Writes that may change any finding: (id, when, by what, what they may change in it).
    everything: Vec<(WriteId, Instant, &'static str, Reach)>,
    /// How many writes are registered.
    writes: usize,
    /// Findings two writes in flight overlapped on, until none is in flight to them
    /// (`contested`). Marked only when a write is sent to a finding another is in flight to.
    contested: crate::finding::KeySet,
    /// Per write naming findings, while it is in flight: the writes limited to accounts (OCSF
    /// identifiers, filters, imports of its findings claiming an account) that were in flight
    /// beside it at any moment (`beside`).
    beside: std::collections::HashMap<WriteId, Beside>,
}

/// The writes of findings hubgate cannot name (OCSF identifiers, filters), and imports of its
/// findings claiming an account, that were in flight beside a write naming findings: Security
/// Hub may have applied either last, so the named write's answer does not tell what a finding
/// they may touch holds after both.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Beside {
    /// One may have touched any finding (`UpdateFindings`, V2 with `MetadataUids`).
    everything: bool,
    /// Those limited to accounts (V2 identifiers, imports claiming one): the accounts.
    accounts: Vec<Arc<str>>,
}

impl Beside {
    /// Whether one of them may have touched a finding read as `owner`'s (None: its account
    /// is not known).
    pub fn may_touch(&self, owner: Option<&str>) -> bool {
        self.everything
            || match owner {
                Some(owner) => self.accounts.iter().any(|a| **a == *owner),
                None => !self.accounts.is_empty(),
            }
    }

    fn add_accounts(&mut self, accounts: &[Arc<str>]) {
        for account in accounts {
            if !self.accounts.contains(account) {
                self.accounts.push(account.clone());
            }
        }
    }
}

/// One write in flight to a finding: its id, when it was sent, and what it does.
type Entry = (WriteId, Instant, Write);

/// The writes in flight to a finding, in the order sent. Findings written by the same writes
/// share one list: a bulk write names its 100 findings together, and then registering it,
/// answering it and working out what the writes in flight mean for a decision is work per
/// distinct list, not per finding and write.
type Flight = Arc<Vec<Entry>>;

/// What a write in flight means for the states of some findings, for a decision that has not
/// yet taken it into account.
pub enum InFlightEffect {
    /// No write in flight touches them.
    None,
    /// These changes may land, and nothing else.
    Patches(Flights),
    /// A write whose effect hubgate cannot tell may land.
    Unknown(Unsettled),
}

/// The changes in flight to some findings.
pub struct Flights {
    /// Per finding asked about, by position: its change in `changes`, if any.
    of_key: Vec<Option<usize>>,
    /// Per distinct series of writes met, their changes as one: each write's change, laid in
    /// the order sent, gives what every write landing in that order gives. Findings that the
    /// same writes are in flight to share one (and its memo of the `current` objects it was
    /// laid over), and concurrent requests that write the same change, as a playbook's retries
    /// do, add nothing to it.
    changes: Vec<Arc<Patch>>,
    /// The writes they come from, each once, in the order sent.
    pub ids: Vec<WriteId>,
}

impl Flights {
    /// The change in flight to the finding at `position` in the keys asked about.
    pub fn change(&self, position: usize) -> Option<&Arc<Patch>> {
        self.changes
            .get(self.of_key.get(position).copied().flatten()?)
    }
}

/// Whether two writes to one finding may leave its facts (severity, workflow status) different
/// depending on which lands last: any but two changes that set no fact to different values (a
/// playbook's retry, a note beside a raise, two notes; see `Patch::facts_commute_with`).
///
/// A write hubgate cannot model that can change only one account's finding (a member's import claiming
/// that account) does not contest the finding for whoever owns it: beside a change, it is
/// `Overlap::Beside` that account (the change must not be written through over that account's
/// copy), and beside another account's import it touches another finding. Counted as a
/// conflict, a member's import naming another account's finding (refused by Security Hub)
/// beside that account's own note left the finding unknown to everyone for `settle_ms`
/// (review 49).
fn conflict(a: &Write, b: &Write) -> Overlap {
    match (a, b) {
        (Write::Patch(a), Write::Patch(b)) if Arc::ptr_eq(a, b) || a.facts_commute_with(b) => {
            Overlap::None
        }
        (Write::Unknown(_, Some(x)), Write::Unknown(_, Some(y))) if x != y => Overlap::None,
        (Write::Unknown(_, Some(x)), Write::Patch(_))
        | (Write::Patch(_), Write::Unknown(_, Some(x))) => Overlap::Beside(x.clone()),
        _ => Overlap::Contested,
    }
}

/// What two writes in flight to one finding at once mean for it (`conflict`).
enum Overlap {
    /// Either order leaves its facts the same.
    None,
    /// Security Hub may apply them in either order: the finding's state is unknown after them.
    Contested,
    /// One may change only this account's finding: the other, a change, must not be written
    /// through over that account's state.
    Beside(Arc<str>),
}

/// The lists findings had (None: no write in flight) and what each became, while one write
/// is registered or answered: each distinct list is worked out once. The old lists are held,
/// so that no list made meanwhile can take one's address.
type Moved = Vec<(Option<Flight>, Option<Flight>)>;

fn moved_from<'a>(moved: &'a Moved, old: Option<&Flight>) -> Option<&'a Option<Flight>> {
    moved
        .iter()
        .find(|(o, _)| match (o, old) {
            (Some(o), Some(old)) => Arc::ptr_eq(o, old),
            (None, None) => true,
            _ => false,
        })
        .map(|(_, new)| new)
}

impl Sending {
    fn id(&mut self) -> WriteId {
        self.next += 1;
        self.writes += 1;
        self.next
    }

    /// The id the latest write registered was given (0 before any): a decision that took the
    /// writes in flight into account when this was the latest knows of every write that has
    /// been in flight since, until another is registered.
    pub fn latest(&self) -> WriteId {
        self.next
    }

    /// `keys` are being written to; `writes` gives each key's write by position (one for
    /// all when it has a single element).
    pub fn findings(&mut self, keys: &[FindingKey], writes: &[Write], now: Instant) -> WriteId {
        let id = self.id();
        // The writes of unnamed findings already in flight are beside this one.
        let mut beside = Beside {
            everything: !self.everything.is_empty(),
            accounts: Vec::new(),
        };
        for (_, _, _, account, _) in &self.accounts {
            beside.add_accounts(std::slice::from_ref(account));
        }
        self.beside.insert(id, beside);
        let shared = writes.len() == 1;
        let mut moved: Moved = Vec::new();
        let mut besides: Vec<(WriteId, Arc<str>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(write) = writes.get(i).or(writes.first()) else {
                break;
            };
            let old = self.findings.get(key);
            let mut contested = false;
            for e in old.iter().flat_map(|l| l.iter()).filter(|e| e.0 != id) {
                match conflict(&e.2, write) {
                    Overlap::None => {}
                    Overlap::Contested => contested = true,
                    // Beside the change, whichever of the two it is.
                    Overlap::Beside(account) => {
                        let change = match write {
                            Write::Patch(_) => id,
                            Write::Unknown(..) => e.0,
                        };
                        besides.push((change, account));
                    }
                }
            }
            if contested {
                self.contested.insert(key.clone());
            }
            let new = match moved_from(&moved, old).filter(|_| shared) {
                Some(new) => new.clone(),
                None => {
                    let mut list = old.map(|l| l.to_vec()).unwrap_or_default();
                    list.push((id, now, write.clone()));
                    let new = Some(Arc::new(list));
                    if shared {
                        moved.push((old.cloned(), new.clone()));
                    }
                    new
                }
            };
            let Some(new) = new else { continue };
            match self.findings.get_mut(key) {
                Some(slot) => *slot = new,
                None => {
                    self.findings.insert(key.clone(), new);
                }
            }
        }
        for (change, account) in besides {
            if let Some(beside) = self.beside.get_mut(&change) {
                beside.add_accounts(std::slice::from_ref(&account));
            }
        }
        id
    }

    pub fn accounts(
        &mut self,
        accounts: &[Arc<str>],
        operation: &'static str,
        reach: Reach,
        now: Instant,
    ) -> WriteId {
        let id = self.id();
        for account in accounts {
            self.accounts
                .push((id, now, operation, account.clone(), reach));
        }
        for beside in self.beside.values_mut() {
            beside.add_accounts(accounts);
        }
        id
    }

    pub fn everything(&mut self, operation: &'static str, reach: Reach, now: Instant) -> WriteId {
        let id = self.id();
        self.everything.push((id, now, operation, reach));
        for beside in self.beside.values_mut() {
            beside.everything = true;
        }
        id
    }

    /// The writes of findings hubgate cannot name that were in flight beside the write `id`
    /// (one naming findings, not done yet) at any moment since it was registered.
    pub fn beside(&self, id: WriteId) -> Option<&Beside> {
        self.beside.get(&id)
    }

    /// The write `id`, registered for `keys`, was answered (or never sent).
    pub fn done(&mut self, id: WriteId, keys: &[FindingKey]) {
        self.writes = self.writes.saturating_sub(1);
        self.beside.remove(&id);
        let mut moved: Moved = Vec::new();
        for key in keys {
            let Some(list) = self.findings.get(key) else {
                continue;
            };
            let rest = match moved_from(&moved, Some(list)) {
                Some(rest) => rest.clone(),
                None => {
                    let rest: Vec<Entry> = list.iter().filter(|e| e.0 != id).cloned().collect();
                    let rest = (!rest.is_empty()).then(|| Arc::new(rest));
                    moved.push((Some(list.clone()), rest.clone()));
                    rest
                }
            };
            match rest {
                Some(rest) => {
                    if let Some(slot) = self.findings.get_mut(key) {
                        *slot = rest;
                    }
                }
                None => {
                    self.findings.remove(key);
                    if !self.contested.is_empty() {
                        self.contested.remove(key);
                    }
                }
            }
        }
        if !self.accounts.is_empty() {
            self.accounts.retain(|(w, ..)| *w != id);
        }
        if !self.everything.is_empty() {
            self.everything.retain(|(w, ..)| *w != id);
        }
    }

    /// Whether another write to `key` setting a member to another value was in flight beside
    /// one in flight now, at any moment since no write to it was: Security Hub may apply such writes
    /// in either order, so no answer of theirs tells what the finding holds after them.
    pub fn contested(&self, key: &FindingKey) -> bool {
        !self.contested.is_empty() && self.contested.contains(key)
    }

    /// When the write `id`, registered for `key` and not done, was sent.
    pub fn sent_at(&self, id: WriteId, key: &FindingKey) -> Option<Instant> {
        let list = self.findings.get(key)?;
        list.iter().find(|e| e.0 == id).map(|e| e.1)
    }

    /// Writes registered and not done.
    pub fn writes(&self) -> usize {
        self.writes
    }

    pub fn is_empty(&self) -> bool {
        self.findings.is_empty() && self.accounts.is_empty() && self.everything.is_empty()
    }

    /// What the writes in flight, other than `seen`, mean for `keys`, read as the owners
    /// `states` show (a finding not in `states` was not found: a write cannot create it,
    /// but one naming it by identifier may, for all hubgate knows, be an import).
    pub fn effect(
        &self,
        keys: &[FindingKey],
        states: Option<&KeyMap<Arc<CurrentFinding>>>,
        seen: &[WriteId],
        now: Instant,
    ) -> InFlightEffect {
        if self.is_empty() {
            return InFlightEffect::None;
        }
        let mut sorted;
        let seen = match seen.is_sorted() {
            true => seen,
            false => {
                sorted = seen.to_vec();
                sorted.sort_unstable();
                &sorted[..]
            }
        };
        let unseen = |id: &WriteId| seen.binary_search(id).is_err();
        let unsettled = |finding: Option<&FindingKey>, operation: &str, at: Instant| {
            InFlightEffect::Unknown(Unsettled {
                finding: finding.cloned(),
                operation: operation.to_string(),
                since_ms: now.saturating_duration_since(at).as_millis() as u64,
                // An answer usually comes within a second; the SDK's retry finds it there.
                retry_after_s: 1,
                in_flight: true,
            })
        };
        // A write of notes only leaves every fact as read: in flight as after its answer
        // (`Reach::Notes`), it refuses nothing. Counted, one V2 comment at a time kept in
        // flight (an administrator's triage playbook, or a member on its own findings)
        // refused every member's decision on the account's findings (or on every finding, for
        // `MetadataUids`), 503 STATE_SETTLING, for as long as comments kept coming.
        let unseen_state = |id: &WriteId, reach: &Reach| *reach == Reach::State && unseen(id);
        if let Some((_, at, operation, _)) = self
            .everything
            .iter()
            .find(|(id, _, _, reach)| unseen_state(id, reach))
        {
            return unsettled(None, operation, *at);
        }
        let owner = |key: &FindingKey| -> Option<&str> { states?.get(key)?.account_id.as_deref() };
        if !self.accounts.is_empty() {
            for key in keys {
                let Some(owner) = owner(key) else { continue };
                if let Some((_, at, operation, ..)) = self
                    .accounts
                    .iter()
                    .find(|(id, _, _, a, reach)| **a == *owner && unseen_state(id, reach))
                {
                    return unsettled(Some(key), operation, *at);
                }
            }
        }
        if self.findings.is_empty() {
            return InFlightEffect::None;
        }
        let mut series = Series::default();
        let mut flights = Flights {
            of_key: Vec::with_capacity(keys.len()),
            changes: Vec::new(),
            ids: Vec::new(),
        };
        // Per list met, its change; a list whose effect depends on the finding's owner (an
        // import claiming an account) is worked out per finding.
        let mut met: Vec<(*const Vec<Entry>, Option<usize>)> = Vec::new();
        for key in keys {
            let Some(list) = self.findings.get(key) else {
                flights.of_key.push(None);
                continue;
            };
            // Two writes setting a member to different values at once: Security Hub may apply
            // them in either order, and laying them over in the order sent judged a member's
            // HIGH against the administrator's LOW sent after their CRITICAL, which may land
            // last. Whatever this decision has seen of them.
            if self.contested(key) {
                if let Some((_, at, _)) = list.first() {
                    return unsettled(Some(key), "BatchUpdateFindings", *at);
                }
            }
            let at = Arc::as_ptr(list);
            if let Some((_, change)) = met.iter().find(|(l, _)| *l == at) {
                flights.of_key.push(*change);
                continue;
            }
            let mut by_owner = false;
            series.start();
            for (id, at, write) in list.iter() {
                if !unseen(id) {
                    continue;
                }
                let patch = match write {
                    Write::Patch(patch) => patch,
                    Write::Unknown(_, Some(account)) if owner(key) != Some(&**account) => {
                        by_owner = true;
                        continue;
                    }
                    Write::Unknown(operation, _) => return unsettled(Some(key), operation, *at),
                };
                flights.ids.push(*id);
                series.add(patch);
            }
            let change = series.change(&mut flights.changes);
            if !by_owner {
                met.push((at, change));
            }
            flights.of_key.push(change);
        }
        flights.ids.sort_unstable();
        flights.ids.dedup();
        if flights.ids.is_empty() {
            InFlightEffect::None
        } else {
            InFlightEffect::Patches(flights)
        }
    }
}

/// Changes in flight to findings, made into one change per distinct series: each write's
/// change (one `Patch` shared by all its findings) is classed once, by address, then by
/// content against one of each class met so far.
#[derive(Default)]
struct Series {
    classed: Vec<(*const Patch, usize)>,
    classes: Vec<Arc<Patch>>,
    /// The series being read: classes in the order of their last sending (a change sets its
    /// values whatever came before, so an earlier copy of a change sent again later is moot).
    current: Vec<usize>,
    /// Each series met, and its change's index.
    made: Vec<(Vec<usize>, usize)>,
}

impl Series {
    fn start(&mut self) {
        self.current.clear();
    }

    fn add(&mut self, patch: &Arc<Patch>) {
        let class = match self.classed.iter().find(|(p, _)| *p == Arc::as_ptr(patch)) {
            Some((_, class)) => *class,
            None => {
                let class = match self.classes.iter().position(|c| c.same_change(patch)) {
                    Some(class) => class,
                    None => {
                        self.classes.push(patch.clone());
                        self.classes.len() - 1
                    }
                };
                self.classed.push((Arc::as_ptr(patch), class));
                class
            }
        };
        self.current.retain(|c| *c != class);
        self.current.push(class);
    }

    /// The series read since `start` as one change in `changes` (None: it is empty).
    fn change(&mut self, changes: &mut Vec<Arc<Patch>>) -> Option<usize> {
        let (first, rest) = self.current.split_first()?;
        if let Some((_, at)) = self.made.iter().find(|(s, _)| *s == self.current) {
            return Some(*at);
        }
        // One change alone is laid as it is, with what its memo already knows.
        let change = match rest {
            [] => self.classes[*first].clone(),
            _ => Arc::new(
                rest.iter()
                    .fold(self.classes[*first].fresh(), |composed, c| {
                        composed.then(&self.classes[*c])
                    }),
            ),
        };
        changes.push(change);
        self.made.push((self.current.clone(), changes.len() - 1));
        Some(changes.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::input::update_for;
    use crate::request::Judged;
    use serde_json::{json, Value};

    fn key(id: &str) -> FindingKey {
        FindingKey::new(id, "p")
    }

    fn finding(id: &str, account: &str) -> Value {
        json!({"Id": id, "ProductArn": "p", "AwsAccountId": account,
            "Severity": {"Label": "MEDIUM"}, "Workflow": {"Status": "NEW"}})
    }

    fn states(owners: &[(&str, &str)]) -> KeyMap<Arc<CurrentFinding>> {
        owners
            .iter()
            .map(|(id, account)| {
                let state = CurrentFinding::new(id, "p", &finding(id, account));
                (key(id), Arc::new(state))
            })
            .collect()
    }

    /// The change a BatchUpdateFindings with these members (beside its identifiers) makes.
    fn patch(members: Value) -> Arc<Patch> {
        let mut body = json!({"FindingIdentifiers": [{"Id": "a", "ProductArn": "p"}]});
        body.as_object_mut()
            .unwrap()
            .extend(members.as_object().unwrap().clone());
        let update = update_for(Judged::BatchUpdateFindings, &body).unwrap();
        Arc::new(update.patch().expect("a modelled change"))
    }

    fn write(patch: &Arc<Patch>) -> Write {
        Write::Patch(patch.clone())
    }

    fn label(label: &str) -> Arc<Patch> {
        patch(json!({"Severity": {"Label": label}}))
    }

    fn flights(effect: InFlightEffect) -> Flights {
        match effect {
            InFlightEffect::Patches(f) => f,
            InFlightEffect::None => panic!("nothing in flight"),
            InFlightEffect::Unknown(u) => panic!("refused: {u}"),
        }
    }

    fn refused(effect: InFlightEffect) -> Unsettled {
        match effect {
            InFlightEffect::Unknown(u) => u,
            _ => panic!("not refused"),
        }
    }

    /// `state` with each of `patches` laid over it in turn, as the writes land one by one.
    fn landed(state: &CurrentFinding, patches: &[&Arc<Patch>]) -> regorus::Value {
        patches
            .iter()
            .fold(state.clone(), |s, p| s.patched(p))
            .entry
    }

    /// A finding two writes setting a member to different values were in flight to at once
    /// stays contested until neither is, in whichever order they are answered; a finding
    /// named twice by one write, written to by one write after another was answered, or by
    /// two whose order does not matter, is not.
    #[test]
    fn findings_two_writes_overlapped_on_are_contested_until_both_are_done() {
        let mut s = Sending::default();
        let now = Instant::now();
        let (a, b) = (key("a"), key("b"));
        let (low, critical) = (label("LOW"), label("CRITICAL"));
        let twice = s.findings(&[a.clone(), a.clone()], &[write(&low)], now);
        assert!(!s.contested(&a), "one write naming a finding twice");
        s.done(twice, &[a.clone(), a.clone()]);
        let first = s.findings(std::slice::from_ref(&a), &[write(&low)], now);
        let second = s.findings(&[a.clone(), b.clone()], &[write(&critical)], now);
        assert!(s.contested(&a) && !s.contested(&b));
        // The later write answered first: the earlier one may still land after it.
        s.done(second, &[a.clone(), b.clone()]);
        assert!(s.contested(&a));
        s.done(first, std::slice::from_ref(&a));
        assert!(!s.contested(&a));
        // While contested, a decision on the finding is refused, whatever it has seen.
        let (x, y) = (
            s.findings(std::slice::from_ref(&a), &[write(&critical)], now),
            s.findings(std::slice::from_ref(&a), &[write(&low)], now),
        );
        let owners = states(&[("a", "222222222222")]);
        refused(s.effect(std::slice::from_ref(&a), Some(&owners), &[x, y], now));
        s.done(x, std::slice::from_ref(&a));
        s.done(y, std::slice::from_ref(&a));
        let alone = s.findings(std::slice::from_ref(&a), &[write(&low)], now);
        assert!(!s.contested(&a));
        // The same change again beside it (a retry), or one of other members (a note): either
        // order leaves the same state.
        let retry = s.findings(std::slice::from_ref(&a), &[write(&label("LOW"))], now);
        let note = patch(json!({"Note": {"Text": "t", "UpdatedBy": "u"}}));
        let noted = s.findings(std::slice::from_ref(&a), &[write(&note)], now);
        assert!(!s.contested(&a));
        // Two notes: their order sets only the note, not a fact the rules judge by.
        let other_note = patch(json!({"Note": {"Text": "t2", "UpdatedBy": "u"}}));
        let renoted = s.findings(std::slice::from_ref(&a), &[write(&other_note)], now);
        assert!(!s.contested(&a), "two notes lock no finding");
        s.done(renoted, std::slice::from_ref(&a));
        s.done(alone, std::slice::from_ref(&a));
        s.done(retry, std::slice::from_ref(&a));
        s.done(noted, std::slice::from_ref(&a));
    }

    /// A write knows the writes of unnamed findings in flight beside it, whichever was sent
    /// first, until it is done.
    #[test]
    fn a_write_knows_the_unnamed_writes_in_flight_beside_it_whichever_was_sent_first() {
        let mut s = Sending::default();
        let now = Instant::now();
        let a = key("a");
        let low = label("LOW");
        let (member, other): (Arc<str>, Arc<str>) = (Arc::from("222222222222"), Arc::from("333"));
        let first = s.findings(std::slice::from_ref(&a), &[write(&low)], now);
        assert_eq!(s.beside(first), Some(&Beside::default()));
        let v2 = s.accounts(
            std::slice::from_ref(&member),
            "BatchUpdateFindingsV2",
            Reach::State,
            now,
        );
        let second = s.findings(std::slice::from_ref(&a), &[write(&low)], now);
        s.done(v2, &[]);
        // Answered before either: still beside both, which may have landed after it.
        for id in [first, second] {
            let beside = s.beside(id).expect("in flight");
            assert!(beside.may_touch(Some("222222222222")) && beside.may_touch(None));
            assert!(
                !beside.may_touch(Some(&*other)),
                "another account's finding"
            );
        }
        let filters = s.everything("UpdateFindings", Reach::State, now);
        assert!(s.beside(first).is_some_and(|b| b.may_touch(Some(&*other))));
        s.done(filters, &[]);
        s.done(first, std::slice::from_ref(&a));
        s.done(second, std::slice::from_ref(&a));
        assert!(s.beside(first).is_none() && s.beside.is_empty());
        let third = s.findings(std::slice::from_ref(&a), &[write(&low)], now);
        assert_eq!(
            s.beside(third),
            Some(&Beside::default()),
            "nothing in flight beside it"
        );
    }

    /// Review 49: an import claiming an account can change only that account's finding; beside
    /// a change to the same identifier it makes the change's write-through unsafe for that
    /// account's copy, and contests nothing (it was a member's way to leave another account's
    /// finding unknown to everyone for the settle window).
    #[test]
    fn an_import_claiming_an_account_is_beside_a_change_not_contesting_it() {
        let mut s = Sending::default();
        let now = Instant::now();
        let a = key("a");
        let keys = std::slice::from_ref(&a);
        let import =
            |account: Option<&str>| Write::Unknown("BatchImportFindings", account.map(Arc::from));
        let note = patch(json!({"Note": {"Text": "t", "UpdatedBy": "u"}}));
        let imported = s.findings(keys, &[import(Some("222222222222"))], now);
        let noted = s.findings(keys, &[write(&note)], now);
        assert!(!s.contested(&a));
        let beside = s.beside(noted).expect("in flight");
        assert!(beside.may_touch(Some("222222222222")) && !beside.may_touch(Some("333333333333")));
        // Another account's import touches another finding; the same account's, the same one.
        let other = s.findings(keys, &[import(Some("333333333333"))], now);
        assert!(!s.contested(&a));
        let again = s.findings(keys, &[import(Some("222222222222"))], now);
        assert!(s.contested(&a));
        for id in [imported, noted, other, again] {
            s.done(id, keys);
        }
        assert!(!s.contested(&a) && s.is_empty());
        // An import whose claim is not an account may touch the finding whoever owns it.
        let unowned = s.findings(keys, &[import(None)], now);
        let noted = s.findings(keys, &[write(&note)], now);
        assert!(s.contested(&a), "beside an import of no known account");
        s.done(unowned, keys);
        s.done(noted, keys);
    }

    /// A change in flight is laid over exactly the findings it names, until its answer; two in
    /// flight to one finding are laid as one, in the order sent; a decision that already took
    /// a write into account is not told of it again.
    #[test]
    fn a_change_in_flight_touches_its_findings_until_it_is_done() {
        let mut s = Sending::default();
        let now = Instant::now();
        let (a, b) = (key("a"), key("b"));
        let (raise, notify) = (
            label("CRITICAL"),
            patch(json!({"Workflow": {"Status": "NOTIFIED"}})),
        );
        let first = s.findings(std::slice::from_ref(&a), &[write(&raise)], now);
        let second = s.findings(&[a.clone(), b.clone()], &[write(&notify)], now);
        assert_ne!(first, second);
        assert_eq!(s.latest(), second);
        let both = [a.clone(), b.clone()];
        assert_eq!(s.writes(), 2);
        let f = flights(s.effect(&both, None, &[], now));
        assert_eq!(f.ids, vec![first, second]);
        let read = states(&[("a", "1"), ("b", "1")]);
        let (sa, sb) = (&read[&a], &read[&b]);
        assert_eq!(
            sa.patched(f.change(0).unwrap()).entry,
            landed(sa, &[&raise, &notify])
        );
        assert_eq!(
            sb.patched(f.change(1).unwrap()).entry,
            landed(sb, &[&notify])
        );
        assert!(f.change(2).is_none());
        assert!(matches!(
            s.effect(&[key("c")], None, &[], now),
            InFlightEffect::None
        ));
        let f = flights(s.effect(&both, None, &[first], now));
        assert_eq!(
            f.ids,
            vec![second],
            "the write considered already is left out"
        );
        assert!(f.change(0).unwrap().same_change(&notify));

        s.done(second, &both);
        let f = flights(s.effect(&both, None, &[], now));
        assert_eq!((&f.ids, f.change(1).is_none()), (&vec![first], true));
        assert!(f.change(0).unwrap().same_change(&raise));
        assert_eq!(s.writes(), 1);
        s.done(first, std::slice::from_ref(&a));
        assert!(s.is_empty());
        assert_eq!(s.writes(), 0);
        // The first of two writes to a finding answered first: the second stays.
        let third = s.findings(std::slice::from_ref(&a), &[write(&raise)], now);
        let fourth = s.findings(std::slice::from_ref(&a), &[write(&raise)], now);
        s.done(third, std::slice::from_ref(&a));
        assert_eq!(flights(s.effect(&both, None, &[], now)).ids, vec![fourth]);
        s.done(fourth, std::slice::from_ref(&a));
        assert!(s.is_empty());
        assert!(matches!(
            s.effect(&both, None, &[], now),
            InFlightEffect::None
        ));
    }

    /// Concurrent writes of the same change (a retried playbook) add nothing: a change sent
    /// again later decides what the earlier copy set.
    #[test]
    fn the_same_change_in_flight_twice_counts_in_its_last_place() {
        let mut s = Sending::default();
        let now = Instant::now();
        let a = key("a");
        let keys = std::slice::from_ref(&a);
        let (raise, low) = (
            patch(
                json!({"Severity": {"Label": "CRITICAL"}, "Note": {"Text": "x", "UpdatedBy": "y"}}),
            ),
            patch(json!({"Severity": {"Label": "LOW"}, "Workflow": {"Status": "NOTIFIED"}})),
        );
        let again = patch(
            json!({"Severity": {"Label": "CRITICAL"}, "Note": {"Text": "x", "UpdatedBy": "y"}}),
        );
        let ids = [
            s.findings(keys, &[write(&raise)], now),
            s.findings(keys, &[write(&low)], now),
            s.findings(keys, &[write(&again)], now),
        ];
        // CRITICAL and LOW at once: Security Hub may apply them in either order, so a
        // decision on the finding is refused until they are answered (until review 48 it was
        // judged on them laid over in the order sent, which Security Hub need not follow).
        refused(s.effect(keys, None, &[], now));
        // The series as Flights composes it (for writes whose order does not matter).
        let mut series = Series::default();
        series.start();
        for p in [&raise, &low, &again] {
            series.add(p);
        }
        let mut changes = Vec::new();
        let at = series.change(&mut changes).unwrap();
        let change = &changes[at];
        assert_eq!(ids.len(), 3);
        assert!(
            change.same_change(&low.then(&raise)),
            "LOW and NOTIFIED, then CRITICAL"
        );
        let read = states(&[("a", "1")]);
        assert_eq!(
            read[&a].patched(change).entry,
            landed(&read[&a], &[&raise, &low, &again])
        );
    }

    /// Findings that the same writes are in flight to share one list, through registering and
    /// answering, and one change in a decision: the work is per distinct list, not per
    /// finding. A finding written to by one more write has a list of its own.
    #[test]
    fn findings_written_together_share_their_list_and_their_change() {
        let mut s = Sending::default();
        let now = Instant::now();
        let keys: Vec<FindingKey> = (0..100).map(|i| key(&format!("f{i}"))).collect();
        let (raise, note) = (
            label("CRITICAL"),
            patch(json!({"Note": {"Text": "t", "UpdatedBy": "u"}})),
        );
        let first = s.findings(&keys, &[write(&raise)], now);
        let second = s.findings(&keys, &[write(&note)], now);
        let third = s.findings(&keys[..1], &[write(&raise)], now);
        fn list(s: &Sending, k: &FindingKey) -> *const Vec<Entry> {
            Arc::as_ptr(&s.findings[k])
        }
        let shared = |s: &Sending| keys[2..].iter().all(|k| list(s, k) == list(s, &keys[1]));
        assert!(shared(&s));
        assert_ne!(list(&s, &keys[0]), list(&s, &keys[1]));
        let f = flights(s.effect(&keys, None, &[], now));
        assert_eq!(f.ids, vec![first, second, third]);
        assert_eq!(f.changes.len(), 2, "one for f0, one for the 99 others");
        assert!(f.change(0).unwrap().same_change(&note.then(&raise)));
        assert!(f.change(1).unwrap().same_change(&raise.then(&note)));
        s.done(first, &keys);
        assert!(shared(&s));
        assert_eq!(s.findings[&keys[1]].len(), 1);
        assert_eq!(s.findings[&keys[0]].len(), 2);
        let f = flights(s.effect(&keys, None, &[], now));
        assert_eq!(f.changes.len(), 2);
        // The change of one write alone is that write's own (its memo goes on serving).
        assert!(Arc::ptr_eq(f.change(1).unwrap(), &note));
        s.done(second, &keys);
        s.done(third, &keys[..1]);
        assert!(s.is_empty());
        assert_eq!(s.writes(), 0);
    }

    /// A write hubgate cannot model refuses its findings while it is in flight; one limited to
    /// an account (an import claiming it) only once the state read shows the finding is that
    /// account's.
    #[test]
    fn a_write_it_cannot_model_refuses_what_it_may_touch() {
        let mut s = Sending::default();
        let now = Instant::now();
        let (a, b) = (key("a"), key("b"));
        let unknown = Write::Unknown("BatchUpdateFindings", None);
        let id = s.findings(std::slice::from_ref(&a), &[unknown], now);
        let u = refused(s.effect(&[b.clone(), a.clone()], None, &[], now));
        assert_eq!(u.finding.as_ref(), Some(&a));
        assert!(u.in_flight && u.operation == "BatchUpdateFindings", "{u}");
        assert!(u.to_string().contains("not answered yet"), "{u}");
        assert!(matches!(
            s.effect(std::slice::from_ref(&a), None, &[id], now),
            InFlightEffect::None
        ));
        s.done(id, std::slice::from_ref(&a));

        let import =
            |account: &str| Write::Unknown("BatchImportFindings", Some(Arc::from(account)));
        let id = s.findings(
            &[a.clone(), b.clone()],
            &[import("111111111111"), import("222222222222")],
            now,
        );
        // Before the lookup nobody knows whose findings they are.
        assert!(matches!(
            s.effect(&[a.clone(), b.clone()], None, &[], now),
            InFlightEffect::None
        ));
        let read = states(&[("a", "222222222222"), ("b", "222222222222")]);
        let u = refused(s.effect(&[a.clone(), b.clone()], Some(&read), &[], now));
        assert_eq!(
            u.finding.as_ref(),
            Some(&b),
            "only b is claimed for its own account"
        );
        let theirs = states(&[("b", "333333333333")]);
        assert!(matches!(
            s.effect(std::slice::from_ref(&b), Some(&theirs), &[], now),
            InFlightEffect::None
        ));
        s.done(id, &[a.clone(), b.clone()]);
        assert!(s.is_empty());

        // Two findings with the same imports in flight, of two owners: each is judged by its
        // own owner, not by the other's.
        let id = s.findings(
            &[a.clone(), b.clone()],
            &[import("222222222222"), import("222222222222")],
            now,
        );
        let read = states(&[("a", "333333333333"), ("b", "222222222222")]);
        let u = refused(s.effect(&[a.clone(), b.clone()], Some(&read), &[], now));
        assert_eq!(u.finding.as_ref(), Some(&b));
        s.done(id, &[a.clone(), b.clone()]);
        assert!(s.is_empty());
    }

    /// Writes that name no finding (filters, OCSF identifiers) refuse every finding, or those
    /// of the accounts they name, until their answers.
    #[test]
    fn writes_that_name_no_finding_refuse_by_account_or_all() {
        let mut s = Sending::default();
        let now = Instant::now();
        let (a, b) = (key("a"), key("b"));
        let read = states(&[("a", "111111111111"), ("b", "222222222222")]);
        let id = s.accounts(
            &[Arc::from("222222222222")],
            "BatchUpdateFindingsV2",
            Reach::State,
            now,
        );
        assert!(matches!(
            s.effect(std::slice::from_ref(&a), Some(&read), &[], now),
            InFlightEffect::None
        ));
        let u = refused(s.effect(&[a.clone(), b.clone()], Some(&read), &[], now));
        assert_eq!(u.finding.as_ref(), Some(&b));
        s.done(id, &[]);
        let id = s.everything("UpdateFindings", Reach::State, now);
        let u = refused(s.effect(std::slice::from_ref(&a), None, &[], now));
        assert!(
            u.finding.is_none() && u.operation == "UpdateFindings",
            "{u}"
        );
        assert!(matches!(
            s.effect(std::slice::from_ref(&a), None, &[id], now),
            InFlightEffect::None
        ));
        s.done(id, &[]);
        assert!(s.is_empty());
    }

    /// Writes of notes only that name no finding (a V2 comment, an UpdateFindings note)
    /// refuse nothing while in flight, but a write answered beside one still knows it was.
    #[test]
    fn writes_of_notes_only_in_flight_refuse_nothing() {
        let mut s = Sending::default();
        let now = Instant::now();
        let (a, b) = (key("a"), key("b"));
        let read = states(&[("a", "111111111111"), ("b", "222222222222")]);
        let low = label("LOW");
        let named = s.findings(std::slice::from_ref(&a), &[write(&low)], now);
        let comment = s.accounts(
            &[Arc::from("222222222222")],
            "BatchUpdateFindingsV2",
            Reach::Notes,
            now,
        );
        let note = s.everything("UpdateFindings", Reach::Notes, now);
        assert!(matches!(
            s.effect(std::slice::from_ref(&b), Some(&read), &[], now),
            InFlightEffect::None
        ));
        assert!(matches!(
            s.effect(std::slice::from_ref(&a), Some(&read), &[], now),
            InFlightEffect::Patches(_)
        ));
        let beside = s.beside(named).expect("in flight");
        assert!(beside.may_touch(Some("222222222222")) && beside.everything);
        for id in [comment, note] {
            s.done(id, &[]);
        }
        s.done(named, std::slice::from_ref(&a));
        assert!(s.is_empty());
    }

    /// The members an update in these tests may set, each from a few values.
    fn member(field: usize, pick: usize) -> (&'static str, Value) {
        let labels = ["LOW", "HIGH", "CRITICAL"];
        let statuses = ["NOTIFIED", "RESOLVED", "NEW"];
        let states = ["TRUE_POSITIVE", "FALSE_POSITIVE", "UNKNOWN"];
        match field {
            0 => ("Severity", json!({"Label": labels[pick % 3]})),
            1 => ("Workflow", json!({"Status": statuses[pick % 3]})),
            2 => (
                "Note",
                json!({"Text": format!("n{pick}"), "UpdatedBy": "u"}),
            ),
            3 => ("Confidence", json!(pick * 40)),
            4 => ("Criticality", json!(pick * 30 + 1)),
            _ => ("VerificationState", json!(states[pick % 3])),
        }
    }

    proptest::proptest! {
        /// Whatever series of changes is in flight to a finding, in whatever order (repeats
        /// included), the one change a decision lays over gives what landing every write in
        /// the order sent gives; a series with two writes whose order matters is refused.
        #[test]
        fn the_change_in_flight_is_every_write_landed_in_order(
            writes in proptest::collection::vec(
                proptest::collection::btree_map(0usize..6, 0usize..3, 1..4), 1..6),
            start in proptest::collection::btree_map(0usize..6, 0usize..3, 0..6),
        ) {
            let mut s = Sending::default();
            let now = Instant::now();
            let a = key("a");
            let patches: Vec<Arc<Patch>> = writes.iter().map(|w| {
                patch(w.iter().map(|(f, p)| member(*f, *p)).map(|(k, v)| (k.to_string(), v))
                    .collect::<serde_json::Map<_, _>>().into())
            }).collect();
            for p in &patches {
                s.findings(std::slice::from_ref(&a), &[write(p)], now);
            }
            let mut f = finding("a", "111111111111");
            for (k, v) in start.iter().map(|(f, p)| member(*f, *p)) {
                f[k] = v;
            }
            let state = CurrentFinding::new("a", "p", &f);
            let effect = s.effect(std::slice::from_ref(&a), None, &[], now);
            let conflicting = patches.iter().enumerate().any(|(i, p)| {
                patches[i + 1..].iter().any(|q| !(p.same_change(q) || p.facts_commute_with(q)))
            });
            if conflicting {
                // Writes whose order matters are refused, not laid over (see `contested`).
                proptest::prop_assert!(matches!(effect, InFlightEffect::Unknown(_)));
                return Ok(());
            }
            let got = flights(effect);
            let all: Vec<&Arc<Patch>> = patches.iter().collect();
            proptest::prop_assert_eq!(
                state.patched(got.change(0).unwrap()).entry,
                landed(&state, &all)
            );
        }
    }
}
