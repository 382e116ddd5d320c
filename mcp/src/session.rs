//! The MCP protocol eras as a server (the gateway's downstream side) keeps
//! them: session tokens, per-session state and the stateless era's checks.
//!
//! Stateful eras (2024-11-05 to 2025-11-25): `initialize` opens a session
//! whose `Mcp-Session-Id` is a token the gateway signs (HMAC-SHA256 over the
//! session id, the principal, the tenant and the protocol version). Any
//! gateway holding the same key accepts it — after a restart, or on another
//! replica — with no shared store; a session is bound to the principal that
//! opened it. `DELETE` ends a session on the gateway that receives it (the
//! ended set is per process: a documented limit).
//!
//! Stateless era (2026-07-28): no `initialize` and no session; each request
//! carries its protocol version in `_meta` and, per SEP-2243, the HTTP
//! headers `MCP-Protocol-Version`, `Mcp-Method` and (for named targets)
//! `Mcp-Name`, which must agree with the body (else `-32020`, HTTP 400).

use arc_swap::ArcSwap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use lattice_policy::Principal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The stateless protocol version.
pub const STATELESS: &str = "2026-07-28";
/// Versions with `initialize` and sessions, preferred first.
pub const SESSION_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// `_meta` key of a stateless request's protocol version.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// JSON-RPC error codes of the stateless era.
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// Seconds since the Unix epoch.
fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sid: String,
    pub sub: String,
    pub ten: String,
    pub pv: String,
    pub iat: u64,
    /// The client's capabilities that the gateway relays requests for
    /// (`sampling`, `elicitation`, `roots`), as it declared them at
    /// `initialize`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
}

/// The session signing key and the sessions ended here.
pub struct Sessions {
    key: [u8; 32],
    ended: ArcSwap<HashSet<String>>,
    /// `logging/setLevel` per session id: (rank in `LOG_LEVELS`, set at, s).
    /// Per process, like `ended`: a session served by another replica logs
    /// at the default level there until it sets one again.
    log_levels: ArcSwap<HashMap<String, (usize, u64)>>,
    /// Resource subscriptions per session id: (server, the server's URI) →
    /// the URI as the client named it. Per process, like the levels: the
    /// updates reach the session's GET stream on this gateway.
    subscriptions: ArcSwap<HashMap<String, Subscriptions>>,
    /// How long a session lives after `initialize`.
    ttl_s: u64,
}

/// One session's resource subscriptions: (server, the server's URI) → (the
/// URI as the client named it, when it subscribed, s).
type Subscriptions = BTreeMap<(String, String), (String, u64)>;

/// A session's default lifetime: a day.
pub const DEFAULT_TTL_S: u64 = 24 * 3600;

impl Sessions {
    pub fn with_key(key: [u8; 32]) -> Self {
        Self {
            key,
            ended: ArcSwap::from_pointee(HashSet::new()),
            log_levels: ArcSwap::from_pointee(HashMap::new()),
            subscriptions: ArcSwap::from_pointee(HashMap::new()),
            ttl_s: DEFAULT_TTL_S,
        }
    }

    /// Sessions live `ttl_s` seconds after `initialize` (also what bounds
    /// how long a session ended on one replica stays usable on another).
    pub fn with_ttl(mut self, ttl_s: u64) -> Self {
        self.ttl_s = ttl_s;
        self
    }

    /// A new session's token.
    pub fn issue(&self, principal: &Principal, version: &str) -> String {
        self.issue_with(principal, version, Vec::new())
    }

    /// A session token that also records the client's relayable
    /// capabilities.
    pub fn issue_with(&self, principal: &Principal, version: &str, caps: Vec<String>) -> String {
        let claims = SessionClaims {
            sid: uuid::Uuid::now_v7().to_string(),
            sub: principal.id.clone(),
            ten: principal.tenant.clone(),
            pv: version.to_string(),
            iat: now_s(),
            caps,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(&self.key, payload.as_bytes()));
        format!("v1.{payload}.{mac}")
    }

    /// The claims of a valid token of a session that was not ended here and
    /// belongs to `principal`; None otherwise.
    pub fn verify(&self, token: &str, principal: &Principal) -> Option<SessionClaims> {
        let rest = token.strip_prefix("v1.")?;
        let (payload, mac) = rest.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !equal(&mac, &hmac_sha256(&self.key, payload.as_bytes())) {
            return None;
        }
        let claims: SessionClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let owner = claims.sub == principal.id && claims.ten == principal.tenant;
        let age = (now_s()).saturating_sub(claims.iat);
        let live = age < self.ttl_s && !self.ended.load().contains(&claims.sid);
        (owner && live).then_some(claims)
    }

    /// Ends a session on this gateway.
    pub fn end(&self, sid: &str) {
        self.ended.rcu(|set| {
            let mut set = HashSet::clone(set);
            set.insert(sid.to_string());
            Arc::new(set)
        });
        self.log_levels.rcu(|levels| {
            let mut levels = HashMap::clone(levels);
            levels.remove(sid);
            Arc::new(levels)
        });
    }

    /// Records a session's `logging/setLevel` (a rank in `LOG_LEVELS`).
    /// Levels older than a session's lifetime are dropped as others are set.
    pub fn set_log_level(&self, sid: &str, rank: usize) {
        let now = now_s();
        let ttl = self.ttl_s;
        self.log_levels.rcu(|levels| {
            let mut levels: HashMap<String, (usize, u64)> = levels
                .iter()
                .filter(|(_, (_, at))| now.saturating_sub(*at) < ttl)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            levels.insert(sid.to_string(), (rank, now));
            Arc::new(levels)
        });
    }

    /// Records a session's subscription; false when it already had it.
    pub fn add_subscription(&self, sid: &str, server: &str, uri: &str, as_named: &str) -> bool {
        let key = (server.to_string(), uri.to_string());
        if self
            .subscriptions
            .load()
            .get(sid)
            .is_some_and(|s| s.contains_key(&key))
        {
            return false;
        }
        self.subscriptions.rcu(|all| {
            let mut all = HashMap::clone(all);
            all.entry(sid.to_string())
                .or_default()
                .insert(key.clone(), (as_named.to_string(), now_s()));
            Arc::new(all)
        });
        true
    }

    /// Drops a session's subscription; false when it had none.
    pub fn remove_subscription(&self, sid: &str, server: &str, uri: &str) -> bool {
        let key = (server.to_string(), uri.to_string());
        let had = self
            .subscriptions
            .load()
            .get(sid)
            .is_some_and(|s| s.contains_key(&key));
        if had {
            self.subscriptions.rcu(|all| {
                let mut all = HashMap::clone(all);
                if let Some(s) = all.get_mut(sid) {
                    s.remove(&key);
                    if s.is_empty() {
                        all.remove(sid);
                    }
                }
                Arc::new(all)
            });
        }
        had
    }

    /// The URI a session subscribed to a server's `uri` as, if it did.
    pub fn subscribed_as(&self, sid: &str, server: &str, uri: &str) -> Option<String> {
        self.subscriptions
            .load()
            .get(sid)?
            .get(&(server.to_string(), uri.to_string()))
            .map(|(as_named, _)| as_named.clone())
    }

    /// Removes the subscriptions older than a session's lifetime (their
    /// sessions expired without a `DELETE`) and returns them as (server,
    /// URI), so the upstream subscriptions can be released.
    pub fn expired_subscriptions(&self) -> Vec<(String, String)> {
        let now = now_s();
        let old = |at: u64| now.saturating_sub(at) >= self.ttl_s;
        let expired: Vec<(String, String)> = self
            .subscriptions
            .load()
            .values()
            .flat_map(|s| {
                s.iter()
                    .filter(|(_, (_, at))| old(*at))
                    .map(|(k, _)| k.clone())
            })
            .collect();
        if !expired.is_empty() {
            self.subscriptions.rcu(|all| {
                let mut all = HashMap::clone(all);
                for s in all.values_mut() {
                    s.retain(|_, (_, at)| !old(*at));
                }
                all.retain(|_, s| !s.is_empty());
                Arc::new(all)
            });
        }
        expired
    }

    /// Removes and returns all of a session's subscriptions (it ended).
    pub fn take_subscriptions(&self, sid: &str) -> Vec<(String, String)> {
        let taken = self
            .subscriptions
            .load()
            .get(sid)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        self.subscriptions.rcu(|all| {
            let mut all = HashMap::clone(all);
            all.remove(sid);
            Arc::new(all)
        });
        taken
    }

    /// The level a session set, if it set one (on this gateway).
    pub fn log_level(&self, sid: &str) -> Option<usize> {
        self.log_levels.load().get(sid).map(|(rank, _)| *rank)
    }
}

/// The headers a stateless request is checked against.
#[derive(Debug, Default, Clone)]
pub struct EraHeaders {
    pub protocol_version: Option<String>,
    pub method: Option<String>,
    pub name: Option<String>,
}

/// The protocol version a request declares in `_meta`, if any.
pub fn meta_version(params: &Value) -> Option<&str> {
    params.get("_meta")?.get(META_VERSION)?.as_str()
}

/// Whether a request belongs to the stateless era.
pub fn is_stateless(method: &str, params: &Value, headers: &EraHeaders) -> bool {
    method == "server/discover"
        || meta_version(params).is_some()
        || headers.protocol_version.as_deref() == Some(STATELESS)
}

/// `Mcp-Name` values may be Base64-wrapped as `=?base64?...?=`.
fn decode_header(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(inner) => String::from_utf8(STANDARD.decode(inner).ok()?).ok(),
        None => Some(value.to_string()),
    }
}

/// The stateless era's rules for one request: (code, message) on a breach.
pub fn check_stateless(method: &str, params: &Value, h: &EraHeaders) -> Result<(), (i64, String)> {
    let declared = meta_version(params);
    match (declared, h.protocol_version.as_deref()) {
        (Some(_), None) => {
            return Err((
                HEADER_MISMATCH,
                "request _meta protocolVersion requires the MCP-Protocol-Version header".into(),
            ))
        }
        (Some(m), Some(hv)) if m != hv => {
            return Err((
                HEADER_MISMATCH,
                format!("MCP-Protocol-Version header ({hv}) does not match request _meta protocolVersion ({m})"),
            ))
        }
        _ => {}
    }
    let version = declared
        .or(h.protocol_version.as_deref())
        .unwrap_or(STATELESS);
    if version != STATELESS {
        return Err((
            UNSUPPORTED_PROTOCOL_VERSION,
            format!("protocol version {version} is not supported without initialize; supported: {STATELESS}"),
        ));
    }
    match h.method.as_deref() {
        None => return Err((HEADER_MISMATCH, "missing required Mcp-Method header".into())),
        Some(m) if m != method => {
            return Err((
                HEADER_MISMATCH,
                format!("Mcp-Method header `{m}` does not match body method `{method}`"),
            ))
        }
        _ => {}
    }
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        _ => return Ok(()),
    };
    let Some(expected) = params.get(key).and_then(Value::as_str) else {
        return Ok(());
    };
    match h.name.as_deref().map(decode_header) {
        None => Err((
            HEADER_MISMATCH,
            format!("missing required Mcp-Name header for `{method}`"),
        )),
        Some(None) => Err((
            HEADER_MISMATCH,
            "Mcp-Name header is not valid Base64".into(),
        )),
        Some(Some(n)) if n != expected => Err((
            HEADER_MISMATCH,
            format!("Mcp-Name header `{n}` does not match body value `{expected}`"),
        )),
        Some(Some(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(id: &str) -> Principal {
        Principal {
            kind: lattice_policy::PrincipalKind::Agent,
            id: id.into(),
            tenant: "t".into(),
            roles: vec![],
            labels: vec![],
            auth_method: "api_key".into(),
        }
    }

    #[test]
    fn session_tokens_verify_only_unaltered_for_their_owner_until_ended() {
        let s = Sessions::with_key([7; 32]);
        let token = s.issue(&agent("a"), "2025-06-18");
        assert!(
            token.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII"
        );
        let claims = s.verify(&token, &agent("a")).unwrap();
        assert_eq!(claims.pv, "2025-06-18");
        assert!(
            s.verify(&token, &agent("b")).is_none(),
            "bound to its principal"
        );
        let other_key = Sessions::with_key([8; 32]);
        assert!(other_key.verify(&token, &agent("a")).is_none());
        let replica = Sessions::with_key([7; 32]);
        assert!(
            replica.verify(&token, &agent("a")).is_some(),
            "any holder of the key"
        );
        let mut forged = token.clone();
        forged.replace_range(5..6, if &token[5..6] == "A" { "B" } else { "A" });
        assert!(s.verify(&forged, &agent("a")).is_none());
        s.end(&claims.sid);
        assert!(s.verify(&token, &agent("a")).is_none());
        // Sessions expire.
        let short = Sessions::with_key([7; 32]).with_ttl(0);
        assert!(short
            .verify(&s.issue(&agent("a"), "2025-06-18"), &agent("a"))
            .is_none());
    }

    #[test]
    fn subscriptions_are_per_session_and_expire_with_it() {
        let s = Sessions::with_key([7; 32]);
        assert!(s.add_subscription(
            "s1",
            "conf",
            "test://a",
            "lattice+mcp://conf/test%3A%2F%2Fa"
        ));
        assert!(
            !s.add_subscription("s1", "conf", "test://a", "x"),
            "already held"
        );
        assert!(s.add_subscription("s2", "conf", "test://a", "test://a"));
        assert_eq!(
            s.subscribed_as("s1", "conf", "test://a").as_deref(),
            Some("lattice+mcp://conf/test%3A%2F%2Fa")
        );
        assert_eq!(s.subscribed_as("s3", "conf", "test://a"), None);
        assert!(s.remove_subscription("s2", "conf", "test://a"));
        assert!(!s.remove_subscription("s2", "conf", "test://a"));
        // Within the lifetime nothing expires; past it, everything does.
        assert!(s.expired_subscriptions().is_empty());
        let s = s.with_ttl(0);
        assert_eq!(
            s.expired_subscriptions(),
            vec![("conf".to_string(), "test://a".to_string())]
        );
        assert_eq!(s.subscribed_as("s1", "conf", "test://a"), None);
        assert!(s.take_subscriptions("s1").is_empty());
    }

    #[test]
    fn stateless_requests_must_mirror_their_body_in_headers() {
        let params = json!({"name": "srv__echo", "_meta": {META_VERSION: STATELESS}});
        let good = EraHeaders {
            protocol_version: Some(STATELESS.into()),
            method: Some("tools/call".into()),
            name: Some("srv__echo".into()),
        };
        assert!(is_stateless("tools/call", &params, &EraHeaders::default()));
        assert_eq!(check_stateless("tools/call", &params, &good), Ok(()));
        let wrapped = EraHeaders {
            name: Some(format!("=?base64?{}?=", STANDARD.encode("srv__echo"))),
            ..good.clone()
        };
        assert_eq!(check_stateless("tools/call", &params, &wrapped), Ok(()));
        for (h, needle) in [
            (
                EraHeaders {
                    method: None,
                    ..good.clone()
                },
                "missing required Mcp-Method",
            ),
            (
                EraHeaders {
                    method: Some("tools/list".into()),
                    ..good.clone()
                },
                "does not match body method",
            ),
            (
                EraHeaders {
                    name: None,
                    ..good.clone()
                },
                "missing required Mcp-Name",
            ),
            (
                EraHeaders {
                    name: Some("srv__other".into()),
                    ..good.clone()
                },
                "does not match body value",
            ),
            (
                EraHeaders {
                    protocol_version: None,
                    ..good.clone()
                },
                "requires the MCP-Protocol-Version",
            ),
            (
                EraHeaders {
                    protocol_version: Some("2025-06-18".into()),
                    ..good.clone()
                },
                "does not match request _meta",
            ),
        ] {
            let (code, message) = check_stateless("tools/call", &params, &h).unwrap_err();
            assert_eq!(code, HEADER_MISMATCH);
            assert!(message.contains(needle), "{message}");
        }
        let future = json!({"_meta": {META_VERSION: "2027-01-01"}});
        let h = EraHeaders {
            protocol_version: Some("2027-01-01".into()),
            method: Some("tools/list".into()),
            name: None,
        };
        assert_eq!(
            check_stateless("tools/list", &future, &h).unwrap_err().0,
            UNSUPPORTED_PROTOCOL_VERSION
        );
    }
}
