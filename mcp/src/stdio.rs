//! The stdio transport: the gateway runs the server's command in a process
//! group of its own (`process-wrap`, what rmcp's child-process transport is
//! built on), sends newline-delimited JSON-RPC on its stdin, and a reader
//! task routes what comes on stdout through the `Inbox`. The server's
//! stderr goes to the logs. Closing the transport, or dropping it, kills
//! the whole group, so a launcher such as `npx` leaves no server behind.
//! With a `guard` (the gateway's `lattice stdio-guard`), the command runs
//! under it: the guard kills everything below it when the gateway dies,
//! even by SIGKILL, and when it is asked to stop (SIGTERM to the group).
//!
//! Must never: read a line without a bound, or leave a child running after
//! the gateway let go of it.

use process_wrap::tokio::{ChildWrapper, CommandWrap, ProcessGroup};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::Mutex;

use crate::jsonrpc;
use crate::transport::{Announced, Answer, BoxFuture, Inbox, Kind, Transport};
use crate::upstream::Upstream;
use crate::McpError;

/// The protocol version Lattice asks stdio and streamable-HTTP upstreams for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// What a guarded server's group is asked to stop with.
const SIGTERM: i32 = 15;
/// Longest line accepted from an upstream.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// How to start a stdio server.
#[derive(Debug, Clone)]
pub struct StdioConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// Extra environment (secrets are injected here, never from the agent).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// A program run as `<guard> stdio-guard -- <command> <args>`, which
    /// outlives nothing it started (see `lattice stdio-guard`).
    pub guard: Option<std::path::PathBuf>,
}

/// A running stdio server.
pub struct StdioTransport {
    name: String,
    child: Mutex<Box<dyn ChildWrapper>>,
    guarded: bool,
    stdin: Arc<Mutex<ChildStdin>>,
    inbox: Arc<Inbox>,
}

fn upstream_err(server: &str, message: impl Into<String>) -> McpError {
    McpError::Upstream {
        server: server.to_string(),
        message: message.into(),
    }
}

/// Spawns the server and completes the `initialize` handshake.
pub async fn start(cfg: StdioConfig) -> Result<Upstream, McpError> {
    crate::tools::check_server_name(&cfg.name)?;
    let transport = StdioTransport::spawn(&cfg)?;
    Upstream::connect(&cfg.name, cfg.timeout, Box::new(transport)).await
}

impl StdioTransport {
    /// Spawns the command in a new process group, with piped stdio.
    pub fn spawn(cfg: &StdioConfig) -> Result<Self, McpError> {
        let name = cfg.name.clone();
        let mut command = match &cfg.guard {
            Some(guard) => {
                let mut c = tokio::process::Command::new(guard);
                c.args(["stdio-guard", "--", cfg.command.as_str()]);
                c
            }
            None => tokio::process::Command::new(&cfg.command),
        };
        command
            .args(&cfg.args)
            .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut wrap = CommandWrap::from(command);
        wrap.wrap(ProcessGroup::leader());
        let mut child = wrap
            .spawn()
            .map_err(|e| upstream_err(&name, format!("cannot start `{}`: {e}", cfg.command)))?;
        let pipes = (
            child.stdin().take(),
            child.stdout().take(),
            child.stderr().take(),
        );
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            let _ = child.start_kill();
            return Err(upstream_err(&name, "no stdio pipes"));
        };
        tokio::spawn(log_stderr(name.clone(), stderr));
        let inbox = Arc::new(Inbox::new(&name, "the server exited before answering"));
        let stdin = Arc::new(Mutex::new(stdin));
        tokio::spawn(read_stdout(
            name.clone(),
            stdout,
            stdin.clone(),
            inbox.clone(),
        ));
        Ok(Self {
            name,
            child: Mutex::new(child),
            guarded: cfg.guard.is_some(),
            stdin,
            inbox,
        })
    }

    async fn write(&self, message: &Value) -> Result<(), McpError> {
        if !self.inbox.is_alive() {
            return Err(upstream_err(&self.name, "the server has exited"));
        }
        write_line(&self.stdin, message)
            .await
            .map_err(|e| upstream_err(&self.name, e.to_string()))
    }
}

impl Drop for StdioTransport {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        // SIGTERM to the group: the guard kills whatever is left below it,
        // including processes that left the group.
        if !self.guarded || child.signal(SIGTERM).is_err() {
            let _ = child.start_kill();
        }
    }
}

impl Transport for StdioTransport {
    fn protocol_version(&self) -> &'static str {
        PROTOCOL_VERSION
    }

    fn request<'a>(
        &'a self,
        id: u64,
        message: Value,
        kind: Kind<'a>,
    ) -> BoxFuture<'a, Result<Answer, McpError>> {
        Box::pin(async move {
            self.inbox
                .exchange(id, kind, async { self.write(&message).await })
                .await
        })
    }

    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), McpError>> {
        Box::pin(async move { self.write(&message).await })
    }

    fn announced(&self) -> &Announced {
        self.inbox.announced()
    }

    fn is_alive(&self) -> bool {
        self.inbox.is_alive()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The whole group: a launcher's children go with it. A guard
            // is asked first: it also finds what left the group.
            let mut child = self.child.lock().await;
            if self.guarded && child.signal(SIGTERM).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            }
            let _ = child.start_kill();
            self.inbox.close().await;
        })
    }

    fn pid(&self) -> BoxFuture<'_, Option<u32>> {
        Box::pin(async move {
            let mut child = self.child.lock().await;
            match child.try_wait() {
                Ok(None) => child.id(),
                _ => None,
            }
        })
    }
}

async fn write_line(stdin: &Mutex<ChildStdin>, message: &Value) -> std::io::Result<()> {
    let mut line = message.to_string();
    line.push('\n');
    let mut stdin = stdin.lock().await;
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await
}

async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(upstream = %name, "{}", line.chars().take(2000).collect::<String>());
    }
}

async fn read_stdout(
    name: String,
    stdout: ChildStdout,
    stdin: Arc<Mutex<ChildStdin>>,
    inbox: Arc<Inbox>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(n) if n > MAX_LINE => {
                tracing::error!(upstream = %name, "a line longer than {MAX_LINE} bytes; dropping the connection");
                break;
            }
            Ok(_) => {}
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match jsonrpc::parse(text, MAX_LINE) {
            Ok(message) => {
                if let Some(reply) = inbox.dispatch(message).await {
                    let _ = write_line(&stdin, &reply).await;
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "unparseable line from the server")
            }
        }
    }
    inbox.close().await;
    tracing::warn!(upstream = %name, "the server's output closed");
}
