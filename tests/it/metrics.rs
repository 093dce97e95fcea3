//! Every exported metric moves when its event happens: scrape `/metrics`, act, scrape
//! again and compare. Each body is read with a Prometheus text-format parser
//! (`prometheus-parse`) and must describe every name of `METRIC_NAMES` with its type.
//! Also `/readyz`'s checks and the metrics listener of `work`.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_parse::{LineInfo, Sample, SampleType, Scrape, Value as Parsed};
use puhuri_approver::app::{self, Roles};
use puhuri_approver::config::Config;
use puhuri_approver::metrics::{self, METRIC_NAMES};
use puhuri_approver::reload::{self, PolicyFile};
use puhuri_approver::worker::Disposition;
use puhuri_policy::Policy;
use puhuri_sim::Faults;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, Options, SECRET, TestApp, spawn_app, temp_dir};
use crate::on_both_backends;

/// One `/metrics` body, checked line by line with a Prometheus text-format parser.
struct Exposition {
    text: String,
    /// The `# TYPE` of each family (histograms by their base name).
    types: HashMap<String, SampleType>,
    /// The `# HELP` text of each family.
    helps: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl std::fmt::Display for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The family a sample belongs to: itself, or the histogram of a `_bucket`, `_sum` or
/// `_count` series.
fn family<'a>(types: &HashMap<String, SampleType>, name: &'a str) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (types.get(base) == Some(&SampleType::Histogram)).then_some(base)
        })
        .unwrap_or(name)
}

/// Parses a whole exposition: every line must be a `# HELP`, a `# TYPE` or a sample with a
/// number (or an empty line); each family is described once, before its samples.
fn parse(text: String) -> Exposition {
    let mut types = HashMap::new();
    let mut helps = HashMap::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { metric_name, doc } => {
                let earlier = helps.insert(metric_name.to_owned(), doc.to_owned());
                assert!(earlier.is_none(), "a second HELP: {line}");
            }
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                let name = metric_alias.unwrap_or(metric_name);
                assert!(
                    helps.contains_key(&name),
                    "a TYPE without a HELP before it: {line}"
                );
                let earlier = types.insert(name, sample_type);
                assert!(earlier.is_none(), "a second TYPE: {line}");
            }
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                let base = family(&types, metric_name);
                assert!(types.contains_key(base), "a sample of no TYPE: {line}");
                let number = match value {
                    "+Inf" | "-Inf" | "NaN" => true,
                    v => v.parse::<f64>().is_ok(),
                };
                assert!(number, "not a number: {line}");
            }
            LineInfo::Empty => {}
            LineInfo::Ignored => panic!("not a metrics line: {line:?}"),
        }
    }
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("parses");
    Exposition {
        types,
        helps,
        samples: scrape.samples,
        text,
    }
}

async fn scrape(app: &TestApp) -> Exposition {
    let response = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics answer");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse(response.text().await.expect("metrics text"))
}

/// The type a name in `METRIC_NAMES` is exported as, by the naming convention.
fn expected_type(name: &str) -> SampleType {
    if name.ends_with("_total") {
        SampleType::Counter
    } else if name.ends_with("_duration_seconds") {
        SampleType::Histogram
    } else {
        SampleType::Gauge
    }
}

/// Every name in `METRIC_NAMES` is described with its type and a help text.
fn assert_describes_every_metric(exposition: &Exposition) {
    for name in METRIC_NAMES {
        assert_eq!(
            exposition.types.get(*name),
            Some(&expected_type(name)),
            "TYPE of {name}"
        );
        let help = exposition.helps.get(*name).map(String::as_str);
        assert!(help.is_some_and(|h| !h.is_empty()), "HELP of {name}");
    }
    assert_eq!(exposition.types.len(), METRIC_NAMES.len(), "{exposition}");
}

/// The value of one series, `name` or `name{label="value",...}` with every label, as the
/// parser read it (a counter must have been read as a counter, a gauge as a gauge); 0 when
/// absent. A histogram's `_bucket{le="…"}` is looked up among its parsed buckets.
fn value(exposition: &Exposition, series: &str) -> f64 {
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
        None => (series, ""),
    };
    let mut wanted: HashMap<&str, &str> = labels
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("label=value");
            (key, value.trim_matches('"'))
        })
        .collect();
    let base = family(&exposition.types, name);
    let bucket = (name.ends_with("_bucket") && base != name)
        .then(|| wanted.remove("le").expect("a bucket's le"));
    let metric = if bucket.is_some() { base } else { name };
    let Some(sample) = exposition.samples.iter().find(|sample| {
        sample.metric == metric
            && sample.labels.len() == wanted.len()
            && wanted.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
    }) else {
        return 0.0;
    };
    match (&sample.value, expected_type(base)) {
        (Parsed::Histogram(buckets), SampleType::Histogram) => {
            let le: f64 = match bucket.expect("a bucket series") {
                "+Inf" => f64::INFINITY,
                le => le.parse().expect("le"),
            };
            buckets
                .iter()
                .find(|b| b.less_than == le)
                .map_or(0.0, |b| b.count)
        }
        (Parsed::Untyped(v), SampleType::Histogram) => *v,
        (Parsed::Counter(v), SampleType::Counter) | (Parsed::Gauge(v), SampleType::Gauge) => *v,
        (other, _) => panic!("{series} was read as {other:?}"),
    }
}

fn notifications(source: &str, outcome: &str, cause: &str) -> String {
    format!(
        "{}{{source=\"{source}\",outcome=\"{outcome}\",cause=\"{cause}\"}}",
        metrics::NOTIFICATIONS
    )
}

async fn every_metric_moves_with_its_event(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let before = scrape(&app).await;
    assert_describes_every_metric(&before);
    assert_eq!(value(&before, metrics::BROKER_CONNECTED), 1.0);
    assert_eq!(value(&before, metrics::POLICY_LOADED), 1.0);

    // Accepted, confirmed, decided by a rule, with Puhuri Core calls.
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    assert_eq!(app.notify("msg_metrics_ok", &created).await.status(), 202);
    let backend_id = match app.settled("msg_metrics_ok").await.result {
        Ok(puhuri_approver::worker::Outcome::Approved { backend_id }) => backend_id,
        other => panic!("expected an approval: {other:?}"),
    };
    // A duplicate, a bad signature, an unknown source, an ignored Waldur event.
    assert_eq!(app.notify("msg_metrics_ok", &created).await.status(), 200);
    let body = json!({"type": "allocation.created", "order_uuid": created.order_uuid});
    let refused = app
        .post_signed(
            "relay",
            "msg_metrics_bad",
            body.to_string().as_bytes(),
            "whsec_bG9jYWwtZGVtby1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u",
        )
        .await;
    assert_eq!(refused.status(), 401);
    let unknown = app
        .post_signed("nobody", "msg_metrics_x", b"{}", SECRET)
        .await;
    assert_eq!(unknown.status(), 404);
    let ignored = app
        .post_signed(
            "waldur-relay",
            "msg_metrics_ignored",
            br#"{"event_type":"user_password_updated","context":{}}"#,
            SECRET,
        )
        .await;
    assert_eq!(ignored.status(), 202);

    // A Puhuri Core 500: a retry in the first tier, then success.
    let retried = app.create(json!({"cpu_k_hours": 20})).await;
    app.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(500),
        ..Faults::default()
    });
    app.notify("msg_metrics_retry", &retried).await;
    assert_eq!(
        app.settled("msg_metrics_retry").await.disposition,
        Disposition::RetryScheduled
    );
    app.settled("msg_metrics_retry").await;

    // A permanent failure: a dead letter.
    let dead = app.create(json!({"cpu_k_hours": 30})).await;
    app.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(403),
        ..Faults::default()
    });
    app.notify("msg_metrics_dead", &dead).await;
    assert_eq!(
        app.settled("msg_metrics_dead").await.disposition,
        Disposition::DeadLettered
    );

    let after = scrape(&app).await;
    assert_describes_every_metric(&after);
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved(&notifications("relay", "accepted", "")), 3.0);
    assert_eq!(moved(&notifications("relay", "duplicate", "")), 1.0);
    assert_eq!(
        moved(&notifications("relay", "rejected", "bad-signature")),
        1.0
    );
    assert_eq!(
        moved(&notifications("unknown", "rejected", "unknown-source")),
        1.0
    );
    assert_eq!(moved(&notifications("waldur-relay", "ignored", "")), 1.0);
    assert_eq!(moved(&format!("{}_count", metrics::CONFIRM_SECONDS)), 3.0);
    assert_eq!(
        moved(&format!(
            "{}_bucket{{le=\"+Inf\"}}",
            metrics::CONFIRM_SECONDS
        )),
        3.0
    );
    assert_eq!(
        moved(&format!(
            "{}{{action=\"approved\",rule=\"small-lumi-c\"}}",
            metrics::DECISIONS
        )),
        2.0
    );
    assert_eq!(
        moved(&format!("{}{{disposition=\"acked\"}}", metrics::DELIVERIES)),
        2.0
    );
    assert_eq!(
        moved(&format!(
            "{}{{disposition=\"dead-lettered\"}}",
            metrics::DELIVERIES
        )),
        1.0
    );
    assert_eq!(moved(&format!("{}{{tier=\"1\"}}", metrics::RETRIES)), 1.0);
    assert!(
        moved(&format!(
            "{}{{endpoint=\"get resource\",status=\"200\"}}",
            metrics::PUHURI_REQUESTS
        )) >= 2.0
    );
    assert_eq!(
        moved(&format!(
            "{}{{endpoint=\"get resource\",status=\"500\"}}",
            metrics::PUHURI_REQUESTS
        )),
        1.0
    );
    assert!(
        moved(&format!(
            "{}_count{{endpoint=\"get resource\"}}",
            metrics::PUHURI_SECONDS
        )) >= 3.0
    );
    assert!(value(&after, metrics::PUHURI_LAST_SUCCESS) > 1.0e9);
    assert_eq!(moved(metrics::DEAD_LETTER_DEPTH), 1.0);
    // Both approvals published their team's snapshot.
    assert_eq!(
        moved(&format!(
            "{}{{type=\"team.snapshot\"}}",
            metrics::TEAM_EVENTS
        )),
        2.0
    );

    // A reconcile cycle (what it enqueues is decided later; only its own counters are
    // compared below).
    let reconciler = app
        .running
        .as_ref()
        .and_then(|r| r.reconciler.clone())
        .expect("reconciler");
    let report = reconciler.run_cycle().await.expect("cycle");

    // Usage: one record reported, one refused (a closed month).
    let mut usage = app
        .running
        .as_ref()
        .and_then(|r| r.worker.as_ref())
        .expect("worker")
        .subscribe_usage();
    let now = time::OffsetDateTime::now_utc();
    let month = format!("{:04}-{:02}", now.year(), u8::from(now.month()));
    let broker = app.running.as_ref().expect("running").broker.clone();
    for (id, month) in [("usage-ok", month.as_str()), ("usage-closed", "2020-01")] {
        let record = json!({"backend_id": backend_id, "component": "cpu_k_hours", "amount": "1", "month": month});
        puhuri_approver::work::publish_usage(&broker, record.to_string().as_bytes(), id)
            .await
            .expect("usage queued");
    }
    let mut usage_records = 0;
    while usage_records < 2 {
        let batch = tokio::time::timeout(crate::helpers::WAIT, usage.recv())
            .await
            .expect("usage settled in time")
            .expect("usage events");
        usage_records += batch.records;
    }

    // A policy reload refused, then one applied.
    let worker = app
        .running
        .as_ref()
        .and_then(|r| r.worker.clone())
        .expect("worker");
    let dir = temp_dir("metrics-policy");
    let path = dir.join("policy.toml");
    std::fs::write(&path, crate::helpers::APPROVE_SMALL).expect("write");
    let running = Policy::parse(crate::helpers::APPROVE_SMALL).expect("valid");
    let mut file = PolicyFile::new(path.clone(), &running);
    std::fs::write(&path, "[[rule]]\nname = 1\n").expect("write");
    reload::apply(&mut file, worker.policy_handle(), worker.metrics(), true);
    std::fs::write(&path, format!("{}\n# v2\n", crate::helpers::APPROVE_SMALL)).expect("write");
    reload::apply(&mut file, worker.policy_handle(), worker.metrics(), true);
    let _ = std::fs::remove_dir_all(&dir);

    let before = after;
    let after = scrape(&app).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(&format!("{}{{result=\"ok\"}}", metrics::RECONCILE_CYCLES)),
        1.0
    );
    assert_eq!(moved(metrics::RECONCILE_CALLS), report.calls as f64);
    assert!(report.calls >= 1);
    assert_eq!(moved(metrics::RECONCILE_ENQUEUED), report.enqueued as f64);
    assert_eq!(moved(metrics::POLICY_RELOADS), 1.0);
    assert_eq!(moved(metrics::POLICY_RELOAD_FAILURES), 1.0);
    let usage_series =
        |outcome: &str| format!("{}{{outcome=\"{outcome}\"}}", metrics::USAGE_RECORDS);
    assert_eq!(moved(&usage_series("reported")), 1.0);
    assert_eq!(moved(&usage_series("dead-lettered")), 1.0);
    assert_eq!(moved(metrics::USAGE_REPORTS), 1.0);
    app.stop().await;
}

/// Queue depth and the oldest pending message's age, with nobody consuming.
async fn queue_depth_and_age_move_while_nobody_consumes(backend: Backend) {
    let app = spawn_app(Options {
        backend,
        roles: Roles {
            receive: true,
            work: false,
        },
        ..Options::default()
    })
    .await;
    let before = scrape(&app).await;
    assert_eq!(value(&before, metrics::QUEUE_DEPTH), 0.0);
    assert_eq!(value(&before, metrics::QUEUE_OLDEST_AGE), 0.0);
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    assert_eq!(
        app.notify("msg_metrics_waiting", &created).await.status(),
        202
    );
    let running = app.running.as_ref().expect("running");
    if backend == Backend::RabbitMq {
        // RabbitMQ does not tell a message's age: the last delivered message's stands in.
        let five_seconds_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
            - 5000;
        running.metrics.delivered(five_seconds_ago);
    } else {
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // RabbitMQ counts a published message as ready after a short while.
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    let after = loop {
        let after = scrape(&app).await;
        if value(&after, metrics::QUEUE_DEPTH) >= 1.0 || tokio::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(value(&after, metrics::QUEUE_DEPTH), 1.0);
    assert!(value(&after, metrics::QUEUE_OLDEST_AGE) >= 1.0, "{after}");
    // A receiver-only process checks only the broker.
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["policy"], "not-applicable");
    app.stop().await;
}

on_both_backends!(
    every_metric_moves_with_its_event,
    queue_depth_and_age_move_while_nobody_consumes
);

#[tokio::test]
async fn broker_down_shows_in_metrics_and_readiness() {
    let app = spawn_app(Options {
        amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        expect_broker: false,
        roles: Roles {
            receive: true,
            work: false,
        },
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    assert_eq!(app.notify("msg_metrics_down", &created).await.status(), 503);
    let text = scrape(&app).await;
    assert_eq!(value(&text, metrics::BROKER_CONNECTED), 0.0);
    assert_eq!(
        value(
            &text,
            &notifications("relay", "unavailable", "broker-unavailable")
        ),
        1.0
    );
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["broker"], "disconnected");
    app.stop().await;
}

#[tokio::test]
async fn readiness_stays_ok_after_one_failure_following_good_answers() {
    let mut app = spawn_app(Options {
        retry_delays_ms: "[2000]",
        ..Options::default()
    })
    .await;
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["checks"],
        json!({"broker": "ok", "policy": "ok", "puhuri": "ok"})
    );
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    app.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(502),
        ..Faults::default()
    });
    app.notify("msg_metrics_unreachable", &created).await;
    assert_eq!(
        app.settled("msg_metrics_unreachable").await.disposition,
        Disposition::RetryScheduled
    );
    // The start-up probe's good answers are recent: one failure does not make Puhuri Core
    // unreachable (that takes failures without a good answer for `PUHURI_RECENT`).
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["puhuri"], "ok");
    // The retry reaches it.
    app.settled("msg_metrics_unreachable").await;
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// A `work`-only process serves `/metrics`, `/healthz` and `/readyz` on `metrics_listen`
/// (it has no other port).
#[tokio::test]
async fn a_work_only_process_serves_metrics_on_metrics_listen() {
    let dir = temp_dir("metrics-listen");
    let text = format!(
        "metrics_listen = \"127.0.0.1:0\"\n[queue]\nbackend = \"embedded\"\ndata_dir = \"{}\"\n\
         [reconcile]\ninterval_secs = 0\n[puhuri]\nurl = \"http://127.0.0.1:1/api/\"\ntoken = \"t\"\n",
        dir.display()
    );
    let config = Config::parse(
        &text,
        "test.toml",
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let policy = Policy::parse(crate::helpers::APPROVE_SMALL).expect("policy");
    let roles = Roles {
        receive: false,
        work: true,
    };
    let running = app::start(&config, roles, policy, None, CancellationToken::new())
        .await
        .expect("starts");
    assert_eq!(running.addr, None);
    let addr = running.metrics_addr.expect("metrics listener");
    let http = reqwest::Client::new();
    let text = parse(
        http.get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("answer")
            .text()
            .await
            .expect("text"),
    );
    assert_describes_every_metric(&text);
    assert_eq!(value(&text, metrics::POLICY_LOADED), 1.0);
    assert_eq!(value(&text, metrics::BROKER_CONNECTED), 1.0);
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(health.status(), 200);
    let ready: Value = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["checks"]["policy"], "ok", "{ready}");
    // Puhuri Core does not answer: start-up went on, the workers wait for the probe.
    assert_eq!(ready["checks"]["puhuri"], "probing", "{ready}");
    assert!(ready["probe"]["pending"].is_string(), "{ready}");
    assert_eq!(ready["circuit"]["reason"], "probing", "{ready}");
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A `receive`-only process serves `/metrics`, `/healthz` and `/readyz` on
/// `metrics_listen` too, and still on its public port.
#[tokio::test]
async fn a_receive_only_process_serves_metrics_on_metrics_listen() {
    let dir = temp_dir("metrics-listen-receive");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [queue]\nbackend = \"embedded\"\ndata_dir = \"{}\"\n\
         [[sources]]\nname = \"relay\"\nformat = \"allocation\"\nauth = \"standard-webhooks\"\nsecrets = [\"{SECRET}\"]\n",
        dir.display()
    );
    let config = Config::parse(
        &text,
        "test.toml",
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let roles = Roles {
        receive: true,
        work: false,
    };
    let running = app::start(
        &config,
        roles,
        Policy::hold_everything(),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("starts");
    let public = running.addr.expect("receiver");
    let addr = running.metrics_addr.expect("metrics listener");
    assert_ne!(public, addr);
    let http = reqwest::Client::new();

    // A notification on the public port is counted on the metrics port.
    let body = br#"{"type":"allocation.created","order_uuid":"6e675515b2b34e1f9e4f2bb6f0a1c2d3"}"#;
    let secret = puhuri_auth::signature::WebhookSecret::parse(SECRET).expect("secret");
    let timestamp = crate::helpers::now();
    let answer = http
        .post(format!("http://{public}/v1/notifications/relay"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_metrics_listen_receive")
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            secret.sign("msg_metrics_listen_receive", timestamp, body),
        )
        .body(body.to_vec())
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 202);

    let response = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let text = parse(response.text().await.expect("text"));
    assert_eq!(value(&text, metrics::BROKER_CONNECTED), 1.0);
    assert_eq!(
        value(&text, &notifications("relay", "accepted", "")),
        1.0,
        "{text}"
    );
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(health.status(), 200);
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["checks"]["policy"], "not-applicable", "{ready}");
    // The public port serves them as well.
    let public_metrics = http
        .get(format!("http://{public}/metrics"))
        .send()
        .await
        .expect("answer");
    assert_eq!(public_metrics.status(), 200);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
