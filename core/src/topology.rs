//! The topology: what runs, as plain structs.
//!
//! Built from resources (YAML files in embedded mode, reflectors in Kubernetes mode) by
//! `sluice-crds`, validated there once, and published through a `tokio::sync::watch` channel.
//! Ingress, dispatchers and sources only ever read these structs.
//!
//! Sources ([`PingSource`], [`KafkaSource`]) are here as plain validated values too: a
//! schedule is already compiled ([`TickSchedule`]), data already base64-decoded, the sink
//! already resolved to a URL.

use crate::delivery::{DeliveryPolicy, Endpoint};
use crate::event::Event;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

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
    Memory {
        /// Events per trigger queue.
        capacity: usize,
        /// Bytes of events the broker holds in all.
        max_bytes: usize,
    },
    /// `Kafka`: a topic per broker.
    Kafka {
        bootstrap_servers: String,
        partitions: i32,
        replication_factor: i16,
    },
    /// `NatsJetStreamBroker`: a stream per broker.
    Nats {
        url: String,
        /// Stream retention: events older than this are removed (JetStream `max_age`).
        max_age: std::time::Duration,
        /// Stream size bound; when reached, publishes are refused (503) rather than old
        /// events discarded (JetStream `max_bytes`, discard policy `new`).
        max_bytes: i64,
    },
}

impl ChannelConfig {
    /// Default capacity of each in-memory trigger queue.
    pub const DEFAULT_MEMORY_CAPACITY: usize = 10_000;
    /// Default bound on the bytes an in-memory broker holds: 256 MiB.
    pub const DEFAULT_MEMORY_MAX_BYTES: usize = 256 * 1024 * 1024;
    /// Default NATS stream retention: 7 days (Kafka's default `retention.ms`).
    pub const DEFAULT_NATS_MAX_AGE: std::time::Duration =
        std::time::Duration::from_secs(7 * 24 * 3600);
    /// Default NATS stream size bound: 1 GiB.
    pub const DEFAULT_NATS_MAX_BYTES: i64 = 1024 * 1024 * 1024;

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
    /// Changes whenever anything above changes.
    pub fingerprint: u64,
}

/// The kinds of objects Sluice runs and reports a status for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Broker,
    Trigger,
    PingSource,
    KafkaSource,
    ApiServerSource,
    ContainerSource,
    /// `sources.knative.dev/v1` SinkBinding (the sink given to another object's processes).
    SinkBinding,
    ConfigMap,
    /// `messaging.knative.dev/v1` Channel (its storage is picked by `channelTemplate`).
    Channel,
    /// `messaging.knative.dev/v1` InMemoryChannel.
    InMemoryChannel,
    /// `messaging.knative.dev/v1beta1` KafkaChannel.
    KafkaChannel,
    /// `messaging.knative.dev/v1alpha1` NatsJetStreamChannel (eventing-natss).
    NatsJetStreamChannel,
    /// `messaging.knative.dev/v1` Subscription.
    Subscription,
    /// `flows.knative.dev/v1` Sequence.
    Sequence,
    /// `flows.knative.dev/v1` Parallel.
    Parallel,
    /// `eventing.knative.dev/v1alpha1` EventTransform.
    EventTransform,
    /// `serving.knative.dev/v1` Service (embedded mode: local processes, autoscaled).
    Service,
    /// `eventing.knative.dev/v1alpha1` EventPolicy (who may send to which addressables).
    EventPolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Broker => "Broker",
            Kind::Trigger => "Trigger",
            Kind::PingSource => "PingSource",
            Kind::KafkaSource => "KafkaSource",
            Kind::ApiServerSource => "ApiServerSource",
            Kind::ContainerSource => "ContainerSource",
            Kind::SinkBinding => "SinkBinding",
            Kind::ConfigMap => "ConfigMap",
            Kind::Channel => "Channel",
            Kind::InMemoryChannel => "InMemoryChannel",
            Kind::KafkaChannel => "KafkaChannel",
            Kind::NatsJetStreamChannel => "NatsJetStreamChannel",
            Kind::Subscription => "Subscription",
            Kind::Sequence => "Sequence",
            Kind::Parallel => "Parallel",
            Kind::EventTransform => "EventTransform",
            Kind::Service => "Service",
            Kind::EventPolicy => "EventPolicy",
        }
    }

    /// The kind named `name` (as [`Kind::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "Broker" => Kind::Broker,
            "Trigger" => Kind::Trigger,
            "PingSource" => Kind::PingSource,
            "KafkaSource" => Kind::KafkaSource,
            "ApiServerSource" => Kind::ApiServerSource,
            "ContainerSource" => Kind::ContainerSource,
            "SinkBinding" => Kind::SinkBinding,
            "ConfigMap" => Kind::ConfigMap,
            "Channel" => Kind::Channel,
            "InMemoryChannel" => Kind::InMemoryChannel,
            "KafkaChannel" => Kind::KafkaChannel,
            "NatsJetStreamChannel" => Kind::NatsJetStreamChannel,
            "Subscription" => Kind::Subscription,
            "Sequence" => Kind::Sequence,
            "Parallel" => Kind::Parallel,
            "EventTransform" => Kind::EventTransform,
            "Service" => Kind::Service,
            "EventPolicy" => Kind::EventPolicy,
            _ => return None,
        })
    }

    /// The kinds that are messaging channels (one name space per namespace: a `Channel`'s
    /// backing channel takes its name, so two channel kinds cannot share a name).
    pub fn is_channel(self) -> bool {
        matches!(
            self,
            Kind::Channel | Kind::InMemoryChannel | Kind::KafkaChannel | Kind::NatsJetStreamChannel
        )
    }
}

/// One object: its kind and namespaced name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub key: Key,
}

impl ObjectRef {
    pub fn new(kind: Kind, key: Key) -> Self {
        ObjectRef { kind, key }
    }

    pub fn broker(key: Key) -> Self {
        ObjectRef::new(Kind::Broker, key)
    }

    pub fn trigger(key: Key) -> Self {
        ObjectRef::new(Kind::Trigger, key)
    }

    /// The storage of a messaging channel, whatever kind it was written as (a Broker's
    /// storage is `ObjectRef::broker`). Subscriptions, routes and replies name channels so.
    pub fn channel(key: Key) -> Self {
        ObjectRef::new(Kind::Channel, key)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.key)
    }
}

/// Where the events a subscriber answers with (replies) go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// Published into a broker, with the same durability as a producer's event and the TTL
    /// one lower (a Trigger's replies go to its own broker).
    Broker(Key),
    /// Published into a messaging channel (a Subscription's `reply`, the next step of a
    /// Sequence, a Parallel branch's channel), like a broker reply: same durability as a
    /// producer's event, TTL one lower, never back to the channel it came from unless the
    /// user wired it so.
    Channel {
        key: Key,
        /// The channel's address, named as `knativeerrordest` when the reply cannot be
        /// stored and the original event is dead-lettered.
        address: Endpoint,
    },
    /// Sent to a URL under the subscription's delivery policy.
    Endpoint(Endpoint),
    /// Dropped (counted).
    Discard,
}

/// The one thing the dispatcher runs: events of a channel, filtered, delivered to a
/// subscriber, its replies routed, under a delivery policy. A Trigger compiles to one; a
/// Channel's Subscription, a Sequence step or a Parallel branch compile to the same shape.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The object this subscription was compiled from (its status is reported there).
    pub owner: ObjectRef,
    /// The channel storage it reads: `ObjectRef::broker` for a Trigger, `ObjectRef::channel`
    /// for a Subscription, a Sequence step or a Parallel branch.
    pub channel: ObjectRef,
    /// `None`: every event.
    pub filter: Option<Arc<dyn EventFilter>>,
    pub subscriber: Endpoint,
    /// Set when the subscriber is a Broker or messaging channel this process serves (a
    /// Trigger or Subscription whose subscriber is a Sequence, Parallel, Channel or Broker,
    /// a Parallel branch without a filter): events are then published into it in-process,
    /// with the same durability and loop guard as a reply, instead of POSTed to
    /// `subscriber` (its address, still named in `knativeerrordest`). So such a hop keeps
    /// working while the ingress refuses producers during a shutdown drain.
    pub subscriber_target: Option<ObjectRef>,
    pub reply: ReplyTo,
    /// Effective policy: the trigger's `delivery`, else the broker's, else the default.
    pub delivery: DeliveryPolicy,
    /// Per-partition order (`kafka.eventing.knative.dev/delivery.order: ordered`).
    pub ordered: bool,
    /// Deliveries in flight at once for this subscription (ordered ones too, across lanes).
    pub concurrency: usize,
    pub start_from: StartFrom,
    /// Changes whenever anything above changes: a running worker whose subscription has the
    /// same fingerprint after a reload is left alone.
    pub fingerprint: u64,
}

impl Subscription {
    /// Default number of concurrent deliveries per unordered subscription.
    pub const DEFAULT_CONCURRENCY: usize = 100;

    /// Whether the event passes the filter.
    pub fn wants(&self, event: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(event))
    }

    /// The stable id of this subscription in its channel (it names Kafka consumer groups
    /// and NATS durable consumers, so it never changes for an existing Trigger).
    pub fn channel_id(&self) -> String {
        match self.owner.kind {
            Kind::Trigger => format!("{}/{}", self.owner.key.namespace, self.owner.key.name),
            other => format!(
                "{}:{}/{}",
                other.as_str().to_ascii_lowercase(),
                self.owner.key.namespace,
                self.owner.key.name
            ),
        }
    }
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
    pub sink: Endpoint,
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
    pub sink: Endpoint,
    /// `spec.delivery`, or the default policy.
    pub delivery: DeliveryPolicy,
    /// Changes whenever anything above changes (see [`Trigger::fingerprint`]).
    pub fingerprint: u64,
}

/// One kind of object an ApiServerSource watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedResource {
    /// e.g. `v1` or `apps/v1`.
    pub api_version: String,
    pub kind: String,
    /// The `selector`, already validated and written the way the API server reads a
    /// `labelSelector` query (`app=web,tier in (a,b),!legacy`); empty: every object.
    pub label_selector: String,
}

/// What the events of an ApiServerSource carry as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiServerMode {
    /// `{kind, namespace, name, apiVersion}` of the object (`dev.knative.apiserver.ref.*`).
    #[default]
    Reference,
    /// The whole object (`dev.knative.apiserver.resource.*`).
    Resource,
}

/// Which namespaces an ApiServerSource watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// The source's own namespace (no `namespaceSelector`).
    Own,
    /// The namespaces whose labels match (a `labelSelector` query, empty: every namespace).
    Selector(String),
}

/// An ApiServerSource (`sources.knative.dev/v1`): additions, updates and deletions of
/// Kubernetes objects as events.
#[derive(Debug, Clone)]
pub struct ApiServerSource {
    pub key: Key,
    /// At least one.
    pub resources: Vec<WatchedResource>,
    /// `owner`: only objects with an owner reference of this `(apiVersion, kind)`.
    pub owner: Option<(String, String)>,
    pub mode: ApiServerMode,
    pub namespaces: NamespaceScope,
    /// `serviceAccountName`: when set, the watches impersonate
    /// `system:serviceaccount:<namespace>:<name>`; otherwise they run as the process.
    pub service_account: Option<String>,
    /// `filters` (Subscriptions API), compiled: events that do not pass are not sent.
    pub filter: Option<Arc<dyn EventFilter>>,
    /// `ceOverrides.extensions`, names already validated.
    pub extensions: BTreeMap<String, String>,
    pub sink: Endpoint,
    /// Knative's ApiServerSource has no `spec.delivery`: the default policy.
    pub delivery: DeliveryPolicy,
    /// Changes whenever anything above changes (see [`Trigger::fingerprint`]).
    pub fingerprint: u64,
}

/// A ContainerSource (`sources.knative.dev/v1`) in embedded mode: the first container of its
/// pod template run as a local process that sends events to `K_SINK`.
#[derive(Debug, Clone)]
pub struct ContainerSource {
    pub key: Key,
    /// `command` followed by `args`: the program and its arguments (at least the program).
    pub argv: Vec<String>,
    /// `env` (`name`/`value` pairs), before `K_SINK` and `K_CE_OVERRIDES`.
    pub env: Vec<(String, String)>,
    /// The container's `workingDir`, if set.
    pub working_dir: Option<String>,
    /// `ceOverrides.extensions`, names already validated (given as `K_CE_OVERRIDES`).
    pub extensions: BTreeMap<String, String>,
    pub sink: Endpoint,
    /// Changes whenever anything above changes (see [`Trigger::fingerprint`]).
    pub fingerprint: u64,
}

/// A messaging channel: storage with an address (`/<ns>/channels/<name>` on the ingress)
/// and no filters of its own. Written as a Channel / InMemoryChannel / KafkaChannel /
/// NatsJetStreamChannel, or made by a Sequence or Parallel.
#[derive(Debug, Clone)]
pub struct MessagingChannel {
    pub key: Key,
    /// The object whose status this channel's readiness is (its kind as written; a Channel
    /// a Sequence made is of its `channelTemplate`'s kind).
    pub object: ObjectRef,
    /// The Sequence or Parallel that made it, if one did.
    pub owner: Option<ObjectRef>,
    pub channel: ChannelConfig,
    /// Its URL on the ingress: `<ingress>/<ns>/channels/<name>`.
    pub address: Endpoint,
    /// `spec.delivery` (or its template's): Subscriptions without their own use it whole.
    pub delivery: Option<DeliveryPolicy>,
    /// Changes whenever anything above changes.
    pub fingerprint: u64,
}

/// How a Service scales (Knative Serving's KPA settings, `autoscaling.knative.dev/*`
/// annotations already validated; see `sluice-autoscaler`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSpec {
    /// `min-scale`: replicas kept even without requests.
    pub min_scale: u32,
    /// `max-scale`: 0 = unlimited.
    pub max_scale: u32,
    /// `initial-scale`: replicas started with the Service, kept for the first stable window.
    pub initial_scale: u32,
    /// `activation-scale`: replicas started at least when scaling up from zero.
    pub activation_scale: u32,
    /// `target`: concurrent requests per replica (`containerConcurrency`, else 100).
    pub target: f64,
    /// `target-utilization-percentage` / 100 (0.7): the share of `target` aimed at.
    pub utilization: f64,
    /// `window`: the stable window (60 s).
    pub stable_window: std::time::Duration,
    /// `panic-window-percentage`: the panic window as a percentage of the stable one (10).
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage`: panic when the panic-window demand reaches this
    /// percentage of the ready capacity (200).
    pub panic_threshold_percentage: f64,
    /// At most this factor up per decision (1000).
    pub max_scale_up_rate: f64,
    /// At most this divisor down per decision (2).
    pub max_scale_down_rate: f64,
    /// `scale-down-delay`: a decrease only happens once it held for this long (0).
    pub scale_down_delay: std::time::Duration,
    /// How long the last replica stays after the decision says zero (30 s; Sluice
    /// annotation `sluice.dev/scale-to-zero-grace-period`, Knative's `config-autoscaler` key).
    pub scale_to_zero_grace: std::time::Duration,
    /// How often a decision is taken (2 s).
    pub tick: std::time::Duration,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        ScalingSpec {
            min_scale: 0,
            max_scale: 0,
            initial_scale: 1,
            activation_scale: 1,
            target: 100.0,
            utilization: 0.7,
            stable_window: std::time::Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_down_delay: std::time::Duration::ZERO,
            scale_to_zero_grace: std::time::Duration::from_secs(30),
            tick: std::time::Duration::from_secs(2),
        }
    }
}

/// A `serving.knative.dev/v1` Service as embedded mode runs it: replicas are local processes
/// started from `command` + `args`, scaled on request concurrency, reached through the
/// activator at [`Service::address`].
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub key: Key,
    /// Program and its arguments (`command` then `args`), at least one element.
    pub command: Vec<String>,
    /// `env`, in order; `PORT`, `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION` are added.
    pub env: Vec<(String, String)>,
    /// `readinessProbe.httpGet.path`; `None`: ready once the port accepts connections.
    pub readiness_path: Option<String>,
    /// `containerConcurrency`: requests one replica takes at once; 0 = unlimited.
    pub container_concurrency: u32,
    /// `timeoutSeconds`: a request (waiting for a replica included) gets this long.
    pub timeout: std::time::Duration,
    pub scaling: ScalingSpec,
    /// Where triggers send to it (the activator's route on the ingress).
    pub address: url::Url,
    /// Changes whenever anything above changes.
    pub fingerprint: u64,
}

impl MessagingChannel {
    /// The storage identity (what subscriptions and replies name).
    pub fn storage(&self) -> ObjectRef {
        ObjectRef::channel(self.key.clone())
    }
}

/// A Sequence or Parallel: no runtime of its own, only the channels and subscriptions it
/// compiled to, whose statuses make its own (SEMANTICS.md §10).
#[derive(Debug, Clone)]
pub struct Flow {
    pub object: ObjectRef,
    /// The channel events enter by (Sequence: step 0's; Parallel: the ingress channel).
    pub address: Key,
    /// Every channel it made, in order.
    pub channels: Vec<Key>,
    /// Every subscription it made (owner refs into [`Topology::subscriptions`]), in order.
    pub subscriptions: Vec<ObjectRef>,
    pub fingerprint: u64,
}

/// What an EventTransform does with its sink's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformReply {
    /// Returned as it is.
    Pass,
    /// Transformed by this (already validated) JSONata expression.
    Jsonata(String),
    /// Dropped: the caller gets an empty 202.
    Discard,
}

/// An EventTransform (`eventing.knative.dev/v1alpha1`): a JSONata expression applied to
/// each event POSTed to its address (`/<ns>/eventtransforms/<name>` on the ingress). The
/// expression sees the whole event as structured-mode JSON and must produce a CloudEvent
/// object. Without a sink the result is the HTTP answer (a reply, when the caller is a
/// Trigger or Subscription); with a sink it is sent there.
#[derive(Debug, Clone)]
pub struct EventTransform {
    pub key: Key,
    /// Checked when loaded (a syntax error refuses the resource with its position).
    pub expression: String,
    pub sink: Option<Endpoint>,
    pub reply: TransformReply,
    /// For the one attempt to the sink (its `timeout`, `format`).
    pub delivery: DeliveryPolicy,
    /// Its URL on the ingress.
    pub address: Endpoint,
    pub fingerprint: u64,
}

/// An EventPolicy (`eventing.knative.dev/v1alpha1`) compiled for the ingress: which
/// addressables it covers, which senders (token subjects) it admits, and the filter their
/// events must pass. `sluice-auth` decides with it; `sluice-crds` builds it.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    pub key: Key,
    /// The addressables it applies to (`spec.to`, selectors already resolved against the
    /// objects' labels); `None`: every addressable in its namespace (`to` left empty).
    pub to: Option<Vec<ObjectRef>>,
    /// Subjects admitted: exact, or a `prefix*` glob; compared case-insensitively. `from.ref`
    /// entries are resolved to their OIDC ServiceAccount's subject.
    pub from: Vec<String>,
    /// `spec.filters` (Subscriptions API), compiled once; `None`: every event.
    pub filter: Option<Arc<dyn EventFilter>>,
}

/// Everything that runs. Cheap to clone (brokers, subscriptions and sources are shared).
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub brokers: BTreeMap<Key, Arc<Broker>>,
    /// Subscriptions by the object they were compiled from (Triggers today).
    pub subscriptions: BTreeMap<ObjectRef, Arc<Subscription>>,
    pub ping_sources: BTreeMap<Key, Arc<PingSource>>,
    pub kafka_sources: BTreeMap<Key, Arc<KafkaSource>>,
    pub apiserver_sources: BTreeMap<Key, Arc<ApiServerSource>>,
    pub container_sources: BTreeMap<Key, Arc<ContainerSource>>,
    /// Messaging channels by name (unique across channel kinds in a namespace).
    pub channels: BTreeMap<Key, Arc<MessagingChannel>>,
    /// Sequences and Parallels.
    pub flows: BTreeMap<ObjectRef, Arc<Flow>>,
    /// EventTransforms by name.
    pub transforms: BTreeMap<Key, Arc<EventTransform>>,
    /// `serving.knative.dev/v1` Services (embedded mode).
    pub services: BTreeMap<Key, Arc<Service>>,
    /// EventPolicies (SEMANTICS.md §11), only the valid ones: the ingress authorizes senders
    /// with them while OIDC authentication is on.
    pub event_policies: BTreeMap<Key, Arc<EventPolicy>>,
    /// Objects whose latest spec is invalid, with the problem. On a reload their previous
    /// version (if any) stays in the maps above and keeps running; their status says why
    /// the edit was not applied.
    pub invalid: BTreeMap<ObjectRef, String>,
}

impl Topology {
    /// The subscriptions reading a channel.
    pub fn subscriptions_of<'a>(
        &'a self,
        channel: &'a ObjectRef,
    ) -> impl Iterator<Item = &'a Arc<Subscription>> {
        self.subscriptions
            .values()
            .filter(move |s| &s.channel == channel)
    }

    /// A Trigger's subscription.
    pub fn trigger(&self, key: &Key) -> Option<&Arc<Subscription>> {
        self.subscriptions.get(&ObjectRef::trigger(key.clone()))
    }

    /// Whether a channel storage (a broker's or a messaging channel's) is wanted.
    pub fn has_storage(&self, storage: &ObjectRef) -> bool {
        match storage.kind {
            Kind::Broker => self.brokers.contains_key(&storage.key),
            Kind::Channel => self.channels.contains_key(&storage.key),
            _ => false,
        }
    }

    /// Every channel storage to run: brokers' and messaging channels', with their settings
    /// and fingerprints.
    pub fn storages(&self) -> impl Iterator<Item = (ObjectRef, &ChannelConfig)> + '_ {
        let brokers =
            (self.brokers.values()).map(|b| (ObjectRef::broker(b.key.clone()), &b.channel));
        let channels = (self.channels.values()).map(|c| (c.storage(), &c.channel));
        brokers.chain(channels)
    }

    /// Every object, for status reporting.
    pub fn objects(&self) -> impl Iterator<Item = ObjectRef> + '_ {
        let brokers = self.brokers.keys().cloned().map(ObjectRef::broker);
        let subs = self.subscriptions.keys().cloned();
        let pings =
            (self.ping_sources.keys().cloned()).map(|k| ObjectRef::new(Kind::PingSource, k));
        let kafkas =
            (self.kafka_sources.keys().cloned()).map(|k| ObjectRef::new(Kind::KafkaSource, k));
        let apiservers = (self.apiserver_sources.keys().cloned())
            .map(|k| ObjectRef::new(Kind::ApiServerSource, k));
        let containers = (self.container_sources.keys().cloned())
            .map(|k| ObjectRef::new(Kind::ContainerSource, k));
        let channels = self.channels.values().map(|c| c.object.clone());
        let flows = self.flows.keys().cloned();
        let transforms =
            (self.transforms.keys().cloned()).map(|k| ObjectRef::new(Kind::EventTransform, k));
        let services = (self.services.keys().cloned()).map(|k| ObjectRef::new(Kind::Service, k));
        brokers
            .chain(subs)
            .chain(pings)
            .chain(kafkas)
            .chain(apiservers)
            .chain(containers)
            .chain(channels)
            .chain(flows)
            .chain(transforms)
            .chain(services)
    }
}
