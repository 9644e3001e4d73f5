//! Admission: each caller's share of the requests in flight and of their body bytes.
//! `server.max_in_flight` and `server.max_in_flight_body_bytes` bound what hubgate holds at
//! once; a share bounds what one caller may hold of each, so that one caller waiting for
//! quota, or sending its bodies slowly, cannot leave every other caller a 503. A request takes
//! its share once its head names a caller (before its body is read) and keeps it for as long
//! as it keeps its in-flight slot.

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

/// A caller's requests in flight declare its whole share of the body bytes.
#[derive(Debug, thiserror::Error)]
#[error(
    "{caller} already has {held} body bytes in flight, and this request's {asked} would take it \
     past {limit}, its share of server.max_in_flight_body_bytes; retry later"
)]
pub struct CallerBytesBusy {
    pub caller: String,
    pub held: u64,
    pub asked: u64,
    pub limit: u64,
}

/// Why a caller's request gets no share.
#[derive(Debug, thiserror::Error)]
pub enum ShareRefused {
    #[error(transparent)]
    Requests(#[from] CallerBusy),
    #[error(transparent)]
    Bytes(#[from] CallerBytesBusy),
}

/// Requests and body bytes in flight per caller (by principal id). An entry is kept at zero:
/// callers come from the callers file, so the map is bounded by it, and a request of a caller
/// seen before allocates nothing.
#[derive(Debug)]
pub struct Shares {
    limit: usize,
    /// Body bytes one caller's requests may declare together. Without it one member's 64
    /// requests of 1 MiB, its request share, held the whole 64 MiB cap, and every other
    /// caller's write got 503 for as long as it kept them (review 53).
    byte_limit: u64,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    requests: usize,
    bytes: u64,
}

/// One request's place in its caller's share, given back when dropped.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    caller: Arc<Principal>,
    bytes: u64,
}

impl Shares {
    pub fn new(limit: usize, byte_limit: u64) -> Arc<Shares> {
        Arc::new(Shares {
            limit,
            byte_limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more request of `caller`, declaring `bytes` of body; refused (naming
    /// the caller as `shown` says) when the caller has its whole share of requests, or this
    /// request would take its body bytes past their share.
    pub fn take(
        self: &Arc<Self>,
        caller: &Arc<Principal>,
        bytes: u64,
        shown: impl FnOnce() -> String,
    ) -> Result<Share, ShareRefused> {
        // A poisoned lock only means a panic elsewhere while counting: the counts are plain
        // integers, still meaningful.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = match held.get_mut(caller.id.as_str()) {
            Some(count) => count,
            None => held.entry(caller.id.clone()).or_default(),
        };
        if count.requests >= self.limit {
            return Err(CallerBusy {
                caller: shown(),
                limit: self.limit,
            }
            .into());
        }
        if count.bytes.saturating_add(bytes) > self.byte_limit {
            return Err(CallerBytesBusy {
                caller: shown(),
                held: count.bytes,
                asked: bytes,
                limit: self.byte_limit,
            }
            .into());
        }
        count.requests += 1;
        count.bytes += bytes;
        Ok(Share {
            shares: self.clone(),
            caller: caller.clone(),
            bytes,
        })
    }

    /// Requests `caller` has in flight now.
    pub fn held(&self, caller: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(caller).map_or(0, |h| h.requests)
    }

    /// Body bytes `caller`'s requests in flight declare now.
    pub fn held_bytes(&self, caller: &str) -> u64 {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(caller).map_or(0, |h| h.bytes)
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
            count.requests = count.requests.saturating_sub(1);
            count.bytes = count.bytes.saturating_sub(self.bytes);
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
        let shares = Shares::new(2, 1000);
        let (a, b) = (caller("member"), caller("admin"));
        let first = shares.take(&a, 10, shown).unwrap();
        let _second = shares.take(&a, 10, shown).unwrap();
        let ShareRefused::Requests(busy) = shares.take(&a, 10, shown).unwrap_err() else {
            panic!("not refused for its requests");
        };
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
        let _other = shares.take(&b, 10, shown).unwrap();
        assert_eq!((shares.held("member"), shares.held("admin")), (2, 1));
        drop(first);
        assert_eq!(shares.held("member"), 1);
        let _again = shares.take(&a, 10, shown).unwrap();
        assert_eq!(shares.held("member"), 2);
    }

    #[test]
    fn a_callers_body_bytes_stop_at_its_share_and_others_keep_theirs() {
        let shares = Shares::new(10, 1000);
        let (a, b) = (caller("member"), caller("admin"));
        let big = shares.take(&a, 600, shown).unwrap();
        let _small = shares.take(&a, 400, shown).unwrap();
        assert_eq!(shares.held_bytes("member"), 1000);
        match shares.take(&a, 1, shown).unwrap_err() {
            ShareRefused::Bytes(e) => {
                assert_eq!((e.held, e.asked, e.limit), (1000, 1, 1000));
                let text = e.to_string();
                assert!(
                    text.contains("HGTESTMEMBER00000001 already has 1000 body bytes"),
                    "{text}"
                );
                assert!(text.contains("server.max_in_flight_body_bytes"), "{text}");
            }
            other => panic!("{other}"),
        }
        // A refused request takes nothing; another caller has its whole share.
        assert_eq!(
            (shares.held("member"), shares.held_bytes("member")),
            (2, 1000)
        );
        let _other = shares.take(&b, 1000, shown).unwrap();
        drop(big);
        assert_eq!(shares.held_bytes("member"), 400);
        assert!(shares.take(&a, 600, shown).is_ok());
    }

    #[test]
    fn every_share_comes_back_when_its_requests_end() {
        let shares = Shares::new(3, 1 << 20);
        let a = caller("member");
        let held: Vec<Share> = (0..3).map(|_| shares.take(&a, 7, shown).unwrap()).collect();
        assert!(shares.take(&a, 7, shown).is_err());
        drop(held);
        assert_eq!((shares.held("member"), shares.held_bytes("member")), (0, 0));
        assert!(shares.take(&a, 7, shown).is_ok());
    }
}
