//! Logs, traces and metrics of one `tessera` process.
//!
//! - Logs: `tracing` with `RUST_LOG` filtering; `TESSERA_LOG_FORMAT=json` gives JSON
//!   lines that carry the fields of the current spans, among them the request's
//!   `trace_id` (trace context is then kept even when nothing is exported).
//! - Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/gRPC.
//!   W3C trace context comes in from gRPC metadata and HTTP `traceparent` headers
//!   (see [`grpc_span`], [`http_observe`]) and goes out on calls to nodes (the
//!   coordinator's interceptor), so one request is one trace across hops.
//! - Metrics: a Prometheus recorder for the `metrics` facade, rendered at `GET /metrics`;
//!   per-RPC and per-route counters and latency histograms are recorded here.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{info_span, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Latency buckets (seconds) of every `*_seconds` histogram.
const SECONDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Buckets of size histograms (batch sizes, sequences per step).
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// What `init` set up; keep it alive, call [`Telemetry::shutdown`] at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Renders the Prometheus text.
    pub metrics: PrometheusHandle,
}

impl Telemetry {
    /// Flushes spans still buffered for export.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

/// Installs the tracing subscriber (with the OTLP layer when configured) and the
/// metrics recorder. Call once, inside the tokio runtime.
pub fn init(service: &str) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::{fmt, EnvFilter};
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TESSERA_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt_layer = if json {
        fmt::layer().json().with_current_span(true).with_span_list(true).with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
    let provider = match endpoint {
        // JSON logs without export still get real trace ids (and propagate them to nodes).
        None if json => Some(SdkTracerProvider::builder().build()),
        Some(_) => {
            // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other OTEL_* variables) itself.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .context("building the OTLP span exporter")?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
            Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
        }
        None => None,
    };
    let otel_layer = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tessera")).boxed());
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .context("installing the log subscriber")?;

    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES)?
        .set_buckets_for_metric(Matcher::Suffix("_sequences".into()), SIZES)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(Telemetry { provider, metrics })
}

use tracing_subscriber::Layer as _;

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A span whose parent is the W3C trace context in `headers` (when there is one),
/// with the trace id recorded as a field so JSON logs carry it.
fn span_with_remote_parent(span: Span, headers: &axum::http::HeaderMap) -> Span {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The server span of a gRPC request (tonic's `trace_fn`).
pub fn grpc_span(req: &axum::http::Request<()>) -> Span {
    let path = req.uri().path();
    let span = info_span!("grpc.server", otel.name = %path, rpc.system = "grpc", rpc.method = %path, trace_id = tracing::field::Empty);
    span_with_remote_parent(span, req.headers())
}

/// Axum middleware for every HTTP route: a server span (parent from `traceparent`),
/// `tessera_http_requests_total` and `tessera_http_request_duration_seconds`.
pub async fn http_observe(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    // Only the standard verbs become label values (see `method_label`).
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m.to_string(),
        _ => "other".to_string(),
    };
    let span = info_span!("http.server", otel.name = %format!("{method} {route}"), http.route = %route, trace_id = tracing::field::Empty);
    let span = span_with_remote_parent(span, req.headers());
    let started = Instant::now();
    let response = next.run(req).instrument(span).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("tessera_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("tessera_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Every `/package.Service/Method` this binary serves, read from the
/// descriptor sets the servers are built from.
fn known_methods() -> &'static std::collections::HashSet<String> {
    static KNOWN: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message;
        let mut known = std::collections::HashSet::new();
        for set in [tessera_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        known.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string());
        known
    })
}

/// The method label of a request path: the path for served methods, "unknown"
/// for anything else, so that random paths cannot grow the metric series
/// without bound.
fn method_label(path: &str) -> String {
    if known_methods().contains(path) {
        path.to_string()
    } else {
        "unknown".to_string()
    }
}

/// Tower layer for the gRPC server: `tessera_grpc_requests_total{method,code}` and
/// `tessera_grpc_request_duration_seconds{method}` (time to the response headers, so
/// for streams the time to the first message; a status sent after streaming started
/// counts as OK).
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                    .unwrap_or_else(|| "Ok".into()),
                Err(_) => "Unavailable".into(),
            };
            metrics::counter!("tessera_grpc_requests_total", "method" => method.clone(), "code" => code).increment(1);
            metrics::histogram!("tessera_grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(method_label("/tessera.v1.Tessera/Search"), "/tessera.v1.Tessera/Search");
        assert_eq!(method_label("/tessera.v1.Node/ShardSearch"), "/tessera.v1.Node/ShardSearch");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "/grpc.health.v1.Health/Check");
        assert_eq!(method_label("/tessera.v1.Tessera/x8f3k"), "unknown");
        assert_eq!(method_label("/random/path"), "unknown");
    }
}
