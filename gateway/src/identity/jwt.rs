//! JWT bearer tokens: issuers from config, their keys from a JWKS file or URL
//! (parsed here: RSA, P-256 and Ed25519 JWKs), verification with jwt-simple,
//! and the mapping of claims to a principal. `alg: none`, unknown issuers,
//! wrong audiences, expired or exp-less tokens and bad signatures are refused.
//!
//! Must never: accept a token without checking its issuer, audience,
//! algorithm and expiry.

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jwt_simple::prelude::*;
use lattice_policy::Principal;
use serde_json::{Map, Value};
use std::sync::Arc;

use crate::config::{JwksSource, JwtIssuer};

/// The signature algorithms Lattice accepts.
pub use crate::config::SUPPORTED_JWT_ALGS as SUPPORTED_ALGS;

#[derive(Clone)]
enum VerifyKey {
    Ed(Ed25519PublicKey),
    Es(ES256PublicKey),
    Rs(Box<RS256PublicKey>),
}

impl VerifyKey {
    fn alg(&self) -> &'static str {
        match self {
            VerifyKey::Ed(_) => "EdDSA",
            VerifyKey::Es(_) => "ES256",
            VerifyKey::Rs(_) => "RS256",
        }
    }
}

#[derive(Clone)]
struct Jwk {
    kid: Option<String>,
    key: VerifyKey,
}

/// A parsed key set.
#[derive(Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl Jwks {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn b64(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JWK has no `{field}`"))?;
    B64URL
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("JWK `{field}` is not base64url"))
}

/// Parses a JWKS document. Keys of unsupported types are skipped; a set with
/// no usable key is an error.
pub fn parse_jwks(text: &str) -> Result<Jwks, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no `keys` array")?;
    let mut out = Vec::new();
    for k in keys {
        if k.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        let key = match (
            k.get("kty").and_then(Value::as_str),
            k.get("crv").and_then(Value::as_str),
        ) {
            (Some("OKP"), Some("Ed25519")) => VerifyKey::Ed(
                Ed25519PublicKey::from_bytes(&b64(k, "x")?).map_err(|e| e.to_string())?,
            ),
            (Some("EC"), Some("P-256")) => {
                let mut sec1 = vec![4u8];
                sec1.extend(b64(k, "x")?);
                sec1.extend(b64(k, "y")?);
                VerifyKey::Es(ES256PublicKey::from_bytes(&sec1).map_err(|e| e.to_string())?)
            }
            (Some("RSA"), _) => VerifyKey::Rs(Box::new(
                RS256PublicKey::from_components(&b64(k, "n")?, &b64(k, "e")?)
                    .map_err(|e| e.to_string())?,
            )),
            _ => continue,
        };
        if let Some(alg) = k.get("alg").and_then(Value::as_str) {
            if alg != key.alg() {
                continue;
            }
        }
        out.push(Jwk { kid, key });
    }
    if out.is_empty() {
        return Err("JWKS has no usable signing key (EdDSA, ES256 or RS256)".into());
    }
    Ok(Jwks { keys: out })
}

/// One trusted issuer and its current keys.
pub struct IssuerKeys {
    pub config: JwtIssuer,
    keys: ArcSwap<Jwks>,
}

impl IssuerKeys {
    /// Loads file-based keys now; URL-based keys start empty until the first
    /// refresh.
    pub fn new(config: JwtIssuer) -> Result<Self, String> {
        let keys = match &config.jwks {
            JwksSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("JWKS file {}: {e}", path.display()))?;
                parse_jwks(&text).map_err(|e| format!("JWKS file {}: {e}", path.display()))?
            }
            JwksSource::Url(_) => Jwks::default(),
        };
        Ok(Self {
            config,
            keys: ArcSwap::from_pointee(keys),
        })
    }

    pub fn set_keys(&self, keys: Jwks) {
        self.keys.store(Arc::new(keys));
    }
}

/// Verifies tokens against all configured issuers.
#[derive(Default)]
pub struct JwtVerifier {
    pub issuers: Vec<Arc<IssuerKeys>>,
}

fn payload_issuer(token: &str) -> Result<String, String> {
    let payload = token.split('.').nth(1).ok_or("malformed token")?;
    let bytes = B64URL
        .decode(payload)
        .map_err(|_| "malformed token payload")?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| "malformed token payload")?;
    claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "token has no issuer".to_string())
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

impl JwtVerifier {
    /// Verifies a token and maps its claims to a principal. The error says
    /// why, for the 401 and the audit.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let meta = Token::decode_metadata(token).map_err(|_| "malformed token".to_string())?;
        let alg = meta.algorithm();
        if alg.eq_ignore_ascii_case("none") {
            return Err("unsigned tokens (alg none) are refused".into());
        }
        let iss = payload_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| format!("unknown issuer `{iss}`"))?;
        let cfg = &issuer.config;
        if !cfg.algorithms.iter().any(|a| a == alg) {
            return Err(format!("algorithm `{alg}` is not accepted for this issuer"));
        }
        let keys = issuer.keys.load();
        let candidates: Vec<&Jwk> = keys
            .keys
            .iter()
            .filter(|k| k.key.alg() == alg)
            .filter(|k| match (meta.key_id(), &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err("no key of the issuer matches the token's key id and algorithm".into());
        }
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([iss.clone()])),
            allowed_audiences: Some(cfg.audiences.iter().cloned().collect()),
            time_tolerance: Some(Duration::from_secs(cfg.leeway.as_secs())),
            max_token_length: Some(16 * 1024),
            ..Default::default()
        };
        let mut last_err = String::from("bad signature");
        for k in candidates {
            let result = match &k.key {
                VerifyKey::Ed(key) => {
                    key.verify_token::<Map<String, Value>>(token, Some(options.clone()))
                }
                VerifyKey::Es(key) => {
                    key.verify_token::<Map<String, Value>>(token, Some(options.clone()))
                }
                VerifyKey::Rs(key) => {
                    key.verify_token::<Map<String, Value>>(token, Some(options.clone()))
                }
            };
            match result {
                Ok(claims) => return principal(cfg, claims),
                Err(e) => last_err = describe(&e),
            }
        }
        Err(last_err)
    }
}

fn describe(e: &jwt_simple::Error) -> String {
    let s = e.to_string();
    let lower = s.to_lowercase();
    if lower.contains("expired") {
        "token has expired".into()
    } else if lower.contains("audience") {
        "token audience is not accepted".into()
    } else if lower.contains("signature") || lower.contains("verification") {
        "bad signature".into()
    } else {
        format!("invalid token: {s}")
    }
}

fn principal(cfg: &JwtIssuer, claims: JWTClaims<Map<String, Value>>) -> Result<Principal, String> {
    if claims.expires_at.is_none() {
        return Err("token has no expiry (exp)".into());
    }
    let custom = &claims.custom;
    let agent = if cfg.agent_claim == "sub" {
        claims.subject.clone()
    } else {
        custom
            .get(&cfg.agent_claim)
            .and_then(Value::as_str)
            .map(str::to_string)
    }
    .filter(|s| !s.is_empty())
    .ok_or_else(|| format!("token has no `{}` claim", cfg.agent_claim))?;
    let tenant = cfg
        .tenant_claim
        .as_ref()
        .and_then(|c| custom.get(c))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| cfg.default_tenant.clone());
    Ok(Principal {
        kind: cfg.principal_kind,
        id: agent,
        tenant,
        roles: string_list(cfg.roles_claim.as_ref().and_then(|c| custom.get(c))),
        labels: string_list(cfg.labels_claim.as_ref().and_then(|c| custom.get(c))),
        auth_method: "jwt".into(),
    })
}
