//! Logs and traces: one `tracing` subscriber for the services and `orderflow dev` — JSON lines naming
//! each line's trace and span for log shippers, or pretty for a terminal — and OpenTelemetry, which gives
//! every span a trace context and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, exports the spans over OTLP.
//!
//! Only the standard `OTEL_*` variables configure it: the endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default,
//! or `http/json`), `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG` (parent-based, always on, by default) and
//! `OTEL_BSP_*`. Without an endpoint nothing is exported and nothing is said about it, but trace context
//! is still continued from callers and carried in messages.

use std::fmt;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter};
use serde_json::{Map, Value};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// What the services log when `RUST_LOG` is not set.
pub const SERVICE_LOG_FILTER: &str = "info,poem=warn,lapin=warn,opentelemetry=warn";

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable asks for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The exporter could not be built from the `OTEL_*` variables.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("logging was already set up: {0}")]
    AlreadySet(String),
}

/// The running telemetry; [`Telemetry::shutdown`] exports what is still buffered.
#[must_use = "shut it down when the service stops, or the last spans are lost"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        // The processor's shutdown blocks until its last export, which runs on this runtime.
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Starts logging with `format` and `RUST_LOG` (default `default_filter`), and tracing as the `OTEL_*`
/// variables say; `service` names the service when `OTEL_SERVICE_NAME` does not. Call it inside the
/// Tokio runtime: the exporter sends from it.
///
/// # Errors
/// [`TelemetryError`] when an `OTEL_*` variable asks for what this build cannot do, or a subscriber is
/// already installed.
pub fn init(format: LogFormat, service: &str, default_filter: &str) -> Result<Telemetry, TelemetryError> {
    let provider = tracer_provider(service, exporter()?);
    let logged = || tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    // Traces do not depend on `RUST_LOG`: the spans carry the trace context messages continue, so they
    // exist at any log level; of the events, only warnings and errors go onto the spans.
    let registry = tracing_subscriber::registry().with(traces(&provider));
    let installed = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonWithTrace)
                    .with_filter(logged()),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_filter(logged())).try_init(),
    };
    installed.map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;
    Ok(Telemetry { provider })
}

/// Runs `work` between [`init`] and [`Telemetry::shutdown`], so the spans buffered when it ends,
/// however it ends, are still exported.
///
/// # Errors
/// What `work` returns, or [`TelemetryError`] (converted) when telemetry cannot start.
pub async fn traced<E: From<TelemetryError>>(
    format: LogFormat,
    service: &str,
    default_filter: &str,
    work: impl Future<Output = Result<(), E>>,
) -> Result<(), E> {
    let telemetry = init(format, service, default_filter)?;
    let result = work.await;
    telemetry.shutdown().await;
    result
}

/// The layer that makes `tracing` spans OpenTelemetry spans of `provider`. Traces do not depend on
/// `RUST_LOG`: the spans carry the trace context messages continue, so they exist at any log level. The
/// spans are this project's own: a library's (lapin's connection loop, alive as long as the process) would
/// be a trace of its own that says nothing of an order. Of the events, any crate's warnings and errors go
/// onto the spans.
pub fn traces<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let ours =
        |target: &str| ["orderflow", "sales_api", "delivery_api"].iter().any(|crate_| target.starts_with(crate_));
    let traced = move |metadata: &tracing::Metadata<'_>| match metadata.is_span() {
        true => *metadata.level() <= tracing::Level::INFO && ours(metadata.target()),
        false => *metadata.level() <= tracing::Level::WARN,
    };
    // Decided once per callsite, not per span.
    let traced = tracing_subscriber::filter::dynamic_filter_fn(move |metadata, _| traced(metadata))
        .with_callsite_filter(move |metadata| match traced(metadata) {
            true => tracing::subscriber::Interest::always(),
            false => tracing::subscriber::Interest::never(),
        });
    // Spans are entered at every poll of the futures they instrument: no per-enter bookkeeping (busy and
    // idle times, an attached OpenTelemetry context nobody reads) and no per-span source location.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("orderflow"))
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false);
    layer.with_filter(traced)
}

/// The provider every span goes through: with the exporter's batch processor when there is one; without
/// one, spans still get the ids trace context is made of, but only a caller's sampled trace is sampled.
/// Also installs the W3C trace context propagator the services read and write `traceparent` with. Call
/// it inside the Tokio runtime: the batch processor exports from a task on it, so spans are freed on the
/// runtime's threads; freeing them on an exporter thread of its own cost the services about 5% more CPU
/// per order under a burst (`infra/bench/README.md`).
pub fn tracer_provider(service: &str, exporter: Option<impl SpanExporter + 'static>) -> SdkTracerProvider {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut resource = Resource::builder();
    // The default name only where the variables name none (`OTEL_SERVICE_NAME`, or `service.name` in
    // `OTEL_RESOURCE_ATTRIBUTES`, which the builder reads).
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let named = attributes.split(',').any(|pair| pair.trim_start().starts_with("service.name="));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() && !named {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder().with_resource(resource.build());
    match exporter {
        Some(exporter) => provider
            .with_span_processor(BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build())
            .build(),
        // Nothing would read what is recorded: spans keep their ids and carry the caller's sampling
        // decision on, but record nothing of their own (recording costs the front door several percent).
        None => provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))).build(),
    }
}

/// The OTLP exporter the variables ask for, `None` when no endpoint is set.
fn exporter() -> Result<Option<opentelemetry_otlp::SpanExporter>, TelemetryError> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    // Named, since the exporter's own default follows its build features (JSON, here), not the spec.
    let protocol = match protocol.as_str() {
        "" | "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => {
            return Err(TelemetryError::Unsupported(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported; use http/protobuf or http/json"
            )));
        }
    };
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_http_client(Client::default())
        .build()
        .map(Some)
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// The exporter's HTTP client: the services' own reqwest. The batch processor exports from a task on the
/// service's runtime, which reqwest needs.
#[derive(Debug, Default)]
struct Client {
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let response = self.http.execute(reqwest::Request::try_from(request)?).await?;
        let mut built = Response::builder().status(response.status());
        for (name, value) in response.headers() {
            built = built.header(name, value);
        }
        Ok(built.body(response.bytes().await?)?)
    }
}

/// JSON lines as `tracing_subscriber`'s JSON format writes them (the event's fields flattened, the
/// current span), plus `trace_id` and `span_id` of the span the line was logged in, so a log line
/// leads to its trace and back.
struct JsonWithTrace;

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        line.insert("level".into(), metadata.level().as_str().into());
        event.record(&mut JsonVisitor(&mut line));
        line.insert("target".into(), metadata.target().into());
        if let Some(span) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            let mut fields = span
                .extensions()
                .get::<FormattedFields<N>>()
                .and_then(|f| serde_json::from_str::<Map<String, Value>>(f).ok())
                .unwrap_or_default();
            fields.insert("name".into(), span.name().into());
            line.insert("span".into(), fields.into());
            let context = tracing::dispatcher::get_default(|d| tracing_opentelemetry::get_otel_context(&span.id(), d));
            if let Some(context) = context {
                let span = context.span();
                let ids = span.span_context();
                if ids.is_valid() {
                    line.insert("trace_id".into(), ids.trace_id().to_string().into());
                    line.insert("span_id".into(), ids.span_id().to_string().into());
                }
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into a JSON object, as the JSON format does.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u128(&mut self, field: &tracing::field::Field, value: u128) {
        let value = u64::try_from(value).map_or_else(|_| value.to_string().into(), Value::from);
        self.0.insert(field.name().into(), value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_this_projects_spans_are_exported_and_any_crates_warnings_go_onto_them() {
        let exporter = InMemorySpanExporter::default();
        let provider = tracer_provider("telemetry", Some(exporter.clone()));
        let subscriber = tracing_subscriber::registry().with(traces(&provider));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!(target: "lapin::io_loop", "io_loop").in_scope(|| {});
            tracing::debug_span!("ours, but below INFO").in_scope(|| {});
            tracing::info_span!("ours").in_scope(|| {
                tracing::warn!(target: "lapin::channel", "a library's warning");
                tracing::info!("an INFO event, which the log has");
            });
        });
        provider.force_flush().expect("spans flushed");

        let spans = exporter.get_finished_spans().expect("spans");
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["ours"]);
        let events: Vec<&str> = spans[0].events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(events, ["a library's warning"]);
    }
}
