//! Forwarding to Bitbucket: streaming both ways, header hygiene, WebSocket bridging, a pooled upstream client.

pub mod body;
pub mod headers;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use thiserror::Error;

use crate::config::Upstream;
use crate::telemetry::metrics::UpstreamError;
pub use body::BoxError;
use body::IdleBody;
use headers::Hygiene;

/// Body type sent to Bitbucket and back to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a request could not be forwarded.
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("Bitbucket did not accept the connection within the connect timeout: {0}")]
    ConnectTimeout(#[source] BoxError),
    #[error("Bitbucket refused the connection (is it running, and is upstream.url right?): {0}")]
    ConnectRefused(#[source] BoxError),
    #[error("Bitbucket sent no response headers within upstream.idle_timeout ({0:?})")]
    ResponseTimeout(Duration),
    #[error("the connection to Bitbucket failed: {0}")]
    Other(#[source] BoxError),
}

impl ForwardError {
    /// The metrics label for this failure.
    pub fn kind(&self) -> UpstreamError {
        match self {
            ForwardError::ConnectTimeout(_) => UpstreamError::ConnectTimeout,
            ForwardError::ConnectRefused(_) => UpstreamError::ConnectRefused,
            ForwardError::ResponseTimeout(_) => UpstreamError::ResponseTimeout,
            ForwardError::Other(_) => UpstreamError::Other,
        }
    }

    /// 504 when Bitbucket was too slow, 502 when it failed.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::ConnectTimeout(_) | ForwardError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn classify(err: hyper_util::client::legacy::Error) -> Self {
        let kind = {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            let mut kind = None;
            while let Some(e) = source {
                if let Some(io) = e.downcast_ref::<std::io::Error>() {
                    kind = Some(io.kind());
                    break;
                }
                source = e.source();
            }
            kind
        };
        let connect = err.is_connect();
        let boxed: BoxError = Box::new(err);
        match kind {
            Some(std::io::ErrorKind::TimedOut) if connect => ForwardError::ConnectTimeout(boxed),
            Some(std::io::ErrorKind::ConnectionRefused) => ForwardError::ConnectRefused(boxed),
            _ => ForwardError::Other(boxed),
        }
    }
}

/// Per-request facts the forwarder needs.
pub struct Forwarding<'a> {
    pub request_id: &'a HeaderValue,
    /// The signed-in user's identity headers (username, assertion), set after every client copy is removed.
    pub identity: Option<(HeaderValue, HeaderValue)>,
    /// Receives the count of request body bytes.
    pub bytes_in: Arc<AtomicU64>,
}

/// The forwarder: one per configuration.
pub struct Proxy {
    client: Client<HttpConnector, ProxyBody>,
    scheme: Scheme,
    authority: Authority,
    idle_timeout: Duration,
    trusted: Vec<IpNet>,
    hygiene: Hygiene,
    identity_names: (http::HeaderName, http::HeaderName),
}

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl Proxy {
    /// Builds the pooled client for `upstream`.
    pub fn new(
        upstream: &Upstream,
        trusted: Vec<IpNet>,
        hygiene: Hygiene,
        identity_names: (http::HeaderName, http::HeaderName),
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(upstream.pool_idle_timeout)
            .pool_max_idle_per_host(upstream.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let scheme = if upstream.url.scheme() == "https" {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let host = upstream.url.host_str().unwrap_or("127.0.0.1");
        let authority_text = match upstream.url.port_or_known_default() {
            Some(port) if host.contains(':') => format!("[{host}]:{port}"),
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority = authority_text
            .parse()
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        Proxy {
            client,
            scheme,
            authority,
            idle_timeout: upstream.idle_timeout,
            trusted,
            hygiene,
            identity_names,
        }
    }

    /// The header names and cookies this proxy protects.
    pub fn hygiene(&self) -> &Hygiene {
        &self.hygiene
    }

    /// The networks whose forwarded headers are believed.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Forwards a request and returns Bitbucket's response, both bodies streaming.
    ///
    /// The caller has already set `Host` and the `X-Forwarded-*` headers (see [`prepare`]).
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        fwd: Forwarding<'_>,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        let upgrade = headers::strip_hop_by_hop(&mut parts.headers);
        let client_upgrade = if upgrade.is_some() {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        self.hygiene.strip_identity(&mut parts.headers);
        self.hygiene.strip_proxy_cookies(&mut parts.headers);
        if let Some((user, assertion)) = fwd.identity {
            parts.headers.insert(self.identity_names.0.clone(), user);
            parts.headers.insert(self.identity_names.1.clone(), assertion);
        }
        parts.headers.insert(X_REQUEST_ID.clone(), fwd.request_id.clone());
        if let Some(up) = &upgrade {
            headers::restore_upgrade(&mut parts.headers, up.clone());
        }
        parts.uri = self.upstream_uri(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        let body = IdleBody::new(body, self.idle_timeout, Some(fwd.bytes_in)).boxed_unsync();

        let pending = self.client.request(Request::from_parts(parts, body));
        let response = match tokio::time::timeout(self.idle_timeout, pending).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(ForwardError::classify(e)),
            Err(_) => return Err(ForwardError::ResponseTimeout(self.idle_timeout)),
        };

        let (mut parts, body) = response.into_parts();
        // Answer in the client's HTTP version, whatever Bitbucket spoke.
        parts.version = client_version;
        let upgrade_back = headers::strip_hop_by_hop(&mut parts.headers);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = parts.extensions.remove::<OnUpgrade>();
            match (client_upgrade, upstream_upgrade, upgrade_back) {
                (Some(client), Some(upstream), Some(proto)) => {
                    headers::restore_upgrade(&mut parts.headers, proto);
                    tokio::spawn(bridge(client, upstream));
                }
                _ => {
                    tracing::warn!("Bitbucket switched protocols without a matching upgrade request; answering 502");
                    return Err(ForwardError::Other(
                        "unexpected 101 Switching Protocols from Bitbucket".into(),
                    ));
                }
            }
        }
        let body = IdleBody::new(body, self.idle_timeout, None).boxed_unsync();
        Ok(Response::from_parts(parts, body))
    }

    fn upstream_uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }
}

/// First step for every request on the public listener: `Host` from the URI for HTTP/2 clients, and the
/// `X-Forwarded-*` headers. Returns the client address (see [`headers::set_forwarded`]).
pub fn prepare(headers: &mut http::HeaderMap, uri: &Uri, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    headers::set_forwarded(headers, peer, "http", trusted)
}

/// Copies bytes both ways between an upgraded client connection and an upgraded Bitbucket connection.
async fn bridge(client: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => tracing::debug!(
                    bytes_to_upstream = up,
                    bytes_to_client = down,
                    "upgraded connection closed"
                ),
                Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
    }
}
