//! Routing: the snapshot every request reads (routes by longest context path, per-listener
//! limits, access-log settings), swapped whole by `apply`.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use schema::model::AccessLog as AccessLogSettings;

use super::files::StaticApp;
use super::proxy::ProcessApp;

/// Per listener: what its requests read from the snapshot.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub(super) queue_timeout: Duration,
    pub(super) request_timeout: Duration,
}

#[derive(Debug)]
pub(super) enum Handler {
    Static(Arc<StaticApp>),
    Process(Arc<ProcessApp>),
}

#[derive(Debug)]
pub(super) struct Route {
    pub(super) context: String,
    /// `context` as an `X-Forwarded-Prefix` value, built once.
    pub(super) prefix: HeaderValue,
    pub(super) app: String,
    pub(super) handler: Handler,
    /// The application's request counters (the same across applies).
    pub(super) stats: Arc<super::stats::AppStats>,
}

/// Everything a request reads, swapped whole by `apply`.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// Longest context path first.
    pub(super) routes: Vec<Route>,
    /// Every process and component application, routed or not, by name.
    pub(super) procs: std::collections::BTreeMap<String, Arc<ProcessApp>>,
    pub(super) limits: Vec<Limits>,
    pub(super) access_log: AccessLogSettings,
}

/// `/shop/` → `/shop`; `""` → `/`.
pub(super) fn normalize_context(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

/// Whether `path` is under `context` (segment-wise: `/shop` covers `/shop` and `/shop/x`, not
/// `/shopping`).
pub(super) fn under(path: &str, context: &str) -> bool {
    context == "/"
        || (path.starts_with(context)
            && matches!(path.as_bytes().get(context.len()), None | Some(b'/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_paths_match_by_segment() {
        assert!(under("/shop", "/shop"));
        assert!(under("/shop/x", "/shop"));
        assert!(!under("/shopping", "/shop"));
        assert!(under("/anything", "/"));
        assert_eq!(normalize_context("/shop/"), "/shop");
        assert_eq!(normalize_context(""), "/");
    }
}
