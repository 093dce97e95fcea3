//! The operator surface of the binary: `healthcheck`, what `serve`/`work`/`receive` refuse
//! to start without, `--help`, and the supervisor that stops every role when one fails.

use puhuri_approver::app::{Role, RoleFailed, Roles};
use std::process::{Command, Output};
use tokio::net::TcpStream;

use crate::helpers::{Options, WAIT, spawn_app, temp_dir};

/// The service binary with no `PUHURI_APPROVER_*` variable of the test's environment.
fn approver() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PUHURI_APPROVER_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

/// Runs a command off the async runtime (the app under test answers meanwhile).
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run the binary")
}

/// A command's output, checked to be written for people.
fn text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    crate::helpers::assert_for_people("a command's output", &text);
    text
}

/// A port on which nobody listens (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn healthcheck_exits_0_when_ready_and_1_when_nobody_answers() {
    let app = spawn_app(Options {
        backend: crate::helpers::Backend::Embedded,
        ..Options::default()
    })
    .await;

    // An explicit URL.
    let mut command = approver();
    command
        .arg("healthcheck")
        .arg("--url")
        .arg(app.url("/readyz"));
    let output = run(command).await;
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("ready: "), "{stdout}");
    assert!(stdout.contains("200"), "{stdout}");

    // The address from a configuration file: `listen` (all interfaces means this machine).
    let dir = temp_dir("healthcheck");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:{}\"\n[puhuri]\nurl = \"http://x/api/\"\n",
            app.addr.port()
        ),
    )
    .expect("write config");
    let mut command = approver();
    command.arg("healthcheck").arg("--config").arg(&config);
    let output = run(command).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );

    // `metrics_listen` wins over `listen`; nobody listens there.
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{port}\"\n",
            app.addr.port()
        ),
    )
    .expect("write config");
    let mut command = approver();
    command
        .arg("healthcheck")
        .env("PUHURI_APPROVER_CONFIG", &config);
    let output = run(command).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("not ready: http://127.0.0.1:{port}/readyz")),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty());

    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}

#[tokio::test]
async fn healthcheck_exits_1_when_the_service_answers_not_ready() {
    // RabbitMQ on a port nobody listens on: the receiver runs, the broker check fails.
    let app = spawn_app(Options {
        roles: Roles {
            receive: true,
            work: false,
        },
        amqp_url: Some(format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port())),
        expect_broker: false,
        ..Options::default()
    })
    .await;
    let mut command = approver();
    command
        .arg("healthcheck")
        .arg("--url")
        .arg(app.url("/readyz"));
    let output = run(command).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert!(stderr.contains("disconnected"), "{stderr}");
    app.stop().await;
}

#[tokio::test]
async fn work_and_serve_without_a_usable_config_name_what_is_missing_and_create_nothing() {
    let dir = temp_dir("unconfigured");
    for command in ["work", "serve"] {
        let mut cli = approver();
        cli.arg(command).current_dir(&dir);
        let output = run(cli).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        for key in ["puhuri.url", "puhuri.token", "policy.file"] {
            assert!(stderr.contains(&format!("`{key}`")), "{command}: {stderr}");
        }
        assert_eq!(
            stderr.contains("`sources`"),
            command == "serve",
            "{command}: {stderr}"
        );
        assert!(stderr.contains("no configuration file"), "{stderr}");
    }

    // A file that sets part of it: the rest is named with the file.
    let config = dir.join("work.toml");
    std::fs::write(
        &config,
        "[queue]\nbackend = \"embedded\"\n[puhuri]\nurl = \"https://puhuri.example.org/api/\"\n",
    )
    .expect("write config");
    let mut cli = approver();
    cli.arg("work")
        .arg("--config")
        .arg(&config)
        .current_dir(&dir);
    let output = run(cli).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("work.toml: `work` needs"), "{stderr}");
    assert!(!stderr.contains("`puhuri.url`"), "{stderr}");
    assert!(stderr.contains("`puhuri.token`"), "{stderr}");

    // `config check --role work` says the same without starting anything, and plain
    // `config check` what `serve` would say.
    let mut cli = approver();
    cli.args(["config", "check", "--role", "work"])
        .arg(&config)
        .current_dir(&dir);
    let output = run(cli).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("work.toml: `work` needs"), "{stderr}");
    assert!(stderr.contains("`puhuri.token`"), "{stderr}");
    assert!(stderr.contains("`policy.file`"), "{stderr}");
    assert!(!stderr.contains("`sources`"), "{stderr}");
    let mut cli = approver();
    cli.args(["config", "check"]).arg(&config).current_dir(&dir);
    let output = run(cli).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("work.toml: `serve` needs"), "{stderr}");
    assert!(stderr.contains("`sources`"), "{stderr}");
    assert_eq!(stderr.matches("`puhuri.token`").count(), 1, "{stderr}");

    // `receive` needs sources.
    let mut cli = approver();
    cli.arg("receive")
        .arg("--config")
        .arg(&config)
        .current_dir(&dir);
    let output = run(cli).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`sources`"), "{stderr}");
    assert!(!stderr.contains("puhuri.token"), "{stderr}");

    // Nothing was created: no data folder, no SQLite file.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("work.toml")]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_lists_the_production_commands_first_and_the_demo_as_a_tool() {
    let output = approver().arg("--help").output().expect("help");
    let help = text(&output.stdout);
    assert!(output.status.success(), "{help}");
    let position = |name: &str| {
        help.lines()
            .position(|line| line.starts_with(&format!("  {name} ")))
            .unwrap_or_else(|| panic!("`{name}` is not listed:\n{help}"))
    };
    let production = [
        "serve",
        "receive",
        "work",
        "healthcheck",
        "config",
        "policy",
        "dlq",
        "team",
        "usage",
        "sign",
    ];
    let positions: Vec<usize> = production.iter().map(|name| position(name)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{help}");
    let demo = position("demo");
    assert!(demo > positions[positions.len() - 1], "{help}");
    assert!(
        help.lines()
            .nth(demo)
            .is_some_and(|line| line.contains("(tool)"))
    );
    assert!(!help.contains("\n  sim "), "{help}");
    assert!(help.contains("puhuri-sim"), "{help}");
}

/// Whether something accepts connections at `addr`.
async fn accepts(addr: std::net::SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_ok()
}

#[tokio::test]
async fn a_failing_role_stops_every_role_and_is_named() {
    let (captured, _logs) = crate::helpers::capture_thread_logs("info");

    let mut app = spawn_app(Options {
        backend: crate::helpers::Backend::Embedded,
        ..Options::default()
    })
    .await;
    let running = app.running.take().expect("running");
    let addr = running.addr.expect("receiver");
    assert!(accepts(addr).await);

    // A role that returns an error while nobody asked for shutdown.
    running.supervise(Role::Reconciler, async {
        anyhow::bail!("Puhuri Core answered 401 to every list call")
    });
    let result = tokio::time::timeout(WAIT, running.wait(std::future::pending()))
        .await
        .expect("the failure ends the run");
    let failure = result.expect_err("the run fails");
    assert_eq!(failure.role, Role::Reconciler);
    let message = failure.to_string();
    assert!(message.contains("`reconciler`"), "{message}");
    assert!(message.contains("401 to every list call"), "{message}");
    // The receiver stopped with it.
    assert!(!accepts(addr).await, "the receiver still accepts");
    let logs = captured.text();
    let line = logs
        .lines()
        .find(|line| line.contains("role failed"))
        .unwrap_or_else(|| panic!("no error line names the role:\n{logs}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("role=reconciler"), "{line}");
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_or_ending_role_fails_the_run() {
    for (role, panics) in [(Role::PolicyReloader, true), (Role::TeamWatcher, false)] {
        let mut app = spawn_app(Options {
            backend: crate::helpers::Backend::Embedded,
            roles: Roles {
                receive: false,
                work: true,
            },
            ..Options::default()
        })
        .await;
        let running = app.running.take().expect("running");
        let worker = running.worker.clone().expect("worker");
        running.supervise(role, async move {
            if panics {
                panic!("policy file watcher lost its inotify handle");
            }
            Ok(())
        });
        let failure: RoleFailed = tokio::time::timeout(WAIT, running.wait(std::future::pending()))
            .await
            .expect("the failure ends the run")
            .expect_err("the run fails");
        assert_eq!(failure.role, role);
        if panics {
            assert!(failure.reason.contains("panicked"), "{failure}");
            assert!(failure.reason.contains("inotify"), "{failure}");
        } else {
            assert!(
                failure.reason.contains("ended before shutdown"),
                "{failure}"
            );
        }
        // `wait` returned after the roles ended: the worker loop holds no clone of itself.
        assert_eq!(
            std::sync::Arc::strong_count(&worker),
            1,
            "the worker runs on"
        );
        app.stop().await;
    }
}

/// A signal (here: the interrupt future) is not a failure: the run ends cleanly.
#[tokio::test]
async fn an_interrupt_shuts_down_without_an_error() {
    let mut app = spawn_app(Options {
        backend: crate::helpers::Backend::Embedded,
        ..Options::default()
    })
    .await;
    let running = app.running.take().expect("running");
    let addr = running.addr.expect("receiver");
    let result = tokio::time::timeout(WAIT, running.wait(async {})).await;
    assert_eq!(result.expect("shut down in time"), Ok(()));
    assert!(!accepts(addr).await);
    app.stop().await;
}

/// Sends SIGTERM to one process, by its (positive) pid.
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-s", "TERM", "--"])
        .arg(pid.to_string())
        .status();
}

/// `receive` never reads the policy: with `policy.file` naming a file that does not exist,
/// or one that does not compile, it starts and its `/readyz` answers 200.
#[tokio::test]
async fn receive_starts_and_is_ready_whatever_the_policy_file_holds() {
    let dir = temp_dir("receive-no-policy");
    let broken = dir.join("broken.toml");
    std::fs::write(
        &broken,
        "[[rule]]\nname = \"x\"\nwhen = 'limits.cpu_k_hours <='\naction = \"teleport\"\n",
    )
    .expect("write broken policy");
    let cases = [
        ("missing", dir.join("does-not-exist.toml")),
        ("broken", broken),
    ];
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("client");
    for (case, policy) in cases {
        let (listen, metrics) = (free_port(), free_port());
        let config = dir.join(format!("receive-{case}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:{listen}"
metrics_listen = "127.0.0.1:{metrics}"

[queue]
backend = "embedded"
data_dir = "{data}"

[policy]
file = "{policy}"

[[sources]]
name = "relay"
format = "allocation"
auth = "standard-webhooks"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
"#,
                data = dir.join(format!("queue-{case}")).display(),
                policy = policy.display(),
            ),
        )
        .expect("write config");
        let log = dir.join(format!("receive-{case}.log"));
        let mut child = approver()
            .arg("receive")
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start receive");
        let url = format!("http://127.0.0.1:{metrics}/readyz");
        let deadline = std::time::Instant::now() + WAIT;
        let ready = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "{case}: receive exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            match client.get(&url).send().await {
                Ok(answer) if answer.status() == 200 => break true,
                _ if std::time::Instant::now() >= deadline => break false,
                // Not listening yet, or not ready yet: ask again shortly.
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        terminate(child.id());
        let exited = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    return Some(status);
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .await
        .expect("join");
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(ready, "{case}: /readyz never answered 200: {logged}");
        let status = exited.unwrap_or_else(|| panic!("{case}: no exit on SIGTERM: {logged}"));
        assert!(status.success(), "{case}: {status}: {logged}");
        assert!(!logged.contains("policy loaded"), "{case}: {logged}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `secret generate` prints one fresh secret per run, and `config check` accepts it for
/// the source kind it was made for.
#[test]
fn generated_secrets_are_fresh_and_accepted_by_their_source_kind() {
    let dir = temp_dir("secret-generate");
    for kind in ["path-secret", "standard-webhooks", "github"] {
        let generate = || {
            let output = approver()
                .args(["secret", "generate", "--kind", kind])
                .output()
                .expect("run secret generate");
            assert!(output.status.success(), "{kind}: {}", text(&output.stderr));
            assert!(output.stderr.is_empty(), "{kind}: {}", text(&output.stderr));
            text(&output.stdout)
        };
        let (first, second) = (generate(), generate());
        assert_eq!(first.lines().count(), 1, "{kind}: {first:?}");
        assert_ne!(first, second, "{kind}: two runs printed the same secret");
        let secrets = dir.join(format!("{kind}.secret"));
        std::fs::write(&secrets, &first).expect("write secret file");
        let config = dir.join(format!("{kind}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[sources]]\nname = \"hooks\"\nformat = \"allocation\"\nauth = \"{kind}\"\nsecrets_file = \"{}\"\n",
                secrets.display()
            ),
        )
        .expect("write config");
        let check = approver()
            .args(["config", "check", "--role", "receive"])
            .arg(&config)
            .output()
            .expect("run config check");
        assert!(
            check.status.success(),
            "{kind}: config check refused a generated secret: {}{}",
            text(&check.stdout),
            text(&check.stderr)
        );
        let printed = format!("{}{}", text(&check.stdout), text(&check.stderr));
        assert!(
            !printed.contains(first.trim()),
            "{kind}: the secret was printed"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `config check` runs what `serve` runs before it starts: a policy file that cannot be
/// read is traced to the configuration line naming it, and a missing configuration file
/// is reported once.
#[test]
fn config_check_traces_a_missing_policy_file_to_its_line_and_says_each_error_once() {
    let dir = temp_dir("config-check");
    let config = dir.join("service.toml");
    std::fs::write(
        &config,
        "[puhuri]\nurl = \"https://puhuri.example.org/api/\"\ntoken = \"t0ken-t0ken-t0ken\"\n\n[policy]\nfile = \"missing-policy.toml\"\n\n[[sources]]\nname = \"a\"\nformat = \"allocation\"\nauth = \"github\"\nsecrets = [\"0123456789abcdef0123456789abcdef\"]\n",
    )
    .expect("write config");
    let output = approver()
        .args(["config", "check"])
        .arg(&config)
        .output()
        .expect("run config check");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:6:8: `policy.file`: {}: cannot read",
            config.display(),
            dir.join("missing-policy.toml").display()
        )),
        "{stderr}"
    );
    // `receive` does not read the policy, so the same file is fine for it.
    let output = approver()
        .args(["config", "check", "--role", "receive"])
        .arg(&config)
        .output()
        .expect("run config check");
    assert!(output.status.success(), "{}", text(&output.stderr));

    let missing = dir.join("no-such-config.toml");
    let output = approver()
        .args(["config", "check"])
        .arg(&missing)
        .output()
        .expect("run config check");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits until the log file holds `text` (the process writes it when the event happens).
async fn logged(log: &std::path::Path, text: &str, after: usize) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let logs = std::fs::read_to_string(log).unwrap_or_default();
        if logs.get(after..).is_some_and(|new| new.contains(text)) {
            return logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{text}` never logged: {logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// SIGHUP always answers: "policy unchanged" with the running version, or the new one.
#[tokio::test]
async fn sighup_says_whether_the_policy_changed() {
    let app = spawn_app(Options::default()).await;
    let dir = temp_dir("sighup");
    let config = app.write_config(&dir);
    let log = dir.join("work.log");
    let mut child = approver()
        .arg("work")
        .arg("--config")
        .arg(&config)
        .env("PUHURI_APPROVER_AMQP_URL", crate::helpers::amqp_url())
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start work");
    let hangup = |pid: u32| {
        let _ = Command::new("kill")
            .args(["-s", "HUP", "--"])
            .arg(pid.to_string())
            .status();
    };
    let logs = logged(&log, "workers started", 0).await;
    hangup(child.id());
    let logs = logged(&log, "policy unchanged", logs.len()).await;
    let line = logs
        .lines()
        .find(|line| line.contains("policy unchanged"))
        .unwrap_or_default();
    assert!(line.contains("version=sha256:"), "{line}");
    crate::helpers::assert_for_people("work's log", &logs);

    let policy = dir.join("policy.toml");
    let mut text = std::fs::read_to_string(&policy).expect("read policy");
    text.push_str("\n# edited\n");
    std::fs::write(&policy, text).expect("edit policy");
    hangup(child.id());
    logged(&log, "policy reloaded", logs.len()).await;

    terminate(child.id());
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}
