//! The proxy's own responses: short error pages for browsers, JSON for everyone else.

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

/// An error answered by the proxy itself: a stable `code`, a title and a plain-words message with what to do.
pub fn error_response(
    status: StatusCode,
    code: &str,
    title: &str,
    message: &str,
    request_id: &str,
    html: bool,
) -> Response<Full<Bytes>> {
    let (body, content_type) = if html {
        (
            error_page(status, title, message, request_id),
            "text/html; charset=utf-8",
        )
    } else {
        let json = format!(
            "{{\"error\":{},\"message\":{},\"status\":{},\"request_id\":{}}}",
            json_string(code),
            json_string(message),
            status.as_u16(),
            json_string(request_id)
        );
        (json, "application/json")
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    response
}

fn error_page(status: StatusCode, title: &str, message: &str, request_id: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#172b4d}}
main{{max-width:32rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(9,30,66,.25)}}
h1{{font-size:1.4rem;margin:0 0 .75rem}} p{{margin:.5rem 0}} .ref{{color:#5e6c84;font-size:.85rem}}
</style></head>
<body><main><h1>{title}</h1><p>{message}</p><p class="ref">Error {code} · reference <code>{request_id}</code></p></main></body></html>
"#,
        title = escape_html(title),
        message = escape_html(message),
        code = status.as_u16(),
        request_id = escape_html(request_id),
    )
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
