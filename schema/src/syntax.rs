//! Parsing one file into a table, reporting every syntax error while holding only a bounded
//! number of them: a file of a million broken lines costs the memory of its tokens and of
//! [`MAX_PROBLEMS`] problems, not of a million error values.

use toml::Spanned;
use toml::de::DeTable;
use toml_parser::decoder::Encoding;
use toml_parser::parser::{Event, EventKind, EventReceiver, RecursionGuard, ValidateWhitespace};
use toml_parser::{ErrorSink, Expected, ParseError, Source, Span};

use crate::diag::{MAX_PROBLEMS, Problem, Problems};

/// The largest domain file read, in bytes: five times the 1,000-server, 5,000-application
/// domain of the benchmarks. Parsing takes up to about 100 times a file's size in memory
/// (tokens, events, the table, and the `toml` crate's list of duplicate keys), and the validator
/// runs inside the Master's push hook, so its input is bounded.
pub const MAX_FILE_SIZE: usize = 4 << 20;

/// Nesting the parser accepts (as the `toml` crate's own limit).
const MAX_DEPTH: u32 = 80;

/// The table of `text`, or `None` after reporting its syntax errors.
pub(crate) fn parse<'i>(
    text: &'i str,
    path: &str,
    problems: &mut Problems,
) -> Option<Spanned<DeTable<'i>>> {
    // A valid file is parsed once; the parse that keeps a single error holds no list.
    if let Ok(table) = DeTable::parse(text) {
        return Some(table);
    }
    let mut sink = Bounded {
        path,
        problems,
        seen: 0,
    };
    let source = Source::new(text);
    let tokens = source.lex().into_vec();
    let mut decode = Decode { source };
    let mut ws = ValidateWhitespace::new(&mut decode, source);
    let mut receiver = RecursionGuard::new(&mut ws, MAX_DEPTH);
    toml_parser::parser::parse_document(&tokens, &mut receiver, &mut sink);
    if sink.seen == 0 {
        // Keys and values are well formed; what failed is a duplicate key or a date, which
        // only building the table finds. Each costs at least one key or value of the file.
        let (_, errors) = DeTable::parse_recoverable(text);
        for e in errors {
            problems.push(syntax(path, e.span(), e.message()));
        }
    }
    None
}

fn syntax(path: &str, span: Option<std::ops::Range<usize>>, message: &str) -> Problem {
    Problem::error(
        "syntax",
        path,
        Some(span.unwrap_or(0..0)),
        format!("TOML syntax: {}", message.trim()),
    )
    .label("here")
}

/// Decodes each key and value as the table builder does, for its errors (an empty key, a bad
/// escape, a malformed number), without building anything.
struct Decode<'i> {
    source: Source<'i>,
}

impl EventReceiver for Decode<'_> {
    fn simple_key(&mut self, span: Span, kind: Option<Encoding>, error: &mut dyn ErrorSink) {
        if let Some(raw) = self
            .source
            .get(Event::new_unchecked(EventKind::SimpleKey, kind, span))
        {
            raw.decode_key(&mut (), error);
        }
    }

    fn scalar(&mut self, span: Span, kind: Option<Encoding>, error: &mut dyn ErrorSink) {
        if let Some(raw) = self
            .source
            .get(Event::new_unchecked(EventKind::Scalar, kind, span))
        {
            let _ = raw.decode_scalar(&mut (), error);
        }
    }
}

/// Reports the parser's errors as problems; past [`MAX_PROBLEMS`] only counts them, without
/// building their messages (the parser reports them in file order).
struct Bounded<'a> {
    path: &'a str,
    problems: &'a mut Problems,
    seen: usize,
}

impl ErrorSink for Bounded<'_> {
    fn report_error(&mut self, error: ParseError) {
        self.seen += 1;
        if self.seen > MAX_PROBLEMS {
            self.problems.omit_error();
            return;
        }
        let span = error.unexpected().map(|s| s.start()..s.end());
        self.problems
            .push(syntax(self.path, span, &describe(&error)));
    }
}

/// The parser's message, worded as the `toml` crate words it.
fn describe(error: &ParseError) -> String {
    let mut message = error.description().to_owned();
    if let Some(expected) = error.expected() {
        message.push_str(", expected ");
        if expected.is_empty() {
            message.push_str("nothing");
        }
        for (i, e) in expected.iter().enumerate() {
            if i > 0 {
                message.push_str(", ");
            }
            match e {
                Expected::Literal("\n") => message.push_str("newline"),
                Expected::Literal("`") => message.push_str("'`'"),
                Expected::Literal(s) if s.chars().all(|c| c.is_ascii_control()) => {
                    message.push_str(&format!("`{}`", s.escape_debug()))
                }
                Expected::Literal(s) => message.push_str(&format!("`{s}`")),
                Expected::Description(s) => message.push_str(s),
                _ => message.push_str("etc"),
            }
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(text: &str) -> (Vec<String>, usize) {
        let mut problems = Problems::default();
        assert!(parse(text, "f.toml", &mut problems).is_none());
        let (list, omitted) = problems.finish();
        (
            list.into_iter().map(|p| p.message).collect(),
            omitted.total(),
        )
    }

    #[test]
    fn worded_as_the_toml_crate_words_it_in_file_order() {
        for text in [
            "a = \"x\nb = 1\n",
            "= = =\n",
            "a = [1,\n",
            "[a\n",
            "a = 1 2\n",
            "a = \"\\q\"\n",
        ] {
            let mut problems = Problems::default();
            assert!(parse(text, "f.toml", &mut problems).is_none(), "{text:?}");
            let (ours, _) = problems.finish();
            let (_, theirs) = DeTable::parse_recoverable(text);
            for e in &theirs {
                let m = format!("TOML syntax: {}", e.message().trim());
                assert!(
                    ours.iter().any(|p| p.message == m),
                    "{text:?}: {m} not in {ours:?}"
                );
            }
            let starts: Vec<usize> = ours
                .iter()
                .filter_map(|p| p.span.as_ref())
                .map(|s| s.start)
                .collect();
            assert!(starts.is_sorted(), "{text:?}: {ours:?}");
        }
    }

    #[test]
    fn table_errors_are_reported() {
        let (m, _) = messages("a = 1\na = 2\n");
        assert_eq!(m, ["TOML syntax: duplicate key"]);
    }

    #[test]
    fn many_errors_are_counted_not_kept() {
        let text = "= = =\n".repeat(10_000);
        let (m, omitted) = messages(&text);
        assert_eq!(m.len(), MAX_PROBLEMS);
        // Per line: an empty key, an extra `=`, an unquoted value, and no newline after it.
        assert_eq!(m.len() + omitted, 40_000);
    }
}
