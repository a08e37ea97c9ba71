//! Beside the flow (DESIGN.md, "Configuration"): unit tests of loading and validation.

use super::validate::parse_endpoint;
use super::*;

const MINIMAL: &str = r#"
[upstream.groups.primary]
endpoints = ["ws://127.0.0.1:7001"]

[tenants.acme]
auth = { kind = "none" }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &HashMap::new())
}

fn invalid_keys(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid(list)) => list.into_iter().map(|i| i.key).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn minimal_config_takes_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen.address, DEFAULT_LISTEN_ADDRESS.parse().unwrap());
    assert_eq!(c.admin.address, DEFAULT_ADMIN_ADDRESS.parse().unwrap());
    assert_eq!(
        c.identity.sources,
        vec![
            IdentitySource::Path,
            IdentitySource::Header,
            IdentitySource::Host
        ]
    );
    assert_eq!(c.upstream.handshake_timeout, Duration::from_secs(3));
    assert_eq!(c.upstream.max_pause, Duration::from_secs(300));
    let acme = &c.tenants["acme"];
    assert_eq!(acme.limits, c.defaults);
    assert_eq!(acme.limits.max_sessions, 100);
    assert_eq!(acme.group.name, "primary");
    assert!(c.edge.is_none());
    assert!(c.default_tenant.is_none());
}

#[test]
fn tenant_inherits_defaults_and_overrides_some() {
    let c = parse(&format!(
        "{MINIMAL}\n[defaults]\nmax_sessions = 7\nqueue_timeout = \"250ms\"\n[tenants.globex]\nweight = 3\nauth = {{ kind = \"none\" }}\n"
    ))
    .unwrap();
    let g = &c.tenants["globex"];
    assert_eq!(g.limits.max_sessions, 7);
    assert_eq!(g.limits.queue_timeout, Duration::from_millis(250));
    assert_eq!(g.limits.weight, 3);
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    let err = parse(&format!("{MINIMAL}\n[defaults]\nmax_sesions = 3\n")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_sesions"), "{text}");
}

#[test]
fn invalid_values_name_their_keys() {
    let keys = invalid_keys(
        r#"
[upstream.groups.primary]
endpoints = ["http://127.0.0.1:7001"]
[defaults]
handshake_rate = 0.0
[tenants.acme]
max_sessions = 0
upstream_group = "nope"
auth = { kind = "jwt", secret_env = "SLUICE_TEST_UNSET_SECRET" }
"#,
    );
    assert_eq!(
        keys,
        vec![
            "upstream.groups.primary.endpoints[0]",
            "defaults.handshake_rate",
            "tenants.acme.max_sessions",
            "tenants.acme.upstream_group",
            "tenants.acme.auth.secret_env",
        ]
    );
}

#[test]
fn max_pause_is_a_positive_duration_of_at_most_a_day() {
    let with = |v: &str| format!("[upstream]\nmax_pause = \"{v}\"\n{MINIMAL}");
    assert_eq!(
        parse(&with("90s")).unwrap().upstream.max_pause,
        Duration::from_secs(90)
    );
    for bad in ["0s", "25h"] {
        assert_eq!(
            invalid_keys(&with(bad)),
            vec!["upstream.max_pause"],
            "{bad}"
        );
    }
    let err = parse(&with("0s")).unwrap_err().to_string();
    assert!(err.contains("upstream.max_pause"), "{err}");
}

#[test]
fn missing_default_group_is_refused() {
    let keys = invalid_keys("[tenants.acme]\nauth = { kind = \"none\" }\n");
    assert_eq!(keys, vec!["upstream.default_group"]);
}

#[test]
fn tenant_without_auth_is_refused() {
    let keys = invalid_keys(
        "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n[tenants.acme]\nmax_sessions = 3\n",
    );
    assert_eq!(keys, vec!["tenants.acme.auth"]);
}

#[test]
fn bad_tenant_names_are_refused() {
    assert!(check_tenant_name("acme-2_x").is_ok());
    assert!(check_tenant_name("_default").is_err());
    assert!(check_tenant_name("Acme").is_err());
    assert!(check_tenant_name("a/b").is_err());
    assert!(check_tenant_name(&"a".repeat(65)).is_err());
}

#[test]
fn env_overrides_file_values_and_supplies_jwt_secret() {
    let env: HashMap<String, String> = [
        ("SLUICE__TENANTS__ACME__MAX_SESSIONS", "42"),
        ("SLUICE__UPSTREAM__HANDSHAKE_TIMEOUT", "750ms"),
        ("SLUICE__TENANT_IDENTITY__SOURCES", "header,path"),
        (
            "SLUICE__UPSTREAM__GROUPS__PRIMARY__ENDPOINTS",
            "ws://127.0.0.1:7001,ws://127.0.0.1:7002",
        ),
        ("ACME_SECRET", "0123456789abcdef0123456789abcdef"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let text = MINIMAL.replace(
        "auth = { kind = \"none\" }",
        "auth = { kind = \"jwt\", secret_env = \"ACME_SECRET\" }",
    );
    let c = Config::parse(&text, &env).unwrap();
    assert_eq!(c.tenants["acme"].limits.max_sessions, 42);
    assert_eq!(c.upstream.handshake_timeout, Duration::from_millis(750));
    assert_eq!(
        c.identity.sources,
        vec![IdentitySource::Header, IdentitySource::Path]
    );
    assert_eq!(c.tenants["acme"].auth.kind(), "jwt");
    assert_eq!(c.upstream.groups["primary"].endpoints.len(), 2);
}

#[test]
fn endpoints_parse_with_prefix_and_default_ports() {
    let e = parse_endpoint("wss://edge.example.com/api/v2/?org=1").unwrap();
    assert!(e.tls);
    assert_eq!(e.port, 443);
    assert_eq!(e.path_prefix, "/api/v2");
    assert_eq!(e.query, "org=1");
    let e = parse_endpoint("ws://[::1]:7001").unwrap();
    assert_eq!(e.host, "::1");
    assert_eq!(e.path_prefix, "");
    assert!(parse_endpoint("http://x").is_err());
    assert!(parse_endpoint("ws://user:pw@x").is_err());
}

#[test]
fn max_pending_per_ip_defaults_to_32_and_refuses_0() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.protection.max_pending_per_ip, DEFAULT_MAX_PENDING_PER_IP);
    assert_eq!(c.protection.max_pending_per_ip, 32);
    let keys = invalid_keys(&format!("[protection]\nmax_pending_per_ip = 0\n{MINIMAL}"));
    assert_eq!(keys, vec!["protection.max_pending_per_ip"]);
    // Above the global cap it cannot bind, and is accepted (`check-config` says so):
    // a reload that lowers only the global cap must not be refused for it.
    let c = parse(&format!(
        "[protection]\nmax_pending_handshakes = 2\nmax_pending_per_ip = 40\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.protection.max_pending_per_ip, 40);
}

#[test]
fn secrets_do_not_appear_in_debug_output() {
    let auth = Auth::Jwt {
        secret: b"super-secret-value".to_vec(),
        origin: "env X".into(),
    };
    assert!(!format!("{auth:?}").contains("super-secret"));
}
