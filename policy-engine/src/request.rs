//! The typed authorization request: who (principal), does what (action), to
//! what (resource), in which circumstances (context). These types are what the
//! gateway builds per call and what `lattice policy test` files contain; the
//! engine turns them into Cedar entities.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::PolicyError;

/// Whether a principal is an automated agent or a human (workbench user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrincipalKind {
    Agent,
    Human,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    #[serde(rename = "type", default = "default_kind")]
    pub kind: PrincipalKind,
    pub id: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default = "default_auth_method")]
    pub auth_method: String,
}

impl PrincipalKind {
    /// The Cedar entity type name, without the namespace.
    pub fn type_name(self) -> &'static str {
        match self {
            PrincipalKind::Agent => "Agent",
            PrincipalKind::Human => "Human",
        }
    }
}

fn default_kind() -> PrincipalKind {
    PrincipalKind::Agent
}
fn default_tenant() -> String {
    "default".to_string()
}
fn default_auth_method() -> String {
    "api_key".to_string()
}

/// Every action Lattice authorizes. The string form is the Cedar action id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    HttpRequest,
    CallTool,
    ListTools,
    ReadResource,
    GetPrompt,
    Chat,
    Embed,
    RegisterServer,
    ChangeRoutes,
    ChangePolicies,
    ReadAudit,
    ManageKeys,
    ApproveTool,
    ReadPolicies,
    /// Install, update and uninstall Lattice Registry entries (and browse
    /// the catalog and what is installed).
    Install,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::HttpRequest,
        Action::CallTool,
        Action::ListTools,
        Action::ReadResource,
        Action::GetPrompt,
        Action::Chat,
        Action::Embed,
        Action::RegisterServer,
        Action::ChangeRoutes,
        Action::ChangePolicies,
        Action::ReadAudit,
        Action::ManageKeys,
        Action::ApproveTool,
        Action::ReadPolicies,
        Action::Install,
    ];

    /// The Cedar action id (`Lattice::Action::"<this>"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::HttpRequest => "http_request",
            Action::CallTool => "call_tool",
            Action::ListTools => "list_tools",
            Action::ReadResource => "read_resource",
            Action::GetPrompt => "get_prompt",
            Action::Chat => "chat",
            Action::Embed => "embed",
            Action::RegisterServer => "admin.register_server",
            Action::ChangeRoutes => "admin.change_routes",
            Action::ChangePolicies => "admin.change_policies",
            Action::ReadAudit => "admin.read_audit",
            Action::ManageKeys => "admin.manage_keys",
            Action::ApproveTool => "admin.approve_tool",
            Action::ReadPolicies => "admin.read_policies",
            Action::Install => "admin.install",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownAction(s.to_string()))
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The target of an action, with the attributes policies may read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Resource {
    HttpRoute {
        id: String,
        #[serde(default)]
        labels: Vec<String>,
    },
    McpServer {
        id: String,
        #[serde(default)]
        labels: Vec<String>,
    },
    Tool {
        /// The federated tool name.
        id: String,
        server: String,
        #[serde(default = "default_risk")]
        risk: String,
        #[serde(default)]
        labels: Vec<String>,
        /// The MCP tool hints, absent ones at the specification's
        /// defaults: not read-only, destructive, not idempotent, open world.
        #[serde(default)]
        read_only: bool,
        #[serde(default = "yes")]
        destructive: bool,
        #[serde(default)]
        idempotent: bool,
        #[serde(default = "yes")]
        open_world: bool,
    },
    Model {
        id: String,
        #[serde(default)]
        labels: Vec<String>,
    },
    Gateway {
        #[serde(default = "default_gateway")]
        id: String,
    },
    /// A tenant as the object of an admin action: `admin.read_audit` on
    /// `Tenant::"acme"` is reading that tenant's part of the trail.
    Tenant { id: String },
}

fn yes() -> bool {
    true
}
fn default_risk() -> String {
    "unknown".to_string()
}
fn default_gateway() -> String {
    "gateway".to_string()
}

impl Resource {
    /// A tool with no labels and the MCP specification's default hints (not
    /// read-only, destructive, not idempotent, open world): what an
    /// unannotated tool is.
    pub fn tool(id: impl Into<String>, server: impl Into<String>, risk: impl Into<String>) -> Self {
        Resource::Tool {
            id: id.into(),
            server: server.into(),
            risk: risk.into(),
            labels: vec![],
            read_only: false,
            destructive: true,
            idempotent: false,
            open_world: true,
        }
    }

    /// The Cedar entity type name, without the namespace.
    pub fn type_name(&self) -> &'static str {
        match self {
            Resource::HttpRoute { .. } => "HttpRoute",
            Resource::McpServer { .. } => "McpServer",
            Resource::Tool { .. } => "Tool",
            Resource::Model { .. } => "Model",
            Resource::Gateway { .. } => "Gateway",
            Resource::Tenant { .. } => "Tenant",
        }
    }

    /// The entity id.
    pub fn id(&self) -> &str {
        match self {
            Resource::HttpRoute { id, .. }
            | Resource::McpServer { id, .. }
            | Resource::Tool { id, .. }
            | Resource::Model { id, .. }
            | Resource::Gateway { id }
            | Resource::Tenant { id } => id,
        }
    }
}

/// One context value. Strings that name an IP address are typed by the
/// schema (`client_ip` is a Cedar `ipaddr`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ContextValue {
    Bool(bool),
    Long(i64),
    String(String),
    Set(Vec<String>),
    /// A record (a tool call's `input`).
    Record(BTreeMap<String, ContextValue>),
}

impl ContextValue {
    /// A JSON value as Cedar can hold it: objects become records, integers
    /// `Long`, arrays of strings sets. Numbers that are not integers become
    /// strings and other arrays sets of their JSON texts, so a policy that
    /// compares them as numbers meets a type error, which denies. `null`s
    /// are left out (as absent attributes).
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        use serde_json::Value;
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Self::Long(i),
                None => Self::String(n.to_string()),
            },
            Value::String(s) => Self::String(s.clone()),
            Value::Array(items) => Self::Set(
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
            ),
            Value::Object(o) => Self::Record(
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), Self::from_json(v)?)))
                    .collect(),
            ),
        })
    }
}

/// The circumstances of a call. `time` (unix seconds) and `client_ip` are
/// present for every action; the rest depends on the action (see the schema).
/// Unknown keys are not rejected here (serde cannot combine that with
/// `flatten`); Cedar's request validation rejects any attribute the schema
/// does not declare for the action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestContext {
    #[serde(default)]
    pub time: i64,
    #[serde(default = "default_ip")]
    pub client_ip: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, ContextValue>,
}

fn default_ip() -> String {
    "127.0.0.1".to_string()
}

impl RequestContext {
    pub fn new(time: i64, client_ip: impl Into<String>) -> Self {
        Self {
            time,
            client_ip: client_ip.into(),
            extra: BTreeMap::new(),
        }
    }

    /// Adds any attribute (builder style).
    pub fn with_value(mut self, key: &str, value: ContextValue) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Adds a string attribute (builder style).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.extra
            .insert(key.to_string(), ContextValue::String(value.into()));
        self
    }
}

/// A whole authorization request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRequest {
    pub principal: Principal,
    pub action: Action,
    pub resource: Resource,
    #[serde(default = "default_context")]
    pub context: RequestContext,
}

fn default_context() -> RequestContext {
    RequestContext::new(0, default_ip())
}
