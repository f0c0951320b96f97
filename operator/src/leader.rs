//! Leader election on a coordination.k8s.io Lease, so that two operator replicas can run and
//! only one reconciles. A leader that cannot renew in time exits; its restart rejoins as a
//! candidate. This is the client-go algorithm in its simplest form.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

pub const LEASE_SECONDS: i32 = 15;
const RETRY: Duration = Duration::from_secs(2);

/// Whether `lease` may be taken by `identity` at `now`: free, expired, or already ours.
pub fn can_take(lease: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = lease.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = lease.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64;
    match &lease.renew_time {
        Some(MicroTime(renewed)) => *renewed + SignedDuration::from_secs(duration) < now,
        None => true,
    }
}

/// Tries once to take or renew the lease; true when we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, name: &str, identity: &str) -> kube::Result<bool> {
    let now = Timestamp::now();
    let mine = |previous: Option<&LeaseSpec>| {
        let keep_acquire = previous
            .filter(|p| p.holder_identity.as_deref() == Some(identity))
            .and_then(|p| p.acquire_time.clone());
        LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: keep_acquire.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: previous.and_then(|p| p.lease_transitions),
            ..LeaseSpec::default()
        }
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(mine(None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !can_take(&spec, identity, now) {
                return Ok(false);
            }
            lease.spec = Some(mine(Some(&spec)));
            // The resourceVersion makes this a compare-and-swap: a concurrent taker loses.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this process leads, then keeps renewing in the background; if a renewal
/// cannot be made within the lease duration, the process exits so that another replica leads.
pub async fn lead(client: Client, namespace: &str, name: &str, identity: &str) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    loop {
        match try_acquire(&api, name, identity).await {
            Ok(true) => break,
            Ok(false) => tracing::debug!(lease = name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!(lease = name, identity, "leading");
    let (name, identity) = (name.to_string(), identity.to_string());
    tokio::spawn(async move {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(LEASE_SECONDS as u64 / 3)).await;
            match try_acquire(&api, &name, &identity).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lost the leader lease to another replica; exiting");
                    std::process::exit(1);
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
            }
            if last_renewal.elapsed() > Duration::from_secs(LEASE_SECONDS as u64) {
                tracing::error!("could not renew the leader lease in time; exiting");
                std::process::exit(1);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::from_second(1000 - renewed_secs_ago).unwrap(),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_is_taken_when_free_expired_or_ours() {
        let now = Timestamp::from_second(1000).unwrap();
        assert!(can_take(&LeaseSpec::default(), "me", now));
        assert!(can_take(&lease("me", 5), "me", now));
        assert!(!can_take(&lease("other", 5), "me", now));
        assert!(!can_take(&lease("other", 15), "me", now));
        assert!(can_take(&lease("other", 16), "me", now));
    }
}
