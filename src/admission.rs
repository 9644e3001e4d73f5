//! Admission: each caller's share of the requests in flight and of their body bytes.
//! `server.max_in_flight` and `server.max_in_flight_body_bytes` bound what hubgate holds at
//! once; a share bounds what one caller may hold of each, so that one caller waiting for
//! quota, or sending its bodies slowly, cannot leave every other caller a 503. A request takes
//! its share once its head names a caller (before its body is read) and keeps it for as long
//! as it keeps its in-flight slot.
//!
//! Until the caller is proven (a SigV4 signature covers the body, which is not read yet), the
//! share it takes is the claimed caller's as seen from the request's peer address: any client
//! can name an access key id (no secret), and one taking the caller's own share that way held
//! it with 16 slow 1 MiB bodies, leaving the caller 503 for as long as it kept them (review
//! 54). Once proven, the request holds its caller's share instead.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Requests and body bytes in flight per caller (by principal id). A caller's entry is kept
/// at zero: callers come from the callers file, so the map is bounded by it, and a proven
/// request of a caller seen before allocates nothing. A peer address's entry goes at zero:
/// addresses are not bounded.
#[derive(Debug)]
pub struct Shares {
    limit: usize,
    /// Body bytes one caller's requests may declare together. Without it one member's 64
    /// requests of 1 MiB, its request share, held the whole 64 MiB cap, and every other
    /// caller's write got 503 for as long as it kept them (review 53).
    byte_limit: u64,
    held: Mutex<HashMap<String, Held>>,
}

/// One caller's requests in flight: those proven, and those still claimed, per peer address.
#[derive(Debug, Default)]
struct Held {
    proven: Count,
    claimed: HashMap<IpAddr, Count>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    requests: usize,
    bytes: u64,
}

impl Held {
    fn count(&mut self, from: Option<IpAddr>) -> &mut Count {
        match from {
            None => &mut self.proven,
            Some(ip) => self.claimed.entry(ip).or_default(),
        }
    }

    /// What a new request from `from` is weighed against: the proven requests, and with a
    /// claim, the claims from its address too. So one address holds at most one share of the
    /// caller's requests whether proven or not (a member's bodies waiting for lookups, or sent
    /// slowly, stop at a share as before), while claims from another address, which may be
    /// anyone's, take nothing of it.
    fn weighed(&self, from: Option<IpAddr>) -> Count {
        let claimed = from
            .and_then(|ip| self.claimed.get(&ip))
            .copied()
            .unwrap_or_default();
        Count {
            requests: self.proven.requests + claimed.requests,
            bytes: self.proven.bytes.saturating_add(claimed.bytes),
        }
    }
}

/// The address a claim is counted from: an IPv6 peer's /64, the block one host is usually
/// given (RFC 6177), so that a host cannot take a claim share per address of it (2^64 shares
/// of one caller's key id, enough for every slot of `server.max_in_flight`); an IPv4 peer as it
/// is, and an IPv4 peer seen through a dual-stack socket (`::ffff:a.b.c.d`) as that IPv4
/// address.
pub fn claim_source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// One request's place in a share, given back when dropped.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    caller: Arc<Principal>,
    /// The peer address of a request whose caller is not proven yet.
    from: Option<IpAddr>,
    bytes: u64,
}

impl Share {
    /// Whether this is a proven caller's place (not a claim's, by peer address).
    pub fn proven(&self) -> bool {
        self.from.is_none()
    }
}

impl Shares {
    pub fn new(limit: usize, byte_limit: u64) -> Arc<Shares> {
        Arc::new(Shares {
            limit,
            byte_limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more request of `caller`, declaring `bytes` of body: in the caller's
    /// share once it is proven (`from` None), else in the share of its claims from the peer
    /// address `from`. Refused (naming the caller as `shown` says) when that share has all its
    /// requests, or this request would take its body bytes past their share.
    pub fn take(
        self: &Arc<Self>,
        caller: &Arc<Principal>,
        from: Option<IpAddr>,
        bytes: u64,
        shown: impl FnOnce() -> String,
    ) -> Result<Share, ShareRefused> {
        // A poisoned lock only means a panic elsewhere while counting: the counts are plain
        // integers, still meaningful.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let held = match held.get_mut(caller.id.as_str()) {
            Some(held) => held,
            None => held.entry(caller.id.clone()).or_default(),
        };
        let weighed = held.weighed(from);
        if weighed.requests >= self.limit {
            return Err(CallerBusy {
                caller: shown(),
                limit: self.limit,
            }
            .into());
        }
        if weighed.bytes.saturating_add(bytes) > self.byte_limit {
            return Err(CallerBytesBusy {
                caller: shown(),
                held: weighed.bytes,
                asked: bytes,
                limit: self.byte_limit,
            }
            .into());
        }
        let count = held.count(from);
        count.requests += 1;
        count.bytes += bytes;
        Ok(Share {
            shares: self.clone(),
            caller: caller.clone(),
            from,
            bytes,
        })
    }

    /// What `caller`'s proven requests (`from` None), or its claims from `from`, hold now.
    fn now(&self, caller: &str, from: Option<IpAddr>) -> Count {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(held) = held.get(caller) else {
            return Count::default();
        };
        match from {
            None => held.proven,
            Some(ip) => held.claimed.get(&ip).copied().unwrap_or_default(),
        }
    }

    /// Proven requests `caller` has in flight now.
    pub fn held(&self, caller: &str) -> usize {
        self.now(caller, None).requests
    }

    /// Body bytes `caller`'s proven requests in flight declare now.
    pub fn held_bytes(&self, caller: &str) -> u64 {
        self.now(caller, None).bytes
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(held) = held.get_mut(self.caller.id.as_str()) else {
            return;
        };
        let count = held.count(self.from);
        count.requests = count.requests.saturating_sub(1);
        count.bytes = count.bytes.saturating_sub(self.bytes);
        if let Some(ip) = self.from.filter(|_| count.requests == 0) {
            held.claimed.remove(&ip);
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
        let first = shares.take(&a, None, 10, shown).unwrap();
        let _second = shares.take(&a, None, 10, shown).unwrap();
        let ShareRefused::Requests(busy) = shares.take(&a, None, 10, shown).unwrap_err() else {
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
        let _other = shares.take(&b, None, 10, shown).unwrap();
        assert_eq!((shares.held("member"), shares.held("admin")), (2, 1));
        drop(first);
        assert_eq!(shares.held("member"), 1);
        let _again = shares.take(&a, None, 10, shown).unwrap();
        assert_eq!(shares.held("member"), 2);
    }

    #[test]
    fn a_callers_body_bytes_stop_at_its_share_and_others_keep_theirs() {
        let shares = Shares::new(10, 1000);
        let (a, b) = (caller("member"), caller("admin"));
        let big = shares.take(&a, None, 600, shown).unwrap();
        let _small = shares.take(&a, None, 400, shown).unwrap();
        assert_eq!(shares.held_bytes("member"), 1000);
        match shares.take(&a, None, 1, shown).unwrap_err() {
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
        let _other = shares.take(&b, None, 1000, shown).unwrap();
        drop(big);
        assert_eq!(shares.held_bytes("member"), 400);
        assert!(shares.take(&a, None, 600, shown).is_ok());
    }

    /// Claims from one address take nothing from the caller's proven requests, nor from its
    /// claims from another address; an address's entry goes once its last claim ends.
    #[test]
    fn claims_from_another_address_take_nothing_of_the_callers_share() {
        let shares = Shares::new(2, 1000);
        let a = caller("admin");
        let (attacker, own): (IpAddr, IpAddr) =
            ("127.0.0.9".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let claims: Vec<Share> = (0..2)
            .map(|_| shares.take(&a, Some(attacker), 500, shown).unwrap())
            .collect();
        assert!(!claims[0].proven());
        assert!(matches!(
            shares.take(&a, Some(attacker), 1, shown),
            Err(ShareRefused::Requests(_))
        ));
        let mine = shares.take(&a, Some(own), 400, shown).unwrap();
        let proven = shares.take(&a, None, 400, shown).unwrap();
        assert!(proven.proven());
        assert_eq!((shares.held("admin"), shares.held_bytes("admin")), (1, 400));
        drop((claims, mine, proven));
        let held = shares.held.lock().unwrap();
        assert!(held["admin"].claimed.is_empty(), "{:?}", held["admin"]);
    }

    /// From one address, the caller's proven requests and its claims together stop at its
    /// share, in requests and in bytes: claiming again as each request is proven does not
    /// take a second share.
    #[test]
    fn one_address_holds_one_share_proven_or_not() {
        let shares = Shares::new(2, 1000);
        let a = caller("member");
        let own: IpAddr = "127.0.0.1".parse().unwrap();
        let proven = shares.take(&a, None, 600, shown).unwrap();
        match shares.take(&a, Some(own), 500, shown).unwrap_err() {
            ShareRefused::Bytes(e) => assert_eq!((e.held, e.asked), (600, 500)),
            other => panic!("{other}"),
        }
        let claim = shares.take(&a, Some(own), 400, shown).unwrap();
        assert!(matches!(
            shares.take(&a, Some(own), 0, shown),
            Err(ShareRefused::Requests(_))
        ));
        // Proven, the claim moves to the caller's share.
        let moved = shares.take(&a, None, 400, shown).unwrap();
        drop(claim);
        assert!(matches!(
            shares.take(&a, Some(own), 0, shown),
            Err(ShareRefused::Requests(_))
        ));
        drop((proven, moved));
        assert!(shares.take(&a, Some(own), 1000, shown).is_ok());
    }

    #[test]
    fn every_share_comes_back_when_its_requests_end() {
        let shares = Shares::new(3, 1 << 20);
        let a = caller("member");
        let held: Vec<Share> = (0..3)
            .map(|_| shares.take(&a, None, 7, shown).unwrap())
            .collect();
        assert!(shares.take(&a, None, 7, shown).is_err());
        drop(held);
        assert_eq!((shares.held("member"), shares.held_bytes("member")), (0, 0));
        assert!(shares.take(&a, None, 7, shown).is_ok());
    }

    #[test]
    fn claims_from_one_ipv6_64_are_counted_as_from_one_address() {
        let v6 = |s: &str| claim_source(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(
            v6("2001:db8:1:2:aaaa::1"),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(
            v6("::ffff:192.0.2.7"),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(v6("192.0.2.7"), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_ne!(v6("192.0.2.7"), v6("192.0.2.8"));
        // so the second address of a /64 finds the first's claims
        let shares = Shares::new(1, 1000);
        let a = caller("admin");
        let _held = shares.take(&a, Some(v6("2001:db8::1")), 10, shown).unwrap();
        assert!(shares.take(&a, Some(v6("2001:db8::2")), 10, shown).is_err());
        assert!(shares
            .take(&a, Some(v6("2001:db8:0:1::2")), 10, shown)
            .is_ok());
    }
}
