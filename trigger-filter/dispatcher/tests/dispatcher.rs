//! The dispatcher on its own: a reconciler fed topologies through a watch, in-memory
//! channels, and real HTTP sinks on loopback. Ordered delivery, the concurrency limit,
//! shutdown drain, reload during delivery, handover of queued events, retried subscribes,
//! supervision and per-object status.

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use sluice_broker::Ingress;
use sluice_channels::memory::MemoryChannel;
use sluice_channels::{Channel, ChannelError, SubscriptionSpec};
use sluice_core::delivery::{BackoffPolicy, DeliveryPolicy, Endpoint};
use sluice_core::metrics::Metrics;
use sluice_core::status::{Ready, StatusBoard};
use sluice_core::topology::{
    Broker, ChannelConfig, Key, ObjectRef, ReplyTo, StartFrom, Subscription, Topology,
};
use sluice_core::{Event, SpecVersion};
use sluice_dispatcher::{ChannelFactory, Dataplane};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

// ---------------------------------------------------------------- sinks

type Script = dyn Fn(&str, usize) -> (u16, Duration) + Send + Sync;

/// A real HTTP sink: records event ids in arrival order, answers as scripted
/// (`script(id, nth request for that id)` → status and delay), tracks concurrency.
struct Sink {
    addr: SocketAddr,
    state: Arc<SinkState>,
}

struct SinkState {
    got: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    script: Box<Script>,
    /// Answer every 2xx with a reply event.
    reply: bool,
}

impl Sink {
    async fn start(
        script: impl Fn(&str, usize) -> (u16, Duration) + Send + Sync + 'static,
    ) -> Sink {
        Self::start_with(script, false).await
    }

    async fn start_with(
        script: impl Fn(&str, usize) -> (u16, Duration) + Send + Sync + 'static,
        reply: bool,
    ) -> Sink {
        let state = Arc::new(SinkState {
            reply,
            got: Mutex::default(),
            attempts: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            script: Box::new(script),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Sink { addr, state }
    }

    async fn ok() -> Sink {
        Self::start(|_, _| (200, Duration::ZERO)).await
    }

    fn endpoint(&self) -> Endpoint {
        format!("http://{}/", self.addr).parse().unwrap()
    }

    /// Ids answered 2xx, in order.
    fn got(&self) -> Vec<String> {
        self.state.got.lock().unwrap().clone()
    }

    fn attempts(&self) -> usize {
        self.state.attempts.lock().unwrap().values().sum()
    }

    async fn wait_for(&self, n: usize) -> Vec<String> {
        sluice_tests::eventually(Duration::from_secs(20), &format!("{n} events"), || async {
            let got = self.got();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn handle(State(s): State<Arc<SinkState>>, headers: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let id = headers
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let nth = {
        let mut a = s.attempts.lock().unwrap();
        let n = a.entry(id.clone()).or_default();
        *n += 1;
        *n - 1
    };
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let (status, delay) = (s.script)(&id, nth);
    tokio::time::sleep(delay).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let ok = (200..300).contains(&status);
    if ok {
        s.got.lock().unwrap().push(id.clone());
    }
    let status = StatusCode::from_u16(status).unwrap();
    if ok && s.reply {
        let reply_id = format!("reply-{id}");
        return (
            status,
            [
                ("ce-specversion", "1.0"),
                ("ce-id", reply_id.as_str()),
                ("ce-source", "/replier"),
                ("ce-type", "reply"),
            ],
        )
            .into_response();
    }
    status.into_response()
}

// ---------------------------------------------------------------- data plane

/// Makes in-memory channels; fails `create` while `fail_create` is set and `subscribe` the
/// first `fail_subscribes` times.
#[derive(Clone, Default)]
struct Factory {
    fail_create: Arc<Mutex<Option<String>>>,
    fail_subscribes: Arc<AtomicUsize>,
    made: Arc<Mutex<Vec<Arc<MemoryChannel>>>>,
}

#[async_trait]
impl ChannelFactory for Factory {
    async fn create(
        &self,
        _: &ObjectRef,
        config: &ChannelConfig,
    ) -> Result<Arc<dyn Channel>, ChannelError> {
        if let Some(why) = self.fail_create.lock().unwrap().clone() {
            return Err(ChannelError::Unavailable(why));
        }
        let ChannelConfig::Memory {
            capacity,
            max_bytes,
        } = config
        else {
            panic!("memory channels only here");
        };
        let ch = Arc::new(MemoryChannel::with_limits(*capacity, *max_bytes));
        self.made.lock().unwrap().push(ch.clone());
        Ok(Arc::new(Flaky {
            inner: ch,
            fail_subscribes: self.fail_subscribes.clone(),
        }))
    }
}

struct Flaky {
    inner: Arc<MemoryChannel>,
    fail_subscribes: Arc<AtomicUsize>,
}

#[async_trait]
impl Channel for Flaky {
    async fn publish(&self, e: sluice_core::Envelope) -> Result<(), ChannelError> {
        self.inner.publish(e).await
    }
    async fn publish_batch(&self, e: Vec<sluice_core::Envelope>) -> Result<(), ChannelError> {
        self.inner.publish_batch(e).await
    }
    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn sluice_channels::Subscription>, ChannelError> {
        let left = self.fail_subscribes.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_subscribes.store(left - 1, Ordering::SeqCst);
            return Err(ChannelError::Unavailable("subscribe refused (test)".into()));
        }
        self.inner.subscribe(spec).await
    }
    async fn remove_subscription(&self, id: &str) -> Result<(), ChannelError> {
        self.inner.remove_subscription(id).await
    }
    fn pending(&self) -> Option<usize> {
        self.inner.pending()
    }
}

struct Plane {
    ingress: Arc<Ingress>,
    status: Arc<StatusBoard>,
    topology: watch::Sender<Arc<Topology>>,
    dataplane: Dataplane,
    factory: Factory,
}

impl Plane {
    async fn start(t: Topology, factory: Factory) -> Plane {
        let metrics = Arc::new(Metrics::new());
        let ingress = Arc::new(Ingress::new(metrics.clone(), 1 << 20));
        let status = Arc::new(StatusBoard::new());
        let (tx, rx) = watch::channel(Arc::new(t));
        let dataplane = Dataplane::start(
            ingress.clone(),
            metrics,
            Box::new(factory.clone()),
            status.clone(),
            rx,
        );
        dataplane.applied().await;
        Plane {
            ingress,
            status,
            topology: tx,
            dataplane,
            factory,
        }
    }

    /// Publishes a new topology and waits until the reconciler has applied it.
    async fn apply(&self, t: Topology) {
        let before = self.dataplane.applied_count();
        self.topology.send_replace(Arc::new(t));
        sluice_tests::eventually(Duration::from_secs(10), "the topology applied", || async {
            (self.dataplane.applied_count() > before).then_some(())
        })
        .await;
    }

    async fn send(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            let e = Event::new(SpecVersion::V10, id, "/test", "t");
            self.ingress
                .publish(&broker_key(), vec![e], vec![])
                .await
                .unwrap();
        }
    }

    async fn status_of(&self, obj: &ObjectRef, want: Ready) -> sluice_core::status::Status {
        sluice_tests::eventually(
            Duration::from_secs(10),
            &format!("{obj} {want:?}"),
            || async { self.status.get(obj).filter(|s| s.ready == want) },
        )
        .await
    }
}

fn broker_key() -> Key {
    Key::new("ns", "b")
}

fn broker(capacity: usize) -> Arc<Broker> {
    Arc::new(Broker {
        key: broker_key(),
        channel: ChannelConfig::Memory {
            capacity,
            max_bytes: 1 << 30,
        },
        delivery: None,
        fingerprint: capacity as u64,
    })
}

fn policy(retry: u32) -> DeliveryPolicy {
    DeliveryPolicy {
        retry,
        backoff_policy: BackoffPolicy::Linear,
        backoff_delay: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..DeliveryPolicy::default()
    }
}

fn trigger(name: &str, sink: &Sink, delivery: DeliveryPolicy) -> Subscription {
    Subscription {
        subscriber_target: None,
        owner: ObjectRef::trigger(Key::new("ns", name)),
        channel: ObjectRef::broker(broker_key()),
        filter: None,
        subscriber: sink.endpoint(),
        reply: ReplyTo::Broker(broker_key()),
        delivery,
        ordered: false,
        concurrency: 100,
        start_from: StartFrom::Latest,
        fingerprint: 1,
    }
}

fn topology(broker: Arc<Broker>, subs: Vec<Subscription>) -> Topology {
    let mut t = Topology::default();
    t.brokers.insert(broker.key.clone(), broker);
    for s in subs {
        t.subscriptions.insert(s.owner.clone(), Arc::new(s));
    }
    t
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("e{i:04}")).collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn ordered_delivery_keeps_order_through_retries() {
    // Every fifth event fails twice before it is taken.
    let sink = Sink::start(|id, nth| {
        let n: usize = id[1..].parse().unwrap();
        if n.is_multiple_of(5) && nth < 2 {
            (503, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    })
    .await;
    let mut t = trigger("t", &sink, policy(5));
    t.ordered = true;
    t.concurrency = 10;
    let plane = Plane::start(topology(broker(1000), vec![t]), Factory::default()).await;
    plane.send(ids(50)).await;
    assert_eq!(sink.wait_for(50).await, ids(50));
}

#[tokio::test]
async fn the_concurrency_limit_holds() {
    let sink = Sink::start(|_, _| (200, Duration::from_millis(30))).await;
    let mut t = trigger("t", &sink, policy(0));
    t.concurrency = 3;
    let plane = Plane::start(topology(broker(1000), vec![t]), Factory::default()).await;
    plane.send(ids(30)).await;
    sink.wait_for(30).await;
    let max = sink.state.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(
        max, 3,
        "at most 3 deliveries at once, and the limit is used"
    );
}

#[tokio::test]
async fn shutdown_drains_queued_events_within_the_drain_period() {
    let sink = Sink::start(|_, _| (200, Duration::from_millis(5))).await;
    let mut t = trigger("t", &sink, policy(3));
    t.concurrency = 2;
    let plane = Plane::start(topology(broker(1000), vec![t]), Factory::default()).await;
    plane.send(ids(100)).await;
    plane.ingress.close();
    let report = plane.dataplane.shutdown(Duration::from_secs(20)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.lost, 0);
    let mut got = sink.got();
    got.sort();
    got.dedup();
    assert_eq!(got, ids(100), "every queued event delivered before exit");
}

/// Issue 9 item 3: an ordered trigger with a failing sink blocked shutdown (still running
/// 6 s after SIGTERM). Now the drain period bounds it and what is left is counted.
#[tokio::test]
async fn a_failing_ordered_trigger_does_not_hold_up_shutdown() {
    let sink = Sink::start(|_, _| (503, Duration::ZERO)).await;
    let mut d = policy(100);
    d.backoff_delay = Duration::from_secs(2);
    let mut t = trigger("t", &sink, d);
    t.ordered = true;
    let plane = Plane::start(topology(broker(1000), vec![t]), Factory::default()).await;
    plane.send(ids(5)).await;
    sluice_tests::eventually(Duration::from_secs(5), "a first attempt", || async {
        (sink.attempts() > 0).then_some(())
    })
    .await;
    let started = Instant::now();
    plane.ingress.close();
    let report = plane.dataplane.shutdown(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(!report.drained);
    assert_eq!(report.lost, 5, "the events left are counted: {report:?}");
}

/// Issue 9 item 7: a changed trigger's old worker kept retrying on its old schedule.
#[tokio::test]
async fn a_changed_trigger_stops_the_old_retries_and_resumes_them_with_the_new_settings() {
    let old = Sink::start(|_, _| (503, Duration::ZERO)).await;
    let new = Sink::ok().await;
    let mut d = policy(1000);
    d.backoff_delay = Duration::from_millis(50);
    let plane = Plane::start(
        topology(broker(1000), vec![trigger("t", &old, d.clone())]),
        Factory::default(),
    )
    .await;
    plane.send(ids(3)).await;
    sluice_tests::eventually(
        Duration::from_secs(5),
        "retries at the old sink",
        || async { (old.attempts() >= 6).then_some(()) },
    )
    .await;
    let mut changed = trigger("t", &new, d);
    changed.fingerprint = 2;
    plane.apply(topology(broker(1000), vec![changed])).await;
    let attempts_at_change = old.attempts();
    let mut got = new.wait_for(3).await;
    got.sort();
    assert_eq!(got, ids(3), "the retried events went to the new subscriber");
    // No more attempts at the old subscriber once the change is applied (at most the ones
    // that were already on the wire).
    assert!(old.attempts() <= attempts_at_change + 3);
}

/// Issue 9 item 7: a deleted trigger kept delivering its in-flight retries.
#[tokio::test]
async fn a_deleted_trigger_stops_retrying() {
    let sink = Sink::start(|_, _| (503, Duration::ZERO)).await;
    let mut d = policy(1000);
    // A retry every 5 ms while the trigger exists.
    d.backoff_delay = Duration::from_millis(5);
    d.backoff_max = Duration::from_millis(5);
    let plane = Plane::start(
        topology(broker(1000), vec![trigger("t", &sink, d)]),
        Factory::default(),
    )
    .await;
    plane.send(ids(2)).await;
    sluice_tests::eventually(Duration::from_secs(5), "retries", || async {
        (sink.attempts() >= 10).then_some(())
    })
    .await;
    // Applying waits for the worker and every delivery it started to end.
    plane.apply(topology(broker(1000), vec![])).await;
    let after = sink.attempts();
    // Another trigger's delivery round trip: had the retries gone on, several more
    // attempts (one per 5 ms) would have come in meanwhile.
    let probe = Sink::start(|_, _| (200, Duration::from_millis(50))).await;
    let p = trigger("probe", &probe, policy(0));
    plane.apply(topology(broker(1000), vec![p])).await;
    plane.send(["p".to_string()]).await;
    probe.wait_for(1).await;
    assert_eq!(
        sink.attempts(),
        after,
        "no attempt after the trigger was deleted"
    );
}

/// Issue 9 item 4: a reload that changed a broker's channel settings dropped queued events
/// (5 of 6 lost).
#[tokio::test]
async fn changing_channel_settings_hands_queued_events_over() {
    let up = Arc::new(AtomicUsize::new(0));
    let gate = up.clone();
    // Down (503) until `up` is set.
    let sink = Sink::start(move |_, _| {
        if gate.load(Ordering::SeqCst) == 1 {
            (200, Duration::ZERO)
        } else {
            (503, Duration::ZERO)
        }
    })
    .await;
    let mut d = policy(1000);
    d.backoff_delay = Duration::from_millis(20);
    let t = trigger("t", &sink, d);
    let plane = Plane::start(topology(broker(10), vec![t.clone()]), Factory::default()).await;
    plane.send(ids(6)).await;
    // Capacity 10 → 20: a new channel; the old one keeps delivering what it holds.
    plane.apply(topology(broker(20), vec![t])).await;
    assert_eq!(plane.factory.made.lock().unwrap().len(), 2);
    plane.send((6..10).map(|i| format!("e{i:04}"))).await;
    up.store(1, Ordering::SeqCst);
    let mut got = sink.wait_for(10).await;
    got.sort();
    got.dedup();
    assert_eq!(got, ids(10));
    // The old channel is closed once it is empty.
    let old = plane.factory.made.lock().unwrap()[0].clone();
    assert_eq!(old.pending(), Some(0));
}

/// Issue 9 item 7: a trigger whose subscribe failed on a healthy broker was never retried.
#[tokio::test]
async fn a_failed_subscribe_is_retried_and_reported_meanwhile() {
    let sink = Sink::ok().await;
    let factory = Factory::default();
    factory.fail_subscribes.store(2, Ordering::SeqCst);
    let plane = Plane::start(
        topology(broker(100), vec![trigger("t", &sink, policy(0))]),
        factory,
    )
    .await;
    let obj = ObjectRef::trigger(Key::new("ns", "t"));
    let st = plane.status.get(&obj).unwrap();
    assert_eq!(st.ready, Ready::False);
    assert_eq!(st.reason, "SubscriptionFailed");
    assert!(st.message.contains("subscribe refused"), "{st:?}");
    plane.status_of(&obj, Ready::True).await;
    plane.send(ids(1)).await;
    sink.wait_for(1).await;
}

#[tokio::test]
async fn statuses_say_what_is_wrong_and_recover() {
    let sink = Sink::ok().await;
    let factory = Factory::default();
    *factory.fail_create.lock().unwrap() = Some("server unreachable".into());
    let mut orphan = trigger("orphan", &sink, policy(0));
    orphan.channel = ObjectRef::broker(Key::new("ns", "missing"));
    let plane = Plane::start(
        topology(broker(100), vec![trigger("t", &sink, policy(0)), orphan]),
        factory.clone(),
    )
    .await;
    let b = ObjectRef::broker(broker_key());
    let t = ObjectRef::trigger(Key::new("ns", "t"));
    let o = ObjectRef::trigger(Key::new("ns", "orphan"));
    let st = plane.status.get(&b).unwrap();
    assert_eq!(
        (st.ready, st.reason.as_str()),
        (Ready::False, "ChannelFailure")
    );
    assert!(st.message.contains("server unreachable"));
    assert_eq!(plane.status.get(&t).unwrap().reason, "BrokerNotReady");
    assert_eq!(plane.status.get(&o).unwrap().reason, "BrokerDoesNotExist");
    assert_eq!(plane.status.get(&b).unwrap().observed_generation, 1);
    // The ingress answers 503 with the reason meanwhile, not 404.
    let e = Event::new(SpecVersion::V10, "x", "s", "t");
    let err = plane
        .ingress
        .publish(&broker_key(), vec![e], vec![])
        .await
        .unwrap_err();
    assert_eq!(err.status(), 503);
    // The server comes back: retried with backoff, no reload needed.
    *factory.fail_create.lock().unwrap() = None;
    plane.status_of(&b, Ready::True).await;
    plane.status_of(&t, Ready::True).await;
}

/// A worker whose channel subscription ends under it is restarted, and its status says so.
#[tokio::test]
async fn a_worker_that_ends_is_restarted_and_reported() {
    let sink = Sink::ok().await;
    let plane = Plane::start(
        topology(broker(100), vec![trigger("t", &sink, policy(0))]),
        Factory::default(),
    )
    .await;
    let ch = plane.factory.made.lock().unwrap()[0].clone();
    ch.remove_subscription("ns/t").await.unwrap();
    let obj = ObjectRef::trigger(Key::new("ns", "t"));
    sluice_tests::eventually(Duration::from_secs(10), "a restart reported", || async {
        plane
            .status
            .get(&obj)
            .filter(|s| s.ready == Ready::True && s.message.contains("restarted 1 time"))
    })
    .await;
    plane.send(ids(1)).await;
    sink.wait_for(1).await;
}

/// Issue 9 item 7: a reply that could not be stored was nacked with a fresh retry budget
/// (and, on an ordered Kafka trigger, out of order). Now it is one more failed attempt of
/// the same schedule: retried in place, then dead-lettered.
#[tokio::test]
async fn a_reply_that_cannot_be_stored_fails_the_attempt_under_the_same_schedule() {
    let replier = Sink::start_with(|_, _| (200, Duration::ZERO), true).await;
    let dls = Sink::ok().await;
    let mut d = policy(2);
    d.dead_letter_sink = Some(dls.endpoint());
    let mut t = trigger("t", &replier, d);
    t.ordered = true;
    // Replies go to a broker that does not exist: storing them fails every time.
    t.reply = ReplyTo::Broker(Key::new("ns", "nowhere"));
    let plane = Plane::start(topology(broker(100), vec![t]), Factory::default()).await;
    plane.send(ids(1)).await;
    assert_eq!(dls.wait_for(1).await, ids(1));
    assert_eq!(
        replier.attempts(),
        3,
        "retry 2 = 3 attempts in all, no fresh budget"
    );
}
