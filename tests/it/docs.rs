//! The command blocks of `README.md` and `docs/operations.md`, read from the Markdown and
//! run, so the docs cannot drift from what works. Every `sh` block carries a marker on the
//! line before it:
//! - `<!-- docs-test: run -->`: run as written;
//! - `<!-- docs-test: local-run -->`: run against what `deploy/local/run` starts (the
//!   simulator and `serve` with `deploy/local/puhuri-approver.toml`), here on free ports
//!   (the blocks' addresses, and the configuration's through `PUHURI_APPROVER_PUHURI_URL`,
//!   follow them) and with the debug build in place of `target/release/`;
//! - `<!-- docs-test: skip: REASON -->`: not runnable on one test machine, and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use puhuri_auth::secret::Secret;
use puhuri_auth::signature::WebhookSecret;
use puhuri_sim::{HookFormat, HookTarget, Sim, SimConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::helpers::{WAIT, amqp_url};

/// The docs whose command blocks are checked.
const DOCS: &[&str] = &["README.md", "docs/operations.md"];
/// The simulator's hook secret in `deploy/local/run` and `deploy/local/puhuri-approver.toml`.
const LOCAL_HOOK_SECRET: &str = "whsec_bG9jYWwtZGVtby1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u";

#[derive(Debug)]
struct Block {
    place: String,
    kind: String,
    text: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `sh` block of `doc` with its marker; a block without one fails the test.
fn blocks(doc: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(doc)).expect("read doc");
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        if lines[index].trim() != "```sh" {
            index += 1;
            continue;
        }
        let place = format!("{doc}:{}", index + 1);
        let marker = index
            .checked_sub(1)
            .map(|before| lines[before].trim())
            .and_then(|line| line.strip_prefix("<!-- docs-test: "))
            .and_then(|line| line.strip_suffix(" -->"))
            .unwrap_or_else(|| {
                panic!("{place}: a `sh` block without a `<!-- docs-test: … -->` line before it")
            });
        let kind = marker
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        assert!(
            ["run", "local-run", "skip"].contains(&kind.as_str()),
            "{place}: unknown docs-test kind `{marker}`"
        );
        if kind == "skip" {
            assert!(marker.len() > "skip: ".len(), "{place}: a skip says why");
        }
        let mut body = String::new();
        index += 1;
        while index < lines.len() && lines[index].trim() != "```" {
            body.push_str(lines[index].trim_start());
            body.push('\n');
            index += 1;
        }
        found.push(Block {
            place,
            kind,
            text: body,
        });
        index += 1;
    }
    found
}

/// Runs a block with bash (stop at the first failing command), in the repository, with
/// `env` and none of the test's own `PUHURI_APPROVER_*` variables.
async fn run_block(block: &Block, text: String, env: Vec<(String, String)>) -> (bool, String) {
    let place = block.place.clone();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new("bash");
        command
            .args(["-e", "-o", "pipefail", "-c", &text])
            .current_dir(root());
        for (name, _) in std::env::vars() {
            if name.starts_with("PUHURI_APPROVER_") {
                command.env_remove(name);
            }
        }
        command.envs(env);
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("{place}: bash: {e}"));
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), printed)
    })
    .await
    .expect("join")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `serve` as `deploy/local/run` starts it; stopped (SIGTERM to its own pid) on drop.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_docs_command_blocks_run_as_written() {
    let all: Vec<Block> = DOCS.iter().flat_map(|doc| blocks(doc)).collect();
    let local: Vec<&Block> = all.iter().filter(|b| b.kind == "local-run").collect();
    assert!(!local.is_empty(), "no block runs against deploy/local/run");

    // What `deploy/local/run` starts: the simulator announcing new allocations to `serve`.
    let (sim_port, service_port) = (free_port(), free_port());
    let sim_listener = TcpListener::bind(("127.0.0.1", sim_port))
        .await
        .expect("bind the simulator");
    let sim = Sim::new(SimConfig {
        tokens: vec![Secret::new("sim-token")],
        hook: Some(HookTarget {
            url: format!("http://127.0.0.1:{service_port}/v1/notifications/sim"),
            format: HookFormat::Allocation {
                secret: WebhookSecret::parse(LOCAL_HOOK_SECRET).expect("secret"),
            },
        }),
        seed: true,
        public_url: Some(format!("http://127.0.0.1:{sim_port}")),
        waldur: Default::default(),
    });
    let sim_stop = CancellationToken::new();
    tokio::spawn(sim.clone().serve(sim_listener, sim_stop.clone()));
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PUHURI_APPROVER_") {
            serve.env_remove(name);
        }
    }
    let log = std::env::temp_dir().join(format!("puhuri-approver-docs-{sim_port}.log"));
    let _service = Service(
        serve
            .args(["serve", "--config", "deploy/local/puhuri-approver.toml"])
            .current_dir(root())
            .env(
                "PUHURI_APPROVER_LISTEN",
                format!("127.0.0.1:{service_port}"),
            )
            .env(
                "PUHURI_APPROVER_PUHURI_URL",
                format!("http://127.0.0.1:{sim_port}/api/"),
            )
            .env("PUHURI_APPROVER_AMQP_URL", amqp_url())
            // The review page on a port of its own choosing.
            .env("PUHURI_APPROVER_REVIEW_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start serve"),
    );
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{service_port}/readyz");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match http.get(&ready).send().await {
            Ok(answer) if answer.status() == 200 => break,
            _ if tokio::time::Instant::now() >= deadline => panic!(
                "serve never became ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
            // Not listening or not ready yet.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    let binary = Path::new(env!("CARGO_BIN_EXE_puhuri-approver"))
        .display()
        .to_string();
    for block in all.iter().filter(|b| b.kind != "skip") {
        let mut text = block.text.clone();
        let mut env = Vec::new();
        if block.kind == "local-run" {
            // The ports moved, so the configuration's addresses move with them.
            env.push((
                "PUHURI_APPROVER_PUHURI_URL".to_owned(),
                format!("http://127.0.0.1:{sim_port}/api/"),
            ));
            env.push(("PUHURI_APPROVER_AMQP_URL".to_owned(), amqp_url()));
            text = text
                .replace("127.0.0.1:8090", &format!("127.0.0.1:{sim_port}"))
                .replace("127.0.0.1:8080", &format!("127.0.0.1:{service_port}"))
                .replace("target/release/puhuri-approver", &binary);
            // A block reading what the service wrote runs once it has written something.
            if text.contains("backend_id") {
                let deadline = tokio::time::Instant::now() + WAIT;
                while !sim
                    .calls()
                    .iter()
                    .any(|c| c.path.ends_with("/set_backend_id/"))
                {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{}: the service approved nothing: {}",
                        block.place,
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let (ok, printed) = run_block(block, text, env).await;
        assert!(ok, "{} failed:\n{printed}", block.place);
        crate::helpers::assert_for_people(&block.place, &printed);
        if block.text.contains("/v1/notifications/sim") {
            assert!(printed.contains(" 202 "), "{}: {printed}", block.place);
        }
        if block.text.contains("usage push") {
            assert!(printed.contains("1 queued"), "{}: {printed}", block.place);
        }
    }
    sim_stop.cancel();
    let _ = std::fs::remove_file(log);
}
