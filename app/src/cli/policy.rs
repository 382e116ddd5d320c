//! `lattice policy check|test|explain|prove`: offline policy work against
//! the same engine the gateway runs; `prove` asks the cvc5 solver.

use anyhow::Context;
use clap::Subcommand;
use lattice_gateway::runtime::read_policies;
use lattice_policy::{
    run_cases, Action, AuthzRequest, CaseFile, PolicyEngine, Principal, PrincipalKind,
    RequestContext, Resource,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::ConfigArg;

#[derive(clap::Args)]
pub struct PolicySel {
    #[command(flatten)]
    config: ConfigArg,
    /// Policy files to use instead of the config's `policy.files`.
    #[arg(long = "policies", num_args = 1..)]
    policies: Vec<PathBuf>,
}

impl PolicySel {
    fn engine(&self) -> anyhow::Result<PolicyEngine> {
        let config = self.config.load().ok();
        let files = if self.policies.is_empty() {
            match &config {
                Some(c) => c.policy.files.clone(),
                None => self.config.load()?.policy.files,
            }
        } else {
            self.policies.clone()
        };
        let tool_input = match &config {
            Some(c) => lattice_gateway::runtime::read_tool_input(c)?,
            None => None,
        };
        Ok(PolicyEngine::with_tool_input(
            &read_policies(&files)?,
            None,
            tool_input.as_deref(),
        )?)
    }
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files against the Lattice schema.
    Check {
        #[command(flatten)]
        sel: PolicySel,
    },
    /// Run a file of cases (request → expected decision); exit 1 on any mismatch.
    Test {
        file: PathBuf,
        #[command(flatten)]
        sel: PolicySel,
    },
    /// Prove invariants of the policy set for every possible request (the
    /// cvc5 solver); a failed one prints a counterexample. Exit 1 when one
    /// fails or is not proved in time.
    Prove {
        /// A TOML file of `[[invariants]]`: `id`, `description`, and a
        /// Cedar permit describing requests as `never_allows` or
        /// `always_allows`.
        file: PathBuf,
        #[command(flatten)]
        sel: PolicySel,
        /// Longest time for one invariant; past it, it counts as not proved.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// The semantic difference of two policy sets: each kind of request
    /// (principal type, action, resource type) one allows and the other
    /// does not, with an example request. Exit 1 when they differ.
    Diff {
        /// The policy files of the old set.
        #[arg(long, num_args = 1.., required = true)]
        old: Vec<PathBuf>,
        /// The policy files of the new set.
        #[arg(long, num_args = 1.., required = true)]
        new: Vec<PathBuf>,
        /// Read `policy.tool_input_schema` from this config, if it exists.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Decide one request and print the decision with its reasons.
    Explain {
        #[command(flatten)]
        sel: PolicySel,
        /// Principal id.
        #[arg(long)]
        principal: String,
        #[arg(long, value_enum, default_value = "agent")]
        principal_type: Kind,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long = "label")]
        labels: Vec<String>,
        /// e.g. http_request, call_tool, chat, admin.read_audit
        #[arg(long)]
        action: String,
        /// The resource as JSON, e.g. '{"type":"HttpRoute","id":"echo","labels":["demo"]}'
        #[arg(long)]
        resource: String,
        /// Context as JSON, e.g. '{"method":"GET","path":"/x"}'
        #[arg(long, default_value = "{}")]
        context: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Agent,
    Human,
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { sel } => match sel.engine() {
            Ok(engine) => {
                println!(
                    "policies valid: {}",
                    engine.policy_ids().collect::<Vec<_>>().join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        PolicyCmd::Test { file, sel } => {
            let engine = sel.engine()?;
            let text =
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let cases = CaseFile::parse(&file.display().to_string(), &text)?;
            let results = run_cases(&engine, &cases);
            let failed = results.iter().filter(|r| !r.passed).count();
            for r in &results {
                match &r.mismatch {
                    None => println!("PASS  {}  ({})", r.name, r.decision.summary()),
                    Some(m) => println!("FAIL  {}  {m}", r.name),
                }
            }
            println!("{} passed, {} failed", results.len() - failed, failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCmd::Prove {
            file,
            sel,
            timeout_s,
        } => prove(&file, &sel, std::time::Duration::from_secs(timeout_s)),
        PolicyCmd::Diff { old, new, config } => diff(&old, &new, &config),
        PolicyCmd::Explain {
            sel,
            principal,
            principal_type,
            tenant,
            roles,
            labels,
            action,
            resource,
            context,
        } => {
            let engine = sel.engine()?;
            let resource: Resource = serde_json::from_str(&resource).context("--resource")?;
            let mut ctx: RequestContext = serde_json::from_str(&context).context("--context")?;
            if ctx.time == 0 {
                ctx.time = (lattice_audit::now_us() / 1_000_000) as i64;
            }
            let req = AuthzRequest {
                principal: Principal {
                    kind: match principal_type {
                        Kind::Agent => PrincipalKind::Agent,
                        Kind::Human => PrincipalKind::Human,
                    },
                    id: principal,
                    tenant,
                    roles,
                    labels,
                    auth_method: "cli".into(),
                },
                action: action.parse::<Action>()?,
                resource,
                context: ctx,
            };
            let decision = engine.decide(&req);
            println!("decision: {}", decision.summary());
            for id in &decision.policies {
                println!(
                    "\n-- {id}\n{}",
                    engine.policy_text(id).unwrap_or("(text unavailable)")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InvariantsFile {
    invariants: Vec<lattice_policy::prove::RawProperty>,
}

fn prove(file: &Path, sel: &PolicySel, limit: std::time::Duration) -> anyhow::Result<ExitCode> {
    use cedar_policy_symcc::solver::LocalSolver;
    use cedar_policy_symcc::CedarSymCompiler;
    use lattice_policy::prove::{prove, Property, Verdict};
    let engine = sel.engine()?;
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let parsed: InvariantsFile =
        toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
    let properties = parsed
        .invariants
        .iter()
        .map(|raw| Property::new(raw, &engine))
        .collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut proved, mut failed) = (0, 0);
    for p in &properties {
        let verdict = rt.block_on(async {
            let cvc5 = LocalSolver::cvc5_with_args(lattice_policy::prove::CVC5_ARGS).map_err(|e| {
                anyhow::anyhow!("cannot start the cvc5 solver ({e}): install it (scripts/setup, or apt-get install cvc5) or set CVC5 to its path")
            })?;
            let mut solver = CedarSymCompiler::new(cvc5)?;
            match tokio::time::timeout(limit, prove(&engine, p, &mut solver)).await {
                Ok(v) => Ok(Some(v?)),
                Err(_) => Ok::<_, anyhow::Error>(None),
            }
        })?;
        let what = if p.description.is_empty() {
            p.id.clone()
        } else {
            format!("{} — {}", p.id, p.description)
        };
        match verdict {
            Some(Verdict::Holds) => {
                proved += 1;
                println!("PROVED  {what}");
            }
            Some(Verdict::Fails(cex)) => {
                failed += 1;
                let how = p.claim.broken(cex.allowed);
                println!("FAILED  {what}\n  counterexample ({how}):");
                for line in cex.readable().lines() {
                    println!("    {line}");
                }
            }
            None => {
                failed += 1;
                println!(
                    "FAILED  {what}\n  not proved within {} s (the solver timed out): counted as failed",
                    limit.as_secs()
                );
            }
        }
    }
    println!("{proved} proved, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn diff(old: &[PathBuf], new: &[PathBuf], config: &ConfigArg) -> anyhow::Result<ExitCode> {
    use cedar_policy_symcc::solver::LocalSolver;
    use cedar_policy_symcc::CedarSymCompiler;
    use lattice_policy::prove::Change;
    let tool_input = match config.load() {
        Ok(c) => lattice_gateway::runtime::read_tool_input(&c)?,
        Err(_) => None,
    };
    let engine = |files: &[PathBuf]| {
        PolicyEngine::with_tool_input(&read_policies(files)?, None, tool_input.as_deref())
            .map_err(anyhow::Error::from)
    };
    let (old, new) = (engine(old)?, engine(new)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let differences = rt.block_on(async {
        let cvc5 = LocalSolver::cvc5_with_args(lattice_policy::prove::CVC5_ARGS).map_err(|e| {
            anyhow::anyhow!("cannot start the cvc5 solver ({e}): install it (scripts/setup, or apt-get install cvc5) or set CVC5 to its path")
        })?;
        let mut solver = CedarSymCompiler::new(cvc5)?;
        Ok::<_, anyhow::Error>(lattice_policy::prove::diff(&old, &new, &mut solver).await?)
    })?;
    for d in &differences {
        let label = match d.change {
            Change::NewlyAllowed => "NEWLY ALLOWED",
            Change::NewlyDenied => "NEWLY DENIED ",
        };
        println!("{label}  {} {} {}", d.principal, d.action, d.resource);
        for line in d
            .example
            .text
            .lines()
            .take_while(|l| !l.starts_with("entities"))
        {
            println!("    e.g. {line}");
        }
    }
    let allowed = differences
        .iter()
        .filter(|d| d.change == Change::NewlyAllowed)
        .count();
    println!(
        "{} kinds of requests change ({allowed} newly allowed, {} newly denied)",
        differences.len(),
        differences.len() - allowed
    );
    Ok(if differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
