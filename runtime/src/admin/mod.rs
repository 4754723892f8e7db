//! `steward admin`, the console tool (jeusadmin's counterpart): everything it does goes through
//! a Master's HTTP API (docs/api.md) or, for configuration edits, through a commit pushed to the
//! Master. [`connection`]: where the Master is and whose credentials to use; [`api`]: the
//! Master's routes as typed calls; [`render`]: what people read; [`edit`]: configuration
//! changes as commits pushed to the Master.

pub mod api;
pub mod connection;
pub mod edit;
pub mod render;

pub use api::{Api, ApiError};
pub use connection::{Connection, ConnectionError};
