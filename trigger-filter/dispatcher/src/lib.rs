//! # sluice-dispatcher
//!
//! The running data plane behind the ingress. The binary publishes the wanted [`Topology`]
//! through a `tokio::sync::watch` channel; [`Dataplane::start`] spawns the reconciler that
//! owns the running state and converges it to the topology, retrying what fails until it
//! gets there:
//!
//! ```text
//! watch<Topology> ──▶ reconciler ──▶ channels    one per broker and per messaging channel
//!                        │                        (made by a ChannelFactory)
//!                        │        ──▶ routing     the ingress's broker/channel → storage table
//!                        │        ──▶ transforms  EventTransforms answering on the ingress
//!                        │        ──▶ workers     one per subscription: consume → filter →
//!                        │                        deliver → reply → settle   (worker.rs)
//!                        └──────────▶ StatusBoard Ready / reason / message / generation per object
//! ```
//!
//! The reconciler is the only owner of channels and workers, so nothing else locks them;
//! status is published to a [`StatusBoard`] that readers (`/readyz`, `/topology`) query
//! without waiting for a reconcile that is stuck talking to a server.
//!
//! What a reload keeps (nothing acknowledged is lost):
//! - a broker whose channel settings are unchanged keeps its channel, so queued events stay;
//! - a broker whose channel settings change gets a new channel at once (new events go
//!   there) while the old one is *retired*: its workers keep delivering until it holds
//!   nothing more, then it is closed; if the new settings cannot be applied (a server is
//!   unreachable) the old channel keeps serving and the broker's status says why;
//! - an unchanged subscription keeps its worker; a changed one gets a new worker on the same
//!   channel subscription (its queue and position are kept); its old worker stops at once,
//!   handing unfinished messages back to the channel;
//! - a deleted subscription's channel subscription is removed (its Kafka consumer group or
//!   NATS durable consumer deleted); a deleted broker's too.
//!
//! Workers are supervised: one that ends unexpectedly (a panic) is restarted, and the restart
//! count shows in its status message. [`Dataplane::shutdown`] drains: workers keep going
//! until every in-memory channel is empty or the drain period ends; then whatever is left is
//! counted and logged, workers stop, and channels are closed (durable ones commit).

mod reconcile;
mod transform;
mod worker;

pub use reconcile::ShutdownReport;

use async_trait::async_trait;
use sluice_broker::Ingress;
use sluice_channels::{Channel, ChannelError};
use sluice_core::metrics::Metrics;
use sluice_core::status::StatusBoard;
use sluice_core::topology::{ChannelConfig, Key, ObjectRef, Topology};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Makes channel storage for brokers and messaging channels.
#[async_trait]
pub trait ChannelFactory: Send + Sync {
    /// `owner` is `ObjectRef::broker(..)` or `ObjectRef::channel(..)`: implementations name
    /// topics and streams after it (a broker and a channel of the same name must not share
    /// one).
    async fn create(
        &self,
        owner: &ObjectRef,
        config: &ChannelConfig,
    ) -> Result<Arc<dyn Channel>, ChannelError>;
}

/// The subscription id of a trigger in its broker's channel.
pub fn subscription_id(trigger: &Key) -> String {
    format!("{}/{}", trigger.namespace, trigger.name)
}

/// Per subscriber URL, the events waiting in channels for the subscriptions that POST to it
/// (their backlog, [`Channel::backlog`]). The reconciler republishes the table whenever its
/// workers change; readers (the autoscaler, every tick) ask the channels at read time, so
/// the numbers are current without the reconciler doing anything per tick.
#[derive(Clone, Default)]
pub struct Backlogs(Arc<RwLock<Vec<BacklogSource>>>);

/// One subscription whose worker POSTs to `url`.
#[derive(Clone)]
pub(crate) struct BacklogSource {
    pub(crate) url: String,
    pub(crate) channel: Arc<dyn Channel>,
    pub(crate) id: String,
}

impl Backlogs {
    /// Events waiting for `url` in all the channels that can tell; `None` when no running
    /// subscription delivers there (or none of their channels can tell).
    pub fn waiting_for(&self, url: &str) -> Option<u64> {
        let want = url.trim_end_matches('/');
        let sources = self.0.read().unwrap_or_else(|e| e.into_inner());
        sources
            .iter()
            .filter(|s| s.url.trim_end_matches('/') == want)
            .filter_map(|s| s.channel.backlog(&s.id))
            .reduce(|a, b| a + b)
    }

    pub(crate) fn publish(&self, sources: Vec<BacklogSource>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = sources;
    }
}

/// A running data plane: the reconciler task and a way to stop it.
pub struct Dataplane {
    backlogs: Backlogs,
    task: JoinHandle<()>,
    shutdown: oneshot::Sender<(Duration, oneshot::Sender<ShutdownReport>)>,
    applied: watch::Receiver<u64>,
}

impl Dataplane {
    /// Starts the reconciler. It applies the current topology of `topology` at once and
    /// every new one published after, writing each object's status to `status`.
    pub fn start(
        ingress: Arc<Ingress>,
        metrics: Arc<Metrics>,
        factory: Box<dyn ChannelFactory>,
        status: Arc<StatusBoard>,
        topology: watch::Receiver<Arc<Topology>>,
    ) -> Self {
        Self::start_with(
            ingress,
            metrics,
            factory,
            status,
            topology,
            sluice_delivery::Sender::new(),
        )
    }

    /// [`Dataplane::start`] delivering through `sender` (one with an OIDC token source:
    /// each subscription then sends as its own identity).
    pub fn start_with(
        ingress: Arc<Ingress>,
        metrics: Arc<Metrics>,
        factory: Box<dyn ChannelFactory>,
        status: Arc<StatusBoard>,
        topology: watch::Receiver<Arc<Topology>>,
        sender: sluice_delivery::Sender,
    ) -> Self {
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (applied_tx, applied) = watch::channel(0);
        let backlogs = Backlogs::default();
        let r = reconcile::Reconciler::new(
            ingress,
            metrics,
            factory,
            status,
            applied_tx,
            backlogs.clone(),
            sender,
        );
        let task = tokio::spawn(r.run(topology, shutdown_rx));
        Dataplane {
            backlogs,
            task,
            shutdown,
            applied,
        }
    }

    /// Waits until the reconciler has applied a topology at least once (every object has a
    /// status, the ingress routes to every broker whose channel could be made).
    pub async fn applied(&self) {
        let mut rx = self.applied.clone();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// The backlog per subscriber URL, for the autoscaler.
    pub fn backlogs(&self) -> Backlogs {
        self.backlogs.clone()
    }

    /// How many topologies have been applied so far (tests wait on it).
    pub fn applied_count(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Drains and stops: see the crate docs. The ingress should already refuse producers
    /// ([`Ingress::close`]). Returns what was left undelivered.
    pub async fn shutdown(self, drain: Duration) -> ShutdownReport {
        let (tx, rx) = oneshot::channel();
        if self.shutdown.send((drain, tx)).is_err() {
            return ShutdownReport::default();
        }
        let report = rx.await.unwrap_or_default();
        let _ = self.task.await;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_channels::memory::MemoryChannel;
    use sluice_channels::SubscriptionSpec;
    use sluice_core::topology::StartFrom;
    use sluice_core::{Envelope, Event, SpecVersion};

    #[tokio::test]
    async fn backlogs_add_up_per_subscriber_url() {
        let ch = Arc::new(MemoryChannel::new(100));
        let spec = |id: &str| SubscriptionSpec {
            id: id.into(),
            start_from: StartFrom::Latest,
            ordered: false,
        };
        let _a = ch.subscribe(spec("default/a")).await.unwrap();
        let _b = ch.subscribe(spec("default/b")).await.unwrap();
        for i in 0..3 {
            let e = Event::new(SpecVersion::V10, format!("e{i}"), "/t", "t");
            ch.publish(Envelope::new(e)).await.unwrap();
        }
        let backlogs = Backlogs::default();
        let fn_url = "http://127.0.0.1:8080/default/services/fn";
        let source = |url: &str, id: &str| BacklogSource {
            url: url.into(),
            channel: ch.clone(),
            id: id.into(),
        };
        backlogs.publish(vec![
            source(fn_url, "default/a"),
            source(fn_url, "default/b"),
            source("http://elsewhere/", "default/b"),
        ]);
        // Two triggers deliver to the Service: both queues count; a trailing slash is the
        // same URL.
        assert_eq!(backlogs.waiting_for(fn_url), Some(6));
        assert_eq!(backlogs.waiting_for(&format!("{fn_url}/")), Some(6));
        assert_eq!(backlogs.waiting_for("http://elsewhere"), Some(3));
        assert_eq!(backlogs.waiting_for("http://nobody/"), None);
    }
}
