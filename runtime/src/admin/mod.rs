//! `steward admin`, the console tool (jeusadmin's counterpart): everything it does goes through
//! a Master's HTTP API (docs/api.md) or, for configuration edits, through a commit pushed to the
//! Master. This module holds what every admin command shares: where the Master is and whose
//! credentials to use.

pub mod connection;

pub use connection::{Connection, ConnectionError};
