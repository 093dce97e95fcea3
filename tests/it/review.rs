//! The review queue: an operator decides a held allocation from the review page (in
//! headless Chromium, driven through chromedriver) or the `review` commands, and the
//! worker writes it as an automatic decision, with `decided_by` in the event.

use std::io::BufRead;
use std::time::Duration;

use futures_util::FutureExt as _;
use puhuri_approver::worker::{Outcome, Settled};
use puhuri_sim::CreatedAllocation;
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestApp, WAIT, spawn_app, temp_dir};

/// Small requests are approved, big ones held for the allocation panel; operators'
/// approvals write the `[manual]` backend_id and access report.
const POLICY: &str = r#"
[[rule]]
name = "small"
when = 'limits.cpu_k_hours <= 1000'
action = "approve"
backend_id = "{project.slug}_{resource.short_uuid}"
report = [{ header = "Access", body = "Project {project.slug}" }]

[[rule]]
name = "panel"
when = 'limits.cpu_k_hours > 1000'
action = "hold"
note = "above 1000 CPU k-hours: the allocation panel decides"

[default]
action = "hold"
note = "not an automatic case"

[manual]
backend_id = "{project.slug}_{resource.short_uuid}"
report = [{ header = "Access", body = "Project {project.slug}" }]
"#;

const OPERATOR_TOKEN: &str = "alice-review-token-not-for-production";

fn review_config() -> String {
    let digest = puhuri_approver::review::session::token_sha256(OPERATOR_TOKEN);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "[review]\nlisten = \"127.0.0.1:0\"\nsecure_cookie = false\n\n[[review.operators]]\nname = \"alice\"\ntoken_sha256 = \"{hex}\"\n"
    )
}

async fn review_app(backend: Backend) -> TestApp {
    spawn_app(Options {
        policy: POLICY,
        backend,
        extra_config: review_config(),
        ..Options::default()
    })
    .await
}

fn review_url(app: &TestApp, path: &str) -> String {
    let addr = app
        .running
        .as_ref()
        .and_then(|r| r.review_addr)
        .expect("the review page is served");
    format!("http://{addr}{path}")
}

/// Waits for the worker to settle a delivery about this allocation.
async fn settled_for(app: &mut TestApp, created: &CreatedAllocation) -> Settled {
    let receiver = app.settled.as_mut().expect("workers run");
    let wait = async {
        loop {
            match receiver.recv().await {
                Ok(settled)
                    if settled.hint.resource_uuid.as_ref().map(|r| r.to_string())
                        == Some(created.resource_uuid.clone()) =>
                {
                    return settled;
                }
                Ok(_) => continue,
                Err(error) => panic!("worker events ended: {error}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the operator's decision was settled in time")
}

/// The write calls of one allocation, as `METHOD path-tail status`.
fn writes(app: &TestApp, created: &CreatedAllocation) -> Vec<String> {
    app.writes_for(created)
        .into_iter()
        .filter(|c| c.method != "GET")
        .map(|c| {
            let tail = c
                .path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            format!("{} {tail} {}", c.method, c.status)
        })
        .collect()
}

/// A form's body, as a browser encodes it.
fn form_body(pairs: &[(&str, String)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                other => format!("%{other:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// chromedriver on a free port, stopped (by its own pid) when dropped.
struct ChromeDriver {
    child: std::process::Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver runs (deploy/local/ensure-chromium installs it)");
        // It says so on standard output once it listens.
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let started = lines
            .by_ref()
            .take(20)
            .map_while(Result::ok)
            .any(|line| line.contains("started successfully"));
        assert!(started, "chromedriver did not say it started");
        // Keep reading its output so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        ChromeDriver { child, port }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &ChromeDriver) -> fantoccini::Client {
    let mut capabilities = fantoccini::wd::Capabilities::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

async fn approve_by_hand(app: &TestApp, created: &CreatedAllocation) {
    let approved = app
        .http
        .post(format!(
            "{}/api/marketplace-orders/{}/approve_by_provider/",
            app.sim_url, created.order_uuid
        ))
        .header("authorization", format!("Token {}", crate::helpers::TOKEN))
        .send()
        .await
        .expect("sim answers");
    assert_eq!(approved.status(), 200);
}

#[tokio::test]
async fn an_operator_approves_a_held_allocation_in_a_browser() {
    let mut app = review_app(Backend::RabbitMq).await;
    let mut tap = app.tap_events().await;
    let held = app.create(json!({"cpu_k_hours": 5000})).await;
    let other = app.create(json!({"cpu_k_hours": 8000})).await;
    let driver = ChromeDriver::start();
    let client = browser(&driver).await;
    // The browser session is closed whatever the outcome, so no Chromium outlives the test.
    let outcome =
        std::panic::AssertUnwindSafe(operator_session(&mut app, &client, &mut tap, &held, &other))
            .catch_unwind()
            .await;
    let _ = client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    app.stop().await;
}

async fn operator_session(
    app: &mut TestApp,
    client: &fantoccini::Client,
    tap: &mut crate::helpers::EventTap,
    held: &CreatedAllocation,
    other: &CreatedAllocation,
) {
    // Without a session: the login form, never the queue.
    let anonymous = app
        .http
        .get(review_url(app, "/"))
        .send()
        .await
        .expect("review page answers");
    assert_eq!(anonymous.status(), 401);
    let csp = anonymous
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let body = anonymous.text().await.expect("body");
    assert!(body.contains("name=\"token\""), "{body}");
    assert!(!body.contains(&held.resource_uuid), "{body}");

    // Log in with the operator's token.
    client.goto(&review_url(app, "/")).await.expect("open");
    let token = client
        .find(fantoccini::Locator::Id("token"))
        .await
        .expect("the login form");
    token.send_keys(OPERATOR_TOKEN).await.expect("type");
    client
        .find(fantoccini::Locator::Css("form button[type=submit]"))
        .await
        .expect("log in button")
        .click()
        .await
        .expect("log in");
    let listed = client
        .wait()
        .at_most(WAIT)
        .for_element(fantoccini::Locator::Css(&format!(
            "a[href='/allocations/{}']",
            held.resource_uuid
        )))
        .await;
    let Ok(link) = listed else {
        let page = client.source().await.unwrap_or_default();
        panic!("the held allocation is not listed: {page}");
    };
    let page = client.source().await.expect("source");
    assert!(page.contains("above 1000 CPU k-hours: the allocation panel decides"));
    assert!(page.contains("rule panel"));
    assert!(page.contains("cpu_k_hours=5000"));
    assert!(page.contains("Signed in as"));
    let shot = client.screenshot().await.expect("screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&dir).expect("target/tmp");
    std::fs::write(dir.join("review.png"), &shot).expect("write the screenshot");

    // The detail view, then approve.
    link.click().await.expect("open the allocation");
    let comment = client
        .wait()
        .at_most(WAIT)
        .for_element(fantoccini::Locator::Id("comment"))
        .await
        .expect("the approve form");
    let csrf = client
        .find(fantoccini::Locator::Css("input[name=csrf]"))
        .await
        .expect("csrf field")
        .attr("value")
        .await
        .expect("csrf value")
        .expect("a csrf token");
    let detail = client.source().await.expect("source");
    assert!(detail.contains("matched"), "{detail}");
    let shot = client.screenshot().await.expect("screenshot");
    std::fs::write(dir.join("review-detail.png"), &shot).expect("write the screenshot");
    comment
        .send_keys("panel minutes 2026-12")
        .await
        .expect("type");
    client
        .find(fantoccini::Locator::Css("button.approve"))
        .await
        .expect("approve button")
        .click()
        .await
        .expect("approve");
    client
        .wait()
        .at_most(WAIT)
        .for_element(fantoccini::Locator::Css("p.notice"))
        .await
        .expect("the decision is queued");
    let settled = settled_for(app, held).await;
    let backend_id = match settled.result.as_ref().ok() {
        Some(Outcome::Approved { backend_id }) => backend_id.clone(),
        other => panic!("approved, not {other:?}"),
    };
    assert!(
        backend_id.ends_with(&held.resource_uuid[..8]),
        "{backend_id}"
    );
    // The same calls as an automatic approval: set_backend_id, approve, report.
    assert_eq!(
        writes(app, held),
        vec![
            "POST set_backend_id 200",
            "POST approve_by_provider 200",
            "POST submit_report 200"
        ]
    );
    assert_eq!(app.order_state(held), "done");
    let session = client
        .get_named_cookie("puhuri_review_session")
        .await
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    let cookie = format!("puhuri_review_session={}", session.value());

    // The decision event, with who decided.
    let deadline = tokio::time::Instant::now() + WAIT;
    let event = loop {
        tap.read().await;
        if let Some(event) = tap
            .seen
            .iter()
            .find(|e| e["allocation"]["resource_uuid"] == held.resource_uuid.as_str())
        {
            break event.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no decision event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["type"], "allocation.approved");
    assert_eq!(event["backend_id"], backend_id.as_str());
    assert_eq!(
        event["decided_by"],
        json!({"kind": "operator", "name": "alice", "comment": "panel minutes 2026-12"})
    );

    // An automatic approval of a small request: the same calls, and the same event but
    // for `decided_by`.
    let automatic = app.create(json!({"cpu_k_hours": 10})).await;
    assert_eq!(app.notify("msg_automatic", &automatic).await.status(), 202);
    app.settled("msg_automatic").await;
    assert_eq!(writes(app, &automatic), writes(app, held));
    let deadline = tokio::time::Instant::now() + WAIT;
    let automatic_event = loop {
        tap.read().await;
        if let Some(event) = tap
            .seen
            .iter()
            .find(|e| e["allocation"]["resource_uuid"] == automatic.resource_uuid.as_str())
        {
            break event.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no automatic decision event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let keys = |event: &Value| -> Vec<String> {
        let mut keys: Vec<String> = event
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.retain(|k| k != "decided_by");
        keys.sort();
        keys
    };
    assert_eq!(keys(&event), keys(&automatic_event));
    assert_eq!(automatic_event.get("decided_by"), None);

    // A second click writes nothing.
    let http = app.http.clone();
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let cookie = cookie.clone();
        async move {
            http.post(path)
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_body(&form))
                .send()
                .await
                .expect("review page answers")
        }
    };
    let again = post(
        review_url(app, &format!("/allocations/{}/approve", held.resource_uuid)),
        vec![("csrf", csrf.clone()), ("comment", String::new())],
    )
    .await;
    assert_eq!(again.status(), 200, "followed to the allocation");
    let settled = settled_for(app, held).await;
    assert!(
        matches!(
            settled.result.as_ref().ok(),
            Some(Outcome::AlreadyHandled { .. })
        ),
        "{:?}",
        settled.result
    );
    assert_eq!(writes(app, held).len(), 3, "nothing more was written");

    // Decided meanwhile in Puhuri Core: the operator's approval writes nothing.
    approve_by_hand(app, other).await;
    let before = writes(app, other);
    let late = post(
        review_url(
            app,
            &format!("/allocations/{}/approve", other.resource_uuid),
        ),
        vec![("csrf", csrf.clone()), ("comment", String::new())],
    )
    .await;
    assert_eq!(late.status(), 200);
    let settled = settled_for(app, other).await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::AlreadyHandled {
            state: "order is done".into(),
            found: None
        })
    );
    assert_eq!(writes(app, other), before);

    // A forged form without the CSRF token is refused, and nothing is queued.
    let forged = post(
        review_url(app, &format!("/allocations/{}/reject", other.resource_uuid)),
        vec![("reason", "forged".into())],
    )
    .await;
    assert_eq!(forged.status(), 403);
    // A form posted without a session: 401, never data.
    let no_session = app
        .http
        .post(review_url(
            app,
            &format!("/allocations/{}/approve", other.resource_uuid),
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("csrf", csrf.clone())]))
        .send()
        .await
        .expect("review page answers");
    assert_eq!(no_session.status(), 401);
    assert_eq!(app.work_queue_depth().await, 0);

    // The page's requests are counted.
    let metrics = app
        .running
        .as_ref()
        .expect("running")
        .metrics
        .scrape()
        .await;
    assert!(
        metrics.contains("puhuri_approver_review_requests_total{route=\"/allocations/{id}/approve\",status=\"303\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "puhuri_approver_operator_decisions_total{action=\"approve\",outcome=\"approved\"} 1"
        ),
        "{metrics}"
    );
    // A team snapshot followed each approval, the operator's as the automatic one.
    assert!(
        metrics.contains("puhuri_approver_team_events_total{type=\"team.snapshot\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_review_commands_list_show_and_reject() {
    let mut app = review_app(Backend::Embedded).await;
    let held = app.create(json!({"cpu_k_hours": 5000})).await;
    let small = app.create(json!({"cpu_k_hours": 10})).await;
    let dir = temp_dir("review-cli");
    let config = app.write_config(&dir);
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
            command
                .arg("review")
                .args(&args)
                .arg("--config")
                .arg(&config);
            tokio::task::spawn_blocking(move || command.output())
                .await
                .expect("join")
                .expect("run the binary")
        }
    };

    let listed = run(vec!["list".into(), "--json".into()]).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let list: Value = serde_json::from_str(&stdout).expect("JSON");
    let ids: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert!(ids.contains(&held.resource_uuid.as_str()), "{stdout}");
    assert!(
        !ids.contains(&small.resource_uuid.as_str()),
        "the policy approves it: {stdout}"
    );
    let entry = &list[0];
    assert_eq!(entry["rule"], "panel");
    assert_eq!(
        entry["note"],
        "above 1000 CPU k-hours: the allocation panel decides"
    );
    assert_eq!(entry["limits"]["cpu_k_hours"], 5000.0);

    let filtered = run(vec!["list".into(), "--rule".into(), "default".into()]).await;
    let text = String::from_utf8_lossy(&filtered.stdout);
    assert!(text.contains("0 allocations held for a person"), "{text}");
    crate::helpers::assert_for_people("review list", &text);

    let shown = run(vec!["show".into(), held.resource_uuid.clone()]).await;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(text.contains("=> line"), "{text}");
    assert!(
        text.contains("decision now: hold by rule `panel`"),
        "{text}"
    );
    assert!(
        text.contains("an operator's approval sets backend_id"),
        "{text}"
    );
    crate::helpers::assert_for_people("review show", &text);

    // A rejection needs a reason; a wrong id is named.
    let empty = run(vec![
        "reject".into(),
        held.resource_uuid.clone(),
        "--reason".into(),
        " ".into(),
        "--as".into(),
        "bob".into(),
    ])
    .await;
    assert!(!empty.status.success());
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("a rejection needs a reason"), "{stderr}");
    let wrong = run(vec!["show".into(), "not-a-uuid".into()]).await;
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("`not-a-uuid` is not an allocation's uuid"),
        "{stderr}"
    );

    let rejected = run(vec![
        "reject".into(),
        held.resource_uuid.clone(),
        "--reason".into(),
        "the panel declined: no budget left in 2026".into(),
        "--as".into(),
        "bob".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&rejected.stdout);
    assert!(
        rejected.status.success(),
        "{}",
        String::from_utf8_lossy(&rejected.stderr)
    );
    assert!(text.contains("rejection of resource"), "{text}");
    let settled = settled_for(&mut app, &held).await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Rejected {
            reason: "the panel declined: no budget left in 2026".into()
        })
    );
    assert_eq!(app.order_state(&held), "rejected");
    let mut events = app.tap_events().await;
    events.read().await;
    let event = events
        .seen
        .iter()
        .find(|e| e["allocation"]["resource_uuid"] == held.resource_uuid.as_str())
        .expect("a decision event");
    assert_eq!(event["type"], "allocation.rejected");
    assert_eq!(
        event["reason"],
        "the panel declined: no budget left in 2026"
    );
    assert_eq!(event["decided_by"]["name"], "bob");
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_operator() {
    let (captured, _logs) = crate::helpers::capture_thread_logs("info");
    let mut app = spawn_app(Options {
        policy: POLICY,
        backend: Backend::Embedded,
        extra_config: "[review]\nlisten = \"127.0.0.1:0\"\ntrusted_header = \"X-Forwarded-User\"\ntrusted_proxies = [\"127.0.0.1/32\", \"::1\"]\n".into(),
        ..Options::default()
    })
    .await;
    let held = app.create(json!({"cpu_k_hours": 5000})).await;
    let detail = review_url(&app, &format!("/allocations/{}", held.resource_uuid));
    // Without the header there is no operator: 401 and no data.
    let anonymous = app.http.get(&detail).send().await.expect("answers");
    assert_eq!(anonymous.status(), 401);
    let body = anonymous.text().await.expect("body");
    assert!(!body.contains("5000"), "{body}");

    let page = app
        .http
        .get(&detail)
        .header("x-forwarded-user", "carol")
        .send()
        .await
        .expect("answers");
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    let body = page.text().await.expect("body");
    assert!(
        body.contains("Signed in as <strong>carol</strong>"),
        "{body}"
    );
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf token in the form")
        .to_owned();
    // Another operator's token is not this one's.
    let as_dave = app
        .http
        .post(format!("{detail}/reject"))
        .header("x-forwarded-user", "dave")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("csrf", csrf.clone()),
            ("reason", "no".into()),
        ]))
        .send()
        .await
        .expect("answers");
    assert_eq!(as_dave.status(), 403);
    let rejected = app
        .http
        .post(format!("{detail}/reject"))
        .header("x-forwarded-user", "carol")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("csrf", csrf.clone()),
            ("reason", "the panel declined".into()),
        ]))
        .send()
        .await
        .expect("answers");
    assert_eq!(rejected.status(), 200, "followed to the allocation");
    let settled = settled_for(&mut app, &held).await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Rejected {
            reason: "the panel declined".into()
        })
    );
    // Decided: the detail says so and offers no form.
    let after = app
        .http
        .get(&detail)
        .header("x-forwarded-user", "carol")
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("body");
    assert!(
        after.contains("no longer waits for the provider"),
        "{after}"
    );
    assert!(!after.contains("/reject\""), "{after}");
    // Every request is logged with its operator; a refused form says why, without the token.
    let logs = captured.text();
    assert!(
        logs.contains(
            "review request operator=carol method=POST route=/allocations/{id}/reject status=303"
        ),
        "{logs}"
    );
    assert!(
        logs.contains("review request operator=\"-\" method=GET"),
        "{logs}"
    );
    assert!(
        logs.contains("form refused: its CSRF token is missing or wrong operator=dave"),
        "{logs}"
    );
    assert!(!logs.contains(&csrf), "{logs}");
    app.stop().await;
}

/// `/metrics` of the app, as text.
async fn metrics_text(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body")
}

/// Scrapes `/metrics` until `wanted` holds (each scrape waits for the last to answer).
async fn metrics_until(app: &TestApp, wanted: impl Fn(&str) -> bool) -> String {
    let poll = async {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        loop {
            every.tick().await;
            let text = metrics_text(app).await;
            if wanted(&text) {
                return text;
            }
        }
    };
    match tokio::time::timeout(WAIT, poll).await {
        Ok(text) => text,
        Err(_) => panic!("/metrics never showed it:\n{}", metrics_text(app).await),
    }
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test]
async fn the_held_gauges_follow_the_queue_without_a_visitor() {
    let (captured, _logs) = crate::helpers::capture_thread_logs("info");
    let app = spawn_app(Options {
        policy: POLICY,
        backend: Backend::Embedded,
        extra_config: review_config().replace(
            "secure_cookie = false\n",
            "secure_cookie = false\nrefresh_secs = 1\n",
        ),
        ..Options::default()
    })
    .await;
    // The pending listing fails: each refresh counts it, the log says so once.
    app.sim.set_faults(puhuri_sim::Faults {
        error_rate: 1.0,
        error_path: Some("/marketplace-orders/".into()),
        error_statuses: vec![400],
        ..Default::default()
    });
    let held = app.create(json!({"cpu_k_hours": 5000})).await;
    metrics_until(&app, |m| {
        sample(m, "puhuri_approver_review_refresh_failures_total").is_some_and(|n| n >= 2.0)
    })
    .await;
    let logs = || captured.text();
    assert_eq!(
        logs().matches("review queue refresh failed").count(),
        1,
        "{}",
        logs()
    );
    app.sim.set_faults(puhuri_sim::Faults::default());

    // Nobody opens the page, yet the gauges show the held allocation.
    let metrics = metrics_until(&app, |m| {
        sample(m, "puhuri_approver_review_held") == Some(1.0)
    })
    .await;
    assert!(
        !metrics.contains("puhuri_approver_review_requests_total{"),
        "{metrics}"
    );
    assert!(
        logs().contains("review queue refreshed again"),
        "{}",
        logs()
    );
    // Decided elsewhere: the next refresh drops it.
    approve_by_hand(&app, &held).await;
    metrics_until(&app, |m| {
        sample(m, "puhuri_approver_review_held") == Some(0.0)
            && sample(m, "puhuri_approver_review_oldest_held_age_seconds") == Some(0.0)
    })
    .await;
    app.stop().await;
}

/// A client of the review page from `from`, following no redirect.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(Some(from.parse().expect("address")))
        .build()
        .expect("client")
}

/// Opens the login form: its cookie (`name=value`) and CSRF token.
async fn login_form(app: &TestApp, client: &reqwest::Client) -> (String, String) {
    let form = client
        .get(review_url(app, "/login"))
        .send()
        .await
        .expect("login form answers");
    let cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("the login form's cookie")
        .to_owned();
    let body = form.text().await.expect("body");
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the login form's csrf token")
        .to_owned();
    (cookie, csrf)
}

async fn log_in(
    app: &TestApp,
    client: &reqwest::Client,
    form: &(String, String),
    token: &str,
) -> reqwest::Response {
    client
        .post(review_url(app, "/login"))
        .header("cookie", &form.0)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("csrf", form.1.clone()),
            ("token", token.into()),
        ]))
        .send()
        .await
        .expect("login answers")
}

#[tokio::test]
async fn login_attempts_are_throttled_per_client_address() {
    let app = review_app(Backend::Embedded).await;
    let guesser = client_from("127.0.0.1");
    let form = login_form(&app, &guesser).await;
    for _ in 0..puhuri_approver::review::web::LOGIN_BURST {
        let refused = log_in(&app, &guesser, &form, "a-guess").await;
        assert_eq!(refused.status(), 401);
        let body = refused.text().await.expect("body");
        assert!(body.contains("That token is not an operator"), "{body}");
    }
    // Past the burst even the right token is not looked at.
    let throttled = log_in(&app, &guesser, &form, OPERATOR_TOKEN).await;
    assert_eq!(throttled.status(), 429);
    let retry_after: u64 = throttled
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(
        (1..=puhuri_approver::review::web::LOGIN_PERIOD.as_secs()).contains(&retry_after),
        "{retry_after}"
    );
    assert!(throttled.headers().get("set-cookie").is_none());
    let body = throttled.text().await.expect("body");
    assert!(
        body.contains("Too many login attempts from your address"),
        "{body}"
    );
    assert!(
        body.contains("name=\"token\""),
        "the login form again: {body}"
    );

    // Another address is not held back by the first one's guesses.
    let operator = client_from("127.0.0.2");
    let form = login_form(&app, &operator).await;
    let logged_in = log_in(&app, &operator, &form, OPERATOR_TOKEN).await;
    assert_eq!(logged_in.status(), 303);
    assert!(
        logged_in.headers().get_all("set-cookie").iter().any(|v| v
            .to_str()
            .is_ok_and(|v| v.starts_with("puhuri_review_session="))),
        "a session cookie"
    );
    let metrics = metrics_text(&app).await;
    assert!(
        metrics
            .contains("puhuri_approver_review_requests_total{route=\"/login\",status=\"429\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}
