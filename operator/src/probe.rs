//! Reads each exporter pod's `/status` now and then and keeps the verdict per resource; when a
//! verdict changes, the resource is reconciled so that its status says so. Only the leader
//! probes. Nothing here writes to the API server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::crd::KinesisExporter;
use crate::delivery::{self, Delivery, PodReport};
use crate::resources::{self, METRICS_PORT};

/// The latest verdict per resource, read by every reconcile. None for a resource this
/// replica has not probed yet (it just became the leader, say): its status keeps what the
/// last probe found, rather than flipping to NoReport and back.
#[derive(Default)]
pub struct Reports {
    by_resource: Mutex<HashMap<ObjectRef<KinesisExporter>, Delivery>>,
}

impl Reports {
    pub fn get(&self, kex: &KinesisExporter) -> Option<Delivery> {
        self.by_resource
            .lock()
            .unwrap()
            .get(&ObjectRef::from_obj(kex))
            .cloned()
    }

    fn set(&self, key: ObjectRef<KinesisExporter>, delivery: Delivery) {
        self.by_resource.lock().unwrap().insert(key, delivery);
    }

    fn retain(&self, keep: impl Fn(&ObjectRef<KinesisExporter>) -> bool) {
        self.by_resource.lock().unwrap().retain(|k, _| keep(k));
    }
}

/// How the pods are probed.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    /// Time between two rounds; zero turns probing off.
    pub interval: Duration,
    /// Per request, connecting included.
    pub timeout: Duration,
    /// Requests under way at once.
    pub concurrency: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            concurrency: 32,
        }
    }
}

/// The answer of a pod's `/status` is small; anything larger is not the exporter's.
const MAX_REPORT_BYTES: usize = 256 * 1024;

/// Where a pod's `/status` is, if the pod is ready to answer.
fn status_url(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref().filter(|_| ready)?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Some(format!("http://{host}:{METRICS_PORT}/status"))
}

/// A ready pod of a resource: its name and where its `/status` is.
type PodAddress = (String, String);

/// A resource to probe: its key, its ready pods, and the resource as the cache holds it.
type Target = (
    ObjectRef<KinesisExporter>,
    Vec<PodAddress>,
    Arc<KinesisExporter>,
);

/// The ready pods of `kex`, in name order (so that the verdict's message is stable).
fn pods_of(kex: &KinesisExporter, pods: &Store<Pod>) -> Vec<PodAddress> {
    let ns = kex.namespace();
    let selector = resources::selector_labels(kex);
    let mut found: Vec<PodAddress> = pods
        .state()
        .iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter_map(|p| Some((p.name_any(), status_url(p)?)))
        .collect();
    found.sort();
    found
}

fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<PodReport, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_REPORT_BYTES {
        return Err(format!("answered {} bytes", body.len()));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not an exporter's /status: {e}"))
}

/// Probes every resource's pods once and records the verdicts; returns the resources whose
/// verdict differs from what their status shows.
pub async fn round(
    client: &reqwest::Client,
    resources: &Store<KinesisExporter>,
    pods: &Store<Pod>,
    reports: &Reports,
    concurrency: usize,
) -> Vec<ObjectRef<KinesisExporter>> {
    let targets: Vec<Target> = resources
        .state()
        .into_iter()
        .map(|kex| (ObjectRef::from_obj(kex.as_ref()), pods_of(&kex, pods), kex))
        .collect();
    let jobs: Vec<(ObjectRef<KinesisExporter>, String, String)> = targets
        .iter()
        .flat_map(|(key, pods, _)| {
            pods.iter()
                .map(|(pod, url)| (key.clone(), pod.clone(), url.clone()))
        })
        .collect();
    let mut answers: HashMap<ObjectRef<KinesisExporter>, Vec<(String, PodReport)>> = HashMap::new();
    let mut stream = futures::stream::iter(jobs)
        .map(|(key, pod, url)| {
            let client = client.clone();
            async move {
                let result = fetch(&client, &url).await;
                if let Err(error) = &result {
                    tracing::debug!(resource = %key, pod, %error, "no delivery report");
                }
                (key, pod, result.ok())
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((key, pod, report)) = stream.next().await {
        if let Some(report) = report {
            answers.entry(key).or_default().push((pod, report));
        }
    }
    let mut changed = Vec::new();
    for (key, _, kex) in &targets {
        let mut pod_reports = answers.remove(key).unwrap_or_default();
        pod_reports.sort_by(|a, b| a.0.cmp(&b.0));
        let reports_only: Vec<PodReport> = pod_reports.into_iter().map(|(_, r)| r).collect();
        let delivery = delivery::judge(&reports_only, kex.spec.aws.role.as_deref());
        let shown = crate::status::delivering_condition(kex.status.as_ref());
        reports.set(key.clone(), delivery.clone());
        if shown.is_none_or(|c| !delivery.verdict.is_shown_by(c)) {
            tracing::info!(
                resource = %key,
                status = delivery.verdict.status,
                reason = delivery.verdict.reason,
                message = %delivery.verdict.message,
                "delivery changed"
            );
            changed.push(key.clone());
        }
    }
    let known: std::collections::HashSet<_> = targets.iter().map(|(k, _, _)| k.clone()).collect();
    reports.retain(|k| known.contains(k));
    changed
}

/// Waits until `store` holds a complete list; false if its writer is gone. Polled: a store wakes
/// only its latest waiter, and the controller waits on the resources' store too.
async fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) => continue,
        }
    }
}

/// Probes forever, every `settings.interval`, while this replica leads; sends each resource
/// whose verdict changed to `reconcile`.
pub async fn run(
    settings: ProbeSettings,
    resources: Store<KinesisExporter>,
    pods: Store<Pod>,
    reports: Arc<Reports>,
    leadership: crate::leader::Leadership,
    reconcile: futures::channel::mpsc::UnboundedSender<ObjectRef<KinesisExporter>>,
) {
    let client = match http_client(settings.timeout) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the HTTP client; pods' delivery is not probed");
            return;
        }
    };
    if !(synced(&resources).await && synced(&pods).await) {
        return;
    }
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !leadership.may_write() {
            continue;
        }
        for key in round(&client, &resources, &pods, &reports, settings.concurrency).await {
            if reconcile.unbounded_send(key).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn pod(ip: &str, ready: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_ready_pods_with_an_address_are_probed() {
        assert_eq!(
            status_url(&pod("10.1.2.3", "True")).as_deref(),
            Some("http://10.1.2.3:8888/status")
        );
        assert_eq!(
            status_url(&pod("fd00::5", "True")).as_deref(),
            Some("http://[fd00::5]:8888/status")
        );
        assert_eq!(status_url(&pod("10.1.2.3", "False")), None);
        let mut leaving = pod("10.1.2.3", "True");
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(status_url(&leaving), None);
    }

    #[tokio::test]
    async fn a_pods_status_is_fetched_and_anything_else_refused() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/status",
                get(|| async {
                    r#"{"exporters":[{"exporter":"kinesis","stream":"s","records_received":1,
                        "last_success_age_seconds":null,"last_delivery_age_seconds":null,
                        "last_throttle_age_seconds":null,"last_error":null,"last_drop":null}]}"#
                }),
            )
            .route("/other", get(|| async { "not json" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = http_client(Duration::from_secs(2)).unwrap();
        let report = fetch(&client, &format!("http://{address}/status"))
            .await
            .unwrap();
        assert_eq!(report.exporters[0].records_received, 1);
        let error = fetch(&client, &format!("http://{address}/other"))
            .await
            .unwrap_err();
        assert!(error.contains("not an exporter's /status"), "{error}");
        let error = fetch(&client, &format!("http://{address}/missing"))
            .await
            .unwrap_err();
        assert!(error.contains("404"), "{error}");
    }

    #[test]
    fn a_resource_not_probed_yet_has_no_report_kept() {
        let reports = Reports::default();
        let mut kex = KinesisExporter::new("a", Default::default());
        kex.metadata.namespace = Some("team".into());
        assert_eq!(reports.get(&kex), None);
        reports.set(ObjectRef::from_obj(&kex), Delivery::default());
        assert_eq!(reports.get(&kex), Some(Delivery::default()));
    }
}
