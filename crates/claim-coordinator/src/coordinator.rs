//! One coordinator replica: the election over the coordinator Lease through
//! [`leaderelection_controller::Runtime`], with the [`Binder`] as its leader-only component.

use kube::Client;
use leaderelection::Callbacks;
use leaderelection_controller::{LeaderContext, Runtime};
use prometheus_client::registry::Registry;

use crate::binder::Binder;
use crate::events::ClaimEvents;
use crate::metrics::Metrics;
use crate::provider::{Claim, Host};
use crate::settings::{Mode, Settings};
use crate::steps::Pool;

/// Builds a replica's runtime: the election of `settings.lease_name` in `namespace` as `identity`, the
/// binder of the hosts and claims of `namespace` during this replica's terms, and the coordinator's
/// metrics in `registry` (served on `/metrics` with the election's when `admin` is set). Run it with
/// [`Runtime::run`].
///
/// With leader election disabled (`settings.leader_election == false`) the runtime campaigns for nothing
/// and runs no binder: consumers then claim directly. In [`Mode::Optimistic`] it runs no binder either:
/// a leader choosing hosts host-first while consumers choose them intent-first could give a claim two
/// hosts until its next batch repairs it.
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

/// [`replica`] for any pool: hosts of kind `H` and claims of kind `C` in the namespaces `pool` reads
/// (e.g. [`Pool::with_namespaces`]: a pool namespace and every tenant namespace), with the coordinator
/// Lease in `lease_namespace`.
///
/// # Errors
///
/// [`leaderelection::ConfigError`] when the timings break a rule.
pub fn replica_of<H: Host, C: Claim>(
    pool: Pool<H, C>,
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
    // In optimistic mode every consumer claims directly: a binder beside them would race their binds.
    if settings.leader_election && settings.mode != Mode::Optimistic {
        let binder = Binder::new(
            pool,
            metrics.clone(),
            settings.processing_interval,
            settings.max_wait,
        )
        .events(ClaimEvents::new(client, identity));
        builder = builder.leader_only("claim-binder", move |lead: LeaderContext| {
            binder.clone().run_term(lead.term, lead.state, lead.token)
        });
    }
    let runtime = builder.build()?;
    Ok((runtime, metrics))
}
