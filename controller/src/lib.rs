//! # sluice-controller
//!
//! Kubernetes mode. Users `kubectl apply` Knative's YAML; this crate watches those objects and
//!
//! - writes each one's `status` the way Knative does (conditions, `address`, `subscriberUri`,
//!   `observedGeneration`; SEMANTICS.md §8), as `sluice controller`, with one leader among the
//!   replicas ([`leader`]);
//! - gives `sluice dataplane` replicas the same `Vec<Loaded>` that embedded mode reads from
//!   files ([`cluster`]), so both modes build their topology with `sluice_crds::build_lenient`.
//!
//! ```text
//! API server ──watch──▶ cluster::Cluster ──snapshot──▶ build_lenient ──▶ Topology ──▶ data plane
//!                                                        │
//!             data-plane replicas' /topology ──▶ dataplane::DataplaneView
//!                                                        ▼
//!                                      status::desired (pure) ──conditions──▶ patch /status
//! ```
//!
//! The decisions ([`status::desired`], [`conditions`], [`leader::decide`]) are pure and
//! table-tested; [`run`] and [`cluster`] are the kube-rs wiring around them. Sluice creates
//! no Kubernetes objects of its own for these resources (flows compile to its own graph,
//! storage is made by the data plane), so no finalizers are needed: deleting an object just
//! removes it from the next snapshot.

pub mod cluster;
pub mod conditions;
pub mod dataplane;
pub mod leader;
pub mod oidc;
pub mod resolve;
pub mod run;
pub mod status;

pub use cluster::Cluster;
pub use run::{run, ControllerConfig};
pub use status::Addressing;
