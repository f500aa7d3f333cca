//! Support for the deployment tests: an OTLP/gRPC receiver that keeps every span and metric
//! the services export, standing in for the OpenTelemetry Collector of the compose stack.
//!
//! The tests themselves (`tests/`) check the compose file, Dockerfile and configs with the
//! tools that parse them, and run the stack's topology as plain processes: several ingresses
//! behind a real HAProxy speaking PROXY v2, two queues, one POP3 server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::{Request, Response, Status};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of the exporting process.
    pub service: String,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    /// String, integer and boolean attributes, as text.
    pub attributes: Vec<(String, String)>,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    /// (service.name, metric name)
    metrics: Vec<(String, String)>,
}

/// What the receiver has been sent so far.
#[derive(Clone, Default)]
pub struct Receiver(Arc<Mutex<Received>>);

impl Receiver {
    /// Serves OTLP/gRPC (traces and metrics) on a free loopback port, until the test ends.
    pub async fn start() -> std::io::Result<(Receiver, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let receiver = Receiver::default();
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(receiver.clone()));
        tokio::spawn(router.serve_with_incoming(
            tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener),
        ));
        Ok((receiver, addr))
    }

    pub fn spans(&self) -> Vec<Span> {
        self.0.lock().expect("receiver lock").spans.clone()
    }

    /// Whether `service` has exported a metric called `name`.
    pub fn has_metric(&self, service: &str, name: &str) -> bool {
        self.0
            .lock()
            .expect("receiver lock")
            .metrics
            .iter()
            .any(|(s, n)| s == service && n == name)
    }
}

fn text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(text)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.0.lock().expect("receiver lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(resource_spans.resource.as_ref());
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), text(kv)?)))
                        .collect(),
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut received = self.0.lock().expect("receiver lock");
        for resource_metrics in request.into_inner().resource_metrics {
            let service = service_name(resource_metrics.resource.as_ref());
            for metric in resource_metrics
                .scope_metrics
                .into_iter()
                .flat_map(|s| s.metrics)
            {
                received.metrics.push((service.clone(), metric.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}
