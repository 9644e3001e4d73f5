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
//! - `P:l:g:h`    a replica's claim on looking the finding up.
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

// The value's read time is the claim's (`g/ms`, as `claim` returned it).
const STORE: &str = r#"
local g = redis.call('GET', KEYS[1]) or '0'
local cg, at = string.match(ARGV[2], '^(.*)/(%d+)$')
local out = {}
for i = 3, #ARGV, 4 do
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
    redis.call('DEL', ARGV[1] .. ':l' .. base)
  end
  out[#out + 1] = stored
end
return out
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
    static S: [OnceLock<Script>; 7] = [
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

/// Claims the lookup of `keys`. Returns the generation (for `store`) and one answer per key.
pub async fn claim(coord: &Coordination, keys: &[FindingKey]) -> Option<(String, Vec<Claim>)> {
    let mut inv = script("claim").prepare_invoke();
    inv.key(format!("{}:gen", coord.prefix()))
        .arg(coord.prefix())
        .arg(coord.lookup_claim.as_millis() as u64)
        .arg("1");
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
    (answers.len() == keys.len()).then_some((generation, answers))
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
    let mut inv = script("store").prepare_invoke();
    inv.key(format!("{}:gen", coord.prefix()))
        .arg(coord.prefix())
        .arg(generation);
    for item in &items {
        inv.arg(hash(item.key))
            .arg(item.version)
            .arg(item.ttl_ms.max(1))
            .arg(&item.value[..]);
    }
    let raw: Vec<i64> = coord
        .call("cache_store", |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await?;
    Some(raw.into_iter().map(|n| n == 1).collect())
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
    /// account at its position, if any.
    Unknown(&'a [FindingKey], &'static str, Option<&'a [Option<String>]>),
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
