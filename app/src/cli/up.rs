//! `lattice up`: the quick start. Writes the starter config, policies and
//! policy tests (from `examples/quickstart/`) when no `lattice.toml` exists,
//! creates a demo agent key, prints how to call the gateway, then serves.

use anyhow::Context;
use lattice_gateway::state::StateStore;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

const CONFIG: &str = include_str!("../../../examples/quickstart/lattice.toml");
const POLICIES: &str = include_str!("../../../examples/quickstart/policies/starter.cedar");
const POLICY_TESTS: &str = include_str!("../../../examples/quickstart/policies/starter.tests.toml");

pub fn run(dir: &Path, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let config_path = dir.join("lattice.toml");
    let fresh = !config_path.exists();
    if fresh {
        std::fs::create_dir_all(dir.join("policies"))?;
        let demo = SocketAddr::new(listen.ip(), listen.port().wrapping_add(1));
        let config = CONFIG
            .replace(
                "listen = \"127.0.0.1:8080\"",
                &format!("listen = \"{listen}\""),
            )
            .replace("127.0.0.1:8081", &demo.to_string());
        std::fs::write(&config_path, config)?;
        std::fs::write(dir.join("policies/starter.cedar"), POLICIES)?;
        std::fs::write(dir.join("policies/starter.tests.toml"), POLICY_TESTS)?;
        eprintln!(
            "wrote {} and policies/ (starter set)",
            config_path.display()
        );
    }
    let config = lattice_gateway::config::load(&config_path)?;
    let url = format!("http://{}", config.server.listen);
    let store = StateStore::open(&config.server.data_dir)?;
    // A key for `name` unless one is active: the new secret, shown once.
    let ensure = |kind, name: &str, role: &str| -> anyhow::Result<Option<String>> {
        let active = store
            .keys()?
            .iter()
            .any(|(_, k)| k.agent == name && k.revoked_us.is_none());
        if active {
            return Ok(None);
        }
        Ok(Some(
            store
                .create_key(kind, name, "default", &[role.into()], &[])?
                .1,
        ))
    };
    let key = ensure(lattice_policy::PrincipalKind::Agent, "demo-agent", "agent")?;
    let admin_key = ensure(lattice_policy::PrincipalKind::Human, "admin", "admin")?;
    drop(store);
    println!("\nLattice is starting at {url}\n");
    match &key {
        Some(k) => {
            println!("Demo agent API key (shown only now; stored hashed):\n\n  {k}\n");
            println!("Allowed (the starter policy lets agents GET demo routes):\n");
            println!("  curl -s -H 'Authorization: Bearer {k}' {url}/tools/echo/hello\n");
            println!("Denied with 403 (policy `no-deletes`), the body names the decision id:\n");
            println!(
                "  curl -s -X DELETE -H 'Authorization: Bearer {k}' {url}/tools/echo/orders/1\n"
            );
            println!("Chat with the demo model through the OpenAI-compatible API (any OpenAI SDK works):\n");
            println!(
                "  curl -s -H 'Authorization: Bearer {k}' -H 'Content-Type: application/json' {url}/v1/chat/completions -d '{{\"model\":\"demo-echo\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n"
            );
        }
        None => {
            println!("The demo agent's key was shown when it was created. Make another with:\n");
            println!(
                "  lattice keys create --agent demo-agent --role agent -c {}\n",
                config_path.display()
            );
        }
    }
    println!(
        "Audit trail:   lattice audit tail -c {0}   |   lattice audit verify -c {0}",
        config_path.display()
    );
    println!("Metrics:       {url}/metrics\n");
    match &admin_key {
        Some(k) => println!(
            "Workbench:     {url}/ui/  (log in as the human `admin` with this key, shown only now:)\n\n  {k}\n"
        ),
        None => println!(
            "Workbench:     {url}/ui/  (make a login key with: lattice keys create --human NAME --role admin -c {})\n",
            config_path.display()
        ),
    }
    super::serve(&config_path)
}
