//! Writes hubgate has sent to Security Hub and not yet heard back about. From the moment a
//! write leaves, Security Hub may apply it, but what it did is written through to the cache
//! and kept in the settle journal only once the answer comes. Until then, a decision that
//! reads one of its findings must hold whether the write lands or not:
//! - a change hubgate can model is laid over the state read, and the request is also judged
//!   on the state without it (as the settle journal does);
//! - a write it cannot model (an import, a `BatchUpdateFindings` of fields hubgate does not
//!   write through, OCSF identifiers, filters) leaves the state unknown, and the decision is
//!   refused as settling until the answer.
//!
//! Each write is registered under the enricher's lock, with an id, and leaves when its answer
//! has been applied to the cache and the journal (`InFlight` in `enrich`). This is the
//! replica's own: another replica learns of a write when it is answered.

use std::sync::Arc;
use std::time::Instant;

use super::settle::Write;
use crate::decide::Unsettled;
use crate::finding::{FindingKey, KeyMap};
use crate::policy::input::Patch;
use crate::policy::state::CurrentFinding;

/// One registered write's id, unique within the replica.
pub type WriteId = u64;

#[derive(Default)]
pub struct Sending {
    next: WriteId,
    /// Per finding, the writes to it in flight.
    findings: KeyMap<Flying>,
    /// Writes that may change any finding of an account: (id, when, by what, account).
    accounts: Vec<(WriteId, Instant, &'static str, Arc<str>)>,
    /// Writes that may change any finding: (id, when, by what).
    everything: Vec<(WriteId, Instant, &'static str)>,
    /// How many writes are registered.
    writes: usize,
}

/// One write in flight to a finding: its id, when it was sent, and what it does.
type Entry = (WriteId, Instant, Write);

/// The writes in flight to one finding, in the order sent. Nearly always one: it is kept in
/// place, so that registering a 100-finding write allocates nothing per finding.
struct Flying {
    first: Entry,
    more: Vec<Entry>,
}

impl Flying {
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        std::iter::once(&self.first).chain(&self.more)
    }

    /// Drops the write `id`; false when none is left.
    fn drop_write(&mut self, id: WriteId) -> bool {
        if self.first.0 == id {
            if self.more.is_empty() {
                return false;
            }
            self.first = self.more.remove(0);
        } else {
            self.more.retain(|(w, ..)| *w != id);
        }
        true
    }
}

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
    /// Per finding, the distinct changes in flight to it, in the order of their last sending:
    /// laid over in that order they give what every write landing in the order sent gives (a
    /// change sets its values whatever came before, so an earlier copy of a change sent again
    /// later is moot). Concurrent requests that write the same change, as a playbook's retries
    /// do, are one change here, not one per request.
    pub by_key: KeyMap<Vec<Arc<Patch>>>,
    /// The writes they come from, each once.
    pub ids: Vec<WriteId>,
}

impl Sending {
    fn id(&mut self) -> WriteId {
        self.next += 1;
        self.writes += 1;
        self.next
    }

    /// `keys` are being written to; `writes` gives each key's write by position (one for
    /// all when it has a single element).
    pub fn findings(&mut self, keys: &[FindingKey], writes: &[Write], now: Instant) -> WriteId {
        let id = self.id();
        for (i, key) in keys.iter().enumerate() {
            let Some(write) = writes.get(i).or(writes.first()) else {
                break;
            };
            let entry = (id, now, write.clone());
            match self.findings.get_mut(key) {
                Some(flying) => flying.more.push(entry),
                None => {
                    let flying = Flying {
                        first: entry,
                        more: Vec::new(),
                    };
                    self.findings.insert(key.clone(), flying);
                }
            }
        }
        id
    }

    pub fn accounts(
        &mut self,
        accounts: &[Arc<str>],
        operation: &'static str,
        now: Instant,
    ) -> WriteId {
        let id = self.id();
        for account in accounts {
            self.accounts.push((id, now, operation, account.clone()));
        }
        id
    }

    pub fn everything(&mut self, operation: &'static str, now: Instant) -> WriteId {
        let id = self.id();
        self.everything.push((id, now, operation));
        id
    }

    /// The write `id`, registered for `keys`, was answered (or never sent).
    pub fn done(&mut self, id: WriteId, keys: &[FindingKey]) {
        self.writes = self.writes.saturating_sub(1);
        for key in keys {
            if let Some(flying) = self.findings.get_mut(key) {
                if !flying.drop_write(id) {
                    self.findings.remove(key);
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
        if let Some((_, at, operation)) = self.everything.iter().find(|(id, ..)| !seen.contains(id))
        {
            return unsettled(None, operation, *at);
        }
        let owner = |key: &FindingKey| -> Option<&str> { states?.get(key)?.account_id.as_deref() };
        if !self.accounts.is_empty() {
            for key in keys {
                let Some(owner) = owner(key) else { continue };
                if let Some((_, at, operation, _)) = self
                    .accounts
                    .iter()
                    .find(|(id, _, _, a)| **a == *owner && !seen.contains(id))
                {
                    return unsettled(Some(key), operation, *at);
                }
            }
        }
        if self.findings.is_empty() {
            return InFlightEffect::None;
        }
        let mut flights = Flights {
            by_key: KeyMap::default(),
            ids: Vec::new(),
        };
        // Each write's change (one `Patch` shared by all its findings) is classed once: by
        // address, then by content against one of each class met so far.
        let mut classed: Vec<(*const Patch, usize)> = Vec::new();
        let mut classes: Vec<Arc<Patch>> = Vec::new();
        for key in keys {
            let Some(flying) = self.findings.get(key) else {
                continue;
            };
            let mut changes: Vec<(usize, Arc<Patch>)> = Vec::new();
            for (id, at, write) in flying.iter() {
                if seen.contains(id) {
                    continue;
                }
                let patch = match write {
                    Write::Patch(patch) => patch,
                    Write::Unknown(_, Some(account)) if owner(key) != Some(&**account) => continue,
                    Write::Unknown(operation, _) => return unsettled(Some(key), operation, *at),
                };
                if !flights.ids.contains(id) {
                    flights.ids.push(*id);
                }
                let class = match classed.iter().find(|(p, _)| *p == Arc::as_ptr(patch)) {
                    Some((_, class)) => *class,
                    None => {
                        let class = classes
                            .iter()
                            .position(|c| c.same_change(patch))
                            .unwrap_or_else(|| {
                                classes.push(patch.clone());
                                classes.len() - 1
                            });
                        classed.push((Arc::as_ptr(patch), class));
                        class
                    }
                };
                changes.retain(|(c, _)| *c != class);
                changes.push((class, patch.clone()));
            }
            if !changes.is_empty() {
                let changes = changes.into_iter().map(|(_, patch)| patch).collect();
                flights.by_key.insert(key.clone(), changes);
            }
        }
        if flights.ids.is_empty() {
            InFlightEffect::None
        } else {
            InFlightEffect::Patches(flights)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::input::update_for;
    use crate::request::Judged;
    use serde_json::json;

    fn key(id: &str) -> FindingKey {
        FindingKey::new(id, "p")
    }

    fn states(owners: &[(&str, &str)]) -> KeyMap<Arc<CurrentFinding>> {
        owners
            .iter()
            .map(|(id, account)| {
                let finding = json!({"Id": id, "ProductArn": "p", "AwsAccountId": account,
                    "Severity": {"Label": "MEDIUM"}, "Workflow": {"Status": "NEW"}});
                (key(id), Arc::new(CurrentFinding::new(id, "p", &finding)))
            })
            .collect()
    }

    fn change(label: &str) -> Write {
        let body = json!({"FindingIdentifiers": [{"Id": "a", "ProductArn": "p"}],
            "Severity": {"Label": label}});
        let update = update_for(Judged::BatchUpdateFindings, &body).unwrap();
        Write::Patch(Arc::new(update.patch().expect("a modelled change")))
    }

    fn raise() -> Write {
        change("CRITICAL")
    }

    /// The writes in flight, and how many distinct changes each finding has.
    fn patched(effect: InFlightEffect) -> (Vec<WriteId>, KeyMap<usize>) {
        match effect {
            InFlightEffect::Patches(f) => (
                f.ids,
                f.by_key.into_iter().map(|(k, v)| (k, v.len())).collect(),
            ),
            InFlightEffect::None => (Vec::new(), KeyMap::default()),
            InFlightEffect::Unknown(u) => panic!("refused: {u}"),
        }
    }

    fn refused(effect: InFlightEffect) -> Unsettled {
        match effect {
            InFlightEffect::Unknown(u) => u,
            _ => panic!("not refused"),
        }
    }

    /// A change in flight is laid over exactly the findings it names, until its answer; a
    /// decision that already took it into account is not told of it again.
    #[test]
    fn a_change_in_flight_touches_its_findings_until_it_is_done() {
        let mut s = Sending::default();
        let now = Instant::now();
        let (a, b) = (key("a"), key("b"));
        let first = s.findings(std::slice::from_ref(&a), &[raise()], now);
        let second = s.findings(&[a.clone(), b.clone()], &[change("LOW")], now);
        assert_ne!(first, second);
        let both = [a.clone(), b.clone()];
        assert_eq!(s.writes(), 2);
        let (ids, got) = patched(s.effect(&both, None, &[], now));
        assert_eq!(ids, vec![first, second]);
        assert_eq!((got[&a], got[&b]), (2, 1));
        assert!(patched(s.effect(&[key("c")], None, &[], now)).0.is_empty());
        let (ids, got) = patched(s.effect(&both, None, &[first], now));
        assert_eq!(
            ids,
            vec![second],
            "the write considered already is left out"
        );
        assert_eq!(got[&a], 1);

        s.done(second, &both);
        let (ids, got) = patched(s.effect(&both, None, &[], now));
        assert_eq!((ids, got.contains_key(&b)), (vec![first], false));
        assert_eq!(s.writes(), 1);
        s.done(first, std::slice::from_ref(&a));
        assert!(s.is_empty());
        assert_eq!(s.writes(), 0);
        // The first of two writes to a finding answered first: the second stays.
        let third = s.findings(std::slice::from_ref(&a), &[raise()], now);
        let fourth = s.findings(std::slice::from_ref(&a), &[raise()], now);
        s.done(third, std::slice::from_ref(&a));
        assert_eq!(patched(s.effect(&both, None, &[], now)).0, vec![fourth]);
        s.done(fourth, std::slice::from_ref(&a));
        assert!(s.is_empty());
        assert!(matches!(
            s.effect(&both, None, &[], now),
            InFlightEffect::None
        ));
    }

    /// Concurrent writes of the same change (a retried playbook) are one change to lay over,
    /// and changes come in the order of their last sending: what landing every write in the
    /// order sent gives.
    #[test]
    fn the_same_change_in_flight_twice_is_laid_over_once_in_its_last_place() {
        let mut s = Sending::default();
        let now = Instant::now();
        let a = key("a");
        let keys = std::slice::from_ref(&a);
        let ids = [
            s.findings(keys, &[raise()], now),
            s.findings(keys, &[change("LOW")], now),
            s.findings(keys, &[raise()], now),
        ];
        let InFlightEffect::Patches(flights) = s.effect(keys, None, &[], now) else {
            panic!("nothing in flight");
        };
        assert_eq!(flights.ids, ids.to_vec(), "every write is named");
        let changes = &flights.by_key[&a];
        assert_eq!(changes.len(), 2, "LOW, then CRITICAL (sent again last)");
        let Write::Patch(low) = change("LOW") else {
            panic!()
        };
        let Write::Patch(critical) = raise() else {
            panic!()
        };
        assert!(changes[0].same_change(&low) && changes[1].same_change(&critical));
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
    }

    /// Writes that name no finding (filters, OCSF identifiers) refuse every finding, or those
    /// of the accounts they name, until their answers.
    #[test]
    fn writes_that_name_no_finding_refuse_by_account_or_all() {
        let mut s = Sending::default();
        let now = Instant::now();
        let (a, b) = (key("a"), key("b"));
        let read = states(&[("a", "111111111111"), ("b", "222222222222")]);
        let id = s.accounts(&[Arc::from("222222222222")], "BatchUpdateFindingsV2", now);
        assert!(matches!(
            s.effect(std::slice::from_ref(&a), Some(&read), &[], now),
            InFlightEffect::None
        ));
        let u = refused(s.effect(&[a.clone(), b.clone()], Some(&read), &[], now));
        assert_eq!(u.finding.as_ref(), Some(&b));
        s.done(id, &[]);
        let id = s.everything("UpdateFindings", now);
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
}
