//! The operator's tools find the deployment the service runs with, or refuse: `dlq`
//! never answers "empty" for a queue it did not find, never creates a data folder, needs
//! no webhook secret, and on RabbitMQ declares nothing.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use puhuri_approver::notification::{AllocationHint, OrderUuid, WorkItem};
use puhuri_queue::{Broker, Kind};
use tokio_util::sync::CancellationToken;

use crate::helpers::{WAIT, amqp_url, temp_dir};

/// The service binary run in `cwd`, with none of the test's `PUHURI_APPROVER_*` variables.
fn tool(cwd: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PUHURI_APPROVER_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the binary")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An embedded queue in `dir` holding one dead letter with id `id`.
async fn queue_with_a_dead_letter(dir: &Path, id: &str) {
    let broker =
        Broker::open_embedded(dir, vec![Duration::from_millis(50)], Duration::from_secs(5))
            .expect("open the embedded queue");
    let item = WorkItem {
        id: id.into(),
        source: "tools".into(),
        event_type: "allocation.created".into(),
        hint: AllocationHint {
            order_uuid: OrderUuid::parse(&uuid::Uuid::new_v4().simple().to_string()),
            resource_uuid: None,
        },
        received_at_ms: 1,
    };
    let body = serde_json::to_vec(&item).expect("encode");
    broker
        .publish_work(Kind::Allocation, id, &body)
        .await
        .expect("publish");
    let stop = CancellationToken::new();
    let mut deliveries = broker.consume(1, &stop).await.expect("consumer");
    let delivery = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .expect("delivered in time")
        .expect("a delivery");
    delivery
        .dead_letter("Puhuri Core answered 403")
        .await
        .expect("dead-letter");
    stop.cancel();
}

#[tokio::test]
async fn dlq_finds_the_deployments_queue_or_refuses_and_creates_nothing() {
    let dir = temp_dir("tools-dlq");
    let queue = dir.join("queue");
    queue_with_a_dead_letter(&queue, "msg_tools_dead").await;
    // The deployment's config: its source's secret file is root-only elsewhere; the
    // tools do not read it.
    let config = dir.join("puhuri-approver.toml");
    std::fs::write(
        &config,
        format!(
            "[queue]\nbackend = \"embedded\"\ndata_dir = \"{}\"\n\n[[sources]]\nname = \"puhuri\"\nformat = \"waldur-hook\"\nauth = \"path-secret\"\nsecrets_file = \"{}\"\n",
            queue.display(),
            dir.join("not-readable-here").display()
        ),
    )
    .expect("write config");
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");

    let config_arg = config.display().to_string();
    let listed = tool(&elsewhere, &["dlq", "--config", &config_arg, "list"]);
    let (stdout, stderr) = text(&listed);
    assert!(listed.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("msg_tools_dead"), "{stdout}");
    assert!(stdout.contains("Puhuri Core answered 403"), "{stdout}");
    assert!(
        !stdout.contains("o:"),
        "a key prefix reached the operator: {stdout}"
    );

    // Without the config: no false all-clear, and no data folder appears.
    let guessed = tool(&elsewhere, &["dlq", "list"]);
    let (stdout, stderr) = text(&guessed);
    assert!(!guessed.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("empty"), "{stdout}");
    assert!(
        stderr.contains("no embedded queue in `puhuri-approver-data`"),
        "{stderr}"
    );
    assert!(stderr.contains("PUHURI_APPROVER_CONFIG"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&elsewhere).expect("read dir").count(),
        0,
        "the tool created something in its working directory"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn dlq_on_rabbitmq_declares_nothing_and_names_what_is_missing() {
    let dir = temp_dir("tools-rabbit");
    let prefix = format!("tools-{}", uuid::Uuid::new_v4().simple());
    let config = dir.join("puhuri-approver.toml");
    std::fs::write(
        &config,
        format!(
            "[queue]\nbackend = \"rabbitmq\"\n\n[amqp]\nurl = \"{}\"\nprefix = \"{prefix}\"\n",
            amqp_url()
        ),
    )
    .expect("write config");
    let config_arg = config.display().to_string();
    for _ in 0..2 {
        // Twice: a first run that declared the topology would let the second succeed.
        let listed = tool(&dir, &["dlq", "--config", &config_arg, "list"]);
        let (stdout, stderr) = text(&listed);
        assert!(!listed.status.success(), "{stdout}{stderr}");
        assert!(!stdout.contains("empty"), "{stdout}");
        assert!(stderr.contains("NOT_FOUND"), "{stderr}");
        assert!(stderr.contains(&prefix), "{stderr}");
        assert!(!stderr.contains("guest:guest"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
