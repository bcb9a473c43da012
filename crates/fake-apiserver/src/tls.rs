//! TLS for the listeners ([`crate::Builder::tls`]): a CA and a serving certificate generated at start, and
//! the kubeconfig that trusts the CA.
//!
//! kube-apiserver serves only TLS; over it a client's first request on a new connection costs a handshake,
//! and a request after a resumed handshake is held by Nagle's algorithm until the server's delayed ACK
//! unless the client sets `TCP_NODELAY` (issue 22). Plain HTTP hides both, so the benchmarks run over TLS.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its handshake before the connection is closed (kube-apiserver's Go
/// server bounds a request's headers, the handshake included, by its `ReadHeaderTimeout`; a few seconds is
/// plenty on loopback).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS: its acceptor and the CA that signed its certificate.
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    /// The CA certificate, PEM: what a client trusts.
    pub(crate) ca_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Why no TLS configuration could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("generating the fake API server's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("configuring TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<TlsError> for std::io::Error {
    fn from(err: TlsError) -> Self {
        std::io::Error::other(err)
    }
}

impl Tls {
    /// A fresh CA (ECDSA P-256) and a serving certificate it signs for `localhost`, `127.0.0.1`, `::1` and
    /// `listen_ip` (when it is none of those and not unspecified), offering HTTP/1.1 by ALPN.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when key generation, signing or rustls rejects them (none is expected).
    pub(crate) fn generate(listen_ip: IpAddr) -> Result<Self, TlsError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "fake-apiserver CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;

        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
            names.push(listen_ip.to_string());
        }
        let mut serving = CertificateParams::new(names)?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "fake-apiserver");
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![serving_cert.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der())),
            )?;
        // The server speaks HTTP/1.1 only (hyper's http1 connection).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session tickets: rustls sends them after the client's Finished, which acknowledges it at once.
        // Go's crypto/tls (kube-apiserver) sends its tickets with its own Finished and nothing after the
        // client's, so a client's first request, written after its Finished, waits for the server's delayed
        // ACK unless the client sets TCP_NODELAY. Without tickets the fake does the same (and every
        // connection makes a full handshake: it never resumes).
        config.send_tls13_tickets = 0;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca_pem: ca.pem(),
        })
    }
}

/// A kubeconfig for `server` (a base URL), trusting `ca_pem` when given, with no credentials (the fake
/// API server authenticates no one): cluster, user and context all named `fake-apiserver`.
pub(crate) fn kubeconfig(server: &str, ca_pem: Option<&str>) -> String {
    let ca = ca_pem
        .map(|pem| {
            format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: fake-apiserver\n  \
           cluster:\n    \
             server: {server}\n\
         {ca}\
         users:\n\
         - name: fake-apiserver\n  \
           user: {{}}\n\
         contexts:\n\
         - name: fake-apiserver\n  \
           context:\n    \
             cluster: fake-apiserver\n    \
             user: fake-apiserver\n\
         current-context: fake-apiserver\n"
    )
}
