//! Waldur's own Python SDK, python-waldur-client 0.6.4 from PyPI, drives the simulator through
//! every endpoint the service calls, plus `users/me`: what the client sends (URLs, trailing
//! slashes, token header, JSON bodies, `Link` pagination) is what real Waldur takes, so the
//! simulator must answer it as Waldur does.
//!
//! Set-up: a virtualenv under the cargo target directory (`target/tmp/`) with the client
//! installed, made once and reused; it needs `python3` with its `venv` module (and `ensurepip`)
//! and access to PyPI the first time. The token reaches the script by environment only.
//! `tests/python/drive_sim.py` checks every answer; this side checks the exit status, the write
//! calls the simulator recorded and the final state.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use puhuri_auth::Secret;
use puhuri_sim::{CreatedAllocation, NewAllocation, RecordedCall, Sim, SimConfig, WaldurVersion};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CLIENT: &str = "python-waldur-client";
const CLIENT_VERSION: &str = "0.6.4";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/drive_sim.py");
const MEMBER: &str = "climate-extremes-member1";

/// The interpreter of the shared virtualenv, made on first use by any test of this binary.
fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(prepare_venv) {
        Ok(python) => python,
        Err(why) => panic!("cannot set up python-waldur-client {CLIENT_VERSION}: {why}"),
    }
}

fn run(command: &mut Command, what: &str) -> Result<Output, String> {
    let output = command
        .output()
        .map_err(|error| format!("{what}: cannot start: {error}"))?;
    if output.status.success() {
        return Ok(output);
    }
    Err(format!(
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// `target/tmp/waldur-client-<version>/` holds the virtualenv once the client is installed
/// (a `.installed` marker); it is built under a process-specific name and renamed into place,
/// so an interrupted or concurrent build never leaves a half-made one in use.
fn prepare_venv() -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join(format!("waldur-client-{CLIENT_VERSION}"));
    let python = venv.join("bin").join("python");
    // `exists` follows the link to the base interpreter: a venv whose Python is gone is rebuilt.
    let ready = |dir: &Path| dir.join(".installed").is_file() && dir.join("bin/python").exists();
    if ready(&venv) {
        return Ok(python);
    }
    let building = root.join(format!(
        "waldur-client-{CLIENT_VERSION}.building-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&building);
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&building),
        "`python3 -m venv` (CPython >= 3.8 with its venv module and ensurepip is required; \
         on Debian: `apt-get install python3-venv`)",
    )?;
    run(
        Command::new(building.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "--timeout",
                "30",
            ])
            .arg(format!("{CLIENT}=={CLIENT_VERSION}")),
        &format!(
            "`pip install {CLIENT}=={CLIENT_VERSION}` (PyPI must be reachable, or set PIP_INDEX_URL)"
        ),
    )?;
    std::fs::write(building.join(".installed"), CLIENT_VERSION)
        .map_err(|error| format!("cannot mark the virtualenv as ready: {error}"))?;
    if !ready(&venv) {
        let _ = std::fs::remove_dir_all(&venv);
    }
    match std::fs::rename(&building, &venv) {
        Ok(()) => {}
        // Another process put a complete one in place first.
        Err(_) if ready(&venv) => {
            let _ = std::fs::remove_dir_all(&building);
        }
        Err(error) => return Err(format!("cannot move the virtualenv into place: {error}")),
    }
    Ok(python)
}

struct Running {
    sim: Sim,
    api_url: String,
    token: String,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_sim(waldur: WaldurVersion) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the simulator");
    let addr = listener.local_addr().expect("simulator address");
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let sim = Sim::new(SimConfig {
        tokens: vec![Secret::new(token.clone())],
        hook: None,
        seed: true,
        public_url: Some(format!("http://{addr}")),
        waldur,
    });
    let stop = CancellationToken::new();
    tokio::spawn(sim.clone().serve(listener, stop.clone()));
    Running {
        sim,
        api_url: format!("http://{addr}/api/"),
        token,
        stop,
    }
}

async fn allocate(sim: &Sim, offering: &str, project: &str, order_state: Option<&str>) -> Value {
    let mut limits = serde_json::Map::new();
    limits.insert("cpu_k_hours".into(), json!(100));
    let created: CreatedAllocation = sim
        .create_allocation(NewAllocation {
            offering: Some(offering.into()),
            project: Some(project.into()),
            limits,
            order_state: order_state.map(str::to_owned),
            ..NewAllocation::default()
        })
        .await
        .expect("create an allocation");
    serde_json::to_value(created).expect("allocation as JSON")
}

/// Every organisation's abbreviation by uuid.
fn abbreviations(sim: &Sim) -> Value {
    let catalogue = sim.catalogue();
    Value::Object(
        catalogue
            .customers
            .into_iter()
            .map(|c| (c.uuid, Value::String(c.abbreviation)))
            .collect(),
    )
}

fn offering_uuid(sim: &Sim, name: &str) -> (String, String) {
    let catalogue = sim.catalogue();
    let offering = catalogue
        .offerings
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("the seeded catalogue has no offering {name}"));
    (offering.uuid.clone(), offering.provider_uuid.clone())
}

/// Runs the script with `config` in the environment; panics with its output unless it exits 0.
async fn drive(running: &Running, config: Value) {
    let python = venv_python().to_path_buf();
    let token = running.token.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(SCRIPT)
            .env("WALDUR_TOKEN", token)
            .env("DRIVE_SIM", config.to_string())
            // The simulator is local: never through a proxy from the environment.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .output()
    })
    .await
    .expect("join the script")
    .expect("start the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "drive_sim.py: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stdout.trim_end().ends_with("OK"), "stdout:\n{stdout}");
}

fn call(method: &str, path: String, body: Value, status: u16) -> RecordedCall {
    RecordedCall {
        method: method.into(),
        path,
        query: None,
        body,
        status,
        applied_status: None,
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not text in {value}"))
}

fn assert_calls(sim: &Sim, expected: &[RecordedCall]) {
    let calls = sim.calls();
    for (index, (got, want)) in calls.iter().zip(expected).enumerate() {
        assert_eq!(got, want, "write call #{index}");
    }
    assert_eq!(calls.len(), expected.len(), "write calls: {calls:#?}");
}

/// How the server version at hand answers where Waldur versions differ.
struct Expect {
    waldur: WaldurVersion,
    set_as_erred: (u16, &'static str, &'static str),
}

async fn current_api(expect: Expect) {
    let running = start_sim(expect.waldur).await;
    let sim = &running.sim;
    let (basic, provider) = offering_uuid(sim, "LUMI-C");
    let (slurm, _) = offering_uuid(sim, "LUMI-Slurm");
    let approve = allocate(sim, "LUMI-C", "Climate extremes", None).await;
    let reject = allocate(sim, "LUMI-C", "Climate extremes", None).await;
    let reject_comment = allocate(sim, "LUMI-C", "Protein dynamics", None).await;
    let slurm_erred = allocate(sim, "LUMI-Slurm", "Climate extremes", None).await;
    let resource_erred = allocate(sim, "LUMI-C", "Climate extremes", None).await;
    let expired = allocate(sim, "LUMI-C", "Ocean circulation", None).await;
    let consumer = allocate(sim, "LUMI-C", "Climate extremes", Some("pending-consumer")).await;
    let (erred_status, erred_order, erred_resource) = expect.set_as_erred;
    let config = json!({
        "scenario": "current",
        "api_url": running.api_url,
        "username": "sp-integration",
        "provider_uuid": provider,
        "abbreviations": abbreviations(sim),
        "member": MEMBER,
        "offerings": {"basic": basic, "slurm": slurm},
        "approve": approve,
        "reject": reject,
        "reject_comment": reject_comment,
        "slurm_erred": slurm_erred,
        "resource_erred": resource_erred,
        "expired": expired,
        "pending_consumer": consumer,
        "expect": {
            "set_as_erred": {
                "status": erred_status,
                "order_state": erred_order,
                "resource_state": erred_resource,
            },
        },
    });
    drive(&running, config).await;

    let resource = |a: &Value| text(a, "resource_uuid").to_owned();
    let order = |a: &Value| text(a, "order_uuid").to_owned();
    let provider_resource = |a: &Value, action: &str| {
        format!(
            "/api/marketplace-provider-resources/{}/{action}/",
            resource(a)
        )
    };
    let order_action =
        |a: &Value, action: &str| format!("/api/marketplace-orders/{}/{action}/", order(a));
    let usages = sim.usages(&resource(&approve));
    assert_eq!(usages.len(), 1, "usages: {usages:?}");
    let usage_uuid = text(&usages[0], "uuid");
    let report = json!({"report": [{"header": "Login node", "body": "ssh user@lumi.example.org"}]});
    let erred_body = json!({"error_message": "Quota backend refused.", "error_traceback": ""});
    let expected = [
        call(
            "POST",
            provider_resource(&approve, "set_backend_id"),
            json!({"backend_id": "lumi-approve"}),
            200,
        ),
        call(
            "POST",
            provider_resource(&approve, "set_backend_id"),
            json!({"backend_id": "lumi-approve"}),
            200,
        ),
        call(
            "POST",
            order_action(&approve, "approve_by_provider"),
            Value::Null,
            200,
        ),
        call(
            "POST",
            provider_resource(&approve, "submit_report"),
            report,
            200,
        ),
        call(
            "POST",
            "/api/marketplace-component-usages/set_usage/".into(),
            json!({
                "usages": [{"type": "cpu_k_hours", "amount": "10.50", "description": "month to date"}],
                "resource": resource(&approve),
            }),
            201,
        ),
        call(
            "POST",
            format!("/api/marketplace-component-usages/{usage_uuid}/set_user_usage/"),
            json!({"usage": "4.25", "username": MEMBER}),
            201,
        ),
        call(
            "POST",
            order_action(&reject, "reject_by_provider"),
            Value::Null,
            200,
        ),
        call(
            "POST",
            order_action(&reject_comment, "reject_by_provider"),
            json!({"provider_rejection_comment": "Requested limits exceed the call's maximum."}),
            200,
        ),
        call(
            "POST",
            order_action(&resource_erred, "set_state_erred"),
            json!({"error_message": "no", "error_traceback": ""}),
            405,
        ),
        call(
            "POST",
            order_action(&slurm_erred, "set_state_erred"),
            json!({"error_message": "Cannot create the account.", "error_traceback": ""}),
            200,
        ),
        call(
            "POST",
            provider_resource(&resource_erred, "set_backend_id"),
            json!({"backend_id": "lumi-erred"}),
            200,
        ),
        call(
            "POST",
            provider_resource(&resource_erred, "set_as_erred"),
            erred_body,
            erred_status,
        ),
        call(
            "POST",
            order_action(&expired, "approve_by_provider"),
            Value::Null,
            400,
        ),
    ];
    assert_calls(sim, &expected);

    let order_state = |a: &Value| {
        let o = sim.order(&order(a)).expect("order exists");
        text(&o, "state").to_owned()
    };
    let resource_field = |a: &Value, key: &str| {
        let r = sim.resource(&resource(a)).expect("resource exists");
        r[key].clone()
    };
    assert_eq!(order_state(&approve), "done");
    assert_eq!(resource_field(&approve, "state"), json!("OK"));
    assert_eq!(
        resource_field(&approve, "backend_id"),
        json!("lumi-approve")
    );
    assert_eq!(order_state(&reject), "rejected");
    assert_eq!(order_state(&reject_comment), "rejected");
    assert_eq!(order_state(&slurm_erred), "erred");
    assert_eq!(order_state(&resource_erred), erred_order);
    assert_eq!(
        resource_field(&resource_erred, "state"),
        json!(erred_resource)
    );
    assert_eq!(order_state(&expired), "pending-provider");
    assert_eq!(order_state(&consumer), "pending-consumer");
    let user_usages = sim.user_usages(&resource(&approve));
    assert_eq!(user_usages.len(), 1, "user usages: {user_usages:?}");
    assert_eq!(user_usages[0]["username"], json!(MEMBER));
}

async fn api_2021() {
    let running = start_sim(WaldurVersion::V2021).await;
    let sim = &running.sim;
    let (basic, provider) = offering_uuid(sim, "LUMI-C");
    let approve = allocate(sim, "LUMI-C", "Climate extremes", None).await;
    let terminate = allocate(sim, "LUMI-C", "Protein dynamics", None).await;
    let erred = allocate(sim, "LUMI-C", "Climate extremes", None).await;
    let config = json!({
        "scenario": "2021",
        "api_url": running.api_url,
        "username": "sp-integration",
        "provider_uuid": provider,
        "abbreviations": abbreviations(sim),
        "member": MEMBER,
        "offerings": {"basic": basic},
        "approve": approve,
        "terminate": terminate,
        "erred": erred,
    });
    drive(&running, config).await;

    let resource = |a: &Value| text(a, "resource_uuid").to_owned();
    let path =
        |a: &Value, action: &str| format!("/api/marketplace-resources/{}/{action}/", resource(a));
    let expected = [
        call(
            "POST",
            path(&approve, "set_backend_id"),
            json!({"backend_id": "lumi-2021"}),
            200,
        ),
        call(
            "POST",
            path(&approve, "set_state_by_provider"),
            json!({"state": "ok"}),
            200,
        ),
        call(
            "POST",
            path(&approve, "submit_report"),
            json!({"report": [{"header": "Login node", "body": "ssh user@lumi.example.org"}]}),
            200,
        ),
        call(
            "POST",
            path(&terminate, "set_state_by_provider"),
            json!({"state": "terminated"}),
            200,
        ),
        call(
            "POST",
            path(&erred, "set_backend_id"),
            json!({"backend_id": "lumi-2021-erred"}),
            200,
        ),
        call(
            "POST",
            path(&erred, "set_state_by_provider"),
            json!({"state": "erred"}),
            200,
        ),
    ];
    assert_calls(sim, &expected);
    let state = |a: &Value| sim.resource(&resource(a)).expect("resource exists")["state"].clone();
    assert_eq!(state(&approve), json!("OK"));
    assert_eq!(state(&terminate), json!("Terminated"));
    assert_eq!(state(&erred), json!("Erred"));
}

/// The default version: `set_as_erred` is staff-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_waldur_client_drives_waldur_7_0() {
    current_api(Expect {
        waldur: WaldurVersion::default(),
        set_as_erred: (403, "pending-provider", "Creating"),
    })
    .await;
}

/// A provider may call `set_as_erred`; it errs the resource and leaves the order pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_waldur_client_drives_waldur_8_0() {
    current_api(Expect {
        waldur: WaldurVersion::V8_0,
        set_as_erred: (200, "pending-provider", "Erred"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_waldur_client_drives_the_2021_api() {
    api_2021().await;
}
