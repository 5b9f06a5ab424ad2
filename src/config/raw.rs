//! The configuration file as written: every leaf keeps its source span so that validation can point at it.
//!
//! Nothing here is validated; `validate.rs` turns a [`RawConfig`] into a [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string as written in the file, with its position.
pub type Str = Spanned<String>;
/// A list of strings as written in the file, with positions.
pub type StrList = Spanned<Vec<Str>>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub server: Option<Spanned<RawServer>>,
    pub upstream: Option<Spanned<RawUpstream>>,
    pub identity: Option<Spanned<RawIdentity>>,
    pub session: Option<Spanned<RawSession>>,
    #[serde(default)]
    pub providers: Vec<Spanned<RawProvider>>,
    pub mapping: Option<Spanned<RawMapping>>,
    pub groups: Option<Spanned<RawGroups>>,
    pub bitbucket: Option<Spanned<RawBitbucket>>,
    pub sso: Option<Spanned<RawSso>>,
    pub ui: Option<Spanned<RawUi>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub log: Option<Spanned<RawLog>>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub listen: Option<Str>,
    pub public_url: Option<Str>,
    pub admin_listen: Option<Str>,
    pub trusted_proxies: Option<StrList>,
    pub tls_cert: Option<Str>,
    pub tls_key: Option<Str>,
    pub header_read_timeout: Option<Str>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub keep_alive: Option<Spanned<bool>>,
    pub shutdown_grace: Option<Str>,
    pub max_connections: Option<Spanned<i64>>,
    pub rate_limit_per_minute: Option<Spanned<i64>>,
}

/// `[upstream]`
#[derive(Debug, Default, Deserialize)]
pub struct RawUpstream {
    pub url: Option<Str>,
    pub connect_timeout: Option<Str>,
    pub idle_timeout: Option<Str>,
    pub pool_idle_timeout: Option<Str>,
    pub pool_max_idle_per_host: Option<Spanned<i64>>,
}

/// `[identity]`
#[derive(Debug, Default, Deserialize)]
pub struct RawIdentity {
    pub user_header: Option<Str>,
    pub assertion_header: Option<Str>,
    pub assertion_secret: Option<Str>,
    pub assertion_secret_file: Option<Str>,
    pub assertion_ttl: Option<Str>,
}

/// `[session]`
#[derive(Debug, Default, Deserialize)]
pub struct RawSession {
    pub cookie_name: Option<Str>,
    pub keys: Option<StrList>,
    pub keys_file: Option<Str>,
    pub lifetime: Option<Str>,
    pub idle_timeout: Option<Str>,
    pub remember_me_lifetime: Option<Str>,
    pub remember_me_default: Option<Spanned<bool>>,
    pub revalidate_every: Option<Str>,
    pub store: Option<Str>,
    pub redis_url: Option<Str>,
    pub redis_url_file: Option<Str>,
    pub redis_key_prefix: Option<Str>,
    pub redis_password: Option<Str>,
    pub redis_password_file: Option<Str>,
    pub redis_ca_file: Option<Str>,
    pub redis_pool_size: Option<Spanned<i64>>,
    pub redis_timeout: Option<Str>,
}

/// One `[[providers]]` entry.
#[derive(Debug, Default, Deserialize)]
pub struct RawProvider {
    pub id: Option<Str>,
    pub kind: Option<Str>,
    pub display_name: Option<Str>,
    pub issuer: Option<Str>,
    pub client_id: Option<Str>,
    pub client_secret: Option<Str>,
    pub client_secret_file: Option<Str>,
    pub scopes: Option<StrList>,
    pub cognito_domain: Option<Str>,
    pub jwks_url: Option<Str>,
    pub public_key_file: Option<Str>,
    pub logout_url: Option<Str>,
    pub token_auth_method: Option<Str>,
    pub userinfo: Option<Spanned<bool>>,
    pub allowed_algorithms: Option<StrList>,
}

/// `[mapping]`
#[derive(Debug, Default, Deserialize)]
pub struct RawMapping {
    pub match_by: Option<Str>,
    pub username_claim: Option<Str>,
    pub email_claim: Option<Str>,
    pub display_name_claim: Option<Str>,
    pub first_name_claim: Option<Str>,
    pub last_name_claim: Option<Str>,
    pub update_profile: Option<Spanned<bool>>,
    pub allow_user_creation: Option<Spanned<bool>>,
    pub allowed_email_domains: Option<StrList>,
}

/// `[groups]`
#[derive(Debug, Default, Deserialize)]
pub struct RawGroups {
    pub enabled: Option<Spanned<bool>>,
    pub claim: Option<Str>,
    pub mode: Option<Str>,
    pub default_groups: Option<StrList>,
    pub assign_default_to: Option<Str>,
    pub sync_existing_users: Option<Spanned<bool>>,
    pub keep_existing: Option<Spanned<bool>>,
    pub exclude: Option<StrList>,
    pub create_missing: Option<Spanned<bool>>,
    pub require_mapped_group: Option<Spanned<bool>>,
    pub map: Option<Spanned<BTreeMap<String, StrList>>>,
}

/// `[bitbucket]`
#[derive(Debug, Default, Deserialize)]
pub struct RawBitbucket {
    pub url: Option<Str>,
    pub admin_user: Option<Str>,
    pub admin_password: Option<Str>,
    pub admin_password_file: Option<Str>,
    pub timeout: Option<Str>,
}

/// `[sso]`
#[derive(Debug, Default, Deserialize)]
pub struct RawSso {
    pub enabled: Option<Spanned<bool>>,
    pub auto_redirect: Option<Spanned<bool>>,
    pub auto_redirect_delay: Option<Str>,
    pub default_provider: Option<Str>,
    pub public_paths: Option<StrList>,
    pub api_paths: Option<StrList>,
    pub backdoor: Option<Spanned<RawBackdoor>>,
    #[serde(default)]
    pub redirection_rules: Vec<Spanned<RawRedirectionRule>>,
}

/// `[sso.backdoor]`
#[derive(Debug, Default, Deserialize)]
pub struct RawBackdoor {
    pub enabled: Option<Spanned<bool>>,
    pub query: Option<Str>,
    pub key: Option<Str>,
    pub key_file: Option<Str>,
    pub allowed_networks: Option<StrList>,
}

/// One `[[sso.redirection_rules]]` entry.
#[derive(Debug, Default, Deserialize)]
pub struct RawRedirectionRule {
    pub email_domain: Option<Str>,
    pub provider: Option<Str>,
}

/// `[ui]`
#[derive(Debug, Default, Deserialize)]
pub struct RawUi {
    pub login_button_text: Option<Str>,
    pub templates_dir: Option<Str>,
    pub post_logout_url: Option<Str>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub test_page_groups: Option<StrList>,
    pub test_page_any_user: Option<Spanned<bool>>,
    pub api_token: Option<Str>,
    pub api_token_file: Option<Str>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    pub format: Option<Str>,
    pub level: Option<Str>,
}
