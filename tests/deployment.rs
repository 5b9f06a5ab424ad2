//! Deployment files: every file they reference exists, the binary starts with the image's exact command line,
//! and the healthcheck command reports health. (No Docker engine runs here; the image is not built.)

mod common;

use std::process::Command;

use common::*;

/// The JSON-array form of a Dockerfile instruction, e.g. `CMD ["run"]`.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction}"));
    let json = &line[line.find('[').unwrap()..];
    serde_json::from_str(json).unwrap()
}

#[test]
fn files_referenced_by_the_dockerfile_compose_and_kubernetes_exist() {
    let dockerfile = std::fs::read_to_string(repo_path("docker/Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(repo_path(src).exists(), "Dockerfile copies {src}, which does not exist");
        }
    }
    assert!(
        dockerfile.contains("USER nonroot")
            && dockerfile.contains("EXPOSE 8080 9090")
            && dockerfile.contains("HEALTHCHECK")
    );
    let compose = std::fs::read_to_string(repo_path("docker/compose.yaml")).unwrap();
    for referenced in ["docker/Dockerfile", "docker/secrets.env", "docker/bbsso.toml"] {
        assert!(repo_path(referenced).exists(), "{referenced}");
    }
    assert!(
        compose.contains("dockerfile: docker/Dockerfile")
            && compose.contains("./bbsso.toml:/etc/bbsso/bbsso.toml:ro")
            && compose.contains("- secrets.env")
    );
    assert!(
        compose.contains("internal: true"),
        "Bitbucket reachable only through the proxy"
    );
    for k8s in ["deploy/kubernetes/sidecar.yaml", "deploy/kubernetes/proxy-only.yaml"] {
        let text = std::fs::read_to_string(repo_path(k8s)).unwrap();
        assert!(
            text.contains("path: /healthz")
                && (text.contains("path: /readyz") || text.contains("path: \"/readyz?without=session_store\"")),
            "{k8s} probes the admin listener"
        );
    }
    // The compose configuration is valid with the shipped secrets file.
    let env: Vec<(String, String)> = std::fs::read_to_string(repo_path("docker/secrets.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(repo_path("docker/bbsso.toml"))
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_binary_starts_with_the_images_command_line_and_the_healthcheck_works() {
    let dockerfile = std::fs::read_to_string(repo_path("docker/Dockerfile")).unwrap();
    let cmd = exec_form(&dockerfile, "CMD");
    let healthcheck = {
        let line = dockerfile.lines().find(|l| l.starts_with("HEALTHCHECK")).unwrap();
        let json = &line[line.find('[').unwrap()..];
        serde_json::from_str::<Vec<String>>(json).unwrap()
    };
    assert_eq!(
        exec_form(&dockerfile, "ENTRYPOINT"),
        vec!["/usr/local/bin/bitbucket-sso-proxy"]
    );

    let upstream = spawn_echo_headers().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bbsso.toml");
    let admin_port = idp_port();
    std::fs::write(&config, config_text(upstream, admin_port)).unwrap();
    // The image's command line, with BBSSO_CONFIG (the image's /etc/bbsso/bbsso.toml) pointing at the test copy.
    let mut child = Command::new(BIN)
        .args(&cmd)
        .env("BBSSO_CONFIG", &config)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(&healthcheck[1..]).args(extra).env("BBSSO_CONFIG", &config);
        c.status().unwrap().code()
    };
    let mut healthy = false;
    for _ in 0..100 {
        if health(&[]) == Some(0) {
            healthy = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(healthy, "the healthcheck reports a running proxy healthy");
    assert_eq!(health(&["--ready"]), Some(0));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(health(&[]), Some(1), "and a stopped one unhealthy");
}

fn idp_port() -> u16 {
    common::idp::free_port()
}

fn config_text(upstream: std::net::SocketAddr, admin_port: u16) -> String {
    config(upstream, "", "", "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"0.0.0.0:{admin_port}\""),
    )
}
