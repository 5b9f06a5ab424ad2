//! ID token validation: signature with an allow-list of algorithms, then every claim check the contract asks for.
//! Pure: the key comes from the caller (the JWKS cache), the clock from the system.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;
use thiserror::Error;

/// Clock leeway for `exp`, `nbf` and `iat`, in seconds (the contract's maximum).
pub const LEEWAY_SECS: u64 = 60;

/// Claims of a validated ID token (and merged userinfo).
pub type Claims = Map<String, Value>;

/// Why an ID token was refused. `code()` is stable and goes into the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("the ID token is not a well-formed JWT")]
    Malformed,
    #[error("the ID token is signed with {0}, which is not in allowed_algorithms")]
    AlgorithmNotAllowed(String),
    #[error("no provider key has the ID token's key id (kid)")]
    UnknownKey,
    #[error("the ID token's signature does not verify")]
    BadSignature,
    #[error("the ID token was issued by someone else (iss)")]
    WrongIssuer,
    #[error("the ID token is not meant for this client (aud)")]
    WrongAudience,
    #[error("the ID token has expired (exp)")]
    Expired,
    #[error("the ID token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the ID token is issued in the future (iat)")]
    IssuedInFuture,
    #[error("the ID token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the ID token's nonce does not match this sign-in")]
    NonceMismatch,
    #[error("the token is not an ID token (token_use = {0})")]
    WrongTokenUse(String),
    #[error("the ID token's authorized party (azp) is not this client")]
    AzpMismatch,
    #[error("the ID token's at_hash does not match the access token")]
    AtHashMismatch,
}

impl TokenError {
    /// Stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::NonceMismatch => "nonce_mismatch",
            TokenError::WrongTokenUse(_) => "wrong_token_use",
            TokenError::AzpMismatch => "azp_mismatch",
            TokenError::AtHashMismatch => "at_hash_mismatch",
        }
    }
}

/// What the token must match.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub allowed: &'a [Algorithm],
    /// The access token from the same response, for `at_hash`.
    pub access_token: Option<&'a str>,
    pub now: i64,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// Reads the header without trusting it: the algorithm must be allowed before any key is looked up.
pub fn header(token: &str, allowed: &[Algorithm]) -> Result<(Algorithm, Option<String>), TokenError> {
    let first = token.split('.').next().ok_or(TokenError::Malformed)?;
    if token.split('.').count() != 3 {
        return Err(TokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let alg_name = raw.alg.ok_or(TokenError::Malformed)?;
    let alg = allowed
        .iter()
        .copied()
        .find(|a| algorithm_name(*a) == alg_name)
        .ok_or(TokenError::AlgorithmNotAllowed(alg_name))?;
    Ok((alg, raw.kid))
}

/// The JOSE name of an algorithm.
pub fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Verifies the signature with `key` and checks every claim.
pub fn validate(token: &str, alg: Algorithm, key: &DecodingKey, want: &Expected<'_>) -> Result<Claims, TokenError> {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_issuer(&[want.issuer]);
    v.set_audience(&[want.client_id]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_) => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        _ => TokenError::Malformed,
    })?;
    let claims = data.claims;
    let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(60);

    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(|| TokenError::MissingClaim("iat".into()))?;
    if iat > want.now + leeway {
        return Err(TokenError::IssuedInFuture);
    }
    match claims.get("nonce").and_then(Value::as_str) {
        Some(n) if constant_time_eq(n.as_bytes(), want.nonce.as_bytes()) => {}
        _ => return Err(TokenError::NonceMismatch),
    }
    if let Some(use_) = claims.get("token_use")
        && use_.as_str() != Some("id")
    {
        return Err(TokenError::WrongTokenUse(use_.as_str().unwrap_or("?").to_owned()));
    }
    let several_audiences = claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != want.client_id => return Err(TokenError::AzpMismatch),
        None if several_audiences => return Err(TokenError::AzpMismatch),
        _ => {}
    }
    if let Some(at_hash) = claims.get("at_hash").and_then(Value::as_str) {
        let access = want.access_token.ok_or(TokenError::AtHashMismatch)?;
        if token_hash(alg, access) != at_hash {
            return Err(TokenError::AtHashMismatch);
        }
    }
    Ok(claims)
}

/// `at_hash`: base64url of the left half of the hash that matches the signing algorithm.
pub fn token_hash(alg: Algorithm, token: &str) -> String {
    let digest: Vec<u8> = match alg {
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 | Algorithm::HS384 => {
            sha2::Sha384::digest(token).to_vec()
        }
        Algorithm::RS512 | Algorithm::PS512 | Algorithm::HS512 | Algorithm::EdDSA => {
            sha2::Sha512::digest(token).to_vec()
        }
        _ => sha2::Sha256::digest(token).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

/// Compares without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
