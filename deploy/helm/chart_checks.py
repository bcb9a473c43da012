"""What the chart tests share (check_chart.py, check_claim_coordinator_chart.py): failures collected by
`check`, and a chart rendered with `helm template`, every manifest validated with `kubernetes-validate
--strict`, value sets that must fail with their message.

Needs PyYAML (kubernetes-validate's virtualenv has it; test.sh runs the tests with that interpreter).
"""

import os
import subprocess
import sys
import tempfile

import yaml

KUBE_VERSION = "1.33"

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"  FAIL {what}")


def finish(name):
    """Prints the verdict and exits 1 when a check failed."""
    if failures:
        print(f"{name}: {len(failures)} failure(s)")
        sys.exit(1)
    print(f"{name}: all passed")


class Chart:
    """The chart at `path`, released as `release` in `namespace`."""

    def __init__(self, helm, kv, path, release, namespace):
        self.helm, self.kv, self.path = helm, kv, path
        self.release, self.namespace = release, namespace

    def template(self, args):
        return subprocess.run(
            [self.helm, "template", self.release, self.path, "--namespace", self.namespace, *args],
            capture_output=True,
            text=True,
        )

    def validate(self, text, case):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        try:
            r = subprocess.run(
                [self.kv, "--strict", "-k", KUBE_VERSION, "--quiet", f.name], capture_output=True, text=True
            )
        finally:
            os.unlink(f.name)
        check(r.returncode == 0, f"{case}: kubernetes-validate --strict -k {KUBE_VERSION}: {r.stdout}{r.stderr}")

    def render_docs(self, case, args):
        """Renders, validates, and returns the objects, in order."""
        print(f"case {case}: helm template {' '.join(args)}")
        r = self.template(args)
        if r.returncode != 0:
            check(False, f"{case}: helm template failed: {r.stderr}")
            return []
        self.validate(r.stdout, case)
        return [doc for doc in yaml.safe_load_all(r.stdout) if doc]

    def render(self, case, args):
        """Renders, validates, and returns {(kind, name): object}."""
        return {(doc["kind"], doc["metadata"]["name"]): doc for doc in self.render_docs(case, args)}

    def must_fail(self, case, args, message):
        print(f"case {case} (must fail): helm template {' '.join(args)}")
        r = self.template(args)
        check(r.returncode != 0, f"{case}: rendered, but must fail with {message!r}")
        check(message in r.stderr, f"{case}: error does not say {message!r}: {r.stderr.strip()}")
        return r

    def lint(self, case, args):
        print(f"case lint {case}: helm lint --strict {' '.join(args)}")
        r = subprocess.run([self.helm, "lint", "--strict", self.path, *args], capture_output=True, text=True)
        check(r.returncode == 0, f"lint {case}: {r.stdout}{r.stderr}")
