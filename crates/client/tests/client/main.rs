//! The client against the simulator, without the service: every test starts its own
//! simulator in-process on port 0 and runs once per API generation it covers
//! (`<test>::orders`, `<test>::resources`).

mod errors;
mod fetch;
mod harness;
mod lookup;
mod observer;
mod pagination;
