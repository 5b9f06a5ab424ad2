//! Bitbucket's REST API (`/rest/api/1.0`) with the admin service account: users and groups.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use url::Url;

use crate::config::{self, Secret};
use crate::mapping::BitbucketUser;

/// Page size for listings (Bitbucket's default is 25).
const PAGE: usize = 100;

/// What went wrong calling Bitbucket, phrased for the operator.
#[derive(Debug, Error)]
pub enum BitbucketError {
    #[error("Bitbucket refused the service account (401): check bitbucket.admin_user and bitbucket.admin_password")]
    Unauthorized,
    #[error("Bitbucket refused to {action} (403): {hint}")]
    Forbidden { action: String, hint: &'static str },
    #[error("Bitbucket cannot be reached for provisioning: {0}")]
    Unavailable(String),
    #[error("several Bitbucket users have the email address {0}; make it unique, or match users by username")]
    AmbiguousEmail(String),
    #[error("Bitbucket answered {status} to {action}: {body}")]
    Unexpected { action: String, status: u16, body: String },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    values: Vec<T>,
    #[serde(default)]
    is_last_page: bool,
    next_page_start: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestUser {
    name: String,
    slug: Option<String>,
    display_name: Option<String>,
    email_address: Option<String>,
    #[serde(default = "yes")]
    mutable_details: bool,
    #[serde(default = "yes")]
    mutable_groups: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct RestGroup {
    name: String,
}

impl From<RestUser> for BitbucketUser {
    fn from(u: RestUser) -> Self {
        BitbucketUser {
            slug: u.slug.unwrap_or_else(|| u.name.clone()),
            name: u.name,
            display_name: u.display_name,
            email: u.email_address,
            mutable_details: u.mutable_details,
            mutable_groups: u.mutable_groups,
        }
    }
}

/// The REST client.
pub struct BitbucketClient {
    http: reqwest::Client,
    base: Url,
    user: String,
    password: Secret,
}

impl BitbucketClient {
    /// A client for `[bitbucket]`.
    pub fn new(cfg: &config::Bitbucket) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(5)))
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bitbucket-sso-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        BitbucketClient {
            http,
            base: cfg.url.clone(),
            user: cfg.admin_user.clone(),
            password: cfg.admin_password.clone(),
        }
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/rest/api/1.0{path}"));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .basic_auth(&self.user, Some(self.password.expose()))
            .header("accept", "application/json")
            .header("x-atlassian-token", "no-check")
    }

    async fn send(
        &self,
        action: &str,
        request: reqwest::RequestBuilder,
        forbidden_hint: &'static str,
    ) -> Result<reqwest::Response, BitbucketError> {
        let response = request
            .send()
            .await
            .map_err(|e| BitbucketError::Unavailable(format!("{action}: {e}")))?;
        match response.status().as_u16() {
            200..=299 => Ok(response),
            401 => Err(BitbucketError::Unauthorized),
            403 => Err(BitbucketError::Forbidden {
                action: action.to_owned(),
                hint: forbidden_hint,
            }),
            status @ (502..=504) => Err(BitbucketError::Unavailable(format!("{action}: HTTP {status}"))),
            status => Err(BitbucketError::Unexpected {
                action: action.to_owned(),
                status,
                body: response.text().await.unwrap_or_default().chars().take(300).collect(),
            }),
        }
    }

    async fn all_pages<T: DeserializeOwned>(
        &self,
        action: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, BitbucketError> {
        let mut out = Vec::new();
        let mut start = 0usize;
        loop {
            let start_text = start.to_string();
            let limit = PAGE.to_string();
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("start", &start_text));
            q.push(("limit", &limit));
            let response = self
                .send(
                    action,
                    self.request(reqwest::Method::GET, self.url(path, &q)),
                    "the service account must be a Bitbucket admin",
                )
                .await?;
            let page: Page<T> = response.json().await.map_err(|e| BitbucketError::Unexpected {
                action: action.to_owned(),
                status: 200,
                body: e.to_string(),
            })?;
            out.extend(page.values);
            match page.next_page_start {
                Some(next) if !page.is_last_page && next > start => start = next,
                _ => return Ok(out),
            }
        }
    }

    /// Checks that the service account can use the admin endpoints (for `check-config --online`).
    pub async fn check_admin(&self) -> Result<(), BitbucketError> {
        let url = self.url("/admin/users", &[("limit", "1")]);
        self.send(
            "list users",
            self.request(reqwest::Method::GET, url),
            "the service account is not a Bitbucket admin: give it the global Admin permission",
        )
        .await
        .map(|_| ())
    }

    /// The user with exactly this name (case-insensitively), if any.
    pub async fn find_user_by_name(&self, name: &str) -> Result<Option<BitbucketUser>, BitbucketError> {
        let users: Vec<RestUser> = self
            .all_pages("look up a user", "/admin/users", &[("filter", name)])
            .await?;
        Ok(users
            .into_iter()
            .find(|u| u.name.eq_ignore_ascii_case(name))
            .map(BitbucketUser::from))
    }

    /// The one user with exactly this email address (case-insensitively); several is an error, not a guess.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<BitbucketUser>, BitbucketError> {
        let users: Vec<RestUser> = self
            .all_pages("look up a user by email", "/admin/users", &[("filter", email)])
            .await?;
        let mut exact = users.into_iter().filter(|u| {
            u.email_address
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
        });
        match (exact.next(), exact.next()) {
            (Some(_), Some(_)) => Err(BitbucketError::AmbiguousEmail(email.to_owned())),
            (one, _) => Ok(one.map(BitbucketUser::from)),
        }
    }

    /// Creates a user with a long random password, not added to Bitbucket's default group.
    /// Returns false when the name already exists (a concurrent sign-in created it).
    pub async fn create_user(&self, name: &str, display_name: &str, email: &str) -> Result<bool, BitbucketError> {
        let password = crate::oidc::flow::random_token(48);
        let url = self.url(
            "/admin/users",
            &[
                ("name", name),
                ("displayName", display_name),
                ("emailAddress", email),
                ("password", &password),
                ("addToDefaultGroup", "false"),
                ("notify", "false"),
            ],
        );
        match self
            .send(
                "create a user",
                self.request(reqwest::Method::POST, url),
                "the licence's user limit is reached, or the service account is not an admin",
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(BitbucketError::Unexpected { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Updates display name and email.
    pub async fn update_user(&self, name: &str, display_name: &str, email: Option<&str>) -> Result<(), BitbucketError> {
        let mut body = serde_json::json!({ "name": name, "displayName": display_name });
        if let Some(e) = email {
            body["email"] = serde_json::Value::String(e.to_owned());
        }
        let request = self
            .request(reqwest::Method::PUT, self.url("/admin/users", &[]))
            .json(&body);
        self.send(
            "update a user's profile",
            request,
            "the service account must be a Bitbucket admin",
        )
        .await
        .map(|_| ())
    }

    /// Every group the user is a member of.
    pub async fn user_groups(&self, name: &str) -> Result<Vec<String>, BitbucketError> {
        let groups: Vec<RestGroup> = self
            .all_pages(
                "list a user's groups",
                "/admin/users/more-members",
                &[("context", name)],
            )
            .await?;
        Ok(groups.into_iter().map(|g| g.name).collect())
    }

    /// Whether a group of exactly this name exists.
    pub async fn group_exists(&self, name: &str) -> Result<bool, BitbucketError> {
        let groups: Vec<RestGroup> = self
            .all_pages("look up a group", "/admin/groups", &[("filter", name)])
            .await?;
        Ok(groups.iter().any(|g| g.name.eq_ignore_ascii_case(name)))
    }

    /// Creates a group; one that exists already is fine.
    pub async fn create_group(&self, name: &str) -> Result<bool, BitbucketError> {
        match self
            .send(
                "create a group",
                self.request(reqwest::Method::POST, self.url("/admin/groups", &[("name", name)])),
                "the service account must be a Bitbucket admin",
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(BitbucketError::Unexpected { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds the user to groups (they must exist).
    pub async fn add_to_groups(&self, user: &str, groups: &[String]) -> Result<(), BitbucketError> {
        let request = self
            .request(reqwest::Method::POST, self.url("/admin/users/add-groups", &[]))
            .json(&serde_json::json!({ "user": user, "groups": groups }));
        self.send(
            "add a user to groups",
            request,
            "the service account must be a Bitbucket admin",
        )
        .await
        .map(|_| ())
    }

    /// Removes the user from one group.
    pub async fn remove_from_group(&self, user: &str, group: &str) -> Result<(), BitbucketError> {
        let request = self
            .request(reqwest::Method::POST, self.url("/admin/users/remove-group", &[]))
            .json(&serde_json::json!({ "context": user, "itemName": group }));
        self.send(
            "remove a user from a group",
            request,
            "the service account must be a Bitbucket admin",
        )
        .await
        .map(|_| ())
    }
}
