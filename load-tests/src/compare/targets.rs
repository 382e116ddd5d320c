//! The targets of a comparison, started by the harness on loopback: the
//! upstream itself (`direct`), nginx as a bare reverse proxy, bare Pingora
//! (`lattice-bare-pingora`: the framework's floor), Lattice with its full
//! enforcement, and the peers when their program is given
//! (agentgateway by binary path, LiteLLM's proxy by its `litellm` command).
//! Every target is checked before it is measured: a call with its
//! credentials answers 2xx, and for a target that enforces, a call without
//! them is refused — a peer configured to enforce nothing is never measured.
//!
//! Must never: start anything that listens beyond 127.0.0.1, or leave a
//! process running after its `Started` is dropped.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::load::Req;
use super::Route;
use crate::{free_port, start_gateway, start_mock_mcp, start_mock_vllm, Gateway, Proc};

/// Where the programs under comparison are.
#[derive(Clone, Debug, Default)]
pub struct Programs {
    pub lattice: PathBuf,
    /// Another Lattice build measured beside it as the target `baseline`
    /// (a change's before and after in one interleaved run).
    pub baseline: Option<PathBuf>,
    pub agentgateway: Option<PathBuf>,
    pub litellm: Option<PathBuf>,
}

/// The upstream every target forwards to.
pub struct Upstream {
    /// host:port
    pub addr: String,
    _proc: Proc,
}

/// A running target.
pub struct Started {
    pub name: String,
    pub req: Req,
    /// Whether a call without credentials must be refused.
    pub enforcing: bool,
    /// The process whose tree's memory is the target's (None for `direct`:
    /// the upstream is shared by all).
    pub pid: Option<u32>,
    /// Lattice's audit store, to count the events it wrote.
    pub audit_db: Option<PathBuf>,
    /// The target's own process (its exit is noticed while waiting for it).
    proc: Option<Proc>,
    /// The target serves MCP only inside a session: `check` opens one
    /// (`initialize`, then `notifications/initialized`) and every request
    /// carries it.
    mcp_session: bool,
    _gateway: Option<Gateway>,
}

/// nginx's configuration: one worker, no access log, everything in `dir`;
/// `body` is the `server` block's `location /` content.
fn nginx_conf(dir: &Path, port: u16, upstream: Option<&str>) -> String {
    let d = dir.display();
    let (up, location) = match upstream {
        Some(u) => (
            format!("upstream up {{ server {u}; keepalive 64; }}"),
            "proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";"
                .to_string(),
        ),
        None => (String::new(), "return 200 \"ok\\n\";".to_string()),
    };
    format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
         client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
         uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  {up}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }}\n}}\n"
    )
}

fn nginx_binary() -> Result<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("nginx is not installed (scripts/setup installs Debian's nginx)")
}

/// Starts an nginx in `dir` on a free port; `upstream` makes it a proxy.
fn start_nginx(dir: &Path, upstream: Option<&str>) -> Result<(u16, Proc)> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, port, upstream))?;
    let proc = Proc(
        Command::new(nginx_binary()?)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .context("start nginx")?,
    );
    Ok((port, proc))
}

/// The shared upstream: nginx answering 200 (HTTP route),
/// `lattice-mock-vllm` (LLM route) or `lattice-mock-mcp` (MCP route).
pub fn start_upstream(route: Route, programs: &Programs, dir: &Path) -> Result<Upstream> {
    match route {
        Route::Http => {
            let (port, proc) = start_nginx(&dir.join("upstream"), None)?;
            Ok(Upstream {
                addr: format!("127.0.0.1:{port}"),
                _proc: proc,
            })
        }
        Route::Llm => {
            let (addr, proc) = start_mock_vllm(&programs.lattice)?;
            Ok(Upstream { addr, _proc: proc })
        }
        Route::Mcp => {
            let (addr, proc) = start_mock_mcp(&programs.lattice)?;
            Ok(Upstream { addr, _proc: proc })
        }
    }
}

/// Starts target `name` in `dir` (its own folder).
pub async fn start(
    name: &str,
    route: Route,
    path: &str,
    (body, expect): (Option<&str>, Option<&str>),
    upstream: &Upstream,
    programs: &Programs,
    dir: &Path,
) -> Result<Started> {
    std::fs::create_dir_all(dir)?;
    let mut headers = Vec::new();
    if body.is_some() {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    if route == Route::Mcp {
        // Streamable HTTP: the client takes a JSON answer or an event stream.
        headers.push((
            "accept".to_string(),
            "application/json, text/event-stream".to_string(),
        ));
    }
    let req = |url: String, headers: Vec<(String, String)>| Req {
        url,
        headers,
        body: body.map(str::to_string),
        expect: expect.map(str::to_string),
    };
    let bearer = |k: &str| ("authorization".to_string(), format!("Bearer {k}"));
    let started = match name {
        "direct" => Started {
            name: name.into(),
            req: req(format!("http://{}{path}", upstream.addr), headers),
            enforcing: false,
            pid: None,
            audit_db: None,
            proc: None,
            mcp_session: false,
            _gateway: None,
        },
        "nginx" => {
            let (port, proc) = start_nginx(dir, Some(&upstream.addr))?;
            Started {
                name: name.into(),
                req: req(format!("http://127.0.0.1:{port}{path}"), headers),
                enforcing: false,
                pid: Some(proc.0.id()),
                audit_db: None,
                proc: Some(proc),
                mcp_session: false,
                _gateway: None,
            }
        }
        "pingora" => {
            if route != Route::Http {
                bail!("the pingora target is a bare HTTP proxy: HTTP route only");
            }
            let bin = bare_pingora()?;
            let port = free_port()?;
            let listen = format!("127.0.0.1:{port}");
            let args = ["--listen", &listen, "--upstream", &upstream.addr];
            let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            let req = req(String::new(), headers);
            peer(name, &bin, &args, dir, port, None, req, path)?
        }
        "lattice" | "baseline" => {
            let bin = match name {
                "baseline" => programs.baseline.as_ref().context("pass --baseline PATH")?,
                _ => &programs.lattice,
            };
            let (policy, extra, url_path) = match route {
                Route::Http => (
                    include_str!("../../../examples/quickstart/policies/starter.cedar").to_string(),
                    format!(
                        "[[routes]]\nname = \"echo\"\nupstream = \"http://{}\"\nlabels = [\"demo\"]\n",
                        upstream.addr
                    ),
                    format!("/tools/echo{path}"),
                ),
                Route::Llm => (
                    "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"chat\", resource);\n".to_string(),
                    format!(
                        "[[backends]]\nname = \"bench\"\nkind = \"vllm\"\nurl = \"http://{}\"\n\n[[models]]\nname = \"bench-model\"\nbackends = [\"bench\"]\n",
                        upstream.addr
                    ),
                    path.to_string(),
                ),
                // One server's door, `/mcp/bench`: its tools under their own
                // names, as the other targets serve them.
                Route::Mcp => (
                    "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n".to_string(),
                    format!(
                        "[[mcp_servers]]\nname = \"bench\"\nurl = \"http://{}{path}\"\nallow_private_network = true\n",
                        upstream.addr
                    ),
                    format!("{path}/bench"),
                ),
            };
            let gw = start_gateway(bin, dir, &policy, &extra).await?;
            headers.push(("authorization".into(), gw.auth.clone()));
            Started {
                name: name.into(),
                req: req(format!("http://127.0.0.1:{}{url_path}", gw.port), headers),
                enforcing: true,
                pid: Some(gw.pid()),
                audit_db: Some(dir.join("data/audit.db")),
                proc: None,
                mcp_session: false,
                _gateway: Some(gw),
            }
        }
        "agentgateway" | "litellm" => {
            let port = free_port()?;
            let (bin, key, args) =
                peer_command(name, route, programs, &upstream.addr, dir, port)?;
            let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            let req = req(String::new(), headers);
            let mut started = peer(name, &bin, &args, dir, port, Some(bearer(key)), req, path)?;
            started.mcp_session = route == Route::Mcp;
            started
        }
        other => bail!(
            "unknown target {other:?} (direct, nginx, pingora, lattice, baseline, agentgateway, litellm)"
        ),
    };
    Ok(started)
}

/// A peer's program, its credential and its arguments (its config written
/// into `dir`).
fn peer_command(
    name: &str,
    route: Route,
    programs: &Programs,
    upstream: &str,
    dir: &Path,
    port: u16,
) -> Result<(PathBuf, &'static str, Vec<String>)> {
    let file = |name: &str, text: String| -> Result<String> {
        let f = dir.join(name);
        std::fs::write(&f, text)?;
        Ok(f.display().to_string())
    };
    if name == "agentgateway" {
        let bin = programs
            .agentgateway
            .clone()
            .context("pass --agentgateway PATH")?;
        let key = "bench-key-0123456789";
        // On the LLM route its AI backend, which parses each chat as
        // Lattice's /v1 does (a bare proxy there would do less work).
        let conf = match route {
            Route::Http => include_str!("../../peers/agentgateway.yaml"),
            Route::Llm => include_str!("../../peers/agentgateway-llm.yaml"),
            Route::Mcp => include_str!("../../peers/agentgateway-mcp.yaml"),
        };
        let conf = conf
            .replace("{port}", &port.to_string())
            .replace("{upstream}", upstream)
            .replace("{key}", key);
        return Ok((bin, key, vec!["-f".into(), file("config.yaml", conf)?]));
    }
    let bin = programs
        .litellm
        .clone()
        .context("pass --litellm PATH (PyPI litellm[proxy])")?;
    let key = "sk-bench-0123456789";
    let conf = format!(
        "model_list:\n  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n      api_base: http://{upstream}/v1\n      api_key: none\ngeneral_settings:\n  master_key: {key}\n"
    );
    let args = [
        "--config",
        &file("litellm.yaml", conf)?,
        "--host",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--port".into(),
        port.to_string(),
        "--num_workers".into(),
        "1".into(),
    ])
    .collect();
    Ok((bin, key, args))
}

/// `lattice-bare-pingora`, built beside the harness (`cargo build --release
/// -p lattice-load-tests`).
fn bare_pingora() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("lattice-bare-pingora");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with cargo build --release -p lattice-load-tests",
            bin.display()
        );
    }
    Ok(bin)
}

/// Starts a peer's program in `dir` (output discarded) listening on `port`
/// with its credential header (`None`: it enforces nothing); `req` is
/// completed with the URL.
#[allow(clippy::too_many_arguments)]
fn peer(
    name: &str,
    bin: &Path,
    args: &[&OsStr],
    dir: &Path,
    port: u16,
    credential: Option<(String, String)>,
    mut req: Req,
    path: &str,
) -> Result<Started> {
    let proc = Proc(
        Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {name} ({})", bin.display()))?,
    );
    req.url = format!("http://127.0.0.1:{port}{path}");
    let enforcing = credential.is_some();
    req.headers.extend(credential);
    Ok(Started {
        name: name.into(),
        req,
        enforcing,
        pid: Some(proc.0.id()),
        audit_db: None,
        proc: Some(proc),
        mcp_session: false,
        _gateway: None,
    })
}

impl Started {
    /// Waits until a call with credentials answers 2xx (the slowest peer
    /// starts in about a minute), then checks that one without them is
    /// refused where the target enforces.
    pub async fn check(&mut self, client: &reqwest::Client) -> Result<()> {
        let since = Instant::now();
        let mut last = None;
        let mut session_error = None;
        loop {
            if let Some(p) = self.proc.as_mut() {
                if let Ok(Some(status)) = p.0.try_wait() {
                    bail!(
                        "{}: its process exited ({status}) before it answered",
                        self.name
                    );
                }
            }
            if self.mcp_session && !self.has_session() {
                if let Err(e) = self.open_session(client).await {
                    session_error = Some(e.to_string());
                }
            }
            last = match self.req.status(client).await {
                Some(s) if (200..300).contains(&s) => break,
                other => other.or(last),
            };
            if since.elapsed() > Duration::from_secs(180) {
                bail!(
                    "{}: never answered 2xx at {} (last status {last:?}{})",
                    self.name,
                    self.req.url,
                    session_error
                        .map_or(String::new(), |e| format!("; opening an MCP session: {e}"))
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if self.enforcing {
            match self.req.anonymous().status(client).await {
                Some(s) if (200..300).contains(&s) => bail!(
                    "{}: answered {s} without credentials: it enforces nothing, so it is not measured",
                    self.name
                ),
                _ => {}
            }
        }
        Ok(())
    }

    fn has_session(&self) -> bool {
        self.req
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("mcp-session-id"))
    }

    /// Opens an MCP session with the target's credentials and adds it to
    /// its request (the one session every connection of the load shares,
    /// as one agent's calls would).
    async fn open_session(&mut self, client: &reqwest::Client) -> Result<()> {
        const VERSION: &str = "2025-06-18";
        let post = |body: &'static str, session: Option<&str>| {
            let mut r = client.post(&self.req.url).body(body);
            for (k, v) in &self.req.headers {
                r = r.header(k, v);
            }
            if let Some(s) = session {
                r = r
                    .header("mcp-session-id", s)
                    .header("mcp-protocol-version", VERSION);
            }
            r
        };
        let init = post(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"lattice-load-compare","version":"0"}}}"#,
            None,
        )
        .send()
        .await?;
        let status = init.status();
        let session = init
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = init.text().await?;
        let session = match session {
            Some(s) if status.is_success() => s,
            _ => bail!("initialize answered {status} without a session: {text}"),
        };
        let done = post(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            Some(&session),
        )
        .send()
        .await?;
        if !done.status().is_success() {
            bail!("notifications/initialized answered {}", done.status());
        }
        self.req.headers.push(("mcp-session-id".into(), session));
        self.req
            .headers
            .push(("mcp-protocol-version".into(), VERSION.into()));
        Ok(())
    }

    /// Resident memory of the target's process tree, in MB.
    pub fn rss_mb(&self) -> Option<f64> {
        self.pid.map(|p| tree_rss_kb(p) as f64 / 1024.0)
    }

    /// CPU clock ticks (1/100 s) the target's process tree has used.
    pub fn cpu_ticks(&self) -> Option<u64> {
        self.pid.map(tree_cpu_ticks)
    }

    /// Events in Lattice's audit store (None for other targets).
    pub fn audit_events(&self) -> Option<u64> {
        let db = self.audit_db.as_ref()?;
        lattice_audit::Store::open_read_only(db).ok()?.count().ok()
    }
}

/// CPU time (user + system clock ticks) of a process and its descendants.
fn tree_cpu_ticks(pid: u32) -> u64 {
    let own = crate::stat_cpu_ticks(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0);
    own + children(pid).into_iter().map(tree_cpu_ticks).sum::<u64>()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

impl Started {
    /// Waits until the target is idle (`settle`).
    pub async fn settle(&self) {
        if let Some(pid) = self.pid {
            settle(pid).await;
        }
    }
}

/// Waits (at most 60 s) until the process `pid` and its children are idle
/// — under 5% of a core over half a second — so work it still has queued
/// (a gateway draining its audit backlog after a saturation run) never
/// runs during another target's measurement.
pub async fn settle(pid: u32) {
    let since = Instant::now();
    let mut last = tree_cpu_ticks(pid);
    while since.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = tree_cpu_ticks(pid);
        // Clock ticks are 1/100 s: 5% of 0.5 s is 2.5 ticks.
        if now.saturating_sub(last) <= 2 {
            return;
        }
        last = now;
    }
}

/// VmRSS of a process and all its descendants, in kB.
fn tree_rss_kb(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    own + children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(tree_rss_kb)
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_proxies_with_keepalive_or_answers_200() {
        let proxy = nginx_conf(Path::new("/t"), 8080, Some("127.0.0.1:9"));
        assert!(
            proxy.contains("server 127.0.0.1:9; keepalive 64;"),
            "{proxy}"
        );
        assert!(proxy.contains("proxy_http_version 1.1;"), "{proxy}");
        assert!(proxy.contains("listen 127.0.0.1:8080;"), "{proxy}");
        let origin = nginx_conf(Path::new("/t"), 8081, None);
        assert!(origin.contains("return 200"), "{origin}");
        assert!(!origin.contains("proxy_pass"), "{origin}");
    }

    #[test]
    fn this_process_has_a_resident_size_and_cpu_time() {
        assert!(tree_rss_kb(std::process::id()) > 0);
        let before = tree_cpu_ticks(std::process::id());
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(tree_cpu_ticks(std::process::id()) > before);
    }
}
