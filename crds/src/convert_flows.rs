//! Channels, Subscriptions, Sequences and Parallels → the topology's channels and
//! subscriptions: the same graph Brokers and Triggers compile to, so the data plane has one
//! engine (DESIGN.md "One graph").
//!
//! ```text
//! Channel / InMemoryChannel / KafkaChannel / NatsJetStreamChannel ──▶ MessagingChannel
//! Subscription  ──▶ Subscription (channel → subscriber, reply → Broker | Channel | URL | discard)
//! Sequence  s   ──▶ channels s-kn-sequence-i, subscription i: channel i → step i, reply → channel i+1
//! Parallel  p   ──▶ channel p-kn-parallel (ingress) and p-kn-parallel-i per branch;
//!                   p-kn-parallel-filter-i: ingress → filter, reply → branch channel i
//!                   p-kn-parallel-i: branch channel i → subscriber, reply → branch/spec reply
//! ```
//!
//! Names and wiring are Knative's (SEMANTICS.md §10), so what `sluice get` lists matches
//! what `kubectl get channels,subscriptions` shows in a cluster. A flow is compiled all or
//! nothing: one invalid step leaves the whole Sequence out (and, on a reload, its previous
//! version running).

use crate::convert::{delivery_policy, fingerprint_of, resolve, Ctx};
use crate::load::{Loaded, Resource};
use crate::messaging::{
    ChannelTemplate, InMemoryChannelSpec, KafkaChannelSpec, NatsJetStreamChannelSpec,
};
use crate::types::{DeliverySpec, Destination, KReference};
use serde_json::Value;
use sluice_core::delivery::{DeliveryPolicy, Endpoint};
use sluice_core::topology::{
    ChannelConfig, Flow, Key, Kind, MessagingChannel, ObjectRef, ReplyTo, StartFrom, Subscription,
    Topology,
};
use std::sync::Arc;
use url::Url;

/// The channel of step `i` of Sequence `seq` (and its subscription's name).
pub fn sequence_channel(seq: &str, i: usize) -> String {
    format!("{seq}-kn-sequence-{i}")
}

/// The ingress channel of Parallel `p`.
pub fn parallel_ingress(p: &str) -> String {
    format!("{p}-kn-parallel")
}

/// The channel of branch `i` of Parallel `p` (and its subscriber subscription's name).
pub fn parallel_branch(p: &str, i: usize) -> String {
    format!("{p}-kn-parallel-{i}")
}

/// The filter subscription of branch `i` of Parallel `p`.
pub fn parallel_filter(p: &str, i: usize) -> String {
    format!("{p}-kn-parallel-filter-{i}")
}

/// The channel names a resource defines (its own, or those its flow makes).
fn channel_names(r: &Loaded) -> Vec<(String, Kind)> {
    match &r.resource {
        Resource::Channel(_)
        | Resource::InMemoryChannel(_)
        | Resource::KafkaChannel(_)
        | Resource::NatsJetStreamChannel(_) => vec![(r.name.clone(), r.resource.object_kind())],
        Resource::Sequence(s) => {
            let kind = template_kind(s.spec.channel_template.as_ref());
            (0..s.spec.steps.len())
                .map(|i| (sequence_channel(&r.name, i), kind))
                .collect()
        }
        Resource::Parallel(p) => {
            let kind = template_kind(p.spec.channel_template.as_ref());
            let branches = (0..p.spec.branches.len()).map(|i| (parallel_branch(&r.name, i), kind));
            std::iter::once((parallel_ingress(&r.name), kind))
                .chain(branches)
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The Subscription names a resource defines.
fn subscription_names(r: &Loaded) -> Vec<String> {
    match &r.resource {
        Resource::Subscription(_) => vec![r.name.clone()],
        Resource::Sequence(s) => (0..s.spec.steps.len())
            .map(|i| sequence_channel(&r.name, i))
            .collect(),
        Resource::Parallel(p) => (0..p.spec.branches.len())
            .flat_map(|i| [parallel_filter(&r.name, i), parallel_branch(&r.name, i)])
            .collect(),
        _ => Vec::new(),
    }
}

/// The kind a template names, for display (an unknown kind is reported when compiled).
fn template_kind(t: Option<&ChannelTemplate>) -> Kind {
    match t.map(|t| t.kind.as_str()) {
        Some("KafkaChannel") => Kind::KafkaChannel,
        Some("NatsJetStreamChannel") => Kind::NatsJetStreamChannel,
        _ => Kind::InMemoryChannel,
    }
}

/// First pass: records every channel name and flow, so refs resolve whatever the order of
/// the files, and refuses two channels of one name in a namespace (a Channel's backing
/// channel takes its name, so channel kinds share one set of names).
pub(crate) fn register(ctx: &mut Ctx, resources: &[Loaded]) {
    for r in resources {
        if matches!(r.resource, Resource::EventTransform(_)) {
            ctx.transforms.insert(Key::new(&r.namespace, &r.name));
        }
    }
    let mut owners: std::collections::BTreeMap<Key, &Loaded> = Default::default();
    let mut subscriptions: std::collections::BTreeMap<Key, &Loaded> = Default::default();
    for r in resources {
        for name in subscription_names(r) {
            let key = Key::new(&r.namespace, &name);
            match subscriptions.get(&key) {
                Some(first) if first.object() != r.object() => {
                    let msg = format!(
                        "Subscription {key} is also made by {} in {}; a Sequence or Parallel names its Subscriptions `<name>-kn-sequence-<i>` / `<name>-kn-parallel[-filter]-<i>`, so pick another name",
                        first.describe(),
                        first.origin
                    );
                    ctx.error(r, "metadata.name", msg);
                }
                _ => {
                    subscriptions.insert(key, r);
                }
            }
        }
        if matches!(r.resource, Resource::Sequence(_) | Resource::Parallel(_)) {
            ctx.flows.insert(r.object());
        }
        for (name, kind) in channel_names(r) {
            let key = Key::new(&r.namespace, &name);
            match owners.get(&key) {
                Some(first) if first.object() != r.object() => {
                    let msg = format!(
                        "channel {key} is also defined by {} in {}; channel names (including the `-kn-sequence-<i>` / `-kn-parallel-<i>` channels Sequences and Parallels make) must be unique per namespace",
                        first.describe(),
                        first.origin
                    );
                    ctx.error(r, "metadata.name", msg);
                }
                _ => {
                    owners.insert(key.clone(), r);
                    ctx.channels.insert(key, kind);
                }
            }
        }
    }
}

/// The address of a channel on the ingress.
pub(crate) fn channel_url(ctx: &Ctx, key: &Key) -> Option<Endpoint> {
    let url = ctx
        .defaults
        .ingress_url
        .join(&format!("{}/channels/{}", key.namespace, key.name))
        .ok()?;
    Endpoint::new(url).ok()
}

/// The channel a ref to a messaging channel, Sequence or Parallel sends to, or an error at
/// `field` (the ref's path).
fn channel_of(
    ctx: &mut Ctx,
    r: &Loaded,
    reference: &KReference,
    ns: &str,
    field: &str,
) -> Option<Key> {
    let group = reference.api_version.split('/').next().unwrap_or_default();
    match (group, reference.kind.as_str()) {
        ("messaging.knative.dev", kind)
            if matches!(
                kind,
                "Channel" | "InMemoryChannel" | "KafkaChannel" | "NatsJetStreamChannel"
            ) =>
        {
            let key = Key::new(ns, &reference.name);
            if ctx.channels.contains_key(&key) {
                Some(key)
            } else {
                ctx.error(
                    r,
                    field,
                    format!("{kind} {key} is not defined in any loaded file"),
                );
                None
            }
        }
        ("flows.knative.dev", kind @ ("Sequence" | "Parallel")) => {
            let object = ObjectRef::new(
                if kind == "Sequence" {
                    Kind::Sequence
                } else {
                    Kind::Parallel
                },
                Key::new(ns, &reference.name),
            );
            if !ctx.flows.contains(&object) {
                ctx.error(
                    r,
                    field,
                    format!("{object} is not defined in any loaded file"),
                );
                return None;
            }
            let name = match object.kind {
                Kind::Sequence => sequence_channel(&reference.name, 0),
                _ => parallel_ingress(&reference.name),
            };
            Some(Key::new(ns, name))
        }
        (_, kind) => {
            ctx.error(
                r,
                field,
                format!(
                    "{} {kind} is not an addressable Sluice knows; refer to a messaging.knative.dev channel, a flows.knative.dev Sequence or Parallel, a Broker or a Service, or use `uri`",
                    reference.api_version
                ),
            );
            None
        }
    }
}

/// `Destination.ref` to a channel kind, Sequence or Parallel: its address on the ingress.
pub(crate) fn address_of(
    ctx: &mut Ctx,
    r: &Loaded,
    reference: &KReference,
    ns: &str,
    path: &str,
) -> Option<Url> {
    let key = channel_of(ctx, r, reference, ns, &format!("{path}.ref"))?;
    channel_url(ctx, &key).map(|e| e.url().clone())
}

/// The storage a destination names when it is a Broker or a channel / Sequence / Parallel
/// this process serves (and `uri` does not add a path): deliveries to it are published
/// in-process. Only called for destinations that resolved, so the names exist.
pub(crate) fn local_target(ctx: &Ctx, dest: &Destination, namespace: &str) -> Option<ObjectRef> {
    let (Some(reference), None) = (&dest.reference, &dest.uri) else {
        return None;
    };
    let ns = reference
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| namespace.to_string());
    let group = reference.api_version.split('/').next().unwrap_or_default();
    let key = match (group, reference.kind.as_str()) {
        ("eventing.knative.dev", "Broker") => {
            return Some(ObjectRef::broker(Key::new(ns, &reference.name)))
        }
        ("messaging.knative.dev", _) => Key::new(ns, &reference.name),
        ("flows.knative.dev", "Sequence") => Key::new(ns, sequence_channel(&reference.name, 0)),
        ("flows.knative.dev", "Parallel") => Key::new(ns, parallel_ingress(&reference.name)),
        _ => return None,
    };
    ctx.channels
        .contains_key(&key)
        .then(|| ObjectRef::channel(key))
}

/// Where replies go: a Broker or one of our channels is published into in-process (same
/// durability as a producer's event, no HTTP hop); anything else is a URL.
fn reply_target(ctx: &mut Ctx, r: &Loaded, dest: &Destination, path: &str) -> Option<ReplyTo> {
    if let (Some(reference), None) = (&dest.reference, &dest.uri) {
        let ns = reference
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| r.namespace.clone());
        let group = reference.api_version.split('/').next().unwrap_or_default();
        match (group, reference.kind.as_str()) {
            ("eventing.knative.dev", "Broker") => {
                // Checked (exists) by the resolver; the key is what the worker needs.
                resolve(ctx, r, dest, path)?;
                return Some(ReplyTo::Broker(Key::new(ns, &reference.name)));
            }
            ("messaging.knative.dev" | "flows.knative.dev", _) => {
                let key = channel_of(ctx, r, reference, &ns, &format!("{path}.ref"))?;
                let address = channel_url(ctx, &key)?;
                return Some(ReplyTo::Channel { key, address });
            }
            _ => {}
        }
    }
    resolve(ctx, r, dest, path).map(ReplyTo::Endpoint)
}

/// A channel kind's spec, read from a typed resource or from a template's `spec`.
enum KindSpec {
    Memory(InMemoryChannelSpec),
    Kafka(KafkaChannelSpec),
    Nats(NatsJetStreamChannelSpec),
}

impl KindSpec {
    fn kind(&self) -> Kind {
        match self {
            KindSpec::Memory(_) => Kind::InMemoryChannel,
            KindSpec::Kafka(_) => Kind::KafkaChannel,
            KindSpec::Nats(_) => Kind::NatsJetStreamChannel,
        }
    }

    fn parts(&self) -> (&[Value], Option<&DeliverySpec>) {
        match self {
            KindSpec::Memory(s) => (&s.subscribers, s.delivery.as_ref()),
            KindSpec::Kafka(s) => (&s.subscribers, s.delivery.as_ref()),
            KindSpec::Nats(s) => (&s.subscribers, s.delivery.as_ref()),
        }
    }
}

/// A template (default: InMemoryChannel) as the spec of its kind; errors name `path`.
fn template_spec(
    ctx: &mut Ctx,
    r: &Loaded,
    t: Option<&ChannelTemplate>,
    path: &str,
) -> Option<KindSpec> {
    let Some(t) = t else {
        return Some(KindSpec::Memory(InMemoryChannelSpec::default()));
    };
    if !t.api_version.starts_with("messaging.knative.dev/") {
        ctx.error(
            r,
            &format!("{path}.apiVersion"),
            format!(
                "`{}` is not a messaging.knative.dev channel version",
                t.api_version
            ),
        );
        return None;
    }
    let spec = t.spec.clone().unwrap_or(Value::Object(Default::default()));
    fn typed<T: serde::de::DeserializeOwned>(
        ctx: &mut Ctx,
        r: &Loaded,
        spec: Value,
        path: &str,
    ) -> Option<T> {
        serde_path_to_error::deserialize(spec)
            .map_err(|e| {
                let at = e.path().to_string();
                let field = if at == "." {
                    format!("{path}.spec")
                } else {
                    format!("{path}.spec.{at}")
                };
                ctx.error(r, &field, e.into_inner().to_string());
            })
            .ok()
    }
    match t.kind.as_str() {
        "InMemoryChannel" => typed(ctx, r, spec, path).map(KindSpec::Memory),
        "KafkaChannel" => typed(ctx, r, spec, path).map(KindSpec::Kafka),
        "NatsJetStreamChannel" => typed(ctx, r, spec, path).map(KindSpec::Nats),
        other => {
            ctx.error(
                r,
                &format!("{path}.kind"),
                format!("`{other}` is not a channel kind Sluice runs; use InMemoryChannel (in memory), KafkaChannel (a Kafka topic) or NatsJetStreamChannel (a JetStream stream)"),
            );
            None
        }
    }
}

/// The storage of a channel kind's spec, and its `delivery`. `path` is where the spec is
/// (`spec`, or `spec.channelTemplate.spec`).
fn storage(
    ctx: &mut Ctx,
    r: &Loaded,
    spec: &KindSpec,
    path: &str,
) -> Option<(ChannelConfig, Option<DeliveryPolicy>)> {
    let before = ctx.errors.len();
    let (subscribers, delivery) = spec.parts();
    if !subscribers.is_empty() {
        ctx.error(
            r,
            &format!("{path}.subscribers"),
            "is filled in by Knative's reconcilers; write a messaging.knative.dev/v1 Subscription for each subscriber instead",
        );
    }
    let config = match spec {
        KindSpec::Memory(_) => Some(ChannelConfig::Memory {
            capacity: ctx.defaults.memory_capacity,
            max_bytes: ctx.defaults.memory_max_bytes,
        }),
        KindSpec::Kafka(k) => {
            let servers = ctx.defaults.kafka_bootstrap_servers.clone();
            let partitions = k.num_partitions.unwrap_or(1);
            let replication_factor = k.replication_factor.unwrap_or(1);
            if partitions < 1 {
                ctx.error(
                    r,
                    &format!("{path}.numPartitions"),
                    format!("{partitions} is not a positive number of partitions"),
                );
            }
            if replication_factor < 1 {
                ctx.error(
                    r,
                    &format!("{path}.replicationFactor"),
                    format!("{replication_factor} is not a positive replication factor"),
                );
            }
            match servers {
                Some(bootstrap_servers) => Some(ChannelConfig::Kafka {
                    bootstrap_servers,
                    partitions,
                    replication_factor,
                }),
                None => {
                    ctx.error(r, path, "a KafkaChannel needs Kafka: start sluice with --kafka-bootstrap-servers (or SLUICE_KAFKA_BOOTSTRAP_SERVERS)");
                    None
                }
            }
        }
        KindSpec::Nats(_) => match ctx.defaults.nats_url.clone() {
            Some(url) => Some(ChannelConfig::Nats {
                url,
                max_age: ChannelConfig::DEFAULT_NATS_MAX_AGE,
                max_bytes: ChannelConfig::DEFAULT_NATS_MAX_BYTES,
            }),
            None => {
                ctx.error(r, path, "a NatsJetStreamChannel needs a NATS server: start sluice with --nats-url (or SLUICE_NATS_URL)");
                None
            }
        },
    };
    let delivery = match delivery {
        Some(d) => Some(delivery_policy(ctx, r, d, &format!("{path}.delivery"))?),
        None => None,
    };
    (ctx.errors.len() == before).then_some((config?, delivery))
}

fn channel(
    ctx: &mut Ctx,
    key: Key,
    object: ObjectRef,
    owner: Option<ObjectRef>,
    config: ChannelConfig,
    delivery: Option<DeliveryPolicy>,
) -> Option<MessagingChannel> {
    let address = channel_url(ctx, &key)?;
    let fingerprint = fingerprint_of(&(), &format!("{object} {owner:?} {config:?} {delivery:?}"));
    Some(MessagingChannel {
        key,
        object,
        owner,
        channel: config,
        address,
        delivery,
        fingerprint,
    })
}

/// A compiled subscription (owner `Subscription ns/name`).
fn subscription(
    key: Key,
    channel: &Key,
    subscriber: (Endpoint, Option<ObjectRef>),
    reply: ReplyTo,
    delivery: DeliveryPolicy,
) -> Subscription {
    let (subscriber, subscriber_target) = subscriber;
    let fingerprint = fingerprint_of(
        &(),
        &format!("{key} {channel} {subscriber} {subscriber_target:?} {reply:?} {delivery:?}"),
    );
    Subscription {
        owner: ObjectRef::new(Kind::Subscription, key),
        channel: ObjectRef::channel(channel.clone()),
        filter: None,
        subscriber,
        subscriber_target,
        reply,
        delivery,
        ordered: false,
        concurrency: Subscription::DEFAULT_CONCURRENCY,
        start_from: StartFrom::Latest,
        fingerprint,
    }
}

/// Second pass: channels first (Subscriptions inherit their `delivery`), then
/// Subscriptions, then flows.
pub(crate) fn build(ctx: &mut Ctx, resources: &[Loaded], topology: &mut Topology) {
    // Objects already refused (a name clash found by `register`) are left out whole.
    let refused: std::collections::HashSet<ObjectRef> = ctx
        .errors
        .iter()
        .filter_map(|e| e.object.as_deref().cloned())
        .collect();
    let resources: Vec<&Loaded> = resources
        .iter()
        .filter(|r| !refused.contains(&r.object()))
        .collect();
    for r in resources.iter().copied() {
        let kind_spec = match &r.resource {
            Resource::Channel(c) => {
                let before = ctx.errors.len();
                if !c.spec.subscribers.is_empty() {
                    ctx.error(r, "spec.subscribers", "is filled in by Knative's reconcilers; write a messaging.knative.dev/v1 Subscription for each subscriber instead");
                }
                let t = template_spec(
                    ctx,
                    r,
                    c.spec.channel_template.as_ref(),
                    "spec.channelTemplate",
                );
                let own = match &c.spec.delivery {
                    Some(d) => delivery_policy(ctx, r, d, "spec.delivery"),
                    None => None,
                };
                let Some(t) = t else { continue };
                let Some((config, template_delivery)) =
                    storage(ctx, r, &t, "spec.channelTemplate.spec")
                else {
                    continue;
                };
                if ctx.errors.len() > before {
                    continue;
                }
                // The Channel's own delivery, else its template's.
                Some((config, own.or(template_delivery)))
            }
            Resource::InMemoryChannel(c) => {
                storage(ctx, r, &KindSpec::Memory(c.spec.clone()), "spec")
            }
            Resource::KafkaChannel(c) => storage(ctx, r, &KindSpec::Kafka(c.spec.clone()), "spec"),
            Resource::NatsJetStreamChannel(c) => {
                storage(ctx, r, &KindSpec::Nats(c.spec.clone()), "spec")
            }
            _ => continue,
        };
        let Some((config, delivery)) = kind_spec else {
            continue;
        };
        let key = Key::new(&r.namespace, &r.name);
        if let Some(c) = channel(ctx, key.clone(), r.object(), None, config, delivery) {
            topology.channels.insert(key, Arc::new(c));
        }
    }
    for r in resources.iter().copied() {
        if let Resource::Subscription(s) = &r.resource {
            if let Some(sub) = user_subscription(ctx, r, &s.spec, topology) {
                topology
                    .subscriptions
                    .insert(sub.owner.clone(), Arc::new(sub));
            }
        }
    }
    for r in resources.iter().copied() {
        let compiled = match &r.resource {
            Resource::Sequence(s) => sequence(ctx, r, &s.spec),
            Resource::Parallel(p) => parallel(ctx, r, &p.spec),
            _ => continue,
        };
        if let Some(c) = compiled {
            for ch in c.channels {
                topology.channels.insert(ch.key.clone(), Arc::new(ch));
            }
            for s in c.subscriptions {
                topology.subscriptions.insert(s.owner.clone(), Arc::new(s));
            }
            topology
                .flows
                .insert(c.flow.object.clone(), Arc::new(c.flow));
        }
    }
}

fn user_subscription(
    ctx: &mut Ctx,
    r: &Loaded,
    spec: &crate::messaging::SubscriptionSpec,
    topology: &Topology,
) -> Option<Subscription> {
    let before = ctx.errors.len();
    let channel = match &spec.channel {
        None => {
            ctx.error(r, "spec.channel", "is required: name the channel to subscribe to (apiVersion: messaging.knative.dev/v1, kind: Channel or InMemoryChannel, name)");
            None
        }
        Some(c) => {
            let ns = c.namespace.as_deref().filter(|n| !n.is_empty());
            if ns.is_some_and(|n| n != r.namespace) {
                ctx.error(
                    r,
                    "spec.channel.namespace",
                    "a Subscription reads a channel in its own namespace",
                );
                None
            } else if c.kind == "Sequence"
                || c.kind == "Parallel"
                || !c.api_version.starts_with("messaging.knative.dev/")
            {
                ctx.error(r, "spec.channel", format!("{} {} is not a channel; use a messaging.knative.dev kind (Channel, InMemoryChannel, KafkaChannel, NatsJetStreamChannel)", c.api_version, c.kind));
                None
            } else {
                channel_of(ctx, r, c, &r.namespace, "spec.channel")
            }
        }
    };
    let subscriber = match &spec.subscriber {
        None => {
            ctx.error(
                r,
                "spec.subscriber",
                "is required: set `ref` or `uri` of the destination the channel's events go to",
            );
            None
        }
        Some(d) => {
            resolve(ctx, r, d, "spec.subscriber").map(|e| (e, local_target(ctx, d, &r.namespace)))
        }
    };
    let reply = match &spec.reply {
        None => Some(ReplyTo::Discard),
        Some(d) => reply_target(ctx, r, d, "spec.reply"),
    };
    let delivery = match &spec.delivery {
        Some(d) => delivery_policy(ctx, r, d, "spec.delivery"),
        // The channel's delivery, as a whole (SEMANTICS.md §9).
        None => Some(
            channel
                .as_ref()
                .and_then(|k| topology.channels.get(k))
                .and_then(|c| c.delivery.clone())
                .unwrap_or_default(),
        ),
    };
    if ctx.errors.len() > before {
        return None;
    }
    Some(subscription(
        Key::new(&r.namespace, &r.name),
        &channel?,
        subscriber?,
        reply?,
        delivery?,
    ))
}

/// What a flow compiles to.
struct Compiled {
    flow: Flow,
    channels: Vec<MessagingChannel>,
    subscriptions: Vec<Subscription>,
}

impl Compiled {
    fn new(r: &Loaded, address: &str, spec: &impl serde::Serialize) -> Self {
        Compiled {
            flow: Flow {
                object: r.object(),
                address: Key::new(&r.namespace, address),
                channels: Vec::new(),
                subscriptions: Vec::new(),
                fingerprint: fingerprint_of(spec, ""),
            },
            channels: Vec::new(),
            subscriptions: Vec::new(),
        }
    }

    fn add_channel(&mut self, c: MessagingChannel) {
        self.flow.channels.push(c.key.clone());
        self.channels.push(c);
    }

    fn add_subscription(&mut self, s: Subscription) {
        self.flow.subscriptions.push(s.owner.clone());
        self.subscriptions.push(s);
    }
}

/// A flow's channels: the template's storage, one channel per name.
fn flow_channels(
    ctx: &mut Ctx,
    r: &Loaded,
    template: Option<&ChannelTemplate>,
    names: &[String],
) -> Option<(Vec<MessagingChannel>, Option<DeliveryPolicy>)> {
    let t = template_spec(ctx, r, template, "spec.channelTemplate")?;
    let kind = t.kind();
    let (config, delivery) = storage(ctx, r, &t, "spec.channelTemplate.spec")?;
    let mut out = Vec::new();
    for name in names {
        let key = Key::new(&r.namespace, name);
        let object = ObjectRef::new(kind, key.clone());
        out.push(channel(
            ctx,
            key,
            object,
            Some(r.object()),
            config.clone(),
            delivery.clone(),
        )?);
    }
    Some((out, delivery))
}

/// A step's or branch's policy: its own `delivery`, else the template channel's, else the
/// default.
fn step_delivery(
    ctx: &mut Ctx,
    r: &Loaded,
    own: Option<&DeliverySpec>,
    path: &str,
    template: &Option<DeliveryPolicy>,
) -> Option<DeliveryPolicy> {
    match own {
        Some(d) => delivery_policy(ctx, r, d, path),
        None => Some(template.clone().unwrap_or_default()),
    }
}

fn sequence(ctx: &mut Ctx, r: &Loaded, spec: &crate::flows::SequenceSpec) -> Option<Compiled> {
    let before = ctx.errors.len();
    if spec.steps.is_empty() {
        ctx.error(r, "spec.steps", "needs at least one step");
        return None;
    }
    let names: Vec<String> = (0..spec.steps.len())
        .map(|i| sequence_channel(&r.name, i))
        .collect();
    let (channels, template_delivery) =
        flow_channels(ctx, r, spec.channel_template.as_ref(), &names)?;
    let mut out = Compiled::new(r, &names[0], spec);
    let last_reply = match &spec.reply {
        None => Some(ReplyTo::Discard),
        Some(d) => reply_target(ctx, r, d, "spec.reply"),
    };
    let mut subs = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let path = format!("spec.steps[{i}]");
        let dest = step.destination();
        let subscriber =
            resolve(ctx, r, &dest, &path).map(|e| (e, local_target(ctx, &dest, &r.namespace)));
        let delivery = step_delivery(
            ctx,
            r,
            step.delivery.as_ref(),
            &format!("{path}.delivery"),
            &template_delivery,
        );
        // Each step's reply feeds the next step's channel; the last one's goes to `reply`.
        let reply = match channels.get(i + 1) {
            Some(next) => Some(ReplyTo::Channel {
                key: next.key.clone(),
                address: next.address.clone(),
            }),
            None => last_reply.clone(),
        };
        if let (Some(subscriber), Some(delivery), Some(reply)) = (subscriber, delivery, reply) {
            subs.push(subscription(
                Key::new(&r.namespace, &names[i]),
                &channels[i].key,
                subscriber,
                reply,
                delivery,
            ));
        }
    }
    if ctx.errors.len() > before {
        return None;
    }
    channels.into_iter().for_each(|c| out.add_channel(c));
    subs.into_iter().for_each(|s| out.add_subscription(s));
    Some(out)
}

fn parallel(ctx: &mut Ctx, r: &Loaded, spec: &crate::flows::ParallelSpec) -> Option<Compiled> {
    let before = ctx.errors.len();
    if spec.branches.is_empty() {
        ctx.error(r, "spec.branches", "needs at least one branch");
        return None;
    }
    let ingress = parallel_ingress(&r.name);
    let names: Vec<String> = std::iter::once(ingress.clone())
        .chain((0..spec.branches.len()).map(|i| parallel_branch(&r.name, i)))
        .collect();
    let (channels, template_delivery) =
        flow_channels(ctx, r, spec.channel_template.as_ref(), &names)?;
    let mut out = Compiled::new(r, &ingress, spec);
    let spec_reply = match &spec.reply {
        None => Some(ReplyTo::Discard),
        Some(d) => reply_target(ctx, r, d, "spec.reply"),
    };
    let mut subs = Vec::new();
    for (i, branch) in spec.branches.iter().enumerate() {
        let path = format!("spec.branches[{i}]");
        let branch_channel = &channels[i + 1];
        let delivery = step_delivery(
            ctx,
            r,
            branch.delivery.as_ref(),
            &format!("{path}.delivery"),
            &template_delivery,
        );
        // The filter replies with the events that pass; they go to the branch's channel.
        // Without a filter every event passes: the "filter" is the branch channel itself.
        let (filter, filter_reply) = match &branch.filter {
            Some(f) => (
                resolve(ctx, r, f, &format!("{path}.filter"))
                    .map(|e| (e, local_target(ctx, f, &r.namespace))),
                ReplyTo::Channel {
                    key: branch_channel.key.clone(),
                    address: branch_channel.address.clone(),
                },
            ),
            None => (
                Some((
                    branch_channel.address.clone(),
                    Some(branch_channel.storage()),
                )),
                ReplyTo::Discard,
            ),
        };
        let subscriber = resolve(ctx, r, &branch.subscriber, &format!("{path}.subscriber"))
            .map(|e| (e, local_target(ctx, &branch.subscriber, &r.namespace)));
        let reply = match &branch.reply {
            Some(d) => reply_target(ctx, r, d, &format!("{path}.reply")),
            None => spec_reply.clone(),
        };
        if let (Some(filter), Some(subscriber), Some(reply), Some(delivery)) =
            (filter, subscriber, reply, delivery)
        {
            subs.push(subscription(
                Key::new(&r.namespace, parallel_filter(&r.name, i)),
                &channels[0].key,
                filter,
                filter_reply,
                delivery.clone(),
            ));
            subs.push(subscription(
                Key::new(&r.namespace, parallel_branch(&r.name, i)),
                &branch_channel.key,
                subscriber,
                reply,
                delivery,
            ));
        }
    }
    if ctx.errors.len() > before {
        return None;
    }
    channels.into_iter().for_each(|c| out.add_channel(c));
    subs.into_iter().for_each(|s| out.add_subscription(s));
    Some(out)
}
