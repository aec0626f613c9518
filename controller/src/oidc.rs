//! OIDC in Kubernetes mode (SEMANTICS.md §11), with the API server as the identity provider:
//!
//! - [`TokenRequests`]: senders' tokens from the TokenRequest API
//!   (`POST /api/v1/namespaces/<ns>/serviceaccounts/<sa>/token`, audience = the target's),
//!   cached until 80 % of their lifetime has passed;
//! - [`ApiServerJwks`]: the keys tokens are verified with, from the API server's own OIDC
//!   discovery (`/.well-known/openid-configuration` → `jwks_uri`) read through the client, so
//!   the data plane needs no extra CA or credentials for it (its ServiceAccount may read
//!   them: the `system:service-account-issuer-discovery` ClusterRole is bound to all
//!   ServiceAccounts by default);
//! - [`features`]: the `config-features` ConfigMap's `authentication-oidc` and
//!   `default-authorization-mode`;
//! - [`sender_accounts`] / [`apply_service_account`]: the controller creates each sender's
//!   ServiceAccount `<name>-oidc-<group>-<kind>` (owned by the sender, so it goes with it),
//!   as Knative does, while OIDC is on.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::Client;
use sluice_delivery::{Identity, TokenSource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lifetime asked for tokens (the API server may shorten it; its minimum is 10 minutes).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Cached tokens by identity and audience, with when to ask again.
type TokenCache = HashMap<(Identity, String), (Arc<str>, tokio::time::Instant)>;

/// Tokens of senders' ServiceAccounts, from the TokenRequest API.
pub struct TokenRequests {
    client: Client,
    cache: Mutex<TokenCache>,
}

impl std::fmt::Debug for TokenRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequests").finish_non_exhaustive()
    }
}

impl TokenRequests {
    pub fn new(client: Client) -> Self {
        TokenRequests {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

/// When to ask again for a token issued now and valid for `lifetime`: after 80 % of it.
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.8)
}

#[async_trait::async_trait]
impl TokenSource for TokenRequests {
    async fn token(&self, identity: &Identity, audience: &str) -> Result<Arc<str>, String> {
        let key = (identity.clone(), audience.to_string());
        if let Some((token, until)) = self.cache.lock().expect("not poisoned").get(&key) {
            if tokio::time::Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &identity.namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_string()]),
                expiration_seconds: Some(TOKEN_LIFETIME.as_secs() as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = api
            .create_token_request(&identity.service_account, &PostParams::default(), &request)
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 404 => format!(
                    "ServiceAccount {}/{} does not exist; the controller creates it for each sender while authentication-oidc is enabled (or create it yourself)",
                    identity.namespace, identity.service_account
                ),
                kube::Error::Api(s) if s.code == 403 => format!(
                    "the data plane may not create tokens for {}/{} ({}); grant it `create` on `serviceaccounts/token` (deploy/rbac-dataplane.yaml)",
                    identity.namespace, identity.service_account, s.message
                ),
                _ => format!("TokenRequest for {}/{}: {e}", identity.namespace, identity.service_account),
            })?;
        let status = answer
            .status
            .ok_or("the API server answered the TokenRequest without a token")?;
        let lifetime = status
            .expiration_timestamp
            .and_then(|t| {
                Duration::try_from(t.0.duration_since(k8s_openapi::jiff::Timestamp::now())).ok()
            })
            .unwrap_or(Duration::ZERO);
        let token: Arc<str> = status
            .token
            .filter(|t| !t.is_empty())
            .ok_or("the API server answered the TokenRequest without a token")?
            .into();
        let until = tokio::time::Instant::now() + refresh_after(lifetime);
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(key, (token.clone(), until));
        Ok(token)
    }
}

/// The API server's OIDC keys, read through `client`.
pub struct ApiServerJwks {
    client: Client,
}

impl ApiServerJwks {
    pub fn new(client: Client) -> Self {
        ApiServerJwks { client }
    }
}

#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

async fn discovery(client: &Client) -> Result<Discovery, String> {
    let req = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client
        .request_text(req)
        .await
        .map_err(|e| format!("GET /.well-known/openid-configuration: {e}"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the API server's OIDC discovery document: {e}"))
}

/// The issuer (`iss`) of the API server's ServiceAccount tokens
/// (its `--service-account-issuer`).
pub async fn api_server_issuer(client: &Client) -> Result<String, String> {
    Ok(discovery(client).await?.issuer)
}

#[async_trait::async_trait]
impl sluice_auth::JwksSource for ApiServerJwks {
    fn name(&self) -> String {
        "the Kubernetes API server's /.well-known/openid-configuration".into()
    }
    async fn fetch(&self) -> Result<String, String> {
        let doc = discovery(&self.client).await?;
        // The keys are served by this API server; read them through the client (its
        // credentials and CA) whatever host the document names.
        let path = url::Url::parse(&doc.jwks_uri)
            .map(|u| u.path().to_string())
            .unwrap_or_else(|_| "/openid/v1/jwks".into());
        let req = http::Request::get(path.as_str())
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request_text(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))
    }
}

/// What `config-features` says about OIDC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Features {
    pub authentication_oidc: bool,
    pub default_authorization_mode: sluice_auth::DefaultMode,
}

/// Reads `config-features` from `namespace` (missing: everything off, the defaults).
pub async fn features(client: &Client, namespace: &str) -> Result<Features, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api
        .get_opt("config-features")
        .await
        .map_err(|e| format!("reading ConfigMap {namespace}/config-features: {e}"))?;
    let data = cm.and_then(|c| c.data).unwrap_or_default();
    parse_features(&data).map_err(|e| format!("ConfigMap {namespace}/config-features: {e}"))
}

/// [`Features`] from the `config-features` ConfigMap among `resources` (a watched
/// snapshot); missing or invalid: the defaults (OIDC off), with a warning for invalid.
pub fn features_in(resources: &[sluice_crds::Loaded], namespace: &str) -> Features {
    let cm = resources.iter().find_map(|l| match &l.resource {
        sluice_crds::Resource::ConfigMap(cm)
            if l.namespace == namespace && l.name == "config-features" =>
        {
            Some(cm)
        }
        _ => None,
    });
    let data = cm.and_then(|c| c.data.clone()).unwrap_or_default();
    parse_features(&data).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ConfigMap {namespace}/config-features is invalid; OIDC stays off");
        Features::default()
    })
}

/// `config-features` data to [`Features`]; values are case-insensitive.
pub fn parse_features(
    data: &std::collections::BTreeMap<String, String>,
) -> Result<Features, String> {
    let oidc = match data
        .get("authentication-oidc")
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => false,
        Some(v) if v == "enabled" => true,
        Some(v) if v == "disabled" => false,
        Some(v) => {
            return Err(format!(
                "authentication-oidc {v:?} is not enabled or disabled"
            ))
        }
    };
    let mode = match data.get("default-authorization-mode") {
        None => Default::default(),
        Some(v) => v.parse()?,
    };
    Ok(Features {
        authentication_oidc: oidc,
        default_authorization_mode: mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_case_insensitively() {
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(parse_features(&m(&[])), Ok(Features::default()));
        let f = parse_features(&m(&[
            ("authentication-oidc", "Enabled"),
            ("default-authorization-mode", "Deny-All"),
        ]))
        .unwrap();
        assert!(f.authentication_oidc);
        assert_eq!(
            f.default_authorization_mode,
            sluice_auth::DefaultMode::DenyAll
        );
        assert!(parse_features(&m(&[("authentication-oidc", "yes")]))
            .unwrap_err()
            .contains("enabled or disabled"));
        assert!(parse_features(&m(&[("default-authorization-mode", "open")])).is_err());
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
    }
}

/// A ServiceAccount a sender sends as, and the sender that owns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SenderAccount {
    pub namespace: String,
    pub name: String,
    pub owner_api_version: String,
    pub owner_kind: String,
    pub owner_name: String,
    pub owner_uid: String,
}

/// The OIDC ServiceAccounts of the senders among `resources` (Triggers, Subscriptions and
/// sources that have a uid, i.e. were read from the cluster).
pub fn sender_accounts(resources: &[sluice_crds::Loaded]) -> Vec<SenderAccount> {
    use sluice_crds::Resource as R;
    resources
        .iter()
        .filter_map(|l| {
            let (meta, api_version) = match &l.resource {
                R::Trigger(o) => (&o.metadata, "eventing.knative.dev/v1"),
                R::Subscription(o) => (&o.metadata, "messaging.knative.dev/v1"),
                R::PingSource(o) => (&o.metadata, "sources.knative.dev/v1"),
                R::KafkaSource(o) => (&o.metadata, "sources.knative.dev/v1beta1"),
                R::ApiServerSource(o) => (&o.metadata, "sources.knative.dev/v1"),
                _ => return None,
            };
            let uid = meta.uid.clone()?;
            Some(SenderAccount {
                namespace: l.namespace.clone(),
                name: sluice_auth::identity::service_account_of(&l.object()),
                owner_api_version: api_version.into(),
                owner_kind: l.resource.kind().into(),
                owner_name: l.name.clone(),
                owner_uid: uid,
            })
        })
        .collect()
}

/// Creates (server-side apply) a sender's ServiceAccount, owned by the sender.
pub async fn apply_service_account(client: &Client, a: &SenderAccount) -> Result<(), kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &a.namespace);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": a.name,
            "namespace": a.namespace,
            "labels": {"app.kubernetes.io/managed-by": "sluice"},
            "ownerReferences": [{
                "apiVersion": a.owner_api_version,
                "kind": a.owner_kind,
                "name": a.owner_name,
                "uid": a.owner_uid,
                "controller": true,
                "blockOwnerDeletion": false,
            }],
        },
    });
    api.patch(
        &a.name,
        &kube::api::PatchParams::apply("sluice-controller").force(),
        &kube::api::Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}
