//! The connection to what replicas share: one Redis (or Valkey, the same
//! protocol; standalone, not Redis Cluster), from `[cluster] redis`. Checks
//! run on the caller's runtime over one multiplexed connection (its driver
//! lives on the runtime that first used it: a hop to another thread per
//! check cost more than the check); the revocation subscription runs on a
//! runtime of its own with its own connections. A request
//! waits for an answer at most `cluster.timeout_ms` and otherwise gets an
//! error naming the store and the cause, so callers can fail closed. A
//! store that was down is used again as soon as it answers: the
//! connection manager reconnects on the next call, no restart.
//!
//! Revocations travel through it too: an MCP session ended or an API key
//! revoked on one replica is published (`<prefix>:revocations`) and kept
//! (a session until its tokens expire, a key for good), and every replica
//! subscribes — catching up on what was kept each time it (re)connects, so
//! a replica that was cut off learns what it missed.
//!
//! Must never: wait past the timeout on the request path, or put the
//! password anywhere but the AUTH command (it comes from the environment).

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo, Script};
use std::sync::LazyLock;
use std::time::Duration;

use crate::config::RedisConfig;
use crate::GatewayError;

/// Something one replica ended that every replica must refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// An MCP session id (`DELETE /mcp`).
    Session(String),
    /// An API key id.
    Key(String),
}

impl Revoked {
    fn message(&self) -> String {
        match self {
            Revoked::Session(sid) => format!("session {sid}"),
            Revoked::Key(id) => format!("key {id}"),
        }
    }

    fn parse(message: &str) -> Option<Self> {
        match message.split_once(' ')? {
            ("session", sid) => Some(Revoked::Session(sid.to_string())),
            ("key", id) => Some(Revoked::Key(id.to_string())),
            _ => None,
        }
    }
}

/// KEYS: the record to keep, the channel. ARGV: the message, the
/// record's lifetime in seconds (0: a member of the set KEYS[1]).
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[2]))
else
  redis.call('SADD', KEYS[1], ARGV[1])
end
return redis.call('PUBLISH', KEYS[2], ARGV[1])
",
    )
});

/// The shared store.
pub struct Redis {
    runtime: Option<tokio::runtime::Runtime>,
    client: redis::Client,
    conn: ConnectionManager,
    timeout: Duration,
    prefix: String,
    /// The URL, for messages (it never holds a password).
    shown: String,
}

impl Redis {
    /// Prepares the connection; it is made on first use, so a store that
    /// is down at start only fails the calls that need it.
    pub fn connect(cfg: &RedisConfig) -> Result<Self, GatewayError> {
        let fail = |e: &dyn std::fmt::Display| {
            GatewayError::Config(format!("cluster.redis `{}`: {e}", cfg.url))
        };
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| fail(&e))?;
        if let Some(var) = &cfg.password_env {
            let password = std::env::var(var)
                .map_err(|_| fail(&format!("the environment variable `{var}` is not set")))?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match &cfg.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| GatewayError::io(path.display(), e))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| fail(&e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cluster-redis")
            .enable_all()
            .build()
            .map_err(|e| GatewayError::Server(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = {
            let _inside = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| fail(&e))?
        };
        Ok(Self {
            runtime: Some(runtime),
            client,
            conn,
            timeout: cfg.timeout,
            prefix: cfg.prefix.clone(),
            shown: cfg.url.clone(),
        })
    }

    /// A key under the configured prefix: `<prefix>:<part>:<part>...`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Runs a Lua script (EVALSHA, loaded again after a store restart).
    /// It runs on the caller's runtime: the connection's driver lives on
    /// the runtime that first used it (the request path's), so a check
    /// costs no hop to another thread. Err: why the store could not
    /// answer, in words.
    pub async fn eval<T: FromRedisValue + Send + 'static>(
        &self,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, String> {
        let mut conn = self.conn.clone();
        let call = async move { invoke::<T>(script, &keys, &args, &mut conn).await };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(format!(
                "{}: no answer within {} ms",
                self.shown,
                self.timeout.as_millis()
            )),
            Ok(Err(e)) => Err(format!("{}: {e}", self.shown)),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

/// Runs `script` with its keys and arguments on `conn` (EVALSHA, loaded
/// again after a store restart).
async fn invoke<T: FromRedisValue>(
    script: &Script,
    keys: &[String],
    args: &[String],
    conn: &mut (impl redis::aio::ConnectionLike + Send),
) -> redis::RedisResult<T> {
    let mut call = script.prepare_invoke();
    for k in keys {
        call.key(k);
    }
    for a in args {
        call.arg(a);
    }
    call.invoke_async::<T>(conn).await
}

impl Redis {
    /// `eval` from a thread outside any async runtime, on this store's own
    /// runtime and a connection of its own (the shared one's driver lives
    /// on the request path's runtime, which is gone at shutdown).
    pub fn eval_blocking<T: FromRedisValue + Send + 'static>(
        &self,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, String> {
        let Some(runtime) = &self.runtime else {
            return Err(format!("{}: the connection is closed", self.shown));
        };
        let client = self.client.clone();
        let call = async move {
            let mut conn = client.get_multiplexed_async_connection().await?;
            invoke::<T>(script, &keys, &args, &mut conn).await
        };
        // A connection is made first: a few round trips, not one.
        match runtime.block_on(async { tokio::time::timeout(self.timeout * 4, call).await }) {
            Err(_) => Err(format!("{}: no answer in time", self.shown)),
            Ok(Err(e)) => Err(format!("{}: {e}", self.shown)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Publishes a revocation and keeps it (a session for `ttl_s`, the
    /// life of its tokens; a key for good). Err: why it could not be
    /// shared (it holds on this replica regardless).
    pub async fn revoke(&self, what: &Revoked, ttl_s: u64) -> Result<(), String> {
        let (record, ttl) = match what {
            Revoked::Session(sid) => (self.key(&["ended-session", sid]), ttl_s.max(1)),
            Revoked::Key(_) => (self.key(&["revoked-keys"]), 0),
        };
        let keys = vec![record, self.key(&["revocations"])];
        let args = vec![what.message(), ttl.to_string()];
        self.eval::<i64>(&REVOKE, keys, args).await.map(|_| ())
    }

    /// `revoke` from a thread outside any async runtime.
    pub fn revoke_blocking(&self, what: &Revoked, ttl_s: u64) -> Result<(), String> {
        let Some(runtime) = &self.runtime else {
            return Err(format!("{}: the connection is closed", self.shown));
        };
        runtime.block_on(self.revoke(what, ttl_s))
    }

    /// Calls `apply` for every revocation kept in the store and every one
    /// published from now on, reconnecting (and catching up again) after
    /// any loss of the subscription, until the store is dropped.
    pub fn subscribe(&self, apply: impl Fn(Revoked) + Send + Sync + 'static) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let client = self.client.clone();
        let (channel, sessions, keys) = (
            self.key(&["revocations"]),
            self.key(&["ended-session", "*"]),
            self.key(&["revoked-keys"]),
        );
        let session_prefix = self.key(&["ended-session", ""]);
        let shown = self.shown.clone();
        runtime.spawn(async move {
            loop {
                let run = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    // Subscribed first, then what was kept: nothing falls
                    // between the two.
                    // A connection of its own: the shared one belongs to
                    // the request path's runtime.
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    let kept: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await?;
                    for m in kept {
                        apply_message(&apply, &m);
                    }
                    let mut cursor = 0u64;
                    loop {
                        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&sessions)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn)
                            .await?;
                        for k in found {
                            if let Some(sid) = k.strip_prefix(&session_prefix) {
                                apply(Revoked::Session(sid.to_string()));
                            }
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        if let Ok(m) = msg.get_payload::<String>() {
                            apply_message(&apply, &m);
                        }
                    }
                    Ok::<(), redis::RedisError>(())
                };
                match run.await {
                    Ok(()) => tracing::warn!(store = %shown, "the revocation subscription ended; subscribing again"),
                    Err(e) => tracing::warn!(store = %shown, error = %e, "cannot follow revocations; retrying in 1 s"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

fn apply_message(apply: &(impl Fn(Revoked) + Send + Sync), message: &str) {
    match Revoked::parse(message) {
        Some(r) => apply(r),
        None => tracing::warn!(message, "an unknown revocation message"),
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Dropped from async code too: never block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
