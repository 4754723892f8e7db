//! Steward's Git side: reading commits and working trees, and the Git server hook.

pub mod cache;
pub mod git;
pub mod hook;
pub mod init;
pub mod master;
pub mod pin;
pub mod time;
pub mod tls;
