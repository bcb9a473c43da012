//! The `fake-apiserver` binary as a process: SIGTERM ends it while a watch is stalled by a black hole (it once
//! waited forever on that watch: the watch task waited for the fault to be lifted and for nothing else).
//!
//! The server is driven over plain HTTP/1.1 from the test, as the curl reproduction does: a watch on a
//! second listener, that listener black-holed, one Lease created through the default listener, the
//! watch's client gone, then SIGTERM.
//!
//! With `--tls` it serves HTTPS and writes a kubeconfig whose CA a kube client trusts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_fake-apiserver");

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

/// A liveness bound, not a figure: the exit takes milliseconds; a loaded machine must not fail the test.
const LIVENESS: Duration = Duration::from_secs(10);

/// The `fake-apiserver` binary on an ephemeral port, killed when dropped.
struct Apiserver {
    child: Child,
    /// `127.0.0.1:PORT` of the default listener.
    addr: String,
    /// Its stdout, kept open: it prints more lines, and a closed pipe would make that fail.
    _stdout: BufReader<ChildStdout>,
}

impl Apiserver {
    fn start() -> Self {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("fake API server listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Self {
            child,
            addr,
            _stdout: stdout,
        }
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request to `addr`; returns its connection once the head of the answer was read, and the head.
fn request(addr: &str, method: &str, target: &str, body: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIVENESS)).unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// A request answered with a JSON body of `Content-Length` bytes: the status line's code and the body.
fn call(addr: &str, method: &str, target: &str, body: &str) -> (u16, serde_json::Value) {
    let (mut stream, head) = request(addr, method, target, body);
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|n| n.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut json = vec![0; length];
    stream.read_exact(&mut json).unwrap();
    (code, serde_json::from_slice(&json).unwrap())
}

/// Black-holes a second listener with a watch open on it (with `query`), creates one Lease (one event,
/// that the watch takes and then holds), closes the watch's connection, sends SIGTERM, and asserts that the
/// process exits within [`LIVENESS`], printing how long it took.
fn exits_on_sigterm_with_a_black_holed_watch(query: &str) {
    let mut server = Apiserver::start();
    let (code, opened) = call(&server.addr, "POST", "/fake/listeners", "");
    assert_eq!(code, 201, "{opened}");
    let hole = opened["url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap()
        .to_owned();
    let (watch, head) = request(&hole, "GET", &format!("{LEASES}?watch=true{query}"), "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let faults = format!("/fake/listeners/{}/faults", opened["id"]);
    let (code, set) = call(&server.addr, "PUT", &faults, r#"{"black_hole":true}"#);
    assert_eq!((code, &set["black_hole"]), (200, &serde_json::json!(true)));
    let lease = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"x"}}"#;
    let (code, created) = call(&server.addr, "POST", LEASES, lease);
    assert_eq!(code, 201, "{created}");
    // The held watch cannot tell that it took the event (it is black-holed), so give it time to: without
    // this pause SIGTERM could come first and the test would miss the stall; with it or without it, a
    // server that ends a stalled watch on shutdown passes.
    std::thread::sleep(Duration::from_millis(500));
    drop(watch);

    let start = Instant::now();
    kill(
        Pid::from_raw(server.child.id().cast_signed()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > LIVENESS {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("exited after {:?}: {status:?}", start.elapsed());
    let status = status.unwrap_or_else(|| panic!("still running {LIVENESS:?} after SIGTERM"));
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_ends_the_apiserver_while_a_black_hole_stalls_a_watch() {
    exits_on_sigterm_with_a_black_holed_watch("");
}

#[test]
fn sigterm_ends_the_apiserver_while_a_black_hole_stalls_a_watch_with_bookmarks() {
    exits_on_sigterm_with_a_black_holed_watch("&allowWatchBookmarks=true");
}

/// `--tls`: the server speaks only TLS, with a certificate signed by the CA of the kubeconfig it writes, and
/// a client given that kubeconfig (as `KUBECONFIG`) reads and writes Leases; a plain-HTTP request gets no
/// HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_it_serves_https_and_writes_a_kubeconfig_that_trusts_its_ca() {
    let kubeconfig = std::env::temp_dir().join(format!(
        "fake-apiserver-binary-test-{}.kubeconfig",
        std::process::id()
    ));
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--tls", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = [String::new(), String::new()];
    for line in &mut lines {
        stdout.read_line(line).unwrap();
    }
    let addr = lines[0]
        .trim()
        .strip_prefix("fake API server listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {:?}", lines[0]))
        .to_owned();
    assert_eq!(
        lines[1].trim(),
        format!("kubeconfig written to {}", kubeconfig.display())
    );

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.cluster_url.to_string(), format!("https://{addr}/"));
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(
        leaderelection::KubeLeaseLock::client(config).unwrap(),
        "default",
    );
    let lease = serde_json::from_value(serde_json::json!({"metadata": {"name": "tls"}})).unwrap();
    leases
        .create(&kube::api::PostParams::default(), &lease)
        .await
        .unwrap();
    assert!(leases.get_opt("tls").await.unwrap().is_some());

    // Plain HTTP on the TLS port: the handshake fails and the connection closes without an HTTP answer. The
    // server may reset the connection before the request is written (seen once under load): then the write
    // fails, which is the same refusal.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(LIVENESS)).unwrap();
    let _ = write!(plain, "GET {LEASES} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&kubeconfig);
}
