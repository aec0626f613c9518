//! # sluice-crds
//!
//! The resources users write — Knative's Broker and Trigger, the messaging channels and
//! Subscription, Sequence and Parallel, EventTransform, EventPolicy (compiled for `sluice-auth`), the PingSource and KafkaSource sources, and v1
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
//!
//! Kubernetes mode also serves kinds whose work is done by pods (ContainerSource,
//! SinkBinding: the controller writes `K_SINK` into their pod templates, from
//! [`bound_sinks`]) or that do not run yet (EventType): their types are here so that their
//! CRDs ([`crds`]) accept Knative YAML unchanged and the controller can give them a status.

pub mod convert;
mod convert_bindings;
mod convert_flows;
mod convert_transform;
pub mod crds;
pub mod duration;
pub mod eventpolicy;
pub mod eventtype;
pub mod flows;
pub mod k8s_sources;
pub mod load;
pub mod messaging;
pub mod serving;
pub mod sources;
pub mod transform;
pub mod types;

pub use convert::{build, build_lenient, external_refs, AddressableRef, Defaults};
pub use convert_bindings::{bound_sinks, k_ce_overrides, BoundSink, CONTAINER_SOURCE_SUBJECT};
pub use crds::{crd_files, crds, crds_yaml, write_crd_files};
pub use load::{parse_yaml, parse_yaml_lenient, LoadError, Loaded, Resource};
