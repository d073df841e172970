//! Integration tests, one binary (one link on a 2-core machine).

mod helpers;
mod receivers;

mod admin;
mod admin_api;
mod admin_cli;
mod browser;
mod cli;
mod e2e;
mod email;
mod metrics;
mod never_buy_twice;
mod no_secrets;
mod outbox;
mod restart;
mod seed_cases;
mod shutdown;
mod simulation;
