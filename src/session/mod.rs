//! Sessions: what a signed-in browser carries (encrypted in a cookie), the pending-login state of a sign-in in
//! progress, and the pure rules for expiry, idle time and revalidation.

pub mod cookies;
pub mod keyring;
pub mod redis;
pub mod revalidate;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::config;

/// A signed-in user's session. Identity only, plus the refresh token when revalidation is on.
/// Short field names keep the cookie small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id, new at every login.
    #[serde(rename = "i")]
    pub id: String,
    /// The Bitbucket username.
    #[serde(rename = "u")]
    pub username: String,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Provider id.
    #[serde(rename = "p")]
    pub provider: String,
    /// The provider's subject (`sub`), for audit.
    #[serde(rename = "s")]
    pub subject: String,
    /// When the user authenticated at the provider (unix seconds).
    #[serde(rename = "at")]
    pub auth_time: i64,
    /// When this session was created.
    #[serde(rename = "ia")]
    pub issued_at: i64,
    /// Absolute end.
    #[serde(rename = "x")]
    pub expires_at: i64,
    /// Last request seen (updated at most once a minute).
    #[serde(rename = "la")]
    pub last_active: i64,
    /// Last successful check at the provider.
    #[serde(rename = "rv")]
    pub revalidated_at: i64,
    #[serde(rename = "rt", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When revalidation first failed because the provider could not be asked; cleared by a success.
    #[serde(rename = "rf", default, skip_serializing_if = "Option::is_none")]
    pub revalidation_failed_at: Option<i64>,
    /// Started with "remember me": persistent cookie and `remember_me_lifetime`.
    #[serde(rename = "rm", default)]
    pub remember_me: bool,
}

/// How often the cookie is re-issued to record activity.
pub const TOUCH_EVERY_SECS: i64 = 60;

/// What to do with a session on a request at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Usable. `touch`: re-issue the cookie with a new `last_active`; `revalidate`: check at the provider first.
    Valid { touch: bool, revalidate: bool },
    /// Past its absolute lifetime.
    Expired,
    /// Unused for longer than the idle timeout.
    Idle,
    /// The provider could not be asked for longer than the grace period (one more `revalidate_every`).
    Unverified,
}

/// The pure session rules.
pub fn verdict(s: &Session, now: i64, cfg: &config::Session) -> Verdict {
    if now >= s.expires_at {
        return Verdict::Expired;
    }
    let idle = secs(cfg.idle_timeout);
    if !s.remember_me && now - s.last_active >= idle {
        return Verdict::Idle;
    }
    let revalidate = match (cfg.revalidate_every, &s.refresh_token) {
        (Some(every), Some(_)) => {
            let every = secs(every);
            // Transient provider errors are survived for one more interval, then the session ends. A session
            // that was merely not used meanwhile is revalidated at its next request like any other.
            if s.revalidation_failed_at.is_some_and(|failed| now - failed >= every) {
                return Verdict::Unverified;
            }
            now - s.revalidated_at >= every
        }
        _ => false,
    };
    Verdict::Valid {
        touch: now - s.last_active >= TOUCH_EVERY_SECS,
        revalidate,
    }
}

/// A sign-in in progress, kept in its own short-lived encrypted cookie so that any replica can finish it and
/// several tabs can sign in at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    #[serde(rename = "st")]
    pub state: String,
    #[serde(rename = "no")]
    pub nonce: String,
    #[serde(rename = "pv")]
    pub pkce_verifier: String,
    /// Same-origin path to return to.
    #[serde(rename = "rd")]
    pub return_to: String,
    #[serde(rename = "p")]
    pub provider: String,
    #[serde(rename = "t")]
    pub started_at: i64,
    #[serde(rename = "rm", default)]
    pub remember_me: bool,
    /// A run of the test configuration page: show the claims, sign nobody in.
    #[serde(rename = "tp", default)]
    pub test: bool,
}

/// How long a sign-in may take at the provider.
pub const PENDING_LOGIN_SECS: i64 = 600;

/// Whole seconds of a duration, saturating.
pub fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Now, in unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(secs)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(revalidate: Option<u64>) -> config::Session {
        config::Session {
            cookie_name: "bbsso".into(),
            keys: vec![],
            lifetime: Duration::from_secs(8 * 3600),
            idle_timeout: Duration::from_secs(3600),
            remember_me_lifetime: Duration::from_secs(30 * 86400),
            remember_me_default: false,
            revalidate_every: revalidate.map(Duration::from_secs),
            store: config::SessionStore::Cookie,
            redis_url: None,
            redis_key_prefix: "bbsso:".into(),
            redis_password: None,
            redis_ca_file: None,
            redis_pool_size: 4,
            redis_timeout: Duration::from_secs(2),
        }
    }

    fn session(now: i64) -> Session {
        Session {
            id: "sid".into(),
            username: "alice".into(),
            email: None,
            display_name: None,
            provider: "p".into(),
            subject: "s".into(),
            auth_time: now,
            issued_at: now,
            expires_at: now + 8 * 3600,
            last_active: now,
            revalidated_at: now,
            refresh_token: Some("rt".into()),
            revalidation_failed_at: None,
            remember_me: false,
        }
    }

    #[test]
    fn lifetime_idle_and_touch() {
        let c = cfg(None);
        let s = session(1000);
        assert_eq!(
            verdict(&s, 1000, &c),
            Verdict::Valid {
                touch: false,
                revalidate: false
            }
        );
        assert_eq!(
            verdict(&s, 1059, &c),
            Verdict::Valid {
                touch: false,
                revalidate: false
            }
        );
        assert_eq!(
            verdict(&s, 1060, &c),
            Verdict::Valid {
                touch: true,
                revalidate: false
            }
        );
        assert_eq!(verdict(&s, 1000 + 3600, &c), Verdict::Idle);
        let mut remembered = s.clone();
        remembered.remember_me = true;
        assert!(matches!(verdict(&remembered, 1000 + 3600, &c), Verdict::Valid { .. }));
        assert_eq!(verdict(&s, s.expires_at, &c), Verdict::Expired);
        assert_eq!(verdict(&remembered, s.expires_at, &c), Verdict::Expired);
    }

    #[test]
    fn revalidation_is_due_then_grace_then_over() {
        let c = cfg(Some(900));
        let mut s = session(1000);
        s.remember_me = true;
        assert_eq!(
            verdict(&s, 1899, &c),
            Verdict::Valid {
                touch: true,
                revalidate: false
            }
        );
        assert_eq!(
            verdict(&s, 1900, &c),
            Verdict::Valid {
                touch: true,
                revalidate: true
            }
        );
        assert_eq!(
            verdict(&s, 2799, &c),
            Verdict::Valid {
                touch: true,
                revalidate: true
            }
        );
        assert_eq!(
            verdict(&s, 9000, &c),
            Verdict::Valid {
                touch: true,
                revalidate: true
            },
            "unused for long is not a failure: revalidate now"
        );
        s.revalidation_failed_at = Some(1900);
        assert_eq!(
            verdict(&s, 2799, &c),
            Verdict::Valid {
                touch: true,
                revalidate: true
            },
            "within the grace period after a failed attempt"
        );
        assert_eq!(verdict(&s, 2800, &c), Verdict::Unverified);
        s.refresh_token = None;
        assert_eq!(
            verdict(&s, 2800, &c),
            Verdict::Valid {
                touch: true,
                revalidate: false
            },
            "nothing to revalidate with"
        );
    }
}
