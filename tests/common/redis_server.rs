//! Redis for the tests: Debian's `redis-server` (installed by scripts/setup), on loopback.
//!
//! [`Redis::shared`] uses the server scripts/test (or .ci/run) started, named by `BBSSO_TEST_REDIS_URL`, under
//! a key prefix of its own; without it, a private server. [`Redis::private`] always starts its own, which a test
//! may stop and start again (its data survives: append-only file in a temporary folder).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    /// `redis://127.0.0.1:PORT` (with the password when there is one).
    pub url: String,
    /// A key prefix no other test uses.
    pub prefix: String,
    port: u16,
    args: Vec<String>,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Redis {
    /// The shared test server, or a private one.
    pub fn shared() -> Self {
        match std::env::var("BBSSO_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Redis {
                url,
                prefix: unique_prefix(),
                port: 0,
                args: Vec::new(),
                dir: None,
                child: None,
            },
            _ => Self::private(&[]),
        }
    }

    /// A server of this test's own, with extra `redis-server` arguments (`--requirepass`, TLS settings).
    pub fn private(args: &[&str]) -> Self {
        let port = super::port_outside_ephemeral_range();
        let mut redis = Redis {
            url: format!("redis://127.0.0.1:{port}"),
            prefix: unique_prefix(),
            port,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            dir: Some(tempfile::tempdir().unwrap()),
            child: None,
        };
        redis.start();
        redis
    }

    /// The folder the server keeps its files in.
    pub fn dir(&self) -> PathBuf {
        self.dir.as_ref().expect("a private server").path().to_owned()
    }

    /// Starts (again) on the same port with the same data.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let dir = self.dir();
        let binary = which_redis();
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited ({status}) on port {}", self.port);
            }
            if pong(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Stops the server (SIGTERM: it writes its data and exits) and waits until the port is closed.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("a running private server");
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The `[session]` lines that point the proxy at this server.
    pub fn session_settings(&self) -> String {
        format!(
            "store = \"redis\"\nredis_url = \"{}\"\nredis_key_prefix = \"{}\"\nredis_timeout = \"1s\"",
            self.url, self.prefix
        )
    }

    /// A plain Redis client for looking at what the proxy stored.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a Redis answers PING on the port (TLS-only servers still answer on their plain port).
fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

fn unique_prefix() -> String {
    format!("bbsso-test-{:016x}:", rand_u64())
}

pub(super) fn rand_u64() -> u64 {
    let mut buf = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap();
    u64::from_le_bytes(buf)
}

fn which_redis() -> &'static str {
    for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("redis-server is missing: run `bash scripts/setup` (it installs Debian's redis-server)");
}
