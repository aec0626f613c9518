//! Token verification against key sets from a file and from an OIDC discovery server (a real
//! HTTP server in the test).

use sluice_auth::testing::TestIssuer;
use sluice_auth::{AuthError, FileJwks, OidcDiscovery, Verifier};
use std::sync::Arc;

const AUD: &str = "eventing.knative.dev/broker/ns/b";
const SUB: &str = "system:serviceaccount:ns:sender";

fn file_verifier(
    dir: &std::path::Path,
    jwks: &str,
    issuer: &str,
) -> (Verifier, std::path::PathBuf) {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks).unwrap();
    (
        Verifier::new(issuer, Box::new(FileJwks(path.clone()))),
        path,
    )
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-auth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn tokens_are_checked_for_signature_issuer_audience_and_expiry() {
    let iss = TestIssuer::new("https://issuer.test", "k1");
    let dir = tempdir("checks");
    let (v, _) = file_verifier(&dir, &iss.jwks(), &iss.issuer);
    assert_eq!(v.refresh().await.unwrap(), 1);

    let ok = v.verify(&iss.token(SUB, AUD, 600), AUD).await.unwrap();
    assert_eq!(ok.0, SUB);

    // Within the leeway an just-expired token still passes; well past it, not.
    assert!(v.verify(&iss.token(SUB, AUD, -5), AUD).await.is_ok());
    let expired = v.verify(&iss.token(SUB, AUD, -600), AUD).await.unwrap_err();
    assert!(
        matches!(&expired, AuthError::Invalid(m) if m.contains("expired")),
        "{expired}"
    );

    let wrong_aud = v
        .verify(
            &iss.token(SUB, "eventing.knative.dev/broker/ns/other", 600),
            AUD,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&wrong_aud, AuthError::Invalid(m) if m.contains("audience")),
        "{wrong_aud}"
    );

    // Same key id, another key: the signature does not verify.
    let forger = TestIssuer::new("https://issuer.test", "k1");
    let forged = v
        .verify(&forger.token(SUB, AUD, 600), AUD)
        .await
        .unwrap_err();
    assert!(
        matches!(&forged, AuthError::Invalid(m) if m.contains("signature")),
        "{forged}"
    );

    let other_iss = TestIssuer::new("https://elsewhere.test", "k1");
    let mut claims = serde_json::json!({"iss": "https://elsewhere.test", "sub": SUB, "aud": AUD, "exp": 4102444800i64});
    let t = iss.sign(claims.clone());
    let e = v.verify(&t, AUD).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Invalid(m) if m.contains("issuer")),
        "{e}"
    );
    drop(other_iss);

    claims["iss"] = iss.issuer.clone().into();
    claims.as_object_mut().unwrap().remove("sub");
    let e = v.verify(&iss.sign(claims), AUD).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Invalid(m) if m.contains("sub")),
        "{e}"
    );

    assert!(matches!(
        v.verify("not.a.jwt", AUD).await,
        Err(AuthError::Malformed(_))
    ));
    // Tampered payload: the signature no longer matches.
    let good = iss.token(SUB, AUD, 600);
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = iss.token("system:serviceaccount:ns:admin", AUD, 600);
    parts[1] = evil.split('.').nth(1).unwrap();
    let e = v.verify(&parts.join("."), AUD).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Invalid(m) if m.contains("signature")),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_key_id_reads_the_keys_again_at_most_every_ten_seconds() {
    let old = TestIssuer::new("https://issuer.test", "old");
    let new = TestIssuer::new("https://issuer.test", "new");
    let dir = tempdir("rotate");
    let (v, path) = file_verifier(&dir, &old.jwks(), &old.issuer);
    v.refresh().await.unwrap();
    // The issuer rotates its key, but too soon after the last read: not seen yet.
    std::fs::write(&path, new.jwks()).unwrap();
    let e = v.verify(&new.token(SUB, AUD, 600), AUD).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::UnknownKey { kid, .. } if kid == "new"),
        "{e}"
    );
    tokio::time::advance(sluice_auth::verify::MIN_REFRESH).await;
    assert_eq!(
        v.verify(&new.token(SUB, AUD, 600), AUD).await.unwrap().0,
        SUB
    );
    // The old key is gone from the set.
    tokio::time::advance(sluice_auth::verify::MIN_REFRESH).await;
    assert!(matches!(
        v.verify(&old.token(SUB, AUD, 600), AUD).await,
        Err(AuthError::UnknownKey { .. })
    ));
}

#[tokio::test]
async fn a_bad_key_source_is_reported_with_where_it_was_read() {
    let dir = tempdir("bad");
    let v = Verifier::new("https://i", Box::new(FileJwks(dir.join("missing.json"))));
    let e = v.refresh().await.unwrap_err().to_string();
    assert!(
        e.contains("missing.json") && e.contains("--oidc-jwks-file"),
        "{e}"
    );
    let (v, _) = file_verifier(&dir, r#"{"keys": []}"#, "https://i");
    let e = v.refresh().await.unwrap_err().to_string();
    assert!(e.contains("no RSA, EC or OKP key"), "{e}");
    let hmac = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]}"#;
    let (v, _) = file_verifier(&dir, hmac, "https://i");
    assert!(v.refresh().await.is_err(), "HMAC keys are never used");
}

#[tokio::test]
async fn keys_come_from_the_issuers_discovery_document() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let iss = Arc::new(TestIssuer::new(&base, "k1"));
    let seen_auth = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = {
        let jwks = iss.jwks();
        let base = base.clone();
        let seen = seen_auth.clone();
        axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move |h: axum::http::HeaderMap| {
                    let base = base.clone();
                    let seen = seen.clone();
                    async move {
                        if let Some(a) = h.get("authorization") {
                            seen.lock().unwrap().push(a.to_str().unwrap().to_string());
                        }
                        axum::Json(
                            serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/keys")}),
                        )
                    }
                }),
            )
            .route("/keys", axum::routing::get(move || async move { jwks }))
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempdir("discovery");
    std::fs::write(dir.join("token"), "fetch-token\n").unwrap();
    let v = Verifier::new(
        base.clone(),
        Box::new(OidcDiscovery {
            issuer: url::Url::parse(&base).unwrap(),
            ca_pem: None,
            bearer_file: Some(dir.join("token")),
        }),
    );
    assert_eq!(v.refresh().await.unwrap(), 1);
    assert_eq!(
        v.verify(&iss.token(SUB, AUD, 60), AUD).await.unwrap().0,
        SUB
    );
    assert_eq!(
        *seen_auth.lock().unwrap(),
        vec!["Bearer fetch-token".to_string()]
    );
}
