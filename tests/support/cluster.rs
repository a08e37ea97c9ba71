//! Support for `[cluster]` tests: a replica's config on a test's own `redis-server`,
//! one connect's outcome, and a sluice run as its own process (to SIGKILL).

use super::redis::Redis;
use super::{config, connect, quoted, reason, Client, ConfigBuilder, Edge, TenantSpec};

/// Heartbeat and lease short enough for a test: a killed replica's slots are back
/// within a second.
pub const HEARTBEAT: &str = "\"150ms\"";
/// See [`HEARTBEAT`].
pub const LEASE: &str = "\"900ms\"";

/// A replica's config: `[cluster]` on `redis` as replica `id` (heartbeat 150 ms, lease
/// 900 ms, Redis timeout 50 ms, failure policy `policy`), in front of `edge`, with the
/// tenant `spec`.
pub fn replica(
    edge: &Edge,
    redis: &Redis,
    id: &str,
    spec: TenantSpec,
    policy: &str,
) -> ConfigBuilder {
    config()
        .upstream(&edge.url(false))
        .tenant(spec)
        .set("cluster", "redis", &quoted(&redis.url()))
        .set("cluster", "replica_id", &quoted(id))
        .set("cluster", "heartbeat", HEARTBEAT)
        .set("cluster", "lease_ttl", LEASE)
        .set("cluster", "redis_timeout", "\"50ms\"")
        .set("cluster", "on_redis_failure", &quoted(policy))
}

/// What one connect got: `Ok(session)` or the refusal's reason.
pub type Got = Result<Client, String>;

/// One connect to `url`, whatever its outcome.
pub async fn try_connect(url: String) -> Got {
    match connect(&url, &[]).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(reason(&resp).to_owned()),
        Err(e) => Err(format!("error: {e}")),
    }
}

/// A child process killed when the test ends, however it ends (a failed assertion
/// must not leave a replica running).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
