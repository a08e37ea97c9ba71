//! Configuration: load the TOML file (plus `SLUICE__SECTION__KEY` environment
//! overrides), validate it whole, and hand out an immutable [`Config`].
//!
//! The flow is `sluice.toml -> file::FileConfig (raw serde) -> Config (validated)`.
//! Every rule that spans several keys is checked here, so a bad file fails at boot (or
//! at reload) with the key and the reason, never later under traffic.

pub mod file;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use self::file::{AuthFile, FileConfig, LimitsFile};

/// Default proxy listen address.
pub const DEFAULT_LISTEN_ADDRESS: &str = "0.0.0.0:8080";
/// Default admin listen address: loopback only.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9090";
/// Time a client gets to send its whole request head (and finish TLS).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Header carrying the tenant for the `header` identity source.
pub const DEFAULT_TENANT_HEADER: &str = "x-tenant-id";
/// Time the upstream gets to answer the WebSocket handshake (the field's danger mark).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Total time spent trying upstream endpoints for one client.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(10);
/// First backoff step between upstream attempts.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Largest backoff step between upstream attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Longest pause an edge `Retry-After` may cause (`upstream.max_pause`).
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(5 * 60);
/// Largest `upstream.max_pause` accepted.
pub const MAX_MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);
/// An upstream handshake slower than this counts as a sign of an overloaded edge.
pub const DEFAULT_SLOW_HANDSHAKE: Duration = Duration::from_millis(1500);
/// Default name of the upstream group used by tenants that name none.
pub const DEFAULT_GROUP: &str = "primary";
/// Default live-session cap per tenant.
pub const DEFAULT_MAX_SESSIONS: u32 = 100;
/// Default handshake rate per tenant, per second.
pub const DEFAULT_HANDSHAKE_RATE: f64 = 10.0;
/// Default handshake burst per tenant.
pub const DEFAULT_HANDSHAKE_BURST: u32 = 5;
/// Default queue depth per tenant.
pub const DEFAULT_QUEUE_DEPTH: u32 = 200;
/// Default longest wait in a tenant's queue.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default multiplier of the effective handshake rate on a sign of edge trouble.
pub const DEFAULT_ADAPTIVE_FACTOR: f64 = 0.5;
/// Default lowest effective handshake rate, as a fraction of the configured one.
pub const DEFAULT_ADAPTIVE_FLOOR: f64 = 0.1;
/// Default weight of a tenant when the edge ceiling is shared.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Default unauthenticated attempts per second per client IP.
pub const DEFAULT_PREAUTH_RATE_PER_IP: f64 = 5.0;
/// Default burst of unauthenticated attempts per client IP.
pub const DEFAULT_PREAUTH_BURST_PER_IP: u32 = 20;
/// Default cap on connections still in their HTTP phase.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: u32 = 10_000;
/// Default cap on connections still in their HTTP phase from one client address.
pub const DEFAULT_MAX_PENDING_PER_IP: u32 = 32;
/// Default limit on the size of a request head.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16_384;
/// hyper refuses read buffers smaller than this, so it is the floor of `max_header_bytes`.
pub const MIN_MAX_HEADER_BYTES: usize = 8_192;
/// Largest accepted `max_header_bytes`.
pub const MAX_MAX_HEADER_BYTES: usize = 1 << 20;
/// Default time live sessions get to end by themselves on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest WebSocket message (and frame) relayed in `accept` mode.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 2 << 20;
/// Largest accepted `accept.max_message_bytes`.
pub const MAX_MAX_MESSAGE_BYTES: u32 = 64 << 20;
/// Default bytes of messages an `accept`-mode client may send while queued.
pub const DEFAULT_HELD_BYTES: u32 = 64 << 10;
/// Default number of messages an `accept`-mode client may send while queued.
pub const DEFAULT_HELD_MESSAGES: u32 = 64;
/// Keys (or last parts of keys) whose values are lists; from the environment they are
/// written comma-separated, e.g. `SLUICE__UPSTREAM__GROUPS__PRIMARY__ENDPOINTS=ws://a:1,ws://b:1`.
const LIST_KEYS: [&str; 4] = ["sources", "subprotocols", "endpoints", "key_sha256"];
/// Tenant label used for unknown tenants when `tenant_identity.unknown = "default"`.
pub const DEFAULT_TENANT: &str = "_default";
/// Longest tenant name.
pub const MAX_TENANT_NAME: usize = 64;

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

impl Default for Accept {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            held_bytes: DEFAULT_HELD_BYTES,
            held_messages: DEFAULT_HELD_MESSAGES,
        }
    }
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

    /// Validate a parsed file.
    ///
    /// # Errors
    /// Every invalid key, each with its reason.
    pub fn from_file_config(
        file: FileConfig,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut v = Validator::default();

        let listen = Listen {
            address: v.socket_addr(
                "listen.address",
                file.listen.address.as_deref(),
                DEFAULT_LISTEN_ADDRESS,
            ),
            tls: match (file.listen.tls_cert, file.listen.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                (Some(_), None) => {
                    v.fail("listen.tls_key", "required when listen.tls_cert is set");
                    None
                }
                (None, Some(_)) => {
                    v.fail("listen.tls_cert", "required when listen.tls_key is set");
                    None
                }
            },
            header_timeout: v.positive_duration(
                "listen.header_timeout",
                file.listen.header_timeout,
                DEFAULT_HEADER_TIMEOUT,
            ),
        };

        let admin = Admin {
            address: v.socket_addr(
                "admin.address",
                file.admin.address.as_deref(),
                DEFAULT_ADMIN_ADDRESS,
            ),
            allow_public: file.admin.allow_public.unwrap_or(false),
        };
        // The admin listener has no authentication: metrics, tenant names and reload.
        if !admin.address.ip().is_loopback() && !admin.allow_public {
            v.fail(
                "admin.address",
                format!(
                    "{} is not a loopback address, and the admin listener (metrics, tenant status, reload) has no authentication; bind it to 127.0.0.1, or set admin.allow_public = true when a firewall or network policy guards it",
                    admin.address
                ),
            );
        }

        let identity = v.identity(file.tenant_identity);

        let edge = file.edge.map(|edge| EdgeLimits {
            max_sessions: v.positive_u32("edge.max_sessions", edge.max_sessions, 1000),
            handshake_rate: v.positive_rate("edge.handshake_rate", edge.handshake_rate, 100.0),
            handshake_burst: v.positive_u32("edge.handshake_burst", edge.handshake_burst, 20),
        });

        let upstream = v.upstream(file.upstream);
        let defaults = v.limits("defaults", &file.defaults, None);

        let protection = Protection {
            preauth_rate_per_ip: v.positive_rate(
                "protection.preauth_rate_per_ip",
                file.protection.preauth_rate_per_ip,
                DEFAULT_PREAUTH_RATE_PER_IP,
            ),
            preauth_burst_per_ip: v.positive_u32(
                "protection.preauth_burst_per_ip",
                file.protection.preauth_burst_per_ip,
                DEFAULT_PREAUTH_BURST_PER_IP,
            ),
            max_pending_handshakes: v.positive_u32(
                "protection.max_pending_handshakes",
                file.protection.max_pending_handshakes,
                DEFAULT_MAX_PENDING_HANDSHAKES,
            ),
            max_pending_per_ip: v.positive_u32(
                "protection.max_pending_per_ip",
                file.protection.max_pending_per_ip,
                DEFAULT_MAX_PENDING_PER_IP,
            ),
            max_header_bytes: v.max_header_bytes(file.protection.max_header_bytes),
            idle_timeout: v.optional_positive_duration(
                "protection.idle_timeout",
                file.protection.idle_timeout,
            ),
            max_session: v
                .optional_positive_duration("protection.max_session", file.protection.max_session),
        };

        let shutdown = Shutdown {
            drain_timeout: file.shutdown.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        };

        let accept = v.accept(&file.accept);

        let mut tenants = BTreeMap::new();
        for (name, tenant) in &file.tenants {
            let prefix = format!("tenants.{name}");
            if let Err(reason) = check_tenant_name(name) {
                v.fail(&prefix, reason);
                continue;
            }
            let limits = v.limits(&prefix, &tenant.limits(), Some(&defaults));
            let group = match &tenant.upstream_group {
                None => upstream.default(),
                Some(name) => upstream.groups.get(name).cloned().unwrap_or_else(|| {
                    v.fail(
                        &format!("{prefix}.upstream_group"),
                        format!(
                            "group {name:?} is not defined; define [upstream.groups.{name}] or use one of: {}",
                            list_names(upstream.groups.keys())
                        ),
                    );
                    Group::missing(name)
                }),
            };
            let auth = match &tenant.auth {
                Some(auth) => v.auth(&format!("{prefix}.auth"), auth, env),
                None => {
                    v.fail(
                        &format!("{prefix}.auth"),
                        "required: say how this tenant authenticates, e.g. auth = { kind = \"api-key\", key_sha256 = [\"…\"] }, or auth = { kind = \"none\" } for a trusted network",
                    );
                    Auth::None
                }
            };
            tenants.insert(
                name.clone(),
                Arc::new(Tenant {
                    name: name.clone(),
                    limits,
                    group,
                    auth,
                }),
            );
        }

        let default_tenant = (identity.unknown == UnknownTenant::Default).then(|| {
            Arc::new(Tenant {
                name: DEFAULT_TENANT.to_owned(),
                limits: defaults.clone(),
                group: upstream.default(),
                auth: Auth::None,
            })
        });

        if tenants.is_empty() && default_tenant.is_none() {
            v.fail(
                "tenants",
                "no tenant is configured and tenant_identity.unknown = \"reject\": every client would be refused; add a [tenants.NAME] table",
            );
        }

        if v.errors.is_empty() {
            Ok(Config {
                listen,
                admin,
                identity,
                edge,
                upstream,
                defaults,
                protection,
                shutdown,
                accept,
                tenants,
                default_tenant,
                source: None,
            })
        } else {
            Err(ConfigError::Invalid(v.errors))
        }
    }

    /// The tenant a resolved name maps to: configured, else `_default` when allowed.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name).or(self.default_tenant.as_ref())
    }
}

/// Checks a tenant name: 1 to 64 of `a-z 0-9 - _`, not starting with `_` (reserved for
/// `_default` and `_unknown`).
///
/// # Errors
/// Why the name is not allowed.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TENANT_NAME {
        return Err(format!(
            "tenant names are 1 to {MAX_TENANT_NAME} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "tenant name {name:?} may only use lower-case letters, digits, '-' and '_'"
        ));
    }
    if name.starts_with('_') {
        return Err(format!(
            "tenant name {name:?} may not start with '_' (reserved for _default and _unknown)"
        ));
    }
    Ok(())
}

fn list_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "(none defined)".to_owned()
    } else {
        names.join(", ")
    }
}

/// Collects every invalid key instead of stopping at the first.
#[derive(Default)]
struct Validator {
    errors: Vec<Invalid>,
}

// === impl Validator ===

impl Validator {
    fn fail(&mut self, key: &str, reason: impl Into<String>) {
        self.errors.push(Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    fn socket_addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.fail(
                    key,
                    format!("{text:?} is not an IP:port address (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")"),
                );
                default.parse().expect("default address parses")
            }
        }
    }

    fn positive_duration(
        &mut self,
        key: &str,
        value: Option<Duration>,
        default: Duration,
    ) -> Duration {
        match value {
            Some(d) if d.is_zero() => {
                self.fail(key, "must be longer than 0");
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    fn optional_positive_duration(
        &mut self,
        key: &str,
        value: Option<Duration>,
    ) -> Option<Duration> {
        if value.is_some_and(|d| d.is_zero()) {
            self.fail(key, "must be longer than 0; leave the key out to disable");
            return None;
        }
        value
    }

    fn positive_u32(&mut self, key: &str, value: Option<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if n < 1 => {
                self.fail(key, format!("must be at least 1, got {n}"));
                default
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) => n,
                Err(_) => {
                    self.fail(key, format!("must be at most {}, got {n}", u32::MAX));
                    default
                }
            },
        }
    }

    fn u32_allow_zero(&mut self, key: &str, value: Option<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) => match u32::try_from(n) {
                Ok(n) => n,
                Err(_) => {
                    self.fail(key, format!("must be between 0 and {}, got {n}", u32::MAX));
                    default
                }
            },
        }
    }

    fn positive_rate(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        match value {
            None => default,
            Some(r) if !r.is_finite() || r <= 0.0 => {
                self.fail(key, format!("must be a rate above 0 per second, got {r}"));
                default
            }
            Some(r) if r > 1_000_000.0 => {
                self.fail(key, format!("must be at most 1000000 per second, got {r}"));
                default
            }
            Some(r) => r,
        }
    }

    /// A fraction in (0, 1), or (0, 1] with `one_ok`.
    fn fraction(&mut self, key: &str, value: Option<f64>, default: f64, one_ok: bool) -> f64 {
        match value {
            None => default,
            Some(f) if f.is_finite() && f > 0.0 && (f < 1.0 || (one_ok && f == 1.0)) => f,
            Some(f) => {
                let range = if one_ok {
                    "above 0 and at most 1"
                } else {
                    "between 0 and 1 (exclusive)"
                };
                self.fail(key, format!("must be a fraction {range}, got {f}"));
                default
            }
        }
    }

    fn max_header_bytes(&mut self, value: Option<i64>) -> usize {
        let key = "protection.max_header_bytes";
        match value {
            None => DEFAULT_MAX_HEADER_BYTES,
            Some(n) => match usize::try_from(n) {
                Ok(n) if (MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&n) => n,
                _ => {
                    self.fail(
                        key,
                        format!(
                            "must be between {MIN_MAX_HEADER_BYTES} and {MAX_MAX_HEADER_BYTES} bytes, got {n}"
                        ),
                    );
                    DEFAULT_MAX_HEADER_BYTES
                }
            },
        }
    }

    fn accept(&mut self, file: &file::AcceptFile) -> Accept {
        let max_message_bytes = self.positive_u32(
            "accept.max_message_bytes",
            file.max_message_bytes,
            DEFAULT_MAX_MESSAGE_BYTES,
        );
        let max_message_bytes = if max_message_bytes > MAX_MAX_MESSAGE_BYTES {
            self.fail(
                "accept.max_message_bytes",
                format!(
                    "must be at most {MAX_MAX_MESSAGE_BYTES} (64 MiB), got {max_message_bytes}"
                ),
            );
            DEFAULT_MAX_MESSAGE_BYTES
        } else {
            max_message_bytes
        };
        Accept {
            max_message_bytes,
            held_bytes: self.positive_u32("accept.held_bytes", file.held_bytes, DEFAULT_HELD_BYTES),
            held_messages: self.positive_u32(
                "accept.held_messages",
                file.held_messages,
                DEFAULT_HELD_MESSAGES,
            ),
        }
    }

    fn identity(&mut self, file: file::TenantIdentityFile) -> Identity {
        let mut sources = Vec::new();
        let names = file
            .sources
            .unwrap_or_else(|| vec!["path".to_owned(), "header".to_owned(), "host".to_owned()]);
        if names.is_empty() {
            self.fail(
                "tenant_identity.sources",
                "must name at least one of \"path\", \"header\", \"host\"",
            );
        }
        for name in &names {
            let source = match name.trim() {
                "path" => IdentitySource::Path,
                "header" => IdentitySource::Header,
                "host" => IdentitySource::Host,
                other => {
                    self.fail(
                        "tenant_identity.sources",
                        format!("unknown source {other:?}; use \"path\", \"header\" or \"host\""),
                    );
                    continue;
                }
            };
            if sources.contains(&source) {
                self.fail(
                    "tenant_identity.sources",
                    format!("source {:?} is listed twice", source.as_str()),
                );
                continue;
            }
            sources.push(source);
        }
        let header_name = file
            .header
            .unwrap_or_else(|| DEFAULT_TENANT_HEADER.to_owned());
        let header = match HeaderName::from_bytes(header_name.trim().as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.fail(
                    "tenant_identity.header",
                    format!("{header_name:?} is not a valid HTTP header name"),
                );
                HeaderName::from_static(DEFAULT_TENANT_HEADER)
            }
        };
        let host_suffix = match file.host_suffix {
            None => None,
            Some(s) => {
                let s = s.trim().to_ascii_lowercase();
                let s = if s.starts_with('.') {
                    s
                } else {
                    format!(".{s}")
                };
                if s.len() < 2 || s.contains(|c: char| c == ':' || c == '/' || c.is_whitespace()) {
                    self.fail(
                        "tenant_identity.host_suffix",
                        format!("{s:?} is not a DNS suffix like \".softphone.example.com\""),
                    );
                    None
                } else {
                    Some(s)
                }
            }
        };
        let unknown = match file.unknown.as_deref().unwrap_or("reject") {
            "reject" => UnknownTenant::Reject,
            "default" => UnknownTenant::Default,
            other => {
                self.fail(
                    "tenant_identity.unknown",
                    format!("{other:?} is not one of \"reject\", \"default\""),
                );
                UnknownTenant::Reject
            }
        };
        Identity {
            sources,
            header,
            host_suffix,
            unknown,
        }
    }

    fn upstream(&mut self, file: file::UpstreamFile) -> Upstream {
        let default_group = file
            .default_group
            .unwrap_or_else(|| DEFAULT_GROUP.to_owned());
        let mut groups = BTreeMap::new();
        for (name, group) in file.groups {
            let key = format!("upstream.groups.{name}.endpoints");
            if group.endpoints.is_empty() {
                self.fail(&key, "must list at least one ws:// or wss:// endpoint");
            }
            let mut endpoints = Vec::new();
            for (i, url) in group.endpoints.iter().enumerate() {
                match parse_endpoint(url) {
                    Ok(e) => {
                        if endpoints.contains(&e) {
                            self.fail(&format!("{key}[{i}]"), format!("{url:?} is listed twice"));
                        }
                        endpoints.push(e);
                    }
                    Err(reason) => self.fail(&format!("{key}[{i}]"), reason),
                }
            }
            groups.insert(name.clone(), Arc::new(Group { name, endpoints }));
        }
        if !groups.contains_key(&default_group) {
            self.fail(
                "upstream.default_group",
                format!(
                    "group {default_group:?} is not defined; add [upstream.groups.{default_group}] with endpoints = [\"ws://host:port\"] (defined: {})",
                    list_names(groups.keys())
                ),
            );
        }
        let handshake_timeout = self.positive_duration(
            "upstream.handshake_timeout",
            file.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let retry_budget = self.positive_duration(
            "upstream.retry_budget",
            file.retry_budget,
            DEFAULT_RETRY_BUDGET,
        );
        if retry_budget < handshake_timeout {
            self.fail(
                "upstream.retry_budget",
                format!(
                    "{} is shorter than upstream.handshake_timeout ({}): not even one attempt would fit",
                    humantime::format_duration(retry_budget),
                    humantime::format_duration(handshake_timeout)
                ),
            );
        }
        let backoff_base = self.positive_duration(
            "upstream.backoff_base",
            file.backoff_base,
            DEFAULT_BACKOFF_BASE,
        );
        let backoff_max = self.positive_duration(
            "upstream.backoff_max",
            file.backoff_max,
            DEFAULT_BACKOFF_MAX,
        );
        if backoff_max < backoff_base {
            self.fail(
                "upstream.backoff_max",
                "must not be less than upstream.backoff_base",
            );
        }
        let max_pause =
            self.positive_duration("upstream.max_pause", file.max_pause, DEFAULT_MAX_PAUSE);
        if max_pause > MAX_MAX_PAUSE {
            self.fail(
                "upstream.max_pause",
                format!(
                    "{} is longer than {}: an edge Retry-After would pause tenants for that long",
                    humantime::format_duration(max_pause),
                    humantime::format_duration(MAX_MAX_PAUSE)
                ),
            );
        }
        let slow_handshake = self.positive_duration(
            "upstream.slow_handshake",
            file.slow_handshake,
            DEFAULT_SLOW_HANDSHAKE,
        );
        let adaptive_factor = self.fraction(
            "upstream.adaptive_factor",
            file.adaptive_factor,
            DEFAULT_ADAPTIVE_FACTOR,
            false,
        );
        let adaptive_floor = self.fraction(
            "upstream.adaptive_floor",
            file.adaptive_floor,
            DEFAULT_ADAPTIVE_FLOOR,
            true,
        );
        Upstream {
            default_group,
            handshake_timeout,
            retry_budget,
            backoff_base,
            backoff_max,
            max_pause: max_pause.min(MAX_MAX_PAUSE),
            slow_handshake,
            adaptive: file.adaptive.unwrap_or(true),
            adaptive_factor,
            adaptive_floor,
            ca_file: file.ca_file,
            groups,
        }
    }

    /// Fills a limits table: from `file`, else from `base` (the `[defaults]`), else
    /// from the built-in defaults.
    fn limits(&mut self, prefix: &str, file: &LimitsFile, base: Option<&Limits>) -> Limits {
        let key = |k: &str| format!("{prefix}.{k}");
        let builtin = Limits {
            max_sessions: DEFAULT_MAX_SESSIONS,
            handshake_rate: DEFAULT_HANDSHAKE_RATE,
            handshake_burst: DEFAULT_HANDSHAKE_BURST,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            queue_mode: QueueMode::Hold,
            subprotocols: vec!["sip".to_owned()],
            weight: DEFAULT_WEIGHT,
        };
        let base = base.unwrap_or(&builtin);
        let queue_mode = match file.queue_mode.as_deref() {
            None => base.queue_mode,
            Some("hold") => QueueMode::Hold,
            Some("accept") => QueueMode::Accept,
            Some(other) => {
                self.fail(
                    &key("queue_mode"),
                    format!("{other:?} is not one of \"hold\", \"accept\""),
                );
                base.queue_mode
            }
        };
        let subprotocols = match &file.subprotocols {
            None => base.subprotocols.clone(),
            Some(list) => {
                for p in list {
                    if p.is_empty() || !p.bytes().all(is_token_byte) {
                        self.fail(
                            &key("subprotocols"),
                            format!("{p:?} is not a valid subprotocol token"),
                        );
                    }
                }
                list.clone()
            }
        };
        Limits {
            max_sessions: self.positive_u32(
                &key("max_sessions"),
                file.max_sessions,
                base.max_sessions,
            ),
            handshake_rate: self.positive_rate(
                &key("handshake_rate"),
                file.handshake_rate,
                base.handshake_rate,
            ),
            handshake_burst: self.positive_u32(
                &key("handshake_burst"),
                file.handshake_burst,
                base.handshake_burst,
            ),
            queue_depth: self.u32_allow_zero(
                &key("queue_depth"),
                file.queue_depth,
                base.queue_depth,
            ),
            queue_timeout: self.positive_duration(
                &key("queue_timeout"),
                file.queue_timeout,
                base.queue_timeout,
            ),
            queue_mode,
            subprotocols,
            weight: self.positive_u32(&key("weight"), file.weight, base.weight),
        }
    }

    fn auth(&mut self, key: &str, file: &AuthFile, env: &HashMap<String, String>) -> Auth {
        let kind = file.kind.as_deref().unwrap_or("");
        let unexpected = |v: &mut Self, field: &str, present: bool| {
            if present {
                v.fail(
                    &format!("{key}.{field}"),
                    format!("not used by kind = {kind:?}"),
                );
            }
        };
        match kind {
            "none" => {
                unexpected(self, "secret_env", file.secret_env.is_some());
                unexpected(self, "secret_file", file.secret_file.is_some());
                unexpected(self, "key_sha256", file.key_sha256.is_some());
                Auth::None
            }
            "api-key" => {
                unexpected(self, "secret_env", file.secret_env.is_some());
                unexpected(self, "secret_file", file.secret_file.is_some());
                let list = file.key_sha256.clone().unwrap_or_default();
                if list.is_empty() {
                    self.fail(
                        &format!("{key}.key_sha256"),
                        "required for kind = \"api-key\": a list of hex SHA-256 hashes of the keys (`printf %s KEY | sha256sum`)",
                    );
                }
                let mut hashes = Vec::new();
                for (i, h) in list.iter().enumerate() {
                    let mut out = [0u8; 32];
                    match hex::decode_to_slice(h.trim(), &mut out) {
                        Ok(()) => hashes.push(out),
                        Err(_) => self.fail(
                            &format!("{key}.key_sha256[{i}]"),
                            "is not 64 hex digits (a SHA-256 hash of the key, not the key itself)",
                        ),
                    }
                }
                Auth::ApiKey { hashes }
            }
            "jwt" => {
                unexpected(self, "key_sha256", file.key_sha256.is_some());
                let secret = match (&file.secret_env, &file.secret_file) {
                    (Some(_), Some(_)) => {
                        self.fail(key, "set one of secret_env and secret_file, not both");
                        None
                    }
                    (None, None) => {
                        self.fail(
                            key,
                            "kind = \"jwt\" needs secret_env (an environment variable holding the HS256 secret) or secret_file",
                        );
                        None
                    }
                    (Some(var), None) => match env.get(var) {
                        Some(s) if !s.is_empty() => {
                            Some((s.as_bytes().to_vec(), format!("env {var}")))
                        }
                        _ => {
                            self.fail(
                                &format!("{key}.secret_env"),
                                format!("environment variable {var} is not set or empty"),
                            );
                            None
                        }
                    },
                    (None, Some(path)) => match std::fs::read(path) {
                        Ok(bytes) => {
                            let trimmed = trim_ascii_end(&bytes).to_vec();
                            if trimmed.is_empty() {
                                self.fail(
                                    &format!("{key}.secret_file"),
                                    format!("{} is empty", path.display()),
                                );
                                None
                            } else {
                                Some((trimmed, format!("file {}", path.display())))
                            }
                        }
                        Err(e) => {
                            self.fail(
                                &format!("{key}.secret_file"),
                                format!("cannot read {}: {e}", path.display()),
                            );
                            None
                        }
                    },
                };
                if let Some((secret, _)) = &secret {
                    if secret.len() < 16 {
                        self.fail(
                            key,
                            format!(
                                "the HS256 secret is {} bytes; use at least 16 (32 random bytes recommended)",
                                secret.len()
                            ),
                        );
                    }
                }
                let (secret, origin) = secret.unwrap_or_default();
                Auth::Jwt { secret, origin }
            }
            "" => {
                self.fail(
                    &format!("{key}.kind"),
                    "required: \"none\", \"api-key\" or \"jwt\"",
                );
                Auth::None
            }
            other => {
                self.fail(
                    &format!("{key}.kind"),
                    format!("{other:?} is not one of \"none\", \"api-key\", \"jwt\""),
                );
                Auth::None
            }
        }
    }
}

/// A secret file usually ends with a newline that is not part of the secret.
fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// RFC 7230 `tchar`.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `ws://host[:port][/path][?query]` or `wss://…`.
fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("{url:?} must start with ws:// or wss://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path_prefix = uri.path().trim_end_matches('/').to_owned();
    Ok(Endpoint {
        url: url.to_owned(),
        tls,
        host,
        port,
        authority: authority.as_str().to_owned(),
        path_prefix,
        query: uri.query().unwrap_or("").to_owned(),
        query_keys: form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, _)| k.into_owned())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[upstream.groups.primary]
endpoints = ["ws://127.0.0.1:7001"]

[tenants.acme]
auth = { kind = "none" }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &HashMap::new())
    }

    fn invalid_keys(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid(list)) => list.into_iter().map(|i| i.key).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen.address, DEFAULT_LISTEN_ADDRESS.parse().unwrap());
        assert_eq!(c.admin.address, DEFAULT_ADMIN_ADDRESS.parse().unwrap());
        assert_eq!(
            c.identity.sources,
            vec![
                IdentitySource::Path,
                IdentitySource::Header,
                IdentitySource::Host
            ]
        );
        assert_eq!(c.upstream.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.upstream.max_pause, Duration::from_secs(300));
        let acme = &c.tenants["acme"];
        assert_eq!(acme.limits, c.defaults);
        assert_eq!(acme.limits.max_sessions, 100);
        assert_eq!(acme.group.name, "primary");
        assert!(c.edge.is_none());
        assert!(c.default_tenant.is_none());
    }

    #[test]
    fn tenant_inherits_defaults_and_overrides_some() {
        let c = parse(&format!(
            "{MINIMAL}\n[defaults]\nmax_sessions = 7\nqueue_timeout = \"250ms\"\n[tenants.globex]\nweight = 3\nauth = {{ kind = \"none\" }}\n"
        ))
        .unwrap();
        let g = &c.tenants["globex"];
        assert_eq!(g.limits.max_sessions, 7);
        assert_eq!(g.limits.queue_timeout, Duration::from_millis(250));
        assert_eq!(g.limits.weight, 3);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = parse(&format!("{MINIMAL}\n[defaults]\nmax_sesions = 3\n")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_sesions"), "{text}");
    }

    #[test]
    fn invalid_values_name_their_keys() {
        let keys = invalid_keys(
            r#"
[upstream.groups.primary]
endpoints = ["http://127.0.0.1:7001"]
[defaults]
handshake_rate = 0.0
[tenants.acme]
max_sessions = 0
upstream_group = "nope"
auth = { kind = "jwt", secret_env = "SLUICE_TEST_UNSET_SECRET" }
"#,
        );
        assert_eq!(
            keys,
            vec![
                "upstream.groups.primary.endpoints[0]",
                "defaults.handshake_rate",
                "tenants.acme.max_sessions",
                "tenants.acme.upstream_group",
                "tenants.acme.auth.secret_env",
            ]
        );
    }

    #[test]
    fn max_pause_is_a_positive_duration_of_at_most_a_day() {
        let with = |v: &str| format!("[upstream]\nmax_pause = \"{v}\"\n{MINIMAL}");
        assert_eq!(
            parse(&with("90s")).unwrap().upstream.max_pause,
            Duration::from_secs(90)
        );
        for bad in ["0s", "25h"] {
            assert_eq!(
                invalid_keys(&with(bad)),
                vec!["upstream.max_pause"],
                "{bad}"
            );
        }
        let err = parse(&with("0s")).unwrap_err().to_string();
        assert!(err.contains("upstream.max_pause"), "{err}");
    }

    #[test]
    fn missing_default_group_is_refused() {
        let keys = invalid_keys("[tenants.acme]\nauth = { kind = \"none\" }\n");
        assert_eq!(keys, vec!["upstream.default_group"]);
    }

    #[test]
    fn tenant_without_auth_is_refused() {
        let keys = invalid_keys(
            "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n[tenants.acme]\nmax_sessions = 3\n",
        );
        assert_eq!(keys, vec!["tenants.acme.auth"]);
    }

    #[test]
    fn bad_tenant_names_are_refused() {
        assert!(check_tenant_name("acme-2_x").is_ok());
        assert!(check_tenant_name("_default").is_err());
        assert!(check_tenant_name("Acme").is_err());
        assert!(check_tenant_name("a/b").is_err());
        assert!(check_tenant_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn env_overrides_file_values_and_supplies_jwt_secret() {
        let env: HashMap<String, String> = [
            ("SLUICE__TENANTS__ACME__MAX_SESSIONS", "42"),
            ("SLUICE__UPSTREAM__HANDSHAKE_TIMEOUT", "750ms"),
            ("SLUICE__TENANT_IDENTITY__SOURCES", "header,path"),
            (
                "SLUICE__UPSTREAM__GROUPS__PRIMARY__ENDPOINTS",
                "ws://127.0.0.1:7001,ws://127.0.0.1:7002",
            ),
            ("ACME_SECRET", "0123456789abcdef0123456789abcdef"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let text = MINIMAL.replace(
            "auth = { kind = \"none\" }",
            "auth = { kind = \"jwt\", secret_env = \"ACME_SECRET\" }",
        );
        let c = Config::parse(&text, &env).unwrap();
        assert_eq!(c.tenants["acme"].limits.max_sessions, 42);
        assert_eq!(c.upstream.handshake_timeout, Duration::from_millis(750));
        assert_eq!(
            c.identity.sources,
            vec![IdentitySource::Header, IdentitySource::Path]
        );
        assert_eq!(c.tenants["acme"].auth.kind(), "jwt");
        assert_eq!(c.upstream.groups["primary"].endpoints.len(), 2);
    }

    #[test]
    fn endpoints_parse_with_prefix_and_default_ports() {
        let e = parse_endpoint("wss://edge.example.com/api/v2/?org=1").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, 443);
        assert_eq!(e.path_prefix, "/api/v2");
        assert_eq!(e.query, "org=1");
        let e = parse_endpoint("ws://[::1]:7001").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.path_prefix, "");
        assert!(parse_endpoint("http://x").is_err());
        assert!(parse_endpoint("ws://user:pw@x").is_err());
    }

    #[test]
    fn max_pending_per_ip_defaults_to_32_and_refuses_0() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.protection.max_pending_per_ip, DEFAULT_MAX_PENDING_PER_IP);
        assert_eq!(c.protection.max_pending_per_ip, 32);
        let keys = invalid_keys(&format!("[protection]\nmax_pending_per_ip = 0\n{MINIMAL}"));
        assert_eq!(keys, vec!["protection.max_pending_per_ip"]);
        // Above the global cap it cannot bind, and is accepted (`check-config` says so):
        // a reload that lowers only the global cap must not be refused for it.
        let c = parse(&format!(
            "[protection]\nmax_pending_handshakes = 2\nmax_pending_per_ip = 40\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.protection.max_pending_per_ip, 40);
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let auth = Auth::Jwt {
            secret: b"super-secret-value".to_vec(),
            origin: "env X".into(),
        };
        assert!(!format!("{auth:?}").contains("super-secret"));
    }
}
