//! OpenID Connect providers: discovery (with Cognito's endpoints on its domain), key caches, background loading
//! with backoff, and ID token validation.

pub mod client;
pub mod flow;
pub mod id_token;
pub mod jwks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use thiserror::Error;
use url::Url;

use crate::config::{self, KeySource, ProviderKind};
use id_token::{Claims, Expected, TokenError};

/// How often keys and discovery are refreshed in the background once loaded.
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Least time between two key fetches caused by unknown `kid`s.
const MIN_REFETCH: Duration = Duration::from_secs(30);

/// Something went wrong talking to a provider.
#[derive(Debug, Error)]
pub enum OidcError {
    #[error("the provider is not reachable: {0}")]
    Unreachable(String),
    #[error("the provider answered something unexpected: {0}")]
    Invalid(String),
    #[error(
        "discovery says the issuer is {found:?}, but providers[].issuer is {configured:?}; copy the issuer exactly"
    )]
    IssuerMismatch { configured: String, found: String },
    #[error("signing keys: {0}")]
    Keys(String),
    #[error("the provider's discovery and keys are not loaded yet")]
    NotLoaded,
    #[error("the token endpoint refused the request ({status} {error}: {description})")]
    TokenRefused {
        status: u16,
        error: String,
        description: String,
    },
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Option<Url>,
    token_endpoint: Option<Url>,
    userinfo_endpoint: Option<Url>,
    jwks_uri: Option<Url>,
    end_session_endpoint: Option<Url>,
    revocation_endpoint: Option<Url>,
}

/// How the provider's logout is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logout {
    /// `GET {url}?client_id=...&logout_uri=...`
    Cognito(Url),
    /// RP-initiated logout: `GET {url}?client_id=...&post_logout_redirect_uri=...`
    Standard(Url),
}

/// The provider's endpoints, resolved from discovery and configuration.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization: Url,
    pub token: Url,
    pub userinfo: Option<Url>,
    pub jwks: Option<Url>,
    pub revocation: Option<Url>,
    pub logout: Option<Logout>,
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Resolves the endpoints: Cognito's live on `cognito_domain`; configured overrides win.
fn endpoints(p: &config::Provider, d: Discovery) -> Result<Endpoints, OidcError> {
    if !same_issuer(&d.issuer, p.issuer.as_str()) {
        return Err(OidcError::IssuerMismatch {
            configured: p.issuer.to_string(),
            found: d.issuer,
        });
    }
    let on_domain = |path: &str| p.cognito_domain.as_ref().and_then(|d| d.join(path).ok());
    let (authorization, token, userinfo, revocation, logout) = match p.kind {
        ProviderKind::Cognito => (
            on_domain("/oauth2/authorize"),
            on_domain("/oauth2/token"),
            on_domain("/oauth2/userInfo"),
            on_domain("/oauth2/revoke"),
            p.logout_url
                .clone()
                .or_else(|| on_domain("/logout"))
                .map(Logout::Cognito),
        ),
        ProviderKind::Oidc => (
            d.authorization_endpoint,
            d.token_endpoint,
            d.userinfo_endpoint,
            d.revocation_endpoint,
            p.logout_url.clone().or(d.end_session_endpoint).map(Logout::Standard),
        ),
    };
    let jwks = match &p.keys {
        KeySource::JwksUrl(url) => Some(url.clone()),
        KeySource::PublicKeyFile(_) => None,
        KeySource::Discovery => Some(
            d.jwks_uri
                .ok_or_else(|| OidcError::Invalid("discovery lists no jwks_uri; set jwks_url".into()))?,
        ),
    };
    Ok(Endpoints {
        issuer: d.issuer,
        authorization: authorization.ok_or_else(|| OidcError::Invalid("no authorization endpoint".into()))?,
        token: token.ok_or_else(|| OidcError::Invalid("no token endpoint".into()))?,
        userinfo,
        jwks,
        revocation,
        logout,
    })
}

/// One configured provider at run time.
pub struct ProviderRuntime {
    pub config: config::Provider,
    pub http: reqwest::Client,
    pub keys: jwks::JwksCache,
    endpoints: RwLock<Option<Arc<Endpoints>>>,
    allowed: Vec<Algorithm>,
}

impl ProviderRuntime {
    /// A provider that has not loaded anything yet.
    pub fn new(config: config::Provider, http: reqwest::Client) -> Self {
        let allowed = config
            .allowed_algorithms
            .iter()
            .filter_map(|name| {
                [
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                    Algorithm::ES256,
                    Algorithm::ES384,
                    Algorithm::EdDSA,
                ]
                .into_iter()
                .find(|a| id_token::algorithm_name(*a) == name)
            })
            .collect();
        ProviderRuntime {
            keys: jwks::JwksCache::new(http.clone(), MIN_REFETCH, &config.id),
            config,
            http,
            endpoints: RwLock::new(None),
            allowed,
        }
    }

    /// Discovery and keys are loaded.
    pub fn is_ready(&self) -> bool {
        self.endpoints().is_some() && self.keys.is_loaded()
    }

    /// The endpoints, once discovery has loaded.
    pub fn endpoints(&self) -> Option<Arc<Endpoints>> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads discovery, then the keys.
    pub async fn load(&self) -> Result<(), OidcError> {
        let url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.as_str().trim_end_matches('/')
        ))
        .map_err(|e| OidcError::Invalid(e.to_string()))?;
        let discovery: Discovery = client::get_json(&self.http, &url, "discovery").await?;
        let resolved = endpoints(&self.config, discovery)?;
        match (&self.config.keys, &resolved.jwks) {
            (KeySource::PublicKeyFile(path), _) => self.keys.set_source(jwks::Source::File(path.clone())),
            (_, Some(url)) => self.keys.set_source(jwks::Source::Url(url.clone())),
            _ => {}
        }
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(resolved));
        self.keys.refresh().await?;
        Ok(())
    }

    /// Keeps trying to load with backoff (1 s doubling to 60 s), then refreshes hourly. Runs until dropped.
    pub async fn keep_loaded(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.load().await {
                Ok(()) => {
                    tracing::info!(provider = %self.config.id, "provider discovery and keys loaded");
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(REFRESH_EVERY).await;
                }
                Err(e) => {
                    tracing::warn!(provider = %self.config.id, error = %e, retry_in_seconds = backoff.as_secs(), "provider not loaded; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Validates an ID token from this provider.
    pub async fn validate_id_token(
        &self,
        token: &str,
        nonce: &str,
        access_token: Option<&str>,
    ) -> Result<Claims, TokenError> {
        let endpoints = self.endpoints().ok_or(TokenError::UnknownKey)?;
        let (alg, kid) = id_token::header(token, &self.allowed)?;
        let key = self.keys.key(kid.as_deref()).await?;
        let want = Expected {
            issuer: &endpoints.issuer,
            client_id: &self.config.client_id,
            nonce,
            allowed: &self.allowed,
            access_token,
            now: crate::session::now(),
        };
        id_token::validate(token, alg, &key, &want)
    }
}

/// All providers by id.
pub struct Providers {
    by_id: HashMap<String, Arc<ProviderRuntime>>,
    order: Vec<String>,
}

impl Providers {
    /// Runtimes for the configured providers (nothing loaded yet).
    pub fn new(configs: &[config::Provider]) -> Self {
        let http = client::http_client();
        let by_id = configs
            .iter()
            .map(|c| (c.id.clone(), Arc::new(ProviderRuntime::new(c.clone(), http.clone()))))
            .collect();
        Providers {
            by_id,
            order: configs.iter().map(|c| c.id.clone()).collect(),
        }
    }

    /// Starts background loading of every provider.
    pub fn spawn_loaders(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.by_id
            .values()
            .map(|p| tokio::spawn(p.clone().keep_loaded()))
            .collect()
    }

    /// A provider by id.
    pub fn get(&self, id: &str) -> Option<&Arc<ProviderRuntime>> {
        self.by_id.get(id)
    }

    /// Providers in configuration order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ProviderRuntime>> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    /// Ids of providers not ready yet.
    pub fn not_ready(&self) -> Vec<String> {
        self.all()
            .filter(|p| !p.is_ready())
            .map(|p| p.config.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: ProviderKind) -> config::Provider {
        config::Provider {
            id: "p".into(),
            kind,
            display_name: "P".into(),
            issuer: Url::parse("https://cognito-idp.us-east-1.amazonaws.com/us-east-1_X").unwrap(),
            client_id: "c".into(),
            client_secret: None,
            scopes: vec!["openid".into()],
            cognito_domain: (kind == ProviderKind::Cognito)
                .then(|| Url::parse("https://ex.auth.us-east-1.amazoncognito.com").unwrap()),
            keys: KeySource::Discovery,
            logout_url: None,
            token_auth_method: config::TokenAuthMethod::ClientSecretBasic,
            userinfo: false,
            allowed_algorithms: vec!["RS256".into()],
        }
    }

    fn discovery() -> Discovery {
        serde_json::from_value(serde_json::json!({
            "issuer": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_X",
            "authorization_endpoint": "https://other/authorize",
            "token_endpoint": "https://other/token",
            "jwks_uri": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_X/.well-known/jwks.json"
        }))
        .unwrap()
    }

    #[test]
    fn cognito_endpoints_live_on_the_domain() {
        let e = endpoints(&provider(ProviderKind::Cognito), discovery()).unwrap();
        assert_eq!(
            e.authorization.as_str(),
            "https://ex.auth.us-east-1.amazoncognito.com/oauth2/authorize"
        );
        assert_eq!(
            e.token.as_str(),
            "https://ex.auth.us-east-1.amazoncognito.com/oauth2/token"
        );
        assert_eq!(
            e.userinfo.unwrap().as_str(),
            "https://ex.auth.us-east-1.amazoncognito.com/oauth2/userInfo"
        );
        assert_eq!(
            e.logout,
            Some(Logout::Cognito(
                Url::parse("https://ex.auth.us-east-1.amazoncognito.com/logout").unwrap()
            ))
        );
        assert!(e.jwks.unwrap().as_str().ends_with("/.well-known/jwks.json"));
    }

    #[test]
    fn standard_endpoints_come_from_discovery_and_the_issuer_must_match() {
        let e = endpoints(&provider(ProviderKind::Oidc), discovery()).unwrap();
        assert_eq!(e.authorization.as_str(), "https://other/authorize");
        assert_eq!(e.logout, None);
        let mut d = discovery();
        d.issuer = "https://evil.example".into();
        assert!(matches!(
            endpoints(&provider(ProviderKind::Oidc), d),
            Err(OidcError::IssuerMismatch { .. })
        ));
    }
}
