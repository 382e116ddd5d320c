//! A throwaway local ClickHouse server for tests and benchmarks: Debian's
//! `clickhouse-server` on free loopback ports with its own data directory,
//! killed on drop; `free_port`; and `rebuild_signed`, the attack the
//! witness exists for; `copy_store` and `edit_event`, a store copied and
//! one event edited as someone with the disk would. `pipeline_config` for
//! the crate's tests. Not used by the gateway itself.
//!
//! Must never: be called by the gateway or the CLI.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::AuditError;

/// A running test server.
pub struct ClickHouseServer {
    dir: PathBuf,
    /// The HTTP port, or with TLS the HTTPS port (the only one open).
    pub http_port: u16,
    tls: bool,
    child: Option<Child>,
}

/// The pipeline settings the crate's tests use: node `test-node`, a
/// checkpoint every 64 events (never by time), no witness file, no
/// ClickHouse, no retention.
pub fn pipeline_config(
    db: &std::path::Path,
    signer: &crate::NoteSigner,
) -> Result<crate::PipelineConfig, AuditError> {
    Ok(crate::PipelineConfig {
        db_path: db.to_path_buf(),
        node: "test-node".into(),
        origin: "lattice/test-node/audit".into(),
        queue_capacity: 4096,
        batch_max: 512,
        checkpoint_every: 64,
        checkpoint_interval: Duration::from_secs(3600),
        witness_file: None,
        signer: crate::NoteSigner::from_encoded(&signer.encoded())?,
        clickhouse: None,
        retention: Default::default(),
    })
}

/// A free loopback port: the one helper every test and load scenario of
/// the workspace uses (this crate is the lowest that has test peers).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn binary() -> Result<&'static str, AuditError> {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or_else(|| {
            AuditError::Io("clickhouse-server is not installed (scripts/setup installs it)".into())
        })
}

impl ClickHouseServer {
    /// Starts a server with its data under `dir` (which must exist).
    pub fn start(dir: PathBuf) -> Result<Self, AuditError> {
        Self::start_with(dir, None)
    }

    /// Starts a TLS-only server (HTTPS, no plain HTTP port) presenting the
    /// PEM certificate chain and key given; `url()` names `localhost`.
    pub fn start_tls(dir: PathBuf, cert_pem: &str, key_pem: &str) -> Result<Self, AuditError> {
        Self::start_with(dir, Some((cert_pem, key_pem)))
    }

    fn start_with(dir: PathBuf, tls: Option<(&str, &str)>) -> Result<Self, AuditError> {
        let (http_port, tcp_port) = (
            free_port().map_err(|e| AuditError::Io(e.to_string()))?,
            free_port().map_err(|e| AuditError::Io(e.to_string()))?,
        );
        let d = dir.display();
        let io = |e: std::io::Error| AuditError::Io(e.to_string());
        let listen = match tls {
            None => format!("<http_port>{http_port}</http_port>"),
            Some((cert, key)) => {
                std::fs::write(dir.join("server.crt"), cert).map_err(io)?;
                std::fs::write(dir.join("server.key"), key).map_err(io)?;
                format!(
                    "<https_port>{http_port}</https_port><openSSL><server>\
                     <certificateFile>{d}/server.crt</certificateFile><privateKeyFile>{d}/server.key</privateKeyFile>\
                     <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>\
                     <cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3</disableProtocols>\
                     <preferServerCiphers>true</preferServerCiphers></server></openSSL>"
                )
            }
        };
        std::fs::write(
            dir.join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?><yandex>\
                 <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>\
                 {listen}<tcp_port>{tcp_port}</tcp_port><listen_host>127.0.0.1</listen_host>\
                 <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><users_config>users.xml</users_config>\
                 <default_profile>default</default_profile><default_database>default</default_database>\
                 <mark_cache_size>5368709</mark_cache_size></yandex>"
            ),
        )
        .map_err(io)?;
        std::fs::write(
            dir.join("users.xml"),
            "<?xml version=\"1.0\"?><yandex><profiles><default></default></profiles>\
             <users><default><password></password><networks><ip>127.0.0.1</ip></networks>\
             <profile>default</profile><quota>default</quota></default></users>\
             <quotas><default></default></quotas></yandex>",
        )
        .map_err(io)?;
        let mut server = Self {
            dir,
            http_port,
            tls: tls.is_some(),
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts (again) on the same ports and data.
    pub fn spawn(&mut self) -> Result<(), AuditError> {
        let child = Command::new(binary()?)
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| AuditError::Io(e.to_string()))?;
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let up = if self.tls {
                TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
            } else {
                self.query("SELECT 1").is_ok()
            };
            if up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(AuditError::Io(
            "clickhouse-server did not start within 30 s".into(),
        ))
    }

    /// SIGKILL: no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        match self.tls {
            false => format!("http://127.0.0.1:{}", self.http_port),
            true => format!("https://localhost:{}", self.http_port),
        }
    }

    /// The server's error log (why it refused to start, for one).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Runs a query over the plain HTTP interface; returns the body,
    /// trimmed. (A TLS-only server is queried with `clickhouse::client`.)
    pub fn query(&self, sql: &str) -> Result<String, AuditError> {
        if self.tls {
            return Err(AuditError::ClickHouse(
                "a TLS-only test server: query it with clickhouse::client".into(),
            ));
        }
        let io = |e: std::io::Error| AuditError::Io(e.to_string());
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        )
        .map_err(io)?;
        let mut raw = Vec::new();
        // A local test server's bounded answer.
        #[allow(clippy::disallowed_methods)]
        s.read_to_end(&mut raw).map_err(io)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        if !head.starts_with("HTTP/1.1 200") {
            return Err(AuditError::ClickHouse(format!("{sql}: {}", body.trim())));
        }
        Ok(body.trim().to_string())
    }
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What an operator holding the node key and the disk can do: read the
/// store at `from`, let `edit` change its events, and write at `to` (which
/// may be `from`: the files are replaced) a self-consistent store — the
/// same events edited, a Merkle log over them, every checkpoint re-signed
/// with `signer` under `origin`. Returns the checkpoint sizes and the
/// store's co-signature lines, which the caller may copy back.
#[allow(clippy::type_complexity)] // (checkpoint sizes, co-signatures)
pub fn rebuild_signed(
    from: &std::path::Path,
    to: &std::path::Path,
    signer: &crate::NoteSigner,
    origin: &str,
    edit: impl FnOnce(&mut Vec<crate::AuditEvent>),
) -> Result<(Vec<u64>, Vec<(u64, String)>), AuditError> {
    let original = crate::Store::open_read_only(from)?;
    let mut events: Vec<crate::AuditEvent> = original
        .events()?
        .iter()
        .map(|e| crate::event::parse_canonical(e.json.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(AuditError::Corrupt)?;
    let sizes: Vec<u64> = original.checkpoints()?.iter().map(|(s, _)| *s).collect();
    let cosignatures = original.cosignatures()?;
    drop(original);
    edit(&mut events);
    for suffix in ["", "-wal", "-shm"] {
        let mut name = to.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(name));
    }
    let mut forged = crate::Store::open(to)?;
    let rows: Vec<_> = events.iter().map(crate::store::Row::of).collect();
    forged.append(&rows, &[], &[])?;
    let leaves: Vec<_> = rows.iter().map(|r| r.leaf).collect();
    for size in &sizes {
        let cp = crate::Checkpoint {
            origin: origin.to_string(),
            size: *size,
            root: crate::merkle::root(&leaves[..*size as usize]),
        };
        forged.put_checkpoint(*size, &cp.root, &signer.sign(&cp))?;
    }
    Ok((sizes, cosignatures))
}

/// Copies the store at `from` (its database file and its segments) to
/// `to`, for a test to tamper with the copy. The store must be closed.
pub fn copy_store(from: &std::path::Path, to: &std::path::Path) -> Result<(), AuditError> {
    let io = |e: std::io::Error| AuditError::Io(e.to_string());
    std::fs::copy(from, to).map_err(io)?;
    let (src, dst) = (crate::segments::dir_of(from), crate::segments::dir_of(to));
    std::fs::create_dir_all(&dst).map_err(io)?;
    for n in crate::segments::list(&src)? {
        let name = crate::segments::file_name(n);
        std::fs::copy(src.join(&name), dst.join(&name)).map_err(io)?;
    }
    Ok(())
}

/// What someone with write access to the data directory can do to one
/// stored event: replace its JSON with `edit(json)`. A row holding its
/// JSON inline is updated; an event in a segment has its record rewritten
/// with a valid CRC (the records after it in that segment move, and the
/// store is updated to match), so only the signed log can tell.
pub fn edit_event(
    db: &std::path::Path,
    seq: u64,
    edit: impl FnOnce(&str) -> String,
) -> Result<(), AuditError> {
    use std::os::unix::fs::FileExt;
    let io = |e: std::io::Error| AuditError::Io(e.to_string());
    let store = crate::Store::open(db)?;
    let conn = &store.conn;
    let (json, seg): (String, Option<i64>) = conn.query_row(
        "SELECT e.event, l.seg FROM ev e JOIN lattice_log l ON l.seq = e.seq WHERE e.seq = ?1",
        [seq as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(seg) = seg else {
        conn.execute(
            "UPDATE events SET event = ?1 WHERE seq = ?2",
            rusqlite::params![edit(&json), seq as i64],
        )?;
        return Ok(());
    };
    let path = crate::segments::dir_of(db).join(crate::segments::file_name(seg as u64));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    let (mut entries, end) = crate::journal::read_records(&file, 0).map_err(io)?;
    let entry = entries
        .iter_mut()
        .find(|e| e.seq == seq)
        .ok_or_else(|| AuditError::Corrupt(format!("event #{seq} is not in {}", path.display())))?;
    let text = String::from_utf8(std::mem::take(&mut entry.json))
        .map_err(|e| AuditError::Encoding(e.to_string()))?;
    entry.json = edit(&text).into_bytes();
    let mut buf = Vec::new();
    let mut moved = Vec::new();
    for e in &entries {
        moved.push((e.seq, buf.len() as u64));
        crate::journal::encode(e, &mut buf);
    }
    buf.resize(buf.len().max(end as usize), 0);
    file.write_all_at(&buf, 0).map_err(io)?;
    for (seq, off) in moved {
        let n = conn.execute(
            "UPDATE events SET off = ?1 WHERE seq = ?2",
            [off as i64, seq as i64],
        )?;
        if n == 0 {
            crate::store::blocks::update(conn, seq, |e, _| e.off = off)?;
        }
    }
    Ok(())
}

/// What someone with write access to the store can do: delete the event
/// `seq` (its row, or its entry in a block, with its leaf).
pub fn delete_event(db: &std::path::Path, seq: u64) -> Result<(), AuditError> {
    let store = crate::Store::open(db)?;
    let gone = store
        .conn
        .execute("DELETE FROM events WHERE seq = ?1", [seq as i64])?;
    if gone == 0 && !crate::store::blocks::remove(&store.conn, seq)? {
        return Err(AuditError::Corrupt(format!("event #{seq} is not stored")));
    }
    Ok(())
}

/// What someone with write access to the store can do: swap the events
/// `a` and `b` (each with its leaf and columns), in rows or in blocks.
pub fn swap_events(db: &std::path::Path, a: u64, b: u64) -> Result<(), AuditError> {
    use crate::store::blocks;
    let store = crate::Store::open(db)?;
    let conn = &store.conn;
    let rows: i64 = conn.query_row(
        "SELECT COUNT(*) FROM events WHERE seq IN (?1, ?2)",
        [a as i64, b as i64],
        |r| r.get(0),
    )?;
    if rows == 2 {
        conn.execute_batch(&format!(
            "UPDATE events SET seq = -1 WHERE seq = {a}; UPDATE events SET seq = {a} WHERE seq = {b}; UPDATE events SET seq = {b} WHERE seq = -1;"
        ))?;
        return Ok(());
    }
    // Each entry with its tenant (`update` files the tenant in its block).
    let entry = |seq: u64| -> Result<(blocks::Entry, String), AuditError> {
        let b = blocks::holding(conn, seq)?
            .ok_or_else(|| AuditError::Corrupt(format!("event #{seq} is not in a block")))?;
        let e = &b.entries[(seq - b.first) as usize];
        Ok((e.clone(), b.tenant(e).to_string()))
    };
    let (ea, eb) = (entry(a)?, entry(b)?);
    for (seq, (e, t)) in [(a, eb), (b, ea)] {
        blocks::update(conn, seq, |entry, tenant| {
            *entry = e;
            *tenant = t;
        })?;
    }
    Ok(())
}

/// What someone with write access to the store can do: overwrite the
/// Merkle leaf stored for the event `seq` with zeros.
pub fn zero_leaf(db: &std::path::Path, seq: u64) -> Result<(), AuditError> {
    let store = crate::Store::open(db)?;
    let n = store.conn.execute(
        "UPDATE events SET leaf = zeroblob(32) WHERE seq = ?1",
        [seq as i64],
    )?;
    if n == 0 && !crate::store::blocks::update(&store.conn, seq, |e, _| e.leaf = [0; 32])? {
        return Err(AuditError::Corrupt(format!("event #{seq} is not stored")));
    }
    Ok(())
}

/// What someone with write access to the store can do: overwrite a stored
/// subtree root (`store/nodes.rs`) with `hash`.
pub fn set_subtree_root(
    db: &std::path::Path,
    level: u32,
    index: u64,
    hash: &crate::merkle::Hash,
) -> Result<(), AuditError> {
    let store = crate::Store::open(db)?;
    let n = store.conn.execute(
        "UPDATE nodes SET hash = ?1 WHERE level = ?2 AND idx = ?3",
        rusqlite::params![&hash[..], level, index as i64],
    )?;
    if n == 0 {
        return Err(AuditError::Corrupt(format!(
            "no subtree root {index} of level {level} is stored"
        )));
    }
    Ok(())
}

/// A store as it was before it kept subtree roots: `nodes` emptied (the
/// next open for writing computes them again).
pub fn forget_subtree_roots(db: &std::path::Path) -> Result<(), AuditError> {
    let conn = rusqlite::Connection::open(db)?;
    conn.execute("DELETE FROM nodes", [])?;
    Ok(())
}

/// How many subtree roots of 2^`level` leaves the store keeps.
pub fn subtree_roots(db: &std::path::Path, level: u32) -> Result<u64, AuditError> {
    let conn = rusqlite::Connection::open(db)?;
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM nodes WHERE level = ?1",
        [level],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
