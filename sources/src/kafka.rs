//! KafkaSource (feature `kafka`): records of Kafka topics as CloudEvents, through librdkafka.
//!
//! ```text
//! topics ──▶ StreamConsumer (partitions assigned, not group-joined) ──pump──▶ a worker per partition
//!                   ▲                                                              │ record_to_event
//!                   │ commit every COMMIT_INTERVAL:                                 │ + ceOverrides
//!                   │ per partition, the first offset not yet finished              ▼
//!                   └────────────────────── Tracker ◀── finished ◀── Sender::deliver (retries, DLS)
//! ```
//!
//! **Partitions and the group.** The consumer is *assigned* every partition of every topic and
//! uses the consumer group only to store committed offsets; it does not join the group. This
//! is the lesson of the Kafka channel: a member that half-joins and leaves stalls its group
//! until the broker expires it, which tansu does not do promptly, and one process reads all
//! partitions anyway. (`consumers`, Knative's replica count, is therefore accepted but has no
//! effect.)
//!
//! **Where it starts.** A partition with a committed offset resumes there. One without (a new
//! group) starts at the low watermark (`initialOffset: earliest`) or the high watermark
//! (`latest`, the default), and that position is committed before anything is read, so a
//! crash before the first delivery cannot skip what was produced meanwhile.
//!
//! **Order.** Each partition has its own worker: with `ordering: ordered` it delivers one
//! record at a time in offset order (the next waits for the previous one's retries); with
//! `unordered` up to [`UNORDERED_CONCURRENCY`] at once. Partitions never wait for each other;
//! a partition whose worker falls [`MAX_QUEUED`] records behind is paused until it catches up.
//!
//! **Offsets.** A record is finished when the sink accepted it, when it was dead-lettered, or
//! when delivery gave up without a dead-letter sink (dropped, counted as failed). When both
//! the sink and the dead-letter sink fail, the record is not finished: it is delivered again
//! after a pause, for as long as it takes, and holds its partition's commits back. Per
//! partition the commit is the lowest unfinished offset (or the next offset when all are
//! finished), so a commit never passes a record still being delivered, however out of order
//! an unordered worker finishes. Commits are made every [`COMMIT_INTERVAL`] and once more,
//! synchronously, when the source stops: a clean restart resumes exactly after what was
//! delivered, a crash redelivers at most what was in flight or finished since the last
//! commit (at-least-once).

use crate::record::{record_to_event, Record};
use crate::{log_failure, Counters, Env, Error, Health};
use bytes::Bytes;
use futures::StreamExt as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::topology::{InitialOffset, KafkaSource};
use sluice_core::Envelope;
use sluice_delivery::{Delivered, Request};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one request to the cluster (metadata, offsets, watermarks) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a source marked not ready checks whether the cluster is back.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How often finished offsets are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Records a partition may have waiting for its worker before fetching from it pauses.
pub const MAX_QUEUED: usize = 500;
/// Deliveries in flight per partition with `ordering: unordered`.
pub const UNORDERED_CONCURRENCY: usize = 64;
/// Waits between attempts to (re)start the consumer: doubling from the first to the second.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// Waits before delivering again a record that neither the sink nor the dead-letter sink took.
const REDELIVER_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// A partition of one of the source's topics: (index in `spec.topics`, partition).
type Tp = (usize, i32);

fn set_health(health: &Mutex<Health>, value: Health) {
    *health.lock().unwrap_or_else(|e| e.into_inner()) = value;
}

/// Runs one KafkaSource until `cancel`, restarting the consumer (with backoff) while the
/// cluster is unreachable or a topic is missing.
pub(crate) async fn run(
    spec: Arc<KafkaSource>,
    env: Env,
    cancel: CancellationToken,
    health: Arc<Mutex<Health>>,
) {
    let counters = Counters::new(&env.metrics, &spec.key, "KafkaSource");
    let mut backoff = RESTART_BACKOFF.0;
    loop {
        match start(&spec, &health).await {
            Ok(session) => {
                set_health(&health, Health::Ready);
                tracing::info!(source = %spec.key, topics = ?spec.topics, group = %spec.consumer_group, sink = %spec.sink, "KafkaSource started");
                session.run(&spec, &env, &counters, &cancel, &health).await;
                tracing::info!(source = %spec.key, "KafkaSource stopped");
                return;
            }
            Err(e) => {
                tracing::warn!(source = %spec.key, error = %e, retry_in_ms = backoff.as_millis() as u64, "KafkaSource could not start; retrying");
                set_health(&health, Health::NotReady(e.to_string()));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF.1);
    }
}

/// A connected consumer with its partitions assigned.
struct Session {
    consumer: Arc<StreamConsumer<SourceContext>>,
    shared: Arc<Shared>,
}

async fn start(spec: &Arc<KafkaSource>, health: &Arc<Mutex<Health>>) -> Result<Session, Error> {
    let servers = spec.bootstrap_servers.join(",");
    let shared = Arc::new(Shared {
        tracker: Mutex::new(Tracker::default()),
        topics: spec.topics.clone(),
    });
    let consumer: StreamConsumer<SourceContext> = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", &spec.consumer_group)
        .set(
            "client.id",
            format!(
                "sluice-kafkasource-{}-{}",
                spec.key.namespace, spec.key.name
            ),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only for a committed offset that retention has already deleted.
        .set("auto.offset.reset", "earliest")
        // Reconnect quickly once the cluster is back, rather than backing off to 10 s.
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4")
        .create_with_context(SourceContext {
            shared: Arc::downgrade(&shared),
            health: health.clone(),
        })
        .map_err(|e| kafka_error(&servers, "creating the consumer", e))?;
    let consumer = Arc::new(consumer);
    let (c, s) = (consumer.clone(), spec.clone());
    let assignment = tokio::task::spawn_blocking(move || start_positions(&c, &s))
        .await
        .map_err(|e| kafka_error(&servers, "fixing the start position", e))??;
    consumer
        .assign(&assignment)
        .map_err(|e| kafka_error(&servers, "assigning partitions", e))?;
    Ok(Session { consumer, shared })
}

fn kafka_error(servers: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Kafka {
        servers: servers.to_string(),
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// The offsets each partition starts from (blocking: runs on a blocking thread). Partitions
/// without a committed offset get the `initialOffset` position, committed before returning.
fn start_positions(
    consumer: &StreamConsumer<SourceContext>,
    spec: &KafkaSource,
) -> Result<TopicPartitionList, Error> {
    let servers = spec.bootstrap_servers.join(",");
    let err = |what: &str, e: KafkaError| kafka_error(&servers, what, e);
    let mut all = TopicPartitionList::new();
    for topic in &spec.topics {
        let md = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| err("reading topic metadata", e))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(Error::MissingTopic(topic.clone()));
        }
        for p in partitions {
            all.add_partition(topic, p);
        }
    }
    let committed = consumer
        .committed_offsets(all, REQUEST_TIMEOUT)
        .map_err(|e| err("reading committed offsets", e))?;
    let mut positions = TopicPartitionList::new();
    let mut fixed = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => o,
            _ => {
                let (low, high) = consumer
                    .fetch_watermarks(e.topic(), e.partition(), REQUEST_TIMEOUT)
                    .map_err(|e| err("reading watermarks", e))?;
                let o = match spec.initial_offset {
                    InitialOffset::Earliest => low,
                    InitialOffset::Latest => high,
                };
                fixed
                    .add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))
                    .map_err(|e| err("fixing the start position", e))?;
                o
            }
        };
        positions
            .add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset))
            .map_err(|e| err("fixing the start position", e))?;
    }
    if fixed.count() > 0 {
        consumer
            .commit(&fixed, CommitMode::Sync)
            .map_err(|e| err("committing the start position", e))?;
        tracing::info!(source = %spec.key, initial_offset = ?spec.initial_offset, partitions = fixed.count(), "KafkaSource start position committed");
    }
    Ok(positions)
}

impl Session {
    /// Reads records and hands them to the partition workers until `cancel`; then stops the
    /// workers and commits what they finished.
    async fn run(
        self,
        spec: &Arc<KafkaSource>,
        env: &Env,
        counters: &Counters,
        cancel: &CancellationToken,
        health: &Arc<Mutex<Health>>,
    ) {
        let Session { consumer, shared } = self;
        let mut workers: HashMap<Tp, Worker> = HashMap::new();
        let mut tasks = JoinSet::new();
        let (resume_tx, mut resume_rx) = mpsc::unbounded_channel::<Tp>();
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let concurrency = if spec.ordered {
            1
        } else {
            UNORDERED_CONCURRENCY
        };
        let mut health_tick = tokio::time::interval(HEALTH_INTERVAL);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_was_error = false;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = commit_tick.tick() => commit(&consumer, &shared, CommitMode::Async),
                _ = health_tick.tick() => {
                    // Errors mark the source not ready; an idle topic brings no message to
                    // say the cluster is back, so ask it (off the async threads).
                    let not_ready = matches!(*health.lock().unwrap_or_else(|e| e.into_inner()), Health::NotReady(_));
                    if not_ready {
                        let (c, h, topic) = (consumer.clone(), health.clone(), spec.topics[0].clone());
                        tokio::task::spawn_blocking(move || {
                            if c.fetch_metadata(Some(&topic), REQUEST_TIMEOUT).is_ok() {
                                set_health(&h, Health::Ready);
                            }
                        });
                    }
                }
                Some(tp) = resume_rx.recv() => {
                    if let Some(w) = workers.get_mut(&tp) {
                        if w.paused && w.queued.load(Ordering::SeqCst) <= MAX_QUEUED / 2 {
                            w.paused = consumer.resume(&shared.tpl(tp)).is_err();
                        }
                    }
                }
                received = consumer.recv() => match received {
                    Ok(m) => {
                        if last_was_error {
                            set_health(health, Health::Ready);
                            last_was_error = false;
                        }
                        let Some((tp, record)) = shared.owned(&m) else { continue };
                        drop(m);
                        shared.lock().received(tp, record.offset);
                        let w = workers.entry(tp).or_insert_with(|| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            let queued = Arc::new(AtomicUsize::new(0));
                            tasks.spawn(partition_worker(rx, WorkerCtx {
                                spec: spec.clone(),
                                env: env.clone(),
                                counters: counters.clone(),
                                shared: shared.clone(),
                                tp,
                                queued: queued.clone(),
                                resume: resume_tx.clone(),
                            }, concurrency));
                            Worker { tx, queued, paused: false }
                        });
                        let queued = w.queued.fetch_add(1, Ordering::SeqCst) + 1;
                        let _ = w.tx.send(record);
                        if queued >= MAX_QUEUED && !w.paused {
                            w.paused = consumer.pause(&shared.tpl(tp)).is_ok();
                        }
                    }
                    Err(e) => {
                        tracing::debug!(source = %spec.key, error = %e, "kafka consumer error");
                        if !last_was_error {
                            set_health(health, Health::NotReady(format!("consuming: {e}")));
                        }
                        last_was_error = true;
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
            }
        }
        // Records still being delivered stay unfinished: they are redelivered next time.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        // The final commit blocks, and so does closing the consumer: not on the async threads.
        let _ = tokio::task::spawn_blocking(move || {
            commit(&consumer, &shared, CommitMode::Sync);
            drop(consumer);
        })
        .await;
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<Record>,
    queued: Arc<AtomicUsize>,
    paused: bool,
}

struct WorkerCtx {
    spec: Arc<KafkaSource>,
    env: Env,
    counters: Counters,
    shared: Arc<Shared>,
    tp: Tp,
    queued: Arc<AtomicUsize>,
    resume: mpsc::UnboundedSender<Tp>,
}

/// Delivers one partition's records, `concurrency` at a time (1: in offset order).
async fn partition_worker(
    mut rx: mpsc::UnboundedReceiver<Record>,
    ctx: WorkerCtx,
    concurrency: usize,
) {
    let records = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    records
        .for_each_concurrent(concurrency, |record| {
            let ctx = &ctx;
            async move {
                let offset = record.offset;
                deliver(ctx, record).await;
                ctx.shared.lock().finished(ctx.tp, offset);
                // Crossing half the limit downwards: ask the pump to resume fetching.
                if ctx.queued.fetch_sub(1, Ordering::SeqCst) == MAX_QUEUED / 2 + 1 {
                    let _ = ctx.resume.send(ctx.tp);
                }
            }
        })
        .await;
}

/// Delivers one record until it is finished (accepted, dead-lettered or dropped).
async fn deliver(ctx: &WorkerCtx, record: Record) {
    let spec = &ctx.spec;
    let (mut event, mapping) = record_to_event(&spec.key, &record);
    // Knative applies ceOverrides to every event, CloudEvent records included.
    for (name, value) in &spec.extensions {
        event.set(name.as_str(), value.as_str());
    }
    ctx.counters.produced.inc();
    tracing::trace!(source = %spec.key, partition = record.partition, offset = record.offset, ?mapping, id = event.id(), "record read");
    let envelope = Envelope::new(event);
    let mut wait = REDELIVER_BACKOFF.0;
    loop {
        let report = ctx
            .env
            .sender
            .deliver(Request {
                url: &spec.sink,
                envelope: &envelope,
                policy: &spec.delivery,
                namespace: Some(&spec.key.namespace),
            })
            .await;
        log_failure(&spec.key, envelope.event.id(), &report);
        if matches!(report.result, Delivered::DeadLetterFailed { .. }) {
            // Neither the sink nor the dead-letter sink has the event: committing past it
            // would lose it, so it is tried again, holding its partition back.
            tracing::warn!(source = %spec.key, partition = record.partition, offset = record.offset, retry_in_ms = wait.as_millis() as u64, "record not delivered; it will be delivered again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REDELIVER_BACKOFF.1);
            continue;
        }
        ctx.counters.count(&report);
        return;
    }
}

/// What the pump, the workers and the consumer's commit callback share.
struct Shared {
    tracker: Mutex<Tracker>,
    topics: Vec<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    fn tpl(&self, (topic, partition): Tp) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topics[topic], partition);
        tpl
    }

    /// The record, copied out of librdkafka's buffer.
    fn owned(&self, m: &BorrowedMessage<'_>) -> Option<(Tp, Record)> {
        let tp = (self.topic_index(m.topic())?, m.partition());
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            Bytes::copy_from_slice(h.value.unwrap_or_default()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let record = Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(Bytes::copy_from_slice),
            headers,
            value: m.payload().map(Bytes::copy_from_slice),
        };
        Some((tp, record))
    }
}

/// Records the commits the cluster confirmed, and marks the source not ready while no broker
/// of the cluster can be reached.
struct SourceContext {
    shared: Weak<Shared>,
    health: Arc<Mutex<Health>>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            set_health(
                &self.health,
                Health::NotReady(format!("kafka: all brokers are down: {reason}")),
            );
        }
        tracing::warn!(%error, reason, "kafka source client error");
    }
}

impl ConsumerContext for SourceContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "kafka offset commit failed; will retry");
            return;
        }
        let mut confirmed = Vec::new();
        for e in offsets.elements() {
            if let (Some(t), Offset::Offset(o), Ok(())) =
                (shared.topic_index(e.topic()), e.offset(), e.error())
            {
                confirmed.push(((t, e.partition()), o));
            }
        }
        let mut tracker = shared.lock();
        for (tp, o) in confirmed {
            tracker.confirmed(tp, o);
        }
    }
}

fn commit(consumer: &StreamConsumer<SourceContext>, shared: &Shared, mode: CommitMode) {
    let points = shared.lock().commit_points();
    if points.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &points {
        // Cannot fail: the offset is a plain Offset::Offset.
        let _ = tpl.add_partition_offset(&shared.topics[*t], *p, Offset::Offset(*o));
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) if matches!(mode, CommitMode::Sync) => {
            let mut t = shared.lock();
            for (tp, o) in points {
                t.confirmed(tp, o);
            }
        }
        Ok(()) => {}
        Err(e) => tracing::debug!(error = %e, "kafka offset commit failed; will retry"),
    }
}

/// Per partition: the offsets read and not yet finished.
/// Offsets handed out and not finished, per partition (see `sluice_core::offsets`).
type Tracker = sluice_core::offsets::OffsetTracker<Tp>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unfinished_record() {
        let mut t = Tracker::default();
        let (a0, a1, b0) = ((0, 0), (0, 1), (1, 0));
        for o in 10..13 {
            t.received(a0, o);
        }
        t.received(a1, 5);
        t.received(b0, 0);
        assert_eq!(t.commit_points(), [(a0, 10), (a1, 5), (b0, 0)]);
        // Unordered workers finish out of order: 11 and 12 done, 10 still in flight.
        t.finished(a0, 11);
        t.finished(a0, 12);
        t.confirmed(a0, 10);
        t.confirmed(a1, 5);
        t.confirmed(b0, 0);
        assert!(t.commit_points().is_empty());
        t.finished(a0, 10);
        t.finished(a1, 5);
        assert_eq!(t.commit_points(), [(a0, 13), (a1, 6)]);
        t.confirmed(a0, 13);
        assert_eq!(t.commit_points(), [(a1, 6)]);
        // A record whose sink and dead-letter sink failed is never finished: it holds the
        // commit back however many later records finish.
        t.received(a1, 6);
        t.received(a1, 7);
        t.finished(a1, 7);
        assert_eq!(t.commit_points(), [(a1, 6)]);
    }
}
