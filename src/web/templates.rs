//! The proxy's pages as templates: built-in ones, each replaceable by a file in `ui.templates_dir`.
//!
//! Syntax: `{{name}}` inserts a variable HTML-escaped; `{{{name}}}` inserts it as is (only for fragments the
//! proxy builds itself, such as the provider buttons). Unknown names insert nothing.
//!
//! | template | variables |
//! |---|---|
//! | `login.html` | `title`, `notice`, `rd`, `remember_me_checked` (`checked` or empty), `providers` (raw: one button per provider), `email_form` (raw: the email/username field when redirection rules exist), `style` (raw) |
//! | `error.html` | `status`, `code`, `title`, `message`, `action` (raw: the button), `refresh` (raw: the meta refresh), `reference` (the request id, as in the audit log), `style` (raw) |
//! | `logged_out.html` | `title`, `message`, `sign_in_href`, `style` (raw) |
//! | `countdown.html` | `seconds`, `target`, `cancel_href`, `style` (raw), `script` (raw: the countdown script) |

use std::path::Path;
use std::sync::{Arc, RwLock};

/// Shared look: clean, readable, responsive, no external assets.
pub const STYLE: &str = r#"<style>
:root{color-scheme:light}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#172b4d}
main{max-width:28rem;margin:10vh auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(9,30,66,.25)}
@media (max-width:32rem){main{margin:0;min-height:100vh;border-radius:0;box-shadow:none}}
h1{font-size:1.4rem;margin:0 0 .75rem} p{margin:.5rem 0} .ref{color:#5e6c84;font-size:.85rem;margin-top:1.5rem}
.button,button{display:block;width:100%;box-sizing:border-box;margin:.5rem 0;padding:.6rem 1rem;border:0;border-radius:4px;background:#0052cc;color:#fff;font:inherit;text-align:center;text-decoration:none;cursor:pointer}
.button:hover,button:hover{background:#0747a6} .button:focus-visible,button:focus-visible,input:focus-visible,a:focus-visible{outline:2px solid #4c9aff;outline-offset:2px}
.secondary{background:#ebecf0;color:#172b4d} .secondary:hover{background:#dfe1e6}
label{display:block;margin:.75rem 0 .25rem;font-weight:600} input[type=email],input[type=text]{width:100%;box-sizing:border-box;padding:.5rem;border:2px solid #dfe1e6;border-radius:4px;font:inherit}
.check{display:flex;gap:.5rem;align-items:center;font-weight:400} .or{text-align:center;color:#5e6c84;margin:1rem 0}
progress{width:100%;height:.5rem} .notice{background:#deebff;padding:.5rem .75rem;border-radius:4px}
</style>"#;

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>{{{style}}}</head>
<body><main>
<h1>{{title}}</h1>
{{{notice}}}
<form method="get" action="/sso/login">
<input type="hidden" name="rd" value="{{rd}}">
{{{email_form}}}
{{{providers}}}
<label class="check"><input type="checkbox" name="remember_me" value="1" {{remember_me_checked}}> Keep me signed in on this device</label>
</form>
</main></body></html>
"#;

const ERROR: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">{{{refresh}}}
<title>{{title}}</title>{{{style}}}</head>
<body><main role="main">
<h1>{{title}}</h1>
<p>{{message}}</p>
{{{action}}}
<p class="ref">{{{status_label}}}Reference <code>{{reference}}</code></p>
</main></body></html>
"#;

const LOGGED_OUT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>{{{style}}}</head>
<body><main>
<h1>{{title}}</h1>
<p>{{message}}</p>
<a class="button" href="{{sign_in_href}}">Sign in again</a>
</main></body></html>
"#;

const COUNTDOWN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="{{seconds}}; url={{target}}"></noscript>
<title>Signing you in</title>{{{style}}}</head>
<body><main>
<h1>Signing you in with single sign-on</h1>
<p>You will be sent to the sign-in service in <strong id="seconds">{{seconds}}</strong> seconds.</p>
<progress id="progress" max="{{seconds}}" value="0" aria-label="Time until sign-in"></progress>
<a class="button" id="go" href="{{target}}">Sign in now</a>
<a class="button secondary" id="cancel" href="{{cancel_href}}">Cancel</a>
</main>{{{script}}}</body></html>
"#;

/// The countdown script; its hash is allowed by the page's CSP, no other inline script is.
pub const COUNTDOWN_SCRIPT: &str = "<script>(function(){var s=document.getElementById('seconds'),p=document.getElementById('progress'),g=document.getElementById('go'),c=document.getElementById('cancel');var total=parseInt(p.max,10),left=total,stopped=false;var t=setInterval(function(){if(stopped)return;left-=1;s.textContent=Math.max(left,0);p.value=total-left;if(left<=0){clearInterval(t);window.location.href=g.getAttribute('href');}},1000);c.addEventListener('click',function(){stopped=true;clearInterval(t);});})();</script>";

/// The CSP source for the countdown script: `sha256-...` of its text.
pub fn countdown_script_hash() -> String {
    use base64::Engine;
    use sha2::Digest;
    let inner = COUNTDOWN_SCRIPT
        .trim_start_matches("<script>")
        .trim_end_matches("</script>");
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(inner.as_bytes()))
    )
}

/// The four page templates in force.
#[derive(Debug, Clone)]
pub struct Templates {
    pub login: String,
    pub error: String,
    pub logged_out: String,
    pub countdown: String,
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            login: LOGIN.into(),
            error: ERROR.into(),
            logged_out: LOGGED_OUT.into(),
            countdown: COUNTDOWN.into(),
        }
    }
}

impl Templates {
    /// Built-ins, each replaced by `{dir}/{name}` when that file exists.
    pub fn load(dir: Option<&Path>) -> Self {
        let mut t = Templates::default();
        if let Some(dir) = dir {
            for (name, slot) in [
                ("login.html", &mut t.login),
                ("error.html", &mut t.error),
                ("logged_out.html", &mut t.logged_out),
                ("countdown.html", &mut t.countdown),
            ] {
                match std::fs::read_to_string(dir.join(name)) {
                    Ok(text) => *slot = text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(template = name, error = %e, "cannot read template; using the built-in one")
                    }
                }
            }
        }
        t
    }
}

static CURRENT: RwLock<Option<Arc<Templates>>> = RwLock::new(None);

/// Makes `t` the templates every page uses.
pub fn install(t: Templates) {
    *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(t));
}

/// The templates in force (built-ins until [`install`]).
pub fn current() -> Arc<Templates> {
    CURRENT
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| Arc::new(Templates::default()))
}

/// Fills a template.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name.trim())
            .map(|(_, v)| *v)
            .unwrap_or("")
    };
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(inner) = after.strip_prefix("{{{")
            && let Some(end) = inner.find("}}}")
        {
            let name = &inner[..end];
            out.push_str(if name.trim() == "style" && lookup("style").is_empty() {
                STYLE
            } else {
                lookup(name)
            });
            rest = &inner[end + 3..];
        } else if let Some(end) = after[2..].find("}}") {
            out.push_str(&super::escape_html(lookup(&after[2..2 + end])));
            rest = &after[2 + end + 2..];
        } else {
            out.push_str(after);
            rest = "";
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_double_and_keeps_triple() {
        let out = render(
            "<p>{{a}}</p>{{{b}}}{{missing}}{{ a }}",
            &[("a", "<x>"), ("b", "<i>ok</i>")],
        );
        assert_eq!(out, "<p>&lt;x&gt;</p><i>ok</i>&lt;x&gt;");
        assert!(render("{{{style}}}", &[]).starts_with("<style>"));
        assert_eq!(render("{{unclosed", &[]), "{{unclosed");
    }
}
