"""cilium_agent_info against lab agents of every version profile."""

import time

import pytest

from tests.lab import httpd
from tests.support.modules import run_module

EXPECTED = {
    # profile: (rest_policy_write, replace_with_labels, static_policy_supported, consul_kvstore, cli)
    "1.13": (True, False, False, True, "cilium"),
    "1.14": (True, False, False, True, "cilium"),
    "1.15": (True, True, False, True, "cilium-dbg"),
    "1.16": (True, True, True, True, "cilium-dbg"),
    "1.17": (True, True, True, False, "cilium-dbg"),
    "1.18": (True, True, True, False, "cilium-dbg"),
    "1.19": (False, False, True, False, "cilium-dbg"),
}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_reports_version_and_capabilities(lab_factory, profile):
    kvstore = "consul" if EXPECTED[profile][3] else "etcd"
    lab = lab_factory(nodes=1, cilium=profile, kvstore=kvstore, scenario="clean")
    node = lab.nodes[0]
    result = run_module("cilium_agent_info", {"cilium_socket": node.socket_path,
                                              "static_policy_dir": node.static_policy_dir})
    assert not result.failed, result
    caps = result["capabilities"]
    rest, replace, static, consul_ok, cli = EXPECTED[profile]
    assert result["version"].startswith(profile + ".")
    assert (caps["rest_policy_write"], caps["replace_with_labels"], caps["static_policy_supported"],
            caps["consul_kvstore_supported"], caps["cli_name"]) == (rest, replace, static, consul_ok, cli)
    assert result["kvstore_type"] == kvstore
    assert result["healthy"] is True and result["changed"] is False
    assert result["endpoint_count"] == len(node.cilium.endpoints())
    if rest:
        assert result["policy_revision"] == node.cilium.policy_revision
    if static:
        assert caps["static_policy_dir"] == node.static_policy_dir
        assert "static-dir" in caps["policy_methods"]
    else:
        assert caps["static_policy_dir"] is None
    if profile == "1.19":
        assert caps["policy_methods"] == ["static-dir"]


def test_reads_only_and_in_few_requests(lab):
    node = lab.nodes[0]
    lab.log.clear()
    result = run_module("cilium_agent_info", {"cilium_socket": node.socket_path}, check_mode=True)
    assert not result.failed
    entries = lab.log.entries(service=node.cilium.name)
    assert {e["method"] for e in entries} == {"GET"}
    assert len(entries) == 4  # healthz, config, endpoint list, policy


def test_cilium_sock_environment_fallback(lab, monkeypatch):
    node = lab.nodes[1]
    monkeypatch.setenv("CILIUM_SOCK", node.socket_path)
    result = run_module("cilium_agent_info", {})
    assert not result.failed and result["endpoint_count"] == len(node.cilium.endpoints())


def test_missing_socket_fails_clearly(tmp_path):
    path = str(tmp_path / "cilium.sock")
    result = run_module("cilium_agent_info", {"cilium_socket": path, "cilium_timeout": 2})
    assert result.failed
    assert result["msg"].startswith("read Cilium agent at %s: cilium GET" % path)
    assert "connection refused" in result["msg"]


def test_agent_error_names_status_and_body(lab):
    node = lab.nodes[0]
    node.cilium.faults.add(httpd.Fault(status=500, body='"controller sync failed"', path="/v1/config"))
    result = run_module("cilium_agent_info", {"cilium_socket": node.socket_path})
    assert result.failed and result["status"] == 500
    assert result["msg"] == ('read Cilium agent at %s: cilium HTTP 500: "controller sync failed"'
                             % node.socket_path)


def test_etcd_agent_degrades_without_heartbeat_and_fail_on_unhealthy(lab_factory):
    # 1.17: the heartbeat timer runs from agent start (from 1.18 only clustermesh clients check it)
    lab = lab_factory(nodes=1, cilium="1.17", kvstore="etcd", scenario="clean",
                      heartbeat_timeout=0.6)
    node = lab.nodes[0]
    args = {"cilium_socket": node.socket_path, "fail_on_unhealthy": True}
    assert not run_module("cilium_agent_info", args).failed
    time.sleep(0.6 * 2.5)
    result = run_module("cilium_agent_info", args)
    assert result.failed and result["healthy"] is False
    assert result["kvstore"]["state"] == "Failure"
    assert "quorum check failed" in result["msg"] and node.socket_path in result["msg"]
    assert result["version"] == "1.17.6"  # reported even with the kvstore down
    lab.kv.write_heartbeat()
    assert not run_module("cilium_agent_info", args).failed
