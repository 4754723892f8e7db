//! The WebAdmin page (docs/webadmin.md): `GET /` renders the domain and its servers on the Master,
//! `/webadmin.js` keeps them live from `/v1/events` and draws the history and plans from the API,
//! `GET /v1/me` says what the logged-in user may do. Both assets are compiled in: no build chain,
//! nothing to install beside the binary.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::routes::{AUTHENTICATED, require, unauthorized};
use super::state::State;

const SCRIPT: &str = include_str!("webadmin.js");
const STYLE: &str = include_str!("webadmin.css");

/// The permissions `user` holds, of those a role can grant (`*` spelt out).
fn permissions(domain: &schema::model::Domain, user: &str) -> Vec<&'static str> {
    schema::settings::PERMISSIONS
        .iter()
        .copied()
        .filter(|p| *p != "*" && domain.permits(user, p))
        .collect()
}

/// `GET /v1/me`: the authenticated user and its permissions. Any valid credentials may ask.
pub(super) async fn me(AxState(state): AxState<Arc<State>>) -> Response {
    let Some(user) = AUTHENTICATED.try_with(Clone::clone).ok().flatten() else {
        return unauthorized();
    };
    let c = state.current();
    axum::Json(serde_json::json!({
        "user": user,
        "permissions": permissions(&c.domain, &user),
    }))
    .into_response()
}

/// Headers every WebAdmin answer carries: its own script and style only (no inline script, so an
/// injected one would not run), never framed (clickjacking), types as sent, no referrer leaving.
fn secured(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) async fn script() -> Response {
    secured(SCRIPT.into_response(), "text/javascript; charset=utf-8")
}

pub(super) async fn style() -> Response {
    secured(STYLE.into_response(), "text/css; charset=utf-8")
}

/// `GET /`: the page, with the domain and the servers as they are now (so the list paints
/// without waiting for the script), and only the buttons the user may use.
pub(super) async fn page(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    let user = match require(&state, &headers, "domain:read").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let c = state.current();
    let may = permissions(&c.domain, &user);
    let views = may.contains(&"servers:read").then(|| {
        let timeout = c.domain.config.master.heartbeat_timeout.0;
        state.servers.list(c.domain.config.servers.keys(), timeout)
    });
    let views: Option<Vec<Value>> = views.map(|v| {
        v.iter()
            .map(|x| serde_json::to_value(x).unwrap_or(Value::Null))
            .collect()
    });
    let doc = serde_json::to_value(state.domain_doc()).unwrap_or(Value::Null);
    let clusters: Vec<(&str, &[String])> = c
        .domain
        .config
        .clusters
        .iter()
        .map(|(k, v)| (k.as_str(), v.servers.as_slice()))
        .collect();
    let html = render(&Page {
        user: &user,
        may: &may,
        domain: &doc,
        servers: views.as_deref(),
        clusters: &clusters,
    });
    secured(html.into_response(), "text/html; charset=utf-8")
}

struct Page<'a> {
    user: &'a str,
    may: &'a [&'static str],
    /// The `GET /v1/domain` document.
    domain: &'a Value,
    /// Elements of `GET /v1/servers`; `None` without `servers:read`.
    servers: Option<&'a [Value]>,
    clusters: &'a [(&'a str, &'a [String])],
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key].as_str().unwrap_or("")
}

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

fn list(v: &Value, key: &str) -> String {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The hold, as the page says it (the script says it the same way when it changes).
fn hold_text(domain: &Value) -> String {
    let h = &domain["hold"];
    if h.is_null() {
        return "not held".into();
    }
    format!(
        "held since {} by {} ({})",
        text(h, "since"),
        text(h, "by"),
        text(h, "reason")
    )
}

/// One server's row. The cells are what `fill` in webadmin.js writes when the server changes:
/// keep the two alike.
fn row(out: &mut String, v: &Value, cluster: &str, pinned: &str, control: bool) {
    let name = text(v, "name");
    let applied = text(v, "applied_commit");
    let drift = if !applied.is_empty() && applied != pinned {
        " drift"
    } else {
        ""
    };
    let state = text(v, "state");
    out.push_str(&format!(
        "<tr data-server=\"{n}\" data-applied=\"{a}\"><td class=\"name\">{n}</td>\
         <td class=\"cluster\">{cl}</td><td class=\"state s-{st}\">{st}</td>\
         <td class=\"mode\">{mode}</td><td class=\"applied{drift}\" title=\"{a}\">{sa}</td>\
         <td class=\"pending\">{pending}</td><td class=\"failed\">{failed}</td>\
         <td class=\"error\">{error}</td><td class=\"actions\">",
        n = esc(name),
        a = esc(applied),
        cl = esc(cluster),
        st = esc(state),
        mode = esc(text(v, "mode")),
        sa = esc(short(applied)),
        pending = esc(&list(v, "pending_restart")),
        failed = esc(&list(v, "failed_applications")),
        error = esc(text(v, "last_error")),
    ));
    if control {
        out.push_str(&format!(
            "<button type=\"button\" class=\"restart\" data-server=\"{}\">Restart</button>",
            esc(name)
        ));
    }
    out.push_str("</td></tr>\n");
}

fn render(p: &Page<'_>) -> String {
    let may = |perm: &str| p.may.contains(&perm);
    let name = text(p.domain, "name");
    let pinned = text(&p.domain["pinned"], "commit");
    let mode = text(p.domain, "mode");
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{n} — Steward</title><link rel=\"stylesheet\" href=\"/webadmin.css\">\
         <script src=\"/webadmin.js\" defer></script></head>\n\
         <body data-pinned=\"{pin}\" data-mode=\"{mode}\" data-user=\"{u}\" \
         data-permissions=\"{perms}\">\n\
         <header><h1>Steward <span id=\"domain-name\">{n}</span></h1>\
         <span id=\"live\" class=\"live off\">connecting…</span>\
         <span id=\"user\">{u}</span></header>\n<main>\n\
         <p id=\"message\" role=\"status\"></p>\n\
         <section id=\"domain\"><h2>Domain</h2><dl>\
         <dt>Pinned commit</dt><dd><code id=\"pinned\" title=\"{pin}\">{spin}</code> \
         <span id=\"pinned-at\">{at}</span></dd>\
         <dt>Repository</dt><dd id=\"mode\">{mode}{upstream}</dd>\
         <dt>Hold</dt><dd id=\"hold\">{hold}</dd></dl>\n",
        n = esc(name),
        pin = esc(pinned),
        spin = esc(short(pinned)),
        at = esc(text(&p.domain["pinned"], "at")),
        mode = esc(mode),
        u = esc(p.user),
        perms = esc(&p.may.join(" ")),
        upstream = match p.domain["upstream"].is_object() {
            true => format!(
                " of <code>{}</code> ({})",
                esc(text(&p.domain["upstream"], "url")),
                esc(text(&p.domain["upstream"], "branch"))
            ),
            false => String::new(),
        },
        hold = esc(&hold_text(p.domain)),
    );
    if may("domain:pin") && mode == "mirror" {
        out.push_str(
            "<p class=\"actions\"><button type=\"button\" id=\"hold-button\">Hold</button> \
             <button type=\"button\" id=\"resume-button\">Resume</button></p>\n",
        );
    }
    out.push_str("</section>\n<section id=\"servers\"><h2>Servers</h2>\n");
    let control = may("servers:control");
    match p.servers {
        None => out.push_str(
            "<p>You may not see the servers (permission <code>servers:read</code>).</p>\n",
        ),
        Some(views) => {
            if control {
                out.push_str("<p class=\"actions\"><button type=\"button\" id=\"restart-pending\">Restart pending servers (rolling)</button>");
                for (c, _) in p.clusters {
                    out.push_str(&format!(
                        " <button type=\"button\" class=\"restart-cluster\" data-cluster=\"{c}\">Restart cluster {c} (rolling)</button>",
                        c = esc(c)
                    ));
                }
                out.push_str("</p>\n");
            }
            out.push_str(
                "<table><thead><tr><th>Server</th><th>Cluster</th><th>State</th><th>Mode</th>\
                 <th>Applied commit</th><th>Pending restart</th><th>Failed applications</th>\
                 <th>Last error</th><th></th></tr></thead>\n<tbody id=\"server-rows\">\n",
            );
            for v in views {
                let server = text(v, "name");
                let cluster = p
                    .clusters
                    .iter()
                    .find(|(_, members)| members.iter().any(|m| m == server))
                    .map_or("", |(c, _)| c);
                row(&mut out, v, cluster, pinned, control);
            }
            out.push_str("</tbody></table>\n");
        }
    }
    if p.servers.is_some() {
        // Filled by the script from `GET /v1/timers` (the Master asks the servers for them).
        out.push_str(
            "</section>\n<section id=\"timers\"><h2>Timers</h2>\
             <p class=\"actions\"><button type=\"button\" id=\"timers-reload\">Reload timers</button> \
             <span id=\"timers-note\"></span></p><div id=\"timer-tables\"></div>\n",
        );
    }
    out.push_str(
        "</section>\n<section id=\"history\"><h2>History</h2><ol id=\"history-list\"></ol></section>\n\
         <section id=\"plan\" hidden><h2>Commit <code id=\"plan-commit\"></code></h2>\
         <pre id=\"plan-text\"></pre></section>\n</main></body></html>\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(may: &[&'static str], servers: Option<&[Value]>) -> String {
        page_of(
            json!({
                "name": "d<1>",
                "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "2026-11-24T05:19:52Z" },
                "mode": "hosted",
                "upstream": null,
                "hold": null,
            }),
            may,
            servers,
        )
    }

    fn page_of(domain: Value, may: &[&'static str], servers: Option<&[Value]>) -> String {
        let members = vec!["server1".to_owned()];
        render(&Page {
            user: "admin",
            may,
            domain: &domain,
            servers,
            clusters: &[("cluster1", &members)],
        })
    }

    fn server() -> Value {
        json!({
            "name": "server1", "state": "RUNNING", "mode": "DEPENDENT",
            "applied_commit": "5027355f00000000000000000000000000000000",
            "pending_restart": ["servers.server1.jvm"], "failed_applications": [],
            "last_error": "<script>alert(1)</script>",
        })
    }

    #[test]
    fn renders_servers_escaped_with_their_drift() {
        let s = [server()];
        let html = page(&["domain:read", "servers:read"], Some(&s));
        assert!(html.contains("d&lt;1&gt;"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("class=\"applied drift\""), "{html}");
        assert!(html.contains(">5027355<"));
        assert!(html.contains("<td class=\"cluster\">cluster1</td>"));
        assert!(html.contains("servers.server1.jvm"));
    }

    #[test]
    fn buttons_follow_permissions() {
        let s = [server()];
        let viewer = page(&["domain:read", "servers:read", "events:read"], Some(&s));
        // Reading only: reloading the timers is the one button.
        assert_eq!(viewer.matches("<button").count(), 1, "{viewer}");
        assert!(viewer.contains("id=\"timers-reload\""), "{viewer}");
        let operator = page(
            &["domain:read", "servers:read", "servers:control"],
            Some(&s),
        );
        assert!(operator.contains("class=\"restart\" data-server=\"server1\""));
        assert!(operator.contains("data-cluster=\"cluster1\""));
        assert!(
            !operator.contains("hold-button"),
            "hosted mode has nothing to hold"
        );
        assert!(viewer.contains("id=\"timer-tables\""), "{viewer}");
        let blind = page(&["domain:read"], None);
        assert!(blind.contains("servers:read"));
        assert!(!blind.contains("<table"));
        assert!(!blind.contains("timer-tables"));
    }

    #[test]
    fn a_held_mirror_says_so_and_offers_resume_to_pinners() {
        let domain = json!({
            "name": "d1",
            "pinned": { "commit": "a4139862fb20bcc2958eb7cc8479a8007dbbb8d5", "at": "" },
            "mode": "mirror",
            "upstream": { "url": "https://git.example/d.git", "branch": "main" },
            "hold": { "since": "2026-11-24T05:19:52Z", "by": "alice", "reason": "rollback" },
        });
        let html = page_of(domain.clone(), &["domain:read", "domain:pin"], None);
        assert!(html.contains("held since 2026-11-24T05:19:52Z by alice (rollback)"));
        assert!(html.contains("id=\"hold-button\"") && html.contains("id=\"resume-button\""));
        assert!(html.contains("<code>https://git.example/d.git</code> (main)"));
        let viewer = page_of(domain, &["domain:read"], None);
        assert!(!viewer.contains("resume-button"));
    }
}
