//! Leader election on a coordination.k8s.io Lease, with client-go's semantics, so that several
//! operator replicas run and exactly one writes:
//!
//! - another holder's lease expires `leaseDurationSeconds` after this process last *saw the
//!   record change*, timed by the local monotonic clock; the holder's renewTime is never
//!   compared with the local wall clock (clocks of two machines disagree);
//! - the leader renews every retry period and stops leading when it has not renewed within
//!   the renew deadline, shorter than the lease, so it stops before anyone may take over;
//!   every write of the operator checks [`Leadership::may_write`] first, so a leader that was
//!   paused (SIGSTOP, a frozen VM) and wakes up writes nothing, then exits;
//! - every API call has a timeout; a change of holder increments `leaseTransitions`;
//! - on shutdown the leader releases the lease, so a rollout of the operator hands over at
//!   once instead of after a lease duration.
//!
//! [`decide`] is the pure state machine; [`Elector`] does the I/O.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

/// client-go's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a lease holds without renewal (what this process writes as
    /// leaseDurationSeconds).
    pub lease: Duration,
    /// The leader stops leading when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// Between two attempts to acquire or renew; also each API call's timeout.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// The lease record as last read, and when this process first saw it as it is.
#[derive(Debug, Clone)]
pub struct Observed {
    pub spec: LeaseSpec,
    pub resource_version: Option<String>,
    pub since: Instant,
}

impl Observed {
    /// The record read at `now`: `since` moves only when the record changed.
    pub fn update(previous: Option<&Observed>, lease: &Lease, now: Instant) -> Observed {
        let spec = lease.spec.clone().unwrap_or_default();
        let since = match previous {
            Some(p) if p.spec == spec => p.since,
            _ => now,
        };
        Observed {
            spec,
            resource_version: lease.metadata.resource_version.clone(),
            since,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it, holding it.
    Create,
    /// Free, released or expired: take it (a change of holder).
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Another holder's lease is still valid.
    Wait,
}

/// What `identity` should do about the lease as observed at `now`.
pub fn decide(observed: Option<&Observed>, identity: &str, now: Instant) -> Decision {
    let Some(observed) = observed else {
        return Decision::Create;
    };
    let holder = observed.spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = observed.spec.lease_duration_seconds.unwrap_or(15).max(1) as u64;
    if now >= observed.since + Duration::from_secs(duration) {
        Decision::Acquire
    } else {
        Decision::Wait
    }
}

/// The record `identity` writes for `decision`, given the one it read.
pub fn record(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    identity: &str,
    timing: &Timing,
    now: Timestamp,
) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let holder_changes = matches!(decision, Decision::Acquire)
        && previous
            .and_then(|p| p.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty() && h != identity);
    let acquire_time = match decision {
        Decision::Renew => previous.and_then(|p| p.acquire_time.clone()),
        _ => None,
    };
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(timing.lease.as_secs() as i32),
        acquire_time: acquire_time.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions + i32::from(holder_changes)),
        ..LeaseSpec::default()
    }
}

/// Whether this process may write: always without leader election; with it, only while the
/// last successful renewal is younger than the renew deadline.
#[derive(Clone)]
pub struct Leadership {
    renewed: Option<Arc<Mutex<Option<Instant>>>>,
    renew_deadline: Duration,
}

impl Leadership {
    /// A single replica: always leads.
    pub fn always() -> Self {
        Leadership {
            renewed: None,
            renew_deadline: Duration::MAX,
        }
    }

    fn elected(renew_deadline: Duration) -> Self {
        Leadership {
            renewed: Some(Arc::default()),
            renew_deadline,
        }
    }

    fn renewed_at(&self, at: Instant) {
        if let Some(renewed) = &self.renewed {
            *renewed.lock().unwrap() = Some(at);
        }
    }

    fn stop(&self) {
        if let Some(renewed) = &self.renewed {
            *renewed.lock().unwrap() = None;
        }
    }

    pub fn may_write(&self) -> bool {
        match &self.renewed {
            None => true,
            Some(renewed) => renewed
                .lock()
                .unwrap()
                .is_some_and(|at| at.elapsed() < self.renew_deadline),
        }
    }
}

/// One candidate for the lease `namespace/name`.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observed: Option<Observed>,
    pub leadership: Leadership,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
            leadership: Leadership::elected(timing.renew_deadline),
        }
    }

    /// One attempt: read the lease, then create, take, renew or wait. True when this process
    /// holds it afterwards. `started` is when the attempt began: a renewal counts from then.
    async fn attempt(&mut self) -> Result<bool, String> {
        let started = Instant::now();
        let timeout = self.timing.retry;
        let lease = tokio::time::timeout(timeout, self.api.get_opt(&self.name))
            .await
            .map_err(|_| "reading the lease timed out".to_string())?
            .map_err(|e| format!("reading the lease: {e}"))?;
        self.observed = lease
            .as_ref()
            .map(|l| Observed::update(self.observed.as_ref(), l, Instant::now()));
        let decision = decide(self.observed.as_ref(), &self.identity, Instant::now());
        if decision == Decision::Wait {
            return Ok(false);
        }
        let previous = self.observed.as_ref().map(|o| &o.spec);
        let spec = record(
            previous,
            &decision,
            &self.identity,
            &self.timing,
            Timestamp::now(),
        );
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                // A compare-and-swap: a concurrent writer makes this fail with 409.
                resource_version: self
                    .observed
                    .as_ref()
                    .and_then(|o| o.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let write = async {
            if decision == Decision::Create {
                self.api.create(&PostParams::default(), &lease).await
            } else {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match tokio::time::timeout(timeout, write).await {
            Err(_) => Err("writing the lease timed out".into()),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Ok(Err(e)) => Err(format!("writing the lease: {e}")),
            Ok(Ok(written)) => {
                if decision != Decision::Renew {
                    tracing::info!(lease = %self.name, identity = %self.identity,
                        transitions = ?written.spec.as_ref().and_then(|s| s.lease_transitions),
                        "acquired the leader lease");
                }
                self.observed = Some(Observed::update(None, &written, Instant::now()));
                self.leadership.renewed_at(started);
                Ok(true)
            }
        }
    }

    /// Waits until this process leads.
    pub async fn acquire(&mut self) {
        loop {
            match self.attempt().await {
                Ok(true) => return,
                Ok(false) => tracing::debug!(lease = %self.name, "another replica leads; waiting"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "cannot take the leader lease")
                }
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews every retry period until a renewal fails for longer than the renew deadline or
    /// the lease is lost; then leadership stops (writes are refused) and this returns.
    pub async fn keep(&mut self) {
        loop {
            tokio::time::sleep(self.timing.retry).await;
            if !self.leadership.may_write() {
                break;
            }
            match self.attempt().await {
                Ok(true) => continue,
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the leader lease");
                    break;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "cannot renew the leader lease")
                }
            }
            if !self.leadership.may_write() {
                break;
            }
        }
        self.leadership.stop();
        tracing::error!(lease = %self.name, "stopped leading: nothing more is written");
    }

    /// Gives the lease up (on shutdown), so that another replica takes over at once.
    pub async fn release(&mut self) {
        if !self.leadership.may_write() {
            return;
        }
        self.leadership.stop();
        let Some(observed) = &self.observed else {
            return;
        };
        let spec = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: None,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: observed.spec.lease_transitions,
            ..LeaseSpec::default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: observed.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let params = PostParams::default();
        let write = self.api.replace(&self.name, &params, &lease);
        match tokio::time::timeout(self.timing.retry, write).await {
            Ok(Ok(_)) => tracing::info!(lease = %self.name, "released the leader lease"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "cannot release the leader lease")
            }
            Err(_) => tracing::warn!(lease = %self.name, "releasing the leader lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renew_second: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(renew_second.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renew_second).unwrap())),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn no_lease_is_created_a_free_or_released_one_is_taken_ours_is_renewed() {
        let now = Instant::now();
        assert_eq!(decide(None, "me", now), Decision::Create);
        let free = Observed::update(None, &lease(None, 1), now);
        assert_eq!(decide(Some(&free), "me", now), Decision::Acquire);
        let mine = Observed::update(None, &lease(Some("me"), 1), now);
        assert_eq!(decide(Some(&mine), "me", now), Decision::Renew);
    }

    /// Expiry is timed from when the record was last seen to change, by the local monotonic
    /// clock: a renewTime far in the past (a skewed clock) means nothing by itself.
    #[test]
    fn another_holders_lease_expires_a_lease_duration_after_it_last_changed() {
        let t0 = Instant::now();
        let first = Observed::update(None, &lease(Some("other"), 1), t0);
        assert_eq!(decide(Some(&first), "me", t0), Decision::Wait);
        // Unchanged 14 s later: still valid. Renewed at 14 s: the clock starts again.
        let t14 = t0 + Duration::from_secs(14);
        let same = Observed::update(Some(&first), &lease(Some("other"), 1), t14);
        assert_eq!(same.since, t0);
        assert_eq!(decide(Some(&same), "me", t14), Decision::Wait);
        let renewed = Observed::update(Some(&same), &lease(Some("other"), 2), t14);
        let t28 = t0 + Duration::from_secs(28);
        assert_eq!(decide(Some(&renewed), "me", t28), Decision::Wait);
        // Unchanged for the lease duration: expired.
        let t29 = t0 + Duration::from_secs(29);
        assert_eq!(decide(Some(&renewed), "me", t29), Decision::Acquire);
    }

    #[test]
    fn a_change_of_holder_counts_a_transition_and_a_renewal_keeps_the_acquire_time() {
        let timing = Timing::default();
        let now = Timestamp::from_second(100).unwrap();
        let other = lease(Some("other"), 1).spec.unwrap();
        let taken = record(Some(&other), &Decision::Acquire, "me", &timing, now);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let later = Timestamp::from_second(102).unwrap();
        let renewed = record(Some(&taken), &Decision::Renew, "me", &timing, later);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
        // Taking a released lease is no change of holder.
        let released = lease(None, 1).spec.unwrap();
        let after_release = record(Some(&released), &Decision::Acquire, "me", &timing, now);
        assert_eq!(after_release.lease_transitions, Some(3));
    }

    #[test]
    fn the_renew_deadline_is_shorter_than_the_lease() {
        let t = Timing::default();
        assert!(t.renew_deadline < t.lease && t.retry < t.renew_deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_has_not_renewed_within_the_deadline_may_not_write() {
        assert!(Leadership::always().may_write());
        let leadership = Leadership::elected(Duration::from_secs(10));
        assert!(!leadership.may_write(), "not before the first renewal");
        leadership.renewed_at(Instant::now());
        assert!(leadership.may_write());
        // A pause longer than the deadline (SIGSTOP): on waking, no write.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!leadership.may_write());
        leadership.renewed_at(Instant::now());
        leadership.stop();
        assert!(!leadership.may_write());
    }
}
