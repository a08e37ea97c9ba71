//! The command line: `check-config` accepts the shipped examples, refuses bad files with
//! the key and the reason, and `run` serves and refuses to start on a bad config.

use std::process::Command;
use std::time::Duration;

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn shipped_example_configs_are_valid() {
    for file in [
        "config/sluice.toml",
        "config/auth-none.toml",
        "config/auth-api-key.toml",
        "config/auth-jwt.toml",
    ] {
        let out = sluice()
            .args(["check-config", file])
            .env("SLUICE_ACME_JWT_SECRET", "example-secret-0123456789")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("tenant"), "{stdout}");
    }
    // The effective limits: acme's own, and what it inherits from [defaults].
    let out = sluice()
        .args(["check-config", "config/sluice.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("10000 pending handshakes, 32 per address,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream: handshake timeout 3s, retry budget 10s, max pause 5m,"),
        "{stdout}"
    );
    let acme = stdout.lines().find(|l| l.starts_with("acme ")).unwrap();
    let cells: Vec<&str> = acme.split_whitespace().collect();
    assert_eq!(
        &cells[..9],
        [
            "acme",
            "200",
            "20",
            "5",
            "200",
            "10s",
            "hold",
            "2",
            "acme-media"
        ]
    );
}

#[test]
fn invalid_config_names_the_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n[tenants.acme]\nhandshake_rate = 0\nauth = { kind = \"jwt\" }\n",
    )
    .unwrap();
    let out = sluice().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tenants.acme.handshake_rate"), "{stderr}");
    assert!(stderr.contains("must be a rate above 0"), "{stderr}");
    assert!(stderr.contains("tenants.acme.auth"), "{stderr}");
    assert!(stderr.contains("secret_env"), "{stderr}");

    // An environment override is validated like the file.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n[tenants.acme]\nauth = { kind = \"none\" }\n",
    )
    .unwrap();
    let out = sluice()
        .arg("check-config")
        .arg(&good)
        .env("SLUICE__TENANTS__ACME__MAX_SESSIONS", "-3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenants.acme.max_sessions"));

    let out = sluice()
        .args(["check-config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn help_describes_each_command() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check-config", "--help"],
    ] {
        let out = sluice().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{text}");
    }
    let out = sluice().args(["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}

#[test]
fn run_refuses_an_invalid_config_and_serves_a_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[listen]\naddress = \"nowhere\"\n").unwrap();
    let out = sluice()
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen.address"));

    // A valid config: the process serves (a plain GET gets 426) until killed. It binds
    // port 0 and says where in its log (no race with other tests for a free port).
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n[tenants.lab]\nauth = { kind = \"none\" }\n",
    )
    .unwrap();
    let mut child = sluice()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&good)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = {
        use std::io::BufRead;
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["message"] == "proxy listening" {
                addr = entry["addr"].as_str().map(str::to_owned);
                break;
            }
        }
        addr.expect("the log says where sluice listens")
    };
    let mut answer = String::new();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let _ = s.read_to_string(&mut answer);
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    // `sluice run > file 2>&1` and journald read the log from a pipe or a file: the
    // text lines must be plain. (An invalid config is logged through tracing, then
    // the process exits 1.)
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[listen]\naddress = \"nowhere\"\n").unwrap();
    let out = sluice()
        .args(["--log-format", "text", "run", "--config"])
        .arg(&bad)
        .env_remove("NO_COLOR")
        .env_remove("SLUICE_LOG_FORMAT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR") && stderr.contains("listen.address"),
        "the tracing line is there: {stderr}"
    );
    assert!(
        !stderr.contains('\x1b') && !String::from_utf8_lossy(&out.stdout).contains('\x1b'),
        "no ANSI escape in a piped log: {stderr:?}"
    );
}
