//! Step 6 of the enforcement path: request rate limits (on LLM, MCP and HTTP
//! route calls, as each limit says) and token budgets (LLM) per agent or per
//! tenant, in fixed windows aligned to the Unix epoch. A call is
//! admitted only if every limit that applies to its principal has room; it
//! then counts against all of them. Tokens are charged after the call, from
//! the usage the backend reported, so a call in flight can overshoot a
//! budget by its own size; every call after that is refused until the
//! window turns.
//!
//! Where the counters live: by default in this process — they survive a
//! config reload (a limit is identified by its name) but not a restart,
//! and each replica counts for itself. With `[cluster] redis` they live in
//! Redis (`shared.rs`: one Lua script per check, windows on Redis's
//! clock), shared by every replica and kept across restarts; a replica
//! leases slices of a request limit's window (`lease.rs`) and admits most
//! calls from them without a round trip. When Redis cannot answer, a limit
//! no lease covers refuses the calls it applies to (`on_unavailable =
//! "deny"`, the default) or lets them through uncounted (`"allow"`), and
//! the caller says which.
//!
//! Must never: admit a call that a limit applying to it has no room for,
//! or that a fail-closed limit could not count.

use lattice_policy::Principal;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Redis;
pub use crate::config::{CallKind, LimitSpec, OnUnavailable, Per};

mod lease;
mod shared;

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: String,
    /// `requests` or `tokens`.
    pub what: &'static str,
    pub retry_after_s: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start_s: u64,
    requests: u64,
    tokens: u64,
}

/// Why a call is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Exceeded(Exceeded),
    /// The shared counters cannot be reached and these limits, which
    /// apply to the call, fail closed.
    Unavailable {
        limits: Vec<String>,
        cause: String,
    },
}

/// An admitted call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Limits that apply but were not counted (the shared counters cannot
    /// be reached and they fail open), and why.
    pub bypassed: Option<(Vec<String>, String)>,
}

/// The counters.
pub struct Limiter {
    counters: Counters,
}

enum Counters {
    Local(tokio::sync::Mutex<HashMap<(String, String), Window>>),
    Shared(shared::SharedCounters),
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            counters: Counters::Local(Default::default()),
        }
    }
}

fn window_start(now_s: u64, window: Duration) -> u64 {
    let w = window.as_secs().max(1);
    now_s - now_s % w
}

/// The counters of `spec` for `id` in the window that holds `now_s`.
fn current<'a>(
    windows: &'a mut HashMap<(String, String), Window>,
    spec: &LimitSpec,
    id: &str,
    now_s: u64,
) -> &'a mut Window {
    let start = window_start(now_s, spec.window);
    let w = windows
        .entry((spec.name.clone(), id.to_string()))
        .or_default();
    if w.start_s != start {
        *w = Window {
            start_s: start,
            ..Window::default()
        };
    }
    w
}

impl Limiter {
    /// Counters in Redis, shared with every replica that uses it.
    pub fn shared(redis: Arc<Redis>) -> Self {
        Self {
            counters: Counters::Shared(shared::SharedCounters::new(redis)),
        }
    }

    /// At shutdown, outside any runtime: gives back the units this
    /// replica leased and did not use, so the other replicas can admit
    /// them in this window. Ok: how many (none without shared counters).
    pub fn surrender_leases(&self) -> Result<u64, String> {
        match &self.counters {
            Counters::Shared(shared) => shared.surrender(),
            Counters::Local(_) => Ok(0),
        }
    }

    /// Whether the counters are shared (Redis) rather than this process's.
    pub fn is_shared(&self) -> bool {
        matches!(self.counters, Counters::Shared(_))
    }

    /// Admits a call (counting one request against every applicable limit)
    /// or names the first limit it would exceed.
    pub async fn admit(
        &self,
        specs: &[LimitSpec],
        principal: &Principal,
        kind: CallKind,
        now_s: u64,
    ) -> Result<Admitted, Refusal> {
        let applicable: Vec<(&LimitSpec, &str)> = specs
            .iter()
            .filter(|s| s.kinds.contains(&kind))
            .filter_map(|s| s.subject(principal).map(|id| (s, id)))
            .collect();
        if applicable.is_empty() {
            return Ok(Admitted::default());
        }
        let windows = match &self.counters {
            Counters::Local(w) => w,
            Counters::Shared(shared) => return shared.admit(&applicable).await,
        };
        let mut windows = windows.lock().await;
        for (spec, id) in &applicable {
            let start = window_start(now_s, spec.window);
            let w = windows
                .get(&(spec.name.clone(), id.to_string()))
                .copied()
                .filter(|w| w.start_s == start)
                .unwrap_or_default();
            let what = if spec.requests.is_some_and(|r| w.requests >= r) {
                Some("requests")
            } else if spec.tokens.is_some_and(|t| w.tokens >= t) {
                Some("tokens")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(Refusal::Exceeded(Exceeded {
                    limit: spec.name.clone(),
                    what,
                    retry_after_s: (start + spec.window.as_secs().max(1) - now_s).max(1),
                }));
            }
        }
        for (spec, id) in applicable {
            current(&mut windows, spec, id, now_s).requests += 1;
        }
        Ok(Admitted::default())
    }

    /// Charges the tokens a call used against every applicable budget.
    /// Err: the shared counters could not be reached (nothing charged).
    pub async fn charge(
        &self,
        specs: &[LimitSpec],
        principal: &Principal,
        tokens: u64,
        now_s: u64,
    ) -> Result<(), String> {
        let budgets: Vec<(&LimitSpec, &str)> = specs
            .iter()
            .filter(|s| s.tokens.is_some())
            .filter_map(|s| s.subject(principal).map(|id| (s, id)))
            .collect();
        if tokens == 0 || budgets.is_empty() {
            return Ok(());
        }
        match &self.counters {
            Counters::Shared(shared) => shared::charge(&shared.redis, &budgets, tokens).await,
            Counters::Local(windows) => {
                let mut windows = windows.lock().await;
                for (spec, id) in budgets {
                    current(&mut windows, spec, id, now_s).tokens += tokens;
                }
                Ok(())
            }
        }
    }
}

/// The shared counters did not answer: refused if any applicable limit
/// fails closed, else admitted uncounted (and the caller says so).
fn unavailable(applicable: &[(&LimitSpec, &str)], cause: String) -> Result<Admitted, Refusal> {
    let closed: Vec<String> = applicable
        .iter()
        .filter(|(s, _)| s.on_unavailable == OnUnavailable::Deny)
        .map(|(s, _)| s.name.clone())
        .collect();
    if closed.is_empty() {
        Ok(Admitted {
            bypassed: Some((
                applicable.iter().map(|(s, _)| s.name.clone()).collect(),
                cause,
            )),
        })
    } else {
        Err(Refusal::Unavailable {
            limits: closed,
            cause,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, tenant: &str) -> Principal {
        Principal {
            kind: lattice_policy::PrincipalKind::Agent,
            id: id.into(),
            tenant: tenant.into(),
            roles: vec![],
            labels: vec![],
            auth_method: "api_key".into(),
        }
    }

    fn spec(name: &str, per: Per, requests: Option<u64>, tokens: Option<u64>) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            per,
            only: vec![],
            requests,
            tokens,
            window: Duration::from_secs(60),
            kinds: vec![CallKind::Llm, CallKind::Mcp, CallKind::Http],
            on_unavailable: OnUnavailable::Deny,
        }
    }

    fn exceeded(r: Result<Admitted, Refusal>) -> Exceeded {
        match r {
            Err(Refusal::Exceeded(e)) => e,
            other => panic!("not exceeded: {other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_are_limited_per_agent_and_the_window_turns() {
        let l = Limiter::default();
        let specs = [spec("rpm", Per::Agent, Some(2), None)];
        let (a, b) = (agent("a", "t"), agent("b", "t"));
        assert!(l.admit(&specs, &a, CallKind::Llm, 600).await.is_ok());
        assert!(l.admit(&specs, &a, CallKind::Llm, 601).await.is_ok());
        let e = exceeded(l.admit(&specs, &a, CallKind::Llm, 615).await);
        assert_eq!((e.what, e.retry_after_s), ("requests", 45));
        assert!(
            l.admit(&specs, &b, CallKind::Llm, 615).await.is_ok(),
            "another agent has its own count"
        );
        assert!(
            l.admit(&specs, &a, CallKind::Llm, 660).await.is_ok(),
            "a new window"
        );
    }

    #[tokio::test]
    async fn token_budgets_refuse_once_spent_and_tenants_share() {
        let l = Limiter::default();
        let specs = [spec("tenant-tokens", Per::Tenant, None, Some(100))];
        let (a, b, other) = (agent("a", "t"), agent("b", "t"), agent("c", "u"));
        assert!(l.admit(&specs, &a, CallKind::Llm, 0).await.is_ok());
        l.charge(&specs, &a, 60, 0).await.unwrap();
        assert!(l.admit(&specs, &b, CallKind::Llm, 1).await.is_ok());
        l.charge(&specs, &b, 60, 1).await.unwrap();
        let e = exceeded(l.admit(&specs, &a, CallKind::Llm, 2).await);
        assert_eq!(e.what, "tokens");
        assert!(l.admit(&specs, &b, CallKind::Llm, 3).await.is_err());
        assert!(l.admit(&specs, &other, CallKind::Llm, 3).await.is_ok());
    }

    #[tokio::test]
    async fn a_limit_counts_only_its_kinds_of_calls() {
        let l = Limiter::default();
        let mut mcp_only = spec("mcp", Per::Agent, Some(1), None);
        mcp_only.kinds = vec![CallKind::Mcp];
        let specs = [mcp_only];
        let a = agent("a", "t");
        for _ in 0..3 {
            assert!(l.admit(&specs, &a, CallKind::Http, 0).await.is_ok());
        }
        assert!(l.admit(&specs, &a, CallKind::Mcp, 0).await.is_ok());
        assert!(l.admit(&specs, &a, CallKind::Mcp, 0).await.is_err());
    }

    #[tokio::test]
    async fn a_refusal_does_not_count_and_only_narrows() {
        let l = Limiter::default();
        let mut narrow = spec("vip", Per::Agent, Some(1), None);
        narrow.only = vec!["a".into()];
        let specs = [narrow, spec("all", Per::Agent, Some(3), None)];
        let (a, b) = (agent("a", "t"), agent("b", "t"));
        assert!(l.admit(&specs, &a, CallKind::Llm, 0).await.is_ok());
        assert!(l.admit(&specs, &a, CallKind::Llm, 0).await.is_err());
        assert!(l.admit(&specs, &a, CallKind::Llm, 0).await.is_err());
        for _ in 0..3 {
            assert!(l.admit(&specs, &b, CallKind::Llm, 0).await.is_ok());
        }
        assert!(l.admit(&specs, &b, CallKind::Llm, 0).await.is_err());
    }

    #[test]
    fn without_the_shared_counters_fail_closed_limits_refuse_and_the_rest_are_bypassed() {
        let mut open = spec("open", Per::Agent, Some(1), None);
        open.on_unavailable = OnUnavailable::Allow;
        let closed = spec("closed", Per::Agent, Some(1), None);
        let cause = || "redis://x: connection refused".to_string();
        // (applicable limits, refused by, bypassed)
        type Case<'a> = (
            Vec<&'a LimitSpec>,
            Option<Vec<&'a str>>,
            Option<Vec<&'a str>>,
        );
        let cases: [Case; 3] = [
            (vec![&open], None, Some(vec!["open"])),
            (vec![&closed], Some(vec!["closed"]), None),
            (vec![&open, &closed], Some(vec!["closed"]), None),
        ];
        for (specs, refused, bypassed) in cases {
            let applicable: Vec<(&LimitSpec, &str)> = specs.iter().map(|s| (*s, "a")).collect();
            match (unavailable(&applicable, cause()), refused, bypassed) {
                (Err(Refusal::Unavailable { limits, cause: c }), Some(want), None) => {
                    assert_eq!(limits, want);
                    assert_eq!(c, cause());
                }
                (
                    Ok(Admitted {
                        bypassed: Some((names, c)),
                    }),
                    None,
                    Some(want),
                ) => {
                    assert_eq!(names, want);
                    assert_eq!(c, cause());
                }
                (got, refused, bypassed) => panic!("{got:?} for {refused:?} / {bypassed:?}"),
            }
        }
    }
}
