//! The delivery policy: validated once from a Knative `DeliverySpec` (in `sluice-crds`) and
//! read by the delivery loop for every attempt.

use std::fmt;
use std::time::Duration;
use url::Url;

/// A destination URL checked and parsed once, at load time: the delivery loop sends to
/// [`Endpoint::uri`] without re-parsing it for every attempt.
///
/// An `https` endpoint is verified against the system's roots, plus the PEM certificates of
/// its Destination's `CACerts` when it has them ([`Endpoint::with_ca_certs`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Url,
    uri: http::Uri,
    ca_certs: Option<std::sync::Arc<str>>,
    /// The OIDC audience of tokens for this destination (its Destination's `audience`, or the
    /// audience of a Sluice addressable while OIDC is on): senders with an identity attach a
    /// token for it.
    audience: Option<std::sync::Arc<str>>,
}

impl Endpoint {
    /// Checks that Sluice can send to `url` (`http` or `https`, with a host).
    pub fn new(url: Url) -> Result<Self, String> {
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(format!("{url}: scheme `{other}` is not http or https")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{url}: the URL has no host"));
        }
        let uri = url
            .as_str()
            .parse::<http::Uri>()
            .map_err(|e| format!("{url}: not a valid request URI: {e}"))?;
        Ok(Endpoint {
            url,
            uri,
            ca_certs: None,
            audience: None,
        })
    }

    /// The same endpoint, trusting the CA certificates in `pem` (a Destination's `CACerts`)
    /// besides the system's roots. The PEM is checked here, once: it must hold at least one
    /// certificate.
    pub fn with_ca_certs(mut self, pem: &str) -> Result<Self, String> {
        let blocks = pem.matches("-----BEGIN CERTIFICATE-----").count();
        if blocks == 0 || blocks != pem.matches("-----END CERTIFICATE-----").count() {
            return Err(
                "CACerts must hold PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)"
                    .into(),
            );
        }
        if self.url.scheme() != "https" {
            return Err(format!(
                "{}: CACerts is set but the URL is not https",
                self.url
            ));
        }
        self.ca_certs = Some(pem.into());
        Ok(self)
    }

    /// The same endpoint, whose receiver wants OIDC tokens for `audience`.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The OIDC audience tokens sent here must carry, if the receiver wants tokens.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The extra CA certificates (PEM) this endpoint's server is verified with.
    pub fn ca_certs(&self) -> Option<&str> {
        self.ca_certs.as_deref()
    }
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let url = Url::parse(s).map_err(|e| format!("{s:?} is not an absolute URL ({e})"))?;
        Endpoint::new(url)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.url.as_str(), f)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// How waits between retries grow (SEMANTICS.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffPolicy {
    /// Wait before retry k is `delay·k`.
    Linear,
    /// Wait before retry k is `delay·2^(k-1)`.
    Exponential,
}

/// How an event is put on the wire to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Binary content mode (`ce-*` headers), the default.
    #[default]
    Binary,
    /// Structured content mode (`application/cloudevents+json`), `delivery.format: json`.
    Json,
}

/// A validated delivery policy. Every duration is already parsed and every URL resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Retries after the first attempt: attempts = retry + 1.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    /// Cap on each single wait (Sluice, beyond Knative).
    pub backoff_max: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Upper bound on how long a `Retry-After` header may make us wait; `None` ignores it.
    pub retry_after_max: Option<Duration>,
    pub dead_letter_sink: Option<Endpoint>,
    pub format: Format,
}

impl DeliveryPolicy {
    /// Knative's broker default: retry 10, exponential, PT0.2S.
    pub const DEFAULT_RETRY: u32 = 10;
    pub const DEFAULT_BACKOFF_DELAY: Duration = Duration::from_millis(200);
    /// Default cap on a single backoff wait: PT1H.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(3600);
    /// Default per-attempt timeout. Knative sets none; an unbounded attempt would hold a
    /// delivery slot forever behind a hung sink, so Sluice bounds it.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            retry: Self::DEFAULT_RETRY,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Self::DEFAULT_BACKOFF_DELAY,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            timeout: Self::DEFAULT_TIMEOUT,
            retry_after_max: None,
            dead_letter_sink: None,
            format: Format::Binary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_once() {
        let ok = Endpoint::new(Url::parse("http://127.0.0.1:8080/a?b=c").unwrap()).unwrap();
        assert_eq!(ok.uri().path_and_query().unwrap().as_str(), "/a?b=c");
        // Issue 9 item 5 refused https; there is a TLS client now.
        assert!(Endpoint::new(Url::parse("https://example.com/").unwrap()).is_ok());
        let e = Endpoint::new(Url::parse("https://example.com/").unwrap())
            .unwrap()
            .with_ca_certs("not pem")
            .unwrap_err();
        assert!(e.contains("CACerts must hold PEM certificates"), "{e}");
        assert!(Endpoint::new(Url::parse("ftp://example.com/").unwrap()).is_err());
    }
}
