//! Command-line flags. Every address and setting of `sluice run` can also come from the
//! environment (`SLUICE_*`).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A Knative Eventing compatible event mesh, in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as human text or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SLUICE_LOG_FORMAT"
    )]
    pub log_format: crate::telemetry::LogFormat,
    /// Export traces over OTLP/HTTP to this base URL (`/v1/traces` is appended), e.g.
    /// http://127.0.0.1:4318. Unset: no tracing. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, when
    /// set, is the full traces URL and wins.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run Knative YAML (brokers, triggers, channels, subscriptions, sequences, parallels,
    /// sources) from files (embedded mode, no cluster).
    Run(RunArgs),
    /// Send one CloudEvent to a URL and print the response.
    Send(SendArgs),
    /// Run an event-display sink that prints every event it receives.
    Display(DisplayArgs),
    /// Show the objects of a running `sluice run` (brokers, triggers, channels,
    /// subscriptions, sequences, parallels, sources) and their status.
    Get(GetArgs),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crdgen(CrdgenArgs),
    /// Kubernetes mode: watch the Knative resources and write their status (one leader
    /// among the replicas).
    Controller(ControllerArgs),
    /// Kubernetes mode: ingress, dispatchers and sources for the resources in the cluster.
    Dataplane(DataplaneArgs),
}

#[derive(Args, Debug)]
pub struct CrdgenArgs {
    /// Write `<plural>.<group>.yaml` per CRD and a `kustomization.yaml` listing them into this
    /// directory (removing other `*.yaml` files there) instead of printing one stream. The
    /// repository keeps them in `crds/yaml/`.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Resource files or directories (YAML, multi-document). Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        env = "SLUICE_FILES",
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub node: NodeFlags,
    /// Do not reload the files when they change.
    #[arg(long, env = "SLUICE_NO_WATCH")]
    pub no_watch: bool,
    /// The cluster ApiServerSources watch: a kubeconfig file; default: $KUBECONFIG or
    /// ~/.kube/config when there is one.
    #[arg(long, env = "SLUICE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Settings of a data-plane process (`sluice run` and `sluice dataplane`).
#[derive(Args, Debug, Clone)]
pub struct NodeFlags {
    /// Address the broker ingress listens on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SLUICE_INGRESS_ADDR")]
    pub ingress: SocketAddr,
    /// Address of the admin server (/healthz, /readyz, /metrics, /topology).
    #[arg(long, default_value = "127.0.0.1:9090", env = "SLUICE_ADMIN_ADDR")]
    pub admin: SocketAddr,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = sluice_broker::DEFAULT_MAX_BODY, env = "SLUICE_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Events each in-memory trigger queue holds before the ingress answers 503.
    #[arg(long, default_value_t = sluice_core::topology::ChannelConfig::DEFAULT_MEMORY_CAPACITY, env = "SLUICE_QUEUE_CAPACITY")]
    pub queue_capacity: usize,
    #[command(flatten)]
    pub storage: StorageFlags,
    /// Bytes of events each in-memory broker holds before the ingress answers 503.
    #[arg(long, default_value_t = sluice_core::topology::ChannelConfig::DEFAULT_MEMORY_MAX_BYTES, env = "SLUICE_QUEUE_MAX_BYTES")]
    pub queue_max_bytes: usize,
    /// On SIGTERM / Ctrl-C: how long to keep delivering queued in-memory events (while
    /// producers are answered 503) before exiting. ISO 8601 (PT30S) or seconds.
    #[arg(long, default_value = "PT30S", env = "SLUICE_DRAIN_PERIOD", value_parser = parse_period)]
    pub drain_period: std::time::Duration,
    #[command(flatten)]
    pub tls: TlsFlags,
    #[command(flatten)]
    pub oidc: crate::oidc::OidcFlags,
}

/// HTTPS at the ingress (SEMANTICS.md §11, README "Security").
#[derive(Args, Debug, Clone)]
pub struct TlsFlags {
    /// Address the ingress serves HTTPS on (with --tls-cert and --tls-key).
    #[arg(long, default_value = "127.0.0.1:8443", env = "SLUICE_HTTPS_ADDR")]
    pub https_addr: SocketAddr,
    /// The ingress's TLS certificate chain (PEM, the server certificate first). Read again
    /// whenever it changes.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signed --tls-cert: shown as the `CACerts` of https
    /// addresses, and trusted by Sluice's own deliveries to its ingress (which strict mode
    /// makes https).
    #[arg(long, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Knative's transport-encryption: disabled (http only), permissive (http and https)
    /// or strict (https only; plain http answers 404). Default: permissive with
    /// --tls-cert, else disabled. `sluice dataplane`: the `config-features` ConfigMap
    /// decides; this is the mode while it says nothing (default there: disabled, as Knative).
    #[arg(long, env = "SLUICE_TRANSPORT_ENCRYPTION")]
    pub transport_encryption: Option<sluice_core::transport::TransportEncryption>,
}

/// What [`crate::run::serve`] needs of the flags.
pub type NodeArgs = NodeFlags;

/// Where Kafka and NATS brokers keep their events when their ConfigMap does not say. The
/// controller needs them too: it validates brokers exactly as the data plane does.
#[derive(Args, Debug, Clone, Default)]
pub struct StorageFlags {
    /// Kafka bootstrap servers for Kafka brokers whose ConfigMap names none.
    #[arg(long, env = "SLUICE_KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: Option<String>,
    /// NATS server URL for NATS JetStream brokers whose ConfigMap names none.
    #[arg(long, env = "SLUICE_NATS_URL")]
    pub nats_url: Option<String>,
}

impl StorageFlags {
    pub fn apply_to(&self, defaults: &mut sluice_crds::Defaults) {
        defaults.kafka_bootstrap_servers = self.kafka_bootstrap_servers.clone();
        defaults.nats_url = self.nats_url.clone();
    }
}

impl NodeFlags {
    /// The channel settings these flags give to resources that do not set their own.
    pub fn apply_to(&self, defaults: &mut sluice_crds::Defaults) {
        self.storage.apply_to(defaults);
        defaults.memory_capacity = self.queue_capacity.max(1);
        defaults.memory_max_bytes = self.queue_max_bytes.max(1);
    }
}

impl RunArgs {
    pub fn node(&self) -> NodeArgs {
        self.node.clone()
    }
}

/// How to reach the Kubernetes API server and where Sluice lives in the cluster.
#[derive(Args, Debug, Clone)]
pub struct KubeFlags {
    /// A kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster
    /// ServiceAccount.
    #[arg(long, env = "SLUICE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Sluice's own namespace (the ingress Service, the leader Lease).
    #[arg(long, default_value = "sluice-system", env = "SLUICE_SYSTEM_NAMESPACE")]
    pub system_namespace: String,
    /// The Service in front of the data plane's ingress; Broker addresses are
    /// `http://<service>.<system namespace>.svc.<cluster domain>/<ns>/<name>`.
    #[arg(long, default_value = "sluice-ingress", env = "SLUICE_INGRESS_SERVICE")]
    pub ingress_service: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local", env = "SLUICE_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
    /// The port of the ingress Service's https port (https addresses are
    /// `https://<service>.<namespace>.svc.<cluster domain>[:port]/<ns>/<name>`).
    #[arg(long, default_value_t = 443, env = "SLUICE_INGRESS_HTTPS_PORT")]
    pub ingress_https_port: u16,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub kube: KubeFlags,
    #[command(flatten)]
    pub storage: StorageFlags,
    /// This replica's name in the leader Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The Service in front of the data plane's admin port (port named `admin`): its ready
    /// endpoints are the data-plane replicas whose reports become status.
    #[arg(long, default_value = "sluice-admin", env = "SLUICE_DATAPLANE_SERVICE")]
    pub dataplane_service: String,
    /// Admin addresses (`host:port`) of the data-plane replicas, instead of the ready
    /// endpoints of `--dataplane-service`: for a controller run outside the cluster.
    /// Repeatable.
    #[arg(
        long = "dataplane-admin",
        env = "SLUICE_DATAPLANE_ADMIN",
        value_delimiter = ','
    )]
    pub dataplane_admin: Vec<String>,
    /// Address of the controller's health server (/healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9091", env = "SLUICE_ADMIN_ADDR")]
    pub admin: SocketAddr,
    /// The CA certificate (PEM) of the data plane's ingress certificate: written as the
    /// `CACerts` of https addresses when `config-features` turns transport-encryption on.
    /// Read on every pass, so a renewed CA is published without a restart.
    #[arg(long, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DataplaneArgs {
    #[command(flatten)]
    pub kube: KubeFlags,
    #[command(flatten)]
    pub node: NodeFlags,
}

fn parse_period(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs >= 0.0 && secs.is_finite() => Ok(std::time::Duration::from_secs_f64(secs)),
        Ok(_) => Err(format!("{s} is not a number of seconds >= 0")),
        Err(_) => sluice_crds::duration::parse(s),
    }
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Where to send, e.g. http://127.0.0.1:8080/default/default
    pub url: String,
    /// The event's `type`.
    #[arg(long = "type")]
    pub ty: String,
    /// The event's `source`.
    #[arg(long)]
    pub source: String,
    /// The event's `id` (default: a fresh UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// The event's data.
    #[arg(long)]
    pub data: Option<String>,
    /// `datacontenttype` (default application/json when --data is given).
    #[arg(long = "content-type")]
    pub content_type: Option<String>,
    /// An extension attribute, KEY=VALUE. Repeatable.
    #[arg(long = "ext", value_parser = parse_kv)]
    pub ext: Vec<(String, String)>,
    /// Send in structured mode (application/cloudevents+json) instead of binary.
    #[arg(long)]
    pub structured: bool,
    /// For an https URL: also trust the CA certificates in this PEM file (besides the
    /// system roots and $SLUICE_TRUST_BUNDLE).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Spec version, 1.0 or 0.3.
    #[arg(long, default_value = "1.0")]
    pub specversion: String,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Args, Debug)]
pub struct DisplayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081", env = "SLUICE_DISPLAY_ADDR")]
    pub listen: SocketAddr,
    /// Answer every request with this status instead of 200 (to try retries and dead letters).
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// Answer each event with a copy of it (a reply), its `source` set to the path it was
    /// received on: a step of a Sequence or a Parallel filter that passes everything.
    #[arg(long, conflicts_with = "status")]
    pub reply: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to show: every object (default), or `eventtypes` (the event types seen at
    /// each broker and channel).
    #[arg(value_parser = ["all", "eventtypes"], default_value = "all")]
    pub what: String,
    /// Admin address of the running sluice.
    #[arg(long, default_value = "127.0.0.1:9090", env = "SLUICE_ADMIN_ADDR")]
    pub admin: SocketAddr,
}
