//! Test harness: a real `lattice` process on a free loopback port, the demo
//! echo upstream as a separate process (so it can be killed), a minimal
//! blocking HTTP/1.1 client, and readers of the audit store.

use lattice_audit::{AuditEvent, Store};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod http;
pub use http::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_lattice");

pub fn free_port() -> u16 {
    lattice_audit::testkit::free_port().expect("a free loopback port")
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// The demo echo upstream in its own process.
pub struct Upstream {
    pub port: u16,
    child: Child,
}

impl Upstream {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["demo-upstream", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the upstream", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { port, child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test peer built with the workspace (`lattice-mock-mcp`,
/// `lattice-mock-vllm`), which prints `... <addr>` as its first line.
pub struct Peer {
    pub port: u16,
    child: Child,
}

impl Peer {
    pub fn start(bin: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let path = Path::new(BIN).with_file_name(bin);
        assert!(
            path.exists(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            path.display()
        );
        let mut child = Command::new(path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line of {bin}: {line}"));
        Self { port, child }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const STARTER_POLICY: &str =
    include_str!("../../../examples/quickstart/policies/starter.cedar");

/// A gateway with its own directory.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Environment for the gateway process (after `LATTICE_LOG=info`).
    pub env: Vec<(String, String)>,
    /// A command the gateway is started under (`lattice serve -c CONFIG`
    /// appended to it), or none.
    pub wrapper: Vec<String>,
    child: Option<Child>,
}

impl Gateway {
    /// Writes `lattice.toml` from `extra` (appended after [server] and
    /// [policy]) and the starter policy, then starts serving.
    pub fn start(extra: &str) -> Self {
        Self::start_with(extra, STARTER_POLICY)
    }

    pub fn start_with(extra: &str, policy: &str) -> Self {
        let mut gw = Self::prepare(extra, policy);
        gw.spawn();
        gw
    }

    /// Writes the files without starting.
    pub fn prepare(extra: &str, policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("policy.cedar"), policy).unwrap();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nnode_id = \"test-node\"\ndata_dir = \"data\"\nmax_body_bytes = 4096\ngrace_period_seconds = 1\ngraceful_shutdown_timeout_seconds = 3\nreload_poll_ms = 100\n\n[policy]\nfiles = [\"policy.cedar\"]\n\n{extra}\n"
        );
        std::fs::write(dir.path().join("lattice.toml"), config).unwrap();
        Self {
            dir,
            port,
            env: Vec::new(),
            wrapper: Vec::new(),
            child: None,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("lattice.toml")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn spawn(&mut self) {
        self.launch();
        let port = self.port;
        let log = self.path("gateway.log");
        let child = self.child.as_mut().expect("launched");
        wait_for("the gateway", Duration::from_secs(20), || {
            // A gateway (or its wrapper) that exited: its log says why.
            if let Some(status) = child.try_wait().ok().flatten() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("the gateway exited before it answered ({status}); its log:\n{log}");
            }
            http(port, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
        });
        assert_thp_off(child.id());
    }

    /// Starts the process without waiting for it (a TLS listener is
    /// waited for by its test).
    pub fn launch(&mut self) {
        let log = std::fs::File::create(self.path("gateway.log")).unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["serve", "-c"])
            .arg(self.config())
            .env("LATTICE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// `lattice audit verify` (plus `extra` arguments) must pass.
    pub fn assert_verifies(&self, extra: &[&str]) {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(extra);
        let out = self.lattice(&args);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `GET path` with an `Authorization` header.
    pub fn get(&self, path: &str, authorization: &str) -> Resp {
        http(
            self.port,
            "GET",
            path,
            &[("Authorization", authorization)],
            b"",
        )
        .unwrap()
    }

    /// POSTs a JSON body.
    pub fn post_json(&self, path: &str, authorization: &str, body: &serde_json::Value) -> Resp {
        http(
            self.port,
            "POST",
            path,
            &[
                ("Authorization", authorization),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap()
    }

    /// Process ids of the gateway's children whose environment holds `marker`.
    pub fn children_with_env(&self, marker: &str) -> Vec<u32> {
        let pid = self.child.as_ref().expect("running").id();
        let out = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/environ"))
                    .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                    .unwrap_or(false)
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash or a power cut would stop it.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        let _ = child.wait();
    }

    /// Sends SIGTERM; the process is the caller's to wait for.
    fn terminate(&mut self) -> Child {
        let child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child
    }

    /// SIGTERM, then wait for exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate().wait().unwrap()
    }

    /// SIGTERM, then wait for exit at most `limit` (None: still running,
    /// then killed).
    pub fn stop_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.terminate();
        exit_within(child, limit)
    }

    /// Waits for a launched gateway to exit by itself, at most `limit`
    /// (None: still running, then killed).
    pub fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        exit_within(self.child.take().expect("launched"), limit)
    }

    pub fn lattice(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        let config = self.config();
        full.extend(["-c", config.to_str().unwrap()]);
        Command::new(BIN)
            .args(&full)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// `lattice ARGS -c CONFIG`, and the peak resident memory the command
    /// reached (bytes), as the kernel accounted it when it was reaped.
    // Reaped by wait4 below, which std's `Child` does not see.
    #[allow(unsafe_code, clippy::zombie_processes)]
    pub fn lattice_peak_rss(&self, args: &[&str]) -> (Output, u64) {
        use std::os::unix::process::ExitStatusExt;
        let mut full: Vec<&str> = args.to_vec();
        let config = self.config();
        full.extend(["-c", config.to_str().unwrap()]);
        let mut child = Command::new(BIN)
            .args(&full)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let drain = |from: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                #[allow(clippy::disallowed_methods)]
                from.take(64 << 20).read_to_end(&mut bytes).unwrap();
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it and `status`
        // for our own child, which `child` is never waited for again.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(
            pid,
            child.id() as i32,
            "wait4: {}",
            std::io::Error::last_os_error()
        );
        let out = Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        };
        // ru_maxrss is in KiB on Linux.
        (out, usage.ru_maxrss as u64 * 1024)
    }

    pub fn create_key(&self, agent: &str, roles: &[&str]) -> String {
        self.create_key_in(agent, "default", roles)
    }

    pub fn create_key_in(&self, agent: &str, tenant: &str, roles: &[&str]) -> String {
        self.create_principal_key("--agent", agent, tenant, roles)
    }

    /// A key for a human (`Lattice::Human`): a workbench user.
    pub fn create_human_key(&self, name: &str, tenant: &str, roles: &[&str]) -> String {
        self.create_principal_key("--human", name, tenant, roles)
    }

    fn create_principal_key(&self, kind: &str, name: &str, tenant: &str, roles: &[&str]) -> String {
        let mut args = vec!["keys", "create", kind, name, "--tenant", tenant];
        for r in roles {
            args.extend(["--role", r]);
        }
        let out = self.lattice(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(key.starts_with("lat_"), "{key}");
        // The gateway picks up new keys within a reload poll.
        let port = self.port;
        wait_for("the key to be active", Duration::from_secs(10), || {
            http(
                port,
                "GET",
                "/tools/none/x",
                &[("Authorization", &format!("Bearer {key}"))],
                b"",
            )
            .map(|r| r.status != 401)
            .unwrap_or(false)
        });
        key
    }

    pub fn store(&self) -> Store {
        Store::open_read_only(&self.path("data/audit.db")).unwrap()
    }

    /// The store once it holds every event the audit segments have made
    /// durable so far: the writer fills the store from its segments a few
    /// milliseconds after a call (at once only under load), so a test that
    /// reads right after a call's answer reads through this.
    pub fn filled_store(&self) -> Store {
        let db = self.path("data/audit.db");
        let mut store = self.store();
        wait_for(
            "the audit store to hold every event in the segments",
            Duration::from_secs(10),
            || {
                store = self.store();
                lattice_audit::beyond_store(&db, &store).unwrap().is_empty()
            },
        );
        store
    }

    /// The store's last `n` events, parsed.
    pub fn recent_events(&self, n: usize) -> Vec<serde_json::Value> {
        self.filled_store()
            .tail(n)
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(&e.json).unwrap())
            .collect()
    }

    /// All events of a request, once both its decision and outcome are written.
    pub fn events_of(&self, request_id: &str, expected: usize) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        wait_for("audit events", Duration::from_secs(10), || {
            events = self
                .store()
                .by_request(request_id)
                .unwrap()
                .into_iter()
                .map(|e| serde_json::from_str(&e.json).unwrap())
                .collect();
            events.len() >= expected
        });
        assert_eq!(
            events.len(),
            expected,
            "events of {request_id}: {events:#?}"
        );
        events
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let m = http(self.port, "GET", "/metrics", &[], b"").unwrap().body;
        m.lines()
            .find(|l| l.starts_with(name_and_labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// The child's exit status within `limit`; past it the child is killed.
fn exit_within(mut child: Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `[[mcp.allow_commands]]` for the test peers that run-time registrations
/// start: the Python conformance server and server-everything over stdio.
pub fn allow_test_peer_commands() -> String {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    format!(
        "[[mcp.allow_commands]]\nprogram = \"{}\"\nargs = ['.*/conformance_server\\.py']\n\n\
         [[mcp.allow_commands]]\nprogram = \"{}\"\nargs = [\"stdio\"]\n",
        peers.join(".venv/bin/python").display(),
        peers
            .join("node_modules/.bin/mcp-server-everything")
            .display()
    )
}

pub fn route(upstream_port: u16) -> String {
    format!(
        "[[routes]]\nname = \"echo\"\nupstream = \"http://127.0.0.1:{upstream_port}/base\"\nlabels = [\"demo\"]\ntimeout_ms = 3000\n[routes.credential]\nheader = \"x-upstream-key\"\nvalue = \"upstream-secret\"\n"
    )
}

/// What `wrk` saw: requests answered, and those not 2xx or 3xx.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub answered: u64,
    pub not_2xx: u64,
}

impl Load {
    pub fn ok(&self) -> u64 {
        self.answered - self.not_2xx
    }
}

/// `wrk` (installed by `scripts/setup`) against `GET path` with an
/// `Authorization` header: `connections` for `seconds`.
pub fn wrk(port: u16, path: &str, authorization: &str, connections: u32, seconds: u32) -> Load {
    let out = Command::new("wrk")
        .arg(format!("-c{connections}"))
        .args(["-t1", &format!("-d{seconds}s"), "-H"])
        .arg(format!("Authorization: {authorization}"))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("wrk (installed by scripts/setup)");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{report}");
    let count = |after: &str| -> Option<u64> {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(after))
            .and_then(|n| n.trim().parse().ok())
    };
    let answered = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in: {report}"));
    Load {
        answered,
        not_2xx: count("Non-2xx or 3xx responses:").unwrap_or(0),
    }
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `lattice worker make-test-model` (the tiny random Llama) into `dir/tiny`.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    let out = Command::new(BIN)
        .args(["worker", "make-test-model", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    model
}

/// A serving `lattice` turns transparent huge pages off for itself (its
/// allocator's huge pages stalled requests on compaction): the kernel's
/// flag for process `pid` (`THP_enabled` in its status since Linux 5.0).
pub fn assert_thp_off(pid: u32) {
    assert_thp(pid, false);
}

/// Asserts the process's transparent huge pages flag (`THP_enabled` in
/// its status; kernels before 6.x do not show it, and nothing is checked).
pub fn assert_thp(pid: u32, on: bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        let want = if on { "1" } else { "0" };
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(want),
            "pid {pid}: {line}"
        );
    }
}
