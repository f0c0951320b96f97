//! kinesis-operator: runs and rolls `kinesis-exporter` Deployments from `KinesisExporter`
//! resources.
//!
//! [`crd`] is the resource; [`resources`] turns a spec into Kubernetes objects (pure);
//! [`tenancy`] is the platform's policy on what a resource may ask for; [`reconcile`] applies
//! the objects and reports status; [`probe`] reads the exporter pods' own account of their
//! delivery and [`delivery`] judges it (pure).

pub mod children;
pub mod crd;
pub mod delivery;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod resources;
pub mod status;
pub mod tenancy;

/// Chooses rustls' crypto provider for the process. Several crates enable different
/// providers, and rustls then refuses to guess: without this, the first HTTPS connection to
/// the API server panics.
pub fn install_crypto_provider() {
    // An error means one is installed already, which is all we need.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    /// A client for an https API server can be built once the provider is installed (this
    /// panicked before `install_crypto_provider` existed).
    #[tokio::test]
    async fn an_https_client_can_be_built() {
        super::install_crypto_provider();
        let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        kube::Client::try_from(config).expect("an HTTPS client");
    }
}
