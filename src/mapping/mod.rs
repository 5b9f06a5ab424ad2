//! From the provider's claims to the Bitbucket account and groups: pure decisions, no I/O.
//!
//! [`profile`] reads the claims through `[mapping]` and `[groups]`; [`decide`] compares the profile with what
//! Bitbucket has and returns either a refusal (stable code, message for the user) or a plan of changes.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::{AssignDefaultTo, DisplayNameClaims, GroupMode, Groups, Mapping};

/// Claims of a validated ID token (merged with userinfo).
pub type Claims = serde_json::Map<String, Value>;

/// Why a user is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable reason code for the audit log.
    pub code: &'static str,
    /// Plain words for the user, saying what to do.
    pub message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// What the provider says about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub username: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// Provider groups (empty when group sync is off).
    pub groups: Vec<String>,
}

/// A Bitbucket user as the REST API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitbucketUser {
    pub name: String,
    pub slug: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// False for users of read-only directories (LDAP, Crowd): never change their profile.
    pub mutable_details: bool,
    /// False for users of read-only directories: never change their groups.
    pub mutable_groups: bool,
}

/// What Bitbucket has now.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    pub user: Option<&'a BitbucketUser>,
    /// The user's groups (empty for a new user).
    pub groups: &'a [String],
    /// Which of [`candidate_groups`] exist, lower-cased.
    pub existing_groups: &'a BTreeSet<String>,
}

/// The changes to make in Bitbucket before the user is signed in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The Bitbucket username the session will carry.
    pub username: String,
    pub email: Option<String>,
    pub display_name: String,
    pub create_user: bool,
    pub update_profile: bool,
    pub create_groups: Vec<String>,
    pub add_groups: Vec<String>,
    pub remove_groups: Vec<String>,
}

fn string_claim(claims: &Claims, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The groups claim: a list, a single string, a comma-separated string, or absent (none).
pub fn groups_claim(value: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    out = out
        .into_iter()
        .map(|g| g.trim().to_owned())
        .filter(|g| !g.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `email` has exactly one `@`, a local part, and a domain equal (case-insensitively) to one allowed.
pub fn email_domain_allowed(email: &str, allowed: &[String]) -> bool {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty() && allowed.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

/// Reads the profile from the claims and applies the domain restriction.
pub fn profile(claims: &Claims, m: &Mapping, g: &Groups) -> Result<Profile, Refusal> {
    let username = string_claim(claims, &m.username_claim).ok_or_else(|| {
        Refusal::new(
            "username_missing",
            "The sign-in service did not say which Bitbucket user you are. Tell your Bitbucket administrator.",
        )
    })?;
    let email = string_claim(claims, &m.email_claim);
    if !m.allowed_email_domains.is_empty()
        && !email
            .as_deref()
            .is_some_and(|e| email_domain_allowed(e, &m.allowed_email_domains))
    {
        return Err(Refusal::new(
            "email_domain_not_allowed",
            "Your email address is not from a domain that may use this Bitbucket. Sign in with your work account, or ask your Bitbucket administrator.",
        ));
    }
    let display_name = match &m.display_name {
        DisplayNameClaims::Single(c) => string_claim(claims, c),
        DisplayNameClaims::FirstLast { first, last } => {
            let joined = [string_claim(claims, first), string_claim(claims, last)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            (!joined.is_empty()).then_some(joined)
        }
    };
    let groups = if g.enabled {
        groups_claim(claims.get(&g.claim))
    } else {
        Vec::new()
    };
    Ok(Profile {
        username,
        email,
        display_name,
        groups,
    })
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

fn contains(set: &[String], name: &str) -> bool {
    set.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Bitbucket groups the provider's groups map to, before exclusion and existence checks.
fn mapped_groups(p: &Profile, g: &Groups) -> Vec<String> {
    let mut out: Vec<String> = match g.mode {
        GroupMode::Manual => g
            .map
            .iter()
            .filter(|(_, provider_groups)| provider_groups.iter().any(|pg| contains(&p.groups, pg)))
            .map(|(bb, _)| bb.clone())
            .collect(),
        GroupMode::OnTheFly => p.groups.clone(),
    };
    out.retain(|x| !contains(&g.exclude, x));
    out.sort();
    out.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    out
}

/// Groups whose existence the caller must look up before [`decide`].
pub fn candidate_groups(p: &Profile, g: &Groups) -> Vec<String> {
    if !g.enabled {
        return Vec::new();
    }
    let mut out = mapped_groups(p, g);
    out.extend(g.default_groups.iter().filter(|d| !contains(&g.exclude, d)).cloned());
    out.sort();
    out.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    out
}

/// Decides whether and how the user is admitted.
pub fn decide(p: &Profile, cur: Current<'_>, m: &Mapping, g: &Groups) -> Result<Plan, Refusal> {
    let creating = cur.user.is_none();
    if creating && !m.allow_user_creation {
        return Err(Refusal::new(
            "user_not_found",
            "There is no Bitbucket account for you, and this site does not create accounts. Ask your Bitbucket administrator for one.",
        ));
    }
    if creating && p.email.is_none() {
        return Err(Refusal::new(
            "email_missing",
            "The sign-in service did not give your email address, which a new Bitbucket account needs. Tell your Bitbucket administrator.",
        ));
    }
    let exists = |name: &str| cur.existing_groups.contains(&lower(name));
    let mut plan = Plan {
        username: cur.user.map(|u| u.name.clone()).unwrap_or_else(|| p.username.clone()),
        email: p.email.clone(),
        display_name: p.display_name.clone().unwrap_or_else(|| p.username.clone()),
        create_user: creating,
        ..Plan::default()
    };

    if let Some(user) = cur.user {
        let display_differs = p
            .display_name
            .as_ref()
            .is_some_and(|d| Some(d) != user.display_name.as_ref());
        let email_differs = p
            .email
            .as_ref()
            .is_some_and(|e| !user.email.as_ref().is_some_and(|u| u.eq_ignore_ascii_case(e)));
        plan.update_profile = m.update_profile && user.mutable_details && (display_differs || email_differs);
        if !plan.update_profile {
            plan.display_name = user.display_name.clone().unwrap_or_else(|| user.name.clone());
            plan.email = user.email.clone().or_else(|| p.email.clone());
        }
    }

    if !g.enabled {
        return Ok(plan);
    }
    let mapped: Vec<String> = mapped_groups(p, g)
        .into_iter()
        .filter(|x| g.mode == GroupMode::Manual || g.create_missing || exists(x))
        .collect();
    if creating && g.require_mapped_group && mapped.is_empty() {
        return Err(Refusal::new(
            "no_mapped_group",
            "None of your groups at the sign-in service gives access to this Bitbucket. Ask your administrator to add you to a group that does.",
        ));
    }
    let may_change = match cur.user {
        None => true,
        Some(u) => g.sync_existing_users && u.mutable_groups,
    };
    if !may_change {
        return Ok(plan);
    }
    let defaults: &[String] = match (g.assign_default_to, creating) {
        (AssignDefaultTo::All, _) | (AssignDefaultTo::New, true) => &g.default_groups,
        _ => &[],
    };
    let mut desired: Vec<String> = mapped;
    desired.extend(defaults.iter().cloned());
    desired.retain(|x| !contains(&g.exclude, x));
    desired.sort();
    desired.dedup_by(|a, b| a.eq_ignore_ascii_case(b));

    plan.add_groups = desired.iter().filter(|x| !contains(cur.groups, x)).cloned().collect();
    plan.create_groups = plan.add_groups.iter().filter(|x| !exists(x)).cloned().collect();
    if !g.keep_existing && !creating {
        let mut remove: Vec<String> = cur
            .groups
            .iter()
            .filter(|x| !contains(&desired, x) && !contains(&g.exclude, x) && !contains(&g.default_groups, x))
            .cloned()
            .collect();
        remove.sort();
        remove.dedup();
        plan.remove_groups = remove;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
