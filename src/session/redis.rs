//! The Redis session store. Keys (after `session.redis_key_prefix`):
//! - `session:{id}`: the session, sealed with the session keys (the key name is the associated data), with a TTL
//!   that ends it at its absolute end or idle timeout, whichever comes first;
//! - `user:{name}`: the set of a user's session ids, for listing and revocation;
//! - `refresh:{id}`: the lock that lets one replica at a time redeem the session's refresh token.
//!
//! The browser's cookie holds only the sealed session id. A pool of multiplexed connections reconnects by itself;
//! every command has a deadline, so a Redis outage shows as an error quickly instead of hanging requests.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisResult, Script, TlsCertificates};

use super::keyring::Keyring;
use super::revalidate::Outcome;
use super::store::{StoreError, Target, Updated};
use super::{Session, secs};
use crate::config;

/// The Redis client `cfg` describes (URL, password, trusted roots). Connects to nothing: configuration checks
/// use it too.
pub fn client(cfg: &config::Session) -> Result<Client, String> {
    let url = cfg
        .redis_url
        .as_ref()
        .ok_or("is required when session.store = \"redis\"")?;
    let mut info = url.expose().into_connection_info().map_err(|e| {
        format!("is not a usable Redis URL ({e}); expected redis://[:password@]host[:port][/db] or rediss://...")
    })?;
    if let Some(password) = &cfg.redis_password {
        let settings = info.redis_settings().clone().set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    match &cfg.redis_ca_file {
        Some(pem) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        None => Client::open(info),
    }
    .map_err(|e| format!("cannot be used: {e}"))
}

/// Marks a sealed Redis handle (as opposed to a whole sealed session) in the cookie.
const HANDLE_PREFIX: &str = "r1:";
/// Most sessions one listing returns.
const MAX_LISTED: usize = 10_000;

/// How the refresh lock behaves; tests shorten it.
#[derive(Debug, Clone, Copy)]
pub struct LockTiming {
    /// The lock expires after this unless renewed (a replica that dies mid-exchange frees it).
    pub lease: Duration,
    /// How long a replica waits for another's refresh before giving up (the session survives: grace period).
    pub wait: Duration,
    /// How often a waiting replica looks again.
    pub poll: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming {
            lease: Duration::from_secs(10),
            wait: Duration::from_secs(30),
            poll: Duration::from_millis(100),
        }
    }
}

/// Sessions in Redis.
pub struct RedisStore {
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    ring: Keyring,
    cookie_name: String,
    idle_secs: i64,
    /// How long a user's index outlives its last login: the longest a session can last.
    index_secs: i64,
    lock: LockTiming,
}

impl RedisStore {
    /// Prepares the pool; connections are made on first use and remade after failures.
    pub fn new(cfg: &config::Session, ring: Keyring, cookie_name: &str) -> Result<Self, StoreError> {
        let client = client(cfg).map_err(StoreError::Unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.redis_timeout))
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let pool = (0..cfg.redis_pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()))
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| StoreError::Unavailable(format!("session.redis_url: {e}")))?;
        Ok(RedisStore {
            pool,
            next: AtomicUsize::new(0),
            prefix: cfg.redis_key_prefix.clone(),
            timeout: cfg.redis_timeout,
            ring,
            cookie_name: cookie_name.to_owned(),
            idle_secs: secs(cfg.idle_timeout),
            index_secs: secs(cfg.lifetime.max(cfg.remember_me_lifetime)),
            lock: LockTiming::default(),
        })
    }

    /// Replaces the refresh-lock timing (tests).
    pub fn with_lock_timing(mut self, lock: LockTiming) -> Self {
        self.lock = lock;
        self
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    /// Runs one exchange with Redis under the command deadline.
    async fn run<T>(&self, what: &str, f: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("{what}: {e}"))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: no answer from Redis within {:?}",
                self.timeout
            ))),
        }
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}user:{user}", self.prefix)
    }

    fn lock_key(&self, id: &str) -> String {
        format!("{}refresh:{id}", self.prefix)
    }

    /// The cookie value for a session id.
    fn handle(&self, id: &str) -> Result<String, StoreError> {
        self.ring
            .seal(&self.cookie_name, format!("{HANDLE_PREFIX}{id}").as_bytes())
            .ok_or_else(|| StoreError::Unavailable("no session key configured".into()))
    }

    /// The session id in a cookie value, if it is one of ours.
    fn open_handle(&self, cookie: &str) -> Option<String> {
        let plain = self.ring.open(&self.cookie_name, cookie).ok()?;
        let text = String::from_utf8(plain).ok()?;
        let id = text.strip_prefix(HANDLE_PREFIX)?;
        valid_id(id).then(|| id.to_owned())
    }

    fn seal(&self, s: &Session) -> Result<String, StoreError> {
        let json = serde_json::to_vec(s).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.ring
            .seal(&self.session_key(&s.id), &json)
            .ok_or_else(|| StoreError::Unavailable("no session key configured".into()))
    }

    fn open(&self, id: &str, sealed: &str) -> Option<Session> {
        let plain = self.ring.open(&self.session_key(id), sealed).ok()?;
        serde_json::from_slice::<Session>(&plain).ok().filter(|s| s.id == id)
    }

    /// Seconds until the session ends by itself: absolute end, or idle timeout unless remembered.
    fn ttl(&self, s: &Session, now: i64) -> u64 {
        let mut end = s.expires_at;
        if !s.remember_me {
            end = end.min(s.last_active.saturating_add(self.idle_secs));
        }
        u64::try_from(end - now).unwrap_or(0).max(1)
    }

    pub(super) async fn load(&self, cookie: &str) -> Result<Option<Session>, StoreError> {
        let Some(id) = self.open_handle(cookie) else {
            return Ok(None);
        };
        self.load_id(&id).await
    }

    async fn load_id(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let mut conn = self.conn();
        let sealed: Option<String> = self
            .run(
                "read session",
                redis::cmd("GET").arg(self.session_key(id)).query_async(&mut conn),
            )
            .await?;
        Ok(sealed.and_then(|v| self.open(id, &v)))
    }

    pub(super) async fn create(&self, s: &Session, now: i64) -> Result<String, StoreError> {
        let value = self.seal(s)?;
        let user_key = self.user_key(&s.username);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.session_key(&s.id))
            .arg(value)
            .arg("EX")
            .arg(self.ttl(s, now))
            .ignore()
            .cmd("SADD")
            .arg(&user_key)
            .arg(&s.id)
            .ignore()
            .cmd("EXPIRE")
            .arg(&user_key)
            .arg(self.index_secs.max(1))
            .ignore();
        let mut conn = self.conn();
        self.run("store session", pipe.query_async::<()>(&mut conn)).await?;
        self.handle(&s.id)
    }

    /// Saves a changed session only if it still exists: a revoked session is never brought back.
    pub(super) async fn update(&self, s: &Session, now: i64) -> Result<Updated, StoreError> {
        let value = self.seal(s)?;
        let mut conn = self.conn();
        let set: Option<String> = self
            .run(
                "update session",
                redis::cmd("SET")
                    .arg(self.session_key(&s.id))
                    .arg(value)
                    .arg("EX")
                    .arg(self.ttl(s, now))
                    .arg("XX")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(if set.is_some() { Updated::Stored } else { Updated::Gone })
    }

    pub(super) async fn remove(&self, s: &Session) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.session_key(&s.id))
            .ignore()
            .cmd("SREM")
            .arg(self.user_key(&s.username))
            .arg(&s.id)
            .ignore();
        let mut conn = self.conn();
        self.run("remove session", pipe.query_async::<()>(&mut conn)).await
    }

    pub(super) async fn list(&self, user: Option<&str>) -> Result<Vec<Session>, StoreError> {
        let ids = match user {
            Some(u) => {
                let mut conn = self.conn();
                let ids: Vec<String> = self
                    .run(
                        "list sessions",
                        redis::cmd("SMEMBERS").arg(self.user_key(u)).query_async(&mut conn),
                    )
                    .await?;
                ids
            }
            None => self.scan_ids().await?,
        };
        let ids: Vec<String> = ids.into_iter().filter(|id| valid_id(id)).take(MAX_LISTED).collect();
        let mut sessions = Vec::with_capacity(ids.len());
        let mut stale = Vec::new();
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| self.session_key(id)).collect();
            let mut conn = self.conn();
            let values: Vec<Option<String>> = self
                .run("read sessions", redis::cmd("MGET").arg(&keys).query_async(&mut conn))
                .await?;
            for (id, value) in chunk.iter().zip(values) {
                match value.and_then(|v| self.open(id, &v)) {
                    Some(s) => sessions.push(s),
                    None => stale.push(id.clone()),
                }
            }
        }
        if let (Some(u), false) = (user, stale.is_empty()) {
            // Ended by their TTL: tidy the index (best effort).
            let mut conn = self.conn();
            let _ = self
                .run::<()>(
                    "tidy index",
                    redis::cmd("SREM")
                        .arg(self.user_key(u))
                        .arg(&stale)
                        .query_async(&mut conn),
                )
                .await;
        }
        sessions.sort_by(|a, b| a.username.cmp(&b.username).then(b.issued_at.cmp(&a.issued_at)));
        Ok(sessions)
    }

    /// Every session id, by scanning the key space under the prefix.
    async fn scan_ids(&self) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}session:*", glob_escape(&self.prefix));
        let strip = self.session_key("");
        let mut ids = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut conn = self.conn();
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    "scan sessions",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            ids.extend(keys.iter().filter_map(|k| k.strip_prefix(&strip)).map(str::to_owned));
            cursor = next;
            if cursor == 0 || ids.len() >= MAX_LISTED {
                return Ok(ids);
            }
        }
    }

    pub(super) async fn revoke(&self, target: &Target) -> Result<Vec<Session>, StoreError> {
        let sessions = match target {
            Target::User(u) => self.list(Some(u)).await?,
            Target::Session(id) if valid_id(id) => self.load_id(id).await?.into_iter().collect(),
            Target::Session(_) => Vec::new(),
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for s in &sessions {
            pipe.cmd("DEL")
                .arg(self.session_key(&s.id))
                .ignore()
                .cmd("SREM")
                .arg(self.user_key(&s.username))
                .arg(&s.id)
                .ignore();
        }
        if let Target::User(u) = target {
            pipe.cmd("DEL").arg(self.user_key(u)).ignore();
        }
        let mut conn = self.conn();
        self.run("revoke sessions", pipe.query_async::<()>(&mut conn)).await?;
        Ok(sessions)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let pong: String = self.run("ping", redis::cmd("PING").query_async(&mut conn)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("ping answered {pong:?}")))
        }
    }

    /// Revalidates `s` with at most one refresh-token redemption at a time across every replica sharing this
    /// Redis. The replica that takes the lock redeems the current refresh token (`redeem`), renews the lock's
    /// lease while the provider is slow, stores the result (a rotated refresh token, or the session's end) and
    /// only then lets go; the others wait and use what it stored.
    pub async fn refresh_exclusive<F, Fut>(&self, s: &Session, redeem: F) -> Outcome
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let token = crate::oidc::flow::random_token(16);
        let lock_key = self.lock_key(&s.id);
        let deadline = Instant::now() + self.lock.wait;
        let mut redeem = Some(redeem);
        loop {
            let current = match self.load_id(&s.id).await {
                Err(e) => return Outcome::Unavailable { reason: e.to_string() },
                Ok(None) => return Outcome::Removed,
                Ok(Some(c)) => c,
            };
            if current.revalidated_at > s.revalidated_at {
                // Another replica (or request) has just done it.
                return Outcome::Confirmed {
                    at: current.revalidated_at,
                    refresh_token: current.refresh_token,
                };
            }
            let mut conn = self.conn();
            let acquired: Option<String> = match self
                .run(
                    "take refresh lock",
                    redis::cmd("SET")
                        .arg(&lock_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(self.lock.lease))
                        .query_async(&mut conn),
                )
                .await
            {
                Ok(a) => a,
                Err(e) => return Outcome::Unavailable { reason: e.to_string() },
            };
            if acquired.is_some()
                && let Some(redeem) = redeem.take()
            {
                return self.redeem_locked(current, &lock_key, &token, redeem).await;
            }
            if Instant::now() >= deadline {
                return Outcome::Unavailable {
                    reason: "another replica is still refreshing this session".into(),
                };
            }
            tokio::time::sleep(self.lock.poll).await;
        }
    }

    async fn redeem_locked<F, Fut>(&self, current: Session, lock_key: &str, token: &str, redeem: F) -> Outcome
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let renewer = {
            let mut conn = self.conn();
            let key = lock_key.to_owned();
            let token = token.to_owned();
            let lease = self.lock.lease;
            tokio::spawn(async move {
                let renew = Script::new(RENEW_IF_OWNER);
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let renewed: RedisResult<i64> = renew
                        .key(&key)
                        .arg(&token)
                        .arg(millis(lease))
                        .invoke_async(&mut conn)
                        .await;
                    if !matches!(renewed, Ok(1)) {
                        tracing::warn!("refresh lock lease could not be renewed");
                        return;
                    }
                }
            })
        };
        let Some(refresh_token) = current.refresh_token.clone() else {
            renewer.abort();
            self.release(lock_key, token).await;
            return Outcome::Refused {
                reason: "no refresh token".into(),
            };
        };
        let outcome = redeem(refresh_token).await;
        renewer.abort();
        let stored = match &outcome {
            Outcome::Confirmed { at, refresh_token } => {
                let mut next = current.clone();
                next.revalidated_at = *at;
                next.revalidation_failed_at = None;
                if let Some(rt) = refresh_token {
                    next.refresh_token = Some(rt.clone());
                }
                self.update(&next, super::now()).await.map(|_| ())
            }
            Outcome::Refused { .. } => self.remove(&current).await,
            Outcome::Unavailable { .. } | Outcome::Removed => Ok(()),
        };
        self.release(lock_key, token).await;
        match stored {
            Ok(()) => outcome,
            // The provider answered but the result could not be shared: treat as not yet revalidated.
            Err(e) => Outcome::Unavailable { reason: e.to_string() },
        }
    }

    async fn release(&self, lock_key: &str, token: &str) {
        let mut conn = self.conn();
        let release = Script::new(DELETE_IF_OWNER);
        let _ = self
            .run::<i64>(
                "release refresh lock",
                release.key(lock_key).arg(token).invoke_async(&mut conn),
            )
            .await;
    }
}

const RENEW_IF_OWNER: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const DELETE_IF_OWNER: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Session ids are the proxy's own random tokens; anything else never reaches a Redis key.
fn valid_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Escapes Redis `MATCH` glob characters.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_globs() {
        assert!(valid_id("Ab3-_xyz09"));
        assert!(!valid_id("short"));
        assert!(!valid_id("has space in it"));
        assert!(!valid_id("a*b?c[d]e:f"));
        assert_eq!(glob_escape("bb*so:[x]"), "bb\\*so:\\[x\\]");
    }
}
