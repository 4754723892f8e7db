//! The schema crate's integration tests, one binary (as cargo's own testsuite): the validator's
//! bounds, the classification table's coverage of the model, fuzzing, and the planner.

// A test that cannot go on panics with what failed; that is its report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bounds;
mod consumes;
mod coverage;
mod example;
mod fuzz;
mod plan;
mod timers;
