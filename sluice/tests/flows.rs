//! Channels, Subscriptions, Sequences and Parallels end to end: the real binary, real HTTP
//! sinks (SEMANTICS.md §9, §10), and for durable channels real Kafka and NATS servers.

mod common;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A reply that copies the request's id with a prefix and sets `ty`.
fn reply_to(r: &Received, prefix: &str, ty: &str) -> Response {
    let id = format!("{prefix}{}", r.header("ce-id").unwrap_or("?"));
    reply(&id, ty)
}

impl Sluice {
    fn channel_url(&self, ns: &str, name: &str) -> String {
        format!("http://{}/{ns}/channels/{name}", self.ingress)
    }

    async fn topology(&self) -> Value {
        client()
            .get(format!("http://{}/topology", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until every object of every list in `/topology` is Ready; returns the topology.
    async fn all_ready(&self) -> Value {
        eventually(T, "every object ready", || async {
            let t = self.topology().await;
            let lists = ["brokers", "triggers", "channels", "subscriptions", "flows"];
            let all = lists
                .iter()
                .flat_map(|l| t[*l].as_array().cloned().unwrap_or_default())
                .all(|o| o["status"] == "True");
            all.then_some(t)
        })
        .await
    }
}

fn find<'a>(t: &'a Value, list: &str, name: &str) -> &'a Value {
    t[list]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}: {t}"))
}

const BROKER: &str =
    "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n";

#[tokio::test]
async fn channel_with_two_subscriptions_replies_to_a_broker() {
    let replier = Sink::start(|r, _| reply_to(r, "reply-", "com.example.reply")).await;
    let plain = Sink::ok().await;
    let after_broker = Sink::ok().await;
    let yaml = format!(
        r#"{BROKER}---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: replies}}
spec:
  broker: default
  filter: {{attributes: {{type: com.example.reply}}}}
  subscriber: {{uri: "{after}"}}
---
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {{name: orders}}
spec:
  channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}
---
apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata: {{name: empty}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: with-reply}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: orders}}
  subscriber: {{uri: "{replier}"}}
  reply:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: plain}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: orders}}
  subscriber: {{uri: "{plain}"}}
"#,
        after = after_broker.url(),
        replier = replier.url(),
        plain = plain.url(),
    );
    let s = Sluice::start("channel-subs", &yaml).await;
    let t = s.all_ready().await;
    let ch = find(&t, "channels", "orders");
    assert_eq!(ch["kind"], "Channel");
    assert_eq!(ch["url"], s.channel_url("default", "orders"));
    assert_eq!(
        find(&t, "subscriptions", "with-reply")["reply"],
        "broker default/default"
    );

    // §9 ingress answers.
    let url = s.channel_url("default", "orders");
    assert_eq!(
        post_event(&url, "e1", "com.example.order", &[], "{}").await,
        202
    );
    assert_eq!(
        post_event(&s.channel_url("default", "nope"), "x", "t", &[], "{}").await,
        404
    );
    let bad = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-type", "t")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "missing id and source");
    let options = client()
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 200);
    // No subscriptions: accepted, dropped.
    assert_eq!(
        post_event(&s.channel_url("default", "empty"), "e0", "t", &[], "{}").await,
        202
    );

    // Each subscription gets its own delivery, with its namespace.
    let got = plain.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-id"), Some("e1"));
    assert_eq!(got[0].header("kn-namespace"), Some("default"));
    assert_eq!(replier.wait_for(1, T).await[0].header("ce-id"), Some("e1"));
    // The reply went to the broker (and through its trigger), not back to the channel.
    let via_broker = after_broker.wait_for(1, T).await;
    assert_eq!(via_broker[0].header("ce-id"), Some("reply-e1"));
    assert_eq!(via_broker[0].header("ce-type"), Some("com.example.reply"));
    eventually(T, "the reply counted", || async {
        (s.metric(
            "sluice_replies_total{namespace=\"default\",broker=\"orders\",trigger=\"with-reply\"}",
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(plain.count(), 1, "the reply never re-entered the channel");
    assert_eq!(replier.count(), 1);
}

#[tokio::test]
async fn a_reply_that_cannot_be_sent_dead_letters_the_original_naming_the_reply_url() {
    let replier = Sink::start(|r, _| reply_to(r, "reply-", "com.example.reply")).await;
    let broken_reply = Sink::start(|_, _| StatusCode::SERVICE_UNAVAILABLE.into_response()).await;
    let dls = Sink::ok().await;
    let yaml = format!(
        r#"apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata: {{name: ch}}
spec:
  delivery:
    retry: 1
    backoffDelay: PT0.01S
    deadLetterSink: {{uri: "{dls}"}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: s}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: ch}}
  subscriber: {{uri: "{replier}"}}
  reply: {{uri: "{reply}"}}
"#,
        dls = dls.url(),
        replier = replier.url(),
        reply = broken_reply.url(),
    );
    let s = Sluice::start("reply-fails", &yaml).await;
    s.all_ready().await;
    assert_eq!(
        post_event(
            &s.channel_url("default", "ch"),
            "orig",
            "t",
            &[],
            "{\"a\":1}"
        )
        .await,
        202
    );
    let dead = dls.wait_for(1, T).await;
    // The channel's delivery (retry 1) applied to the reply: two attempts.
    assert_eq!(broken_reply.count(), 2);
    assert_eq!(dead[0].header("ce-id"), Some("orig"), "the original event");
    assert_eq!(
        dead[0].header("ce-knativeerrordest"),
        Some(broken_reply.url().as_str())
    );
    assert_eq!(dead[0].header("ce-knativeerrorcode"), Some("503"));
    assert_eq!(dead[0].body.as_ref(), b"{\"a\":1}");
}

#[tokio::test]
async fn sequence_of_three_steps_whose_middle_step_fails_dead_letters() {
    let step1 = Sink::start(|r, _| reply_to(r, "s1-", "com.example.step1")).await;
    // Step 2 refuses events whose id says so, and answers the others.
    let step2 = Sink::start(|r, _| {
        if r.header("ce-id").is_some_and(|id| id.contains("bad")) {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        } else {
            reply_to(r, "s2-", "com.example.step2")
        }
    })
    .await;
    let step3 = Sink::start(|r, _| reply_to(r, "s3-", "com.example.step3")).await;
    let end = Sink::ok().await;
    let dls = Sink::ok().await;
    let yaml = format!(
        r#"apiVersion: flows.knative.dev/v1
kind: Sequence
metadata: {{name: seq}}
spec:
  channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}
  steps:
    - uri: "{s1}"
    - uri: "{s2}"
      delivery:
        retry: 2
        backoffDelay: PT0.01S
        deadLetterSink: {{uri: "{dls}"}}
    - uri: "{s3}"
  reply: {{uri: "{end}"}}
"#,
        s1 = step1.url(),
        s2 = step2.url(),
        s3 = step3.url(),
        end = end.url(),
        dls = dls.url(),
    );
    let s = Sluice::start("sequence", &yaml).await;
    let t = s.all_ready().await;
    let seq = find(&t, "flows", "seq");
    assert_eq!(seq["kind"], "Sequence");
    // The Sequence's address is its first channel's (SEMANTICS.md §10).
    let address = s.channel_url("default", "seq-kn-sequence-0");
    assert_eq!(seq["url"], address);
    for i in 0..3 {
        let name = format!("seq-kn-sequence-{i}");
        assert_eq!(find(&t, "channels", &name)["kind"], "InMemoryChannel");
        assert_eq!(find(&t, "subscriptions", &name)["channel"], name);
    }
    assert_eq!(
        find(&t, "subscriptions", "seq-kn-sequence-0")["reply"],
        s.channel_url("default", "seq-kn-sequence-1")
    );
    let shown = s.get().await;
    assert!(
        shown.contains("seq ") && shown.contains("Sequence"),
        "{shown}"
    );
    // Knative's status arrays: one channel and one subscription per step, in order.
    let parts = |list: &str| -> Vec<String> {
        seq[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {} {}",
                    p["kind"].as_str().unwrap(),
                    p["name"].as_str().unwrap(),
                    p["ready"].as_str().unwrap()
                )
            })
            .collect()
    };
    let want = |kind: &str| -> Vec<String> {
        (0..3)
            .map(|i| format!("{kind} seq-kn-sequence-{i} True"))
            .collect()
    };
    assert_eq!(parts("channelStatuses"), want("InMemoryChannel"));
    assert_eq!(parts("subscriptionStatuses"), want("Subscription"));

    assert_eq!(post_event(&address, "good", "t", &[], "{}").await, 202);
    assert_eq!(post_event(&address, "bad", "t", &[], "{}").await, 202);

    // The good event went through every step, each reply feeding the next.
    let out = end.wait_for(1, T).await;
    assert_eq!(out[0].header("ce-id"), Some("s3-s2-s1-good"));
    assert_eq!(out[0].header("ce-type"), Some("com.example.step3"));
    // The bad one failed at step 2 (1 + 2 retries) and was dead-lettered with step 2's URL.
    let dead = dls.wait_for(1, T).await;
    assert_eq!(dead[0].header("ce-id"), Some("s1-bad"));
    assert_eq!(
        dead[0].header("ce-knativeerrordest"),
        Some(step2.url().as_str())
    );
    assert_eq!(dead[0].header("ce-knativeerrorcode"), Some("500"));
    let bad_attempts = step2
        .received()
        .iter()
        .filter(|r| r.header("ce-id") == Some("s1-bad"))
        .count();
    assert_eq!(bad_attempts, 3);
    assert_eq!(step1.count(), 2);
    assert_eq!(step3.count(), 1, "step 3 only saw the good event");
    assert_eq!(end.count(), 1);
}

#[tokio::test]
async fn parallel_with_two_matching_branches_and_one_that_filters_out() {
    let pass = |ty: &'static str| move |r: &Received, _| reply_to(r, "", ty);
    let filter_a = Sink::start(pass("filtered")).await;
    let filter_b = Sink::start(pass("filtered")).await;
    let filter_none = Sink::ok().await; // empty 2xx: drops the event for this branch
    let branch_a = Sink::start(|r, _| reply_to(r, "a-", "com.example.a")).await;
    let branch_b = Sink::start(|r, _| reply_to(r, "b-", "com.example.b")).await;
    let branch_c = Sink::start(|r, _| reply_to(r, "c-", "com.example.c")).await;
    let no_filter = Sink::ok().await;
    let end = Sink::ok().await;
    let own_reply = Sink::ok().await;
    let yaml = format!(
        r#"apiVersion: flows.knative.dev/v1
kind: Parallel
metadata: {{name: par}}
spec:
  channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}
  branches:
    - filter: {{uri: "{fa}"}}
      subscriber: {{uri: "{ba}"}}
    - filter: {{uri: "{fb}"}}
      subscriber: {{uri: "{bb}"}}
      reply: {{uri: "{own}"}}
    - filter: {{uri: "{fn}"}}
      subscriber: {{uri: "{bc}"}}
    - subscriber: {{uri: "{nf}"}}
  reply: {{uri: "{end}"}}
"#,
        fa = filter_a.url(),
        fb = filter_b.url(),
        fn = filter_none.url(),
        ba = branch_a.url(),
        bb = branch_b.url(),
        bc = branch_c.url(),
        nf = no_filter.url(),
        end = end.url(),
        own = own_reply.url(),
    );
    let s = Sluice::start("parallel", &yaml).await;
    let t = s.all_ready().await;
    let address = s.channel_url("default", "par-kn-parallel");
    assert_eq!(find(&t, "flows", "par")["url"], address);
    assert_eq!(
        find(&t, "subscriptions", "par-kn-parallel-filter-0")["channel"],
        "par-kn-parallel"
    );
    assert_eq!(
        find(&t, "subscriptions", "par-kn-parallel-0")["channel"],
        "par-kn-parallel-0"
    );

    assert_eq!(post_event(&address, "p1", "t", &[], "{}").await, 202);
    // Branch a's reply goes to the Parallel's reply; branch b's to its own.
    let out = end.wait_for(1, T).await;
    assert_eq!(out[0].header("ce-id"), Some("a-p1"));
    let own = own_reply.wait_for(1, T).await;
    assert_eq!(own[0].header("ce-id"), Some("b-p1"));
    // The branch without a filter gets every event.
    assert_eq!(
        no_filter.wait_for(1, T).await[0].header("ce-id"),
        Some("p1")
    );
    // Every filter saw the event; the one answering an empty 2xx stopped its branch.
    filter_none.wait_for(1, T).await;
    eventually(T, "the filter's delivery settled", || async {
        (s.metric("sluice_events_delivered_total{namespace=\"default\",broker=\"par-kn-parallel\",trigger=\"par-kn-parallel-filter-2\"}").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(branch_c.count(), 0);
    assert_eq!((branch_a.count(), branch_b.count()), (1, 1));
    assert_eq!(end.count(), 1, "only branch a replies to spec.reply");
}

/// Polls until every subscription of the topology is ready (durable channels connect and
/// fix their starting positions in the background).
async fn durable_channel_delivers(s: &Sluice, channel: &str, sink: &Sink) {
    let t = s.all_ready().await;
    assert!(find(&t, "channels", channel)["status"] == "True");
    let url = s.channel_url("default", channel);
    for i in 0..5 {
        assert_eq!(
            post_event(&url, &format!("{channel}-{i}"), "t", &[], "{}").await,
            202
        );
    }
    let got = sink.wait_for(5, T).await;
    let mut ids: Vec<_> = got
        .iter()
        .map(|r| r.header("ce-id").unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "{ids:?}");
}

#[tokio::test]
async fn kafka_channel_and_nats_channel_deliver_through_real_servers() {
    let kafka = sluice_tests::shared_kafka().await;
    let nats = sluice_tests::start_nats().await;
    let kafka_sink = Sink::ok().await;
    let nats_sink = Sink::ok().await;
    let step = Sink::start(|r, _| reply_to(r, "k-", "com.example.step")).await;
    let end = Sink::ok().await;
    let yaml = format!(
        r#"apiVersion: messaging.knative.dev/v1beta1
kind: KafkaChannel
metadata: {{name: kch-{pid}}}
spec: {{numPartitions: 3, replicationFactor: 1}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: ksub}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1beta1, kind: KafkaChannel, name: kch-{pid}}}
  subscriber: {{uri: "{ks}"}}
---
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {{name: nch}}
spec:
  channelTemplate: {{apiVersion: messaging.knative.dev/v1alpha1, kind: NatsJetStreamChannel}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: nsub}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: nch}}
  subscriber: {{uri: "{ns}"}}
---
apiVersion: flows.knative.dev/v1
kind: Sequence
metadata: {{name: kseq-{pid}}}
spec:
  channelTemplate:
    apiVersion: messaging.knative.dev/v1beta1
    kind: KafkaChannel
    spec: {{numPartitions: 2}}
  steps:
    - uri: "{step}"
    - uri: "{step}"
  reply: {{uri: "{end}"}}
"#,
        pid = std::process::id(),
        ks = kafka_sink.url(),
        ns = nats_sink.url(),
        step = step.url(),
        end = end.url(),
    );
    let dir = test_dir("durable-channels");
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let servers = kafka.bootstrap_servers();
    let nats_url = nats.url();
    let s = Sluice::start_in(
        dir,
        &[
            "--kafka-bootstrap-servers",
            &servers,
            "--nats-url",
            &nats_url,
        ],
    )
    .await;
    let t = s.all_ready().await;
    assert_eq!(
        find(&t, "channels", &format!("kch-{}", std::process::id()))["class"],
        "Kafka"
    );
    assert_eq!(find(&t, "channels", "nch")["class"], "NatsJetStream");
    durable_channel_delivers(&s, &format!("kch-{}", std::process::id()), &kafka_sink).await;
    durable_channel_delivers(&s, "nch", &nats_sink).await;

    // A Sequence whose channels are Kafka topics: step 0's reply is stored in step 1's topic.
    let pid = std::process::id();
    assert_eq!(
        find(&t, "channels", &format!("kseq-{pid}-kn-sequence-0"))["class"],
        "Kafka"
    );
    let url = s.channel_url("default", &format!("kseq-{pid}-kn-sequence-0"));
    assert_eq!(post_event(&url, "q1", "t", &[], "{}").await, 202);
    let got = end.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-id"), Some("k-k-q1"));
}

/// `sluice display --reply` on a free port, killed on drop.
async fn replying_display() -> (tokio::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(binary())
        .args(["display", "--listen", &addr, "--reply"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(T, "sluice display listening", || async {
        tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
    })
    .await;
    (child, addr)
}

fn example(name: &str, ports: &[(&str, &str)]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in ports {
        text = text.replace(from, to);
    }
    text
}

#[tokio::test]
async fn the_sequence_and_parallel_examples_run_as_documented() {
    let (_steps, steps_addr) = replying_display().await;
    let end = Sink::ok().await;
    let dropper = Sink::ok().await;
    let end_addr = end.addr.to_string();
    let drop_addr = dropper.addr.to_string();
    let ports = [
        ("127.0.0.1:8081", end_addr.as_str()),
        ("127.0.0.1:8082", steps_addr.as_str()),
        ("127.0.0.1:8083", drop_addr.as_str()),
    ];
    let yaml = format!(
        "{}\n---\n{}",
        example("sequence.yaml", &ports),
        example("parallel.yaml", &ports)
    );
    let s = Sluice::start("examples", &yaml).await;
    s.all_ready().await;

    // Sequence, through the Broker and Trigger: three steps, then the reply.
    assert_eq!(
        post_event(
            &s.broker_url("default", "default"),
            "o1",
            "com.example.order",
            &[],
            "{}"
        )
        .await,
        202
    );
    let got = end.wait_for(1, T).await;
    assert_eq!(got[0].path, "/");
    assert_eq!(got[0].header("ce-source"), Some("/step-3"));
    assert_eq!(got[0].header("ce-id"), Some("o1"));

    // Parallel: replies of branches a and d to `/`, branch b's to `/branch-b`, none of c.
    let url = s.channel_url("default", "parallel-kn-parallel");
    assert_eq!(
        post_event(&url, "p1", "com.example.order", &[], "{}").await,
        202
    );
    let got = end.wait_for(4, T).await;
    let mut sources: Vec<(String, String)> = got[1..]
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.header("ce-source").unwrap_or("").to_string(),
            )
        })
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        [
            ("/".to_string(), "/subscriber-a".to_string()),
            ("/".to_string(), "/subscriber-d".to_string()),
            ("/branch-b".to_string(), "/subscriber-b".to_string()),
        ]
    );
    assert_eq!(dropper.wait_for(1, T).await[0].path, "/filter-c");
}

#[tokio::test]
async fn knative_documentation_examples_run_unchanged() {
    let dir = test_dir("knative-docs");
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/tests/fixtures/knative");
    for f in std::fs::read_dir(&fixtures).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        // The KafkaChannel needs a Kafka cluster (covered above); the rest runs as is.
        if name.ends_with(".yaml") && name != "kafka-channel.yaml" {
            std::fs::copy(&p, dir.join(&name)).unwrap();
        }
    }
    let s = Sluice::start_in(dir, &[]).await;
    let t = s.all_ready().await;
    assert_eq!(find(&t, "channels", "example-channel")["kind"], "Channel");
    assert_eq!(
        find(&t, "subscriptions", "my-subscription")["channel"],
        "example-channel"
    );
    assert_eq!(
        find(&t, "flows", "sequence")["url"],
        s.channel_url("default", "sequence-kn-sequence-0")
    );
    assert_eq!(
        find(&t, "flows", "odd-even-parallel")["url"],
        s.channel_url("default", "odd-even-parallel-kn-parallel")
    );
    let shown = s.get().await;
    for name in [
        "odd-even-parallel",
        "me-odd-even-parallel",
        "sequence-kn-sequence-2",
    ] {
        assert!(shown.contains(name), "{shown}");
    }
    // Events sent to the documented addresses are taken.
    assert_eq!(
        post_event(
            &s.channel_url("default", "example-channel"),
            "d1",
            "t",
            &[],
            "{}"
        )
        .await,
        202
    );
}

#[tokio::test]
async fn an_invalid_edit_of_a_sequence_keeps_the_previous_one_running() {
    let step = Sink::start(|r, _| reply_to(r, "s-", "com.example.step")).await;
    let end = Sink::ok().await;
    let seq = |steps: &str| {
        format!(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {{name: seq}}\nspec:\n  steps: {steps}\n  reply: {{uri: \"{}\"}}\n",
            end.url()
        )
    };
    let s = Sluice::start(
        "sequence-reload",
        &seq(&format!("[{{uri: \"{}\"}}]", step.url())),
    )
    .await;
    s.all_ready().await;
    s.write("resources.yaml", &seq("[]"));
    let flow = eventually(T, "the Sequence reported invalid", || async {
        let t = s.topology().await;
        let f = find(&t, "flows", "seq").clone();
        (f["reason"] == "InvalidSpec").then_some(f)
    })
    .await;
    let message = flow["message"].as_str().unwrap();
    assert!(message.contains("spec.steps"), "{message}");
    assert!(
        message.contains("previous version keeps running"),
        "{message}"
    );
    // Its channels and subscriptions still run.
    let address = s.channel_url("default", "seq-kn-sequence-0");
    assert_eq!(post_event(&address, "e1", "t", &[], "{}").await, 202);
    assert_eq!(end.wait_for(1, T).await[0].header("ce-id"), Some("s-e1"));
}

#[tokio::test]
async fn a_subscription_into_its_own_channel_ends_at_the_loop_guard() {
    // The subscriber is the channel itself: delivered in-process, each hop takes one off
    // the TTL, so the loop ends (over HTTP the TTL would start again at every hop).
    let yaml = r#"apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata: {name: loop}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {name: again}
spec:
  channel: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: loop}
  subscriber:
    ref: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: loop}
"#;
    let s = Sluice::start("loop-guard", yaml).await;
    let t = s.all_ready().await;
    assert_eq!(
        find(&t, "subscriptions", "again")["subscriber"],
        s.channel_url("default", "loop")
    );
    assert_eq!(
        post_event(&s.channel_url("default", "loop"), "l1", "t", &[], "{}").await,
        202
    );
    eventually(T, "the loop guard dropped the event", || async {
        (s.metric("sluice_events_dropped_total{namespace=\"default\",broker=\"loop\",trigger=\"again\",reason=\"reply_ttl_exhausted\"}").await >= 1.0).then_some(())
    })
    .await;
    // Stored once by the producer (TTL 255) and once per hop down to TTL 0; the hop after
    // that is refused.
    assert_eq!(
        s.metric("sluice_events_accepted_total{namespace=\"default\",broker=\"channels/loop\"}")
            .await,
        256.0
    );
}

#[tokio::test]
async fn event_transforms_reshape_events_as_replies_and_towards_a_sink() {
    let priced = Sink::ok().await;
    // The sink answers with an event of its own, which `reply.jsonata` reshapes.
    let sink = Sink::start(|r, _| reply_to(r, "ack-", "com.example.ack")).await;
    let yaml = format!(
        r#"{BROKER}---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventTransform
metadata: {{name: price}}
spec:
  jsonata:
    expression: |
      {{"specversion": "1.0", "id": id, "source": source, "type": type & ".priced",
        "datacontenttype": "application/json",
        "data": {{"amount": data.total * 2}}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: orders}}
spec:
  broker: default
  filter: {{attributes: {{type: com.example.order}}}}
  subscriber:
    ref: {{apiVersion: eventing.knative.dev/v1alpha1, kind: EventTransform, name: price}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: priced}}
spec:
  broker: default
  filter: {{attributes: {{type: com.example.order.priced}}}}
  subscriber: {{uri: "{priced}"}}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventTransform
metadata: {{name: forward}}
spec:
  jsonata: {{expression: '$merge([$, {{"type": "com.example.forwarded"}}])'}}
  sink: {{uri: "{sink}"}}
  reply:
    jsonata: {{expression: '$merge([$, {{"source": "/transformed-ack"}}])'}}
"#,
        priced = priced.url(),
        sink = sink.url(),
    );
    let s = Sluice::start("transforms", &yaml).await;
    let t = s.all_ready().await;
    assert_eq!(
        find(&t, "flows", "price")["url"],
        format!("http://{}/default/eventtransforms/price", s.ingress)
    );

    // No sink: the transformed event is the Trigger's reply, routed by the broker.
    assert_eq!(
        post_event(
            &s.broker_url("default", "default"),
            "o1",
            "com.example.order",
            &[],
            "{\"total\":21}"
        )
        .await,
        202
    );
    let got = priced.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-type"), Some("com.example.order.priced"));
    assert_eq!(got[0].header("ce-id"), Some("o1"));
    let data: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(data, serde_json::json!({"amount": 42}));

    // With a sink: sent there, the sink's answer transformed and returned.
    let url = format!("http://{}/default/eventtransforms/forward", s.ingress);
    let resp = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "f1")
        .header("ce-source", "/test")
        .header("ce-type", "t")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ce-id"], "ack-f1");
    assert_eq!(resp.headers()["ce-source"], "/transformed-ack");
    let at_sink = sink.wait_for(1, T).await;
    assert_eq!(at_sink[0].header("ce-type"), Some("com.example.forwarded"));

    // An event the expression cannot turn into a CloudEvent: 400 with the reason.
    let resp = client()
        .post(format!(
            "http://{}/default/eventtransforms/price",
            s.ingress
        ))
        .header("ce-specversion", "1.0")
        .header("ce-id", "bad")
        .header("ce-source", "/test")
        .header("ce-type", "t")
        .header("content-type", "application/json")
        .body("{\"total\":\"many\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("JSONata"),
        "{body}"
    );
    assert_eq!(
        post_event(
            &format!("http://{}/default/eventtransforms/nope", s.ingress),
            "x",
            "t",
            &[],
            "{}"
        )
        .await,
        404
    );
}

#[tokio::test]
async fn event_types_seen_at_brokers_and_channels_are_listed() {
    let yaml = format!(
        "{BROKER}---\napiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {{name: ch}}\n"
    );
    let s = Sluice::start("eventtypes", &yaml).await;
    s.all_ready().await;
    for id in ["1", "2"] {
        let url = s.broker_url("default", "default");
        assert_eq!(post_event(&url, id, "com.example.a", &[], "{}").await, 202);
    }
    let url = s.channel_url("default", "ch");
    assert_eq!(post_event(&url, "3", "com.example.b", &[], "{}").await, 202);
    let out = tokio::process::Command::new(binary())
        .args(["get", "eventtypes", "--admin", &s.admin.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "default",
                "Broker",
                "default",
                "com.example.a",
                "/test",
                "2"
            ],
            vec!["default", "Channel", "ch", "com.example.b", "/test", "1"],
        ],
        "{text}"
    );
}
