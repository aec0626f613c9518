//! The in-memory channel: one bounded queue per subscription, in this process.
//!
//! `publish` appends the event (shared, not copied) to every subscription's queue, so each
//! trigger drains at its own pace and a slow one never holds up another. When any queue is
//! full the publish is refused as a whole with [`ChannelError::Full`] — the producer gets a 503
//! and retries — rather than dropping an event that would then be acknowledged and lost.
//! Events live only in memory: a crash loses them (use Kafka or NATS for durability).
//!
//! A subscriber may declare its interest ([`Subscription::set_interest`], the trigger's
//! filter): `publish` then queues the event only for the subscriptions that want it, so a
//! broker with many triggers wakes only the dispatchers whose filter matches, and a full
//! queue refuses only the events its trigger would have delivered.

use crate::{Acker, Channel, ChannelError, Interest, Message, Subscription, SubscriptionSpec};
use async_trait::async_trait;
use sluice_core::Envelope;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// An in-memory channel. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryChannel {
    capacity: usize,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
}

#[derive(Debug)]
struct Queue {
    capacity: usize,
    inner: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<(Arc<Envelope>, u32)>,
    closed: bool,
    interest: InterestSlot,
}

/// The subscriber's interest, if it declared one (none: every event).
#[derive(Default)]
struct InterestSlot(Option<Interest>);

impl InterestSlot {
    fn wants(&self, envelope: &Envelope) -> bool {
        self.0.as_ref().is_none_or(|f| f(envelope))
    }
}

impl std::fmt::Debug for InterestSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

impl Queue {
    fn push_front(&self, env: Arc<Envelope>, count: u32) {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed {
            return;
        }
        st.items.push_front((env, count));
        drop(st);
        self.notify.notify_one();
    }
}

impl MemoryChannel {
    /// A channel whose every subscription queue holds at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        MemoryChannel {
            capacity: capacity.max(1),
            queues: RwLock::new(HashMap::new()),
        }
    }

    /// Events waiting in a subscription's queue (not counting those being delivered).
    pub fn backlog(&self, id: &str) -> usize {
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        queues.get(id).map_or(0, |q| {
            q.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .items
                .len()
        })
    }
}

#[async_trait]
impl Channel for MemoryChannel {
    async fn publish(&self, envelope: Envelope) -> Result<(), ChannelError> {
        let envelope = Arc::new(envelope);
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        // Lock every queue that wants the event first, so it goes to all of them or to none.
        let mut guards: Vec<_> = queues
            .iter()
            .map(|(id, q)| (id, q, q.inner.lock().unwrap_or_else(|e| e.into_inner())))
            .filter(|(_, _, g)| g.interest.wants(&envelope))
            .collect();
        if let Some((id, _, _)) = guards.iter().find(|(_, q, g)| g.items.len() >= q.capacity) {
            return Err(ChannelError::Full(format!(
                "subscription {id} has {} events waiting",
                self.capacity
            )));
        }
        for (_, _, g) in guards.iter_mut() {
            g.items.push_back((envelope.clone(), 1));
        }
        let notify: Vec<_> = guards.into_iter().map(|(_, q, _)| q).collect();
        for q in notify {
            q.notify.notify_one();
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, ChannelError> {
        // A new subscription starts at the latest event: there is no retention to replay from.
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        let queue = queues
            .entry(spec.id)
            .or_insert_with(|| {
                Arc::new(Queue {
                    capacity: self.capacity,
                    inner: Mutex::new(QueueState::default()),
                    notify: Notify::new(),
                })
            })
            .clone();
        Ok(Box::new(MemorySubscription { queue }))
    }

    async fn remove_subscription(&self, id: &str) -> Result<(), ChannelError> {
        let removed = self
            .queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(q) = removed {
            let mut st = q.inner.lock().unwrap_or_else(|e| e.into_inner());
            st.closed = true;
            st.items.clear();
            drop(st);
            q.notify.notify_waiters();
            q.notify.notify_one();
        }
        Ok(())
    }
}

struct MemorySubscription {
    queue: Arc<Queue>,
}

impl MemorySubscription {
    fn set(&self, interest: Option<Interest>) {
        self.queue
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .interest = InterestSlot(interest);
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        // The next consumer of this queue (a restarted dispatcher) may want other events:
        // queue everything until it says otherwise.
        self.set(None);
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    fn set_interest(&mut self, interest: Interest) {
        self.set(Some(interest));
    }

    async fn next(&mut self) -> Option<Result<Message, ChannelError>> {
        loop {
            let notified = self.queue.notify.notified();
            {
                let mut st = self.queue.inner.lock().unwrap_or_else(|e| e.into_inner());
                if st.closed {
                    return None;
                }
                if let Some((env, count)) = st.items.pop_front() {
                    let more = !st.items.is_empty();
                    drop(st);
                    if more {
                        // Keep the permit alive for the next call.
                        self.queue.notify.notify_one();
                    }
                    let acker = MemoryAcker {
                        queue: Arc::downgrade(&self.queue),
                        envelope: env.clone(),
                        count,
                    };
                    return Some(Ok(Message::new(env, 0, count, Box::new(acker))));
                }
            }
            notified.await;
        }
    }
}

struct MemoryAcker {
    queue: Weak<Queue>,
    envelope: Arc<Envelope>,
    count: u32,
}

impl Acker for MemoryAcker {
    fn ack(self: Box<Self>) {}

    fn nack(self: Box<Self>, delay: Duration) {
        let Some(queue) = self.queue.upgrade() else {
            return;
        };
        let (env, count) = (self.envelope, self.count + 1);
        if delay.is_zero() {
            queue.push_front(env, count);
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(delay).await;
                queue.push_front(env, count);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::topology::StartFrom;
    use sluice_core::{Event, SpecVersion};

    fn env(id: &str) -> Envelope {
        Envelope::new(Event::new(SpecVersion::V10, id, "s", "t"))
    }

    fn spec(id: &str) -> SubscriptionSpec {
        SubscriptionSpec {
            id: id.into(),
            start_from: StartFrom::Latest,
            ordered: false,
        }
    }

    #[tokio::test]
    async fn each_subscription_gets_every_event_in_order() {
        let ch = MemoryChannel::new(10);
        let mut a = ch.subscribe(spec("a")).await.unwrap();
        let mut b = ch.subscribe(spec("b")).await.unwrap();
        for i in 0..3 {
            ch.publish(env(&i.to_string())).await.unwrap();
        }
        for sub in [&mut a, &mut b] {
            for i in 0..3 {
                let m = sub.next().await.unwrap().unwrap();
                assert_eq!(m.envelope.event.id(), i.to_string());
                m.ack();
            }
        }
    }

    #[tokio::test]
    async fn full_queue_refuses_the_whole_publish() {
        let ch = MemoryChannel::new(2);
        let mut slow = ch.subscribe(spec("slow")).await.unwrap();
        let _fast = ch.subscribe(spec("fast")).await.unwrap();
        ch.publish(env("1")).await.unwrap();
        ch.publish(env("2")).await.unwrap();
        assert!(matches!(
            ch.publish(env("3")).await,
            Err(ChannelError::Full(_))
        ));
        // Draining one makes room again.
        slow.next().await.unwrap().unwrap().ack();
        assert_eq!(ch.backlog("slow"), 1);
        assert_eq!(ch.backlog("fast"), 2);
        assert!(matches!(
            ch.publish(env("3")).await,
            Err(ChannelError::Full(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn nack_redelivers_after_the_delay_with_a_higher_count() {
        let ch = MemoryChannel::new(10);
        let mut s = ch.subscribe(spec("s")).await.unwrap();
        ch.publish(env("1")).await.unwrap();
        let m = s.next().await.unwrap().unwrap();
        assert_eq!(m.delivery_count, 1);
        m.nack(Duration::from_secs(5));
        let start = tokio::time::Instant::now();
        let m = s.next().await.unwrap().unwrap();
        assert!(start.elapsed() >= Duration::from_secs(5));
        assert_eq!(m.delivery_count, 2);
        // Dropping without ack redelivers at once.
        drop(m);
        let m = s.next().await.unwrap().unwrap();
        assert_eq!(m.delivery_count, 3);
        m.ack();
    }

    #[tokio::test]
    async fn interest_skips_unwanted_events_and_their_full_queues() {
        let ch = MemoryChannel::new(1);
        let mut picky = ch.subscribe(spec("picky")).await.unwrap();
        let mut all = ch.subscribe(spec("all")).await.unwrap();
        picky.set_interest(Arc::new(|e: &Envelope| e.event.id().starts_with('x')));
        ch.publish(env("x1")).await.unwrap();
        // picky's queue is full, but it does not want "a": only "all" must take it...
        assert_eq!(ch.backlog("picky"), 1);
        all.next().await.unwrap().unwrap().ack();
        ch.publish(env("a")).await.unwrap();
        assert_eq!(ch.backlog("picky"), 1);
        assert_eq!(ch.backlog("all"), 1);
        // ...while an event it wants is refused as a whole.
        all.next().await.unwrap().unwrap().ack();
        assert!(matches!(
            ch.publish(env("x2")).await,
            Err(ChannelError::Full(_))
        ));
        let m = picky.next().await.unwrap().unwrap();
        assert_eq!(m.envelope.event.id(), "x1");
        m.ack();
        // Dropping the subscription forgets its interest.
        drop(picky);
        ch.publish(env("b")).await.unwrap();
        assert_eq!(ch.backlog("picky"), 1);
    }

    #[tokio::test]
    async fn resubscribing_keeps_the_queue_and_removal_closes_it() {
        let ch = MemoryChannel::new(10);
        let s = ch.subscribe(spec("s")).await.unwrap();
        ch.publish(env("1")).await.unwrap();
        drop(s);
        let mut s = ch.subscribe(spec("s")).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().envelope.event.id(), "1");
        ch.remove_subscription("s").await.unwrap();
        assert!(s.next().await.is_none());
    }
}
