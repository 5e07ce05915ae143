//! The service's Prometheus families (HTTP and business), registered beside the
//! engine's, and the `/metrics` text they are served as.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tally_actors::Engine;

/// Request latencies: a millisecond to ten seconds.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Body sizes: empty to the 64 KiB request limit and beyond for long pages.
const SIZE_BUCKETS_BYTES: &[f64] = &[
    0.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
];

#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub request_size: HistogramVec,
    pub response_size: HistogramVec,
    pub users: IntGauge,
}

impl HttpMetrics {
    /// Create the families and register them in `registry` (the engine's).
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let metrics = HttpMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "tally_http_requests_total",
                    "HTTP requests by method, route template and status",
                ),
                &["method", "route", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "tally_http_request_duration_seconds",
                    "HTTP request latency by route template",
                )
                .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
                &["method", "route"],
            )?,
            request_size: HistogramVec::new(
                HistogramOpts::new("tally_http_request_size_bytes", "HTTP request body sizes")
                    .buckets(SIZE_BUCKETS_BYTES.to_vec()),
                &["method", "route"],
            )?,
            response_size: HistogramVec::new(
                HistogramOpts::new("tally_http_response_size_bytes", "HTTP response body sizes")
                    .buckets(SIZE_BUCKETS_BYTES.to_vec()),
                &["method", "route"],
            )?,
            users: IntGauge::new("tally_users", "Registered users (not deleted)")?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.request_size.clone()))?;
        registry.register(Box::new(metrics.response_size.clone()))?;
        registry.register(Box::new(metrics.users.clone()))?;
        Ok(metrics)
    }

    /// Record one answered request. `route` is the matched template, never the raw
    /// path, so ids do not become labels.
    pub fn observe(
        &self,
        method: &str,
        route: &str,
        status: u16,
        seconds: f64,
        request_bytes: u64,
        response_bytes: Option<u64>,
    ) {
        let status = status.to_string();
        self.requests.with_label_values(&[method, route, &status]).inc();
        self.duration.with_label_values(&[method, route]).observe(seconds);
        self.request_size
            .with_label_values(&[method, route])
            .observe(request_bytes as f64);
        if let Some(bytes) = response_bytes {
            self.response_size
                .with_label_values(&[method, route])
                .observe(bytes as f64);
        }
    }
}

/// The text exposition of every family, after refreshing the computed gauges.
pub async fn render(engine: &Engine, http: &HttpMetrics) -> String {
    engine.refresh_gauges();
    match engine.store().user_count().await {
        Ok(count) => http.users.set(count),
        Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot count users for /metrics"),
    }
    TextEncoder::new()
        .encode_to_string(&engine.metrics().registry.gather())
        .unwrap_or_default()
}
