//! A page in headless Chromium, driven over the DevTools protocol (CDP): open a URL at a
//! given viewport size, then evaluate JavaScript in it and read the result back (what
//! `--dump-dom` cannot: layout sizes, loaded resources).
//!
//! Chromium runs with [`super::CHROMIUM_FLAGS`] (only 127.0.0.1 resolves) and a fresh
//! profile, and is killed when the [`Page`] is dropped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// How long Chromium may take to start, and any one protocol call to answer.
const PATIENCE: Duration = Duration::from_secs(30);

/// One page (tab) of a headless Chromium of its own.
pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    _browser: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Page {
    /// Starts `browser`, opens `url` in a viewport `width` x `height` CSS pixels (scale
    /// 1) and waits until it has loaded.
    pub async fn open(browser: &Path, url: &str, width: u32, height: u32) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(browser)
            .args(super::CHROMIUM_FLAGS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        // Chromium writes its port and the browser's WebSocket path into the profile.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&active) {
                if let Some((port, path)) = text.split_once('\n') {
                    if !path.trim().is_empty() {
                        break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromium did not open its DevTools port in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .expect("DevTools WebSocket");
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 0,
            _browser: child,
            _profile: profile,
        };
        let target = page
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await["targetId"]
            .clone();
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        page.call("Page.navigate", json!({ "url": url })).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while page.eval("location.href + ' ' + document.readyState").await
            != json!(format!("{url} complete"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url} did not load in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        page
    }

    /// Calls `method` (in the page once attached) and returns its `result`; events
    /// that come first are dropped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let reply = self.next_message().await;
            if reply["id"] == json!(id) {
                assert!(
                    reply.get("error").is_none(),
                    "{method} failed: {}",
                    reply["error"]
                );
                return reply["result"].clone();
            }
        }
    }

    async fn next_message(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("chromium answered in time")
                .expect("DevTools connection open")
                .expect("DevTools message");
            if let Message::Text(text) = msg {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    /// Evaluates `expression` in the page (a promise is awaited) and returns its value
    /// as JSON. A thrown exception fails the test with its text.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("the page's script threw: {e}");
        }
        r["result"]["value"].clone()
    }
}
