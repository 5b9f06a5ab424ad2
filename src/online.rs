//! `check-config --online`: probes every provider and Bitbucket with the configuration, one line per probe.

use crate::bitbucket::client::{BitbucketClient, BitbucketError};
use crate::config::{Config, KeySource, ProviderKind};
use crate::oidc::{OidcError, client};

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    /// What was checked (and found).
    pub what: String,
    /// For a failure: what to fix.
    pub remedy: String,
}

impl Probe {
    fn ok(what: impl Into<String>) -> Self {
        Probe {
            ok: true,
            what: what.into(),
            remedy: String::new(),
        }
    }
    fn fail(what: impl Into<String>, remedy: impl Into<String>) -> Self {
        Probe {
            ok: false,
            what: what.into(),
            remedy: remedy.into(),
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ok {
            write!(f, "✓ {}", self.what)
        } else {
            write!(f, "✗ {}\n    fix: {}", self.what, self.remedy)
        }
    }
}

/// Runs every probe.
pub async fn check(config: &Config) -> Vec<Probe> {
    let mut out = Vec::new();
    let http = client::http_client();
    let base = config.server.public_url.as_str().trim_end_matches('/').to_owned();
    for p in &config.providers {
        let id = &p.id;
        let url = format!(
            "{}/.well-known/openid-configuration",
            p.issuer.as_str().trim_end_matches('/')
        );
        let Ok(discovery_url) = url::Url::parse(&url) else {
            continue;
        };
        let discovery: Result<serde_json::Value, OidcError> =
            client::get_json(&http, &discovery_url, "discovery").await;
        let discovery = match discovery {
            Ok(d) => {
                out.push(Probe::ok(format!("provider {id}: discovery loaded from {url}")));
                d
            }
            Err(e) => {
                out.push(Probe::fail(
                    format!("provider {id}: discovery: {e}"),
                    "check providers[].issuer (exactly as the provider writes it) and that this host can reach it",
                ));
                continue;
            }
        };
        let found = discovery["issuer"].as_str().unwrap_or("");
        if found.trim_end_matches('/') == p.issuer.as_str().trim_end_matches('/') {
            out.push(Probe::ok(format!("provider {id}: issuer matches ({found})")));
        } else {
            out.push(Probe::fail(
                format!(
                    "provider {id}: discovery says the issuer is {found:?}, the configuration says {:?}",
                    p.issuer.as_str()
                ),
                "copy the issuer from the provider's discovery document into providers[].issuer",
            ));
        }
        let jwks = match &p.keys {
            KeySource::JwksUrl(u) => Some(u.clone()),
            KeySource::PublicKeyFile(_) => None,
            KeySource::Discovery => discovery["jwks_uri"].as_str().and_then(|u| url::Url::parse(u).ok()),
        };
        match jwks {
            Some(u) => match client::get_json::<serde_json::Value>(&http, &u, "JWKS").await {
                Ok(set) if set["keys"].as_array().is_some_and(|k| !k.is_empty()) => out.push(Probe::ok(format!(
                    "provider {id}: {} signing key(s) at {u}",
                    set["keys"].as_array().map(Vec::len).unwrap_or(0)
                ))),
                Ok(_) => out.push(Probe::fail(
                    format!("provider {id}: {u} holds no key"),
                    "point jwks_url at the provider's key set",
                )),
                Err(e) => out.push(Probe::fail(
                    format!("provider {id}: {e}"),
                    "check jwks_url, or the jwks_uri of discovery",
                )),
            },
            None => out.push(Probe::ok(format!("provider {id}: signing key from public_key_file"))),
        }
        let token = match p.kind {
            ProviderKind::Cognito => p.cognito_domain.as_ref().and_then(|d| d.join("/oauth2/token").ok()),
            ProviderKind::Oidc => discovery["token_endpoint"]
                .as_str()
                .and_then(|u| url::Url::parse(u).ok()),
        };
        let redirect = format!("{base}/sso/callback");
        match token {
            Some(t) => match client::exchange_code(
                &http,
                p,
                &t,
                "bbsso-online-check-not-a-code",
                &"v".repeat(43),
                &redirect,
            )
            .await
            {
                Err(OidcError::TokenRefused { error, .. })
                    if error == "invalid_client" || error == "unauthorized_client" =>
                {
                    out.push(Probe::fail(
                        format!("provider {id}: the token endpoint {t} refused the client ({error})"),
                        "check providers[].client_id and client_secret, and token_auth_method",
                    ))
                }
                Err(OidcError::TokenRefused { status: 401, .. }) => out.push(Probe::fail(
                    format!("provider {id}: the token endpoint {t} refused the client (401)"),
                    "check providers[].client_id and client_secret, and token_auth_method",
                )),
                Err(OidcError::TokenRefused { error, .. }) => out.push(Probe::ok(format!(
                    "provider {id}: token endpoint {t} answers and accepts the client (a made-up code got {error})"
                ))),
                Err(e) => out.push(Probe::fail(
                    format!("provider {id}: token endpoint: {e}"),
                    "check cognito_domain (Cognito) or the provider's token endpoint and network access",
                )),
                Ok(_) => out.push(Probe::fail(
                    format!("provider {id}: the token endpoint accepted a made-up code"),
                    "this is not a real provider; check the issuer",
                )),
            },
            None => out.push(Probe::fail(
                format!("provider {id}: no token endpoint"),
                "set cognito_domain (kind = \"cognito\") or use a provider whose discovery lists token_endpoint",
            )),
        }
        out.push(Probe::ok(format!(
            "provider {id}: register the callback URL {redirect}"
        )));
        out.push(Probe::ok(format!(
            "provider {id}: register the sign-out URL {base}/sso/logged-out{}",
            if p.kind == ProviderKind::Cognito {
                " (Cognito: Allowed sign-out URLs)"
            } else {
                " (post_logout_redirect_uris)"
            }
        )));
    }
    let upstream = &config.upstream.url;
    let host = upstream
        .host_str()
        .unwrap_or("127.0.0.1")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = upstream.port_or_known_default().unwrap_or(80);
    match tokio::time::timeout(
        config.upstream.connect_timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => out.push(Probe::ok(format!("Bitbucket accepts connections at {upstream}"))),
        _ => out.push(Probe::fail(
            format!("Bitbucket does not accept connections at {upstream}"),
            "check upstream.url and that Bitbucket runs",
        )),
    }
    if let Some(b) = &config.bitbucket {
        match BitbucketClient::new(b).check_admin().await {
            Ok(()) => out.push(Probe::ok(format!("Bitbucket REST API: {} is an admin", b.admin_user))),
            Err(e @ BitbucketError::Unauthorized) => out.push(Probe::fail(
                format!("Bitbucket REST API: {e}"),
                "fix bitbucket.admin_user / admin_password",
            )),
            Err(e @ BitbucketError::Forbidden { .. }) => out.push(Probe::fail(
                format!("Bitbucket REST API: {e}"),
                "give the service account the global Admin permission in Bitbucket",
            )),
            Err(e) => out.push(Probe::fail(
                format!("Bitbucket REST API: {e}"),
                "check bitbucket.url (default: upstream.url) and that Bitbucket runs",
            )),
        }
    }
    if config.session.store == crate::config::SessionStore::Redis {
        let store = crate::session::store::Store::new(&config.session, &config.session.cookie_name);
        match store.check().await {
            Ok(()) => out.push(Probe::ok("Redis session store answers (PING)")),
            Err(e) => out.push(Probe::fail(
                format!("Redis session store: {e}"),
                "check session.redis_url (host, port, rediss:// for TLS), the password and session.redis_ca_file, and that Redis runs",
            )),
        }
    }
    out
}
