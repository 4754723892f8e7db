//! Edits of `domain.toml` that keep every comment and the layout: what `steward admin set`,
//! `unset`, `deploy` and `undeploy` do to the file (docs/admin.md). Pure: text in, text out, with
//! `toml_edit`; the caller validates the result with the one validator and plans it.
//!
//! A value is typed from the classification table ([`settings`]): `5` becomes an integer where an
//! integer is expected and the string `"5"` where a string is. A value that is not of the expected
//! type is written as a string, so the validator reports it with its own message and position.
//!
//! Over 600 lines because of its unit tests: every edit is checked against the exact text it
//! leaves, comments included.

use std::fmt;

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use crate::settings::{self, FileKind, Kind, Node};
use crate::values;

/// The file every edit is made in.
pub const FILE: &str = "domain.toml";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("domain.toml does not parse, so it cannot be edited: {0}")]
    Parse(String),
    #[error("`{0}`: expected PATH=VALUE, e.g. `servers.server1.logging.level=debug`")]
    Assignment(String),
    #[error("`{path}` is not a setting of domain.toml{}", suggest(.suggestion))]
    UnknownSetting {
        path: String,
        /// The whole path with the likely typo corrected.
        suggestion: Option<String>,
    },
    #[error(
        "no {what} `{name}` in domain.toml{}{}",
        suggest(.suggestion),
        listing(.what, .known)
    )]
    UnknownName {
        /// `server`, `cluster`, `application`.
        what: &'static str,
        name: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },
    #[error("`{path}` is a table of settings; set its keys one at a time (`{path}.KEY=VALUE`)")]
    NotAValue { path: String },
    #[error("`{app}` is a new application: name its targets (servers or clusters)")]
    NoTargets { app: String },
    #[error("`{path}` is not set in domain.toml: nothing to unset")]
    NotSet { path: String },
    #[error("`{path}`: `{at}` is written as a value in domain.toml, not as a table")]
    NotATable { path: String, at: String },
}

fn suggest(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

fn listing(what: &str, known: &[String]) -> String {
    if known.is_empty() {
        format!(" (it has no {what})")
    } else {
        format!(" ({what}s: {})", known.join(", "))
    }
}

/// Where `deploy` puts an application's content, and how it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    pub app: String,
    /// `static` or `process`; `None` keeps an existing application's kind (a new one is `static`).
    pub kind: Option<String>,
    /// The content's path in the repository (`apps/APP`).
    pub source: String,
    /// Servers and clusters; empty keeps an existing application's targets.
    pub targets: Vec<String>,
    /// `None` keeps an existing application's context path (a new one gets `/APP`).
    pub context_path: Option<String>,
    /// A process application's program, inside its content; `None` keeps the existing one.
    pub command: Option<String>,
}

/// One change to `domain.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `PATH=VALUE`; the value as the operator typed it.
    Set {
        path: String,
        value: String,
    },
    Unset {
        path: String,
    },
    Deploy(Deploy),
    Undeploy {
        app: String,
    },
}

impl Op {
    /// `PATH=VALUE` as typed on the command line.
    pub fn parse_assignment(text: &str) -> Result<Op, EditError> {
        match text.split_once('=') {
            Some((path, value)) if !path.trim().is_empty() => Ok(Op::Set {
                path: path.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(EditError::Assignment(text.to_owned())),
        }
    }
}

impl fmt::Display for Op {
    /// How a commit message names the change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Set { path, value } => write!(f, "set {path}={value}"),
            Op::Unset { path } => write!(f, "unset {path}"),
            Op::Deploy(d) => {
                write!(f, "deploy {} from {}", d.app, d.source)?;
                if !d.targets.is_empty() {
                    write!(f, " to {}", d.targets.join(", "))?;
                }
                Ok(())
            }
            Op::Undeploy { app } => write!(f, "undeploy {app}"),
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub text: String,
    /// Repository paths of application content no application references any more (an
    /// undeployed application's `source`): the caller removes them.
    pub orphaned: Vec<String>,
}

/// `ops` applied in order to the text of `domain.toml`.
pub fn apply(text: &str, ops: &[Op]) -> Result<Applied, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Parse(e.message().to_owned()))?;
    let mut orphaned = Vec::new();
    for op in ops {
        match op {
            Op::Set { path, value } => set(&mut doc, path, value)?,
            Op::Unset { path } => unset(&mut doc, path)?,
            Op::Deploy(d) => deploy(&mut doc, d)?,
            Op::Undeploy { app } => {
                if let Some(source) = undeploy(&mut doc, app)? {
                    orphaned.push(source);
                }
            }
        }
    }
    Ok(Applied {
        text: doc.to_string(),
        orphaned,
    })
}

/// The named entities at the top of the file, for "no server `x`" messages.
fn entity(section: &str) -> Option<&'static str> {
    match section {
        "servers" => Some("server"),
        "clusters" => Some("cluster"),
        "applications" => Some("application"),
        _ => None,
    }
}

/// Checks `path` against the key tree and the document: every fixed key must exist in the
/// table (with a suggestion when it does not), and the name of a server, cluster or application
/// must be one the file defines. Returns the setting, or `None` when the path names a table.
fn resolve(doc: &DocumentMut, path: &str) -> Result<Option<&'static settings::Setting>, EditError> {
    let segs: Vec<&str> = path.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(EditError::UnknownSetting {
            path: path.to_owned(),
            suggestion: None,
        });
    }
    let mut node: &Node = settings::tree(FileKind::Domain);
    for (i, seg) in segs.iter().enumerate() {
        if let Some(s) = node.setting {
            // Keys under a map of strings (`process.env.RUST_LOG`) are the map's own.
            if s.kind == Kind::StrMap && i + 1 == segs.len() {
                return Ok(Some(s));
            }
            return Err(EditError::UnknownSetting {
                path: path.to_owned(),
                suggestion: None,
            });
        }
        if let Some(child) = node.children.get(seg) {
            node = child;
            continue;
        }
        if let Some(any) = node.any.as_deref() {
            if i == 1
                && let Some(what) = entity(segs[0])
            {
                let names: Vec<String> = doc
                    .get(segs[0])
                    .and_then(Item::as_table_like)
                    .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
                    .unwrap_or_default();
                if !names.iter().any(|n| n == seg) {
                    return Err(EditError::UnknownName {
                        what,
                        name: (*seg).to_owned(),
                        suggestion: values::did_you_mean(seg, names.iter().map(String::as_str))
                            .map(str::to_owned),
                        known: names,
                    });
                }
            }
            node = any;
            continue;
        }
        let suggestion = values::did_you_mean(seg, node.children.keys().copied()).map(|m| {
            let mut fixed: Vec<&str> = segs.clone();
            fixed[i] = m;
            fixed.join(".")
        });
        return Err(EditError::UnknownSetting {
            path: path.to_owned(),
            suggestion,
        });
    }
    Ok(node.setting)
}

/// `raw` as the value a setting of `kind` takes; a value of another type stays a string, for the
/// validator to report.
pub fn typed(kind: Kind, raw: &str) -> Value {
    let raw = raw.trim();
    // A value written as TOML (`"debug"`, `[..]`, `{..}`, `true`) means what TOML says,
    // when it is of the expected type.
    let literal = raw.parse::<Value>().ok();
    let string = || match &literal {
        Some(v @ Value::String(_)) => v.clone(),
        _ => Value::from(raw),
    };
    match kind {
        Kind::Bool => match literal {
            Some(v @ Value::Boolean(_)) => v,
            _ => string(),
        },
        Kind::Int { .. } | Kind::Port => match literal {
            Some(v @ Value::Integer(_)) => v,
            _ => string(),
        },
        Kind::ByteSize => match literal {
            Some(v @ Value::Integer(_)) => v,
            _ => string(),
        },
        Kind::IdentList
        | Kind::StrList
        | Kind::RepoPathList
        | Kind::PermissionList
        | Kind::ConsumeList => {
            match literal {
                Some(v @ Value::Array(_)) => v,
                _ if raw.is_empty() => Value::Array(toml_edit::Array::new()),
                // `a,b` is the list of two strings.
                _ => Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect(),
                ),
            }
        }
        Kind::StrMap => match literal {
            Some(v @ Value::InlineTable(_)) => v,
            _ => string(),
        },
        Kind::Str
        | Kind::Ident
        | Kind::SocketAddr
        | Kind::IpAddr
        | Kind::Host
        | Kind::Duration
        | Kind::Enum(_)
        | Kind::RepoPath
        | Kind::ContextPath
        | Kind::FsPath
        | Kind::EnvName
        | Kind::PasswordHash
        | Kind::Cron
        | Kind::TimeZone
        | Kind::Instant => string(),
    }
}

/// Sets `path` to `raw`, creating the tables on the way that are missing.
pub fn set(doc: &mut DocumentMut, path: &str, raw: &str) -> Result<(), EditError> {
    let Some(setting) = resolve(doc, path)? else {
        return Err(EditError::NotAValue {
            path: path.to_owned(),
        });
    };
    // A key under a map of strings is a string; the map itself is typed by its kind.
    let is_map_key = setting.kind == Kind::StrMap && path.split('.').count() > depth(setting.path);
    let value = if is_map_key {
        typed(Kind::Str, raw)
    } else {
        typed(setting.kind, raw)
    };
    let segs: Vec<&str> = path.split('.').collect();
    let (last, parents) = segs.split_last().ok_or_else(|| EditError::UnknownSetting {
        path: path.to_owned(),
        suggestion: None,
    })?;
    let table = table_at(doc, parents, path)?;
    put(table, last, value);
    Ok(())
}

fn depth(pattern: &str) -> usize {
    pattern.split('.').count()
}

/// Replaces or adds `key = value`, keeping the comments around a replaced value.
fn put(table: &mut dyn TableLike, key: &str, mut value: Value) {
    if let Some(old) = table.get_mut(key).and_then(Item::as_value_mut) {
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return;
    }
    table.insert(key, Item::Value(value));
}

/// The table at `segs`, created where missing: the innermost new table gets a header
/// (`[servers.s1.web.listeners.http]`), those above it stay implicit; below an inline table the
/// new tables are inline, below a dotted key dotted.
fn table_at<'d>(
    doc: &'d mut DocumentMut,
    segs: &[&str],
    path: &str,
) -> Result<&'d mut dyn TableLike, EditError> {
    let not_a_table = |i: usize| EditError::NotATable {
        path: path.to_owned(),
        at: segs[..i].join("."),
    };
    let mut cur: &mut Item = doc.as_item_mut();
    for (i, seg) in segs.iter().enumerate() {
        let innermost = i + 1 == segs.len();
        let inline = matches!(cur, Item::Value(Value::InlineTable(_)));
        let dotted = matches!(cur, Item::Table(t) if t.is_dotted());
        let table = cur.as_table_like_mut().ok_or_else(|| not_a_table(i))?;
        let item = table.entry(seg).or_insert_with(|| {
            if inline {
                Item::Value(Value::InlineTable(toml_edit::InlineTable::new()))
            } else {
                let mut t = Table::new();
                t.set_implicit(!innermost);
                t.set_dotted(dotted);
                Item::Table(t)
            }
        });
        if let Item::Table(t) = item
            && innermost
            && !t.is_dotted()
        {
            // A table that held only subtables gets a header of its own for its first key.
            t.set_implicit(false);
        }
        cur = item;
    }
    cur.as_table_like_mut()
        .ok_or_else(|| not_a_table(segs.len()))
}

/// Removes `path`, then the tables the removal left empty below the named entity
/// (`[servers.s1.web.access-log]` with nothing left in it goes; `[servers.s1]` stays).
pub fn unset(doc: &mut DocumentMut, path: &str) -> Result<(), EditError> {
    resolve(doc, path)?;
    let segs: Vec<&str> = path.split('.').collect();
    let not_set = || EditError::NotSet {
        path: path.to_owned(),
    };
    let (last, parents) = segs.split_last().ok_or_else(not_set)?;
    {
        let mut cur: &mut dyn TableLike = doc.as_table_mut();
        for seg in parents {
            cur = cur
                .get_mut(seg)
                .and_then(Item::as_table_like_mut)
                .ok_or_else(not_set)?;
        }
        cur.remove(last).ok_or_else(not_set)?;
    }
    // Empty tables left behind, innermost first, never the entity itself (depth 2).
    for end in (3..=parents.len()).rev() {
        let (tail, above) = parents[..end].split_last().ok_or_else(not_set)?;
        let mut cur: &mut dyn TableLike = doc.as_table_mut();
        for seg in above {
            match cur.get_mut(seg).and_then(Item::as_table_like_mut) {
                Some(t) => cur = t,
                None => return Ok(()),
            }
        }
        let empty = cur
            .get(tail)
            .and_then(Item::as_table_like)
            .is_some_and(TableLike::is_empty);
        if !empty {
            break;
        }
        cur.remove(tail);
    }
    Ok(())
}

/// Adds `[applications.APP]` or updates it: kind, source, context path and targets.
pub fn deploy(doc: &mut DocumentMut, d: &Deploy) -> Result<(), EditError> {
    let path = format!("applications.{}", d.app);
    values::check_ident(&d.app).map_err(|_| EditError::UnknownSetting {
        path: path.clone(),
        suggestion: None,
    })?;
    let exists = doc
        .get("applications")
        .and_then(|a| a.get(&d.app))
        .is_some();
    if !exists && d.targets.is_empty() {
        return Err(EditError::NoTargets { app: d.app.clone() });
    }
    let table = table_at(doc, &["applications", &d.app], &path)?;
    let kind = d
        .kind
        .clone()
        .or_else(|| (!exists).then(|| "static".to_owned()));
    if let Some(kind) = kind {
        put(table, "kind", Value::from(kind));
    }
    put(table, "source", Value::from(d.source.clone()));
    let context = d
        .context_path
        .clone()
        .or_else(|| (!exists).then(|| format!("/{}", d.app)));
    if let Some(c) = context {
        put(table, "context-path", Value::from(c));
    }
    if let Some(c) = &d.command {
        put(table, "command", Value::from(c.clone()));
    }
    if !d.targets.is_empty() {
        put(
            table,
            "targets",
            Value::Array(d.targets.iter().map(String::as_str).collect()),
        );
    }
    Ok(())
}

/// Removes `[applications.APP]`; returns its `source` when no other application uses it.
pub fn undeploy(doc: &mut DocumentMut, app: &str) -> Result<Option<String>, EditError> {
    resolve(doc, &format!("applications.{app}"))?;
    let apps = doc
        .get_mut("applications")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| EditError::NotSet {
            path: format!("applications.{app}"),
        })?;
    let removed = apps.remove(app).ok_or_else(|| EditError::NotSet {
        path: format!("applications.{app}"),
    })?;
    let source = removed
        .get("source")
        .and_then(Item::as_str)
        .map(str::to_owned);
    let shared = apps
        .iter()
        .any(|(_, a)| a.get("source").and_then(Item::as_str) == source.as_deref());
    Ok(source.filter(|_| !shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"# The domain.
[domain]
name = "d1" # its name

[servers.server1]
listen = "127.0.0.1:9741"
restart-policy = "manual"        # manual | auto | rolling

# Its web engine.
[servers.server1.web.listeners.http]
port = 8088
thread-pool = { min = 2, max = 64 }

[servers.server1.web.access-log]
enabled = true

[servers.server2]
listen = "127.0.0.1:9751"

[clusters.c1]
servers = ["server1"]

[applications.shop]
kind = "static"
source = "apps/shop"
context-path = "/shop"
targets = ["c1"]
"#;

    fn set1(path: &str, value: &str) -> Result<String, EditError> {
        apply(
            DOMAIN,
            &[Op::Set {
                path: path.into(),
                value: value.into(),
            }],
        )
        .map(|a| a.text)
    }

    /// The lines of `new` that are not in `old`, and of `old` not in `new`.
    fn changed(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
        let o: Vec<&str> = old.lines().collect();
        let n: Vec<&str> = new.lines().collect();
        (
            n.iter()
                .filter(|l| !o.contains(l))
                .map(|l| (*l).to_owned())
                .collect(),
            o.iter()
                .filter(|l| !n.contains(l))
                .map(|l| (*l).to_owned())
                .collect(),
        )
    }

    #[test]
    fn a_set_changes_one_value_and_keeps_its_comment() {
        let out = set1("servers.server1.restart-policy", "rolling").unwrap();
        assert_eq!(
            changed(DOMAIN, &out),
            (
                vec![r#"restart-policy = "rolling"        # manual | auto | rolling"#.into()],
                vec![r#"restart-policy = "manual"        # manual | auto | rolling"#.into()]
            )
        );
        assert!(out.starts_with("# The domain.\n"));
        assert!(out.contains("# Its web engine.\n[servers.server1.web.listeners.http]"));
    }

    #[test]
    fn a_missing_key_and_missing_tables_are_created() {
        let out = set1("servers.server2.logging.level", "debug").unwrap();
        let (added, removed) = changed(DOMAIN, &out);
        assert!(removed.is_empty(), "{removed:?}");
        assert!(
            out.contains("[servers.server2.logging]\nlevel = \"debug\"\n"),
            "{out}"
        );
        assert_eq!(added.len(), 2, "{added:?}");
        // Next to its server, not at the end of the file.
        assert!(
            out.find("[servers.server2.logging]") < out.find("[clusters.c1]"),
            "{out}"
        );
        // The implicit tables above a new one get no header of their own.
        let out = set1("servers.server2.web.listeners.admin.port", "9000").unwrap();
        assert!(
            out.contains("[servers.server2.web.listeners.admin]\nport = 9000\n"),
            "{out}"
        );
        assert!(!out.contains("[servers.server2.web]"), "{out}");
        // A key beside existing ones.
        let out = set1("servers.server2.node", "localhost").unwrap();
        assert!(
            out.contains("[servers.server2]\nlisten = \"127.0.0.1:9751\"\nnode = \"localhost\"\n"),
            "{out}"
        );
    }

    #[test]
    fn inside_an_inline_table_the_table_stays_inline() {
        let out = set1("servers.server1.web.listeners.http.thread-pool.max", "128").unwrap();
        assert!(
            out.contains("thread-pool = { min = 2, max = 128 }"),
            "{out}"
        );
    }

    #[test]
    fn below_a_dotted_key_the_new_key_is_dotted_too() {
        let text =
            "[servers.server1]\nlisten = \"127.0.0.1:9741\"\nweb.access-log.enabled = true # on\n";
        let out = apply(
            text,
            &[
                Op::parse_assignment("servers.server1.web.access-log.format=json").unwrap(),
                Op::parse_assignment("servers.server1.web.access-log.enabled=false").unwrap(),
            ],
        )
        .unwrap()
        .text;
        assert_eq!(
            out,
            "[servers.server1]\nlisten = \"127.0.0.1:9741\"\nweb.access-log.enabled = false # on\nweb.access-log.format = \"json\"\n"
        );
    }

    #[test]
    fn values_are_typed_from_the_settings_table() {
        let out = set1("servers.server1.process.runtime-threads", "5").unwrap();
        assert!(out.contains("runtime-threads = 5\n"), "{out}");
        let out = set1("domain.description", "5").unwrap();
        assert!(out.contains("description = \"5\"\n"), "{out}");
        let out = set1("servers.server1.web.access-log.enabled", "false").unwrap();
        assert!(out.contains("enabled = false\n"), "{out}");
        let out = set1("clusters.c1.servers", "server1, server2").unwrap();
        assert!(
            out.contains("servers = [\"server1\", \"server2\"]\n"),
            "{out}"
        );
        let out = set1("clusters.c1.servers", r#"["server2"]"#).unwrap();
        assert!(out.contains("servers = [\"server2\"]\n"), "{out}");
        // A key of a map of strings is a string, whatever it looks like.
        let out = set1("servers.server1.process.env.THREADS", "5").unwrap();
        assert!(out.contains("THREADS = \"5\""), "{out}");
        // A quoted value is the string inside the quotes.
        let out = set1("domain.description", r#""a b""#).unwrap();
        assert!(out.contains("description = \"a b\"\n"), "{out}");
        // Sizes: a number of bytes, or a size with its unit.
        assert_eq!(typed(Kind::ByteSize, "4096").to_string(), "4096");
        assert_eq!(typed(Kind::ByteSize, "10MiB").to_string(), "\"10MiB\"");
    }

    #[test]
    fn a_value_of_the_wrong_type_gets_the_validators_own_message() {
        let out = set1("servers.server1.process.runtime-threads", "many").unwrap();
        assert!(out.contains("runtime-threads = \"many\"\n"), "{out}");
        let v = crate::validate(&crate::tree::MemTree::new("t").with("domain.toml", out));
        let messages: Vec<&str> = v
            .report
            .problems
            .iter()
            .map(|p| p.message.as_str())
            .collect();
        assert!(
            messages.contains(
                &"`servers.server1.process.runtime-threads` must be a integer 1..=1024, found string"
            ),
            "{messages:?}"
        );
    }

    #[test]
    fn unknown_paths_and_names_are_refused_with_a_suggestion() {
        assert_eq!(
            set1("servers.server1.restart_policy", "auto"),
            Err(EditError::UnknownSetting {
                path: "servers.server1.restart_policy".into(),
                suggestion: Some("servers.server1.restart-policy".into()),
            })
        );
        let e = set1("servers.server1.web.listeners.http.prot", "1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`servers.server1.web.listeners.http.prot` is not a setting of domain.toml; did you mean `servers.server1.web.listeners.http.port`?"
        );
        let e = set1("servers.server9.node", "localhost").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no server `server9` in domain.toml; did you mean `server1`? (servers: server1, server2)"
        );
        let e = set1("bogus.thing", "1").unwrap_err();
        assert!(matches!(
            e,
            EditError::UnknownSetting {
                suggestion: None,
                ..
            }
        ));
        let e = set1("servers.server1.web", "1").unwrap_err();
        assert!(matches!(e, EditError::NotAValue { .. }), "{e}");
        let e = set1("servers.server1.listen.port", "1").unwrap_err();
        assert!(matches!(e, EditError::UnknownSetting { .. }), "{e}");
        assert_eq!(
            Op::parse_assignment("novalue"),
            Err(EditError::Assignment("novalue".into()))
        );
    }

    #[test]
    fn unset_removes_the_key_and_the_tables_it_empties() {
        let out = apply(
            DOMAIN,
            &[Op::Unset {
                path: "servers.server1.web.access-log.enabled".into(),
            }],
        )
        .unwrap()
        .text;
        assert_eq!(
            changed(DOMAIN, &out),
            (
                vec![],
                vec![
                    "[servers.server1.web.access-log]".into(),
                    "enabled = true".into()
                ]
            )
        );
        let out = apply(
            DOMAIN,
            &[Op::Unset {
                path: "servers.server1.restart-policy".into(),
            }],
        )
        .unwrap()
        .text;
        assert!(!out.contains("restart-policy"), "{out}");
        assert!(out.contains("[servers.server1]\nlisten"), "{out}");
        assert_eq!(
            apply(
                DOMAIN,
                &[Op::Unset {
                    path: "servers.server2.restart-policy".into()
                }]
            ),
            Err(EditError::NotSet {
                path: "servers.server2.restart-policy".into()
            })
        );
    }

    #[test]
    fn deploy_adds_or_updates_an_application_and_undeploy_removes_it() {
        let d = Deploy {
            app: "blog".into(),
            kind: None,
            source: "apps/blog".into(),
            targets: vec!["server2".into()],
            context_path: None,
            command: None,
        };
        let out = apply(DOMAIN, &[Op::Deploy(d.clone())]).unwrap().text;
        assert!(
            out.ends_with(
                "[applications.blog]\nkind = \"static\"\nsource = \"apps/blog\"\ncontext-path = \"/blog\"\ntargets = [\"server2\"]\n"
            ),
            "{out}"
        );
        // An existing application keeps what the deploy does not say.
        let out = apply(
            DOMAIN,
            &[Op::Deploy(Deploy {
                app: "shop".into(),
                source: "apps/shop".into(),
                targets: vec![],
                ..d.clone()
            })],
        )
        .unwrap()
        .text;
        assert_eq!(out, DOMAIN);
        let a = apply(DOMAIN, &[Op::Undeploy { app: "shop".into() }]).unwrap();
        assert!(!a.text.contains("shop"), "{}", a.text);
        assert_eq!(a.orphaned, vec!["apps/shop".to_owned()]);
        let e = apply(DOMAIN, &[Op::Undeploy { app: "shp".into() }]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no application `shp` in domain.toml; did you mean `shop`? (applications: shop)"
        );
    }
}

#[cfg(test)]
mod plan_tests {
    use super::tests_support::*;

    #[test]
    fn the_plan_of_an_edit_marks_each_change_with_its_effect() {
        let old = load(BASE);
        let edited = apply(
            BASE,
            &[
                set("servers.server1.logging.level", "debug"),
                set("servers.server1.process.runtime-threads", "4"),
                set("applications.shop.env.MODE", "x"),
            ],
        );
        let plan = crate::plan::plan(Some(&old), &load(&edited)).render_marked();
        for line in [
            "  ~ servers.server1.logging.level  \"info\" → \"debug\"  [LIVE]",
            "  ~ servers.server1.process.runtime-threads  2 → 4  [RESTART]",
            "  ~ redeploy application shop (changed: env.MODE)  [REDEPLOY]",
            "      applications.shop.env.MODE  (unset) → \"x\"  [REDEPLOY]",
        ] {
            assert!(plan.contains(line), "{line:?} in\n{plan}");
        }
    }
}

#[cfg(test)]
mod tests_support {
    pub use super::Op;

    pub const BASE: &str = "[domain]\nname = \"d1\"\n\n[servers.server1]\nlisten = \"127.0.0.1:9741\"\n\n# Logging.\n[servers.server1.logging]\nlevel = \"info\"\n\n[applications.shop]\nkind = \"static\"\nsource = \"apps/shop\"\ncontext-path = \"/shop\"\ntargets = [\"server1\"]\n";

    pub fn set(path: &str, value: &str) -> Op {
        Op::Set {
            path: path.into(),
            value: value.into(),
        }
    }

    pub fn apply(text: &str, ops: &[Op]) -> String {
        super::apply(text, ops).unwrap().text
    }

    pub fn load(domain: &str) -> crate::Loaded {
        let tree = crate::tree::MemTree::new("t")
            .with("domain.toml", domain)
            .with("apps/shop/index.html", "hi")
            .with(
                "security/accounts.toml",
                "[users.admin]\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$3g8LTxBToLWYGF26MIvccw$mPeItzmyCRTynzZOK2s1cyWXKYOD+N7RSnZE0QqSWFk\"\n",
            )
            .with("security/policies.toml", "");
        let v = crate::validate(&tree);
        v.loaded
            .unwrap_or_else(|| panic!("{}", v.report.render_human(false)))
    }
}
