//! The integration tests: one binary, a real RabbitMQ at `AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) and the project's Puhuri Core simulator
//! started in-process on port 0. Every test uses its own queue prefix.

mod after;
mod artifacts;
mod cluster;
mod contract;
mod demo;
mod docs;
mod erred;
mod faults;
mod helpers;
mod ingress;
mod layers;
mod metrics;
mod ops;
mod policy;
mod polite;
mod readiness;
mod recon;
mod review;
mod secrets;
mod spine;
mod stomp;
mod telemetry;
mod tools;
mod trips;
mod usage_key;
