//! Header hygiene, as pure functions over a header map: hop-by-hop removal (RFC 9110 §7.6.1),
//! identity-header stripping, the proxy's own cookies, and the `X-Forwarded-*` family.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that are hop-by-hop whether or not `Connection` names them (as `HeaderName`s, so that removing them
/// on every request parses no string).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes every hop-by-hop header, including those named in `Connection`.
///
/// Returns the `Upgrade` value when the message asked for a protocol upgrade (`Connection: upgrade`),
/// so the caller can restore it for a WebSocket handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut upgrade_requested = false;
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("upgrade") {
                upgrade_requested = true;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    let upgrade = if upgrade_requested {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in named {
        headers.remove(&name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    upgrade
}

/// Puts back `Connection: upgrade` and `Upgrade` after [`strip_hop_by_hop`] for a protocol switch.
pub fn restore_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Compares a header name with a configured name, case-insensitively and with `_` read as `-`.
fn same_identity_name(name: &[u8], configured_lower_dash: &[u8]) -> bool {
    name.len() == configured_lower_dash.len()
        && name.iter().zip(configured_lower_dash).all(|(a, b)| {
            let a = if *a == b'_' { b'-' } else { a.to_ascii_lowercase() };
            a == *b
        })
}

/// The names and cookies the proxy owns, prepared once per configuration.
#[derive(Debug, Clone)]
pub struct Hygiene {
    identity_names: Vec<Vec<u8>>,
    cookie_name: String,
}

impl Hygiene {
    /// Prepares the identity header names (lower case, `-`) and the session cookie's base name.
    pub fn new(identity_headers: &[&str], cookie_name: &str) -> Self {
        Hygiene {
            identity_names: identity_headers
                .iter()
                .map(|h| h.to_ascii_lowercase().replace('_', "-").into_bytes())
                .collect(),
            cookie_name: cookie_name.to_owned(),
        }
    }

    /// Removes every client-sent copy of the identity headers, in any case and with `_` for `-`.
    /// Returns how many were removed (a spoofing attempt worth logging).
    pub fn strip_identity(&self, headers: &mut HeaderMap) -> usize {
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| {
                self.identity_names
                    .iter()
                    .any(|n| same_identity_name(k.as_str().as_bytes(), n))
            })
            .cloned()
            .collect();
        let mut removed = 0;
        for name in spoofed {
            if let header::Entry::Occupied(e) = headers.entry(name) {
                removed += e.remove_entry_mult().1.count();
            }
        }
        removed
    }

    /// Whether a cookie name belongs to the proxy: the session cookie or a login-state cookie
    /// (`{name}_...`), with or without the `__Host-` / `__Secure-` prefix.
    pub fn is_proxy_cookie(&self, name: &str) -> bool {
        let bare = name
            .strip_prefix("__Host-")
            .or_else(|| name.strip_prefix("__Secure-"))
            .unwrap_or(name);
        bare.strip_prefix(self.cookie_name.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
    }

    /// Removes the proxy's own cookies from every `Cookie` header; other cookies pass unchanged.
    pub fn strip_proxy_cookies(&self, headers: &mut HeaderMap) {
        let needle = self.cookie_name.as_bytes();
        let touched = headers
            .get_all(header::COOKIE)
            .iter()
            .any(|v| v.as_bytes().windows(needle.len()).any(|w| w == needle));
        if !touched {
            return;
        }
        let kept: Vec<String> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .filter(|pair| !self.is_proxy_cookie(pair.split('=').next().unwrap_or("").trim()))
            .map(str::to_owned)
            .collect();
        headers.remove(header::COOKIE);
        if !kept.is_empty()
            && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
        {
            headers.insert(header::COOKIE, value);
        }
    }
}

/// Whether an address is one of the trusted proxies.
pub fn is_trusted(addr: IpAddr, trusted: &[IpNet]) -> bool {
    let addr = canonical(addr);
    trusted.iter().any(|net| net.contains(&addr))
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. A trusted peer's values are kept (and `For` appended to);
/// anyone else's are replaced, and their `Forwarded` / `X-Real-IP` removed.
///
/// Returns the client address: the right-most untrusted address of the chain.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, proto: &'static str, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let peer_trusted = is_trusted(peer, trusted);
    let mut client = peer;
    let mut chain = String::new();
    if peer_trusted {
        for value in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(text) = value.to_str() {
                for hop in text.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    if !chain.is_empty() {
                        chain.push_str(", ");
                    }
                    chain.push_str(hop);
                }
            }
        }
        for hop in chain.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) if is_trusted(ip, trusted) => client = canonical(ip),
                Ok(ip) => {
                    client = canonical(ip);
                    break;
                }
                Err(_) => break,
            }
        }
    } else {
        headers.remove(header::FORWARDED);
        headers.remove(&X_REAL_IP);
    }
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if (!peer_trusted || !headers.contains_key(&X_FORWARDED_HOST))
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop, upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-keep", "yes"),
        ]);
        let upgrade = strip_hop_by_hop(&mut h);
        assert_eq!(upgrade.unwrap(), "websocket");
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn upgrade_without_connection_token_is_not_an_upgrade() {
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn identity_headers_in_every_spelling_are_removed() {
        let hy = Hygiene::new(&["X-Forwarded-User", "X-Bbsso-Assertion"], "bbsso");
        let mut h = map(&[
            ("x-forwarded-user", "a"),
            ("x_forwarded_user", "b"),
            ("x-forwarded_user", "c"),
            ("x_bbsso_assertion", "d"),
            ("x-forwarded-users", "keep"),
            ("x-forwarded-use", "keep"),
        ]);
        assert_eq!(hy.strip_identity(&mut h), 4);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn only_the_proxy_cookies_leave_the_cookie_header() {
        let hy = Hygiene::new(&[], "bbsso");
        let mut h = map(&[
            ("cookie", "BITBUCKETSESSIONID=abc; bbsso=secret; __Host-bbsso=s2"),
            ("cookie", "bbsso_login_1=st; bbssoX=keep; other=1"),
        ]);
        hy.strip_proxy_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "BITBUCKETSESSIONID=abc; bbssoX=keep; other=1");
        let mut only = map(&[("cookie", "bbsso=x")]);
        hy.strip_proxy_cookies(&mut only);
        assert!(only.get("cookie").is_none());
    }

    #[test]
    fn forwarded_headers_are_believed_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("host", "bb.example.com"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let client = set_forwarded(&mut h, "192.0.2.7".parse().unwrap(), "http", &trusted);
        assert_eq!(client, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "bb.example.com");
        assert!(h.get("forwarded").is_none());

        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "bb.example.com"),
            ("host", "internal"),
        ]);
        let client = set_forwarded(&mut h, "10.0.0.5".parse().unwrap(), "http", &trusted);
        assert_eq!(client, "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.1.1.1, 10.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "bb.example.com");
    }
}
