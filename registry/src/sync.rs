//! `lattice registry sync --from URL`: every entry of a registry that
//! speaks the official API (any MCP registry; Lattice's other kinds when
//! it is a Lattice registry), page by page, into a catalog directory.
//! Each entry is validated as if read from a file and written exactly as
//! published, signature included; an entry the schema refuses is reported
//! and skipped, never written.
//!
//! Must never: overwrite a synced version with a different document (a
//! published version does not change: that is reported as refused), or
//! follow cursors forever.

use crate::catalog::Catalog;
use crate::entry::{Entry, Kind};
use crate::{RegistryError, Result};
use serde_json::Value;
use std::path::Path;

/// A page of this many entries is asked for.
const PAGE: usize = 100;
/// Pages read at most from one listing.
const MAX_PAGES: usize = 10_000;
/// A response body larger than this is refused.
const MAX_BODY: usize = 32 << 20;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `name@version` of each entry written.
    pub added: Vec<String>,
    pub unchanged: usize,
    /// Why each refused entry was refused.
    pub refused: Vec<String>,
}

async fn page(client: &reqwest::Client, url: &str) -> Result<Option<Value>> {
    let remote = |message: String| RegistryError::Remote {
        url: url.to_string(),
        message,
    };
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| remote(e.to_string()))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(remote(format!("answered {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n as usize > MAX_BODY) {
        return Err(remote(format!("a page larger than {MAX_BODY} bytes")));
    }
    let body = resp.bytes().await.map_err(|e| remote(e.to_string()))?;
    if body.len() > MAX_BODY {
        return Err(remote(format!("a page larger than {MAX_BODY} bytes")));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| remote(format!("not a registry listing: {e}")))
}

/// Copies every entry of the registry at `base` into `dir`.
pub async fn sync(base: &str, dir: &Path) -> Result<Report> {
    let base = base.trim_end_matches('/');
    let existing = if dir.exists() {
        Catalog::load_dir(dir)?
    } else {
        Catalog::default()
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| RegistryError::Remote {
            url: base.to_string(),
            message: e.to_string(),
        })?;
    let mut report = Report::default();
    for kind in Kind::ALL {
        // Servers where every MCP registry lists them; Lattice's other
        // kinds in the same shape under `/v0.1/lattice/`.
        let (path, list_key, key) = match kind {
            Kind::Server => ("/v0.1/servers".to_string(), "servers", "server"),
            _ => (
                format!("/v0.1/lattice/{}", kind.plural()),
                "entries",
                "entry",
            ),
        };
        let mut cursor: Option<String> = None;
        for n in 0.. {
            if n == MAX_PAGES {
                return Err(RegistryError::Remote {
                    url: format!("{base}{path}"),
                    message: format!("more than {MAX_PAGES} pages"),
                });
            }
            let mut url = format!("{base}{path}?limit={PAGE}");
            if let Some(c) = &cursor {
                url.push_str("&cursor=");
                url.push_str(
                    &percent_encoding::utf8_percent_encode(c, percent_encoding::NON_ALPHANUMERIC)
                        .to_string(),
                );
            }
            let Some(listing) = page(&client, &url).await? else {
                // A registry without this kind (an MCP registry has only
                // servers).
                if kind == Kind::Server {
                    return Err(RegistryError::Remote {
                        url,
                        message: "has no /v0.1/servers: not a registry".into(),
                    });
                }
                break;
            };
            for item in listing[list_key].as_array().into_iter().flatten() {
                take(&existing, dir, &url, kind, &item[key], &mut report)?;
            }
            let next = listing["metadata"]["nextCursor"]
                .as_str()
                .map(str::to_string);
            if next.is_none() || next == cursor {
                break;
            }
            cursor = next;
        }
    }
    Ok(report)
}

fn take(
    existing: &Catalog,
    dir: &Path,
    origin: &str,
    kind: Kind,
    doc: &Value,
    report: &mut Report,
) -> Result<()> {
    let entry = match Entry::from_value(origin, doc.clone()) {
        Ok(e) if e.kind == kind => e,
        Ok(e) => {
            report.refused.push(format!(
                "{}: a {} listed among {}",
                e.id(),
                e.kind,
                kind.plural()
            ));
            return Ok(());
        }
        Err(e) => {
            report.refused.push(e.to_string());
            return Ok(());
        }
    };
    match existing.get(&entry.name, Some(&entry.version)) {
        Some(have) if have.doc == entry.doc => report.unchanged += 1,
        Some(_) => report.refused.push(format!(
            "{}: differs from the copy synced before (a published version must not change); kept the earlier copy",
            entry.id()
        )),
        None => {
            Catalog::write_entry(dir, &entry)?;
            report.added.push(entry.id());
        }
    }
    Ok(())
}
