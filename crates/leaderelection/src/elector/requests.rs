//! [`Runner`]'s API requests: each bounded by the request timeout (or a deadline), reported to the
//! observer, and abandoned on shutdown.

use super::*;

// === impl Runner ===

impl Runner<'_> {
    /// Sends one request, bounded by the request timeout, and reports it to the observer; abandoned on
    /// shutdown.
    pub(super) async fn request<T>(
        &self,
        verb: &'static str,
        phase: Phase,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let deadline = Instant::now() + self.config().effective_request_timeout();
        self.request_by(verb, phase, deadline, call).await
    }

    /// As [`Runner::request_until`], abandoned on shutdown.
    pub(super) async fn request_by<T>(
        &self,
        verb: &'static str,
        phase: Phase,
        deadline: Instant,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let shutdown = self.shutdown.clone();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(LockError::Timeout),
            result = self.request_until(verb, phase, deadline, call) => result,
        }
    }

    /// Sends one request, bounded by the request timeout and by `deadline`, and reports it.
    pub(super) async fn request_until<T>(
        &self,
        verb: &'static str,
        phase: Phase,
        deadline: Instant,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let sent_at = Instant::now();
        let deadline = deadline.min(sent_at + self.config().effective_request_timeout());
        let result = match timeout_at(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(LockError::Timeout),
        };
        self.inner.observer.on_request(&Request {
            verb,
            phase,
            latency: sent_at.elapsed(),
            error: result.as_ref().err(),
        });
        result
    }

    pub(super) fn log_transient(&self, what: &str, err: &LockError) {
        if self.shutdown.is_cancelled() && matches!(err, LockError::Timeout) {
            // Abandoned because we are stopping (a release that fails says so on its own).
            return;
        }
        warn!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            error = %err,
            "error {what}; retrying"
        );
    }
}
