#!/usr/bin/env python3
"""The object checks of `make chart-lint` (tests/k8s/chart_checks.sh, steps 4 and 5): for one
rendered variant of the chart, check the objects (restricted Pod Security Standard, the
operator's arguments, least-privilege RBAC per mode, the Lease Role only with leader election,
the metrics Service and ServiceMonitor selectors) and write the objects kubernetes-validate can
check to OUT.

    chart_objects.py VARIANT RENDERED.yaml OUT.yaml RELEASE NAMESPACE
"""
import json, pathlib, sys, yaml

variant, rendered, out_path, release, namespace = sys.argv[1:6]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []

def check(cond, msg):
    if not cond:
        problems.append(msg)

def find(kind, name=None, ns=None):
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (ns is None or d["metadata"].get("namespace") == ns)]

skipped = [d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"]
with open(out_path, "w") as f:
    yaml.safe_dump_all([d for d in docs if d not in skipped], f, sort_keys=False)
for d in skipped:
    print(f"  note: skipping {d['kind']}/{d['metadata']['name']} in kubernetes-validate "
          f"(monitoring.coreos.com/v1 is a CRD type with no schema there); checked structurally below")

fullname = f"{release}-kinesis-operator"
ns_mode = variant == "namespaced"
leader = variant in ("namespaced", "replicas2")
watch = ["team-a", "team-b"] if ns_mode else []

# CRD (helm template --include-crds)
crds = find("CustomResourceDefinition", "kinesisexporters.kinesis.otlp.dev")
check(len(crds) == 1, "the KinesisExporter CRD is not rendered")
if crds:
    spec = crds[0]["spec"]
    check(spec["group"] == "kinesis.otlp.dev" and spec["scope"] == "Namespaced", "CRD group/scope")
    check(spec["names"]["kind"] == "KinesisExporter" and spec["names"]["plural"] == "kinesisexporters", "CRD names")
    check("kex" in spec["names"].get("shortNames", []), "CRD shortName kex")
    vers = {v["name"]: v for v in spec["versions"]}
    check("v1alpha1" in vers and vers["v1alpha1"]["served"] and vers["v1alpha1"]["storage"], "CRD v1alpha1 served+storage")
    sub = vers.get("v1alpha1", {}).get("subresources", {})
    check("status" in sub and "scale" in sub, "CRD status and scale subresources")

# Deployment: restricted Pod Security Standard, args, env, probes, ports
deps = find("Deployment", fullname, namespace)
check(len(deps) == 1, f"Deployment {fullname} in {namespace}")
if deps:
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot: true")
    check(psc.get("runAsUser") == 65532, "pod securityContext.runAsUser: 65532")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile RuntimeDefault")
    check(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), "no host namespaces")
    check(not any("hostPath" in v for v in pod.get("volumes", [])), "no hostPath volumes")
    check(pod["serviceAccountName"] == fullname, "serviceAccountName")
    check(dep["spec"]["replicas"] == (2 if leader else 1), "replicas")
    (c,) = pod["containers"]
    sc = c.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, "container runAsNonRoot: true")
    check(sc.get("runAsUser") == 65532, "container runAsUser: 65532")
    check(sc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem: true")
    check(sc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation: false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "container capabilities.drop: [ALL]")
    check(not sc.get("capabilities", {}).get("add"), "container adds no capabilities")
    check(not sc.get("privileged"), "container not privileged")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccompProfile RuntimeDefault")
    args = c["args"]
    def arg_value(flag):
        return args[args.index(flag) + 1] if flag in args else None
    if ns_mode:
        check(c["image"] == "registry.example.test/kinesis-operator:0.1.0-test", f"image {c['image']}")
        check(arg_value("--exporter-image") == "registry.example.test/kinesis-exporter:0.1.0-test", "--exporter-image")
        check(arg_value("--namespaces") == "team-a,team-b", "--namespaces team-a,team-b")
        check(args[-1] == "--example-flag=1", "extraArgs appended last")
        check(pod.get("nodeSelector") == {"kubernetes.io/os": "linux"}, "nodeSelector")
        check(pod.get("tolerations", [{}])[0].get("key") == "dedicated", "tolerations")
        check("podAntiAffinity" in pod.get("affinity", {}), "affinity")
        check(pod.get("priorityClassName") == "system-cluster-critical", "priorityClassName")
        check(pod.get("imagePullSecrets") == [{"name": "regcred"}], "imagePullSecrets")
        meta = dep["spec"]["template"]["metadata"]
        check(meta.get("annotations", {}).get("example.test/scrape") == "true", "podAnnotations")
        check(meta["labels"].get("team") == "observability", "podLabels")
    else:
        check(c["image"] == "kinesis-operator:0.1.0", f"image defaults to the appVersion: {c['image']}")
        check(arg_value("--exporter-image") == "kinesis-exporter:0.1.0", "--exporter-image defaults to the appVersion")
        check("--namespaces" not in args, "no --namespaces in cluster-wide mode")
        check(c.get("resources") == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
              f"default resources: {c.get('resources')}")
    check(arg_value("--metrics-address") == "0.0.0.0:8080", "--metrics-address 0.0.0.0:8080")
    check(arg_value("--log-format") == "json", "--log-format json")
    if leader:
        check("--leader-election" in args and arg_value("--leader-election-namespace") == namespace,
              "--leader-election --leader-election-namespace <release namespace>")
    else:
        check("--leader-election" not in args, "no --leader-election with one replica")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
    values = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(values.get("RUST_LOG") == ("info,kinesis_operator=debug" if ns_mode else "info"), f"RUST_LOG {values}")
    if ns_mode:
        check(values.get("HTTPS_PROXY") == "http://proxy.example.test:3128", "extraEnv appended")
    check(env.get("POD_NAME") == "metadata.name" and env.get("POD_NAMESPACE") == "metadata.namespace",
          "POD_NAME/POD_NAMESPACE from the downward API")
    check([(p["name"], p["containerPort"]) for p in c["ports"]] == [("metrics", 8080)], "port metrics 8080")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness /healthz")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness /readyz")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    check(all(pod_labels.get(k) == v for k, v in sel.items()), "Deployment selector matches its pod labels")

    # metrics Service selects the operator's pods
    svcs = find("Service", f"{fullname}-metrics", namespace)
    check(len(svcs) == 1, "metrics Service")
    if svcs:
        svc = svcs[0]
        check(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "Service selects the operator pods")
        check([p["name"] for p in svc["spec"]["ports"]] == ["metrics"], "Service port named metrics")
        mons = find("ServiceMonitor")
        if ns_mode:
            check(len(mons) == 1, "ServiceMonitor rendered when serviceMonitor.enabled")
            if mons:
                m = mons[0]
                labels = svc["metadata"]["labels"]
                check(all(labels.get(k) == v for k, v in m["spec"]["selector"]["matchLabels"].items()),
                      "ServiceMonitor selects the metrics Service")
                check(m["spec"]["namespaceSelector"]["matchNames"] == [namespace], "ServiceMonitor namespaceSelector")
                check(m["spec"]["endpoints"][0]["port"] == "metrics", "ServiceMonitor endpoint port metrics")
                check(m["spec"]["endpoints"][0]["interval"] == "15s", "ServiceMonitor interval")
                check(m["metadata"]["labels"].get("release") == "prometheus", "ServiceMonitor extra labels")
        else:
            check(not mons, "no ServiceMonitor by default")
        pod_monitors = find("PodMonitor")
        if ns_mode:
            check(len(pod_monitors) == 1, "PodMonitor rendered when podMonitor.enabled")
            if pod_monitors:
                spec = pod_monitors[0]["spec"]
                check(spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "kinesis-exporter",
                                                          "app.kubernetes.io/managed-by": "kinesis-operator"},
                      "PodMonitor selects the exporter pods the operator runs")
                check(spec["namespaceSelector"] == {"matchNames": watch}, "PodMonitor in the watched namespaces")
                check(spec["podMetricsEndpoints"][0]["port"] == "metrics"
                      and spec["podMetricsEndpoints"][0]["interval"] == "20s", "PodMonitor endpoint")
        else:
            check(not pod_monitors, "no PodMonitor by default")
        # The alerts and the dashboard are the files the tests run (tests/test_observability.py).
        rules = find("PrometheusRule")
        dashboards = [d for d in find("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
        chart_files = pathlib.Path(__file__).resolve().parents[2] / "charts/kinesis-operator/files"
        if ns_mode:
            check(len(rules) == 1 and rules[0]["spec"] == yaml.safe_load(
                (chart_files / "kinesis-exporter-alerts.yaml").read_text())
                and rules[0]["metadata"]["labels"].get("release") == "prometheus",
                "PrometheusRule rendered with files/kinesis-exporter-alerts.yaml and its labels")
            check(len(dashboards) == 1
                  and dashboards[0]["metadata"]["namespace"] == "monitoring"
                  and dashboards[0]["metadata"]["labels"].get("grafana_dashboard") == "1"
                  and json.loads(dashboards[0]["data"]["kinesis-exporter.json"])
                  == json.loads((chart_files / "kinesis-exporter-dashboard.json").read_text()),
                  "dashboard ConfigMap rendered with files/kinesis-exporter-dashboard.json for the sidecar")
        else:
            check(not rules and not dashboards, "no PrometheusRule or dashboard by default")

# RBAC: least privilege, per mode
# Only the verbs the operator calls: no update anywhere (server-side apply is a patch, and
# create for a new object), delete only on what a spec can stop asking for.
apply_verbs = ("get", "list", "watch", "create", "patch")
expected_rules = sorted([
    (("kinesis.otlp.dev",), ("kinesisexporters",), ("list", "watch")),
    (("kinesis.otlp.dev",), ("kinesisexporters/status",), ("patch",)),
    (("",), ("configmaps", "services"), apply_verbs),
    (("",), ("serviceaccounts",), apply_verbs + ("delete",)),
    (("apps",), ("deployments",), apply_verbs),
    (("policy",), ("poddisruptionbudgets",), apply_verbs + ("delete",)),
    (("",), ("pods",), ("list", "watch")),
    (("events.k8s.io",), ("events",), ("create", "patch")),
])
def rules_of(role):
    return sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"])
for role in find("ClusterRole") + find("Role"):
    for r in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            check("*" not in r.get(field, []), f"{role['kind']}/{role['metadata']['name']}: wildcard in {field}")
sa_subject = {"kind": "ServiceAccount", "name": fullname, "namespace": namespace}
op_roles = [r for r in find("Role") if r["metadata"]["name"] == fullname]
if ns_mode:
    check(not find("ClusterRole") and not find("ClusterRoleBinding"), "no ClusterRole/ClusterRoleBinding in namespaced mode")
    check(sorted(r["metadata"]["namespace"] for r in op_roles) == watch, "one operator Role per watched namespace")
    for ns in watch:
        roles = find("Role", fullname, ns)
        check(len(roles) == 1 and rules_of(roles[0]) == expected_rules, f"Role {fullname} in {ns} has exactly the operator's rules")
        rbs = find("RoleBinding", fullname, ns)
        check(len(rbs) == 1 and rbs[0]["subjects"] == [sa_subject]
              and rbs[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": fullname},
              f"RoleBinding {fullname} in {ns}")
else:
    check(not op_roles, "no namespaced operator Roles in cluster-wide mode")
    crs = find("ClusterRole", fullname)
    check(len(crs) == 1 and rules_of(crs[0]) == expected_rules, "ClusterRole has exactly the operator's rules")
    crbs = find("ClusterRoleBinding", fullname)
    check(len(crbs) == 1 and crbs[0]["subjects"] == [sa_subject]
          and crbs[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": fullname},
          "ClusterRoleBinding binds the operator's ServiceAccount")
le_name = f"{fullname}-leader-election"
le_roles = find("Role", le_name)
if leader:
    check(len(le_roles) == 1 and le_roles[0]["metadata"]["namespace"] == namespace, "Lease Role only in the release namespace")
    if le_roles:
        check(rules_of(le_roles[0]) == [(("coordination.k8s.io",), ("leases",), ("get", "create", "update"))],
              "Lease Role rules: coordination.k8s.io leases get/create/update")
    le_rbs = find("RoleBinding", le_name)
    check(len(le_rbs) == 1 and le_rbs[0]["metadata"]["namespace"] == namespace and le_rbs[0]["subjects"] == [sa_subject],
          "Lease RoleBinding in the release namespace")
else:
    check(not le_roles and not find("RoleBinding", le_name), "no Lease Role without leader election")
# The admission policies bind the operator's own user, with the tenancy values in them.
username = f"system:serviceaccount:{namespace}:{fullname}"
policies = {p["metadata"]["name"]: p for p in find("ValidatingAdmissionPolicy")}
bindings = {b["metadata"]["name"]: b for b in find("ValidatingAdmissionPolicyBinding")}
expected_policies = sorted(f"{fullname}-{part}" for part in ("children", "pods", "services"))
check(sorted(policies) == expected_policies, f"admission policies {sorted(policies)}")
check(sorted(bindings) == expected_policies, f"admission policy bindings {sorted(bindings)}")
for name, policy in policies.items():
    spec = policy["spec"]
    check(spec["failurePolicy"] == "Fail", f"{name}: failurePolicy Fail")
    check(spec["matchConditions"] == [{"name": "is-the-operator",
                                       "expression": f'request.userInfo.username == "{username}"'}],
          f"{name}: matches only the operator's user")
    binding = bindings.get(name, {}).get("spec", {})
    check(binding.get("policyName") == name and binding.get("validationActions") == ["Deny"], f"{name}: Deny binding")
if f"{fullname}-children" in policies:
    excluded = {v["name"]: v["expression"] for v in policies[f"{fullname}-children"]["spec"]["variables"]}["excluded"]
    check(excluded == '["kube-system","kube-public","kube-node-lease"]', f"excluded namespaces {excluded}")
if f"{fullname}-pods" in policies:
    images = {v["name"]: v["expression"] for v in policies[f"{fullname}-pods"]["spec"]["variables"]}["images"]
    wanted = r'["^registry\\.example\\.test/kinesis-exporter:0\\.1\\.0-test$"]' if ns_mode \
        else r'["^kinesis-exporter:0\\.1\\.0$"]'
    check(images == wanted, f"allowed images {images}, expected {wanted}")
if deps:
    check("--allowed-role-arns=arn:*:iam::*:role/{namespace}/*" in args
          and "--excluded-namespaces=kube-system,kube-public,kube-node-lease" in args
          and "--pod-label-prefixes=kinesis.otlp.dev/" in args
          and "--allow-service-account-name" not in args, f"tenancy flags at their defaults: {args}")
    check("--concurrency=32" in args and "--api-qps=200" in args, f"controller flags at their defaults: {args}")
sas = find("ServiceAccount", fullname, namespace)
check(len(sas) == 1, "ServiceAccount")
for d in docs:
    if d["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        check("namespace" in d["metadata"], f"{d['kind']}/{d['metadata']['name']} has an explicit namespace")

if problems:
    for p in problems:
        print(f"  FAILED: {p}", file=sys.stderr)
    sys.exit(1)
kinds = {}
for d in docs:
    kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
print("  objects: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
