"""A deliberately non-conforming MCP stdio server, for the gateway's
output-schema check: its one tool declares an outputSchema and answers
with structuredContent that violates it. (No real server can be made to do
this on demand.) Newline-delimited JSON-RPC on stdin/stdout, standard
library only."""
import json
import sys

TOOL = {
    "name": "count",
    "description": "Returns a count.",
    "inputSchema": {"type": "object", "properties": {}},
    "outputSchema": {
        "type": "object",
        "properties": {"n": {"type": "number"}},
        "required": ["n"],
    },
}

for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method = msg.get("method")
    if method == "initialize":
        result = {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "liar", "version": "0"},
        }
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method == "tools/call":
        result = {
            "content": [{"type": "text", "text": "lots"}],
            "structuredContent": {"n": "lots"},
        }
    else:
        out = {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}}
        print(json.dumps(out), flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
