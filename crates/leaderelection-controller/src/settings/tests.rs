//! Tests of the settings: parsing, defaults, overrides, and errors that name the key's path.

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
    mode(yaml).map(ElectionMode::into_config)
}

/// The election mode for `yaml` in a pod named `pod-a` with no namespace in the environment.
fn mode(yaml: &str) -> Result<ElectionMode> {
    Settings::from_yaml_str(yaml)?
        .to_election_mode(&env(Some("pod-a"), None, None), &Overrides::default())
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
    assert!(matches!(mode(FULL_EXAMPLE), Ok(ElectionMode::Elected(_))));
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
        let settings = Settings::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
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
    assert_eq!(DEFAULT_RELEASE_ON_CANCEL, d.release_on_cancel);
    let c = config(&le("lease_name: x")).unwrap();
    assert_eq!(
        (c.lease_duration, c.renew_deadline, c.retry_period),
        (15 * SECOND, 10 * SECOND, 2 * SECOND)
    );
    assert!(c.release_on_cancel);
    assert!(matches!(
        mode(&le("lease_name: x")),
        Ok(ElectionMode::Elected(_))
    ));
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
fn disabled_is_standalone_and_needs_neither_identity_nor_lease_name() {
    let settings = Settings::from_yaml_str(&le("enabled: false")).unwrap();
    let ElectionMode::Standalone(c) = settings
        .to_election_mode(&Environment::default(), &Overrides::default())
        .unwrap()
    else {
        panic!("enabled: false must choose the standalone mode");
    };
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
        .to_election_mode(&env(None, Some("ns"), None), &Overrides::default())
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
        .to_election_mode(
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
fn unknown_keys_are_named_with_their_value_location_and_the_keys_there_are() {
    let yaml = "controller:\n  leader_election:\n    lease_name: x\n    lease_durration: 15s\n";
    let err = Settings::from_yaml_str(yaml).unwrap_err();
    let message = err.to_string();
    assert_eq!(
        message.matches("lease_durration").count(),
        1,
        "said once: {message}"
    );
    match err {
        SettingsError::Invalid { key, value, rule } => {
            assert_eq!(
                (key.as_str(), value.as_str()),
                ("controller.leader_election.lease_durration", "15s")
            );
            assert!(
                rule.starts_with("unknown key (line 4, column 5); expected one of enabled"),
                "{rule}"
            );
        }
        other => panic!("expected SettingsError::Invalid, got {other:?}"),
    }
    for (yaml, key, value) in [
        ("contoller: {}", "contoller", "{}"),
        (
            "controller: {leader_elections: 3}",
            "controller.leader_elections",
            "3",
        ),
    ] {
        match Settings::from_yaml_str(yaml).unwrap_err() {
            SettingsError::Invalid {
                key: k,
                value: v,
                rule,
            } => {
                assert_eq!((k.as_str(), v.as_str()), (key, value));
                assert!(rule.contains("unknown key"), "{rule}");
            }
            other => panic!("{yaml}: {other:?}"),
        }
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
        .to_election_mode(&pod_b, &Overrides::default())
        .unwrap()
        .into_config();
    assert_eq!(c.identity, "pod-b");
    let from_file = Settings::from_yaml_str(&le("lease_name: x, identity: file-id")).unwrap();
    let c = from_file
        .to_election_mode(&pod_b, &Overrides::default())
        .unwrap()
        .into_config();
    assert_eq!(c.identity, "file-id");
    let flag = Overrides {
        identity: Some("flag-id".into()),
        ..Overrides::default()
    };
    let c = from_file
        .to_election_mode(&pod_b, &flag)
        .unwrap()
        .into_config();
    assert_eq!(c.identity, "flag-id");
    let fallback = Overrides {
        fallback_identity: Some("generated".into()),
        ..Overrides::default()
    };
    let c = from_env
        .to_election_mode(&pod_b, &fallback)
        .unwrap()
        .into_config();
    assert_eq!(c.identity, "pod-b", "the fallback comes last");
    let nobody = env(None, Some("ns"), None);
    let c = from_env
        .to_election_mode(&nobody, &fallback)
        .unwrap()
        .into_config();
    assert_eq!(c.identity, "generated");
}

// 19
#[test]
fn namespace_comes_from_overrides_file_pod_namespace_service_account_then_default() {
    let plain = Settings::from_yaml_str(&le("lease_name: x")).unwrap();
    let in_file = Settings::from_yaml_str(&le("lease_name: x, lease_namespace: ns-file")).unwrap();
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
        let c = settings
            .to_election_mode(env, overrides)
            .unwrap()
            .into_config();
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
        .to_election_mode(&env(Some("p"), None, None), &flags)
        .unwrap()
        .into_config();
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

    let err = Settings::from_yaml_str("controller: {leader_election: {lease_labels: {team: a b}}}")
        .unwrap_err();
    assert!(
        matches!(&err, SettingsError::Invalid { key, value, .. }
                if key == "controller.leader_election.lease_labels" && value == "team=a b"),
        "{err:?}"
    );
    let err =
        Settings::from_yaml_str("controller: {leader_election: {lease_annotations: {bad key: x}}}")
            .unwrap_err();
    assert!(
        matches!(&err, SettingsError::Invalid { key, value, .. }
                if key == "controller.leader_election.lease_annotations" && value == "bad key"),
        "{err:?}"
    );
}

#[test]
fn events_are_off_unless_turned_on() {
    let off = Settings::from_yaml_str("controller: {leader_election: {lease_name: x}}").unwrap();
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
    let bad = Settings::from_yaml_str(&le("coordinated: true, emulation_version: 2.0.0")).unwrap();
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
