//! The one load generator every target of a comparison gets: closed-loop
//! saturation through `wrk` (Debian's package: C, one thread, so the
//! generator takes as little of the shared cores as it can) and open-loop
//! fixed rates through an in-process client (each request its own task,
//! sent at its due time however slow earlier answers are: no coordinated
//! omission).
//!
//! Must never: count a non-2xx answer or a socket error as a success.

use crate::Fixed;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One request, as every target gets it (only URL and credentials differ).
#[derive(Clone, Debug)]
pub struct Req {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// A body makes it a POST.
    pub body: Option<String>,
    /// Text a 2xx answer's body must contain to count as a success.
    pub expect: Option<String>,
}

impl Req {
    fn build(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut r = match &self.body {
            Some(b) => client.post(&self.url).body(b.clone()),
            None => client.get(&self.url),
        };
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        r
    }

    /// Sends once and reads the whole answer: its status, or None on a
    /// socket error. A 2xx whose body lacks `expect` is reported as 502.
    pub async fn status(&self, client: &reqwest::Client) -> Option<u16> {
        let r = self.build(client).send().await.ok()?;
        let status = r.status().as_u16();
        let body = r.bytes().await.ok()?;
        Some(if (200..300).contains(&status) && !self.expected(&body) {
            502
        } else {
            status
        })
    }

    /// Whether an answer's body holds what the scenario expects.
    fn expected(&self, body: &[u8]) -> bool {
        self.expect
            .as_deref()
            .is_none_or(|e| String::from_utf8_lossy(body).contains(e))
    }

    /// The same request without its credentials.
    pub fn anonymous(&self) -> Self {
        let mut r = self.clone();
        r.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
        r
    }

    /// `wrk`'s Lua script for this request.
    fn lua(&self) -> String {
        let mut s = String::new();
        if let Some(b) = &self.body {
            s.push_str(&format!("wrk.method = \"POST\"\nwrk.body = [==[{b}]==]\n"));
        }
        for (k, v) in &self.headers {
            s.push_str(&format!("wrk.headers[\"{k}\"] = [==[{v}]==]\n"));
        }
        if let Some(e) = &self.expect {
            // Each wrk thread counts in its own Lua state; `done` runs in
            // the main one and sums them.
            s.push_str(&format!(
                "local threads = {{}}\n\
                 function setup(thread) table.insert(threads, thread) end\n\
                 function init(args) unexpected = 0 end\n\
                 function response(status, headers, body)\n\
                 \x20 if status >= 200 and status < 300 and not string.find(body, [==[{e}]==], 1, true) then unexpected = unexpected + 1 end\n\
                 end\n\
                 function done(summary, latency, requests)\n\
                 \x20 local n = 0\n\
                 \x20 for _, t in ipairs(threads) do n = n + t:get(\"unexpected\") end\n\
                 \x20 io.write(string.format(\"Unexpected bodies: %d\\n\", n))\n\
                 end\n"
            ));
        }
        s
    }
}

/// A saturation run: successful requests per second and failures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Saturation {
    pub per_second: f64,
    pub errors: u64,
}

/// Closed-loop: `connections` keep-alive connections back to back for
/// `seconds`, through `wrk -t1`; an answer slower than `timeout` seconds
/// counts as a failure.
pub fn saturate(
    req: &Req,
    connections: usize,
    seconds: u64,
    timeout: u64,
    dir: &Path,
) -> Result<Saturation> {
    let script = dir.join("wrk.lua");
    std::fs::write(&script, req.lua())?;
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["--timeout", &format!("{timeout}s")])
        .arg("-s")
        .arg(&script)
        .arg(&req.url)
        .output()
        .context("run wrk (scripts/setup installs Debian's wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text)
}

/// Reads `Requests/sec`, the total, and the failures out of wrk's report.
/// `Requests/sec` counts every answer, so the failures are taken out.
pub fn parse_wrk(text: &str) -> Result<Saturation> {
    let number = |after: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(after))?;
        line.trim_start()[after.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rate = number("Requests/sec:").context("wrk printed no Requests/sec")?;
    let mut errors = number("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    // 2xx answers without the expected text (the scenario's `expect`).
    errors += number("Unexpected bodies:").unwrap_or(0.0) as u64;
    if let Some(line) = text
        .lines()
        .find(|l| l.trim_start().starts_with("Socket errors:"))
    {
        // "Socket errors: connect 0, read 0, write 0, timeout 0"
        errors += line
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .context("wrk printed no request count")?;
    let ok_share = if total > 0.0 {
        (total - errors as f64).max(0.0) / total
    } else {
        0.0
    };
    Ok(Saturation {
        per_second: rate * ok_share,
        errors,
    })
}

/// Open-loop at a fixed rate over `connections` keep-alive connections
/// (hyper's HTTP/1.1 client: light enough that the generator does not eat
/// the cores it shares with the target). Request i is due at
/// start + i/rate on connection i mod `connections`. Its latency counts
/// from its send; when its connection was still busy with the previous
/// request past the due time, from the due time — the wait is charged, so
/// a slow answer cannot hide the requests it delays (no coordinated
/// omission). Timer slack (tokio's 1 ms wheel) is not charged.
pub async fn fixed_rate(req: &Req, rate: u64, seconds: u64, connections: usize) -> Result<Fixed> {
    let total = rate * seconds;
    let connections = connections.clamp(1, total.max(1) as usize) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let uri: hyper::Uri = req.url.parse().context("the target's URL")?;
    let authority = uri.authority().context("the URL has no host")?.to_string();
    let mut workers = Vec::new();
    for k in 0..connections {
        let (req, uri, authority) = (req.clone(), uri.clone(), authority.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut conn = None;
            // The body once per connection; each send shares it.
            let body = bytes::Bytes::from(req.body.clone().unwrap_or_default());
            let mut i = k;
            while i < total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                let sent = if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                };
                match send_once(&mut conn, &authority, &uri, &req, body.clone()).await {
                    Ok(true) => lat.push(sent.elapsed()),
                    _ => {
                        errors += 1;
                        conn = None;
                    }
                }
                i += connections;
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::with_capacity(total as usize), 0);
    for w in workers {
        let (l, e) = w.await?;
        lat.extend(l);
        errors += e;
    }
    Ok(Fixed::from_samples(lat, errors, total as usize))
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// Sends one request on the connection (opening it first if needed) and
/// reads the whole answer; true on a 2xx.
async fn send_once(
    conn: &mut Option<Sender>,
    authority: &str,
    uri: &hyper::Uri,
    req: &Req,
    body: bytes::Bytes,
) -> Result<bool> {
    use http_body_util::BodyExt;
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let tcp = tokio::net::TcpStream::connect(authority).await?;
        tcp.set_nodelay(true)?;
        let (sender, driver) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(driver);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().context("connected")?;
    sender.ready().await?;
    let mut b = hyper::Request::builder()
        .method(if req.body.is_some() { "POST" } else { "GET" })
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority);
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    let answer = sender
        .send_request(b.body(http_body_util::Full::new(body))?)
        .await?;
    let ok = answer.status().is_success();
    let body = answer.into_body().collect().await?.to_bytes();
    Ok(ok && req.expected(&body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const REPORT: &str = "Running 1s test @ http://127.0.0.1:1/bench
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   100.00us   20.00us   1.00ms   90.00%
  1000 requests in 1.00s, 100.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 95
Requests/sec:   1000.00
Transfer/sec:    100.00KB
";

    #[test]
    fn wrk_failures_are_taken_out_of_the_rate() {
        let s = parse_wrk(REPORT).unwrap();
        assert_eq!(s.errors, 100);
        assert!((s.per_second - 900.0).abs() < 1e-6, "{}", s.per_second);
        let unexpected = format!("{REPORT}Unexpected bodies: 400\n");
        let s = parse_wrk(&unexpected).unwrap();
        assert_eq!(
            s.errors, 500,
            "2xx answers without the expected text are failures"
        );
        assert!((s.per_second - 500.0).abs() < 1e-6, "{}", s.per_second);
        let clean = "  10 requests in 1.00s, 1KB read\nRequests/sec:     10.00\n";
        let s = parse_wrk(clean).unwrap();
        assert_eq!((s.errors, s.per_second), (0, 10.0));
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn the_lua_script_carries_method_body_and_headers() {
        let mut r = Req {
            url: "http://x".into(),
            headers: vec![("authorization".into(), "Bearer k".into())],
            body: Some("{\"a\":1}".into()),
            expect: None,
        };
        let lua = r.lua();
        assert!(lua.contains("wrk.method = \"POST\""), "{lua}");
        assert!(lua.contains("wrk.body = [==[{\"a\":1}]==]"), "{lua}");
        assert!(lua.contains("wrk.headers[\"authorization\"] = [==[Bearer k]==]"));
        assert!(!lua.contains("function response"), "{lua}");
        assert!(r.anonymous().headers.is_empty());
        assert!(r.expected(b"anything"));
        r.expect = Some("Echo: bench".into());
        let lua = r.lua();
        assert!(
            lua.contains("string.find(body, [==[Echo: bench]==], 1, true)"),
            "{lua}"
        );
        assert!(lua.contains("Unexpected bodies: %d"), "{lua}");
        assert!(r.expected(b"{\"text\":\"Echo: bench\"}"));
        assert!(!r.expected(b"{\"error\":{\"code\":-32601}}"));
    }
}
