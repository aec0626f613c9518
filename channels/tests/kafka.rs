//! Kafka-only checks beyond the conformance suite: what the cluster holds as committed while a
//! subscription runs, and what a process that dies without closing its subscription (SIGKILL:
//! no final commit, no clean close) redelivers. Real Apache Kafka from the `sluice-tests`
//! harness. Nothing waits with a fixed sleep: everything is polled against a deadline.
#![cfg(feature = "kafka")]

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_channels::kafka::{KafkaChannel, KafkaSettings};
use sluice_channels::{Channel, Message, Subscription, SubscriptionSpec};
use sluice_core::topology::{Key, StartFrom};
use sluice_core::{Envelope, Event, SpecVersion};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

/// An event with a fixed partition key, so that every event lands on one partition, in order.
fn event(id: &str) -> Envelope {
    let mut e = Event::new(SpecVersion::V10, id, "/kafka", "dev.sluice.test");
    e.set_data(Bytes::from_static(b"{}"), false);
    e.set("partitionkey", "one-partition");
    Envelope::new(e)
}

fn spec(id: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.into(),
        start_from: StartFrom::Latest,
        ordered: false,
    }
}

fn settings(server: &sluice_tests::KafkaServer, broker: &str) -> KafkaSettings {
    let mut s =
        KafkaSettings::for_broker(&Key::new("kafka", broker), server.bootstrap_servers(), 3, 1);
    s.publish_timeout = Duration::from_secs(3);
    s
}

async fn next(sub: &mut Box<dyn Subscription>) -> Message {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Err(_) => panic!("no message within {DEADLINE:?}"),
            Ok(None) => panic!("subscription closed"),
            Ok(Some(Err(e))) => eprintln!("transient error: {e}"),
            Ok(Some(Ok(m))) => return m,
        }
    }
}

fn id(m: &Message) -> String {
    m.envelope.event.id().to_owned()
}

/// Polls the cluster until the subscription's committed offsets satisfy `done`.
async fn committed_until(
    ch: &KafkaChannel,
    sub: &str,
    what: &str,
    done: impl Fn(&BTreeMap<i32, i64>) -> bool,
) -> BTreeMap<i32, i64> {
    let reader = ch.committed_offsets(sub).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match reader.read().await {
            Ok(c) if done(&c) => return c,
            Ok(c) => assert!(
                Instant::now() < deadline,
                "not {what} within {DEADLINE:?}: committed {c:?}"
            ),
            Err(e) => assert!(Instant::now() < deadline, "committed offsets: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Offsets of finished events reach the cluster while the subscription runs (every
/// `commit_interval`), not only when it closes: a process killed without closing its
/// subscription redelivers what was unfinished, not everything it had finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_offsets_are_committed_while_running_and_survive_a_crash() {
    let kafka = sluice_tests::shared_kafka().await;
    let settings = settings(kafka, "crash");
    const SUB: &str = "ns/crash";
    let ids: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();

    // The first "process" runs on a runtime of its own, on a thread of its own, so that it can
    // die the way SIGKILL kills: once `block_on` returns, none of its tasks is ever polled
    // again (no final commit on close, no clean shutdown of the consumer).
    let (s1, ids1) = (settings.clone(), ids.clone());
    let process = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let remains = rt.block_on(async move {
            let ch = KafkaChannel::connect(s1).await.unwrap();
            let mut sub = ch.subscribe(spec(SUB)).await.unwrap();
            // A new subscription fixes its start (the high watermarks, 0) before consuming.
            let start =
                committed_until(&ch, SUB, "the start position committed", |c| c.len() == 3).await;
            assert!(start.values().all(|o| *o == 0), "start {start:?}");
            for i in &ids1 {
                ch.publish(event(i)).await.unwrap();
            }
            let mut msgs = Vec::new();
            for i in &ids1 {
                let m = next(&mut sub).await;
                assert_eq!(&id(&m), i, "one partition keeps publish order");
                msgs.push(m);
            }
            // Finish the first six; the other four stay in flight when the process dies.
            let in_flight = msgs.split_off(6);
            for m in msgs {
                m.ack();
            }
            // The commit of the low-water mark (offset 6 of the one partition used) is
            // confirmed by the cluster before the crash, without the subscription closing.
            let committed = committed_until(&ch, SUB, "offset 6 committed", |c| {
                c.values().any(|o| *o == 6)
            })
            .await;
            assert_eq!(committed.values().filter(|o| **o == 0).count(), 2);
            (ch, sub, in_flight)
        });
        // SIGKILL: the runtime is dropped with the subscription's tasks never polled again;
        // what `block_on` handed out goes with it.
        drop(rt);
        drop(remains);
    });
    tokio::task::spawn_blocking(move || process.join().unwrap())
        .await
        .unwrap();

    // The restarted process resumes at the committed offset: exactly the unfinished four.
    let ch = KafkaChannel::connect(settings).await.unwrap();
    let mut sub = ch.subscribe(spec(SUB)).await.unwrap();
    for want in &ids[6..] {
        let m = next(&mut sub).await;
        assert_eq!(
            &id(&m),
            want,
            "a finished event was redelivered after the crash"
        );
        assert_eq!(m.delivery_count, 1);
        m.ack();
    }
    committed_until(&ch, SUB, "offset 10 committed", |c| {
        c.values().any(|o| *o == 10)
    })
    .await;
}

/// A topic (broker) no other test uses, with `partitions` partitions.
fn fresh_settings(partitions: i32) -> KafkaSettings {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kafka = futures_lite_block(sluice_tests::shared_kafka());
    let mut s = KafkaSettings::for_broker(
        &Key::new("kafka", format!("groups-{n}")),
        kafka.bootstrap_servers(),
        partitions,
        1,
    );
    s.publish_timeout = Duration::from_secs(5);
    s.commit_interval = Duration::from_millis(100);
    // Members learn of a rebalance at their next heartbeat: make that quick, so a rebalance
    // has surely begun a moment after a member joins.
    s.client_properties
        .push(("heartbeat.interval.ms".into(), "100".into()));
    s
}

/// `shared_kafka()` is async only because a first start waits; callers here are already on
/// a runtime, so run it to completion in place.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn keyed(id: &str) -> Envelope {
    let mut e = Event::new(SpecVersion::V10, id, "/kafka", "dev.sluice.test");
    e.set_data(Bytes::from_static(b"{}"), false);
    e.set("partitionkey", id);
    Envelope::new(e)
}

/// What one replica's consumer loop does with each message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ack,
    /// Keep it unacked (in flight), as a replica whose deliveries are slow.
    Hold,
}

/// A replica of a dispatcher: its own channel (as another process would have), one
/// subscription of the shared trigger, and a loop that acks (or holds) what it gets.
struct Replica {
    acked: Arc<std::sync::Mutex<Vec<String>>>,
    held: Arc<std::sync::Mutex<Vec<Message>>>,
    mode: Arc<std::sync::Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
    channel: Arc<KafkaChannel>,
}

impl Replica {
    async fn start(settings: &KafkaSettings, sub: &str) -> Replica {
        let channel = Arc::new(KafkaChannel::connect(settings.clone()).await.unwrap());
        let mut subscription = channel.subscribe(spec(sub)).await.unwrap();
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mode = Arc::new(std::sync::Mutex::new(Mode::Ack));
        let (a, h, md) = (acked.clone(), held.clone(), mode.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = subscription.next().await {
                let Ok(m) = m else { continue };
                if *md.lock().unwrap() == Mode::Hold {
                    h.lock().unwrap().push(m);
                } else {
                    a.lock().unwrap().push(id(&m));
                    m.ack();
                }
            }
        });
        Replica {
            acked,
            held,
            mode,
            task,
            channel,
        }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    fn held_ids(&self) -> Vec<String> {
        self.held.lock().unwrap().iter().map(id).collect()
    }

    /// Goes away: the loop stops (its subscription is dropped, so the consumer leaves the
    /// group) and what it held is dropped unacked.
    async fn stop(self) -> Vec<String> {
        self.task.abort();
        let _ = self.task.await;
        let held: Vec<Message> = std::mem::take(&mut *self.held.lock().unwrap());
        drop(held);
        drop(self.channel);
        self.acked.lock().unwrap().clone()
    }
}

fn count(ids: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in ids {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// Two replicas of one trigger (two channels, as two Sluice processes have) share the
/// trigger's partitions through its consumer group: each event is delivered once overall.
/// When one replica goes away with deliveries in flight, the other takes its partitions over
/// and delivers what was left unfinished; nothing is lost and nothing finished comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_partitions_and_one_takes_over_when_the_other_goes() {
    let settings = fresh_settings(4);
    const SUB: &str = "ns/replicated";
    let one = Replica::start(&settings, SUB).await;
    let two = Replica::start(&settings, SUB).await;
    let producer = KafkaChannel::connect(settings.clone()).await.unwrap();

    // Probe events until both replicas have been given partitions (the group has settled).
    let mut probes = 0;
    sluice_tests::eventually(DEADLINE, "both replicas to own partitions", || {
        probes += 1;
        let p = format!("probe-{probes}");
        let (producer, one, two) = (&producer, &one, &two);
        async move {
            producer.publish(keyed(&p)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            (!one.acked().is_empty() && !two.acked().is_empty()).then_some(())
        }
    })
    .await;
    let before = (one.acked().len(), two.acked().len());

    let ids: Vec<String> = (0..100).map(|i| format!("shared-{i}")).collect();
    for i in &ids {
        producer.publish(keyed(i)).await.unwrap();
    }
    let delivered = |r: &Replica, skip: usize| -> Vec<String> { r.acked()[skip..].to_vec() };
    sluice_tests::eventually(DEADLINE, "every event delivered", || {
        let n = delivered(&one, before.0).len() + delivered(&two, before.1).len();
        let want = ids.len();
        async move { (n >= want).then_some(()) }
    })
    .await;
    let (got_one, got_two) = (delivered(&one, before.0), delivered(&two, before.1));
    assert!(
        !got_one.is_empty() && !got_two.is_empty(),
        "one replica got everything: {} / {}",
        got_one.len(),
        got_two.len()
    );
    let all = count(got_one.iter().chain(&got_two).cloned());
    assert_eq!(all.keys().cloned().collect::<Vec<_>>(), {
        let mut want = ids.clone();
        want.sort();
        want
    });
    assert!(
        all.values().all(|n| *n == 1),
        "delivered twice without a rebalance: {:?}",
        all.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );

    // Replica two's deliveries now hang; it holds what it gets, then goes away.
    *two.mode.lock().unwrap() = Mode::Hold;
    let acked_before = (one.acked().len(), two.acked().len());
    let more: Vec<String> = (0..100).map(|i| format!("takeover-{i}")).collect();
    for i in &more {
        producer.publish(keyed(i)).await.unwrap();
    }
    sluice_tests::eventually(DEADLINE, "every new event handed out", || {
        let n = one.acked().len() - acked_before.0 + two.held_ids().len();
        let want = more.len();
        async move { (n >= want).then_some(()) }
    })
    .await;
    let held = two.held_ids();
    assert!(!held.is_empty(), "replica two was handed nothing");
    let acked_by_two = two.stop().await;
    assert_eq!(
        acked_by_two.len(),
        acked_before.1,
        "replica two acked while holding"
    );

    // Replica one takes over replica two's partitions and delivers what it left unfinished.
    sluice_tests::eventually(DEADLINE, "the held events delivered by replica one", || {
        let got: std::collections::BTreeSet<String> = one.acked().into_iter().collect();
        let done = held.iter().all(|h| got.contains(h));
        async move { done.then_some(()) }
    })
    .await;
    let after: Vec<String> = one.acked()[acked_before.0..].to_vec();
    let counts = count(after);
    for i in &more {
        assert_eq!(
            counts.get(i),
            Some(&1),
            "{i} not delivered exactly once: {counts:?}"
        );
    }
    // Nothing replica one had finished is redelivered to it: a partition revoked from it
    // while replica two joined commits what it finished first.
    let again = count(one.acked());
    assert!(again.values().all(|n| *n == 1), "{again:?}");
    one.stop().await;
}

/// A revoked partition waits for what was handed out to finish and commits it, so the
/// consumer that takes the partition over starts after it: finished work is not redone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_in_flight_work_and_commits_it() {
    let mut settings = fresh_settings(2);
    settings.revoke_timeout = Duration::from_secs(30);
    const SUB: &str = "ns/revoked";
    let one = Replica::start(&settings, SUB).await;
    *one.mode.lock().unwrap() = Mode::Hold;
    let producer = KafkaChannel::connect(settings.clone()).await.unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("inflight-{i}")).collect();
    for i in &ids {
        producer.publish(keyed(i)).await.unwrap();
    }
    sluice_tests::eventually(DEADLINE, "replica one holding every event", || {
        let n = one.held_ids().len();
        async move { (n == 20).then_some(()) }
    })
    .await;
    // A second replica joins: one partition is revoked from replica one, which now waits for
    // its in-flight work. That work finishes a while later — the pause stands for deliveries
    // taking their time, it waits for nothing — and only then does the partition move.
    let joining = tokio::spawn({
        let settings = settings.clone();
        async move { Replica::start(&settings, SUB).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    *one.mode.lock().unwrap() = Mode::Ack;
    for m in std::mem::take(&mut *one.held.lock().unwrap()) {
        m.ack();
    }
    let two = joining.await.unwrap();
    for i in 0..20 {
        producer
            .publish(keyed(&format!("later-{i}")))
            .await
            .unwrap();
    }
    sluice_tests::eventually(DEADLINE, "the later events delivered", || {
        let n = one.acked().len() + two.acked().len();
        async move { (n >= 20).then_some(()) }
    })
    .await;
    let redone: Vec<String> = two
        .acked()
        .into_iter()
        .filter(|i| i.starts_with("inflight-"))
        .collect();
    assert!(
        redone.is_empty(),
        "finished work delivered again after the rebalance: {redone:?}"
    );
    one.stop().await;
    two.stop().await;
}

/// A consumer in the trigger's group that is not Sluice's (an old version's, an operator's
/// tool), polled on a thread of its own until dropped; it then leaves the group.
struct Squatter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    async fn join(settings: &KafkaSettings, sub: &str) -> Squatter {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.bootstrap_servers)
            .set("group.id", sluice_channels::kafka::group_id(sub))
            .set("enable.auto.commit", "false")
            .set("heartbeat.interval.ms", "100")
            .create()
            .unwrap();
        consumer.subscribe(&[&settings.topic]).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let joined = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, j) = (stop.clone(), joined.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(50));
                if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    j.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        sluice_tests::eventually(DEADLINE, "the squatter to join the group", || {
            let j = joined.load(std::sync::atomic::Ordering::SeqCst);
            async move { j.then_some(()) }
        })
        .await;
        Squatter {
            stop,
            thread: Some(thread),
        }
    }

    async fn leave(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let t = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap();
    }
}

/// The start position is pinned the first time a trigger is seen. If the subscribe fails
/// then on a healthy cluster (here: the cluster refuses to fix the start position while a
/// member it does not know holds the group) and is retried later, the retry starts at the
/// events accepted since the first attempt, not at the end of the log by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_subscribe_keeps_the_start_position_of_the_first_attempt() {
    let settings = fresh_settings(1);
    const SUB: &str = "ns/retried";
    let ch = KafkaChannel::connect(settings.clone()).await.unwrap();
    ch.publish(keyed("before")).await.unwrap();
    let squatter = Squatter::join(&settings, SUB).await;

    let first = ch.subscribe(spec(SUB)).await;
    let err = first
        .err()
        .expect("subscribe succeeded while the group was held");
    eprintln!("first attempt failed as expected: {err}");
    ch.publish(keyed("accepted-while-failing")).await.unwrap();

    squatter.leave().await;
    // The dispatcher retries until the subscribe succeeds.
    let mut sub = sluice_tests::eventually(DEADLINE, "a successful subscribe", || {
        let ch = &ch;
        async move { ch.subscribe(spec(SUB)).await.ok() }
    })
    .await;
    ch.publish(keyed("after")).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(
        id(&m),
        "accepted-while-failing",
        "the retry skipped an event accepted after the trigger was first seen"
    );
    m.ack();
    let m = next(&mut sub).await;
    assert_eq!(id(&m), "after");
    m.ack();
}

fn groups(settings: &KafkaSettings) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .create()
        .unwrap();
    let list = c.fetch_group_list(None, Duration::from_secs(5)).unwrap();
    list.groups().iter().map(|g| g.name().to_string()).collect()
}

/// Removing a subscription (the trigger was deleted) deletes its consumer group, so deleted
/// triggers leave no groups (nor their committed offsets) behind on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_subscription_deletes_its_consumer_group() {
    let settings = fresh_settings(1);
    const SUB: &str = "ns/deleted";
    let group = sluice_channels::kafka::group_id(SUB);
    let ch = KafkaChannel::connect(settings.clone()).await.unwrap();
    let mut sub = ch.subscribe(spec(SUB)).await.unwrap();
    ch.publish(keyed("one")).await.unwrap();
    next(&mut sub).await.ack();
    committed_until(&ch, SUB, "offset 1 committed", |c| c.get(&0) == Some(&1)).await;
    let s = settings.clone();
    let listed = tokio::task::spawn_blocking(move || groups(&s))
        .await
        .unwrap();
    assert!(listed.contains(&group), "{group} not in {listed:?}");

    ch.remove_subscription(SUB).await.unwrap();
    let s = settings.clone();
    let listed = tokio::task::spawn_blocking(move || groups(&s))
        .await
        .unwrap();
    assert!(!listed.contains(&group), "{group} still exists: {listed:?}");
}

/// A batch goes to the producer whole (every record handed over before any report is
/// awaited) and comes back complete and in order; and a subscription whose queue is far
/// smaller than the backlog — its consumer stops polling while the queue is full, and pauses
/// its partitions if that lasts — still gets every event exactly once, in partition order,
/// and commits up to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_arrives_whole_and_in_order_through_a_small_queue() {
    let mut settings = fresh_settings(1);
    settings.max_buffered = 4;
    let ch = KafkaChannel::connect(settings).await.unwrap();
    let sub_id = "kafka/batch-small-queue";
    let mut sub = ch
        .subscribe(SubscriptionSpec {
            id: sub_id.into(),
            start_from: StartFrom::Latest,
            ordered: true,
        })
        .await
        .unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("b{i}")).collect();
    ch.publish_batch(ids.iter().map(|i| event(i)).collect())
        .await
        .unwrap();
    let mut got = Vec::with_capacity(ids.len());
    while got.len() < ids.len() {
        let m = next(&mut sub).await;
        got.push(id(&m));
        m.ack();
    }
    assert_eq!(got, ids);
    committed_until(&ch, sub_id, "committed up to the end", |c| {
        c.get(&0) == Some(&300)
    })
    .await;
}
