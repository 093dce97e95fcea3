//! Optional OpenTelemetry export: every closed span, as OTLP/HTTP JSON, to
//! `$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces` (or `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! as is), named by `$OTEL_SERVICE_NAME` (default `puhuri-approver`). Off unless one of
//! the endpoint variables is set.
//!
//! Trace ids come from the notification id: a root span that carries an `id` field (the
//! receiver's and the worker's `notification` spans) gets the trace id
//! `sha256("puhuri-approver:" + id)[..16]`. The receiver and every worker attempt of one
//! notification, in different processes, therefore land in one trace without any
//! context travelling through the queue. Other root spans get a random trace id.
//!
//! INVARIANT: export never blocks or fails the service: spans go through a bounded
//! channel (dropped and counted when it is full) to one exporter thread that posts
//! batches; a collector that is down costs only those spans.
//! INVARIANT: the exporter emits no tracing events of its own (they would feed back
//! into it); it reports failures once per minute on stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Spans waiting for the exporter at most.
const QUEUE: usize = 8192;
/// Spans per request at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch.
const LINGER: Duration = Duration::from_secs(1);

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

/// One finished span.
#[derive(Debug, Clone)]
struct SpanData {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &'static str,
    start_ns: u128,
    end_ns: u128,
    attributes: Vec<(&'static str, Value)>,
    /// A root span whose trace id still follows its `id` field.
    root: bool,
}

/// The trace id of a notification.
pub fn trace_id_for(notification_id: &str) -> [u8; 16] {
    let digest = Sha256::digest(format!("puhuri-approver:{notification_id}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let random = uuid::Uuid::new_v4().into_bytes();
    out.copy_from_slice(&random[..N]);
    out
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Fields<'a>(&'a mut Vec<(&'static str, Value)>);

impl Fields<'_> {
    fn set(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, json!(value));
    }
}

fn notification_id(attributes: &[(&'static str, Value)]) -> Option<String> {
    attributes
        .iter()
        .find(|(k, _)| *k == "id")
        .and_then(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The tracing layer that hands closed spans to the exporter thread.
pub struct OtlpLayer {
    sender: std::sync::mpsc::SyncSender<SpanData>,
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the exporter thread: spans made there (by the HTTP client) are not exported.
    static EXPORTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
static EXPORTER: OnceLock<Mutex<Option<Exporter>>> = OnceLock::new();

struct Exporter {
    stop: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if EXPORTING.with(std::cell::Cell::get) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut attributes = Vec::new();
        attrs.record(&mut Fields(&mut attributes));
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<SpanData>()
                .map(|d| (d.trace_id, d.span_id))
        });
        let (trace_id, parent_id, root) = match parent {
            Some((trace_id, parent_id)) => (trace_id, Some(parent_id), false),
            None => match notification_id(&attributes) {
                Some(nid) => (trace_id_for(&nid), None, true),
                None => (random_bytes::<16>(), None, true),
            },
        };
        span.extensions_mut().insert(SpanData {
            trace_id,
            span_id: random_bytes::<8>(),
            parent: parent_id,
            name: attrs.metadata().name(),
            start_ns: now_ns(),
            end_ns: 0,
            attributes,
            root,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(data) = extensions.get_mut::<SpanData>() else {
            return;
        };
        values.record(&mut Fields(&mut data.attributes));
        if data.root
            && let Some(nid) = notification_id(&data.attributes)
        {
            data.trace_id = trace_id_for(&nid);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(mut data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        data.end_ns = now_ns();
        if self.sender.try_send(data).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn attribute(key: &str, value: &Value) -> Value {
    let value = match value {
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n.as_f64() }),
        Value::String(s) => json!({ "stringValue": s }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": value })
}

/// The OTLP JSON request body of a batch.
fn request_body(service_name: &str, spans: &[SpanData]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": 1,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
            });
            if let Some(parent) = s.parent {
                span["parentSpanId"] = Value::String(hex(&parent));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [attribute("service.name", &json!(service_name))] },
            "scopeSpans": [{
                "scope": { "name": "puhuri-approver", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

/// Starts the exporter thread and returns the layer feeding it.
pub fn layer(config: OtlpConfig) -> OtlpLayer {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<SpanData>(QUEUE);
    let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || export_loop(config, receiver, stopped));
    if let Ok(thread) = thread {
        let _ = EXPORTER.set(Mutex::new(Some(Exporter { stop, thread })));
    }
    OtlpLayer { sender }
}

/// Sends what is queued and stops the exporter (at most `deadline`).
pub fn shutdown(deadline: Duration) {
    let Some(slot) = EXPORTER.get() else { return };
    let exporter = slot.lock().ok().and_then(|mut e| e.take());
    let Some(exporter) = exporter else { return };
    let _ = exporter.stop.try_send(());
    let started = std::time::Instant::now();
    while !exporter.thread.is_finished() && started.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn export_loop(
    config: OtlpConfig,
    receiver: std::sync::mpsc::Receiver<SpanData>,
    stopped: std::sync::mpsc::Receiver<()>,
) {
    EXPORTING.with(|e| e.set(true));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    // The HTTP client needs the runtime's reactor from its creation on.
    let _entered = runtime.enter();
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return;
    };
    let mut last_complaint: Option<std::time::Instant> = None;
    let mut complain = |message: String| {
        if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            last_complaint = Some(std::time::Instant::now());
            eprintln!("OpenTelemetry export: {message}");
        }
    };
    loop {
        let mut batch = Vec::new();
        let deadline = std::time::Instant::now() + LINGER;
        let mut stopping = false;
        while batch.len() < BATCH {
            if stopped.try_recv().is_ok() {
                stopping = true;
            }
            let wait = if stopping {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(std::time::Instant::now())
            };
            match receiver.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(span) => batch.push(span),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if stopping || std::time::Instant::now() >= deadline {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    stopping = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let body = request_body(&config.service_name, &batch);
            let result = runtime.block_on(client.post(&config.traces_url).json(&body).send());
            match result {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => complain(format!(
                    "the collector answered {} ({} spans lost)",
                    response.status(),
                    batch.len()
                )),
                Err(error) => complain(format!(
                    "cannot reach the collector ({} spans lost): {}",
                    batch.len(),
                    puhuri_client::describe_reqwest_error(&error)
                )),
            }
        }
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            complain(format!(
                "{dropped} spans dropped: the export queue was full"
            ));
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_notification_has_one_trace_id_everywhere() {
        assert_eq!(trace_id_for("msg_1"), trace_id_for("msg_1"));
        assert_ne!(trace_id_for("msg_1"), trace_id_for("msg_2"));
        let span = SpanData {
            trace_id: trace_id_for("msg_1"),
            span_id: [1; 8],
            parent: Some([2; 8]),
            name: "notification",
            start_ns: 1,
            end_ns: 2,
            attributes: vec![("id", json!("msg_1")), ("attempt", json!(2))],
            root: false,
        };
        let body = request_body("svc", &[span]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], hex(&trace_id_for("msg_1")));
        assert_eq!(span["parentSpanId"], "0202020202020202");
        assert_eq!(span["attributes"][1]["value"]["intValue"], "2");
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
    }
}
