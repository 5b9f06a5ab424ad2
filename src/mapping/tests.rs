//! Table tests for every setting, and property tests for the invariants.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::config::{AssignDefaultTo, DisplayNameClaims, GroupMode, Groups, Mapping, MatchBy};

fn mapping() -> Mapping {
    Mapping {
        match_by: MatchBy::Username,
        username_claim: "cognito:username".into(),
        email_claim: "email".into(),
        display_name: DisplayNameClaims::Single("name".into()),
        update_profile: true,
        allow_user_creation: true,
        allowed_email_domains: vec![],
    }
}

fn groups() -> Groups {
    let mut map = BTreeMap::new();
    map.insert(
        "bitbucket-developers".to_owned(),
        vec!["dev".to_owned(), "engineering".to_owned()],
    );
    map.insert("bitbucket-admins".to_owned(), vec!["admins".to_owned()]);
    Groups {
        enabled: true,
        claim: "cognito:groups".into(),
        mode: GroupMode::Manual,
        default_groups: vec!["stash-users".into()],
        assign_default_to: AssignDefaultTo::All,
        sync_existing_users: true,
        keep_existing: true,
        exclude: vec!["local-admins".into()],
        create_missing: false,
        require_mapped_group: false,
        map,
    }
}

fn claims(v: serde_json::Value) -> Claims {
    v.as_object().unwrap().clone()
}

fn alice_claims() -> Claims {
    claims(
        json!({"cognito:username": "alice", "email": "alice@example.com", "name": "Alice", "cognito:groups": ["dev"]}),
    )
}

fn user(name: &str) -> BitbucketUser {
    BitbucketUser {
        name: name.into(),
        slug: name.into(),
        display_name: Some("Alice".into()),
        email: Some("alice@example.com".into()),
        mutable_details: true,
        mutable_groups: true,
    }
}

fn existing(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_lowercase()).collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[test]
fn the_groups_claim_takes_every_shape() {
    assert_eq!(groups_claim(Some(&json!(["b", "a", "a", " c "]))), s(&["a", "b", "c"]));
    assert_eq!(groups_claim(Some(&json!("dev"))), s(&["dev"]));
    assert_eq!(groups_claim(Some(&json!("dev, ops,,qa"))), s(&["dev", "ops", "qa"]));
    assert_eq!(groups_claim(None), Vec::<String>::new());
    assert_eq!(groups_claim(Some(&json!(42))), Vec::<String>::new());
}

#[test]
fn email_domains_are_matched_exactly() {
    let allowed = s(&["example.com"]);
    assert!(email_domain_allowed("a@example.com", &allowed));
    assert!(email_domain_allowed("a@EXAMPLE.com", &allowed));
    for bad in [
        "a@evil-example.com",
        "a@example.com.evil",
        "a@sub.example.com",
        "a@b@example.com",
        "@example.com",
        "example.com",
        "a@",
    ] {
        assert!(!email_domain_allowed(bad, &allowed), "{bad}");
    }
}

#[test]
fn profile_reads_the_configured_claims() {
    let p = profile(&alice_claims(), &mapping(), &groups()).unwrap();
    assert_eq!(
        p,
        Profile {
            username: "alice".into(),
            email: Some("alice@example.com".into()),
            display_name: Some("Alice".into()),
            groups: s(&["dev"])
        }
    );
    let mut m = mapping();
    m.display_name = DisplayNameClaims::FirstLast {
        first: "given_name".into(),
        last: "family_name".into(),
    };
    let p = profile(
        &claims(json!({"cognito:username": "b", "given_name": "Bob", "family_name": "Builder"})),
        &m,
        &groups(),
    )
    .unwrap();
    assert_eq!(p.display_name.as_deref(), Some("Bob Builder"));
    let mut g = groups();
    g.enabled = false;
    assert!(profile(&alice_claims(), &mapping(), &g).unwrap().groups.is_empty());
    assert_eq!(
        profile(&claims(json!({"email": "x@y"})), &mapping(), &groups())
            .unwrap_err()
            .code,
        "username_missing"
    );
    let mut m = mapping();
    m.allowed_email_domains = s(&["example.com"]);
    assert!(profile(&alice_claims(), &m, &groups()).is_ok());
    let evil = claims(json!({"cognito:username": "e", "email": "e@evil-example.com"}));
    assert_eq!(
        profile(&evil, &m, &groups()).unwrap_err().code,
        "email_domain_not_allowed"
    );
    let no_email = claims(json!({"cognito:username": "e"}));
    assert_eq!(
        profile(&no_email, &m, &groups()).unwrap_err().code,
        "email_domain_not_allowed"
    );
}

fn plan(
    p: &Profile,
    u: Option<&BitbucketUser>,
    current: &[&str],
    exist: &[&str],
    m: &Mapping,
    g: &Groups,
) -> Result<Plan, Refusal> {
    let current = s(current);
    let exist = existing(exist);
    decide(
        p,
        Current {
            user: u,
            groups: &current,
            existing_groups: &exist,
        },
        m,
        g,
    )
}

#[test]
fn new_users_are_created_with_mapped_and_default_groups() {
    let p = profile(&alice_claims(), &mapping(), &groups()).unwrap();
    let got = plan(&p, None, &[], &["stash-users"], &mapping(), &groups()).unwrap();
    assert!(got.create_user);
    assert_eq!(got.username, "alice");
    assert_eq!(got.add_groups, s(&["bitbucket-developers", "stash-users"]));
    assert_eq!(
        got.create_groups,
        s(&["bitbucket-developers"]),
        "a mapped group that does not exist is created"
    );
    assert!(got.remove_groups.is_empty());

    let mut m = mapping();
    m.allow_user_creation = false;
    assert_eq!(
        plan(&p, None, &[], &[], &m, &groups()).unwrap_err().code,
        "user_not_found"
    );
    let mut no_email = p.clone();
    no_email.email = None;
    assert_eq!(
        plan(&no_email, None, &[], &[], &mapping(), &groups()).unwrap_err().code,
        "email_missing"
    );
}

#[test]
fn existing_users_keep_their_bitbucket_name_and_get_profile_updates_when_allowed() {
    let mut p = profile(&alice_claims(), &mapping(), &groups()).unwrap();
    p.display_name = Some("Alice Renamed".into());
    let bb = user("Alice.Example");
    let got = plan(
        &p,
        Some(&bb),
        &["stash-users"],
        &["stash-users", "bitbucket-developers"],
        &mapping(),
        &groups(),
    )
    .unwrap();
    assert_eq!(got.username, "Alice.Example");
    assert!(!got.create_user && got.update_profile);
    assert_eq!(got.display_name, "Alice Renamed");
    let mut m = mapping();
    m.update_profile = false;
    let got = plan(&p, Some(&bb), &[], &[], &m, &groups()).unwrap();
    assert!(!got.update_profile);
    assert_eq!(got.display_name, "Alice", "Bitbucket's own name is kept");
    let mut readonly = bb.clone();
    readonly.mutable_details = false;
    readonly.mutable_groups = false;
    let got = plan(&p, Some(&readonly), &[], &[], &mapping(), &groups()).unwrap();
    assert!(
        !got.update_profile && got.add_groups.is_empty() && got.remove_groups.is_empty(),
        "read-only directory users are never changed"
    );
    p.display_name = Some("Alice".into());
    assert!(
        !plan(&p, Some(&bb), &[], &[], &mapping(), &groups())
            .unwrap()
            .update_profile,
        "nothing to update"
    );
}

#[test]
fn group_sync_settings() {
    let mut p = profile(&alice_claims(), &mapping(), &groups()).unwrap();
    p.groups = s(&["engineering"]);
    let bb = user("alice");
    let current = ["stash-users", "bitbucket-admins", "local-admins", "manual-group"];
    let all = [
        "stash-users",
        "bitbucket-admins",
        "local-admins",
        "bitbucket-developers",
        "manual-group",
    ];

    let keep = plan(&p, Some(&bb), &current, &all, &mapping(), &groups()).unwrap();
    assert_eq!(keep.add_groups, s(&["bitbucket-developers"]));
    assert!(keep.remove_groups.is_empty(), "keep_existing never removes");

    let mut g = groups();
    g.keep_existing = false;
    let sync = plan(&p, Some(&bb), &current, &all, &mapping(), &g).unwrap();
    assert_eq!(
        sync.remove_groups,
        s(&["bitbucket-admins", "manual-group"]),
        "excluded and default groups stay"
    );

    g.sync_existing_users = false;
    let untouched = plan(&p, Some(&bb), &current, &all, &mapping(), &g).unwrap();
    assert!(untouched.add_groups.is_empty() && untouched.remove_groups.is_empty());

    let mut g = groups();
    g.assign_default_to = AssignDefaultTo::New;
    assert!(
        !plan(&p, Some(&bb), &[], &all, &mapping(), &g)
            .unwrap()
            .add_groups
            .contains(&"stash-users".to_owned())
    );
    assert!(
        plan(&p, None, &[], &all, &mapping(), &g)
            .unwrap()
            .add_groups
            .contains(&"stash-users".to_owned())
    );
    g.assign_default_to = AssignDefaultTo::None;
    assert!(
        !plan(&p, None, &[], &all, &mapping(), &g)
            .unwrap()
            .add_groups
            .contains(&"stash-users".to_owned())
    );

    let mut g = groups();
    g.enabled = false;
    let off = plan(&p, None, &[], &all, &mapping(), &g).unwrap();
    assert!(off.add_groups.is_empty() && off.create_groups.is_empty());
}

#[test]
fn on_the_fly_uses_the_same_names_and_creates_only_when_asked() {
    let mut g = groups();
    g.mode = GroupMode::OnTheFly;
    let mut p = profile(&alice_claims(), &mapping(), &g).unwrap();
    p.groups = s(&["dev", "ops", "local-admins"]);
    let got = plan(&p, None, &[], &["dev", "stash-users"], &mapping(), &g).unwrap();
    assert_eq!(
        got.add_groups,
        s(&["dev", "stash-users"]),
        "ops does not exist and is not created; local-admins is excluded"
    );
    assert!(got.create_groups.is_empty());
    g.create_missing = true;
    let got = plan(&p, None, &[], &["dev", "stash-users"], &mapping(), &g).unwrap();
    assert_eq!(got.add_groups, s(&["dev", "ops", "stash-users"]));
    assert_eq!(got.create_groups, s(&["ops"]));
}

#[test]
fn require_mapped_group_blocks_only_new_users_without_one() {
    let mut g = groups();
    g.require_mapped_group = true;
    let mut p = profile(&alice_claims(), &mapping(), &g).unwrap();
    assert!(plan(&p, None, &[], &[], &mapping(), &g).is_ok());
    p.groups = s(&["unrelated"]);
    assert_eq!(
        plan(&p, None, &[], &[], &mapping(), &g).unwrap_err().code,
        "no_mapped_group"
    );
    assert!(
        plan(&p, Some(&user("alice")), &[], &[], &mapping(), &g).is_ok(),
        "existing users are not blocked"
    );
    g.mode = GroupMode::OnTheFly;
    p.groups = s(&["missing-in-bitbucket"]);
    assert_eq!(
        plan(&p, None, &[], &[], &mapping(), &g).unwrap_err().code,
        "no_mapped_group"
    );
}

fn arb_groups() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "dev",
            "engineering",
            "admins",
            "ops",
            "local-admins",
            "stash-users",
            "bitbucket-developers",
            "bitbucket-admins",
            "qa",
        ]),
        0..6,
    )
    .prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

fn arb_config() -> impl Strategy<Value = Groups> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0..3u8,
    )
        .prop_map(|(manual, keep, sync, create, require, assign)| {
            let mut g = groups();
            g.mode = if manual { GroupMode::Manual } else { GroupMode::OnTheFly };
            g.keep_existing = keep;
            g.sync_existing_users = sync;
            g.create_missing = create && !manual;
            g.require_mapped_group = require;
            g.assign_default_to =
                [AssignDefaultTo::All, AssignDefaultTo::New, AssignDefaultTo::None][usize::from(assign)];
            g
        })
}

proptest! {
    #[test]
    fn excluded_groups_are_never_added_or_removed(g in arb_config(), provider in arb_groups(), current in arb_groups(), exist in arb_groups(), new_user in any::<bool>()) {
        let p = Profile { username: "u".into(), email: Some("u@example.com".into()), display_name: None, groups: provider };
        let bb = user("u");
        let exist: BTreeSet<String> = exist.iter().map(|x| x.to_lowercase()).collect();
        if let Ok(plan) = decide(&p, Current { user: (!new_user).then_some(&bb), groups: &current, existing_groups: &exist }, &mapping(), &g) {
            for x in plan.add_groups.iter().chain(&plan.remove_groups).chain(&plan.create_groups) {
                prop_assert!(!g.exclude.iter().any(|e| e.eq_ignore_ascii_case(x)));
            }
            if g.keep_existing || new_user {
                prop_assert!(plan.remove_groups.is_empty());
            }
            for x in &plan.add_groups {
                prop_assert!(!plan.remove_groups.contains(x));
            }
        }
    }

    #[test]
    fn no_user_is_created_without_a_mapped_group_when_required(g in arb_config(), provider in arb_groups(), exist in arb_groups()) {
        let mut g = g;
        g.require_mapped_group = true;
        let p = Profile { username: "u".into(), email: Some("u@example.com".into()), display_name: None, groups: provider };
        let exist: BTreeSet<String> = exist.iter().map(|x| x.to_lowercase()).collect();
        let admitted = decide(&p, Current { user: None, groups: &[], existing_groups: &exist }, &mapping(), &g).is_ok();
        // Independently of the implementation: does any provider group map to a usable Bitbucket group?
        let excluded = |x: &str| g.exclude.iter().any(|e| e.eq_ignore_ascii_case(x));
        let maps = match g.mode {
            GroupMode::Manual => g.map.iter().any(|(bb, pgs)| !excluded(bb) && pgs.iter().any(|pg| p.groups.iter().any(|x| x.eq_ignore_ascii_case(pg)))),
            GroupMode::OnTheFly => p.groups.iter().any(|x| !excluded(x) && (g.create_missing || exist.contains(&x.to_lowercase()))),
        };
        prop_assert_eq!(admitted, maps);
    }

    #[test]
    fn the_plan_does_not_depend_on_the_order_of_claims(g in arb_config(), provider in arb_groups(), current in arb_groups(), exist in arb_groups()) {
        let bb = user("u");
        let exist: BTreeSet<String> = exist.iter().map(|x| x.to_lowercase()).collect();
        let mut reversed = provider.clone();
        reversed.reverse();
        let mut current_rev = current.clone();
        current_rev.reverse();
        let a = Profile { username: "u".into(), email: Some("u@example.com".into()), display_name: None, groups: provider };
        let b = Profile { groups: reversed, ..a.clone() };
        let one = decide(&a, Current { user: Some(&bb), groups: &current, existing_groups: &exist }, &mapping(), &g);
        let two = decide(&b, Current { user: Some(&bb), groups: &current_rev, existing_groups: &exist }, &mapping(), &g);
        prop_assert_eq!(one, two);
    }

    #[test]
    fn read_only_users_are_never_changed(g in arb_config(), provider in arb_groups(), current in arb_groups()) {
        let mut bb = user("u");
        bb.mutable_groups = false;
        bb.mutable_details = false;
        let p = Profile { username: "u".into(), email: Some("other@example.com".into()), display_name: Some("Other".into()), groups: provider };
        let plan = decide(&p, Current { user: Some(&bb), groups: &current, existing_groups: &BTreeSet::new() }, &mapping(), &g).unwrap();
        prop_assert!(!plan.update_profile && plan.add_groups.is_empty() && plan.remove_groups.is_empty() && plan.create_groups.is_empty());
    }
}
