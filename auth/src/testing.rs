//! A token issuer for tests: an ES256 key made on the spot, its JWKS, and tokens signed with
//! it for any subject, audience and lifetime.

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

pub struct TestIssuer {
    pub issuer: String,
    pub kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

impl TestIssuer {
    /// A new key with id `kid` for tokens whose `iss` is `issuer`.
    pub fn new(issuer: &str, kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generating a P-256 key");
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let raw = pair.public_key_raw();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
        });
        TestIssuer {
            issuer: issuer.to_string(),
            kid: kid.to_string(),
            key,
            jwk,
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        self.jwk.clone()
    }

    /// `{"keys": [this key]}`.
    pub fn jwks(&self) -> String {
        serde_json::json!({ "keys": [self.jwk] }).to_string()
    }

    /// A token for `sub` and `aud`, expiring `ttl_secs` from now (negative: expired).
    pub fn token(&self, sub: &str, aud: &str, ttl_secs: i64) -> String {
        let now = now();
        self.sign(serde_json::json!({
            "iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + ttl_secs,
        }))
    }

    /// A token with exactly these claims.
    pub fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        encode(&header, &claims, &self.key).expect("signing a test token")
    }
}
