//! Steward end to end, one test binary (as cargo's own testsuite): the built `steward` run as an
//! operator runs it, real `git`, real processes, real sockets on 127.0.0.1. One module per area;
//! `util` holds what they share.

// A test that cannot go on panics with what failed; that is its report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod action;
mod admin;
mod admin_edit;
mod admin_timers;
mod components;
mod diff;
mod docs;
mod hardening;
mod hook;
mod launcher;
mod managed_server;
mod master;
mod messaging;
mod metrics;
mod node;
mod serving;
mod up;
mod util;
mod validate;
mod webadmin;
