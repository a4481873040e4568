//! The log format of the daemons: human text when stderr is a terminal, JSON lines otherwise
//! (systemd, journald and log shippers), unless `--log-format` or [`LOG_FORMAT_ENV`] says.
//! JSON events are flat: `timestamp`, `level`, `message`, the event's fields (the shared
//! names: `deploy_id`, `env`, `stage`, `host`, `blob`, `peer`, `term`), `target`, and the
//! current span as `span`.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable that picks the format (`text` or `json`).
pub const LOG_FORMAT_ENV: &str = "TT_LOG_FORMAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A format name that is neither `text` nor `json`.
#[derive(Debug, thiserror::Error)]
#[error("log format {0:?} is neither \"text\" nor \"json\"")]
pub struct UnknownLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<LogFormat, UnknownLogFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(UnknownLogFormat(s.to_string())),
        }
    }
}

impl LogFormat {
    /// The format asked for, else text on a terminal and JSON otherwise.
    pub fn choose(asked: Option<LogFormat>, stderr_is_terminal: bool) -> LogFormat {
        asked.unwrap_or(if stderr_is_terminal { LogFormat::Text } else { LogFormat::Json })
    }
}

/// A subscriber writing `format` to `writer`, filtered by `filter`; colours only with `ansi`.
pub fn subscriber<W>(format: LogFormat, filter: EnvFilter, ansi: bool, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => Dispatch::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Text => Dispatch::new(builder.with_ansi(ansi).finish()),
    }
}

/// Installs the process's subscriber on stderr in the format asked for (see
/// [`LogFormat::choose`]).
pub fn init(asked: Option<LogFormat>, filter: EnvFilter) {
    let terminal = std::io::stderr().is_terminal();
    let format = LogFormat::choose(asked, terminal);
    subscriber(format, filter, terminal, std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_terminal_gets_text_anything_else_json_unless_asked() {
        assert_eq!(LogFormat::choose(None, true), LogFormat::Text);
        assert_eq!(LogFormat::choose(None, false), LogFormat::Json);
        assert_eq!(LogFormat::choose(Some(LogFormat::Text), false), LogFormat::Text);
        assert_eq!(LogFormat::choose(Some(LogFormat::Json), true), LogFormat::Json);
    }

    #[test]
    fn names_parse_and_others_are_refused() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(" Text ".parse::<LogFormat>().unwrap(), LogFormat::Text);
        let e = "logfmt".parse::<LogFormat>().unwrap_err();
        assert!(e.to_string().contains("logfmt"), "{e}");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let sub = subscriber(format, EnvFilter::new("info"), false, move || out.clone());
        tracing::dispatcher::with_default(&sub, || {
            let span = tracing::info_span!("step", env = "web", stage = "RESTARTING");
            let _entered = span.enter();
            tracing::info!(deploy_id = "d-1", "step ends");
            tracing::debug!("filtered out");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_are_flat_and_keep_the_message_text() {
        let out = logged(LogFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = lines[0];
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(line.contains(r#""message":"step ends""#), "{line}");
        assert!(line.contains(r#""deploy_id":"d-1""#), "{line}");
        assert!(line.contains(r#""level":"INFO""#), "{line}");
        assert!(line.contains(r#""env":"web""#), "the span's fields come along: {line}");
    }

    #[test]
    fn text_lines_read_as_before() {
        let out = logged(LogFormat::Text);
        assert!(out.contains("step ends") && out.contains("deploy_id=\"d-1\""), "{out}");
        assert!(out.contains("env=\"web\""), "{out}");
        assert!(!out.starts_with('{') && !out.contains(r#""message""#), "{out}");
    }
}
