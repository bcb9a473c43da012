//! Logs on stderr through a lossy, non-blocking writer: a stderr nobody reads (a full pipe) or nobody can
//! read (a closed pipe) costs log lines, never the elector's deadlines or the process.

use std::io::{IsTerminal, Write};

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Log lines queued for stderr before new ones are dropped. tracing-appender's default, 128,000, is a
/// channel allocated whole at start (about 4 MiB resident, most of an idle process's heap); a candidate
/// logs a few lines per term, and a stderr that stops draining loses lines either way.
const LOG_QUEUE_LINES: usize = 1024;

/// Log format on stderr (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (what the lab reads from the candidates it runs).
    Json,
}

/// `info`, without kube-client's own ERROR line for every failed request (`kube_client::client::builder`):
/// the elector and the startup wait report each failure with its context and retry, once per streak, so
/// an API outage would otherwise fill the log with ERRORs for what is handled.
pub(crate) const DEFAULT_FILTER: &str = "info,kube_client::client::builder=off";

/// The installed log writer. Dropping it flushes what is queued, waiting at most about a second
/// (`tracing_appender`'s `WorkerGuard`) when stderr does not drain.
#[derive(Debug)]
pub(crate) struct Logging {
    writer: NonBlocking,
    _flush: WorkerGuard,
}

// === impl Logging ===

impl Logging {
    /// Installs the global subscriber (`LEADER_ELECT_LOG` filter, default [`DEFAULT_FILTER`]) writing `format` lines
    /// to stderr from a worker thread. Lines that do not fit in the queue are dropped rather than waited
    /// for, and write errors are not reported (tracing-subscriber would report them on stderr itself,
    /// which panics once stderr is gone).
    pub(crate) fn init(format: LogFormat) -> Self {
        let (writer, flush) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .thread_name("leader-elect-log")
            .finish(std::io::stderr());
        let filter = tracing_subscriber::EnvFilter::try_from_env("LEADER_ELECT_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colour only for a person at a terminal: redirected logs (a file, a pipe, kubectl logs)
            // stay plain text. NO_COLOR (no-color.org) turns it off there too.
            .with_ansi(
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .with_writer(writer.clone())
            .log_internal_errors(false);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        Self {
            writer,
            _flush: flush,
        }
    }

    /// Writes the final `leader-elect: error: ...` line behind the queued log lines, with the same
    /// guarantees: it never blocks and never panics.
    pub(crate) fn error_line(&self, err: &anyhow::Error) {
        // One write, one queued line: never half a line. Each cause once: some errors repeat their
        // source in their own message.
        let line = format!(
            "leader-elect: error: {}\n",
            crate::client::error_chain(err.as_ref())
        );
        let _ = self.writer.clone().write_all(line.as_bytes());
    }
}
