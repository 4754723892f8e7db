//! Loading one revision: parse each file (recovering past syntax errors), check every key and
//! value against the classification table, deserialize the typed model, then run the semantic
//! checks. Every problem is collected; nothing stops at the first.

mod walk;

use std::collections::BTreeMap;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Problem, Problems, Report, SourceText};
use crate::fasthash::FastMap;
use crate::model::{AccountsFile, Domain, DomainFile, PoliciesFile};
use crate::settings::{self, FileKind};
use crate::tree::Tree;
use walk::Walker;

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
