//! Entry: `sluice plan`, capacity planning — a profile of connects replayed through the real admission scheduler in virtual time.
//!
//! `sluice plan --config sluice.toml --profile monday.toml` answers, before a shift
//! starts: with these tenant limits and this `[edge]` ceiling, how long until every
//! agent is connected, who waits how long, who is refused, and (`--suggest`) which
//! limits would make it fit. The connects of the profile go through the same
//! [`crate::admission::Scheduler`] the proxy runs — its gates, queues, pumps, token
//! buckets and edge arbiter — on a current-thread tokio runtime whose clock is paused,
//! so that time jumps from one event to the next: a day of arrivals takes seconds
//! ([`simulate`]).
//!
//! # The profile
//!
//! ```toml
//! seed = 7                        # the random draws (holds, storm spread, jitter) repeat
//! # arrivals = "day.csv"          # a CSV of every tenant's connects (tenant,at,hold)
//!
//! [clients]                       # every tenant's clients, unless its table says otherwise
//! hold = { uniform = ["2h", "8h"] }   # or "4h", or { exponential = "3h" } (the mean)
//! give_up_after = "2m"            # patience from the first attempt; absent: waits forever
//! retry = "backoff"               # none | immediate (50 ms) | backoff | jitter | retry-after
//! retry_initial = "1s"            # first pause (backoff, jitter; retry-after without one)
//! retry_max = "30s"               # longest pause
//! retry_factor = 2.0              # growth of the pause per attempt
//! max_attempts = 10               # attempts in all, the first included
//!
//! [tenants.acme]
//! ramp = { connects = 600, over = "10m", from = "0s" }   # evenly spaced
//!
//! [tenants.globex]
//! burst = { connects = 200, at = "5m", within = "1s" }  # all at once, or spread evenly
//! retry = "immediate"             # the naive client that hammers
//!
//! [tenants.initech]
//! storm = { sessions = 300, at = "20m", spread = "5s" }  # an outage: all reconnect
//! hold = "8h"
//!
//! [tenants.umbrella]
//! arrivals = "umbrella.csv"       # relative to the profile
//! ```
//!
//! Retry policies, after a refusal: `none` gives up; `immediate` tries again after 50 ms
//! (`sluice spike`'s naive client);
//! `backoff` waits `retry_initial · retry_factor^(n-1)`, at most `retry_max`; `jitter`
//! waits a uniform draw below that (full jitter); `retry-after` waits what sluice's
//! `Retry-After` said. A client that is still queued or waiting when its patience runs
//! out gives up (it drops its connect, which leaves the queue).
//!
//! A storm's sessions are not in the plan before the outage: they drop at `at`, so from
//! then on their slots are free, as if they had never been.
//!
//! # What is measured
//!
//! Per tenant: connects (clients), connected, gave up, refusals by reason (each one a
//! client saw, retries included), the wait of each connected client from its first
//! attempt to its admission (retries included) as p50/p95/p99/max, when the last one
//! connected, and the longest its queue grew. At the edge: the most sessions at once and
//! the most handshakes (admissions) in one second; with `--edge-sessions` /
//! `--edge-rate`, what an edge with those limits alone, without sluice, would have
//! refused of the raw arrivals ([`simulate::edge_alone`]).

pub mod arrivals;
pub mod from_log;
pub mod plot;
pub mod profile;
pub mod report;
pub mod simulate;
pub mod suggest;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use report::Report;
pub use simulate::{simulate, Options};

/// One client of the profile: it connects at `at`, keeps its session `hold` long.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its tenant, as the profile names it.
    pub tenant: Arc<str>,
    /// When it first tries, from the start of the profile.
    pub at: Duration,
    /// How long its session lasts once admitted.
    pub hold: Duration,
    /// What it does when kept waiting or refused.
    pub behaviour: Arc<Behaviour>,
}

/// A client's patience and retry policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Behaviour {
    /// It gives up this long after its first attempt if not admitted; `None`: never.
    pub give_up_after: Option<Duration>,
    /// What it does after a refusal.
    pub retry: Retry,
}

/// How a client retries a refused connect.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// The policy.
    pub policy: RetryPolicy,
    /// First pause.
    pub initial: Duration,
    /// Longest pause.
    pub max: Duration,
    /// Growth of the pause per attempt.
    pub factor: f64,
    /// Attempts in all, the first included.
    pub attempts: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            policy: RetryPolicy::None,
            initial: profile::DEFAULT_RETRY_INITIAL,
            max: profile::DEFAULT_RETRY_MAX,
            factor: profile::DEFAULT_RETRY_FACTOR,
            attempts: 1,
        }
    }
}

impl Retry {
    /// The pause before attempt `next` (2 for the first retry), after a refusal that
    /// said `retry_after`; `unit` draws in `[0, 1)` for `jitter`.
    pub fn pause(
        &self,
        next: u32,
        retry_after: Option<Duration>,
        unit: impl FnOnce() -> f64,
    ) -> Duration {
        let backoff = || {
            let grown =
                self.initial.as_secs_f64() * self.factor.powi(next.saturating_sub(2) as i32);
            Duration::from_secs_f64(grown.min(self.max.as_secs_f64()))
        };
        match self.policy {
            RetryPolicy::None => Duration::ZERO,
            // The naive client: a short fixed pause, as `sluice spike --retry immediate`.
            RetryPolicy::Immediate => crate::tools::spike::IMMEDIATE_RETRY_PAUSE,
            RetryPolicy::Backoff => backoff(),
            RetryPolicy::Jitter => backoff().mul_f64(unit()),
            RetryPolicy::RetryAfter => retry_after.unwrap_or(self.initial).min(self.max),
        }
    }
}

/// `retry = "…"` in a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryPolicy {
    /// Gives up after the first refusal.
    None,
    /// Tries again after a short fixed pause (`sluice spike`'s 50 ms), whatever it was told.
    Immediate,
    /// Exponential backoff.
    Backoff,
    /// Exponential backoff with full jitter.
    Jitter,
    /// Waits what `Retry-After` said.
    RetryAfter,
}

/// A session length distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    /// Always this long.
    Fixed(Duration),
    /// Uniform between the two.
    Uniform(Duration, Duration),
    /// Exponential with this mean.
    Exponential(Duration),
}

/// What `sluice plan` reports as wrong with its input.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A file cannot be read or written.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A profile key is wrong (the message names it).
    #[error("{0}")]
    Profile(String),
    /// An arrivals CSV row is wrong.
    #[error("{} line {line}: {reason}", file.display())]
    Csv {
        /// The file.
        file: PathBuf,
        /// Its line (1 is the header).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The config file is invalid.
    #[error("{0}")]
    Config(String),
}

impl PlanError {
    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        Self::Io {
            file: file.to_owned(),
            source,
        }
    }

    /// A profile error prefixed with the profile's file name.
    fn in_file(self, file: &Path) -> Self {
        match self {
            Self::Profile(m) => Self::Profile(format!("{}: {m}", file.display())),
            other => other,
        }
    }
}

/// `sluice plan`'s arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct PlanArgs {
    /// The sluice config whose limits are planned (TOML, as `sluice run` reads it).
    #[arg(long, short, value_name = "FILE", required_unless_present = "from_log")]
    pub config: Option<PathBuf>,
    /// The profile of arrivals (TOML; see below).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["arrivals", "from_log"], required_unless_present_any = ["arrivals", "from_log"])]
    pub profile: Option<PathBuf>,
    /// A CSV of connects (tenant,at,hold) run without a profile: no patience, no
    /// retries, empty holds 1 h.
    #[arg(long, value_name = "FILE", conflicts_with = "from_log")]
    pub arrivals: Option<PathBuf>,
    /// Turn sluice's JSON log (`--log-format json`) into an arrivals CSV instead of
    /// planning; written to --out, else to stdout.
    #[arg(long, value_name = "LOG")]
    pub from_log: Option<PathBuf>,
    /// Where --from-log writes its CSV.
    #[arg(long, value_name = "FILE", requires = "from_log")]
    pub out: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Draw queue depth and admitted connects per second per tenant over time (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Search for the smallest edge handshake rate and the per-tenant limits that keep
    /// every tenant's p99 wait under --max-wait; print them as a config snippet.
    #[arg(long)]
    pub suggest: bool,
    /// The p99 wait --suggest aims for.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    /// Also count what an edge capping live sessions at N would have refused of the
    /// raw arrivals without sluice.
    #[arg(long, value_name = "N")]
    pub edge_sessions: Option<u32>,
    /// Also count what an edge allowing R handshakes per second would have refused of
    /// the raw arrivals without sluice.
    #[arg(long, value_name = "R")]
    pub edge_rate: Option<f64>,
    /// The burst of --edge-rate (default: one second's worth).
    #[arg(long, value_name = "N", requires = "edge_rate")]
    pub edge_burst: Option<u32>,
    /// Print how long the plan took (wall clock) to stderr.
    #[arg(long)]
    pub timing: bool,
}

const AFTER_HELP: &str = "\
Example profile (monday.toml):

  seed = 7
  [clients]                          # every tenant's clients
  hold = { uniform = [\"2h\", \"8h\"] }  # or \"4h\", or { exponential = \"3h\" }
  give_up_after = \"2m\"               # patience; absent: waits forever
  retry = \"jitter\"                   # none | immediate (50 ms) | backoff | jitter | retry-after
  retry_initial = \"1s\"
  retry_max = \"30s\"
  max_attempts = 10

  [tenants.acme]
  ramp = { connects = 600, over = \"10m\" }
  [tenants.globex]
  burst = { connects = 200, at = \"5m\", within = \"1s\" }
  retry = \"immediate\"
  [tenants.initech]
  storm = { sessions = 300, at = \"20m\", spread = \"5s\" }
  [tenants.umbrella]
  arrivals = \"umbrella.csv\"          # tenant,at,hold (seconds)

Examples:
  sluice plan --config sluice.toml --profile monday.toml
  sluice plan --config sluice.toml --profile monday.toml --json --plot monday.svg
  sluice plan --config sluice.toml --profile monday.toml --suggest --max-wait 10s
  sluice plan --config sluice.toml --arrivals day.csv --edge-sessions 5000 --edge-rate 50
  sluice --log-format json run -c sluice.toml 2> sluice.log
  sluice plan --from-log sluice.log --out day.csv";

/// Runs `sluice plan`: prints the report (or the CSV of --from-log); the error to print
/// otherwise.
///
/// # Errors
/// Unreadable or invalid input, an unwritable output.
pub fn run(args: &PlanArgs) -> Result<(), PlanError> {
    if let Some(log) = &args.from_log {
        return from_log::convert(log, args.out.as_deref());
    }
    let started = std::time::Instant::now();
    let config_path = args.config.as_deref().expect("clap requires --config");
    let config = crate::Config::load(config_path).map_err(|e| {
        PlanError::Config(format!("{}: invalid config\n{e}", config_path.display()))
    })?;
    let profile = match (&args.profile, &args.arrivals) {
        (Some(p), _) => profile::load(p)?,
        (None, Some(a)) => profile::from_csv(a)?,
        (None, None) => unreachable!("clap requires --profile or --arrivals"),
    };
    let options = Options {
        seed: profile.seed,
        edge_alone: simulate::EdgeAlone::of(args.edge_sessions, args.edge_rate, args.edge_burst),
    };
    let report = simulate(&config, &profile.clients, &options);
    let suggestion = args
        .suggest
        .then(|| suggest::suggest(&config, &profile.clients, &options, args.max_wait));
    if let Some(svg) = &args.plot {
        plot::draw(&report, svg)?;
    }
    if args.json {
        let mut value = serde_json::to_value(&report).expect("serialises");
        if let Some(s) = &suggestion {
            value["suggest"] = serde_json::to_value(s).expect("serialises");
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
    } else {
        print!("{}", report::render(&report));
        if let Some(s) = &suggestion {
            print!("\n{}", suggest::render(s, args.max_wait));
        }
    }
    if args.timing {
        eprintln!(
            "plan: {} connects over {} tenants, {:.1} s of virtual time, in {:.2} s",
            profile.clients.len(),
            report.tenants.len(),
            report.span,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_follow_their_policy() {
        let retry = |policy| Retry {
            policy,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
            factor: 2.0,
            attempts: 10,
        };
        let pauses = |r: &Retry| -> Vec<Duration> {
            (2..=6)
                .map(|n| r.pause(n, Some(Duration::from_secs(3)), || 0.5))
                .collect()
        };
        let s = Duration::from_secs;
        assert_eq!(
            pauses(&retry(RetryPolicy::Backoff)),
            [s(1), s(2), s(4), s(5), s(5)]
        );
        assert_eq!(
            pauses(&retry(RetryPolicy::Jitter)),
            [
                Duration::from_millis(500),
                s(1),
                s(2),
                Duration::from_millis(2500),
                Duration::from_millis(2500)
            ]
        );
        assert_eq!(pauses(&retry(RetryPolicy::RetryAfter)), [s(3); 5]);
        assert_eq!(
            pauses(&retry(RetryPolicy::Immediate)),
            [crate::tools::spike::IMMEDIATE_RETRY_PAUSE; 5]
        );
        assert_eq!(
            retry(RetryPolicy::RetryAfter).pause(2, None, || 0.0),
            s(1),
            "no Retry-After: the first pause"
        );
    }
}
