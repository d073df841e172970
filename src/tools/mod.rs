//! Tools that ship with the binary but are not the running service: the one-command demo, the
//! benchmarks, and the deterministic chaos simulation the tests and `bench strategies` run.
//!
//! - [`demo`]: the whole job on embedded defaults, in under a minute.
//! - `bench_strategies` (with the `bench` feature): `bench strategies`, the retry-versus-reconcile
//!   comparison.
//! - [`bench_throughput`]: `bench throughput`, orders per second against the database's raw
//!   commit rate, latency and memory.
//! - [`chaos`]: many orders, random faults and crashes in virtual time, checked against the
//!   promises (never two purchases for one order, nothing lost).

#[cfg(feature = "bench")]
pub mod bench_strategies;
pub mod bench_throughput;
pub mod chaos;
pub mod demo;
