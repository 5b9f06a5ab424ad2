//! `check-config` on broken files: each names the file, line, column, key and what is expected, and exits 2.

mod common;

use std::process::Command;

use common::*;

const KEY: &str = "q0Wbkz8pQfN3v0G9eUu7bBq8JrYI7bqZ2mXwVt5s1lY=";
const SECRET: &str = "an-assertion-secret-of-at-least-32-bytes!";

/// A valid SSO configuration; each case below breaks one thing in it.
fn valid() -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:8080"
public_url = "https://bitbucket.example.com"
admin_listen = "127.0.0.1:9090"
trusted_proxies = ["10.0.0.0/8"]

[upstream]
url = "http://127.0.0.1:7990"
idle_timeout = "10m"

[identity]
assertion_secret = "{SECRET}"

[session]
keys = ["{KEY}"]
store = "cookie"

[[providers]]
id = "cognito"
kind = "cognito"
issuer = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Example"
cognito_domain = "https://example.auth.us-east-1.amazoncognito.com"
client_id = "abc"
client_secret = "def"

[sso]
default_provider = "cognito"
"#
    )
}

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bbsso.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("BBSSO_NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

struct Case {
    name: &'static str,
    replace: (&'static str, &'static str),
    /// `FILE:line:` and the key path that must appear together on one line, and a phrase of the message.
    line: usize,
    key: &'static str,
    says: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "misspelt key",
        replace: ("listen = ", "listn = "),
        line: 2,
        key: "server.listn",
        says: "did you mean `listen`?",
    },
    Case {
        name: "misspelt section",
        replace: ("[upstream]", "[upstreams]"),
        line: 7,
        key: "upstreams",
        says: "did you mean `upstream`?",
    },
    Case {
        name: "unknown provider key",
        replace: ("client_id = ", "clientid = "),
        line: 23,
        key: "providers[0].clientid",
        says: "did you mean `client_id`?",
    },
    Case {
        name: "TOML syntax",
        replace: ("store = \"cookie\"", "store = cookie"),
        line: 16,
        key: "",
        says: "invalid TOML",
    },
    Case {
        name: "wrong type",
        replace: ("idle_timeout = \"10m\"", "idle_timeout = 600"),
        line: 9,
        key: "upstream.idle_timeout",
        says: "invalid type: integer",
    },
    Case {
        name: "missing public_url",
        replace: ("public_url = \"https://bitbucket.example.com\"\n", ""),
        line: 1,
        key: "server.public_url",
        says: "is required",
    },
    Case {
        name: "relative public_url",
        replace: ("\"https://bitbucket.example.com\"", "\"bitbucket.example.com\""),
        line: 3,
        key: "server.public_url",
        says: "expected an absolute http(s) URL",
    },
    Case {
        name: "bad duration",
        replace: ("\"10m\"", "\"10 minutes\""),
        line: 9,
        key: "upstream.idle_timeout",
        says: "expected a duration such as \"90s\"",
    },
    Case {
        name: "bad CIDR",
        replace: ("\"10.0.0.0/8\"", "\"10.0.0.0/33\""),
        line: 5,
        key: "server.trusted_proxies",
        says: "expected a CIDR",
    },
    Case {
        name: "CIDR with host bits",
        replace: ("\"10.0.0.0/8\"", "\"10.1.2.3/8\""),
        line: 5,
        key: "server.trusted_proxies",
        says: "did you mean \"10.0.0.0/8\"",
    },
    Case {
        name: "short session key",
        replace: (KEY, "c2hvcnQ="),
        line: 15,
        key: "session.keys[0]",
        says: "at least 32 bytes",
    },
    Case {
        name: "session key not base64",
        replace: (KEY, "not base64 at all!"),
        line: 15,
        key: "session.keys[0]",
        says: "not valid base64",
    },
    Case {
        name: "no session keys",
        replace: ("keys = [\"q0Wbkz8pQfN3v0G9eUu7bBq8JrYI7bqZ2mXwVt5s1lY=\"]", "keys = []"),
        line: 15,
        key: "session.keys",
        says: "at least one key is required",
    },
    Case {
        name: "redis without URL",
        replace: ("store = \"cookie\"", "store = \"redis\""),
        line: 16,
        key: "session.redis_url",
        says: "is required when session.store = \"redis\"",
    },
    Case {
        name: "redis URL that is not one",
        replace: (
            "store = \"cookie\"",
            "store = \"redis\"\nredis_url = \"redis://cache.internal:port\"",
        ),
        line: 17,
        key: "session.redis_url",
        says: "is not a usable Redis URL",
    },
    Case {
        name: "redis URL of another scheme",
        replace: (
            "store = \"cookie\"",
            "store = \"redis\"\nredis_url = \"http://cache.internal:6379\"",
        ),
        line: 17,
        key: "session.redis_url",
        says: "expected a URL starting with redis:// or rediss://",
    },
    Case {
        name: "redis pool out of range",
        replace: ("store = \"cookie\"", "store = \"cookie\"\nredis_pool_size = 0"),
        line: 17,
        key: "session.redis_pool_size",
        says: "expected a number from 1 to 64, got 0",
    },
    Case {
        name: "redis CA file missing",
        replace: (
            "store = \"cookie\"",
            "store = \"cookie\"\nredis_ca_file = \"/nonexistent/ca.pem\"",
        ),
        line: 17,
        key: "session.redis_ca_file",
        says: "cannot read /nonexistent/ca.pem",
    },
    Case {
        name: "admin API token too short",
        replace: ("[sso]\n", "[admin]\napi_token = \"short\"\n\n[sso]\n"),
        line: 27,
        key: "admin.api_token",
        says: "must be at least 16 characters",
    },
    Case {
        name: "unknown store",
        replace: ("store = \"cookie\"", "store = \"memcached\""),
        line: 16,
        key: "session.store",
        says: "expected one of \"cookie\", \"redis\"",
    },
    Case {
        name: "unset environment variable",
        replace: (
            "client_secret = \"def\"",
            "client_secret = \"${BBSSO_NOT_SET_ANYWHERE}\"",
        ),
        line: 24,
        key: "providers[0].client_secret",
        says: "`BBSSO_NOT_SET_ANYWHERE` is not set",
    },
    Case {
        name: "missing secret file",
        replace: (
            "client_secret = \"def\"",
            "client_secret_file = \"/nonexistent/secret\"",
        ),
        line: 24,
        key: "providers[0].client_secret_file",
        says: "cannot read secret file",
    },
    Case {
        name: "cognito without domain",
        replace: (
            "cognito_domain = \"https://example.auth.us-east-1.amazoncognito.com\"\n",
            "",
        ),
        line: 18,
        key: "providers[0].cognito_domain",
        says: "is required for kind = \"cognito\"",
    },
    Case {
        name: "alg none",
        replace: (
            "client_secret = \"def\"",
            "client_secret = \"def\"\nallowed_algorithms = [\"none\"]",
        ),
        line: 25,
        key: "providers[0].allowed_algorithms",
        says: "is never accepted",
    },
    Case {
        name: "unknown default provider",
        replace: ("default_provider = \"cognito\"", "default_provider = \"okta\""),
        line: 27,
        key: "sso.default_provider",
        says: "no [[providers]] has id \"okta\"",
    },
    Case {
        name: "short assertion secret",
        replace: (SECRET, "short"),
        line: 12,
        key: "identity.assertion_secret",
        says: "at least 32 bytes",
    },
    Case {
        name: "same port twice",
        replace: ("127.0.0.1:9090", "127.0.0.1:8080"),
        line: 4,
        key: "server.admin_listen",
        says: "must differ from server.listen",
    },
    Case {
        name: "user creation without REST",
        replace: ("[sso]", "[mapping]\nallow_user_creation = true\n\n[sso]"),
        line: 27,
        key: "mapping.allow_user_creation",
        says: "add a [bitbucket] section",
    },
    Case {
        name: "match by email without REST",
        replace: ("[sso]", "[mapping]\nmatch_by = \"email\"\n\n[sso]"),
        line: 27,
        key: "mapping.match_by",
        says: "needs Bitbucket REST access",
    },
    Case {
        name: "manual groups without map",
        replace: (
            "[sso]",
            "[bitbucket]\nadmin_user = \"svc\"\nadmin_password = \"pw\"\n\n[groups]\nenabled = true\nmode = \"manual\"\n\n[sso]",
        ),
        line: 32,
        key: "groups.map",
        says: "needs a [groups.map] table",
    },
    Case {
        name: "identity header is a standard header",
        replace: ("[identity]\n", "[identity]\nuser_header = \"Authorization\"\n"),
        line: 12,
        key: "identity.user_header",
        says: "is a standard header",
    },
    Case {
        name: "upstream with a path",
        replace: ("\"http://127.0.0.1:7990\"", "\"http://127.0.0.1:7990/bitbucket\""),
        line: 8,
        key: "upstream.url",
        says: "no path",
    },
];

#[test]
fn each_broken_config_names_its_line_key_and_expectation() {
    let (code, stdout, stderr) = check(&valid());
    assert_eq!(code, 0, "the base config is valid: {stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(CASES.len() >= 15);
    let mut failures = Vec::new();
    for case in CASES {
        let text = valid();
        assert!(
            text.contains(case.replace.0),
            "{}: pattern not in base config",
            case.name
        );
        let broken = text.replacen(case.replace.0, case.replace.1, 1);
        let (code, _, stderr) = check(&broken);
        let wanted_prefix = format!("FILE:{}:", case.line);
        let found = stderr.lines().any(|l| {
            let l = l.trim();
            l.starts_with(&wanted_prefix)
                && (case.key.is_empty() || l.contains(&format!(": {}: ", case.key)))
                && l.contains(case.says)
        });
        if code != 2 || !found {
            failures.push(format!(
                "{} (exit {code}): want line {} key {} saying {:?}; got:\n{stderr}",
                case.name, case.line, case.key, case.says
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_problems_are_reported_in_one_run() {
    let broken = valid()
        .replace("\"10m\"", "\"ten minutes\"")
        .replace("\"10.0.0.0/8\"", "\"ten/8\"")
        .replace("default_provider = \"cognito\"", "default_provider = \"okta\"");
    let (code, _, stderr) = check(&broken);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("has 3 problems"),
        "each mistake reported once: {stderr}"
    );
    for key in [
        "upstream.idle_timeout",
        "server.trusted_proxies",
        "sso.default_provider",
    ] {
        assert!(stderr.contains(key), "{key} missing in:\n{stderr}");
    }
}

#[test]
fn shipped_example_and_minimal_configs_are_valid() {
    for file in ["config/example.toml", "config/minimal.toml"] {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(repo_path(file))
            .env("BBSSO_ASSERTION_SECRET", SECRET)
            .env("BBSSO_SESSION_KEY", KEY)
            .env("COGNITO_CLIENT_SECRET", "x")
            .env("BITBUCKET_ADMIN_PASSWORD", "y")
            .env("BBSSO_BACKDOOR_KEY", "a-long-enough-backdoor-key")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn secrets_can_come_from_files_and_never_show_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let text = valid().replace(
        &format!("assertion_secret = \"{SECRET}\""),
        "assertion_secret_file = \"secret\"",
    );
    let path = dir.path().join("bbsso.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(SECRET) && !all.contains(KEY));
}

#[test]
fn command_line_contract() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.args(args).env_remove("BBSSO_CONFIG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let version = run(&["--version"], &[]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("bitbucket-sso-proxy "));

    let key = run(&["gen-key"], &[]);
    assert_eq!(key.status.code(), Some(0));
    let text = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(&text).unwrap().len(),
        32
    );
    assert_ne!(
        text,
        String::from_utf8_lossy(&run(&["gen-key"], &[]).stdout).trim(),
        "keys are random"
    );

    assert_eq!(run(&["no-such-command"], &[]).status.code(), Some(2));
    assert_eq!(run(&["run"], &[]).status.code(), Some(2), "no config given");
    let missing = run(&["check-config", "--config", "/nonexistent.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read configuration file /nonexistent.toml"));

    // BBSSO_CONFIG replaces --config, for check-config and for run (bare or with the command).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, valid()).unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(run(&["check-config"], &[("BBSSO_CONFIG", p)]).status.code(), Some(0));
    std::fs::write(&path, valid().replace("listen = ", "listn = ")).unwrap();
    let bare = run(&[], &[("BBSSO_CONFIG", p)]);
    assert_eq!(
        bare.status.code(),
        Some(2),
        "bare invocation runs, and refuses an invalid config"
    );
    assert!(String::from_utf8_lossy(&bare.stderr).contains("server.listn"));
    let flag = run(&["--config", p], &[]);
    assert_eq!(flag.status.code(), Some(2));
}
