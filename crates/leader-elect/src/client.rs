//! The Kubernetes client, and identity / namespace defaults.

use anyhow::Context;
use leaderelection::{KubeLeaseLock, LeaseLock, LockError};
use leaderelection_controller::settings::Environment;

use crate::Failure;

/// Where the API server is: `--server URL`, else the kubeconfig or the in-cluster service account.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// API server URL (e.g. http://127.0.0.1:6443, as `leader-elect apiserver` prints). Default: the
    /// kubeconfig ($KUBECONFIG, ~/.kube/config), then the in-cluster service account.
    #[arg(long, env = "LEADER_ELECT_SERVER")]
    pub(crate) server: Option<String>,
}

impl ServerArgs {
    /// A client without kube's own retries of 429/503 (the elector retries on its own schedule, bounded by
    /// its deadlines) and without a read timeout (watches are long; the elector bounds each request).
    pub(crate) async fn client(&self) -> Result<kube::Client, Failure> {
        let mut config = match &self.server {
            Some(url) => {
                let uri = url.parse().map_err(|e| {
                    Failure::Usage(anyhow::anyhow!("invalid --server \"{url}\": {e}"))
                })?;
                kube::Config::new(uri)
            }
            None => kube::Config::infer()
                .await
                .context("no --server, no usable kubeconfig and not in a cluster")?,
        };
        config.default_retry = false;
        config.read_timeout = None;
        config.connect_timeout = Some(std::time::Duration::from_secs(5));
        Ok(kube::Client::try_from(config).context("building the Kubernetes client")?)
    }
}

/// The namespace: the flag, then POD_NAMESPACE, the service-account namespace, then "default" (said so).
pub(crate) fn namespace(flag: Option<&str>, env: &Environment) -> String {
    if let Some(ns) = flag.or_else(|| env.namespace()) {
        return ns.to_owned();
    }
    tracing::warn!("no --namespace, POD_NAMESPACE or service-account namespace: using \"default\"");
    "default".to_owned()
}

/// The identity when nothing names one: the hostname plus a random suffix (unique per process).
pub(crate) fn generated_identity() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "leader-elect".into());
    let suffix: String = (0..5)
        .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rand::random_range(0..27)]))
        .collect();
    format!("{host}-{suffix}")
}

/// Reads the Lease once, turning the failures a user can act on into one clear line.
pub(crate) async fn preflight(lock: &KubeLeaseLock, server: &ServerArgs) -> Result<(), Failure> {
    let where_ = server.server.as_deref().unwrap_or("the configured cluster");
    match tokio::time::timeout(std::time::Duration::from_secs(10), lock.get()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(LockError::Forbidden(message))) => Err(Failure::Runtime(anyhow::anyhow!(
            "RBAC denies reading lease {}: {message} (grant get, create, update, list, watch on \
             coordination.k8s.io leases)",
            lock.describe()
        ))),
        Ok(Err(LockError::Transport(err))) => Err(Failure::Runtime(anyhow::anyhow!(
            "cannot reach the API server at {where_}: {}",
            error_chain(&*err)
        ))),
        Ok(Err(err)) => Err(Failure::Runtime(anyhow::anyhow!(
            "reading lease {}: {err}",
            lock.describe()
        ))),
        Err(_) => Err(Failure::Runtime(anyhow::anyhow!(
            "the API server at {where_} did not answer within 10s"
        ))),
    }
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
