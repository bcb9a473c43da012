#!/usr/bin/env python3
"""Chart tests for deploy/helm/leader-elect: render value sets with `helm template`, validate every manifest
with `kubernetes-validate --strict`, assert on the rendered objects, check that bad values fail with
their message, and unit-test the alert rules of docs/metrics.md with promtool at the chart's scrape interval.

    check_chart.py HELM KUBERNETES_VALIDATE PROMTOOL

Needs PyYAML (kubernetes-validate's virtualenv has it; test.sh runs this with that interpreter).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

from chart_checks import KUBE_VERSION, Chart, check, finish

HELM, KV, PROMTOOL = sys.argv[1], sys.argv[2], sys.argv[3]
HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "leader-elect")
METRICS_DOC = os.path.join(HERE, "..", "..", "docs", "metrics.md")
RULES_TEST = os.path.join(HERE, "alert-rules.test.yaml")
RELEASE, NAMESPACE = "job", "jobs"
FULLNAME = "job-leader-elect"

chart = Chart(HELM, KV, CHART, RELEASE, NAMESPACE)
helm_template, render, must_fail = chart.template, chart.render, chart.must_fail


def deployment(objects):
    return objects[("Deployment", FULLNAME)]


def container(objects):
    (c,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return c


def kinds(objects):
    return sorted(objects)


LEASE_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [FULLNAME],
        "verbs": ["get", "update", "list", "watch"],
    },
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]
EVENTS_RULE = {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
DOWNWARD_ENV = [
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
]


def test_lint():
    for case, args in [("default", []), ("wrap", WRAP)]:
        chart.lint(case, args)


def test_validator_rejects():
    # The validator itself: an unknown field must fail, or every "valid" above proves nothing.
    print("case validator: an unknown field in a Deployment is rejected")
    bad = helm_template([]).stdout.replace("  replicas: 2\n", "  replicas: 2\n  replicaz: 2\n", 1)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(bad)
    try:
        r = subprocess.run([KV, "--strict", "-k", KUBE_VERSION, "--quiet", f.name], capture_output=True)
    finally:
        os.unlink(f.name)
    check(r.returncode != 0, "validator: accepted a Deployment with an unknown field")


def test_default():
    objects = render("default", [])
    check(
        kinds(objects)
        == sorted(
            (k, FULLNAME)
            for k in ["Deployment", "ServiceAccount", "Role", "RoleBinding", "Service", "PodDisruptionBudget"]
        ),
        f"default: objects {kinds(objects)}",
    )
    if not objects:
        return
    d = deployment(objects)
    spec, pod = d["spec"], d["spec"]["template"]["spec"]
    check(spec["replicas"] == 2, "default: replicas 2")
    check(
        spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        f"default: strategy {spec['strategy']}",
    )
    check(pod["serviceAccountName"] == FULLNAME, "default: serviceAccountName")
    # 4 s grace (15 - 10 - 1) + 5 s release request (10 s / 2) + 2 s
    check(pod["terminationGracePeriodSeconds"] == 11, f"default: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}")
    check("initContainers" not in pod and "volumes" not in pod, "default: no initContainer or volume in image mode")
    check(
        pod["securityContext"]
        == {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        f"default: pod securityContext {pod['securityContext']}",
    )
    (tsc,) = pod["topologySpreadConstraints"]
    check(
        tsc["topologyKey"] == "kubernetes.io/hostname" and tsc["whenUnsatisfiable"] == "ScheduleAnyway"
        and tsc["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"],
        f"default: topology spread {tsc}",
    )
    c = container(objects)
    check(c["image"] == "leader-elect:0.1.0", f"default: image {c['image']}")
    check(c["command"] == ["/usr/local/bin/leader-elect"], f"default: command {c['command']}")
    check(
        c["args"]
        == [
            "run",
            f"--lease-name={FULLNAME}",
            "--lease-duration=15s",
            "--renew-deadline=10s",
            "--retry-period=2s",
            "--on-child-exit=release",
            "--admin-listen=0.0.0.0:8080",
            "--log-format=json",
        ],
        f"default: args {c['args']}",
    )
    check(c["env"] == DOWNWARD_ENV, f"default: env {c['env']}")
    check(c["ports"] == [{"name": "admin", "containerPort": 8080, "protocol": "TCP"}], f"default: ports {c['ports']}")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "default: liveness /healthz")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "default: readiness /readyz")
    check(c["securityContext"] == RESTRICTED, f"default: container securityContext {c['securityContext']}")
    check(c["resources"]["requests"] and c["resources"]["limits"], "default: resources")

    check(objects[("Role", FULLNAME)]["rules"] == LEASE_RULES, f"default: Role rules {objects[('Role', FULLNAME)]['rules']}")
    rb = objects[("RoleBinding", FULLNAME)]
    check(rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}, "default: roleRef")
    check(rb["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}], f"default: subjects {rb['subjects']}")
    svc = objects[("Service", FULLNAME)]["spec"]
    check(svc["ports"] == [{"name": "admin", "port": 8080, "targetPort": "admin", "protocol": "TCP"}], "default: Service port")
    check(svc["selector"] == spec["selector"]["matchLabels"], "default: Service selector")
    pdb = objects[("PodDisruptionBudget", FULLNAME)]["spec"]
    check(
        pdb == {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow", "selector": spec["selector"]},
        f"default: PDB {pdb}",
    )


WRAP = [
    "--set", "mode=wrap",
    "--set", "wrap.image.repository=registry.example/my-job",
    "--set-string", "wrap.image.tag=1.2",
    "--set", "command={my-job,--flag,a b}",
]


def test_wrap():
    objects = render("wrap", WRAP)
    if not objects:
        return
    pod = deployment(objects)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    check(init["image"] == "leader-elect:0.1.0", f"wrap: init image {init['image']}")
    check(
        init["command"] == ["/usr/local/bin/leader-elect", "install", "/le"],
        f"wrap: init command {init['command']}",
    )
    check(init["volumeMounts"] == [{"name": "leader-elect", "mountPath": "/le"}], "wrap: init mount")
    check(init["securityContext"] == RESTRICTED, "wrap: init securityContext")
    check(pod["volumes"] == [{"name": "leader-elect", "emptyDir": {"sizeLimit": "128Mi"}}], f"wrap: volumes {pod['volumes']}")
    c = container(objects)
    check(c["image"] == "registry.example/my-job:1.2", f"wrap: image {c['image']}")
    check(c["command"] == ["/le/leader-elect"], f"wrap: command {c['command']}")
    check(c["args"][0] == "run" and c["args"][-4:] == ["--", "my-job", "--flag", "a b"], f"wrap: args {c['args']}")
    check(c["volumeMounts"] == [{"name": "leader-elect", "mountPath": "/le", "readOnly": True}], "wrap: mount read-only")
    check(c["env"] == DOWNWARD_ENV and c["securityContext"] == RESTRICTED, "wrap: env and securityContext")


def test_events():
    objects = render("events", ["--set", "events.enabled=true"])
    if not objects:
        return
    check(objects[("Role", FULLNAME)]["rules"] == LEASE_RULES + [EVENTS_RULE], "events: Role has the events rule")
    check("--events" in container(objects)["args"], "events: --events passed")


COORDINATED_RULE = {"apiGroups": ["coordination.k8s.io"], "resources": ["leasecandidates"],
                    "verbs": ["get", "create", "update", "delete", "list", "watch"]}


def test_coordinated():
    objects = render("coordinated", ["--set", "coordinated.enabled=true", "--set", "coordinated.binaryVersion=1.34.0",
                                     "--set", "coordinated.emulationVersion=1.33.0"])
    if not objects:
        return
    check(objects[("Role", FULLNAME)]["rules"] == LEASE_RULES + [COORDINATED_RULE],
          "coordinated: Role has the leasecandidates rule")
    args = container(objects)["args"]
    check(["--coordinated", "--binary-version=1.34.0", "--emulation-version=1.33.0"] == [
        a for a in args if a.startswith(("--coordinated", "--binary-version", "--emulation-version"))],
          f"coordinated: flags passed: {args}")
    objects = render("coordinated, default versions", ["--set", "coordinated.enabled=true"])
    if objects:
        args = container(objects)["args"]
        check("--coordinated" in args and not any(a.startswith(("--binary-version", "--emulation-version")) for a in args),
              f"coordinated: versions left to leader-elect: {args}")
    objects = render("not coordinated", [])
    if objects:
        check(COORDINATED_RULE not in objects[("Role", FULLNAME)]["rules"], "not coordinated: no leasecandidates rule")
        check("--coordinated" not in container(objects)["args"], "not coordinated: no --coordinated")


def test_single_replica():
    objects = render("one replica", ["--set", "replicaCount=1"])
    check(objects and ("PodDisruptionBudget", FULLNAME) not in objects, "one replica: no PDB")
    objects = render("pdb disabled", ["--set", "podDisruptionBudget.enabled=false"])
    check(objects and ("PodDisruptionBudget", FULLNAME) not in objects, "pdb disabled: no PDB")


def test_external_rbac():
    objects = render(
        "existing service account",
        ["--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops"],
    )
    if not objects:
        return
    check(
        not any(k in ("Role", "RoleBinding", "ServiceAccount") for k, _ in objects),
        f"existing service account: no RBAC objects {kinds(objects)}",
    )
    check(deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "ops", "existing service account: name")


def test_custom():
    objects = render(
        "custom timings and lease",
        [
            "--set", "leaderElection.leaseName=my.lease",
            "--set", "leaderElection.leaseDuration=30s",
            "--set", "leaderElection.renewDeadline=20s",
            "--set", "leaderElection.retryPeriod=5s",
            "--set", "leaderElection.gracePeriod=7s",
            "--set", "leaderElection.onChildExit=restart",
            "--set", "admin.port=9090",
            "--set", "admin.bindAddress=::",
            "--set", "logFormat=text",
            "--set", "serviceMonitor.enabled=true",
            "--set", "nodeSelector.pool=jobs",
            "--set", "tolerations[0].key=dedicated",
            "--set", "tolerations[0].operator=Exists",
            "--kube-version", "1.33.0",
        ],
    )
    if not objects:
        return
    pod = deployment(objects)["spec"]["template"]["spec"]
    c = container(objects)
    for arg in [
        "--lease-name=my.lease", "--lease-duration=30s", "--renew-deadline=20s", "--retry-period=5s",
        "--grace-period=7s", "--on-child-exit=restart", "--admin-listen=[::]:9090", "--log-format=text",
    ]:
        check(arg in c["args"], f"custom: {arg} in args {c['args']}")
    # 7 s grace + 10 s release request (20 s / 2) + 2 s
    check(pod["terminationGracePeriodSeconds"] == 19, f"custom: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}")
    check(objects[("Role", FULLNAME)]["rules"][0]["resourceNames"] == ["my.lease"], "custom: Role names the lease")
    check(c["ports"][0]["containerPort"] == 9090, "custom: admin port")
    check(pod["nodeSelector"] == {"pool": "jobs"}, "custom: nodeSelector")
    check(pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}], "custom: tolerations")
    sm = objects.get(("ServiceMonitor", FULLNAME))
    check(sm is not None and sm["spec"]["endpoints"][0]["port"] == "admin"
          and sm["spec"]["endpoints"][0]["path"] == "/metrics", "custom: ServiceMonitor on the admin port")


FENCING = ["--set", "fencing.enabled=true", "--set", "fencing.resources={apps/v1/deployments,v1/configmaps}"]
FENCING_NAME = f"{FULLNAME}.{NAMESPACE}.fencing.leaderelection.dev"


def fencing_rules(verbs):
    return [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": verbs},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs},
    ]


def test_fencing():
    with open(os.path.join(CHART, "files", "fencing-validations.yaml")) as f:
        generated = yaml.safe_load(f)
    writes = ["get", "list", "watch", "create", "update", "patch"]
    objects = render("fencing", FENCING)
    policy = objects.get(("ValidatingAdmissionPolicy", FENCING_NAME))
    binding = objects.get(("ValidatingAdmissionPolicyBinding", FENCING_NAME))
    check(policy is not None and binding is not None, f"fencing: policy and binding {kinds(objects)}")
    if policy is None or binding is None:
        return
    spec = policy["spec"]
    check(spec["failurePolicy"] == "Fail", "fencing: failurePolicy Fail")
    check(spec["paramKind"] == {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}, f"fencing: paramKind {spec['paramKind']}")
    check(
        spec["matchConstraints"]["resourceRules"]
        == [
            {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]},
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]},
        ],
        f"fencing: resourceRules {spec['matchConstraints']}",
    )
    check(spec["validations"] == generated["lenient"], "fencing: the generated lenient validations, unchanged by rendering")
    check(
        binding["spec"]
        == {
            "policyName": FENCING_NAME,
            "validationActions": ["Deny"],
            "paramRef": {"name": FULLNAME, "namespace": NAMESPACE, "parameterNotFoundAction": "Allow"},
        },
        f"fencing: binding {binding['spec']}",
    )
    check(objects[("Role", FULLNAME)]["rules"] == LEASE_RULES + fencing_rules(writes), "fencing: Role grants writes on the guarded resources")

    objects = render("fencing strict, namespaces", FENCING + ["--set", "fencing.strict=true", "--set", "fencing.namespaces={team-a,jobs}"])
    policy = objects.get(("ValidatingAdmissionPolicy", FENCING_NAME))
    binding = objects.get(("ValidatingAdmissionPolicyBinding", FENCING_NAME))
    if policy is None or binding is None:
        check(False, f"fencing strict: policy and binding {kinds(objects)}")
        return
    check(policy["spec"]["validations"] == generated["strict"], "fencing strict: the generated strict validations")
    check(binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny", "fencing strict: Deny without the Lease")
    check(
        binding["spec"]["matchResources"]
        == {"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "jobs"]}]}},
        f"fencing strict: namespaceSelector {binding['spec'].get('matchResources')}",
    )
    # The release's own namespace is covered by the main Role; another gets a Role and RoleBinding of its own.
    role = objects.get(("Role", f"{FULLNAME}-fencing"))
    check(role is not None and role["metadata"]["namespace"] == "team-a" and role["rules"] == fencing_rules(writes),
          f"fencing strict: Role in team-a {role}")
    rb = objects.get(("RoleBinding", f"{FULLNAME}-fencing"))
    check(rb is not None and rb["metadata"]["namespace"] == "team-a"
          and rb["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}],
          f"fencing strict: RoleBinding in team-a {rb}")

    objects = render("fencing without grants", FENCING + ["--set", "fencing.verbs=null"])
    if objects:
        check(objects[("Role", FULLNAME)]["rules"] == LEASE_RULES, "fencing without grants: Role unchanged")


def test_notes():
    print("case NOTES.txt: helm install --dry-run=client")
    r = subprocess.run(
        [HELM, "install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client"], capture_output=True, text=True
    )
    notes = r.stdout.split("NOTES:", 1)[-1]
    for line in [
        f"kubectl -n {NAMESPACE} get lease {FULLNAME} -o jsonpath='{{.spec.holderIdentity}}",
        f"leader-elect status --namespace {NAMESPACE} --lease-name {FULLNAME}",
        f"kubectl -n {NAMESPACE} delete lease {FULLNAME}",
        f"kubectl -n {NAMESPACE} scale deploy/{FULLNAME} --replicas=0",
    ]:
        check(r.returncode == 0 and line in notes, f"NOTES.txt: says {line!r}: {r.stdout[-2000:]}{r.stderr}")


def test_alert_rules():
    """The alert rules of docs/metrics.md hold at the ServiceMonitor's default scrape interval: promtool runs
    alert-rules.test.yaml (written for that interval) over them."""
    print("case alert rules: promtool test rules at the ServiceMonitor's interval")
    with open(os.path.join(CHART, "values.yaml")) as f:
        interval = yaml.safe_load(f)["serviceMonitor"]["interval"]
    with open(RULES_TEST) as f:
        tests = yaml.safe_load(f)
    check(
        {t["interval"] for t in tests["tests"]} == {interval} and tests["evaluation_interval"] == interval,
        f"alert rules: {RULES_TEST} is written for serviceMonitor.interval {interval}: check the rules' windows "
        "at the new interval and update the tests",
    )
    with open(METRICS_DOC) as f:
        section = f.read().split("## Alert rules", 1)[-1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    check(block is not None, "alert rules: no ```yaml block under '## Alert rules' in docs/metrics.md")
    if block is None:
        return
    rules = yaml.safe_load(block.group(1))
    # When an alert fires is under test, not its text.
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "rules.yaml"), "w") as f:
            yaml.safe_dump(rules, f)
        shutil.copy(RULES_TEST, d)
        for args in (["check", "rules", "rules.yaml"], ["test", "rules", os.path.basename(RULES_TEST)]):
            r = subprocess.run([PROMTOOL, *args], cwd=d, capture_output=True, text=True)
            check(r.returncode == 0, f"alert rules: promtool {' '.join(args)}: {r.stdout}{r.stderr}")


def test_negative():
    schema = "values don't meet the specifications of the schema"
    cases = [
        ("replicaCount 0", ["--set", "replicaCount=0"], "at '/replicaCount': minimum"),
        ("replicaCount a string", ["--set-string", "replicaCount=two"], "at '/replicaCount': got string, want integer"),
        ("leaseDuration a number", ["--set", "leaderElection.leaseDuration=15"], "at '/leaderElection/leaseDuration': got number, want string"),
        ("malformed duration", ["--set", "leaderElection.retryPeriod=2 seconds"], "at '/leaderElection/retryPeriod'"),
        ("malformed lease name", ["--set", "leaderElection.leaseName=My_Lease"], "at '/leaderElection/leaseName'"),
        ("unknown mode", ["--set", "mode=sidecar"], "at '/mode'"),
        ("unknown key", ["--set", "replicas=3"], "additional properties 'replicas' not allowed"),
        ("events not a boolean", ["--set-string", "events.enabled=yes"], "at '/events/enabled'"),
        ("binaryVersion with a v", ["--set", "coordinated.binaryVersion=v1.34.0"], "at '/coordinated/binaryVersion'"),
        ("lease <= renew", ["--set", "leaderElection.renewDeadline=15s"],
         "leaderElection.leaseDuration (15s) must be greater than leaderElection.renewDeadline (15s)"),
        ("renew <= 1.2 x retry", ["--set", "leaderElection.retryPeriod=9s"],
         "leaderElection.renewDeadline (10s) must be greater than 1.2 x leaderElection.retryPeriod (9s)"),
        ("lease not whole seconds", ["--set", "leaderElection.leaseDuration=15500ms"],
         "leaderElection.leaseDuration (15500ms) must be a whole number of seconds"),
        ("zero retry", ["--set", "leaderElection.retryPeriod=0s"], "must each be greater than 0"),
        ("grace period too long", ["--set", "leaderElection.gracePeriod=4001ms"],
         "leaderElection.gracePeriod (4001ms) must fit in leaseDuration - renewDeadline"),
        ("termination grace too short", ["--set", "terminationGracePeriodSeconds=10"],
         "terminationGracePeriodSeconds (10) must be at least 11"),
        ("wrap without image", ["--set", "mode=wrap", "--set", "command={x}"], "mode wrap needs wrap.image.repository"),
        ("wrap without command", ["--set", "mode=wrap", "--set", "wrap.image.repository=x"], "mode wrap needs command"),
        ("ServiceMonitor without Service", ["--set", "serviceMonitor.enabled=true", "--set", "service.enabled=false"],
         "serviceMonitor.enabled needs service.enabled"),
        ("fencing without resources", ["--set", "fencing.enabled=true"], "fencing.enabled needs fencing.resources"),
        ("fencing a subresource", FENCING[:2] + ["--set", "fencing.resources={apps/v1/deployments/status}"],
         "at '/fencing/resources/0'"),
        ("fencing the Leases", FENCING[:2] + ["--set", "fencing.resources={coordination.k8s.io/v1/leases}"],
         "Leases cannot be guarded"),
        ("fencing namespace not a label", FENCING + ["--set", "fencing.namespaces={a.b}"], "at '/fencing/namespaces/0'"),
    ]
    for case, args, message in cases:
        must_fail(case, args, message)
        if message.startswith("at '") or "additional properties" in message:
            r = helm_template(args)
            check(schema in r.stderr, f"{case}: rejected by values.schema.json")
    # The boundary is allowed: exactly the stop window, and 1.2 x retry just below renew.
    render("grace period at the boundary", ["--set", "leaderElection.gracePeriod=4s"])
    render("retry period just under renew / 1.2", ["--set", "leaderElection.retryPeriod=8s"])
    render("compound durations", ["--set", "leaderElection.leaseDuration=1m", "--set", "leaderElection.renewDeadline=45s",
                                  "--set", "leaderElection.retryPeriod=1s500ms"])


def main():
    test_lint()
    test_validator_rejects()
    test_default()
    test_wrap()
    test_events()
    test_coordinated()
    test_single_replica()
    test_external_rbac()
    test_custom()
    test_fencing()
    test_notes()
    test_alert_rules()
    test_negative()
    finish("leader-elect chart tests")


if __name__ == "__main__":
    main()
