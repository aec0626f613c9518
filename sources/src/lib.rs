//! # sluice-sources
//!
//! Sources turn signals from outside the mesh into CloudEvents and send them to a sink
//! through `sluice-delivery` (retries, backoff, dead letters), never around it:
//!
//! ```text
//!                         ┌─ PingSource:  Clock ─▶ cron tick ─▶ ping_event ─┐
//! Topology ──Sources::apply┤                                                 ├─▶ Sender::deliver ─▶ sink
//!                         └─ KafkaSource: topic ─▶ record ─▶ record_to_event ┘     (a Broker's ingress,
//!                                          ▲                        │               a Service, a URI)
//!                                          └── commit offset ◀──────┘ accepted or dead-lettered
//! ```
//!
//! - [`ping`]: one event per tick of a cron schedule (the schedule itself is compiled by
//!   `sluice-schedule` when the resources are loaded); the loop runs on tokio time with a
//!   pluggable wall [`clock`], so tests run days of schedule in paused time.
//! - [`record`]: the pure mapping of a Kafka record to a CloudEvent (pass-through for records
//!   that already are CloudEvents, `dev.knative.kafka.event` for the others).
//! - `kafka` (feature `kafka`): the KafkaSource consumer: partitions assigned directly, one
//!   worker per partition (in order, or concurrently for `ordering: unordered`), offsets
//!   committed only up to the first record not yet delivered or dead-lettered.
//!
//! - `apiserver` (feature `apiserver`): the ApiServerSource: watches of a Kubernetes API
//!   server (the one of [`Sources::with_kube`]) turned into `dev.knative.apiserver.*` events;
//!   the module says why this crate, and not only the controller, uses `kube`.
//!
//! - [`container`]: a ContainerSource's first container run as a local process (embedded
//!   mode) with `K_SINK` and `K_CE_OVERRIDES`, restarted with backoff when it exits.
//!
//! [`Sources`] is the supervisor, the sources' counterpart of the dispatcher's `Dataplane`:
//! [`Sources::apply`] starts what is new, restarts what changed (by fingerprint) and stops
//! what was removed; unchanged sources keep running across reloads. It counts
//! `sluice_source_events_{produced,delivered,dead_lettered,failed}_total` by namespace,
//! source and kind.

#[cfg(feature = "apiserver")]
pub mod apiserver;
pub mod clock;
pub mod container;
#[cfg(feature = "kafka")]
mod kafka;
pub mod ping;
pub mod record;

use clock::{Clock, SystemClock};
use prometheus_client::metrics::counter::Counter;
use sluice_core::metrics::{Metrics, SourceLabels};
use sluice_core::topology::{Key, Topology};
use sluice_delivery::{Delivered, Report, Sender};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Longest a stopping source may take (a KafkaSource commits its finished offsets first).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What can go wrong running a source. Sources retry on their own; these end up in logs and
/// in [`SourceStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The Kafka cluster could not be reached or refused a request.
    #[error("kafka cluster {servers}: {what}: {reason}")]
    Kafka {
        servers: String,
        what: String,
        reason: String,
    },
    /// A topic the source reads does not exist (or has no partitions yet).
    #[error("topic `{0}` does not exist on the Kafka cluster (create it, or check spec.topics)")]
    MissingTopic(String),
    /// This build has no Kubernetes client.
    #[error(
        "this build of Sluice has no ApiServerSource support; rebuild with the `apiserver` feature"
    )]
    ApiServerNotCompiled,
    /// This build has no Kafka client.
    #[error("this build of Sluice has no Kafka support; rebuild with the `kafka` feature")]
    KafkaNotCompiled,
}

/// The kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Ping,
    Kafka,
    ApiServer,
    Container,
}

impl Kind {
    /// The resource kind, as in YAML and in the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ping => "PingSource",
            Kind::Kafka => "KafkaSource",
            Kind::ApiServer => "ApiServerSource",
            Kind::Container => "ContainerSource",
        }
    }
}

/// Whether a source is doing its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Why not (the Kafka cluster is unreachable, a topic is missing, …); it keeps retrying.
    NotReady(String),
    /// The identity it runs as lacks a permission (an ApiServerSource: which verbs on which
    /// resource); it checks again from time to time.
    Denied(String),
}

/// A source's state, for `/topology` and `sluice get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    pub kind: Kind,
    pub key: Key,
    pub sink: Url,
    pub health: Health,
}

/// What every running source shares.
#[derive(Clone)]
pub(crate) struct Env {
    pub sender: Sender,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

impl Env {
    /// This environment for one source: its sender sends as the source's OIDC identity
    /// (`<name>-oidc-sources.knative.dev-<kind>`, SEMANTICS.md §11).
    fn for_source(&self, kind: sluice_core::topology::Kind, key: &Key) -> Env {
        let object = sluice_core::topology::ObjectRef::new(kind, key.clone());
        Env {
            sender: self.sender.with_identity(sluice_delivery::Identity {
                namespace: key.namespace.clone(),
                service_account: sluice_auth::identity::service_account_of(&object),
            }),
            ..self.clone()
        }
    }
}

/// A source's counters, resolved once when it starts.
#[derive(Clone)]
pub(crate) struct Counters {
    pub produced: Counter,
    pub delivered: Counter,
    pub dead_lettered: Counter,
    pub failed: Counter,
}

impl Counters {
    pub fn new(metrics: &Metrics, key: &Key, kind: &str) -> Self {
        let labels = SourceLabels::new(&key.namespace, &key.name, kind);
        Counters {
            produced: metrics.source_produced.get_or_create(&labels).clone(),
            delivered: metrics.source_delivered.get_or_create(&labels).clone(),
            dead_lettered: metrics.source_dead_lettered.get_or_create(&labels).clone(),
            failed: metrics.source_failed.get_or_create(&labels).clone(),
        }
    }

    /// Counts how a delivery ended.
    pub fn count(&self, report: &Report) {
        match report.result {
            Delivered::Ok { .. } => self.delivered.inc(),
            Delivered::DeadLettered { .. } => self.dead_lettered.inc(),
            Delivered::Dropped { .. } | Delivered::DeadLetterFailed { .. } => self.failed.inc(),
        };
    }
}

/// Logs a delivery that did not reach the sink.
/// The `source emit` span of an event a source made (`Span::none()` with tracing off, without
/// formatting the source's name). `parent`: the context the input carried, if any.
pub(crate) fn emit_span(
    kind: &str,
    source: &Key,
    event: &sluice_core::Event,
    parent: Option<opentelemetry::trace::SpanContext>,
) -> tracing::Span {
    if !sluice_core::trace::enabled() {
        return tracing::Span::none();
    }
    sluice_core::trace::source_emit(kind, &source.to_string(), event, parent)
}

pub(crate) fn log_failure(source: &Key, id: &str, report: &Report) {
    match &report.result {
        Delivered::Ok { .. } => {}
        Delivered::DeadLettered { last } => {
            tracing::info!(%source, id, attempts = report.attempts, status = ?last.status, reason = %last.reason, "event dead-lettered")
        }
        Delivered::Dropped { last } => {
            tracing::warn!(%source, id, attempts = report.attempts, status = ?last.status, reason = %last.reason, "event dropped: the sink failed and there is no dead-letter sink")
        }
        Delivered::DeadLetterFailed { last, dead_letter } => {
            tracing::warn!(%source, id, attempts = report.attempts, status = ?last.status, reason = %last.reason, dead_letter = %dead_letter.reason, "the sink and the dead-letter sink both failed")
        }
    }
}

struct Running {
    fingerprint: u64,
    sink: Url,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    health: Arc<Mutex<Health>>,
}

/// The running sources. See the crate docs.
pub struct Sources {
    env: Env,
    running: BTreeMap<(Kind, Key), Running>,
    /// The API server ApiServerSources watch (`None`: they say they have none).
    #[cfg(feature = "apiserver")]
    kube: Option<kube::Config>,
    /// ApiServerSources' watch states, kept across their restarts.
    #[cfg(feature = "apiserver")]
    memory: apiserver::Memory,
}

impl Sources {
    /// Sources on the system clock.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_clock(metrics, Arc::new(SystemClock))
    }

    /// Sources whose schedules read `clock` (tests use [`clock::TokioClock`]).
    pub fn with_clock(metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        Sources {
            env: Env {
                sender: Sender::new(),
                metrics,
                clock,
            },
            running: BTreeMap::new(),
            #[cfg(feature = "apiserver")]
            kube: None,
            #[cfg(feature = "apiserver")]
            memory: Default::default(),
        }
    }

    /// Sources send OIDC tokens from `tokens` to destinations that want them.
    pub fn with_tokens(mut self, tokens: Arc<dyn sluice_delivery::TokenSource>) -> Self {
        self.env.sender = self.env.sender.clone().with_tokens(tokens);
        self
    }

    /// ApiServerSources watch the API server of `config` (as its identity, or impersonating
    /// their `serviceAccountName`).
    #[cfg(feature = "apiserver")]
    pub fn with_kube(mut self, config: Option<kube::Config>) -> Self {
        self.kube = config;
        self
    }

    /// Makes the running sources match `topology`: unchanged sources (same fingerprint) keep
    /// running, changed ones are restarted, removed ones stopped, new ones started.
    pub async fn apply(&mut self, topology: &Topology) {
        let wanted = |kind: Kind, key: &Key| match kind {
            Kind::Ping => topology.ping_sources.get(key).map(|s| s.fingerprint),
            Kind::Kafka => topology.kafka_sources.get(key).map(|s| s.fingerprint),
            Kind::ApiServer => topology.apiserver_sources.get(key).map(|s| s.fingerprint),
            Kind::Container => topology.container_sources.get(key).map(|s| s.fingerprint),
        };
        let stale: Vec<_> = self
            .running
            .iter()
            .filter(|((kind, key), r)| wanted(*kind, key) != Some(r.fingerprint))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(r) = self.running.remove(&id) {
                stop(&id, r).await;
            }
        }
        for (key, spec) in &topology.ping_sources {
            let id = (Kind::Ping, key.clone());
            if self.running.contains_key(&id) {
                continue;
            }
            let cancel = CancellationToken::new();
            let env = self
                .env
                .for_source(sluice_core::topology::Kind::PingSource, key);
            let task = tokio::spawn(ping::run(spec.clone(), env, cancel.clone()));
            self.running.insert(
                id,
                Running {
                    fingerprint: spec.fingerprint,
                    sink: spec.sink.url().clone(),
                    cancel,
                    task: Some(task),
                    health: Arc::new(Mutex::new(Health::Ready)),
                },
            );
        }
        for (key, spec) in &topology.kafka_sources {
            let id = (Kind::Kafka, key.clone());
            if self.running.contains_key(&id) {
                continue;
            }
            let cancel = CancellationToken::new();
            let health = Arc::new(Mutex::new(Health::NotReady("starting".into())));
            #[cfg(feature = "kafka")]
            let task = Some(tokio::spawn(kafka::run(
                spec.clone(),
                self.env
                    .for_source(sluice_core::topology::Kind::KafkaSource, key),
                cancel.clone(),
                health.clone(),
            )));
            #[cfg(not(feature = "kafka"))]
            let task = {
                tracing::error!(source = %key, "{}", Error::KafkaNotCompiled);
                *health.lock().unwrap_or_else(|e| e.into_inner()) =
                    Health::NotReady(Error::KafkaNotCompiled.to_string());
                None
            };
            self.running.insert(
                id,
                Running {
                    fingerprint: spec.fingerprint,
                    sink: spec.sink.url().clone(),
                    cancel,
                    task,
                    health,
                },
            );
        }
        self.start_apiserver_sources(topology);
        for (key, spec) in &topology.container_sources {
            let id = (Kind::Container, key.clone());
            if self.running.contains_key(&id) {
                continue;
            }
            let cancel = CancellationToken::new();
            let health = Arc::new(Mutex::new(Health::NotReady("starting".into())));
            let task = tokio::spawn(container::run(spec.clone(), cancel.clone(), health.clone()));
            self.running.insert(
                id,
                Running {
                    fingerprint: spec.fingerprint,
                    sink: spec.sink.url().clone(),
                    cancel,
                    task: Some(task),
                    health,
                },
            );
        }
    }

    fn start_apiserver_sources(&mut self, topology: &Topology) {
        #[cfg(feature = "apiserver")]
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(key, _), _| topology.apiserver_sources.contains_key(key));
        for (key, spec) in &topology.apiserver_sources {
            let id = (Kind::ApiServer, key.clone());
            if self.running.contains_key(&id) {
                continue;
            }
            let cancel = CancellationToken::new();
            let health = Arc::new(Mutex::new(Health::NotReady("starting".into())));
            #[cfg(feature = "apiserver")]
            let task = Some(tokio::spawn(apiserver::run(
                spec.clone(),
                self.env
                    .for_source(sluice_core::topology::Kind::ApiServerSource, key),
                self.kube.clone(),
                self.memory.clone(),
                cancel.clone(),
                health.clone(),
            )));
            #[cfg(not(feature = "apiserver"))]
            let task = {
                tracing::error!(source = %key, "{}", Error::ApiServerNotCompiled);
                *health.lock().unwrap_or_else(|e| e.into_inner()) =
                    Health::NotReady(Error::ApiServerNotCompiled.to_string());
                None
            };
            self.running.insert(
                id,
                Running {
                    fingerprint: spec.fingerprint,
                    sink: spec.sink.url().clone(),
                    cancel,
                    task,
                    health,
                },
            );
        }
    }

    /// Every source of the last applied topology, sorted by kind and key.
    pub fn status(&self) -> Vec<SourceStatus> {
        self.running
            .iter()
            .map(|((kind, key), r)| SourceStatus {
                kind: *kind,
                key: key.clone(),
                sink: r.sink.clone(),
                health: r.health.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect()
    }

    /// Stops every source (a KafkaSource commits what was delivered first).
    pub async fn shutdown(&mut self) {
        for (id, r) in std::mem::take(&mut self.running) {
            stop(&id, r).await;
        }
    }
}

async fn stop(id: &(Kind, Key), r: Running) {
    r.cancel.cancel();
    if let Some(mut task) = r.task {
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            tracing::warn!(kind = id.0.as_str(), source = %id.1, "source did not stop in time; aborting it");
            task.abort();
        }
    }
}
