"""The fault matrix (tests/reliability/fault_cases.py) run against the lab.

Every case: start a drifted lab (stale kvstore nodes and identities, unlabelled and orphaned
endpoints, a published policy the agents do not run yet), prime the GC marks, snapshot everything
the collection manages, inject the fault, run the module (or reap.yml) and check

(a) the message names the service, the object and the status;
(b) nothing was deleted or overwritten beyond what is confirmed safe: in a ``strict`` case the
    snapshot is unchanged (and, with ``no_writes``, not one write request was sent); otherwise
    every change the faulted run made is one the clean runs that follow make too;
(c) with the faults cleared, the next clean run converges: the second clean run is changed=false.

docs/fault-matrix.md is generated from the same table; the last test fails when it is stale.
"""

import json
import os

import pytest

from tests.lab import httpd, scenarios
from tests.support.modules import etcd_front, kvstore_args, run_module
from tests.support.playbook import FAST_GC, changed_tasks, reap, summary, task_results
from tests.reliability import gen_fault_doc
from tests.reliability.fault_cases import CASES

LABS = {
    "consul": dict(nodes=2, cilium="1.16", kvstore="consul", scenario="drift"),
    "consul-acl": dict(nodes=2, cilium="1.16", kvstore="consul", scenario="drift", acl=True),
    "etcd": dict(nodes=2, cilium="1.19", kvstore="etcd", scenario="drift"),
}
GC_MODULES = ("cilium_node_gc", "cilium_identity_gc")
TIMEOUTS = ("consul_timeout", "nomad_timeout", "cilium_timeout", "etcd_timeout")
# Rules published by the "publish" cases: the drift scenario's V2 plus one rule.
V3 = scenarios.POLICY_V2 + [{
    "labels": [{"key": "name", "value": "api-from-web", "source": "unspec"}],
    "endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "api"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"netreap:nomad.job_id": "web"}}],
                 "toPorts": [{"ports": [{"port": "9090", "protocol": "TCP"}]}]}],
}]
REAP_CLEAN = FAST_GC + ["-e", "netreap_heartbeat_min_interval=300"]
GC_KEYS = ("cilium/state/nodes/", "cilium/state/identities/v1/id/")


# -- module options -------------------------------------------------------------------------------
def clean_args(lab, module, case_args):
    """Options of a fault-free run of ``module`` against node 1 / the lab's kvstore."""
    node = lab.nodes[0]
    args = {}
    if module in GC_MODULES or module == "cilium_kvstore_heartbeat":
        args = kvstore_args(lab)
        if module == "cilium_node_gc":
            args.update(nomad_address=lab.nomad_endpoint.url, min_age=0, lock_ttl=10)
            if lab.acl:
                args["nomad_token"] = lab.tokens["nomad"]
        elif module == "cilium_identity_gc":
            args.update(min_age=0, lock_ttl=10)
        else:
            args["min_interval"] = 300
    elif module == "cilium_endpoint":
        args = {"cilium_socket": node.socket_path, "nomad_address": node.nomad_address,
                "nomad_node_id": node.node_id}
        if lab.acl:
            args["nomad_token"] = lab.tokens["nomad"]
    elif module == "cilium_policy":
        args = {"consul_address": lab.consul_endpoint.url, "cilium_socket": node.socket_path}
        if node.static_policy_dir:
            args["static_policy_dir"] = node.static_policy_dir
        if lab.acl:
            args["consul_token"] = lab.tokens["consul"]
    elif module == "cilium_agent_info":
        args = {"cilium_socket": node.socket_path}
    for key, value in case_args.items():
        if key not in TIMEOUTS:
            args[key] = V3 if value == "V3" else value
    return args


def fault_args(lab, case):
    args = clean_args(lab, case["module"], case["args"])
    args.update((k, v) for k, v in case["args"].items() if k in TIMEOUTS)
    if case["module"] == "cilium_kvstore_heartbeat":
        args["min_interval"] = 0  # write now
    return args


# -- what the collection manages, as one flat dict ------------------------------------------------
def snapshot(lab):
    state = {}
    if lab.kvstore_type == "consul":
        items = lab.kv.backend.list("")
    else:
        items = lab.kv.backend.list("cilium/")
    for key, value in items.items():
        if key.startswith("cilium/") and key != "cilium/.heartbeat":
            state["kv:" + key] = value
    entry = lab.consul.kv_get(scenarios.POLICY_KEY)
    state["consul:" + scenarios.POLICY_KEY] = entry.get("Value") if entry else None
    for node in lab.nodes:
        for ep in node.cilium.endpoints():
            labels = ep["status"]["labels"]
            state["endpoint:%s:%s" % (node.name, ep["id"])] = sorted(
                labels["security-relevant"] + labels["derived"])
        state["policy:" + node.name] = sorted(json.dumps(r, sort_keys=True) for r in node.cilium.policy_rules())
        if node.static_policy_dir:
            for name in sorted(os.listdir(node.static_policy_dir)):
                with open(os.path.join(node.static_policy_dir, name)) as handle:
                    state["file:%s:%s" % (node.name, name)] = handle.read()
    return state


def changes(before, after):
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def write_requests(lab):
    """Write requests that reached a service (injected faults answered them instead: not counted)."""
    out = []
    for entry in lab.log.entries():
        if entry["fault"]:
            continue
        if entry["service"] == "etcd":
            if entry["path"] != "/v3/kv/range":
                out.append(entry)
        elif entry["method"] in ("PUT", "POST", "PATCH", "DELETE"):
            out.append(entry)
    return out


# -- injecting and clearing faults ----------------------------------------------------------------
def fault_table(lab, target):
    node = lab.nodes[0]
    return {"consul": lambda: lab.consul.faults, "nomad": lambda: lab.nomad.faults,
            "nomad-agent": lambda: node.agent_endpoint.service.faults,
            "agent": lambda: node.cilium.faults, "etcd": lambda: etcd_front(lab).faults}[target]()


def endpoint_of(lab, name):
    return {"consul": lab.consul_endpoint, "nomad": lab.nomad_endpoint,
            "agent": lab.nodes[0].cilium_endpoint}[name]


def setup_consul_partial_token(lab, args):
    """A Consul token that may write everything but read only some identity value keys."""
    hidden = lab.consul.kv_keys("cilium/state/identities/v1/value/")[0]
    secret = "partial-consul-token"
    lab.consul.add_token(secret, key_prefix_rules={"": "write", hidden: "deny"},
                         session_prefix_rules={"": "write"})
    args["consul_token"] = secret


def setup_nomad_scoped_token(lab, args):
    """A workload in namespace "billing" on node 1, and a Nomad token that reads only "default"."""
    node = lab.nodes[0]
    lab.nomad.add_namespace("billing")
    alloc = lab.nomad.add_allocation(node.node_id, "ledger", task_group="main", namespace="billing")
    address = (alloc.get("NetworkStatus") or {}).get("Address") or None
    node.cilium.add_endpoint(container_id=alloc["ID"], ipv4=address, container_name=alloc["Name"])
    args["nomad_token"] = lab.nomad.add_token("scoped-nomad-token", namespaces={"default": "read"},
                                              node="read", agent="read")


SETUPS = {"consul_partial_token": setup_consul_partial_token, "nomad_scoped_token": setup_nomad_scoped_token}


def prepare(lab, case, args):
    """Setups (scoped tokens, extra workloads) happen before the snapshot."""
    for item in case["inject"]:
        if "setup" in item:
            SETUPS[item["setup"]](lab, args)


def inject(lab, case, args):
    for item in case["inject"]:
        if "fault" in item:
            fault_table(lab, item["target"]).add(httpd.Fault(**item["fault"]))
        elif "pause" in item:
            endpoint_of(lab, item["pause"]).pause()
        elif item.get("etcd_stop"):
            args["etcd_endpoints"] = [lab.etcd.url]  # straight to etcd: "connection refused"
            lab.etcd.stop()


def clear(lab, case):
    for item in case["inject"]:
        if "fault" in item:
            fault_table(lab, item["target"]).clear()
        elif "pause" in item:
            endpoint_of(lab, item["pause"]).resume()
        elif item.get("etcd_stop"):
            lab.etcd.start()


# -- the matrix -----------------------------------------------------------------------------------
def expected_text(lab, case):
    node = lab.nodes[0]
    return [m.format(socket=node.socket_path, node_id=node.node_id) for m in case["msg"]]


def run_case_module(lab, case, warnings):
    module = case["module"]
    if module in GC_MODULES:  # an earlier run marked the stale keys: this run would delete them
        primed = run_module(module, clean_args(lab, module, case["args"]))
        assert not primed.failed and primed["marked"], primed
    args = fault_args(lab, case)
    prepare(lab, case, args)
    before = snapshot(lab)
    lab.log.clear()
    inject(lab, case, args)
    result = run_module(module, args)
    writes = write_requests(lab)
    clear(lab, case)
    after = snapshot(lab)
    text = result["msg"] if result.failed else json.dumps(result) + "\n".join(warnings)
    clean = [run_module(module, clean_args(lab, module, case["args"])) for unused in range(2)]
    return before, after, result, text, writes, clean


def run_case_playbook(lab, case):
    # what an earlier reap.yml run did (in-process, faster): reap the orphaned endpoints (which
    # frees their identities), then mark the stale nodes and identities
    for node in lab.nodes:
        done = run_module("cilium_endpoint", {"cilium_socket": node.socket_path, "nomad_node_id": node.node_id,
                                              "nomad_address": node.nomad_address})
        assert not done.failed and done["reaped"], done
    for module in GC_MODULES:
        primed = run_module(module, clean_args(lab, module, {}))
        assert not primed.failed and primed["marked"], primed
    args = {}
    prepare(lab, case, args)
    before = snapshot(lab)
    lab.log.clear()
    inject(lab, case, args)
    rc, out = reap(lab, *FAST_GC)
    clear(lab, case)
    after = snapshot(lab)
    # a failed kvstore, Nomad list or heartbeat never stops the node duties (nor the summary)
    duties = task_results(out, "Apply the published policy")
    assert sorted(duties) == sorted(n.name for n in lab.nodes), duties
    if not any(item.get("etcd_stop") for item in case["inject"]):
        labelled = task_results(out, "Label endpoints")
        assert not any(r.get("failed") for r in labelled.values()), labelled
    summary(out)
    result = {"failed": rc != 0, "changed": bool(changed_tasks(out))}
    clean = []
    for unused in range(2):
        clean_rc, clean_out = reap(lab, *REAP_CLEAN)
        clean.append({"failed": clean_rc != 0, "changed": bool(changed_tasks(clean_out)),
                      "changed_tasks": changed_tasks(clean_out)})
    return before, after, result, json.dumps(out), [], clean


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_fault(case, lab_factory, fm_no_backoff, fm_warnings):
    lab = lab_factory(**LABS[case["lab"]])
    if case["module"] == "reap.yml":
        before, after, result, text, writes, clean = run_case_playbook(lab, case)
    else:
        before, after, result, text, writes, clean = run_case_module(lab, case, fm_warnings)
    final = snapshot(lab)
    description = "%s: %s" % (case["id"], case["description"])

    # (a) a clear message naming the service, the object and the status
    assert bool(result.get("failed")) == (case["expect"] == "fail"), (description, result)
    for wanted in expected_text(lab, case):
        assert wanted in text, (description, wanted, text)
    assert "Traceback" not in text, (description, text)

    # (b) nothing deleted or overwritten beyond what is confirmed safe
    if case["no_writes"]:
        assert writes == [], (description, writes)
    if case["strict"]:
        assert changes(before, after) == [], (description, changes(before, after))
    for key in changes(before, after):
        assert after.get(key) == final.get(key), (
            "%s: the faulted run changed %s in a way no clean run does" % (description, key),
            before.get(key), after.get(key), final.get(key))
    if case["expect"] == "fail":
        for key in before:
            if key.startswith(tuple("kv:" + p for p in GC_KEYS)):
                assert key in after, (description, "deleted by a failed run", key)

    # (c) once the fault is gone, the next clean run converges
    assert not clean[0].get("failed"), (description, clean[0])
    assert not clean[1].get("failed") and not clean[1]["changed"], (description, clean[1])


def test_matrix_has_enough_distinct_cases():
    assert len(CASES) >= 25
    assert {c["service"] for c in CASES} == {"consul", "nomad", "cilium", "etcd"}
    assert len({(c["service"], c["fault"], c["module"]) for c in CASES}) == len(CASES)


def test_fault_matrix_doc_is_generated_from_the_cases():
    with open(gen_fault_doc.DOC_PATH, encoding="utf-8") as handle:
        assert handle.read() == gen_fault_doc.render(CASES), (
            "docs/fault-matrix.md is stale: run python -m tests.reliability.gen_fault_doc")
