//! `erred` as each Waldur release allows it, and the organisation data a provider can see,
//! against the simulator in each version mode.

use puhuri_approver::worker::Outcome;
use puhuri_sim::{CreatedAllocation, NewAllocation, RecordedCall, WaldurVersion};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, spawn_app};

const ERRED: &str = r#"
[[rule]]
name = "no-capacity"
when = 'limits.cpu_k_hours > 5000.0'
action = "erred"
backend_id = "{project.slug}_{resource.short_uuid}"
message = "{project.name}: no capacity for this request"

[default]
action = "hold"
note = "not an automatic case"
"#;

/// Approves the organisation abbreviated `UH` (as the provider's customers list names it).
pub const BY_ABBREVIATION: &str = r#"
[[rule]]
name = "known-university"
when = 'customer.abbreviation == "UH"'
action = "approve"
backend_id = "{customer.abbreviation}_{resource.short_uuid}"

[default]
action = "reject"
reason = "unknown organisation `{customer.abbreviation}`"
"#;

const BY_COUNTRY: &str = r#"
[[rule]]
name = "domestic"
when = 'customer.country == "FI" && "nordic" in customer.tags'
action = "approve"
backend_id = "{customer.country}_{resource.short_uuid}"

[default]
action = "reject"
reason = "not domestic"
"#;

async fn create_on(app: &TestApp, offering: &str, cpu: u64) -> CreatedAllocation {
    let request: NewAllocation = serde_json::from_value(json!({
        "offering": offering,
        "limits": {"cpu_k_hours": cpu},
    }))
    .expect("allocation request");
    app.sim
        .create_allocation(request)
        .await
        .expect("allocation created")
}

/// `<method> <action> <status>` for each write.
fn actions(calls: &[RecordedCall]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            let action = c
                .path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            format!("{} {action} {}", c.method, c.status)
        })
        .collect()
}

async fn erred_on_basic_is_one_reject_with_the_message(waldur: WaldurVersion) {
    let mut app = spawn_app(Options {
        policy: ERRED,
        waldur,
        ..Options::default()
    })
    .await;
    let broker = app.running.as_ref().expect("running").broker.clone();
    let rabbit = broker
        .as_rabbit()
        .expect("the integration tests run on RabbitMQ");
    let events = format!("{}.erred-test", broker.topology().events_exchange());
    rabbit
        .bind_events_queue(&events, "allocation.#")
        .await
        .expect("bind");

    let created = create_on(&app, "LUMI-C", 9000).await;
    assert_eq!(app.notify("msg_erred_basic", &created).await.status(), 202);
    let settled = app.settled("msg_erred_basic").await;
    let message = "Climate extremes: no capacity for this request";
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Rejected {
            reason: message.to_owned()
        })
    );
    let writes = app.writes_for(&created);
    assert_eq!(actions(&writes), vec!["POST reject_by_provider 200"]);
    assert_eq!(
        writes[0].body,
        json!({"provider_rejection_comment": message})
    );
    assert_eq!(app.order_state(&created), "rejected");
    let order = app.sim.order(&created.order_uuid).expect("order");
    assert_eq!(order["provider_rejection_comment"], message);
    assert_eq!(app.resource(&created)["state"], "Terminated");

    let published = rabbit
        .take_one(&events)
        .await
        .expect("read events")
        .expect("a decision event was published");
    let event: Value = serde_json::from_slice(&published.body).expect("event is JSON");
    assert_eq!(event["type"], "allocation.rejected");
    assert_eq!(event["action"], "erred");
    assert_eq!(event["written_as"], "rejected");
    assert_eq!(event["message"], message);
    assert_eq!(event["reason"], message);
    assert!(event.get("backend_id").is_none(), "{event}");
    app.stop().await;
}

#[tokio::test]
async fn an_erred_rule_on_a_basic_offering_rejects_with_the_message_on_7_0() {
    erred_on_basic_is_one_reject_with_the_message(WaldurVersion::V7_0).await;
}

#[tokio::test]
async fn an_erred_rule_on_a_basic_offering_rejects_with_the_message_on_8_0() {
    erred_on_basic_is_one_reject_with_the_message(WaldurVersion::V8_0).await;
}

#[tokio::test]
async fn an_erred_rule_on_a_slurm_offering_errs_the_order() {
    let mut app = spawn_app(Options {
        policy: ERRED,
        ..Options::default()
    })
    .await;
    let created = create_on(&app, "LUMI-Slurm", 9000).await;
    assert_eq!(app.notify("msg_erred_slurm", &created).await.status(), 202);
    let settled = app.settled("msg_erred_slurm").await;
    let message = "Climate extremes: no capacity for this request";
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Erred {
            message: message.to_owned()
        })
    );
    let writes = app.writes_for(&created);
    assert_eq!(
        actions(&writes),
        vec!["POST set_backend_id 200", "POST set_state_erred 200"]
    );
    assert_eq!(
        writes[1].body,
        json!({"error_message": message, "error_traceback": ""})
    );
    assert_eq!(app.order_state(&created), "erred");
    let order = app.sim.order(&created.order_uuid).expect("order");
    assert_eq!(order["error_message"], message);
    assert_eq!(app.resource(&created)["state"], "Erred");
    app.stop().await;
}

#[tokio::test]
async fn an_erred_rule_on_the_2021_api_sets_the_resource_state() {
    let mut app = spawn_app(Options {
        policy: ERRED,
        api: "resources",
        waldur: WaldurVersion::V2021,
        ..Options::default()
    })
    .await;
    let created = create_on(&app, "LUMI-C", 9000).await;
    assert_eq!(app.notify("msg_erred_2021", &created).await.status(), 202);
    let settled = app.settled("msg_erred_2021").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Erred { .. })),
        "{settled:?}"
    );
    let writes = app.writes_for(&created);
    assert_eq!(
        actions(&writes),
        vec!["POST set_backend_id 200", "POST set_state_by_provider 200"]
    );
    assert_eq!(writes[1].body, json!({"state": "erred"}));
    assert_eq!(app.resource(&created)["state"], "Erred");
    assert_ne!(app.order_state(&created), "pending-provider");
    app.stop().await;
}

#[tokio::test]
async fn the_abbreviation_comes_from_the_providers_customers_list() {
    let mut app = spawn_app(Options {
        policy: BY_ABBREVIATION,
        ..Options::default()
    })
    .await;
    // The consumer organisation's own record is not visible to the provider.
    let created = create_on(&app, "LUMI-C", 100).await;
    let detail = reqwest::Client::new()
        .get(format!(
            "{}/api/customers/{}/",
            app.sim_url, created.customer_uuid
        ))
        .header("authorization", format!("Token {}", crate::helpers::TOKEN))
        .send()
        .await
        .expect("simulator answers");
    assert_eq!(detail.status(), 404);

    assert_eq!(app.notify("msg_abbrev_uh", &created).await.status(), 202);
    let settled = app.settled("msg_abbrev_uh").await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Approved {
            backend_id: format!("UH_{}", &created.resource_uuid[..8])
        })
    );

    // Another organisation, listed once it has an allocation (the cache refetches a
    // customer it has not seen).
    let request: NewAllocation = serde_json::from_value(json!({
        "offering": "LUMI-C",
        "project": "Protein dynamics",
        "limits": {"cpu_k_hours": 100},
    }))
    .expect("allocation request");
    let kth = app.sim.create_allocation(request).await.expect("created");
    assert_eq!(app.notify("msg_abbrev_kth", &kth).await.status(), 202);
    let settled = app.settled("msg_abbrev_kth").await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Rejected {
            reason: "unknown organisation `KTH`".into()
        })
    );
    app.stop().await;
}

#[tokio::test]
async fn country_and_tags_come_from_the_customers_file() {
    let dir = crate::helpers::temp_dir("customers");
    let path = dir.join("customers.toml");
    std::fs::write(
        &path,
        "[customers.uh]\ncountry = \"FI\"\ntags = [\"nordic\"]\n\n[customers.kth]\ncountry = \"SE\"\ntags = [\"nordic\"]\n",
    )
    .expect("write customers file");
    let mut app = spawn_app(Options {
        policy: BY_COUNTRY,
        extra_config: format!("[policy]\ncustomers_file = \"{}\"\n", path.display()),
        ..Options::default()
    })
    .await;
    let created = create_on(&app, "LUMI-C", 100).await;
    assert_eq!(app.notify("msg_country_fi", &created).await.status(), 202);
    let settled = app.settled("msg_country_fi").await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Approved {
            backend_id: format!("FI_{}", &created.resource_uuid[..8])
        })
    );
    let request: NewAllocation = serde_json::from_value(json!({
        "offering": "LUMI-C",
        "project": "Protein dynamics",
        "limits": {"cpu_k_hours": 100},
    }))
    .expect("allocation request");
    let kth = app.sim.create_allocation(request).await.expect("created");
    assert_eq!(app.notify("msg_country_se", &kth).await.status(), 202);
    let settled = app.settled("msg_country_se").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Rejected { .. })),
        "{settled:?}"
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_worker_refuses_a_policy_reading_the_country_without_a_customers_file() {
    let config = puhuri_approver::config::Config::parse(
        "[queue]\nbackend = \"embedded\"\n[puhuri]\nurl = \"http://127.0.0.1:9/api/\"\ntoken = \"t\"\n",
        "refuse.toml",
        &std::collections::HashMap::new(),
    )
    .expect("config");
    let policy = puhuri_policy::Policy::parse(BY_COUNTRY).expect("policy");
    let started = puhuri_approver::app::start(
        &config,
        puhuri_approver::app::Roles {
            receive: false,
            work: true,
        },
        policy,
        None,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let Err(error) = started else {
        panic!(
            "a worker must not start with a policy reading `customer.country` without a customers file"
        );
    };
    let text = format!("{error:#}");
    assert!(
        text.contains("`customer.country` is never filled without a customers file"),
        "{text}"
    );
    assert!(text.contains("`customer.tags`"), "{text}");
    assert!(text.contains("policy.customers_file"), "{text}");
}

/// `policy check` knows what production can fill from the configuration it is given.
#[test]
fn policy_check_refuses_the_country_without_a_customers_file_and_warns_on_erred() {
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
        for (name, _) in std::env::vars() {
            if name.starts_with("PUHURI_APPROVER_") {
                command.env_remove(name);
            }
        }
        let output = command.args(args).output().expect("run the binary");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let dir = crate::helpers::temp_dir("policy-check");
    let country = dir.join("country.toml");
    std::fs::write(&country, BY_COUNTRY).expect("write policy");
    let erred = dir.join("erred.toml");
    std::fs::write(&erred, ERRED).expect("write policy");
    let bare = dir.join("bare.toml");
    std::fs::write(
        &bare,
        "[puhuri]\nurl = \"http://127.0.0.1:9/api/\"\napi = \"orders\"\n",
    )
    .expect("write config");
    let customers = dir.join("customers.toml");
    std::fs::write(&customers, "[customers.uh]\ncountry = \"FI\"\n").expect("write customers");
    let with_customers = dir.join("with-customers.toml");
    std::fs::write(
        &with_customers,
        "[puhuri]\nurl = \"http://127.0.0.1:9/api/\"\n\n[policy]\ncustomers_file = \"customers.toml\"\n",
    )
    .expect("write config");

    let country_path = country.display().to_string();
    let (code, _, stderr) = run(&[
        "policy",
        "check",
        &country_path,
        "--config",
        &bare.display().to_string(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{country_path}: `customer.country` is never filled without a customers file"
        )),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&[
        "policy",
        "check",
        &country_path,
        "--config",
        &with_customers.display().to_string(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
    // Without a configuration the missing file is a warning.
    let (code, _, stderr) = run(&["policy", "check", &country_path]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("warning: `customer.country`"), "{stderr}");

    let (code, _, stderr) = run(&["policy", "check", &erred.display().to_string()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("rule `no-capacity` (line 2): `erred` is written as a reject"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reloaded policy is held to the same rule as the one the worker started with.
#[test]
fn a_reloaded_policy_reading_the_country_needs_the_customers_file() {
    use puhuri_approver::reload::{PolicyFile, Reload};
    let dir = crate::helpers::temp_dir("reload-country");
    let path = dir.join("policy.toml");
    let running = puhuri_policy::Policy::parse(ERRED).expect("policy");
    std::fs::write(&path, ERRED).expect("write");
    let mut without = PolicyFile::new(path.clone(), &running);
    let mut with = PolicyFile::new(path.clone(), &running).with_customers_file(true);
    std::fs::write(&path, BY_COUNTRY).expect("write");
    match without.check(true) {
        Reload::Refused(reason) => assert!(
            reason.contains("`customer.country` is never filled without a customers file"),
            "{reason}"
        ),
        other => panic!("refused expected, got {other:?}"),
    }
    assert!(matches!(with.check(true), Reload::Compiled(_)));
    let _ = std::fs::remove_dir_all(&dir);
}
