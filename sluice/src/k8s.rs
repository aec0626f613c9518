//! Kubernetes mode: `sluice controller` and `sluice dataplane`. Both watch the cluster
//! through `sluice_controller::Cluster`; the data plane turns each snapshot into a topology
//! with the same lenient build as a file reload in embedded mode.

use crate::cli::{ControllerArgs, DataplaneArgs, KubeFlags};
use crate::load;
use crate::run::{serve, wait_for_signal};
use anyhow::Context as _;
use axum::routing::get;
use sluice_controller::dataplane::Replicas;
use sluice_controller::{Addressing, Cluster, ControllerConfig};
use sluice_core::topology::Topology;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The client configuration of a kubeconfig file, else inferred ($KUBECONFIG,
/// ~/.kube/config, the in-cluster ServiceAccount).
pub async fn config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration found: give --kubeconfig, set KUBECONFIG, or run in a pod",
        )?,
    };
    Ok(config)
}

fn addressing(flags: &KubeFlags) -> Addressing {
    Addressing {
        api_server_url: None,
        ingress_service: flags.ingress_service.clone(),
        system_namespace: flags.system_namespace.clone(),
        cluster_domain: flags.cluster_domain.clone(),
    }
}

pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let kube_config = config(args.kube.kubeconfig.as_deref()).await?;
    let api_server_url = kube_config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = kube::Client::try_from(kube_config).context("cannot make a Kubernetes client")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| "sluice-controller".into())
    });
    // A random suffix: two processes on one host (or a restarted pod) are different holders.
    let identity = format!(
        "{identity}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut defaults = addressing(&args.kube).defaults();
    args.storage.apply_to(&mut defaults);
    let cfg = ControllerConfig {
        addressing: Addressing {
            api_server_url: Some(api_server_url),
            ..addressing(&args.kube)
        },
        defaults,
        lease: sluice_controller::leader::LeaseConfig::new(&args.kube.system_namespace, &identity),
        resync: Duration::from_secs(5),
        replicas: if args.dataplane_admin.is_empty() {
            Replicas::Service {
                namespace: args.kube.system_namespace.clone(),
                service: args.dataplane_service.clone(),
            }
        } else {
            Replicas::Static(args.dataplane_admin.clone())
        },
    };
    let listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on the admin address {}", args.admin))?;
    let health = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let stop = CancellationToken::new();
    let health_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, health)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });
    tracing::info!(identity, admin = %args.admin, "sluice controller starting");
    let controller = tokio::spawn(sluice_controller::run(client, cfg, stop.clone()));
    wait_for_signal().await;
    stop.cancel();
    let _ = controller.await;
    let _ = health_task.await;
    Ok(())
}

pub async fn dataplane(args: DataplaneArgs) -> anyhow::Result<()> {
    let kube_config = config(args.kube.kubeconfig.as_deref()).await?;
    let client =
        kube::Client::try_from(kube_config.clone()).context("cannot make a Kubernetes client")?;
    let mut defaults = addressing(&args.kube).defaults();
    args.node.apply_to(&mut defaults);
    let oidc = args
        .node
        .oidc
        .kubernetes(&client, &args.kube.system_namespace)
        .await?;
    defaults.oidc = oidc.as_ref().is_some_and(|o| o.gate.is_some());
    let (cluster, _watches) = Cluster::watch(client);
    tracing::info!("listing the resources in the cluster");
    cluster.ready().await;
    let (loaded, unreadable) = snapshot(&cluster);
    let (first, problems) = load::rebuild(&loaded, unreadable, &defaults, &Topology::default());
    report(&first, &problems);
    let (topology_tx, topology_rx) = watch::channel(Arc::new(first));
    let follower = tokio::spawn(follow(cluster, defaults, topology_tx));
    let result = serve(
        &args.node,
        topology_rx,
        Some(kube_config),
        oidc,
        wait_for_signal(),
    )
    .await;
    follower.abort();
    result
}

/// Publishes a new topology after every change in the cluster (a short debounce gathers a
/// `kubectl apply` of many objects into one).
async fn follow(
    cluster: Cluster,
    defaults: sluice_crds::Defaults,
    topology: watch::Sender<Arc<Topology>>,
) {
    let mut changes = cluster.changes();
    while changes.changed().await.is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        changes.borrow_and_update();
        let previous = topology.borrow().clone();
        let (loaded, unreadable) = snapshot(&cluster);
        let (t, problems) = load::rebuild(&loaded, unreadable, &defaults, &previous);
        report(&t, &problems);
        topology.send_replace(Arc::new(t));
    }
}

/// The cluster's resources, with refs to kinds only the controller can read replaced by the
/// URI it resolved (see `sluice_controller::resolve`).
fn snapshot(cluster: &Cluster) -> (Vec<sluice_crds::Loaded>, Vec<sluice_crds::LoadError>) {
    let (mut loaded, unreadable) = cluster.snapshot();
    sluice_controller::resolve::use_resolved_status(&mut loaded);
    (loaded, unreadable)
}

fn report(t: &Topology, problems: &[String]) {
    if !problems.is_empty() {
        tracing::warn!(
            "some resources are invalid; they are not run (or keep their previous version):\n{}",
            load::Problems(problems.to_vec())
        );
    }
    tracing::info!(
        brokers = t.brokers.len(),
        triggers = t.subscriptions.len(),
        sources = t.ping_sources.len() + t.kafka_sources.len() + t.apiserver_sources.len(),
        invalid = t.invalid.len(),
        "resources applied from the cluster"
    );
}
