//! Integration tests, one binary (one link on a 2-core machine).

mod helpers;

mod actions;
mod actions_http;
mod admin;
mod admin_api;
mod admin_cli;
mod alerts;
mod browser;
mod browser_ops;
mod chained_claims;
mod cli;
mod e2e;
mod email;
mod metrics;
mod multiprocess;
mod never_buy_twice;
mod no_secrets;
mod ops_web;
mod outbox;
mod pg;
mod receivers;
mod renewals;
mod restart;
mod security;
mod seed_cases;
mod shutdown;
mod simulation;
mod store_suite;
