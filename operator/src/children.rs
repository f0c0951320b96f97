//! The children of one resource in the cluster: read from the watch caches, checked for names
//! held by objects the resource does not control, then applied, skipping every child that is
//! exactly as the operator last applied it. A resource at rest costs no request.
//!
//! A child the caches do not hold is created with a create-only apply (a server-side apply
//! carrying a resourceVersion no object has: it creates, or fails with a conflict when an
//! object of that name exists), so a new resource costs one request per child. Only on that
//! conflict is the object read, to tell another workload's object from one of ours the cache
//! has not shown yet.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount, ServicePort};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::crd::KinesisExporter;
use crate::reconcile::{Context, Error};
use crate::resources::{self, FIELD_MANAGER};

/// The watch caches of the children (only objects carrying the operator's label): the
/// Deployments whole, for their status; the other kinds by metadata only. Beside them, the
/// latest delivery reports of the exporter pods, which the probe keeps.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    pub delivery: std::sync::Arc<crate::probe::Reports>,
}

/// What the operator last applied to each child, by "Kind/namespace/name": a digest of the
/// object it sent, the fingerprint of the object the apply returned, and the fingerprint it
/// had just before, which a cache may still show for a moment.
#[derive(Default)]
pub struct Applied(Mutex<HashMap<String, Record>>);

struct Record {
    desired: String,
    after: String,
    before: Option<String>,
    at: std::time::Instant,
}

/// How long a child the operator just applied may be missing from its watch cache before it
/// is taken for deleted (a resource with a child the cache does not hold is looked at again
/// within this time).
const CACHE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// How a child compares with what was last applied.
#[derive(Debug, PartialEq, Eq)]
enum Compared {
    /// As last applied.
    Unchanged,
    /// As last applied, but the cache still shows it as it was before that apply.
    Stale,
    /// Never applied, changed since, or a different object is wanted now.
    Changed,
}

impl Applied {
    fn compare(&self, key: &str, desired: &str, existing: &str) -> Compared {
        match self.0.lock().unwrap().get(key) {
            Some(r) if r.desired == desired && r.after == existing => Compared::Unchanged,
            Some(r) if r.desired == desired && r.before.as_deref() == Some(existing) => {
                Compared::Stale
            }
            _ => Compared::Changed,
        }
    }

    fn record(&self, key: String, desired: String, after: String, before: Option<String>) {
        self.0.lock().unwrap().insert(
            key,
            Record {
                desired,
                after,
                before,
                at: std::time::Instant::now(),
            },
        );
    }

    /// Whether `desired` was applied to `key` within [`CACHE_CATCH_UP`].
    fn just_applied(&self, key: &str, desired: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(key)
            .is_some_and(|r| r.desired == desired && r.at.elapsed() < CACHE_CATCH_UP)
    }
}

/// What `ensure` did.
enum Ensured<K> {
    /// Sent a server-side apply; the object it returned.
    Applied(K),
    /// Nothing to send. `stale`: the cache still shows the object from before the last
    /// apply, so its status is not the current one.
    Unchanged { stale: bool },
    /// Nothing to send: the object as read from the API server (the cache did not hold it yet).
    Current(K),
    /// The name is held by an object this resource does not control; why. Left untouched.
    Taken(String),
}

impl<K> Ensured<K> {
    fn taken(self) -> Option<String> {
        match self {
            Ensured::Taken(why) => Some(why),
            _ => None,
        }
    }
}

/// A resourceVersion no stored object has: an apply carrying it creates the object or fails
/// with 409 Conflict, never changing an existing one (the Java Operator SDK creates this way).
const CREATE_ONLY: &str = "1";

/// The children as the watch caches hold them (None where the cache holds nothing of that
/// name): the Deployment whole, the others' metadata.
pub struct Existing {
    pub service_account: Option<ObjectMeta>,
    pub config_map: Option<ObjectMeta>,
    pub deployment: Option<Deployment>,
    pub service: Option<ObjectMeta>,
    pub budget: Option<ObjectMeta>,
}

fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).to_string()
}

/// The error of a failed read of `kind name`.
fn read_failed(kind: &str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    let name = format!("{kind} {name}");
    move |source| Error::Apply {
        kind: "get",
        name,
        source,
    }
}

/// Where `desired` is recorded in [`Applied`] and [`Creating`]: "Kind/namespace/name".
fn child_key<K: Resource<DynamicType = ()>>(desired: &K) -> String {
    let meta = desired.meta();
    format!(
        "{}/{}/{}",
        kind_of::<K>(),
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Where `desired` is recorded in [`Applied`], and the digest of the object sent.
fn record_key<K: Resource<DynamicType = ()> + Serialize>(desired: &K) -> (String, String) {
    let digest = hex::encode(Sha256::digest(
        serde_json::to_vec(desired).unwrap_or_default(),
    ));
    (child_key(desired), digest)
}

fn cached<K>(cache: &Store<PartialObjectMeta<K>>, ns: &str, name: &str) -> Option<ObjectMeta>
where
    K: Resource<DynamicType = ()> + Clone,
{
    cache
        .get(&ObjectRef::new(name).within(ns))
        .map(|o| o.metadata.clone())
}

/// The children as the caches hold them. Costs no request: a name the caches do not hold is
/// looked at only when creating it finds it taken.
pub fn read(kex: &KinesisExporter, ctx: &Context, ns: &str) -> Existing {
    let name = kex.name_any();
    let caches = &ctx.caches;
    Existing {
        service_account: cached(&caches.service_accounts, ns, &name),
        config_map: cached(&caches.config_maps, ns, &name),
        deployment: caches
            .deployments
            .get(&ObjectRef::new(&name).within(ns))
            .map(|d| (*d).clone()),
        service: cached(&caches.services, ns, &name),
        budget: cached(&caches.budgets, ns, &name),
    }
}

/// Why `kind name` cannot be this resource's child, if `meta` is an object it does not control.
fn taken_by(kex: &KinesisExporter, kind: &str, meta: &ObjectMeta) -> Option<String> {
    let uid = kex.metadata.uid.as_deref().unwrap_or_default();
    resources::foreign_holder(meta, uid).map(|why| {
        format!(
            "{kind} {} exists and is not managed by this KinesisExporter ({why})",
            kex.name_any()
        )
    })
}

/// Of the children the caches hold, those held by objects this resource does not control
/// (another resource's, say, awaiting garbage collection), each with why. Checked before
/// anything is applied; names the caches do not hold are checked as they are created, the
/// Deployment last, so a conflict never leaves pods running beside an object not theirs.
pub fn taken_names(kex: &KinesisExporter, existing: &Existing) -> Vec<String> {
    let holder = |kind: &str, meta: Option<&ObjectMeta>| taken_by(kex, kind, meta?);
    let wants_account = resources::service_account(kex).is_some();
    let wants_budget = resources::pod_disruption_budget(kex).is_some();
    [
        holder(
            "ServiceAccount",
            existing.service_account.as_ref().filter(|_| wants_account),
        ),
        holder("ConfigMap", existing.config_map.as_ref()),
        holder(
            "Deployment",
            existing.deployment.as_ref().map(|d| &d.metadata),
        ),
        holder("Service", existing.service.as_ref()),
        holder(
            "PodDisruptionBudget",
            existing.budget.as_ref().filter(|_| wants_budget),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Server-side applies `desired` unless the child is exactly as last applied: the same
/// desired object, and the object in the cluster unchanged since (its fingerprint). A child
/// the cache does not hold (`cached` None) is created, unless its name is taken.
async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    cached: Option<&ObjectMeta>,
    kex: &KinesisExporter,
    ctx: &Context,
) -> Result<Ensured<K>, Error>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + std::fmt::Debug + DeserializeOwned,
{
    let kind = kind_of::<K>();
    let name = desired.meta().name.clone().unwrap_or_default();
    let (key, digest) = record_key(desired);
    let mut read = None;
    let before = match cached {
        Some(meta) => resources::fingerprint(meta),
        // Applied moments ago, and the watch has not shown it yet: nothing to send. Had it
        // been deleted since, the next look (within CACHE_CATCH_UP) creates it again.
        None if ctx.applied.just_applied(&key, &digest) => {
            ctx.metrics.applied(kind, "unchanged");
            return Ok(Ensured::Unchanged { stale: true });
        }
        None => match create(api, desired, ctx).await? {
            Some(created) => return Ok(Ensured::Applied(created)),
            // Taken: by another workload, or by our own object the cache does not show yet.
            None => {
                let current = api
                    .get_opt(&name)
                    .await
                    .map_err(read_failed(&kind, &name))?
                    .ok_or_else(|| Error::Vanished(format!("{kind} {name}")))?;
                if let Some(why) = taken_by(kex, &kind, current.meta()) {
                    return Ok(Ensured::Taken(why));
                }
                let before = resources::fingerprint(current.meta());
                read = Some(current);
                before
            }
        },
    };
    match ctx.applied.compare(&key, &digest, &before) {
        Compared::Unchanged => {
            ctx.metrics.applied(kind, "unchanged");
            return Ok(match read {
                Some(current) => Ensured::Current(current),
                None => Ensured::Unchanged { stale: false },
            });
        }
        Compared::Stale => {
            ctx.metrics.applied(kind, "unchanged");
            return Ok(Ensured::Unchanged { stale: true });
        }
        Compared::Changed => {}
    }
    ctx.may_write()?;
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(apply_failed::<K>(&name))?;
    ctx.applied.record(
        key,
        digest,
        resources::fingerprint(applied.meta()),
        Some(before),
    );
    ctx.metrics.applied(kind, "applied");
    Ok(Ensured::Applied(applied))
}

/// Creates `desired` by a create-only apply, and records it as applied; None when an object of
/// that name exists.
async fn create<K>(api: &Api<K>, desired: &K, ctx: &Context) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + std::fmt::Debug + DeserializeOwned,
{
    ctx.may_write()?;
    let name = desired.meta().name.clone().unwrap_or_default();
    let mut create_only = desired.clone();
    create_only.meta_mut().resource_version = Some(CREATE_ONLY.into());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(&create_only)).await {
        Ok(created) => {
            let (key, digest) = record_key(desired);
            let after = resources::fingerprint(created.meta());
            ctx.applied.record(key, digest, after, None);
            ctx.metrics.applied(kind_of::<K>(), "created");
            Ok(Some(created))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(source) => Err(apply_failed::<K>(&name)(source)),
    }
}

/// The error of a failed apply of `name` of kind K.
fn apply_failed<K>(name: &str) -> impl FnOnce(kube::Error) -> Error {
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    let name = name.to_string();
    move |source| Error::Apply { kind, name, source }
}

/// Deletes a child the spec no longer asks for, if it exists and is ours.
async fn remove_if_owned<K>(
    api: &Api<K>,
    existing: Option<&ObjectMeta>,
    kex: &KinesisExporter,
    ctx: &Context,
) -> Result<(), Error>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
{
    let Some(existing) = existing else {
        return Ok(());
    };
    let uid = kex.metadata.uid.clone().unwrap_or_default();
    if resources::foreign_holder(existing, &uid).is_none() {
        ctx.may_write()?;
        let name = existing.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    kind: "delete",
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Puts drifted Service ports back before the apply. Ports are a list keyed by port number:
/// an edited number would be a new entry owned by whoever edited it, and ours would come back
/// beside it under the same name, which the API server refuses. So they are put back wholesale.
async fn restore_service_ports(
    api: &Api<Service>,
    desired: &Service,
    ctx: &Context,
) -> Result<(), Error> {
    let name = desired.name_any();
    let existing = api
        .get_opt(&name)
        .await
        .map_err(read_failed("Service", &name))?;
    let Some(existing) = existing else {
        return Ok(());
    };
    let ports = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
    };
    let key = |p: &ServicePort| {
        (
            p.name.clone(),
            p.port,
            p.target_port.clone(),
            p.protocol.clone(),
        )
    };
    let wanted = ports(desired);
    if ports(&existing).iter().map(key).ne(wanted.iter().map(key)) {
        ctx.may_write()?;
        tracing::info!(service = %name, "ports drifted; restoring them");
        let patch = serde_json::json!({"spec": {"ports": wanted}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Apply {
                kind: "Service",
                name,
                source,
            })?;
    }
    Ok(())
}

/// Every child applied, or (the Service) being created.
pub struct Deployed {
    /// The Deployment as it stands.
    pub deployment: Deployment,
    /// The cache still shows the Deployment from before the operator's last apply (or not at
    /// all): its status describes the previous template. The watch event of that apply is on
    /// its way.
    pub behind: bool,
    /// The Service is still being created.
    pub service_pending: bool,
    /// Why the last attempt to create the Service failed, if it did (it is being tried again).
    pub service_failure: Option<String>,
    /// A child the spec asks for is not in the watch caches yet: look again soon.
    pub unseen: bool,
}

/// What applying the children came to.
pub enum Outcome {
    Deployed(Box<Deployed>),
    /// Names the caches did not hold turned out to be held by other objects, each with why:
    /// nothing of those names was touched, and no Deployment was created.
    Taken(Vec<String>),
}

/// Applies every child the spec asks for and removes the ones it no longer does. The
/// Deployment goes last, once every other name is known to be ours.
pub async fn apply(
    kex: &KinesisExporter,
    ctx: &Arc<Context>,
    ns: &str,
    existing: Existing,
) -> Result<Outcome, Error> {
    let client = &ctx.client;
    let account = resources::service_account(kex);
    let budget = resources::pod_disruption_budget(kex);
    let unseen = (existing.service_account.is_none() && account.is_some())
        || existing.config_map.is_none()
        || existing.deployment.is_none()
        || existing.service.is_none()
        || (existing.budget.is_none() && budget.is_some());
    let account = ensure_or_remove(
        Api::namespaced(client.clone(), ns),
        account,
        existing.service_account.as_ref(),
        kex,
        ctx,
    );
    let config_map = ensure_or_remove(
        Api::namespaced(client.clone(), ns),
        Some(resources::config_map(kex)),
        existing.config_map.as_ref(),
        kex,
        ctx,
    );
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let service = resources::service(kex);
    let service_step = service_step(&services, &service, existing.service.as_ref(), kex, ctx);
    let budget = ensure_or_remove(
        Api::namespaced(client.clone(), ns),
        budget,
        existing.budget.as_ref(),
        kex,
        ctx,
    );
    // Sent together: a new resource waits one round trip for these, not four.
    let (account, config_map, service_step, budget) =
        futures::try_join!(account, config_map, service_step, budget)?;
    let service_taken = match &service_step {
        ServiceStep::Taken(why) => Some(why.clone()),
        _ => None,
    };
    let taken: Vec<String> = [account, config_map, service_taken, budget]
        .into_iter()
        .flatten()
        .collect();
    if !taken.is_empty() {
        return Ok(Outcome::Taken(taken));
    }
    // Why the last create failed, while a create is still wanted.
    let service_failure = match service_step {
        ServiceStep::Create | ServiceStep::UnderWay => ctx.creating.failure(&child_key(&service)),
        ServiceStep::Done | ServiceStep::Taken(_) => None,
    };
    let service_pending = match service_step {
        ServiceStep::Create => {
            create_service(services, service, ctx.clone());
            true
        }
        ServiceStep::UnderWay => true,
        ServiceStep::Done | ServiceStep::Taken(_) => false,
    };
    let desired = resources::deployment(kex, &ctx.defaults);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let cached = existing.deployment.as_ref().map(|d| &d.metadata);
    let (deployment, behind) = match ensure(&deployments, &desired, cached, kex, ctx).await? {
        Ensured::Applied(applied) | Ensured::Current(applied) => (applied, false),
        Ensured::Unchanged { stale } => (existing.deployment.unwrap_or(desired), stale),
        Ensured::Taken(why) => return Ok(Outcome::Taken(vec![why])),
    };
    Ok(Outcome::Deployed(Box::new(Deployed {
        deployment,
        behind,
        service_pending,
        service_failure,
        unseen,
    })))
}

/// Applies `desired` where the spec asks for that child, else removes the child if it is ours.
/// Some(why) when the name is held by an object this resource does not control.
async fn ensure_or_remove<K>(
    api: Api<K>,
    desired: Option<K>,
    cached: Option<&ObjectMeta>,
    kex: &KinesisExporter,
    ctx: &Context,
) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + std::fmt::Debug + DeserializeOwned,
{
    match desired {
        Some(desired) => Ok(ensure(&api, &desired, cached, kex, ctx).await?.taken()),
        None => remove_if_owned(&api, cached, kex, ctx).await.map(|()| None),
    }
}

/// What to do about the Service once every other name is known to be ours.
enum ServiceStep {
    /// Applied, or unchanged.
    Done,
    /// Its name is held by an object this resource does not control; why.
    Taken(String),
    /// Absent: to be created, in the background (see [`create_service`]).
    Create,
    /// Being created by an earlier reconcile.
    UnderWay,
}

/// Applies the Service, or finds out whether a new one can be created: a name the cache does
/// not hold is read (its metadata), so that a name held by another workload's Service is seen
/// before the Deployment is created, while the creation itself is left for later.
async fn service_step(
    api: &Api<Service>,
    desired: &Service,
    cached: Option<&ObjectMeta>,
    kex: &KinesisExporter,
    ctx: &Context,
) -> Result<ServiceStep, Error> {
    let (key, digest) = record_key(desired);
    let name = desired.name_any();
    let found;
    let existing = match cached {
        Some(meta) => meta,
        None if ctx.creating.contains(&key) => return Ok(ServiceStep::UnderWay),
        // Created moments ago; the watch has not shown it yet.
        None if ctx.applied.just_applied(&key, &digest) => return Ok(ServiceStep::Done),
        None => match api
            .get_metadata_opt(&name)
            .await
            .map_err(read_failed("Service", &name))?
        {
            None => return Ok(ServiceStep::Create),
            Some(meta) => {
                if let Some(why) = taken_by(kex, "Service", &meta.metadata) {
                    return Ok(ServiceStep::Taken(why));
                }
                found = meta.metadata;
                &found
            }
        },
    };
    // Someone changed the Service (its fingerprint moved): look at its ports first.
    if ctx
        .applied
        .compare(&key, &digest, &resources::fingerprint(existing))
        == Compared::Changed
    {
        restore_service_ports(api, desired, ctx).await?;
    }
    Ok(
        match ensure(api, desired, Some(existing), kex, ctx).await? {
            Ensured::Taken(why) => ServiceStep::Taken(why),
            _ => ServiceStep::Done,
        },
    )
}

/// The children being created in the background, by record key, and how many of those
/// creates may be in flight at once: the API server allocates cluster IPs one Service at a
/// time, and with no bound the creates queued there held its seats (and earned 429s).
pub struct Creating {
    keys: Mutex<HashSet<String>>,
    in_flight: tokio::sync::Semaphore,
    /// Why the last create of a key failed, until one succeeds.
    failures: Mutex<HashMap<String, String>>,
}

/// Background creates in flight at once. Each also waits its turn in the client's rate limit
/// behind the reconciles' requests: with 4 in flight that wait was the limit (about 5.5 Services
/// a second while kubectl created 17 resources a second, each answered in 0.08 s); with 16 the
/// API server's allocation is (about 7 a second, answered in 0.3 s, 2.4 s at p90), and it
/// answered no 429 (make bench-operator).
const CREATES_IN_FLIGHT: usize = 16;

impl Default for Creating {
    fn default() -> Self {
        Creating {
            keys: Mutex::default(),
            in_flight: tokio::sync::Semaphore::new(CREATES_IN_FLIGHT),
            failures: Mutex::default(),
        }
    }
}

impl Creating {
    fn contains(&self, key: &str) -> bool {
        self.keys.lock().unwrap().contains(key)
    }

    fn failure(&self, key: &str) -> Option<String> {
        self.failures.lock().unwrap().get(key).cloned()
    }
}

/// Creates the Service in the background. The API server hands out cluster IPs one Service at
/// a time across the whole cluster (its allocator holds a lock across an API round trip), so
/// under load a new Service takes seconds, and the Deployment need not wait for it. Its watch
/// event brings the resource back; after a failure, the next reconcile tries again.
fn create_service(api: Api<Service>, desired: Service, ctx: Arc<Context>) {
    let key = child_key(&desired);
    if !ctx.creating.keys.lock().unwrap().insert(key.clone()) {
        return;
    }
    tokio::spawn(async move {
        let permit = ctx.creating.in_flight.acquire().await;
        match create(&api, &desired, &ctx).await {
            // Created (and recorded); or created meanwhile by someone, which the next
            // reconcile reads.
            Ok(_) => {
                ctx.creating.failures.lock().unwrap().remove(&key);
            }
            Err(error) => {
                ctx.creating
                    .failures
                    .lock()
                    .unwrap()
                    .insert(key.clone(), error.to_string());
                ctx.metrics.failed(error.kind());
                tracing::warn!(service = %key, %error, "cannot create the Service; the next reconcile tries again");
            }
        }
        drop(permit);
        ctx.creating.keys.lock().unwrap().remove(&key);
    });
}
