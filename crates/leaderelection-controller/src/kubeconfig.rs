//! Where the API server is, with which credentials, and which namespace is the default, by kubectl's
//! rules: `--kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`), `--context` (else the kubeconfig's
//! `current-context`), `--server` over the kubeconfig's cluster URL only (its credentials and CA are kept),
//! the in-cluster service account when there is no kubeconfig.
//!
//! The namespace, when the caller names none (`-n`, a file): `POD_NAMESPACE` (the downward API), then the
//! kubeconfig context's `namespace` (`"default"` for a context without one, as kubectl), then, without a
//! kubeconfig, the service-account namespace; only when none of these exists is `"default"` a guess
//! ([`Namespace::is_guess`]), which the caller should say once.
//!
//! ```no_run
//! use leaderelection_controller::kubeconfig::ClientOptions;
//! use leaderelection_controller::settings::Environment;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let options = ClientOptions { context: Some("team-a".into()), ..ClientOptions::default() };
//! let cluster = options.load().await?;
//! let namespace = cluster.default_namespace(&Environment::from_process());
//! let client = leaderelection::KubeLeaseLock::client(cluster.config)?;
//! # let _ = (namespace, client); Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::settings::{DEFAULT_NAMESPACE, Environment};

/// What the user chose (`--kubeconfig`, `--context`, `--server`); every field optional, as in kubectl.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// The kubeconfig file (kubectl `--kubeconfig`); `None`: `$KUBECONFIG` (a `:`-separated list, merged;
    /// missing files skipped), else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (kubectl `--context`); `None`: the kubeconfig's `current-context`.
    pub context: Option<String>,
    /// The API server URL (kubectl `--server`): replaces the context's cluster URL and nothing else; without
    /// a kubeconfig, a client without credentials.
    pub server: Option<String>,
}

/// A client configuration and where it came from.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// kube's configuration (give it to [`leaderelection::KubeLeaseLock::client`]).
    pub config: kube::Config,
    /// Where it came from.
    pub origin: Origin,
}

/// Where a [`Cluster`]'s configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A kubeconfig's context (its cluster URL replaced if `server` was given).
    Kubeconfig {
        /// The context's name.
        context: String,
        /// The context's `namespace`, if it has one.
        namespace: Option<String>,
    },
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
    /// `server` alone, without a kubeconfig: no credentials.
    Server,
}

/// The namespace to use when the caller names none, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace.
    pub name: String,
    /// Where it came from, for logs: `POD_NAMESPACE`, `kubeconfig context "team-a"`, ...
    pub source: String,
}

/// Why no client configuration could be made. The messages name what failed; the cause is the
/// [`std::error::Error::source`] (a report of the chain says each once).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A kubeconfig file could not be read or parsed.
    #[error("kubeconfig {path}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// kube's error.
        #[source]
        source: KubeconfigError,
    },
    /// The context (given or current) is missing from the kubeconfig, or its cluster or user is broken.
    #[error("kubeconfig context {context:?}")]
    Context {
        /// The context's name.
        context: String,
        /// kube's error.
        #[source]
        source: KubeconfigError,
    },
    /// A context was asked for but there is no kubeconfig, or it has no current context.
    #[error(
        "--context {context:?}: no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) to take it from"
    )]
    NoKubeconfig {
        /// The context asked for.
        context: String,
    },
    /// `server` is not a URL.
    #[error("invalid --server {url:?}")]
    InvalidServer {
        /// The value given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// No server, no kubeconfig, and not in a cluster.
    #[error(
        "no --server, no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a cluster"
    )]
    NotConfigured(#[source] kube::config::InClusterError),
}

// === impl ClientOptions ===

impl ClientOptions {
    /// The client configuration, as kubectl would make it: the kubeconfig's context when there is a
    /// kubeconfig (with `server` as its cluster URL, if given), else `server` alone, else the in-cluster
    /// service account.
    ///
    /// # Errors
    ///
    /// [`ClusterError`]: an unreadable or malformed kubeconfig (`kubeconfig` given and missing included),
    /// an unknown or broken context, a `context` without a kubeconfig, a `server` that is not a URL, or
    /// nothing configured at all.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads files.
    pub async fn load(&self) -> Result<Cluster, ClusterError> {
        let server = self
            .server
            .as_deref()
            .map(|url| {
                url.parse::<http::Uri>()
                    .map_err(|source| ClusterError::InvalidServer {
                        url: url.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        let kubeconfig = self.read()?;
        let context = self
            .context
            .clone()
            .or_else(|| kubeconfig.as_ref()?.current_context.clone());
        match (kubeconfig, context) {
            (Some(kubeconfig), Some(context)) => {
                let namespace = kubeconfig
                    .contexts
                    .iter()
                    .find(|c| c.name == context)
                    .and_then(|c| c.context.as_ref()?.namespace.clone())
                    .filter(|ns| !ns.is_empty());
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..KubeConfigOptions::default()
                };
                let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|source| ClusterError::Context {
                        context: context.clone(),
                        source,
                    })?;
                if let Some(url) = server {
                    config.cluster_url = url;
                }
                Ok(Cluster {
                    config,
                    origin: Origin::Kubeconfig { context, namespace },
                })
            }
            (_, Some(context)) => Err(ClusterError::NoKubeconfig { context }),
            (_, None) => match server {
                Some(url) => Ok(Cluster {
                    config: kube::Config::new(url),
                    origin: Origin::Server,
                }),
                None => Ok(Cluster {
                    config: kube::Config::incluster().map_err(ClusterError::NotConfigured)?,
                    origin: Origin::InCluster,
                }),
            },
        }
    }

    /// The kubeconfig: `kubeconfig` (which must exist), else the files of `$KUBECONFIG` that exist,
    /// merged in order (kubectl's rule: the first to set a value wins), else `~/.kube/config` if it
    /// exists; `None` when there is none.
    fn read(&self) -> Result<Option<Kubeconfig>, ClusterError> {
        let read = |path: &Path| {
            Kubeconfig::read_from(path).map_err(|source| ClusterError::Read {
                path: path.to_owned(),
                source,
            })
        };
        if let Some(path) = &self.kubeconfig {
            return read(path).map(Some);
        }
        let paths: Vec<PathBuf> = match std::env::var_os("KUBECONFIG") {
            Some(list) if !list.is_empty() => std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            _ => std::env::var_os("HOME")
                .map(|home| Path::new(&home).join(".kube").join("config"))
                .into_iter()
                .collect(),
        };
        let mut merged: Option<Kubeconfig> = None;
        for path in paths.iter().filter(|p| p.exists()) {
            let next = read(path)?;
            merged = Some(match merged {
                None => next,
                Some(first) => first.merge(next).map_err(|source| ClusterError::Read {
                    path: path.clone(),
                    source,
                })?,
            });
        }
        Ok(merged)
    }
}

// === impl Cluster ===

impl Cluster {
    /// The namespace when the caller names none: `POD_NAMESPACE`; the kubeconfig context's namespace
    /// (`"default"` for a context without one, as kubectl); without a kubeconfig, the service-account
    /// namespace; else [`DEFAULT_NAMESPACE`], a guess ([`Namespace::is_guess`]).
    #[must_use]
    pub fn default_namespace(&self, env: &Environment) -> Namespace {
        let found = |name: &str, source: String| Namespace {
            name: name.to_owned(),
            source,
        };
        if let Some(ns) = &env.pod_namespace {
            return found(ns, "POD_NAMESPACE".into());
        }
        match &self.origin {
            Origin::Kubeconfig {
                context,
                namespace: Some(ns),
            } => found(ns, format!("kubeconfig context {context:?}")),
            Origin::Kubeconfig {
                context,
                namespace: None,
            } => found(
                DEFAULT_NAMESPACE,
                format!(
                    "kubeconfig context {context:?}, which names no namespace (kubectl's default)"
                ),
            ),
            Origin::InCluster | Origin::Server => match &env.service_account_namespace {
                Some(ns) => found(ns, "the service-account namespace".into()),
                None => found(DEFAULT_NAMESPACE, GUESSED.into()),
            },
        }
    }

    /// The namespace: `given` (a flag, a settings file) if any, else [`Cluster::default_namespace`]; a
    /// guess is logged as a WARN (once per call: call it once).
    #[must_use]
    pub fn namespace(&self, given: Option<&str>, env: &Environment) -> String {
        if let Some(ns) = given {
            return ns.to_owned();
        }
        let ns = self.default_namespace(env);
        if ns.is_guess() {
            tracing::warn!(
                "no --namespace, POD_NAMESPACE, kubeconfig context namespace or service-account namespace: \
                 using {:?}",
                ns.name
            );
        } else {
            tracing::debug!(namespace = ns.name, "namespace from {}", ns.source);
        }
        ns.name
    }

    /// Where requests go, for messages: `http://127.0.0.1:6443 (kubeconfig context "team-a")`.
    #[must_use]
    pub fn describe(&self) -> String {
        // As the user wrote it: `http://127.0.0.1:6443`, not `http::Uri`'s `http://127.0.0.1:6443/`.
        let url = self.config.cluster_url.to_string();
        let url = url.strip_suffix('/').unwrap_or(&url);
        match &self.origin {
            Origin::Kubeconfig { context, .. } => format!("{url} (kubeconfig context {context:?})"),
            Origin::InCluster => format!("{url} (in-cluster service account)"),
            Origin::Server => url.to_string(),
        }
    }
}

/// [`Namespace::source`] of a guess.
const GUESSED: &str = "a guess: no POD_NAMESPACE, kubeconfig or service-account namespace";

// === impl Namespace ===

impl Namespace {
    /// Whether nothing named the namespace ([`DEFAULT_NAMESPACE`] by default): worth one warning.
    #[must_use]
    pub fn is_guess(&self) -> bool {
        self.source == GUESSED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pod_namespace: Option<&str>, service_account: Option<&str>) -> Environment {
        Environment {
            pod_name: None,
            pod_namespace: pod_namespace.map(str::to_owned),
            service_account_namespace: service_account.map(str::to_owned),
        }
    }

    fn cluster(origin: Origin) -> Cluster {
        Cluster {
            config: kube::Config::new("http://127.0.0.1:1".parse().unwrap()),
            origin,
        }
    }

    #[test]
    fn the_namespace_comes_from_pod_namespace_the_context_then_the_service_account() {
        let context = |ns: Option<&str>| {
            cluster(Origin::Kubeconfig {
                context: "a".into(),
                namespace: ns.map(str::to_owned),
            })
        };
        let cases = [
            (
                context(Some("team-a")),
                env(Some("pod-ns"), Some("sa")),
                "pod-ns",
                false,
            ),
            (
                context(Some("team-a")),
                env(None, Some("sa")),
                "team-a",
                false,
            ),
            // A context without a namespace means "default" to kubectl: not a guess, and the
            // service account of some other cluster does not count.
            (context(None), env(None, Some("sa")), "default", false),
            (
                cluster(Origin::InCluster),
                env(None, Some("sa")),
                "sa",
                false,
            ),
            (cluster(Origin::Server), env(None, None), "default", true),
            (cluster(Origin::InCluster), env(None, None), "default", true),
        ];
        for (cluster, env, name, guess) in cases {
            let ns = cluster.default_namespace(&env);
            assert_eq!(
                (ns.name.as_str(), ns.is_guess()),
                (name, guess),
                "{cluster:?} {env:?}"
            );
        }
    }
}
