//! The log: `tracing` events on stdout, as Electric logs, one line each, as text (the default)
//! or as JSON objects (`AMPERE_LOG_FORMAT=json`) for log pipelines. The level comes from
//! `ELECTRIC_LOG_LEVEL` unless `AMPERE_LOG` gives a `tracing` filter (docs/metrics.md, "Logs").
//!
//! Errors that stop the binary before or instead of the log (invalid configuration, a fatal
//! error at exit) go to stderr, where a terminal or a supervisor shows them.
//!
//! Field values carry client-controlled text (a table name in a request, a Postgres error
//! quoting it): in text lines every control character of a field is escaped
//! ([`EscapedFields`]), so a `%0A` in a request cannot forge a log line nor an ESC colour a
//! terminal. JSON lines are escaped by JSON itself.

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

/// The variable choosing the log format.
pub const FORMAT_VARIABLE: &str = "AMPERE_LOG_FORMAT";

/// The variable whose `tracing` filter overrides `ELECTRIC_LOG_LEVEL`.
pub const FILTER_VARIABLE: &str = "AMPERE_LOG";

/// How each log line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `tracing`'s human-readable lines (`AMPERE_LOG_FORMAT=text`, the default).
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level next to `timestamp`,
    /// `level`, `target` and `message` (`AMPERE_LOG_FORMAT=json`).
    Json,
}

/// `AMPERE_LOG_FORMAT` holds neither `text` nor `json`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{FORMAT_VARIABLE} must be text or json; got {value:?}")]
pub struct LogFormatError {
    /// The value given.
    pub value: String,
}

impl LogFormat {
    /// `text` or `json` (any case, surrounding spaces ignored); empty is the default.
    pub fn parse(text: &str) -> Result<Self, LogFormatError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(LogFormatError {
                value: text.to_owned(),
            }),
        }
    }

    /// The format `AMPERE_LOG_FORMAT` names in this process's environment (unset: text).
    pub fn from_env() -> Result<Self, LogFormatError> {
        match std::env::var_os(FORMAT_VARIABLE) {
            None => Ok(Self::default()),
            Some(value) => match value.to_str() {
                Some(text) => Self::parse(text),
                None => Err(LogFormatError {
                    value: value.to_string_lossy().into_owned(),
                }),
            },
        }
    }
}

/// Where the log goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// The service's log (`ampere serve`), as Electric logs.
    Stdout,
    /// The log of a command whose report is its stdout (`ampere status --json`, `check-db`,
    /// `cleanup`), so that a warning never lands inside the report.
    Stderr,
}

/// Installs the process's log on `stream`: `format`, `level_filter` unless `AMPERE_LOG` gives
/// a filter, and for text, colours when `colors` says so (unset: when `stream` is a terminal).
/// JSON is never coloured. Call once, first thing.
pub fn init(format: LogFormat, colors: Option<bool>, level_filter: &str, stream: LogStream) {
    let (filter, invalid) = filter_from_env(level_filter);
    let to_stdout = stream == LogStream::Stdout;
    let is_terminal = if to_stdout {
        std::io::stdout().is_terminal()
    } else {
        std::io::stderr().is_terminal()
    };
    let writer = move || -> Box<dyn std::io::Write> {
        if to_stdout {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::io::stderr())
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .fmt_fields(EscapedFields)
            .with_ansi(colors.unwrap_or(is_terminal))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
    if let Some(invalid) = invalid {
        tracing::warn!(
            "{FILTER_VARIABLE}={:?} is not a tracing filter ({}); logging at {level_filter:?} \
             instead. Example: {FILTER_VARIABLE}=info,ampere_server::http::access_log=debug",
            invalid.value,
            invalid.error
        );
    }
}

/// An `AMPERE_LOG` that does not parse: ignored with a warning rather than silently, so an
/// operator who asked for debug output learns why there is none.
struct InvalidFilter {
    value: String,
    error: String,
}

/// `AMPERE_LOG`'s filter when it is set and valid, else `level_filter` (and why, when set).
fn filter_from_env(level_filter: &str) -> (EnvFilter, Option<InvalidFilter>) {
    let Some(value) = std::env::var_os(FILTER_VARIABLE) else {
        return (EnvFilter::new(level_filter), None);
    };
    let value = value.to_string_lossy().into_owned();
    if value.trim().is_empty() {
        return (EnvFilter::new(level_filter), None);
    }
    match EnvFilter::builder().parse(&value) {
        Ok(filter) => (filter, None),
        Err(error) => (
            EnvFilter::new(level_filter),
            Some(InvalidFilter {
                value,
                error: error.to_string(),
            }),
        ),
    }
}

/// Text-format fields as `tracing`'s default writes them — the message first, then
/// `name=value` pairs separated by spaces, strings quoted — with every control character
/// escaped (`\n`, `\r`, `\t`, else `\u{..}`), so that one event is one line.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    empty: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self.write_field(field, value);
    }
}

impl EscapingVisitor<'_> {
    fn write_field(&mut self, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
        if !self.empty {
            self.writer.write_char(' ')?;
        }
        self.empty = false;
        if field.name() != "message" {
            write!(self.writer, "{}=", field.name())?;
        }
        // `%` values reach here as `Debug` wrappers of their `Display`; strings as `Debug`.
        write!(
            Escaper {
                inner: &mut self.writer
            },
            "{value:?}"
        )
    }
}

/// Writes through to `inner` with control characters escaped.
struct Escaper<'a, 'writer> {
    inner: &'a mut Writer<'writer>,
}

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.inner.write_str(&rest[..at])?;
            let c = rest[at..]
                .chars()
                .next()
                .expect("a control character at `at`");
            match c {
                '\n' => self.inner.write_str("\\n")?,
                '\r' => self.inner.write_str("\\r")?,
                '\t' => self.inner.write_str("\\t")?,
                other => write!(self.inner, "\\u{{{:x}}}", u32::from(other))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.inner.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The text lines a subscriber with [`EscapedFields`] writes for `emit`'s events.
    fn text_log(emit: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || SharedWriter(Arc::clone(&sink)))
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.lock().expect("log buffer").clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    struct SharedWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_newline_or_escape_in_a_field_cannot_forge_a_second_log_line() {
        let table = "items\n2026-12-07T00:00:00Z  INFO ampere: forged\r\u{1b}[31m";
        let log = text_log(|| {
            tracing::warn!(table = %table, quoted = table, "catalog lookup failed: {table}");
        });
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains(
                r"catalog lookup failed: items\n2026-12-07T00:00:00Z  INFO ampere: forged\r\u{1b}[31m"
            ),
            "{log}"
        );
        assert!(log.contains(r"table=items\n2026"), "{log}");
        assert!(log.contains(r#"quoted="items\n2026"#), "{log}");
    }

    #[test]
    fn plain_fields_are_written_as_tracing_writes_them() {
        let log =
            text_log(|| tracing::info!(slot = %"electric_slot_default", shapes = 3, "starting"));
        assert!(
            log.ends_with("starting slot=electric_slot_default shapes=3\n"),
            "{log}"
        );
    }

    #[test]
    fn the_format_is_text_or_json_in_any_case_and_anything_else_names_the_variable() {
        assert_eq!(LogFormat::parse(""), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(" JSON "), Ok(LogFormat::Json));
        let error = LogFormat::parse("xml").expect_err("xml is no format");
        assert_eq!(
            error.to_string(),
            r#"AMPERE_LOG_FORMAT must be text or json; got "xml""#
        );
    }
}
