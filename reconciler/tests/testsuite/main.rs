//! The reconciler crate's integration tests, one binary (as cargo's own testsuite): reading real
//! repositories made by the `git` binary, and the server hook run by a real `git push`.

mod git;
mod hook;
mod util;
