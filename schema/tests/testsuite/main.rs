//! The schema crate's integration tests, one binary (as cargo's own testsuite): the validator's
//! bounds, the classification table's coverage of the model, fuzzing, and the planner.

mod bounds;
mod coverage;
mod example;
mod fuzz;
mod plan;
