//! `lattice cluster init`: a new cluster secret, printed once for the
//! operator to give to the gateway (`[discovery] secret_env`) and to every
//! worker (`LATTICE_CLUSTER_SECRET`). The secret itself is
//! `lattice_inference_router::join`'s.
//!
//! Must never: write the secret to a file or a log, or print it anywhere but
//! standard output.

use clap::Subcommand;
use lattice_inference_router::join::{ClusterSecret, SECRET_ENV};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Make a new cluster secret and print it (with its public cluster id).
    Init {
        /// Print only the secret (for scripts: `export VAR=$(lattice cluster init --quiet)`).
        #[arg(long)]
        quiet: bool,
    },
}

pub fn run(cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCmd::Init { quiet } => {
            let secret = ClusterSecret::generate();
            if quiet {
                println!("{}", secret.encode());
            } else {
                println!("# A new Lattice cluster (id {}).", secret.cluster_id());
                println!(
                    "# Give this to the gateway and to every worker, through the environment:"
                );
                println!("export {SECRET_ENV}={}", secret.encode());
                println!(
                    "# Gateway: [discovery] in lattice.toml (secret_env defaults to {SECRET_ENV})."
                );
                println!("# Worker:  lattice worker --model DIR --listen 0.0.0.0:8000 (joins when {SECRET_ENV} is set).");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
