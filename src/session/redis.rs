//! The Redis session store. Keys (after `session.redis_key_prefix`):
//! - `session:{id}`: the session, sealed with the session keys (the key name is the associated data), with a TTL
//!   that ends it at its absolute end or idle timeout, whichever comes first;
//! - `user:{name}`: the set of a user's session ids, for listing and revocation;
//! - `refresh:{id}`: the lock that lets one replica at a time redeem the session's refresh token.
//!
//! The browser's cookie holds only the sealed session id. A pool of multiplexed connections reconnects by itself;
//! every command has a deadline, so a Redis outage shows as an error quickly instead of hanging requests.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisResult, TlsCertificates};

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
            // Longer than the provider's whole HTTP timeout (15 s), so that the lease outlives a slow exchange even
            // if renewals fail; renewed every third of it while the provider answers.
            lease: Duration::from_secs(20),
            wait: Duration::from_secs(30),
            poll: Duration::from_millis(100),
        }
    }
}

/// The connections; `generation` counts replacements of the whole pool.
struct Pool {
    managers: Vec<ConnectionManager>,
    generation: u64,
}

/// What [`RedisStore::run`] sends: a command or a pipeline.
trait Exec {
    async fn exec<T: FromRedisValue>(&self, conn: &mut ConnectionManager) -> RedisResult<T>;
}

impl Exec for Cmd {
    async fn exec<T: FromRedisValue>(&self, conn: &mut ConnectionManager) -> RedisResult<T> {
        self.query_async(conn).await
    }
}

impl Exec for Pipeline {
    async fn exec<T: FromRedisValue>(&self, conn: &mut ConnectionManager) -> RedisResult<T> {
        self.query_async(conn).await
    }
}

/// Sessions in Redis.
pub struct RedisStore {
    pool: Mutex<Pool>,
    next: AtomicUsize,
    client: Client,
    manager_config: ConnectionManagerConfig,
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
        let managers = (0..cfg.redis_pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()))
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| StoreError::Unavailable(format!("session.redis_url: {e}")))?;
        Ok(RedisStore {
            pool: Mutex::new(Pool {
                managers,
                generation: 0,
            }),
            next: AtomicUsize::new(0),
            client,
            manager_config,
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

    /// The next connection of the pool (round robin), with the pool's generation.
    fn conn(&self) -> (u64, ConnectionManager) {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.managers.len();
        (pool.generation, pool.managers[i].clone())
    }

    /// Replaces every connection of the pool, unless another request did since `generation`.
    fn renew_pool(&self, generation: u64) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.generation != generation {
            return;
        }
        let fresh: RedisResult<Vec<ConnectionManager>> = (0..pool.managers.len())
            .map(|_| ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager_config.clone()))
            .collect();
        if let Ok(managers) = fresh {
            pool.managers = managers;
            pool.generation += 1;
        }
    }

    /// Runs one command or pipeline under the command deadline. When the connection fails (anything but an
    /// error answer from Redis itself), the pool is replaced and the command tried once more on a new
    /// connection: after a Redis restart the old sockets are dead, and a connection manager does not notice
    /// every one of them by itself.
    async fn run<T: FromRedisValue>(&self, what: &str, request: &(impl Exec + ?Sized)) -> Result<T, StoreError> {
        let mut failure = String::new();
        for _attempt in 0..2 {
            let (generation, mut conn) = self.conn();
            failure = match tokio::time::timeout(self.timeout, request.exec(&mut conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                    return Err(StoreError::Unavailable(format!("{what}: {e}")));
                }
                Ok(Err(e)) => format!("{what}: {e}"),
                Err(_) => format!("{what}: no answer from Redis within {:?}", self.timeout),
            };
            self.renew_pool(generation);
        }
        Err(StoreError::Unavailable(failure))
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    /// The user index; Bitbucket usernames are case-insensitive, so is the index.
    fn user_key(&self, user: &str) -> String {
        format!("{}user:{}", self.prefix, user.to_lowercase())
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

    /// The stored value: `{revalidated_at}:{sealed session}`. The revalidation time is in clear so that a
    /// Redis script can refuse to overwrite a newer copy.
    fn seal(&self, s: &Session) -> Result<String, StoreError> {
        let json = serde_json::to_vec(s).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let sealed = self
            .ring
            .seal(&self.session_key(&s.id), &json)
            .ok_or_else(|| StoreError::Unavailable("no session key configured".into()))?;
        Ok(format!("{}:{sealed}", s.revalidated_at.max(0)))
    }

    fn open(&self, id: &str, value: &str) -> Option<Session> {
        let (_, sealed) = value.split_once(':')?;
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
        let sealed: Option<String> = self
            .run("read session", redis::cmd("GET").arg(self.session_key(id)))
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
        self.run::<()>("store session", &pipe).await?;
        self.handle(&s.id)
    }

    /// Saves a changed session only if it still exists: a revoked session is never brought back.
    pub(super) async fn update(&self, s: &Session, now: i64) -> Result<Updated, StoreError> {
        let value = self.seal(s)?;
        let outcome: i64 = self
            .run(
                "update session",
                redis::cmd("EVAL")
                    .arg(UPDATE_UNLESS_NEWER)
                    .arg(1)
                    .arg(self.session_key(&s.id))
                    .arg(value)
                    .arg(s.revalidated_at.max(0))
                    .arg(self.ttl(s, now)),
            )
            .await?;
        Ok(match outcome {
            0 => Updated::Gone,
            // 2: another replica revalidated meanwhile; its copy (with the current refresh token) stays.
            _ => Updated::Stored,
        })
    }

    /// Adds to `pipe` what removes a session: its key and its place in the user's index.
    fn forget(&self, pipe: &mut Pipeline, s: &Session) {
        pipe.cmd("DEL")
            .arg(self.session_key(&s.id))
            .ignore()
            .cmd("SREM")
            .arg(self.user_key(&s.username))
            .arg(&s.id)
            .ignore();
    }

    pub(super) async fn remove(&self, s: &Session) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        self.forget(&mut pipe, s);
        self.run::<()>("remove session", &pipe).await
    }

    pub(super) async fn list(&self, user: Option<&str>) -> Result<Vec<Session>, StoreError> {
        let ids = match user {
            Some(u) => {
                let ids: Vec<String> = self
                    .run("list sessions", redis::cmd("SMEMBERS").arg(self.user_key(u)))
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
            let values: Vec<Option<String>> = self.run("read sessions", redis::cmd("MGET").arg(&keys)).await?;
            for (id, value) in chunk.iter().zip(values) {
                match value.and_then(|v| self.open(id, &v)) {
                    Some(s) => sessions.push(s),
                    None => stale.push(id.clone()),
                }
            }
        }
        if let (Some(u), false) = (user, stale.is_empty()) {
            // Ended by their TTL: tidy the index (best effort).
            let _ = self
                .run::<()>("tidy index", redis::cmd("SREM").arg(self.user_key(u)).arg(&stale))
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
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    "scan sessions",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
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
            self.forget(&mut pipe, s);
        }
        self.run::<()>("revoke sessions", &pipe).await?;
        Ok(sessions)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.run("ping", &redis::cmd("PING")).await?;
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
        loop {
            match self.newer_result(s).await {
                Ok(Some(done)) => return done,
                Ok(None) => {}
                Err(e) => return Outcome::Unavailable { reason: e.to_string() },
            }
            let acquired: Option<String> = match self
                .run(
                    "take refresh lock",
                    redis::cmd("SET")
                        .arg(&lock_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(self.lock.lease)),
                )
                .await
            {
                Ok(a) => a,
                Err(e) => return Outcome::Unavailable { reason: e.to_string() },
            };
            if acquired.is_some() {
                // Read again under the lock: another replica may have finished between the read above and the lock.
                let current = match self.load_id(&s.id).await {
                    Ok(Some(c)) if c.revalidated_at <= s.revalidated_at => c,
                    other => {
                        self.release(&lock_key, &token).await;
                        return match other {
                            Ok(Some(c)) => Outcome::Confirmed {
                                at: c.revalidated_at,
                                refresh_token: c.refresh_token,
                            },
                            Ok(None) => Outcome::Removed,
                            Err(e) => Outcome::Unavailable { reason: e.to_string() },
                        };
                    }
                };
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

    /// What the store says when it already holds a newer revalidation than `s` (or no longer holds `s`).
    async fn newer_result(&self, s: &Session) -> Result<Option<Outcome>, StoreError> {
        Ok(match self.load_id(&s.id).await? {
            None => Some(Outcome::Removed),
            Some(c) if c.revalidated_at > s.revalidated_at => Some(Outcome::Confirmed {
                at: c.revalidated_at,
                refresh_token: c.refresh_token,
            }),
            Some(_) => None,
        })
    }

    async fn redeem_locked<F, Fut>(&self, current: Session, lock_key: &str, token: &str, redeem: F) -> Outcome
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let _renewer = AbortOnDrop({
            let (_, mut conn) = self.conn();
            let mut renew = redis::cmd("EVAL");
            renew
                .arg(RENEW_IF_OWNER)
                .arg(1)
                .arg(lock_key)
                .arg(token)
                .arg(millis(self.lock.lease));
            let lease = self.lock.lease;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match renew.query_async::<i64>(&mut conn).await {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::warn!("refresh lock lost before the provider answered");
                            return;
                        }
                        // A Redis blip: try again at the next tick (the lease outlasts a few of them).
                        Err(e) => tracing::warn!(error = %e, "refresh lock lease could not be renewed"),
                    }
                }
            })
        });
        let Some(refresh_token) = current.refresh_token.clone() else {
            self.release(lock_key, token).await;
            return Outcome::Refused {
                reason: "no refresh token".into(),
            };
        };
        let outcome = redeem(refresh_token).await;
        // Share the result only while still holding the lock: a replica that lost it must not overwrite (or
        // end) a session another replica has refreshed meanwhile.
        let stored = match &outcome {
            Outcome::Confirmed { at, refresh_token } => {
                let mut next = current.clone();
                next.revalidated_at = *at;
                next.revalidation_failed_at = None;
                if let Some(rt) = refresh_token {
                    next.refresh_token = Some(rt.clone());
                }
                match self.seal(&next) {
                    Ok(value) => {
                        self.run::<i64>(
                            "store refreshed session",
                            redis::cmd("EVAL")
                                .arg(STORE_IF_OWNER)
                                .arg(2)
                                .arg(lock_key)
                                .arg(self.session_key(&next.id))
                                .arg(token)
                                .arg(value)
                                .arg(self.ttl(&next, super::now())),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            Outcome::Refused { .. } => {
                self.run::<i64>(
                    "end refused session",
                    redis::cmd("EVAL")
                        .arg(END_IF_OWNER)
                        .arg(3)
                        .arg(lock_key)
                        .arg(self.session_key(&current.id))
                        .arg(self.user_key(&current.username))
                        .arg(token)
                        .arg(&current.id),
                )
                .await
            }
            Outcome::Unavailable { .. } | Outcome::Removed => Ok(1),
        };
        self.release(lock_key, token).await;
        match stored {
            Ok(1) => outcome,
            Ok(_) => Outcome::Unavailable {
                reason: "the refresh lock expired before the result was stored".into(),
            },
            // The provider answered but the result could not be shared: treat as not yet revalidated.
            Err(e) => Outcome::Unavailable { reason: e.to_string() },
        }
    }

    async fn release(&self, lock_key: &str, token: &str) {
        let _ = self
            .run::<i64>(
                "release refresh lock",
                redis::cmd("EVAL").arg(DELETE_IF_OWNER).arg(1).arg(lock_key).arg(token),
            )
            .await;
    }
}

/// Stops a spawned task when dropped (the lease renewer ends with its request, however that ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const RENEW_IF_OWNER: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const DELETE_IF_OWNER: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// KEYS: lock, session. ARGV: owner token, value, TTL. 1 stored, 0 lock lost, -1 session gone.
const STORE_IF_OWNER: &str = "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end \
     if redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[3], 'XX') then return 1 else return -1 end";
/// KEYS: lock, session, user index. ARGV: owner token, session id. 1 ended, 0 lock lost.
const END_IF_OWNER: &str = "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end \
     redis.call('del', KEYS[2]) redis.call('srem', KEYS[3], ARGV[2]) return 1";
/// KEYS: session. ARGV: value, its revalidation time, TTL. 1 stored, 0 gone, 2 skipped: the stored session was
/// revalidated later than the caller's copy (which would put back a rotated-away refresh token).
const UPDATE_UNLESS_NEWER: &str = "local cur = redis.call('get', KEYS[1]) if not cur then return 0 end \
     local rv = tonumber(string.match(cur, '^(%d+):')) \
     if rv and rv > tonumber(ARGV[2]) then return 2 end \
     redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[3]) return 1";

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
