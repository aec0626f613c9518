//! `sluice run`: embedded mode. Load resources, start the data plane, serve ingress and admin,
//! reload on file changes, stop cleanly on Ctrl-C / SIGTERM.

use crate::admin::{self, AdminState};
use crate::cli::{NodeArgs, RunArgs};
use crate::load;
use crate::tls::IngressTls;
use anyhow::Context as _;
use notify::Watcher as _;
use sluice_autoscaler::LocalServices;
use sluice_broker::Ingress;
use sluice_core::metrics::Metrics;
use sluice_core::status::StatusBoard;
use sluice_core::topology::Topology;
use sluice_crds::Defaults;
use sluice_dispatcher::Dataplane;
use sluice_sources::Sources;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How long file events are gathered before one reload (editors write in several steps).
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let tls = IngressTls::from_flags(&args.node.tls)?;
    let ingress_url = url::Url::parse(&format!("http://{}/", args.node.ingress))
        .context("the ingress address does not make a URL")?;
    // Strict mode refuses plain http, so the addresses objects reach each other at are https.
    let mut defaults = Defaults::new(tls.internal_base(ingress_url));
    args.node.apply_to(&mut defaults);
    let oidc = args.node.oidc.embedded().await?;
    defaults.oidc = oidc.as_ref().is_some_and(|o| o.gate.is_some());

    let topology = load::topology(&args.files, &defaults)
        .map_err(|p| anyhow::anyhow!("invalid resources; nothing was started:\n{p}"))?;
    let (topology_tx, topology_rx) = watch::channel(Arc::new(topology));

    let (tx, rx) = mpsc::channel::<()>(16);
    // Keep the watcher alive for the life of the process.
    let _watcher = if args.no_watch {
        None
    } else {
        Some(watch_files(&args.files, tx).context("cannot watch the resource files")?)
    };
    let reloader = tokio::spawn(reload_loop(rx, args.files.clone(), defaults, topology_tx));
    // The cluster ApiServerSources watch: the kubeconfig given must work; an inferred one is
    // optional (without one, ApiServerSources say they have no cluster).
    let kube_config = match &args.kubeconfig {
        Some(path) => Some(crate::k8s::config(Some(path)).await?),
        None => match crate::k8s::config(None).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "no Kubernetes configuration: ApiServerSources cannot run");
                None
            }
        },
    };
    let result = serve(
        &args.node(),
        tls,
        topology_rx,
        kube_config,
        oidc,
        wait_for_signal(),
    )
    .await;
    reloader.abort();
    result
}

/// The data plane of one process: ingress, dispatchers and sources running `topology`
/// (and every topology published after it), with the admin server, until `shutdown`
/// resolves; then a drain (SEMANTICS.md §2: what was accepted is delivered). Shared by
/// `sluice run` (topology from files) and `sluice dataplane` (from the cluster).
pub async fn serve(
    node: &NodeArgs,
    tls: IngressTls,
    topology_rx: watch::Receiver<Arc<Topology>>,
    kube_config: Option<kube::Config>,
    oidc: Option<crate::oidc::Oidc>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(pem) = &tls.ca_pem {
        // Before the first delivery client is built: deliveries to our own https
        // addresses verify against it.
        sluice_delivery::trust_also(pem)
            .map_err(|e| anyhow::anyhow!("--tls-ca cannot be trusted: {e}"))?;
    }
    for pem in &tls.trust {
        if let Err(e) = sluice_delivery::trust_also(pem) {
            tracing::warn!(error = %e, "a trust bundle cannot be used; deliveries do not trust it");
        }
    }
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(StatusBoard::new());
    let mut ingress = Ingress::new(metrics.clone(), node.max_body_bytes);
    let mut sender = sluice_delivery::Sender::new();
    let mut sources = Sources::new(metrics.clone()).with_kube(kube_config);
    if let Some(oidc) = &oidc {
        if let Some(gate) = &oidc.gate {
            ingress = ingress.with_auth(gate.clone());
        }
        if let Some(tokens) = &oidc.tokens {
            sender = sender.with_tokens(tokens.clone());
            sources = sources.with_tokens(tokens.clone());
        }
    }
    let ingress = Arc::new(ingress);
    let dataplane = Dataplane::start_with(
        ingress.clone(),
        metrics.clone(),
        channel_factory(),
        status.clone(),
        topology_rx.clone(),
        sender,
    );
    dataplane.applied().await;
    // Sources start once the brokers they may send to are there.
    let sources_stop = CancellationToken::new();
    let sources_task = tokio::spawn(sources_loop(
        sources,
        topology_rx.clone(),
        status.clone(),
        sources_stop.clone(),
    ));

    // serving.knative.dev/v1 Services: local processes behind the activator, reached on the
    // ingress at /<ns>/services/<name>.
    // Events waiting in a trigger's channel for a Service count as its demand.
    let backlogs = dataplane.backlogs();
    let services = Arc::new(
        LocalServices::new().with_backlog(Arc::new(move |url| backlogs.waiting_for(url.as_str()))),
    );
    let services_stop = CancellationToken::new();
    let services_task = tokio::spawn(services_loop(
        services.clone(),
        metrics.clone(),
        topology_rx.clone(),
        status.clone(),
        services_stop.clone(),
    ));

    let state = Arc::new(AdminState {
        metrics,
        services: services.clone(),
        status,
        ingress: ingress.clone(),
        started: Default::default(),
        topology: topology_rx.clone(),
        urls: admin::IngressUrls {
            http: url::Url::parse(&format!("http://{}/", node.ingress))
                .context("the ingress address does not make a URL")?,
            https: tls.https_base(),
            mode: tls.mode.clone(),
        },
    });
    let admin_listener = tokio::net::TcpListener::bind(node.admin)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the admin address {} (choose another with --admin)",
                node.admin
            )
        })?;
    let ingress_listener = tokio::net::TcpListener::bind(node.ingress)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the ingress address {} (choose another with --ingress)",
                node.ingress
            )
        })?;

    let https_listener = match &tls.https {
        Some((addr, _)) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on the https address {addr} (choose another with --https-addr)")
        })?),
        None => None,
    };

    let stop_admin = CancellationToken::new();
    let stop_ingress = CancellationToken::new();
    let admin_task = tokio::spawn({
        let router = admin::router(state.clone());
        let sd = stop_admin.clone();
        async move {
            axum::serve(admin_listener, router)
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await
        }
    });
    let router = sluice_broker::router(ingress.clone()).merge(services.router());
    let (https_task, _reloader) = match (&tls.https, https_listener) {
        (Some((_, certs)), Some(listener)) => {
            let sd = stop_ingress.clone();
            let task = tokio::spawn(sluice_broker::serve_router_tls(
                listener,
                sluice_broker::guard(router.clone(), tls.mode.clone(), true),
                sluice_broker::ServeOptions::default(),
                certs.acceptor(),
                async move { sd.cancelled().await },
            ));
            let reloader =
                AbortOnDrop(certs.spawn_reloader(sluice_broker::tls::DEFAULT_RELOAD_INTERVAL));
            (Some(task), Some(reloader))
        }
        _ => (None, None),
    };
    let ingress_task = tokio::spawn({
        let sd = stop_ingress.clone();
        // Without a certificate there is no mode to obey: the plain path stays as it is.
        let router = match &tls.https {
            Some(_) => sluice_broker::guard(router, tls.mode.clone(), false),
            None => router,
        };
        sluice_broker::serve_router(
            ingress_listener,
            router,
            sluice_broker::ServeOptions::default(),
            async move { sd.cancelled().await },
        )
    });
    state.started.store(true, Ordering::Release);
    {
        let t = topology_rx.borrow();
        tracing::info!(
            ingress = %node.ingress,
            https = ?tls.https.as_ref().map(|(a, _)| a),
            transport_encryption = %tls.mode.get(),
            admin = %node.admin,
            brokers = t.brokers.len(),
            triggers = t.subscriptions.len(),
            channels = t.channels.len(),
            flows = t.flows.len(),
            transforms = t.transforms.len(),
            sources = t.ping_sources.len()
                + t.kafka_sources.len()
                + t.apiserver_sources.len()
                + t.container_sources.len(),
            "sluice is running; POST events to {}<namespace>/<broker> or /<namespace>/channels/<channel>", bases(node, &tls)
        );
    }

    shutdown.await;
    tracing::info!(drain_period = ?node.drain_period, "shutting down: producers now get 503, queued events are delivered");
    // Producers are turned away (503 + Retry-After, /readyz 503) while what was accepted
    // drains; replies of those deliveries are still taken.
    ingress.close();
    // Sources first: they may be sending to the ingress (and a KafkaSource commits its offsets).
    sources_stop.cancel();
    let _ = sources_task.await;
    let report = dataplane.shutdown(node.drain_period).await;
    if !report.drained {
        tracing::error!(
            lost = report.lost,
            "the drain period ended before every in-memory event was delivered"
        );
    }
    // Services last: deliveries drained above may have been going to them. Their replicas
    // finish what they hold, then stop.
    services_stop.cancel();
    let _ = services_task.await;
    stop_ingress.cancel();
    stop_admin.cancel();
    let _ = ingress_task.await;
    if let Some(t) = https_task {
        let _ = t.await;
    }
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// The base URLs events are taken at, for the start-up message.
fn bases(node: &NodeArgs, tls: &IngressTls) -> String {
    let http = format!("http://{}/", node.ingress);
    match (tls.mode.get(), tls.https_base()) {
        (sluice_core::transport::TransportEncryption::Permissive, Some(https)) => {
            format!("{http} or {https}")
        }
        (sluice_core::transport::TransportEncryption::Strict, Some(https)) => https.to_string(),
        _ => http,
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the sources: applies each topology, keeps their status on the board, stops them on
/// shutdown.
async fn sources_loop(
    mut sources: Sources,
    mut topology: watch::Receiver<Arc<Topology>>,
    status: Arc<StatusBoard>,
    stop: CancellationToken,
) {
    let current = topology.borrow_and_update().clone();
    sources.apply(&current).await;
    report_sources(&sources, &current, &status);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = topology.changed() => {
                if changed.is_err() {
                    break;
                }
                let t = topology.borrow_and_update().clone();
                sources.apply(&t).await;
                report_sources(&sources, &t, &status);
            }
            _ = tick.tick() => {
                let t = topology.borrow().clone();
                report_sources(&sources, &t, &status);
            }
        }
    }
    sources.shutdown().await;
}

/// Runs the Services of each topology and keeps their status on the board.
async fn services_loop(
    services: Arc<LocalServices>,
    metrics: Arc<Metrics>,
    mut topology: watch::Receiver<Arc<Topology>>,
    status: Arc<StatusBoard>,
    stop: CancellationToken,
) {
    let mut shown = std::collections::BTreeSet::new();
    let current = topology.borrow_and_update().clone();
    services.apply(&current);
    report_services(&services, &current, &status, &metrics, &mut shown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = topology.changed() => {
                if changed.is_err() {
                    break;
                }
                let t = topology.borrow_and_update().clone();
                services.apply(&t);
                report_services(&services, &t, &status, &metrics, &mut shown);
            }
            _ = tick.tick() => {
                let t = topology.borrow().clone();
                report_services(&services, &t, &status, &metrics, &mut shown);
            }
        }
    }
    services.shutdown().await;
}

/// Status on the board and the autoscaler gauges of every Service (`shown`: the Services
/// that have gauges, so a deleted one's series go away).
fn report_services(
    services: &LocalServices,
    t: &Topology,
    board: &StatusBoard,
    metrics: &Metrics,
    shown: &mut std::collections::BTreeSet<sluice_core::topology::Key>,
) {
    use sluice_core::metrics::ServiceLabels;
    use sluice_core::status::Status;
    use sluice_core::topology::{Kind, ObjectRef};
    let labels = |k: &sluice_core::topology::Key| ServiceLabels {
        namespace: k.namespace.clone(),
        service: k.name.clone(),
    };
    let stats = services.stats();
    let now: std::collections::BTreeSet<_> = stats.iter().filter_map(|s| s.key.clone()).collect();
    for gone in shown.difference(&now) {
        let l = labels(gone);
        metrics.autoscaler_desired.remove(&l);
        metrics.autoscaler_actual.remove(&l);
        metrics.autoscaler_ready.remove(&l);
        metrics.autoscaler_panic.remove(&l);
        metrics.activator_queue_depth.remove(&l);
        metrics.activator_in_flight.remove(&l);
        metrics.autoscaler_backlog.remove(&l);
    }
    *shown = now;
    for s in stats {
        let Some(key) = s.key.clone() else { continue };
        let l = labels(&key);
        metrics
            .autoscaler_desired
            .get_or_create(&l)
            .set(s.desired as i64);
        metrics
            .autoscaler_actual
            .get_or_create(&l)
            .set(s.actual as i64);
        metrics
            .autoscaler_ready
            .get_or_create(&l)
            .set(s.ready as i64);
        metrics
            .autoscaler_panic
            .get_or_create(&l)
            .set(s.panic as i64);
        metrics
            .activator_queue_depth
            .get_or_create(&l)
            .set(s.queued as i64);
        metrics
            .activator_in_flight
            .get_or_create(&l)
            .set(s.in_flight as i64);
        metrics
            .autoscaler_backlog
            .get_or_create(&l)
            .set(s.backlog as i64);
        let obj = ObjectRef::new(Kind::Service, key);
        let status = match (t.invalid.get(&obj), &s.problem) {
            (Some(problem), _) => Status::not_ready(1, "InvalidSpec", problem.clone()),
            (None, Some(problem)) if s.ready == 0 && s.desired > 0 => {
                Status::not_ready(1, "RevisionFailed", problem.clone())
            }
            _ => Status::ready(1),
        };
        board.set(obj, status);
    }
    board.retain(|o| o.kind != Kind::Service || t.services.contains_key(&o.key));
}

fn report_sources(sources: &Sources, t: &Topology, board: &StatusBoard) {
    use sluice_core::status::Status;
    use sluice_core::topology::{Kind, ObjectRef};
    for s in sources.status() {
        let kind = match s.kind {
            sluice_sources::Kind::Ping => Kind::PingSource,
            sluice_sources::Kind::Kafka => Kind::KafkaSource,
            sluice_sources::Kind::ApiServer => Kind::ApiServerSource,
            sluice_sources::Kind::Container => Kind::ContainerSource,
        };
        let obj = ObjectRef::new(kind, s.key.clone());
        let status = match (&s.health, t.invalid.get(&obj)) {
            (_, Some(problem)) => Status::not_ready(1, "InvalidSpec", problem.clone()),
            (sluice_sources::Health::Ready, None) => Status::ready(1),
            (sluice_sources::Health::NotReady(r), None) => {
                Status::not_ready(1, "NotReady", r.clone())
            }
            (sluice_sources::Health::Denied(r), None) => Status::not_ready(
                1,
                sluice_controller::status::NO_SUFFICIENT_PERMISSIONS,
                r.clone(),
            ),
        };
        board.set(obj, status);
    }
    board.retain(|o| match o.kind {
        Kind::PingSource => t.ping_sources.contains_key(&o.key),
        Kind::KafkaSource => t.kafka_sources.contains_key(&o.key),
        Kind::ApiServerSource => t.apiserver_sources.contains_key(&o.key),
        Kind::ContainerSource => t.container_sources.contains_key(&o.key),
        _ => true,
    });
}

/// The channel kinds compiled into this binary.
pub fn channel_factory() -> Box<dyn sluice_dispatcher::ChannelFactory> {
    Box::new(crate::channels::Factory)
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Watches the directories holding the resource files (not the files' inodes: editors that
/// save by writing a new file and renaming it over the old one replace the inode).
fn watch_files(
    paths: &[PathBuf],
    tx: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.try_send(());
            }
        }
    })?;
    for p in paths {
        if p.is_dir() {
            watcher.watch(p, notify::RecursiveMode::Recursive)?;
        } else {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
    }
    Ok(watcher)
}

async fn reload_loop(
    mut rx: mpsc::Receiver<()>,
    files: Vec<PathBuf>,
    defaults: Defaults,
    topology: watch::Sender<Arc<Topology>>,
) {
    while rx.recv().await.is_some() {
        tokio::time::sleep(RELOAD_DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let previous = topology.borrow().clone();
        match load::reload(&files, &defaults, &previous) {
            Ok((t, problems)) => {
                if !problems.is_empty() {
                    tracing::error!("some edited resources are invalid; they keep their previous version (if any), the rest is applied:\n{}", load::Problems(problems));
                }
                tracing::info!(
                    brokers = t.brokers.len(),
                    channels = t.channels.len(),
                    subscriptions = t.subscriptions.len(),
                    sources = t.ping_sources.len()
                        + t.kafka_sources.len()
                        + t.apiserver_sources.len()
                        + t.container_sources.len(),
                    invalid = t.invalid.len(),
                    "resources reloaded"
                );
                // The reconcilers pick it up; nothing here waits on them.
                topology.send_replace(Arc::new(t));
            }
            Err(p) => {
                tracing::error!(
                    "the edited resources cannot be read; still running the previous ones:\n{p}"
                );
            }
        }
    }
}
