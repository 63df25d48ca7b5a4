"""Benchmark: reap.yml on a lab of many Nomad clients with many endpoints each.

    bash scripts/setup.sh
    .venv/bin/python -m benchmarks.bench_reap [--nodes 100] [--endpoints 100] [--forks 25] [--strategy linear]

Builds a lab (Cilium 1.16, Consul kvstore) where every node has N running allocations whose
endpoints still carry no labels, plus a stale kvstore node, then runs reap.yml phase by phase
(policy, endpoints, GC), then twice in full (the GC's confirming pass, then a converged run), and prints wall time, the Ansible forks/strategy
used, and the requests each phase made per service. Figures, not a test: nothing is asserted.
"""

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks._env import prepare

prepare()
from tests.lab.lab import Lab  # noqa: E402
from tests.lab.scenarios import POLICY_KEY, POLICY_V2  # noqa: E402

PHASES = (("policy", "netreap_policy"), ("endpoints", "netreap_endpoints"), ("gc", "netreap_gc"))


def build_lab(nodes, endpoints):
    state_dir = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
    lab = Lab(state_dir, nodes=nodes, cilium="1.16", kvstore="consul", scenario="clean").start()
    for node in lab.nodes:
        base = node.ipv4_range.rsplit(".", 1)[0]
        for k in range(endpoints):
            ip = "%s.%d" % (base, 2 + k % 250) if k < 250 else None
            alloc = lab.nomad.add_allocation(node.node_id, "job-%d" % (k % 10), task_group="g",
                                             job_meta={"team": "t%d" % (k % 3)}, address=ip)
            node.cilium.add_endpoint(container_id=alloc["ID"], ipv4=ip, container_name=alloc["Name"])
    lab.kv.write_node("retired-node", "198.51.100.1", "10.250.0.0/24")
    lab.consul.kv_put(POLICY_KEY, json.dumps(POLICY_V2))
    return lab, state_dir


def run_reap(lab, forks, strategy, tags=None, extra=()):
    env = dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_FORKS=str(forks),
               ANSIBLE_STRATEGY=strategy, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_DISPLAY_OK_HOSTS="false", ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
    env.update(lab.env())
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
           "-i", os.path.join(lab.state_dir, "inventory.yml"), "netreap.cilium.reap",
           "-e", "netreap_node_gc_min_age=0", "-e", "netreap_identity_gc_min_age=0"] + list(extra)
    if tags:
        cmd += ["--tags", tags]
    lab.log.clear()
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("reap.yml failed (rc %s)" % proc.returncode)
    counts = collections.Counter()
    for entry in lab.log.entries():
        service = entry["service"]
        if service.startswith("nomad-agent:"):
            service = "nomad (client agents)"
        elif service not in ("consul", "nomad"):
            service = "cilium agents"
        counts["%s %s" % (service, entry["method"])] += 1
    return elapsed, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--forks", type=int, default=25)
    parser.add_argument("--strategy", default="linear", choices=("linear", "free"))
    args = parser.parse_args()
    print("building a lab: %d nodes x %d endpoints (+ host and health endpoints each)"
          % (args.nodes, args.endpoints))
    lab, state_dir = build_lab(args.nodes, args.endpoints)
    try:
        print("ansible: forks=%d strategy=%s, Python %s" % (args.forks, args.strategy,
                                                            sys.version.split()[0]))
        print("\n%-28s %9s %9s  %s" % ("phase", "wall (s)", "requests", "per service and method"))
        total_requests = 0
        for phase, tag in PHASES:
            elapsed, counts = run_reap(lab, args.forks, args.strategy, tags=tag)
            requests = sum(counts.values())
            total_requests += requests
            detail = ", ".join("%s=%d" % item for item in sorted(counts.items()))
            print("%-28s %9.1f %9d  %s" % ("first run: " + phase, elapsed, requests, detail))
        print("%-28s %9s %9d" % ("first run: all phases", "", total_requests))
        for label in ("second run (GC sweep)", "third run (converged)"):
            elapsed, counts = run_reap(lab, args.forks, args.strategy)
            detail = ", ".join("%s=%d" % item for item in sorted(counts.items()))
            print("%-28s %9.1f %9d  %s" % (label, elapsed, sum(counts.values()), detail))
        per_node = sum(v for k, v in counts.items() if k.startswith(("cilium", "nomad (client"))) / args.nodes
        print("\nconverged run: %.1f requests per node for %d endpoints each (constant in endpoints)"
              % (per_node, args.endpoints + 2))
    finally:
        lab.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
