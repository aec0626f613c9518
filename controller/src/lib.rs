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
//! table-tested; [`run`] and [`cluster`] are the kube-rs wiring around them. For the kinds
//! Sluice runs itself (brokers, channels, flows, Ping/Kafka/ApiServer sources) it creates no
//! Kubernetes objects (flows compile to its own graph, storage is made by the data plane), so
//! no finalizers are needed: deleting an object just removes it from the next snapshot.
//!
//! The kinds whose work pods do are the exception, each in its own module, called from the
//! loop in [`run::run`]: a ContainerSource becomes a Deployment ([`containersource`], owned by the
//! source and deleted with it), a SinkBinding writes `K_SINK` into its subjects' pod
//! templates ([`sinkbinding`], server-side apply with a field manager per binding, released
//! without a finalizer). Both take their sink from `sluice_crds::bound_sinks`, the same
//! resolver as everything else. The data plane watches neither kind
//! ([`cluster::controller_kinds`] vs [`cluster::kinds`]).

pub mod cluster;
pub mod conditions;
pub mod containersource;
pub mod dataplane;
pub mod features;
pub mod leader;
pub mod oidc;
pub mod resolve;
pub mod run;
pub mod sinkbinding;
pub mod status;

pub use cluster::Cluster;
pub use run::{run, ControllerConfig};
pub use status::Addressing;
