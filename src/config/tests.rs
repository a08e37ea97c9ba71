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

// === [cluster] ===

fn with_cluster(section: &str) -> String {
    format!("{MINIMAL}\n[cluster]\n{section}")
}

fn invalid(text: &str) -> Vec<Invalid> {
    match parse(text) {
        Err(ConfigError::Invalid(list)) => list,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn cluster_is_absent_without_its_section() {
    assert!(parse(MINIMAL).unwrap().cluster.is_none());
}

#[test]
fn cluster_takes_documented_defaults() {
    let c = parse(&with_cluster("redis = \"redis://127.0.0.1:6379/0\"\n"))
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(
        c.redis,
        RedisTarget::Url("redis://127.0.0.1:6379/0".to_owned())
    );
    assert_eq!(c.heartbeat, Duration::from_secs(5));
    assert_eq!(c.heartbeat, DEFAULT_HEARTBEAT);
    assert_eq!(c.lease_ttl, Duration::from_secs(15));
    assert_eq!(c.redis_timeout, Duration::from_millis(50));
    assert_eq!(c.on_redis_failure, OnRedisFailure::LocalShare);
    assert_eq!(c.replica_id, default_replica_id());
    assert!(
        c.replica_id.ends_with(&format!("-{}", std::process::id())),
        "{}",
        c.replica_id
    );
}

#[test]
fn default_replica_id_is_host_and_pid_made_valid() {
    use super::defaults::replica_id_from;
    assert_eq!(replica_id_from("node-3.example", 42), "node-3.example-42");
    assert_eq!(replica_id_from("", 7), "sluice-7");
    assert_eq!(replica_id_from("a b/c", 1), "a-b-c-1");
    let long = replica_id_from(&"h".repeat(100), 123_456);
    assert_eq!(long.len(), MAX_REPLICA_ID);
    assert!(long.ends_with("h-123456"), "{long}");
}

#[test]
fn full_cluster_section_with_sentinels() {
    let c = parse(&with_cluster(
        r#"sentinels = ["s1.example:26379", "redis://s2.example:26380", "[::1]:26379"]
master = "mymaster"
replica_id = "sluice-a:1.x_y"
heartbeat = "2s"
lease_ttl = "4s"
redis_timeout = "25ms"
on_redis_failure = "closed"
"#,
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(
        c,
        Cluster {
            redis: RedisTarget::Sentinel {
                sentinels: vec![
                    "redis://s1.example:26379".to_owned(),
                    "redis://s2.example:26380".to_owned(),
                    "redis://[::1]:26379".to_owned(),
                ],
                master: "mymaster".to_owned(),
            },
            replica_id: "sluice-a:1.x_y".to_owned(),
            heartbeat: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(4),
            redis_timeout: Duration::from_millis(25),
            on_redis_failure: OnRedisFailure::Closed,
        }
    );
    let open = parse(&with_cluster(
        "redis = \"redis://h:6379\"\non_redis_failure = \"open\"\n",
    ))
    .unwrap();
    assert_eq!(open.cluster.unwrap().on_redis_failure, OnRedisFailure::Open);
}

#[test]
fn unix_socket_urls_are_accepted() {
    for url in [
        "redis+unix:///run/redis.sock",
        "unix:///run/redis.sock?db=1",
    ] {
        let c = parse(&with_cluster(&format!("redis = \"{url}\"\n")))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(c.cluster.unwrap().redis, RedisTarget::Url(url.to_owned()));
    }
}

#[test]
fn each_cluster_refusal_names_its_key() {
    let url = "redis = \"redis://h:6379\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "redis = \"redis://h:6379\"\nsentinels = [\"s:26379\"]\nmaster = \"m\"\n".into(),
            "cluster",
            "not both",
        ),
        ("replica_id = \"r\"\n".into(), "cluster", "cluster.sentinels"),
        (format!("{url}master = \"m\"\n"), "cluster.master", "only used with cluster.sentinels"),
        ("sentinels = [\"s:26379\"]\n".into(), "cluster.master", "required"),
        ("sentinels = []\nmaster = \"m\"\n".into(), "cluster.sentinels", "at least one"),
        ("sentinels = [\"s1\"]\nmaster = \"m\"\n".into(), "cluster.sentinels[0]", "port"),
        (
            "sentinels = [\"s:1\", \"redis://s:1\"]\nmaster = \"m\"\n".into(),
            "cluster.sentinels[1]",
            "listed twice",
        ),
        (
            "sentinels = [\"unix:///s.sock\"]\nmaster = \"m\"\n".into(),
            "cluster.sentinels[0]",
            "host:port",
        ),
        ("redis = \"http://h:6379\"\n".into(), "cluster.redis", "must start with redis://"),
        ("redis = \"rediss://h:6380\"\n".into(), "cluster.redis", "TLS to Redis is not compiled"),
        ("redis = \"redis://h:6379/x\"\n".into(), "cluster.redis", "database"),
        ("redis = \"redis://0.0.0.0:6379\"\n".into(), "cluster.redis", "wildcard"),
        ("redis = \"not a url\"\n".into(), "cluster.redis", "must start with"),
        (format!("{url}heartbeat = \"50ms\"\n"), "cluster.heartbeat", "shorter than 100ms"),
        (
            format!("{url}heartbeat = \"10s\"\n"),
            "cluster.lease_ttl",
            "15s (the default) is less than twice cluster.heartbeat (10s): a replica must miss two heartbeats before its slots are given back",
        ),
        (format!("{url}lease_ttl = \"9s\"\n"), "cluster.lease_ttl", "at least 10s"),
        (format!("{url}redis_timeout = \"0s\"\n"), "cluster.redis_timeout", "longer than 0"),
        (format!("{url}redis_timeout = \"5s\"\n"), "cluster.redis_timeout", "not shorter"),
        (format!("{url}replica_id = \"\"\n"), "cluster.replica_id", "1 to 64"),
        (format!("{url}replica_id = \"a b\"\n"), "cluster.replica_id", "metric labels"),
        (
            format!("{url}replica_id = \"{}\"\n", "r".repeat(65)),
            "cluster.replica_id",
            "1 to 64",
        ),
        (
            format!("{url}on_redis_failure = \"fail-open\"\n"),
            "cluster.on_redis_failure",
            "\"fail-open\" is not one of \"local-share\", \"open\", \"closed\"",
        ),
    ];
    for (section, key, reason) in cases {
        let list = invalid(&with_cluster(&section));
        assert_eq!(list.len(), 1, "{section}: {list:?}");
        assert_eq!(list[0].key, key, "{section}");
        assert!(
            list[0].reason.contains(reason),
            "{section}: {}",
            list[0].reason
        );
    }
}

#[test]
fn cluster_errors_are_all_collected() {
    let keys = invalid_keys(&with_cluster(
        "redis = \"rediss://h\"\nheartbeat = \"1ms\"\nredis_timeout = \"0s\"\nreplica_id = \"a/b\"\non_redis_failure = \"x\"\n",
    ));
    assert_eq!(
        keys,
        vec![
            "cluster.redis",
            "cluster.replica_id",
            "cluster.heartbeat",
            "cluster.redis_timeout",
            "cluster.on_redis_failure",
        ]
    );
    let err = parse(&with_cluster("redis_url = \"redis://h\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis_url"), "{err}");
}

#[test]
fn cluster_passwords_stay_out_of_messages_and_debug() {
    assert_eq!(
        redact_redis_url("redis://user:hunter2@h:6379/0"),
        "redis://user:***@h:6379/0"
    );
    assert_eq!(
        redact_redis_url("redis+unix:///r.sock?db=1&pass=hunter2"),
        "redis+unix:///r.sock?db=1&pass=***"
    );
    assert_eq!(redact_redis_url("redis://h:6379"), "redis://h:6379");
    assert_eq!(redact_redis_url("http://u:hunter2@h"), "http://***@h");
    let target = RedisTarget::Url("redis://:hunter2@h:6379".to_owned());
    assert!(!format!("{target:?}").contains("hunter2"));
    let list = invalid(&with_cluster("redis = \"rediss://:hunter2@h\"\n"));
    assert!(!list[0].reason.contains("hunter2"), "{}", list[0].reason);
}

#[test]
fn cluster_keys_come_from_the_environment_too() {
    let env: HashMap<String, String> = [
        ("SLUICE__CLUSTER__SENTINELS", "s1:26379,s2:26379"),
        ("SLUICE__CLUSTER__MASTER", "mymaster"),
        ("SLUICE__CLUSTER__REPLICA_ID", "pod-7"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let c = Config::parse(MINIMAL, &env).unwrap().cluster.unwrap();
    assert_eq!(
        c.redis,
        RedisTarget::Sentinel {
            sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
            master: "mymaster".into(),
        }
    );
    assert_eq!(c.replica_id, "pod-7");
}

const SIP_TENANT: &str = r#"
[upstream.groups.primary]
endpoints = ["ws://127.0.0.1:7001"]

[tenants.acme]
auth = { kind = "none" }
queue_mode = "accept"
subprotocols = ["sip"]
"#;

#[test]
fn call_limits_are_absent_without_call_keys() {
    let c = parse(SIP_TENANT).unwrap();
    assert!(c.tenants["acme"].calls.is_none());
}

#[test]
fn call_limits_take_documented_defaults() {
    let c = parse(&format!("{SIP_TENANT}max_calls = 40\ncall_rate = 2.5\n")).unwrap();
    let calls = c.tenants["acme"].calls.clone().unwrap();
    assert_eq!(calls.max_calls, Some(40));
    assert_eq!(calls.call_rate, Some(2.5));
    assert_eq!(calls.call_burst, 3, "a second's calls, rounded up");
    assert_eq!(calls.invite_queue_depth, 100);
    assert_eq!(calls.invite_queue_timeout, Duration::from_secs(8));
    assert_eq!(calls.call_idle_timeout, Duration::from_secs(4 * 3600));
    // Any one call key turns counting on; the others keep their defaults.
    let c = parse(&format!("{SIP_TENANT}call_idle_timeout = \"1h\"\n")).unwrap();
    let calls = c.tenants["acme"].calls.clone().unwrap();
    assert_eq!((calls.max_calls, calls.call_rate), (None, None));
}

#[test]
fn call_limits_need_accept_mode_and_the_sip_subprotocol() {
    let hold = SIP_TENANT.replace("queue_mode = \"accept\"", "queue_mode = \"hold\"");
    let errors = invalid(&format!("{hold}max_calls = 4\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "tenants.acme.max_calls");
    assert!(
        errors[0].reason.contains("queue_mode = \"accept\""),
        "{}",
        errors[0].reason
    );

    let no_sip = SIP_TENANT.replace("[\"sip\"]", "[\"chat\"]");
    let errors = invalid(&format!("{no_sip}call_rate = 4.0\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "tenants.acme.call_rate");
    assert!(errors[0].reason.contains("\"sip\""), "{}", errors[0].reason);
}

#[test]
fn bad_call_values_name_their_keys() {
    let keys = invalid_keys(&format!(
        "{SIP_TENANT}max_calls = 0\ncall_burst = 3\ninvite_queue_depth = -1\ninvite_queue_timeout = \"0s\"\ncall_idle_timeout = \"0s\"\n"
    ));
    for key in [
        "max_calls",
        "call_burst",
        "invite_queue_depth",
        "invite_queue_timeout",
        "call_idle_timeout",
    ] {
        assert!(
            keys.contains(&format!("tenants.acme.{key}")),
            "{key}: {keys:?}"
        );
    }
    let keys = invalid_keys(&format!("{SIP_TENANT}call_rate = -1.0\n"));
    assert_eq!(keys, ["tenants.acme.call_rate"]);
}
