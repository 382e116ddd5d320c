//! `lattice audit tail|verify|prove`: read the embedded store offline (it is
//! safe to run beside a serving gateway: SQLite WAL readers do not block it).

use anyhow::Context;
use clap::Subcommand;
use lattice_audit::event::parse_canonical;
use lattice_audit::query::{self, AuditQuery, Scope};
use lattice_audit::verify::Problem;
use lattice_audit::witness::{first_not_cosigned, CosignatureVerifier};
use lattice_audit::{
    clickhouse, prove_consistency, prove_inclusion, read_witness, verify_clickhouse, verify_pruned,
    NoteVerifier, Store,
};
use std::path::PathBuf;
use std::process::ExitCode;

use super::ConfigArg;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Print the last events as JSON lines.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
        /// Only the events of this request id.
        #[arg(long)]
        request: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Recompute the log from the store and check it against every signed
    /// checkpoint and the witness; name the first tampered event.
    Verify {
        #[command(flatten)]
        keys: TrustArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Which copy of the log to verify.
        #[arg(long, value_enum, default_value = "embedded")]
        sink: Sink,
    },
    /// Filter events or aggregate them, from either sink.
    Query {
        #[command(flatten)]
        filter: QueryArgs,
        /// Print aggregates instead of events.
        #[arg(long)]
        aggregate: bool,
        #[arg(long, value_enum, default_value = "embedded")]
        sink: Sink,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print an inclusion proof for an event, or a consistency proof
    /// between two checkpoints.
    Prove {
        /// The event's sequence number (leaf index).
        #[arg(long, conflicts_with = "from")]
        seq: Option<u64>,
        /// Size of the older checkpoint.
        #[arg(long)]
        from: Option<u64>,
        /// Size of the newer checkpoint (default: the latest).
        #[arg(long, requires = "from")]
        to: Option<u64>,
        #[command(flatten)]
        keys: TrustArgs,
    },
}

#[derive(clap::Args)]
pub struct QueryArgs {
    /// Only events newer than this: 30s, 15m, 2h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// Only events at or after this time (µs since the epoch).
    #[arg(long)]
    from_us: Option<u64>,
    /// Only events before this time (µs since the epoch).
    #[arg(long)]
    to_us: Option<u64>,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    principal: Option<String>,
    /// e.g. http.request
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// allow or deny
    #[arg(long)]
    decision: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Read as an auditor of this tenant only.
    #[arg(long)]
    as_tenant: Option<String>,
}

fn parse_since(s: &str) -> anyhow::Result<u64> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .with_context(|| format!("--since `{s}`: use 30s, 15m, 2h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--since `{s}`: use 30s, 15m, 2h or 7d"),
    };
    Ok(lattice_audit::now_us().saturating_sub(secs * 1_000_000))
}

impl QueryArgs {
    fn build(self) -> anyhow::Result<AuditQuery> {
        let from_us = match (&self.since, self.from_us) {
            (Some(s), _) => Some(parse_since(s)?),
            (None, f) => f,
        };
        let scope = match self.as_tenant {
            Some(t) => Scope::Tenant(t),
            None => Scope::All,
        };
        Ok(AuditQuery {
            from_us,
            to_us: self.to_us,
            tenant: self.tenant,
            principal: self.principal,
            kind: self.kind,
            target: self.target,
            decision: self.decision,
            limit: Some(self.limit),
        }
        .scoped(&scope)?)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Sink {
    /// The node's SQLite store.
    Embedded,
    /// The node's rows in ClickHouse (`[audit.clickhouse]`).
    Clickhouse,
}

#[derive(clap::Args)]
pub struct TrustArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The node's verifier key file (default: audit-signing.vkey in the data dir).
    #[arg(long)]
    vkey: Option<PathBuf>,
    /// A witness file of exported checkpoints (default: audit.witness_file).
    #[arg(long)]
    witness: Option<PathBuf>,
    /// An outside witness's verifier key (`lattice witness init` prints
    /// it): every checkpoint must carry its valid co-signature.
    #[arg(long = "witness-key")]
    witness_keys: Vec<String>,
}

struct Trust {
    cfg: lattice_gateway::config::Config,
    verifier: NoteVerifier,
    witness: Vec<lattice_audit::verify::WitnessEntry>,
}

impl TrustArgs {
    fn open(&self) -> anyhow::Result<Trust> {
        let cfg = self.config.load()?;
        let vkey_path = self
            .vkey
            .clone()
            .unwrap_or_else(|| cfg.audit.key_path.with_extension("vkey"));
        let vkey = std::fs::read_to_string(&vkey_path)
            .with_context(|| format!("verifier key {}", vkey_path.display()))?;
        let verifier = NoteVerifier::from_encoded(&vkey)?;
        let witness_path = self.witness.clone().or(cfg.audit.witness_file.clone());
        let witness = match witness_path {
            Some(p) if p.exists() => read_witness(
                &std::fs::read_to_string(&p).with_context(|| p.display().to_string())?,
            )?,
            Some(p) if self.witness.is_some() => {
                anyhow::bail!("witness file {} does not exist", p.display())
            }
            _ => Vec::new(),
        };
        Ok(Trust {
            cfg,
            verifier,
            witness,
        })
    }
}

impl Trust {
    fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open_read_only(&self.cfg.audit.db_path)?)
    }
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Tail {
            count,
            request,
            config,
        } => {
            let db = config.load()?.audit.db_path;
            let store = Store::open_read_only(&db)?;
            // A gateway stopped by a crash may hold its newest events in
            // the segments only: they are shown too.
            let beyond = lattice_audit::beyond_store(&db, &store)?;
            let rows = match request {
                Some(id) => {
                    let mut rows = store.by_request(&id)?;
                    rows.extend(beyond.into_iter().filter(|e| {
                        parse_canonical(e.json.as_bytes()).is_ok_and(|e| e.request_id == id)
                    }));
                    rows
                }
                None => {
                    let mut rows = store.tail(count)?;
                    rows.extend(beyond);
                    let skip = rows.len().saturating_sub(count);
                    rows.split_off(skip)
                }
            };
            for row in rows {
                println!("{}", row.json);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Query {
            filter,
            aggregate,
            sink,
            config,
        } => {
            let cfg = config.load()?;
            let q = filter.build()?;
            let (events, aggregates) = match sink {
                Sink::Embedded => {
                    let store = Store::open_read_only(&cfg.audit.db_path)?;
                    if aggregate {
                        (Vec::new(), Some(store.aggregate(&q)?))
                    } else {
                        (store.query(&q)?, None)
                    }
                }
                Sink::Clickhouse => {
                    let ch = cfg
                        .audit
                        .clickhouse
                        .as_ref()
                        .context("no [audit.clickhouse] in the config")?;
                    let client = clickhouse::client(ch)?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let at = || format!("querying ClickHouse at {}", ch.url);
                    if aggregate {
                        let a = rt
                            .block_on(query::aggregate_clickhouse(&client, &q))
                            .with_context(at)?;
                        (Vec::new(), Some(a))
                    } else {
                        let rows = rt
                            .block_on(query::query_clickhouse(&client, &q))
                            .with_context(at)?;
                        (rows, None)
                    }
                }
            };
            match aggregates {
                Some(a) => println!("{}", serde_json::to_string_pretty(&a)?),
                None => {
                    for e in events {
                        println!("{}", e.json);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify { keys, json, sink } => {
            let t = keys.open()?;
            let mut report = match sink {
                // Read as it is checked, in bounded memory; a store that
                // retention pruned is verified whole when ClickHouse holds
                // the pruned events.
                Sink::Embedded => verify_pruned(
                    &t.store()?,
                    t.cfg.audit.clickhouse.as_ref(),
                    &t.cfg.server.node_id,
                    &t.verifier,
                    &t.witness,
                )?,
                Sink::Clickhouse if !keys.witness_keys.is_empty() => {
                    anyhow::bail!("witness co-signatures are kept in the embedded store: verify it with --witness-key")
                }
                Sink::Clickhouse => {
                    let ch = t
                        .cfg
                        .audit
                        .clickhouse
                        .as_ref()
                        .context("no [audit.clickhouse] in the config")?;
                    verify_clickhouse(ch, &t.cfg.server.node_id, &t.verifier, &t.witness)
                        .with_context(|| format!("reading the log from ClickHouse at {}", ch.url))?
                }
            };
            for key in &keys.witness_keys {
                let witness = CosignatureVerifier::from_encoded(key)?;
                let store = t.store()?;
                let (checkpoints, cosignatures, size) = store.read_consistent(|s| {
                    Ok((s.checkpoints()?, s.cosignatures()?, s.log_size()?))
                })?;
                // Every checkpoint co-signed, and no event past the newest.
                let newest = checkpoints.last().map_or(0, |(s, _)| *s);
                let unwitnessed = first_not_cosigned(&checkpoints, &cosignatures, &witness)
                    .or((size > newest).then_some(size));
                if let Some(size) = unwitnessed {
                    report.problems.push(Problem::NotWitnessed {
                        size,
                        witness: witness.name().to_string(),
                    });
                }
            }
            let unfilled = match sink {
                Sink::Embedded => {
                    lattice_audit::beyond_store(&t.cfg.audit.db_path, &t.store()?)?.len()
                }
                Sink::Clickhouse => 0,
            };
            if unfilled > 0 && !json {
                println!(
                    "({unfilled} newer events are durable in the audit segments, not in the store yet: the gateway stopped before it wrote them in; its next start does, and they are verified then)"
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.ok() {
                println!(
                    "OK: {} events, log size {}, {} signed checkpoints and {} witness checkpoints verified",
                    report.events, report.log_size, report.checkpoints_checked, report.witness_checkpoints_checked
                );
                if report.from_clickhouse > 0 {
                    println!(
                        "({} events that retention pruned from the store were read from ClickHouse)",
                        report.from_clickhouse
                    );
                } else if report.pruned_before > 0 {
                    println!(
                        "(events before #{} were pruned by retention and are not checked: with no ClickHouse to read them from, their inclusion can no longer be proved{})",
                        report.pruned_before,
                        if report.pruned_checkpoints > 0 { format!("; {} older witness checkpoints skipped", report.pruned_checkpoints) } else { String::new() }
                    );
                }
                if report.duplicates > 0 {
                    println!(
                        "({} identical duplicate rows from retried inserts were ignored)",
                        report.duplicates
                    );
                }
            } else {
                println!("FAILED: {}", report.problems[0]);
                for p in report.problems.iter().skip(1).take(20) {
                    println!("  also: {p}");
                }
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCmd::Prove {
            seq,
            from,
            to,
            keys,
        } => {
            let t = keys.open()?;
            let (text, verified) = match (seq, from) {
                (Some(seq), _) => {
                    let p = prove_inclusion(&t.store()?, &t.verifier, seq)?;
                    (serde_json::to_string_pretty(&p)?, p.verified)
                }
                (None, Some(from)) => {
                    let p = prove_consistency(&t.store()?, &t.verifier, from, to)?;
                    (serde_json::to_string_pretty(&p)?, p.verified)
                }
                (None, None) => {
                    anyhow::bail!("give --seq N (inclusion) or --from M [--to N] (consistency)")
                }
            };
            println!("{text}");
            Ok(if verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
