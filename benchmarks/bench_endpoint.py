"""Requests and wall time of cilium_endpoint on a lab node with 1,000 endpoints, next to Netreap.

    .venv/bin/python -m benchmarks.bench_endpoint [--endpoints 1000]

(from the repository root, after ``bash scripts/setup.sh``).

Builds a one-node lab, places N allocations (10 jobs) with their Cilium endpoints, and measures
three situations: every endpoint unlabelled (first run after Nomad's CNI calls), every endpoint
already right (steady state), and steady state plus a few new and a few orphaned endpoints.

Netreap is not run (it is a Go daemon); its startup reconcile (cosmonic-labs/netreap at
f3bac8c, ``reapers/endpoints.go``) is replayed request for request against the same lab: agent/self,
GET /endpoint, then ``GET /v1/allocation/<container-id>`` for *every* endpoint with a container
ID, then PATCH where labels differ.  It never deletes endpoints, so orphans stay.
"""

import argparse
import shutil
import tempfile
import time
import uuid

from benchmarks._env import prepare

prepare()

from ansible_collections.netreap.cilium.plugins.module_utils._cilium import CiliumClient  # noqa: E402
from ansible_collections.netreap.cilium.plugins.module_utils._endpoint_plan import (  # noqa: E402
    current_labels,
    desired_labels,
    endpoint_facts,
)
from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError  # noqa: E402
from ansible_collections.netreap.cilium.plugins.module_utils._nomad import NomadClient  # noqa: E402
from tests.lab.lab import Lab  # noqa: E402
from tests.lab.scenarios import netreap_labels  # noqa: E402
from tests.support.modules import run_module  # noqa: E402

JOBS = 10


def populate(lab, node, count, labelled):
    for k in range(count):
        job, meta = "svc-%d" % (k % JOBS), {"team": "team-%d" % (k % JOBS)}
        ip = "10.60.%d.%d" % (k // 250, k % 250 + 1)
        alloc = lab.nomad.add_allocation(node.node_id, job, task_group="main", job_meta=meta, address=ip)
        labels = netreap_labels(job, "default", "main", meta) if labelled else None
        node.cilium.add_endpoint(container_id=alloc["ID"], labels=labels, ipv4=ip, container_name=alloc["Name"])


def add_drift(lab, node, fresh=5, orphans=5):
    for k in range(fresh):
        alloc = lab.nomad.add_allocation(node.node_id, "fresh-%d" % k, address="10.61.0.%d" % (k + 1))
        node.cilium.add_endpoint(container_id=alloc["ID"], ipv4="10.61.0.%d" % (k + 1))
    for k in range(orphans):
        node.cilium.add_endpoint(container_id=str(uuid.uuid4()), ipv4="10.61.1.%d" % (k + 1))


def run_cilium_endpoint(lab, node):
    lab.log.clear()
    args = {"cilium_socket": node.socket_path, "nomad_address": node.nomad_address}  # node ID via agent/self
    started = time.perf_counter()
    result = run_module("cilium_endpoint", args)
    elapsed = time.perf_counter() - started
    if result.get("failed"):
        raise SystemExit("cilium_endpoint failed: %s" % result["msg"])
    return {"requests": len(lab.log.entries()), "seconds": elapsed, "labelled": len(result["labelled"]),
            "reaped": len(result["reaped"])}


def run_netreap_replay(lab, node):
    """Netreap's startup reconcile, request for request (labels computed like Netreap's)."""
    lab.log.clear()
    started = time.perf_counter()
    nomad = NomadClient(node.nomad_address)
    cilium = CiliumClient(node.socket_path)
    nomad.local_node_id()
    patched = 0
    for endpoint in cilium.endpoints():
        cid = ((endpoint.get("status") or {}).get("external-identifiers") or {}).get("container-id")
        if not cid:
            continue
        try:
            alloc = nomad.allocation(cid)
        except ServiceError:
            continue  # Netreap logs and moves on; the endpoint stays
        labels = desired_labels(alloc)[0]
        if current_labels(endpoint_facts(endpoint)) != labels:
            cilium.patch_endpoint(endpoint["id"], {"container-id": alloc["ID"], "container-name": alloc["Name"],
                                                   "labels": labels, "state": "waiting-for-identity"})
            patched += 1
    elapsed = time.perf_counter() - started
    return {"requests": len(lab.log.entries()), "seconds": elapsed, "labelled": patched, "reaped": 0}


def measure(count, labelled, drift, runner):
    state = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
    lab = Lab(state, nodes=1, cilium="1.16", kvstore="consul", scenario="clean").start()
    try:
        node = lab.nodes[0]
        populate(lab, node, count, labelled)
        if drift:
            add_drift(lab, node)
        endpoints = len(node.cilium.endpoints())
        return endpoints, runner(lab, node)
    finally:
        lab.stop()
        shutil.rmtree(state, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    count = parser.parse_args().endpoints
    cases = [("all unlabelled", False, False), ("all labelled (steady state)", True, False),
             ("steady + 5 new + 5 orphans", True, True)]
    print("Lab node with %d allocation endpoints (+ scenario, host and health endpoints), Cilium 1.16 profile"
          % count)
    row = "%-28s %-16s %9s %9s %8s %8s %6s"
    print(row % ("case", "tool", "endpoints", "requests", "seconds", "labelled", "reaped"))
    for name, labelled, drift in cases:
        for tool, runner in (("cilium_endpoint", run_cilium_endpoint), ("netreap (replay)", run_netreap_replay)):
            endpoints, numbers = measure(count, labelled, drift, runner)
            print(row % (name, tool, endpoints, numbers["requests"], "%.3f" % numbers["seconds"],
                         numbers["labelled"], numbers["reaped"]))
    print()
    print("cilium_endpoint: agent/self + node allocations + GET /endpoint = 3, + 1 PATCH per relabel,"
          " + (GET allocation + DELETE) per orphan.")
    print("Netreap: agent/self + GET /endpoint + 1 allocation lookup per endpoint with a container ID"
          " (1 + N) + 1 PATCH per relabel; orphans are never deleted.")


if __name__ == "__main__":
    main()
