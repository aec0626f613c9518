//! Raw-client baselines for the durable brokers: the same open-model load, produced straight
//! to the server with its own client (rdkafka / async-nats) and consumed back by the bench,
//! with the same event sizes, the same id/timestamp headers and the same accounting as the
//! HTTP runs. S3 and S4 report Sluice beside these.
//!
//! The producer side is [`paced`]: event `seq` is scheduled at `start + seq / rate` and sent in
//! its own task, so a slow acknowledgement never delays later sends (no coordinated
//! omission); the acknowledgement time counts as the "2xx" latency. The consumer side hands
//! every record to the sink's [`Recorder`], which takes the end-to-end latency as for an HTTP
//! delivery.

use crate::load::{body, Load, LoadResult};
use crate::proc::now_ns;
use crate::sink::Recorder;
use crate::stats::{histogram, send_status};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long one produce may take before it counts as failed.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs open-model load through `send(seq, scheduled_ns)`, which resolves when the server
/// acknowledged the event. At most `l.connections` events await their acknowledgement at
/// once (0: no limit), like the HTTP generator's connections each awaiting one answer: an
/// event due while all are taken waits for one (and counts that wait as send lag).
pub async fn paced<S, F>(l: &Load, send: S) -> LoadResult
where
    S: Fn(u64, u64) -> F,
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let total = l.events() as u64;
    let status: Arc<Vec<AtomicU8>> = Arc::new(
        (0..total)
            .map(|_| AtomicU8::new(send_status::NOT_SENT))
            .collect(),
    );
    let rec = Arc::new(Mutex::new(LoadResult {
        status: Vec::new(),
        accepted: histogram(),
        refused: histogram(),
        refused_service: histogram(),
        send_lag: histogram(),
        other_status: BTreeMap::new(),
        transport_errors: 0,
        elapsed: Duration::ZERO,
    }));
    let start = Instant::now() + Duration::from_millis(20);
    let start_ns = (start - crate::proc::origin()).as_nanos() as u64;
    let rate = l.rate.max(1) as u128;
    let mut tasks = tokio::task::JoinSet::new();
    let in_flight = match l.connections {
        0 => None,
        n => Some(Arc::new(tokio::sync::Semaphore::new(n))),
    };
    for seq in 0..total {
        let offset = (seq as u128 * 1_000_000_000 / rate) as u64;
        let due = start + Duration::from_nanos(offset);
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        let scheduled = start_ns + offset;
        let fut = send(seq, scheduled);
        let (status, rec, in_flight) = (status.clone(), rec.clone(), in_flight.clone());
        tasks.spawn(async move {
            let _permit = match in_flight {
                Some(s) => s.acquire_owned().await.ok(),
                None => None,
            };
            let sent_at = now_ns();
            let r = tokio::time::timeout(PRODUCE_TIMEOUT, fut).await;
            let done = now_ns();
            let mut g = rec.lock().unwrap_or_else(|e| e.into_inner());
            g.send_lag
                .saturating_record((sent_at.saturating_sub(scheduled) / 1000).max(1));
            let st = match r {
                Ok(Ok(())) => {
                    g.accepted
                        .saturating_record((done.saturating_sub(scheduled) / 1000).max(1));
                    send_status::ACCEPTED
                }
                _ => {
                    g.transport_errors += 1;
                    send_status::FAILED
                }
            };
            drop(g);
            status[seq as usize].store(st, Ordering::Relaxed);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut result = std::mem::replace(
        &mut *rec.lock().unwrap_or_else(|e| e.into_inner()),
        LoadResult {
            status: Vec::new(),
            accepted: histogram(),
            refused: histogram(),
            refused_service: histogram(),
            send_lag: histogram(),
            other_status: BTreeMap::new(),
            transport_errors: 0,
            elapsed: Duration::ZERO,
        },
    );
    result.elapsed = start.elapsed();
    result.status = status.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    result
}

/// The `ce-id` of event `seq` in step `step` (as the HTTP generator writes it).
fn event_id(step: u32, seq: u64) -> String {
    format!("s{step}-{seq}")
}

#[cfg(feature = "kafka")]
pub mod kafka {
    //! rdkafka producer (acks=all, idempotent, linger 1 ms: the settings of Sluice's Kafka
    //! channel) and a consumer assigned every partition from the current end.

    use super::*;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use rdkafka::util::Timeout;
    use rdkafka::Message;

    pub const TOPIC: &str = "sluice-bench-raw";
    const PARTITIONS: i32 = 10;

    pub struct KafkaRaw {
        producer: FutureProducer,
        consumer: tokio::task::JoinHandle<()>,
    }

    impl Drop for KafkaRaw {
        fn drop(&mut self) {
            self.consumer.abort();
        }
    }

    fn config(bootstrap: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap).set("log_level", "4");
        c
    }

    impl KafkaRaw {
        /// Creates the topic, starts the consumer (on the current runtime) at the end of
        /// every partition, and the producer.
        pub async fn start(
            bootstrap: &str,
            fetch_wait_ms: Option<u32>,
            recorder: Recorder,
        ) -> anyhow::Result<KafkaRaw> {
            let admin: AdminClient<DefaultClientContext> = config(bootstrap).create()?;
            let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
            let _ = admin.create_topics([&topic], &AdminOptions::new()).await?;
            let mut cc = config(bootstrap);
            cc.set("group.id", "sluice-bench-raw")
                .set("enable.auto.commit", "false");
            // Sluice's trigger consumers use 100 ms (see channels/src/kafka.rs); the baseline
            // does the same unless told otherwise.
            cc.set(
                "fetch.wait.max.ms",
                fetch_wait_ms.unwrap_or(100).to_string(),
            );
            let consumer: StreamConsumer = cc.create()?;
            let consumer = Arc::new(consumer);
            // Start exactly at the current end of each partition, so no event of a step is
            // skipped by an offset reset racing the first records.
            // A topic just created has no partition leaders for a moment (a real broker
            // answers NotLeaderForPartition meanwhile): ask again for up to 10 s.
            let mut tries = 0;
            let assignment = loop {
                let c = consumer.clone();
                let got = tokio::task::spawn_blocking(move || {
                    let mut tpl = TopicPartitionList::new();
                    for p in 0..PARTITIONS {
                        let (_, high) = c.fetch_watermarks(TOPIC, p, Duration::from_secs(10))?;
                        tpl.add_partition_offset(TOPIC, p, Offset::Offset(high))?;
                    }
                    Ok::<_, rdkafka::error::KafkaError>(tpl)
                })
                .await?;
                match got {
                    Ok(tpl) => break tpl,
                    Err(_) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            consumer.assign(&assignment)?;
            let task = tokio::spawn(async move {
                loop {
                    let Ok(m) = consumer.recv().await else {
                        continue;
                    };
                    let now = now_ns();
                    let (mut id, mut ts) = (None, None);
                    if let Some(h) = m.headers() {
                        for hd in h.iter() {
                            match hd.key {
                                "ce_id" => id = hd.value,
                                "ce_benchts" => {
                                    ts = hd
                                        .value
                                        .and_then(|v| std::str::from_utf8(v).ok())
                                        .and_then(|v| v.parse::<u64>().ok())
                                }
                                _ => {}
                            }
                        }
                    }
                    if let (Some(id), Some(ts)) = (id, ts) {
                        recorder.record(id, 0, ts, now);
                    }
                }
            });
            let producer: FutureProducer = config(bootstrap)
                .set("linger.ms", "1")
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "10000")
                .create()?;
            Ok(KafkaRaw {
                producer,
                consumer: task,
            })
        }

        /// One step of open-model load.
        pub async fn run(self: Arc<Self>, l: Load) -> LoadResult {
            let data: Arc<[u8]> = body(l.size).into();
            let step = l.step;
            paced(&l, move |seq, ts| {
                let (me, data) = (self.clone(), data.clone());
                async move {
                    let id = event_id(step, seq);
                    let ts = ts.to_string();
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "ce_specversion",
                            value: Some("1.0"),
                        })
                        .insert(Header {
                            key: "ce_id",
                            value: Some(id.as_str()),
                        })
                        .insert(Header {
                            key: "ce_benchts",
                            value: Some(ts.as_str()),
                        });
                    let record: FutureRecord<'_, str, [u8]> =
                        FutureRecord::to(TOPIC).payload(&data[..]).headers(headers);
                    me.producer
                        .send(record, Timeout::After(Duration::from_millis(100)))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e.to_string())
                }
            })
            .await
        }
    }
}

#[cfg(feature = "nats")]
pub mod nats {
    //! async-nats JetStream: a file-backed stream like Sluice's, publish with ack, and a
    //! durable pull consumer with explicit acks.

    use super::*;
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
    use async_nats::jetstream::stream::{self, StorageType};
    use futures::StreamExt as _;

    pub const STREAM: &str = "SLUICE_BENCH_RAW";
    pub const SUBJECT: &str = "sluice.bench.raw";

    pub struct NatsRaw {
        js: async_nats::jetstream::Context,
        consumer: tokio::task::JoinHandle<()>,
    }

    impl Drop for NatsRaw {
        fn drop(&mut self) {
            self.consumer.abort();
        }
    }

    impl NatsRaw {
        pub async fn start(url: &str, recorder: Recorder) -> anyhow::Result<NatsRaw> {
            let client = async_nats::connect(url).await?;
            let js = async_nats::jetstream::new(client);
            let stream = js
                .get_or_create_stream(stream::Config {
                    name: STREAM.into(),
                    subjects: vec![SUBJECT.into()],
                    storage: StorageType::File,
                    ..Default::default()
                })
                .await?;
            let consumer: PullConsumer = stream
                .get_or_create_consumer(
                    "raw",
                    pull::Config {
                        durable_name: Some("raw".into()),
                        deliver_policy: DeliverPolicy::New,
                        ack_policy: AckPolicy::Explicit,
                        max_ack_pending: 10_000,
                        ..Default::default()
                    },
                )
                .await?;
            let mut messages = consumer.messages().await?;
            let task = tokio::spawn(async move {
                while let Some(m) = messages.next().await {
                    let Ok(m) = m else { continue };
                    let now = now_ns();
                    if let Some(h) = &m.headers {
                        let id = h.get("ce-id").map(|v| v.as_str().as_bytes().to_vec());
                        let ts = h
                            .get("ce-benchts")
                            .and_then(|v| v.as_str().parse::<u64>().ok());
                        if let (Some(id), Some(ts)) = (id, ts) {
                            recorder.record(&id, 0, ts, now);
                        }
                    }
                    let _ = m.ack().await;
                }
            });
            Ok(NatsRaw { js, consumer: task })
        }

        pub async fn run(self: Arc<Self>, l: Load) -> LoadResult {
            let data = bytes::Bytes::from(body(l.size));
            let step = l.step;
            paced(&l, move |seq, ts| {
                let (me, data) = (self.clone(), data.clone());
                async move {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("ce-specversion", "1.0");
                    headers.insert("ce-id", event_id(step, seq).as_str());
                    headers.insert("ce-benchts", ts.to_string().as_str());
                    let ack = me
                        .js
                        .publish_with_headers(SUBJECT, headers, data)
                        .await
                        .map_err(|e| e.to_string())?;
                    ack.await.map(|_| ()).map_err(|e| e.to_string())
                }
            })
            .await
        }
    }
}
