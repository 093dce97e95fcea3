//! puhuri-approver: event-driven, policy-driven approval of Puhuri Core (Waldur)
//! allocation requests for service providers.
//!
//! See `ARCHITECTURE.md` for the codemap and the invariants each module keeps.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod decision;
pub mod demo;
pub mod limits;
pub mod metrics;
pub mod notification;
pub mod otel;
pub mod policy;
pub mod puhuri;
pub mod queue;
pub mod receiver;
pub mod reconciler;
pub mod secret;
pub mod signature;
pub mod sim;
pub mod team;
pub mod usage;
pub mod worker;
