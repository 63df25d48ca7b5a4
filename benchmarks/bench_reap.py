"""Benchmark: reap.yml on a lab of many Nomad clients, for several forks, strategies and pipelining.

    bash scripts/setup.sh
    .venv/bin/python -m benchmarks.bench_reap [--nodes 100,300,1000] [--endpoints 20]
        [--forks 25,50,100] [--strategy linear,free] [--pipelining off,on] [--converge-runs 2]

For each lab size, builds a lab (Cilium 1.16, Consul kvstore) where every node has N running
allocations whose endpoints still carry no labels, plus a stale kvstore node, runs reap.yml twice
to converge it (labels, policy, the GC's two passes), then runs it once more for every combination
of forks, strategy and pipelining, and prints per converged run:

* wall time of the run;
* controller CPU seconds per node: ansible-playbook and its workers, without the modules
  themselves (on the lab every node is a local connection, so the modules run on this machine;
  a wrapper around the nodes' Python interpreter counts them apart, and they are printed as
  "module CPU per node", the cost each node pays);
* CPU seconds per node of the lab's simulators (this process), which share the machine;
* requests per node to the Cilium agents and the Nomad client agents, and the nodes that failed
  (on a loaded machine a node's request may time out: the run goes on and says so).

The load average (``uptime``) is printed beside each run: other work on the machine slows it.
ansible-playbook runs at a lower priority (nice 10) than the lab, whose simulators stand for
other machines.
Figures, not a test: nothing is asserted.
"""

import argparse
import collections
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks._env import prepare

prepare()
from tests.lab.lab import Lab  # noqa: E402
from tests.lab.scenarios import POLICY_KEY, POLICY_V2  # noqa: E402

# The nodes' Python, wrapped to count the CPU their module processes use (POSIX `times`: the
# second line is the CPU of the shell's children, the module).
INTERPRETER_WRAPPER = """#!/bin/sh
"%(python)s" "$@"
rc=$?
times >> "%(log)s"
exit $rc
"""


def build_lab(nodes, endpoints):
    state_dir = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
    wrapper = os.path.join(state_dir, "python")
    with open(wrapper, "w") as handle:
        handle.write(INTERPRETER_WRAPPER % {"python": sys.executable,
                                            "log": os.path.join(state_dir, "module-cpu.log")})
    os.chmod(wrapper, 0o755)
    lab = Lab(state_dir, nodes=nodes, cilium="1.16", kvstore="consul", scenario="clean",
              python=wrapper).start()
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


RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)\s+"
                   r"skipped=\d+\s+rescued=(\d+)", re.MULTILINE)


def module_cpu(state_dir):
    """CPU seconds the module processes used so far (and empty the log)."""
    path = os.path.join(state_dir, "module-cpu.log")
    if not os.path.exists(path):
        return 0.0
    with open(path) as handle:
        lines = [line.split() for line in handle if line.strip()]
    os.unlink(path)
    total = 0.0
    for shell, children in zip(lines[0::2], lines[1::2]):
        for field in shell + children:  # the wrapper's own (tiny) CPU and the module's
            minutes, seconds = field.rstrip("s").split("m")
            total += int(minutes) * 60 + float(seconds)
    return total


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_reap(lab, forks, strategy, pipelining, extra=()):
    env = dict(os.environ, ANSIBLE_FORKS=str(forks), ANSIBLE_STRATEGY=strategy,
               ANSIBLE_PIPELINING=str(pipelining == "on"),
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_DISPLAY_OK_HOSTS="false", ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
    env.update(lab.env())
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
           "-i", os.path.join(lab.state_dir, "inventory.yml"), "netreap.cilium.reap",
           "-e", "netreap_node_gc_min_age=0", "-e", "netreap_identity_gc_min_age=0"] + list(extra)
    lab.log.clear()
    module_cpu(lab.state_dir)
    cpu_before = children_cpu()
    lab_cpu_before = time.process_time()
    started = time.monotonic()
    # The lab stands for the nodes' own agents and the cluster's servers, which run on other
    # machines: ansible-playbook and its module processes yield the CPU to it (nice 10), or
    # 50 forks on 2 cores starve the simulators past the modules' 10 s timeout.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                          preexec_fn=lambda: os.nice(10))
    elapsed = time.monotonic() - started
    cpu = children_cpu() - cpu_before
    lab_cpu = time.process_time() - lab_cpu_before
    # the play recap: a node whose duty failed was rescued (its failure goes to the summary),
    # the reaper host likewise; the summary on localhost then fails the run and says why
    failed = [host for host, unreachable, failed_tasks, rescued in RECAP.findall(proc.stdout)
              if host != "localhost" and int(unreachable) + int(failed_tasks) + int(rescued)]
    if proc.returncode != 0:
        # on a loaded machine a node may time out: report it with the figures, keep going
        why = [line for line in proc.stdout.splitlines() if line.startswith("fatal: [localhost]")]
        print("reap.yml rc %d, %d node(s) failed: %s" % (
            proc.returncode, len(failed), (why[0][:1000] if why else proc.stdout[-1500:] + proc.stderr[-500:])),
            file=sys.stderr)
    modules = module_cpu(lab.state_dir)
    counts = collections.Counter()
    for entry in lab.log.entries():
        service = entry["service"]
        if service.startswith("nomad-agent:"):
            service = "nomad (client agents)"
        elif service not in ("consul", "nomad"):
            service = "cilium agents"
        counts[service] += 1
    return {"wall": elapsed, "controller": cpu - modules, "modules": modules, "lab": lab_cpu,
            "counts": counts, "failed": len(failed)}


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def csv(kind):
    def parse(text):
        return [kind(item) for item in text.split(",") if item]
    return parse


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--nodes", type=csv(int), default=[100], help="lab sizes, e.g. 100,300,1000")
    parser.add_argument("--endpoints", type=int, default=20, help="allocations per node")
    parser.add_argument("--forks", type=csv(int), default=[25])
    parser.add_argument("--strategy", type=csv(str), default=["linear"], help="linear, free")
    parser.add_argument("--pipelining", type=csv(str), default=["off"], help="off, on")
    parser.add_argument("--converge-runs", type=int, default=2,
                        help="runs before the measured ones (2: labels and policy, then the GC's"
                             " confirming pass; 1 leaves the GC's second pass to the first measured run)")
    args = parser.parse_args()
    for strategy in args.strategy:
        if strategy not in ("linear", "free"):
            parser.error("--strategy: linear or free, not %r" % strategy)
    for pipelining in args.pipelining:
        if pipelining not in ("off", "on"):
            parser.error("--pipelining: off or on, not %r" % pipelining)
    print("Python %s, %d CPUs; CPU seconds per node exclude the lab's simulators"
          % (sys.version.split()[0], os.cpu_count()))
    print("%6s %5s %-6s %4s %8s %10s %10s %10s %6s %7s  %s" % (
        "nodes", "forks", "strat.", "pipe", "wall (s)", "ctrl CPU/n", "module CPU", "lab CPU/n",
        "req./n", "failed", "load average before the run"))
    for nodes in args.nodes:
        lab, state_dir = build_lab(nodes, args.endpoints)
        try:
            for unused in range(args.converge_runs):
                run_reap(lab, args.forks[0], args.strategy[0], args.pipelining[0])
            combinations = itertools.product(args.forks, args.strategy, args.pipelining)
            for forks, strategy, pipelining in combinations:
                before = load()
                result = run_reap(lab, forks, strategy, pipelining)
                per_node = sum(v for k, v in result["counts"].items()
                               if k in ("cilium agents", "nomad (client agents)")) / nodes
                print("%6d %5d %-6s %4s %8.1f %10.3f %10.3f %10.3f %6.1f %7d  %s" % (
                    nodes, forks, strategy, pipelining, result["wall"],
                    result["controller"] / nodes, result["modules"] / nodes, result["lab"] / nodes,
                    per_node, result["failed"], before), flush=True)
        finally:
            lab.stop()
            shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
