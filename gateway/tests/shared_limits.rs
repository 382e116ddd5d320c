//! Limits counted in a real Redis (the Debian `redis-server`, started here
//! on a free port) by several replicas at once, each leasing slices of the
//! windows: together they admit exactly the limit and never more, with a
//! round trip for only a small share of the calls; a window that turns is
//! counted afresh; and while Redis is down a fail-closed limit admits only
//! what its lease still covers, then refuses naming the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lattice_gateway::cluster::Redis;
use lattice_gateway::config::RedisConfig;
use lattice_gateway::limits::{CallKind, LimitSpec, Limiter, OnUnavailable, Per, Refusal};
use lattice_policy::{Principal, PrincipalKind};

struct RedisServer {
    port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl RedisServer {
    fn start() -> Self {
        assert!(
            std::path::Path::new("/usr/bin/redis-server").exists(),
            "run scripts/setup (redis-server)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            port,
            _dir: dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Scripts run so far (EVALSHA and EVAL).
    fn scripts_run(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// The requests counted in each window of every limit (all `r` fields).
    fn counted(&self) -> Vec<u64> {
        let keys = self.cli(&["--scan", "--pattern", "lattice:limit:*"]);
        keys.lines()
            .map(|k| self.cli(&["HGET", k, "r"]).parse().unwrap())
            .collect()
    }

    fn replica(&self) -> Arc<Limiter> {
        let redis = Redis::connect(&RedisConfig {
            url: format!("redis://127.0.0.1:{}", self.port),
            password_env: None,
            ca_file: None,
            timeout: Duration::from_millis(250),
            prefix: "lattice".into(),
        })
        .unwrap();
        Arc::new(Limiter::shared(Arc::new(redis)))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(id: &str) -> Principal {
    Principal {
        kind: PrincipalKind::Agent,
        id: id.into(),
        tenant: "t".into(),
        roles: vec![],
        labels: vec![],
        auth_method: "api_key".into(),
    }
}

fn limit(requests: u64, window_s: u64) -> Vec<LimitSpec> {
    vec![LimitSpec {
        name: "calls".into(),
        per: Per::Agent,
        only: vec![],
        requests: Some(requests),
        tokens: None,
        window: Duration::from_secs(window_s),
        kinds: vec![CallKind::Http],
        on_unavailable: OnUnavailable::Deny,
    }]
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Calls `replica` until it refuses; how many it admitted.
async fn until_refused(replica: &Limiter, specs: &[LimitSpec], who: &Principal) -> u64 {
    let mut admitted = 0;
    loop {
        match replica.admit(specs, who, CallKind::Http, now_s()).await {
            Ok(_) => admitted += 1,
            Err(Refusal::Exceeded(e)) => {
                assert_eq!((e.limit.as_str(), e.what), ("calls", "requests"));
                return admitted;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_leasing_admit_exactly_the_limit_with_few_round_trips() {
    let redis = RedisServer::start();
    let specs = Arc::new(limit(3000, 31_536_000));
    let replicas: Vec<Arc<Limiter>> = (0..4).map(|_| redis.replica()).collect();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..4 {
            let (replica, specs, admitted) = (replica.clone(), specs.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                let n = until_refused(&replica, &specs, &agent("agent-x")).await;
                admitted.fetch_add(n, Ordering::Relaxed);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Leases granted before the last refusals may still be landing: wait
    // for them, then use what any replica still holds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for replica in &replicas {
        let n = until_refused(replica, &specs, &agent("agent-x")).await;
        admitted.fetch_add(n, Ordering::Relaxed);
    }
    let admitted = admitted.load(Ordering::Relaxed);
    assert_eq!(
        redis.counted(),
        vec![3000],
        "Redis counted the limit, no more"
    );
    assert_eq!(admitted, 3000, "every unit counted was admitted once");
    let scripts = redis.scripts_run();
    assert!(
        scripts < admitted / 5,
        "{scripts} round trips for {admitted} calls"
    );
    // Another agent has a count of its own.
    assert!(replicas[0]
        .admit(&specs, &agent("agent-y"), CallKind::Http, now_s())
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_turns_is_counted_afresh_and_no_window_is_overspent() {
    let redis = RedisServer::start();
    let specs = limit(40, 1);
    let replicas = [redis.replica(), redis.replica()];
    let who = agent("agent-x");
    let mut admitted = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        for r in &replicas {
            match r.admit(&specs, &who, CallKind::Http, now_s()).await {
                Ok(_) => admitted += 1,
                Err(Refusal::Exceeded(_)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let counted = redis.counted();
    assert!(counted.len() >= 3, "windows counted: {counted:?}");
    assert!(counted.iter().all(|&r| r <= 40), "{counted:?}");
    assert!(
        admitted <= counted.iter().sum::<u64>(),
        "{admitted} admitted, {counted:?} counted"
    );
    assert!(admitted > 80, "{admitted} admitted over {counted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_only_what_a_lease_covers_is_admitted() {
    let mut redis = RedisServer::start();
    let specs = limit(1_000_000, 31_536_000);
    let replica = redis.replica();
    let who = agent("agent-x");
    // A steady rate, so the replica holds a lease.
    for _ in 0..2000 {
        replica
            .admit(&specs, &who, CallKind::Http, now_s())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counted: u64 = redis.counted().iter().sum();
    assert!(counted > 2000, "a lease is held: {counted} counted");
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let mut from_lease = 0;
    let refusal = loop {
        match replica.admit(&specs, &who, CallKind::Http, now_s()).await {
            Ok(_) => from_lease += 1,
            Err(refusal) => break refusal,
        }
        assert!(from_lease <= counted - 2000, "admitted past its lease");
    };
    assert_eq!(from_lease, counted - 2000, "the lease is used to its end");
    match refusal {
        Refusal::Unavailable { limits, cause } => {
            assert_eq!(limits, vec!["calls".to_string()]);
            assert!(
                cause.contains(&format!("127.0.0.1:{}", redis.port)),
                "{cause}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_replica_that_stops_gives_back_the_units_it_leased_and_did_not_use() {
    let redis = RedisServer::start();
    let specs = limit(100_000, 31_536_000);
    let replica = redis.replica();
    let who = agent("agent-x");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admitted = 2000;
    rt.block_on(async {
        for _ in 0..admitted {
            replica
                .admit(&specs, &who, CallKind::Http, now_s())
                .await
                .unwrap();
        }
        // Refills asked for in the background land.
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let held: u64 = redis.counted().iter().sum();
    assert!(
        held > admitted,
        "a lease is held: {held} counted for {admitted} admitted"
    );
    // As at shutdown: outside the runtime the calls ran on.
    let units = replica.surrender_leases().unwrap();
    assert_eq!(held - units, admitted, "{units} given back of {held}");
    assert_eq!(redis.counted().iter().sum::<u64>(), admitted);
    // Later calls ask Redis for themselves, one unit each.
    rt.block_on(replica.admit(&specs, &who, CallKind::Http, now_s()))
        .unwrap();
    assert_eq!(redis.counted().iter().sum::<u64>(), admitted + 1);
    assert_eq!(replica.surrender_leases().unwrap(), 0);
}
