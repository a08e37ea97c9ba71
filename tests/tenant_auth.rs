//! Tenant resolution and authentication through a real sluice and a recording edge:
//! who gets in, with which status, and what the edge never sees.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use support::*;

const ACME_SECRET: &str = "acme-secret-0123456789abcdef";
const GLOBEX_KEY: &str = "globex-key-7f3a9";

fn jwt(tenant: &str, secret: &str, exp_offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "tenant": tenant, "exp": now + exp_offset, "sub": "agent-7" }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn setup(extra: &str) -> (Edge, Proxy) {
    let edge = edge().await;
    let hash = hex::encode(Sha256::digest(GLOBEX_KEY.as_bytes()));
    let config = format!(
        r#"
[tenant_identity]
host_suffix = ".phones.test"
{extra}
[upstream.groups.primary]
endpoints = ["{}"]
[tenants.acme]
auth = {{ kind = "jwt", secret_env = "ACME_SECRET" }}
[tenants.globex]
auth = {{ kind = "api-key", key_sha256 = ["{hash}"] }}
[tenants.initech]
auth = {{ kind = "none" }}
"#,
        edge.url(false)
    );
    let proxy = proxy_with_env(&config, &[("ACME_SECRET", ACME_SECRET)]).await;
    (edge, proxy)
}

#[tokio::test]
async fn path_prefix_is_stripped_and_query_kept() {
    let (edge, proxy) = setup("").await;
    let mut ws = connect_ok(
        &proxy.url("/t/initech/api/v2/signal?agent=7&lang=en%20US"),
        &[],
    )
    .await;
    echo(&mut ws, "hi").await;
    let seen = edge.requests();
    assert_eq!(seen[0].target, "/api/v2/signal?agent=7&lang=en%20US");
    // the bare prefix forwards "/"
    let _ws = connect_ok(&proxy.url("/t/initech"), &[]).await;
    assert_eq!(edge.requests()[1].target, "/");
}

#[tokio::test]
async fn header_and_host_name_the_tenant() {
    let (edge, proxy) = setup("").await;
    let mut ws = connect_ok(&proxy.url("/ws"), &[("x-tenant-id", "initech")]).await;
    echo(&mut ws, "via header").await;
    let mut ws = connect_ok(&proxy.url("/ws"), &[("host", "initech.phones.test")]).await;
    echo(&mut ws, "via host").await;
    let seen = edge.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.target == "/ws"));
}

#[tokio::test]
async fn each_credential_carrier_is_accepted_and_never_reaches_the_edge() {
    let (edge, proxy) = setup("").await;
    let token = jwt("acme", ACME_SECRET, 300);

    let bearer = format!("Bearer {token}");
    let mut ws = connect_ok(&proxy.url("/t/acme/ws"), &[("authorization", &bearer)]).await;
    echo(&mut ws, "bearer").await;

    let mut ws = connect_ok(
        &proxy.url(&format!("/t/acme/ws?x=1&access_token={token}")),
        &[],
    )
    .await;
    echo(&mut ws, "query").await;

    let proto = format!("sip, access_token.{token}");
    let mut ws = connect_ok(
        &proxy.url("/t/acme/ws"),
        &[("sec-websocket-protocol", &proto)],
    )
    .await;
    echo(&mut ws, "subprotocol").await;

    // API keys travel the same carriers.
    let key_bearer = format!("Bearer {GLOBEX_KEY}");
    let mut ws = connect_ok(
        &proxy.url("/t/globex/ws"),
        &[("authorization", &key_bearer)],
    )
    .await;
    echo(&mut ws, "api key").await;
    let mut ws = connect_ok(
        &proxy.url(&format!("/t/globex/ws?access_token={GLOBEX_KEY}")),
        &[],
    )
    .await;
    echo(&mut ws, "api key in query").await;

    let seen = edge.requests();
    assert_eq!(seen.len(), 5);
    for r in &seen {
        let dump = r.dump();
        assert!(!dump.contains(&token), "edge saw the JWT: {dump}");
        assert!(!dump.contains(GLOBEX_KEY), "edge saw the API key: {dump}");
        assert!(!dump.contains("access_token"), "edge saw a carrier: {dump}");
        assert!(r.headers.get("authorization").is_none());
    }
    assert_eq!(seen[1].target, "/ws?x=1");
    assert_eq!(seen[2].headers["sec-websocket-protocol"], "sip");
}

#[tokio::test]
async fn subprotocol_is_negotiated_end_to_end() {
    let (edge, proxy) = setup("").await;
    let (mut ws, resp) = connect(
        &proxy.url("/t/initech/ws"),
        &[("sec-websocket-protocol", "sip, chat")],
    )
    .await
    .unwrap();
    // The edge chose "sip" from what the client offered; sluice passed its choice on.
    assert_eq!(resp.headers()["sec-websocket-protocol"], "sip");
    assert_eq!(
        edge.requests()[0].headers["sec-websocket-protocol"],
        "sip, chat"
    );
    echo(&mut ws, "OPTIONS sip:x SIP/2.0").await;
}

#[tokio::test]
async fn wrong_credentials_get_401_and_never_reach_the_edge() {
    let (edge, proxy) = setup("").await;
    let url = proxy.url("/t/acme/ws");

    // A valid JWT for another tenant, presented on acme's path.
    let other = jwt("globex", ACME_SECRET, 300);
    let resp = connect_refused(&url, &[("authorization", &format!("Bearer {other}"))]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (401, "unauthorized")
    );
    assert!(resp.headers().get("retry-after").is_none());

    // An acme JWT on globex's path (globex takes API keys).
    let acme = jwt("acme", ACME_SECRET, 300);
    let resp = connect_refused(
        &proxy.url(&format!("/t/globex/ws?access_token={acme}")),
        &[],
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (401, "unauthorized")
    );

    // Expired, wrongly signed, missing.
    let expired = jwt("acme", ACME_SECRET, -600);
    let resp = connect_refused(&url, &[("authorization", &format!("Bearer {expired}"))]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (401, "unauthorized")
    );
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("expired"), "{body}");
    let forged = jwt("acme", "not-the-acme-secret-at-all", 300);
    let resp = connect_refused(&url, &[("authorization", &format!("Bearer {forged}"))]).await;
    assert_eq!(resp.status(), 401);
    let resp = connect_refused(&url, &[]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (401, "unauthorized")
    );

    // A wrong API key.
    let resp = connect_refused(
        &proxy.url("/t/globex/ws?access_token=globex-key-guess"),
        &[],
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (401, "unauthorized")
    );

    assert!(
        edge.requests().is_empty(),
        "refused clients reached the edge"
    );
}

#[tokio::test]
async fn unknown_or_missing_tenant_gets_403() {
    let (edge, proxy) = setup("").await;
    for (path, headers) in [
        ("/t/umbrella/ws", vec![]),
        ("/ws", vec![]),
        ("/ws", vec![("x-tenant-id", "umbrella")]),
        ("/ws", vec![("host", "umbrella.phones.test")]),
        ("/t/Bad%20Name/ws", vec![]),
    ] {
        let resp = connect_refused(&proxy.url(path), &headers).await;
        assert_eq!(resp.status(), 403, "{path} {headers:?}");
        assert_eq!(reason(&resp), "tenant-unknown");
        assert!(resp.headers().get("x-request-id").is_some());
    }
    assert!(edge.requests().is_empty());
}

#[tokio::test]
async fn unknown_tenants_share_defaults_when_configured() {
    let (edge, proxy) = setup("unknown = \"default\"").await;
    let mut ws = connect_ok(&proxy.url("/t/umbrella/ws"), &[]).await;
    echo(&mut ws, "default tenant").await;
    assert_eq!(edge.requests()[0].target, "/ws");
    // A configured tenant still needs its credential.
    let resp = connect_refused(&proxy.url("/t/acme/ws"), &[]).await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn edge_sees_the_resolved_tenant_not_the_clients_claim() {
    let (edge, proxy) = setup("").await;
    // The path names initech; a forged header naming acme must not reach the edge.
    let mut ws = connect_ok(
        &proxy.url("/t/initech/ws"),
        &[("x-tenant-id", "acme"), ("x-tenant-id", "globex")],
    )
    .await;
    echo(&mut ws, "hi").await;
    let seen = edge.requests();
    let values: Vec<_> = seen[0].headers.get_all("x-tenant-id").iter().collect();
    assert_eq!(values, ["initech"]);
}

#[tokio::test]
async fn accept_mode_refuses_credentials_before_any_upgrade() {
    // DESIGN.md and the README: tenant and credential refusals are HTTP answers in both
    // queue modes; an unauthenticated client never gets a WebSocket.
    let edge = edge().await;
    let hash = hex::encode(Sha256::digest(GLOBEX_KEY.as_bytes()));
    let config = format!(
        r#"
[protection]
preauth_rate_per_ip = 0.5
preauth_burst_per_ip = 3
[upstream.groups.primary]
endpoints = ["{}"]
[tenants.globex]
queue_mode = "accept"
subprotocols = ["sip"]
auth = {{ kind = "api-key", key_sha256 = ["{hash}"] }}
"#,
        edge.url(false)
    );
    let proxy = proxy(&config).await;
    let sip = ("sec-websocket-protocol", "sip");

    let wrong = connect_refused(&proxy.url("/t/globex/?access_token=guess"), &[sip]).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(reason(&wrong), "unauthorized");
    let missing = connect_refused(&proxy.url("/t/globex/"), &[sip]).await;
    assert_eq!(missing.status(), 401);
    let unknown = connect_refused(&proxy.url("/t/nobody/"), &[sip]).await;
    assert_eq!(unknown.status(), 403);
    assert_eq!(reason(&unknown), "tenant-unknown");
    // Three failed attempts spent the address's burst: the per-IP limiter refuses the
    // next guess before its credential is even looked at.
    let limited = connect_refused(&proxy.url("/t/globex/?access_token=guess2"), &[sip]).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(reason(&limited), "too-many-attempts");
    assert!(edge.requests().is_empty());
}
