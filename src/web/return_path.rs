//! The `rd` return path after sign-in: a same-origin path only, never a way off the site.

use url::Url;

/// Returns `raw` when it is a safe same-origin path (query kept intact), the path of a URL on the proxy's own
/// origin, and `/` for anything else.
///
/// Safe means: starts with exactly one `/`; no `\`; no control or whitespace characters and no `//` prefix even
/// after percent-decoding (three rounds); not one of the proxy's own `/sso/` pages.
pub fn safe_return_path(raw: &str, public_url: &Url) -> String {
    let candidate = if raw.starts_with('/') {
        raw.to_owned()
    } else {
        match Url::parse(raw) {
            Ok(u)
                if u.origin() == public_url.origin()
                    && raw.starts_with(public_url.origin().ascii_serialization().as_str()) =>
            {
                let mut p = u.path().to_owned();
                if let Some(q) = u.query() {
                    p.push('?');
                    p.push_str(q);
                }
                p
            }
            _ => return "/".to_owned(),
        }
    };
    if is_safe(&candidate) { candidate } else { "/".to_owned() }
}

fn is_safe(path: &str) -> bool {
    let mut text = path.to_owned();
    for _ in 0..3 {
        if !text.starts_with('/')
            || text.starts_with("//")
            || text.contains('\\')
            || text
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '\u{feff}')
        {
            return false;
        }
        let lower = text.to_ascii_lowercase();
        let path_part = lower.split(['?', '#']).next().unwrap_or("");
        if path_part == "/sso" || path_part.starts_with("/sso/") || path_part == "/j_atl_security_logout" {
            return false;
        }
        let decoded = percent_decode(&text);
        if decoded == text {
            return true;
        }
        text = decoded;
    }
    false
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h << 4) | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_with_queries_survive() {
        let base = Url::parse("https://bitbucket.example.com").unwrap();
        for good in [
            "/",
            "/projects",
            "/projects/ABC/repos/r/browse?at=refs%2Fheads%2Fmain&x=1",
            "/dashboard#frag",
            "/users/j%C3%BCrgen",
        ] {
            assert_eq!(safe_return_path(good, &base), good);
        }
        assert_eq!(
            safe_return_path("https://bitbucket.example.com/projects?x=1", &base),
            "/projects?x=1"
        );
    }
}
