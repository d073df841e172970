//! Integration tests, one binary (one link on a 2-core machine).

mod helpers;
mod pg;

mod e2e;
mod multiprocess;
mod never_buy_twice;
mod restart;
mod seed_cases;
mod store_suite;
