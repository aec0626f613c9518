//! Turning OIDC on (SEMANTICS.md §11): the flags, and what they build — the ingress's
//! authentication gate (issuer + key source + default authorization mode) and the token
//! source senders use.
//!
//! Embedded mode: `--oidc-issuer` turns it on; keys come from `--oidc-jwks-file` or the
//! issuer's discovery document; senders send the token in `--oidc-token-file`.
//! Kubernetes mode (`sluice dataplane`): also on when `config-features` in the system
//! namespace says `authentication-oidc: enabled`; the issuer is then the API server (its
//! discovery document, read through the client), senders' tokens come from the TokenRequest
//! API, and `default-authorization-mode` is read there too. Flags override the ConfigMap.
//! Changing `config-features` takes effect when the data plane restarts.

use anyhow::Context as _;
use clap::Args;
use sluice_auth::{DefaultMode, FileJwks, JwksSource, OidcDiscovery, Verifier};
use sluice_broker::AuthGate;
use sluice_delivery::{TokenFile, TokenSource};
use std::path::PathBuf;
use std::sync::Arc;

/// OIDC authentication and EventPolicy authorization.
#[derive(Args, Debug, Clone, Default)]
pub struct OidcFlags {
    /// Require OIDC bearer tokens at the ingress (authentication-oidc: enabled), issued by
    /// this issuer (the tokens' `iss`, e.g. https://issuer.example.com). Keys come from
    /// --oidc-jwks-file, else from <issuer>/.well-known/openid-configuration. In Kubernetes
    /// mode, `kubernetes` means the API server (the default when config-features enables OIDC).
    #[arg(long, env = "SLUICE_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The issuer's JSON Web Key Set, as a file (read again when a token names an unknown key).
    #[arg(long, env = "SLUICE_OIDC_JWKS_FILE", requires = "oidc_issuer")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// Extra CA certificates (PEM file) for the issuer's HTTPS discovery.
    #[arg(long, env = "SLUICE_OIDC_CA_FILE", requires = "oidc_issuer")]
    pub oidc_ca_file: Option<PathBuf>,
    /// A bearer token file to fetch the issuer's discovery document and keys with.
    #[arg(
        long,
        env = "SLUICE_OIDC_DISCOVERY_TOKEN_FILE",
        requires = "oidc_issuer"
    )]
    pub oidc_discovery_token_file: Option<PathBuf>,
    /// Who may send when no EventPolicy applies to the target: allow-same-namespace
    /// (ServiceAccounts of its namespace; the default), allow-all or deny-all.
    #[arg(long, env = "SLUICE_DEFAULT_AUTHORIZATION_MODE", value_parser = parse_mode)]
    pub default_authorization_mode: Option<DefaultMode>,
    /// The token senders (triggers, subscriptions, sources) attach to requests to OIDC
    /// addressables; read again when the file changes. Kubernetes mode default: a token from
    /// the TokenRequest API for each sender's ServiceAccount.
    #[arg(long, env = "SLUICE_OIDC_TOKEN_FILE")]
    pub oidc_token_file: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<DefaultMode, String> {
    s.parse()
}

/// OIDC, switched on.
pub struct Oidc {
    /// The ingress's gate; `None`: this process only sends tokens (to another Sluice).
    pub gate: Option<Arc<AuthGate>>,
    /// What senders attach tokens from (none: they send without).
    pub tokens: Option<Arc<dyn TokenSource>>,
}

/// The issuer value meaning "the Kubernetes API server".
const KUBERNETES: &str = "kubernetes";

impl OidcFlags {
    /// Whether the flags alone turn OIDC on.
    pub fn enabled(&self) -> bool {
        self.oidc_issuer.is_some()
    }

    /// Embedded mode: builds OIDC from the flags, if they turn it on.
    pub async fn embedded(&self) -> anyhow::Result<Option<Oidc>> {
        let Some(issuer) = &self.oidc_issuer else {
            anyhow::ensure!(
                self.default_authorization_mode.is_none(),
                "--default-authorization-mode needs --oidc-issuer (which turns OIDC on)"
            );
            // Without an issuer, a token file only makes senders attach tokens (for
            // destinations with an `audience`, such as another Sluice's OIDC brokers).
            return Ok(self.token_file()?.map(|tokens| Oidc {
                gate: None,
                tokens: Some(tokens),
            }));
        };
        anyhow::ensure!(
            issuer != KUBERNETES,
            "--oidc-issuer kubernetes works in Kubernetes mode (sluice dataplane) only; give the issuer's URL"
        );
        let source = self.key_source(issuer)?;
        let tokens = self.token_file()?;
        let mode = self.default_authorization_mode.unwrap_or_default();
        Ok(Some(build(issuer.clone(), source, mode, tokens).await?))
    }

    /// Kubernetes mode: the flags, else `config-features` in `system_namespace`.
    pub async fn kubernetes(
        &self,
        client: &kube::Client,
        system_namespace: &str,
    ) -> anyhow::Result<Option<Oidc>> {
        use sluice_controller::oidc;
        let features = match oidc::features(client, system_namespace).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read config-features; OIDC follows the flags only");
                oidc::Features::default()
            }
        };
        if !self.enabled() && !features.authentication_oidc {
            return Ok(None);
        }
        let mode = self
            .default_authorization_mode
            .unwrap_or(features.default_authorization_mode);
        let (issuer, source): (String, Box<dyn JwksSource>) = match self.oidc_issuer.as_deref() {
            None | Some(KUBERNETES) => {
                let issuer = oidc::api_server_issuer(client).await.map_err(|e| {
                    anyhow::anyhow!(
                        "OIDC is enabled but the API server's issuer cannot be read: {e}"
                    )
                })?;
                (issuer, Box::new(oidc::ApiServerJwks::new(client.clone())))
            }
            Some(issuer) => (issuer.to_string(), self.key_source(issuer)?),
        };
        let tokens = match self.token_file()? {
            Some(t) => Some(t),
            None => {
                Some(Arc::new(oidc::TokenRequests::new(client.clone())) as Arc<dyn TokenSource>)
            }
        };
        Ok(Some(build(issuer, source, mode, tokens).await?))
    }

    fn key_source(&self, issuer: &str) -> anyhow::Result<Box<dyn JwksSource>> {
        if let Some(path) = &self.oidc_jwks_file {
            return Ok(Box::new(FileJwks(path.clone())));
        }
        let url = url::Url::parse(issuer)
            .with_context(|| format!("--oidc-issuer {issuer:?} is not a URL; give the issuer's https URL (the tokens' iss), or --oidc-jwks-file"))?;
        let ca_pem = match &self.oidc_ca_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read --oidc-ca-file {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Box::new(OidcDiscovery {
            issuer: url,
            ca_pem,
            bearer_file: self.oidc_discovery_token_file.clone(),
        }))
    }

    fn token_file(&self) -> anyhow::Result<Option<Arc<dyn TokenSource>>> {
        match &self.oidc_token_file {
            None => Ok(None),
            Some(p) => {
                let f = TokenFile::new(p.clone())
                    .map_err(|e| anyhow::anyhow!("{e} (--oidc-token-file)"))?;
                Ok(Some(Arc::new(f)))
            }
        }
    }
}

async fn build(
    issuer: String,
    source: Box<dyn JwksSource>,
    mode: DefaultMode,
    tokens: Option<Arc<dyn TokenSource>>,
) -> anyhow::Result<Oidc> {
    let verifier = Verifier::new(issuer.clone(), source);
    let keys = verifier
        .refresh()
        .await
        .map_err(|e| anyhow::anyhow!("OIDC authentication cannot start: {e}"))?;
    tracing::info!(issuer, keys, default_authorization_mode = %mode, sends_tokens = tokens.is_some(), "OIDC authentication is on: the ingress requires bearer tokens");
    Ok(Oidc {
        gate: Some(Arc::new(AuthGate::new(Arc::new(verifier), mode))),
        tokens,
    })
}
