//! kinesis-operator: runs and rolls `kinesis-exporter` Deployments from `KinesisExporter`
//! resources.
//!
//! [`crd`] is the resource; [`resources`] turns a spec into Kubernetes objects (pure);
//! [`reconcile`] applies them and reports status.

pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod resources;
pub mod status;
