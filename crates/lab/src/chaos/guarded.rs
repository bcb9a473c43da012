//! The writing modes of `leader-elect-lab chaos` (`--mode fenced-writer`, `--mode direct-writer`): each
//! child also writes a guarded object (widget `default/chaos-guarded`, merge patches of an annotation) in
//! a loop, and the run counts the writes that were refused and the stale writes that landed.
//!
//! A write *landed stale* when the server applied it while the election's Lease no longer named its writer
//! in its term: another holder, a newer `leaseTransitions`, no holder, or no Lease. The harness judges it
//! from the server's own order of events: a watch of the election's Lease and one of the guarded object,
//! from before the first candidate starts, merged in resourceVersion order (the fake API server's
//! resourceVersion is global, as etcd's revision is).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use leaderelection::KubeLeaseLock;
use leaderelection::fencing::{FencingPolicy, LEASE_ANNOTATION, TERM_ANNOTATION};
use tokio_util::sync::CancellationToken;

/// The guarded object: a widget (a custom resource the lab's fake API server serves), in `default` beside
/// the election's Lease `demo`.
pub(crate) const GUARDED: &str = "chaos-guarded";
const GROUP: &str = "chaos.leaderelection.dev";
const VERSION: &str = "v1";
const KIND: &str = "Widget";
const PLURAL: &str = "widgets";
/// The annotation each write sets: `IDENTITY TERM INCARNATION SEQ`, unique per write.
const WRITTEN_BY: &str = "chaos.leaderelection.dev/written-by";
/// The election's Lease.
const ELECTION: &str = "demo";

/// The widgets' resource type, for the fake API server.
pub(crate) fn widgets() -> fake_apiserver::ResourceType {
    fake_apiserver::ResourceType::custom(GROUP, VERSION, KIND, PLURAL, true)
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// What the children do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Heartbeats to the work log only.
    #[default]
    Heartbeat,
    /// Heartbeats, and writes to the guarded object through `leader-elect run --fence`'s proxy (the
    /// write gate of the child's term; writes stamped by it).
    FencedWriter,
    /// Heartbeats, and writes to the guarded object straight to the API server with the term stamped by
    /// the child itself, as a child without `--fence` would (the baseline).
    DirectWriter,
}

/// A write's outcome, as the child saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    /// 403 from `--fence`'s proxy: the gate refused it (outside the term) or cancelled it in flight.
    Gate,
    /// 422 from the API server (an admission policy's denial).
    Server,
    /// Anything else (an injected fault, a timeout).
    Failed,
}

/// The writes of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Writes {
    /// Writes the children sent (or tried to).
    pub(crate) attempted: usize,
    /// Refused by the write gate (`--fence`'s proxy), without reaching the server or cancelled in flight.
    pub(crate) refused_by_gate: usize,
    /// Refused by the API server with 422 (an admission policy).
    pub(crate) refused_by_server: usize,
    /// Failed otherwise (faults, timeouts).
    pub(crate) failed: usize,
    /// Versions of the guarded object the server applied.
    pub(crate) landed: usize,
    /// Of those, applied while the Lease no longer named the writer in its term.
    pub(crate) landed_stale: usize,
    /// Whether the watch missed events (ended with an error it could not resume from): `landed` and
    /// `landed_stale` are then lower bounds.
    pub(crate) incomplete: bool,
}

/// One event of the namespace's Leases, as the watch delivered it.
#[derive(Clone, Debug)]
enum Seen {
    /// The election's Lease: its holder and term, `None` once deleted.
    Election(Option<(String, i32)>),
    /// A write of the guarded object that landed: its writer's identity and term.
    Guarded { identity: String, term: i32 },
}

// === impl Answer ===

impl Answer {
    fn of(result: &Result<DynamicObject, kube::Error>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("--fence") =>
            {
                Self::Gate
            }
            Err(kube::Error::Api(status)) if status.code == 422 => Self::Server,
            Err(_) => Self::Failed,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Gate => "gate",
            Self::Server => "server",
            Self::Failed => "failed",
        }
    }
}

/// The worker's writing loop: a merge patch of the guarded object every `period` until the process ends;
/// each outcome appended as a line to `answers`. `server`: the API server to write to directly, stamping
/// the term ourselves (`--mode direct-writer`); `None`: the kubeconfig of `$KUBECONFIG`, `--fence`'s proxy.
///
/// # Errors
///
/// The client cannot be built or the answers file not written.
pub(crate) async fn write_loop(
    server: Option<String>,
    identity: String,
    term: i64,
    incarnation: u64,
    answers: PathBuf,
    period: Duration,
) -> anyhow::Result<()> {
    let client = match &server {
        Some(url) => KubeLeaseLock::client_for_url(url)?,
        None => KubeLeaseLock::client(
            kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
                .await
                .context("reading $KUBECONFIG (--fence's proxy)")?,
        )?,
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource());
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&answers)
        .with_context(|| format!("opening {}", answers.display()))?;
    let mut ticks = tokio::time::interval(period);
    for seq in 0_u64.. {
        ticks.tick().await;
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            WRITTEN_BY.into(),
            format!("{identity} {term} {incarnation} {seq}").into(),
        );
        if server.is_some() {
            annotations.insert(TERM_ANNOTATION.into(), term.to_string().into());
            annotations.insert(
                LEASE_ANNOTATION.into(),
                format!("default/{ELECTION}").into(),
            );
        }
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        let result = api
            .patch(GUARDED, &PatchParams::default(), &Patch::Merge(patch))
            .await;
        // One write per line: O_APPEND makes it land whole at the end of the file.
        file.write_all(format!("{}\n", Answer::of(&result).word()).as_bytes())
            .context("writing the answers")?;
    }
    Ok(())
}

/// Installs the generated admission policy of the election's Lease (`--policy`), lenient, guarding the
/// widgets.
///
/// # Errors
///
/// The policy or its binding cannot be created.
pub(crate) async fn install_policy(client: kube::Client) -> anyhow::Result<()> {
    let (policy, binding) = FencingPolicy::new("default", ELECTION)
        .resource(format!("{GROUP}/{VERSION}/{PLURAL}").parse()?)
        .build()?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .context("creating the ValidatingAdmissionPolicy")?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client)
        .create(&PostParams::default(), &binding)
        .await
        .context("creating the ValidatingAdmissionPolicyBinding")?;
    Ok(())
}

/// Creates the guarded object, then watches it and the election's Lease until stopped.
pub(crate) struct Recorder {
    tasks: [tokio::task::JoinHandle<Watched>; 2],
    stop: CancellationToken,
}

/// What one watch saw: events with their resourceVersion, and whether it missed some.
type Watched = (Vec<(u64, Seen)>, bool);

// === impl Recorder ===

impl Recorder {
    /// Creates widget `default/chaos-guarded` and starts watching from that version.
    ///
    /// # Errors
    ///
    /// The guarded object cannot be created.
    pub(crate) async fn start(client: kube::Client) -> anyhow::Result<Self> {
        let widgets: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &resource());
        let created = widgets
            .create(
                &PostParams::default(),
                &DynamicObject::new(GUARDED, &resource()),
            )
            .await
            .context("creating the guarded object")?;
        let version = created.metadata.resource_version.unwrap_or_default();
        let leases: Api<Lease> = Api::namespaced(client, "default");
        let stop = CancellationToken::new();
        let tasks = [
            tokio::spawn(watch(leases, version.clone(), stop.clone(), Seen::election)),
            tokio::spawn(watch(widgets, version, stop.clone(), Seen::guarded)),
        ];
        Ok(Self { tasks, stop })
    }

    /// Stops watching; judges what was seen with the children's `answers` file.
    ///
    /// # Errors
    ///
    /// A watching task panicked.
    pub(crate) async fn finish(self, answers: &Path) -> anyhow::Result<Writes> {
        self.stop.cancel();
        let mut seen = Vec::new();
        let mut incomplete = false;
        for task in self.tasks {
            let (events, missed) = task.await.context("a watch of the guarded run")?;
            seen.extend(events);
            incomplete |= missed;
        }
        // One global resourceVersion: the order in which the server applied them.
        seen.sort_by_key(|(version, _)| *version);
        let seen: Vec<Seen> = seen.into_iter().map(|(_, event)| event).collect();
        let text = std::fs::read_to_string(answers).unwrap_or_default();
        let mut writes = judge(&seen);
        writes.incomplete = incomplete;
        for line in text.lines() {
            writes.attempted += 1;
            match line {
                "gate" => writes.refused_by_gate += 1,
                "server" => writes.refused_by_server += 1,
                "failed" => writes.failed += 1,
                _ => {}
            }
        }
        Ok(writes)
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

/// Watches `api` from `version` until `stop` (resuming when a watch ends), mapping each object (and
/// whether it was deleted) to what the judge needs.
async fn watch<K>(
    api: Api<K>,
    mut version: String,
    stop: CancellationToken,
    map: fn(&K, bool) -> Option<Seen>,
) -> Watched
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let mut seen = Vec::new();
    while !stop.is_cancelled() {
        let Ok(stream) = api.watch(&WatchParams::default(), &version).await else {
            return (seen, true);
        };
        let mut stream = stream.boxed();
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                event = stream.try_next() => event,
            };
            let (object, deleted) = match event {
                Ok(Some(WatchEvent::Added(object) | WatchEvent::Modified(object))) => {
                    (object, false)
                }
                Ok(Some(WatchEvent::Deleted(object))) => (object, true),
                Ok(Some(WatchEvent::Bookmark(bookmark))) => {
                    version = bookmark.metadata.resource_version;
                    continue;
                }
                // Ended: resumed from `version`.
                Ok(None) => break,
                Ok(Some(WatchEvent::Error(_))) | Err(_) => return (seen, true),
            };
            if let Some(at) = object.meta().resource_version.clone() {
                if let (Some(event), Ok(number)) = (map(&object, deleted), at.parse()) {
                    seen.push((number, event));
                }
                version = at;
            }
        }
    }
    (seen, false)
}

// === impl Seen ===

impl Seen {
    fn election(lease: &Lease, deleted: bool) -> Option<Self> {
        if lease.metadata.name.as_deref() != Some(ELECTION) {
            return None;
        }
        if deleted {
            return Some(Self::Election(None));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        Some(Self::Election(Some((
            spec.holder_identity.unwrap_or_default(),
            spec.lease_transitions.unwrap_or(0),
        ))))
    }

    fn guarded(widget: &DynamicObject, deleted: bool) -> Option<Self> {
        if deleted || widget.metadata.name.as_deref() != Some(GUARDED) {
            return None;
        }
        let written_by = widget.metadata.annotations.as_ref()?.get(WRITTEN_BY)?;
        let mut fields = written_by.split(' ');
        let identity = fields.next()?.to_owned();
        let term = fields.next()?.parse().ok()?;
        Some(Self::Guarded { identity, term })
    }
}

/// The guarded object's versions, each judged against the election's Lease as it was when it landed.
fn judge(seen: &[Seen]) -> Writes {
    let mut writes = Writes::default();
    let mut election: Option<(String, i32)> = None;
    for event in seen {
        match event {
            Seen::Election(now) => election.clone_from(now),
            Seen::Guarded { identity, term } => {
                writes.landed += 1;
                let current = election
                    .as_ref()
                    .is_some_and(|(holder, transitions)| holder == identity && transitions == term);
                if !current {
                    writes.landed_stale += 1;
                }
            }
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(identity: &str, term: i32) -> Seen {
        Seen::Guarded {
            identity: identity.into(),
            term,
        }
    }

    #[test]
    fn a_write_landing_after_the_lease_moved_on_is_stale() {
        let held = |holder: &str, term| Seen::Election(Some((holder.into(), term)));
        let seen = [
            held("a", 1),
            guarded("a", 1),
            held("a", 1),
            guarded("a", 1),
            // Taken over: a's late write is stale, b's is not.
            held("b", 2),
            guarded("a", 1),
            guarded("b", 2),
            // Released (no holder), then deleted: every write is stale.
            held("", 2),
            guarded("b", 2),
            Seen::Election(None),
            guarded("b", 2),
            // Recreated by a with leaseTransitions 0: a write of a's term 0 is current, b's is not.
            held("a", 0),
            guarded("a", 0),
            guarded("b", 2),
        ];
        let writes = judge(&seen);
        assert_eq!((writes.landed, writes.landed_stale), (8, 4));
    }
}
