//! The reconciler: owns channels and workers, converges them to the topology, reports status.

use crate::worker::Worker;
use crate::ChannelFactory;
use async_trait::async_trait;
use sluice_broker::{BrokerEntry, Ingress};
use sluice_channels::{Channel, ChannelError, Health, SubscriptionSpec};
use sluice_core::metrics::{DropLabels, Metrics};
use sluice_core::status::{Status, StatusBoard};
use sluice_core::topology::{ChannelConfig, Flow, Kind, ObjectRef, Subscription, Topology};
use sluice_delivery::Sender;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often workers are supervised, retired channels checked and statuses refreshed.
const TICK: Duration = Duration::from_millis(250);
/// First and longest wait before retrying what did not converge.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a shutdown left behind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every in-memory channel was empty before the drain period ended.
    pub drained: bool,
    /// Events still held in memory at the deadline (lost with the process).
    pub lost: usize,
}

/// Stands in for a broker whose channel could not be created: its ingress answers 503 with
/// the reason (not 404) until the channel comes up.
struct Unavailable(String);

#[async_trait]
impl Channel for Unavailable {
    async fn publish(&self, _: sluice_core::Envelope) -> Result<(), ChannelError> {
        Err(ChannelError::Unavailable(self.0.clone()))
    }

    async fn subscribe(
        &self,
        _: SubscriptionSpec,
    ) -> Result<Box<dyn sluice_channels::Subscription>, ChannelError> {
        Err(ChannelError::Unavailable(self.0.clone()))
    }

    async fn remove_subscription(&self, _: &str) -> Result<(), ChannelError> {
        Ok(())
    }

    fn health(&self) -> Health {
        Health::NotReady(self.0.clone())
    }
}

struct RunningChannel {
    /// The settings it was made with.
    config: ChannelConfig,
    channel: Arc<dyn Channel>,
    /// The broker's newer settings could not be applied; this channel (older settings)
    /// keeps serving meanwhile.
    update_failed: Option<String>,
}

struct RunningWorker {
    sub: Arc<Subscription>,
    channel: Arc<dyn Channel>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningWorker {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A channel replaced by one with new settings, delivering what it still holds.
struct Retiring {
    /// The broker or messaging channel it belonged to.
    broker: ObjectRef,
    channel: Arc<dyn Channel>,
    workers: Vec<RunningWorker>,
}

pub(crate) struct Reconciler {
    ingress: Arc<Ingress>,
    metrics: Arc<Metrics>,
    sender: Sender,
    factory: Box<dyn ChannelFactory>,
    status: Arc<StatusBoard>,
    applied: watch::Sender<u64>,
    /// Keyed by `ObjectRef::broker` / `ObjectRef::channel`.
    channels: HashMap<ObjectRef, RunningChannel>,
    /// Brokers and messaging channels without storage, and why.
    failed: HashMap<ObjectRef, String>,
    workers: HashMap<ObjectRef, RunningWorker>,
    /// Subscriptions that could not be started, and why.
    sub_failed: HashMap<ObjectRef, String>,
    retiring: Vec<Retiring>,
    /// Per object: the fingerprint last seen and its generation (bumped on each change).
    generations: HashMap<ObjectRef, (u64, i64)>,
    restarts: HashMap<ObjectRef, u32>,
    backlogs: crate::Backlogs,
}

impl Reconciler {
    pub(crate) fn new(
        ingress: Arc<Ingress>,
        metrics: Arc<Metrics>,
        factory: Box<dyn ChannelFactory>,
        status: Arc<StatusBoard>,
        applied: watch::Sender<u64>,
        backlogs: crate::Backlogs,
        sender: Sender,
    ) -> Self {
        Reconciler {
            ingress,
            metrics,
            sender,
            factory,
            status,
            applied,
            channels: HashMap::new(),
            failed: HashMap::new(),
            workers: HashMap::new(),
            sub_failed: HashMap::new(),
            retiring: Vec::new(),
            generations: HashMap::new(),
            restarts: HashMap::new(),
            backlogs,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut topology: watch::Receiver<Arc<Topology>>,
        mut shutdown: oneshot::Receiver<(Duration, oneshot::Sender<ShutdownReport>)>,
    ) {
        let mut current = topology.borrow_and_update().clone();
        let mut converged = self.reconcile(&current).await;
        let mut retry_wait = RETRY_MIN;
        let mut retry_at = Instant::now() + retry_wait;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = topology.changed() => {
                    if changed.is_err() {
                        // The publisher is gone: keep running what we have until shutdown.
                        let (drain, reply) = match (&mut shutdown).await {
                            Ok(x) => x,
                            Err(_) => (Duration::ZERO, oneshot::channel().0),
                        };
                        let _ = reply.send(self.shutdown(drain, &current).await);
                        return;
                    }
                    current = topology.borrow_and_update().clone();
                    converged = self.reconcile(&current).await;
                    retry_wait = RETRY_MIN;
                    retry_at = Instant::now() + retry_wait;
                }
                _ = tokio::time::sleep_until(retry_at), if !converged => {
                    converged = self.reconcile(&current).await;
                    retry_wait = (retry_wait * 2).min(RETRY_MAX);
                    retry_at = Instant::now() + retry_wait;
                }
                _ = tick.tick() => {
                    if self.supervise().await {
                        converged = self.reconcile(&current).await;
                    }
                    self.retire_drained().await;
                    self.publish_backlogs();
                    self.report(&current);
                }
                cmd = &mut shutdown => {
                    let (drain, reply) = match cmd {
                        Ok(x) => x,
                        Err(_) => (Duration::ZERO, oneshot::channel().0),
                    };
                    let _ = reply.send(self.shutdown(drain, &current).await);
                    return;
                }
            }
        }
    }

    /// One pass towards `t`. Returns whether everything is running as wanted.
    async fn reconcile(&mut self, t: &Topology) -> bool {
        self.track_generations(t);
        self.reconcile_channels(t).await;
        self.reconcile_workers(t).await;
        self.publish_backlogs();
        // Policies before routes: a new broker is never served without its policies.
        self.ingress.apply_auth(t);
        self.publish_routes();
        self.publish_transforms(t);
        // Deleted brokers and channels leave the event-type registry.
        self.ingress.event_types().retain(|o| t.has_storage(o));
        self.report(t);
        self.applied.send_modify(|n| *n += 1);
        self.failed.is_empty()
            && self.sub_failed.is_empty()
            && self.channels.values().all(|c| c.update_failed.is_none())
    }

    fn track_generations(&mut self, t: &Topology) {
        let fingerprints = t
            .brokers
            .values()
            .map(|b| (ObjectRef::broker(b.key.clone()), b.fingerprint))
            .chain(
                t.subscriptions
                    .values()
                    .map(|s| (s.owner.clone(), s.fingerprint)),
            )
            .chain(
                t.channels
                    .values()
                    .map(|c| (c.object.clone(), c.fingerprint)),
            )
            .chain(t.flows.values().map(|f| (f.object.clone(), f.fingerprint)))
            .chain(t.transforms.values().map(|x| {
                let obj = ObjectRef::new(Kind::EventTransform, x.key.clone());
                (obj, x.fingerprint)
            }));
        for (obj, fp) in fingerprints {
            let e = self.generations.entry(obj).or_insert((fp, 1));
            if e.0 != fp {
                *e = (fp, e.1 + 1);
            }
        }
    }

    fn generation(&self, obj: &ObjectRef) -> i64 {
        self.generations.get(obj).map_or(0, |g| g.1)
    }

    async fn reconcile_channels(&mut self, t: &Topology) {
        // Deleted brokers and channels: their workers stop, their subscriptions go, their
        // storage closes.
        let deleted: Vec<ObjectRef> = self
            .channels
            .keys()
            .filter(|k| !t.has_storage(k))
            .cloned()
            .collect();
        for key in deleted {
            if let Some(running) = self.channels.remove(&key) {
                self.delete_channel(&key, running.channel).await;
            }
        }
        self.failed.retain(|k, _| t.has_storage(k));

        // New, changed and failed ones: make their storage (concurrently: one slow or
        // unreachable server does not hold up the others).
        let wanted: Vec<(ObjectRef, ChannelConfig)> = t
            .storages()
            .filter(|(k, config)| self.channels.get(k).is_none_or(|r| &r.config != *config))
            .map(|(k, c)| (k, c.clone()))
            .collect();
        let factory = &self.factory;
        let made = futures::future::join_all(wanted.into_iter().map(|(k, config)| async move {
            let r = factory.create(&k, &config).await;
            (k, config, r)
        }))
        .await;
        for (key, config, result) in made {
            match result {
                Ok(channel) => {
                    tracing::info!(channel = %key, class = config.class_name(), "channel ready");
                    self.failed.remove(&key);
                    let old = self.channels.insert(
                        key.clone(),
                        RunningChannel {
                            config,
                            channel,
                            update_failed: None,
                        },
                    );
                    if let Some(old) = old {
                        self.retire(key, old.channel).await;
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    match self.channels.get_mut(&key) {
                        Some(running) => {
                            tracing::error!(channel = %key, error = %reason, "the new channel settings cannot be applied; still serving with the previous ones");
                            running.update_failed = Some(reason);
                        }
                        None => {
                            tracing::error!(channel = %key, error = %reason, "channel could not be created; it is not ready");
                            self.failed.insert(key, reason);
                        }
                    }
                }
            }
        }
        // Settings that are unchanged again clear an earlier failure to change them.
        for (key, config) in t.storages() {
            if let Some(running) = self.channels.get_mut(&key) {
                if &running.config == config {
                    running.update_failed = None;
                }
            }
        }
    }

    /// Moves a replaced channel and its workers aside; they deliver what it holds.
    async fn retire(&mut self, broker: ObjectRef, channel: Arc<dyn Channel>) {
        let owners: Vec<ObjectRef> = self
            .workers
            .iter()
            .filter(|(_, w)| Arc::ptr_eq(&w.channel, &channel))
            .map(|(k, _)| k.clone())
            .collect();
        let workers: Vec<RunningWorker> = owners
            .iter()
            .filter_map(|k| self.workers.remove(k))
            .collect();
        tracing::info!(broker = %broker, pending = ?channel.pending(), "channel settings changed; the old channel delivers what it holds, new events go to the new one");
        self.retiring.push(Retiring {
            broker,
            channel,
            workers,
        });
    }

    /// Closes retired channels once they hold nothing (durable ones at once: what they hold
    /// is kept by their server).
    async fn retire_drained(&mut self) {
        let mut i = 0;
        while i < self.retiring.len() {
            let done = matches!(self.retiring[i].channel.pending(), None | Some(0));
            if !done {
                i += 1;
                continue;
            }
            let r = self.retiring.swap_remove(i);
            for w in r.workers {
                w.stop().await;
            }
            r.channel.close().await;
            tracing::info!(broker = %r.broker, "retired channel drained and closed");
        }
    }

    async fn delete_channel(&mut self, key: &ObjectRef, channel: Arc<dyn Channel>) {
        let owners: Vec<ObjectRef> = self
            .workers
            .iter()
            .filter(|(_, w)| Arc::ptr_eq(&w.channel, &channel))
            .map(|(k, _)| k.clone())
            .collect();
        for owner in owners {
            if let Some(w) = self.workers.remove(&owner) {
                let id = w.sub.channel_id();
                w.stop().await;
                if let Err(e) = channel.remove_subscription(&id).await {
                    tracing::warn!(subscription = %owner, error = %e, "could not remove the subscription of a deleted broker");
                }
            }
        }
        let pending = channel.pending().unwrap_or(0);
        if pending > 0 {
            tracing::warn!(channel = %key, pending, "deleted; the events it still held in memory are dropped");
            self.count_lost(key, "broker_deleted", pending);
        }
        channel.close().await;
        tracing::info!(channel = %key, "removed");
    }

    fn count_lost(&self, owner: &ObjectRef, reason: &str, n: usize) {
        let broker = match owner.kind {
            Kind::Broker => owner.key.name.clone(),
            _ => format!("channels/{}", owner.key.name),
        };
        self.metrics
            .dropped
            .get_or_create(&DropLabels {
                namespace: owner.key.namespace.clone(),
                broker,
                trigger: String::new(),
                reason: reason.into(),
            })
            .inc_by(n as u64);
    }

    async fn reconcile_workers(&mut self, t: &Topology) {
        // Stop the deleted and the changed.
        let mut stop = Vec::new();
        for (owner, w) in &self.workers {
            let wanted = t.subscriptions.get(owner);
            let current_channel = self.channels.get(&w.sub.channel).map(|c| &c.channel);
            let keep = wanted.is_some_and(|s| {
                s.fingerprint == w.sub.fingerprint
                    && s.channel == w.sub.channel
                    && current_channel.is_some_and(|c| Arc::ptr_eq(c, &w.channel))
            });
            if !keep {
                stop.push((
                    owner.clone(),
                    wanted.is_none_or(|s| s.channel != w.sub.channel),
                ));
            }
        }
        for (owner, removed) in stop {
            let Some(w) = self.workers.remove(&owner) else {
                continue;
            };
            let (channel, id) = (w.channel.clone(), w.sub.channel_id());
            w.stop().await;
            if removed {
                if let Err(e) = channel.remove_subscription(&id).await {
                    tracing::warn!(subscription = %owner, error = %e, "could not remove the subscription");
                }
                tracing::info!(subscription = %owner, "subscription removed");
            }
        }
        self.sub_failed
            .retain(|k, _| t.subscriptions.contains_key(k));
        self.restarts.retain(|k, _| t.subscriptions.contains_key(k));

        // Start the new and the changed.
        for (owner, sub) in &t.subscriptions {
            if self.workers.contains_key(owner) {
                continue;
            }
            let Some(channel) = self.channels.get(&sub.channel).map(|c| c.channel.clone()) else {
                continue; // its broker or channel has no storage yet; reported, retried
            };
            let spec = SubscriptionSpec {
                id: sub.channel_id(),
                start_from: sub.start_from,
                ordered: sub.ordered,
            };
            match channel.subscribe(spec).await {
                Ok(source) => {
                    let stop = CancellationToken::new();
                    let worker = Worker::new(
                        sub.clone(),
                        self.ingress.clone(),
                        self.sender.clone(),
                        &self.metrics,
                        channel.redelivers_with_delay(),
                        stop.clone(),
                    );
                    let task = tokio::spawn(worker.run(source));
                    tracing::info!(subscription = %owner, subscriber = %sub.subscriber, "subscription running");
                    self.sub_failed.remove(owner);
                    self.workers.insert(
                        owner.clone(),
                        RunningWorker {
                            sub: sub.clone(),
                            channel,
                            stop,
                            task,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(subscription = %owner, error = %e, "could not subscribe; retrying");
                    self.sub_failed.insert(owner.clone(), e.to_string());
                }
            }
        }
    }

    /// Restarts nothing itself: forgets workers that ended on their own (a panic, or the
    /// channel closed their subscription) so the next pass starts them again. Returns
    /// whether any did.
    async fn supervise(&mut self) -> bool {
        let ended: Vec<ObjectRef> = self
            .workers
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for owner in &ended {
            let Some(w) = self.workers.remove(owner) else {
                continue;
            };
            let why = match w.task.await {
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    format!("panicked: {msg}")
                }
                _ => "its channel subscription ended".to_string(),
            };
            let n = self.restarts.entry(owner.clone()).or_default();
            *n += 1;
            tracing::error!(subscription = %owner, restarts = *n, "worker ended unexpectedly ({why}); restarting it");
        }
        !ended.is_empty()
    }

    /// Which channel subscriptions POST to which URL (retiring channels included: they
    /// still hold events for the same subscriber).
    fn publish_backlogs(&self) {
        let running = self.workers.values();
        let retiring = self.retiring.iter().flat_map(|r| r.workers.iter());
        let sources = running
            .chain(retiring)
            .filter(|w| w.sub.subscriber_target.is_none())
            .map(|w| crate::BacklogSource {
                url: w.sub.subscriber.as_str().to_string(),
                channel: w.channel.clone(),
                id: w.sub.channel_id(),
            })
            .collect();
        self.backlogs.publish(sources);
    }

    fn publish_routes(&self) {
        let mut entries: HashMap<ObjectRef, BrokerEntry> = self
            .channels
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    BrokerEntry::for_object(k, c.channel.clone(), &self.metrics),
                )
            })
            .collect();
        for (k, reason) in &self.failed {
            let channel: Arc<dyn Channel> = Arc::new(Unavailable(reason.clone()));
            entries.insert(
                k.clone(),
                BrokerEntry::for_object(k, channel, &self.metrics),
            );
        }
        self.ingress.set_routes(entries);
    }

    /// Serves every EventTransform on the ingress (they hold no state: replaced whole).
    fn publish_transforms(&self, t: &Topology) {
        let handlers = t
            .transforms
            .values()
            .map(|spec| {
                let handler: Arc<dyn sluice_broker::EventHandler> =
                    Arc::new(crate::transform::Transformer {
                        spec: spec.clone(),
                        sender: self.sender.clone(),
                    });
                (
                    ObjectRef::new(Kind::EventTransform, spec.key.clone()),
                    handler,
                )
            })
            .collect();
        self.ingress.set_handlers(handlers);
    }

    /// The state of a broker's or messaging channel's storage, as a status.
    fn storage_status(&self, storage: &ObjectRef, gen: i64) -> Status {
        if let Some(reason) = self.failed.get(storage) {
            Status::not_ready(gen, "ChannelFailure", reason.clone())
        } else if let Some(running) = self.channels.get(storage) {
            match (running.channel.health(), &running.update_failed) {
                (Health::NotReady(r), _) => Status::not_ready(gen, "ChannelNotReady", r),
                (Health::Ready, Some(r)) => Status::not_ready(
                    gen,
                    "ChannelFailure",
                    format!("the new channel settings cannot be applied ({r}); events still go to the channel with the previous settings"),
                ),
                (Health::Ready, None) => Status::ready(gen),
            }
        } else {
            Status::unknown(gen, "ChannelPending", "the channel is being created")
        }
    }

    /// Writes every broker's and subscription's status.
    fn report(&self, t: &Topology) {
        for key in t.brokers.keys() {
            let obj = ObjectRef::broker(key.clone());
            let gen = self.generation(&obj);
            let status = self.storage_status(&obj, gen);
            self.status.set(obj, status);
        }
        for c in t.channels.values() {
            let gen = self.generation(&c.object);
            let status = self.storage_status(&c.storage(), gen);
            self.status.set(c.object.clone(), status);
        }
        for (owner, sub) in &t.subscriptions {
            let gen = self.generation(owner);
            let (what, not_exist, not_ready) = match sub.channel.kind {
                Kind::Broker => ("broker", "BrokerDoesNotExist", "BrokerNotReady"),
                _ => ("channel", "ChannelDoesNotExist", "ChannelNotReady"),
            };
            let channel_status = self.storage_status(&sub.channel, gen);
            let status = if !t.has_storage(&sub.channel) {
                Status::not_ready(
                    gen,
                    not_exist,
                    format!("{what} {} does not exist", sub.channel.key),
                )
            } else if let Some(reason) = self.sub_failed.get(owner) {
                Status::not_ready(gen, "SubscriptionFailed", reason.clone())
            } else if !self.workers.contains_key(owner) {
                if channel_status.is_ready() {
                    Status::unknown(gen, "SubscriptionPending", "starting")
                } else {
                    Status::not_ready(gen, not_ready, channel_status.message.clone())
                }
            } else if self.workers.contains_key(owner) {
                match self.restarts.get(owner) {
                    Some(n) => Status {
                        message: format!("the worker was restarted {n} time(s) after ending unexpectedly; see the log"),
                        ..Status::ready(gen)
                    },
                    None => Status::ready(gen),
                }
            } else {
                Status::unknown(gen, "SubscriptionPending", "starting")
            };
            self.status.set(owner.clone(), status);
        }
        // Sequences and Parallels: what their channels and subscriptions say.
        for flow in t.flows.values() {
            let gen = self.generation(&flow.object);
            let parts = flow_parts(flow, t, &self.status);
            self.status
                .set(flow.object.clone(), flow_status(gen, &parts));
        }
        // EventTransforms are served as soon as they are published.
        for key in t.transforms.keys() {
            let obj = ObjectRef::new(Kind::EventTransform, key.clone());
            let gen = self.generation(&obj);
            self.status.set(obj, Status::ready(gen));
        }
        // Objects whose latest edit is invalid: the reason wins over the running state.
        for (obj, problem) in &t.invalid {
            let gen = self.generation(obj);
            let running = is_running(t, obj);
            let message = if running {
                format!("{problem} (the previous version keeps running)")
            } else {
                problem.clone()
            };
            self.status
                .set(obj.clone(), Status::not_ready(gen, "InvalidSpec", message));
        }
        // Forget deleted objects. Sources and Services are reported (and forgotten) by their
        // own owners: leave their entries alone.
        self.status.retain(|o| match o.kind {
            Kind::PingSource
            | Kind::KafkaSource
            | Kind::ApiServerSource
            | Kind::ContainerSource
            | Kind::Service
            | Kind::ConfigMap => true,
            _ => is_running(t, o) || t.invalid.contains_key(o),
        });
    }

    async fn shutdown(mut self, drain: Duration, current: &Topology) -> ShutdownReport {
        let deadline = Instant::now() + drain;
        let pending = |s: &Self| -> usize {
            s.channels
                .values()
                .map(|c| &c.channel)
                .chain(s.retiring.iter().map(|r| &r.channel))
                .filter_map(|c| c.pending())
                .sum()
        };
        // Keep delivering (and supervising) until memory is empty or time is up.
        let mut left = pending(&self);
        while left > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20).min(drain)).await;
            if self.supervise().await {
                self.reconcile_workers(current).await;
            }
            self.retire_drained().await;
            left = pending(&self);
        }
        let drained = left == 0;
        // Stop everything: deliveries still waiting give their messages back.
        for (_, w) in self.workers.drain() {
            w.stop.cancel();
            let _ = w.task.await;
        }
        let retiring: Vec<Retiring> = self.retiring.drain(..).collect();
        let mut all = Vec::new();
        for r in retiring {
            for w in r.workers {
                w.stop().await;
            }
            all.push((r.broker, r.channel));
        }
        all.extend(
            self.channels
                .iter()
                .map(|(k, c)| (k.clone(), c.channel.clone())),
        );
        let mut lost = 0;
        for (key, channel) in all {
            if let Some(n) = channel.pending().filter(|n| *n > 0) {
                lost += n;
                tracing::error!(broker = %key, events = n, "the drain period ended with events still in memory; they are lost");
                self.count_lost(&key, "shutdown_drain_timeout", n);
            }
            channel.close().await;
        }
        if drained {
            tracing::info!("every in-memory event was delivered before shutdown");
        }
        ShutdownReport { drained, lost }
    }
}

/// Whether the topology runs `obj` (the reconciler reports a status for it).
fn is_running(t: &Topology, obj: &ObjectRef) -> bool {
    match obj.kind {
        Kind::Broker => t.brokers.contains_key(&obj.key),
        Kind::Trigger | Kind::Subscription => t.subscriptions.contains_key(obj),
        Kind::Sequence | Kind::Parallel => t.flows.contains_key(obj),
        Kind::EventTransform => t.transforms.contains_key(&obj.key),
        k if k.is_channel() => t.channels.get(&obj.key).is_some_and(|c| &c.object == obj),
        _ => false,
    }
}

/// One dependent of a flow's Ready: which part, and its status (`None`: not reported yet).
#[derive(Debug, Clone)]
struct Part {
    object: ObjectRef,
    is_channel: bool,
    status: Option<Status>,
}

fn flow_parts(flow: &Flow, t: &Topology, board: &StatusBoard) -> Vec<Part> {
    let channels = flow
        .channels
        .iter()
        .filter_map(|k| t.channels.get(k))
        .map(|c| Part {
            object: c.object.clone(),
            is_channel: true,
            status: board.get(&c.object),
        });
    let subs = flow.subscriptions.iter().map(|o| Part {
        object: o.clone(),
        is_channel: false,
        status: board.get(o),
    });
    channels.chain(subs).collect()
}

/// A Sequence's or Parallel's Ready from its parts (SEMANTICS.md §8: False if any dependent
/// is False, else Unknown if any is Unknown or missing, else True). Channels are checked
/// before subscriptions, so the reason points at the first thing to fix: `ChannelsNotReady`
/// or `SubscriptionsNotReady`, the message naming the part and its own reason.
fn flow_status(gen: i64, parts: &[Part]) -> Status {
    use sluice_core::status::Ready;
    let worst = |is_channel: bool| -> Option<(Ready, String)> {
        let mut unknown = None;
        for p in parts.iter().filter(|p| p.is_channel == is_channel) {
            match &p.status {
                Some(s) if s.ready == Ready::False => {
                    return Some((
                        Ready::False,
                        format!("{}: {}: {}", p.object, s.reason, s.message),
                    ))
                }
                Some(s) if s.ready == Ready::True => {}
                Some(s) => {
                    unknown.get_or_insert((
                        Ready::Unknown,
                        format!("{}: {}: {}", p.object, s.reason, s.message),
                    ));
                }
                None => {
                    unknown.get_or_insert((
                        Ready::Unknown,
                        format!("{}: not reconciled yet", p.object),
                    ));
                }
            }
        }
        unknown
    };
    let channels = worst(true);
    let subs = worst(false);
    let pick = match (&channels, &subs) {
        (Some((Ready::False, _)), _) | (Some(_), None) => channels.map(|c| ("ChannelsNotReady", c)),
        (_, Some((Ready::False, _))) | (None, Some(_)) => {
            subs.map(|s| ("SubscriptionsNotReady", s))
        }
        (Some(_), Some(_)) => channels.map(|c| ("ChannelsNotReady", c)),
        (None, None) => None,
    };
    match pick {
        None => Status::ready(gen),
        Some((reason, (Ready::False, m))) => Status::not_ready(gen, reason, m),
        Some((reason, (_, m))) => Status::unknown(gen, reason, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::status::Ready;
    use sluice_core::topology::Key;

    fn part(kind: Kind, name: &str, status: Option<Status>) -> Part {
        Part {
            object: ObjectRef::new(kind, Key::new("ns", name)),
            is_channel: kind.is_channel(),
            status,
        }
    }

    #[test]
    fn flow_ready_follows_its_parts() {
        let ok = |k, n| part(k, n, Some(Status::ready(1)));
        let all_ready = [
            ok(Kind::InMemoryChannel, "c0"),
            ok(Kind::Subscription, "s0"),
        ];
        assert!(flow_status(3, &all_ready).is_ready());
        assert_eq!(flow_status(3, &all_ready).observed_generation, 3);

        // A False subscription beats an Unknown channel (False wins over Unknown).
        let parts = [
            part(
                Kind::InMemoryChannel,
                "c0",
                Some(Status::unknown(1, "ChannelPending", "creating")),
            ),
            part(
                Kind::Subscription,
                "s0",
                Some(Status::not_ready(1, "SubscriptionFailed", "boom")),
            ),
        ];
        let s = flow_status(1, &parts);
        assert_eq!(
            (s.ready, s.reason.as_str()),
            (Ready::False, "SubscriptionsNotReady")
        );
        assert!(
            s.message
                .contains("Subscription ns/s0: SubscriptionFailed: boom"),
            "{}",
            s.message
        );

        // A False channel is named before a False subscription.
        let parts = [
            part(
                Kind::KafkaChannel,
                "c1",
                Some(Status::not_ready(1, "ChannelFailure", "no kafka")),
            ),
            part(
                Kind::Subscription,
                "s0",
                Some(Status::not_ready(1, "SubscriptionFailed", "x")),
            ),
        ];
        let s = flow_status(1, &parts);
        assert_eq!(
            (s.ready, s.reason.as_str()),
            (Ready::False, "ChannelsNotReady")
        );
        assert!(s.message.starts_with("KafkaChannel ns/c1"), "{}", s.message);

        // Missing status: Unknown.
        let parts = [
            ok(Kind::InMemoryChannel, "c0"),
            part(Kind::Subscription, "s0", None),
        ];
        let s = flow_status(1, &parts);
        assert_eq!(
            (s.ready, s.reason.as_str()),
            (Ready::Unknown, "SubscriptionsNotReady")
        );
    }
}
