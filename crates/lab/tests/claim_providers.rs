//! The seam to a provider's types (issue 23 items 1 and 6): a host kind shaped like Metal3's
//! `BareMetalHost` (`spec.consumerRef` as a `corev1.ObjectReference`, `spec.image.url`,
//! `status.provisioning.state`, the annotation `baremetalhost.metal3.io/paused`, `status.errorMessage`,
//! `status.operationalStatus`), bound and released through the [`Host`] trait against the fake API server;
//! and claims in tenant namespaces getting hosts from a pool namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use claim_coordinator::provider::{Claim as _, Host};
use claim_coordinator::resources::{
    ConsumerRef, Hardware, HostClaim, HostClaimSpec, PhysicalHost, Unavailable,
};
use claim_coordinator::{Binder, Claimer, Metrics, Mode, Pool, Settings};
use fake_apiserver::{FakeApiServer, ResourceType};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{CustomResource, ResourceExt};
use leaderelection::KubeLeaseLock;
use leaderelection_lab::claim_sim::{HostPlan, current_term as term, fake_resource_types};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

const POOL: &str = "metal3-pool";
const PAUSED: &str = "baremetalhost.metal3.io/paused";

/// A host kind shaped like Metal3's `BareMetalHost` (the fields the binder needs, with Metal3's names).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "metal3.io",
    version = "v1alpha1",
    kind = "BareMetalHost",
    plural = "baremetalhosts",
    namespaced,
    status = "BareMetalHostStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalHostSpec {
    /// The consumer, a `corev1.ObjectReference` (all fields optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consumer_ref: Option<ObjectReference>,
    /// The image to provision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<Image>,
    /// Powered on.
    #[serde(default)]
    online: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct Image {
    url: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
/// What the baremetal-operator observes.
pub struct BareMetalHostStatus {
    #[serde(default)]
    provisioning: Provisioning,
    #[serde(default)]
    error_message: String,
    #[serde(default)]
    operational_status: String,
    #[serde(default)]
    hardware: Option<HardwareDetails>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct Provisioning {
    #[serde(default)]
    state: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct HardwareDetails {
    cpu: Cpu,
    ram_mebibytes: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct Cpu {
    count: u32,
}

/// The baremetal-operator owns the status: the binder writes the spec only (the default
/// `set_claimed_state`), as CAPM3 does.
impl Host for BareMetalHost {
    fn consumer(&self) -> Option<ConsumerRef> {
        self.spec.consumer_ref.as_ref().map(|r| ConsumerRef {
            api_version: r.api_version.clone().unwrap_or_default(),
            kind: r.kind.clone().unwrap_or_default(),
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone().unwrap_or_default(),
            uid: r.uid.clone().unwrap_or_default(),
        })
    }

    fn set_consumer(&mut self, consumer: Option<ConsumerRef>, image: Option<String>) {
        self.spec.consumer_ref = consumer.map(|c| ObjectReference {
            api_version: Some(c.api_version),
            kind: Some(c.kind),
            namespace: Some(c.namespace),
            name: Some(c.name),
            uid: Some(c.uid),
            ..ObjectReference::default()
        });
        self.spec.online = image.is_some();
        self.spec.image = image.map(|url| Image { url });
    }

    fn skip(&self) -> Option<Unavailable> {
        if self.annotations().contains_key(PAUSED) {
            return Some(Unavailable::Paused);
        }
        let Some(status) = &self.status else {
            return Some(Unavailable::NotAvailable(None));
        };
        if !status.error_message.is_empty() {
            return Some(Unavailable::Erroring(status.error_message.clone()));
        }
        if status.operational_status != "OK" {
            return Some(Unavailable::Unhealthy);
        }
        if status.provisioning.state != "available" {
            return Some(Unavailable::NotAvailable(Some(
                status.provisioning.state.clone(),
            )));
        }
        None
    }

    fn capacity(&self) -> Hardware {
        let hardware = self
            .status
            .as_ref()
            .and_then(|s| s.hardware.clone())
            .unwrap_or_default();
        Hardware {
            cpu_cores: hardware.cpu.count,
            memory_gib: hardware.ram_mebibytes / 1024,
        }
    }
}

async fn server() -> (FakeApiServer, kube::Client) {
    let mut builder = FakeApiServer::builder().custom_resource(ResourceType::custom(
        "metal3.io",
        "v1alpha1",
        "BareMetalHost",
        "baremetalhosts",
        true,
    ));
    for rt in fake_resource_types() {
        builder = builder.custom_resource(rt);
    }
    let server = builder.start().await.unwrap();
    let client = KubeLeaseLock::client_for_url(&server.url()).unwrap();
    (server, client)
}

/// A BareMetalHost in the pool namespace with `labels`, `cpus` cores, in provisioning `state`, changed by
/// `tweak` before its status is written.
async fn add_bmh(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
    cpus: u32,
    tweak: impl FnOnce(&mut BareMetalHost),
) -> BareMetalHost {
    let api: Api<BareMetalHost> = Api::namespaced(client.clone(), POOL);
    let mut host = BareMetalHost::new(name, BareMetalHostSpec::default());
    host.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    host.status = Some(BareMetalHostStatus {
        provisioning: Provisioning {
            state: "available".into(),
        },
        operational_status: "OK".into(),
        hardware: Some(HardwareDetails {
            cpu: Cpu { count: cpus },
            ram_mebibytes: 64 * 1024,
        }),
        ..BareMetalHostStatus::default()
    });
    tweak(&mut host);
    let mut created = api.create(&PostParams::default(), &host).await.unwrap();
    created.status = host.status;
    api.replace_status(name, &PostParams::default(), &created)
        .await
        .unwrap()
}

fn metrics() -> Metrics {
    Metrics::new(&mut Registry::default())
}

/// The binder, generic over the host kind, binds a claim of a tenant namespace to a `BareMetalHost` of the
/// pool namespace through [`Host`]: it skips the paused, erroring, unhealthy and provisioned hosts, writes
/// `spec.consumerRef` and `spec.image` (one PUT, no `/status` write: that status is the
/// baremetal-operator's), never touches the host a `Metal3Machine` consumes, and frees its host when the
/// claim is deleted.
#[tokio::test]
async fn a_metal3_shaped_host_kind_is_bound_through_the_traits() {
    let (server, client) = server().await;
    let gpu = [("gpu", "a100")];
    add_bmh(&client, "bmh-paused", &gpu, 32, |h| {
        h.annotations_mut().insert(PAUSED.into(), String::new());
    })
    .await;
    add_bmh(&client, "bmh-erroring", &gpu, 32, |h| {
        h.status.as_mut().unwrap().error_message = "BMC unreachable".into();
    })
    .await;
    add_bmh(&client, "bmh-unhealthy", &gpu, 32, |h| {
        h.status.as_mut().unwrap().operational_status = "error".into();
    })
    .await;
    let machine = ConsumerRef {
        api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
        kind: "Metal3Machine".into(),
        namespace: POOL.into(),
        name: "m-1".into(),
        uid: "uid-of-a-machine".into(),
    };
    let provisioned = add_bmh(&client, "bmh-provisioned", &gpu, 32, |h| {
        h.set_consumer(Some(machine.clone()), Some("http://images/m.iso".into()));
        h.status.as_mut().unwrap().provisioning.state = "provisioned".into();
    })
    .await;
    add_bmh(&client, "bmh-small", &gpu, 8, |_| {}).await;
    add_bmh(&client, "bmh-gpu", &gpu, 32, |_| {}).await;
    add_bmh(&client, "bmh-plain", &[], 32, |_| {}).await;

    let claims: Api<HostClaim> = Api::namespaced(client.clone(), "tenant-a");
    let spec = HostClaimSpec {
        image_url: "http://images/tenant.iso".into(),
        required_tags: vec!["gpu".into()],
        min_cpu_cores: 16,
        ..HostClaimSpec::default()
    };
    claims
        .create(
            &PostParams::default(),
            &HostClaim::with_release_finalizer("c-1", spec),
        )
        .await
        .unwrap();

    let pool: Pool<BareMetalHost, HostClaim> =
        Pool::with_namespaces(client.clone(), POOL, None, "leader");
    let binder = Binder::new(
        pool,
        metrics(),
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    let (fence, _state) = term(3);
    server.reset_counts();
    let report = binder.batch(&fence).await.unwrap();
    assert_eq!(report.bound, 1);

    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), POOL);
    let claim = claims.get("c-1").await.unwrap();
    assert_eq!(claim.host_ref(), Some("bmh-gpu"));
    let host = hosts.get("bmh-gpu").await.unwrap();
    assert_eq!(host.consumer(), Some(claim.consumer_ref()));
    assert_eq!(host.consumer().unwrap().namespace, "tenant-a");
    assert_eq!(
        host.spec.image.as_ref().map(|i| i.url.as_str()),
        Some("http://images/tenant.iso")
    );
    // The status stays the operator's: one PUT on the host (its spec), none on its /status.
    let host_writes: Vec<_> = server
        .request_log()
        .into_iter()
        .filter(|r| r.resource == "baremetalhosts" && r.verb == "update")
        .map(|r| r.name)
        .collect();
    assert_eq!(host_writes, [Some("bmh-gpu".to_owned())]);
    assert_eq!(host.status.unwrap().provisioning.state, "available");

    claims
        .delete("c-1", &DeleteParams::default())
        .await
        .unwrap();
    binder.batch(&fence).await.unwrap();
    assert!(claims.get_opt("c-1").await.unwrap().is_none());
    let freed = hosts.get("bmh-gpu").await.unwrap();
    assert!(freed.is_available(), "{freed:?}");
    assert!(freed.spec.image.is_none());
    let untouched = hosts.get("bmh-provisioned").await.unwrap();
    assert_eq!(untouched.consumer(), Some(machine));
    assert_eq!(untouched.resource_version(), provisioned.resource_version());
    server.shutdown().await;
}

/// Claims in two tenant namespaces get hosts of the pool namespace from one binder reading claims across
/// namespaces; a consumer in a third tenant namespace claims directly (optimistic mode) from the same pool.
#[tokio::test]
async fn a_claim_in_a_tenant_namespace_gets_a_host_from_the_pool_namespace() {
    let (server, client) = server().await;
    let hosts: Api<PhysicalHost> = Api::namespaced(client.clone(), "pool");
    for i in 0..3 {
        let plan = HostPlan {
            name: format!("h-{i}"),
            tags: BTreeMap::new(),
            cpu_cores: 8,
            memory_gib: 64,
        };
        leaderelection_lab::claim_sim::create_host(&hosts, &plan)
            .await
            .unwrap();
    }
    let simple = HostClaimSpec {
        image_url: "http://images/os.iso".into(),
        ..HostClaimSpec::default()
    };
    for tenant in ["tenant-a", "tenant-b"] {
        let claims: Api<HostClaim> = Api::namespaced(client.clone(), tenant);
        claims
            .create(
                &PostParams::default(),
                &HostClaim::with_release_finalizer("web", simple.clone()),
            )
            .await
            .unwrap();
    }
    let pool: Pool = Pool::with_namespaces(client.clone(), "pool", None, "leader");
    let binder = Binder::new(
        pool,
        metrics(),
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    let (fence, _state) = term(1);
    assert_eq!(binder.batch(&fence).await.unwrap().bound, 2);
    let mut taken = BTreeMap::new();
    for tenant in ["tenant-a", "tenant-b"] {
        let claims: Api<HostClaim> = Api::namespaced(client.clone(), tenant);
        let claim = claims.get("web").await.unwrap();
        let host = hosts.get(claim.host_ref().unwrap()).await.unwrap();
        assert_eq!(host.consumer().unwrap().namespace, tenant);
        assert!(host.is_consumed_by(&claim));
        taken.insert(host.name_any(), tenant);
    }
    assert_eq!(taken.len(), 2);

    let settings = Settings {
        mode: Mode::Optimistic,
        ..Settings::default()
    };
    let claimer: Claimer = Claimer::with_pool(
        Pool::with_namespaces(client.clone(), "pool", Some("tenant-c"), "consumer-c"),
        KubeLeaseLock::new(client.clone(), "pool", &settings.lease_name),
        &settings,
        metrics(),
    );
    let host = claimer
        .claim("web", simple, &CancellationToken::new())
        .await
        .unwrap();
    assert!(!taken.contains_key(&host), "{host} given twice");
    let claim: HostClaim = Api::namespaced(client.clone(), "tenant-c")
        .get("web")
        .await
        .unwrap();
    assert_eq!(claim.host_ref(), Some(host.as_str()));
    assert_eq!(
        hosts
            .get(&host)
            .await
            .unwrap()
            .consumer()
            .unwrap()
            .namespace,
        "tenant-c"
    );
    // The consumer's release frees its host, in the pool namespace.
    claimer.release("web").await.unwrap();
    assert!(hosts.get(&host).await.unwrap().is_available());
    server.shutdown().await;
}
