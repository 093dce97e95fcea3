//! What the server and the token are: the user (`users/me`), the API generation the
//! server speaks, the offerings the user manages, and optional endpoints.

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::{ApiGeneration, PuhuriClient, PuhuriError};

/// The token's user as `GET /api/users/me/` renders it (the fields asked for).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Me {
    pub uuid: String,
    pub username: String,
    pub is_staff: bool,
    pub permissions: Vec<Permission>,
}

/// One role of the user (`permissions` of `users/me`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Permission {
    /// `CUSTOMER.OWNER`, `CUSTOMER.MANAGER`, `OFFERING.MANAGER`, `PROJECT.ADMIN`, ...
    pub role_name: String,
    /// `customer`, `offering`, `project`, ...
    pub scope_type: String,
    pub scope_uuid: String,
    pub scope_name: String,
    pub customer_uuid: Option<String>,
    pub customer_name: Option<String>,
}

impl Permission {
    /// A role on an organisation that lets its holder act as that provider.
    pub fn is_provider_customer_role(&self) -> bool {
        self.scope_type == "customer"
            && matches!(
                self.role_name.as_str(),
                "CUSTOMER.OWNER" | "CUSTOMER.MANAGER"
            )
    }

    /// A role on one offering.
    pub fn is_offering_manager(&self) -> bool {
        self.scope_type == "offering" && self.role_name == "OFFERING.MANAGER"
    }
}

/// An offering as the provider lists it (the fields used here).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct OfferingSummary {
    pub uuid: String,
    pub name: String,
    #[serde(rename = "type")]
    pub offering_type: String,
    pub customer_uuid: Option<String>,
}

impl PuhuriClient {
    /// The token's user: `GET /api/users/me/?field=uuid&field=username&field=is_staff&field=permissions`.
    pub async fn me(&self) -> Result<Me, PuhuriError> {
        let url = self.query_url(
            "users/me/",
            &[
                ("field", "uuid"),
                ("field", "username"),
                ("field", "is_staff"),
                ("field", "permissions"),
            ],
        );
        self.call("users me", Method::GET, &url, None)
            .await?
            .json("users me")
    }

    /// Whether a GET of `path` (relative, with its query) is answered: `Ok(false)` on 404.
    async fn answers(&self, operation: &'static str, path: &str) -> Result<bool, PuhuriError> {
        match self
            .call(operation, Method::GET, &self.url(path), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(PuhuriError::Permanent { status: 404, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The generation the server speaks: the current API when
    /// `marketplace-provider-resources/` answers, the 2021 API when it is 404.
    pub async fn probe_generation(&self) -> Result<ApiGeneration, PuhuriError> {
        let current = self
            .answers(
                "probe API generation",
                "marketplace-provider-resources/?page_size=1&field=uuid",
            )
            .await?;
        Ok(if current {
            ApiGeneration::Orders
        } else {
            ApiGeneration::Resources
        })
    }

    /// Whether the server has Waldur's event consumers (`GET /api/event-consumers/`).
    pub async fn has_event_consumers(&self) -> Result<bool, PuhuriError> {
        self.answers("probe event consumers", "event-consumers/?page_size=1")
            .await
    }

    /// The offerings of one provider organisation, in the given API generation.
    pub async fn provider_offerings(
        &self,
        api: ApiGeneration,
        customer_uuid: &str,
    ) -> Result<Vec<OfferingSummary>, PuhuriError> {
        let path = match api {
            ApiGeneration::Orders => "marketplace-provider-offerings/",
            ApiGeneration::Resources => "marketplace-offerings/",
        };
        let url = self.query_url(
            path,
            &[
                ("customer_uuid", customer_uuid),
                ("page_size", "100"),
                ("field", "uuid"),
                ("field", "name"),
                ("field", "type"),
                ("field", "customer_uuid"),
            ],
        );
        let (items, _): (Vec<Value>, usize) = self.list_all(url).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect())
    }
}
