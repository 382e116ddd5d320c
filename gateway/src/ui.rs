//! Serves the workbench (the yew console, `workbench/`) at `/ui/`: static
//! files embedded at build time, with a strict Content-Security-Policy (own
//! scripts and WebAssembly only, no inline script, no framing). The files
//! hold no data: everything the console shows comes from the admin API and
//! `/v1/`, authenticated and authorized per call.
//!
//! Must never: serve a file without its CSP, or hold data.

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Result;

include!(concat!(env!("OUT_DIR"), "/workbench_assets.rs"));

const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// The gzip copy of a file, when the build made one.
pub fn gzipped(path: &str) -> Option<Bytes> {
    let name = path.strip_prefix("/ui/")?;
    let gz = format!("{name}.gz");
    ASSETS
        .iter()
        .find(|(n, _)| *n == gz)
        .map(|(_, b)| Bytes::from_static(b))
}

/// The response to a `/ui` path: (status, content type, body, redirect).
pub fn lookup(path: &str) -> (u16, &'static str, Bytes, Option<&'static str>) {
    if path == "/ui" {
        return (
            308,
            "text/plain",
            Bytes::from_static(b"/ui/\n"),
            Some("/ui/"),
        );
    }
    let name = match path.strip_prefix("/ui/") {
        Some("") => "index.html",
        Some(n) => n,
        None => return (404, "text/plain", Bytes::from_static(b"not found\n"), None),
    };
    if ASSETS.is_empty() {
        return (
            503,
            "text/plain; charset=utf-8",
            Bytes::from_static(
                b"The workbench is not built into this binary: run scripts/build-workbench, then rebuild lattice.\n",
            ),
            None,
        );
    }
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((n, bytes)) => (200, content_type(n), Bytes::from_static(bytes), None),
        None => (404, "text/plain", Bytes::from_static(b"not found\n"), None),
    }
}

/// Writes the answer to a `/ui` request.
pub(crate) async fn serve(session: &mut Session, path: &str) -> Result<()> {
    let (status, ctype, mut body, location) = lookup(path);
    let accepts_gzip = session
        .req_header()
        .headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut gzip = false;
    if status == 200 && accepts_gzip {
        if let Some(gz) = gzipped(path) {
            (body, gzip) = (gz, true);
        }
    }
    let mut extra = vec![
        ("vary", "accept-encoding".to_string()),
        ("content-security-policy", CSP.to_string()),
        ("x-content-type-options", "nosniff".to_string()),
        ("x-frame-options", "DENY".to_string()),
        ("referrer-policy", "no-referrer".to_string()),
        ("cache-control", "no-cache".to_string()),
    ];
    if gzip {
        extra.push(("content-encoding", "gzip".to_string()));
    }
    if let Some(l) = location {
        extra.push(("location", l.to_string()));
    }
    crate::respond::plain(session, status, ctype, body, &extra).await
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn ui_paths() {
        assert_eq!(lookup("/ui").0, 308);
        assert_eq!(lookup("/ui").3, Some("/ui/"));
        let (status, ctype, _, _) = lookup("/ui/");
        if super::ASSETS.is_empty() {
            assert_eq!(status, 503);
        } else {
            assert_eq!((status, ctype), (200, "text/html; charset=utf-8"));
            assert_eq!(lookup("/ui/nope.js").0, 404);
            // The wasm has a gzip copy (the browser test loads it).
            let (_, ctype, wasm, _) = lookup("/ui/lattice_workbench_bg.wasm");
            assert_eq!(ctype, "application/wasm");
            let gz = super::gzipped("/ui/lattice_workbench_bg.wasm").unwrap();
            assert!(gz.len() < wasm.len() / 2);
            assert_eq!(&gz[..2], &[0x1f, 0x8b]);
            assert_eq!(lookup("/ui/../Cargo.toml").0, 404);
        }
    }
}
