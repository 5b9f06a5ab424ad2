//! The proxy's cookies: names, `Set-Cookie` values, and reading sealed values from a request.

use http::HeaderMap;
use http::header::{self, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keyring::Keyring;

/// Largest cookie value the proxy will set; browsers and Tomcat cap a cookie near 4 KB.
pub const MAX_COOKIE_BYTES: usize = 3900;
/// Most sign-ins in progress kept at once (tabs); older ones are dropped.
pub const MAX_PENDING_LOGINS: usize = 3;

/// Cookie names and attributes for one configuration.
#[derive(Debug, Clone)]
pub struct CookieNames {
    secure: bool,
    /// The session cookie, `__Host-` prefixed on https.
    pub session: String,
    /// Prefix of the pending-login cookies; the rest of the name is taken from the state.
    pub pending_prefix: String,
    /// Marks that a failed callback already restarted the sign-in once.
    pub restarted: String,
    /// An emergency (backdoor) pass.
    pub backdoor: String,
}

impl CookieNames {
    /// Names for the base cookie name; `secure` when the public URL is https.
    pub fn new(base: &str, secure: bool) -> Self {
        let prefix = if secure { "__Host-" } else { "" };
        CookieNames {
            secure,
            session: format!("{prefix}{base}"),
            pending_prefix: format!("{prefix}{base}_login_"),
            restarted: format!("{prefix}{base}_restarted"),
            backdoor: format!("{prefix}{base}_backdoor"),
        }
    }

    /// The pending-login cookie for a state value.
    pub fn pending(&self, state: &str) -> String {
        let short: String = state.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        format!("{}{short}", self.pending_prefix)
    }

    /// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` on https; no `Max-Age` means the
    /// cookie ends with the browser.
    pub fn set(&self, name: &str, value: &str, max_age: Option<i64>) -> Option<HeaderValue> {
        let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.secure {
            text.push_str("; Secure");
        }
        if let Some(age) = max_age {
            text.push_str(&format!("; Max-Age={}", age.max(0)));
        }
        HeaderValue::from_str(&text).ok()
    }

    /// A `Set-Cookie` value that deletes the cookie.
    pub fn clear(&self, name: &str) -> Option<HeaderValue> {
        self.set(name, "", Some(0))
    }

    /// Seals a value into a `Set-Cookie` header; `None` when it would be too big or no key is configured.
    pub fn seal<T: Serialize>(
        &self,
        ring: &Keyring,
        name: &str,
        value: &T,
        max_age: Option<i64>,
    ) -> Option<HeaderValue> {
        let json = serde_json::to_vec(value).ok()?;
        let sealed = ring.seal(name, &json)?;
        if sealed.len() + name.len() > MAX_COOKIE_BYTES {
            return None;
        }
        self.set(name, &sealed, max_age)
    }
}

/// Every `name=value` pair of the request's `Cookie` headers.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
}

/// The value of the first cookie named `name`.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    pairs(headers).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Opens and decodes a sealed cookie; any failure reads as absent.
pub fn open<T: DeserializeOwned>(headers: &HeaderMap, ring: &Keyring, name: &str) -> Option<T> {
    open_value(ring, name, get(headers, name)?)
}

/// Opens and decodes the sealed value of cookie `name`; any failure reads as absent.
pub fn open_value<T: DeserializeOwned>(ring: &Keyring, name: &str, sealed: &str) -> Option<T> {
    let plain = ring.open(name, sealed).ok()?;
    serde_json::from_slice(&plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionKey;

    #[test]
    fn https_names_are_host_prefixed_and_secure() {
        let https = CookieNames::new("bbsso", true);
        assert_eq!(https.session, "__Host-bbsso");
        assert_eq!(https.pending("ab-c_DEF123456789xyz"), "__Host-bbsso_login_abcDEF123456");
        let v = https.set("__Host-bbsso", "x", None).unwrap();
        assert_eq!(v, "__Host-bbsso=x; Path=/; HttpOnly; SameSite=Lax; Secure");
        let http = CookieNames::new("bbsso", false);
        assert_eq!(
            http.clear("bbsso").unwrap(),
            "bbsso=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
        );
    }

    #[test]
    fn sealed_values_round_trip_and_odd_cookie_headers_do_not_panic() {
        let ring = Keyring::new(&[SessionKey(vec![3; 32])]);
        let names = CookieNames::new("bbsso", false);
        let set = names.seal(&ring, "bbsso", &vec!["a", "b"], Some(60)).unwrap();
        let value = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {value}")).unwrap(),
        );
        assert_eq!(open::<Vec<String>>(&headers, &ring, "bbsso").unwrap(), vec!["a", "b"]);
        assert!(open::<Vec<String>>(&headers, &ring, "other").is_none());
        for odd in [
            "",
            ";;;",
            "=",
            "bbsso",
            "bbsso=",
            "bbsso=\"\"",
            "bbsso==;=bbsso",
            "a=b=c; bbsso=%%%",
        ] {
            let mut h = HeaderMap::new();
            h.append(header::COOKIE, HeaderValue::from_str(odd).unwrap());
            assert!(open::<Vec<String>>(&h, &ring, "bbsso").is_none());
        }
        let big = "x".repeat(5000);
        assert!(names.seal(&ring, "bbsso", &big, None).is_none(), "too big for a cookie");
    }
}
