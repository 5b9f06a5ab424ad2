//! `bitbucket-sso-proxy demo` starts, serves the whole flow to an HTTP client, and stops cleanly on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::BIN;
use common::idp::{browser, free_port, sign_in, walk};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_flow_and_stops_on_ctrl_c() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    let mut ready = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        banner.push(line.clone());
        if line.contains("provider discovery and keys loaded") {
            ready = true;
            break;
        }
    }
    assert!(ready, "demo did not get ready:\n{}", banner.join("\n"));
    let text = banner.join("\n");
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        text.contains(&format!("Open {base}/")) && text.contains("alice / alice-password"),
        "{text}"
    );

    let client = browser();
    let page = walk(&client, client.get(format!("{base}/dashboard"))).await;
    assert!(
        page.body.contains("Demo sign-in service"),
        "the demo provider's form: {}",
        page.body
    );
    let landed = sign_in(&client, &page, "alice", "alice-password").await;
    assert_eq!(landed.url, format!("{base}/dashboard"));
    assert!(
        landed.body.contains("<strong id=\"user\">alice</strong>"),
        "{}",
        landed.body
    );
    assert!(
        landed.body.contains("bitbucket-developers, stash-users"),
        "created with mapped groups: {}",
        landed.body
    );

    let admin = browser();
    let page = walk(&admin, admin.get(format!("{base}/dashboard"))).await;
    sign_in(&admin, &page, "bob", "bob-password").await;
    let test = walk(&admin, admin.get(format!("{base}/sso/test"))).await;
    let report = sign_in(&admin, &test, "carol", "carol-password").await;
    assert!(
        report
            .body
            .contains("creates the Bitbucket user <strong>carol</strong>"),
        "{}",
        report.body
    );

    let out = walk(&client, client.get(format!("{base}/sso/logout"))).await;
    assert_eq!(out.url, format!("{base}/sso/logged-out"));
    assert!(out.body.contains("You are signed out"));

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "clean exit on Ctrl-C: {exit:?}");
}
