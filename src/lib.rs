//! # provisioner
//!
//! Turns a paid VPS order into a running server with delivered credentials, by buying it from the
//! SmartVPS reseller API, waiting for it to be built, and telling the customer. It never buys a
//! server twice: every purchase is written to a ledger before it is sent, outcomes are classified
//! as succeeded, rejected or unknown, and unknown ones are reconciled before any new purchase.
//!
//! ## Layout
//! The crate is grouped by the kind of job each module does.
//!
//! **Core**: pure rules and the engine that applies them. Nothing here knows HTTP or SQL.
//! - [`domain`]: orders and their state machine, packages, credentials, the purchase ledger.
//! - [`policy`]: the retry policy (the seed's timing) and the `plan` timing analysis.
//! - [`engine`]: the worker: leases, the buy and credentials phases, reconciliation, admin
//!   actions, and [`engine::catalog`], SmartVPS's stock list kept as the package catalog.
//! - [`clock`]: the `Clock` port; system and scaled/virtual time.
//! - [`crypto`]: AEAD encryption of customer passwords at rest.
//!
//! **Edges**: the ports' implementations.
//! - [`store`]: the `Store` port; SQLite, PostgreSQL and in-memory implementations.
//! - [`provider`]: the `Provider` port, the SmartVPS HTTP client with tolerant wire decoding, a
//!   metering decorator, and the upstream-health decorator (reachability, failures in plain words).
//! - [`notify`]: the `Notifier` port, the outbox dispatcher, signed webhooks, SMTP email.
//! - [`simulator`]: a SmartVPS world, scriptable faults, in-process and over HTTP (a product
//!   feature: the demo and `provisioner simulator` run on it).
//!
//! **Surfaces**: how people and programs reach the service.
//! - [`web`]: the axum router: intake, the customer credentials endpoint, the admin JSON API,
//!   the server-rendered admin dashboard, auth and the OpenAPI document.
//! - [`cli`]: the command-line interface: command types, dispatch, and the operator's `orders`
//!   and `catalog` commands on the database or through the admin API.
//! - [`config`]: typed settings from TOML and `PROVISIONER_*`/`SMARTVPS_*` environment variables.
//! - [`app`]: wiring the ports together for `serve`, `demo` and the CLI.
//!
//! **Support**: small helpers any layer may use.
//! - [`telemetry`]: logging (human or JSON) and the Prometheus metrics recorder.
//! - [`redact`]: URLs shown without their secrets, the one redactor of logs and error messages.
//!
//! **Tools**: not part of the running service.
//! - [`tools`]: the one-command demo, `bench strategies`, `bench throughput`, and the
//!   deterministic chaos simulation (many orders, random faults, crashes, invariants) and its
//!   renewal counterpart (servers over simulated months, paid renewals, faults, crashes).
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod engine;
pub mod notify;
pub mod policy;
pub mod provider;
pub mod redact;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod web;
