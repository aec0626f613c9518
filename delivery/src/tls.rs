//! The outbound HTTP client: HTTP/1.1 over TCP, or over TLS (rustls, ring provider) for
//! `https` destinations.
//!
//! A server is verified against the system's roots plus the trust bundle files named by
//! `SLUICE_TRUST_BUNDLE` (a PEM file or a directory of them: Knative's trust-bundle ConfigMaps
//! mounted into the pod), plus, for one destination, the `CACerts` of its Destination. Each
//! distinct `CACerts` gets its own client (and connection pool), built on first use; the
//! system roots are read once per process.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The environment variable naming extra trusted CA certificates (file or directory of PEM).
pub const TRUST_BUNDLE_ENV: &str = "SLUICE_TRUST_BUNDLE";

static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
/// CA certificates the process adds before its first delivery ([`trust_also`]).
static EXTRA: std::sync::Mutex<Vec<CertificateDer<'static>>> = std::sync::Mutex::new(Vec::new());

/// Makes every delivery client of this process also trust the CA certificates in `pem`:
/// Sluice's own ingress CA (`--tls-ca`), so deliveries to its https addresses verify. Must
/// be called before the first delivery; returns how many certificates were added.
pub fn trust_also(pem: &str) -> Result<usize, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into());
    }
    if ROOTS.get().is_some() {
        return Err(
            "delivery clients are built already; add trusted CAs before the first delivery".into(),
        );
    }
    let n = certs.len();
    EXTRA.lock().expect("not poisoned").extend(certs);
    Ok(n)
}

fn base_roots() -> &'static RootCertStore {
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let extra = EXTRA.lock().expect("not poisoned").clone();
        let (added, ignored) = roots.add_parsable_certificates(extra);
        if ignored > 0 {
            tracing::warn!(added, ignored, "some of the extra trusted CA certificates are not usable");
        }
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            tracing::warn!(errors = ?native.errors, "some system CA certificates could not be read");
        }
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = std::env::var_os(TRUST_BUNDLE_ENV) {
            let path = std::path::PathBuf::from(path);
            let files: Vec<_> = match std::fs::read_dir(&path) {
                Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(_) => vec![path.clone()],
            };
            for f in files {
                match std::fs::read(&f) {
                    Ok(pem) => {
                        let (added, _) = roots.add_parsable_certificates(
                            CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok),
                        );
                        tracing::info!(file = %f.display(), added, "trust bundle read");
                    }
                    Err(e) => {
                        tracing::warn!(file = %f.display(), error = %e, "cannot read a trust bundle file")
                    }
                }
            }
        }
        roots
    })
}

/// An HTTP/HTTPS client trusting the system roots, `$SLUICE_TRUST_BUNDLE`, what
/// [`trust_also`] added and, if given, the PEM certificates `extra_ca`.
pub fn client(extra_ca: Option<&str>) -> Result<HttpClient, String> {
    let mut roots = base_roots().clone();
    if let Some(pem) = extra_ca {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CACerts is not PEM: {e}"))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("CACerts holds no usable CA certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    // hyper's connector refuses https URIs unless told the TLS layer handles them.
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(connector))
}
