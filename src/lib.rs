//! puhuri-approver: event-driven, policy-driven approval of Puhuri Core (Waldur)
//! allocation requests for service providers — the service crate.
//!
//! It holds the roles (receiver, worker, reconciler, team watcher, usage reporter), their
//! supervisor and the command line. The layers below are crates of their own:
//! `puhuri-client` (Puhuri Core), `puhuri-policy` (the policy, no IO), `puhuri-auth`
//! (secrets and signatures). See `ARCHITECTURE.md` for the codemap and the invariants.

pub mod app;
pub mod circuit;
pub mod cli;
pub mod config;
pub mod connection;
pub mod customers;
pub mod decision;
#[cfg(feature = "tools")]
pub mod demo;
pub mod events;
pub mod facts;
pub mod failure;
pub mod healthcheck;
pub mod limits;
pub mod metrics;
pub mod notification;
pub mod otel;
pub mod probe;
pub mod receiver;
pub mod reconciler;
pub mod reload;
pub mod review;
pub mod team;
pub mod usage;
pub mod work;
pub mod worker;
