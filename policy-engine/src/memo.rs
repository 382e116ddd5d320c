//! The decision memo: decisions of recent requests, keyed by exactly what
//! the policies that decide them can read. A Cedar decision is a pure
//! function of the policies and the request — no clock, no I/O — and the
//! engine's entity store is built from the principal and the resource
//! alone, so a decision depends only on the action, the whole principal,
//! the whole resource and the context attributes the policies read. The
//! policies of a slice are read once at load (their JSON form): every
//! `context.x` and `context has x` names the attribute `x`; any other use of
//! `context` (compared or passed whole) makes the whole context part of the
//! key. Building Cedar's request can itself fail (a `client_ip` Cedar's `ip`
//! refuses, an attribute named twice): the engine sends such requests to
//! Cedar every time (`engine::memoizable`), so for every request the memo
//! sees building succeeds and the key need not hold the address unless a
//! policy reads it. Two requests with equal keys therefore get the same
//! decision, reasons and errors; the memo returns the first one's.
//!
//! Must never: serve a decision for a key that leaves out anything the
//! policies could read (when in doubt the whole context is the key), outlive
//! its policy set (a reload builds a new engine with an empty memo), or be
//! used when requests are validated against the schema (validation reads
//! every context attribute).

use cedar_policy::PolicySet;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::RwLock;

use crate::engine::Decision;
use crate::request::{Action, AuthzRequest, ContextValue, Principal, RequestContext, Resource};

/// Most decisions kept before the memo is cleared.
const MEMO_MAX: usize = 4096;

/// What of the context a set of policies reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reads {
    /// Only these top-level attributes (sorted).
    Attrs(Vec<String>),
    /// The context as a whole.
    Whole,
}

/// The context attributes the policies of `set` read.
pub(crate) fn reads(set: &PolicySet) -> Reads {
    let mut attrs = BTreeSet::new();
    for policy in set.policies() {
        let Ok(json) = policy.to_json() else {
            return Reads::Whole;
        };
        if !walk(&json, &mut attrs) {
            return Reads::Whole;
        }
    }
    Reads::Attrs(attrs.into_iter().collect())
}

fn is_context(v: &Value) -> bool {
    v.get("Var").and_then(Value::as_str) == Some("context")
}

/// Collects the attributes read from `context` in `v` (a policy's JSON
/// form); false when `context` is used other than through `.x` / `has x`.
fn walk(v: &Value, attrs: &mut BTreeSet<String>) -> bool {
    match v {
        Value::Object(map) => {
            if is_context(v) {
                return false;
            }
            for (key, inner) in map {
                if key == "." || key == "has" {
                    if let Some(left) = inner.get("left") {
                        if is_context(left) {
                            // `has` may name a path: its first step is the attribute.
                            let attr = match inner.get("attr") {
                                Some(Value::String(s)) => Some(s.as_str()),
                                Some(Value::Array(path)) => path.first().and_then(Value::as_str),
                                _ => None,
                            };
                            match attr {
                                Some(a) => {
                                    attrs.insert(a.to_string());
                                    continue;
                                }
                                None => return false,
                            }
                        }
                    }
                }
                if !walk(inner, attrs) {
                    return false;
                }
            }
            true
        }
        Value::Array(items) => items.iter().all(|i| walk(i, attrs)),
        _ => true,
    }
}

/// One context attribute of a request, borrowed.
#[derive(Clone, Copy, PartialEq)]
enum Ref<'a> {
    Long(i64),
    Str(&'a str),
    Value(&'a ContextValue),
    Absent,
}

fn project<'a>(ctx: &'a RequestContext, name: &str) -> Ref<'a> {
    match name {
        "time" => Ref::Long(ctx.time),
        "client_ip" => Ref::Str(&ctx.client_ip),
        _ => ctx.extra.get(name).map_or(Ref::Absent, Ref::Value),
    }
}

impl Ref<'_> {
    fn owned(self) -> Option<ContextValue> {
        match self {
            Ref::Long(n) => Some(ContextValue::Long(n)),
            Ref::Str(s) => Some(ContextValue::String(s.to_string())),
            Ref::Value(v) => Some(v.clone()),
            Ref::Absent => None,
        }
    }

    fn same(self, stored: &Option<ContextValue>) -> bool {
        match (self, stored) {
            (Ref::Long(n), Some(ContextValue::Long(m))) => n == *m,
            (Ref::Str(s), Some(ContextValue::String(t))) => s == t,
            (Ref::Value(v), Some(w)) => v == w,
            (Ref::Absent, None) => true,
            _ => false,
        }
    }

    fn hash_into(self, h: &mut impl Hasher) {
        match self {
            Ref::Long(n) => (1u8, n).hash(h),
            Ref::Str(s) => (2u8, s).hash(h),
            Ref::Value(v) => (3u8, v).hash(h),
            Ref::Absent => 0u8.hash(h),
        }
    }
}

#[derive(Debug)]
enum ContextKey {
    Attrs(Vec<Option<ContextValue>>),
    Whole(RequestContext),
}

#[derive(Debug)]
struct Key {
    action: Action,
    principal: Principal,
    resource: Resource,
    context: ContextKey,
}

impl Key {
    fn matches(&self, req: &AuthzRequest, reads: &Reads) -> bool {
        self.action == req.action
            && self.principal == req.principal
            && self.resource == req.resource
            && match (&self.context, reads) {
                (ContextKey::Attrs(stored), Reads::Attrs(names)) => stored
                    .iter()
                    .zip(names)
                    .all(|(s, n)| project(&req.context, n).same(s)),
                (ContextKey::Whole(c), Reads::Whole) => *c == req.context,
                _ => false,
            }
    }

    fn of(req: &AuthzRequest, reads: &Reads) -> Self {
        Self {
            action: req.action,
            principal: req.principal.clone(),
            resource: req.resource.clone(),
            context: match reads {
                Reads::Attrs(names) => ContextKey::Attrs(
                    names
                        .iter()
                        .map(|n| project(&req.context, n).owned())
                        .collect(),
                ),
                Reads::Whole => ContextKey::Whole(req.context.clone()),
            },
        }
    }
}

fn hash(hasher: &impl BuildHasher, req: &AuthzRequest, reads: &Reads) -> u64 {
    let mut h = hasher.build_hasher();
    req.action.hash(&mut h);
    req.principal.hash(&mut h);
    req.resource.hash(&mut h);
    match reads {
        Reads::Attrs(names) => {
            for n in names {
                project(&req.context, n).hash_into(&mut h);
            }
        }
        Reads::Whole => req.context.hash(&mut h),
    }
    h.finish()
}

type Buckets = HashMap<u64, Vec<(Key, Decision)>>;

/// Recent decisions of one policy set. Keys are hashed with foldhash,
/// seeded per process (a keyed hash: requests cannot be shaped to share a
/// bucket), several times cheaper than SipHash for these small keys.
#[derive(Debug, Default)]
pub(crate) struct Memo {
    decisions: RwLock<(Buckets, usize)>,
    hasher: foldhash::fast::RandomState,
}

impl Memo {
    /// The hash of a request's key, for `get` and `put`.
    pub(crate) fn hash(&self, req: &AuthzRequest, reads: &Reads) -> u64 {
        hash(&self.hasher, req, reads)
    }

    /// The decision of an earlier request with the same key (whose `hash`
    /// is `h`), if kept.
    pub(crate) fn get(&self, h: u64, req: &AuthzRequest, reads: &Reads) -> Option<Decision> {
        let memo = self.decisions.read().ok()?;
        memo.0
            .get(&h)?
            .iter()
            .find(|(k, _)| k.matches(req, reads))
            .map(|(_, d)| d.clone())
    }

    /// How many decisions are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.decisions.read().map(|m| m.1).unwrap_or_default()
    }

    /// Keeps a decision Cedar made for `req` (whose `hash` is `h`).
    pub(crate) fn put(&self, h: u64, req: &AuthzRequest, reads: &Reads, decision: &Decision) {
        if let Ok(mut memo) = self.decisions.write() {
            if memo.1 >= MEMO_MAX {
                memo.0.clear();
                memo.1 = 0;
            }
            let bucket = memo.0.entry(h).or_default();
            if bucket.iter().any(|(k, _)| k.matches(req, reads)) {
                return;
            }
            bucket.push((Key::of(req, reads), decision.clone()));
            memo.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::str::FromStr;

    /// What each way of using `context` makes the memo key on: a table.
    #[test]
    fn each_use_of_the_context_is_read_as_its_attributes_or_the_whole() {
        let attrs = |v: &[&str]| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            v.sort();
            v.dedup();
            Reads::Attrs(v)
        };
        let table: [(&str, Reads); 9] = [
            ("permit (principal, action, resource);", attrs(&[])),
            (
                r#"permit (principal, action, resource) when { context.method == "GET" };"#,
                attrs(&["method"]),
            ),
            (
                r#"permit (principal, action, resource) when { context has path && context.path like "/a*" };"#,
                attrs(&["path"]),
            ),
            (
                "permit (principal, action, resource) when { context has input.amount && context.input.amount < 5 };",
                attrs(&["input"]),
            ),
            (
                r#"permit (principal, action, resource) when { context.client_ip.isInRange(ip("10.0.0.0/8")) } unless { context.time > 5 };"#,
                attrs(&["client_ip", "time"]),
            ),
            (
                "permit (principal, action, resource) when { context == {} };",
                Reads::Whole,
            ),
            (
                r#"permit (principal, action, resource) when { {a: context}.a.method == "GET" };"#,
                Reads::Whole,
            ),
            (
                r#"permit (principal, action, resource) when { [context].contains({method: "GET"}) };"#,
                Reads::Whole,
            ),
            (
                r#"permit (principal, action, resource) when { (if true then context else context).method == "GET" };"#,
                Reads::Whole,
            ),
        ];
        for (text, want) in table {
            let set = PolicySet::from_str(text).unwrap();
            assert_eq!(reads(&set), want, "{text}");
        }
    }
}
