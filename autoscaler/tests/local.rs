//! The local-process scaler's loop on paused time: a request held at zero starts a replica
//! at once (the activator pokes the autoscaler) instead of at the next 2 s tick, and the
//! held request is answered 503 + Retry-After when the Service goes away.

use axum::body::Body;
use http::Request;
use sluice_autoscaler::LocalServices;
use sluice_core::topology::{Key, ScalingSpec, Service, Topology};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt as _;

fn topology() -> Topology {
    with_command(&["sleep", "30"], 0)
}

fn with_command(command: &[&str], initial_scale: u32) -> Topology {
    let mut t = Topology::default();
    let key = Key::new("default", "s");
    t.services.insert(
        key.clone(),
        Arc::new(Service {
            key,
            command: command.iter().map(|c| c.to_string()).collect(),
            env: vec![],
            readiness_path: None,
            container_concurrency: 0,
            timeout: Duration::from_secs(300),
            scaling: ScalingSpec {
                initial_scale,
                ..ScalingSpec::default()
            },
            address: "http://127.0.0.1:8080/default/services/s".parse().unwrap(),
            fingerprint: 1,
        }),
    );
    t
}

#[tokio::test(start_paused = true)]
async fn a_held_request_starts_a_replica_at_once_not_at_the_next_tick() {
    let services = LocalServices::new();
    // A replica that never listens: it stays "starting".
    services.apply(&topology());
    // The first tick (at once) decides zero.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(services.stats()[0].actual, 0);
    assert_eq!(services.stats()[0].desired, 0);

    let held = tokio::spawn(
        services.router().oneshot(
            Request::post("/default/services/s")
                .body(Body::from("{}"))
                .unwrap(),
        ),
    );
    let t0 = Instant::now();
    loop {
        let st = services.stats()[0].clone();
        if st.actual == 1 {
            assert_eq!(st.queued, 1, "the request is held meanwhile");
            break;
        }
        assert!(
            t0.elapsed() < ScalingSpec::default().tick,
            "no replica before the next tick: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );

    // The Service goes away: the held request is answered at once, retryably.
    services.apply(&Topology::default());
    let resp = held.await.unwrap().unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    services.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_exits_is_reported_with_its_exit_status() {
    let services = LocalServices::new();
    services.apply(&with_command(&["sh", "-c", "exit 3"], 1));
    let deadline = Instant::now() + Duration::from_secs(30);
    let problem = loop {
        if let Some(p) = services.stats()[0].problem.clone() {
            break p;
        }
        assert!(Instant::now() < deadline, "no problem reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        problem.contains("(`sh -c exit 3`) exited on its own (exit status: 3)"),
        "{problem}"
    );
    services.shutdown().await;
}

#[tokio::test]
async fn a_command_that_cannot_start_is_reported() {
    let services = LocalServices::new();
    services.apply(&with_command(&["/nonexistent/fn"], 1));
    let deadline = Instant::now() + Duration::from_secs(30);
    let problem = loop {
        if let Some(p) = services.stats()[0].problem.clone() {
            break p;
        }
        assert!(Instant::now() < deadline, "no problem reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        problem.starts_with("cannot start `/nonexistent/fn`"),
        "{problem}"
    );
    services.shutdown().await;
}
