"""Concurrency and interruption: two reapers at once, and runs killed with SIGKILL mid-write.

* Two reap.yml runs started together on a drifted cluster (Consul 1.16 and etcd 1.19): exactly
  one of them deletes each stale node and each unused identity; the other skips (leader lock) or
  finds nothing left.
* cilium_node_gc killed while its delete transaction is in flight, holding the leader lock: the
  stale lock makes the next run skip (never delete twice, never fail), it is gone once its TTL
  runs out (Consul: the session TTL timer, 2 x lock_ttl, plus the 15 s lock-delay; etcd: the
  lease TTL) and the rerun converges.
* cilium_policy killed between two policy file writes (static-dir, Cilium 1.19): a half-written
  file is never visible to the agent (temp files are dot files, renamed into place), and the
  rerun converges and removes the leftover temp file.
* cilium_policy killed between the PUT of the new rules and the DELETE of the old revision
  (add-then-delete, Cilium 1.16): the agent never lacks our rules, and the rerun converges.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.lab import httpd, scenarios
from tests.support.modules import (
    etcd_front,
    kvstore_args,
    run_module,
    run_module_subprocess,
)
from tests.support.playbook import FAST_GC, reap, reap_together, task_results

RETIRED = ["nomad-client-retired-1", "nomad-client-retired-2"]
CONSUL_LOCK = "service/netreaper/leader"
ETCD_LOCK = "netreap/gc/v1/leader"
CONSUL_LOCK_DELAY = 15  # seconds; the collection's sessions ask Consul for this lock-delay


def wait_until(condition, what, limit=30.0):
    """Poll ``condition`` (the lab is in this process; nothing here measures speed)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("gave up waiting for " + what)
        time.sleep(0.02)


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.communicate()
    os.unlink(proc.args_file)
    assert proc.returncode == -signal.SIGKILL


# -- two reapers at once --------------------------------------------------------------------------
@pytest.mark.parametrize("profile,kvstore", [("1.16", "consul"), ("1.19", "etcd")])
def test_two_reap_runs_started_together_collect_each_key_once(lab_factory, profile, kvstore):
    lab = lab_factory(nodes=2, cilium=profile, kvstore=kvstore, scenario="drift")
    extra = list(FAST_GC) + ["--tags", "netreap_gc"]
    if kvstore == "etcd":
        # through the fault proxy, so that the write transactions can be slowed down
        extra += ["-e", json.dumps({"etcd_endpoints": [etcd_front(lab).url]})]
        etcd_front(lab).faults.add(httpd.Fault(action="delay", delay=1.0, path="^/v3/kv/txn", count=None))
    else:
        lab.consul.faults.add(httpd.Fault(action="delay", delay=1.0, method="PUT", path="^/v1/txn",
                                          count=None))
    rc, out = reap(lab, *extra)  # first pass: marks only
    assert rc == 0
    assert sorted(set(RETIRED) & set(lab.kv.node_names())) == RETIRED
    identities_before = set(lab.kv.identities())
    results = reap_together(lab, *extra)
    assert [rc for rc, unused in results] == [0, 0]
    for task, expected in (("Collect kvstore nodes", 2), ("Collect identities", 3)):
        gc = [task_results(out, task)["reaper-controller"] for unused, out in results]
        deleted = [item["key"] for result in gc for item in result.get("deleted", [])]
        assert len(deleted) == expected == len(set(deleted)), (task, gc)
        # exactly one run deleted; the other skipped on the lock or found nothing left
        assert sorted(bool(result.get("deleted")) for result in gc) == [False, True], (task, gc)
    assert not set(RETIRED) & set(lab.kv.node_names())
    assert len(identities_before) - len(set(lab.kv.identities())) == 3
    # the live nodes were never touched
    assert {"nomad-client-1", "nomad-client-2"} <= set(lab.kv.node_names())


# -- SIGKILL in the middle of GC ------------------------------------------------------------------
def gc_args(lab, **extra):
    return kvstore_args(lab, nomad_address=lab.nomad_endpoint.url, min_age=0, **extra)


def kvstore_state(lab):
    prefix = "" if lab.kvstore_type == "consul" else "cilium/"
    return {k: v for k, v in lab.kv.backend.list(prefix).items() if k.startswith("cilium/")}


def test_node_gc_killed_mid_transaction_consul_lock_expires_and_rerun_converges(lab_factory):
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift")
    args = gc_args(lab, lock_ttl=10)
    assert names(run_module("cilium_node_gc", args)["marked"]) == RETIRED
    before = kvstore_state(lab)
    # the delete transaction never gets an answer (and is never applied) until the run is killed
    lab.consul.faults.add(httpd.Fault(action="hang", delay=120, method="PUT", path="^/v1/txn", count=1))
    lab.log.clear()  # the marking run's transactions
    proc = run_module_subprocess("cilium_node_gc", args)
    wait_until(lambda: lab.log.count(service="consul", method="PUT", path="^/v1/txn$") >= 1,
               "the delete transaction")
    assert lab.consul.kv_get(CONSUL_LOCK)["Session"]  # killed while holding the lock
    kill(proc)
    assert kvstore_state(lab) == before

    # the dead reaper's lock: the next runs skip (no failure, nothing deleted) ...
    skipped = run_module("cilium_node_gc", args)
    assert not skipped.failed and skipped["skipped"] and skipped["deleted"] == []
    assert CONSUL_LOCK in skipped["msg"] and "cilium_node_gc" in skipped["msg"]
    lab.consul.advance(2 * 10 - 1)  # Consul invalidates a session at 2 x TTL without renewal
    assert run_module("cilium_node_gc", args)["skipped"]
    assert kvstore_state(lab) == before
    # ... until the session expired and its lock-delay ran out; never longer
    lab.consul.advance(1)
    assert lab.consul.sessions() == []
    assert run_module("cilium_node_gc", args)["skipped"]  # lock-delay
    lab.consul.advance(CONSUL_LOCK_DELAY)
    rerun = run_module("cilium_node_gc", args)
    assert not rerun.failed and not rerun["skipped"], rerun
    assert names(rerun["deleted"]) == RETIRED
    assert not set(RETIRED) & set(lab.kv.node_names())
    again = run_module("cilium_node_gc", args)
    assert not again.failed and not again["changed"]


def test_node_gc_killed_mid_transaction_etcd_lease_expires_and_rerun_converges(lab_factory):
    lab = lab_factory(nodes=2, cilium="1.19", kvstore="etcd", scenario="drift")
    args = gc_args(lab, lock_ttl=2)
    assert names(run_module("cilium_node_gc", args)["marked"]) == RETIRED
    before = kvstore_state(lab)
    # the lock's create-if-absent transaction passes; the delete transaction hangs
    etcd_front(lab).faults.add(httpd.Fault(action="hang", delay=120, path="^/v3/kv/txn", count=1, skip=1))
    lab.log.clear()  # the marking run's transactions
    proc = run_module_subprocess("cilium_node_gc", args)
    wait_until(lambda: lab.log.count(service="etcd", path="^/v3/kv/txn$") >= 2, "the delete transaction")
    assert lab.kv.backend.get(ETCD_LOCK) is not None  # killed while holding the lock
    kill(proc)
    assert kvstore_state(lab) == before
    skipped = run_module("cilium_node_gc", args)
    if lab.kv.backend.get(ETCD_LOCK) is not None:  # the lease may already have run out
        assert not skipped.failed and skipped["skipped"] and ETCD_LOCK in skipped["msg"]
    assert kvstore_state(lab) == before or skipped.get("deleted")
    # the lease (TTL 2 s) takes the lock key with it
    wait_until(lambda: lab.kv.backend.get(ETCD_LOCK) is None, "the lock lease to expire", limit=15)
    rerun = run_module("cilium_node_gc", args)
    assert not rerun.failed and not rerun["skipped"], rerun
    assert not set(RETIRED) & set(lab.kv.node_names())
    again = run_module("cilium_node_gc", args)
    assert not again.failed and not again["changed"]


def names(items):
    return sorted(i["name"] for i in items)


# -- SIGKILL in the middle of policy apply --------------------------------------------------------
WEB_RULE, CACHE_RULE = scenarios.POLICY_V2


def widened(rule, port):
    rule = json.loads(json.dumps(rule))
    rule["ingress"][0]["toPorts"][0]["ports"].append({"port": str(port), "protocol": "TCP"})
    return rule


NEW_POLICY = [widened(WEB_RULE, 8443), widened(CACHE_RULE, 6380)]

# Runs the module as Ansible would, but stops it (until killed) in the middle of writing the
# second policy file: half of the content written into the temp file, not yet renamed.
HALF_WRITE = r'''
import os, runpy, sys, time

module_path, marker = sys.argv[1], sys.argv[3]
real_fdopen = os.fdopen
written = []


class HalfWriter:
    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        written.append(data)
        if len(written) == 2:
            self.handle.write(data[:len(data) // 2])
            self.handle.flush()
            open(marker, "w").close()
            while True:
                time.sleep(1)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def fdopen(fd, *args, **kwargs):
    handle = real_fdopen(fd, *args, **kwargs)
    if "/.netreap-" in os.readlink("/proc/self/fd/%d" % fd):
        return HalfWriter(handle)
    return handle


os.fdopen = fdopen
sys.argv = [module_path, sys.argv[2]]
runpy.run_path(module_path, run_name="__main__")
'''


def our_rule_names(rules):
    out = set()
    for rule in rules:
        labels = {(l.get("source"), l["key"]): l.get("value", "") for l in rule.get("labels", [])}
        if labels.get(("netreap", "io.netreap.managed-by")) == "netreap.cilium":
            out.add(labels.get(("unspec", "name")))
        filename = labels.get(("directory", "filename"), "")
        if filename.startswith("netreap-"):
            out.add(filename[len("netreap-"):-len(".yaml")])
    return out


def never_without_our_rules(history, since_revision, wanted):
    """Every repository state from ``since_revision`` on holds a rule of each wanted name."""
    states = [h for h in history if h["revision"] >= since_revision]
    assert states
    for state in states:
        assert wanted <= our_rule_names(state["rules"]), (state["revision"], our_rule_names(state["rules"]))


def policy_args(lab, node, **extra):
    args = {"consul_address": lab.consul_endpoint.url, "cilium_socket": node.socket_path,
            "from_consul": True, "static_load_timeout": 5}
    if node.static_policy_dir:
        args["static_policy_dir"] = node.static_policy_dir
    args.update(extra)
    return args


def test_policy_killed_between_file_writes_never_shows_a_half_written_file(lab_factory, tmp_path):
    lab = lab_factory(nodes=1, cilium="1.19", kvstore="etcd", scenario="drift")
    node = lab.nodes[0]
    args = policy_args(lab, node)
    first = run_module("cilium_policy", args)
    assert not first.failed and first["method"] == "static-dir", first
    directory = node.static_policy_dir
    old_files = {n: open(os.path.join(directory, n)).read() for n in os.listdir(directory)}
    assert sorted(old_files) == ["netreap-cache-from-web.yaml", "netreap-web-ingress.yaml"]
    loaded_at = node.cilium.policy_revision
    wanted = {"web-ingress", "cache-from-web"}

    lab.consul.kv_put(scenarios.POLICY_KEY, json.dumps(NEW_POLICY))
    wrapper = tmp_path / "half_write.py"
    wrapper.write_text(HALF_WRITE)
    marker = str(tmp_path / "stopped")
    proc = run_module_subprocess("cilium_policy", args)  # for its args file and environment
    proc.kill()
    proc.wait()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    module_path = proc.args[1]
    stopped = subprocess.Popen([sys.executable, str(wrapper), module_path, proc.args_file, marker],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    stopped.args_file = proc.args_file
    wait_until(lambda: os.path.exists(marker) or stopped.poll() is not None, "the second file write")
    assert stopped.poll() is None, stopped.communicate()
    kill(stopped)

    # on disk: one file already replaced, the other still the old one; the half-written content
    # sits in a dot file, which the agent does not read
    names_now = sorted(os.listdir(directory))
    temps = [n for n in names_now if n.startswith(".netreap-") and n.endswith(".tmp")]
    assert len(temps) == 1, names_now
    assert sorted(n for n in names_now if n.endswith(".yaml")) == sorted(old_files)
    new_files = {}
    for name in old_files:
        with open(os.path.join(directory, name)) as handle:
            new_files[name] = handle.read()
    changed = [n for n in old_files if new_files[n] != old_files[n]]
    assert len(changed) == 1  # the first file was replaced whole
    with open(os.path.join(directory, temps[0])) as handle:
        partial = handle.read()
    assert partial and all(partial != content for content in new_files.values())
    # the agent: no file it could not read, our rules in force in every state it went through
    rules = node.cilium.policy_rules()
    assert node.cilium.static_policy_errors == []
    assert our_rule_names(rules) == wanted
    never_without_our_rules(node.cilium.policy_history, loaded_at, wanted)

    rerun = run_module("cilium_policy", args)
    assert not rerun.failed and rerun["changed"], rerun
    assert sorted(os.listdir(directory)) == sorted(old_files)  # the temp file is cleaned up
    assert node.cilium.static_policy_errors == []
    again = run_module("cilium_policy", args)
    assert not again.failed and not again["changed"], again
    never_without_our_rules(node.cilium.policy_history, loaded_at, wanted)
    ports = sorted(p["port"] for r in node.cilium.policy_rules() for i in r.get("ingress", [])
                   for t in i.get("toPorts", []) for p in t.get("ports", []))
    assert {"8443", "6380"} <= set(ports)


def test_policy_killed_between_put_and_delete_keeps_our_rules_and_rerun_converges(lab_factory):
    lab = lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="drift")
    node = lab.nodes[0]
    args = policy_args(lab, node, method="add-then-delete")
    first = run_module("cilium_policy", args)
    assert not first.failed and first["applied"], first
    loaded_at = node.cilium.policy_revision
    old_revision_rules = [r for r in node.cilium.policy_rules() if our_rule_names([r])]
    wanted = {"web-ingress", "cache-from-web"}

    lab.consul.kv_put(scenarios.POLICY_KEY, json.dumps(NEW_POLICY))
    node.cilium.faults.add(httpd.Fault(action="hang", delay=120, method="DELETE", path="^/v1/policy", count=1))
    lab.log.clear()
    proc = run_module_subprocess("cilium_policy", args)
    wait_until(lambda: lab.log.count(service=node.cilium.name, method="DELETE", path="^/v1/policy") >= 1,
               "the DELETE of the old revision")
    kill(proc)
    rules = node.cilium.policy_rules()
    # both revisions in force: the new rules were added, the old ones not yet deleted
    assert len([r for r in rules if our_rule_names([r])]) == 2 * len(old_revision_rules)
    never_without_our_rules(node.cilium.policy_history, loaded_at, wanted)
    assert any(l.get("value") == "operator-managed-host-rule" for r in rules for l in r["labels"])

    node.cilium.faults.clear()
    rerun = run_module("cilium_policy", args)
    assert not rerun.failed and rerun["changed"], rerun
    rules = node.cilium.policy_rules()
    assert len([r for r in rules if our_rule_names([r])]) == len(old_revision_rules)
    assert any(l.get("value") == "operator-managed-host-rule" for r in rules for l in r["labels"])
    again = run_module("cilium_policy", args)
    assert not again.failed and not again["changed"], again
    never_without_our_rules(node.cilium.policy_history, loaded_at, wanted)
