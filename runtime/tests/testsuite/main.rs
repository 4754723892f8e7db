//! The runtime crate's integration tests, one binary (as cargo's own testsuite): deployment from
//! real Git commits, and the web engine serving real sockets and real application processes.

mod deploy;
mod util;
mod web;
