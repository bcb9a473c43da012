//! The `machine_controller` example on fake-apiserver: its `Machine` controller ensures each machine's
//! claim without waiting, and a coordinator replica (leader-elected binder) binds it; the controller
//! learns the host only from the claim's watch (its requeue of a pending claim is an hour), and writes it
//! into the machine's status. A machine no host fits waits (`Unsatisfiable`) until a host joins.

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/machine_controller.rs"]
pub mod example;

use std::time::Duration;

use claim_coordinator::provider::Claim as _;
use claim_coordinator::resources::{
    GROUP, Hardware, HostClaim, HostState, PhysicalHost, PhysicalHostSpec, PhysicalHostStatus,
    VERSION,
};
use claim_coordinator::{Claimer, Host as _, Metrics, Mode, Settings, coordinator};
use example::{Context, Machine, MachineSpec, MachineStatus};
use fake_apiserver::{FakeApiServer, ResourceType};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use leaderelection::KubeLeaseLock;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Bound on every wait: generous, for a loaded machine; the waits end as soon as the fact holds.
const BOUND: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "default";

/// Creates an `Available`, ready host with `cpu_cores` cores.
async fn add_host(hosts: &Api<PhysicalHost>, name: &str, cpu_cores: u32) {
    let host = PhysicalHost {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: PhysicalHostSpec::default(),
        status: None,
    };
    let mut created = hosts.create(&PostParams::default(), &host).await.unwrap();
    created.status = Some(PhysicalHostStatus {
        state: HostState::Available,
        ready: true,
        hardware: Hardware {
            cpu_cores,
            memory_gib: 64,
        },
        error_message: None,
    });
    hosts
        .replace_status(name, &PostParams::default(), &created)
        .await
        .unwrap();
}

/// Creates a machine needing `min_cpu_cores` cores.
async fn add_machine(machines: &Api<Machine>, name: &str, min_cpu_cores: u32) -> Machine {
    let spec = MachineSpec {
        image_url: "http://images/os.iso".into(),
        min_cpu_cores,
    };
    machines
        .create(&PostParams::default(), &Machine::new(name, spec))
        .await
        .unwrap()
}

/// Waits (up to [`BOUND`]) until machine `name`'s status satisfies `done`; returns it.
async fn wait_for_status(
    machines: &Api<Machine>,
    name: &str,
    done: impl Fn(&MachineStatus) -> bool,
) -> MachineStatus {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let status = machines.get(name).await.unwrap().status;
        if let Some(status) = status.filter(|s| done(s)) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "machine {name}: status {status:?} after {BOUND:?}",
            status = machines.get(name).await.unwrap().status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_machine_gets_its_host_through_the_claims_watch() {
    let mut builder = FakeApiServer::builder();
    for (group, version, kind, plural) in [
        (GROUP, VERSION, "PhysicalHost", "physicalhosts"),
        (GROUP, VERSION, "HostClaim", "hostclaims"),
        (
            "example.claims.leaderelection.dev",
            "v1alpha1",
            "Machine",
            "machines",
        ),
    ] {
        builder = builder.custom_resource(ResourceType::custom(group, version, kind, plural, true));
    }
    let server = builder.start().await.unwrap();
    let client = KubeLeaseLock::client_for_url(&server.url()).unwrap();
    let hosts: Api<PhysicalHost> = Api::namespaced(client.clone(), NAMESPACE);
    let machines: Api<Machine> = Api::namespaced(client.clone(), NAMESPACE);
    let claims: Api<HostClaim> = Api::namespaced(client.clone(), NAMESPACE);
    add_host(&hosts, "h-small", 4).await;
    add_host(&hosts, "h-big", 16).await;

    let shutdown = CancellationToken::new();
    // A coordinator replica: elected, its binder binds the pending claims.
    let settings = Settings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(250),
        processing_interval: Duration::from_millis(200),
        ..Settings::default()
    };
    let (replica, _) = coordinator::replica(
        client.clone(),
        &settings,
        "coordinator-0",
        NAMESPACE,
        Registry::default(),
        None,
    )
    .unwrap();
    let replica = tokio::spawn(replica.run(shutdown.clone()));
    // The example's controller; mode `leader`: only the binder binds, and a pending machine is looked at
    // again only when its claim changes (the requeue is an hour).
    let claimer = Claimer::new(
        client.clone(),
        NAMESPACE,
        "machine-controller",
        &Settings {
            mode: Mode::Leader,
            ..settings
        },
        Metrics::new(&mut Registry::default()),
    );
    let context = Context {
        claimer,
        machines: machines.clone(),
        pending_requeue: Duration::from_secs(3600),
        retry_after: Duration::from_millis(100),
    };
    let controller = tokio::spawn(example::controller(context, shutdown.clone()));

    let machine = add_machine(&machines, "m-1", 8).await;
    let status = wait_for_status(&machines, "m-1", |s| s.phase == "Bound").await;
    assert_eq!(status.host.as_deref(), Some("h-big"), "{status:?}");
    // The claim is the machine's (its owner, the controller) and the host names the claim.
    let claim = claims.get("m-1").await.unwrap();
    let owner = &claim.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Machine", machine.uid().unwrap().as_str(), Some(true))
    );
    assert_eq!(claim.host_ref(), Some("h-big"));
    assert!(hosts.get("h-big").await.unwrap().is_consumed_by(&claim));

    // No host has 32 cores: the machine waits, with the binder's reason, until one joins.
    add_machine(&machines, "m-2", 32).await;
    let status = wait_for_status(&machines, "m-2", |s| s.reason == "Unsatisfiable").await;
    assert_eq!((status.phase.as_str(), status.host), ("Pending", None));
    add_host(&hosts, "h-huge", 64).await;
    let status = wait_for_status(&machines, "m-2", |s| s.phase == "Bound").await;
    assert_eq!(status.host.as_deref(), Some("h-huge"), "{status:?}");
    assert!(
        hosts
            .get("h-huge")
            .await
            .unwrap()
            .is_consumed_by(&claims.get("m-2").await.unwrap())
    );
    assert!(hosts.get("h-small").await.unwrap().is_available());

    shutdown.cancel();
    controller.await.unwrap();
    replica.await.unwrap().unwrap();
    server.shutdown().await;
}
