//! `lattice keys create|list|revoke`: API keys in the data directory's state
//! store. A running gateway picks changes up within one reload poll.

use clap::Subcommand;
use lattice_gateway::state::StateStore;
use lattice_policy::PrincipalKind;
use std::process::ExitCode;

use super::ConfigArg;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key for an agent (or, with --human, for a person using the
    /// workbench); the key is printed once and stored hashed.
    Create {
        #[arg(long, required_unless_present = "human", conflicts_with = "human")]
        agent: Option<String>,
        /// A human principal (`Lattice::Human`), e.g. an operator or auditor.
        #[arg(long)]
        human: Option<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// A role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// An operator label such as `confidential` (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a key by id.
    Revoke {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(cmd: KeysCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::Create {
            agent,
            human,
            tenant,
            roles,
            labels,
            config,
        } => {
            let store = StateStore::open(&config.load()?.server.data_dir)?;
            let (kind, name) = match (agent, human) {
                (_, Some(h)) => (PrincipalKind::Human, h),
                (Some(a), None) => (PrincipalKind::Agent, a),
                (None, None) => anyhow::bail!("give --agent NAME or --human NAME"),
            };
            let (key, secret) = store.create_key(kind, &name, &tenant, &roles, &labels)?;
            eprintln!(
                "Created API key {} for {} `{}` (tenant `{}`, roles [{}]). It is shown only now:",
                key.id,
                lattice_gateway::state::kind_name(key.kind),
                key.agent,
                key.tenant,
                key.roles.join(", ")
            );
            println!("{secret}");
        }
        KeysCmd::List { config } => {
            let store = StateStore::open(&config.load()?.server.data_dir)?;
            println!(
                "{:<14} {:<6} {:<20} {:<12} {:<24} STATUS",
                "ID", "KIND", "PRINCIPAL", "TENANT", "ROLES"
            );
            for (_, k) in store.keys()? {
                let status = if k.revoked_us.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<14} {:<6} {:<20} {:<12} {:<24} {status}",
                    k.id,
                    lattice_gateway::state::kind_name(k.kind),
                    k.agent,
                    k.tenant,
                    k.roles.join(",")
                );
            }
        }
        KeysCmd::Revoke { id, config } => {
            let store = StateStore::open(&config.load()?.server.data_dir)?;
            store.revoke_key(&id)?;
            println!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
