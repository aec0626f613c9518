//! The Kafka channel (feature `kafka`): one topic per broker, one consumer group per trigger,
//! through librdkafka (built from source, linked statically).
//!
//! ```text
//! publish ──encode (wire::KAFKA)──▶ FutureProducer (acks=all, idempotent) ──▶ knative-broker-<ns>-<name>
//!                                                                                 │ partitions
//! Subscription::next ◀── queue ◀── pump thread: BaseConsumer, member of group
//!        │                  ▲       knative-trigger-<ns>-<name> (cooperative-sticky)
//!        ▼                  │ nack(delay): re-queued     commits the low-water mark of finished
//!   Message ──ack──▶ tracker (per partition: offsets     offsets every `commit_interval` and
//!                    handed out and not finished)        when partitions are revoked
//! ```
//!
//! **Publishing.** `publish` returns once the delivery report says the record is stored with
//! `acks=all`; the producer is idempotent (`enable.idempotence=true`, so librdkafka's retries
//! never duplicate or reorder a record). A publish that cannot complete within
//! [`KafkaSettings::publish_timeout`] (cluster unreachable, topic missing) fails with
//! [`ChannelError::Unavailable`]; librdkafka's own queue being full is [`ChannelError::Full`].
//! The CloudEvent's `partitionkey` extension is the record key; without it records are spread
//! over partitions. Events are stored in binary content mode ([`crate::wire`]). Concurrent
//! publishes are pipelined by librdkafka (`linger.ms` 1); `publish_batch` hands every record
//! of a batch over before awaiting their reports together.
//!
//! **Consumers and the group.** Each subscription has its own consumer, which joins the
//! consumer group `knative-trigger-<ns>-<name>` with the `cooperative-sticky` assignor. Every
//! Sluice process running the trigger does the same, so the trigger's partitions are shared
//! among them, and when one goes away (or dies: after `session.timeout.ms`, 10 s) the others
//! take its partitions over. In one process there is one consumer per subscription id (the
//! trait's promise); a second `subscribe` with the same id replaces the first. The consumer
//! polls on a thread of its own, because the rebalance callbacks run inside `poll` and may
//! block (below).
//!
//! **Rebalances.** When the group takes partitions away (another member joined, or this one
//! leaves), the consumer, before letting them go: stops handing out their messages (queued
//! ones are dropped, they belong to the next owner), waits up to
//! [`KafkaSettings::revoke_timeout`] for the messages it handed out to be acked or nacked, and
//! commits the finished offsets — never past an unfinished one. The next owner starts at the
//! first offset not finished here, so duplicates are bounded by what was still in flight at the
//! deadline, and an ordered trigger keeps each partition's order across owners (the next owner
//! starts only after the previous one's deliveries ended). Each assignment of a partition has
//! an epoch, so that a late ack of a message from an earlier assignment cannot finish an
//! offset of a later one.
//!
//! **Offsets.** Offsets are committed only for finished events (acked: delivered or
//! dead-lettered). Per partition the subscription tracks the offsets it handed out and has not
//! seen finished ([`sluice_core::offsets::OffsetTracker`]) and commits the lowest unfinished
//! offset (or the next offset, when everything handed out is finished), however out of order
//! the dispatcher finishes them. Commits are batched every [`KafkaSettings::commit_interval`],
//! made on revocation, and once more when the subscription closes. A crash redelivers at most
//! what was in flight or finished since the last commit (at-least-once): with deliveries
//! finishing at rate r, those in flight plus up to `r × commit_interval` finished ones.
//! [`KafkaChannel::committed_offsets`] reads what the cluster holds as committed.
//! [`Channel::remove_subscription`] deletes the group (and with it its committed offsets).
//!
//! **Starting position.** The first time a group is seen (no committed offset on any
//! partition) the subscription resolves its [`StartFrom`] to concrete offsets — the high
//! watermarks (latest), the low watermarks (earliest) or `offsetsForTimes` — and commits them
//! *before* its consumer joins the group (the cluster accepts a commit from a non-member only
//! while the group is empty). The position is then durable: a crash before the first ack cannot
//! turn into an `auto.offset.reset=latest` that skips what was published meanwhile. If that
//! commit fails (the group is held by a member Sluice does not know, say) the subscribe fails
//! and the caller retries; the time of the first attempt is kept, and a retried `latest` start
//! resolves to the first record published since then. Partitions without a committed offset in
//! a known group (added later) are read from the beginning.
//!
//! **Redelivery.** Kafka has no per-message negative acknowledgement: `nack(delay)` keeps the
//! offset unfinished (so nothing past it is committed) and puts the message back on the
//! subscription's queue after the delay, without holding up other messages.
//! `delivery_count` counts deliveries by this process; it restarts at 1 after a restart or
//! when another member takes the partition over.
//! [`Channel::redelivers_with_delay`] is false: the dispatcher may as well wait in-process.
//!
//! **Order and flow control.** Every message's lane is its partition, so an ordered trigger
//! can serialise per partition; unordered triggers take messages as fast as they like. While
//! [`KafkaSettings::max_buffered`] messages wait for `next()`, the pump stops polling until
//! half of them are taken; librdkafka keeps what it prefetched meanwhile (at most
//! `queued.max.messages.kbytes`). Pausing the partitions instead would make librdkafka drop
//! its prefetch and refetch it on resume, after a fetch backoff: a consumer that fell behind
//! once then never caught up (issue 10). Only a queue full for a second (a stuck subscriber)
//! pauses the partitions, so that the pump can go on polling and serving rebalances.
//!
//! **Latency.** See `CONSUMER_TUNABLES` (`fetch.wait.max.ms`) and the producer's `linger.ms`:
//! both chosen for low latency at moderate load.
//!
//! **Health.** A background task asks the cluster for the topic's metadata every second;
//! [`Channel::health`] is `NotReady` with the reason while that fails or the topic is missing.

use crate::wire::{self, DecodeError};
use crate::{Acker, Channel, ChannelError, Health, Message, Subscription, SubscriptionSpec};
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use sluice_core::topology::{Key, StartFrom};
use sluice_core::Envelope;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long one call to the cluster's metadata or admin API may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the health task checks the cluster.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the pump thread waits in one poll: the longest a close takes to be noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most records the pump takes from librdkafka per wake-up (one lock, one hand-over).
const POLL_BATCH: usize = 256;
/// How long the pump leaves a full queue be (not polling, librdkafka's prefetch kept) before
/// it pauses the partitions and polls on, so that rebalances are served while a subscriber
/// is stuck.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// librdkafka settings of every trigger consumer (a subscription's client properties may
/// override them).
const CONSUMER_TUNABLES: [(&str, &str); 6] = [
    // librdkafka prefetches up to 64 MiB per consumer by default; one consumer per trigger
    // makes that too much.
    ("queued.max.messages.kbytes", "8192"),
    // Only for a partition without a committed offset: one added to the topic after the
    // trigger's start position was fixed (that position covers every partition there was).
    ("auto.offset.reset", "earliest"),
    // Latency. Kafka answers a fetch as soon as one byte is there (fetch.min.bytes=1) and parks
    // it otherwise, completing it the moment a record arrives; fetch.wait.max.ms (500 ms by
    // default) is only how long an idle fetch stays parked. It still bounds the delay in the
    // cases the broker does not wake a parked fetch — a partition that joined the fetch session
    // while it was parked, after a rebalance — so 100 ms: at most ten idle fetches a second per
    // consumer, and an event is never held half a second at moderate load.
    ("fetch.wait.max.ms", "100"),
    // When the prefetch queue is over `queued.max.messages.kbytes` (the subscriber is behind),
    // librdkafka postpones the next fetch by this much: 1 s by default, a second without
    // records each time the subscriber catches up. 20 ms keeps the queue fed.
    ("fetch.queue.backoff.ms", "20"),
    // A replica that dies without leaving its group holds its partitions until its session
    // expires; 45 s (librdkafka's default) is a long pause in delivery. 10 s tolerates GC-free
    // Rust processes on a busy machine and bounds the pause.
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "3000"),
];

/// What a [`KafkaChannel`] needs. Build with [`KafkaSettings::new`] or
/// [`KafkaSettings::for_broker`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// The broker's topic, created if missing.
    pub topic: String,
    /// Partitions of a topic this channel creates (an existing topic is used as it is).
    pub partitions: i32,
    pub replication_factor: i16,
    /// Longest a publish may take before it fails with [`ChannelError::Unavailable`].
    pub publish_timeout: Duration,
    /// How often finished offsets are committed.
    pub commit_interval: Duration,
    /// Messages a subscription buffers ahead of `next()` before it pauses fetching.
    pub max_buffered: usize,
    /// When the group takes partitions away from a consumer (another replica joined, or the
    /// subscription closes), how long it waits for the messages it handed out to be acked or
    /// nacked before it commits and lets them go. What is still in flight then is delivered
    /// again by the next owner.
    pub revoke_timeout: Duration,
    /// Extra librdkafka properties for every client (security settings, tuning). They cannot
    /// change what the guarantees rest on: `acks`, `enable.idempotence`, `message.timeout.ms`
    /// (see `publish_timeout`), `group.id` and the auto-commit settings are always Sluice's.
    pub client_properties: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(
        bootstrap_servers: impl Into<String>,
        topic: impl Into<String>,
        partitions: i32,
        replication_factor: i16,
    ) -> Self {
        KafkaSettings {
            bootstrap_servers: bootstrap_servers.into(),
            topic: topic.into(),
            partitions,
            replication_factor,
            publish_timeout: Duration::from_secs(5),
            commit_interval: Duration::from_millis(500),
            max_buffered: 1000,
            revoke_timeout: Duration::from_secs(10),
            client_properties: Vec::new(),
        }
    }

    /// The settings of a broker's channel: topic [`topic_name`]`(broker)`.
    pub fn for_broker(
        broker: &Key,
        bootstrap_servers: impl Into<String>,
        partitions: i32,
        replication_factor: i16,
    ) -> Self {
        Self::new(
            bootstrap_servers,
            topic_name(broker),
            partitions,
            replication_factor,
        )
    }

    /// A client configuration: Sluice's defaults, then `tunables` (defaults of one kind of
    /// client), then [`client_properties`](Self::client_properties). Callers set the
    /// properties the channel's guarantees rest on afterwards, so those cannot be overridden.
    fn client_config(&self, tunables: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            // Reconnect quickly once the cluster is back, rather than backing off to 10 s.
            .set("reconnect.backoff.max.ms", "1000")
            // Requests are small and latency-bound: Nagle's algorithm would hold them back
            // waiting for the previous one's ACK.
            .set("socket.nagle.disable", "true")
            .set("log_level", "4");
        for (k, v) in tunables {
            c.set(*k, *v);
        }
        for (k, v) in &self.client_properties {
            c.set(k, v);
        }
        c
    }
}

/// The topic of a broker: `knative-broker-<namespace>-<name>` (as Knative's Kafka broker).
pub fn topic_name(broker: &Key) -> String {
    format!("knative-broker-{}-{}", broker.namespace, broker.name)
}

/// The consumer group of a subscription `ns/name`: `knative-trigger-<ns>-<name>`.
pub fn group_id(subscription_id: &str) -> String {
    format!("knative-trigger-{}", subscription_id.replacen('/', "-", 1))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(format!("kafka: {what}: {e}"))
}

/// A Kafka-backed channel. Cheap to share behind an `Arc`.
pub struct KafkaChannel {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    producer: FutureProducer<HealthContext>,
    admin: AdminClient<DefaultClientContext>,
    health: Arc<Mutex<Health>>,
    subscriptions: Mutex<HashMap<String, SubHandle>>,
    /// When each subscription whose start position is not yet durable was first seen (ms
    /// since the epoch): what a retried `latest` start resolves to.
    first_seen: Mutex<HashMap<String, i64>>,
}

/// The local consumer of a subscription, so that a removal (or a second subscribe with the
/// same id) can close it and wait until it has left its group.
struct SubHandle {
    close: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
}

/// Marks the channel not ready when librdkafka reports that no broker is reachable.
struct HealthContext {
    health: Arc<Mutex<Health>>,
}

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            set_health(
                &self.health,
                Health::NotReady(format!("kafka: all brokers are down: {reason}")),
            );
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

fn set_health(health: &Mutex<Health>, value: Health) {
    *health.lock().unwrap_or_else(|e| e.into_inner()) = value;
}

impl std::fmt::Debug for KafkaChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChannel")
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl KafkaChannel {
    /// Connects to the cluster and creates the topic if it is missing. Fails with
    /// [`ChannelError::Unavailable`] if the cluster cannot be reached within a few seconds
    /// (the caller retries), and [`ChannelError::Config`] for settings librdkafka rejects.
    pub async fn connect(settings: KafkaSettings) -> Result<Self, ChannelError> {
        if settings.partitions < 1 || settings.replication_factor < 1 {
            return Err(ChannelError::Config(format!(
                "kafka topic {}: partitions ({}) and replication factor ({}) must be at least 1",
                settings.topic, settings.partitions, settings.replication_factor
            )));
        }
        let health = Arc::new(Mutex::new(Health::Ready));
        let timeout_ms = settings.publish_timeout.as_millis().max(1).to_string();
        let producer: FutureProducer<HealthContext> = settings
            .client_config(&[
                // Latency. Ingress answers 202 only after the delivery report, so the time a
                // record waits for companions in a batch is added to every request. 1 ms
                // (librdkafka's default is 5) still batches the records of concurrent requests
                // at moderate load and above, which is where batching pays.
                ("linger.ms", "1"),
                // Fail records for a missing topic fast instead of waiting 30 s for it.
                ("topic.metadata.propagation.max.ms", "1000"),
            ])
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &timeout_ms)
            .create_with_context(HealthContext {
                health: health.clone(),
            })
            .map_err(|e| ChannelError::Config(format!("kafka producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> = settings
            .client_config(&[])
            .create()
            .map_err(|e| ChannelError::Config(format!("kafka admin client: {e}")))?;
        let inner = Arc::new(Inner {
            settings,
            producer,
            admin,
            health,
            subscriptions: Mutex::new(HashMap::new()),
            first_seen: Mutex::new(HashMap::new()),
        });
        inner.ensure_topic().await?;
        tokio::spawn(watch_health(Arc::downgrade(&inner)));
        Ok(KafkaChannel { inner })
    }

    /// The settings this channel was built with.
    pub fn settings(&self) -> &KafkaSettings {
        &self.inner.settings
    }

    /// A reader of what the cluster holds as committed for subscription `subscription_id`
    /// (its consumer group): what a restarted subscription would resume from. For tools and
    /// tests that watch a trigger's durable progress. Its client never joins the group.
    pub fn committed_offsets(
        &self,
        subscription_id: &str,
    ) -> Result<CommittedOffsets, ChannelError> {
        let consumer = self
            .inner
            .settings
            .client_config(&[])
            .set("group.id", group_id(subscription_id))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| ChannelError::Config(format!("kafka consumer: {e}")))?;
        Ok(CommittedOffsets {
            consumer: Arc::new(consumer),
            topic: self.inner.settings.topic.clone(),
        })
    }
}

impl KafkaChannel {
    /// The members of subscription `subscription_id`'s consumer group — every process's
    /// consumer of the trigger — with how many partitions each is assigned; empty while the
    /// group is rebalancing (its assignment is not settled) or has no members. For tools and
    /// tests that watch how a trigger is spread over replicas.
    pub async fn group_members(
        &self,
        subscription_id: &str,
    ) -> Result<Vec<GroupMember>, ChannelError> {
        let inner = self.inner.clone();
        let group = group_id(subscription_id);
        tokio::task::spawn_blocking(move || {
            let list = inner
                .admin
                .inner()
                .fetch_group_list(Some(&group), REQUEST_TIMEOUT)
                .map_err(|e| unavailable("describing the consumer group", e))?;
            let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
                return Ok(Vec::new());
            };
            if g.state() != "Stable" {
                return Ok(Vec::new());
            }
            Ok(g.members()
                .iter()
                .map(|m| GroupMember {
                    client_id: m.client_id().to_string(),
                    partitions: m.assignment().map_or(0, assigned_partitions),
                })
                .collect())
        })
        .await
        .map_err(|e| unavailable("describing the consumer group", e))?
    }
}

/// One member of a trigger's consumer group; see [`KafkaChannel::group_members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub client_id: String,
    pub partitions: usize,
}

/// How many partitions a consumer-protocol assignment (version, then topics, each a name and
/// partition numbers) holds; 0 for bytes that do not parse.
fn assigned_partitions(bytes: &[u8]) -> usize {
    fn i16_at(b: &[u8], at: usize) -> Option<i16> {
        Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }
    fn i32_at(b: &[u8], at: usize) -> Option<i32> {
        Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }
    let parse = || -> Option<usize> {
        let mut at = 2; // version
        let topics = i32_at(bytes, at)?;
        at += 4;
        let mut total = 0;
        for _ in 0..topics.max(0) {
            let name = usize::try_from(i16_at(bytes, at)?).ok()?;
            at += 2 + name;
            let n = usize::try_from(i32_at(bytes, at)?).ok()?;
            at += 4 + 4 * n;
            total += n;
        }
        Some(total)
    };
    parse().unwrap_or(0)
}

/// Reads a subscription's committed offsets; see [`KafkaChannel::committed_offsets`]. Keeps
/// its client (and its connection to the group's coordinator) between reads.
pub struct CommittedOffsets {
    consumer: Arc<BaseConsumer>,
    topic: String,
}

impl CommittedOffsets {
    /// The committed offset of every partition of the topic that has one.
    pub async fn read(&self) -> Result<BTreeMap<i32, i64>, ChannelError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let md = consumer
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(|e| unavailable("reading topic metadata", e))?;
            let mut query = TopicPartitionList::new();
            for t in md.topics() {
                for p in t.partitions() {
                    query.add_partition(&topic, p.id());
                }
            }
            let committed = consumer
                .committed_offsets(query, REQUEST_TIMEOUT)
                .map_err(|e| unavailable("reading committed offsets", e))?;
            Ok(committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect())
        })
        .await
        .map_err(|e| unavailable("reading committed offsets", e))?
    }
}

/// A record's headers: the event's attributes in Kafka binary content mode.
fn record_headers(encoded: &wire::Encoded) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(encoded.headers.len());
    for (k, v) in &encoded.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    headers
}

impl Inner {
    /// A delivery report said the record is stored.
    fn published(&self) -> Result<(), ChannelError> {
        set_health(&self.health, Health::Ready);
        Ok(())
    }

    /// The producer refused a record or failed to store it.
    fn publish_failed(&self, e: KafkaError) -> ChannelError {
        if e == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
            return ChannelError::Full("kafka producer queue is full".into());
        }
        let err = unavailable(&format!("publishing to {}", self.settings.topic), e);
        set_health(&self.health, Health::NotReady(err.to_string()));
        err
    }

    /// No delivery report came in time.
    fn no_report(&self) -> ChannelError {
        let err = unavailable(
            &format!("publishing to {}", self.settings.topic),
            "no delivery report in time",
        );
        set_health(&self.health, Health::NotReady(err.to_string()));
        err
    }

    async fn ensure_topic(&self) -> Result<(), ChannelError> {
        let s = &self.settings;
        let topic = NewTopic::new(
            &s.topic,
            s.partitions,
            TopicReplication::Fixed(s.replication_factor.into()),
        );
        let opts = AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT));
        let results = tokio::time::timeout(
            REQUEST_TIMEOUT + Duration::from_secs(1),
            self.admin.create_topics([&topic], &opts),
        )
        .await
        .map_err(|_| unavailable("creating the topic", "timed out"))?
        .map_err(|e| unavailable("creating the topic", e))?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic = %s.topic, partitions = s.partitions, "kafka topic created")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(unavailable(&format!("creating topic {t}"), code));
                }
            }
        }
        Ok(())
    }

    /// One health check: can the cluster tell us about the topic?
    async fn check(self: &Arc<Self>) {
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            this.producer
                .client()
                .fetch_metadata(Some(&this.settings.topic), REQUEST_TIMEOUT)
                .map(|md| {
                    md.topics()
                        .first()
                        .map(|t| t.error().is_some() || t.partitions().is_empty())
                        .unwrap_or(true)
                })
        })
        .await;
        match res {
            Ok(Ok(true)) => set_health(
                &self.health,
                Health::NotReady(format!(
                    "kafka topic {} does not exist on {} (deleted since the channel created it?)",
                    self.settings.topic, self.settings.bootstrap_servers
                )),
            ),
            Ok(Ok(false)) => set_health(&self.health, Health::Ready),
            Ok(Err(e)) => set_health(
                &self.health,
                Health::NotReady(format!(
                    "kafka cluster {} unreachable: {e}",
                    self.settings.bootstrap_servers
                )),
            ),
            Err(_) => {}
        }
    }
}

async fn watch_health(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.check().await;
    }
}

#[async_trait]
impl Channel for KafkaChannel {
    async fn publish(&self, envelope: Envelope) -> Result<(), ChannelError> {
        let inner = &self.inner;
        let encoded = wire::encode(&envelope, &wire::KAFKA)?;
        let headers = record_headers(&encoded);
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&inner.settings.topic)
            .payload(&encoded.payload[..])
            .headers(headers);
        if let Some(key) = &encoded.key {
            record = record.key(key.as_str());
        }
        // librdkafka enforces message.timeout.ms; the outer timeout is only a safety net.
        let sent = tokio::time::timeout(
            inner.settings.publish_timeout + Duration::from_secs(1),
            inner
                .producer
                .send(record, Timeout::After(Duration::from_millis(100))),
        )
        .await;
        match sent {
            Ok(Ok(_delivery)) => inner.published(),
            Ok(Err((e, _))) => Err(inner.publish_failed(e)),
            Err(_) => Err(inner.no_report()),
        }
    }

    /// All records are handed to the producer first (in order: the idempotent producer keeps
    /// each partition's order), then their delivery reports are awaited together, so a batch
    /// costs about one `acks=all` round trip, not one per event. Returns once every record
    /// is acknowledged; on a failure, records of the batch other than the failed one may be
    /// stored (the producer's retry duplicates them: at-least-once, never lost).
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), ChannelError> {
        let inner = &self.inner;
        let mut pending = Vec::with_capacity(envelopes.len());
        let mut failed = None;
        for envelope in &envelopes {
            let encoded = match wire::encode(envelope, &wire::KAFKA) {
                Ok(e) => e,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let headers = record_headers(&encoded);
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&inner.settings.topic)
                .payload(&encoded.payload[..])
                .headers(headers);
            if let Some(key) = &encoded.key {
                record = record.key(key.as_str());
            }
            match inner.producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => {
                    failed = Some(inner.publish_failed(e));
                    break;
                }
            }
        }
        // Wait for what was handed over even after a failure, so that the request's answer
        // comes after everything it started.
        let reports = tokio::time::timeout(
            inner.settings.publish_timeout + Duration::from_secs(1),
            futures::future::join_all(pending),
        )
        .await;
        let result = match reports {
            Err(_) => Err(inner.no_report()),
            Ok(reports) => reports
                .into_iter()
                .map(|r| match r {
                    Ok(Ok(_delivery)) => inner.published(),
                    Ok(Err((e, _))) => Err(inner.publish_failed(e)),
                    // The producer went away with the record (only when it is dropped).
                    Err(_) => Err(inner.no_report()),
                })
                .find(Result::is_err)
                .unwrap_or(Ok(())),
        };
        match failed {
            Some(e) => Err(e),
            None => result,
        }
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, ChannelError> {
        let inner = &self.inner;
        // At most one consumer per id in this process: a new subscribe replaces the old one.
        close_local(inner, &spec.id).await;

        // The first sight of a trigger pins where a `latest` start is: if fixing it fails now
        // (the cluster refuses the commit) and the subscribe is retried, the retry starts at
        // the events published since this moment, not at the end of the log by then.
        let start = {
            let mut seen = inner.first_seen.lock().unwrap_or_else(|e| e.into_inner());
            match seen.get(&spec.id) {
                Some(ms) if spec.start_from == StartFrom::Latest => StartFrom::Time(*ms),
                _ => {
                    seen.entry(spec.id.clone()).or_insert_with(now_ms);
                    spec.start_from
                }
            }
        };

        let settings = &inner.settings;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            room: Condvar::new(),
            tx,
            queued: AtomicUsize::new(0),
            resume_at: settings.max_buffered.max(1) / 2,
            topic: settings.topic.clone(),
            revoke_timeout: settings.revoke_timeout,
        });
        let consumer: BaseConsumer<SubContext> = settings
            .client_config(&CONSUMER_TUNABLES)
            .set("group.id", group_id(&spec.id))
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create_with_context(SubContext {
                shared: Arc::downgrade(&shared),
            })
            .map_err(|e| ChannelError::Config(format!("kafka consumer: {e}")))?;

        // Fixed before the consumer joins its group: the cluster takes a commit from a client
        // that is not a member only while the group has no members.
        let consumer = Arc::new(consumer);
        let deadline = Instant::now() + REQUEST_TIMEOUT * 2;
        loop {
            let (c, s) = (consumer.clone(), settings.clone());
            let fixed = tokio::task::spawn_blocking(move || fix_start_position(&c, &s, start))
                .await
                .map_err(|e| unavailable("fixing the start position", e))?;
            match fixed {
                Ok(()) => break,
                // The group's coordinator is moving or loading (a cluster that just started,
                // a broker restart), or the topic was just created and its partitions have
                // no leader yet: it answers shortly.
                Err(StartError::NotReady(e)) if Instant::now() < deadline => {
                    tracing::debug!(subscription = %spec.id, error = %e, "group coordinator or partition leaders not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(StartError::NotReady(e) | StartError::Other(e)) => {
                    return Err(unavailable(&format!("subscription {}", spec.id), e))
                }
            }
        }
        let Ok(consumer) = Arc::try_unwrap(consumer) else {
            return Err(unavailable(
                "fixing the start position",
                "consumer still shared",
            ));
        };
        inner
            .first_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&spec.id);
        consumer
            .subscribe(&[&settings.topic])
            .map_err(|e| unavailable("joining the consumer group", e))?;

        let (close_tx, close_rx) = watch::channel(false);
        let close_tx = Arc::new(close_tx);
        let (done_tx, done_rx) = watch::channel(false);
        let pump = Pump {
            consumer,
            shared: shared.clone(),
            close: close_rx.clone(),
            done: done_tx,
            commit_interval: settings.commit_interval,
            max_buffered: settings.max_buffered.max(1),
        };
        std::thread::Builder::new()
            .name(format!("kafka-{}", spec.id))
            .spawn(move || pump.run())
            .map_err(|e| unavailable("starting the consumer thread", e))?;
        inner
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                spec.id.clone(),
                SubHandle {
                    close: close_tx.clone(),
                    done: done_rx,
                },
            );
        Ok(Box::new(KafkaSubscription {
            rx,
            shared,
            close: close_tx,
            closed: close_rx,
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    async fn remove_subscription(&self, id: &str) -> Result<(), ChannelError> {
        close_local(&self.inner, id).await;
        self.inner
            .first_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let group = group_id(id);
        let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let res = tokio::time::timeout(
                REQUEST_TIMEOUT + Duration::from_secs(1),
                self.inner.admin.delete_groups(&[&group], &opts),
            )
            .await
            .map_err(|_| unavailable("deleting the consumer group", "timed out"))?
            .map_err(|e| unavailable("deleting the consumer group", e))?;
            match res.into_iter().next() {
                None | Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::GroupIdNotFound))) => {
                    return Ok(())
                }
                // A member elsewhere (another replica closing its consumer of the same
                // trigger, or ours still leaving) holds the group.
                Some(Err((_, code @ RDKafkaErrorCode::NonEmptyGroup)))
                | Some(Err((_, code @ RDKafkaErrorCode::CoordinatorLoadInProgress)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(%group, %code, "consumer group not deletable yet, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(Err((_, code))) => {
                    return Err(unavailable(
                        &format!("deleting consumer group {group}"),
                        code,
                    ))
                }
            }
        }
    }

    fn health(&self) -> Health {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Closes this process's consumer of `id`, if any, and waits (bounded) until it has committed
/// and left its group.
async fn close_local(inner: &Inner, id: &str) {
    let handle = inner
        .subscriptions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    if let Some(mut h) = handle {
        h.close.send_replace(true);
        let limit = REQUEST_TIMEOUT * 2 + inner.settings.revoke_timeout;
        let _ = tokio::time::timeout(limit, h.done.wait_for(|d| *d)).await;
    }
}

/// Makes the group's starting position durable the first time the group is seen (blocking:
/// runs on a blocking thread, before the consumer joins the group).
///
/// A group with a committed offset on any partition is known and left alone: its members
/// resume there (partitions without one were added later and are read from the beginning,
/// `auto.offset.reset=earliest`). A group without any gets its [`StartFrom`] resolved to
/// offsets on every partition and committed, so a crash before the first ack cannot turn into
/// a start at whatever the end of the log is by then.
fn fix_start_position(
    consumer: &BaseConsumer<SubContext>,
    settings: &KafkaSettings,
    start: StartFrom,
) -> Result<(), StartError> {
    let topic = settings.topic.as_str();
    let md = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| StartError::from_kafka("reading topic metadata", e))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(StartError::NotReady(format!(
            "topic {topic} has no partitions (yet)"
        )));
    }
    let mut query = TopicPartitionList::new();
    for p in &partitions {
        query.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(query, REQUEST_TIMEOUT)
        .map_err(|e| StartError::from_kafka("reading committed offsets", e))?;
    if committed
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(_)))
    {
        return Ok(());
    }

    let by_time = match start {
        StartFrom::Time(ms) => {
            let mut q = TopicPartitionList::new();
            for p in &partitions {
                q.add_partition_offset(topic, *p, Offset::Offset(ms))
                    .map_err(|e| StartError::from_kafka("looking up offsets by time", e))?;
            }
            Some(
                consumer
                    .offsets_for_times(q, REQUEST_TIMEOUT)
                    .map_err(|e| StartError::from_kafka("looking up offsets by time", e))?,
            )
        }
        _ => None,
    };
    let mut positions = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, REQUEST_TIMEOUT)
            .map_err(|e| StartError::from_kafka("reading watermarks", e))?;
        let offset = match start {
            StartFrom::Latest => high,
            StartFrom::Earliest => low,
            // The first record at or after the time; none (End) means after the last one.
            StartFrom::Time(_) => by_time
                .as_ref()
                .and_then(|t| t.find_partition(topic, *p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o.clamp(low, high)),
                    _ => None,
                })
                .unwrap_or(high),
        };
        positions
            .add_partition_offset(topic, *p, Offset::Offset(offset))
            .map_err(|e| StartError::from_kafka("fixing the start position", e))?;
    }
    consumer
        .commit(&positions, CommitMode::Sync)
        .map_err(|e| StartError::from_kafka("committing the start position", e))?;
    tracing::info!(topic, ?start, "kafka subscription start position committed");
    Ok(())
}

/// Why the start position could not be fixed.
enum StartError {
    /// The group's coordinator is not ready (moving, loading), or the topic's partitions have
    /// no leader yet (just created): worth retrying at once.
    NotReady(String),
    Other(String),
}

impl StartError {
    fn from_kafka(what: &str, e: KafkaError) -> Self {
        let text = format!("{what}: {e}");
        match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition,
            ) => StartError::NotReady(text),
            _ => StartError::Other(text),
        }
    }
}

/// Offsets handed out and not finished, per partition (see `sluice_core::offsets`).
type Tracker = sluice_core::offsets::OffsetTracker<i32>;

/// What the pump thread (and the rebalance callbacks it runs), the ackers and `next()` share.
struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a handed-out message is acked or nacked (a revocation waits on it).
    settled: Condvar,
    /// Signalled when `next()` brought the queue down to `resume_at` (the pump waits on it
    /// while the queue is full).
    room: Condvar,
    tx: mpsc::UnboundedSender<Item>,
    /// Items in the queue, for flow control.
    queued: AtomicUsize,
    /// The pump, stopped because the queue is full, polls again once no more than this many
    /// are queued.
    resume_at: usize,
    topic: String,
    revoke_timeout: Duration,
}

#[derive(Default)]
struct State {
    tracker: Tracker,
    /// The partitions assigned to this consumer.
    parts: HashMap<i32, Part>,
    next_epoch: u64,
    /// Messages handed out by `next()` and neither acked nor nacked, per (partition, epoch).
    in_flight: HashMap<(i32, u64), usize>,
    /// The assignment changed since the pump last paused fetching.
    reassigned: bool,
    /// A revocation waits on `settled` for in-flight messages to settle.
    revoking: bool,
}

/// One assigned partition. Each assignment gets a new epoch, so that what was handed out
/// under an earlier assignment of the same partition (revoked, and assigned back later) can
/// neither be handed out again nor finish an offset of the new one.
#[derive(Clone, Copy)]
struct Part {
    epoch: u64,
    /// False while the partition is being revoked: its messages are no longer handed out.
    live: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues what the pump polled (in order, so each partition's order is kept): records of
    /// partitions still assigned are tracked and handed to `next()`; the rest belong to the
    /// next owner and are dropped. Empties `batch`.
    fn hand_out(&self, batch: &mut Vec<Polled>) {
        let mut items = Vec::with_capacity(batch.len());
        {
            let mut st = self.lock();
            for polled in batch.drain(..) {
                match polled {
                    Polled::Error(e) => items.push(Item::Error(e)),
                    Polled::Record {
                        partition,
                        offset,
                        decoded,
                    } => {
                        let Some(part) = st.parts.get(&partition).copied().filter(|p| p.live)
                        else {
                            continue;
                        };
                        st.tracker.received(partition, offset);
                        match decoded {
                            Ok(envelope) => items.push(Item::Message {
                                envelope: Arc::new(envelope),
                                partition,
                                epoch: part.epoch,
                                offset,
                                count: 1,
                            }),
                            Err(DecodeError(reason)) => {
                                tracing::warn!(partition, offset, %reason, "skipping a kafka record that is not a CloudEvent");
                                st.tracker.finished(partition, offset);
                            }
                        }
                    }
                }
            }
        }
        for item in items {
            self.push(item);
        }
    }

    /// Blocks the pump until at most `resume_at` items are queued, or `timeout` passed.
    fn wait_for_room(&self, timeout: Duration) {
        let st = self.lock();
        let _ = self.room.wait_timeout_while(st, timeout, |_| {
            self.queued.load(Ordering::SeqCst) > self.resume_at
        });
    }

    /// `next()` took an item off the queue: wake the pump if that made room (it waits in
    /// [`Shared::wait_for_room`] while the queue is full).
    fn taken(&self) {
        let before = self.queued.fetch_sub(1, Ordering::SeqCst);
        if before == self.resume_at + 1 {
            // Taking the lock orders this with the pump's check of the count.
            drop(self.lock());
            self.room.notify_all();
        }
    }

    fn push(&self, item: Item) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(item).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A handed-out message is settled (acked or nacked); `finished` when acked.
    fn settle(&self, partition: i32, epoch: u64, offset: i64, finished: bool) {
        let mut st = self.lock();
        if let Some(n) = st.in_flight.get_mut(&(partition, epoch)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_flight.remove(&(partition, epoch));
            }
        }
        if finished && st.parts.get(&partition).is_some_and(|p| p.epoch == epoch) {
            st.tracker.finished(partition, offset);
        }
        // Only a revocation waits on `settled`: spare every other ack the wake-up syscall.
        let waiting = st.revoking;
        drop(st);
        if waiting {
            self.settled.notify_all();
        }
    }

    fn assigned(&self, tpl: &TopicPartitionList) {
        let mut st = self.lock();
        for e in tpl.elements_for_topic(&self.topic) {
            st.next_epoch += 1;
            let epoch = st.next_epoch;
            st.parts.insert(e.partition(), Part { epoch, live: true });
        }
        st.reassigned = true;
        tracing::info!(topic = %self.topic, partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "kafka partitions assigned");
    }

    /// The partitions are being taken away: stop handing out their messages, wait (at most
    /// `revoke_timeout`) for what was handed out to be acked or nacked, and commit what is
    /// finished — never past an unfinished offset, so the next owner starts at the first one
    /// not done here and duplicates are bounded by what was still in flight at the deadline.
    fn revoke(&self, consumer: &BaseConsumer<SubContext>, tpl: &TopicPartitionList) {
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let deadline = self.revoke_timeout;
        let mut st = self.lock();
        let mut keys = Vec::new();
        for p in &revoked {
            if let Some(part) = st.parts.get_mut(p) {
                part.live = false;
                keys.push((*p, part.epoch));
            }
        }
        // Set and checked under the lock, so no ack between the check and the wait is missed.
        st.revoking = true;
        let (mut st, timed_out) = self
            .settled
            .wait_timeout_while(st, deadline, |st| {
                keys.iter().any(|k| st.in_flight.contains_key(k))
            })
            .unwrap_or_else(|e| e.into_inner());
        st.revoking = false;
        if timed_out.timed_out() {
            tracing::warn!(topic = %self.topic, partitions = ?revoked, timeout_ms = self.revoke_timeout.as_millis() as u64, "kafka partitions revoked with deliveries still in flight; the next owner delivers them again");
        }
        let points: Vec<(i32, i64)> = st
            .tracker
            .commit_points()
            .into_iter()
            .filter(|(p, _)| revoked.contains(p))
            .collect();
        for p in &revoked {
            st.tracker.forget(*p);
            if let Some(part) = st.parts.remove(p) {
                st.in_flight.remove(&(*p, part.epoch));
            }
        }
        drop(st);
        if !points.is_empty() {
            let mut commit = TopicPartitionList::new();
            for (p, o) in &points {
                // Cannot fail: the offset is a plain Offset::Offset.
                let _ = commit.add_partition_offset(&self.topic, *p, Offset::Offset(*o));
            }
            // Partitions lost (the session expired) can no longer be committed to; the next
            // owner then starts at the last commit that made it.
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(topic = %self.topic, error = %e, "committing revoked kafka partitions failed");
            }
        }
        tracing::info!(topic = %self.topic, partitions = ?revoked, committed = ?points, "kafka partitions revoked");
    }
}

enum Item {
    Message {
        envelope: Arc<Envelope>,
        partition: i32,
        epoch: u64,
        offset: i64,
        count: u32,
    },
    Error(ChannelError),
}

/// Runs the rebalance protocol's side of the bookkeeping, and records which commits the
/// cluster confirmed. Its callbacks run on the pump thread, inside `poll`.
struct SubContext {
    shared: Weak<Shared>,
}

impl ClientContext for SubContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka consumer error");
    }
}

impl ConsumerContext for SubContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(tpl), Some(shared)) = (rebalance, self.shared.upgrade()) {
            shared.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match (rebalance, self.shared.upgrade()) {
            (Rebalance::Assign(tpl), Some(shared)) => shared.assigned(tpl),
            (Rebalance::Error(e), _) => tracing::warn!(error = %e, "kafka rebalance failed"),
            _ => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "kafka offset commit failed; will retry");
            return;
        }
        tracing::trace!(?offsets, "kafka offsets committed");
        let mut st = shared.lock();
        for e in offsets.elements() {
            if let (Offset::Offset(o), Ok(())) = (e.offset(), e.error()) {
                st.tracker.confirmed(e.partition(), o);
            }
        }
    }
}

/// The consumer's own thread: polls (which also runs the rebalance callbacks, and those may
/// block while revoked partitions drain, so not on the async runtime), feeds the queue while
/// pausing fetches when it is full, commits finished offsets, and on close commits once more
/// and leaves the group.
struct Pump {
    consumer: BaseConsumer<SubContext>,
    shared: Arc<Shared>,
    close: watch::Receiver<bool>,
    done: watch::Sender<bool>,
    commit_interval: Duration,
    max_buffered: usize,
}

impl Pump {
    fn run(self) {
        let Pump {
            consumer,
            shared,
            close,
            done,
            commit_interval,
            max_buffered,
        } = self;
        let mut last_commit = Instant::now();
        let mut paused = false;
        // Since when the queue has been full without a pause.
        let mut full_since: Option<Instant> = None;
        let mut last_was_error = false;
        let mut batch: Vec<Polled> = Vec::with_capacity(POLL_BATCH);
        while !*close.borrow() {
            if last_commit.elapsed() >= commit_interval {
                commit(&consumer, &shared, CommitMode::Async);
                last_commit = Instant::now();
            }
            let queued = shared.queued.load(Ordering::SeqCst);
            let reassigned = std::mem::take(&mut shared.lock().reassigned);
            if queued >= max_buffered {
                // Full. For a while, simply stop polling: librdkafka keeps what it fetched
                // (bounded by `queued.max.messages.kbytes`) and the subscriber takes the
                // queue down in a moment. Pausing would throw the prefetched records away
                // and refetch them on resume, a gap of up to `fetch.queue.backoff.ms` each
                // time. Rebalance callbacks run inside `poll`, though, so a subscriber that
                // stays stuck gets its partitions paused and the pump goes on polling.
                let since = *full_since.get_or_insert_with(Instant::now);
                if !paused && since.elapsed() < PAUSE_AFTER {
                    shared.wait_for_room(POLL_INTERVAL);
                    continue;
                }
                if !paused || reassigned {
                    if let Ok(a) = consumer.assignment() {
                        paused = consumer.pause(&a).is_ok();
                    }
                }
            } else {
                full_since = None;
                if paused && queued <= max_buffered / 2 {
                    if let Ok(a) = consumer.assignment() {
                        paused = consumer.resume(&a).is_err();
                    }
                }
            }
            // One poll that may wait, then whatever else is already there (up to the room
            // left), so the records of a fetch cost one lock and one wake-up of the
            // subscriber, not one each.
            let room = max_buffered.saturating_sub(queued).clamp(1, POLL_BATCH);
            let mut timeout = POLL_INTERVAL;
            while batch.len() < room {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Ok(m)) => {
                        last_was_error = false;
                        batch.push(Polled::take(&m));
                    }
                    Some(Err(e)) => {
                        if !last_was_error {
                            batch.push(Polled::Error(unavailable("consuming", &e)));
                        }
                        last_was_error = true;
                        tracing::debug!(error = %e, "kafka consumer error");
                    }
                }
                timeout = Duration::ZERO;
            }
            if !batch.is_empty() {
                shared.hand_out(&mut batch);
            }
        }
        commit(&consumer, &shared, CommitMode::Sync);
        // Leaving the group revokes every partition (the callback drains and commits them).
        drop(consumer);
        drop(shared);
        done.send_replace(true);
    }
}

/// What one poll returned, decoded outside the subscription's lock.
enum Polled {
    Record {
        partition: i32,
        offset: i64,
        decoded: Result<Envelope, DecodeError>,
    },
    Error(ChannelError),
}

impl Polled {
    fn take(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let decoded = match m.headers() {
            Some(h) => wire::decode(
                h.iter().map(|h| (h.key, h.value.unwrap_or_default())),
                payload,
                &wire::KAFKA,
            ),
            None => wire::decode([], payload, &wire::KAFKA),
        };
        Polled::Record {
            partition: m.partition(),
            offset: m.offset(),
            decoded,
        }
    }
}

fn commit(consumer: &BaseConsumer<SubContext>, shared: &Shared, mode: CommitMode) {
    let points = {
        let st = shared.lock();
        let mut points = st.tracker.commit_points();
        points.retain(|(p, _)| st.parts.get(p).is_some_and(|p| p.live));
        points
    };
    if points.is_empty() {
        return;
    }
    tracing::trace!(?points, ?mode, "committing kafka offsets");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &points {
        // Cannot fail: the offset is a plain Offset::Offset.
        let _ = tpl.add_partition_offset(&shared.topic, *p, Offset::Offset(*o));
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) if matches!(mode, CommitMode::Sync) => {
            let mut st = shared.lock();
            for (p, o) in points {
                st.tracker.confirmed(p, o);
            }
        }
        Ok(()) => {}
        Err(e) => tracing::debug!(error = %e, "kafka offset commit failed; will retry"),
    }
}

struct KafkaSubscription {
    rx: mpsc::UnboundedReceiver<Item>,
    shared: Arc<Shared>,
    close: Arc<watch::Sender<bool>>,
    closed: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.close.send_replace(true);
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Option<Result<Message, ChannelError>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let item = tokio::select! {
                biased;
                _ = self.closed.changed() => return None,
                item = self.rx.recv() => item?,
            };
            self.shared.taken();
            match item {
                Item::Error(e) => return Some(Err(e)),
                Item::Message {
                    envelope,
                    partition,
                    epoch,
                    offset,
                    count,
                } => {
                    {
                        // A message of a partition revoked (or revoked and assigned again)
                        // since it was queued is the next owner's now.
                        let mut st = self.shared.lock();
                        let current = st
                            .parts
                            .get(&partition)
                            .is_some_and(|p| p.live && p.epoch == epoch);
                        if !current {
                            continue;
                        }
                        *st.in_flight.entry((partition, epoch)).or_default() += 1;
                    }
                    let acker = KafkaAcker {
                        shared: Arc::downgrade(&self.shared),
                        envelope: envelope.clone(),
                        partition,
                        epoch,
                        offset,
                        count,
                        runtime: self.runtime.clone(),
                    };
                    let lane = u32::try_from(partition).unwrap_or(0);
                    return Some(Ok(Message::new(envelope, lane, count, Box::new(acker))));
                }
            }
        }
    }
}

struct KafkaAcker {
    shared: Weak<Shared>,
    envelope: Arc<Envelope>,
    partition: i32,
    epoch: u64,
    offset: i64,
    count: u32,
    runtime: tokio::runtime::Handle,
}

impl Acker for KafkaAcker {
    fn ack(self: Box<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.settle(self.partition, self.epoch, self.offset, true);
        }
    }

    fn nack(self: Box<Self>, delay: Duration) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Not finished: the offset keeps holding commits back. It no longer counts as in
        // flight, though — a revocation need not wait for a retry that may be far off.
        shared.settle(self.partition, self.epoch, self.offset, false);
        let item = Item::Message {
            envelope: self.envelope,
            partition: self.partition,
            epoch: self.epoch,
            offset: self.offset,
            count: self.count.saturating_add(1),
        };
        if delay.is_zero() {
            shared.push(item);
            return;
        }
        let shared = Arc::downgrade(&shared);
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(shared) = shared.upgrade() {
                shared.push(item);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_are_counted() {
        // Version 1, one topic "t" with partitions 0 and 3, then user data.
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2];
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(assigned_partitions(&b), 2);
        assert_eq!(assigned_partitions(&[0, 1, 0, 0, 0, 0]), 0);
        assert_eq!(assigned_partitions(&[0, 1, 0]), 0);
    }

    #[test]
    fn names_follow_knative() {
        assert_eq!(
            topic_name(&Key::new("default", "my-broker")),
            "knative-broker-default-my-broker"
        );
        assert_eq!(group_id("ns/trig"), "knative-trigger-ns-trig");
    }
}
