//! Where sessions live. `cookie`: the whole session, sealed, in the browser's cookie; any replica with the same
//! keys reads it and nothing is shared. `redis`: the cookie carries only a sealed, opaque handle and the session
//! (sealed too) lives in Redis, so that it can be listed and revoked.

use std::sync::Arc;

use super::Session;
use super::cookies::MAX_COOKIE_BYTES;
use super::keyring::Keyring;
use super::redis::RedisStore;
use crate::config;

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Redis is down, refused us, or did not answer in time.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The session does not fit in a cookie even without its refresh token.
    #[error("the session does not fit in a cookie")]
    TooLarge,
    /// Listing and revocation need sessions kept on the server.
    #[error(
        "sessions are kept only in browsers' cookies (session.store = \"cookie\"); listing and revoking them needs session.store = \"redis\""
    )]
    Unsupported,
}

/// What became of an updated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// Cookie store: the new cookie value to send.
    Cookie(String),
    /// Shared store: saved; the cookie stays as it is.
    Stored,
    /// Shared store: the session no longer exists (revoked or ended meanwhile) and was not brought back.
    Gone,
}

/// Which sessions a revocation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Session(String),
}

/// The session store of one configuration.
pub enum Store {
    Cookie(CookieStore),
    Redis(Arc<RedisStore>),
    /// A Redis store that could not be set up (configuration checks prevent this): every use reports why.
    Failed(String),
}

impl Store {
    /// The store `session.store` names. Opens no connection: Redis is reached on first use.
    pub fn new(cfg: &config::Session, cookie_name: &str) -> Self {
        let ring = Keyring::new(&cfg.keys);
        match cfg.store {
            config::SessionStore::Cookie => Store::Cookie(CookieStore {
                ring,
                cookie_name: cookie_name.to_owned(),
            }),
            config::SessionStore::Redis => match RedisStore::new(cfg, ring, cookie_name) {
                Ok(r) => Store::Redis(Arc::new(r)),
                Err(e) => {
                    tracing::error!(error = %e, "the Redis session store could not be set up");
                    Store::Failed(e.to_string())
                }
            },
        }
    }

    fn failed(reason: &str) -> StoreError {
        StoreError::Unavailable(reason.to_owned())
    }

    /// The session a cookie value stands for. `Ok(None)`: unknown, tampered, sealed with a retired key, or past
    /// its absolute end.
    pub async fn load(&self, cookie: &str, now: i64) -> Result<Option<Session>, StoreError> {
        let found = match self {
            Store::Cookie(c) => c.open(cookie),
            Store::Redis(r) => r.load(cookie).await?,
            Store::Failed(why) => return Err(Self::failed(why)),
        };
        Ok(found.filter(|s| s.expires_at > now))
    }

    /// Stores a new session; returns the cookie value that stands for it.
    pub async fn create(&self, s: &Session, now: i64) -> Result<String, StoreError> {
        match self {
            Store::Cookie(c) => c.seal(s),
            Store::Redis(r) => r.create(s, now).await,
            Store::Failed(why) => Err(Self::failed(why)),
        }
    }

    /// Stores a changed session (activity, revalidation, rotated refresh token).
    pub async fn update(&self, s: &Session, now: i64) -> Result<Updated, StoreError> {
        match self {
            Store::Cookie(c) => c.seal(s).map(Updated::Cookie),
            Store::Redis(r) => r.update(s, now).await,
            Store::Failed(why) => Err(Self::failed(why)),
        }
    }

    /// Ends a session (logout). Nothing to do for cookies: the caller clears the cookie.
    pub async fn remove(&self, s: &Session) -> Result<(), StoreError> {
        match self {
            Store::Cookie(_) => Ok(()),
            Store::Redis(r) => r.remove(s).await,
            Store::Failed(why) => Err(Self::failed(why)),
        }
    }

    /// The live sessions of `user`, or of everyone.
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<Session>, StoreError> {
        match self {
            Store::Cookie(_) => Err(StoreError::Unsupported),
            Store::Redis(r) => r.list(user).await,
            Store::Failed(why) => Err(Self::failed(why)),
        }
    }

    /// Ends the sessions of `target` on every replica; returns the sessions ended.
    pub async fn revoke(&self, target: &Target) -> Result<Vec<Session>, StoreError> {
        match self {
            Store::Cookie(_) => Err(StoreError::Unsupported),
            Store::Redis(r) => r.revoke(target).await,
            Store::Failed(why) => Err(Self::failed(why)),
        }
    }

    /// Whether the store answers (readiness). The cookie store always does.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Store::Cookie(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
            Store::Failed(why) => Err(Self::failed(why)),
        }
    }

    /// The Redis store, for the cross-replica refresh lock.
    pub fn redis(&self) -> Option<&Arc<RedisStore>> {
        match self {
            Store::Redis(r) => Some(r),
            Store::Cookie(_) | Store::Failed(_) => None,
        }
    }

    /// `cookie` or `redis`, for logs and readiness.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Cookie(_) => "cookie",
            Store::Redis(_) | Store::Failed(_) => "redis",
        }
    }
}

/// Sessions sealed whole into the cookie.
pub struct CookieStore {
    ring: Keyring,
    cookie_name: String,
}

impl CookieStore {
    fn open(&self, cookie: &str) -> Option<Session> {
        super::cookies::open_value(&self.ring, &self.cookie_name, cookie)
    }

    /// Seals the session; drops the refresh token (and with it revalidation) when the cookie would be too big.
    fn seal(&self, s: &Session) -> Result<String, StoreError> {
        let fits = |s: &Session| {
            let json = serde_json::to_vec(s).ok()?;
            let sealed = self.ring.seal(&self.cookie_name, &json)?;
            (sealed.len() + self.cookie_name.len() <= MAX_COOKIE_BYTES).then_some(sealed)
        };
        if let Some(sealed) = fits(s) {
            return Ok(sealed);
        }
        let mut smaller = s.clone();
        smaller.refresh_token = None;
        tracing::warn!(user = %s.username, "session too large for a cookie with the refresh token; revalidation is off for it (session.store = \"redis\" has no such limit)");
        fits(&smaller).ok_or(StoreError::TooLarge)
    }
}
