//! OIDC at the ingress (SEMANTICS.md §11), through the router with `oneshot`: 401 without a
//! token or with a bad one (with `WWW-Authenticate`), 403 when no EventPolicy allows, 202
//! when one does; nothing refused is stored.

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sluice_auth::testing::TestIssuer;
use sluice_auth::{DefaultMode, FileJwks, Verifier};
use sluice_broker::{router, AuthGate, BrokerEntry, Ingress};
use sluice_channels::memory::MemoryChannel;
use sluice_channels::{Channel, Subscription, SubscriptionSpec};
use sluice_core::metrics::Metrics;
use sluice_core::topology::{EventFilter, EventPolicy, Key, ObjectRef, StartFrom, Topology};
use sluice_core::Event;
use std::collections::HashMap;
use std::sync::Arc;
use tower::ServiceExt;

const AUD: &str = "eventing.knative.dev/broker/ns/default";
const SENDER: &str = "system:serviceaccount:ns:sender";

#[derive(Debug)]
struct TypeIs(&'static str);
impl EventFilter for TypeIs {
    fn matches(&self, event: &Event) -> bool {
        event.ty() == self.0
    }
}

struct Fixture {
    ingress: Arc<Ingress>,
    sub: Box<dyn Subscription>,
    issuer: TestIssuer,
}

async fn fixture(mode: DefaultMode, policies: Vec<EventPolicy>) -> Fixture {
    let issuer = TestIssuer::new("https://issuer.test", "k1");
    let dir = std::env::temp_dir().join(format!("sluice-broker-oidc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("jwks-{}.json", fastrand_suffix()));
    std::fs::write(&path, issuer.jwks()).unwrap();
    let verifier = Verifier::new(&issuer.issuer, Box::new(FileJwks(path)));
    verifier.refresh().await.unwrap();
    let gate = Arc::new(AuthGate::new(Arc::new(verifier), mode));
    let metrics = Arc::new(Metrics::new());
    let ingress = Arc::new(Ingress::new(metrics.clone(), 1 << 20).with_auth(gate));
    let channel = Arc::new(MemoryChannel::new(16));
    let sub = channel
        .subscribe(SubscriptionSpec {
            id: "t".into(),
            start_from: StartFrom::Latest,
            ordered: false,
        })
        .await
        .unwrap();
    let key = Key::new("ns", "default");
    let mut t = Topology::default();
    for p in policies {
        t.event_policies.insert(p.key.clone(), Arc::new(p));
    }
    ingress.apply_auth(&t);
    let mut brokers = HashMap::new();
    brokers.insert(key.clone(), BrokerEntry::new(&key, channel, &metrics));
    ingress.set_brokers(brokers);
    Fixture {
        ingress,
        sub,
        issuer,
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn event(ty: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri("/ns/default")
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/s")
        .header("ce-type", ty);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::from("{}")).unwrap()
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let resp = router(f.ingress.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The type of the event the ingress stored, if any: a 202 means it is in the channel
/// already, so one poll tells.
async fn stored(f: &mut Fixture) -> Option<String> {
    use futures::FutureExt as _;
    match f.sub.next().now_or_never() {
        Some(Some(Ok(m))) => {
            let ty = m.envelope.event.ty().to_string();
            m.ack();
            Some(ty)
        }
        _ => None,
    }
}

fn policy(from: &[&str], filter: Option<Arc<dyn EventFilter>>) -> EventPolicy {
    EventPolicy {
        key: Key::new("ns", "p"),
        to: Some(vec![ObjectRef::broker(Key::new("ns", "default"))]),
        from: from.iter().map(|s| s.to_string()).collect(),
        filter,
    }
}

#[tokio::test]
async fn missing_or_invalid_tokens_get_401_with_www_authenticate() {
    let mut f = fixture(DefaultMode::AllowAll, vec![]).await;
    let (status, headers, body) = send(&f, event("t", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"sluice\"");
    assert!(
        body.contains("Authorization: Bearer") && body.contains(AUD),
        "{body}"
    );

    let forger = TestIssuer::new("https://issuer.test", "k1");
    let bad = [
        ("bad signature", forger.token(SENDER, AUD, 600), "signature"),
        ("expired", f.issuer.token(SENDER, AUD, -600), "expired"),
        (
            "wrong audience",
            f.issuer
                .token(SENDER, "eventing.knative.dev/broker/ns/other", 600),
            "audience",
        ),
        ("garbage", "abc".to_string(), "well-formed"),
    ];
    for (what, token, needle) in bad {
        let (status, headers, body) = send(&f, event("t", Some(&token))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{what}"
        );
        assert!(body.contains(needle), "{what}: {body}");
    }
    let basic = event("t", None);
    let (mut parts, b) = basic.into_parts();
    parts
        .headers
        .insert("authorization", "Basic dTpw".parse().unwrap());
    let (status, _, body) = send(&f, Request::from_parts(parts, b)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Bearer"), "{body}");
    assert_eq!(stored(&mut f).await, None, "nothing refused is stored");

    let good = f.issuer.token(SENDER, AUD, 600);
    let (status, _, body) = send(&f, event("t", Some(&good))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(stored(&mut f).await.as_deref(), Some("t"));
}

#[tokio::test]
async fn deny_all_without_a_policy_is_403() {
    let mut f = fixture(DefaultMode::DenyAll, vec![]).await;
    let token = f.issuer.token(SENDER, AUD, 600);
    let (status, _, body) = send(&f, event("t", Some(&token))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("deny-all") && body.contains("\"reason\":\"forbidden\""),
        "{body}"
    );
    assert_eq!(stored(&mut f).await, None);
}

#[tokio::test]
async fn a_policy_with_a_subject_glob_allows_and_its_filters_refuse_other_events() {
    let filter: Arc<dyn EventFilter> = Arc::new(TypeIs("order.created"));
    let mut f = fixture(
        DefaultMode::DenyAll,
        vec![policy(&["system:serviceaccount:ns:*"], Some(filter))],
    )
    .await;
    let token = f.issuer.token(SENDER, AUD, 600);
    let (status, _, body) = send(&f, event("order.created", Some(&token))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(stored(&mut f).await.as_deref(), Some("order.created"));

    let (status, _, body) = send(&f, event("order.deleted", Some(&token))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("spec.filters"), "{body}");

    let stranger = f
        .issuer
        .token("system:serviceaccount:elsewhere:x", AUD, 600);
    let (status, _, body) = send(&f, event("order.created", Some(&stranger))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("spec.from"), "{body}");
    assert_eq!(stored(&mut f).await, None);
}
