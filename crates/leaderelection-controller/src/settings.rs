//! The YAML configuration (the `controller.leader_election` section) and its merge with the
//! environment (`POD_NAME`, `POD_NAMESPACE`, the service-account namespace) into an [`ElectionMode`]: a
//! validated [`leaderelection::Config`], for an election or for a replica that runs alone. `enabled` lives
//! only here: it chooses the constructor (`Runtime::builder` or `Runtime::standalone`).
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
//! use leaderelection_controller::settings::{ElectionMode, Environment, Overrides, Settings};
//!
//! let settings = Settings::from_yaml_str("controller: {leader_election: {lease_name: my-app-leader}}")?;
//! let env = Environment { pod_name: Some("pod-a".into()), ..Environment::default() };
//! let mode = settings.to_election_mode(&env, &Overrides::default())?;
//! assert!(matches!(mode, ElectionMode::Elected(_)));
//! let config = mode.into_config();
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

/// The identity and Lease name a standalone configuration gets when none is given: they only label its
/// logs, metrics and state, since a standalone elector makes no API call.
const STANDALONE: &str = "standalone";

/// What the settings choose: an election, or a replica that runs alone (`enabled: false`). Match it once,
/// where the runtime is built:
///
/// ```no_run
/// # fn example(mode: leaderelection_controller::settings::ElectionMode, client: kube::Client) {
/// use leaderelection_controller::{Runtime, settings::ElectionMode};
///
/// let builder = match mode {
///     ElectionMode::Elected(config) => Runtime::builder(client, config),
///     ElectionMode::Standalone(config) => Runtime::standalone(config),
/// };
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionMode {
    /// `enabled: true`: elect through the Lease `config` names.
    Elected(Config),
    /// `enabled: false`: lead at once, make no API call. The configuration is validated all the same,
    /// so that enabling election later cannot fail; its identity and Lease name (`"standalone"` when not
    /// given) label logs, metrics and state, and its timings give the stop timeout.
    Standalone(Config),
}

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
    /// (`controller.leader_election.lease_durration: unknown field ...`) and its line and column.
    #[error("invalid configuration: {source}")]
    Yaml {
        /// Where, as one-based `(line, column)`, when the parser knows.
        location: Option<(usize, usize)>,
        /// The parser's error, with the key's path.
        #[source]
        source: YamlError,
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

/// A YAML document that does not parse into its schema: malformed YAML, an unknown key, a wrong type. One
/// line: the key's path (dotted, from the document's root), the parser's message and its line and column,
/// e.g. ``controller.leader_election.lease_durration: unknown field `lease_durration`, expected one of ...
/// at line 4, column 5``.
#[derive(Debug)]
pub struct YamlError {
    /// The path of the key being read (`serde_path_to_error`'s, an unknown key included), `.` at the root.
    path: String,
    /// Boxed: serde-saphyr's error is large, and every `Result` of the settings carries this one.
    source: Box<serde_saphyr::Error>,
}

impl YamlError {
    /// The dotted path of the key where parsing stopped (`controller.leader_election.lease_durration` for
    /// an unknown key), `.` at the root.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where parsing stopped, as one-based `(line, column)`, when the parser knows.
    #[must_use]
    pub fn location(&self) -> Option<(usize, usize)> {
        let at = self.source.location()?;
        Some((
            usize::try_from(at.line()).ok()?,
            usize::try_from(at.column()).ok()?,
        ))
    }
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // serde-saphyr's own Display draws the document around the error on several lines; a log line and
        // an exit message want one.
        let mut options = serde_saphyr::RenderOptions::default();
        options.snippets = serde_saphyr::SnippetMode::Off;
        let message = self.source.render_with_options(options);
        if self.path == "." {
            f.write_str(&message)
        } else {
            write!(f, "{}: {message}", self.path)
        }
    }
}

impl std::error::Error for YamlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Parses one YAML document into `T` with kube's YAML library (serde-saphyr), strictly as `T`'s serde
/// attributes say (`deny_unknown_fields` makes an unknown key an error), keeping the path of the key where
/// it failed.
///
/// # Errors
///
/// [`YamlError`] naming the key's path, the rule broken, and the line and column.
pub fn from_yaml_str<T: serde::de::DeserializeOwned>(
    yaml: &str,
) -> std::result::Result<T, YamlError> {
    let mut path = String::from(".");
    serde_saphyr::with_deserializer_from_str(yaml, |de| {
        serde_path_to_error::deserialize(de).map_err(|err| {
            path = err.path().to_string();
            err.into_inner()
        })
    })
    .map_err(|source| YamlError {
        path,
        source: Box::new(source),
    })
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
    /// renew deadline, ...) are checked by [`Settings::to_election_mode`], once flags and environment are
    /// merged in.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Yaml`] for malformed YAML or a wrong type, naming the key and its location;
    /// [`SettingsError::Invalid`] for an unknown key (naming its path, its value, its line and the keys
    /// there are) or a duration that does not parse (naming the key and the value).
    pub fn from_yaml_str(yaml: &str) -> Result<Self> {
        let settings = from_yaml_str::<Option<Self>>(yaml)
            .map_err(|source| {
                unknown_key(yaml, &source).unwrap_or_else(|| SettingsError::Yaml {
                    location: source.location(),
                    source,
                })
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

    /// The election mode (`enabled`) and the elector configuration: each value from `overrides`, else the
    /// file, else `env`, else its default; then [`Config::validate`].
    ///
    /// Identity: override, file, `POD_NAME`. Lease namespace: override, file, `POD_NAMESPACE`, the
    /// service-account namespace, `"default"` (with a warning). A standalone configuration
    /// (`enabled: false`, [`ElectionMode::Standalone`]) needs neither identity nor Lease name (both become
    /// `"standalone"` if missing) but is validated all the same, so that enabling it later cannot fail. The other fields of [`Config`] (`request_timeout`,
    /// `stop_timeout`, `watch`) keep their defaults.
    ///
    /// # Errors
    ///
    /// [`SettingsError::MissingIdentity`] and [`SettingsError::MissingLeaseName`] when enabled;
    /// [`SettingsError::Invalid`] for a duration that does not parse (only for settings not made by
    /// [`Settings::from_yaml_str`]); [`SettingsError::Config`] for a broken rule of [`Config::validate`],
    /// naming the field and the value.
    pub fn to_election_mode(
        &self,
        env: &Environment,
        overrides: &Overrides,
    ) -> Result<ElectionMode> {
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
            .with_lease_duration(overrides.lease_duration.unwrap_or(lease_duration))
            .with_renew_deadline(overrides.renew_deadline.unwrap_or(renew_deadline))
            .with_retry_period(overrides.retry_period.unwrap_or(retry_period))
            .with_release_on_cancel(le.release_on_cancel());
        config.validate()?;
        Ok(if enabled {
            ElectionMode::Elected(config)
        } else {
            ElectionMode::Standalone(config)
        })
    }
}

// === impl ElectionMode ===

impl ElectionMode {
    /// The configuration, either way.
    #[must_use]
    pub fn config(&self) -> &Config {
        match self {
            Self::Elected(config) | Self::Standalone(config) => config,
        }
    }

    /// The configuration, either way, to adjust what the settings do not set (e.g. [`Config::watch`]).
    pub fn config_mut(&mut self) -> &mut Config {
        match self {
            Self::Elected(config) | Self::Standalone(config) => config,
        }
    }

    /// The configuration, either way.
    #[must_use]
    pub fn into_config(self) -> Config {
        match self {
            Self::Elected(config) | Self::Standalone(config) => config,
        }
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

/// serde's "unknown field" error (``unknown field `x`, expected one of ...``, at the key's path) as
/// [`SettingsError::Invalid`] naming the key's whole path, the value written there and the keys there are;
/// `None` for any other error.
fn unknown_key(yaml: &str, error: &YamlError) -> Option<SettingsError> {
    let text = error.source.to_string();
    let rest = &text[text.find("unknown field `")? + "unknown field `".len()..];
    let (_, expected) = rest.split_once('`')?;
    let expected = expected.strip_prefix(", ").unwrap_or(expected);
    let expected = expected.lines().next().unwrap_or(expected);
    let expected = expected
        .rfind(" at line ")
        .map_or(expected, |at| &expected[..at]);
    let value = serde_saphyr::from_str::<serde_json::Value>(yaml)
        .ok()
        .and_then(|doc| {
            error
                .path
                .split('.')
                .try_fold(doc, |node, k| node.get(k).cloned())
        })
        .map_or_else(String::new, |v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
    let at = error
        .location()
        .map(|(line, column)| format!(" (line {line}, column {column})"))
        .unwrap_or_default();
    Some(SettingsError::Invalid {
        key: error.path.clone(),
        value,
        rule: format!("unknown key{at}; {}", expected.trim_end()),
    })
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
mod tests;
