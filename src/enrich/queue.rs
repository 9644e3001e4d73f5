//! The lookup queue: findings waiting for a GetFindings batch, kept per caller and served in
//! turn, so that the callers behind one hubgate share its lookup quota fairly.
//!
//! Every caller in `resign` mode spends the same account's GetFindings quota (3 calls a
//! second). With one first-come queue, a member account's bulk job (4 workers sending 100
//! findings each) kept about 20 calls, 7 seconds, ahead of every request that came after it;
//! a larger backlog runs other requests out of time. Here a batch is filled from one caller's
//! findings, and the callers with findings waiting take turns batch by batch.
//!
//! Turns go in two levels: accounts take turns, and within an account its callers
//! (principals) do. Per caller alone, an account running ten automation roles had ten turns
//! to another account's one; per account alone, a playbook's one-finding note waited behind
//! the whole backlog of a bulk job that another principal of its account had queued. A
//! request now waits behind at most one batch per other account with findings waiting, and
//! one turn of its account per other caller of that account.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::finding::FindingKey;
use crate::identity::CallerId;

/// Who waits for findings: a caller (principal id) of an account. Owned, for the queue and
/// the requests' waiters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct Who {
    pub account: Arc<str>,
    pub principal: Arc<str>,
}

impl From<CallerId<'_>> for Who {
    fn from(c: CallerId<'_>) -> Who {
        Who {
            account: Arc::from(c.account),
            principal: Arc::from(c.principal),
        }
    }
}

/// One caller's findings waiting, as its requests asked for them, or asked for again, that its
/// requests wait for (`again`). Never empty: a turn leaves once its last finding is taken.
struct Turn {
    principal: Arc<str>,
    again: bool,
    keys: VecDeque<FindingKey>,
}

impl Turn {
    fn is(&self, principal: &str, again: bool) -> bool {
        self.again == again && &*self.principal == principal
    }
}

/// One account's turns with findings waiting, the one whose turn it is first. Never empty: an
/// account leaves once its last turn does.
struct Account {
    account: Arc<str>,
    turns: VecDeque<Turn>,
    /// The turn of this account that last began a complete batch: (principal, again).
    served: Option<(Arc<str>, bool)>,
}

/// The queue. Turns hold their findings inline and are found by walking the accounts and their
/// turns, not through maps: taking a finding, once per finding of every cold request, then
/// hashes nothing, and a push (once per request) walks the few accounts and callers with
/// findings waiting.
#[derive(Default)]
pub(super) struct LookupQueue {
    /// The accounts with findings waiting, the one whose turn it is first. Findings asked for
    /// again (a write landed while their call was out, or another replica handed them back)
    /// wait in a turn of their own per caller waiting for them, beside that caller's: a caller
    /// that keeps its own findings being asked again (V2 writes to its account while they are
    /// looked up) gets one more turn in its account, and its backlog of them is its own. One
    /// turn of them for all, first in, first out, put another account's finding asked again
    /// behind every one of the caller's (review 49: 13 calls behind, where its own turn came
    /// within two).
    accounts: VecDeque<Account>,
    /// The turn the batch being filled began with: (account, principal, again).
    serving: Option<(Arc<str>, Arc<str>, bool)>,
    /// The account whose turn began the last complete batch: it has just had its turn.
    served: Option<Arc<str>>,
    /// Entries in all the turns.
    len: usize,
}

/// Puts a newcomer at the back of `order`, but ahead of the one that has just had its turn
/// (`served` says whether an entry is it) when that one is last: alone with a backlog, it
/// would otherwise be served twice before the newcomer.
fn join<T>(order: &mut VecDeque<T>, served: impl Fn(&T) -> bool, newcomer: T) {
    let at = match order.back() {
        Some(last) if served(last) => order.len() - 1,
        _ => order.len(),
    };
    order.insert(at, newcomer);
}

impl LookupQueue {
    /// Queues findings one of `who`'s requests asked for, in order. A finding may be in
    /// several queues (another caller's request asked for it first): whichever turn comes
    /// first looks it up, and the taker skips it after that (`Enricher`'s `next_to_look_up`).
    pub fn push_back(&mut self, who: &Who, keys: Vec<FindingKey>) {
        self.push(who, false, keys);
    }

    /// Queues a finding asked for again in the turn of asked-again findings of each caller
    /// in `callers` (those whose requests wait for it), after the others there.
    pub fn push_again(&mut self, callers: &[Who], key: FindingKey) {
        for caller in callers {
            self.push(caller, true, vec![key.clone()]);
        }
    }

    fn push(&mut self, who: &Who, again: bool, keys: Vec<FindingKey>) {
        if keys.is_empty() {
            return;
        }
        self.len += keys.len();
        let keys = VecDeque::from(keys);
        let Some(account) = self.accounts.iter_mut().find(|a| a.account == who.account) else {
            let account = Account {
                account: who.account.clone(),
                turns: VecDeque::from([Turn {
                    principal: who.principal.clone(),
                    again,
                    keys,
                }]),
                served: None,
            };
            let served = self.served.clone();
            join(
                &mut self.accounts,
                |a| served.as_ref() == Some(&a.account),
                account,
            );
            return;
        };
        match account
            .turns
            .iter_mut()
            .find(|t| t.is(&who.principal, again))
        {
            Some(turn) => turn.keys.extend(keys),
            None => {
                let served = account.served.clone();
                join(
                    &mut account.turns,
                    |t| served.as_ref().is_some_and(|(p, a)| t.is(p, *a)),
                    Turn {
                        principal: who.principal.clone(),
                        again,
                        keys,
                    },
                );
            }
        }
    }

    /// The finding `pop_front` would take.
    pub fn front(&self) -> Option<&FindingKey> {
        self.accounts.front()?.turns.front()?.keys.front()
    }

    /// Takes the next finding of the queue whose turn it is. A queue that runs out mid-batch
    /// leaves the room to the next one.
    pub fn pop_front(&mut self) -> Option<FindingKey> {
        self.take(true)
    }

    /// Drops the next finding (nobody waits for it), without starting anyone's turn.
    pub fn drop_front(&mut self) -> Option<FindingKey> {
        self.take(false)
    }

    fn take(&mut self, for_batch: bool) -> Option<FindingKey> {
        let account = self.accounts.front_mut()?;
        let Some(turn) = account.turns.front_mut() else {
            // Never: an account leaves with its last turn. Were one left, it must not stop
            // every account behind it.
            self.accounts.pop_front();
            return self.take(for_batch);
        };
        let Some(key) = turn.keys.pop_front() else {
            account.turns.pop_front();
            return self.take(for_batch);
        };
        if for_batch && self.serving.is_none() {
            self.serving = Some((account.account.clone(), turn.principal.clone(), turn.again));
        }
        if turn.keys.is_empty() {
            account.turns.pop_front();
            if account.turns.is_empty() {
                self.accounts.pop_front();
            }
        }
        self.len -= 1;
        Some(key)
    }

    /// The batch being filled is complete: the account it began with, if it still has
    /// findings waiting, goes to the back of the accounts, and the turn it began with to the
    /// back of that account's turns.
    pub fn end_batch(&mut self) {
        let Some((account, principal, again)) = self.serving.take() else {
            self.served = None;
            return;
        };
        // Only the front account is served: if it still has findings waiting, it is there.
        if let Some(front) = self.accounts.front_mut().filter(|a| a.account == account) {
            if front.turns.front().is_some_and(|t| t.is(&principal, again)) {
                front.turns.rotate_left(1);
            }
            front.served = Some((principal, again));
            self.accounts.rotate_left(1);
        }
        self.served = Some(account);
    }

    /// Keeps only the findings `keep` says to, in every turn, and puts the others in
    /// `removed`; turns and accounts left empty leave, and the others keep their order.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&FindingKey) -> bool,
        removed: &mut Vec<FindingKey>,
    ) {
        let before = removed.len();
        for account in &mut self.accounts {
            for turn in &mut account.turns {
                turn.keys.retain(|key| {
                    let kept = keep(key);
                    if !kept {
                        removed.push(key.clone());
                    }
                    kept
                });
            }
            account.turns.retain(|t| !t.keys.is_empty());
        }
        self.accounts.retain(|a| !a.turns.is_empty());
        self.len -= removed.len() - before;
    }

    /// Entries queued, for the metrics.
    pub fn entries(&self) -> usize {
        self.len
    }

    /// Callers with findings queued (asked-again turns left out), for the metrics.
    pub fn callers(&self) -> usize {
        self.accounts
            .iter()
            .flat_map(|a| a.turns.iter())
            .filter(|t| !t.again)
            .count()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.front().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller that is its account's only one.
    fn w(account: &str) -> Who {
        who(account, account)
    }

    fn who(account: &str, principal: &str) -> Who {
        Who {
            account: Arc::from(account),
            principal: Arc::from(principal),
        }
    }

    fn keys(prefix: &str, n: usize) -> Vec<FindingKey> {
        (0..n)
            .map(|i| FindingKey::new(format!("{prefix}-{i}"), "p"))
            .collect()
    }

    /// Takes batches of up to `size` until the queue is empty; returns each batch's ids.
    fn drain(q: &mut LookupQueue, size: usize) -> Vec<Vec<String>> {
        let mut batches = Vec::new();
        loop {
            let mut batch = Vec::new();
            while batch.len() < size {
                let Some(k) = q.pop_front() else { break };
                batch.push(k.id.to_string());
            }
            q.end_batch();
            if batch.is_empty() {
                return batches;
            }
            batches.push(batch);
        }
    }

    #[test]
    fn a_backlog_holds_another_account_back_by_one_batch_at_most() {
        let mut q = LookupQueue::default();
        q.push_back(&w("111111111111"), keys("bulk", 100));
        q.push_back(&w("222222222222"), keys("late", 20));
        assert_eq!((q.entries(), q.callers()), (120, 2));
        let batches = drain(&mut q, 20);
        assert_eq!(batches.len(), 6);
        assert!(batches[0].iter().all(|id| id.starts_with("bulk-")));
        assert!(
            batches[1].iter().all(|id| id.starts_with("late-")),
            "the late account's batch is second, not sixth: {:?}",
            batches[1]
        );
        assert!(batches[2..]
            .iter()
            .flatten()
            .all(|id| id.starts_with("bulk-")));
        // each account's findings keep their order
        let bulk: Vec<_> = batches
            .iter()
            .flatten()
            .filter(|i| i.starts_with("bulk-"))
            .cloned()
            .collect();
        assert_eq!(
            bulk,
            (0..100).map(|i| format!("bulk-{i}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn retain_drops_findings_everywhere_and_the_turns_and_accounts_they_empty() {
        let mut q = LookupQueue::default();
        q.push_back(&w("111111111111"), keys("dead", 30));
        q.push_back(&who("222222222222", "a"), keys("live", 3));
        q.push_back(&who("222222222222", "b"), keys("dead", 2));
        q.push_again(&[w("111111111111")], FindingKey::new("live-9", "p"));
        let mut removed = Vec::new();
        q.retain(|k| k.id.starts_with("live-"), &mut removed);
        assert_eq!(removed.len(), 32);
        assert!(removed.iter().all(|k| k.id.starts_with("dead-")));
        assert_eq!((q.entries(), q.callers()), (4, 1));
        // What is left is served in its turns, in its order.
        let batches = drain(&mut q, 20);
        assert_eq!(batches.concat(), ["live-9", "live-0", "live-1", "live-2"]);
        assert!(q.is_empty() && q.accounts.is_empty());
    }

    #[test]
    fn an_account_that_runs_out_mid_batch_leaves_the_room_to_the_next() {
        let mut q = LookupQueue::default();
        q.push_back(&w("111111111111"), keys("a", 5));
        q.push_back(&w("222222222222"), keys("b", 30));
        let batches = drain(&mut q, 20);
        assert_eq!(batches[0].len(), 20, "no room left empty: {:?}", batches[0]);
        assert_eq!(&batches[0][..5], &["a-0", "a-1", "a-2", "a-3", "a-4"]);
        // b began its turn in the first batch and stays first: nobody else waits
        assert_eq!(batches.concat().len(), 35);
        assert!(q.is_empty() && q.accounts.is_empty());
        assert_eq!((q.entries(), q.callers()), (0, 0));
    }

    #[test]
    fn findings_asked_again_take_a_turn_and_a_newcomer_goes_before_the_account_just_served() {
        let mut q = LookupQueue::default();
        q.push_back(&w("111111111111"), keys("a", 40));
        q.push_again(&[w("111111111111")], FindingKey::new("again", "p"));
        assert_eq!(q.front().map(|k| k.id.to_string()).as_deref(), Some("a-0"));
        let first: Vec<_> = (0..20).filter_map(|_| q.pop_front()).collect();
        assert_eq!(&*first[19].id, "a-19");
        q.end_batch();
        q.push_back(&w("333333333333"), keys("c", 3));
        let batches = drain(&mut q, 20);
        // The newcomer account first (the other has just had its turn), then the other
        // account's turns, its findings asked again first (its findings' turn just ended).
        let mut second = vec![
            "c-0".to_string(),
            "c-1".into(),
            "c-2".into(),
            "again".into(),
        ];
        second.extend((20..36).map(|i| format!("a-{i}")));
        assert_eq!(batches[0], second);
        assert_eq!(batches[1], vec!["a-36", "a-37", "a-38", "a-39"]);
    }

    /// A caller whose findings keep being asked for again (its own V2 writes while they are
    /// looked up) gets one more turn, not every batch.
    #[test]
    fn findings_asked_again_over_and_over_cannot_crowd_out_an_account() {
        let mut q = LookupQueue::default();
        q.push_back(&w("111111111111"), keys("a", 200));
        q.push_back(&w("222222222222"), keys("b", 200));
        let mut b_batches = 0;
        for n in 0..9 {
            for k in keys(&format!("again{n}"), 20) {
                q.push_again(&[w("111111111111")], k);
            }
            let batch: Vec<_> = (0..20).filter_map(|_| q.pop_front()).collect();
            q.end_batch();
            if batch.iter().any(|k| k.id.starts_with("b-")) {
                b_batches += 1;
            }
        }
        assert!(b_batches >= 3, "b was served in {b_batches} of 9 batches");
    }

    /// Review 30, F3: findings asked for again are served first in, first out, so one that
    /// waits in that turn is not pushed back by 20 newer ones every batch.
    #[test]
    fn a_finding_asked_again_early_is_not_overtaken_by_later_ones() {
        let mut q = LookupQueue::default();
        q.push_back(&w("111111111111"), keys("a", 200));
        let a = w("111111111111");
        q.push_again(
            std::slice::from_ref(&a),
            FindingKey::new("handed-back", "p"),
        );
        let mut served_at = None;
        for n in 0..6 {
            for k in keys(&format!("again{n}"), 20) {
                q.push_again(std::slice::from_ref(&a), k);
            }
            let batch: Vec<_> = (0..20).filter_map(|_| q.pop_front()).collect();
            q.end_batch();
            if batch.iter().any(|k| &*k.id == "handed-back") {
                served_at.get_or_insert(n);
            }
        }
        assert!(
            served_at.is_some_and(|n| n <= 1),
            "served in batch {served_at:?}"
        );
    }

    /// Review 49: one account's backlog of findings asked again (a member's V2 writes to its
    /// own account while its hundreds of findings are looked up) does not hold another
    /// account's finding asked again (an administrator's note landed while it was looked up)
    /// behind it: each caller's (here one per account) are a turn of their own. In one turn for all, first in,
    /// first out, it came after all 100.
    #[test]
    fn one_accounts_findings_asked_again_do_not_hold_anothers_back() {
        let mut q = LookupQueue::default();
        let (a, b) = (w("222222222222"), w("333333333333"));
        q.push_back(&a, keys("a", 100));
        for k in keys("a-again", 100) {
            q.push_again(std::slice::from_ref(&a), k);
        }
        q.push_again(std::slice::from_ref(&b), FindingKey::new("b-again", "p"));
        let batches = drain(&mut q, 20);
        let at = batches
            .iter()
            .position(|b| b.iter().any(|id| id == "b-again"));
        assert!(
            at.is_some_and(|n| n <= 2),
            "served in batch {at:?} of {}",
            batches.len()
        );
        // Waited for by both: queued in each one's turn, taken once by the first to come.
        q.push_again(&[a.clone(), b.clone()], FindingKey::new("both", "p"));
        assert_eq!((q.entries(), q.callers()), (2, 0));
        assert_eq!(
            q.pop_front().map(|k| k.id.to_string()).as_deref(),
            Some("both")
        );
    }

    /// Two callers of one account take turns too: a playbook's one finding waits one batch
    /// behind a bulk job of another principal of its account, not its whole backlog.
    #[test]
    fn callers_of_one_account_take_turns() {
        let mut q = LookupQueue::default();
        q.push_back(&who("111111111111", "member-bulk"), keys("bulk", 100));
        q.push_back(&who("111111111111", "member-playbook"), keys("note", 1));
        assert_eq!(q.callers(), 2);
        let batches = drain(&mut q, 20);
        assert_eq!(batches[0].len(), 20);
        assert!(
            batches[0][..19].iter().all(|id| id.starts_with("bulk-")),
            "{:?}",
            batches[0]
        );
        assert_eq!(batches[0].len() + batches[1].len(), 40);
        assert!(
            batches[..2].concat().contains(&"note-0".to_string()),
            "the playbook's finding waited for the backlog: {batches:?}"
        );
    }

    /// Accounts take turns before their callers do: an account running ten busy principals
    /// gets one turn in two beside an account with one, not ten in eleven.
    #[test]
    fn an_account_with_many_callers_gets_no_more_turns_than_one_with_one() {
        let mut q = LookupQueue::default();
        for n in 0..10 {
            q.push_back(
                &who("111111111111", &format!("role-{n}")),
                keys(&format!("many{n}"), 40),
            );
        }
        q.push_back(&who("222222222222", "lone"), keys("lone", 100));
        let batches = drain(&mut q, 20);
        let lone: Vec<usize> = batches
            .iter()
            .enumerate()
            .filter(|(_, b)| b.iter().any(|id| id.starts_with("lone-")))
            .map(|(n, _)| n)
            .collect();
        // the lone account's 100 findings fill 5 batches, every other one from the second
        assert_eq!(lone, vec![1, 3, 5, 7, 9], "{batches:?}");
        // and the busy account's callers take turns among its own
        let firsts: Vec<String> = batches
            .iter()
            .filter(|b| b[0].starts_with("many"))
            .take(10)
            .map(|b| b[0].split('-').next().unwrap_or_default().to_string())
            .collect();
        let mut distinct = firsts.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 10, "{firsts:?}");
        assert!(q.accounts.is_empty());
    }
}
