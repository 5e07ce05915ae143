//! Logs and traces.
//!
//! * Logs: JSON lines when the output is not a terminal (servers, containers, CI), a
//!   readable format when it is, or as `LOG_FORMAT` says. Every line logged while a
//!   request is handled carries that request's span, hence its `request_id`.
//! * Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `JAEGER_URL`) is set, spans go to that
//!   OTLP/HTTP endpoint: the request, the coordinator's steps, the actors' handling and
//!   the persister batch that made the write durable (linked to the transfers it
//!   carried). The engine's spans are at debug level, so without an exporter they are
//!   never even created.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::configuration::{LogFormat, LogSettings};

/// What the exporter sends: request spans and everything Tally's own crates trace.
const TRACE_FILTER: &str = "info,tally=debug,tally_actors=debug";

/// The installed tracing pipeline; [`Telemetry::shutdown`] flushes pending spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Send every span ended so far.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            eprintln!("tally: could not flush traces: {error}");
        }
    }

    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Install the global subscriber; later calls (tests) are no-ops.
pub fn init(settings: &LogSettings) -> Telemetry {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = settings.format.clone().unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            // The spans a line is in, outermost first: a line in an engine step's span
            // (at debug) still carries its request's id, from the request's span.
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().with_filter(filter).boxed(),
    };
    let (traces, provider) = match &settings.otlp_endpoint {
        Some(endpoint) => match tracer_provider(endpoint) {
            Ok(provider) => {
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("tally"))
                    .with_filter(EnvFilter::new(TRACE_FILTER))
                    .boxed();
                (Some(layer), Some(provider))
            }
            Err(error) => {
                eprintln!("tally: traces are not exported: {error:#}");
                (None, None)
            }
        },
        None => (None, None),
    };
    let installed = tracing_subscriber::registry().with(logs).with(traces).try_init();
    if installed.is_err() {
        // Already installed (a test process): this pipeline is not the live one.
        if let Some(provider) = &provider {
            let _ = provider.shutdown();
        }
        return Telemetry::default();
    }
    if let Some(endpoint) = &settings.otlp_endpoint {
        tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

fn tracer_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("tally").build())
        .build())
}
