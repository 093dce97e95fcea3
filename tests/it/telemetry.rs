//! OpenTelemetry export from a real `serve` process, as its OTLP/HTTP JSON requests
//! arrive at a collector-shaped receiver: the receiver's and the worker's spans of one
//! notification share the trace id derived from its id, and each Puhuri Core call is a
//! child span of the worker's.

use std::time::Duration;

use axum::routing::post;
use puhuri_approver::app::Roles;
use puhuri_approver::otel::trace_id_for;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{Options, WAIT, amqp_url, spawn_app, temp_dir};

/// Every span the collector received, flattened.
fn spans(bodies: &[Value]) -> Vec<Value> {
    bodies
        .iter()
        .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// A span without a parent.
fn is_root(span: &Value) -> bool {
    span["parentSpanId"].as_str().unwrap_or_default().is_empty()
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn spans_of_one_notification_form_one_trace_across_receiver_and_worker() {
    // The simulator and configuration only: the service under test is a child process.
    let mut app = spawn_app(Options {
        roles: Roles {
            receive: false,
            work: false,
        },
        ..Options::default()
    })
    .await;

    let (sender, mut bodies) = mpsc::unbounded_channel::<Value>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::Json<Value>| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(body.0);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = temp_dir("otel");
    let config = dir.join("puhuri-approver.toml");
    std::fs::write(dir.join("policy.toml"), app.policy_text).expect("policy");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n{}\n[policy]\nfile = \"policy.toml\"\n",
            app.config_text
        ),
    )
    .expect("config");
    let _child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("PUHURI_APPROVER_AMQP_URL", amqp_url())
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{collector_addr}"),
            )
            .env("OTEL_SERVICE_NAME", "approver-under-test")
            // Batches every 100 ms rather than every 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start serve"),
    );
    app.addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let ready = async {
        loop {
            if let Ok(r) = app.http.get(app.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, ready)
        .await
        .expect("the service became ready");

    let created = app.create(json!({"cpu_k_hours": 100})).await;
    assert_eq!(app.notify("msg_otel_1", &created).await.status(), 202);
    let trace = trace_id_for("msg_otel_1");
    let digest = <sha2::Sha256 as sha2::Digest>::digest(b"puhuri-approver:msg_otel_1");
    let derived: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(trace, derived);

    // Wait until the receiver's and the worker's spans and a Puhuri Core call arrived.
    let mut received = Vec::new();
    let wait = async {
        loop {
            let all = spans(&received);
            let in_trace: Vec<&Value> = all.iter().filter(|s| s["traceId"] == trace).collect();
            let worker = in_trace
                .iter()
                .find(|s| s["name"] == "notification" && attribute(s, "attempt").is_some());
            let receiver = in_trace
                .iter()
                .find(|s| s["name"] == "notification" && attribute(s, "attempt").is_none());
            if let (Some(worker), Some(receiver)) = (worker, receiver) {
                let calls: Vec<&Value> = in_trace
                    .iter()
                    .filter(|s| s["name"] == "puhuri" && s["parentSpanId"] == worker["spanId"])
                    .copied()
                    .collect();
                if calls
                    .iter()
                    .any(|c| attribute(c, "operation") == Some(&json!({"stringValue": "approve"})))
                {
                    return ((*receiver).clone(), (*worker).clone());
                }
            }
            match bodies.recv().await {
                Some(body) => received.push(body),
                None => panic!("collector closed"),
            }
        }
    };
    let (receiver, worker) = tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("spans of msg_otel_1 did not arrive: {:?}", spans(&received)));
    assert_eq!(
        attribute(&receiver, "id"),
        Some(&json!({"stringValue": "msg_otel_1"}))
    );
    assert_eq!(
        attribute(&worker, "id"),
        Some(&json!({"stringValue": "msg_otel_1"}))
    );
    assert_eq!(
        attribute(&worker, "attempt"),
        Some(&json!({"intValue": "1"}))
    );
    assert_ne!(receiver["spanId"], worker["spanId"]);
    assert!(is_root(&receiver), "{receiver}");
    assert!(is_root(&worker), "{worker}");
    // Every Puhuri Core call of the notification is a child of the worker's span.
    let all = spans(&received);
    let calls: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "puhuri" && s["traceId"] == trace)
        .collect();
    assert!(
        calls.len() >= 3,
        "fetch, set_backend_id and approve are spans: {calls:?}"
    );
    for call in &calls {
        assert_eq!(call["parentSpanId"], worker["spanId"], "{call}");
        let status = attribute(call, "status").and_then(|v| v["intValue"].as_str());
        assert!(status.is_some_and(|s| s.starts_with('2')), "{call}");
    }
    // Other root spans have traces of their own.
    for span in all
        .iter()
        .filter(|s| is_root(s) && s["name"] != "notification")
    {
        assert_ne!(span["traceId"], trace, "{span}");
    }
    for body in &received {
        let service = body["resourceSpans"][0]["resource"]["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
            .map(|a| &a["value"]);
        assert_eq!(
            service,
            Some(&json!({"stringValue": "approver-under-test"})),
            "{body}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}
