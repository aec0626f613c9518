//! The ingress status matrix (SEMANTICS.md §2), driven through the router with `oneshot`.

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sluice_broker::{router, BrokerEntry, Ingress};
use sluice_channels::memory::MemoryChannel;
use sluice_channels::{Channel, Subscription, SubscriptionSpec};
use sluice_core::metrics::Metrics;
use sluice_core::topology::{Key, StartFrom};
use std::collections::HashMap;
use std::sync::Arc;
use tower::ServiceExt;

struct Fixture {
    ingress: Arc<Ingress>,
    sub: Box<dyn Subscription>,
    metrics: Arc<Metrics>,
}

async fn fixture(capacity: usize, max_body: usize) -> Fixture {
    let metrics = Arc::new(Metrics::new());
    let ingress = Arc::new(Ingress::new(metrics.clone(), max_body));
    let channel = Arc::new(MemoryChannel::new(capacity));
    let sub = channel
        .subscribe(SubscriptionSpec {
            id: "t".into(),
            start_from: StartFrom::Latest,
            ordered: false,
        })
        .await
        .unwrap();
    let key = Key::new("ns", "default");
    let mut brokers = HashMap::new();
    brokers.insert(key.clone(), BrokerEntry::new(&key, channel, &metrics));
    ingress.set_brokers(brokers);
    Fixture {
        ingress,
        sub,
        metrics,
    }
}

fn binary(path: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/s")
        .header("ce-type", "t")
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let resp = router(f.ingress.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn status_matrix() {
    let f = fixture(100, 1024).await;
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (binary("/ns/default").body(Body::empty()).unwrap(), StatusCode::ACCEPTED, ""),
        (
            Request::builder().method(Method::POST).uri("/ns/default")
                .header("content-type", "application/cloudevents+json")
                .body(Body::from(r#"{"specversion":"1.0","id":"2","source":"/s","type":"t"}"#)).unwrap(),
            StatusCode::ACCEPTED, "",
        ),
        (
            Request::builder().method(Method::POST).uri("/ns/default")
                .header("content-type", "application/cloudevents-batch+json")
                .body(Body::from(r#"[{"specversion":"1.0","id":"3","source":"/s","type":"t"},{"specversion":"0.3","id":"4","source":"/s","type":"t"}]"#)).unwrap(),
            StatusCode::ACCEPTED, "",
        ),
        (binary("/ns/nope").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND, "no broker ns/nope"),
        (binary("/").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND, "POST events to"),
        (binary("/ns").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST, "must be /<namespace>/<broker>"),
        (binary("/a/b/c").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST, "must be /<namespace>/<broker>"),
        (
            Request::builder().method(Method::GET).uri("/ns/default").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED, "method GET",
        ),
        (
            Request::builder().method(Method::POST).uri("/ns/default").body(Body::from("hello")).unwrap(),
            StatusCode::BAD_REQUEST, "not a CloudEvent",
        ),
        (
            Request::builder().method(Method::POST).uri("/ns/default")
                .header("ce-specversion", "1.0").header("ce-id", "1").header("ce-type", "t")
                .body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST, "missing required attribute `source`",
        ),
        (
            binary("/ns/default").header("ce-specversion", "2.0").body(Body::empty()).unwrap(),
            StatusCode::ACCEPTED, "", // header already set: first value wins
        ),
        (
            Request::builder().method(Method::POST).uri("/ns/default")
                .header("ce-specversion", "9.9").header("ce-id", "1").header("ce-source", "s").header("ce-type", "t")
                .body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST, "unsupported specversion `9.9`",
        ),
        (
            Request::builder().method(Method::POST).uri("/ns/default")
                .header("content-type", "application/cloudevents+json")
                .body(Body::from(r#"{"specversion":"1.0","id":"2""#)).unwrap(),
            StatusCode::BAD_REQUEST, "malformed structured event",
        ),
        (
            Request::builder().method(Method::POST).uri("/ns/default")
                .header("content-type", "application/cloudevents-batch+json")
                .body(Body::from(r#"[{"specversion":"1.0","id":"3","source":"/s","type":"t"},{"specversion":"1.0"}]"#)).unwrap(),
            StatusCode::BAD_REQUEST, "event 1 of the batch is invalid",
        ),
        (
            binary("/ns/default").header("ce-knativebrokerttl", "0").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST, "knativebrokerttl is 0",
        ),
        (
            binary("/ns/default").body(Body::from(vec![b'x'; 2048])).unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE, "1024-byte limit",
        ),
    ];
    for (req, want_status, want_body) in cases {
        let desc = format!("{} {}", req.method(), req.uri());
        let (status, headers, body) = send(&f, req).await;
        assert_eq!(status, want_status, "{desc}: {body}");
        if status.is_client_error() {
            assert_eq!(headers["content-type"], "application/json", "{desc}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                v["error"].as_str().unwrap().contains(want_body),
                "{desc}: {body}"
            );
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(headers["allow"], "POST, OPTIONS");
        }
    }
    let (status, headers, _) = send(
        &f,
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/ns/default")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["allow"], "POST, OPTIONS");

    let text = f.metrics.encode();
    assert!(
        text.contains(r#"sluice_events_accepted_total{namespace="ns",broker="default"} 5"#),
        "{text}"
    );
    assert!(text.contains(r#"reason="ttl_exhausted""#), "{text}");
}

#[tokio::test]
async fn stored_events_carry_ttl_arrival_time_and_passthrough_headers() {
    let mut f = fixture(100, 1024).await;
    let req = binary("/ns/default")
        .header("ce-time", "2024-01-01T10:00:00.5+09:00")
        .header("ce-knativebrokerttl", "7")
        .header("x-request-id", "abc")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("authorization", "Bearer secret")
        .header("content-type", "text/plain")
        .body(Body::from("hi"))
        .unwrap();
    assert_eq!(send(&f, req).await.0, StatusCode::ACCEPTED);
    let msg = f.sub.next().await.unwrap().unwrap();
    let env = msg.envelope.clone();
    msg.ack();
    assert_eq!(env.event.get_str("knativebrokerttl"), Some("6"));
    assert_eq!(
        env.event.get_str("time"),
        Some("2024-01-01T10:00:00.5+09:00")
    );
    let arrival = env.event.get_str("knativearrivaltime").unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(arrival).is_ok(),
        "{arrival}"
    );
    assert_eq!(env.event.data().unwrap().as_ref(), b"hi");
    let names: Vec<_> = env.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"x-request-id") && names.contains(&"traceparent"));
    assert!(!names.contains(&"authorization"));
}

#[tokio::test]
async fn full_channel_answers_503_with_retry_after() {
    let f = fixture(1, 1024).await;
    assert_eq!(
        send(&f, binary("/ns/default").body(Body::empty()).unwrap())
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let (status, headers, body) =
        send(&f, binary("/ns/default").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("full"), "{body}");
}
