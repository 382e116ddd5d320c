//! `lattice-mock-mcp`: a minimal streamable-HTTP MCP server for load tests —
//! a low-noise upstream, so what the gateway adds is not lost in the
//! upstream's own jitter. One tool, `echo` (`{"message": string}` →
//! `Echo: <message>`), JSON answers, a session id issued at `initialize`.
//! Not a conformance reference: the tests use real MCP servers.
//!
//! `lattice-mock-mcp [--listen 127.0.0.1:0]` prints `mock-mcp listening on ADDR`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::io::Write;
use tokio::net::TcpListener;

fn answer(status: u16, body: Option<Value>) -> Response<Full<Bytes>> {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::POST {
        return Ok(answer(405, None));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(answer(400, None)),
    };
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            let e = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}});
            return Ok(answer(400, Some(e)));
        }
    };
    let Some(id) = msg.get("id").cloned() else {
        return Ok(answer(202, None)); // a notification
    };
    let result = match msg["method"].as_str().unwrap_or("") {
        "initialize" => json!({
            "protocolVersion": msg["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "lattice-mock-mcp", "version": "0"},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [{
            "name": "echo",
            "description": "Echoes the message back",
            "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
        }]}),
        "tools/call" if msg["params"]["name"] == "echo" => {
            let m = msg["params"]["arguments"]["message"].as_str().unwrap_or("");
            json!({"content": [{"type": "text", "text": format!("Echo: {m}")}]})
        }
        other => {
            let e = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("no method {other}")}});
            return Ok(answer(200, Some(e)));
        }
    };
    let mut r = answer(
        200,
        Some(json!({"jsonrpc": "2.0", "id": id, "result": result})),
    );
    if msg["method"] == "initialize" {
        if let Ok(v) = "mock-session".parse() {
            r.headers_mut().insert("mcp-session-id", v);
        }
    }
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs a value"))?
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("mock-mcp listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    })
}
