//! The log: `tracing` events on stdout, as Electric logs, one line each, as text (the default)
//! or as JSON objects (`AMPERE_LOG_FORMAT=json`) for log pipelines. The level comes from
//! `ELECTRIC_LOG_LEVEL` unless `AMPERE_LOG` gives a `tracing` filter (docs/metrics.md, "Logs").
//!
//! Errors that stop the binary before or instead of the log (invalid configuration, a fatal
//! error at exit) go to stderr, where a terminal or a supervisor shows them.

use std::io::IsTerminal as _;

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
    let filter =
        EnvFilter::try_from_env(FILTER_VARIABLE).unwrap_or_else(|_| EnvFilter::new(level_filter));
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
        LogFormat::Text => builder.with_ansi(colors.unwrap_or(is_terminal)).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
