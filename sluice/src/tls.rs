//! The ingress's TLS settings, checked once at start (SEMANTICS.md §11, README "Security").
//!
//! [`decide`] is the pure check of the flags; [`IngressTls::from_flags`] reads the files it
//! names. What it gives the rest of the process: the mode the listeners obey (changeable
//! later, in Kubernetes mode, by `config-features`), the certificates the HTTPS listener
//! serves (reloaded when their files change), and the base URLs objects are published at.

use crate::cli::TlsFlags;
use anyhow::Context as _;
use sluice_broker::tls::{Certificates, TlsFiles};
use sluice_broker::TransportMode;
use sluice_core::transport::TransportEncryption;
use std::net::SocketAddr;
use std::sync::Arc;

/// The mode the flags ask for, or why they do not fit together. `cert`: --tls-cert and
/// --tls-key were given (clap makes sure they come together); `mode`: --transport-encryption.
pub fn decide(
    cert: bool,
    ca: bool,
    mode: Option<TransportEncryption>,
) -> Result<TransportEncryption, String> {
    use TransportEncryption::*;
    match (cert, ca, mode) {
        (false, _, Some(m @ (Permissive | Strict))) => Err(format!(
            "--transport-encryption {m} needs a certificate to serve HTTPS with: give --tls-cert and --tls-key (PEM files)"
        )),
        (false, true, _) => Err(
            "--tls-ca is the CA of the ingress certificate: give --tls-cert and --tls-key too, or drop --tls-ca"
                .into(),
        ),
        (false, false, _) => Ok(Disabled),
        (true, _, None) => Ok(Permissive),
        (true, _, Some(m)) => Ok(m),
    }
}

/// The TLS side of one data-plane process.
pub struct IngressTls {
    pub mode: Arc<TransportMode>,
    /// Where HTTPS is served, and with what; `None` without --tls-cert.
    pub https: Option<(SocketAddr, Arc<Certificates>)>,
    /// The PEM of --tls-ca.
    pub ca_pem: Option<String>,
    /// More CA certificates (PEM) this process's deliveries trust: Kubernetes mode's
    /// trust-bundle ConfigMaps, read at start.
    pub trust: Vec<String>,
}

impl IngressTls {
    /// Checks the flags and reads the files; every error says which flag to fix.
    pub fn from_flags(flags: &TlsFlags) -> anyhow::Result<Self> {
        let cert = flags.tls_cert.is_some() && flags.tls_key.is_some();
        let mode = decide(cert, flags.tls_ca.is_some(), flags.transport_encryption)
            .map_err(anyhow::Error::msg)?;
        let https = match (&flags.tls_cert, &flags.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let certs = Certificates::load(files)
                    .context("the ingress cannot serve HTTPS (check --tls-cert and --tls-key)")?;
                Some((flags.https_addr, certs))
            }
            _ => None,
        };
        let ca_pem = match &flags.tls_ca {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --tls-ca {}", path.display()))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    anyhow::bail!(
                        "--tls-ca {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        path.display()
                    );
                }
                Some(pem)
            }
            None => None,
        };
        Ok(IngressTls {
            mode: TransportMode::new(mode),
            https,
            ca_pem,
            trust: Vec::new(),
        })
    }

    /// The https base URL (trailing slash), if HTTPS is served.
    pub fn https_base(&self) -> Option<url::Url> {
        self.https
            .as_ref()
            .and_then(|(addr, _)| url::Url::parse(&format!("https://{addr}/")).ok())
    }

    /// The base URL objects are reached at from inside the process: https in strict mode
    /// (plain http is refused there), else `http`.
    pub fn internal_base(&self, http: url::Url) -> url::Url {
        match (self.mode.get(), self.https_base()) {
            (TransportEncryption::Strict, Some(https)) => https,
            _ => http,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportEncryption::*;

    #[test]
    fn flags_fit_together_or_say_which_to_fix() {
        type Case = (
            bool,
            bool,
            Option<TransportEncryption>,
            Result<TransportEncryption, &'static str>,
        );
        let cases: &[Case] = &[
            (false, false, None, Ok(Disabled)),
            (false, false, Some(Disabled), Ok(Disabled)),
            (
                false,
                false,
                Some(Strict),
                Err("--transport-encryption strict needs a certificate"),
            ),
            (
                false,
                false,
                Some(Permissive),
                Err("give --tls-cert and --tls-key"),
            ),
            (
                false,
                true,
                None,
                Err("--tls-ca is the CA of the ingress certificate"),
            ),
            (true, false, None, Ok(Permissive)),
            (true, true, Some(Strict), Ok(Strict)),
            // A certificate while disabled: the https listener answers 404 (Knative's disabled).
            (true, false, Some(Disabled), Ok(Disabled)),
        ];
        for (cert, ca, mode, want) in cases {
            let got = decide(*cert, *ca, *mode);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{cert} {ca} {mode:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{g}"),
                _ => panic!("{cert} {ca} {mode:?}: got {got:?}, wanted {want:?}"),
            }
        }
    }
}
