//! The activator of one Service: the [`Gate`] behind a mutex, with the waiting requests'
//! wake-ups, the replicas' addresses and the concurrency windows the autoscaler reads.
//!
//! ```text
//! request ──acquire──▶ Gate ──Dispatch──▶ Lease (replica address) ──drop──▶ finish
//!                        └──Queued──▶ wait (≤ timeout) ◀── add_replica / finish release it
//!                        └──Refused─▶ 503 + Retry-After
//! ```
//!
//! No lock is held across an await: the mutex only guards the state machine.

use crate::gate::{Arrival, Gate, ReplicaId, WaitId};
use crate::metrics::ConcurrencyWindows;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Why a request did not get a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the activator queue is full")]
    QueueFull,
    #[error("no replica became free within the request timeout")]
    Timeout,
}

/// What the activator holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    pub ready: u32,
    pub queued: usize,
    pub in_flight: u64,
    /// Events waiting in channels for the Service (last reported).
    pub backlog: u64,
}

struct Inner {
    gate: Gate,
    next: WaitId,
    waiters: HashMap<WaitId, oneshot::Sender<(ReplicaId, SocketAddr)>>,
    addrs: HashMap<ReplicaId, SocketAddr>,
    windows: ConcurrencyWindows,
    /// Events waiting in channels for this Service, as last reported.
    backlog: u64,
}

impl Inner {
    /// The demand changed: record it for the windows.
    fn touch(&mut self) {
        let demand = crate::demand::demand(
            self.gate.in_flight(),
            self.gate.queued() as u64,
            self.backlog,
        );
        self.windows.set(Instant::now(), demand);
    }

    /// Hands released requests their replica; a waiter that is gone frees its slot again.
    fn hand_out(&mut self, mut released: Vec<(WaitId, ReplicaId)>) {
        while !released.is_empty() {
            let mut again = Vec::new();
            for (w, r) in released {
                let addr = self.addrs.get(&r).copied();
                let sent = match (self.waiters.remove(&w), addr) {
                    (Some(tx), Some(addr)) => tx.send((r, addr)).is_ok(),
                    _ => false,
                };
                if !sent {
                    again.extend(self.gate.finish(r));
                }
            }
            released = again;
        }
        self.touch();
    }
}

/// One Service's activator.
pub struct Activator {
    inner: Mutex<Inner>,
    poke: Notify,
    finished: Notify,
}

impl Activator {
    /// `windows`: the longest window the autoscaler asks about (the stable window).
    pub fn new(container_concurrency: u32, queue_capacity: usize, windows: Duration) -> Arc<Self> {
        Arc::new(Activator {
            inner: Mutex::new(Inner {
                gate: Gate::new(container_concurrency, queue_capacity),
                next: 0,
                waiters: HashMap::new(),
                addrs: HashMap::new(),
                windows: ConcurrencyWindows::new(Instant::now(), windows),
                backlog: 0,
            }),
            poke: Notify::new(),
            finished: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A replica for one request, waiting up to `timeout` for one to be ready and free.
    pub async fn acquire(self: &Arc<Self>, timeout: Duration) -> Result<Lease, Refused> {
        let (id, rx) = {
            let mut inner = self.lock();
            let id = inner.next;
            inner.next += 1;
            match inner.gate.arrive(id) {
                Arrival::Dispatch(r) => {
                    inner.touch();
                    let addr = inner.addrs[&r];
                    return Ok(Lease::new(self, r, addr));
                }
                Arrival::Refused => return Err(Refused::QueueFull),
                Arrival::Queued { poke } => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.insert(id, tx);
                    inner.touch();
                    if poke {
                        self.poke.notify_one();
                    }
                    (id, rx)
                }
            }
        };
        let mut waiting = Waiting {
            activator: self,
            id,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((r, addr))) => {
                waiting.rx = None;
                Ok(Lease::new(self, r, addr))
            }
            _ => Err(Refused::Timeout),
        }
    }

    /// Resolves when a request had to wait with no replica ready (scale from zero now).
    pub async fn poked(&self) {
        self.poke.notified().await
    }

    /// A replica is ready at `addr`.
    pub fn add_replica(&self, id: ReplicaId, addr: SocketAddr) {
        let mut inner = self.lock();
        inner.addrs.insert(id, addr);
        let released = inner.gate.add_replica(id);
        inner.hand_out(released);
    }

    /// `id` gets no new requests; returns how many it still has.
    pub fn drain(&self, id: ReplicaId) -> u32 {
        self.lock().gate.drain(id)
    }

    /// Resolves once `id` has no request in flight.
    pub async fn drained(&self, id: ReplicaId) {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if self.lock().gate.in_flight_of(id) == 0 {
                return;
            }
            finished.await;
        }
    }

    /// `id` is gone.
    pub fn remove(&self, id: ReplicaId) {
        let mut inner = self.lock();
        inner.gate.remove(id);
        inner.addrs.remove(&id);
        inner.touch();
    }

    /// The ready replicas taking new requests, with their requests in flight.
    pub fn ready_replicas(&self) -> Vec<(ReplicaId, u32)> {
        self.lock().gate.ready_replicas()
    }

    /// The Service is going away (deleted, or replaced by an edit): every waiting request is
    /// answered at once (the caller turns it into a 503 that delivery retries, reaching the
    /// new version) instead of waiting for a replica that will not come.
    pub fn close(&self) {
        let mut inner = self.lock();
        let waiting: Vec<WaitId> = inner.waiters.keys().copied().collect();
        for w in waiting {
            inner.gate.cancel(w);
        }
        inner.waiters.clear();
        inner.touch();
    }

    /// Events waiting in channels for this Service now (the scaler samples it every tick):
    /// counted as demand ([`crate::demand`]).
    pub fn set_backlog(&self, backlog: u64) {
        let mut inner = self.lock();
        if inner.backlog != backlog {
            inner.backlog = backlog;
            inner.touch();
        }
    }

    /// `containerConcurrency` changed.
    pub fn set_concurrency(&self, container_concurrency: u32) {
        let mut inner = self.lock();
        let released = inner.gate.set_concurrency(container_concurrency);
        inner.hand_out(released);
    }

    pub fn load(&self) -> Load {
        let inner = self.lock();
        Load {
            ready: inner.gate.ready(),
            queued: inner.gate.queued(),
            in_flight: inner.gate.in_flight(),
            backlog: inner.backlog,
        }
    }

    /// Average demand (requests queued or in flight, channel backlog) over the two windows.
    pub fn averages(&self, now: Instant, stable: Duration, panic: Duration) -> (f64, f64) {
        let mut inner = self.lock();
        (
            inner.windows.average(now, stable),
            inner.windows.average(now, panic),
        )
    }

    fn finish(&self, replica: ReplicaId) {
        {
            let mut inner = self.lock();
            let released = inner.gate.finish(replica);
            inner.hand_out(released);
        }
        self.finished.notify_waiters();
    }
}

/// A request waiting for a replica; dropped before it got one (timeout, client gone), it
/// leaves the queue — or, if a replica was handed to it meanwhile, gives the slot back.
struct Waiting<'a> {
    activator: &'a Arc<Activator>,
    id: WaitId,
    rx: Option<oneshot::Receiver<(ReplicaId, SocketAddr)>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let handed = {
            let mut inner = self.activator.lock();
            if inner.gate.cancel(self.id) {
                inner.waiters.remove(&self.id);
                inner.touch();
                None
            } else {
                // Handed out under the lock, so the value is there.
                rx.try_recv().ok()
            }
        };
        if let Some((r, _)) = handed {
            self.activator.finish(r);
        }
    }
}

/// One request's right to a replica; dropping it ends the request.
pub struct Lease {
    activator: Arc<Activator>,
    replica: ReplicaId,
    addr: SocketAddr,
}

impl Lease {
    fn new(activator: &Arc<Activator>, replica: ReplicaId, addr: SocketAddr) -> Self {
        Lease {
            activator: activator.clone(),
            replica,
            addr,
        }
    }

    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.activator.finish(self.replica);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn held_at_zero_released_when_ready() {
        let a = Activator::new(0, 10, Duration::from_secs(60));
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(Duration::from_secs(30)).await.map(|l| l.addr()) }
        });
        // The first waiting request pokes the autoscaler at once.
        tokio::time::timeout(Duration::from_millis(1), a.poked())
            .await
            .expect("poked");
        assert_eq!(a.load().queued, 1);
        tokio::time::advance(Duration::from_secs(3)).await;
        a.add_replica(1, addr(9001));
        assert_eq!(waiting.await.unwrap(), Ok(addr(9001)));
        assert_eq!(
            a.load(),
            Load {
                ready: 1,
                queued: 0,
                in_flight: 0,
                backlog: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_the_timeout() {
        let a = Activator::new(0, 10, Duration::from_secs(60));
        let got = a.acquire(Duration::from_secs(5)).await;
        assert_eq!(got.err(), Some(Refused::Timeout));
        // It left the queue.
        assert_eq!(a.load().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses() {
        let a = Activator::new(0, 1, Duration::from_secs(60));
        let first = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(Duration::from_secs(30)).await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            a.acquire(Duration::from_secs(30)).await.err(),
            Some(Refused::QueueFull)
        );
        a.add_replica(1, addr(1));
        assert!(first.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_limit_holds_and_releases() {
        let a = Activator::new(1, 10, Duration::from_secs(60));
        a.add_replica(1, addr(1));
        let lease = a.acquire(Duration::from_secs(30)).await.unwrap();
        let second = tokio::spawn({
            let a = a.clone();
            async move {
                a.acquire(Duration::from_secs(30))
                    .await
                    .map(|l| l.replica())
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            a.load(),
            Load {
                ready: 1,
                queued: 1,
                in_flight: 1,
                backlog: 0
            }
        );
        drop(lease);
        assert_eq!(second.await.unwrap(), Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn draining_waits_for_in_flight_requests() {
        let a = Activator::new(0, 10, Duration::from_secs(60));
        a.add_replica(1, addr(1));
        let lease = a.acquire(Duration::from_secs(30)).await.unwrap();
        assert_eq!(a.drain(1), 1);
        let drained = tokio::spawn({
            let a = a.clone();
            async move { a.drained(1).await }
        });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!drained.is_finished());
        drop(lease);
        drained.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn closing_answers_waiting_requests_at_once() {
        let a = Activator::new(0, 10, Duration::from_secs(60));
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(Duration::from_secs(300)).await.err() }
        });
        tokio::task::yield_now().await;
        assert_eq!(a.load().queued, 1);
        let before = Instant::now();
        a.close();
        assert_eq!(waiting.await.unwrap(), Some(Refused::Timeout));
        assert_eq!(Instant::now(), before, "no waiting for the timeout");
        assert_eq!(a.load().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn demand_feeds_the_windows() {
        let a = Activator::new(0, 10, Duration::from_secs(60));
        a.add_replica(1, addr(1));
        let leases: Vec<_> = futures_lite(&a, 4).await;
        tokio::time::advance(Duration::from_secs(6)).await;
        drop(leases);
        let (stable, panic) = a.averages(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_secs(6),
        );
        assert!((panic - 4.0).abs() < 1e-6, "{panic}");
        assert!((stable - 4.0).abs() < 1e-6, "{stable}");
    }

    #[tokio::test(start_paused = true)]
    async fn backlog_counts_as_demand() {
        let a = Activator::new(1, 10, Duration::from_secs(60));
        a.add_replica(1, addr(1));
        let lease = a.acquire(Duration::from_secs(1)).await.unwrap();
        // One request in flight, 9 events waiting in the trigger's channel.
        a.set_backlog(9);
        tokio::time::advance(Duration::from_secs(6)).await;
        let (_, panic) = a.averages(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_secs(6),
        );
        assert!((panic - 10.0).abs() < 1e-6, "{panic}");
        assert_eq!(a.load().backlog, 9);
        // Drained: only the request in flight is left.
        a.set_backlog(0);
        tokio::time::advance(Duration::from_secs(6)).await;
        let (_, panic) = a.averages(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_secs(6),
        );
        assert!((panic - 1.0).abs() < 1e-6, "{panic}");
        drop(lease);
    }

    async fn futures_lite(a: &Arc<Activator>, n: usize) -> Vec<Lease> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(a.acquire(Duration::from_secs(1)).await.unwrap());
        }
        out
    }
}
