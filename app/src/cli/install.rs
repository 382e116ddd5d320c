//! `lattice registry install | uninstall | list | update | verify
//! --installed`: entries into a gateway's config and back out
//! (`lattice_registry::install` does the work; this parses the options,
//! asks for what is missing when a person is at the terminal, and prints
//! what changed).
//!
//! Must never: ask for or print a secret's value (it asks for the *name*
//! of the gateway's environment variable that holds it), or apply an
//! update the operator has not seen (`update` shows the diff and stops
//! without `--yes`).

use anyhow::{bail, Context};
use clap::Args;
use lattice_registry::install::{self, Gateway, Options};
use lattice_registry::{sign, Catalog, Entry, Kind};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use super::ConfigArg;

/// Where entries come from, and how one is installed.
#[derive(Args)]
pub struct InstallArgs {
    /// NAME or NAME@VERSION (default: the latest).
    pub name: String,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Another catalog directory (beside the bundled one and the config's
    /// `[registry] catalogs`).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// The MCP server's name in the gateway.
    #[arg(long = "as")]
    pub server_name: Option<String>,
    /// Run the server's package with this program (an installed copy)
    /// instead of npx/uvx/docker.
    #[arg(long)]
    pub command: Option<String>,
    /// Use the server's remote endpoint.
    #[arg(long)]
    pub remote: bool,
    /// NAME=VALUE: a package argument or a preset's variable (repeatable;
    /// repeated for a repeated argument).
    #[arg(long = "arg")]
    pub args: Vec<String>,
    /// NAME[=GATEWAY_VAR]: the gateway environment variable that holds a
    /// variable the server reads (repeatable). Never a value.
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Install an unsigned entry or one signed by a key the config does
    /// not trust for its namespace (recorded as such in the audit trail).
    #[arg(long)]
    pub allow_untrusted: bool,
    /// A template: the new directory its config and files go into.
    #[arg(long)]
    pub into: Option<PathBuf>,
    /// Show what would change and stop.
    #[arg(long)]
    pub dry_run: bool,
}

/// Who runs the command: the login name, or the uid where none is set.
fn by() -> String {
    use std::os::unix::fs::MetadataExt;
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| match std::fs::metadata("/proc/self") {
            Ok(m) => format!("uid {}", m.uid()),
            Err(_) => "unknown".into(),
        });
    format!("cli:{user}")
}

fn split(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((n, v)) if !v.is_empty() => (n, Some(v)),
        _ => (name, None),
    }
}

impl InstallArgs {
    fn options(&self) -> anyhow::Result<Options> {
        let mut args: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in &self.args {
            let (k, v) = a.split_once('=').context("--arg is NAME=VALUE")?;
            args.entry(k.to_string()).or_default().push(v.to_string());
        }
        let mut env = BTreeMap::new();
        for e in &self.env {
            let (k, v) = e.split_once('=').unwrap_or((e, e));
            if k.is_empty() || v.is_empty() || v.contains(char::is_whitespace) {
                bail!("--env is NAME[=GATEWAY_VAR]: the name of an environment variable, never its value");
            }
            env.insert(k.to_string(), v.to_string());
        }
        Ok(Options {
            server_name: self.server_name.clone(),
            command: self.command.clone(),
            remote: self.remote,
            args,
            env,
            allow_untrusted: self.allow_untrusted,
            by: by(),
            ..Options::default()
        })
    }

    fn catalog(&self, gw: Option<&Gateway>) -> anyhow::Result<Catalog> {
        let mut catalog = match gw {
            Some(gw) => gw.catalog()?,
            None => Catalog::bundled()?,
        };
        if let Some(dir) = &self.catalog {
            catalog = catalog.merged(&Catalog::load_dir(dir)?)?;
        }
        Ok(catalog)
    }
}

/// Asks, at a terminal, for the environment variables an entry requires
/// that `--env` did not name: the *name* of the gateway's variable.
fn ask_env(entry: &Entry, opts: &mut Options) -> anyhow::Result<()> {
    if entry.kind != Kind::Server || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let vars = entry.doc["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(entry.doc["remotes"].as_array().into_iter().flatten())
        .flat_map(|p| {
            p["environmentVariables"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(p["headers"].as_array().into_iter().flatten())
        });
    for v in vars {
        let name = v["name"].as_str().unwrap_or("");
        let required = v["isRequired"].as_bool() == Some(true);
        let fixed = v["value"].is_string() && v["isSecret"].as_bool() != Some(true);
        if !required || fixed || opts.env.contains_key(name) {
            continue;
        }
        eprint!(
            "{name} ({}{}): which environment variable of the gateway holds it? [{name}] ",
            v["description"].as_str().unwrap_or("no description"),
            if v["isSecret"].as_bool() == Some(true) {
                ", secret"
            } else {
                ""
            }
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let var = line.trim();
        opts.env.insert(
            name.to_string(),
            if var.is_empty() { name } else { var }.to_string(),
        );
    }
    Ok(())
}

fn print_notes(notes: &[String]) {
    for n in notes {
        eprintln!("  note: {n}");
    }
}

pub fn install(a: InstallArgs) -> anyhow::Result<ExitCode> {
    let (name, version) = split(&a.name);
    let mut opts = a.options()?;
    if let Some(into) = &a.into {
        let catalog = a.catalog(None)?;
        let entry = catalog.find(name, version)?;
        let files = install::template(entry, into, &catalog, &opts)?;
        for f in files {
            println!("wrote {}", f.display());
        }
        eprintln!(
            "{}: start it with `lattice up -c {}`",
            entry.id(),
            into.join("lattice.toml").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let gw = Gateway::open(&a.config.config)?;
    let catalog = a.catalog(Some(&gw))?;
    let entry = catalog.find(name, version)?;
    ask_env(entry, &mut opts)?;
    if a.dry_run {
        let plan = install::plan(&gw, entry, &opts)?;
        install::check(&gw, &plan, &opts)?;
        print!("{}", plan.diff(&gw));
        eprintln!(
            "{}: {} (dry run: nothing changed)",
            entry.id(),
            plan.trust.describe()
        );
        print_notes(&plan.notes);
        return Ok(ExitCode::SUCCESS);
    }
    let plan = install::install(&gw, entry, &opts)?;
    if !plan.trust.is_trusted() {
        eprintln!(
            "WARNING: {} is {}; installed because of --allow-untrusted, and audited as such",
            entry.id(),
            plan.trust.describe()
        );
    }
    for f in &plan.files {
        println!("wrote {}", f.path.display());
    }
    eprintln!(
        "installed {} ({}) into {}",
        entry.id(),
        plan.trust.describe(),
        gw.config_path.display()
    );
    print_notes(&plan.notes);
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(name: &str, config: &ConfigArg, dry_run: bool) -> anyhow::Result<ExitCode> {
    let gw = Gateway::open(&config.config)?;
    if dry_run {
        let removal = install::plan_removal(&gw, name)?;
        print!("{}", removal.diff(&gw));
        eprintln!("{name}: dry run, nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    let removal = install::uninstall(&gw, name, &by())?;
    for (path, _, _, how) in &removal.files {
        let what = match how {
            install::Restored::Exactly => "restored byte for byte",
            install::Restored::InsertionsRemoved => {
                "changed since the install: only the entry's text taken out"
            }
            install::Restored::Deleted => "deleted",
            install::Restored::LeftChanged => {
                "changed since the install: left in place, no longer used"
            }
        };
        println!("{}: {what}", path.display());
    }
    eprintln!(
        "uninstalled {}@{}",
        removal.installed.name, removal.installed.version
    );
    Ok(ExitCode::SUCCESS)
}

pub fn list(config: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let gw = Gateway::open(&config.config)?;
    let installed = gw.installed()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&installed)?);
        return Ok(ExitCode::SUCCESS);
    }
    for i in installed {
        println!(
            "{:<13} {:<50} {:<12} {} (by {}; {})",
            i.kind, i.name, i.version, i.record.origin, i.record.by, i.record.trust
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn update(a: InstallArgs, yes: bool) -> anyhow::Result<ExitCode> {
    let (name, version) = split(&a.name);
    let opts = a.options()?;
    let gw = Gateway::open(&a.config.config)?;
    let catalog = a.catalog(Some(&gw))?;
    let entry = catalog.find(name, version)?;
    let installed = gw
        .installed()?
        .into_iter()
        .find(|i| i.name == name)
        .with_context(|| format!("{name} is not installed (`lattice registry install {name}`)"))?;
    if installed.version == entry.version && installed.record.entry == entry.doc {
        eprintln!("{name} {} is installed and current", entry.version);
        return Ok(ExitCode::SUCCESS);
    }
    let update = install::plan_update(&gw, entry, &opts)
        .map_err(|e| install::refused(&gw, entry, &opts.by, e))?;
    print!("{}", update.diff(&gw));
    eprintln!(
        "{name}: {} → {} ({})",
        installed.version,
        entry.version,
        update.plan.trust.describe()
    );
    if !yes {
        eprintln!("nothing changed: run again with --yes to apply");
        return Ok(ExitCode::SUCCESS);
    }
    install::apply_update(&gw, &update, &opts)?;
    eprintln!("updated {name} to {}", entry.version);
    print_notes(&update.plan.notes);
    Ok(ExitCode::SUCCESS)
}

/// What is installed: each entry's signature under the config's keys now,
/// its text still in the config, and a server's tools as pinned (a
/// quarantined tool is drift from what was published).
pub fn verify_installed(config: &ConfigArg) -> anyhow::Result<ExitCode> {
    let gw = Gateway::open(&config.config)?;
    let trusted = gw.trusted()?;
    let store = lattice_gateway::state::StateStore::open(&gw.config.server.data_dir)?;
    let pins = store.pinned_tools()?;
    let mut failed = 0;
    for i in gw.installed()? {
        let mut problems = Vec::new();
        let trust = match i.entry() {
            Ok(e) => sign::verify(&e, &trusted),
            Err(e) => {
                problems.push(e.to_string());
                sign::Trust::BadSignature {
                    reason: "the installed entry no longer validates".into(),
                }
            }
        };
        if matches!(trust, sign::Trust::BadSignature { .. }) {
            problems.push(trust.describe());
        }
        let config_text = std::fs::read_to_string(&gw.config_path).unwrap_or_default();
        for f in i.record.files.iter().filter(|f| f.path == gw.config_path) {
            if f.inserted.iter().any(|s| !config_text.contains(s.as_str())) {
                problems.push("its block in the config was changed by hand".into());
            }
        }
        if let Some(server) = &i.record.server {
            for p in pins.iter().filter(|p| &p.server == server && p.quarantined) {
                problems.push(format!(
                    "tool `{}` differs from its published definition (quarantined: `lattice mcp pending`)",
                    p.tool
                ));
            }
        }
        let ok = problems.is_empty();
        if !ok {
            failed += 1;
        }
        println!(
            "{} {}@{}: {}{}",
            if ok { "ok  " } else { "FAIL" },
            i.name,
            i.version,
            trust.describe(),
            if ok {
                String::new()
            } else {
                format!("; {}", problems.join("; "))
            }
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
