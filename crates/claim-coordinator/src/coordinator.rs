//! One coordinator replica: the election over the coordinator Lease through
//! [`leaderelection_controller::Runtime`], with the [`Binder`] as its leader-only component.

use kube::Client;
use leaderelection::{Callbacks, KubeLeaseLock};
use leaderelection_controller::{LeaderContext, Runtime};
use prometheus_client::registry::Registry;

use crate::binder::Binder;
use crate::claimer::Claimer;
use crate::events::ClaimEvents;
use crate::metrics::Metrics;
use crate::provider::Host;
use crate::resources::HostClaim;
use crate::settings::{Mode, Settings};
use crate::steps::Pool;

/// Builds a replica's runtime: the election of `settings.lease_name` in `namespace` as `identity`, the
/// binder of the hosts and claims of `namespace` during this replica's terms (its requests through the
/// term's write gate, [`Binder::gated`]: `docs/claim-coordinator.md`, "Fencing"), and the coordinator's
/// metrics in `registry` (served on `/metrics` with the election's when `admin` is set). Run it with
/// [`Runtime::run`].
///
/// With leader election disabled (`settings.leader_election == false`) the runtime campaigns for nothing
/// and every replica runs the fallback coordinator ([`Claimer::run_fallback`]: pending claims served by the
/// optimistic path, intent first). In [`Mode::Optimistic`] the leader runs the fallback instead of the
/// binder: a leader choosing hosts host-first while consumers choose them intent-first could give a claim
/// two hosts until its next batch repairs it; the intent-first path cannot.
///
/// # Errors
///
/// [`leaderelection::ConfigError`] when the timings break a rule.
///
/// ## RBAC
///
/// See the crate documentation.
pub fn replica(
    client: Client,
    settings: &Settings,
    identity: &str,
    namespace: &str,
    registry: Registry,
    admin: Option<std::net::SocketAddr>,
) -> Result<(Runtime, Metrics), leaderelection::ConfigError> {
    let pool = Pool::new(client.clone(), namespace, identity);
    replica_of(pool, client, settings, identity, namespace, registry, admin)
}

/// [`replica`] for any pool of `HostClaim`s: hosts of kind `H` and claims in the namespaces `pool` reads
/// (e.g. [`Pool::with_namespaces`]: a pool namespace and every tenant namespace), with the coordinator
/// Lease in `lease_namespace`.
///
/// # Errors
///
/// [`leaderelection::ConfigError`] when the timings break a rule.
pub fn replica_of<H: Host>(
    pool: Pool<H, HostClaim>,
    client: Client,
    settings: &Settings,
    identity: &str,
    lease_namespace: &str,
    mut registry: Registry,
    admin: Option<std::net::SocketAddr>,
) -> Result<(Runtime, Metrics), leaderelection::ConfigError> {
    let namespace = lease_namespace;
    let metrics = Metrics::for_namespace(&mut registry, namespace);
    let config = settings.elector_config(identity, namespace);
    let callbacks = Callbacks::new().on_new_leader({
        let (metrics, identity) = (metrics.clone(), identity.to_owned());
        move |leader| {
            metrics.leader_election_event("new_leader");
            tracing::info!(
                leader,
                is_self = leader == identity,
                "New leader elected for claim coordination"
            );
        }
    });
    // Without leader election the replica runs alone: it leads at once and makes no Lease call.
    let builder = if settings.leader_election {
        Runtime::builder(client.clone(), config)
    } else {
        Runtime::standalone(config)
    };
    let mut builder = builder.registry(registry).callbacks(callbacks);
    if let Some(addr) = admin {
        builder = builder.admin(addr);
    }
    if settings.leader_election && settings.mode != Mode::Optimistic {
        let binder = Binder::new(
            pool,
            metrics.clone(),
            settings.processing_interval,
            settings.max_wait,
        )
        .max_concurrent_binds(settings.max_concurrent_binds)
        .events(ClaimEvents::new(client, identity));
        // The binder's writes go through the term's write gate: refused outside the term, cancelled in
        // flight at its end, and stamped so that the fencing policy refuses them once a newer term began.
        builder = builder.leader_only("claim-binder", move |lead: LeaderContext| {
            binder
                .clone()
                .gated(&lead.fence)
                .run_term(lead.term, lead.state, lead.token)
        });
    } else {
        // The fallback coordinator, intent first: a host-first binder beside consumers claiming intent
        // first could give a claim two hosts, the fallback cannot. Without election every replica runs it
        // (each leads at once); with election in optimistic mode, the leader.
        // Not gated: its writes are the consumers' optimistic path, safe with any number of writers
        // (conditional, intent first) and stamped by no term.
        let mut fallback_settings = settings.clone();
        fallback_settings.mode = Mode::Optimistic;
        let fallback = Claimer::with_pool(
            pool,
            KubeLeaseLock::new(client, namespace, &settings.lease_name),
            &fallback_settings,
            metrics.clone(),
        );
        let interval = settings.processing_interval;
        builder = builder.leader_only("claim-fallback", move |lead: LeaderContext| {
            fallback.clone().run_fallback(interval, lead.token)
        });
    }
    let runtime = builder.build()?;
    Ok((runtime, metrics))
}
