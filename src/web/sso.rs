//! The sign-in endpoints under `/sso/`: login start, callback, logout, logged-out; and the session checks the
//! gateway runs on every forwarded request.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::Page;
use super::return_path::safe_return_path;
use crate::bitbucket::Provisioner;
use crate::config::Config;
use crate::identity::Asserter;
use crate::oidc::client::{self, RefreshError};
use crate::oidc::{Logout, ProviderRuntime, Providers, flow};
use crate::session::cookies::{self, CookieNames, MAX_PENDING_LOGINS};
use crate::session::keyring::Keyring;
use crate::session::revalidate::{Outcome, Revalidator};
use crate::session::store::{Store, StoreError, Target, Updated};
use crate::session::{self, PENDING_LOGIN_SECS, PendingLogin, Session, Verdict};
use crate::telemetry::audit::{self, Origin};

/// Bitbucket's own cookies, expired at logout.
const BITBUCKET_COOKIES: [&str; 2] = ["BITBUCKETSESSIONID", "_atl_bitbucket_remember_me"];

/// Per-request facts for the handlers.
pub struct Ctx<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    pub html: bool,
}

impl Ctx<'_> {
    fn origin(&self) -> Origin<'_> {
        Origin {
            request_id: self.request_id,
            client_ip: self.client_ip,
        }
    }
}

/// The sign-in machinery of one configuration.
pub struct Sso {
    config: Arc<Config>,
    pub providers: Providers,
    ring: Keyring,
    pub names: CookieNames,
    asserter: Option<Asserter>,
    provisioner: Provisioner,
    revalidator: Revalidator,
    /// Where sessions live (cookie or Redis).
    pub store: Store,
    redirect_uri: String,
    logged_out_uri: String,
}

/// A session found on a request, with what must happen to its cookie.
pub struct Found {
    pub session: Session,
    /// The re-issued cookie (cookie store: activity recorded, or revalidation changed it).
    pub set_cookie: Option<HeaderValue>,
}

/// The outcome of looking for a session.
pub enum Lookup {
    None,
    Valid(Box<Found>),
    /// There was a cookie but it no longer counts: clear it.
    Ended,
    /// There was a cookie but the session store cannot be asked right now (Redis down).
    Unavailable,
}

type Reply = Response<Full<Bytes>>;

impl Sso {
    /// Prepares providers, keys and names; starts nothing.
    pub fn new(config: Arc<Config>) -> Self {
        let base = config.server.public_url.as_str().trim_end_matches('/').to_owned();
        let secure = config.server.public_url.scheme() == "https";
        Sso {
            providers: Providers::new(&config.providers),
            ring: Keyring::new(&config.session.keys),
            names: CookieNames::new(&config.session.cookie_name, secure),
            asserter: config
                .identity
                .assertion_secret
                .as_ref()
                .map(|s| Asserter::new(&config.server.public_url, s.expose(), config.identity.assertion_ttl)),
            provisioner: Provisioner::new(config.clone()),
            revalidator: Revalidator::default(),
            store: Store::new(
                &config.session,
                &CookieNames::new(&config.session.cookie_name, secure).session,
            ),
            redirect_uri: format!("{base}/sso/callback"),
            logged_out_uri: format!("{base}/sso/logged-out"),
            config,
        }
    }

    /// Answers a request for `/sso/...`.
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        ctx: &Ctx<'_>,
    ) -> Reply {
        let path = crate::route::normalize_path(path);
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/sso/login") => self.login(query, headers, ctx),
            ("GET", "/sso/callback") => self.callback(query, headers, ctx).await,
            ("GET" | "POST", "/sso/logout") => self.logout(headers, ctx).await,
            ("GET", "/sso/test") => self.test_start(query, headers, ctx).await,
            ("GET" | "HEAD", "/sso/logged-out") => self.logged_out(),
            _ => Page::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "Page not found",
                "This address belongs to the sign-in proxy and has no page. Go back to Bitbucket's home page.",
            )
            .action("Go to Bitbucket", "/")
            .render(ctx.request_id, ctx.html),
        }
    }

    fn fail(&self, ctx: &Ctx<'_>, page: Page<'_>, provider: Option<&str>, detail: &str) -> Reply {
        audit::login_failure(ctx.origin(), page.code, page.message, provider, detail);
        page.render(ctx.request_id, ctx.html)
    }

    /// `/sso/login`: starts the authorization-code flow at the provider.
    fn login(&self, query: Option<&str>, headers: &HeaderMap, ctx: &Ctx<'_>) -> Reply {
        if !self.config.sso.enabled {
            return Page::new(
                StatusCode::NOT_FOUND,
                "sso_disabled",
                "Single sign-on is switched off",
                "Sign in with Bitbucket's own login page.",
            )
            .action("Go to Bitbucket's login", "/login")
            .render(ctx.request_id, ctx.html);
        }
        let params = QueryParams::parse(query);
        let return_to = safe_return_path(params.first("rd").unwrap_or("/"), &self.config.server.public_url);
        let remember_me = match params.first("remember_me") {
            Some(v) => matches!(v, "1" | "on" | "true"),
            None => self.config.session.remember_me_default,
        };
        let cancelled = params.first("cancelled").is_some();
        let wanted = if let Some(id) = params.first("provider").filter(|p| !p.is_empty()) {
            Some(id.to_owned())
        } else if let Some(hint) = params.first("login_hint").map(str::trim).filter(|h| !h.is_empty()) {
            self.route(hint)
        } else if self.skips_login_page() && !cancelled {
            self.config.sso.default_provider.clone()
        } else {
            None
        };
        if wanted.is_none() {
            return self.login_page(&return_to, remember_me, cancelled);
        }
        self.start_flow(
            wanted.as_deref().unwrap_or_default(),
            return_to,
            remember_me,
            false,
            headers,
            ctx,
        )
    }

    /// Sends the browser to the provider's authorization endpoint with a fresh pending sign-in.
    /// `test`: the test configuration page's flow (the provider is asked to show its login again).
    fn start_flow(
        &self,
        provider_id: &str,
        return_to: String,
        remember_me: bool,
        test: bool,
        headers: &HeaderMap,
        ctx: &Ctx<'_>,
    ) -> Reply {
        let wanted = Some(provider_id);
        let Some(provider) = wanted.and_then(|id| self.providers.get(id)) else {
            let page = Page::new(
                StatusCode::BAD_REQUEST,
                "unknown_provider",
                "Unknown sign-in provider",
                "The sign-in link names a provider this site does not use. Start again from Bitbucket's home page.",
            )
            .action("Go to Bitbucket", "/");
            return self.fail(ctx, page, wanted, "no such provider");
        };
        let Some(endpoints) = provider.endpoints().filter(|_| provider.is_ready()) else {
            let page = Page::new(StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable", "Sign-in is unavailable right now", "The sign-in service cannot be reached at the moment. Wait a minute and try again; if it keeps happening, tell your Bitbucket administrator.")
                .action("Try again", "/sso/login");
            return self.fail(ctx, page, Some(&provider.config.id), "discovery or keys not loaded");
        };
        let now = session::now();
        let pending = PendingLogin {
            state: flow::random_token(32),
            nonce: flow::random_token(32),
            pkce_verifier: flow::random_token(32),
            return_to,
            provider: provider.config.id.clone(),
            started_at: now,
            remember_me,
            test,
        };
        let mut target = flow::authorization_url(
            &endpoints.authorization,
            &provider.config.client_id,
            &self.redirect_uri,
            &provider.config.scopes,
            &pending.state,
            &pending.nonce,
            &pending.pkce_verifier,
        );
        if test {
            target.query_pairs_mut().append_pair("prompt", "login");
        }
        let mut response = redirect(target.as_str());
        let h = response.headers_mut();
        // A new sign-in never reuses an old session (no fixation); a test run keeps the admin's own.
        if !test && cookies::get(headers, &self.names.session).is_some() {
            push_cookie(h, self.names.clear(&self.names.session));
        }
        for stale in self.surplus_pending(headers, now) {
            push_cookie(h, self.names.clear(&stale));
        }
        let name = self.names.pending(&pending.state);
        push_cookie(
            h,
            self.names.seal(&self.ring, &name, &pending, Some(PENDING_LOGIN_SECS)),
        );
        response
    }

    /// `/sso/test?provider=ID`: for allowed admins, runs the provider's flow and shows the claims and what the
    /// mapping would do, without signing anyone in and without changing Bitbucket.
    async fn test_start(&self, query: Option<&str>, headers: &HeaderMap, ctx: &Ctx<'_>) -> Reply {
        if let Err(reply) = self.may_test(headers, ctx).await {
            return reply;
        }
        let params = QueryParams::parse(query);
        let provider = params
            .first("provider")
            .map(str::to_owned)
            .or_else(|| self.config.sso.default_provider.clone())
            .unwrap_or_default();
        self.start_flow(&provider, "/".into(), false, true, headers, ctx)
    }

    /// Who may use the test page: members of `admin.test_page_groups` (looked up in Bitbucket), or any
    /// signed-in user when that list is empty and `admin.test_page_any_user` is on.
    async fn may_test(&self, headers: &HeaderMap, ctx: &Ctx<'_>) -> Result<Session, Reply> {
        let session = match self.current_session(headers).await {
            Ok(s) => s.filter(|s| {
                matches!(
                    session::verdict(s, session::now(), &self.config.session),
                    Verdict::Valid { .. }
                )
            }),
            Err(e) => return Err(self.store_down_page(ctx, Some(&e), "/sso/test")),
        };
        let Some(session) = session else {
            return Err(Page::new(
                StatusCode::UNAUTHORIZED,
                "test_page_sign_in",
                "Sign in first",
                "The test configuration page is for administrators. Sign in to Bitbucket, then open it again.",
            )
            .action("Sign in", "/sso/login")
            .render(ctx.request_id, ctx.html));
        };
        let allowed = &self.config.admin.test_page_groups;
        let denied = |message: &str| {
            tracing::warn!(target: "audit", event = "test_page_refused", user = %session.username, request_id = ctx.request_id, "test configuration page refused");
            Page::new(StatusCode::FORBIDDEN, "test_page_forbidden", "Not allowed", message)
                .action("Go to Bitbucket", "/")
                .render(ctx.request_id, ctx.html)
        };
        if allowed.is_empty() {
            return if self.config.admin.test_page_any_user {
                Ok(session)
            } else {
                Err(denied(
                    "The test configuration page is switched off: list the groups that may use it in admin.test_page_groups.",
                ))
            };
        }
        match self.provisioner.groups_of(&session.username).await {
            Some(Ok(groups)) if groups.iter().any(|g| allowed.iter().any(|a| a.eq_ignore_ascii_case(g))) => Ok(session),
            Some(Ok(_)) => Err(denied(
                "Only members of the groups in admin.test_page_groups may open the test configuration page.",
            )),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot check the test page's groups");
                Err(denied(
                    "Your groups could not be checked in Bitbucket right now. Try again in a minute.",
                ))
            }
            None => Err(denied(
                "Checking admin.test_page_groups needs Bitbucket REST access ([bitbucket]).",
            )),
        }
    }

    /// The test page's result: every claim, and what the mapping would do.
    async fn test_report(&self, admin: &Session, provider: &str, claims: &crate::oidc::id_token::Claims) -> Reply {
        use super::escape_html as e;
        let mut rows = String::new();
        let mut sorted: Vec<_> = claims.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in sorted {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            rows.push_str(&format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>\n",
                e(k),
                e(&text)
            ));
        }
        let outcome = match self.provisioner.preview(claims).await {
            Ok((user, plan)) => {
                let account = match (&user, plan.create_user) {
                    (Some(u), _) => format!("matches the existing Bitbucket user <strong>{}</strong>", e(&u.name)),
                    (None, true) => format!("creates the Bitbucket user <strong>{}</strong>", e(&plan.username)),
                    (None, false) => format!(
                        "signs in as <strong>{}</strong> (no Bitbucket lookup configured)",
                        e(&plan.username)
                    ),
                };
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_owned()
                    } else {
                        e(&v.join(", "))
                    }
                };
                format!(
                    "<p id=\"outcome\" data-result=\"admit\">Signing in with these claims {account}.</p>\n<table><tr><th>Username</th><td id=\"username\">{}</td></tr><tr><th>Email</th><td>{}</td></tr><tr><th>Display name</th><td>{}</td></tr><tr><th>Profile update</th><td>{}</td></tr><tr><th>Groups to add</th><td id=\"add\">{}</td></tr><tr><th>Groups to remove</th><td id=\"remove\">{}</td></tr><tr><th>Groups to create</th><td id=\"create\">{}</td></tr></table>",
                    e(&plan.username),
                    e(plan.email.as_deref().unwrap_or("none")),
                    e(&plan.display_name),
                    if plan.update_profile { "yes" } else { "no" },
                    list(&plan.add_groups),
                    list(&plan.remove_groups),
                    list(&plan.create_groups),
                )
            }
            Err(refused) => format!(
                "<p id=\"outcome\" data-result=\"refuse\">Signing in with these claims is refused: <strong>{}</strong> ({}).</p>",
                e(&refused.refusal.message),
                e(refused.refusal.code)
            ),
        };
        tracing::info!(target: "audit", event = "test_page_used", user = %admin.username, provider, "test configuration page run");
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Test configuration</title>{}<style>main{{max-width:48rem}} table{{border-collapse:collapse;width:100%;margin:1rem 0}} th,td{{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #dfe1e6;vertical-align:top;word-break:break-word}}</style></head><body><main><h1>Test configuration: {}</h1><p>Nobody was signed in and Bitbucket was not changed. You are still signed in as {}.</p><h2>What the mapping would do</h2>{outcome}<h2>Claims from the ID token and userinfo</h2><table id=\"claims\">{rows}</table><a class=\"button\" href=\"/sso/test?provider={}\">Run again</a></main></body></html>",
            super::templates::STYLE,
            e(provider),
            e(&admin.username),
            e(provider),
        );
        super::html_page(StatusCode::OK, body)
    }

    /// One provider, no redirection rules, auto-redirect on: no page at all.
    fn skips_login_page(&self) -> bool {
        self.config.providers.len() == 1
            && self.config.sso.redirection_rules.is_empty()
            && self.config.sso.auto_redirect
    }

    /// The provider for an email address (first rule whose domain matches) or a username (the default).
    fn route(&self, hint: &str) -> Option<String> {
        let domain = match hint.split('@').collect::<Vec<_>>().as_slice() {
            [local, domain] if !local.is_empty() => Some(domain.to_ascii_lowercase()),
            _ => None,
        };
        domain
            .and_then(|d| self.config.sso.redirection_rules.iter().find(|r| r.email_domain == d))
            .map(|r| r.provider.clone())
            .or_else(|| self.config.sso.default_provider.clone())
    }

    /// The login page: a button per provider, the email field when routing rules exist, "keep me signed in".
    fn login_page(&self, return_to: &str, remember_me: bool, cancelled: bool) -> Reply {
        let single = self.config.providers.len() == 1;
        let mut providers = String::new();
        if !self.config.sso.redirection_rules.is_empty() {
            providers.push_str("<p class=\"or\">or choose</p>\n");
        }
        for p in &self.config.providers {
            let label = if single {
                self.config.ui.login_button_text.clone()
            } else {
                format!("{} ({})", self.config.ui.login_button_text, p.display_name)
            };
            providers.push_str(&format!(
                "<button type=\"submit\" name=\"provider\" value=\"{}\">{}</button>\n",
                super::escape_html(&p.id),
                super::escape_html(&label)
            ));
        }
        let email_form = if self.config.sso.redirection_rules.is_empty() {
            String::new()
        } else {
            "<label for=\"login_hint\">Email address or username</label>\n<input type=\"text\" id=\"login_hint\" name=\"login_hint\" autocomplete=\"username\" autofocus>\n<button type=\"submit\">Continue</button>\n".to_owned()
        };
        let notice = if cancelled {
            "<p class=\"notice\" role=\"status\">Automatic sign-in was cancelled. Choose how to sign in.</p>".to_owned()
        } else {
            String::new()
        };
        let body = super::templates::render(
            &super::templates::current().login,
            &[
                ("title", "Sign in to Bitbucket"),
                ("notice", &notice),
                ("rd", return_to),
                ("remember_me_checked", if remember_me { "checked" } else { "" }),
                ("providers", &providers),
                ("email_form", &email_form),
            ],
        );
        let mut reply = super::html_page(StatusCode::OK, body);
        // The form is answered by a redirect to a provider: CSP form-action covers redirects, so allow them.
        let mut origins: Vec<String> = Vec::new();
        for p in self.providers.all() {
            if let Some(e) = p.endpoints() {
                origins.push(e.authorization.origin().ascii_serialization());
            }
        }
        origins.sort();
        origins.dedup();
        if let Ok(csp) = HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self' {}",
            origins.join(" ")
        )) {
            reply.headers_mut().insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        reply
    }

    /// Pending-login cookies to drop so that at most `MAX_PENDING_LOGINS` remain with the new one.
    fn surplus_pending(&self, headers: &HeaderMap, now: i64) -> Vec<String> {
        let mut found: Vec<(i64, String)> = cookies::pairs(headers)
            .filter(|(n, _)| n.starts_with(&self.names.pending_prefix))
            .map(|(n, _)| {
                let started = cookies::open::<PendingLogin>(headers, &self.ring, n)
                    .filter(|p| now - p.started_at < PENDING_LOGIN_SECS)
                    .map(|p| p.started_at)
                    .unwrap_or(i64::MIN);
                (started, n.to_owned())
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found
            .into_iter()
            .enumerate()
            .filter(|(i, (started, _))| *i + 1 >= MAX_PENDING_LOGINS || *started == i64::MIN)
            .map(|(_, (_, n))| n)
            .collect()
    }

    /// `/sso/callback`: the provider sends the browser back here with a code (or an error).
    async fn callback(&self, query: Option<&str>, headers: &HeaderMap, ctx: &Ctx<'_>) -> Reply {
        let params = QueryParams::parse(query);
        for name in ["state", "code", "error", "iss"] {
            if params.count(name) > 1 {
                let page = Page::new(
                    StatusCode::BAD_REQUEST,
                    "duplicate_parameter",
                    "This sign-in link is not valid",
                    "The link that brought you here was altered. Start the sign-in again from Bitbucket.",
                )
                .action("Sign in again", "/sso/login");
                return self.fail(ctx, page, None, &format!("parameter {name} appears more than once"));
            }
        }
        let state = params.first("state").unwrap_or("");
        let pending_name = self.names.pending(state);
        let pending = (!state.is_empty())
            .then(|| cookies::open::<PendingLogin>(headers, &self.ring, &pending_name))
            .flatten()
            .filter(|p| crate::oidc::id_token::constant_time_eq(p.state.as_bytes(), state.as_bytes()));
        let now = session::now();

        if let Some(error) = params.first("error") {
            let description = params.first("error_description").unwrap_or("");
            let (status, title, message) = provider_error_meaning(error);
            let page = Page::new(status, "provider_error", title, message).action("Try again", "/sso/login");
            let mut response = self.fail(
                ctx,
                page,
                pending.as_ref().map(|p| p.provider.as_str()),
                &format!("{error}: {description}"),
            );
            if pending.is_some() {
                push_cookie(response.headers_mut(), self.names.clear(&pending_name));
            }
            return response;
        }

        let Some(pending) = pending.filter(|p| now - p.started_at < PENDING_LOGIN_SECS) else {
            return self.restart(
                headers,
                ctx,
                if state.is_empty() {
                    "state_missing"
                } else {
                    "state_unknown_or_expired"
                },
            );
        };
        let provider_id = pending.provider.clone();
        let Some(provider) = self.providers.get(&provider_id) else {
            return self.restart(headers, ctx, "state_unknown_or_expired");
        };
        match self.finish(provider, &pending, &params, headers, ctx, now).await {
            Ok(mut response) => {
                let h = response.headers_mut();
                push_cookie(h, self.names.clear(&pending_name));
                if cookies::get(headers, &self.names.restarted).is_some() {
                    push_cookie(h, self.names.clear(&self.names.restarted));
                }
                response
            }
            Err(mut response) => {
                push_cookie(response.headers_mut(), self.names.clear(&pending_name));
                response
            }
        }
    }

    /// A missing, unknown or expired state: restart the sign-in once, with a page that says so; never a loop.
    fn restart(&self, headers: &HeaderMap, ctx: &Ctx<'_>, reason: &str) -> Reply {
        if cookies::get(headers, &self.names.restarted).is_some() {
            let page = Page::new(
                StatusCode::BAD_REQUEST,
                reason,
                "Sign-in could not be completed",
                "Your browser did not keep the sign-in cookie, so the sign-in cannot be finished. Allow cookies for this site, close other sign-in tabs, and try again.",
            )
            .action("Try again", "/sso/login");
            let mut response = self.fail(ctx, page, None, "second failure after a restart");
            push_cookie(response.headers_mut(), self.names.clear(&self.names.restarted));
            return response;
        }
        let page = Page::new(
            StatusCode::OK,
            reason,
            "Your sign-in has to start again",
            "The sign-in took too long, or was started in another tab or browser. It starts again in a moment.",
        )
        .action("Start again now", "/sso/login")
        .refresh(2, "/sso/login");
        let mut response = self.fail(ctx, page, None, "restarting once");
        push_cookie(
            response.headers_mut(),
            self.names.set(&self.names.restarted, "1", Some(PENDING_LOGIN_SECS)),
        );
        response
    }

    /// Exchanges the code, validates the tokens and opens the session.
    async fn finish(
        &self,
        provider: &Arc<ProviderRuntime>,
        pending: &PendingLogin,
        params: &QueryParams,
        headers: &HeaderMap,
        ctx: &Ctx<'_>,
        now: i64,
    ) -> Result<Reply, Reply> {
        let pid = provider.config.id.as_str();
        let try_again = |code, title, message| {
            Page::new(StatusCode::BAD_GATEWAY, code, title, message).action("Try again", "/sso/login")
        };
        let Some(endpoints) = provider.endpoints() else {
            let page = Page::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "Sign-in is unavailable right now",
                "The sign-in service cannot be reached at the moment. Wait a minute and try again.",
            )
            .action("Try again", "/sso/login");
            return Err(self.fail(ctx, page, Some(pid), "discovery not loaded"));
        };
        if let Some(iss) = params.first("iss")
            && iss.trim_end_matches('/') != endpoints.issuer.trim_end_matches('/')
        {
            let page = Page::new(StatusCode::BAD_REQUEST, "issuer_mismatch", "This sign-in link is not valid", "The answer came from a different sign-in service than the one you were sent to. Start again from Bitbucket.")
                .action("Sign in again", "/sso/login");
            return Err(self.fail(ctx, page, Some(pid), "iss parameter differs from the provider's issuer"));
        }
        let Some(code) = params.first("code").filter(|c| !c.is_empty()) else {
            let page = Page::new(
                StatusCode::BAD_REQUEST,
                "code_missing",
                "This sign-in link is not valid",
                "The sign-in service sent you back without a result. Start the sign-in again.",
            )
            .action("Sign in again", "/sso/login");
            return Err(self.fail(ctx, page, Some(pid), "no code parameter"));
        };
        let tokens = match client::exchange_code(
            &provider.http,
            &provider.config,
            &endpoints.token,
            code,
            &pending.pkce_verifier,
            &self.redirect_uri,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                let page = try_again(
                    "token_exchange_failed",
                    "Sign-in could not be completed",
                    "The sign-in service did not confirm your sign-in. Try again; if it keeps happening, tell your Bitbucket administrator.",
                );
                return Err(self.fail(ctx, page, Some(pid), &e.to_string()));
            }
        };
        let Some(id_token) = tokens.id_token.as_deref() else {
            let page = try_again(
                "id_token_missing",
                "Sign-in could not be completed",
                "The sign-in service sent no identity. Tell your Bitbucket administrator (the provider must grant the openid scope).",
            );
            return Err(self.fail(ctx, page, Some(pid), "token response without id_token"));
        };
        let mut claims = match provider
            .validate_id_token(id_token, &pending.nonce, tokens.access_token.as_deref())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let code = format!("id_token_{}", e.code());
                let page = Page::new(StatusCode::UNAUTHORIZED, &code, "Your sign-in could not be verified", "The identity sent by the sign-in service failed a security check, so you were not signed in. Try again; if it keeps happening, tell your Bitbucket administrator and give them the reference below.")
                    .action("Try again", "/sso/login");
                return Err(self.fail(ctx, page, Some(pid), &e.to_string()));
            }
        };
        if provider.config.userinfo
            && let (Some(url), Some(access)) = (&endpoints.userinfo, tokens.access_token.as_deref())
        {
            match client::userinfo(&provider.http, url, access).await {
                Ok(extra) if extra.get("sub") == claims.get("sub") => {
                    for (k, v) in extra {
                        claims.entry(k).or_insert(v);
                    }
                }
                Ok(_) => {
                    let page = try_again(
                        "userinfo_subject_mismatch",
                        "Sign-in could not be completed",
                        "The sign-in service gave two different identities. Tell your Bitbucket administrator.",
                    );
                    return Err(self.fail(ctx, page, Some(pid), "userinfo sub differs from the ID token's"));
                }
                Err(e) => {
                    let page = try_again(
                        "userinfo_failed",
                        "Sign-in could not be completed",
                        "Your profile could not be read from the sign-in service. Try again in a minute.",
                    );
                    return Err(self.fail(ctx, page, Some(pid), &e.to_string()));
                }
            }
        }
        normalize_claims(&mut claims);
        if pending.test {
            return Ok(match self.may_test(headers, ctx).await {
                Ok(admin) => self.test_report(&admin, pid, &claims).await,
                Err(reply) => reply,
            });
        }
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        let admitted = match self.provisioner.admit(&claims, ctx.origin()).await {
            Ok(a) => a,
            Err(refused) => {
                let status = if refused.refusal.code == "provisioning_failed" {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::FORBIDDEN
                };
                let page = Page::new(
                    status,
                    refused.refusal.code,
                    "You cannot be signed in",
                    &refused.refusal.message,
                );
                return Err(self.fail(ctx, page, Some(pid), &refused.detail));
            }
        };
        let username = admitted.username;
        let lifetime = if pending.remember_me {
            self.config.session.remember_me_lifetime
        } else {
            self.config.session.lifetime
        };
        let new_session = Session {
            id: flow::random_token(16),
            username: username.clone(),
            email: admitted.email,
            display_name: admitted.display_name,
            provider: pid.to_owned(),
            subject: subject.clone(),
            auth_time: claims.get("auth_time").and_then(Value::as_i64).unwrap_or(now),
            issued_at: now,
            expires_at: now.saturating_add(session::secs(lifetime)),
            last_active: now,
            revalidated_at: now,
            refresh_token: self.config.session.revalidate_every.and(tokens.refresh_token.clone()),
            revalidation_failed_at: None,
            remember_me: pending.remember_me,
        };
        let stored = match self.store.create(&new_session, now).await {
            Ok(value) => self.session_cookie(&value, &new_session),
            Err(e @ StoreError::Unavailable(_)) => {
                let page = Page::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session_store_unavailable",
                    "Sign-in could not be completed",
                    "You were recognised, but your session could not be stored because the session store is unavailable. Wait a minute and try again; if it keeps happening, tell your Bitbucket administrator.",
                )
                .action("Try again", "/sso/login");
                return Err(self.fail(ctx, page, Some(pid), &e.to_string()));
            }
            Err(_) => None,
        };
        let Some(cookie) = stored else {
            let page = try_again(
                "session_not_stored",
                "Sign-in could not be completed",
                "Your session could not be stored. Tell your Bitbucket administrator.",
            );
            return Err(self.fail(ctx, page, Some(pid), "session cookie could not be sealed"));
        };
        audit::login_success(
            ctx.origin(),
            &username,
            pid,
            &subject,
            (now - pending.started_at) * 1000,
        );
        let mut response = redirect(&pending.return_to);
        push_cookie(response.headers_mut(), Some(cookie));
        Ok(response)
    }

    /// The `Set-Cookie` carrying a session's cookie value: persistent for "keep me signed in".
    fn session_cookie(&self, value: &str, s: &Session) -> Option<HeaderValue> {
        let max_age = s.remember_me.then(|| s.expires_at - session::now());
        self.names.set(&self.names.session, value, max_age)
    }

    /// The session of the request's cookie, as stored (no expiry or idle checks beyond the absolute end).
    async fn current_session(&self, headers: &HeaderMap) -> Result<Option<Session>, StoreError> {
        match cookies::get(headers, &self.names.session) {
            Some(value) => self.store.load(value, session::now()).await,
            None => Ok(None),
        }
    }

    /// The 503 page for a request that needs its session while the session store is down. It reloads itself, so
    /// the user is back as soon as the store answers again.
    pub fn store_down_page(&self, ctx: &Ctx<'_>, e: Option<&StoreError>, reload: &str) -> Reply {
        if let Some(e) = e {
            tracing::warn!(request_id = ctx.request_id, error = %e, "session store unavailable");
            crate::telemetry::metrics::count("bbsso_session_store_errors_total", &[("store", self.store.kind())]);
        }
        let reload = safe_return_path(reload, &self.config.server.public_url);
        let mut reply = Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
            "Sessions are unavailable right now",
            "Bitbucket's sign-in sessions are kept in a store that cannot be reached at the moment. You are still signed in: this page reloads by itself and takes you back as soon as the store answers again. If it lasts, tell your Bitbucket administrator.",
        )
        .refresh(10, &reload)
        .render(ctx.request_id, ctx.html);
        reply
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        reply
    }

    /// Ends sessions on every replica (admin API): removes them from the store, revokes their refresh tokens
    /// at the provider (best effort) and writes one audit event per session.
    pub async fn revoke(&self, target: &Target, origin: Origin<'_>) -> Result<Vec<Session>, StoreError> {
        let ended = self.store.revoke(target).await?;
        for s in &ended {
            audit::session_revoked(origin, &s.username, &s.id, &s.provider);
            self.revoke_refresh_token(s).await;
        }
        Ok(ended)
    }

    /// Tells the provider that a session's refresh token is no longer wanted (best effort).
    async fn revoke_refresh_token(&self, s: &Session) {
        if let (Some(rt), Some(p)) = (&s.refresh_token, self.providers.get(&s.provider))
            && let Some(endpoints) = p.endpoints()
            && let Some(url) = &endpoints.revocation
            && let Err(e) = client::revoke(&p.http, &p.config, url, rt).await
        {
            tracing::warn!(user = %s.username, error = %e, "refresh token revocation failed");
        }
    }

    /// `/sso/logout` and Bitbucket's `/j_atl_security_logout`: end every session, then the provider's.
    pub async fn logout(&self, headers: &HeaderMap, ctx: &Ctx<'_>) -> Reply {
        let found = match self.current_session(headers).await {
            Ok(found) => found,
            Err(e) => {
                // Signing out still clears the browser's cookies; the stored session ends by its TTL.
                tracing::warn!(request_id = ctx.request_id, error = %e, "session store unavailable at logout");
                None
            }
        };
        if let Some(s) = &found {
            if let Err(e) = self.store.remove(s).await {
                tracing::warn!(user = %s.username, error = %e, "session could not be removed from the store at logout");
            }
            self.revoke_refresh_token(s).await;
        }
        let provider = found
            .as_ref()
            .map(|s| s.provider.clone())
            .or_else(|| self.config.sso.default_provider.clone())
            .and_then(|id| self.providers.get(&id).cloned());
        audit::logout(
            ctx.origin(),
            found.as_ref().map(|s| s.username.as_str()),
            found.as_ref().map(|s| s.provider.as_str()),
        );
        let target = provider
            .as_ref()
            .filter(|_| found.is_some())
            .and_then(|p| {
                p.endpoints()
                    .and_then(|e| e.logout.clone())
                    .map(|l| (p.config.client_id.clone(), l))
            })
            .map(|(client_id, logout)| {
                let (mut url, param) = match logout {
                    Logout::Cognito(u) => (u, "logout_uri"),
                    Logout::Standard(u) => (u, "post_logout_redirect_uri"),
                };
                url.query_pairs_mut()
                    .append_pair("client_id", &client_id)
                    .append_pair(param, &self.logged_out_uri);
                url.to_string()
            })
            .unwrap_or_else(|| "/sso/logged-out".to_owned());
        let mut response = redirect(&target);
        let h = response.headers_mut();
        push_cookie(h, self.names.clear(&self.names.session));
        let pending: Vec<String> = cookies::pairs(headers)
            .filter(|(n, _)| n.starts_with(&self.names.pending_prefix))
            .map(|(n, _)| n.to_owned())
            .collect();
        for name in pending {
            push_cookie(h, self.names.clear(&name));
        }
        if cookies::get(headers, &self.names.backdoor).is_some() {
            push_cookie(h, self.names.clear(&self.names.backdoor));
        }
        for name in BITBUCKET_COOKIES {
            push_cookie(
                h,
                HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0; HttpOnly")).ok(),
            );
        }
        response
    }

    /// `/sso/logged-out`: where the provider's logout returns.
    fn logged_out(&self) -> Reply {
        if let Some(url) = &self.config.ui.post_logout_url {
            return redirect(url.as_str());
        }
        let body = super::templates::render(
            &super::templates::current().logged_out,
            &[
                ("title", "You are signed out"),
                (
                    "message",
                    "You have signed out of Bitbucket and of the sign-in service. Close the browser if others use this computer.",
                ),
                ("sign_in_href", "/"),
            ],
        );
        super::html_page(StatusCode::OK, body)
    }

    /// Finds and checks the session of a request; revalidates at the provider when due.
    pub async fn session(&self, headers: &HeaderMap, ctx: &Ctx<'_>) -> Lookup {
        let Some(value) = cookies::get(headers, &self.names.session) else {
            return Lookup::None;
        };
        let now = session::now();
        let mut s = match self.store.load(value, now).await {
            Ok(Some(s)) => s,
            Ok(None) => return Lookup::Ended,
            Err(e) => {
                tracing::warn!(request_id = ctx.request_id, error = %e, "session store unavailable");
                crate::telemetry::metrics::count("bbsso_session_store_errors_total", &[("store", self.store.kind())]);
                return Lookup::Unavailable;
            }
        };
        let (mut reissue, revalidate) = match session::verdict(&s, now, &self.config.session) {
            Verdict::Valid { touch, revalidate } => (touch, revalidate),
            Verdict::Unverified => {
                audit::session_ended(ctx.origin(), &s.username, &s.provider, "revalidation_overdue");
                return Lookup::Ended;
            }
            Verdict::Expired | Verdict::Idle => return Lookup::Ended,
        };
        if revalidate {
            match self.revalidate(&s, now).await {
                Outcome::Confirmed { at, refresh_token } => {
                    s.revalidated_at = at;
                    s.revalidation_failed_at = None;
                    if let Some(rt) = refresh_token {
                        s.refresh_token = Some(rt);
                    }
                    reissue = true;
                }
                Outcome::Refused { reason } => {
                    audit::session_ended(
                        ctx.origin(),
                        &s.username,
                        &s.provider,
                        &format!("provider_refused: {reason}"),
                    );
                    return Lookup::Ended;
                }
                Outcome::Unavailable { reason } => {
                    tracing::warn!(user = %s.username, provider = %s.provider, reason = %reason, "revalidation postponed: provider unavailable");
                    if s.revalidation_failed_at.is_none() {
                        s.revalidation_failed_at = Some(now);
                        reissue = true;
                    }
                }
                Outcome::Removed => return Lookup::Ended,
            }
        }
        let mut set_cookie = None;
        if reissue {
            s.last_active = now;
            match self.store.update(&s, now).await {
                Ok(Updated::Cookie(value)) => set_cookie = self.session_cookie(&value, &s),
                Ok(Updated::Stored) => {}
                Ok(Updated::Gone) => return Lookup::Ended,
                // The request still has a valid session; the activity is recorded at a later request.
                Err(e) => tracing::warn!(user = %s.username, error = %e, "session activity could not be stored"),
            }
        }
        Lookup::Valid(Box::new(Found { session: s, set_cookie }))
    }

    async fn revalidate(&self, s: &Session, now: i64) -> Outcome {
        let (Some(provider), Some(rt)) = (self.providers.get(&s.provider), s.refresh_token.clone()) else {
            return Outcome::Refused {
                reason: "provider no longer configured".into(),
            };
        };
        // One redemption per session at a time: in this process (single flight) and, with Redis, across
        // replicas. The cross-replica part runs as its own task: a browser that goes away mid-exchange must not
        // leave the lock held or a rotated refresh token unsaved.
        let outcome = self
            .revalidator
            .run(&s.id, s.revalidated_at, now, || async move {
                match self.store.redis() {
                    Some(shared) => {
                        let (shared, session, provider) = (Arc::clone(shared), s.clone(), Arc::clone(provider));
                        tokio::spawn(
                            async move { shared.refresh_exclusive(&session, move |rt| redeem(provider, rt)).await },
                        )
                        .await
                        .unwrap_or_else(|e| Outcome::Unavailable {
                            reason: format!("refresh task failed: {e}"),
                        })
                    }
                    None => redeem(Arc::clone(provider), rt).await,
                }
            })
            .await;
        let label = match &outcome {
            Outcome::Confirmed { .. } => "confirmed",
            Outcome::Refused { .. } => "refused",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Removed => "removed",
        };
        crate::telemetry::metrics::count("bbsso_revalidations_total", &[("outcome", label)]);
        outcome
    }

    /// The identity headers for a session: the username and a fresh assertion.
    pub fn identity_values(&self, s: &Session) -> Option<(HeaderValue, HeaderValue)> {
        let assertion = self.asserter.as_ref()?.mint(
            &s.username,
            s.email.as_deref(),
            s.display_name.as_deref(),
            session::now(),
        )?;
        Some((
            HeaderValue::from_str(&s.username).ok()?,
            HeaderValue::from_str(&assertion).ok()?,
        ))
    }

    /// The emergency login: `/login?{query}={key}` from an allowed network grants a pass (a sealed cookie) that
    /// lets Bitbucket's own login form and session work; anything else is refused and goes to SSO.
    /// Returns whether the request holds a valid pass, and the cookie to set when one was just granted.
    pub fn backdoor(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        ctx: &Ctx<'_>,
    ) -> (bool, Option<HeaderValue>) {
        let b = &self.config.sso.backdoor;
        let allowed_network = b.allowed_networks.iter().any(|n| n.contains(&ctx.client_ip));
        let now = session::now();
        if path == "/login" {
            let params = QueryParams::parse(query);
            if let Some(given) = params.first(&b.query) {
                let reason = match &b.key {
                    _ if !b.enabled => Some("disabled"),
                    _ if given.is_empty() => Some("missing_key"),
                    Some(key)
                        if !crate::oidc::id_token::constant_time_eq(key.expose().as_bytes(), given.as_bytes()) =>
                    {
                        Some("wrong_key")
                    }
                    None => Some("disabled"),
                    _ if !allowed_network => Some("network"),
                    _ => None,
                };
                return match reason {
                    Some(r) => {
                        audit::backdoor_refused(ctx.origin(), r);
                        (false, None)
                    }
                    None => {
                        audit::backdoor_used(ctx.origin());
                        let pass = BackdoorPass {
                            ip: ctx.client_ip.to_string(),
                            expires_at: now + session::secs(self.config.session.lifetime),
                        };
                        (true, self.names.seal(&self.ring, &self.names.backdoor, &pass, None))
                    }
                };
            }
        }
        if !b.enabled || !allowed_network {
            return (false, None);
        }
        let pass: Option<BackdoorPass> = cookies::open(headers, &self.ring, &self.names.backdoor);
        (
            pass.is_some_and(|p| p.expires_at > now && p.ip == ctx.client_ip.to_string()),
            None,
        )
    }

    /// The countdown page before an automatic sign-in (`sso.auto_redirect_delay`).
    pub fn countdown(&self, return_to: &str) -> Option<Reply> {
        let delay = self.config.sso.auto_redirect_delay.as_secs();
        if delay == 0 {
            return None;
        }
        let rd = safe_return_path(return_to, &self.config.server.public_url);
        let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        let target = format!("/sso/login?rd={enc}");
        let cancel = format!("/sso/login?cancelled=1&rd={enc}");
        let seconds = delay.to_string();
        let body = super::templates::render(
            &super::templates::current().countdown,
            &[
                ("seconds", &seconds),
                ("target", &target),
                ("cancel_href", &cancel),
                ("script", super::templates::COUNTDOWN_SCRIPT),
            ],
        );
        let mut reply = super::html_page(StatusCode::OK, body);
        if let Ok(csp) = HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src '{}'; frame-ancestors 'none'; form-action 'self'",
            super::templates::countdown_script_hash()
        )) {
            reply.headers_mut().insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        Some(reply)
    }

    /// The `Set-Cookie` that deletes the session cookie.
    pub fn clear_session_cookie(&self) -> Option<HeaderValue> {
        self.names.clear(&self.names.session)
    }
}

/// The emergency pass kept in a sealed cookie: bound to the address it was granted to.
#[derive(serde::Serialize, serde::Deserialize)]
struct BackdoorPass {
    ip: String,
    expires_at: i64,
}

/// Redeems a refresh token at the provider: what it says about the user.
async fn redeem(provider: Arc<ProviderRuntime>, rt: String) -> Outcome {
    let Some(endpoints) = provider.endpoints() else {
        return Outcome::Unavailable {
            reason: "provider not loaded".into(),
        };
    };
    match client::refresh(&provider.http, &provider.config, &endpoints.token, &rt).await {
        Ok(tokens) => Outcome::Confirmed {
            at: session::now(),
            refresh_token: tokens.refresh_token.filter(|new| *new != rt),
        },
        Err(RefreshError::Refused(reason)) => Outcome::Refused { reason },
        Err(RefreshError::Unavailable(reason)) => Outcome::Unavailable { reason },
    }
}

/// What a provider's `error` means for the user.
fn provider_error_meaning(error: &str) -> (StatusCode, &'static str, &'static str) {
    match error {
        "access_denied" => (
            StatusCode::FORBIDDEN,
            "Sign-in was cancelled or refused",
            "You cancelled the sign-in, or the sign-in service does not allow you to use Bitbucket. If you should have access, ask your administrator.",
        ),
        "login_required" | "interaction_required" | "consent_required" => (
            StatusCode::UNAUTHORIZED,
            "Please sign in",
            "The sign-in service needs you to sign in again. Try again.",
        ),
        "temporarily_unavailable" | "server_error" => (
            StatusCode::BAD_GATEWAY,
            "The sign-in service has a problem",
            "The sign-in service could not complete your sign-in right now. Wait a minute and try again.",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The sign-in service reported a problem with this site's configuration. Tell your Bitbucket administrator and give them the reference below.",
        ),
    }
}

/// Accepts `email_verified` as the string `"true"` (Cognito's userInfo) as well as a boolean.
fn normalize_claims(claims: &mut crate::oidc::id_token::Claims) {
    if let Some(v) = claims.get_mut("email_verified")
        && let Some(s) = v.as_str()
    {
        *v = Value::Bool(s.eq_ignore_ascii_case("true"));
    }
}

/// A 302 to `location`, never cached.
pub fn redirect(location: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn push_cookie(headers: &mut HeaderMap, value: Option<HeaderValue>) {
    if let Some(v) = value {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Query parameters, keeping duplicates visible.
struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    fn parse(query: Option<&str>) -> Self {
        QueryParams(
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn first(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.0.iter().filter(|(k, _)| k == name).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_verified_string_is_accepted() {
        let mut c = serde_json::Map::new();
        c.insert("email_verified".into(), Value::String("true".into()));
        normalize_claims(&mut c);
        assert_eq!(c["email_verified"], Value::Bool(true));
    }

    #[test]
    fn duplicate_parameters_are_counted() {
        let q = QueryParams::parse(Some("state=a&code=b&state=c"));
        assert_eq!(q.count("state"), 2);
        assert_eq!(q.first("state"), Some("a"));
    }
}
