//! "May this request pass?": the request handling order of the interface contract, as a pure function.

use http::{HeaderMap, Method, header};

use crate::route::RouteClass;

/// What to do with a request that is not for the proxy's own `/sso/` endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Forward with the identity headers of the session.
    ForwardAsUser,
    /// Forward without identity; Bitbucket decides (credentials, public pages, 401 for REST).
    ForwardAnonymous,
    /// Answer 401 with a JSON body: not a browser navigation, so never a redirect.
    Unauthorized,
    /// Send the browser into the sign-in (302 to `/sso/login?rd=...`).
    Login,
    /// Handle as `/sso/logout` (Bitbucket's own logout URL).
    Logout,
    /// Answer 503: the request carries a session the session store cannot read right now. Neither sign-in (a
    /// loop) nor anonymous access (the user would look signed out).
    SessionUnavailable,
}

/// The facts the decision needs, taken from the request and the session lookup.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub route: RouteClass,
    pub path: &'a str,
    pub method: &'a Method,
    pub has_session: bool,
    /// The request carries a session cookie but the session store (Redis) could not be asked.
    pub session_unavailable: bool,
    /// A valid emergency (backdoor) pass: Bitbucket's own login and session apply.
    pub backdoor: bool,
    pub has_authorization: bool,
    pub navigation: bool,
}

/// SSO switches that shape the decision.
#[derive(Debug, Clone, Copy)]
pub struct Switches {
    pub sso_enabled: bool,
    pub auto_redirect: bool,
}

/// Decides, in the contract's order: session → `Authorization` → public/API paths → non-navigation 401 → login;
/// a session that cannot be read (store down) stops everything that is not public or has its own credentials.
pub fn decide(f: &Facts<'_>, s: Switches) -> Access {
    if !s.sso_enabled {
        return Access::ForwardAnonymous;
    }
    if f.path == "/j_atl_security_logout" {
        return Access::Logout;
    }
    if f.has_session {
        return Access::ForwardAsUser;
    }
    if f.backdoor {
        return Access::ForwardAnonymous;
    }
    if f.has_authorization || f.route == RouteClass::Public {
        return Access::ForwardAnonymous;
    }
    if f.session_unavailable {
        return Access::SessionUnavailable;
    }
    if f.route == RouteClass::Api {
        return Access::ForwardAnonymous;
    }
    let bitbucket_login = f.path == "/login" || f.path == "/j_atl_security_check";
    if bitbucket_login && !s.auto_redirect {
        // Bitbucket's own login form stays usable when auto-redirect is off.
        return Access::ForwardAnonymous;
    }
    if f.navigation {
        Access::Login
    } else {
        Access::Unauthorized
    }
}

/// A top-level browser navigation: GET or HEAD, accepting HTML, not an XHR/fetch.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let header_is = |name: &str, want: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    if header_is("x-requested-with", "XMLHttpRequest") {
        return false;
    }
    if let Some(mode) = headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok())
        && !mode.eq_ignore_ascii_case("navigate")
    {
        return false;
    }
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const ON: Switches = Switches {
        sso_enabled: true,
        auto_redirect: true,
    };

    fn facts<'a>(route: RouteClass, path: &'a str, method: &'a Method) -> Facts<'a> {
        Facts {
            route,
            path,
            method,
            has_session: false,
            session_unavailable: false,
            backdoor: false,
            has_authorization: false,
            navigation: true,
        }
    }

    #[test]
    fn the_contract_order() {
        let get = Method::GET;
        let page = facts(RouteClass::Page, "/projects", &get);
        assert_eq!(
            decide(
                &Facts {
                    has_session: true,
                    has_authorization: true,
                    ..page
                },
                ON
            ),
            Access::ForwardAsUser
        );
        assert_eq!(
            decide(
                &Facts {
                    has_authorization: true,
                    ..page
                },
                ON
            ),
            Access::ForwardAnonymous
        );
        assert_eq!(
            decide(&facts(RouteClass::Api, "/scm/p/r.git/info/refs", &get), ON),
            Access::ForwardAnonymous
        );
        assert_eq!(
            decide(&facts(RouteClass::Public, "/status", &get), ON),
            Access::ForwardAnonymous
        );
        assert_eq!(
            decide(
                &Facts {
                    navigation: false,
                    ..page
                },
                ON
            ),
            Access::Unauthorized
        );
        assert_eq!(decide(&page, ON), Access::Login);
        let unreadable = |f: Facts<'_>| {
            decide(
                &Facts {
                    session_unavailable: true,
                    ..f
                },
                ON,
            )
        };
        assert_eq!(
            unreadable(page),
            Access::SessionUnavailable,
            "no login loop while the store is down"
        );
        assert_eq!(
            unreadable(facts(RouteClass::Api, "/rest/api/latest/profile", &get)),
            Access::SessionUnavailable,
            "no anonymous REST call for a signed-in browser"
        );
        assert_eq!(
            unreadable(Facts {
                has_authorization: true,
                ..page
            }),
            Access::ForwardAnonymous,
            "own credentials need no session"
        );
        assert_eq!(
            unreadable(facts(RouteClass::Public, "/s/app.js", &get)),
            Access::ForwardAnonymous
        );
        assert_eq!(
            decide(
                &page,
                Switches {
                    sso_enabled: false,
                    auto_redirect: true
                }
            ),
            Access::ForwardAnonymous
        );
    }

    #[test]
    fn bitbucket_login_and_logout_pages() {
        let get = Method::GET;
        let post = Method::POST;
        let login = facts(RouteClass::Page, "/login", &get);
        assert_eq!(decide(&login, ON), Access::Login);
        assert_eq!(
            decide(
                &login,
                Switches {
                    sso_enabled: true,
                    auto_redirect: false
                }
            ),
            Access::ForwardAnonymous
        );
        let logout = facts(RouteClass::Page, "/j_atl_security_logout", &post);
        assert_eq!(
            decide(
                &Facts {
                    has_session: true,
                    ..logout
                },
                ON
            ),
            Access::Logout
        );
        assert_eq!(decide(&logout, ON), Access::Logout);
    }

    #[test]
    fn navigation_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(is_navigation(&Method::GET, &h));
        assert!(!is_navigation(&Method::POST, &h));
        let mut xhr = h.clone();
        xhr.insert("x-requested-with", HeaderValue::from_static("XMLHttpRequest"));
        assert!(!is_navigation(&Method::GET, &xhr));
        let mut fetch = h.clone();
        fetch.insert("sec-fetch-mode", HeaderValue::from_static("cors"));
        assert!(!is_navigation(&Method::GET, &fetch));
        let mut json = HeaderMap::new();
        json.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!is_navigation(&Method::GET, &json));
        assert!(
            !is_navigation(&Method::GET, &HeaderMap::new()),
            "git and curl send no text/html"
        );
    }
}
