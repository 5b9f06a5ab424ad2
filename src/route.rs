//! Which kind of request this is, decided on the normalized path only (never on the query, fragment or a client header).

use crate::config::Sso;

/// The route classes used by handling, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `/sso/...`: the proxy's own endpoints, never forwarded.
    Sso,
    /// A configured public path (`/status`, static resources): forwarded without identity.
    Public,
    /// A configured API path (`/rest/`, `/scm/`): forwarded; clients bring their own credentials.
    Api,
    /// Everything else: Bitbucket's browser pages.
    Page,
}

impl RouteClass {
    /// All classes, in metrics order.
    pub const ALL: [RouteClass; 4] = [RouteClass::Sso, RouteClass::Public, RouteClass::Api, RouteClass::Page];

    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Sso => "sso",
            RouteClass::Public => "public",
            RouteClass::Api => "api",
            RouteClass::Page => "page",
        }
    }

    /// Dense index for metric arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Classifies a request path (without query).
pub fn classify(path: &str, sso: &Sso) -> RouteClass {
    classify_normalized(&normalize_path(path), sso)
}

/// Classifies a path already passed through [`normalize_path`].
pub fn classify_normalized(normalized: &str, sso: &Sso) -> RouteClass {
    if matches_prefix(normalized, "/sso/") || normalized == "/sso" {
        RouteClass::Sso
    } else if sso.api_paths.iter().any(|p| matches_prefix(normalized, p)) {
        RouteClass::Api
    } else if sso.public_paths.iter().any(|p| matches_prefix(normalized, p)) {
        RouteClass::Public
    } else {
        RouteClass::Page
    }
}

/// `/s/` matches everything below it; `/status` matches itself and anything below `/status/`.
fn matches_prefix(path: &str, rule: &str) -> bool {
    if rule.ends_with('/') {
        path.starts_with(rule)
    } else {
        path == rule || path.strip_prefix(rule).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Percent-decodes unreserved characters, resolves `.` and `..` segments and collapses repeated slashes,
/// so that `/%73so/x`, `/rest/../sso/x` and `//sso/x` are all seen as `/sso/x`.
pub fn normalize_path(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty()
        || (decoded.ends_with('/') && !segments.is_empty())
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
    {
        out.push('/');
    }
    out
}

fn decode_unreserved(path: &str) -> String {
    if !path.contains('%') {
        return path.to_owned();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            let c = (h << 4) | l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(c));
            } else {
                out.push_str(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        let ch_len = path[i..].chars().next().map(char::len_utf8).unwrap_or(1);
        out.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sso() -> Sso {
        Sso {
            enabled: true,
            auto_redirect: true,
            auto_redirect_delay: std::time::Duration::ZERO,
            default_provider: None,
            public_paths: vec!["/status".into(), "/s/".into(), "/favicon.ico".into()],
            api_paths: vec!["/rest/".into(), "/scm/".into()],
            backdoor: crate::config::Backdoor {
                enabled: false,
                query: "backdoor".into(),
                key: None,
                allowed_networks: vec![],
            },
            redirection_rules: vec![],
        }
    }

    #[test]
    fn normalizes_tricks_to_one_form() {
        for (input, want) in [
            ("/", "/"),
            ("", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../b", "/b"),
            ("//sso//x", "/sso/x"),
            ("/%73so/x", "/sso/x"),
            ("/%2e%2e/sso/x", "/sso/x"),
            ("/a%2Fb", "/a%2Fb"),
            ("/rest/..", "/"),
            ("/é/x", "/é/x"),
            ("/%zz", "/%zz"),
            ("/%", "/%"),
        ] {
            assert_eq!(normalize_path(input), want, "{input}");
        }
    }

    #[test]
    fn classifies_on_the_normalized_path() {
        let s = sso();
        assert_eq!(classify("/sso/login", &s), RouteClass::Sso);
        assert_eq!(classify("/rest/../sso/callback", &s), RouteClass::Sso);
        assert_eq!(classify("/%73so/callback", &s), RouteClass::Sso);
        assert_eq!(classify("/ssox", &s), RouteClass::Page);
        assert_eq!(classify("/rest/api/1.0/users", &s), RouteClass::Api);
        assert_eq!(classify("/scm/proj/repo.git/info/refs", &s), RouteClass::Api);
        assert_eq!(classify("/status", &s), RouteClass::Public);
        assert_eq!(classify("/statusx", &s), RouteClass::Page);
        assert_eq!(classify("/s/123/_/download/x.js", &s), RouteClass::Public);
        assert_eq!(classify("/s/../projects", &s), RouteClass::Page);
        assert_eq!(classify("/projects/ABC", &s), RouteClass::Page);
    }
}
