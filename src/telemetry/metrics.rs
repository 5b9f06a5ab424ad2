//! Prometheus metrics kept in fixed arrays of atomics: nothing allocates or locks on the request path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::route::RouteClass;

const ROUTES: usize = RouteClass::ALL.len();
const STATUSES: usize = 600;
/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Labelled counters for rare events (sign-ins, provisioning, revalidations...), kept apart from the lock-free
/// request counters. Families and their help text.
const FAMILIES: [(&str, &str); 8] = [
    ("bbsso_logins_total", "Sign-in attempts by outcome and reason code."),
    (
        "bbsso_provisioning_actions_total",
        "Changes made in Bitbucket by provisioning, by action.",
    ),
    (
        "bbsso_sessions_ended_total",
        "Sessions ended by revalidation, by reason.",
    ),
    (
        "bbsso_revalidations_total",
        "Refresh-token revalidations at the provider, by outcome.",
    ),
    (
        "bbsso_jwks_fetches_total",
        "Fetches of a provider's signing keys, by provider.",
    ),
    (
        "bbsso_rate_limited_total",
        "Requests refused with 429 by the per-address rate limit, by route.",
    ),
    ("bbsso_backdoor_total", "Emergency-login attempts, by outcome."),
    (
        "bbsso_config_reloads_total",
        "Configuration reloads (SIGHUP), by outcome.",
    ),
];

static EVENTS: Mutex<BTreeMap<(&'static str, String), u64>> = Mutex::new(BTreeMap::new());

/// Counts one event of `family` with `labels` (label values are stable codes, never user input).
pub fn count(family: &'static str, labels: &[(&str, &str)]) {
    let rendered = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace(['"', '\\', '\n'], "_")))
        .collect::<Vec<_>>()
        .join(",");
    let mut events = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    *events.entry((family, rendered)).or_insert(0) += 1;
}

fn render_events(out: &mut String) {
    let events = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    for (family, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {family} {help}");
        let _ = writeln!(out, "# TYPE {family} counter");
        for ((f, labels), v) in events.iter() {
            if *f == family {
                let _ = writeln!(out, "{family}{{{labels}}} {v}");
            }
        }
    }
}

/// Why forwarding to Bitbucket failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectTimeout,
    ConnectRefused,
    ResponseTimeout,
    Other,
}

impl UpstreamError {
    const ALL: [UpstreamError; 4] = [
        UpstreamError::ConnectTimeout,
        UpstreamError::ConnectRefused,
        UpstreamError::ResponseTimeout,
        UpstreamError::Other,
    ];

    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ConnectRefused => "connect_refused",
            UpstreamError::ResponseTimeout => "response_timeout",
            UpstreamError::Other => "other",
        }
    }
}

/// All counters of one process.
pub struct Metrics {
    requests: Box<[[AtomicU64; STATUSES]; ROUTES]>,
    latency_buckets: [[AtomicU64; BUCKETS.len()]; ROUTES],
    latency_count: [AtomicU64; ROUTES],
    latency_sum_micros: [AtomicU64; ROUTES],
    in_flight: AtomicI64,
    upstream_errors: [AtomicU64; UpstreamError::ALL.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections: AtomicU64,
    upstream_buckets: [AtomicU64; BUCKETS.len()],
    upstream_count: AtomicU64,
    upstream_sum_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Box::new(std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))),
            latency_buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_count: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_micros: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: AtomicI64::new(0),
            upstream_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            upstream_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_count: AtomicU64::new(0),
            upstream_sum_micros: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a request as in flight; [`Metrics::finish_request`] ends it.
    pub fn start_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a finished request (its response body is done) and takes it out of the in-flight gauge.
    pub fn finish_request(&self, route: RouteClass, status: u16, elapsed: Duration, bytes_in: u64, bytes_out: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let r = route.index();
        if let Some(c) = self.requests[r].get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
            self.latency_buckets[r][b].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count[r].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros[r].fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// Records how long Bitbucket took to send response headers.
    pub fn upstream_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
            self.upstream_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.upstream_count.fetch_add(1, Ordering::Relaxed);
        self.upstream_sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records a failed attempt to reach Bitbucket.
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted client connection.
    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP bbsso_requests_total Requests answered, by route class and status."
        );
        let _ = writeln!(out, "# TYPE bbsso_requests_total counter");
        for route in RouteClass::ALL {
            for (status, c) in self.requests[route.index()].iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "bbsso_requests_total{{route=\"{}\",status=\"{status}\"}} {v}",
                        route.as_str()
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP bbsso_request_duration_seconds Time from request to the end of the response body."
        );
        let _ = writeln!(out, "# TYPE bbsso_request_duration_seconds histogram");
        for route in RouteClass::ALL {
            let r = route.index();
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += self.latency_buckets[r][i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "bbsso_request_duration_seconds_bucket{{route=\"{}\",le=\"{le}\"}} {cumulative}",
                    route.as_str()
                );
            }
            let count = self.latency_count[r].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "bbsso_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {count}",
                route.as_str()
            );
            let sum = self.latency_sum_micros[r].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "bbsso_request_duration_seconds_sum{{route=\"{}\"}} {sum}",
                route.as_str()
            );
            let _ = writeln!(
                out,
                "bbsso_request_duration_seconds_count{{route=\"{}\"}} {count}",
                route.as_str()
            );
        }
        let _ = writeln!(out, "# HELP bbsso_requests_in_flight Requests being answered now.");
        let _ = writeln!(out, "# TYPE bbsso_requests_in_flight gauge");
        let _ = writeln!(
            out,
            "bbsso_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bbsso_upstream_errors_total Failures to reach Bitbucket, by kind."
        );
        let _ = writeln!(out, "# TYPE bbsso_upstream_errors_total counter");
        for kind in UpstreamError::ALL {
            let _ = writeln!(
                out,
                "bbsso_upstream_errors_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.upstream_errors[kind as usize].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bbsso_bytes_total Body bytes through the proxy, by direction."
        );
        let _ = writeln!(out, "# TYPE bbsso_bytes_total counter");
        let _ = writeln!(
            out,
            "bbsso_bytes_total{{direction=\"in\"}} {}",
            self.bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "bbsso_bytes_total{{direction=\"out\"}} {}",
            self.bytes_out.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bbsso_connections_total Client connections accepted on the public listener."
        );
        let _ = writeln!(out, "# TYPE bbsso_connections_total counter");
        let _ = writeln!(
            out,
            "bbsso_connections_total {}",
            self.connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bbsso_upstream_response_seconds Time until Bitbucket's response headers."
        );
        let _ = writeln!(out, "# TYPE bbsso_upstream_response_seconds histogram");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.upstream_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "bbsso_upstream_response_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.upstream_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "bbsso_upstream_response_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "bbsso_upstream_response_seconds_sum {}",
            self.upstream_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "bbsso_upstream_response_seconds_count {count}");
        render_events(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_histogram_and_gauges() {
        let m = Metrics::default();
        m.start_request();
        m.start_request();
        assert!(m.render().contains("bbsso_requests_in_flight 2"));
        m.finish_request(RouteClass::Api, 200, Duration::from_millis(3), 10, 20);
        m.finish_request(RouteClass::Api, 502, Duration::from_secs(100), 0, 5);
        m.upstream_error(UpstreamError::ConnectRefused);
        let text = m.render();
        assert!(text.contains("bbsso_requests_in_flight 0"));
        assert!(text.contains("bbsso_requests_total{route=\"api\",status=\"200\"} 1"));
        assert!(text.contains("bbsso_requests_total{route=\"api\",status=\"502\"} 1"));
        assert!(text.contains("bbsso_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 1"));
        assert!(text.contains("bbsso_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 2"));
        assert!(text.contains("bbsso_upstream_errors_total{kind=\"connect_refused\"} 1"));
        assert!(text.contains("bbsso_bytes_total{direction=\"out\"} 25"));
    }
}
