//! The egress guard, end to end: run-time registrations (admin API) of MCP
//! servers and model backends cannot reach a private address by any
//! spelling of it, nor by a name that resolves to one, nor by asking for
//! `allow_private_network`; an address the operator lists in `[egress]
//! allow` works (applied by a hot reload). At connect time, a name in the
//! config file that resolves to a private address is refused too, until it
//! is listed.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

fn hostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn post(gw: &Gateway, admin: &str, path: &str, body: &Value) -> Resp {
    gw.post_json(path, admin, body)
}

fn message(r: &Resp) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn server(name: &str, url: &str) -> Value {
    json!({"name": name, "url": url})
}

fn model(name: &str, url: &str) -> Value {
    json!({
        "backends": [{"name": format!("{name}-b"), "kind": "vllm", "url": url}],
        "models": [{"name": name, "backends": [format!("{name}-b")], "labels": ["demo"], "upstream_model": "m"}],
    })
}

#[test]
fn run_time_upstreams_reach_no_private_address_by_any_spelling_unless_the_operator_allows_it() {
    let mcp = Peer::start("lattice-mock-mcp", &[]);
    let llm = Peer::start("lattice-mock-vllm", &["--name", "eg", "--model", "m"]);
    let mut gw = Gateway::start("");
    let admin = bearer(&gw.create_key("ops", &["admin"]));
    let host = hostname();
    let forms = [
        ("127.1", "127.0.0.1 is loopback"),
        ("2130706433", "127.0.0.1 is loopback"),
        ("0x7f000001", "127.0.0.1 is loopback"),
        ("0177.0.0.1", "127.0.0.1 is loopback"),
        ("[::ffff:127.0.0.1]", "is loopback"),
        (
            "169.254.169.254",
            "169.254.169.254 is link-local (cloud metadata",
        ),
        ("localhost", "`localhost` is loopback"),
        (host.as_str(), "resolves to it"),
    ];
    for (i, (h, rule)) in forms.iter().enumerate() {
        let r = post(
            &gw,
            &admin,
            "/admin/v1/mcp/servers",
            &server(&format!("s{i}"), &format!("http://{h}:{}/mcp", mcp.port)),
        );
        assert_eq!(r.status, 400, "{h}: {}", r.body);
        assert!(
            message(&r).contains("egress refused") && message(&r).contains(rule),
            "{h}: {}",
            r.body
        );
        let r = post(
            &gw,
            &admin,
            "/admin/v1/models",
            &model(&format!("m{i}"), &format!("http://{h}:{}", llm.port)),
        );
        assert_eq!(r.status, 400, "{h}: {}", r.body);
        assert!(
            message(&r).contains("egress refused") && message(&r).contains(rule),
            "{h}: {}",
            r.body
        );
    }
    // A registration may not ask for the config file's exemption.
    let mut asks = server("asks", &format!("http://127.0.0.1:{}/mcp", mcp.port));
    asks["allow_private_network"] = true.into();
    let r = post(&gw, &admin, "/admin/v1/mcp/servers", &asks);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        message(&r).contains("allow_private_network can be set in the config file only"),
        "{}",
        r.body
    );
    // Every refusal is in the audit trail, with its reason.
    let refused = gw
        .filled_store()
        .events()
        .unwrap()
        .iter()
        .filter(|e| {
            e.json.contains("egress refused") || e.json.contains("allow_private_network can be set")
        })
        .count();
    assert!(refused > 2 * forms.len(), "{refused} refusals audited");

    // The operator lists 127.0.0.1: the same upstreams register and serve.
    let config = std::fs::read_to_string(gw.config()).unwrap();
    std::fs::write(
        gw.config(),
        format!("{config}\n[egress]\nallow = [\"127.0.0.1\"]\n"),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{}/mcp", mcp.port);
    wait_for("the allow list to apply", Duration::from_secs(10), || {
        post(&gw, &admin, "/admin/v1/mcp/servers", &server("mock", &url)).status == 200
    });
    let r = post(
        &gw,
        &admin,
        "/admin/v1/models",
        &model("local-model", &format!("http://127.0.0.1:{}", llm.port)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let agent = bearer(&gw.create_key("agent-eg", &["agent"]));
    let chat = json!({"model": "local-model", "messages": [{"role": "user", "content": "hi"}]});
    wait_for("the run-time backend", Duration::from_secs(10), || {
        gw.post_json("/v1/chat/completions", &agent, &chat).status == 200
    });
    wait_for("the run-time MCP server", Duration::from_secs(20), || {
        let r = http(
            gw.port,
            "GET",
            "/admin/v1/mcp/servers",
            &[("Authorization", &admin)],
            b"",
        )
        .unwrap();
        r.json()["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "mock" && s["running"] == true)
    });
    // What the list does not name is still refused.
    let r = post(
        &gw,
        &admin,
        "/admin/v1/models",
        &model("meta", "http://169.254.169.254"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let _ = gw.stop();
}

#[test]
fn a_config_file_name_that_resolves_to_a_private_address_is_refused_at_connect_time_until_listed() {
    let upstream = Upstream::start();
    let host = hostname();
    let routes = format!(
        "[[routes]]\nname = \"named\"\nupstream = \"http://{host}:{}/base\"\nlabels = [\"demo\"]\ntimeout_ms = 3000\n",
        upstream.port
    );
    let mut gw = Gateway::start(&routes);
    let agent = bearer(&gw.create_key("agent-n", &["agent"]));
    let r = gw.get("/tools/named/x", &agent);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(gw.log().contains("egress refused"), "{}", gw.log());
    let config = std::fs::read_to_string(gw.config()).unwrap();
    std::fs::write(
        gw.config(),
        format!("{config}\n[egress]\nallow = [\"{host}\"]\n"),
    )
    .unwrap();
    wait_for(
        "the listed name to be reached",
        Duration::from_secs(10),
        || gw.get("/tools/named/x", &agent).status == 200,
    );
    let _ = gw.stop();
}
