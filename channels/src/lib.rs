//! # sluice-channels
//!
//! A broker stores every accepted event in a [`Channel`] and each trigger reads it back through
//! its own [`Subscription`]:
//!
//! ```text
//! ingress ──publish(envelope)──▶ Channel ──subscribe(trigger)──▶ Subscription::next() ──▶ Message
//!                                   ▲                                                    │
//!                                   └──────────── ack / nack(delay) ◀── dispatcher ──────┘
//! ```
//!
//! `publish` returns only once the event is stored (for durable channels: durably), which is
//! when the ingress answers 202. A message stays owed to its subscription until it is acked;
//! a nacked message comes back after the delay; a message neither acked nor nacked when the
//! process dies comes back after a restart (durable channels). That is at-least-once.
//!
//! Channels know nothing of triggers or filters: a subscription is an id and a starting
//! position. The in-memory channel lives in [`memory`]; Kafka and NATS JetStream behind the
//! `kafka` and `nats` features, both storing events in the binary content mode of [`wire`].
//! `tests/conformance.rs` runs one suite against all three, the durable ones on real servers
//! started by the `sluice-tests` harness.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod wire;

use async_trait::async_trait;
use sluice_core::topology::StartFrom;
use sluice_core::Envelope;
use std::sync::Arc;
use std::time::Duration;

/// Errors a channel reports. Ingress maps `Full` and `Unavailable` to 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the channel is full ({0}); retry later")]
    Full(String),
    #[error("the channel is unavailable: {0}")]
    Unavailable(String),
    #[error("the channel is closed")]
    Closed,
    #[error("invalid channel configuration: {0}")]
    Config(String),
}

/// Whether a channel can take events now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady(String),
}

/// What a subscription is: a stable id (the trigger's namespace/name) and where it starts the
/// first time it is seen. Re-subscribing with the same id resumes where it left off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Stable identity, e.g. `default/my-trigger`.
    pub id: String,
    pub start_from: StartFrom,
    /// Deliver each lane (partition) in order, one message at a time.
    pub ordered: bool,
}

/// Acknowledges one message. Implemented per channel.
pub trait Acker: Send + 'static {
    /// Processing finished (delivered, or dead-lettered): never deliver it again.
    fn ack(self: Box<Self>);
    /// Processing failed: deliver it again after `delay`.
    fn nack(self: Box<Self>, delay: Duration);
}

/// One event handed to a subscriber, to be acked or nacked exactly once. Dropping it without
/// either counts as a nack with no delay.
pub struct Message {
    pub envelope: Arc<Envelope>,
    /// Messages of one lane (a Kafka partition, say) keep their order in an ordered
    /// subscription.
    pub lane: u32,
    /// How many times the channel has handed this message out, 1 the first time.
    pub delivery_count: u32,
    acker: Option<Box<dyn Acker>>,
}

impl Message {
    pub fn new(
        envelope: Arc<Envelope>,
        lane: u32,
        delivery_count: u32,
        acker: Box<dyn Acker>,
    ) -> Self {
        Message {
            envelope,
            lane,
            delivery_count,
            acker: Some(acker),
        }
    }

    pub fn ack(mut self) {
        if let Some(a) = self.acker.take() {
            a.ack();
        }
    }

    pub fn nack(mut self, delay: Duration) {
        if let Some(a) = self.acker.take() {
            a.nack(delay);
        }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if let Some(a) = self.acker.take() {
            a.nack(Duration::ZERO);
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.envelope.event.id())
            .field("lane", &self.lane)
            .field("delivery_count", &self.delivery_count)
            .finish()
    }
}

/// Which events a subscriber will act on (see [`Subscription::set_interest`]).
pub type Interest = Arc<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// A per-subscriber stream of messages.
#[async_trait]
pub trait Subscription: Send + 'static {
    /// The next message; `None` once the subscription is closed (trigger removed, channel
    /// shut down). Errors are transient (server unreachable): the caller logs and calls again.
    async fn next(&mut self) -> Option<Result<Message, ChannelError>>;

    /// Tells the channel which events this subscriber will act on, so that a channel which
    /// fans out in this process (the in-memory one) need not queue, hand out and wake the
    /// subscriber for the others. A hint only: the subscriber still checks every message it
    /// gets, and channels that store one log for all subscribers ignore it (the default).
    /// It lasts while this subscription object lives. Returns true when the channel applies
    /// it itself, so every message this subscription hands out is already known to be
    /// wanted and the subscriber need not evaluate its filter a second time.
    fn set_interest(&mut self, _interest: Interest) -> bool {
        false
    }
}

/// Where a broker keeps its events.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Stores one event; returns once it is stored (durably, for durable channels).
    async fn publish(&self, envelope: Envelope) -> Result<(), ChannelError>;

    /// Stores the events of one batched request. The in-memory channel takes all of them or
    /// none (SEMANTICS.md §2: a batch is accepted or rejected whole). The default publishes
    /// them in order and stops at the first failure: a durable channel has then stored a
    /// prefix, which the producer's retry duplicates (at-least-once, never lost).
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), ChannelError> {
        for e in envelopes {
            self.publish(e).await?;
        }
        Ok(())
    }

    /// Events held only by this process that are not finished yet (queued, waiting for a
    /// retry, or being delivered), when the channel can tell. Shutdown and reload wait for
    /// this to reach zero before letting go of an in-memory channel. `None` for durable
    /// channels: what they hold survives the process.
    fn pending(&self) -> Option<usize> {
        None
    }

    /// Events stored for subscription `id` that its worker has not taken yet (its backlog),
    /// when the channel can tell cheaply and without I/O. The autoscaler counts them as
    /// demand for the subscriber (SEMANTICS.md §7: a backlog scales the sink even though
    /// the dispatcher holds the requests). `None`: unknown (the default; Kafka and NATS do
    /// not report it yet).
    fn backlog(&self, _id: &str) -> Option<u64> {
        None
    }

    /// Lets go of the channel: flushes and commits what is finished. Called once, after
    /// every subscription's worker has stopped.
    async fn close(&self) {}

    /// Opens the subscription `spec.id`, creating it at `spec.start_from` the first time and
    /// resuming it afterwards. At most one consumer per id at a time.
    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, ChannelError>;

    /// Deletes a subscription and what it still owes (the trigger was deleted).
    async fn remove_subscription(&self, id: &str) -> Result<(), ChannelError>;

    /// Whether the channel can take events now, with the reason when it cannot.
    fn health(&self) -> Health {
        Health::Ready
    }

    /// True when `nack(delay)` is the preferred way to wait between retries (the channel
    /// redelivers after the delay and counts deliveries durably, as JetStream does); false
    /// when the dispatcher should wait in-process and keep the message.
    fn redelivers_with_delay(&self) -> bool {
        false
    }
}
