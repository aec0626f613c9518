//! Verifying OIDC bearer tokens: signature against the issuer's JSON Web Key Set, issuer,
//! audience, expiry (with a small leeway for clock skew).
//!
//! Keys come from a [`JwksSource`]: a file ([`FileJwks`]), the issuer's OIDC discovery
//! document ([`OidcDiscovery`]: `<issuer>/.well-known/openid-configuration` → `jwks_uri`), or
//! one the binary provides (Kubernetes mode reads the API server's through its client). They
//! are read once when the [`Verifier`] starts and again when a token names a key id the cache
//! does not hold (the issuer rotated its keys), at most once per [`MIN_REFRESH`] so that
//! tokens with made-up key ids cannot make Sluice hammer the issuer.
//!
//! HMAC keys (`kty: oct`) are ignored: a shared secret in a published key set would let
//! anyone who can read it mint tokens.

use crate::AuthError;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Shortest time between two reads of the key set.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest wait for the issuer's discovery document or key set.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the issuer's keys come from.
#[async_trait::async_trait]
pub trait JwksSource: Send + Sync {
    /// For messages: the file or URL.
    fn name(&self) -> String;
    /// The key set, as JSON text (`{"keys": [...]}`).
    async fn fetch(&self) -> Result<String, String>;
}

/// A JWKS file, read again on each refresh (a mounted Secret or ConfigMap is updated in place).
pub struct FileJwks(pub PathBuf);

#[async_trait::async_trait]
impl JwksSource for FileJwks {
    fn name(&self) -> String {
        format!("file {}", self.0.display())
    }
    async fn fetch(&self) -> Result<String, String> {
        tokio::fs::read_to_string(&self.0)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The issuer's OIDC discovery: `GET <issuer>/.well-known/openid-configuration`, then its
/// `jwks_uri`.
pub struct OidcDiscovery {
    pub issuer: url::Url,
    /// Extra CA certificates (PEM) to trust for the issuer's HTTPS.
    pub ca_pem: Option<String>,
    /// A file holding a bearer token to fetch with (an API server serves its discovery
    /// only to authenticated callers unless told otherwise); read on each fetch.
    pub bearer_file: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Discovery {
    jwks_uri: String,
}

#[async_trait::async_trait]
impl JwksSource for OidcDiscovery {
    fn name(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.as_str().trim_end_matches('/')
        )
    }
    async fn fetch(&self) -> Result<String, String> {
        let bearer = match &self.bearer_file {
            Some(p) => Some(
                tokio::fs::read_to_string(p)
                    .await
                    .map_err(|e| format!("reading the bearer token file {}: {e}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let ca = self.ca_pem.as_deref();
        let url = url::Url::parse(&self.name()).map_err(|e| e.to_string())?;
        let doc = sluice_delivery::get(&url, ca, bearer.as_deref(), FETCH_TIMEOUT).await?;
        let doc: Discovery = serde_json::from_slice(&doc)
            .map_err(|e| format!("{url}: not an OIDC discovery document: {e}"))?;
        let jwks = url::Url::parse(&doc.jwks_uri)
            .map_err(|e| format!("{url}: jwks_uri {:?}: {e}", doc.jwks_uri))?;
        let body = sluice_delivery::get(&jwks, ca, bearer.as_deref(), FETCH_TIMEOUT).await?;
        String::from_utf8(body.to_vec()).map_err(|_| format!("{jwks}: the key set is not UTF-8"))
    }
}

/// Who sent a request: the verified token's `sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(pub String);

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    alg: Algorithm,
}

/// Verifies tokens of one issuer.
pub struct Verifier {
    issuer: String,
    source: Box<dyn JwksSource>,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the keys were last read (serialises refreshes too).
    refreshed: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Verifier {
    /// A verifier for tokens whose `iss` is `issuer`; call [`Verifier::refresh`] once before
    /// use to find problems with the key source at start-up.
    pub fn new(issuer: impl Into<String>, source: Box<dyn JwksSource>) -> Self {
        Verifier {
            issuer: issuer.into(),
            source,
            keys: RwLock::new(Arc::new(Vec::new())),
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Reads the key set now; returns how many usable keys it holds.
    pub async fn refresh(&self) -> Result<usize, AuthError> {
        let mut last = self.refreshed.lock().await;
        self.fetch_keys(&mut last).await
    }

    async fn fetch_keys(
        &self,
        last: &mut Option<tokio::time::Instant>,
    ) -> Result<usize, AuthError> {
        *last = Some(tokio::time::Instant::now());
        let keys_err = |message: String| AuthError::Keys {
            source_name: self.source.name(),
            message,
        };
        let text = self.source.fetch().await.map_err(keys_err)?;
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| keys_err(format!("not a JSON Web Key Set: {e}")))?;
        let keys = parse_keys(&set);
        if keys.is_empty() {
            return Err(keys_err("the key set holds no RSA, EC or OKP key".into()));
        }
        let n = keys.len();
        *self.keys.write().expect("not poisoned") = Arc::new(keys);
        tracing::debug!(source = %self.source.name(), keys = n, "OIDC keys read");
        Ok(n)
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<(DecodingKey, Algorithm)> {
        let keys = self.keys.read().expect("not poisoned").clone();
        keys.iter()
            .find(|k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => k.alg == alg,
            })
            .map(|k| (k.key.clone(), k.alg))
    }

    /// Checks `token` for `audience`; the subject on success.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Subject, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let kid = header.kid.as_deref();
        let found = match self.find(kid, header.alg) {
            Some(k) => Some(k),
            None => {
                let mut last = self.refreshed.lock().await;
                // Another request may have refreshed while this one waited for the lock.
                if let Some(k) = self.find(kid, header.alg) {
                    Some(k)
                } else if last.is_none_or(|t| t.elapsed() >= MIN_REFRESH) {
                    if let Err(e) = self.fetch_keys(&mut last).await {
                        tracing::warn!(error = %e, "reading the OIDC keys again failed");
                    }
                    self.find(kid, header.alg)
                } else {
                    None
                }
            }
        };
        let (key, alg) = found.ok_or_else(|| AuthError::UnknownKey {
            kid: kid.unwrap_or("(none)").to_string(),
            source_name: self.source.name(),
        })?;
        if header.alg != alg {
            return Err(AuthError::Invalid(format!(
                "its header says {:?} but key {:?} is {alg:?}",
                header.alg,
                kid.unwrap_or("(none)")
            )));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[audience]);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Invalid(match e.kind() {
                K::ExpiredSignature => "it has expired (exp is in the past); get a new token".into(),
                K::ImmatureSignature => "it is not valid yet (nbf is in the future)".into(),
                K::InvalidAudience => format!(
                    "its audience (aud) is not {audience:?}, the audience of the addressable it was sent to"
                ),
                K::InvalidIssuer => format!("its issuer (iss) is not {:?}", self.issuer),
                K::InvalidSignature => "its signature does not verify with the issuer's key".into(),
                K::MissingRequiredClaim(c) => format!("it has no {c:?} claim"),
                _ => e.to_string(),
            })
        })?;
        Ok(Subject(data.claims.sub))
    }
}

/// The usable verification keys of a set (asymmetric, with an algorithm we can tell).
fn parse_keys(set: &JwkSet) -> Vec<Key> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::OctetKey(_), _) => return None,
                (_, Some(a)) => a.to_string().parse::<Algorithm>().ok()?,
                (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
                    jsonwebtoken::jwk::EllipticCurve::P256 => Algorithm::ES256,
                    jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
                    _ => return None,
                },
                (AlgorithmParameters::OctetKeyPair(_), None) => Algorithm::EdDSA,
            };
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return None;
            }
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                key,
                alg,
            })
        })
        .collect()
}
