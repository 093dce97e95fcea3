//! What the provider knows of its consumer organisations beyond what Puhuri Core shows it.
//!
//! Puhuri Core answers 404 to a provider reading a consumer organisation's own record
//! (`/api/customers/{uuid}/`), and no provider-visible endpoint has an organisation's
//! country. A provider that decides by country keeps that knowledge itself, in a
//! customers file named by `policy.customers_file`:
//!
//! ```toml
//! # keyed by the organisation's uuid (as Puhuri Core renders it) or its slug
//! [customers.university-of-helsinki]
//! country = "FI"
//! abbreviation = "UH"
//! tags = ["university", "nordic"]
//!
//! [customers."1f0c5b3e9a7d4f0e8b6a2c4d5e6f7a8b"]
//! country = "SE"
//! ```
//!
//! An entry found by uuid wins over one found by slug. Its `abbreviation` wins over the
//! one the provider's customers list shows.
//!
//! Also here: [`check_policy`], what a policy may read given the configuration — the
//! fields production can never fill are refused, the ones it fills only on some servers
//! or offering types are warned about.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use puhuri_client::{PuhuriClient, PuhuriError};
use puhuri_policy::Policy;
use serde::Deserialize;
use toml::Spanned;

use crate::config::{ApiGeneration, Config};

/// One organisation's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerEntry {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    pub abbreviation: String,
    pub tags: Vec<String>,
}

/// The customers file, by normalised key (a uuid as 32 lowercase hex digits, or a slug).
#[derive(Debug, Clone, Default)]
pub struct CustomerDirectory {
    entries: HashMap<String, CustomerEntry>,
}

/// Why a customers file was refused: `file:line:column: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{column}: `{key}`: {message}")]
pub struct CustomersError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    customers: HashMap<Spanned<String>, Spanned<FileEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    country: Option<Spanned<String>>,
    abbreviation: Option<Spanned<String>>,
    tags: Option<Spanned<Vec<String>>>,
}

/// A uuid in either rendering as 32 lowercase hex digits; `None` for anything else.
fn uuid_key(text: &str) -> Option<String> {
    uuid::Uuid::parse_str(text.trim())
        .ok()
        .map(|u| u.simple().to_string())
}

impl CustomerDirectory {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<CustomerDirectory, CustomersError> {
        let text = std::fs::read_to_string(path).map_err(|error| CustomersError {
            path: path.display().to_string(),
            line: 1,
            column: 1,
            key: "customers".into(),
            message: format!("cannot read: {error}"),
        })?;
        CustomerDirectory::parse(&text, &path.display().to_string())
    }

    /// Parses a customers file; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<CustomerDirectory, CustomersError> {
        let at = |offset: usize, key: String, message: String| {
            let (line, column) = puhuri_policy::toml_error::line_column(text, offset);
            CustomersError {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            }
        };
        let file: File = toml::from_str(text).map_err(|error| {
            let located = puhuri_policy::toml_error::locate(text, &error, None);
            CustomersError {
                path: path.to_owned(),
                line: located.line,
                column: located.column,
                key: located.key.unwrap_or_else(|| "customers".into()),
                message: located.message,
            }
        })?;
        let mut entries = HashMap::new();
        let mut keys: Vec<_> = file.customers.into_iter().collect();
        keys.sort_by_key(|(key, _)| key.span().start);
        for (key, entry) in keys {
            let name = key.get_ref().trim();
            let place = format!("customers.{name}");
            if name.is_empty() {
                return Err(at(
                    key.span().start,
                    "customers".into(),
                    "an organisation is named by its uuid or slug; this key is empty".into(),
                ));
            }
            let normalised = uuid_key(name).unwrap_or_else(|| name.to_owned());
            let entry_span = entry.span().start;
            let entry = entry.into_inner();
            let country = match entry.country {
                None => String::new(),
                Some(country) => {
                    let code = country.get_ref().trim().to_ascii_uppercase();
                    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(at(
                            country.span().start,
                            format!("{place}.country"),
                            "a country is an ISO 3166-1 alpha-2 code such as `FI`".into(),
                        ));
                    }
                    code
                }
            };
            let abbreviation = entry
                .abbreviation
                .map(|a| a.get_ref().trim().to_owned())
                .unwrap_or_default();
            let tags = match entry.tags {
                None => Vec::new(),
                Some(tags) => {
                    if tags.get_ref().iter().any(|t| t.trim().is_empty()) {
                        return Err(at(
                            tags.span().start,
                            format!("{place}.tags"),
                            "a tag is a non-empty string".into(),
                        ));
                    }
                    tags.into_inner()
                }
            };
            if entries.contains_key(&normalised) {
                return Err(at(
                    entry_span,
                    place,
                    "another entry names the same organisation".into(),
                ));
            }
            entries.insert(
                normalised,
                CustomerEntry {
                    country,
                    abbreviation,
                    tags,
                },
            );
        }
        Ok(CustomerDirectory { entries })
    }

    /// The entry for the organisation with this uuid or, failing that, this slug.
    pub fn find(&self, uuid: &str, slug: &str) -> Option<&CustomerEntry> {
        uuid_key(uuid)
            .and_then(|key| self.entries.get(&key))
            .or_else(|| {
                Some(slug.trim())
                    .filter(|s| !s.is_empty())
                    .and_then(|s| self.entries.get(s))
            })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How long an organisation's abbreviation from the provider's customers list is reused.
pub const ABBREVIATION_TTL: Duration = Duration::from_secs(600);

/// Abbreviations from `marketplace-service-providers/{uuid}/customers/`, cached per
/// organisation for [`ABBREVIATION_TTL`]. One fetch of the list fills every organisation
/// on it; an organisation not on it, or a list the token may not read (403/404), is
/// cached as unknown (the latter logged once).
pub struct Abbreviations {
    ttl: Duration,
    state: tokio::sync::Mutex<AbbreviationState>,
    refused_logged: AtomicBool,
}

#[derive(Default)]
struct AbbreviationState {
    /// Provider organisation uuid -> its service provider uuid.
    service_providers: HashMap<String, (Option<String>, Instant)>,
    /// Organisation uuid -> abbreviation.
    customers: HashMap<String, (Option<String>, Instant)>,
}

impl Default for Abbreviations {
    fn default() -> Self {
        Abbreviations::new(ABBREVIATION_TTL)
    }
}

impl Abbreviations {
    pub fn new(ttl: Duration) -> Abbreviations {
        Abbreviations {
            ttl,
            state: tokio::sync::Mutex::new(AbbreviationState::default()),
            refused_logged: AtomicBool::new(false),
        }
    }

    /// The abbreviation of organisation `customer_uuid` as provider `provider_uuid` sees
    /// it; `None` when unknown. Transient failures are returned (the decision waits).
    pub async fn lookup(
        &self,
        client: &PuhuriClient,
        provider_uuid: &str,
        customer_uuid: &str,
    ) -> Result<Option<String>, PuhuriError> {
        let (Some(provider), Some(customer)) = (uuid_key(provider_uuid), uuid_key(customer_uuid))
        else {
            return Ok(None);
        };
        let now = Instant::now();
        let fresh = |at: &Instant| now.duration_since(*at) < self.ttl;
        let mut state = self.state.lock().await;
        if let Some((abbreviation, at)) = state.customers.get(&customer)
            && fresh(at)
        {
            return Ok(abbreviation.clone());
        }
        let sp = match state.service_providers.get(&provider) {
            Some((sp, at)) if fresh(at) => sp.clone(),
            _ => {
                let Some(provider_id) = puhuri_client::WaldurUuid::parse(&provider) else {
                    return Ok(None);
                };
                let sp = match client.service_provider_uuid(&provider_id).await {
                    Ok(sp) => sp,
                    Err(error) => return self.refused(&mut state, &customer, now, error),
                };
                state
                    .service_providers
                    .insert(provider.clone(), (sp.clone(), now));
                sp
            }
        };
        let Some(sp) = sp else {
            state.customers.insert(customer, (None, now));
            return Ok(None);
        };
        let listed = match client.provider_customers(&sp).await {
            Ok(listed) => listed,
            Err(error) => return self.refused(&mut state, &customer, now, error),
        };
        for entry in listed {
            if let Some(key) = uuid_key(&entry.uuid) {
                let abbreviation = entry.abbreviation.filter(|a| !a.trim().is_empty());
                state.customers.insert(key, (abbreviation, now));
            }
        }
        let found = match state.customers.get(&customer) {
            Some((abbreviation, at)) if *at == now => abbreviation.clone(),
            _ => {
                state.customers.insert(customer, (None, now));
                None
            }
        };
        Ok(found)
    }

    /// A permanent refusal leaves the abbreviation unknown (logged once); anything else
    /// is the caller's to retry.
    fn refused(
        &self,
        state: &mut AbbreviationState,
        customer: &str,
        now: Instant,
        error: PuhuriError,
    ) -> Result<Option<String>, PuhuriError> {
        if !matches!(error, PuhuriError::Permanent { .. }) {
            return Err(error);
        }
        if !self.refused_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %error, "the provider's customers list is not readable with this token; `customer.abbreviation` stays empty");
        }
        state.customers.insert(customer.to_owned(), (None, now));
        Ok(None)
    }
}

/// What a policy may read given the configuration: `Err` lists the fields production can
/// never fill; `Ok` lists warnings (fields filled only on some servers, `erred` rules
/// that are written as a reject for some offering types).
pub fn check_policy(policy: &Policy, config: &Config) -> Result<Vec<String>, Vec<String>> {
    check_policy_with(
        policy,
        config.policy_customers_file.is_some(),
        config.puhuri.api.assumed(),
    )
}

/// The fields `policy` reads that nothing fills, one message each: `customer.country` and
/// `customer.tags` without a customers file.
pub fn unfillable_fields(policy: &Policy, customers_file: bool) -> Vec<String> {
    ["customer.country", "customer.tags"]
        .into_iter()
        .filter(|field| policy.reads(field) && !customers_file)
        .map(|field| format!(
            "`{field}` is never filled without a customers file: no Puhuri Core endpoint a provider may read has it; name one that maps organisations to it in `policy.customers_file`"
        ))
        .collect()
}

/// [`check_policy`] from its parts: whether a customers file is configured, and the API
/// generation.
pub fn check_policy_with(
    policy: &Policy,
    customers_file: bool,
    api: ApiGeneration,
) -> Result<Vec<String>, Vec<String>> {
    let errors = unfillable_fields(policy, customers_file);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut warnings = Vec::new();
    if policy.reads("created_by.username") {
        warnings.push(
            "`created_by.username` is empty on servers whose orders have no `created_by_username` (Waldur 7.0.x); `created_by.full_name` is filled everywhere".to_owned(),
        );
    }
    if api == ApiGeneration::Orders {
        for (rule, line) in policy.erred_rules_beyond(puhuri_client::SLURM_OFFERING_TYPE) {
            let place = if rule == "default" {
                "the default".to_owned()
            } else {
                format!("rule `{rule}` (line {line})")
            };
            warnings.push(format!(
                "{place}: `erred` is written as a reject (`reject_by_provider` with the message as the comment) for offerings of any type but `{}`, where Puhuri Core lets a provider err nothing; its condition does not restrict `offering.type` to `{}`",
                puhuri_client::SLURM_OFFERING_TYPE,
                puhuri_client::SLURM_OFFERING_TYPE
            ));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_uuid_in_either_form_then_by_slug() {
        let text = r#"
[customers.uh]
country = "fi"
abbreviation = "UH"
tags = ["university"]

[customers."1f0c5b3e-9a7d-4f0e-8b6a-2c4d5e6f7a8b"]
country = "SE"
"#;
        let directory = CustomerDirectory::parse(text, "customers.toml").unwrap();
        assert_eq!(directory.len(), 2);
        let uh = directory.find("", "uh").unwrap();
        assert_eq!(uh.country, "FI");
        assert_eq!(uh.tags, vec!["university".to_owned()]);
        let kth = directory
            .find("1f0c5b3e9a7d4f0e8b6a2c4d5e6f7a8b", "uh")
            .unwrap();
        assert_eq!(kth.country, "SE");
        assert!(
            directory
                .find("0f0e0d0c0b0a09080706050403020100", "x")
                .is_none()
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let error = CustomerDirectory::parse(
            "[customers.uh]\nabbreviation = \"UH\"\ncountry = \"Finland\"\n",
            "customers.toml",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "customers.toml:3:11: `customers.uh.country`: a country is an ISO 3166-1 alpha-2 code such as `FI`"
        );
        let error =
            CustomerDirectory::parse("[customers.uh]\nregion = \"north\"\n", "c.toml").unwrap_err();
        assert_eq!((error.path.as_str(), error.line), ("c.toml", 2), "{error}");
        assert_eq!(error.key, "customers.uh.region", "{error}");
        assert!(error.message.contains("unknown field"), "{error}");
        let error = CustomerDirectory::parse(
            "[customers.\"1f0c5b3e9a7d4f0e8b6a2c4d5e6f7a8b\"]\n[customers.\"1F0C5B3E-9A7D-4F0E-8B6A-2C4D5E6F7A8B\"]\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(error.line, 2, "{error}");
        assert!(error.message.contains("same organisation"), "{error}");
    }
}
