//! Cedar values from Lattice requests: entity uids, the principal and
//! resource entities, and the context. Building these dominates a decision's
//! cost (Cedar parses type names and evaluates every extension call), so the
//! builder parses type names once and caches the entity stores of recent
//! (principal, resource) pairs and the `ip(...)` values of recent client
//! addresses. Caches are bounded and cleared when full; they hold only values
//! derived from their keys, so a hit is exactly what a miss would build.

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::RwLock;

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

pub(crate) struct Builder {
    types: HashMap<&'static str, EntityTypeName>,
    entities: RwLock<HashMap<u64, Vec<(EntityKey, Entities)>>>,
    ips: RwLock<HashMap<String, RestrictedExpression>>,
}

fn string_set(values: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(values.iter().cloned().map(RestrictedExpression::new_string))
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
        Ok(Self {
            types,
            entities: RwLock::new(HashMap::new()),
            ips: RwLock::new(HashMap::new()),
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
        let principal_type = req.principal.kind.type_name();
        Request::new(
            self.uid(principal_type, &req.principal.id)?,
            self.uid("Action", req.action.as_str())?,
            self.uid(req.resource.type_name(), req.resource.id())?,
            self.context(req)?,
            schema,
        )
        .map_err(|e| format!("request does not match the schema: {e}"))
    }

    /// The entity store of a (principal, resource) pair, cached.
    pub(crate) fn entities(
        &self,
        principal: &Principal,
        resource: &Resource,
    ) -> Result<Entities, String> {
        let mut h = DefaultHasher::new();
        principal.hash(&mut h);
        resource.hash(&mut h);
        let key = h.finish();
        if let Ok(cache) = self.entities.read() {
            if let Some(bucket) = cache.get(&key) {
                if let Some((_, e)) = bucket
                    .iter()
                    .find(|((p, r), _)| p == principal && r == resource)
                {
                    return Ok(e.clone());
                }
            }
        }
        let entities = Entities::from_entities(
            [
                self.principal_entity(principal)?,
                self.resource_entity(resource)?,
            ],
            None,
        )
        .map_err(|e| format!("entities: {e}"))?;
        if let Ok(mut cache) = self.entities.write() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache
                .entry(key)
                .or_default()
                .push(((principal.clone(), resource.clone()), entities.clone()));
        }
        Ok(entities)
    }

    fn ip(&self, addr: &str) -> RestrictedExpression {
        if let Some(v) = self.ips.read().ok().and_then(|c| c.get(addr).cloned()) {
            return v;
        }
        let v = RestrictedExpression::new_ip(addr);
        if let Ok(mut cache) = self.ips.write() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(addr.to_string(), v.clone());
        }
        v
    }

    fn entity(
        &self,
        type_name: &str,
        id: &str,
        attrs: Vec<(&str, RestrictedExpression)>,
        parents: HashSet<EntityUid>,
    ) -> Result<Entity, String> {
        let attrs: HashMap<String, RestrictedExpression> =
            attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Entity::new(self.uid(type_name, id)?, attrs, parents)
            .map_err(|e| format!("entity {id}: {e}"))
    }

    fn principal_entity(&self, p: &Principal) -> Result<Entity, String> {
        let mut parents = HashSet::with_capacity(p.roles.len() + 1);
        for role in &p.roles {
            parents.insert(self.uid("Role", role)?);
        }
        parents.insert(self.uid("Tenant", &p.tenant)?);
        let kind = p.kind.type_name();
        self.entity(
            kind,
            &p.id,
            vec![
                ("tenant", RestrictedExpression::new_string(p.tenant.clone())),
                ("labels", string_set(&p.labels)),
                (
                    "auth_method",
                    RestrictedExpression::new_string(p.auth_method.clone()),
                ),
            ],
            parents,
        )
    }

    fn resource_entity(&self, r: &Resource) -> Result<Entity, String> {
        let s = |v: &String| RestrictedExpression::new_string(v.clone());
        let (attrs, parents) = match r {
            Resource::HttpRoute { id, labels }
            | Resource::McpServer { id, labels }
            | Resource::Model { id, labels } => (
                vec![("name", s(id)), ("labels", string_set(labels))],
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
                    ("name", s(id)),
                    ("server", s(server)),
                    ("risk", s(risk)),
                    ("labels", string_set(labels)),
                    ("read_only", RestrictedExpression::new_bool(*read_only)),
                    ("destructive", RestrictedExpression::new_bool(*destructive)),
                    ("idempotent", RestrictedExpression::new_bool(*idempotent)),
                    ("open_world", RestrictedExpression::new_bool(*open_world)),
                ],
                HashSet::from([self.uid("McpServer", server)?]),
            ),
            Resource::Gateway { .. } | Resource::Tenant { .. } => (Vec::new(), HashSet::new()),
        };
        self.entity(r.type_name(), r.id(), attrs, parents)
    }

    fn context(&self, req: &AuthzRequest) -> Result<Context, String> {
        let c = &req.context;
        let mut pairs = Vec::with_capacity(c.extra.len() + 3);
        pairs.push(("time".to_string(), RestrictedExpression::new_long(c.time)));
        pairs.push(("client_ip".to_string(), self.ip(&c.client_ip)));
        for (k, v) in &c.extra {
            pairs.push((k.clone(), value(v)?));
        }
        // Every `call_tool` has an `input`, empty when none was given.
        if req.action == crate::Action::CallTool && !c.extra.contains_key("input") {
            pairs.push(("input".to_string(), empty_record()?));
        }
        Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))
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
