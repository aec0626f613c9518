//! OIDC in Kubernetes mode against the harness's real kube-apiserver (SEMANTICS.md §11):
//! `config-features` turns it on for `sluice dataplane`, which then verifies tokens with the
//! API server's own discovery document and keys; senders' tokens come from the TokenRequest
//! API for their ServiceAccount.

mod common;

use common::kube::*;
use common::*;
use sluice_controller::oidc::TokenRequests;
use sluice_delivery::{Identity, TokenSource};
use sluice_tests::{eventually, shared_kube};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

async fn post(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "k1")
        .header("ce-source", "/test")
        .header("ce-type", "order.created");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.body("{}").send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test]
async fn the_dataplane_accepts_token_request_tokens_verified_with_the_api_servers_keys() {
    let kube = shared_kube().await;
    install_crds(kube).await;
    for ns in ["sluice-system", "shop", "elsewhere"] {
        let _ = kube.kubectl(&["create", "namespace", ns]).await;
    }
    kube.kubectl(&[
        "create",
        "configmap",
        "config-features",
        "-n",
        "sluice-system",
        "--from-literal=authentication-oidc=Enabled",
    ])
    .await
    .unwrap();
    apply(
        kube,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: orders, namespace: shop}\n",
    )
    .await;
    let (ingress, admin) = (addr(), addr());
    let _dataplane = Proc::spawn(
        kube,
        &[
            "dataplane",
            "--ingress",
            &ingress.to_string(),
            "--admin",
            &admin.to_string(),
        ],
    );
    let url = format!("http://{ingress}/shop/orders");
    // Once the broker is served, a request without a token is refused as unauthenticated.
    eventually(T, "the broker requires tokens", || async {
        let (status, body) = post(&url, None).await;
        (status == 401 && body.contains("eventing.knative.dev/broker/shop/orders")).then_some(())
    })
    .await;

    let config = ::kube::Config::from_custom_kubeconfig(
        ::kube::config::Kubeconfig::read_from(kube.kubeconfig_path()).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = ::kube::Client::try_from(config).unwrap();
    let tokens = TokenRequests::new(client);
    kube.service_account("shop", "producer").await;
    let producer = Identity {
        namespace: "shop".into(),
        service_account: "producer".into(),
    };
    let aud = "eventing.knative.dev/broker/shop/orders";
    let token = tokens.token(&producer, aud).await.unwrap();
    let again = tokens.token(&producer, aud).await.unwrap();
    assert!(Arc::ptr_eq(&token, &again), "a token is reused while fresh");

    let (status, body) = post(&url, Some(&token)).await;
    assert_eq!(status, 202, "{body}");

    // A token for another audience is not accepted here.
    let other = tokens
        .token(&producer, "eventing.knative.dev/broker/shop/other")
        .await
        .unwrap();
    let (status, body) = post(&url, Some(&other)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("audience"), "{body}");

    // allow-same-namespace (the default): a ServiceAccount of another namespace is refused.
    kube.service_account("elsewhere", "x").await;
    let foreign = Identity {
        namespace: "elsewhere".into(),
        service_account: "x".into(),
    };
    let (status, body) = post(&url, Some(&tokens.token(&foreign, aud).await.unwrap())).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allow-same-namespace"), "{body}");

    // An EventPolicy: the controller reports it Ready with the subjects it admits, and
    // the data plane enforces it (now only `partners` may send, whatever the namespace).
    let _controller = Proc::spawn(
        kube,
        &[
            "controller",
            "--admin",
            &addr().to_string(),
            "--dataplane-admin",
            &admin.to_string(),
        ],
    );
    apply(
        kube,
        r#"apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: partners, namespace: shop}
spec:
  to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}}]
  from:
    - sub: "system:serviceaccount:elsewhere:*"
    - ref: {apiVersion: sources.knative.dev/v1, kind: PingSource, name: tick}
"#,
    )
    .await;
    let policy = wait_ready(kube, "shop", "eventpolicy/partners", "True").await;
    assert_eq!(
        policy["status"]["from"],
        serde_json::json!([
            "system:serviceaccount:elsewhere:*",
            "system:serviceaccount:shop:tick-oidc-sources.knative.dev-pingsource"
        ])
    );
    eventually(T, "the policy admits the other namespace", || async {
        let t = tokens.token(&foreign, aud).await.ok()?;
        (post(&url, Some(&t)).await.0 == 202).then_some(())
    })
    .await;
    let (status, body) = post(&url, Some(&token)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("partners"), "{body}");

    // The controller creates a sender's OIDC ServiceAccount, owned by the sender, and its
    // tokens come from the TokenRequest API like any other's.
    apply(
        kube,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: audit, namespace: shop}\nspec:\n  broker: orders\n  subscriber: {uri: \"http://127.0.0.1:1/\"}\n",
    )
    .await;
    let sa = "audit-oidc-eventing.knative.dev-trigger";
    let account = eventually(T, "the trigger's ServiceAccount", || async {
        get_json(kube, &["serviceaccount", sa, "-n", "shop"]).await
    })
    .await;
    assert_eq!(account["metadata"]["ownerReferences"][0]["kind"], "Trigger");
    let trigger = Identity {
        namespace: "shop".into(),
        service_account: sa.into(),
    };
    tokens.token(&trigger, aud).await.unwrap();

    // A ServiceAccount that does not exist gets no token, and the error says why.
    let ghost = Identity {
        namespace: "shop".into(),
        service_account: "ghost".into(),
    };
    let e = tokens.token(&ghost, aud).await.unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}
