//! NATS-only checks beyond the conformance suite: what JetStream keeps across a server crash,
//! and the ack-wait handling (progress acks while a message is held, redelivery after
//! `ack_wait` when its holder died). Real `nats-server` from the `sluice-tests` harness.
#![cfg(feature = "nats")]

use bytes::Bytes;
use sluice_channels::nats::{consumer_name, NatsChannel, NatsSettings};
use sluice_channels::{Channel, Health, Message, Subscription, SubscriptionSpec};
use sluice_core::topology::{Key, StartFrom};
use sluice_core::{Envelope, Event, SpecVersion};
use std::time::Duration;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

fn event(id: &str) -> Envelope {
    let mut e = Event::new(SpecVersion::V10, id, "/nats", "dev.sluice.test");
    e.set_data(Bytes::from_static(b"{}"), false);
    Envelope::new(e)
}

fn spec(id: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.into(),
        start_from: StartFrom::Latest,
        ordered: false,
    }
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

async fn publish_eventually(ch: &NatsChannel, env: Envelope) {
    let deadline = Instant::now() + DEADLINE;
    while let Err(e) = ch.publish(env.clone()).await {
        assert!(Instant::now() < deadline, "publish still failing: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn channel(
    server: &sluice_tests::NatsServer,
    broker: &str,
    ack_wait: Duration,
) -> NatsChannel {
    let mut settings = NatsSettings::for_broker(server.url(), &Key::new("nats", broker));
    settings.ack_wait = ack_wait;
    settings.publish_timeout = Duration::from_secs(3);
    NatsChannel::connect(settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_positions_survive_a_server_crash() {
    let mut server = sluice_tests::start_nats().await;
    let ch = channel(&server, "crash", Duration::from_secs(30)).await;
    let mut sub = ch.subscribe(spec("ns/t")).await.unwrap();
    ch.publish(event("a")).await.unwrap();
    ch.publish(event("b")).await.unwrap();
    for want in ["a", "b"] {
        let m = next(&mut sub).await;
        assert_eq!(m.envelope.event.id(), want);
        m.ack();
    }
    ch.publish(event("c")).await.unwrap(); // stored, not consumed
    drop(sub);

    // Wait until the server has recorded both acks before killing it.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&ch.settings().stream).await.unwrap();
    let name = consumer_name("ns/t");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let info = stream.consumer_info(&name).await.unwrap();
        if info.ack_floor.stream_sequence >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "acks never reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.restart().await; // SIGKILL, then the same port and store
    publish_eventually(&ch, event("d")).await;
    let deadline = Instant::now() + DEADLINE;
    while ch.health() != Health::Ready {
        assert!(Instant::now() < deadline, "not ready after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // JetStream writes a consumer's ack state to disk asynchronously, so a SIGKILL may lose
    // the last acks and redeliver a or b: at-least-once allows that. What must hold: c and d,
    // stored before and after the crash, are delivered.
    let mut sub = ch.subscribe(spec("ns/t")).await.unwrap();
    let mut seen = Vec::new();
    while !(seen.contains(&"c".to_string()) && seen.contains(&"d".to_string())) {
        let m = next(&mut sub).await;
        let id = m.envelope.event.id().to_string();
        assert!(
            ["a", "b", "c", "d"].contains(&id.as_str()),
            "unexpected {id}"
        );
        seen.push(id);
        m.ack();
    }
    eprintln!("delivered after the crash: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_is_kept_alive_and_a_dead_holders_comes_back() {
    let server = sluice_tests::start_nats().await;
    let ack_wait = Duration::from_secs(1);
    let ch = channel(&server, "ackwait", ack_wait).await;

    // Held (being delivered) for well over ack_wait: progress acks keep it ours.
    let mut sub = ch.subscribe(spec("ns/held")).await.unwrap();
    ch.publish(event("slow")).await.unwrap();
    let m = next(&mut sub).await;
    if let Ok(Some(Ok(again))) = tokio::time::timeout(ack_wait * 3, sub.next()).await {
        panic!(
            "{} redelivered while held (count {})",
            again.envelope.event.id(),
            again.delivery_count
        );
    }
    assert_eq!(m.delivery_count, 1);
    m.ack();

    // A holder that dies without acking or nacking (the process crashed): the server
    // redelivers after ack_wait, with a higher delivery count.
    ch.publish(event("orphan")).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.envelope.event.id(), "orphan");
    std::mem::forget(m);
    drop(sub);
    let started = Instant::now();
    let mut sub = ch.subscribe(spec("ns/held")).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.envelope.event.id(), "orphan");
    // At least 2: the closed subscription's last pull request may have received (and handed
    // back) a redelivery first.
    assert!(m.delivery_count >= 2, "count {}", m.delivery_count);
    assert!(started.elapsed() + Duration::from_millis(200) >= ack_wait);
    m.ack();
}

/// Issue 9 item 8: NATS streams had no `max_age` / `max_bytes`. Now they are bounded, the
/// bound is applied to a stream made earlier without it, and a full stream refuses new
/// events (503 at the ingress) instead of discarding acknowledged ones.
#[tokio::test]
async fn the_stream_is_bounded_and_refuses_rather_than_discards() {
    let server = sluice_tests::start_nats().await;
    let broker = Key::new("nats", "bounded");
    let ch = channel(&server, "bounded", Duration::from_secs(30)).await;
    drop(ch.subscribe(spec("t")).await.unwrap());
    publish_eventually(&ch, event("first")).await;
    drop(ch);

    let mut settings = NatsSettings::for_broker(server.url(), &broker);
    settings.max_bytes = 4096;
    settings.publish_timeout = Duration::from_secs(3);
    let ch = NatsChannel::connect(settings).await.unwrap();
    let big = |i: usize| {
        let mut e = event(&format!("big{i}"));
        e.event.set_data(Bytes::from(vec![b'x'; 1000]), true);
        e
    };
    let mut refused = None;
    for i in 0..20 {
        if let Err(e) = ch.publish(big(i)).await {
            refused = Some(i);
            eprintln!("refused as expected: {e}");
            break;
        }
    }
    let i = refused.expect("publishes beyond maxBytes must be refused");
    assert!(
        (2..=5).contains(&i),
        "refused after {i} events of 1 KB with a 4 KiB bound"
    );
    // Nothing acknowledged was discarded to make room: the first event is still delivered.
    let mut sub = ch.subscribe(spec("t")).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.envelope.event.id(), "first");
    m.ack();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_counts_what_the_subscriber_has_not_taken() {
    let server = sluice_tests::start_nats().await;
    let ch = channel(&server, "backlog", Duration::from_secs(30)).await;
    let mut sub = ch.subscribe(spec("ns/slow")).await.unwrap();
    assert_eq!(ch.backlog("ns/unknown"), None);
    for i in 0..10 {
        publish_eventually(&ch, event(&format!("e{i}"))).await;
    }
    let first = next(&mut sub).await;
    // Pending at the server plus pulled into the buffer: everything not taken.
    let deadline = Instant::now() + DEADLINE;
    while ch.backlog("ns/slow") != Some(9) {
        assert!(
            Instant::now() < deadline,
            "backlog {:?}, want Some(9)",
            ch.backlog("ns/slow")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.ack();
    for _ in 0..9 {
        next(&mut sub).await.ack();
    }
    assert_eq!(ch.backlog("ns/slow"), Some(0));
}
