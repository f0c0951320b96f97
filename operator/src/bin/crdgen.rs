//! Writes the KinesisExporter CustomResourceDefinition as YAML (crds/kinesisexporters.yaml).

use clap::Parser;
use kube::CustomResourceExt;

/// Print the KinesisExporter CRD as YAML on stdout.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    let crd = kinesis_operator::crd::KinesisExporter::crd();
    print!("{}", serde_yaml_ng::to_string(&crd)?);
    Ok(())
}
