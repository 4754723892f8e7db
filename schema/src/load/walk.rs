//! The key-and-type walk: every key and value of a parsed file checked against the
//! classification table, each problem marking what it makes unknown (a hole), and the places of
//! keys and values recorded for messages.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Cx;
use crate::diag::Problem;
use crate::settings::{FileKind, Kind, Node, PERMISSIONS, is_permission};
use crate::values;

pub(super) struct Walker<'a, 'b> {
    pub(super) file: FileKind,
    pub(super) cx: &'a mut Cx<'b>,
    /// Depth of the table being walked (0: the document).
    pub(super) depth: usize,
    /// What a problem found now makes unknown: a top-level section, or one named item of a
    /// section of named items (`servers.s1`); an empty section for the whole file.
    pub(super) entity: (String, Option<String>),
    pub(super) holes: Vec<(String, Option<String>)>,
}

type Val<'i> = Spanned<DeValue<'i>>;

impl Walker<'_, '_> {
    fn err(&mut self, code: &'static str, span: Range<usize>, msg: String) -> &mut Problem {
        // One entity's problems come together in the walk: comparing with the last suffices.
        if self.holes.last() != Some(&self.entity) {
            self.holes.push(self.entity.clone());
        }
        self.cx
            .problems
            .push(Problem::error(code, self.file.path(), Some(span), msg))
    }

    /// `header`: where the table is named (its key; the whole document for the root), for
    /// problems about the table as a whole.
    pub(super) fn table(
        &mut self,
        node: &Node,
        table: &DeTable<'_>,
        header: Range<usize>,
        path: &mut String,
    ) {
        // Keys an unknown key was taken for (`prot` → `port`): not reported missing as well.
        let mut suggested: Vec<&'static str> = Vec::new();
        let depth = self.depth;
        self.depth += 1;
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            match depth {
                0 => self.entity = (name.to_owned(), None),
                1 if node.any.is_some() => self.entity.1 = Some(name.to_owned()),
                _ => {}
            }
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(name);
            match node.children.get(name) {
                Some(child) => self.entry(child, key.span(), value, path),
                None => match node.any.as_deref() {
                    Some(child) => {
                        if let Err(m) = values::check_ident(name) {
                            self.err("invalid-name", key.span(), m.into());
                        }
                        self.entry(child, key.span(), value, path);
                    }
                    None => {
                        let meant = self.unknown_key(node, name, key.span(), &path[..len]);
                        if let Some(m) = meant
                            && depth == 0
                        {
                            // `[severs.s1]`: what `servers` holds is unknown, not empty.
                            self.holes.push((m.to_owned(), None));
                        }
                        suggested.extend(meant)
                    }
                },
            }
            path.truncate(len);
        }
        self.depth = depth;
        if depth == 1 {
            self.entity.1 = None;
        }
        for (name, child) in &node.children {
            let required = child.setting.is_some_and(|s| s.required)
                || (path.is_empty() && *name == "domain" && self.file == FileKind::Domain);
            if required && !table.contains_key(*name) && !suggested.contains(name) {
                if depth == 0 {
                    self.entity = ((*name).to_owned(), None);
                }
                let msg = if path.is_empty() {
                    format!("missing table `[{name}]`")
                } else {
                    format!("missing key `{name}` in `[{path}]`")
                };
                let example = child.setting.map_or("", |s| example(s.kind));
                let hint = if path.is_empty() {
                    format!("add `[{name}]` with `name = \"domain1\"`")
                } else {
                    format!("add `{name} = {example}`")
                };
                self.err("missing-key", header.clone(), msg).hint = Some(hint);
            }
        }
    }

    /// Reports an unknown key; returns the key it was probably meant to be.
    fn unknown_key(
        &mut self,
        node: &Node,
        name: &str,
        span: Range<usize>,
        parent: &str,
    ) -> Option<&'static str> {
        let candidates: Vec<&'static str> = node.children.keys().copied().collect();
        let place = if parent.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in `[{parent}]`")
        };
        let meant = values::did_you_mean(name, candidates.iter().copied());
        let hint = match meant {
            Some(s) => format!("did you mean `{s}`?"),
            None if candidates.is_empty() => "this table takes no keys".to_owned(),
            None => format!("expected one of: {}", quote_list(&candidates)),
        };
        let p = self.err("unknown-key", span, format!("unknown key `{name}` {place}"));
        p.label = Some("unknown key".into());
        p.hint = Some(hint);
        meant
    }

    fn entry(&mut self, node: &Node, key_span: Range<usize>, value: &Val<'_>, path: &mut String) {
        self.cx
            .record(self.file, path, key_span.clone(), value.span());
        match node.setting {
            Some(setting) => self.value(setting.kind, value, path),
            None => match value.get_ref() {
                DeValue::Table(t) => self.table(node, t, key_span, path),
                other => {
                    let msg = format!("`{path}` must be a table, found {}", other.type_str());
                    self.err("wrong-type", value.span(), msg).hint =
                        Some(format!("write it as a table: `[{path}]`"));
                }
            },
        }
    }

    fn value(&mut self, kind: Kind, value: &Val<'_>, path: &str) {
        let span = value.span();
        let v = value.get_ref();
        let wrong_span = span.clone();
        let wrong = move |w: &mut Self| {
            let msg = format!(
                "`{path}` must be a {}, found {}",
                kind.describe(),
                v.type_str()
            );
            let label = format!("expected {}", kind.describe());
            w.err("wrong-type", wrong_span.clone(), msg).label = Some(label);
        };
        let check_str =
            |w: &mut Self, check: fn(&str) -> Result<(), values::ValueError>| match v.as_str() {
                Some(s) => {
                    if let Err(m) = check(s) {
                        w.err("invalid-value", span.clone(), m.into());
                    }
                }
                None => wrong(w),
            };
        match kind {
            Kind::Str => check_str(self, |_| Ok(())),
            Kind::FsPath => check_str(self, |s| {
                if s.is_empty() {
                    Err("the path is empty".into())
                } else {
                    Ok(())
                }
            }),
            Kind::Ident => check_str(self, values::check_ident),
            Kind::Host => check_str(self, values::check_host),
            Kind::EnvName => check_str(self, values::check_env_name),
            Kind::RepoPath => check_str(self, values::check_repo_path),
            Kind::ContextPath => check_str(self, values::check_context_path),
            Kind::PasswordHash => check_str(self, values::check_password_hash),
            Kind::Cron => check_str(self, |s| crate::timer::Cron::parse(s).map(drop)),
            Kind::TimeZone => check_str(self, |s| crate::timer::time_zone(s).map(drop)),
            Kind::Instant => check_str(self, |s| crate::timer::instant(s).map(drop)),
            Kind::Duration => check_str(self, |s| values::parse_duration(s).map(drop)),
            Kind::SocketAddr => check_str(self, |s| {
                match s.parse::<std::net::SocketAddr>() {
                Ok(a) if a.port() == 0 => Err(format!("`{s}` needs a port from 1 to 65535").into()),
                Ok(_) => Ok(()),
                Err(_) => Err(format!(
                    "`{s}` is not an `ip:port` address; write e.g. `127.0.0.1:9741` or `0.0.0.0:9736`"
                )
                .into()),
            }
            }),
            Kind::IpAddr => check_str(self, |s| {
                s.parse::<std::net::IpAddr>().map(drop).map_err(|_| {
                    format!("`{s}` is not an IP address; write e.g. `0.0.0.0` or `127.0.0.1`")
                        .into()
                })
            }),
            Kind::Enum(options) => match v.as_str() {
                Some(s) if options.contains(&s) => {}
                Some(s) => {
                    let hint = match values::did_you_mean(s, options.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("use one of: {}", quote_list(options)),
                    };
                    let msg = format!("`{s}` is not a valid value for `{path}`");
                    self.err("invalid-value", span, msg).hint = Some(hint);
                }
                None => wrong(self),
            },
            Kind::Bool => {
                if v.as_bool().is_none() {
                    wrong(self);
                }
            }
            Kind::Port => self.int(v, span, path, 1, 65_535, wrong),
            Kind::Int { min, max } => self.int(v, span, path, min, max, wrong),
            Kind::ByteSize => match v {
                DeValue::Integer(_) => self.int(v, span, path, 0, i64::MAX, wrong),
                DeValue::String(s) => {
                    if let Err(m) = values::parse_byte_size(s) {
                        self.err("invalid-value", span, m.into());
                    }
                }
                _ => wrong(self),
            },
            Kind::StrList
            | Kind::IdentList
            | Kind::RepoPathList
            | Kind::PermissionList
            | Kind::ConsumeList => self.list(kind, value, path, wrong),
            Kind::StrMap => match v.as_table() {
                Some(t) => {
                    for (k, item) in t.iter() {
                        let item_path = format!("{path}.{}", k.get_ref());
                        self.cx.record(self.file, &item_path, k.span(), item.span());
                        if path.ends_with("env")
                            && let Err(m) = values::check_env_name(k.get_ref())
                        {
                            self.err("invalid-name", k.span(), m.into());
                        }
                        if item.get_ref().as_str().is_none() {
                            let msg = format!(
                                "`{item_path}` must be a string, found {}",
                                item.get_ref().type_str()
                            );
                            self.err("wrong-type", item.span(), msg).hint =
                                Some("quote the value: `KEY = \"value\"`".into());
                        }
                    }
                }
                None => wrong(self),
            },
        }
    }

    fn int(
        &mut self,
        v: &DeValue<'_>,
        span: Range<usize>,
        path: &str,
        min: i64,
        max: i64,
        wrong: impl Fn(&mut Self),
    ) {
        let Some(i) = v.as_integer() else {
            return wrong(self);
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => {}
            _ => {
                let msg = format!(
                    "`{path}` is out of range: {} is not in {min}..={max}",
                    i.as_str()
                );
                self.err("out-of-range", span, msg).label = Some(format!("must be {min}..={max}"));
            }
        }
    }

    fn list(&mut self, kind: Kind, value: &Val<'_>, path: &str, wrong: impl Fn(&mut Self)) {
        let Some(items) = value.get_ref().as_array() else {
            return wrong(self);
        };
        let mut seen: Vec<(String, Range<usize>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            self.cx
                .record(self.file, &item_path, item.span(), item.span());
            let Some(s) = item.get_ref().as_str() else {
                let msg = format!(
                    "`{item_path}` must be a string, found {}",
                    item.get_ref().type_str()
                );
                self.err("wrong-type", item.span(), msg);
                continue;
            };
            let check = match kind {
                Kind::IdentList => values::check_ident(s),
                Kind::RepoPathList => values::check_repo_path(s),
                Kind::ConsumeList => crate::model::Consume::parse(s).map(drop),
                Kind::PermissionList if !is_permission(s) => {
                    let hint = match values::did_you_mean(s, PERMISSIONS.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!(
                            "use one of: {}, or `messaging:send:` / `messaging:receive:` and `/queue/NAME` or `/topic/NAME` (docs/messaging.md)",
                            quote_list(PERMISSIONS)
                        ),
                    };
                    Err(format!("unknown permission `{s}`; {hint}").into())
                }
                _ => Ok(()),
            };
            if let Err(m) = check {
                self.err("invalid-value", item.span(), m.into());
            }
            if kind != Kind::StrList {
                if let Some((_, first)) = seen.iter().find(|(x, _)| x == s) {
                    let first = first.clone();
                    let p = self.err(
                        "duplicate",
                        item.span(),
                        format!("`{s}` is listed twice in `{path}`"),
                    );
                    p.related = Some((first, "first listed here".into()));
                    p.hint = Some("remove one of them".into());
                }
                seen.push((s.to_owned(), item.span()));
            }
        }
    }
}

fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value of the kind, for "add `key = …`" hints.
fn example(kind: Kind) -> &'static str {
    match kind {
        Kind::SocketAddr => "\"127.0.0.1:9741\"",
        Kind::Port => "8088",
        Kind::Ident => "\"domain1\"",
        Kind::ContextPath => "\"/app\"",
        Kind::RepoPath => "\"apps/app\"",
        Kind::Enum(v) => match v.first() {
            Some(&"static") => "\"static\"",
            _ => "\"…\"",
        },
        Kind::PasswordHash => "\"<output of `steward hash-password`>\"",
        _ => "…",
    }
}
