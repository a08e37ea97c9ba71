//! The config parser on arbitrary text: `Config::parse` never panics, and a config it
//! accepts keeps every rule DESIGN.md states, and boots (metrics, pools and admission
//! are built from it without a panic).
//!
//! Input: UTF-8 text. A line `#%env` splits it: above is the TOML, below are
//! `NAME=value` lines for the environment map (so `SLUICE__…` overrides and
//! `secret_env` are fuzzed too); without that line the map holds one JWT secret.
//! Paths in the text are taken relative to an empty directory.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::config::{
    check_tenant_name, Auth, Config, Limits, MAX_MAX_HEADER_BYTES, MAX_MAX_MESSAGE_BYTES,
    MIN_MAX_HEADER_BYTES,
};

fn check_limits(what: &str, l: &Limits) {
    assert!(l.max_sessions >= 1, "{what}.max_sessions");
    assert!(
        l.handshake_rate.is_finite() && l.handshake_rate > 0.0 && l.handshake_rate <= 1e6,
        "{what}.handshake_rate {}",
        l.handshake_rate
    );
    assert!(l.handshake_burst >= 1, "{what}.handshake_burst");
    assert!(!l.queue_timeout.is_zero(), "{what}.queue_timeout");
    assert!(l.weight >= 1, "{what}.weight");
    for p in &l.subprotocols {
        assert!(!p.is_empty(), "{what}.subprotocols");
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
            "{what}.subprotocols: {p:?} is not a token"
        );
    }
}

fn check(config: &Config) {
    let up = &config.upstream;
    assert!(
        up.groups.contains_key(&up.default_group),
        "default_group exists"
    );
    for (name, group) in &up.groups {
        assert_eq!(&group.name, name);
        assert!(!group.endpoints.is_empty(), "group {name} has endpoints");
        for e in &group.endpoints {
            assert!(!e.host.is_empty());
            assert!(e.url.starts_with(if e.tls { "wss://" } else { "ws://" }));
        }
    }
    assert!(!up.handshake_timeout.is_zero());
    assert!(up.retry_budget >= up.handshake_timeout);
    assert!(!up.backoff_base.is_zero() && up.backoff_max >= up.backoff_base);
    assert!(!up.slow_handshake.is_zero());
    assert!(!up.max_pause.is_zero() && up.max_pause <= sluice::config::MAX_MAX_PAUSE);
    assert!(up.adaptive_factor > 0.0 && up.adaptive_factor < 1.0);
    assert!(up.adaptive_floor > 0.0 && up.adaptive_floor <= 1.0);

    let id = &config.identity;
    assert!(!id.sources.is_empty(), "at least one identity source");
    for (i, s) in id.sources.iter().enumerate() {
        assert!(!id.sources[..i].contains(s), "source listed twice");
    }
    if let Some(suffix) = &id.host_suffix {
        assert!(suffix.starts_with('.') && suffix.len() >= 2);
        assert_eq!(suffix, &suffix.to_ascii_lowercase());
    }

    if let Some(edge) = &config.edge {
        assert!(edge.max_sessions >= 1);
        assert!(edge.handshake_rate.is_finite() && edge.handshake_rate > 0.0);
        assert!(edge.handshake_burst >= 1);
    }
    check_limits("defaults", &config.defaults);

    let p = &config.protection;
    assert!(p.preauth_rate_per_ip.is_finite() && p.preauth_rate_per_ip > 0.0);
    assert!(p.preauth_burst_per_ip >= 1 && p.max_pending_handshakes >= 1);
    assert!(p.max_pending_per_ip >= 1);
    assert!((MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&p.max_header_bytes));
    assert!(p.idle_timeout.is_none_or(|d| !d.is_zero()));
    assert!(p.max_session.is_none_or(|d| !d.is_zero()));
    assert!(!config.listen.header_timeout.is_zero());

    let a = &config.accept;
    assert!((1..=MAX_MAX_MESSAGE_BYTES).contains(&a.max_message_bytes));
    assert!(a.held_bytes >= 1 && a.held_messages >= 1);

    assert!(
        !config.tenants.is_empty() || config.default_tenant.is_some(),
        "someone can connect"
    );
    for (name, t) in &config.tenants {
        assert_eq!(&t.name, name);
        assert_eq!(check_tenant_name(name), Ok(()), "tenant name {name:?}");
        check_limits(name, &t.limits);
        assert_eq!(
            up.groups.get(&t.group.name).map(|g| &**g),
            Some(&*t.group),
            "tenant {name}'s group is a configured one"
        );
        match &t.auth {
            Auth::None => {}
            Auth::ApiKey { hashes } => assert!(!hashes.is_empty()),
            Auth::Jwt { secret, .. } => assert!(secret.len() >= 16),
        }
        assert!(config.tenant(name).is_some());
    }
    if let Some(d) = &config.default_tenant {
        assert_eq!(d.name, sluice::config::DEFAULT_TENANT);
        assert_eq!(d.limits, config.defaults);
        assert!(up.groups.contains_key(&d.group.name));
    }

    // A valid config boots.
    let metrics = sluice::metrics::Metrics::new(config);
    let pools = sluice::upstream::Pools::new(config);
    let admission = sluice::admission::Admission::new(config, &metrics, &pools);
    for t in config
        .tenants
        .values()
        .chain(config.default_tenant.as_ref())
    {
        let load = admission
            .tenant_load(&t.name)
            .expect("every tenant has a gate");
        assert_eq!((load.live, load.queued), (0, 0));
        assert_eq!(load.max_sessions, t.limits.max_sessions);
    }
    let _ = metrics.render();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env_text) = text.split_once("\n#%env\n").unwrap_or((text, ""));
    let mut env = HashMap::from([(
        "FUZZ_JWT_SECRET".to_owned(),
        "fuzz-secret-0123456789abcdef0123".to_owned(),
    )]);
    for line in env_text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    match Config::parse_in(toml, &env, Path::new("/nonexistent-fuzz-dir")) {
        Ok(config) => check(&config),
        Err(e) => {
            // The message names what is wrong; formatting it never panics.
            let _ = e.to_string();
        }
    }
});
