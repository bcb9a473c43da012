//! The elector's kube [`Client`]: kube's own layer stack (base URI, authentication, extra headers, connect,
//! read and write timeouts, the TLS stack the crate's features choose) around a TCP connector with
//! `TCP_NODELAY` set, under a layer that keeps a spare connection beside the watches ([`super::spare`]) and
//! one that logs API warnings ([`super::warnings`]).
//!
//! kube 5 (`kube-client`'s `client/builder.rs`) builds its `HttpConnector` without `set_nodelay(true)`, so
//! every request is subject to Nagle's algorithm: a small write that follows unacknowledged data (the first
//! request after the client's TLS Finished, a PUT's body after its headers) waits for the server's delayed
//! ACK, about 40 ms on Linux. Measured against kube-apiserver 1.36 (issue 22): a graceful handover took
//! 60 ms with Nagle on and 18 ms with `TCP_NODELAY` forced onto the same binary; on the fake API server over
//! TLS, `tests/tls_handover.rs` (docs/design.md, "The client's connections").

use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Client;
use kube::client::{Body, ConfigExt};
use tower::{BoxError, ServiceBuilder};

use super::spare::SpareLayer;
use super::warnings::WarningLayer;

/// How long a pooled connection may stay idle before the client closes it: under kube-apiserver's 90 s
/// `IdleTimeout` (`staging/src/k8s.io/apiserver/pkg/server/secure_serving.go`), so the client never sends a
/// request on a connection the server is closing.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(85);

/// A kube [`Client`] from `config` (already made fit for an elector), with `TCP_NODELAY` on every connection.
///
/// As kube's `Client::try_from(config)` otherwise: TLS (rustls, else OpenSSL, as the features choose) with the configuration's CA, client
/// identity, server name and `accept_invalid_certs`; bearer, basic, exec and OIDC authentication; the
/// configuration's extra and impersonation headers; its connect, read and write timeouts. Not kept: kube's
/// `TraceLayer` (it logs every 5xx at ERROR, which the elector retries and reports on its own terms) and
/// [`Client::valid_until`] (the expiry of an exec plugin's client certificate, which kube leaves to the user to
/// check; the elector never did). A configuration with a `proxy_url` is built by kube itself: its proxy
/// support is a kube feature this crate does not enable, and kube's error says which.
///
/// # Errors
///
/// kube's, as `Client::try_from`: the authentication or TLS settings are unusable.
pub(crate) fn build(config: kube::Config) -> Result<Client, kube::Error> {
    if config.proxy_url.is_some() {
        return Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&WarningLayer::default())
            .build());
    }
    let mut tcp = HttpConnector::new();
    // `https://` URLs pass through to the TLS layer.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    // kube's precedence when several TLS stacks are enabled (`kube-client`'s `client/builder.rs`): rustls,
    // then OpenSSL; neither serves `http://` URLs only.
    #[cfg(feature = "rustls-tls")]
    let tls = config.rustls_https_connector_with_connector(tcp)?;
    #[cfg(all(not(feature = "rustls-tls"), feature = "openssl-tls"))]
    let tls = config.openssl_https_connector_with_connector(tcp)?;
    #[cfg(not(any(feature = "rustls-tls", feature = "openssl-tls")))]
    let tls = {
        if config.cluster_url.scheme() == Some(&http::uri::Scheme::HTTPS) {
            return Err(kube::Error::TlsRequired);
        }
        tcp
    };
    let mut connector = TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
    let service = ServiceBuilder::new()
        .layer(WarningLayer::default())
        .layer(SpareLayer)
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}
