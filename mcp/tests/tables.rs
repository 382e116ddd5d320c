//! Protocol rules as tables: `tests/cases/stateless.toml` (the stateless
//! era's header checks) and `tests/cases/federation.toml` (federated tool
//! names and resource URIs, both ways).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_mcp::catalog::{federated_template, federated_uri, split_uri};
use lattice_mcp::session::{check_stateless, is_stateless, EraHeaders};
use lattice_mcp::tools::{federated_name, split_federated};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraCase {
    what: String,
    method: String,
    params: String,
    version: Option<String>,
    mcp_method: Option<String>,
    mcp_name: Option<String>,
    stateless: bool,
    ok: Option<bool>,
    code: Option<i64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct EraCases {
    case: Vec<EraCase>,
}

#[test]
fn stateless_requests_keep_their_era_rules() {
    let cases: EraCases = toml::from_str(include_str!("cases/stateless.toml")).unwrap();
    assert!(cases.case.len() >= 10);
    for c in cases.case {
        let params: serde_json::Value = serde_json::from_str(&c.params).unwrap();
        let headers = EraHeaders {
            protocol_version: c.version.clone(),
            method: c.mcp_method.clone(),
            name: c.mcp_name.clone(),
        };
        assert_eq!(
            is_stateless(&c.method, &params, &headers),
            c.stateless,
            "{}",
            c.what
        );
        if !c.stateless {
            continue;
        }
        match (check_stateless(&c.method, &params, &headers), c.ok) {
            (Ok(()), Some(true)) => {}
            (Err((code, message)), None) => {
                assert_eq!(Some(code), c.code, "{}: {message}", c.what);
                let part = c
                    .error
                    .as_deref()
                    .expect("a refused case names its message");
                assert!(message.contains(part), "{}: {message}", c.what);
            }
            (got, _) => panic!("{}: {got:?}", c.what),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    server: String,
    name: String,
    federated: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Federated {
    federated: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Uri {
    server: String,
    uri: String,
    federated: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    server: String,
    template: String,
    federated: String,
    expanded: BTreeMap<String, String>,
    original: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Federation {
    name: Vec<Name>,
    not_a_name: Vec<Federated>,
    uri: Vec<Uri>,
    template: Vec<Template>,
    not_a_uri: Vec<Federated>,
}

#[test]
fn federated_names_and_uris_map_to_one_server_and_back() {
    let t: Federation = toml::from_str(include_str!("cases/federation.toml")).unwrap();
    for n in &t.name {
        assert_eq!(federated_name(&n.server, &n.name), n.federated);
        assert_eq!(
            split_federated(&n.federated),
            Some((n.server.as_str(), n.name.as_str()))
        );
    }
    for n in &t.not_a_name {
        assert_eq!(split_federated(&n.federated), None, "{}", n.federated);
    }
    for u in &t.uri {
        assert_eq!(federated_uri(&u.server, &u.uri), u.federated);
        assert_eq!(
            split_uri(&u.federated),
            Some((u.server.clone(), u.uri.clone()))
        );
    }
    for tpl in &t.template {
        assert_eq!(
            federated_template(&tpl.server, &tpl.template),
            tpl.federated
        );
        let mut expanded = tpl.federated.clone();
        for (var, value) in &tpl.expanded {
            expanded = expanded.replace(&format!("{{{var}}}"), value);
        }
        assert_eq!(
            split_uri(&expanded),
            Some((tpl.server.clone(), tpl.original.clone()))
        );
    }
    for u in &t.not_a_uri {
        assert_eq!(split_uri(&u.federated), None, "{}", u.federated);
    }
}
