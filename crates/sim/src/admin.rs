//! The simulator's admin API under `/admin/` (no authentication): create
//! allocations and catalogue entries, manage project teams, close plan
//! periods, read recorded calls, inject faults. The endpoints are listed in
//! the module documentation of `sim`; those added for teams and usage:
//!
//! - `GET /admin/projects/{project}/members` -> 200 `[member]` ordered by
//!   username; `POST` body [`NewMember`] -> 201 member (409 when the username
//!   is already a member, 400 for an unknown role); `DELETE
//!   /admin/projects/{project}/members/{username}` -> 204 (404 when not a
//!   member). `{project}` is a project uuid or name (URL-encoded); a member is
//!   `{uuid, username, full_name, email, role, expiration_time, offering_user_username}`.
//! - `POST /admin/resources/{uuid}/plan_periods/close` body `{"end": "<RFC 3339>"}`
//!   -> 200 the period (`{uuid, plan_name, plan_uuid, start, end, components}`);
//!   404 for an unknown resource, 400 without an open period or a valid `end`.
//!   A period that ended before the current month refuses usage reports.
//!
//! INVARIANT: every error is `application/problem+json`
//! `{type, title, status, detail}`; request bodies are parsed here (never by
//! an extractor that would answer in another format), an empty body counts
//! as `{}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    Faults, NewAllocation, NewCustomer, NewMember, NewOffering, NewProject, Sim, SimError,
};

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/admin/allocations", post(create_allocation))
        .route("/admin/calls", get(calls).delete(clear_calls))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/catalogue", get(catalogue))
        .route("/admin/customers", post(create_customer))
        .route("/admin/projects", post(create_project))
        .route("/admin/offerings", post(create_offering))
        .route(
            "/admin/projects/{project}/members",
            get(list_members).post(add_member),
        )
        .route(
            "/admin/projects/{project}/members/{username}",
            delete(remove_member),
        )
        .route(
            "/admin/resources/{uuid}/plan_periods/close",
            post(close_plan_period),
        )
        .merge(super::session::admin_routes())
        .route("/admin", any(not_found))
        .route("/admin/{*rest}", any(not_found))
}

pub(crate) fn problem(status: u16, detail: impl Into<String>) -> Response {
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

pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
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
    if !(0.0..=1.0).contains(&faults.applied_error_rate) {
        return problem(400, "applied_error_rate must be between 0 and 1");
    }
    if faults
        .applied_error_statuses
        .iter()
        .any(|status| !(500..=599).contains(status))
    {
        return problem(
            400,
            "applied_error_statuses must be server errors (500..=599)",
        );
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

fn bad_path(rejection: &PathRejection) -> Response {
    problem(400, format!("invalid path: {rejection}"))
}

async fn list_members(
    State(sim): State<Sim>,
    project: Result<Path<String>, PathRejection>,
) -> Response {
    let project = match project {
        Ok(Path(project)) => project,
        Err(rejection) => return bad_path(&rejection),
    };
    match sim.project_members(&project) {
        Ok(members) => axum::Json(members).into_response(),
        Err(error) => sim_error(&error),
    }
}

async fn add_member(
    State(sim): State<Sim>,
    project: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let project = match project {
        Ok(Path(project)) => project,
        Err(rejection) => return bad_path(&rejection),
    };
    match parse::<NewMember>(&body) {
        Ok(request) => match sim.add_member(&project, request) {
            Ok(member) => created(member),
            Err(error) => sim_error(&error),
        },
        Err(response) => *response,
    }
}

async fn remove_member(
    State(sim): State<Sim>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let (project, username) = match path {
        Ok(Path(parts)) => parts,
        Err(rejection) => return bad_path(&rejection),
    };
    match sim.remove_member(&project, &username) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => sim_error(&error),
    }
}

/// The body of `POST /admin/resources/{uuid}/plan_periods/close`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosePlanPeriod {
    /// RFC 3339.
    end: String,
}

async fn close_plan_period(
    State(sim): State<Sim>,
    resource: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let resource = match resource {
        Ok(Path(resource)) => resource,
        Err(rejection) => return bad_path(&rejection),
    };
    let request: ClosePlanPeriod = match parse(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let end = match time::OffsetDateTime::parse(
        &request.end,
        &time::format_description::well_known::Rfc3339,
    ) {
        Ok(end) => end,
        Err(_) => {
            return problem(
                400,
                format!("end `{}` is not an RFC 3339 timestamp", request.end),
            );
        }
    };
    match sim.close_plan_period(&resource, end) {
        Ok(period) => axum::Json(period).into_response(),
        Err(error) => sim_error(&error),
    }
}
