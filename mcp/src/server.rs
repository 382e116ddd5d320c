//! The gateway as an MCP server, in the official Rust SDK's model types
//! (`rmcp::model`): the protocol versions it speaks and how a client's
//! asked version is negotiated, what it announces (capabilities, server
//! info) in `initialize` and `server/discover`, and which of a client's
//! declared capabilities it can relay server requests for.
//!
//! Why rmcp here and not everywhere yet: the messages the gateway writes
//! itself are built from rmcp's types so they follow the SDK's reading of
//! the specification; tool definitions, prompts and resources pass through
//! as JSON (`serde_json::Value`) because the gateway hashes and pins a
//! tool's definition as the server sent it, and a typed round trip would
//! drop fields a newer server adds. Must never: announce a capability the
//! gateway does not serve.

use rmcp::model::{
    ClientCapabilities, Implementation, InitializeResult, PromptsCapability, ProtocolVersion,
    ResourcesCapability, ServerCapabilities, ToolsCapability,
};
use serde_json::{json, Map, Value};

use crate::session::{SESSION_VERSIONS, STATELESS};

/// The name the gateway gives itself.
pub const SERVER_NAME: &str = "lattice";

/// The version of a stateful era a client gets for the one it asked for:
/// the same when the gateway speaks it, else the newest it speaks.
pub fn negotiate(asked: &str) -> ProtocolVersion {
    let version = SESSION_VERSIONS
        .iter()
        .find(|v| **v == asked)
        .unwrap_or(&SESSION_VERSIONS[0]);
    // Every version spoken is one rmcp knows (tested below).
    ProtocolVersion::KNOWN_VERSIONS
        .iter()
        .find(|k| k.as_str() == *version)
        .cloned()
        .unwrap_or_default()
}

/// What the gateway serves: list changes on a session's GET stream (tools
/// from its own view; prompts and resources as the servers announce them),
/// resource subscriptions, completions, and log messages.
pub fn capabilities() -> ServerCapabilities {
    let mut tools = ToolsCapability::default();
    tools.list_changed = Some(true);
    let mut prompts = PromptsCapability::default();
    prompts.list_changed = Some(true);
    let mut resources = ResourcesCapability::default();
    resources.subscribe = Some(true);
    resources.list_changed = Some(true);
    let mut caps = ServerCapabilities::default();
    caps.tools = Some(tools);
    caps.prompts = Some(prompts);
    caps.resources = Some(resources);
    caps.completions = Some(Map::new());
    caps.logging = Some(Map::new());
    caps
}

/// The gateway's server info.
pub fn server_info(version: &str) -> Implementation {
    Implementation::new(SERVER_NAME, version)
}

/// The `initialize` result for the negotiated `version` (`gateway_version`:
/// the running gateway's own version).
pub fn initialize_result(version: ProtocolVersion, gateway_version: &str) -> Value {
    let result = InitializeResult::new(capabilities())
        .with_server_info(server_info(gateway_version))
        .with_protocol_version(version);
    serde_json::to_value(result).unwrap_or(Value::Null)
}

/// The stateless era's `server/discover` result: every version spoken,
/// newest stateless first; never cached across principals.
pub fn discover_result(gateway_version: &str) -> Value {
    let versions: Vec<&str> = std::iter::once(STATELESS).chain(SESSION_VERSIONS).collect();
    json!({
        "supportedVersions": versions,
        "capabilities": capabilities(),
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {"io.modelcontextprotocol/serverInfo": server_info(gateway_version)},
    })
}

/// The capabilities a client declared in `initialize` that the gateway can
/// relay server requests for (`sampling`, `elicitation`, `roots`).
pub fn relayable_capabilities(params: &Value) -> Vec<String> {
    let declared = &params["capabilities"];
    let typed: Option<ClientCapabilities> = serde_json::from_value(declared.clone()).ok();
    let has = |name: &str| match &typed {
        Some(c) => match name {
            "sampling" => c.sampling.is_some(),
            "elicitation" => c.elicitation.is_some(),
            _ => c.roots.is_some(),
        },
        // A declaration rmcp cannot read still names what it declares.
        None => declared.get(name).is_some(),
    };
    ["sampling", "elicitation", "roots"]
        .into_iter()
        .filter(|c| has(c))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_spoken_is_one_rmcp_knows() {
        for v in std::iter::once(STATELESS).chain(SESSION_VERSIONS) {
            assert!(
                ProtocolVersion::KNOWN_VERSIONS
                    .iter()
                    .any(|k| k.as_str() == v),
                "{v}"
            );
        }
    }

    #[test]
    fn versions_are_negotiated_down_to_one_spoken() {
        for (asked, got) in [
            ("2025-06-18", "2025-06-18"),
            ("2024-11-05", "2024-11-05"),
            ("2099-01-01", SESSION_VERSIONS[0]),
            ("", SESSION_VERSIONS[0]),
        ] {
            assert_eq!(negotiate(asked).as_str(), got, "{asked}");
        }
    }

    #[test]
    fn initialize_announces_what_the_gateway_serves() {
        let r = initialize_result(negotiate("2025-03-26"), "9.9.9");
        assert_eq!(r["protocolVersion"], "2025-03-26");
        assert_eq!(
            r["capabilities"],
            json!({
                "tools": {"listChanged": true},
                "prompts": {"listChanged": true},
                "resources": {"subscribe": true, "listChanged": true},
                "completions": {},
                "logging": {},
            })
        );
        assert_eq!(
            r["serverInfo"],
            json!({"name": "lattice", "version": "9.9.9"})
        );
        let d = discover_result("9.9.9");
        assert_eq!(d["supportedVersions"][0], STATELESS);
        assert_eq!(d["capabilities"], r["capabilities"]);
    }

    #[test]
    fn only_relayable_capabilities_are_kept() {
        let params = json!({"capabilities": {"sampling": {}, "roots": {"listChanged": true}, "experimental": {}}});
        assert_eq!(relayable_capabilities(&params), ["sampling", "roots"]);
        assert!(relayable_capabilities(&json!({})).is_empty());
    }
}
