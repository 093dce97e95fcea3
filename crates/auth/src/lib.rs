//! Secret values and the webhook signature schemes that use them.
//!
//! No IO and no async: the receiver verifies with it, the simulator signs with it, and the
//! `sign` command prints headers with it. It depends on no other crate of the workspace.

pub mod generate;
pub mod secret;
pub mod signature;

pub use secret::Secret;
