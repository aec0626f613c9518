//! Scale-out on NATS JetStream (issue 10): three `sluice run` processes with the same YAML on
//! one nats-server pull from each trigger's shared durable consumer. Every acknowledged event
//! reaches every matching trigger's sink, duplicates stay bounded, and when one replica is
//! killed with SIGKILL mid-load, what it had pulled and not acked is redelivered (after the
//! consumer's ack wait) to the others: nothing it acknowledged to a producer is lost.
#![cfg(feature = "nats")]

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const EVENTS: usize = 3000;
const REPLICAS: usize = 3;

fn yaml(url: &str, all: &str, orders: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: channel, namespace: default}}
data:
  url: "{url}"
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: default
  annotations: {{eventing.knative.dev/broker.class: NatsJetStreamBroker}}
spec:
  config: {{apiVersion: v1, kind: ConfigMap, name: channel, namespace: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: all, namespace: default}}
spec:
  broker: default
  subscriber: {{uri: "{all}"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: orders, namespace: default}}
spec:
  broker: default
  filter: {{attributes: {{type: order}}}}
  subscriber: {{uri: "{orders}"}}
"#
    )
}

fn ids(sink: &Sink) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sink.received() {
        if let Some(id) = r.header("ce-id") {
            *m.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    m
}

fn delivered(metrics: &str, trigger: &str) -> f64 {
    let prefix = format!(
        "sluice_events_delivered_total{{namespace=\"default\",broker=\"default\",trigger=\"{trigger}\"}}"
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_durable_consumers_and_survive_a_sigkill() {
    let nats = sluice_tests::start_nats().await;
    let all = Sink::ok().await;
    let orders = Sink::ok().await;
    let resources = yaml(&nats.url(), &all.url(), &orders.url());
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        let dir = test_dir(&format!("nats-scale-out-{i}"));
        std::fs::write(dir.join("resources.yaml"), &resources).unwrap();
        replicas.push(Some(Sluice::start_in(dir, &[]).await));
    }
    // No group to settle: every replica pulls from the trigger's one durable consumer, and
    // JetStream hands each message to one of them.
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| r.as_ref().unwrap().broker_url("default", "default"))
        .collect();

    // Each replica's ingress takes a third of the events; an event counts once answered 202.
    let accepted: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (r, url) in urls.iter().enumerate() {
        let (url, accepted, sent) = (url.clone(), accepted.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let client = client();
            for i in (r..EVENTS).step_by(REPLICAS) {
                let id = format!("ev-{i}");
                let order = i.is_multiple_of(2);
                let res = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/scale-out")
                    .header("ce-type", if order { "order" } else { "other" })
                    .body("{}")
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::SeqCst);
                if res.is_ok_and(|r| r.status() == 202) {
                    accepted.lock().unwrap().push((id, order));
                }
            }
        }));
    }

    // Mid-load, the third replica dies without a word: no commit, no leaving its groups.
    eventually(Duration::from_secs(60), "a third of the load sent", || {
        let n = sent.load(Ordering::SeqCst);
        async move { (n >= EVENTS / 3).then_some(()) }
    })
    .await;
    let before_kill = ids(&all).len();
    replicas[2].take().unwrap().kill().await;
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > EVENTS / 2,
        "only {} of {EVENTS} events were accepted",
        accepted.len()
    );

    // Every acknowledged event reaches every trigger that matches it.
    let want_orders = accepted.iter().filter(|(_, o)| *o).count();
    let got_all = eventually(
        Duration::from_secs(120),
        "every accepted event at `all`",
        || {
            let got = ids(&all);
            let done = accepted.iter().all(|(id, _)| got.contains_key(id));
            async move { done.then_some(got) }
        },
    )
    .await;
    let got_orders = eventually(
        Duration::from_secs(60),
        "every accepted order at `orders`",
        || {
            let got = ids(&orders);
            let done = accepted
                .iter()
                .filter(|(_, o)| *o)
                .all(|(id, _)| got.contains_key(id));
            async move { done.then_some(got) }
        },
    )
    .await;
    assert!(
        got_orders.keys().all(|id| {
            let n: usize = id.trim_start_matches("ev-").parse().unwrap();
            n.is_multiple_of(2)
        }),
        "the `orders` trigger got an event its filter rejects"
    );

    // Both surviving replicas delivered for both triggers: the partitions were shared.
    for (i, r) in replicas
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.as_ref()?)))
    {
        let m = r.metrics().await;
        for t in ["all", "orders"] {
            assert!(
                delivered(&m, t) > 0.0,
                "replica {i} delivered nothing for `{t}`"
            );
        }
    }

    // Redelivered: only what the killed replica had pulled but not acked (redelivered by the
    // server after its ack wait).
    let dup = |got: &HashMap<String, usize>| -> usize { got.values().map(|n| n - 1).sum() };
    let (dup_all, dup_orders) = (dup(&got_all), dup(&got_orders));
    println!(
        "nats scale-out: {} of {EVENTS} accepted ({want_orders} orders), {before_kill} delivered to `all` \
         before the SIGKILL; duplicates: `all` {dup_all}, `orders` {dup_orders}",
        accepted.len()
    );
    assert!(
        dup_all < accepted.len() / 5 && dup_orders < want_orders / 5,
        "too many duplicates: `all` {dup_all}, `orders` {dup_orders}"
    );
    for r in replicas.into_iter().flatten() {
        r.kill().await;
    }
}
