//! OpenTelemetry export from a real `serve` process: the receiver's and the worker's spans
//! of one notification share a trace, and each Puhuri Core call is a child span.

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
    let trace = trace_id_for("msg_otel_1")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();

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
                    return ((*receiver).clone(), (*worker).clone(), calls.len());
                }
            }
            match bodies.recv().await {
                Some(body) => received.push(body),
                None => panic!("collector closed"),
            }
        }
    };
    let (receiver, worker, calls) = tokio::time::timeout(WAIT, wait)
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
    assert!(
        calls >= 3,
        "fetch, set_backend_id and approve are spans: {calls}"
    );
    assert_eq!(
        received[0]["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "approver-under-test"
    );
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}
