//! Loading one revision: parse each file (recovering past syntax errors), check every key and
//! value against the classification table, deserialize the typed model, then run the semantic
//! checks. Every problem is collected; nothing stops at the first.
//!
//! Over 600 lines: the key-and-type walk is one pass with the parsing it reports on (both work on
//! the same spans and problem list); the semantic checks are in `validate`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Problem, Problems, Report, SourceText};
use crate::fasthash::FastMap;
use crate::model::{AccountsFile, Domain, DomainFile, PoliciesFile};
use crate::settings::{self, FileKind, Kind, Node, PERMISSIONS};
use crate::tree::Tree;
use crate::values;

/// Where each key and value of the revision was written, by concrete path
/// (`servers.s1.web.listeners.http.port`; array elements as `targets[0]`).
///
/// Only problems need positions, and a valid revision has none: the map is built on the first
/// question, by walking the files again, so validating a valid revision never pays for it.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    /// The files that parsed, to walk again on demand.
    sources: Vec<(FileKind, std::sync::Arc<str>)>,
    map: std::sync::OnceLock<SpanMap>,
}

type SpanMap = FastMap<(FileKind, String), Place>;

#[derive(Debug, Clone)]
struct Place {
    key: Range<usize>,
    value: Range<usize>,
}

impl Spans {
    fn map(&self) -> &SpanMap {
        self.map.get_or_init(|| {
            let mut map = SpanMap::default();
            for (file, text) in &self.sources {
                map.reserve(text.len() / 24);
                let (table, _) = DeTable::parse_recoverable(text);
                let mut cx = Cx {
                    problems: Problems::default(),
                    spans: Some(&mut map),
                };
                let mut walker = Walker {
                    file: *file,
                    cx: &mut cx,
                    depth: 0,
                    entity: (String::new(), None),
                    holes: Vec::new(),
                };
                let mut p = String::new();
                walker.table(settings::tree(*file), table.get_ref(), table.span(), &mut p);
            }
            map
        })
    }

    /// The span of the value at `path`, else of the nearest enclosing key that was written.
    pub fn value(&self, file: FileKind, path: &str) -> Option<Range<usize>> {
        self.find(file, path).map(|(exact, p)| {
            if exact {
                p.value.clone()
            } else {
                p.key.clone()
            }
        })
    }

    fn find(&self, file: FileKind, path: &str) -> Option<(bool, &Place)> {
        let map = self.map();
        let mut p = path;
        let mut exact = true;
        loop {
            if let Some(place) = map.get(&(file, p.to_owned())) {
                return Some((exact, place));
            }
            exact = false;
            p = &p[..p.rfind(['.', '['])?];
        }
    }
}

pub(crate) use crate::validate::Holes;

/// A revision that passed validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub domain: Domain,
    pub spans: Spans,
    /// Content fingerprint of each application (its source and libraries), for the planner.
    pub content: BTreeMap<String, String>,
    /// Human name of the revision.
    pub revision: String,
}

/// The outcome of validating a revision: the report always, the model when there is no error.
#[derive(Debug)]
pub struct Validation {
    pub loaded: Option<Loaded>,
    pub report: Report,
}

/// Validates one revision of the domain repository.
pub fn validate(tree: &dyn Tree) -> Validation {
    let mut report = Report {
        revision: tree.label(),
        ..Report::default()
    };
    let mut spans = Spans::default();
    let mut cx = Cx {
        problems: Problems::default(),
        spans: None,
    };
    let mut holes = Holes::default();
    let config: Option<DomainFile> = load_file(
        tree,
        FileKind::Domain,
        &mut report,
        &mut cx,
        &mut spans,
        &mut holes,
    );
    let accounts: Option<AccountsFile> = load_file(
        tree,
        FileKind::Accounts,
        &mut report,
        &mut cx,
        &mut spans,
        &mut holes,
    );
    let policies: Option<PoliciesFile> = load_file(
        tree,
        FileKind::Policies,
        &mut report,
        &mut cx,
        &mut spans,
        &mut holes,
    );
    let mut problems = cx.problems;
    let complete = holes.is_empty();
    // The semantic checks run on whatever parsed and matched the schema; what did not is a
    // hole they know of, so they never report a consequence of a problem already reported.
    let mut config = config.unwrap_or_default();
    for server in config.servers.values_mut() {
        server.apply_engine_defaults();
    }
    let domain = Domain {
        config,
        accounts: accounts.unwrap_or_default(),
        policies: policies.unwrap_or_default(),
    };
    let content = crate::validate::check(&domain, &spans, &holes, tree, &mut problems);
    let loaded = complete.then(|| Loaded {
        domain,
        spans,
        content,
        revision: tree.label(),
    });
    (report.problems, report.omitted) = problems.finish();
    let loaded = loaded.filter(|_| report.is_valid());
    Validation { loaded, report }
}

struct Cx<'a> {
    problems: Problems,
    /// Where to record spans; `None` on the checking pass (see [`Spans`]).
    spans: Option<&'a mut SpanMap>,
}

impl Cx<'_> {
    fn record(&mut self, file: FileKind, path: &str, key: Range<usize>, value: Range<usize>) {
        if let Some(map) = self.spans.as_deref_mut() {
            map.insert((file, path.to_owned()), Place { key, value });
        }
    }
}

fn load_file<T: DeserializeOwned>(
    tree: &dyn Tree,
    file: FileKind,
    report: &mut Report,
    cx: &mut Cx<'_>,
    spans: &mut Spans,
    holes: &mut Holes,
) -> Option<T> {
    let path = file.path();
    // Until it parses, the whole file is unknown.
    holes.file(file);
    let bytes = match tree.read(path) {
        Ok(Some(b)) => b,
        Ok(None) => {
            let hint = match file {
                FileKind::Domain => {
                    "every domain repository has `domain.toml` at its root; `steward init` creates one from the example"
                }
                _ => {
                    "the domain's security configuration is required; copy it from `examples/domain1/security/`"
                }
            };
            cx.problems.push(
                Problem::error("missing-file", path, None, format!("`{path}` is missing"))
                    .hint(hint),
            );
            return None;
        }
        Err(e) => {
            cx.problems.push(Problem::error(
                "unreadable",
                path,
                None,
                format!("cannot read `{path}`: {e}"),
            ));
            return None;
        }
    };
    if bytes.len() > crate::syntax::MAX_FILE_SIZE {
        cx.problems.push(
            Problem::error(
                "too-large",
                path,
                None,
                format!(
                    "`{path}` is {} bytes, more than the {} MiB a domain file may have",
                    bytes.len(),
                    crate::syntax::MAX_FILE_SIZE >> 20
                ),
            )
            .hint("a domain of thousands of servers fits in a few MiB; check that this is the file you meant to commit"),
        );
        return None;
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            report.files.insert(path.to_owned(), SourceText::new(lossy));
            cx.problems.push(
                Problem::error(
                    "not-utf8",
                    path,
                    Some(at..at + 1),
                    format!("`{path}` is not UTF-8 text"),
                )
                .hint("save the file as UTF-8"),
            );
            return None;
        }
    };
    let parsed = crate::syntax::parse(&text, path, &mut cx.problems);
    let typed = match parsed {
        Some(mut table) => {
            let mut walker = Walker {
                file,
                cx: &mut *cx,
                depth: 0,
                entity: (String::new(), None),
                holes: Vec::new(),
            };
            let mut p = String::new();
            walker.table(settings::tree(file), table.get_ref(), table.span(), &mut p);
            let found = std::mem::take(&mut walker.holes);
            spans
                .sources
                .push((file, std::sync::Arc::from(text.as_str())));
            if found.iter().any(|(section, _)| section.is_empty()) {
                None
            } else {
                holes.parsed(file);
                // What had a problem is left out, so that the rest deserializes.
                for (section, name) in &found {
                    let t = table.get_mut();
                    match name {
                        None => {
                            t.remove(section.as_str());
                        }
                        Some(n) => {
                            if let Some(DeValue::Table(items)) =
                                t.get_mut(section.as_str()).map(|v| v.get_mut())
                            {
                                items.remove(n.as_str());
                            }
                        }
                    }
                    holes.entity(file, section, name.as_deref());
                }
                if file == FileKind::Domain && !table.get_ref().contains_key("domain") {
                    // Required by the model, unused by the checks.
                    let mut section = DeTable::new();
                    section.insert(
                        Spanned::new(0..0, "name".into()),
                        Spanned::new(0..0, DeValue::String("-".into())),
                    );
                    table.get_mut().insert(
                        Spanned::new(0..0, "domain".into()),
                        Spanned::new(0..0, DeValue::Table(section)),
                    );
                }
                match T::deserialize(toml::de::Deserializer::from(table)) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        holes.file(file);
                        // The walk accepted what serde refused: report it rather than panic.
                        if found.is_empty() {
                            cx.problems.push(Problem::error(
                                "invalid",
                                path,
                                e.span(),
                                e.message().trim().to_owned(),
                            ));
                        }
                        None
                    }
                }
            }
        }
        None => None,
    };
    report.files.insert(path.to_owned(), SourceText::new(text));
    typed
}

struct Walker<'a, 'b> {
    file: FileKind,
    cx: &'a mut Cx<'b>,
    /// Depth of the table being walked (0: the document).
    depth: usize,
    /// What a problem found now makes unknown: a top-level section, or one named item of a
    /// section of named items (`servers.s1`); an empty section for the whole file.
    entity: (String, Option<String>),
    holes: Vec<(String, Option<String>)>,
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
    fn table(&mut self, node: &Node, table: &DeTable<'_>, header: Range<usize>, path: &mut String) {
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
                            self.err("invalid-name", key.span(), m);
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
        let check_str = |w: &mut Self, check: fn(&str) -> Result<(), String>| match v.as_str() {
            Some(s) => {
                if let Err(m) = check(s) {
                    w.err("invalid-value", span.clone(), m);
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
            Kind::Duration => check_str(self, |s| values::parse_duration(s).map(drop)),
            Kind::SocketAddr => check_str(self, |s| match s.parse::<std::net::SocketAddr>() {
                Ok(a) if a.port() == 0 => Err(format!("`{s}` needs a port from 1 to 65535")),
                Ok(_) => Ok(()),
                Err(_) => Err(format!(
                    "`{s}` is not an `ip:port` address; write e.g. `127.0.0.1:9741` or `0.0.0.0:9736`"
                )),
            }),
            Kind::IpAddr => check_str(self, |s| {
                s.parse::<std::net::IpAddr>().map(drop).map_err(|_| {
                    format!("`{s}` is not an IP address; write e.g. `0.0.0.0` or `127.0.0.1`")
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
                        self.err("invalid-value", span, m);
                    }
                }
                _ => wrong(self),
            },
            Kind::StrList | Kind::IdentList | Kind::RepoPathList | Kind::PermissionList => {
                self.list(kind, value, path, wrong)
            }
            Kind::StrMap => match v.as_table() {
                Some(t) => {
                    for (k, item) in t.iter() {
                        let item_path = format!("{path}.{}", k.get_ref());
                        self.cx.record(self.file, &item_path, k.span(), item.span());
                        if path.ends_with("env")
                            && let Err(m) = values::check_env_name(k.get_ref())
                        {
                            self.err("invalid-name", k.span(), m);
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
                Kind::PermissionList if !PERMISSIONS.contains(&s) => {
                    let hint = match values::did_you_mean(s, PERMISSIONS.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("use one of: {}", quote_list(PERMISSIONS)),
                    };
                    Err(format!("unknown permission `{s}`; {hint}"))
                }
                _ => Ok(()),
            };
            if let Err(m) = check {
                self.err("invalid-value", item.span(), m);
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
