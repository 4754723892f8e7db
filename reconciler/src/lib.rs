//! Steward's Git side and its decisions: reading commits and working trees, pins, the cache, the
//! Git server hook, and the pure deciders the Master and the servers act on; the wire API they share.

pub mod cache;
pub mod commit_plan;
pub mod control;
pub mod decide;
pub mod git;
pub mod hold;
pub mod hook;
pub mod init;
pub mod pin;
pub mod resync;
pub mod rolling;
pub mod rollout;
pub mod supervise;
pub mod time;
pub mod timer;
pub mod tls;
pub mod wire;
pub mod workclone;
