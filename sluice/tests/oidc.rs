//! OIDC and EventPolicies in embedded mode, end to end (SEMANTICS.md §11): the real binary
//! with `--oidc-issuer` and a JWKS file, tokens signed by a key made in the test, real sinks.

mod common;

use common::*;
use sluice_auth::testing::TestIssuer;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const ISSUER: &str = "https://issuer.test";
const PRODUCER: &str = "system:serviceaccount:default:producer";

fn aud(broker: &str) -> String {
    format!("eventing.knative.dev/broker/default/{broker}")
}

const RESOURCES: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: front, namespace: default}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: back, namespace: default}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: closed, namespace: default}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: producers-send-orders, namespace: default}
spec:
  to:
    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: front}
  from:
    - sub: "system:serviceaccount:default:prod*"
  filters:
    - prefix: {type: order.}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: only-the-forwarder, namespace: default}
spec:
  to:
    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: back}
  from:
    - ref: {apiVersion: eventing.knative.dev/v1, kind: Trigger, name: forward}
"#;

async fn post(url: &str, ty: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    let mut req = client()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "e1")
        .header("ce-source", "/test")
        .header("ce-type", ty)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.body("{}").send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.text().await.unwrap(), www)
}

#[tokio::test]
async fn tokens_are_required_policies_authorize_and_triggers_send_their_own() {
    let issuer = TestIssuer::new(ISSUER, "k1");
    let sink = Sink::ok().await;
    let dir = test_dir("oidc-e2e");
    std::fs::write(dir.join("jwks.json"), issuer.jwks()).unwrap();
    // What the forwarding trigger sends: a token for its own ServiceAccount.
    let trigger_sa = "system:serviceaccount:default:forward-oidc-eventing.knative.dev-trigger";
    std::fs::write(
        dir.join("token"),
        issuer.token(trigger_sa, &aud("back"), 3600),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("resources")).unwrap();
    std::fs::write(dir.join("resources/brokers.yaml"), RESOURCES).unwrap();
    let (jwks, token) = (dir.join("jwks.json"), dir.join("token"));
    let s = Sluice::start_in(
        dir.join("resources"),
        &[
            "--oidc-issuer",
            ISSUER,
            "--oidc-jwks-file",
            jwks.to_str().unwrap(),
            "--default-authorization-mode",
            "deny-all",
            "--oidc-token-file",
            token.to_str().unwrap(),
        ],
    )
    .await;
    // The trigger names the ingress's address, known only now: added by a reload. It sends
    // over HTTP (a `uri`), with the audience of the broker it sends to.
    let triggers = format!(
        r#"
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: forward, namespace: default}}
spec:
  broker: front
  subscriber:
    uri: http://{ingress}/default/back
    audience: {aud}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: to-sink, namespace: default}}
spec:
  broker: back
  subscriber: {{uri: "{sink}"}}
"#,
        ingress = s.ingress,
        aud = aud("back"),
        sink = sink.url()
    );
    s.write("triggers.yaml", &triggers);
    eventually(T, "the triggers are loaded", || async {
        let t = client()
            .get(format!("http://{}/topology", s.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (t.contains("forward") && t.contains("to-sink")).then_some(())
    })
    .await;

    let front = s.broker_url("default", "front");
    // 401: no token, a bad signature, an expired token, a token for another audience.
    let (status, body, www) = post(&front, "order.created", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(www.as_deref(), Some("Bearer realm=\"sluice\""));
    assert!(
        body.contains(&aud("front")),
        "the 401 names the audience: {body}"
    );
    let forger = TestIssuer::new(ISSUER, "k1");
    for (what, t) in [
        ("bad signature", forger.token(PRODUCER, &aud("front"), 600)),
        ("expired", issuer.token(PRODUCER, &aud("front"), -3600)),
        ("wrong audience", issuer.token(PRODUCER, &aud("back"), 600)),
    ] {
        let (status, body, www) = post(&front, "order.created", Some(&t)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(www.unwrap().contains("invalid_token"), "{what}");
    }
    // 403: a subject no policy admits; an admitted subject with an event the filters refuse.
    let stranger = issuer.token("system:serviceaccount:default:stranger", &aud("front"), 600);
    let (status, body, _) = post(&front, "order.created", Some(&stranger)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("producers-send-orders"), "{body}");
    let producer = issuer.token(PRODUCER, &aud("front"), 600);
    let (status, body, _) = post(&front, "user.created", Some(&producer)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("spec.filters"), "{body}");
    // deny-all: a broker no policy covers refuses everyone.
    let closed = issuer.token(PRODUCER, &aud("closed"), 600);
    let (status, body, _) = post(
        &s.broker_url("default", "closed"),
        "order.created",
        Some(&closed),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("deny-all"), "{body}");
    // The back broker admits the forwarding trigger only.
    let direct = issuer.token(PRODUCER, &aud("back"), 600);
    let (status, body, _) = post(
        &s.broker_url("default", "back"),
        "order.created",
        Some(&direct),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(sink.count(), 0, "nothing refused went anywhere");

    // Allowed: front → (trigger `forward`, with the token file's token) → back → sink.
    let (status, body, _) = post(&front, "order.created", Some(&producer)).await;
    assert_eq!(status, 202, "{body}");
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-type"), Some("order.created"));
    assert_eq!(
        got[0].header("authorization"),
        None,
        "no token goes to a destination without an audience"
    );
}

#[tokio::test]
async fn an_event_policy_is_refused_while_oidc_is_off() {
    let dir = test_dir("oidc-off");
    std::fs::write(dir.join("r.yaml"), RESOURCES).unwrap();
    let out = tokio::process::Command::new(binary())
        .args(["run", "--no-watch", "-f"])
        .arg(&dir)
        .args(["--ingress", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EventPolicy default/producers-send-orders")
            && err.contains("authentication-oidc"),
        "{err}"
    );
}
