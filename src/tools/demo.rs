//! Entry: `sluice demo`, the field problem and its cure side by side, in one process.
//!
//! `sluice demo`: the field problem and its cure, side by side, in one process.
//!
//! 1. An edge simulator with limits in the spirit of the field reports (an organisation
//!    capped at 50 sessions and 10 handshakes/s) takes a spike of 200 softphones over
//!    three tenants **directly**, with the naive client's immediate retries.
//! 2. A fresh simulator with the same limits takes the same spike **through sluice**,
//!    configured a little under those limits (by default 80 % of each rate with burst
//!    1, so that a one-second window at the edge exceeds its count only if a handshake
//!    is delayed a quarter of a second more than the next on its way there; the edge's
//!    session cap as the tenant cap; a queue that holds every phone, shorter than the
//!    phones' patience).
//!
//! With `--replicas N` (N > 1) the second phase runs the spike through N sluice replicas
//! sharing their limits through a `redis-server` the demo starts (`[cluster]`, each
//! tenant's phones dealt to the replicas in turn), and a third phase through the same N
//! replicas without `[cluster]`, each enforcing every limit alone ([`replicas`]).
//!
//! In each phase the edge also goes down for `--outage` (2 s), `--outage-at` (2 s) into
//! the spike, answering `503` with the time left as `Retry-After`: the naive phones
//! storm it, sluice obeys the pause and holds its queue.
//!
//! Then, with `--calls` above 0 (the default), the calls phases ([`calls`]): SIP phones
//! place calls against an edge with a per-organisation call cap, directly and through
//! sluice's call caps.
//!
//! The table compares what the edge suffered (handshakes, violations, 503s, drops,
//! handshakes during the outage) and what the phones got (connected, time until the last
//! one connected, handshake times).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::edge_sim::{EdgeSim, SimConfig, SimStats};
use super::spike::{render, run_spike, secs, RetryPolicy, SpikeConfig, SpikeReport, TenantVia};
use replicas::{sluice_phase, Fleet, RedisServer};

pub mod calls;
pub mod replicas;

pub use replicas::{redis_missing, Endpoints};

/// Tenant names of the demo, in order.
const NAMES: &[&str] = &["acme", "globex", "initech", "umbrella", "hooli", "vandelay"];

/// `sluice demo --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoConfig {
    /// Softphones in the spike.
    #[arg(long, default_value_t = 200)]
    pub phones: usize,
    /// Tenants (organisations) they belong to, at most 6.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=6))]
    pub tenants: u8,
    /// The edge's live-session cap per organisation.
    #[arg(long, default_value_t = 50)]
    pub org_max_sessions: u32,
    /// The edge's handshakes per organisation per second.
    #[arg(long, default_value_t = 10)]
    pub org_handshake_rate: u32,
    /// The edge node's handshake capacity per second.
    #[arg(long, default_value_t = 100)]
    pub capacity: u32,
    /// How long each phone keeps its session.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// How long a phone keeps trying before it gives up.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub give_up: Duration,
    /// A phone's patience for one handshake (the Genesys streaming client waits 15 s).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub patience: Duration,
    /// Most attempts of one naive phone (it also gives up after `--give-up`).
    #[arg(long, default_value_t = 1000)]
    pub max_attempts: u32,
    /// sluice's handshake rates as a fraction of the edge's (burst 1). The edge counts
    /// arrivals in any one-second window; at a fraction f, a violation needs one
    /// handshake delayed by (1/f − 1) s relative to the next on its way to the edge
    /// (0.25 s at 0.8, 1 s at 0.5).
    #[arg(long, default_value_t = 0.8)]
    pub rate_fraction: f64,
    /// Take the edge down for this long in each phase (0: no outage).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// When the outage starts, after the spike.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub outage_at: Duration,
    /// sluice replicas the spike is spread over. With more than one they share their
    /// limits through a `redis-server` found on the PATH (`[cluster]`), and a third phase
    /// shows the same replicas without `[cluster]`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub replicas: u8,
    /// Calls each softphone places in the calls phases (0: no calls phases).
    #[arg(long, default_value_t = 2)]
    pub calls: u32,
    /// Softphones in the calls phases.
    #[arg(long, default_value_t = 60)]
    pub call_phones: usize,
    /// The edge's concurrent calls per organisation in the calls phases (sluice's
    /// `max_calls` is the same).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub org_max_calls: u32,
    /// How long each call lasts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub call_length: Duration,
    /// Print the numbers as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep sluice and the simulator running afterwards (Ctrl-C stops), so the status
    /// page can be opened.
    #[arg(long)]
    pub serve: bool,
    /// sluice's proxy address with `--serve` (replica i: this port + i).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// sluice's admin address (status page, metrics) with `--serve` (replica i: this
    /// port + i).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            phones: 200,
            tenants: 3,
            org_max_sessions: 50,
            org_handshake_rate: 10,
            capacity: 100,
            hold: Duration::from_secs(3),
            give_up: Duration::from_secs(20),
            patience: Duration::from_secs(15),
            max_attempts: 1000,
            rate_fraction: 0.8,
            outage: Duration::from_secs(2),
            outage_at: Duration::from_secs(2),
            replicas: 1,
            calls: 2,
            call_phones: 60,
            org_max_calls: 10,
            call_length: Duration::from_secs(2),
            json: false,
            serve: false,
            listen: "127.0.0.1:8080".parse().expect("valid"),
            admin: "127.0.0.1:9090".parse().expect("valid"),
        }
    }
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What the phones saw.
    pub phones: SpikeReport,
    /// What the edge saw.
    pub edge: SimStats,
}

/// What `demo --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The spike straight at the edge, naive retries.
    pub direct: Phase,
    /// The same spike through sluice: one sluice, or with `--replicas N` (N > 1) N
    /// replicas sharing their limits through Redis (`[cluster]`).
    pub sluice: Phase,
    /// The sluice config used (TOML; with `--replicas N`, replica 0's).
    pub sluice_config: String,
    /// With `--replicas N` (N > 1): N.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u8>,
    /// With `--replicas N` (N > 1): the same spike through N replicas without
    /// `[cluster]`, each enforcing every limit alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_replicas: Option<Phase>,
    /// The calls phases (`--calls` above 0): INVITEs against the edge's call cap,
    /// directly and through sluice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<calls::CallsDemo>,
}

fn sim_config(c: &DemoConfig) -> SimConfig {
    SimConfig {
        org_max_sessions: c.org_max_sessions,
        org_handshake_rate: c.org_handshake_rate,
        capacity: c.capacity,
        ..SimConfig::default()
    }
}

fn spike_config(c: &DemoConfig, url: String, via: TenantVia) -> SpikeConfig {
    SpikeConfig {
        url,
        phones: c.phones,
        tenants: NAMES[..usize::from(c.tenants)]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        tenant_via: via,
        hold: c.hold,
        retry: RetryPolicy::Immediate,
        max_attempts: c.max_attempts,
        give_up: c.give_up,
        handshake_timeout: c.patience,
        ..SpikeConfig::default()
    }
}

/// sluice's config for the demo: limits a little under the edge's.
pub fn sluice_config(
    c: &DemoConfig,
    edge_url: &str,
    listen: SocketAddr,
    admin: SocketAddr,
) -> String {
    // A fraction of the edge's rates, burst 1: at most 1 + f·r handshakes leave sluice
    // in any second.
    let f = c.rate_fraction.clamp(0.05, 1.0);
    let rate = (f64::from(c.org_handshake_rate) * f).max(0.1);
    let edge_rate = (f64::from(c.capacity) * f).max(0.1);
    // Queued phones are answered before their patience runs out.
    let queue_timeout = c
        .patience
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1));
    let mut text = format!(
        "# generated by `sluice demo`\n\
         [listen]\naddress = \"{listen}\"\n\
         [admin]\naddress = \"{admin}\"\n\
         [edge]\nmax_sessions = 1000\nhandshake_rate = {edge_rate:.1}\nhandshake_burst = 1\n\
         [upstream.groups.primary]\nendpoints = [\"{edge_url}\"]\n\
         [defaults]\nmax_sessions = {}\nhandshake_rate = {rate:.1}\nhandshake_burst = 1\n\
         queue_depth = {}\nqueue_timeout = \"{}\"\n",
        c.org_max_sessions,
        c.phones.max(1),
        humantime::format_duration(queue_timeout),
    );
    for name in &NAMES[..usize::from(c.tenants)] {
        let _ = write!(text, "[tenants.{name}]\nauth = {{ kind = \"none\" }}\n");
    }
    text
}

/// Runs the phases (two; three with `--replicas N`, N > 1). With `serve`, sluice (all
/// its replicas, and their Redis) and the second simulator keep running until the
/// returned [`Running`] is dropped (the report is printed before).
///
/// # Errors
/// When `redis-server` is needed and missing ([`redis_missing`]), a listener cannot be
/// bound or a spike cannot start.
pub async fn run_demo(
    c: &DemoConfig,
    progress: impl Fn(&str),
) -> Result<(DemoReport, Option<Running>), String> {
    let n = usize::from(c.replicas);
    let steps = if n > 1 { 3 } else { 2 } + usize::from(c.calls > 0);
    // Before anything runs: without a redis-server there is no demo of replicas.
    let redis = if n > 1 {
        Some(RedisServer::start(c.replicas).await?)
    } else {
        None
    };
    progress(&format!(
        "1/{steps}: {} phones over {} tenants straight at the edge (each organisation: {} sessions, {} handshakes/s), retrying at once",
        c.phones, c.tenants, c.org_max_sessions, c.org_handshake_rate
    ));
    let sim = EdgeSim::start(sim_config(c))
        .await
        .map_err(|e| format!("edge simulator: {e}"))?;
    let spike = spike_config(c, sim.url(), TenantVia::Header);
    let outage = schedule_outage(c, &sim);
    let direct = Phase {
        phones: run_spike(&spike).await?,
        edge: sim.stats(),
    };
    outage.abort();

    let redis_url = redis.as_ref().map(RedisServer::url);
    match &redis_url {
        None => progress(&format!("2/{steps}: the same spike through sluice")),
        Some(url) => progress(&format!(
            "2/{steps}: the same spike through {n} sluice replicas sharing their limits on Redis ([cluster], {url}), each tenant's phones dealt to them in turn"
        )),
    }
    let (through, fleet) = sluice_phase(c, n, redis_url.as_deref()).await?;
    let sluice_config = fleet.config.clone();
    let fleet = if c.serve {
        Some(fleet)
    } else {
        fleet.stop().await;
        None
    };
    let plain = if n > 1 {
        progress(&format!(
            "3/{steps}: the same spike through {n} plain replicas (no [cluster]: each enforces every limit alone)"
        ));
        let (phase, plain) = sluice_phase(
            &DemoConfig {
                serve: false,
                ..c.clone()
            },
            n,
            None,
        )
        .await?;
        plain.stop().await;
        Some(phase)
    } else {
        None
    };
    let calls = if c.calls > 0 {
        progress(&format!(
            "{steps}/{steps}: {} SIP phones place {} calls each against an edge with {} concurrent calls per organisation, directly, then through sluice (max_calls {})",
            c.call_phones, c.calls, c.org_max_calls, c.org_max_calls
        ));
        Some(calls::calls_phases(c).await?)
    } else {
        None
    };
    let report = DemoReport {
        direct,
        sluice: through,
        sluice_config,
        replicas: (n > 1).then_some(c.replicas),
        plain_replicas: plain,
        calls,
    };
    let running = fleet.map(|fleet| Running {
        proxy: fleet.replicas[0].proxy,
        admin: fleet.replicas[0].admin,
        replicas: fleet.replicas.clone(),
        edge: fleet.edge.clone(),
        _fleet: fleet,
        _redis: redis,
    });
    Ok((report, running))
}

/// sluice and the simulator left running by `--serve`.
#[derive(Debug)]
pub struct Running {
    /// sluice's proxy address (replica 0's).
    pub proxy: SocketAddr,
    /// sluice's admin address (replica 0's).
    pub admin: SocketAddr,
    /// Every replica's addresses, replica 0 first (one with `--replicas 1`).
    pub replicas: Vec<Endpoints>,
    /// The simulator behind it.
    pub edge: EdgeSim,
    // Dropped in this order: the replicas stop, then their Redis.
    _fleet: Fleet,
    _redis: Option<RedisServer>,
}

/// Takes `sim` down for `c.outage`, `c.outage_at` from now.
fn schedule_outage(c: &DemoConfig, sim: &EdgeSim) -> tokio::task::JoinHandle<()> {
    let (at, outage, sim) = (c.outage_at, c.outage, sim.clone());
    tokio::spawn(async move {
        if outage.is_zero() {
            return;
        }
        tokio::time::sleep(at).await;
        sim.outage(outage);
    })
}

fn p50_p99(p50: Option<f64>, p99: Option<f64>) -> String {
    format!("{} / {}", secs(p50), secs(p99))
}

fn connected_line(p: &SpikeReport) -> String {
    format!("{} / {}", p.total.connected, p.phones)
}

fn all_connected(p: &SpikeReport) -> String {
    if p.total.connected == p.phones {
        secs(p.total.last_connected_s)
    } else {
        format!("never ({} gave up)", p.phones - p.total.connected)
    }
}

/// The side-by-side table.
pub fn render_table(r: &DemoReport) -> String {
    type Figure = fn(&Phase) -> String;
    let figures: [(&str, Figure); 11] = [
        ("phones connected", |p| connected_line(&p.phones)),
        ("time until all connected", |p| all_connected(&p.phones)),
        ("handshakes the edge received", |p| {
            p.edge.handshakes.to_string()
        }),
        ("edge violations (beyond its limits)", |p| {
            p.edge.violations.to_string()
        }),
        ("  refused by the edge (503)", |p| {
            p.edge.rejected.to_string()
        }),
        ("  dropped by the edge (too slow)", |p| {
            p.edge.dropped.to_string()
        }),
        ("handshakes during the edge's outage", |p| {
            p.edge.refused_outage.to_string()
        }),
        ("connect attempts by the phones", |p| {
            p.phones.total.attempts.to_string()
        }),
        ("phone handshake p50 / p99", |p| {
            p50_p99(p.phones.total.handshake.p50, p.phones.total.handshake.p99)
        }),
        ("edge handshake latency p50 / p99", |p| {
            p50_p99(p.edge.handshake_p50, p.edge.handshake_p99)
        }),
        ("most sessions of one organisation", |p| {
            p.edge
                .orgs
                .values()
                .map(|o| o.peak)
                .max()
                .unwrap_or(0)
                .to_string()
        }),
    ];
    let columns = columns(r);
    let mut out = format!("{:<38}", "");
    for (title, _) in &columns {
        let _ = write!(out, " {title:>26}");
    }
    out.push('\n');
    for (label, f) in figures {
        let _ = write!(out, "{label:<38}");
        for (_, phase) in &columns {
            let _ = write!(out, " {:>26}", f(phase));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nphone handshake: the successful attempt, as the phone timed it (through sluice it includes the wait in sluice's queue)."
    );
    if let Some(n) = r.replicas {
        let _ = writeln!(
            out,
            "[cluster]: the {n} replicas share every limit through Redis, as one sluice would.\n\
             plain: the same {n} replicas without [cluster], each enforcing every limit alone: together up to {n} times each."
        );
    }
    out
}

/// The table's columns: a title and its phase.
fn columns(r: &DemoReport) -> Vec<(String, &Phase)> {
    let mut columns = vec![("direct, naive retries".to_owned(), &r.direct)];
    match (r.replicas, &r.plain_replicas) {
        (Some(n), Some(plain)) => {
            columns.push((format!("{n} replicas, [cluster]"), &r.sluice));
            columns.push((format!("{n} plain replicas"), plain));
        }
        _ => columns.push(("through sluice".to_owned(), &r.sluice)),
    }
    columns
}

/// The full human report: the table, then each phase's aggregate.
pub fn render_report(r: &DemoReport) -> String {
    let mut out = render_table(r);
    for (title, phase) in columns(r) {
        let title = match title.as_str() {
            "direct, naive retries" => "direct",
            other => other,
        };
        let _ = write!(out, "\n{title}:\n{}", render(&phase.phones));
    }
    if let Some(calls) = &r.calls {
        let _ = write!(
            out,
            "\ncalls (SIP, the edge's call cap {} per organisation):\n{}",
            calls.org_max_calls,
            calls::render_calls(calls)
        );
    }
    out
}
