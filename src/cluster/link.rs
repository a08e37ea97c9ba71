//! Step 4 of the flow, admission across replicas: the connection to Redis, each call's time budget, and the breaker.
//!
//! One [`ConnectionManager`] (multiplexed: every decision of this replica shares one
//! TCP connection, pipelined) to the Redis URL, or to the master the Sentinels name.
//! Every call is bounded by `redis_timeout`; [`FAILURES_TO_OPEN`] failures in a row open
//! the breaker, which only a successful heartbeat closes again (after republishing this
//! replica's counts, see [`super::tasks`]). While open, nothing is sent on the decision
//! path, and the connection is rebuilt by the next heartbeat (with Sentinels: the master
//! is asked for again, so a failover is followed).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Value};
use tokio::time::Instant;

use crate::admission::capacity::BackendError;
use crate::config::RedisTarget;
use crate::metrics::ClusterMetrics;

/// Failed calls in a row that open the breaker.
pub(super) const FAILURES_TO_OPEN: u32 = 3;

/// The connection to Redis and the breaker in front of it.
#[derive(Debug)]
pub(super) struct Link {
    target: RedisTarget,
    timeout: Duration,
    /// Time to open a new connection (a connect also needs a TCP handshake; never less
    /// than a second).
    connect_timeout: Duration,
    conn: ArcSwapOption<(Client, ConnectionManager)>,
    open: AtomicBool,
    failures: AtomicU32,
    metrics: Option<ClusterMetrics>,
}

impl Link {
    pub(super) fn new(
        target: RedisTarget,
        timeout: Duration,
        metrics: Option<ClusterMetrics>,
    ) -> Self {
        if let Some(m) = &metrics {
            m.redis_up.set(0);
        }
        Self {
            target,
            timeout,
            connect_timeout: timeout.max(Duration::from_secs(1)),
            conn: ArcSwapOption::empty(),
            // Open until the first heartbeat has published this replica.
            open: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            metrics,
        }
    }

    /// Whether the breaker is open (decisions are made without Redis).
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Closes the breaker: a heartbeat went through. Returns whether it was open.
    pub(super) fn close(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.redis_up.set(1);
        }
        self.open.swap(false, Ordering::AcqRel)
    }

    /// Counts a failed call; returns true when this one opened the breaker.
    fn failed(&self, why: &str) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= FAILURES_TO_OPEN && !self.open.swap(true, Ordering::AcqRel) {
            if let Some(m) = &self.metrics {
                m.redis_up.set(0);
            }
            // A fresh connection next time (with Sentinels, to the master named now).
            self.conn.store(None);
            tracing::warn!(
                failures = n,
                error = why,
                "cluster: Redis unreachable, breaker open: deciding on the failure policy until it answers again"
            );
            return true;
        }
        false
    }

    /// The open connection, if any.
    pub(super) fn current(&self) -> Option<(Client, ConnectionManager)> {
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// A connect failed: counts toward the breaker like a failed call.
    pub(super) fn connect_failed(&self, e: &BackendError) {
        self.failed(&e.0);
    }

    /// The connection, opened when there is none (by heartbeats only: the decision
    /// path never waits for a connect).
    pub(super) async fn connect(&self) -> Result<(Client, ConnectionManager), BackendError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let opened = tokio::time::timeout(self.connect_timeout, self.open_new())
            .await
            .map_err(|_| BackendError("connecting to Redis timed out".into()))?
            .map_err(|e| BackendError(format!("connecting to Redis: {e}").into()))?;
        self.conn.store(Some(std::sync::Arc::new(opened.clone())));
        Ok(opened)
    }

    async fn open_new(&self) -> Result<(Client, ConnectionManager), RedisError> {
        let client = match &self.target {
            RedisTarget::Url(url) => Client::open(url.as_str())?,
            RedisTarget::Sentinel { sentinels, master } => {
                let mut sentinel = redis::sentinel::SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    None,
                    redis::sentinel::SentinelServerType::Master,
                )?;
                sentinel.async_get_client().await?
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok((client, manager))
    }

    /// Runs `script` on the open connection within `redis_timeout` (a decision or a
    /// release). Fails at once, sending nothing, while there is no connection.
    pub(super) async fn run(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        decision: bool,
    ) -> Result<Value, BackendError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(BackendError("no connection to Redis".into()));
        };
        let mut manager = conn.1.clone();
        self.call(invocation, &mut manager, decision).await
    }

    /// Runs `script` on `manager` within `redis_timeout`, accounting for the breaker.
    pub(super) async fn call(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        manager: &mut ConnectionManager,
        decision: bool,
    ) -> Result<Value, BackendError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, invocation.invoke_async(manager)).await;
        if decision {
            if let Some(m) = &self.metrics {
                m.decision.observe(started.elapsed().as_secs_f64());
            }
        }
        let error = match result {
            Ok(Ok(value)) => {
                self.failures.store(0, Ordering::Relaxed);
                return Ok(value);
            }
            Ok(Err(e)) => format!("Redis: {e}"),
            Err(_) => format!("Redis did not answer within {:?}", self.timeout),
        };
        self.failed(&error);
        Err(BackendError(error.into()))
    }
}

/// An integer of a script's reply.
pub(super) fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// A string of a script's reply.
pub(super) fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

/// The items of an array reply (empty for anything else).
pub(super) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}
