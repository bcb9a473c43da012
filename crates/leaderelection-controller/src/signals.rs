//! The process's stop signals: the first SIGTERM or SIGINT shuts down gracefully, the second skips the
//! grace.
//!
//! SIGTERM is what the kubelet sends a container when its pod is deleted (rolling update, eviction,
//! scale-down), and what `docker stop` and systemd send; SIGINT is Ctrl-C in a terminal. Either one asks
//! for a graceful stop: the leader's work stops, then the Lease is released, so a follower takes it at
//! once instead of waiting out leaseDurationSeconds. A second one (an operator pressing Ctrl-C again) asks
//! to skip what is left of the grace. The kubelet itself never sends a second SIGTERM: it sends SIGKILL at
//! the end of the pod's `terminationGracePeriodSeconds`. Other signals keep their default action
//! (SIGQUIT, for one, still dumps core).
//!
//! [`Signals`] does this for every binary of the workspace (`leader-elect`, `claim-coordinator`, the lab)
//! and for the examples, as kubert's `shutdown` module does for its runtime: one
//! [`CancellationToken`] for the first signal, one for the second, and a driver that listens exactly as
//! long as the program's work runs.

use std::future::Future;
use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// What went wrong with the stop signals.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    /// The SIGTERM or SIGINT handler could not be installed.
    #[error("installing the {signal} handler")]
    Install {
        /// `"SIGTERM"` or `"SIGINT"`.
        signal: &'static str,
        /// The error from tokio's signal driver.
        #[source]
        source: io::Error,
    },
    /// A second SIGTERM or SIGINT came before the work had stopped, and
    /// [`Signals::run_or_abandon`] stopped waiting for it.
    #[error(
        "a second SIGTERM or SIGINT: exited without waiting for the graceful shutdown to finish \
         (a Lease not yet released expires after its leaseDurationSeconds)"
    )]
    SecondSignal,
}

/// The SIGTERM and SIGINT handlers of the process, and the two tokens they cancel: [`shutdown`] on the
/// first signal, [`skip_grace`] on the second.
///
/// Install it first thing in `main` (in the tokio runtime), before any await: from then on a SIGTERM
/// during start-up (reading a kubeconfig, a credential plugin) is a clean stop instead of death by the
/// signal. Hand [`shutdown`] to the work, then drive that work with [`run`] (or [`run_or_abandon`]),
/// which listens for as long as the work runs.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::Config;
/// use leaderelection_controller::Runtime;
/// use leaderelection_controller::signals::Signals;
///
/// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let signals = Signals::install()?;
/// let config = Config::new(std::env::var("POD_NAME")?, "my-controller", "default");
/// let runtime = Runtime::builder(client, config).build()?;
/// // First SIGTERM/SIGINT: the work stops, then the Lease is released, then `run` returns.
/// // Second: stop waiting and return `SignalsError::SecondSignal`.
/// let shutdown = signals.shutdown();
/// signals.run_or_abandon(runtime.run(shutdown)).await??;
/// # Ok(()) }
/// ```
///
/// [`shutdown`]: Signals::shutdown
/// [`skip_grace`]: Signals::skip_grace
/// [`run`]: Signals::run
/// [`run_or_abandon`]: Signals::run_or_abandon
#[derive(Debug)]
pub struct Signals {
    sigterm: Signal,
    sigint: Signal,
    shutdown: CancellationToken,
    skip_grace: CancellationToken,
}

// === impl Signals ===

impl Signals {
    /// Catches SIGTERM and SIGINT from now on: a signal that comes before [`run`](Self::run) is polled
    /// is kept, not lost.
    ///
    /// Once installed, tokio's handlers stay for the life of the process: after this value is dropped,
    /// SIGTERM and SIGINT are ignored instead of terminating the process. Keep it until the process
    /// exits, driving the program's work with [`run`](Self::run).
    ///
    /// # Errors
    ///
    /// [`SignalsError::Install`] when tokio cannot register a handler.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime whose I/O driver is enabled (tokio's `signal` panics there).
    pub fn install() -> Result<Self, SignalsError> {
        let install = |kind, signal_name| {
            signal(kind).map_err(|source| SignalsError::Install {
                signal: signal_name,
                source,
            })
        };
        Ok(Self {
            sigterm: install(SignalKind::terminate(), "SIGTERM")?,
            sigint: install(SignalKind::interrupt(), "SIGINT")?,
            shutdown: CancellationToken::new(),
            skip_grace: CancellationToken::new(),
        })
    }

    /// Cancelled on the first SIGTERM or SIGINT (while [`run`](Self::run) drives the work): stop
    /// gracefully. Hand it to [`Runtime::run`](crate::Runtime::run) or to the elector.
    #[must_use]
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancelled on the second SIGTERM or SIGINT: skip what is left of the grace (`leader-elect run`
    /// SIGKILLs its child's process group at once, then releases the Lease). Never cancelled before
    /// [`shutdown`](Self::shutdown).
    #[must_use]
    pub fn skip_grace(&self) -> CancellationToken {
        self.skip_grace.clone()
    }

    /// Drives `work` to its end, listening meanwhile: the first SIGTERM or SIGINT cancels
    /// [`shutdown`](Self::shutdown), the second cancels [`skip_grace`](Self::skip_grace); the work's
    /// own reaction to them decides when it ends. Signals after the second are ignored.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `work` and stops listening; signals received afterwards are ignored
    /// (see [`install`](Self::install)). Await it to the end instead.
    pub async fn run<F: Future>(self, work: F) -> F::Output {
        let Self {
            mut sigterm,
            mut sigint,
            shutdown,
            skip_grace,
        } = self;
        let listen = async {
            let signal = next(&mut sigterm, &mut sigint).await;
            tracing::info!(
                signal,
                "shutting down gracefully; a second SIGTERM or SIGINT skips the grace"
            );
            shutdown.cancel();
            let signal = next(&mut sigterm, &mut sigint).await;
            tracing::warn!(signal, "second signal: skipping the rest of the grace");
            skip_grace.cancel();
        };
        tokio::pin!(work);
        tokio::select! {
            output = &mut work => return output,
            () = listen => {}
        }
        work.await
    }

    /// As [`run`](Self::run), for work that has no grace of its own to cut short (such as
    /// [`Runtime::run`](crate::Runtime::run), whose grace is the elector's stop timeout): on the second
    /// signal it stops waiting and drops `work`, so the process can exit at once. The Lease is then not
    /// released, unless that had happened already; the next leader waits until it expires.
    ///
    /// # Errors
    ///
    /// [`SignalsError::SecondSignal`] when the second signal came before `work` ended.
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn run_or_abandon<F: Future>(self, work: F) -> Result<F::Output, SignalsError> {
        let skip_grace = self.skip_grace.clone();
        tokio::select! {
            output = self.run(work) => Ok(output),
            () = skip_grace.cancelled() => Err(SignalsError::SecondSignal),
        }
    }
}

/// The name of the next SIGTERM or SIGINT. tokio's `recv` returns `None` only once its driver is gone,
/// with the runtime: then no signal can come any more.
async fn next(sigterm: &mut Signal, sigint: &mut Signal) -> &'static str {
    tokio::select! {
        Some(()) = sigterm.recv() => "SIGTERM",
        Some(()) = sigint.recv() => "SIGINT",
        else => std::future::pending().await,
    }
}
