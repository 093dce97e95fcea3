//! Request bodies validated the way Django REST framework's serializers
//! validate them, with DRF's messages and error shapes.
//!
//! INVARIANT: a serializer first validates every field (errors of all fields
//! are reported together, keyed by field name, in field order), and only when
//! all fields pass runs its `validate`, whose errors come alone. A nested
//! `many=True` serializer reports one entry per item (`{}` for a valid one).
//! INVARIANT: nothing here changes the model.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::decimal::{Amount, USAGE, decimal_field};
use super::state::{ApiError, Model, ResourceState};
use super::usage::UsageLine;

const REQUIRED: &str = "This field is required.";
const NULL: &str = "This field may not be null.";

/// The field errors of one serializer (or of one filter set), in field order.
pub(crate) struct FieldErrors(pub Map<String, Value>);

impl FieldErrors {
    pub(crate) fn new() -> Self {
        Self(Map::new())
    }

    /// Appends `message` to the field's list.
    pub(crate) fn add(&mut self, field: &str, message: String) {
        self.0
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(Value::Array(list)) = self.0.get_mut(field) {
            list.push(Value::String(message));
        }
    }

    /// Sets the field's error detail (a list of messages or a nested shape).
    pub(crate) fn set(&mut self, field: &str, detail: Value) {
        self.0.insert(field.to_string(), detail);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// 400 with the errors, if there are any.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError {
                status: 400,
                body: Value::Object(self.0),
            })
        }
    }
}

/// 400 `{"non_field_errors": ["message"]}` (a serializer's `validate`).
fn non_field(message: impl Into<String>) -> ApiError {
    ApiError::field("non_field_errors", message)
}

/// Python's name for a JSON value's type.
pub(crate) fn python_type(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "list",
        Value::String(_) => "str",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Bool(_) => "bool",
        Value::Null => "NoneType",
        Value::Object(_) => "dict",
    }
}

/// Python's `str()` of a JSON value (close enough for error messages).
fn python_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// Rules of one DRF `CharField`.
pub(crate) struct CharRules {
    pub required: bool,
    pub allow_blank: bool,
    pub max_length: Option<usize>,
}

/// Validates a DRF `CharField` (whitespace trimmed, numbers accepted as text).
pub(crate) fn char_field(
    data: &Map<String, Value>,
    key: &str,
    rules: &CharRules,
    errors: &mut FieldErrors,
) -> Option<String> {
    let value = match data.get(key) {
        None => {
            if rules.required {
                errors.add(key, REQUIRED.into());
            }
            return None;
        }
        Some(Value::Null) => {
            errors.add(key, NULL.into());
            return None;
        }
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            errors.add(key, "Not a valid string.".into());
            return None;
        }
    };
    if value.is_empty() && !rules.allow_blank {
        errors.add(key, "This field may not be blank.".into());
        return None;
    }
    if let Some(max) = rules.max_length
        && value.chars().count() > max
    {
        errors.add(
            key,
            format!("Ensure this field has no more than {max} characters."),
        );
        return None;
    }
    Some(value)
}

/// A `DecimalField(max_digits=20, decimal_places=2)`; `None` when absent
/// (and not required) or invalid.
fn usage_field(
    data: &Map<String, Value>,
    key: &str,
    required: bool,
    errors: &mut FieldErrors,
) -> Option<Amount> {
    match data.get(key) {
        None => {
            if required {
                errors.add(key, REQUIRED.into());
            }
            None
        }
        Some(Value::Null) => {
            errors.add(key, NULL.into());
            None
        }
        Some(value) => match decimal_field(value, USAGE) {
            Ok(amount) => Some(amount),
            Err(message) => {
                errors.add(key, message);
                None
            }
        },
    }
}

/// A `BooleanField(default=False)`.
fn boolean_field(data: &Map<String, Value>, key: &str, errors: &mut FieldErrors) -> bool {
    const TRUE: [&str; 14] = [
        "t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1",
    ];
    const FALSE: [&str; 14] = [
        "f", "F", "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "0",
    ];
    match data.get(key) {
        None => false,
        Some(Value::Null) => {
            errors.add(key, NULL.into());
            false
        }
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if TRUE.contains(&s.as_str()) => true,
        Some(Value::String(s)) if FALSE.contains(&s.as_str()) => false,
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => true,
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => false,
        Some(_) => {
            errors.add(key, "Must be a valid boolean.".into());
            false
        }
    }
}

/// Python's `uuid.UUID(hex=...)`: braces, `urn:` and `uuid:` prefixes and
/// hyphens are dropped, then exactly 32 hex digits must remain.
fn python_uuid(text: &str) -> Option<Uuid> {
    let cleaned = text.replace("urn:", "").replace("uuid:", "");
    let cleaned = cleaned
        .trim_matches(|c| c == '{' || c == '}')
        .replace('-', "");
    if cleaned.len() != 32 || !cleaned.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Uuid::parse_str(&cleaned).ok()
}

/// A `SlugRelatedField(slug_field="uuid", required=False)` over the objects
/// `find` knows. Django's `UUIDField` refuses a malformed value before the
/// lookup.
fn uuid_relation(
    data: &Map<String, Value>,
    key: &str,
    find: impl Fn(Uuid) -> Option<usize>,
    errors: &mut FieldErrors,
) -> Option<usize> {
    let value = data.get(key)?;
    let not_valid = |v: &Value| format!("\u{201c}{}\u{201d} is not a valid UUID.", python_str(v));
    let missing = |v: &Value| format!("Object with uuid={} does not exist.", python_str(v));
    match value {
        // RelatedField turns "" into None.
        Value::Null => errors.add(key, NULL.into()),
        Value::String(s) if s.is_empty() => errors.add(key, NULL.into()),
        Value::String(s) => match python_uuid(s) {
            Some(uuid) => match find(uuid) {
                Some(found) => return Some(found),
                None => errors.add(key, missing(value)),
            },
            None => errors.add(key, not_valid(value)),
        },
        // `uuid.UUID(int=...)`: any non-negative integer below 2**128 is a uuid.
        Value::Bool(_) => errors.add(key, missing(value)),
        Value::Number(n) if n.is_u64() => {
            let found = n
                .as_u64()
                .and_then(|v| find(Uuid::from_u128(u128::from(v))));
            match found {
                Some(found) => return Some(found),
                None => errors.add(key, missing(value)),
            }
        }
        _ => errors.add(key, not_valid(value)),
    }
    None
}

/// A `ListSerializer(child=...)` over `value` (`None` when absent or when the
/// body is a form, whose flat fields never make a list).
fn many<T>(
    value: Option<&Value>,
    child: impl Fn(&Map<String, Value>) -> Result<T, FieldErrors>,
) -> Result<Vec<T>, Value> {
    let items = match value {
        None => return Err(json!([REQUIRED])),
        Some(Value::Null) => return Err(json!([NULL])),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(json!({"non_field_errors": [format!(
                "Expected a list of items but got type \"{}\".",
                python_type(other)
            )]}));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    let mut details = Vec::with_capacity(items.len());
    let mut failed = false;
    for item in items {
        let detail = match item {
            Value::Null => json!([NULL]),
            Value::Object(map) => match child(map) {
                Ok(value) => {
                    out.push(value);
                    json!({})
                }
                Err(errors) => Value::Object(errors.0),
            },
            other => json!({"non_field_errors": [format!(
                "Invalid data. Expected a dictionary, but got {}.",
                python_type(other)
            )]}),
        };
        failed |= detail != json!({});
        details.push(detail);
    }
    if failed {
        Err(Value::Array(details))
    } else {
        Ok(out)
    }
}

/// A validated `set_usage` call.
#[derive(Debug)]
pub(crate) struct SetUsage {
    pub resource: usize,
    pub plan_period: Option<usize>,
    pub lines: Vec<UsageLine>,
}

/// `ComponentUsageItemSerializer`.
fn usage_line(item: &Map<String, Value>) -> Result<UsageLine, FieldErrors> {
    let mut errors = FieldErrors::new();
    let component = char_field(
        item,
        "type",
        &CharRules {
            required: true,
            allow_blank: false,
            max_length: None,
        },
        &mut errors,
    );
    let amount = usage_field(item, "amount", true, &mut errors);
    let description = char_field(
        item,
        "description",
        &CharRules {
            required: false,
            allow_blank: true,
            max_length: None,
        },
        &mut errors,
    );
    let recurring = boolean_field(item, "recurring", &mut errors);
    match (component, amount) {
        (Some(component), Some(amount)) if errors.is_empty() => Ok(UsageLine {
            component,
            amount,
            description,
            recurring,
        }),
        _ => Err(errors),
    }
}

/// `ComponentUsageCreateSerializer` (fields `usages`, `plan_period`,
/// `resource`, then `validate`).
pub(crate) fn set_usage(
    model: &Model,
    data: &Map<String, Value>,
    form: bool,
    now: OffsetDateTime,
) -> Result<SetUsage, ApiError> {
    let mut errors = FieldErrors::new();
    let usages = data.get("usages").filter(|_| !form);
    let lines = match many(usages, usage_line) {
        Ok(lines) => Some(lines),
        Err(detail) => {
            errors.set("usages", detail);
            None
        }
    };
    let plan_period = uuid_relation(
        data,
        "plan_period",
        |u| model.plan_period_by_uuid(u),
        &mut errors,
    );
    if let Some(period) = plan_period
        && !model.plan_period_is_open(period, now)
    {
        errors.add("plan_period", "Billing period is closed.".into());
    }
    let resource = uuid_relation(data, "resource", |u| model.resource_by_uuid(u), &mut errors);
    errors.finish()?;
    let lines = lines.unwrap_or_default();
    // The period's resource wins over `resource`.
    let resource = match plan_period
        .map(|p| model.plan_periods[p].resource)
        .or(resource)
    {
        Some(resource) => resource,
        None => {
            return Err(non_field(
                "Either plan_period or resource should be provided.",
            ));
        }
    };
    if !matches!(
        model.resources[resource].state,
        ResourceState::Ok | ResourceState::Updating | ResourceState::Terminating
    ) {
        return Err(ApiError::field(
            "resource",
            "Resource is not in valid state.",
        ));
    }
    let valid = model.reportable_components(resource);
    let mut invalid: Vec<&str> = lines
        .iter()
        .map(|l| l.component.as_str())
        .filter(|c| !valid.contains(c))
        .collect();
    invalid.sort_unstable();
    invalid.dedup();
    if !invalid.is_empty() {
        return Err(non_field(format!(
            "These components are invalid: {}.",
            invalid.join(", ")
        )));
    }
    Ok(SetUsage {
        resource,
        plan_period,
        lines,
    })
}

/// A validated `set_user_usage` call; `usage` is optional (the model field
/// has a default).
#[derive(Debug)]
pub(crate) struct SetUserUsage {
    pub username: String,
    pub usage: Option<Amount>,
}

/// `ComponentUserUsageCreateSerializer` (`usage`, `username`, `user`).
pub(crate) fn set_user_usage(data: &Map<String, Value>) -> Result<SetUserUsage, ApiError> {
    let mut errors = FieldErrors::new();
    let usage = usage_field(data, "usage", false, &mut errors);
    let username = char_field(
        data,
        "username",
        &CharRules {
            required: true,
            allow_blank: false,
            max_length: Some(100),
        },
        &mut errors,
    );
    if let Some(user) = data.get("user") {
        // A `HyperlinkedRelatedField` to offering users, of which the
        // simulator has none: any link fails.
        let message = match user {
            Value::Null => NULL.to_string(),
            Value::String(s) if s.is_empty() => NULL.to_string(),
            Value::String(s) => {
                let path = link_path(s);
                if path.starts_with("/api/marketplace-offering-users/")
                    && path.matches('/').count() == 4
                    && path.ends_with('/')
                {
                    "Invalid hyperlink - Object does not exist.".to_string()
                } else {
                    "Invalid hyperlink - No URL match.".to_string()
                }
            }
            other => format!(
                "Incorrect type. Expected URL string, received {}.",
                python_type(other)
            ),
        };
        errors.add("user", message);
    }
    errors.finish()?;
    Ok(SetUserUsage {
        username: username.unwrap_or_default(),
        usage,
    })
}

/// The path of a hyperlink (an absolute URL loses its scheme and host).
fn link_path(link: &str) -> String {
    let rest = link
        .strip_prefix("http://")
        .or_else(|| link.strip_prefix("https://"));
    match rest {
        Some(rest) => match rest.find('/') {
            Some(at) => rest[at..]
                .split(['?', '#'])
                .next()
                .unwrap_or("")
                .to_string(),
            None => "/".to_string(),
        },
        None => link.to_string(),
    }
}

/// `ResourceReportSerializer`: a non-empty list of `{header, body}` sections,
/// both non-blank strings; the stored sections keep only those two fields,
/// trimmed.
pub(crate) fn report(data: &Map<String, Value>, form: bool) -> Result<Value, ApiError> {
    let section = |item: &Map<String, Value>| {
        let mut errors = FieldErrors::new();
        let rules = CharRules {
            required: true,
            allow_blank: false,
            max_length: None,
        };
        let header = char_field(item, "header", &rules, &mut errors);
        let body = char_field(item, "body", &rules, &mut errors);
        match (header, body) {
            (Some(header), Some(body)) => Ok(json!({"header": header, "body": body})),
            _ => Err(errors),
        }
    };
    let sections =
        many(data.get("report").filter(|_| !form), section).map_err(|detail| ApiError {
            status: 400,
            body: json!({ "report": detail }),
        })?;
    if sections.is_empty() {
        return Err(ApiError::field(
            "report",
            "Report object should contain at least one section.",
        ));
    }
    Ok(Value::Array(sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn reports_nested_errors_per_item() {
        let data = object(json!({"report": [
            {"header": "Login", "body": "ssh"},
            {"header": " ", "body": "x"},
            "text",
            null
        ]}));
        let error = report(&data, false).map(drop);
        assert_eq!(
            error,
            Err(ApiError {
                status: 400,
                body: json!({"report": [
                    {},
                    {"header": ["This field may not be blank."]},
                    {"non_field_errors": ["Invalid data. Expected a dictionary, but got str."]},
                    ["This field may not be null."]
                ]})
            })
        );
        assert_eq!(
            report(&object(json!({"report": []})), false).map(drop),
            Err(ApiError::field(
                "report",
                "Report object should contain at least one section."
            ))
        );
        assert_eq!(
            report(&object(json!({"report": {"header": "h"}})), false).map(drop),
            Err(ApiError {
                status: 400,
                body: json!({"report": {"non_field_errors": ["Expected a list of items but got type \"dict\"."]}})
            })
        );
        assert_eq!(
            report(
                &object(json!({"report": [{"header": " Login ", "body": "ssh", "extra": 1}]})),
                false
            ),
            Ok(json!([{"header": "Login", "body": "ssh"}]))
        );
    }

    #[test]
    fn parses_uuids_like_python() {
        let hex = "0123456789abcdef0123456789abcdef";
        let uuid = python_uuid(hex);
        assert!(uuid.is_some());
        assert_eq!(python_uuid(&format!("{{{hex}}}")), uuid);
        assert_eq!(python_uuid(&format!("urn:uuid:{hex}")), uuid);
        assert_eq!(python_uuid("0123-4567"), None);
        assert_eq!(python_uuid(&format!(" {hex}")), None);
    }

    #[test]
    fn booleans_follow_drf() {
        let mut errors = FieldErrors::new();
        let data = object(json!({"a": "yes", "b": 0, "c": "maybe"}));
        assert!(boolean_field(&data, "a", &mut errors));
        assert!(!boolean_field(&data, "b", &mut errors));
        assert!(!boolean_field(&data, "missing", &mut errors));
        assert!(errors.is_empty());
        boolean_field(&data, "c", &mut errors);
        assert_eq!(
            Value::Object(errors.0),
            json!({"c": ["Must be a valid boolean."]})
        );
    }

    #[test]
    fn user_links_never_resolve() {
        let data = object(
            json!({"username": "u", "user": "https://x/api/marketplace-offering-users/abc/"}),
        );
        assert_eq!(
            set_user_usage(&data).map(|_| ()),
            Err(ApiError::field(
                "user",
                "Invalid hyperlink - Object does not exist."
            ))
        );
        let data = object(json!({"username": "u", "user": 5}));
        assert_eq!(
            set_user_usage(&data).map(|_| ()),
            Err(ApiError::field(
                "user",
                "Incorrect type. Expected URL string, received int."
            ))
        );
    }
}
