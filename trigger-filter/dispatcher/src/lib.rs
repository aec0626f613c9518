//! # sluice-dispatcher
//!
//! The running data plane behind the ingress. [`Dataplane::apply`] takes a
//! [`Topology`] and makes the world match it:
//!
//! ```text
//! Topology ──apply──▶ a Channel per broker ──▶ Ingress (publish)
//!                     a dispatcher per trigger: Subscription → filter → Sender → reply → ack
//! ```
//!
//! A reload that leaves a broker's channel settings alone keeps its channel, so queued events
//! survive; a trigger whose fingerprint is unchanged keeps its running dispatcher; a changed
//! trigger gets a new dispatcher on the same subscription (its queue is kept); a deleted trigger
//! has its subscription removed. Channels are made by a [`ChannelFactory`], so the binary
//! decides which channel kinds are compiled in.

mod dispatch;

use async_trait::async_trait;
use sluice_broker::{BrokerEntry, Ingress};
use sluice_channels::{Channel, ChannelError, Health, SubscriptionSpec};
use sluice_core::metrics::Metrics;
use sluice_core::topology::{ChannelConfig, Key, Topology, Trigger};
use sluice_delivery::Sender;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Makes channels for brokers.
#[async_trait]
pub trait ChannelFactory: Send + Sync {
    async fn create(
        &self,
        broker: &Key,
        config: &ChannelConfig,
    ) -> Result<Arc<dyn Channel>, ChannelError>;
}

/// Stands in for a broker whose channel could not be created.
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

struct RunningBroker {
    config: ChannelConfig,
    channel: Arc<dyn Channel>,
}

struct RunningTrigger {
    trigger: Arc<Trigger>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// A broker's state, for `/readyz` and `sluice get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    pub key: Key,
    pub class: &'static str,
    pub health: Health,
    pub triggers: usize,
}

/// The running brokers and dispatchers.
pub struct Dataplane {
    ingress: Arc<Ingress>,
    metrics: Arc<Metrics>,
    sender: Sender,
    factory: Box<dyn ChannelFactory>,
    brokers: HashMap<Key, RunningBroker>,
    triggers: HashMap<Key, RunningTrigger>,
    /// Brokers whose channel could not be created, with the reason.
    failed: HashMap<Key, (ChannelConfig, String)>,
}

/// The subscription id of a trigger in its broker's channel.
pub fn subscription_id(trigger: &Key) -> String {
    format!("{}/{}", trigger.namespace, trigger.name)
}

impl Dataplane {
    pub fn new(
        ingress: Arc<Ingress>,
        metrics: Arc<Metrics>,
        factory: Box<dyn ChannelFactory>,
    ) -> Self {
        Dataplane {
            ingress,
            metrics,
            sender: Sender::new(),
            factory,
            brokers: HashMap::new(),
            triggers: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    pub fn ingress(&self) -> &Arc<Ingress> {
        &self.ingress
    }

    /// Makes the running brokers and dispatchers match `topology`. A broker whose channel
    /// cannot be created is reported (not ready) and retried on the next apply; the others
    /// run regardless.
    pub async fn apply(&mut self, topology: &Topology) {
        // Brokers: keep unchanged channels, create new ones, drop removed ones.
        let mut restarted_brokers = Vec::new();
        // Channels of removed (or reconfigured) brokers live until their triggers are gone:
        // a removed trigger's subscription is deleted through them (a Kafka consumer group, a
        // JetStream consumer), or it would outlive its broker on the server.
        let mut dropped: HashMap<Key, Arc<dyn Channel>> = HashMap::new();
        let keys: Vec<Key> = self.brokers.keys().cloned().collect();
        for key in keys {
            let keep = topology.brokers.get(&key).is_some_and(|nb| {
                self.brokers
                    .get(&key)
                    .is_some_and(|b| nb.channel == b.config)
            });
            if !keep {
                if let Some(b) = self.brokers.remove(&key) {
                    dropped.insert(key.clone(), b.channel);
                }
                restarted_brokers.push(key);
            }
        }
        self.failed.clear();
        for (key, broker) in &topology.brokers {
            if self.brokers.contains_key(key) {
                continue;
            }
            match self.factory.create(key, &broker.channel).await {
                Ok(channel) => {
                    tracing::info!(broker = %key, class = broker.channel.class_name(), "broker ready");
                    self.brokers.insert(
                        key.clone(),
                        RunningBroker {
                            config: broker.channel.clone(),
                            channel,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(broker = %key, error = %e, "broker channel could not be created; the broker is not ready");
                    self.failed
                        .insert(key.clone(), (broker.channel.clone(), e.to_string()));
                }
            }
        }

        // Triggers: stop the removed and the changed, start the new and the changed.
        let mut stop = Vec::new();
        for (key, running) in &self.triggers {
            let wanted = topology.triggers.get(key);
            let unchanged = wanted.is_some_and(|t| {
                t.fingerprint == running.trigger.fingerprint
                    && !restarted_brokers.contains(&t.broker)
                    && self.brokers.contains_key(&t.broker)
            });
            if !unchanged {
                stop.push((key.clone(), wanted.is_none()));
            }
        }
        for (key, removed) in stop {
            if let Some(r) = self.triggers.remove(&key) {
                r.cancel.cancel();
                let _ = r.task.await;
                if removed {
                    let channel = self
                        .brokers
                        .get(&r.trigger.broker)
                        .map(|b| &b.channel)
                        .or_else(|| dropped.get(&r.trigger.broker));
                    if let Some(channel) = channel {
                        if let Err(e) = channel.remove_subscription(&subscription_id(&key)).await {
                            tracing::warn!(trigger = %key, error = %e, "could not remove the subscription");
                        }
                    }
                    tracing::info!(trigger = %key, "trigger removed");
                }
            }
        }
        for (key, trigger) in &topology.triggers {
            if self.triggers.contains_key(key) {
                continue;
            }
            let Some(broker) = self.brokers.get(&trigger.broker) else {
                continue; // its broker is not ready; retried on the next apply
            };
            let spec = SubscriptionSpec {
                id: subscription_id(key),
                start_from: trigger.start_from,
                ordered: trigger.ordered,
            };
            match broker.channel.subscribe(spec).await {
                Ok(sub) => {
                    let worker = dispatch::Worker::new(
                        trigger.clone(),
                        self.ingress.clone(),
                        self.sender.clone(),
                        &self.metrics,
                        broker.channel.redelivers_with_delay(),
                    );
                    let cancel = CancellationToken::new();
                    let task = tokio::spawn(worker.run(sub, cancel.clone()));
                    tracing::info!(trigger = %key, subscriber = %trigger.subscriber, "trigger ready");
                    self.triggers.insert(
                        key.clone(),
                        RunningTrigger {
                            trigger: trigger.clone(),
                            cancel,
                            task,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(trigger = %key, error = %e, "could not subscribe; the trigger is not ready");
                }
            }
        }

        let mut entries: HashMap<Key, BrokerEntry> = self
            .brokers
            .iter()
            .map(|(k, b)| {
                (
                    k.clone(),
                    BrokerEntry::new(k, b.channel.clone(), &self.metrics),
                )
            })
            .collect();
        // A broker whose channel could not be created still exists: its ingress answers 503
        // with the reason (not 404) until the channel comes up.
        for (k, (_, reason)) in &self.failed {
            let channel: Arc<dyn Channel> = Arc::new(Unavailable(reason.clone()));
            entries.insert(k.clone(), BrokerEntry::new(k, channel, &self.metrics));
        }
        self.ingress.set_brokers(entries);
    }

    /// Whether every broker and trigger of the last applied topology is running.
    pub fn status(&self) -> Vec<BrokerStatus> {
        let mut out: Vec<_> = self
            .brokers
            .iter()
            .map(|(k, b)| BrokerStatus {
                key: k.clone(),
                class: b.config.class_name(),
                health: b.channel.health(),
                triggers: self
                    .triggers
                    .values()
                    .filter(|t| &t.trigger.broker == k)
                    .count(),
            })
            .chain(self.failed.iter().map(|(k, (cfg, reason))| BrokerStatus {
                key: k.clone(),
                class: cfg.class_name(),
                health: Health::NotReady(reason.clone()),
                triggers: 0,
            }))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Stops every dispatcher (in-flight deliveries finish).
    pub async fn shutdown(&mut self) {
        for (_, r) in self.triggers.drain() {
            r.cancel.cancel();
            let _ = r.task.await;
        }
    }
}
