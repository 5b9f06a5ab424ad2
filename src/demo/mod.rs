//! `bitbucket-sso-proxy demo`: the whole flow on this machine with nothing external: a development OpenID
//! provider, the Bitbucket stand-in and the proxy, all on 127.0.0.1.

pub mod idp;

use std::future::Future;
use std::path::Path;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::standin::{Settings, Standin};

/// The demo could not start.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error("cannot listen on 127.0.0.1:{port}: {source}; choose another port with --port")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the demo's own configuration is invalid (a bug): {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the demo provider could not start: {0}")]
    Provider(String),
}

async fn bind(port: u16) -> Result<TcpListener, DemoError> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| DemoError::Bind { port, source })
}

/// Starts everything, prints the URL and the users, and runs until `shutdown`.
pub async fn run(port: u16, shutdown: impl Future<Output = ()> + Send) -> Result<(), DemoError> {
    let idp_listener = bind(0).await?;
    let issuer = format!(
        "http://127.0.0.1:{}",
        idp_listener.local_addr().map(|a| a.port()).unwrap_or(0)
    );
    let client_secret = crate::keys::generate();
    let provider = idp::DevIdp::new(&issuer, "demo-client", &client_secret).map_err(DemoError::Provider)?;
    tokio::spawn(provider.serve(idp_listener));

    let public = bind(port).await?;
    let public_port = public.local_addr().map(|a| a.port()).unwrap_or(port);
    let public_url = format!("http://127.0.0.1:{public_port}");
    let assertion_secret = crate::keys::generate();
    let admin_password = crate::keys::generate();
    let standin = Standin::new(Settings {
        admin_user: "sso-provisioner".into(),
        admin_password: admin_password.clone(),
        assertion_secret: assertion_secret.clone(),
        issuer: format!("{public_url}/sso"),
        user_header: "X-Forwarded-User".into(),
        assertion_header: "X-Bbsso-Assertion".into(),
        trusted: vec![ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))],
        max_users: 100,
    });
    standin.add_group("stash-users");
    let bb_listener = bind(0).await?;
    let bitbucket = format!(
        "http://127.0.0.1:{}",
        bb_listener.local_addr().map(|a| a.port()).unwrap_or(0)
    );
    tokio::spawn(standin.serve(bb_listener));

    let text = format!(
        r#"[server]
listen = "127.0.0.1:{public_port}"
admin_listen = "127.0.0.1:0"
public_url = "{public_url}"
[upstream]
url = "{bitbucket}"
[identity]
assertion_secret = "{assertion_secret}"
[session]
keys = ["{session_key}"]
[[providers]]
id = "demo"
kind = "cognito"
display_name = "Demo sign-in service"
issuer = "{issuer}"
cognito_domain = "{issuer}"
client_id = "demo-client"
client_secret = "{client_secret}"
[bitbucket]
admin_user = "sso-provisioner"
admin_password = "{admin_password}"
[groups]
enabled = true
mode = "manual"
default_groups = ["stash-users"]
[groups.map]
"bitbucket-developers" = ["dev"]
"bitbucket-admins" = ["admins"]
[admin]
test_page_groups = ["bitbucket-admins"]
[log]
format = "pretty"
"#,
        session_key = crate::keys::generate(),
    );
    let config = crate::config::load_str(&text, Path::new("demo.toml"), &|_| None)?;
    let admin = bind(0).await?;
    println!(
        "\nbitbucket-sso-proxy demo is running.\n\n  Open {public_url}/ in a browser.\n\n  Users of the demo sign-in service:\n    alice / alice-password   groups dev         -> Bitbucket groups bitbucket-developers, stash-users\n    bob   / bob-password     groups dev, admins -> also bitbucket-admins: may open {public_url}/sso/test\n    carol / carol-password   no groups          -> stash-users only\n\n  Sign out: {public_url}/sso/logout    Test configuration (bob): {public_url}/sso/test\n  Demo sign-in service: {issuer}    Bitbucket stand-in (behind the proxy): {bitbucket}\n  Press Ctrl-C to stop.\n"
    );
    crate::server::serve(config, public, admin, None, shutdown).await;
    Ok(())
}
