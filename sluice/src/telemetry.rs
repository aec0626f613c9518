//! Logs and traces of the process.
//!
//! ```text
//! tracing ──▶ Registry ─┬─ fmt layer (text | json, SLUICE_LOG filter) ──▶ stderr
//!                       └─ OpenTelemetry layer (target sluice::trace only) ──▶ batch ──▶ OTLP/HTTP
//! ```
//!
//! Logs are human text by default, one JSON object per line with `SLUICE_LOG_FORMAT=json`
//! (`--log-format json`). The spans of `sluice_core::trace` go only to the OpenTelemetry
//! layer, which exists only when an OTLP endpoint is configured (`--otlp-endpoint`, or the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): without
//! one, no span is ever made (`sluice_core::trace::enabled` stays false).
//!
//! Spans are exported in batches (the SDK's batch processor on its own thread; the standard
//! `OTEL_BSP_*` variables tune it) as OTLP protobuf over HTTP. The HTTP request is made by
//! hyper on the tokio runtime (the exporter thread waits for it), so no second HTTP stack or
//! runtime is built in. Only `http://` endpoints are supported: run a local collector for
//! TLS to a backend.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tracing_subscriber::filter::{filter_fn, FilterExt as _};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line: timestamp, level, target, fields, span context.
    Json,
}

/// Longest one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is still batched (waits at most a few seconds), then stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        sluice_core::trace::set_enabled(false);
        // The batch thread's last export runs on this runtime: wait for it off the runtime.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown() {
                eprintln!("sluice: flushing the last spans to the OTLP endpoint failed: {e}");
            }
        })
        .await;
    }
}

/// Where spans go: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else the base endpoint
/// (`--otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`) plus `/v1/traces`, as the OTLP
/// exporter specification says. `None`: tracing off.
pub fn traces_endpoint(base: Option<&str>, traces: Option<&str>) -> Option<String> {
    fn non_empty(s: Option<&str>) -> Option<&str> {
        s.map(str::trim).filter(|s| !s.is_empty())
    }
    if let Some(t) = non_empty(traces) {
        return Some(t.to_owned());
    }
    let base = non_empty(base)?;
    Some(format!("{}/v1/traces", base.trim_end_matches('/')))
}

/// Installs the global subscriber: logs in `format` filtered by `SLUICE_LOG` (default
/// `info`), and spans to `endpoint` when there is one. Call inside the tokio runtime.
pub fn init(format: LogFormat, endpoint: Option<String>) -> anyhow::Result<Telemetry> {
    let env_filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Trace spans never show in logs (they would prefix every line inside them).
    let log_filter = env_filter.and(filter_fn(|m| m.target() != sluice_core::trace::TARGET));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(log_filter));
    let Some(endpoint) = endpoint else {
        registry.init();
        return Ok(Telemetry { provider: None });
    };
    let provider = provider(&endpoint)?;
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sluice"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(filter_fn(|m| m.target() == sluice_core::trace::TARGET));
    registry.with(otel).init();
    sluice_core::trace::set_enabled(true);
    tracing::info!(endpoint = %endpoint, "exporting traces (OTLP/HTTP)");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let uri: http::Uri = endpoint
        .parse()
        .with_context(|| format!("the OTLP endpoint `{endpoint}` is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!(
            "the OTLP endpoint `{endpoint}` must be an http:// URL (for TLS, send to a local \
             OpenTelemetry Collector that forwards over https)"
        );
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(RuntimeClient::new())
        .build()
        .with_context(|| format!("cannot set up the OTLP exporter for `{endpoint}`"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("sluice");
    }
    let resource = resource
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: hyper on the process's tokio runtime. The SDK's batch thread
/// is not a runtime thread, so each request is spawned onto the runtime and its result
/// awaited there.
#[derive(Debug, Clone)]
struct RuntimeClient {
    runtime: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl RuntimeClient {
    fn new() -> Self {
        RuntimeClient {
            runtime: tokio::runtime::Handle::current(),
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let request = request.map(Full::new);
        let task = self.runtime.spawn(async move {
            let response = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request))
                .await
                .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = tokio::time::timeout(EXPORT_TIMEOUT, body.collect())
                .await
                .map_err(|_| format!("the answer's body took over {EXPORT_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(http::Response::from_parts(parts, body))
        });
        let response = task.await.map_err(|e| e.to_string())??;
        if !response.status().is_success() {
            return Err(format!("the OTLP endpoint answered {}", response.status()).into());
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolution_follows_the_otlp_exporter_spec() {
        let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (None, None, None),
            (Some(""), Some(" "), None),
            (
                Some("http://collector:4318"),
                None,
                Some("http://collector:4318/v1/traces"),
            ),
            (
                Some("http://collector:4318/"),
                None,
                Some("http://collector:4318/v1/traces"),
            ),
            (
                Some("http://c:4318/base"),
                None,
                Some("http://c:4318/base/v1/traces"),
            ),
            // The signal-specific variable is used as it is, and wins.
            (
                Some("http://c:4318"),
                Some("http://t:9999/custom"),
                Some("http://t:9999/custom"),
            ),
            (
                None,
                Some("http://t:9999/custom"),
                Some("http://t:9999/custom"),
            ),
        ];
        for (base, traces, want) in cases {
            assert_eq!(
                traces_endpoint(*base, *traces).as_deref(),
                *want,
                "{base:?} {traces:?}"
            );
        }
    }
}
