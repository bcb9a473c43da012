//! `signals::Signals` with real signals raised to this test process (a test binary of its own, so that no
//! other test sees them). The tests take turns: a signal reaches every handler of the process.

use std::time::Duration;

use leaderelection_controller::signals::{Signals, SignalsError};

/// A liveness bound only: each step waits for a signal that was already sent.
const LIVENESS: Duration = Duration::from_secs(60);

/// One test at a time: a signal raised by one would reach the handlers of another.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn, then installs the handlers.
async fn take_turn() -> (tokio::sync::MutexGuard<'static, ()>, Signals) {
    let turn = TURN.lock().await;
    (turn, Signals::install().unwrap())
}

/// Sends `signal` (`"TERM"`, `"INT"`) to this process, as the kubelet or a terminal would.
fn raise(signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

#[tokio::test]
async fn the_first_signal_shuts_down_and_the_second_skips_the_grace() {
    let (_turn, signals) = take_turn().await;
    let (shutdown, skip_grace) = (signals.shutdown(), signals.skip_grace());
    let work = async {
        assert!(!shutdown.is_cancelled(), "shutdown before any signal");
        raise("TERM");
        shutdown.cancelled().await;
        assert!(
            !skip_grace.is_cancelled(),
            "the first signal skipped the grace"
        );
        raise("INT");
        skip_grace.cancelled().await;
        "the work's own output"
    };
    let output = tokio::time::timeout(LIVENESS, signals.run(work))
        .await
        .expect("both signals seen");
    assert_eq!(output, "the work's own output");
}

#[tokio::test]
async fn a_signal_before_run_is_kept_and_shuts_down() {
    let (_turn, signals) = take_turn().await;
    let shutdown = signals.shutdown();
    // As during start-up: the signal comes after `install`, before anything drives `run`.
    raise("TERM");
    tokio::time::timeout(LIVENESS, signals.run(shutdown.cancelled()))
        .await
        .expect("the early SIGTERM shut down");
}

#[tokio::test]
async fn run_or_abandon_stops_waiting_for_the_work_at_the_second_signal() {
    let (_turn, signals) = take_turn().await;
    let shutdown = signals.shutdown();
    // Work whose graceful stop never ends (a release that hangs, say).
    let work = async {
        raise("INT");
        shutdown.cancelled().await;
        raise("INT");
        std::future::pending::<()>().await;
    };
    let result = tokio::time::timeout(LIVENESS, signals.run_or_abandon(work))
        .await
        .expect("the second signal ended it");
    assert!(
        matches!(result, Err(SignalsError::SecondSignal)),
        "{result:?}"
    );
}

#[tokio::test]
async fn run_or_abandon_returns_the_output_of_work_that_stops_in_its_grace() {
    let (_turn, signals) = take_turn().await;
    let shutdown = signals.shutdown();
    let work = async {
        raise("TERM");
        shutdown.cancelled().await;
        7
    };
    let result = tokio::time::timeout(LIVENESS, signals.run_or_abandon(work))
        .await
        .expect("the work stopped");
    assert_eq!(result.unwrap(), 7);
}
