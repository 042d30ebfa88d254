//! Our own logs, live, for the board: its UI keeps an `EventSource` open on
//! `/api/v1/events`, shows what arrives on its Logs page, and calls the
//! system "Unhealthy" as soon as that stream errors or ends (an answer of
//! 204 did exactly that). This module is the stream's source: a tracing
//! layer that copies idemq's own INFO-and-above events into a broadcast
//! channel, in the board's `LogEntry` JSON shape.
//!
//! What is copied is chosen, not filtered out: the message and an allow-list
//! of field names (ids, queue, status, error text). Anything else — request
//! headers, bodies, tokens — never reaches a browser even if a future log
//! line carries it. With no browser connected the layer costs one atomic load.
use std::{
    convert::Infallible,
    fmt::Write as _,
    sync::{
        atomic::{AtomicUsize, Ordering},
        LazyLock,
    },
    time::Duration,
};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{
    field::{Field, Visit},
    span, Level, Subscriber,
};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

/// Fields copied into a line (event or enclosing span). Nothing else is.
const ALLOWED_FIELDS: &[&str] = &[
    "operation",
    "queue",
    "status",
    "kind",
    "attempt",
    "error",
    "problem",
    "worker",
    "job",
    "method",
    "route",
    "by",
];

/// A slow browser misses lines (the UI shows a live tail, not an archive).
const BACKLOG: usize = 256;

static FEED: LazyLock<broadcast::Sender<String>> = LazyLock::new(|| broadcast::channel(BACKLOG).0);

/// The layer to add to the process's subscriber (`src/telemetry.rs`).
pub fn layer() -> LogFeed {
    LogFeed
}

/// Open subscriptions. The layer reads this on every span and event;
/// `broadcast::Sender::receiver_count` would take a mutex there instead.
static LISTENERS: AtomicUsize = AtomicUsize::new(0);

/// Lines from now on (for a test, or the SSE handler).
pub fn subscribe() -> Subscription {
    LISTENERS.fetch_add(1, Ordering::SeqCst);
    Subscription(FEED.subscribe())
}

/// A listener of the feed; the layer stops copying when the last is dropped.
pub struct Subscription(broadcast::Receiver<String>);

impl std::ops::Deref for Subscription {
    type Target = broadcast::Receiver<String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Subscription {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        LISTENERS.fetch_sub(1, Ordering::SeqCst);
    }
}

fn listened() -> bool {
    LISTENERS.load(Ordering::Relaxed) > 0
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LogFeed;

/// The allowed fields of a span, kept while a browser listens.
#[derive(Default)]
struct SpanFields {
    operation: Option<String>,
    attempt: Option<i64>,
    text: String,
}

impl<S> Layer<S> for LogFeed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if !listened() {
            return;
        }
        let mut fields = Collect::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields {
                operation: fields.operation,
                attempt: fields.attempt,
                text: fields.text,
            });
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if !listened() {
            return;
        }
        let meta = event.metadata();
        if *meta.level() > Level::INFO || !meta.target().starts_with("idemq") {
            return;
        }
        let mut fields = Collect::default();
        event.record(&mut fields);
        let mut span_name = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if span_name.is_empty() {
                    span_name = span.name().to_owned();
                }
                if let Some(s) = span.extensions().get::<SpanFields>() {
                    fields.operation = fields.operation.or_else(|| s.operation.clone());
                    fields.attempt = fields.attempt.or(s.attempt);
                    fields.text.push_str(&s.text);
                }
            }
        }
        let mut message = fields.message.unwrap_or_default();
        message.push_str(&fields.text);
        // The board's `LogEntry` (apalis-board-types 1.0): its UI panics on a
        // line that does not parse, and lists only lines with a `span`.
        let line = serde_json::json!({
            "span": {
                "attempt": fields.attempt.unwrap_or(0),
                "task_id": fields.operation.unwrap_or_default(),
                "name": if span_name.is_empty() { meta.target().to_owned() } else { span_name },
            },
            "level": meta.level().as_str(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "target": meta.target(),
            "fields": {
                "message": message,
                "log.target": meta.target(),
                "log.module_path": meta.module_path().unwrap_or_default(),
                "log.file": meta.file().unwrap_or_default(),
                "log.line": meta.line().unwrap_or_default(),
            },
        });
        let _ = FEED.send(line.to_string());
    }
}

#[derive(Default)]
struct Collect {
    message: Option<String>,
    operation: Option<String>,
    attempt: Option<i64>,
    /// ` name=value` for each other allowed field.
    text: String,
}

impl Collect {
    fn add(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "operation" => self.operation = Some(value.to_owned()),
            name if ALLOWED_FIELDS.contains(&name) => {
                let _ = write!(self.text, " {name}={value}");
            }
            _ => {}
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "attempt" {
            self.attempt = Some(value);
        }
        self.add(field, &value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "attempt" {
            self.attempt = i64::try_from(value).ok();
        }
        self.add(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Only format what is kept.
        if field.name() == "message" || ALLOWED_FIELDS.contains(&field.name()) {
            self.add(field, &format!("{value:?}"));
        }
    }
}

/// `GET /api/v1/events`: the feed as server-sent events, ending when the
/// listener shuts down (an open stream would hold its graceful shutdown).
pub fn events(shutdown: CancellationToken) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = subscribe();
    let stream = futures::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return None,
                next = rx.recv() => next,
            };
            match next {
                Ok(line) => return Some((Ok(Event::default().data(line)), (rx, shutdown))),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    // A comment now and then keeps proxies from closing an idle stream.
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Each line parses as the board's `LogEntry` (its UI panics on one that
    /// does not) and carries only the allowed fields.
    #[test]
    fn a_line_has_the_boards_shape_and_only_allowed_fields() {
        let mut rx = subscribe();
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("attempt", kind = "payment", attempt = 2);
            let _in = span.enter();
            tracing::info!(
                target: "idemq_worker::job_runner",
                operation = "0192-op",
                token = "sekret-token",
                authorization = "Bearer sekret",
                error = "card declined",
                "attempt failed"
            );
            tracing::debug!(target: "idemq_worker", "too chatty");
            tracing::warn!(target: "sqlx::query", "not ours");
        });
        let line = rx.try_recv().expect("one line");
        assert!(!line.contains("sekret"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["span"]["task_id"], "0192-op");
        assert_eq!(v["span"]["attempt"], 2);
        assert_eq!(v["span"]["name"], "attempt");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "idemq_worker::job_runner");
        assert_eq!(
            v["fields"]["message"],
            "attempt failed error=card declined kind=payment attempt=2"
        );
        assert!(v["fields"]["log.line"].as_u64().unwrap() > 0);
        assert!(rx.try_recv().is_err(), "debug and foreign lines are not copied");
    }
}
