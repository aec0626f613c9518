//! HTTPS at the ingress (issue 15, SEMANTICS.md §11), end to end: the real binary serving
//! certificates made in the test (rcgen), real sinks, `sluice send` as a user runs it.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_file: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pem_file = dir.join(format!("{name}.crt"));
    std::fs::write(&pem_file, issuer.pem()).unwrap();
    Ca { issuer, pem_file }
}

/// A server certificate for 127.0.0.1 signed by `ca`, written (key first, each file
/// renamed into place as cert-manager and kubelet do) to `dir/tls.crt` and `dir/tls.key`.
/// Returns its DER.
fn server_cert(dir: &Path, ca: &Ca, cn: &str) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    for (file, pem) in [("tls.key", key.serialize_pem()), ("tls.crt", cert.pem())] {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
    cert.der().to_vec()
}

fn tls_flags(dir: &Path, https: SocketAddr, ca: &Ca, mode: Option<&str>) -> Vec<String> {
    let mut flags = vec![
        "--https-addr".to_string(),
        https.to_string(),
        "--tls-cert".into(),
        dir.join("tls.crt").display().to_string(),
        "--tls-key".into(),
        dir.join("tls.key").display().to_string(),
        "--tls-ca".into(),
        ca.pem_file.display().to_string(),
    ];
    if let Some(m) = mode {
        flags.extend(["--transport-encryption".into(), m.into()]);
    }
    flags
}

fn https_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

async fn start(name: &str, yaml: &str, mode: Option<&str>) -> (Sluice, SocketAddr, Ca) {
    let dir = test_dir(name);
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let ca = ca(&dir, "test-ca");
    server_cert(&dir, &ca, "first");
    let https = https_addr();
    let flags = tls_flags(&dir, https, &ca, mode);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let s = Sluice::start_in(dir, &flags).await;
    (s, https, ca)
}

/// `sluice send` as a user runs it: (success, stdout + stderr).
async fn send(url: &str, ca_cert: Option<&Path>, id: &str) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(binary());
    cmd.args([
        "send",
        url,
        "--type",
        "com.example.tls",
        "--source",
        "/test",
        "--id",
        id,
    ]);
    cmd.args(["--data", "{\"secure\":true}"]);
    if let Some(ca) = ca_cert {
        cmd.arg("--ca-cert").arg(ca);
    }
    let out = cmd.output().await.expect("running sluice send");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn broker_and_trigger(sink: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default, namespace: default}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t, namespace: default}}\nspec:\n  broker: default\n  subscriber:\n    uri: {sink}\n"
    )
}

async fn topology(s: &Sluice) -> Value {
    client()
        .get(format!("http://{}/topology", s.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn permissive_takes_events_over_https_and_http_and_publishes_both() {
    let sink = Sink::ok().await;
    let (s, https, ca) = start("tls-permissive", &broker_and_trigger(&sink.url()), None).await;
    let url = format!("https://{https}/default/default");
    let (ok, out) = send(&url, Some(&ca.pem_file), "over-https").await;
    assert!(ok && out.starts_with("202"), "{out}");
    let status = post_event(
        &s.broker_url("default", "default"),
        "over-http",
        "t",
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 202, "permissive still takes plain http");
    let got = sink.wait_for(2, T).await;
    let mut ids: Vec<_> = got.iter().filter_map(|r| r.header("ce-id")).collect();
    ids.sort();
    assert_eq!(ids, ["over-http", "over-https"]);
    assert_eq!(
        got.iter()
            .find(|r| r.header("ce-id") == Some("over-https"))
            .unwrap()
            .body
            .as_ref(),
        b"{\"secure\":true}"
    );

    // Knative's permissive addresses: address http, addresses [https, http].
    let t = topology(&s).await;
    let b = &t["brokers"][0];
    assert_eq!(b["url"], s.broker_url("default", "default"));
    assert_eq!(b["addresses"][0]["name"], "https");
    assert_eq!(b["addresses"][0]["url"], url);
    assert_eq!(b["addresses"][1]["name"], "http");
    assert_eq!(t["ingress"]["transportEncryption"], "permissive");
    let shown = s.get().await;
    assert!(
        shown.contains(&s.broker_url("default", "default")),
        "{shown}"
    );
}

#[tokio::test]
async fn strict_answers_plain_http_404_and_runs_internal_hops_over_https() {
    let sink = Sink::ok().await;
    // Trigger → Channel (an address on the ingress, https in strict mode) → Subscription →
    // sink: the inner hop goes over https, verified with --tls-ca.
    let yaml = format!(
        r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: default}}
---
apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata: {{name: ch, namespace: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: to-channel, namespace: default}}
spec:
  broker: default
  subscriber:
    ref: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: ch}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: s, namespace: default}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: ch}}
  subscriber: {{uri: "{sink}"}}
"#,
        sink = sink.url()
    );
    let (s, https, ca) = start("tls-strict", &yaml, Some("strict")).await;
    let resp = client()
        .post(s.broker_url("default", "default"))
        .header("ce-id", "plain")
        .header("ce-source", "/t")
        .header("ce-type", "t")
        .header("ce-specversion", "1.0")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("HTTPS only") && body.contains("strict"),
        "{body}"
    );

    let (ok, out) = send(
        &format!("https://{https}/default/default"),
        Some(&ca.pem_file),
        "secure",
    )
    .await;
    assert!(ok, "{out}");
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-id"), Some("secure"));
    assert_eq!(sink.count(), 1, "the plain request was not taken");

    let t = topology(&s).await;
    let b = &t["brokers"][0];
    assert_eq!(b["url"], format!("https://{https}/default/default"));
    assert_eq!(b["addresses"].as_array().unwrap().len(), 1);
    let ch = &t["channels"][0];
    assert_eq!(ch["url"], format!("https://{https}/default/channels/ch"));
}

/// The served certificate's DER, as a client trusting `ca` sees it in the handshake.
async fn served_cert(addr: SocketAddr, ca: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(certs.first().map(|c| c.to_vec()).unwrap_or_default())
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_a_restart() {
    let sink = Sink::ok().await;
    let dir = test_dir("tls-reload");
    std::fs::write(dir.join("resources.yaml"), broker_and_trigger(&sink.url())).unwrap();
    let first_ca = ca(&dir, "first-ca");
    let first = server_cert(&dir, &first_ca, "first");
    let https = https_addr();
    let flags = tls_flags(&dir, https, &first_ca, None);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let _s = Sluice::start_in(dir.clone(), &flags).await;
    assert_eq!(served_cert(https, &first_ca.pem_file).await.unwrap(), first);

    // Renewed by another CA: once picked up, clients trusting only the old CA fail and
    // clients trusting the new one see the new certificate.
    let second_ca = ca(&dir, "second-ca");
    let second = server_cert(&dir, &second_ca, "second");
    assert_ne!(first, second);
    eventually(T, "the new certificate served", || async {
        (served_cert(https, &second_ca.pem_file).await.ok()? == second).then_some(())
    })
    .await;
    let e = served_cert(https, &first_ca.pem_file).await.unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "{e}"
    );
    let (ok, out) = send(
        &format!("https://{https}/default/default"),
        Some(&second_ca.pem_file),
        "after-renewal",
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(
        sink.wait_for(1, T).await[0].header("ce-id"),
        Some("after-renewal")
    );

    // A broken replacement keeps the working certificate.
    std::fs::write(dir.join("tls.crt"), "garbage").unwrap();
    let (ok, out) = send(
        &format!("https://{https}/default/default"),
        Some(&second_ca.pem_file),
        "after-garbage",
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(
        served_cert(https, &second_ca.pem_file).await.unwrap(),
        second
    );
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_with_a_clear_reason() {
    let (_s, https, _ca) = start(
        "tls-wrong-ca",
        &broker_and_trigger("http://127.0.0.1:9/"),
        None,
    )
    .await;
    let other = ca(&test_dir("tls-wrong-ca-other"), "other-ca");
    let (ok, out) = send(
        &format!("https://{https}/default/default"),
        Some(&other.pem_file),
        "x",
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("could not send to https://") && out.contains("UnknownIssuer"),
        "{out}"
    );
}

#[tokio::test]
async fn disabled_with_a_certificate_answers_https_404() {
    let (s, https, ca) = start(
        "tls-disabled",
        &broker_and_trigger("http://127.0.0.1:9/"),
        Some("disabled"),
    )
    .await;
    let (ok, out) = send(
        &format!("https://{https}/default/default"),
        Some(&ca.pem_file),
        "x",
    )
    .await;
    assert!(
        !ok && out.starts_with("404") && out.contains("HTTPS is off"),
        "{out}"
    );
    let t = topology(&s).await;
    assert_eq!(t["brokers"][0]["addresses"].as_array().unwrap().len(), 1);
    assert_eq!(t["brokers"][0]["url"], s.broker_url("default", "default"));
}

#[tokio::test]
async fn tls_flags_that_do_not_fit_refuse_to_start_and_say_which() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--transport-encryption", "strict"],
            "give --tls-cert and --tls-key",
        ),
        (
            &[
                "--tls-cert",
                "/nonexistent/tls.crt",
                "--tls-key",
                "/nonexistent/tls.key",
            ],
            "cannot read the TLS certificate file /nonexistent/tls.crt",
        ),
        (&["--tls-cert", "/nonexistent/tls.crt"], "--tls-key"),
    ];
    for (flags, want) in cases {
        let dir = test_dir("tls-refuse");
        std::fs::write(
            dir.join("resources.yaml"),
            broker_and_trigger("http://127.0.0.1:9/"),
        )
        .unwrap();
        let out = tokio::process::Command::new(binary())
            .arg("run")
            .arg("-f")
            .arg(&dir)
            .args(["--ingress", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin", &format!("127.0.0.1:{}", free_port())])
            .args(*flags)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

/// Kubernetes mode: `config-features` in the system namespace turns transport encryption
/// on; the controller publishes the https address with the CA as `CACerts`, the data plane
/// serves it, and switching to strict makes plain http answer 404 — without restarts.
#[tokio::test]
async fn kubernetes_mode_follows_config_features() {
    use common::kube::*;
    let kube = sluice_tests::shared_kube().await;
    install_crds(kube).await;
    let _ = kube
        .kubectl(&["create", "namespace", "sluice-system"])
        .await;
    let _ = kube.kubectl(&["create", "namespace", "tls"]).await;
    let features = |mode: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config-features, namespace: sluice-system}}\ndata:\n  transport-encryption: {mode}\n")
    };
    apply(kube, &features("permissive")).await;

    let dir = test_dir("tls-kube");
    let ca = ca(&dir, "kube-ca");
    server_cert(&dir, &ca, "dataplane");
    let (ingress, admin, https) = (addr(), addr(), https_addr());
    let mut args = vec![
        "dataplane".to_string(),
        "--ingress".into(),
        ingress.to_string(),
        "--admin".into(),
        admin.to_string(),
    ];
    args.extend(tls_flags(&dir, https, &ca, None));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _dataplane = Proc::spawn(kube, &args);
    let ca_flag = ca.pem_file.display().to_string();
    let _controller = Proc::spawn(
        kube,
        &[
            "controller",
            "--admin",
            &addr().to_string(),
            "--dataplane-admin",
            &admin.to_string(),
            "--tls-ca",
            &ca_flag,
        ],
    );
    let sink = Sink::ok().await;
    apply(
        kube,
        &broker_and_trigger(&sink.url()).replace("namespace: default", "namespace: tls"),
    )
    .await;
    let broker = wait_ready(kube, "tls", "broker/default", "True").await;
    let http_url = "http://sluice-ingress.sluice-system.svc.cluster.local/tls/default";
    let https_url = "https://sluice-ingress.sluice-system.svc.cluster.local/tls/default";
    let status = &broker["status"];
    assert_eq!(status["address"]["url"], http_url, "{status:#}");
    assert_eq!(status["addresses"][0]["name"], "https", "{status:#}");
    assert_eq!(status["addresses"][0]["url"], https_url);
    assert_eq!(status["addresses"][0]["CACerts"], ca.issuer.pem());
    assert_eq!(status["addresses"][1]["url"], http_url);

    // The data plane serves https with the Secret's certificate (here: files).
    let (ok, out) = send(
        &format!("https://{https}/tls/default"),
        Some(&ca.pem_file),
        "k8s-https",
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(
        sink.wait_for(1, T).await[0].header("ce-id"),
        Some("k8s-https")
    );

    // Strict: the address becomes https only, and plain http is refused.
    apply(kube, &features("strict")).await;
    eventually(Duration::from_secs(60), "an https-only address", || async {
        let b = get_json(kube, &["broker/default", "-n", "tls"]).await?;
        (b["status"]["address"]["url"] == https_url
            && b["status"]["addresses"].as_array()?.len() == 1)
            .then_some(())
    })
    .await;
    eventually(T, "plain http refused", || async {
        let status = post_event(
            &format!("http://{ingress}/tls/default"),
            "plain",
            "t",
            &[],
            "{}",
        )
        .await;
        (status == 404).then_some(())
    })
    .await;
}
