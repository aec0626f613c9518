//! End-to-end harness: the real `sluice` binary on free loopback ports, and real HTTP sinks
//! that record what they receive and answer as a test scripts them.

#![allow(dead_code)]

pub mod kube;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

pub use sluice_tests::free_port;

pub use sluice_tests::eventually;

/// One request a sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Responder = dyn Fn(&Received, usize) -> Response + Send + Sync;
type SinkState = (Arc<Mutex<Vec<Received>>>, Arc<Responder>, Duration);

/// A real HTTP server that records every request and answers with `respond(request, n)`,
/// where n counts the requests so far (0-based).
pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    pub async fn start(
        respond: impl Fn(&Received, usize) -> Response + Send + Sync + 'static,
    ) -> Sink {
        Self::start_with_delay(respond, Duration::ZERO).await
    }

    /// A sink that waits `delay` before answering each request.
    pub async fn start_with_delay(
        respond: impl Fn(&Received, usize) -> Response + Send + Sync + 'static,
        delay: Duration,
    ) -> Sink {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state: SinkState = (received.clone(), Arc::new(respond), delay);
        let app = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink { addr, received }
    }

    /// A sink that accepts everything with an empty 200.
    pub async fn ok() -> Sink {
        Self::start(|_, _| StatusCode::OK.into_response()).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        eventually(
            timeout,
            &format!("{n} requests at {}", self.url()),
            || async {
                let got = self.received();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

async fn handle(
    State((received, respond, delay)): State<SinkState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = Received {
        path: uri.path().to_string(),
        headers,
        body,
    };
    let n = {
        let mut g = received.lock().unwrap();
        g.push(r.clone());
        g.len() - 1
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    respond(&r, n)
}

/// A running `sluice run`, killed on drop.
pub struct Sluice {
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    child: Child,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// A fresh directory under the target dir for one test's files.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Sluice {
    /// Writes `yaml` to `<dir>/resources.yaml` and starts `sluice run -f <dir>`; returns once
    /// `/readyz` answers 200.
    pub async fn start(name: &str, yaml: &str) -> Sluice {
        let dir = test_dir(name);
        std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
        Self::start_in(dir, &[]).await
    }

    pub async fn start_in(dir: PathBuf, extra: &[&str]) -> Sluice {
        let s = Self::spawn(dir, extra);
        let client = client();
        let url = format!("http://{}/readyz", s.admin);
        eventually(Duration::from_secs(30), "sluice /readyz", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
        s
    }

    /// Starts `sluice run -f <dir>` without waiting for it.
    pub fn spawn(dir: PathBuf, extra: &[&str]) -> Sluice {
        let ingress: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(binary())
            .arg("run")
            .arg("-f")
            .arg(&dir)
            .arg("--ingress")
            .arg(ingress.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .args(extra)
            // SLUICE_LOG (e.g. `debug,sluice_channels=trace`) overrides the server's log
            // filter while debugging a test; see SLUICE_TEST_LOGS below.
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info,sluice_delivery=debug".into()),
            )
            .stdout(Stdio::null())
            // SLUICE_TEST_LOGS=1 shows the server's logs while debugging a test.
            .stderr(if std::env::var_os("SLUICE_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("starting sluice");
        Sluice {
            ingress,
            admin,
            dir,
            child,
        }
    }

    pub fn broker_url(&self, ns: &str, name: &str) -> String {
        format!("http://{}/{ns}/{name}", self.ingress)
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric line (exact label text), 0 if absent.
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels).map(str::trim))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn write(&self, file: &str, yaml: &str) {
        // Write a new file and rename it over the old one, as editors do.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.join(file)).unwrap();
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM (what Kubernetes and Ctrl-C send) without waiting.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("sluice is running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill")
            .success();
        assert!(ok, "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("sluice still running {timeout:?} after SIGTERM"))
            .expect("waiting for sluice")
    }

    /// `sluice get` against this process: its output.
    pub async fn get(&self) -> String {
        let out = Command::new(binary())
            .args(["get", "--admin", &self.admin.to_string()])
            .output()
            .await
            .expect("running sluice get");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POSTs a binary-mode event; returns the status.
pub async fn post_event(url: &str, id: &str, ty: &str, extra: &[(&str, &str)], body: &str) -> u16 {
    let mut req = client()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/test")
        .header("ce-type", ty)
        .header("content-type", "application/json");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A reply in binary mode.
pub fn reply(id: &str, ty: &str) -> Response {
    (
        StatusCode::OK,
        [
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/replier"),
            ("ce-type", ty),
            ("content-type", "application/json"),
        ],
        "{\"reply\":true}",
    )
        .into_response()
}
