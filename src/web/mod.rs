//! The proxy's own responses: short error pages for browsers, JSON for everyone else.

pub mod return_path;
pub mod sso;
pub mod templates;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Whether the client prefers an HTML page (a browser) over JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// One of the proxy's own pages: a stable `code` (for JSON and logs), a title, a plain-words message that says
/// what to do, an optional button, and an optional automatic continuation.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    pub status: StatusCode,
    pub code: &'a str,
    pub title: &'a str,
    pub message: &'a str,
    /// Button label and target.
    pub action: Option<(&'a str, &'a str)>,
    /// Continue to this target after some seconds (a `<meta refresh>`, no script).
    pub refresh: Option<(u32, &'a str)>,
}

impl<'a> Page<'a> {
    /// A page with no button.
    pub fn new(status: StatusCode, code: &'a str, title: &'a str, message: &'a str) -> Self {
        Page {
            status,
            code,
            title,
            message,
            action: None,
            refresh: None,
        }
    }

    /// Adds a button.
    pub fn action(mut self, label: &'a str, href: &'a str) -> Self {
        self.action = Some((label, href));
        self
    }

    /// Continues automatically after `seconds`.
    pub fn refresh(mut self, seconds: u32, href: &'a str) -> Self {
        self.refresh = Some((seconds, href));
        self
    }

    /// The response: HTML for browsers, JSON otherwise, never cached.
    pub fn render(&self, request_id: &str, html: bool) -> Response<Full<Bytes>> {
        if html {
            return html_page(self.status, self.html(request_id));
        }
        let json = format!(
            "{{\"error\":{},\"message\":{},\"status\":{},\"request_id\":{}}}",
            json_string(self.code),
            json_string(self.message),
            self.status.as_u16(),
            json_string(request_id)
        );
        let mut response = Response::new(Full::new(Bytes::from(json)));
        *response.status_mut() = self.status;
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn html(&self, request_id: &str) -> String {
        let refresh = self
            .refresh
            .map(|(s, href)| {
                format!(
                    "<meta http-equiv=\"refresh\" content=\"{s}; url={}\">",
                    escape_html(href)
                )
            })
            .unwrap_or_default();
        let action = self
            .action
            .map(|(label, href)| {
                format!(
                    "<a class=\"button\" href=\"{}\">{}</a>",
                    escape_html(href),
                    escape_html(label)
                )
            })
            .unwrap_or_default();
        let status = self.status.as_u16().to_string();
        let status_label = if self.status.as_u16() >= 400 {
            format!("Error {status} · ")
        } else {
            String::new()
        };
        templates::render(
            &templates::current().error,
            &[
                ("status", &status),
                ("code", self.code),
                ("title", self.title),
                ("message", self.message),
                ("action", &action),
                ("refresh", &refresh),
                ("status_label", &status_label),
                ("reference", request_id),
            ],
        )
    }
}

/// An error answered by the proxy itself: a stable `code`, a title and a plain-words message with what to do.
pub fn error_response(
    status: StatusCode,
    code: &str,
    title: &str,
    message: &str,
    request_id: &str,
    html: bool,
) -> Response<Full<Bytes>> {
    Page::new(status, code, title, message).render(request_id, html)
}

/// One of the proxy's own HTML pages, with the headers every such page carries.
pub fn html_page(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    r
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_a_page_and_machines_get_json() {
        let page = error_response(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "Bitbucket <down>",
            "Try again.",
            "req-1",
            true,
        );
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let json = error_response(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "t",
            "say \"hi\"\n",
            "req-1",
            false,
        );
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(json_string("say \"hi\"\n\u{1}"), r#""say \"hi\"\n\u0001""#);
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
