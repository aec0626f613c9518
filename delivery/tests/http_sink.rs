//! Delivery against real HTTP sinks on loopback: retries, dead letters, timeouts, headers.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use sluice_core::delivery::Endpoint;
use sluice_core::delivery::{BackoffPolicy, DeliveryPolicy, Format};
use sluice_core::{Envelope, Event, SpecVersion};
use sluice_delivery::{Delivered, Request, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

fn endpoint(s: &str) -> Endpoint {
    Endpoint::new(Url::parse(s).unwrap()).unwrap()
}

#[derive(Default)]
struct Sink {
    /// Statuses to answer, in order; after the script runs out, 200.
    script: Mutex<Vec<u16>>,
    received: Mutex<Vec<(HeaderMap, Bytes)>>,
    delay: Option<Duration>,
}

async fn handle(State(s): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    s.received.lock().unwrap().push((headers, body));
    if let Some(d) = s.delay {
        tokio::time::sleep(d).await;
    }
    let status = {
        let mut script = s.script.lock().unwrap();
        if script.is_empty() {
            200
        } else {
            script.remove(0)
        }
    };
    let body = if status < 300 { "" } else { "sink says no" };
    (StatusCode::from_u16(status).unwrap(), body)
}

async fn start(script: Vec<u16>, delay: Option<Duration>) -> (Endpoint, Arc<Sink>) {
    let sink = Arc::new(Sink {
        script: Mutex::new(script),
        delay,
        ..Default::default()
    });
    let app = Router::new()
        .route("/", post(handle))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint(&format!("http://{addr}/")), sink)
}

fn policy(retry: u32, dls: Option<Endpoint>) -> DeliveryPolicy {
    DeliveryPolicy {
        retry,
        backoff_policy: BackoffPolicy::Linear,
        backoff_delay: Duration::from_millis(5),
        dead_letter_sink: dls,
        ..DeliveryPolicy::default()
    }
}

fn envelope() -> Envelope {
    let mut e = Event::new(SpecVersion::V10, "id-1", "/src", "com.example.t");
    e.set("myext", "v a");
    e.set_data(Bytes::from_static(b"{\"x\":1}"), false);
    e.set("datacontenttype", "application/json");
    Envelope::with_headers(e, vec![("x-request-id".into(), "req-9".into())])
}

#[tokio::test]
async fn retries_until_the_sink_recovers() {
    let (url, sink) = start(vec![503, 500, 429], None).await;
    let env = envelope();
    let p = policy(3, None);
    let report = Sender::new()
        .deliver(Request {
            url: &url,
            envelope: &env,
            policy: &p,
            namespace: Some("team-a"),
        })
        .await;
    assert_eq!(report.result, Delivered::Ok { reply: None });
    assert_eq!(report.attempts, 4);
    let got = sink.received.lock().unwrap();
    assert_eq!(got.len(), 4);
    let (h, body) = &got[3];
    assert_eq!(h["ce-id"], "id-1");
    assert_eq!(h["ce-myext"], "v%20a");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["prefer"], "reply");
    assert_eq!(h["kn-namespace"], "team-a");
    assert_eq!(h["x-request-id"], "req-9");
    assert_eq!(body.as_ref(), b"{\"x\":1}");
}

#[tokio::test]
async fn exhausted_retries_go_to_the_dead_letter_sink_with_error_extensions() {
    let (url, sink) = start(vec![503; 10], None).await;
    let (dls, dead) = start(vec![], None).await;
    let env = envelope();
    let p = policy(2, Some(dls));
    let report = Sender::new()
        .deliver(Request {
            url: &url,
            envelope: &env,
            policy: &p,
            namespace: None,
        })
        .await;
    assert!(
        matches!(report.result, Delivered::DeadLettered { .. }),
        "{report:?}"
    );
    assert_eq!(report.attempts, 3);
    assert_eq!(sink.received.lock().unwrap().len(), 3);
    let dead = dead.received.lock().unwrap();
    assert_eq!(dead.len(), 1);
    let (h, body) = &dead[0];
    assert_eq!(h["ce-id"], "id-1");
    assert_eq!(h["ce-knativeerrordest"], url.as_str());
    assert_eq!(h["ce-knativeerrorcode"], "503");
    // base64("sink says no")
    assert_eq!(h["ce-knativeerrordata"], "c2luayBzYXlzIG5v");
    assert_eq!(body.as_ref(), b"{\"x\":1}");
}

#[tokio::test]
async fn terminal_status_skips_retries() {
    let (url, sink) = start(vec![400], None).await;
    let env = envelope();
    let p = policy(5, None);
    let report = Sender::new()
        .deliver(Request {
            url: &url,
            envelope: &env,
            policy: &p,
            namespace: None,
        })
        .await;
    match report.result {
        Delivered::Dropped { last } => assert_eq!(last.status, Some(400)),
        r => panic!("{r:?}"),
    }
    assert_eq!(sink.received.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn timeout_and_unreachable_sinks_are_retryable_and_dead_lettered_without_a_code() {
    let (slow, _) = start(vec![], Some(Duration::from_secs(30))).await;
    let (dls, dead) = start(vec![], None).await;
    let env = envelope();
    let mut p = policy(1, Some(dls.clone()));
    p.timeout = Duration::from_millis(100);
    let report = Sender::new()
        .deliver(Request {
            url: &slow,
            envelope: &env,
            policy: &p,
            namespace: None,
        })
        .await;
    assert!(matches!(report.result, Delivered::DeadLettered { .. }));
    assert_eq!(report.attempts, 2);
    {
        let dead = dead.received.lock().unwrap();
        assert!(!dead[0].0.contains_key("ce-knativeerrorcode"));
        assert!(!dead[0].0.contains_key("ce-knativeerrordata"));
    }

    // Nothing listens on this port (bound, then closed).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = endpoint(&format!("http://{}/", l.local_addr().unwrap()));
    drop(l);
    let report = Sender::new()
        .deliver(Request {
            url: &gone,
            envelope: &env,
            policy: &p,
            namespace: None,
        })
        .await;
    match report.result {
        Delivered::DeadLettered { last } => {
            assert_eq!(last.status, None);
            assert!(last.reason.contains("connect"), "{}", last.reason);
        }
        r => panic!("{r:?}"),
    }
}

#[tokio::test]
async fn structured_format_when_asked() {
    let (url, sink) = start(vec![], None).await;
    let env = envelope();
    let mut p = policy(0, None);
    p.format = Format::Json;
    Sender::new()
        .deliver(Request {
            url: &url,
            envelope: &env,
            policy: &p,
            namespace: None,
        })
        .await;
    let got = sink.received.lock().unwrap();
    let (h, body) = &got[0];
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    let back = sluice_core::http::decode_structured(body).unwrap();
    assert_eq!(back, env.event);
}
