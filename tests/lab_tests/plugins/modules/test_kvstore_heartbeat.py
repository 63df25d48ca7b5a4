"""cilium_kvstore_heartbeat: etcd-backed lab agents report their kvstore healthy only while the
heartbeat runs; one write per run; check mode, min_interval and failures."""

import calendar
import time

import pytest

from tests.lab import httpd
from tests.lab.kvstore import HEARTBEAT
from tests.support.modules import CONSUL_KINDS, KV_BACKENDS, kvstore_args, kvstore_writes, run_module

BACKENDS = KV_BACKENDS


def kvstore_states(lab):
    states = []
    for node in lab.nodes:
        info = run_module("cilium_agent_info", {"cilium_socket": node.socket_path})
        states.append(info["kvstore"]["state"])
    return states


@pytest.mark.parametrize("cilium", ["1.16", "1.17"])
def test_etcd_agents_up_to_1_17_are_healthy_only_while_the_heartbeat_runs(lab_factory, cilium):
    # 1.16: any event of the agent's heartbeat watch resets its timer (the watch's initial listing
    # is one, so the timer runs from start-up); 1.17: the timer starts with the agent.  Either
    # way an agent fails its quorum check 1.5 s after the last heartbeat update (2 min in
    # Cilium) and reports Failure after two more failed checks (0.375 s apart): at 2.25 s.
    lab = lab_factory(nodes=2, cilium=cilium, kvstore="etcd", scenario="clean", heartbeat_timeout=1.5)
    args = kvstore_args(lab)
    started = time.monotonic()
    while time.monotonic() - started < 4.0:  # well past the point agents would have failed
        assert not run_module("cilium_kvstore_heartbeat", args).failed
        assert kvstore_states(lab) == ["Ok", "Ok"]
        time.sleep(0.2)
    time.sleep(3.0)  # the heartbeat stops
    assert kvstore_states(lab) == ["Failure", "Failure"]
    info = run_module("cilium_agent_info", {"cilium_socket": lab.nodes[0].socket_path})
    assert "since last heartbeat update has been received" in info["kvstore"]["msg"]
    # the agent still reports its version while its kvstore is down
    assert info["version"] == lab.profile["full_version"] and info["healthy"] is False
    run_module("cilium_kvstore_heartbeat", args)
    assert kvstore_states(lab) == ["Ok", "Ok"]


def test_etcd_agents_without_heartbeat_degrade_from_start_up_on_1_17(lab_factory):
    """Nobody ever writes the heartbeat: a 1.17 agent still fails once the timer it started at
    start-up runs out (a cluster without the heartbeat duty degrades after two minutes)."""
    lab = lab_factory(nodes=1, cilium="1.17", kvstore="etcd", scenario="clean", heartbeat_timeout=0.5)
    assert kvstore_states(lab) == ["Ok"]
    time.sleep(1.5)
    assert kvstore_states(lab) == ["Failure"]


@pytest.mark.parametrize("cilium", ["1.18", "1.19"])
def test_etcd_agents_from_1_18_never_degrade_without_heartbeat(lab_factory, cilium):
    """From 1.18 only clustermesh clients check the heartbeat: a node's own kvstore stays Ok
    with nobody writing it (the duty matters only to clusters that others mesh with)."""
    lab = lab_factory(nodes=1, cilium=cilium, kvstore="etcd", scenario="clean", heartbeat_timeout=0.5)
    time.sleep(1.5)
    assert kvstore_states(lab) == ["Ok"]
    assert not run_module("cilium_kvstore_heartbeat", kvstore_args(lab)).failed
    assert lab.kv.backend.get(HEARTBEAT) is not None and kvstore_states(lab) == ["Ok"]


@pytest.mark.parametrize("lab_args", BACKENDS)
def test_one_write_per_run(lab_factory, lab_args):
    kvstore, cilium, consul = lab_args
    lab = lab_factory(consul=consul, nodes=1, cilium=cilium, kvstore=kvstore, scenario="clean")
    lab.log.clear()
    before = time.time()
    result = run_module("cilium_kvstore_heartbeat", kvstore_args(lab))
    assert not result.failed and result["changed"] is True and result["key"] == HEARTBEAT
    assert result["requests"] == {"kvstore": 1} and len(kvstore_writes(lab)) == 1
    stored = lab.kv.backend.get(HEARTBEAT).decode()
    assert stored == result["value"]
    written = calendar.timegm(time.strptime(stored, "%Y-%m-%dT%H:%M:%SZ"))  # RFC 3339, UTC
    assert before - 1 <= written <= time.time() + 1


@pytest.mark.parametrize("consul", CONSUL_KINDS)
def test_check_mode_writes_nothing(lab_factory, consul):
    lab = lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="clean", consul=consul)
    lab.log.clear()
    result = run_module("cilium_kvstore_heartbeat", kvstore_args(lab), check_mode=True)
    assert result["changed"] is True and kvstore_writes(lab) == [] and lab.kv.backend.get(HEARTBEAT) is None


@pytest.mark.parametrize("consul", CONSUL_KINDS)
def test_min_interval_skips_a_fresh_heartbeat(lab_factory, consul):
    lab = lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="clean", consul=consul)
    args = kvstore_args(lab, min_interval=60)
    first = run_module("cilium_kvstore_heartbeat", args)
    assert first["changed"] is True and first["previous"] is None
    lab.log.clear()
    second = run_module("cilium_kvstore_heartbeat", args)
    assert second["changed"] is False and second["value"] == first["value"]
    assert second["requests"] == {"kvstore": 1} and kvstore_writes(lab) == []
    lab.kv.backend.put(HEARTBEAT, "2020-01-01T00:00:00+01:00")
    third = run_module("cilium_kvstore_heartbeat", args)
    assert third["changed"] is True and third["previous"] == "2020-01-01T00:00:00+01:00"


@pytest.mark.parametrize("consul", CONSUL_KINDS)
def test_failure_names_key_status_and_body(lab_factory, consul):
    lab = lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="clean", consul=consul)
    lab.consul.faults.add(httpd.Fault(status=403, body="Permission denied: token lacks 'key:write'"))
    result = run_module("cilium_kvstore_heartbeat", kvstore_args(lab))
    assert result.failed and result["msg"] == (
        "write cilium/.heartbeat to the consul kvstore: consul HTTP 403: Permission denied: token "
        "lacks 'key:write'")
