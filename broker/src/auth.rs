//! OIDC authentication and EventPolicy authorization at the ingress (SEMANTICS.md §11), when
//! `authentication-oidc` is on.
//!
//! ```text
//! request head ──[AuthGate::authenticate]──▶ subject ──body, decode──▶ events
//!   401 + WWW-Authenticate                     ──[AuthGate::authorize]──▶ 403 | publish
//! ```
//!
//! The token is checked before the body is read, so an anonymous client cannot make the
//! ingress buffer a body; the EventPolicies' `filters` need the events, so authorization
//! comes after decoding. With OIDC off the ingress holds no gate and pays one `Option`
//! check per request.

use arc_swap::ArcSwap;
use http::HeaderMap;
use sluice_auth::{identity, AuthError, Decision, DefaultMode, Verifier};
use sluice_core::topology::{EventPolicy, Kind, ObjectRef, Topology};
use sluice_core::Event;
use std::collections::HashMap;
use std::sync::Arc;

/// The policies and audiences of one topology.
#[derive(Default)]
struct Snapshot {
    /// Per namespace: the EventPolicies there.
    policies: HashMap<String, Vec<Arc<EventPolicy>>>,
    /// The audience of each target the ingress serves, by its ingress key
    /// (`ObjectRef::broker`, `ObjectRef::channel`, EventTransform).
    audiences: HashMap<ObjectRef, String>,
}

/// Authentication and authorization for the ingress.
pub struct AuthGate {
    verifier: Arc<Verifier>,
    mode: DefaultMode,
    snapshot: ArcSwap<Snapshot>,
}

impl AuthGate {
    pub fn new(verifier: Arc<Verifier>, mode: DefaultMode) -> Self {
        AuthGate {
            verifier,
            mode,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
        }
    }

    pub fn mode(&self) -> DefaultMode {
        self.mode
    }

    /// Takes the EventPolicies and the addressables' audiences of a new topology.
    pub fn apply(&self, t: &Topology) {
        let mut policies: HashMap<String, Vec<Arc<EventPolicy>>> = HashMap::new();
        for p in t.event_policies.values() {
            policies
                .entry(p.key.namespace.clone())
                .or_default()
                .push(p.clone());
        }
        let mut audiences = HashMap::new();
        for key in t.brokers.keys() {
            let b = ObjectRef::broker(key.clone());
            audiences.insert(b.clone(), identity::audience_of(&b));
        }
        for c in t.channels.values() {
            // Tokens name the channel's own kind (InMemoryChannel, Channel, ...).
            audiences.insert(
                ObjectRef::channel(c.key.clone()),
                identity::audience_of(&c.object),
            );
        }
        for key in t.transforms.keys() {
            let o = ObjectRef::new(Kind::EventTransform, key.clone());
            audiences.insert(o.clone(), identity::audience_of(&o));
        }
        self.snapshot.store(Arc::new(Snapshot {
            policies,
            audiences,
        }));
    }

    /// The audience tokens for `target` must carry.
    pub fn audience(&self, target: &ObjectRef) -> String {
        self.snapshot
            .load()
            .audiences
            .get(target)
            .cloned()
            .unwrap_or_else(|| identity::audience_of(target))
    }

    /// The subject of the request's valid bearer token.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        target: &ObjectRef,
    ) -> Result<String, AuthError> {
        let audience = self.audience(target);
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(AuthError::Missing { audience });
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        Ok(self.verifier.verify(token, &audience).await?.0)
    }

    /// Whether `subject` may send every one of `events` to `target`: the first refusal.
    pub fn authorize(&self, target: &ObjectRef, subject: &str, events: &[Event]) -> Decision {
        let snapshot = self.snapshot.load();
        let policies = snapshot
            .policies
            .get(&target.key.namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for event in events {
            let d = sluice_auth::authorize(
                target,
                subject,
                event,
                policies.iter().map(|p| p.as_ref()),
                self.mode,
            );
            if d != Decision::Allow {
                return d;
            }
        }
        Decision::Allow
    }
}
