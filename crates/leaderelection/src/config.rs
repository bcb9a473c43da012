//! Configuration of one candidate in one election, and its validation.

use std::time::Duration;

/// client-go's `JitterFactor`: retries wait `retry_period x [1, 1 + JITTER_FACTOR)`, and
/// `renew_deadline` must exceed `retry_period x JITTER_FACTOR` (client-go `leaderelection.go`).
pub const JITTER_FACTOR: f64 = 1.2;

/// The shortest retry period [`Config::validate`] accepts: 100 ms.
///
/// Every candidate makes about one API request per retry period (the leader's renewal, a polling follower's
/// read, each retry), so a shorter period has one candidate alone send more than 10 requests a second:
/// above client-go's default client rate limit (5 per second, burst 10; `rest.Config` `QPS` and `Burst`),
/// which kube-apiserver's API Priority and Fairness is sized for, and close to the round trip of a request
/// under load (tens of milliseconds), so that a renewal is still in flight when the next is due. client-go
/// has no lower bound; this project's shortest timings (the chaos soak: lease 1 s, renew deadline 500 ms)
/// use exactly 100 ms.
pub const MIN_RETRY_PERIOD: Duration = Duration::from_millis(100);

/// Longest DNS subdomain (a Lease name), in bytes (RFC 1123, as kube-apiserver validates it).
const DNS_SUBDOMAIN_MAX: usize = 253;
/// Longest DNS label (a namespace), in bytes (RFC 1123).
const DNS_LABEL_MAX: usize = 63;

/// How one candidate takes part in the election of one Lease.
///
/// The three timings follow client-go's meaning:
/// - `lease_duration`: how long followers wait, by their own clock, after they last saw the Lease change
///   before they may take it over. Written to the Lease as `leaseDurationSeconds` (whole seconds, >= 1).
/// - `renew_deadline`: how long a leader keeps trying to renew before it stops believing it leads. Our
///   leadership is valid only until `sent_at + renew_deadline`, where `sent_at` is when the last successful
///   acquire or renew request was sent.
/// - `retry_period`: the cadence of renewals and, jittered by [`JITTER_FACTOR`], of retries.
///
/// Build it with [`Config::new`] and the `with_*` setters, or fill the public fields and call
/// [`Config::validate`]; [`crate::Elector::new`] validates it again.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection::Config;
///
/// let config = Config::new("pod-a", "my-controller", "default")
///     .with_lease_duration(Duration::from_secs(30))
///     .with_renew_deadline(Duration::from_secs(20));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This candidate's identity, written as `holderIdentity` (usually the pod name). Must be unique
    /// among candidates and non-empty.
    pub identity: String,
    /// Name of the Lease (a DNS subdomain, at most 253 bytes).
    pub lease_name: String,
    /// Namespace of the Lease (a DNS label, at most 63 bytes).
    pub lease_namespace: String,
    /// How long a Lease stays valid after its holder last renewed it; whole seconds, >= 1 s.
    pub lease_duration: Duration,
    /// How long a leader retries renewing before it gives leadership up; < `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between renewals, and base of the jittered retry interval; at least [`MIN_RETRY_PERIOD`].
    pub retry_period: Duration,
    /// Release the Lease (holder `""`) when `run` is shut down or leadership ends, so that a follower
    /// takes over at once instead of after `lease_duration`.
    pub release_on_cancel: bool,
    /// Timeout of every API request. `None` means client-go's `max(renew_deadline / 2, 1s)`.
    pub request_timeout: Option<Duration>,
    /// How long leader-only work may take to stop once its term's token is cancelled, before it is
    /// aborted. The Lease is released only after the work has stopped. `None` means the whole
    /// [`Config::stop_window`]; a value must fit in it (a term that ends at its renew deadline must have
    /// stopped its work before a follower may take over).
    pub stop_timeout: Option<Duration>,
    /// Whether followers watch the Lease (`true`, the default) or only poll it every jittered
    /// `retry_period` (client-go's behaviour). When watching is forbidden by RBAC the elector falls back
    /// to polling on its own.
    pub watch: bool,
}

// === impl Config ===

impl Default for Config {
    /// client-go's and controller-runtime's defaults: 15 s lease, 10 s renew deadline, 2 s retry period;
    /// release on cancel, watch on, stop timeout the whole [`Config::stop_window`] (4 s with these timings).
    /// Identity, name and namespace are empty and must be set.
    fn default() -> Self {
        Self {
            identity: String::new(),
            lease_name: String::new(),
            lease_namespace: String::new(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            release_on_cancel: true,
            request_timeout: None,
            stop_timeout: None,
            watch: true,
        }
    }
}

impl Config {
    /// A default configuration for `identity` in the election of Lease `namespace/lease_name`.
    #[must_use]
    pub fn new(
        identity: impl Into<String>,
        lease_name: impl Into<String>,
        lease_namespace: impl Into<String>,
    ) -> Self {
        Self {
            identity: identity.into(),
            lease_name: lease_name.into(),
            lease_namespace: lease_namespace.into(),
            ..Self::default()
        }
    }

    /// Sets [`Config::lease_duration`].
    #[must_use]
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self
    }

    /// Sets [`Config::renew_deadline`].
    #[must_use]
    pub fn with_renew_deadline(mut self, renew_deadline: Duration) -> Self {
        self.renew_deadline = renew_deadline;
        self
    }

    /// Sets [`Config::retry_period`].
    #[must_use]
    pub fn with_retry_period(mut self, retry_period: Duration) -> Self {
        self.retry_period = retry_period;
        self
    }

    /// Sets [`Config::release_on_cancel`].
    #[must_use]
    pub fn with_release_on_cancel(mut self, release_on_cancel: bool) -> Self {
        self.release_on_cancel = release_on_cancel;
        self
    }

    /// Sets [`Config::request_timeout`].
    #[must_use]
    pub fn with_request_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = Some(request_timeout);
        self
    }

    /// Sets [`Config::stop_timeout`].
    #[must_use]
    pub fn with_stop_timeout(mut self, stop_timeout: Duration) -> Self {
        self.stop_timeout = Some(stop_timeout);
        self
    }

    /// Sets [`Config::watch`].
    #[must_use]
    pub fn with_watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// The timeout applied to each API request: [`Config::request_timeout`], or client-go's
    /// `max(renew_deadline / 2, 1s)` (`NewFromKubeconfig`, PR #98059) when unset.
    #[must_use]
    pub fn effective_request_timeout(&self) -> Duration {
        self.request_timeout
            .unwrap_or_else(|| (self.renew_deadline / 2).max(Duration::from_secs(1)))
    }

    /// The margin kept before the earliest instant a follower may take over: a fifth of
    /// `lease_duration - renew_deadline`, at most 1 s (1 s with client-go's 15 s / 10 s; 200 ms with 5 s / 4 s).
    /// It absorbs the time a kill takes to land and small clock-rate differences.
    #[must_use]
    pub fn takeover_margin(&self) -> Duration {
        (self.lease_duration.saturating_sub(self.renew_deadline) / 5).min(Duration::from_secs(1))
    }

    /// How long a term's work may take to stop after its term ended at the renew deadline:
    /// `lease_duration - renew_deadline - takeover_margin` (4 s with client-go's 15 s / 10 s).
    ///
    /// A term is valid until `sent_at + renew_deadline`, and no follower may take over before
    /// `sent_at + lease_duration` (it counts the lease duration from a write sent at `sent_at`), so the
    /// work of a term must be gone by `sent_at + lease_duration - takeover_margin`: the term's *work
    /// deadline* ([`crate::LeaderState::work_deadline`]). Stop timeouts and grace periods must fit in this
    /// window.
    #[must_use]
    pub fn stop_window(&self) -> Duration {
        self.lease_duration
            .saturating_sub(self.renew_deadline)
            .saturating_sub(self.takeover_margin())
    }

    /// The stop timeout in force: [`Config::stop_timeout`], or the whole [`Config::stop_window`].
    #[must_use]
    pub fn effective_stop_timeout(&self) -> Duration {
        self.stop_timeout.unwrap_or_else(|| self.stop_window())
    }

    /// `leaseDurationSeconds` as written to the Lease. Valid only after [`Config::validate`].
    #[must_use]
    pub fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Checks every rule, in client-go's order first (so an all-zero config fails the same way), then ours.
    ///
    /// client-go (`NewLeaderElector`): lease_duration > renew_deadline; renew_deadline >
    /// retry_period x 1.2; each > 0. Ours: retry_period at least [`MIN_RETRY_PERIOD`]; lease_duration whole
    /// seconds (client-go truncates 1.5 s to 1 s and 0.5 s to an invalid 0); identity non-empty; lease
    /// name a DNS subdomain; namespace a DNS label; request and stop timeouts > 0. The configuration of a
    /// standalone elector ([`crate::Elector::standalone`]) is validated the same way, so that switching
    /// election on later cannot fail.
    ///
    /// # Errors
    ///
    /// The first rule broken, as a [`ConfigError`] naming the field, its value and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let dur = humanize;
        if self.lease_duration <= self.renew_deadline {
            return Err(ConfigError::new(
                "lease_duration",
                dur(self.lease_duration),
                format!(
                    "leaseDuration must be greater than renewDeadline ({})",
                    dur(self.renew_deadline)
                ),
            ));
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return Err(ConfigError::new(
                "renew_deadline",
                dur(self.renew_deadline),
                format!(
                    "renewDeadline must be greater than retryPeriod*JitterFactor ({} x {JITTER_FACTOR})",
                    dur(self.retry_period)
                ),
            ));
        }
        for (field, name, value) in [
            ("lease_duration", "leaseDuration", self.lease_duration),
            ("renew_deadline", "renewDeadline", self.renew_deadline),
            ("retry_period", "retryPeriod", self.retry_period),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(
                    field,
                    dur(value),
                    format!("{name} must be greater than zero"),
                ));
            }
        }
        if self.retry_period < MIN_RETRY_PERIOD {
            return Err(ConfigError::new(
                "retry_period",
                dur(self.retry_period),
                format!(
                    "retryPeriod must be at least {}: every candidate makes about one API request per \
                     retry period, so a shorter one sends kube-apiserver more than 10 requests a second \
                     per candidate (client-go's default client rate limit is 5) and leaves a renewal no \
                     time to finish before the next",
                    dur(MIN_RETRY_PERIOD)
                ),
            ));
        }
        if self.lease_duration.subsec_nanos() != 0
            || self.lease_duration.as_secs() > i32::MAX as u64
        {
            return Err(ConfigError::new(
                "lease_duration",
                dur(self.lease_duration),
                "leaseDurationSeconds is written in whole seconds: must be a whole number of seconds, at least 1s",
            ));
        }
        if self.identity.is_empty() {
            return Err(ConfigError::new(
                "identity",
                String::new(),
                "Lock identity is empty: set a unique identity (e.g. the pod name)",
            ));
        }
        check_dns_subdomain("lease_name", &self.lease_name)?;
        check_dns_label("lease_namespace", &self.lease_namespace)?;
        if let Some(timeout) = self.request_timeout {
            if timeout.is_zero() {
                return Err(ConfigError::new(
                    "request_timeout",
                    dur(timeout),
                    "must be greater than zero",
                ));
            }
            if timeout >= self.renew_deadline {
                return Err(ConfigError::new(
                    "request_timeout",
                    dur(timeout),
                    format!(
                        "must be less than renewDeadline ({}): a request answered after the renew \
                         deadline cannot start or extend a term",
                        dur(self.renew_deadline)
                    ),
                ));
            }
        }
        if let Some(timeout) = self.stop_timeout {
            if timeout.is_zero() {
                return Err(ConfigError::new(
                    "stop_timeout",
                    dur(timeout),
                    "must be greater than zero",
                ));
            }
            self.check_fits_stop_window("stop_timeout", timeout)?;
        }
        Ok(())
    }

    /// Checks that `value` (a stop timeout or a grace period, named `field`) fits in
    /// [`Config::stop_window`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `field`, `value` and the window when it does not fit.
    pub fn check_fits_stop_window(
        &self,
        field: &'static str,
        value: Duration,
    ) -> Result<(), ConfigError> {
        if value <= self.stop_window() {
            return Ok(());
        }
        Err(ConfigError::new(
            field,
            humanize(value),
            format!(
                "must fit in leaseDuration - renewDeadline - margin ({} - {} - {} = {}): work still \
                 running after that may overlap the next leader's; raise lease_duration or lower \
                 renew_deadline",
                humanize(self.lease_duration),
                humanize(self.renew_deadline),
                humanize(self.takeover_margin()),
                humanize(self.stop_window()),
            ),
        ))
    }
}

/// `10s`, `1s 500ms`: durations in error messages read like the YAML and flags that set them.
fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Checks `value` is an RFC 1123 DNS subdomain, as kube-apiserver checks object names.
pub(crate) fn check_dns_subdomain(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if !is_dns_subdomain(value) {
        return Err(ConfigError::new(
            field,
            value.to_string(),
            DNS_SUBDOMAIN_RULE,
        ));
    }
    Ok(())
}

/// The rule of [`is_dns_subdomain`], in kube-apiserver's terms.
pub(crate) const DNS_SUBDOMAIN_RULE: &str = "must be a lowercase RFC 1123 subdomain: at most 253 \
    characters of [a-z0-9-.], starting and ending with an alphanumeric character";

/// Whether `value` is an RFC 1123 DNS subdomain, the rule of most object names (apimachinery
/// `IsDNS1123Subdomain`).
pub(crate) fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty() && value.len() <= DNS_SUBDOMAIN_MAX && value.split('.').all(is_dns_label)
}

/// Checks `value` is an RFC 1123 DNS label, as kube-apiserver checks namespace names.
pub(crate) fn check_dns_label(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if !is_dns_label(value) || value.len() > DNS_LABEL_MAX {
        return Err(ConfigError::new(
            field,
            value.to_string(),
            "must be a lowercase RFC 1123 label: at most 63 characters of [a-z0-9-], \
             starting and ending with an alphanumeric character",
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DNS_LABEL_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A configuration rule was broken.
///
/// Names the field (as in [`Config`] and the YAML schema), the value given, and the rule, e.g.
/// `invalid lease_duration "10s": leaseDuration must be greater than renewDeadline (10s)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {rule}")]
pub struct ConfigError {
    /// The field at fault, as named in [`Config`].
    pub field: &'static str,
    /// The value given, rendered (durations as `10s`, `1.5s`).
    pub value: String,
    /// The rule it breaks; client-go's message where client-go has the rule.
    pub rule: String,
}

// === impl ConfigError ===

impl ConfigError {
    pub(crate) fn new(field: &'static str, value: String, rule: impl Into<String>) -> Self {
        Self {
            field,
            value,
            rule: rule.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config::new("pod-a", "my-lease", "default")
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn defaults_are_client_go_defaults() {
        let c = Config::default();
        assert_eq!(c.lease_duration, secs(15.0));
        assert_eq!(c.renew_deadline, secs(10.0));
        assert_eq!(c.retry_period, secs(2.0));
        assert_eq!(c.effective_request_timeout(), secs(5.0));
        assert!(c.release_on_cancel && c.watch);
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn request_timeout_is_at_least_one_second_by_default() {
        let c = valid()
            .with_lease_duration(secs(2.0))
            .with_renew_deadline(secs(1.5))
            .with_retry_period(secs(1.0));
        assert_eq!(c.effective_request_timeout(), secs(1.0));
        assert_eq!(
            c.with_request_timeout(secs(0.3))
                .effective_request_timeout(),
            secs(0.3)
        );
    }

    /// Every rule, with the field it must name; mirrors client-go's `TestLeaderElectionConfigValidation`
    /// and adds ours.
    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(Config, &str, &str)> = vec![
            (
                valid().with_renew_deadline(secs(15.0)),
                "lease_duration",
                "leaseDuration must be greater than renewDeadline",
            ),
            (
                valid().with_retry_period(secs(9.0)),
                "renew_deadline",
                "renewDeadline must be greater than retryPeriod*JitterFactor",
            ),
            (
                valid().with_retry_period(Duration::ZERO),
                "retry_period",
                "retryPeriod must be greater than zero",
            ),
            (
                valid().with_retry_period(Duration::from_millis(1)),
                "retry_period",
                "retryPeriod must be at least 100ms",
            ),
            (
                valid().with_retry_period(Duration::from_millis(99)),
                "retry_period",
                "retryPeriod must be at least 100ms",
            ),
            (
                valid()
                    .with_lease_duration(secs(1.5))
                    .with_renew_deadline(secs(1.0))
                    .with_retry_period(secs(0.5)),
                "lease_duration",
                "whole number of seconds",
            ),
            (
                Config::new("", "l", "default"),
                "identity",
                "identity is empty",
            ),
            (
                Config::new("a", "", "default"),
                "lease_name",
                "RFC 1123 subdomain",
            ),
            (
                Config::new("a", "Upper", "default"),
                "lease_name",
                "RFC 1123 subdomain",
            ),
            (
                Config::new("a", "x".repeat(254), "default"),
                "lease_name",
                "RFC 1123 subdomain",
            ),
            (
                Config::new("a", "l", "with.dot"),
                "lease_namespace",
                "RFC 1123 label",
            ),
            (
                Config::new("a", "l", "n".repeat(64)),
                "lease_namespace",
                "RFC 1123 label",
            ),
            (
                Config::new("a", "l", "-bad"),
                "lease_namespace",
                "RFC 1123 label",
            ),
            (
                valid().with_request_timeout(Duration::ZERO),
                "request_timeout",
                "greater than zero",
            ),
            (
                valid().with_stop_timeout(Duration::ZERO),
                "stop_timeout",
                "greater than zero",
            ),
        ];
        for (config, field, rule) in cases {
            let err = config.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(rule), "{err} lacks {rule:?}");
        }
    }

    /// client-go checks lease > renew first, so an all-zero config fails with that message.
    #[test]
    fn all_zero_fails_like_client_go() {
        let c = Config {
            lease_duration: Duration::ZERO,
            renew_deadline: Duration::ZERO,
            retry_period: Duration::ZERO,
            ..valid()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "lease_duration");
        assert!(
            err.rule
                .starts_with("leaseDuration must be greater than renewDeadline")
        );
    }

    #[test]
    fn error_message_names_field_value_and_rule() {
        let err = valid()
            .with_renew_deadline(secs(20.0))
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid lease_duration \"15s\": leaseDuration must be greater than renewDeadline (20s)"
        );
    }

    /// The shortest timings in use (the chaos soak's 1 s / 500 ms / 100 ms) are at the bound, and valid.
    #[test]
    fn the_retry_period_bound_admits_the_shortest_timings_in_use() {
        let shortest = valid()
            .with_lease_duration(secs(1.0))
            .with_renew_deadline(secs(0.5))
            .with_retry_period(MIN_RETRY_PERIOD);
        assert_eq!(shortest.validate(), Ok(()));
    }

    #[test]
    fn names_accept_valid_kubernetes_names() {
        let longest = [&"a".repeat(63)[..]; 3].join(".") + "." + &"a".repeat(61); // 253 bytes, labels of <= 63
        assert_eq!(longest.len(), 253);
        for name in ["a", "my-lease", "kube-system.leader", &longest] {
            assert!(check_dns_subdomain("lease_name", name).is_ok(), "{name}");
        }
        assert!(check_dns_subdomain("lease_name", "a..b").is_err());
        assert!(check_dns_subdomain("lease_name", &"a".repeat(64)).is_err());
        assert!(check_dns_label("lease_namespace", &"a".repeat(63)).is_ok());
    }
}
