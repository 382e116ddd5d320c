//! `lattice registry`: the catalog of MCP servers, policy packs, model
//! presets and templates (`lattice-registry`) — search and show entries,
//! install them into a gateway and take them out (`install.rs`),
//! verify signatures and packs, make and use publisher keys, fingerprint a
//! server's tools, serve a catalog over the official registry API and sync
//! one from another registry.
//!
//! Must never: print a private key (a key file is written with mode 0600
//! and only its public half is shown), or report an entry as verified
//! when its signature or its pack's checks failed.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lattice_registry::sign::{self, TrustedKey};
use lattice_registry::{Catalog, Entry, Kind, PublisherKey};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Entries whose name, title or description contains TEXT (latest
    /// versions).
    Search {
        #[arg(default_value = "")]
        text: String,
        /// server, policy-pack, model-preset or template.
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        source: Source,
    },
    /// One entry, as published, with what its signature says.
    Show {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Install an entry into a gateway's config (checked as the gateway
    /// loads it first; audited; reversible), or a template into a new
    /// directory (`--into`).
    Install(super::install::InstallArgs),
    /// Take an installed entry back out: the files as they were.
    Uninstall {
        name: String,
        #[command(flatten)]
        config: super::ConfigArg,
        /// Show what would change and stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// What is installed, with versions, origin and trust.
    List {
        #[command(flatten)]
        config: super::ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Replace an installed entry with another version: shows the diff,
    /// applies it with --yes.
    Update {
        #[command(flatten)]
        install: super::install::InstallArgs,
        #[arg(long)]
        yes: bool,
    },
    /// Every entry's signature, and every policy pack's tests and
    /// invariants; exit 1 if one fails. With --installed: what a gateway
    /// has installed (signatures, its blocks, tool drift).
    Verify {
        /// Check what the config's gateway has installed instead.
        #[arg(long)]
        installed: bool,
        #[arg(short, long, default_value = "lattice.toml")]
        config: PathBuf,
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        trust: TrustArgs,
        /// Also fail on entries that are unsigned or signed by a key not
        /// trusted for their namespace.
        #[arg(long)]
        require_trusted: bool,
    },
    /// A new publisher key: the key file (mode 0600) and its public key.
    Keygen {
        #[arg(long)]
        publisher: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an entry file with a publisher key (validated first).
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Where the signed entry goes (default: in place).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start a stdio MCP server, list its tools and print their
    /// fingerprints as an entry's `dev.lattice` `tools`; with `--entry`,
    /// write them into that entry file.
    Fingerprint {
        #[arg(long)]
        entry: Option<PathBuf>,
        /// KEY=VALUE for the server's environment (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Serve the catalog over the official MCP registry API.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8300")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        source: Source,
    },
    /// Copy every entry of a registry that speaks the official API into a
    /// catalog directory (signatures kept; invalid entries refused).
    Sync {
        #[arg(long)]
        from: String,
        #[arg(long)]
        into: PathBuf,
    },
}

/// Which catalog: the bundled one, a directory's, or both.
#[derive(Args)]
pub struct Source {
    /// A catalog directory (its entries join the bundled ones).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Leave the bundled catalog out.
    #[arg(long)]
    no_bundled: bool,
}

/// Keys trusted for signatures.
#[derive(Args)]
pub struct TrustArgs {
    /// PUBLISHER=ed25519:KEY[,NAMESPACE...]: a publisher key trusted for
    /// the given namespaces (none: any). Repeatable.
    #[arg(long = "trust")]
    trust: Vec<String>,
}

impl Source {
    fn load(&self) -> anyhow::Result<Catalog> {
        let bundled = if self.no_bundled {
            Catalog::default()
        } else {
            Catalog::bundled()?
        };
        Ok(match &self.catalog {
            Some(dir) => bundled.merged(&Catalog::load_dir(dir)?)?,
            None => bundled,
        })
    }
}

impl TrustArgs {
    fn keys(&self) -> anyhow::Result<Vec<TrustedKey>> {
        self.trust
            .iter()
            .map(|t| {
                let (publisher, rest) = t
                    .split_once('=')
                    .context("--trust is PUBLISHER=ed25519:KEY[,NAMESPACE...]")?;
                let mut parts = rest.split(',');
                let key = parts.next().unwrap_or("");
                let namespaces = parts.map(str::to_string).collect();
                Ok(TrustedKey::new(publisher, key, namespaces)?)
            })
            .collect()
    }
}

pub fn run(cmd: RegistryCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RegistryCmd::Search { text, kind, source } => {
            let kind = kind
                .map(|k| {
                    Kind::parse(&k).with_context(|| {
                        format!("no kind `{k}`: server, policy-pack, model-preset or template")
                    })
                })
                .transpose()?;
            let catalog = source.load()?;
            for e in catalog.search(kind, &text) {
                println!(
                    "{:<13} {:<50} {:<12} {}",
                    e.kind, e.name, e.version, e.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RegistryCmd::Show {
            name,
            version,
            source,
            trust,
        } => {
            let catalog = source.load()?;
            let e = catalog.find(&name, version.as_deref())?;
            let t = sign::verify(e, &trust.keys()?);
            println!("{:#}", e.doc);
            eprintln!("{}: {} ({})", e.id(), t.describe(), e.origin);
            Ok(ExitCode::SUCCESS)
        }
        RegistryCmd::Install(args) => super::install::install(args),
        RegistryCmd::Uninstall {
            name,
            config,
            dry_run,
        } => super::install::uninstall(&name, &config, dry_run),
        RegistryCmd::List { config, json } => super::install::list(&config, json),
        RegistryCmd::Update { install, yes } => super::install::update(install, yes),
        RegistryCmd::Verify {
            installed: true,
            config,
            ..
        } => super::install::verify_installed(&super::ConfigArg { config }),
        RegistryCmd::Verify {
            source,
            trust,
            require_trusted,
            ..
        } => verify(&source.load()?, &trust.keys()?, require_trusted),
        RegistryCmd::Keygen { publisher, out } => {
            if out.exists() {
                bail!("{} exists: a key file is never overwritten", out.display());
            }
            let key = PublisherKey::generate(&publisher);
            write_private(&out, &key.to_file())?;
            println!("{}", key.public());
            eprintln!(
                "wrote {} (keep it secret); trust it with --trust '{publisher}={}'",
                out.display(),
                key.public()
            );
            Ok(ExitCode::SUCCESS)
        }
        RegistryCmd::Sign { file, key, out } => {
            let key_text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let key = PublisherKey::from_file(&key.display().to_string(), &key_text)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut entry = Entry::parse(&file.display().to_string(), &text)?;
            key.sign(&mut entry.doc)?;
            // The signed document must still be a valid entry.
            let signed = Entry::from_value(&file.display().to_string(), entry.doc)?;
            let out = out.unwrap_or(file);
            std::fs::write(&out, format!("{:#}\n", signed.doc))
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "signed {} as {} into {}",
                signed.id(),
                key.publisher,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        RegistryCmd::Fingerprint {
            entry,
            env,
            command,
        } => fingerprint(entry.as_deref(), &env, &command),
        RegistryCmd::Serve { listen, source } => {
            let catalog = std::sync::Arc::new(source.load()?);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                eprintln!(
                    "registry: {} entries on http://{}/v0.1/servers",
                    catalog.entries().len(),
                    listener.local_addr()?
                );
                axum::serve(listener, lattice_registry::api::router(catalog))
                    .with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        RegistryCmd::Sync { from, into } => {
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(lattice_registry::sync::sync(&from, &into))?;
            for id in &report.added {
                println!("added {id}");
            }
            for r in &report.refused {
                println!("refused {r}");
            }
            eprintln!(
                "{} added, {} unchanged, {} refused",
                report.added.len(),
                report.unchanged,
                report.refused.len()
            );
            Ok(if report.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn verify(
    catalog: &Catalog,
    keys: &[TrustedKey],
    require_trusted: bool,
) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    for e in catalog.entries() {
        let t = sign::verify(e, keys);
        let mut line = t.describe();
        let mut ok =
            !matches!(t, sign::Trust::BadSignature { .. }) && (!require_trusted || t.is_trusted());
        if e.kind == Kind::PolicyPack {
            match lattice_registry::pack::check(e, Duration::from_secs(30)) {
                Ok(r) => line.push_str(&format!(
                    "; {} tests pass, {} invariants proved",
                    r.cases,
                    r.proved.len()
                )),
                Err(err) => {
                    ok = false;
                    line.push_str(&format!("; {err}"));
                }
            }
        }
        if !ok {
            failed += 1;
        }
        println!("{} {}: {line}", if ok { "ok  " } else { "FAIL" }, e.id());
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn fingerprint(
    entry: Option<&Path>,
    env: &[String],
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let env = env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .context("--env is KEY=VALUE")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (program, args) = command.split_first().context("no command to start")?;
    let rt = tokio::runtime::Runtime::new()?;
    let prints = rt.block_on(lattice_registry::fingerprint::stdio(program, args, &env))?;
    let tools = lattice_registry::fingerprint::tools_meta(&prints);
    let Some(path) = entry else {
        println!("{tools:#}");
        return Ok(ExitCode::SUCCESS);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut e = Entry::parse(&path.display().to_string(), &text)?;
    if e.kind != Kind::Server {
        bail!("{} is a {}: only server entries have tools", e.id(), e.kind);
    }
    // Keep the publisher's risk where a tool of the same name was listed.
    let old = e.tools();
    let mut tools = tools;
    if let Some(list) = tools.as_array_mut() {
        for t in list {
            if let Some(p) = old
                .iter()
                .find(|p| Some(p.name.as_str()) == t["name"].as_str())
            {
                if let Some(r) = &p.risk {
                    t["risk"] = serde_json::json!(r);
                }
            }
        }
    }
    let meta = &mut e.doc["_meta"][lattice_registry::entry::PUBLISHER_PROVIDED]
        [lattice_registry::entry::LATTICE_META];
    meta["tools"] = tools;
    let e = Entry::from_value(&path.display().to_string(), e.doc)?;
    std::fs::write(path, format!("{:#}\n", e.doc))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{}: {} tools fingerprinted", e.id(), prints.len());
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    lattice_gateway::server::write_private(path, text)
        .with_context(|| format!("writing {}", path.display()))
}
