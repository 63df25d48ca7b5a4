"""playbooks/reap.yml end to end on the lab: `ansible-playbook netreap.cilium.reap` against the
lab inventory, for a Consul-backed (1.16) and an etcd-backed (1.19) cluster."""

import json
import os
import subprocess
import sys

import pytest

from tests.lab import httpd
from tests.lab.report import drift_report
from tests.support.playbook import BIN, CALLBACKS, FAST_GC, changed_tasks, reap, reap_together, summary, task_hosts, task_results


def clean(report):
    cluster = report["cluster"]
    nodes = report["nodes"].values()
    return (cluster["stale kvstore nodes"] == 0 and cluster["unused identities"] == 0
            and all(n["unlabelled endpoints"] == n["outdated endpoint labels"]
                    == n["orphaned endpoints"] == n["policy rules missing"] == 0 for n in nodes))


@pytest.mark.parametrize("profile,kvstore", [("1.16", "consul"), ("1.19", "etcd")])
def test_reap_cleans_a_drifted_cluster_in_two_runs_then_changes_nothing(lab_factory, profile, kvstore):
    lab = lab_factory(nodes=2, cilium=profile, kvstore=kvstore, scenario="drift")
    before = drift_report(lab)
    assert not clean(before)

    rc, first = reap(lab, *FAST_GC)
    assert rc == 0, summary(first)
    after_first = drift_report(lab)
    for node in after_first["nodes"].values():  # node duties are done in one run
        assert node["unlabelled endpoints"] == node["orphaned endpoints"] == node["policy rules missing"] == 0
    assert after_first["cluster"]["stale kvstore nodes"] == 2  # only marked: two-pass
    assert any("2 marked" in line for line in summary(first))

    rc, second = reap(lab, *FAST_GC)
    assert rc == 0, summary(second)
    assert clean(drift_report(lab)), drift_report(lab)
    assert summary(second)[0].startswith("kvstore nodes: 2 reaped")
    if kvstore == "etcd":
        assert lab.kv.heartbeat_revision() is not None
        assert drift_report(lab)["cluster"]["agents' kvstore state"] == "Ok"

    rc, third = reap(lab, *FAST_GC)
    assert rc == 0
    # nothing left to do; only the heartbeat writes on every run (that is its job)
    expected = ["Write the kvstore heartbeat (etcd-backed agents fail their quorum check without it)"]
    assert changed_tasks(third) == (expected if kvstore == "etcd" else [])
    # the foreign rule the drift scenario seeded is still in force
    for node in lab.nodes:
        names = [l.get("value") for r in node.cilium.policy_rules() for l in r.get("labels", [])]
        assert "operator-managed-host-rule" in names


def test_check_mode_shows_the_plan_and_changes_nothing(lab_factory):
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift")
    kv_before = dict(lab.kv.backend.list(""))
    endpoints_before = [n.cilium.endpoints() for n in lab.nodes]
    revisions_before = [n.cilium.policy_revision for n in lab.nodes]
    lab.log.clear()
    rc, out = reap(lab, *FAST_GC, check=True)
    assert rc == 0, summary(out)
    writes = [e for e in lab.log.entries() if e["method"] in ("PUT", "PATCH", "DELETE", "POST")]
    assert writes == []
    assert dict(lab.kv.backend.list("")) == kv_before
    assert [n.cilium.endpoints() for n in lab.nodes] == endpoints_before
    assert [n.cilium.policy_revision for n in lab.nodes] == revisions_before
    # ... and still reports the plan
    plan = task_results(out, "Label endpoints")
    assert all(result["changed"] for result in plan.values())
    assert all(result["labelled"] and result["reaped"] for result in plan.values())


def test_a_failing_node_does_not_stop_the_others_and_is_reported(lab_factory):
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift")
    broken = lab.nodes[1]
    broken.cilium.faults.add(httpd.Fault(status=500, body='"endpoint manager unavailable"',
                                         method="GET", path="^/v1/endpoint$", count=None))
    rc, out = reap(lab, *FAST_GC)
    assert rc != 0
    report = drift_report(lab)
    assert report["nodes"][lab.nodes[0].name]["unlabelled endpoints"] == 0
    assert report["nodes"][lab.nodes[0].name]["orphaned endpoints"] == 0
    assert report["nodes"][broken.name]["unlabelled endpoints"] == 1
    line = [l for l in summary(out) if l.startswith(broken.name)][0]
    assert "FAILED" in line and "HTTP 500" in line and "endpoint manager unavailable" in line


def test_two_overlapping_runs_collect_garbage_once(lab_factory):
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift")
    rc, out = reap(lab, *FAST_GC, "--tags", "netreap_gc")  # first pass: marks only
    assert rc == 0
    stale_before = set(lab.kv.node_names())
    # slow every write transaction down so that the two runs overlap while one holds the lock
    lab.consul.faults.add(httpd.Fault(action="delay", delay=1.0, method="PUT", path="^/v1/txn", count=None))
    results = reap_together(lab, *FAST_GC, "--tags", "netreap_gc")
    assert [rc for rc, unused in results] == [0, 0]
    gc = [task_results(out, "Collect kvstore nodes")["reaper-controller"] for unused, out in results]
    deleted = [item for result in gc for item in result.get("deleted", [])]
    assert len(deleted) == 2 and len(stale_before - set(lab.kv.node_names())) == 2
    assert sorted(bool(result.get("deleted")) for result in gc) == [False, True]


def test_reap_with_the_nomad_inventory_plugin(lab_factory, tmp_path):
    """Hosts from `netreap.cilium.nomad` (Nomad's view of the cluster); a static file adds only
    what the lab needs to reach each simulated node (local connection, its socket and agent)."""
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift")
    # a client without Cilium must not be targeted
    lab.nomad.add_node("nomad-client-no-cilium", attributes={"plugins.cni.version.cilium-cni": None})
    plugin = tmp_path / "cluster.nomad.yml"
    plugin.write_text("plugin: netreap.cilium.nomad\nnomad_address: %s\n" % lab.nomad_endpoint.url)
    static = lab.inventory()["all"]["children"]
    overlay = {"all": {"hosts": static["cilium_nodes"]["hosts"],
                       "children": {"reaper": static["reaper"]},
                       "vars": static["cilium_nodes"]["vars"]}}
    overlay_file = tmp_path / "lab-overlay.yml"
    overlay_file.write_text(json.dumps(overlay))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="lab_json", ANSIBLE_CALLBACK_PLUGINS=CALLBACKS,
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_INVENTORY_ENABLED="netreap.cilium.nomad,yaml")
    env.update(lab.env())
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", str(plugin), "-i", str(overlay_file),
           "netreap.cilium.reap"] + FAST_GC
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    labelled = task_results(out, "Label endpoints")
    assert sorted(labelled) == sorted(n.name for n in lab.nodes)  # no-cilium node not targeted
    report = drift_report(lab)
    assert all(n["unlabelled endpoints"] == 0 and n["orphaned endpoints"] == 0
               for n in report["nodes"].values())


def test_reap_over_mutual_tls_from_inventory_variables_alone(lab_factory):
    """Consul, Nomad and the real etcd require client certificates; reap.yml passes the CA and
    the client certificate from its variables (no TLS environment variables are set)."""
    lab = lab_factory(nodes=1, cilium="1.19", kvstore="etcd", scenario="drift", tls="mtls")
    rc, out = reap(lab, *FAST_GC, lab_env=False)
    assert rc == 0, summary(out)
    rc, out = reap(lab, *FAST_GC, lab_env=False)
    assert rc == 0, summary(out)
    assert clean(drift_report(lab)), drift_report(lab)


def test_free_strategy_runs_the_heartbeat_and_the_gc_once_with_two_reaper_hosts(lab_factory, tmp_path, monkeypatch):
    """ANSIBLE_STRATEGY=free (docs/scaling.md) ignores run_once; the reaper plays pin `linear`."""
    lab = lab_factory(nodes=2, cilium="1.19", kvstore="etcd", scenario="drift")
    standby = tmp_path / "standby.yml"
    standby.write_text(json.dumps({"all": {"children": {"reaper": {"hosts": {"reaper-standby": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
    monkeypatch.setenv("ANSIBLE_STRATEGY", "free")
    rc, out = reap(lab, *FAST_GC, "-i", str(standby))
    assert rc == 0, summary(out)
    for task in ("Write the kvstore heartbeat", "Collect kvstore nodes", "Collect identities"):
        assert task_hosts(out, task) == {"reaper-controller"}, task
    assert task_hosts(out, "Label endpoints") == {n.name for n in lab.nodes}  # on every node
