//! The limits' counters in Redis, shared by every replica. One Lua script
//! per check: it reads Redis's own clock (`TIME`), so a window starts and
//! ends at the same moment for every replica whatever their clocks; checks
//! every applicable limit, and only if all have room counts the request in
//! all of them — atomically, in one round trip. Tokens are charged the
//! same way after the call. Each window is a hash
//! `<prefix>:limit:<name>:<per>:<id length>:<id>:<window start>` with
//! fields `r` (requests) and `t` (tokens), expiring a minute after its
//! window ends.
//!
//! Must never: count a request unless every applicable limit had room.

use std::sync::LazyLock;

use redis::Script;

use super::{Exceeded, LimitSpec, Per};
use crate::cluster::Redis;

/// KEYS: each limit's base key. ARGV: per limit, window seconds, request
/// cap, token cap (-1: none). Returns {0,0,0} when admitted, else {the
/// 1-based index of the first full limit, 1 requests / 2 tokens, seconds
/// until its window turns}.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(redis.call('TIME')[1])
local keys = {}
for i = 1, #KEYS do
  local w = tonumber(ARGV[i * 3 - 2])
  local start = now - (now % w)
  local key = KEYS[i] .. ':' .. start
  keys[i] = key
  local counts = redis.call('HMGET', key, 'r', 't')
  local r, t = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
  local max_r, max_t = tonumber(ARGV[i * 3 - 1]), tonumber(ARGV[i * 3])
  if max_r >= 0 and r >= max_r then return {i, 1, start + w - now} end
  if max_t >= 0 and t >= max_t then return {i, 2, start + w - now} end
end
for i = 1, #KEYS do
  redis.call('HINCRBY', keys[i], 'r', 1)
  redis.call('EXPIRE', keys[i], tonumber(ARGV[i * 3 - 2]) + 60)
end
return {0, 0, 0}
",
    )
});

/// KEYS: each budget's base key. ARGV: the tokens, then each budget's
/// window seconds.
static CHARGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(redis.call('TIME')[1])
for i = 1, #KEYS do
  local w = tonumber(ARGV[i + 1])
  local key = KEYS[i] .. ':' .. (now - (now % w))
  redis.call('HINCRBY', key, 't', tonumber(ARGV[1]))
  redis.call('EXPIRE', key, w + 60)
end
return 0
",
    )
});

/// A limit's key for one agent or tenant (the id's length keeps ids that
/// contain `:` apart).
fn base_key(redis: &Redis, spec: &LimitSpec, id: &str) -> String {
    let per = match spec.per {
        Per::Agent => "agent",
        Per::Tenant => "tenant",
    };
    redis.key(&["limit", &spec.name, per, &id.len().to_string(), id])
}

fn window_s(spec: &LimitSpec) -> u64 {
    spec.window.as_secs().max(1)
}

/// Ok(None): admitted and counted. Ok(Some): the first full limit.
/// Err: the store could not answer (nothing was counted).
pub(super) async fn admit(
    redis: &Redis,
    applicable: &[(&LimitSpec, &str)],
) -> Result<Option<Exceeded>, String> {
    let keys = applicable
        .iter()
        .map(|(s, id)| base_key(redis, s, id))
        .collect();
    let cap = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-1".into());
    let args = applicable
        .iter()
        .flat_map(|(s, _)| [window_s(s).to_string(), cap(s.requests), cap(s.tokens)])
        .collect();
    let answer: Vec<i64> = redis.eval(&ADMIT, keys, args).await?;
    match answer.as_slice() {
        [0, ..] => Ok(None),
        [i, what, retry] => {
            let (spec, _) = usize::try_from(*i - 1)
                .ok()
                .and_then(|i| applicable.get(i))
                .ok_or_else(|| format!("the limit script answered {answer:?}"))?;
            Ok(Some(Exceeded {
                limit: spec.name.clone(),
                what: if *what == 2 { "tokens" } else { "requests" },
                retry_after_s: u64::try_from(*retry).unwrap_or(1).max(1),
            }))
        }
        _ => Err(format!("the limit script answered {answer:?}")),
    }
}

pub(super) async fn charge(
    redis: &Redis,
    budgets: &[(&LimitSpec, &str)],
    tokens: u64,
) -> Result<(), String> {
    let keys = budgets
        .iter()
        .map(|(s, id)| base_key(redis, s, id))
        .collect();
    let args = std::iter::once(tokens.to_string())
        .chain(budgets.iter().map(|(s, _)| window_s(s).to_string()))
        .collect();
    redis.eval::<i64>(&CHARGE, keys, args).await.map(|_| ())
}
