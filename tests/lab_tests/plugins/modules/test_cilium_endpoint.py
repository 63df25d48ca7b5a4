"""cilium_endpoint against the lab: Netreap's labels, reaping with its safety rules, Nomad and
agent failures, rate limits, check mode, and request counts that do not grow with endpoints."""

import os
import shutil
import tempfile
import time
import uuid

import pytest

from ansible.module_utils import basic

from tests.lab import httpd
from tests.lab.cilium import PROFILES, CiliumAgentSim
from tests.lab.scenarios import JOBS, netreap_labels
from tests.support.modules import run_module

WRITES = ("PATCH", "DELETE", "PUT", "POST")
DOCKER_ID = "3f1e9c0a7b6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f"


def kvstore_for(profile):
    return "consul" if PROFILES[profile]["consul_kvstore"] else "etcd"


def args_for(node, **extra):
    args = {"cilium_socket": node.socket_path, "nomad_address": node.nomad_address,
            "nomad_node_id": node.node_id}
    args.update(extra)
    return args


def writes(lab, node):
    return sum(lab.log.count(service=node.cilium.name, method=m) for m in WRITES)


def labels_by_container(node):
    """container ID -> sorted labels (security-relevant and derived), reserved ones under their name."""
    out = {}
    for ep in node.cilium.endpoints():
        status = ep["status"]
        key = status["external-identifiers"].get("container-id") or "ep-%d" % ep["id"]
        out[key] = sorted(status["labels"]["security-relevant"] + status["labels"]["derived"])
    return out


def add_workload(lab, node, job_id, group="main", labels=None, ipv4=None, container=True, **alloc_kw):
    """A Nomad allocation on ``node`` and the endpoint Nomad's CNI call made for it."""
    alloc = lab.nomad.add_allocation(node.node_id, job_id, task_group=group, address=ipv4, **alloc_kw)
    address = (alloc.get("NetworkStatus") or {}).get("Address") or None
    ep = node.cilium.add_endpoint(container_id=alloc["ID"] if container else None, labels=labels,
                                  ipv4=address, container_name=alloc["Name"] if container else None)
    return alloc, ep


def drift_ids(lab, node):
    """The drift scenario's endpoints on one node, by role."""
    allocs = {a["JobID"]: a["ID"] for a in lab.nomad.allocations(node.node_id)}
    known = set(allocs.values())
    orphan = [c for c in labels_by_container(node) if not c.startswith("ep-") and c not in known]
    return allocs["web"], allocs["cache"], allocs["nightly-report"], orphan[0]


@pytest.fixture
def warnings_seen(monkeypatch):
    seen = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, text, **kw: seen.append(text))
    return seen


@pytest.fixture
def drift(lab_factory):
    return lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="drift")


@pytest.fixture
def clean(lab_factory):
    return lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="clean")


# -- the drift scenario, every version profile ----------------------------------------------------

@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_drift_one_run_labels_and_reaps_second_run_changes_nothing(lab_factory, profile):
    lab = lab_factory(nodes=2, cilium=profile, kvstore=kvstore_for(profile), scenario="drift")
    web_job = JOBS[0]
    for node in lab.nodes:
        web, cache, nightly, orphan = drift_ids(lab, node)
        if PROFILES[profile]["cni_attachment_id"]:
            assert any(ep["status"]["external-identifiers"].get("cni-attachment-id") == web + ":eth0"
                       for ep in node.cilium.endpoints())
        lab.log.clear()
        # No nomad_node_id: read from the node's own Nomad agent (agent/self).
        args = {"cilium_socket": node.socket_path, "nomad_address": node.nomad_address}
        first = run_module("cilium_endpoint", args)
        assert not first.failed, first
        assert first["changed"] and first["node_id"] == node.node_id
        # Ansible reads "skipped" and "failed" in a result as the task's outcome.
        assert not {"skipped", "failed"} & set(first)
        assert sorted(i["allocation"] for i in first["labelled"]) == sorted([web, cache])
        assert {i["allocation"]: i["reason"] for i in first["reaped"]} == {
            nightly: "allocation is terminal (client status complete, desired status stop)",
            orphan: "allocation no longer exists in Nomad"}
        after = labels_by_container(node)
        assert after[web] == netreap_labels("web", "default", "frontend", web_job[2], web_job[3])
        assert after[cache] == netreap_labels("cache", "default", "redis")
        assert nightly not in after and orphan not in after
        assert sorted(k for k in after if k.startswith("ep-")) == sorted(
            "ep-%d" % s["id"] for s in first["skipped_endpoints"])  # host and health, untouched
        # agent/self + allocations + one confirmation that the orphan's allocation is gone;
        # endpoint list + 2 PATCH + 2 DELETE.
        assert first["requests"] == {"nomad": 3, "cilium": 5}
        assert lab.log.count(service="nomad-agent:" + node.name) == 3

        lab.log.clear()
        second = run_module("cilium_endpoint", args)
        assert not second.failed and second["changed"] is False
        assert second["labelled"] == second["reaped"] == []
        assert sorted(i["allocation"] for i in second["unchanged"]) == sorted([web, cache])
        assert writes(lab, node) == 0
        assert second["requests"] == {"nomad": 2, "cilium": 1}


# -- Netreap's labelling cases ------------------------------------------------------------------

def test_no_endpoints_changes_nothing(clean):
    node = clean.nodes[0]
    for ep in node.cilium.endpoints():
        node.cilium.remove_endpoint(ep["id"])
    clean.log.clear()
    result = run_module("cilium_endpoint", args_for(node))
    assert not result.failed and result["changed"] is False
    assert result["labelled"] == result["reaped"] == result["skipped_endpoints"] == result["unchanged"] == []
    assert writes(clean, node) == 0 and result["requests"] == {"nomad": 1, "cilium": 1}


def test_init_endpoint_of_a_job_without_meta_gets_exactly_the_three_netreap_labels(clean):
    node = clean.nodes[0]
    alloc, ep = add_workload(clean, node, "batch-a", group="worker")
    assert ep["status"]["labels"]["security-relevant"] == ["reserved:init"]
    result = run_module("cilium_endpoint", args_for(node))
    assert not result.failed and [i["id"] for i in result["labelled"]] == [ep["id"]]
    now = [e for e in node.cilium.endpoints() if e["id"] == ep["id"]][0]["status"]
    assert now["labels"]["security-relevant"] == ["netreap:nomad.job_id=batch-a",
                                                  "netreap:nomad.namespace=default",
                                                  "netreap:nomad.task_group_id=worker"]
    assert now["labels"]["derived"] == [] and now["identity"]["id"] > 255 and now["state"] == "ready"
    assert now["external-identifiers"]["container-name"] == alloc["Name"]


def test_meta_merge_group_wins(clean):
    node = clean.nodes[0]
    alloc, ep = add_workload(clean, node, "api", group="http", job_meta={"team": "payments", "tier": "edge"},
                             group_meta={"tier": "front"})
    result = run_module("cilium_endpoint", args_for(node))
    assert not result.failed
    assert labels_by_container(node)[alloc["ID"]] == [
        "netreap:nomad.job_id=api", "netreap:nomad.namespace=default", "netreap:nomad.task_group_id=http",
        "nomad:team=payments", "nomad:tier=front"]


def test_task_meta_on_request(clean):
    node = clean.nodes[0]
    alloc, ep = add_workload(clean, node, "api", job_meta={"tier": "edge"}, task_meta={"lang": "go"})
    run_module("cilium_endpoint", args_for(node))
    assert "nomad:lang=go" not in labels_by_container(node)[alloc["ID"]]
    result = run_module("cilium_endpoint", args_for(node, task_meta=True))
    assert result["changed"] and "nomad:lang=go" in labels_by_container(node)[alloc["ID"]]


def test_unchanged_labels_mean_no_patch(clean):
    node = clean.nodes[0]
    clean.log.clear()
    result = run_module("cilium_endpoint", args_for(node))
    assert not result.failed and result["changed"] is False
    assert len(result["unchanged"]) == len(JOBS)
    assert writes(clean, node) == 0


def test_meta_filters_keep_identity_labels_to_what_policies_need(clean):
    node = clean.nodes[0]
    web = [a for a in clean.nomad.allocations(node.node_id) if a["JobID"] == "web"][0]
    result = run_module("cilium_endpoint", args_for(node, meta_include=["t*"], meta_exclude=["tier"]))
    assert [i["allocation"] for i in result["labelled"]] == [web["ID"]]
    assert labels_by_container(node)[web["ID"]] == netreap_labels("web", "default", "frontend",
                                                                  {"team": "payments"})


def test_invalid_meta_value_is_skipped_with_a_warning_or_sanitized(clean, warnings_seen):
    node = clean.nodes[0]
    alloc, ep = add_workload(clean, node, "api", job_meta={"owner": "Jane Doe", "team": "payments"})
    result = run_module("cilium_endpoint", args_for(node))
    assert "nomad:owner=Jane Doe" not in labels_by_container(node)[alloc["ID"]]
    assert "nomad:team=payments" in labels_by_container(node)[alloc["ID"]]
    assert [(n["key"], n["action"], n["allocations"]) for n in result["meta_notes"]] == [("owner", "dropped", 1)]
    assert any("'owner'" in w and "default/api" in w for w in warnings_seen)
    result = run_module("cilium_endpoint", args_for(node, invalid_meta="sanitize"))
    assert result["changed"] and "nomad:owner=Jane-Doe" in labels_by_container(node)[alloc["ID"]]


def test_endpoint_without_container_id_is_matched_by_its_address(clean):
    node = clean.nodes[0]
    alloc, ep = add_workload(clean, node, "legacy", ipv4="10.200.1.77", container=False)
    assert not ep["status"]["external-identifiers"].get("container-id")
    result = run_module("cilium_endpoint", args_for(node))
    item = [i for i in result["labelled"] if i["id"] == ep["id"]][0]
    assert item["matched_by"] == "ip" and item["allocation"] == alloc["ID"]
    assert labels_by_container(node)[alloc["ID"]] == netreap_labels("legacy", "default", "main")
    clean.log.clear()
    assert run_module("cilium_endpoint", args_for(node))["changed"] is False
    assert writes(clean, node) == 0


# -- what is never touched ----------------------------------------------------------------------

def test_reserved_and_foreign_endpoints_are_untouched(drift):
    node = drift.nodes[0]
    init = node.cilium.add_endpoint()  # reserved:init, no container: not Nomad's (yet)
    docker = node.cilium.add_endpoint(container_id=DOCKER_ID, labels=["container:app=x"])
    before = {k: v for k, v in labels_by_container(node).items() if k.startswith("ep-") or k == DOCKER_ID}
    result = run_module("cilium_endpoint", args_for(node))
    assert not result.failed
    after = labels_by_container(node)
    assert {k: after[k] for k in before} == before
    reasons = {s["id"]: s["reason"] for s in result["skipped_endpoints"]}
    assert sorted(r for r in reasons.values() if r.startswith("reserved endpoint")) == [
        "reserved endpoint (reserved:health)", "reserved endpoint (reserved:host)"]
    assert reasons[init["id"]].startswith("reserved:init endpoint without a container ID")
    assert reasons[docker["id"]] == "container ID %s is not a Nomad allocation ID" % DOCKER_ID
    touched = {e["path"] for e in drift.log.entries(service=node.cilium.name) if e["method"] in WRITES}
    assert touched == {"/v1/endpoint/%d" % i["id"] for i in result["labelled"] + result["reaped"]}


# -- reaping --------------------------------------------------------------------------------------

@pytest.mark.parametrize("client, desired, reaped", [
    ("complete", "stop", True), ("failed", "run", True), ("lost", "stop", True),
    ("running", "stop", False),  # still shutting down: keep
])
def test_terminal_allocations_are_reaped(clean, client, desired, reaped):
    node = clean.nodes[0]
    alloc, ep = add_workload(clean, node, "job-x", labels=netreap_labels("job-x", "default", "main"))
    clean.nomad.update_allocation(alloc["ID"], client_status=client, desired_status=desired)
    result = run_module("cilium_endpoint", args_for(node))
    assert not result.failed
    assert (alloc["ID"] in labels_by_container(node)) is not reaped
    assert bool(result["reaped"]) is reaped


def test_reaping_can_be_turned_off_and_delayed(drift):
    node = drift.nodes[0]
    web, cache, nightly, orphan = drift_ids(drift, node)
    result = run_module("cilium_endpoint", args_for(node, reap=False))
    assert result["reaped"] == [] and drift.log.count(service=node.cilium.name, method="DELETE") == 0
    assert len(result["labelled"]) == 2
    assert nightly in labels_by_container(node) and orphan in labels_by_container(node)
    result = run_module("cilium_endpoint", args_for(node, reap_min_age=3600))
    assert [i["allocation"] for i in result["reaped"]] == [orphan]
    kept = [s for s in result["skipped_endpoints"] if s["allocation"] == nightly][0]
    assert "kept until reap_min_age (3600s)" in kept["reason"]


def test_orphan_is_reaped_only_after_nomad_confirms_its_allocation_is_gone(drift):
    node = drift.nodes[0]
    orphan = drift_ids(drift, node)[3]
    drift.log.clear()
    run_module("cilium_endpoint", args_for(node))
    trail = [(e["method"], e["path"]) for e in drift.log.entries()
             if orphan in e["path"] or e["method"] == "DELETE"]
    lookup = ("GET", "/v1/allocation/" + orphan)
    assert trail[0] == lookup and ("DELETE" in [m for m, p in trail[1:]])
    assert drift.log.entries(path="/v1/allocation/" + orphan)[0]["status"] == 404


# -- Nomad failures: nothing reaped ---------------------------------------------------------------

@pytest.mark.parametrize("fault, extra, expect", [
    (dict(status=500, body="rpc error: No cluster leader"), {}, "nomad HTTP 500: rpc error: No cluster leader"),
    (dict(status=403, body="Permission denied"), {}, "nomad HTTP 403: Permission denied"),
    (dict(action="hang", delay=3), {"nomad_timeout": 1}, "timed out"),
])
def test_failed_allocation_list_changes_nothing(drift, fault, extra, expect):
    node = drift.nodes[0]
    before = labels_by_container(node)
    drift.nomad.faults.add(httpd.Fault(path="/allocations$", **fault))
    drift.log.clear()
    result = run_module("cilium_endpoint", args_for(node, **extra))
    assert result.failed and expect in result["msg"]
    assert result["msg"].startswith("read the allocations of Nomad node %s (nothing was changed)" % node.node_id)
    assert writes(drift, node) == 0 and labels_by_container(node) == before


def test_unknown_node_id_does_not_make_every_endpoint_an_orphan(drift):
    node = drift.nodes[0]
    before = labels_by_container(node)
    drift.log.clear()
    result = run_module("cilium_endpoint", args_for(node, nomad_node_id=str(uuid.uuid4())))
    assert result.failed and "whose allocation list is empty" in result["msg"] and "HTTP 404" in result["msg"]
    assert writes(drift, node) == 0 and labels_by_container(node) == before


def test_failed_confirmation_keeps_the_endpoint(drift, warnings_seen):
    node = drift.nodes[0]
    web, cache, nightly, orphan = drift_ids(drift, node)
    drift.nomad.faults.add(httpd.Fault(status=500, body="rpc error: EOF", path="/v1/allocation/"))
    result = run_module("cilium_endpoint", args_for(node))
    assert not result.failed
    assert [i["allocation"] for i in result["reaped"]] == [nightly]  # terminal per the list: fine
    assert orphan in labels_by_container(node)
    kept = [s for s in result["skipped_endpoints"] if s["container_id"] == orphan][0]
    assert "could not confirm" in kept["reason"] and "nomad HTTP 500: rpc error: EOF" in kept["reason"]
    assert any("Nomad could not confirm" in w for w in warnings_seen)


def test_namespace_scoped_token_never_reaps_what_it_cannot_see(lab_factory, warnings_seen):
    lab = lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="clean", acl=True)
    node = lab.nodes[0]
    lab.nomad.add_namespace("billing")
    hidden, hidden_ep = add_workload(lab, node, "ledger", namespace="billing")
    orphan_ep = node.cilium.add_endpoint(container_id=str(uuid.uuid4()))
    scoped = lab.nomad.add_token("scoped-" + uuid.uuid4().hex, namespaces={"default": "read"},
                                 node="read", agent="read")
    result = run_module("cilium_endpoint", args_for(node, nomad_token=scoped))
    assert not result.failed
    # The node's list silently left out "billing"; only a 404 on the allocation itself is "gone".
    assert [i["id"] for i in result["reaped"]] == [orphan_ep["id"]]
    assert hidden["ID"] in labels_by_container(node)
    kept = [s for s in result["skipped_endpoints"] if s["container_id"] == hidden["ID"]][0]
    assert kept["reason"].startswith("kept: Nomad could not confirm that allocation %s is gone" % hidden["ID"])
    assert any("token allowed to read every namespace" in w for w in warnings_seen)

    result = run_module("cilium_endpoint", args_for(node, nomad_token=lab.tokens["nomad"]))
    assert [i["allocation"] for i in result["labelled"]] == [hidden["ID"]]
    assert labels_by_container(node)[hidden["ID"]] == netreap_labels("ledger", "billing", "main")


def test_token_without_node_read_fails_without_writes(lab_factory):
    lab = lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="drift", acl=True)
    node = lab.nodes[0]
    token = lab.nomad.add_token("no-node-" + uuid.uuid4().hex, namespaces={"*": "read"}, node=None, agent="read")
    lab.log.clear()
    result = run_module("cilium_endpoint", args_for(node, nomad_token=token))
    assert result.failed and "nomad HTTP 403: Permission denied" in result["msg"]
    assert writes(lab, node) == 0


def test_agent_errors_fail_clearly(drift):
    node = drift.nodes[0]
    node.cilium.faults.add(httpd.Fault(status=500, body='"endpoint manager not ready"', method="GET",
                                       path="^/v1/endpoint$"))
    result = run_module("cilium_endpoint", args_for(node))
    assert result.failed and result["labelled"] == [] and result["reaped"] == []
    assert result["msg"] == ('list endpoints of the Cilium agent at %s: cilium HTTP 500: "endpoint manager not ready"'
                             % node.socket_path)


def test_missing_agent_socket_fails_fast_and_clearly(drift, tmp_path):
    node = drift.nodes[0]
    path = str(tmp_path / "cilium.sock")
    started = time.monotonic()
    result = run_module("cilium_endpoint", args_for(node, cilium_socket=path))
    assert result.failed and time.monotonic() - started < 30  # not retry_deadline (120 s)
    assert result["msg"].startswith("list endpoints of the Cilium agent at %s: cilium GET" % path)
    assert "connection refused" in result["msg"]


# -- rate limits ----------------------------------------------------------------------------------

def test_429_storm_is_ridden_out(drift):
    node = drift.nodes[0]
    extra = [add_workload(drift, node, "burst-%d" % k)[0]["ID"] for k in range(2)]
    node.cilium.set_rate_limit(True, burst=2)
    drift.log.clear()
    result = run_module("cilium_endpoint", args_for(node))
    node.cilium.set_rate_limit(False)
    assert not result.failed, result["msg"] if result.failed else None
    assert len(result["labelled"]) == 4 and len(result["reaped"]) == 2
    assert drift.log.count(service=node.cilium.name, method="PATCH") > 4  # some were refused, then retried
    assert any(e["status"] == 429 for e in drift.log.entries(service=node.cilium.name, method="PATCH"))
    for alloc_id in extra:
        assert "netreap:nomad.namespace=default" in labels_by_container(node)[alloc_id]


def test_429_beyond_the_deadline_is_reported_after_the_rest_is_done(drift):
    node = drift.nodes[0]
    web, cache, nightly, orphan = drift_ids(drift, node)
    web_ep = [ep["id"] for ep in node.cilium.endpoints() if ep["status"]["external-identifiers"].get(
        "container-id") == web][0]
    node.cilium.faults.add(httpd.Fault(status=429, body='"request would have to wait 20s to be served"',
                                       method="PATCH", path="^/v1/endpoint/%d$" % web_ep, count=None))
    result = run_module("cilium_endpoint", args_for(node, retry_deadline=1))
    assert result.failed and result["changed"]
    assert result["errors"] == [{"id": web_ep, "allocation": web, "action": "label", "msg": (
        'label endpoint %d (allocation %s): cilium HTTP 429: "request would have to wait 20s to be served"'
        % (web_ep, web))}]
    assert result["msg"].startswith("cilium_endpoint on Nomad node %s: 1 of 4 changes not made: label endpoint %d"
                                    % (node.node_id, web_ep))
    assert [i["allocation"] for i in result["labelled"]] == [cache]
    assert sorted(i["allocation"] for i in result["reaped"]) == sorted([nightly, orphan])
    assert drift.log.count(service=node.cilium.name, method="PATCH", path="/%d$" % web_ep) >= 2  # retried
    node.cilium.faults.clear()
    again = run_module("cilium_endpoint", args_for(node))
    assert not again.failed and [i["allocation"] for i in again["labelled"]] == [web]
    assert run_module("cilium_endpoint", args_for(node))["changed"] is False


# -- check mode and diff ------------------------------------------------------------------------

def test_check_mode_predicts_and_writes_nothing(drift):
    node = drift.nodes[0]
    web, cache, nightly, orphan = drift_ids(drift, node)
    before = labels_by_container(node)
    drift.log.clear()
    result = run_module("cilium_endpoint", args_for(node), check_mode=True, diff=True)
    assert not result.failed and result["changed"]
    assert sorted(i["allocation"] for i in result["labelled"]) == sorted([web, cache])
    assert sorted(i["allocation"] for i in result["reaped"]) == sorted([nightly, orphan])
    assert writes(drift, node) == 0 and labels_by_container(node) == before
    diff = result["diff"]
    web_key = [k for k in diff["after"] if web in k][0]
    assert diff["before"][web_key] == ["reserved:init"]
    assert diff["after"][web_key] == netreap_labels("web", "default", "frontend", *JOBS[0][2:])
    reaped_keys = [k for k in diff["before"] if nightly in k or orphan in k]
    assert len(reaped_keys) == 2 and not any(k in diff["after"] for k in reaped_keys)
    real = run_module("cilium_endpoint", args_for(node))
    assert sorted(i["id"] for i in real["labelled"]) == sorted(i["id"] for i in result["labelled"])
    assert sorted(i["id"] for i in real["reaped"]) == sorted(i["id"] for i in result["reaped"])


# -- request counts -------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 100, 1000])
def test_requests_do_not_grow_with_endpoints(clean, count):
    node = clean.nodes[0]
    for k in range(count):
        ip = "10.60.%d.%d" % (k // 250, k % 250 + 1)
        job, meta = "svc-%d" % (k % 10), {"team": "t%d" % (k % 10)}
        add_workload(clean, node, job, ipv4=ip, job_meta=meta, labels=netreap_labels(job, "default", "main", meta))
    add_workload(clean, node, "fresh-a", ipv4="10.61.0.1")
    add_workload(clean, node, "fresh-b", ipv4="10.61.0.2")
    done, unused = add_workload(clean, node, "done", ipv4="10.61.0.3")
    clean.nomad.update_allocation(done["ID"], client_status="complete", desired_status="stop")
    node.cilium.add_endpoint(container_id=str(uuid.uuid4()), ipv4="10.61.0.4")
    total = len(node.cilium.endpoints())
    assert total == count + len(JOBS) + 6  # + host, health

    clean.log.clear()
    first = run_module("cilium_endpoint", args_for(node))
    assert not first.failed
    assert (len(first["labelled"]), len(first["reaped"]), len(first["unchanged"])) == (2, 2, count + len(JOBS))
    # Nomad: allocations + one confirmation for the orphan.  Cilium: list + 2 PATCH + 2 DELETE.
    assert first["requests"] == {"nomad": 2, "cilium": 5}
    assert clean.log.count(service="nomad-agent:" + node.name) == 2
    assert clean.log.count(service=node.cilium.name) == 5

    clean.log.clear()
    second = run_module("cilium_endpoint", args_for(node))
    assert second["changed"] is False and len(second["unchanged"]) == count + len(JOBS) + 2
    assert second["requests"] == {"nomad": 1, "cilium": 1}
    assert clean.log.count() == 2


# -- the agent's --labels filter ------------------------------------------------------------------

@pytest.mark.parametrize("label_filter, identity_has_meta, stays_init", [
    (["netreap:.*"], False, False),  # the recommended setting: meta labels are informational
    (["k8s:.*"], False, True),       # nothing of ours is identity-relevant: init identity stays
    (None, True, False),             # agent default: everything is identity-relevant
])
def test_agent_label_filter_does_not_cause_repeated_patches(clean, label_filter, identity_has_meta, stays_init,
                                                            warnings_seen):
    node = clean.nodes[0]
    state = tempfile.mkdtemp(prefix="ep-", dir="/tmp")
    agent = CiliumAgentSim(node.name, version="1.16", kvstore="consul", label_filter=label_filter)
    served = httpd.serve_unix(agent, os.path.join(state, "c.sock"))
    try:
        web = [a for a in clean.nomad.allocations(node.node_id) if a["JobID"] == "web"][0]
        ep = agent.add_endpoint(container_id=web["ID"])
        args = args_for(node, cilium_socket=served.unix_path)
        first = run_module("cilium_endpoint", args)
        assert [i["id"] for i in first["labelled"]] == [ep["id"]]
        labels = agent.endpoints()[0]["status"]["labels"]
        assert sorted(labels["security-relevant"] + labels["derived"]) == sorted(
            (["reserved:init"] if stays_init else []) + netreap_labels("web", "default", "frontend", *JOBS[0][2:]))
        assert ("nomad:team=payments" in labels["security-relevant"]) is identity_has_meta
        assert ("reserved:init" in labels["security-relevant"]) is stays_init
        second = run_module("cilium_endpoint", args)
        assert second["changed"] is False and [i["id"] for i in second["unchanged"]] == [ep["id"]]
        assert any("--labels" in w for w in warnings_seen) is stays_init
    finally:
        served.stop()
        shutil.rmtree(state, ignore_errors=True)
