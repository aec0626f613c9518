//! Embedded mode end to end: the real binary, real HTTP sinks, real sockets.

mod common;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn broker(extra_spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default, namespace: default}}\nspec:\n  delivery:\n    retry: 2\n    backoffDelay: PT0.01S\n{extra_spec}"
    )
}

fn trigger(name: &str, filter_type: Option<&str>, subscriber: &str, extra: &str) -> String {
    let filter = filter_type
        .map(|t| format!("  filter:\n    attributes:\n      type: {t}\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  broker: default\n{filter}  subscriber:\n    uri: {subscriber}\n{extra}"
    )
}

#[tokio::test]
async fn event_flows_with_attributes_headers_and_filtering() {
    let sink = Sink::ok().await;
    let other = Sink::ok().await;
    let yaml = format!(
        "{}{}{}",
        broker(""),
        trigger("a", Some("com.example.a"), &sink.url(), ""),
        trigger("b", Some("com.example.b"), &other.url(), "")
    );
    let s = Sluice::start("flow", &yaml).await;
    let status = post_event(
        &s.broker_url("default", "default"),
        "e1",
        "com.example.a",
        &[
            ("ce-time", "2024-01-01T00:00:00+05:30"),
            ("ce-knativebrokerttl", "10"),
            ("x-request-id", "rq-1"),
        ],
        "{\"n\":1}",
    )
    .await;
    assert_eq!(status, 202);
    let got = sink.wait_for(1, T).await;
    let r = &got[0];
    assert_eq!(r.header("ce-id"), Some("e1"));
    assert_eq!(r.header("ce-time"), Some("2024-01-01T00:00:00+05:30"));
    assert!(r.header("ce-knativearrivaltime").is_some());
    assert_eq!(r.header("ce-knativebrokerttl"), None, "the TTL is stripped");
    assert_eq!(r.header("prefer"), Some("reply"));
    assert_eq!(r.header("kn-namespace"), Some("default"));
    assert_eq!(r.header("x-request-id"), Some("rq-1"));
    assert_eq!(r.body.as_ref(), b"{\"n\":1}");
    // The other trigger's filter did not match.
    eventually(T, "filtered_out metric", || async {
        (s.metric("sluice_events_filtered_out_total{namespace=\"default\",broker=\"default\",trigger=\"b\"}").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(other.count(), 0);
}

#[tokio::test]
async fn a_reply_is_routed_to_a_second_trigger() {
    let replier = Sink::start(|_, n| reply(&format!("r{n}"), "com.example.reply")).await;
    let final_sink = Sink::ok().await;
    let yaml = format!(
        "{}{}{}",
        broker(""),
        trigger("first", Some("com.example.request"), &replier.url(), ""),
        trigger("second", Some("com.example.reply"), &final_sink.url(), "")
    );
    let s = Sluice::start("reply", &yaml).await;
    assert_eq!(
        post_event(
            &s.broker_url("default", "default"),
            "q1",
            "com.example.request",
            &[],
            "{}"
        )
        .await,
        202
    );
    let got = final_sink.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-type"), Some("com.example.reply"));
    assert_eq!(got[0].header("ce-source"), Some("/replier"));
    assert_eq!(got[0].body.as_ref(), b"{\"reply\":true}");
    assert_eq!(replier.count(), 1);
}

#[tokio::test]
async fn a_reply_loop_is_stopped_by_the_ttl() {
    // A subscriber that answers every event with an event it subscribes to itself.
    let looper = Sink::start(|_, n| reply(&format!("l{n}"), "com.example.loop")).await;
    let yaml = format!(
        "{}{}",
        broker(""),
        trigger("loop", Some("com.example.loop"), &looper.url(), "")
    );
    let s = Sluice::start("loop", &yaml).await;
    assert_eq!(
        post_event(
            &s.broker_url("default", "default"),
            "x",
            "com.example.loop",
            &[("ce-knativebrokerttl", "3")],
            "{}"
        )
        .await,
        202
    );
    // Stored TTL 2 → reply stored with 1 → reply stored with 0 → its reply is dropped.
    eventually(T, "the reply to be dropped", || async {
        (s.metric("sluice_events_dropped_total{namespace=\"default\",broker=\"default\",trigger=\"loop\",reason=\"reply_ttl_exhausted\"}").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(looper.count(), 3);
    assert_eq!(
        s.metric("sluice_replies_total{namespace=\"default\",broker=\"default\",trigger=\"loop\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn failing_sink_is_retried_then_dead_lettered() {
    let failing = Sink::start(|_, _| {
        (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response()
    })
    .await;
    let dls = Sink::ok().await;
    let yaml = format!(
        "{}{}",
        broker(&format!(
            "    deadLetterSink:\n      uri: {}dead\n",
            dls.url()
        )),
        trigger("t", None, &failing.url(), "")
    );
    let s = Sluice::start("dls", &yaml).await;
    assert_eq!(
        post_event(
            &s.broker_url("default", "default"),
            "d1",
            "x.y",
            &[],
            "{\"a\":1}"
        )
        .await,
        202
    );
    let dead = dls.wait_for(1, T).await;
    assert_eq!(failing.count(), 3, "retry 2 = 3 attempts");
    let d = &dead[0];
    assert_eq!(d.path, "/dead");
    assert_eq!(d.header("ce-id"), Some("d1"));
    assert_eq!(
        d.header("ce-knativeerrordest"),
        Some(failing.url().as_str())
    );
    assert_eq!(d.header("ce-knativeerrorcode"), Some("503"));
    // base64("down for maintenance")
    assert_eq!(
        d.header("ce-knativeerrordata"),
        Some("ZG93biBmb3IgbWFpbnRlbmFuY2U=")
    );
    assert_eq!(d.body.as_ref(), b"{\"a\":1}");
    eventually(T, "dead-letter metric", || async {
        (s.metric("sluice_events_dead_lettered_total{namespace=\"default\",broker=\"default\",trigger=\"t\"}").await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_slow_sink_delays_neither_the_producer_nor_another_trigger() {
    let slow = Sink::start_with_delay(
        |_, _| StatusCode::OK.into_response(),
        Duration::from_secs(30),
    )
    .await;
    let fast = Sink::ok().await;
    let yaml = format!(
        "{}{}{}",
        broker(""),
        trigger(
            "slow",
            None,
            &slow.url(),
            "  delivery:\n    timeout: PT60S\n"
        ),
        trigger("fast", None, &fast.url(), "")
    );
    let s = Sluice::start("slow", &yaml).await;
    let url = s.broker_url("default", "default");
    let started = tokio::time::Instant::now();
    for i in 0..200 {
        assert_eq!(
            post_event(&url, &format!("e{i}"), "t", &[], "{}").await,
            202
        );
    }
    let produce = started.elapsed();
    fast.wait_for(200, T).await;
    let all_fast = started.elapsed();
    // The slow subscriber holds its deliveries for 30 s; everything else finished long before.
    assert!(
        produce < Duration::from_secs(10),
        "producing took {produce:?}"
    );
    assert!(
        all_fast < Duration::from_secs(15),
        "fast trigger took {all_fast:?}"
    );
    assert!(slow.count() >= 1, "the slow sink got its first events");
}

#[tokio::test]
async fn hot_reload_applies_valid_edits_and_keeps_running_on_invalid_ones() {
    let first = Sink::ok().await;
    let second = Sink::ok().await;
    let yaml = format!("{}{}", broker(""), trigger("t", None, &first.url(), ""));
    let s = Sluice::start("reload", &yaml).await;
    let url = s.broker_url("default", "default");
    assert_eq!(post_event(&url, "1", "t", &[], "{}").await, 202);
    first.wait_for(1, T).await;

    // Point the trigger at another sink and add a second trigger.
    s.write(
        "resources.yaml",
        &format!(
            "{}{}{}",
            broker(""),
            trigger("t", None, &second.url(), ""),
            trigger("t2", Some("only.this"), &first.url(), "")
        ),
    );
    eventually(T, "the reload to route to the second sink", || {
        let url = url.clone();
        let second = &second;
        async move {
            post_event(&url, "probe", "probe", &[], "{}").await;
            (second.count() > 0).then_some(())
        }
    })
    .await;

    // An invalid edit is refused; the running topology stays.
    s.write("resources.yaml", "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec: {broker: default}\n");
    // Give the watcher a moment by checking the topology stays the same across several probes.
    let before = second.count();
    for i in 0..5 {
        assert_eq!(
            post_event(&url, &format!("after-bad-{i}"), "x", &[], "{}").await,
            202
        );
    }
    second.wait_for(before + 5, T).await;
    let topo: serde_json::Value = client()
        .get(format!("http://{}/topology", s.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topo["triggers"].as_array().unwrap().len(), 2, "{topo}");
}

#[tokio::test]
async fn hot_reload_keeps_queued_events() {
    // The sink refuses everything until told otherwise; events queue in the trigger.
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = open.clone();
    let sink = Sink::start(move |_, _| {
        if gate.load(std::sync::atomic::Ordering::SeqCst) {
            StatusCode::OK.into_response()
        } else {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    })
    .await;
    let extra =
        "  delivery:\n    retry: 1000\n    backoffPolicy: linear\n    backoffDelay: PT0.05S\n";
    let yaml = format!("{}{}", broker(""), trigger("t", None, &sink.url(), extra));
    let s = Sluice::start("reload-keep", &yaml).await;
    let url = s.broker_url("default", "default");
    for i in 0..20 {
        assert_eq!(
            post_event(&url, &format!("k{i}"), "t", &[], "{}").await,
            202
        );
    }
    sink.wait_for(20, T).await;
    // Change the trigger (new timeout) while its events are still being retried.
    s.write(
        "resources.yaml",
        &format!(
            "{}{}",
            broker(""),
            trigger(
                "t",
                None,
                &sink.url(),
                &format!("{extra}    timeout: PT5S\n")
            )
        ),
    );
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = eventually(T, "all 20 events to be accepted", || async {
        let ok: std::collections::HashSet<String> = sink
            .received()
            .iter()
            .filter_map(|r| r.header("ce-id").map(str::to_string))
            .collect();
        (ok.len() == 20
            && s.metric("sluice_events_delivered_total{namespace=\"default\",broker=\"default\",trigger=\"t\"}").await >= 20.0)
            .then_some(ok)
    })
    .await;
    assert_eq!(got.len(), 20);
}

#[tokio::test]
async fn invalid_resources_stop_start_up_with_a_precise_message() {
    let dir = test_dir("invalid");
    std::fs::write(
        dir.join("bad.yaml"),
        format!(
            "{}{}",
            broker(""),
            trigger(
                "t",
                None,
                "http://x/",
                "  delivery:\n    backoffDelay: soon\n"
            )
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(binary())
        .args(["run", "-f"])
        .arg(dir.join("bad.yaml"))
        .args([
            "--ingress",
            &format!("127.0.0.1:{}", free_port()),
            "--admin",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml (document 2): Trigger default/t: field `spec.delivery.backoffDelay`: \"soon\" is not an ISO 8601 duration"), "{err}");

    let out = tokio::process::Command::new(binary())
        .args(["run", "-f", "/nonexistent/file.yaml"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.yaml: cannot read"));
}

#[tokio::test]
async fn send_and_display_tools_work_together() {
    let port = free_port();
    let mut display = tokio::process::Command::new(binary())
        .args(["display", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    eventually(T, "display to listen", || async {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .await;
    let out = tokio::process::Command::new(binary())
        .args([
            "send",
            &url,
            "--type",
            "com.example.t",
            "--source",
            "/cli",
            "--id",
            "cli-1",
            "--data",
            "{\"k\":\"v\"}",
            "--ext",
            "color=blue",
            "--structured",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("200"));
    display.start_kill().unwrap();
    let output = display.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("id: cli-1") && text.contains("color: blue") && text.contains("\"k\": \"v\""),
        "{text}"
    );
}
