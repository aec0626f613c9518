//! # sluice-crds
//!
//! The resources users write — Knative's Broker and Trigger, the messaging channels and
//! Subscription, Sequence and Parallel, EventTransform, the PingSource and KafkaSource sources, and v1
//! ConfigMap for broker settings — as typed Rust (`#[derive(CustomResource)]`, so the same types become CRDs), and
//! the one path from resources to Sluice's [`Topology`](sluice_core::topology::Topology):
//!
//! ```text
//! YAML text ──load::parse_yaml──▶ [Loaded] ──convert::build──▶ Topology ──watch──▶ data plane
//!              (types, field paths)            (validation, resolution)
//! ```
//!
//! Embedded mode feeds files through this; Kubernetes mode will feed reflector caches through
//! the same `build`, so both report the same messages.

pub mod convert;
mod convert_flows;
mod convert_transform;
pub mod duration;
pub mod flows;
pub mod load;
pub mod messaging;
pub mod sources;
pub mod transform;
pub mod types;

pub use convert::{build, build_lenient, Defaults};
pub use load::{parse_yaml, parse_yaml_lenient, LoadError, Loaded, Resource};

/// The CustomResourceDefinitions Sluice serves, as multi-document YAML (`sluice crdgen`).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let crds = [
        types::Broker::crd(),
        types::Trigger::crd(),
        sources::PingSource::crd(),
        sources::KafkaSource::crd(),
        messaging::Channel::crd(),
        messaging::InMemoryChannel::crd(),
        messaging::KafkaChannel::crd(),
        messaging::NatsJetStreamChannel::crd(),
        messaging::Subscription::crd(),
        flows::Sequence::crd(),
        flows::Parallel::crd(),
        transform::EventTransform::crd(),
    ];
    crds.iter()
        .map(|c| serde_yaml::to_string(c).expect("CRDs serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}
