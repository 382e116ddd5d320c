//! A tiny HTTP/1.1 echo service: the upstream of the quick start's demo route
//! (and of tests that need a REST upstream they can kill). It answers every
//! request with JSON describing what arrived: method, path, the headers, and
//! the body length. It is a demo, not a product surface.
//!
//! `POST /v1/chat/completions` answers as a demo model in the OpenAI format
//! (echoing the last user message; streamed when asked), the quick start's
//! stand-in for an inference backend.
//!
//! A path ending in `/stream` answers with a server-sent-events stream whose
//! first event is sent at once and whose last waits (at most 10 s) until some
//! client requests a path ending in `/release`: a deterministic way to show
//! that a proxy in front streams instead of buffering.
//!
//! Must never: run unless the config asks for it (`[demo_upstream]`).

use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const MAX_HEAD: usize = 64 * 1024;

/// Serves until the process ends.
pub async fn serve_echo(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let release = Arc::new(Notify::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let release = release.clone();
        tokio::spawn(async move {
            let _ = connection(stream, release).await;
        });
    }
}

async fn connection(mut stream: TcpStream, release: Arc<Notify>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read a head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&buf[..head_end]).is_err() {
            return Ok(());
        }
        let method = req.method.unwrap_or("").to_string();
        let path = req.path.unwrap_or("").to_string();
        let mut echoed = serde_json::Map::new();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = false;
        for h in req.headers.iter() {
            let value = String::from_utf8_lossy(h.value).to_string();
            let name = h.name.to_ascii_lowercase();
            if name == "content-length" {
                content_length = value.trim().parse().unwrap_or(0);
            }
            if name == "connection" && value.eq_ignore_ascii_case("close") {
                close = true;
            }
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
            echoed.insert(name, json!(value));
        }
        buf.drain(..head_end);
        let mut body: Vec<u8> = Vec::new();
        let body_len = if chunked {
            read_chunked(&mut stream, &mut buf).await?
        } else {
            while buf.len() < content_length {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            body = buf.drain(..content_length).collect();
            content_length
        };
        if method == "POST" && path == "/v1/chat/completions" {
            let resp = chat_echo(&body);
            stream.write_all(resp.as_bytes()).await?;
            if close {
                return Ok(());
            }
            continue;
        }
        if path.ends_with("/stream") {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            write_chunk(&mut stream, b"data: first\n\n").await?;
            let _ = tokio::time::timeout(Duration::from_secs(10), release.notified()).await;
            write_chunk(&mut stream, b"data: last\n\n").await?;
            stream.write_all(b"0\r\n\r\n").await?;
            if close {
                return Ok(());
            }
            continue;
        }
        if path.ends_with("/release") {
            release.notify_one();
        }
        let body = json!({
            "service": "lattice demo echo",
            "method": method,
            "path": path,
            "headers": echoed,
            "body_bytes": body_len,
        })
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(resp.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// The demo model: a chat completion in the OpenAI format that echoes the
/// last user message (streamed as server-sent events when asked), with usage
/// counted in words.
fn chat_echo(body: &[u8]) -> String {
    let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let last = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let text = format!("echo: {last}");
    let prompt: usize = req["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.split_whitespace().count())
                .sum()
        })
        .unwrap_or(0);
    let completion = text.split_whitespace().count();
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let model = req["model"].as_str().unwrap_or("demo").to_string();
    if req["stream"] == json!(true) {
        let mut events = String::new();
        let chunk = |choices: serde_json::Value| json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": choices});
        for (i, word) in text.split(' ').enumerate() {
            let piece = if i == 0 {
                word.to_string()
            } else {
                format!(" {word}")
            };
            let c =
                chunk(json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]));
            events.push_str(&format!("data: {c}\n\n"));
        }
        let c = chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]));
        events.push_str(&format!("data: {c}\n\n"));
        if req["stream_options"]["include_usage"] == json!(true) {
            let mut c = chunk(json!([]));
            c["usage"] = usage;
            events.push_str(&format!("data: {c}\n\n"));
        }
        events.push_str("data: [DONE]\n\n");
        return format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
            events.len()
        );
    }
    let answer = json!({
        "id": "chatcmpl-demo", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    })
    .to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
        answer.len()
    )
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}

/// Reads a chunked body, returning its decoded length.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(total);
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let size_str = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        let need = line_end + 2 + size + 2;
        while buf.len() < need {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(total);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..need);
        total += size;
        if size == 0 {
            return Ok(total);
        }
    }
}
