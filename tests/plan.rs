//! `sluice plan` (issue 18): profiles are checked key by key; waits through a tenant of
//! known limits are the ones arithmetic gives; `--json` has DESIGN.md's shape;
//! `--suggest` finds limits that a second plan confirms; `--from-log` turns a real
//! sluice's JSON log into arrivals that replay to what happened; a bad CSV row is named
//! by its line.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice::plan::{profile, simulate, Options, Report};

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `sluice plan ARGS`: success, stdout, stderr.
fn plan(args: &[&str]) -> (bool, String, String) {
    let out = sluice().arg("plan").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const UPSTREAM: &str = "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n";

fn config(text: &str) -> sluice::Config {
    sluice::Config::parse(&format!("{UPSTREAM}{text}"), &HashMap::new()).expect("valid config")
}

fn run(config_text: &str, profile_text: &str) -> Report {
    let profile = profile::parse(profile_text, Path::new(".")).expect("valid profile");
    let options = Options {
        seed: profile.seed,
        edge_alone: None,
    };
    simulate(&config(config_text), &profile.clients, &options)
}

fn profile_error(text: &str) -> String {
    profile::parse(text, Path::new("."))
        .expect_err("an invalid profile")
        .to_string()
}

#[test]
fn profile_errors_name_the_key() {
    let e = profile_error("[tenants.acme]\nramp = { conects = 5, over = \"1m\" }\n");
    assert!(
        e.starts_with("tenants.acme.ramp.conects: unknown field `conects`"),
        "{e}"
    );
    let e = profile_error("[tenants.acme]\nburst = { connects = 5 }\nretry = \"sometimes\"\n");
    assert!(
        e.starts_with("tenants.acme.retry: unknown variant `sometimes`"),
        "{e}"
    );
    assert!(e.contains("retry-after"), "the policies are listed: {e}");
    let e = profile_error(
        "[clients]\ngive_up_after = \"soon\"\n[tenants.a]\nburst = { connects = 1 }\n",
    );
    assert!(e.starts_with("clients.give_up_after:"), "{e}");
    let e = profile_error("[tenants.a]\nburst = { connects = 0 }\n");
    assert_eq!(e, "tenants.a.burst.connects: must be at least 1");
    let e = profile_error("[tenants.a]\nburst = { connects = 9000000 }\n[tenants.b]\nburst = { connects = 2000000 }\n");
    assert!(
        e.starts_with(
            "tenants.b.burst.connects: 2000000 makes 11000000 connects, more than a plan takes"
        ),
        "{e}"
    );
    let e = profile_error("[tenants.a]\nburst = { connects = 1 }\nmax_attempts = 0\n");
    assert_eq!(
        e,
        "tenants.a.max_attempts: must be at least 1 (the first attempt)"
    );
    let e = profile_error(
        "[tenants.a]\nburst = { connects = 1 }\nhold = { uniform = [\"2h\", \"1h\"] }\n",
    );
    assert_eq!(
        e,
        "tenants.a.hold: uniform: the first bound is above the second"
    );
    let e = profile_error("[tenants.a]\nretry_factor = 0.5\nburst = { connects = 1 }\n");
    assert_eq!(e, "tenants.a.retry_factor: must be a number of at least 1");
    let e = profile_error("sed = 3\n");
    assert!(e.starts_with("sed: unknown field `sed`"), "{e}");
    let e = profile_error("seed = 3\n");
    assert!(e.starts_with("no connects"), "{e}");

    // Through the command line: the file is named too, and the exit code is 1.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "sluice.toml",
        &format!("{UPSTREAM}[tenants.a]\nauth = {{ kind = \"none\" }}\n"),
    );
    let prof = write(
        dir.path(),
        "p.toml",
        "[tenants.a]\nramp = { connects = 5 }\n",
    );
    let out = sluice()
        .args(["plan", "--config", s(&cfg), "--profile", s(&prof)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p.toml: tenants.a.ramp: missing field `over`"),
        "{stderr}"
    );
}

#[test]
fn a_ramp_through_a_paced_tenant_waits_what_arithmetic_says() {
    // 50 connects 100 ms apart through a tenant that takes one every 200 ms (burst 1):
    // the i-th arrives at 0.1·i and is admitted at 0.2·i, so it waits 0.1·i seconds.
    let report = run(
        "[tenants.t]\nauth = { kind = \"none\" }\nhandshake_rate = 5.0\nhandshake_burst = 1\nqueue_depth = 100\nqueue_timeout = \"60s\"\n",
        "[tenants.t]\nramp = { connects = 50, over = \"5s\" }\nhold = \"1h\"\n",
    );
    let t = &report.tenants["t"];
    assert_eq!((t.connects, t.connected, t.attempts), (50, 50, 50));
    assert!(t.refused.is_empty(), "{:?}", t.refused);
    let close = |got: Option<f64>, want: f64| {
        let got = got.expect("a wait");
        assert!((got - want).abs() < 0.002, "{got} s, expected {want} s");
    };
    // Nearest rank over the waits 0, 0.1, …, 4.9.
    close(t.wait_p50, 2.4);
    close(t.wait_p95, 4.7);
    close(t.wait_p99, 4.9);
    close(t.wait_max, 4.9);
    close(t.all_connected_at, 9.8);
    // Queued: all that arrived and are not yet admitted; most at 4.9 s (25 left).
    assert!((24..=26).contains(&t.peak_queue), "{}", t.peak_queue);
    assert_eq!(report.edge.peak_sessions, 50);
    assert!(report.edge.peak_rate <= 6, "{}", report.edge.peak_rate);
}

#[test]
fn patience_retries_and_the_session_cap_are_modelled() {
    // One a second, burst 1, queue of 3: of 10 clients at once, 4 are in (at 0, 1, 2, 3 s),
    // 3 queue and 3 are refused queue-full; refused ones retry after 10 s with backoff; a
    // client gives up 3.5 s after its first attempt.
    let report = run(
        "[tenants.t]\nauth = { kind = \"none\" }\nhandshake_rate = 1.0\nhandshake_burst = 1\nqueue_depth = 3\nqueue_timeout = \"60s\"\n",
        "[tenants.t]\nburst = { connects = 10 }\ngive_up_after = \"3500ms\"\nretry = \"backoff\"\nretry_initial = \"10s\"\nhold = \"1h\"\n",
    );
    let t = &report.tenants["t"];
    assert_eq!(t.connected, 4);
    assert_eq!(t.refused.get("queue-full"), Some(&6));
    assert_eq!(
        t.gave_up, 6,
        "3 queued ran out of patience, 3 would retry too late"
    );
    assert_eq!(t.peak_queue, 3);
    assert_eq!(t.all_connected_at, None);

    // A cap of 2 sessions of 10 s: the third waits for the first to end.
    let report = run(
        "[tenants.t]\nauth = { kind = \"none\" }\nmax_sessions = 2\nhandshake_rate = 100.0\nqueue_depth = 10\nqueue_timeout = \"60s\"\n",
        "[tenants.t]\nburst = { connects = 3 }\nhold = \"10s\"\n",
    );
    let t = &report.tenants["t"];
    assert_eq!(t.connected, 3);
    assert!(
        (t.wait_max.unwrap() - 10.0).abs() < 0.002,
        "{:?}",
        t.wait_max
    );
    assert_eq!(report.edge.peak_sessions, 2);
}

#[test]
fn json_has_the_designed_shape_and_the_edge_alone_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "sluice.toml",
        &format!(
            "{UPSTREAM}[edge]\nmax_sessions = 100\nhandshake_rate = 50.0\nhandshake_burst = 10\n\
             [tenants.acme]\nauth = {{ kind = \"none\" }}\nhandshake_rate = 5.0\nhandshake_burst = 2\nqueue_depth = 50\n\
             [tenants.globex]\nauth = {{ kind = \"none\" }}\nmax_sessions = 5\nqueue_depth = 0\n"
        ),
    );
    let prof = write(
        dir.path(),
        "p.toml",
        "[tenants.acme]\nburst = { connects = 10 }\nhold = \"1m\"\n[tenants.globex]\nramp = { connects = 8, over = \"4s\", from = \"1s\" }\nhold = \"1m\"\n",
    );
    let (ok, stdout, stderr) = plan(&[
        "--config",
        s(&cfg),
        "--profile",
        s(&prof),
        "--json",
        "--edge-rate",
        "2",
        "--edge-sessions",
        "15",
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("one JSON object");
    for name in ["acme", "globex"] {
        let t = &v["tenants"][name];
        for key in [
            "connects",
            "connected",
            "wait_p50",
            "wait_p95",
            "wait_p99",
            "wait_max",
            "peak_queue",
        ] {
            assert!(t[key].is_number(), "tenants.{name}.{key}: {}", t[key]);
        }
        // A number once every client is in, `null` while some never got in.
        assert!(
            t["all_connected_at"].is_number() || t["all_connected_at"].is_null(),
            "{t}"
        );
        assert!(t["refused"].is_object(), "{t}");
    }
    assert!(v["edge"]["peak_sessions"].is_number());
    assert!(v["edge"]["peak_rate"].is_number());
    // acme: 10 at once, burst 2 then one every 200 ms: the last waits 1.6 s.
    assert_eq!(v["tenants"]["acme"]["connected"], 10);
    assert!(v["tenants"]["acme"]["all_connected_at"].is_number());
    let max = v["tenants"]["acme"]["wait_max"].as_f64().unwrap();
    assert!((max - 1.6).abs() < 0.002, "{max}");
    // globex: 5 sessions, no queue: 3 refused queue-full.
    assert_eq!(v["tenants"]["globex"]["connected"], 5);
    assert_eq!(v["tenants"]["globex"]["refused"]["queue-full"], 3);
    assert_eq!(v["tenants"]["globex"]["all_connected_at"], Value::Null);
    // Without sluice, an edge of 2/s (burst 2) and 15 sessions: of the 10 at once, 8
    // are over the rate; of globex's 8 at 2/s, none is, and 12 sessions fit under 15.
    let alone = &v["edge"]["alone"];
    assert_eq!(alone["refused_rate"], 8, "{alone}");
    assert_eq!(alone["refused_sessions"], 0, "{alone}");
    assert_eq!(alone["by_tenant"]["acme"], 8, "{alone}");

    // The text report says the same.
    let (ok, stdout, _) = plan(&[
        "--config",
        s(&cfg),
        "--profile",
        s(&prof),
        "--edge-sessions",
        "3",
    ]);
    assert!(ok);
    assert!(stdout.contains("queue-full 3"), "{stdout}");
    assert!(
        stdout.contains("would have refused 0 handshakes for its rate and 15 for its sessions"),
        "{stdout}"
    );
}

/// Deep-merges `snippet` (TOML) into `base`.
fn merge(base: &mut toml::Table, snippet: toml::Table) {
    for (k, v) in snippet {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(s)) => merge(b, s),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[test]
fn suggested_limits_meet_the_target_in_a_second_plan() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{UPSTREAM}[edge]\nmax_sessions = 150\nhandshake_rate = 3.0\nhandshake_burst = 5\n\
         [tenants.burst]\nauth = {{ kind = \"none\" }}\nhandshake_rate = 2.0\nhandshake_burst = 1\nqueue_depth = 40\nqueue_timeout = \"30s\"\n\
         [tenants.steady]\nauth = {{ kind = \"none\" }}\nmax_sessions = 20\nhandshake_rate = 5.0\nqueue_depth = 200\nqueue_timeout = \"2m\"\n"
    );
    let cfg = write(dir.path(), "sluice.toml", &text);
    let prof = write(
        dir.path(),
        "p.toml",
        "seed = 4\n[clients]\nretry = \"jitter\"\nmax_attempts = 5\n\
         [tenants.burst]\nburst = { connects = 100, within = \"2s\" }\nhold = \"10m\"\n\
         [tenants.steady]\nramp = { connects = 60, over = \"30s\" }\nhold = { uniform = [\"20s\", \"40s\"] }\n",
    );
    let json = |cfg: &Path, extra: &[&str]| -> Value {
        let mut args = vec!["--config", s(cfg), "--profile", s(&prof), "--json"];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = plan(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    let target = 5.0;
    let meets = |v: &Value| {
        v["tenants"].as_object().unwrap().values().all(|t| {
            t["wait_p99"].as_f64().unwrap() <= target
                && t["refused"].as_object().unwrap().is_empty()
                && t["gave_up"] == 0
        })
    };
    let first = json(&cfg, &["--suggest", "--max-wait", "5s"]);
    assert!(
        !meets(&first),
        "the config as it is misses the target: {first}"
    );
    let suggest = &first["suggest"];
    assert_eq!(suggest["met"], true, "{suggest}");

    // The suggested limits, written into the config as an operator would.
    let mut table: toml::Table = text.parse().unwrap();
    let mut snippet = toml::Table::new();
    let e = &suggest["edge"];
    let int = |v: &Value| toml::Value::Integer(v.as_i64().unwrap());
    let float = |v: &Value| toml::Value::Float(v.as_f64().unwrap());
    let entries = |pairs: Vec<(&str, toml::Value)>| {
        toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    };
    snippet.insert(
        "edge".into(),
        entries(vec![
            ("max_sessions", int(&e["max_sessions"])),
            ("handshake_rate", float(&e["handshake_rate"])),
            ("handshake_burst", int(&e["handshake_burst"])),
        ]),
    );
    let mut tenants = toml::Table::new();
    for (name, t) in suggest["tenants"].as_object().unwrap() {
        let timeout = format!(
            "{}ms",
            (t["queue_timeout"].as_f64().unwrap() * 1000.0).round()
        );
        tenants.insert(
            name.clone(),
            entries(vec![
                ("max_sessions", int(&t["max_sessions"])),
                ("handshake_rate", float(&t["handshake_rate"])),
                ("queue_depth", int(&t["queue_depth"])),
                ("queue_timeout", toml::Value::String(timeout)),
            ]),
        );
    }
    snippet.insert("tenants".into(), toml::Value::Table(tenants));
    merge(&mut table, snippet);
    let tuned = write(dir.path(), "tuned.toml", &toml::to_string(&table).unwrap());
    let second = json(&tuned, &[]);
    assert!(meets(&second), "{second}");
    // The smallest edge rate: a tenth less misses.
    let rate = e["handshake_rate"].as_f64().unwrap();
    assert!(rate > 3.0, "the edge rate had to rise: {rate}");
    table["edge"]["handshake_rate"] = toml::Value::Float((rate * 0.9 * 10.0).floor() / 10.0);
    let lower = write(dir.path(), "lower.toml", &toml::to_string(&table).unwrap());
    assert!(!meets(&json(&lower, &[])), "a lower edge rate misses");

    // The text form is a config snippet.
    let (ok, stdout, _) = plan(&[
        "--config",
        s(&cfg),
        "--profile",
        s(&prof),
        "--suggest",
        "--max-wait",
        "5s",
    ]);
    assert!(ok);
    assert!(stdout.contains("[edge]\nmax_sessions = "), "{stdout}");
    assert!(
        stdout.contains("[tenants.burst]\nmax_sessions = "),
        "{stdout}"
    );
}

#[test]
fn csv_errors_name_the_line_and_arrivals_run_without_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "sluice.toml",
        &format!("{UPSTREAM}[tenants.a]\nauth = {{ kind = \"none\" }}\n"),
    );
    let bad = write(dir.path(), "day.csv", "tenant,at,hold\na,0,10\na,x,10\n");
    let (ok, _, stderr) = plan(&["--config", s(&cfg), "--arrivals", s(&bad)]);
    assert!(!ok);
    assert!(
        stderr.contains("day.csv line 3: at: \"x\" is not a number of seconds"),
        "{stderr}"
    );

    // A tenant the config does not know is refused as sluice would refuse it.
    let good = write(
        dir.path(),
        "day.csv",
        "tenant,at,hold\na,0,10\na,0.5,\nnobody,1,5\n",
    );
    let (ok, stdout, stderr) = plan(&["--config", s(&cfg), "--arrivals", s(&good), "--json"]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["tenants"]["a"]["connected"], 2);
    assert_eq!(v["tenants"]["nobody"]["refused"]["tenant-unknown"], 1);

    // The same CSV for every tenant of a profile: a tenant's own keys apply to its rows,
    // so the empty hold is a's 400 ms (not the default hour): all is over at 10 s.
    let prof = write(
        dir.path(),
        "all.toml",
        "arrivals = \"day.csv\"\n[tenants.a]\nhold = \"400ms\"\n",
    );
    let (ok, stdout, stderr) = plan(&["--config", s(&cfg), "--profile", s(&prof), "--json"]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["tenants"]["a"]["connects"], 2);
    assert!((v["span"].as_f64().unwrap() - 10.0).abs() < 0.01, "{v}");

    // A profile's per-tenant CSV is relative to the profile and holds only its tenant.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    write(&sub, "a.csv", "tenant,at,hold\na,0,1\nb,1,1\n");
    let prof = write(&sub, "p.toml", "[tenants.a]\narrivals = \"a.csv\"\n");
    let (ok, _, stderr) = plan(&["--config", s(&cfg), "--profile", s(&prof)]);
    assert!(!ok);
    assert!(
        stderr.contains("a.csv line 3: tenant \"b\" in the arrivals of tenants.a"),
        "{stderr}"
    );
}

#[test]
fn the_plot_is_an_svg_drawn_by_plotters() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "sluice.toml", &format!("{UPSTREAM}[tenants.a]\nauth = {{ kind = \"none\" }}\nhandshake_rate = 2.0\nqueue_depth = 100\n"));
    let prof = write(
        dir.path(),
        "p.toml",
        "[tenants.a]\nburst = { connects = 40 }\nhold = \"1m\"\n",
    );
    let svg = dir.path().join("plan.svg");
    let (ok, _, stderr) = plan(&[
        "--config",
        s(&cfg),
        "--profile",
        s(&prof),
        "--plot",
        s(&svg),
    ]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
    assert!(text.contains("queue depth") && text.contains("admitted connects per second"));
    assert!(text.matches("<polyline").count() >= 2, "a line per chart");
}

/// `sluice --log-format json run`, its log lines as they come, and where it listens.
struct Running {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    addr: String,
}

impl Running {
    fn start(config: &Path) -> Self {
        use std::io::BufRead;
        let mut child = sluice()
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "proxy listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                    }
                }
                keep.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sluice says where it listens");
        Self { child, lines, addr }
    }

    fn count(&self, message: &str) -> usize {
        let needle = format!("\"message\":\"{message}\"");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn from_log_turns_a_real_morning_into_arrivals_that_replay_to_it() {
    let edge = support::edge().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.groups.primary]\nendpoints = [\"{}\"]\n\
         [tenants.lab]\nauth = {{ kind = \"none\" }}\nmax_sessions = 1\nqueue_depth = 5\nqueue_timeout = \"10s\"\n\
         [tenants.small]\nauth = {{ kind = \"none\" }}\nmax_sessions = 1\nqueue_depth = 0\n",
        edge.url(false)
    );
    let cfg = write(dir.path(), "sluice.toml", &text);
    let sluice = Running::start(&cfg);
    let url = |tenant: &str| format!("ws://{}/t/{tenant}/", sluice.addr);
    let t0 = tokio::time::Instant::now();
    // lab: A at 0 holds 800 ms; B at 200 ms waits for A, then holds 300 ms.
    // small: C at 0 holds 800 ms; D at 300 ms is refused (cap 1, no queue).
    let (ua, ub, uc, ud) = (url("lab"), url("lab"), url("small"), url("small"));
    let a = tokio::spawn(async move {
        let ws = support::connect_ok(&ua, &[]).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        drop(ws);
    });
    let c = tokio::spawn(async move {
        let ws = support::connect_ok(&uc, &[]).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        drop(ws);
    });
    tokio::time::sleep_until(t0 + Duration::from_millis(200)).await;
    let b = tokio::spawn(async move {
        let ws = support::connect_ok(&ub, &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(ws);
    });
    tokio::time::sleep_until(t0 + Duration::from_millis(300)).await;
    let refused = support::connect_refused(&ud, &[]).await;
    assert_eq!(refused.status(), 429);
    for task in [a, b, c] {
        task.await.unwrap();
    }
    for _ in 0..100 {
        if sluice.count("session ended") >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sluice.count("session ended"), 3);
    let log = write(
        dir.path(),
        "sluice.log",
        &sluice.lines.lock().unwrap().join("\n"),
    );
    drop(sluice);

    let csv = dir.path().join("day.csv");
    let (ok, stdout, stderr) = plan(&["--from-log", s(&log), "--out", s(&csv)]);
    assert!(ok, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("4 connects"), "{stderr}");
    let rows = sluice::plan::arrivals::load(&csv).unwrap();
    let got: Vec<(&str, f64, Option<f64>)> = rows
        .iter()
        .map(|r| {
            (
                &*r.tenant,
                r.at.as_secs_f64(),
                r.hold.map(|h| h.as_secs_f64()),
            )
        })
        .collect();
    let near = |x: f64, want: f64, slack: f64| (x - want).abs() <= slack;
    let find = |tenant: &str, at: f64| {
        got.iter()
            .find(|r| r.0 == tenant && near(r.1, at, 0.1))
            .unwrap_or_else(|| panic!("no {tenant} row near {at} s in {got:?}"))
    };
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(near(find("lab", 0.0).2.unwrap(), 0.8, 0.15), "{got:?}");
    assert!(near(find("lab", 0.2).2.unwrap(), 0.3, 0.15), "{got:?}");
    assert!(near(find("small", 0.0).2.unwrap(), 0.8, 0.15), "{got:?}");
    assert_eq!(find("small", 0.3).2, None, "a refused connect has no hold");

    // Replayed through the same config: B waits for A's session, D is refused.
    let (ok, stdout, stderr) = plan(&["--config", s(&cfg), "--arrivals", s(&csv), "--json"]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["tenants"]["lab"]["connected"], 2, "{v}");
    let wait = v["tenants"]["lab"]["wait_max"].as_f64().unwrap();
    assert!(
        near(wait, 0.6, 0.15),
        "B waited {wait} s in the plan, about 0.6 s for real"
    );
    assert_eq!(v["tenants"]["small"]["connected"], 1, "{v}");
    assert_eq!(v["tenants"]["small"]["refused"]["queue-full"], 1, "{v}");
}

/// A shadow tenant (`enforce = false`) is planned as the proxy runs it: every connect
/// goes on at once, and what enforcing would have done is reported — the same
/// decisions as a plan of the same tenant enforced (the same model, driven the same way).
#[test]
fn a_shadow_tenant_goes_on_at_once_and_reports_what_enforcing_would_have_done() {
    let limits = "auth = { kind = \"none\" }\nmax_sessions = 3\nhandshake_rate = 2.0\nhandshake_burst = 1\nqueue_depth = 4\nqueue_timeout = \"2s\"\n";
    let profile = "[tenants.t]\nburst = { connects = 12 }\nhold = \"1h\"\n";
    let enforced = run(&format!("[tenants.t]\n{limits}"), profile);
    let shadow = run(&format!("[tenants.t]\n{limits}enforce = false\n"), profile);
    let (e, s) = (&enforced.tenants["t"], &shadow.tenants["t"]);
    assert!(
        e.shadow.is_none(),
        "an enforced tenant has no shadow report"
    );
    // Enforced: 1 at once (burst 1), 4 queue, 7 refused queue-full; of the 4 queued,
    // 2 more get in (2/s, cap 3) and 2 time out.
    assert_eq!(e.connected, 3);
    assert_eq!(e.refused.get("queue-full"), Some(&7));
    assert_eq!(e.refused.get("queue-timeout"), Some(&2));
    // Shadow: all 12 in, none waited.
    assert_eq!(s.connected, 12);
    assert!(s.refused.is_empty(), "{:?}", s.refused);
    assert_eq!(s.wait_max, Some(0.0));
    let would = &s.shadow.as_ref().expect("a shadow report").would;
    let got = |k: &str| would.get(k).copied().unwrap_or(0);
    assert_eq!(got("admit"), 1, "{would:?}");
    assert_eq!(got("queue"), 4, "{would:?}");
    assert_eq!(got("queue-full"), e.refused["queue-full"], "{would:?}");
    assert_eq!(
        got("queue-timeout"),
        e.refused["queue-timeout"],
        "{would:?}"
    );
    // The would-be waits are the enforced waits of the clients that queued.
    let max = s.shadow.as_ref().unwrap().would_wait_max.unwrap();
    assert!((max - 2.0).abs() < 0.01, "would-be wait max {max}");

    // Sessions of 1 s, shorter than the would-be waits: a would-be session lasts as
    // long as its real one from when enforcing would have let it in, so it outlives
    // it, and the report counts every decision, made after the last real session.
    let profile = "[tenants.t]\nburst = { connects = 12 }\nhold = \"1s\"\n";
    let enforced = run(&format!("[tenants.t]\n{limits}"), profile);
    let shadow = run(&format!("[tenants.t]\n{limits}enforce = false\n"), profile);
    let (e, s) = (&enforced.tenants["t"], &shadow.tenants["t"]);
    let would = &s.shadow.as_ref().expect("a shadow report").would;
    let got = |k: &str| would.get(k).copied().unwrap_or(0);
    let refused = |k: &str| e.refused.get(k).copied().unwrap_or(0);
    assert_eq!(s.connected, 12);
    assert_eq!(
        got("queue-full"),
        refused("queue-full"),
        "{would:?} {:?}",
        e.refused
    );
    assert_eq!(
        got("queue-timeout"),
        refused("queue-timeout"),
        "{would:?} {:?}",
        e.refused
    );
    assert_eq!(
        got("admit") + got("queue"),
        12 - refused("queue-full"),
        "{would:?}"
    );
    // Would-be waits count the timed-out tickets' waits too (as
    // sluice_shadow_wait_seconds does), the plan's waits only the admitted clients'.
    let expected = if refused("queue-timeout") > 0 {
        Some(2.0)
    } else {
        e.wait_max
    };
    assert_eq!(s.shadow.as_ref().unwrap().would_wait_max, expected);
}
