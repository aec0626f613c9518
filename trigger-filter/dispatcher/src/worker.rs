//! One subscription's worker: consume → filter → deliver → route the reply → settle.
//!
//! Each subscription has its own channel subscription and its own concurrency limit, so a
//! slow or failing subscriber only ever holds up itself. Unordered subscriptions run up to
//! `concurrency` deliveries at once. Ordered ones deliver one message at a time per lane (a
//! Kafka partition, say), lanes in parallel; the same `concurrency` bounds the messages taken
//! across all lanes, and a lane that is stuck behind a failing subscriber never stops the
//! worker from feeding the other lanes (messages wait in the lane, within that bound).
//!
//! With tracing on, each message is delivered inside a `deliver` span whose parent is the
//! context stored with it (the ingress's `channel publish` span), each attempt in a
//! `deliver attempt` span, and a reply in a `reply` span under the attempt that got it, so
//! the reply's own deliveries continue the same trace.
//!
//! Stopping (`stop` fires: the subscription was changed or deleted, or the drain period of a
//! shutdown ended) is immediate: deliveries waiting between retries or in an attempt give
//! up, and their messages go back to the channel unsettled — in their original order for an
//! ordered lane — so a changed subscription's new worker resumes them with its own settings
//! and a durable channel redelivers them after a restart.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sluice_broker::{IngestError, Ingress};
use sluice_channels::{Message, Subscription as ChannelSubscription};
use sluice_core::delivery::{DeliveryPolicy, Endpoint};
use sluice_core::event::TTL_ATTRIBUTE;
use sluice_core::metrics::{DropLabels, Metrics, TriggerLabels};
use sluice_core::topology::{ObjectRef, ReplyTo, Subscription};
use sluice_core::{trace, Envelope, Event};
use sluice_delivery::policy::{after_failure, Next};
use sluice_delivery::{Delivered, Failure, Outcome, Request, Sender};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Counters resolved once per worker, so counting is one atomic add.
#[derive(Clone)]
struct Counters {
    delivered: Counter,
    retried: Counter,
    dead_lettered: Counter,
    filtered_out: Counter,
    replies: Counter,
    dropped_no_dls: Counter,
    dropped_dls_failed: Counter,
    dropped_reply_ttl: Counter,
    dropped_reply_discarded: Counter,
    latency: Histogram,
}

impl Counters {
    fn new(m: &Metrics, s: &Subscription) -> Self {
        let l = TriggerLabels {
            namespace: s.owner.key.namespace.clone(),
            broker: s.channel.key.name.clone(),
            trigger: s.owner.key.name.clone(),
        };
        let drop = |reason: &str| {
            m.dropped
                .get_or_create(&DropLabels {
                    namespace: l.namespace.clone(),
                    broker: l.broker.clone(),
                    trigger: l.trigger.clone(),
                    reason: reason.into(),
                })
                .clone()
        };
        Counters {
            delivered: m.delivered.get_or_create(&l).clone(),
            retried: m.retried.get_or_create(&l).clone(),
            dead_lettered: m.dead_lettered.get_or_create(&l).clone(),
            filtered_out: m.filtered_out.get_or_create(&l).clone(),
            replies: m.replies.get_or_create(&l).clone(),
            dropped_no_dls: drop("no_dead_letter_sink"),
            dropped_dls_failed: drop("dead_letter_failed"),
            dropped_reply_ttl: drop("reply_ttl_exhausted"),
            dropped_reply_discarded: drop("reply_discarded"),
            latency: m.delivery_latency.get_or_create(&l).clone(),
        }
    }
}

/// Names the spans of this worker's deliveries carry (made once, used only with tracing on).
struct TraceNames {
    /// The channel read (`messaging.destination.name`).
    destination: String,
    /// The subscription (`messaging.consumer.group.name`).
    subscription: String,
    /// Where replies go.
    reply: String,
}

/// Everything a delivery needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Worker {
    sub: Arc<Subscription>,
    trace_names: Arc<TraceNames>,
    ingress: Arc<Ingress>,
    sender: Sender,
    counters: Counters,
    /// The policy for sending a reply to a URL: the subscription's, without its dead-letter
    /// sink (a reply that cannot be sent dead-letters the *original* event).
    reply_policy: Arc<DeliveryPolicy>,
    /// Retry by nack-with-delay (the channel redelivers and counts) instead of waiting here.
    redeliver: bool,
    stop: CancellationToken,
}

/// How routing a reply ended.
enum ReplyOutcome {
    Done,
    /// The reply could not be stored or sent: the delivery failed.
    Failed {
        failure: Box<Failure>,
        /// Where it failed, for `knativeerrordest` (the reply URL, for a URL reply target).
        dest: Option<Box<Endpoint>>,
    },
}

/// How one message ended.
enum Settled {
    Done,
    /// `stop` fired first; the message is handed back unsettled.
    Stopped(Message),
}

impl Worker {
    pub(crate) fn new(
        sub: Arc<Subscription>,
        ingress: Arc<Ingress>,
        sender: Sender,
        metrics: &Metrics,
        redeliver: bool,
        stop: CancellationToken,
    ) -> Self {
        let counters = Counters::new(metrics, &sub);
        let reply_policy = Arc::new(DeliveryPolicy {
            dead_letter_sink: None,
            ..sub.delivery.clone()
        });
        let trace_names = Arc::new(TraceNames {
            destination: trace::destination_name(&sub.channel),
            subscription: sub.owner.key.to_string(),
            reply: match &sub.reply {
                ReplyTo::Broker(key) => key.to_string(),
                ReplyTo::Channel { key, .. } => {
                    trace::destination_name(&ObjectRef::channel(key.clone()))
                }
                ReplyTo::Endpoint(url) => url.to_string(),
                ReplyTo::Discard => "discard".to_owned(),
            },
        });
        // Deliveries go out as the subscription's own OIDC identity (SEMANTICS.md §11).
        let sender = sender.with_identity(sluice_delivery::Identity {
            namespace: sub.owner.key.namespace.clone(),
            service_account: sluice_auth::identity::service_account_of(&sub.owner),
        });
        Worker {
            sub,
            trace_names,
            ingress,
            sender,
            counters,
            reply_policy,
            redeliver,
            stop,
        }
    }

    /// Runs until the channel subscription closes or `stop` fires; returns once every
    /// delivery it started has finished or given up.
    pub(crate) async fn run(self, mut source: Box<dyn ChannelSubscription>) {
        // Let a channel that fans out in this process skip queueing (and waking us for)
        // events the filter rejects; those are counted as filtered out where they are
        // skipped. When the channel applies the filter itself, it is not evaluated again.
        let prefiltered = match self.sub.filter.clone() {
            None => true,
            Some(filter) => {
                let filtered_out = self.counters.filtered_out.clone();
                source.set_interest(Arc::new(move |env: &Envelope| {
                    let wanted = filter.matches(&env.event);
                    if !wanted {
                        filtered_out.inc();
                    }
                    wanted
                }))
            }
        };
        let limit = Arc::new(Semaphore::new(self.sub.concurrency.max(1)));
        let tasks = TaskTracker::new();
        let mut lanes: HashMap<u32, mpsc::UnboundedSender<(Message, OwnedSemaphorePermit)>> =
            HashMap::new();
        loop {
            // Wait for capacity before taking a message, so messages are not pulled out of
            // the channel only to sit in memory here.
            let permit = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let next = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                n = source.next() => n,
            };
            let msg = match next {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(subscription = %self.sub.owner, error = %e, "reading the channel failed; retrying in 1s");
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if !prefiltered && !self.sub.wants(&msg.envelope.event) {
                self.counters.filtered_out.inc();
                msg.ack();
                continue;
            }
            if self.sub.ordered {
                let lane = msg.lane;
                let tx = lanes.entry(lane).or_insert_with(|| self.spawn_lane(&tasks));
                // Never blocks: the permit bounds what waits in all lanes together.
                if let Err(mpsc::error::SendError((msg, _))) = tx.send((msg, permit)) {
                    lanes.remove(&lane);
                    drop(msg); // unsettled: back to the channel
                }
            } else {
                let w = self.clone();
                tasks.spawn(async move {
                    // A stopped message is dropped unsettled: the channel takes it back.
                    let _ = w.process(msg).await;
                    drop(permit);
                });
            }
        }
        drop(lanes);
        tasks.close();
        tasks.wait().await;
        tracing::debug!(subscription = %self.sub.owner, "worker stopped");
    }

    fn spawn_lane(
        &self,
        tasks: &TaskTracker,
    ) -> mpsc::UnboundedSender<(Message, OwnedSemaphorePermit)> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Message, OwnedSemaphorePermit)>();
        let w = self.clone();
        tasks.spawn(async move {
            while let Some((msg, permit)) = rx.recv().await {
                if let Settled::Stopped(msg) = w.process(msg).await {
                    // Hand the lane back in order: a channel puts an unsettled message at
                    // the front, so the last one goes back first.
                    let mut rest = vec![msg];
                    rx.close();
                    while let Ok((m, _)) = rx.try_recv() {
                        rest.push(m);
                    }
                    while let Some(m) = rest.pop() {
                        drop(m);
                    }
                    return;
                }
                drop(permit);
            }
        });
        tx
    }

    /// Delivers one message, routes its reply, and settles it with the channel; with
    /// tracing on, inside a `deliver` span whose parent is the context stored with it.
    async fn process(&self, msg: Message) -> Settled {
        if !trace::enabled() {
            return self.deliver(msg).await;
        }
        let names = &self.trace_names;
        let span = trace::deliver(
            &msg.envelope.event,
            &msg.envelope.headers,
            &names.destination,
            &names.subscription,
        );
        self.deliver(msg).instrument(span).await
    }

    async fn deliver(&self, msg: Message) -> Settled {
        let started = tokio::time::Instant::now();
        let s = &*self.sub;
        let envelope = msg.envelope.clone();
        let req = Request {
            url: &s.subscriber,
            envelope: &envelope,
            policy: &s.delivery,
            namespace: Some(&s.owner.key.namespace),
        };
        let mut attempt = msg.delivery_count.max(1);
        let result = loop {
            let (outcome, attempt_span) = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Settled::Stopped(msg),
                o = self.attempt(&envelope, attempt) => o,
            };
            let (failure, dest) = match outcome {
                Outcome::Accepted { reply: None } => break Delivered::Ok { reply: None },
                Outcome::Accepted { reply: Some(reply) } => {
                    // The reply's trace continues from the attempt that got it.
                    let reply_span = trace::reply(&reply, &self.trace_names.reply, &attempt_span);
                    drop(attempt_span);
                    let routed = self
                        .route_reply(reply, &envelope)
                        .instrument(reply_span.clone());
                    match routed.await {
                        None => return Settled::Stopped(msg),
                        Some(ReplyOutcome::Done) => break Delivered::Ok { reply: None },
                        Some(ReplyOutcome::Failed { failure, dest }) => {
                            trace::record_error(&reply_span, &failure.reason);
                            (*failure, dest)
                        }
                    }
                }
                Outcome::Failed(f) => (f, None),
            };
            match after_failure(
                &s.delivery,
                attempt,
                failure.retryable,
                failure.retry_after,
                fastrand::f64(),
            ) {
                Next::Retry(wait) => {
                    tracing::debug!(subscription = %s.owner, id = envelope.event.id(), attempt, status = ?failure.status, reason = %failure.reason, "delivery failed; retrying");
                    self.counters.retried.inc();
                    if self.redeliver {
                        msg.nack(wait);
                        return Settled::Done;
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return Settled::Stopped(msg),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    attempt += 1;
                }
                Next::GiveUp => {
                    let dl_req = Request {
                        url: dest.as_deref().unwrap_or(&s.subscriber),
                        ..req
                    };
                    match self
                        .sender
                        .dead_letter_until(dl_req, failure, &self.stop)
                        .await
                    {
                        Some(d) => break d,
                        None => return Settled::Stopped(msg),
                    }
                }
            }
        };
        self.count(&result, &envelope.event);
        self.counters
            .latency
            .observe(started.elapsed().as_secs_f64());
        msg.ack();
        Settled::Done
    }

    /// One attempt: POST to the subscriber, or — when it is storage this process serves —
    /// publish into it in-process (its TTL one lower, like a reply). A refused publish is a
    /// retryable failure under the same schedule as an HTTP one; an event whose TTL is used
    /// up is dropped (a loop), which ends the delivery as done.
    ///
    /// `number` is the attempt's (1 for the first); the returned span is the attempt's
    /// (`Span::none()` with tracing off).
    async fn attempt(&self, envelope: &Envelope, number: u32) -> (Outcome, tracing::Span) {
        let s = &*self.sub;
        let Some(target) = &s.subscriber_target else {
            return self
                .sender
                .attempt_traced(
                    &s.subscriber,
                    envelope,
                    s.delivery.format,
                    Some(&s.owner.key.namespace),
                    s.delivery.timeout,
                    number,
                )
                .await;
        };
        let span = trace::attempt(s.subscriber.as_str(), number);
        let outcome = self
            .publish_in_process(target, envelope)
            .instrument(span.clone())
            .await;
        sluice_delivery::record_outcome(&span, &outcome);
        (outcome, span)
    }

    /// The in-process half of [`Worker::attempt`].
    async fn publish_in_process(&self, target: &ObjectRef, envelope: &Envelope) -> Outcome {
        let s = &*self.sub;
        let published = self
            .ingress
            .publish_to(
                target,
                vec![envelope.event.clone()],
                envelope.headers.clone(),
            )
            .await;
        match published {
            Ok(()) => Outcome::Accepted { reply: None },
            Err(IngestError::Ttl(e)) => {
                tracing::info!(subscription = %s.owner, id = envelope.event.id(), error = %e, "event dropped by the loop guard");
                self.counters.dropped_reply_ttl.inc();
                Outcome::Accepted { reply: None }
            }
            Err(e) => Outcome::Failed(Failure {
                status: Some(e.status().as_u16()),
                body: Default::default(),
                retryable: true,
                retry_after: None,
                reason: format!("could not store the event in {target}: {e}"),
            }),
        }
    }

    /// Sends a subscriber's reply where the subscription says. `None`: stopped first.
    async fn route_reply(&self, mut reply: Event, original: &Envelope) -> Option<ReplyOutcome> {
        let s = &*self.sub;
        match &s.reply {
            ReplyTo::Discard => {
                self.counters.dropped_reply_discarded.inc();
                Some(ReplyOutcome::Done)
            }
            ReplyTo::Broker(_) | ReplyTo::Channel { .. } => {
                let (target, address) = match &s.reply {
                    ReplyTo::Channel { key, address } => {
                        (ObjectRef::channel(key.clone()), Some(address.clone()))
                    }
                    ReplyTo::Broker(key) => (ObjectRef::broker(key.clone()), None),
                    _ => unreachable!("matched above"),
                };
                // The reply carries the TTL of the event it answers; the ingress takes one off.
                if let Some(ttl) = original.event.get(TTL_ATTRIBUTE) {
                    reply.set(TTL_ATTRIBUTE, ttl.clone());
                }
                let published = tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return None,
                    r = self.ingress.publish_to(&target, vec![reply], original.headers.clone()) => r,
                };
                Some(match published {
                    Ok(()) => {
                        self.counters.replies.inc();
                        ReplyOutcome::Done
                    }
                    Err(IngestError::Ttl(e)) => {
                        tracing::info!(subscription = %s.owner, id = original.event.id(), error = %e, "reply dropped");
                        self.counters.dropped_reply_ttl.inc();
                        ReplyOutcome::Done
                    }
                    // Storing the reply failed, so the delivery failed (SEMANTICS.md §4): it
                    // is retried under the same schedule as any failed attempt.
                    Err(e) => ReplyOutcome::Failed {
                        failure: Box::new(Failure {
                            status: None,
                            body: Default::default(),
                            retryable: true,
                            retry_after: None,
                            reason: format!("could not store the reply: {e}"),
                        }),
                        // A channel reply names the channel's address (SEMANTICS.md §9); a
                        // Trigger's reply keeps Knative's broker behaviour (the subscriber).
                        dest: address.map(Box::new),
                    },
                })
            }
            ReplyTo::Endpoint(url) => {
                let env = Envelope::with_headers(reply, original.headers.clone());
                let req = Request {
                    url,
                    envelope: &env,
                    policy: &self.reply_policy,
                    namespace: Some(&s.owner.key.namespace),
                };
                let report = self.sender.deliver_until(req, 1, &self.stop).await?;
                Some(match report.result {
                    Delivered::Ok { .. } => {
                        self.counters.replies.inc();
                        ReplyOutcome::Done
                    }
                    Delivered::Dropped { last }
                    | Delivered::DeadLettered { last }
                    | Delivered::DeadLetterFailed { last, .. } => ReplyOutcome::Failed {
                        // The reply got its whole retry schedule: no more retries of the
                        // subscriber, the original goes to the dead-letter sink.
                        failure: Box::new(Failure {
                            retryable: false,
                            ..last
                        }),
                        dest: Some(Box::new(url.clone())),
                    },
                })
            }
        }
    }

    fn count(&self, result: &Delivered, event: &Event) {
        let s = &self.sub.owner;
        match result {
            Delivered::Ok { .. } => {
                self.counters.delivered.inc();
            }
            Delivered::DeadLettered { last } => {
                tracing::info!(subscription = %s, id = event.id(), status = ?last.status, reason = %last.reason, "event dead-lettered");
                self.counters.dead_lettered.inc();
            }
            Delivered::Dropped { last } => {
                tracing::warn!(subscription = %s, id = event.id(), status = ?last.status, reason = %last.reason, "delivery failed and there is no dead-letter sink; event dropped");
                self.counters.dropped_no_dls.inc();
            }
            Delivered::DeadLetterFailed { last, dead_letter } => {
                tracing::error!(subscription = %s, id = event.id(), status = ?last.status, dead_letter_status = ?dead_letter.status, reason = %dead_letter.reason, "delivery and dead-letter delivery both failed; event dropped");
                self.counters.dropped_dls_failed.inc();
            }
        }
    }
}
