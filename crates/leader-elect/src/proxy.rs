//! `run --fence`: the loopback Kubernetes API proxy that the child talks to, forwarding with leader-elect's
//! own client through the write gate of the child's term (`leaderelection::fencing::Fence`).
//!
//! Each term's child gets a kubeconfig of its own (`KUBECONFIG`): a server URL of this proxy with a random
//! token of that term as its path prefix, `http://127.0.0.1:<port>/term/<token>`, and nothing of
//! leader-elect's credentials. The token is in the path, not a bearer token, because client-go (kubectl,
//! Go clients) sends no credentials to a plain-HTTP server; clients take a server URL with a path prefix
//! as API servers behind proxies have it. A request is forwarded
//! through the gate of the term its token was given for: reads always pass; a mutating request outside
//! that term is answered 403 `Forbidden` (a Kubernetes `Status` naming the term) without reaching the API
//! server, and one in flight when the term ends is cancelled; the objects of JSON writes are stamped
//! with the term and the Lease. The tokens of ended terms stay known, so that a child that outlived its
//! term (frozen, or escaped from its process group) is told why; any other path is answered 401.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use leaderelection::fencing::{Fence, Fenced};
use tokio_util::sync::CancellationToken;

/// The path prefix of a term's token: `/term/<token>/`.
const TERM_PREFIX: &str = "/term/";

/// The largest request body forwarded, in bytes: kube-apiserver's own limit (`MaxRequestBodyBytes`, 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Headers that belong to one connection (RFC 9110, section 7.6.1) or to the proxy itself: never forwarded.
const NOT_FORWARDED: [HeaderName; 8] = [
    header::AUTHORIZATION,
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// The proxy: where it listens, the directory of the children's kubeconfigs, and the gated client of each
/// term's token. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FenceProxy {
    addr: SocketAddr,
    dir: Arc<KubeconfigDir>,
    client: kube::Client,
    terms: Arc<Mutex<HashMap<String, Gated>>>,
}

/// One term's client, gated by its fence.
#[derive(Clone)]
struct Gated {
    client: kube::Client,
    term: i32,
}

/// A private directory (mode 0700) of kubeconfigs (mode 0600), removed with everything in it when dropped.
#[derive(Debug)]
struct KubeconfigDir(PathBuf);

// === impl FenceProxy ===

impl FenceProxy {
    /// Listens on 127.0.0.1 at a port the kernel picks, forwarding with `client`; the returned future
    /// serves until `stop` is cancelled.
    ///
    /// # Errors
    ///
    /// The listening socket or the kubeconfig directory cannot be made.
    pub(crate) async fn bind(
        client: kube::Client,
        stop: CancellationToken,
    ) -> anyhow::Result<(Self, impl Future<Output = ()>)> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("--fence: listening on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let dir = std::env::temp_dir().join(format!("leader-elect-fence-{}", random_hex(8)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("--fence: creating {}", dir.display()))?;
        let proxy = Self {
            addr,
            dir: Arc::new(KubeconfigDir(dir)),
            client,
            terms: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        let serve = async move {
            // Not a graceful shutdown: a watch a leftover process keeps open must not hold up our exit.
            tokio::select! {
                served = axum::serve(listener, app).into_future() => if let Err(err) = served {
                    tracing::error!(%err, "--fence: the API proxy stopped");
                },
                () = stop.cancelled() => {}
            }
        };
        tracing::info!(%addr, "--fence: serving the child a Kubernetes API proxy");
        Ok((proxy, serve))
    }

    /// A kubeconfig for the child of `fence`'s term, written in the proxy's directory: its path.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub(crate) fn kubeconfig(&self, fence: &Fence) -> std::io::Result<PathBuf> {
        let term = fence.term().transitions;
        let token = random_hex(32);
        let path = self
            .dir
            .0
            .join(format!("term-{term}-{}.kubeconfig", random_hex(4)));
        write_private(
            &path,
            &kubeconfig(self.addr, &token, self.client.default_namespace()),
        )?;
        let gated = Gated {
            client: fence.client(&self.client),
            term,
        };
        self.terms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, gated);
        Ok(path)
    }

    /// The term of a request's path, `/term/<token>/<API path>`, and the API path with its query.
    fn gated(&self, uri: &Uri) -> Option<(Gated, String)> {
        let (token, path) = uri.path().strip_prefix(TERM_PREFIX)?.split_once('/')?;
        let terms = self.terms.lock().unwrap_or_else(PoisonError::into_inner);
        let gated = terms.get(token)?.clone();
        let query = uri
            .query()
            .map_or(String::new(), |query| format!("?{query}"));
        Some((gated, format!("/{path}{query}")))
    }
}

impl std::fmt::Debug for FenceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceProxy")
            .field("addr", &self.addr)
            .field("dir", &self.dir.0)
            .finish_non_exhaustive()
    }
}

// === impl KubeconfigDir ===

impl Drop for KubeconfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Forwards one request of a child through its term's gate.
async fn forward(State(proxy): State<FenceProxy>, request: Request) -> Response {
    let Some((gated, path)) = proxy.gated(request.uri()) else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "leader-elect --fence: not a path of a term's token (use the server of the KUBECONFIG \
             leader-elect set)",
        );
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(err) => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("leader-elect --fence: reading the request body: {err}"),
            );
        }
    };
    let mut forwarded = http::Request::builder()
        .method(parts.method.clone())
        .uri(path);
    for (name, value) in &parts.headers {
        if !NOT_FORWARDED.contains(name) {
            forwarded = forwarded.header(name, value);
        }
    }
    let forwarded = match forwarded.body(kube::client::Body::from(body.to_vec())) {
        Ok(forwarded) => forwarded,
        Err(err) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("leader-elect --fence: {err}"),
            );
        }
    };
    match gated.client.send(forwarded).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            parts.headers.remove(header::CONNECTION);
            parts.headers.remove(header::TRANSFER_ENCODING);
            Response::from_parts(parts, Body::new(body))
        }
        Err(err) => match Fenced::find(&err) {
            Some(fenced) => {
                tracing::warn!(event = "write_fenced", term = gated.term, method = %parts.method,
                    uri = %parts.uri, %fenced, "--fence: refused the child's write");
                status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!("leader-elect --fence: {fenced}"),
                )
            }
            None => status(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &format!("leader-elect --fence: forwarding to the API server: {err}"),
            ),
        },
    }
}

/// A Kubernetes `Status` answer, as kube-apiserver gives errors (what kubectl and client libraries show).
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// The child's kubeconfig: the proxy's URL with the term's token, in `namespace` by default.
fn kubeconfig(addr: SocketAddr, token: &str, namespace: &str) -> String {
    let namespace = serde_json::Value::from(namespace);
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: leader-elect\n  cluster:\n    server: http://{addr}{TERM_PREFIX}{token}\n\
         contexts:\n\
         - name: leader-elect\n  context:\n    cluster: leader-elect\n    namespace: {namespace}\n\
         current-context: leader-elect\n"
    )
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents.as_bytes())
}

/// `bytes` random bytes in hex.
fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
