//! Tenant resolution, credential extraction, authentication, the upstream request and
//! the `accept`-mode subprotocol choice, on arbitrary HTTP request heads.
//!
//! Input: one selector byte, then the raw request head (parsed with httparse, as hyper
//! does, into `http::request::Parts`). Bit 0 of the selector picks one of two configs,
//! bit 1 the client address family, bit 2 TLS.
//!
//! Invariants checked, beyond "no panic":
//! * a resolved tenant is a configured one (or `_default` where allowed), named by the
//!   source it says; a path-resolved request forwards the rest of its path;
//! * a found credential is really in its carrier, and never shows in `Debug`;
//! * authentication of the api-key tenant succeeds only with its key, of the JWT tenant
//!   only with an HS256 token that really is signed with its secret for it (checked
//!   here independently of jsonwebtoken);
//! * the request built for upstream carries no credential (no Bearer `Authorization`,
//!   no `access_token` query parameter, no `access_token.` subprotocol entry), exactly
//!   one identity header equal to the resolved tenant, the client's other subprotocols
//!   in order, none of the hop-by-hop headers the client named, and its path is the
//!   forward path;
//! * a chosen subprotocol is listed, offered and never a credential entry, and a refusal
//!   never quotes a credential entry.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use sluice::auth::{self, Carrier, Credential};
use sluice::config::{Auth, Config, IdentitySource, UnknownTenant};
use sluice::upstream::{self, ClientInfo};

/// The HS256 secret of tenant `acme` (given through the env map).
const JWT_SECRET: &str = "fuzz-secret-0123456789abcdef0123";
/// The API key of tenant `globex`; the config holds its SHA-256.
const API_KEY: &str = "globex-demo-key";
const API_KEY_SHA256: &str = "2e2764ef486a4aa498e60ef5ed6b88ce7dd8bfc8b3309c5c15950a5c3d1a8c20";
const REQUEST_ID: &str = "fuzz-request-1";

fn config(text: &str) -> Config {
    let env = HashMap::from([("FUZZ_JWT_SECRET".to_owned(), JWT_SECRET.to_owned())]);
    let text = format!(
        r#"{text}
[upstream.groups.primary]
endpoints = ["ws://127.0.0.1:7001"]
[upstream.groups.acme-media]
endpoints = ["ws://127.0.0.1:7101/base?org=acme"]
[tenants.acme]
upstream_group = "acme-media"
queue_mode = "accept"
subprotocols = ["sip", "v2.sip"]
auth = {{ kind = "jwt", secret_env = "FUZZ_JWT_SECRET" }}
[tenants.globex]
subprotocols = []
auth = {{ kind = "api-key", key_sha256 = ["{API_KEY_SHA256}"] }}
[tenants.initech]
queue_mode = "accept"
auth = {{ kind = "none" }}
"#
    );
    Config::parse(&text, &env).expect("the fuzz config is valid")
}

/// Unknown tenants refused; path, header, host.
static STRICT: LazyLock<Config> = LazyLock::new(|| {
    config(
        r#"[tenant_identity]
sources = ["path", "header", "host"]
host_suffix = ".softphone.example.com"
"#,
    )
});

/// Unknown tenants go to `_default`; another order and header.
static LENIENT: LazyLock<Config> = LazyLock::new(|| {
    config(
        r#"[tenant_identity]
sources = ["host", "header", "path"]
header = "x-org"
host_suffix = "Sip.Example.NET"
unknown = "default"
"#,
    )
});

/// `FUZZ_TRACE=1`: say how far each input got (to check that seeds reach what they
/// are meant to).
static TRACE: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_TRACE").is_some());

/// The request head as hyper would hand it over, or `None` where hyper answers 400.
fn parse(data: &[u8]) -> Option<Parts> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut builder = http::Request::builder().method(req.method?).uri(req.path?);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        builder = builder.header(name, value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let e = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    e.decode(s)
        .ok()
        .or_else(|| base64::engine::general_purpose::URL_SAFE.decode(s).ok())
}

/// Independent check of an HS256 JWT for `tenant`: the signature over the first two
/// segments is the HMAC-SHA256 with `secret`, the header says HS256, and the `tenant`
/// claim names the tenant. (Expiry is not re-checked: jsonwebtoken's leeway and clock.)
fn jwt_is_genuine(token: &str, secret: &[u8], tenant: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        return false;
    };
    let (Some(header), Some(payload), Some(sig)) = (b64(h), b64(p), b64(s)) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(&token.as_bytes()[..h.len() + 1 + p.len()]);
    if mac.verify_slice(&sig).is_err() {
        return false;
    }
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap_or_default();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
    header["alg"] == "HS256"
        && claims["tenant"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case(tenant))
}

fn subprotocol_entries(parts: &Parts) -> Vec<String> {
    auth::subprotocols(parts).map(str::to_owned).collect()
}

fn check(config: &Config, parts: &Parts, info: ClientInfo) {
    let path = parts.uri.path();

    // Step 2: the tenant.
    let resolved = sluice::tenant::resolve(config, parts);
    let again = sluice::tenant::resolve(config, parts);
    assert_eq!(
        resolved
            .as_ref()
            .map(|r| (&r.tenant.name, r.source, &r.forward_path))
            .ok(),
        again
            .as_ref()
            .map(|r| (&r.tenant.name, r.source, &r.forward_path))
            .ok(),
        "resolution is deterministic"
    );
    let resolved = match resolved {
        Ok(r) => r,
        Err(sluice::tenant::TenantUnknown::Unknown { name, .. }) => {
            assert!(name.chars().count() <= sluice::config::MAX_TENANT_NAME);
            return;
        }
        Err(sluice::tenant::TenantUnknown::Missing(_)) => {
            assert!(
                config.default_tenant.is_none(),
                "_default takes requests naming no tenant"
            );
            return;
        }
    };
    let tenant = &resolved.tenant;
    match config.tenants.get(&tenant.name) {
        Some(t) => assert_eq!(**t, **tenant),
        None => {
            assert_eq!(config.identity.unknown, UnknownTenant::Default);
            assert_eq!(tenant.name, sluice::config::DEFAULT_TENANT);
        }
    }
    assert!(config.identity.sources.contains(&resolved.source));
    if resolved.source == IdentitySource::Path && tenant.name != sluice::config::DEFAULT_TENANT {
        let rest = path.strip_prefix("/t/").expect("path source: /t/ prefix");
        let named = rest.get(..tenant.name.len()).expect("the name is ASCII");
        assert!(named.eq_ignore_ascii_case(&tenant.name), "{path:?}");
        let tail = &rest[tenant.name.len()..];
        let expected = if tail.is_empty() { "/" } else { tail };
        assert_eq!(resolved.forward_path, expected);
    }
    if resolved.source != IdentitySource::Path {
        assert_eq!(resolved.forward_path, path);
    }
    // An origin-form target (`/…`) forwards an origin-form path. (hyper also hands over
    // authority-form and asterisk-form targets; their "path" is `""` or `*`.)
    if path.starts_with('/') {
        assert!(
            resolved.forward_path.starts_with('/'),
            "{:?}",
            resolved.forward_path
        );
    }

    // Step 3: the credential.
    let credential: Option<Credential> = auth::extract(parts);
    if let Some(c) = &credential {
        let token = c.token();
        assert!(!token.is_empty());
        assert_eq!(
            format!("{c:?}"),
            format!("Credential({}, <redacted>)", c.carrier.as_str()),
            "Debug is redacted"
        );
        match c.carrier {
            Carrier::Bearer => assert!(parts
                .headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .any(|v| auth::is_bearer(v) && v.to_str().unwrap().trim().ends_with(token))),
            Carrier::Query => assert!(form_urlencoded::parse(
                parts.uri.query().unwrap_or("").as_bytes()
            )
            .any(|(k, v)| k == auth::QUERY_PARAM && v == token)),
            Carrier::Subprotocol => assert!(subprotocol_entries(parts)
                .iter()
                .any(|p| p.strip_prefix(auth::SUBPROTOCOL_PREFIX) == Some(token))),
        }
    }
    let result = auth::authenticate(tenant, credential.as_ref());
    // Every tenant, not only the resolved one: one tenant's credential never opens
    // another's door.
    for other in config
        .tenants
        .values()
        .chain(config.default_tenant.as_ref())
    {
        let ok = auth::authenticate(other, credential.as_ref()).is_ok();
        let token = credential.as_ref().map(Credential::token);
        match &other.auth {
            Auth::None => assert!(ok),
            Auth::ApiKey { .. } => assert_eq!(ok, token == Some(API_KEY), "api key"),
            Auth::Jwt { secret, .. } => {
                if ok {
                    assert!(
                        jwt_is_genuine(token.unwrap(), secret, &other.name),
                        "a JWT not signed for {} was accepted",
                        other.name
                    );
                }
            }
        }
    }
    if *TRACE {
        eprintln!(
            "tenant {} via {:?}, credential {:?}: {result:?}",
            tenant.name, resolved.source, credential
        );
    }
    if result.is_err() {
        return;
    }

    // Step 5: the request for upstream.
    let identity = (&config.identity.header, tenant.name.as_str());
    let up = upstream::build_request(parts, &resolved.forward_path, info, REQUEST_ID, identity);
    let h = up.headers();
    for v in h.get_all(header::AUTHORIZATION) {
        assert!(!auth::is_bearer(v), "a Bearer credential goes upstream");
    }
    if let Some(q) = up.uri().query() {
        assert!(
            form_urlencoded::parse(q.as_bytes()).all(|(k, _)| k != auth::QUERY_PARAM),
            "access_token in the upstream query {q:?}"
        );
        // Every kept parameter is one the client sent, in its exact encoding.
        let client: Vec<&str> = parts.uri.query().unwrap_or("").split('&').collect();
        for pair in q.split('&') {
            assert!(client.contains(&pair), "{pair:?} was not sent");
        }
    }
    let offered = subprotocol_entries(parts);
    let kept: Vec<String> = offered
        .iter()
        .filter(|p| !p.starts_with(auth::SUBPROTOCOL_PREFIX))
        .cloned()
        .collect();
    let forwarded: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.to_str().expect("sluice writes text").split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    assert!(forwarded
        .iter()
        .all(|p| !p.starts_with(auth::SUBPROTOCOL_PREFIX)));
    assert_eq!(
        forwarded, kept,
        "the other subprotocols go upstream unchanged"
    );
    let ids: Vec<&HeaderValue> = h.get_all(identity.0).iter().collect();
    assert_eq!(ids.len(), 1, "one identity header");
    assert_eq!(ids[0], tenant.name.as_str());
    assert_eq!(h.get(header::CONNECTION).unwrap(), "Upgrade");
    assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    assert_eq!(
        h.get("x-forwarded-for").unwrap().to_str().unwrap(),
        info.addr.ip().to_string()
    );
    assert_eq!(h.get(upstream::REQUEST_ID).unwrap(), REQUEST_ID);
    assert!(h.get(header::HOST).is_none());
    let own = [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::FORWARDED,
        upstream::X_FORWARDED_FOR,
        upstream::REQUEST_ID,
        HeaderName::from_static("x-forwarded-proto"),
        identity.0.clone(),
    ];
    for named in sluice::parse::header_tokens(&parts.headers, &header::CONNECTION) {
        if let Ok(name) = HeaderName::from_bytes(named.as_bytes()) {
            if !own.contains(&name) {
                assert!(!h.contains_key(&name), "hop-by-hop {name} went upstream");
            }
        }
    }
    let expected = match resolved.forward_path.as_str() {
        "" => "/",
        p => p,
    };
    assert_eq!(up.uri().path(), expected, "the forward path goes upstream");

    // `accept` mode: the subprotocol sluice answers with.
    let listed = &tenant.limits.subprotocols;
    match sluice::ws::choose_subprotocol(listed, parts) {
        Ok(None) => assert!(offered.is_empty()),
        Ok(Some(p)) => {
            assert!(
                !p.starts_with(auth::SUBPROTOCOL_PREFIX),
                "a credential is echoed"
            );
            assert!(listed.contains(&p) && kept.contains(&p));
            // The first offered that is listed.
            assert_eq!(kept.iter().find(|k| listed.contains(k)), Some(&p));
            let resp = sluice::ws::switching_protocols(parts, Some(&p), REQUEST_ID);
            assert_eq!(
                resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(),
                p.as_str()
            );
            let mut up = up;
            let key = sluice::ws::own_handshake(&mut up, Some(&p));
            let protocols: Vec<_> = up
                .headers()
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .collect();
            assert_eq!(protocols, [p.as_str()]);
            assert_eq!(
                up.headers().get(header::SEC_WEBSOCKET_KEY).unwrap(),
                key.as_str()
            );
        }
        Err(msg) => {
            assert!(!offered.is_empty());
            assert!(kept.iter().all(|k| !listed.contains(k)));
            for cred in offered
                .iter()
                .filter(|p| p.starts_with(auth::SUBPROTOCOL_PREFIX))
            {
                let innocent = kept.iter().chain(listed).any(|k| k.contains(cred.as_str()));
                assert!(
                    innocent || !msg.contains(cred.as_str()),
                    "{msg:?} quotes {cred:?}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, head)) = data.split_first() else {
        return;
    };
    let Some(parts) = parse(head) else {
        return;
    };
    let config = if selector & 1 == 0 {
        &*STRICT
    } else {
        &*LENIENT
    };
    let addr: SocketAddr = if selector & 2 == 0 {
        "10.1.2.3:5555".parse().unwrap()
    } else {
        "[2001:db8::7]:5555".parse().unwrap()
    };
    let info = ClientInfo {
        addr,
        tls: selector & 4 != 0,
    };
    check(config, &parts, info);
});
