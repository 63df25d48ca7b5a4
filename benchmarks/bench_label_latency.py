"""Seconds from an allocation turning running to its endpoint carrying its Nomad labels, with the
rulebook netreap.cilium.netreap under real ansible-rulebook, next to the reap timer's worst case.

    .venv/bin/python -m benchmarks.bench_label_latency [--nodes 10] [--sizes 1,10,100]
        [--rulebook FILE] [--forks N]

(from the repository root, after ``bash scripts/setup.sh``; needs Java 17, see docs/eda.md).

A lab with N nodes (Cilium 1.16, Consul kvstore) runs in this process; ansible-rulebook reads its
Nomad's event stream (docs/upstream.md#nomad-event-stream-wire). For each size, that many
allocations start at once across the nodes, each the way ``python -m tests.lab alloc start``
starts one (``Lab.start_allocation``: Nomad places it, cilium-cni's ADD gives the node's agent an
endpoint with only ``reserved:init``, the allocation turns running; every step an event on the
stream). Latency per allocation: from the moment it turned running to its endpoint's labels
(polled every 0.1 s). Goal: p95 within 5 s for 100 allocations across 10 nodes. Next to it, the
controller CPU the burst cost (ansible-rulebook and the playbook runs it started, not the lab):
on a loaded machine the latency grows, the CPU does not.
"""

import argparse
import os
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
    RULEBOOK,
    endpoint_labels,
    rulebook_env,
    stop_process,
    wait_for,
)


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


def cpu_seconds(pid):
    """CPU seconds of a process and of every descendant it has waited for (/proc/<pid>/stat:
    utime, stime, cutime, cstime): the controller's CPU for the playbook runs it started."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def has_children(pid):
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, task)) as handle:
            if handle.read().strip():
                return True
    return False


def labels_by_alloc(lab):
    """{allocation ID: set of identity labels} over every node's agent."""
    found = {}
    for node in lab.nodes:
        for endpoint in node.cilium.endpoints():
            alloc_id = (endpoint.get("status") or {}).get("external-identifiers", {}).get(
                "container-id")
            if alloc_id:
                found[alloc_id] = endpoint_labels(endpoint)
    return found


def main():
    parser = argparse.ArgumentParser(description="Label latency with the rulebook on the lab.")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--rulebook", default="netreap.cilium.netreap",
                        help="rulebook to run (a copy with other source options, for comparisons)")
    parser.add_argument("--forks", type=int, default=None,
                        help="ANSIBLE_FORKS for the playbook runs (default: ansible's)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    state = tempfile.mkdtemp(prefix="netreap-bench-eda-")
    lab = Lab(state, nodes=args.nodes, cilium="1.16", kvstore="consul", scenario="clean").start()
    inventory = os.path.join(state, "eda-inventory.yml")
    with open(inventory, "w") as handle:
        yaml.safe_dump(lab.inventory(), handle)
    env = rulebook_env(lab.env())
    if args.forks:
        env["ANSIBLE_FORKS"] = str(args.forks)
    log = open(os.path.join(state, "rulebook.log"), "w")
    proc = subprocess.Popen([RULEBOOK, "-r", args.rulebook, "-i", inventory],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=state)
    serial = [0]

    def burst(count):
        """Start ``count`` allocations across the nodes at once; return their latencies."""
        started = {}
        want = {}
        for k in range(count):
            serial[0] += 1
            job = "bench-%d" % serial[0]
            alloc_id = lab.start_allocation(lab.nodes[k % len(lab.nodes)], job, "app")
            started[alloc_id] = time.monotonic()
            want[alloc_id] = set(netreap_labels(job, "default", "app"))
        latencies = {}
        deadline = time.monotonic() + 300
        while len(latencies) < count and time.monotonic() < deadline:
            now = time.monotonic()
            for alloc_id, labels in labels_by_alloc(lab).items():
                if alloc_id in want and alloc_id not in latencies and want[alloc_id] <= labels:
                    latencies[alloc_id] = now - started[alloc_id]
            time.sleep(0.1)
        if len(latencies) < count:
            raise SystemExit("only %d of %d endpoints labelled within 300 s; see %s"
                             % (len(latencies), count, log.name))
        return list(latencies.values())

    def settle():
        """Wait until no playbook run of the rulebook is left; return its CPU seconds so far."""
        wait_for(lambda: not has_children(proc.pid), 120, 0.5)
        return cpu_seconds(proc.pid)

    try:
        # The source reads once the lab's Nomad has its stream request; then a warm-up burst
        # (the JVM and the first playbook run are not measured).
        if not wait_for(lambda: lab.log.count(service="nomad", path="^/v1/event/stream$"), 120):
            raise SystemExit("ansible-rulebook did not connect; see %s" % log.name)
        burst(1)
        cpu = settle()
        calendar, worst = reap_timer_worst_case()
        print("label latency with the rulebook %s (%d lab nodes, forks %s, %d CPUs, load %.1f "
              "at start)" % (args.rulebook, args.nodes, args.forks or "default", os.cpu_count(),
                             os.getloadavg()[0]))
        print("%-12s %8s %8s %8s %16s" % ("allocations", "p50 s", "p95 s", "max s",
                                          "controller CPU s"))
        for size in sizes:
            latencies = burst(size)
            used, cpu = settle() - cpu, cpu_seconds(proc.pid)
            print("%-12d %8.1f %8.1f %8.1f %16.1f" % (size, statistics.median(latencies),
                                                      percentile(latencies, 0.95),
                                                      max(latencies), used))
            sys.stdout.flush()
        print("reap timer (reaper role defaults, OnCalendar %s + randomized delay): worst case "
              "%d s before reap.yml starts, plus its run" % (calendar, worst))
        print("load average after: %.1f" % os.getloadavg()[0])
    finally:
        stop_process(proc)
        log.close()
        lab.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
