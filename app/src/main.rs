//! `lattice`: the command line. Commands and wiring only; the work is in the
//! library crates.

mod cli;

/// mimalloc, not glibc's malloc: on the request path allocation cost 8–10%
/// of the gateway's CPU at saturation, partly futex contention when the
/// audit writer frees what request threads allocated; mimalloc's
/// thread-local free lists avoid both (figures in docs/benchmarks-log.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lattice",
    version,
    about = "The Lattice gateway: enforced, audited agent traffic"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: cli::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Serve {
        #[arg(short, long, default_value = "lattice.toml")]
        config: PathBuf,
    },
    /// Quick start: create a starter config and data directory if none
    /// exist, then serve on 127.0.0.1:8080.
    Up {
        /// Directory for lattice.toml, policies and data.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Listener of a new starter config (the demo upstream takes the next port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Configuration.
    #[command(subcommand)]
    Config(cli::ConfigCmd),
    /// API keys.
    #[command(subcommand)]
    Keys(cli::keys::KeysCmd),
    /// MCP servers (run-time registration) and tool pinning.
    #[command(subcommand)]
    Mcp(cli::mcp::McpCmd),
    /// Model routes: list, and add or remove run-time routes.
    #[command(subcommand)]
    Models(cli::models::ModelsCmd),
    /// Policies: check, test and explain, offline.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCmd),
    /// The audit trail: tail, verify and prove, offline.
    #[command(subcommand)]
    Audit(cli::audit::AuditCmd),
    /// Lattice Inference: serve a local model with an OpenAI API.
    Worker(Box<cli::worker::WorkerArgs>),
    /// Zero-config clustering: make the secret gateways and workers share.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCmd),
    /// Lattice Registry: MCP servers, policy packs, model presets and
    /// templates — search, verify, sign, serve, sync.
    #[command(subcommand)]
    Registry(cli::registry::RegistryCmd),
    /// An outside witness of gateways' audit logs (its own key and storage).
    #[command(subcommand)]
    Witness(cli::witness::WitnessCmd),
    /// Run a stdio MCP server so that nothing it starts outlives the
    /// gateway (the gateway runs every stdio server this way).
    #[command(hide = true)]
    StdioGuard {
        command: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the demo echo upstream on its own.
    #[command(hide = true)]
    DemoUpstream {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

/// What a shell reports for a process that a closed pipe ended (128 +
/// SIGPIPE).
const BROKEN_PIPE_EXIT: i32 = 141;

/// `lattice registry search | head` closes the pipe early: Rust ignores
/// SIGPIPE, so the next `println!` panics. End quietly instead, as Unix
/// tools do; every other panic is reported as before.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let args = Cli::parse();
    cli::init_logging(args.log_format);
    let result = match args.command {
        Command::Serve { config } => cli::serve(&config),
        Command::Up { dir, listen } => cli::up::run(&dir, listen),
        Command::Config(cmd) => cli::config(cmd),
        Command::Keys(cmd) => cli::keys::run(cmd),
        Command::Policy(cmd) => cli::policy::run(cmd),
        Command::Witness(cmd) => cli::witness::run(cmd),
        Command::Worker(a) => cli::worker::run(*a),
        Command::Cluster(cmd) => cli::cluster::run(cmd),
        Command::Registry(cmd) => cli::registry::run(cmd),
        Command::Mcp(cmd) => cli::mcp::run(cmd),
        Command::Models(cmd) => cli::models::run(cmd),
        Command::Audit(cmd) => cli::audit::run(cmd),
        Command::DemoUpstream { listen } => cli::demo_upstream(listen),
        Command::StdioGuard { command, args } => cli::stdio_guard::run(&command, &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each said once (library errors
/// name their source in their own message too).
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.ends_with(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn a_cause_already_named_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(lattice_gateway::GatewayError::io("/x/state.db", io))
            .context("opening the state store");
        assert_eq!(
            report(&e),
            "opening the state store: /x/state.db: entity not found"
        );
    }
}
