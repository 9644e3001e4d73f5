//! What hubgate wrote that Security Hub may not have applied yet. Security Hub applies
//! BatchUpdateFindings asynchronously ("can take several minutes"), so for a while after a
//! write hubgate forwarded, GetFindings may still show the finding as it was before. The
//! journal keeps each write for `enrichment.settle_ms`:
//! - a change hubgate can model is laid over every state read for the finding, and the
//!   decision must also hold on the state as read (Security Hub may not have applied the
//!   write, or another writer may have changed the finding since);
//! - after a write it cannot model (an import, OCSF identifiers, filters) the finding's state
//!   cannot be known, and a decision that reads it is refused until the window has passed.
//!
//! The cache cannot do this alone: it holds a write only while the finding's entry is cached
//! and fresh, which `cache_ttl_ms = 0`, an uncached finding or an expired entry all defeat.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decide::Unsettled;
use crate::finding::{FindingKey, KeyMap};
use crate::policy::input::Patch;
use crate::policy::state::CurrentFinding;

/// Distinct changes kept per finding; one more leaves its state unknown for the window. Equal
/// changes in a row are kept once, so only alternating writers reach it.
const MAX_CHANGES_PER_FINDING: usize = 16;

/// One write to a finding.
#[derive(Clone)]
pub enum Write {
    /// A change hubgate can lay over a state, kept without its memo (see `Patch::fresh`).
    Patch(Arc<Patch>),
    /// A write whose effect hubgate cannot tell, by what made it.
    Unknown(&'static str),
}

pub struct Journal {
    window: Duration,
    by_key: KeyMap<Vec<(Instant, Write)>>,
    /// The last write that may have changed any finding, and what made it.
    everything: Option<(Instant, &'static str)>,
    /// Each write's time and findings, oldest first: what to expire.
    order: VecDeque<(Instant, Arc<[FindingKey]>)>,
}

impl Journal {
    pub fn new(window: Duration) -> Journal {
        Journal {
            window,
            by_key: KeyMap::default(),
            everything: None,
            order: VecDeque::new(),
        }
    }

    /// Findings with a write in the window.
    pub fn findings(&self) -> usize {
        self.by_key.len()
    }

    /// `keys` were written to, at `now`.
    pub fn record(&mut self, keys: &[FindingKey], write: Write, now: Instant) {
        if self.window.is_zero() || keys.is_empty() {
            return;
        }
        self.expire(now);
        let write = match write {
            Write::Patch(p) => Write::Patch(Arc::new(p.fresh())),
            unknown => unknown,
        };
        for key in keys {
            let writes = self.by_key.entry(key.clone()).or_default();
            let full = writes.len() >= MAX_CHANGES_PER_FINDING;
            match (&write, writes.last_mut()) {
                (Write::Patch(p), Some((at, Write::Patch(last)))) if last.same_change(p) => {
                    *at = now;
                }
                // Nothing before it matters while it is in the window, and it leaves last.
                (Write::Unknown(_), _) => *writes = vec![(now, write.clone())],
                _ if full => {
                    *writes = vec![(
                        now,
                        Write::Unknown("more BatchUpdateFindings than hubgate keeps per finding"),
                    )]
                }
                _ => writes.push((now, write.clone())),
            }
        }
        self.order.push_back((now, keys.into()));
    }

    /// A write may have changed any finding, at `now`. What was kept before leaves the window
    /// before it does, so it is dropped.
    pub fn record_everything(&mut self, operation: &'static str, now: Instant) {
        if self.window.is_zero() {
            return;
        }
        self.everything = Some((now, operation));
        self.by_key.clear();
        self.order.clear();
    }

    /// Drops what left the window.
    pub fn expire(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.window) else {
            return;
        };
        if self.everything.is_some_and(|(at, _)| at <= cutoff) {
            self.everything = None;
        }
        while self.order.front().is_some_and(|(at, _)| *at <= cutoff) {
            let Some((_, keys)) = self.order.pop_front() else {
                break;
            };
            for key in keys.iter() {
                if let Some(writes) = self.by_key.get_mut(key) {
                    writes.retain(|(at, _)| *at > cutoff);
                    if writes.is_empty() {
                        self.by_key.remove(key);
                    }
                }
            }
        }
    }

    /// Why the state of one of `keys` cannot be known yet (the one known last), if so.
    pub fn unsettled(&self, keys: &[FindingKey], now: Instant) -> Option<Unsettled> {
        let cutoff = now.checked_sub(self.window);
        let live = |at: Instant| cutoff.is_none_or(|c| at > c);
        let mut last: Option<(Instant, Option<&FindingKey>, &'static str)> = self
            .everything
            .filter(|(at, _)| live(*at))
            .map(|(at, op)| (at, None, op));
        if !self.by_key.is_empty() {
            for key in keys {
                let Some(writes) = self.by_key.get(key) else {
                    continue;
                };
                for (at, write) in writes {
                    if let (Write::Unknown(op), true) = (write, live(*at)) {
                        if last.is_none_or(|(l, _, _)| *at > l) {
                            last = Some((*at, Some(key), op));
                        }
                    }
                }
            }
        }
        let (at, finding, operation) = last?;
        let since = now.saturating_duration_since(at);
        let left = self.window.saturating_sub(since);
        Some(Unsettled {
            finding: finding.cloned(),
            operation,
            since_ms: since.as_millis() as u64,
            // Rounded up: a client that waits this long finds the window over.
            retry_after_s: left.as_millis().div_ceil(1000).max(1) as u64,
        })
    }

    /// Lays the changes in the window over `current` (the states read for `keys`). Returns the
    /// states as they were read when that changed any of them.
    ///
    /// A state Security Hub itself just reported (`from_security_hub`) that already shows every
    /// change kept for its finding shows them applied: they are dropped, so that from then on
    /// another writer's later change to the same fields is seen as it is.
    pub fn lay_over(
        &mut self,
        keys: &[FindingKey],
        current: &mut KeyMap<Arc<CurrentFinding>>,
        from_security_hub: impl Fn(&FindingKey) -> bool,
        now: Instant,
    ) -> Option<KeyMap<Arc<CurrentFinding>>> {
        if self.by_key.is_empty() {
            return None;
        }
        let cutoff = now.checked_sub(self.window);
        // Fresh copies, one per journal patch, dropped with this call: laying a patch over a
        // state memoises that state in the patch.
        let mut copies: Vec<(*const Patch, Patch)> = Vec::new();
        let mut reported: Option<KeyMap<Arc<CurrentFinding>>> = None;
        let mut applied = Vec::new();
        for key in keys {
            let (Some(writes), Some(read)) = (self.by_key.get(key), current.get(key)) else {
                continue;
            };
            let live = |at: &Instant| cutoff.is_none_or(|c| *at > c);
            if from_security_hub(key)
                && writes.iter().all(|(at, w)| match w {
                    Write::Patch(p) => !live(at) || p.shown_by(&read.entry),
                    Write::Unknown(_) => false,
                })
            {
                applied.push(key);
                continue;
            }
            let mut state = read.clone();
            for (at, write) in writes {
                let Write::Patch(patch) = write else { continue };
                if !live(at) {
                    continue;
                }
                let ptr = Arc::as_ptr(patch);
                let copy = match copies.iter().position(|(p, _)| *p == ptr) {
                    Some(i) => &copies[i].1,
                    None => {
                        copies.push((ptr, patch.fresh()));
                        &copies[copies.len() - 1].1
                    }
                };
                state = super::laid_over(&state, copy);
            }
            if !Arc::ptr_eq(&state, read) {
                reported.get_or_insert_with(|| current.clone());
                current.insert(key.clone(), state);
            }
        }
        for key in applied {
            self.by_key.remove(key);
        }
        reported
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

    fn label(states: &KeyMap<Arc<CurrentFinding>>, id: &str) -> RValue {
        states[&key(id)].entry["severity_label"].clone()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_change_is_laid_over_what_is_read_and_the_read_is_kept_beside_it() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        j.record(
            &[key("a")],
            patch(json!({"Severity": {"Label": "CRITICAL"}})),
            t0,
        );
        let mut current: KeyMap<_> = [
            (key("a"), state("a", "MEDIUM")),
            (key("b"), state("b", "LOW")),
        ]
        .into_iter()
        .collect();
        let reported = j
            .lay_over(&[key("a"), key("b")], &mut current, |_| true, t0 + SECOND)
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
        j.record(
            &[key("a")],
            patch(json!({"Severity": {"Label": "CRITICAL"}})),
            t0,
        );
        let mut cached: KeyMap<_> = [(key("a"), state("a", "CRITICAL"))].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut cached, |_| false, t0)
            .is_none());
        assert_eq!(
            j.findings(),
            1,
            "a cached state holds the write because hubgate put it there"
        );
        let mut read: KeyMap<_> = [(key("a"), state("a", "CRITICAL"))].into_iter().collect();
        assert!(j.lay_over(&[key("a")], &mut read, |_| true, t0).is_none());
        assert_eq!(j.findings(), 0);
        // Another writer's later lowering is now seen as it is.
        let mut lowered: KeyMap<_> = [(key("a"), state("a", "LOW"))].into_iter().collect();
        assert!(j
            .lay_over(&[key("a")], &mut lowered, |_| true, t0)
            .is_none());
        assert_eq!(label(&lowered, "a"), RValue::from("LOW"));
    }

    #[test]
    fn what_security_hub_adds_or_recomputes_beside_a_change_still_shows_it_applied() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        j.record(
            &[key("a")],
            patch(json!({"Severity": {"Label": "CRITICAL"},
            "Note": {"Text": "t", "UpdatedBy": "u"}})),
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
        assert!(j.lay_over(&[key("a")], &mut read, |_| true, t0).is_none());
        assert!(
            Arc::ptr_eq(&read[&key("a")], &reported),
            "taken as reported"
        );
        assert_eq!(j.findings(), 0);
        // A different note text is not the change applied.
        j.record(
            &[key("a")],
            patch(json!({"Note": {"Text": "t2", "UpdatedBy": "u"}})),
            t0,
        );
        let mut read: KeyMap<_> = [(key("a"), reported)].into_iter().collect();
        assert!(j.lay_over(&[key("a")], &mut read, |_| true, t0).is_some());
        assert_eq!(j.findings(), 1);
    }

    #[test]
    fn changes_leave_the_window_and_equal_ones_in_a_row_are_kept_once() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        let raise = || patch(json!({"Severity": {"Label": "CRITICAL"}}));
        j.record(&[key("a")], raise(), t0);
        j.record(&[key("a")], raise(), t0 + 5 * SECOND);
        assert_eq!(j.by_key[&key("a")].len(), 1);
        // Dated by the later write: still there after the first one's window.
        j.expire(t0 + 12 * SECOND);
        assert_eq!(j.findings(), 1);
        j.expire(t0 + 15 * SECOND);
        assert_eq!(j.findings(), 0);
        assert!(j.order.is_empty());
    }

    #[test]
    fn changes_are_laid_over_in_the_order_they_were_written() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        j.record(
            &[key("a")],
            patch(json!({"Severity": {"Label": "CRITICAL"}})),
            t0,
        );
        j.record(
            &[key("a")],
            patch(json!({"Severity": {"Label": "LOW"}})),
            t0,
        );
        let mut current: KeyMap<_> = [(key("a"), state("a", "MEDIUM"))].into_iter().collect();
        j.lay_over(&[key("a")], &mut current, |_| true, t0);
        assert_eq!(label(&current, "a"), RValue::from("LOW"));
    }

    #[test]
    fn a_write_hubgate_cannot_model_leaves_the_state_unknown_until_the_window_ends() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        j.record(
            &[key("a")],
            patch(json!({"Severity": {"Label": "CRITICAL"}})),
            t0,
        );
        j.record(
            &[key("a")],
            Write::Unknown("BatchImportFindings"),
            t0 + SECOND,
        );
        assert!(j.unsettled(&[key("b")], t0 + SECOND).is_none());
        let u = j.unsettled(&[key("b"), key("a")], t0 + 3 * SECOND).unwrap();
        assert_eq!(u.finding, Some(key("a")));
        assert_eq!(u.operation, "BatchImportFindings");
        assert_eq!(u.since_ms, 2000);
        assert_eq!(u.retry_after_s, 8);
        assert!(j.unsettled(&[key("a")], t0 + 11 * SECOND).is_none());
    }

    #[test]
    fn a_write_to_findings_hubgate_cannot_name_leaves_every_state_unknown() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        j.record(
            &[key("a")],
            patch(json!({"Severity": {"Label": "CRITICAL"}})),
            t0,
        );
        j.record_everything("BatchUpdateFindingsV2", t0 + SECOND);
        let u = j.unsettled(&[key("z")], t0 + 2 * SECOND).unwrap();
        assert_eq!(u.finding, None);
        assert_eq!(u.operation, "BatchUpdateFindingsV2");
        assert!(u.to_string().starts_with("any finding was changed"), "{u}");
        j.expire(t0 + 11 * SECOND);
        assert!(j.unsettled(&[key("z")], t0 + 11 * SECOND).is_none());
    }

    #[test]
    fn too_many_different_changes_to_one_finding_leave_it_unknown() {
        let mut j = Journal::new(10 * SECOND);
        let t0 = Instant::now();
        for i in 0..=MAX_CHANGES_PER_FINDING {
            let label = if i % 2 == 0 { "LOW" } else { "HIGH" };
            j.record(
                &[key("a")],
                patch(json!({"Severity": {"Label": label}})),
                t0,
            );
        }
        assert!(j.unsettled(&[key("a")], t0).is_some());
    }

    #[test]
    fn a_zero_window_keeps_nothing() {
        let mut j = Journal::new(Duration::ZERO);
        let t0 = Instant::now();
        j.record(&[key("a")], Write::Unknown("BatchImportFindings"), t0);
        j.record_everything("UpdateFindings", t0);
        assert!(j.unsettled(&[key("a")], t0).is_none());
        assert_eq!(j.findings(), 0);
    }
}
