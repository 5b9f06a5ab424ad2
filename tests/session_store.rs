//! The session store contract: one suite that the cookie store and the Redis store both pass, then what only the
//! Redis store does (listing, revocation, TTLs, the refresh lock across replicas, password, TLS, outages).
//! Redis is Debian's redis-server on loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bbsso::config::{self, SessionKey, SessionStore};
use bbsso::session::Session;
use bbsso::session::keyring::Keyring;
use bbsso::session::redis::{LockTiming, RedisStore};
use bbsso::session::revalidate::Outcome;
use bbsso::session::store::{Store, StoreError, Target, Updated};
use common::redis_server::Redis;

const COOKIE: &str = "bbsso";
const NOW: i64 = 1_800_000_000;

fn key(n: u8) -> SessionKey {
    SessionKey(vec![n; 32])
}

fn settings(keys: &[SessionKey], redis: Option<&Redis>) -> config::Session {
    config::Session {
        cookie_name: COOKIE.into(),
        keys: keys.to_vec(),
        lifetime: Duration::from_secs(8 * 3600),
        idle_timeout: Duration::from_secs(3600),
        remember_me_lifetime: Duration::from_secs(30 * 86400),
        remember_me_default: false,
        revalidate_every: Some(Duration::from_secs(900)),
        store: if redis.is_some() {
            SessionStore::Redis
        } else {
            SessionStore::Cookie
        },
        redis_url: redis.map(|r| config::Secret::new(r.url.clone())),
        redis_key_prefix: redis.map(|r| r.prefix.clone()).unwrap_or_default(),
        redis_password: None,
        redis_ca_file: None,
        redis_pool_size: 2,
        redis_timeout: Duration::from_secs(1),
    }
}

/// A Redis store by itself (for the refresh lock's timing).
fn redis_store(redis: &Redis) -> RedisStore {
    let cfg = settings(&[key(1)], Some(redis));
    RedisStore::new(&cfg, Keyring::new(&cfg.keys), COOKIE).unwrap()
}

fn session(id: &str, user: &str, now: i64) -> Session {
    Session {
        id: id.into(),
        username: user.into(),
        email: Some(format!("{user}@example.com")),
        display_name: Some("Alice Example".into()),
        provider: "idp".into(),
        subject: format!("sub-{user}"),
        auth_time: now,
        issued_at: now,
        expires_at: now + 8 * 3600,
        last_active: now,
        revalidated_at: now,
        refresh_token: Some(format!("refresh-token-of-{user}-{id}-SECRET")),
        revalidation_failed_at: None,
        remember_me: false,
    }
}

/// Makes stores with given keys that share one backing (the same Redis and prefix, or none): two stores from
/// one factory are two replicas.
type Factory<'a> = &'a dyn Fn(&[SessionKey]) -> Store;

/// The contract every store keeps.
async fn contract(make: Factory<'_>) {
    let a = make(&[key(1)]);
    let b = make(&[key(1)]);
    let now = NOW;

    // A new session reads back the same, on this replica and on another with the same keys.
    let s = session("sid-alice-000001", "alice", now);
    let value = a.create(&s, now).await.unwrap();
    assert_eq!(a.load(&value, now).await.unwrap().as_ref(), Some(&s));
    assert_eq!(
        b.load(&value, now).await.unwrap().as_ref(),
        Some(&s),
        "any replica serves any session"
    );

    // The cookie value gives nothing away.
    for secret in ["refresh-token-of", "SECRET", "alice", "sid-alice"] {
        assert!(!value.contains(secret), "cookie value shows {secret:?}");
    }

    // Changes (activity, a rotated refresh token) are what later requests see, on every replica.
    let mut changed = s.clone();
    changed.last_active = now + 120;
    changed.revalidated_at = now + 120;
    changed.refresh_token = Some("rotated-refresh-token".into());
    let value = match b.update(&changed, now + 120).await.unwrap() {
        Updated::Cookie(v) => v,
        Updated::Stored => value,
        Updated::Gone => panic!("a live session is not gone"),
    };
    assert_eq!(a.load(&value, now + 121).await.unwrap().as_ref(), Some(&changed));

    // Past its absolute end it is no longer returned.
    assert_eq!(a.load(&value, changed.expires_at).await.unwrap(), None);

    // Garbage, tampering and other cookies' values read as no session, never as an error.
    let mut tampered = value.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for junk in ["", "x", "%%%", "not-base64!", &tampered, &value[..value.len() - 3]] {
        assert_eq!(a.load(junk, now).await.unwrap(), None, "{junk:?}");
    }

    // Key rotation: a replica that has the old key second still reads it; one without it does not.
    let rotated = make(&[key(2), key(1)]);
    assert!(rotated.load(&value, now + 121).await.unwrap().is_some());
    let fresh = session("sid-bob-00000001", "bob", now);
    let new_value = rotated.create(&fresh, now).await.unwrap();
    assert!(
        make(&[key(1), key(2)]).load(&new_value, now).await.unwrap().is_some(),
        "a replica with the new key second reads what the rotated one wrote"
    );
    assert_eq!(
        make(&[key(3)]).load(&value, now + 121).await.unwrap(),
        None,
        "without the key nothing opens"
    );
    assert!(a.check().await.is_ok());
}

#[tokio::test]
async fn the_cookie_store_keeps_the_contract() {
    contract(&|keys| Store::new(&settings(keys, None), COOKIE)).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_contract() {
    let redis = Redis::shared();
    contract(&|keys| Store::new(&settings(keys, Some(&redis)), COOKIE)).await;
}

#[tokio::test]
async fn cookie_store_cannot_list_or_revoke_and_says_why() {
    let store = Store::new(&settings(&[key(1)], None), COOKIE);
    assert_eq!(store.list(None).await.unwrap_err(), StoreError::Unsupported);
    let err = store.revoke(&Target::User("alice".into())).await.unwrap_err();
    assert!(err.to_string().contains("session.store = \"redis\""), "{err}");
}

#[tokio::test]
async fn redis_holds_sealed_sessions_with_ttls_and_revocation_is_immediate() {
    let redis = Redis::shared();
    let a = Store::new(&settings(&[key(1)], Some(&redis)), COOKIE);
    let b = Store::new(&settings(&[key(1)], Some(&redis)), COOKIE);
    let now = bbsso::session::now();
    let s1 = session("sid-alice-000001", "alice", now);
    let s2 = session("sid-alice-000002", "alice", now);
    let mut s3 = session("sid-carol-000001", "carol", now);
    s3.remember_me = true;
    s3.expires_at = now + 30 * 86400;
    let v1 = a.create(&s1, now).await.unwrap();
    let v2 = a.create(&s2, now).await.unwrap();
    let v3 = a.create(&s3, now).await.unwrap();

    // What Redis holds: no token, name or email in clear; TTL from idle timeout or absolute end.
    let mut raw = redis.client().await;
    let stored: String = redis::cmd("GET")
        .arg(format!("{}session:sid-alice-000001", redis.prefix))
        .query_async(&mut raw)
        .await
        .unwrap();
    for secret in ["refresh-token", "SECRET", "alice", "example.com"] {
        assert!(!stored.contains(secret), "Redis holds {secret:?} in clear");
    }
    let ttl = |id: &'static str| {
        let mut raw = raw.clone();
        let key = format!("{}session:{id}", redis.prefix);
        async move { redis::cmd("TTL").arg(key).query_async::<i64>(&mut raw).await.unwrap() }
    };
    let idle = ttl("sid-alice-000001").await;
    assert!((3590..=3600).contains(&idle), "idle timeout bounds the TTL: {idle}");
    let remembered = ttl("sid-carol-000001").await;
    assert!(
        remembered > 29 * 86400,
        "a remembered session lasts its lifetime: {remembered}"
    );

    // Listing: by user, and everyone; never the refresh token.
    let alice = b.list(Some("alice")).await.unwrap();
    assert_eq!(alice.len(), 2);
    assert!(alice.iter().all(|s| s.username == "alice"));
    assert_eq!(b.list(None).await.unwrap().len(), 3);

    // Revoking one session by id leaves the other; revoking a user ends the rest, on every replica at once.
    let ended = a.revoke(&Target::Session("sid-alice-000001".into())).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(b.load(&v1, now).await.unwrap(), None);
    assert!(b.load(&v2, now).await.unwrap().is_some());
    let ended = a.revoke(&Target::User("alice".into())).await.unwrap();
    assert_eq!(
        ended.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["sid-alice-000002"]
    );
    assert_eq!(b.load(&v2, now).await.unwrap(), None);
    assert!(
        b.load(&v3, now).await.unwrap().is_some(),
        "other users keep their sessions"
    );

    // A replica that loaded the session before the revocation cannot bring it back by touching it.
    let mut late = s2.clone();
    late.last_active = now + 60;
    assert_eq!(b.update(&late, now + 60).await.unwrap(), Updated::Gone);
    assert_eq!(b.load(&v2, now).await.unwrap(), None);
    assert!(
        a.revoke(&Target::Session("no such session!".into()))
            .await
            .unwrap()
            .is_empty()
    );

    // Logout removes the session.
    b.remove(&s3).await.unwrap();
    assert_eq!(a.load(&v3, now).await.unwrap(), None);
    assert!(a.list(None).await.unwrap().is_empty());
}

/// Two replicas that both find the session due: the provider is asked once and both use its answer.
#[tokio::test]
async fn one_refresh_across_replicas_with_a_lease_renewed_during_a_slow_exchange() {
    let redis = Redis::shared();
    let timing = LockTiming {
        lease: Duration::from_millis(300),
        wait: Duration::from_secs(10),
        poll: Duration::from_millis(20),
    };
    let replica = || redis_store(&redis).with_lock_timing(timing);
    let (a, b) = (Arc::new(replica()), Arc::new(replica()));
    let now = bbsso::session::now();
    let s = session("sid-dave-0000001", "dave", now - 1000);
    let value = Store::Redis(Arc::new(replica())).create(&s, now).await.unwrap();

    let redemptions = Arc::new(AtomicUsize::new(0));
    let seen_tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for replica in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let (s, redemptions, seen) = (s.clone(), redemptions.clone(), seen_tokens.clone());
        tasks.push(tokio::spawn(async move {
            replica
                .refresh_exclusive(&s, |rt| async move {
                    redemptions.fetch_add(1, Ordering::SeqCst);
                    seen.lock().unwrap().push(rt);
                    // Slower than three leases: without renewal another replica would redeem too.
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    Outcome::Confirmed {
                        at: bbsso::session::now(),
                        refresh_token: Some("rotated-once".into()),
                    }
                })
                .await
        }));
    }
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Confirmed { refresh_token, .. } => {
                assert_eq!(refresh_token.as_deref(), Some("rotated-once"))
            }
            other => panic!("every replica uses the one result, got {other:?}"),
        }
    }
    assert_eq!(redemptions.load(Ordering::SeqCst), 1, "one redemption");
    assert_eq!(*seen_tokens.lock().unwrap(), [s.refresh_token.clone().unwrap()]);
    let stored = Store::Redis(Arc::new(replica()))
        .load(&value, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.refresh_token.as_deref(),
        Some("rotated-once"),
        "the rotated token is stored"
    );

    // The provider refusing ends the session for every replica.
    let outcome = a
        .refresh_exclusive(&stored, |_| async {
            Outcome::Refused {
                reason: "invalid_grant".into(),
            }
        })
        .await;
    assert!(matches!(outcome, Outcome::Refused { .. }));
    let after = b
        .refresh_exclusive(&stored, |_| async { panic!("nothing to refresh") })
        .await;
    assert_eq!(after, Outcome::Removed);
}

/// A replica that died holding the lock does not block the others for longer than the lease.
#[tokio::test]
async fn a_lock_left_by_a_dead_replica_expires() {
    let redis = Redis::shared();
    let timing = LockTiming {
        lease: Duration::from_millis(300),
        wait: Duration::from_secs(5),
        poll: Duration::from_millis(20),
    };
    let store = redis_store(&redis).with_lock_timing(timing);
    let now = bbsso::session::now();
    let s = session("sid-erin-0000001", "erin", now - 1000);
    Store::new(&settings(&[key(1)], Some(&redis)), COOKIE)
        .create(&s, now)
        .await
        .unwrap();
    let mut raw = redis.client().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}refresh:sid-erin-0000001", redis.prefix))
        .arg("someone-else")
        .arg("PX")
        .arg(600)
        .query_async(&mut raw)
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = store
        .refresh_exclusive(&s, |_| async {
            Outcome::Confirmed {
                at: bbsso::session::now(),
                refresh_token: None,
            }
        })
        .await;
    assert!(matches!(outcome, Outcome::Confirmed { .. }), "{outcome:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the lease to run out"
    );
}

#[tokio::test]
async fn password_protected_redis() {
    let redis = Redis::private(&["--requirepass", "redis-test-password-42"]);
    let now = bbsso::session::now();
    let s = session("sid-frank-000001", "frank", now);

    let mut with_password = settings(&[key(1)], Some(&redis));
    with_password.redis_password = Some(config::Secret::new("redis-test-password-42".into()));
    let store = Store::new(&with_password, COOKIE);
    let value = store.create(&s, now).await.unwrap();
    assert!(store.load(&value, now).await.unwrap().is_some());

    let mut in_url = settings(&[key(1)], Some(&redis));
    in_url.redis_url = Some(config::Secret::new(
        redis.url.replace("redis://", "redis://:redis-test-password-42@"),
    ));
    assert!(Store::new(&in_url, COOKIE).load(&value, now).await.unwrap().is_some());

    let mut wrong = settings(&[key(1)], Some(&redis));
    wrong.redis_password = Some(config::Secret::new("not-the-password".into()));
    let err = Store::new(&wrong, COOKIE).check().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)));
    assert!(
        !text.contains("not-the-password"),
        "errors never show the password: {text}"
    );
}

#[tokio::test]
async fn redis_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (installed by scripts/setup)")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=bbsso test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let tls_port = common::idp::free_port().to_string();
    let path = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (cert, key_file, ca) = (path("redis.pem"), path("redis.key"), path("ca.pem"));
    let redis = Redis::private(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key_file,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let mut cfg = settings(&[key(1)], Some(&redis));
    cfg.redis_url = Some(config::Secret::new(format!("rediss://127.0.0.1:{tls_port}")));
    cfg.redis_ca_file = Some(std::fs::read(d.join("ca.pem")).unwrap());
    let store = Store::new(&cfg, COOKIE);
    store.check().await.expect("TLS connection with the private CA");
    let now = bbsso::session::now();
    let value = store
        .create(&session("sid-grace-000001", "grace", now), now)
        .await
        .unwrap();
    assert!(store.load(&value, now).await.unwrap().is_some());

    // Without the CA the server's certificate is not trusted.
    cfg.redis_ca_file = None;
    let err = Store::new(&cfg, COOKIE).check().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn redis_down_is_an_error_quickly_and_the_store_recovers_by_itself() {
    let mut redis = Redis::private(&[]);
    let store = Store::new(&settings(&[key(1)], Some(&redis)), COOKIE);
    let now = bbsso::session::now();
    let value = store
        .create(&session("sid-heidi-000001", "heidi", now), now)
        .await
        .unwrap();
    redis.stop();
    let started = Instant::now();
    let err = store.load(&value, now).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(store.check().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    redis.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.load(&value, now).await {
            Ok(Some(s)) => {
                assert_eq!(s.username, "heidi", "the session survived the restart");
                break;
            }
            other if Instant::now() > deadline => panic!("no recovery: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A replica that loaded a session before another replica refreshed it cannot put the old refresh token back
/// when it records activity.
#[tokio::test]
async fn an_activity_update_never_overwrites_a_newer_refresh() {
    let redis = Redis::shared();
    let a = Store::new(&settings(&[key(1)], Some(&redis)), COOKIE);
    let b = Store::new(&settings(&[key(1)], Some(&redis)), COOKIE);
    let now = bbsso::session::now();
    let s = session("sid-ivan-0000001", "Ivan", now - 100);
    let value = a.create(&s, now).await.unwrap();
    let stale = b.load(&value, now).await.unwrap().unwrap();
    let mut refreshed = s.clone();
    refreshed.revalidated_at = now;
    refreshed.refresh_token = Some("rotated".into());
    assert_eq!(a.update(&refreshed, now).await.unwrap(), Updated::Stored);
    let mut touched = stale.clone();
    touched.last_active = now;
    assert_eq!(b.update(&touched, now).await.unwrap(), Updated::Stored);
    let kept = a.load(&value, now).await.unwrap().unwrap();
    assert_eq!(
        kept.refresh_token.as_deref(),
        Some("rotated"),
        "the newer refresh token stays"
    );
    // The user index ignores case, as Bitbucket usernames do.
    assert_eq!(a.list(Some("ivan")).await.unwrap().len(), 1);
    assert_eq!(a.revoke(&Target::User("IVAN".into())).await.unwrap().len(), 1);
    assert_eq!(b.load(&value, now).await.unwrap(), None);
}

/// A replica whose lock was taken over (its lease ran out while it was stuck) keeps its result to itself.
#[tokio::test]
async fn a_replica_that_lost_the_lock_stores_nothing() {
    let redis = Redis::shared();
    let store = redis_store(&redis).with_lock_timing(LockTiming {
        lease: Duration::from_secs(5),
        wait: Duration::from_secs(5),
        poll: Duration::from_millis(20),
    });
    let now = bbsso::session::now();
    let s = session("sid-judy-0000001", "judy", now - 1000);
    let value = Store::Redis(Arc::new(redis_store(&redis)))
        .create(&s, now)
        .await
        .unwrap();
    let lock_key = format!("{}refresh:sid-judy-0000001", redis.prefix);
    let mut raw = redis.client().await;
    let outcome = {
        let (lock_key, mut raw) = (lock_key.clone(), raw.clone());
        store
            .refresh_exclusive(&s, move |_| async move {
                let _: () = redis::cmd("SET")
                    .arg(&lock_key)
                    .arg("another-replica")
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                Outcome::Confirmed {
                    at: bbsso::session::now(),
                    refresh_token: Some("from-a-lost-lock".into()),
                }
            })
            .await
    };
    assert!(matches!(outcome, Outcome::Unavailable { .. }), "{outcome:?}");
    let stored = Store::Redis(Arc::new(redis_store(&redis)))
        .load(&value, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.refresh_token, s.refresh_token, "nothing stored without the lock");
    let holder: String = redis::cmd("GET").arg(&lock_key).query_async(&mut raw).await.unwrap();
    assert_eq!(holder, "another-replica", "the other replica's lock is left alone");
}
