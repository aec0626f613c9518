//! One conformance suite for every [`Channel`] (DESIGN.md principle 6).
//!
//! Each check is an `async fn` over a [`Backend`] — something that makes fresh channels and,
//! for the durable ones, can stop and restart their server. The `suite!` macro turns each
//! check into a `#[tokio::test]` per backend:
//!
//! - `memory`: [`MemoryChannel`], always;
//! - `kafka`: [`KafkaChannel`] on real Apache Kafka in KRaft mode (feature `kafka`): one broker
//!   shared by the checks of this binary (each uses its own topic), and one of its own for the
//!   check that stops it;
//! - `nats`: [`NatsChannel`] on a real `nats-server -js` (feature `nats`).
//!
//! Servers come from the `sluice-tests` harness, on free ports; a missing
//! binary fails the test with the command that installs it. Checks that a backend cannot meet
//! by design are left out of its list, visibly: replay (`start_from_*`) and server outages
//! (`outage_*`) do not apply to the in-memory channel, which has `memory_full_*` instead.
//! Nothing waits with a fixed sleep: everything is polled against a deadline.
//!
//! Run: `cargo test -p sluice-channels --features kafka,nats --test conformance`.

// Without both features some checks and helpers have no backend to run on.
#![cfg_attr(not(all(feature = "kafka", feature = "nats")), allow(dead_code))]

use async_trait::async_trait;
use bytes::Bytes;
use sluice_channels::memory::MemoryChannel;
use sluice_channels::{Channel, ChannelError, Health, Message, Subscription, SubscriptionSpec};
use sluice_core::topology::StartFrom;
use sluice_core::{AttrValue, Envelope, Event, SpecVersion};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long any single expected thing may take.
const DEADLINE: Duration = Duration::from_secs(20);

#[async_trait]
trait Backend: Send {
    /// A new channel for a broker no other test uses.
    async fn channel(&mut self) -> Arc<dyn Channel>;
    /// Makes the server unreachable (durable backends only).
    async fn stop(&mut self) {}
    /// Brings the server back.
    async fn start(&mut self) {}
}

static BROKERS: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", BROKERS.fetch_add(1, Ordering::Relaxed))
}

struct Memory;

#[async_trait]
impl Backend for Memory {
    async fn channel(&mut self) -> Arc<dyn Channel> {
        Arc::new(MemoryChannel::new(100))
    }
}

#[cfg(feature = "kafka")]
mod kafka_backend {
    use super::*;
    use sluice_channels::kafka::{KafkaChannel, KafkaSettings};
    use sluice_core::topology::Key;
    use sluice_tests::KafkaServer;

    /// The test binary's shared broker, or one of its own for a check that stops it.
    pub enum Kafka {
        Shared(&'static KafkaServer),
        Own(KafkaServer),
    }

    pub async fn new() -> Kafka {
        Kafka::Shared(sluice_tests::shared_kafka().await)
    }

    pub async fn own() -> Kafka {
        Kafka::Own(sluice_tests::start_kafka().await)
    }

    impl Kafka {
        fn server(&self) -> &KafkaServer {
            match self {
                Kafka::Shared(s) => s,
                Kafka::Own(s) => s,
            }
        }
    }

    #[async_trait]
    impl Backend for Kafka {
        async fn channel(&mut self) -> Arc<dyn Channel> {
            let mut settings = KafkaSettings::for_broker(
                &Key::new("conformance", unique("broker")),
                self.server().bootstrap_servers(),
                3,
                1,
            );
            settings.publish_timeout = Duration::from_secs(3);
            settings.commit_interval = Duration::from_millis(100);
            Arc::new(KafkaChannel::connect(settings).await.unwrap())
        }

        async fn stop(&mut self) {
            match self {
                Kafka::Own(s) => s.stop().await,
                Kafka::Shared(_) => {
                    panic!("a check that stops its server needs kafka_backend::own()")
                }
            }
        }

        async fn start(&mut self) {
            if let Kafka::Own(s) = self {
                s.start().await;
            }
        }
    }
}

#[cfg(feature = "nats")]
mod nats_backend {
    use super::*;
    use sluice_channels::nats::{NatsChannel, NatsSettings};
    use sluice_core::topology::Key;
    use sluice_tests::NatsServer;

    pub struct Nats(pub NatsServer);

    pub async fn new() -> Nats {
        Nats(sluice_tests::start_nats().await)
    }

    #[async_trait]
    impl Backend for Nats {
        async fn channel(&mut self) -> Arc<dyn Channel> {
            let mut settings =
                NatsSettings::for_broker(self.0.url(), &Key::new("conformance", unique("broker")));
            settings.publish_timeout = Duration::from_secs(3);
            Arc::new(NatsChannel::connect(settings).await.unwrap())
        }

        async fn stop(&mut self) {
            self.0.stop().await;
        }

        async fn start(&mut self) {
            self.0.start().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn event(id: &str) -> Envelope {
    let mut e = Event::new(SpecVersion::V10, id, "/conformance", "dev.sluice.test");
    e.set_data(Bytes::from(format!("{{\"id\":\"{id}\"}}")), false);
    e.set("datacontenttype", "application/json");
    Envelope::new(e)
}

fn keyed(id: &str, key: &str) -> Envelope {
    let mut env = event(id);
    env.event.set("partitionkey", key);
    env
}

fn spec(id: &str, start_from: StartFrom, ordered: bool) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.into(),
        start_from,
        ordered,
    }
}

fn latest(id: &str) -> SubscriptionSpec {
    spec(id, StartFrom::Latest, false)
}

/// The next message, failing the test after [`DEADLINE`]. Transient errors are skipped, as a
/// dispatcher would.
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

/// Asserts that nothing arrives for a short while (for "must not be delivered" checks).
async fn nothing_for(sub: &mut Box<dyn Subscription>, quiet: Duration) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, sub.next()).await {
        panic!("unexpected message {}", m.envelope.event.id());
    }
}

fn id(m: &Message) -> String {
    m.envelope.event.id().to_owned()
}

async fn publish_all(ch: &Arc<dyn Channel>, ids: &[&str]) {
    for i in ids {
        ch.publish(event(i)).await.unwrap();
    }
}

/// Polls `f` until it returns true, failing after `within`.
async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// The checks

/// A published event comes out as it went in: attributes in order, typed extensions, data,
/// and pass-through headers (NATS keeps headers of different names sorted by name).
async fn round_trip_is_lossless(b: &mut dyn Backend) {
    let ch = b.channel().await;
    let mut sub = ch.subscribe(latest("ns/round-trip")).await.unwrap();
    let mut e = Event::new(SpecVersion::V10, "1", "/src", "t");
    e.remove("id");
    e.set("id", "1");
    e.set("datacontenttype", "text/plain");
    e.set("subject", "two\nlines % \"q\" é");
    e.set("count", AttrValue::Integer(42));
    e.set("flag", AttrValue::Boolean(false));
    e.set("partitionkey", "k");
    e.set_data(Bytes::from_static(b"\x00binary\xff"), true);
    let env = Envelope::with_headers(
        e,
        vec![
            ("knative-a".into(), "1".into()),
            ("knative-a".into(), "2".into()),
            (
                "traceparent".into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
            ("x-request-id".into(), "req 1".into()),
        ],
    );
    ch.publish(env.clone()).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.envelope.event, env.event);
    let mut want = env.headers.clone();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let mut got = m.envelope.headers.clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    assert_eq!(m.delivery_count, 1);
    m.ack();

    // No data at all is not the same as empty data.
    let none = Envelope::new(Event::new(SpecVersion::V03, "2", "/src", "t"));
    ch.publish(none.clone()).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.envelope.as_ref(), &none);
    m.ack();
}

/// Acked events are never delivered again, even to a new consumer of the same subscription;
/// dropped (unacked) ones are.
async fn ack_is_final_and_drop_redelivers(b: &mut dyn Backend) {
    let ch = b.channel().await;
    let mut sub = ch.subscribe(latest("ns/ack")).await.unwrap();
    publish_all(&ch, &["a", "b"]).await;
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    let (a, b_msg) = if id(&first) == "a" {
        (first, second)
    } else {
        (second, first)
    };
    a.ack();
    drop(b_msg); // counts as nack(0)
    let again = next(&mut sub).await;
    assert_eq!(id(&again), "b");
    assert!(again.delivery_count >= 2, "count {}", again.delivery_count);
    again.ack();

    drop(sub);
    let mut sub = ch.subscribe(latest("ns/ack")).await.unwrap();
    publish_all(&ch, &["c"]).await;
    let m = next(&mut sub).await;
    assert_eq!(id(&m), "c", "acked events came back after re-subscribing");
    m.ack();
}

/// `nack(delay)` brings the message back after about the delay, without holding up others.
async fn nack_with_delay_redelivers_later(b: &mut dyn Backend) {
    let ch = b.channel().await;
    let mut sub = ch.subscribe(latest("ns/nack")).await.unwrap();
    publish_all(&ch, &["slow"]).await;
    let m = next(&mut sub).await;
    assert_eq!(m.delivery_count, 1);
    let delay = Duration::from_millis(700);
    let nacked_at = Instant::now();
    m.nack(delay);
    publish_all(&ch, &["fast"]).await;
    let m = next(&mut sub).await;
    assert_eq!(id(&m), "fast", "a nacked message held up the next one");
    m.ack();
    let m = next(&mut sub).await;
    assert_eq!(id(&m), "slow");
    // Server-side timers (NATS) may fire a little early by our clock; allow 100 ms.
    assert!(
        nacked_at.elapsed() + Duration::from_millis(100) >= delay,
        "redelivered after {:?}",
        nacked_at.elapsed()
    );
    assert_eq!(m.delivery_count, 2);
    m.ack();
}

/// A consumer that goes away without acking (a restart) gets its messages back when it
/// subscribes again with the same id.
async fn unacked_messages_survive_a_consumer_restart(b: &mut dyn Backend) {
    let ch = b.channel().await;
    let mut sub = ch.subscribe(latest("ns/restart")).await.unwrap();
    publish_all(&ch, &["x", "y"]).await;
    let m1 = next(&mut sub).await;
    let m2 = next(&mut sub).await;
    drop(sub);
    drop((m1, m2));
    let mut sub = ch.subscribe(latest("ns/restart")).await.unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let m = next(&mut sub).await;
        seen.insert(id(&m));
        m.ack();
    }
    assert_eq!(seen, BTreeSet::from(["x".to_string(), "y".to_string()]));
}

/// Two subscriptions each get every event.
async fn every_subscription_gets_every_event(b: &mut dyn Backend) {
    let ch = b.channel().await;
    let mut one = ch.subscribe(latest("ns/one")).await.unwrap();
    let mut two = ch.subscribe(latest("ns/two")).await.unwrap();
    let ids = ["1", "2", "3", "4", "5"];
    publish_all(&ch, &ids).await;
    let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    for sub in [&mut one, &mut two] {
        let mut got = BTreeSet::new();
        while got.len() < ids.len() {
            let m = next(sub).await;
            got.insert(id(&m));
            m.ack();
        }
        assert_eq!(got, want);
    }
    nothing_for(&mut one, Duration::from_millis(300)).await;
}

/// An ordered subscription gets the events of one lane in publish order (one partition key
/// keeps them in one Kafka partition).
async fn ordered_subscription_keeps_lane_order(b: &mut dyn Backend) {
    let ch = b.channel().await;
    let mut sub = ch
        .subscribe(spec("ns/ordered", StartFrom::Latest, true))
        .await
        .unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("o{i}")).collect();
    for i in &ids {
        ch.publish(keyed(i, "same-key")).await.unwrap();
    }
    let mut got = Vec::new();
    let mut lanes = BTreeSet::new();
    while got.len() < ids.len() {
        let m = next(&mut sub).await;
        got.push(id(&m));
        lanes.insert(m.lane);
        m.ack();
    }
    assert_eq!(got, ids);
    assert_eq!(lanes.len(), 1, "one key, one lane");
}

/// New subscriptions start after the latest event by default, or replay from the earliest
/// one, or from a point in time.
async fn start_from_latest_earliest_or_time(b: &mut dyn Backend) {
    let ch = b.channel().await;
    publish_all(&ch, &["old"]).await;
    // Wait for the clock to pass the old event's timestamp (ms resolution).
    let after_old = now_ms() + 1;
    eventually(DEADLINE, "past the old event", || now_ms() > after_old).await;
    let mut late = ch.subscribe(latest("ns/latest")).await.unwrap();
    let mut early = ch
        .subscribe(spec("ns/earliest", StartFrom::Earliest, false))
        .await
        .unwrap();
    let mut timed = ch
        .subscribe(spec("ns/timed", StartFrom::Time(after_old), false))
        .await
        .unwrap();
    publish_all(&ch, &["new"]).await;

    let m = next(&mut late).await;
    assert_eq!(id(&m), "new", "a latest subscription saw an older event");
    m.ack();
    let mut got = BTreeSet::new();
    while got.len() < 2 {
        let m = next(&mut early).await;
        got.insert(id(&m));
        m.ack();
    }
    assert_eq!(got, BTreeSet::from(["new".to_string(), "old".to_string()]));
    let m = next(&mut timed).await;
    assert_eq!(id(&m), "new", "a time-based start replayed an older event");
    m.ack();
}

/// The starting position is fixed when the subscription is first seen: events published
/// between then and the first consumption are owed to it even if it is dropped first.
async fn start_position_is_fixed_when_first_seen(b: &mut dyn Backend) {
    let ch = b.channel().await;
    publish_all(&ch, &["before"]).await;
    let sub = ch.subscribe(latest("ns/fixed")).await.unwrap();
    drop(sub); // "crash" before consuming anything
    publish_all(&ch, &["between"]).await;
    let mut sub = ch.subscribe(latest("ns/fixed")).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(id(&m), "between");
    m.ack();
}

/// Removing a subscription closes its stream and forgets its position and backlog.
async fn remove_subscription_closes_and_forgets(b: &mut dyn Backend) {
    let ch = b.channel().await;
    let mut sub = ch.subscribe(latest("ns/removed")).await.unwrap();
    publish_all(&ch, &["owed"]).await;
    ch.remove_subscription("ns/removed").await.unwrap();
    let closed = tokio::time::timeout(DEADLINE, sub.next()).await;
    assert!(
        matches!(closed, Ok(None)),
        "subscription still open after removal"
    );
    let mut sub = ch.subscribe(latest("ns/removed")).await.unwrap();
    publish_all(&ch, &["fresh"]).await;
    let m = next(&mut sub).await;
    assert_eq!(
        id(&m),
        "fresh",
        "a removed subscription's backlog came back"
    );
    m.ack();
    // Removing what does not exist is fine.
    ch.remove_subscription("ns/never-existed").await.unwrap();
}

/// With the server down, publishing fails quickly and health says why; once the server is
/// back, publishing and consuming work again.
async fn outage_fails_fast_and_recovers(b: &mut dyn Backend) {
    let ch = b.channel().await;
    assert_eq!(ch.health(), Health::Ready);
    b.stop().await;
    let started = Instant::now();
    let err = ch.publish(event("lost")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "publish took {:?} to fail",
        started.elapsed()
    );
    assert!(matches!(err, ChannelError::Unavailable(_)), "{err:?}");
    eventually(DEADLINE, "NotReady", || {
        matches!(ch.health(), Health::NotReady(_))
    })
    .await;
    if let Health::NotReady(reason) = ch.health() {
        assert!(!reason.is_empty());
    }

    b.start().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ch.publish(event("after")).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "publish still failing: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eventually(DEADLINE, "Ready again", || ch.health() == Health::Ready).await;
    let mut sub = ch
        .subscribe(spec("ns/after-outage", StartFrom::Earliest, false))
        .await
        .unwrap();
    loop {
        let m = next(&mut sub).await;
        let done = id(&m) == "after";
        m.ack();
        if done {
            break;
        }
    }
}

/// The in-memory channel's backpressure: a full subscription queue refuses the publish.
async fn memory_full_refuses_publish(_: &mut dyn Backend) {
    let ch: Arc<dyn Channel> = Arc::new(MemoryChannel::new(2));
    let _sub = ch.subscribe(latest("ns/full")).await.unwrap();
    publish_all(&ch, &["1", "2"]).await;
    assert!(matches!(
        ch.publish(event("3")).await,
        Err(ChannelError::Full(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// The suites

macro_rules! suite {
    ($name:ident, $backend:expr, [$($check:ident),* $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let mut backend = $backend;
                    super::$check(&mut backend).await;
                }
            )*
        }
    };
}

suite!(
    memory,
    Memory,
    [
        round_trip_is_lossless,
        ack_is_final_and_drop_redelivers,
        nack_with_delay_redelivers_later,
        unacked_messages_survive_a_consumer_restart,
        every_subscription_gets_every_event,
        ordered_subscription_keeps_lane_order,
        start_position_is_fixed_when_first_seen,
        remove_subscription_closes_and_forgets,
        memory_full_refuses_publish,
    ]
);

#[cfg(feature = "kafka")]
suite!(
    kafka,
    kafka_backend::new().await,
    [
        round_trip_is_lossless,
        ack_is_final_and_drop_redelivers,
        nack_with_delay_redelivers_later,
        unacked_messages_survive_a_consumer_restart,
        every_subscription_gets_every_event,
        ordered_subscription_keeps_lane_order,
        start_from_latest_earliest_or_time,
        start_position_is_fixed_when_first_seen,
        remove_subscription_closes_and_forgets,
    ]
);

// Stops its broker, so it cannot share the binary's.
#[cfg(feature = "kafka")]
suite!(
    kafka_outage,
    kafka_backend::own().await,
    [outage_fails_fast_and_recovers]
);

#[cfg(feature = "nats")]
suite!(
    nats,
    nats_backend::new().await,
    [
        round_trip_is_lossless,
        ack_is_final_and_drop_redelivers,
        nack_with_delay_redelivers_later,
        unacked_messages_survive_a_consumer_restart,
        every_subscription_gets_every_event,
        ordered_subscription_keeps_lane_order,
        start_from_latest_earliest_or_time,
        start_position_is_fixed_when_first_seen,
        remove_subscription_closes_and_forgets,
        outage_fails_fast_and_recovers,
    ]
);
