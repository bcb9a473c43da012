//! `leader-elect-lab claim-demo`: three replicas on the embedded fake API server, 50 hosts, 40 claims arriving
//! over time through the replicas' consumers, the leader killed in the middle of a batch; prints the
//! timeline and a summary with the two invariants. Exits non-zero when a claim is not bound or an invariant
//! is broken.

use std::time::Duration;

use anyhow::{Context, bail};
use claim_coordinator::provider::Claim as _;
use fake_apiserver::Faults;
use kube::api::{Api, DeleteParams};
use leaderelection_lab::claim_sim::{
    self as sim, Cluster, Monitor, NAMESPACE, Replica, ReplicaEvent, claim_plans, host_plans,
    quantile,
};
use rand::SeedableRng;

const HOSTS: usize = 50;
const CLAIMS: usize = 40;
/// The claims of the batch during which the leader is killed.
const BURST: usize = 12;

/// Runs the demo; `Ok` only when every claim was bound and no invariant was broken.
pub(crate) async fn run() -> anyhow::Result<()> {
    let settings = sim::fast_settings();
    println!(
        "leader-elect-lab claim-demo: {HOSTS} hosts, {CLAIMS} claims, 3 replicas (lease {}, renew deadline {}, \
         retry period {}, processing interval {}, mode {})",
        humantime::format_duration(settings.lease_duration),
        humantime::format_duration(settings.renew_deadline),
        humantime::format_duration(settings.retry_period),
        humantime::format_duration(settings.processing_interval),
        settings.mode.as_str()
    );
    let cluster = Cluster::start()
        .await
        .map_err(|e| anyhow::anyhow!("starting the fake API server: {e}"))?;
    for plan in host_plans(HOSTS) {
        cluster.add_host(&plan).await.context("creating hosts")?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let claims = claim_plans(CLAIMS, HOSTS, &mut rng);
    let monitor = Monitor::start(&cluster, &settings.lease_name);
    let t = |m: &Monitor| format!("t+{:>6.2}s", m.elapsed().as_secs_f64());
    let (events, mut bound) = tokio::sync::mpsc::unbounded_channel();
    let mut replicas = Vec::new();
    for id in ["replica-a", "replica-b", "replica-c"] {
        let replica = Replica::start(&cluster, id, &settings, events.clone())
            .await
            .map_err(|e| anyhow::anyhow!("starting {id}: {e}"))?;
        // 10 ms per request: a batch takes long enough to be cut in the middle.
        cluster.server.listeners()[replica.listener].set_faults(Faults {
            latency: Duration::from_millis(10),
            ..Faults::default()
        });
        replicas.push(replica);
    }
    println!("{} 3 replicas started", t(&monitor));
    if !monitor
        .wait_for(Duration::from_secs(10), |o| !o.leaders.is_empty())
        .await
    {
        bail!("no leader elected within 10 s");
    }
    let first_leader = monitor.observed().leaders[0].1.clone();
    println!("{} {first_leader} leads", t(&monitor));

    // The first claims arrive one by one, through every replica's consumer.
    let steady = CLAIMS - BURST;
    for (i, claim) in claims[..steady].iter().enumerate() {
        replicas[i % replicas.len()].request(claim.clone());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    println!("{} {steady} claims requested one by one", t(&monitor));
    let all_steady = |o: &sim::Observed| o.bound_at.len() >= steady;
    if !monitor.wait_for(Duration::from_secs(20), all_steady).await {
        bail!("the first {steady} claims were not bound within 20 s");
    }
    println!("{} {steady} claims bound", t(&monitor));

    // A burst: one batch; the leader is killed once the first host of it is written (step 1 answered),
    // before the claims are: kill -9 in the middle of the batch.
    let host_writes = |cluster: &Cluster| {
        cluster
            .server
            .answer_counts()
            .iter()
            .filter(|a| a.resource == "physicalhosts" && a.verb == "update")
            .map(|a| a.count)
            .sum::<u64>()
    };
    let leader = monitor.observed().leaders.last().map(|(_, h)| h.clone());
    let leader = leader.context("no leader")?;
    let before = host_writes(&cluster);
    for (i, claim) in claims[steady..].iter().enumerate() {
        let consumer = replicas
            .iter()
            .filter(|r| r.identity != leader)
            .nth(i % 2)
            .context("two followers")?;
        consumer.request(claim.clone());
    }
    println!("{} a burst of {BURST} claims requested", t(&monitor));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while host_writes(&cluster) == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let victim = replicas
        .iter_mut()
        .find(|r| r.identity == leader)
        .context("the leader replica")?;
    victim.kill().await;
    let after_kill = cluster.snapshot().await?;
    let bound_before_kill = after_kill.bound().len() - steady;
    let half_done: Vec<String> = after_kill
        .hosts
        .iter()
        .filter_map(|h| {
            let consumer = h.spec.consumer_ref.as_ref()?;
            let claim = after_kill
                .claims
                .iter()
                .find(|c| c.metadata.uid.as_ref() == Some(&consumer.uid))?;
            claim.host_ref().is_none().then(|| consumer.name.clone())
        })
        .collect();
    println!(
        "{} killed the leader {leader} (kill -9: no release) mid-batch: {bound_before_kill} of {BURST} burst \
         claims bound, {} half-done (host written, claim not yet: {})",
        t(&monitor),
        half_done.len(),
        half_done.join(", ")
    );
    let all = |o: &sim::Observed| o.bound_at.len() >= CLAIMS;
    let done = monitor.wait_for(Duration::from_secs(20), all).await;
    let observed = monitor.observed();
    for (at, holder) in observed.leaders.iter().skip(1) {
        println!("t+{:>6.2}s {holder} leads (new term)", at.as_secs_f64());
    }
    if done {
        println!(
            "{} all {CLAIMS} claims bound (the new term finished the half-done binds on their hosts)",
            t(&monitor)
        );
    }

    // Release: deleting 5 claims frees their hosts.
    let claims_api: Api<claim_coordinator::HostClaim> =
        Api::namespaced(cluster.client.clone(), NAMESPACE);
    for claim in claims.iter().take(5) {
        claims_api
            .delete(&claim.name, &DeleteParams::default())
            .await
            .context("deleting a claim")?;
    }
    let released = wait_released(&cluster, 5, Duration::from_secs(10)).await;
    println!(
        "{} deleted 5 claims: {} released (hosts Available again, claims gone)",
        t(&monitor),
        if released { "all" } else { "NOT all" }
    );

    let mut consumer_bound = 0;
    while let Ok(ReplicaEvent::Bound { .. }) = bound.try_recv() {
        consumer_bound += 1;
    }
    for replica in &mut replicas {
        replica.stop().await;
    }
    let observed = monitor.stop().await;
    let counts = cluster.api_counts();
    let snapshot = cluster.snapshot().await?;
    let final_violations = snapshot.violations();
    println!();
    println!("summary");
    println!(
        "  claims bound                 {}/{CLAIMS} (consumers told by their claim's watch: {consumer_bound})",
        observed.bound_at.len()
    );
    println!(
        "  leaders                      {}",
        observed
            .leaders
            .iter()
            .map(|(_, h)| h.as_str())
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    print_latency(&observed.time_to_claim());
    println!(
        "  conflicts (409)              {} on hosts and claims; API writes {}",
        counts.conflicts, counts.writes
    );
    let two_consumers = observed.violations.hosts_with_two_consumers.len()
        + final_violations.hosts_with_two_consumers.len();
    let two_hosts = observed.violations.claims_with_two_hosts.len()
        + final_violations.claims_with_two_hosts.len();
    println!(
        "  hosts with two consumers     {two_consumers} (in {} snapshots and the final state)",
        observed.snapshots
    );
    println!("  claims with two hosts        {two_hosts}");
    cluster.server.shutdown().await;
    if !done || !released || two_consumers + two_hosts > 0 {
        bail!("the demo failed: see the summary");
    }
    Ok(())
}

fn print_latency(latency: &[Duration]) {
    println!(
        "  time to claim                p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        quantile(latency, 0.5).as_secs_f64() * 1000.0,
        quantile(latency, 0.99).as_secs_f64() * 1000.0,
        quantile(latency, 1.0).as_secs_f64() * 1000.0
    );
}

/// Waits until `count` claims are gone and no host names a missing claim.
async fn wait_released(cluster: &Cluster, count: usize, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Ok(snapshot) = cluster.snapshot().await {
            let uids: std::collections::BTreeSet<_> = snapshot
                .claims
                .iter()
                .filter_map(|c| c.metadata.uid.clone())
                .collect();
            let orphans = snapshot
                .hosts
                .iter()
                .filter(|h| {
                    h.spec
                        .consumer_ref
                        .as_ref()
                        .is_some_and(|c| !uids.contains(&c.uid))
                })
                .count();
            if snapshot.claims.len() == CLAIMS - count && orphans == 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
