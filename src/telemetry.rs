//! Tracing setup: pretty logs for development, JSON lines for production.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::domain::utc_micros;

/// Installs the global subscriber. `RUST_LOG` filters; the default, also for an empty or
/// unreadable value, is `info`. Colours only on a terminal, and not with `NO_COLOR`.
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    let (filter, unreadable) = if directives.trim().is_empty() {
        (EnvFilter::new(DEFAULT_FILTER), None)
    } else {
        match EnvFilter::try_new(&directives) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some(e)),
        }
    };
    // NO_COLOR (https://no-color.org): set and not empty turns colours off.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal() && !no_color);
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonLines)
            .event_format(JsonLines)
            .try_init(),
    };
    // A second init (tests that build several apps) keeps the first subscriber.
    drop(installed);
    if let Some(e) = unreadable {
        tracing::warn!(error = %e, "RUST_LOG is unreadable; logging at {DEFAULT_FILTER}");
    }
}

const DEFAULT_FILTER: &str = "info";

/// One JSON object per line:
/// `{"timestamp":…,"level":…,"fields":{…},"target":…,"span":{…,"name":…}}`, where `span` is
/// the innermost span, when there is one.
///
/// Every request logs a line, so this is on the hot path. tracing-subscriber's own JSON
/// format builds a map of values for every line and parses the span's fields back from
/// their text; it took a fifth of the in-memory ingest's throughput. This one writes each
/// line straight into one buffer, and keeps a span's fields as a JSON object's members
/// (`"a":1,"b":"x"`), ready to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// Only with its own span fields (`fmt_fields(JsonLines)`), which it copies as they are.
impl<S> FormatEvent<S, JsonLines> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonLines>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records from the `log` crate (rustls uses it) carry their real target and level.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        push_now(&mut line)?;
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push_str("\",\"fields\":{");
        event.record(&mut Members::new(&mut line));
        line.push_str("},\"target\":");
        push_string(&mut line, meta.target());
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            line.push_str(",\"span\":{");
            if let Some(fields) = span.extensions().get::<FormattedFields<JsonLines>>() {
                if !fields.is_empty() {
                    line.push_str(fields);
                    line.push(',');
                }
            }
            line.push_str("\"name\":");
            push_string(&mut line, span.name());
            line.push('}');
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

impl<'w> FormatFields<'w> for JsonLines {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Room for a request span's fields: growing from empty took five reallocations.
        let mut members = String::with_capacity(256);
        fields.record(&mut Members::new(&mut members));
        writer.write_str(&members)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        fields.record(&mut Members::new(&mut added));
        if added.is_empty() {
            return Ok(());
        }
        if current.fields.is_empty() {
            current.fields = added;
            return Ok(());
        }
        // A field recorded again replaces its value: merge the two as objects.
        let mut merged: Map<String, Value> =
            serde_json::from_str(&format!("{{{}}}", current.fields)).map_err(|_| fmt::Error)?;
        let added: Map<String, Value> =
            serde_json::from_str(&format!("{{{added}}}")).map_err(|_| fmt::Error)?;
        merged.extend(added);
        let object = serde_json::to_string(&merged).map_err(|_| fmt::Error)?;
        current.fields = object[1..object.len() - 1].to_owned();
        Ok(())
    }
}

/// Writes the fields it visits as JSON object members, comma-separated.
struct Members<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Members<'a> {
    fn new(out: &'a mut String) -> Self {
        Self { out, first: true }
    }

    /// A member whose value is an integer.
    fn integer(&mut self, field: &Field, value: impl itoa::Integer) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn key(&mut self, field: &Field) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_string(self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for Members<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_string(self.out, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.integer(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.integer(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // JSON has no NaN or infinity. ryu writes the shortest text that reads back as
        // `value`, as serde_json does, in fewer instructions than `Display`.
        if value.is_finite() {
            self.out.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.out.push_str("null");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.out.push('"');
        let _ = write!(Escaped(self.out), "{value}");
        self.out.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.out.push('"');
        let _ = write!(Escaped(self.out), "{value:?}");
        self.out.push('"');
    }
}

/// The time now, as tracing-subscriber's `SystemTime` writes it (microseconds, UTC), without
/// its general formatter: every request logs a line.
fn push_now(line: &mut String) -> fmt::Result {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_micros()).ok());
    match micros.and_then(utc_micros) {
        Some(text) => {
            line.push_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
            Ok(())
        }
        None => SystemTime.format_time(&mut Writer::new(line)),
    }
}

/// `value` as a JSON string.
fn push_string(out: &mut String, value: &str) {
    out.push('"');
    escape_into(out, value);
    out.push('"');
}

/// Text written through it lands in a JSON string, escaped.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

fn escape_into(out: &mut String, value: &str) {
    // Everything JSON escapes is ASCII, and no byte of a multi-byte UTF-8 character is, so
    // a byte scan finds them and the runs between them stay whole characters.
    let bytes = value.as_bytes();
    // Most text needs no escape; this test has no early exit, so it runs many bytes a step.
    let needs_escape = bytes.iter().fold(false, |any, &b| {
        any | (b < b' ') | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push_str(value);
        return;
    }
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < b' ' => "",
            _ => continue,
        };
        out.push_str(&value[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&value[plain..]);
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// Each line that `emit` logs, parsed.
    fn lines(emit: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .fmt_fields(JsonLines)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn an_event_in_a_span_is_one_json_object_with_the_span_fields() {
        let lines = lines(|| {
            let span = tracing::info_span!("request", method = "POST", route = "/x/{id}");
            let _entered = span.enter();
            tracing::info!(
                status = 201_u16,
                latency_ms = 2.5,
                ok = true,
                delta = -3_i64,
                "served"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], module_path!());
        assert_eq!(
            line["fields"],
            json!({"message": "served", "status": 201, "latency_ms": 2.5, "ok": true, "delta": -3})
        );
        assert_eq!(
            line["span"],
            json!({"method": "POST", "route": "/x/{id}", "name": "request"})
        );
        // RFC 3339 in UTC with microseconds, and now.
        let timestamp = line["timestamp"].as_str().unwrap();
        assert_eq!(timestamp.len(), 27, "{timestamp}");
        let logged = chrono::DateTime::parse_from_rfc3339(timestamp).unwrap();
        let age = chrono::Utc::now().signed_duration_since(logged);
        assert!(
            age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::seconds(60),
            "{timestamp}"
        );
    }

    #[test]
    fn text_is_escaped_and_odd_values_stay_valid_json() {
        let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} é 🎧";
        let error = io::Error::other("disk \"full\"\n");
        let lines = lines(|| {
            tracing::warn!(
                text = awkward,
                shown = %awkward,
                debugged = ?awkward,
                error = &error as &(dyn std::error::Error + 'static),
                nan = f64::NAN,
                infinite = f64::INFINITY,
                big = u64::MAX,
                wide = -5_i128,
                "no span {}",
                1
            );
        });
        let fields = &lines[0]["fields"];
        assert_eq!(fields["message"], "no span 1");
        assert_eq!(fields["text"], awkward);
        assert_eq!(fields["shown"], awkward);
        assert_eq!(fields["debugged"], format!("{awkward:?}"));
        assert_eq!(fields["error"], "disk \"full\"\n");
        assert_eq!(fields["nan"], Value::Null);
        assert_eq!(fields["infinite"], Value::Null);
        assert_eq!(fields["big"], u64::MAX);
        assert_eq!(fields["wide"], -5);
        assert!(lines[0].get("span").is_none());
    }

    #[test]
    fn records_from_the_log_crate_keep_their_target_and_level() {
        let lines = lines(|| {
            let record = log::Record::builder()
                .target("rustls::client")
                .level(log::Level::Warn)
                .args(format_args!("from the log crate"))
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        assert_eq!(lines[0]["target"], "rustls::client");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["fields"]["message"], "from the log crate");
    }

    #[test]
    fn fields_recorded_later_join_the_span() {
        let lines = lines(|| {
            let span = tracing::info_span!("job", first = 1_u64, later = tracing::field::Empty);
            let _entered = span.enter();
            span.record("later", "set");
            span.record("first", 2_u64);
            tracing::info!("inside");
            let bare = tracing::info_span!("bare");
            let _inner = bare.enter();
            tracing::info!("nested");
        });
        assert_eq!(
            lines[0]["span"],
            json!({"first": 2, "later": "set", "name": "job"})
        );
        assert_eq!(lines[1]["span"], json!({"name": "bare"}));
    }
}
