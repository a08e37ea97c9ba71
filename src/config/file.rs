//! Beside the flow (DESIGN.md, "Configuration"): the config file as written, raw serde.
//!
//! Raw serde structs, every key optional where DESIGN.md gives it a default.
//! [`super::Config::from_file_config`] turns this into the validated [`super::Config`].
//!
//! Each field is the TOML key of the same name; the README's configuration reference
//! documents them, so they carry no doc comments of their own here.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole file. Unknown keys anywhere are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: ListenFile,
    pub admin: AdminFile,
    pub tenant_identity: TenantIdentityFile,
    pub edge: Option<EdgeFile>,
    pub cluster: Option<ClusterFile>,
    pub upstream: UpstreamFile,
    pub defaults: LimitsFile,
    pub protection: ProtectionFile,
    pub shutdown: ShutdownFile,
    pub accept: AcceptFile,
    pub tenants: BTreeMap<String, TenantFile>,
}

impl FileConfig {
    /// Makes every relative file path relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut() {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        fix(&mut self.listen.tls_cert);
        fix(&mut self.listen.tls_key);
        fix(&mut self.upstream.ca_file);
        for tenant in self.tenants.values_mut() {
            if let Some(auth) = tenant.auth.as_mut() {
                fix(&mut auth.secret_file);
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenFile {
    pub address: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    pub workers: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub address: Option<String>,
    pub allow_public: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantIdentityFile {
    pub sources: Option<Vec<String>>,
    pub header: Option<String>,
    pub host_suffix: Option<String>,
    pub unknown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeFile {
    pub max_sessions: Option<i64>,
    pub handshake_rate: Option<f64>,
    pub handshake_burst: Option<i64>,
}

/// `[cluster]` (DESIGN.md, "Scale-out").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterFile {
    pub redis: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub master: Option<String>,
    pub replica_id: Option<String>,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Option<Duration>,
    pub on_redis_failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    pub default_group: Option<String>,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub retry_budget: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub max_pause: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub slow_handshake: Option<Duration>,
    pub adaptive: Option<bool>,
    pub adaptive_factor: Option<f64>,
    pub adaptive_floor: Option<f64>,
    pub ca_file: Option<PathBuf>,
    pub groups: BTreeMap<String, GroupFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupFile {
    pub endpoints: Vec<String>,
}

/// Limits shared by `[defaults]` and each `[tenants.NAME]` (which adds
/// `upstream_group` and `auth`; serde's `flatten` cannot be combined with
/// `deny_unknown_fields`, so [`TenantFile`] repeats these keys).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub max_sessions: Option<i64>,
    pub handshake_rate: Option<f64>,
    pub handshake_burst: Option<i64>,
    pub queue_depth: Option<i64>,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Option<Duration>,
    pub queue_mode: Option<String>,
    pub subprotocols: Option<Vec<String>>,
    pub weight: Option<i64>,
    pub enforce: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantFile {
    pub max_sessions: Option<i64>,
    pub handshake_rate: Option<f64>,
    pub handshake_burst: Option<i64>,
    pub queue_depth: Option<i64>,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Option<Duration>,
    pub queue_mode: Option<String>,
    pub subprotocols: Option<Vec<String>>,
    pub weight: Option<i64>,
    pub enforce: Option<bool>,
    pub upstream_group: Option<String>,
    pub auth: Option<AuthFile>,
    pub max_calls: Option<i64>,
    pub call_rate: Option<f64>,
    pub call_burst: Option<i64>,
    pub invite_queue_depth: Option<i64>,
    #[serde(with = "humantime_serde")]
    pub invite_queue_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub call_idle_timeout: Option<Duration>,
}

impl TenantFile {
    /// The limit keys of this tenant, in the shape of `[defaults]`.
    pub fn limits(&self) -> LimitsFile {
        LimitsFile {
            max_sessions: self.max_sessions,
            handshake_rate: self.handshake_rate,
            handshake_burst: self.handshake_burst,
            queue_depth: self.queue_depth,
            queue_timeout: self.queue_timeout,
            queue_mode: self.queue_mode.clone(),
            subprotocols: self.subprotocols.clone(),
            weight: self.weight,
            enforce: self.enforce,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFile {
    pub kind: Option<String>,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub key_sha256: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectionFile {
    pub preauth_rate_per_ip: Option<f64>,
    pub preauth_burst_per_ip: Option<i64>,
    pub max_pending_handshakes: Option<i64>,
    pub max_pending_per_ip: Option<i64>,
    pub max_header_bytes: Option<i64>,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub max_session: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownFile {
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcceptFile {
    pub max_message_bytes: Option<i64>,
    pub held_bytes: Option<i64>,
    pub held_messages: Option<i64>,
}
