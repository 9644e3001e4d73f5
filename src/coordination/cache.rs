//! The shared finding-state cache: entries in Redis with the local cache's TTLs, written by
//! lookups and by forwarded writes, and a claim per finding so that one replica looks it up
//! while the others wait for its answer.
//!
//! Keys (P the key prefix, g the generation, h a hash of Id and ProductArn):
//! - `P:gen`      the generation; a write of unknown scope starts a new one, which retires
//!   every entry at once (they expire on their own).
//! - `P:f:g:h`    the state: a 16-character tag, the time (Redis's clock, ms, 13 digits) its
//!   lookup was claimed, the owner account (its length in 2 digits, then the account; none
//!   for a finding not found), then JSON. The tag names one stored value, so a replica can ask
//!   "is it still the one I hold?" without fetching it, and a write-through replaces only the
//!   value its state was computed from (keeping its read time).
//! - `P:ar:a`     when findings of account a were last retired (Redis's clock, ms): an entry
//!   of a's read at or before then is dead, so a write to one account's findings (a V2
//!   write's account) retires only that account's shared entries, not every account's.
//! - `P:v:g:h`    the finding's write count. A lookup stores what it read only if no write
//!   came in between (as the local cache's generation check does).
//! - `P:l:g:h`    a replica's claim on looking the finding up: its token (`Claims`), so that
//!   only the replica holding it releases it.
//! - `P:jp:h`     the settle journal's change to the finding (see `enrich::settle`), composed
//!   from every replica's writes: a list of `Patch::items`, each after the time (Redis's
//!   clock, ms) of the write that set it; an item leaves the window with its own write, the
//!   list `settle_ms` after the last. Not in a generation: retiring the cache does not undo
//!   a write.
//! - `P:ju:h`     the last write to it hubgate could not model, by operation (same expiry).
//! - `P:jo:h`     per account, the last such write limited to that account (an import's
//!   claim): a hash of account to the time and operation; it clears nothing else.
//! - `P:ja:a`     the last write that may have changed any finding of account a.
//! - `P:jall`     the last write that may have changed any finding, by operation.
//! - `P:epoch`    a marker the probe sets when it finds none (`coordination::probe`): gone or
//!   changed, Redis has lost what the replicas shared, and each shares its journal again.
//!
//! The scripts touch keys they compute, which a Redis Cluster would refuse: a single primary
//! (ElastiCache without cluster mode, Valkey, Redis) is what this is written for.

use std::sync::Arc;
use std::time::Instant;

use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Coordination;
use crate::finding::FindingKey;
use crate::policy::state::CurrentFinding;

/// How long a finding's write count outlives its last write: longer than any lookup may take
/// (requests give up at quota.max_wait_ms), so a lookup that began before a write can never
/// see the count as it was.
const VERSION_TTL_MS: u64 = 600_000;

/// The Lua function the scripts reading entries share: an entry whose owner account was
/// retired at or after its read is dead; so is one this version cannot read.
macro_rules! live_fn {
    () => {
        r#"
local function live(p, v)
  local at, n = tonumber(string.sub(v, 17, 29)), tonumber(string.sub(v, 30, 31))
  if not at or not n then return false end
  if n == 0 then return true end
  local r = redis.call('GET', p .. ':ar:' .. string.sub(v, 32, 31 + n))
  return not (r and tonumber(r) and tonumber(r) >= at)
end
"#
    };
}

const LOOKUP: &str = concat!(
    live_fn!(),
    r#"
local g = redis.call('GET', KEYS[1]) or '0'
local out = {}
for i = 2, #ARGV, 2 do
  local v = redis.call('GET', ARGV[1] .. ':f:' .. g .. ':' .. ARGV[i])
  if v and not live(ARGV[1], v) then v = false end
  if v and ARGV[i + 1] ~= '' and string.sub(v, 1, 16) == ARGV[i + 1] then v = '=' end
  out[#out + 1] = v
end
return out
"#
);

// Returns the generation and the claim's time (`g/ms`, what `store` is given back), then
// per finding its answer.
const CLAIM: &str = concat!(
    live_fn!(),
    r#"
local g = redis.call('GET', KEYS[1]) or '0'
local t = redis.call('TIME')
local out = {g .. '/' .. (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
for i = 4, #ARGV do
  local base = ':' .. g .. ':' .. ARGV[i]
  local v = redis.call('GET', ARGV[1] .. ':f' .. base)
  if v and not live(ARGV[1], v) then v = false end
  if v then
    out[#out + 1] = 'V' .. v
  elseif redis.call('SET', ARGV[1] .. ':l' .. base, ARGV[3], 'NX', 'PX', ARGV[2]) then
    out[#out + 1] = 'C' .. (redis.call('GET', ARGV[1] .. ':v' .. base) or '0')
  else
    out[#out + 1] = 'B'
  end
end
return out
"#
);

// The value's read time is the claim's (`g/ms`, as `claim` returned it). ARGV: prefix, that,
// this replica's claim token, then per finding its hash, write count, TTL and value.
const STORE: &str = r#"
local g = redis.call('GET', KEYS[1]) or '0'
local cg, at = string.match(ARGV[2], '^(.*)/(%d+)$')
local out = {}
for i = 4, #ARGV, 4 do
  local base = ':' .. g .. ':' .. ARGV[i]
  local stored = 0
  if at and g == cg then
    local v = redis.call('GET', ARGV[1] .. ':v' .. base) or '0'
    local value = ARGV[i + 3]
    if v == ARGV[i + 1] and #value > 31 then
      value = string.sub(value, 1, 16) .. string.rep('0', 13 - #at) .. at .. string.sub(value, 30)
      redis.call('SET', ARGV[1] .. ':f' .. base, value, 'PX', ARGV[i + 2])
      stored = 1
    end
    -- Only this replica's: a claim that outlived lookup_claim_ms may be another's by now.
    if redis.call('GET', ARGV[1] .. ':l' .. base) == ARGV[3] then
      redis.call('DEL', ARGV[1] .. ':l' .. base)
    end
  end
  out[#out + 1] = stored
end
return out
"#;

// ARGV: prefix, this replica's claim token, then claims (`g:h`). Deletes those still its own.
const RELEASE: &str = r#"
for i = 3, #ARGV do
  local k = ARGV[1] .. ':l:' .. ARGV[i]
  if redis.call('GET', k) == ARGV[2] then redis.call('DEL', k) end
end
return 1
"#;

const WRITE: &str = concat!(
    live_fn!(),
    r#"
local g = redis.call('GET', KEYS[1]) or '0'
local out = {}
for i = 3, #ARGV, 3 do
  local base = ':' .. g .. ':' .. ARGV[i]
  local vk = ARGV[1] .. ':v' .. base
  redis.call('INCR', vk)
  redis.call('PEXPIRE', vk, ARGV[2])
  local fk = ARGV[1] .. ':f' .. base
  local cur = redis.call('GET', fk)
  local left = -1
  if ARGV[i + 2] ~= '' and ARGV[i + 1] ~= '' and cur and string.sub(cur, 1, 16) == ARGV[i + 1]
     and live(ARGV[1], cur) then
    left = redis.call('PTTL', fk)
  end
  if left > 0 and #ARGV[i + 2] > 31 then
    -- as old as the read it was computed from
    local value = string.sub(ARGV[i + 2], 1, 16) .. string.sub(cur, 17, 29) .. string.sub(ARGV[i + 2], 30)
    redis.call('SET', fk, value, 'PX', left)
    out[#out + 1] = 1
  else
    redis.call('DEL', fk)
    out[#out + 1] = 0
  end
end
return out
"#
);

// ARGV: prefix, how long the mark must last (ms), then accounts.
const RETIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 3, #ARGV do redis.call('SET', ARGV[1] .. ':ar:' .. ARGV[i], now, 'PX', ARGV[2]) end
return 1
"#;

// ARGV: prefix, settle_ms, kind (P: a change, U: a write hubgate cannot model, C: one to
// any finding of some accounts, A: one to any finding), operation, n, then n finding hashes
// (n accounts for C) and what follows: for P the change's items, for U one value per
// finding. An item replaces earlier ones with its path, and a whole member (`s/<member>`)
// every earlier item under it: `Patch::then`.
//
// For P, the operation's place holds how long ago (ms) the write was sent. Two writes to one
// finding in flight at once, through two replicas, that set a fact (`f/…`, `r`) to different
// values may be applied by Security Hub in either order, whatever order they were answered
// (and shared) in: composed in the order shared, an administrator's LOW answered after their
// CRITICAL sent later left LOW in the journal over Security Hub's CRITICAL, and a member's
// HIGH was judged no lowering. An item shared after this write was sent came from a write
// answered while this one was in flight: if it sets a fact this write sets to another value,
// the finding is journaled as unknown (`BatchUpdateFindings`), as `Sending::contested` does
// on one replica.
const JOURNAL_WRITE: &str = r#"
local p, ttl, kind, op, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if kind == 'A' then
  redis.call('SET', p .. ':jall', op, 'PX', ttl)
  return 1
end
if kind == 'C' then
  for i = 6, 5 + n do redis.call('SET', p .. ':ja:' .. ARGV[i], op, 'PX', ttl) end
  return 1
end
local items = {}
local paths = {}
for i = 6 + n, #ARGV do
  items[#items + 1] = ARGV[i]
  paths[#paths + 1] = string.match(ARGV[i], '^[^	]*')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function replaced(item)
  local q = string.match(item, '^[^	]*')
  for _, path in ipairs(paths) do
    if q == path then return true end
    if string.sub(path, 1, 2) == 's/' and not string.find(path, '/', 3, true)
       and string.sub(q, 1, #path + 1) == path .. '/' then return true end
  end
  return false
end
local sent = nil
if kind == 'P' and (tonumber(op) or 0) > 0 then sent = now - tonumber(op) end
local function conflicts(item)
  local q = string.match(item, '^[^	]*')
  if q ~= 'r' and string.sub(q, 1, 2) ~= 'f/' then return false end
  for j, path in ipairs(paths) do
    if q == path and items[j] ~= item then return true end
  end
  return false
end
for i = 6, 5 + n do
  local h = ARGV[i]
  if kind == 'U' then
    local account = ARGV[i + n]
    if account == '' then
      redis.call('SET', p .. ':ju:' .. h, op, 'PX', ttl)
      redis.call('DEL', p .. ':jp:' .. h)
    else
      redis.call('HSET', p .. ':jo:' .. h, account, now .. '	' .. op)
      redis.call('PEXPIRE', p .. ':jo:' .. h, ttl)
    end
  else
    local key = p .. ':jp:' .. h
    local kept = {}
    local contested = false
    for _, stored in ipairs(redis.call('LRANGE', key, 0, -1)) do
      local at, item = string.match(stored, '^(%d+)	(.*)$')
      if at and tonumber(at) > now - tonumber(ttl) then
        if sent and tonumber(at) >= sent and conflicts(item) then contested = true end
        if not replaced(item) then kept[#kept + 1] = stored end
      end
    end
    redis.call('DEL', key)
    if contested then
      redis.call('SET', p .. ':ju:' .. h, 'BatchUpdateFindings', 'PX', ttl)
    else
      for _, stored in ipairs(kept) do redis.call('RPUSH', key, stored) end
      for _, item in ipairs(items) do redis.call('RPUSH', key, now .. '	' .. item) end
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
return 1
"#;

// ARGV: prefix, settle_ms, n, n finding hashes, then accounts. Returns the operation and
// milliseconds left of the last write to any finding ('' and '0' if none), then per finding
// the same for its last write hubgate could not model, the number of its writes limited to
// an account still in the window and for each the account, operation and milliseconds left,
// the number of its change's items still in the window (each is stored after the time it
// was written, and leaves the window with its own write) and those items; then per account
// the same as for any finding.
const JOURNAL_READ: &str = r#"
local p, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {redis.call('GET', p .. ':jall') or '', tostring(redis.call('PTTL', p .. ':jall'))}
for i = 4, 3 + n do
  local h = ARGV[i]
  out[#out + 1] = redis.call('GET', p .. ':ju:' .. h) or ''
  out[#out + 1] = tostring(redis.call('PTTL', p .. ':ju:' .. h))
  local owned = redis.call('HGETALL', p .. ':jo:' .. h)
  local live = {}
  for j = 1, #owned, 2 do
    local at, op = string.match(owned[j + 1], '^(%d+)	(.*)$')
    if at and tonumber(at) > now - ttl then
      live[#live + 1] = owned[j]
      live[#live + 1] = op
      live[#live + 1] = tostring(tonumber(at) + ttl - now)
    end
  end
  out[#out + 1] = tostring(#live / 3)
  for _, v in ipairs(live) do out[#out + 1] = v end
  local items = {}
  for _, stored in ipairs(redis.call('LRANGE', p .. ':jp:' .. h, 0, -1)) do
    local at, item = string.match(stored, '^(%d+)	(.*)$')
    if at and tonumber(at) > now - ttl then items[#items + 1] = item end
  end
  out[#out + 1] = tostring(#items)
  for _, item in ipairs(items) do out[#out + 1] = item end
end
for i = 4 + n, #ARGV do
  out[#out + 1] = redis.call('GET', p .. ':ja:' .. ARGV[i]) or ''
  out[#out + 1] = tostring(redis.call('PTTL', p .. ':ja:' .. ARGV[i]))
end
return out
"#;

fn script(which: &'static str) -> &'static Script {
    use std::sync::OnceLock;
    static S: [OnceLock<Script>; 8] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let (i, code) = match which {
        "lookup" => (0, LOOKUP),
        "claim" => (1, CLAIM),
        "store" => (2, STORE),
        "journal_write" => (4, JOURNAL_WRITE),
        "journal_read" => (5, JOURNAL_READ),
        "retire" => (6, RETIRE),
        "release" => (7, RELEASE),
        _ => (3, WRITE),
    };
    S[i].get_or_init(|| Script::new(code))
}

/// Names one stored value.
pub type Tag = String;

pub fn new_tag() -> Tag {
    format!("{:016x}", rand::random::<u64>())
}

/// A finding's key in Redis: a hash, since Ids and ARNs are long and may hold any character.
pub fn hash(key: &FindingKey) -> String {
    let mut h = Sha256::new();
    h.update((key.id.len() as u64).to_be_bytes());
    h.update(key.id.as_bytes());
    h.update(key.product_arn.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The fields policies read, as the local cache holds them.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(rename = "a")]
    account_id: Option<Arc<str>>,
    #[serde(rename = "r")]
    severity_rank: Option<u64>,
    /// Read by JSON meaning (`PlainValue`): the entry holds map keys members chose.
    #[serde(rename = "e", deserialize_with = "plain_value")]
    entry: regorus::Value,
}

fn plain_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<regorus::Value, D::Error> {
    crate::policy::input::PlainValue::deserialize(d).map(|p| p.0)
}

/// The header's read time before `store` (or a write-through) sets it.
const UNREAD: &[u8; 13] = b"0000000000000";

/// A stored value: tag, read time (set in Redis), owner account, then the state as JSON
/// (`null`: Security Hub does not have it).
pub fn encode(tag: &str, state: Option<&CurrentFinding>) -> Vec<u8> {
    let mut out = tag.as_bytes().to_vec();
    out.extend_from_slice(UNREAD);
    let account = match state {
        None => "",
        Some(f) => match f.account_id.as_deref() {
            // No account is that long, and a finding must have one: an entry that could not be
            // retired with its account is not stored.
            Some(a) if !a.is_empty() && a.len() <= 99 => a,
            _ => return Vec::new(),
        },
    };
    out.extend_from_slice(format!("{:02}", account.len()).as_bytes());
    out.extend_from_slice(account.as_bytes());
    let json = match state {
        None => Ok(b"null".to_vec()),
        Some(f) => serde_json::to_vec(&Stored {
            account_id: f.account_id.clone(),
            severity_rank: f.severity_rank,
            entry: f.entry.clone(),
        }),
    };
    match json {
        Ok(j) => out.extend_from_slice(&j),
        // Nothing storable: an empty value decodes as unusable, i.e. a miss.
        Err(_) => out.clear(),
    }
    out
}

/// A value read from Redis: (tag, state). None when it cannot be read, which callers treat
/// as a miss: a value this replica cannot parse never judges anything.
pub fn decode(bytes: &[u8]) -> Option<(Tag, Option<Arc<CurrentFinding>>)> {
    let tag = std::str::from_utf8(bytes.get(..16)?).ok()?.to_string();
    let n: usize = std::str::from_utf8(bytes.get(29..31)?).ok()?.parse().ok()?;
    let json = bytes.get(31 + n..)?;
    let stored: Option<Stored> = serde_json::from_slice(json).ok()?;
    let state = stored.map(|s| {
        Arc::new(CurrentFinding::from_shared(
            s.entry,
            s.account_id,
            s.severity_rank,
            json.len() * 2,
        ))
    });
    Some((tag, state))
}

/// What the shared cache holds for one finding, against what the asker holds.
pub enum Looked {
    /// The value the asker named by its tag is still the shared one.
    Same,
    Value(Tag, Option<Arc<CurrentFinding>>),
    Miss,
}

/// The shared state of `keys`, each with the tag of the value the asker already holds.
/// None: Redis is not in use.
pub async fn lookup(
    coord: &Coordination,
    keys: &[(&FindingKey, Option<&str>)],
) -> Option<Vec<Looked>> {
    let mut inv = script("lookup").prepare_invoke();
    inv.key(format!("{}:gen", coord.prefix()))
        .arg(coord.prefix());
    for (key, tag) in keys {
        inv.arg(hash(key)).arg(tag.unwrap_or(""));
    }
    let raw: Vec<Option<Vec<u8>>> = coord
        .call("cache_lookup", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await?;
    Some(
        raw.into_iter()
            .map(|v| match v {
                Some(v) if v == b"=" => Looked::Same,
                Some(v) => match decode(&v) {
                    Some((tag, state)) => Looked::Value(tag, state),
                    None => Looked::Miss,
                },
                None => Looked::Miss,
            })
            .collect(),
    )
}

/// One finding's answer to a claim.
pub enum Claim {
    /// Another replica stored it meanwhile.
    Cached(Tag, Option<Arc<CurrentFinding>>),
    /// This replica looks it up; the write count to store against.
    Mine(String),
    /// Another replica is looking it up.
    Busy,
}

/// The lookup claims one replica holds. A claim left in Redis holds every other replica's
/// lookup of its finding off for `lookup_claim_ms`: each is released when its lookup ends,
/// answered or not (`store`), once no request waits for its lookup or the lookup is dropped
/// before it is sent (`release`), and all of them when the replica stops (`release_all`),
/// each only if it is still this replica's (its token).
pub struct Claims {
    token: String,
    /// `g:h` of each claim taken and not yet released, with when it was taken.
    held: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Set by `release_all`: a replica that is stopping takes no more claims (it looks up
    /// without one), so none is left behind it.
    closed: std::sync::atomic::AtomicBool,
    /// Claim calls under way (`Taking`). What such a call takes is known only from its
    /// answer: `release_all` waits for them to end before it reads `held`. It used to read
    /// `held` while a claim was in Redis and its answer on the way, so that claim was learnt
    /// of after the release, and the runtime's end cut the lookup off: the other replicas
    /// waited it out (lookup_claim_ms).
    taking: std::sync::atomic::AtomicUsize,
    taken: tokio::sync::Notify,
}

/// A claim call under way, from before it checks `closed` until it has added what it took to
/// `held` (or failed, or was dropped).
struct Taking<'a>(&'a Claims);

impl<'a> Taking<'a> {
    /// None once the claims are closed. Counted before `closed` is read (and `release_all`
    /// sets `closed` before it reads the count), so either this call sees the claims closed
    /// or `release_all` waits for it.
    fn begin(claims: &'a Claims) -> Option<Taking<'a>> {
        use std::sync::atomic::Ordering::SeqCst;
        claims.taking.fetch_add(1, SeqCst);
        let taking = Taking(claims);
        (!claims.closed.load(SeqCst)).then_some(taking)
    }
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        if self
            .0
            .taking
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.taken.notify_waiters();
        }
    }
}

impl Default for Claims {
    fn default() -> Claims {
        Claims {
            token: format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
            held: Default::default(),
            closed: Default::default(),
            taking: Default::default(),
            taken: Default::default(),
        }
    }
}

impl Claims {
    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records claims just taken. Those older than `expiry` have expired in Redis: forgotten
    /// here too, so that a path that never ends its claim cannot grow the set for good.
    fn add(&self, bases: impl IntoIterator<Item = String>, expiry: std::time::Duration) {
        let now = std::time::Instant::now();
        let mut held = self.held();
        held.retain(|_, at| now.duration_since(*at) < expiry);
        held.extend(bases.into_iter().map(|b| (b, now)));
    }

    /// Those of `bases` this replica holds. They stay held until the call that releases them
    /// has ended (`forget`): a stop's `release_all` that ran while such a call was in flight
    /// found them gone and released nothing, and the runtime's end then cut the call off,
    /// leaving the claims to expire (seen in CI: the other replica waited 5.8 s).
    fn held_of(&self, bases: impl IntoIterator<Item = String>) -> Vec<(String, Instant)> {
        let held = self.held();
        bases
            .into_iter()
            .filter_map(|b| held.get(&b).copied().map(|at| (b, at)))
            .collect()
    }

    /// Forgets `claims`, whose release has ended (a second release of one is harmless), each
    /// only if it was not taken again meanwhile: a release of a dropped lookup's claim that
    /// ended after this replica had claimed the finding anew forgot the new claim, and a stop
    /// then left it to expire.
    fn forget(&self, claims: &[(String, Instant)]) {
        let mut held = self.held();
        for (base, at) in claims {
            if held.get(base) == Some(at) {
                held.remove(base);
            }
        }
    }

    /// Closes the claims (no more are taken) and resolves once no claim call is under way:
    /// `held` is then every claim this replica has in Redis (but one whose call failed
    /// without an answer, which expires).
    async fn close(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.closed.store(true, SeqCst);
        loop {
            let notified = self.taken.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read, so a last call ending in between wakes it.
            notified.as_mut().enable();
            if self.taking.load(SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A claim's Redis key without prefix and kind: the generation (of `g/ms`) and the hash.
fn claim_base(generation: &str, key: &FindingKey) -> String {
    let g = generation.rsplit_once('/').map_or(generation, |(g, _)| g);
    format!("{g}:{}", hash(key))
}

/// Claims the lookup of `keys`. Returns the generation (for `store`) and one answer per key.
pub async fn claim(coord: &Coordination, keys: &[FindingKey]) -> Option<(String, Vec<Claim>)> {
    // Held until what the call took is in `held`, whichever way this returns.
    let _taking = Taking::begin(&coord.claims)?;
    let mut inv = script("claim").prepare_invoke();
    inv.key(format!("{}:gen", coord.prefix()))
        .arg(coord.prefix())
        .arg(coord.lookup_claim.as_millis() as u64)
        .arg(&coord.claims.token);
    for key in keys {
        inv.arg(hash(key));
    }
    let raw: Vec<Vec<u8>> = coord
        .call("cache_claim", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await?;
    let mut raw = raw.into_iter();
    let generation = String::from_utf8(raw.next()?).ok()?;
    let answers = raw
        .map(|v| match v.split_first() {
            Some((b'V', rest)) => match decode(rest) {
                Some((tag, state)) => Claim::Cached(tag, state),
                // Unreadable: look it up without storing over it.
                None => Claim::Mine(String::new()),
            },
            Some((b'C', rest)) => Claim::Mine(String::from_utf8_lossy(rest).into_owned()),
            _ => Claim::Busy,
        })
        .collect::<Vec<_>>();
    if answers.len() != keys.len() {
        return None;
    }
    coord.claims.add(
        keys.iter()
            .zip(&answers)
            .filter(|(_, a)| matches!(a, Claim::Mine(v) if !v.is_empty()))
            .map(|(key, _)| claim_base(&generation, key)),
        coord.lookup_claim,
    );
    Some((generation, answers))
}

/// Releases this replica's claims on `keys` (taken in `generation`) whose lookup nobody waits
/// for: the other replicas look the findings up at once instead of waiting the claims out.
pub async fn release(coord: &Coordination, generation: &str, keys: &[FindingKey]) {
    let bases = coord
        .claims
        .held_of(keys.iter().map(|k| claim_base(generation, k)));
    release_bases(coord, &bases, Stopping::No).await;
    coord.claims.forget(&bases);
}

/// Releases every claim this replica holds and takes no more: the replica is stopping, and
/// the lookups behind them end with it.
pub async fn release_all(coord: &Coordination) {
    // Each claim call is bounded by op_timeout (and, after a halt, by its Redis cut-off);
    // this bound is a backstop.
    let _ = tokio::time::timeout(coord.op_timeout(), coord.claims.close()).await;
    let bases: Vec<(String, Instant)> = coord.claims.held().drain().collect();
    release_bases(coord, &bases, Stopping::Yes).await;
}

/// Whether the replica is stopping: its release of claims is then tried even while it is on
/// its own (`Coordination::call_regardless`).
enum Stopping {
    Yes,
    No,
}

/// Releases `claims` (their bases, with when each was taken) if still this replica's in Redis.
async fn release_bases(coord: &Coordination, claims: &[(String, Instant)], stopping: Stopping) {
    if claims.is_empty() {
        return;
    }
    let mut inv = script("release").prepare_invoke();
    inv.arg(coord.prefix()).arg(&coord.claims.token);
    for (base, _) in claims {
        inv.arg(base);
    }
    // Best effort, within op_timeout: a claim not released expires with lookup_claim_ms.
    let call =
        |mut con: redis::aio::ConnectionManager| async move { inv.invoke_async(&mut con).await };
    let _: Option<i64> = match stopping {
        Stopping::Yes => coord.call_regardless("cache_release", call).await,
        Stopping::No => coord.call("cache_release", call).await,
    };
}

/// One looked-up finding to store: (key, write count at claim time, TTL, encoded value).
pub struct ToStore<'a> {
    pub key: &'a FindingKey,
    pub version: &'a str,
    pub ttl_ms: u64,
    pub value: Vec<u8>,
}

/// Stores what a claimed lookup read, for each finding no write came in for since the claim;
/// releases the claims. Returns, per finding, whether it was stored.
pub async fn store(
    coord: &Coordination,
    generation: &str,
    items: Vec<ToStore<'_>>,
) -> Option<Vec<bool>> {
    let bases = coord
        .claims
        .held_of(items.iter().map(|i| claim_base(generation, i.key)));
    let mut inv = script("store").prepare_invoke();
    inv.key(format!("{}:gen", coord.prefix()))
        .arg(coord.prefix())
        .arg(generation)
        .arg(&coord.claims.token);
    for item in &items {
        inv.arg(hash(item.key))
            .arg(item.version)
            .arg(item.ttl_ms.max(1))
            .arg(&item.value[..]);
    }
    let raw: Option<Vec<i64>> = coord
        .call("cache_store", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await;
    coord.claims.forget(&bases);
    Some(raw?.into_iter().map(|n| n == 1).collect())
}

/// One write's effect on a finding: the new value, valid only over the value tagged
/// `expected`; otherwise (or with no value) the shared entry is evicted. The new value keeps
/// the old one's remaining TTL: it is as old as the read it was computed from.
pub struct ToWrite<'a> {
    pub key: &'a FindingKey,
    pub expected: Option<&'a str>,
    pub value: Option<Vec<u8>>,
}

/// Applies a forwarded write to the shared cache. Returns, per finding, whether the new value
/// was written (false: evicted). None: Redis is not in use, and the replica is marked so that
/// it retires the whole shared cache before it uses it again.
pub async fn write(coord: &Coordination, items: Vec<ToWrite<'_>>) -> Option<Vec<bool>> {
    if items.is_empty() {
        return Some(Vec::new());
    }
    let mut inv = script("write").prepare_invoke();
    inv.key(format!("{}:gen", coord.prefix()))
        .arg(coord.prefix())
        .arg(VERSION_TTL_MS);
    for item in &items {
        inv.arg(hash(item.key))
            .arg(item.expected.unwrap_or(""))
            .arg(item.value.as_deref().unwrap_or(b""));
    }
    let written: Vec<i64> = coord
        .call_write("cache_write", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await?;
    Some(written.into_iter().map(|n| n == 1).collect())
}

/// Retires every shared entry: for writes hubgate cannot map to findings.
pub async fn evict_all(coord: &Coordination) {
    let prefix = coord.prefix().to_string();
    coord
        .call_write("cache_evict_all", |mut con| async move {
            new_generation(&mut con, &prefix).await
        })
        .await;
}

/// How long a retirement's mark lasts: longer than any entry read before it can live on any
/// replica. Not the writer's own cache_ttl_ms: replicas part-way through a change of it do not
/// share one, and an entry a replica with a longer one had stored came back to life when the
/// mark expired (review 45). The margin covers the replicas' and Redis's clocks reading apart.
const RETIREMENT_MS: u64 = crate::config::MAX_TIMEOUT_MS + 5_000;

/// Retires the shared entries of these accounts' findings read before now: for writes that may
/// have changed any of their findings (a V2 write names accounts). A failure marks the replica,
/// as `evict_all`'s does.
pub async fn retire_accounts(coord: &Coordination, accounts: &[String]) {
    if accounts.is_empty() {
        return;
    }
    let mut inv = script("retire").prepare_invoke();
    inv.arg(coord.prefix()).arg(RETIREMENT_MS);
    for account in accounts {
        inv.arg(account.as_str());
    }
    let _: Option<i64> = coord
        .call_write("cache_retire_accounts", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await;
}

pub(crate) async fn new_generation(
    con: &mut redis::aio::ConnectionManager,
    prefix: &str,
) -> redis::RedisResult<i64> {
    redis::cmd("INCR")
        .arg(format!("{prefix}:gen"))
        .query_async(con)
        .await
}

/// One write, for the replicas' settle journal.
pub enum Journaled<'a> {
    /// A change to these findings, as `Patch::items`, by a write sent this many milliseconds
    /// ago (0: none of its writes is to be checked against, as for a journal shared again):
    /// an earlier change to one of the findings setting a fact to another value and shared
    /// since then was in flight beside it, on whichever replica, and the finding's state is
    /// unknown instead (`JOURNAL_WRITE`).
    Change(&'a [FindingKey], &'a [String], u64),
    /// A write to these findings hubgate cannot model, by operation; each limited to the
    /// account at its position, if any. A scope, not a claim: an account id as AWS writes one
    /// (`Unapplied::import_account`), so that a claim another replica would not scope by
    /// (`"222222222222 "`) reaches Redis as no account, whoever owns the finding.
    Unknown(
        &'a [FindingKey],
        &'static str,
        Option<&'a [Option<Arc<str>>]>,
    ),
    /// A write that may have changed any finding of these accounts, by operation.
    Accounts(&'a [String], &'static str),
    /// A write that may have changed any finding, by operation.
    Everything(&'static str),
}

/// Adds a write to the shared settle journal, kept `settle_ms` from now. A failure marks the
/// replica, as a failed cache write does: the other replicas may not have learnt of it.
/// Returns whether Redis took it (nothing to write counts as taken).
pub async fn journal_write(coord: &Coordination, settle_ms: u64, write: Journaled<'_>) -> bool {
    let mut inv = script("journal_write").prepare_invoke();
    inv.arg(coord.prefix()).arg(settle_ms.max(1));
    match write {
        Journaled::Change(keys, items, in_flight_ms) => {
            if keys.is_empty() {
                return true;
            }
            inv.arg("P").arg(in_flight_ms).arg(keys.len());
            for key in keys {
                inv.arg(hash(key));
            }
            for item in items {
                inv.arg(item.as_str());
            }
        }
        Journaled::Unknown(keys, operation, accounts) => {
            if keys.is_empty() {
                return true;
            }
            inv.arg("U").arg(operation).arg(keys.len());
            for key in keys {
                inv.arg(hash(key));
            }
            for i in 0..keys.len() {
                inv.arg(
                    accounts
                        .and_then(|a| a.get(i))
                        .and_then(Option::as_deref)
                        .filter(|a| crate::finding::is_account_id(a))
                        .unwrap_or(""),
                );
            }
        }
        Journaled::Accounts(accounts, operation) => {
            if accounts.is_empty() {
                return true;
            }
            inv.arg("C").arg(operation).arg(accounts.len());
            for account in accounts {
                inv.arg(account.as_str());
            }
        }
        Journaled::Everything(operation) => {
            inv.arg("A").arg(operation).arg(0);
        }
    }
    let done: Option<i64> = coord
        .call_write("journal_write", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await;
    done.is_some()
}

/// A write in the shared journal that hubgate cannot model: (operation, milliseconds left).
pub type UnknownWrite = (String, u64);

/// What the shared settle journal holds for some findings.
pub struct JournalRead {
    /// The last write that may have changed any finding, if in its window.
    pub everything: Option<UnknownWrite>,
    /// Per finding, in the order asked.
    pub findings: Vec<JournalFinding>,
    /// Per account, in the order asked: the last write that may have changed any of its
    /// findings.
    pub accounts: Vec<Option<UnknownWrite>>,
}

/// What the shared settle journal holds for one finding.
pub struct JournalFinding {
    /// Its last write hubgate cannot model.
    pub unknown: Option<UnknownWrite>,
    /// Its writes hubgate cannot model limited to an account: (account, operation, ms left).
    pub owned: Vec<(String, String, u64)>,
    /// Its change's items (empty: none).
    pub items: Vec<String>,
}

/// Reads the shared settle journal for `keys` and `accounts`. None: Redis is not in use, or
/// the answer was not one this replica can read.
pub async fn journal_read(
    coord: &Coordination,
    settle_ms: u64,
    keys: &[FindingKey],
    accounts: &[&str],
) -> Option<JournalRead> {
    let mut inv = script("journal_read").prepare_invoke();
    inv.arg(coord.prefix())
        .arg(settle_ms.max(1))
        .arg(keys.len());
    for key in keys {
        inv.arg(hash(key));
    }
    for account in accounts {
        inv.arg(*account);
    }
    let raw: Vec<String> = coord
        .call("journal_read", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await?;
    let mut raw = raw.into_iter();
    let unknown = |raw: &mut std::vec::IntoIter<String>| -> Option<Option<UnknownWrite>> {
        let (op, left) = (raw.next()?, raw.next()?);
        let left: i64 = left.parse().ok()?;
        Some((!op.is_empty() && left > 0).then_some((op, left as u64)))
    };
    let everything = unknown(&mut raw)?;
    let mut findings = Vec::with_capacity(keys.len());
    for _ in keys {
        let u = unknown(&mut raw)?;
        let n: usize = raw.next()?.parse().ok()?;
        let mut owned = Vec::with_capacity(n);
        for _ in 0..n {
            let (account, op, left) = (raw.next()?, raw.next()?, raw.next()?);
            owned.push((account, op, left.parse().ok()?));
        }
        let n: usize = raw.next()?.parse().ok()?;
        let items: Vec<String> = raw.by_ref().take(n).collect();
        if items.len() != n {
            return None;
        }
        findings.push(JournalFinding {
            unknown: u,
            owned,
            items,
        });
    }
    let mut by_account = Vec::with_capacity(accounts.len());
    for _ in accounts {
        by_account.push(unknown(&mut raw)?);
    }
    raw.next().is_none().then_some(JournalRead {
        everything,
        findings,
        accounts: by_account,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim whose release is under way stays held until the release ends: a stop's
    /// `release_all` in the meantime must still find it (the runtime's end may cut the first
    /// release off).
    #[test]
    fn a_claim_stays_held_until_its_release_has_ended() {
        let claims = Claims::default();
        let expiry = std::time::Duration::from_secs(60);
        claims.add(["g:a".to_string(), "g:b".to_string()], expiry);
        let releasing = claims.held_of(["g:a".to_string(), "g:z".to_string()]);
        let names: Vec<&str> = releasing.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(names, ["g:a"], "only what this replica holds");
        assert!(
            claims.held().contains_key("g:a"),
            "forgotten before its release ended"
        );
        claims.forget(&releasing);
        {
            let held = claims.held();
            assert!(!held.contains_key("g:a"));
            assert!(held.contains_key("g:b"), "another claim was forgotten");
        }
        // Claimed anew while an older claim's release was under way: the release's end
        // forgets the old claim only.
        let releasing = claims.held_of(["g:b".to_string()]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        claims.add(["g:b".to_string()], expiry);
        claims.forget(&releasing);
        assert!(
            claims.held().contains_key("g:b"),
            "the new claim was forgotten with the old one's release"
        );
    }

    /// A stop closes the claims only once the claim calls under way have ended: what such a
    /// call took is known from its answer, and must be in `held` when the stop releases them.
    #[tokio::test]
    async fn closing_waits_for_the_claims_being_taken() {
        let claims = Claims::default();
        let taking = Taking::begin(&claims).expect("the claims are open");
        let close = claims.close();
        let mut close = std::pin::pin!(close);
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), close.as_mut());
        assert!(early.await.is_err(), "closed while a claim was being taken");
        claims.add(["g:a".to_string()], std::time::Duration::from_secs(60));
        drop(taking);
        tokio::time::timeout(std::time::Duration::from_secs(1), close)
            .await
            .expect("the claim call ended");
        assert!(claims.held().contains_key("g:a"));
        assert!(
            Taking::begin(&claims).is_none(),
            "a claim taken after the close"
        );
        assert_eq!(claims.taking.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
