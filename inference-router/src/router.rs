//! The route table and the client. `Router::configure` swaps in a new table
//! (a reload keeps the live state of every backend whose spec is unchanged);
//! `Router::send` runs one attempt on one backend on the caller's task and
//! hands back the response head and its body; dropping either (the agent
//! went away) drops the backend connection, which is how a cancellation
//! reaches the backend. A background loop on the router's own runtime runs
//! each backend's active health check and reads vLLM's load gauges.

use arc_swap::ArcSwap;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{parse_vllm_load, BackendSpec, BackendState};
use crate::openai::Endpoint;
use crate::select::{choose, Strategy};
use crate::upstream::{Resolver, Response, Upstream};
use crate::InferenceError;

/// A model name and its aliases → backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    pub name: String,
    pub aliases: Vec<String>,
    /// Backend names, in priority order.
    pub backends: Vec<String>,
    pub strategy: Strategy,
    /// The name sent to backends (default: the route's name).
    pub upstream_model: Option<String>,
    /// Operator labels: the Model entity's `labels` in policies.
    pub labels: Vec<String>,
}

impl ModelRoute {
    pub fn upstream_model(&self) -> &str {
        self.upstream_model.as_deref().unwrap_or(&self.name)
    }
}

/// A route with its backends' live state.
#[derive(Debug)]
pub struct Resolved {
    pub route: ModelRoute,
    pub backends: Vec<Arc<BackendState>>,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<String, Arc<Resolved>>,
    routes: Vec<Arc<Resolved>>,
    backends: Vec<Arc<BackendState>>,
}

fn build_table(
    old: Option<&Table>,
    backends: &[BackendSpec],
    routes: &[ModelRoute],
    dns: Option<&Resolver>,
) -> Result<Table, InferenceError> {
    let mut states: HashMap<String, Arc<BackendState>> = HashMap::new();
    let mut ordered = Vec::new();
    for spec in backends {
        if states.contains_key(&spec.name) {
            return Err(InferenceError::Config(format!(
                "backend `{}` is defined twice",
                spec.name
            )));
        }
        let state = match old.and_then(|t| t.backends.iter().find(|b| b.spec == *spec)) {
            Some(b) => b.clone(),
            None => {
                let mut b = BackendState::new(spec.clone());
                if let Some(pin) = &spec.pin {
                    b.client = Some(crate::pin::pinned_client(pin)?);
                }
                let upstream = Upstream::new(&spec.url, spec.pin.as_deref(), dns.cloned())
                    .map_err(|e| InferenceError::Config(format!("backend `{}`: {e}", spec.name)))?;
                b.upstream = Some(Arc::new(upstream));
                Arc::new(b)
            }
        };
        states.insert(spec.name.clone(), state.clone());
        ordered.push(state);
    }
    let mut by_name = HashMap::new();
    let mut list = Vec::new();
    for route in routes {
        if route.backends.is_empty() {
            return Err(InferenceError::Config(format!(
                "model `{}` has no backends",
                route.name
            )));
        }
        let mut seen = HashSet::new();
        let mut members = Vec::new();
        for name in &route.backends {
            let Some(state) = states.get(name) else {
                return Err(InferenceError::Config(format!(
                    "model `{}` names backend `{name}`, which is not defined",
                    route.name
                )));
            };
            if !seen.insert(name) {
                return Err(InferenceError::Config(format!(
                    "model `{}` lists backend `{name}` twice",
                    route.name
                )));
            }
            members.push(state.clone());
        }
        let resolved = Arc::new(Resolved {
            route: route.clone(),
            backends: members,
        });
        for name in std::iter::once(&route.name).chain(&route.aliases) {
            if by_name.insert(name.clone(), resolved.clone()).is_some() {
                return Err(InferenceError::Config(format!(
                    "model name or alias `{name}` is used twice"
                )));
            }
        }
        list.push(resolved);
    }
    Ok(Table {
        by_name,
        routes: list,
        backends: ordered,
    })
}

/// Checks a route table without building live state (config validation).
pub fn validate(backends: &[BackendSpec], routes: &[ModelRoute]) -> Result<(), InferenceError> {
    build_table(None, backends, routes, None).map(|_| ())
}

/// A backend's response head and its body, chunk by chunk.
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: String,
    pub backend: Arc<BackendState>,
    response: Response,
    _in_flight: InFlight,
}

impl UpstreamResponse {
    /// The next chunk; None at the end of the body. A failure or a silence
    /// longer than the backend's timeout is recorded on the backend.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, InferenceError>> {
        let next =
            match tokio::time::timeout(self.backend.spec.timeout, self.response.chunk()).await {
                Err(_) => Err(timed_out(&self.backend)),
                Ok(Err(e)) => Err(fault(&self.backend, e)),
                Ok(Ok(None)) => return None,
                Ok(Ok(Some(c))) => Ok(c),
            };
        if next.is_err() {
            self.backend.record_failure();
        }
        Some(next)
    }
}

/// Decrements the outstanding count when an attempt ends, however it ends.
struct InFlight(Arc<BackendState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The most of an error body kept from a backend.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The inference router.
pub struct Router {
    table: Arc<ArcSwap<Table>>,
    /// Resolves backends' names for their request connections.
    dns: Option<Resolver>,
    runtime: Option<tokio::runtime::Runtime>,
    turn: AtomicU64,
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Router {
    /// Starts the router's runtime and its health loop, with no routes.
    pub fn start() -> Result<Self, InferenceError> {
        Self::start_with(None)
    }

    /// The same, resolving backend names with `dns` (the gateway's egress
    /// guard). The clients follow no redirect and use no proxy from the
    /// environment: either could lead past the resolver's checks.
    pub fn start_with(dns: Option<Resolver>) -> Result<Self, InferenceError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lattice-inference")
            .enable_all()
            .build()
            .map_err(|e| InferenceError::Runtime(e.to_string()))?;
        let builder = || {
            let b = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none());
            match &dns {
                Some(dns) => b.dns_resolver2(dns.clone()),
                None => b,
            }
        };
        let table: Arc<ArcSwap<Table>> = Arc::default();
        // Requests go on their backend's own connections (`upstream`);
        // reqwest serves the health checks, on the router's runtime.
        let health_client = builder()
            .build()
            .map_err(|e| InferenceError::Runtime(e.to_string()))?;
        runtime.spawn(health_loop(table.clone(), health_client));
        Ok(Self {
            table,
            dns,
            runtime: Some(runtime),
            turn: AtomicU64::new(0),
        })
    }

    /// Replaces the route table. Backends whose spec is unchanged keep their
    /// live state.
    pub fn configure(
        &self,
        backends: &[BackendSpec],
        routes: &[ModelRoute],
    ) -> Result<(), InferenceError> {
        let old = self.table.load();
        let table = build_table(Some(&old), backends, routes, self.dns.as_ref())?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// The route a model name or alias names.
    pub fn resolve(&self, model: &str) -> Option<Arc<Resolved>> {
        self.table.load().by_name.get(model).cloned()
    }

    /// Every route, in configuration order.
    pub fn routes(&self) -> Vec<Arc<Resolved>> {
        self.table.load().routes.clone()
    }

    /// Every backend.
    pub fn backends(&self) -> Vec<Arc<BackendState>> {
        self.table.load().backends.clone()
    }

    /// Picks the next backend to try among `candidates` (already allowed by
    /// policy), skipping the indexes in `tried`.
    pub fn choose(
        &self,
        strategy: Strategy,
        candidates: &[Arc<BackendState>],
        tried: &[usize],
    ) -> Option<usize> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        choose(strategy, candidates, tried, turn)
    }

    /// One attempt on one backend, on the caller's task: resolves when the
    /// response head arrived (a success status) and fails when the backend
    /// cannot be reached, does not answer in time, or answers with an error
    /// status (the body of which is kept). Faults are recorded on the backend
    /// (ejection); successes feed its latency EWMA. Dropping the future or
    /// the response closes the connection: the backend sees the cancel.
    pub async fn send(
        &self,
        backend: &Arc<BackendState>,
        endpoint: Endpoint,
        body: Bytes,
        headers: Vec<(&'static str, String)>,
    ) -> Result<UpstreamResponse, InferenceError> {
        let b = backend.clone();
        let Some(upstream) = b.upstream.clone() else {
            return Err(fault(
                &b,
                "no connection settings (not from a route table)".into(),
            ));
        };
        let mut headers = headers;
        if let Some(key) = &b.spec.api_key {
            headers.push(("authorization", format!("Bearer {key}")));
        }
        b.start_request();
        let in_flight = InFlight(b.clone());
        let timeout = b.spec.timeout;
        let started = Instant::now();
        let sent = upstream.request(endpoint.path(), headers, body);
        let result = match tokio::time::timeout(timeout, sent).await {
            Err(_) => Err(timed_out(&b)),
            Ok(Err(e)) => Err(fault(&b, e)),
            Ok(Ok(r)) => Ok(r),
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                b.record_failure();
                return Err(e);
            }
        };
        let status = response.status;
        if !(200..300).contains(&status) {
            let mut kept = Vec::new();
            while let Ok(Ok(Some(c))) = tokio::time::timeout(timeout, response.chunk()).await {
                kept.extend_from_slice(&c[..c.len().min(MAX_ERROR_BODY - kept.len())]);
                if kept.len() >= MAX_ERROR_BODY {
                    break;
                }
            }
            let e = InferenceError::Status {
                backend: b.spec.name.clone(),
                status,
                body: Bytes::from(kept),
            };
            if e.is_backend_fault() {
                b.record_failure();
            }
            return Err(e);
        }
        b.record_success(started.elapsed());
        let content_type = response
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        Ok(UpstreamResponse {
            status,
            content_type,
            backend: b,
            response,
            _in_flight: in_flight,
        })
    }
}

fn fault(b: &BackendState, message: String) -> InferenceError {
    InferenceError::Backend {
        backend: b.spec.name.clone(),
        message,
    }
}

fn timed_out(b: &BackendState) -> InferenceError {
    InferenceError::Timeout {
        backend: b.spec.name.clone(),
        timeout_ms: b.spec.timeout.as_millis() as u64,
    }
}

async fn health_loop(table: Arc<ArcSwap<Table>>, client: reqwest::Client) {
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let current = table.load_full();
        due.retain(|name, _| current.backends.iter().any(|b| &b.spec.name == name));
        for b in &current.backends {
            if let Some(u) = &b.upstream {
                u.prune();
            }
            if due.get(&b.spec.name).is_some_and(|t| *t > now) {
                continue;
            }
            due.insert(b.spec.name.clone(), now + b.spec.health_interval);
            tokio::spawn(check(b.clone(), client.clone()));
        }
    }
}

async fn check(b: Arc<BackendState>, client: reqwest::Client) {
    let limit = b
        .spec
        .health_interval
        .clamp(Duration::from_millis(200), Duration::from_secs(5));
    let get = |path: &str| {
        let mut r = b
            .client
            .as_ref()
            .unwrap_or(&client)
            .get(format!("{}{path}", b.spec.url))
            .timeout(limit);
        if let Some(key) = &b.spec.api_key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    let ok = matches!(get(b.spec.kind.health_path()).await, Ok(r) if r.status().is_success());
    b.set_health(ok);
    if ok && b.spec.kind.has_metrics() {
        if let Ok(r) = get("/metrics").await {
            if let Ok(text) = r.text().await {
                if let Some(load) = parse_vllm_load(&text) {
                    b.set_reported_load(load);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    fn spec(name: &str) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            kind: BackendKind::Vllm,
            url: format!("http://127.0.0.1:1/{name}"),
            location: "on_prem".into(),
            weight: 1,
            api_key: None,
            timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            pin: None,
        }
    }

    fn route(name: &str, aliases: &[&str], backends: &[&str]) -> ModelRoute {
        ModelRoute {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            backends: backends.iter().map(|s| s.to_string()).collect(),
            strategy: Strategy::default(),
            upstream_model: None,
            labels: vec![],
        }
    }

    #[test]
    fn tables_are_validated() {
        let b = [spec("a"), spec("b")];
        assert!(validate(&b, &[route("m", &["alias"], &["a", "b"])]).is_ok());
        let err = validate(&b, &[route("m", &[], &["c"])]).unwrap_err();
        assert!(err.to_string().contains("backend `c`"), "{err}");
        let err = validate(&b, &[route("m", &[], &["a"]), route("n", &["m"], &["b"])]).unwrap_err();
        assert!(err.to_string().contains("`m` is used twice"), "{err}");
        assert!(validate(&[spec("a"), spec("a")], &[]).is_err());
        assert!(validate(&b, &[route("m", &[], &[])]).is_err());
    }

    #[test]
    fn a_reload_keeps_the_state_of_unchanged_backends() {
        let router = Router::start().unwrap();
        router
            .configure(&[spec("a"), spec("b")], &[route("m", &["x"], &["a", "b"])])
            .unwrap();
        let a = router.resolve("x").unwrap().backends[0].clone();
        a.record_failure();
        let mut changed = spec("b");
        changed.weight = 5;
        router
            .configure(&[spec("a"), changed], &[route("m", &[], &["a", "b"])])
            .unwrap();
        let r = router.resolve("m").unwrap();
        assert!(Arc::ptr_eq(&r.backends[0], &a));
        assert!(r.backends[0].ejected());
        assert_eq!(r.backends[1].spec.weight, 5);
        assert!(router.resolve("x").is_none());
    }
}
