//! The start-up probe of Puhuri Core (`work`, `serve`, `config check --online`): is the
//! token accepted, which API generation does the server speak, which provider roles and
//! offerings does the token's user hold, and does the server have event consumers.
//!
//! Rules (each failure names what the server answered):
//! - `users/me` answers 401: the token is refused ([`ProbeError::Unauthorized`]);
//! - `marketplace-provider-resources/?page_size=1` answers: the current API (`orders`);
//!   404: the 2021 API (`resources`). `puhuri.api = "auto"` takes it; an explicit
//!   setting that differs fails ([`ProbeError::Refused`]);
//! - the user holds no provider role (`CUSTOMER.OWNER`/`CUSTOMER.MANAGER` of an
//!   organisation, `OFFERING.MANAGER`) and is not staff: fails;
//! - an offering named in `puhuri.offerings` that the user does not manage: fails (a
//!   staff user only gets a warning: it sees every offering);
//! - a staff token: a warning (it may do more than a provider should);
//! - `event-consumers/` answering or 404 is recorded, never a failure.
//!
//! 5xx, timeouts and other temporary failures are [`ProbeError::Transient`]: at start-up
//! the service retries them with a backoff (see `app.rs`).

use serde::Serialize;

use crate::config::{ApiChoice, PuhuriConfig};
use puhuri_client::{ApiGeneration, OfferingSummary, PuhuriClient, PuhuriError};

/// What the probe found.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The generation in use (`orders`: current API; `resources`: 2021 API).
    pub api: ApiGeneration,
    /// What the server answered that decided it.
    pub api_evidence: String,
    pub user: String,
    pub is_staff: bool,
    /// `ROLE on scope name (scope uuid)` for each provider role.
    pub provider_roles: Vec<String>,
    /// The offerings the user manages.
    pub offerings: Vec<OfferingSummary>,
    /// Whether `GET /api/event-consumers/` exists.
    pub event_consumers: bool,
    pub warnings: Vec<String>,
}

/// Why the probe did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The token is refused (401).
    #[error("the start-up probe: {0}")]
    Unauthorized(#[source] PuhuriError),
    /// Puhuri Core failed for now; try again.
    #[error("the start-up probe: {0}")]
    Transient(#[source] PuhuriError),
    /// The server or the token cannot serve this configuration.
    #[error("the start-up probe: {0}")]
    Refused(String),
}

impl ProbeError {
    fn from_call(error: PuhuriError, what: &str) -> ProbeError {
        match error {
            error @ PuhuriError::Unauthorized { .. } => ProbeError::Unauthorized(error),
            error @ (PuhuriError::Transient { .. } | PuhuriError::Conflict { .. }) => {
                ProbeError::Transient(error)
            }
            error => ProbeError::Refused(format!("{what}: {error}")),
        }
    }
}

/// A uuid as Waldur writes it in paths (32 lower-case hex digits), for comparisons; any
/// other text only trimmed and lower-cased.
fn bare(uuid: &str) -> String {
    puhuri_client::WaldurUuid::parse(uuid.trim()).map_or_else(
        || uuid.trim().to_ascii_lowercase(),
        |uuid| uuid.as_str().to_owned(),
    )
}

/// Probes Puhuri Core with `client` against `config` (see the module documentation).
pub async fn probe(
    client: &PuhuriClient,
    config: &PuhuriConfig,
) -> Result<ProbeReport, ProbeError> {
    let me = client
        .me()
        .await
        .map_err(|e| ProbeError::from_call(e, "GET /api/users/me/"))?;
    let api = client
        .probe_generation()
        .await
        .map_err(|e| ProbeError::from_call(e, "GET /api/marketplace-provider-resources/"))?;
    let api_evidence = match api {
        ApiGeneration::Orders => {
            "GET /api/marketplace-provider-resources/ answered: the current API (`orders`)"
        }
        ApiGeneration::Resources => {
            "GET /api/marketplace-provider-resources/ answered 404: the 2021 API (`resources`)"
        }
    }
    .to_owned();
    if let ApiChoice::Fixed(configured) = config.api
        && configured != api
    {
        return Err(ProbeError::Refused(format!(
            "`puhuri.api = \"{}\"` does not match the server: {api_evidence}; set `puhuri.api = \"{}\"` or `\"auto\"`",
            configured.name(),
            api.name(),
        )));
    }
    let mut warnings = Vec::new();
    if me.is_staff {
        warnings.push(format!(
            "the token's user `{}` is staff: it may do far more than a provider needs; use a provider's integration user",
            me.username
        ));
    }
    let customers: Vec<_> = me
        .permissions
        .iter()
        .filter(|p| p.is_provider_customer_role())
        .collect();
    let offering_roles: Vec<_> = me
        .permissions
        .iter()
        .filter(|p| p.is_offering_manager())
        .collect();
    let provider_roles: Vec<String> = customers
        .iter()
        .chain(offering_roles.iter())
        .map(|p| {
            format!(
                "{} on {} ({})",
                p.role_name,
                p.scope_name,
                bare(&p.scope_uuid)
            )
        })
        .collect();
    if provider_roles.is_empty() && !me.is_staff {
        return Err(ProbeError::Refused(format!(
            "the token's user `{}` holds no provider role (GET /api/users/me/ lists no CUSTOMER.OWNER or CUSTOMER.MANAGER of an organisation and no OFFERING.MANAGER); it cannot decide allocations",
            me.username
        )));
    }
    let mut offerings: Vec<OfferingSummary> = Vec::new();
    for customer in &customers {
        let listed = client
            .provider_offerings(api, &customer.scope_uuid)
            .await
            .map_err(|e| ProbeError::from_call(e, "listing the provider's offerings"))?;
        offerings.extend(listed);
    }
    for role in &offering_roles {
        if !offerings
            .iter()
            .any(|o| bare(&o.uuid) == bare(&role.scope_uuid))
        {
            offerings.push(OfferingSummary {
                uuid: bare(&role.scope_uuid),
                name: role.scope_name.clone(),
                offering_type: String::new(),
                customer_uuid: role.customer_uuid.clone(),
            });
        }
    }
    for configured in &config.offerings {
        if offerings.iter().any(|o| bare(&o.uuid) == bare(configured)) {
            continue;
        }
        let managed: Vec<String> = offerings
            .iter()
            .map(|o| format!("{} ({})", o.name, bare(&o.uuid)))
            .collect();
        let message = format!(
            "`puhuri.offerings` names {}, which the token's user `{}` does not manage (it manages: {})",
            bare(configured),
            me.username,
            if managed.is_empty() {
                "none".to_owned()
            } else {
                managed.join(", ")
            }
        );
        if me.is_staff {
            warnings.push(message);
        } else {
            return Err(ProbeError::Refused(message));
        }
    }
    let event_consumers = match client.has_event_consumers().await {
        Ok(found) => found,
        Err(error @ PuhuriError::Unauthorized { .. }) => {
            return Err(ProbeError::Unauthorized(error));
        }
        Err(error) => {
            warnings.push(format!(
                "whether the server has event consumers is unknown: {error}"
            ));
            false
        }
    };
    Ok(ProbeReport {
        api,
        api_evidence,
        user: me.username,
        is_staff: me.is_staff,
        provider_roles,
        offerings,
        event_consumers,
        warnings,
    })
}
