//! API warnings: the `Warning` response headers of kube-apiserver (RFC 9111 section 5.5, code 299, e.g.
//! `299 - "coordination.k8s.io/v1beta1 LeaseCandidate is deprecated in v1.36+, unavailable in v1.39+"`)
//! logged once per distinct text at WARN, as client-go's default warning handler writes them to stderr
//! (`k8s.io/client-go/rest/warnings.go`, deduplicated there too).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;

/// How many distinct warning texts are remembered; later new texts are logged at DEBUG only (a server
/// that makes up a new text for every request cannot grow the set without bound).
const REMEMBERED: usize = 256;

/// A [`tower::Layer`] that logs each distinct API warning once, at WARN. Clones share what was logged.
#[derive(Clone, Debug, Default)]
pub(crate) struct WarningLayer {
    logged: Arc<Mutex<HashSet<String>>>,
}

/// The service of [`WarningLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Warnings<S> {
    inner: S,
    logged: Arc<Mutex<HashSet<String>>>,
}

// === impl WarningLayer ===

impl<S> tower::Layer<S> for WarningLayer {
    type Service = Warnings<S>;

    fn layer(&self, inner: S) -> Warnings<S> {
        Warnings {
            inner,
            logged: self.logged.clone(),
        }
    }
}

// === impl Warnings ===

impl<S, Req, Body> tower::Service<http::Request<Req>> for Warnings<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let logged = self.logged.clone();
        self.inner
            .call(request)
            .map(move |result| {
                if let Ok(response) = &result {
                    for value in response.headers().get_all(http::header::WARNING) {
                        for text in texts(&String::from_utf8_lossy(value.as_bytes())) {
                            log_once(&logged, text);
                        }
                    }
                }
                result
            })
            .boxed()
    }
}

fn log_once(logged: &Mutex<HashSet<String>>, text: String) {
    let mut logged = logged.lock().unwrap_or_else(PoisonError::into_inner);
    if logged.contains(&text) {
        return;
    }
    if logged.len() >= REMEMBERED {
        tracing::debug!(warning = %text, "the API server warns");
        return;
    }
    tracing::warn!(warning = %text, "the API server warns: {text}");
    logged.insert(text);
}

/// The texts of the code-299 warnings in one `Warning` header value: `299 AGENT "TEXT" ["DATE"]`, several
/// separated by commas. A value that does not parse is taken whole (a proxy's own format); other codes are
/// skipped, as client-go does.
fn texts(value: &str) -> Vec<String> {
    let mut texts = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        let Some((code, text, after)) = one(rest) else {
            texts.push(rest.to_owned());
            break;
        };
        if code == "299" {
            texts.push(text);
        }
        rest = after.trim_start_matches([',', ' ']);
    }
    texts
}

/// `CODE AGENT "TEXT" ["DATE"]` at the start of `s`: the code, the unescaped text and what follows.
fn one(s: &str) -> Option<(&str, String, &str)> {
    let (code, rest) = s.split_once(' ')?;
    let (_agent, rest) = rest.trim_start().split_once(' ')?;
    let (text, mut rest) = quoted(rest.trim_start())?;
    if rest.trim_start().starts_with('"') {
        rest = quoted(rest.trim_start())?.1;
    }
    Some((code, text, rest))
}

/// A quoted-string at the start of `s` (backslash escapes), unescaped, and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut text = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?.1),
            '"' => return Some((text, &s[i + 2..])),
            c => text.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{KubeLeaseLock, LeaseLock};

    #[test]
    fn warning_header_values_give_their_299_texts() {
        let deprecated = "coordination.k8s.io/v1beta1 LeaseCandidate is deprecated in v1.36+, unavailable in v1.39+";
        assert_eq!(texts(&format!("299 - \"{deprecated}\"")), [deprecated]);
        assert_eq!(
            texts(
                r#"299 - "a, b", 199 proxy "other" "Sat, 06 Dec 2026 10:00:00 GMT", 299 - "c \"d\"""#
            ),
            ["a, b", "c \"d\""]
        );
        assert_eq!(texts("not a warning"), ["not a warning"]);
        assert_eq!(texts(""), Vec::<String>::new());
    }

    /// A log writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An HTTP server that answers every request with 404 and two `Warning` headers, one connection per
    /// request.
    async fn warning_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#;
                let response = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
                     Warning: 299 - \"LeaseCandidate is deprecated\"\r\n\
                     Warning: 299 - \"another, with a comma\"\r\n\
                     Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
            }
        });
        url
    }

    #[tokio::test]
    async fn each_distinct_api_warning_is_logged_once_at_warn() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let url = warning_server().await;
        let lock = KubeLeaseLock::new(KubeLeaseLock::client_for_url(&url).unwrap(), "ns", "l");
        for _ in 0..3 {
            assert!(lock.get().await.unwrap().is_none());
        }
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("API server warns"))
            .collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("LeaseCandidate is deprecated"),
            "{log}"
        );
        assert!(lines[1].contains("another, with a comma"), "{log}");
    }
}
