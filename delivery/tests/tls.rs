//! Delivery to `https` sinks (issue 15 item 1): a real TLS server on loopback with a
//! certificate from a CA generated in the test. With the Destination's `CACerts` the event
//! arrives; with a wrong CA the attempt fails with a clear TLS reason and the event is
//! dead-lettered.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use sluice_core::delivery::{BackoffPolicy, DeliveryPolicy, Endpoint};
use sluice_core::{Envelope, Event, SpecVersion};
use sluice_delivery::{Delivered, Request, Sender};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use url::Url;

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// An HTTPS sink answering 200 to every POST, with a certificate signed by `issuer`.
/// Returns its URL and how many events it got.
async fn https_sink(issuer: &CertifiedIssuer<'static, KeyPair>) -> (String, Arc<AtomicUsize>) {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let served = count.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, served) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                // A client that does not trust us ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    served.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (format!("https://localhost:{}/", addr.port()), count)
}

/// A plain HTTP dead-letter sink counting what it gets.
async fn dead_letter_sink() -> (Endpoint, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { "" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (
        Endpoint::new(Url::parse(&format!("http://{addr}/")).unwrap()).unwrap(),
        count,
    )
}

fn policy(dls: Endpoint) -> DeliveryPolicy {
    DeliveryPolicy {
        retry: 1,
        backoff_policy: BackoffPolicy::Linear,
        backoff_delay: Duration::from_millis(5),
        dead_letter_sink: Some(dls),
        ..DeliveryPolicy::default()
    }
}

fn envelope() -> Envelope {
    Envelope::new(Event::new(SpecVersion::V10, "tls-1", "/src", "t"))
}

#[tokio::test]
async fn https_sink_trusted_through_ca_certs_gets_the_event() {
    let issuer = ca("sluice-test-sink-ca");
    let (url, got) = https_sink(&issuer).await;
    let endpoint = Endpoint::new(Url::parse(&url).unwrap())
        .unwrap()
        .with_ca_certs(&issuer.pem())
        .unwrap();
    let (dls, dead) = dead_letter_sink().await;
    let (env, p) = (envelope(), policy(dls));
    let report = Sender::new()
        .deliver(Request {
            url: &endpoint,
            envelope: &env,
            policy: &p,
            namespace: None,
        })
        .await;
    assert_eq!(report.result, Delivered::Ok { reply: None }, "{report:?}");
    assert_eq!(got.load(Ordering::SeqCst), 1);
    assert_eq!(dead.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn https_sink_with_a_wrong_ca_fails_clearly_and_dead_letters() {
    let issuer = ca("sluice-test-sink-ca");
    let other = ca("some-other-ca");
    let (url, got) = https_sink(&issuer).await;
    let sender = Sender::new();
    let (dls, dead) = dead_letter_sink().await;
    let (env, p) = (envelope(), policy(dls));
    // Trusting another CA, and trusting only the system's roots: both refuse the server.
    let wrong = Endpoint::new(Url::parse(&url).unwrap())
        .unwrap()
        .with_ca_certs(&other.pem())
        .unwrap();
    let system_only = Endpoint::new(Url::parse(&url).unwrap()).unwrap();
    for (n, endpoint) in [wrong, system_only].iter().enumerate() {
        let report = sender
            .deliver(Request {
                url: endpoint,
                envelope: &env,
                policy: &p,
                namespace: None,
            })
            .await;
        match &report.result {
            Delivered::DeadLettered { .. } => {}
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert_eq!(report.attempts, 2, "retried once, then dead-lettered");
        let reason = format!("{report:?}");
        assert!(
            reason.contains("certificate") || reason.contains("UnknownIssuer"),
            "the reason names the TLS problem: {reason}"
        );
        assert_eq!(dead.load(Ordering::SeqCst), n + 1);
    }
    assert_eq!(got.load(Ordering::SeqCst), 0, "no request got through");
}
