//! Stop requests (SIGINT, SIGTERM) for processes that wait in a loop: the attached launcher
//! (`start-server --verbose`) and `steward up`. The handler only records the request; the loop
//! acts on it, so the stop is orderly.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP_ASKED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only async-signal-safe work here: remember, and let the wait loop act.
    STOP_ASKED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`stop_requested`] instead of ending the process.
pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install`].
pub fn stop_requested() -> bool {
    STOP_ASKED.load(Ordering::SeqCst)
}
