//! End-to-end tests of the simulator over real HTTP (a listener on 127.0.0.1:0).

use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use puhuri_auth::Secret;

const TOKEN: &str = "sim-test-token-0123456789";

struct Running {
    sim: Sim,
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_with(hook: Option<HookTarget>) -> Running {
    start_as(hook, WaldurVersion::V7_0).await
}

async fn start_version(waldur: WaldurVersion) -> Running {
    start_as(None, waldur).await
}

async fn start_as(hook: Option<HookTarget>, waldur: WaldurVersion) -> Running {
    let sim = Sim::new(SimConfig {
        tokens: vec![Secret::new(TOKEN)],
        hook,
        seed: true,
        public_url: None,
        waldur,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(sim.clone().serve(listener, shutdown.clone()));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Running {
        sim,
        base,
        client,
        shutdown,
    }
}

async fn start() -> Running {
    start_with(None).await
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (u16, HeaderMap, Value) {
        let response = self
            .client
            .get(self.url(path))
            .header("Authorization", format!("Token {TOKEN}"))
            .send()
            .await
            .unwrap();
        split(response).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url(path))
            .header("Authorization", format!("Token {TOKEN}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, _, body) = split(request.send().await.unwrap()).await;
        (status, body)
    }

    async fn allocate(&self, project: &str, offering: &str) -> CreatedAllocation {
        self.sim
            .create_allocation(NewAllocation {
                project: Some(project.into()),
                offering: Some(offering.into()),
                limits: json!({"cpu_k_hours": 1000, "gb_k_hours": 3000})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ..NewAllocation::default()
            })
            .await
            .unwrap()
    }

    async fn allocate_slurm(&self) -> CreatedAllocation {
        self.sim
            .create_allocation(NewAllocation {
                project: Some("Climate extremes".into()),
                offering: Some("LUMI-Slurm".into()),
                ..NewAllocation::default()
            })
            .await
            .unwrap()
    }
}

async fn split(response: reqwest::Response) -> (u16, HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn authentication_is_required_and_checked() {
    let s = start().await;
    let (status, headers, body) = split(
        s.client
            .get(s.url("/api/marketplace-orders/"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"detail": "Authentication credentials were not provided."})
    );
    assert_eq!(header(&headers, "www-authenticate"), "Token");

    let (status, _, body) = split(
        s.client
            .get(s.url("/api/marketplace-orders/"))
            .header("Authorization", "Token wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"detail": "Invalid token."}));

    let (status, _, _) = split(
        s.client
            .get(s.url("/api/marketplace-orders/"))
            .header("Authorization", format!("tOkEn {TOKEN}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unknown_uuid_is_404_and_missing_slash_is_301() {
    let s = start().await;
    let (status, _, body) = s
        .get("/api/marketplace-orders/0f0e0d0c0b0a09080706050403020100/")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"detail": "No Order matches the given query."}));
    let (status, _, body) = s.get("/api/marketplace-orders/not-a-uuid/").await;
    assert_eq!(
        (status, body),
        (404, json!({"detail": "Not found."})),
        "a malformed uuid fails the lookup itself"
    );

    let (status, headers, _) = s.get("/api/marketplace-orders?state=done").await;
    assert_eq!(status, 301);
    assert_eq!(
        header(&headers, "location"),
        "/api/marketplace-orders/?state=done"
    );

    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let path = format!(
        "/api/marketplace-orders/{}/approve_by_provider",
        created.order_uuid
    );
    let (status, _) = s.post(&path, None).await;
    assert_eq!(status, 301);
    let last = s.sim.calls().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("POST", 301));
    assert_eq!(
        s.sim.order(&created.order_uuid).unwrap()["state"],
        "pending-provider"
    );

    let (status, _, body) = s
        .get(&format!(
            "/api/marketplace-orders/{}/approve_by_provider/",
            created.order_uuid
        ))
        .await;
    assert_eq!(status, 405);
    assert_eq!(body, json!({"detail": "Method \"GET\" not allowed."}));
}

#[tokio::test]
async fn approve_completes_basic_allocation_once() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    // The hyphenated form is accepted too.
    let hyphenated = uuid::Uuid::parse_str(&created.order_uuid)
        .unwrap()
        .hyphenated()
        .to_string();
    let path = format!("/api/marketplace-orders/{hyphenated}/approve_by_provider/");
    let (status, body) = s.post(&path, None).await;
    assert_eq!((status, body), (200, Value::Null));

    let (_, _, order) = s
        .get(&format!("/api/marketplace-orders/{}/", created.order_uuid))
        .await;
    assert_eq!(order["state"], "done");
    assert_eq!(order["provider_reviewed_by"], "sp-integration");
    assert!(
        order["provider_reviewed_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(
        order["marketplace_resource_uuid"],
        created.resource_uuid.as_str()
    );
    assert_eq!(order["resource_uuid"], Value::Null);

    let (_, _, resource) = s
        .get(&format!(
            "/api/marketplace-provider-resources/{}/",
            created.resource_uuid
        ))
        .await;
    assert_eq!(resource["state"], "OK");
    assert_eq!(resource["creation_order"]["state"], "done");
    assert_eq!(
        resource["limits"],
        json!({"cpu_k_hours": 1000, "gb_k_hours": 3000})
    );

    let (status, body) = s.post(&path, None).await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        json!({"detail": "Valid states for operation: pending-provider."})
    );
}

#[tokio::test]
async fn expired_project_is_refused_before_the_state_check() {
    let s = start().await;
    let created = s
        .sim
        .create_allocation(NewAllocation {
            project: Some("Ocean circulation".into()),
            order_state: Some("pending-consumer".into()),
            ..NewAllocation::default()
        })
        .await
        .unwrap();
    let (status, body) = s
        .post(
            &format!(
                "/api/marketplace-orders/{}/approve_by_provider/",
                created.order_uuid
            ),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!([
            "Project 'Ocean circulation | Norwegian University of Science and Technology' is expired."
        ])
    );
    assert_eq!(
        s.sim.order(&created.order_uuid).unwrap()["state"],
        "pending-consumer"
    );
}

#[tokio::test]
async fn reject_stores_the_comment_and_terminates() {
    let s = start().await;
    let created = s.allocate("Protein dynamics", "LUMI-C").await;
    let path = format!(
        "/api/marketplace-orders/{}/reject_by_provider/",
        created.order_uuid
    );
    let (status, body) = s
        .post(
            &path,
            Some(json!({"provider_rejection_comment": "Exceeds quota"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let order = s.sim.order(&created.order_uuid).unwrap();
    assert_eq!(order["state"], "rejected");
    assert_eq!(order["provider_rejection_comment"], "Exceeds quota");
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["state"],
        "Terminated"
    );
    let (status, _) = s.post(&path, Some(json!({}))).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn set_backend_id_validates_and_is_idempotent() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let path = format!(
        "/api/marketplace-provider-resources/{}/set_backend_id/",
        created.resource_uuid
    );
    let (status, body) = s
        .post(&path, Some(json!({"backend_id": "project_465000001"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "Resource backend_id has been changed."})
    );
    let (status, body) = s
        .post(&path, Some(json!({"backend_id": "project_465000001"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "Resource backend_id is not changed."})
    );
    let (status, body) = s.post(&path, Some(json!({}))).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"backend_id": ["This field is required."]}));
    let (status, body) = s
        .post(&path, Some(json!({"backend_id": "x".repeat(256)})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"backend_id": ["Ensure this field has no more than 255 characters."]})
    );
    let (_, _, listed) = s
        .get("/api/marketplace-resources/?backend_id=project_465000001")
        .await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    let response = s
        .client
        .post(s.url(&path))
        .header("Authorization", format!("Token {TOKEN}"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, _, body) = split(response).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error - "),
        "{body}"
    );
}

#[tokio::test]
async fn set_as_erred_is_staff_only_on_7_0_before_the_object_lookup() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    for uuid in [
        created.resource_uuid.as_str(),
        "0f0e0d0c0b0a09080706050403020100",
    ] {
        let (status, body) = s
            .post(
                &format!("/api/marketplace-provider-resources/{uuid}/set_as_erred/"),
                Some(json!({"error_message": "no capacity", "error_traceback": ""})),
            )
            .await;
        assert_eq!(
            (status, body),
            (
                403,
                json!({"detail": "You do not have permission to perform this action."})
            )
        );
    }
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["state"],
        "Creating"
    );
    assert_eq!(
        s.sim.order(&created.order_uuid).unwrap()["state"],
        "pending-provider"
    );
}

#[tokio::test]
async fn set_as_erred_on_8_0_errs_the_resource_and_leaves_the_order_pending() {
    let s = start_version(WaldurVersion::V8_0).await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let (status, body) = s
        .post(
            &format!(
                "/api/marketplace-provider-resources/{}/set_as_erred/",
                created.resource_uuid
            ),
            Some(json!({"error_message": "no capacity", "error_traceback": ""})),
        )
        .await;
    assert_eq!((status, body), (200, Value::Null));
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["state"],
        "Erred"
    );
    let order = s.sim.order(&created.order_uuid).unwrap();
    assert_eq!(order["state"], "pending-provider");
    assert_eq!(order["error_message"], "");
}

#[tokio::test]
async fn set_state_erred_is_only_for_agent_offerings() {
    let s = start().await;
    let basic = s.allocate("Climate extremes", "LUMI-C").await;
    let (status, body) = s
        .post(
            &format!(
                "/api/marketplace-orders/{}/set_state_erred/",
                basic.order_uuid
            ),
            Some(json!({"error_message": "x", "error_traceback": "y"})),
        )
        .await;
    assert_eq!(status, 405);
    assert_eq!(
        body,
        json!({"detail": "The order's offering with Marketplace.Basic type does not support this action"})
    );

    let slurm = s.allocate_slurm().await;
    let path = format!(
        "/api/marketplace-orders/{}/set_state_erred/",
        slurm.order_uuid
    );
    let (status, body) = s.post(&path, Some(json!({"error_message": "x"}))).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error_traceback": ["This field is required."]})
    );
    let (status, _) = s
        .post(
            &path,
            Some(json!({"error_message": "x", "error_traceback": "y"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.sim.order(&slurm.order_uuid).unwrap()["state"], "erred");
    assert_eq!(
        s.sim.resource(&slurm.resource_uuid).unwrap()["state"],
        "Terminated"
    );
}

#[tokio::test]
async fn agent_offering_approval_waits_for_set_state_done() {
    let s = start().await;
    let slurm = s.allocate_slurm().await;
    let order = format!("/api/marketplace-orders/{}", slurm.order_uuid);
    let (status, _) = s.post(&format!("{order}/approve_by_provider/"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.sim.order(&slurm.order_uuid).unwrap()["state"],
        "executing"
    );
    assert_eq!(
        s.sim.resource(&slurm.resource_uuid).unwrap()["state"],
        "Creating"
    );
    let (status, _) = s.post(&format!("{order}/set_state_done/"), None).await;
    assert_eq!(status, 200);
    assert_eq!(s.sim.order(&slurm.order_uuid).unwrap()["state"], "done");
    assert_eq!(s.sim.resource(&slurm.resource_uuid).unwrap()["state"], "OK");
}

#[tokio::test]
async fn set_state_by_provider_follows_the_2021_state_machine() {
    let s = start_version(WaldurVersion::V2021).await;
    let created = s.allocate("Wind farm wakes", "LUMI-C").await;
    let path = format!(
        "/api/marketplace-resources/{}/set_state_by_provider/",
        created.resource_uuid
    );
    let (status, body) = s.post(&path, Some(json!({"state": "ok"}))).await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "Resource state has been changed."}))
    );
    assert_eq!(s.sim.order(&created.order_uuid).unwrap()["state"], "done");
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["state"],
        "OK"
    );

    let (status, body) = s.post(&path, Some(json!({"state": "ok"}))).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"status": "Can't switch from state 'OK' to 'ok'."})
    );

    let (status, body) = s.post(&path, Some(json!({"state": "bogus"}))).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"state": ["\"bogus\" is not a valid choice."]}));

    let (status, _) = s.post(&path, Some(json!({"state": "erred"}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["state"],
        "Erred"
    );
    let (status, _) = s.post(&path, Some(json!({"state": "ok"}))).await;
    assert_eq!(status, 200);
    let (status, _) = s.post(&path, Some(json!({"state": "terminated"}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["state"],
        "Terminated"
    );

    let pending = s.allocate("Wind farm wakes", "LUMI-C").await;
    let (status, _) = s
        .post(
            &format!(
                "/api/marketplace-resources/{}/set_state_by_provider/",
                pending.resource_uuid
            ),
            Some(json!({"state": "terminated"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.sim.order(&pending.order_uuid).unwrap()["state"],
        "rejected"
    );
}

#[tokio::test]
async fn lists_paginate_with_link_and_count() {
    let s = start().await;
    for _ in 0..25 {
        s.allocate("Estonian language models", "LUMI-C").await;
    }
    let list = "/api/marketplace-orders/";
    let query = "state=pending-provider&page_size=10";
    let (status, headers, body) = s.get(&format!("{list}?{query}")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-result-count"), "25");
    assert_eq!(body.as_array().map(Vec::len), Some(10));
    let first = format!("{}{list}?page_size=10&state=pending-provider", s.base);
    assert_eq!(
        header(&headers, "link"),
        format!(
            "<{first}>; rel=\"first\", <{}{list}?page=2&page_size=10&state=pending-provider>; rel=\"next\", <{}{list}?page=3&page_size=10&state=pending-provider>; rel=\"last\"",
            s.base, s.base
        )
    );

    let (_, headers, second) = s.get(&format!("{list}?{query}&page=2")).await;
    assert_eq!(second.as_array().map(Vec::len), Some(10));
    let link = header(&headers, "link");
    assert!(link.contains(&format!("<{first}>; rel=\"prev\"")), "{link}");
    assert!(
        link.contains("page=3&page_size=10&state=pending-provider>; rel=\"next\""),
        "{link}"
    );
    // Pages do not overlap and follow creation order.
    let created_first = body[9]["created"].as_str().unwrap().to_string();
    let created_second = second[0]["created"].as_str().unwrap().to_string();
    assert!(created_first < created_second);

    let (_, headers, third) = s.get(&format!("{list}?{query}&page=3")).await;
    assert_eq!(third.as_array().map(Vec::len), Some(5));
    assert!(!header(&headers, "link").contains("rel=\"next\""));

    let (status, _, body) = s.get(&format!("{list}?{query}&page=4")).await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"detail": "Invalid page."}));

    let response = s
        .client
        .head(s.url(&format!("{list}?{query}")))
        .header("Authorization", format!("Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(header(response.headers(), "x-result-count"), "25");
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn filters_and_field_selection() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    s.allocate("Protein dynamics", "LUMI-C").await;
    let catalogue = s.sim.catalogue();
    let uh = &catalogue.customers[1];
    let (_, _, body) = s
        .get(&format!(
            "/api/marketplace-provider-resources/?customer_uuid={}&state=Creating&field=uuid&field=state",
            uh.uuid
        ))
        .await;
    assert_eq!(
        body,
        json!([{"uuid": created.resource_uuid, "state": "Creating"}])
    );
    let (_, _, body) = s.get("/api/marketplace-orders/?field=nonexistent").await;
    assert!(body[0].get("offering_uuid").is_some());

    let (status, _, body) = s
        .get("/api/marketplace-orders/?state=Bogus&offering_uuid=nope")
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({
            "state": ["Select a valid choice. Bogus is not one of the available choices."],
            "offering_uuid": ["Enter a valid UUID."]
        })
    );
}

#[tokio::test]
async fn fail_next_answers_the_fault_and_records_it() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let admin = s
        .client
        .put(s.url("/admin/faults"))
        .json(&json!({"fail_next": 2, "fail_status": 503}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status().as_u16(), 204);
    let path = format!(
        "/api/marketplace-orders/{}/approve_by_provider/",
        created.order_uuid
    );
    assert_eq!(s.post(&path, None).await.0, 503);
    assert_eq!(s.get("/api/marketplace-orders/").await.0, 503);
    assert_eq!(
        s.sim.order(&created.order_uuid).unwrap()["state"],
        "pending-provider"
    );
    assert_eq!(s.post(&path, None).await.0, 200);
    let statuses: Vec<u16> = s.sim.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![503, 200]);
}

#[tokio::test]
async fn admin_api_creates_and_refuses_with_problems() {
    let s = start().await;
    let response = s
        .client
        .post(s.url("/admin/allocations"))
        .json(&json!({"offering": "LUMI-G", "limits": {"cpu_k_hours": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        header(response.headers(), "content-type"),
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 400);
    assert_eq!(
        problem["detail"],
        "offering `LUMI-G` has no component `cpu_k_hours`"
    );

    let response = s
        .client
        .post(s.url("/admin/allocations"))
        .json(&json!({"project": "No such project"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    let response = s
        .client
        .post(s.url("/admin/allocations"))
        .json(&json!({"offering": "LUMI-G", "limits": {"gpu_k_hours": 10}, "attributes": {"is_industry": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: CreatedAllocation = response.json().await.unwrap();
    let order = s.sim.order(&created.order_uuid).unwrap();
    assert_eq!(order["offering_name"], "LUMI-G");
    assert_eq!(order["limits"], json!({"gpu_k_hours": 10}));
    assert!(s.sim.calls().is_empty(), "admin calls are not recorded");

    let response = s
        .client
        .post(s.url("/admin/customers"))
        .json(&json!({"name": "Aalto University", "country": "FI"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let response = s
        .client
        .post(s.url("/admin/projects"))
        .json(&json!({"customer": "Aalto University", "name": "Fusion", "end_date": "2099-01-01"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let catalogue: Catalogue = s
        .client
        .get(s.url("/admin/catalogue"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(catalogue.projects.iter().any(|p| p.name == "Fusion"
        && p.customer_name == "Aalto University"
        && p.end_date.as_deref() == Some("2099-01-01")));
}

/// A receiver that forwards each request's headers and body.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Vec<u8>)>,
    CancellationToken,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body.to_vec()));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    (url, rx, stop)
}

#[tokio::test]
async fn allocation_hook_is_signed() {
    let (url, mut rx, stop) = receiver().await;
    let secret =
        puhuri_auth::signature::WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
    let s = start_with(Some(HookTarget {
        url,
        format: HookFormat::Allocation {
            secret: secret.clone(),
        },
    }))
    .await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let (headers, body) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let signed = puhuri_auth::signature::SignedHeaders {
        id: headers.get("webhook-id").and_then(|v| v.to_str().ok()),
        timestamp: headers
            .get("webhook-timestamp")
            .and_then(|v| v.to_str().ok()),
        signature: headers
            .get("webhook-signature")
            .and_then(|v| v.to_str().ok()),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let id = puhuri_auth::signature::verify(&[secret], signed, &body, now, 60).unwrap();
    assert!(id.starts_with("msg_"));
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["type"], "allocation.created");
    assert_eq!(payload["order_uuid"], created.order_uuid.as_str());
    assert_eq!(payload["resource_uuid"], created.resource_uuid.as_str());
    assert_eq!(payload["offering_uuid"], created.offering_uuid.as_str());
    assert_eq!(header(&headers, "content-type"), "application/json");
    stop.cancel();
}

#[tokio::test]
async fn waldur_hook_has_flat_context() {
    let (url, mut rx, stop) = receiver().await;
    let s = start_with(Some(HookTarget {
        url,
        format: HookFormat::WaldurHook,
    }))
    .await;
    let created = s
        .sim
        .create_allocation(NewAllocation {
            attributes: json!({"is_industry": true, "is_commercial": false})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..NewAllocation::default()
        })
        .await
        .unwrap();
    let (headers, body) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(headers.get("webhook-signature").is_none());
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["event_type"], "marketplace_resource_create_requested");
    let context = &event["context"];
    assert_eq!(context["order_uuid"], created.order_uuid.as_str());
    assert_eq!(context["resource_uuid"], created.resource_uuid.as_str());
    assert_eq!(context["order_state"], "pending-provider");
    assert_eq!(context["resource_attributes"]["is_industry"], "True");
    assert_eq!(context["resource_attributes"]["is_commercial"], "False");
    assert_eq!(context["resource_end_date"], "None");
    stop.cancel();
}

#[tokio::test]
async fn concurrent_approvals_succeed_exactly_once() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let path = format!(
        "/api/marketplace-orders/{}/approve_by_provider/",
        created.order_uuid
    );
    let attempts = (0..16).map(|_| s.post(&path, None));
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 15);
    assert_eq!(s.sim.calls().len(), 16);
}

#[tokio::test]
async fn error_rate_one_always_fails_with_an_html_500() {
    let s = start().await;
    s.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let response = s
        .client
        .get(s.url("/api/marketplace-orders/"))
        .header("Authorization", format!("Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    assert_eq!(
        response.text().await.unwrap(),
        "<h1>Server Error (500)</h1>"
    );
    s.sim.set_faults(Faults::default());
    assert_eq!(s.get("/api/marketplace-orders/").await.0, 200);
}

// ----- teams, offerings, plan periods and usage -----

impl Running {
    /// A LUMI-C allocation of `Climate extremes`, approved (resource `OK`).
    async fn approved(&self, project: &str) -> CreatedAllocation {
        let created = self.allocate(project, "LUMI-C").await;
        let path = format!(
            "/api/marketplace-orders/{}/approve_by_provider/",
            created.order_uuid
        );
        assert_eq!(self.post(&path, None).await.0, 200);
        created
    }

    async fn set_usage(&self, body: Value) -> (u16, Value) {
        self.post("/api/marketplace-component-usages/set_usage/", Some(body))
            .await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, _, body) = split(request.send().await.unwrap()).await;
        (status, body)
    }
}

fn this_month() -> String {
    state::date_string(usage::month_start(time::OffsetDateTime::now_utc()))
}

#[tokio::test]
async fn team_lists_the_project_members_unpaginated_and_refuses_post() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let path = format!(
        "/api/marketplace-provider-resources/{}/team/",
        created.resource_uuid
    );
    let (status, headers, team) = s.get(&path).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-result-count").is_none());
    assert!(headers.get("link").is_none());
    let usernames: Vec<&str> = team
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert_eq!(
        usernames,
        vec![
            "aino.virtanen@helsinki.fi",
            "climate-extremes-member1",
            "climate-extremes-member2"
        ]
    );
    let pi_uuid = state::hex(team::user_uuid("aino.virtanen@helsinki.fi"));
    assert_eq!(
        team[0],
        json!({
            "url": format!("{}/api/users/{pi_uuid}/", s.base),
            "uuid": pi_uuid,
            "username": "aino.virtanen@helsinki.fi",
            "full_name": "Aino Virtanen",
            "email": "aino.virtanen@helsinki.fi",
            "role": "manager",
            "expiration_time": null,
            "offering_user_username": null,
        })
    );
    assert_eq!(team[1]["role"], "member");
    assert_eq!(team[1]["email"], "climate-extremes-member1@example.org");

    let (status, _, old) = s
        .get(&format!(
            "/api/marketplace-resources/{}/team/",
            created.resource_uuid
        ))
        .await;
    assert_eq!((status, &old), (200, &team));

    let response = s
        .client
        .post(s.url(&path))
        .header("Authorization", format!("Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(response.headers(), "allow"), "GET, HEAD, OPTIONS");
    let (status, _, body) = split(response).await;
    assert_eq!(status, 405);
    assert_eq!(body, json!({"detail": "Method \"POST\" not allowed."}));
    let calls: Vec<(String, u16)> = s
        .sim
        .calls()
        .into_iter()
        .map(|c| (c.path, c.status))
        .collect();
    assert_eq!(calls, vec![(path, 405)]);

    let (status, _, body) = s
        .get("/api/marketplace-provider-resources/0f0e0d0c0b0a09080706050403020100/team/")
        .await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"detail": "No Resource matches the given query."})
        )
    );
}

#[tokio::test]
async fn admin_api_adds_and_removes_project_members() {
    let s = start().await;
    let members = "/admin/projects/Climate%20extremes/members";
    let (status, body) = s.admin(reqwest::Method::GET, members, None).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(3));

    let (status, member) = s
        .admin(
            reqwest::Method::POST,
            members,
            Some(json!({"username": "new.admin@helsinki.fi", "full_name": "New Admin", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(member["email"], "new.admin@helsinki.fi");
    assert_eq!(member["role"], "admin");
    let (status, problem) = s
        .admin(
            reqwest::Method::POST,
            members,
            Some(json!({"username": "new.admin@helsinki.fi"})),
        )
        .await;
    assert_eq!((status, problem["status"].clone()), (409, json!(409)));
    let (status, _) = s
        .admin(
            reqwest::Method::POST,
            members,
            Some(json!({"username": "someone", "role": "owner"})),
        )
        .await;
    assert_eq!(status, 400);

    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let (_, _, team) = s
        .get(&format!(
            "/api/marketplace-provider-resources/{}/team/",
            created.resource_uuid
        ))
        .await;
    assert_eq!(team.as_array().map(Vec::len), Some(4));
    assert_eq!(team[1]["username"], "climate-extremes-member1");
    assert_eq!(team[3]["username"], "new.admin@helsinki.fi");

    let project_uuid = &created.project_uuid;
    let one = format!("/admin/projects/{project_uuid}/members/climate-extremes-member1");
    assert_eq!(s.admin(reqwest::Method::DELETE, &one, None).await.0, 204);
    assert_eq!(s.admin(reqwest::Method::DELETE, &one, None).await.0, 404);
    assert_eq!(
        s.admin(reqwest::Method::GET, "/admin/projects/Nope/members", None)
            .await
            .0,
        404
    );
    let left: Vec<Value> = s.sim.project_members("Climate extremes").unwrap();
    let names: Vec<&str> = left
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "aino.virtanen@helsinki.fi",
            "climate-extremes-member2",
            "new.admin@helsinki.fi"
        ]
    );
    assert!(s.sim.remove_member("Climate extremes", "nobody").is_err());
}

#[tokio::test]
async fn offerings_render_components_and_plans_under_both_paths() {
    let s = start().await;
    let (status, headers, list) = s.get("/api/marketplace-provider-offerings/").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-result-count"), "3");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["LUMI-C", "LUMI-G", "LUMI-Slurm"]);

    let catalogue = s.sim.catalogue();
    let slurm = catalogue
        .offerings
        .iter()
        .find(|o| o.name == "LUMI-Slurm")
        .unwrap();
    assert_eq!(
        slurm.components,
        vec!["cpu_k_hours", "gpu_k_hours", "gb_k_hours"],
        "the catalogue lists the components limits may name"
    );
    let (status, _, offering) = s
        .get(&format!(
            "/api/marketplace-provider-offerings/{}/",
            slurm.uuid
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        offering["url"],
        format!(
            "{}/api/marketplace-provider-offerings/{}/",
            s.base, slurm.uuid
        )
    );
    assert_eq!(offering["type"], "Marketplace.Slurm");
    assert_eq!(offering["state"], "Active");
    assert_eq!(offering["customer_uuid"], slurm.provider_uuid.as_str());
    let components: Vec<(&str, &str, &str, &str)> = offering["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap(),
                c["name"].as_str().unwrap(),
                c["measured_unit"].as_str().unwrap(),
                c["billing_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        components,
        vec![
            ("cpu_k_hours", "CPU k-hours", "k-hours", "limit"),
            ("gpu_k_hours", "GPU k-hours", "k-hours", "limit"),
            ("project_fee", "Project fee", "month", "fixed"),
            ("gb_k_hours", "Storage GB k-hours", "GB k-hours", "limit"),
        ]
    );
    assert_eq!(offering["plans"][0]["uuid"], slurm.plan_uuid.as_str());
    assert_eq!(offering["plans"][0]["name"], "LUMI-Slurm Standard");
    assert_eq!(
        offering["plans"][0]["url"],
        format!("{}/api/marketplace-plans/{}/", s.base, slurm.plan_uuid)
    );

    let (status, _, _) = s
        .get(&format!("/api/marketplace-offerings/{}/", slurm.uuid))
        .await;
    assert_eq!(status, 404, "7.0 has no `marketplace-offerings` view");
    let old_sim = start_version(WaldurVersion::V2021).await;
    let (status, _, old) = old_sim
        .get(&format!("/api/marketplace-offerings/{}/", slurm.uuid))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        old["url"],
        format!("{}/api/marketplace-offerings/{}/", old_sim.base, slurm.uuid)
    );
    assert_eq!(old["components"], offering["components"]);
    let (status, _, _) = old_sim
        .get("/api/marketplace-offerings/0f0e0d0c0b0a09080706050403020100/")
        .await;
    assert_eq!(status, 404);

    let (status, _) = s
        .admin(
            reqwest::Method::POST,
            "/admin/offerings",
            Some(json!({"name": "LUMI-Q", "components": [
                "qpu_seconds",
                {"type": "qpu_jobs", "billing_type": "usage", "name": "QPU jobs", "measured_unit": "jobs"}
            ]})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, _, listed) = s
        .get("/api/marketplace-provider-offerings/?name_exact=LUMI-Q")
        .await;
    assert_eq!(
        listed[0]["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (
                c["type"].clone(),
                c["billing_type"].clone(),
                c["name"].clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            (json!("qpu_jobs"), json!("usage"), json!("QPU jobs")),
            (json!("qpu_seconds"), json!("limit"), json!("qpu_seconds")),
        ]
    );
    let (status, _) = s
        .admin(
            reqwest::Method::POST,
            "/admin/offerings",
            Some(
                json!({"name": "LUMI-X", "components": [{"type": "x", "billing_type": "monthly"}]}),
            ),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn set_usage_upserts_one_usage_per_component_and_month() {
    let s = start().await;
    let created = s.approved("Climate extremes").await;
    let (status, body) = s
        .set_usage(json!({"resource": created.resource_uuid, "usages": [
            {"type": "cpu_k_hours", "amount": "10.5", "description": "March"},
            {"type": "gb_k_hours", "amount": 3}
        ]}))
        .await;
    assert_eq!((status, body), (201, Value::Null));
    let usages = s.sim.usages(&created.resource_uuid);
    assert_eq!(usages.len(), 2);
    let cpu = usages.iter().find(|u| u["type"] == "cpu_k_hours").unwrap();
    assert_eq!(cpu["usage"], "10.50");
    assert_eq!(cpu["description"], "March");
    assert_eq!(cpu["name"], "CPU k-hours");
    assert_eq!(cpu["billing_period"], this_month().as_str());
    assert_eq!(cpu["resource_uuid"], created.resource_uuid.as_str());
    assert!(cpu["modified_by"].is_u64());
    let cpu_uuid = cpu["uuid"].clone();

    let (status, _) = s
        .set_usage(json!({"resource": created.resource_uuid, "usages": [
            {"type": "cpu_k_hours", "amount": 12.25, "recurring": true}
        ]}))
        .await;
    assert_eq!(status, 201);
    let usages = s.sim.usages(&created.resource_uuid);
    assert_eq!(usages.len(), 2, "{usages:?}");
    let cpu = usages.iter().find(|u| u["type"] == "cpu_k_hours").unwrap();
    assert_eq!(cpu["uuid"], cpu_uuid);
    assert_eq!(
        (cpu["usage"].as_str(), cpu["description"].as_str()),
        (Some("12.25"), Some(""))
    );
    assert_eq!(cpu["recurring"], true);
    let gb = usages.iter().find(|u| u["type"] == "gb_k_hours").unwrap();
    assert_eq!(gb["usage"], "3.00");
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["current_usages"],
        json!({"cpu_k_hours": "12.25"})
    );
    let set_usage_calls = s
        .sim
        .calls()
        .iter()
        .filter(|c| c.path == "/api/marketplace-component-usages/set_usage/" && c.status == 201)
        .count();
    assert_eq!(set_usage_calls, 2);

    // The usages of this month show under the open plan period.
    let (status, _, periods) = s
        .get(&format!(
            "/api/marketplace-provider-resources/{}/plan_periods/",
            created.resource_uuid
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(periods[0]["plan_name"], "LUMI-C Standard");
    assert_eq!(periods[0]["end"], Value::Null);
    let mut types: Vec<&str> = periods[0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(types, vec!["cpu_k_hours", "gb_k_hours"]);
}

#[tokio::test]
async fn set_usage_refuses_bad_fields_with_drf_shapes() {
    let s = start().await;
    let created = s.approved("Climate extremes").await;
    let (status, body) = s
        .set_usage(json!({"resource": created.resource_uuid, "usages": [
            {"type": "cpu_k_hours", "amount": "1"},
            {"type": "cpu_k_hours", "amount": "1.005"}
        ]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"usages": [{}, {"amount": ["Ensure that there are no more than 2 decimal places."]}]})
    );
    let (status, body) = s
        .set_usage(json!({"resource": created.resource_uuid, "usages": [
            {"type": "cpu_k_hours", "amount": "1234567890123456789"}
        ]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"usages": [{"amount": ["Ensure that there are no more than 18 digits before the decimal point."]}]})
    );
    let (status, body) = s
        .set_usage(json!({"resource": created.resource_uuid}))
        .await;
    assert_eq!(
        (status, body),
        (400, json!({"usages": ["This field is required."]}))
    );
    let (status, body) = s.set_usage(json!({"usages": []})).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"non_field_errors": ["Either plan_period or resource should be provided."]})
        )
    );
    let unknown = "0f0e0d0c0b0a09080706050403020100";
    let (status, body) = s
        .set_usage(json!({"resource": unknown, "plan_period": "nope", "usages": {}}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({
            "usages": {"non_field_errors": ["Expected a list of items but got type \"dict\"."]},
            "plan_period": ["\u{201c}nope\u{201d} is not a valid UUID."],
            "resource": [format!("Object with uuid={unknown} does not exist.")]
        })
    );
    assert!(s.sim.usages(&created.resource_uuid).is_empty());
}

#[tokio::test]
async fn set_usage_refuses_components_that_are_not_usage_or_limit_billed() {
    let s = start().await;
    let slurm = s.allocate_slurm().await;
    let order = format!("/api/marketplace-orders/{}", slurm.order_uuid);
    assert_eq!(
        s.post(&format!("{order}/approve_by_provider/"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.post(&format!("{order}/set_state_done/"), None).await.0,
        200
    );
    let (status, body) = s
        .set_usage(json!({"resource": slurm.resource_uuid, "usages": [
            {"type": "project_fee", "amount": 1},
            {"type": "cpu_k_hours", "amount": 1},
            {"type": "bogus", "amount": 1}
        ]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"non_field_errors": ["These components are invalid: bogus, project_fee."]})
    );
    assert!(s.sim.usages(&slurm.resource_uuid).is_empty());
}

#[tokio::test]
async fn set_usage_refuses_a_resource_that_is_still_creating() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let (status, body) = s
        .set_usage(json!({"resource": created.resource_uuid, "usages": [
            {"type": "cpu_k_hours", "amount": "1.00"}
        ]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"resource": ["Resource is not in valid state."]})
    );
    assert!(s.sim.usages(&created.resource_uuid).is_empty());
}

#[tokio::test]
async fn a_closed_plan_period_refuses_usage_and_leaves_the_list() {
    let s = start().await;
    let created = s.approved("Climate extremes").await;
    let periods_path = format!(
        "/api/marketplace-resources/{}/plan_periods/",
        created.resource_uuid
    );
    let (_, headers, periods) = s.get(&periods_path).await;
    assert!(headers.get("x-result-count").is_none());
    assert_eq!(periods.as_array().map(Vec::len), Some(1));
    let period = periods[0]["uuid"].as_str().unwrap().to_string();

    let close = format!(
        "/admin/resources/{}/plan_periods/close",
        created.resource_uuid
    );
    let (status, closed) = s
        .admin(
            reqwest::Method::POST,
            &close,
            Some(json!({"end": "2020-01-31T12:00:00Z"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(closed["end"], "2020-01-31T12:00:00.000000Z");
    assert_eq!(
        s.admin(
            reqwest::Method::POST,
            &close,
            Some(json!({"end": "2020-01-31T12:00:00Z"}))
        )
        .await
        .0,
        400
    );

    let (status, _, periods) = s.get(&periods_path).await;
    assert_eq!((status, periods), (200, json!([])));
    let (status, body) = s
        .set_usage(json!({"plan_period": period, "usages": [
            {"type": "cpu_k_hours", "amount": "1"}
        ]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"plan_period": ["Billing period is closed."]}));
    assert!(s.sim.usages(&created.resource_uuid).is_empty());

    // A period that ended this month is still listed and still takes reports.
    let other = s.approved("Protein dynamics").await;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, _) = s
        .admin(
            reqwest::Method::POST,
            &format!(
                "/admin/resources/{}/plan_periods/close",
                other.resource_uuid
            ),
            Some(json!({ "end": now })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, _, periods) = s
        .get(&format!(
            "/api/marketplace-provider-resources/{}/plan_periods/",
            other.resource_uuid
        ))
        .await;
    assert_eq!(periods.as_array().map(Vec::len), Some(1));
    assert!(periods[0]["end"].is_string());
    let (status, _) = s
        .set_usage(json!({"plan_period": periods[0]["uuid"], "usages": [
            {"type": "cpu_k_hours", "amount": "2"}
        ]}))
        .await;
    assert_eq!(status, 201);
    let (_, _, periods) = s
        .get(&format!(
            "/api/marketplace-provider-resources/{}/plan_periods/",
            other.resource_uuid
        ))
        .await;
    assert_eq!(periods[0]["components"][0]["usage"], "2.00");
}

#[tokio::test]
async fn usage_lists_filter_and_paginate() {
    let s = start().await;
    let first = s.approved("Climate extremes").await;
    let second = s.approved("Protein dynamics").await;
    for created in [&first, &second] {
        let (status, _) = s
            .set_usage(json!({"resource": created.resource_uuid, "usages": [
                {"type": "cpu_k_hours", "amount": "1"},
                {"type": "gb_k_hours", "amount": "2"}
            ]}))
            .await;
        assert_eq!(status, 201);
    }
    let list = "/api/marketplace-component-usages/";
    let (status, headers, page) = s.get(&format!("{list}?page_size=3")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-result-count"), "4");
    assert_eq!(page.as_array().map(Vec::len), Some(3));
    assert!(
        header(&headers, "link").contains(&format!(
            "<{}{list}?page=2&page_size=3>; rel=\"next\"",
            s.base
        )),
        "{}",
        header(&headers, "link")
    );
    // Newest first, then by type.
    assert_eq!(page[0]["resource_uuid"], second.resource_uuid.as_str());
    assert_eq!(page[0]["type"], "cpu_k_hours");

    let count = |query: String| {
        let s = &s;
        async move {
            let (status, headers, body) = s.get(&format!("{list}?{query}")).await;
            assert_eq!(status, 200, "{query}: {body}");
            header(&headers, "x-result-count").to_string()
        }
    };
    assert_eq!(
        count(format!("resource_uuid={}", first.resource_uuid)).await,
        "2"
    );
    assert_eq!(
        count(format!("project_uuid={}", second.project_uuid)).await,
        "2"
    );
    assert_eq!(
        count(format!("customer_uuid={}", first.customer_uuid)).await,
        "2"
    );
    assert_eq!(
        count(format!("offering_uuid={}", first.offering_uuid)).await,
        "4"
    );
    assert_eq!(count("type=gb_k_hours".into()).await, "2");
    assert_eq!(count(format!("billing_period={}", this_month())).await, "4");
    assert_eq!(count("billing_period=2020-01-01".into()).await, "0");
    assert_eq!(count("date_before=2020-01-01".into()).await, "0");
    assert_eq!(count(format!("date_after={}", this_month())).await, "4");

    let (status, _, body) = s
        .get(&format!("{list}?billing_period=March&resource_uuid=x"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"resource_uuid": ["Enter a valid UUID."], "billing_period": ["Enter a valid date."]})
    );

    let (_, _, selected) = s
        .get(&format!("{list}?field=usage&field=type&field=nope"))
        .await;
    assert_eq!(selected[0], json!({"type": "cpu_k_hours", "usage": "1.00"}));
    let uuid = page[0]["uuid"].as_str().unwrap();
    let (status, _, one) = s.get(&format!("{list}{uuid}/")).await;
    assert_eq!((status, &one), (200, &page[0]));

    assert_eq!(s.post(list, None).await.0, 405);
    let (status, headers, _) = s.get(&format!("{list}set_usage/")).await;
    assert_eq!((status, header(&headers, "allow")), (405, "POST, OPTIONS"));
    let (status, _) = s
        .post(
            "/api/marketplace-component-usages/set_usage",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 301);
}

#[tokio::test]
async fn set_user_usage_upserts_per_username() {
    let s = start().await;
    let created = s.approved("Climate extremes").await;
    let (status, _) = s
        .set_usage(json!({"resource": created.resource_uuid, "usages": [
            {"type": "cpu_k_hours", "amount": "10"}
        ]}))
        .await;
    assert_eq!(status, 201);
    let usage = s.sim.usages(&created.resource_uuid)[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/marketplace-component-usages/{usage}/set_user_usage/");
    let member = "climate-extremes-member1";
    let (status, body) = s
        .post(&path, Some(json!({"username": member, "usage": "2.5"})))
        .await;
    assert_eq!((status, body), (201, Value::Null));
    let (status, _) = s
        .post(&path, Some(json!({"username": member, "usage": 3})))
        .await;
    assert_eq!(status, 201);
    let user_usages = s.sim.user_usages(&created.resource_uuid);
    assert_eq!(user_usages.len(), 1);
    assert_eq!(user_usages[0]["usage"], "3.00");
    assert_eq!(user_usages[0]["username"], member);
    assert_eq!(user_usages[0]["component_type"], "cpu_k_hours");

    let (status, _) = s
        .post(
            &path,
            Some(json!({"username": "climate-extremes-member2", "usage": "1"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = s.post(&path, Some(json!({"usage": "1.234"}))).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({
            "usage": ["Ensure that there are no more than 2 decimal places."],
            "username": ["This field is required."]
        })
    );
    let (status, body) = s
        .post(&path, Some(json!({"username": "x".repeat(101)})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"username": ["Ensure this field has no more than 100 characters."]})
    );
    // Waldur updates an existing entry from `validated_data["usage"]`: without
    // it the view crashes.
    let (status, _) = s.post(&path, Some(json!({"username": member}))).await;
    assert_eq!(status, 500);
    assert_eq!(s.sim.user_usages(&created.resource_uuid).len(), 2);

    let (status, headers, listed) = s
        .get(&format!(
            "/api/marketplace-component-user-usages/?resource_uuid={}&type=cpu_k_hours",
            created.resource_uuid
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-result-count"), "2");
    assert_eq!(
        listed[0]["component_usage"],
        format!("{}/api/marketplace-component-usages/{usage}/", s.base)
    );
    let (_, headers, _) = s
        .get("/api/marketplace-component-user-usages/?type=gb_k_hours")
        .await;
    assert_eq!(header(&headers, "x-result-count"), "0");

    let (status, _) = s
        .post(
            "/api/marketplace-component-usages/0f0e0d0c0b0a09080706050403020100/set_user_usage/",
            Some(json!({"username": member, "usage": 1})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn submit_report_validates_like_the_report_serializer() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let path = format!(
        "/api/marketplace-provider-resources/{}/submit_report/",
        created.resource_uuid
    );
    let (status, body) = s
        .post(
            &path,
            Some(json!({"report": [{"header": "Access", "body": "ssh"}, {"header": "", "body": "x"}]})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"report": [{}, {"header": ["This field may not be blank."]}]})
    );
    let (status, body) = s.post(&path, Some(json!({"report": []}))).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"report": ["Report object should contain at least one section."]})
    );
    let (status, body) = s.post(&path, None).await;
    assert_eq!(
        (status, body),
        (400, json!({"report": ["This field is required."]}))
    );
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["report"],
        Value::Null
    );
    // No state validator: a resource still being created takes a report.
    let (status, body) = s
        .post(
            &path,
            Some(json!({"report": [{"header": " Access ", "body": "ssh lumi", "note": 1}]})),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "Report is submitted"}))
    );
    assert_eq!(
        s.sim.resource(&created.resource_uuid).unwrap()["report"],
        json!([{"header": "Access", "body": "ssh lumi"}])
    );
}

#[tokio::test]
async fn each_version_serves_one_api_generation() {
    let current = start().await;
    let old = start_version(WaldurVersion::V2021).await;
    let a = current.allocate("Climate extremes", "LUMI-C").await;
    let b = old.allocate("Climate extremes", "LUMI-C").await;

    let (status, _, _) = old
        .get("/api/marketplace-provider-resources/?page_size=1")
        .await;
    assert_eq!(status, 404, "2021 has no provider-resources view");
    let (status, _) = old
        .post(
            &format!(
                "/api/marketplace-orders/{}/approve_by_provider/",
                b.order_uuid
            ),
            None,
        )
        .await;
    assert_eq!(status, 404, "2021 has no provider actions on orders");
    let (status, _) = old
        .post(
            &format!(
                "/api/marketplace-resources/{}/set_backend_id/",
                b.resource_uuid
            ),
            Some(json!({"backend_id": "x"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, root) = old.get("/api/").await;
    assert_eq!(status, 200);
    assert!(
        root.get("marketplace-provider-resources").is_none(),
        "{root}"
    );
    assert!(root.get("marketplace-resources").is_some(), "{root}");

    let (status, _, _) = current
        .get("/api/marketplace-provider-resources/?page_size=1")
        .await;
    assert_eq!(status, 200);
    for action in ["set_state_by_provider", "set_backend_id", "submit_report"] {
        let (status, _) = current
            .post(
                &format!("/api/marketplace-resources/{}/{action}/", a.resource_uuid),
                Some(json!({"state": "ok"})),
            )
            .await;
        assert_eq!(
            status, 404,
            "7.0 has no `{action}` under marketplace-resources"
        );
    }
    let (status, _, _) = current
        .get(&format!(
            "/api/marketplace-resources/{}/team/",
            a.resource_uuid
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(current.sim.waldur(), WaldurVersion::V7_0);
    assert_eq!("8.0".parse::<WaldurVersion>(), Ok(WaldurVersion::V8_0));
    assert!("7".parse::<WaldurVersion>().is_err());
}

#[tokio::test]
async fn a_consumer_organisation_is_404_to_the_provider_and_listed_by_its_service_provider() {
    let s = start().await;
    let created = s.allocate("Climate extremes", "LUMI-C").await;
    let (status, _, body) = s
        .get(&format!("/api/customers/{}/", created.customer_uuid))
        .await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"detail": "No Customer matches the given query."})
        )
    );
    let (status, _, customers) = s.get("/api/customers/?field=name").await;
    assert_eq!(status, 200);
    assert_eq!(customers, json!([{"name": "LUMI"}]));

    let offering = &s.sim.catalogue().offerings[0];
    let (status, _, own) = s
        .get(&format!("/api/customers/{}/", offering.provider_uuid))
        .await;
    assert_eq!((status, own["name"].clone()), (200, json!("LUMI")));

    let (status, _, providers) = s
        .get(&format!(
            "/api/marketplace-service-providers/?customer_uuid={}&field=uuid&field=customer_uuid",
            offering.provider_uuid
        ))
        .await;
    assert_eq!(status, 200);
    let providers = providers.as_array().unwrap();
    assert_eq!(providers.len(), 1);
    assert_eq!(
        providers[0]["customer_uuid"],
        offering.provider_uuid.as_str()
    );
    let sp = providers[0]["uuid"].as_str().unwrap().to_string();
    assert_ne!(sp, offering.provider_uuid);

    let (status, headers, listed) = s
        .get(&format!(
            "/api/marketplace-service-providers/{sp}/customers/"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-result-count"), "1");
    assert_eq!(listed[0]["uuid"], created.customer_uuid.as_str());
    assert_eq!(listed[0]["name"], "University of Helsinki");
    assert_eq!(listed[0]["abbreviation"], "UH");
    assert_eq!(listed[0]["projects_count"], 1);
    assert!(listed[0].get("country").is_none(), "{listed}");

    let (status, _, body) = s
        .get("/api/marketplace-service-providers/0f0e0d0c0b0a09080706050403020100/customers/")
        .await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"detail": "No ServiceProvider matches the given query."})
        )
    );
}

#[tokio::test]
async fn orders_carry_the_requester_username_only_from_8_0() {
    for (version, username) in [(WaldurVersion::V7_0, None), (WaldurVersion::V8_0, Some(()))] {
        let s = start_version(version).await;
        let created = s.allocate("Climate extremes", "LUMI-C").await;
        let (status, _, order) = s
            .get(&format!("/api/marketplace-orders/{}/", created.order_uuid))
            .await;
        assert_eq!(status, 200);
        assert!(
            order["created_by_full_name"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "{order}"
        );
        match username {
            None => assert!(order.get("created_by_username").is_none(), "{order}"),
            Some(_) => assert!(order["created_by_username"].is_string(), "{order}"),
        }
    }
}
