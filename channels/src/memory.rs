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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Default bound on the bytes of events one in-memory channel holds: 256 MiB.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;

/// An in-memory channel. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryChannel {
    capacity: usize,
    max_bytes: usize,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    held: Arc<Held>,
}

/// What the channel holds: events not yet finished by every subscription that took them,
/// counted once however many queues share them.
#[derive(Debug, Default)]
struct Held {
    events: AtomicUsize,
    bytes: AtomicUsize,
}

/// One stored event. The last queue or in-flight message to let go of it gives its bytes
/// back to the channel.
#[derive(Debug)]
struct Item {
    envelope: Arc<Envelope>,
    size: usize,
    held: Arc<Held>,
}

impl Drop for Item {
    fn drop(&mut self) {
        self.held.events.fetch_sub(1, Ordering::AcqRel);
        self.held.bytes.fetch_sub(self.size, Ordering::AcqRel);
    }
}

/// Roughly what an event costs in memory: its data, attributes and pass-through headers.
fn size_of(e: &Envelope) -> usize {
    let attrs: usize = e
        .event
        .attributes()
        .map(|(n, v)| n.len() + v.to_string_form().len() + 32)
        .sum();
    let headers: usize = e.headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    e.event.data().map_or(0, |d| d.len()) + attrs + headers + 128
}

#[derive(Debug)]
struct Queue {
    capacity: usize,
    inner: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<(Arc<Item>, u32)>,
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
    fn push_front(&self, item: Arc<Item>, count: u32) {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed {
            return;
        }
        st.items.push_front((item, count));
        drop(st);
        self.notify.notify_one();
    }
}

impl MemoryChannel {
    /// A channel whose every subscription queue holds at most `capacity` events, holding at
    /// most [`DEFAULT_MAX_BYTES`] of events in all.
    pub fn new(capacity: usize) -> Self {
        Self::with_limits(capacity, DEFAULT_MAX_BYTES)
    }

    /// A channel bounded by events per subscription queue and by bytes in all.
    pub fn with_limits(capacity: usize, max_bytes: usize) -> Self {
        MemoryChannel {
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            queues: RwLock::new(HashMap::new()),
            held: Arc::default(),
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

    /// Bytes of events the channel holds now.
    pub fn held_bytes(&self) -> usize {
        self.held.bytes.load(Ordering::Acquire)
    }

    /// Takes `bytes` of the byte budget, or says why not.
    fn admit(&self, bytes: usize) -> Result<(), ChannelError> {
        let before = self.held.bytes.fetch_add(bytes, Ordering::AcqRel);
        // An event larger than the whole budget still fits in an empty channel, so a limit
        // set below the body limit cannot make an event impossible to send.
        if before > 0 && before + bytes > self.max_bytes {
            self.held.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(ChannelError::Full(format!(
                "the broker holds {before} bytes of undelivered events (limit {}, ConfigMap key `maxBytes`)",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Channel for MemoryChannel {
    async fn publish(&self, envelope: Envelope) -> Result<(), ChannelError> {
        self.publish_batch(vec![envelope]).await
    }

    /// All or nothing: every queue that wants one of the events must have room for all the
    /// events it wants, and the channel for all their bytes, or nothing is queued.
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), ChannelError> {
        let envelopes: Vec<Arc<Envelope>> = envelopes.into_iter().map(Arc::new).collect();
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        // Lock every queue first, so the batch goes to all of them or to none.
        let mut guards: Vec<_> = queues
            .iter()
            .map(|(id, q)| (id, q, q.inner.lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        // Which events each queue wants; which events anyone wants.
        let wants: Vec<Vec<bool>> = guards
            .iter()
            .map(|(_, _, g)| envelopes.iter().map(|e| g.interest.wants(e)).collect())
            .collect();
        for ((id, q, g), w) in guards.iter().zip(&wants) {
            let n = w.iter().filter(|x| **x).count();
            if n > 0 && g.items.len() + n > q.capacity {
                return Err(ChannelError::Full(format!(
                    "subscription {id} has {} of {} events waiting",
                    g.items.len(),
                    q.capacity
                )));
            }
        }
        let wanted: Vec<bool> = (0..envelopes.len())
            .map(|i| wants.iter().any(|w| w[i]))
            .collect();
        let sizes: Vec<usize> = envelopes.iter().map(|e| size_of(e)).collect();
        let total: usize = sizes
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(s, _)| s)
            .sum();
        if total > 0 {
            self.admit(total)?;
        }
        // Nobody wants an event: it is accepted and dropped (a broker without matching
        // triggers), holding nothing.
        let items: Vec<Option<Arc<Item>>> = envelopes
            .into_iter()
            .zip(sizes)
            .zip(&wanted)
            .map(|((envelope, size), w)| {
                w.then(|| {
                    self.held.events.fetch_add(1, Ordering::AcqRel);
                    Arc::new(Item {
                        envelope,
                        size,
                        held: self.held.clone(),
                    })
                })
            })
            .collect();
        for ((_, _, g), w) in guards.iter_mut().zip(&wants) {
            for (item, wanted) in items.iter().zip(w) {
                if let (Some(item), true) = (item, wanted) {
                    g.items.push_back((item.clone(), 1));
                }
            }
        }
        let notify: Vec<_> = guards
            .into_iter()
            .zip(&wants)
            .filter(|(_, w)| w.iter().any(|x| *x))
            .map(|((_, q, _), _)| q)
            .collect();
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

    fn pending(&self) -> Option<usize> {
        Some(self.held.events.load(Ordering::Acquire))
    }

    fn backlog(&self, id: &str) -> Option<u64> {
        Some(MemoryChannel::backlog(self, id) as u64)
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
    fn set_interest(&mut self, interest: Interest) -> bool {
        // Events queued before the interest was declared were not filtered: drop the ones
        // it does not want, so that everything handed out from now on is wanted.
        let mut st = self.queue.inner.lock().unwrap_or_else(|e| e.into_inner());
        st.items.retain(|(item, _)| interest(&item.envelope));
        st.interest = InterestSlot(Some(interest));
        true
    }

    async fn next(&mut self) -> Option<Result<Message, ChannelError>> {
        loop {
            let notified = self.queue.notify.notified();
            {
                let mut st = self.queue.inner.lock().unwrap_or_else(|e| e.into_inner());
                if st.closed {
                    return None;
                }
                if let Some((item, count)) = st.items.pop_front() {
                    let more = !st.items.is_empty();
                    drop(st);
                    if more {
                        // Keep the permit alive for the next call.
                        self.queue.notify.notify_one();
                    }
                    let env = item.envelope.clone();
                    let acker = MemoryAcker {
                        queue: Arc::downgrade(&self.queue),
                        item,
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
    item: Arc<Item>,
    count: u32,
}

impl Acker for MemoryAcker {
    fn ack(self: Box<Self>) {}

    fn nack(self: Box<Self>, delay: Duration) {
        let Some(queue) = self.queue.upgrade() else {
            return;
        };
        let (item, count) = (self.item, self.count + 1);
        if delay.is_zero() {
            queue.push_front(item, count);
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(delay).await;
                queue.push_front(item, count);
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

    /// Issue 9 item 2: with room for 2, a batch of 3 was answered 503 while 2 of its events
    /// were queued anyway (and duplicated by the producer's retry).
    #[tokio::test]
    async fn a_batch_is_queued_whole_or_not_at_all() {
        let ch = MemoryChannel::new(2);
        let mut s = ch.subscribe(spec("s")).await.unwrap();
        let batch = |ids: &[&str]| ids.iter().map(|i| env(i)).collect::<Vec<_>>();
        assert!(matches!(
            ch.publish_batch(batch(&["1", "2", "3"])).await,
            Err(ChannelError::Full(_))
        ));
        assert_eq!(ch.backlog("s"), 0);
        assert_eq!(ch.pending(), Some(0));
        ch.publish_batch(batch(&["1", "2"])).await.unwrap();
        assert_eq!(ch.backlog("s"), 2);
        assert_eq!(s.next().await.unwrap().unwrap().envelope.event.id(), "1");
    }

    /// Issue 9 item 8: queues were bounded in events only (10 000 × 4 MiB).
    #[tokio::test]
    async fn bytes_are_bounded_and_given_back_when_events_finish() {
        let ch = MemoryChannel::with_limits(1000, 10_000);
        let mut a = ch.subscribe(spec("a")).await.unwrap();
        let _b = ch.subscribe(spec("b")).await.unwrap();
        let big = |id: &str| {
            let mut e = env(id);
            e.event.set_data(vec![b'x'; 4000], true);
            e
        };
        ch.publish(big("1")).await.unwrap();
        ch.publish(big("2")).await.unwrap();
        // Two subscriptions share each event: counted once.
        assert!(ch.held_bytes() < 10_000, "{}", ch.held_bytes());
        assert!(matches!(
            ch.publish(big("3")).await,
            Err(ChannelError::Full(m)) if m.contains("maxBytes")
        ));
        assert_eq!(ch.pending(), Some(2));
        // Finished by `a` but still owed to `b`: still held.
        a.next().await.unwrap().unwrap().ack();
        assert_eq!(ch.pending(), Some(2));
        ch.remove_subscription("b").await.unwrap();
        assert_eq!(ch.pending(), Some(1));
        let m = a.next().await.unwrap().unwrap();
        assert_eq!(ch.pending(), Some(1), "in flight is still held");
        m.ack();
        assert_eq!(ch.pending(), Some(0));
        assert_eq!(ch.held_bytes(), 0);
        ch.publish(big("3")).await.unwrap();
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
