//! The runtime crate's integration tests, one binary (as cargo's own testsuite): deployment from
//! real Git commits, and the web engine serving real sockets and real application processes.

// A test that cannot go on panics with what failed; that is its report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy;
mod util;
mod web;
