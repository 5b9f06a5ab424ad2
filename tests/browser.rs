//! Browser tests: Debian's headless Chromium, driven by playwright-core (tests/browser/flows.mjs), through
//! the login page, two real providers, the Bitbucket stand-in, the countdown, remember me, logout, the test
//! configuration page and an error page. Screenshots of every page go to target/screenshots/.

mod common;

use std::process::Command;

use bbsso::standin::Standin;
use common::idp::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_pages_in_a_real_browser() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: run `bash scripts/setup`"
    );
    assert!(
        repo_path("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `bash scripts/setup`"
    );
    let port = free_port();
    let idp = RealProvider::start(port, &[]);
    let partner = RealProvider::start(port, &[]);
    let standin = Standin::new(standin_settings(
        "svc",
        "svc-password",
        format!("http://127.0.0.1:{port}/sso"),
        &["127.0.0.0/8"],
        100,
    ));
    standin.add_group("stash-users");
    standin.add_user(
        "bob",
        "Bob Builder",
        "bob@example.com",
        "x",
        true,
        &["bitbucket-admins", "stash-users"],
    );
    let upstream = serve_standin(&standin).await;
    let rest = "[bitbucket]\nadmin_user = \"svc\"\nadmin_password = \"svc-password\"\n\n\
                [groups]\nenabled = true\ndefault_groups = [\"stash-users\"]\n[groups.map]\n\"bitbucket-developers\" = [\"dev\"]\n\n\
                [admin]\ntest_page_groups = [\"bitbucket-admins\"]\n\n\
                [sso]\nauto_redirect_delay = \"3s\"\n[[sso.redirection_rules]]\nemail_domain = \"partner.example\"\nprovider = \"partner\"\n";
    let mut text = sso_config(
        port,
        upstream,
        &idp.issuer,
        "cognito",
        "display_name = \"Corporate\"",
        rest,
    );
    text = with_partner_provider(&text, &partner.issuer);
    // The provider ends bob's provider session when the test page signs alice in there (its session switch),
    // which revokes bob's refresh token; revalidation would then rightly end bob's proxy session mid-test.
    text = text.replace("revalidate_every = \"2s\"", "revalidate_every = \"0s\"");
    let proxy = ProxyProcess::start(&text);
    wait_ready(proxy.admin).await;

    let shots = repo_path("target/screenshots");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("flows.mjs")
            .current_dir(repo_path("tests/browser"))
            .env("BASE", format!("http://127.0.0.1:{port}"))
            .env("IDP", &idp.issuer)
            .env("PARTNER", &partner.issuer)
            .env("SCREENSHOTS", &shots)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "browser flows failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all browser flows passed"), "{stdout}");
    for name in [
        "login-page",
        "bitbucket-as-carol",
        "countdown",
        "logged-out",
        "test-page",
        "test-page-refused",
        "error-page",
    ] {
        assert!(
            repo_path(&format!("target/screenshots/{name}.png")).exists(),
            "screenshot {name}"
        );
    }
}

/// A Redis outage in a real browser: the 503 page, then the page's own reload back into Bitbucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_page_reloads_itself_in_a_real_browser() {
    use std::io::{BufRead, BufReader, Write};
    let mut redis = common::redis_server::Redis::private(&[]);
    let port = free_port();
    let idp = RealProvider::start(port, &[]);
    let standin = Standin::new(standin_settings(
        "svc",
        "svc-password",
        format!("http://127.0.0.1:{port}/sso"),
        &["127.0.0.0/8"],
        100,
    ));
    standin.add_group("stash-users");
    let upstream = serve_standin(&standin).await;
    let text = sso_config(
        port,
        upstream,
        &idp.issuer,
        "cognito",
        "",
        "[bitbucket]\nadmin_user = \"svc\"\nadmin_password = \"svc-password\"\n",
    )
    .replace(
        "revalidate_every = \"2s\"",
        &format!("revalidate_every = \"0s\"\n{}", redis.session_settings()),
    );
    let proxy = ProxyProcess::start(&text);
    wait_ready(proxy.admin).await;

    let shots = repo_path("target/screenshots");
    let mut node = Command::new("node")
        .arg("outage.mjs")
        .current_dir(repo_path("tests/browser"))
        .env("BASE", format!("http://127.0.0.1:{port}"))
        .env("SCREENSHOTS", &shots)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_node = node.stdin.take().unwrap();
    let mut from_node = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next = move || from_node.next().and_then(Result::ok).unwrap_or_default();
    let said = tokio::task::block_in_place(&mut next);
    assert_eq!(said, "signed-in");
    redis.stop();
    writeln!(to_node, "redis-stopped").unwrap();
    let said = tokio::task::block_in_place(&mut next);
    assert_eq!(said, "saw-503");
    redis.start();
    writeln!(to_node, "redis-started").unwrap();
    let said = tokio::task::block_in_place(&mut next);
    assert_eq!(
        said,
        "recovered",
        "{}",
        proxy.log_text().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    drop(to_node);
    assert!(node.wait().unwrap().success());
    for name in ["session-store-unavailable", "session-store-recovered"] {
        assert!(
            repo_path(&format!("target/screenshots/{name}.png")).exists(),
            "screenshot {name}"
        );
    }
}
