//! Listeners: an own accept loop (so that hyper's header-read timeout has a timer), and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::telemetry::metrics::Metrics;

/// The server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr} ({listener} listener): {source}; is another process using the port, or does this user lack the right to bind it?"
    )]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds both listeners and serves until `shutdown` completes, then drains in-flight requests.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
    let bind = |listener: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { listener, addr, source })
    };
    let public = bind("public", config.server.listen).await?;
    let admin = bind("admin", config.server.admin_listen).await?;
    serve(config, public, admin, shutdown).await;
    Ok(())
}

/// Serves on already bound listeners (tests bind port 0 and pass them in).
pub async fn serve(config: Config, public: TcpListener, admin: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let gateway = Arc::new(Gateway::new(config.clone(), metrics.clone()));
    let admin_handler = Arc::new(Admin::new(config.clone(), metrics.clone(), gateway.sso().clone()));
    let loaders = if config.sso.enabled {
        gateway.sso().providers.spawn_loaders()
    } else {
        Vec::new()
    };
    for (name, listener) in [("public", &public), ("admin", &admin)] {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listener = name, address = %addr, "listening");
        }
    }

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .keep_alive(config.server.keep_alive)
        .max_buf_size(config.server.max_header_bytes);
    builder.http2().timer(TokioTimer::new());

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_task = {
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = admin.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = admin_handler.clone();
                        let service = service_fn(move |req| handler.clone().handle(req));
                        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, "admin connection ended with an error");
                            }
                        });
                    }
                    _ = stop.changed() => break,
                }
            }
        })
    };

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = public.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                metrics.connection_accepted();
                let gateway = gateway.clone();
                let service = service_fn(move |req| gateway.clone().handle(req, peer));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(public);
    let _ = stop_tx.send(true);
    let grace = config.server.shutdown_grace;
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        "shutting down: no new connections; waiting for requests in flight"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed; bye"),
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
    let _ = admin_task.await;
    for loader in loaders {
        loader.abort();
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "signal received"),
        _ = term => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}
