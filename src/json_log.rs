//! The JSON log line, written directly.
//!
//! tracing-subscriber's JSON formatter collects an event's fields into a map
//! of `serde_json::Value`s and parses the current span's stored JSON back
//! into values for every line. On the 429 path, whose `rate-limit` line the
//! design requires for every refusal, that formatting was a fifth of the
//! API's work (`idemq bench limited`: 0.74 of `/healthz` with it, 0.86 with
//! the plain-text formatter, 0.87 without the line). This formatter writes
//! the same shape as tracing-subscriber's
//! `.json().flatten_event(true).with_span_list(true)` — `timestamp`, `level`,
//! the event's fields (`message` first), `target`, `span` with the current
//! span's fields and `name`, and `spans`, every enclosing span root first
//! (left out when the line is inside one span only: it would repeat `span`) —
//! escaping strings itself and copying the spans' stored JSON as it is. A
//! test below compares its lines with tracing-subscriber's.
use std::fmt::{self, Write as _};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{
    fmt::{
        format::{JsonFields, Writer},
        FmtContext, FormatEvent, FormattedFields,
    },
    registry::LookupSpan,
};

#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Written straight into the subscriber's line buffer.
        let line = &mut writer;
        let meta = event.metadata();
        let _ = line.write_str("{\"timestamp\":\"");
        timestamp(line);
        let _ = line.write_str("\",\"level\":\"");
        let _ = line.write_str(meta.level().as_str());
        let _ = line.write_char('"');
        // `message` first, as tracing-subscriber's formatter puts it.
        let mut fields = Fields {
            out: &mut *line,
            message_only: true,
        };
        event.record(&mut fields);
        let mut rest = Fields {
            out: &mut *line,
            message_only: false,
        };
        event.record(&mut rest);
        let _ = line.write_str(",\"target\":");
        escaped(line, meta.target());
        // `span`: the current span; `spans`: the whole stack, root first, so
        // that an attempt's line still carries its job's operation id.
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = current {
            let nested = span.parent().is_some();
            let _ = line.write_str(",\"span\":");
            span_object(line, &span);
            // Only when it says more than `span`: a line inside one span (each
            // request's, the 429's) would print that span twice, and the 429
            // path is measured against `/healthz` (`idemq bench limited`).
            if nested {
                let _ = line.write_str(",\"spans\":[");
                if let Some(scope) = ctx.event_scope() {
                    for (i, span) in scope.from_root().enumerate() {
                        if i > 0 {
                            let _ = line.write_char(',');
                        }
                        span_object(line, &span);
                    }
                }
                let _ = line.write_char(']');
            }
        }
        line.write_str("}\n")
    }
}

/// `2026-12-02T13:21:02.123456Z`, as humantime's `format_rfc3339_micros`
/// writes it; the part up to the second is formatted once a second.
fn timestamp<W: fmt::Write>(out: &mut W) {
    use std::{
        cell::Cell,
        time::{SystemTime, UNIX_EPOCH},
    };
    thread_local! {
        static SECOND: Cell<Option<(u64, [u8; 19])>> = const { Cell::new(None) };
    }
    let now = SystemTime::now();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let prefix = match SECOND.get() {
        Some((s, prefix)) if s == secs => prefix,
        _ => {
            let whole = humantime::format_rfc3339_seconds(now).to_string();
            let mut prefix = [0u8; 19];
            match whole.as_bytes().get(..19) {
                Some(p) => prefix.copy_from_slice(p),
                // Not a four-digit year: no cache.
                None => {
                    let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
                    return;
                }
            }
            SECOND.set(Some((secs, prefix)));
            prefix
        }
    };
    let mut tail = *b".000000Z";
    let mut micros = since_epoch.subsec_micros();
    for digit in tail[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    let _ = out.write_str(std::str::from_utf8(&prefix).unwrap_or_default());
    let _ = out.write_str(std::str::from_utf8(&tail).unwrap_or_default());
}

/// `{"field":…,"name":"span name"}`: the span's stored JSON fields, then its name.
fn span_object<S, W>(line: &mut W, span: &tracing_subscriber::registry::SpanRef<'_, S>)
where
    S: for<'a> LookupSpan<'a>,
    W: fmt::Write,
{
    let _ = line.write_char('{');
    let ext = span.extensions();
    if let Some(stored) = ext.get::<FormattedFields<JsonFields>>() {
        // A JSON object (`{"a":1}`) or empty: its members, then ours.
        let members = stored.fields.trim();
        let members = members
            .strip_prefix('{')
            .and_then(|m| m.strip_suffix('}'))
            .unwrap_or("");
        if !members.is_empty() {
            let _ = line.write_str(members);
            let _ = line.write_char(',');
        }
    }
    let _ = line.write_str("\"name\":");
    escaped(line, span.name());
    let _ = line.write_char('}');
}

struct Fields<'a, W> {
    out: &'a mut W,
    /// First pass: only `message`; second pass: everything else.
    message_only: bool,
}

impl<W: fmt::Write> Fields<'_, W> {
    fn key(&mut self, field: &Field) -> bool {
        if (field.name() == "message") != self.message_only {
            return false;
        }
        let _ = self.out.write_char(',');
        escaped(self.out, field.name());
        let _ = self.out.write_char(':');
        true
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            escaped(self.out, value);
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                let _ = write!(self.out, "{value}");
            } else {
                let _ = write!(self.out, "\"{value}\"");
            }
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            let _ = self.out.write_char('"');
            let _ = write!(Escaping(&mut *self.out), "{value:?}");
            let _ = self.out.write_char('"');
        }
    }
}

/// `s` as a JSON string.
fn escaped<W: fmt::Write>(out: &mut W, s: &str) {
    let _ = out.write_char('"');
    let _ = Escaping(&mut *out).write_str(s);
    let _ = out.write_char('"');
}

/// Writes what it is given escaped for the inside of a JSON string.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let replacement = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if replacement.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(replacement)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn writes_one_json_object_per_event_with_fields_target_and_span() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", method = "PATCH", route = "/a \"b\"");
            let _in = span.enter();
            tracing::warn!(
                class = "sensitive",
                retry_after = 3600u64,
                ok = true,
                ratio = 0.5,
                "rate-limit: {}",
                "x\ny\u{1}"
            );
            drop(_in);
            tracing::info!("outside");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["message"], "rate-limit: x\ny\u{1}");
        assert_eq!(first["class"], "sensitive");
        assert_eq!(first["retry_after"], 3600);
        assert_eq!(first["ok"], true);
        assert_eq!(first["ratio"], 0.5);
        assert_eq!(first["target"], module_path!());
        assert_eq!(first["span"]["name"], "request");
        assert_eq!(first["span"]["method"], "PATCH");
        assert_eq!(first["span"]["route"], "/a \"b\"");
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(text.lines().next().unwrap().starts_with("{\"timestamp\""));
        assert_eq!(lines[1]["message"], "outside");
        assert_eq!(lines[1].get("span"), None);
    }

    /// The cached second and the microseconds: humantime's own format.
    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        for _ in 0..3 {
            let mut ours = String::new();
            let before = std::time::SystemTime::now();
            timestamp(&mut ours);
            let after = std::time::SystemTime::now();
            assert_eq!(ours.len(), "2026-12-02T13:21:02.123456Z".len(), "{ours}");
            let parsed = humantime::parse_rfc3339(&ours).unwrap();
            let floor = |t: std::time::SystemTime| {
                let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(d.as_micros() as u64)
            };
            assert!(floor(before) <= parsed && parsed <= after, "{ours}");
        }
    }

    /// Lines as tracing-subscriber's own JSON formatter writes them.
    fn lines_of<S>(subscriber: S, out: &Captured, emit: impl FnOnce()) -> Vec<Value>
    where
        S: Subscriber + Send + Sync + 'static,
    {
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                // The only field that differs from one run to the next.
                v.as_object_mut().unwrap().remove("timestamp");
                v
            })
            .collect()
    }

    /// Nested spans (a job's `attempt` inside its `job` span) and an event
    /// outside any span: the same objects as tracing-subscriber's
    /// `json().flatten_event(true).with_span_list(true)`. (An event with an
    /// explicit `parent:` is left out: tracing-subscriber then lists the
    /// entered spans under `spans` but the parent under `span`; ours lists the
    /// parent's stack for both.)
    #[test]
    fn lines_equal_tracing_subscribers_json_with_the_whole_span_stack() {
        let emit = || {
            tracing::info!(answer = 42u64, "before any span");
            let job = tracing::info_span!("job", operation = %"op_0192");
            let _job = job.enter();
            tracing::info!("in the job");
            let attempt = tracing::info_span!("attempt", kind = "invoice.mark_paid", attempt = 2);
            let _attempt = attempt.enter();
            tracing::warn!(
                error = %"deadlock \"detected\"",
                retryable = true,
                ratio = 0.25,
                delta = -3i64,
                "attempt failed: {}",
                "x\ty"
            );
        };
        let ours = Captured::default();
        let ours_lines = lines_of(
            tracing_subscriber::fmt()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine)
                .with_writer(ours.clone())
                .finish(),
            &ours,
            emit,
        );
        let theirs = Captured::default();
        let theirs_lines = lines_of(
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(theirs.clone())
                .finish(),
            &theirs,
            emit,
        );
        // Ours leaves `spans` out where it would only repeat `span`.
        let theirs_lines: Vec<Value> = theirs_lines
            .into_iter()
            .map(|mut line| {
                if line["spans"].as_array().is_some_and(|s| s.len() == 1) {
                    line.as_object_mut().unwrap().remove("spans");
                }
                line
            })
            .collect();
        assert_eq!(ours_lines.len(), 3);
        assert_eq!(ours_lines, theirs_lines);
        assert_eq!(ours_lines[1].get("spans"), None, "one span: `span` says it all");
        // The attempt's line carries the job's operation id.
        assert_eq!(ours_lines[2]["spans"][0]["operation"], "op_0192");
        assert_eq!(ours_lines[2]["spans"][1]["attempt"], 2);
        assert_eq!(ours_lines[2]["span"]["name"], "attempt");
    }
}
