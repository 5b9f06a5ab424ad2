//! Audit events (`target = "audit"`): one per sign-in success or failure, logout, and session ended by
//! revalidation. Stable `event` and `reason` fields; never a token, cookie or secret.

use std::net::IpAddr;

use super::metrics::count;

/// Who and where, for every audit event.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
}

/// A user signed in.
pub fn login_success(o: Origin<'_>, user: &str, provider: &str, subject: &str, elapsed_ms: i64) {
    count("bbsso_logins_total", &[("outcome", "success"), ("reason", "ok")]);
    tracing::info!(target: "audit", event = "login_success", user, provider, subject, elapsed_ms, request_id = o.request_id, client_ip = %o.client_ip, "sign-in succeeded");
}

/// A sign-in was refused; `reason` is a stable code, `message` what the user was told.
pub fn login_failure(o: Origin<'_>, reason: &str, message: &str, provider: Option<&str>, detail: &str) {
    count("bbsso_logins_total", &[("outcome", "failure"), ("reason", reason)]);
    tracing::warn!(target: "audit", event = "login_failure", reason, message, provider, detail, request_id = o.request_id, client_ip = %o.client_ip, "sign-in refused");
}

/// A user signed out (or an anonymous logout request).
pub fn logout(o: Origin<'_>, user: Option<&str>, provider: Option<&str>) {
    tracing::info!(target: "audit", event = "logout", user, provider, request_id = o.request_id, client_ip = %o.client_ip, "signed out");
}

/// A session ended because the provider no longer vouches for the user.
pub fn session_ended(o: Origin<'_>, user: &str, provider: &str, reason: &str) {
    count(
        "bbsso_sessions_ended_total",
        &[("reason", reason.split(':').next().unwrap_or(reason))],
    );
    tracing::warn!(target: "audit", event = "session_ended", user, provider, reason, request_id = o.request_id, client_ip = %o.client_ip, "session ended by revalidation");
}

/// An administrator ended a session through the admin API (every replica refuses it from the next request).
pub fn session_revoked(o: Origin<'_>, user: &str, session_id: &str, provider: &str) {
    count("bbsso_sessions_ended_total", &[("reason", "revoked")]);
    tracing::warn!(target: "audit", event = "session_revoked", user, session_id, provider, by = "admin_api", request_id = o.request_id, client_ip = %o.client_ip, "session revoked");
}

/// A change made in Bitbucket by provisioning: `user_created`, `profile_updated`, `group_created`,
/// `group_added`, `group_removed`.
pub fn bitbucket_change(o: Origin<'_>, event: &str, user: &str, group: Option<&str>) {
    count("bbsso_provisioning_actions_total", &[("action", event)]);
    tracing::info!(target: "audit", event, user, group, request_id = o.request_id, client_ip = %o.client_ip, "Bitbucket changed");
}

/// The emergency login was used.
pub fn backdoor_used(o: Origin<'_>) {
    count("bbsso_backdoor_total", &[("outcome", "granted")]);
    tracing::warn!(target: "audit", event = "backdoor_used", request_id = o.request_id, client_ip = %o.client_ip, "emergency login to Bitbucket's own form granted");
}

/// An attempt at the emergency login was refused: `reason` is `disabled`, `missing_key`, `wrong_key` or `network`.
pub fn backdoor_refused(o: Origin<'_>, reason: &str) {
    count("bbsso_backdoor_total", &[("outcome", reason)]);
    tracing::warn!(target: "audit", event = "backdoor_refused", reason, request_id = o.request_id, client_ip = %o.client_ip, "emergency login refused");
}
