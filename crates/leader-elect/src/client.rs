//! The Kubernetes client, the first reads of the Lease, and identity / namespace defaults.

use std::time::Duration;

use std::path::PathBuf;

use anyhow::Context;
use leaderelection::{Config, Denied, KubeLeaseLock, LeaseLock, LockError};
use leaderelection_controller::kubeconfig::{ClientOptions, Cluster, ClusterError};
use leaderelection_controller::settings::Environment;
use tokio_util::sync::CancellationToken;

use crate::failure::Failure;

/// Where the API server is and with which credentials, by kubectl's rules: `--kubeconfig`, `--context`,
/// `--server` (over the kubeconfig's cluster URL only), else the in-cluster service account.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// API server URL (e.g. http://127.0.0.1:6443, as `fake-apiserver` prints). Replaces only the
    /// kubeconfig context's cluster URL: its credentials and CA are kept, as kubectl does; without a
    /// kubeconfig, no credentials. Default: the kubeconfig's, then the in-cluster service account.
    #[arg(long, env = "LEADER_ELECT_SERVER")]
    server: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config; none: the in-cluster service
    /// account).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context). Its namespace is the default
    /// namespace, as with kubectl.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

/// A client and where it goes.
pub(crate) struct Connection {
    /// Fit for the elector ([`KubeLeaseLock::client`]).
    pub(crate) client: kube::Client,
    cluster: Cluster,
}

// === impl ServerArgs ===

impl ServerArgs {
    /// Loads the kubeconfig (or the in-cluster configuration) and builds a client fit for the elector
    /// ([`KubeLeaseLock::client`]).
    ///
    /// # Errors
    ///
    /// A usage failure for a kubeconfig, context or `--server` that cannot be used; a runtime failure
    /// when nothing is configured at all or kube cannot build the client.
    pub(crate) async fn connect(&self) -> Result<Connection, Failure> {
        let options = ClientOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            server: self.server.clone(),
        };
        let cluster = options.load().await.map_err(|err| match err {
            ClusterError::NotConfigured(_) => Failure::Runtime(err.into()),
            err => Failure::Usage(err.into()),
        })?;
        let client = KubeLeaseLock::client(cluster.config.clone())
            .context("building the Kubernetes client")?;
        Ok(Connection { client, cluster })
    }
}

// === impl Connection ===

impl Connection {
    /// The namespace: `given` (a flag or the file), else the client configuration's
    /// ([`Cluster::namespace`]: one WARN when it is a guess).
    pub(crate) fn namespace(&self, given: Option<&str>, env: &Environment) -> String {
        self.cluster.namespace(given, env)
    }

    /// Where requests go, for messages.
    pub(crate) fn describe(&self) -> String {
        self.cluster.describe()
    }
}

/// The identity when nothing names one: the hostname plus a random suffix (unique per process), made a
/// valid object name ([`identity_for_host`]).
pub(crate) fn generated_identity() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: String = (0..5)
        .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rand::random_range(0..27)]))
        .collect();
    identity_for_host(&host, &suffix)
}

/// `<host>-<suffix>` as a DNS-1123 subdomain, the rule of object names: under `--coordinated` the identity
/// names the LeaseCandidate, and a hostname with capitals or `_` (allowed on many hosts) would make every
/// create fail. Each dot-separated label of `host` is lowercased, every character outside `[a-z0-9-]`
/// becomes `-`, and `-` is trimmed from both ends; empty labels are dropped; labels are cut to 63 bytes, the
/// last one to leave room for `-<suffix>`, and the whole to 253 bytes. A hostname already valid is kept
/// as it is; one with nothing left becomes `leader-elect`. `suffix` is lowercase alphanumeric.
fn identity_for_host(host: &str, suffix: &str) -> String {
    const LABEL_MAX: usize = 63;
    const NAME_MAX: usize = 253;
    let clean = |label: &str, max: usize| -> String {
        let mapped: String = label
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '-',
            })
            .collect();
        let trimmed = mapped.trim_matches('-');
        trimmed[..trimmed.len().min(max)]
            .trim_end_matches('-')
            .to_owned()
    };
    let mut labels: Vec<String> = host
        .split('.')
        .map(|label| clean(label, LABEL_MAX))
        .filter(|label| !label.is_empty())
        .collect();
    let room = LABEL_MAX - 1 - suffix.len();
    match labels.last_mut() {
        Some(last) => *last = clean(last, room),
        None => labels.push("leader-elect".to_owned()),
    }
    // Leading labels go first when the whole is too long (a hostname is at most 64 bytes on Linux).
    while labels.len() > 1
        && labels.iter().map(|l| l.len() + 1).sum::<usize>() + suffix.len() > NAME_MAX
    {
        labels.remove(0);
    }
    format!("{}-{suffix}", labels.join("."))
}

/// Reads the Lease once, turning the failures a user can act on into one clear line (`status`, `release`).
///
/// # Errors
///
/// A runtime failure when the API server cannot be reached, does not answer within 10 s, refuses the
/// read (401, 403 naming the verb and the resource) or answers with any other error.
pub(crate) async fn preflight(lock: &KubeLeaseLock, where_: &str) -> Result<(), Failure> {
    let timeout = Duration::from_secs(10);
    match read_lease(lock, where_, timeout).await {
        Read::Answered => Ok(()),
        Read::Refused(failure) => Err(failure),
        Read::Transient(reason) => Err(Failure::Runtime(anyhow::anyhow!(reason))),
    }
}

/// Reads the Lease until the API server answers (`run`).
///
/// An unreachable API server, a read that times out (the elector's request timeout), 408, 429 and 5xx are
/// transient (exiting would turn a short API outage into CrashLoopBackOff, with restart delays of up to
/// 5 minutes): the read is retried with jittered backoff from 200 ms up to the retry period, with one
/// WARN per failure streak and an INFO when the API server answers. Returns `Ok(())` at once when
/// `shutdown` is cancelled (the caller checks it).
///
/// # Errors
///
/// A runtime failure naming the verb and the resource for 401 Unauthorized, 403 Forbidden (RBAC) and any
/// other error answer.
///
/// # Cancel safety
///
/// Cancel safe: it only reads.
pub(crate) async fn await_api_server(
    lock: &KubeLeaseLock,
    where_: &str,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let lease = lock.describe();
    let max_delay = config.retry_period;
    let mut delay = INITIAL_DELAY.min(max_delay);
    let mut failures = 0_u32;
    let streak_start = std::time::Instant::now();
    loop {
        let read = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            read = read_lease(lock, where_, config.effective_request_timeout()) => read,
        };
        let reason = match read {
            Read::Answered => {
                if failures > 0 {
                    tracing::info!(
                        lease,
                        failures,
                        "the API server at {where_} answered after {}",
                        humantime::format_duration(round_ms(streak_start.elapsed()))
                    );
                }
                return Ok(());
            }
            Read::Refused(failure) => return Err(failure),
            Read::Transient(reason) => reason,
        };
        failures += 1;
        if failures == 1 {
            tracing::warn!(
                lease,
                "{reason}; retrying with backoff up to the retry period ({}) until it answers",
                humantime::format_duration(max_delay)
            );
        } else {
            tracing::debug!(lease, failures, "{reason}; retrying");
        }
        // Jittered in [delay / 2, delay]: candidates started together do not retry in step.
        let sleep = delay.mul_f64(rand::random_range(0.5..=1.0));
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(sleep) => {}
        }
        delay = (delay * 2).min(max_delay);
    }
}

/// The outcome of one read of the Lease.
enum Read {
    /// The API server answered: the Lease, or that it does not exist.
    Answered,
    /// An answer to act on, not to wait out (401, 403, another 4xx).
    Refused(Failure),
    /// No answer worth keeping (unreachable, timeout, 408, 429, 5xx), and why.
    Transient(String),
}

/// One GET of the Lease, bounded by `timeout`.
async fn read_lease(lock: &KubeLeaseLock, where_: &str, timeout: Duration) -> Read {
    let lease = lock.describe();
    let refused = |text: String| Read::Refused(Failure::Runtime(anyhow::anyhow!(text)));
    match tokio::time::timeout(timeout, lock.get()).await {
        Ok(Ok(_)) => Read::Answered,
        Ok(Err(LockError::Forbidden(message))) => refused(
            Denied {
                verb: "get",
                resource: "leases.coordination.k8s.io",
                object: format!("lease {lease}"),
                message,
                grant: "get, create, update, list, watch on coordination.k8s.io leases",
            }
            .to_string(),
        ),
        Ok(Err(LockError::Api {
            code: 401,
            reason,
            message,
        })) => refused(format!(
            "the API server at {where_} refused our credentials reading lease {lease} (verb get, \
             resource leases.coordination.k8s.io): 401 {reason}: {message}"
        )),
        Ok(Err(LockError::Api {
            code,
            reason,
            message,
        })) if code == 408 || code == 429 || code >= 500 => Read::Transient(format!(
            "the API server at {where_} answered {code} {reason}: {message}"
        )),
        Ok(Err(LockError::Transport(err))) => Read::Transient(format!(
            "cannot reach the API server at {where_}: {}",
            error_chain(&*err)
        )),
        Ok(Err(LockError::Timeout)) | Err(_) => Read::Transient(format!(
            "the API server at {where_} did not answer within {}",
            humantime::format_duration(timeout)
        )),
        Ok(Err(err)) => refused(format!(
            "reading lease {lease} (verb get, resource leases.coordination.k8s.io): {err}"
        )),
    }
}

/// First delay between reads of an API server that does not answer (doubling up to the retry period).
const INITIAL_DELAY: Duration = Duration::from_millis(200);

/// `d` rounded to whole milliseconds, for logs.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// An error and its sources on one line.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `identity` may name a LeaseCandidate, as the library checks it before registering one.
    #[tokio::test]
    async fn a_generated_identity_names_a_lease_candidate_whatever_the_hostname() {
        let client = KubeLeaseLock::client_for_url("http://127.0.0.1:1").unwrap();
        let long_label = "H".repeat(64);
        let many_labels = ["a"; 200].join(".");
        for (host, expected) in [
            ("pod-a", "pod-a-bcdfg"),
            ("node1.example.com", "node1.example.com-bcdfg"),
            ("My_Host", "my-host-bcdfg"),
            ("WORKSTATION.Corp_Net.", "workstation.corp-net-bcdfg"),
            ("-_-", "leader-elect-bcdfg"),
            ("", "leader-elect-bcdfg"),
            ("a..b", "a.b-bcdfg"),
            ("héte", "h-te-bcdfg"),
            (&long_label, &format!("{}-bcdfg", "h".repeat(57))),
        ] {
            assert_eq!(identity_for_host(host, "bcdfg"), expected, "{host:?}");
        }
        for host in [&long_label, &many_labels, "My_Host", "-_-", "x-.-y"] {
            let identity = identity_for_host(host, "bcdfg");
            let config = leaderelection::Config::new(identity.clone(), "l", "default");
            let candidate = leaderelection::Candidate::new(
                client.clone(),
                &config,
                leaderelection::CandidateConfig::new("1.0.0"),
            );
            assert!(candidate.is_ok(), "{host:?} -> {identity:?}: {candidate:?}");
        }
        let identity = generated_identity();
        let config = leaderelection::Config::new(identity.clone(), "l", "default");
        assert!(
            leaderelection::Candidate::new(
                client,
                &config,
                leaderelection::CandidateConfig::new("1.0.0")
            )
            .is_ok(),
            "{identity:?}"
        );
    }
}
