//! The reconciler: server-side apply of every child with one field manager, then the status.
//! It never branches on why it was called: the same spec always yields the same objects, and
//! applying unchanged objects writes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::crd::KinesisExporter;
use crate::resources::{self, Defaults};
use crate::status::{self, DEGRADED, Problem, READY};
use crate::tenancy::Tenancy;

/// The one field manager of every object the operator writes.
pub const FIELD_MANAGER: &str = "kinesis-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {}", api_message(source))]
    Apply {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("writing the status: {}", api_message(.0))]
    Status(kube::Error),
    #[error("the resource has no namespace")]
    NoNamespace,
}

/// The API server's own message for an API error (what a human can act on), else the error.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub tenancy: Tenancy,
    pub recorder: Recorder,
    pub metrics: crate::metrics::OperatorMetrics,
    /// Consecutive failures per resource, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        defaults: Defaults,
        tenancy: Tenancy,
        recorder: Recorder,
        metrics: crate::metrics::OperatorMetrics,
    ) -> Arc<Self> {
        Arc::new(Context {
            client,
            defaults,
            tenancy,
            recorder,
            metrics,
            failures: Mutex::default(),
        })
    }
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource + Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: std::any::type_name::<K>()
            .rsplit("::")
            .next()
            .unwrap_or("object"),
        name,
        source,
    })
}

/// Deletes a child the spec no longer asks for, if it exists and is ours.
async fn remove_if_owned<K>(api: &Api<K>, kex: &KinesisExporter) -> Result<(), Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let name = kex.name_any();
    let Ok(Some(existing)) = api.get_opt(&name).await else {
        return Ok(());
    };
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == kex.metadata.uid.as_ref());
    if ours {
        api.delete(&name, &DeleteParams::default())
            .await
            .map_err(|source| Error::Apply {
                kind: "delete",
                name,
                source,
            })?;
    }
    Ok(())
}

/// Applies the Service. Ports are a list keyed by port number: an edited number would be a
/// new entry owned by whoever edited it, and ours would come back beside it under the same
/// name, which the API server refuses. So drifted ports are put back wholesale first.
async fn apply_service(api: &Api<Service>, desired: &Service) -> Result<Service, Error> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let wanted = desired
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    if let Ok(Some(existing)) = api.get_opt(&name).await {
        let ports = existing.spec.and_then(|s| s.ports).unwrap_or_default();
        let key = |p: &k8s_openapi::api::core::v1::ServicePort| {
            (
                p.name.clone(),
                p.port,
                p.target_port.clone(),
                p.protocol.clone(),
            )
        };
        if ports.iter().map(key).ne(wanted.iter().map(key)) {
            tracing::info!(service = %name, "ports drifted; restoring them");
            let patch = serde_json::json!({"spec": {"ports": wanted}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::Apply {
                    kind: "Service",
                    name: name.clone(),
                    source,
                })?;
        }
    }
    apply(api, desired).await
}

async fn apply_children(
    kex: &KinesisExporter,
    ctx: &Context,
    ns: &str,
) -> Result<Deployment, Error> {
    let client = ctx.client.clone();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    match resources::service_account(kex) {
        Some(sa) => {
            apply(&accounts, &sa).await?;
        }
        None => remove_if_owned(&accounts, kex).await?,
    }
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &resources::config_map(kex),
    )
    .await?;
    let deployment = apply(
        &Api::<Deployment>::namespaced(client.clone(), ns),
        &resources::deployment(kex, &ctx.defaults),
    )
    .await?;
    apply_service(
        &Api::<Service>::namespaced(client.clone(), ns),
        &resources::service(kex),
    )
    .await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client, ns);
    match resources::pod_disruption_budget(kex) {
        Some(pdb) => {
            apply(&budgets, &pdb).await?;
        }
        None => remove_if_owned(&budgets, kex).await?,
    }
    Ok(deployment)
}

/// Why an object named `name` is not ours to apply, or None when it is absent or ours.
async fn taken<K>(api: &Api<K>, name: &str, uid: &str) -> Result<Option<String>, Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let existing = api.get_opt(name).await.map_err(|source| Error::Apply {
        kind: "get",
        name: name.to_string(),
        source,
    })?;
    Ok(existing.and_then(|o| {
        resources::foreign_holder(o.meta(), uid).map(|why| {
            let kind = K::kind(&Default::default()).to_string();
            format!("{kind} {name} exists and is not managed by this KinesisExporter ({why})")
        })
    }))
}

/// The children this resource would create whose names are held by objects it does not
/// control. Checked for all of them before anything is applied, so a conflict never leaves
/// pods running beside an object that is not theirs.
async fn taken_names(kex: &KinesisExporter, ctx: &Context, ns: &str) -> Result<Vec<String>, Error> {
    let name = kex.name_any();
    let uid = kex.metadata.uid.clone().unwrap_or_default();
    let client = &ctx.client;
    let mut taken_by = Vec::new();
    if resources::service_account(kex).is_some() {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        taken_by.extend(taken(&api, &name, &uid).await?);
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    taken_by.extend(taken(&api, &name, &uid).await?);
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    taken_by.extend(taken(&api, &name, &uid).await?);
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    taken_by.extend(taken(&api, &name, &uid).await?);
    if resources::pod_disruption_budget(kex).is_some() {
        let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
        taken_by.extend(taken(&api, &name, &uid).await?);
    }
    Ok(taken_by)
}

/// Why this reconcile deployed nothing, beside the status it reports.
enum Stop {
    /// The platform's policy refuses the spec: wait for it to change.
    NotAllowed(Problem),
    /// A child's name is taken: look again later (the other object is not watched).
    NameTaken(Problem),
    /// An API call failed: retried with backoff.
    Failed(Error),
}

impl Stop {
    fn problem(&self) -> Problem {
        match self {
            Stop::NotAllowed(p) | Stop::NameTaken(p) => p.clone(),
            Stop::Failed(e) => Problem::failed(e.to_string()),
        }
    }
}

/// Checks the policy and the children's names, then applies every child.
async fn deploy(kex: &KinesisExporter, ctx: &Context, ns: &str) -> Result<Deployment, Stop> {
    let refusals = ctx.tenancy.check(kex, &ctx.defaults.exporter_image);
    if !refusals.is_empty() {
        let reasons: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        return Err(Stop::NotAllowed(Problem::not_allowed(format!(
            "refused by the platform's tenancy policy, nothing deployed: {}",
            reasons.join("; ")
        ))));
    }
    let taken_by = taken_names(kex, ctx, ns).await.map_err(Stop::Failed)?;
    if !taken_by.is_empty() {
        return Err(Stop::NameTaken(Problem::name_taken(format!(
            "{}; it is left untouched and nothing is deployed: rename this KinesisExporter or \
             remove that object",
            taken_by.join("; ")
        ))));
    }
    apply_children(kex, ctx, ns).await.map_err(Stop::Failed)
}

pub async fn reconcile(kex: Arc<KinesisExporter>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = kex.namespace().ok_or(Error::NoNamespace)?;
    let key = format!("{ns}/{}", kex.name_any());
    let deployed = deploy(&kex, &ctx, &ns).await;
    let (deployment, problem) = match &deployed {
        Ok(d) => (Some(d.clone()), None),
        // The counts still come from the Deployment as it is, so that the scale subresource
        // (and any autoscaler) keeps seeing the real replicas while we are degraded. It is
        // read only when it is ours.
        Err(stop) => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let uid = kex.metadata.uid.clone().unwrap_or_default();
            let existing = api
                .get_opt(&kex.name_any())
                .await
                .ok()
                .flatten()
                .filter(|d| resources::foreign_holder(&d.metadata, &uid).is_none());
            (existing, Some(stop.problem()))
        }
    };
    let new_status = status::compute(
        &kex,
        deployment.as_ref(),
        problem.as_ref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    if kex.status.as_ref() != Some(&new_status) {
        let api: Api<KinesisExporter> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": "kinesis.otlp.dev/v1alpha1",
            "kind": "KinesisExporter",
            "status": new_status,
        });
        api.patch_status(
            &kex.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Status)?;
        publish_transitions(&kex, &new_status, &ctx).await;
    }
    match deployed {
        Ok(_) => {
            ctx.failures.lock().unwrap().remove(&key);
            ctx.metrics.reconciled("ok");
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Err(Stop::NotAllowed(p)) => {
            ctx.failures.lock().unwrap().remove(&key);
            ctx.metrics.reconciled("not_allowed");
            tracing::warn!(resource = %key, reason = p.reason, message = %p.message, "not deploying");
            Ok(Action::await_change())
        }
        Err(Stop::NameTaken(p)) => {
            ctx.metrics.reconciled("name_taken");
            tracing::warn!(resource = %key, reason = p.reason, message = %p.message, "not deploying");
            Ok(Action::requeue(NAME_TAKEN_RETRY))
        }
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// How often a resource whose child name is taken looks again: the object in the way is not
/// ours, so no watch event says when it goes.
const NAME_TAKEN_RETRY: Duration = Duration::from_secs(30);

/// Events on transitions only: Ready gained or lost, Degraded entered.
async fn publish_transitions(
    kex: &KinesisExporter,
    new: &crate::crd::KinesisExporterStatus,
    ctx: &Context,
) {
    let old = kex.status.as_ref();
    let changed =
        |t: &str| status::condition_status(old, t) != status::condition_status(Some(new), t);
    let mut events = Vec::new();
    let ready = status::condition_status(Some(new), READY) == Some("True");
    // A new resource is not ready yet: that is news only once it becomes ready.
    if changed(READY) && (old.is_some() || ready) {
        events.push(Event {
            type_: EventType::Normal,
            reason: if ready { "Ready" } else { "NotReady" }.into(),
            note: new
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| c.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    if changed(DEGRADED) && status::condition_status(Some(new), DEGRADED) == Some("True") {
        let c = new.conditions.iter().find(|c| c.type_ == DEGRADED);
        events.push(Event {
            type_: EventType::Warning,
            reason: c.map(|c| c.reason.clone()).unwrap_or_default(),
            note: c.map(|c| c.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event, &kex.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish an event");
        }
    }
}

pub fn error_policy(kex: Arc<KinesisExporter>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", kex.namespace().unwrap_or_default(), kex.name_any());
    let failures = {
        let mut map = ctx.failures.lock().unwrap();
        let n = map.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let delay = Duration::from_secs((1u64 << failures.min(8)).min(300));
    ctx.metrics.reconciled("error");
    tracing::warn!(resource = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the controller over `api` until the stream ends (shutdown).
pub async fn run(api: Api<KinesisExporter>, owned: OwnedApis, ctx: Arc<Context>) {
    Controller::new(api, watcher::Config::default())
        .owns(owned.deployments, watcher::Config::default())
        .owns(owned.config_maps, watcher::Config::default())
        .owns(owned.services, watcher::Config::default())
        .owns(owned.service_accounts, watcher::Config::default())
        .owns(owned.budgets, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(resource = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

/// The children's APIs, cluster-wide or in one namespace like the resource's.
pub struct OwnedApis {
    pub deployments: Api<Deployment>,
    pub config_maps: Api<ConfigMap>,
    pub services: Api<Service>,
    pub service_accounts: Api<ServiceAccount>,
    pub budgets: Api<PodDisruptionBudget>,
}

impl OwnedApis {
    pub fn new(client: &Client, namespace: Option<&str>) -> Self {
        fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            <K as Resource>::DynamicType: Default,
        {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        OwnedApis {
            deployments: api(client, namespace),
            config_maps: api(client, namespace),
            services: api(client, namespace),
            service_accounts: api(client, namespace),
            budgets: api(client, namespace),
        }
    }
}
