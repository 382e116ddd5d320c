//! Audit events for changes the gateway applies to itself, whoever made
//! them: every reload (the config file, policies, model routes and MCP
//! servers, including run-time registrations) and every change of the API
//! key store (`lattice keys` writes it directly), and every install and
//! removal by the Lattice Registry (from its journal in the state store). Requests to the admin API
//! are audited as calls too; these events record what the gateway actually
//! applied. A rejected reload is recorded as well: someone tried.
//!
//! Must never: let a change that was applied or rejected go unaudited.

use lattice_audit::{AuditEvent, AuditHandle, Phase};

use std::collections::BTreeSet;

use crate::runtime::Runtime;
use crate::state::ApiKey;

fn diff(what: &str, old: BTreeSet<String>, new: BTreeSet<String>) -> Option<String> {
    let added: Vec<&String> = new.difference(&old).collect();
    let removed: Vec<&String> = old.difference(&new).collect();
    if added.is_empty() && removed.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {added:?}"));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {removed:?}"));
    }
    Some(format!("{what} {}", parts.join(", ")))
}

/// What a reload changed, in words; None when nothing an auditor follows did.
pub fn reload_summary(old: &Runtime, new: &Runtime) -> Option<String> {
    let names = |it: &mut dyn Iterator<Item = String>| it.collect::<BTreeSet<String>>();
    let mut changes = Vec::new();
    if old.policy_digest != new.policy_digest {
        changes.push(format!(
            "policies {} → {}",
            old.policy_digest, new.policy_digest
        ));
    }
    changes.extend(diff(
        "routes",
        names(&mut old.routes.keys().cloned()),
        names(&mut new.routes.keys().cloned()),
    ));
    changes.extend(diff(
        "models",
        names(&mut old.config.llm.models.iter().map(|m| m.name.clone())),
        names(&mut new.config.llm.models.iter().map(|m| m.name.clone())),
    ));
    changes.extend(diff(
        "backends",
        names(&mut old.config.llm.backends.iter().map(|b| b.name.clone())),
        names(&mut new.config.llm.backends.iter().map(|b| b.name.clone())),
    ));
    changes.extend(diff(
        "MCP servers",
        names(&mut old.config.mcp_servers.iter().map(|s| s.name.clone())),
        names(&mut new.config.mcp_servers.iter().map(|s| s.name.clone())),
    ));
    if old.config.llm.limits != new.config.llm.limits {
        changes.push("limits changed".into());
    }
    (!changes.is_empty()).then(|| changes.join("; "))
}

/// Records one change event (best effort: a full queue is logged).
pub fn record(audit: &AuditHandle, kind: &str, target: &str, decision: &str, reason: &str) {
    let mut e = AuditEvent::new(Phase::Decision, &uuid::Uuid::now_v7().to_string(), kind);
    e.target = target.to_string();
    e.decision = decision.to_string();
    e.reason = reason.to_string();
    e.auth_method = "local".into();
    if let Err(err) = audit.record(e) {
        tracing::error!(error = %err, kind, target, "could not audit a change");
    }
}

/// Audits the registry's journal lines not yet audited, and marks them
/// once the events are on stable storage (the watcher's thread: it may
/// wait for the writer).
pub fn registry_journal(audit: &AuditHandle, store: &crate::state::StateStore) {
    let lines = match store.journal_pending() {
        Ok(lines) => lines,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the registry's journal");
            return;
        }
    };
    let mut recorded = Vec::new();
    for j in lines {
        let mut e = AuditEvent::new(Phase::Decision, &uuid::Uuid::now_v7().to_string(), &j.kind);
        e.target = j.target.clone();
        e.principal = j.by.clone();
        e.action = "admin.registry".into();
        e.decision = if j.kind.ends_with(".refused") {
            "deny"
        } else {
            "allow"
        }
        .into();
        e.reason = j.reason.clone();
        e.auth_method = "local".into();
        match audit.record(e) {
            Ok(()) => recorded.push(j.seq),
            // Left unmarked: the next poll tries again.
            Err(err) => {
                tracing::error!(error = %err, target = %j.target, "could not audit a registry change");
                break;
            }
        }
    }
    if recorded.is_empty() {
        return;
    }
    if let Err(err) = audit.flush() {
        tracing::error!(error = %err, "registry changes queued for audit but not confirmed written");
        return;
    }
    for seq in recorded {
        if let Err(err) = store.journal_audited(seq) {
            tracing::error!(error = %err, "cannot mark a registry journal line audited");
        }
    }
}

/// Events for the difference between two views of the active keys.
pub fn key_changes(before: &[ApiKey], after: &[ApiKey]) -> Vec<(&'static str, String, String)> {
    let ids = |keys: &[ApiKey]| keys.iter().map(|k| k.id.clone()).collect::<BTreeSet<_>>();
    let (old, new) = (ids(before), ids(after));
    let mut out = Vec::new();
    for k in after.iter().filter(|k| !old.contains(&k.id)) {
        out.push((
            "admin.keys.created",
            k.id.clone(),
            format!(
                "API key for {} `{}` (tenant `{}`, roles {:?}, labels {:?}) is active",
                crate::state::kind_name(k.kind),
                k.agent,
                k.tenant,
                k.roles,
                k.labels
            ),
        ));
    }
    for k in before.iter().filter(|k| !new.contains(&k.id)) {
        out.push((
            "admin.keys.revoked",
            k.id.clone(),
            format!(
                "API key of {} `{}` (tenant `{}`) is no longer accepted",
                crate::state::kind_name(k.kind),
                k.agent,
                k.tenant
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::policy_digest;
    use lattice_policy::PolicySource;

    fn key(id: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            kind: lattice_policy::PrincipalKind::Agent,
            agent: format!("agent-{id}"),
            tenant: "t".into(),
            roles: vec!["agent".into()],
            labels: vec![],
            created_us: 0,
            revoked_us: None,
        }
    }

    #[test]
    fn key_changes_name_created_and_revoked_keys() {
        let changes = key_changes(&[key("a"), key("b")], &[key("b"), key("c")]);
        let kinds: Vec<(&str, &str)> = changes.iter().map(|(k, t, _)| (*k, t.as_str())).collect();
        assert_eq!(
            kinds,
            vec![("admin.keys.created", "c"), ("admin.keys.revoked", "a")]
        );
        assert!(changes[0].2.contains("agent-c"));
        assert!(key_changes(&[key("a")], &[key("a")]).is_empty());
    }

    #[test]
    fn policy_digests_follow_the_text() {
        let a = [PolicySource::new(
            "p.cedar",
            "permit(principal, action, resource);",
        )];
        let b = [PolicySource::new(
            "p.cedar",
            "forbid(principal, action, resource);",
        )];
        assert_eq!(policy_digest(&a, None), policy_digest(&a, None));
        assert_ne!(policy_digest(&a, None), policy_digest(&b, None));
        assert_eq!(policy_digest(&a, None).len(), 16);
    }
}
