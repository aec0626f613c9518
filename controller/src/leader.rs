//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller
//! replicas exactly one writes status at a time.
//!
//! The rules are client-go's (`leaderelection`): the holder renews the Lease every
//! [`LeaseConfig::renew_every`]; another replica takes it over only once
//! `renewTime + leaseDurationSeconds` has passed; every write carries the `resourceVersion` it
//! read, so when two replicas race the API server lets one win (409 for the other). A leader
//! that cannot renew steps down before its lease could be taken over, so two leaders never
//! write at once. [`decide`] is the pure rule; [`elect`] is the loop around it.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name + a random suffix).
    pub identity: String,
    /// How long a lease holds without renewal (client-go default 15 s).
    pub duration: Duration,
    /// How often the leader renews, and followers look (client-go retries every 2 s).
    pub renew_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: "sluice-controller".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: write a fresh `renewTime`.
    Renew,
    /// Another holder's lease expired (or nobody holds it): take it over.
    TakeOver,
    /// Another replica holds a live lease.
    Follow,
}

pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let expires = spec
        .renew_time
        .as_ref()
        .map(|t| t.0 + SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into()));
    match expires {
        Some(e) if e > now => Decision::Follow,
        _ => Decision::TakeOver,
    }
}

fn spec_for(cfg: &LeaseConfig, now: Timestamp, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(cfg.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

/// Runs the election until `stop`; the receiver says whether this replica leads. On stop a
/// leader gives the Lease up (empty holder) so a successor need not wait for it to expire.
pub fn elect(client: Client, cfg: LeaseConfig, stop: CancellationToken) -> watch::Receiver<bool> {
    elect_until_released(client, cfg, stop).0
}

/// [`elect`], with the election task: awaiting it after `stop` waits until a leader has given
/// the Lease up, so a process that exits next hands over without the successor waiting for
/// the Lease to expire.
pub fn elect_until_released(
    client: Client,
    cfg: LeaseConfig,
    stop: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        // The last time we know our lease was written; leadership ends before it can expire.
        let mut renewed_at: Option<tokio::time::Instant> = None;
        let step_down_after = cfg.duration.mul_f32(0.66);
        loop {
            let outcome = round(&api, &cfg).await;
            match outcome {
                Ok(true) => renewed_at = Some(tokio::time::Instant::now()),
                Ok(false) => renewed_at = None,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %cfg.name, "cannot read or write the leader Lease")
                }
            }
            let leading = renewed_at.is_some_and(|t| t.elapsed() < step_down_after);
            if *tx.borrow() != leading {
                tracing::info!(identity = %cfg.identity, leading, "leadership changed");
                tx.send_replace(leading);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(cfg.renew_every) => {}
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            release(&api, &cfg).await;
        }
    });
    (rx, task)
}

/// One look at the Lease; Ok(true) when we hold it after this round.
async fn round(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::now());
    let current = api.get_opt(&cfg.name).await?;
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        now,
    );
    let pp = PostParams::default();
    match decision {
        Decision::Follow => Ok(false),
        Decision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec_for(cfg, now, None)),
            };
            match api.create(&pp, &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Decision::Renew | Decision::TakeOver => {
            let mut lease = current.expect("a Lease was read");
            lease.spec = Some(spec_for(cfg, now, lease.spec.as_ref()));
            // `replace` sends the resourceVersion we read: a concurrent writer makes it 409.
            match api.replace(&cfg.name, &pp, &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(cfg.identity.as_str());
        if ours {
            if let Some(s) = lease.spec.as_mut() {
                s.holder_identity = None;
            }
            let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..Default::default()
        }
    }

    #[test]
    fn the_election_rule() {
        let cases = [
            (None, Decision::Create),
            (Some(held("me", 0)), Decision::Renew),
            (Some(held("other", 0)), Decision::Follow), // renewed 10 s ago, 15 s lease
            (Some(held("other", -20)), Decision::TakeOver), // expired 5 s ago
            (Some(held("", 0)), Decision::TakeOver),    // released
            (
                Some(LeaseSpec {
                    holder_identity: Some("other".into()),
                    ..Default::default()
                }),
                Decision::TakeOver, // never renewed
            ),
        ];
        for (lease, want) in cases {
            assert_eq!(decide(lease.as_ref(), "me", at(10)), want, "{lease:?}");
        }
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let cfg = LeaseConfig::new("ns", "me");
        let renewed = spec_for(&cfg, at(1), Some(&held("me", 0)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = spec_for(&cfg, at(30), Some(&held("other", 0)));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    }
}
