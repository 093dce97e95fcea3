//! Identifiers as Puhuri Core renders them, built only by parsing.
//!
//! INVARIANT: a [`WaldurUuid`] is always 32 lowercase hex digits, whatever form it came
//! in; the typed ids ([`OrderUuid`], [`ResourceUuid`]) keep an order's uuid from being
//! passed where a resource's is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Waldur uuid in its canonical form: 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WaldurUuid(String);

/// A value that is not a uuid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a uuid")]
pub struct InvalidUuid(String);

impl WaldurUuid {
    /// Accepts 32 hex digits or the hyphenated 8-4-4-4-12 form, in any case.
    pub fn parse(value: &str) -> Option<WaldurUuid> {
        let hex: String = match value.len() {
            32 => value.to_owned(),
            36 => {
                let bytes = value.as_bytes();
                if [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
                    return None;
                }
                value.chars().filter(|c| *c != '-').collect()
            }
            _ => return None,
        };
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(WaldurUuid(hex.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 hex digits, handy in backend ids.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl TryFrom<String> for WaldurUuid {
    type Error = InvalidUuid;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        WaldurUuid::parse(&value).ok_or(InvalidUuid(value))
    }
}

impl From<WaldurUuid> for String {
    fn from(value: WaldurUuid) -> String {
        value.0
    }
}

impl fmt::Display for WaldurUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WaldurUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! typed_uuid {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(WaldurUuid);

        impl $name {
            pub fn parse(value: &str) -> Option<$name> {
                WaldurUuid::parse(value).map($name)
            }
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
            pub fn uuid(&self) -> &WaldurUuid {
                &self.0
            }
        }

        impl From<WaldurUuid> for $name {
            fn from(value: WaldurUuid) -> $name {
                $name(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

typed_uuid!(
    /// The uuid of a marketplace order (`marketplace-orders/{uuid}/`).
    OrderUuid
);
typed_uuid!(
    /// The uuid of a marketplace resource, the allocation itself.
    ResourceUuid
);

/// What a caller knows of an allocation: its creation order, its resource, or both. At
/// least one is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationHint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_uuid: Option<OrderUuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_uuid: Option<ResourceUuid>,
}

/// `resource <uuid>`, `order <uuid>`, or `no allocation` — for people, not keys.
impl std::fmt::Display for AllocationHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.resource_uuid, &self.order_uuid) {
            (Some(resource), _) => write!(f, "resource {resource}"),
            (None, Some(order)) => write!(f, "order {order}"),
            (None, None) => f.write_str("no allocation"),
        }
    }
}

impl AllocationHint {
    /// The key under which work on one allocation is serialized within a worker.
    pub fn key(&self) -> String {
        match (&self.resource_uuid, &self.order_uuid) {
            (Some(resource), _) => format!("r:{resource}"),
            (None, Some(order)) => format!("o:{order}"),
            (None, None) => String::new(),
        }
    }
}
