//! Optional OpenTelemetry export: every closed span, as OTLP/HTTP JSON, to
//! `$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces` (or `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! as is), named by `$OTEL_SERVICE_NAME` (default `puhuri-approver`). Off unless one of
//! the endpoint variables is set. Built on `tracing-opentelemetry`, the OpenTelemetry SDK
//! and its OTLP exporter.
//!
//! Trace ids come from the notification id: the receiver's and the worker's
//! `notification` spans, root spans that carry an `id` field, get the trace id
//! `sha256("puhuri-approver:" + id)[..16]` through [`join_notification_trace`]. The
//! receiver and every worker attempt of one notification, in different processes,
//! therefore land in one trace without any context travelling through the queue. Other
//! root spans get a random trace id; child spans (each Puhuri Core call) join their
//! parent's trace.
//!
//! INVARIANT: export never blocks or fails the service: closed spans go to the SDK's
//! batch span processor, whose bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048)
//! drops spans when full, and one thread of its own posts the batches; a collector
//! that is down costs only those spans. A configuration the exporter refuses leaves
//! export off, with a line on stderr.
//! INVARIANT: nothing the exporter does is exported: the layer ignores the spans and
//! events of the exporter's own crates (OpenTelemetry, the HTTP client). Its failures
//! are ordinary log lines (target `opentelemetry_sdk` or `opentelemetry-otlp`).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use sha2::{Digest, Sha256};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// Where and as what spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL of the traces endpoint.
    pub traces_url: String,
    pub service_name: String,
}

impl OtlpConfig {
    /// From the standard OpenTelemetry environment variables; `None` when export is off.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<OtlpConfig> {
        let non_empty = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let traces_url = match non_empty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => url,
            None => {
                let base = non_empty("OTEL_EXPORTER_OTLP_ENDPOINT")?;
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
        };
        Some(OtlpConfig {
            traces_url,
            service_name: non_empty("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| "puhuri-approver".to_owned()),
        })
    }
}

fn notification_trace_id(notification_id: &str) -> TraceId {
    let digest = Sha256::digest(format!("puhuri-approver:{notification_id}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    TraceId::from_bytes(id)
}

/// The trace id of a notification, in hex.
pub fn trace_id_for(notification_id: &str) -> String {
    notification_trace_id(notification_id).to_string()
}

thread_local! {
    /// The trace id the next root span started on this thread takes.
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except a trace id handed over by [`join_notification_trace`].
#[derive(Debug, Default)]
struct NotificationTraceIds(RandomIdGenerator);

impl IdGenerator for NotificationTraceIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .take()
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Puts `span`, a root span about one notification, into the notification's trace. Call
/// it as soon as the id is known and before the span has children: it starts the
/// OpenTelemetry span, which takes its trace id then. Does nothing when export is off.
pub fn join_notification_trace(span: &tracing::Span, notification_id: &str) {
    NEXT_TRACE_ID.set(Some(notification_trace_id(notification_id)));
    let _ = span.context();
    NEXT_TRACE_ID.set(None);
}

/// Spans and events of the exporter itself, never exported.
fn is_exporter_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate.starts_with("opentelemetry")
        || matches!(
            krate,
            "reqwest"
                | "hyper"
                | "hyper_util"
                | "h2"
                | "rustls"
                | "tower"
                | "tracing_opentelemetry"
        )
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

fn provider(
    config: OtlpConfig,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(config.traces_url)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(NotificationTraceIds::default())
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name)
                .build(),
        )
        .build())
}

/// The tracing layer that exports spans as `config` says; `None` (and a line on stderr)
/// when the exporter cannot be set up.
pub fn layer<S>(config: OtlpConfig) -> Option<impl Layer<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let provider = match provider(config) {
        Ok(provider) => provider,
        Err(error) => {
            eprintln!("OpenTelemetry export is off: {error}");
            return None;
        }
    };
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder("puhuri-approver")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    let _ = PROVIDER.set(provider);
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Spans start when they close or get a child, not when entered, so that a
            // notification span can still join its trace once its id is known.
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                !is_exporter_target(metadata.target())
            })),
    )
}

/// Sends what is queued and stops the exporter (at most `timeout`).
pub fn shutdown(timeout: Duration) {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown_with_timeout(timeout);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn configuration_follows_the_standard_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(OtlpConfig::from_env(env(&[])), None);
        assert_eq!(
            OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])),
            Some(OtlpConfig {
                traces_url: "http://c:4318/v1/traces".into(),
                service_name: "puhuri-approver".into()
            })
        );
        assert_eq!(
            OtlpConfig::from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t/x"),
                ("OTEL_SERVICE_NAME", "approver-eu"),
            ])),
            Some(OtlpConfig {
                traces_url: "http://t/x".into(),
                service_name: "approver-eu".into()
            })
        );
    }

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(batch);
            Ok(())
        }
    }

    #[test]
    fn a_notification_has_one_trace_id_everywhere() {
        assert_eq!(trace_id_for("msg_1"), trace_id_for("msg_1"));
        assert_ne!(trace_id_for("msg_1"), trace_id_for("msg_2"));
        assert_eq!(trace_id_for("msg_1").len(), 32);

        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .with_id_generator(NotificationTraceIds::default())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_context_activation(false);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            // As in the receiver: the id is known only after the span was entered.
            let receiver = tracing::info_span!("notification", id = tracing::field::Empty);
            receiver.in_scope(|| {
                tracing::info!("authenticated");
                receiver.record("id", "msg_1");
                join_notification_trace(&receiver, "msg_1");
            });
            drop(receiver);
            // As in the worker: the id is known from the start.
            let worker = tracing::info_span!("notification", id = "msg_1", attempt = 1);
            join_notification_trace(&worker, "msg_1");
            worker.in_scope(|| {
                let _call = tracing::info_span!("puhuri", operation = "approve").entered();
            });
            drop(worker);
            let _other = tracing::info_span!("reconcile").entered();
        });
        let _ = provider.shutdown();

        let spans = collected
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names,
            ["notification", "puhuri", "notification", "reconcile"]
        );
        let trace = notification_trace_id("msg_1");
        let (receiver, call, worker, other) = (&spans[0], &spans[1], &spans[2], &spans[3]);
        assert_eq!(receiver.span_context.trace_id(), trace);
        assert_eq!(worker.span_context.trace_id(), trace);
        assert_eq!(call.span_context.trace_id(), trace);
        assert_eq!(receiver.parent_span_id, SpanId::INVALID);
        assert_eq!(worker.parent_span_id, SpanId::INVALID);
        assert_eq!(call.parent_span_id, worker.span_context.span_id());
        assert_ne!(other.span_context.trace_id(), trace);
        assert_eq!(other.parent_span_id, SpanId::INVALID);
    }

    #[test]
    fn the_exporter_is_not_exported() {
        assert!(is_exporter_target("opentelemetry_sdk"));
        assert!(is_exporter_target("opentelemetry-otlp"));
        assert!(is_exporter_target("hyper_util::client::legacy::pool"));
        assert!(is_exporter_target("reqwest::blocking::wait"));
        assert!(!is_exporter_target("puhuri_client"));
        assert!(!is_exporter_target("puhuri_approver::worker"));
    }
}
