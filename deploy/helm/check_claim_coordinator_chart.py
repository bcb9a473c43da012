#!/usr/bin/env python3
"""Chart tests for deploy/helm/claim-coordinator: render value sets with `helm template`, validate every
manifest (and the CustomResourceDefinitions) with `kubernetes-validate --strict`, assert on the rendered
objects (the Roles exactly least privilege: the verbs the coordinator calls, no wildcard), check that bad
values fail with their message, and that every `claim-coordinator run` flag of docs/claim-coordinator.md has
its value.

    check_claim_coordinator_chart.py HELM KUBERNETES_VALIDATE

Needs PyYAML (kubernetes-validate's virtualenv has it; test.sh runs this with that interpreter).
"""

import os
import re
import subprocess
import sys

import yaml

from chart_checks import Chart, check, finish

HELM, KV = sys.argv[1], sys.argv[2]
HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "claim-coordinator")
DOC = os.path.join(HERE, "..", "..", "docs", "claim-coordinator.md")
RELEASE, NAMESPACE = "cc", "ops"
FULLNAME = "cc-claim-coordinator"
# Objects outside the release's namespace (Roles in the hosts' or claims' namespace, the ClusterRole).
FOREIGN = f"{FULLNAME}-{NAMESPACE}"
LEASE = "claim-coordinator-leader"

chart = Chart(HELM, KV, CHART, RELEASE, NAMESPACE)


def render(case, args):
    """{(kind, namespace, name): object}; namespace None for cluster-scoped kinds, the release's when the
    chart leaves it to helm."""
    objects = {}
    for doc in chart.render_docs(case, args):
        scoped = doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
        namespace = doc["metadata"].get("namespace", NAMESPACE) if scoped else None
        key = (doc["kind"], namespace, doc["metadata"]["name"])
        check(key not in objects, f"{case}: {key} rendered twice")
        objects[key] = doc
        if doc["kind"] in ("Role", "ClusterRole"):
            # Least privilege, whatever the values: no wildcard anywhere.
            for rule in doc["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    check("*" not in rule.get(field, []), f"{case}: wildcard in {doc['kind']} {key}: {rule}")
    return objects


def deployment(objects):
    return objects[("Deployment", NAMESPACE, FULLNAME)]


def container(objects):
    (c,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return c


def roles(objects):
    """{(kind, namespace, name): rules} of every Role and ClusterRole."""
    return {k: o["rules"] for k, o in objects.items() if k[0] in ("Role", "ClusterRole")}


# The rules, each from the calls of the coordinator (docs/claim-coordinator.md, "Installing", the table).
GROUP = "claims.leaderelection.dev"


def lease_rules(name=LEASE):
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [name],
         "verbs": ["get", "update", "list", "watch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]


def host_rules(binder=True):
    return [
        {"apiGroups": [GROUP], "resources": ["physicalhosts"],
         "verbs": ["list", "watch", "update"] if binder else ["list", "update"]},
        {"apiGroups": [GROUP], "resources": ["physicalhosts/status"], "verbs": ["update"]},
    ]


def claim_rules(binder=True):
    rules = [
        {"apiGroups": [GROUP], "resources": ["hostclaims"],
         "verbs": ["list", "watch", "update"] if binder else ["list", "update"]},
        {"apiGroups": [GROUP], "resources": ["hostclaims/status"], "verbs": ["update"]},
    ]
    if binder:
        rules.append({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]})
    return rules


def subjects():
    return [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def check_bindings(case, objects):
    """Each Role and ClusterRole has its binding, of the same name and namespace, to the ServiceAccount."""
    for (kind, namespace, name) in roles(objects):
        binding = objects.get((kind + "Binding", namespace, name))
        check(binding is not None, f"{case}: no {kind}Binding for {kind} {namespace}/{name}")
        if binding:
            check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
                  f"{case}: roleRef of {namespace}/{name}: {binding['roleRef']}")
            check(binding["subjects"] == subjects(), f"{case}: subjects of {namespace}/{name}: {binding['subjects']}")
    bindings = [k for k in objects if k[0] in ("RoleBinding", "ClusterRoleBinding")]
    check(len(bindings) == len(roles(objects)), f"{case}: bindings {bindings}")


RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
DEFAULT_ARGS = [
    "run",
    "--enable-claim-coordinator-leader-election=true",
    f"--claim-coordinator-lease-name={LEASE}",
    "--claim-coordinator-lease-duration=15s",
    "--claim-coordinator-renew-deadline=10s",
    "--claim-coordinator-retry-period=2s",
    "--claim-coordinator-processing-interval=1s",
    "--claim-coordinator-mode=auto",
    "--claim-coordinator-max-wait=10m",
    "--admin=0.0.0.0:8080",
]


def test_lint():
    for case, args in [("default", []), ("pool and tenants", ["--set", "hosts.namespace=pool",
                                                              "--set", "claims.allNamespaces=true"])]:
        chart.lint(case, args)


def test_default():
    case = "default"
    objects = render(case, [])
    check(
        sorted(objects)
        == sorted((k, NAMESPACE, FULLNAME)
                  for k in ["Deployment", "ServiceAccount", "Role", "RoleBinding", "Service", "PodDisruptionBudget"]),
        f"{case}: objects {sorted(objects)}",
    )
    if not objects:
        return
    # Lease, hosts and claims in the release's namespace: one Role, exactly the binder's calls.
    check(roles(objects) == {("Role", NAMESPACE, FULLNAME): lease_rules() + host_rules() + claim_rules()},
          f"{case}: Role rules {roles(objects)}")
    check_bindings(case, objects)
    d = deployment(objects)
    spec, pod = d["spec"], d["spec"]["template"]["spec"]
    check(spec["replicas"] == 2, f"{case}: replicas {spec['replicas']}")
    check(spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
          f"{case}: strategy {spec['strategy']}")
    check(pod["serviceAccountName"] == FULLNAME, f"{case}: serviceAccountName")
    check(pod["terminationGracePeriodSeconds"] == 30, f"{case}: terminationGracePeriodSeconds")
    check(pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
          f"{case}: pod securityContext {pod['securityContext']}")
    (tsc,) = pod["topologySpreadConstraints"]
    check(tsc["topologyKey"] == "kubernetes.io/hostname"
          and tsc["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"], f"{case}: topology spread {tsc}")
    c = container(objects)
    check(c["image"] == "claim-coordinator:0.1.0", f"{case}: image {c['image']}")
    check(c["command"] == ["/usr/local/bin/claim-coordinator"], f"{case}: command {c['command']}")
    check(c["args"] == DEFAULT_ARGS, f"{case}: args {c['args']}")
    check(c["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "RUST_LOG", "value": "info"},
    ], f"{case}: env {c['env']}")
    check(c["ports"] == [{"name": "admin", "containerPort": 8080, "protocol": "TCP"}], f"{case}: ports {c['ports']}")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, f"{case}: liveness /healthz")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, f"{case}: readiness /readyz")
    check(c["securityContext"] == RESTRICTED, f"{case}: container securityContext {c['securityContext']}")
    svc = objects[("Service", NAMESPACE, FULLNAME)]["spec"]
    check(svc["ports"] == [{"name": "admin", "port": 8080, "targetPort": "admin", "protocol": "TCP"}]
          and svc["selector"] == spec["selector"]["matchLabels"], f"{case}: Service {svc}")
    pdb = objects[("PodDisruptionBudget", NAMESPACE, FULLNAME)]["spec"]
    check(pdb == {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow", "selector": spec["selector"]},
          f"{case}: PDB {pdb}")


def test_crds():
    """The chart's crds/ (installed by helm before the templates) are the two CustomResourceDefinitions, valid;
    crates/claim-coordinator/tests/crds.rs checks that they are what `claim-coordinator crds` writes, as it
    does for deploy/crds/."""
    case = "crds"
    objects = render(case, ["--include-crds"])
    crds = sorted(name for kind, _, name in objects if kind == "CustomResourceDefinition")
    check(crds == [f"hostclaims.{GROUP}", f"physicalhosts.{GROUP}"], f"{case}: {crds}")
    check(sorted(os.listdir(os.path.join(CHART, "crds"))) == ["hostclaims.yaml", "physicalhosts.yaml"],
          f"{case}: crds/ holds the two files only")


def test_pool_and_tenant_namespaces():
    case = "hosts in a pool namespace, claims in a tenant namespace"
    objects = render(case, ["--set", "hosts.namespace=pool", "--set", "claims.namespace=tenant-a"])
    if not objects:
        return
    check(roles(objects) == {
        ("Role", NAMESPACE, FULLNAME): lease_rules(),
        ("Role", "pool", FOREIGN): host_rules(),
        ("Role", "tenant-a", FOREIGN): claim_rules(),
    }, f"{case}: Roles {roles(objects)}")
    check_bindings(case, objects)
    args = container(objects)["args"]
    check(args == DEFAULT_ARGS + ["--host-namespace=pool", "--claim-namespace=tenant-a"], f"{case}: args {args}")

    case = "claims of every namespace"
    objects = render(case, ["--set", "hosts.namespace=pool", "--set", "claims.allNamespaces=true"])
    if not objects:
        return
    check(roles(objects) == {
        ("Role", NAMESPACE, FULLNAME): lease_rules(),
        ("Role", "pool", FOREIGN): host_rules(),
        ("ClusterRole", None, FOREIGN): claim_rules(),
    }, f"{case}: Roles {roles(objects)}")
    check_bindings(case, objects)
    args = container(objects)["args"]
    check(args == DEFAULT_ARGS + ["--host-namespace=pool", "--all-claim-namespaces"], f"{case}: args {args}")

    case = "hosts and claims together in another namespace"
    objects = render(case, ["--set", "hosts.namespace=pool", "--set", "claims.namespace=pool"])
    if objects:
        check(roles(objects) == {
            ("Role", NAMESPACE, FULLNAME): lease_rules(),
            ("Role", "pool", FOREIGN): host_rules() + claim_rules(),
        }, f"{case}: Roles {roles(objects)}")
        check_bindings(case, objects)


def test_without_binder():
    """Without leader election every replica runs the fallback coordinator: no Lease call, no watch, no Event.
    In mode optimistic the leader runs it: the Lease rules stay."""
    case = "leader election off"
    objects = render(case, ["--set", "leaderElection.enabled=false"])
    if objects:
        check(roles(objects) == {("Role", NAMESPACE, FULLNAME): host_rules(False) + claim_rules(False)},
              f"{case}: Role {roles(objects)}")
        args = container(objects)["args"]
        check(args[1] == "--enable-claim-coordinator-leader-election=false", f"{case}: args {args}")
    case = "mode optimistic"
    objects = render(case, ["--set", "mode=optimistic", "--set", "claims.allNamespaces=true"])
    if objects:
        check(roles(objects) == {("Role", NAMESPACE, FULLNAME): lease_rules() + host_rules(False),
                                 ("ClusterRole", None, FOREIGN): claim_rules(False)},
              f"{case}: Roles {roles(objects)}")
        check("--claim-coordinator-mode=optimistic" in container(objects)["args"], f"{case}: mode passed")


def test_custom():
    case = "every value"
    objects = render(case, [
        "--set", "replicaCount=3",
        "--set", "image.repository=registry.example/claim-coordinator",
        "--set-string", "image.tag=1.2",
        "--set", "leaderElection.leaseName=pool.coordinator",
        "--set", "leaderElection.leaseDuration=30s",
        "--set", "leaderElection.renewDeadline=20s",
        "--set", "leaderElection.retryPeriod=5s",
        "--set", "processingInterval=500ms",
        "--set", "mode=leader",
        "--set", "maxWait=1h",
        "--set", "server=https://apiserver.example:6443",
        "--set", "logLevel=debug",
        "--set", "extraArgs={--kubeconfig=/kube/config}",
        "--set", "admin.port=9090",
        "--set", "admin.bindAddress=::",
        "--set", "serviceMonitor.enabled=true",
        "--set", "terminationGracePeriodSeconds=60",
    ])
    if not objects:
        return
    c = container(objects)
    check(c["image"] == "registry.example/claim-coordinator:1.2", f"{case}: image {c['image']}")
    check(c["args"] == [
        "run",
        "--enable-claim-coordinator-leader-election=true",
        "--claim-coordinator-lease-name=pool.coordinator",
        "--claim-coordinator-lease-duration=30s",
        "--claim-coordinator-renew-deadline=20s",
        "--claim-coordinator-retry-period=5s",
        "--claim-coordinator-processing-interval=500ms",
        "--claim-coordinator-mode=leader",
        "--claim-coordinator-max-wait=1h",
        "--admin=[::]:9090",
        "--server=https://apiserver.example:6443",
        "--kubeconfig=/kube/config",
    ], f"{case}: args {c['args']}")
    check({"name": "RUST_LOG", "value": "debug"} in c["env"], f"{case}: RUST_LOG")
    check(c["ports"][0]["containerPort"] == 9090, f"{case}: port")
    check(deployment(objects)["spec"]["replicas"] == 3, f"{case}: replicas")
    check(deployment(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60, f"{case}: grace")
    # The Role follows the Lease's name.
    check(roles(objects) == {("Role", NAMESPACE, FULLNAME): lease_rules("pool.coordinator") + host_rules() + claim_rules()},
          f"{case}: Role {roles(objects)}")
    sm = objects.get(("ServiceMonitor", NAMESPACE, FULLNAME))
    check(sm is not None and sm["spec"]["endpoints"][0]["port"] == "admin"
          and sm["spec"]["endpoints"][0]["path"] == "/metrics", f"{case}: ServiceMonitor {sm}")


def test_external_rbac_and_one_replica():
    case = "existing service account, one replica"
    objects = render(case, ["--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                            "--set", "serviceAccount.name=ops", "--set", "replicaCount=1",
                            "--set", "claims.allNamespaces=true"])
    if objects:
        check(sorted(objects) == sorted([("Deployment", NAMESPACE, FULLNAME), ("Service", NAMESPACE, FULLNAME)]),
              f"{case}: objects {sorted(objects)}")
        check(deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "ops", f"{case}: name")


def test_notes():
    print("case NOTES.txt: helm install --dry-run=client")
    for args, lines in [
        ([], [f"kubectl -n {NAMESPACE} get lease {LEASE} -o jsonpath='{{.spec.holderIdentity}}",
              f"kubectl -n {NAMESPACE} get hostclaims", f"kubectl -n {NAMESPACE} port-forward deploy/{FULLNAME} 8080"]),
        (["--set", "hosts.namespace=pool", "--set", "claims.allNamespaces=true"],
         ["kubectl -n pool get physicalhosts", "kubectl --all-namespaces get hostclaims"]),
    ]:
        r = subprocess.run([HELM, "install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client", *args],
                           capture_output=True, text=True)
        notes = r.stdout.split("NOTES:", 1)[-1]
        for line in lines:
            check(r.returncode == 0 and line in notes, f"NOTES.txt {args}: says {line!r}: {notes}{r.stderr}")


def test_every_flag_has_a_value():
    """Every flag of docs/claim-coordinator.md's `claim-coordinator run` table (crates/lab/tests/docs.rs checks
    that the table has every flag of `run --help`) is named in values.yaml, by the value that sets it or by
    the comment that says why none does."""
    print("case flags: every `run` flag of docs/claim-coordinator.md is in values.yaml")
    with open(DOC) as f:
        section = f.read().split("## `claim-coordinator run`", 1)[-1].split("\n## ", 1)[0]
    flags = set(re.findall(r"^\| `(--[a-z-]+)", section, re.M))
    check(len(flags) >= 15, f"flags: the table of docs/claim-coordinator.md lists {sorted(flags)}")
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = f.read()
    missing = sorted(f for f in flags if not re.search(re.escape(f) + r"\b(?!-)", values))
    check(not missing, f"flags: not in values.yaml: {missing}")


def test_negative():
    schema = "values don't meet the specifications of the schema"
    cases = [
        ("replicaCount 0", ["--set", "replicaCount=0"], "at '/replicaCount': minimum"),
        ("unknown mode", ["--set", "mode=racing"], "at '/mode'"),
        ("unknown key", ["--set", "replicas=3"], "additional properties 'replicas' not allowed"),
        ("duration a number", ["--set", "processingInterval=1"], "at '/processingInterval': got number, want string"),
        ("malformed duration", ["--set", "maxWait=10 minutes"], "at '/maxWait'"),
        ("lease name", ["--set", "leaderElection.leaseName=My_Lease"], "at '/leaderElection/leaseName'"),
        ("namespace not a label", ["--set", "hosts.namespace=a.b"], "at '/hosts/namespace'"),
        ("server not a URL", ["--set", "server=apiserver:6443"], "at '/server'"),
        ("leader election not a boolean", ["--set-string", "leaderElection.enabled=yes"], "at '/leaderElection/enabled'"),
        ("lease <= renew", ["--set", "leaderElection.renewDeadline=15s"],
         "leaderElection.leaseDuration (15s) must be greater than leaderElection.renewDeadline (15s)"),
        ("renew <= 1.2 x retry", ["--set", "leaderElection.retryPeriod=9s"],
         "leaderElection.renewDeadline (10s) must be greater than 1.2 x leaderElection.retryPeriod (9s)"),
        ("retry under 100ms", ["--set", "leaderElection.retryPeriod=50ms"], "must be at least 100ms"),
        ("lease not whole seconds", ["--set", "leaderElection.leaseDuration=15500ms"],
         "leaderElection.leaseDuration (15500ms) must be a whole number of seconds"),
        ("zero processing interval", ["--set", "processingInterval=0s"], "processingInterval (0s) must be greater than 0"),
        ("zero max wait", ["--set", "maxWait=0m"], "maxWait (0m) must be greater than 0"),
        ("both claim namespace flags", ["--set", "claims.namespace=t", "--set", "claims.allNamespaces=true"],
         "claims.allNamespaces and claims.namespace (t) exclude each other"),
        ("ServiceMonitor without Service", ["--set", "serviceMonitor.enabled=true", "--set", "service.enabled=false"],
         "serviceMonitor.enabled needs service.enabled"),
    ]
    for case, args, message in cases:
        r = chart.must_fail(case, args, message)
        if message.startswith("at '") or "additional properties" in message:
            check(schema in r.stderr, f"{case}: rejected by values.schema.json")
    # The boundaries are allowed.
    render("retry period just under renew / 1.2", ["--set", "leaderElection.retryPeriod=8s"])
    render("compound durations", ["--set", "leaderElection.leaseDuration=1m", "--set", "leaderElection.renewDeadline=45s",
                                  "--set", "leaderElection.retryPeriod=1s500ms", "--set", "maxWait=1h30m"])


def test_shared_helpers():
    """The duration parser is the leader-elect chart's, to the character (a Helm chart cannot include
    another's templates without a dependency): the two charts read durations the same way."""
    print("case helpers: claim-coordinator.millis is leader-elect.millis")

    def millis(chart_name):
        with open(os.path.join(HERE, chart_name, "templates", "_helpers.tpl")) as f:
            text = f.read()
        m = re.search(r'\{\{- define "' + chart_name + r'\.millis" -\}\}\n(.*?\n\{\{- end \}\}\n)', text, re.S)
        return m and m.group(1)

    le, cc = millis("leader-elect"), millis("claim-coordinator")
    check(le is not None and le == cc, "helpers: the millis defines differ")


def main():
    test_lint()
    test_default()
    test_crds()
    test_pool_and_tenant_namespaces()
    test_without_binder()
    test_custom()
    test_external_rbac_and_one_replica()
    test_notes()
    test_every_flag_has_a_value()
    test_negative()
    test_shared_helpers()
    finish("claim-coordinator chart tests")


if __name__ == "__main__":
    main()
