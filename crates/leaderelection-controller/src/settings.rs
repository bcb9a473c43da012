//! The YAML configuration (the seeds' `controller.leader_election` schema) and the environment merge.
//!
//! ```yaml
//! controller:
//!   leader_election:
//!     enabled: true                  # default true (HA by default, the seeds' phase 2)
//!     lease_name: my-app-leader      # required when enabled
//!     lease_namespace: team-a        # default: POD_NAMESPACE, the service-account namespace, "default"
//!     identity: pod-a                # default: POD_NAME
//!     lease_duration: 15s            # defaults: client-go's 15s / 10s / 2s
//!     renew_deadline: 10s
//!     retry_period: 2s
//!     release_on_cancel: true        # default true
//! ```
//!
//! Unknown keys and malformed durations are errors naming the key and the value. Durations use humantime
//! syntax (`15s`, `1m30s`, `500ms`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use leaderelection::{Config, ConfigError};
use serde::Deserialize;

/// Where Kubernetes mounts the pod's namespace.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The configuration file: `controller.leader_election`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The `controller` section.
    #[serde(default)]
    pub controller: ControllerSettings,
}

/// The `controller` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSettings {
    /// `controller.leader_election`.
    #[serde(default)]
    pub leader_election: LeaderElectionSettings,
}

/// `controller.leader_election`: every field optional; the getters apply the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionSettings {
    /// Whether to elect (default true); false runs as the only leader without any API call.
    pub enabled: Option<bool>,
    /// The Lease's name.
    pub lease_name: Option<String>,
    /// The Lease's namespace.
    pub lease_namespace: Option<String>,
    /// This candidate's identity.
    pub identity: Option<String>,
    /// `leaseDurationSeconds`, e.g. `"15s"`.
    pub lease_duration: Option<String>,
    /// RenewDeadline, e.g. `"10s"`.
    pub renew_deadline: Option<String>,
    /// RetryPeriod, e.g. `"2s"`.
    pub retry_period: Option<String>,
    /// Release the Lease on shutdown (default true).
    pub release_on_cancel: Option<bool>,
}

/// What the process environment says about identity and namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// The content of [`SERVICE_ACCOUNT_NAMESPACE_FILE`], trimmed.
    pub service_account_namespace: Option<String>,
}

impl Environment {
    /// Reads `POD_NAME`, `POD_NAMESPACE` and the service-account namespace file (empty values count as unset).
    pub fn from_process() -> Self {
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        Self {
            pod_name: var("POD_NAME"),
            pod_namespace: var("POD_NAMESPACE"),
            service_account_namespace: std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        }
    }

    /// The namespace by precedence: `POD_NAMESPACE`, the service-account file, then `None` (the caller
    /// falls back to `"default"`, and should say so).
    pub fn namespace(&self) -> Option<&str> {
        self.pod_namespace
            .as_deref()
            .or(self.service_account_namespace.as_deref())
    }
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML for the schema (unknown key, wrong type), with serde's location.
    #[error("invalid configuration: {0}")]
    Yaml(String),
    /// A value breaks a rule.
    #[error("invalid {key} \"{value}\": {rule}")]
    Invalid {
        /// The key, e.g. `controller.leader_election.lease_duration`.
        key: String,
        /// The value given.
        value: String,
        /// The rule.
        rule: String,
    },
    /// Election enabled but no identity: neither the file, the caller nor `POD_NAME` gave one.
    #[error("missing identity: set controller.leader_election.identity, POD_NAME, or --identity")]
    MissingIdentity,
    /// Election enabled but no Lease name.
    #[error("missing controller.leader_election.lease_name (or --lease-name)")]
    MissingLeaseName,
    /// The resulting elector configuration breaks a rule of `Config::validate`.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Values that override the file (e.g. from command-line flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Identity.
    pub identity: Option<String>,
    /// Lease name.
    pub lease_name: Option<String>,
    /// Lease namespace.
    pub lease_namespace: Option<String>,
    /// Lease duration.
    pub lease_duration: Option<Duration>,
    /// RenewDeadline.
    pub renew_deadline: Option<Duration>,
    /// RetryPeriod.
    pub retry_period: Option<Duration>,
}

const KEY: &str = "controller.leader_election";

impl Settings {
    /// Parses YAML; an empty document is all defaults.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Yaml`] naming the unknown key or wrong type and its location.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, SettingsError> {
        if yaml.trim().is_empty() {
            return Ok(Self::default());
        }
        let settings: Self =
            serde_norway::from_str(yaml).map_err(|e| SettingsError::Yaml(e.to_string()))?;
        settings.controller.leader_election.durations()?;
        Ok(settings)
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Io`] naming the path, or the errors of [`Settings::from_yaml_str`].
    pub fn from_path(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// The elector configuration: file values, overridden by `overrides`, completed from `env`, defaults
    /// applied, validated. The namespace falls back to `"default"` when nothing gives one.
    ///
    /// # Errors
    ///
    /// [`SettingsError::MissingIdentity`], [`SettingsError::MissingLeaseName`] (when enabled),
    /// [`SettingsError::Invalid`] for a malformed duration, [`SettingsError::Config`] for a rule of
    /// `Config::validate` (naming the field and the value).
    pub fn to_elector_config(
        &self,
        env: &Environment,
        overrides: &Overrides,
    ) -> Result<Config, SettingsError> {
        let le = &self.controller.leader_election;
        let enabled = le.enabled();
        let identity = overrides
            .identity
            .clone()
            .or_else(|| le.identity.clone())
            .or_else(|| env.pod_name.clone());
        let identity = match identity {
            Some(identity) => identity,
            None if enabled => return Err(SettingsError::MissingIdentity),
            None => "standalone".to_owned(),
        };
        let lease_name = match overrides
            .lease_name
            .clone()
            .or_else(|| le.lease_name.clone())
        {
            Some(name) => name,
            None if enabled => return Err(SettingsError::MissingLeaseName),
            None => "standalone".to_owned(),
        };
        let namespace = overrides
            .lease_namespace
            .clone()
            .or_else(|| le.lease_namespace.clone())
            .or_else(|| env.namespace().map(str::to_owned))
            .unwrap_or_else(|| "default".to_owned());
        let (lease_duration, renew_deadline, retry_period) = le.durations()?;
        let mut config = Config::new(identity, lease_name, namespace)
            .with_lease_duration(overrides.lease_duration.unwrap_or(lease_duration))
            .with_renew_deadline(overrides.renew_deadline.unwrap_or(renew_deadline))
            .with_retry_period(overrides.retry_period.unwrap_or(retry_period));
        config.enabled = enabled;
        config.release_on_cancel = le.release_on_cancel.unwrap_or(true);
        config.validate()?;
        Ok(config)
    }
}

impl LeaderElectionSettings {
    /// `enabled`, default true.
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// `lease_duration`, default 15 s.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] when the value is not a humantime duration.
    pub fn lease_duration(&self) -> Result<Duration, SettingsError> {
        duration(
            "lease_duration",
            self.lease_duration.as_deref(),
            Config::default().lease_duration,
        )
    }

    /// `renew_deadline`, default 10 s.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] when the value is not a humantime duration.
    pub fn renew_deadline(&self) -> Result<Duration, SettingsError> {
        duration(
            "renew_deadline",
            self.renew_deadline.as_deref(),
            Config::default().renew_deadline,
        )
    }

    /// `retry_period`, default 2 s.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] when the value is not a humantime duration.
    pub fn retry_period(&self) -> Result<Duration, SettingsError> {
        duration(
            "retry_period",
            self.retry_period.as_deref(),
            Config::default().retry_period,
        )
    }

    fn durations(&self) -> Result<(Duration, Duration, Duration), SettingsError> {
        Ok((
            self.lease_duration()?,
            self.renew_deadline()?,
            self.retry_period()?,
        ))
    }
}

fn duration(
    field: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, SettingsError> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text.trim()).map_err(|e| SettingsError::Invalid {
            key: format!("{KEY}.{field}"),
            value: text.to_owned(),
            rule: format!("not a duration such as \"15s\" ({e})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pod: Option<&str>, ns: Option<&str>, sa: Option<&str>) -> Environment {
        Environment {
            pod_name: pod.map(str::to_owned),
            pod_namespace: ns.map(str::to_owned),
            service_account_namespace: sa.map(str::to_owned),
        }
    }

    fn config(yaml: &str) -> Result<Config, SettingsError> {
        Settings::from_yaml_str(yaml)?
            .to_elector_config(&env(Some("pod-a"), None, None), &Overrides::default())
    }

    fn invalid_field(yaml: &str) -> (String, String) {
        match config(yaml) {
            Err(SettingsError::Config(e)) => (e.field.to_string(), e.value.clone()),
            other => panic!("expected a ConfigError, got {other:?}"),
        }
    }

    const VALID: &str = "
controller:
  leader_election:
    enabled: true
    lease_name: haproxy-template-ic-leader
    lease_duration: 60s
    renew_deadline: 15s
    retry_period: 5s
";

    #[test]
    fn the_seed_example_is_valid() {
        let c = config(VALID).unwrap();
        assert_eq!(c.lease_name, "haproxy-template-ic-leader");
        assert_eq!(c.identity, "pod-a");
        assert_eq!(c.lease_namespace, "default");
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (
                Duration::from_secs(60),
                Duration::from_secs(15),
                Duration::from_secs(5)
            )
        );
        assert!(c.enabled && c.release_on_cancel);
    }

    #[test]
    fn defaults_apply_to_missing_fields() {
        let c = config("controller: {leader_election: {lease_name: x}}").unwrap();
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        let empty = Settings::from_yaml_str("").unwrap();
        assert_eq!(empty, Settings::default());
        assert!(empty.controller.leader_election.enabled());
        assert_eq!(
            empty.controller.leader_election.lease_duration().unwrap(),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn disabled_needs_neither_identity_nor_lease() {
        let settings =
            Settings::from_yaml_str("controller: {leader_election: {enabled: false}}").unwrap();
        let c = settings
            .to_elector_config(&Environment::default(), &Overrides::default())
            .unwrap();
        assert!(!c.enabled);
    }

    #[test]
    fn missing_lease_name_is_an_error() {
        assert!(matches!(
            config("controller: {leader_election: {}}"),
            Err(SettingsError::MissingLeaseName)
        ));
    }

    #[test]
    fn missing_identity_is_an_error() {
        let settings = Settings::from_yaml_str(VALID).unwrap();
        let err = settings
            .to_elector_config(&Environment::default(), &Overrides::default())
            .unwrap_err();
        assert!(matches!(err, SettingsError::MissingIdentity));
        assert!(err.to_string().contains("POD_NAME"));
    }

    #[test]
    fn lease_duration_must_exceed_renew_deadline() {
        let (field, value) =
            invalid_field("controller: {leader_election: {lease_name: x, lease_duration: 10s}}");
        assert_eq!((field.as_str(), value.as_str()), ("lease_duration", "10s"));
    }

    #[test]
    fn renew_deadline_must_exceed_jittered_retry_period() {
        let (field, _) = invalid_field(
            "controller: {leader_election: {lease_name: x, renew_deadline: 2s, retry_period: 2s, lease_duration: 15s}}",
        );
        assert_eq!(field, "renew_deadline");
    }

    #[test]
    fn zero_durations_are_rejected() {
        let (field, _) =
            invalid_field("controller: {leader_election: {lease_name: x, retry_period: 0s}}");
        assert_eq!(field, "retry_period");
    }

    #[test]
    fn lease_duration_must_be_whole_seconds() {
        let (field, value) = invalid_field(
            "controller: {leader_election: {lease_name: x, lease_duration: 15500ms}}",
        );
        assert_eq!(
            (field.as_str(), value.as_str()),
            ("lease_duration", "15s 500ms")
        );
    }

    #[test]
    fn invalid_lease_name_is_rejected() {
        let (field, value) =
            invalid_field("controller: {leader_election: {lease_name: Not_A_Name}}");
        assert_eq!(
            (field.as_str(), value.as_str()),
            ("lease_name", "Not_A_Name")
        );
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let err =
            Settings::from_yaml_str("controller: {leader_election: {lease_duration: 15 parsecs}}")
                .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("invalid controller.leader_election.lease_duration \"15 parsecs\""),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Settings::from_yaml_str("controller: {leader_election: {lease_durration: 15s}}")
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `lease_durration`"),
            "{err}"
        );
    }

    #[test]
    fn identity_and_namespace_come_from_the_environment_by_precedence() {
        let settings =
            Settings::from_yaml_str("controller: {leader_election: {lease_name: x}}").unwrap();
        let none = Overrides::default();
        let c = settings
            .to_elector_config(&env(Some("pod-b"), Some("ns-env"), Some("ns-sa")), &none)
            .unwrap();
        assert_eq!(
            (c.identity.as_str(), c.lease_namespace.as_str()),
            ("pod-b", "ns-env")
        );
        let c = settings
            .to_elector_config(&env(Some("pod-b"), None, Some("ns-sa")), &none)
            .unwrap();
        assert_eq!(c.lease_namespace, "ns-sa");
        let flags = Overrides {
            identity: Some("flag-id".into()),
            lease_namespace: Some("flag-ns".into()),
            ..Overrides::default()
        };
        let c = settings
            .to_elector_config(&env(Some("pod-b"), Some("ns-env"), None), &flags)
            .unwrap();
        assert_eq!(
            (c.identity.as_str(), c.lease_namespace.as_str()),
            ("flag-id", "flag-ns")
        );
    }

    #[test]
    fn reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, VALID).unwrap();
        assert_eq!(
            Settings::from_path(&path).unwrap(),
            Settings::from_yaml_str(VALID).unwrap()
        );
        let missing = dir.path().join("nope.yaml");
        let err = Settings::from_path(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.yaml"), "{err}");
    }
}
