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

/// A command's stdout and stderr, checked to be written for people.
fn text(output: &Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    crate::helpers::assert_for_people("stdout", &stdout);
    crate::helpers::assert_for_people("stderr", &stderr);
    (stdout, stderr)
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

/// Runs the binary off the async runtime (the in-process simulator answers it meanwhile).
async fn tool_async(cwd: &Path, args: Vec<String>) -> Output {
    let cwd = cwd.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tool(&cwd, &args)
    })
    .await
    .expect("join")
}

/// `policy explain --online` gathers the allocation as a worker does (here the
/// organisation's abbreviation from the provider's customers list), so it shows the
/// decision the worker would take; a resource read from a file lacks it, and says so.
#[tokio::test]
async fn policy_explain_online_decides_as_the_worker_and_a_file_names_what_it_lacks() {
    let app = crate::helpers::spawn_app(crate::helpers::Options {
        policy: crate::erred::BY_ABBREVIATION,
        // Nothing is written, so the allocation keeps waiting.
        shadow: true,
        ..crate::helpers::Options::default()
    })
    .await;
    let request: puhuri_sim::NewAllocation = serde_json::from_value(
        serde_json::json!({"offering": "LUMI-C", "limits": {"cpu_k_hours": 100}}),
    )
    .expect("request");
    let created = app.sim.create_allocation(request).await.expect("created");
    let dir = temp_dir("explain-online");
    let config = app.write_config(&dir).display().to_string();
    let policy = dir.join("policy.toml").display().to_string();

    for id in [&created.resource_uuid, &created.order_uuid] {
        let output = tool_async(
            &dir,
            [
                "policy", "explain", &policy, "--online", id, "--config", &config,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await;
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{id}: {stdout}{stderr}");
        assert!(
            stdout.contains("decision: approve by rule `known-university`"),
            "{id}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("backend_id: UH_{}", &created.resource_uuid[..8])),
            "{id}: {stdout}"
        );
        assert!(!stdout.contains("not fetched"), "{id}: {stdout}");
    }

    // The same allocation as Puhuri Core renders it, from a file: no abbreviation.
    let resource: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/api/marketplace-provider-resources/{}/",
            app.sim_url, created.resource_uuid
        ))
        .header("authorization", format!("Token {}", crate::helpers::TOKEN))
        .send()
        .await
        .expect("simulator answers")
        .json()
        .await
        .expect("JSON");
    let file = dir.join("resource.json");
    std::fs::write(&file, resource.to_string()).expect("write resource");
    let output = tool_async(
        &dir,
        vec![
            "policy".into(),
            "explain".into(),
            policy.clone(),
            file.display().to_string(),
        ],
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("decision: reject by the default"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not fetched: the organisation's abbreviation"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}
