"""``python -m tests.lab alloc start|stop`` against a running lab: an allocation starts and stops
the way Nomad and cilium-cni make it (docs/lab.md), and Nomad's event stream reports each step."""

import json
import subprocess

import pytest

from tests.support.eda import HTTP, LAB_CLI, lab_cli as run, lab_endpoint, lab_process


@pytest.fixture(scope="module")
def running_lab():
    with lab_process("--nodes", 2) as lab:
        yield lab


def alloc_events(nomad, alloc_id, count):
    """(Type, ClientStatus, DesiredStatus) of the allocation's first ``count`` events."""
    url = nomad + "/v1/event/stream?topic=Allocation:%s&namespace=*" % alloc_id
    seen = []
    with HTTP.open(url, timeout=5) as stream:
        for line in stream:
            frame = json.loads(line)
            for event in frame.get("Events", []):
                alloc = event["Payload"]["Allocation"]
                seen.append((event["Type"], alloc["ClientStatus"], alloc["DesiredStatus"]))
            if len(seen) >= count:
                break
    return seen


def test_alloc_start_runs_it_with_an_init_endpoint_and_stop_removes_the_endpoint(running_lab):
    state, lab = running_lab
    alloc_id = run("alloc", "start", "--state-dir", state, "--node", "nomad-client-2",
                   "--job", "checkout", "--group", "api", "--namespace", "shop",
                   "--meta", "team=payments")
    with HTTP.open(lab["nomad"] + "/v1/allocation/" + alloc_id, timeout=5) as resp:
        alloc = json.loads(resp.read())
    endpoint = lab_endpoint(state, "nomad-client-2", alloc_id)
    assert (alloc["ClientStatus"], alloc["Namespace"], alloc["TaskGroup"]) == ("running", "shop", "api")
    assert alloc["NodeName"] == "nomad-client-2" and alloc["Job"]["Meta"] == {"team": "payments"}
    assert endpoint["status"]["labels"]["security-relevant"] == ["reserved:init"]
    assert alloc["NetworkStatus"]["Address"] == endpoint["status"]["networking"]["addressing"][0]["ipv4"]
    assert alloc_events(lab["nomad"], alloc_id, 2) == [("PlanResult", "pending", "run"),
                                                       ("AllocationUpdated", "running", "run")]

    assert run("alloc", "stop", "--state-dir", state, "--alloc", alloc_id) == alloc_id
    assert lab_endpoint(state, "nomad-client-2", alloc_id) is None
    assert alloc_events(lab["nomad"], alloc_id, 4)[2:] == [("PlanResult", "running", "stop"),
                                                           ("AllocationUpdated", "complete", "stop")]


def test_alloc_stop_with_leak_endpoint_leaves_the_endpoint(running_lab):
    state, unused = running_lab
    alloc_id = run("alloc", "start", "--state-dir", state, "--node", "nomad-client-1", "--job", "web")
    run("alloc", "stop", "--state-dir", state, "--alloc", alloc_id, "--leak-endpoint")
    assert lab_endpoint(state, "nomad-client-1", alloc_id) is not None


def test_alloc_stop_of_an_unknown_allocation_fails_with_its_id(running_lab):
    state, unused = running_lab
    proc = subprocess.run(LAB_CLI + ["alloc", "stop", "--state-dir", state, "--alloc", "nope"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "no such allocation 'nope'" in proc.stderr
