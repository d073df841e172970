//! # provisioner
//!
//! Turns a paid VPS order into a running server with delivered credentials, by buying it from the
//! SmartVPS reseller API, waiting for it to be built, and telling the customer. It never buys a
//! server twice: every purchase is written to a ledger before it is sent, outcomes are classified
//! as succeeded, rejected or unknown, and unknown ones are reconciled before any new purchase.
//!
//! ## Layout
//! - [`clock`]: the `Clock` port; system and scaled/virtual time.
//! - [`config`]: typed settings from TOML and `PROVISIONER_*`/`SMARTVPS_*` environment variables.
//! - [`policy`]: the retry policy (the seed's timing) and the `plan` timing analysis.
//! - [`domain`]: orders and their state machine, packages, credentials, the purchase ledger.
//! - [`provider`]: the `Provider` port, the SmartVPS HTTP client with tolerant wire decoding, and
//!   a metering decorator.
//! - [`simulator`]: a SmartVPS world, scriptable faults, in-process and over HTTP.
//! - [`simulation`]: the deterministic simulation: many orders, random faults, crashes, invariants.
//! - [`store`]: the `Store` port; SQLite, PostgreSQL and in-memory implementations.
//! - [`catalog`]: SmartVPS's stock list kept as the package catalog intake checks orders against.
//! - [`engine`]: the worker: leases, the buy and credentials phases, reconciliation.
//! - [`notify`]: the `Notifier` port, the outbox dispatcher, signed webhooks, SMTP email.
//! - [`crypto`]: AEAD encryption of customer passwords at rest.
//! - [`web`]: the axum router: intake, the customer credentials endpoint, the admin JSON API,
//!   the server-rendered admin dashboard, auth and the OpenAPI document.
//! - [`app`]: wiring the ports together for `serve` and `demo`.
//! - [`demo`]: the one-command demo on embedded defaults.
//! - [`bench`](crate::bench): `bench strategies`, the retry-versus-reconcile comparison.
//! - [`bench_throughput`]: `bench throughput`, orders per second against the database's raw
//!   commit rate, latency and memory.
//! - [`cli`]: the command-line interface.
//! - [`telemetry`]: logging (human or JSON) and the Prometheus metrics recorder.
//! - [`operator`]: `orders` and `catalog` commands, on the database or through the admin API.
#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod bench_throughput;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod notify;
pub mod operator;
pub mod policy;
pub mod provider;
pub mod simulation;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod web;
