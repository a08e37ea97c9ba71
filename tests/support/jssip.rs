//! JsSIP user agents for the tests: one `node tests/sip-ua/ua.js` process runs many
//! UAs (a real SIP transaction layer over `ws`, with a stub in place of WebRTC media),
//! driven by JSON lines: [`Jssip::send`] writes a command, and the process's events
//! are read on a background thread and waited for with [`Jssip::next_event`] and
//! [`Jssip::wait_for`]. The protocol is described at the top of `tests/sip-ua/ua.js`.
//!
//! Needs `node` on `PATH` and `npm ci --prefix tests/sip-ua` done (`.ci/run` does
//! both); without them [`Jssip::start`] skips the test locally and fails it under CI.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::tools::tool_missing;

/// A running `ua.js`: its UAs live as long as this does (the process is killed on drop).
#[derive(Debug)]
pub struct Jssip {
    child: Child,
    stdin: ChildStdin,
    events: UnboundedReceiver<Value>,
    /// Read from the process, not yet returned by `next_event` or `wait_for`.
    unread: VecDeque<Value>,
    seen: Vec<Value>,
    /// The `ready` event: the versions of JsSIP, ws and node.
    pub ready: Value,
}

/// `tests/sip-ua` in this package.
pub fn sip_ua_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sip-ua")
}

fn node_found() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Jssip {
    /// Starts `node tests/sip-ua/ua.js` and waits for its `ready` event. `None` (and a
    /// "SKIPPED" line) when node or the installed modules are missing and `CI` is unset.
    ///
    /// # Panics
    /// When node or the modules are missing under CI, or the process does not start.
    pub async fn start() -> Option<Jssip> {
        let dir = sip_ua_dir();
        let modules = ["jssip", "ws"].iter().all(|m| {
            dir.join("node_modules")
                .join(m)
                .join("package.json")
                .is_file()
        });
        if !node_found() || !modules {
            tool_missing(
                "node or tests/sip-ua/node_modules",
                "the JsSIP tests did not run (`npm ci --prefix tests/sip-ua`)",
            );
            return None;
        }
        let mut child = Command::new("node")
            .arg(dir.join("ua.js"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, events) = unbounded_channel();
        // Threads spawned from a test inherit its output capture: the logs show when
        // the test fails.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(event) => {
                        if tx.send(event).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("[ua.js stdout] {line}"),
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        let mut js = Jssip {
            child,
            stdin,
            events,
            unread: VecDeque::new(),
            seen: Vec::new(),
            ready: Value::Null,
        };
        js.ready = js
            .wait_for(
                "ua.js ready",
                |e| e["event"] == "ready",
                Duration::from_secs(20),
            )
            .await;
        Some(js)
    }

    /// Sends one command (`serde_json::json!({"cmd": "ua", ...})`).
    ///
    /// # Panics
    /// When the process is gone.
    pub fn send(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
            .expect("ua.js reads its commands");
    }

    /// The next event not yet returned (by this or [`Jssip::wait_for`]), if one comes
    /// within `timeout` (None also when the process has ended).
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(event) = self.unread.pop_front() {
            return Some(event);
        }
        self.read(timeout).await
    }

    /// Reads whatever events come within `d` (they stay unreturned, and are in
    /// [`Jssip::seen`]): for checks that something did *not* happen.
    pub async fn gather_for(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
            match self.read(left).await {
                Some(event) => self.unread.push_back(event),
                None => break,
            }
        }
    }

    /// Reads one more event from the process into `seen`.
    async fn read(&mut self, timeout: Duration) -> Option<Value> {
        let event = tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()?;
        self.seen.push(event.clone());
        Some(event)
    }

    /// The first event not yet returned that satisfies `pred`, waiting for it; the
    /// others stay unreturned (so waits for several UAs' events may come in any
    /// order), and all are in [`Jssip::seen`]. An `error` event fails the test (a
    /// command was refused), unless `pred` takes it.
    ///
    /// # Panics
    /// After `timeout` without one, or on an `error` event, with the recent events.
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        if let Some(at) = self.unread.iter().position(&pred) {
            return self.unread.remove(at).expect("found");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.read(left).await else {
                panic!(
                    "ua.js: no {what} within {timeout:?}; the last events:\n{}",
                    self.recent(40)
                );
            };
            if pred(&event) {
                return event;
            }
            assert!(
                event["event"] != "error",
                "ua.js refused a command while waiting for {what}: {event}"
            );
            self.unread.push_back(event);
        }
    }

    /// Waits for event `event` of UA `ua` (e.g. `"registered"`).
    pub async fn wait_ua(&mut self, ua: &str, event: &str, timeout: Duration) -> Value {
        self.wait_for(
            &format!("{event} of {ua}"),
            |e| e["ua"] == ua && e["event"] == event,
            timeout,
        )
        .await
    }

    /// Waits for an event of call `call` whose name is one of `events`.
    pub async fn wait_call(&mut self, call: &str, events: &[&str], timeout: Duration) -> Value {
        self.wait_for(
            &format!("{events:?} of call {call}"),
            |e| e["call"] == call && events.iter().any(|n| e["event"] == *n),
            timeout,
        )
        .await
    }

    /// Every event read from the process so far, in order (returned or not).
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// The events read so far of UA `ua` named `event`.
    pub fn seen_of(&self, ua: &str, event: &str) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|e| e["ua"] == ua && e["event"] == event)
            .collect()
    }

    /// The last `n` events read, one a line.
    pub fn recent(&self, n: usize) -> String {
        let from = self.seen.len().saturating_sub(n);
        self.seen[from..]
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Jssip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
