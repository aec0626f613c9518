//! Autoscaled Services end to end (SEMANTICS.md §7, §13): the real binary runs a
//! `serving.knative.dev/v1` Service whose replicas are small Python HTTP servers, scaled from
//! zero by events through a Broker and a Trigger, and back to zero.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A replica: answers 202 to POST after `delay` seconds (argv[2]) and appends
/// `<ce-id> <pid> <requests it was serving, this one included>` to the file argv[1]; GET
/// answers 200 (readiness). SIGTERM stops it at
/// once (Python's default), so a request still in flight at SIGTERM would fail.
const REPLICA: &str = r#"
import http.server, os, sys, threading, time
LOG, DELAY = sys.argv[1], float(sys.argv[2])
lock, busy = threading.Lock(), [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            busy[0] += 1
            seen = busy[0]
        time.sleep(DELAY)
        with lock:
            busy[0] -= 1
        with open(LOG, "a") as f:
            f.write("%s %d %d\n" % (self.headers.get("ce-id", "-"), os.getpid(), seen))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn service(dir: &std::path::Path, annotations: &str, delay: &str, concurrency: u32) -> String {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        python,
        "the replicas of these tests are python3 scripts: install python3 (scripts/install-test-deps.sh does)"
    );
    let script = dir.join("replica.py");
    std::fs::write(&script, REPLICA).unwrap();
    let log = dir.join("received.log");
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: fn, namespace: default}}
spec:
  template:
    metadata:
      annotations:
{annotations}
    spec:
      containerConcurrency: {concurrency}
      timeoutSeconds: 30
      containers:
        - image: example.com/fn
          command: [python3, {script}]
          args: [{log}, "{delay}"]
          readinessProbe:
            httpGet: {{path: /ready}}
"#,
        script = script.display(),
        log = log.display(),
    )
}

/// Lines `<id> <pid> <concurrent>` the replicas wrote, without the concurrency.
fn received(dir: &std::path::Path) -> Vec<(String, u32)> {
    received_with_concurrency(dir)
        .into_iter()
        .map(|(id, pid, _)| (id, pid))
        .collect()
}

fn received_with_concurrency(dir: &std::path::Path) -> Vec<(String, u32, u32)> {
    std::fs::read_to_string(dir.join("received.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.to_string();
            let pid = f.next()?.parse().ok()?;
            let busy = f.next()?.parse().ok()?;
            Some((id, pid, busy))
        })
        .collect()
}

async fn service_status(s: &Sluice) -> Value {
    let t: Value = client()
        .get(format!("http://{}/topology", s.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["services"][0].clone()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn events_scale_a_service_from_zero_without_loss_then_it_scales_back_to_zero() {
    let dir = test_dir("autoscale-cold");
    let yaml = format!(
        "{}---\n{}",
        service(
            &dir,
            "        autoscaling.knative.dev/initial-scale: \"0\"\n        autoscaling.knative.dev/window: 6s\n        sluice.dev/scale-to-zero-grace-period: 1s",
            "0.05",
            0,
        ),
        // No retries: any event the activator did not hold through the cold start would be
        // dropped (and counted) instead of being retried into success.
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\nspec:\n  delivery:\n    retry: 0\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: to-fn, namespace: default}\nspec:\n  broker: default\n  subscriber:\n    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}\n"
    );
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let mut s = Sluice::start_in(dir.clone(), &[]).await;

    // At zero: no replica runs.
    let st = service_status(&s).await;
    assert_eq!(st["actual"], 0, "{st}");
    assert_eq!(st["readyReplicas"], 0, "{st}");
    assert_eq!(
        st["url"],
        format!("http://{}/default/services/fn", s.ingress),
        "{st}"
    );

    let n = 30;
    for i in 0..n {
        let status = post_event(
            &s.broker_url("default", "default"),
            &format!("e{i}"),
            "com.example.work",
            &[],
            "{}",
        )
        .await;
        assert_eq!(status, 202);
    }
    let got = eventually(T, "every event at the replica", || async {
        let r = received(&dir);
        (r.len() >= n).then_some(r)
    })
    .await;
    let ids: BTreeSet<_> = got.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), n, "each event once: {got:?}");
    let labels = "{namespace=\"default\",broker=\"default\",trigger=\"to-fn\"}";
    assert_eq!(
        s.metric(&format!("sluice_events_delivered_total{labels}"))
            .await,
        n as f64
    );
    assert_eq!(
        s.metric(&format!("sluice_events_dead_lettered_total{labels}"))
            .await,
        0.0
    );
    assert!(!s
        .metrics()
        .await
        .contains("reason=\"no_dead_letter_sink\"} 1"));
    let pids: BTreeSet<u32> = got.iter().map(|(_, p)| *p).collect();
    assert!(pids.iter().all(|p| alive(*p)), "replicas run: {pids:?}");
    let get = s.get().await;
    let line = get
        .lines()
        .find(|l| l.starts_with("default") && l.contains(" fn "))
        .unwrap_or_else(|| panic!("sluice get lists the service:\n{get}"));
    assert!(
        line.contains(&format!("http://{}/default/services/fn", s.ingress)),
        "{line}"
    );
    assert!(line.contains("True"), "{line}");
    eventually(T, "the ready replica in the gauges", || async {
        let ready = s
            .metric("sluice_autoscaler_ready_replicas{namespace=\"default\",service=\"fn\"}")
            .await;
        (ready >= 1.0).then_some(())
    })
    .await;

    // No request for the window (6 s) and the grace period (1 s): back to zero, and the
    // replica process is gone.
    eventually(T, "scale to zero", || async {
        let st = service_status(&s).await;
        (st["actual"] == 0 && st["readyReplicas"] == 0).then_some(())
    })
    .await;
    let svc = "{namespace=\"default\",service=\"fn\"}";
    eventually(T, "gauges at zero", || async {
        let desired = s
            .metric(&format!("sluice_autoscaler_desired_replicas{svc}"))
            .await;
        let actual = s
            .metric(&format!("sluice_autoscaler_actual_replicas{svc}"))
            .await;
        (desired == 0.0 && actual == 0.0).then_some(())
    })
    .await;
    assert!(s
        .metrics()
        .await
        .contains(&format!("sluice_activator_queue_depth{svc} 0")));
    eventually(T, "replica processes stopped", || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;

    // And from zero again.
    assert_eq!(
        post_event(
            &s.broker_url("default", "default"),
            "again",
            "com.example.work",
            &[],
            "{}"
        )
        .await,
        202
    );
    eventually(T, "the event after scaling to zero", || async {
        received(&dir)
            .iter()
            .any(|(id, _)| id == "again")
            .then_some(())
    })
    .await;
    let pid = received(&dir).last().unwrap().1;
    assert!(alive(pid));
    s.terminate();
    assert!(s.wait_exit(T).await.success());
    assert!(!alive(pid), "a replica does not outlive sluice");
}

#[tokio::test]
async fn scale_down_lets_replicas_finish_their_requests() {
    let dir = test_dir("autoscale-down");
    // Three replicas at start (initial-scale, held for the first 6 s window), each request
    // takes 1.5 s; a light load then only needs one replica, so two are removed while
    // requests are in flight at them.
    let yaml = service(
        &dir,
        "        autoscaling.knative.dev/initial-scale: \"3\"\n        autoscaling.knative.dev/window: 6s\n        sluice.dev/scale-to-zero-grace-period: 0s",
        "1.5",
        0,
    );
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let s = Sluice::start_in(dir.clone(), &[]).await;
    eventually(T, "three ready replicas", || async {
        (service_status(&s).await["readyReplicas"] == 3).then_some(())
    })
    .await;
    let url = format!("http://{}/default/services/fn", s.ingress);
    // Three requests at a time (spread over the replicas) until the scale-down happened and
    // a few more rounds after it.
    let mut statuses = Vec::new();
    let mut round = 0;
    let mut scaled_down_at = None;
    while scaled_down_at.is_none_or(|r| round < r + 2) {
        let batch: Vec<_> = (0..3)
            .map(|i| {
                let url = url.clone();
                let id = format!("r{round}-{i}");
                tokio::spawn(async move { post_event(&url, &id, "t", &[], "{}").await })
            })
            .collect();
        for b in batch {
            statuses.push(b.await.unwrap());
        }
        round += 1;
        if scaled_down_at.is_none() && service_status(&s).await["actual"].as_u64() < Some(3) {
            scaled_down_at = Some(round);
        }
        assert!(round < 40, "no scale-down within 40 rounds");
    }
    assert!(
        statuses.iter().all(|&c| c == 202),
        "every request in flight during the scale-down succeeded: {statuses:?}"
    );
    let got = received(&dir);
    assert_eq!(got.len(), statuses.len());
    let pids: BTreeSet<u32> = got.iter().map(|(_, p)| *p).collect();
    assert!(
        pids.len() >= 2,
        "requests were spread over the replicas: {pids:?}"
    );
    eventually(T, "removed replicas stopped", || async {
        (pids.iter().filter(|p| alive(**p)).count() < pids.len()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn delivery_never_sends_more_than_container_concurrency_per_ready_replica() {
    let dir = test_dir("autoscale-limit");
    // One replica at most, one request at a time; the trigger would send up to 100 at once.
    let yaml = format!(
        "{}---\n{}",
        service(
            &dir,
            "        autoscaling.knative.dev/initial-scale: \"0\"\n        autoscaling.knative.dev/max-scale: \"1\"\n        autoscaling.knative.dev/window: 6s",
            "0.1",
            1,
        ),
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\nspec:\n  delivery:\n    retry: 0\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: to-fn, namespace: default}\nspec:\n  broker: default\n  subscriber:\n    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}\n"
    );
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let s = Sluice::start_in(dir.clone(), &[]).await;
    let n = 20;
    for i in 0..n {
        let url = s.broker_url("default", "default");
        assert_eq!(
            post_event(&url, &format!("e{i}"), "t", &[], "{}").await,
            202
        );
    }
    // Requests wait in the activator meanwhile.
    eventually(T, "requests queued in the activator", || async {
        (service_status(&s).await["queued"].as_u64() > Some(0)).then_some(())
    })
    .await;
    let got = eventually(T, "every event at the replica", || async {
        let r = received_with_concurrency(&dir);
        (r.len() >= n).then_some(r)
    })
    .await;
    let ids: BTreeSet<_> = got.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids.len(), n, "each event once, none lost: {got:?}");
    let most = got.iter().map(|(_, _, busy)| *busy).max().unwrap();
    assert_eq!(
        most, 1,
        "the replica never had more than containerConcurrency requests"
    );
    let labels = "{namespace=\"default\",broker=\"default\",trigger=\"to-fn\"}";
    assert_eq!(
        s.metric(&format!("sluice_events_delivered_total{labels}"))
            .await,
        n as f64
    );
}

#[tokio::test]
async fn a_backlog_in_the_trigger_channel_scales_the_service() {
    let dir = test_dir("autoscale-backlog");
    // containerConcurrency 1 at 100 % utilisation: one request in flight asks for exactly one
    // replica. The trigger delivers one event at a time (`sluice.dev/concurrency: 1`), so the
    // activator never sees more than one request: only the events waiting in the trigger's
    // channel can ask for more replicas. (Without backlog as demand it stays at one.)
    let yaml = format!(
        "{}---\n{}",
        service(
            &dir,
            "        autoscaling.knative.dev/initial-scale: \"0\"\n        autoscaling.knative.dev/max-scale: \"4\"\n        autoscaling.knative.dev/target-utilization-percentage: \"100\"\n        autoscaling.knative.dev/window: 6s",
            "0.2",
            1,
        ),
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\nspec:\n  delivery:\n    retry: 0\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-fn\n  namespace: default\n  annotations: {sluice.dev/concurrency: \"1\"}\nspec:\n  broker: default\n  subscriber:\n    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}\n"
    );
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let s = Sluice::start_in(dir.clone(), &[]).await;
    let n = 60;
    for i in 0..n {
        let url = s.broker_url("default", "default");
        assert_eq!(
            post_event(&url, &format!("e{i}"), "t", &[], "{}").await,
            202
        );
    }
    eventually(T, "the backlog shows as demand", || async {
        (service_status(&s).await["backlog"].as_u64() > Some(0)).then_some(())
    })
    .await;
    let svc = "{namespace=\"default\",service=\"fn\"}";
    eventually(T, "the backlog gauge", || async {
        (s.metric(&format!("sluice_autoscaler_backlog{svc}")).await > 0.0).then_some(())
    })
    .await;
    eventually(T, "more than one ready replica", || async {
        (service_status(&s).await["readyReplicas"].as_u64() > Some(1)).then_some(())
    })
    .await;
    let got = eventually(T, "every event at a replica", || async {
        let r = received_with_concurrency(&dir);
        (r.len() >= n).then_some(r)
    })
    .await;
    let ids: BTreeSet<_> = got.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids.len(), n, "each event once, none lost: {got:?}");
    assert_eq!(got.len(), n, "no event twice: {got:?}");
    // (Which replica served what is not asserted: with one delivery at a time the extra
    // replicas mostly idle — the trigger's concurrency, not the sink, is the bottleneck.)
    assert!(
        got.iter().all(|(_, _, busy)| *busy == 1),
        "no replica had more than containerConcurrency requests"
    );
    let labels = "{namespace=\"default\",broker=\"default\",trigger=\"to-fn\"}";
    // The replica logs before it answers: the last deliveries are counted a moment later.
    eventually(T, "every delivery counted", || async {
        let delivered = s
            .metric(&format!("sluice_events_delivered_total{labels}"))
            .await;
        (delivered == n as f64).then_some(())
    })
    .await;
    assert_eq!(
        s.metric(&format!("sluice_events_dead_lettered_total{labels}"))
            .await,
        0.0
    );
    assert!(!s
        .metrics()
        .await
        .contains("reason=\"no_dead_letter_sink\"} 1"));
}

#[tokio::test]
async fn an_edited_service_is_replaced_and_a_deleted_one_stops() {
    let dir = test_dir("autoscale-reload");
    let yaml = |delay: &str| {
        service(
            &dir,
            "        autoscaling.knative.dev/min-scale: \"1\"",
            delay,
            0,
        )
    };
    std::fs::write(dir.join("resources.yaml"), yaml("0")).unwrap();
    let s = Sluice::start_in(dir.clone(), &[]).await;
    let url = format!("http://{}/default/services/fn", s.ingress);
    assert_eq!(post_event(&url, "before", "t", &[], "{}").await, 202);
    let old_pid = received(&dir)[0].1;
    assert!(alive(old_pid));

    // An edit: a new replica serves, the old one stops.
    s.write("resources.yaml", &yaml("0.01"));
    let new_pid = eventually(T, "a request served by the new version", || async {
        assert_eq!(post_event(&url, "after", "t", &[], "{}").await, 202);
        received(&dir)
            .iter()
            .map(|(_, pid)| *pid)
            .find(|p| *p != old_pid)
    })
    .await;
    eventually(T, "the old replica stopped", || async {
        (!alive(old_pid)).then_some(())
    })
    .await;

    // Deleted: its replica stops and its address answers 404.
    s.write("resources.yaml", "");
    eventually(T, "the deleted service's replica stopped", || async {
        (!alive(new_pid)).then_some(())
    })
    .await;
    let status = client()
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}
