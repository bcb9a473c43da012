//! The YAML configuration (the `controller.leader_election` section) and its merge with the
//! environment (`POD_NAME`, `POD_NAMESPACE`, the service-account namespace) into a validated
//! [`leaderelection::Config`].
//!
//! ```yaml
//! controller:
//!   leader_election:
//!     enabled: true                  # default true
//!     lease_name: my-app-leader      # required when enabled
//!     lease_namespace: team-a        # default: POD_NAMESPACE, the service-account namespace, "default"
//!     lease_duration: 15s            # default 15s
//!     renew_deadline: 10s            # default 10s
//!     retry_period: 2s               # default 2s
//!     release_on_cancel: true        # default true
//!     events: false                  # default false: Kubernetes Events on the Lease
//!     lease_labels: {app.kubernetes.io/part-of: my-app}   # given to the Lease when it is created
//!     lease_annotations: {argocd.argoproj.io/sync-options: Prune=false}
//!     identity: pod-a                # default POD_NAME (see below)
//!     coordinated: false             # default false: coordinated leader election (KEP-4355)
//!     binary_version: 1.34.0         # with coordinated: the LeaseCandidate's binaryVersion
//!     emulation_version: 1.33.0      # with coordinated: its emulationVersion (default binary_version)
//! ```
//!
//! Every key is optional; an empty file, or a `controller:` or `leader_election:` key with no value, is all
//! defaults. Durations are humantime strings (`15s`, `1m30s`, `500ms`). Parsing is strict: an unknown key is
//! an error naming the key, its path and its line, and a malformed duration is an error naming the key and
//! the value, e.g. `invalid controller.leader_election.lease_duration "15 parsecs": ...`.
//!
//! # Defaults, and why
//!
//! - `enabled: true`: a controller is meant to run with two or more replicas, and replicas without an
//!   election would all act at once.
//! - `lease_duration: 15s`, `renew_deadline: 10s`, `retry_period: 2s`: client-go's and
//!   controller-runtime's defaults, which are also [`Config::default`]'s.
//! - `release_on_cancel: true` (client-go's `LeaderElectionConfig.ReleaseOnCancel`), so a handover on a
//!   rolling update takes one retry period instead of a whole lease duration.
//! - The Lease namespace: the file, then `POD_NAMESPACE` (the downward API), then the service-account
//!   namespace file, then `"default"` (logged as a warning).
//! - The identity: `POD_NAME` (the downward API). There is no default when election is enabled
//!   ([`SettingsError::MissingIdentity`]): a made-up identity shared by two replicas would let both lead.
//!
//! # Examples
//!
//! ```
//! use leaderelection_controller::settings::{Environment, Overrides, Settings};
//!
//! let settings = Settings::from_yaml_str("controller: {leader_election: {lease_name: my-app-leader}}")?;
//! let env = Environment { pod_name: Some("pod-a".into()), ..Environment::default() };
//! let config = settings.to_elector_config(&env, &Overrides::default())?;
//! assert_eq!((config.identity.as_str(), config.lease_namespace.as_str()), ("pod-a", "default"));
//! assert_eq!(config.lease_duration, std::time::Duration::from_secs(15));
//! # Ok::<(), leaderelection_controller::settings::SettingsError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leaderelection::{CandidateConfig, Config, ConfigError, LeaseMetadata, MetadataError};
use serde::{Deserialize, Deserializer};

/// Where Kubernetes mounts the pod's namespace (with the ServiceAccount token).
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Default of `enabled`: true (replicas without an election would all act at once).
pub const DEFAULT_ENABLED: bool = true;
/// Default of `lease_duration`: 15 seconds (client-go).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default of `renew_deadline`: 10 seconds (client-go).
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default of `retry_period`: 2 seconds (client-go).
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Default of `release_on_cancel`: true (a rolling update hands over in one retry period).
pub const DEFAULT_RELEASE_ON_CANCEL: bool = true;
/// The Lease namespace when neither the file, `POD_NAMESPACE` nor the service account gives one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The identity and Lease name a disabled configuration gets when none is given; never written anywhere,
/// since a disabled elector makes no API call.
const STANDALONE: &str = "standalone";

/// The YAML path of the section, for error messages.
const KEY: &str = "controller.leader_election";

/// The configuration file: a mapping with the one key `controller`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The `controller` section (all defaults when absent or empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub controller: ControllerSettings,
}

/// The `controller` section: a mapping with the one key `leader_election`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSettings {
    /// `controller.leader_election` (all defaults when absent or empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub leader_election: LeaderElectionSettings,
}

/// `controller.leader_election`, as written: every field optional, durations unparsed.
///
/// The getters ([`LeaderElectionSettings::lease_duration`] and the others) apply the defaults and parse;
/// [`Settings::from_yaml_str`] has already checked that every duration parses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionSettings {
    /// Whether to elect (default true). False runs this replica as the only leader, without any API call
    /// (single-replica mode).
    pub enabled: Option<bool>,
    /// The Lease's name, an RFC 1123 subdomain; required when enabled.
    pub lease_name: Option<String>,
    /// The Lease's namespace, an RFC 1123 label (default: `POD_NAMESPACE`, the service-account namespace,
    /// `"default"`).
    pub lease_namespace: Option<String>,
    /// This candidate's identity (default `POD_NAME`). Set it only in a file read
    /// by one replica, since replicas sharing an identity would all lead.
    pub identity: Option<String>,
    /// `leaseDurationSeconds` as a humantime string, whole seconds, e.g. `"15s"` (default 15 s).
    pub lease_duration: Option<String>,
    /// RenewDeadline as a humantime string, e.g. `"10s"` (default 10 s).
    pub renew_deadline: Option<String>,
    /// RetryPeriod as a humantime string, e.g. `"2s"` (default 2 s).
    pub retry_period: Option<String>,
    /// ReleaseOnCancel: clear holderIdentity on shutdown (default true).
    pub release_on_cancel: Option<bool>,
    /// Record Kubernetes Events on the Lease (`<identity> became leader`, `<identity> stopped leading`;
    /// default false): see [`crate::runtime::Builder::events`], which needs `events.k8s.io` `events`:
    /// `create`, `patch`.
    pub events: Option<bool>,
    /// Labels given to the Lease when this candidate creates it (a Lease that exists keeps its own):
    /// keys are qualified names (`[prefix/]name`), values at most 63 characters (Kubernetes' label rules).
    pub lease_labels: Option<BTreeMap<String, String>>,
    /// Annotations given to the Lease when this candidate creates it: keys are qualified names.
    pub lease_annotations: Option<BTreeMap<String, String>>,
    /// Coordinated leader election (KEP-4355; default false): register a `coordination.k8s.io/v1beta1`
    /// LeaseCandidate and lead only when kube-apiserver's election controller assigns the Lease (see
    /// [`leaderelection::Candidate`]); an ordinary election where LeaseCandidates are not served. Needs
    /// `coordination.k8s.io` `leasecandidates`: `get`, `create`, `update`, `delete`, `list`, `watch`.
    pub coordinated: Option<bool>,
    /// With `coordinated`: the LeaseCandidate's `binaryVersion`, `MAJOR.MINOR.PATCH` (default: the
    /// caller's, see [`LeaderElectionSettings::candidate_config`]).
    pub binary_version: Option<String>,
    /// With `coordinated`: the LeaseCandidate's `emulationVersion`, at most `binary_version` (default
    /// `binary_version`). The election controller prefers the lowest.
    pub emulation_version: Option<String>,
}

/// What the process environment says about identity and namespace; a plain struct so that tests and
/// callers can build one without touching the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// `POD_NAME` (the downward API's `metadata.name`).
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE` (the downward API's `metadata.namespace`).
    pub pod_namespace: Option<String>,
    /// The content of [`SERVICE_ACCOUNT_NAMESPACE_FILE`], trimmed.
    pub service_account_namespace: Option<String>,
}

/// The result of reading settings and turning them into an elector [`Config`].
pub type Result<T, E = SettingsError> = std::result::Result<T, E>;

/// Why the settings could not be loaded or turned into an elector [`Config`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file could not be read.
    #[error("reading {path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the schema: an unknown key, a wrong type. The message names the key's path
    /// (`controller.leader_election: unknown field ...`) and its line and column.
    #[error("invalid configuration: {source}")]
    Yaml {
        /// Where, as one-based `(line, column)`, when the parser knows.
        location: Option<(usize, usize)>,
        /// The parser's error.
        #[source]
        source: serde_norway::Error,
    },
    /// A value breaks a rule of the file's syntax (e.g. a duration that does not parse).
    #[error("invalid {key} {value:?}: {rule}")]
    Invalid {
        /// The key's path, e.g. `controller.leader_election.lease_duration`.
        key: String,
        /// The value given.
        value: String,
        /// The rule.
        rule: String,
    },
    /// Election enabled but no identity: neither the caller, the file nor `POD_NAME` gave one.
    #[error(
        "missing identity: set POD_NAME (downward API metadata.name), controller.leader_election.identity, or --identity"
    )]
    MissingIdentity,
    /// Election enabled but no Lease name: neither the caller nor the file gave one.
    #[error("missing controller.leader_election.lease_name (or --lease-name)")]
    MissingLeaseName,
    /// The merged elector configuration breaks a rule of [`Config::validate`]; the message names the field
    /// (as in [`Config`] and this schema), the value and the rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Values that win over the file and the environment (e.g. command-line flags); `None` leaves a value to
/// the file, the environment and the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The identity.
    pub identity: Option<String>,
    /// The Lease's name.
    pub lease_name: Option<String>,
    /// The Lease's namespace.
    pub lease_namespace: Option<String>,
    /// The lease duration.
    pub lease_duration: Option<Duration>,
    /// RenewDeadline.
    pub renew_deadline: Option<Duration>,
    /// RetryPeriod.
    pub retry_period: Option<Duration>,
    /// The identity when neither `identity`, the file nor `POD_NAME` gives one (last in the precedence,
    /// unlike the other fields: e.g. a generated, unique one).
    pub fallback_identity: Option<String>,
}

// === impl Settings ===

impl Settings {
    /// Parses a YAML document; an empty one (or one of comments only) is all defaults.
    ///
    /// Checks the schema and that every duration parses; the rules between values (lease duration above
    /// renew deadline, ...) are checked by [`Settings::to_elector_config`], once flags and environment are
    /// merged in.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Yaml`] for malformed YAML, an unknown key or a wrong type, naming the key and its
    /// location; [`SettingsError::Invalid`] for a duration that does not parse, naming the key and the value.
    pub fn from_yaml_str(yaml: &str) -> Result<Self> {
        let settings = serde_norway::from_str::<Option<Self>>(yaml)
            .map_err(|source| SettingsError::Yaml {
                location: source.location().map(|l| (l.line(), l.column())),
                source,
            })?
            .unwrap_or_default();
        settings.controller.leader_election.durations()?;
        settings.controller.leader_election.lease_metadata()?;
        Ok(settings)
    }

    /// Reads and parses a YAML file.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Io`] naming the path, or the errors of [`Settings::from_yaml_str`].
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// The `controller.leader_election` section.
    #[must_use]
    pub fn leader_election(&self) -> &LeaderElectionSettings {
        &self.controller.leader_election
    }

    /// The elector configuration: each value from `overrides`, else the file, else `env`, else its
    /// default; then [`Config::validate`].
    ///
    /// Identity: override, file, `POD_NAME`. Lease namespace: override, file, `POD_NAMESPACE`, the
    /// service-account namespace, `"default"` (with a warning). A disabled configuration needs neither
    /// identity nor Lease name (both become `"standalone"` if missing) but is validated all the same, so
    /// that enabling it later cannot fail. The other fields of [`Config`] (`request_timeout`,
    /// `stop_timeout`, `watch`) keep their defaults.
    ///
    /// # Errors
    ///
    /// [`SettingsError::MissingIdentity`] and [`SettingsError::MissingLeaseName`] when enabled;
    /// [`SettingsError::Invalid`] for a duration that does not parse (only for settings not made by
    /// [`Settings::from_yaml_str`]); [`SettingsError::Config`] for a broken rule of [`Config::validate`],
    /// naming the field and the value.
    pub fn to_elector_config(&self, env: &Environment, overrides: &Overrides) -> Result<Config> {
        let le = self.leader_election();
        let enabled = le.enabled();
        let identity = first([
            overrides.identity.as_deref(),
            le.identity.as_deref(),
            env.pod_name.as_deref(),
            overrides.fallback_identity.as_deref(),
        ]);
        let identity = match identity {
            Some(identity) => identity,
            None if enabled => return Err(SettingsError::MissingIdentity),
            None => STANDALONE,
        };
        let lease_name = match first([overrides.lease_name.as_deref(), le.lease_name()]) {
            Some(name) => name,
            None if enabled => return Err(SettingsError::MissingLeaseName),
            None => STANDALONE,
        };
        let namespace = first([
            overrides.lease_namespace.as_deref(),
            le.lease_namespace(),
            env.namespace(),
        ])
        .unwrap_or_else(|| {
            if enabled {
                tracing::warn!(
                    "no lease namespace, POD_NAMESPACE or service-account namespace: using {DEFAULT_NAMESPACE:?}"
                );
            }
            DEFAULT_NAMESPACE
        });
        let (lease_duration, renew_deadline, retry_period) = le.durations()?;
        let config = Config::new(identity, lease_name, namespace)
            .with_enabled(enabled)
            .with_lease_duration(overrides.lease_duration.unwrap_or(lease_duration))
            .with_renew_deadline(overrides.renew_deadline.unwrap_or(renew_deadline))
            .with_retry_period(overrides.retry_period.unwrap_or(retry_period))
            .with_release_on_cancel(le.release_on_cancel());
        config.validate()?;
        Ok(config)
    }
}

// === impl LeaderElectionSettings ===

impl LeaderElectionSettings {
    /// `enabled`, default [`DEFAULT_ENABLED`] (true).
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(DEFAULT_ENABLED)
    }

    /// `lease_name`, if given (there is no default).
    #[must_use]
    pub fn lease_name(&self) -> Option<&str> {
        self.lease_name.as_deref()
    }

    /// `lease_namespace`, if given (the environment supplies the default).
    #[must_use]
    pub fn lease_namespace(&self) -> Option<&str> {
        self.lease_namespace.as_deref()
    }

    /// `release_on_cancel`, default [`DEFAULT_RELEASE_ON_CANCEL`] (true).
    #[must_use]
    pub fn release_on_cancel(&self) -> bool {
        self.release_on_cancel.unwrap_or(DEFAULT_RELEASE_ON_CANCEL)
    }

    /// `lease_labels` and `lease_annotations` (default none), for [`leaderelection::KubeLeaseLock::with_metadata`].
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] naming the key (`controller.leader_election.lease_labels` or
    /// `lease_annotations`), the `key=value` and the Kubernetes rule it breaks.
    pub fn lease_metadata(&self) -> Result<LeaseMetadata> {
        let metadata = LeaseMetadata {
            labels: self.lease_labels.clone().unwrap_or_default(),
            annotations: self.lease_annotations.clone().unwrap_or_default(),
        };
        metadata.validate().map_err(|err| {
            let (field, value) = match &err {
                MetadataError::InvalidLabelValue { key, value, .. } => {
                    ("lease_labels", format!("{key}={value}"))
                }
                MetadataError::InvalidKey { key, .. } if metadata.labels.contains_key(key) => {
                    ("lease_labels", key.clone())
                }
                MetadataError::InvalidKey { key, .. } => ("lease_annotations", key.clone()),
                MetadataError::AnnotationsTooLarge { bytes } => {
                    ("lease_annotations", format!("{bytes} bytes"))
                }
            };
            SettingsError::Invalid {
                key: format!("{KEY}.{field}"),
                value,
                rule: err.to_string(),
            }
        })?;
        Ok(metadata)
    }

    /// `events`, default false.
    #[must_use]
    pub fn events(&self) -> bool {
        self.events.unwrap_or(false)
    }

    /// `coordinated`, default false.
    #[must_use]
    pub fn coordinated(&self) -> bool {
        self.coordinated.unwrap_or(false)
    }

    /// The LeaseCandidate to register when `coordinated` (else `None`): `binary_version` (default
    /// `default_binary_version`, e.g. the program's own version) and `emulation_version` (default the binary
    /// version), checked by [`CandidateConfig::validate`].
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] naming the key (`controller.leader_election.binary_version` or
    /// `emulation_version`), the value and the rule.
    pub fn candidate_config(
        &self,
        default_binary_version: &str,
    ) -> Result<Option<CandidateConfig>> {
        if !self.coordinated() {
            return Ok(None);
        }
        let binary = self
            .binary_version
            .as_deref()
            .unwrap_or(default_binary_version);
        let config = CandidateConfig::new(binary)
            .with_emulation_version(self.emulation_version.as_deref().unwrap_or(binary));
        config.validate().map_err(|err| SettingsError::Invalid {
            key: format!("{KEY}.{}", err.field),
            value: err.value,
            rule: err.rule,
        })?;
        Ok(Some(config))
    }

    /// `lease_duration`, default [`DEFAULT_LEASE_DURATION`] (15 s).
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] when the value is not a humantime duration.
    pub fn lease_duration(&self) -> Result<Duration> {
        duration(
            "lease_duration",
            self.lease_duration.as_deref(),
            DEFAULT_LEASE_DURATION,
        )
    }

    /// `renew_deadline`, default [`DEFAULT_RENEW_DEADLINE`] (10 s).
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] when the value is not a humantime duration.
    pub fn renew_deadline(&self) -> Result<Duration> {
        duration(
            "renew_deadline",
            self.renew_deadline.as_deref(),
            DEFAULT_RENEW_DEADLINE,
        )
    }

    /// `retry_period`, default [`DEFAULT_RETRY_PERIOD`] (2 s).
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] when the value is not a humantime duration.
    pub fn retry_period(&self) -> Result<Duration> {
        duration(
            "retry_period",
            self.retry_period.as_deref(),
            DEFAULT_RETRY_PERIOD,
        )
    }

    fn durations(&self) -> Result<(Duration, Duration, Duration)> {
        Ok((
            self.lease_duration()?,
            self.renew_deadline()?,
            self.retry_period()?,
        ))
    }
}

// === impl Environment ===

impl Environment {
    /// Reads `POD_NAME`, `POD_NAMESPACE` and [`SERVICE_ACCOUNT_NAMESPACE_FILE`]. Empty or blank values count
    /// as unset; an unreadable file (e.g. outside a cluster) counts as absent.
    #[must_use]
    pub fn from_process() -> Self {
        Self::from_sources(
            |name| std::env::var(name).ok(),
            Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE),
        )
    }

    /// As [`Environment::from_process`], with the variables looked up by `var` and the namespace read from
    /// `service_account_namespace_file`.
    #[must_use]
    pub fn from_sources(
        var: impl Fn(&str) -> Option<String>,
        service_account_namespace_file: &Path,
    ) -> Self {
        let present =
            |value: Option<String>| value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        Self {
            pod_name: present(var("POD_NAME")),
            pod_namespace: present(var("POD_NAMESPACE")),
            service_account_namespace: present(
                std::fs::read_to_string(service_account_namespace_file).ok(),
            ),
        }
    }

    /// The namespace by precedence: `POD_NAMESPACE`, then the service-account namespace; `None` when
    /// neither is known (the caller falls back to [`DEFAULT_NAMESPACE`], and should say so).
    #[must_use]
    pub fn namespace(&self) -> Option<&str> {
        self.pod_namespace
            .as_deref()
            .or(self.service_account_namespace.as_deref())
    }
}

/// The first value given.
fn first<const N: usize>(values: [Option<&str>; N]) -> Option<&str> {
    values.into_iter().flatten().next()
}

/// A mapping key with no value (`leader_election:`) means "all defaults", not a type error.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn duration(field: &str, value: Option<&str>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text.trim()).map_err(|e| SettingsError::Invalid {
            key: format!("{KEY}.{field}"),
            value: text.to_owned(),
            rule: format!("invalid duration: {e} (expected e.g. \"15s\", \"1m30s\", \"500ms\")"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn env(pod: Option<&str>, ns: Option<&str>, sa: Option<&str>) -> Environment {
        Environment {
            pod_name: pod.map(str::to_owned),
            pod_namespace: ns.map(str::to_owned),
            service_account_namespace: sa.map(str::to_owned),
        }
    }

    /// The elector configuration for `yaml` in a pod named `pod-a` with no namespace in the environment.
    fn config(yaml: &str) -> Result<Config> {
        Settings::from_yaml_str(yaml)?
            .to_elector_config(&env(Some("pod-a"), None, None), &Overrides::default())
    }

    /// The `(field, value)` of the `ConfigError` that `yaml` must produce.
    fn rejected(yaml: &str) -> (&'static str, String) {
        match config(yaml) {
            Err(SettingsError::Config(e)) => (e.field, e.value),
            other => panic!("expected a ConfigError, got {other:?}"),
        }
    }

    /// The `(key, value)` of the `Invalid` error that parsing `yaml` must produce.
    fn invalid(yaml: &str) -> (String, String) {
        match Settings::from_yaml_str(yaml) {
            Err(SettingsError::Invalid { key, value, .. }) => (key, value),
            other => panic!("expected SettingsError::Invalid, got {other:?}"),
        }
    }

    fn le(body: &str) -> String {
        format!("controller: {{leader_election: {{{body}}}}}")
    }

    /// A configuration with its own timings (60 s / 15 s / 5 s) and the identity from `POD_NAME`.
    const FULL_EXAMPLE: &str = "
controller:
  leader_election:
    enabled: true
    lease_name: \"haproxy-template-ic-leader\"
    lease_duration: \"60s\"
    renew_deadline: \"15s\"
    retry_period: \"5s\"
";

    // 1
    #[test]
    fn the_full_example_is_valid() {
        let c = config(FULL_EXAMPLE).unwrap();
        assert_eq!(c.lease_name, "haproxy-template-ic-leader");
        assert_eq!(c.identity, "pod-a");
        assert_eq!(c.lease_namespace, "default");
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (60 * SECOND, 15 * SECOND, 5 * SECOND)
        );
        assert!(c.enabled);
        assert!(c.release_on_cancel);
        assert_eq!(c.lease_duration_seconds(), 60);
    }

    // 2
    #[test]
    fn an_empty_file_is_all_defaults() {
        for yaml in [
            "",
            "\n",
            "# only a comment\n",
            "---\n",
            "controller:\n",
            "controller:\n  leader_election:\n",
            "controller: {}",
            "controller: {leader_election: {}}",
        ] {
            let settings =
                Settings::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
            assert_eq!(settings, Settings::default(), "{yaml:?}");
        }
        let le = Settings::default().controller.leader_election;
        assert!(le.enabled());
        assert!(le.release_on_cancel());
        assert_eq!(le.lease_name(), None);
        assert_eq!(le.lease_namespace(), None);
        assert_eq!(le.lease_duration().unwrap(), 15 * SECOND);
        assert_eq!(le.renew_deadline().unwrap(), 10 * SECOND);
        assert_eq!(le.retry_period().unwrap(), 2 * SECOND);
    }

    // 3
    #[test]
    fn defaults_are_the_elector_defaults() {
        let d = Config::default();
        assert_eq!(
            (
                DEFAULT_LEASE_DURATION,
                DEFAULT_RENEW_DEADLINE,
                DEFAULT_RETRY_PERIOD
            ),
            (d.lease_duration, d.renew_deadline, d.retry_period)
        );
        assert_eq!(
            (DEFAULT_ENABLED, DEFAULT_RELEASE_ON_CANCEL),
            (d.enabled, d.release_on_cancel)
        );
        let c = config(&le("lease_name: x")).unwrap();
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (15 * SECOND, 10 * SECOND, 2 * SECOND)
        );
        assert!(c.enabled && c.release_on_cancel);
        assert_eq!(
            (c.request_timeout, c.stop_timeout, c.watch),
            (d.request_timeout, d.stop_timeout, d.watch)
        );
    }

    // 4
    #[test]
    fn durations_accept_humantime_compounds() {
        let c = config(&le(
            "lease_name: x, lease_duration: 1m30s, renew_deadline: 1m, retry_period: 2500ms",
        ))
        .unwrap();
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (90 * SECOND, 60 * SECOND, Duration::from_millis(2500))
        );
    }

    // 5
    #[test]
    fn disabled_needs_neither_identity_nor_lease_name() {
        let settings = Settings::from_yaml_str(&le("enabled: false")).unwrap();
        let c = settings
            .to_elector_config(&Environment::default(), &Overrides::default())
            .unwrap();
        assert!(!c.enabled);
        assert_eq!(
            (
                c.identity.as_str(),
                c.lease_name.as_str(),
                c.lease_namespace.as_str()
            ),
            ("standalone", "standalone", "default")
        );
    }

    // 6
    #[test]
    fn disabled_is_still_validated() {
        let (field, value) = rejected(&le("enabled: false, lease_name: x, renew_deadline: 20s"));
        assert_eq!((field, value.as_str()), ("lease_duration", "15s"));
    }

    // 7
    #[test]
    fn missing_lease_name_is_an_error_when_enabled() {
        let err = config(&le("enabled: true")).unwrap_err();
        assert!(matches!(err, SettingsError::MissingLeaseName), "{err:?}");
        assert!(err.to_string().contains("lease_name"), "{err}");
    }

    // 8
    #[test]
    fn missing_identity_is_an_error_when_enabled() {
        let settings = Settings::from_yaml_str(FULL_EXAMPLE).unwrap();
        let err = settings
            .to_elector_config(&env(None, Some("ns"), None), &Overrides::default())
            .unwrap_err();
        assert!(matches!(err, SettingsError::MissingIdentity), "{err:?}");
        assert!(err.to_string().contains("POD_NAME"), "{err}");
    }

    // 9
    #[test]
    fn lease_duration_must_exceed_renew_deadline() {
        let (field, value) = rejected(&le("lease_name: x, lease_duration: 10s"));
        assert_eq!((field, value.as_str()), ("lease_duration", "10s"));
        let err = config(&le("lease_name: x, lease_duration: 10s")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid lease_duration \"10s\": leaseDuration must be greater than renewDeadline (10s)"
        );
    }

    // 10
    #[test]
    fn renew_deadline_must_exceed_retry_period_times_jitter() {
        // 12s == 10s x 1.2: on the boundary, rejected as client-go does.
        let (field, value) = rejected(&le(
            "lease_name: x, lease_duration: 15s, renew_deadline: 12s, retry_period: 10s",
        ));
        assert_eq!((field, value.as_str()), ("renew_deadline", "12s"));
        assert!(
            config(&le(
                "lease_name: x, lease_duration: 15s, renew_deadline: 13s, retry_period: 10s"
            ))
            .is_ok()
        );
    }

    // 11
    #[test]
    fn zero_durations_are_rejected() {
        // client-go's order: lease > renew first, then renew > retry x 1.2, then each > 0.
        let cases = [
            ("lease_duration: 0s", "lease_duration", "0s"),
            ("renew_deadline: 0s", "renew_deadline", "0s"),
            ("retry_period: 0s", "retry_period", "0s"),
        ];
        for (body, field, value) in cases {
            let got = rejected(&le(&format!("lease_name: x, {body}")));
            assert_eq!((got.0, got.1.as_str()), (field, value), "{body}");
        }
    }

    // 11b
    #[test]
    fn a_retry_period_below_100ms_is_rejected_from_the_file() {
        let got = rejected(&le("lease_name: x, retry_period: 50ms"));
        assert_eq!((got.0, got.1.as_str()), ("retry_period", "50ms"));
        assert!(
            config(&le("lease_name: x, retry_period: 100ms")).is_ok(),
            "100ms is on the bound"
        );
    }

    // 12
    #[test]
    fn negative_durations_do_not_parse() {
        let (key, value) = invalid(&le("lease_name: x, retry_period: -2s"));
        assert_eq!(
            (key.as_str(), value.as_str()),
            ("controller.leader_election.retry_period", "-2s")
        );
    }

    // 12b
    #[test]
    fn a_duration_needs_a_unit() {
        // YAML reads `15` as a number, which serde hands over as the string "15"; humantime wants a unit.
        let yaml = le("lease_name: x, lease_duration: 15");
        let (key, value) = invalid(&yaml);
        assert_eq!(
            (key.as_str(), value.as_str()),
            ("controller.leader_election.lease_duration", "15")
        );
        let message = Settings::from_yaml_str(&yaml).unwrap_err().to_string();
        assert!(message.contains("time unit needed"), "{message}");
    }

    // 13
    #[test]
    fn lease_duration_must_be_whole_seconds() {
        let (field, value) = rejected(&le("lease_name: x, lease_duration: 15500ms"));
        assert_eq!((field, value.as_str()), ("lease_duration", "15s 500ms"));
    }

    // 14
    #[test]
    fn invalid_names_are_rejected() {
        let (field, value) = rejected(&le("lease_name: Not_A_Name"));
        assert_eq!((field, value.as_str()), ("lease_name", "Not_A_Name"));
        let (field, value) = rejected(&le("lease_name: x, lease_namespace: team.a"));
        assert_eq!((field, value.as_str()), ("lease_namespace", "team.a"));
        let err = Settings::from_yaml_str(&le("lease_name: x"))
            .unwrap()
            .to_elector_config(
                &env(Some("pod-a"), Some("Bad_NS"), None),
                &Overrides::default(),
            )
            .unwrap_err();
        match err {
            SettingsError::Config(e) => {
                assert_eq!((e.field, e.value.as_str()), ("lease_namespace", "Bad_NS"))
            }
            other => panic!("expected a ConfigError, got {other:?}"),
        }
    }

    // 15
    #[test]
    fn a_bad_duration_names_key_and_value() {
        let yaml = le("lease_duration: 15 parsecs");
        let (key, value) = invalid(&yaml);
        assert_eq!(
            (key.as_str(), value.as_str()),
            ("controller.leader_election.lease_duration", "15 parsecs")
        );
        let message = Settings::from_yaml_str(&yaml).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "invalid controller.leader_election.lease_duration \"15 parsecs\": invalid duration: "
            ),
            "{message}"
        );
        let getter = LeaderElectionSettings {
            renew_deadline: Some("soon".into()),
            ..LeaderElectionSettings::default()
        }
        .renew_deadline()
        .unwrap_err();
        assert!(
            matches!(&getter, SettingsError::Invalid { key, value, .. }
                if key == "controller.leader_election.renew_deadline" && value == "soon"),
            "{getter:?}"
        );
    }

    // 16
    #[test]
    fn unknown_keys_are_named_with_their_location() {
        let yaml = "controller:\n  leader_election:\n    lease_name: x\n    lease_durration: 15s\n";
        let err = Settings::from_yaml_str(yaml).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("controller.leader_election: unknown field `lease_durration`"),
            "{message}"
        );
        match err {
            SettingsError::Yaml { location, .. } => assert_eq!(location.map(|l| l.0), Some(4)),
            other => panic!("expected SettingsError::Yaml, got {other:?}"),
        }
        for (yaml, key) in [
            ("contoller: {}", "contoller"),
            ("controller: {leader_elections: {}}", "leader_elections"),
        ] {
            let message = Settings::from_yaml_str(yaml).unwrap_err().to_string();
            assert!(
                message.contains(&format!("unknown field `{key}`")),
                "{message}"
            );
        }
    }

    // 17
    #[test]
    fn wrong_types_are_yaml_errors() {
        for yaml in [
            le("enabled: maybe"),
            le("lease_name: [x]"),
            "controller: [leader_election]".to_owned(),
            "controller: {leader_election: {lease_name: x}".to_owned(),
        ] {
            let err = Settings::from_yaml_str(&yaml).unwrap_err();
            assert!(matches!(err, SettingsError::Yaml { .. }), "{yaml}: {err:?}");
        }
    }

    // 18
    #[test]
    fn identity_comes_from_overrides_then_the_file_then_pod_name() {
        let from_env = Settings::from_yaml_str(&le("lease_name: x")).unwrap();
        let pod_b = env(Some("pod-b"), None, None);
        let c = from_env
            .to_elector_config(&pod_b, &Overrides::default())
            .unwrap();
        assert_eq!(c.identity, "pod-b");
        let from_file = Settings::from_yaml_str(&le("lease_name: x, identity: file-id")).unwrap();
        let c = from_file
            .to_elector_config(&pod_b, &Overrides::default())
            .unwrap();
        assert_eq!(c.identity, "file-id");
        let flag = Overrides {
            identity: Some("flag-id".into()),
            ..Overrides::default()
        };
        let c = from_file.to_elector_config(&pod_b, &flag).unwrap();
        assert_eq!(c.identity, "flag-id");
        let fallback = Overrides {
            fallback_identity: Some("generated".into()),
            ..Overrides::default()
        };
        let c = from_env.to_elector_config(&pod_b, &fallback).unwrap();
        assert_eq!(c.identity, "pod-b", "the fallback comes last");
        let nobody = env(None, Some("ns"), None);
        let c = from_env.to_elector_config(&nobody, &fallback).unwrap();
        assert_eq!(c.identity, "generated");
    }

    // 19
    #[test]
    fn namespace_comes_from_overrides_file_pod_namespace_service_account_then_default() {
        let plain = Settings::from_yaml_str(&le("lease_name: x")).unwrap();
        let in_file =
            Settings::from_yaml_str(&le("lease_name: x, lease_namespace: ns-file")).unwrap();
        let flag = Overrides {
            lease_namespace: Some("ns-flag".into()),
            ..Overrides::default()
        };
        let none = Overrides::default();
        let full = env(Some("p"), Some("ns-env"), Some("ns-sa"));
        let cases = [
            (&in_file, &full, &flag, "ns-flag"),
            (&in_file, &full, &none, "ns-file"),
            (&plain, &full, &none, "ns-env"),
            (&plain, &env(Some("p"), None, Some("ns-sa")), &none, "ns-sa"),
            (&plain, &env(Some("p"), None, None), &none, "default"),
        ];
        for (settings, env, overrides, want) in cases {
            let c = settings.to_elector_config(env, overrides).unwrap();
            assert_eq!(c.lease_namespace, want);
        }
    }

    // 20
    #[test]
    fn overrides_win_for_lease_name_and_durations() {
        let settings = Settings::from_yaml_str(FULL_EXAMPLE).unwrap();
        let flags = Overrides {
            lease_name: Some("flag-lease".into()),
            lease_duration: Some(30 * SECOND),
            renew_deadline: Some(20 * SECOND),
            retry_period: Some(4 * SECOND),
            ..Overrides::default()
        };
        let c = settings
            .to_elector_config(&env(Some("p"), None, None), &flags)
            .unwrap();
        assert_eq!(c.lease_name, "flag-lease");
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (30 * SECOND, 20 * SECOND, 4 * SECOND)
        );
    }

    // 21
    #[test]
    fn lease_labels_and_annotations_are_read_and_checked() {
        let settings = Settings::from_yaml_str(
            "controller: {leader_election: {lease_labels: {app.kubernetes.io/part-of: my-app}, \
             lease_annotations: {example.com/note: any text}}}",
        )
        .unwrap();
        let metadata = settings.leader_election().lease_metadata().unwrap();
        assert_eq!(metadata.labels["app.kubernetes.io/part-of"], "my-app");
        assert_eq!(metadata.annotations["example.com/note"], "any text");

        let err =
            Settings::from_yaml_str("controller: {leader_election: {lease_labels: {team: a b}}}")
                .unwrap_err();
        assert!(
            matches!(&err, SettingsError::Invalid { key, value, .. }
                if key == "controller.leader_election.lease_labels" && value == "team=a b"),
            "{err:?}"
        );
        let err = Settings::from_yaml_str(
            "controller: {leader_election: {lease_annotations: {bad key: x}}}",
        )
        .unwrap_err();
        assert!(
            matches!(&err, SettingsError::Invalid { key, value, .. }
                if key == "controller.leader_election.lease_annotations" && value == "bad key"),
            "{err:?}"
        );
    }

    #[test]
    fn events_are_off_unless_turned_on() {
        let off =
            Settings::from_yaml_str("controller: {leader_election: {lease_name: x}}").unwrap();
        assert!(!off.leader_election().events());
        let on = Settings::from_yaml_str("controller: {leader_election: {events: true}}").unwrap();
        assert!(on.leader_election().events());
    }

    #[test]
    fn coordinated_is_off_by_default_and_its_versions_are_checked() {
        let off = Settings::from_yaml_str(&le("lease_name: x")).unwrap();
        assert_eq!(
            off.leader_election().candidate_config("1.0.0").unwrap(),
            None
        );
        let on = Settings::from_yaml_str(&le("coordinated: true")).unwrap();
        assert_eq!(
            on.leader_election().candidate_config("1.2.3").unwrap(),
            Some(CandidateConfig::new("1.2.3"))
        );
        let both = Settings::from_yaml_str(&le(
            "coordinated: true, binary_version: 1.34.0, emulation_version: 1.33.0",
        ))
        .unwrap();
        assert_eq!(
            both.leader_election().candidate_config("9.9.9").unwrap(),
            Some(CandidateConfig::new("1.34.0").with_emulation_version("1.33.0"))
        );
        let bad =
            Settings::from_yaml_str(&le("coordinated: true, emulation_version: 2.0.0")).unwrap();
        let err = bad.leader_election().candidate_config("1.0.0").unwrap_err();
        assert!(
            matches!(&err, SettingsError::Invalid { key, value, rule }
                if key == "controller.leader_election.emulation_version" && value == "2.0.0"
                    && rule.contains("at most binaryVersion")),
            "{err:?}"
        );
        let bad = Settings::from_yaml_str(&le("coordinated: true, binary_version: v1")).unwrap();
        let err = bad.leader_election().candidate_config("1.0.0").unwrap_err();
        assert!(
            matches!(&err, SettingsError::Invalid { key, .. }
                if key == "controller.leader_election.binary_version"),
            "{err:?}"
        );
    }

    #[test]
    fn release_on_cancel_can_be_turned_off() {
        let c = config(&le("lease_name: x, release_on_cancel: false")).unwrap();
        assert!(!c.release_on_cancel);
    }

    // 22
    #[test]
    fn reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, FULL_EXAMPLE).unwrap();
        let settings = Settings::from_path(&path).unwrap();
        assert_eq!(settings, Settings::from_yaml_str(FULL_EXAMPLE).unwrap());
        assert_eq!(
            settings.leader_election().lease_duration().unwrap(),
            60 * SECOND
        );

        let missing = dir.path().join("nope.yaml");
        let err = Settings::from_path(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.yaml"), "{err}");
        match err {
            SettingsError::Io { path, source } => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected SettingsError::Io, got {other:?}"),
        }
    }

    // 23
    #[test]
    fn environment_reads_variables_and_the_service_account_file() {
        let dir = tempfile::tempdir().unwrap();
        let sa = dir.path().join("namespace");
        std::fs::write(&sa, "ns-sa\n").unwrap();
        let vars = |name: &str| match name {
            "POD_NAME" => Some("pod-a".to_owned()),
            "POD_NAMESPACE" => Some("  ".to_owned()),
            _ => None,
        };
        let env = Environment::from_sources(vars, &sa);
        assert_eq!(env, self::env(Some("pod-a"), None, Some("ns-sa")));
        assert_eq!(env.namespace(), Some("ns-sa"));

        let absent = Environment::from_sources(|_| None, &dir.path().join("absent"));
        assert_eq!(absent, Environment::default());
        assert_eq!(absent.namespace(), None);
    }
}
