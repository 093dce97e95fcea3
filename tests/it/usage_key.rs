//! Usage records are batched by the allocation, not by how they name it: readings of one
//! component naming the allocation by `resource_uuid` and by `backend_id` at once go into
//! one batch and one `set_usage`, and the newest reading wins every time.

use std::time::Duration;

use puhuri_approver::usage::report::UsageSettled;
use puhuri_approver::worker::Outcome;
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestApp, spawn_app};
use crate::on_both_backends;

/// Rounds of the race; the naming that carries the newer reading alternates.
const ROUNDS: usize = 16;

fn current_month() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

fn set_usage_calls(app: &TestApp) -> usize {
    app.sim
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/set_usage/") && c.status < 300)
        .count()
}

async fn settled_records(
    receiver: &mut tokio::sync::broadcast::Receiver<UsageSettled>,
    records: usize,
) -> Vec<UsageSettled> {
    let mut seen: Vec<UsageSettled> = Vec::new();
    let wait = async {
        while seen.iter().map(|s| s.records).sum::<usize>() < records {
            match receiver.recv().await {
                Ok(settled) => seen.push(settled),
                Err(error) => panic!("usage events ended: {error}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("usage records not settled in time: {seen:?}"));
    seen
}

async fn both_namings_of_one_allocation_race_and_the_newest_reading_wins(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        usage_linger_ms: 600,
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 500})).await;
    assert_eq!(app.notify("msg_usage_race", &created).await.status(), 202);
    let backend_id = match app.settled("msg_usage_race").await.result {
        Ok(Outcome::Approved { backend_id }) => backend_id,
        other => panic!("expected an approval, got {other:?}"),
    };
    let broker = app.running.as_ref().expect("running").broker.clone();
    let mut settled = app
        .running
        .as_ref()
        .and_then(|r| r.worker.as_ref())
        .expect("worker")
        .subscribe_usage();
    let month = current_month();
    let by_uuid = json!({"resource_uuid": created.resource_uuid});
    let by_backend_id = json!({"backend_id": backend_id});
    let mut wrong = 0;
    for round in 0..ROUNDS {
        let (newer_naming, older_naming) = if round % 2 == 0 {
            (&by_uuid, &by_backend_id)
        } else {
            (&by_backend_id, &by_uuid)
        };
        let reading = |naming: &Value, amount: usize, minute: usize| {
            let mut record = json!({
                "component": "cpu_k_hours",
                "amount": amount.to_string(),
                "month": month,
                "measured_at": format!("2026-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60),
            });
            if let (Some(record), Some(naming)) = (record.as_object_mut(), naming.as_object()) {
                record.extend(naming.clone());
            }
            record
        };
        let newer = reading(newer_naming, 10 * round + 2, 2 * round + 1);
        let older = reading(older_naming, 10 * round + 1, 2 * round);
        let calls_before = set_usage_calls(&app);
        // The newer reading is queued first, the older right behind it.
        for (i, record) in [&newer, &older].into_iter().enumerate() {
            puhuri_approver::work::publish_usage(
                &broker,
                &serde_json::to_vec(record).expect("json"),
                &format!("usage-race-{round}-{i}"),
            )
            .await
            .expect("usage record queued");
        }
        let batches = settled_records(&mut settled, 2).await;
        let stored = app.sim.usages(&created.resource_uuid);
        let amount = stored
            .iter()
            .find(|u| u["type"] == "cpu_k_hours")
            .and_then(|u| u["usage"].as_str())
            .unwrap_or_default()
            .to_owned();
        let expected = format!("{}.00", 10 * round + 2);
        if amount != expected {
            wrong += 1;
            eprintln!("round {round}: stored {amount}, expected {expected}: {batches:?}");
        }
        assert_eq!(batches.len(), 1, "round {round}: one batch: {batches:?}");
        assert_eq!(
            set_usage_calls(&app) - calls_before,
            1,
            "round {round}: one set_usage"
        );
    }
    eprintln!("usage race ({backend:?}): {ROUNDS} rounds, the older reading won {wrong} times");
    assert_eq!(wrong, 0);
    app.stop().await;
}

on_both_backends!(both_namings_of_one_allocation_race_and_the_newest_reading_wins);
