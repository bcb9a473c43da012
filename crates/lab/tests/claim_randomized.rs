//! Randomized runs over 200 seeds: three replicas on the fake API server (each in its own runtime, on its own
//! listener), claims arriving directly and through the replicas' consumers (auto mode, or leader in a quarter
//! of the seeds), the leader killed
//! (no release) while it binds, a follower crashed, API faults (errors, commit-then-drop, black hole) on one
//! replica's listener, late writes (the leader's host writes applied by the server 1.5 s after they were
//! sent, past a takeover when the leader is killed: the late write `docs/claim-coordinator.md` describes),
//! hosts and claims created and deleted concurrently. Fencing is on: the binders write through their term's
//! gate (as `coordinator::replica` runs them) and the fencing policy for the hosts is installed, so a late
//! host write of an older term is refused by the server (422). In every 100 ms snapshot and at
//! the end: no host with two consumers, no claim with two hosts; and every claim still wanted is bound after
//! the faults stop. The design bound is lease duration + 2 x processing interval; it is a wall-clock figure,
//! so the test prints how many seeds met it and asserts only a liveness bound that a machine loaded by a
//! parallel build also meets ([`LIVENESS_SLACK`] more). `leader-elect-lab claim-bench` measures the figure.
//!
//! A failing seed is printed; run it alone with `SEED=<n> cargo test -p leaderelection-lab --test claim_randomized`.
//! `FENCING=off` runs the same seeds without the policy (the gate alone cannot call back a write already on
//! the wire). Measured on 2026-12-07 (debug build, 2 cores shared with other builds, load average 8-10),
//! `[FENCING=off] cargo test -p leaderelection-lab --test claim_randomized invariants_hold`: without the
//! policy, 1 failing seed of 200 in one run (seed 128: a late bind landed, `claim-2` had two hosts; the seed
//! alone did not repeat it in 3 tries: it is a matter of timing) and 0 in two more; with it, 0 of 200 in
//! three runs. A late write lands rarely here because the next leader, reading the same hosts and claims,
//! mostly binds the claim to the same host, and its write makes the held one fail with 409;
//! `tests/claim_fencing.rs` makes the case where it does not (a better host joined), deterministically.

use std::sync::Arc;
use std::time::Duration;

use claim_coordinator::provider::{Claim as _, Host as _};
use claim_coordinator::resources::HostClaimSpec;
use claim_coordinator::{Mode, Settings};
use fake_apiserver::Faults;
use kube::ResourceExt;
use kube::api::DeleteParams;
use leaderelection_lab::claim_sim::{ClaimRequest, Cluster, HostPlan, Monitor, Replica};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

const SEEDS: u64 = 200;
/// Seeds run at once.
const PARALLEL: usize = 5;
/// What a loaded machine may add to the design bound before a seed fails: a claim left unbound this long
/// is a liveness failure, not a slow machine (seeds took up to 1.7 s for 1.4 s at a load average of 15-19).
const LIVENESS_SLACK: Duration = Duration::from_secs(5);
/// How late the late-write fault applies the leader's host writes: past the takeover after a kill (lease
/// duration 1 s, the jittered retry up to 120 ms after the old Lease expires, the next leader's first
/// batch), so that a bind sent just before the kill lands after the next leader has read the hosts.
const LATE_WRITE_DELAY: Duration = Duration::from_millis(1500);

/// Whether the fencing policy is installed: unless `FENCING=off`.
fn fencing() -> bool {
    std::env::var("FENCING").map_or(true, |v| v != "off")
}

/// Lease 1 s, retry period 100 ms, processing interval 200 ms: the bound after the faults stop (lease
/// duration + 2 x processing interval = 1.4 s) leaves the elector's jittered retry (up to 120 ms after the
/// old Lease expires) and the first batch 280 ms.
fn settings() -> Settings {
    Settings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
        processing_interval: Duration::from_millis(200),
        mode: Mode::Auto,
        ..Settings::default()
    }
}

fn host(i: usize, rng: &mut StdRng) -> HostPlan {
    let mut tags = std::collections::BTreeMap::new();
    if rng.random_bool(0.3) {
        tags.insert("ssd".to_owned(), String::new());
    }
    HostPlan {
        name: format!("host-{i}"),
        tags,
        cpu_cores: 8 << rng.random_range(0..3),
        memory_gib: 64,
    }
}

fn claim(i: usize, rng: &mut StdRng) -> ClaimRequest {
    let mut spec = HostClaimSpec {
        image_url: "http://images.example/os.iso".into(),
        ..HostClaimSpec::default()
    };
    if rng.random_bool(0.4) {
        spec.preferred_tags.push("ssd".into());
    }
    ClaimRequest {
        name: format!("claim-{i}"),
        spec,
    }
}

/// One seed; `Err` says what broke.
/// One seed; `Ok` with the time from the faults stopping to every claim bound.
async fn run(seed: u64) -> Result<Duration, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    // The consumers' mode: auto, or in a quarter of the seeds leader.
    let settings = Settings {
        mode: if rng.random_bool(0.25) {
            Mode::Leader
        } else {
            Mode::Auto
        },
        ..settings()
    };
    let cluster = Cluster::start().await.map_err(|e| e.to_string())?;
    if fencing() {
        cluster
            .install_fencing(&settings.lease_name)
            .await
            .map_err(|e| e.to_string())?;
    }
    // Enough hosts for every claim, also after one host is deleted: every claim is satisfiable.
    let claims = rng.random_range(3..=6);
    let mut hosts = claims + 2;
    for i in 0..hosts {
        cluster
            .add_host(&host(i, &mut rng))
            .await
            .map_err(|e| e.to_string())?;
    }
    let (events, _bound) = tokio::sync::mpsc::unbounded_channel();
    let mut replicas = Vec::new();
    for r in 0..3 {
        let replica = Replica::start(&cluster, &format!("replica-{r}"), &settings, events.clone())
            .await
            .map_err(|e| e.to_string())?;
        cluster.server.listeners()[replica.listener].set_faults(Faults {
            latency: Duration::from_millis(rng.random_range(0..4)),
            ..Faults::default()
        });
        replicas.push(replica);
    }
    let monitor = Monitor::every(&cluster, &settings.lease_name, Duration::from_millis(100));
    if !monitor
        .wait_for(Duration::from_secs(5), |o| !o.leaders.is_empty())
        .await
    {
        return Err("no leader within 5 s".into());
    }

    // The chaos: claims arrive (half through consumers), faults on one follower or the leader (late writes:
    // on the leader), the leader killed while binding, a follower crashed, a claim and a free host deleted,
    // a host added.
    let mut faulted = rng.random_range(0..3usize);
    let kind = rng.random_range(0..4);
    let late_writes = kind == 3;
    let fault = match kind {
        0 => Faults {
            error_rate: 0.4,
            error_code: if rng.random_bool(0.5) { 500 } else { 503 },
            ..Faults::default()
        },
        1 => Faults {
            commit_then_drop: true,
            ..Faults::default()
        },
        2 => Faults::partition(),
        _ => {
            // Late writes strike the leader's host updates.
            let leader = monitor.observed().leaders.last().map(|(_, h)| h.clone());
            if let Some(index) = replicas
                .iter()
                .position(|r| Some(&r.identity) == leader.as_ref())
            {
                faulted = index;
            }
            Faults {
                commit_delay: LATE_WRITE_DELAY,
                verbs: vec!["update".into()],
                resources: vec!["physicalhosts".into()],
                ..Faults::default()
            }
        }
    };
    cluster.server.listeners()[replicas[faulted].listener].set_faults(fault);
    let kill_leader_at = rng.random_bool(0.7).then(|| rng.random_range(0..claims));
    let crash_follower = rng.random_bool(0.3);
    let delete_claim = rng.random_bool(0.5).then(|| rng.random_range(0..claims));
    for i in 0..claims {
        let request = claim(i, &mut rng);
        let alive: Vec<&Replica> = replicas.iter().filter(|r| r.is_running()).collect();
        if rng.random_bool(0.5) && !alive.is_empty() {
            alive[rng.random_range(0..alive.len())].request(request);
        } else {
            cluster
                .add_claim(&request.name, request.spec)
                .await
                .map_err(|e| e.to_string())?;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
        if kill_leader_at == Some(i) {
            let leader = monitor.observed().leaders.last().map(|(_, h)| h.clone());
            if let Some(r) = replicas
                .iter_mut()
                .find(|r| Some(&r.identity) == leader.as_ref())
            {
                r.kill().await;
            }
            if late_writes {
                // A best fit (fewest cores) joins during the takeover: the next leader may bind a claim
                // elsewhere than the killed leader's held write, which then finds its host unchanged.
                cluster
                    .add_host(&HostPlan {
                        name: format!("host-{hosts}"),
                        tags: std::collections::BTreeMap::new(),
                        cpu_cores: 8,
                        memory_gib: 64,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                hosts += 1;
            }
        }
        if delete_claim == Some(i) {
            let _ = cluster
                .claims()
                .delete(
                    &format!("claim-{}", rng.random_range(0..=i)),
                    &DeleteParams::default(),
                )
                .await;
        }
    }
    if crash_follower {
        let leader = monitor.observed().leaders.last().map(|(_, h)| h.clone());
        let running = replicas.iter().filter(|r| r.is_running()).count();
        if running > 1
            && let Some(r) = replicas
                .iter_mut()
                .find(|r| r.is_running() && Some(&r.identity) != leader.as_ref())
        {
            r.kill().await;
        }
    }
    if rng.random_bool(0.3)
        && let Ok(snapshot) = cluster.snapshot().await
        && let Some(free) = snapshot.hosts.iter().find(|h| h.is_available())
    {
        let _ = cluster
            .hosts()
            .delete(&free.name_any(), &DeleteParams::default())
            .await;
    }
    if rng.random_bool(0.5) {
        cluster
            .add_host(&host(hosts, &mut rng))
            .await
            .map_err(|e| e.to_string())?;
        hosts += 1;
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;

    // The faults stop; a replacement replica joins when only one is left.
    for listener in cluster.server.listeners() {
        listener.set_faults(Faults::default());
    }
    let faults_stopped = Instant::now();
    if replicas.iter().filter(|r| r.is_running()).count() < 2 {
        replicas.push(
            Replica::start(&cluster, "replica-new", &settings, events.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let bound_by = settings.lease_duration + settings.processing_interval * 2 + LIVENESS_SLACK;
    let unbound = loop {
        let snapshot = cluster.snapshot().await.map_err(|e| e.to_string())?;
        let unbound = snapshot
            .claims
            .iter()
            .filter(|c| !c.is_deleting() && c.host_ref().is_none())
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>();
        let releasing = snapshot.claims.iter().any(|c| c.is_deleting());
        if (unbound.is_empty() && !releasing) || faults_stopped.elapsed() > bound_by {
            break unbound;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = faults_stopped.elapsed();
    for replica in &mut replicas {
        replica.kill().await;
    }
    let observed = monitor.stop().await;
    let last = cluster.snapshot().await.map_err(|e| e.to_string())?;
    cluster.server.shutdown().await;
    let mut violations = observed.violations;
    let final_violations = last.violations();
    violations
        .hosts_with_two_consumers
        .extend(final_violations.hosts_with_two_consumers);
    violations
        .claims_with_two_hosts
        .extend(final_violations.claims_with_two_hosts);
    if !violations.is_empty() {
        return Err(format!("invariants broken: {violations:?}"));
    }
    if !unbound.is_empty() || elapsed > bound_by {
        return Err(format!(
            "claims {unbound:?} not bound (or a release not done) {} ms after the faults stopped (liveness bound: {} ms; {hosts} hosts)",
            elapsed.as_millis(),
            bound_by.as_millis()
        ));
    }
    Ok(elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_and_claims_are_bound_over_200_seeds() {
    let seeds: Vec<u64> = match std::env::var("SEED") {
        Ok(seed) => vec![seed.parse().expect("SEED is a number")],
        Err(_) => (0..SEEDS).collect(),
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut runs = tokio::task::JoinSet::new();
    for seed in seeds {
        let permit = permits.clone().acquire_owned().await.unwrap();
        runs.spawn(async move {
            let result = run(seed).await;
            drop(permit);
            (seed, result)
        });
    }
    let mut failures = Vec::new();
    let mut bound_in = Vec::new();
    while let Some(joined) = runs.join_next().await {
        let (seed, result) = joined.unwrap();
        match result {
            Ok(elapsed) => bound_in.push(elapsed),
            Err(err) => failures.push(format!("seed {seed}: {err}")),
        }
    }
    let design = settings().lease_duration + settings().processing_interval * 2;
    println!(
        "fencing {}: claims bound within the design bound ({} ms) in {} of {} seeds; slowest {} ms",
        if fencing() { "on" } else { "off" },
        design.as_millis(),
        bound_in.iter().filter(|e| **e <= design).count(),
        bound_in.len(),
        bound_in.iter().max().map_or(0, Duration::as_millis)
    );
    assert!(!bound_in.is_empty() || !failures.is_empty());
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The checker of the 200 seeds catches an unguarded host write (issue 23): a patch without
/// resourceVersion that replaces a bound host's `consumerRef` (cluster-api-provider-metal3#3189's bug) is
/// repaired by the next batch, so a snapshot every 100 ms sees it only if it falls in between (the issue
/// measured 0 of 200 seeds); the monitor's watch of the hosts reports the write itself.
#[tokio::test]
async fn an_unguarded_host_write_is_caught_by_the_monitor() {
    use claim_coordinator::{Binder, Metrics, Pool};
    use kube::api::{Patch, PatchParams};
    use leaderelection_lab::claim_sim::{NAMESPACE, current_term};

    let cluster = Cluster::start().await.unwrap();
    for name in ["h-1", "h-2"] {
        cluster
            .add_host(&HostPlan {
                name: name.into(),
                tags: Default::default(),
                cpu_cores: 8,
                memory_gib: 64,
            })
            .await
            .unwrap();
    }
    let monitor = Monitor::every(&cluster, &settings().lease_name, Duration::from_millis(100));
    let spec = HostClaimSpec {
        image_url: "http://images.example/os.iso".into(),
        ..HostClaimSpec::default()
    };
    for name in ["c-1", "c-2"] {
        cluster.add_claim(name, spec.clone()).await.unwrap();
    }
    let binder = Binder::new(
        Pool::new(cluster.client.clone(), NAMESPACE, "leader"),
        Metrics::new(&mut prometheus_client::registry::Registry::default()),
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    let (fence, _state) = current_term(1);
    assert_eq!(binder.batch(&fence).await.unwrap().bound, 2);
    let claims = cluster.claims();
    let (c1, c2) = (
        claims.get("c-1").await.unwrap(),
        claims.get("c-2").await.unwrap(),
    );
    let stolen = c1.host_ref().unwrap().to_owned();
    // Guarded writes never replace a consumer: nothing is reported for the binds.
    assert!(
        monitor
            .wait_for(Duration::from_secs(20), |o| o.bound_at.len() == 2)
            .await
    );
    assert!(monitor.observed().violations.is_empty());
    // The unguarded write: a merge patch of the consumer, no resourceVersion.
    let patch = serde_json::json!({"spec": {"consumerRef": c2.consumer_ref()}});
    cluster
        .hosts()
        .patch(&stolen, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    // The binder repairs at once (the stolen claim is pending again, the thief keeps one host).
    binder.batch(&fence).await.unwrap();
    binder.batch(&fence).await.unwrap();
    // A liveness bound for the watch event, generous for a loaded machine.
    let caught = monitor
        .wait_for(Duration::from_secs(20), |o| {
            o.violations.consumers_replaced.contains(&stolen)
        })
        .await;
    let observed = monitor.stop().await;
    assert!(caught, "{:?}", observed.violations);
    cluster.server.shutdown().await;
}
