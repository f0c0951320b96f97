//! The children of one resource in the cluster: read from the watch caches (the API server
//! only for a name the caches do not hold, which may be another workload's object), checked
//! for names held by objects the resource does not control, then applied, skipping every
//! child that is exactly as the operator last applied it. A resource at rest costs no request.

use std::collections::HashMap;
use std::sync::Mutex;

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
}

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
            },
        );
    }
}

/// What `ensure` did.
enum Ensured<K> {
    /// Sent a server-side apply; the object it returned.
    Applied(K),
    /// Nothing to send. `stale`: the cache still shows the object from before the last
    /// apply, so its status is not the current one.
    Unchanged { stale: bool },
}

/// The children as they stand (None where absent): the Deployment whole, the others' metadata.
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

/// The Deployment `ns/name` as the API server has it now.
async fn get_deployment(ctx: &Context, ns: &str, name: &str) -> Result<Option<Deployment>, Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    api.get_opt(name)
        .await
        .map_err(read_failed("Deployment", name))
}

/// Where `desired` is recorded in [`Applied`], and the digest of the object sent.
fn record_key<K: Resource<DynamicType = ()> + Serialize>(desired: &K) -> (String, String) {
    let meta = desired.meta();
    let key = format!(
        "{}/{}/{}",
        kind_of::<K>(),
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    );
    let digest = hex::encode(Sha256::digest(
        serde_json::to_vec(desired).unwrap_or_default(),
    ));
    (key, digest)
}

/// The metadata of `ns/name` of kind K: from the cache, else, when `wanted` (the spec asks
/// for that child), from the API server: an object without the operator's label is not in the
/// cache, and it is the one that must be seen before anything of that name is applied. A
/// child the spec does not want matters only if it is ours, and ours are in the cache.
async fn metadata<K>(
    cache: &Store<PartialObjectMeta<K>>,
    wanted: bool,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<ObjectMeta>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    if let Some(cached) = cache.get(&ObjectRef::new(name).within(ns)) {
        return Ok(Some(cached.metadata.clone()));
    }
    if !wanted {
        return Ok(None);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    api.get_metadata_opt(name)
        .await
        .map(|found| found.map(|o| o.metadata))
        .map_err(read_failed(&kind_of::<K>(), name))
}

pub async fn read(kex: &KinesisExporter, ctx: &Context, ns: &str) -> Result<Existing, Error> {
    let name = kex.name_any();
    let caches = &ctx.caches;
    let deployment = match caches.deployments.get(&ObjectRef::new(&name).within(ns)) {
        Some(cached) => Some((*cached).clone()),
        None => get_deployment(ctx, ns, &name).await?,
    };
    let wants_account = resources::service_account(kex).is_some();
    let wants_budget = resources::pod_disruption_budget(kex).is_some();
    Ok(Existing {
        service_account: metadata(&caches.service_accounts, wants_account, ctx, ns, &name).await?,
        config_map: metadata(&caches.config_maps, true, ctx, ns, &name).await?,
        deployment,
        service: metadata(&caches.services, true, ctx, ns, &name).await?,
        budget: metadata(&caches.budgets, wants_budget, ctx, ns, &name).await?,
    })
}

/// The children this resource would create whose names are held by objects it does not
/// control, each with why. Checked for all of them before anything is applied, so a conflict
/// never leaves pods running beside an object that is not theirs.
pub fn taken_names(kex: &KinesisExporter, existing: &Existing) -> Vec<String> {
    let uid = kex.metadata.uid.clone().unwrap_or_default();
    let name = kex.name_any();
    let holder = |kind: &str, meta: Option<&ObjectMeta>| {
        resources::foreign_holder(meta?, &uid).map(|why| {
            format!("{kind} {name} exists and is not managed by this KinesisExporter ({why})")
        })
    };
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
/// desired object, and the object in the cluster unchanged since (its fingerprint).
async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    existing: Option<&ObjectMeta>,
    ctx: &Context,
) -> Result<Ensured<K>, Error>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + std::fmt::Debug + DeserializeOwned,
{
    let kind = kind_of::<K>();
    let name = desired.meta().name.clone().unwrap_or_default();
    let (key, digest) = record_key(desired);
    let before = existing.map(resources::fingerprint);
    if let Some(before) = &before {
        match ctx.applied.compare(&key, &digest, before) {
            Compared::Unchanged => {
                ctx.metrics.applied(kind, "unchanged");
                return Ok(Ensured::Unchanged { stale: false });
            }
            Compared::Stale => {
                ctx.metrics.applied(kind, "unchanged");
                return Ok(Ensured::Unchanged { stale: true });
            }
            Compared::Changed => {}
        }
    }
    ctx.may_write()?;
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: std::any::type_name::<K>()
                .rsplit("::")
                .next()
                .unwrap_or("object"),
            name,
            source,
        })?;
    ctx.applied
        .record(key, digest, resources::fingerprint(applied.meta()), before);
    ctx.metrics.applied(kind, "applied");
    Ok(Ensured::Applied(applied))
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

/// Applies every child the spec asks for and removes the ones it no longer does; returns the
/// Deployment as it stands.
pub async fn apply(
    kex: &KinesisExporter,
    ctx: &Context,
    ns: &str,
    existing: Existing,
) -> Result<Deployment, Error> {
    let client = &ctx.client;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    match resources::service_account(kex) {
        Some(sa) => {
            ensure(&accounts, &sa, existing.service_account.as_ref(), ctx).await?;
        }
        None => remove_if_owned(&accounts, existing.service_account.as_ref(), kex, ctx).await?,
    }
    ensure(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &resources::config_map(kex),
        existing.config_map.as_ref(),
        ctx,
    )
    .await?;
    let desired = resources::deployment(kex, &ctx.defaults);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = match ensure(
        &deployments,
        &desired,
        existing.deployment.as_ref().map(|d| &d.metadata),
        ctx,
    )
    .await?
    {
        Ensured::Applied(applied) => applied,
        // The cached Deployment predates the last apply: its status describes the previous
        // template, so read the current one.
        Ensured::Unchanged { stale: true } => get_deployment(ctx, ns, &desired.name_any())
            .await?
            .unwrap_or(desired),
        Ensured::Unchanged { stale: false } => existing.deployment.unwrap_or(desired),
    };
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let service = resources::service(kex);
    let service_before = existing.service.as_ref();
    // Someone changed the Service (its fingerprint moved): look at its ports before applying.
    let (key, digest) = record_key(&service);
    if let Some(before) = service_before
        && ctx
            .applied
            .compare(&key, &digest, &resources::fingerprint(before))
            == Compared::Changed
    {
        restore_service_ports(&services, &service, ctx).await?;
    }
    ensure(&services, &service, service_before, ctx).await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    match resources::pod_disruption_budget(kex) {
        Some(pdb) => {
            ensure(&budgets, &pdb, existing.budget.as_ref(), ctx).await?;
        }
        None => remove_if_owned(&budgets, existing.budget.as_ref(), kex, ctx).await?,
    }
    Ok(deployment)
}
