//! Usage records: what a provider's accounting reports about one allocation, and how
//! records become `set_usage` calls. Pure: no IO (the worker does the calls).
//!
//! A record is a **month-to-date reading**: "allocation A has used `amount` of component C
//! in month M so far", optionally split per user. Readings are cumulative, so a
//! duplicate, a redelivery or a re-pushed file can never count usage twice. Records of
//! one allocation and month that arrive together are aggregated: per component the
//! newest reading wins (by `measured_at`, then by arrival), and every changed component
//! goes into one `set_usage` call. The JSON form is `schemas/usage-record.v1.schema.json`.
//!
//! Order across batches, retries and workers: the stored usage's description records when
//! its reading was taken (`(measured <RFC 3339>)`), and a total is never replaced by an
//! older reading, nor lowered by a reading without a newer `measured_at` (cumulative
//! readings do not go down); such a reading is stale and skipped.
//!
//! Rounding: Puhuri Core stores usage with at most 2 decimal places. Amounts are kept
//! exactly as `rust_decimal` decimals (up to 9 decimal places, at most 18 digits before
//! the point) until they are sent, then rounded half up to the cent: 0.004 → 0.00,
//! 0.005 → 0.01.
//!
//! Errors keep their kind: [`AmountError`], [`NotAMonth`], [`MonthNotOpen`], and
//! [`RecordError`] (the field, and what is [`Invalid`] in it).
//!
//! Months: Puhuri Core files every `set_usage` under the current billing month (UTC), so
//! a reading for an earlier month can never be accepted: it is refused as closed.

pub mod file;
pub mod push;
pub mod report;

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::notification::WaldurUuid;

/// Decimal places kept before rounding.
const SCALE: u32 = 9;
/// Digits before the decimal point: Waldur's `DecimalField(max_digits=20,
/// decimal_places=2)` holds at most 18.
const MAX_WHOLE_DIGITS: usize = 18;
/// The largest total Waldur can store, in cents.
const MAX_CENTS: i128 = 100_000_000_000_000_000_000 - 1;

/// A non-negative quantity, exact to 9 decimal places, with at most 18 digits before the
/// decimal point; kept as a [`rust_decimal::Decimal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Amount(Decimal);

/// Why a text or JSON value is not an [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` is negative: usage is never below 0")]
    Negative(String),
    /// Not digits with at most one decimal point (a sign, an exponent, `.5`, `1.`, text).
    #[error("`{0}` is not a plain decimal number (like 12 or 12.25)")]
    NotPlain(String),
    #[error("`{0}` has more than {max} decimal places", max = SCALE)]
    TooPrecise(String),
    #[error("`{0}` has more than {max} digits before the decimal point", max = MAX_WHOLE_DIGITS)]
    TooLarge(String),
    /// A JSON number that is not written as a plain decimal (`1e3`, `-1`).
    #[error("`{0}` is not a plain decimal number; send it as a string like \"12.25\"")]
    NumberNotPlain(String),
    /// Neither a string nor a number; names the JSON type found.
    #[error("expected a number, found {0}")]
    NotANumber(&'static str),
}

impl Amount {
    pub const ZERO: Amount = Amount(Decimal::ZERO);

    /// Parses a plain decimal (`12`, `12.5`, `0.125`): no sign, no exponent, at most 9
    /// decimal places, at most 18 digits before the point.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(AmountError::Negative(text.to_owned()));
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || text.ends_with('.') {
            return Err(AmountError::NotPlain(text.to_owned()));
        }
        if fraction.len() > SCALE as usize {
            return Err(AmountError::TooPrecise(text.to_owned()));
        }
        let whole = whole.trim_start_matches('0');
        if whole.len() > MAX_WHOLE_DIGITS {
            return Err(AmountError::TooLarge(text.to_owned()));
        }
        // At most 27 digits: well within the 96-bit mantissa of a `Decimal`.
        let mantissa = whole
            .bytes()
            .chain(fraction.bytes())
            .fold(0i128, |m, b| m * 10 + i128::from(b - b'0'));
        Decimal::try_from_i128_with_scale(mantissa, fraction.len() as u32)
            .map(Amount)
            .map_err(|_| AmountError::TooLarge(text.to_owned()))
    }

    /// From a JSON string or number.
    pub fn from_json(value: &Value) -> Result<Amount, AmountError> {
        match value {
            Value::String(s) => Amount::parse(s),
            Value::Number(n) => Amount::parse(&n.to_string())
                .map_err(|_| AmountError::NumberNotPlain(n.to_string())),
            other => Err(AmountError::NotANumber(json_kind(other))),
        }
    }

    /// Rounded half up to the cent.
    fn rounded(self) -> Decimal {
        let mut rounded = self
            .0
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        // At most 20 digits at scale 2: always representable.
        rounded.rescale(2);
        rounded
    }

    /// Rounded half up to the cent, in cents.
    pub fn cents(self) -> i128 {
        self.rounded().mantissa()
    }

    /// Rounded to the cent and rendered as Puhuri Core takes it (`"12.35"`).
    pub fn to_cents_string(self) -> String {
        self.rounded().to_string()
    }

    /// The exact sum, or `None` when it has more than 18 digits before the point.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        let limit = Decimal::from(10i64.pow(MAX_WHOLE_DIGITS as u32));
        self.0
            .checked_add(other.0)
            .filter(|sum| *sum < limit)
            .map(Amount)
    }
}

impl fmt::Display for Amount {
    /// Without trailing zeros: `12.5`, `12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

/// Parses Waldur's rendering of a stored usage (`"12.50"`, `12.5`) into cents.
pub fn parse_cents(value: &Value) -> Option<i128> {
    Amount::from_json(value).ok().map(Amount::cents)
}

/// A text that is not a month written as `YYYY-MM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a month written as YYYY-MM")]
pub struct NotAMonth(pub String);

/// Why a month cannot be reported now: Puhuri Core files usage only under the current
/// billing month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MonthNotOpen {
    /// An earlier month: it can never be reported.
    #[error(
        "month {month} is closed: Puhuri Core takes usage only for the current billing month ({current}, UTC)"
    )]
    Closed { month: Month, current: Month },
    /// A later month.
    #[error("month {month} has not started (the current billing month is {current}, UTC)")]
    NotStarted { month: Month, current: Month },
}

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u8,
}

impl Month {
    /// `YYYY-MM`, from 2000 on.
    pub fn parse(text: &str) -> Result<Month, NotAMonth> {
        let bad = || NotAMonth(text.to_owned());
        let (year, month) = text.trim().split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        let year: i32 = year.parse().map_err(|_| bad())?;
        let month: u8 = month.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || year < 2000 {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    pub fn of(t: OffsetDateTime) -> Month {
        let t = t.to_offset(time::UtcOffset::UTC);
        Month {
            year: t.year(),
            month: u8::from(t.month()),
        }
    }

    /// The first day, as Waldur's `billing_period` filter takes it.
    pub fn billing_period(self) -> String {
        format!("{:04}-{:02}-01", self.year, self.month)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Which allocation a record is about.
pub use puhuri_client::ResourceRef;

/// One usage record, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The sender's id for the record, if it gave one (also the queue message id).
    pub id: Option<String>,
    pub allocation: ResourceRef,
    pub component: String,
    /// Month-to-date usage of the component.
    pub amount: Amount,
    pub month: Month,
    /// Per-user month-to-date usage, by username; sums to at most `amount`.
    pub users: BTreeMap<String, Amount>,
    /// When the reading was taken; the newest reading of a component wins.
    pub measured_at: Option<OffsetDateTime>,
    pub description: String,
}

/// The wire form (`schemas/usage-record.v1.schema.json`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<String>,
    pub component: String,
    pub amount: Value,
    pub month: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What is wrong with one field of a record; [`Invalid::field`] names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("give either resource_uuid or backend_id, not both")]
    BothAllocations,
    #[error("name the allocation by resource_uuid or backend_id")]
    NoAllocation,
    #[error("`{0}` is not a uuid")]
    NotAUuid(String),
    #[error("must be 1 to 255 characters, not blank")]
    BackendId,
    #[error("`{0}` is not a component type (letters, digits, `_`, `-`, `.`)")]
    Component(String),
    #[error(transparent)]
    Amount(AmountError),
    /// Rounds to more than Waldur's 18 digits before the point.
    #[error("is larger than Puhuri Core can store")]
    AmountTooLarge,
    #[error(transparent)]
    Month(NotAMonth),
    #[error("usernames must be 1 to 150 characters")]
    Username,
    #[error("user `{user}`: {error}")]
    UserAmount {
        user: String,
        #[source]
        error: AmountError,
    },
    #[error("the split is too large")]
    SplitTooLarge,
    #[error("the users' usage adds up to {split}, more than the amount {amount}")]
    SplitAboveAmount { split: Amount, amount: Amount },
    #[error("`{0}` is not an RFC 3339 time")]
    MeasuredAt(String),
    #[error("is longer than 1000 characters")]
    Description,
    #[error("must be 1 to 200 characters")]
    Id,
}

impl Invalid {
    /// The wire field the problem is in.
    pub fn field(&self) -> &'static str {
        match self {
            Invalid::BothAllocations | Invalid::NoAllocation | Invalid::NotAUuid(_) => {
                "resource_uuid"
            }
            Invalid::BackendId => "backend_id",
            Invalid::Component(_) => "component",
            Invalid::Amount(_) | Invalid::AmountTooLarge => "amount",
            Invalid::Month(_) => "month",
            Invalid::Username
            | Invalid::UserAmount { .. }
            | Invalid::SplitTooLarge
            | Invalid::SplitAboveAmount { .. } => "users",
            Invalid::MeasuredAt(_) => "measured_at",
            Invalid::Description => "description",
            Invalid::Id => "id",
        }
    }
}

/// Why a record can never be accepted, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {invalid}")]
pub struct RecordError {
    pub field: &'static str,
    #[source]
    pub invalid: Invalid,
}

impl From<Invalid> for RecordError {
    fn from(invalid: Invalid) -> RecordError {
        RecordError {
            field: invalid.field(),
            invalid,
        }
    }
}

/// Why a queued body is not a usage record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    /// Not JSON of the record's shape (serde's message: a syntax error, a missing or
    /// unknown field, a wrong type).
    #[error("not a usage record: {0}")]
    Shape(String),
    /// The shape is right but a field's value is not.
    #[error("invalid usage record: {0}")]
    Invalid(#[source] RecordError),
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Component types as Waldur names them: letters, digits, `_`, `-`, `.`.
fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl RawRecord {
    /// The record, or its first problem.
    pub fn validate(self) -> Result<UsageRecord, RecordError> {
        self.validate_all().map_err(|problems| {
            // `validate_all` never returns an empty list; the fallback only keeps this total.
            problems
                .into_iter()
                .next()
                .unwrap_or_else(|| Invalid::NoAllocation.into())
        })
    }

    /// The record, or every problem it has, in field order (never an empty list).
    pub fn validate_all(self) -> Result<UsageRecord, Vec<RecordError>> {
        let mut problems: Vec<RecordError> = Vec::new();
        let mut check = |result: Result<(), Invalid>| {
            if let Err(invalid) = result {
                problems.push(invalid.into());
            }
        };
        let allocation = match (self.resource_uuid, self.backend_id) {
            (Some(_), Some(_)) => Err(Invalid::BothAllocations),
            (Some(uuid), None) => WaldurUuid::parse(&uuid)
                .map(ResourceRef::Uuid)
                .ok_or(Invalid::NotAUuid(uuid)),
            (None, Some(backend_id)) => {
                let trimmed = backend_id.trim();
                if trimmed.is_empty() || trimmed.len() > 255 {
                    Err(Invalid::BackendId)
                } else {
                    Ok(ResourceRef::BackendId(trimmed.to_owned()))
                }
            }
            (None, None) => Err(Invalid::NoAllocation),
        };
        let allocation = allocation.map_err(|e| check(Err(e))).ok();
        if !valid_component(&self.component) {
            check(Err(Invalid::Component(self.component.clone())));
        }
        let amount = match Amount::from_json(&self.amount) {
            Ok(amount) if amount.cents() > MAX_CENTS => {
                check(Err(Invalid::AmountTooLarge));
                None
            }
            Ok(amount) => Some(amount),
            Err(error) => {
                check(Err(Invalid::Amount(error)));
                None
            }
        };
        let month = Month::parse(&self.month)
            .map_err(|e| check(Err(Invalid::Month(e))))
            .ok();
        let mut users = BTreeMap::new();
        let mut split = Some(Amount::ZERO);
        for (username, value) in self.users.unwrap_or_default() {
            if username.trim().is_empty() || username.len() > 150 {
                check(Err(Invalid::Username));
                continue;
            }
            match Amount::from_json(&value) {
                Ok(share) => {
                    split = match split.map(|s| s.checked_add(share)) {
                        Some(Some(total)) => Some(total),
                        Some(None) => {
                            check(Err(Invalid::SplitTooLarge));
                            None
                        }
                        None => None,
                    };
                    users.insert(username, share);
                }
                Err(error) => check(Err(Invalid::UserAmount {
                    user: username.clone(),
                    error,
                })),
            }
        }
        if let (Some(split), Some(amount)) = (split, amount)
            && split > amount
        {
            check(Err(Invalid::SplitAboveAmount { split, amount }));
        }
        let measured_at = match self.measured_at {
            None => None,
            Some(text) => {
                OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| check(Err(Invalid::MeasuredAt(text.clone()))))
                    .ok()
            }
        };
        let description = self.description.unwrap_or_default();
        if description.chars().count() > 1000 {
            check(Err(Invalid::Description));
        }
        if let Some(id) = &self.id
            && (id.is_empty() || id.len() > 200)
        {
            check(Err(Invalid::Id));
        }
        match (allocation, amount, month) {
            (Some(allocation), Some(amount), Some(month)) if problems.is_empty() => {
                Ok(UsageRecord {
                    id: self.id,
                    allocation,
                    component: self.component,
                    amount,
                    month,
                    users,
                    measured_at,
                    description,
                })
            }
            _ => Err(problems),
        }
    }
}

impl UsageRecord {
    /// Decodes and validates a queued record.
    pub fn decode(body: &[u8]) -> Result<UsageRecord, RecordDecodeError> {
        let raw: RawRecord =
            serde_json::from_slice(body).map_err(|e| RecordDecodeError::Shape(e.to_string()))?;
        raw.validate().map_err(RecordDecodeError::Invalid)
    }

    /// The wire form, for queueing.
    pub fn to_raw(&self) -> RawRecord {
        let (resource_uuid, backend_id) = match &self.allocation {
            ResourceRef::Uuid(u) => (Some(u.to_string()), None),
            ResourceRef::BackendId(b) => (None, Some(b.clone())),
        };
        RawRecord {
            id: self.id.clone(),
            resource_uuid,
            backend_id,
            component: self.component.clone(),
            amount: Value::String(self.amount.to_string()),
            month: self.month.to_string(),
            users: (!self.users.is_empty()).then(|| {
                self.users
                    .iter()
                    .map(|(u, a)| (u.clone(), Value::String(a.to_string())))
                    .collect()
            }),
            measured_at: self.measured_at.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            description: (!self.description.is_empty()).then(|| self.description.clone()),
        }
    }

    /// The key records are aggregated under.
    pub fn key(&self) -> (ResourceRef, Month) {
        (self.allocation.clone(), self.month)
    }
}

/// Whether a record's month can still be reported in `now`'s billing month.
pub fn check_month(month: Month, now: OffsetDateTime) -> Result<(), MonthNotOpen> {
    let current = Month::of(now);
    if month < current {
        Err(MonthNotOpen::Closed { month, current })
    } else if month > current {
        Err(MonthNotOpen::NotStarted { month, current })
    } else {
        Ok(())
    }
}

/// The reading to report for one component, after aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentTotal {
    pub component: String,
    pub amount: Amount,
    pub users: BTreeMap<String, Amount>,
    pub description: String,
    pub measured_at: Option<OffsetDateTime>,
}

/// Aggregates readings of one allocation and month, given in arrival order: per
/// component the newest (by `measured_at`, a reading without it counting as older than
/// any with it; ties by arrival) wins.
pub fn aggregate<'a>(records: impl IntoIterator<Item = &'a UsageRecord>) -> Vec<ComponentTotal> {
    let mut newest: BTreeMap<&str, &UsageRecord> = BTreeMap::new();
    for record in records {
        let replace = match newest.get(record.component.as_str()) {
            None => true,
            Some(held) => record.measured_at >= held.measured_at,
        };
        if replace {
            newest.insert(&record.component, record);
        }
    }
    newest
        .into_values()
        .map(|record| ComponentTotal {
            component: record.component.clone(),
            amount: record.amount,
            users: record.users.clone(),
            description: record.description.clone(),
            measured_at: record.measured_at,
        })
        .collect()
}

/// What Puhuri Core holds for one component and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub cents: i128,
    /// When the stored reading was taken, as its description records it.
    pub measured_at: Option<OffsetDateTime>,
}

/// What to do with one aggregated total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Send it with `set_usage`.
    Send,
    /// Puhuri Core holds this total already.
    Unchanged,
    /// Puhuri Core holds a newer reading: an older one (a retry that arrived late, or a
    /// lower cumulative reading without a newer `measured_at`) never replaces it.
    Stale,
}

/// Decides one total against what is stored.
pub fn plan(total: &ComponentTotal, held: Option<&Held>) -> Plan {
    let Some(held) = held else { return Plan::Send };
    if total.amount.cents() == held.cents {
        return Plan::Unchanged;
    }
    match (total.measured_at, held.measured_at) {
        (Some(new), Some(old)) if new < old => Plan::Stale,
        (Some(_), _) => Plan::Send,
        (None, _) if total.amount.cents() < held.cents => Plan::Stale,
        (None, _) => Plan::Send,
    }
}

const MEASURED: &str = "(measured ";

/// The description stored with a usage: the record's own text and, when known, when the
/// reading was taken (so a later, older reading can be recognised as stale).
pub fn stored_description(description: &str, measured_at: Option<OffsetDateTime>) -> String {
    let Some(at) = measured_at.and_then(|t| {
        t.to_offset(time::UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    }) else {
        return description.to_owned();
    };
    if description.is_empty() {
        format!("{MEASURED}{at})")
    } else {
        format!("{description} {MEASURED}{at})")
    }
}

/// When a stored reading was taken, from its description.
pub fn measured_from_description(description: &str) -> Option<OffsetDateTime> {
    let start = description.rfind(MEASURED)? + MEASURED.len();
    let text = description[start..].strip_suffix(')')?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Result<UsageRecord, RecordError> {
        serde_json::from_value::<RawRecord>(value.clone())
            .unwrap_or_else(|e| panic!("{value}: {e}"))
            .validate()
    }

    #[test]
    fn amounts_parse_exactly_and_round_half_up_to_cents() {
        let cases = [
            ("0", "0.00", "0"),
            ("12", "12.00", "12"),
            ("12.344999", "12.34", "12.344999"),
            ("12.345", "12.35", "12.345"),
            ("0.005", "0.01", "0.005"),
            ("0.004999999", "0.00", "0.004999999"),
            (
                "999999999999999999.994",
                "999999999999999999.99",
                "999999999999999999.994",
            ),
        ];
        for (text, cents, shown) in cases {
            let amount = Amount::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(amount.to_cents_string(), cents, "{text}");
            assert_eq!(amount.to_string(), shown, "{text}");
        }
        for bad in [
            "",
            "-1",
            "1e3",
            "1.",
            ".5",
            "1.2.3",
            "abc",
            "1.0000000001",
            "1234567890123456789",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(Amount::from_json(&json!(10.5)).map(|a| a.cents()), Ok(1050));
        assert!(Amount::from_json(&json!(1e300)).is_err());
        assert!(Amount::from_json(&json!(true)).is_err());
    }

    #[test]
    fn errors_keep_their_kind_and_their_text() {
        let text = |r: Result<Amount, AmountError>| r.err().map(|e| e.to_string());
        assert_eq!(
            Amount::parse(" -1 "),
            Err(AmountError::Negative("-1".into()))
        );
        assert_eq!(
            text(Amount::parse("-1")).as_deref(),
            Some("`-1` is negative: usage is never below 0")
        );
        assert_eq!(
            text(Amount::parse("1e3")).as_deref(),
            Some("`1e3` is not a plain decimal number (like 12 or 12.25)")
        );
        assert_eq!(
            text(Amount::parse("1.0000000001")).as_deref(),
            Some("`1.0000000001` has more than 9 decimal places")
        );
        assert_eq!(
            text(Amount::parse("1234567890123456789")).as_deref(),
            Some("`1234567890123456789` has more than 18 digits before the decimal point")
        );
        assert_eq!(
            text(Amount::from_json(&json!(1e300))).as_deref(),
            Some("`1e+300` is not a plain decimal number; send it as a string like \"12.25\"")
        );
        assert_eq!(
            Amount::from_json(&json!(-1)),
            Err(AmountError::NumberNotPlain("-1".into()))
        );
        assert_eq!(
            text(Amount::from_json(&json!(null))).as_deref(),
            Some("expected a number, found null")
        );
        assert_eq!(
            Month::parse("November").map_err(|e| e.to_string()),
            Err("`November` is not a month written as YYYY-MM".into())
        );
        let decoded = UsageRecord::decode(
            br#"{"backend_id":"b","component":"c","amount":"-1","month":"2026-11"}"#,
        );
        assert_eq!(
            decoded.as_ref().map_err(ToString::to_string),
            Err(
                "invalid usage record: amount: `-1` is negative: usage is never below 0".to_owned()
            )
        );
        assert!(
            matches!(
                &decoded,
                Err(RecordDecodeError::Invalid(RecordError {
                    field: "amount",
                    invalid: Invalid::Amount(AmountError::Negative(_)),
                }))
            ),
            "{decoded:?}"
        );
        let split = record(json!({"backend_id": "b", "component": "c", "amount": "1.5",
            "month": "2026-11", "users": {"a": "1", "b": "0.75"}}));
        assert_eq!(
            split.map_err(|e| e.to_string()),
            Err("users: the users' usage adds up to 1.75, more than the amount 1.5".into())
        );
        let user = record(json!({"backend_id": "b", "component": "c", "amount": "1",
            "month": "2026-11", "users": {"a": "x"}}));
        assert_eq!(
            user.map_err(|e| e.to_string()),
            Err("users: user `a`: `x` is not a plain decimal number (like 12 or 12.25)".into())
        );
        let too_large = record(json!({"backend_id": "b", "component": "c",
            "amount": "999999999999999999.995", "month": "2026-11"}));
        assert_eq!(
            too_large.map_err(|e| e.to_string()),
            Err("amount: is larger than Puhuri Core can store".into())
        );
        let now = OffsetDateTime::parse(
            "2026-11-15T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let october = Month {
            year: 2026,
            month: 10,
        };
        assert_eq!(
            check_month(october, now).map_err(|e| e.to_string()),
            Err("month 2026-10 is closed: Puhuri Core takes usage only for the current billing month (2026-11, UTC)".into())
        );
    }

    #[test]
    fn sums_stay_exact_and_within_18_digits() {
        let a = |text: &str| Amount::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            a("0.000000001").checked_add(a("12.5")),
            Some(a("12.500000001"))
        );
        assert_eq!(
            a("999999999999999999.999999998").checked_add(a("0.000000001")),
            Some(a("999999999999999999.999999999"))
        );
        assert_eq!(
            a("999999999999999999.999999999").checked_add(a("0.000000001")),
            None
        );
        assert_eq!(a("12.50").to_string(), "12.5");
        assert_eq!(a("12.50"), a("12.5"));
        assert_eq!(a("007.10").to_string(), "7.1");
        assert_eq!(a("0.000").to_string(), "0");
        assert_eq!(Amount::ZERO.to_cents_string(), "0.00");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any amount survives its display, and rounds to the cent as integer arithmetic on
            /// its billionths does (half up).
            #[test]
            fn amounts_round_trip_and_round_half_up(
                (whole, places, fraction) in (0u64..1_000_000_000_000_000_000, 0u32..=9)
                    .prop_flat_map(|(whole, places)| (
                        Just(whole),
                        Just(places),
                        0u64..10u64.pow(places),
                    )),
            ) {
                let text = if places == 0 {
                    whole.to_string()
                } else {
                    format!("{whole}.{fraction:0width$}", width = places as usize)
                };
                let amount = Amount::parse(&text)
                    .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                prop_assert_eq!(Amount::parse(&amount.to_string()), Ok(amount));

                let nanos = i128::from(whole) * 1_000_000_000
                    + i128::from(fraction) * 10i128.pow(9 - places);
                let shown = match nanos % 1_000_000_000 {
                    0 => whole.to_string(),
                    frac => format!("{whole}.{}", format!("{frac:09}").trim_end_matches('0')),
                };
                prop_assert_eq!(amount.to_string(), shown);
                let cents = (nanos + 5_000_000) / 10_000_000;
                prop_assert_eq!(amount.cents(), cents);
                prop_assert_eq!(
                    amount.to_cents_string(),
                    format!("{}.{:02}", cents / 100, cents % 100)
                );
            }
        }
    }

    #[test]
    fn months_parse_and_close() {
        assert_eq!(
            Month::parse("2026-11"),
            Ok(Month {
                year: 2026,
                month: 11
            })
        );
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", "2026-11-01", ""] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        let now = OffsetDateTime::parse(
            "2026-11-01T00:00:01Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        assert!(
            check_month(
                Month::parse("2026-11").unwrap_or(Month { year: 0, month: 0 }),
                now
            )
            .is_ok()
        );
        let closed = check_month(
            Month {
                year: 2026,
                month: 10,
            },
            now,
        );
        assert!(
            closed
                .as_ref()
                .is_err_and(|e| matches!(e, MonthNotOpen::Closed { .. })
                    && e.to_string().contains("closed")),
            "{closed:?}"
        );
        let future = check_month(
            Month {
                year: 2026,
                month: 12,
            },
            now,
        );
        assert!(
            future
                .as_ref()
                .is_err_and(|e| matches!(e, MonthNotOpen::NotStarted { .. })
                    && e.to_string().contains("not started")),
            "{future:?}"
        );
        assert_eq!(
            Month {
                year: 2026,
                month: 3
            }
            .billing_period(),
            "2026-03-01"
        );
    }

    #[test]
    fn records_validate_every_field() {
        let ok = record(json!({"backend_id": "proj_1", "component": "cpu_k_hours",
            "amount": "10.5", "month": "2026-11", "users": {"alice": "6", "bob": 4.5}}));
        let ok = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.allocation, ResourceRef::BackendId("proj_1".into()));
        assert_eq!(ok.users.len(), 2);
        let cases = [
            (
                json!({"component": "c", "amount": 1, "month": "2026-11"}),
                "resource_uuid",
            ),
            (
                json!({"resource_uuid": "x", "component": "c", "amount": 1, "month": "2026-11"}),
                "resource_uuid",
            ),
            (
                json!({"backend_id": "b", "resource_uuid": "a1916bd53fd04b1ab1a4e700c926607b", "component": "c", "amount": 1, "month": "2026-11"}),
                "resource_uuid",
            ),
            (
                json!({"backend_id": " ", "component": "c", "amount": 1, "month": "2026-11"}),
                "backend_id",
            ),
            (
                json!({"backend_id": "b", "component": "c d", "amount": 1, "month": "2026-11"}),
                "component",
            ),
            (
                json!({"backend_id": "b", "component": "c", "amount": "-1", "month": "2026-11"}),
                "amount",
            ),
            (
                json!({"backend_id": "b", "component": "c", "amount": 1, "month": "November"}),
                "month",
            ),
            (
                json!({"backend_id": "b", "component": "c", "amount": 1, "month": "2026-11", "users": {"a": 2}}),
                "users",
            ),
            (
                json!({"backend_id": "b", "component": "c", "amount": 1, "month": "2026-11", "measured_at": "yesterday"}),
                "measured_at",
            ),
        ];
        for (value, field) in cases {
            let error = record(value.clone()).err();
            assert_eq!(
                error.as_ref().map(|e| e.field),
                Some(field),
                "{value}: {error:?}"
            );
        }
        let unknown = UsageRecord::decode(
            br#"{"backend_id":"b","component":"c","amount":1,"month":"2026-11","colour":"red"}"#,
        );
        assert!(
            unknown
                .as_ref()
                .is_err_and(|e| matches!(e, RecordDecodeError::Shape(_))
                    && e.to_string().contains("colour")),
            "{unknown:?}"
        );
    }

    #[test]
    fn the_measuring_time_survives_the_stored_description() {
        let at = OffsetDateTime::parse(
            "2026-11-20T10:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .ok();
        assert_eq!(stored_description("Slurm", None), "Slurm");
        let stored = stored_description("Slurm (nightly)", at);
        assert_eq!(stored, "Slurm (nightly) (measured 2026-11-20T10:00:00Z)");
        assert_eq!(measured_from_description(&stored), at);
        assert_eq!(measured_from_description(&stored_description("", at)), at);
        assert_eq!(measured_from_description("Slurm (nightly)"), None);
        assert_eq!(measured_from_description(""), None);
    }

    #[test]
    fn the_schema_names_exactly_the_wire_fields() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/usage-record.v1.schema.json"))
                .unwrap_or_default();
        let mut documented: Vec<&str> = schema["properties"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        documented.sort_unstable();
        let full = RawRecord {
            id: Some("i".into()),
            resource_uuid: Some("r".into()),
            backend_id: Some("b".into()),
            component: "c".into(),
            amount: json!("1"),
            month: "2026-11".into(),
            users: Some(BTreeMap::new()),
            measured_at: Some("t".into()),
            description: Some("d".into()),
        };
        let value = serde_json::to_value(full).unwrap_or_default();
        let mut fields: Vec<&str> = value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        fields.sort_unstable();
        assert_eq!(documented, fields);
    }

    #[test]
    fn the_wire_form_round_trips() {
        let original = record(json!({"id": "r1", "resource_uuid": "a1916bd53fd04b1ab1a4e700c926607b",
            "component": "gpu_k_hours", "amount": "3.125", "month": "2026-11",
            "users": {"alice": "1"}, "measured_at": "2026-11-20T10:00:00Z", "description": "Slurm"}))
        .unwrap_or_else(|e| panic!("{e}"));
        let body = serde_json::to_vec(&original.to_raw()).unwrap_or_default();
        assert_eq!(UsageRecord::decode(&body), Ok(original));
    }

    #[test]
    fn the_newest_reading_of_each_component_wins() {
        let r = |component: &str, amount: &str, at: Option<&str>| {
            let mut value = json!({"backend_id": "b", "component": component, "amount": amount, "month": "2026-11"});
            if let Some(at) = at {
                value["measured_at"] = json!(at);
            }
            record(value).unwrap_or_else(|e| panic!("{e}"))
        };
        let records = [
            r("cpu", "10", Some("2026-11-20T10:00:00Z")),
            r("cpu", "8", Some("2026-11-19T10:00:00Z")),
            r("gpu", "1", None),
            r("gpu", "2", None),
            r("cpu", "9", None),
        ];
        let totals = aggregate(&records);
        let got: Vec<(String, String)> = totals
            .iter()
            .map(|t| (t.component.clone(), t.amount.to_string()))
            .collect();
        assert_eq!(
            got,
            [("cpu".into(), "10".into()), ("gpu".into(), "2".into())]
        );
        let held = |cents, at: Option<&str>| Held {
            cents,
            measured_at: at.and_then(|a| {
                OffsetDateTime::parse(a, &time::format_description::well_known::Rfc3339).ok()
            }),
        };
        // cpu 10 measured 2026-11-20T10:00; gpu 2 without a time.
        assert_eq!(plan(&totals[0], None), Plan::Send);
        assert_eq!(plan(&totals[0], Some(&held(1000, None))), Plan::Unchanged);
        assert_eq!(
            plan(&totals[0], Some(&held(1200, Some("2026-11-21T00:00:00Z")))),
            Plan::Stale
        );
        assert_eq!(
            plan(&totals[0], Some(&held(1200, Some("2026-11-19T00:00:00Z")))),
            Plan::Send
        );
        assert_eq!(plan(&totals[0], Some(&held(1200, None))), Plan::Send);
        assert_eq!(plan(&totals[1], Some(&held(300, None))), Plan::Stale);
        assert_eq!(plan(&totals[1], Some(&held(100, None))), Plan::Send);
    }
}
