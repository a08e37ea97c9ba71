//! What a browser sees, in headless Chromium: a refused handshake in `hold` mode reaches
//! JavaScript as close code 1006 with no reason, while in `accept` mode the socket opens
//! at once (with the tenant's subprotocol), a queue timeout arrives as close 1013 with
//! `"queue-timeout; retry-after=N"`, and an admitted socket relays messages.
//!
//! The page is served by a small HTTP server in the test, on 127.0.0.1 like everything
//! else; it reports what each socket saw by fetching `/report/NAME?…` from that server.
//! Runs when Chromium is installed (`.ci/run` installs it); says loudly when skipped.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{chromium, connect_ok, edge, proxy, tool_missing};

type Reports = Arc<Mutex<HashMap<String, String>>>;

/// Serves `page` at `/` and records `/report/NAME?TEXT` requests.
async fn page_server(page: String) -> (std::net::SocketAddr, Reports) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reports: Reports = Arc::default();
    let r = reports.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let page = page.clone();
            let reports = r.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let (status, body) = if let Some(rest) = target.strip_prefix("/report/") {
                    let (name, text) = rest.split_once('?').unwrap_or((rest, ""));
                    let text: String = form_urlencoded::parse(format!("t={text}").as_bytes())
                        .map(|(_, v)| v.into_owned())
                        .collect();
                    reports.lock().unwrap().insert(name.to_owned(), text);
                    ("204 No Content", String::new())
                } else if target == "/" {
                    ("200 OK", page)
                } else {
                    ("404 Not Found", String::new())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, reports)
}

#[tokio::test]
async fn chromium_sees_close_1013_with_its_reason_in_accept_mode_and_1006_in_hold_mode() {
    let Some(browser) = chromium() else {
        tool_missing(
            "Chromium (apt-get install chromium)",
            "accept mode was not tested in a browser",
        );
        return;
    };
    let edge = edge().await; // accepts subprotocol "sip"
    let proxy = proxy(&format!(
        "[upstream.groups.primary]\nendpoints = [\"{}\"]\n\
         [tenants.acc]\nauth = {{ kind = \"none\" }}\nqueue_mode = \"accept\"\nmax_sessions = 1\nqueue_timeout = \"1s\"\n\
         [tenants.free]\nauth = {{ kind = \"none\" }}\nqueue_mode = \"accept\"\n\
         [tenants.hld]\nauth = {{ kind = \"none\" }}\nmax_sessions = 1\nqueue_timeout = \"1s\"\n",
        edge.url(false)
    ))
    .await;
    // Both capped tenants are full.
    let _acc = connect_ok(&proxy.url("/t/acc/"), &[]).await;
    let _hld = connect_ok(&proxy.url("/t/hld/"), &[]).await;

    let base = format!("ws://{}", proxy.addr);
    let page = format!(
        r#"<!doctype html><script>
function attempt(name, url) {{
  const seen = [];
  const ws = new WebSocket(url, ["sip"]);
  ws.onopen = () => {{ seen.push("open:" + ws.protocol); ws.send("hello from " + name); }};
  ws.onmessage = (e) => {{ seen.push("message:" + e.data); ws.close(4000, "done"); }};
  ws.onclose = (e) => {{
    seen.push("close:" + e.code + ":" + e.reason);
    fetch("/report/" + name + "?" + encodeURIComponent(seen.join("|")));
  }};
}}
attempt("accept", "{base}/t/acc/");
attempt("hold", "{base}/t/hld/");
attempt("free", "{base}/t/free/");
</script>"#
    );
    let (page_addr, reports) = page_server(page).await;

    let profile = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(&browser)
        .args(support::CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{page_addr}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while reports.lock().unwrap().len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
    let reports = reports.lock().unwrap().clone();

    // Hold mode: the 429 surfaces as 1006 with no reason and no open.
    assert_eq!(
        reports.get("hold").map(String::as_str),
        Some("close:1006:"),
        "{reports:?}"
    );
    // Accept mode: open at once with the subprotocol, then 1013 and the reason.
    let accept = reports.get("accept").expect("accept socket reported");
    let rest = accept
        .strip_prefix("open:sip|close:1013:queue-timeout; retry-after=")
        .unwrap_or_else(|| panic!("accept socket saw {accept}"));
    assert!(rest.parse::<u64>().is_ok_and(|n| n >= 1), "{accept}");
    // An admitted socket relays both ways; the browser's close code reaches the edge.
    assert_eq!(
        reports.get("free").map(String::as_str),
        Some("open:sip|message:hello from free|close:4000:done"),
        "{reports:?}"
    );
    edge.wait_for("the browser's close", |e| {
        e.closes
            .lock()
            .unwrap()
            .iter()
            .any(|(code, _)| *code == 4000)
    })
    .await;
}
