//! The Steward domain format: typed model, validation, setting classification, semantic diff.
//!
//! One validator runs everywhere (CI hook, Master, launcher, Managed Server): [`validate`] takes
//! any [`tree::Tree`] and returns every problem at once. [`plan::plan`] is the pure planner
//! shared by `steward diff` and the Managed Server's reconcile loop.

pub mod diag;
pub mod edit;
pub mod fasthash;
pub mod load;
pub mod model;
pub mod plan;
pub mod redact;
pub mod security;
pub mod settings;
pub mod syntax;
pub mod timer;
pub mod tree;
pub mod validate;
pub mod values;

pub use load::{Loaded, Validation, validate};
