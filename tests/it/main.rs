//! Integration tests, one binary (one link on a 2-core machine).

mod helpers;

mod admin;
mod admin_api;
mod admin_cli;
mod browser;
mod e2e;
mod never_buy_twice;
mod restart;
mod seed_cases;
