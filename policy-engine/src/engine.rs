//! The policy engine proper: a schema-validated Cedar policy set (plus an
//! optional shadow set) and the decision function. Pure: no I/O, no clocks,
//! no globals; callers pass policy text in and get decisions out.

use cedar_policy::{
    Authorizer, Entities, PolicyId, PolicySet, Request, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;
use std::str::FromStr;
use std::sync::Arc;

use crate::build::Builder;
use crate::memo::Memo;
use crate::request::AuthzRequest;
use crate::slice::Slices;
use crate::PolicyError;

/// The Lattice Cedar schema (see `lattice.cedarschema`).
pub const SCHEMA_SRC: &str = include_str!("lattice.cedarschema");

/// One policy file: a name (its path, for messages) and its text.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub name: String,
    pub text: String,
}

impl PolicySource {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

/// A decision and why it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// Ids of the policies that decided: the matching permits for an allow,
    /// the matching forbids for an explicit deny, empty for a default deny.
    pub policies: Vec<String>,
    /// Evaluation or request-validation errors. Any error forces a deny.
    pub errors: Vec<String>,
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    fn deny_with_error(error: String) -> Self {
        Self {
            outcome: Outcome::Deny,
            policies: Vec::new(),
            errors: vec![error],
        }
    }

    /// One line for logs and the CLI.
    pub fn summary(&self) -> String {
        let mut s = self.outcome.as_str().to_string();
        if self.policies.is_empty() && self.errors.is_empty() && !self.is_allow() {
            s.push_str(" (no policy permits: default deny)");
        }
        if !self.policies.is_empty() {
            s.push_str(&format!(" by [{}]", self.policies.join(", ")));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!(" with errors: {}", self.errors.join("; ")));
        }
        s
    }
}

/// The live decision and, when a shadow set is loaded, what it would decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub live: Decision,
    pub shadow: Option<Decision>,
}

impl Evaluation {
    /// True when a shadow set is loaded and decided differently.
    pub fn shadow_disagrees(&self) -> bool {
        self.shadow
            .as_ref()
            .is_some_and(|s| s.outcome != self.live.outcome)
    }
}

/// A validated policy set and the text of each policy, by id.
#[derive(Debug, Clone)]
pub(crate) struct CompiledSet {
    pub(crate) set: PolicySet,
    texts: Vec<(String, String)>,
}

/// A compiled set, its slices by (action, principal kind) and the memo of
/// its recent decisions (shared by clones of the engine: same policies).
#[derive(Debug, Clone)]
struct Loaded {
    compiled: CompiledSet,
    slices: Slices,
    memo: Arc<Memo>,
}

/// The Cedar request and entities built from a Lattice request, or why not.
type Prepared = Result<(Request, Arc<Entities>), String>;

/// Whether the memo may answer: building a request fails only for a context
/// that names `time` or `client_ip` among its other attributes, or an
/// address Cedar's `ip` refuses (whose error names the address). Such
/// requests always go to Cedar; for every other request building succeeds
/// whatever the key's attributes, so the key need hold only what the
/// policies read.
fn memoizable(builder: &Builder, req: &AuthzRequest) -> bool {
    let extra = &req.context.extra;
    !extra.contains_key("time")
        && !extra.contains_key("client_ip")
        && builder.ip_builds(&req.context.client_ip)
}

impl Loaded {
    fn new(
        schema: &Schema,
        builder: &Builder,
        sources: &[PolicySource],
    ) -> Result<Self, PolicyError> {
        let compiled = compile(schema, sources)?;
        let slices = Slices::new(schema, builder, &compiled.set)?;
        Ok(Self {
            compiled,
            slices,
            memo: Arc::default(),
        })
    }
}

/// The loaded engine. Build a new one to reload; an invalid set never
/// produces an engine, so a caller that swaps only on success keeps the old
/// policies serving.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    schema: Schema,
    live: Loaded,
    shadow: Option<Loaded>,
    authorizer: Authorizer,
    builder: Arc<Builder>,
    validate_requests: bool,
}

/// The `ToolInput` fragment used when the operator declares none.
pub const DEFAULT_TOOL_INPUT: &str = "namespace Lattice { type ToolInput = {}; }";

/// The Lattice schema, parsed, with the default `ToolInput`.
pub fn schema() -> Result<Schema, PolicyError> {
    schema_with(None)
}

/// The Lattice schema with an operator's `ToolInput` fragment (Cedar schema
/// text declaring `type ToolInput` in namespace `Lattice`).
pub fn schema_with(tool_input: Option<&str>) -> Result<Schema, PolicyError> {
    let fragment = |name: &str, text: &str| {
        cedar_policy::SchemaFragment::from_cedarschema_str(text)
            .map(|(f, _warnings)| f)
            .map_err(|e| PolicyError::Schema(format!("{name}: {e}")))
    };
    let base = fragment("lattice.cedarschema", SCHEMA_SRC)?;
    let input = fragment(
        "tool input schema",
        tool_input.unwrap_or(DEFAULT_TOOL_INPUT),
    )?;
    Schema::from_schema_fragments([base, input]).map_err(|e| PolicyError::Schema(e.to_string()))
}

impl PolicyEngine {
    /// Parses and validates `live` (and `shadow`, if given) against the schema.
    pub fn new(
        live: &[PolicySource],
        shadow: Option<&[PolicySource]>,
    ) -> Result<Self, PolicyError> {
        Self::with_tool_input(live, shadow, None)
    }

    /// As `new`, with the operator's `ToolInput` schema fragment (the type of
    /// `context.input` on `call_tool`).
    pub fn with_tool_input(
        live: &[PolicySource],
        shadow: Option<&[PolicySource]>,
        tool_input: Option<&str>,
    ) -> Result<Self, PolicyError> {
        let schema = schema_with(tool_input)?;
        let builder = Builder::new()?;
        let live = Loaded::new(&schema, &builder, live)?;
        let shadow = shadow
            .map(|s| Loaded::new(&schema, &builder, s))
            .transpose()?;
        Ok(Self {
            schema,
            live,
            shadow,
            authorizer: Authorizer::new(),
            builder: Arc::new(builder),
            validate_requests: true,
        })
    }

    /// The schema policies are validated against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The live policy set.
    pub fn live_set(&self) -> &PolicySet {
        &self.live.compiled.set
    }

    /// Decides a concrete Cedar request (a proof's counterexample) with the
    /// live set: true when allowed.
    pub fn decide_concrete(
        &self,
        request: &cedar_policy::Request,
        entities: &cedar_policy::Entities,
    ) -> bool {
        self.authorizer
            .is_authorized(request, &self.live.compiled.set, entities)
            .decision()
            == cedar_policy::Decision::Allow
    }

    /// Ids of the live policies, in load order.
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.live.compiled.texts.iter().map(|(id, _)| id.as_str())
    }

    /// The source text of a live policy.
    pub fn policy_text(&self, id: &str) -> Option<&str> {
        self.live
            .compiled
            .texts
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, t)| t.as_str())
    }

    pub fn has_shadow(&self) -> bool {
        self.shadow.is_some()
    }

    /// Decides a request with the live set (and the shadow set, if any).
    pub fn evaluate(&self, req: &AuthzRequest) -> Evaluation {
        let mut prepared = None;
        let live = self.decide_in(&self.live, req, &mut prepared);
        let shadow = self
            .shadow
            .as_ref()
            .map(|s| self.decide_in(s, req, &mut prepared));
        Evaluation { live, shadow }
    }

    /// Decides a request with the live set only.
    pub fn decide(&self, req: &AuthzRequest) -> Decision {
        self.decide_in(&self.live, req, &mut None)
    }

    /// Decides with one set: from the memo when it holds this request's
    /// key, else by Cedar (building the request once for both sets).
    fn decide_in(
        &self,
        loaded: &Loaded,
        req: &AuthzRequest,
        prepared: &mut Option<Prepared>,
    ) -> Decision {
        let (conditions, reads) = loaded.slices.get(req.action, req.principal.kind);
        let memo = (!self.validate_requests && memoizable(&self.builder, req))
            .then(|| (&loaded.memo, loaded.memo.hash(req, reads)));
        if let Some(d) = memo.and_then(|(m, h)| m.get(h, req, reads)) {
            return d;
        }
        let p = prepared.get_or_insert_with(|| self.prepare(req));
        let d = match p {
            Ok((request, entities)) => conditions.decide(request, entities),
            Err(e) => Decision::deny_with_error(e.clone()),
        };
        if let Some((m, h)) = memo {
            m.put(h, req, reads, &d);
        }
        d
    }

    /// Turns off request validation against the schema, for callers whose
    /// requests are typed by construction (the gateway). Safe because every
    /// policy was validated strictly against the schema at load, and any
    /// evaluation error (a missing or mistyped attribute) denies.
    pub fn without_request_validation(mut self) -> Self {
        self.validate_requests = false;
        self
    }

    /// Cedar's decision with the whole live (or shadow) set: no slice, no
    /// memo. What the engine's answers are checked against.
    #[cfg(test)]
    pub(crate) fn decide_by_cedar(&self, req: &AuthzRequest, shadow: bool) -> Decision {
        let loaded = if shadow {
            self.shadow.as_ref()
        } else {
            Some(&self.live)
        };
        match loaded {
            Some(l) => match self.prepare_by_cedar(req) {
                Ok((request, entities)) => {
                    crate::authorize::by_cedar(&l.compiled.set, &request, &entities)
                }
                Err(e) => Decision::deny_with_error(e),
            },
            None => Decision::deny_with_error("no shadow set".into()),
        }
    }

    /// How many decisions the live set's memo holds.
    #[cfg(test)]
    pub(crate) fn memo_len(&self) -> usize {
        self.live.memo.len()
    }

    /// As `prepare`, with the context and the entities built by Cedar's own
    /// evaluation: what the engine is checked against.
    #[cfg(test)]
    fn prepare_by_cedar(&self, req: &AuthzRequest) -> Prepared {
        let schema = self.validate_requests.then_some(&self.schema);
        let context = crate::build::context_by_cedar(req)?;
        Ok((
            self.builder.request_with(req, context, schema)?,
            self.builder
                .entities_by_cedar(&req.principal, &req.resource)?,
        ))
    }

    fn prepare(&self, req: &AuthzRequest) -> Prepared {
        let schema = self.validate_requests.then_some(&self.schema);
        Ok((
            self.builder.request(req, schema)?,
            self.builder.entities(&req.principal, &req.resource)?,
        ))
    }
}

pub(crate) fn compile(
    schema: &Schema,
    sources: &[PolicySource],
) -> Result<CompiledSet, PolicyError> {
    let mut set = PolicySet::new();
    let mut texts = Vec::new();
    for source in sources {
        let parsed = PolicySet::from_str(&source.text).map_err(|e| PolicyError::Parse {
            file: source.name.clone(),
            message: render(&e),
        })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Invalid {
                file: source.name.clone(),
                message: "policy templates are not supported; write static policies".into(),
            });
        }
        for (index, policy) in parsed.policies().enumerate() {
            let id = policy
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}#{index}", source.name));
            let text = policy.to_string();
            set.add(policy.new_id(PolicyId::new(&id)))
                .map_err(|e| PolicyError::Invalid {
                    file: source.name.clone(),
                    message: format!("policy `{id}`: {e}"),
                })?;
            texts.push((id, text));
        }
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let message = result
            .validation_errors()
            .map(|e| format!("policy `{}`: {}", e.policy_id(), render(e)))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(PolicyError::Validation(message));
    }
    Ok(CompiledSet { set, texts })
}

/// Renders an error with its help text, if Cedar gives one.
fn render(e: &dyn Diagnostic) -> String {
    let mut s = e.to_string();
    if let Some(help) = e.help() {
        s.push_str(&format!(" (help: {help})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Action, Principal, PrincipalKind, RequestContext, Resource};

    const SET: &str = r#"
        @id("agents-get")
        permit (principal in Lattice::Role::"agent", action == Lattice::Action::"http_request", resource)
        when { context.method == "GET" };
        @id("no-confidential-routes")
        forbid (principal, action == Lattice::Action::"http_request", resource)
        when { resource.labels.contains("confidential") && !principal.labels.contains("cleared") };
    "#;

    fn req(method: &str, route_labels: &[&str], client_ip: &str) -> AuthzRequest {
        AuthzRequest {
            principal: Principal {
                kind: PrincipalKind::Agent,
                id: "a1".into(),
                tenant: "t1".into(),
                roles: vec!["agent".into()],
                labels: vec![],
                auth_method: "api_key".into(),
            },
            action: Action::HttpRequest,
            resource: Resource::HttpRoute {
                id: "r".into(),
                labels: route_labels.iter().map(|s| s.to_string()).collect(),
            },
            context: RequestContext::new(0, client_ip)
                .with("method", method)
                .with("path", "/"),
        }
    }

    fn engine(shadow: Option<&str>) -> PolicyEngine {
        let live = [PolicySource::new("set.cedar", SET)];
        let shadow = shadow.map(|s| vec![PolicySource::new("shadow.cedar", s)]);
        PolicyEngine::new(&live, shadow.as_deref()).unwrap()
    }

    #[test]
    fn decisions_name_their_policies() {
        let e = engine(None);
        let d = e.decide(&req("GET", &[], "10.0.0.1"));
        assert_eq!(
            (d.outcome, d.policies.clone()),
            (Outcome::Allow, vec!["agents-get".to_string()])
        );
        let d = e.decide(&req("GET", &["confidential"], "10.0.0.1"));
        assert_eq!(
            (d.outcome, d.policies.clone()),
            (Outcome::Deny, vec!["no-confidential-routes".to_string()])
        );
        let d = e.decide(&req("POST", &[], "10.0.0.1"));
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(d.policies.is_empty() && d.errors.is_empty());
        assert!(d.summary().contains("default deny"));
    }

    #[test]
    fn an_invalid_request_is_a_deny_with_the_error() {
        let d = engine(None).decide(&req("GET", &[], "not-an-ip"));
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.errors.len(), 1, "{d:?}");
        // A context attribute the schema does not declare is refused too.
        let mut r = req("GET", &[], "10.0.0.1");
        r.context = r.context.with("surprise", "x");
        let d = engine(None).decide(&r);
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(!d.errors.is_empty());
    }

    #[test]
    fn invalid_policies_are_refused_with_cedars_message() {
        let typo = r#"permit (principal, action == Lattice::Action::"http_request", resource) when { resource.lables.contains("x") };"#;
        let err = PolicyEngine::new(&[PolicySource::new("typo.cedar", typo)], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lables"), "{err}");
        let syntax = "permit (principal action, resource);";
        let err = PolicyEngine::new(&[PolicySource::new("syntax.cedar", syntax)], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("syntax.cedar: policy does not parse"),
            "{err}"
        );
        let unknown_action = r#"permit (principal, action == Lattice::Action::"fly", resource);"#;
        assert!(PolicyEngine::new(&[PolicySource::new("a.cedar", unknown_action)], None).is_err());
    }

    #[test]
    fn shadow_set_disagreements_are_reported() {
        let stricter = r#"@id("only-cleared") permit (principal, action == Lattice::Action::"http_request", resource) when { principal.labels.contains("cleared") };"#;
        let e = engine(Some(stricter));
        let ev = e.evaluate(&req("GET", &[], "10.0.0.1"));
        assert_eq!(ev.live.outcome, Outcome::Allow);
        assert_eq!(ev.shadow.as_ref().map(|s| s.outcome), Some(Outcome::Deny));
        assert!(ev.shadow_disagrees());
        let ev = e.evaluate(&req("POST", &[], "10.0.0.1"));
        assert!(!ev.shadow_disagrees());
    }

    #[test]
    fn cached_entities_never_stand_for_changed_attributes() {
        let e = engine(None).without_request_validation();
        let mut r = req("GET", &["confidential"], "10.0.0.1");
        assert_eq!(e.decide(&r).outcome, Outcome::Deny);
        r.principal.labels = vec!["cleared".into()];
        assert_eq!(e.decide(&r).outcome, Outcome::Allow, "same id, new labels");
        r.principal.labels.clear();
        assert_eq!(e.decide(&r).outcome, Outcome::Deny);
    }

    #[test]
    fn without_request_validation_a_missing_attribute_still_denies() {
        let e = engine(None).without_request_validation();
        let mut r = req("GET", &[], "10.0.0.1");
        r.context.extra.remove("method");
        let d = e.decide(&r);
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(!d.errors.is_empty(), "{d:?}");
    }

    #[test]
    fn ip_ranges_work_in_policies() {
        let set = r#"permit (principal, action == Lattice::Action::"http_request", resource) when { context.client_ip.isInRange(ip("10.0.0.0/8")) };"#;
        let e = PolicyEngine::new(&[PolicySource::new("ip.cedar", set)], None).unwrap();
        assert!(e.decide(&req("GET", &[], "10.1.2.3")).is_allow());
        assert!(!e.decide(&req("GET", &[], "192.168.1.1")).is_allow());
    }
    #[test]
    fn argument_level_rules_read_the_tool_input() {
        let rules = r#"
            @id("agents-call")
            permit (principal in Lattice::Role::"agent", action == Lattice::Action::"call_tool", resource);
            @id("small-transfers-only")
            forbid (principal, action == Lattice::Action::"call_tool", resource)
            when { resource.name == "bank__transfer" && context.input has amount && context.input.amount >= 1000 };
        "#;
        let types = "namespace Lattice { type ToolInput = { amount?: Long, to?: String }; }";
        // An unguarded attribute never validates (every tool has its own input).
        let unguarded = r#"forbid (principal, action == Lattice::Action::"call_tool", resource) when { context.input.amount >= 1000 };"#;
        for t in [None, Some(types)] {
            let err =
                PolicyEngine::with_tool_input(&[PolicySource::new("u.cedar", unguarded)], None, t);
            assert!(err.is_err(), "{t:?}");
        }
        // Declared types catch a misuse at load.
        let misuse = r#"forbid (principal, action == Lattice::Action::"call_tool", resource) when { context.input has amount && context.input.amount like "1*" };"#;
        assert!(PolicyEngine::with_tool_input(
            &[PolicySource::new("m.cedar", misuse)],
            None,
            Some(types)
        )
        .is_err());
        let e = PolicyEngine::with_tool_input(
            &[PolicySource::new("r.cedar", rules)],
            None,
            Some(types),
        )
        .unwrap()
        .without_request_validation();
        let call = |input: serde_json::Value| {
            let mut r = req("GET", &[], "10.0.0.1");
            r.action = Action::CallTool;
            r.resource = Resource::tool("bank__transfer", "bank", "high");
            r.context = RequestContext::new(0, "10.0.0.1").with_value(
                "input",
                crate::request::ContextValue::from_json(&input).unwrap(),
            );
            e.decide(&r)
        };
        assert!(call(serde_json::json!({"amount": 5, "to": "x"})).is_allow());
        let d = call(serde_json::json!({"amount": 5000}));
        assert!(!d.is_allow());
        assert_eq!(d.policies, vec!["small-transfers-only".to_string()]);
        // A fractional amount is no number to Cedar: the comparison errors and denies.
        assert!(!call(serde_json::json!({"amount": 5000.5})).is_allow());
        // No `input` given: an empty one, and `has` keeps the rule quiet.
        let mut r = req("GET", &[], "10.0.0.1");
        r.action = Action::CallTool;
        r.resource = Resource::Tool {
            id: "other__tool".into(),
            server: "other".into(),
            risk: "low".into(),
            labels: vec![],
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        };
        r.context = RequestContext::new(0, "10.0.0.1");
        assert!(e.decide(&r).is_allow());
    }

    #[test]
    fn a_tenant_scoped_auditor_reads_only_its_own_tenant() {
        let set = r#"
            @id("tenant-auditors")
            permit (principal in Lattice::Role::"auditor",
                    action == Lattice::Action::"admin.read_audit",
                    resource is Lattice::Tenant) when { principal in resource };
        "#;
        let e = PolicyEngine::new(&[PolicySource::new("a.cedar", set)], None).unwrap();
        let mut r = req("GET", &[], "10.0.0.1");
        r.principal.kind = PrincipalKind::Human;
        r.principal.roles = vec!["auditor".into()];
        r.action = Action::ReadAudit;
        r.context = RequestContext::new(0, "10.0.0.1");
        r.resource = Resource::Tenant { id: "t1".into() };
        assert!(e.decide(&r).is_allow());
        r.resource = Resource::Tenant { id: "t2".into() };
        assert!(!e.decide(&r).is_allow());
        // Every tenant (the whole gateway) is not theirs to read.
        r.resource = Resource::Gateway {
            id: "gateway".into(),
        };
        assert!(!e.decide(&r).is_allow());
        // The other admin actions take only the gateway.
        r.action = Action::ReadPolicies;
        r.resource = Resource::Tenant { id: "t1".into() };
        assert!(!e.decide(&r).is_allow());
        assert!(!e.decide(&r).errors.is_empty());
    }
}
