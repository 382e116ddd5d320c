//! The official registry API over a catalog (cursor pagination, search,
//! versions, errors), and `sync` from one Lattice registry to another on
//! loopback, signatures kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use lattice_registry::sign::{self, Trust, TrustedKey};
use lattice_registry::{api, Catalog, Entry, PublisherKey};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

fn server(name: &str, version: &str) -> Value {
    json!({
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": name, "description": format!("{name} server"), "version": version,
        "remotes": [{"type": "streamable-http", "url": format!("https://{}.example.com/mcp", name.replace('/', "-"))}]
    })
}

/// Seven servers (one of them in three versions) and the bundled kinds.
fn catalog() -> Catalog {
    let mut entries = Vec::new();
    for n in ["a", "b", "c", "d", "e", "f"] {
        entries.push(Entry::from_value(n, server(&format!("io.github.t/{n}"), "1.0.0")).unwrap());
    }
    for v in ["0.9.0", "1.1.0"] {
        entries.push(Entry::from_value(v, server("io.github.t/a", v)).unwrap());
    }
    Catalog::from_entries(entries).unwrap()
}

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_client_pages_through_every_server_with_cursors() {
    let r = api::router(Arc::new(catalog()));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v0.1/servers?limit=3&cursor={c}"),
            None => "/v0.1/servers?limit=3".into(),
        };
        let (s, body) = get(&r, &uri).await;
        assert_eq!(s, StatusCode::OK);
        pages += 1;
        for item in body["servers"].as_array().unwrap() {
            seen.push(format!(
                "{}@{}",
                item["server"]["name"].as_str().unwrap(),
                item["server"]["version"].as_str().unwrap()
            ));
            let official = &item["_meta"]["io.modelcontextprotocol.registry/official"];
            assert_eq!(official["status"], "active");
        }
        assert_eq!(
            body["metadata"]["count"],
            body["servers"].as_array().unwrap().len()
        );
        match body["metadata"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [
            "io.github.t/a@0.9.0",
            "io.github.t/a@1.0.0",
            "io.github.t/a@1.1.0",
            "io.github.t/b@1.0.0",
            "io.github.t/c@1.0.0",
            "io.github.t/d@1.0.0",
            "io.github.t/e@1.0.0",
            "io.github.t/f@1.0.0"
        ]
    );
    // /v0 answers the same.
    let (s, body) = get(&r, "/v0/servers?limit=100").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["servers"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn search_latest_and_versions() {
    let r = api::router(Arc::new(catalog()));
    let (_, body) = get(&r, "/v0.1/servers?search=T/A&version=latest").await;
    let names: Vec<(&str, bool)> = body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["server"]["version"].as_str().unwrap(),
                i["_meta"]["io.modelcontextprotocol.registry/official"]["isLatest"]
                    .as_bool()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("1.1.0", true)]);
    let (_, body) = get(&r, "/v0.1/servers?version=1.0.0").await;
    assert_eq!(body["servers"].as_array().unwrap().len(), 6);
    // Versions, newest first, with the name URL-encoded.
    let (s, body) = get(&r, "/v0.1/servers/io.github.t%2Fa/versions").await;
    assert_eq!(s, StatusCode::OK);
    let v: Vec<&str> = body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["server"]["version"].as_str().unwrap())
        .collect();
    assert_eq!(v, ["1.1.0", "1.0.0", "0.9.0"]);
    let (s, body) = get(&r, "/v0.1/servers/io.github.t%2Fa/versions/latest").await;
    assert_eq!(
        (s, body["server"]["version"].as_str().unwrap()),
        (StatusCode::OK, "1.1.0")
    );
    let (s, body) = get(&r, "/v0.1/servers/io.github.t%2Fa/versions/0.9.0").await;
    assert_eq!(
        (s, body["server"]["version"].as_str().unwrap()),
        (StatusCode::OK, "0.9.0")
    );
}

/// Each bad request: its status and error.
#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let r = api::router(Arc::new(catalog()));
    let cases = [
        (
            "/v0.1/servers?limit=0",
            400,
            "limit must be a whole number from 1 to 100",
        ),
        (
            "/v0.1/servers?limit=101",
            400,
            "limit must be a whole number from 1 to 100",
        ),
        (
            "/v0.1/servers?limit=ten",
            400,
            "limit must be a whole number from 1 to 100",
        ),
        (
            "/v0.1/servers?cursor=%%%",
            400,
            "invalid cursor: use the nextCursor of a listing",
        ),
        (
            "/v0.1/servers?updated_since=yesterday",
            400,
            "updated_since must be an RFC 3339 date-time",
        ),
        (
            "/v0.1/servers/io.github.t%2Fzzz/versions",
            404,
            "Server not found",
        ),
        (
            "/v0.1/servers/io.github.t%2Fa/versions/9.9.9",
            404,
            "Server version not found",
        ),
        (
            "/v0.1/lattice/widgets",
            404,
            "no kind `widgets`: the kinds are servers, policy-packs, model-presets, templates",
        ),
        ("/v0.2/servers", 404, "not found"),
    ];
    for (uri, status, error) in cases {
        let (s, body) = get(&r, uri).await;
        assert_eq!(
            (s.as_u16(), body["error"].as_str().unwrap()),
            (status, error),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn lattice_kinds_are_listed_in_the_same_shape() {
    let r = api::router(Arc::new(Catalog::bundled().unwrap()));
    let (s, body) = get(&r, "/v0.1/lattice/policy-packs?limit=2").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["entries"].as_array().unwrap().len(), 2);
    assert!(body["metadata"]["nextCursor"].is_string());
    let (s, body) = get(
        &r,
        "/v0.1/lattice/model-presets/dev.lattice%2Fvllm/versions/latest",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["entry"]["name"], "dev.lattice/vllm");
    // Servers are in the official listing only once each.
    let (_, body) = get(&r, "/v0.1/servers").await;
    assert_eq!(body["servers"].as_array().unwrap().len(), 4);
}

async fn serve(catalog: Catalog) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, api::router(Arc::new(catalog)))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn sync_copies_entries_with_their_signatures_and_refuses_bad_ones() {
    let key = PublisherKey::generate("Acme");
    let mut entries = Vec::new();
    for i in 0..130 {
        let mut d = server(&format!("io.github.acme/s{i:03}"), "1.0.0");
        key.sign(&mut d).unwrap();
        entries.push(Entry::from_value("remote", d).unwrap());
    }
    let remote = Catalog::bundled()
        .unwrap()
        .merged(&Catalog::from_entries(entries).unwrap())
        .unwrap();
    let url = serve(remote.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let report = lattice_registry::sync::sync(&url, dir.path())
        .await
        .unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(report.added.len(), remote.entries().len());
    let local = Catalog::load_dir(dir.path()).unwrap();
    assert_eq!(local.entries().len(), remote.entries().len());
    let trusted = [TrustedKey::new("Acme", &key.public(), vec!["io.github.acme".into()]).unwrap()];
    for e in local.entries() {
        let theirs = remote.get(&e.name, Some(&e.version)).unwrap();
        assert_eq!(e.doc, theirs.doc, "{}", e.id());
        if e.name.starts_with("io.github.acme/") {
            assert_eq!(
                sign::verify(e, &trusted),
                Trust::Trusted {
                    publisher: "Acme".into()
                }
            );
        }
    }
    // Again: nothing new.
    let again = lattice_registry::sync::sync(&url, dir.path())
        .await
        .unwrap();
    assert_eq!(
        (again.added.len(), again.unchanged),
        (0, remote.entries().len())
    );
}

#[tokio::test]
async fn sync_refuses_an_invalid_entry_and_a_changed_version() {
    // A registry (not Lattice's) that serves one valid, one invalid entry.
    let good = server("io.github.x/good", "1.0.0");
    let mut bad = server("io.github.x/bad", "1.0.0");
    bad["description"] = json!("");
    let listing = json!({"servers": [{"server": good}, {"server": bad}], "metadata": {"count": 2}});
    let app = axum::Router::new().route(
        "/v0.1/servers",
        axum::routing::get(move || {
            let l = listing.clone();
            async move { axum::Json(l) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let report = lattice_registry::sync::sync(&url, dir.path())
        .await
        .unwrap();
    assert_eq!(report.added, ["io.github.x/good@1.0.0"]);
    assert_eq!(report.refused.len(), 1);
    assert!(
        report.refused[0].starts_with(&format!("{url}/v0.1/servers?limit=100: io.github.x/bad@1.0.0 does not match the server schema:\n  /description: \"\" is shorter than 1 character")),
        "{}",
        report.refused[0]
    );
    // The copy on disk is changed by hand: the next sync keeps it and says so.
    let file = dir.path().join("servers/io.github.x%2Fgood@1.0.0.json");
    let mut local: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    local["description"] = json!("changed");
    std::fs::write(&file, local.to_string()).unwrap();
    let report = lattice_registry::sync::sync(&url, dir.path())
        .await
        .unwrap();
    assert!(report.refused.iter().any(|r| r == "io.github.x/good@1.0.0: differs from the copy synced before (a published version must not change); kept the earlier copy"), "{:?}", report.refused);
}
