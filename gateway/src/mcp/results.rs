//! What a tool call's answer carries back: the canonical hash of a result
//! (for the outcome event and pinning), the result checked against the
//! tool's `outputSchema` (step 9), or the upstream's failure as a JSON-RPC
//! error. Pure: no I/O.
//!
//! Must never: pass a result that breaks its `outputSchema` as valid.

use lattice_mcp::jsonrpc;
use lattice_mcp::tools::canonical_json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::call::Call;
use crate::mcp_hub::ToolEntry;

/// The canonical hash of a JSON value.
pub(crate) fn hash(v: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
}

/// A tool that declares an `outputSchema` must return conforming
/// `structuredContent` (tool errors are passed through as they are).
fn check_output(entry: &ToolEntry, result: &Value) -> Result<(), String> {
    let Some(schema) = &entry.output_schema else {
        return Ok(());
    };
    if result["isError"] == json!(true) {
        return Ok(());
    }
    let Some(structured) = result.get("structuredContent") else {
        return Err("no structuredContent".into());
    };
    schema.check(structured).map_err(|errors| errors.join("; "))
}

/// The answer to a forwarded `tools/call`: the result checked against the
/// tool's `outputSchema` (step 9), or the upstream's failure.
pub(crate) fn tool_reply(
    call: &mut Call,
    entry: &ToolEntry,
    id: &Value,
    result: Result<Value, lattice_mcp::McpError>,
) -> Value {
    match result {
        Ok(result) => {
            call.result_hash = Some(hash(&result));
            match check_output(entry, &result) {
                Ok(()) => jsonrpc::result_response(id, result),
                Err(problem) => {
                    call.failure = Some(format!("output_invalid: {problem}"));
                    let text =
                        format!("The tool's result does not match its outputSchema: {problem}");
                    jsonrpc::result_response(
                        id,
                        json!({"content": [{"type": "text", "text": text}], "isError": true}),
                    )
                }
            }
        }
        Err(e) => {
            call.failure = Some(format!("upstream_failed: {e}"));
            jsonrpc::error_response(
                id,
                jsonrpc::INTERNAL_ERROR,
                &format!("the upstream failed: {e}"),
                None,
            )
        }
    }
}
