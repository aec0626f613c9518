//! The Kafka channel (feature `kafka`): one topic per broker, one consumer group per trigger,
//! through librdkafka (built from source, linked statically).
//!
//! ```text
//! publish ──encode (wire::KAFKA)──▶ FutureProducer (acks=all, idempotent) ──▶ knative-broker-<ns>-<name>
//!                                                                                 │ partitions
//! Subscription::next ◀── queue ◀── pump task (consumer assigned every partition; offsets in
//!        │                  ▲                   group knative-trigger-<ns>-<name>)
//!        ▼                  │ nack(delay): re-queued    commits the low-water mark of finished
//!                                                      offsets every `commit_interval`
//!   Message ──ack──▶ tracker (per partition: offsets handed out and not finished)
//! ```
//!
//! **Publishing.** `publish` returns once the delivery report says the record is stored with
//! `acks=all`; the producer is idempotent (`enable.idempotence=true`, so librdkafka's retries
//! never duplicate or reorder a record). tansu supports the idempotent producer
//! (`InitProducerId`), so there is no fallback; the conformance suite runs on it. A publish that cannot complete within
//! [`KafkaSettings::publish_timeout`] (cluster unreachable, topic missing) fails with
//! [`ChannelError::Unavailable`]; librdkafka's own queue being full is [`ChannelError::Full`].
//! The CloudEvent's `partitionkey` extension is the record key; without it records are spread
//! over partitions. Events are stored in binary content mode ([`crate::wire`]).
//!
//! **Consumers and offsets.** Each subscription has its own consumer, which is *assigned*
//! every partition of the topic and uses its consumer group `knative-trigger-<ns>-<name>` for
//! committed offsets only; it does not join the group. (Group membership would let several
//! processes share a trigger's partitions, but a half-joined member that leaves again stalls
//! the group until it times out — tansu does not expire it promptly — and Sluice runs one
//! consumer per trigger: the trait promises at most one consumer per id.) The group is only
//! ever committed to, so tools that show a group's lag work as usual.
//!
//! Offsets are committed only for finished events (acked: delivered or dead-lettered). Per
//! partition the subscription tracks the offsets it handed out and has not seen finished, and
//! commits the lowest unfinished offset (or the next offset, when everything handed out is
//! finished), so a commit never passes an event still being delivered, however out of order
//! the dispatcher finishes them. Commits are batched every [`KafkaSettings::commit_interval`]
//! and made once more when the subscription closes. A crash redelivers at most what was in
//! flight or finished since the last commit (at-least-once): with deliveries finishing at
//! rate r, those in flight plus up to `r × commit_interval` finished ones.
//! [`KafkaChannel::committed_offsets`] reads what the cluster holds as committed.
//!
//! **Starting position.** The first time a group is seen (no committed offset on any
//! partition) the subscription resolves its [`StartFrom`] to concrete offsets — the high
//! watermarks (latest), the low watermarks (earliest) or the first record at or after the time
//! (see `TimeReader`) — and commits them *before* consuming. The position is then durable: a
//! crash before the first ack cannot turn into an `auto.offset.reset=latest` that skips what
//! was published meanwhile. Partitions without a committed offset in a known group (added
//! later) are read from the beginning. Partitions added while a subscription is open are
//! picked up when it is next opened.
//!
//! **Redelivery.** Kafka has no per-message negative acknowledgement: `nack(delay)` keeps the
//! offset unfinished (so nothing past it is committed) and puts the message back on the
//! subscription's queue after the delay, without holding up other messages.
//! `delivery_count` counts deliveries by this process; it restarts at 1 after a restart.
//! [`Channel::redelivers_with_delay`] is false: the dispatcher may as well wait in-process.
//!
//! **Order and flow control.** Every message's lane is its partition, so an ordered trigger
//! can serialise per partition; unordered triggers take messages as fast as they like. The
//! pump keeps polling the consumer and pauses fetching while more than [`KafkaSettings::max_buffered`] messages wait for `next()`.
//!
//! **Health.** A background task asks the cluster for the topic's metadata every second;
//! [`Channel::health`] is `NotReady` with the reason while that fails, and the task re-creates
//! the topic if it has disappeared (a broker whose storage was wiped).

use crate::wire::{self, DecodeError};
use crate::{Acker, Channel, ChannelError, Health, Message, Subscription, SubscriptionSpec};
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use sluice_core::topology::{Key, StartFrom};
use sluice_core::Envelope;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// How long one call to the cluster's metadata or admin API may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the health task checks the cluster.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

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

impl Inner {
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

    /// One health check: can the cluster tell us about the topic? Re-creates it if it is gone.
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
            Ok(Ok(missing)) => {
                if missing {
                    if let Err(e) = self.ensure_topic().await {
                        set_health(&self.health, Health::NotReady(e.to_string()));
                        return;
                    }
                }
                set_health(&self.health, Health::Ready);
            }
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
        let mut headers = OwnedHeaders::new_with_capacity(encoded.headers.len());
        for (k, v) in &encoded.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
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
            Ok(Ok(_delivery)) => {
                set_health(&inner.health, Health::Ready);
                Ok(())
            }
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))) => {
                Err(ChannelError::Full("kafka producer queue is full".into()))
            }
            Ok(Err((e, _))) => {
                let err = unavailable(&format!("publishing to {}", inner.settings.topic), e);
                set_health(&inner.health, Health::NotReady(err.to_string()));
                Err(err)
            }
            Err(_) => {
                let err = unavailable(
                    &format!("publishing to {}", inner.settings.topic),
                    "no delivery report in time",
                );
                set_health(&inner.health, Health::NotReady(err.to_string()));
                Err(err)
            }
        }
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, ChannelError> {
        let inner = &self.inner;
        // At most one consumer per id: a new subscribe replaces (closes) the old one.
        close_local(inner, &spec.id).await;

        let settings = &inner.settings;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::default()),
            tx,
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
            topic: settings.topic.clone(),
        });
        let consumer: StreamConsumer<SubContext> = settings
            .client_config(&[
                // librdkafka prefetches up to 64 MiB per consumer by default; one consumer per
                // trigger makes that too much.
                ("queued.max.messages.kbytes", "8192"),
                // Only when a committed offset is no longer in the log (retention deleted it).
                ("auto.offset.reset", "earliest"),
            ])
            .set("group.id", group_id(&spec.id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create_with_context(SubContext {
                shared: Arc::downgrade(&shared),
            })
            .map_err(|e| ChannelError::Config(format!("kafka consumer: {e}")))?;
        let consumer = Arc::new(consumer);

        let (c, s, start) = (consumer.clone(), settings.clone(), spec.start_from);
        let assignment = tokio::task::spawn_blocking(move || start_positions(&c, &s, start))
            .await
            .map_err(|e| unavailable("fixing the start position", e))??;
        consumer
            .assign(&assignment)
            .map_err(|e| unavailable("assigning partitions", e))?;

        let (close_tx, close_rx) = watch::channel(false);
        let close_tx = Arc::new(close_tx);
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(pump(
            consumer,
            shared.clone(),
            close_rx.clone(),
            done_tx,
            settings.commit_interval,
            settings.max_buffered.max(1),
        ));
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
                // A member elsewhere (or our own, still leaving) holds the group.
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
        let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, h.done.wait_for(|d| *d)).await;
    }
}

/// The offsets a subscription starts from (blocking: runs on a blocking thread).
///
/// A group with a committed offset on any partition is known: it resumes there (partitions
/// without one were added later and are read from the beginning). A group without any is new:
/// its [`StartFrom`] is resolved to offsets and committed *before* anything is consumed.
fn start_positions(
    consumer: &StreamConsumer<SubContext>,
    settings: &KafkaSettings,
    start: StartFrom,
) -> Result<TopicPartitionList, ChannelError> {
    let topic = settings.topic.as_str();
    let md = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| unavailable("reading topic metadata", e))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(unavailable(
            "reading topic metadata",
            format!("topic {topic} has no partitions (yet)"),
        ));
    }
    let mut query = TopicPartitionList::new();
    for p in &partitions {
        query.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(query, REQUEST_TIMEOUT)
        .map_err(|e| unavailable("reading committed offsets", e))?;
    let mut positions = TopicPartitionList::new();
    let known = committed
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(_)));
    if known {
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            positions
                .add_partition_offset(topic, e.partition(), offset)
                .map_err(|e| unavailable("resuming", e))?;
        }
        return Ok(positions);
    }

    let hints = match start {
        StartFrom::Time(ms) => {
            let mut q = TopicPartitionList::new();
            for p in &partitions {
                q.add_partition_offset(topic, *p, Offset::Offset(ms))
                    .map_err(|e| unavailable("looking up offsets by time", e))?;
            }
            Some(
                consumer
                    .offsets_for_times(q, REQUEST_TIMEOUT)
                    .map_err(|e| unavailable("looking up offsets by time", e))?,
            )
        }
        _ => None,
    };
    let mut reader = None;
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, REQUEST_TIMEOUT)
            .map_err(|e| unavailable("reading watermarks", e))?;
        let offset = match start {
            StartFrom::Latest => high,
            StartFrom::Earliest => low,
            StartFrom::Time(ms) => {
                let hint = hints
                    .as_ref()
                    .and_then(|h| h.find_partition(topic, *p))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                if reader.is_none() {
                    reader = Some(TimeReader::new(settings)?);
                }
                let r = reader.as_ref().expect("just set");
                r.offset_for_time(topic, *p, ms, low, high, hint)?
            }
        };
        positions
            .add_partition_offset(topic, *p, Offset::Offset(offset))
            .map_err(|e| unavailable("fixing the start position", e))?;
    }
    consumer
        .commit(&positions, CommitMode::Sync)
        .map_err(|e| unavailable("committing the start position", e))?;
    tracing::info!(topic, ?start, "kafka subscription start position committed");
    Ok(positions)
}

/// Finds the first offset whose record is at or after a time, by reading record timestamps.
///
/// `offsets_for_times` is the standard answer, but not every Kafka-compatible broker gives it
/// faithfully (tansu answers from storage modification times, and `0` when nothing matches).
/// So its answer is only a hint, checked by reading the records at and before it (two reads
/// on a real Kafka cluster); when the check fails, a binary search over the partition's record
/// timestamps finds the offset (log2(n) single-record reads).
struct TimeReader {
    consumer: BaseConsumer,
}

impl TimeReader {
    fn new(settings: &KafkaSettings) -> Result<Self, ChannelError> {
        let consumer = settings
            .client_config(&[])
            // librdkafka wants a group even for assigned partitions; this one never commits.
            .set("group.id", "sluice-time-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| ChannelError::Config(format!("kafka consumer: {e}")))?;
        Ok(TimeReader { consumer })
    }

    /// The first record at or after `offset`: its offset and timestamp (ms), if any.
    fn first_at(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Option<(i64, i64)>, ChannelError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| unavailable("reading a record", e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| unavailable("reading a record", e))?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.partition() == partition && m.offset() >= offset => {
                    let ts = m.timestamp().to_millis().unwrap_or(i64::MIN);
                    return Ok(Some((m.offset(), ts)));
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(None),
                Some(Err(e)) => return Err(unavailable("reading a record", e)),
                None if tokio::time::Instant::now() >= deadline => {
                    return Err(unavailable("reading a record", "timed out"))
                }
                None => {}
            }
        }
    }

    fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        ms: i64,
        low: i64,
        high: i64,
        hint: Option<i64>,
    ) -> Result<i64, ChannelError> {
        if low >= high {
            return Ok(high);
        }
        // Is `o` the first offset at or after the time? Yes when the first record from `o`
        // on is at/after it (or there is none) and the one before `o` is earlier.
        let is_answer = |o: i64| -> Result<bool, ChannelError> {
            if o < low || o > high {
                return Ok(false);
            }
            let here = if o < high {
                self.first_at(topic, partition, o)?
            } else {
                None
            };
            if here.is_some_and(|(_, ts)| ts < ms) {
                return Ok(false);
            }
            if o == low {
                return Ok(true);
            }
            Ok(match self.first_at(topic, partition, o - 1)? {
                Some((at, ts)) => ts < ms || at >= o,
                None => true,
            })
        };
        if let Some(h) = hint {
            if is_answer(h)? {
                return Ok(h);
            }
        }
        let (mut lo, mut hi) = (low, high);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.first_at(topic, partition, mid)? {
                Some((_, ts)) if ts >= ms => hi = mid,
                Some((at, _)) => lo = at + 1,
                None => hi = mid,
            }
        }
        Ok(lo.min(high))
    }
}

/// Offsets handed out and not finished, per partition (see `sluice_core::offsets`).
type Tracker = sluice_core::offsets::OffsetTracker<i32>;

/// What the pump, the ackers and `next()` share.
struct Shared {
    tracker: Mutex<Tracker>,
    tx: mpsc::UnboundedSender<Item>,
    /// Items in the queue, for flow control.
    queued: AtomicUsize,
    drained: Notify,
    topic: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, item: Item) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(item).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

enum Item {
    Message {
        envelope: Arc<Envelope>,
        partition: i32,
        offset: i64,
        count: u32,
    },
    Error(ChannelError),
}

/// Records which commits the cluster confirmed.
struct SubContext {
    shared: Weak<Shared>,
}

impl ClientContext for SubContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka consumer error");
    }
}

impl ConsumerContext for SubContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "kafka offset commit failed; will retry");
            return;
        }
        tracing::trace!(?offsets, "kafka offsets committed");
        let mut t = shared.lock();
        for e in offsets.elements() {
            if let (Offset::Offset(o), Ok(())) = (e.offset(), e.error()) {
                t.confirmed(e.partition(), o);
            }
        }
    }
}

/// Polls the consumer, feeds the queue (pausing fetches while it is full), commits finished
/// offsets, and on close commits one last time.
async fn pump(
    consumer: Arc<StreamConsumer<SubContext>>,
    shared: Arc<Shared>,
    mut close: watch::Receiver<bool>,
    done: watch::Sender<bool>,
    commit_interval: Duration,
    max_buffered: usize,
) {
    let mut commit_tick = tokio::time::interval(commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paused = false;
    let mut last_was_error = false;
    loop {
        if *close.borrow() {
            break;
        }
        tokio::select! {
            _ = close.changed() => {}
            _ = commit_tick.tick() => commit(&consumer, &shared, CommitMode::Async),
            _ = shared.drained.notified(), if paused => {
                if shared.queued.load(Ordering::SeqCst) <= max_buffered / 2 {
                    if let Ok(a) = consumer.assignment() {
                        paused = consumer.resume(&a).is_err();
                    }
                }
            }
            received = consumer.recv() => match received {
                Ok(m) => {
                    last_was_error = false;
                    let (partition, offset) = (m.partition(), m.offset());
                    let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                    let decoded = match m.headers() {
                        Some(h) => wire::decode(
                            h.iter().map(|h| (h.key, h.value.unwrap_or_default())),
                            payload,
                            &wire::KAFKA,
                        ),
                        None => wire::decode([], payload, &wire::KAFKA),
                    };
                    drop(m);
                    match decoded {
                        Ok(envelope) => {
                            shared.lock().received(partition, offset);
                            shared.push(Item::Message {
                                envelope: Arc::new(envelope),
                                partition,
                                offset,
                                count: 1,
                            });
                        }
                        Err(DecodeError(reason)) => {
                            tracing::warn!(partition, offset, %reason, "skipping a kafka record that is not a CloudEvent");
                            let mut t = shared.lock();
                            t.received(partition, offset);
                            t.finished(partition, offset);
                        }
                    }
                    if !paused && shared.queued.load(Ordering::SeqCst) >= max_buffered {
                        if let Ok(a) = consumer.assignment() {
                            paused = consumer.pause(&a).is_ok();
                        }
                    }
                }
                Err(e) => {
                    if !last_was_error {
                        shared.push(Item::Error(unavailable("consuming", &e)));
                    }
                    last_was_error = true;
                    tracing::debug!(error = %e, "kafka consumer error");
                    tokio::select! {
                        _ = close.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }
    // The final commit blocks, and so does closing the consumer: not on the async threads.
    let _ = tokio::task::spawn_blocking(move || {
        commit(&consumer, &shared, CommitMode::Sync);
        drop(shared);
        drop(consumer);
    })
    .await;
    done.send_replace(true);
}

fn commit(consumer: &StreamConsumer<SubContext>, shared: &Shared, mode: CommitMode) {
    let points = shared.lock().commit_points();
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
            let mut t = shared.lock();
            for (p, o) in points {
                t.confirmed(p, o);
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
        if *self.closed.borrow() {
            return None;
        }
        let item = tokio::select! {
            biased;
            _ = self.closed.changed() => return None,
            item = self.rx.recv() => item?,
        };
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        self.shared.drained.notify_one();
        match item {
            Item::Error(e) => Some(Err(e)),
            Item::Message {
                envelope,
                partition,
                offset,
                count,
            } => {
                let acker = KafkaAcker {
                    shared: Arc::downgrade(&self.shared),
                    envelope: envelope.clone(),
                    partition,
                    offset,
                    count,
                    runtime: self.runtime.clone(),
                };
                let lane = u32::try_from(partition).unwrap_or(0);
                Some(Ok(Message::new(envelope, lane, count, Box::new(acker))))
            }
        }
    }
}

struct KafkaAcker {
    shared: Weak<Shared>,
    envelope: Arc<Envelope>,
    partition: i32,
    offset: i64,
    count: u32,
    runtime: tokio::runtime::Handle,
}

impl Acker for KafkaAcker {
    fn ack(self: Box<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().finished(self.partition, self.offset);
        }
    }

    fn nack(self: Box<Self>, delay: Duration) {
        let item = Item::Message {
            envelope: self.envelope,
            partition: self.partition,
            offset: self.offset,
            count: self.count.saturating_add(1),
        };
        if delay.is_zero() {
            if let Some(shared) = self.shared.upgrade() {
                shared.push(item);
            }
            return;
        }
        let shared = self.shared;
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
    fn names_follow_knative() {
        assert_eq!(
            topic_name(&Key::new("default", "my-broker")),
            "knative-broker-default-my-broker"
        );
        assert_eq!(group_id("ns/trig"), "knative-trigger-ns-trig");
    }

    fn sorted(mut v: Vec<(i32, i64)>) -> Vec<(i32, i64)> {
        v.sort();
        v
    }

    #[test]
    fn commits_never_pass_an_unfinished_offset() {
        let mut t = Tracker::default();
        t.received(0, 10);
        t.received(0, 11);
        t.received(0, 12);
        t.received(1, 5);
        assert_eq!(sorted(t.commit_points()), [(0, 10), (1, 5)]);
        // Finishing out of order does not move the commit past 10.
        t.finished(0, 11);
        t.finished(0, 12);
        t.confirmed(0, 10);
        t.confirmed(1, 5);
        assert!(t.commit_points().is_empty());
        t.finished(0, 10);
        t.finished(1, 5);
        assert_eq!(sorted(t.commit_points()), [(0, 13), (1, 6)]);
        t.confirmed(0, 13);
        assert_eq!(sorted(t.commit_points()), [(1, 6)]);
        // A redelivered (nacked) offset keeps holding the commit back until it is acked.
        t.received(1, 6);
        t.received(1, 7);
        t.finished(1, 7);
        assert_eq!(sorted(t.commit_points()), [(1, 6)]);
    }
}
