//! Problems found in a domain revision and how they are shown: as cargo does (annotate-snippets),
//! as one line each (`file:line:col: error: …`, for Git hooks), as versioned JSON, or as GitHub
//! workflow commands.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;

/// The JSON output's version. Bump on any incompatible change to its shape.
pub const FORMAT_VERSION: u32 = 1;

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
    pub fn error(
        code: &'static str,
        file: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Error,
            code,
            message: message.into(),
            file: file.to_owned(),
            span,
            label: None,
            hint: None,
            related: None,
        }
    }

    pub fn warning(
        code: &'static str,
        file: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(code, file, span, message)
        }
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

/// A file's text with its line starts, for turning byte offsets into `line:col`.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceText {
    pub fn new(text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceText { text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    /// The text of the 1-based line, without its newline.
    pub fn line(&self, line: usize) -> &str {
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches(['\n', '\r'])
    }
}

/// Everything found in one revision.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The revision, as a human reads it (`1a2b3c4`, `working tree`).
    pub revision: String,
    pub files: BTreeMap<String, SourceText>,
    pub problems: Vec<Problem>,
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
    source_line: Option<&'a str>,
    hint: Option<&'a str>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }

    pub fn is_valid(&self) -> bool {
        self.errors() == 0
    }

    /// Problems in file order, then position.
    pub fn sort(&mut self) {
        self.problems.sort_by(|a, b| {
            (&a.file, a.span.as_ref().map(|s| s.start), a.severity).cmp(&(
                &b.file,
                b.span.as_ref().map(|s| s.start),
                b.severity,
            ))
        });
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

    /// Cargo-style rendering of every problem, then a summary line.
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
                    let span = clamp(span, &src.text);
                    let mut ann = AnnotationKind::Primary.span(span);
                    if let Some(l) = &p.label {
                        ann = ann.label(l.as_str());
                    }
                    let mut snippet = Snippet::source(src.text.as_str())
                        .path(p.file.as_str())
                        .annotation(ann);
                    if let Some((rspan, rlabel)) = &p.related {
                        snippet = snippet.annotation(
                            AnnotationKind::Context
                                .span(clamp(rspan, &src.text))
                                .label(rlabel.as_str()),
                        );
                    }
                    groups.push(title.element(snippet));
                }
                _ => groups.push(title.element(annotate_snippets::Origin::path(p.file.as_str()))),
            }
            if let Some(h) = &p.hint {
                groups.push(Group::with_title(Level::HELP.secondary_title(h.as_str())));
            }
            out.push_str(&renderer.render(&groups));
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
