//! Wiring: process signals — SIGTERM and SIGINT drain and stop, SIGHUP reloads.
//!
//! Process signals: SIGTERM and SIGINT (Ctrl-C) drain and stop the proxy; SIGHUP
//! reloads its config.

/// Completes on the first SIGTERM or SIGINT.
pub async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops sluice");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the config ([`crate::reload::from_file`]) on every SIGHUP, forever.
pub async fn reload_on_hangup(runtime: std::sync::Arc<crate::runtime::Runtime>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            let s = runtime.clone();
            // Errors are logged and counted by the reload itself.
            let _ = tokio::task::spawn_blocking(move || crate::reload::from_file(&s)).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = runtime;
        std::future::pending::<()>().await;
    }
}
