//! The delivery policy: validated once from a Knative `DeliverySpec` (in `sluice-crds`) and
//! read by the delivery loop for every attempt.

use std::time::Duration;
use url::Url;

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
    pub dead_letter_sink: Option<Url>,
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
