//! The reconciler crate's integration tests, one binary (as cargo's own testsuite): reading real
//! repositories made by the `git` binary, and the server hook run by a real `git push`.

// A test that cannot go on panics with what failed; that is its report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod git;
mod hook;
mod util;
