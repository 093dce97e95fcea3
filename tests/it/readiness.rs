//! Readiness means the queue can take work: when the embedded queue's files are deleted
//! or replaced under a running receiver, `/readyz` fails and notifications are answered
//! 503 (problem+json, `Retry-After`) instead of 202 for writes that would vanish.

use std::time::Duration;

use puhuri_approver::app::Roles;

use crate::helpers::{Backend, Options, TestApp, spawn_app};

async fn receiver() -> TestApp {
    spawn_app(Options {
        backend: Backend::Embedded,
        roles: Roles {
            receive: true,
            work: false,
        },
        ..Options::default()
    })
    .await
}

/// Posts a notification and checks it is refused as unavailable, as problem+json.
async fn assert_refused(app: &TestApp, id: &str) {
    let created = app.create(serde_json::json!({"cpu_k_hours": 10})).await;
    let response = app.notify(id, &created).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
}

fn queue_files(app: &TestApp) -> Vec<std::path::PathBuf> {
    let dir = app.data_dir.as_ref().expect("embedded data folder");
    ["queue.sqlite3", "queue.sqlite3-wal", "queue.sqlite3-shm"]
        .iter()
        .map(|name| dir.join(name))
        .collect()
}

#[tokio::test]
async fn deleted_queue_files_fail_readiness_and_writes_are_refused() {
    let app = receiver().await;
    let created = app.create(serde_json::json!({"cpu_k_hours": 10})).await;
    assert_eq!(
        app.notify("msg_before_delete", &created).await.status(),
        202
    );
    assert_eq!(app.readyz().await.0, 200);
    for file in queue_files(&app) {
        std::fs::remove_file(&file).expect("delete a queue file");
    }
    // The next write finds the files gone before it commits.
    assert_refused(&app, "msg_after_delete").await;
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["broker"], "disconnected", "{body}");
    // And it stays so: nothing it accepted could survive a restart.
    assert_refused(&app, "msg_after_delete_2").await;
    app.stop().await;
}

#[tokio::test]
async fn a_replaced_queue_file_fails_readiness_without_traffic_and_writes_are_refused() {
    let app = receiver().await;
    let created = app.create(serde_json::json!({"cpu_k_hours": 10})).await;
    assert_eq!(
        app.notify("msg_before_replace", &created).await.status(),
        202
    );
    assert_eq!(app.readyz().await.0, 200);
    // Another file at the same path, as a restore from a backup would leave it.
    let database = &queue_files(&app)[0];
    let copy = database.with_extension("copy");
    std::fs::copy(database, &copy).expect("copy the database");
    std::fs::rename(&copy, database).expect("replace the database");
    // Without any write, the periodic check finds it (every second).
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (status, _, _) = app.readyz().await;
            if status == 503 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        failed.is_ok(),
        "/readyz stayed 200 with a replaced database"
    );
    assert_refused(&app, "msg_after_replace").await;
    app.stop().await;
}
