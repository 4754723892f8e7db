//! Problems found in a domain revision and how they are shown: as cargo does (annotate-snippets),
//! as one line each (`file:line:col: error: …`, for Git hooks), as versioned JSON, or as GitHub
//! workflow commands.
//!
//! Longer than most files because the four renderings share one bounded problem list and one
//! redacted, windowed view of the source; splitting them would spread that across files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::OnceLock;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;

use crate::redact::{self, Redacted};

/// The JSON output's version. Bump on any incompatible change to its shape.
pub const FORMAT_VERSION: u32 = 1;

/// How many problems a report keeps and shows: the first ones in file order. The rest are only
/// counted ([`Report::omitted`]), so a file of a million mistakes costs no more memory or output
/// than one of two hundred. Fixing the first ones usually fixes many of the rest.
pub const MAX_PROBLEMS: usize = 200;

/// How many lines of a problem's span its snippet shows; a span over a whole table is cut.
const SNIPPET_LINES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem, located in a file of the revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub severity: Severity,
    /// A stable kebab-case identifier (`unknown-key`, `port-conflict`, …).
    pub code: &'static str,
    pub message: String,
    pub file: String,
    /// Byte range in the file; `None` for problems about a file as a whole.
    pub span: Option<Range<usize>>,
    /// Said at the caret.
    pub label: Option<String>,
    pub hint: Option<String>,
    /// A second place in the same file that the problem involves (the first of two duplicates).
    pub related: Option<(Range<usize>, String)>,
}

impl Problem {
    pub fn new(
        severity: Severity,
        code: &'static str,
        file: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            severity,
            code,
            message: message.into(),
            file: file.to_owned(),
            span,
            label: None,
            hint: None,
            related: None,
        }
    }

    pub fn error(
        code: &'static str,
        file: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        Problem::new(Severity::Error, code, file, span, message)
    }

    pub fn warning(
        code: &'static str,
        file: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        Problem::new(Severity::Warning, code, file, span, message)
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn related(mut self, span: Option<Range<usize>>, label: impl Into<String>) -> Self {
        if let Some(span) = span {
            self.related = Some((span, label.into()));
        }
        self
    }
}

/// Problems kept (at most [`MAX_PROBLEMS`], the first in file order) and the count of the rest.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
    omitted: Omitted,
}

/// Problems found but not kept, by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Omitted {
    pub errors: usize,
    pub warnings: usize,
}

impl Omitted {
    pub fn total(self) -> usize {
        self.errors + self.warnings
    }

    fn count(&mut self, p: &Problem) {
        match p.severity {
            Severity::Error => self.errors += 1,
            Severity::Warning => self.warnings += 1,
        }
    }
}

impl Problems {
    /// Adds a problem; the caller may still complete it through the reference. Keeps memory
    /// bounded by dropping all but the first [`MAX_PROBLEMS`] whenever twice as many are held.
    pub fn push(&mut self, p: Problem) -> &mut Problem {
        if self.list.len() >= 2 * MAX_PROBLEMS {
            self.compact();
        }
        let at = self.list.len();
        self.list.push(p);
        &mut self.list[at]
    }

    /// Counts an error that comes after at least [`MAX_PROBLEMS`] others already pushed (so it
    /// would not be kept), without the cost of building it.
    pub fn omit_error(&mut self) {
        self.omitted.errors += 1;
    }

    fn compact(&mut self) {
        // Problems about a whole file (missing, unreadable, no users) are few and each one
        // matters, so they are kept before any other.
        self.list.sort_by_key(|p| p.span.is_some());
        let whole = self.list.partition_point(|p| p.span.is_none());
        sort_problems(&mut self.list[whole..]);
        if self.list.len() > MAX_PROBLEMS.max(whole) {
            for p in self.list.drain(MAX_PROBLEMS.max(whole)..) {
                self.omitted.count(&p);
            }
        }
    }

    /// The kept problems in file order, and the count of the others.
    pub fn finish(mut self) -> (Vec<Problem>, Omitted) {
        self.compact();
        sort_problems(&mut self.list);
        (self.list, self.omitted)
    }
}

/// File order, then position; problems about a whole file first. Stable, so problems found at
/// one place keep the order they were found in.
fn sort_problems(list: &mut [Problem]) {
    list.sort_by(|a, b| {
        (&a.file, a.span.as_ref().map(|s| s.start), a.severity).cmp(&(
            &b.file,
            b.span.as_ref().map(|s| s.start),
            b.severity,
        ))
    });
}

/// A file's text with its line starts, for turning byte offsets into `line:col`.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub text: String,
    line_starts: Vec<usize>,
    /// What must not be shown (see [`redact`]); found on first use, as only a report with
    /// problems shows source text.
    secrets: OnceLock<Vec<Range<usize>>>,
}

impl SourceText {
    pub fn new(text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceText {
            text,
            line_starts,
            secrets: OnceLock::new(),
        }
    }

    fn secrets(&self) -> &[Range<usize>] {
        self.secrets
            .get_or_init(|| redact::secret_ranges(&self.text))
    }

    /// 0-based index of the line holding `offset`.
    fn line_index(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|&s| s <= offset.min(self.text.len()))
            .saturating_sub(1)
    }

    /// Byte range of the 0-based line `index`, with its newline.
    fn line_range(&self, index: usize) -> Range<usize> {
        let start = self
            .line_starts
            .get(index)
            .copied()
            .unwrap_or(self.text.len());
        let end = self
            .line_starts
            .get(index + 1)
            .copied()
            .unwrap_or(self.text.len());
        start..end
    }

    /// The text of lines `first..=last` (0-based) with secret values replaced.
    fn shown(&self, first: usize, last: usize) -> Redacted {
        let window = self.line_range(first).start..self.line_range(last).end;
        Redacted::new(&self.text, window, self.secrets())
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_index(offset);
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    /// The text of the 1-based line, without its newline, secret values replaced.
    pub fn line(&self, line: usize) -> String {
        let i = line.saturating_sub(1);
        let mut shown = self.shown(i, i).text;
        let len = shown.trim_end_matches(['\n', '\r']).len();
        shown.truncate(len);
        shown
    }

    /// A snippet of the lines around `span` (and `related`, when it is near), for
    /// annotate-snippets: only those lines, never the whole file, so rendering a problem costs
    /// the same in a small file as in a large one.
    fn snippet<'a>(
        &self,
        path: &'a str,
        span: &Range<usize>,
        label: Option<&'a str>,
        related: Option<(&Range<usize>, &'a str)>,
    ) -> Vec<Snippet<'a, annotate_snippets::Annotation<'a>>> {
        let cut = |span: &Range<usize>| {
            let span = clamp(span, &self.text);
            let first = self.line_index(span.start);
            let last = self
                .line_index(span.end.saturating_sub(1).max(span.start))
                .min(first + SNIPPET_LINES - 1);
            (span, first, last)
        };
        let (span, first, last) = cut(span);
        // (first line, last line, annotations as (span, primary, label)) of each snippet.
        type Ann<'a> = (Range<usize>, bool, Option<&'a str>);
        let mut groups: Vec<(usize, usize, Vec<Ann<'a>>)> =
            vec![(first, last, vec![(span, true, label)])];
        if let Some((r, rlabel)) = related {
            let (r, rfirst, rlast) = cut(r);
            // Near enough to show in one snippet: the lines between are few.
            if rlast + SNIPPET_LINES >= first && rfirst <= last + SNIPPET_LINES {
                let g = &mut groups[0];
                g.0 = g.0.min(rfirst);
                g.1 = g.1.max(rlast);
                g.2.push((r, false, Some(rlabel)));
            } else {
                // The primary snippet stays first: its location is the one in the `-->` line.
                groups.push((rfirst, rlast, vec![(r, false, Some(rlabel))]));
            }
        }
        groups
            .into_iter()
            .map(|(first, last, anns)| {
                let shown = self.shown(first, last);
                let window_end = shown.text.len();
                let anns: Vec<_> = anns
                    .into_iter()
                    .map(|(span, primary, label)| {
                        let start = shown.map(span.start, false);
                        let end = shown.map(span.end, true).clamp(start, window_end);
                        let kind = if primary {
                            AnnotationKind::Primary
                        } else {
                            AnnotationKind::Context
                        };
                        let ann = kind.span(clamp(&(start..end), &shown.text));
                        match label {
                            Some(l) => ann.label(l),
                            None => ann,
                        }
                    })
                    .collect();
                Snippet::source(shown.text)
                    .line_start(first + 1)
                    .path(path)
                    .annotations(anns)
            })
            .collect()
    }
}

/// Everything found in one revision.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The revision, as a human reads it (`1a2b3c4`, `working tree`).
    pub revision: String,
    pub files: BTreeMap<String, SourceText>,
    /// The first [`MAX_PROBLEMS`] problems, in file order.
    pub problems: Vec<Problem>,
    /// Problems found beyond those.
    pub omitted: Omitted,
}

/// A located problem, as the JSON output carries it.
#[derive(Debug, Serialize)]
struct JsonProblem<'a> {
    severity: Severity,
    code: &'a str,
    message: &'a str,
    file: &'a str,
    line: Option<usize>,
    column: Option<usize>,
    end_line: Option<usize>,
    end_column: Option<usize>,
    source_line: Option<String>,
    hint: Option<&'a str>,
}

impl Report {
    /// Errors found, shown or not.
    pub fn errors(&self) -> usize {
        self.omitted.errors
            + self
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count()
    }

    /// Warnings found, shown or not.
    pub fn warnings(&self) -> usize {
        self.omitted.warnings
            + self
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Warning)
                .count()
    }

    pub fn is_valid(&self) -> bool {
        self.errors() == 0
    }

    /// `… and 1,234 more problems (not shown)`, when some were left out.
    pub fn omitted_line(&self) -> Option<String> {
        let n = self.omitted.total();
        (n > 0).then(|| {
            format!(
                "… and {} more problem{} (not shown; fix the first {} and run again)",
                thousands(n),
                if n == 1 { "" } else { "s" },
                self.problems.len()
            )
        })
    }

    fn start(&self, p: &Problem) -> Option<(usize, usize)> {
        let src = self.files.get(&p.file)?;
        p.span.as_ref().map(|s| src.position(s.start))
    }

    /// `file:line:col` of a problem (`file` alone when it has no position).
    pub fn location(&self, p: &Problem) -> String {
        match self.start(p) {
            Some((l, c)) => format!("{}:{l}:{c}", p.file),
            None => p.file.clone(),
        }
    }

    /// Cargo-style rendering of every problem kept, then a summary line.
    pub fn render_human(&self, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let mut out = String::new();
        for p in &self.problems {
            let level = match p.severity {
                Severity::Error => Level::ERROR,
                Severity::Warning => Level::WARNING,
            };
            let title = level.primary_title(p.message.as_str()).id(p.code);
            let mut groups = Vec::new();
            let src = self.files.get(&p.file);
            match (src, &p.span) {
                (Some(src), Some(span)) => {
                    let snippets = src.snippet(
                        p.file.as_str(),
                        span,
                        p.label.as_deref(),
                        p.related.as_ref().map(|(r, l)| (r, l.as_str())),
                    );
                    groups.push(title.elements(snippets));
                }
                _ => groups.push(title.element(annotate_snippets::Origin::path(p.file.as_str()))),
            }
            if let Some(h) = &p.hint {
                groups.push(Group::with_title(Level::HELP.secondary_title(h.as_str())));
            }
            out.push_str(&renderer.render(&groups));
            out.push_str("\n\n");
        }
        if let Some(more) = self.omitted_line() {
            out.push_str(&more);
            out.push_str("\n\n");
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// One line per problem: `domain.toml:12:5: error[unknown-key]: … (help: …)`.
    pub fn render_short(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let _ = write!(
                out,
                "{}: {}[{}]: {}",
                self.location(p),
                p.severity.as_str(),
                p.code,
                p.message
            );
            if let Some(h) = &p.hint {
                let _ = write!(out, " (help: {h})");
            }
            out.push('\n');
        }
        if let Some(more) = self.omitted_line() {
            out.push_str(&more);
            out.push('\n');
        }
        out
    }

    pub fn summary(&self) -> String {
        let (e, w) = (self.errors(), self.warnings());
        let plural = |n: usize, s: &str| format!("{n} {s}{}", if n == 1 { "" } else { "s" });
        if e > 0 {
            format!(
                "error: {} is invalid: {}, {}",
                self.revision,
                plural(e, "error"),
                plural(w, "warning")
            )
        } else if w > 0 {
            format!("{} is valid, with {}", self.revision, plural(w, "warning"))
        } else {
            format!("{} is valid", self.revision)
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let problems: Vec<JsonProblem<'_>> = self
            .problems
            .iter()
            .map(|p| {
                let src = self.files.get(&p.file);
                let start = self.start(p);
                let end = src.zip(p.span.as_ref()).map(|(s, r)| s.position(r.end));
                JsonProblem {
                    severity: p.severity,
                    code: p.code,
                    message: &p.message,
                    file: &p.file,
                    line: start.map(|s| s.0),
                    column: start.map(|s| s.1),
                    end_line: end.map(|e| e.0),
                    end_column: end.map(|e| e.1),
                    source_line: src.zip(start).map(|(s, (l, _))| s.line(l)),
                    hint: p.hint.as_deref(),
                }
            })
            .collect();
        serde_json::json!({
            "format_version": FORMAT_VERSION,
            "revision": self.revision,
            "valid": self.is_valid(),
            "errors": self.errors(),
            "warnings": self.warnings(),
            "problems": problems,
            "omitted": self.omitted.total(),
        })
    }

    /// GitHub Actions workflow commands: each problem becomes an annotation on the PR.
    pub fn render_github(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let mut props = format!("file={}", gh_prop(&p.file));
            if let (Some(src), Some(span)) = (self.files.get(&p.file), &p.span) {
                let (l, c) = src.position(span.start);
                let (el, ec) = src.position(span.end);
                let _ = write!(props, ",line={l},col={c},endLine={el}");
                if el == l {
                    let _ = write!(props, ",endColumn={ec}");
                }
            }
            let _ = write!(props, ",title={}", gh_prop(&format!("steward {}", p.code)));
            let mut msg = p.message.clone();
            if let Some(h) = &p.hint {
                msg.push_str("\nhelp: ");
                msg.push_str(h);
            }
            let _ = writeln!(out, "::{} {props}::{}", p.severity.as_str(), gh_data(&msg));
        }
        if let Some(more) = self.omitted_line() {
            let _ = writeln!(out, "::notice title=steward::{}", gh_data(&more));
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }
}

fn clamp(span: &Range<usize>, text: &str) -> Range<usize> {
    let mut start = span.start.min(text.len());
    let mut end = span.end.clamp(start, text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    while !text.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

/// `49800` as `49,800`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn gh_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn gh_prop(s: &str) -> String {
    gh_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let s = SourceText::new("a = 1\nné = \"x\"\n".into());
        assert_eq!(s.position(0), (1, 1));
        assert_eq!(s.position(6), (2, 1));
        // `=` after the two-byte `é`
        assert_eq!(s.position(10), (2, 4));
        assert_eq!(s.line(2), "né = \"x\"");
    }

    #[test]
    fn github_escapes() {
        assert_eq!(gh_prop("a:b,c%"), "a%3Ab%2Cc%25");
        assert_eq!(gh_data("a\nb"), "a%0Ab");
    }
}
