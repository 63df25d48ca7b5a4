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
import time

import pytest
import yaml

from tests.lab.scenarios import POLICY_KEY, POLICY_V2, netreap_labels
from tests.lab_tests.test_cilium_policy import our_names
from tests.unit.extensions.eda.test_eda_nomad_events import StreamServer

BIN = os.path.dirname(sys.executable)
JAVA_HOME = os.environ.get("JAVA_HOME") or "/usr/lib/jvm/java-17-openjdk-amd64"
RULEBOOK = os.path.join(BIN, "ansible-rulebook")

pytestmark = pytest.mark.skipif(
    not os.path.exists(RULEBOOK) or not os.path.exists(os.path.join(JAVA_HOME, "bin", "java")),
    reason="ansible-rulebook or Java 17 missing (scripts/setup.sh installs both)")


def frame(index, alloc, node, status):
    payload = {"ID": alloc["ID"], "NodeID": node.node_id, "NodeName": node.name,
               "Namespace": alloc["Namespace"], "JobID": alloc["JobID"],
               "TaskGroup": alloc["TaskGroup"], "ClientStatus": status, "DesiredStatus": "run"}
    return {"Index": index, "Events": [{
        "Topic": "Allocation", "Type": "AllocationUpdated", "Key": alloc["ID"],
        "Namespace": alloc["Namespace"], "FilterKeys": [alloc["JobID"], ""], "Index": index,
        "Payload": {"Allocation": payload}}]}


def wait_for(check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def stop_process(proc):
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def endpoint_for(node, alloc_id):
    for endpoint in node.cilium.endpoints():
        if (endpoint.get("status") or {}).get("external-identifiers", {}).get(
                "container-id") == alloc_id:
            return endpoint
    return None


def endpoint_labels(endpoint):
    labels = ((endpoint.get("status") or {}).get("labels") or {})
    return set(labels.get("security-relevant") or labels.get("realized", {}).get("user") or [])


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
        applied = wait_for(lambda: all(our_names(n.cilium.policy_rules()) == {
            "web-ingress", "cache-from-web"} for n in lab.nodes), 60)
        text = (tmp_path / "rulebook.log").read_text()
        assert applied, "policy not applied on every node:\n" + text[-4000:]
    finally:
        stop_process(proc)
        log.close()
        stopped.set()
        stream.close()
        shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)
