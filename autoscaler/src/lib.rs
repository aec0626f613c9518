//! # sluice-autoscaler
//!
//! Request-based autoscaling of the sinks Sluice runs (SEMANTICS.md §7, Knative Serving's KPA),
//! integrated with delivery:
//!
//! ```text
//! request ──▶ activator (gate: queue while at zero, in-flight ≤ ready × containerConcurrency)
//!                │ demand (in flight + queued + channel backlog)   ▲ ready replicas
//!                ▼                                        │
//!          metrics windows ──▶ KPA decision (pure) ──▶ scaler (local processes)
//! ```
//!
//! - [`spec`]: `autoscaling.knative.dev/*` annotations → a validated `ScalingSpec`;
//! - [`demand`]: what the windows record — requests in flight and held, plus the events
//!   waiting in channels for the Service (its backlog);
//! - [`metrics`]: time-weighted concurrency in one-second buckets, averaged over the stable
//!   and panic windows;
//! - [`kpa`]: the decision, a pure function of the observation and the time;
//! - [`plan`]: a decision → replicas to start, abandon or drain (pure);
//! - [`gate`]: the activator's state machine (pure); [`activator`]: its async wrapper;
//! - [`local`]: replicas as local processes, and the proxy that sends requests through the
//!   activator (embedded mode's `serving.knative.dev/v1` Service).
//!
//! Only tokio time is used, so every loop is tested with paused time.

pub mod activator;
pub mod demand;
pub mod gate;
pub mod kpa;
pub mod local;
pub mod metrics;
pub mod plan;
pub mod spec;

pub use activator::{Activator, Lease, Load, Refused};
pub use gate::{Gate, DEFAULT_QUEUE_CAPACITY};
pub use kpa::{Decider, Decision, Observation};
pub use local::{LocalServices, ServiceStats};
