"""The rulebook netreap.cilium.netreap with real ansible-rulebook against the lab.

An allocation starts on a lab node (Nomad knows it, the node's agent has its endpoint with only
``reserved:init``, as after cilium-cni's ADD) and Nomad's event stream reports it running: the
endpoint must carry its Nomad labels within seconds. The allocation then completes and its
endpoint stays behind (a failed CNI DEL): the stream reports it and the endpoint must go. Then a
new policy published to Consul must reach every node's agent.

The event stream is served by the stream server of the source's unit tests, with frames made
from the lab's own allocations (docs/upstream.md#nomad-event-stream).
"""

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import yaml

from tests.lab.scenarios import POLICY_KEY, POLICY_V2, netreap_labels
from tests.support.eda import (
    JAVA_HOME,
    RULEBOOK,
    StreamServer,
    endpoint_for,
    endpoint_labels,
    rulebook_missing,
    stop_process,
    wait_for,
)

BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.skipif(bool(rulebook_missing()), reason=rulebook_missing())


def rule_names(rules):
    """Names of the rules of a published policy an agent runs (REST: ``name`` label; static
    policy directory: the file ``netreap-<name>.yaml``)."""
    names = set()
    for rule in rules:
        for label in rule.get("labels", []):
            if label.get("key") == "name":
                names.add(label.get("value"))
            elif label.get("key") == "filename" and label.get("value", "").startswith("netreap-"):
                names.add(label["value"][len("netreap-"):-len(".yaml")])
    return names


def frame(index, alloc, node, status):
    payload = {"ID": alloc["ID"], "NodeID": node.node_id, "NodeName": node.name,
               "Namespace": alloc["Namespace"], "JobID": alloc["JobID"],
               "TaskGroup": alloc["TaskGroup"], "ClientStatus": status, "DesiredStatus": "run"}
    return {"Index": index, "Events": [{
        "Topic": "Allocation", "Type": "AllocationUpdated", "Key": alloc["ID"],
        "Namespace": alloc["Namespace"], "FilterKeys": [alloc["JobID"], ""], "Index": index,
        "Payload": {"Allocation": payload}}]}


def test_rulebook_labels_a_new_allocation_and_removes_a_leaked_endpoint(lab_factory, tmp_path):
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="clean")
    node, other = lab.nodes[0], lab.nodes[1]
    alloc = lab.nomad.add_allocation(node.node_id, "checkout", task_group="api",
                                     job_meta={"team": "payments"}, address="10.0.0.1")
    endpoint = node.cilium.add_endpoint(container_id=alloc["ID"], ipv4="10.0.0.1",
                                        container_name=alloc["Name"])
    assert "reserved:init" in str(endpoint_for(node, alloc["ID"]))
    others_before = len(other.cilium.endpoints())

    stopped = threading.Event()
    stream = StreamServer([lambda index: [frame(40, alloc, node, "pending"),
                                          frame(41, alloc, node, "running"),
                                          ("wait", lambda: stopped.wait(120)),
                                          frame(42, alloc, node, "complete")]])
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(lab.inventory()))
    env = dict(os.environ, **lab.env())
    env.update(NOMAD_ADDR=stream.address, JAVA_HOME=JAVA_HOME,
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    log = open(tmp_path / "rulebook.log", "w")
    proc = subprocess.Popen([RULEBOOK, "-r", "netreap.cilium.netreap", "-i", str(inventory)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        want = netreap_labels("checkout", "default", "api", {"team": "payments"})
        labelled = wait_for(lambda: set(want) <= endpoint_labels(
            endpoint_for(node, alloc["ID"]) or {}), 60)
        text = (tmp_path / "rulebook.log").read_text()
        assert labelled, "endpoint not labelled:\n" + text[-4000:]
        lab.nomad.update_allocation(alloc["ID"], client_status="complete")
        stopped.set()
        removed = wait_for(lambda: endpoint_for(node, alloc["ID"]) is None, 60)
        text = (tmp_path / "rulebook.log").read_text()
        assert removed, "leaked endpoint not removed:\n" + text[-4000:]
        # Only the event's node was touched.
        assert len(other.cilium.endpoints()) == others_before
        assert ("[%s]" % other.name) not in text

        # A new policy published to Consul reaches every node's agent.
        lab.consul.kv_put(POLICY_KEY, json.dumps(POLICY_V2))
        applied = wait_for(lambda: all(rule_names(n.cilium.policy_rules()) == {
            "web-ingress", "cache-from-web"} for n in lab.nodes), 60)
        text = (tmp_path / "rulebook.log").read_text()
        assert applied, "policy not applied on every node:\n" + text[-4000:]
    finally:
        stop_process(proc)
        log.close()
        stopped.set()
        stream.close()
        shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)
