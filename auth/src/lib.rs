//! # sluice-auth
//!
//! Who may send events to an addressable (SEMANTICS.md §11), in two steps the ingress runs
//! before it stores anything while OIDC authentication is on:
//!
//! ```text
//! Authorization: Bearer <jwt> ──verify::Verifier──▶ subject ──policy::authorize──▶ Allow | Deny
//!   (missing or invalid: 401)     (issuer, audience,        (EventPolicies that apply to
//!                                  expiry, JWKS signature)    the target, default mode: 403)
//! ```
//!
//! - [`verify`] checks a token: its signature against the issuer's JSON Web Key Set (from a
//!   file, from the issuer's OIDC discovery document, or any [`verify::JwksSource`], such as
//!   the Kubernetes API server through its client), its issuer, its audience (the target's,
//!   [`identity::audience`]) and its expiry. Keys are cached and fetched again when a token
//!   names a key id the cache does not hold (the issuer rotated its keys).
//! - [`policy`] is the authorization decision as a pure function over the compiled
//!   EventPolicies of the topology (`sluice_core::topology::EventPolicy`), table-tested
//!   against §11.
//! - [`identity`] names things: audiences, the ServiceAccount a sender uses, its subject.
//!
//! Sending tokens is not here: `sluice-delivery` adds them, from a
//! `sluice_delivery::TokenSource`.

pub mod identity;
pub mod policy;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;

pub use policy::{authorize, Decision, DefaultMode};
pub use verify::{FileJwks, JwksSource, OidcDiscovery, Subject, Verifier};

/// Why a request's token was not accepted (each is a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: OIDC authentication is on, send `Authorization: Bearer <token>` with a token for audience {audience:?}")]
    Missing { audience: String },
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with key {kid:?}, which the issuer's key set ({source_name}) does not hold")]
    UnknownKey { kid: String, source_name: String },
    #[error("the token was rejected: {0}")]
    Invalid(String),
    #[error("the issuer's keys could not be read from {source_name}: {message}; check the JWKS file or the issuer URL (--oidc-issuer / --oidc-jwks-file)")]
    Keys {
        source_name: String,
        message: String,
    },
}
