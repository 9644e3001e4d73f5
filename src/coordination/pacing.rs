//! Shared pacing: one GCRA bucket per upstream operation in Redis (and, for passthrough
//! forwards, per caller account), checked and advanced by one atomic script, so every replica
//! draws on the same account quota whatever their number.

use redis::Script;

use super::Coordination;

/// GCRA (the generic cell rate algorithm): the bucket is one number, the theoretical arrival
/// time of the next call. Redis's own clock is used, so replicas' clocks need not agree.
/// KEYS[1] the bucket; ARGV[1] µs between calls; ARGV[2] burst.
/// Returns 0 when the call may go now (and takes its place), else the µs to wait before
/// asking again (nothing taken).
const GCRA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - burst * interval
if now < allow_at then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return 0
"#;

fn script() -> &'static Script {
    static S: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    S.get_or_init(|| Script::new(GCRA))
}

/// The key of one operation's shared bucket: hubgate's own quota (`account` None), or the
/// quota of a caller's account that a passthrough forward spends. The two forms differ before
/// anything configurable (`quota:`, `quota-account:`), so no scope can name an account's.
pub fn bucket_key(coord: &Coordination, operation: &str, account: Option<&str>) -> String {
    match account {
        None => format!(
            "{}:quota:{}:{}",
            coord.prefix(),
            coord.quota_scope(),
            operation
        ),
        Some(account) => format!(
            "{}:quota-account:{}:{}:{}",
            coord.prefix(),
            account,
            coord.region(),
            operation
        ),
    }
}

/// Asks the shared bucket for one call. Some(0): go; Some(µs): ask again after that long;
/// None: Redis is not in use, pace locally.
pub async fn take(
    coord: &Coordination,
    operation: &str,
    account: Option<&str>,
    interval_us: u64,
    burst: u32,
) -> Option<u64> {
    let key = bucket_key(coord, operation, account);
    coord
        .call("pacing", |mut con| async move {
            script()
                .key(key)
                .arg(interval_us)
                .arg(burst)
                .invoke_async::<u64>(&mut con)
                .await
        })
        .await
}
