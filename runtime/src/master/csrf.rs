//! Cross-site request refusal (docs/api.md, "Requests from browsers"). A browser that has logged in
//! to the WebAdmin page sends its cached Basic credentials with every request to the Master,
//! including requests another site's page makes it send; so a request that changes something must
//! come from the Master's own origin, or from a client that is not a browser.

use axum::http::{HeaderMap, Method, header};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    /// `Origin` or `Sec-Fetch-Site` says another site (or a sandboxed page) made the request: 403.
    #[error("cross-site requests may not change anything")]
    CrossSite,
    /// No content type, or one a form or a no-CORS `fetch` can send: 415.
    #[error(
        "a request that changes something must be sent as application/json (or git's own content types)"
    )]
    ContentType,
}

/// Content types a cross-site form or no-CORS `fetch` cannot send without the Master's consent
/// (a CORS preflight, which it never grants): JSON, and what git sends to the smart-HTTP services.
const ALLOWED: &[&str] = &[
    "application/json",
    "application/x-git-upload-pack-request",
    "application/x-git-receive-pack-request",
];

/// Whether a request may go on to its route. Reading (`GET`, `HEAD`) always may: a cross-site page
/// cannot read the answer. Anything else must not come from another site (`Sec-Fetch-Site` other
/// than `same-origin` or `none`, or an `Origin` whose host is not the request's `Host`; git,
/// `steward admin` and the servers send neither) and must carry one of [`ALLOWED`].
pub(super) fn check(method: &Method, headers: &HeaderMap) -> Result<(), Refused> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !site.eq_ignore_ascii_case("same-origin")
        && !site.eq_ignore_ascii_case("none")
    {
        return Err(Refused::CrossSite);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        // `Origin: null` (a sandboxed or file page), or one that does not parse, is not ours.
        let host = text(header::HOST).unwrap_or("");
        let ours = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
        if !ours {
            return Err(Refused::CrossSite);
        }
    }
    let essence = text(header::CONTENT_TYPE)
        .and_then(|t| t.split(';').next())
        .map(str::trim);
    match essence {
        Some(t) if ALLOWED.iter().any(|a| a.eq_ignore_ascii_case(t)) => Ok(()),
        _ => Err(Refused::ContentType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    const JSON: (&str, &str) = ("content-type", "application/json");
    const HOST: (&str, &str) = ("host", "127.0.0.1:9736");

    #[test]
    fn reads_always_pass() {
        let h = headers(&[
            HOST,
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(check(&Method::GET, &h), Ok(()));
        assert_eq!(check(&Method::HEAD, &h), Ok(()));
    }

    #[test]
    fn non_browser_clients_pass() {
        // steward admin, the servers' reports: JSON, no Origin.
        assert_eq!(check(&Method::POST, &headers(&[HOST, JSON])), Ok(()));
        // git push over HTTP.
        let push = headers(&[
            HOST,
            ("content-type", "application/x-git-receive-pack-request"),
        ]);
        assert_eq!(check(&Method::POST, &push), Ok(()));
        let fetch = headers(&[
            HOST,
            ("content-type", "application/x-git-upload-pack-request"),
        ]);
        assert_eq!(check(&Method::POST, &fetch), Ok(()));
        let charset = headers(&[HOST, ("content-type", "Application/JSON; charset=utf-8")]);
        assert_eq!(check(&Method::POST, &charset), Ok(()));
    }

    #[test]
    fn the_page_itself_passes() {
        let h = headers(&[
            HOST,
            JSON,
            ("origin", "http://127.0.0.1:9736"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(check(&Method::POST, &h), Ok(()));
    }

    #[test]
    fn other_sites_are_refused() {
        for pairs in [
            vec![HOST, JSON, ("origin", "https://evil.example")],
            // Another port of the same host is another origin (an application the servers serve).
            vec![HOST, JSON, ("origin", "http://127.0.0.1:8088")],
            vec![HOST, JSON, ("origin", "null")],
            vec![HOST, JSON, ("sec-fetch-site", "same-site")],
            vec![HOST, JSON, ("sec-fetch-site", "cross-site")],
            vec![
                HOST,
                JSON,
                ("origin", "http://127.0.0.1:9736"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert_eq!(
                check(&Method::POST, &headers(&pairs)),
                Err(Refused::CrossSite),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn simple_content_types_are_refused() {
        for t in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let h = headers(&[HOST, ("content-type", t)]);
            assert_eq!(check(&Method::POST, &h), Err(Refused::ContentType), "{t}");
        }
        assert_eq!(
            check(&Method::DELETE, &headers(&[HOST])),
            Err(Refused::ContentType)
        );
    }
}
