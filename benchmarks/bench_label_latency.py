"""Seconds from an allocation turning running to its endpoint carrying its Nomad labels, with the
rulebook netreap.cilium.netreap under real ansible-rulebook, next to the reap timer's worst case.

    .venv/bin/python -m benchmarks.bench_label_latency [--nodes 10] [--sizes 1,10,100]

(from the repository root, after ``bash scripts/setup.sh``; needs Java 17, see docs/eda.md).

A lab with N nodes (Cilium 1.16, Consul kvstore) runs; for each size, that many allocations are
placed at once across the nodes (Nomad knows them, each node's agent has their endpoints with only
``reserved:init``) and Nomad's event stream reports them running in one burst. The stream is the
one of the source's unit tests (frames as Nomad 1.6.5 writes them, docs/upstream.md#nomad-event-stream),
fed from here. Latency per allocation: from the burst to its endpoint's labels (polled every
0.1 s). Goal: p95 within 5 s for 100 allocations across 10 nodes.
"""

import argparse
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from benchmarks._env import ROOT, prepare

prepare()

from tests.lab.lab import Lab  # noqa: E402
from tests.lab.scenarios import netreap_labels  # noqa: E402
from tests.support.eda import (  # noqa: E402
    JAVA_HOME,
    StreamServer,
    endpoint_for,
    endpoint_labels,
    stop_process,
)


def frame(index, alloc, node, status):
    payload = {"ID": alloc["ID"], "NodeID": node.node_id, "NodeName": node.name,
               "Namespace": alloc["Namespace"], "JobID": alloc["JobID"],
               "TaskGroup": alloc["TaskGroup"], "ClientStatus": status, "DesiredStatus": "run"}
    return {"Index": index, "Events": [{
        "Topic": "Allocation", "Type": "AllocationUpdated", "Key": alloc["ID"],
        "Namespace": alloc["Namespace"], "FilterKeys": [alloc["JobID"], ""], "Index": index,
        "Payload": {"Allocation": payload}}]}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def reap_timer_worst_case():
    """Worst wait for the reap timer with the reaper role's defaults: a full period plus the
    randomized delay (the reap.yml run itself comes on top)."""
    with open(os.path.join(ROOT, "roles", "reaper", "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    calendar = defaults["reaper_on_calendar"]  # "*:0/10": every 10 minutes
    period = int(calendar.rsplit("/", 1)[1]) * 60
    return calendar, period + int(defaults["reaper_randomized_delay_sec"])


def main():
    parser = argparse.ArgumentParser(description="Label latency with the rulebook on the lab.")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--group", action="store_true",
                        help="run the rulebook with the source's group option (one playbook run "
                             "per window instead of one per node)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    state = tempfile.mkdtemp(prefix="netreap-bench-eda-")
    lab = Lab(state, nodes=args.nodes, cilium="1.16", kvstore="consul", scenario="clean").start()
    feed = queue.Queue()

    def frames(unused_index):
        while True:
            yield feed.get()

    stream = StreamServer([frames])
    inventory = os.path.join(state, "eda-inventory.yml")
    with open(inventory, "w") as handle:
        yaml.safe_dump(lab.inventory(), handle)
    env = dict(os.environ, **lab.env())
    env.update(NOMAD_ADDR=stream.address, JAVA_HOME=JAVA_HOME,
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    log = open(os.path.join(state, "rulebook.log"), "w")
    rulebook = "netreap.cilium.netreap"
    if args.group:
        with open(os.path.join(ROOT, "extensions", "eda", "rulebooks", "netreap.yml")) as handle:
            text = handle.read()
        rulebook = os.path.join(state, "netreap-group.yml")
        with open(rulebook, "w") as handle:
            handle.write(text.replace("group: false", "group: true"))
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-rulebook"),
                             "-r", rulebook, "-i", inventory],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=state)
    index = [100]
    serial = [0]

    def burst(count):
        """Place ``count`` allocations across the nodes, report them running; return latencies."""
        placed = []
        for k in range(count):
            node = lab.nodes[k % len(lab.nodes)]
            serial[0] += 1
            job = "bench-%d" % serial[0]
            ip = node.ipv4_range.rsplit(".", 1)[0] + ".%d" % (2 + serial[0] % 250)
            alloc = lab.nomad.add_allocation(node.node_id, job, task_group="app", address=ip)
            node.cilium.add_endpoint(container_id=alloc["ID"], ipv4=ip,
                                     container_name=alloc["Name"])
            placed.append((node, alloc, set(netreap_labels(job, "default", "app"))))
        started = time.monotonic()
        for node, alloc, unused in placed:
            index[0] += 1
            feed.put(frame(index[0], alloc, node, "running"))
        latencies = {}
        deadline = started + 300
        while len(latencies) < len(placed) and time.monotonic() < deadline:
            for node, alloc, want in placed:
                if alloc["ID"] not in latencies and want <= endpoint_labels(
                        endpoint_for(node, alloc["ID"]) or {}):
                    latencies[alloc["ID"]] = time.monotonic() - started
            time.sleep(0.1)
        if len(latencies) < len(placed):
            raise SystemExit("only %d of %d endpoints labelled within 300 s; see %s"
                             % (len(latencies), len(placed), log.name))
        return list(latencies.values())

    try:
        burst(1)  # warm-up: the JVM and the first playbook run are not measured
        calendar, worst = reap_timer_worst_case()
        print("label latency with the rulebook (%d lab nodes, ansible-rulebook, window 1 s, %s)"
              % (args.nodes, "group: one run per window" if args.group else "one run per node"))
        print("%-12s %8s %8s %8s" % ("allocations", "p50 s", "p95 s", "max s"))
        for size in sizes:
            latencies = burst(size)
            print("%-12d %8.1f %8.1f %8.1f" % (size, statistics.median(latencies),
                                               percentile(latencies, 0.95), max(latencies)))
        print("reap timer (reaper role defaults, OnCalendar %s + randomized delay): worst case "
              "%d s before reap.yml starts, plus its run" % (calendar, worst))
    finally:
        stop_process(proc)
        log.close()
        stream.close()
        lab.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
