//! Beside the flow (DESIGN.md, "Configuration"): the value of each key a file leaves out.
//!
//! Re-exported from [`crate::config`], so `crate::config::DEFAULT_…` names them.

use std::time::Duration;

use super::{Accept, Limits, OnRedisFailure, QueueMode};

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
/// `invite_queue_depth` of a tenant with call limits.
pub const DEFAULT_INVITE_QUEUE_DEPTH: u32 = 100;
/// `invite_queue_timeout`: after sluice's `100 Trying` a UA waits indefinitely, so this
/// is the only limit on a held INVITE.
pub const DEFAULT_INVITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(8);
/// `call_idle_timeout`: a dialog silent this long stops counting.
pub const DEFAULT_CALL_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// Largest accepted `accept.max_message_bytes`.
pub const MAX_MAX_MESSAGE_BYTES: u32 = 64 << 20;
/// Default bytes of messages an `accept`-mode client may send while queued.
pub const DEFAULT_HELD_BYTES: u32 = 64 << 10;
/// Default number of messages an `accept`-mode client may send while queued.
pub const DEFAULT_HELD_MESSAGES: u32 = 64;
/// Tenant label used for unknown tenants when `tenant_identity.unknown = "default"`.
pub const DEFAULT_TENANT: &str = "_default";
/// Longest tenant name.
pub const MAX_TENANT_NAME: usize = 64;
/// How often a replica renews its live counts in Redis (`cluster.heartbeat`).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest accepted `cluster.heartbeat`.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a silent replica keeps its slots (`cluster.lease_ttl`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// One Redis decision's budget (`cluster.redis_timeout`).
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// What a replica admits while Redis is unreachable (`cluster.on_redis_failure`).
pub const DEFAULT_ON_REDIS_FAILURE: OnRedisFailure = OnRedisFailure::LocalShare;
/// Longest `cluster.replica_id`.
pub const MAX_REPLICA_ID: usize = 64;

/// The default `cluster.replica_id`: `<host name>-<pid>`, the host name read from
/// `/proc/sys/kernel/hostname` (`sluice` when it cannot be read), with any character
/// a replica id may not hold replaced by `-` and shortened so the whole fits
/// [`MAX_REPLICA_ID`].
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    replica_id_from(host.trim(), std::process::id())
}

/// [`default_replica_id`] for a given host name and pid.
pub(super) fn replica_id_from(host: &str, pid: u32) -> String {
    let pid = format!("-{pid}");
    let host: String = if host.is_empty() { "sluice" } else { host }
        .chars()
        .map(|c| if is_replica_id_char(c) { c } else { '-' })
        .take(MAX_REPLICA_ID - pid.len())
        .collect();
    format!("{host}{pid}")
}

/// Whether `c` may appear in a `cluster.replica_id` (`A-Z a-z 0-9 . _ : -`): it is
/// used in Redis key fields and metric labels.
pub(super) fn is_replica_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// The built-in per-tenant limits, used where neither the tenant nor `[defaults]` sets
/// a key.
pub(super) fn builtin_limits() -> Limits {
    Limits {
        max_sessions: DEFAULT_MAX_SESSIONS,
        handshake_rate: DEFAULT_HANDSHAKE_RATE,
        handshake_burst: DEFAULT_HANDSHAKE_BURST,
        queue_depth: DEFAULT_QUEUE_DEPTH,
        queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        queue_mode: QueueMode::Hold,
        subprotocols: vec!["sip".to_owned()],
        weight: DEFAULT_WEIGHT,
        enforce: true,
    }
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

/// Most runtimes (threads) `listen.workers` may ask for.
pub const MAX_WORKERS: u32 = 1024;
