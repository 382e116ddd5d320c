//! Cedar values from Lattice requests: entity uids, the principal and
//! resource entities, and the context. Building these dominates a decision's
//! cost (Cedar parses type names and evaluates every extension call), so the
//! builder parses type names once and caches the entity stores of recent
//! (principal, resource) pairs and the `ip(...)` values of recent client
//! addresses. Caches are bounded and cleared when full; they hold only values
//! derived from their keys, so a hit is exactly what a miss would build.
//!
//! The context is built as values, not as expressions for Cedar to evaluate
//! (`context_values`): `RestrictedExpression::new_ip` parses the name `ip`
//! with Cedar's grammar on every call, and evaluating the record walks
//! Cedar's restricted evaluator — together nearly half of a decision the
//! memo had not seen (a profile of the `allow_new_client_ip` bench). It uses
//! cedar-policy-core's `ast` values and the `ip` extension function directly,
//! through cedar-policy's (doc-hidden) `From<ast::Context>` and
//! `From<entities::Entities>`: the same values
//! Cedar's evaluation makes, checked equal to it by a table test. Wherever
//! that evaluation could fail (an attribute named twice, an address `ip`
//! refuses) the context is built Cedar's way, so errors are Cedar's own.
//! A new pair's entity store is made the same way (`entities_of`), without
//! the transitive closure, which adds nothing to these two entities.
//!
//! Must never: make a value Cedar's own evaluation would not (the table
//! tests compare both ways), or cache anything not derived from its key.

use cedar_policy::{
    Context, Entities, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression, Schema,
};
use cedar_policy_core::ast::{self, PartialValue, Value};
use cedar_policy_core::entities::{NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use crate::request::{AuthzRequest, ContextValue, Principal, Resource};
use crate::PolicyError;

const NS: &str = "Lattice";
const TYPES: [&str; 11] = [
    "Tenant",
    "Role",
    "Agent",
    "Human",
    "McpServer",
    "Tool",
    "Model",
    "Backend",
    "HttpRoute",
    "Gateway",
    "Action",
];
/// Most cached entries per cache before it is cleared.
const CACHE_MAX: usize = 4096;

type EntityKey = (Principal, Resource);
/// Entity stores by the hash of their (principal, resource) pair.
type EntityCache = HashMap<u64, Vec<(EntityKey, Arc<Entities>)>>;

pub(crate) struct Builder {
    types: HashMap<&'static str, EntityTypeName>,
    entities: RwLock<EntityCache>,
    /// The entity cache's hash of a (principal, resource) pair: foldhash,
    /// seeded per process.
    hasher: foldhash::fast::RandomState,
    /// Cedar's `ip` extension function's name, parsed once.
    ip_fn: ast::Name,
    /// `ip(address)` of recent client addresses, evaluated.
    ips: RwLock<HashMap<String, Value, foldhash::fast::RandomState>>,
}

fn string_set(values: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(values.iter().cloned().map(RestrictedExpression::new_string))
}

/// The value Cedar evaluates `string_set(values)` to.
fn string_set_value(values: &[String]) -> Value {
    Value::set(values.iter().map(|s| Value::from(s.as_str())), None)
}

/// An entity attribute, before it is a Cedar value.
enum Attr<'a> {
    Str(&'a str),
    Set(&'a [String]),
    Bool(bool),
}

impl Attr<'_> {
    /// The value Cedar evaluates `expression` to.
    fn value(&self) -> Value {
        match self {
            Attr::Str(s) => Value::from(*s),
            Attr::Set(items) => string_set_value(items),
            Attr::Bool(b) => Value::from(*b),
        }
    }

    #[cfg(test)]
    fn expression(&self) -> RestrictedExpression {
        match self {
            Attr::Str(s) => RestrictedExpression::new_string(s.to_string()),
            Attr::Set(items) => string_set(items),
            Attr::Bool(b) => RestrictedExpression::new_bool(*b),
        }
    }
}

/// An entity before it is one: its uid, attributes and parents.
struct Parts<'a> {
    uid: EntityUid,
    attrs: Vec<(&'static str, Attr<'a>)>,
    parents: HashSet<EntityUid>,
}

/// The entity store of a principal and a resource, their attributes made
/// as values (not evaluated by Cedar, as `Entity::new` would) and no
/// transitive closure computed (Cedar's took a fifth of building a new
/// pair's store): the closure adds nothing here. Only the principal
/// (its roles and tenant) and a tool (its server) have parents, and no
/// parent is in the store with parents of its own — a `Tenant` resource,
/// the one parent type a resource can be, has none — so each entity's
/// ancestors are its parents. Checked equal to Cedar's own store, closure
/// computed, by a table test.
fn entities_of(parts: [Parts<'_>; 2]) -> Result<Entities, String> {
    let entities = parts.into_iter().map(|p| {
        ast::Entity::new_with_attr_partial_value(
            p.uid.into(),
            p.attrs
                .iter()
                .map(|(k, a)| ((*k).into(), PartialValue::Value(a.value()))),
            HashSet::new(),
            p.parents.into_iter().map(Into::into).collect(),
            std::iter::empty(),
        )
    });
    cedar_policy_core::entities::Entities::from_entities(
        entities,
        None::<&NoEntitiesSchema>,
        TCComputation::AssumeAlreadyComputed,
        Extensions::all_available(),
    )
    .map(Entities::from)
    .map_err(|e| format!("entities: {e}"))
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Builder")
    }
}

impl Builder {
    pub(crate) fn new() -> Result<Self, PolicyError> {
        let mut types = HashMap::new();
        for t in TYPES {
            let name = EntityTypeName::from_str(&format!("{NS}::{t}"))
                .map_err(|e| PolicyError::Schema(format!("entity type {t}: {e}")))?;
            types.insert(t, name);
        }
        let ip_fn = ast::Name::from_str("ip")
            .map_err(|e| PolicyError::Schema(format!("the ip extension's name: {e}")))?;
        Ok(Self {
            types,
            entities: RwLock::new(HashMap::new()),
            hasher: foldhash::fast::RandomState::default(),
            ip_fn,
            ips: RwLock::new(HashMap::default()),
        })
    }

    /// A parsed entity type name (`Agent` → `Lattice::Agent`).
    pub(crate) fn type_name(&self, name: &str) -> Option<&EntityTypeName> {
        self.types.get(name)
    }

    pub(crate) fn uid(&self, type_name: &str, id: &str) -> Result<EntityUid, String> {
        let t = self
            .types
            .get(type_name)
            .ok_or_else(|| format!("unknown entity type {type_name}"))?;
        Ok(EntityUid::from_type_name_and_id(
            t.clone(),
            EntityId::new(id),
        ))
    }

    /// The Cedar request (validated against `schema` when one is given).
    pub(crate) fn request(
        &self,
        req: &AuthzRequest,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        self.request_with(req, self.context(req)?, schema)
    }

    /// The Cedar request of `req` with a context already built.
    pub(crate) fn request_with(
        &self,
        req: &AuthzRequest,
        context: Context,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let principal_type = req.principal.kind.type_name();
        Request::new(
            self.uid(principal_type, &req.principal.id)?,
            self.uid("Action", req.action.as_str())?,
            self.uid(req.resource.type_name(), req.resource.id())?,
            context,
            schema,
        )
        .map_err(|e| format!("request does not match the schema: {e}"))
    }

    /// The entity store of a (principal, resource) pair, cached.
    pub(crate) fn entities(
        &self,
        principal: &Principal,
        resource: &Resource,
    ) -> Result<Arc<Entities>, String> {
        let key = self.hasher.hash_one((principal, resource));
        if let Ok(cache) = self.entities.read() {
            if let Some(bucket) = cache.get(&key) {
                if let Some((_, e)) = bucket
                    .iter()
                    .find(|((p, r), _)| p == principal && r == resource)
                {
                    return Ok(Arc::clone(e));
                }
            }
        }
        let entities = Arc::new(entities_of([
            self.principal_parts(principal)?,
            self.resource_parts(resource)?,
        ])?);
        if let Ok(mut cache) = self.entities.write() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache
                .entry(key)
                .or_default()
                .push(((principal.clone(), resource.clone()), Arc::clone(&entities)));
        }
        Ok(entities)
    }

    /// Whether Cedar's `ip` takes `addr` (the context of a request from it
    /// builds).
    pub(crate) fn ip_builds(&self, addr: &str) -> bool {
        let known = self.ips.read().is_ok_and(|c| c.contains_key(addr));
        known || self.ip(addr).is_some()
    }

    /// `ip(addr)` evaluated by Cedar's extension function, cached; None
    /// where the function refuses the address.
    fn ip(&self, addr: &str) -> Option<Value> {
        if let Some(v) = self.ips.read().ok().and_then(|c| c.get(addr).cloned()) {
            return Some(v);
        }
        let f = Extensions::all_available().func(&self.ip_fn).ok()?;
        let PartialValue::Value(v) = f.call(&[Value::from(addr)]).ok()? else {
            return None;
        };
        if let Ok(mut cache) = self.ips.write() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(addr.to_string(), v.clone());
        }
        Some(v)
    }

    fn principal_parts<'a>(&self, p: &'a Principal) -> Result<Parts<'a>, String> {
        let mut parents = HashSet::with_capacity(p.roles.len() + 1);
        for role in &p.roles {
            parents.insert(self.uid("Role", role)?);
        }
        parents.insert(self.uid("Tenant", &p.tenant)?);
        Ok(Parts {
            uid: self.uid(p.kind.type_name(), &p.id)?,
            attrs: vec![
                ("tenant", Attr::Str(&p.tenant)),
                ("labels", Attr::Set(&p.labels)),
                ("auth_method", Attr::Str(&p.auth_method)),
            ],
            parents,
        })
    }

    fn resource_parts<'a>(&self, r: &'a Resource) -> Result<Parts<'a>, String> {
        let (attrs, parents) = match r {
            Resource::HttpRoute { id, labels }
            | Resource::McpServer { id, labels }
            | Resource::Model { id, labels } => (
                vec![("name", Attr::Str(id)), ("labels", Attr::Set(labels))],
                HashSet::new(),
            ),
            Resource::Tool {
                id,
                server,
                risk,
                labels,
                read_only,
                destructive,
                idempotent,
                open_world,
            } => (
                vec![
                    ("name", Attr::Str(id)),
                    ("server", Attr::Str(server)),
                    ("risk", Attr::Str(risk)),
                    ("labels", Attr::Set(labels)),
                    ("read_only", Attr::Bool(*read_only)),
                    ("destructive", Attr::Bool(*destructive)),
                    ("idempotent", Attr::Bool(*idempotent)),
                    ("open_world", Attr::Bool(*open_world)),
                ],
                HashSet::from([self.uid("McpServer", server)?]),
            ),
            Resource::Gateway { .. } | Resource::Tenant { .. } => (Vec::new(), HashSet::new()),
        };
        Ok(Parts {
            uid: self.uid(r.type_name(), r.id())?,
            attrs,
            parents,
        })
    }

    /// The entity store of a (principal, resource) pair as Cedar builds it
    /// from expressions, computing the transitive closure: what
    /// `entities_of` is checked against.
    #[cfg(test)]
    pub(crate) fn entities_by_cedar(
        &self,
        principal: &Principal,
        resource: &Resource,
    ) -> Result<Arc<Entities>, String> {
        let entity = |parts: Parts<'_>| {
            let attrs: HashMap<String, RestrictedExpression> = parts
                .attrs
                .iter()
                .map(|(k, a)| (k.to_string(), a.expression()))
                .collect();
            cedar_policy::Entity::new(parts.uid, attrs, parts.parents)
                .map_err(|e| format!("entity: {e}"))
        };
        Entities::from_entities(
            [
                entity(self.principal_parts(principal)?)?,
                entity(self.resource_parts(resource)?)?,
            ],
            None,
        )
        .map(Arc::new)
        .map_err(|e| format!("entities: {e}"))
    }

    fn context(&self, req: &AuthzRequest) -> Result<Context, String> {
        match self.context_values(req) {
            Some(c) => Ok(Context::from(c)),
            None => context_by_cedar(req),
        }
    }

    /// The context as the values Cedar's evaluation of `context_by_cedar`'s
    /// expressions makes; None where that evaluation could fail (`time` or
    /// `client_ip` named again among the other attributes, an address `ip`
    /// refuses).
    fn context_values(&self, req: &AuthzRequest) -> Option<ast::Context> {
        let c = &req.context;
        if c.extra.contains_key("time") || c.extra.contains_key("client_ip") {
            return None;
        }
        let mut attrs = BTreeMap::new();
        attrs.insert("time".into(), Value::from(c.time));
        attrs.insert("client_ip".into(), self.ip(&c.client_ip)?);
        for (k, v) in &c.extra {
            attrs.insert(k.as_str().into(), plain_value(v));
        }
        if req.action == crate::Action::CallTool && !c.extra.contains_key("input") {
            attrs.insert("input".into(), Value::empty_record(None));
        }
        Some(ast::Context::Value(Arc::new(attrs)))
    }
}

/// The context built as expressions Cedar evaluates (its `ip(...)`
/// included): the reference `Builder::context_values` is checked against,
/// and the path that gives Cedar's own errors.
pub(crate) fn context_by_cedar(req: &AuthzRequest) -> Result<Context, String> {
    let c = &req.context;
    let mut pairs = Vec::with_capacity(c.extra.len() + 3);
    pairs.push(("time".to_string(), RestrictedExpression::new_long(c.time)));
    pairs.push((
        "client_ip".to_string(),
        RestrictedExpression::new_ip(&c.client_ip),
    ));
    for (k, v) in &c.extra {
        pairs.push((k.clone(), value(v)?));
    }
    // Every `call_tool` has an `input`, empty when none was given.
    if req.action == crate::Action::CallTool && !c.extra.contains_key("input") {
        pairs.push(("input".to_string(), empty_record()?));
    }
    Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))
}

/// A context value as the value Cedar evaluates `value(v)` to.
fn plain_value(v: &ContextValue) -> Value {
    match v {
        ContextValue::Bool(b) => Value::from(*b),
        ContextValue::Long(n) => Value::from(*n),
        ContextValue::String(s) => Value::from(s.as_str()),
        ContextValue::Set(items) => string_set_value(items),
        ContextValue::Record(fields) => Value::record(
            fields.iter().map(|(k, v)| (k.as_str(), plain_value(v))),
            None,
        ),
    }
}

fn empty_record() -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(Vec::<(String, RestrictedExpression)>::new())
        .map_err(|e| format!("context: {e}"))
}

fn value(v: &ContextValue) -> Result<RestrictedExpression, String> {
    Ok(match v {
        ContextValue::Bool(b) => RestrictedExpression::new_bool(*b),
        ContextValue::Long(n) => RestrictedExpression::new_long(*n),
        ContextValue::String(s) => RestrictedExpression::new_string(s.clone()),
        ContextValue::Set(items) => string_set(items),
        ContextValue::Record(fields) => RestrictedExpression::new_record(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), value(v)?)))
                .collect::<Result<Vec<_>, String>>()?,
        )
        .map_err(|e| format!("context: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::request::{Action, PrincipalKind, RequestContext};

    fn request(action: Action, ip: &str, extra: &[(&str, ContextValue)]) -> AuthzRequest {
        let mut context = RequestContext::new(1_700_000_000, ip);
        for (k, v) in extra {
            context.extra.insert((*k).to_string(), v.clone());
        }
        AuthzRequest {
            principal: Principal {
                kind: PrincipalKind::Agent,
                id: "a".into(),
                tenant: "t".into(),
                roles: vec![],
                labels: vec![],
                auth_method: "api_key".into(),
            },
            action,
            resource: Resource::HttpRoute {
                id: "r".into(),
                labels: vec![],
            },
            context,
        }
    }

    /// The entity store made as values, without the transitive closure,
    /// equals Cedar's own (attributes evaluated, closure computed) for every
    /// kind of principal and resource — a tenant's principal against that
    /// tenant as the resource included. A table.
    #[test]
    fn the_entity_store_as_values_is_what_cedar_builds() {
        let principal = |kind: PrincipalKind, roles: &[&str], labels: &[&str]| Principal {
            kind,
            id: "p".into(),
            tenant: "t1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            auth_method: "jwt".into(),
        };
        let labels = vec!["demo".to_string(), "pii".to_string()];
        let resources = [
            Resource::HttpRoute {
                id: "r".into(),
                labels: labels.clone(),
            },
            Resource::McpServer {
                id: "s".into(),
                labels: vec![],
            },
            Resource::Model {
                id: "m".into(),
                labels: labels.clone(),
            },
            Resource::tool("pay", "bank", "high"),
            Resource::Tool {
                id: "read".into(),
                server: "bank".into(),
                risk: "low".into(),
                labels,
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            Resource::Tenant { id: "t1".into() },
            Resource::Tenant { id: "t2".into() },
            Resource::Gateway { id: "gw".into() },
        ];
        let principals = [
            principal(PrincipalKind::Agent, &["agent"], &[]),
            principal(PrincipalKind::Human, &["admin", "auditor"], &["ops"]),
            principal(PrincipalKind::Agent, &[], &[]),
        ];
        let builder = Builder::new().unwrap();
        for p in &principals {
            for r in &resources {
                let ours = builder.entities(p, r).unwrap();
                let cedars = builder.entities_by_cedar(p, r).unwrap();
                let core = |e: &Entities| -> cedar_policy_core::entities::Entities {
                    AsRef::<cedar_policy_core::entities::Entities>::as_ref(e).clone()
                };
                assert!(
                    core(&ours).deep_eq(&core(&cedars)),
                    "{p:?} {r:?}:\n{ours:?}\nagainst Cedar's\n{cedars:?}"
                );
            }
        }
    }

    /// The context built as values equals the one Cedar evaluates, for every
    /// kind of attribute and address; where Cedar's evaluation fails, the
    /// values path steps aside and the error is Cedar's own. A table: the
    /// request, and whether the values path builds it.
    #[test]
    fn the_context_as_values_is_what_cedar_evaluates() {
        use ContextValue::{Bool, Long, Record, Set, String as S};
        let input = Record(BTreeMap::from([
            ("amount".to_string(), Long(-5)),
            ("dry_run".to_string(), Bool(true)),
            (
                "tags".to_string(),
                Set(vec!["b".into(), "a".into(), "a".into()]),
            ),
            (
                "to".to_string(),
                Record(BTreeMap::from([("name".to_string(), S("x".into()))])),
            ),
            ("empty".to_string(), Record(BTreeMap::new())),
        ]));
        let table: Vec<(AuthzRequest, bool)> = vec![
            (
                request(
                    Action::HttpRequest,
                    "127.0.0.1",
                    &[("method", S("GET".into())), ("path", S("/a".into()))],
                ),
                true,
            ),
            (request(Action::HttpRequest, "::1", &[]), true),
            // Cedar refuses an address with both colons and dots.
            (request(Action::HttpRequest, "::ffff:10.1.2.3", &[]), false),
            (request(Action::HttpRequest, "10.0.0.0/8", &[]), true),
            (request(Action::HttpRequest, "2001:db8::/32", &[]), true),
            (request(Action::CallTool, "10.0.0.1", &[]), true),
            (
                request(Action::CallTool, "10.0.0.1", &[("input", input.clone())]),
                true,
            ),
            (
                request(
                    Action::Chat,
                    "10.0.0.1",
                    &[("labels", Set(vec![])), ("stream", Bool(false))],
                ),
                true,
            ),
            (request(Action::HttpRequest, "not-an-address", &[]), false),
            (request(Action::HttpRequest, "010.0.0.1", &[]), false),
            (request(Action::HttpRequest, "10.0.0.1/33", &[]), false),
            (request(Action::HttpRequest, "", &[]), false),
            (
                request(Action::HttpRequest, "10.0.0.1", &[("time", Long(1))]),
                false,
            ),
            (
                request(
                    Action::HttpRequest,
                    "10.0.0.1",
                    &[("client_ip", S("::1".into()))],
                ),
                false,
            ),
        ];
        let builder = Builder::new().unwrap();
        for (req, by_values) in &table {
            let what = format!("{:?} {:?}", req.context, req.action);
            assert_eq!(
                builder.context_values(req).is_some(),
                *by_values,
                "values path for {what}"
            );
            // Twice: the second address comes from the cache.
            for _ in 0..2 {
                match (builder.context(req), context_by_cedar(req)) {
                    (Ok(ours), Ok(cedars)) => {
                        assert_eq!(ours.as_ref(), cedars.as_ref(), "{what}");
                    }
                    (Err(ours), Err(cedars)) => assert_eq!(ours, cedars, "{what}"),
                    (ours, cedars) => panic!("{what}: {ours:?} against Cedar's {cedars:?}"),
                }
            }
        }
    }
}
