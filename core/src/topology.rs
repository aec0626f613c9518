//! The topology: what runs, as plain structs.
//!
//! Built from resources (YAML files in embedded mode, reflectors in Kubernetes mode) by
//! `sluice-crds`, validated there once, and published through a `tokio::sync::watch` channel.
//! Ingress, dispatchers and sources only ever read these structs.
//!
//! Sources ([`PingSource`], [`KafkaSource`]) are here as plain validated values too: a
//! schedule is already compiled ([`TickSchedule`]), data already base64-decoded, the sink
//! already resolved to a URL.

use crate::delivery::DeliveryPolicy;
use crate::event::Event;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;
use url::Url;

/// A namespaced name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A compiled trigger filter. Implemented by `sluice-filter`; compiled once at load time so
/// evaluating it never meets an invalid expression.
pub trait EventFilter: Send + Sync + fmt::Debug {
    fn matches(&self, event: &Event) -> bool;
}

/// The filter that passes everything (a trigger without filters).
#[derive(Debug, Default)]
pub struct MatchAll;

impl EventFilter for MatchAll {
    fn matches(&self, _: &Event) -> bool {
        true
    }
}

/// Where a broker keeps its events (annotation `eventing.knative.dev/broker.class`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelConfig {
    /// `MTChannelBasedBroker` (the default): bounded in-process queues.
    Memory { capacity: usize },
    /// `Kafka`: a topic per broker.
    Kafka {
        bootstrap_servers: String,
        partitions: i32,
        replication_factor: i16,
    },
    /// `NatsJetStreamBroker`: a stream per broker.
    Nats { url: String },
}

impl ChannelConfig {
    /// Default capacity of each in-memory trigger queue.
    pub const DEFAULT_MEMORY_CAPACITY: usize = 10_000;

    pub fn class_name(&self) -> &'static str {
        match self {
            ChannelConfig::Memory { .. } => "MTChannelBasedBroker",
            ChannelConfig::Kafka { .. } => "Kafka",
            ChannelConfig::Nats { .. } => "NatsJetStreamBroker",
        }
    }
}

/// Where a new trigger starts reading its broker's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    #[default]
    Latest,
    Earliest,
    /// Milliseconds since the Unix epoch.
    Time(i64),
}

#[derive(Debug, Clone)]
pub struct Broker {
    pub key: Key,
    pub channel: ChannelConfig,
    /// The broker's own `spec.delivery`, already validated; triggers inherit it.
    pub delivery: Option<DeliveryPolicy>,
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub key: Key,
    pub broker: Key,
    pub subscriber: Url,
    pub filter: Arc<dyn EventFilter>,
    /// Effective policy: the trigger's `delivery`, else the broker's, else the default.
    pub delivery: DeliveryPolicy,
    /// Per-partition order (`kafka.eventing.knative.dev/delivery.order: ordered`).
    pub ordered: bool,
    /// Deliveries in flight at once for this trigger.
    pub concurrency: usize,
    pub start_from: StartFrom,
    /// Changes whenever anything above changes: a running dispatcher whose trigger has the
    /// same fingerprint after a reload is left alone.
    pub fingerprint: u64,
}

impl Trigger {
    /// Default number of concurrent deliveries per unordered trigger.
    pub const DEFAULT_CONCURRENCY: usize = 100;
}

/// A compiled PingSource schedule. Implemented by `sluice-schedule` (cron patterns, time
/// zones); parsed once at load time so the scheduler never meets an invalid pattern.
pub trait TickSchedule: Send + Sync + fmt::Debug {
    /// The first tick strictly after `after`, or `None` when the schedule never fires again.
    fn next_after(&self, after: SystemTime) -> Option<SystemTime>;
}

/// A PingSource (`sources.knative.dev/v1`): one event per tick of its schedule.
#[derive(Debug, Clone)]
pub struct PingSource {
    pub key: Key,
    pub schedule: Arc<dyn TickSchedule>,
    /// The schedule as written, for display (`CRON_TZ=` prefix included if it had one).
    pub schedule_text: String,
    /// The IANA time zone the schedule is read in (`UTC` unless `timezone` or `CRON_TZ=` says
    /// otherwise).
    pub timezone: String,
    /// `contentType`: the event's `datacontenttype`, absent when not set.
    pub content_type: Option<String>,
    /// `data`, or the decoded `dataBase64`; `None` when neither is set.
    pub data: Option<Bytes>,
    /// The data came from `dataBase64`: opaque bytes (structured mode writes `data_base64`).
    pub data_binary: bool,
    /// `ceOverrides.extensions`, names already validated.
    pub extensions: BTreeMap<String, String>,
    pub sink: Url,
    /// Knative's PingSource has no `spec.delivery`: this is the default policy.
    pub delivery: DeliveryPolicy,
    /// Changes whenever anything above changes (see [`Trigger::fingerprint`]).
    pub fingerprint: u64,
}

/// Where a KafkaSource whose consumer group has no committed offset starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialOffset {
    #[default]
    Latest,
    Earliest,
}

/// A KafkaSource (`sources.knative.dev/v1`): records of Kafka topics turned into events.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub key: Key,
    /// `host:port` entries, at least one.
    pub bootstrap_servers: Vec<String>,
    /// At least one topic, no duplicates.
    pub topics: Vec<String>,
    /// The consumer group whose committed offsets record progress.
    pub consumer_group: String,
    pub initial_offset: InitialOffset,
    /// `ordering: ordered` (the default): one event in flight per partition, in offset order.
    pub ordered: bool,
    /// `consumers`: how many consumers this process runs in the source's consumer group
    /// (they, and those of other processes running the source, share the partitions).
    pub consumers: u32,
    /// `ceOverrides.extensions`, names already validated.
    pub extensions: BTreeMap<String, String>,
    pub sink: Url,
    /// `spec.delivery`, or the default policy.
    pub delivery: DeliveryPolicy,
    /// Changes whenever anything above changes (see [`Trigger::fingerprint`]).
    pub fingerprint: u64,
}

/// Everything that runs. Cheap to clone (brokers, triggers and sources are shared).
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub brokers: BTreeMap<Key, Arc<Broker>>,
    /// Triggers by their own key.
    pub triggers: BTreeMap<Key, Arc<Trigger>>,
    pub ping_sources: BTreeMap<Key, Arc<PingSource>>,
    pub kafka_sources: BTreeMap<Key, Arc<KafkaSource>>,
}

impl Topology {
    /// The triggers subscribed to a broker.
    pub fn triggers_of<'a>(&'a self, broker: &'a Key) -> impl Iterator<Item = &'a Arc<Trigger>> {
        self.triggers.values().filter(move |t| &t.broker == broker)
    }
}
