//! The discovery task (`[discovery]`): finds workers — announced over mDNS
//! (`_lattice._tcp`, the `mdns-sd` crate) or listed as `peers` — challenges
//! each to prove membership of the cluster (`lattice_inference_router::join`:
//! a fresh nonce, an HMAC under the cluster secret binding the certificate
//! the TLS connection showed), and admits the ones that prove it as
//! members (`discovered.rs`), pinned to that certificate. A member leaves
//! when it withdraws its announcement, or when its health checks (the
//! router's, over the pinned connection) have failed for `leave_after`.
//! Every join, leave and refusal is logged and audited as a gateway change
//! (`cluster.worker.joined|left|refused`); a refused worker is tried again
//! after a while, and its refusal audited again only if the reason changed.
//!
//! Must never: route to a worker before its proof verified, audit the same
//! refusal on every probe, or block the request path (it runs on a thread
//! of its own).

use lattice_inference_router::join::{self, JoinAnswer, JoinError, JoinRequest};
use lattice_inference_router::pin::Observe;
use mdns_sd::{ServiceDaemon, ServiceEvent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::DiscoveryConfig;
use crate::discovered::Member;
use crate::runtime::{Runtime, Shared};
use crate::GatewayError;

/// Somewhere a worker may be.
#[derive(Debug, Clone)]
struct Candidate {
    /// The mDNS instance's full name, or the peer's URL.
    key: String,
    url: String,
    /// What its mDNS record said (a peer says nothing before the join).
    fingerprint: Option<String>,
    cluster: Option<String>,
    via: &'static str,
}

struct Joined {
    member: Arc<Member>,
    key: String,
    failing_since: Option<Instant>,
}

/// How long a refused (or stale, or duplicate) candidate is left alone.
const HOLD: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Tracker {
    members: Vec<Joined>,
    announced: HashMap<String, Candidate>,
    /// Candidate key → the reason it was refused, and when to try again.
    refused: HashMap<String, (String, Instant)>,
    changed: bool,
}

/// Starts the task when `[discovery]` is configured (it is fixed at start).
pub fn spawn(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<Option<std::thread::JoinHandle<()>>, GatewayError> {
    let Some(d) = shared.startup.discovery.clone() else {
        return Ok(None);
    };
    let handle = std::thread::Builder::new()
        .name("lattice-discovery".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "discovery cannot start; no worker will join");
                    return;
                }
            };
            rt.block_on(run(shared, d, stop));
        })
        .map_err(|e| GatewayError::Server(e.to_string()))?;
    Ok(Some(handle))
}

fn browse(d: &DiscoveryConfig) -> Option<(ServiceDaemon, mdns_sd::Receiver<ServiceEvent>)> {
    if !d.mdns {
        return None;
    }
    let started = ServiceDaemon::new().and_then(|daemon| {
        let rx = daemon.browse(join::SERVICE_TYPE)?;
        Ok((daemon, rx))
    });
    match started {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "mDNS browsing failed: only [discovery] peers can join");
            None
        }
    }
}

async fn run(shared: Arc<Shared>, d: DiscoveryConfig, stop: Arc<AtomicBool>) {
    let mdns = browse(&d);
    tracing::info!(
        cluster = %d.secret.cluster_id(),
        mdns = mdns.is_some(),
        peers = d.peers.len(),
        "discovery: waiting for workers of this cluster"
    );
    let mut t = Tracker::default();
    let mut applied: Option<*const Runtime> = None;
    while !stop.load(Ordering::Acquire) {
        if let Some((_, rx)) = &mdns {
            while let Ok(event) = rx.try_recv() {
                t.on_mdns(&shared, event);
            }
        }
        let candidates: Vec<Candidate> = t
            .announced
            .values()
            .cloned()
            .chain(d.peers.iter().map(|p| Candidate {
                key: p.clone(),
                url: p.clone(),
                fingerprint: None,
                cluster: None,
                via: "peer",
            }))
            .collect();
        let attempts = candidates
            .into_iter()
            .filter(|c| t.should_try(c))
            .map(|c| async {
                let result = attempt(&d, &c).await;
                (c, result)
            });
        for (c, result) in futures_util::future::join_all(attempts).await {
            t.on_attempt(&shared, c, result);
        }
        t.check_health(&shared, &d);
        let runtime = shared.runtime.load_full();
        let now_ptr = Arc::as_ptr(&runtime);
        if t.changed || applied != Some(now_ptr) {
            shared
                .discovered
                .set(t.members.iter().map(|j| j.member.clone()).collect());
            match crate::discovered::configure(
                &shared.inference,
                &runtime.config,
                &shared.discovered,
            ) {
                Ok(skipped) if t.changed && !skipped.is_empty() => tracing::warn!(
                    models = %skipped.join(", "),
                    "discovered workers announce models the config already routes: the config's routes stay as they are"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "discovered workers could not be routed"),
            }
            applied = Some(now_ptr);
            t.changed = false;
        }
        sleep_unless_stopped(d.interval, &stop).await;
    }
    if let Some((daemon, _)) = mdns {
        let _ = daemon.shutdown();
    }
}

async fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Acquire) {
        let now = left.min(step);
        tokio::time::sleep(now).await;
        left -= now;
    }
}

/// Why a join attempt failed: the worker is not (yet) reachable — tried
/// again next round, not audited — or it was refused.
enum Failure {
    Unreachable(String),
    Refused(String),
    /// The address answers with a certificate other than its mDNS record
    /// names: the record is stale (not a refusal: nothing is audited).
    Stale,
}

async fn attempt(d: &DiscoveryConfig, c: &Candidate) -> Result<join::Announcement, Failure> {
    if let Some(cluster) = &c.cluster {
        if *cluster != d.secret.cluster_id() {
            return Err(Failure::Refused(
                JoinError::OtherCluster(cluster.clone()).to_string(),
            ));
        }
    }
    let timeout = d.interval.max(Duration::from_secs(2));
    let observe = Observe::new(timeout).map_err(|e| Failure::Unreachable(e.to_string()))?;
    let nonce = join::nonce();
    let sent = observe
        .client
        .post(format!("{}{}", c.url, join::JOIN_PATH))
        .json(&JoinRequest {
            nonce: nonce.clone(),
        })
        .send()
        .await;
    let response = sent.map_err(|e| Failure::Unreachable(describe(&e)))?;
    let Some(seen) = observe.seen() else {
        return Err(Failure::Refused(JoinError::NoCertificate.to_string()));
    };
    if !response.status().is_success() {
        return Err(Failure::Refused(format!(
            "the worker answered the join challenge with {}",
            response.status()
        )));
    }
    let answer: JoinAnswer = response
        .json()
        .await
        .map_err(|e| Failure::Refused(JoinError::Malformed(e.to_string()).to_string()))?;
    let announcement = d
        .secret
        .check(&nonce, &seen, &answer)
        .map_err(|e| Failure::Refused(e.to_string()))?;
    if c.fingerprint.as_ref().is_some_and(|fp| *fp != seen) {
        // An mDNS record outlives a worker killed without a goodbye; a new
        // one at the same address answers for itself under its own record.
        return Err(Failure::Stale);
    }
    Ok(announcement)
}

fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

impl Tracker {
    fn on_mdns(&mut self, shared: &Shared, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceResolved(info) => {
                let mut addrs: Vec<std::net::IpAddr> = info
                    .get_addresses()
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .collect();
                // IPv4 first, then the lowest address: a stable choice.
                addrs.sort_by_key(|a| (a.is_ipv6(), *a));
                let Some(ip) = addrs.first() else {
                    return;
                };
                let host = match ip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                };
                let txt = |k: &str| info.get_property_val_str(k).map(str::to_string);
                let candidate = Candidate {
                    key: info.fullname.clone(),
                    url: format!("https://{host}:{}", info.get_port()),
                    fingerprint: txt("fp"),
                    cluster: txt("cluster"),
                    via: "mdns",
                };
                if let Some(old) = self.announced.get(&info.fullname) {
                    if old.url != candidate.url || old.fingerprint != candidate.fingerprint {
                        self.refused.remove(&info.fullname);
                    }
                }
                self.announced.insert(info.fullname.clone(), candidate);
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                self.announced.remove(&fullname);
                self.refused.remove(&fullname);
                let gone: Vec<usize> = (0..self.members.len())
                    .filter(|&i| self.members[i].key == fullname)
                    .collect();
                for i in gone.into_iter().rev() {
                    let j = self.members.remove(i);
                    self.leave(shared, &j.member, "it withdrew its mDNS announcement");
                }
            }
            _ => {}
        }
    }

    fn should_try(&self, c: &Candidate) -> bool {
        if self.members.iter().any(|j| j.key == c.key) {
            return false;
        }
        match self.refused.get(&c.key) {
            Some((_, retry_at)) => Instant::now() >= *retry_at,
            None => true,
        }
    }

    fn on_attempt(
        &mut self,
        shared: &Shared,
        c: Candidate,
        result: Result<join::Announcement, Failure>,
    ) {
        match result {
            Ok(a) => {
                // The same worker found twice (mDNS and a peer entry): one
                // member; the other way to it is left alone for a while.
                if self
                    .members
                    .iter()
                    .any(|j| j.member.announcement.fingerprint == a.fingerprint)
                {
                    self.hold(c.key, "already a member".into());
                    return;
                }
                self.refused.remove(&c.key);
                let member = Arc::new(Member::new(a, c.url.clone(), c.via));
                let m = &member.announcement;
                let reason = format!(
                    "joined: `{}` at {} via {} serving {} ({}, capacity {}, location {}{}), certificate {}",
                    m.name,
                    member.url,
                    member.via,
                    m.models.join(", "),
                    m.device,
                    m.capacity,
                    m.location,
                    if m.labels.is_empty() {
                        String::new()
                    } else {
                        format!(", labels {}", m.labels.join(", "))
                    },
                    m.fingerprint
                );
                tracing::info!(backend = %member.backend, "discovery: {reason}");
                crate::change_audit::record(
                    &shared.audit,
                    "cluster.worker.joined",
                    &member.backend,
                    "allow",
                    &reason,
                );
                self.members.push(Joined {
                    member,
                    key: c.key,
                    failing_since: None,
                });
                self.changed = true;
            }
            Err(Failure::Unreachable(why)) => {
                tracing::debug!(url = %c.url, %why, "discovery: worker not reachable yet");
            }
            Err(Failure::Stale) => {
                tracing::debug!(url = %c.url, "discovery: a stale mDNS record (another certificate answers there)");
                self.hold(c.key, "stale".into());
            }
            Err(Failure::Refused(why)) => {
                let again = self.refused.get(&c.key).is_some_and(|(old, _)| *old == why);
                self.hold(c.key.clone(), why.clone());
                if again {
                    return;
                }
                let reason = format!("refused {} (found via {}): {why}", c.url, c.via);
                tracing::warn!("discovery: {reason}; it receives no traffic");
                crate::change_audit::record(
                    &shared.audit,
                    "cluster.worker.refused",
                    &c.url,
                    "deny",
                    &reason,
                );
            }
        }
    }

    /// Leaves a candidate alone for `HOLD`, remembering why.
    fn hold(&mut self, key: String, why: String) {
        self.refused.insert(key, (why, Instant::now() + HOLD));
    }

    fn check_health(&mut self, shared: &Shared, d: &DiscoveryConfig) {
        let backends = shared.inference.backends();
        let now = Instant::now();
        let mut leaving = Vec::new();
        for (i, j) in self.members.iter_mut().enumerate() {
            let healthy = backends
                .iter()
                .find(|b| b.name() == j.member.backend)
                .is_none_or(|b| b.healthy());
            if healthy {
                j.failing_since = None;
                continue;
            }
            let since = *j.failing_since.get_or_insert(now);
            if now.duration_since(since) >= d.leave_after {
                leaving.push(i);
            }
        }
        for i in leaving.into_iter().rev() {
            let j = self.members.remove(i);
            let why = format!(
                "its health checks failed for {} ms",
                d.leave_after.as_millis()
            );
            self.leave(shared, &j.member, &why);
        }
    }

    fn leave(&mut self, shared: &Shared, m: &Member, why: &str) {
        let reason = format!("left: `{}` at {}: {why}", m.announcement.name, m.url);
        tracing::info!(backend = %m.backend, "discovery: {reason}");
        crate::change_audit::record(
            &shared.audit,
            "cluster.worker.left",
            &m.backend,
            "allow",
            &reason,
        );
        self.changed = true;
    }
}
