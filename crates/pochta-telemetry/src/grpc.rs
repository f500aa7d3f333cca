//! W3C trace context (traceparent/tracestate) across gRPC calls and in the store.
//!
//! Clients wrap their channel with `inject_trace_context` as a tonic interceptor; servers make
//! their request span with `server_span` (for `Server::builder().trace_fn`). A span started from
//! a stored `traceparent` (`context_from_traceparent`) continues the trace of the SMTP
//! transaction that accepted the message.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A tonic client interceptor: puts the current span's context into the request metadata.
#[allow(clippy::result_large_err)] // the signature tonic's Interceptor requires
pub fn inject_trace_context(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()))
    });
    Ok(request)
}

/// The span for one incoming gRPC request, child of the caller's context when it sent one.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract_with_context(&Context::new(), &HeaderExtractor(request.headers()))
    });
    let span = tracing::info_span!(
        "grpc.request",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %request.uri().path(),
    );
    let _ = span.set_parent(parent);
    span
}

/// The current span's context as a W3C `traceparent` value, to store with an envelope.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut fields = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut fields)
    });
    fields.remove("traceparent")
}

/// The context a stored `traceparent` describes; an empty one (never the caller's current
/// context) if it does not parse.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    let fields = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract_with_context(&Context::new(), &fields)
    })
}
