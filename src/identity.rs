//! The signed identity assertion sent to Bitbucket with every authenticated request (interface contract):
//! a compact HS256 JWS with `iss`, `aud = "bitbucket"`, `sub`, `email`, `name`, `iat`, `exp`, `jti`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::Serialize;

/// The audience the companion authenticator expects.
pub const AUDIENCE: &str = "bitbucket";

/// Claims of the assertion.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Mints assertions with the shared secret.
pub struct Asserter {
    issuer: String,
    ttl: i64,
    key: EncodingKey,
}

impl Asserter {
    /// `issuer` is `{public_url}/sso`; `secret` the UTF-8 bytes of `identity.assertion_secret`.
    pub fn new(public_url: &url::Url, secret: &str, ttl: std::time::Duration) -> Self {
        Asserter {
            issuer: issuer(public_url),
            ttl: crate::session::secs(ttl),
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A fresh assertion for a user at `now`.
    pub fn mint(&self, username: &str, email: Option<&str>, name: Option<&str>, now: i64) -> Option<String> {
        let mut jti = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut jti);
        let claims = AssertionClaims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.to_owned(),
            sub: username.to_owned(),
            email: email.map(str::to_owned),
            name: name.map(str::to_owned),
            iat: now,
            exp: now + self.ttl,
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key).ok()
    }
}

/// The assertion issuer for a public URL: `{public_url}/sso` without a doubled slash.
pub fn issuer(public_url: &url::Url) -> String {
    format!("{}/sso", public_url.as_str().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn assertion_verifies_with_the_shared_secret_and_names_the_user() {
        let url = url::Url::parse("https://bitbucket.example.com").unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let a = Asserter::new(&url, secret, std::time::Duration::from_secs(60));
        let now = crate::session::now();
        let token = a.mint("alice", Some("alice@example.com"), Some("Alice"), now).unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["bitbucket"]);
        v.set_issuer(&["https://bitbucket.example.com/sso"]);
        let data =
            jsonwebtoken::decode::<AssertionClaims>(&token, &DecodingKey::from_secret(secret.as_bytes()), &v).unwrap();
        assert_eq!(data.claims.sub, "alice");
        assert_eq!(data.claims.exp - data.claims.iat, 60);
        assert_eq!(data.header.alg, Algorithm::HS256);
        assert!(
            jsonwebtoken::decode::<AssertionClaims>(
                &token,
                &DecodingKey::from_secret(b"another-secret-another-secret!!!"),
                &v
            )
            .is_err()
        );
        assert_ne!(a.mint("alice", None, None, now).unwrap(), token, "jti differs");
    }
}
