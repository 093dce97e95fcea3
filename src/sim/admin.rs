//! The simulator's admin API under `/admin/` (no authentication): create
//! allocations and catalogue entries, read recorded calls, inject faults.
//! The endpoints are listed in the module documentation of `sim`.
//!
//! INVARIANT: every error is `application/problem+json`
//! `{type, title, status, detail}`; request bodies are parsed here (never by
//! an extractor that would answer in another format), an empty body counts
//! as `{}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Faults, NewAllocation, NewCustomer, NewOffering, NewProject, Sim, SimError};

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/admin/allocations", post(create_allocation))
        .route("/admin/calls", get(calls).delete(clear_calls))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/catalogue", get(catalogue))
        .route("/admin/customers", post(create_customer))
        .route("/admin/projects", post(create_project))
        .route("/admin/offerings", post(create_offering))
        .route("/admin", any(not_found))
        .route("/admin/{*rest}", any(not_found))
}

fn problem(status: u16, detail: impl Into<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "type": "about:blank",
        "title": code.canonical_reason().unwrap_or("Error"),
        "status": code.as_u16(),
        "detail": detail.into(),
    });
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

fn sim_error(error: &SimError) -> Response {
    problem(error.status(), error.to_string())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(bytes)
        .map_err(|error| Box::new(problem(400, format!("invalid body: {error}"))))
}

fn created(value: serde_json::Value) -> Response {
    (StatusCode::CREATED, axum::Json(value)).into_response()
}

pub(crate) async fn method_not_allowed() -> Response {
    problem(405, "method not allowed on this admin endpoint")
}

async fn not_found() -> Response {
    problem(404, "no such admin endpoint")
}

async fn create_allocation(State(sim): State<Sim>, body: Bytes) -> Response {
    let request: NewAllocation = match parse(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match sim.create_allocation(request).await {
        Ok(allocation) => (StatusCode::CREATED, axum::Json(allocation)).into_response(),
        Err(error) => sim_error(&error),
    }
}

async fn calls(State(sim): State<Sim>) -> Response {
    axum::Json(sim.calls()).into_response()
}

async fn clear_calls(State(sim): State<Sim>) -> Response {
    sim.clear_calls();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_faults(State(sim): State<Sim>) -> Response {
    axum::Json(sim.faults()).into_response()
}

async fn put_faults(State(sim): State<Sim>, body: Bytes) -> Response {
    let faults: Faults = match parse(&body) {
        Ok(faults) => faults,
        Err(response) => return *response,
    };
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return problem(400, "error_rate must be between 0 and 1");
    }
    if faults
        .fail_status
        .is_some_and(|status| !(100..=599).contains(&status))
    {
        return problem(400, "fail_status must be an HTTP status (100..=599)");
    }
    sim.set_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

async fn catalogue(State(sim): State<Sim>) -> Response {
    axum::Json(sim.catalogue()).into_response()
}

async fn create_customer(State(sim): State<Sim>, body: Bytes) -> Response {
    match parse::<NewCustomer>(&body) {
        Ok(request) => match sim.add_customer(request) {
            Ok(uuid) => created(json!({ "uuid": uuid })),
            Err(error) => sim_error(&error),
        },
        Err(response) => *response,
    }
}

async fn create_project(State(sim): State<Sim>, body: Bytes) -> Response {
    match parse::<NewProject>(&body) {
        Ok(request) => match sim.add_project(request) {
            Ok(uuid) => created(json!({ "uuid": uuid })),
            Err(error) => sim_error(&error),
        },
        Err(response) => *response,
    }
}

async fn create_offering(State(sim): State<Sim>, body: Bytes) -> Response {
    match parse::<NewOffering>(&body) {
        Ok(request) => match sim.add_offering(request) {
            Ok(uuid) => created(json!({ "uuid": uuid })),
            Err(error) => sim_error(&error),
        },
        Err(response) => *response,
    }
}
