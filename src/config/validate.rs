//! From the file as written to a typed [`Config`]: every value checked, every problem recorded with its place.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use ipnet::IpNet;
use toml::Spanned;
use url::Url;

use super::duration;
use super::env;
use super::error::{Problem, line_col};
use super::raw::{self, Str, StrList};
use super::types::*;

/// Smallest accepted secret for signing the identity assertion, in bytes.
pub const MIN_ASSERTION_SECRET_BYTES: usize = 32;
/// Smallest accepted session key, in bytes after base64 decoding.
pub const MIN_SESSION_KEY_BYTES: usize = 32;
/// Smallest accepted backdoor key, in characters.
pub const MIN_BACKDOOR_KEY_CHARS: usize = 16;

/// Headers that must never be used to carry the identity: the proxy or HTTP itself owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "set-cookie",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
    "origin",
    "referer",
];

const SIGNING_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Validation state: the source (for positions), where relative paths start, the environment, and what went wrong.
pub struct Ctx<'a> {
    src: &'a str,
    base_dir: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
}

impl<'a> Ctx<'a> {
    /// A fresh context.
    pub fn new(src: &'a str, base_dir: &'a Path, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Ctx {
            src,
            base_dir,
            env,
            problems: Vec::new(),
        }
    }

    /// Every problem found.
    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    fn at(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = line_col(self.src, span.start);
        self.problems.push(Problem {
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The string with `${NAME}` references replaced.
    fn text(&mut self, v: &Str, key: &str) -> Option<String> {
        match env::expand(v.get_ref(), self.env) {
            Ok(s) => Some(s),
            Err(e) => {
                self.at(v.span(), key, e);
                None
            }
        }
    }

    fn opt_text(&mut self, v: &Option<Str>, key: &str) -> Option<String> {
        v.as_ref().and_then(|v| self.text(v, key))
    }

    fn text_or(&mut self, v: &Option<Str>, key: &str, default: &str) -> String {
        match v {
            Some(v) => self.text(v, key).unwrap_or_else(|| default.to_owned()),
            None => default.to_owned(),
        }
    }

    /// A required string; a missing one is reported at `section`.
    fn required(
        &mut self,
        v: &Option<Str>,
        section: Range<usize>,
        key: &str,
        expected: &str,
    ) -> Option<(String, Range<usize>)> {
        match v {
            Some(v) => self.text(v, key).map(|s| (s, v.span())),
            None => {
                self.at(section, key, format!("is required: {expected}"));
                None
            }
        }
    }

    fn parsed<T>(&mut self, v: &Option<Str>, key: &str, default: &str, parse: impl Fn(&str) -> Result<T, String>) -> T
    where
        T: Default,
    {
        let (text, span) = match v {
            Some(v) => match self.text(v, key) {
                Some(t) => (t, v.span()),
                None => return parse(default).unwrap_or_default(),
            },
            None => (default.to_owned(), 0..0),
        };
        match parse(&text) {
            Ok(value) => value,
            Err(e) => {
                self.at(span, key, e);
                // Carry on with the default so that one mistake is reported once, not again by later checks.
                parse(default).unwrap_or_default()
            }
        }
    }

    /// A whole number within `range`; out of range is reported and the default used.
    fn bounded(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        match v {
            Some(n) if !range.contains(n.get_ref()) => {
                self.at(
                    n.span(),
                    key,
                    format!(
                        "expected a number from {} to {}, got {}",
                        range.start(),
                        range.end(),
                        n.get_ref()
                    ),
                );
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        }
    }

    fn duration(&mut self, v: &Option<Str>, key: &str, default: &str) -> Duration {
        self.parsed(v, key, default, duration::parse)
    }

    fn socket_addr(&mut self, v: &Option<Str>, key: &str, default: &str) -> Option<SocketAddr> {
        self.parsed(v, key, default, |s| {
            s.parse::<SocketAddr>().map(Some).map_err(|_| {
                format!("expected an IP address and port such as \"0.0.0.0:8080\" or \"[::1]:8080\", got \"{s}\"")
            })
        })
    }

    fn choice<T: Copy>(&mut self, v: &Option<Str>, key: &str, options: &[(&str, T)], default: T) -> T {
        let Some(v) = v else { return default };
        let Some(text) = self.text(v, key) else { return default };
        match options.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => *value,
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.at(
                    v.span(),
                    key,
                    format!("expected one of {}, got \"{text}\"", names.join(", ")),
                );
                default
            }
        }
    }

    fn list(&mut self, v: &Option<StrList>, key: &str, default: &[&str]) -> Vec<String> {
        match v {
            Some(list) => list.get_ref().iter().filter_map(|item| self.text(item, key)).collect(),
            None => default.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Strings with their spans, for per-item checks.
    fn items(&mut self, v: &Option<StrList>, key: &str) -> Vec<(String, Range<usize>)> {
        match v {
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|item| self.text(item, key).map(|t| (t, item.span())))
                .collect(),
            None => Vec::new(),
        }
    }

    fn networks(&mut self, v: &Option<StrList>, key: &str) -> Vec<IpNet> {
        let items = self.items(v, key);
        items
            .into_iter()
            .filter_map(|(text, span)| match parse_network(&text) {
                Ok(net) => Some(net),
                Err(e) => {
                    self.at(span, key, e);
                    None
                }
            })
            .collect()
    }

    /// An absolute http(s) URL. Plain http is refused unless `allow_http` or the host is loopback.
    fn url(&mut self, text: &str, span: Range<usize>, key: &str, allow_http: bool) -> Option<Url> {
        match Url::parse(text) {
            Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && (allow_http || is_loopback(&url))) => {
                if url.host_str().is_none_or(str::is_empty) {
                    self.at(span, key, format!("expected a URL with a host, got \"{text}\""));
                    return None;
                }
                Some(url)
            }
            Ok(url) if url.scheme() == "http" => {
                self.at(
                    span,
                    key,
                    format!("expected an https URL (plain http is only accepted for localhost), got \"{text}\""),
                );
                None
            }
            _ => {
                self.at(
                    span,
                    key,
                    format!("expected an absolute http(s) URL such as \"https://host.example.com\", got \"{text}\""),
                );
                None
            }
        }
    }

    fn opt_url(&mut self, v: &Option<Str>, key: &str, allow_http: bool) -> Option<Url> {
        let v = v.as_ref()?;
        let text = self.text(v, key)?;
        if text.is_empty() {
            return None;
        }
        self.url(&text, v.span(), key, allow_http)
    }

    /// A path relative to the configuration file's folder.
    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    /// A secret given inline (`key`) or in a file (`key_file`); not both.
    fn secret(&mut self, value: &Option<Str>, file: &Option<Str>, key: &str) -> Option<(Secret, Range<usize>)> {
        match (value, file) {
            (Some(_), Some(f)) => {
                self.at(
                    f.span(),
                    &format!("{key}_file"),
                    format!("give either {key} or {key}_file, not both"),
                );
                None
            }
            (Some(v), None) => self.text(v, key).map(|s| (Secret::new(s), v.span())),
            (None, Some(f)) => {
                let file_key = format!("{key}_file");
                let name = self.text(f, &file_key)?;
                let path = self.path(&name);
                match std::fs::read_to_string(&path) {
                    Ok(content) => Some((Secret::new(content.trim_end_matches(['\n', '\r']).to_owned()), f.span())),
                    Err(e) => {
                        self.at(
                            f.span(),
                            &file_key,
                            format!("cannot read secret file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A CIDR such as `10.0.0.0/8`, or a single address.
fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return if net.trunc() == net {
            Ok(net)
        } else {
            Err(format!(
                "\"{text}\" has host bits set; did you mean \"{}\"?",
                net.trunc()
            ))
        };
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("expected a CIDR such as \"10.0.0.0/8\" or an IP address, got \"{text}\""))
}

fn section<T: Default>(v: Option<Spanned<T>>) -> (T, Range<usize>) {
    match v {
        Some(s) => {
            let span = s.span();
            (s.into_inner(), span)
        }
        None => (T::default(), 0..0),
    }
}

fn flag(v: &Option<Spanned<bool>>, default: bool) -> bool {
    v.as_ref().map(|b| *b.get_ref()).unwrap_or(default)
}

/// Validates everything; returns `None` only when a value the rest depends on is unusable.
pub fn validate(raw: raw::RawConfig, ctx: &mut Ctx<'_>) -> Option<Config> {
    let has_bitbucket = raw.bitbucket.is_some();
    let server = server(raw.server, ctx);
    let upstream = upstream(raw.upstream, ctx);
    let (sso_raw, sso_span) = section(raw.sso);
    let sso_enabled = flag(&sso_raw.enabled, true);
    let identity = identity(raw.identity, sso_enabled, ctx);
    let session = session(raw.session, sso_enabled, ctx);
    let declared: Vec<String> = raw
        .providers
        .iter()
        .filter_map(|p| p.get_ref().id.as_ref().map(|id| id.get_ref().clone()))
        .collect();
    let provider_count = raw.providers.len();
    let providers = providers(raw.providers, ctx);
    let mapping = mapping(raw.mapping, has_bitbucket, ctx);
    let groups = groups(raw.groups, has_bitbucket, ctx);
    let bitbucket = bitbucket(raw.bitbucket, upstream.as_ref().map(|u| &u.url), ctx);
    let sso = sso(sso_raw, sso_span.clone(), &declared, &providers, ctx);
    let ui = ui(raw.ui, ctx);
    let (admin_raw, _) = section(raw.admin);
    let admin = Admin {
        test_page_groups: ctx.list(&admin_raw.test_page_groups, "admin.test_page_groups", &[]),
        test_page_any_user: flag(&admin_raw.test_page_any_user, false),
        api_token: ctx
            .secret(&admin_raw.api_token, &admin_raw.api_token_file, "admin.api_token")
            .and_then(|(token, at)| {
                if token.expose().len() >= 16 {
                    Some(token)
                } else {
                    ctx.at(
                        at,
                        "admin.api_token",
                        "must be at least 16 characters; generate one with `bitbucket-sso-proxy gen-key`",
                    );
                    None
                }
            }),
    };
    let log = log(raw.log, ctx);

    if sso.enabled && provider_count == 0 {
        ctx.at(
            sso_span,
            "providers",
            "SSO is enabled but no [[providers]] is configured: add one, or set sso.enabled = false",
        );
    }
    Some(Config {
        server: server?,
        upstream: upstream?,
        identity,
        session,
        providers,
        mapping,
        groups,
        bitbucket,
        sso,
        ui,
        admin,
        log,
    })
}

fn server(raw: Option<Spanned<raw::RawServer>>, ctx: &mut Ctx<'_>) -> Option<Server> {
    let (s, span) = section(raw);
    let listen = ctx.socket_addr(&s.listen, "server.listen", "0.0.0.0:8080");
    let admin_listen = ctx.socket_addr(&s.admin_listen, "server.admin_listen", "127.0.0.1:9090");
    if let (Some(a), Some(b)) = (listen, admin_listen)
        && a == b
        && a.port() != 0
    {
        let at = s.admin_listen.as_ref().map(|v| v.span()).unwrap_or(span.clone());
        ctx.at(
            at,
            "server.admin_listen",
            format!("must differ from server.listen ({a}): health and metrics need their own port"),
        );
    }
    let public_url = match ctx.required(&s.public_url, span.clone(), "server.public_url", "the external URL of Bitbucket, such as \"https://bitbucket.example.com\"") {
        Some((text, at)) => ctx.url(&text, at.clone(), "server.public_url", true).and_then(|url| {
            if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                ctx.at(at, "server.public_url", format!("expected the site root without path, query or fragment (a Bitbucket context path is not supported yet), got \"{text}\""));
                None
            } else {
                Some(url)
            }
        }),
        None => None,
    };
    let trusted_proxies = ctx.networks(&s.trusted_proxies, "server.trusted_proxies");
    let tls = match (&s.tls_cert, &s.tls_key) {
        (None, None) => None,
        (Some(v), _) | (None, Some(v)) => {
            ctx.at(v.span(), if s.tls_cert.is_some() { "server.tls_cert" } else { "server.tls_key" },
                "TLS on the public listener is not available in this version: terminate TLS at the load balancer or ingress and remove tls_cert/tls_key");
            None
        }
    };
    let header_read_timeout = ctx.duration(&s.header_read_timeout, "server.header_read_timeout", "10s");
    if header_read_timeout.is_zero() {
        ctx.at(
            s.header_read_timeout.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
            "server.header_read_timeout",
            "must be greater than 0s: it protects against slow-header attacks",
        );
    }
    let max_header_bytes = match &s.max_header_bytes {
        Some(v) if !(8192..=1_048_576).contains(v.get_ref()) => {
            ctx.at(
                v.span(),
                "server.max_header_bytes",
                format!("expected a number of bytes from 8192 to 1048576, got {}", v.get_ref()),
            );
            65_536
        }
        Some(v) => usize::try_from(*v.get_ref()).unwrap_or(65_536),
        None => 65_536,
    };
    let shutdown_grace = ctx.duration(&s.shutdown_grace, "server.shutdown_grace", "30s");
    let max_connections =
        usize::try_from(ctx.bounded(&s.max_connections, "server.max_connections", 1..=1_000_000, 10_000))
            .unwrap_or(10_000);
    let rate_limit_per_minute = u32::try_from(ctx.bounded(
        &s.rate_limit_per_minute,
        "server.rate_limit_per_minute",
        0..=100_000,
        60,
    ))
    .unwrap_or(60);
    Some(Server {
        listen: listen?,
        public_url: public_url?,
        admin_listen: admin_listen?,
        trusted_proxies,
        tls,
        header_read_timeout,
        max_header_bytes,
        keep_alive: flag(&s.keep_alive, true),
        shutdown_grace,
        max_connections,
        rate_limit_per_minute,
    })
}

fn upstream(raw: Option<Spanned<raw::RawUpstream>>, ctx: &mut Ctx<'_>) -> Option<Upstream> {
    let (u, span) = section(raw);
    let url = match ctx.required(
        &u.url,
        span.clone(),
        "upstream.url",
        "Bitbucket's own address, such as \"http://127.0.0.1:7990\"",
    ) {
        Some((text, at)) => ctx.url(&text, at.clone(), "upstream.url", true).and_then(|url| {
            if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                ctx.at(
                    at,
                    "upstream.url",
                    format!("expected scheme, host and port only (no path, query or fragment), got \"{text}\""),
                );
                None
            } else {
                Some(url)
            }
        }),
        None => None,
    };
    let connect_timeout = ctx.duration(&u.connect_timeout, "upstream.connect_timeout", "5s");
    let idle_timeout = ctx.duration(&u.idle_timeout, "upstream.idle_timeout", "10m");
    for (value, key, d) in [
        (&u.connect_timeout, "upstream.connect_timeout", connect_timeout),
        (&u.idle_timeout, "upstream.idle_timeout", idle_timeout),
    ] {
        if d.is_zero() {
            ctx.at(
                value.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
                key,
                "must be greater than 0s",
            );
        }
    }
    let pool_idle_timeout = ctx.duration(&u.pool_idle_timeout, "upstream.pool_idle_timeout", "15s");
    let pool_max_idle_per_host = match &u.pool_max_idle_per_host {
        Some(v) if !(0..=10_000).contains(v.get_ref()) => {
            ctx.at(
                v.span(),
                "upstream.pool_max_idle_per_host",
                format!("expected a number from 0 to 10000, got {}", v.get_ref()),
            );
            64
        }
        Some(v) => usize::try_from(*v.get_ref()).unwrap_or(64),
        None => 64,
    };
    Some(Upstream {
        url: url?,
        connect_timeout,
        idle_timeout,
        pool_idle_timeout,
        pool_max_idle_per_host,
    })
}

fn header_name(ctx: &mut Ctx<'_>, v: &Option<Str>, key: &str, default: &str) -> String {
    let name = ctx.text_or(v, key, default);
    let at = v.as_ref().map(|v| v.span()).unwrap_or(0..0);
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
        ctx.at(
            at,
            key,
            format!("expected an HTTP header name (letters, digits, `-`), got \"{name}\""),
        );
    } else if RESERVED_HEADERS.contains(&normalize_header(&name).as_str()) {
        ctx.at(at, key, format!("\"{name}\" is a standard header and cannot carry the identity; use a dedicated name such as \"{default}\""));
    }
    name
}

/// Lower case with `_` read as `-`, as the identity-header stripping compares names.
fn normalize_header(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn identity(raw: Option<Spanned<raw::RawIdentity>>, sso_enabled: bool, ctx: &mut Ctx<'_>) -> Identity {
    let (i, span) = section(raw);
    let user_header = header_name(ctx, &i.user_header, "identity.user_header", "X-Forwarded-User");
    let assertion_header = header_name(
        ctx,
        &i.assertion_header,
        "identity.assertion_header",
        "X-Bbsso-Assertion",
    );
    if normalize_header(&user_header) == normalize_header(&assertion_header) {
        ctx.at(
            i.assertion_header.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
            "identity.assertion_header",
            "must differ from identity.user_header",
        );
    }
    let secret = ctx.secret(
        &i.assertion_secret,
        &i.assertion_secret_file,
        "identity.assertion_secret",
    );
    let assertion_secret = match secret {
        Some((s, at)) if s.expose().len() < MIN_ASSERTION_SECRET_BYTES => {
            ctx.at(at, "identity.assertion_secret", format!("must be at least {MIN_ASSERTION_SECRET_BYTES} bytes (it signs the identity Bitbucket trusts); generate one with `bitbucket-sso-proxy gen-key`"));
            None
        }
        Some((s, _)) => Some(s),
        None => {
            if sso_enabled && i.assertion_secret.is_none() && i.assertion_secret_file.is_none() {
                ctx.at(span.clone(), "identity.assertion_secret", "is required when SSO is enabled: the shared secret the Bitbucket companion authenticator verifies; generate one with `bitbucket-sso-proxy gen-key`");
            }
            None
        }
    };
    let assertion_ttl = ctx.duration(&i.assertion_ttl, "identity.assertion_ttl", "60s");
    if !(Duration::from_secs(5)..=Duration::from_secs(600)).contains(&assertion_ttl) {
        ctx.at(
            i.assertion_ttl.as_ref().map(|v| v.span()).unwrap_or(span),
            "identity.assertion_ttl",
            "expected a duration from \"5s\" to \"10m\"",
        );
    }
    Identity {
        user_header,
        assertion_header,
        assertion_secret,
        assertion_ttl,
    }
}

fn session(raw: Option<Spanned<raw::RawSession>>, sso_enabled: bool, ctx: &mut Ctx<'_>) -> Session {
    let (s, span) = section(raw);
    let cookie_name = ctx.text_or(&s.cookie_name, "session.cookie_name", "bbsso");
    if cookie_name.is_empty()
        || !cookie_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || cookie_name.starts_with("__")
    {
        ctx.at(s.cookie_name.as_ref().map(|v| v.span()).unwrap_or(span.clone()), "session.cookie_name",
            format!("expected letters, digits, `_` or `-` without a leading `__` (the `__Host-` prefix is added automatically for https), got \"{cookie_name}\""));
    }
    let key_texts: Vec<(String, Range<usize>)> = match (&s.keys, &s.keys_file) {
        (Some(_), Some(f)) => {
            ctx.at(
                f.span(),
                "session.keys_file",
                "give either session.keys or session.keys_file, not both",
            );
            Vec::new()
        }
        (Some(_), None) => ctx.items(&s.keys, "session.keys"),
        (None, Some(f)) => match ctx.secret(&None, &s.keys_file, "session.keys") {
            Some((content, at)) => content
                .expose()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| (l.to_owned(), at.clone()))
                .collect(),
            None => {
                let _ = f;
                Vec::new()
            }
        },
        (None, None) => Vec::new(),
    };
    let mut keys = Vec::new();
    for (i, (text, at)) in key_texts.iter().enumerate() {
        match decode_key(text) {
            Some(bytes) if bytes.len() >= MIN_SESSION_KEY_BYTES => keys.push(SessionKey(bytes)),
            Some(bytes) => ctx.at(at.clone(), &format!("session.keys[{i}]"), format!("is {} bytes long; each key must be at least {MIN_SESSION_KEY_BYTES} bytes (base64); generate one with `bitbucket-sso-proxy gen-key`", bytes.len())),
            None => ctx.at(at.clone(), &format!("session.keys[{i}]"), "is not valid base64; generate a key with `bitbucket-sso-proxy gen-key`"),
        }
    }
    let no_keys_given = s.keys.as_ref().is_none_or(|l| l.get_ref().is_empty()) && s.keys_file.is_none();
    if sso_enabled && no_keys_given {
        let at = s.keys.as_ref().map(|v| v.span()).unwrap_or(span.clone());
        ctx.at(at, "session.keys", "at least one key is required when SSO is enabled (the first encrypts, all decrypt); generate one with `bitbucket-sso-proxy gen-key`");
    }
    let lifetime = ctx.duration(&s.lifetime, "session.lifetime", "8h");
    let idle_timeout = ctx.duration(&s.idle_timeout, "session.idle_timeout", "1h");
    if idle_timeout > lifetime {
        ctx.at(
            s.idle_timeout.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
            "session.idle_timeout",
            "must not be longer than session.lifetime",
        );
    }
    if lifetime.is_zero() {
        ctx.at(
            s.lifetime.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
            "session.lifetime",
            "must be greater than 0s",
        );
    }
    let remember_me_lifetime = ctx.duration(&s.remember_me_lifetime, "session.remember_me_lifetime", "30d");
    let revalidate = ctx.duration(&s.revalidate_every, "session.revalidate_every", "15m");
    let revalidate_every = (!revalidate.is_zero()).then_some(revalidate);
    let store = ctx.choice(
        &s.store,
        "session.store",
        &[("cookie", SessionStore::Cookie), ("redis", SessionStore::Redis)],
        SessionStore::Cookie,
    );
    let redis_url = ctx
        .secret(&s.redis_url, &s.redis_url_file, "session.redis_url")
        .and_then(|(url, at)| {
            if url.expose().starts_with("redis://") || url.expose().starts_with("rediss://") {
                Some(url)
            } else {
                ctx.at(
                    at,
                    "session.redis_url",
                    "expected a URL starting with redis:// or rediss:// (TLS)",
                );
                None
            }
        });
    if store == SessionStore::Redis && s.redis_url.is_none() && s.redis_url_file.is_none() {
        ctx.at(
            s.store.as_ref().map(|v| v.span()).unwrap_or(span),
            "session.redis_url",
            "is required when session.store = \"redis\"",
        );
    }
    let redis_key_prefix = ctx.text_or(&s.redis_key_prefix, "session.redis_key_prefix", "bbsso:");
    let redis_password = ctx
        .secret(&s.redis_password, &s.redis_password_file, "session.redis_password")
        .map(|(p, _)| p);
    let redis_ca_file = s.redis_ca_file.as_ref().and_then(|f| {
        let name = ctx.text(f, "session.redis_ca_file")?;
        let path = ctx.path(&name);
        match std::fs::read(&path) {
            Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                ctx.at(
                    f.span(),
                    "session.redis_ca_file",
                    format!(
                        "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                        path.display()
                    ),
                );
                None
            }
            Err(e) => {
                ctx.at(
                    f.span(),
                    "session.redis_ca_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    let redis_pool_size =
        usize::try_from(ctx.bounded(&s.redis_pool_size, "session.redis_pool_size", 1..=64, 4)).unwrap_or(4);
    let redis_timeout = ctx.duration(&s.redis_timeout, "session.redis_timeout", "2s");
    if redis_timeout.is_zero() {
        ctx.at(
            s.redis_timeout.as_ref().map(|v| v.span()).unwrap_or(0..0),
            "session.redis_timeout",
            "must be greater than 0s",
        );
    }
    let session = Session {
        cookie_name,
        keys,
        lifetime,
        idle_timeout,
        remember_me_lifetime,
        remember_me_default: flag(&s.remember_me_default, false),
        revalidate_every,
        store,
        redis_url,
        redis_key_prefix,
        redis_password,
        redis_ca_file,
        redis_pool_size,
        redis_timeout,
    };
    if session.store == SessionStore::Redis
        && session.redis_url.is_some()
        && let Err(problem) = crate::session::redis::client(&session)
    {
        let at = s
            .redis_url
            .as_ref()
            .or(s.redis_url_file.as_ref())
            .map(|v| v.span())
            .unwrap_or(0..0);
        ctx.at(at, "session.redis_url", problem);
    }
    session
}

/// Accepts standard or URL-safe base64, padded or not.
pub fn decode_key(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
}

fn providers(raw: Vec<Spanned<raw::RawProvider>>, ctx: &mut Ctx<'_>) -> Vec<Provider> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (n, p) in raw.into_iter().enumerate() {
        let span = p.span();
        let p = p.into_inner();
        let key = |k: &str| format!("providers[{n}].{k}");
        let id = ctx.required(&p.id, span.clone(), &key("id"), "a short name such as \"cognito\"");
        if let Some((id, at)) = &id {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                ctx.at(
                    at.clone(),
                    &key("id"),
                    format!("expected letters, digits, `-` or `_`, got \"{id}\""),
                );
            } else if !seen.insert(id.clone()) {
                ctx.at(
                    at.clone(),
                    &key("id"),
                    format!("\"{id}\" is used by another provider; ids must be unique"),
                );
            }
        }
        let kind = ctx.choice(
            &p.kind,
            &key("kind"),
            &[("cognito", ProviderKind::Cognito), ("oidc", ProviderKind::Oidc)],
            ProviderKind::Oidc,
        );
        let issuer = ctx
            .required(
                &p.issuer,
                span.clone(),
                &key("issuer"),
                "the provider's issuer URL (discovery is read from {issuer}/.well-known/openid-configuration)",
            )
            .and_then(|(text, at)| ctx.url(&text, at, &key("issuer"), false));
        let client_id = ctx.required(
            &p.client_id,
            span.clone(),
            &key("client_id"),
            "the app client id registered at the provider",
        );
        let client_secret = ctx
            .secret(&p.client_secret, &p.client_secret_file, &key("client_secret"))
            .map(|(s, _)| s);
        let scopes = ctx.list(&p.scopes, &key("scopes"), &["openid", "email", "profile"]);
        if !scopes.iter().any(|s| s == "openid") {
            ctx.at(
                p.scopes.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
                &key("scopes"),
                "must include \"openid\": without it the provider returns no ID token",
            );
        }
        let cognito_domain = ctx.opt_url(&p.cognito_domain, &key("cognito_domain"), false);
        if kind == ProviderKind::Cognito && p.cognito_domain.is_none() {
            ctx.at(span.clone(), &key("cognito_domain"), "is required for kind = \"cognito\": the user pool's domain, such as \"https://example.auth.us-east-1.amazoncognito.com\"");
        }
        if kind == ProviderKind::Oidc && p.cognito_domain.is_some() {
            ctx.at(
                p.cognito_domain.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
                &key("cognito_domain"),
                "applies only to kind = \"cognito\"",
            );
        }
        let jwks_url = ctx.opt_url(&p.jwks_url, &key("jwks_url"), false);
        let public_key_file = ctx
            .opt_text(&p.public_key_file, &key("public_key_file"))
            .map(|t| ctx.path(&t));
        let keys = match (jwks_url, public_key_file) {
            (Some(_), Some(_)) => {
                ctx.at(
                    p.public_key_file.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
                    &key("public_key_file"),
                    "give either jwks_url or public_key_file, not both",
                );
                KeySource::Discovery
            }
            (Some(url), None) => KeySource::JwksUrl(url),
            (None, Some(path)) => {
                if !path.is_file() {
                    ctx.at(
                        p.public_key_file.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
                        &key("public_key_file"),
                        format!("file {} does not exist or is not a file", path.display()),
                    );
                }
                KeySource::PublicKeyFile(path)
            }
            (None, None) => KeySource::Discovery,
        };
        let logout_url = ctx.opt_url(&p.logout_url, &key("logout_url"), false);
        let token_auth_method = ctx.choice(
            &p.token_auth_method,
            &key("token_auth_method"),
            &[
                ("client_secret_basic", TokenAuthMethod::ClientSecretBasic),
                ("client_secret_post", TokenAuthMethod::ClientSecretPost),
            ],
            TokenAuthMethod::ClientSecretBasic,
        );
        let algs = ctx.items(&p.allowed_algorithms, &key("allowed_algorithms"));
        let mut allowed_algorithms = Vec::new();
        for (alg, at) in algs {
            if SIGNING_ALGORITHMS.contains(&alg.as_str()) {
                allowed_algorithms.push(alg);
            } else if alg.eq_ignore_ascii_case("none") || alg.to_ascii_uppercase().starts_with("HS") {
                ctx.at(
                    at,
                    &key("allowed_algorithms"),
                    format!("\"{alg}\" is never accepted: ID tokens must be signed with the provider's private key"),
                );
            } else {
                ctx.at(
                    at,
                    &key("allowed_algorithms"),
                    format!("expected some of {}, got \"{alg}\"", SIGNING_ALGORITHMS.join(", ")),
                );
            }
        }
        if p.allowed_algorithms.is_none() {
            allowed_algorithms.push("RS256".to_owned());
        } else if allowed_algorithms.is_empty() && p.allowed_algorithms.as_ref().is_some_and(|l| l.get_ref().is_empty())
        {
            ctx.at(
                p.allowed_algorithms.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
                &key("allowed_algorithms"),
                "must list at least one algorithm, such as \"RS256\"",
            );
        }
        let (Some((id, _)), Some(issuer), Some((client_id, _))) = (id, issuer, client_id) else {
            continue;
        };
        let display_name = ctx.text_or(&p.display_name, &key("display_name"), &id);
        out.push(Provider {
            id,
            kind,
            display_name,
            issuer,
            client_id,
            client_secret,
            scopes,
            cognito_domain,
            keys,
            logout_url,
            token_auth_method,
            userinfo: flag(&p.userinfo, false),
            allowed_algorithms,
        });
    }
    out
}

fn mapping(raw: Option<Spanned<raw::RawMapping>>, has_bitbucket: bool, ctx: &mut Ctx<'_>) -> Mapping {
    let (m, span) = section(raw);
    let match_by = ctx.choice(
        &m.match_by,
        "mapping.match_by",
        &[("username", MatchBy::Username), ("email", MatchBy::Email)],
        MatchBy::Username,
    );
    let username_claim = ctx.text_or(&m.username_claim, "mapping.username_claim", "cognito:username");
    let email_claim = ctx.text_or(&m.email_claim, "mapping.email_claim", "email");
    let display_name = match (&m.display_name_claim, &m.first_name_claim, &m.last_name_claim) {
        (_, None, None) => {
            DisplayNameClaims::Single(ctx.text_or(&m.display_name_claim, "mapping.display_name_claim", "name"))
        }
        (None, Some(f), Some(l)) => DisplayNameClaims::FirstLast {
            first: ctx.text(f, "mapping.first_name_claim").unwrap_or_default(),
            last: ctx.text(l, "mapping.last_name_claim").unwrap_or_default(),
        },
        (Some(d), Some(_), Some(_)) => {
            ctx.at(
                d.span(),
                "mapping.display_name_claim",
                "give either display_name_claim or first_name_claim + last_name_claim, not both",
            );
            DisplayNameClaims::Single(String::new())
        }
        (_, Some(v), None) | (_, None, Some(v)) => {
            ctx.at(
                v.span(),
                if m.first_name_claim.is_some() {
                    "mapping.first_name_claim"
                } else {
                    "mapping.last_name_claim"
                },
                "first_name_claim and last_name_claim go together: give both",
            );
            DisplayNameClaims::Single(String::new())
        }
    };
    if match_by == MatchBy::Email && !has_bitbucket {
        ctx.at(
            m.match_by.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
            "mapping.match_by",
            "matching by email needs Bitbucket REST access to look users up: add a [bitbucket] section, or use match_by = \"username\"",
        );
    }
    let allow_user_creation = flag(&m.allow_user_creation, has_bitbucket);
    if allow_user_creation && !has_bitbucket {
        ctx.at(m.allow_user_creation.as_ref().map(|v| v.span()).unwrap_or(span.clone()), "mapping.allow_user_creation",
            "creating users needs Bitbucket REST access: add a [bitbucket] section with the admin service account, or set allow_user_creation = false");
    }
    let mut allowed_email_domains = Vec::new();
    for (domain, at) in ctx.items(&m.allowed_email_domains, "mapping.allowed_email_domains") {
        let d = domain.trim().to_ascii_lowercase();
        if d.is_empty()
            || d.contains('@')
            || d.starts_with('.')
            || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            ctx.at(
                at,
                "mapping.allowed_email_domains",
                format!("expected a domain such as \"example.com\" (no `@`), got \"{domain}\""),
            );
        } else {
            allowed_email_domains.push(d);
        }
    }
    Mapping {
        match_by,
        username_claim,
        email_claim,
        display_name,
        update_profile: flag(&m.update_profile, true),
        allow_user_creation,
        allowed_email_domains,
    }
}

fn groups(raw: Option<Spanned<raw::RawGroups>>, has_bitbucket: bool, ctx: &mut Ctx<'_>) -> Groups {
    let present = raw.is_some();
    let (g, span) = section(raw);
    let enabled = flag(&g.enabled, present && has_bitbucket);
    if enabled && !has_bitbucket {
        ctx.at(g.enabled.as_ref().map(|v| v.span()).unwrap_or(span.clone()), "groups.enabled",
            "group sync needs Bitbucket REST access: add a [bitbucket] section with the admin service account, or set groups.enabled = false");
    }
    let mode = ctx.choice(
        &g.mode,
        "groups.mode",
        &[("manual", GroupMode::Manual), ("on_the_fly", GroupMode::OnTheFly)],
        GroupMode::Manual,
    );
    let mut map = BTreeMap::new();
    if let Some(m) = &g.map {
        for (bb_group, provider_groups) in m.get_ref() {
            let name = bb_group.clone();
            let key = format!("groups.map.\"{name}\"");
            if name.trim().is_empty() {
                ctx.at(provider_groups.span(), &key, "a Bitbucket group name cannot be empty");
            }
            let list: Vec<String> = provider_groups
                .get_ref()
                .iter()
                .filter_map(|v| ctx.text(v, &key))
                .collect();
            if list.is_empty() {
                ctx.at(
                    provider_groups.span(),
                    &key,
                    "list at least one provider group that grants this Bitbucket group",
                );
            }
            map.insert(name, list);
        }
    }
    if enabled && mode == GroupMode::Manual && map.is_empty() {
        ctx.at(g.mode.as_ref().map(|v| v.span()).unwrap_or(span.clone()), "groups.map",
            "groups.mode = \"manual\" needs a [groups.map] table (Bitbucket group = [provider groups]); or use mode = \"on_the_fly\"");
    }
    let create_missing = flag(&g.create_missing, false);
    if create_missing && mode == GroupMode::Manual {
        ctx.at(
            g.create_missing.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
            "groups.create_missing",
            "applies only to mode = \"on_the_fly\"",
        );
    }
    Groups {
        enabled,
        claim: ctx.text_or(&g.claim, "groups.claim", "cognito:groups"),
        mode,
        default_groups: ctx.list(&g.default_groups, "groups.default_groups", &[]),
        assign_default_to: ctx.choice(
            &g.assign_default_to,
            "groups.assign_default_to",
            &[
                ("all", AssignDefaultTo::All),
                ("new", AssignDefaultTo::New),
                ("none", AssignDefaultTo::None),
            ],
            AssignDefaultTo::All,
        ),
        sync_existing_users: flag(&g.sync_existing_users, true),
        keep_existing: flag(&g.keep_existing, true),
        exclude: ctx.list(&g.exclude, "groups.exclude", &[]),
        create_missing,
        require_mapped_group: flag(&g.require_mapped_group, false),
        map,
    }
}

fn bitbucket(raw: Option<Spanned<raw::RawBitbucket>>, upstream: Option<&Url>, ctx: &mut Ctx<'_>) -> Option<Bitbucket> {
    let raw = raw?;
    let span = raw.span();
    let b = raw.into_inner();
    let url = match &b.url {
        Some(_) => ctx.opt_url(&b.url, "bitbucket.url", true),
        None => upstream.cloned(),
    };
    let admin_user = ctx.required(
        &b.admin_user,
        span.clone(),
        "bitbucket.admin_user",
        "the name of a Bitbucket admin service account used for provisioning",
    );
    let password = ctx.secret(&b.admin_password, &b.admin_password_file, "bitbucket.admin_password");
    if password.is_none() && b.admin_password.is_none() && b.admin_password_file.is_none() {
        ctx.at(
            span,
            "bitbucket.admin_password",
            "is required: the service account's password (Bitbucket's admin REST endpoints accept Basic auth only)",
        );
    }
    let timeout = ctx.duration(&b.timeout, "bitbucket.timeout", "10s");
    Some(Bitbucket {
        url: url?,
        admin_user: admin_user?.0,
        admin_password: password?.0,
        timeout,
    })
}

/// `declared` holds every provider id written in the file, valid or not, so a broken provider
/// does not also make every reference to it an error.
fn sso(s: raw::RawSso, span: Range<usize>, declared: &[String], providers: &[Provider], ctx: &mut Ctx<'_>) -> Sso {
    let known = |id: &str| declared.iter().any(|d| d == id);
    let auto_redirect_delay = ctx.duration(&s.auto_redirect_delay, "sso.auto_redirect_delay", "0s");
    if auto_redirect_delay > Duration::from_secs(60) {
        ctx.at(
            s.auto_redirect_delay.as_ref().map(|v| v.span()).unwrap_or(span.clone()),
            "sso.auto_redirect_delay",
            "expected at most \"60s\"",
        );
    }
    let default_provider = match &s.default_provider {
        Some(v) => ctx.text(v, "sso.default_provider").inspect(|id| {
            if !known(id) {
                ctx.at(
                    v.span(),
                    "sso.default_provider",
                    format!("no [[providers]] has id \"{id}\""),
                );
            }
        }),
        None => providers.first().map(|p| p.id.clone()),
    };
    let mut paths = |v: &Option<StrList>, key: &str, default: &[&str]| -> Vec<String> {
        if v.is_none() {
            return default.iter().map(|s| (*s).to_owned()).collect();
        }
        let items = ctx.items(v, key);
        items
            .into_iter()
            .filter(|(p, at)| {
                let ok = p.starts_with('/') && !p.contains(['?', '#', '\\']) && !p.chars().any(char::is_whitespace);
                if !ok {
                    ctx.at(
                        at.clone(),
                        key,
                        format!(
                            "expected a path starting with `/` (no query, fragment, backslash or spaces), got \"{p}\""
                        ),
                    );
                }
                ok
            })
            .map(|(p, _)| p)
            .collect()
    };
    let public_paths = paths(
        &s.public_paths,
        "sso.public_paths",
        &["/status", "/s/", "/favicon.ico", "/robots.txt"],
    );
    let api_paths = paths(&s.api_paths, "sso.api_paths", &["/rest/", "/scm/"]);
    let (b, bspan) = section(s.backdoor);
    let backdoor_enabled = flag(&b.enabled, false);
    let key = ctx.secret(&b.key, &b.key_file, "sso.backdoor.key").and_then(|(k, at)| {
        if k.expose().chars().count() < MIN_BACKDOOR_KEY_CHARS {
            ctx.at(at, "sso.backdoor.key", format!("must be at least {MIN_BACKDOOR_KEY_CHARS} characters; generate one with `bitbucket-sso-proxy gen-key`"));
            None
        } else {
            Some(k)
        }
    });
    let allowed_networks = ctx.networks(&b.allowed_networks, "sso.backdoor.allowed_networks");
    if backdoor_enabled {
        if b.key.is_none() && b.key_file.is_none() {
            ctx.at(
                bspan.clone(),
                "sso.backdoor.key",
                "is required when the backdoor is enabled",
            );
        }
        if b.allowed_networks.is_none() {
            ctx.at(bspan.clone(), "sso.backdoor.allowed_networks", "is required when the backdoor is enabled: list the admins' networks (\"0.0.0.0/0\" and \"::/0\" allow any address)");
        }
    }
    let query = ctx.text_or(&b.query, "sso.backdoor.query", "backdoor");
    if query.is_empty() || !query.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        ctx.at(
            b.query.as_ref().map(|v| v.span()).unwrap_or(bspan),
            "sso.backdoor.query",
            format!("expected a query parameter name of letters, digits, `_` or `-`, got \"{query}\""),
        );
    }
    let mut redirection_rules = Vec::new();
    for (n, rule) in s.redirection_rules.into_iter().enumerate() {
        let rspan = rule.span();
        let rule = rule.into_inner();
        let dkey = format!("sso.redirection_rules[{n}].email_domain");
        let pkey = format!("sso.redirection_rules[{n}].provider");
        let domain = ctx.required(
            &rule.email_domain,
            rspan.clone(),
            &dkey,
            "the email domain this rule routes, such as \"partner.example\"",
        );
        let provider = ctx.required(&rule.provider, rspan, &pkey, "the id of the provider for this domain");
        if let Some((p, at)) = &provider
            && !known(p)
        {
            ctx.at(at.clone(), &pkey, format!("no [[providers]] has id \"{p}\""));
        }
        if let (Some((d, _)), Some((p, _))) = (domain, provider) {
            redirection_rules.push(RedirectionRule {
                email_domain: d.trim_start_matches('@').to_ascii_lowercase(),
                provider: p,
            });
        }
    }
    Sso {
        enabled: flag(&s.enabled, true),
        auto_redirect: flag(&s.auto_redirect, true),
        auto_redirect_delay,
        default_provider,
        public_paths,
        api_paths,
        backdoor: Backdoor {
            enabled: backdoor_enabled,
            query,
            key,
            allowed_networks,
        },
        redirection_rules,
    }
}

fn ui(raw: Option<Spanned<raw::RawUi>>, ctx: &mut Ctx<'_>) -> Ui {
    let (u, _) = section(raw);
    let templates_dir = u.templates_dir.as_ref().and_then(|v| {
        let text = ctx.text(v, "ui.templates_dir")?;
        let path = ctx.path(&text);
        if path.is_dir() {
            Some(path)
        } else {
            ctx.at(
                v.span(),
                "ui.templates_dir",
                format!("folder {} does not exist", path.display()),
            );
            None
        }
    });
    Ui {
        login_button_text: ctx.text_or(&u.login_button_text, "ui.login_button_text", "Sign in with SSO"),
        templates_dir,
        post_logout_url: ctx.opt_url(&u.post_logout_url, "ui.post_logout_url", false),
    }
}

fn log(raw: Option<Spanned<raw::RawLog>>, ctx: &mut Ctx<'_>) -> Log {
    let (l, _) = section(raw);
    let format = ctx.choice(
        &l.format,
        "log.format",
        &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
        LogFormat::Json,
    );
    let level = ctx.text_or(&l.level, "log.level", "info");
    if tracing_subscriber::EnvFilter::builder().parse(&level).is_err() {
        ctx.at(l.level.as_ref().map(|v| v.span()).unwrap_or(0..0), "log.level", format!("expected a level (error, warn, info, debug, trace) or a filter such as \"info,bbsso=debug\", got \"{level}\""));
    }
    Log { format, level }
}
