//! Tests of parsing, validating and building a gateway config: each
//! accepted form with its defaults, each refusal with its exact message.
//!
//! Must never: touch the filesystem (configs are given as text).

use super::*;

const MINIMAL: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n[policy]\nfiles = [\"p.cedar\"]\n";

#[test]
fn minimal_config_parses_with_defaults() {
    let c = parse(Path::new("/etc/lattice/lattice.toml"), MINIMAL).unwrap();
    assert_eq!(c.server.max_body_bytes, 1024 * 1024);
    assert_eq!(c.policy.files, vec![PathBuf::from("/etc/lattice/p.cedar")]);
    assert_eq!(c.audit.on_full, OnFull::Deny);
    assert_eq!(c.audit.durability, Durability::Durable);
    assert_eq!(c.audit.durable_timeout, Duration::from_secs(5));
    assert!(c.auth.api_keys);
}

#[test]
fn the_replica_example_parses_and_cluster_settings_name_what_is_wrong() {
    // Without what this machine lacks: the environment variable, the
    // certificate files.
    let example: String = include_str!("../../../examples/replicas/replica.toml")
        .lines()
        .filter(|l| {
            ![
                "password_env",
                "[server.tls]",
                "cert_file",
                "key_file",
                "ca_file",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let c = parse(Path::new("/etc/lattice/lattice.toml"), &example).unwrap();
    let redis = c.cluster.redis.as_ref().unwrap();
    assert_eq!(redis.url, "rediss://redis.internal:6380/0");
    assert_eq!(redis.timeout, Duration::from_millis(250));
    assert_eq!(c.llm.limits.len(), 2);
    let with = |cluster: &str| format!("{MINIMAL}[cluster]\n{cluster}\n");
    for (cluster, message) in [
        (
            "redis = \"http://r:6379\"",
            "is not a redis:// or rediss:// URL",
        ),
        (
            "redis = \"redis://:secret@r:6379\"",
            "must not carry a password",
        ),
        (
            "redis = \"redis://r\"\npassword_env = \"LATTICE_TEST_UNSET_VAR_7\"",
            "names `LATTICE_TEST_UNSET_VAR_7`, which is not set",
        ),
        (
            "redis = \"redis://r\"\nca_file = \"ca.pem\"",
            "cluster.ca_file needs a rediss:// URL",
        ),
        ("password_env = \"X\"", "need cluster.redis"),
        (
            "redis = \"redis://r\"\nkey_prefx = \"x\"",
            "unknown field `key_prefx`",
        ),
    ] {
        let err = parse(Path::new("l.toml"), &with(cluster))
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{cluster}: {err}");
    }
}

#[test]
fn server_edge_bounds_have_defaults_and_refuse_zero() {
    let c = parse(Path::new("l.toml"), MINIMAL).unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.server.max_connections_per_client, 1024);
    assert_eq!(c.server.keepalive_idle_timeout_s, 60);
    let with = |line: &str| MINIMAL.replacen("\n[policy]", &format!("\n{line}\n[policy]"), 1);
    // (line, Ok((header ms, connections)) or Err(message))
    type Want = Result<(u64, u64), &'static str>;
    let cases: &[(&str, Want)] = &[
        ("header_read_timeout_ms = 500", Ok((500, 1024))),
        ("max_connections_per_client = 8", Ok((10_000, 8))),
        (
            "max_connections_per_client = 0",
            Err("server.max_connections_per_client must be positive"),
        ),
        (
            "header_read_timout_ms = 5",
            Err("unknown field `header_read_timout_ms`"),
        ),
    ];
    for (line, want) in cases {
        let got = parse(Path::new("l.toml"), &with(line));
        match (got, want) {
            (Ok(c), Ok((ms, conns))) => assert_eq!(
                (
                    c.server.header_read_timeout.as_millis() as u64,
                    c.server.max_connections_per_client
                ),
                (*ms, *conns),
                "{line}"
            ),
            (Err(e), Err(m)) => assert!(e.to_string().contains(m), "{line}: {e}"),
            (got, _) => panic!("{line}: {got:?}"),
        }
    }
}

#[test]
fn a_command_rule_allows_its_program_with_whole_matching_arguments_only() {
    let rule = CommandRule {
        program: "/usr/bin/npx".into(),
        args: vec!["-y".into(), "@modelcontextprotocol/server-[a-z-]+".into()],
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (program, given, allowed) in [
        (
            "/usr/bin/npx",
            args(&["-y", "@modelcontextprotocol/server-memory"]),
            true,
        ),
        (
            "npx",
            args(&["-y", "@modelcontextprotocol/server-memory"]),
            false,
        ),
        (
            "/usr/bin/npx",
            args(&["-y", "@modelcontextprotocol/server-memory; rm -rf /"]),
            false,
        ),
        (
            "/usr/bin/npx",
            args(&["-y", "x@modelcontextprotocol/server-memory"]),
            false,
        ),
        ("/usr/bin/npx", args(&["-y"]), false),
        (
            "/usr/bin/npx",
            args(&["-y", "@modelcontextprotocol/server-memory", "--extra"]),
            false,
        ),
        ("/bin/sh", args(&["-c", "touch x"]), false),
    ] {
        assert_eq!(rule.allows(program, &given), allowed, "{program} {given:?}");
    }
    let text = format!("{MINIMAL}[[mcp.allow_commands]]\nprogram = \"/bin/x\"\nargs = [\"(\"]\n");
    let err = parse(Path::new("lattice.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mcp.allow_commands `/bin/x`: pattern `(`"),
        "{err}"
    );
}

#[test]
fn audit_retention_reads_ages_and_sizes_and_names_what_is_wrong() {
    let day = Duration::from_secs(86_400);
    for (body, expected) in [
        ("max_age = \"30d\"", Ok((Some(30 * day), None))),
        (
            "max_age = \"12h\"\nmax_size = \"2GiB\"",
            Ok((Some(Duration::from_secs(43_200)), Some(2u64 << 30))),
        ),
        ("max_size = \"500MB\"", Ok((None, Some(500_000_000)))),
        ("max_size = \"64KiB\"", Ok((None, Some(65_536)))),
        (
            "max_age = \"30 days\"",
            Err("audit.retention.max_age: `30 days`: the unit must be one of s, m, h, d"),
        ),
        (
            "max_age = \"0d\"",
            Err("audit.retention.max_age: `0d` must be more than zero"),
        ),
        (
            "max_size = \"lots\"",
            Err("audit.retention.max_size: `lots` is not a size"),
        ),
        (
            "max_size = \"5TB\"",
            Err("the unit must be one of B, KB, MB, GB, KiB, MiB, GiB"),
        ),
        ("", Err("[audit.retention] needs max_age, max_size or both")),
        ("max_rows = 5", Err("unknown field `max_rows`")),
    ] {
        let text = format!("{MINIMAL}[audit.retention]\n{body}\n");
        let got = parse(Path::new("lattice.toml"), &text)
            .map(|c| (c.audit.retention.max_age, c.audit.retention.max_bytes))
            .map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{body}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{body}: {got}"),
            (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn audit_durability_is_durable_or_async_and_nothing_else() {
    for (value, expected) in [
        ("\"durable\"", Ok(Durability::Durable)),
        ("\"async\"", Ok(Durability::Async)),
        (
            "\"fast\"",
            Err("unknown variant `fast`, expected `durable` or `async`"),
        ),
    ] {
        let text = format!("{MINIMAL}[audit]\ndurability = {value}\n");
        let got = parse(Path::new("lattice.toml"), &text)
            .map(|c| c.audit.durability)
            .map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => {
                assert!(
                    got.contains(want) && got.contains("lattice.toml:6:"),
                    "{got}"
                )
            }
            (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn unknown_key_is_rejected_with_file_and_line() {
    let text = format!("{MINIMAL}[audit]\nqueue_capacity = 5\nqueue_capacty = 6\n");
    let err = parse(Path::new("x/lattice.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("x/lattice.toml:7:"), "{err}");
    assert!(err.contains("unknown field `queue_capacty`"), "{err}");
}

#[test]
fn route_validation() {
    let text = format!("{MINIMAL}[[routes]]\nname = \"w\"\nupstream = \"ftp://x\"\n");
    let err = parse(Path::new("l.toml"), &text).unwrap_err().to_string();
    assert!(err.contains("must start with http://"), "{err}");
    let text = format!("{MINIMAL}[[routes]]\nname = \"w\"\nupstream = \"http://127.0.0.1:9/api/\"\n[routes.credential]\nheader = \"x-api-key\"\nvalue = \"s3cret\"\n");
    let c = parse(Path::new("l.toml"), &text).unwrap();
    let r = &c.routes[0];
    assert_eq!(r.upstream.base_path, "/api");
    assert_eq!(r.upstream.port, 9);
    assert_eq!(r.credential.as_ref().unwrap().1, "s3cret");
}

#[test]
fn mcp_servers_need_one_transport_and_pass_the_egress_check() {
    let with = |server: &str| format!("{MINIMAL}[[mcp_servers]]\nname = \"s\"\n{server}");
    let err = |server: &str| {
        parse(Path::new("l.toml"), &with(server))
            .unwrap_err()
            .to_string()
    };
    assert!(err("").contains("exactly one of command and url"));
    assert!(err("command = \"x\"\nurl = \"http://a.example/mcp\"\n").contains("exactly one"));
    for private in [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.5",
        "169.254.169.254",
        "localhost",
        "[::1]",
        "[fd00::1]",
        // Every textual form of loopback an HTTP client accepts.
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "0",
    ] {
        let e = err(&format!("url = \"http://{private}:8080/mcp\"\n"));
        assert!(e.contains("allow_private_network"), "{private}: {e}");
    }
    let ok = parse(
        Path::new("l.toml"),
        &with("url = \"http://127.0.0.1:9/mcp\"\nallow_private_network = true\n"),
    )
    .unwrap();
    assert!(matches!(
        ok.mcp_servers[0].transport,
        McpTransport::Http { .. }
    ));
    let ok = parse(
        Path::new("l.toml"),
        &with("url = \"https://mcp.example.com/mcp\"\n"),
    )
    .unwrap();
    assert!(matches!(
        ok.mcp_servers[0].transport,
        McpTransport::Http { .. }
    ));
    assert!(err("command = \"x\"\nheaders = { a = \"b\" }\n").contains("url servers only"));
    let bad_name = format!("{MINIMAL}[[mcp_servers]]\nname = \"Bad_Name\"\ncommand = \"x\"\n");
    assert!(parse(Path::new("l.toml"), &bad_name)
        .unwrap_err()
        .to_string()
        .contains("must be 1-32"));
}

#[test]
fn jwt_issuer_needs_audience_and_one_key_source() {
    let text =
        format!("{MINIMAL}[[auth.jwt]]\nissuer = \"i\"\naudiences = []\njwks_file = \"k\"\n");
    assert!(parse(Path::new("l.toml"), &text)
        .unwrap_err()
        .to_string()
        .contains("audience"));
    let text = format!("{MINIMAL}[[auth.jwt]]\nissuer = \"i\"\naudiences = [\"a\"]\n");
    assert!(parse(Path::new("l.toml"), &text)
        .unwrap_err()
        .to_string()
        .contains("exactly one"));
}
