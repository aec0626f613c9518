//! Kubernetes mode: `sluice controller` and `sluice dataplane`. Both watch the cluster
//! through `sluice_controller::Cluster`; the data plane turns each snapshot into a topology
//! with the same lenient build as a file reload in embedded mode.

use crate::cli::{ControllerArgs, DataplaneArgs, KubeFlags};
use crate::load;
use crate::run::{serve, wait_for_signal};
use crate::tls::IngressTls;
use anyhow::Context as _;
use axum::routing::get;
use sluice_controller::dataplane::Replicas;
use sluice_controller::leader::LeaseConfig;
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
        https_port: flags.ingress_https_port,
        ..Addressing::default()
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
        tls_ca: args.tls_ca.clone(),
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
    let tls = IngressTls::from_flags(&args.node.tls)?;
    let addressing = addressing(&args.kube);
    let mut defaults = addressing.defaults();
    args.node.apply_to(&mut defaults);
    let oidc = args
        .node
        .oidc
        .kubernetes(&client, &args.kube.system_namespace)
        .await?;
    defaults.oidc = oidc.as_ref().is_some_and(|o| o.gate.is_some());
    let (cluster, _watches) = Cluster::watch(client.clone());
    // One replica runs the ApiServerSources (each would otherwise emit every change once
    // per replica): the holder of this Lease.
    let stop = CancellationToken::new();
    let identity = format!(
        "{}_{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "sluice-dataplane".into()),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let lease = LeaseConfig {
        name: APISERVER_SOURCES_LEASE.into(),
        ..LeaseConfig::new(&args.kube.system_namespace, &identity)
    };
    let (runs_apiserver_sources, election) =
        sluice_controller::leader::elect_until_released(client, lease, stop.clone());
    tracing::info!(identity, "listing the resources in the cluster");
    cluster.ready().await;
    let (loaded, unreadable) = snapshot(&cluster);
    let mut tls = tls;
    // Knative's trust bundles: read once here, before the first delivery (a change needs
    // a restart of the data plane).
    tls.trust = sluice_controller::features::trust_bundles(&loaded, &args.kube.system_namespace);
    if !tls.trust.is_empty() {
        tracing::info!(
            certificates = tls.trust.len(),
            "deliveries also trust the CA certificates of the trust-bundle ConfigMaps"
        );
    }
    let follow_tls = FollowTls {
        mode: tls.mode.clone(),
        // Knative's default when config-features says nothing is disabled; the flag, when
        // given, takes its place (the controller, which has no such flag, publishes http).
        flag: args.node.tls.transport_encryption.unwrap_or_default(),
        has_cert: tls.https.is_some(),
        addressing,
    };
    follow_tls.apply(&loaded, &mut defaults);
    let (mut first, problems) = load::rebuild(&loaded, unreadable, &defaults, &Topology::default());
    keep_apiserver_sources(&mut first, *runs_apiserver_sources.borrow());
    report(&first, &problems);
    let (topology_tx, topology_rx) = watch::channel(Arc::new(first));
    let follower = tokio::spawn(follow(
        cluster,
        defaults,
        follow_tls,
        topology_tx,
        runs_apiserver_sources,
    ));
    let result = serve(
        &args.node,
        tls,
        topology_rx,
        Some(kube_config),
        oidc,
        wait_for_signal(),
    )
    .await;
    // Give the ApiServerSources' Lease back, so another replica runs them at once rather
    // than after the Lease expires.
    follower.abort();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    result
}

/// The Lease (in the system namespace) whose holder among the data-plane replicas runs every
/// ApiServerSource.
pub const APISERVER_SOURCES_LEASE: &str = "sluice-apiserversources";

/// A replica that does not hold [`APISERVER_SOURCES_LEASE`] runs no ApiServerSource. It does
/// not report them either, so their status is the runner's report alone.
fn keep_apiserver_sources(t: &mut Topology, runner: bool) {
    if !runner {
        t.apiserver_sources.clear();
    }
}

/// Publishes a new topology after every change in the cluster (a short debounce gathers a
/// `kubectl apply` of many objects into one).
async fn follow(
    cluster: Cluster,
    mut defaults: sluice_crds::Defaults,
    tls: FollowTls,
    topology: watch::Sender<Arc<Topology>>,
    mut runner: watch::Receiver<bool>,
) {
    let mut changes = cluster.changes();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = runner.changed() => {
                if r.is_err() { return }
                tracing::info!(runner = *runner.borrow(), "this replica {} the ApiServerSources", if *runner.borrow() { "now runs" } else { "no longer runs" });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        changes.borrow_and_update();
        let previous = topology.borrow().clone();
        let (loaded, unreadable) = snapshot(&cluster);
        tls.apply(&loaded, &mut defaults);
        let (mut t, problems) = load::rebuild(&loaded, unreadable, &defaults, &previous);
        keep_apiserver_sources(&mut t, *runner.borrow_and_update());
        report(&t, &problems);
        topology.send_replace(Arc::new(t));
    }
}

/// The data plane's side of `config-features`' `transport-encryption`: which listener
/// serves events, and whether objects reach each other over https (strict).
struct FollowTls {
    mode: Arc<sluice_broker::TransportMode>,
    /// `--transport-encryption` (else disabled): used while the ConfigMap says nothing.
    flag: sluice_core::transport::TransportEncryption,
    has_cert: bool,
    addressing: Addressing,
}

impl FollowTls {
    fn apply(&self, loaded: &[sluice_crds::Loaded], defaults: &mut sluice_crds::Defaults) {
        use sluice_core::transport::TransportEncryption as T;
        let ns = &self.addressing.system_namespace;
        let mode = match sluice_controller::features::transport_encryption(loaded, ns) {
            Ok(m) => m.unwrap_or(self.flag),
            Err(e) => {
                tracing::warn!(error = %e, "transport-encryption not understood; keeping the current mode");
                self.mode.get()
            }
        };
        let before = self.mode.set(mode);
        if before != mode {
            tracing::info!(%before, now = %mode, "transport-encryption changed");
            if mode != T::Disabled && !self.has_cert {
                tracing::error!(
                    %mode,
                    "transport-encryption asks for https but this data plane has no certificate: give it --tls-cert and --tls-key (a Secret mounted into the pod)"
                );
            }
        }
        defaults.ingress_url = match mode {
            T::Strict => self.addressing.https_base(),
            _ => self.addressing.ingress_base(),
        };
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
