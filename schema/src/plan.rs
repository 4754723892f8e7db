//! The planner: a pure function from two revisions to what each server must do. `steward diff`
//! prints it; the Managed Server applies its own part of it (live now, redeploy one application,
//! report restart-pending). Pending restarts are always derived from a plan, never stored.
//!
//! Longer than most files: the plan's types, its decisions (changes, restarts and who performs
//! them, server-account warnings) and its three renderers stay together, so a new field cannot
//! reach one format and miss the others.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Loaded;
use crate::model::{Domain, RestartPolicy};
use crate::settings::{self, Effect, FileKind};

/// One changed setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Concrete path, e.g. `servers.server1.web.listeners.http.port`.
    pub path: String,
    pub file: &'static str,
    /// Old value as TOML would show it; `None` when added. Secrets are never carried.
    pub old: Option<String>,
    pub new: Option<String>,
    pub effect: Effect,
    pub secret: bool,
    /// `old → new` as [`Change::describe`] says it (`(secret changed)` for secrets).
    pub change: String,
}

impl Change {
    /// `old → new`, or `(secret changed)`.
    pub fn describe(&self) -> String {
        if self.secret {
            return match (&self.old, &self.new) {
                (None, _) => "(secret set)".into(),
                (_, None) => "(secret removed)".into(),
                _ => "(secret changed)".into(),
            };
        }
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => format!("{o} → {n}"),
            (None, Some(n)) => format!("(unset) → {n}"),
            (Some(o), None) => format!("{o} → (unset)"),
            (None, None) => String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerState {
    /// New in this revision: start it.
    Added,
    /// Gone from this revision: stop it.
    Removed,
    Changed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppAction {
    Deploy,
    Undeploy,
    Redeploy,
    /// Live changes only (context path, index, …): applied without redeploying.
    Update,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppPlan {
    pub name: String,
    pub action: AppAction,
    pub reasons: Vec<String>,
    pub changes: Vec<Change>,
}

impl AppPlan {
    fn new(name: &str, action: AppAction) -> AppPlan {
        AppPlan {
            name: name.to_owned(),
            action,
            reasons: Vec::new(),
            changes: Vec::new(),
        }
    }
}

/// Who restarts a server that needs it, from its `restart-policy` in the proposed revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    /// For `rolling`: the cluster whose members the Master restarts one at a time (`None`: the
    /// server is in no cluster and is restarted on its own).
    pub cluster: Option<String>,
    /// What will happen, in words (as the human and markdown plans say it).
    pub description: String,
}

impl std::fmt::Display for Restart {
    /// `restarted by the Master, one at a time in cluster cluster1 (rolling)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let policy = match self.policy {
            RestartPolicy::Auto => "auto",
            RestartPolicy::Rolling => "rolling",
            RestartPolicy::Manual => "manual",
        };
        write!(f, "{} ({policy})", self.description)
    }
}

impl Restart {
    fn new(domain: &Domain, server: &str) -> Restart {
        let policy = domain
            .config
            .servers
            .get(server)
            .map_or(RestartPolicy::Manual, |s| s.restart_policy);
        // The same group the Master's rolling restarts use: the first cluster naming the server.
        let cluster = (policy == RestartPolicy::Rolling)
            .then(|| domain.cluster_of(server).map(str::to_owned))
            .flatten();
        let description = match (policy, &cluster) {
            (RestartPolicy::Auto, _) => "restarts on apply".into(),
            (RestartPolicy::Rolling, Some(c)) => {
                format!("restarted by the Master, one at a time in cluster {c}")
            }
            (RestartPolicy::Rolling, None) => {
                "restarted by the Master, on its own (in no cluster)".into()
            }
            (RestartPolicy::Manual, _) => "waits for an operator to restart it".into(),
        };
        Restart {
            policy,
            cluster,
            description,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerPlan {
    pub name: String,
    pub state: ServerState,
    pub changes: Vec<Change>,
    pub applications: Vec<AppPlan>,
    /// Paths of the changed settings that need this server restarted.
    pub pending_restart: Vec<String>,
    /// Who restarts it and when; `None` when no restart is needed.
    pub restart: Option<Restart>,
}

impl ServerPlan {
    pub fn needs_restart(&self) -> bool {
        !self.pending_restart.is_empty()
    }
}

/// The permissions a Managed Server's account needs to stay in contact with the Master: its
/// register and heartbeat routes check `servers:register` (the one that marks an account servers
/// may sign in with), its launcher's `GET /v1/domain` `domain:read`, the Git fetch `git:read`,
/// its event stream `events:read`.
pub const SERVER_PERMISSIONS: [&str; 4] =
    ["servers:register", "domain:read", "git:read", "events:read"];

/// An account servers may sign in with (it holds `servers:register`) that the change
/// takes away or changes: servers using it would be refused by the Master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountWarning {
    pub account: String,
    /// What changed: `removed`, `password changed`, `no longer holds servers:register`.
    pub reasons: Vec<String>,
    /// The servers of the proposed revision: which of them sign in as this account is known only
    /// to their launchers, so every one of them may be cut off.
    pub servers: Vec<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub from: String,
    pub to: String,
    /// Which revision the plan starts from and why (`the pinned commit (refs/…)`, `the parent of
    /// HEAD`); set by the caller that chose it, `None` when it did not say.
    pub base: Option<String>,
    /// Servers with anything to do, in name order.
    pub servers: Vec<ServerPlan>,
    /// `[master]` changes.
    pub master: Vec<Change>,
    /// Domain-wide changes: `[domain]`, clusters, security.
    pub domain: Vec<Change>,
    /// Accounts servers may use that this change removes or changes.
    pub warnings: Vec<AccountWarning>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.master.is_empty() && self.domain.is_empty()
    }

    /// The header's first line(s): the two revisions, and where the first came from.
    fn header(&self, markdown: bool) -> String {
        let mut out = if markdown {
            format!("### Steward plan `{}` → `{}`\n", self.from, self.to)
        } else {
            format!("Plan {} → {}\n", self.from, self.to)
        };
        if let Some(base) = &self.base {
            let _ = writeln!(
                out,
                "{}Compared with {base}.",
                if markdown { "\n" } else { "" }
            );
        }
        out
    }

    /// Servers that need a restart, by name.
    pub fn restarts(&self) -> Vec<&str> {
        self.servers
            .iter()
            .filter(|s| s.needs_restart())
            .map(|s| s.name.as_str())
            .collect()
    }

    pub fn master_restart(&self) -> bool {
        self.master.iter().any(|c| c.effect == Effect::Restart)
    }

    /// This server's part of the plan, if it has anything to do.
    pub fn server(&self, name: &str) -> Option<&ServerPlan> {
        self.servers.iter().find(|s| s.name == name)
    }

    fn count_apps(&self, action: AppAction) -> usize {
        self.servers
            .iter()
            .flat_map(|s| &s.applications)
            .filter(|a| a.action == action)
            .count()
    }

    /// One line: what the change does to the domain.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "No changes.".into();
        }
        let restarts = self.restarts();
        // Servers an account change may cut off are affected too, settings unchanged or not.
        let affected: BTreeSet<&str> = self
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .chain(
                self.warnings
                    .iter()
                    .flat_map(|w| w.servers.iter().map(String::as_str)),
            )
            .collect();
        let mut parts = vec![format!(
            "{} server{} affected",
            affected.len(),
            if affected.len() == 1 { "" } else { "s" }
        )];
        parts.push(match restarts.len() {
            0 => "no restart needed".into(),
            n => format!(
                "{n} need{} a restart ({})",
                if n == 1 { "s" } else { "" },
                restarts.join(", ")
            ),
        });
        let mut apps = Vec::new();
        for (action, word) in [
            (AppAction::Redeploy, "to redeploy"),
            (AppAction::Deploy, "to deploy"),
            (AppAction::Undeploy, "to undeploy"),
            (AppAction::Update, "updated live"),
        ] {
            let n = self.count_apps(action);
            if n > 0 {
                apps.push(format!("{n} {word}"));
            }
        }
        if !apps.is_empty() {
            parts.push(format!("application deployments: {}", apps.join(", ")));
        }
        if self.master_restart() {
            parts.push("the Master needs a restart".into());
        }
        for w in &self.warnings {
            parts.push(format!(
                "servers signing in as `{}` would lose contact with the Master ({})",
                w.account,
                w.reasons.join(", ")
            ));
        }
        format!("{}.", parts.join("; "))
    }

    /// The plan as an operator reads it in a terminal.
    pub fn render_human(&self) -> String {
        self.render_text(false)
    }

    /// The plan as `steward admin` prints it before a change: each change and application marked
    /// `[LIVE]`, `[REDEPLOY]` or `[RESTART]` (jeusadmin's `[DYNAMIC]`).
    pub fn render_marked(&self) -> String {
        self.render_text(true)
    }

    fn render_text(&self, marked: bool) -> String {
        let mark = |e: Effect| {
            if marked {
                e.as_str().to_ascii_uppercase()
            } else {
                e.as_str().to_owned()
            }
        };
        let mut out = self.header(false);
        for w in &self.warnings {
            let _ = writeln!(out, "\nWarning: {}", w.message);
        }
        for s in &self.servers {
            let state = match (s.state, &s.restart) {
                (ServerState::Added, _) => " (new server: start it)".into(),
                (ServerState::Removed, _) => " (removed: stop it)".into(),
                (ServerState::Changed, Some(r)) => format!(" (restart required: {r})"),
                (ServerState::Changed, None) => String::new(),
            };
            let _ = writeln!(out, "\nserver {}{state}", s.name);
            for c in &s.changes {
                let _ = writeln!(
                    out,
                    "  ~ {}  {}  [{}]",
                    c.path,
                    c.describe(),
                    mark(c.effect)
                );
            }
            for a in &s.applications {
                let verb = match a.action {
                    AppAction::Deploy => "+ deploy",
                    AppAction::Undeploy => "- undeploy",
                    AppAction::Redeploy => "~ redeploy",
                    AppAction::Update => "~ update",
                };
                let why = if a.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", a.reasons.join("; "))
                };
                let app_mark = match (marked, a.action) {
                    (false, _) => String::new(),
                    (true, AppAction::Update) => "  [LIVE]".into(),
                    (true, _) => "  [REDEPLOY]".into(),
                };
                let _ = writeln!(out, "  {verb} application {}{why}{app_mark}", a.name);
                for c in &a.changes {
                    let _ = writeln!(
                        out,
                        "      {}  {}  [{}]",
                        c.path,
                        c.describe(),
                        mark(c.effect)
                    );
                }
            }
        }
        for (title, changes) in [("master", &self.master), ("domain", &self.domain)] {
            if changes.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title}");
            for c in changes {
                let _ = writeln!(
                    out,
                    "  ~ {}  {}  [{}]",
                    c.path,
                    c.describe(),
                    mark(c.effect)
                );
            }
        }
        let restarts = self.restarts();
        if !restarts.is_empty() {
            let _ = writeln!(out, "\nRestart required:");
            for s in &self.servers {
                if let Some(r) = &s.restart {
                    let _ = writeln!(out, "  {}: {r}", s.name);
                }
            }
        }
        let _ = writeln!(out, "\n{}", self.summary());
        out
    }

    /// The plan as a pull-request comment.
    pub fn render_markdown(&self) -> String {
        let mut out = self.header(true);
        let _ = writeln!(out, "\n**{}**", self.summary());
        for w in &self.warnings {
            let _ = writeln!(out, "\n:warning: **Warning:** {}", w.message);
        }
        let restarts = self.restarts();
        if !restarts.is_empty() {
            let _ = writeln!(out, "\n:warning: Restart required:\n");
            for s in &self.servers {
                if let Some(r) = &s.restart {
                    let _ = writeln!(out, "- `{}`: {r}", s.name);
                }
            }
        }
        let row = |out: &mut String, c: &Change| {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                c.path,
                c.describe().replace('|', "\\|"),
                c.effect
            );
        };
        for s in &self.servers {
            let state = match (s.state, &s.restart) {
                (ServerState::Added, _) => " — new server".into(),
                (ServerState::Removed, _) => " — removed".into(),
                (ServerState::Changed, Some(r)) => format!(" — restart required: {r}"),
                (ServerState::Changed, None) => String::new(),
            };
            let _ = writeln!(out, "\n#### Server `{}`{state}\n", s.name);
            let app_changes: Vec<&Change> =
                s.applications.iter().flat_map(|a| &a.changes).collect();
            if !s.changes.is_empty() || !app_changes.is_empty() {
                out.push_str("| setting | change | effect |\n|---|---|---|\n");
                for c in s.changes.iter().chain(app_changes) {
                    row(&mut out, c);
                }
            }
            for a in &s.applications {
                let why = if a.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", a.reasons.join("; "))
                };
                let action = serde_json::to_value(a.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = writeln!(out, "- {action} `{}`{why}", a.name);
            }
        }
        for (title, changes) in [("Master", &self.master), ("Domain", &self.domain)] {
            if changes.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "\n#### {title}\n\n| setting | change | effect |\n|---|---|---|"
            );
            for c in changes {
                row(&mut out, c);
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "format_version": crate::diag::FORMAT_VERSION,
            "from": self.from,
            "to": self.to,
            "base": self.base,
            "summary": self.summary(),
            "warnings": self.warnings,
            "restart": self.restarts(),
            "master_restart": self.master_restart(),
            "servers": self.servers,
            "master": self.master,
            "domain": self.domain,
        })
    }
}

/// Flattens a serialized value into `path → value` leaves. Arrays are leaves.
pub fn flatten(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

fn leaves<T: Serialize>(prefix: &str, v: Option<&T>) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    if let Some(v) = v {
        // Serializing the model's own types cannot fail: no maps with non-string keys.
        if let Ok(json) = serde_json::to_value(v) {
            flatten(prefix, &json, &mut out);
        }
    }
    out
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// The changed leaves between two values of one entity, classified by the table.
fn changes<T: Serialize + PartialEq>(
    file: FileKind,
    prefix: &str,
    old: Option<&T>,
    new: Option<&T>,
) -> Vec<Change> {
    if old == new {
        return Vec::new();
    }
    let (a, b) = (leaves(prefix, old), leaves(prefix, new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (o, n) = (a.get(k), b.get(k));
        if o == n {
            continue;
        }
        let setting = settings::lookup(file, k);
        let secret = setting.is_some_and(|s| s.secret);
        let mut change = Change {
            path: k.clone(),
            file: file.path(),
            old: if secret {
                o.map(|_| "(secret)".into())
            } else {
                o.map(show)
            },
            new: if secret {
                n.map(|_| "(secret)".into())
            } else {
                n.map(show)
            },
            // An unclassified path cannot exist (a test walks every leaf); restart is the safe answer.
            effect: setting.map_or(Effect::Restart, |s| s.effect),
            secret,
            change: String::new(),
        };
        change.change = change.describe();
        out.push(change);
    }
    out
}

fn app_plan(old: &Loaded, new: &Loaded, name: &str) -> Option<AppPlan> {
    let (oa, na) = (
        &old.domain.config.applications[name],
        &new.domain.config.applications[name],
    );
    // Targets decide where an application runs, not how: that shows as deploy/undeploy.
    let mut changes: Vec<Change> = changes(
        FileKind::Domain,
        &format!("applications.{name}"),
        Some(oa),
        Some(na),
    )
    .into_iter()
    .filter(|c| !c.path.ends_with(".targets") && !c.path.ends_with(".description"))
    .collect();
    let mut reasons = Vec::new();
    if old.content.get(name) != new.content.get(name) {
        reasons.push(format!("content of `{}` changed", na.source));
    }
    let redeploy = changes.iter().any(|c| c.effect >= Effect::Redeploy);
    if redeploy {
        let keys: Vec<String> = changes
            .iter()
            .filter(|c| c.effect >= Effect::Redeploy)
            .map(|c| {
                c.path
                    .strip_prefix(&format!("applications.{name}."))
                    .unwrap_or(&c.path)
                    .to_owned()
            })
            .collect();
        reasons.push(format!("changed: {}", keys.join(", ")));
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    let action = if !reasons.is_empty() {
        AppAction::Redeploy
    } else if !changes.is_empty() {
        AppAction::Update
    } else {
        return None;
    };
    Some(AppPlan {
        name: name.to_owned(),
        action,
        reasons,
        changes,
    })
}

/// Each server's application actions, in application-name order. Walks applications once: an
/// application whose servers, settings and content are unchanged costs one comparison however
/// many servers run it; only changed ones touch their servers.
fn app_actions(old: &Loaded, new: &Loaded) -> crate::fasthash::FastMap<String, Vec<AppPlan>> {
    use std::cmp::Ordering;
    let (oa, na) = (
        &old.domain.config.applications,
        &new.domain.config.applications,
    );
    let names: BTreeSet<&String> = oa.keys().chain(na.keys()).collect();
    let mut out: crate::fasthash::FastMap<String, Vec<AppPlan>> = Default::default();
    for name in names {
        let os = oa
            .get(name)
            .map_or_else(Vec::new, |a| old.domain.app_servers(a));
        let ns = na
            .get(name)
            .map_or_else(Vec::new, |a| new.domain.app_servers(a));
        if os == ns
            && oa.get(name) == na.get(name)
            && old.content.get(name) == new.content.get(name)
        {
            continue;
        }
        let settled = if os.is_empty() || ns.is_empty() {
            None
        } else {
            app_plan(old, new, name)
        };
        // Both server lists are sorted: walk them together.
        let (mut i, mut j) = (0, 0);
        while i < os.len() || j < ns.len() {
            let order = match (os.get(i), ns.get(j)) {
                (Some(o), Some(n)) => o.cmp(n),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            let (server, action) = match order {
                Ordering::Less => {
                    i += 1;
                    (os[i - 1], Some(AppPlan::new(name, AppAction::Undeploy)))
                }
                Ordering::Greater => {
                    j += 1;
                    (ns[j - 1], Some(AppPlan::new(name, AppAction::Deploy)))
                }
                Ordering::Equal => {
                    i += 1;
                    j += 1;
                    (os[i - 1], settled.clone())
                }
            };
            if let Some(action) = action {
                out.entry(server.to_owned()).or_default().push(action);
            }
        }
    }
    out
}

/// Computes what moving from `old` (`None`: an empty domain) to `new` takes, per server.
pub fn plan(old: Option<&Loaded>, new: &Loaded) -> Plan {
    let empty;
    let old = match old {
        Some(o) => o,
        None => {
            empty = Loaded {
                domain: Domain::default(),
                spans: Default::default(),
                content: BTreeMap::new(),
                revision: "(nothing)".into(),
            };
            &empty
        }
    };
    let (od, nd) = (&old.domain.config, &new.domain.config);
    let app_actions = app_actions(old, new);
    let names: BTreeSet<&String> = od.servers.keys().chain(nd.servers.keys()).collect();
    let mut servers = Vec::new();
    for name in names {
        let (os, ns) = (od.servers.get(name), nd.servers.get(name));
        let state = match (os, ns) {
            (None, _) => ServerState::Added,
            (_, None) => ServerState::Removed,
            _ => ServerState::Changed,
        };
        let changes = if state == ServerState::Changed {
            changes(FileKind::Domain, &format!("servers.{name}"), os, ns)
        } else {
            Vec::new()
        };
        let applications = app_actions.get(name.as_str()).cloned().unwrap_or_default();
        let pending_restart: Vec<String> = changes
            .iter()
            .filter(|c| c.effect == Effect::Restart)
            .map(|c| c.path.clone())
            .collect();
        let restart = (!pending_restart.is_empty()).then(|| Restart::new(&new.domain, name));
        if state != ServerState::Changed || !changes.is_empty() || !applications.is_empty() {
            servers.push(ServerPlan {
                name: name.clone(),
                state,
                changes,
                applications,
                pending_restart,
                restart,
            });
        }
    }
    let master = changes(
        FileKind::Domain,
        "master",
        Some(&od.master),
        Some(&nd.master),
    );
    let mut domain = changes(
        FileKind::Domain,
        "domain",
        Some(&od.domain),
        Some(&nd.domain),
    );
    domain.extend(changes(
        FileKind::Domain,
        "nodes",
        Some(&od.nodes),
        Some(&nd.nodes),
    ));
    domain.extend(changes(
        FileKind::Domain,
        "clusters",
        Some(&od.clusters),
        Some(&nd.clusters),
    ));
    let (oacc, nacc) = (&old.domain.accounts, &new.domain.accounts);
    domain.extend(changes(FileKind::Accounts, "", Some(oacc), Some(nacc)));
    domain.extend(changes(
        FileKind::Policies,
        "",
        Some(&old.domain.policies),
        Some(&new.domain.policies),
    ));
    Plan {
        from: old.revision.clone(),
        to: new.revision.clone(),
        base: None,
        servers,
        master,
        domain,
        warnings: account_warnings(&old.domain, &new.domain),
    }
}

/// Accounts that hold `servers:register` in `old` (so servers may sign in with them)
/// and that `new` removes, gives another password, or no longer grants one of
/// [`SERVER_PERMISSIONS`] it held. Servers
/// authenticate at every heartbeat, so such a change cuts them off within a heartbeat timeout.
pub fn account_warnings(old: &Domain, new: &Domain) -> Vec<AccountWarning> {
    let servers: Vec<String> = new.config.servers.keys().cloned().collect();
    if servers.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (name, user) in &old.accounts.users {
        if !old.permits(name, SERVER_PERMISSIONS[0]) {
            continue;
        }
        let reasons: Vec<String> = match new.accounts.users.get(name) {
            None => vec!["removed".into()],
            Some(now) => {
                let mut r = Vec::new();
                if now.password != user.password {
                    r.push("password changed".into());
                }
                let lost: Vec<&str> = SERVER_PERMISSIONS
                    .iter()
                    .copied()
                    .filter(|p| old.permits(name, p) && !new.permits(name, p))
                    .collect();
                if !lost.is_empty() {
                    r.push(format!("no longer holds {}", lost.join(", ")));
                }
                r
            }
        };
        if reasons.is_empty() {
            continue;
        }
        let message = format!(
            "account `{name}` can sign servers in to the Master and this change affects it ({}): \
             servers signing in as `{name}` would lose contact with the Master ({}). Give them \
             new credentials first, or keep the account as it is.",
            reasons.join(", "),
            servers.join(", ")
        );
        out.push(AccountWarning {
            account: name.clone(),
            reasons,
            servers: servers.clone(),
            message,
        });
    }
    out
}
