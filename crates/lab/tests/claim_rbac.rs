//! The Helm chart's RBAC for `claim-coordinator run` (deploy/helm/claim-coordinator) is what the binary calls.
//! The fake API server does not enforce RBAC, so the binary runs against it on a listener of its own (its
//! requests apart from the harness's) as the chart installs it — the Lease in one namespace, the hosts in a
//! pool namespace, the claims in a tenant namespace — through a bind, a host lost and bound again (a
//! repeated Event: a patch), an unsatisfiable claim, a deleted claim (release, finalizer) and SIGTERM (the
//! Lease released); then every request it made is checked against the rules the chart grants in each
//! namespace: each must be granted, and each grant must be used (least privilege), but for the few the
//! scenario cannot provoke, named with the reason.
//!
//! The grants below are the chart's, rule by rule (deploy/helm/claim-coordinator/templates/_helpers.tpl,
//! asserted on the rendered Roles by deploy/helm/check_claim_coordinator_chart.py); docs/claim-coordinator.md,
//! "Installing", says which call needs which. A failure here means the coordinator's calls changed: update
//! the three together.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use claim_coordinator::provider::Claim as _;
use claim_coordinator::resources::{HostClaim, HostClaimSpec, HostState, PhysicalHost};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use leaderelection_lab::claim_sim::{Cluster, HostPlan, create_host};
use leaderelection_lab::products::{Product, locate};

/// A liveness bound only, generous for a loaded machine.
const LIVENESS: Duration = Duration::from_secs(60);

/// The release's namespace (the Lease's), the pool's and a tenant's.
const RELEASE: &str = "ops";
const POOL: &str = "pool";
const TENANT: &str = "tenant-a";
const LEASE: &str = "claim-coordinator-leader";

/// One grant: namespace, resource as RBAC names it (`physicalhosts/status`), verb.
type Grant = (&'static str, &'static str, &'static str);

/// What the chart grants with leader election on and mode auto: the binder runs.
const BINDER_GRANTS: &[Grant] = &[
    (RELEASE, "leases", "get"),
    (RELEASE, "leases", "update"),
    (RELEASE, "leases", "list"),
    (RELEASE, "leases", "watch"),
    (RELEASE, "leases", "create"),
    (POOL, "physicalhosts", "list"),
    (POOL, "physicalhosts", "watch"),
    (POOL, "physicalhosts", "update"),
    (POOL, "physicalhosts/status", "update"),
    (TENANT, "hostclaims", "list"),
    (TENANT, "hostclaims", "watch"),
    (TENANT, "hostclaims", "update"),
    (TENANT, "hostclaims/status", "update"),
    (TENANT, "events", "create"),
    (TENANT, "events", "patch"),
];

/// Granted, and not provoked by the scenario: the elector lists the Lease only to find a version to resume
/// its watch from when the watch's is too old (`crates/leaderelection/src/lib.rs`, "RBAC").
const NOT_PROVOKED: &[Grant] = &[(RELEASE, "leases", "list")];

/// What the chart grants with leader election off: every replica runs the fallback coordinator, which
/// lists, and writes by the optimistic path; no Lease, no watch, no Event.
const FALLBACK_GRANTS: &[Grant] = &[
    (POOL, "physicalhosts", "list"),
    (POOL, "physicalhosts", "update"),
    (POOL, "physicalhosts/status", "update"),
    (TENANT, "hostclaims", "list"),
    (TENANT, "hostclaims", "update"),
    (TENANT, "hostclaims/status", "update"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_role_grants_exactly_what_run_calls_with_the_binder() {
    let calls = run_scenario(&["--enable-claim-coordinator-leader-election=true"], true).await;
    let granted: BTreeSet<Grant> = BINDER_GRANTS.iter().copied().collect();
    check(&calls, &granted, NOT_PROVOKED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_role_grants_exactly_what_run_calls_without_leader_election() {
    let calls = run_scenario(&["--enable-claim-coordinator-leader-election=false"], false).await;
    let granted: BTreeSet<Grant> = FALLBACK_GRANTS.iter().copied().collect();
    check(&calls, &granted, &[]);
}

/// Every call granted; every grant called, but for `not_provoked`.
fn check(
    calls: &BTreeSet<(String, String, String)>,
    granted: &BTreeSet<Grant>,
    not_provoked: &[Grant],
) {
    let denied: Vec<_> = calls
        .iter()
        .filter(|(ns, resource, verb)| {
            !granted.contains(&(ns.as_str(), resource.as_str(), verb.as_str()))
        })
        .collect();
    assert!(
        denied.is_empty(),
        "calls the chart's Roles do not grant (real RBAC would refuse them with 403): {denied:?}"
    );
    let unused: Vec<_> = granted
        .iter()
        .filter(|g| !not_provoked.contains(g))
        .filter(|(ns, resource, verb)| {
            !calls.contains(&((*ns).to_owned(), (*resource).to_owned(), (*verb).to_owned()))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "grants no call used (not least privilege): {unused:?}; calls: {calls:?}"
    );
}

/// Runs `claim-coordinator run` with `flags` (as the chart passes them: the Lease in RELEASE, hosts in POOL,
/// claims in TENANT) through the scenario, and returns its calls as (namespace, resource[/subresource],
/// verb). With `binder`, a host is also lost and the claim bound again, and another claim cannot be served
/// (the binder's Events).
async fn run_scenario(flags: &[&str], binder: bool) -> BTreeSet<(String, String, String)> {
    let cluster = Cluster::start().await.unwrap();
    // The binary's own listener: its requests are told apart from the harness's by the listener id.
    let listener = cluster.server.add_listener().await.unwrap();
    let hosts: Api<PhysicalHost> = Api::namespaced(cluster.client.clone(), POOL);
    let claims: Api<HostClaim> = Api::namespaced(cluster.client.clone(), TENANT);
    create_host(
        &hosts,
        &HostPlan {
            name: "host-1".into(),
            tags: Default::default(),
            cpu_cores: 8,
            memory_gib: 32,
        },
    )
    .await
    .unwrap();
    // Under cargo this builds the binary first, blocking the test's thread a while.
    let bin = locate(Product::ClaimCoordinator, None).unwrap();
    let child = tokio::process::Command::new(bin)
        // Never the kubeconfig of the machine running the tests (its credentials would go with --server).
        .env("KUBECONFIG", "/dev/null")
        .args([
            "run",
            "--server",
            &listener.url(),
            "--identity",
            "pod-a",
            "--namespace",
            RELEASE,
            "--host-namespace",
            POOL,
            "--claim-namespace",
            TENANT,
            "--claim-coordinator-lease-duration=2s",
            "--claim-coordinator-renew-deadline=1s",
            "--claim-coordinator-retry-period=200ms",
            "--claim-coordinator-processing-interval=100ms",
        ])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let spec = || HostClaimSpec {
        image_url: "http://images.example/os.iso".into(),
        ..HostClaimSpec::default()
    };
    claims
        .create(
            &PostParams::default(),
            &HostClaim::with_release_finalizer("claim-1", spec()),
        )
        .await
        .unwrap();
    wait_for(&claims, "claim-1", |c| c.host_ref() == Some("host-1")).await;
    if binder {
        // A claim no host can serve: the binder's Warning Event.
        let big = HostClaimSpec {
            min_cpu_cores: 1000,
            ..spec()
        };
        claims
            .create(
                &PostParams::default(),
                &HostClaim::with_release_finalizer("claim-2", big),
            )
            .await
            .unwrap();
        wait_for(&claims, "claim-2", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "Unsatisfiable"))
        })
        .await;
        // The host loses its consumer (as an operator's edit would): the binder repairs the claim and binds
        // it again, and its second Bound Event on the claim is a patch of the first.
        let mut host = hosts.get("host-1").await.unwrap();
        host.spec.consumer_ref = None;
        let host = hosts
            .replace("host-1", &PostParams::default(), &host)
            .await
            .unwrap();
        let mut host = host;
        if let Some(status) = host.status.as_mut() {
            status.state = HostState::Available;
        }
        hosts
            .replace_status("host-1", &PostParams::default(), &host)
            .await
            .unwrap();
        wait_for_patched_event(&cluster, listener.id()).await;
    }
    // A deleted claim: its host released, its finalizer removed.
    claims
        .delete("claim-1", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(LIVENESS, async {
        while claims.get_opt("claim-1").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the deleted claim goes within the liveness bound");
    // SIGTERM, as the kubelet stops a pod: the Lease is released.
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(LIVENESS, child.wait_with_output())
        .await
        .expect("claim-coordinator exits after SIGTERM")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log: Vec<_> = cluster
        .server
        .request_log()
        .into_iter()
        .filter(|r| r.listener == listener.id() && r.verb != "discovery")
        .collect();
    // The Lease rule is limited to the one Lease by name (`resourceNames`): a call naming another would be
    // refused. (Its list and watch name none: they select it by field, which RBAC authorizes as a request
    // on that name.)
    let other_leases: Vec<_> = log
        .iter()
        .filter(|r| r.resource == "leases" && r.name.as_deref().is_some_and(|n| n != LEASE))
        .collect();
    assert!(other_leases.is_empty(), "{other_leases:?}");
    let calls = log
        .into_iter()
        .map(|r| {
            let resource = match &r.subresource {
                Some(sub) => format!("{}/{sub}", r.resource),
                None => r.resource.clone(),
            };
            // Every call is namespaced here: a cluster-wide one (no namespace) would need a ClusterRole.
            (
                r.namespace.unwrap_or_else(|| "<cluster>".into()),
                resource,
                r.verb,
            )
        })
        .collect();
    cluster.server.shutdown().await;
    calls
}

/// Waits (within the liveness bound) until the claim `name` satisfies `done`.
async fn wait_for(claims: &Api<HostClaim>, name: &str, done: impl Fn(&HostClaim) -> bool) {
    tokio::time::timeout(LIVENESS, async {
        loop {
            if claims
                .get_opt(name)
                .await
                .unwrap()
                .is_some_and(|c| done(&c))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name}: not reached within the liveness bound"));
}

/// Waits (within the liveness bound) until the binary on `listener` has patched an Event.
async fn wait_for_patched_event(cluster: &Cluster, listener: usize) {
    tokio::time::timeout(LIVENESS, async {
        while !cluster
            .server
            .request_log()
            .iter()
            .any(|r| r.listener == listener && r.resource == "events" && r.verb == "patch")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a repeated Event (patch) within the liveness bound");
}
