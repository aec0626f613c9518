//! KafkaSource (feature `kafka`): records of Kafka topics as CloudEvents, through librdkafka.
//!
//! ```text
//! topics ──▶ `consumers` × BaseConsumer (members of consumerGroup, cooperative-sticky), each on
//!                   ▲     a pump thread of its own ──▶ a worker per assigned partition
//!                   │                                        │ record_to_event + ceOverrides
//!                   │ commit every COMMIT_INTERVAL, and       ▼
//!                   │ on revocation: per partition, the  Sender::deliver (retries, DLS)
//!                   └─ first offset not yet finished ◀── Tracker ◀── finished
//! ```
//!
//! **Partitions and the group.** `consumers` consumers (Knative's field: default 1) join the
//! source's consumer group with the `cooperative-sticky` assignor, so the topics' partitions
//! are shared among them and among the consumers of every other Sluice process running the
//! same source; when one goes away, the others take its partitions over.
//!
//! **Rebalances.** The group takes partitions away from a consumer when another joins or it
//! leaves. Before letting them go (the rebalance callback, on the consumer's pump thread) the
//! consumer stops starting deliveries of those partitions, waits up to [`REVOKE_TIMEOUT`] for
//! the ones in flight, and commits what is finished — never past an unfinished record. The
//! next owner resumes at the first record not finished here: duplicates are bounded by what
//! was still in flight at the deadline, and with `ordering: ordered` a partition's records keep
//! their order across owners. A stopping source aborts its deliveries instead of waiting.
//!
//! **Where it starts.** A partition with a committed offset resumes there. For partitions
//! without one (a new group, or a topic new to it) the `initialOffset` position — the low
//! (`earliest`) or high (`latest`, the default) watermark — is committed before the consumers
//! join, so a crash before the first delivery cannot skip what was produced meanwhile. The
//! cluster takes that commit only while the group has no members; when another process's
//! consumers are already in the group, the position is left to `auto.offset.reset`, set to the
//! same `initialOffset`.
//!
//! **Order.** Each partition has its own worker: with `ordering: ordered` it delivers one
//! record at a time in offset order (the next waits for the previous one's retries); with
//! `unordered` up to [`UNORDERED_CONCURRENCY`] at once. Partitions never wait for each other;
//! a partition whose worker falls [`MAX_QUEUED`] records behind is paused until it catches up.
//!
//! **Offsets.** A record is finished when the sink accepted it or it was dead-lettered
//! (SEMANTICS.md §6). A record that reached neither — no dead-letter sink, or the dead-letter
//! sink failed too — is not finished: it is delivered again after a pause (1 s doubling to
//! 60 s), for as long as it takes, and holds its partition's commits back. Per partition the
//! commit is the lowest unfinished offset (or the next offset when all are finished), so a
//! commit never passes a record still being delivered, however out of order an unordered
//! worker finishes. Commits are made every [`COMMIT_INTERVAL`], on revocation, and once more,
//! synchronously, when the source stops: a clean restart resumes exactly after what was
//! delivered, a crash redelivers at most what was in flight or finished since the last commit
//! (at-least-once).

use crate::record::{record_to_event, Record};
use crate::{log_failure, Counters, Env, Error, Health};
use bytes::Bytes;
use futures::StreamExt as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::topology::{InitialOffset, KafkaSource};
use sluice_core::Envelope;
use sluice_delivery::{Delivered, Request};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

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
/// How long a consumer losing partitions in a rebalance waits for their deliveries in flight.
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the pump thread waits in one poll: the longest a stop takes to be noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Waits between attempts to (re)start the consumer: doubling from the first to the second.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// Waits before delivering again a record that reached neither the sink nor a dead-letter sink.
const REDELIVER_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// A partition of one of the source's topics: (index in `spec.topics`, partition).
type Tp = (usize, i32);

fn set_health(health: &Mutex<Health>, value: Health) {
    *health.lock().unwrap_or_else(|e| e.into_inner()) = value;
}

fn is_ready(health: &Mutex<Health>) -> bool {
    matches!(
        *health.lock().unwrap_or_else(|e| e.into_inner()),
        Health::Ready
    )
}

/// Runs one KafkaSource until `cancel`, restarting the consumers (with backoff) while the
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
            Ok(consumers) => {
                set_health(&health, Health::Ready);
                tracing::info!(source = %spec.key, topics = ?spec.topics, group = %spec.consumer_group, consumers = consumers.len(), sink = %spec.sink, "KafkaSource started");
                run_consumers(consumers, &spec, &env, &counters, &cancel, &health).await;
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

/// One member of the source's group, not yet polled.
struct Member {
    consumer: BaseConsumer<SourceContext>,
    shared: Arc<Shared>,
}

fn kafka_error(servers: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Kafka {
        servers: servers.to_string(),
        what: what.to_string(),
        reason: e.to_string(),
    }
}

fn member(spec: &KafkaSource, health: &Arc<Mutex<Health>>, i: u32) -> Result<Member, Error> {
    let servers = spec.bootstrap_servers.join(",");
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        settled: Condvar::new(),
        topics: spec.topics.clone(),
        stopping: AtomicBool::new(false),
    });
    let reset = match spec.initial_offset {
        InitialOffset::Earliest => "earliest",
        InitialOffset::Latest => "latest",
    };
    let consumer: BaseConsumer<SourceContext> = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", &spec.consumer_group)
        .set(
            "client.id",
            format!(
                "sluice-kafkasource-{}-{}-{i}",
                spec.key.namespace, spec.key.name
            ),
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // For partitions whose start could not be committed before joining (see the module
        // doc), and for a committed offset that retention has already deleted.
        .set("auto.offset.reset", reset)
        // Latency: Kafka completes a parked fetch the moment a record arrives; this only bounds
        // an idle fetch (and the cases the broker does not wake it, after a rebalance), at ten
        // idle fetches a second per consumer at most. See the Kafka channel for the same choice.
        .set("fetch.wait.max.ms", "100")
        // A process that dies without leaving holds its partitions until its session expires;
        // 10 s instead of librdkafka's 45 s bounds that pause.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        .set("socket.nagle.disable", "true")
        // Reconnect quickly once the cluster is back, rather than backing off to 10 s.
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4")
        .create_with_context(SourceContext {
            shared: Arc::downgrade(&shared),
            health: health.clone(),
        })
        .map_err(|e| kafka_error(&servers, "creating the consumer", e))?;
    Ok(Member { consumer, shared })
}

/// Creates the members, fixes the start position of partitions that have none, and joins the
/// group.
async fn start(spec: &Arc<KafkaSource>, health: &Arc<Mutex<Health>>) -> Result<Vec<Member>, Error> {
    let servers = spec.bootstrap_servers.join(",");
    let first = member(spec, health, 0)?;
    let s = spec.clone();
    let first = tokio::task::spawn_blocking(move || {
        fix_start_positions(&first.consumer, &s)?;
        Ok::<_, Error>(first)
    })
    .await
    .map_err(|e| kafka_error(&servers, "fixing the start position", e))??;
    let mut members = vec![first];
    for i in 1..spec.consumers.max(1) {
        members.push(member(spec, health, i)?);
    }
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    for m in &members {
        m.consumer
            .subscribe(&topics)
            .map_err(|e| kafka_error(&servers, "joining the consumer group", e))?;
    }
    Ok(members)
}

/// Commits the `initialOffset` position of every partition without a committed offset
/// (blocking: runs on a blocking thread, before any member joins).
fn fix_start_positions(
    consumer: &BaseConsumer<SourceContext>,
    spec: &KafkaSource,
) -> Result<(), Error> {
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
    let mut fixed = TopicPartitionList::new();
    for e in committed.elements() {
        if matches!(e.offset(), Offset::Offset(_)) {
            continue;
        }
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
    }
    if fixed.count() == 0 {
        return Ok(());
    }
    match consumer.commit(&fixed, CommitMode::Sync) {
        Ok(()) => {
            tracing::info!(source = %spec.key, initial_offset = ?spec.initial_offset, partitions = fixed.count(), "KafkaSource start position committed");
            Ok(())
        }
        // Members of other processes hold the group: they, or auto.offset.reset, decide.
        Err(e)
            if matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::IllegalGeneration)
            ) =>
        {
            tracing::info!(source = %spec.key, error = %e, "KafkaSource group has members elsewhere; partitions without a commit start per initialOffset");
            Ok(())
        }
        Err(e) => Err(err("committing the start position", e)),
    }
}

/// Runs every member on a thread of its own until `cancel`, and waits for all to stop.
async fn run_consumers(
    members: Vec<Member>,
    spec: &Arc<KafkaSource>,
    env: &Env,
    counters: &Counters,
    cancel: &CancellationToken,
    health: &Arc<Mutex<Health>>,
) {
    let mut done = Vec::new();
    for (i, m) in members.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        let pump = Pump {
            consumer: m.consumer,
            shared: m.shared,
            ctx: WorkerEnv {
                spec: spec.clone(),
                env: env.clone(),
                counters: counters.clone(),
            },
            cancel: cancel.clone(),
            health: health.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("kafkasource-{}-{i}", spec.key.name))
            .spawn(move || {
                pump.run();
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => done.push(rx),
            Err(e) => {
                tracing::error!(source = %spec.key, error = %e, "cannot start a KafkaSource consumer thread")
            }
        }
    }
    for rx in done {
        let _ = rx.await;
    }
}

/// What every delivery of a source needs.
#[derive(Clone)]
struct WorkerEnv {
    spec: Arc<KafkaSource>,
    env: Env,
    counters: Counters,
}

/// One member's thread: polls (which also runs the rebalance callbacks; those may block while
/// revoked partitions drain, so not on the async runtime), hands records to the partition
/// workers, pauses and resumes partitions, commits, and on stop aborts the workers, commits
/// what they finished and leaves the group.
struct Pump {
    consumer: BaseConsumer<SourceContext>,
    shared: Arc<Shared>,
    ctx: WorkerEnv,
    cancel: CancellationToken,
    health: Arc<Mutex<Health>>,
    runtime: tokio::runtime::Handle,
}

impl Pump {
    fn run(self) {
        let Pump {
            consumer,
            shared,
            ctx,
            cancel,
            health,
            runtime,
        } = self;
        let concurrency = if ctx.spec.ordered {
            1
        } else {
            UNORDERED_CONCURRENCY
        };
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<Tp>();
        let mut last_commit = Instant::now();
        let mut last_health = Instant::now();
        let mut last_was_error = false;
        while !cancel.is_cancelled() {
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                commit(&consumer, &shared, CommitMode::Async);
                last_commit = Instant::now();
            }
            if last_health.elapsed() >= HEALTH_INTERVAL {
                last_health = Instant::now();
                // Errors mark the source not ready; an idle topic brings no message to say
                // the cluster is back, so ask it.
                if !is_ready(&health)
                    && consumer
                        .fetch_metadata(Some(&ctx.spec.topics[0]), REQUEST_TIMEOUT)
                        .is_ok()
                {
                    set_health(&health, Health::Ready);
                }
            }
            while let Ok(tp) = resume_rx.try_recv() {
                let mut st = shared.lock();
                if let Some(w) = st.workers.get_mut(&tp) {
                    if w.paused && w.queued.load(Ordering::SeqCst) <= MAX_QUEUED / 2 {
                        w.paused = consumer.resume(&shared.tpl(tp)).is_err();
                    }
                }
            }
            match consumer.poll(POLL_INTERVAL) {
                None => {}
                Some(Ok(m)) => {
                    if last_was_error {
                        set_health(&health, Health::Ready);
                        last_was_error = false;
                    }
                    let Some((tp, record)) = shared.owned(&m) else {
                        continue;
                    };
                    drop(m);
                    let mut st = shared.lock();
                    let Some(part) = st.parts.get(&tp).copied().filter(|p| p.live) else {
                        continue;
                    };
                    st.tracker.received(tp, record.offset);
                    let w = st.workers.entry(tp).or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let queued = Arc::new(AtomicUsize::new(0));
                        let task = runtime.spawn(partition_worker(
                            rx,
                            WorkerCtx {
                                env: ctx.clone(),
                                shared: Arc::downgrade(&shared),
                                tp,
                                epoch: part.epoch,
                                queued: queued.clone(),
                                resume: resume_tx.clone(),
                            },
                            concurrency,
                        ));
                        Worker {
                            tx,
                            queued,
                            paused: false,
                            task,
                        }
                    });
                    let queued = w.queued.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = w.tx.send(record);
                    if queued >= MAX_QUEUED && !w.paused {
                        w.paused = consumer.pause(&shared.tpl(tp)).is_ok();
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(source = %ctx.spec.key, error = %e, "kafka consumer error");
                    if !last_was_error {
                        set_health(&health, Health::NotReady(format!("consuming: {e}")));
                    }
                    last_was_error = true;
                }
            }
        }
        // Stopping: deliveries still running stay unfinished and are redelivered next time.
        shared.stopping.store(true, Ordering::SeqCst);
        let workers: Vec<Worker> = shared.lock().workers.drain().map(|(_, w)| w).collect();
        for w in &workers {
            w.task.abort();
        }
        commit(&consumer, &shared, CommitMode::Sync);
        // Leaving the group revokes every partition; the callback commits without waiting.
        drop(consumer);
        drop(workers);
    }
}

/// A partition's worker, as the pump and the rebalance callback see it.
struct Worker {
    tx: mpsc::UnboundedSender<Record>,
    queued: Arc<AtomicUsize>,
    paused: bool,
    task: tokio::task::JoinHandle<()>,
}

struct WorkerCtx {
    env: WorkerEnv,
    shared: Weak<Shared>,
    tp: Tp,
    epoch: u64,
    queued: Arc<AtomicUsize>,
    resume: std::sync::mpsc::Sender<Tp>,
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
                // Not once the partition is being revoked: the next owner delivers it.
                if ctx
                    .shared
                    .upgrade()
                    .is_some_and(|s| s.start(ctx.tp, ctx.epoch))
                {
                    deliver(&ctx.env, record).await;
                    if let Some(s) = ctx.shared.upgrade() {
                        s.finish(ctx.tp, ctx.epoch, offset);
                    }
                }
                // Crossing half the limit downwards: ask the pump to resume fetching.
                if ctx.queued.fetch_sub(1, Ordering::SeqCst) == MAX_QUEUED / 2 + 1 {
                    let _ = ctx.resume.send(ctx.tp);
                }
            }
        })
        .await;
}

/// Delivers one record until it is finished: accepted by the sink, or dead-lettered.
async fn deliver(ctx: &WorkerEnv, record: Record) {
    let spec = &ctx.spec;
    let (mut event, mapping) = record_to_event(&spec.key, &record);
    // Knative applies ceOverrides to every event, CloudEvent records included.
    for (name, value) in &spec.extensions {
        event.set(name.as_str(), value.as_str());
    }
    ctx.counters.produced.inc();
    tracing::trace!(source = %spec.key, partition = record.partition, offset = record.offset, ?mapping, id = event.id(), "record read");
    // A record's own `traceparent` header (a traced producer) is the emit span's parent.
    let span = crate::emit_span(
        "KafkaSource",
        &spec.key,
        &event,
        record_trace_context(&record),
    );
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
            .instrument(span.clone())
            .await;
        log_failure(&spec.key, envelope.event.id(), &report);
        if matches!(
            report.result,
            Delivered::Dropped { .. } | Delivered::DeadLetterFailed { .. }
        ) {
            // Neither the sink nor a dead-letter sink has the event: committing past it would
            // lose it (SEMANTICS.md §6), so it is tried again, holding its partition back.
            ctx.counters.count(&report);
            tracing::warn!(source = %spec.key, partition = record.partition, offset = record.offset, retry_in_ms = wait.as_millis() as u64, "record reached neither the sink nor a dead-letter sink; it will be delivered again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REDELIVER_BACKOFF.1);
            continue;
        }
        ctx.counters.count(&report);
        return;
    }
}

/// The W3C trace context in a record's `traceparent` / `tracestate` headers (read only with
/// tracing on).
fn record_trace_context(record: &Record) -> Option<opentelemetry::trace::SpanContext> {
    if !sluice_core::trace::enabled() {
        return None;
    }
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    sluice_core::trace::parse_traceparent(header("traceparent")?, header("tracestate"))
}

/// What a member's pump thread (and its rebalance callbacks), its workers and its commit
/// callback share.
struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a delivery finishes (a revocation waits on it).
    settled: Condvar,
    topics: Vec<String>,
    /// The source is stopping: revocations do not wait for deliveries (they were aborted).
    stopping: AtomicBool,
}

#[derive(Default)]
struct State {
    tracker: Tracker,
    /// The partitions assigned to this member.
    parts: HashMap<Tp, Part>,
    next_epoch: u64,
    workers: HashMap<Tp, Worker>,
    /// Deliveries started and not finished, per (partition, epoch).
    in_flight: HashMap<(Tp, u64), usize>,
}

/// One assigned partition. Each assignment gets a new epoch, so that a delivery begun under
/// an earlier assignment of the same partition cannot finish an offset of the new one.
#[derive(Clone, Copy)]
struct Part {
    epoch: u64,
    /// False while the partition is being revoked: no new deliveries start.
    live: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    fn tpl(&self, (topic, partition): Tp) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topics[topic], partition);
        tpl
    }

    fn tps(&self, tpl: &TopicPartitionList) -> Vec<Tp> {
        tpl.elements()
            .iter()
            .filter_map(|e| Some((self.topic_index(e.topic())?, e.partition())))
            .collect()
    }

    /// A delivery may start: the partition is still this member's, under the same epoch.
    fn start(&self, tp: Tp, epoch: u64) -> bool {
        let mut st = self.lock();
        let live = st
            .parts
            .get(&tp)
            .is_some_and(|p| p.live && p.epoch == epoch);
        if live {
            *st.in_flight.entry((tp, epoch)).or_default() += 1;
        }
        live
    }

    fn finish(&self, tp: Tp, epoch: u64, offset: i64) {
        let mut st = self.lock();
        if let Some(n) = st.in_flight.get_mut(&(tp, epoch)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_flight.remove(&(tp, epoch));
            }
        }
        if st.parts.get(&tp).is_some_and(|p| p.epoch == epoch) {
            st.tracker.finished(tp, offset);
        }
        drop(st);
        self.settled.notify_all();
    }

    fn assigned(&self, tpl: &TopicPartitionList) {
        let tps = self.tps(tpl);
        let mut st = self.lock();
        for tp in &tps {
            st.next_epoch += 1;
            let epoch = st.next_epoch;
            st.parts.insert(*tp, Part { epoch, live: true });
        }
        tracing::info!(topics = ?self.topics, partitions = ?tps, "KafkaSource partitions assigned");
    }

    /// See the module doc, "Rebalances".
    fn revoke(&self, consumer: &BaseConsumer<SourceContext>, tpl: &TopicPartitionList) {
        let revoked = self.tps(tpl);
        let mut st = self.lock();
        let mut keys = Vec::new();
        let mut tasks = Vec::new();
        for tp in &revoked {
            if let Some(part) = st.parts.get_mut(tp) {
                part.live = false;
                keys.push((*tp, part.epoch));
            }
            // Records queued for the worker are dropped with its queue; it ends once its
            // deliveries in flight do.
            if let Some(w) = st.workers.remove(tp) {
                tasks.push(w.task);
            }
        }
        let wait = if self.stopping.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            REVOKE_TIMEOUT
        };
        let (mut st, timeout) = self
            .settled
            .wait_timeout_while(st, wait, |st| {
                keys.iter().any(|k| st.in_flight.contains_key(k))
            })
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() && !wait.is_zero() {
            tracing::warn!(partitions = ?revoked, "KafkaSource partitions revoked with deliveries still in flight; the next owner delivers them again");
        }
        for t in &tasks {
            t.abort();
        }
        let points: Vec<(Tp, i64)> = st
            .tracker
            .commit_points()
            .into_iter()
            .filter(|(tp, _)| revoked.contains(tp))
            .collect();
        for tp in &revoked {
            st.tracker.forget(*tp);
            if let Some(part) = st.parts.remove(tp) {
                st.in_flight.remove(&(*tp, part.epoch));
            }
        }
        drop(st);
        if !points.is_empty() {
            let mut commit = TopicPartitionList::new();
            for ((t, p), o) in &points {
                // Cannot fail: the offset is a plain Offset::Offset.
                let _ = commit.add_partition_offset(&self.topics[*t], *p, Offset::Offset(*o));
            }
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing revoked KafkaSource partitions failed");
            }
        }
        tracing::info!(topics = ?self.topics, partitions = ?revoked, committed = ?points, "KafkaSource partitions revoked");
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

/// Runs the rebalance side of the bookkeeping, records which commits the cluster confirmed,
/// and marks the source not ready while no broker of the cluster can be reached.
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(tpl), Some(shared)) = (rebalance, self.shared.upgrade()) {
            shared.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match (rebalance, self.shared.upgrade()) {
            (Rebalance::Assign(tpl), Some(shared)) => shared.assigned(tpl),
            (Rebalance::Error(e), _) => tracing::warn!(error = %e, "KafkaSource rebalance failed"),
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
        let mut confirmed = Vec::new();
        for e in offsets.elements() {
            if let (Some(t), Offset::Offset(o), Ok(())) =
                (shared.topic_index(e.topic()), e.offset(), e.error())
            {
                confirmed.push(((t, e.partition()), o));
            }
        }
        let mut st = shared.lock();
        for (tp, o) in confirmed {
            st.tracker.confirmed(tp, o);
        }
    }
}

fn commit(consumer: &BaseConsumer<SourceContext>, shared: &Shared, mode: CommitMode) {
    let points = {
        let st = shared.lock();
        let mut points = st.tracker.commit_points();
        points.retain(|(tp, _)| st.parts.get(tp).is_some_and(|p| p.live));
        points
    };
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
            let mut st = shared.lock();
            for (tp, o) in points {
                st.tracker.confirmed(tp, o);
            }
        }
        Ok(()) => {}
        Err(e) => tracing::debug!(error = %e, "kafka offset commit failed; will retry"),
    }
}

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
