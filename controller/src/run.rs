//! The controller loop: watch, build, look at the data plane, write what changed.
//!
//! Status depends on more than the object itself (a Trigger's BrokerReady is its Broker's
//! Ready; a Broker's IngressReady is the data plane's), so rather than one reconcile per
//! object the loop recomputes every status from one snapshot whenever anything changes (and
//! every few seconds, to see the data plane), and patches only the objects whose status
//! differs. The cost is O(objects) per change after a short debounce, which is fine for the
//! thousands of objects a cluster has; it never writes the same status twice.

use crate::cluster::Cluster;
use crate::conditions::{conditions, Condition};
use crate::dataplane::{observe, DataplaneView, Replicas};
use crate::leader::{elect, LeaseConfig};
use crate::status::{desired, Addressing, World};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::{json, Value};
use sluice_core::topology::{Kind, ObjectRef};
use sluice_crds::k8s_sources::{ApiServerSource, ContainerSource, SinkBinding};
use sluice_crds::sources::{KafkaSource, PingSource};
use sluice_crds::types::{Broker, Trigger};
use sluice_crds::{flows, messaging, transform};
use sluice_crds::{Loaded, Resource as R};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The field manager of every status write (server-side apply).
pub const FIELD_MANAGER: &str = "sluice-controller";

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub addressing: Addressing,
    /// What resources do not say (storage servers, the ingress URL): the data plane's, so
    /// both validate the same way.
    pub defaults: sluice_crds::Defaults,
    /// Where the leader Lease lives (the controller's own namespace).
    pub lease: LeaseConfig,
    /// How often the data plane is looked at when nothing else changes.
    pub resync: Duration,
    /// Where the data-plane replicas are.
    pub replicas: Replicas,
    /// The ingress certificate's CA (PEM file), published as `CACerts` of https addresses;
    /// read on every pass.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Runs until `stop` is cancelled.
pub async fn run(client: Client, cfg: ControllerConfig, stop: CancellationToken) {
    let (cluster, _watches) =
        Cluster::watch_kinds(client.clone(), crate::cluster::controller_kinds());
    // Pods Sluice writes: ContainerSource Deployments (and their status).
    let mut deployments = crate::containersource::Deployments::watch(&client);
    let mut deployment_changes = deployments.changes();
    let mut bindings = crate::sinkbinding::Bindings::default();
    let mut leading = elect(client.clone(), cfg.lease.clone(), stop.clone());
    let mut changes = cluster.changes();
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = cluster.ready() => {}
    }
    tracing::info!("every kind listed; writing status while leading");
    let http = reqwest::Client::new();
    // What we last wrote, by object: a write we made comes back through the watch and must
    // not cause another.
    let mut written: BTreeMap<ObjectRef, Value> = BTreeMap::new();
    let mut tick = tokio::time::interval(cfg.resync);
    // Discovery of the kinds refs name, kept between passes.
    let mut kinds = std::collections::HashMap::new();
    let mut addressing = cfg.addressing.clone();
    // Senders' OIDC ServiceAccounts applied so far.
    let mut accounts = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
            r = deployment_changes.changed() => if r.is_err() { break },
            r = leading.changed() => {
                if r.is_err() { break }
                // Someone else may have written while we were not leading.
                written.clear();
                deployments.forget();
                bindings.forget();
                accounts.clear();
            }
            _ = tick.tick() => {}
        }
        if !*leading.borrow() {
            continue;
        }
        // Gather a burst of changes into one pass.
        tokio::time::sleep(Duration::from_millis(100)).await;
        changes.borrow_and_update();
        let (resources, unreadable) = cluster.snapshot();
        for e in &unreadable {
            tracing::warn!(problem = %e, "an object cannot be read; it gets no status");
        }
        let mut defaults = cfg.defaults.clone();
        let refs = sluice_crds::external_refs(&resources);
        defaults.addressables = crate::resolve::lookup(&client, &refs, &mut kinds).await;
        // OIDC follows `config-features` in the system namespace (EventPolicies are refused
        // while it is off); a flag or the ConfigMap can turn it on.
        defaults.oidc = cfg.defaults.oidc
            || crate::oidc::features_in(&resources, &cfg.addressing.system_namespace)
                .authentication_oidc;
        let (topology, errors) = sluice_crds::build_lenient(&resources, &defaults);
        let view: DataplaneView = observe(&client, &http, &cfg.replicas).await;
        tls_settings(&mut addressing, &resources, cfg.tls_ca.as_deref());
        let mut want = desired(&World {
            resources: &resources,
            topology: &topology,
            errors: &errors,
            dataplane: &view,
            addressing: &addressing,
        });
        // The kinds pods run (ContainerSource, SinkBinding): what to write into the pods,
        // and their status.
        let bound = sluice_crds::bound_sinks(&resources, &defaults);
        deployments
            .reconcile(&client, &resources, &bound, &mut want)
            .await;
        bindings
            .reconcile(&client, &resources, &bound, &mut want)
            .await;
        let now = now();
        for r in &resources {
            let obj = r.object();
            let Some(d) = want.get(&obj) else { continue };
            let current = current_status(r);
            let previous: Vec<Condition> = current
                .get("conditions")
                .cloned()
                .and_then(|c| serde_json::from_value(c).ok())
                .unwrap_or_default();
            let mut status = serde_json::Map::from_iter(d.fields.clone());
            status.insert("observedGeneration".into(), d.generation.into());
            status.insert(
                "conditions".into(),
                serde_json::to_value(conditions(&d.conditions, &previous, &now))
                    .expect("conditions serialize"),
            );
            let status = Value::Object(status);
            let unchanged = written
                .get(&obj)
                .map_or(current == status, |w| *w == status);
            if unchanged {
                continue;
            }
            match patch_status(&client, r, &status).await {
                Ok(()) => {
                    written.insert(obj, status);
                }
                Err(e) => tracing::warn!(
                    object = %format!("{} {}", obj.kind.as_str(), obj.key),
                    error = %e,
                    "cannot write status (retried on the next pass)"
                ),
            }
        }
        written.retain(|o, _| want.contains_key(o));
        if defaults.oidc {
            let senders = crate::oidc::sender_accounts(&resources);
            for a in &senders {
                if accounts.contains(a) {
                    continue;
                }
                match crate::oidc::apply_service_account(&client, a).await {
                    Ok(()) => {
                        accounts.insert(a.clone());
                    }
                    Err(e) => tracing::warn!(
                        service_account = %format!("{}/{}", a.namespace, a.name),
                        error = %e,
                        "cannot create a sender's OIDC ServiceAccount (retried on the next pass)"
                    ),
                }
            }
            accounts.retain(|a| senders.contains(a));
        }
    }
}

/// `transport-encryption` from `config-features` and the CA from its file, into the
/// addressing of this pass. A value that cannot be read keeps the previous one (logged).
fn tls_settings(addressing: &mut Addressing, resources: &[Loaded], ca: Option<&std::path::Path>) {
    match crate::features::transport_encryption(resources, &addressing.system_namespace) {
        Ok(mode) => addressing.transport = mode.unwrap_or_default(),
        Err(e) => tracing::warn!(
            error = %e,
            kept = %addressing.transport,
            "transport-encryption not understood; keeping the previous value"
        ),
    }
    if let Some(path) = ca {
        match std::fs::read_to_string(path) {
            Ok(pem) => addressing.ca_certs = Some(pem),
            Err(e) => tracing::warn!(
                file = %path.display(),
                error = %e,
                "cannot read --tls-ca; https addresses keep the CACerts last read"
            ),
        }
    }
}

fn now() -> String {
    let t = Timestamp::now();
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// The object's status as the API server has it.
fn current_status(r: &Loaded) -> Value {
    let v = match &r.resource {
        R::Broker(o) => serde_json::to_value(&o.status),
        R::Trigger(o) => serde_json::to_value(&o.status),
        R::PingSource(o) => serde_json::to_value(&o.status),
        R::KafkaSource(o) => serde_json::to_value(&o.status),
        R::ApiServerSource(o) => serde_json::to_value(&o.status),
        R::ContainerSource(o) => serde_json::to_value(&o.status),
        R::SinkBinding(o) => serde_json::to_value(&o.status),
        R::Channel(o) => serde_json::to_value(&o.status),
        R::InMemoryChannel(o) => serde_json::to_value(&o.status),
        R::KafkaChannel(o) => serde_json::to_value(&o.status),
        R::NatsJetStreamChannel(o) => serde_json::to_value(&o.status),
        R::Subscription(o) => serde_json::to_value(&o.status),
        R::Sequence(o) => serde_json::to_value(&o.status),
        R::Parallel(o) => serde_json::to_value(&o.status),
        R::EventTransform(o) => serde_json::to_value(&o.status),
        R::EventPolicy(o) => serde_json::to_value(&o.status),
        // ConfigMaps have no status; Services are Knative Serving's in a cluster.
        _ => return Value::Null,
    };
    v.unwrap_or(Value::Null)
}

async fn patch_status(client: &Client, r: &Loaded, status: &Value) -> Result<(), kube::Error> {
    match r.object().kind {
        Kind::Broker => apply::<Broker>(client, r, status).await,
        Kind::Trigger => apply::<Trigger>(client, r, status).await,
        Kind::PingSource => apply::<PingSource>(client, r, status).await,
        Kind::KafkaSource => apply::<KafkaSource>(client, r, status).await,
        Kind::ApiServerSource => apply::<ApiServerSource>(client, r, status).await,
        Kind::ContainerSource => apply::<ContainerSource>(client, r, status).await,
        Kind::SinkBinding => apply::<SinkBinding>(client, r, status).await,
        Kind::Channel => apply::<messaging::Channel>(client, r, status).await,
        Kind::InMemoryChannel => apply::<messaging::InMemoryChannel>(client, r, status).await,
        Kind::KafkaChannel => apply::<messaging::KafkaChannel>(client, r, status).await,
        Kind::NatsJetStreamChannel => {
            apply::<messaging::NatsJetStreamChannel>(client, r, status).await
        }
        Kind::Subscription => apply::<messaging::Subscription>(client, r, status).await,
        Kind::Sequence => apply::<flows::Sequence>(client, r, status).await,
        Kind::Parallel => apply::<flows::Parallel>(client, r, status).await,
        Kind::EventTransform => apply::<transform::EventTransform>(client, r, status).await,
        Kind::EventPolicy => {
            apply::<sluice_crds::eventpolicy::EventPolicy>(client, r, status).await
        }
        _ => Ok(()),
    }
}

/// Server-side apply of the whole status: fields the controller stops setting are removed.
/// Through a `DynamicObject` API: the answer is read as the API server sends it (a Broker
/// without `spec` is valid and would not deserialize into the typed struct).
async fn apply<K>(client: &Client, r: &Loaded, status: &Value) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let ar = kube::api::ApiResource::erase::<K>(&());
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &r.namespace, &ar);
    let body = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "status": status,
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&r.name, &pp, &Patch::Apply(&body))
        .await
        .map(|_| ())
}
