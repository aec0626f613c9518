//! One trigger's dispatcher: consume → filter → deliver → reply → ack.
//!
//! Each trigger has its own subscription and its own concurrency limit, so a slow or failing
//! subscriber only ever holds up its own trigger. Unordered triggers run up to
//! `trigger.concurrency` deliveries at once; ordered triggers run one delivery at a time per
//! lane (a Kafka partition, say), lanes in parallel.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sluice_broker::{IngestError, Ingress, TTL_ATTRIBUTE};
use sluice_channels::{Message, Subscription};
use sluice_core::metrics::{DropLabels, Metrics, TriggerLabels};
use sluice_core::topology::Trigger;
use sluice_core::Envelope;
use sluice_delivery::policy::{after_failure, Next};
use sluice_delivery::{Delivered, Outcome, Request, Sender};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Counters resolved once per dispatcher, so counting is one atomic add.
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
    latency: Histogram,
}

impl Counters {
    fn new(m: &Metrics, t: &Trigger) -> Self {
        let l = TriggerLabels::new(&t.key.namespace, &t.broker.name, &t.key.name);
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
            latency: m.delivery_latency.get_or_create(&l).clone(),
        }
    }
}

/// Everything a delivery task needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Worker {
    trigger: Arc<Trigger>,
    ingress: Arc<Ingress>,
    sender: Sender,
    counters: Counters,
    /// Retry by nack-with-delay (the channel redelivers and counts) instead of waiting here.
    redeliver: bool,
}

impl Worker {
    pub(crate) fn new(
        trigger: Arc<Trigger>,
        ingress: Arc<Ingress>,
        sender: Sender,
        metrics: &Metrics,
        redeliver: bool,
    ) -> Self {
        let counters = Counters::new(metrics, &trigger);
        Worker {
            trigger,
            ingress,
            sender,
            counters,
            redeliver,
        }
    }

    /// Runs the dispatcher until the subscription closes or `cancel` fires. In-flight
    /// deliveries finish on their own; their messages are acked or nacked as usual.
    pub(crate) async fn run(self, mut sub: Box<dyn Subscription>, cancel: CancellationToken) {
        // Let an in-process channel skip queueing (and waking us for) events the filter
        // rejects; those are counted as filtered out where they are skipped. Messages that
        // still arrive are filtered below as before.
        let (trigger, filtered_out) = (self.trigger.clone(), self.counters.filtered_out.clone());
        sub.set_interest(Arc::new(move |env: &Envelope| {
            let wanted = trigger.filter.matches(&env.event);
            if !wanted {
                filtered_out.inc();
            }
            wanted
        }));
        let limit = Arc::new(Semaphore::new(self.trigger.concurrency.max(1)));
        let mut lanes: HashMap<u32, mpsc::Sender<Message>> = HashMap::new();
        loop {
            // Wait for capacity before taking a message, so messages are not pulled out of the
            // channel only to sit in memory here.
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                n = sub.next() => n,
            };
            let msg = match next {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(trigger = %self.trigger.key, error = %e, "reading the channel failed; retrying in 1s");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if !self.trigger.filter.matches(&msg.envelope.event) {
                self.counters.filtered_out.inc();
                msg.ack();
                continue;
            }
            if self.trigger.ordered {
                let lane = msg.lane;
                let tx = lanes
                    .entry(lane)
                    .or_insert_with(|| self.clone().spawn_lane());
                // The permit goes with the message and is released after it is processed.
                drop(permit);
                if tx.send(msg).await.is_err() {
                    lanes.remove(&lane);
                }
            } else {
                let w = self.clone();
                tokio::spawn(async move {
                    w.process(msg).await;
                    drop(permit);
                });
            }
        }
        tracing::debug!(trigger = %self.trigger.key, "dispatcher stopped");
    }

    fn spawn_lane(self) -> mpsc::Sender<Message> {
        let (tx, mut rx) = mpsc::channel::<Message>(64);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                self.process(msg).await;
            }
        });
        tx
    }

    /// Delivers one message and settles it with the channel.
    async fn process(&self, msg: Message) {
        let started = tokio::time::Instant::now();
        let t = &self.trigger;
        // The subscriber sees the producer's attributes plus knativearrivaltime; the TTL is
        // the broker's business and is kept aside for a reply.
        let mut event = msg.envelope.event.clone();
        let ttl = event.remove(TTL_ATTRIBUTE);
        let envelope = Envelope::with_headers(event, msg.envelope.headers.clone());
        let req = Request {
            url: &t.subscriber,
            envelope: &envelope,
            policy: &t.delivery,
            namespace: Some(&t.key.namespace),
        };
        let result = if self.redeliver {
            match self
                .sender
                .attempt(
                    req.url,
                    &envelope,
                    t.delivery.format,
                    req.namespace,
                    t.delivery.timeout,
                )
                .await
            {
                Outcome::Accepted { reply } => Delivered::Ok { reply },
                Outcome::Failed(f) => match after_failure(
                    &t.delivery,
                    msg.delivery_count,
                    f.retryable,
                    f.retry_after,
                    fastrand::f64(),
                ) {
                    Next::Retry(wait) => {
                        tracing::debug!(trigger = %t.key, id = envelope.event.id(), attempt = msg.delivery_count, status = ?f.status, reason = %f.reason, "delivery failed; redelivering later");
                        self.counters.retried.inc();
                        msg.nack(wait);
                        return;
                    }
                    Next::GiveUp => self.sender.dead_letter(req, f).await,
                },
            }
        } else {
            let report = self.sender.deliver(req).await;
            self.counters
                .retried
                .inc_by(report.attempts.saturating_sub(1) as u64);
            report.result
        };
        match result {
            Delivered::Ok { reply } => {
                if let Some(mut reply) = reply {
                    if let Some(ttl) = ttl {
                        reply.set(TTL_ATTRIBUTE, ttl);
                    }
                    match self
                        .ingress
                        .publish(&t.broker, vec![reply], msg.envelope.headers.clone())
                        .await
                    {
                        Ok(()) => {
                            self.counters.replies.inc();
                        }
                        Err(IngestError::Ttl(e)) => {
                            tracing::info!(trigger = %t.key, id = envelope.event.id(), error = %e, "reply dropped");
                            self.counters.dropped_reply_ttl.inc();
                        }
                        Err(e) => {
                            // Storing the reply failed, so the delivery failed: try it again.
                            tracing::warn!(trigger = %t.key, id = envelope.event.id(), error = %e, "could not store the reply; the event will be delivered again");
                            self.counters.retried.inc();
                            msg.nack(t.delivery.backoff_delay.max(Duration::from_millis(100)));
                            return;
                        }
                    }
                }
                self.counters.delivered.inc();
            }
            Delivered::DeadLettered { last } => {
                tracing::info!(trigger = %t.key, id = envelope.event.id(), status = ?last.status, reason = %last.reason, "event dead-lettered");
                self.counters.dead_lettered.inc();
            }
            Delivered::Dropped { last } => {
                tracing::warn!(trigger = %t.key, id = envelope.event.id(), status = ?last.status, reason = %last.reason, "delivery failed and the trigger has no dead-letter sink; event dropped");
                self.counters.dropped_no_dls.inc();
            }
            Delivered::DeadLetterFailed { last, dead_letter } => {
                tracing::error!(trigger = %t.key, id = envelope.event.id(), status = ?last.status, dead_letter_status = ?dead_letter.status, reason = %dead_letter.reason, "delivery and dead-letter delivery both failed; event dropped");
                self.counters.dropped_dls_failed.inc();
            }
        }
        self.counters
            .latency
            .observe(started.elapsed().as_secs_f64());
        msg.ack();
    }
}
