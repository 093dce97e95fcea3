//! The states of orders and resources as Waldur names them.
//!
//! A state this client does not know is kept as it came ([`OrderState::Other`],
//! [`ResourceState::Other`]), so a newer Waldur never makes a fetch fail; the
//! allocation is then simply not one waiting for the provider.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
            /// A state this client does not know, as Waldur wrote it.
            Other(String),
            /// No state was given.
            #[default]
            Missing,
        }

        impl $name {
            /// The state as Waldur writes it.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Other(other) => other,
                    $name::Missing => "",
                }
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> $name {
                match value.as_str() {
                    $($wire => $name::$variant,)+
                    "" => $name::Missing,
                    _ => $name::Other(value),
                }
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> $name {
                $name::from(value.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.as_str().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// A marketplace order's state.
    OrderState {
        PendingConsumer = "pending-consumer",
        PendingProvider = "pending-provider",
        PendingProject = "pending-project",
        PendingStartDate = "pending-start-date",
        Executing = "executing",
        Done = "done",
        Erred = "erred",
        Canceled = "canceled",
        Rejected = "rejected",
    }
);

wire_enum!(
    /// A marketplace resource's state.
    ResourceState {
        Creating = "Creating",
        Ok = "OK",
        Erred = "Erred",
        Updating = "Updating",
        Terminating = "Terminating",
        Terminated = "Terminated",
    }
);

wire_enum!(
    /// What an order asks for.
    OrderType {
        Create = "Create",
        Update = "Update",
        Terminate = "Terminate",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_keep_what_they_do_not_know() {
        let known: OrderState = serde_json::from_str(r#""pending-provider""#).expect("state");
        assert_eq!(known, OrderState::PendingProvider);
        assert_eq!(
            serde_json::to_string(&known).expect("json"),
            r#""pending-provider""#
        );
        let newer: ResourceState = serde_json::from_str(r#""Paused""#).expect("state");
        assert_eq!(newer, ResourceState::Other("Paused".into()));
        assert_eq!(newer.to_string(), "Paused");
        assert_eq!(ResourceState::from("OK"), ResourceState::Ok);
    }
}
