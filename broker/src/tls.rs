//! HTTPS for the ingress: a rustls server configuration (ring provider, as delivery uses)
//! whose certificate is read from PEM files and **reloaded when they change**, without a
//! restart and without dropping connections.
//!
//! Certificates are short-lived in practice (cert-manager renews them; Kubernetes updates a
//! mounted Secret in place), so the server never holds a certificate itself: each TLS
//! handshake asks [`Certificates`] (a rustls `ResolvesServerCert`) for the current one, an
//! `ArcSwap` that [`Certificates::reload_if_changed`] replaces. A reload is triggered by a
//! change of either file's contents (polled: it works the same for
//! editors, `cp`, and the symlink swap of a Secret volume, where file watchers disagree).
//! A new pair that cannot be used (unreadable, not PEM, key not matching the certificate —
//! e.g. read between the writes of the two files) is logged with the reason and the old
//! certificate keeps being served; the next change is tried again.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the certificate files are looked at by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The certificate chain and private key files (PEM) the ingress serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate/key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS certificate file {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(PathBuf),
    #[error("the TLS certificate file {path} is not valid PEM: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("the TLS key file {path} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("the TLS key {key} does not belong to the certificate {cert} (or is of an unsupported type): {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// The ring crypto provider, the one delivery and the Kubernetes client use.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate/key pair.
pub fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: files.cert.clone(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    })
}

/// What identifies a version of a file: a hash of its contents. Not the modification time
/// and size: a new certificate of the same length written within the file system's
/// timestamp tick (a few ms) would look unchanged (a test caught it). Reading two small
/// files every poll costs nothing worth saving.
type Stamp = Option<u64>;

fn stamp(path: &Path) -> Stamp {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// The certificate served, swapped whole when the files change.
#[derive(Debug)]
pub struct Certificates {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The stamps of (cert, key) last tried, loaded or not.
    seen: Mutex<(Stamp, Stamp)>,
}

impl Certificates {
    /// Loads the pair once; an error here is a configuration error (nothing is served yet).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let seen = (stamp(&files.cert), stamp(&files.key));
        let key = load(&files, &provider)?;
        Ok(Arc::new(Certificates {
            files,
            provider,
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(seen),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The certificate chain served now (the leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Loads the files again if either changed since last tried. `Ok(true)`: a new
    /// certificate is served; `Ok(false)`: nothing changed; `Err`: the new files are not
    /// usable and the previous certificate is still served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        {
            let mut seen = self.seen.lock().expect("not poisoned");
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let key = load(&self.files, &self.provider)?;
        self.current.store(Arc::new(key));
        Ok(true)
    }

    /// Polls the files every `interval` for as long as the returned task runs (abort it, or
    /// drop the runtime, to stop).
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Stop once nobody serves these certificates any more.
                let Some(certs) = this.upgrade() else { return };
                match certs.reload_if_changed() {
                    Ok(true) => tracing::info!(
                        cert = %certs.files.cert.display(),
                        "TLS certificate reloaded; new connections get the new one"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        error = %e,
                        "the changed TLS files cannot be used; still serving the previous certificate (fix the files: they are read again when they change)"
                    ),
                }
            }
        })
    }

    /// A rustls server configuration serving these certificates (HTTP/1.1, as the plain
    /// listener).
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }

    /// A TLS acceptor for [`crate::serve_router_tls`].
    pub fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::new(self.server_config()))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn write_pair(dir: &Path, name: &str) -> (TlsFiles, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        replace(&files.cert, cert.pem().as_bytes());
        replace(&files.key, key.serialize_pem().as_bytes());
        (files, cert.der().clone())
    }

    /// Writes a new file and renames it over the old one, as `kubectl` and editors do.
    fn replace(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_a_pair_and_says_what_is_wrong_with_a_bad_one() {
        let d = dir("load");
        let (files, der) = write_pair(&d, "a.example");
        let certs = Certificates::load(files.clone()).unwrap();
        assert_eq!(certs.chain(), vec![der]);

        let p = provider();
        let missing = TlsFiles {
            cert: d.join("nope.crt"),
            key: files.key.clone(),
        };
        let e = load(&missing, &p).unwrap_err().to_string();
        assert!(
            e.contains("cannot read the TLS certificate file") && e.contains("nope.crt"),
            "{e}"
        );

        std::fs::write(d.join("empty.crt"), "not pem").unwrap();
        let empty = TlsFiles {
            cert: d.join("empty.crt"),
            key: files.key.clone(),
        };
        let e = load(&empty, &p).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");

        let nokey = TlsFiles {
            cert: files.cert.clone(),
            key: files.cert.clone(),
        };
        let e = load(&nokey, &p).unwrap_err().to_string();
        assert!(e.contains("no usable private key"), "{e}");

        // A key of another certificate.
        let other = KeyPair::generate().unwrap();
        std::fs::write(d.join("other.key"), other.serialize_pem()).unwrap();
        let mismatch = TlsFiles {
            cert: files.cert.clone(),
            key: d.join("other.key"),
        };
        let e = load(&mismatch, &p).unwrap_err().to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_keeps_the_old() {
        let d = dir("reload");
        let (files, first) = write_pair(&d, "a.example");
        let certs = Certificates::load(files.clone()).unwrap();
        assert!(!certs.reload_if_changed().unwrap(), "nothing changed");

        // Only the certificate is replaced (the key comes later): refused, old one kept.
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["b.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        replace(&files.cert, cert.pem().as_bytes());
        let e = certs.reload_if_changed().unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        assert_eq!(certs.chain(), vec![first.clone()]);
        // Not retried until something changes again.
        assert!(!certs.reload_if_changed().unwrap());

        // Then the key: the new pair is served.
        replace(&files.key, key.serialize_pem().as_bytes());
        assert!(certs.reload_if_changed().unwrap());
        assert_eq!(certs.chain(), vec![cert.der().clone()]);

        // A garbled certificate: refused, the second pair is still served.
        replace(
            &files.cert,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(certs.reload_if_changed().is_err());
        assert_eq!(certs.chain(), vec![cert.der().clone()]);
    }
}
