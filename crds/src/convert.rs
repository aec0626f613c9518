//! Resources → [`Topology`]: validation with precise messages, then plain structs.
//!
//! Every check that can fail happens here, once, so the data plane never meets an invalid
//! filter, URL or duration. All problems are collected, not just the first, so a user fixes a
//! file in one pass.

use crate::duration;
use crate::load::{LoadError, Loaded, Resource, DEFAULT_NAMESPACE};
use crate::types::{DeliverySpec, Destination, KReference};
use k8s_openapi::api::core::v1::ConfigMap;
use sluice_core::delivery::{BackoffPolicy, DeliveryPolicy, Endpoint, Format};
use sluice_core::topology::{
    ApiServerMode, ApiServerSource, Broker, ChannelConfig, ContainerSource, InitialOffset,
    KafkaSource, Key, Kind, NamespaceScope, ObjectRef, PingSource, ReplyTo, StartFrom,
    Subscription, Topology, WatchedResource,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use url::Url;

/// Annotation choosing a broker's channel.
pub const BROKER_CLASS: &str = "eventing.knative.dev/broker.class";
/// Broker classes Sluice implements.
pub const CLASS_MEMORY: &str = "MTChannelBasedBroker";
pub const CLASS_KAFKA: &str = "Kafka";
pub const CLASS_NATS: &str = "NatsJetStreamBroker";
/// Trigger annotation for per-partition ordered delivery.
pub const DELIVERY_ORDER: &str = "kafka.eventing.knative.dev/delivery.order";
/// Trigger annotation (Sluice): where a new trigger starts reading.
pub const START_FROM: &str = "sluice.dev/start-from";
/// Trigger annotation (Sluice): deliveries in flight at once.
pub const CONCURRENCY: &str = "sluice.dev/concurrency";

/// Settings that do not come from resources (flags and environment of `sluice run`).
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Base URL of the broker ingress; a Broker ref resolves to `<base>/<ns>/<name>`.
    pub ingress_url: Url,
    /// Kafka bootstrap servers when a Kafka broker's ConfigMap does not name them.
    pub kafka_bootstrap_servers: Option<String>,
    /// NATS URL when a NATS broker's ConfigMap does not name one.
    pub nats_url: Option<String>,
    /// Capacity of each in-memory trigger queue.
    pub memory_capacity: usize,
    /// Bytes an in-memory broker holds at most.
    pub memory_max_bytes: usize,
    /// The cluster's DNS domain: a `v1` Service ref resolves to
    /// `http://<name>.<namespace>.svc.<cluster domain>`.
    pub cluster_domain: String,
    /// Addresses of objects of other kinds, looked up beforehand (Kubernetes mode), or why
    /// there is none.
    pub addressables: BTreeMap<AddressableRef, Result<Url, String>>,
    /// Kubernetes mode: ContainerSources and SinkBindings are run by pods (the controller
    /// writes their `K_SINK`), not by the data plane, so they add nothing to the topology.
    pub kubernetes: bool,
    /// `authentication-oidc` is on: EventPolicies are accepted, and destinations that are
    /// Sluice's own addressables carry their audience (senders attach tokens for it).
    pub oidc: bool,
}

impl Defaults {
    pub fn new(ingress_url: Url) -> Self {
        Defaults {
            ingress_url,
            kafka_bootstrap_servers: None,
            nats_url: None,
            memory_capacity: ChannelConfig::DEFAULT_MEMORY_CAPACITY,
            memory_max_bytes: ChannelConfig::DEFAULT_MEMORY_MAX_BYTES,
            cluster_domain: "cluster.local".into(),
            addressables: BTreeMap::new(),
            kubernetes: false,
            oidc: false,
        }
    }
}

pub(crate) struct Ctx<'a> {
    pub(crate) defaults: &'a Defaults,
    brokers: HashSet<Key>,
    config_maps: BTreeMap<Key, &'a ConfigMap>,
    /// Messaging channel names (written, or made by a Sequence/Parallel), with their kind.
    pub(crate) channels: BTreeMap<Key, Kind>,
    /// Sequences and Parallels defined (refs to them resolve to their first channel).
    pub(crate) flows: HashSet<ObjectRef>,
    /// EventTransforms defined.
    pub(crate) transforms: HashSet<Key>,
    /// `serving.knative.dev/v1` Services defined in the resources.
    pub(crate) services: HashSet<Key>,
    pub(crate) errors: Vec<LoadError>,
}

impl Ctx<'_> {
    pub(crate) fn error(&mut self, r: &Loaded, field: &str, message: impl Into<String>) {
        self.errors.push(LoadError {
            origin: r.origin.clone(),
            resource: Some(r.describe()),
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
            object: Some(Box::new(r.object())),
        });
    }
}

/// Validates the resources and builds the topology, or returns every problem found (start-up
/// is strict: nothing runs until every resource is valid).
pub fn build(resources: &[Loaded], defaults: &Defaults) -> Result<Topology, Vec<LoadError>> {
    let (topology, errors) = build_lenient(resources, defaults);
    if errors.is_empty() {
        Ok(topology)
    } else {
        Err(errors)
    }
}

/// Validates the resources and builds the topology of the valid ones, with every problem
/// found. An object with a problem is left out (its [`LoadError::object`] says which), so one
/// bad edit never stops the others from being applied on a reload.
pub fn build_lenient(resources: &[Loaded], defaults: &Defaults) -> (Topology, Vec<LoadError>) {
    let mut ctx = context(resources, defaults);
    let mut topology = Topology::default();
    for r in resources {
        if let Resource::Broker(b) = &r.resource {
            if let Some(broker) = broker(&mut ctx, r, b) {
                topology
                    .brokers
                    .insert(broker.key.clone(), Arc::new(broker));
            }
        }
    }
    build_rest(ctx, resources, topology)
}

/// What every resource can refer to (brokers, ConfigMaps, channels, flows, ...), registered
/// before anything is converted; duplicate names are reported here.
pub(crate) fn context<'a>(resources: &'a [Loaded], defaults: &'a Defaults) -> Ctx<'a> {
    let mut ctx = Ctx {
        defaults,
        brokers: HashSet::new(),
        config_maps: BTreeMap::new(),
        channels: BTreeMap::new(),
        flows: HashSet::new(),
        transforms: HashSet::new(),
        services: HashSet::new(),
        errors: Vec::new(),
    };
    let mut seen: BTreeMap<(&str, Key), &Loaded> = BTreeMap::new();
    for r in resources {
        let key = Key::new(&r.namespace, &r.name);
        if let Some(first) = seen.insert((r.resource.kind(), key.clone()), r) {
            let msg = format!(
                "defined twice (first in {}); names must be unique per kind and namespace",
                first.origin
            );
            ctx.error(r, "metadata.name", msg);
        }
        match &r.resource {
            Resource::Broker(_) => {
                ctx.brokers.insert(key);
            }
            Resource::ConfigMap(cm) => {
                ctx.config_maps.insert(key, cm);
            }
            Resource::Service(_) => {
                ctx.services.insert(key);
            }
            _ => {}
        }
    }
    crate::convert_flows::register(&mut ctx, resources);
    ctx
}

/// Everything after the brokers (triggers need them), in dependency order.
fn build_rest<'a>(
    mut ctx: Ctx<'a>,
    resources: &'a [Loaded],
    mut topology: Topology,
) -> (Topology, Vec<LoadError>) {
    for r in resources {
        if let Resource::Trigger(t) = &r.resource {
            if let Some(sub) = trigger(&mut ctx, r, t, &topology) {
                topology
                    .subscriptions
                    .insert(sub.owner.clone(), Arc::new(sub));
            }
        }
    }
    crate::convert_flows::build(&mut ctx, resources, &mut topology);
    crate::convert_transform::build(&mut ctx, resources, &mut topology);
    crate::eventpolicy::build(&mut ctx, resources, &mut topology);
    for r in resources {
        match &r.resource {
            Resource::PingSource(p) => {
                if let Some(source) = ping_source(&mut ctx, r, p) {
                    topology
                        .ping_sources
                        .insert(source.key.clone(), Arc::new(source));
                }
            }
            Resource::KafkaSource(k) => {
                if let Some(source) = kafka_source(&mut ctx, r, k) {
                    topology
                        .kafka_sources
                        .insert(source.key.clone(), Arc::new(source));
                }
            }
            Resource::ApiServerSource(a) => {
                if let Some(source) = apiserver_source(&mut ctx, r, a) {
                    topology
                        .apiserver_sources
                        .insert(source.key.clone(), Arc::new(source));
                }
            }
            // Kubernetes mode: pods run it (the controller makes its Deployment).
            Resource::ContainerSource(_) if ctx.defaults.kubernetes => {}
            Resource::ContainerSource(c) => {
                if let Some(source) = container_source(&mut ctx, resources, r, c) {
                    topology
                        .container_sources
                        .insert(source.key.clone(), Arc::new(source));
                }
            }
            Resource::SinkBinding(b) => crate::convert_bindings::check_binding(&mut ctx, r, b),
            Resource::Service(s) => {
                if let Some(service) = service(&mut ctx, r, s) {
                    topology
                        .services
                        .insert(service.key.clone(), Arc::new(service));
                }
            }
            _ => {}
        }
    }
    (topology, ctx.errors)
}

pub(crate) fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn broker(ctx: &mut Ctx, r: &Loaded, b: &crate::types::Broker) -> Option<Broker> {
    let key = Key::new(&r.namespace, &r.name);
    let class = annotation(&b.metadata, BROKER_CLASS).unwrap_or(CLASS_MEMORY);
    let config: BTreeMap<String, String> = match &b.spec.config {
        None => BTreeMap::new(),
        Some(cfg) => {
            if cfg.kind != "ConfigMap" {
                ctx.error(
                    r,
                    "spec.config.kind",
                    format!(
                        "`{}` is not supported: spec.config must name a v1 ConfigMap",
                        cfg.kind
                    ),
                );
                return None;
            }
            let ns = cfg.namespace.as_deref().unwrap_or(&r.namespace);
            match ctx.config_maps.get(&Key::new(ns, &cfg.name)) {
                Some(cm) => cm.data.clone().unwrap_or_default(),
                None => {
                    ctx.error(r, "spec.config.name", format!("ConfigMap {ns}/{} is not defined in any loaded file; add it (apiVersion: v1, kind: ConfigMap) or remove spec.config", cfg.name));
                    return None;
                }
            }
        }
    };
    let channel = match class {
        CLASS_MEMORY => {
            let capacity = match config.get("capacity") {
                Some(v) => match v.parse::<usize>() {
                    Ok(c) if c > 0 => c,
                    _ => {
                        ctx.error(r, "spec.config", format!("ConfigMap key `capacity` is {v:?}; it must be a positive whole number of events"));
                        return None;
                    }
                },
                None => ctx.defaults.memory_capacity,
            };
            let max_bytes =
                parse_key::<usize>(ctx, r, &config, "maxBytes", ctx.defaults.memory_max_bytes)?;
            ChannelConfig::Memory {
                capacity,
                max_bytes,
            }
        }
        CLASS_KAFKA => {
            let Some(bootstrap_servers) = config
                .get("bootstrap.servers")
                .cloned()
                .or_else(|| ctx.defaults.kafka_bootstrap_servers.clone())
            else {
                ctx.error(r, "spec.config", "a Kafka broker needs bootstrap servers: set `bootstrap.servers` in the ConfigMap that spec.config names, or start sluice with --kafka-bootstrap-servers");
                return None;
            };
            let partitions = parse_key::<i32>(ctx, r, &config, "default.topic.partitions", 10)?;
            let replication_factor =
                parse_key::<i16>(ctx, r, &config, "default.topic.replication.factor", 1)?;
            ChannelConfig::Kafka {
                bootstrap_servers,
                partitions,
                replication_factor,
            }
        }
        CLASS_NATS => {
            let Some(url) = config
                .get("url")
                .cloned()
                .or_else(|| ctx.defaults.nats_url.clone())
            else {
                ctx.error(r, "spec.config", "a NATS JetStream broker needs a server URL: set `url` in the ConfigMap that spec.config names, or start sluice with --nats-url");
                return None;
            };
            let max_age = match config.get("maxAge") {
                None => ChannelConfig::DEFAULT_NATS_MAX_AGE,
                Some(v) => match duration::parse(v) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => {
                        ctx.error(r, "spec.config", "ConfigMap key `maxAge` must be longer than zero (an ISO 8601 duration such as P7D)");
                        return None;
                    }
                    Err(e) => {
                        ctx.error(r, "spec.config", format!("ConfigMap key `maxAge`: {e}"));
                        return None;
                    }
                },
            };
            let max_bytes = parse_key::<i64>(
                ctx,
                r,
                &config,
                "maxBytes",
                ChannelConfig::DEFAULT_NATS_MAX_BYTES,
            )?;
            ChannelConfig::Nats {
                url,
                max_age,
                max_bytes,
            }
        }
        other => {
            ctx.error(
                r,
                &format!("metadata.annotations[\"{BROKER_CLASS}\"]"),
                format!("unknown broker class `{other}`; use {CLASS_MEMORY} (in-memory, the default), {CLASS_KAFKA} or {CLASS_NATS}"),
            );
            return None;
        }
    };
    let delivery = match &b.spec.delivery {
        Some(spec) => Some(delivery_policy(ctx, r, spec, "spec.delivery")?),
        None => None,
    };
    let fingerprint = fingerprint_of(&b.spec, &format!("{class} {channel:?} {delivery:?}"));
    Some(Broker {
        key,
        channel,
        delivery,
        fingerprint,
    })
}

fn parse_key<T: std::str::FromStr + PartialOrd + Default>(
    ctx: &mut Ctx,
    r: &Loaded,
    config: &BTreeMap<String, String>,
    key: &str,
    default: T,
) -> Option<T> {
    match config.get(key) {
        None => Some(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n > T::default() => Some(n),
            _ => {
                ctx.error(
                    r,
                    "spec.config",
                    format!("ConfigMap key `{key}` is {v:?}; it must be a positive whole number"),
                );
                None
            }
        },
    }
}

fn trigger(
    ctx: &mut Ctx,
    r: &Loaded,
    t: &crate::types::Trigger,
    topology: &Topology,
) -> Option<Subscription> {
    let key = Key::new(&r.namespace, &r.name);
    let errors_before = ctx.errors.len();
    if t.spec.broker.is_empty() {
        ctx.error(
            r,
            "spec.broker",
            "is required: name the broker this trigger subscribes to",
        );
    }
    let broker_key = Key::new(&r.namespace, &t.spec.broker);
    let broker = topology.brokers.get(&broker_key);
    if broker.is_none() && !t.spec.broker.is_empty() && !ctx.brokers.contains(&broker_key) {
        let known: Vec<_> = ctx.brokers.iter().map(ToString::to_string).collect();
        ctx.error(r, "spec.broker", format!(
            "broker {broker_key} is not defined in any loaded file (brokers defined: {}); a trigger subscribes to a broker in its own namespace",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ));
    }
    let filter = match sluice_filter::compile(
        t.spec.filter.as_ref().map(|f| &f.attributes),
        &t.spec.filters,
    ) {
        Ok(f) => Some(f),
        Err(e) => {
            ctx.error(r, "", format!("invalid filter: spec.{e}"));
            None
        }
    };
    let subscriber = resolve(ctx, r, &t.spec.subscriber, "spec.subscriber");
    // The trigger's delivery replaces the broker's as a whole; the dead-letter sink is the
    // trigger's, else the broker's.
    let broker_delivery = broker.and_then(|b| b.delivery.clone());
    let delivery = match &t.spec.delivery {
        Some(spec) => delivery_policy(ctx, r, spec, "spec.delivery").map(|mut p| {
            if p.dead_letter_sink.is_none() {
                p.dead_letter_sink = broker_delivery
                    .as_ref()
                    .and_then(|b| b.dead_letter_sink.clone());
            }
            p
        }),
        None => Some(broker_delivery.unwrap_or_default()),
    };
    let ordered = match annotation(&t.metadata, DELIVERY_ORDER) {
        None | Some("unordered") => false,
        Some("ordered") => true,
        Some(other) => {
            ctx.error(
                r,
                &format!("metadata.annotations[\"{DELIVERY_ORDER}\"]"),
                format!("`{other}` is not a delivery order; use `ordered` or `unordered`"),
            );
            false
        }
    };
    let start_from = match annotation(&t.metadata, START_FROM) {
        None | Some("latest") => StartFrom::Latest,
        Some("earliest") => StartFrom::Earliest,
        Some(ts) => match chrono::DateTime::parse_from_rfc3339(ts) {
            Ok(t) => StartFrom::Time(t.timestamp_millis()),
            Err(e) => {
                ctx.error(r, &format!("metadata.annotations[\"{START_FROM}\"]"), format!("`{ts}` is not `earliest`, `latest` or an RFC 3339 time such as 2024-05-01T12:00:00Z ({e})"));
                StartFrom::Latest
            }
        },
    };
    let concurrency = match annotation(&t.metadata, CONCURRENCY) {
        None => Subscription::DEFAULT_CONCURRENCY,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                ctx.error(
                    r,
                    &format!("metadata.annotations[\"{CONCURRENCY}\"]"),
                    format!("`{v}` is not a positive whole number"),
                );
                1
            }
        },
    };
    if ctx.errors.len() > errors_before {
        return None;
    }
    let (subscriber, delivery) = (subscriber?, delivery?);
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(&t.spec)
            .unwrap_or_default()
            .hash(&mut h);
        format!("{subscriber} {delivery:?} {ordered} {concurrency} {start_from:?}").hash(&mut h);
        h.finish()
    };
    Some(Subscription {
        fingerprint,
        owner: ObjectRef::trigger(key),
        channel: ObjectRef::broker(broker_key.clone()),
        subscriber_target: crate::convert_flows::local_target(
            ctx,
            &t.spec.subscriber,
            &r.namespace,
        ),
        subscriber,
        filter: Some(Arc::new(filter?)),
        reply: ReplyTo::Broker(broker_key),
        delivery,
        ordered,
        concurrency,
        start_from,
    })
}

pub(crate) fn delivery_policy(
    ctx: &mut Ctx,
    r: &Loaded,
    spec: &DeliverySpec,
    path: &str,
) -> Option<DeliveryPolicy> {
    let before = ctx.errors.len();
    // A DeliverySpec that is present but silent on retries means no retries (as in Knative);
    // the broker-wide default policy applies only when no spec is given at all.
    let mut p = DeliveryPolicy {
        retry: 0,
        ..DeliveryPolicy::default()
    };
    if let Some(retry) = spec.retry {
        match u32::try_from(retry) {
            Ok(n) => p.retry = n,
            Err(_) => ctx.error(r, &format!("{path}.retry"), format!("{retry} is negative; give the number of retries after the first attempt (0 or more)")),
        }
    }
    match spec.backoff_policy.as_deref() {
        None | Some("exponential") => p.backoff_policy = BackoffPolicy::Exponential,
        Some("linear") => p.backoff_policy = BackoffPolicy::Linear,
        Some(other) => ctx.error(
            r,
            &format!("{path}.backoffPolicy"),
            format!("`{other}` is not a backoff policy; use `linear` or `exponential`"),
        ),
    }
    let mut dur = |field: &str, value: &Option<String>, slot: &mut std::time::Duration| {
        if let Some(v) = value {
            match duration::parse(v) {
                Ok(d) => *slot = d,
                Err(e) => ctx.error(r, &format!("{path}.{field}"), e),
            }
        }
    };
    dur("backoffDelay", &spec.backoff_delay, &mut p.backoff_delay);
    dur("backoffMax", &spec.backoff_max, &mut p.backoff_max);
    dur("timeout", &spec.timeout, &mut p.timeout);
    let mut ram = std::time::Duration::ZERO;
    dur("retryAfterMax", &spec.retry_after_max, &mut ram);
    if spec.retry_after_max.is_some() {
        p.retry_after_max = Some(ram);
    }
    if p.timeout.is_zero() {
        ctx.error(r, &format!("{path}.timeout"), "must be longer than zero");
    }
    match spec.format.as_deref() {
        None | Some("binary") => p.format = Format::Binary,
        Some("json") => p.format = Format::Json,
        Some(other) => ctx.error(
            r,
            &format!("{path}.format"),
            format!("`{other}` is not a format; use `json` (structured mode) or `binary`"),
        ),
    }
    if let Some(dls) = &spec.dead_letter_sink {
        p.dead_letter_sink = resolve(ctx, r, dls, &format!("{path}.deadLetterSink"));
    }
    (ctx.errors.len() == before).then_some(p)
}

pub(crate) fn resolve(
    ctx: &mut Ctx,
    r: &Loaded,
    dest: &Destination,
    path: &str,
) -> Option<Endpoint> {
    let url = resolve_url(ctx, r, dest, path)?;
    let endpoint = Endpoint::new(url).and_then(|e| match &dest.ca_certs {
        Some(pem) => e.with_ca_certs(pem).map_err(|m| format!("CACerts: {m}")),
        None => Ok(e),
    });
    let endpoint = endpoint.map(|e| match audience(ctx, r, dest) {
        Some(aud) => e.with_audience(&aud),
        None => e,
    });
    match endpoint {
        Ok(e) => Some(e),
        Err(e) if e.starts_with("CACerts") => {
            ctx.error(r, &format!("{path}.CACerts"), e);
            None
        }
        Err(e) => {
            let field = if dest.uri.is_some() {
                format!("{path}.uri")
            } else {
                path.to_string()
            };
            ctx.error(r, &field, e);
            None
        }
    }
}

/// The OIDC audience of a destination: its own `audience`, else, while OIDC is on, the
/// audience of the Broker, channel or EventTransform it names (SEMANTICS.md §11). Sequences
/// and Parallels get none: they are reached through their first channel, whose name only the
/// flow knows (set `audience` on such a destination if a sender POSTs to it).
fn audience(ctx: &Ctx, r: &Loaded, dest: &Destination) -> Option<String> {
    if let Some(a) = &dest.audience {
        return Some(a.clone());
    }
    let reference = dest.reference.as_ref().filter(|_| ctx.defaults.oidc)?;
    let group = reference.api_version.split('/').next().unwrap_or_default();
    let served = match (group, reference.kind.as_str()) {
        ("eventing.knative.dev", "Broker" | "EventTransform") => true,
        ("messaging.knative.dev", k) => Kind::from_name(k).is_some_and(Kind::is_channel),
        _ => false,
    };
    served.then(|| {
        let ns = reference.namespace.as_deref().unwrap_or(&r.namespace);
        sluice_auth::identity::audience(group, &reference.kind, ns, &reference.name)
    })
}

fn resolve_url(ctx: &mut Ctx, r: &Loaded, dest: &Destination, path: &str) -> Option<Url> {
    match (&dest.reference, &dest.uri) {
        (None, None) => {
            ctx.error(r, path, "set `uri` (an absolute URL such as http://localhost:8081/) or `ref` (a Broker or Service)");
            None
        }
        (None, Some(uri)) => match Url::parse(uri) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Some(u),
            Ok(u) => {
                ctx.error(
                    r,
                    &format!("{path}.uri"),
                    format!(
                        "scheme `{}` is not supported; use http or https",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                ctx.error(r, &format!("{path}.uri"), format!("{uri:?} is not an absolute URL ({e}); without `ref`, `uri` must be absolute, e.g. http://localhost:8081/"));
                None
            }
        },
        (Some(reference), uri) => {
            let base = address_of(ctx, r, reference, path)?;
            match uri {
                None => Some(base),
                Some(u) => match base.join(u) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        ctx.error(
                            r,
                            &format!("{path}.uri"),
                            format!("{u:?} cannot be resolved against {base} ({e})"),
                        );
                        None
                    }
                },
            }
        }
    }
}

fn address_of(ctx: &mut Ctx, r: &Loaded, reference: &KReference, path: &str) -> Option<Url> {
    let ns = reference
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(if r.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            &r.namespace
        });
    let group = reference.api_version.split('/').next().unwrap_or_default();
    match (group, reference.kind.as_str()) {
        ("eventing.knative.dev", "Broker") => {
            let key = Key::new(ns, &reference.name);
            if !ctx.brokers.contains(&key) {
                ctx.error(
                    r,
                    &format!("{path}.ref"),
                    format!("Broker {key} is not defined in any loaded file"),
                );
                return None;
            }
            ctx.defaults
                .ingress_url
                .join(&format!("{ns}/{}", reference.name))
                .map_err(|e| ctx.error(r, &format!("{path}.ref"), e.to_string()))
                .ok()
        }
        ("serving.knative.dev", "Service")
            if ctx.services.contains(&Key::new(ns, &reference.name)) =>
        {
            service_address(&ctx.defaults.ingress_url, ns, &reference.name)
                .map_err(|e| ctx.error(r, &format!("{path}.ref"), e))
                .ok()
        }
        ("v1", "Service") => Url::parse(&format!(
            "http://{}.{ns}.svc.{}/",
            reference.name, ctx.defaults.cluster_domain
        ))
        .map_err(|e| ctx.error(r, &format!("{path}.ref"), e.to_string()))
        .ok(),
        ("eventing.knative.dev", "EventTransform") => {
            crate::convert_transform::address_of(ctx, r, reference, ns, path)
        }
        ("messaging.knative.dev" | "flows.knative.dev", _) => {
            crate::convert_flows::address_of(ctx, r, reference, ns, path)
        }
        _ => match ctx
            .defaults
            .addressables
            .get(&AddressableRef::of(reference, ns))
        {
            Some(Ok(url)) => Some(url.clone()),
            Some(Err(why)) => {
                ctx.error(r, &format!("{path}.ref"), why.clone());
                None
            }
            // Not looked up (embedded mode): a Knative Service's address is its cluster-local
            // name (SEMANTICS.md §13), so Knative's documentation examples load unchanged.
            None if group == "serving.knative.dev" && reference.kind == "Service" => {
                Url::parse(&format!(
                    "http://{}.{ns}.svc.{}/",
                    reference.name, ctx.defaults.cluster_domain
                ))
                .map_err(|e| ctx.error(r, &format!("{path}.ref"), e.to_string()))
                .ok()
            }
            None => {
                ctx.error(r, &format!("{path}.ref"), format!(
                    "cannot resolve {} `{}` to an address here: Sluice resolves refs to eventing.knative.dev/v1 Broker, messaging.knative.dev channels, flows.knative.dev Sequence and Parallel, EventTransform, v1 and serving.knative.dev/v1 Service (and, in Kubernetes mode, any object with a status.address.url); use `uri` for anything else",
                    reference.kind, reference.name
                ));
                None
            }
        },
    }
}

/// A ref to an object of a kind Sluice does not run (a Knative Service, another project's
/// channel): its address comes from outside the resources, in Kubernetes mode from the
/// object's `status.address.url` ([`Defaults::addressables`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressableRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl AddressableRef {
    fn of(reference: &KReference, namespace: &str) -> Self {
        AddressableRef {
            api_version: reference.api_version.clone(),
            kind: reference.kind.clone(),
            namespace: namespace.to_string(),
            name: reference.name.clone(),
        }
    }

    /// Whether `build` resolves refs of this kind itself (Broker, v1 Service).
    pub fn is_native(api_version: &str, kind: &str) -> bool {
        let group = api_version.split('/').next().unwrap_or_default();
        matches!(
            (group, kind),
            ("eventing.knative.dev", "Broker" | "EventTransform")
                | ("v1", "Service")
                | ("messaging.knative.dev" | "flows.knative.dev", _)
        )
    }
}

/// Every ref in the resources' destinations (subscribers, sinks, dead letter sinks) to a
/// kind `build` does not resolve itself: what Kubernetes mode looks up before building.
pub fn external_refs(resources: &[Loaded]) -> std::collections::BTreeSet<AddressableRef> {
    let mut out = std::collections::BTreeSet::new();
    for r in resources {
        let ns = if r.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            &r.namespace
        };
        for d in destinations(&r.resource) {
            if let Some(k) = &d.reference {
                if !AddressableRef::is_native(&k.api_version, &k.kind) {
                    let ns = k
                        .namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .unwrap_or(ns);
                    out.insert(AddressableRef::of(k, ns));
                }
            }
        }
    }
    out
}

/// The destinations a resource names.
pub fn destinations(resource: &Resource) -> Vec<&Destination> {
    fn dls(d: Option<&DeliverySpec>) -> Option<&Destination> {
        d.and_then(|d| d.dead_letter_sink.as_ref())
    }
    let mut out = Vec::new();
    match resource {
        Resource::Broker(b) => out.extend(dls(b.spec.delivery.as_ref())),
        Resource::Trigger(t) => {
            out.push(&t.spec.subscriber);
            out.extend(dls(t.spec.delivery.as_ref()));
        }
        Resource::PingSource(p) => out.push(&p.spec.sink),
        Resource::KafkaSource(k) => {
            out.push(&k.spec.sink);
            out.extend(dls(k.spec.delivery.as_ref()));
        }
        Resource::ApiServerSource(a) => out.push(&a.spec.sink),
        Resource::ContainerSource(c) => out.push(&c.spec.sink),
        Resource::SinkBinding(b) => out.push(&b.spec.sink),
        Resource::Channel(c) => out.extend(dls(c.spec.delivery.as_ref())),
        Resource::InMemoryChannel(c) => out.extend(dls(c.spec.delivery.as_ref())),
        Resource::KafkaChannel(c) => out.extend(dls(c.spec.delivery.as_ref())),
        Resource::NatsJetStreamChannel(c) => out.extend(dls(c.spec.delivery.as_ref())),
        Resource::Subscription(s) => {
            out.extend(s.spec.subscriber.as_ref());
            out.extend(s.spec.reply.as_ref());
            out.extend(dls(s.spec.delivery.as_ref()));
        }
        Resource::Sequence(q) => {
            for step in &q.spec.steps {
                out.extend(dls(step.delivery.as_ref()));
            }
            out.extend(q.spec.reply.as_ref());
        }
        Resource::Parallel(p) => {
            for b in &p.spec.branches {
                out.extend(b.filter.as_ref());
                out.push(&b.subscriber);
                out.extend(b.reply.as_ref());
                out.extend(dls(b.delivery.as_ref()));
            }
            out.extend(p.spec.reply.as_ref());
        }
        Resource::EventTransform(t) => out.extend(t.spec.sink.as_ref()),
        Resource::ConfigMap(_) | Resource::Service(_) | Resource::EventPolicy(_) => {}
    }
    out
}

/// The default PingSource schedule (Knative's): every minute.
pub const DEFAULT_PING_SCHEDULE: &str = "* * * * *";

pub(crate) fn fingerprint_of(spec: &impl serde::Serialize, resolved: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(spec).unwrap_or_default().hash(&mut h);
    resolved.hash(&mut h);
    h.finish()
}

/// `ceOverrides.extensions`: names must be legal CloudEvents extension names and must not
/// replace the attributes the source itself sets.
pub(crate) fn ce_overrides(
    ctx: &mut Ctx,
    r: &Loaded,
    o: Option<&crate::sources::CloudEventOverrides>,
) -> BTreeMap<String, String> {
    let Some(o) = o else {
        return BTreeMap::new();
    };
    for name in o.extensions.keys() {
        let field = format!("spec.ceOverrides.extensions.{name}");
        if !sluice_core::event::is_valid_attribute_name(name) {
            ctx.error(r, &field, format!("`{name}` is not a valid extension name: use only lower-case letters a-z and digits 0-9"));
        } else if sluice_core::event::is_context_attribute(name) {
            ctx.error(r, &field, format!("`{name}` is a CloudEvents context attribute, which the source sets itself; ceOverrides only adds extensions"));
        }
    }
    o.extensions.clone()
}

fn ping_source(ctx: &mut Ctx, r: &Loaded, p: &crate::sources::PingSource) -> Option<PingSource> {
    use base64::Engine as _;
    let before = ctx.errors.len();
    let spec = &p.spec;
    let schedule_text = spec
        .schedule
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(DEFAULT_PING_SCHEDULE)
        .trim()
        .to_string();
    let schedule = match sluice_schedule::Schedule::parse(&schedule_text, spec.timezone.as_deref())
    {
        Ok(s) => Some(s),
        Err(e) => {
            use sluice_schedule::ScheduleError as E;
            let from_field = spec
                .timezone
                .as_deref()
                .is_some_and(|t| matches!(&e, E::UnknownTimezone(n) if n == t.trim()));
            let field = match &e {
                E::ConflictingTimezones { .. } => "spec.timezone",
                E::UnknownTimezone(_) if from_field => "spec.timezone",
                _ => "spec.schedule",
            };
            ctx.error(r, field, e.to_string());
            // A bad `timezone` field hides the pattern's own problems: check it alone too,
            // so the user sees everything in one pass.
            if field == "spec.timezone" {
                if let Err(e) = sluice_schedule::Schedule::parse(&schedule_text, None) {
                    ctx.error(r, "spec.schedule", e.to_string());
                }
            }
            None
        }
    };
    let (data, data_binary) = match (&spec.data, &spec.data_base64) {
        (Some(_), Some(_)) => {
            ctx.error(
                r,
                "spec.dataBase64",
                "set either `data` (text) or `dataBase64` (base64-encoded bytes), not both",
            );
            (None, false)
        }
        (Some(d), None) => (Some(bytes::Bytes::from(d.clone())), false),
        (None, Some(b64)) => {
            // Block scalars in YAML often wrap long base64 over several lines.
            let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
                Ok(bytes) => (Some(bytes::Bytes::from(bytes)), true),
                Err(e) => {
                    ctx.error(
                        r,
                        "spec.dataBase64",
                        format!("is not valid base64 ({e}); use the standard alphabet with `=` padding, e.g. `aGVsbG8=`"),
                    );
                    (None, false)
                }
            }
        }
        (None, None) => (None, false),
    };
    let content_type = spec
        .content_type
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let extensions = ce_overrides(ctx, r, spec.ce_overrides.as_ref());
    let sink = resolve(ctx, r, &spec.sink, "spec.sink");
    if ctx.errors.len() > before {
        return None;
    }
    let (schedule, sink) = (schedule?, sink?);
    let delivery = DeliveryPolicy::default();
    let timezone = schedule.timezone().name().to_string();
    let fingerprint = fingerprint_of(spec, &format!("{sink} {timezone} {delivery:?}"));
    Some(PingSource {
        key: Key::new(&r.namespace, &r.name),
        schedule: Arc::new(schedule),
        schedule_text,
        timezone,
        content_type,
        data,
        data_binary,
        extensions,
        sink,
        delivery,
        fingerprint,
    })
}

/// The consumer group of a KafkaSource that does not name one. Knative derives it from the
/// object's UID, which embedded mode does not have; the namespace and name are as stable.
pub fn default_consumer_group(namespace: &str, name: &str) -> String {
    format!("knative-kafka-source-{namespace}-{name}")
}

/// Kafka's rule for topic names: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn kafka_source(ctx: &mut Ctx, r: &Loaded, k: &crate::sources::KafkaSource) -> Option<KafkaSource> {
    let before = ctx.errors.len();
    let spec = &k.spec;
    let mut bootstrap_servers = Vec::new();
    if spec.bootstrap_servers.is_empty() {
        ctx.error(
            r,
            "spec.bootstrapServers",
            "is required: list the `host:port` of one or more brokers of the Kafka cluster",
        );
    }
    for (i, entry) in spec.bootstrap_servers.iter().enumerate() {
        // Knative accepts comma-separated lists inside one entry as well.
        for server in entry.split(',').map(str::trim) {
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                && !server.contains(char::is_whitespace);
            if ok {
                bootstrap_servers.push(server.to_string());
            } else {
                ctx.error(
                    r,
                    &format!("spec.bootstrapServers[{i}]"),
                    format!("`{server}` is not `host:port` (e.g. `my-cluster-kafka-bootstrap.kafka:9092`)"),
                );
            }
        }
    }
    if spec.topics.is_empty() {
        ctx.error(
            r,
            "spec.topics",
            "is required: list at least one topic to read",
        );
    }
    let mut topics: Vec<String> = Vec::new();
    for (i, t) in spec.topics.iter().enumerate() {
        let field = format!("spec.topics[{i}]");
        if !valid_topic(t) {
            ctx.error(r, &field, format!("`{t}` is not a Kafka topic name: 1 to 249 characters among a-z, A-Z, 0-9, `.`, `_` and `-`"));
        } else if topics.contains(t) {
            ctx.error(r, &field, format!("topic `{t}` is listed twice"));
        } else {
            topics.push(t.clone());
        }
    }
    let consumer_group = match spec.consumer_group.as_deref().map(str::trim) {
        None | Some("") => default_consumer_group(&r.namespace, &r.name),
        Some(g) => g.to_string(),
    };
    let initial_offset = match spec.initial_offset.as_deref() {
        None | Some("latest") => InitialOffset::Latest,
        Some("earliest") => InitialOffset::Earliest,
        Some(other) => {
            ctx.error(
                r,
                "spec.initialOffset",
                format!("`{other}` is not an initial offset; use `earliest` or `latest`"),
            );
            InitialOffset::Latest
        }
    };
    let ordered = match spec.ordering.as_deref() {
        None | Some("ordered") => true,
        Some("unordered") => false,
        Some(other) => {
            ctx.error(
                r,
                "spec.ordering",
                format!("`{other}` is not an ordering; use `ordered` (one event at a time per partition) or `unordered`"),
            );
            true
        }
    };
    let consumers = match spec.consumers {
        None => 1,
        Some(n) if n >= 1 => n as u32,
        Some(n) => {
            ctx.error(
                r,
                "spec.consumers",
                format!("{n} is not a positive number of consumers"),
            );
            1
        }
    };
    if spec
        .net
        .as_ref()
        .is_some_and(|n| !n.is_null() && n.as_object().is_none_or(|o| !o.is_empty()))
    {
        ctx.error(
            r,
            "spec.net",
            "TLS and SASL settings are not supported yet; remove `net` and reach the cluster over plaintext",
        );
    }
    let delivery = match &spec.delivery {
        Some(d) => delivery_policy(ctx, r, d, "spec.delivery"),
        None => Some(DeliveryPolicy::default()),
    };
    let extensions = ce_overrides(ctx, r, spec.ce_overrides.as_ref());
    let sink = resolve(ctx, r, &spec.sink, "spec.sink");
    if ctx.errors.len() > before {
        return None;
    }
    let (sink, delivery) = (sink?, delivery?);
    let fingerprint = fingerprint_of(
        spec,
        &format!("{sink} {delivery:?} {consumer_group} {bootstrap_servers:?}"),
    );
    Some(KafkaSource {
        key: Key::new(&r.namespace, &r.name),
        bootstrap_servers,
        topics,
        consumer_group,
        initial_offset,
        ordered,
        consumers,
        extensions,
        sink,
        delivery,
        fingerprint,
    })
}

/// A `metav1.LabelSelector` as the `labelSelector` query the API server reads
/// (`a=b,k in (x,y),k notin (z),k,!k`), or what is wrong with it (`field` names the requirement).
/// An empty selector gives an empty query: everything matches.
pub fn label_selector_query(
    selector: &crate::k8s_sources::LabelSelector,
) -> Result<String, (String, String)> {
    let mut parts = Vec::new();
    let valid_value = |v: &str| {
        v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.len() <= 317
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    for (k, v) in &selector.match_labels {
        if !valid_key(k) {
            return Err((
                format!("matchLabels.{k}"),
                format!("`{k}` is not a label key"),
            ));
        }
        if !valid_value(v) {
            return Err((
                format!("matchLabels.{k}"),
                format!("`{v}` is not a label value (at most 63 of a-z, A-Z, 0-9, `-`, `_`, `.`)"),
            ));
        }
        parts.push(format!("{k}={v}"));
    }
    for (i, e) in selector.match_expressions.iter().enumerate() {
        let field = format!("matchExpressions[{i}]");
        if !valid_key(&e.key) {
            return Err((
                format!("{field}.key"),
                format!("`{}` is not a label key", e.key),
            ));
        }
        if let Some(v) = e.values.iter().find(|v| !valid_value(v)) {
            return Err((
                format!("{field}.values"),
                format!("`{v}` is not a label value"),
            ));
        }
        let list = || e.values.join(",");
        match (e.operator.as_str(), e.values.is_empty()) {
            ("In", false) => parts.push(format!("{} in ({})", e.key, list())),
            ("NotIn", false) => parts.push(format!("{} notin ({})", e.key, list())),
            ("Exists", true) => parts.push(e.key.clone()),
            ("DoesNotExist", true) => parts.push(format!("!{}", e.key)),
            ("In" | "NotIn", true) => {
                return Err((
                    format!("{field}.values"),
                    format!("operator {} needs at least one value", e.operator),
                ))
            }
            ("Exists" | "DoesNotExist", false) => {
                return Err((
                    format!("{field}.values"),
                    format!("operator {} takes no values", e.operator),
                ))
            }
            (other, _) => {
                return Err((
                    format!("{field}.operator"),
                    format!("`{other}` is not an operator; use In, NotIn, Exists or DoesNotExist"),
                ))
            }
        }
    }
    Ok(parts.join(","))
}

fn apiserver_source(
    ctx: &mut Ctx,
    r: &Loaded,
    a: &crate::k8s_sources::ApiServerSource,
) -> Option<ApiServerSource> {
    let before = ctx.errors.len();
    let spec = &a.spec;
    if spec.resources.is_empty() {
        ctx.error(
            r,
            "spec.resources",
            "is required: list at least one {apiVersion, kind} to watch, e.g. `- apiVersion: v1` / `kind: ConfigMap`",
        );
    }
    let mut resources = Vec::new();
    for (i, res) in spec.resources.iter().enumerate() {
        let field = format!("spec.resources[{i}]");
        if !valid_api_version(&res.api_version) {
            ctx.error(
                r,
                &format!("{field}.apiVersion"),
                format!(
                    "`{}` is not an apiVersion (`v1`, `apps/v1`, `<group>/<version>`)",
                    res.api_version
                ),
            );
        }
        if res.kind.is_empty() || !res.kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
            ctx.error(
                r,
                &format!("{field}.kind"),
                format!("`{}` is not a kind (e.g. `ConfigMap`)", res.kind),
            );
        }
        let label_selector = match res.selector.as_ref().map(label_selector_query) {
            None => String::new(),
            Some(Ok(q)) => q,
            Some(Err((f, m))) => {
                ctx.error(r, &format!("{field}.selector.{f}"), m);
                String::new()
            }
        };
        resources.push(WatchedResource {
            api_version: res.api_version.clone(),
            kind: res.kind.clone(),
            label_selector,
        });
    }
    let mode = match spec.mode.as_deref() {
        None | Some("Reference") => ApiServerMode::Reference,
        Some("Resource") => ApiServerMode::Resource,
        Some(other) => {
            ctx.error(
                r,
                "spec.mode",
                format!("`{other}` is not a mode; use `Reference` (events carry a reference to the object) or `Resource` (the whole object)"),
            );
            ApiServerMode::Reference
        }
    };
    let namespaces = match spec.namespace_selector.as_ref().map(label_selector_query) {
        None => NamespaceScope::Own,
        Some(Ok(q)) => NamespaceScope::Selector(q),
        Some(Err((f, m))) => {
            ctx.error(r, &format!("spec.namespaceSelector.{f}"), m);
            NamespaceScope::Own
        }
    };
    let owner = spec
        .owner
        .as_ref()
        .map(|o| (o.api_version.clone(), o.kind.clone()));
    let service_account = spec
        .service_account_name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let filter = match sluice_filter::compile(None, &spec.filters) {
        Ok(f) => Some(f),
        Err(e) => {
            ctx.error(r, "", format!("invalid filter: spec.{e}"));
            None
        }
    };
    let extensions = ce_overrides(ctx, r, spec.ce_overrides.as_ref());
    let sink = resolve(ctx, r, &spec.sink, "spec.sink");
    if ctx.errors.len() > before {
        return None;
    }
    let sink = sink?;
    let delivery = DeliveryPolicy::default();
    let fingerprint = fingerprint_of(spec, &format!("{sink} {delivery:?}"));
    Some(ApiServerSource {
        key: Key::new(&r.namespace, &r.name),
        resources,
        owner,
        mode,
        namespaces,
        service_account,
        filter: (!spec.filters.is_empty())
            .then_some(filter)
            .flatten()
            .map(|f| Arc::new(f) as Arc<dyn sluice_core::topology::EventFilter>),
        extensions,
        sink,
        delivery,
        fingerprint,
    })
}

/// A ContainerSource in embedded mode: `template.spec.containers[0]`'s `command` + `args`,
/// `env` and `workingDir` run as a local process (there is no image runtime; `image` is
/// ignored).
fn container_source(
    ctx: &mut Ctx,
    resources: &[Loaded],
    r: &Loaded,
    c: &crate::k8s_sources::ContainerSource,
) -> Option<ContainerSource> {
    let before = ctx.errors.len();
    let spec = &c.spec;
    let base = "spec.template.spec.containers[0]";
    let container = spec.template.pointer("/spec/containers/0");
    let strings = |ctx: &mut Ctx, field: &str| -> Vec<String> {
        match container.and_then(|c| c.get(field)) {
            None => Vec::new(),
            Some(serde_json::Value::Array(a)) if a.iter().all(|v| v.is_string()) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                ctx.error(r, &format!("{base}.{field}"), "must be a list of strings");
                Vec::new()
            }
        }
    };
    if container.is_none() {
        ctx.error(
            r,
            "spec.template.spec.containers",
            "needs one container: embedded mode runs its `command` (and `args`) as a local process",
        );
    }
    let mut argv = strings(ctx, "command");
    argv.extend(strings(ctx, "args"));
    if container.is_some() && argv.is_empty() {
        ctx.error(
            r,
            &format!("{base}.command"),
            "is required in embedded mode: Sluice runs the container's command as a local process (it does not pull or run images)",
        );
    }
    let mut env = Vec::new();
    if let Some(list) = container.and_then(|c| c.get("env")) {
        for (i, e) in list.as_array().into_iter().flatten().enumerate() {
            let name = e.get("name").and_then(|n| n.as_str()).unwrap_or("");
            if name.is_empty() {
                ctx.error(r, &format!("{base}.env[{i}].name"), "is required");
            } else if e.get("valueFrom").is_some() {
                ctx.error(
                    r,
                    &format!("{base}.env[{i}].valueFrom"),
                    "is not supported in embedded mode (there are no Secrets or ConfigMaps to read); give a `value`",
                );
            } else {
                let value = e.get("value").and_then(|v| v.as_str()).unwrap_or("");
                env.push((name.to_string(), value.to_string()));
            }
        }
    }
    let working_dir = container
        .and_then(|c| c.get("workingDir"))
        .and_then(|w| w.as_str())
        .map(str::to_string);
    // A SinkBinding naming this source gives the sink (its problems are the binding's own).
    let (extensions, sink) = match crate::convert_bindings::binding_of(resources, r) {
        Some(
            binding @ Loaded {
                resource: Resource::SinkBinding(b),
                ..
            },
        ) => {
            // Resolved as the binding's (its problems are reported on it, once).
            let mut scratch = context(resources, ctx.defaults);
            scratch.errors.clear();
            let extensions = ce_overrides(&mut scratch, binding, b.spec.ce_overrides.as_ref());
            let sink = resolve(&mut scratch, binding, &b.spec.sink, "spec.sink");
            if let Some(e) = scratch.errors.first() {
                ctx.error(
                    r,
                    "spec.sink",
                    format!(
                        "comes from SinkBinding {}, whose `{}` has a problem: {}",
                        binding.name,
                        e.field.as_deref().unwrap_or("spec"),
                        e.message
                    ),
                );
            }
            (extensions, sink)
        }
        _ => (
            ce_overrides(ctx, r, spec.ce_overrides.as_ref()),
            resolve(ctx, r, &spec.sink, "spec.sink"),
        ),
    };
    if ctx.errors.len() > before {
        return None;
    }
    let sink = sink?;
    // The sink and overrides may come from a SinkBinding: a change there restarts the process.
    let fingerprint = fingerprint_of(spec, &format!("{sink} {extensions:?}"));
    Some(ContainerSource {
        key: Key::new(&r.namespace, &r.name),
        argv,
        env,
        working_dir,
        extensions,
        sink,
        fingerprint,
    })
}

/// `v1` or `<group>/<version>`.
fn valid_api_version(v: &str) -> bool {
    let version_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match v.split_once('/') {
        None => version_ok(v),
        Some((group, version)) => {
            !group.is_empty()
                && group.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
                })
                && version_ok(version)
        }
    }
}

/// Where a `serving.knative.dev/v1` Service run by embedded mode is reached: its route on the
/// ingress, `<ingress>/<ns>/services/<name>`, served by the activator.
pub fn service_address(ingress: &Url, namespace: &str, name: &str) -> Result<Url, String> {
    ingress
        .join(&format!("{namespace}/services/{name}"))
        .map_err(|e| e.to_string())
}

/// Ports Knative reserves for its own containers.
const RESERVED_PORTS: &[i32] = &[8008, 8012, 8013, 8022, 9090, 9091];

fn service(
    ctx: &mut Ctx,
    r: &Loaded,
    s: &crate::serving::Service,
) -> Option<sluice_core::topology::Service> {
    let before = ctx.errors.len();
    let spec = &s.spec.template.spec;
    let c = match spec.containers.as_slice() {
        [] => {
            ctx.error(r, "spec.template.spec.containers", "is required: one container with a `command` (embedded mode runs it as a local process)");
            return None;
        }
        [c] => c,
        _ => {
            ctx.error(
                r,
                "spec.template.spec.containers",
                "embedded mode runs one container per replica; keep the serving container only",
            );
            return None;
        }
    };
    let field = |f: &str| format!("spec.template.spec.containers[0].{f}");
    let mut command: Vec<String> = c.command.clone().unwrap_or_default();
    command.extend(c.args.clone().unwrap_or_default());
    if c.command.as_ref().is_none_or(|v| v.is_empty()) {
        let image = c.image.as_deref().unwrap_or("");
        ctx.error(r, &field("command"), format!(
            "embedded mode runs each replica as a local process and cannot run the image {image:?}: give the program to start as `command` (and `args`); it must listen on $PORT"
        ));
    }
    let mut env = Vec::new();
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.value_from.is_some() {
            ctx.error(
                r,
                &field(&format!("env[{i}].valueFrom")),
                "is not supported in embedded mode; give a `value`",
            );
        } else if e.name == "PORT" || e.name.starts_with("K_") {
            ctx.error(
                r,
                &field(&format!("env[{i}].name")),
                format!(
                    "`{}` is set by Sluice (PORT, K_SERVICE, K_CONFIGURATION, K_REVISION)",
                    e.name
                ),
            );
        } else {
            env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
        }
    }
    if let Some(ports) = &c.ports {
        if ports.len() > 1 {
            ctx.error(
                r,
                &field("ports"),
                "at most one port (the one requests are sent to)",
            );
        }
        if let Some(p) = ports.first() {
            if !matches!(
                p.name.as_deref(),
                None | Some("") | Some("http1") | Some("h2c")
            ) {
                ctx.error(
                    r,
                    &field("ports[0].name"),
                    "must be empty, `http1` or `h2c`",
                );
            }
            if RESERVED_PORTS.contains(&p.container_port) {
                ctx.error(
                    r,
                    &field("ports[0].containerPort"),
                    format!(
                        "{} is reserved by Knative ({RESERVED_PORTS:?})",
                        p.container_port
                    ),
                );
            }
        }
    }
    let readiness_path = match c.readiness_probe.as_ref() {
        Some(p) => match &p.http_get {
            Some(h) => Some(
                h.path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into()),
            ),
            None if p.tcp_socket.is_some() => None,
            None => {
                ctx.error(
                    r,
                    &field("readinessProbe"),
                    "embedded mode probes with `httpGet` (a path) or `tcpSocket`",
                );
                None
            }
        },
        None => None,
    };
    let container_concurrency = match spec.container_concurrency {
        None => 0,
        Some(n @ 0..=1000) => n as u32,
        Some(n) => {
            ctx.error(
                r,
                "spec.template.spec.containerConcurrency",
                format!("{n} is not from 0 (unlimited) to 1000"),
            );
            0
        }
    };
    let timeout = match spec.timeout_seconds {
        None => std::time::Duration::from_secs(300),
        Some(n @ 1..=600) => std::time::Duration::from_secs(n as u64),
        Some(n) => {
            ctx.error(
                r,
                "spec.template.spec.timeoutSeconds",
                format!("{n} is not from 1 to 600 seconds"),
            );
            std::time::Duration::from_secs(300)
        }
    };
    // The template's annotations win over the Service's own.
    let mut annotations: BTreeMap<String, String> =
        s.metadata.annotations.clone().unwrap_or_default();
    let from_template = s
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let template_keys: HashSet<String> = from_template.keys().cloned().collect();
    annotations.extend(from_template);
    let scaling =
        match sluice_autoscaler::spec::from_annotations(&annotations, container_concurrency) {
            Ok(s) => Some(s),
            Err(problems) => {
                for p in problems {
                    let where_ = if template_keys.contains(&p.annotation) {
                        "spec.template.metadata"
                    } else {
                        "metadata"
                    };
                    ctx.error(
                        r,
                        &format!("{where_}.annotations[\"{}\"]", p.annotation),
                        p.message,
                    );
                }
                None
            }
        };
    let address = match service_address(&ctx.defaults.ingress_url, &r.namespace, &r.name) {
        Ok(u) => Some(u),
        Err(e) => {
            ctx.error(r, "metadata.name", e);
            None
        }
    };
    if ctx.errors.len() > before {
        return None;
    }
    let (scaling, address) = (scaling?, address?);
    let fingerprint = fingerprint_of(&s.spec, &format!("{annotations:?} {address}"));
    Some(sluice_core::topology::Service {
        key: Key::new(&r.namespace, &r.name),
        command,
        env,
        readiness_path,
        container_concurrency,
        timeout,
        scaling,
        address,
        fingerprint,
    })
}

#[cfg(test)]
mod apiserver_tests {
    use super::*;
    use crate::k8s_sources::{LabelSelector, LabelSelectorRequirement};

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn label_selectors_become_api_server_queries() {
        let table: Vec<(LabelSelector, Result<&str, &str>)> = vec![
            (LabelSelector::default(), Ok("")),
            (
                LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string()), ("a/b".into(), "c".into())].into(),
                    match_expressions: vec![],
                },
                Ok("a/b=c,app=web"),
            ),
            (
                LabelSelector {
                    match_labels: Default::default(),
                    match_expressions: vec![
                        req("tier", "In", &["a", "b"]),
                        req("env", "NotIn", &["prod"]),
                        req("watched", "Exists", &[]),
                        req("legacy", "DoesNotExist", &[]),
                    ],
                },
                Ok("tier in (a,b),env notin (prod),watched,!legacy"),
            ),
            (
                LabelSelector {
                    match_labels: Default::default(),
                    match_expressions: vec![req("tier", "In", &[])],
                },
                Err("matchExpressions[0].values: operator In needs at least one value"),
            ),
            (
                LabelSelector {
                    match_labels: Default::default(),
                    match_expressions: vec![req("tier", "Exists", &["x"])],
                },
                Err("matchExpressions[0].values: operator Exists takes no values"),
            ),
            (
                LabelSelector {
                    match_labels: Default::default(),
                    match_expressions: vec![req("tier", "Like", &["x"])],
                },
                Err("matchExpressions[0].operator: `Like` is not an operator; use In, NotIn, Exists or DoesNotExist"),
            ),
            (
                LabelSelector {
                    match_labels: [("app".to_string(), "a b".to_string())].into(),
                    match_expressions: vec![],
                },
                Err("matchLabels.app: `a b` is not a label value (at most 63 of a-z, A-Z, 0-9, `-`, `_`, `.`)"),
            ),
        ];
        for (selector, want) in table {
            let got = label_selector_query(&selector).map_err(|(f, m)| format!("{f}: {m}"));
            assert_eq!(
                got,
                want.map(str::to_string).map_err(str::to_string),
                "{selector:?}"
            );
        }
    }

    fn defaults() -> Defaults {
        Defaults::new(Url::parse("http://127.0.0.1:8080/").unwrap())
    }

    #[test]
    fn an_apiserver_source_compiles_to_plain_values() {
        let yaml = r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: team}
---
apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {name: watch, namespace: team}
spec:
  mode: Resource
  serviceAccountName: watcher
  resources:
    - apiVersion: v1
      kind: ConfigMap
      selector: {matchLabels: {app: web}}
    - apiVersion: apps/v1
      kind: Deployment
  owner: {apiVersion: apps/v1, kind: ReplicaSet}
  namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [dev]}]}
  ceOverrides: {extensions: {team: blue}}
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"#;
        let loaded = crate::load::parse_yaml(yaml, "f.yaml").unwrap();
        let t = build(&loaded, &defaults()).unwrap();
        let a = &t.apiserver_sources[&Key::new("team", "watch")];
        assert_eq!(a.mode, ApiServerMode::Resource);
        assert_eq!(
            a.resources,
            [
                WatchedResource {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    label_selector: "app=web".into()
                },
                WatchedResource {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    label_selector: "".into()
                },
            ]
        );
        assert_eq!(a.owner, Some(("apps/v1".into(), "ReplicaSet".into())));
        assert_eq!(
            a.namespaces,
            NamespaceScope::Selector("env in (dev)".into())
        );
        assert_eq!(a.service_account.as_deref(), Some("watcher"));
        assert_eq!(a.extensions.get("team").map(String::as_str), Some("blue"));
        assert_eq!(a.sink.to_string(), "http://127.0.0.1:8080/team/default");
        assert!(a.filter.is_none());
    }

    #[test]
    fn apiserver_source_problems_are_reported_together() {
        let yaml = r#"apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {name: bad}
spec:
  mode: Everything
  resources:
    - apiVersion: Apps/v1
      kind: Deployment
      selector: {matchExpressions: [{key: tier, operator: In}]}
  sink: {uri: "http://s/"}
"#;
        let loaded = crate::load::parse_yaml(yaml, "f.yaml").unwrap();
        let errs: Vec<_> = build(&loaded, &defaults())
            .unwrap_err()
            .iter()
            .map(|e| format!("{}: {}", e.field.clone().unwrap_or_default(), e.message))
            .collect();
        assert_eq!(
            errs,
            [
                "spec.resources[0].apiVersion: `Apps/v1` is not an apiVersion (`v1`, `apps/v1`, `<group>/<version>`)",
                "spec.resources[0].selector.matchExpressions[0].values: operator In needs at least one value",
                "spec.mode: `Everything` is not a mode; use `Reference` (events carry a reference to the object) or `Resource` (the whole object)",
            ]
        );
    }

    #[test]
    fn a_container_source_runs_its_command_and_refuses_what_embedded_mode_cannot_do() {
        let ok = r#"apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {name: c}
spec:
  template:
    spec:
      containers:
        - image: x
          command: [/bin/sh, -c]
          args: ["echo hi"]
          env: [{name: A, value: "1"}]
          workingDir: /tmp
  sink: {uri: "http://s/"}
"#;
        let t = build(&crate::load::parse_yaml(ok, "f").unwrap(), &defaults()).unwrap();
        let c = &t.container_sources[&Key::new("default", "c")];
        assert_eq!(c.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(c.working_dir.as_deref(), Some("/tmp"));
        let bad = r#"apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {name: c}
spec:
  template:
    spec:
      containers:
        - image: x
          env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]
  sink: {uri: "http://s/"}
"#;
        let errs: Vec<_> = build(&crate::load::parse_yaml(bad, "f").unwrap(), &defaults())
            .unwrap_err()
            .iter()
            .map(|e| e.field.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            errs,
            [
                "spec.template.spec.containers[0].command",
                "spec.template.spec.containers[0].env[0].valueFrom"
            ]
        );
    }

    #[test]
    fn api_versions() {
        for ok in ["v1", "apps/v1", "sources.knative.dev/v1beta1"] {
            assert!(valid_api_version(ok), "{ok}");
        }
        for bad in ["", "/v1", "apps/", "Apps/v1", "v1/"] {
            assert!(!valid_api_version(bad), "{bad}");
        }
    }
}
