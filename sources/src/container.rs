//! ContainerSource in embedded mode: the first container of the pod template, run as a local
//! process.
//!
//! ```text
//! command + args ──spawn (env + K_SINK + K_CE_OVERRIDES)──▶ process ──POST──▶ K_SINK (a Broker, …)
//!        ▲                                                      │ exits
//!        └──────────── backoff (doubling, reset after a long run) ◀┘
//! ```
//!
//! Like Knative's receive adapter, the process sends its events itself to `K_SINK` (the
//! resolved sink URL); `K_CE_OVERRIDES` holds `{"extensions": {...}}` when `ceOverrides` is set.
//! It is killed when the source is removed or changed (a reload) or Sluice stops.

use crate::Health;
use sluice_core::topology::ContainerSource;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// First pause before restarting a process that exited; doubles up to [`RESTART_MAX`].
pub const RESTART_MIN: Duration = Duration::from_secs(1);
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// A process that ran at least this long restarts after [`RESTART_MIN`] again.
pub const STABLE_RUN: Duration = Duration::from_secs(60);

/// The pause before the next start, given the last one and how long the process ran.
pub fn next_backoff(previous: Duration, ran: Duration) -> Duration {
    if ran >= STABLE_RUN {
        RESTART_MIN
    } else {
        (previous * 2).clamp(RESTART_MIN, RESTART_MAX)
    }
}

/// `K_CE_OVERRIDES`: the overrides as Knative's adapters read them, or `None` without any.
pub fn ce_overrides_env(spec: &ContainerSource) -> Option<String> {
    if spec.extensions.is_empty() {
        return None;
    }
    let overrides = serde_json::json!({ "extensions": spec.extensions });
    Some(overrides.to_string())
}

fn set(health: &Mutex<Health>, h: Health) {
    *health.lock().unwrap_or_else(|e| e.into_inner()) = h;
}

/// Runs the process until `cancel`, restarting it with backoff when it exits.
pub(crate) async fn run(
    spec: Arc<ContainerSource>,
    cancel: CancellationToken,
    health: Arc<Mutex<Health>>,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let mut cmd = tokio::process::Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("K_SINK", spec.sink.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(o) = ce_overrides_env(&spec) {
            cmd.env("K_CE_OVERRIDES", o);
        }
        // The process emits its events itself; with tracing on, an OpenTelemetry SDK in it
        // reports as the source (it inherits `OTEL_EXPORTER_OTLP_ENDPOINT` from Sluice's
        // environment) unless its env names a service.
        if sluice_core::trace::enabled() && !spec.env.iter().any(|(k, _)| k == "OTEL_SERVICE_NAME")
        {
            cmd.env("OTEL_SERVICE_NAME", format!("containersource/{}", spec.key));
        }
        if let Some(dir) = &spec.working_dir {
            cmd.current_dir(dir);
        }
        let started = tokio::time::Instant::now();
        let outcome = match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(source = %spec.key, program = %spec.argv[0], pid = ?child.id(), sink = %spec.sink, "ContainerSource process started");
                set(&health, Health::Ready);
                tokio::select! {
                    _ = cancel.cancelled() => {
                        let _ = child.kill().await;
                        tracing::info!(source = %spec.key, "ContainerSource process stopped");
                        return;
                    }
                    status = child.wait() => match status {
                        Ok(s) => format!("the process exited ({s})"),
                        Err(e) => format!("cannot wait for the process: {e}"),
                    },
                }
            }
            Err(e) => format!("cannot start `{}`: {e}", spec.argv[0]),
        };
        backoff = next_backoff(backoff, started.elapsed());
        tracing::warn!(source = %spec.key, reason = %outcome, restart_in = ?backoff, "ContainerSource process is not running");
        set(
            &health,
            Health::NotReady(format!("{outcome}; restarting in {backoff:?}")),
        );
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::topology::Key;
    use std::collections::BTreeMap;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() {
        let table = [
            (Duration::ZERO, Duration::ZERO, RESTART_MIN),
            (
                RESTART_MIN,
                Duration::from_millis(10),
                Duration::from_secs(2),
            ),
            (Duration::from_secs(16), Duration::from_secs(1), RESTART_MAX),
            (RESTART_MAX, Duration::from_secs(1), RESTART_MAX),
            (RESTART_MAX, STABLE_RUN, RESTART_MIN),
        ];
        for (previous, ran, want) in table {
            assert_eq!(next_backoff(previous, ran), want, "{previous:?} {ran:?}");
        }
    }

    #[test]
    fn ce_overrides_are_given_as_knative_json() {
        let mut spec = ContainerSource {
            key: Key::new("ns", "c"),
            argv: vec!["true".into()],
            env: vec![],
            working_dir: None,
            extensions: BTreeMap::new(),
            sink: "http://127.0.0.1:1/".parse().unwrap(),
            fingerprint: 0,
        };
        assert_eq!(ce_overrides_env(&spec), None);
        spec.extensions = BTreeMap::from([
            ("team".to_string(), "blue".to_string()),
            ("q".to_string(), "a\"b".to_string()),
        ]);
        assert_eq!(
            ce_overrides_env(&spec).as_deref(),
            Some(r#"{"extensions":{"q":"a\"b","team":"blue"}}"#)
        );
    }
}
