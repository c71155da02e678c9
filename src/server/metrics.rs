//! Prometheus metrics for the gRPC edge: per-RPC request counters by gRPC
//! status code and per-RPC latency histograms, plus a few gauges the server
//! sets, served as text exposition format 0.0.4 by a tiny HTTP/1.1 endpoint
//! (`serve --metrics-listen ADDR`, path `/metrics`).
//!
//! Only RPC names (from a fixed table, never from the request), gRPC status
//! codes, counts and timings are recorded: no request or response bytes, no
//! key material, no PINs, no caller identities.
//!
//! The hot path ([`Metrics::observe`], via [`MetricsLayer`]) is lock-free:
//! a handful of relaxed atomic increments into fixed tables.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Every RPC with its own series: (full request path, `rpc` label). Anything
/// else (reflection, `Health/Watch`, unknown paths) is counted as `other`.
const RPCS: &[(&str, &str)] = &[
    ("/poshsm.v1.Crypto/SignIn", "SignIn"),
    ("/poshsm.v1.Crypto/TranslatePin", "TranslatePin"),
    ("/poshsm.v1.Crypto/GenerateMac", "GenerateMac"),
    ("/poshsm.v1.Crypto/VerifyMac", "VerifyMac"),
    ("/poshsm.v1.Crypto/TranslatePinBatch", "TranslatePinBatch"),
    ("/poshsm.v1.Crypto/VerifyMacBatch", "VerifyMacBatch"),
    ("/poshsm.v1.KeyAdmin/GenerateKey", "GenerateKey"),
    (
        "/poshsm.v1.KeyAdmin/ImportKeyComponents",
        "ImportKeyComponents",
    ),
    ("/poshsm.v1.KeyAdmin/ImportKey", "ImportKey"),
    ("/poshsm.v1.KeyAdmin/ExportKey", "ExportKey"),
    ("/poshsm.v1.KeyAdmin/CreateTerminal", "CreateTerminal"),
    ("/poshsm.v1.KeyAdmin/GetKey", "GetKey"),
    ("/poshsm.v1.KeyAdmin/ListKeys", "ListKeys"),
    ("/poshsm.v1.KeyAdmin/RetireKey", "RetireKey"),
    ("/poshsm.v1.KeyAdmin/RotateKey", "RotateKey"),
    ("/poshsm.v1.KeyAdmin/GetTerminal", "GetTerminal"),
    ("/poshsm.v1.KeyAdmin/ListTerminals", "ListTerminals"),
    ("/poshsm.v1.KeyAdmin/GetAuditLog", "GetAuditLog"),
    ("/poshsm.v1.KeyAdmin/VerifyAuditLog", "VerifyAuditLog"),
    ("/poshsm.v1.KeyAdmin/GetStatus", "GetStatus"),
    ("/grpc.health.v1.Health/Check", "Check"),
];
/// Index of the `other` row.
const OTHER: usize = RPCS.len();
const N_RPCS: usize = RPCS.len() + 1;

/// gRPC status code names, indexed by code (gRPC spec `statuscodes.md`).
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const N_CODES: usize = CODES.len();
const CODE_CANCELLED: i32 = 1;
const CODE_UNKNOWN: i32 = 2;

/// Finite histogram upper bounds: the `le` label and the bound in nanoseconds.
const BUCKETS: [(&str, u64); 14] = [
    ("0.00005", 50_000),
    ("0.0001", 100_000),
    ("0.00025", 250_000),
    ("0.0005", 500_000),
    ("0.001", 1_000_000),
    ("0.0025", 2_500_000),
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.025", 25_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.25", 250_000_000),
    ("0.5", 500_000_000),
    ("1", 1_000_000_000),
];
/// Finite buckets plus `+Inf`.
const N_BUCKETS: usize = BUCKETS.len() + 1;

const REQUESTS: &str = "poshsm_requests_total";
const DURATION: &str = "poshsm_request_duration_seconds";
const IO_OPEN: &str = "poshsm_io_thread_connections";
const IO_ACCEPTED: &str = "poshsm_io_thread_accepted_total";

/// One latency histogram. Buckets are stored non-cumulatively (one increment
/// per observation) and summed at render time; `_count` is derived from the
/// buckets so it always equals the `+Inf` bucket.
struct Histogram {
    buckets: [AtomicU64; N_BUCKETS],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        // u64 nanoseconds: ~584 years of cumulative latency before wrapping.
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS
            .iter()
            .position(|&(_, bound)| nanos <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }
}

struct Gauge {
    name: &'static str,
    help: &'static str,
    value: f64,
}

/// Request counters and latency histograms for every known RPC, plus gauges.
pub struct Metrics {
    /// `[rpc][code]`.
    requests: [[AtomicU64; N_CODES]; N_RPCS],
    durations: [Histogram; N_RPCS],
    gauges: Mutex<Vec<Gauge>>,
    /// The gRPC port's I/O threads, when it runs on them.
    io: std::sync::OnceLock<Arc<super::io::IoStats>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Empty tables.
    pub fn new() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            durations: std::array::from_fn(|_| Histogram::new()),
            gauges: Mutex::new(Vec::new()),
            io: std::sync::OnceLock::new(),
        }
    }

    /// Row for a request path such as `/poshsm.v1.Crypto/TranslatePin`.
    fn rpc_index(path: &str) -> usize {
        RPCS.iter().position(|&(p, _)| p == path).unwrap_or(OTHER)
    }

    fn rpc_name(i: usize) -> &'static str {
        RPCS.get(i).map_or("other", |&(_, name)| name)
    }

    /// Records one finished call: its request path, gRPC status code (an
    /// out-of-range code counts as `UNKNOWN`) and latency.
    pub fn observe(&self, path: &str, code: i32, elapsed: Duration) {
        self.observe_index(Self::rpc_index(path), code, elapsed);
    }

    fn observe_index(&self, rpc: usize, code: i32, elapsed: Duration) {
        let code = usize::try_from(code)
            .ok()
            .filter(|&c| c < N_CODES)
            .unwrap_or(CODE_UNKNOWN as usize);
        self.requests[rpc][code].fetch_add(1, Relaxed);
        self.durations[rpc].observe(elapsed);
    }

    /// Sets (or creates) the gauge `name`. Not for the hot path. `name` must
    /// be a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    pub fn set_gauge(&self, name: &'static str, help: &'static str, value: f64) {
        debug_assert!(valid_metric_name(name), "invalid metric name {name:?}");
        let mut gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        match gauges.iter_mut().find(|g| g.name == name) {
            Some(g) => {
                g.help = help;
                g.value = value;
            }
            None => gauges.push(Gauge { name, help, value }),
        }
    }

    /// Reports the I/O threads' connection counts at every scrape (first call wins).
    pub fn attach_io(&self, stats: Arc<super::io::IoStats>) {
        let _ = self.io.set(stats);
    }

    /// The Prometheus text exposition (format 0.0.4). Counters are emitted
    /// only for non-zero series, histograms only for RPCs that were called;
    /// the HELP/TYPE lines are always present.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);

        let _ = writeln!(
            out,
            "# HELP {REQUESTS} gRPC requests handled, by RPC and status code."
        );
        let _ = writeln!(out, "# TYPE {REQUESTS} counter");
        for (i, row) in self.requests.iter().enumerate() {
            let rpc = escape_label(Self::rpc_name(i));
            for (code, n) in row.iter().enumerate() {
                let n = n.load(Relaxed);
                if n != 0 {
                    let _ = writeln!(
                        out,
                        "{REQUESTS}{{rpc=\"{rpc}\",code=\"{}\"}} {n}",
                        CODES[code]
                    );
                }
            }
        }

        let _ = writeln!(
            out,
            "# HELP {DURATION} gRPC request latency until response headers, by RPC."
        );
        let _ = writeln!(out, "# TYPE {DURATION} histogram");
        for (i, h) in self.durations.iter().enumerate() {
            let counts: [u64; N_BUCKETS] = std::array::from_fn(|b| h.buckets[b].load(Relaxed));
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let rpc = escape_label(Self::rpc_name(i));
            let mut cumulative = 0u64;
            for (b, n) in counts.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS.get(b).map_or("+Inf", |&(le, _)| le);
                let _ = writeln!(
                    out,
                    "{DURATION}_bucket{{rpc=\"{rpc}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = h.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{DURATION}_sum{{rpc=\"{rpc}\"}} {sum}");
            let _ = writeln!(out, "{DURATION}_count{{rpc=\"{rpc}\"}} {total}");
        }

        let gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        for g in gauges.iter() {
            let _ = writeln!(out, "# HELP {} {}", g.name, escape_help(g.help));
            let _ = writeln!(out, "# TYPE {} gauge", g.name);
            let _ = writeln!(out, "{} {}", g.name, format_value(g.value));
        }
        if let Some(io) = self.io.get() {
            let open: Vec<u64> = io.open().iter().map(|&n| n as u64).collect();
            per_thread(
                &mut out,
                IO_OPEN,
                "gauge",
                "Open gRPC connections on each I/O thread.",
                &open,
            );
            per_thread(
                &mut out,
                IO_ACCEPTED,
                "counter",
                "gRPC connections handed to each I/O thread.",
                &io.accepted(),
            );
        }
        out
    }
}

/// One series per I/O thread, labelled `thread="N"`.
fn per_thread(out: &mut String, name: &str, kind: &str, help: &str, values: &[u64]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (t, n) in values.iter().enumerate() {
        let _ = writeln!(out, "{name}{{thread=\"{t}\"}} {n}");
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Label value escaping: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

/// HELP text escaping: `\` → `\\`, newline → `\n`.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Tower layer recording every gRPC call into [`Metrics`]:
/// `Server::builder().layer(MetricsLayer(metrics))`.
#[derive(Clone, Debug)]
pub struct MetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service built by [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Records a call once: with the status code on completion, or as
/// `CANCELLED` if the response future is dropped first (client went away).
struct CallGuard {
    metrics: Arc<Metrics>,
    rpc: usize,
    start: Instant,
    done: bool,
}

impl CallGuard {
    fn finish(&mut self, code: i32) {
        self.done = true;
        self.metrics
            .observe_index(self.rpc, code, self.start.elapsed());
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done {
            self.finish(CODE_CANCELLED);
        }
    }
}

/// gRPC status of a response: the `grpc-status` header (trailers-only
/// responses, which is how tonic returns errors), else derived from the HTTP
/// status per the gRPC HTTP mapping, else OK. Errors in the trailers of a
/// streamed body are not seen.
fn response_code<B>(resp: &http::Response<B>) -> i32 {
    if let Some(v) = resp.headers().get("grpc-status") {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CODE_UNKNOWN);
    }
    match resp.status().as_u16() {
        200 => 0,
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => CODE_UNKNOWN,
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut guard = CallGuard {
            metrics: self.metrics.clone(),
            rpc: Metrics::rpc_index(req.uri().path()),
            start: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(resp) => response_code(resp),
                Err(_) => CODE_UNKNOWN,
            };
            guard.finish(code);
            result
        })
    }
}

/// Limits of the metrics endpoint.
const MAX_HEAD: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 64;
const LINGER: Duration = Duration::from_secs(1);
const MAX_LINGER_BYTES: usize = 64 * 1024;

/// Serves `GET /metrics` (plain HTTP/1.1, one request per connection) on
/// `listener` until `shutdown` resolves. Anything else gets 404 (or 400 if
/// unparseable). The request head is capped at 8 KiB and must arrive within
/// 5 s; at most 64 connections are handled at once.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = handle_connection(stream, &metrics).await;
        });
    }
}

async fn handle_connection(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        // Timed out, I/O error, or closed before a full head: just close.
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return Ok(()),
    };
    let (status, content_type, body) = match parse_request_line(&head) {
        Some(("GET" | "HEAD", "/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        Some(_) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let is_head = matches!(parse_request_line(&head), Some(("HEAD", _)));
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        response.push_str(&body);
    }
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))?;
    // Lingering close: drain (briefly, boundedly) whatever the client sent
    // beyond the head, so closing with unread data does not RST the response.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut left = MAX_LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Reads until the end of the request head (`\r\n\r\n`, or `\n\n`). `None` if
/// the peer closes first or the head exceeds [`MAX_HEAD`] (then the request
/// line, if complete, is still answered).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let tail = &buf[scan_from..];
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD {
            // Oversized head: answer on the request line alone if we have
            // one, otherwise give up.
            return Ok(buf.contains(&b'\n').then_some(buf));
        }
    }
}

/// `(method, path)` from the request line; the query string is dropped.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !version.starts_with("HTTP/1.")
        || !target.starts_with('/')
    {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Some((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rpc_table_matches_paths() {
        assert_eq!(
            Metrics::rpc_name(Metrics::rpc_index("/poshsm.v1.Crypto/TranslatePin")),
            "TranslatePin"
        );
        assert_eq!(
            Metrics::rpc_name(Metrics::rpc_index("/poshsm.v1.KeyAdmin/GetStatus")),
            "GetStatus"
        );
        assert_eq!(
            Metrics::rpc_name(Metrics::rpc_index("/grpc.health.v1.Health/Check")),
            "Check"
        );
        // Method names alone, other services and junk all land in `other`.
        for p in [
            "/poshsm.v1.KeyAdmin/TranslatePin",
            "TranslatePin",
            "/grpc.health.v1.Health/Watch",
            "/x\"y\n",
            "",
        ] {
            assert_eq!(Metrics::rpc_index(p), OTHER, "{p:?}");
        }
    }

    #[test]
    fn empty_render_has_help_and_type_only() {
        let out = Metrics::new().render();
        assert_eq!(
            out,
            "# HELP poshsm_requests_total gRPC requests handled, by RPC and status code.\n\
             # TYPE poshsm_requests_total counter\n\
             # HELP poshsm_request_duration_seconds gRPC request latency until response headers, by RPC.\n\
             # TYPE poshsm_request_duration_seconds histogram\n"
        );
    }

    #[test]
    fn counters_by_rpc_and_code() {
        let m = Metrics::new();
        m.observe("/poshsm.v1.Crypto/TranslatePin", 0, ms(1));
        m.observe("/poshsm.v1.Crypto/TranslatePin", 0, ms(1));
        m.observe("/poshsm.v1.Crypto/TranslatePin", 3, ms(1));
        m.observe("/poshsm.v1.KeyAdmin/GenerateKey", 7, ms(1));
        m.observe("/nope/Nope", 12, ms(1));
        m.observe("/poshsm.v1.Crypto/SignIn", 99, ms(1)); // out of range
        m.observe("/poshsm.v1.Crypto/SignIn", -1, ms(1)); // out of range
        let out = m.render();
        for line in [
            "poshsm_requests_total{rpc=\"TranslatePin\",code=\"OK\"} 2\n",
            "poshsm_requests_total{rpc=\"TranslatePin\",code=\"INVALID_ARGUMENT\"} 1\n",
            "poshsm_requests_total{rpc=\"GenerateKey\",code=\"PERMISSION_DENIED\"} 1\n",
            "poshsm_requests_total{rpc=\"other\",code=\"UNIMPLEMENTED\"} 1\n",
            "poshsm_requests_total{rpc=\"SignIn\",code=\"UNKNOWN\"} 2\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        // Zero series are left out.
        assert!(!out.contains("rpc=\"VerifyMac\""));
        assert_eq!(out.matches("poshsm_requests_total{").count(), 5);
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        let p = "/poshsm.v1.Crypto/GenerateMac";
        m.observe(p, 0, Duration::from_micros(10)); // le 0.00005
        m.observe(p, 0, Duration::from_micros(50)); // le 0.00005 (inclusive)
        m.observe(p, 0, ms(3)); // le 0.005
        m.observe(p, 0, ms(1000)); // le 1
        m.observe(p, 0, ms(2500)); // +Inf only
        let out = m.render();
        let series: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("poshsm_request_duration_seconds"))
            .collect();
        let b = |le: &str, n: u64| {
            format!("poshsm_request_duration_seconds_bucket{{rpc=\"GenerateMac\",le=\"{le}\"}} {n}")
        };
        let expected: Vec<String> = vec![
            b("0.00005", 2),
            b("0.0001", 2),
            b("0.00025", 2),
            b("0.0005", 2),
            b("0.001", 2),
            b("0.0025", 2),
            b("0.005", 3),
            b("0.01", 3),
            b("0.025", 3),
            b("0.05", 3),
            b("0.1", 3),
            b("0.25", 3),
            b("0.5", 3),
            b("1", 4),
            b("+Inf", 5),
            "poshsm_request_duration_seconds_sum{rpc=\"GenerateMac\"} 3.50306".into(),
            "poshsm_request_duration_seconds_count{rpc=\"GenerateMac\"} 5".into(),
        ];
        assert_eq!(series, expected);
        // RPCs never called have no histogram.
        assert!(!out.contains("_bucket{rpc=\"TranslatePin\""));
    }

    #[test]
    fn gauges_render_and_update() {
        let m = Metrics::new();
        m.set_gauge("poshsm_keys_loaded", "Keys in the cache.", 3.0);
        m.set_gauge("poshsm_alarm", "1 if in ALARM.\nback\\slash", 0.0);
        m.set_gauge("poshsm_keys_loaded", "Keys in the cache.", 4.5);
        m.set_gauge("poshsm_nan", "n", f64::NAN);
        m.set_gauge("poshsm_inf", "i", f64::NEG_INFINITY);
        let out = m.render();
        assert!(out.ends_with(
            "# HELP poshsm_keys_loaded Keys in the cache.\n\
             # TYPE poshsm_keys_loaded gauge\n\
             poshsm_keys_loaded 4.5\n\
             # HELP poshsm_alarm 1 if in ALARM.\\nback\\\\slash\n\
             # TYPE poshsm_alarm gauge\n\
             poshsm_alarm 0\n\
             # HELP poshsm_nan n\n\
             # TYPE poshsm_nan gauge\n\
             poshsm_nan NaN\n\
             # HELP poshsm_inf i\n\
             # TYPE poshsm_inf gauge\n\
             poshsm_inf -Inf\n"
        ));
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("TranslatePin"), "TranslatePin");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        // Every fixed label value is already safe.
        for name in RPCS.iter().map(|&(_, n)| n).chain(CODES).chain(["other"]) {
            assert!(matches!(escape_label(name), std::borrow::Cow::Borrowed(_)));
        }
        assert!(valid_metric_name("poshsm_x:y_1"));
        assert!(!valid_metric_name("1abc"));
        assert!(!valid_metric_name("a-b"));
        assert!(!valid_metric_name(""));
    }

    #[test]
    fn request_line_parsing() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.0\n\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"POST /other HTTP/1.1\r\n\r\n"),
            Some(("POST", "/other"))
        );
        for bad in [
            &b"\x16\x03\x01\x02\x00\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2 x\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"no newline",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn response_code_from_headers() {
        let resp = |status: u16, grpc: Option<&str>| {
            let mut b = http::Response::builder().status(status);
            if let Some(g) = grpc {
                b = b.header("grpc-status", g);
            }
            b.body(()).unwrap()
        };
        assert_eq!(response_code(&resp(200, None)), 0);
        assert_eq!(response_code(&resp(200, Some("5"))), 5);
        assert_eq!(response_code(&resp(200, Some("junk"))), CODE_UNKNOWN);
        assert_eq!(response_code(&resp(404, None)), 12);
        assert_eq!(response_code(&resp(503, None)), 14);
    }

    #[test]
    fn concurrent_observes_are_all_counted() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.observe("/poshsm.v1.Crypto/VerifyMac", 0, Duration::from_micros(200));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let out = m.render();
        assert!(out.contains("poshsm_requests_total{rpc=\"VerifyMac\",code=\"OK\"} 8000\n"));
        assert!(out.contains("poshsm_request_duration_seconds_count{rpc=\"VerifyMac\"} 8000\n"));
        assert!(out.contains("poshsm_request_duration_seconds_sum{rpc=\"VerifyMac\"} 1.6\n"));
    }
}
