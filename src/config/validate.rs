//! Beside the flow (DESIGN.md, "Configuration"): validation, each refusal with key and reason.
//!
//! [`Validator`] collects every invalid key instead of stopping at the first; the
//! `[upstream]` section, the tenants' limits and auth, and `[cluster]` are checked in
//! `upstream`, `tenants` and `cluster` below.

mod cluster;
mod tenants;
mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use super::file::{self, FileConfig};
use super::{
    Accept, Admin, Auth, Config, ConfigError, EdgeLimits, Group, Identity, IdentitySource, Invalid,
    Listen, Protection, Shutdown, Tenant, TlsFiles, UnknownTenant,
};
use super::{
    DEFAULT_ADMIN_ADDRESS, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_HELD_BYTES,
    DEFAULT_HELD_MESSAGES, DEFAULT_LISTEN_ADDRESS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_PENDING_HANDSHAKES, DEFAULT_MAX_PENDING_PER_IP,
    DEFAULT_PREAUTH_BURST_PER_IP, DEFAULT_PREAUTH_RATE_PER_IP, DEFAULT_TENANT,
    DEFAULT_TENANT_HEADER, MAX_MAX_HEADER_BYTES, MAX_MAX_MESSAGE_BYTES, MAX_WORKERS,
    MIN_MAX_HEADER_BYTES,
};

pub use self::cluster::redact_redis_url;
pub use self::tenants::check_tenant_name;
#[cfg(test)]
pub(super) use self::upstream::parse_endpoint;

// === impl Config ===

impl Config {
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
            workers: file.listen.workers.map(|n| v.workers(n)),
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

        let cluster = file.cluster.and_then(|c| v.cluster(c));

        let upstream = v.upstream(file.upstream);
        let defaults = v.limits("defaults", &file.defaults, None);
        let clustered = cluster.is_some();
        v.shadow_alone("defaults", file.defaults.enforce, clustered);

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
            v.shadow_alone(&prefix, tenant.enforce, clustered);
            let calls = v.calls(&prefix, tenant, &limits);
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
                    calls,
                }),
            );
        }

        let default_tenant = (identity.unknown == UnknownTenant::Default).then(|| {
            Arc::new(Tenant {
                name: DEFAULT_TENANT.to_owned(),
                limits: defaults.clone(),
                group: upstream.default(),
                auth: Auth::None,
                calls: None,
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
                cluster,
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

    /// `listen.workers`: 1 to [`MAX_WORKERS`].
    fn workers(&mut self, n: i64) -> u32 {
        match u32::try_from(n) {
            Ok(n @ 1..=MAX_WORKERS) => n,
            _ => {
                self.fail(
                    "listen.workers",
                    format!("must be 1 to {MAX_WORKERS} (threads serving the proxy port; leave it out for one per core), got {n}"),
                );
                1
            }
        }
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
}
