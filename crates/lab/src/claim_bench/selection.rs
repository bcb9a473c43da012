//! `leader-elect-lab claim-bench --selection`: how long the leader takes to choose hosts for a batch of
//! pending claims, with no API server: the claims of the bench's workload (`claim_sim::claim_plans`) in
//! priority order, served one after the other by `claim_coordinator::selection::Batch` over the bench's
//! hosts (`claim_sim::host_plans`), as the binder's batch does before it sends its binds; then once, for
//! comparison, the per-claim loop the binder ran before (`selection::choose` for each claim against the
//! claims after it, O(claims² x hosts)), and whether both chose the same hosts.

use std::time::{Duration, Instant};

use anyhow::Context;
use claim_coordinator::priority::{self, DEFAULT_MAX_WAIT, Pending};
use claim_coordinator::selection::{self, Batch, Candidate, Requirements};
use leaderelection_lab::claim_sim::{ClaimRequest, claim_plans, host_plans};
use rand::SeedableRng;

/// Timed runs; the figures are the fastest and the median.
const RUNS: usize = 5;

/// Times the selection of `claims` claims (from `seed`) over `hosts` hosts and prints it.
///
/// # Errors
///
/// A claim plan whose requirements do not parse (a bug of the plans), or the two selections disagreeing.
pub(crate) fn run(hosts: usize, claims: usize, seed: u64) -> anyhow::Result<()> {
    let plans = host_plans(hosts);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let requests = claim_plans(claims, hosts, &mut rng);
    let requirements = requests
        .iter()
        .map(|r| Requirements::from_spec(&r.spec).with_context(|| r.name.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "leader-elect-lab claim-bench --selection: {claims} pending claims over {hosts} available hosts, seed {seed}, {RUNS} runs"
    );
    let candidates: Vec<Candidate> = plans
        .iter()
        .map(|p| Candidate {
            name: p.name.clone(),
            tags: p.tags.clone(),
            cpu_cores: p.cpu_cores,
            memory_gib: p.memory_gib,
        })
        .collect();
    let mut times = Vec::with_capacity(RUNS);
    let mut picks = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        // What the binder does per batch: the hosts as candidates, the claims in priority order, then
        // one claim after the other.
        let candidates = candidates.clone();
        let order = in_priority_order(&requests, &requirements);
        let mut batch = Batch::new(&candidates, order.iter().map(|(_, r)| *r).collect());
        picks = order
            .iter()
            .enumerate()
            .map(|(k, (pending, _))| {
                batch
                    .serve(k, &pending.name, None)
                    .map(|i| candidates[i].name.clone())
            })
            .collect::<Vec<_>>();
        times.push(started.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let bound = picks.iter().flatten().count();
    println!(
        "selection::Batch: {bound}/{claims} claims given a host; fastest {:.1} ms, median {:.1} ms, slowest {:.1} ms",
        ms(times[0]),
        ms(times[RUNS / 2]),
        ms(times[RUNS - 1])
    );
    // The previous per-claim loop, once: each claim counts every host's demand again.
    let started = Instant::now();
    let order = in_priority_order(&requests, &requirements);
    let mut available = candidates;
    let previous: Vec<Option<String>> = order
        .iter()
        .enumerate()
        .map(|(k, (pending, spec))| {
            let others: Vec<&Requirements> = order[k + 1..].iter().map(|(_, r)| *r).collect();
            selection::choose(&pending.name, spec, &available, &others)
                .map(|i| available.remove(i).name)
        })
        .collect();
    let elapsed = started.elapsed();
    println!(
        "per-claim loop (before): {}/{claims} claims given a host; {:.1} ms (one run); same hosts as selection::Batch: {}",
        previous.iter().flatten().count(),
        ms(elapsed),
        if previous == picks { "yes" } else { "NO" }
    );
    anyhow::ensure!(
        previous == picks,
        "selection::Batch and the per-claim loop chose different hosts"
    );
    Ok(())
}

/// The claims (all just created, none tried yet) in priority order, with their requirements.
fn in_priority_order<'a>(
    requests: &[ClaimRequest],
    requirements: &'a [Requirements],
) -> Vec<(Pending, &'a Requirements)> {
    let mut order: Vec<(Pending, &Requirements)> = requests
        .iter()
        .zip(requirements)
        .map(|(r, requirements)| {
            let pending = Pending {
                name: r.name.clone(),
                age: Duration::ZERO,
                simple: requirements.is_simple(),
                attempts: 0,
            };
            (pending, requirements)
        })
        .collect();
    order.sort_by(|a, b| priority::compare(&a.0, &b.0, DEFAULT_MAX_WAIT));
    order
}
