//! The limits' counters in Redis, shared by every replica. One Lua script
//! per check: it reads Redis's own clock (`TIME`), so a window starts and
//! ends at the same moment for every replica whatever their clocks; checks
//! every applicable limit, and only if all have room counts the request in
//! all of them — atomically, in one round trip. A request limit (one
//! without a token budget) is counted for more than the call when this
//! replica asks for a lease (`lease.rs`): the units past the call's own are
//! admitted from memory, and a lease running low is topped up by a second
//! script in the background. Tokens are charged after the call, one round
//! trip each. At shutdown the leases' unused units are uncounted
//! (`surrender`). Each window is a hash
//! `<prefix>:limit:<name>:<per>:<id length>:<id>:<window start>` with
//! fields `r` (requests, leased ones included) and `t` (tokens), expiring
//! a minute after its window ends.
//!
//! Must never: count a request unless every applicable limit had room, or
//! lease more than a `SHARE`th of what is left of a window in one grant.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::Script;

use super::lease::{Grant, Key, Leases, SHARE};
use super::{unavailable, Admitted, Exceeded, LimitSpec, Per, Refusal};
use crate::cluster::Redis;

/// KEYS: each limit's base key. ARGV: per limit, window seconds, request
/// cap, token cap (-1: none), units wanted (1: the call's only). Returns
/// {0,0,0} then per limit {window start, ms until it ends, units counted}
/// when admitted, else {the 1-based index of the first full limit, 1
/// requests / 2 tokens, seconds until its window turns}. A limit with a
/// request cap counts the units wanted, at most a SHARE'th of its room and
/// at least the call's one.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local keys, used = {{}}, {{}}
for i = 1, #KEYS do
  local w = tonumber(ARGV[i * 4 - 3])
  local start = now - (now % w)
  local key = KEYS[i] .. ':' .. start
  keys[i] = key
  local counts = redis.call('HMGET', key, 'r', 't')
  local r, t = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
  local max_r, max_t = tonumber(ARGV[i * 4 - 2]), tonumber(ARGV[i * 4 - 1])
  if max_r >= 0 and r >= max_r then return {{i, 1, start + w - now}} end
  if max_t >= 0 and t >= max_t then return {{i, 2, start + w - now}} end
  used[i] = r
end
local out = {{0, 0, 0}}
for i = 1, #KEYS do
  local w = tonumber(ARGV[i * 4 - 3])
  local max_r, want = tonumber(ARGV[i * 4 - 2]), tonumber(ARGV[i * 4])
  local start = now - (now % w)
  local n = 1
  if max_r >= 0 and want > 1 then
    n = math.max(1, math.min(want, math.floor((max_r - used[i]) / {SHARE})))
  end
  redis.call('HINCRBY', keys[i], 'r', n)
  redis.call('EXPIRE', keys[i], w + 60)
  out[#out + 1] = start
  out[#out + 1] = (start + w) * 1000 - now_ms
  out[#out + 1] = n
end
return out
"
    ))
});

/// KEYS: each lease's base key. ARGV: per limit, window seconds, request
/// cap, units wanted. Leases each limit what it can spare on its own (at
/// most a SHARE'th of its room; nothing when that is under 2: each call
/// then checks for itself). Returns per limit {window start, ms until it
/// ends, units counted}.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {{}}
for i = 1, #KEYS do
  local w = tonumber(ARGV[i * 3 - 2])
  local max_r, want = tonumber(ARGV[i * 3 - 1]), tonumber(ARGV[i * 3])
  local start = now - (now % w)
  local key = KEYS[i] .. ':' .. start
  local r = tonumber(redis.call('HGET', key, 'r') or '0')
  local n = math.min(want, math.floor((max_r - r) / {SHARE}))
  if n >= 2 then
    redis.call('HINCRBY', key, 'r', n)
    redis.call('EXPIRE', key, w + 60)
  else
    n = 0
  end
  out[#out + 1] = start
  out[#out + 1] = (start + w) * 1000 - now_ms
  out[#out + 1] = n
end
return out
"
    ))
});

/// KEYS: each lease's base key. ARGV: per lease, its window's start and
/// the units left. Uncounts them from that window (never below zero; a
/// window that expired meanwhile is left alone).
static RETURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #KEYS do
  local key = KEYS[i] .. ':' .. ARGV[i * 2 - 1]
  local r = tonumber(redis.call('HGET', key, 'r') or '0')
  local n = math.min(tonumber(ARGV[i * 2]), r)
  if n > 0 then redis.call('HINCRBY', key, 'r', -n) end
end
return 0
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

/// The counters in Redis and this replica's leases of them.
pub(super) struct SharedCounters {
    pub(super) redis: Arc<Redis>,
    leases: Arc<Leases>,
}

/// Whether a limit is leased: a request cap and no token budget (a budget
/// is checked against what every replica charged, so each call asks).
fn leased(spec: &LimitSpec) -> bool {
    spec.requests.is_some() && spec.tokens.is_none()
}

impl SharedCounters {
    pub(super) fn new(redis: Arc<Redis>) -> Self {
        Self {
            redis,
            leases: Arc::default(),
        }
    }

    /// Admits a call: from the leases where they have units, with one
    /// round trip for the limits where they have none (leasing more when
    /// the rate asks for it), then tops up the leases that run low.
    pub(super) async fn admit(
        &self,
        applicable: &[(&LimitSpec, &str)],
    ) -> Result<Admitted, Refusal> {
        let now = Instant::now();
        let keys: Vec<Option<Key>> = applicable
            .iter()
            .map(|(s, id)| leased(s).then(|| lease_key(&self.redis, s, id)))
            .collect();
        let taken = self.leases.take(&keys, now);
        let ask: Vec<usize> = (0..applicable.len())
            .filter(|i| taken[*i].is_none())
            .collect();
        if !ask.is_empty() {
            let asked: Vec<(&LimitSpec, &str, u64)> = ask
                .iter()
                .map(|&i| {
                    let (s, id) = applicable[i];
                    let want = keys[i].as_ref().map_or(1, |k| self.leases.want(k, now));
                    (s, id, want)
                })
                .collect();
            let sent = Instant::now();
            match check(&self.redis, &asked).await {
                Ok(Ok(grants)) => {
                    let now = Instant::now();
                    for (&i, g) in ask.iter().zip(grants) {
                        if let Some(k) = &keys[i] {
                            self.leases.granted(k, g.at(sent), now);
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.leases.give_back(&keys, &taken, Instant::now());
                    return Err(Refusal::Exceeded(e));
                }
                Err(cause) => {
                    let uncounted: Vec<(&LimitSpec, &str)> =
                        asked.iter().map(|(s, id, _)| (*s, *id)).collect();
                    let answer = unavailable(&uncounted, cause);
                    if answer.is_err() {
                        self.leases.give_back(&keys, &taken, Instant::now());
                    }
                    return answer;
                }
            }
        }
        self.refill(applicable, &keys);
        Ok(Admitted::default())
    }

    /// Gives back what is left of this replica's leases (at shutdown,
    /// outside any runtime). Ok: how many units.
    pub(super) fn surrender(&self) -> Result<u64, String> {
        let left = self.leases.surrender(Instant::now());
        if left.is_empty() {
            return Ok(0);
        }
        let units = left.iter().map(|(_, _, n)| n).sum();
        let keys = left
            .iter()
            .map(|(key, ..)| lease_base(key).to_string())
            .collect();
        let args = left
            .iter()
            .flat_map(|(_, window, n)| [window.to_string(), n.to_string()])
            .collect();
        self.redis
            .eval_blocking::<i64>(&RETURN, keys, args)
            .map(|_| units)
    }

    /// Asks, in the background, for the next lease of each limit whose
    /// lease runs low.
    fn refill(&self, applicable: &[(&LimitSpec, &str)], keys: &[Option<Key>]) {
        let due = self.leases.to_refill(keys, Instant::now());
        if due.is_empty() {
            return;
        }
        let asks: Vec<(Key, String, u64, u64, u64)> = due
            .into_iter()
            .filter_map(|(key, want)| {
                let i = keys.iter().position(|k| k.as_ref() == Some(&key))?;
                let (spec, id) = applicable[i];
                let cap = spec.requests?;
                Some((
                    key,
                    base_key(&self.redis, spec, id),
                    window_s(spec),
                    cap,
                    want,
                ))
            })
            .collect();
        let (redis, leases) = (self.redis.clone(), self.leases.clone());
        tokio::spawn(async move {
            let keys = asks.iter().map(|a| a.1.clone()).collect();
            let args = asks
                .iter()
                .flat_map(|a| [a.2.to_string(), a.3.to_string(), a.4.to_string()])
                .collect();
            let sent = Instant::now();
            let counted = redis
                .eval::<Vec<i64>>(&LEASE, keys, args)
                .await
                .ok()
                .and_then(|v| grants(&v, asks.len()));
            let now = Instant::now();
            for (i, (key, ..)) in asks.iter().enumerate() {
                let grant = counted.as_ref().and_then(|g| g.get(i)).map(|g| g.at(sent));
                leases.refilled(key, grant, now);
            }
        });
    }
}

/// Units counted in Redis, with the time left in their window.
#[derive(Debug, Clone, Copy)]
struct Counted {
    window: u64,
    left_ms: u64,
    units: u64,
}

impl Counted {
    /// As a lease: its window ends `left_ms` after the request was sent
    /// (never later than on Redis's clock).
    fn at(self, sent: Instant) -> Grant {
        Grant {
            window: self.window,
            units: self.units,
            ends: sent + Duration::from_millis(self.left_ms),
        }
    }
}

/// Triples of (window start, ms left, units), `n` of them.
fn grants(answer: &[i64], n: usize) -> Option<Vec<Counted>> {
    let grants: Vec<Counted> = answer
        .chunks_exact(3)
        .map(|c| Counted {
            window: c[0].max(0) as u64,
            left_ms: c[1].max(0) as u64,
            units: c[2].max(0) as u64,
        })
        .collect();
    (answer.len() == n * 3).then_some(grants)
}

/// A lease's key: the counter's base key and its window length (a reload
/// that changes the window starts another lease).
fn lease_key(redis: &Redis, spec: &LimitSpec, id: &str) -> Key {
    format!("{}:{}", base_key(redis, spec, id), window_s(spec))
}

/// The counter's base key of a `lease_key`.
fn lease_base(key: &Key) -> &str {
    key.rsplit_once(':').map_or(key.as_str(), |(base, _)| base)
}

/// Ok(Ok): admitted, with the units counted per limit. Ok(Err): the first
/// full limit. Err: the store could not answer (nothing was counted).
async fn check(
    redis: &Redis,
    asked: &[(&LimitSpec, &str, u64)],
) -> Result<Result<Vec<Counted>, Exceeded>, String> {
    let keys = asked
        .iter()
        .map(|(s, id, _)| base_key(redis, s, id))
        .collect();
    let cap = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-1".into());
    let args = asked
        .iter()
        .flat_map(|(s, _, want)| {
            [
                window_s(s).to_string(),
                cap(s.requests),
                cap(s.tokens),
                want.to_string(),
            ]
        })
        .collect();
    let answer: Vec<i64> = redis.eval(&ADMIT, keys, args).await?;
    let bad = || format!("the limit script answered {answer:?}");
    match answer.as_slice() {
        [0, 0, 0, rest @ ..] => grants(rest, asked.len()).map(Ok).ok_or_else(bad),
        [i, what, retry] => {
            let (spec, ..) = usize::try_from(*i - 1)
                .ok()
                .and_then(|i| asked.get(i))
                .ok_or_else(bad)?;
            Ok(Err(Exceeded {
                limit: spec.name.clone(),
                what: if *what == 2 { "tokens" } else { "requests" },
                retry_after_s: u64::try_from(*retry).unwrap_or(1).max(1),
            }))
        }
        _ => Err(bad()),
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
