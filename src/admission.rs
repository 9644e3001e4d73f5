//! Admission: each caller's share of the requests in flight. `server.max_in_flight` bounds
//! what hubgate holds at once; a share bounds what one caller may hold of it, so that one
//! caller waiting for quota, or sending its bodies slowly, cannot leave every other caller a
//! 503. A request takes its share once its head names a caller (before its body is read) and
//! keeps it for as long as it keeps its in-flight slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::identity::Principal;

/// A caller has its whole share in flight.
#[derive(Debug, thiserror::Error)]
#[error(
    "{caller} already has {limit} requests in flight, its share of hubgate \
     (server.max_in_flight_per_caller); retry later"
)]
pub struct CallerBusy {
    /// The caller as the client may be told of it before it is proven (`Claim::shown`).
    pub caller: String,
    pub limit: usize,
}

/// Requests in flight per caller (by principal id). An entry is kept at zero: callers come
/// from the callers file, so the map is bounded by it, and a request of a caller seen before
/// allocates nothing.
#[derive(Debug)]
pub struct Shares {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One request's place in its caller's share, given back when dropped.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    caller: Arc<Principal>,
}

impl Shares {
    pub fn new(limit: usize) -> Arc<Shares> {
        Arc::new(Shares {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more request of `caller`, or CallerBusy (naming the caller as `shown`
    /// says) when it has its whole share.
    pub fn take(
        self: &Arc<Self>,
        caller: &Arc<Principal>,
        shown: impl FnOnce() -> String,
    ) -> Result<Share, CallerBusy> {
        // A poisoned lock only means a panic elsewhere while counting: the counts are plain
        // integers, still meaningful.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = match held.get_mut(caller.id.as_str()) {
            Some(count) => count,
            None => held.entry(caller.id.clone()).or_insert(0),
        };
        if *count >= self.limit {
            return Err(CallerBusy {
                caller: shown(),
                limit: self.limit,
            });
        }
        *count += 1;
        Ok(Share {
            shares: self.clone(),
            caller: caller.clone(),
        })
    }

    /// Requests `caller` has in flight now.
    pub fn held(&self, caller: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(caller).copied().unwrap_or(0)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(self.caller.id.as_str()) {
            *count = count.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn caller(id: &str) -> Arc<Principal> {
        Arc::new(Principal {
            id: id.into(),
            account_id: "111111111111".into(),
            role: Role::Member,
            attributes: Default::default(),
        })
    }

    fn shown() -> String {
        "the caller of access key HGTESTMEMBER00000001".into()
    }

    #[test]
    fn a_caller_gets_its_share_and_no_more_and_others_are_not_touched() {
        let shares = Shares::new(2);
        let (a, b) = (caller("member"), caller("admin"));
        let first = shares.take(&a, shown).unwrap();
        let _second = shares.take(&a, shown).unwrap();
        let busy = shares.take(&a, shown).unwrap_err();
        assert_eq!(busy.limit, 2);
        assert!(
            busy.to_string()
                .contains("the caller of access key HGTESTMEMBER00000001 already has 2 requests"),
            "{busy}"
        );
        assert!(
            busy.to_string().contains("server.max_in_flight_per_caller"),
            "{busy}"
        );
        let _other = shares.take(&b, shown).unwrap();
        assert_eq!((shares.held("member"), shares.held("admin")), (2, 1));
        drop(first);
        assert_eq!(shares.held("member"), 1);
        let _again = shares.take(&a, shown).unwrap();
        assert_eq!(shares.held("member"), 2);
    }

    #[test]
    fn every_share_comes_back_when_its_requests_end() {
        let shares = Shares::new(3);
        let a = caller("member");
        let held: Vec<Share> = (0..3).map(|_| shares.take(&a, shown).unwrap()).collect();
        assert!(shares.take(&a, shown).is_err());
        drop(held);
        assert_eq!(shares.held("member"), 0);
        assert!(shares.take(&a, shown).is_ok());
    }
}
