//! The validated configuration: every value typed, every default applied, every secret loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

/// A secret value (password, key, token). Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub upstream: Upstream,
    pub identity: Identity,
    pub session: Session,
    pub providers: Vec<Provider>,
    pub mapping: Mapping,
    pub groups: Groups,
    pub bitbucket: Option<Bitbucket>,
    pub sso: Sso,
    pub ui: Ui,
    pub admin: Admin,
    pub log: Log,
}

/// `[server]`: the listeners.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub public_url: Url,
    pub admin_listen: SocketAddr,
    pub trusted_proxies: Vec<IpNet>,
    pub tls: Option<Tls>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub keep_alive: bool,
    pub shutdown_grace: Duration,
    /// Most client connections served at once; more wait in the kernel's queue.
    pub max_connections: usize,
    /// Sign-in requests (login, callback, test page, emergency login) per client address per minute; 0: no limit.
    pub rate_limit_per_minute: u32,
}

/// TLS certificate and key for the public listener.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[upstream]`: where Bitbucket is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: Url,
    pub connect_timeout: Duration,
    /// Longest silence allowed while waiting for response headers or between body chunks.
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

/// `[identity]`: how the signed-in user is named to Bitbucket.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_header: String,
    pub assertion_header: String,
    pub assertion_secret: Option<Secret>,
    pub assertion_ttl: Duration,
}

/// Where sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStore {
    Cookie,
    Redis,
}

/// `[session]`
#[derive(Debug, Clone)]
pub struct Session {
    pub cookie_name: String,
    /// Decoded keys; the first encrypts, all decrypt.
    pub keys: Vec<SessionKey>,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub remember_me_lifetime: Duration,
    /// Whether "keep me signed in" is ticked when the login page is skipped or first shown.
    pub remember_me_default: bool,
    pub revalidate_every: Option<Duration>,
    pub store: SessionStore,
    pub redis_url: Option<Secret>,
    pub redis_key_prefix: String,
    /// Overrides the password of `redis_url` (which may also carry one: `redis://:password@host`).
    pub redis_password: Option<Secret>,
    /// PEM root certificates to trust for `rediss://` instead of the system's.
    pub redis_ca_file: Option<Vec<u8>>,
    /// Multiplexed connections kept open to Redis.
    pub redis_pool_size: usize,
    /// Longest wait for one Redis command.
    pub redis_timeout: Duration,
}

/// A decoded session key (at least 32 bytes).
#[derive(Clone)]
pub struct SessionKey(pub Vec<u8>);

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey([redacted; {} bytes])", self.0.len())
    }
}

/// Kind of OpenID provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Cognito,
    Oidc,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

/// Where the provider's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `jwks_uri` of discovery.
    Discovery,
    JwksUrl(Url),
    PublicKeyFile(PathBuf),
}

/// One `[[providers]]` entry.
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    pub kind: ProviderKind,
    pub display_name: String,
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    pub cognito_domain: Option<Url>,
    pub keys: KeySource,
    pub logout_url: Option<Url>,
    pub token_auth_method: TokenAuthMethod,
    pub userinfo: bool,
    pub allowed_algorithms: Vec<String>,
}

/// How a Bitbucket account is found for a provider identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchBy {
    Username,
    Email,
}

/// Which claims give the display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisplayNameClaims {
    Single(String),
    FirstLast { first: String, last: String },
}

/// `[mapping]`
#[derive(Debug, Clone)]
pub struct Mapping {
    pub match_by: MatchBy,
    pub username_claim: String,
    pub email_claim: String,
    pub display_name: DisplayNameClaims,
    pub update_profile: bool,
    pub allow_user_creation: bool,
    /// Lower-cased domains; empty means any.
    pub allowed_email_domains: Vec<String>,
}

/// How provider groups become Bitbucket groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupMode {
    Manual,
    OnTheFly,
}

/// Who receives the default groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignDefaultTo {
    All,
    New,
    None,
}

/// `[groups]`
#[derive(Debug, Clone)]
pub struct Groups {
    pub enabled: bool,
    pub claim: String,
    pub mode: GroupMode,
    pub default_groups: Vec<String>,
    pub assign_default_to: AssignDefaultTo,
    pub sync_existing_users: bool,
    pub keep_existing: bool,
    pub exclude: Vec<String>,
    pub create_missing: bool,
    pub require_mapped_group: bool,
    /// Bitbucket group → provider groups.
    pub map: BTreeMap<String, Vec<String>>,
}

/// `[bitbucket]`: REST provisioning with an admin service account.
#[derive(Debug, Clone)]
pub struct Bitbucket {
    /// Base URL for REST calls; defaults to the upstream URL.
    pub url: Url,
    pub admin_user: String,
    pub admin_password: Secret,
    pub timeout: Duration,
}

/// `[sso]`
#[derive(Debug, Clone)]
pub struct Sso {
    pub enabled: bool,
    pub auto_redirect: bool,
    pub auto_redirect_delay: Duration,
    pub default_provider: Option<String>,
    pub public_paths: Vec<String>,
    pub api_paths: Vec<String>,
    pub backdoor: Backdoor,
    pub redirection_rules: Vec<RedirectionRule>,
}

/// `[sso.backdoor]`
#[derive(Debug, Clone)]
pub struct Backdoor {
    pub enabled: bool,
    pub query: String,
    pub key: Option<Secret>,
    pub allowed_networks: Vec<IpNet>,
}

/// `[[sso.redirection_rules]]`
#[derive(Debug, Clone)]
pub struct RedirectionRule {
    /// Lower-cased.
    pub email_domain: String,
    pub provider: String,
}

/// `[ui]`
#[derive(Debug, Clone)]
pub struct Ui {
    pub login_button_text: String,
    pub templates_dir: Option<PathBuf>,
    pub post_logout_url: Option<Url>,
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct Admin {
    pub test_page_groups: Vec<String>,
    /// With an empty `test_page_groups`: whether any signed-in user may open `/sso/test`.
    pub test_page_any_user: bool,
    /// Bearer token of the session API on the admin listener (`/admin/sessions`); off without one.
    pub api_token: Option<Secret>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

impl Config {
    /// The cookie name actually used: `__Host-` is added when the public URL is https.
    pub fn session_cookie_name(&self) -> String {
        if self.server.public_url.scheme() == "https" {
            format!("__Host-{}", self.session.cookie_name)
        } else {
            self.session.cookie_name.clone()
        }
    }

    /// One line for `check-config`.
    pub fn summary(&self) -> String {
        format!(
            "upstream {}, public URL {}, SSO {}, {} provider(s), session store {}, REST provisioning {}",
            self.upstream.url,
            self.server.public_url,
            if self.sso.enabled { "on" } else { "off" },
            self.providers.len(),
            match self.session.store {
                SessionStore::Cookie => "cookie",
                SessionStore::Redis => "redis",
            },
            if self.bitbucket.is_some() { "on" } else { "off" },
        )
    }
}
