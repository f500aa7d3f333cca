//! W3C trace context survives the trip: span → gRPC metadata → server span, and span →
//! stored traceparent → context.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use pochta_telemetry::grpc::{
    context_from_traceparent, current_traceparent, inject_trace_context, server_span,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn trace_context_crosses_grpc_and_the_store() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let transaction = tracing::info_span!("smtp.transaction");
        let _entered = transaction.enter();
        let trace_id = transaction.context().span().span_context().trace_id();

        let request = inject_trace_context(tonic::Request::new(())).unwrap();
        let traceparent = request
            .metadata()
            .get("traceparent")
            .expect("traceparent injected")
            .to_str()
            .unwrap()
            .to_owned();
        assert!(traceparent.starts_with("00-"), "{traceparent}");
        assert!(traceparent.contains(&trace_id.to_string()));

        let incoming = http::Request::builder()
            .uri("/pochta.queue.v1.Queue/Notify")
            .header("traceparent", &traceparent)
            .body(())
            .unwrap();
        let server = server_span(&incoming);
        let server_cx = server.context();
        assert_eq!(server_cx.span().span_context().trace_id(), trace_id);
        assert_ne!(
            server_cx.span().span_context().span_id(),
            transaction.context().span().span_context().span_id(),
            "the server span is a child, not the same span"
        );

        let stored = current_traceparent().expect("a valid context");
        assert_eq!(stored, traceparent);
        let restored = context_from_traceparent(&stored);
        assert_eq!(restored.span().span_context().trace_id(), trace_id);
        assert!(
            !context_from_traceparent("garbage")
                .span()
                .span_context()
                .is_valid()
        );
    });
}

#[test]
fn no_context_without_a_span() {
    assert_eq!(current_traceparent(), None);
    let request = inject_trace_context(tonic::Request::new(())).unwrap();
    assert!(request.metadata().get("traceparent").is_none());
}
