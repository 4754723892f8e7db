//! Steward's runtime: the launcher (`steward start-server`, `stop-server`), the Managed Server
//! process (`steward server`), and what they share: the SERVER_HOME layout, log files, the
//! sd_notify protocol, and pid handling.

pub mod admin;
pub mod auth;
pub mod background;
pub mod client;
pub mod clock;
pub mod control;
pub mod deploy;
pub mod engine;
pub mod launcher;
pub mod layout;
pub mod logfile;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod process;
pub mod server;
pub mod server_metrics;
pub mod serving;
pub mod signals;
pub mod up;
