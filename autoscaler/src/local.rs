//! Embedded mode's `serving.knative.dev/v1` Services: replicas are local processes, requests
//! reach them through the activator, the KPA decides how many run.
//!
//! ```text
//! POST <ingress>/<ns>/services/<name>/<path> ──proxy──▶ Activator ──▶ replica 127.0.0.1:$PORT
//!                                                         ▲ ready / drain
//!            every tick or at once when poked ──▶ Decider ──▶ start / stop processes
//! ```
//!
//! - A replica is `command` + `args` with `env`, plus `PORT` (a free loopback port),
//!   `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION`. It is ready when its port accepts a
//!   connection, or, with a `readinessProbe.httpGet`, when that path answers 2xx/3xx.
//! - Scale-down never drops work: the replica chosen gets no new requests, finishes those in
//!   flight (up to `timeoutSeconds`), then gets SIGTERM (SIGKILL 10 s later if still alive).
//! - Demand is what the activator holds plus, every tick, the events waiting in channels for
//!   the Service (its backlog, from the [`BacklogFn`] given to [`LocalServices::with_backlog`];
//!   the rule is in [`crate::demand`]).
//! - A request waits for a replica at most `timeoutSeconds` (in all, answer included);
//!   a full activator queue or that timeout is a 503 with `Retry-After`, which delivery
//!   retries, so an event is not lost while a Service scales from zero.

use crate::activator::{Activator, Refused};
use crate::gate::{ReplicaId, DEFAULT_QUEUE_CAPACITY};
use crate::kpa::{panic_window, Decider, Observation};
use crate::plan::plan;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_core::topology::{Key, Service, Topology};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a starting replica is probed: often, since every period of a cold start is
/// added to the first request's latency, and a connect to a loopback port costs nothing.
const PROBE_PERIOD: Duration = Duration::from_millis(5);
/// How long a replica may take to become ready before it is replaced.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// Between SIGTERM and SIGKILL.
const TERMINATION_GRACE: Duration = Duration::from_secs(10);

/// What one Service is doing, for `sluice get` and the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStats {
    pub key: Option<Key>,
    pub address: String,
    /// Replicas the KPA wants.
    pub desired: u32,
    /// Replicas running (starting or ready, not those being removed).
    pub actual: u32,
    /// Replicas taking requests.
    pub ready: u32,
    pub in_flight: u64,
    /// Requests waiting in the activator.
    pub queued: usize,
    /// Events waiting in channels for the Service (counted as demand).
    pub backlog: u64,
    pub panic: bool,
    /// The last replica start that failed, if any.
    pub problem: Option<String>,
}

struct Running {
    service: Arc<Service>,
    activator: Arc<Activator>,
    stats: Arc<Mutex<ServiceStats>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

type Table = Arc<RwLock<HashMap<Key, Arc<Running>>>>;

/// Events waiting in channels for a Service, by its address (`None`: nothing delivers there
/// or the channels cannot tell).
pub type BacklogFn = Arc<dyn Fn(&url::Url) -> Option<u64> + Send + Sync>;

/// The Services of embedded mode.
pub struct LocalServices {
    table: Table,
    client: Client<HttpConnector, Body>,
    /// Services being stopped (their replicas finishing requests), awaited on shutdown.
    stopping: Mutex<Vec<JoinHandle<()>>>,
    backlog: Option<BacklogFn>,
}

impl Default for LocalServices {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalServices {
    pub fn new() -> Self {
        LocalServices {
            table: Arc::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            stopping: Mutex::default(),
            backlog: None,
        }
    }

    /// Counts the events waiting in channels for each Service as demand (sampled every
    /// tick).
    pub fn with_backlog(mut self, backlog: BacklogFn) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// Runs the Services of `topology`: new ones start, removed ones stop (their replicas
    /// finish what they hold), changed ones are replaced.
    pub fn apply(&self, topology: &Topology) {
        let mut stopping = Vec::new();
        {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            table.retain(|key, running| {
                let keep = topology
                    .services
                    .get(key)
                    .is_some_and(|s| s.fingerprint == running.service.fingerprint);
                if !keep {
                    running.stop.cancel();
                    running.activator.close();
                    stopping.push(running.clone());
                }
                keep
            });
            for (key, service) in &topology.services {
                if !table.contains_key(key) {
                    table.insert(
                        key.clone(),
                        Arc::new(start(service.clone(), self.backlog.clone())),
                    );
                }
            }
        }
        // Old replicas finish their requests in the background; the new version already
        // takes new ones.
        let mut tasks = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        for r in stopping {
            tasks.push(tokio::spawn(async move { wait_stopped(&r).await }));
        }
    }

    /// Stops every Service, letting replicas finish their requests.
    pub async fn shutdown(&self) {
        let all: Vec<_> = {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            table.drain().map(|(_, r)| r).collect()
        };
        for r in &all {
            r.stop.cancel();
            r.activator.close();
        }
        for r in all {
            wait_stopped(&r).await;
        }
        let earlier = std::mem::take(&mut *self.stopping.lock().unwrap_or_else(|e| e.into_inner()));
        for t in earlier {
            let _ = t.await;
        }
    }

    pub fn stats(&self) -> Vec<ServiceStats> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = table
            .values()
            .map(|r| {
                let mut s = r.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let load = r.activator.load();
                s.ready = load.ready;
                s.queued = load.queued;
                s.in_flight = load.in_flight;
                s.backlog = load.backlog;
                s
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Routes `/<ns>/services/<name>` and `/<ns>/services/<name>/<path>` through the
    /// activator to a replica.
    pub fn router(&self) -> Router {
        let state = ProxyState {
            table: self.table.clone(),
            client: self.client.clone(),
        };
        Router::new()
            .route("/{ns}/services/{name}", any(proxy))
            .route("/{ns}/services/{name}/{*rest}", any(proxy))
            .with_state(state)
    }
}

/// The task owns the replicas; it returns once they are stopped.
async fn wait_stopped(r: &Running) {
    let task = r.task.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(task) = task {
        let _ = task.await;
    }
}

fn start(service: Arc<Service>, backlog: Option<BacklogFn>) -> Running {
    let activator = Activator::new(
        service.container_concurrency,
        DEFAULT_QUEUE_CAPACITY,
        service.scaling.stable_window,
    );
    let stats = Arc::new(Mutex::new(ServiceStats {
        key: Some(service.key.clone()),
        address: service.address.to_string(),
        ..ServiceStats::default()
    }));
    let stop = CancellationToken::new();
    let task = tokio::spawn(scale_loop(
        service.clone(),
        activator.clone(),
        stats.clone(),
        backlog,
        stop.clone(),
    ));
    Running {
        service,
        activator,
        stats,
        stop,
        task: Mutex::new(Some(task)),
    }
}

struct Replica {
    child: Child,
    ready: bool,
    /// Stops the readiness probe.
    probe: CancellationToken,
}

/// One Service's autoscaler: decides every tick (or at once when the activator is poked),
/// then starts or stops replicas to match.
async fn scale_loop(
    service: Arc<Service>,
    activator: Arc<Activator>,
    stats: Arc<Mutex<ServiceStats>>,
    backlog: Option<BacklogFn>,
    stop: CancellationToken,
) {
    let spec = &service.scaling;
    let mut decider = Decider::new(spec.clone(), Instant::now());
    let mut replicas: BTreeMap<ReplicaId, Replica> = BTreeMap::new();
    let mut next_id: ReplicaId = 0;
    let (ready_tx, mut ready_rx) =
        mpsc::unbounded_channel::<(ReplicaId, Result<SocketAddr, String>)>();
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    let mut tick = tokio::time::interval(spec.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            _ = activator.poked() => {}
            Some((id, result)) = ready_rx.recv() => {
                match result {
                    Ok(addr) => {
                        if let Some(r) = replicas.get_mut(&id) {
                            r.ready = true;
                            activator.add_replica(id, addr);
                            tracing::info!(service = %service.key, replica = id, %addr, "replica ready");
                        }
                    }
                    Err(problem) => {
                        tracing::warn!(service = %service.key, replica = id, %problem, "replica failed to start");
                        if let Some(r) = replicas.remove(&id) {
                            stopping.push(tokio::spawn(terminate(r, None)));
                        }
                        stats.lock().unwrap_or_else(|e| e.into_inner()).problem = Some(problem);
                    }
                }
                continue;
            }
        }
        // Replicas that exited on their own.
        let exited: Vec<(ReplicaId, std::process::ExitStatus)> = replicas
            .iter_mut()
            .filter_map(|(id, r)| match r.child.try_wait() {
                Ok(Some(status)) => Some((*id, status)),
                _ => None,
            })
            .collect();
        for (id, status) in exited {
            let r = replicas.remove(&id).expect("listed");
            r.probe.cancel();
            activator.remove(id);
            let problem = format!(
                "replica {id} (`{}`) exited on its own ({status}); it must keep serving on $PORT",
                service.command.join(" ")
            );
            tracing::warn!(service = %service.key, replica = id, %status, "replica exited");
            stats.lock().unwrap_or_else(|e| e.into_inner()).problem = Some(problem);
        }
        stopping.retain(|t| !t.is_finished());

        if let Some(backlog) = &backlog {
            activator.set_backlog(backlog(&service.address).unwrap_or(0));
        }
        let now = Instant::now();
        let load = activator.load();
        let (stable, panic) = activator.averages(now, spec.stable_window, panic_window(spec));
        let decision = decider.decide(
            now,
            Observation {
                stable,
                panic,
                ready: load.ready,
            },
        );
        let starting: Vec<ReplicaId> = replicas
            .iter()
            .filter(|(_, r)| !r.ready)
            .map(|(id, _)| *id)
            .collect();
        let ready = activator.ready_replicas();
        let plan = plan(decision.desired, load.queued, &starting, &ready);
        for _ in 0..plan.start {
            let id = next_id;
            next_id += 1;
            match spawn_replica(&service, id, ready_tx.clone()) {
                Ok(r) => {
                    replicas.insert(id, r);
                }
                Err(problem) => {
                    tracing::error!(service = %service.key, %problem, "cannot start a replica");
                    stats.lock().unwrap_or_else(|e| e.into_inner()).problem = Some(problem);
                    break;
                }
            }
        }
        for id in plan.abandon {
            if let Some(r) = replicas.remove(&id) {
                stopping.push(tokio::spawn(terminate(r, None)));
            }
        }
        for id in plan.drain {
            let Some(r) = replicas.remove(&id) else {
                activator.remove(id);
                continue;
            };
            let held = activator.drain(id);
            tracing::info!(service = %service.key, replica = id, in_flight = held, "scaling down: replica drains, then stops");
            stopping.push(tokio::spawn(terminate(
                r,
                Some((activator.clone(), id, service.timeout)),
            )));
        }
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        s.desired = decision.desired;
        s.actual = replicas.len() as u32;
        s.panic = decision.panic;
    }
    // Stopping: every replica finishes what it holds, then stops.
    for (id, r) in std::mem::take(&mut replicas) {
        if r.ready {
            activator.drain(id);
            stopping.push(tokio::spawn(terminate(
                r,
                Some((activator.clone(), id, service.timeout)),
            )));
        } else {
            stopping.push(tokio::spawn(terminate(r, None)));
        }
    }
    for t in stopping {
        let _ = t.await;
    }
}

/// A free loopback port (bound and released: good enough on one machine).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn spawn_replica(
    service: &Service,
    id: ReplicaId,
    ready: mpsc::UnboundedSender<(ReplicaId, Result<SocketAddr, String>)>,
) -> Result<Replica, String> {
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let revision = format!("{}-00001", service.key.name);
    let mut cmd = Command::new(&service.command[0]);
    cmd.args(&service.command[1..])
        .envs(service.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", port.to_string())
        .env("K_SERVICE", &service.key.name)
        .env("K_CONFIGURATION", &service.key.name)
        .env("K_REVISION", &revision)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // A replica never outlives Sluice, even when Sluice is killed with SIGKILL.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", service.command.join(" ")))?;
    tracing::info!(service = %service.key, replica = id, port, pid = child.id(), "replica starting");
    let probe = CancellationToken::new();
    tokio::spawn({
        let probe = probe.clone();
        let path = service.readiness_path.clone();
        async move {
            let deadline = Instant::now() + START_DEADLINE;
            let result = loop {
                if probe.is_cancelled() {
                    return;
                }
                if probe_once(addr, path.as_deref()).await {
                    break Ok(addr);
                }
                if Instant::now() >= deadline {
                    break Err(format!("not ready within {START_DEADLINE:?} on {addr}"));
                }
                tokio::select! {
                    _ = probe.cancelled() => return,
                    _ = tokio::time::sleep(PROBE_PERIOD) => {}
                }
            };
            let _ = ready.send((id, result));
        }
    });
    Ok(Replica {
        child,
        ready: false,
        probe,
    })
}

/// One readiness probe: the port accepts a connection, and with a path, `GET path` answers
/// 2xx or 3xx (Kubernetes' httpGet rule).
pub async fn probe_once(addr: SocketAddr, path: Option<&str>) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let Some(path) = path else { return Some(true) };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            let m = stream.read(&mut buf[n..]).await.ok()?;
            if m == 0 {
                break;
            }
            n += m;
        }
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// Stops a replica: first (if `drain` is given) waits for its requests in flight to finish,
/// up to the timeout; then SIGTERM, then SIGKILL after the grace period.
async fn terminate(mut r: Replica, drain: Option<(Arc<Activator>, ReplicaId, Duration)>) {
    r.probe.cancel();
    if let Some((activator, id, timeout)) = &drain {
        let _ = tokio::time::timeout(*timeout, activator.drained(*id)).await;
    }
    if let Some(pid) = r.child.id() {
        // SAFETY: sending a signal to our own child process; no memory is involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(TERMINATION_GRACE, r.child.wait())
        .await
        .is_err()
    {
        let _ = r.child.kill().await;
    }
    if let Some((activator, id, _)) = drain {
        activator.remove(id);
    }
}

#[derive(Clone)]
struct ProxyState {
    table: Table,
    client: Client<HttpConnector, Body>,
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut resp = (status, message).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn proxy(
    State(state): State<ProxyState>,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let key = Key::new(params["ns"].clone(), params["name"].clone());
    let running = state
        .table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let Some(running) = running else {
        return refuse(StatusCode::NOT_FOUND, format!("no Service {key} runs here"));
    };
    let timeout = running.service.timeout;
    let deadline = Instant::now() + timeout;
    let lease = match running.activator.acquire(timeout).await {
        Ok(l) => l,
        Err(Refused::QueueFull) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Service {key}: the activator queue is full; retry later"),
            )
        }
        Err(Refused::Timeout) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Service {key}: no replica was ready within timeoutSeconds ({timeout:?})"),
            )
        }
    };
    let rest = params.get("rest").map(String::as_str).unwrap_or("");
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri = format!("http://{}/{rest}{query}", lease.addr());
    let (mut parts, body) = req.into_parts();
    parts.uri = match uri.parse() {
        Ok(u) => u,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad path: {e}")),
    };
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::CONNECTION);
    let upstream = Request::from_parts(parts, body);
    let call = async {
        let resp = state.client.request(upstream).await.map_err(|e| {
            refuse(
                StatusCode::BAD_GATEWAY,
                format!("Service {key}: replica {}: {e}", lease.replica()),
            )
        })?;
        let (mut parts, body) = resp.into_parts();
        // The body is passed on whole: its framing is the proxy's, not the replica's.
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::CONNECTION);
        let bytes = body
            .collect()
            .await
            .map_err(|e| refuse(StatusCode::BAD_GATEWAY, format!("Service {key}: {e}")))?
            .to_bytes();
        Ok::<_, Response>(Response::from_parts(parts, Body::from(bytes)))
    };
    let result = match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(resp)) => resp,
        Err(_) => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            format!("Service {key}: no answer within timeoutSeconds ({timeout:?})"),
        ),
    };
    // The request is over (answer read): the replica's slot is free again.
    drop(lease);
    result
}
