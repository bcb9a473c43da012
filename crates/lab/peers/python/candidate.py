"""A candidate over the Python Kubernetes client's leader election (client-go's algorithm) for
`leader-elect-lab peers`: prints `started leading` on stdout when it acquires the Lease and `stopped
leading` when it stops renewing. The library has no release: SIGTERM ends the process (Python's default),
and the followers take over once the Lease expires.

Needs `pip install kubernetes`.
"""

import argparse

from kubernetes import config
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, help="the kubeconfig naming the API server (and its CA)")
    parser.add_argument("--identity", required=True, help="this candidate's holderIdentity")
    parser.add_argument("--lease-name", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--lease-duration-seconds", type=int, default=15)
    parser.add_argument("--renew-deadline-seconds", type=int, default=10)
    parser.add_argument("--retry-period-seconds", type=int, default=2)
    args = parser.parse_args()

    config.load_kube_config(config_file=args.kubeconfig)
    lock = LeaseLock(args.lease_name, args.namespace, args.identity)
    election = electionconfig.Config(
        lock,
        lease_duration=args.lease_duration_seconds,
        renew_deadline=args.renew_deadline_seconds,
        retry_period=args.retry_period_seconds,
        onstarted_leading=lambda: print("started leading", flush=True),
        onstopped_leading=lambda: print("stopped leading", flush=True),
    )
    leaderelection.LeaderElection(election).run()


if __name__ == "__main__":
    main()
