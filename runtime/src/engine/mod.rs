//! The Managed Server's engines. Engines always run, with defaults when not configured (the seed:
//! "engines are always started"); each takes its part of the server's configuration and applies
//! later changes to it live.

pub mod component;
pub mod messaging;
pub mod web;
