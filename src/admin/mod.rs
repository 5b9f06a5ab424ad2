//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the session API, on an address apart from the
//! public one.

pub mod sessions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use crate::web::sso::Sso;

/// What the admin endpoints look at.
pub struct Admin {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    sso: Arc<Sso>,
}

impl Admin {
    /// Admin endpoints for one running configuration.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>, sso: Arc<Sso>) -> Self {
        Admin { config, metrics, sso }
    }

    /// Answers one admin request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.uri().path().starts_with("/admin/sessions") {
            return Ok(sessions::answer(&self.sso, self.config.admin.api_token.as_ref(), req, peer).await);
        }
        let response = match (req.method().as_str(), req.uri().path()) {
            ("GET" | "HEAD", "/healthz") => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_owned()),
            ("GET" | "HEAD", "/readyz") => {
                // `?without=session_store`: the shared Redis is down for every replica alike, so a load balancer
                // that drops unready replicas may prefer to keep them (git with credentials still works).
                let skip_store = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .any(|(k, v)| k == "without" && v == "session_store");
                self.readiness(skip_store).await
            }
            ("GET" | "HEAD", "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: try /healthz, /readyz, /metrics or /admin/sessions\n".to_owned(),
            ),
        };
        Ok(response)
    }

    /// Ready when the configuration is loaded, Bitbucket accepts a connection, and (with SSO on) every
    /// provider's discovery and keys are loaded.
    async fn readiness(&self, skip_store: bool) -> Response<Full<Bytes>> {
        let url = &self.config.upstream.url;
        let host = url
            .host_str()
            .unwrap_or("127.0.0.1")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let wait = self.config.upstream.connect_timeout.min(Duration::from_secs(2));
        let upstream = match tokio::time::timeout(wait, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {wait:?}")),
        };
        let waiting: Vec<String> = if self.config.sso.enabled {
            self.sso.providers.not_ready()
        } else {
            Vec::new()
        };
        let providers = if waiting.is_empty() {
            "\"ok\"".to_owned()
        } else {
            crate::web::json_string(&format!("discovery or keys not loaded yet for: {}", waiting.join(", ")))
        };
        let upstream_check = match &upstream {
            Ok(()) => "\"ok\"".to_owned(),
            Err(e) => crate::web::json_string(&format!("unreachable: {e}")),
        };
        let store = if !self.config.sso.enabled {
            Ok(())
        } else if skip_store {
            // Reported, never waited for: a silent Redis must not make the probe itself time out.
            let wait = Duration::from_millis(300);
            tokio::time::timeout(wait, self.sso.store.check())
                .await
                .unwrap_or_else(|_| {
                    Err(crate::session::store::StoreError::Unavailable(format!(
                        "no answer within {wait:?}"
                    )))
                })
        } else {
            self.sso.store.check().await
        };
        let store_check = match &store {
            Ok(()) => "\"ok\"".to_owned(),
            Err(e) => crate::web::json_string(&e.to_string()),
        };
        let ready = upstream.is_ok() && waiting.is_empty() && (store.is_ok() || skip_store);
        let body = format!(
            "{{\"ready\":{ready},\"checks\":{{\"config\":\"ok\",\"upstream\":{upstream_check},\"providers\":{providers},\"session_store\":{store_check}}}}}\n"
        );
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        reply(status, "application/json", body)
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// Asks an admin listener for `path` with a plain blocking request (no runtime needed): `Ok` on a 200 answer.
pub fn probe(address: &str, path: &str, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("bad address: {e}"))?
        .next()
        .ok_or_else(|| "bad address".to_owned())?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("not reachable: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| format!("no answer: {e}"))?;
    let text = String::from_utf8_lossy(&head[..n]);
    match text.split(' ').nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("answered {status}")),
        None => Err("not an HTTP answer".to_owned()),
    }
}
