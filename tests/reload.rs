//! Hot reload (`POST /-/reload`, the same code SIGHUP runs): limits change for new
//! admissions at once, live sessions are never dropped, an invalid file changes
//! nothing, removed tenants stop being admitted, a revoked credential closes its
//! `accept`-mode sessions with 1008, and the listener's certificate is read again.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use support::{
    admin_request, client_tls, connect, connect_ok, echo, edge, proxy_from_file, reason, scrape,
    test_ca, wait_until, Edge, Proxy,
};

async fn reload(proxy: &Proxy) -> (u16, String) {
    admin_request(proxy.admin, "POST", "/-/reload").await
}

/// A client of `url` connecting in the background, once it waits in `tenant`'s queue.
async fn queue_behind(proxy: &Proxy, url: &str) -> tokio::task::JoinHandle<support::Client> {
    let url = url.to_owned();
    let waiting = tokio::spawn(async move { connect_ok(&url, &[]).await });
    wait_until("the client to queue", async || queued(proxy, "lab") == 1).await;
    waiting
}

/// The queued client's session, admitted within 10 s.
async fn admitted(waiting: tokio::task::JoinHandle<support::Client>, why: &str) -> support::Client {
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap_or_else(|_| panic!("not admitted in time: {why}"))
        .unwrap()
}

fn live(proxy: &Proxy, tenant: &str) -> u32 {
    proxy.admission.tenant_load(tenant).unwrap().live
}

fn queued(proxy: &Proxy, tenant: &str) -> u32 {
    proxy.admission.tenant_load(tenant).unwrap().queued
}

#[tokio::test]
async fn a_lower_cap_keeps_all_live_sessions_and_admits_no_new_one_until_they_fall_under_it() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let tenant = |cap: u32| {
        format!(
            "[tenants.lab]\nauth = {{ kind = \"none\" }}\nmax_sessions = {cap}\nhandshake_rate = 1000.0\nhandshake_burst = 100\nqueue_timeout = \"30s\"\n"
        )
    };
    support::write_config_file(&file, &edge, &tenant(30));
    let proxy = proxy_from_file(&file).await;
    let url = proxy.url("/t/lab/");
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(connect_ok(&url, &[]).await);
    }

    support::write_config_file(&file, &edge, &tenant(10));
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.admission.tenant_load("lab").unwrap().max_sessions, 10);

    // All 20 live sessions go on.
    for (i, ws) in sessions.iter_mut().enumerate() {
        echo(ws, &format!("still here {i}")).await;
    }
    assert_eq!(live(&proxy, "lab"), 20);

    // A new client waits while 20, then 10, sessions are live (10 is not under 10)…
    let waiting = queue_behind(&proxy, &url).await;
    for ws in sessions.drain(..10) {
        support::close(ws).await;
    }
    wait_until("10 sessions to end", async || live(&proxy, "lab") == 10).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        queued(&proxy, "lab"),
        1,
        "admitted at the new cap, not under it"
    );
    // …and is admitted as soon as one more ends.
    support::close(sessions.pop().unwrap()).await;
    let mut newcomer = admitted(waiting, "one more session ended").await;
    echo(&mut newcomer, "in").await;
    assert_eq!(edge.requests().len(), 21);
    let scrape = scrape(proxy.admin).await;
    assert_eq!(
        scrape.get("sluice_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        scrape.get(
            "sluice_tenant_limit",
            &[("tenant", "lab"), ("limit", "max_sessions")]
        ),
        10.0
    );
}

#[tokio::test]
async fn a_raised_cap_admits_queued_clients_at_once() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let tenant = |cap: u32| {
        format!("[tenants.lab]\nauth = {{ kind = \"none\" }}\nmax_sessions = {cap}\nqueue_timeout = \"30s\"\n")
    };
    support::write_config_file(&file, &edge, &tenant(1));
    let proxy = proxy_from_file(&file).await;
    let url = proxy.url("/t/lab/");
    let _first = connect_ok(&url, &[]).await;
    let waiting = queue_behind(&proxy, &url).await;

    support::write_config_file(&file, &edge, &tenant(2));
    assert_eq!(reload(&proxy).await.0, 200);
    let mut second = admitted(waiting, "the cap rose").await;
    echo(&mut second, "in").await;
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_config_and_says_so() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    support::write_config_file(
        &file,
        &edge,
        "[tenants.lab]\nauth = { kind = \"none\" }\nmax_sessions = 5\n",
    );
    let proxy = proxy_from_file(&file).await;
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;

    support::write_config_file(
        &file,
        &edge,
        "[tenants.lab]\nauth = { kind = \"none\" }\nmax_sessions = 0\nhandshake_rate = -1.0\n",
    );
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, 422);
    assert!(
        body.contains("tenants.lab.max_sessions") && body.contains("tenants.lab.handshake_rate"),
        "{body}"
    );
    // The old limits are in force, the session goes on, new ones are served.
    assert_eq!(proxy.admission.tenant_load("lab").unwrap().max_sessions, 5);
    echo(&mut ws, "still fine").await;
    let mut other = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut other, "new one").await;
    let scrape = scrape(proxy.admin).await;
    assert_eq!(
        scrape.get("sluice_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        scrape.get("sluice_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        scrape.get(
            "sluice_tenant_limit",
            &[("tenant", "lab"), ("limit", "max_sessions")]
        ),
        5.0
    );

    // An unreadable file is refused the same way.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(reload(&proxy).await.0, 422);
    echo(&mut ws, "and still").await;
}

#[tokio::test]
async fn a_removed_tenant_keeps_its_live_sessions_but_is_no_longer_admitted() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let both =
        "[tenants.lab]\nauth = { kind = \"none\" }\nmax_sessions = 1\nqueue_timeout = \"30s\"\n\
                [tenants.other]\nauth = { kind = \"none\" }\n";
    support::write_config_file(&file, &edge, both);
    let proxy = proxy_from_file(&file).await;
    let url = proxy.url("/t/lab/");
    let mut live_one = connect_ok(&url, &[]).await;
    let u = url.clone();
    let waiting = tokio::spawn(async move { connect(&u, &[]).await });
    wait_until("queued", async || queued(&proxy, "lab") == 1).await;

    support::write_config_file(
        &file,
        &edge,
        "[tenants.other]\nauth = { kind = \"none\" }\n",
    );
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, 200);
    assert!(body.contains("removed: [lab]"), "{body}");

    // The queued client is refused, the live session goes on, new clients are unknown.
    let refused = waiting.await.unwrap().expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = refused else {
        panic!("an HTTP refusal");
    };
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (403, "tenant-unknown")
    );
    echo(&mut live_one, "still here").await;
    let resp = support::connect_refused(&url, &[]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (403, "tenant-unknown")
    );
    let mut other = connect_ok(&proxy.url("/t/other/"), &[]).await;
    echo(&mut other, "other is fine").await;

    // Back again (cap 1): its live session still counts, so a new client waits.
    support::write_config_file(&file, &edge, both);
    assert_eq!(reload(&proxy).await.0, 200);
    let waiting = queue_behind(&proxy, &url).await;
    assert_eq!(live(&proxy, "lab"), 1);
    support::close(live_one).await;
    let mut back = admitted(waiting, "the old session ended").await;
    echo(&mut back, "back").await;
}

#[tokio::test]
async fn a_revoked_key_closes_accept_mode_sessions_with_1008() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let hash = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    let tenants = |keys: &[&str]| {
        let list: Vec<String> = keys.iter().map(|k| format!("\"{}\"", hash(k))).collect();
        let list = list.join(", ");
        format!(
            "[tenants.acc]\nqueue_mode = \"accept\"\nauth = {{ kind = \"api-key\", key_sha256 = [{list}] }}\n\
             [tenants.hld]\nauth = {{ kind = \"api-key\", key_sha256 = [{list}] }}\n"
        )
    };
    support::write_config_file(&file, &edge, &tenants(&["old-key", "kept-key"]));
    let proxy = proxy_from_file(&file).await;
    let bearer = |k: &str| format!("Bearer {k}");
    let mut revoked = connect_ok(
        &proxy.url("/t/acc/"),
        &[("authorization", &bearer("old-key"))],
    )
    .await;
    let mut kept = connect_ok(
        &proxy.url("/t/acc/"),
        &[("authorization", &bearer("kept-key"))],
    )
    .await;
    let mut hold = connect_ok(
        &proxy.url("/t/hld/"),
        &[("authorization", &bearer("old-key"))],
    )
    .await;
    echo(&mut revoked, "before").await;

    support::write_config_file(&file, &edge, &tenants(&["kept-key"]));
    assert_eq!(reload(&proxy).await.0, 200);
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(10), revoked.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(f)))) => break f,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason.as_str(), "credential-revoked");
    // A session whose key stays, and a hold-mode tunnel, go on.
    echo(&mut kept, "kept").await;
    echo(&mut hold, "tunnel").await;
    edge.wait_for("the edge told", |e| {
        e.closes.lock().unwrap().iter().any(|(c, _)| *c == 1001)
    })
    .await;
}

#[tokio::test]
async fn a_reload_reads_the_certificate_again() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = test_ca();
    let (ca2, cert2, key2) = test_ca();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &cert1).unwrap();
    std::fs::write(&key, &key1).unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\n[upstream.groups.primary]\nendpoints = [\"{}\"]\n\
             [tenants.lab]\nauth = {{ kind = \"none\" }}\n",
            edge.url(false)
        ),
    )
    .unwrap();
    let proxy = proxy_from_file(&file).await;

    type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;
    async fn wss(proxy: &Proxy, ca: &str) -> Result<Wss, String> {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca)))
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let url = format!("wss://127.0.0.1:{}/t/lab/", proxy.addr.port());
        let (ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }
    let mut before = wss(&proxy, &ca1).await.expect("first certificate served");
    echo(&mut before, "one").await;

    std::fs::write(&cert, &cert2).unwrap();
    std::fs::write(&key, &key2).unwrap();
    assert_eq!(reload(&proxy).await.0, 200);
    let mut after = wss(&proxy, &ca2).await.expect("new certificate served");
    echo(&mut after, "two").await;
    assert!(
        wss(&proxy, &ca1).await.is_err(),
        "the old certificate is gone"
    );
    // The session opened under the old certificate goes on.
    echo(&mut before, "still one").await;

    // A reload naming an unusable key is refused; the certificate in force stays.
    std::fs::write(&key, "not a key").unwrap();
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("listen.tls_key"), "{body}");
    let mut again = wss(&proxy, &ca2)
        .await
        .expect("still the second certificate");
    echo(&mut again, "three").await;
}

fn write_endpoints(path: &Path, endpoints: &[&Edge], rest: &str) {
    let urls: Vec<String> = endpoints
        .iter()
        .map(|e| format!("\"{}\"", e.url(false)))
        .collect();
    std::fs::write(
        path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream.groups.primary]\nendpoints = [{}]\n{rest}",
            urls.join(", ")
        ),
    )
    .unwrap();
}

/// A reload that adds an endpoint to a group while clients are queued: the queued
/// clients' requests were resolved under the old config, yet they are connected with
/// the group and pool in force (found in review: they used the old group's endpoint
/// list with the new pool's indexes, and panicked).
#[tokio::test]
async fn queued_clients_survive_a_reload_that_adds_an_endpoint() {
    let (edge1, edge2) = (edge().await, edge().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let tenant = |cap: u32| {
        format!(
            "[tenants.lab]\nauth = {{ kind = \"none\" }}\nmax_sessions = {cap}\n\
             handshake_rate = 1000.0\nhandshake_burst = 100\nqueue_timeout = \"30s\"\n"
        )
    };
    write_endpoints(&file, &[&edge1], &tenant(1));
    let proxy = proxy_from_file(&file).await;
    let url = proxy.url("/t/lab/");
    let mut first = connect_ok(&url, &[]).await;
    echo(&mut first, "hi").await;

    let queued: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { support::connect(&url, &[]).await.map(|(ws, _)| ws) })
        })
        .collect();
    let admission = proxy.admission.clone();
    wait_until("two clients to queue", async || {
        admission.tenant_load("lab").unwrap().queued == 2
    })
    .await;

    // Same group, one more endpoint, and room for the queued clients.
    write_endpoints(&file, &[&edge1, &edge2], &tenant(3));
    let (status, body) = admin_request(proxy.admin, "POST", "/-/reload").await;
    assert_eq!(status, 200, "{body}");

    for q in queued {
        let result = tokio::time::timeout(Duration::from_secs(10), q)
            .await
            .expect("answered in time");
        match result {
            Ok(Ok(mut ws)) => echo(&mut ws, "queued, then admitted").await,
            Ok(Err(e)) => panic!("a queued client was dropped by the reload: {e}"),
            Err(join) => panic!("client task failed: {join}"),
        }
    }
}

/// A reload that changes nothing keeps the adaptive back-off: an operator who reloads
/// during an edge brownout must not send the whole fleet back at full rate (found in
/// review).
#[tokio::test]
async fn a_reload_of_the_same_config_keeps_the_adaptive_back_off() {
    let text = "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                [edge]\nmax_sessions = 100\nhandshake_rate = 50.0\nhandshake_burst = 5\n\
                [upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n\
                [tenants.lab]\nauth = { kind = \"none\" }\nhandshake_rate = 20.0\n";
    let env = std::collections::HashMap::new();
    let config = sluice::Config::parse(text, &env).unwrap();
    let runtime = sluice::runtime::Runtime::new(config).unwrap();
    let lab = runtime.tenant("lab").unwrap();
    runtime.admission.upstream_trouble(&lab.gate, false);
    let backed_off = lab.gate.effective_rate();
    assert!(backed_off < 20.0, "{backed_off}");

    let same = sluice::Config::parse(text, &env).unwrap();
    sluice::reload::apply(&runtime, same).unwrap();
    let lab = runtime.tenant("lab").unwrap();
    assert_eq!(
        lab.gate.effective_rate(),
        backed_off,
        "a reload that changed nothing reset the adaptive rate"
    );
}

/// `[cluster]` takes a restart: a reload that adds, removes or changes it keeps the one
/// in force and says so, and applies the rest of the file. Only the configs are
/// compared, so no Redis is needed.
#[tokio::test]
async fn a_changed_cluster_section_is_kept_as_it_is_and_named_in_a_warning() {
    let text = |cluster: &str, cap: u32| {
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n\
             [tenants.lab]\nauth = {{ kind = \"none\" }}\nmax_sessions = {cap}\n{cluster}"
        )
    };
    let env = std::collections::HashMap::new();
    let parse = |t: &str| sluice::Config::parse(t, &env).unwrap();
    let runtime = sluice::runtime::Runtime::new(parse(&text("", 5))).unwrap();

    let cluster = "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nreplica_id = \"r1\"\n";
    let applied = sluice::reload::apply(&runtime, parse(&text(cluster, 7))).unwrap();
    assert_eq!(applied.warnings, [sluice::reload::CLUSTER_CHANGED]);
    assert!(
        applied.to_string().contains(
            "config key `cluster`: [cluster] cannot change while running: restart the replica"
        ),
        "{applied}"
    );
    // The rest applied; [cluster] stayed as it runs (absent).
    assert!(runtime.config().cluster.is_none());
    assert_eq!(runtime.config().tenants["lab"].limits.max_sessions, 7);

    // The same file again: nothing to warn about.
    let applied = sluice::reload::apply(&runtime, parse(&text("", 7))).unwrap();
    assert!(applied.warnings.is_empty(), "{applied}");
}

#[tokio::test]
async fn a_raised_rate_releases_a_client_waiting_for_a_token_at_once() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let tenant = |rate: &str| {
        format!("[tenants.lab]\nauth = {{ kind = \"none\" }}\nhandshake_rate = {rate}\nhandshake_burst = 1\nqueue_timeout = \"60s\"\n")
    };
    // One handshake per 30 s: the second client would wait about 30 s.
    support::write_config_file(&file, &edge, &tenant("0.0333"));
    let proxy = proxy_from_file(&file).await;
    let url = proxy.url("/t/lab/");
    let _first = connect_ok(&url, &[]).await;
    let waiting = queue_behind(&proxy, &url).await;

    support::write_config_file(&file, &edge, &tenant("100.0"));
    assert_eq!(reload(&proxy).await.0, 200);
    let mut second = admitted(waiting, "well before the old rate's 30 s").await;
    echo(&mut second, "in").await;
}
