//! Entry, `sluice plan`: the profile file (TOML) read into the connects it describes.
//!
//! A profile says, per tenant, when clients connect (a `ramp`, a `burst`, a reconnect
//! `storm`, or an `arrivals` CSV), how long their sessions last (`hold`) and how they
//! behave when refused or kept waiting (`give_up_after`, `retry` …). Keys under
//! `[clients]` are every tenant's defaults; the same keys in a `[tenants.NAME]` table
//! override them for that tenant. The module docs of [`crate::plan`] show a whole file.
//!
//! Every key is checked: an unknown or mistyped one is an error naming its path
//! (`tenants.acme.ramp.conects: unknown field`), and so is a value out of range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::arrivals::{self, Row};
use super::{Behaviour, Client, Hold, PlanError, Retry, RetryPolicy};
use crate::admission::Jitter;

/// Defaults of [`Behaviour`] when neither `[clients]` nor the tenant says.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(3600);
/// `retry_initial` by default.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// `retry_max` by default.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);
/// `retry_factor` by default.
pub const DEFAULT_RETRY_FACTOR: f64 = 2.0;
/// `max_attempts` by default (with a retry policy other than `none`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// The most connects a profile may describe (each costs about 100 bytes while planned).
pub const MAX_CONNECTS: usize = 10_000_000;

/// The profile file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Seed of the random draws (hold distributions, storm spread, jitter).
    seed: Option<u64>,
    /// A CSV of connects of every tenant.
    arrivals: Option<PathBuf>,
    #[serde(default)]
    clients: ClientKeys,
    #[serde(default)]
    tenants: BTreeMap<String, TenantFile>,
}

/// The client behaviour keys, in `[clients]` and in each tenant's table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientKeys {
    hold: Option<HoldFile>,
    #[serde(default, with = "humantime_serde::option")]
    give_up_after: Option<Duration>,
    retry: Option<RetryPolicy>,
    #[serde(default, with = "humantime_serde::option")]
    retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    retry_max: Option<Duration>,
    retry_factor: Option<f64>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    ramp: Option<Ramp>,
    burst: Option<Burst>,
    storm: Option<Storm>,
    arrivals: Option<PathBuf>,
    // The client keys again (serde's flatten would lose `deny_unknown_fields`).
    hold: Option<HoldFile>,
    #[serde(default, with = "humantime_serde::option")]
    give_up_after: Option<Duration>,
    retry: Option<RetryPolicy>,
    #[serde(default, with = "humantime_serde::option")]
    retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    retry_max: Option<Duration>,
    retry_factor: Option<f64>,
    max_attempts: Option<u32>,
}

impl TenantFile {
    fn client_keys(&self) -> ClientKeys {
        ClientKeys {
            hold: self.hold.clone(),
            give_up_after: self.give_up_after,
            retry: self.retry,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            retry_factor: self.retry_factor,
            max_attempts: self.max_attempts,
        }
    }
}

/// `connects` evenly spaced over `over`, the first at `from`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ramp {
    connects: u32,
    #[serde(with = "humantime_serde")]
    over: Duration,
    #[serde(default, with = "humantime_serde")]
    from: Duration,
}

/// `connects` at `at`, all at once or evenly spaced `within` a short window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Burst {
    connects: u32,
    #[serde(default, with = "humantime_serde")]
    at: Duration,
    #[serde(default, with = "humantime_serde")]
    within: Duration,
}

/// `sessions` that were up drop at `at` (an outage) and all reconnect, each at a
/// random moment within `spread` after it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Storm {
    sessions: u32,
    #[serde(with = "humantime_serde")]
    at: Duration,
    #[serde(default, with = "humantime_serde")]
    spread: Duration,
}

/// `hold = "30m"`, `{ uniform = ["10m", "2h"] }` or `{ exponential = "45m" }` (mean).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum HoldFile {
    Fixed(#[serde(with = "humantime_serde")] Duration),
    Distribution(HoldDistribution),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum HoldDistribution {
    Uniform(
        #[serde(with = "humantime_serde")] Duration,
        #[serde(with = "humantime_serde")] Duration,
    ),
    Exponential(#[serde(with = "humantime_serde")] Duration),
}

/// A profile read: its connects (sorted by time) and the seed of its draws.
#[derive(Debug)]
pub struct Profile {
    /// Every connect, sorted by `at`.
    pub clients: Vec<Client>,
    /// The seed of the profile's random draws (the scheduler's jitter uses it too).
    pub seed: u64,
}

/// Reads the profile at `path` (CSV files it names are relative to it).
///
/// # Errors
/// [`PlanError`] naming the file, and the key or the CSV line, and what is wrong.
pub fn load(path: &Path) -> Result<Profile, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|e| e.in_file(path))
}

/// Reads a profile from `text`; CSV paths are relative to `base`.
///
/// # Errors
/// [`PlanError`] naming the key or the CSV line.
pub fn parse(text: &str, base: &Path) -> Result<Profile, PlanError> {
    let de = toml::Deserializer::parse(text).map_err(|e| PlanError::Profile(e.to_string()))?;
    let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // toml's own message starts with the line it points at; the key path is ours.
        let message = inner.message().trim_end().to_owned();
        PlanError::Profile(if path == "." {
            message
        } else {
            format!("{path}: {message}")
        })
    })?;
    let seed = file.seed.unwrap_or(1);
    let rng = Jitter::seeded(seed);
    let defaults = behaviour("clients", &file.clients, &ClientKeys::default())?;
    let mut behaviours: BTreeMap<&str, (Arc<Behaviour>, Hold)> = BTreeMap::new();
    let mut clients = Vec::new();
    let mut planned = 0usize;
    for (name, t) in &file.tenants {
        let key = format!("tenants.{name}");
        let (b, hold) = behaviour(&key, &t.client_keys(), &file.clients)?;
        let b = Arc::new(b);
        let tenant: Arc<str> = name.as_str().into();
        let mut push = |at: Duration, hold_of: Option<Duration>| {
            clients.push(Client {
                tenant: tenant.clone(),
                at,
                hold: hold_of.unwrap_or_else(|| hold.draw(&rng)),
                behaviour: b.clone(),
            });
        };
        if let Some(r) = &t.ramp {
            positive(&format!("{key}.ramp.connects"), r.connects, &mut planned)?;
            for i in 0..r.connects {
                push(
                    r.from + r.over.mul_f64(f64::from(i) / f64::from(r.connects)),
                    None,
                );
            }
        }
        if let Some(b) = &t.burst {
            positive(&format!("{key}.burst.connects"), b.connects, &mut planned)?;
            for i in 0..b.connects {
                push(
                    b.at + b.within.mul_f64(f64::from(i) / f64::from(b.connects)),
                    None,
                );
            }
        }
        if let Some(s) = &t.storm {
            positive(&format!("{key}.storm.sessions"), s.sessions, &mut planned)?;
            for _ in 0..s.sessions {
                push(s.at + s.spread.mul_f64(rng.unit()), None);
            }
        }
        if let Some(csv) = &t.arrivals {
            let rows = arrivals::load(&base.join(csv))?;
            for Row {
                line,
                tenant,
                at,
                hold,
            } in rows
            {
                if *tenant != *name {
                    return Err(PlanError::Csv {
                        file: base.join(csv),
                        line,
                        reason: format!(
                            "tenant {tenant:?} in the arrivals of {key} (only {name:?} may be here)"
                        ),
                    });
                }
                push(at, hold);
            }
        }
        behaviours.insert(name, (b, hold));
    }
    if let Some(csv) = &file.arrivals {
        let rows = arrivals::load(&base.join(csv))?;
        let defaults = (Arc::new(defaults.0), defaults.1);
        for row in rows {
            let (b, hold) = behaviours.get(&*row.tenant).unwrap_or(&defaults);
            clients.push(Client {
                at: row.at,
                hold: row.hold.unwrap_or_else(|| hold.draw(&rng)),
                behaviour: b.clone(),
                tenant: row.tenant,
            });
        }
    }
    if clients.len() > MAX_CONNECTS {
        return Err(PlanError::Profile(format!(
            "{} connects in all, more than a plan takes ({MAX_CONNECTS})",
            clients.len()
        )));
    }
    if clients.is_empty() {
        return Err(PlanError::Profile(
            "no connects: give a tenant a ramp, burst, storm or arrivals, or the profile an arrivals file".into(),
        ));
    }
    clients.sort_by_key(|c| c.at);
    Ok(Profile { clients, seed })
}

/// The connects of an arrivals CSV alone (`sluice plan --arrivals`): every client with
/// the default behaviour (no patience, no retry) and, for an empty `hold`, [`DEFAULT_HOLD`].
///
/// # Errors
/// The file cannot be read, or a row is malformed.
pub fn from_csv(path: &Path) -> Result<Profile, PlanError> {
    let b = Arc::new(Behaviour::default());
    let mut clients: Vec<Client> = arrivals::load(path)?
        .into_iter()
        .map(|r| Client {
            tenant: r.tenant,
            at: r.at,
            hold: r.hold.unwrap_or(DEFAULT_HOLD),
            behaviour: b.clone(),
        })
        .collect();
    clients.sort_by_key(|c| c.at);
    Ok(Profile { clients, seed: 1 })
}

/// Checks a shape's count `n` under `key`, and that the profile's `planned` connects so
/// far plus these stay within [`MAX_CONNECTS`].
fn positive(key: &str, n: u32, planned: &mut usize) -> Result<(), PlanError> {
    if n == 0 {
        return Err(PlanError::Profile(format!("{key}: must be at least 1")));
    }
    *planned += n as usize;
    if *planned > MAX_CONNECTS {
        return Err(PlanError::Profile(format!(
            "{key}: {n} makes {planned} connects, more than a plan takes ({MAX_CONNECTS})"
        )));
    }
    Ok(())
}

/// The behaviour under `key`: its own keys over `defaults`, checked.
fn behaviour(
    key: &str,
    own: &ClientKeys,
    defaults: &ClientKeys,
) -> Result<(Behaviour, Hold), PlanError> {
    let bad = |k: &str, why: &str| PlanError::Profile(format!("{key}.{k}: {why}"));
    let hold = match own.hold.as_ref().or(defaults.hold.as_ref()) {
        None => Hold::Fixed(DEFAULT_HOLD),
        Some(HoldFile::Fixed(d)) => Hold::Fixed(*d),
        Some(HoldFile::Distribution(HoldDistribution::Uniform(a, b))) => {
            if a > b {
                return Err(bad("hold", "uniform: the first bound is above the second"));
            }
            Hold::Uniform(*a, *b)
        }
        Some(HoldFile::Distribution(HoldDistribution::Exponential(mean))) => {
            Hold::Exponential(*mean)
        }
    };
    let policy = own.retry.or(defaults.retry).unwrap_or(RetryPolicy::None);
    let initial = own
        .retry_initial
        .or(defaults.retry_initial)
        .unwrap_or(DEFAULT_RETRY_INITIAL);
    let max = own
        .retry_max
        .or(defaults.retry_max)
        .unwrap_or(DEFAULT_RETRY_MAX);
    let factor = own
        .retry_factor
        .or(defaults.retry_factor)
        .unwrap_or(DEFAULT_RETRY_FACTOR);
    let attempts =
        own.max_attempts
            .or(defaults.max_attempts)
            .unwrap_or(if policy == RetryPolicy::None {
                1
            } else {
                DEFAULT_MAX_ATTEMPTS
            });
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(bad("retry_factor", "must be a number of at least 1"));
    }
    if attempts == 0 {
        return Err(bad(
            "max_attempts",
            "must be at least 1 (the first attempt)",
        ));
    }
    if max < initial {
        return Err(bad("retry_max", "is below retry_initial"));
    }
    let give_up_after = own.give_up_after.or(defaults.give_up_after);
    if give_up_after == Some(Duration::ZERO) {
        return Err(bad(
            "give_up_after",
            "must be above 0 (leave it out to wait forever)",
        ));
    }
    Ok((
        Behaviour {
            give_up_after,
            retry: Retry {
                policy,
                initial,
                max,
                factor,
                attempts,
            },
        },
        hold,
    ))
}

impl Hold {
    /// One session length.
    pub(crate) fn draw(&self, rng: &Jitter) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(a, b) => a + (b - a).mul_f64(rng.unit()),
            // Inverse transform; capped at 20 means so that a draw stays finite.
            Self::Exponential(mean) => mean.mul_f64((-(1.0 - rng.unit()).ln()).min(20.0)),
        }
    }
}
