//! The resource's status from what the cluster reports: pure, so every transition is tested.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{KinesisExporter, KinesisExporterStatus};
pub use crate::delivery::DELIVERING;
use crate::delivery::Delivery;
use crate::resources::selector_string;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What stopped a reconcile before everything was applied: the Degraded condition's reason
/// and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    /// An API call failed; retried with backoff.
    pub fn failed(message: impl Into<String>) -> Self {
        Problem {
            reason: "ReconcileFailed",
            message: message.into(),
        }
    }

    /// The platform's tenancy policy refuses the spec; nothing is applied until it changes.
    pub fn not_allowed(message: impl Into<String>) -> Self {
        Problem {
            reason: "NotAllowed",
            message: message.into(),
        }
    }

    /// A child's name is held by an object the operator does not own; it is left untouched.
    pub fn name_taken(message: impl Into<String>) -> Self {
        Problem {
            reason: "NameTaken",
            message: message.into(),
        }
    }

    /// The last attempt to create the Service failed; the operator keeps trying.
    pub fn service_not_created(message: impl Into<String>) -> Self {
        Problem {
            reason: "ServiceNotCreated",
            message: message.into(),
        }
    }
}

/// Container waiting reasons that mean the pod will not start without a change.
const FAILING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why the exporter's pods do not become ready, read from the pods themselves: the Deployment
/// only says that progress stalled, once its deadline (10 minutes) has passed.
pub fn pod_trouble(pods: &[Pod]) -> Option<Problem> {
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let Some(status) = &pod.status else { continue };
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            return Some(Problem {
                reason: "PodsUnschedulable",
                message: format!(
                    "pod {name} cannot be scheduled: {}",
                    c.message.as_deref().unwrap_or("no node fits")
                ),
            });
        }
        for container in status.container_statuses.iter().flatten() {
            let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(w) = waiting
                && let Some(reason) = w.reason.as_deref()
                && FAILING.contains(&reason)
            {
                return Some(Problem {
                    reason: "PodsFailing",
                    message: format!(
                        "pod {name}, container {}: {reason}: {}",
                        container.name,
                        w.message.as_deref().unwrap_or("")
                    ),
                });
            }
        }
    }
    None
}

/// The status for `kex` given its Deployment as it stands (None when there is none), the
/// problem that stopped the reconcile, if any, what else is wrong (its pods, the creation of its
/// Service), if anything, whether its Service is still being created, and
/// what its pods report on their delivery (None: not probed yet by this replica, so the
/// Delivering condition and status.delivery stay as the status has them).
pub fn compute(
    kex: &KinesisExporter,
    deployment: Option<&Deployment>,
    problem: Option<&Problem>,
    pods: Option<&Problem>,
    delivery: Option<&Delivery>,
    service_pending: bool,
    now: Timestamp,
) -> KinesisExporterStatus {
    let desired = kex.spec.replicas();
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let generation_seen = deployment.is_some_and(|d| {
        status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
    });
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    // Pods that run the current configuration and are available. Until the deployment
    // controller has seen the current spec, its counts describe the previous template.
    let ready_current = if generation_seen {
        updated.min(available)
    } else {
        0
    };
    let rolled_out = generation_seen && updated == desired && total == desired;
    // Ready is the pods' (DESIGN.md §4), as a Deployment's Available is. The Service is created
    // beside them, and until it exists the resource is still Progressing: a busy API server
    // creates Services more slowly than Deployments, and Ready should not wait on that.
    let ready = problem.is_none() && rolled_out && ready_current >= desired;

    let stuck = status.conditions.iter().flatten().find(|c| {
        (c.type_ == "Progressing" && c.status == "False")
            || (c.type_ == "ReplicaFailure" && c.status == "True")
    });
    let degraded: Option<(&str, String)> = match (problem.or(pods), stuck) {
        (Some(p), _) => Some((p.reason, p.message.clone())),
        (None, Some(c)) => Some((
            if c.type_ == "ReplicaFailure" {
                "PodsNotCreated"
            } else {
                "RolloutStuck"
            },
            c.message
                .clone()
                .unwrap_or_else(|| c.reason.clone().unwrap_or_default()),
        )),
        _ => None,
    };

    let previous = kex
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let generation = kex.metadata.generation;
    let condition_of = |type_: &str, status: &str, reason: &str, message: String| {
        let status = status.to_string();
        // The transition time moves only when the status does.
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };
    let condition = |type_: &str, is: bool, reason: &str, message: String| {
        condition_of(type_, if is { "True" } else { "False" }, reason, message)
    };
    let conditions = vec![
        if ready {
            condition(
                READY,
                true,
                "PodsAvailable",
                format!("all {desired} pods available with the current configuration"),
            )
        } else {
            condition(
                READY,
                false,
                "PodsNotReady",
                // Counts are in status.ready; a message that changed with each pod would cost a
                // status write per pod.
                format!("waiting for {desired} pods available with the current configuration"),
            )
        },
        if !rolled_out && problem.is_none() {
            condition(
                PROGRESSING,
                true,
                "RollingOut",
                format!("rolling out the current configuration to {desired} pods"),
            )
        } else if service_pending && problem.is_none() {
            condition(
                PROGRESSING,
                true,
                "CreatingService",
                "creating the Service through which clients reach the pods".into(),
            )
        } else {
            condition(PROGRESSING, false, "Idle", "no rollout under way".into())
        },
        match &degraded {
            Some((reason, message)) => condition(DEGRADED, true, reason, message.clone()),
            None => condition(DEGRADED, false, "AsExpected", "no problem seen".into()),
        },
        match (delivery, delivering_condition(kex.status.as_ref())) {
            (Some(d), _) => condition_of(
                DELIVERING,
                d.verdict.status,
                d.verdict.reason,
                d.verdict.message.clone(),
            ),
            (None, Some(shown)) => Condition {
                observed_generation: generation,
                ..shown.clone()
            },
            (None, None) => {
                let unknown = crate::delivery::Verdict::no_report();
                condition_of(DELIVERING, unknown.status, unknown.reason, unknown.message)
            }
        },
    ];
    KinesisExporterStatus {
        observed_generation: generation,
        replicas: total,
        ready_replicas: ready_current,
        ready: Some(format!("{ready_current}/{desired}")),
        selector: Some(selector_string(kex)),
        conditions,
        delivery: match delivery {
            Some(d) => d.status.clone(),
            None => kex.status.as_ref().and_then(|s| s.delivery.clone()),
        },
    }
}

/// The Delivering condition as the status shows it.
pub fn delivering_condition(status: Option<&KinesisExporterStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == DELIVERING)
}

/// A condition's status, for spotting transitions.
pub fn condition_status<'a>(
    status: Option<&'a KinesisExporterStatus>,
    type_: &str,
) -> Option<&'a str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn kex(replicas: i32) -> KinesisExporter {
        let mut k = KinesisExporter::new("a", Default::default());
        k.spec.replicas = Some(replicas);
        k.metadata.generation = Some(4);
        k
    }

    fn deployment(
        generation: i64,
        observed: i64,
        total: i32,
        updated: i32,
        available: i32,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(total),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn get<'a>(s: &'a KinesisExporterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn progressing_until_the_service_exists() {
        let s = compute(
            &kex(2),
            Some(&deployment(3, 3, 2, 2, 2)),
            None,
            None,
            None,
            true,
            Timestamp::UNIX_EPOCH,
        );
        let (ready, progressing) = (get(&s, READY), get(&s, PROGRESSING));
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "PodsAvailable")
        );
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "CreatingService")
        );
        assert_eq!(get(&s, DEGRADED).status, "False");
    }

    #[test]
    fn a_service_that_cannot_be_created_says_why() {
        let quota = Problem::service_not_created("services \"x\" is forbidden: exceeded quota");
        let s = compute(
            &kex(2),
            Some(&deployment(3, 3, 2, 2, 2)),
            None,
            Some(&quota),
            None,
            true,
            Timestamp::UNIX_EPOCH,
        );
        let (progressing, degraded) = (get(&s, PROGRESSING), get(&s, DEGRADED));
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "CreatingService")
        );
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ServiceNotCreated")
        );
        assert!(degraded.message.contains("exceeded quota"));
    }

    #[test]
    fn ready_when_every_pod_runs_the_current_configuration() {
        let s = compute(
            &kex(2),
            Some(&deployment(3, 3, 2, 2, 2)),
            None,
            None,
            None,
            false,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=a,app.kubernetes.io/name=kinesis-exporter")
        );
    }

    #[test]
    fn a_rollout_is_progressing_not_ready() {
        // New generation not yet observed by the deployment controller: its counts are of the
        // old pods, so none counts as ready with the current configuration.
        let s = compute(
            &kex(2),
            Some(&deployment(4, 3, 2, 2, 2)),
            None,
            None,
            None,
            false,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.ready.as_deref(), Some("0/2"));
        assert_eq!(
            (
                get(&s, READY).status.as_str(),
                get(&s, PROGRESSING).status.as_str()
            ),
            ("False", "True")
        );
        // Old pods still around: 3 pods, 1 updated.
        let s = compute(
            &kex(2),
            Some(&deployment(4, 4, 3, 1, 3)),
            None,
            None,
            None,
            false,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            (
                get(&s, READY).status.as_str(),
                get(&s, PROGRESSING).status.as_str()
            ),
            ("False", "True")
        );
        assert_eq!(s.ready_replicas, 1);
    }

    #[test]
    fn errors_and_stuck_rollouts_are_degraded_with_a_reason() {
        let s = compute(
            &kex(1),
            None,
            Some(&Problem::failed("deployments.apps is forbidden")),
            None,
            None,
            false,
            Timestamp::UNIX_EPOCH,
        );
        let d = get(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ReconcileFailed")
        );
        assert!(d.message.contains("forbidden"));
        assert_eq!(get(&s, READY).status, "False");

        let mut stuck = deployment(4, 4, 1, 1, 0);
        stuck.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"a-1\" has timed out progressing.".into()),
            ..Default::default()
        }]);
        let s = compute(
            &kex(1),
            Some(&stuck),
            None,
            None,
            None,
            false,
            Timestamp::UNIX_EPOCH,
        );
        let d = get(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "RolloutStuck")
        );
        assert!(d.message.contains("timed out"));
    }

    #[test]
    fn transition_times_move_only_on_transitions() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(1000).unwrap();
        let mut k = kex(1);
        k.status = Some(compute(
            &k,
            Some(&deployment(1, 1, 1, 1, 1)),
            None,
            None,
            None,
            false,
            t0,
        ));
        let same = compute(
            &k,
            Some(&deployment(1, 1, 1, 1, 1)),
            None,
            None,
            None,
            false,
            t1,
        );
        assert_eq!(get(&same, READY).last_transition_time, Time(t0));
        assert_eq!(
            same,
            *k.status.as_ref().unwrap(),
            "an unchanged world gives an identical status"
        );
        let changed = compute(
            &k,
            Some(&deployment(1, 1, 1, 1, 0)),
            None,
            None,
            None,
            false,
            t1,
        );
        assert_eq!(get(&changed, READY).last_transition_time, Time(t1));
        assert_eq!(condition_status(Some(&changed), READY), Some("False"));
    }

    #[test]
    fn a_replica_that_has_not_probed_keeps_the_delivering_condition() {
        use crate::delivery::Verdict;
        let (t0, t1) = (Timestamp::UNIX_EPOCH, Timestamp::from_second(1000).unwrap());
        let ready = deployment(1, 1, 1, 1, 1);
        let denied = Delivery {
            verdict: Verdict {
                status: "False",
                reason: "AccessDenied",
                message: "PutRecords on stream s failed: AccessDenied: no".into(),
            },
            status: Some(crate::crd::DeliveryStatus {
                pods_reporting: 1,
                ..Default::default()
            }),
        };
        let mut k = kex(1);
        k.status = Some(compute(
            &k,
            Some(&ready),
            None,
            None,
            Some(&denied),
            false,
            t0,
        ));
        assert_eq!(
            get(k.status.as_ref().unwrap(), DELIVERING).reason,
            "AccessDenied"
        );
        // A new leader has no report yet: the status keeps what the last probe found.
        let kept = compute(&k, Some(&ready), None, None, None, false, t1);
        assert_eq!(kept, *k.status.as_ref().unwrap(), "nothing to write");
        // A resource never probed says so.
        let fresh = compute(&kex(1), Some(&ready), None, None, None, false, t0);
        assert_eq!(get(&fresh, DELIVERING).status, "Unknown");
        assert_eq!(get(&fresh, DELIVERING).reason, "NoReport");
        // A new verdict moves the transition time.
        let ok = Delivery {
            verdict: Verdict {
                status: "True",
                reason: "Delivering",
                message: "records reach stream s".into(),
            },
            status: None,
        };
        let now = compute(&k, Some(&ready), None, None, Some(&ok), false, t1);
        assert_eq!(get(&now, DELIVERING).last_transition_time, Time(t1));
        assert!(ok.verdict.is_shown_by(get(&now, DELIVERING)));
        assert!(!denied.verdict.is_shown_by(get(&now, DELIVERING)));
    }

    #[test]
    fn unschedulable_or_failing_pods_say_why_at_once() {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
        };
        let pending = Pod {
            metadata: ObjectMeta {
                name: Some("a-1".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let trouble = pod_trouble(std::slice::from_ref(&pending)).unwrap();
        assert_eq!(trouble.reason, "PodsUnschedulable");
        assert!(
            trouble.message.contains("0/2 nodes are available"),
            "{trouble:?}"
        );
        // Reported as Degraded while the rollout is still under way.
        let s = compute(
            &kex(1),
            Some(&deployment(4, 4, 1, 1, 0)),
            None,
            Some(&trouble),
            None,
            false,
            Timestamp::UNIX_EPOCH,
        );
        let d = get(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "PodsUnschedulable")
        );
        assert_eq!(get(&s, READY).status, "False");

        let crashing = Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "exporter".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("ImagePullBackOff".into()),
                            message: Some("Back-off pulling image".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_trouble(&[crashing]).unwrap().reason, "PodsFailing");
        assert_eq!(pod_trouble(&[Pod::default()]), None);
    }
}
