//! Test harness: the real proxy binary on real sockets, and small upstreams written with hyper.
#![allow(dead_code)]

pub mod idp;
pub mod minting;
pub mod redis_server;

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_bitbucket-sso-proxy");

/// A body from bytes.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// A configuration for a proxy in pure-proxy mode (SSO off) in front of `upstream`; extra lines go into
/// `[server]` and `[upstream]`, and `rest` is appended as further sections.
pub fn config(upstream: SocketAddr, server_extra: &str, upstream_extra: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npublic_url = \"http://localhost:8080\"\n{server_extra}\n\
         [upstream]\nurl = \"http://{upstream}\"\n{upstream_extra}\n\
         [sso]\nenabled = false\n\n{rest}\n"
    )
}

/// A running proxy process; killed when dropped.
pub struct ProxyProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts the binary with this configuration text and waits until both listeners are up.
    pub fn start(config: &str) -> Self {
        Self::start_with_env(config, &[])
    }

    /// As [`ProxyProcess::start`], with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start proxy binary");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, SocketAddr)>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "listening"
                        && let (Some(l), Some(a)) = (v["listener"].as_str(), v["address"].as_str())
                        && let Ok(addr) = a.parse()
                    {
                        let _ = tx.send((l.to_owned(), addr));
                    }
                    logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("stderr: {line}"));
                }
            });
        }
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((l, a)) if l == "public" => addr = Some(a),
                Ok((_, a)) => admin = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "proxy did not start; output:\n{}",
                        logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
                    );
                }
            }
        }
        ProxyProcess {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            logs,
            dir,
        }
    }

    /// Everything the proxy has written so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Waits until a log line satisfies `pred` and returns it.
    pub fn wait_for_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..200 {
            for line in self.logs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && pred(&v)
                {
                    return v;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("expected log line not found; logs:\n{}", self.log_text());
    }

    /// Sends a signal to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Peak resident memory (VmHWM) of the proxy, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `handler` on a fresh loopback port (HTTP/1.1 with upgrades); returns the address.
pub async fn spawn_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that answers every request with a JSON list of the headers it received: `[[name, value], ...]`.
pub async fn spawn_echo_headers() -> SocketAddr {
    spawn_upstream(|req: Request<Incoming>| async move {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body =
            serde_json::json!({ "method": req.method().as_str(), "uri": req.uri().to_string(), "headers": headers });
        Response::builder()
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap()
    })
    .await
}

/// A raw HTTP/1.1 exchange: writes `request` as is and reads the whole response (the proxy closes after it).
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    RawResponse::parse(&buf)
}

/// A parsed raw response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    fn parse(buf: &[u8]) -> Self {
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("end of head");
        let head = String::from_utf8_lossy(&buf[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = buf[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        RawResponse { status, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&data[..eol])
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .trim();
        let size = usize::from_str_radix(size_text, 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// The headers an echo upstream reports, from its JSON answer.
pub fn echoed_headers(v: &serde_json::Value) -> Vec<(String, String)> {
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_str().unwrap().to_owned()))
        .collect()
}

/// A hyper HTTP/1.1 client connection to `addr`.
pub async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// Sends a simple GET with the given headers and returns status, headers and body.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, hyper::HeaderMap, Bytes) {
    let mut sender = connect(addr).await;
    let mut req = Request::get(path).header("host", "localhost:8080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Path of a file in the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A free port below Linux's ephemeral range (32768-60999), where no other test's `bind(0)` lands: for servers
/// that a test stops and starts again (while one is down, connection attempts to an ephemeral-range port can
/// connect to themselves and hold it), and for addresses that must stay closed.
pub fn port_outside_ephemeral_range() -> u16 {
    for _ in 0..200 {
        let port = 20_000 + (redis_server::rand_u64() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    idp::free_port()
}

/// An address where nothing listens (and no other test will start listening).
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port_outside_ephemeral_range()))
}
