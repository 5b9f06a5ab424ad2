//! Every bad ID token is refused with its reason in the audit log, against a provider that can mint anything;
//! key rotation and a flood of unknown key ids behave.

mod common;

use std::sync::atomic::Ordering;

use common::idp::*;
use common::minting::{Mint, MintingProvider, Signing};
use common::*;
use serde_json::json;

async fn attempt(proxy: &ProxyProcess) -> Walk {
    let client = browser();
    walk(
        &client,
        client.get(format!("http://{}/sso/login?rd=/projects", proxy.addr)),
    )
    .await
}

async fn setup() -> (MintingProvider, ProxyProcess) {
    let provider = MintingProvider::start(CLIENT_ID).await;
    let port = free_port();
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{port}")).await;
    let proxy = ProxyProcess::start(&sso_config(port, upstream, &provider.issuer, "oidc", "", ""));
    wait_ready(proxy.admin).await;
    (provider, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_id_tokens_are_refused_each_with_its_reason() {
    let (provider, proxy) = setup().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let good = attempt(&proxy).await;
    assert_eq!(good.status, 200, "a good token signs in: {}", good.body);
    assert!(good.body.contains("\"user\":\"mallory\""));

    let cases: Vec<(&str, Mint, &str)> = vec![
        (
            "bad signature",
            Mint {
                signing: Signing::Rsa(1),
                kid: "k0".into(),
                ..Mint::default()
            },
            "id_token_bad_signature",
        ),
        (
            "alg none",
            Mint {
                signing: Signing::None,
                ..Mint::default()
            },
            "id_token_algorithm_not_allowed",
        ),
        (
            "HS256 keyed with the public key",
            Mint {
                signing: Signing::HmacWithPublicKey,
                ..Mint::default()
            },
            "id_token_algorithm_not_allowed",
        ),
        (
            "wrong issuer",
            Mint {
                overrides: json!({"iss": "https://evil.example"}),
                ..Mint::default()
            },
            "id_token_wrong_issuer",
        ),
        (
            "wrong audience",
            Mint {
                overrides: json!({"aud": "someone-else"}),
                ..Mint::default()
            },
            "id_token_wrong_audience",
        ),
        (
            "audience list without azp",
            Mint {
                overrides: json!({"aud": [CLIENT_ID, "other"]}),
                ..Mint::default()
            },
            "id_token_azp_mismatch",
        ),
        (
            "expired",
            Mint {
                overrides: json!({"exp": now - 120, "iat": now - 400}),
                ..Mint::default()
            },
            "id_token_expired",
        ),
        (
            "not yet valid",
            Mint {
                overrides: json!({"nbf": now + 600}),
                ..Mint::default()
            },
            "id_token_not_yet_valid",
        ),
        (
            "issued in the future",
            Mint {
                overrides: json!({"iat": now + 600}),
                ..Mint::default()
            },
            "id_token_issued_in_future",
        ),
        (
            "nonce mismatch",
            Mint {
                overrides: json!({"nonce": "not-the-nonce"}),
                ..Mint::default()
            },
            "id_token_nonce_mismatch",
        ),
        (
            "no nonce",
            Mint {
                overrides: json!({"nonce": null}),
                ..Mint::default()
            },
            "id_token_nonce_mismatch",
        ),
        (
            "an access token",
            Mint {
                overrides: json!({"token_use": "access"}),
                ..Mint::default()
            },
            "id_token_wrong_token_use",
        ),
        (
            "at_hash mismatch",
            Mint {
                overrides: json!({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}),
                ..Mint::default()
            },
            "id_token_at_hash_mismatch",
        ),
        (
            "no username claim",
            Mint {
                overrides: json!({"cognito:username": null}),
                ..Mint::default()
            },
            "username_missing",
        ),
    ];
    for (name, mint, reason) in cases {
        provider.set(mint);
        let refused = attempt(&proxy).await;
        assert!(
            refused.status == 401 || refused.status == 403,
            "{name}: status {} {}",
            refused.status,
            refused.body
        );
        assert!(
            refused.body.contains("Reference <code>"),
            "{name}: the page carries a reference"
        );
        assert!(!refused.body.contains("eyJ"), "{name}: no token on the page");
        let reference = refused
            .body
            .split("Reference <code>")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .expect("reference")
            .to_owned();
        let logged = proxy.wait_for_log(|v| v["target"] == "audit" && v["request_id"] == reference.as_str());
        assert_eq!(logged["event"], "login_failure", "{name}");
        assert_eq!(
            logged["reason"], reason,
            "{name}: the audit event under the page's reference names the reason"
        );
    }
    assert!(!proxy.log_text().contains("eyJ"), "no token in any log line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_accepted_after_one_refetch_and_a_kid_flood_causes_at_most_one() {
    let (provider, proxy) = setup().await;
    assert_eq!(attempt(&proxy).await.status, 200);
    let after_load = provider.jwks_fetches.load(Ordering::SeqCst);

    // The provider rotates: it now signs with a new key that the proxy has not seen.
    provider.set(Mint {
        signing: Signing::Rsa(1),
        kid: "k1".into(),
        published: vec![0, 1],
        ..Mint::default()
    });
    let rotated = attempt(&proxy).await;
    assert_eq!(
        rotated.status, 200,
        "the new key is fetched and accepted: {}",
        rotated.body
    );
    assert_eq!(provider.jwks_fetches.load(Ordering::SeqCst), after_load + 1);

    // A flood of random key ids: refused, and the provider is not asked again within the interval.
    for i in 0..25 {
        provider.set(Mint {
            kid: format!("random-{i}"),
            ..Mint::default()
        });
        let r = attempt(&proxy).await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        provider.jwks_fetches.load(Ordering::SeqCst),
        after_load + 1,
        "no refetch within the interval"
    );
    proxy.wait_for_log(|v| v["target"] == "audit" && v["reason"] == "id_token_unknown_kid");
}
