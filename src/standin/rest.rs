//! The admin REST endpoints of the stand-in, as `bitbucket-facts.md` §2 describes them.

use std::collections::HashMap;

use base64::Engine;
use http::{Method, StatusCode, header, request::Parts};
use serde_json::{Value, json};

use super::{Reply, Standin, User, json_reply, key};

fn empty(status: StatusCode) -> Reply {
    let mut r = Reply::new(http_body_util::Full::new(bytes::Bytes::new()));
    *r.status_mut() = status;
    r
}

fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(status, json!({"errors": [{"message": message}]}))
}

/// Bitbucket's paged response.
fn page(items: Vec<Value>, query: &HashMap<String, String>) -> Reply {
    let start: usize = query.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|s| s.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(25)
        .min(1000);
    let total = items.len();
    let values: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    let is_last = start + values.len() >= total;
    let mut body =
        json!({"size": values.len(), "limit": limit, "start": start, "isLastPage": is_last, "values": values});
    if !is_last {
        body["nextPageStart"] = json!(start + limit);
    }
    json_reply(StatusCode::OK, body)
}

fn user_json(u: &User) -> Value {
    json!({
        "name": u.name, "slug": u.name.to_lowercase(), "displayName": u.display_name, "emailAddress": u.email,
        "active": true, "type": "NORMAL", "directoryName": u.directory,
        "mutableDetails": u.mutable, "mutableGroups": u.mutable,
    })
}

fn matches(filter: Option<&String>, fields: &[&str]) -> bool {
    filter.is_none_or(|f| fields.iter().any(|x| x.to_lowercase().contains(&f.to_lowercase())))
}

/// Admin endpoints: Basic auth with the admin account, `X-Atlassian-Token: no-check` on changes.
pub fn admin(s: &Standin, parts: &Parts, path: &str, query: &HashMap<String, String>, body: &[u8]) -> Reply {
    if s.lock().rest_down {
        return error(StatusCode::SERVICE_UNAVAILABLE, "Bitbucket is starting");
    }
    let credentials = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    if credentials != format!("{}:{}", s.settings.admin_user, s.settings.admin_password) {
        // A valid account that is not an admin gets 403, anything else 401, as Bitbucket answers.
        let valid_user = credentials.split_once(':').is_some_and(|(u, p)| {
            s.lock()
                .users
                .get(&key(u))
                .is_some_and(|user| !user.password.is_empty() && user.password == p)
        });
        return if valid_user {
            error(StatusCode::FORBIDDEN, "You are not permitted to access this resource")
        } else {
            error(
                StatusCode::UNAUTHORIZED,
                "Authentication failed. Please check your credentials and try again.",
            )
        };
    }
    if parts.method != Method::GET
        && parts.headers.get("x-atlassian-token").and_then(|v| v.to_str().ok()) != Some("no-check")
    {
        return error(StatusCode::FORBIDDEN, "XSRF check failed");
    }
    let json_body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let filter = query.get("filter").filter(|f| !f.is_empty());
    let mut st = s.lock();
    match (parts.method.as_str(), path) {
        ("GET", "/rest/api/1.0/admin/users") => {
            let items = st
                .users
                .values()
                .filter(|u| matches(filter, &[&u.name, &u.display_name, &u.email]))
                .map(user_json)
                .collect();
            page(items, query)
        }
        ("POST", "/rest/api/1.0/admin/users") => {
            let (Some(name), Some(display), Some(email)) =
                (query.get("name"), query.get("displayName"), query.get("emailAddress"))
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "name, displayName and emailAddress are required",
                );
            };
            if query.get("password").is_none_or(String::is_empty)
                && query.get("notify").map(String::as_str) != Some("true")
            {
                return error(StatusCode::BAD_REQUEST, "A password is required unless notify is set");
            }
            let mut user = User {
                name: name.clone(),
                display_name: display.clone(),
                email: email.clone(),
                password: query.get("password").cloned().unwrap_or_default(),
                directory: "Bitbucket Internal Directory".into(),
                mutable: true,
                groups: Default::default(),
            };
            if std::mem::take(&mut st.conflict_next_create) {
                // Another sign-in created the same user a moment earlier.
                st.users.insert(key(name), user);
                return error(StatusCode::CONFLICT, "A user with that name already exists");
            }
            if st.users.contains_key(&key(name)) {
                return error(StatusCode::CONFLICT, "A user with that name already exists");
            }
            if st.users.len() >= s.settings.max_users {
                return error(StatusCode::FORBIDDEN, "You have reached your licence limit");
            }
            if query.get("addToDefaultGroup").map(String::as_str) != Some("false") && st.groups.contains("stash-users")
            {
                user.groups.insert("stash-users".to_owned());
            }
            st.users.insert(key(name), user);
            empty(StatusCode::NO_CONTENT)
        }
        ("PUT", "/rest/api/1.0/admin/users") => {
            let Some(name) = json_body["name"].as_str() else {
                return error(StatusCode::BAD_REQUEST, "name is required");
            };
            let Some(user) = st.users.get_mut(&key(name)) else {
                return error(StatusCode::NOT_FOUND, "No such user");
            };
            if !user.mutable {
                return error(StatusCode::BAD_REQUEST, "The user's directory is read-only");
            }
            if let Some(d) = json_body["displayName"].as_str() {
                user.display_name = d.to_owned();
            }
            if let Some(e) = json_body["email"].as_str() {
                user.email = e.to_owned();
            }
            json_reply(StatusCode::OK, user_json(user))
        }
        ("GET", "/rest/api/1.0/admin/groups") => {
            let items = st
                .groups
                .iter()
                .filter(|g| matches(filter, &[g]))
                .map(|g| json!({"name": g, "deletable": true}))
                .collect();
            page(items, query)
        }
        ("POST", "/rest/api/1.0/admin/groups") => {
            let Some(name) = query.get("name").filter(|n| !n.is_empty()) else {
                return error(StatusCode::BAD_REQUEST, "name is required");
            };
            if st.groups.iter().any(|g| g.eq_ignore_ascii_case(name)) {
                return error(StatusCode::CONFLICT, "A group with that name already exists");
            }
            st.groups.insert(name.clone());
            json_reply(StatusCode::OK, json!({"name": name, "deletable": true}))
        }
        ("POST", "/rest/api/1.0/admin/users/add-groups") => {
            let Some(name) = json_body["user"].as_str() else {
                return error(StatusCode::BAD_REQUEST, "user is required");
            };
            let groups: Vec<String> = json_body["groups"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            if let Some(missing) = groups.iter().find(|g| !st.groups.contains(*g)) {
                return error(StatusCode::NOT_FOUND, &format!("No such group: {missing}"));
            }
            let Some(user) = st.users.get_mut(&key(name)) else {
                return error(StatusCode::NOT_FOUND, "No such user");
            };
            if !user.mutable {
                return error(StatusCode::FORBIDDEN, "The user's directory is read-only");
            }
            user.groups.extend(groups);
            empty(StatusCode::OK)
        }
        ("POST", "/rest/api/1.0/admin/users/remove-group") => {
            let (Some(name), Some(group)) = (json_body["context"].as_str(), json_body["itemName"].as_str()) else {
                return error(StatusCode::BAD_REQUEST, "context and itemName are required");
            };
            let exists = st.groups.contains(group);
            let Some(user) = st.users.get_mut(&key(name)) else {
                return error(StatusCode::NOT_FOUND, "No such user");
            };
            if !exists {
                return error(StatusCode::NOT_FOUND, "No such group");
            }
            if !user.mutable {
                return error(StatusCode::FORBIDDEN, "The user's directory is read-only");
            }
            user.groups.remove(group);
            empty(StatusCode::OK)
        }
        ("GET", "/rest/api/1.0/admin/users/more-members") => {
            let Some(user) = query.get("context").and_then(|c| st.users.get(&key(c))) else {
                return error(StatusCode::NOT_FOUND, "No such user");
            };
            let items = user
                .groups
                .iter()
                .filter(|g| matches(filter, &[g]))
                .map(|g| json!({"name": g, "deletable": true}))
                .collect();
            page(items, query)
        }
        _ => error(StatusCode::NOT_FOUND, "No such endpoint in the stand-in"),
    }
}
