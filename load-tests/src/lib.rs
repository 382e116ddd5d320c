//! # lattice-load-tests
//!
//! Bounded loopback load scenarios that measure the gateway. Each scenario is
//! a binary that starts what it needs (the `lattice` binary, upstreams) on
//! 127.0.0.1, sends a bounded number of requests for a bounded time, prints
//! its results, and stops everything it started. Results and the commands
//! that produced them go into `docs/benchmarks.md`.
//!
//! Must never: send traffic anywhere but loopback, or run unbounded.
