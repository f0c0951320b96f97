//! The committed CRD YAML (crds/ and the Helm chart's copy) is what crdgen writes today.

use kube::CustomResourceExt;

#[test]
fn committed_crds_are_current() {
    let generated =
        serde_yaml_ng::to_string(&kinesis_operator::crd::KinesisExporter::crd()).unwrap();
    for (path, committed) in [
        (
            "crds/kinesisexporters.yaml",
            include_str!("../../crds/kinesisexporters.yaml"),
        ),
        (
            "charts/kinesis-operator/crds/kinesisexporters.yaml",
            include_str!("../../charts/kinesis-operator/crds/kinesisexporters.yaml"),
        ),
    ] {
        assert!(
            committed == generated,
            "{path} is stale: run `make crds` and commit the result"
        );
    }
}
