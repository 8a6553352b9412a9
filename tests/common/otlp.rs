//! An OTLP/gRPC trace receiver inside a test: collects every exported span.
#![allow(dead_code)]
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

/// One received span (ids as lower-case hex).
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace: String,
    pub id: String,
    pub parent: String,
    pub name: String,
    /// The exporting process's `service.name`.
    pub service: String,
}

#[derive(Default, Clone)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<SpanRecord>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(SpanRecord {
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        service: service.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// The spans of `trace`, once spans with every name in `names` have arrived
    /// (plus a moment for the rest of the export batch); panics after `timeout`.
    pub fn wait_for_trace(&self, trace: &str, names: &[&str], timeout: std::time::Duration) -> Vec<SpanRecord> {
        let of_trace = || self.spans.lock().unwrap().iter().filter(|s| s.trace == trace).cloned().collect::<Vec<_>>();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = of_trace();
            if names.iter().all(|n| got.iter().any(|s| s.name == *n)) {
                std::thread::sleep(std::time::Duration::from_millis(600));
                return of_trace();
            }
            assert!(std::time::Instant::now() < deadline, "spans {names:?} of trace {trace} did not arrive: {got:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
