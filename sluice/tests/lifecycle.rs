//! Shutdown, reload and status of the real `sluice run` process (issue 9): SIGTERM under
//! load loses no acknowledged event, a reload that changes channel settings keeps queued
//! events, one bad edit does not block the others and `sluice get` shows why, and
//! Content-Type reaches the subscriber as the producer sent it.

mod common;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn broker(config: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default, namespace: default}}\nspec:\n{config}  delivery:\n    retry: 1000\n    backoffPolicy: linear\n    backoffDelay: PT0.02S\n"
    )
}

fn config_map(capacity: u32) -> String {
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: br, namespace: default}}\ndata:\n  capacity: \"{capacity}\"\n"
    )
}

fn trigger(name: &str, subscriber: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {{sluice.dev/concurrency: \"4\"}}\nspec:\n  broker: default\n  subscriber:\n    uri: {subscriber}\n{extra}"
    )
}

fn ids_of(sink: &Sink) -> HashSet<String> {
    sink.received()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_string))
        .collect()
}

/// Issue 9 item 3: SIGTERM exited in ~10 ms with events queued and a delivery in flight.
/// Now: producers get 503 (never a lost 202), what was accepted is delivered, then exit.
#[tokio::test]
async fn sigterm_under_load_loses_no_acknowledged_event() {
    let sink = Sink::start_with_delay(
        |_, _| StatusCode::OK.into_response(),
        Duration::from_millis(5),
    )
    .await;
    let yaml = format!("{}{}", broker(""), trigger("t", &sink.url(), ""));
    let mut s = Sluice::start("sigterm-load", &yaml).await;
    let url = s.broker_url("default", "default");
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Four producers, as fast as they can, until the process is gone.
    let mut producers = Vec::new();
    for p in 0..4 {
        let (url, accepted, stop) = (url.clone(), accepted.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let client = client();
            let mut i = 0;
            let mut refused = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("p{p}-{i}");
                i += 1;
                let r = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/load")
                    .header("ce-type", "t")
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(202) => accepted.lock().unwrap().push(id),
                    Ok(503) => refused += 1,
                    Ok(other) => panic!("unexpected {other}"),
                    Err(_) => break, // the process is gone
                }
            }
            refused
        }));
    }
    // Let a backlog build (the sink takes ~4 × 200 events/s), then SIGTERM.
    eventually(T, "a backlog of accepted events", || async {
        let n = accepted.lock().unwrap().len();
        (n >= 400 && sink.count() + 100 < n).then_some(())
    })
    .await;
    s.terminate();
    let status = s.wait_exit(T).await;
    stop.store(true, Ordering::SeqCst);
    let mut refused = 0;
    for p in producers {
        refused += p.await.unwrap();
    }
    assert!(status.success(), "{status:?}");
    let accepted: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let got = ids_of(&sink);
    let lost: Vec<_> = accepted.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost: {:?}",
        lost.len(),
        accepted.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        refused > 0,
        "producers were told 503 while the broker drained"
    );
}

/// Issue 9 item 4: a reload changing a broker's ConfigMap `capacity` dropped 5 of 6 queued
/// events.
#[tokio::test]
async fn a_reload_that_changes_channel_settings_keeps_queued_events() {
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let sink = Sink::start(move |_, _| {
        if gate.load(Ordering::SeqCst) {
            StatusCode::OK.into_response()
        } else {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    })
    .await;
    let cfg = "  config: {apiVersion: v1, kind: ConfigMap, name: br}\n";
    let yaml = |cap| {
        format!(
            "{}{}{}",
            broker(cfg),
            config_map(cap),
            trigger("t", &sink.url(), "")
        )
    };
    let s = Sluice::start("reload-capacity", &yaml(10)).await;
    let url = s.broker_url("default", "default");
    for i in 0..6 {
        assert_eq!(
            post_event(&url, &format!("q{i}"), "t", &[], "{}").await,
            202
        );
    }
    s.write("resources.yaml", &yaml(20));
    // The broker's second generation (the new ConfigMap) is running.
    eventually(T, "the new settings applied", || async {
        let out = s.get().await;
        out.lines()
            .any(|l| {
                l.split_whitespace().collect::<Vec<_>>()
                    == [
                        "default",
                        "default",
                        "MTChannelBasedBroker",
                        "True",
                        "2",
                        &url,
                    ]
            })
            .then_some(())
    })
    .await;
    for i in 6..20 {
        assert_eq!(
            post_event(&url, &format!("q{i}"), "t", &[], "{}").await,
            202,
            "event q{i}"
        );
    }
    open.store(true, Ordering::SeqCst);
    let want: HashSet<String> = (0..20).map(|i| format!("q{i}")).collect();
    eventually(T, "all 20 events", || async {
        (ids_of(&sink) == want).then_some(())
    })
    .await;
}

/// One invalid edit is reported on its object; the other edits are applied; `sluice get`
/// shows a status per object.
#[tokio::test]
async fn a_bad_edit_is_reported_per_object_and_does_not_block_the_others() {
    let a = Sink::ok().await;
    let b = Sink::ok().await;
    let good = |b_url: &str| {
        format!(
            "{}{}{}",
            broker(""),
            trigger("a", &a.url(), ""),
            trigger("b", b_url, "")
        )
    };
    let s = Sluice::start("bad-edit", &good(&a.url())).await;
    let out = s.get().await;
    assert!(out.contains("READY") && out.contains("GEN"), "{out}");
    // Trigger a: an invalid filter; trigger b: a new subscriber. b's edit must apply.
    let bad_a = trigger("a", &a.url(), "  filters: [{cesql: \"type =\"}]\n");
    s.write(
        "resources.yaml",
        &format!("{}{}{}", broker(""), bad_a, trigger("b", &b.url(), "")),
    );
    let out = eventually(T, "trigger a reported invalid", || async {
        let out = s.get().await;
        out.contains("InvalidSpec").then_some(out)
    })
    .await;
    let line_a = out.lines().find(|l| l.contains(" a ")).unwrap();
    assert!(
        line_a.contains("False")
            && line_a.contains("cesql")
            && line_a.contains("previous version keeps running"),
        "{out}"
    );
    let line_b = out.lines().find(|l| l.contains(" b ")).unwrap();
    assert!(
        line_b.contains("True") && line_b.contains(&b.url()),
        "{out}"
    );
    // The previous version of a still delivers; b delivers to its new subscriber.
    let url = s.broker_url("default", "default");
    assert_eq!(post_event(&url, "x", "t", &[], "{}").await, 202);
    a.wait_for(1, T).await;
    b.wait_for(1, T).await;
}

/// Issue 9 item 1: Content-Type reached subscribers percent-encoded.
#[tokio::test]
async fn content_type_reaches_the_subscriber_verbatim() {
    let sink = Sink::ok().await;
    let s = Sluice::start(
        "content-type",
        &format!("{}{}", broker(""), trigger("t", &sink.url(), "")),
    )
    .await;
    let url = s.broker_url("default", "default");
    let ct = "multipart/form-data; boundary=\"a b\"";
    let status = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .header("content-type", ct)
        .body("--a b--")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("content-type"), Some(ct));
}
