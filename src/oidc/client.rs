//! Calls to the provider: discovery and JWKS documents, the token endpoint (code and refresh), revocation, userinfo.

use base64::Engine;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::OidcError;
use crate::config::{Provider, TokenAuthMethod};

/// The provider's answer at the token endpoint.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// A refresh that did not succeed.
#[derive(Debug)]
pub enum RefreshError {
    /// The provider refused the refresh token (`invalid_grant` and friends): the user must sign in again.
    Refused(String),
    /// The provider could not be asked or failed: worth retrying.
    Unavailable(String),
}

/// The HTTP client for provider calls: bounded time, no redirects, no cookies.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bitbucket-sso-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// GETs a JSON document (`what` names it in errors).
pub async fn get_json<T: DeserializeOwned>(http: &reqwest::Client, url: &Url, what: &str) -> Result<T, OidcError> {
    let response = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| OidcError::Unreachable(format!("{what} at {url}: {}", plain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(OidcError::Unreachable(format!("{what} at {url} answered {status}")));
    }
    response
        .json::<T>()
        .await
        .map_err(|e| OidcError::Invalid(format!("{what} at {url} is not valid JSON of the expected shape: {e}")))
}

fn plain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn token_request(
    http: &reqwest::Client,
    p: &Provider,
    endpoint: &Url,
    mut form: Vec<(&str, String)>,
) -> reqwest::RequestBuilder {
    let mut request = http.post(endpoint.clone()).header("accept", "application/json");
    match (&p.client_secret, p.token_auth_method) {
        (Some(secret), TokenAuthMethod::ClientSecretBasic) => {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let credentials = format!("{}:{}", enc(&p.client_id), enc(secret.expose()));
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            );
            request = request.header("authorization", value);
        }
        (Some(secret), TokenAuthMethod::ClientSecretPost) => {
            form.push(("client_id", p.client_id.clone()));
            form.push(("client_secret", secret.expose().to_owned()));
        }
        (None, _) => form.push(("client_id", p.client_id.clone())),
    }
    request.form(&form)
}

/// Exchanges an authorization code for tokens.
pub async fn exchange_code(
    http: &reqwest::Client,
    p: &Provider,
    endpoint: &Url,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> Result<TokenResponse, OidcError> {
    let form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", redirect_uri.to_owned()),
        ("code_verifier", verifier.to_owned()),
    ];
    let response = token_request(http, p, endpoint, form)
        .send()
        .await
        .map_err(|e| OidcError::Unreachable(format!("token endpoint {endpoint}: {}", plain(&e))))?;
    let status = response.status();
    if status.is_success() {
        return response
            .json()
            .await
            .map_err(|e| OidcError::Invalid(format!("token response: {e}")));
    }
    let body: Option<ErrorBody> = response.json().await.ok();
    let (error, description) = body.map(|b| (b.error, b.error_description)).unwrap_or_default();
    Err(OidcError::TokenRefused {
        status: status.as_u16(),
        error: error.unwrap_or_else(|| "unknown".into()),
        description: description.unwrap_or_default(),
    })
}

/// Redeems a refresh token.
pub async fn refresh(
    http: &reqwest::Client,
    p: &Provider,
    endpoint: &Url,
    refresh_token: &str,
) -> Result<TokenResponse, RefreshError> {
    let form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.to_owned()),
    ];
    let response = token_request(http, p, endpoint, form)
        .send()
        .await
        .map_err(|e| RefreshError::Unavailable(plain(&e)))?;
    let status = response.status();
    if status.is_success() {
        return response
            .json()
            .await
            .map_err(|e| RefreshError::Unavailable(format!("token response: {e}")));
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(RefreshError::Unavailable(format!("token endpoint answered {status}")));
    }
    let body: Option<ErrorBody> = response.json().await.ok();
    Err(RefreshError::Refused(
        body.and_then(|b| b.error).unwrap_or_else(|| format!("HTTP {status}")),
    ))
}

/// Revokes a refresh token (RFC 7009; Cognito's `/oauth2/revoke`). Failures are reported, not fatal.
pub async fn revoke(
    http: &reqwest::Client,
    p: &Provider,
    endpoint: &Url,
    refresh_token: &str,
) -> Result<(), OidcError> {
    let form = vec![
        ("token", refresh_token.to_owned()),
        ("token_type_hint", "refresh_token".to_owned()),
    ];
    let response = token_request(http, p, endpoint, form)
        .send()
        .await
        .map_err(|e| OidcError::Unreachable(format!("revocation endpoint {endpoint}: {}", plain(&e))))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(OidcError::Unreachable(format!(
            "revocation endpoint {endpoint} answered {}",
            response.status()
        )))
    }
}

/// The userinfo claims for an access token.
pub async fn userinfo(
    http: &reqwest::Client,
    endpoint: &Url,
    access_token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
    let response = http
        .get(endpoint.clone())
        .bearer_auth(access_token)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| OidcError::Unreachable(format!("userinfo endpoint {endpoint}: {}", plain(&e))))?;
    if !response.status().is_success() {
        return Err(OidcError::Unreachable(format!(
            "userinfo endpoint {endpoint} answered {}",
            response.status()
        )));
    }
    response
        .json()
        .await
        .map_err(|e| OidcError::Invalid(format!("userinfo response: {e}")))
}
