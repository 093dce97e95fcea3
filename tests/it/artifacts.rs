//! The deployment artifacts agree with the code: every metric name the Grafana dashboard,
//! the alert rules, the Kubernetes manifests and the operations guide mention is one the
//! service exports (a renamed metric breaks this test), the dashboard shows every metric,
//! the RabbitMQ definitions declare the topology the service uses, and the image, the
//! compose stack and the manifests run commands the binary has, check health with
//! `healthcheck` or `/readyz`, and scrape `metrics_listen`.
//! (`promtool check rules` and `systemd-analyze verify` run in `.ci/run`.)

use std::collections::BTreeSet;
use std::path::Path;

use puhuri_approver::config::Config;
use puhuri_approver::metrics::{METRIC_NAMES, is_exported};
use puhuri_queue::Topology;
use serde_json::Value;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `puhuri_approver_*` identifier in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("puhuri_approver_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // A bare prefix (`puhuri_approver_*` in prose) names no metric.
        if !tail[..end].ends_with('_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

const ARTIFACTS: &[&str] = &[
    "deploy/grafana/puhuri-approver.json",
    "deploy/prometheus/alerts.yml",
    "deploy/k8s/configmap.yaml",
    "deploy/k8s/receiver.yaml",
    "deploy/k8s/worker.yaml",
    "deploy/k8s/secret.yaml",
    "deploy/compose/compose.yaml",
    "docs/operations.md",
];

#[test]
fn every_metric_an_artifact_names_is_exported() {
    for path in ARTIFACTS {
        for name in metric_names(&read(path)) {
            assert!(
                is_exported(&name),
                "{path} names `{name}`, which is not exported"
            );
        }
    }
}

#[test]
fn the_alert_rules_cover_the_pages_an_operator_needs() {
    let alerts = read("deploy/prometheus/alerts.yml");
    let used = metric_names(&alerts);
    for needed in [
        puhuri_approver::metrics::DEAD_LETTER_DEPTH,
        puhuri_approver::metrics::QUEUE_OLDEST_AGE,
        puhuri_approver::metrics::BROKER_CONNECTED,
        puhuri_approver::metrics::PUHURI_REQUESTS,
    ] {
        assert!(used.contains(needed), "no alert on {needed}");
    }
    // Every rule has an expression.
    let alerts_count = alerts.matches("- alert:").count();
    assert!(alerts_count >= 4);
    assert_eq!(alerts_count, alerts.matches("expr:").count());
}

#[test]
fn the_dashboard_parses_and_shows_every_metric() {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/puhuri-approver.json")).expect("dashboard json");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut shown = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "panel without a query: {}",
            panel["title"]
        );
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            shown.extend(metric_names(expr));
        }
    }
    for name in METRIC_NAMES {
        let on_dashboard = shown
            .iter()
            .any(|s| s == name || s.strip_suffix("_bucket") == Some(name));
        assert!(on_dashboard, "the dashboard does not show {name}");
    }
}

#[test]
fn the_kubernetes_manifests_probe_and_scrape_the_served_endpoints() {
    // Receivers and workers alike: probes and scrapes on metrics_listen (9090).
    for (path, role) in [
        ("deploy/k8s/receiver.yaml", "receive"),
        ("deploy/k8s/worker.yaml", "work"),
    ] {
        let text = read(path);
        for needle in [
            "kind: Deployment",
            "kind: PodDisruptionBudget",
            "path: /healthz",
            "path: /readyz",
            "prometheus.io/path: /metrics",
            "prometheus.io/port: \"9090\"",
            "- name: metrics\n              containerPort: 9090",
            "runAsNonRoot: true",
        ] {
            assert!(text.contains(needle), "{path} lacks `{needle}`");
        }
        assert_eq!(
            text.matches("port: metrics").count(),
            2,
            "{path}: both probes on the metrics port"
        );
        let args =
            format!("args: [\"{role}\", \"--config\", \"/etc/puhuri-approver/config.toml\"]");
        assert!(text.contains(&args), "{path} lacks `{args}`");
        assert!(
            text.contains("mountPath: /etc/puhuri-approver/config.toml"),
            "{path}"
        );
        assert_parses(
            path,
            &[role, "--config", "/etc/puhuri-approver/config.toml"],
        );
    }
    let config = read("deploy/k8s/configmap.yaml");
    assert!(config.contains("metrics_listen = \"0.0.0.0:9090\""));
    assert!(config.contains("listen = \"0.0.0.0:8080\""));
}

/// The service's command line accepts `args` (a command an artifact runs).
fn assert_parses(artifact: &str, args: &[&str]) {
    use clap::Parser;
    let argv = std::iter::once("puhuri-approver").chain(args.iter().copied());
    if let Err(error) = puhuri_approver::cli::Cli::try_parse_from(argv) {
        panic!(
            "{artifact} runs `puhuri-approver {}`: {error}",
            args.join(" ")
        );
    }
}

/// The quoted strings of a JSON-style list on the line after `key` (`["a", "b"]`).
fn exec_list(line: &str) -> Vec<String> {
    let Some(start) = line.find('[') else {
        return Vec::new();
    };
    let end = line.rfind(']').unwrap_or(line.len());
    line[start + 1..end]
        .split(',')
        .map(|item| item.trim().trim_matches('"').to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

#[test]
fn the_image_builds_the_production_binary_and_checks_its_health() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    let text = lines.join("\n");
    // The production binary without the tools (no simulator, no demo); the simulator apart.
    assert!(
        text.contains("-p puhuri-approver --no-default-features --bin puhuri-approver"),
        "{text}"
    );
    assert!(text.contains("-p puhuri-sim --bin puhuri-sim"), "{text}");
    assert!(
        text.contains("AS sim"),
        "a `sim` target for the compose stack"
    );
    // The configuration at the documented path, read through PUHURI_APPROVER_CONFIG.
    assert!(
        text.contains("PUHURI_APPROVER_CONFIG=/etc/puhuri-approver/config.toml"),
        "{text}"
    );
    // The default target is the last stage: its command, entrypoint and health check.
    let last_stage = text.rsplit("\nFROM ").next().unwrap_or_default();
    assert!(
        last_stage.contains("/usr/local/bin/puhuri-approver"),
        "{last_stage}"
    );
    let line_of = |prefix: &str| {
        last_stage
            .lines()
            // An instruction, not the continuation line of another (`  CMD` of HEALTHCHECK).
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("the runtime stage has no `{prefix}`"))
            .to_owned()
    };
    let from_healthcheck = &last_stage[last_stage.find("HEALTHCHECK").expect("HEALTHCHECK")..];
    let healthcheck_line = from_healthcheck
        .lines()
        .find(|line| line.contains("CMD"))
        .expect("HEALTHCHECK CMD");
    let healthcheck = exec_list(healthcheck_line);
    assert_eq!(
        healthcheck,
        ["/usr/local/bin/puhuri-approver", "healthcheck"],
        "the HEALTHCHECK"
    );
    assert_parses("the HEALTHCHECK", &["healthcheck"]);
    let command = exec_list(&line_of("CMD"));
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    assert_eq!(args, ["serve"], "the default command");
    assert_parses("the default command", &args);
    assert_eq!(
        exec_list(&line_of("ENTRYPOINT")),
        ["/usr/local/bin/puhuri-approver"]
    );
    // No policy is shipped: nothing is decided by an example policy by mistake.
    assert!(!text.contains("policy.toml"), "{text}");
}

#[test]
fn the_compose_stack_runs_the_simulator_binary_and_checks_health() {
    let compose = read("deploy/compose/compose.yaml");
    let section = |name: &str| -> String {
        let header = format!("  {name}:");
        let mut lines = compose.lines().skip_while(|line| *line != header).skip(1);
        let mut body = String::new();
        for line in lines.by_ref() {
            if !(line.is_empty() || line.starts_with("    ")) {
                break;
            }
            body.push_str(line);
            body.push('\n');
        }
        assert!(!body.is_empty(), "no `{name}` service");
        body
    };
    // The approver services share the anchor holding the health check.
    let anchor = compose
        .split("x-approver: &approver")
        .nth(1)
        .and_then(|rest| rest.split("\nservices:").next())
        .expect("the x-approver anchor");
    assert!(
        anchor.contains(r#"test: ["CMD", "/usr/local/bin/puhuri-approver", "healthcheck"]"#),
        "{anchor}"
    );
    assert!(
        anchor.contains("/etc/puhuri-approver/config.toml:ro"),
        "the configuration at the image's path: {anchor}"
    );
    for (service, role) in [("receiver", "receive"), ("worker", "work")] {
        let body = section(service);
        assert!(body.contains("<<: *approver"), "{service}");
        let command = body
            .lines()
            .find(|line| line.trim_start().starts_with("command:"))
            .map(exec_list)
            .unwrap_or_default();
        assert_eq!(command, [role], "{service}");
        assert_parses(service, &[role]);
    }
    let sim = section("sim");
    assert!(sim.contains("target: sim"), "{sim}");
    assert!(
        !sim.contains("*approver"),
        "the simulator is not the service: {sim}"
    );
    let config = read("deploy/compose/puhuri-approver.toml");
    assert!(config.contains("metrics_listen = \"0.0.0.0:9090\""));
}

#[test]
fn the_rabbitmq_definitions_declare_the_services_topology() {
    let definitions: Value =
        serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).expect("json");
    let config = Config::parse(
        "",
        "default.toml",
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("defaults");
    let topology = Topology {
        prefix: config.amqp.prefix.clone(),
        retry_delays: config.worker.retry_delays.clone(),
    };
    let names = |key: &str| -> BTreeSet<String> {
        definitions[key]
            .as_array()
            .expect(key)
            .iter()
            .filter_map(|item| item["name"].as_str().map(str::to_owned))
            .collect()
    };
    let queues: BTreeSet<String> = topology.queues().into_iter().collect();
    assert_eq!(names("queues"), queues);
    let exchanges: BTreeSet<String> = [
        topology.work_exchange(),
        topology.retry_exchange(),
        topology.dead_exchange(),
        topology.events_exchange(),
    ]
    .into_iter()
    .collect();
    assert_eq!(names("exchanges"), exchanges);
    for queue in definitions["queues"].as_array().expect("queues") {
        assert_eq!(queue["arguments"]["x-queue-type"], "quorum", "{queue}");
    }
}

#[test]
fn the_systemd_units_run_the_three_roles_hardened() {
    for (unit, role) in [
        ("deploy/systemd/puhuri-approver.service", "serve"),
        ("deploy/systemd/puhuri-approver-receive.service", "receive"),
        ("deploy/systemd/puhuri-approver-work.service", "work"),
    ] {
        let text = read(unit);
        assert!(
            text.contains(&format!(
                "ExecStart=/usr/local/bin/puhuri-approver {role} --config"
            )),
            "{unit}"
        );
        for option in [
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "TimeoutStopSec=40",
        ] {
            assert!(text.contains(option), "{unit} lacks {option}");
        }
        // Secrets never on the command line.
        assert!(!text.contains("--token"), "{unit}");
    }
}

/// The `key: |` block of a YAML file, unindented (the ConfigMap's embedded files).
fn yaml_block(text: &str, key: &str) -> String {
    let header = format!("  {key}: |");
    let mut lines = text.lines().skip_while(|line| *line != header).skip(1);
    let mut block = String::new();
    for line in lines.by_ref() {
        if !(line.is_empty() || line.starts_with("    ")) {
            break;
        }
        block.push_str(line.get(4..).unwrap_or(""));
        block.push('\n');
    }
    assert!(!block.trim().is_empty(), "no `{key}` block");
    block
}

/// The secrets the shipped configurations take from the environment, as placeholders.
fn shipped_env() -> std::collections::HashMap<String, String> {
    [
        ("PUHURI_APPROVER_PUHURI_TOKEN", "token"),
        (
            "PUHURI_APPROVER_SOURCE_SIM_SECRETS",
            "whsec_bG9jYWwtZGVtby1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u",
        ),
        (
            "PUHURI_APPROVER_SOURCE_PUHURI_SECRETS",
            "CHANGE-ME-TO-A-RANDOM-STRING-OF-AT-LEAST-32-CHARACTERS",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn the_shipped_configurations_and_policy_are_valid() {
    let env = shipped_env();
    use puhuri_approver::app::Roles;
    let compose = read("deploy/compose/puhuri-approver.toml");
    let config = Config::parse(&compose, "compose.toml", &env).expect("compose config");
    assert!(config.metrics_listen.is_some());
    config
        .require("serve", Roles::ALL.needs())
        .expect("the compose config runs every role");
    let local = read("deploy/local/puhuri-approver.toml");
    let config = Config::parse(&local, "local.toml", &env).expect("local config");
    config
        .require("serve", Roles::ALL.needs())
        .expect("the local config runs every role");
    let configmap = read("deploy/k8s/configmap.yaml");
    let config = Config::parse(
        &yaml_block(&configmap, "puhuri-approver.toml"),
        "configmap.toml",
        &env,
    )
    .expect("ConfigMap config");
    assert_eq!(
        config.metrics_listen.map(|a| a.port()),
        Some(9090),
        "the probes' and scrapes' port"
    );
    config
        .require("serve", Roles::ALL.needs())
        .expect("the ConfigMap's config runs every role");
    puhuri_policy::Policy::parse(&yaml_block(&configmap, "policy.toml")).expect("ConfigMap policy");
}

/// With `amqp.declare = false` the service declares nothing: it waits until an operator
/// pre-declared the topology, then connects.
#[tokio::test]
async fn a_pre_declared_topology_is_used_without_declaring() {
    use std::time::Duration;

    use puhuri_approver::config::AmqpConfig;
    use puhuri_auth::secret::Secret;
    use puhuri_queue::Broker;
    use tokio_util::sync::CancellationToken;

    let amqp = |declare: bool, prefix: &str| AmqpConfig {
        urls: vec![Secret::new(crate::helpers::amqp_url())],
        prefix: prefix.to_owned(),
        publish_channels: 1,
        confirm_timeout: Duration::from_secs(5),
        declare,
    };
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let delays = vec![Duration::from_millis(50)];
    let stop = CancellationToken::new();
    let passive = Broker::start_rabbit(&amqp(false, &prefix), delays.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!passive.is_connected(), "connected without a topology");

    // The operator's declaration (here: a declaring broker with the same prefix).
    let operator = Broker::start_rabbit(&amqp(true, &prefix), delays, stop.clone());
    let connected =
        tokio::time::timeout(crate::helpers::WAIT, operator.wait_connected(&stop)).await;
    assert_eq!(connected, Ok(true));
    let connected = tokio::time::timeout(crate::helpers::WAIT, passive.wait_connected(&stop)).await;
    assert_eq!(connected, Ok(true), "the passive broker did not connect");
    assert_eq!(passive.work_depth().await.expect("depth"), 0);
    operator.delete_topology().await.expect("clean up");
    stop.cancel();
}

/// A configuration with its commented `# [review]` block switched on: the `# `-prefixed
/// lines from `# [review]` to the first line that is not a comment, without the prefix.
fn with_review_on(text: &str) -> String {
    let mut lines = text.lines();
    let mut on = String::new();
    for line in lines.by_ref() {
        if line == "# [review]" {
            on.push_str("[review]\n");
            break;
        }
        on.push_str(line);
        on.push('\n');
    }
    assert!(on.contains("[review]"), "no commented `# [review]` block");
    for line in lines {
        match line.strip_prefix('#') {
            Some(rest) => on.push_str(rest.strip_prefix(' ').unwrap_or(rest)),
            None => break,
        }
        on.push('\n');
    }
    on
}

#[test]
fn the_shipped_review_page_is_off_and_its_commented_settings_serve_it() {
    let env = shipped_env();
    let compose = read("deploy/compose/puhuri-approver.toml");
    let configmap = yaml_block(&read("deploy/k8s/configmap.yaml"), "puhuri-approver.toml");
    for (name, text) in [("compose.toml", &compose), ("configmap.toml", &configmap)] {
        let off = Config::parse(text, name, &env).expect("as shipped");
        assert_eq!(off.review.listen, None, "{name}: off by default");
        let on = Config::parse(&with_review_on(text), name, &env)
            .unwrap_or_else(|error| panic!("{name} with [review] on: {error}"));
        assert_eq!(on.review.listen.map(|a| a.port()), Some(8070), "{name}");
        assert_eq!(
            on.review.refresh,
            Some(std::time::Duration::from_secs(300)),
            "{name}"
        );
    }
    let worker = read("deploy/k8s/worker.yaml");
    for needle in [
        "# - name: review\n            #   containerPort: 8070",
        "#   name: puhuri-approver-review",
        "#       port: 8070\n#       targetPort: review",
        "#       key: review-session-key",
    ] {
        assert!(worker.contains(needle), "worker.yaml lacks `{needle}`");
    }
    assert!(read("deploy/k8s/secret.yaml").contains("# review-session-key:"));
    assert!(read("deploy/compose/compose.yaml").contains("#   - \"127.0.0.1:8070-8071:8070\""));
    for unit in [
        "deploy/systemd/puhuri-approver.service",
        "deploy/systemd/puhuri-approver-work.service",
    ] {
        assert!(
            read(unit).contains("`[review] listen = \"127.0.0.1:8070\"`"),
            "{unit}"
        );
    }
}
