//! PingSource: one event per tick of a cron schedule.
//!
//! ```text
//! Clock::now ──next_tick──▶ target ──tokio sleep (≤ 1 min at a time)──▶ due? ──▶ ping_event ──▶ Sender::deliver
//!     ▲                                                                   │        (a task per tick, at most
//!     └────────────── next target: strictly after max(now, target) ◀──────┘         MAX_IN_FLIGHT at once)
//! ```
//!
//! The next tick is always computed from *now*, so after a pause (a suspended machine, a
//! reload, a wall clock that jumped) the one overdue tick fires once and the ticks missed
//! meanwhile are skipped, never replayed in a burst. The wall clock is re-read at least every
//! [`MAX_SLEEP`] so a clock that jumps is noticed. Deliveries run beside the schedule: a slow
//! sink delays neither the next tick nor the other sources.
//!
//! Knative's PingSource has no `spec.delivery`; its events go out under the default policy
//! (10 retries, exponential backoff from 0.2 s), without a dead-letter sink. Replies from the
//! sink are ignored (Knative's PingSource has no reply path either).

use crate::clock::Clock;
use crate::{Counters, Env};
use sluice_core::topology::{PingSource, TickSchedule};
use sluice_core::{Envelope, Event, SpecVersion};
use sluice_delivery::Request;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The CloudEvents type of PingSource events.
pub const PING_EVENT_TYPE: &str = "dev.knative.sources.ping";
/// The longest single sleep: the wall clock is re-read at least this often.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Deliveries of one PingSource in flight at once; a tick beyond that is skipped (and counted
/// as failed) rather than piling up behind a sink that does not answer.
pub const MAX_IN_FLIGHT: usize = 16;

/// The `source` attribute of a PingSource's events.
pub fn event_source(spec: &PingSource) -> String {
    format!(
        "/apis/v1/namespaces/{}/pingsources/{}",
        spec.key.namespace, spec.key.name
    )
}

/// The event of the tick at `tick`, with the given `id` (a fresh UUID in production).
pub fn ping_event(spec: &PingSource, tick: SystemTime, id: String) -> Event {
    let mut e = Event::new(SpecVersion::V10, id, event_source(spec), PING_EVENT_TYPE);
    if let Some(ct) = &spec.content_type {
        e.set("datacontenttype", ct.as_str());
    }
    e.set(
        "time",
        chrono::DateTime::<chrono::Utc>::from(tick)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    );
    for (name, value) in &spec.extensions {
        e.set(name.as_str(), value.as_str());
    }
    if let Some(data) = &spec.data {
        e.set_data(data.clone(), spec.data_binary);
    }
    e
}

/// The tick to wait for next: the first one strictly after `now`, or after the tick that last
/// fired if the wall clock has not yet passed it (so a tick never fires twice). Missed ticks
/// are skipped. `None` when the schedule never fires again.
pub fn next_tick(
    schedule: &dyn TickSchedule,
    now: SystemTime,
    last_fired: Option<SystemTime>,
) -> Option<SystemTime> {
    let from = match last_fired {
        Some(last) if last > now => last,
        _ => now,
    };
    schedule.next_after(from)
}

/// Runs `schedule` until `cancel`, calling `on_tick` with each tick's time when it is due.
pub(crate) async fn run_schedule(
    schedule: &dyn TickSchedule,
    clock: &dyn Clock,
    cancel: &CancellationToken,
    mut on_tick: impl FnMut(SystemTime),
) {
    let mut target = next_tick(schedule, clock.now(), None);
    loop {
        let Some(tick) = target else {
            // A pattern such as `0 0 30 2 *` never fires; idle until stopped.
            cancel.cancelled().await;
            return;
        };
        let now = clock.now();
        if now >= tick {
            on_tick(tick);
            target = next_tick(schedule, now, Some(tick));
            continue;
        }
        let wait = tick.duration_since(now).unwrap_or_default().min(MAX_SLEEP);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs one PingSource until `cancel`: ticks, events, deliveries.
pub(crate) async fn run(spec: Arc<PingSource>, env: Env, cancel: CancellationToken) {
    let counters = Counters::new(&env.metrics, &spec.key, "PingSource");
    let mut in_flight: JoinSet<()> = JoinSet::new();
    tracing::info!(source = %spec.key, schedule = %spec.schedule_text, timezone = %spec.timezone, sink = %spec.sink, "PingSource started");
    run_schedule(&*spec.schedule, &*env.clock, &cancel, |tick| {
        while in_flight.try_join_next().is_some() {}
        let event = ping_event(&spec, tick, uuid::Uuid::new_v4().to_string());
        counters.produced.inc();
        if in_flight.len() >= MAX_IN_FLIGHT {
            counters.failed.inc();
            tracing::warn!(source = %spec.key, id = event.id(), in_flight = in_flight.len(), "PingSource tick skipped: too many deliveries to the sink are still in flight");
            return;
        }
        let (spec, sender, counters) = (spec.clone(), env.sender.clone(), counters.clone());
        in_flight.spawn(async move {
            let span = crate::emit_span("PingSource", &spec.key, &event, None);
            let envelope = Envelope::new(event);
            let report = sender
                .deliver(Request {
                    url: &spec.sink,
                    envelope: &envelope,
                    policy: &spec.delivery,
                    namespace: Some(&spec.key.namespace),
                })
                .instrument(span)
                .await;
            counters.count(&report);
            crate::log_failure(&spec.key, envelope.event.id(), &report);
        });
    })
    .await;
    // Stopped (removed, changed or shutting down): deliveries of a removed source end too.
    in_flight.abort_all();
    tracing::info!(source = %spec.key, "PingSource stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use sluice_core::delivery::DeliveryPolicy;
    use sluice_core::topology::Key;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn at(s: &str) -> SystemTime {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    fn show(t: SystemTime) -> String {
        chrono::DateTime::<chrono::Utc>::from(t)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }

    fn schedule(s: &str) -> Arc<dyn TickSchedule> {
        Arc::new(sluice_schedule::Schedule::parse(s, None).unwrap())
    }

    fn spec(data: Option<(&str, bool)>, ct: Option<&str>) -> PingSource {
        PingSource {
            key: Key::new("team", "beat"),
            schedule: schedule("* * * * *"),
            schedule_text: "* * * * *".into(),
            timezone: "UTC".into(),
            content_type: ct.map(str::to_string),
            data: data.map(|(d, _)| bytes::Bytes::copy_from_slice(d.as_bytes())),
            data_binary: data.is_some_and(|(_, b)| b),
            extensions: BTreeMap::from([("team".to_string(), "blue".to_string())]),
            sink: "http://127.0.0.1:1/".parse().unwrap(),
            delivery: DeliveryPolicy::default(),
            fingerprint: 0,
        }
    }

    #[test]
    fn the_event_has_exactly_the_ping_attributes() {
        let e = ping_event(
            &spec(Some(("{\"a\":1}", false)), Some("application/json")),
            at("2024-03-01T10:00:00Z"),
            "uuid-1".into(),
        );
        let mut attrs: Vec<_> = e
            .attributes()
            .map(|(n, v)| format!("{n}={}", v.to_string_form()))
            .collect();
        attrs.sort();
        assert_eq!(
            attrs,
            [
                "datacontenttype=application/json",
                "id=uuid-1",
                "source=/apis/v1/namespaces/team/pingsources/beat",
                "team=blue",
                "time=2024-03-01T10:00:00Z",
                "type=dev.knative.sources.ping",
            ]
        );
        assert_eq!(e.spec_version(), SpecVersion::V10);
        assert_eq!(e.data().unwrap().as_ref(), b"{\"a\":1}");
        assert!(!e.data_is_binary());
        e.validate().unwrap();

        // dataBase64 is opaque bytes; no contentType means no datacontenttype; no data at all
        // means no data.
        let e = ping_event(
            &spec(Some(("\u{1}\u{2}", true)), None),
            at("2024-03-01T10:00:00Z"),
            "u".into(),
        );
        assert!(e.data_is_binary() && e.datacontenttype().is_none());
        let e = ping_event(&spec(None, None), at("2024-03-01T10:00:00Z"), "u".into());
        assert!(e.data().is_none());
    }

    #[test]
    fn next_tick_table() {
        let every_minute = schedule("* * * * *");
        // (now, last fired, expected)
        let cases = [
            // First tick: the next minute.
            ("2024-03-01T10:00:30Z", None, "2024-03-01T10:01:00Z"),
            // Exactly on a tick, nothing fired yet: that tick is not "after now".
            ("2024-03-01T10:01:00Z", None, "2024-03-01T10:02:00Z"),
            // Fired 10:01 and woke a little early by the wall clock: not 10:01 again.
            (
                "2024-03-01T10:00:59.999Z",
                Some("2024-03-01T10:01:00Z"),
                "2024-03-01T10:02:00Z",
            ),
            // Fired 10:01 on time.
            (
                "2024-03-01T10:01:00.002Z",
                Some("2024-03-01T10:01:00Z"),
                "2024-03-01T10:02:00Z",
            ),
            // Fired 10:01, then the machine slept until 10:42:10: the 40 missed ticks are
            // skipped.
            (
                "2024-03-01T10:42:10Z",
                Some("2024-03-01T10:01:00Z"),
                "2024-03-01T10:43:00Z",
            ),
        ];
        for (now, last, want) in cases {
            let got = next_tick(&*every_minute, at(now), last.map(at)).unwrap();
            assert_eq!(show(got), want, "now {now}, last {last:?}");
        }
        let never = schedule("0 0 30 2 *");
        assert_eq!(next_tick(&*never, at("2024-03-01T10:00:00Z"), None), None);
    }

    async fn collect_ticks(
        schedule_text: &str,
        start: &str,
        run_for: Duration,
        during: impl FnOnce(Arc<TokioClock>) -> Option<(Duration, Duration)>,
    ) -> Vec<String> {
        let clock = Arc::new(TokioClock::starting_at(at(start)));
        let jump = during(clock.clone());
        let sched = schedule(schedule_text);
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let task = {
            let (clock, ticks, cancel) = (clock.clone(), ticks.clone(), cancel.clone());
            tokio::spawn(async move {
                run_schedule(&*sched, &*clock, &cancel, |t| {
                    ticks.lock().unwrap().push(show(t));
                })
                .await;
            })
        };
        if let Some((after, by)) = jump {
            tokio::time::sleep(after).await;
            clock.jump(by);
            tokio::time::sleep(run_for.saturating_sub(after)).await;
        } else {
            tokio::time::sleep(run_for).await;
        }
        cancel.cancel();
        task.await.unwrap();
        let got = ticks.lock().unwrap().clone();
        got
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_fire_once_each_at_the_scheduled_wall_time() {
        let got = collect_ticks(
            "*/15 * * * *",
            "2024-03-01T10:07:00Z",
            Duration::from_secs(3600),
            |_| None,
        )
        .await;
        assert_eq!(
            got,
            [
                "2024-03-01T10:15:00Z",
                "2024-03-01T10:30:00Z",
                "2024-03-01T10:45:00Z",
                "2024-03-01T11:00:00Z",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn six_field_schedules_tick_every_second() {
        let got = collect_ticks(
            "* * * * * *",
            "2024-03-01T10:00:00.250Z",
            Duration::from_millis(3_500),
            |_| None,
        )
        .await;
        assert_eq!(
            got,
            [
                "2024-03-01T10:00:01Z",
                "2024-03-01T10:00:02Z",
                "2024-03-01T10:00:03Z",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_jump_fires_the_overdue_tick_once_and_skips_the_rest() {
        // At 10:00:30 the machine "sleeps" and the wall clock jumps to 10:10:25.
        let got = collect_ticks(
            "* * * * *",
            "2024-03-01T10:00:00Z",
            Duration::from_secs(150),
            |_| Some((Duration::from_secs(30), Duration::from_secs(595))),
        )
        .await;
        // The loop wakes for 10:01 at 10:10:55: 10:01 is overdue and fires once, late (as in
        // robfig/cron, with its own time); 10:02..10:10 are skipped; then 10:11 and 10:12.
        assert_eq!(
            got,
            [
                "2024-03-01T10:01:00Z",
                "2024-03-01T10:11:00Z",
                "2024-03-01T10:12:00Z",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn long_waits_are_cut_into_short_sleeps_and_stop_promptly() {
        // A daily schedule: the loop re-reads the clock every MAX_SLEEP and still fires at
        // midnight exactly once per day.
        let got = collect_ticks(
            "@daily",
            "2024-03-01T10:00:00Z",
            Duration::from_secs(2 * 86_400),
            |_| None,
        )
        .await;
        assert_eq!(got, ["2024-03-02T00:00:00Z", "2024-03-03T00:00:00Z"]);
    }
}
