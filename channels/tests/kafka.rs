//! Kafka-only checks beyond the conformance suite: what the cluster holds as committed while a
//! subscription runs, and what a process that dies without closing its subscription (SIGKILL:
//! no final commit, no clean close) redelivers. Real `tansu broker` from the `sluice-tests`
//! harness. Nothing waits with a fixed sleep: everything is polled against a deadline.
#![cfg(feature = "kafka")]

use bytes::Bytes;
use sluice_channels::kafka::{KafkaChannel, KafkaSettings};
use sluice_channels::{Channel, Message, Subscription, SubscriptionSpec};
use sluice_core::topology::{Key, StartFrom};
use sluice_core::{Envelope, Event, SpecVersion};
use std::collections::BTreeMap;
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
    let kafka = sluice_tests::start_kafka().await;
    let settings = settings(&kafka, "crash");
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
