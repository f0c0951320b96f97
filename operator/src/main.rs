//! The `kinesis-operator` command line: watch KinesisExporter resources and run their exporters.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kinesis_operator::crd::KinesisExporter;
use kinesis_operator::leader::{Elector, Leadership, Timing};
use kinesis_operator::metrics::{OperatorMetrics, Readiness};
use kinesis_operator::probe::ProbeSettings;
use kinesis_operator::reconcile::{self, Context, OwnedApis, RunSettings};
use kinesis_operator::resources::Defaults;
use kinesis_operator::tenancy::{self, Tenancy};
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;

/// Runs and rolls kinesis-exporter Deployments for KinesisExporter resources.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// Exporter image for resources that name none.
    #[arg(
        long,
        env = "KINESIS_EXPORTER_IMAGE",
        default_value = "kinesis-exporter:0.1.0"
    )]
    exporter_image: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: String,
    /// Take a Lease before reconciling, so that several replicas can run safely.
    #[arg(long)]
    leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "kinesis-operator")]
    leader_election_lease_name: String,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Reconciles running at once, across all resources.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Requests per second the operator sends to the API server at most (a client-side limit,
    /// so that a burst of resources never floods it).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    api_qps: u64,
    /// Seconds between two reads of every exporter pod's /status, which feed the Delivering
    /// condition and status.delivery; 0 turns the probe off (the condition stays Unknown).
    #[arg(long, default_value_t = 30)]
    delivery_probe_interval: u64,
    #[command(flatten)]
    tenancy: TenancyArgs,
}

/// What tenants may ask for through a KinesisExporter. A resource that asks for more is
/// refused (Degraded, reason NotAllowed) and nothing is deployed for it. Patterns are globs
/// (`*`, `?`); lists are comma-separated, and an empty list allows nothing.
#[derive(clap::Args)]
#[command(next_help_heading = "Tenancy guardrails")]
struct TenancyArgs {
    /// Images a resource may name in spec.image, besides --exporter-image.
    #[arg(long, value_delimiter = ',', default_value = "")]
    allowed_images: Vec<String>,
    /// Let a resource run as an existing ServiceAccount (spec.serviceAccountName).
    #[arg(long)]
    allow_service_account_name: bool,
    /// Role ARNs a resource may use (spec.aws.role, spec.identity.baseRoleArn); {namespace}
    /// is the resource's namespace.
    #[arg(long, value_delimiter = ',', default_value = tenancy::DEFAULT_ROLE_ARN_PATTERN)]
    allowed_role_arns: Vec<String>,
    /// PriorityClasses a resource may name in spec.priorityClassName.
    #[arg(long, value_delimiter = ',', default_value = "")]
    allowed_priority_classes: Vec<String>,
    /// Taint keys spec.tolerations may tolerate; `*` also allows a toleration without a key.
    #[arg(long, value_delimiter = ',', default_value = "")]
    allowed_toleration_keys: Vec<String>,
    /// Prefixes the keys of spec.podLabels must start with.
    #[arg(long, value_delimiter = ',', default_value = tenancy::DEFAULT_POD_LABEL_PREFIX)]
    pod_label_prefixes: Vec<String>,
    /// Namespaces whose resources are refused.
    #[arg(long, value_delimiter = ',', default_value = tenancy::DEFAULT_EXCLUDED_NAMESPACES)]
    excluded_namespaces: Vec<String>,
}

impl TenancyArgs {
    fn into_tenancy(self) -> Tenancy {
        let list = |v: Vec<String>| v.into_iter().filter(|s| !s.is_empty()).collect();
        Tenancy {
            allowed_images: list(self.allowed_images),
            allow_service_account_name: self.allow_service_account_name,
            allowed_role_arns: list(self.allowed_role_arns),
            allowed_priority_classes: list(self.allowed_priority_classes),
            allowed_toleration_keys: list(self.allowed_toleration_keys),
            pod_label_prefixes: list(self.pod_label_prefixes),
            excluded_namespaces: list(self.excluded_namespaces),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }

    kinesis_operator::install_crypto_provider();
    let config = kube::Config::infer()
        .await
        .context("cannot find the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let client = kube::client::ClientBuilder::try_from(config)
        .context("cannot build the Kubernetes client")?
        .with_layer(&tower::limit::RateLimitLayer::new(
            cli.api_qps,
            std::time::Duration::from_secs(1),
        ))
        .build();
    // Unique per process (client-go adds a UUID to the host name): a restarted container in
    // the same pod is a new candidate, not the holder of its predecessor's lease.
    let identity = {
        use std::hash::{BuildHasher, Hasher};
        let pod = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("kinesis-operator-{}", std::process::id()));
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("{pod}_{:08x}", random as u32)
    };

    let mut registry = Registry::with_prefix("kinesis_operator");
    let metrics = OperatorMetrics::default();
    metrics.register(&mut registry);
    let listener = tokio::net::TcpListener::bind(&cli.metrics_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--metrics-address)",
                cli.metrics_address
            )
        })?;
    // Logged as bound, so `--metrics-address 127.0.0.1:0` can be used and read back.
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let readiness = Readiness::default();
    let router = kinesis_operator::metrics::router(Arc::new(registry), readiness.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    // With leader election, wait for the lease, then keep it in the background: losing it
    // stops every write at once and exits (the restart rejoins as a candidate); on shutdown
    // the lease is released so that another replica takes over without waiting it out.
    let (leadership, keeper) = if cli.leader_election {
        let mut elector = Elector::new(
            client.clone(),
            &cli.leader_election_namespace,
            &cli.leader_election_lease_name,
            &identity,
            Timing::default(),
        );
        tracing::info!(lease = %cli.leader_election_lease_name, identity, "waiting for the leader lease");
        elector.acquire().await;
        let leadership = elector.leadership.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let lost = tokio::select! {
                _ = elector.keep() => true,
                _ = stop_rx => false,
            };
            if lost {
                std::process::exit(1);
            }
            elector.release().await;
        });
        (leadership, Some((stop_tx, task)))
    } else {
        (Leadership::always(), None)
    };

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kinesis-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let tenancy = cli.tenancy.into_tenancy();
    tracing::info!(?tenancy, "tenancy guardrails");
    let defaults = Defaults {
        exporter_image: cli.exporter_image.clone(),
    };
    // One context per controller (one per watched namespace), each with its own caches.
    let context = |caches| {
        Context::new(
            client.clone(),
            defaults.clone(),
            tenancy.clone(),
            leadership.clone(),
            recorder.clone(),
            metrics.clone(),
            caches,
        )
    };
    let namespaces: Vec<String> = cli
        .namespaces
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    tracing::info!(
        namespaces = if namespaces.is_empty() { "all".to_string() } else { namespaces.join(",") },
        exporter_image = %cli.exporter_image,
        concurrency = cli.concurrency,
        api_qps = cli.api_qps,
        "reconciling KinesisExporter resources"
    );
    let settings = RunSettings {
        concurrency: cli.concurrency,
        probe: ProbeSettings {
            interval: std::time::Duration::from_secs(cli.delivery_probe_interval),
            ..ProbeSettings::default()
        },
    };
    if namespaces.is_empty() {
        reconcile::run(
            Api::<KinesisExporter>::all(client.clone()),
            OwnedApis::new(&client, None),
            context,
            settings,
            readiness,
        )
        .await;
    } else {
        let controllers = namespaces.iter().map(|ns| {
            reconcile::run(
                Api::<KinesisExporter>::namespaced(client.clone(), ns),
                OwnedApis::new(&client, Some(ns)),
                context,
                settings,
                readiness.clone(),
            )
        });
        futures::future::join_all(controllers).await;
    }
    if let Some((stop, task)) = keeper {
        let _ = stop.send(());
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}
