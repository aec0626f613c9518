//! What each object's `status` should say: a pure function of the resources, the topology
//! built from them (the same `sluice_crds::build_lenient` the data plane runs), and what the
//! data-plane replicas report (SEMANTICS.md §8).
//!
//! The result holds the dependent conditions (no times yet: [`crate::conditions`] stamps them
//! against the object's current status) and the other status fields (`address`,
//! `subscriberUri`, `sinkUri`, ...). The kube wiring in [`crate::run`] turns it into a patch.

use crate::conditions::{Cond, State};
use crate::dataplane::DataplaneView;
use serde_json::{json, Map, Value};
use sluice_core::topology::{Key, Kind, ObjectRef, Topology};
use sluice_core::transport::TransportEncryption;
use sluice_crds::{LoadError, Loaded, Resource};
use std::collections::BTreeMap;
use url::Url;

/// Where Sluice's ingress is reachable inside the cluster: addresses are
/// `http://<service>.<namespace>.svc.<cluster domain>/<ns>/<name>` (Knative's path shapes on
/// Sluice's own host, SEMANTICS.md §8).
#[derive(Debug, Clone)]
pub struct Addressing {
    pub ingress_service: String,
    pub system_namespace: String,
    pub cluster_domain: String,
    /// The API server's URL as the data plane reaches it: the `source` of ApiServerSource
    /// events (their status' `ceAttributes`).
    pub api_server_url: Option<String>,
    /// The ingress Service's https port.
    pub https_port: u16,
    /// `transport-encryption` (from `config-features`): which addresses are published.
    pub transport: TransportEncryption,
    /// The PEM of the ingress certificate's CA, published as `CACerts` of https addresses.
    pub ca_certs: Option<String>,
}

impl Default for Addressing {
    fn default() -> Self {
        Addressing {
            ingress_service: "sluice-ingress".into(),
            system_namespace: "sluice-system".into(),
            cluster_domain: "cluster.local".into(),
            api_server_url: None,
            https_port: 443,
            transport: TransportEncryption::Disabled,
            ca_certs: None,
        }
    }
}

impl Addressing {
    /// The ingress base URL, with a trailing slash (what `sluice_crds::Defaults` joins onto).
    pub fn ingress_base(&self) -> Url {
        Url::parse(&format!(
            "http://{}.{}.svc.{}/",
            self.ingress_service, self.system_namespace, self.cluster_domain
        ))
        .expect("service, namespace and cluster domain are DNS names")
    }

    /// The ingress's https base URL, with a trailing slash.
    pub fn https_base(&self) -> Url {
        let port = match self.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        Url::parse(&format!(
            "https://{}.{}.svc.{}{port}/",
            self.ingress_service, self.system_namespace, self.cluster_domain
        ))
        .expect("service, namespace and cluster domain are DNS names")
    }

    /// `address` and `addresses` of an object whose ingress URL is `url` (its http form, or
    /// its https form in strict mode), per `transport-encryption` (SEMANTICS.md §11):
    /// disabled → http; permissive → address http, addresses [https, http]; strict → https.
    /// https entries carry `CACerts` when the CA is known.
    pub fn publish(&self, url: &str, fields: &mut Map<String, Value>) {
        let (http_base, https_base) = (self.ingress_base(), self.https_base());
        let path = url
            .strip_prefix(http_base.as_str())
            .or_else(|| url.strip_prefix(https_base.as_str()));
        let (http, https) = match path {
            Some(p) => (format!("{http_base}{p}"), Some(format!("{https_base}{p}"))),
            // Not on the ingress: published as it is.
            None => (url.to_string(), None),
        };
        let (address, all) = self.transport.addresses(&http, https.as_deref());
        let entry = |a: sluice_core::transport::Address| {
            let mut v = json!({"name": a.name, "url": a.url});
            if let (Some(ca), "https") = (&self.ca_certs, a.name) {
                v["CACerts"] = ca.clone().into();
            }
            v
        };
        fields.insert("address".into(), entry(address));
        fields.insert(
            "addresses".into(),
            Value::Array(all.into_iter().map(entry).collect()),
        );
    }

    pub fn broker_url(&self, key: &Key) -> String {
        format!("{}{}/{}", self.ingress_base(), key.namespace, key.name)
    }

    /// The `sluice_crds` defaults for this cluster: Broker refs resolve to the ingress,
    /// Service refs to `<name>.<ns>.svc.<cluster domain>`.
    pub fn defaults(&self) -> sluice_crds::Defaults {
        let mut d = sluice_crds::Defaults::new(self.ingress_base());
        d.cluster_domain = self.cluster_domain.clone();
        d.kubernetes = true;
        d
    }
}

/// The status one object should have, before condition times are stamped.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub generation: i64,
    pub conditions: Vec<Cond>,
    /// Status fields besides `conditions` and `observedGeneration`.
    pub fields: Map<String, Value>,
}

/// Everything a status is computed from.
pub struct World<'a> {
    pub resources: &'a [Loaded],
    pub topology: &'a Topology,
    pub errors: &'a [LoadError],
    pub dataplane: &'a DataplaneView,
    pub addressing: &'a Addressing,
}

/// Desired status of every object that has one (ConfigMaps have none).
pub fn desired(world: &World) -> BTreeMap<ObjectRef, Desired> {
    let mut errors: BTreeMap<ObjectRef, Vec<&LoadError>> = BTreeMap::new();
    for e in world.errors {
        if let Some(o) = e.object.as_deref() {
            errors.entry(o.clone()).or_default().push(e);
        }
    }
    let no_errors = Vec::new();
    let mut out = BTreeMap::new();
    // Brokers first: a Trigger's BrokerReady mirrors its Broker's Ready.
    for r in world.resources {
        if let Resource::Broker(b) = &r.resource {
            let obj = r.object();
            let errs = errors.get(&obj).unwrap_or(&no_errors);
            let d = broker(world, r, b, errs);
            out.insert(obj, d);
        }
    }
    for r in world.resources {
        let obj = r.object();
        let errs = errors.get(&obj).unwrap_or(&no_errors);
        let d = match &r.resource {
            Resource::Trigger(t) => trigger(world, r, t, errs, &out),
            Resource::PingSource(p) => source(world, r, p.metadata.generation, errs, "Deployed"),
            Resource::KafkaSource(k) => {
                source(world, r, k.metadata.generation, errs, "ConsumerGroup")
            }
            Resource::ApiServerSource(a) => {
                let mut d = source(world, r, a.metadata.generation, errs, "Deployed");
                apiserver_source(world, a, &mut d);
                d
            }
            Resource::Channel(c) => graph_part(world, r, c.metadata.generation, errs),
            Resource::InMemoryChannel(c) => graph_part(world, r, c.metadata.generation, errs),
            Resource::KafkaChannel(c) => graph_part(world, r, c.metadata.generation, errs),
            Resource::NatsJetStreamChannel(c) => graph_part(world, r, c.metadata.generation, errs),
            Resource::Subscription(x) => graph_part(world, r, x.metadata.generation, errs),
            Resource::Sequence(x) => graph_part(world, r, x.metadata.generation, errs),
            Resource::Parallel(x) => graph_part(world, r, x.metadata.generation, errs),
            Resource::EventTransform(x) => graph_part(world, r, x.metadata.generation, errs),
            Resource::EventPolicy(p) => event_policy(world, r, p.metadata.generation, errs),
            // Brokers are done above; ContainerSource and Service run in embedded mode only.
            _ => continue,
        };
        out.insert(obj, d);
    }
    out
}

/// An EventPolicy: `AuthenticationEnabled` (refused while OIDC is off) and
/// `SubjectsResolved` (its spec compiles), and `status.from`: the subjects it admits.
fn event_policy(
    world: &World,
    r: &Loaded,
    generation: Option<i64>,
    errs: &[&LoadError],
) -> Desired {
    let oidc_off = errs
        .iter()
        .any(|e| e.field.is_none() && e.message.contains("authentication-oidc"));
    let authn = if oidc_off {
        Cond::failed(
            "AuthenticationEnabled",
            "AuthenticationOIDCDisabled",
            "EventPolicies need authentication-oidc: enabled in config-features",
        )
    } else {
        Cond::ok("AuthenticationEnabled")
    };
    let subjects = match errs.first() {
        Some(_) if oidc_off => Cond::unknown(
            "SubjectsResolved",
            "AuthenticationOIDCDisabled",
            "not resolved while OIDC authentication is off",
        ),
        Some(e) => Cond::failed("SubjectsResolved", "InvalidSpec", message(e)),
        None => Cond::ok("SubjectsResolved"),
    };
    let mut fields = Map::new();
    let key = Key::new(&r.namespace, &r.name);
    if let Some(p) = world.topology.event_policies.get(&key) {
        fields.insert("from".into(), json!(p.from));
    }
    Desired {
        generation: generation.unwrap_or(0),
        conditions: vec![authn, subjects],
        fields,
    }
}

/// Knative's reason when OIDC authentication is off (the condition holds trivially).
const OIDC_DISABLED: &str = "authentication-oidc feature disabled";

fn broker(
    world: &World,
    r: &Loaded,
    b: &sluice_crds::types::Broker,
    errs: &[&LoadError],
) -> Desired {
    let key = Key::new(&r.namespace, &r.name);
    let obj = r.object();
    let url = world.addressing.broker_url(&key);
    let dp = world.dataplane;
    let mut conds = vec![
        Cond::ok("Addressable"),
        dp.endpoints_condition("IngressReady"),
        dp.endpoints_condition("FilterReady"),
        Cond::ok_because(
            "EventPoliciesReady",
            "DefaultAuthorizationMode",
            "no EventPolicy applies: the default authorization mode allows every sender",
        ),
    ];
    // The channel: a spec problem (bad config, unknown class) is the Broker's own; otherwise
    // what the replicas that run it say.
    let channel = match errs.iter().find(|e| !is_dead_letter(e)) {
        Some(e) => Cond::failed("TriggerChannelReady", "ChannelTemplateFailed", message(e)),
        None => dp.object_condition("TriggerChannelReady", &obj),
    };
    conds.push(channel);
    let mut fields = Map::new();
    let dls = dead_letter(
        world,
        errs,
        b.spec
            .delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
            .is_some(),
        world
            .topology
            .brokers
            .get(&key)
            .and_then(|b| b.delivery.as_ref())
            .and_then(|d| d.dead_letter_sink.as_ref())
            .map(|e| e.to_string()),
        &mut fields,
    );
    conds.push(dls);
    world.addressing.publish(&url, &mut fields);
    Desired {
        generation: b.metadata.generation.unwrap_or(0),
        conditions: conds,
        fields,
    }
}

fn trigger(
    world: &World,
    r: &Loaded,
    t: &sluice_crds::types::Trigger,
    errs: &[&LoadError],
    brokers: &BTreeMap<ObjectRef, Desired>,
) -> Desired {
    let obj = r.object();
    let broker_obj = ObjectRef::broker(Key::new(&r.namespace, &t.spec.broker));
    let broker_ready = match brokers.get(&broker_obj) {
        None => Cond::failed(
            "BrokerReady",
            "BrokerDoesNotExist",
            format!(
                "Broker {:?} does not exist in namespace {:?}",
                t.spec.broker, r.namespace
            ),
        ),
        Some(b) => {
            let ready = crate::conditions::ready_of(&b.conditions, &[]);
            Cond {
                type_: "BrokerReady",
                ..ready
            }
        }
    };
    let sub = world.topology.subscriptions.get(&obj);
    let mut fields = Map::new();
    let subscriber_errs: Vec<_> = errs
        .iter()
        .filter(|e| field_starts(e, "spec.subscriber"))
        .collect();
    let subscriber = match (subscriber_errs.first(), sub) {
        (Some(e), _) => Cond::failed(
            "SubscriberResolved",
            "Unable to get the Subscriber's URI",
            message(e),
        ),
        (None, Some(s)) => {
            fields.insert("subscriberUri".into(), s.subscriber.to_string().into());
            Cond::ok("SubscriberResolved")
        }
        (None, None) => Cond::unknown(
            "SubscriberResolved",
            "NotResolved",
            "the subscriber is resolved once the Trigger's other problems are fixed",
        ),
    };
    let trigger_dls = t
        .spec
        .delivery
        .as_ref()
        .and_then(|d| d.dead_letter_sink.as_ref())
        .is_some();
    let dls = dead_letter(
        world,
        errs,
        trigger_dls || sub.is_some_and(|s| s.delivery.dead_letter_sink.is_some()),
        sub.and_then(|s| s.delivery.dead_letter_sink.as_ref())
            .map(|e| e.to_string()),
        &mut fields,
    );
    // Any other spec problem (a filter that does not compile, a bad annotation) means the
    // data plane does not run the subscription.
    let other = errs
        .iter()
        .find(|e| !field_starts(e, "spec.subscriber") && !is_dead_letter(e) && !is_broker_ref(e));
    let subscription = match other {
        Some(e) => Cond::failed("SubscriptionReady", "InvalidSpec", message(e)),
        None if brokers.contains_key(&broker_obj) => {
            world.dataplane.object_condition("SubscriptionReady", &obj)
        }
        None => Cond::unknown(
            "SubscriptionReady",
            "BrokerDoesNotExist",
            "waiting for the Broker",
        ),
    };
    Desired {
        generation: t.metadata.generation.unwrap_or(0),
        conditions: vec![
            broker_ready,
            subscriber,
            dls,
            subscription,
            Cond::ok_because(
                "DependencyReady",
                "DependencyNotConfigured",
                "no knative.dev/dependency annotation",
            ),
            Cond::ok_because("OIDCIdentityCreated", OIDC_DISABLED, ""),
        ],
        fields,
    }
}

/// PingSource and KafkaSource: SinkProvided and the condition that says the data plane runs
/// the source (`Deployed` / `ConsumerGroup`).
fn source(
    world: &World,
    r: &Loaded,
    generation: Option<i64>,
    errs: &[&LoadError],
    running: &'static str,
) -> Desired {
    let obj = r.object();
    let mut fields = Map::new();
    let key = Key::new(&r.namespace, &r.name);
    let sink = match obj.kind {
        Kind::PingSource => world
            .topology
            .ping_sources
            .get(&key)
            .map(|p| p.sink.to_string()),
        Kind::ApiServerSource => world
            .topology
            .apiserver_sources
            .get(&key)
            .map(|p| p.sink.to_string()),
        _ => world
            .topology
            .kafka_sources
            .get(&key)
            .map(|k| k.sink.to_string()),
    };
    let sink_errs: Vec<_> = errs
        .iter()
        .filter(|e| field_starts(e, "spec.sink"))
        .collect();
    let sink_cond = match (sink_errs.first(), &sink) {
        (Some(e), _) => Cond::failed("SinkProvided", "NotFound", message(e)),
        (None, Some(s)) => {
            fields.insert("sinkUri".into(), s.clone().into());
            Cond::ok("SinkProvided")
        }
        (None, None) => Cond::unknown(
            "SinkProvided",
            "NotResolved",
            "the sink is resolved once the source's other problems are fixed",
        ),
    };
    let other = errs.iter().find(|e| !field_starts(e, "spec.sink"));
    let running_cond = match other {
        Some(e) => Cond::failed(running, "InvalidSpec", message(e)),
        None => world.dataplane.object_condition(running, &obj),
    };
    if obj.kind == Kind::PingSource {
        fields.insert(
            "ceAttributes".into(),
            json!([{
                "type": "dev.knative.sources.ping",
                "source": format!("/apis/v1/namespaces/{}/pingsources/{}", r.namespace, r.name),
            }]),
        );
    }
    let mut conditions = vec![sink_cond, running_cond];
    if matches!(obj.kind, Kind::PingSource | Kind::ApiServerSource) {
        conditions.push(Cond::ok_because("OIDCIdentityCreated", OIDC_DISABLED, ""));
    }
    Desired {
        generation: generation.unwrap_or(0),
        conditions,
        fields,
    }
}

/// The reason a data plane reports for an ApiServerSource whose identity may not get, list
/// and watch what it should (its message says which verbs on which resource).
pub const NO_SUFFICIENT_PERMISSIONS: &str = "NoSufficientPermissions";

/// ApiServerSource beyond the common source conditions: `SufficientPermissions` (a denied
/// permission check is reported by the data plane under [`NO_SUFFICIENT_PERMISSIONS`]; the
/// source is then deployed, waiting for the rights) and `ceAttributes` (the mode's three
/// types, `source` = the API server URL).
fn apiserver_source(world: &World, a: &sluice_crds::k8s_sources::ApiServerSource, d: &mut Desired) {
    let deployed = d.conditions.iter_mut().find(|c| c.type_ == "Deployed");
    let permissions = match deployed {
        Some(c) if c.reason == NO_SUFFICIENT_PERMISSIONS => {
            let denied = Cond::failed(
                "SufficientPermissions",
                NO_SUFFICIENT_PERMISSIONS,
                c.message.clone(),
            );
            *c = Cond::ok("Deployed");
            denied
        }
        Some(c) if c.status == State::True => Cond::ok("SufficientPermissions"),
        _ => Cond::unknown(
            "SufficientPermissions",
            "NotChecked",
            "the permissions are checked when the data plane runs the source",
        ),
    };
    d.conditions.push(permissions);
    let mode = match a.spec.mode.as_deref() {
        Some("Resource") => "resource",
        _ => "ref",
    };
    let source = world.addressing.api_server_url.clone().unwrap_or_default();
    let attrs: Vec<Value> = ["add", "update", "delete"]
        .iter()
        .map(|c| json!({"type": format!("dev.knative.apiserver.{mode}.{c}"), "source": source}))
        .collect();
    d.fields.insert("ceAttributes".into(), Value::Array(attrs));
}

/// Channels, Subscriptions, Sequences, Parallels and EventTransforms: the part of the graph
/// the data plane runs for them (its report, or the spec problem that stops it) and, for the
/// addressable ones, their address. The running condition is named as Knative names it
/// (Channel `BackingChannelReady`, Subscription `AddedToChannel`, flows `SubscriptionsReady`).
fn graph_part(world: &World, r: &Loaded, generation: Option<i64>, errs: &[&LoadError]) -> Desired {
    let obj = r.object();
    let key = Key::new(&r.namespace, &r.name);
    let t = world.topology;
    let running: &'static str = match obj.kind {
        Kind::Subscription => "AddedToChannel",
        Kind::Sequence | Kind::Parallel => "SubscriptionsReady",
        Kind::EventTransform => "TransformReady",
        _ => "BackingChannelReady",
    };
    let cond = match errs.first() {
        Some(e) => Cond::failed(running, "InvalidSpec", message(e)),
        None => world.dataplane.object_condition(running, &obj),
    };
    let address = match obj.kind {
        Kind::Sequence | Kind::Parallel => t
            .flows
            .get(&obj)
            .and_then(|f| t.channels.get(&f.address))
            .map(|c| c.address.to_string()),
        Kind::EventTransform => t.transforms.get(&key).map(|x| x.address.to_string()),
        Kind::Subscription => None,
        _ => t.channels.get(&key).map(|c| c.address.to_string()),
    };
    let mut fields = Map::new();
    let mut conditions = vec![cond];
    if obj.kind != Kind::Subscription {
        conditions.push(match &address {
            Some(_) => Cond::ok("Addressable"),
            None => Cond::unknown("Addressable", "NoAddress", "not built yet"),
        });
    }
    if let Some(url) = address {
        world.addressing.publish(&url, &mut fields);
    }
    Desired {
        generation: generation.unwrap_or(0),
        conditions,
        fields,
    }
}

/// `DeadLetterSinkResolved`, and `deadLetterSinkUri` when there is one.
fn dead_letter(
    _world: &World,
    errs: &[&LoadError],
    configured: bool,
    resolved: Option<String>,
    fields: &mut Map<String, Value>,
) -> Cond {
    if let Some(e) = errs.iter().find(|e| is_dead_letter(e)) {
        return Cond::failed(
            "DeadLetterSinkResolved",
            "Unable to get the dead letter sink's URI",
            message(e),
        );
    }
    match resolved {
        Some(uri) => {
            fields.insert("deadLetterSinkUri".into(), uri.into());
            Cond::ok("DeadLetterSinkResolved")
        }
        None if configured => Cond::unknown(
            "DeadLetterSinkResolved",
            "NotResolved",
            "the dead letter sink is resolved once the other problems are fixed",
        ),
        None => Cond::ok_because(
            "DeadLetterSinkResolved",
            "DeadLetterSinkNotConfigured",
            "no dead letter sink is configured",
        ),
    }
}

fn field_starts(e: &LoadError, prefix: &str) -> bool {
    e.field.as_deref().is_some_and(|f| f.starts_with(prefix))
}

fn is_dead_letter(e: &LoadError) -> bool {
    field_starts(e, "spec.delivery.deadLetterSink")
}

fn is_broker_ref(e: &LoadError) -> bool {
    e.field.as_deref() == Some("spec.broker")
}

/// The message of a spec problem, without the file-oriented origin of embedded mode.
pub(crate) fn message(e: &LoadError) -> String {
    match &e.field {
        Some(f) => format!("field `{f}`: {}", e.message),
        None => e.message.clone(),
    }
}

impl DataplaneView {
    /// `IngressReady` / `FilterReady`: some data-plane replica is ready to serve.
    pub fn endpoints_condition(&self, type_: &'static str) -> Cond {
        if self.ready_endpoints > 0 {
            Cond::ok(type_)
        } else {
            Cond::failed(
                type_,
                "EndpointSlicesUnavailable",
                self.problem.clone().unwrap_or_else(|| {
                    "no ready data-plane endpoint: is the sluice-dataplane Deployment running?"
                        .into()
                }),
            )
        }
    }

    /// What the replicas say of one object: False if any says False, True if every replica
    /// that answered says True, Unknown if none knows it yet.
    pub fn object_condition(&self, type_: &'static str, obj: &ObjectRef) -> Cond {
        let mut reports = self.replicas.iter().filter_map(|r| r.objects.get(obj));
        let mut any = false;
        let mut unknown = None;
        for s in reports.by_ref() {
            any = true;
            match s.state {
                State::False => return Cond::failed(type_, &s.reason, s.message.clone()),
                State::Unknown => unknown = Some(s),
                State::True => {}
            }
        }
        match (any, unknown) {
            (_, Some(s)) => Cond::unknown(type_, &s.reason, s.message.clone()),
            (true, None) => Cond::ok(type_),
            (false, None) if self.replicas.is_empty() => Cond::unknown(
                type_,
                "DataPlaneUnavailable",
                self.problem
                    .clone()
                    .unwrap_or_else(|| "no data-plane replica has reported yet".into()),
            ),
            (false, None) => Cond::unknown(
                type_,
                "NotReconciled",
                "the data-plane replicas have not applied this object yet",
            ),
        }
    }
}

#[cfg(test)]
mod apiserver_source_tests {
    use super::*;
    use crate::dataplane::{ReplicaReport, Reported};

    const YAML: &str = r#"apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {name: watch, namespace: ns, generation: 2}
spec:
  mode: Resource
  resources: [{apiVersion: v1, kind: ConfigMap}]
  sink: {uri: "http://sink/"}
"#;

    fn desired_with(report: Option<Reported>) -> Desired {
        let resources = sluice_crds::load::parse_yaml(YAML, "f").unwrap();
        let addressing = Addressing {
            api_server_url: Some("https://10.0.0.1:443".into()),
            ..Addressing::default()
        };
        let (topology, errors) = sluice_crds::build_lenient(&resources, &addressing.defaults());
        let obj = ObjectRef::new(Kind::ApiServerSource, Key::new("ns", "watch"));
        let dataplane = DataplaneView {
            ready_endpoints: 1,
            replicas: vec![ReplicaReport {
                admin: "a".into(),
                objects: report.into_iter().map(|r| (obj.clone(), r)).collect(),
            }],
            problem: None,
        };
        let world = World {
            resources: &resources,
            topology: &topology,
            errors: &errors,
            dataplane: &dataplane,
            addressing: &addressing,
        };
        desired(&world).remove(&obj).expect("a status")
    }

    fn cond<'a>(d: &'a Desired, t: &str) -> &'a Cond {
        d.conditions.iter().find(|c| c.type_ == t).expect(t)
    }

    #[test]
    fn running_source_has_sufficient_permissions_and_the_modes_types() {
        let d = desired_with(Some(Reported {
            state: State::True,
            reason: String::new(),
            message: String::new(),
        }));
        for t in [
            "SinkProvided",
            "Deployed",
            "SufficientPermissions",
            "OIDCIdentityCreated",
        ] {
            assert_eq!(cond(&d, t).status, State::True, "{t}");
        }
        assert_eq!(d.generation, 2);
        assert_eq!(d.fields["sinkUri"], "http://sink/");
        assert_eq!(
            d.fields["ceAttributes"],
            json!([
                {"type": "dev.knative.apiserver.resource.add", "source": "https://10.0.0.1:443"},
                {"type": "dev.knative.apiserver.resource.update", "source": "https://10.0.0.1:443"},
                {"type": "dev.knative.apiserver.resource.delete", "source": "https://10.0.0.1:443"},
            ])
        );
    }

    #[test]
    fn a_denied_permission_check_is_sufficient_permissions_false() {
        let msg = "User system:serviceaccount:ns:default cannot list, watch resource \"configmaps\" in API group \"\" in namespace \"ns\"";
        let d = desired_with(Some(Reported {
            state: State::False,
            reason: NO_SUFFICIENT_PERMISSIONS.into(),
            message: msg.into(),
        }));
        let p = cond(&d, "SufficientPermissions");
        assert_eq!((p.status, p.message.as_str()), (State::False, msg));
        assert_eq!(cond(&d, "Deployed").status, State::True);
        // Not reported yet: unknown, not a guess.
        let d = desired_with(None);
        assert_eq!(cond(&d, "SufficientPermissions").status, State::Unknown);
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    /// SEMANTICS.md §11: what a Broker and a Channel publish in each transport-encryption
    /// mode, with the CA as `CACerts` of https entries.
    #[test]
    fn addresses_follow_transport_encryption() {
        let http = "http://sluice-ingress.sluice-system.svc.cluster.local/ns/b";
        let https = "https://sluice-ingress.sluice-system.svc.cluster.local/ns/b";
        let ca = "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n";
        let h = json!({"name": "http", "url": http});
        let s = json!({"name": "https", "url": https, "CACerts": ca});
        let cases = [
            (TransportEncryption::Disabled, http, h.clone(), json!([h])),
            (
                TransportEncryption::Permissive,
                http,
                h.clone(),
                json!([s, h]),
            ),
            (TransportEncryption::Strict, http, s.clone(), json!([s])),
            // The data plane builds https addresses in strict mode: the same result.
            (TransportEncryption::Strict, https, s.clone(), json!([s])),
        ];
        for (mode, url, address, addresses) in cases {
            let a = Addressing {
                transport: mode,
                ca_certs: Some(ca.into()),
                ..Addressing::default()
            };
            let mut fields = Map::new();
            a.publish(url, &mut fields);
            assert_eq!(fields["address"], address, "{mode}");
            assert_eq!(fields["addresses"], addresses, "{mode}");
        }
        // Another https port shows in the URL; no CA known → no CACerts.
        let a = Addressing {
            transport: TransportEncryption::Strict,
            https_port: 8443,
            ..Addressing::default()
        };
        let mut fields = Map::new();
        a.publish(http, &mut fields);
        assert_eq!(
            fields["address"],
            json!({"name": "https", "url": "https://sluice-ingress.sluice-system.svc.cluster.local:8443/ns/b"})
        );
    }

    /// The whole path: a Broker's desired status in permissive mode.
    #[test]
    fn a_broker_publishes_https_in_permissive_mode() {
        let yaml = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b, namespace: ns}\n";
        let resources = sluice_crds::load::parse_yaml(yaml, "f").unwrap();
        let addressing = Addressing {
            transport: TransportEncryption::Permissive,
            ..Addressing::default()
        };
        let (topology, errors) = sluice_crds::build_lenient(&resources, &addressing.defaults());
        let dataplane = DataplaneView {
            ready_endpoints: 1,
            replicas: vec![],
            problem: None,
        };
        let world = World {
            resources: &resources,
            topology: &topology,
            errors: &errors,
            dataplane: &dataplane,
            addressing: &addressing,
        };
        let d = desired(&world)
            .remove(&ObjectRef::broker(Key::new("ns", "b")))
            .unwrap();
        assert_eq!(
            d.fields["address"]["url"],
            "http://sluice-ingress.sluice-system.svc.cluster.local/ns/b"
        );
        assert_eq!(
            d.fields["addresses"][0]["url"],
            "https://sluice-ingress.sluice-system.svc.cluster.local/ns/b"
        );
    }
}
