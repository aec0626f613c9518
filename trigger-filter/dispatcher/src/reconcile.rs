//! The reconciler: owns channels and workers, converges them to the topology, reports status.

use crate::worker::Worker;
use crate::ChannelFactory;
use async_trait::async_trait;
use sluice_broker::{BrokerEntry, Ingress};
use sluice_channels::{Channel, ChannelError, Health, SubscriptionSpec};
use sluice_core::metrics::{DropLabels, Metrics};
use sluice_core::status::{Status, StatusBoard};
use sluice_core::topology::{Broker, Key, Kind, ObjectRef, Subscription, Topology};
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
    broker: Arc<Broker>,
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
    broker: Key,
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
    channels: HashMap<Key, RunningChannel>,
    /// Brokers without a channel, and why.
    failed: HashMap<Key, String>,
    workers: HashMap<ObjectRef, RunningWorker>,
    /// Subscriptions that could not be started, and why.
    sub_failed: HashMap<ObjectRef, String>,
    retiring: Vec<Retiring>,
    /// Per object: the fingerprint last seen and its generation (bumped on each change).
    generations: HashMap<ObjectRef, (u64, i64)>,
    restarts: HashMap<ObjectRef, u32>,
}

impl Reconciler {
    pub(crate) fn new(
        ingress: Arc<Ingress>,
        metrics: Arc<Metrics>,
        factory: Box<dyn ChannelFactory>,
        status: Arc<StatusBoard>,
        applied: watch::Sender<u64>,
    ) -> Self {
        Reconciler {
            ingress,
            metrics,
            sender: Sender::new(),
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
        self.publish_routes();
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
            );
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
        // Deleted brokers: their workers stop, their subscriptions go, their channel closes.
        let deleted: Vec<Key> = self
            .channels
            .keys()
            .filter(|k| !t.brokers.contains_key(*k))
            .cloned()
            .collect();
        for key in deleted {
            if let Some(running) = self.channels.remove(&key) {
                self.delete_channel(&key, running.channel).await;
            }
        }
        self.failed.retain(|k, _| t.brokers.contains_key(k));

        // New, changed and failed brokers: make their channels (concurrently: one slow or
        // unreachable server does not hold up the others).
        let wanted: Vec<Arc<Broker>> = t
            .brokers
            .values()
            .filter(|b| {
                self.channels
                    .get(&b.key)
                    .is_none_or(|r| r.broker.channel != b.channel)
            })
            .cloned()
            .collect();
        let factory = &self.factory;
        let made = futures::future::join_all(wanted.into_iter().map(|b| async move {
            let r = factory.create(&b.key, &b.channel).await;
            (b, r)
        }))
        .await;
        for (broker, result) in made {
            let key = broker.key.clone();
            match result {
                Ok(channel) => {
                    tracing::info!(broker = %key, class = broker.channel.class_name(), "broker channel ready");
                    self.failed.remove(&key);
                    let old = self.channels.insert(
                        key.clone(),
                        RunningChannel {
                            broker,
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
                            tracing::error!(broker = %key, error = %reason, "the broker's new channel settings cannot be applied; still serving with the previous ones");
                            running.update_failed = Some(reason);
                        }
                        None => {
                            tracing::error!(broker = %key, error = %reason, "broker channel could not be created; the broker is not ready");
                            self.failed.insert(key, reason);
                        }
                    }
                }
            }
        }
        // Settings that are unchanged again clear an earlier failure to change them.
        for (key, running) in self.channels.iter_mut() {
            if t.brokers
                .get(key)
                .is_some_and(|b| b.channel == running.broker.channel)
            {
                running.update_failed = None;
                running.broker = t.brokers[key].clone();
            }
        }
    }

    /// Moves a replaced channel and its workers aside; they deliver what it holds.
    async fn retire(&mut self, broker: Key, channel: Arc<dyn Channel>) {
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

    async fn delete_channel(&mut self, key: &Key, channel: Arc<dyn Channel>) {
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
            tracing::warn!(broker = %key, pending, "broker deleted; the events it still held in memory are dropped");
            self.count_lost(key, "broker_deleted", pending);
        }
        channel.close().await;
        tracing::info!(broker = %key, "broker removed");
    }

    fn count_lost(&self, broker: &Key, reason: &str, n: usize) {
        self.metrics
            .dropped
            .get_or_create(&DropLabels {
                namespace: broker.namespace.clone(),
                broker: broker.name.clone(),
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
            let current_channel = self.channels.get(&w.sub.channel.key).map(|c| &c.channel);
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
            let Some(channel) = self
                .channels
                .get(&sub.channel.key)
                .map(|c| c.channel.clone())
            else {
                continue; // its broker has no channel yet; reported, retried
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

    fn publish_routes(&self) {
        let mut entries: HashMap<Key, BrokerEntry> = self
            .channels
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    BrokerEntry::new(k, c.channel.clone(), &self.metrics),
                )
            })
            .collect();
        for (k, reason) in &self.failed {
            let channel: Arc<dyn Channel> = Arc::new(Unavailable(reason.clone()));
            entries.insert(k.clone(), BrokerEntry::new(k, channel, &self.metrics));
        }
        self.ingress.set_brokers(entries);
    }

    /// Writes every broker's and subscription's status.
    fn report(&self, t: &Topology) {
        for key in t.brokers.keys() {
            let obj = ObjectRef::broker(key.clone());
            let gen = self.generation(&obj);
            let status = if let Some(reason) = self.failed.get(key) {
                Status::not_ready(gen, "ChannelFailure", reason.clone())
            } else if let Some(running) = self.channels.get(key) {
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
            };
            self.status.set(obj, status);
        }
        for (owner, sub) in &t.subscriptions {
            let gen = self.generation(owner);
            let broker_status = self.status.get(&ObjectRef::broker(sub.channel.key.clone()));
            let status = if !t.brokers.contains_key(&sub.channel.key) {
                Status::not_ready(
                    gen,
                    "BrokerDoesNotExist",
                    format!("broker {} does not exist", sub.channel.key),
                )
            } else if let Some(reason) = self.sub_failed.get(owner) {
                Status::not_ready(gen, "SubscriptionFailed", reason.clone())
            } else if let (Some(b), false) = (&broker_status, self.workers.contains_key(owner)) {
                if b.is_ready() {
                    Status::unknown(gen, "SubscriptionPending", "starting")
                } else {
                    Status::not_ready(gen, "BrokerNotReady", b.message.clone())
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
        // Objects whose latest edit is invalid: the reason wins over the running state.
        for (obj, problem) in &t.invalid {
            let gen = self.generation(obj);
            let running = match obj.kind {
                Kind::Broker => t.brokers.contains_key(&obj.key),
                _ => t.subscriptions.contains_key(obj),
            };
            let message = if running {
                format!("{problem} (the previous version keeps running)")
            } else {
                problem.clone()
            };
            self.status
                .set(obj.clone(), Status::not_ready(gen, "InvalidSpec", message));
        }
        // Forget deleted brokers and triggers (sources are reported by their own owner).
        self.status.retain(|o| match o.kind {
            Kind::Broker => t.brokers.contains_key(&o.key) || t.invalid.contains_key(o),
            Kind::Trigger => t.subscriptions.contains_key(o) || t.invalid.contains_key(o),
            _ => true,
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
