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
/// With `config_path`, SIGHUP reloads the configuration from it.
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let bind = |listener: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { listener, addr, source })
    };
    let public = bind("public", config.server.listen).await?;
    let admin = bind("admin", config.server.admin_listen).await?;
    serve(config, public, admin, config_path, shutdown).await;
    Ok(())
}

/// One configuration at work: its gateway, admin endpoints and provider loaders.
struct Running {
    config: Arc<Config>,
    gateway: Arc<Gateway>,
    admin: Arc<Admin>,
    loaders: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(config: Config, metrics: Arc<Metrics>) -> Self {
        let config = Arc::new(config);
        let gateway = Arc::new(Gateway::new(config.clone(), metrics.clone()));
        let admin = Arc::new(Admin::new(config.clone(), metrics, gateway.sso().clone()));
        let loaders = if config.sso.enabled {
            gateway.sso().providers.spawn_loaders()
        } else {
            Vec::new()
        };
        Running {
            config,
            gateway,
            admin,
            loaders,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for loader in &self.loaders {
            loader.abort();
        }
    }
}

/// The configuration in force. A reload swaps it whole; a request keeps the gateway it started with.
struct Live(std::sync::RwLock<Arc<Running>>);

impl Live {
    fn current(&self) -> Arc<Running> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, running: Running) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(running);
    }
}

/// Re-reads the configuration: a valid one replaces the running one (after its providers have loaded, at most
/// 10 s), an invalid one is refused with every problem logged. One audit event either way; never secret values.
async fn reload(live: &Live, path: &std::path::Path, metrics: &Arc<Metrics>) {
    let new = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            crate::telemetry::metrics::count("bbsso_config_reloads_total", &[("outcome", "refused")]);
            tracing::error!(target: "audit", event = "config_reload_failed", problems = %e, "configuration reload refused; the previous configuration stays in force");
            return;
        }
    };
    let old = live.current();
    let changed = changed_sections(&old.config, &new);
    if new.server.listen != old.config.server.listen || new.server.admin_listen != old.config.server.admin_listen {
        tracing::warn!("listen addresses changed: they take effect only after a restart");
    }
    let running = Running::start(new, metrics.clone());
    if running.config.sso.enabled {
        for _ in 0..100 {
            if running.gateway.sso().providers.not_ready().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    live.replace(running);
    crate::telemetry::metrics::count("bbsso_config_reloads_total", &[("outcome", "applied")]);
    tracing::info!(target: "audit", event = "config_reloaded", changed = %changed.join(", "), "configuration reloaded");
}

/// Names of the sections that differ (secrets compared, never shown).
fn changed_sections(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let pairs: [(&'static str, String, String); 12] = [
        ("server", format!("{:?}", a.server), format!("{:?}", b.server)),
        ("upstream", format!("{:?}", a.upstream), format!("{:?}", b.upstream)),
        ("identity", format!("{:?}", a.identity), format!("{:?}", b.identity)),
        ("session", format!("{:?}", a.session), format!("{:?}", b.session)),
        ("providers", format!("{:?}", a.providers), format!("{:?}", b.providers)),
        ("mapping", format!("{:?}", a.mapping), format!("{:?}", b.mapping)),
        ("groups", format!("{:?}", a.groups), format!("{:?}", b.groups)),
        ("bitbucket", format!("{:?}", a.bitbucket), format!("{:?}", b.bitbucket)),
        ("sso", format!("{:?}", a.sso), format!("{:?}", b.sso)),
        ("ui", format!("{:?}", a.ui), format!("{:?}", b.ui)),
        ("admin", format!("{:?}", a.admin), format!("{:?}", b.admin)),
        ("log", format!("{:?}", a.log), format!("{:?}", b.log)),
    ];
    for (name, x, y) in pairs {
        if x != y {
            out.push(name);
        }
    }
    let secret = |s: &Option<crate::config::Secret>| s.as_ref().map(|v| v.expose().to_owned());
    let keys = |c: &Config| c.session.keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>();
    let provider_secrets = |c: &Config| c.providers.iter().map(|p| secret(&p.client_secret)).collect::<Vec<_>>();
    if secret(&a.identity.assertion_secret) != secret(&b.identity.assertion_secret)
        || keys(a) != keys(b)
        || provider_secrets(a) != provider_secrets(b)
        || a.bitbucket.as_ref().map(|x| x.admin_password.expose().to_owned())
            != b.bitbucket.as_ref().map(|x| x.admin_password.expose().to_owned())
        || secret(&a.sso.backdoor.key) != secret(&b.sso.backdoor.key)
        || secret(&a.session.redis_url) != secret(&b.session.redis_url)
        || secret(&a.session.redis_password) != secret(&b.session.redis_password)
        || secret(&a.admin.api_token) != secret(&b.admin.api_token)
    {
        out.push("secrets");
    }
    if out.is_empty() {
        out.push("nothing");
    }
    out
}

/// Serves on already bound listeners (tests bind port 0 and pass them in).
pub async fn serve(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let metrics = Arc::new(Metrics::default());
    let first = Running::start(config, metrics.clone());
    let config = first.config.clone();
    let live = Arc::new(Live(std::sync::RwLock::new(Arc::new(first))));
    #[cfg(unix)]
    let reloader = config_path.map(|path| {
        let live = live.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
                reload(&live, &path, &metrics).await;
            }
        })
    });
    #[cfg(not(unix))]
    let reloader: Option<tokio::task::JoinHandle<()>> = {
        let _ = config_path;
        None
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
        let admin_live = live.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = admin.accept() => {
                        let Ok((stream, peer)) = accepted else { continue };
                        let live = admin_live.clone();
                        let service = service_fn(move |req| live.current().admin.clone().handle(req, peer));
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
    let connection_slots = Arc::new(tokio::sync::Semaphore::new(config.server.max_connections));
    loop {
        // At most max_connections at once: past that, new connections wait in the kernel's accept queue.
        let slot = tokio::select! {
            slot = connection_slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
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
                let live = live.clone();
                let service = service_fn(move |req| live.current().gateway.clone().handle(req, peer));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                    drop(slot);
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
    if let Some(r) = reloader {
        r.abort();
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
