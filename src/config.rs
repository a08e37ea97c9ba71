//! Beside the flow (DESIGN.md, "Configuration"): the config's types and its loading.
//!
//! Load the TOML file (plus `SLUICE__SECTION__KEY` environment overrides), validate it
//! whole, and hand out an immutable [`Config`].
//!
//! The flow is `sluice.toml -> file::FileConfig (raw serde) -> Config (validated)`.
//! Every rule that spans several keys is checked in `config/validate.rs`, so a bad file
//! fails at boot (or at reload) with the key and the reason, never later under traffic.
//! The built-in values live in `config/defaults.rs` and are re-exported here.

mod defaults;
pub mod file;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use self::file::FileConfig;

pub use self::defaults::*;
pub use self::validate::{check_tenant_name, redact_redis_url};

/// Keys (or last parts of keys) whose values are lists; from the environment they are
/// written comma-separated, e.g. `SLUICE__UPSTREAM__GROUPS__PRIMARY__ENDPOINTS=ws://a:1,ws://b:1`.
const LIST_KEYS: [&str; 5] = [
    "sources",
    "subprotocols",
    "endpoints",
    "key_sha256",
    "sentinels",
];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type or an unknown key.
    #[error("{0}")]
    Parse(String),
    /// One or more keys have invalid values.
    #[error("{}", display_invalid(.0))]
    Invalid(Vec<Invalid>),
}

/// One invalid key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key, e.g. `tenants.acme.max_sessions`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.reason)
    }
}

fn display_invalid(list: &[Invalid]) -> String {
    let lines: Vec<String> = list.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// The validated configuration. Cheap to share: wrap in `Arc`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[listen]`
    pub listen: Listen,
    /// `[admin]`
    pub admin: Admin,
    /// `[tenant_identity]`
    pub identity: Identity,
    /// `[edge]`: the upstream's global ceiling; `None` means no ceiling.
    pub edge: Option<EdgeLimits>,
    /// `[cluster]`: several replicas enforce one set of limits on Redis; `None`: this
    /// process alone (no Redis).
    pub cluster: Option<Cluster>,
    /// `[upstream]`
    pub upstream: Upstream,
    /// `[defaults]`, with every key filled in.
    pub defaults: Limits,
    /// `[protection]`
    pub protection: Protection,
    /// `[shutdown]`
    pub shutdown: Shutdown,
    /// `[accept]`: the message relay of `accept`-mode tenants.
    pub accept: Accept,
    /// Configured tenants by name.
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    /// The shared `_default` tenant for unknown names, when `unknown = "default"`.
    pub default_tenant: Option<Arc<Tenant>>,
    /// The file it was loaded from ([`Config::load`]); a reload reads it again.
    pub source: Option<PathBuf>,
}

/// `[listen]`
#[derive(Debug, Clone)]
pub struct Listen {
    /// Proxy listen address.
    pub address: SocketAddr,
    /// TLS certificate and key (PEM); `None` = plain TCP.
    pub tls: Option<TlsFiles>,
    /// Time a client gets to finish TLS and send its request head.
    pub header_timeout: Duration,
    /// Runtimes (threads) that serve the proxy port, one listener each; `None`: one per
    /// core the process may use.
    pub workers: Option<u32>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct Admin {
    /// Admin listen address.
    pub address: SocketAddr,
    /// Whether a non-loopback `address` is allowed (`admin.allow_public`).
    pub allow_public: bool,
}

/// `[tenant_identity]`
#[derive(Debug, Clone)]
pub struct Identity {
    /// Sources tried in order.
    pub sources: Vec<IdentitySource>,
    /// Header for the `header` source (lower case).
    pub header: HeaderName,
    /// Suffix for the `host` source, lower case with its leading dot; `None` disables it.
    pub host_suffix: Option<String>,
    /// What to do with a tenant name that is not configured.
    pub unknown: UnknownTenant,
}

/// Where a tenant name may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// `/t/{tenant}/…`, prefix stripped before forwarding.
    Path,
    /// The configured header.
    Header,
    /// The Host's subdomain in front of `host_suffix`.
    Host,
}

impl IdentitySource {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Header => "header",
            Self::Host => "host",
        }
    }
}

/// `tenant_identity.unknown`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTenant {
    /// 403 `tenant-unknown`.
    Reject,
    /// Admit under `[defaults]` as tenant `_default`.
    Default,
}

/// `[edge]`
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeLimits {
    /// Live sessions across all tenants.
    pub max_sessions: u32,
    /// Handshakes per second across all tenants.
    pub handshake_rate: f64,
    /// Handshake burst across all tenants.
    pub handshake_burst: u32,
}

/// `[cluster]` (DESIGN.md, "Scale-out"): where the replicas' shared state lives and how
/// a replica behaves when it cannot reach it.
///
/// Validated: `heartbeat` ≥ 100 ms, `lease_ttl` ≥ 2 × `heartbeat`, 0 < `redis_timeout`
/// < `heartbeat`. A reload cannot change it (the one in force is kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The Redis server (or the Sentinels that name it).
    pub redis: RedisTarget,
    /// This replica's name in Redis (default: host name and pid,
    /// [`default_replica_id`]), unique per replica: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
    pub replica_id: String,
    /// Each replica renews its live counts this often (default 5 s).
    pub heartbeat: Duration,
    /// A replica silent this long has its slots given back (default 15 s).
    pub lease_ttl: Duration,
    /// One Redis decision's budget (default 50 ms).
    pub redis_timeout: Duration,
    /// What a replica admits while Redis is unreachable.
    pub on_redis_failure: OnRedisFailure,
}

/// Where Redis is. Its `Debug` hides passwords ([`redact_redis_url`]).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis = "redis://host:port/db"` (also `redis+unix:///path`, `unix:///path`),
    /// as written; it parses with `redis::IntoConnectionInfo`. `rediss://` is refused:
    /// the redis crate is built without TLS.
    Url(String),
    /// `sentinels = ["host:26379", …]` with `master = "name"`: the master the Sentinels
    /// name, asked again after a failover. Each sentinel as a `redis://host:port` URL.
    Sentinel {
        /// The Sentinels' URLs.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
    },
}

impl fmt::Debug for RedisTarget {
    // A password in a URL never reaches logs, not even through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => f.debug_tuple("Url").field(&redact_redis_url(url)).finish(),
            Self::Sentinel { sentinels, master } => {
                let sentinels: Vec<String> =
                    sentinels.iter().map(|s| redact_redis_url(s)).collect();
                f.debug_struct("Sentinel")
                    .field("sentinels", &sentinels)
                    .field("master", master)
                    .finish()
            }
        }
    }
}

/// `on_redis_failure`: what a replica admits while its breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisFailure {
    /// Within its share of each limit: cap ÷ live replicas, rate ÷ live replicas (the
    /// replica set it last saw).
    LocalShare,
    /// On the full local limits, as if alone.
    Open,
    /// Nothing new (live sessions go on).
    Closed,
}

impl OnRedisFailure {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LocalShare => "local-share",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// `[upstream]`
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Group of tenants that name none.
    pub default_group: String,
    /// Time for one upstream WebSocket handshake.
    pub handshake_timeout: Duration,
    /// Total time for all attempts of one client.
    pub retry_budget: Duration,
    /// First backoff step.
    pub backoff_base: Duration,
    /// Largest backoff step.
    pub backoff_max: Duration,
    /// Longest pause an edge `Retry-After` may cause, for a tenant or an endpoint.
    pub max_pause: Duration,
    /// Handshakes slower than this count against the adaptive rate.
    pub slow_handshake: Duration,
    /// AIMD on the handshake rate.
    pub adaptive: bool,
    /// What a sign of trouble multiplies the effective rate by (0 < f < 1).
    pub adaptive_factor: f64,
    /// Lowest effective rate, as a fraction of the configured one (0 < f ≤ 1).
    pub adaptive_floor: f64,
    /// Extra CA (PEM) trusted for `wss://` endpoints, beside the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Groups by name.
    pub groups: BTreeMap<String, Arc<Group>>,
}

impl Upstream {
    /// The default group; an empty stand-in when it is not defined (which validation
    /// reports, so such a config never runs).
    fn default(&self) -> Arc<Group> {
        self.groups
            .get(&self.default_group)
            .cloned()
            .unwrap_or_else(|| Group::missing(&self.default_group))
    }
}

impl Group {
    fn missing(name: &str) -> Arc<Group> {
        Arc::new(Group {
            name: name.to_owned(),
            endpoints: Vec::new(),
        })
    }
}

/// An upstream group: endpoints serving the same edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Endpoints; tried in turn, starting at a random one.
    pub endpoints: Vec<Endpoint>,
}

/// One upstream endpoint, `ws://host:port/prefix` or `wss://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As written in the config (for logs and labels).
    pub url: String,
    /// `wss://`
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (default 80 / 443).
    pub port: u16,
    /// Value for the upstream `Host` header.
    pub authority: String,
    /// Path the client's path is appended to; empty for `/`.
    pub path_prefix: String,
    /// Query appended after the client's; empty for none.
    pub query: String,
    /// The decoded parameter names of `query`: a client parameter of one of these names
    /// is dropped, so the endpoint's value cannot be overridden.
    pub query_keys: Vec<String>,
}

/// Per-tenant limits, every key filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Live sessions.
    pub max_sessions: u32,
    /// Handshakes per second.
    pub handshake_rate: f64,
    /// Handshake burst.
    pub handshake_burst: u32,
    /// Queued connects.
    pub queue_depth: u32,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// How a queued client waits.
    pub queue_mode: QueueMode,
    /// Subprotocols sluice may accept itself in `accept` mode.
    pub subprotocols: Vec<String>,
    /// Share of the edge ceiling.
    pub weight: u32,
    /// `enforce`: `false` puts the tenant in shadow mode (admission's `shadow` module):
    /// its decisions are computed and counted, never applied.
    pub enforce: bool,
}

/// `queue_mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// The upgrade request stays pending while queued.
    Hold,
    /// sluice answers 101 at once and holds messages while queued.
    Accept,
}

impl QueueMode {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Accept => "accept",
        }
    }
}

/// A tenant: its name, limits, upstream group and how it authenticates.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Name, also the metric label.
    pub name: String,
    /// Effective limits.
    pub limits: Limits,
    /// Its upstream group: `upstream_group`, else `upstream.default_group`.
    pub group: Arc<Group>,
    /// How the tenant proves who it is.
    pub auth: Auth,
    /// Its SIP call limits (`max_calls` …, DESIGN.md "SIP awareness"); `None`: calls are
    /// not counted and its messages are not parsed.
    pub calls: Option<Calls>,
}

/// A tenant's SIP call limits, every key filled in: present when any call key is set,
/// valid only with `queue_mode = "accept"` and `sip` among its `subprotocols`.
#[derive(Debug, Clone, PartialEq)]
pub struct Calls {
    /// Concurrent calls; `None`: not capped (calls are still counted).
    pub max_calls: Option<u32>,
    /// Initial INVITEs per second; `None`: not paced.
    pub call_rate: Option<f64>,
    /// INVITEs at once before the pacing (`call_burst`, default: `call_rate` rounded up).
    pub call_burst: u32,
    /// INVITEs held at once, waiting for a call to end.
    pub invite_queue_depth: u32,
    /// The longest an INVITE is held before sluice answers it `503` itself.
    pub invite_queue_timeout: Duration,
    /// A call with no message of its dialog for this long stops counting.
    pub call_idle_timeout: Duration,
}

/// How a tenant authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credential: for trusted networks only.
    None,
    /// One of these SHA-256 hashes of an API key.
    ApiKey {
        /// Allowed key hashes.
        hashes: Vec<[u8; 32]>,
    },
    /// A JWT signed with HS256 with this secret.
    Jwt {
        /// The HMAC secret.
        secret: Vec<u8>,
        /// Where it came from (`env SLUICE_ACME_JWT_SECRET`, `file /etc/…`), for messages.
        origin: String,
    },
}

impl Auth {
    /// The kind as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ApiKey { .. } => "api-key",
            Self::Jwt { .. } => "jwt",
        }
    }
}

impl fmt::Debug for Auth {
    // Secrets never reach logs, not even through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::ApiKey { hashes } => write!(f, "ApiKey({} keys)", hashes.len()),
            Self::Jwt { origin, .. } => write!(f, "Jwt(secret from {origin})"),
        }
    }
}

/// `[protection]`
#[derive(Debug, Clone, PartialEq)]
pub struct Protection {
    /// Unauthenticated attempts per second per client IP.
    pub preauth_rate_per_ip: f64,
    /// Burst of unauthenticated attempts per client IP.
    pub preauth_burst_per_ip: u32,
    /// Connections still in their HTTP phase, all together.
    pub max_pending_handshakes: u32,
    /// Of those, from one client address (IPv6: per /64). Above `max_pending_handshakes`
    /// it is accepted and has no effect.
    pub max_pending_per_ip: u32,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Close a session with no traffic for this long.
    pub idle_timeout: Option<Duration>,
    /// Close a session older than this.
    pub max_session: Option<Duration>,
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq)]
pub struct Shutdown {
    /// Time live sessions get to end on their own.
    pub drain_timeout: Duration,
}

/// `[accept]`: limits of the message relay used by `accept`-mode tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    /// Largest message, and largest single frame, either leg may send.
    pub max_message_bytes: u32,
    /// Bytes of messages a client may send while it is queued.
    pub held_bytes: u32,
    /// Messages a client may send while it is queued.
    pub held_messages: u32,
}

// === impl Config ===

impl Config {
    /// Read and validate a config file, with `SLUICE__…` overrides and JWT secrets
    /// taken from the process environment.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, or a key is invalid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env: HashMap<String, String> = std::env::vars().collect();
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        let mut config = Self::parse_in(&text, &env, base)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parse and validate config text; `env` supplies `SLUICE__…` overrides and the
    /// variables named by `secret_env`.
    ///
    /// # Errors
    /// The text is not valid TOML, or a key is invalid.
    pub fn parse(text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::parse_in(text, env, Path::new(""))
    }

    /// Like [`Config::parse`], with relative file paths in the config (`tls_cert`,
    /// `tls_key`, `ca_file`, `secret_file`) taken relative to `base`, the directory of
    /// the config file.
    ///
    /// # Errors
    /// The text is not valid TOML, or a key is invalid.
    pub fn parse_in(
        text: &str,
        env: &HashMap<String, String>,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let overrides: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("SLUICE__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Keys whose value is a list take comma-separated values from the environment.
        let mut environment = config::Environment::with_prefix("SLUICE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for name in overrides.keys() {
            let key = name["SLUICE__".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            if LIST_KEYS
                .iter()
                .any(|k| key == *k || key.ends_with(&format!(".{k}")))
            {
                environment = environment.with_list_parse_key(&key);
            }
        }
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(environment.source(Some(overrides)))
            .build()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut file: FileConfig = raw
            .try_deserialize()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        file.resolve_paths(base);
        Self::from_file_config(file, env)
    }

    /// The tenant a resolved name maps to: configured, else `_default` when allowed.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name).or(self.default_tenant.as_ref())
    }
}
