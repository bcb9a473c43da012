//! The coordinator's settings: Beskar7's flag names (`--enable-claim-coordinator-leader-election`,
//! `--claim-coordinator-lease-duration`, `-renew-deadline`, `-retry-period`), plus the processing interval,
//! the delegation mode and the starvation bound; the same keys in a YAML file (`claimCoordinator:`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::priority::DEFAULT_MAX_WAIT;

/// The coordinator Lease's default name.
pub const DEFAULT_LEASE_NAME: &str = "claim-coordinator-leader";

/// The binds a leader has in flight at most by default: 10, the concurrent reconciles per replica that the
/// bench's optimistic arms model for the original claim controller (controller-runtime's
/// `MaxConcurrentReconciles`, `docs/claim-coordinator.md`). Ten writes in flight stay far below
/// kube-apiserver's default of 400 mutating requests in flight (`--max-mutating-requests-inflight`); a
/// batch of a thousand binds (three PUTs each, one after the other) is then three hundred round trips
/// long.
pub const DEFAULT_MAX_CONCURRENT_BINDS: usize = 10;

/// How a consumer gets its host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// Always delegate to the leader: write the claim and wait until it is bound.
    Leader,
    /// Every consumer claims directly (intent on the claim first, then the host, then the claim).
    Optimistic,
    /// Delegate while a valid leader exists; after a lease duration without one, claim directly.
    #[default]
    Auto,
}

impl Mode {
    /// `leader`, `optimistic` or `auto`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Optimistic => "optimistic",
            Self::Auto => "auto",
        }
    }
}

/// The coordinator's settings, with the defaults of Beskar7's flags (15 s / 10 s / 2 s, client-go's) and
/// a 1 s processing interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Whether replicas elect a leader to bind claims (`--enable-claim-coordinator-leader-election`,
    /// default true here: without a leader every claim is optimistic).
    pub leader_election: bool,
    /// The coordinator Lease's name (default `claim-coordinator-leader`).
    pub lease_name: String,
    /// LeaseDuration (default 15 s).
    pub lease_duration: Duration,
    /// RenewDeadline (default 10 s).
    pub renew_deadline: Duration,
    /// RetryPeriod (default 2 s).
    pub retry_period: Duration,
    /// How often the leader serves the pending claims when no event arrives sooner (default 1 s).
    pub processing_interval: Duration,
    /// How consumers get hosts (default [`Mode::Auto`]).
    pub mode: Mode,
    /// A claim pending this long goes first (default 10 min).
    pub max_wait: Duration,
    /// The leader's binds in flight at most (default [`DEFAULT_MAX_CONCURRENT_BINDS`]; at least 1).
    pub max_concurrent_binds: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            leader_election: true,
            lease_name: DEFAULT_LEASE_NAME.into(),
            // client-go's and Beskar7's defaults.
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            processing_interval: Duration::from_secs(1),
            mode: Mode::Auto,
            max_wait: DEFAULT_MAX_WAIT,
            max_concurrent_binds: DEFAULT_MAX_CONCURRENT_BINDS,
        }
    }
}

/// The result of loading and checking settings.
pub type Result<T, E = SettingsError> = std::result::Result<T, E>;

/// An invalid setting, or an unreadable file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A value breaks a rule.
    #[error("invalid {field} {value:?}: {rule}")]
    Invalid {
        /// The setting (YAML key or flag).
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule.
        rule: String,
    },
    /// The YAML does not parse or has unknown keys.
    #[error("settings YAML: {0}")]
    Yaml(#[from] leaderelection_controller::settings::YamlError),
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The YAML file: everything under `claimCoordinator:`, each key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    claim_coordinator: Overrides,
}

/// Values that replace defaults: from the YAML file, then from flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overrides {
    /// `leaderElection`.
    pub leader_election: Option<bool>,
    /// `leaseName`.
    pub lease_name: Option<String>,
    /// `leaseDuration`, a humantime string (`15s`).
    pub lease_duration: Option<String>,
    /// `renewDeadline`.
    pub renew_deadline: Option<String>,
    /// `retryPeriod`.
    pub retry_period: Option<String>,
    /// `processingInterval`.
    pub processing_interval: Option<String>,
    /// `mode`: `leader`, `optimistic` or `auto`.
    pub mode: Option<Mode>,
    /// `maxWait`.
    pub max_wait: Option<String>,
    /// `maxConcurrentBinds`.
    pub max_concurrent_binds: Option<usize>,
}

// === impl Settings ===

impl Settings {
    /// Defaults, overridden by the YAML `file` (if any), then by `flags`; validated.
    ///
    /// # Errors
    ///
    /// [`SettingsError`] naming the key and value that cannot be read or break a rule.
    pub fn resolve(file: Option<&str>, flags: &Overrides) -> Result<Self> {
        let mut settings = Self::default();
        if let Some(yaml) = file {
            let file: File = if yaml.trim().is_empty() {
                File::default()
            } else {
                leaderelection_controller::settings::from_yaml_str(yaml)?
            };
            settings.apply(&file.claim_coordinator)?;
        }
        settings.apply(flags)?;
        settings.validate()?;
        Ok(settings)
    }

    /// As [`Settings::resolve`] with the YAML read from `path`.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Read`] when the file cannot be read, else as [`Settings::resolve`].
    pub fn from_path(path: &Path, flags: &Overrides) -> Result<Self> {
        let yaml = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::resolve(Some(&yaml), flags)
    }

    fn apply(&mut self, o: &Overrides) -> Result<()> {
        if let Some(v) = o.leader_election {
            self.leader_election = v;
        }
        if let Some(v) = &o.lease_name {
            self.lease_name.clone_from(v);
        }
        if let Some(v) = o.mode {
            self.mode = v;
        }
        if let Some(v) = o.max_concurrent_binds {
            self.max_concurrent_binds = v;
        }
        for (field, value, target) in [
            ("leaseDuration", &o.lease_duration, &mut self.lease_duration),
            ("renewDeadline", &o.renew_deadline, &mut self.renew_deadline),
            ("retryPeriod", &o.retry_period, &mut self.retry_period),
            (
                "processingInterval",
                &o.processing_interval,
                &mut self.processing_interval,
            ),
            ("maxWait", &o.max_wait, &mut self.max_wait),
        ] {
            if let Some(text) = value {
                *target = humantime::parse_duration(text).map_err(|e| SettingsError::Invalid {
                    field,
                    value: text.clone(),
                    rule: format!("a duration with a unit, e.g. \"15s\" ({e})"),
                })?;
            }
        }
        Ok(())
    }

    /// Checks the rules: the elector's ([`leaderelection::Config::validate`]: leaseDuration >
    /// renewDeadline > retryPeriod x 1.2, whole seconds), processingInterval and maxWait above zero,
    /// maxConcurrentBinds at least 1.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] naming the first rule broken.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("processingInterval", self.processing_interval),
            ("maxWait", self.max_wait),
        ] {
            if value.is_zero() {
                return Err(SettingsError::Invalid {
                    field,
                    value: humantime::format_duration(value).to_string(),
                    rule: "must be greater than zero".into(),
                });
            }
        }
        if self.max_concurrent_binds == 0 {
            return Err(SettingsError::Invalid {
                field: "maxConcurrentBinds",
                value: "0".into(),
                rule: "must be at least 1".into(),
            });
        }
        self.elector_config("validation", "default")
            .validate()
            .map_err(|e| SettingsError::Invalid {
                field: e.field,
                value: e.value,
                rule: e.rule,
            })
    }

    /// The elector's configuration for `identity`, with the Lease in `namespace`.
    #[must_use]
    pub fn elector_config(&self, identity: &str, namespace: &str) -> leaderelection::Config {
        leaderelection::Config::new(identity, &self.lease_name, namespace)
            .with_lease_duration(self.lease_duration)
            .with_renew_deadline(self.renew_deadline)
            .with_retry_period(self.retry_period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_beskar7s() {
        let s = Settings::resolve(None, &Overrides::default()).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(
            (s.lease_duration, s.renew_deadline, s.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert_eq!(s.lease_name, "claim-coordinator-leader");
        assert_eq!(s.mode, Mode::Auto);
        assert_eq!(s.max_concurrent_binds, 10);
    }

    #[test]
    fn flags_override_the_file() {
        let yaml = "claimCoordinator:\n  leaseDuration: 20s\n  mode: leader\n  processingInterval: 500ms\n  maxConcurrentBinds: 4\n";
        let flags = Overrides {
            mode: Some(Mode::Optimistic),
            ..Overrides::default()
        };
        let s = Settings::resolve(Some(yaml), &flags).unwrap();
        assert_eq!(s.lease_duration, Duration::from_secs(20));
        assert_eq!(s.processing_interval, Duration::from_millis(500));
        assert_eq!(s.mode, Mode::Optimistic);
        assert_eq!(s.max_concurrent_binds, 4);
    }

    #[test]
    fn bad_values_name_the_key_value_and_rule() {
        let err = Settings::resolve(
            Some("claimCoordinator:\n  retryPeriod: fast\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("retryPeriod") && err.contains("fast"), "{err}");
        let err = Settings::resolve(
            Some("claimCoordinator:\n  leaseDuration: 5s\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lease_duration") && err.contains("renewDeadline"),
            "{err}"
        );
        let err = Settings::resolve(
            Some("claimCoordinator:\n  processingInterval: 0s\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("processingInterval"), "{err}");
        let err = Settings::resolve(
            Some("claimCoordinator:\n  maxConcurrentBinds: 0\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("maxConcurrentBinds") && err.contains("at least 1"),
            "{err}"
        );
        let err = Settings::resolve(
            Some("claimCoordinator:\n  leaseTime: 5s\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("leaseTime"), "{err}");
    }
}
