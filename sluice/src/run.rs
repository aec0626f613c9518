//! `sluice run`: embedded mode. Load resources, start the data plane, serve ingress and admin,
//! reload on file changes, stop cleanly on Ctrl-C / SIGTERM.

use crate::admin::{self, AdminState};
use crate::cli::RunArgs;
use crate::load;
use anyhow::Context as _;
use notify::Watcher as _;
use sluice_broker::Ingress;
use sluice_core::metrics::Metrics;
use sluice_core::topology::Topology;
use sluice_crds::Defaults;
use sluice_dispatcher::Dataplane;
use sluice_sources::Sources;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

/// How long file events are gathered before one reload (editors write in several steps).
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);
/// How often brokers whose channel could not be created are retried.
const RETRY_NOT_READY: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let ingress_url = url::Url::parse(&format!("http://{}/", args.ingress))
        .context("the ingress address does not make a URL")?;
    let mut defaults = Defaults::new(ingress_url);
    defaults.kafka_bootstrap_servers = args.kafka_bootstrap_servers.clone();
    defaults.nats_url = args.nats_url.clone();
    defaults.memory_capacity = args.queue_capacity.max(1);

    let topology = load::topology(&args.files, &defaults)
        .map_err(|p| anyhow::anyhow!("invalid resources; nothing was started:\n{p}"))?;

    let metrics = Arc::new(Metrics::new());
    let ingress = Arc::new(Ingress::new(metrics.clone(), args.max_body_bytes));
    let mut dataplane = Dataplane::new(
        ingress.clone(),
        metrics.clone(),
        crate::run::channel_factory(),
    );
    dataplane.apply(&topology).await;
    let dataplane = Arc::new(Mutex::new(dataplane));
    // Sources start once the brokers they may send to are there.
    let mut sources = Sources::new(metrics.clone());
    sources.apply(&topology).await;
    let sources = Arc::new(Mutex::new(sources));

    let state = Arc::new(AdminState {
        metrics,
        dataplane: dataplane.clone(),
        sources: sources.clone(),
        started: Default::default(),
        topology: Mutex::new(describe(&topology)),
    });
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the admin address {} (choose another with --admin)",
                args.admin
            )
        })?;
    let ingress_listener = tokio::net::TcpListener::bind(args.ingress)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the ingress address {} (choose another with --ingress)",
                args.ingress
            )
        })?;

    let shutdown = tokio_util_shutdown();
    let admin_task = tokio::spawn({
        let router = admin::router(state.clone());
        let sd = shutdown.clone();
        async move {
            axum::serve(admin_listener, router)
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await
        }
    });
    let ingress_task = tokio::spawn({
        let sd = shutdown.clone();
        sluice_broker::serve(
            ingress_listener,
            ingress,
            async move { sd.cancelled().await },
        )
    });
    state.started.store(true, Ordering::Release);
    tracing::info!(
        ingress = %args.ingress,
        admin = %args.admin,
        brokers = topology.brokers.len(),
        triggers = topology.triggers.len(),
        sources = topology.ping_sources.len() + topology.kafka_sources.len(),
        "sluice is running; POST events to http://{}/<namespace>/<broker>", args.ingress
    );

    let (tx, rx) = mpsc::channel::<()>(16);
    // Keep the watcher alive for the life of the process.
    let _watcher = if args.no_watch {
        None
    } else {
        Some(watch(&args.files, tx).context("cannot watch the resource files")?)
    };
    let reloader = tokio::spawn(reload_loop(
        rx,
        args.files.clone(),
        defaults,
        dataplane.clone(),
        sources.clone(),
        state.clone(),
        topology,
    ));

    wait_for_signal().await;
    tracing::info!("shutting down");
    // Sources first: they may be sending to the ingress (and a KafkaSource commits its offsets).
    sources.lock().await.shutdown().await;
    shutdown.cancel();
    reloader.abort();
    let _ = ingress_task.await;
    let _ = admin_task.await;
    dataplane.lock().await.shutdown().await;
    Ok(())
}

fn tokio_util_shutdown() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

/// The channel kinds compiled into this binary.
pub fn channel_factory() -> Box<dyn sluice_dispatcher::ChannelFactory> {
    Box::new(crate::channels::Factory)
}

fn describe(t: &Topology) -> Vec<serde_json::Value> {
    t.triggers
        .values()
        .map(|tr| {
            serde_json::json!({
                "namespace": tr.key.namespace,
                "name": tr.key.name,
                "broker": tr.broker.name,
                "subscriber": tr.subscriber.as_str(),
                "deadLetterSink": tr.delivery.dead_letter_sink.as_ref().map(|u| u.as_str()),
            })
        })
        .collect()
}

async fn wait_for_signal() {
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
fn watch(paths: &[PathBuf], tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
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
    dataplane: Arc<Mutex<Dataplane>>,
    sources: Arc<Mutex<Sources>>,
    state: Arc<AdminState>,
    mut current: Topology,
) {
    let mut retry = tokio::time::interval(RETRY_NOT_READY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = rx.recv() => {
                if got.is_none() {
                    return;
                }
                tokio::time::sleep(RELOAD_DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                match load::topology(&files, &defaults) {
                    Ok(t) => {
                        dataplane.lock().await.apply(&t).await;
                        sources.lock().await.apply(&t).await;
                        *state.topology.lock().await = describe(&t);
                        tracing::info!(brokers = t.brokers.len(), triggers = t.triggers.len(), sources = t.ping_sources.len() + t.kafka_sources.len(), "resources reloaded");
                        current = t;
                    }
                    Err(p) => {
                        tracing::error!("the edited resources are invalid; still running the previous ones:\n{p}");
                    }
                }
            }
            _ = retry.tick() => {
                let mut dp = dataplane.lock().await;
                if dp.status().iter().any(|b| matches!(b.health, sluice_channels::Health::NotReady(_))) {
                    dp.apply(&current).await;
                }
            }
        }
    }
}
