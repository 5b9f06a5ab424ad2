//! The per-request pipeline of the public listener: request id, route class, the proxy's own endpoints or
//! forwarding, and one access-log event when the response body is done.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::config::Config;
use crate::proxy::headers::Hygiene;
use crate::proxy::{self, BoxError, Forwarding, Proxy, ProxyBody};
use crate::route::{self, RouteClass};
use crate::telemetry::metrics::Metrics;
use crate::web;

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Everything one configuration needs to answer requests.
pub struct Gateway {
    config: Arc<Config>,
    proxy: Proxy,
    metrics: Arc<Metrics>,
    ids: RequestIds,
}

impl Gateway {
    /// Prepares the forwarder and hygiene rules for `config`.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let hygiene = Hygiene::new(
            &[
                config.identity.user_header.as_str(),
                config.identity.assertion_header.as_str(),
            ],
            &config.session.cookie_name,
        );
        let proxy = Proxy::new(&config.upstream, config.server.trusted_proxies.clone(), hygiene);
        Gateway {
            config,
            proxy,
            metrics,
            ids: RequestIds::new(),
        }
    }

    /// The metrics this gateway records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request from `peer`.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let request_id = self.ids.accept_or_new(req.headers().get(&X_REQUEST_ID));
        let route = route::classify(req.uri().path(), &self.config.sso);
        let uri = req.uri().clone();
        let client_ip = proxy::prepare(req.headers_mut(), &uri, peer.ip(), self.proxy.trusted());
        let html = web::wants_html(req.headers());
        let mut record = AccessRecord {
            metrics: self.metrics.clone(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            route,
            client_ip,
            request_id: request_id.to_str().unwrap_or("-").to_owned(),
            user: None,
            status: 499,
            start,
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
        };
        self.metrics.start_request();

        let mut response = match route {
            RouteClass::Sso => own(web::error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "Page not found",
                "This address belongs to the sign-in proxy and has no page. Go back to Bitbucket's home page.",
                &record.request_id,
                html,
            )),
            _ => {
                let fwd = Forwarding {
                    request_id: &request_id,
                    bytes_in: record.bytes_in.clone(),
                };
                match self.proxy.forward(req, fwd).await {
                    Ok(r) => r,
                    Err(e) => {
                        self.metrics.upstream_error(e.kind());
                        tracing::warn!(request_id = %record.request_id, error = %e, "upstream request failed");
                        let (title, message) = if e.status() == StatusCode::GATEWAY_TIMEOUT {
                            (
                                "Bitbucket is not responding",
                                "Bitbucket did not answer in time. Wait a moment and reload the page; if it keeps happening, tell your Bitbucket administrator.",
                            )
                        } else {
                            (
                                "Bitbucket is unavailable",
                                "Bitbucket cannot be reached right now, perhaps because it is restarting. Wait a moment and reload the page; if it keeps happening, tell your Bitbucket administrator.",
                            )
                        };
                        let code = if e.status() == StatusCode::GATEWAY_TIMEOUT {
                            "upstream_timeout"
                        } else {
                            "upstream_unavailable"
                        };
                        own(web::error_response(
                            e.status(),
                            code,
                            title,
                            message,
                            &record.request_id,
                            html,
                        ))
                    }
                }
            }
        };
        response.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        record.status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            Logged { inner: body, record }.boxed_unsync(),
        ))
    }
}

fn own(response: Response<http_body_util::Full<Bytes>>) -> Response<ProxyBody> {
    response.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// Request ids: the client's own when it is sane, else a process prefix and a counter.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds {
            prefix: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(1),
        }
    }

    fn accept_or_new(&self, given: Option<&HeaderValue>) -> HeaderValue {
        if let Some(v) = given
            && (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.prefix)).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// What the access log says about one request; written when dropped, that is when the response body is done.
struct AccessRecord {
    metrics: Arc<Metrics>,
    method: Method,
    path: String,
    route: RouteClass,
    client_ip: IpAddr,
    request_id: String,
    user: Option<String>,
    /// 499 (client closed the request) until a response exists.
    status: u16,
    start: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.metrics
            .finish_request(self.route, self.status, elapsed, bytes_in, self.bytes_out);
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            route = self.route.as_str(),
            client_ip = %self.client_ip,
            request_id = %self.request_id,
            user = self.user.as_deref(),
            "request"
        );
    }
}

pin_project! {
    /// A response body that counts what it sends and carries the access record until the end.
    struct Logged<B> {
        #[pin]
        inner: B,
        record: AccessRecord,
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.record.bytes_out += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
