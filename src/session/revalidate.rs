//! One refresh per session at a time: concurrent requests of a session that is due for revalidation share
//! one refresh-token redemption, and requests that arrive shortly after with the old cookie reuse its result
//! instead of redeeming a refresh token that may have been rotated away.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// How long a finished revalidation is remembered for late requests of the same session.
const REMEMBER_SECS: i64 = 120;

/// What the provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The user is still valid; a rotated refresh token comes with it.
    Confirmed { at: i64, refresh_token: Option<String> },
    /// The provider refused the refresh token (user disabled, token revoked): the session ends.
    Refused { reason: String },
    /// The provider could not be asked (network, 5xx): try again later, within the grace period.
    Unavailable { reason: String },
    /// The shared store no longer holds the session (revoked, or ended on another replica).
    Removed,
}

/// The single-flight gate, shared by all requests of this process.
#[derive(Default)]
pub struct Revalidator {
    inflight: Mutex<HashMap<String, Arc<OnceCell<Outcome>>>>,
    recent: Mutex<HashMap<String, Outcome>>,
}

impl Revalidator {
    /// Revalidates session `sid` with `refresh` unless another request is already doing it, or did it after
    /// `known_at` (the last revalidation the request's cookie knows of: a stale cookie reuses the newer result).
    pub async fn run<F, Fut>(&self, sid: &str, known_at: i64, now: i64, refresh: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        if let Some(done) = self.recent_result(sid, known_at, now) {
            return done;
        }
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(sid.to_owned()).or_default().clone()
        };
        let outcome = cell.get_or_init(refresh).await.clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(sid).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(sid);
            }
        }
        if !matches!(outcome, Outcome::Unavailable { .. }) {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|_, o| match o {
                Outcome::Confirmed { at, .. } => now - *at < REMEMBER_SECS,
                _ => true,
            });
            recent.insert(sid.to_owned(), outcome.clone());
            if recent.len() > 100_000 {
                recent.clear();
            }
        }
        outcome
    }

    fn recent_result(&self, sid: &str, known_at: i64, now: i64) -> Option<Outcome> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.get(sid)? {
            o @ Outcome::Confirmed { at, .. } if *at > known_at && now - at < REMEMBER_SECS => Some(o.clone()),
            o @ Outcome::Refused { .. } => Some(o.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_requests_share_one_refresh_and_late_ones_reuse_it() {
        let gate = Arc::new(Revalidator::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let gate = gate.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                gate.run("sid-1", 900, 1000, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Outcome::Confirmed {
                        at: 1000,
                        refresh_token: Some("rotated".into()),
                    }
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                Outcome::Confirmed {
                    at: 1000,
                    refresh_token: Some("rotated".into())
                }
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let late = gate
            .run("sid-1", 900, 1060, || async {
                panic!("a stale cookie reuses the recent result")
            })
            .await;
        assert!(matches!(late, Outcome::Confirmed { .. }));
        let due_again = gate
            .run("sid-1", 1000, 1950, || async {
                Outcome::Confirmed {
                    at: 1950,
                    refresh_token: None,
                }
            })
            .await;
        assert_eq!(
            due_again,
            Outcome::Confirmed {
                at: 1950,
                refresh_token: None
            },
            "an up-to-date cookie that is due refreshes again"
        );
        let other = gate
            .run("sid-2", 900, 1060, || async {
                Outcome::Unavailable { reason: "down".into() }
            })
            .await;
        assert!(matches!(other, Outcome::Unavailable { .. }));
        let retried = gate
            .run("sid-2", 900, 1061, || async {
                Outcome::Refused {
                    reason: "invalid_grant".into(),
                }
            })
            .await;
        assert!(
            matches!(retried, Outcome::Refused { .. }),
            "unavailability is not remembered"
        );
    }
}
