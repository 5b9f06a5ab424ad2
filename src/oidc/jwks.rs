//! The provider's signing keys, cached by `kid`. A token with an unknown `kid` causes at most one refetch per
//! interval, single-flight, and fails closed: a flood of random `kid`s cannot hammer the provider.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use url::Url;

use super::OidcError;
use super::id_token::TokenError;

/// Where keys come from.
#[derive(Clone)]
pub enum Source {
    Url(Url),
    /// A PEM public key file: one key, whatever the `kid`.
    File(PathBuf),
}

/// The key cache of one provider.
pub struct JwksCache {
    http: reqwest::Client,
    source: RwLock<Option<Source>>,
    keys: RwLock<Option<Arc<Keys>>>,
    /// When an unknown `kid` last caused a refetch; background refreshes do not count.
    last_kid_refetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
    min_refetch: Duration,
    fetches: AtomicU64,
    /// The provider id, for metrics.
    label: String,
}

/// Keys by `kid`; a key set without `kid`s is usable only when it holds exactly one key.
#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    single: Option<DecodingKey>,
}

impl JwksCache {
    /// A cache that refetches on an unknown `kid` at most once per `min_refetch`.
    pub fn new(http: reqwest::Client, min_refetch: Duration, label: &str) -> Self {
        JwksCache {
            http,
            source: RwLock::new(None),
            keys: RwLock::new(None),
            last_kid_refetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            min_refetch,
            fetches: AtomicU64::new(0),
            label: label.to_owned(),
        }
    }

    /// Sets where keys come from (known after discovery).
    pub fn set_source(&self, source: Source) {
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Whether keys are loaded.
    pub fn is_loaded(&self) -> bool {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// How many times keys were fetched (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the keys now (background refresh and first load).
    pub async fn refresh(&self) -> Result<usize, OidcError> {
        let _single = self.fetching.lock().await;
        self.fetch().await
    }

    async fn fetch(&self) -> Result<usize, OidcError> {
        let source = self
            .source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(OidcError::NotLoaded)?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::count("bbsso_jwks_fetches_total", &[("provider", &self.label)]);
        let keys = match source {
            Source::File(path) => {
                let pem = tokio::fs::read(&path)
                    .await
                    .map_err(|e| OidcError::Keys(format!("cannot read {}: {e}", path.display())))?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .or_else(|_| DecodingKey::from_ec_pem(&pem))
                    .map_err(|e| {
                        OidcError::Keys(format!("{} is not an RSA or EC public key in PEM: {e}", path.display()))
                    })?;
                Keys {
                    by_kid: HashMap::new(),
                    single: Some(key),
                }
            }
            Source::Url(url) => {
                let set: JwkSet = super::client::get_json(&self.http, &url, "JWKS").await?;
                let mut keys = Keys::default();
                let mut usable = Vec::new();
                for jwk in &set.keys {
                    let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
                    match &jwk.common.key_id {
                        Some(kid) => {
                            keys.by_kid.insert(kid.clone(), key.clone());
                        }
                        None => usable.push(key),
                    }
                }
                if usable.len() == 1 && keys.by_kid.is_empty() {
                    keys.single = usable.pop();
                }
                if keys.by_kid.is_empty() && keys.single.is_none() {
                    return Err(OidcError::Keys(format!("{url} holds no usable signing key")));
                }
                keys
            }
        };
        let count = keys.by_kid.len() + usize::from(keys.single.is_some());
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
        Ok(count)
    }

    fn lookup(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        if let Some(single) = &keys.single {
            return Some(single.clone());
        }
        match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None if keys.by_kid.len() == 1 => keys.by_kid.values().next().cloned(),
            None => None,
        }
    }

    /// The key for `kid`, refetching at most once per interval when it is unknown.
    pub async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, TokenError> {
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        let _single = self.fetching.lock().await;
        // Another request may have refetched while this one waited.
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        {
            let mut last = self.last_kid_refetch.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
                return Err(TokenError::UnknownKey);
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "refetching the provider's keys for an unknown kid failed");
        }
        self.lookup(kid).ok_or(TokenError::UnknownKey)
    }
}
