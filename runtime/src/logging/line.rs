//! The layer that turns `tracing` events into Steward's log lines, written by hand rather than
//! with `tracing-subscriber`'s `fmt` (large, and not this format): a JEUS line
//! `[YYYY.MM.DD HH:MM:SS][level] [thread] [ID] message` or, for log shippers, one JSON object per
//! line with the time, level, thread, id, message, target, the event's other fields and its spans.

use std::fmt::Debug;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::{Level, Shared, lock};
use crate::clock::Local;

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `[2026.11.24 05:29:53][2] [server1] [SERVER-0010] message`.
    #[default]
    Jeus,
    /// `{"time":"2026-11-24T05:29:53.120+09:00","level":"INFO","thread":"server1",…}`.
    Json,
}

/// Writes the events of Steward's own crates; other crates' events (h2, hyper…) are not ours to
/// print, as before.
pub struct Lines {
    out: Shared,
}

impl Lines {
    pub(super) fn new(out: Shared) -> Lines {
        Lines { out }
    }
}

fn ours(target: &str) -> bool {
    ["runtime", "reconciler", "schema", "steward"]
        .iter()
        .any(|c| target == *c || target.strip_prefix(c).is_some_and(|r| r.starts_with("::")))
}

impl<S> Layer<S> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if ours(m.target()) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, m: &Metadata<'_>, _: Context<'_, S>) -> bool {
        ours(m.target())
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut out = lock(&self.out);
        let thread = fields.thread.as_deref().unwrap_or(&out.thread);
        // The stamp under the lock: lines in the file are in time order.
        let now = Local::now();
        let line = match out.format {
            Format::Jeus => jeus(
                &now.log_stamp(),
                Level::jeus(*meta.level()),
                thread,
                &fields,
            ),
            Format::Json => {
                let spans: Vec<Value> = ctx
                    .event_scope(event)
                    .into_iter()
                    .flat_map(|scope| scope.from_root())
                    .map(|span| {
                        let ext = span.extensions();
                        let mut o = serde_json::Map::new();
                        o.insert("name".into(), span.name().into());
                        for (k, v) in ext.get::<Fields>().map_or(&[][..], |f| &f.other) {
                            o.insert((*k).into(), v.clone());
                        }
                        Value::Object(o)
                    })
                    .collect();
                json(&now.rfc3339_millis(), meta, thread, &fields, &spans)
            }
        };
        out.write_line(&line);
    }
}

/// An event's (or a span's) fields, the known ones apart.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    id: Option<String>,
    thread: Option<String>,
    file: Option<String>,
    line: Option<u64>,
    other: Vec<(&'static str, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let text = |v: Value| match v {
            Value::String(s) => s,
            v => v.to_string(),
        };
        match field.name() {
            "message" => self.message = text(value),
            "id" => self.id = Some(text(value)),
            "thread" => self.thread = Some(text(value)),
            "file" => self.file = Some(text(value)),
            "line" => self.line = value.as_u64(),
            name => self.other.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// `[stamp][level] [thread] [id] message`, then the other fields as ` name=value`.
/// Continuation lines are indented, so one message stays one grep-able block.
fn jeus(stamp: &str, level: u8, thread: &str, f: &Fields) -> String {
    let mut line = format!("[{stamp}][{level}] [{thread}] ");
    if let Some(id) = &f.id {
        line.push_str(&format!("[{id}] "));
    }
    line.push_str(&f.message.trim_end().replace('\n', "\n    "));
    for (name, value) in &f.other {
        match value {
            Value::String(s) => line.push_str(&format!(" {name}={s}")),
            v => line.push_str(&format!(" {name}={v}")),
        }
    }
    line
}

/// One JSON object, keys in a fixed order: time, level, thread, id, message, target, file, line,
/// the event's other fields, spans (outermost first).
fn json(time: &str, meta: &Metadata<'_>, thread: &str, f: &Fields, spans: &[Value]) -> String {
    let mut pairs: Vec<(&str, Value)> = vec![
        ("time", time.into()),
        ("level", meta.level().as_str().into()),
        ("thread", thread.into()),
    ];
    if let Some(id) = &f.id {
        pairs.push(("id", id.as_str().into()));
    }
    pairs.push(("message", f.message.trim_end().into()));
    pairs.push(("target", meta.target().into()));
    if let (Some(file), Some(line)) = (&f.file, f.line) {
        pairs.push(("file", file.as_str().into()));
        pairs.push(("line", line.into()));
    }
    pairs.extend(f.other.iter().map(|(k, v)| (*k, v.clone())));
    if !spans.is_empty() {
        pairs.push(("spans", spans.to_vec().into()));
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jeus_lines_indent_continuations_and_keep_the_id() {
        let f = Fields {
            message: "Receiving failed.\ncause\n".into(),
            id: Some("Launcher-0052".into()),
            ..Fields::default()
        };
        assert_eq!(
            jeus("2026.11.24 05:29:53", 0, "launcher", &f),
            "[2026.11.24 05:29:53][0] [launcher] [Launcher-0052] Receiving failed.\n    cause"
        );
    }

    #[test]
    fn only_our_crates() {
        assert!(ours("runtime::logging") && ours("reconciler") && ours("steward"));
        assert!(!ours("h2::proto") && !ours("runtimes") && !ours("hyper"));
    }
}
