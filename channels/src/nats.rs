//! The NATS JetStream channel (feature `nats`): one stream per broker, one durable pull
//! consumer per trigger.
//!
//! ```text
//! publish ──encode (wire::NATS)──▶ JetStream publish, await the ack ──▶ stream KN_BROKER_<NS>__<NAME>
//!                                                                        subject <ns>.<name>._knative_broker
//! Subscription::next ◀── buffer ◀── pump task (pull requests of ≤ max_buffered messages)
//!        │                               durable consumer knative-trigger-<ns>__<name>
//!        ▼                               (explicit ack, ack_wait, max_ack_pending)
//!   Message ──ack──▶ +ACK      nack(delay) ──▶ -NAK {"delay": …}: the server redelivers later
//! ```
//!
//! **Publishing.** `publish` returns once JetStream has acknowledged the message (it is stored
//! in the stream). The stream (file storage, limits retention, so any trigger can replay it)
//! is created when the channel connects and again if a publish finds it missing. While the
//! client is disconnected, `publish` fails at once with [`ChannelError::Unavailable`];
//! otherwise it waits at most [`NatsSettings::publish_timeout`] for the ack.
//!
//! **Consumers.** Each subscription is a durable pull consumer with explicit acks, created the
//! first time the subscription is seen with the deliver policy of its [`StartFrom`] (`New`,
//! `All`, `ByStartTime`). The server keeps its position, so the starting point is fixed
//! durably at that moment and a re-subscribe resumes. `nack(delay)` is a NAK with that delay:
//! the server redelivers and counts deliveries (`delivery_count` is the server's count, which
//! survives restarts), which is why [`Channel::redelivers_with_delay`] is true and the
//! dispatcher need not hold messages between retries. Ordered subscriptions get
//! `max_ack_pending = 1` (one lane, one message at a time, so even a NAK cannot reorder);
//! unordered ones allow [`NatsSettings::max_ack_pending`].
//!
//! **Ack wait.** Messages held by this process (buffered or being delivered) get a progress
//! ack (`+WPI`) every third of [`NatsSettings::ack_wait`], so a slow delivery is never
//! redelivered behind its back, while a crashed process's messages come back after `ack_wait`
//! (30 s by default). Retries do not hold messages: they are NAKs with a delay. Buffered
//! messages are NAKed when the subscription closes so they come back at once.
//!
//! **Health** is the client's connection state; async-nats reconnects by itself.

use crate::wire::{self, DecodeError};
use crate::{Acker, Channel, ChannelError, Health, Message, Subscription, SubscriptionSpec};
use async_nats::connection::State;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use futures::StreamExt as _;
use sluice_core::topology::{Key, StartFrom};
use sluice_core::Envelope;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// What a [`NatsChannel`] needs. Build with [`NatsSettings::for_broker`] and adjust the public
/// fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222` (comma-separated for several).
    pub url: String,
    pub stream: String,
    pub subject: String,
    /// Longest a publish waits for JetStream's ack.
    pub publish_timeout: Duration,
    /// How long the server waits for an ack before redelivering (after a crash).
    pub ack_wait: Duration,
    /// Unacknowledged messages an unordered subscription may hold.
    pub max_ack_pending: i64,
    /// Messages a subscription fetches ahead of `next()`.
    pub max_buffered: usize,
    /// Stream retention: older events are removed.
    pub max_age: Duration,
    /// Stream size bound. When it is reached publishes are refused (discard policy `new`):
    /// the producer gets a 503 instead of an acknowledged event being discarded later.
    pub max_bytes: i64,
}

impl NatsSettings {
    /// The settings of a broker's channel: stream [`stream_name`], subject [`subject`].
    pub fn for_broker(url: impl Into<String>, broker: &Key) -> Self {
        NatsSettings {
            url: url.into(),
            stream: stream_name(broker),
            subject: subject(broker),
            publish_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            max_buffered: 64,
            max_age: sluice_core::topology::ChannelConfig::DEFAULT_NATS_MAX_AGE,
            max_bytes: sluice_core::topology::ChannelConfig::DEFAULT_NATS_MAX_BYTES,
        }
    }

    /// The settings of a messaging channel (a NatsJetStreamChannel, or a Channel whose
    /// template is one): stream `KN_CHANNEL_<NS>__<NAME>`, subject
    /// `<ns>.<name>._knative_channel`, so a broker and a channel of the same name never
    /// share a stream.
    pub fn for_channel(url: impl Into<String>, channel: &Key) -> Self {
        let broker = Self::for_broker(url, channel);
        NatsSettings {
            stream: broker.stream.replacen("KN_BROKER_", "KN_CHANNEL_", 1),
            subject: broker
                .subject
                .replace("._knative_broker", "._knative_channel"),
            ..broker
        }
    }
}

/// `KN_BROKER_<NS>__<NAME>`: upper-cased, anything not alphanumeric becomes `_`.
pub fn stream_name(broker: &Key) -> String {
    let up = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("KN_BROKER_{}__{}", up(&broker.namespace), up(&broker.name))
}

/// `<ns>.<name>._knative_broker`; characters that would split or wildcard a subject token
/// (`.`, `*`, `>`, whitespace) become `_`.
pub fn subject(broker: &Key) -> String {
    format!(
        "{}.{}._knative_broker",
        subject_token(&broker.namespace),
        subject_token(&broker.name)
    )
}

fn subject_token(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// The durable consumer of subscription `ns/name`: `knative-trigger-<ns>__<name>`, with
/// anything but ASCII letters, digits, `-` and `_` replaced by `_` (consumer names cannot hold
/// `.`, `*`, `>`, `/` or whitespace).
pub fn consumer_name(subscription_id: &str) -> String {
    let id = subscription_id.replacen('/', "__", 1);
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("knative-trigger-{clean}")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(format!("nats: {what}: {e}"))
}

/// A NATS JetStream-backed channel. Cheap to share behind an `Arc`.
pub struct NatsChannel {
    settings: NatsSettings,
    client: async_nats::Client,
    js: jetstream::Context,
    subscriptions: Mutex<HashMap<String, SubHandle>>,
}

struct SubHandle {
    close: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsChannel")
            .field("settings", &self.settings)
            .finish()
    }
}

impl NatsChannel {
    /// Connects and creates the stream if it is missing. Fails with
    /// [`ChannelError::Unavailable`] if the server cannot be reached (the caller retries).
    pub async fn connect(settings: NatsSettings) -> Result<Self, ChannelError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None::<usize>)
            // Come back within a second of the server, instead of backing off to seconds.
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((attempt as u64 * 100).min(1000))
            })
            .connect(settings.url.as_str())
            .await
            .map_err(|e| unavailable(&format!("connecting to {}", settings.url), e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.publish_timeout)
            .build(client.clone());
        let channel = NatsChannel {
            settings,
            client,
            js,
            subscriptions: Mutex::new(HashMap::new()),
        };
        channel.ensure_stream().await?;
        Ok(channel)
    }

    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    async fn ensure_stream(&self) -> Result<stream::Stream, ChannelError> {
        let config = stream::Config {
            name: self.settings.stream.clone(),
            subjects: vec![self.settings.subject.clone()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            max_age: self.settings.max_age,
            max_bytes: self.settings.max_bytes,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let mut stream = self
            .js
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| unavailable(&format!("creating stream {}", self.settings.stream), e))?;
        // A stream made by an earlier version (or with other limits) is brought to these.
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable(&format!("reading stream {}", self.settings.stream), e))?;
        let c = &info.config;
        if c.max_age != config.max_age
            || c.max_bytes != config.max_bytes
            || c.discard != config.discard
        {
            let updated = stream::Config {
                subjects: c.subjects.clone(),
                ..config
            };
            self.js.update_stream(&updated).await.map_err(|e| {
                unavailable(
                    &format!("updating the limits of stream {}", self.settings.stream),
                    e,
                )
            })?;
            stream = self
                .js
                .get_stream(&self.settings.stream)
                .await
                .map_err(|e| unavailable(&format!("reading stream {}", self.settings.stream), e))?;
        }
        Ok(stream)
    }

    fn connected(&self) -> Result<(), ChannelError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(ChannelError::Unavailable(format!(
                "nats: not connected to {} ({state:?})",
                self.settings.url
            ))),
        }
    }

    async fn close_local(&self, id: &str) {
        let handle = self
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(mut h) = handle {
            h.close.send_replace(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), h.done.wait_for(|d| *d)).await;
        }
    }
}

fn headers_of(encoded: &wire::Encoded) -> Result<HeaderMap, ChannelError> {
    let mut headers = HeaderMap::new();
    for (k, v) in &encoded.headers {
        let name = HeaderName::try_from(k.as_str()).map_err(|_| {
            ChannelError::Config(format!("header name `{k}` cannot be stored in NATS"))
        })?;
        let value: HeaderValue = v.parse().map_err(|_| {
            ChannelError::Config(format!("header `{k}` has a value NATS cannot store"))
        })?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[async_trait]
impl Channel for NatsChannel {
    async fn publish(&self, envelope: Envelope) -> Result<(), ChannelError> {
        self.connected()?;
        let encoded = wire::encode(&envelope, &wire::NATS)?;
        let headers = headers_of(&encoded)?;
        let mut retried = false;
        loop {
            let attempt = async {
                self.js
                    .publish_with_headers(
                        self.settings.subject.clone(),
                        headers.clone(),
                        encoded.payload.clone(),
                    )
                    .await?
                    .await
            };
            let res = tokio::time::timeout(self.settings.publish_timeout, attempt).await;
            return match res {
                Ok(Ok(_ack)) => Ok(()),
                // No stream listens (deleted, or a server that lost its store): nothing was
                // stored, so create it and try once more.
                Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound && !retried => {
                    retried = true;
                    self.ensure_stream().await?;
                    continue;
                }
                Ok(Err(e)) if e.kind() == PublishErrorKind::MaxAckPending => Err(
                    ChannelError::Full(format!("nats: too many publishes in flight: {e}")),
                ),
                Ok(Err(e)) => Err(unavailable(
                    &format!("publishing to {}", self.settings.subject),
                    e,
                )),
                Err(_) => Err(unavailable(
                    &format!("publishing to {}", self.settings.subject),
                    "no ack in time",
                )),
            };
        }
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, ChannelError> {
        self.close_local(&spec.id).await;
        let stream = self.ensure_stream().await?;
        let name = consumer_name(&spec.id);
        let deliver_policy = match spec.start_from {
            StartFrom::Latest => DeliverPolicy::New,
            StartFrom::Earliest => DeliverPolicy::All,
            StartFrom::Time(ms) => DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000)
                    .map_err(|e| ChannelError::Config(format!("start time {ms} ms: {e}")))?,
            },
        };
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("sluice subscription {}", spec.id)),
            deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            // Unlimited: the dispatcher decides when to give up (dead letter).
            max_deliver: -1,
            max_ack_pending: if spec.ordered {
                1
            } else {
                self.settings.max_ack_pending
            },
            filter_subject: self.settings.subject.clone(),
            ..Default::default()
        };
        // Created only if missing: an existing consumer keeps its position.
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| unavailable(&format!("creating consumer {name}"), e))?;

        let shared = Arc::new(Shared::default());
        let (close_tx, close_rx) = watch::channel(false);
        let close_tx = Arc::new(close_tx);
        let (done_tx, done_rx) = watch::channel(false);
        let max_buffered = if spec.ordered {
            1
        } else {
            self.settings.max_buffered.max(1)
        };
        tokio::spawn(pump(
            consumer,
            shared.clone(),
            self.client.clone(),
            close_rx.clone(),
            done_tx,
            max_buffered,
            self.settings.ack_wait,
        ));
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                spec.id,
                SubHandle {
                    close: close_tx.clone(),
                    done: done_rx,
                    shared: shared.clone(),
                },
            );
        Ok(Box::new(NatsSubscription {
            shared,
            close: close_tx,
            closed: close_rx,
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    async fn remove_subscription(&self, id: &str) -> Result<(), ChannelError> {
        self.close_local(id).await;
        let name = consumer_name(id);
        match self
            .js
            .delete_consumer_from_stream(&name, &self.settings.stream)
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    stream::ConsumerErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
                            || js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable(&format!("deleting consumer {name}"), e)),
        }
    }

    fn health(&self) -> Health {
        match self.connected() {
            Ok(()) => Health::Ready,
            Err(e) => Health::NotReady(e.to_string()),
        }
    }

    fn redelivers_with_delay(&self) -> bool {
        true
    }

    /// The consumer's pending count as of the last message pulled (JetStream puts it in
    /// every message's metadata, so no request is made) plus what is pulled and not yet
    /// taken by the worker. Stale while the worker takes nothing (every delivery slot busy):
    /// it then under-reports a backlog that keeps growing, never over-reports.
    fn backlog(&self, id: &str) -> Option<u64> {
        let subs = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &subs.get(id)?.shared;
        let buffered = shared.buffer().iter().filter(|m| m.is_ok()).count() as u64;
        Some(shared.pending.load(std::sync::atomic::Ordering::Relaxed) + buffered)
    }
}

/// What the pump, the ackers and `next()` share.
#[derive(Default)]
struct Shared {
    buffer: Mutex<VecDeque<Result<jetstream::Message, ChannelError>>>,
    /// Something was pushed into the buffer.
    filled: Notify,
    /// Something was taken out of the buffer.
    drained: Notify,
    /// Reply subjects of messages this process holds (buffered or handed out, not yet
    /// acked), which get progress acks.
    held: Mutex<HashMap<String, async_nats::Subject>>,
    /// Messages the consumer has not delivered yet, as of the last one pulled.
    pending: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn buffer(
        &self,
    ) -> std::sync::MutexGuard<'_, VecDeque<Result<jetstream::Message, ChannelError>>> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, async_nats::Subject>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, item: Result<jetstream::Message, ChannelError>) {
        if let Ok(m) = &item {
            if let Ok(info) = m.info() {
                self.pending
                    .store(info.pending, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(reply) = &m.reply {
                self.held().insert(reply.to_string(), reply.clone());
            }
        }
        self.buffer().push_back(item);
        self.filled.notify_one();
    }

    fn release(&self, m: &jetstream::Message) {
        if let Some(reply) = &m.reply {
            self.held().remove(reply.as_str());
        }
    }
}

/// Pulls messages while the buffer has room, sends progress acks for held messages, and on
/// close NAKs what is still buffered.
async fn pump(
    consumer: PullConsumer,
    shared: Arc<Shared>,
    client: async_nats::Client,
    mut close: watch::Receiver<bool>,
    done: watch::Sender<bool>,
    max_buffered: usize,
    ack_wait: Duration,
) {
    let mut progress = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(100)));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_was_error = false;
    // The pull request in progress. Kept outside the loop so that closing can drain it.
    let mut current: Option<pull::Batch> = None;
    'outer: loop {
        if *close.borrow() {
            break;
        }
        let room = max_buffered.saturating_sub(shared.buffer().len());
        if room == 0 || (room < max_buffered / 2 && !shared.buffer().is_empty()) {
            tokio::select! {
                _ = close.changed() => {}
                _ = shared.drained.notified() => {}
                _ = progress.tick() => send_progress(&client, &shared).await,
            }
            continue;
        }
        // Not cancelled by `close`: a request the server has seen must be drained (below).
        let request = consumer
            .batch()
            .max_messages(room)
            .expires(PULL_EXPIRES)
            .messages();
        match tokio::time::timeout(PULL_EXPIRES, request).await {
            Ok(Ok(b)) => current = Some(b),
            failed => {
                if !last_was_error {
                    let e = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    shared.push(Err(unavailable("pulling messages", e)));
                }
                last_was_error = true;
                tokio::select! {
                    _ = close.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        }
        let Some(batch) = current.as_mut() else {
            continue;
        };
        loop {
            tokio::select! {
                _ = close.changed() => continue 'outer,
                _ = progress.tick() => send_progress(&client, &shared).await,
                item = batch.next() => match item {
                    None => break,
                    Some(Ok(m)) => {
                        last_was_error = false;
                        shared.push(Ok(m));
                    }
                    Some(Err(e)) => {
                        if !last_was_error {
                            shared.push(Err(unavailable("pulling messages", e)));
                        }
                        last_was_error = true;
                        break;
                    }
                },
            }
        }
        current = None;
    }
    // Hand back what was fetched but never handed out, so it is redelivered at once.
    let left: Vec<_> = shared.buffer().drain(..).collect();
    for m in left.into_iter().flatten() {
        shared.release(&m);
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
    done.send_replace(true);
    // The server still holds our last pull request until it expires, and may deliver messages
    // to it (a message NAKed just now, say); dropping them would leave them unacked for
    // `ack_wait`. So keep reading that request to its end and hand back whatever comes.
    if let Some(mut batch) = current {
        let drain = async {
            while let Some(item) = batch.next().await {
                if let Ok(m) = item {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
            }
        };
        let _ = tokio::time::timeout(PULL_EXPIRES + Duration::from_secs(1), drain).await;
    }
}

async fn send_progress(client: &async_nats::Client, shared: &Shared) {
    let held: Vec<_> = shared.held().values().cloned().collect();
    for reply in held {
        if let Err(e) = client.publish(reply, "+WPI".into()).await {
            tracing::debug!(error = %e, "nats progress ack failed");
        }
    }
}

struct NatsSubscription {
    shared: Arc<Shared>,
    close: Arc<watch::Sender<bool>>,
    closed: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        self.close.send_replace(true);
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<Result<Message, ChannelError>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let filled = self.shared.filled.notified();
            tokio::pin!(filled);
            filled.as_mut().enable();
            let item = self.shared.buffer().pop_front();
            let Some(item) = item else {
                tokio::select! {
                    _ = self.closed.changed() => {}
                    _ = filled => {}
                }
                continue;
            };
            self.shared.drained.notify_one();
            let m = match item {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
            let decoded = match &m.headers {
                Some(h) => {
                    let pairs: Vec<(&str, &[u8])> = h
                        .iter()
                        .flat_map(|(n, vs)| {
                            let n: &str = n.as_ref();
                            vs.iter().map(move |v| (n, v.as_str().as_bytes()))
                        })
                        .collect();
                    wire::decode(pairs, m.payload.clone(), &wire::NATS)
                }
                None => wire::decode([], m.payload.clone(), &wire::NATS),
            };
            let envelope = match decoded {
                Ok(e) => Arc::new(e),
                Err(DecodeError(reason)) => {
                    tracing::warn!(%reason, "terminating a NATS message that is not a CloudEvent");
                    self.shared.release(&m);
                    let _ = m.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            let count = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
            let acker = NatsAcker {
                message: m,
                shared: Arc::downgrade(&self.shared),
                runtime: self.runtime.clone(),
            };
            return Some(Ok(Message::new(envelope, 0, count, Box::new(acker))));
        }
    }
}

struct NatsAcker {
    message: jetstream::Message,
    shared: Weak<Shared>,
    runtime: tokio::runtime::Handle,
}

impl NatsAcker {
    fn send(self, kind: AckKind) {
        if let Some(shared) = self.shared.upgrade() {
            shared.release(&self.message);
        }
        let m = self.message;
        self.runtime.spawn(async move {
            if let Err(e) = m.ack_with(kind).await {
                tracing::warn!(error = %e, "nats ack failed; the message will be redelivered");
            }
        });
    }
}

impl Acker for NatsAcker {
    fn ack(self: Box<Self>) {
        self.send(AckKind::Ack);
    }

    fn nack(self: Box<Self>, delay: Duration) {
        self.send(AckKind::Nak((!delay.is_zero()).then_some(delay)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised() {
        let b = Key::new("my-ns", "the.broker");
        assert_eq!(stream_name(&b), "KN_BROKER_MY_NS__THE_BROKER");
        let c = NatsSettings::for_channel("nats://x", &b);
        assert_eq!(c.stream, "KN_CHANNEL_MY_NS__THE_BROKER");
        assert!(c.subject.ends_with("._knative_channel"), "{}", c.subject);
        assert_eq!(subject(&b), "my-ns.the_broker._knative_broker");
        assert_eq!(consumer_name("ns/t.1 x"), "knative-trigger-ns__t_1_x");
    }
}
