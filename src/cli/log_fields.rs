//! How the text operational log writes a line's fields: every value with its control
//! characters escaped, so that one event is one line whatever its values hold.
//!
//! tracing-subscriber's text format escapes a `&str` field (written with `{:?}`) and the
//! message, but writes a `%value` field (Display) as it is. hubgate logs errors that way, and
//! an error can quote text hubgate did not write: Security Hub's own error message (whatever
//! answers at `upstream.endpoint`), which may echo what a caller sent. A newline in it started
//! a line of its own in the log, one that a reader (or a log shipper splitting on newlines)
//! takes for hubgate's, e.g. a forged `INFO hubgate::server: policies reloaded`; an escape
//! sequence in it reached the operator's terminal. The JSON format escapes by itself.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// tracing-subscriber's default field formatting, with control characters escaped in every
/// value.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'a> MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapingVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        EscapingVisitor(DefaultVisitor::new(target, true))
    }
}

pub struct EscapingVisitor<'a>(DefaultVisitor<'a>);

/// Whether `c` must not reach a log line as it is: C0 and C1 controls (newline, carriage
/// return, escape, NUL, CSI …), DEL, and the Unicode line and paragraph separators.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with each unsafe character written as JSON escapes it (`\n`, `\u001b`, `\u2028`):
/// a value that is JSON (the `record=` of a record the sink did not take, which an operator
/// reads back) stays JSON with the same content.
pub fn escaped(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // every unsafe character is in the Basic Multilingual Plane: four digits
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // `{:?}` of a str escapes already, but the message is written with `{}`.
        if value.contains(unsafe_char) {
            self.0
                .record_debug(field, &format_args!("{}", escaped(value)));
        } else {
            self.0.record_str(field, value)
        }
    }

    /// As the default writes an error: its message, then its sources (`name.sources=[…]`).
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        if source.is_some() {
            text.push_str(&format!(" {}.sources=[", field.name()));
            let mut first = true;
            while let Some(s) = source {
                if !first {
                    text.push_str(", ");
                }
                first = false;
                text.push_str(&s.to_string());
                source = s.source();
            }
            text.push(']');
        }
        self.record_debug(field, &format_args!("{text}"))
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if text.contains(unsafe_char) {
            self.0
                .record_debug(field, &format_args!("{}", escaped(&text)));
        } else {
            self.0.record_debug(field, &format_args!("{text}"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.record_i64(field, value)
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.record_u64(field, value)
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.record_bool(field, value)
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.record_f64(field, value)
    }
}

impl VisitOutput<fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(event: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_value_with_a_newline_or_an_escape_stays_on_its_line() {
        let forged =
            "refused\n2026-12-06T00:00:00Z  INFO hubgate::server: policies reloaded\u{1b}[2J";
        let text = logged(|| {
            tracing::warn!(error = %forged, note = forged, "request {} failed", forged);
            tracing::info!(error = ?forged, sep = "a\u{2028}b\u{85}c\0", "next");
        });
        assert_eq!(text.matches('\n').count(), 2, "{text}");
        assert!(
            !text.contains(['\u{1b}', '\u{2028}', '\u{85}', '\0']),
            "{text}"
        );
        assert!(
            text.contains(r"error=refused\n2026-12-06T00:00:00Z  INFO"),
            "{text}"
        );
        assert!(text.contains(r"\u001b[2J"), "{text}");
        assert!(text.contains(r"sep=a\u2028b\u0085c\u0000"), "{text}");
    }

    #[test]
    fn a_json_value_stays_the_same_json() {
        let record = serde_json::json!({"note": "a\u{2028}b\u{85}c\n\u{1b}", "ok": true});
        let line = serde_json::to_string(&record).unwrap_or_default();
        let text = logged(|| tracing::error!(record = %line, "not written"));
        let logged = text.split_once("record=").map_or("", |(_, r)| r.trim_end());
        let back: serde_json::Value = serde_json::from_str(logged).unwrap_or_default();
        assert_eq!(back, record, "{text}");
    }

    #[test]
    fn an_error_value_is_escaped() {
        let inner = std::io::Error::other("disk\nINFO forged");
        let outer = std::io::Error::other(inner);
        let text = logged(|| {
            tracing::error!(
                error = &outer as &(dyn std::error::Error + 'static),
                "failed"
            )
        });
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.contains(r"error=disk\nINFO forged"), "{text}");
    }

    #[test]
    fn ordinary_values_are_written_as_before() {
        let text = logged(|| {
            tracing::info!(decision_id = "d-1", status = 200u64, ok = true, error = %"no room", "request");
        });
        assert!(
            text.ends_with("request decision_id=\"d-1\" status=200 ok=true error=no room\n"),
            "{text}"
        );
    }
}
