//! Beside the flow (DESIGN.md, "Scale-out"): validating `[cluster]`.

use std::time::Duration;

use redis::IntoConnectionInfo;

use super::super::defaults::{default_replica_id, is_replica_id_char};
use super::super::file::ClusterFile;
use super::super::{
    Cluster, OnRedisFailure, RedisTarget, DEFAULT_HEARTBEAT, DEFAULT_LEASE_TTL,
    DEFAULT_ON_REDIS_FAILURE, DEFAULT_REDIS_TIMEOUT, MAX_REPLICA_ID, MIN_HEARTBEAT,
};
use super::Validator;

/// `url` with its password (and a `pass=` query parameter of a Unix-socket URL) shown as
/// `***`, for messages, logs and `check-config`.
pub fn redact_redis_url(url: &str) -> String {
    let Some(mut parsed) = redis::parse_redis_url(url) else {
        // Not a URL sluice would use; still hide whatever precedes an `@`.
        return match (url.split_once("://"), url.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
            _ => url.to_owned(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(k, _)| k == "pass") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pass" { "***".into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

// === impl Validator ===

impl Validator {
    /// `[cluster]`; `None` when the Redis target is invalid (and reported).
    pub(super) fn cluster(&mut self, file: ClusterFile) -> Option<Cluster> {
        let redis = self.redis_target(&file);

        let replica_id = file.replica_id.unwrap_or_else(default_replica_id);
        if replica_id.is_empty()
            || replica_id.len() > MAX_REPLICA_ID
            || !replica_id.chars().all(is_replica_id_char)
        {
            self.fail(
                "cluster.replica_id",
                format!(
                    "{replica_id:?} must be 1 to {MAX_REPLICA_ID} of A-Z a-z 0-9 . _ : - (it is used in Redis key fields and metric labels)"
                ),
            );
        }

        let heartbeat = file.heartbeat.unwrap_or(DEFAULT_HEARTBEAT);
        let heartbeat_ok = heartbeat >= MIN_HEARTBEAT;
        if !heartbeat_ok {
            self.fail(
                "cluster.heartbeat",
                format!(
                    "{} is shorter than {}: every replica writes to Redis once per heartbeat and tenant",
                    show(heartbeat),
                    show(MIN_HEARTBEAT)
                ),
            );
        }

        let lease_ttl = file.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        let default = if file.lease_ttl.is_none() {
            " (the default)"
        } else {
            ""
        };
        if heartbeat_ok && lease_ttl < heartbeat * 2 {
            self.fail(
                "cluster.lease_ttl",
                format!(
                    "{}{default} is less than twice cluster.heartbeat ({}): a replica must miss two heartbeats before its slots are given back; set it to at least {}",
                    show(lease_ttl),
                    show(heartbeat),
                    show(heartbeat * 2)
                ),
            );
        } else if lease_ttl.is_zero() {
            self.fail("cluster.lease_ttl", "must be longer than 0");
        }

        let redis_timeout = file.redis_timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT);
        if redis_timeout.is_zero() {
            self.fail("cluster.redis_timeout", "must be longer than 0");
        } else if heartbeat_ok && redis_timeout >= heartbeat {
            self.fail(
                "cluster.redis_timeout",
                format!(
                    "{} is not shorter than cluster.heartbeat ({}): one decision's budget must fit well inside a heartbeat",
                    show(redis_timeout),
                    show(heartbeat)
                ),
            );
        }

        let on_redis_failure = match file.on_redis_failure.as_deref() {
            None => DEFAULT_ON_REDIS_FAILURE,
            Some("local-share") => OnRedisFailure::LocalShare,
            Some("open") => OnRedisFailure::Open,
            Some("closed") => OnRedisFailure::Closed,
            Some(other) => {
                self.fail(
                    "cluster.on_redis_failure",
                    format!("{other:?} is not one of \"local-share\", \"open\", \"closed\""),
                );
                DEFAULT_ON_REDIS_FAILURE
            }
        };

        Some(Cluster {
            redis: redis?,
            replica_id,
            heartbeat,
            lease_ttl,
            redis_timeout,
            on_redis_failure,
        })
    }

    /// `redis`, or `sentinels` with `master`: exactly one of them.
    fn redis_target(&mut self, file: &ClusterFile) -> Option<RedisTarget> {
        match (&file.redis, &file.sentinels) {
            (Some(_), Some(_)) => {
                self.fail(
                    "cluster",
                    "set one of cluster.redis and cluster.sentinels, not both",
                );
                None
            }
            (None, None) => {
                self.fail(
                    "cluster",
                    "needs cluster.redis (e.g. \"redis://127.0.0.1:6379/0\") or cluster.sentinels with cluster.master",
                );
                None
            }
            (Some(url), None) => {
                if file.master.is_some() {
                    self.fail(
                        "cluster.master",
                        "only used with cluster.sentinels; cluster.redis names the server itself",
                    );
                }
                match check_redis_url(url, false) {
                    Ok(()) => Some(RedisTarget::Url(url.clone())),
                    Err(reason) => {
                        self.fail("cluster.redis", reason);
                        None
                    }
                }
            }
            (None, Some(list)) => {
                let mut ok = true;
                if list.is_empty() {
                    self.fail(
                        "cluster.sentinels",
                        "must list at least one Sentinel as \"host:port\"",
                    );
                    ok = false;
                }
                let mut sentinels: Vec<String> = Vec::new();
                for (i, entry) in list.iter().enumerate() {
                    let key = format!("cluster.sentinels[{i}]");
                    match sentinel_url(entry) {
                        Ok(url) if sentinels.contains(&url) => {
                            self.fail(
                                &key,
                                format!("{:?} is listed twice", redact_redis_url(entry)),
                            );
                            ok = false;
                        }
                        Ok(url) => sentinels.push(url),
                        Err(reason) => {
                            self.fail(&key, reason);
                            ok = false;
                        }
                    }
                }
                let master = match file.master.as_deref().map(str::trim) {
                    None | Some("") => {
                        self.fail(
                            "cluster.master",
                            "required with cluster.sentinels: the name of the master the Sentinels monitor",
                        );
                        None
                    }
                    Some(m) if m.contains(char::is_whitespace) => {
                        self.fail(
                            "cluster.master",
                            format!("{m:?} is not a Sentinel master name (no spaces)"),
                        );
                        None
                    }
                    Some(m) => Some(m.to_owned()),
                };
                match (ok, master) {
                    (true, Some(master)) => Some(RedisTarget::Sentinel { sentinels, master }),
                    _ => None,
                }
            }
        }
    }
}

/// Checks a Redis URL as the redis crate will read it: `redis://`, `redis+unix://` or
/// `unix://` (only `redis://` for a Sentinel, `tcp_only`).
fn check_redis_url(url: &str, tcp_only: bool) -> Result<(), String> {
    let shown = redact_redis_url(url);
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "redis" => {}
        "redis+unix" | "unix" if !tcp_only => {}
        "rediss" | "valkeys" => {
            return Err(format!(
                "{shown:?}: TLS to Redis is not compiled into sluice; use redis:// on a trusted network (or through a TLS tunnel such as stunnel)"
            ));
        }
        _ if tcp_only => {
            return Err(format!(
                "{shown:?} is not \"host:port\" or a redis://host:port URL"
            ));
        }
        _ => {
            return Err(format!(
                "{shown:?} must start with redis://, redis+unix:// or unix://"
            ));
        }
    }
    match url.into_connection_info() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{shown:?} is not a Redis URL: {}",
            e.to_string().replace(" - InvalidClientConfig", "")
        )),
    }
}

/// A `sentinels` entry as a URL: `host:port` becomes `redis://host:port`; a
/// `redis://` URL is taken as written.
fn sentinel_url(entry: &str) -> Result<String, String> {
    if entry.contains("://") {
        check_redis_url(entry, true)?;
        return Ok(entry.to_owned());
    }
    if entry.is_empty() || entry.contains(['/', '@', '?', '#']) {
        return Err(format!(
            "{:?} is not \"host:port\" (or a redis://host:port URL)",
            redact_redis_url(entry)
        ));
    }
    let url = format!("redis://{entry}");
    if redis::parse_redis_url(&url)
        .and_then(|u| u.port())
        .is_none()
    {
        return Err(format!(
            "{entry:?} is not \"host:port\": a Sentinel needs its port (usually 26379)"
        ));
    }
    check_redis_url(&url, true)?;
    Ok(url)
}
