//! Semantic checks on a typed revision: references, conflicts, and what the files must contain
//! together. They run on everything that parsed and matched the schema; what did not is a
//! [`Holes`] entry, and no check reports what a hole could explain (an application targeting a
//! server whose table has an error is not "targeting an unknown server").
//!
//! Long because each cross-file rule is a function here, sharing the one [`Checker`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::fasthash::FastMap;
use std::net::IpAddr;
use std::ops::Range;

use crate::diag::{Problem, Problems, Severity};
use crate::load::Spans;
use crate::model::{AppKind, Domain};
use crate::settings::FileKind;
use crate::tree::{EntryKind, Tree};

const D: FileKind = FileKind::Domain;
const A: FileKind = FileKind::Accounts;

/// Archive suffixes an application source may have.
pub const ARCHIVES: &[&str] = &[".tar", ".tar.gz", ".tgz", ".zip"];

/// What the typed model lacks because it had problems: whole files, top-level sections, and
/// named items of sections (`servers.s1`).
#[derive(Debug, Default)]
pub struct Holes {
    files: Vec<FileKind>,
    entities: Vec<(FileKind, String, Option<String>)>,
}

impl Holes {
    pub(crate) fn file(&mut self, f: FileKind) {
        if !self.files.contains(&f) {
            self.files.push(f);
        }
    }

    /// The file parsed: only its [`Holes::entity`] entries are unknown.
    pub(crate) fn parsed(&mut self, f: FileKind) {
        self.files.retain(|x| *x != f);
    }

    pub(crate) fn entity(&mut self, f: FileKind, section: &str, name: Option<&str>) {
        self.entities
            .push((f, section.to_owned(), name.map(str::to_owned)));
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.entities.is_empty()
    }

    /// Nothing of the section is known.
    fn section(&self, f: FileKind, section: &str) -> bool {
        self.files.contains(&f)
            || self
                .entities
                .iter()
                .any(|(x, s, n)| *x == f && s == section && n.is_none())
    }

    /// The named item of the section may exist though the model lacks it.
    fn named(&self, f: FileKind, section: &str, name: &str) -> bool {
        self.section(f, section)
            || self
                .entities
                .iter()
                .any(|(x, s, n)| *x == f && s == section && n.as_deref() == Some(name))
    }

    /// Names of the section's items the model lacks, for "did you mean" hints.
    fn names<'a>(&'a self, f: FileKind, section: &'a str) -> impl Iterator<Item = &'a String> {
        self.entities
            .iter()
            .filter(move |(x, s, _)| *x == f && s == section)
            .filter_map(|(_, _, n)| n.as_ref())
    }

    /// Some item of the section may be missing from the model.
    fn partial(&self, f: FileKind, section: &str) -> bool {
        self.files.contains(&f)
            || self
                .entities
                .iter()
                .any(|(x, s, _)| *x == f && s == section)
    }
}

struct Checker<'a> {
    domain: &'a Domain,
    holes: &'a Holes,
    spans: &'a Spans,
    problems: &'a mut Problems,
}

impl Checker<'_> {
    /// A problem at the value of `path` in `file`.
    fn problem(
        &mut self,
        severity: Severity,
        code: &'static str,
        (file, path): (FileKind, &str),
        msg: String,
    ) -> &mut Problem {
        let span = self.spans.value(file, path);
        self.problems
            .push(Problem::new(severity, code, file.path(), span, msg))
    }

    fn error(
        &mut self,
        code: &'static str,
        file: FileKind,
        path: &str,
        msg: String,
    ) -> &mut Problem {
        self.problem(Severity::Error, code, (file, path), msg)
    }
}

/// Runs every semantic check, appending problems. Returns each application's content
/// fingerprint (source and libraries) for the planner.
pub fn check(
    domain: &Domain,
    spans: &Spans,
    holes: &Holes,
    tree: &dyn Tree,
    problems: &mut Problems,
) -> BTreeMap<String, String> {
    let mut c = Checker {
        domain,
        holes,
        spans,
        problems,
    };
    thread_pools(&mut c);
    clusters(&mut c);
    nodes(&mut c);
    ports(&mut c);
    let content = applications(&mut c, tree);
    context_paths(&mut c);
    security(&mut c);
    content
}

fn thread_pools(c: &mut Checker<'_>) {
    for (sname, s) in &c.domain.config.servers {
        let mut pools: Vec<(String, _)> = s
            .web
            .listeners
            .iter()
            .map(|(l, lis)| {
                (
                    format!("servers.{sname}.web.listeners.{l}.thread-pool"),
                    lis.thread_pool,
                )
            })
            .collect();
        pools.push((
            format!("servers.{sname}.component.thread-pool"),
            s.component.thread_pool,
        ));
        for (path, pool) in pools {
            if pool.min > pool.max {
                c.error(
                    "invalid-range",
                    D,
                    &format!("{path}.min"),
                    format!(
                        "`{path}.min` ({}) is greater than `max` ({})",
                        pool.min, pool.max
                    ),
                )
                .hint = Some("make `min` at most `max`".into());
            }
        }
    }
}

fn clusters(c: &mut Checker<'_>) {
    let cfg = &c.domain.config;
    let mut member_of: HashMap<&str, (&str, String)> = HashMap::new();
    for (cname, cluster) in &cfg.clusters {
        if cfg.servers.contains_key(cname) {
            c.error(
                "name-conflict",
                D,
                &format!("clusters.{cname}"),
                format!("`{cname}` names both a server and a cluster"),
            )
            .hint = Some("rename the cluster; targets must say which one they mean".into());
        }
        if cluster.servers.is_empty() {
            c.problem(
                Severity::Warning,
                "empty-cluster",
                (D, &format!("clusters.{cname}")),
                format!("cluster `{cname}` has no servers"),
            );
        }
        for (i, member) in cluster.servers.iter().enumerate() {
            let path = format!("clusters.{cname}.servers[{i}]");
            if !cfg.servers.contains_key(member) {
                if c.holes.named(D, "servers", member) {
                    continue;
                }
                let hint = suggest(member, cfg.servers.keys());
                c.error(
                    "unknown-server",
                    D,
                    &path,
                    format!("cluster `{cname}` lists `{member}`, which is not a server"),
                )
                .hint = Some(hint);
                continue;
            }
            if let Some((other, first)) = member_of.get(member.as_str()) {
                if *other != cname {
                    let related = c.spans.value(D, first);
                    let msg =
                        format!("server `{member}` is in two clusters: `{other}` and `{cname}`");
                    let p = c.error("server-in-two-clusters", D, &path, msg);
                    p.related = related.map(|r| (r, format!("also in `{other}` here")));
                    p.hint =
                        Some("a server belongs to at most one cluster; remove it from one".into());
                }
            } else {
                member_of.insert(member, (cname, path));
            }
        }
    }
}

/// With `[nodes]` declared, every server names one of them: a typo would otherwise leave a server
/// no node agent starts. Without `[nodes]`, `node` is a host name as before (docs/node.md).
fn nodes(c: &mut Checker<'_>) {
    let cfg = &c.domain.config;
    if cfg.nodes.is_empty() {
        return;
    }
    for (sname, s) in &cfg.servers {
        if cfg.nodes.contains_key(&s.node) || c.holes.named(D, "nodes", &s.node) {
            continue;
        }
        let hint = match crate::values::did_you_mean(&s.node, cfg.nodes.keys().map(String::as_str))
        {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!(
                "declare it as `[nodes.{}]` with its `address`, or name one of: {}",
                s.node,
                cfg.nodes
                    .keys()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let p = c.error(
            "unknown-node",
            D,
            &format!("servers.{sname}.node"),
            format!(
                "server `{sname}` runs on node `{}`, which is not declared in `[nodes]`",
                s.node
            ),
        );
        p.label = Some("not a declared node".into());
        p.hint = Some(hint);
    }
}

/// Treats the names of this machine as one node, so `localhost` and `127.0.0.1` conflict.
fn node_key(node: &str) -> String {
    match node.to_ascii_lowercase().as_str() {
        "localhost" | "127.0.0.1" | "::1" | "localhost.localdomain" => "localhost".into(),
        other => other.to_owned(),
    }
}

fn ports(c: &mut Checker<'_>) {
    struct Bind {
        node: String,
        ip: IpAddr,
        port: u16,
        path: String,
        what: String,
    }
    let cfg = &c.domain.config;
    let mut binds = Vec::new();
    // A `[master]` with a problem is not the default: its ports are unknown.
    if !c.holes.section(D, "master") {
        binds.push(Bind {
            node: node_key(&cfg.master.node),
            ip: cfg.master.listen.ip(),
            port: cfg.master.listen.port(),
            path: "master.listen".into(),
            what: "the Master's base port".into(),
        });
    }
    for (sname, s) in &cfg.servers {
        let node = node_key(&s.node);
        let mut bind = |ip, port, path: String, what: String| {
            binds.push(Bind {
                node: node.clone(),
                ip,
                port,
                path: format!("servers.{sname}.{path}"),
                what,
            });
        };
        bind(
            s.listen.ip(),
            s.listen.port(),
            "listen".into(),
            format!("the base port of server `{sname}`"),
        );
        for (lname, l) in &s.web.listeners {
            bind(
                l.address,
                l.port,
                format!("web.listeners.{lname}.port"),
                format!("web listener `{lname}` of server `{sname}`"),
            );
        }
        if let Some(m) = &s.messaging.listener {
            bind(
                m.address,
                m.port,
                "messaging.listener.port".into(),
                format!("the messaging listener of server `{sname}`"),
            );
        }
    }
    let mut by_port: HashMap<(&str, u16), Vec<usize>> = HashMap::new();
    for (i, b) in binds.iter().enumerate() {
        let earlier = by_port.entry((b.node.as_str(), b.port)).or_default();
        let clash = earlier.iter().copied().find(|&j| {
            let a = &binds[j];
            a.ip == b.ip || a.ip.is_unspecified() || b.ip.is_unspecified()
        });
        earlier.push(i);
        if let Some(j) = clash {
            let first = &binds[j];
            let related = c.spans.value(D, &first.path);
            let msg = format!(
                "port {} on node `{}` is used twice: by {} and by {}",
                b.port, b.node, first.what, b.what
            );
            let p = c.error("port-conflict", D, &b.path, msg);
            p.label = Some("conflicting port".into());
            p.related = related.map(|r| (r, format!("{} uses it here", first.what)));
            p.hint = Some("give each listener on a node its own port (without listeners, a server's web engine takes its base port + 1)".into());
        }
    }
}

fn applications(c: &mut Checker<'_>, tree: &dyn Tree) -> BTreeMap<String, String> {
    let cfg = &c.domain.config;
    let mut content = BTreeMap::new();
    for (aname, app) in &cfg.applications {
        let base = format!("applications.{aname}");
        if app.targets.is_empty() {
            c.problem(
                Severity::Warning,
                "no-targets",
                (D, &base),
                format!("application `{aname}` has no targets and is deployed nowhere"),
            )
            .hint = Some("add `targets = [\"<server or cluster>\"]`".into());
        }
        for (i, t) in app.targets.iter().enumerate() {
            if !cfg.servers.contains_key(t)
                && !cfg.clusters.contains_key(t)
                && !c.holes.named(D, "servers", t)
                && !c.holes.named(D, "clusters", t)
            {
                let known = cfg.servers.keys().chain(cfg.clusters.keys());
                let holed = c
                    .holes
                    .names(D, "servers")
                    .chain(c.holes.names(D, "clusters"));
                let hint = suggest(t, known.chain(holed));
                c.error(
                    "unknown-target",
                    D,
                    &format!("{base}.targets[{i}]"),
                    format!("application `{aname}` targets `{t}`, which is neither a server nor a cluster"),
                )
                .hint = Some(hint);
            }
        }
        match (app.kind, &app.command) {
            (AppKind::Process | AppKind::Component, None) => {
                c.error(
                    "missing-key",
                    D,
                    &format!("{base}.kind"),
                    format!(
                        "{} application `{aname}` has no `command`",
                        kind_name(app.kind)
                    ),
                )
                .hint =
                    Some("add `command = \"bin/app\"` (a program inside the deploy image)".into());
            }
            (AppKind::Static, Some(_)) => {
                c.problem(
                    Severity::Warning,
                    "ignored-key",
                    (D, &format!("{base}.command")),
                    format!("`command` is ignored for static application `{aname}`"),
                );
            }
            _ => {}
        }
        if app.context_path.is_none() && app.kind != AppKind::Component {
            c.error(
                "missing-key",
                D,
                &base,
                format!(
                    "{} application `{aname}` has no `context-path`",
                    kind_name(app.kind)
                ),
            )
            .hint = Some(format!(
                "add `context-path = \"/{aname}\"` (the URL prefix it is served under)"
            ));
        }
        timers(c, aname, app);
        consumes(c, aname, app);
        let mut fingerprint = String::new();
        let source_path = format!("{base}.source");
        match tree.entry(&app.source) {
            Ok(Some(e)) if e.kind == EntryKind::Dir => fingerprint.push_str(&e.id),
            Ok(Some(e))
                if e.kind == EntryKind::File
                    && ARCHIVES.iter().any(|s| app.source.ends_with(s)) =>
            {
                fingerprint.push_str(&e.id)
            }
            Ok(Some(_)) => {
                c.error(
                    "bad-source",
                    D,
                    &source_path,
                    format!(
                        "`{}` is neither a directory nor an archive ({})",
                        app.source,
                        ARCHIVES.join(", ")
                    ),
                );
            }
            Ok(None) => {
                c.error(
                    "missing-source",
                    D,
                    &source_path,
                    format!("`{}` is not in this revision", app.source),
                )
                .hint = Some("commit the application's files at that path, or fix the path".into());
            }
            Err(e) => {
                c.error(
                    "unreadable",
                    D,
                    &source_path,
                    format!("cannot read `{}`: {e}", app.source),
                );
            }
        }
        for (i, lib) in app.libraries.iter().enumerate() {
            let path = format!("{base}.libraries[{i}]");
            match tree.entry(lib) {
                Ok(Some(e)) if e.kind == EntryKind::Dir => {
                    fingerprint.push(':');
                    fingerprint.push_str(&e.id);
                }
                Ok(Some(_)) => {
                    c.error(
                        "bad-library",
                        D,
                        &path,
                        format!("library `{lib}` is not a directory"),
                    );
                }
                Ok(None) => {
                    c.error(
                        "missing-library",
                        D,
                        &path,
                        format!("library `{lib}` is not in this revision"),
                    );
                }
                Err(e) => {
                    c.error("unreadable", D, &path, format!("cannot read `{lib}`: {e}"));
                }
            }
        }
        content.insert(aname.clone(), fingerprint);
    }
    content
}

fn kind_name(kind: AppKind) -> &'static str {
    match kind {
        AppKind::Static => "static",
        AppKind::Process => "process",
        AppKind::Component => "component",
    }
}

/// Declared timers: only on `component` applications, each with exactly one of `schedule`,
/// `interval`, `at` (their values were checked by the loader).
fn timers(c: &mut Checker<'_>, aname: &str, app: &crate::model::Application) {
    for (tname, t) in &app.timers {
        let base = format!("applications.{aname}.timers.{tname}");
        if app.kind != AppKind::Component {
            c.error(
                "timer-not-component",
                D,
                &base,
                format!(
                    "timer `{tname}` is declared on {} application `{aname}`; only `component` applications have timers",
                    kind_name(app.kind)
                ),
            )
            .hint = Some("set `kind = \"component\"`, or remove the timer".into());
            continue;
        }
        let given: Vec<&str> = [
            ("schedule", t.schedule.is_some()),
            ("interval", t.interval.is_some()),
            ("at", t.at.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        match given.as_slice() {
            [_] => {}
            [] => {
                c.error(
                    "timer-schedule",
                    D,
                    &base,
                    format!("timer `{tname}` of `{aname}` says nothing about when it fires"),
                )
                .hint = Some(
                    "add one of `schedule = \"0 3 * * *\"`, `interval = \"5m\"`, `at = \"2027-01-01T00:00:00Z\"`"
                        .into(),
                );
            }
            [_, second, ..] => {
                c.error(
                    "timer-schedule",
                    D,
                    &format!("{base}.{second}"),
                    format!(
                        "timer `{tname}` of `{aname}` has {}; a timer has exactly one",
                        given
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                )
                .hint = Some("keep one of `schedule`, `interval`, `at`".into());
            }
        }
        if t.interval.is_some_and(|d| d.0.is_zero()) {
            c.error(
                "invalid-value",
                D,
                &format!("{base}.interval"),
                format!("timer `{tname}` of `{aname}` has a zero interval"),
            )
            .hint = Some("write a duration of at least `1ms`, e.g. `5m`".into());
        }
    }
}

/// What a message-driven component consumes: only `component` applications consume, and each
/// destination must be declared on every server the application is deployed to (a queue's
/// dead-letter queue `NAME.dlq` is declared with it). The form of each entry was checked by the
/// loader.
fn consumes(c: &mut Checker<'_>, aname: &str, app: &crate::model::Application) {
    use crate::model::Consume;
    if app.consumes.is_empty() {
        return;
    }
    let base = format!("applications.{aname}.consumes");
    if app.kind != AppKind::Component {
        c.error(
            "consumes-not-component",
            D,
            &base,
            format!(
                "{} application `{aname}` has `consumes`; only `component` applications consume messages",
                kind_name(app.kind)
            ),
        )
        .hint = Some("set `kind = \"component\"`, or remove `consumes`".into());
        return;
    }
    let servers: Vec<String> = c
        .domain
        .app_servers(app)
        .into_iter()
        .map(str::to_owned)
        .collect();
    for (i, entry) in app.consumes.iter().enumerate() {
        let Ok(consume) = Consume::parse(entry) else {
            continue;
        };
        let missing: Vec<&str> = servers
            .iter()
            .map(String::as_str)
            .filter(|s| {
                let Some(m) = c.domain.config.servers.get(*s).map(|s| &s.messaging) else {
                    return false;
                };
                match &consume {
                    Consume::Queue(n) => {
                        !m.queues.contains_key(n)
                            && !n
                                .strip_suffix(".dlq")
                                .is_some_and(|q| m.queues.contains_key(q))
                    }
                    Consume::Topic(n) => !m.topics.contains_key(n),
                }
            })
            .collect();
        let Some(first) = missing.first() else {
            continue;
        };
        let (table, name) = match &consume {
            Consume::Queue(n) => ("queues", n),
            Consume::Topic(n) => ("topics", n),
        };
        c.error(
            "unknown-destination",
            D,
            &format!("{base}[{i}]"),
            format!(
                "application `{aname}` consumes `{entry}`, which is not declared on server{} {}",
                if missing.len() > 1 { "s" } else { "" },
                missing
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .hint = Some(format!(
            "declare it with `[servers.{first}.messaging.{table}.{name}]` on each server the application is deployed to, or remove it from `consumes`"
        ));
    }
}

/// Two applications conflict when they share a context path and a server. Grouping by context
/// path first keeps this linear in applications, not in (server, application) pairs.
fn context_paths(c: &mut Checker<'_>) {
    let apps = &c.domain.config.applications;
    let mut by_path: FastMap<&str, Vec<&str>> = FastMap::default();
    for (name, app) in apps {
        if let Some(ctx) = &app.context_path {
            by_path.entry(ctx.as_str()).or_default().push(name);
        }
    }
    let mut groups: Vec<(&str, Vec<&str>)> =
        by_path.into_iter().filter(|(_, v)| v.len() > 1).collect();
    groups.sort_unstable();
    for (ctx, names) in groups {
        let servers: Vec<Vec<&str>> = names
            .iter()
            .map(|n| c.domain.app_servers(&apps[*n]))
            .collect();
        for (i, app) in names.iter().enumerate() {
            // The first earlier application sharing a server with this one, and that server.
            let clash = (0..i).find_map(|j| {
                servers[i]
                    .iter()
                    .find(|s| servers[j].contains(s))
                    .map(|s| (names[j], *s))
            });
            let Some((first, server)) = clash else {
                continue;
            };
            let related: Option<Range<usize>> = c
                .spans
                .value(D, &format!("applications.{first}.context-path"));
            let msg = format!(
                "context path `{ctx}` is used twice on server `{server}`: by `{first}` and by `{app}`"
            );
            let p = c.error(
                "context-path-conflict",
                D,
                &format!("applications.{app}.context-path"),
                msg,
            );
            p.related = related.map(|r| (r, format!("`{first}` uses it here")));
            p.hint = Some("give each application on a server its own context path".into());
        }
    }
}

fn security(c: &mut Checker<'_>) {
    let acc = &c.domain.accounts;
    let pol = &c.domain.policies;
    let groups: BTreeSet<&str> = acc.groups.keys().map(String::as_str).collect();
    let users: BTreeSet<&str> = acc.users.keys().map(String::as_str).collect();
    for (uname, user) in &acc.users {
        undefined(
            c,
            (
                "unknown-group",
                FileKind::Accounts,
                &format!("users.{uname}.groups"),
            ),
            &user.groups,
            ("groups", &groups),
            |g| format!("user `{uname}` is in group `{g}`, which is not defined"),
            |g, suggestion| format!("add `[groups.{g}]`, or {suggestion}"),
        );
    }
    if acc.users.is_empty() && !c.holes.partial(A, "users") {
        c.problems.push(
            Problem::error(
                "no-users",
                FileKind::Accounts.path(),
                None,
                "no users are defined: nobody could use the Master",
            )
            .hint("add `[users.admin]` with a `password` hash from `steward hash-password`"),
        );
    }
    for (rname, role) in &pol.roles {
        let lists = [
            ("group", "unknown-group", &role.groups, &groups),
            ("user", "unknown-user", &role.users, &users),
        ];
        for (what, code, names, defined) in lists {
            undefined(
                c,
                (code, FileKind::Policies, &format!("roles.{rname}.{what}s")),
                names,
                (&format!("{what}s"), defined),
                |n| {
                    format!(
                        "role `{rname}` names {what} `{n}`, which is not defined in `security/accounts.toml`"
                    )
                },
                |_, suggestion| suggestion,
            );
        }
    }
    let any_admin = acc
        .users
        .keys()
        .any(|u| c.domain.permits(u, "git:push") && c.domain.permits(u, "domain:read"));
    let partial = c.holes.partial(A, "users")
        || c.holes.partial(A, "groups")
        || c.holes.partial(FileKind::Policies, "roles");
    if !acc.users.is_empty() && !any_admin && !partial {
        c.problems.push(
            Problem::warning(
                "no-administrator",
                FileKind::Policies.path(),
                None,
                "no user may both read the domain and push to it: nobody can change this domain through the Master",
            )
            .hint("grant a role with `permissions = [\"*\"]` to the administrators group"),
        );
    }
}

/// Each of `names` (the list at `path` in `file`) must name an item of the accounts' `section`,
/// unless that item did not load (its own problem is reported).
fn undefined(
    c: &mut Checker<'_>,
    (code, file, path): (&'static str, FileKind, &str),
    names: &[String],
    (section, defined): (&str, &BTreeSet<&str>),
    message: impl Fn(&str) -> String,
    hint: impl Fn(&str, String) -> String,
) {
    for (i, name) in names.iter().enumerate() {
        if !defined.contains(name.as_str()) && !c.holes.named(A, section, name) {
            c.error(code, file, &format!("{path}[{i}]"), message(name))
                .hint = Some(hint(name, suggest(name, defined.iter().copied())));
        }
    }
}

fn suggest<S: AsRef<str>>(word: &str, names: impl Iterator<Item = S>) -> String {
    let names: Vec<S> = names.collect();
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    match crate::values::did_you_mean(word, names.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None if names.is_empty() => "none is defined".into(),
        None if names.len() <= 8 => format!(
            "defined: {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("{} are defined; check the spelling", names.len()),
    }
}
