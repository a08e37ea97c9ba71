//! Step 4 of the flow, admission across replicas: the heartbeat, the release flusher and the notice listener each replica runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::link::{int, items, text};
use super::{scripts, Shared};
use crate::admission::capacity::{BackendError, BACKOFF};

/// How often a replica whose breaker is open asks Redis again (or `heartbeat`, if
/// shorter).
const PROBE: Duration = Duration::from_secs(1);

/// Starts the heartbeat, the flusher and the listener of `shared`.
pub(super) fn spawn(shared: &Arc<Shared>) {
    tokio::spawn(heartbeats(shared.clone()));
    tokio::spawn(flusher(shared.clone()));
    tokio::spawn(listener(shared.clone()));
}

/// Until `shared` stops, or `d` passes.
async fn pause(shared: &Shared, d: Duration) -> bool {
    let stopped = shared.stopped.notified();
    if shared.stopping.load(Ordering::Acquire) {
        return false;
    }
    tokio::select! {
        () = stopped => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn heartbeats(shared: Arc<Shared>) {
    while !shared.stopping.load(Ordering::Acquire) {
        if let Err(e) = beat(&shared).await {
            tracing::debug!(error = %e, "cluster: heartbeat failed");
        }
        shared.beaten.notify_waiters();
        let period = if shared.link.is_open() {
            shared.heartbeat.min(PROBE)
        } else {
            shared.heartbeat
        };
        let stopped = shared.stopped.notified();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            () = stopped => return,
            () = tokio::time::sleep(period) => {}
            () = shared.beat_now.notified() => {}
        }
    }
}

/// Renews this replica's lease and republishes all its counts; learns the replica
/// set, the epoch and each scope's cluster-wide count; closes the breaker.
async fn beat(shared: &Arc<Shared>) -> Result<(), BackendError> {
    let (_, mut manager) = match shared.link.connect().await {
        Ok(c) => c,
        Err(e) => {
            shared.link.connect_failed(&e);
            return Err(e);
        }
    };
    let scopes = shared.scopes();
    let mut invocation = scripts::HEARTBEAT.prepare_invoke();
    invocation
        .key("sluice:replicas")
        .key("sluice:epoch")
        .key("sluice:owners")
        .arg(&shared.replica_id)
        .arg(shared.lease_ttl.as_micros() as i64)
        .arg(u8::from(shared.owned.load(Ordering::Acquire)))
        .arg(format!(
            "{}-{:08x}",
            shared.replica_id,
            rand::random::<u32>()
        ))
        .arg(&shared.incarnation);
    for scope in &scopes {
        let (count, version, asking) = scope.to_publish();
        invocation
            .arg(scope.prefix())
            .arg(count)
            .arg(version)
            .arg(scope.incarnation())
            .arg(u8::from(scope.is_waiting()))
            .arg(u8::from(asking));
    }
    let sent = Instant::now();
    let reply = shared.link.call(&invocation, &mut manager, false).await?;
    let received = Instant::now();
    let reply = items(&reply);
    shared.observe_clock(int(reply.first()), sent, received);
    let epoch = text(reply.get(1));
    if epoch == "conflict" {
        let error = format!(
            "replica_id {:?} was taken by another live sluice (incarnation {}): give each replica its own replica_id; this one admits nothing new until the id is free again (lease_ttl after the other stops)",
            shared.replica_id,
            text(reply.get(2))
        );
        if !shared.conflict.swap(true, Ordering::AcqRel) {
            shared.wake_all();
        }
        tracing::error!("cluster: {error}");
        return Err(BackendError(error.into()));
    }
    shared.owned.store(true, Ordering::Release);
    if shared.conflict.swap(false, Ordering::AcqRel) {
        tracing::info!(replica = %shared.replica_id, "cluster: the replica id is this replica's again");
        shared.wake_all();
    }
    let known = shared.epoch.load_full();
    let new_epoch = *known != epoch;
    let live: Vec<String> = reply
        .get(2)
        .map(items)
        .unwrap_or_default()
        .iter()
        .map(|v| text(Some(v)))
        .collect();
    if new_epoch && !known.is_empty() {
        // The Redis this replica published to is gone (restarted empty, flushed,
        // failed over without its data): until every replica has heartbeated into the
        // new one, its counts are not whole. Decide on the share meanwhile, of the
        // replica set seen before (the new one holds only those that republished).
        shared.settle_for(shared.heartbeat + 2 * shared.redis_timeout);
        tracing::warn!(
            "cluster: Redis lost its state (restarted or flushed); counts republished, deciding on this replica's share for one heartbeat"
        );
    }
    shared.epoch.store(Arc::new(epoch));
    if !shared.settling() || live.len() as u32 >= shared.live_replicas() {
        shared.set_replicas(live);
    }
    let totals = reply.get(3).map(items).unwrap_or_default();
    for (scope, total) in scopes.iter().zip(totals) {
        scope.set_cluster_live(int(Some(total)));
    }
    if shared.link.close() {
        tracing::info!(
            replicas = shared.live_replicas(),
            "cluster: Redis answers again; this replica's counts are republished, deciding on Redis"
        );
        shared.wake_all();
        shared.flush.notify_one();
    } else if new_epoch {
        shared.wake_all();
    }
    // Scopes nobody holds any more (a removed tenant whose last session ended), once
    // their zero is published (by this heartbeat).
    let published: std::collections::HashSet<String> = scopes
        .iter()
        .filter(|s| s.snapshot().0 == 0)
        .map(|s| s.prefix().to_owned())
        .collect();
    drop(scopes);
    shared.lock_scopes().retain(|_, scope| {
        Arc::strong_count(scope) > 1 || !published.contains(scope.prefix()) || scope.is_dirty()
    });
    Ok(())
}

/// Publishes counts changed by releases (coalesced per scope), and tells waiting
/// replicas.
async fn flusher(shared: Arc<Shared>) {
    loop {
        let notified = shared.flush.notified();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if !shared.link.is_open() {
            let dirty: Vec<_> = shared
                .scopes()
                .into_iter()
                .filter(|s| s.take_dirty())
                .collect();
            let publishes = dirty.iter().map(|scope| {
                let (count, version, asking) = scope.to_publish();
                let shared = &shared;
                async move {
                    let mut invocation = scripts::PUBLISH.prepare_invoke();
                    invocation
                        .key(format!("{}:n", scope.prefix()))
                        .key(format!("{}:v", scope.prefix()))
                        .key(format!("{}:w", scope.prefix()))
                        .key(format!("{}:a", scope.prefix()))
                        .arg(&shared.replica_id)
                        .arg(count)
                        .arg(scope.incarnation())
                        .arg(version)
                        .arg(scope.channel())
                        .arg(u8::from(asking));
                    if shared.link.run(&invocation, false).await.is_err() {
                        scope.mark_dirty();
                        return false;
                    }
                    true
                }
            });
            let results = futures_util::future::join_all(publishes).await;
            if results.iter().any(|ok| !ok) && !pause(&shared, BACKOFF).await {
                return;
            }
        }
        let stopped = shared.stopped.notified();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            () = notified => {}
            () = stopped => return,
        }
    }
}

/// Listens for capacity notices (`sluice:freed:*`) and wakes the pumps waiting on that
/// scope; after each (re)subscription, wakes them all (notices may have been missed).
async fn listener(shared: Arc<Shared>) {
    while !shared.stopping.load(Ordering::Acquire) {
        if let Err(e) = listen(&shared).await {
            tracing::debug!(error = %e, "cluster: notice listener");
        }
        if !pause(&shared, Duration::from_millis(500)).await {
            return;
        }
    }
}

async fn listen(shared: &Arc<Shared>) -> Result<(), BackendError> {
    let Some((client, _)) = shared.link.current() else {
        return Ok(());
    };
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| BackendError("pub/sub connect timed out".into()))?
        .map_err(|e| BackendError(format!("pub/sub: {e}").into()))?;
    pubsub
        .psubscribe("sluice:freed:*")
        .await
        .map_err(|e| BackendError(format!("pub/sub: {e}").into()))?;
    shared.wake_all();
    let mut messages = pubsub.on_message();
    loop {
        let stopped = shared.stopped.notified();
        if shared.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let msg = tokio::select! {
            msg = messages.next() => msg,
            () = stopped => return Ok(()),
            // A breaker that opened dropped the connection this listened through.
            () = tokio::time::sleep(PROBE), if shared.link.current().is_none() => None,
        };
        let Some(msg) = msg else {
            return Ok(());
        };
        let key = msg
            .get_channel_name()
            .strip_prefix("sluice:freed:")
            .unwrap_or_default()
            .to_owned();
        let scope = shared.lock_scopes().get(&key).cloned();
        if let Some(scope) = scope {
            scope.wake();
        }
    }
}

/// This replica leaves: the tasks end; its lease and counts go from Redis at once.
pub(super) async fn leave(shared: &Arc<Shared>) {
    shared.stopping.store(true, Ordering::Release);
    shared.stopped.notify_waiters();
    if shared.link.is_open() {
        return;
    }
    let mut invocation = scripts::LEAVE.prepare_invoke();
    invocation.key("sluice:replicas").arg(&shared.replica_id);
    for scope in shared.scopes() {
        invocation.arg(scope.prefix()).arg(scope.channel());
    }
    if let Err(e) = shared.link.run(&invocation, false).await {
        tracing::warn!(error = %e, "cluster: could not leave; the others get this replica's slots back when its lease ends");
    }
}
