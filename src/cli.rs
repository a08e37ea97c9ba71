//! Entry: the command line (`run`, `check-config`, `edge-sim`, `spike`, `demo`, `plan`, `health`).
//!
//! The command line: `sluice run`, `check-config`, `edge-sim`, `spike`, `demo`, `plan`,
//! `health`, and the shared logging flags.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{
    redact_redis_url, Auth, Cluster, Config, IdentitySource, RedisTarget, Tenant, UnknownTenant,
};

/// sluice: a multi-tenant, capacity-aware WebSocket signaling proxy.
///
/// It stands between a softphone fleet and a contact-center edge, enforces each tenant's
/// limits before the edge does, and relays each admitted WebSocket both ways.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::logging::LogFormat;

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    ///
    /// Listens on `listen.address` for WebSocket upgrades, resolves and authenticates
    /// each client's tenant, connects it to its upstream group and relays both ways.
    /// SIGHUP (or POST /-/reload on the admin listener) reloads the config file; an
    /// invalid one is refused and the running config kept. SIGTERM or SIGINT drains:
    /// /readyz answers 503, new and queued connects are refused, live sessions get
    /// shutdown.drain_timeout to end, the rest are closed, and the process exits 0.
    /// Log verbosity follows RUST_LOG (default "info"). SLUICE__SECTION__KEY environment
    /// variables override keys of the file.
    Run {
        /// Config file (TOML).
        #[arg(long, short, value_name = "FILE", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective limits per tenant.
    ///
    /// Exits 0 when the file is valid, 1 with every invalid key and why when it is not.
    /// Environment overrides and JWT secrets are read as `run` would read them.
    CheckConfig {
        /// Config file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Run an edge simulator: a WebSocket server with a cloud edge's limits.
    ///
    /// Per organisation (header x-tenant-id, else query parameter `org`) it caps live
    /// sessions and handshakes per second; above all it caps sessions and models the
    /// node's CPU: latency climbs past 85 % of `--capacity`, handshakes beyond it get
    /// 503 with Retry-After and x-trace-id, handshakes slower than `--drop-after` are
    /// dropped. Every handshake beyond its limits counts as a violation. With `--mode
    /// sip` it is a registrar and a call server with its own per-organisation call cap
    /// (`--org-max-calls`: an INVITE above it gets 503 with Retry-After), answering
    /// INVITEs 100/180 at once and 200 with SDP after `--call-answer-delay`, CANCEL
    /// (487), BYE (481 for an unknown call), and hanging up itself after
    /// `--call-hangup-after`. Counters as JSON at GET /stats.
    EdgeSim(crate::tools::edge_sim::SimConfig),
    /// Fire a softphone spike: N phones over T tenants, with a ramp-up, a hold time and a
    /// retry policy; prints an aggregate report per tenant. With `--sip --calls N` each
    /// registered phone places N calls and the report counts them.
    Spike(crate::tools::spike::SpikeConfig),
    /// Show the field problem and its cure: a spike of softphones straight at an edge
    /// simulator with naive retries, then the same spike through sluice; prints both
    /// side by side.
    Demo(crate::tools::demo::DemoConfig),
    /// Plan capacity: replay a profile of connects (ramps, bursts, reconnect storms or a
    /// CSV) through the same admission scheduler the proxy runs, in virtual time, and
    /// report per tenant how long until all are connected, the queue waits
    /// (p50/p95/p99/max), refusals by reason and the deepest queue, and the edge's peak
    /// sessions and handshake rate. --suggest searches for limits that keep every p99
    /// wait under --max-wait; --from-log turns sluice's JSON log into an arrivals CSV.
    Plan(crate::plan::PlanArgs),
    /// Probe a running sluice's admin listener: exits 0 when GET PATH answers 200, 1
    /// otherwise (for container HEALTHCHECKs, which have no curl).
    Health {
        /// The admin listener's address.
        #[arg(long, value_name = "IP:PORT", default_value = crate::config::DEFAULT_ADMIN_ADDRESS)]
        admin: std::net::SocketAddr,
        /// The path to ask: /healthz (alive) or /readyz (accepting connects).
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
}

/// `sluice health`: one HTTP GET with a 2-second limit; the status line decides.
fn health(admin: std::net::SocketAddr, path: &str) -> ExitCode {
    use std::io::{Read, Write};
    let limit = std::time::Duration::from_secs(2);
    let probe = || -> std::io::Result<String> {
        let mut tcp = std::net::TcpStream::connect_timeout(&admin, limit)?;
        tcp.set_read_timeout(Some(limit))?;
        tcp.set_write_timeout(Some(limit))?;
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 64];
        let n = tcp.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    match probe() {
        Ok(head) if head.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(head) => {
            eprintln!(
                "{admin}{path}: {}",
                head.lines().next().unwrap_or("no answer")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{admin}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `job` on a multi-thread runtime (with the memory watcher,
/// [`crate::release::memory`]); its exit code, or failure when the runtime cannot start.
fn block_on(job: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    block_on_with(tokio::runtime::Runtime::new(), job)
}

/// Runs `job` on `rt` (with the memory watcher); its exit code, or failure when the
/// runtime could not be built.
fn block_on_with(
    rt: std::io::Result<tokio::runtime::Runtime>,
    job: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match rt {
        Ok(rt) => {
            crate::release::memory::watch(rt.handle().clone());
            rt.block_on(job)
        }
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of a result; an error is printed after `what: `.
fn exit<T>(what: &str, result: Result<T, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Health { admin, path } => health(admin, &path),
        Command::EdgeSim(config) => {
            let _log = crate::logging::init(cli.log_format);
            block_on(async {
                let result = crate::tools::edge_sim::run(config, crate::signals::terminate()).await;
                exit("edge-sim", result)
            })
        }
        Command::Spike(config) => {
            let _log = crate::logging::init_with(cli.log_format, "warn");
            block_on(spike(config))
        }
        Command::Demo(config) => {
            // The report is the output; sluice's own warnings (the outage's 503s) would
            // only interleave with it. RUST_LOG brings them back.
            let _log = crate::logging::init_with(cli.log_format, "error");
            block_on(demo(config))
        }
        Command::Plan(args) => exit("plan", crate::plan::run(&args)),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                print!("{}", describe(&config, &file.display().to_string()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid config\n{e}", file.display());
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let _log = crate::logging::init(cli.log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{}: invalid config: {e}", config.display());
                    eprintln!("{}: invalid config\n{e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            // A current-thread runtime: the main thread is one of the proxy's per-core
            // runtimes, the server starts the others (crate::server::workers).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            block_on_with(rt, async {
                let result = crate::run(config, crate::signals::terminate()).await;
                if let Err(e) = &result {
                    tracing::error!("{e}");
                }
                exit("error", result)
            })
        }
    }
}

async fn spike(config: crate::tools::spike::SpikeConfig) -> ExitCode {
    let report = match crate::tools::spike::run_spike(&config).await {
        Ok(r) => r,
        Err(e) => return exit("spike", Err::<(), _>(e)),
    };
    if config.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialises")
        );
    } else {
        print!("{}", crate::tools::spike::render(&report));
    }
    if report.total.connected == 0 && report.phones > 0 {
        eprintln!("spike: no phone connected (is {} reachable?)", config.url);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn demo(config: crate::tools::demo::DemoConfig) -> ExitCode {
    use crate::tools::demo;
    let quiet = config.json;
    let progress = |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    // Ctrl-C (or SIGTERM) mid-run drops the demo: its servers stop and the
    // redis-server it started (`--replicas`) is killed.
    let outcome = tokio::select! {
        r = demo::run_demo(&config, progress) => r,
        () = crate::signals::terminate() => {
            eprintln!("demo: interrupted");
            return ExitCode::from(130);
        }
    };
    let (report, running) = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialises")
        );
    } else {
        print!("{}", demo::render_report(&report));
    }
    if let Some(running) = running {
        let mut others = String::new();
        for (i, r) in running.replicas.iter().enumerate().skip(1) {
            let _ = writeln!(
                others,
                "sluice replica {i}: ws://{}/t/<tenant>/   status page: http://{}/",
                r.proxy, r.admin
            );
        }
        eprintln!(
            "\nsluice: ws://{}/t/<tenant>/   status page: http://{}/   metrics: http://{}/metrics\n\
             {others}edge simulator: {}   counters: http://{}/stats\nCtrl-C stops.",
            running.proxy,
            running.admin,
            running.admin,
            running.edge.url(),
            running.edge.addr()
        );
        crate::signals::terminate().await;
    }
    ExitCode::SUCCESS
}

/// The effective configuration as `check-config` prints it.
pub fn describe(config: &Config, name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{name}: OK");
    let tls = if config.listen.tls.is_some() {
        "TLS"
    } else {
        "plain"
    };
    let workers = match config.listen.workers {
        Some(n) => format!("{n} worker thread{}", if n == 1 { "" } else { "s" }),
        None => format!(
            "one worker thread per core ({} here)",
            crate::server::workers::default_count()
        ),
    };
    let _ = writeln!(
        out,
        "listen   {} ({tls}), header timeout {}, max header {} bytes, {workers}",
        config.listen.address,
        humantime::format_duration(config.listen.header_timeout),
        config.protection.max_header_bytes
    );
    let _ = writeln!(out, "admin    {}", config.admin.address);
    let sources: Vec<String> = config
        .identity
        .sources
        .iter()
        .map(|s| match s {
            IdentitySource::Path => "path /t/{tenant}/…".to_owned(),
            IdentitySource::Header => format!("header {}", config.identity.header),
            IdentitySource::Host => match &config.identity.host_suffix {
                Some(sfx) => format!("host {{tenant}}{sfx}"),
                None => "host (inactive: tenant_identity.host_suffix not set)".to_owned(),
            },
        })
        .collect();
    let unknown = match config.identity.unknown {
        UnknownTenant::Reject => "rejected (403)",
        UnknownTenant::Default => "admitted as _default under [defaults]",
    };
    let _ = writeln!(
        out,
        "tenants from: {}; unknown tenants {unknown}",
        sources.join(", ")
    );
    match &config.edge {
        Some(e) => {
            let _ = writeln!(
                out,
                "edge ceiling: {} sessions, {} handshakes/s, burst {}",
                e.max_sessions, e.handshake_rate, e.handshake_burst
            );
        }
        None => {
            let _ = writeln!(out, "edge ceiling: none");
        }
    }
    if let Some(c) = &config.cluster {
        let _ = writeln!(out, "{}", describe_cluster(c));
    }
    let p = &config.protection;
    let off = |d: Option<std::time::Duration>| {
        d.map_or("off".to_owned(), |d| {
            humantime::format_duration(d).to_string()
        })
    };
    // Accepted above the global cap, where it cannot bind: say so.
    let per_ip = if p.max_pending_per_ip < p.max_pending_handshakes {
        format!("{} per address", p.max_pending_per_ip)
    } else {
        format!(
            "{} per address (no effect: not below max_pending_handshakes)",
            p.max_pending_per_ip
        )
    };
    let _ = writeln!(
        out,
        "protection: {}/s unauthenticated attempts per IP (burst {}), {} pending handshakes, {per_ip}, idle timeout {}, max session {}; drain {}",
        p.preauth_rate_per_ip,
        p.preauth_burst_per_ip,
        p.max_pending_handshakes,
        off(p.idle_timeout),
        off(p.max_session),
        humantime::format_duration(config.shutdown.drain_timeout)
    );
    let u = &config.upstream;
    let _ = writeln!(
        out,
        "upstream: handshake timeout {}, retry budget {}, max pause {}, default group {}",
        humantime::format_duration(u.handshake_timeout),
        humantime::format_duration(u.retry_budget),
        humantime::format_duration(u.max_pause),
        u.default_group
    );
    for group in u.groups.values() {
        let urls: Vec<&str> = group.endpoints.iter().map(|e| e.url.as_str()).collect();
        let _ = writeln!(out, "  group {}: {}", group.name, urls.join(", "));
    }
    let table = crate::tenants::Table::of(config);
    let settings: Vec<_> = table.sorted().iter().map(|t| t.settings()).collect();
    let accepting: Vec<String> = settings
        .iter()
        .map(|s| &s.config)
        .filter(|t| t.limits.queue_mode == crate::config::QueueMode::Accept)
        .map(|t| match t.limits.subprotocols.as_slice() {
            [] => format!("{} (no subprotocol)", t.name),
            list => format!("{} ({})", t.name, list.join(", ")),
        })
        .collect();
    if !accepting.is_empty() {
        let a = &config.accept;
        let _ = writeln!(
            out,
            "accept mode: {}; messages up to {} bytes; held while queued: up to {} messages, {} bytes",
            accepting.join(", "),
            a.max_message_bytes,
            a.held_messages,
            a.held_bytes
        );
    }
    for t in settings.iter().map(|s| &s.config) {
        if let Some(c) = &t.calls {
            let _ = writeln!(out, "{}", describe_calls(&t.name, c));
        }
    }
    let shadow: Vec<&str> = settings
        .iter()
        .filter(|s| !s.config.limits.enforce)
        .map(|s| s.config.name.as_str())
        .collect();
    if !shadow.is_empty() {
        let _ = writeln!(
            out,
            "shadow (enforce = false): {}; limits computed and counted (sluice_shadow_*), not applied: every connect goes on",
            shadow.join(", ")
        );
    }
    let _ = writeln!(out);
    let header = [
        "tenant", "sessions", "rate/s", "burst", "queue", "timeout", "mode", "weight", "group",
        "auth",
    ];
    let mut rows: Vec<[String; 10]> = vec![header.map(str::to_owned)];
    // The tenant table sluice would run with: the rows are its handles' settings.
    for s in &settings {
        rows.push(tenant_row(&s.config));
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// The `[cluster]` line of `check-config`: passwords in Redis URLs are hidden.
fn describe_cluster(c: &Cluster) -> String {
    let target = match &c.redis {
        RedisTarget::Url(url) => format!("Redis {}", redact_redis_url(url)),
        RedisTarget::Sentinel { sentinels, master } => {
            let list: Vec<String> = sentinels.iter().map(|s| redact_redis_url(s)).collect();
            format!("Redis master {master:?} via Sentinels {}", list.join(", "))
        }
    };
    format!(
        "cluster: {target}, replica {}, heartbeat {}, lease ttl {}, Redis timeout {}; on Redis failure {}",
        c.replica_id,
        humantime::format_duration(c.heartbeat),
        humantime::format_duration(c.lease_ttl),
        humantime::format_duration(c.redis_timeout),
        c.on_redis_failure.as_str()
    )
}

/// The call limits line of a SIP tenant in `check-config`.
fn describe_calls(name: &str, c: &crate::config::Calls) -> String {
    let cap = c
        .max_calls
        .map_or("not capped".to_owned(), |n| format!("max {n}"));
    let rate = c.call_rate.map_or("not paced".to_owned(), |r| {
        format!("{r} INVITEs/s, burst {}", c.call_burst)
    });
    format!(
        "calls of {name} (SIP): {cap}, {rate}; INVITEs held up to {} for {}; silent calls reaped after {}",
        c.invite_queue_depth,
        humantime::format_duration(c.invite_queue_timeout),
        humantime::format_duration(c.call_idle_timeout)
    )
}

fn tenant_row(t: &Tenant) -> [String; 10] {
    let l = &t.limits;
    let auth = match &t.auth {
        Auth::None => "none".to_owned(),
        Auth::ApiKey { hashes } => match hashes.len() {
            1 => "api-key (1 key)".to_owned(),
            n => format!("api-key ({n} keys)"),
        },
        Auth::Jwt { origin, .. } => format!("jwt ({origin})"),
    };
    [
        t.name.clone(),
        l.max_sessions.to_string(),
        l.handshake_rate.to_string(),
        l.handshake_burst.to_string(),
        l.queue_depth.to_string(),
        humantime::format_duration(l.queue_timeout).to_string(),
        l.queue_mode.as_str().to_owned(),
        l.weight.to_string(),
        t.group.name.clone(),
        auth,
    ]
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_config_describes_the_cluster_without_its_password() {
        let base = "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n\
                    [tenants.acme]\nauth = { kind = \"none\" }\n";
        let env = std::collections::HashMap::new();
        let solo = describe(&Config::parse(base, &env).unwrap(), "solo.toml");
        assert!(!solo.contains("cluster"), "{solo}");

        let text = format!(
            "{base}[cluster]\nredis = \"redis://:hunter2@10.0.0.7:6379/2\"\nreplica_id = \"a-1\"\n"
        );
        let out = describe(&Config::parse(&text, &env).unwrap(), "c.toml");
        let line = out.lines().find(|l| l.starts_with("cluster:")).unwrap();
        assert_eq!(
            line,
            "cluster: Redis redis://:***@10.0.0.7:6379/2, replica a-1, heartbeat 5s, lease ttl 15s, Redis timeout 50ms; on Redis failure local-share"
        );

        let text = format!(
            "{base}[cluster]\nsentinels = [\"s1:26379\", \"s2:26379\"]\nmaster = \"mymaster\"\nreplica_id = \"a-1\"\non_redis_failure = \"closed\"\n"
        );
        let out = describe(&Config::parse(&text, &env).unwrap(), "c.toml");
        assert!(
            out.contains("cluster: Redis master \"mymaster\" via Sentinels redis://s1:26379, redis://s2:26379, replica a-1,"),
            "{out}"
        );
        assert!(out.contains("on Redis failure closed"), "{out}");
    }

    #[test]
    fn check_config_describes_call_limits() {
        let text = "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n\
                    [tenants.acme]\nauth = { kind = \"none\" }\nqueue_mode = \"accept\"\n\
                    subprotocols = [\"sip\"]\nmax_calls = 40\ncall_rate = 5.0\n";
        let env = std::collections::HashMap::new();
        let out = describe(&Config::parse(text, &env).unwrap(), "sip.toml");
        let line = out.lines().find(|l| l.starts_with("calls of")).unwrap();
        assert_eq!(
            line,
            "calls of acme (SIP): max 40, 5 INVITEs/s, burst 5; INVITEs held up to 100 for 8s; silent calls reaped after 4h"
        );
    }
}
