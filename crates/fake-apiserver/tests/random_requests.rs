//! Random requests (methods, paths, query strings, content types, bodies) to the fake API server, over
//! raw HTTP/1.1: it never stops answering, every rejection is a kube `Status` carrying the HTTP code, and
//! a stored Lease is unchanged by every rejected request.

use std::net::SocketAddr;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

/// A raw request: the status code and the body of its answer.
async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the server answers")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let status_line = String::from_utf8_lossy(&raw[..split]).to_string();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    (code, raw[split + 4..].to_vec())
}

fn arb_method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("PATCH"),
        Just("DELETE"),
        Just("OPTIONS"),
        Just("HEAD"),
        Just("FROB"),
    ]
}

fn arb_target() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        Just(LEASES.to_owned()),
        Just(format!("{LEASES}/keep")),
        Just(format!("{LEASES}/keep/status")),
        Just(format!("{LEASES}/Not_A_Name")),
        Just("/apis/coordination.k8s.io/v1/leases".to_owned()),
        Just("/apis/coordination.k8s.io/v2/namespaces/default/leases".to_owned()),
        Just("/api/v1/namespaces/default".to_owned()),
        Just("/apis/nope.example/v1/things".to_owned()),
        "/[a-z0-9/._-]{0,40}",
    ];
    let query = prop_oneof![
        Just(String::new()),
        Just("?dryRun=All".to_owned()),
        Just("?fieldValidation=Strict".to_owned()),
        Just("?labelSelector=a%3Db".to_owned()),
        Just("?fieldSelector=metadata.name%3Dkeep".to_owned()),
        Just("?labelSelector=%3D%3D%3D".to_owned()),
        Just("?resourceVersion=abc".to_owned()),
        "\\?[a-zA-Z=&%0-9]{0,20}",
    ];
    (path, query).prop_map(|(p, q)| format!("{p}{q}"))
}

fn arb_content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("application/merge-patch+json")),
        Just(Some("application/strategic-merge-patch+json")),
        Just(Some("application/json-patch+json")),
        Just(Some("application/apply-patch+yaml")),
        Just(Some("text/plain")),
    ]
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    let lease = (
        prop_oneof![Just("keep"), Just("other"), Just(""), Just("BAD")],
        prop_oneof![
            Just(json!(null)),
            Just(json!(-1)),
            Just(json!(15)),
            Just(json!("15")),
            Just(json!(i64::MAX)),
        ],
        prop_oneof![
            Just(json!(null)),
            Just(json!("2026-05-01T12:00:00.000000Z")),
            Just(json!("2026-05-01T12:00:00Z")),
            Just(json!("yesterday")),
        ],
        prop_oneof![Just(None), Just(Some("1")), Just(Some("999999"))],
    )
        .prop_map(|(name, duration, renew, rv)| {
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name},
                "spec": {"holderIdentity": "x", "leaseDurationSeconds": duration, "renewTime": renew},
            });
            if let Some(rv) = rv {
                lease["metadata"]["resourceVersion"] = json!(rv);
            }
            serde_json::to_vec(&lease).unwrap()
        });
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(b"{\"metadata\":".to_vec()),
        Just(b"[1,2,3]".to_vec()),
        lease,
    ]
}

#[test]
fn random_requests_get_status_answers_and_leave_the_stored_lease_alone() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(FakeApiServer::start()).unwrap();
    let addr = server.addr();
    let get_keep = || async move {
        let (code, body) = send(addr, "GET", &format!("{LEASES}/keep"), None, b"").await;
        (code == 200).then(|| serde_json::from_slice::<Value>(&body).unwrap())
    };
    let keep = json!({"metadata": {"name": "keep"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
    let (created, _) = runtime.block_on(send(
        addr,
        "POST",
        LEASES,
        Some("application/json"),
        &serde_json::to_vec(&keep).unwrap(),
    ));
    assert_eq!(created, 201);

    // A fixed seed: the same 300 requests on every run (the distribution checked below stays put).
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 300,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = (arb_method(), arb_target(), arb_content_type(), arb_body());
    let codes = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(&strategy, |(method, target, content_type, body)| {
        runtime.block_on(async {
            let before = get_keep().await;
            let (code, answer) = send(addr, method, &target, content_type, &body).await;
            let after = get_keep().await;
            *codes.lock().unwrap().entry(code).or_default() += 1;
            if code >= 400 && method != "HEAD" {
                let status: Value = serde_json::from_slice(&answer).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{method} {target}: {code} without a Status ({e}): {}",
                        String::from_utf8_lossy(&answer)
                    ))
                })?;
                prop_assert_eq!(&status["kind"], "Status", "{} {}", method, target);
                prop_assert_eq!(&status["code"], code, "{} {}", method, target);
                prop_assert_eq!(
                    &after,
                    &before,
                    "{} {} was refused ({}) but changed the Lease",
                    method,
                    target,
                    code
                );
            }
            if after.is_none() {
                // A successful delete: put it back for the next case.
                let (code, _) = send(
                    addr,
                    "POST",
                    LEASES,
                    Some("application/json"),
                    &serde_json::to_vec(&keep).unwrap(),
                )
                .await;
                prop_assert_eq!(code, 201);
            }
            Ok(())
        })
    });
    runtime.block_on(server.shutdown());
    if let Err(err) = result {
        panic!("{err}");
    }
    // The requests reach the routes: some succeed, and most are refused, with many different codes.
    let codes = codes.into_inner().unwrap();
    println!("answers by code: {codes:?}");
    let refused: usize = codes.range(400..).map(|(_, n)| n).sum();
    assert!(codes.range(200..300).count() > 0, "{codes:?}");
    assert!(refused > 100, "{codes:?}");
    assert!(codes.range(400..).count() >= 4, "{codes:?}");
}
