//! The gateway's MCP upstreams: started at boot on a runtime of their own
//! (their pipes are driven there, whatever thread a request runs on) and
//! supervised — a server that exits or fails to start is restarted with
//! exponential backoff, and meanwhile the others keep serving. Tools are
//! indexed by federated name with compiled argument schemas and definition
//! hashes; a restart re-lists its server's tools. Supervision itself
//! (launch, restart, re-list, retire, pin approvals) is `supervise`.
//!
//! Must never: expose a quarantined tool, or block a request on a
//! server's restart.

use arc_swap::{ArcSwap, ArcSwapOption};
use lattice_mcp::tools::ArgumentSchema;
use lattice_mcp::upstream::Upstream;
use lattice_mcp::McpError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

use lattice_audit::{AuditEvent, AuditHandle, Phase};

use crate::config::McpServerConfig;
use crate::state::pins::{PinCache, Seen};
use crate::state::StateStore;
use crate::GatewayError;

mod supervise;
use supervise::{entries, launch, publish, supervise, watch_approvals, watch_tools};

/// One federated tool.
pub struct ToolEntry {
    pub server: String,
    /// The upstream's own name for it.
    pub tool: String,
    /// The definition as the agent sees it (federated name).
    pub definition: Value,
    pub schema: Option<Arc<ArgumentSchema>>,
    /// The compiled `outputSchema`, when the tool declares one.
    pub output_schema: Option<Arc<ArgumentSchema>>,
    pub hash: String,
    pub server_labels: Vec<String>,
}

type ToolMap = BTreeMap<String, Arc<ToolEntry>>;

struct Server {
    config: McpServerConfig,
    current: ArcSwapOption<Upstream>,
    /// Set when the server is removed: its supervisor stops and kills it.
    stopped: std::sync::atomic::AtomicBool,
    /// Resource URIs the gateway subscribed to upstream, with how many
    /// sessions want each (subscribed again after a restart).
    subscriptions: tokio::sync::Mutex<BTreeMap<String, usize>>,
}

/// What servers announce, passed on to the sessions' GET streams: list
/// changes (counted) and updated resources (`(server, uri)`).
#[derive(Clone)]
struct Announce {
    catalog: tokio::sync::watch::Sender<(u64, u64)>,
    updates: tokio::sync::broadcast::Sender<(String, String)>,
}

impl Server {
    fn new(config: McpServerConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            current: ArcSwapOption::empty(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            subscriptions: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Where pins live and how new definitions are treated (and the resolver
/// the servers' HTTP clients use: the egress guard).
#[derive(Clone)]
pub struct Pinning {
    pub data_dir: std::path::PathBuf,
    pub dns: Option<lattice_mcp::http::Dns>,
    /// The program that runs stdio servers under `stdio-guard` (the
    /// `lattice` binary itself), so none outlives the gateway.
    pub stdio_guard: Option<std::path::PathBuf>,
    pub auto_approve: bool,
    pub audit: AuditHandle,
    pub cache: Arc<PinCache>,
}

impl Pinning {
    /// Records each listed definition against its pin; audits first pins
    /// and quarantines.
    fn observe(&self, entries: &[(String, Arc<ToolEntry>)]) {
        let store = match StateStore::open(&self.data_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read tool pins; new definitions stay quarantined");
                return;
            }
        };
        for (name, entry) in entries {
            let definition = lattice_mcp::tools::canonical_json(&entry.definition);
            match store.observe_tool(
                &entry.server,
                &entry.tool,
                &entry.hash,
                &definition,
                self.auto_approve,
            ) {
                Ok(Seen::Approved) => {}
                Ok(Seen::FirstApproved) => self.event(
                    "mcp.tool_pinned",
                    name,
                    "allow",
                    &format!("first definition pinned: {}", entry.hash),
                ),
                Ok(Seen::Quarantined) => {
                    tracing::warn!(tool = %name, hash = %entry.hash, "tool definition changed upstream: quarantined until approved (lattice mcp approve)");
                    self.event(
                        "mcp.tool_quarantined",
                        name,
                        "deny",
                        &format!("definition {} is not the approved one", entry.hash),
                    );
                }
                Err(e) => tracing::error!(tool = %name, error = %e, "cannot record the tool's pin"),
            }
        }
        if let Err(e) = self.cache.refresh(&store) {
            tracing::error!(error = %e, "cannot refresh tool pins");
        }
    }

    fn event(&self, kind: &str, target: &str, decision: &str, reason: &str) {
        let mut e = AuditEvent::new(Phase::Decision, &uuid::Uuid::now_v7().to_string(), kind);
        e.target = target.to_string();
        e.decision = decision.to_string();
        e.reason = reason.to_string();
        e.auth_method = "none".into();
        if let Err(err) = self.audit.record(e) {
            tracing::error!(error = %err, kind, target, "could not audit a tool pin change");
        }
    }
}

/// The upstreams and their tools.
pub struct McpHub {
    runtime: tokio::runtime::Runtime,
    servers: ArcSwap<BTreeMap<String, Arc<Server>>>,
    tools: Arc<ArcSwap<ToolMap>>,
    pins: Arc<PinCache>,
    pinning: Pinning,
    /// A digest of the approved tools (names and definitions), updated
    /// when they change.
    changes: tokio::sync::watch::Sender<u64>,
    /// (prompt lists, resource lists) changes servers announced, counted,
    /// and the resources they said were updated.
    announce: Announce,
}

impl McpHub {
    /// Starts every configured server (waiting for each once) and their
    /// supervisors.
    pub fn start(configs: &[McpServerConfig], pinning: Pinning) -> Result<Self, GatewayError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mcp-upstreams")
            .enable_all()
            .build()
            .map_err(|e| GatewayError::Server(e.to_string()))?;
        let tools: Arc<ArcSwap<ToolMap>> = Arc::default();
        let (catalog, _) = tokio::sync::watch::channel((0u64, 0u64));
        let (updates, _) = tokio::sync::broadcast::channel(1024);
        let announce = Announce { catalog, updates };
        let mut servers = BTreeMap::new();
        for config in configs {
            let server = Server::new(config.clone());
            match runtime.block_on(launch(config, &pinning)) {
                Ok((up, listed)) => {
                    let new = entries(config, listed);
                    pinning.observe(&new);
                    publish(&tools, &config.name, new);
                    server.current.store(Some(Arc::new(up)));
                    tracing::info!(server = %config.name, "MCP server ready");
                }
                Err(e) => {
                    tracing::error!(server = %config.name, error = %e, "MCP server unavailable; retrying, the others serve meanwhile");
                }
            }
            runtime.spawn(supervise(
                server.clone(),
                tools.clone(),
                pinning.clone(),
                announce.clone(),
            ));
            servers.insert(config.name.clone(), server);
        }
        runtime.spawn(watch_approvals(pinning.clone()));
        let (changes, _) = tokio::sync::watch::channel(0u64);
        runtime.spawn(watch_tools(
            tools.clone(),
            pinning.cache.clone(),
            changes.clone(),
        ));
        Ok(Self {
            runtime,
            servers: ArcSwap::from_pointee(servers),
            tools,
            pins: pinning.cache.clone(),
            pinning,
            changes,
            announce,
        })
    }

    /// Makes the running servers match `configs`: new ones are started (in
    /// the background, like a restart), removed ones stopped and their tools
    /// withdrawn, changed ones replaced. Unchanged ones are not touched.
    pub fn sync(&self, configs: &[McpServerConfig]) {
        let current = self.servers.load_full();
        let mut next = BTreeMap::new();
        for config in configs {
            match current.get(&config.name) {
                // The operator's tool overrides are read per call from the
                // runtime: changing them restarts nothing.
                Some(s) if s.config.same_process(config) => {
                    next.insert(config.name.clone(), s.clone());
                }
                _ => {
                    let server = Server::new(config.clone());
                    self.runtime.spawn(supervise(
                        server.clone(),
                        self.tools.clone(),
                        self.pinning.clone(),
                        self.announce.clone(),
                    ));
                    tracing::info!(server = %config.name, "MCP server registered");
                    next.insert(config.name.clone(), server);
                }
            }
        }
        for (name, server) in current.iter() {
            let kept = next.get(name).is_some_and(|s| Arc::ptr_eq(s, server));
            if !kept {
                server
                    .stopped
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        self.servers.store(Arc::new(next));
    }

    /// Counts of prompt-list and resource-list changes servers announced.
    pub fn subscribe_catalog(&self) -> tokio::sync::watch::Receiver<(u64, u64)> {
        self.announce.catalog.subscribe()
    }

    /// Sends a server the answer to a request it made.
    pub async fn respond(&self, server: &str, response: Value) -> Result<(), McpError> {
        let up = self.running(server)?;
        self.runtime
            .spawn(async move { up.respond(&response).await })
            .await
            .map_err(|e| McpError::Upstream {
                server: server.to_string(),
                message: e.to_string(),
            })?
    }

    /// Resources servers said were updated: `(server, uri)`.
    pub fn subscribe_updates(&self) -> tokio::sync::broadcast::Receiver<(String, String)> {
        self.announce.updates.subscribe()
    }

    /// One more session wants `uri`'s updates: the first subscribes
    /// upstream. Errors when the server is down or offers no subscriptions.
    pub async fn resource_subscribe(&self, server: &str, uri: &str) -> Result<(), McpError> {
        let up = self.running(server)?;
        let refused = |message: &str| McpError::Upstream {
            server: server.to_string(),
            message: message.to_string(),
        };
        if up.capabilities()["resources"]["subscribe"] != json!(true) {
            return Err(refused("the server does not offer resource subscriptions"));
        }
        let Some(srv) = self.servers.load().get(server).cloned() else {
            return Err(refused("not registered"));
        };
        let mut subs = srv.subscriptions.lock().await;
        if !subs.contains_key(uri) {
            let params = json!({"uri": uri});
            self.runtime
                .spawn(async move { up.request("resources/subscribe", params).await })
                .await
                .map_err(|e| refused(&e.to_string()))??;
        }
        *subs.entry(uri.to_string()).or_insert(0) += 1;
        Ok(())
    }

    /// One session less wants `uri`'s updates: the last unsubscribes
    /// upstream (best effort: a server that is down has forgotten it).
    pub async fn resource_unsubscribe(&self, server: &str, uri: &str) {
        let Some(srv) = self.servers.load().get(server).cloned() else {
            return;
        };
        let mut subs = srv.subscriptions.lock().await;
        let last = match subs.get_mut(uri) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => true,
            None => false,
        };
        if last {
            subs.remove(uri);
            if let Ok(up) = self.running(server) {
                let params = json!({"uri": uri});
                let _ = self
                    .runtime
                    .spawn(async move { up.request("resources/unsubscribe", params).await })
                    .await;
            }
        }
    }

    /// The digest of the approved tools, notified whenever it changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Each server: (name, running, tools published).
    pub fn status(&self) -> Vec<(String, bool, usize)> {
        let tools = self.tools.load();
        self.servers
            .load()
            .values()
            .map(|s| {
                let running = s.current.load().as_ref().is_some_and(|u| u.is_alive());
                let n = tools.values().filter(|t| t.server == s.config.name).count();
                (s.config.name.clone(), running, n)
            })
            .collect()
    }

    /// Whether a tool's current definition is the approved one.
    pub fn visible(&self, entry: &ToolEntry) -> bool {
        self.pins.approved(&entry.server, &entry.tool, &entry.hash)
    }

    /// The federated tools as of now.
    pub fn tools(&self) -> Arc<ToolMap> {
        self.tools.load_full()
    }

    /// Every configured server: (name, operator labels).
    pub fn servers(&self) -> Vec<(String, Vec<String>)> {
        self.servers
            .load()
            .values()
            .map(|s| (s.config.name.clone(), s.config.labels.clone()))
            .collect()
    }

    /// A configured server's operator labels.
    pub fn labels(&self, server: &str) -> Option<Vec<String>> {
        self.servers
            .load()
            .get(server)
            .map(|s| s.config.labels.clone())
    }

    fn running(&self, server: &str) -> Result<Arc<Upstream>, McpError> {
        self.servers
            .load()
            .get(server)
            .and_then(|s| s.current.load_full())
            .ok_or_else(|| McpError::Upstream {
                server: server.to_string(),
                message: "not running (restarting)".into(),
            })
    }

    /// Any request to one server (on the hub's runtime).
    pub async fn request(
        &self,
        server: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        let up = self.running(server)?;
        let method = method.to_string();
        self.runtime
            .spawn(async move { up.request(&method, params).await })
            .await
            .map_err(|e| McpError::Upstream {
                server: server.to_string(),
                message: e.to_string(),
            })?
    }

    /// A paged list (`prompts/list` → `prompts`, ...) from each of `servers`
    /// at once. A server that did not declare `capability` lists nothing; one
    /// that is down or fails is reported as an error, the others still list.
    pub async fn list_each(
        &self,
        servers: &[String],
        method: &'static str,
        key: &'static str,
        capability: &'static str,
    ) -> Vec<(String, Result<Vec<Value>, McpError>)> {
        let mut tasks = Vec::new();
        for server in servers {
            let up = self.running(server);
            let task = self.runtime.spawn(async move {
                let up = up?;
                if up.capabilities().get(capability).is_none() {
                    return Ok(Vec::new());
                }
                up.list_all(method, key).await
            });
            tasks.push((server.clone(), task));
        }
        let mut out = Vec::new();
        for (server, task) in tasks {
            let result = task.await.unwrap_or_else(|e| {
                Err(McpError::Upstream {
                    server: server.clone(),
                    message: e.to_string(),
                })
            });
            out.push((server, result));
        }
        out
    }

    /// Whether a server is up now.
    pub fn is_running(&self, server: &str) -> bool {
        self.running(server).is_ok()
    }

    /// Calls a tool with a progress token; the upstream's progress
    /// notifications for it go to `sink` while the call runs.
    pub async fn call_with_progress(
        &self,
        entry: &ToolEntry,
        arguments: Value,
        token: Option<Value>,
        sink: tokio::sync::mpsc::UnboundedSender<Value>,
    ) -> Result<Value, McpError> {
        let up = self.running(&entry.server)?;
        let tool = entry.tool.clone();
        self.runtime
            .spawn(async move {
                up.call_tool_with_progress(&tool, arguments, token, sink)
                    .await
            })
            .await
            .map_err(|e| McpError::Upstream {
                server: entry.server.clone(),
                message: e.to_string(),
            })?
    }
}
