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

use crate::access::{self, Access, Facts, Switches};
use crate::config::Config;
use crate::proxy::headers::Hygiene;
use crate::proxy::{self, BoxError, Forwarding, Proxy, ProxyBody};
use crate::route::{self, RouteClass};
use crate::telemetry::metrics::Metrics;
use crate::web::sso::{self, Lookup, Sso};
use crate::web::{self, Page};

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Everything one configuration needs to answer requests.
pub struct Gateway {
    config: Arc<Config>,
    proxy: Proxy,
    sso: Arc<Sso>,
    limiter: crate::ratelimit::RateLimiter,
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
        let names = (
            http::HeaderName::from_bytes(config.identity.user_header.as_bytes())
                .unwrap_or(http::HeaderName::from_static("x-forwarded-user")),
            http::HeaderName::from_bytes(config.identity.assertion_header.as_bytes())
                .unwrap_or(http::HeaderName::from_static("x-bbsso-assertion")),
        );
        let proxy = Proxy::new(&config.upstream, config.server.trusted_proxies.clone(), hygiene, names);
        web::templates::install(web::templates::Templates::load(config.ui.templates_dir.as_deref()));
        let sso = Arc::new(Sso::new(config.clone()));
        let limiter = crate::ratelimit::RateLimiter::new(config.server.rate_limit_per_minute);
        Gateway {
            config,
            proxy,
            sso,
            limiter,
            metrics,
            ids: RequestIds::new(),
        }
    }

    /// The sign-in machinery (providers' readiness, for `/readyz`).
    pub fn sso(&self) -> &Arc<Sso> {
        &self.sso
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
        let normalized = route::normalize_path(req.uri().path());
        let route = route::classify_normalized(&normalized, &self.config.sso);
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

        let ctx = sso::Ctx {
            request_id: &record.request_id,
            client_ip,
            html,
        };
        let mut set_cookies: Vec<HeaderValue> = Vec::new();
        let limited = self
            .sign_in_attempt(&normalized, req.uri().query())
            .then(|| self.limiter.check(client_ip, Instant::now()).err())
            .flatten();
        let mut response = if let Some(wait) = limited {
            crate::telemetry::metrics::count("bbsso_rate_limited_total", &[("route", route.as_str())]);
            tracing::warn!(request_id = %record.request_id, client_ip = %client_ip, "sign-in rate limit reached");
            let mut r = Page::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many sign-in attempts",
                "This address has started too many sign-ins in a short time. Wait a minute, then try again.",
            )
            .render(&record.request_id, html);
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            own(r)
        } else if route == RouteClass::Sso {
            own(self
                .sso
                .handle(req.method(), req.uri().path(), req.uri().query(), req.headers(), &ctx)
                .await)
        } else {
            let lookup = if self.config.sso.enabled {
                self.sso.session(req.headers(), &ctx).await
            } else {
                Lookup::None
            };
            let mut store_down = false;
            let found = match lookup {
                Lookup::Valid(found) => Some(found),
                Lookup::Ended => {
                    set_cookies.extend(self.sso.clear_session_cookie());
                    None
                }
                Lookup::Unavailable => {
                    store_down = true;
                    None
                }
                Lookup::None => None,
            };
            let backdoor = if self.config.sso.enabled && found.is_none() {
                let (pass, grant) = self.sso.backdoor(&normalized, req.uri().query(), req.headers(), &ctx);
                set_cookies.extend(grant);
                pass
            } else {
                false
            };
            let facts = Facts {
                route,
                path: &normalized,
                method: req.method(),
                has_session: found.is_some(),
                session_unavailable: store_down,
                backdoor,
                has_authorization: req.headers().contains_key(http::header::AUTHORIZATION),
                navigation: access::is_navigation(req.method(), req.headers()),
            };
            let switches = Switches {
                sso_enabled: self.config.sso.enabled,
                auto_redirect: self.config.sso.auto_redirect,
            };
            match (access::decide(&facts, switches), found) {
                (Access::SessionUnavailable, _) => {
                    let reload = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    own(self.sso.store_down_page(&ctx, None, reload))
                }
                (Access::ForwardAsUser, Some(found)) => {
                    record.user = Some(found.session.username.clone());
                    set_cookies.extend(found.set_cookie.clone());
                    let identity = self.sso.identity_values(&found.session);
                    self.forward(req, &request_id, identity, &record, html).await
                }
                (Access::ForwardAsUser | Access::ForwardAnonymous, _) => {
                    self.forward(req, &request_id, None, &record, html).await
                }
                (Access::Unauthorized, _) => own(Page::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Sign-in required",
                    "Sign in to Bitbucket in the browser first, or send an access token or Basic credentials.",
                )
                .render(&record.request_id, false)),
                (Access::Login, _) if normalized == "/login" => {
                    // Bitbucket's login page: back to where `next` pointed, after a countdown when configured.
                    let next = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                        .find(|(k, _)| k == "next")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_else(|| "/".to_owned());
                    own(self.sso.countdown(&next).unwrap_or_else(|| {
                        let rd: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
                        sso::redirect(&format!("/sso/login?rd={rd}"))
                    }))
                }
                (Access::Login, _) => {
                    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    let rd: String = url::form_urlencoded::byte_serialize(path_and_query.as_bytes()).collect();
                    own(sso::redirect(&format!("/sso/login?rd={rd}")))
                }
                (Access::Logout, _) => own(self.sso.logout(req.headers(), &ctx).await),
            }
        };
        for cookie in set_cookies {
            response.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        response.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        record.status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            Logged { inner: body, record }.boxed_unsync(),
        ))
    }
}

impl Gateway {
    /// The requests the sign-in rate limit counts: login, callback, test page, and emergency-login attempts.
    fn sign_in_attempt(&self, normalized: &str, query: Option<&str>) -> bool {
        match normalized {
            "/sso/login" | "/sso/callback" | "/sso/test" => true,
            "/login" => url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .any(|(k, _)| k == self.config.sso.backdoor.query.as_str()),
            _ => false,
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        request_id: &HeaderValue,
        identity: Option<(HeaderValue, HeaderValue)>,
        record: &AccessRecord,
        html: bool,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let fwd = Forwarding {
            request_id,
            identity,
            bytes_in: record.bytes_in.clone(),
        };
        match self.proxy.forward(req, fwd).await {
            Ok(r) => {
                self.metrics.upstream_latency(started.elapsed());
                r
            }
            Err(e) => {
                self.metrics.upstream_error(e.kind());
                tracing::warn!(request_id = %record.request_id, error = %e, "upstream request failed");
                let timeout = e.status() == StatusCode::GATEWAY_TIMEOUT;
                let (code, title, message) = if timeout {
                    (
                        "upstream_timeout",
                        "Bitbucket is not responding",
                        "Bitbucket did not answer in time. Wait a moment and reload the page; if it keeps happening, tell your Bitbucket administrator.",
                    )
                } else {
                    (
                        "upstream_unavailable",
                        "Bitbucket is unavailable",
                        "Bitbucket cannot be reached right now, perhaps because it is restarting. Wait a moment and reload the page; if it keeps happening, tell your Bitbucket administrator.",
                    )
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
