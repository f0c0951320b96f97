//! The reconciler: server-side apply of every child with one field manager, then the status.
//! It never branches on why it was called: the same spec always yields the same objects, and
//! applying unchanged objects writes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::children::{self, Deployed};
use crate::crd::KinesisExporter;
use crate::resources::{self, Defaults};
use crate::status::{self, DEGRADED, Problem, READY};
use crate::tenancy::Tenancy;

pub use crate::resources::FIELD_MANAGER;

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
    /// A create found the name taken, and the object was gone when read: the retry creates it.
    #[error("{0} was deleted while being created")]
    Vanished(String),
    #[error("the resource has no namespace")]
    NoNamespace,
    #[error("not the leader (the leader lease was not renewed in time): nothing is written")]
    NotLeader,
}

impl Error {
    /// The kind of failure, for the failures metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Apply { source, .. } | Error::Status(source) => match source {
                kube::Error::Api(status) if status.code == 403 => "forbidden",
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(status) if status.code == 422 => "invalid",
                kube::Error::Api(status) if status.code == 429 => "throttled",
                kube::Error::Api(status) if status.code >= 500 => "server_error",
                kube::Error::Api(_) => "api_error",
                _ => "connection",
            },
            Error::NotLeader => "not_leader",
            Error::Vanished(_) => "conflict",
            Error::NoNamespace => "no_namespace",
        }
    }
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
    /// What was last applied to each child, so unchanged children are not written again.
    pub applied: crate::children::Applied,
    /// The children being created in the background (new Services).
    pub creating: crate::children::Creating,
    pub client: Client,
    pub defaults: Defaults,
    pub tenancy: Tenancy,
    /// Whether this replica may write (leader election).
    pub leadership: crate::leader::Leadership,
    pub recorder: Recorder,
    pub metrics: crate::metrics::OperatorMetrics,
    /// The children's watch caches and the pods' delivery reports.
    pub caches: children::Caches,
    /// Consecutive failures per resource, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Refuses when this replica is not (or no longer) the leader: called before every write.
    pub fn may_write(&self) -> Result<(), Error> {
        if self.leadership.may_write() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    pub fn new(
        client: Client,
        defaults: Defaults,
        tenancy: Tenancy,
        leadership: crate::leader::Leadership,
        recorder: Recorder,
        metrics: crate::metrics::OperatorMetrics,
        caches: children::Caches,
    ) -> Arc<Self> {
        Arc::new(Context {
            applied: Default::default(),
            creating: Default::default(),
            client,
            defaults,
            tenancy,
            leadership,
            recorder,
            metrics,
            caches,
            failures: Mutex::default(),
        })
    }
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

/// Checks the policy and the children's names, then applies every child. Beside the outcome,
/// the Deployment as it stands when nothing could be applied (it is read only when ours).
async fn deploy(
    kex: &KinesisExporter,
    ctx: &Arc<Context>,
    ns: &str,
) -> (Result<Deployed, Stop>, Option<Deployment>) {
    let existing = children::read(kex, ctx, ns);
    let uid = kex.metadata.uid.clone().unwrap_or_default();
    let ours = existing
        .deployment
        .clone()
        .filter(|d| resources::foreign_holder(&d.metadata, &uid).is_none());
    let refusals = ctx.tenancy.check(kex, &ctx.defaults.exporter_image);
    if !refusals.is_empty() {
        let reasons: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        let problem = Problem::not_allowed(format!(
            "refused by the platform's tenancy policy, nothing deployed: {}",
            reasons.join("; ")
        ));
        return (Err(Stop::NotAllowed(problem)), ours);
    }
    let taken_by = children::taken_names(kex, &existing);
    if !taken_by.is_empty() {
        return (Err(name_taken(&taken_by)), ours);
    }
    match children::apply(kex, ctx, ns, existing).await {
        Ok(children::Outcome::Deployed(deployed)) => (Ok(*deployed), None),
        Ok(children::Outcome::Taken(taken_by)) => (Err(name_taken(&taken_by)), ours),
        Err(e) => (Err(Stop::Failed(e)), ours),
    }
}

fn name_taken(taken_by: &[String]) -> Stop {
    Stop::NameTaken(Problem::name_taken(format!(
        "{}; it is left untouched and nothing is deployed: rename this KinesisExporter or \
         remove that object",
        taken_by.join("; ")
    )))
}

pub async fn reconcile(kex: Arc<KinesisExporter>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_once(kex, &ctx).await;
    ctx.metrics.observe_duration(started.elapsed());
    result
}

async fn reconcile_once(kex: Arc<KinesisExporter>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let ns = kex.namespace().ok_or(Error::NoNamespace)?;
    let key = format!("{ns}/{}", kex.name_any());
    let (deployed, standing) = deploy(&kex, ctx, &ns).await;
    // The cached Deployment predates the operator's own last apply, so its status describes
    // the previous template. The status waits for that apply's watch event, which brings the
    // resource back (and, were it lost, the recheck below).
    if matches!(&deployed, Ok(d) if d.behind) {
        ctx.failures.lock().unwrap().remove(&key);
        ctx.metrics.reconciled("ok");
        return Ok(Action::requeue(WAITING_FOR_PODS_RECHECK));
    }
    let service_pending = matches!(&deployed, Ok(d) if d.service_pending);
    let service_trouble = deployed
        .as_ref()
        .ok()
        .and_then(|d| d.service_failure.clone())
        .map(Problem::service_not_created);
    let (deployment, problem) = match &deployed {
        Ok(d) => (Some(d.deployment.clone()), None),
        // The counts still come from the Deployment as it stands, so that the scale
        // subresource (and any autoscaler) keeps seeing the real replicas while we are degraded.
        Err(stop) => (standing, Some(stop.problem())),
    };
    // Pods that do not become available say why (unschedulable, image or crash loops) long
    // before the Deployment's progress deadline does.
    let waiting_for_pods =
        problem.is_none() && deployment.as_ref().is_some_and(|d| not_available(d, &kex));
    // Pods get some seconds to start before they are looked at (a list per resource).
    let pods = if waiting_for_pods && not_ready_for(&kex) >= POD_GRACE {
        pod_trouble(&kex, ctx, &ns).await
    } else {
        None
    };
    let new_status = status::compute(
        &kex,
        deployment.as_ref(),
        problem.as_ref(),
        pods.as_ref().or(service_trouble.as_ref()),
        ctx.caches.delivery.get(&kex).as_ref(),
        service_pending,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if kex.status.as_ref() != Some(&new_status) {
        ctx.may_write()?;
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
        publish_transitions(&kex, &new_status, ctx).await;
    }
    match deployed {
        Ok(Deployed { unseen, .. }) => {
            ctx.failures.lock().unwrap().remove(&key);
            ctx.metrics.reconciled("ok");
            // While pods are coming up, look again soon: pod changes are not watched. A child
            // not seen yet comes back by its watch event, or here if it never does (a failed
            // background create, a delete just after the create).
            Ok(Action::requeue(if waiting_for_pods || unseen {
                WAITING_FOR_PODS_RECHECK
            } else {
                RESYNC
            }))
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

/// The periodic resync of a resource at rest (reads only; nothing is written unless something
/// changed).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a resource whose pods are not all available is looked at again.
const WAITING_FOR_PODS_RECHECK: Duration = Duration::from_secs(10);

/// How long the exporter's pods may take to start before the operator looks at them.
const POD_GRACE: Duration = Duration::from_secs(10);

/// For how long the resource's status has said it is not Ready (zero when Ready or unknown).
fn not_ready_for(kex: &KinesisExporter) -> Duration {
    let since = kex
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .filter(|c| c.status == "False")
        .map(|c| c.last_transition_time.0);
    since
        .and_then(|t| {
            Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(t)).ok()
        })
        .unwrap_or_default()
}

/// Whether the Deployment has fewer available pods than the resource asks for.
fn not_available(deployment: &Deployment, kex: &KinesisExporter) -> bool {
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    available < kex.spec.replicas()
}

/// What is wrong with the exporter's pods, if anything (a failed read is no news).
async fn pod_trouble(kex: &KinesisExporter, ctx: &Context, ns: &str) -> Option<Problem> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let params = kube::api::ListParams::default().labels(&resources::selector_string(kex));
    match api.list(&params).await {
        Ok(list) => status::pod_trouble(&list.items),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the exporter's pods");
            None
        }
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
    // Data stopped reaching the stream, or reaches it again.
    let delivering = new
        .conditions
        .iter()
        .find(|c| c.type_ == status::DELIVERING);
    if changed(status::DELIVERING)
        && let Some(c) = delivering
    {
        let was_false = status::condition_status(old, status::DELIVERING) == Some("False");
        if c.status == "False" || (c.status == "True" && was_false) {
            events.push(Event {
                type_: if c.status == "False" {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(c.message.clone()),
                action: "Probe".into(),
                secondary: None,
            });
        }
    }
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event, &kex.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish an event");
        }
    }
}

/// Counts one more for `key`; returns the new count.
fn count_one(counts: &Mutex<HashMap<String, u32>>, key: &str) -> u32 {
    let mut map = counts.lock().unwrap();
    let n = map.entry(key.to_string()).or_insert(0);
    *n += 1;
    *n
}

pub fn error_policy(kex: Arc<KinesisExporter>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", kex.namespace().unwrap_or_default(), kex.name_any());
    let failures = count_one(&ctx.failures, &key);
    let delay = Duration::from_secs((1u64 << failures.min(8)).min(300));
    ctx.metrics.reconciled("error");
    ctx.metrics.failed(error.kind());
    tracing::warn!(resource = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The label every child carries. The watches of the children select on it, so the operator
/// caches and hears about its own objects only, not every Deployment, ConfigMap, Service,
/// ServiceAccount and PodDisruptionBudget in the cluster.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=kinesis-operator";

/// How long a resource the watch announced but the cache does not hold yet waits before it is
/// looked up again, and how many times: during a re-list (after the API server restarts, say)
/// the cache is swapped in only once the list is complete.
const NOT_IN_CACHE_RETRY: Duration = Duration::from_secs(1);
const NOT_IN_CACHE_ATTEMPTS: u32 = 120;

/// The controller's settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    /// Reconciles running at once, across all resources.
    pub concurrency: u16,
    /// How the exporter pods' delivery is read.
    pub probe: crate::probe::ProbeSettings,
}

/// Runs the controller over `api` until the stream ends (shutdown). `make_context` gets the
/// children's caches this controller fills. `readiness` counts it as syncing until its caches
/// are complete; reconciling starts only then, so a restart reads from the caches rather
/// than asking the API server for every child.
pub async fn run(
    api: Api<KinesisExporter>,
    owned: OwnedApis,
    make_context: impl FnOnce(children::Caches) -> Arc<Context>,
    settings: RunSettings,
    readiness: crate::metrics::Readiness,
) {
    use kube::runtime::WatchStreamExt;
    use kube::runtime::reflector::{self, ObjectRef};

    let (deployments, deployments_writer) = reflector::store();
    let (config_maps, config_maps_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (service_accounts, service_accounts_writer) = reflector::store();
    let (budgets, budgets_writer) = reflector::store();
    let caches = children::Caches {
        deployments,
        config_maps,
        services,
        service_accounts,
        budgets,
        delivery: Arc::default(),
    };
    let ctx = make_context(caches.clone());

    // The resources' watch starts once the children's caches are complete.
    let children_synced = {
        let caches = caches.clone();
        async move {
            let _ = futures::future::join5(
                caches.deployments.wait_until_ready(),
                caches.config_maps.wait_until_ready(),
                caches.services.wait_until_ready(),
                caches.service_accounts.wait_until_ready(),
                caches.budgets.wait_until_ready(),
            )
            .await;
            tracing::info!("caches of the children synced");
        }
    };
    let (store, writer) = reflector::store();
    let resources = futures::stream::once(async move {
        children_synced.await;
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects()
    })
    .flatten();
    let (retry_tx, retry_rx) = futures::channel::mpsc::unbounded::<ObjectRef<KinesisExporter>>();
    let (delivery_tx, delivery_rx) =
        futures::channel::mpsc::unbounded::<ObjectRef<KinesisExporter>>();
    let controller = Controller::for_stream(resources, store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .trigger_backoff(NoExtraBackoff)
        .watches_stream(child_watch(owned.deployments, deployments_writer), owner)
        .watches_stream(child_watch(owned.config_maps, config_maps_writer), owner)
        .watches_stream(child_watch(owned.services, services_writer), owner)
        .watches_stream(
            child_watch(owned.service_accounts, service_accounts_writer),
            owner,
        )
        .watches_stream(child_watch(owned.budgets, budgets_writer), owner)
        .reconcile_on(futures::stream::select(retry_rx, delivery_rx))
        .shutdown_on_signal();

    if !settings.probe.interval.is_zero() {
        let (pods, pods_writer) = reflector::store();
        tokio::spawn(pod_watch(owned.pods, pods_writer).for_each(|_| async {}));
        tokio::spawn(crate::probe::run(
            settings.probe,
            store.clone(),
            pods,
            caches.delivery.clone(),
            ctx.leadership.clone(),
            delivery_tx,
        ));
    }

    readiness.begin_sync();
    tokio::spawn({
        let readiness = readiness.clone();
        async move {
            // Polled again and again: the store wakes only its latest waiter, and the
            // controller waits on it too.
            loop {
                match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        tracing::info!("KinesisExporter cache synced");
                        readiness.synced();
                        return;
                    }
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
        }
    });

    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let retry_tx = retry_tx.clone();
            let attempts = attempts.clone();
            async move {
                use kube::runtime::controller::Error as ControllerError;
                match result {
                    Ok((object, _)) => {
                        attempts.lock().unwrap().remove(&object.to_string());
                        tracing::debug!(resource = %object.name, "reconciled")
                    }
                    // Announced by the watch but not in the cache yet: look again shortly
                    // rather than drop it (kube-runtime would).
                    Err(ControllerError::ObjectNotFound(object)) => {
                        let key = object.to_string();
                        let attempt = count_one(&attempts, &key);
                        if attempt > NOT_IN_CACHE_ATTEMPTS {
                            attempts.lock().unwrap().remove(&key);
                            tracing::warn!(resource = %key, "not in the cache after {NOT_IN_CACHE_ATTEMPTS} attempts; gone");
                            return;
                        }
                        tracing::debug!(resource = %key, attempt, "not in the cache yet; retrying");
                        let mut again = ObjectRef::<KinesisExporter>::new(&object.name);
                        if let Some(ns) = &object.namespace {
                            again = again.within(ns);
                        }
                        tokio::spawn(async move {
                            tokio::time::sleep(NOT_IN_CACHE_RETRY).await;
                            let _ = retry_tx.unbounded_send(again);
                        });
                    }
                    // Reconcile failures are logged by error_policy; the rest are watch errors.
                    Err(ControllerError::ReconcilerFailed(..)) => {}
                    Err(e) => tracing::warn!(error = %e, "watch error"),
                }
            }
        })
        .await;
}

/// The watch of one kind of child, selected by the operator's label, filling that kind's
/// cache, with its own backoff (client-go's schedule, capped at 30 s), so one failing stream
/// never holds back the others.
fn child_watch<K>(
    api: Api<K>,
    cache: kube::runtime::reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    use kube::runtime::WatchStreamExt;
    watcher(api, watcher::Config::default().labels(MANAGED_BY_SELECTOR))
        .default_backoff()
        .reflect(cache)
        .touched_objects()
}

/// The exporter pods, for their addresses and readiness only (the probe reads them): selected
/// by the operator's label, without managed fields or spec to keep the cache small. Watch
/// errors back off like the children's and are logged.
fn pod_watch(
    api: Api<Pod>,
    cache: kube::runtime::reflector::store::Writer<Pod>,
) -> impl futures::Stream<Item = ()> + Send {
    use kube::runtime::WatchStreamExt;
    watcher(api, watcher::Config::default().labels(MANAGED_BY_SELECTOR))
        .default_backoff()
        .modify(|pod: &mut Pod| {
            pod.managed_fields_mut().clear();
            pod.spec = None;
        })
        .reflect(cache)
        .map(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, "watch error (exporter pods)");
            }
        })
}

/// The resource a child belongs to: its KinesisExporter owner reference, else its instance
/// label (so a child whose owner reference was removed still brings its resource to put it
/// back).
fn owner<K: Resource>(child: K) -> Option<kube::runtime::reflector::ObjectRef<KinesisExporter>> {
    let meta = child.meta();
    let ns = meta.namespace.clone()?;
    let name = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "KinesisExporter" && o.api_version.starts_with("kinesis.otlp.dev/"))
        .map(|o| o.name.clone())
        .or_else(|| {
            meta.labels
                .as_ref()?
                .get("app.kubernetes.io/instance")
                .cloned()
        })?;
    Some(kube::runtime::reflector::ObjectRef::new(&name).within(&ns))
}

/// The controller's own delay after a watch error: none, as each watch backs off by itself.
struct NoExtraBackoff;

impl Iterator for NoExtraBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoExtraBackoff {
    fn reset(&mut self) {}
}

/// The children's APIs, cluster-wide or in one namespace like the resource's: Deployments
/// whole (their status makes the resource's), the other kinds by metadata only.
pub struct OwnedApis {
    pub deployments: Api<Deployment>,
    pub config_maps: Api<PartialObjectMeta<ConfigMap>>,
    pub services: Api<PartialObjectMeta<Service>>,
    pub service_accounts: Api<PartialObjectMeta<ServiceAccount>>,
    pub budgets: Api<PartialObjectMeta<PodDisruptionBudget>>,
    /// The exporter pods (not owned directly, but labelled): for the delivery probe.
    pub pods: Api<Pod>,
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
            pods: api(client, namespace),
        }
    }
}
