//! Bitbucket provisioning: find the account, decide with [`crate::mapping`], and make Bitbucket agree (create the
//! user, update the profile, sync groups) before the user is signed in.

pub mod client;

use std::collections::BTreeSet;
use std::sync::Arc;

use client::{BitbucketClient, BitbucketError};

use crate::config::{Config, MatchBy};
use crate::mapping::{self, BitbucketUser, Claims, Current, Plan, Refusal};
use crate::telemetry::audit::{self, Origin};

/// The account the session will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub username: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
}

/// A refusal with the operator-side detail for the audit log.
#[derive(Debug)]
pub struct Refused {
    pub refusal: Refusal,
    pub detail: String,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused {
            detail: refusal.message.clone(),
            refusal,
        }
    }
}

fn failed(e: BitbucketError) -> Refused {
    Refused {
        refusal: Refusal {
            code: "provisioning_failed",
            message: "Your Bitbucket account could not be prepared, so you were not signed in. Try again in a minute; if it keeps happening, tell your Bitbucket administrator and give them the reference below.".into(),
        },
        detail: e.to_string(),
    }
}

/// Applies the mapping rules and, with `[bitbucket]`, provisions through the REST API.
pub struct Provisioner {
    config: Arc<Config>,
    client: Option<BitbucketClient>,
}

impl Provisioner {
    /// A provisioner for the configuration (REST calls only when `[bitbucket]` is set).
    pub fn new(config: Arc<Config>) -> Self {
        let client = config.bitbucket.as_ref().map(BitbucketClient::new);
        Provisioner { config, client }
    }

    /// What Bitbucket has for this profile, and the plan: the decision without any change.
    async fn plan(
        &self,
        client: &BitbucketClient,
        profile: &mapping::Profile,
    ) -> Result<(Option<BitbucketUser>, Plan), Refused> {
        let (m, g) = (&self.config.mapping, &self.config.groups);
        let user = match m.match_by {
            MatchBy::Username => client.find_user_by_name(&profile.username).await,
            MatchBy::Email => match &profile.email {
                Some(e) => client.find_user_by_email(e).await,
                None => {
                    return Err(Refusal {
                        code: "email_missing",
                        message: "The sign-in service did not give your email address, which this site uses to find your Bitbucket account. Tell your Bitbucket administrator.".into(),
                    }
                    .into());
                }
            },
        }
        .map_err(failed)?;
        let current_groups = match &user {
            Some(u) if g.enabled => client.user_groups(&u.name).await.map_err(failed)?,
            _ => Vec::new(),
        };
        let mut existing = BTreeSet::new();
        for group in mapping::candidate_groups(profile, g) {
            if client.group_exists(&group).await.map_err(failed)? {
                existing.insert(group.to_lowercase());
            }
        }
        let plan = mapping::decide(
            profile,
            Current {
                user: user.as_ref(),
                groups: &current_groups,
                existing_groups: &existing,
            },
            m,
            g,
        )?;
        Ok((user, plan))
    }

    /// What a sign-in with these claims would do, changing nothing (for the test configuration page).
    pub async fn preview(&self, claims: &Claims) -> Result<(Option<BitbucketUser>, Plan), Refused> {
        let profile = mapping::profile(claims, &self.config.mapping, &self.config.groups)?;
        match &self.client {
            Some(client) => self.plan(client, &profile).await,
            None => Ok((
                None,
                Plan {
                    username: profile.username.clone(),
                    email: profile.email.clone(),
                    display_name: profile.display_name.clone().unwrap_or(profile.username),
                    ..Plan::default()
                },
            )),
        }
    }

    /// The user's Bitbucket groups (for the test page's access check); `None` without `[bitbucket]`.
    pub async fn groups_of(&self, username: &str) -> Option<Result<Vec<String>, BitbucketError>> {
        Some(self.client.as_ref()?.user_groups(username).await)
    }

    /// Decides and applies; returns the Bitbucket account to sign in as.
    pub async fn admit(&self, claims: &Claims, origin: Origin<'_>) -> Result<Admitted, Refused> {
        let profile = mapping::profile(claims, &self.config.mapping, &self.config.groups)?;
        let Some(client) = &self.client else {
            return Ok(Admitted {
                username: profile.username,
                email: profile.email,
                display_name: profile.display_name,
            });
        };
        // A 409 on create means a concurrent sign-in created the user first: decide again against it.
        for _ in 0..2 {
            let (_, plan) = self.plan(client, &profile).await?;
            let who = plan.username.as_str();
            if plan.create_user {
                let email = plan.email.as_deref().unwrap_or_default();
                if !client
                    .create_user(who, &plan.display_name, email)
                    .await
                    .map_err(failed)?
                {
                    continue;
                }
                audit::bitbucket_change(origin, "user_created", who, None);
            }
            if plan.update_profile {
                client
                    .update_user(who, &plan.display_name, plan.email.as_deref())
                    .await
                    .map_err(failed)?;
                audit::bitbucket_change(origin, "profile_updated", who, None);
            }
            // Removals first: a failure half-way leaves the user with less access, never more.
            for group in &plan.remove_groups {
                client.remove_from_group(who, group).await.map_err(failed)?;
                audit::bitbucket_change(origin, "group_removed", who, Some(group));
            }
            for group in &plan.create_groups {
                if client.create_group(group).await.map_err(failed)? {
                    audit::bitbucket_change(origin, "group_created", who, Some(group));
                }
            }
            if !plan.add_groups.is_empty() {
                client.add_to_groups(who, &plan.add_groups).await.map_err(failed)?;
                for group in &plan.add_groups {
                    audit::bitbucket_change(origin, "group_added", who, Some(group));
                }
            }
            return Ok(Admitted {
                username: plan.username,
                email: plan.email,
                display_name: Some(plan.display_name),
            });
        }
        Err(failed(BitbucketError::Unavailable(
            "the user was created concurrently but cannot be found".into(),
        )))
    }
}
