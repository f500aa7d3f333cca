//! Logs, traces and metrics for every Pochta binary.
//!
//! - Logs: `tracing` events to stderr, pretty, compact or JSON, filtered by `RUST_LOG` or the
//!   configured directive.
//! - Traces: every `tracing` span is also an OpenTelemetry span, so W3C trace context exists
//!   even when nothing is exported (it is stored with envelopes and sent on gRPC calls). Spans
//!   are exported over OTLP/gRPC only when an endpoint is configured.
//! - Metrics: instruments from `opentelemetry::global::meter`, exported periodically over OTLP
//!   when an endpoint is configured; without one they are no-ops.

pub mod grpc;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use pochta_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long one OTLP export may take; bounds shutdown when the collector is unreachable.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the providers alive; `shutdown` flushes the last spans and metrics.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: Option<SdkMeterProvider>,
    exporting: bool,
}

impl Telemetry {
    /// True when spans and metrics go to an OTLP endpoint.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and stops the exporters. Bounded by the export timeout.
    pub fn shutdown(self) {
        // Drop does the work; this name makes the intent visible at the call site.
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.tracer_provider.shutdown() {
            eprintln!("telemetry: shutting down traces: {e}");
        }
        if let Some(meters) = self.meter_provider.take()
            && let Err(e) = meters.shutdown()
        {
            eprintln!("telemetry: shutting down metrics: {e}");
        }
    }
}

/// The OTLP endpoint to use: the configured one, else the standard environment variable.
fn otlp_endpoint(config: &TelemetryConfig) -> Option<String> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    config.otlp_endpoint.clone().or_else(|| {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|v| !v.trim().is_empty())
    })
}

fn resource(service: &str, version: &str) -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", version.to_owned()),
        KeyValue::new(
            "service.instance.id",
            format!("{host}-{}", std::process::id()),
        ),
        KeyValue::new("host.name", host),
    ]);
    // OTEL_SERVICE_NAME, when set, names the service (the builder reads it).
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        builder = builder.with_service_name(service.to_owned());
    }
    builder.build()
}

fn is_transport_internal(target: &str) -> bool {
    [
        "h2",
        "hyper",
        "hyper_util",
        "tonic",
        "tower",
        "opentelemetry",
    ]
    .iter()
    .any(|t| target == *t || target.strip_prefix(t).is_some_and(|r| r.starts_with("::")))
}

/// Libraries that open an INFO span per protocol fragment (imap-next: one per response
/// written, tens of thousands for a whole-mailbox FETCH, each built for OpenTelemetry too):
/// held at WARN unless the directive names them.
const CHATTY_TARGETS: [&str; 1] = ["imap_next"];

/// The log filter: `RUST_LOG` when set, else the configured directive; `CHATTY_TARGETS` at
/// WARN where it does not name them.
fn env_filter(config: &TelemetryConfig) -> anyhow::Result<EnvFilter> {
    let (directive, source) = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.trim().is_empty() => (directive, "RUST_LOG"),
        _ => (config.log_filter.clone(), "telemetry.log_filter"),
    };
    directive_filter(&directive).with_context(|| format!("{source} = {directive:?}"))
}

/// The filter a directive makes, with `CHATTY_TARGETS` at WARN where it does not name them.
fn directive_filter(directive: &str) -> anyhow::Result<EnvFilter> {
    let mut filter = EnvFilter::try_new(directive)?;
    for target in CHATTY_TARGETS {
        if !directive.contains(target) {
            filter = filter.add_directive(format!("{target}=warn").parse()?);
        }
    }
    Ok(filter)
}

/// Installs the global subscriber, propagator and providers. Call once, inside the tokio
/// runtime (the OTLP exporter's gRPC channel needs it). Never fails because a collector is
/// unreachable: the channel connects lazily and exports retry in the background.
pub fn init(service: &str, version: &str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = env_filter(config)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource(service, version);
    let endpoint = otlp_endpoint(config);

    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut meter_provider = None;
    if let Some(endpoint) = &endpoint {
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .context("building the OTLP span exporter")?;
        tracer_builder = tracer_builder.with_batch_exporter(spans);
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .context("building the OTLP metric exporter")?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
            .with_interval(Duration::from_secs(config.metrics_interval_secs))
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        meter_provider = Some(provider);
    }
    let tracer_provider = tracer_builder.build();
    let tracer = tracer_provider.tracer(service.to_owned());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());

    // The exporter's own gRPC stack must not produce spans of its own: each export would
    // create more to export.
    // Entering a span (every poll of an instrumented future) neither activates an
    // OpenTelemetry context nor reads the clock: context is taken from the span itself where
    // it is propagated (grpc.rs), and the busy/idle times were a few percent of a busy
    // service's CPU (BENCHMARKS.md, IMAP whole-mailbox FETCH).
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|meta| !is_transport_internal(meta.target())));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match config.log_format {
        LogFormat::Pretty => registry.with(fmt.pretty()).try_init(),
        LogFormat::Compact => registry.with(fmt.compact()).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    installed.context("installing the tracing subscriber")?;
    tracing::info!(
        service,
        version,
        otlp_endpoint = endpoint.as_deref().unwrap_or("none"),
        "telemetry ready"
    );
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
        exporting: endpoint.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    /// What `directive` lets through: imap-next at INFO, DEBUG and WARN, a service at INFO.
    fn enabled(directive: &str) -> (bool, bool, bool, bool) {
        let filter = directive_filter(directive).unwrap();
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::enabled!(target: "imap_next::fragment", Level::INFO),
                tracing::enabled!(target: "imap_next::fragment", Level::DEBUG),
                tracing::enabled!(target: "imap_next::fragment", Level::WARN),
                tracing::enabled!(target: "imap_access::server", Level::INFO),
            )
        })
    }

    #[test]
    fn per_fragment_spans_are_held_at_warn_unless_the_directive_names_them() {
        assert_eq!(enabled("info"), (false, false, true, true));
        assert_eq!(enabled("info,imap_next=debug"), (true, true, true, true));
        assert_eq!(enabled("debug"), (false, false, true, true));
        assert!(directive_filter("info,=bad=").is_err());
    }
}
