//! The registry as the gateway's admin API reaches it: `RegistryService`
//! (defined by the gateway, which cannot depend on this crate) over
//! `install`. Each call reads the gateway's config afresh. Over the API
//! only trusted entries install, and a server's package runs the way its
//! registry runs it: a network caller never chooses a command.
//!
//! Must never: install an untrusted entry or take a command from a request.

use lattice_gateway::runtime::{RegistryAnswer, RegistryService};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

use crate::install::{self, Gateway, Options};
use crate::{sign, Kind, RegistryError};

/// The registry service of a running gateway.
#[derive(Debug, Default, Clone)]
pub struct Service;

fn status(e: &RegistryError) -> u16 {
    match e {
        RegistryError::NotFound(_) | RegistryError::NotInstalled(_) => 404,
        RegistryError::Gateway(_) => 409,
        RegistryError::Io { .. } | RegistryError::Remote { .. } => 500,
        _ => 422,
    }
}

fn fail(e: RegistryError) -> (u16, String) {
    (status(&e), e.to_string())
}

fn split(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((n, v)) if !v.is_empty() => (n, Some(v)),
        _ => (name, None),
    }
}

fn options(request: &Value, by: &str) -> Result<Options, (u16, String)> {
    let strings = |v: &Value| -> Result<Vec<String>, (u16, String)> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or((400, "argument values are strings".to_string()))
                })
                .collect(),
            _ => Err((400, "argument values are strings".into())),
        }
    };
    let mut args = BTreeMap::new();
    for (k, v) in request["args"].as_object().into_iter().flatten() {
        args.insert(k.clone(), strings(v)?);
    }
    let mut env = BTreeMap::new();
    for (k, v) in request["env"].as_object().into_iter().flatten() {
        let var = v
            .as_str()
            .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
            .ok_or((
                400,
                format!("env `{k}`: the name of one of the gateway's environment variables, never a value"),
            ))?;
        env.insert(k.clone(), var.to_string());
    }
    Ok(Options {
        server_name: request["as"].as_str().map(str::to_string),
        args,
        env,
        by: by.to_string(),
        ..Options::default()
    })
}

fn installed_version(gw: &Gateway, name: &str) -> Option<String> {
    gw.installed()
        .ok()?
        .into_iter()
        .find(|i| i.name == name)
        .map(|i| i.version)
}

impl RegistryService for Service {
    fn catalog(&self, config: &Path, search: &str, kind: Option<&str>) -> RegistryAnswer {
        let gw = Gateway::open(config).map_err(fail)?;
        let kind = match kind {
            None => None,
            Some(k) => Some(Kind::parse(k).ok_or((
                400,
                format!("no kind `{k}`: server, policy-pack, model-preset or template"),
            ))?),
        };
        let catalog = gw.catalog().map_err(fail)?;
        let trusted = gw.trusted().map_err(fail)?;
        let installed: BTreeMap<String, String> = gw
            .installed()
            .map_err(fail)?
            .into_iter()
            .map(|i| (i.name, i.version))
            .collect();
        let entries: Vec<Value> = catalog
            .search(kind, search)
            .into_iter()
            .map(|e| {
                let t = sign::verify(e, &trusted);
                json!({
                    "kind": e.kind.as_str(), "name": e.name, "version": e.version,
                    "title": e.title(), "description": e.description,
                    "trust": t.describe(), "trusted": t.is_trusted(),
                    "installed": installed.get(&e.name),
                })
            })
            .collect();
        Ok(json!({"entries": entries}))
    }

    fn entry(&self, config: &Path, name: &str, version: Option<&str>) -> RegistryAnswer {
        let gw = Gateway::open(config).map_err(fail)?;
        let catalog = gw.catalog().map_err(fail)?;
        let entry = catalog.find(name, version).map_err(fail)?;
        let trust = sign::verify(entry, &gw.trusted().map_err(fail)?);
        let opts = Options::default();
        let preview = match install::plan(&gw, entry, &opts) {
            Ok(plan) => match install::check(&gw, &plan, &opts) {
                Ok(()) => json!({"diff": plan.diff(&gw), "notes": plan.notes, "env": plan.env}),
                Err(e) => json!({"diff": plan.diff(&gw), "refused": e.to_string()}),
            },
            Err(e) => json!({"refused": e.to_string()}),
        };
        Ok(json!({
            "kind": entry.kind.as_str(), "name": entry.name, "version": entry.version,
            "trust": trust.describe(), "trusted": trust.is_trusted(),
            "installed": installed_version(&gw, &entry.name),
            "versions": catalog.versions(&entry.name).iter().map(|e| e.version.clone()).collect::<Vec<_>>(),
            "entry": entry.doc,
            "install": preview,
        }))
    }

    fn installed(&self, config: &Path) -> RegistryAnswer {
        let gw = Gateway::open(config).map_err(fail)?;
        let list: Vec<Value> = gw
            .installed()
            .map_err(fail)?
            .into_iter()
            .map(|i| {
                json!({
                    "kind": i.kind, "name": i.name, "version": i.version,
                    "installed_us": i.installed_us, "by": i.record.by,
                    "origin": i.record.origin, "trust": i.record.trust,
                    "server": i.record.server,
                    "files": i.record.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({"installed": list}))
    }

    fn install(&self, config: &Path, request: &Value, by: &str) -> RegistryAnswer {
        let gw = Gateway::open(config).map_err(fail)?;
        let (name, mut version) = split(request["name"].as_str().unwrap_or(""));
        if let Some(v) = request["version"].as_str() {
            version = Some(v);
        }
        let opts = options(request, by)?;
        let catalog = gw.catalog().map_err(fail)?;
        let entry = catalog.find(name, version).map_err(fail)?;
        if entry.kind == Kind::Template {
            return Err((
                422,
                format!("{}: a template makes a new gateway directory: use `lattice registry install {} --into DIR` on the host", entry.id(), entry.name),
            ));
        }
        let plan = install::install(&gw, entry, &opts).map_err(fail)?;
        Ok(json!({
            "installed": entry.id(), "trust": plan.trust.describe(),
            "files": plan.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
            "notes": plan.notes,
        }))
    }

    fn uninstall(&self, config: &Path, name: &str, by: &str) -> RegistryAnswer {
        let gw = Gateway::open(config).map_err(fail)?;
        let removal = install::uninstall(&gw, name, by).map_err(fail)?;
        Ok(json!({
            "uninstalled": format!("{}@{}", removal.installed.name, removal.installed.version),
            "files": removal.files.iter().map(|(p, _, _, how)| json!({"path": p.display().to_string(), "restored": how})).collect::<Vec<_>>(),
        }))
    }
}
