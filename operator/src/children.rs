//! The children of one resource in the cluster: read once per reconcile, checked for names
//! held by objects the resource does not control, then applied, skipping every child that
//! is exactly as the operator last applied it (so a resource at rest costs reads, no writes).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount, ServicePort};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::crd::KinesisExporter;
use crate::reconcile::{Context, Error};
use crate::resources;
use crate::resources::FIELD_MANAGER;

/// What the operator last applied to each child, by "Kind/namespace/name": a digest of the
/// object it sent and the fingerprint of the object the API server returned.
#[derive(Default)]
pub struct Applied(Mutex<HashMap<String, (String, String)>>);

impl Applied {
    fn unchanged(&self, key: &str, desired: &str, existing: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(key)
            .is_some_and(|(d, e)| d == desired && e == existing)
    }

    fn record(&self, key: String, desired: String, returned: String) {
        self.0.lock().unwrap().insert(key, (desired, returned));
    }
}

/// The children as they stand (None where absent), read once per reconcile.
pub struct Existing {
    pub service_account: Option<ServiceAccount>,
    pub config_map: Option<ConfigMap>,
    pub deployment: Option<Deployment>,
    pub service: Option<Service>,
    pub budget: Option<PodDisruptionBudget>,
}

fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).to_string()
}

async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned,
{
    api.get_opt(name).await.map_err(|source| Error::Apply {
        kind: "get",
        name: format!("{} {name}", kind_of::<K>()),
        source,
    })
}

pub async fn read(kex: &KinesisExporter, ctx: &Context, ns: &str) -> Result<Existing, Error> {
    let name = kex.name_any();
    let client = &ctx.client;
    Ok(Existing {
        service_account: get(&Api::namespaced(client.clone(), ns), &name).await?,
        config_map: get(&Api::namespaced(client.clone(), ns), &name).await?,
        deployment: get(&Api::namespaced(client.clone(), ns), &name).await?,
        service: get(&Api::namespaced(client.clone(), ns), &name).await?,
        budget: get(&Api::namespaced(client.clone(), ns), &name).await?,
    })
}

/// The children this resource would create whose names are held by objects it does not
/// control, each with why. Checked for all of them before anything is applied, so a conflict
/// never leaves pods running beside an object that is not theirs.
pub fn taken_names(kex: &KinesisExporter, existing: &Existing) -> Vec<String> {
    fn holder<K: Resource<DynamicType = ()>>(object: Option<&K>, uid: &str) -> Option<String> {
        let object = object?;
        resources::foreign_holder(object.meta(), uid).map(|why| {
            format!(
                "{} {} exists and is not managed by this KinesisExporter ({why})",
                kind_of::<K>(),
                object.name_any()
            )
        })
    }
    let uid = kex.metadata.uid.clone().unwrap_or_default();
    let wants_account = resources::service_account(kex).is_some();
    let wants_budget = resources::pod_disruption_budget(kex).is_some();
    [
        holder(
            existing.service_account.as_ref().filter(|_| wants_account),
            &uid,
        ),
        holder(existing.config_map.as_ref(), &uid),
        holder(existing.deployment.as_ref(), &uid),
        holder(existing.service.as_ref(), &uid),
        holder(existing.budget.as_ref().filter(|_| wants_budget), &uid),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Server-side applies `desired` unless the child is exactly as last applied: same desired
/// object, and the object in the cluster unchanged since (its fingerprint). Returns the child
/// as it now stands.
async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    existing: Option<K>,
    ctx: &Context,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + std::fmt::Debug + DeserializeOwned,
{
    let kind = kind_of::<K>();
    let name = desired.meta().name.clone().unwrap_or_default();
    let ns = desired.meta().namespace.clone().unwrap_or_default();
    let key = format!("{kind}/{ns}/{name}");
    let digest = hex::encode(Sha256::digest(
        serde_json::to_vec(desired).unwrap_or_default(),
    ));
    if let Some(existing) = existing
        && ctx
            .applied
            .unchanged(&key, &digest, &resources::fingerprint(existing.meta()))
    {
        ctx.metrics.applied(kind, "unchanged");
        return Ok(existing);
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
        .record(key, digest, resources::fingerprint(applied.meta()));
    ctx.metrics.applied(kind, "applied");
    Ok(applied)
}

/// Deletes a child the spec no longer asks for, if it exists and is ours.
async fn remove_if_owned<K>(
    api: &Api<K>,
    existing: Option<K>,
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
    if resources::foreign_holder(existing.meta(), &uid).is_none() {
        ctx.may_write()?;
        let name = existing.name_any();
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

/// Puts drifted Service ports back before the apply. Ports are a list keyed by port number:
/// an edited number would be a new entry owned by whoever edited it, and ours would come back
/// beside it under the same name, which the API server refuses. So they are put back wholesale.
async fn restore_service_ports(
    api: &Api<Service>,
    desired: &Service,
    existing: Option<&Service>,
    ctx: &Context,
) -> Result<(), Error> {
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
    if ports(existing).iter().map(key).ne(wanted.iter().map(key)) {
        let name = existing.name_any();
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
            ensure(&accounts, &sa, existing.service_account, ctx).await?;
        }
        None => remove_if_owned(&accounts, existing.service_account, kex, ctx).await?,
    }
    ensure(
        &Api::namespaced(client.clone(), ns),
        &resources::config_map(kex),
        existing.config_map,
        ctx,
    )
    .await?;
    let deployment = ensure(
        &Api::namespaced(client.clone(), ns),
        &resources::deployment(kex, &ctx.defaults),
        existing.deployment,
        ctx,
    )
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let service = resources::service(kex);
    restore_service_ports(&services, &service, existing.service.as_ref(), ctx).await?;
    ensure(&services, &service, existing.service, ctx).await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    match resources::pod_disruption_budget(kex) {
        Some(pdb) => {
            ensure(&budgets, &pdb, existing.budget, ctx).await?;
        }
        None => remove_if_owned(&budgets, existing.budget, kex, ctx).await?,
    }
    Ok(deployment)
}
