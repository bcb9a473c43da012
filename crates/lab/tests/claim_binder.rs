//! The leader's binder and the consumers' claimer against the fake API server, through the real kube client:
//! binding order and choice, the host-first steps with the term, finishing half-done binds in a new term,
//! the fence at the term's end, release on deletion, and the three delegation modes.

use std::collections::BTreeMap;
use std::time::Duration;

use claim_coordinator::events::ClaimEvents;
use claim_coordinator::provider::{Claim as _, Host as _};
use claim_coordinator::resources::{
    ConsumerRef, HostClaimSpec, HostState, PAUSED_ANNOTATION, PhysicalHostStatus,
    RELEASE_FINALIZER, TERM_ANNOTATION,
};
use claim_coordinator::steps::CONDITION_TYPES;
use claim_coordinator::{
    Binder, ClaimError, ClaimPhase, ClaimState, Claimer, Fence, Metrics, Mode, Pool, Settings,
    StepError,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use leaderelection::Term;
use leaderelection_lab::claim_sim::{
    Cluster, HostPlan, NAMESPACE, ReplicaEvent, current_term as term,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

fn plan(name: &str, tags: &[(&str, &str)], cpu: u32) -> HostPlan {
    HostPlan {
        name: name.into(),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        cpu_cores: cpu,
        memory_gib: 64,
    }
}

fn simple() -> HostClaimSpec {
    HostClaimSpec {
        image_url: "http://images/os.iso".into(),
        ..HostClaimSpec::default()
    }
}

fn needs(tag: &str) -> HostClaimSpec {
    HostClaimSpec {
        required_tags: vec![tag.into()],
        ..simple()
    }
}

fn binder(cluster: &Cluster) -> Binder {
    Binder::new(
        Pool::new(cluster.client.clone(), NAMESPACE, "leader"),
        Metrics::new(&mut Registry::default()),
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
}

#[tokio::test]
async fn the_leader_binds_host_first_with_its_term_and_leaves_the_scarce_host() {
    let cluster = Cluster::start().await.unwrap();
    for p in [
        plan("h-gpu", &[("gpu", "a100")], 8),
        plan("h-plain-1", &[], 8),
        plan("h-plain-2", &[], 8),
    ] {
        cluster.add_host(&p).await.unwrap();
    }
    // The simple claims go first (priority 150 > 100), yet leave the only GPU host to the GPU claim.
    cluster.add_claim("c-gpu", needs("gpu")).await.unwrap();
    cluster.add_claim("c-simple-1", simple()).await.unwrap();
    cluster.add_claim("c-simple-2", simple()).await.unwrap();
    cluster.server.reset_counts();
    let (fence, _state) = term(7);
    let report = binder(&cluster).batch(&fence).await.unwrap();
    assert_eq!((report.bound, report.served), (3, 3));

    let snapshot = cluster.snapshot().await.unwrap();
    assert!(snapshot.violations().is_empty());
    let claims: BTreeMap<_, _> = snapshot
        .claims
        .iter()
        .map(|c| (c.name_any(), c.clone()))
        .collect();
    assert_eq!(claims["c-gpu"].host_ref(), Some("h-gpu"));
    for claim in claims.values() {
        let status = claim.status.as_ref().unwrap();
        assert_eq!(status.phase, ClaimPhase::Bound);
        assert_eq!(status.bound_term, Some(7));
        let host = snapshot
            .hosts
            .iter()
            .find(|h| Some(h.name_any().as_str()) == claim.host_ref())
            .unwrap();
        assert_eq!(
            host.spec.consumer_ref.as_ref().map(|c| &c.uid),
            claim.metadata.uid.as_ref()
        );
        assert_eq!(host.annotations()[TERM_ANNOTATION], "7");
        assert_eq!(host.status.as_ref().unwrap().state, HostState::Claimed);
    }
    // Host first: per claim, the host's PUT, its /status PUT, then the claim's /status PUT; no conflicts.
    let writes: Vec<(String, String)> = cluster
        .server
        .request_log()
        .into_iter()
        .filter(|r| r.verb == "update")
        .map(|r| (r.resource, r.name.unwrap_or_default()))
        .collect();
    assert_eq!(writes.len(), 9, "{writes:?}");
    for claim in claims.values() {
        let at = |resource: &str, name: &str| {
            writes
                .iter()
                .enumerate()
                .filter(|(_, w)| w.0 == resource && w.1 == name)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        let host = at("physicalhosts", claim.host_ref().unwrap());
        let claim = at("hostclaims", &claim.name_any());
        assert_eq!((host.len(), claim.len()), (2, 1), "{writes:?}");
        assert!(host[1] < claim[0], "{writes:?}");
    }
    assert_eq!(cluster.api_counts().conflicts, 0);
    // A second batch finds nothing to do and writes nothing.
    binder(&cluster).batch(&fence).await.unwrap();
    assert_eq!(cluster.api_counts().writes, 9);
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn a_new_term_finishes_a_bind_the_last_leader_left_half_done() {
    let cluster = Cluster::start().await.unwrap();
    for p in [
        plan("h-1", &[], 8),
        plan("h-2", &[], 8),
        plan("h-3", &[], 8),
    ] {
        cluster.add_host(&p).await.unwrap();
    }
    cluster.add_claim("c-1", simple()).await.unwrap();
    cluster.add_claim("c-2", simple()).await.unwrap();
    // Term 3 wrote step 1 for c-1 on h-3, and steps 1 and 2 for c-2 on h-1, then died.
    let claims = cluster.claims();
    let pool = Pool::new(cluster.client.clone(), NAMESPACE, "old-leader");
    let (old, _old_state) = term(3);
    let c1 = claims.get("c-1").await.unwrap();
    let c2 = claims.get("c-2").await.unwrap();
    let h3 = cluster.hosts().get("h-3").await.unwrap();
    pool.claim_host(&old, &h3, &c1).await.unwrap();
    let h1 = cluster.hosts().get("h-1").await.unwrap();
    let h1 = pool.claim_host(&old, &h1, &c2).await.unwrap();
    pool.mark_claimed(&old, &h1).await.unwrap();

    let (fence, _state) = term(4);
    binder(&cluster).batch(&fence).await.unwrap();
    let snapshot = cluster.snapshot().await.unwrap();
    assert!(snapshot.violations().is_empty());
    let host_of = |name: &str| {
        snapshot
            .claims
            .iter()
            .find(|c| c.name_any() == name)
            .and_then(|c| c.host_ref().map(str::to_owned))
    };
    assert_eq!(host_of("c-1").as_deref(), Some("h-3"));
    assert_eq!(host_of("c-2").as_deref(), Some("h-1"));
    // h-2 was never touched: the half-done claims did not get a second host.
    let h2 = snapshot
        .hosts
        .iter()
        .find(|h| h.name_any() == "h-2")
        .unwrap();
    assert!(h2.spec.consumer_ref.is_none());
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn writes_stop_when_the_term_ends() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-1", &[], 8)).await.unwrap();
    cluster.add_claim("c-1", simple()).await.unwrap();
    let (fence, state) = term(5);
    // Term 6 started elsewhere: this replica's state no longer holds term 5.
    state.send_modify(|s| s.term = None);
    cluster.server.reset_counts();
    let result = binder(&cluster).batch(&fence).await;
    assert!(matches!(result, Err(StepError::Fenced)), "{result:?}");
    assert_eq!(cluster.api_counts().writes, 0);
    // A term whose deadline has passed is over too.
    let (fence, state) = term(5);
    state.send_modify(|s| s.valid_until = Some(tokio::time::Instant::now()));
    assert!(matches!(
        binder(&cluster).batch(&fence).await,
        Err(StepError::Fenced)
    ));
    assert_eq!(cluster.api_counts().writes, 0);
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_claim_releases_its_host_and_a_second_host_is_released() {
    let cluster = Cluster::start().await.unwrap();
    for p in [plan("h-1", &[], 8), plan("h-2", &[], 8)] {
        cluster.add_host(&p).await.unwrap();
    }
    cluster.add_claim("c-1", simple()).await.unwrap();
    let (fence, _state) = term(1);
    let binder = binder(&cluster);
    binder.batch(&fence).await.unwrap();
    let claim = cluster.claims().get("c-1").await.unwrap();
    let bound = claim.host_ref().unwrap().to_owned();
    let other = if bound == "h-1" { "h-2" } else { "h-1" };

    // A write that outlived its term gave c-1 a second host: the next batch releases it.
    let mut stray = cluster.hosts().get(other).await.unwrap();
    stray.spec.consumer_ref = Some(ConsumerRef {
        name: "c-1".into(),
        uid: claim.metadata.uid.clone().unwrap(),
        ..claim.consumer_ref()
    });
    cluster
        .hosts()
        .replace(other, &PostParams::default(), &stray)
        .await
        .unwrap();
    assert!(
        !cluster
            .snapshot()
            .await
            .unwrap()
            .violations()
            .claims_with_two_hosts
            .is_empty()
    );
    binder.batch(&fence).await.unwrap();
    let snapshot = cluster.snapshot().await.unwrap();
    assert!(snapshot.violations().is_empty());
    assert_eq!(snapshot.claims[0].host_ref(), Some(bound.as_str()));

    // Deleting the claim: it stays (finalizer) until the leader releases its host.
    let deleted = cluster
        .claims()
        .delete("c-1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(deleted.is_left());
    assert!(
        cluster
            .claims()
            .get("c-1")
            .await
            .unwrap()
            .finalizers()
            .contains(&RELEASE_FINALIZER.to_owned())
    );
    binder.batch(&fence).await.unwrap();
    assert!(cluster.claims().get_opt("c-1").await.unwrap().is_none());
    let host = cluster.hosts().get(&bound).await.unwrap();
    assert!(host.is_available(), "{host:?}");
    assert!(!host.annotations().contains_key(TERM_ANNOTATION));
    cluster.server.shutdown().await;
}

/// Item 7 of issue 23: the release of deleted claims frees only hosts whose `consumerRef` is a claim of
/// this pool (our kind and group, the claims' namespace). On main it freed every host whose consumer uid
/// was not a live claim, whatever its kind.
#[tokio::test]
async fn a_host_consumed_by_a_foreign_kind_is_never_touched() {
    let cluster = Cluster::start().await.unwrap();
    for p in [
        plan("h-machine", &[], 8),
        plan("h-other-namespace", &[], 8),
        plan("h-1", &[], 8),
    ] {
        cluster.add_host(&p).await.unwrap();
    }
    let foreign = [
        (
            "h-machine",
            ConsumerRef {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
                kind: "Metal3Machine".into(),
                namespace: NAMESPACE.into(),
                name: "m-1".into(),
                uid: "uid-of-a-machine".into(),
            },
        ),
        (
            "h-other-namespace",
            ConsumerRef {
                api_version: "claims.leaderelection.dev/v1alpha1".into(),
                kind: "HostClaim".into(),
                namespace: "another-pool".into(),
                name: "c-elsewhere".into(),
                uid: "uid-of-another-pools-claim".into(),
            },
        ),
    ];
    let mut versions = BTreeMap::new();
    for (name, consumer) in &foreign {
        let mut host = cluster.hosts().get(name).await.unwrap();
        host.spec.consumer_ref = Some(consumer.clone());
        let host = cluster
            .hosts()
            .replace(name, &PostParams::default(), &host)
            .await
            .unwrap();
        versions.insert(*name, host.resource_version());
    }
    cluster.add_claim("c-1", simple()).await.unwrap();
    let (fence, _state) = term(1);
    let binder = binder(&cluster);
    binder.batch(&fence).await.unwrap();
    assert_eq!(
        cluster.claims().get("c-1").await.unwrap().host_ref(),
        Some("h-1")
    );
    cluster
        .claims()
        .delete("c-1", &DeleteParams::default())
        .await
        .unwrap();
    cluster.server.reset_counts();
    binder.batch(&fence).await.unwrap();
    binder.batch(&fence).await.unwrap();
    assert!(cluster.claims().get_opt("c-1").await.unwrap().is_none());
    assert!(cluster.hosts().get("h-1").await.unwrap().is_available());
    for (name, consumer) in &foreign {
        let host = cluster.hosts().get(name).await.unwrap();
        assert_eq!(host.spec.consumer_ref.as_ref(), Some(consumer), "{name}");
        assert_eq!(
            host.resource_version(),
            versions[name],
            "{name} was written"
        );
    }
    let touched: Vec<_> = cluster
        .server
        .request_log()
        .into_iter()
        .filter(|r| {
            r.verb == "update" && r.name.as_deref().is_some_and(|n| n != "h-1" && n != "c-1")
        })
        .map(|r| r.name)
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    cluster.server.shutdown().await;
}

/// Issue 23 item 3: CAPM3's `chooseHost` skips paused, erroring, deleting and unhealthy hosts and hosts not
/// in an available state; so does the binder. A claim waits (Pending, not Failed) while only such hosts
/// fit it, and one whose `hostSelector` breaks a rule is Failed with the field in the message.
#[tokio::test]
async fn paused_erroring_unhealthy_deleting_and_unavailable_hosts_are_skipped() {
    let cluster = Cluster::start().await.unwrap();
    let names = [
        "h-paused",
        "h-erroring",
        "h-unhealthy",
        "h-deleting",
        "h-enrolling",
    ];
    for name in names {
        cluster.add_host(&plan(name, &[], 8)).await.unwrap();
    }
    let hosts = cluster.hosts();
    let mut paused = hosts.get("h-paused").await.unwrap();
    paused
        .annotations_mut()
        .insert(PAUSED_ANNOTATION.into(), String::new());
    hosts
        .replace("h-paused", &PostParams::default(), &paused)
        .await
        .unwrap();
    for (name, change) in [
        (
            "h-erroring",
            (|s: &mut PhysicalHostStatus| s.error_message = Some("BMC unreachable".into()))
                as fn(&mut PhysicalHostStatus),
        ),
        ("h-unhealthy", |s| s.ready = false),
        ("h-enrolling", |s| s.state = HostState::Enrolling),
    ] {
        let mut host = hosts.get(name).await.unwrap();
        change(host.status.as_mut().unwrap());
        hosts
            .replace_status(name, &PostParams::default(), &host)
            .await
            .unwrap();
    }
    let mut deleting = hosts.get("h-deleting").await.unwrap();
    deleting.finalizers_mut().push("example.com/wipe".into());
    hosts
        .replace("h-deleting", &PostParams::default(), &deleting)
        .await
        .unwrap();
    hosts
        .delete("h-deleting", &DeleteParams::default())
        .await
        .unwrap();
    for name in names {
        assert!(!hosts.get(name).await.unwrap().is_available(), "{name}");
    }
    cluster.add_claim("c-1", simple()).await.unwrap();
    let invalid = HostClaimSpec {
        host_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "rack".into(),
                operator: "Gt".into(),
                values: Some(vec!["1".into()]),
            }]),
        }),
        ..simple()
    };
    cluster.add_claim("c-invalid", invalid).await.unwrap();
    let (fence, _state) = term(1);
    let binder = binder(&cluster);
    let report = binder.batch(&fence).await.unwrap();
    assert_eq!(report.bound, 0);
    let claim = cluster.claims().get("c-1").await.unwrap();
    assert_eq!(claim.phase(), ClaimPhase::Pending);
    let status = cluster
        .claims()
        .get("c-invalid")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.phase, ClaimPhase::Failed);
    assert_eq!(status.conditions[0].reason, "InvalidHostSelector");
    assert!(
        status.conditions[0]
            .message
            .contains("spec.hostSelector.matchExpressions[0].operator"),
        "{:?}",
        status.conditions
    );
    for name in names {
        assert_eq!(
            hosts.get(name).await.unwrap().spec.consumer_ref,
            None,
            "{name}"
        );
    }
    // A host that becomes available is taken at the next batch.
    cluster.add_host(&plan("h-ok", &[], 8)).await.unwrap();
    binder.batch(&fence).await.unwrap();
    assert_eq!(
        cluster.claims().get("c-1").await.unwrap().host_ref(),
        Some("h-ok")
    );
    cluster.server.shutdown().await;
}

/// A `hostSelector` (label selector) decides end to end: `NotIn` and `DoesNotExist` leave the hosts they
/// exclude, and a claim that no host of the pool matches waits (`Pending`, reason `Unsatisfiable`: a host
/// may join).
#[tokio::test]
async fn a_host_selector_with_not_in_and_does_not_exist_chooses_the_host() {
    let cluster = Cluster::start().await.unwrap();
    for p in [
        plan("h-rack-1", &[("rack", "1")], 8),
        plan("h-rack-2-gpu", &[("rack", "2"), ("gpu", "a100")], 8),
        plan("h-rack-2", &[("rack", "2")], 8),
    ] {
        cluster.add_host(&p).await.unwrap();
    }
    let selector = |expressions: Vec<(&str, &str, &[&str])>| HostClaimSpec {
        host_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(
                expressions
                    .into_iter()
                    .map(|(key, operator, values)| LabelSelectorRequirement {
                        key: key.into(),
                        operator: operator.into(),
                        values: (!values.is_empty())
                            .then(|| values.iter().map(|v| (*v).to_owned()).collect()),
                    })
                    .collect(),
            ),
        }),
        ..simple()
    };
    cluster
        .add_claim(
            "c-no-gpu-not-rack-1",
            selector(vec![
                ("rack", "NotIn", &["1"]),
                ("gpu", "DoesNotExist", &[]),
            ]),
        )
        .await
        .unwrap();
    cluster
        .add_claim("c-rack-3", selector(vec![("rack", "In", &["3"])]))
        .await
        .unwrap();
    let (fence, _state) = term(1);
    binder(&cluster).batch(&fence).await.unwrap();
    let claims = cluster.claims();
    assert_eq!(
        claims.get("c-no-gpu-not-rack-1").await.unwrap().host_ref(),
        Some("h-rack-2")
    );
    let waiting = claims.get("c-rack-3").await.unwrap();
    assert_eq!(waiting.phase(), ClaimPhase::Pending, "{waiting:?}");
    assert_eq!(
        waiting.status.unwrap().conditions[0].reason,
        "Unsatisfiable"
    );
    cluster.server.shutdown().await;
}

/// Issue 23 item 5: the claim's conditions are `metav1.Condition`s (`Bound` and `Ready`, with
/// `observedGeneration`), `Failed` is kept for a claim that can never be served, the binder records Events
/// on bind, release and failure, and `kubectl get hostclaims` / `physicalhosts` show the CRDs' printer
/// columns through the fake's Table form.
#[tokio::test]
async fn claim_status_follows_kubernetes_conventions_with_events_and_printer_columns() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-1", &[], 8)).await.unwrap();
    cluster.add_claim("c-1", simple()).await.unwrap();
    let invalid = HostClaimSpec {
        required_tags: vec!["=x".into()],
        ..simple()
    };
    cluster.add_claim("c-invalid", invalid).await.unwrap();
    let (fence, _state) = term(1);
    let binder = binder(&cluster).events(ClaimEvents::new(cluster.client.clone(), "leader"));
    binder.batch(&fence).await.unwrap();

    let claim = cluster.claims().get("c-1").await.unwrap();
    let status = claim.status.clone().unwrap();
    let types: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, CONDITION_TYPES);
    for condition in &status.conditions {
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "BoundByLeader")
        );
        assert_eq!(condition.observed_generation, claim.metadata.generation);
        assert!(condition.observed_generation.is_some());
    }
    let failed = cluster
        .claims()
        .get("c-invalid")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(failed.phase, ClaimPhase::Failed);
    assert_eq!(failed.conditions[1].type_, "Ready");
    assert_eq!(failed.conditions[1].status, "False");

    // Events (written in the background: a generous liveness bound, not a timing).
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(cluster.client.clone(), NAMESPACE);
    let seen = |reason: &'static str, name: &'static str| {
        let events = events.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let list = events.list(&Default::default()).await.unwrap().items;
                if let Some(event) = list.into_iter().find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                }) {
                    return event;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no {reason} Event on {name}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let bound = seen("Bound", "c-1").await;
    assert_eq!(bound.type_.as_deref(), Some("Normal"));
    assert_eq!(bound.note.as_deref(), Some("bound to host h-1"));
    let invalid = seen("InvalidHostSelector", "c-invalid").await;
    assert_eq!(invalid.type_.as_deref(), Some("Warning"));
    assert!(
        invalid
            .note
            .as_deref()
            .unwrap()
            .contains("spec.requiredTags[0]"),
        "{invalid:?}"
    );

    // kubectl get: the printer columns, from the fake's Table form.
    if std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok()
    {
        let url = cluster.server.url();
        let get = |kind: &'static str| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new("kubectl")
                    .args([
                        "--server",
                        &url,
                        "--request-timeout=10s",
                        "get",
                        kind,
                        "-n",
                        NAMESPACE,
                    ])
                    .env("KUBECONFIG", "/dev/null")
                    .env("HOME", env!("CARGO_TARGET_TMPDIR"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                String::from_utf8(out.stdout).unwrap()
            })
        };
        let claims = get("hostclaims").await.unwrap();
        let lines: Vec<Vec<&str>> = claims
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["NAME", "PHASE", "HOST", "AGE"], "{claims}");
        assert!(
            lines.iter().any(|l| l[..3] == ["c-1", "Bound", "h-1"]),
            "{claims}"
        );
        // A missing field is an empty cell (kubectl prints nothing for a null custom column).
        assert!(
            lines
                .iter()
                .any(|l| l.len() == 3 && l[..2] == ["c-invalid", "Failed"]),
            "{claims}"
        );
        let hosts = get("physicalhosts").await.unwrap();
        let lines: Vec<Vec<&str>> = hosts
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["NAME", "STATE", "CONSUMER", "AGE"], "{hosts}");
        assert_eq!(lines[1][..3], ["h-1", "Claimed", "c-1"], "{hosts}");
    } else {
        println!(
            "kubectl is not installed: the printer columns are checked by the fake's table tests only"
        );
    }

    cluster
        .claims()
        .delete("c-1", &DeleteParams::default())
        .await
        .unwrap();
    binder.batch(&fence).await.unwrap();
    let released = seen("Released", "c-1").await;
    assert_eq!(released.note.as_deref(), Some("host h-1 released"));
    cluster.server.shutdown().await;
}

/// Issue 23 item 4: `Claimer::ensure` writes the claim when missing and returns its state at once
/// (pending with the reason, bound to a host, failed with the reason), for a reconciler re-triggered by the
/// claim's watch; `claim` is the blocking convenience over it and stops on a terminal failure.
#[tokio::test]
async fn ensure_returns_the_claim_state_without_waiting() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-1", &[], 8)).await.unwrap();
    let leader_mode = Claimer::new(
        cluster.client.clone(),
        NAMESPACE,
        "consumer-a",
        &fast(Mode::Leader),
        Metrics::new(&mut Registry::default()),
    );
    // No leader runs: ensure does not wait for one.
    let state = leader_mode.ensure("c-1", simple()).await.unwrap();
    assert_eq!(
        state,
        ClaimState::Pending {
            reason: String::new(),
            message: String::new()
        }
    );
    let created = cluster.claims().get("c-1").await.unwrap();
    assert!(created.finalizers().contains(&RELEASE_FINALIZER.to_owned()));
    // Again: the same claim, not a second one, and no conflict answered.
    cluster.server.reset_counts();
    leader_mode.ensure("c-1", simple()).await.unwrap();
    assert_eq!(cluster.api_counts().conflicts, 0);
    assert_eq!(
        cluster.claims().get("c-1").await.unwrap().metadata.uid,
        created.metadata.uid
    );
    cluster.add_claim("c-gpu", needs("gpu")).await.unwrap();
    cluster
        .add_claim(
            "c-invalid",
            HostClaimSpec {
                required_tags: vec!["=x".into()],
                ..simple()
            },
        )
        .await
        .unwrap();
    let (fence, _state) = term(1);
    binder(&cluster).batch(&fence).await.unwrap();
    assert_eq!(
        leader_mode.ensure("c-1", simple()).await.unwrap(),
        ClaimState::Bound { host: "h-1".into() }
    );
    let ClaimState::Pending { reason, .. } =
        leader_mode.ensure("c-gpu", needs("gpu")).await.unwrap()
    else {
        panic!("c-gpu is not pending");
    };
    assert_eq!(reason, "Unsatisfiable");
    // A claim the binder failed (written by another client): Failed with the reason; `claim` stops.
    let ClaimState::Failed { reason, message } =
        leader_mode.ensure("c-invalid", simple()).await.unwrap()
    else {
        panic!("c-invalid is not failed");
    };
    assert_eq!(reason, "InvalidHostSelector");
    assert!(message.contains("spec.requiredTags[0]"), "{message}");
    let err = leader_mode
        .claim("c-invalid", simple(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClaimError::Failed { .. }), "{err}");
    // A bad spec is refused before anything is written.
    let err = leader_mode
        .ensure(
            "c-bad",
            HostClaimSpec {
                required_tags: vec!["=x".into()],
                ..simple()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClaimError::Invalid { .. }), "{err}");
    assert!(cluster.claims().get_opt("c-bad").await.unwrap().is_none());

    // Claiming directly, ensure makes one attempt: bound in one call.
    cluster.add_host(&plan("h-2", &[], 8)).await.unwrap();
    let optimistic = Claimer::new(
        cluster.client.clone(),
        NAMESPACE,
        "consumer-b",
        &fast(Mode::Optimistic),
        Metrics::new(&mut Registry::default()),
    );
    assert_eq!(
        optimistic.ensure("c-2", simple()).await.unwrap(),
        ClaimState::Bound { host: "h-2".into() }
    );
    cluster.server.shutdown().await;
}

fn fast(mode: Mode) -> Settings {
    Settings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
        processing_interval: Duration::from_millis(100),
        mode,
        ..Settings::default()
    }
}

#[tokio::test]
async fn optimistic_claims_record_the_intent_before_the_host() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-1", &[], 8)).await.unwrap();
    let settings = fast(Mode::Optimistic);
    let claimer = Claimer::new(
        cluster.client.clone(),
        NAMESPACE,
        "consumer-a",
        &settings,
        Metrics::new(&mut Registry::default()),
    );
    cluster.server.reset_counts();
    let host = claimer
        .claim("c-1", simple(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(host, "h-1");
    let writes: Vec<String> = cluster
        .server
        .request_log()
        .into_iter()
        .filter(|r| r.verb == "update")
        .map(|r| r.resource)
        .collect();
    assert_eq!(
        writes,
        ["hostclaims", "physicalhosts", "physicalhosts", "hostclaims"]
    );
    let claim = cluster.claims().get("c-1").await.unwrap();
    let status = claim.status.unwrap();
    assert_eq!(status.selected_host.as_deref(), Some("h-1"));
    assert_eq!(status.bound_term, None);

    // Release without a leader: the claimer frees the host itself.
    claimer.release("c-1").await.unwrap();
    assert!(cluster.claims().get_opt("c-1").await.unwrap().is_none());
    assert!(cluster.hosts().get("h-1").await.unwrap().is_available());
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn auto_mode_falls_back_after_a_lease_duration_without_a_leader() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-1", &[], 8)).await.unwrap();
    let claimer = Claimer::new(
        cluster.client.clone(),
        NAMESPACE,
        "consumer-a",
        &fast(Mode::Auto),
        Metrics::new(&mut Registry::default()),
    );
    let started = tokio::time::Instant::now();
    let host = claimer
        .claim("c-1", simple(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(host, "h-1");
    // It delegated for a lease duration (1 s) first, then claimed directly.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let claim = cluster.claims().get("c-1").await.unwrap();
    assert_eq!(
        claim.status.unwrap().conditions[0].reason,
        "BoundOptimistically"
    );
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_claims_are_bound_by_the_elected_leader() {
    let cluster = Cluster::start().await.unwrap();
    for i in 0..4 {
        cluster
            .add_host(&plan(&format!("h-{i}"), &[], 8))
            .await
            .unwrap();
    }
    let (events, mut bound) = tokio::sync::mpsc::unbounded_channel();
    let settings = fast(Mode::Leader);
    let mut replicas = Vec::new();
    for id in ["replica-a", "replica-b"] {
        replicas.push(
            leaderelection_lab::claim_sim::Replica::start(&cluster, id, &settings, events.clone())
                .await
                .unwrap(),
        );
    }
    for i in 0..4 {
        replicas[i % 2].request(leaderelection_lab::claim_sim::ClaimRequest {
            name: format!("c-{i}"),
            spec: simple(),
        });
    }
    let mut got = BTreeMap::new();
    while got.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(20), bound.recv())
            .await
            .expect("every claim bound within 20 s")
            .unwrap();
        let ReplicaEvent::Bound { claim, host } = event;
        got.insert(claim, host);
    }
    let snapshot = cluster.snapshot().await.unwrap();
    assert!(snapshot.violations().is_empty());
    for claim in &snapshot.claims {
        let status = claim.status.as_ref().unwrap();
        assert!(status.bound_term.is_some(), "bound by a leader: {status:?}");
        assert_eq!(got[&claim.name_any()], status.host_ref.clone().unwrap());
    }
    for replica in &mut replicas {
        replica.stop().await;
    }
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn after_its_deadline_a_term_sends_nothing_and_waits_for_its_end() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-1", &[], 8)).await.unwrap();
    cluster.add_claim("c-1", simple()).await.unwrap();
    let (fence, state) = term(2);
    state.send_modify(|s| s.valid_until = Some(tokio::time::Instant::now()));
    let Fence::Term { state: rx, .. } = fence else {
        unreachable!()
    };
    cluster.server.reset_counts();
    let token = CancellationToken::new();
    let run = tokio::spawn(binder(&cluster).run_term(
        Term {
            holder: "leader".into(),
            transitions: 2,
            acquire_time: None,
        },
        rx,
        token.clone(),
    ));
    // Several processing intervals (100 ms) pass: the component keeps running (an early return would
    // count as a failure) and writes nothing.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!run.is_finished());
    assert_eq!(cluster.api_counts().writes, 0);
    token.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(cluster.api_counts().writes, 0);
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn priority_decides_who_gets_a_scarce_host_and_an_unsatisfiable_claim_waits_until_a_host_fits()
 {
    let cluster = Cluster::start().await.unwrap();
    cluster
        .add_host(&plan("h-1", &[("rack", "1")], 8))
        .await
        .unwrap();
    // Created first, but with a preferred tag: priority 100 against the simple claim's 150.
    let tagged = HostClaimSpec {
        preferred_tags: vec!["rack=1".into()],
        ..simple()
    };
    cluster.add_claim("c-tagged", tagged).await.unwrap();
    cluster.add_claim("c-simple", simple()).await.unwrap();
    cluster.add_claim("c-gpu", needs("gpu")).await.unwrap();
    let (fence, _state) = term(1);
    let binder = binder(&cluster);
    binder.batch(&fence).await.unwrap();
    let phase = |name: &'static str| {
        let claims = cluster.claims();
        async move { claims.get(name).await.unwrap().status.unwrap_or_default() }
    };
    assert_eq!(phase("c-simple").await.host_ref.as_deref(), Some("h-1"));
    assert_eq!(phase("c-tagged").await.phase, ClaimPhase::Pending);
    // No host of the pool has a GPU: Pending (not the terminal Failed: a host may join), with the reason;
    // the tagged claim's hosts are taken.
    let gpu = phase("c-gpu").await;
    assert_eq!(gpu.phase, ClaimPhase::Pending);
    assert_eq!(gpu.conditions[0].reason, "Unsatisfiable");
    assert_eq!(
        phase("c-tagged").await.conditions[0].reason,
        "NoHostAvailable"
    );
    // A GPU host joins: the waiting claim is bound.
    cluster
        .add_host(&plan("h-gpu", &[("gpu", "a100")], 8))
        .await
        .unwrap();
    binder.batch(&fence).await.unwrap();
    let gpu = phase("c-gpu").await;
    assert_eq!(
        (gpu.phase, gpu.host_ref.as_deref()),
        (ClaimPhase::Bound, Some("h-gpu"))
    );
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_claimers_racing_for_the_same_claims_agree_on_one_host_each() {
    let cluster = Cluster::start().await.unwrap();
    for i in 0..8 {
        cluster
            .add_host(&plan(&format!("h-{i}"), &[], 8))
            .await
            .unwrap();
    }
    let settings = fast(Mode::Optimistic);
    let mut claimers = Vec::new();
    for id in ["consumer-a", "consumer-b", "consumer-c"] {
        let listener = cluster.server.add_listener().await.unwrap();
        claimers.push(Claimer::new(
            leaderelection::KubeLeaseLock::client_for_url(&listener.url()).unwrap(),
            NAMESPACE,
            id,
            &settings,
            Metrics::new(&mut Registry::default()),
        ));
    }
    // Every consumer claims every claim at once (as every replica reconciling every claim).
    let token = CancellationToken::new();
    let mut races = Vec::new();
    for c in 0..6 {
        for claimer in &claimers {
            let name = format!("c-{c}");
            let token = &token;
            races.push(async move {
                let host = claimer.claim(&name, simple(), token).await;
                (name, host)
            });
        }
    }
    let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, host) in futures::future::join_all(races).await {
        hosts.entry(name).or_default().push(host.unwrap());
    }
    for (claim, got) in &hosts {
        assert!(got.iter().all(|h| h == &got[0]), "{claim}: {got:?}");
    }
    let snapshot = cluster.snapshot().await.unwrap();
    assert!(
        snapshot.violations().is_empty(),
        "{:?}",
        snapshot.violations()
    );
    assert_eq!(snapshot.bound().len(), 6);
    let used = snapshot
        .hosts
        .iter()
        .filter(|h| h.spec.consumer_ref.is_some())
        .count();
    assert_eq!(used, 6);
    cluster.server.shutdown().await;
}
