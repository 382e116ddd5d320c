//! The connection to what replicas share: one Redis (or Valkey, the same
//! protocol; standalone, not Redis Cluster), from `[cluster] redis`. It
//! lives on a runtime of its own (like the MCP upstreams), so its
//! reconnecting driver never depends on a request's thread; a request
//! waits for an answer at most `cluster.timeout_ms` and otherwise gets an
//! error naming the store and the cause, so callers can fail closed. A
//! store that was down is used again as soon as it answers: the
//! connection manager reconnects on the next call, no restart.
//!
//! Must never: wait past the timeout on the request path, or put the
//! password anywhere but the AUTH command (it comes from the environment).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo, Script};
use std::time::Duration;

use crate::config::RedisConfig;
use crate::GatewayError;

/// The shared store.
pub struct Redis {
    runtime: Option<tokio::runtime::Runtime>,
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
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| fail(&e))?
        };
        Ok(Self {
            runtime: Some(runtime),
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
    /// Err: why the store could not answer, in words.
    pub async fn eval<T: FromRedisValue + Send + 'static>(
        &self,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, String> {
        let Some(runtime) = &self.runtime else {
            return Err(format!("{}: the connection is closed", self.shown));
        };
        let mut conn = self.conn.clone();
        let task = runtime.spawn(async move {
            let mut call = script.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            for a in &args {
                call.arg(a);
            }
            call.invoke_async::<T>(&mut conn).await
        });
        let abort = task.abort_handle();
        match tokio::time::timeout(self.timeout, task).await {
            Err(_) => {
                abort.abort();
                Err(format!(
                    "{}: no answer within {} ms",
                    self.shown,
                    self.timeout.as_millis()
                ))
            }
            Ok(Err(e)) => Err(format!("{}: {e}", self.shown)),
            Ok(Ok(Err(e))) => Err(format!("{}: {e}", self.shown)),
            Ok(Ok(Ok(v))) => Ok(v),
        }
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
