"""Bad-input corpus: invalid policies, invalid module options and malformed kvstore values.

Every case must be refused (the run fails) or skipped (the object is left alone and reported)
with a message naming what is wrong, and nothing may be written: the lab's request log holds no
write to Consul, Nomad or the agent, and the kvstore, endpoints and policy are as before.

Data: bad_inputs/policies.yaml (invalid policies), bad_inputs/options.yaml (invalid options).
"""

import json
import os
import shutil
import tempfile

import pytest
import yaml

from tests.lab.kvstore import consul_encode
from tests.lab.lab import Lab
from tests.support.modules import run_module

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_inputs")
WRITE_METHODS = ("PUT", "POST", "PATCH", "DELETE")
IDS = "cilium/state/identities/v1/id/"
VALUES = "cilium/state/identities/v1/value/"
POLICY_KEY = "netreap.io/policy"


def load(name):
    with open(os.path.join(DATA, name)) as handle:
        return yaml.safe_load(handle)


POLICIES = load("policies.yaml")
OPTIONS = load("options.yaml")


@pytest.fixture(scope="module")
def bi_lab():
    """One Cilium 1.16 node on a Consul kvstore; every test checks its own before/after."""
    state_dir = tempfile.mkdtemp(prefix="bi-", dir="/tmp")
    lab = Lab(state_dir, nodes=1, cilium="1.16", kvstore="consul", scenario="clean").start()
    yield lab
    lab.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


def bi_snapshot(lab):
    """Everything a run could change: the whole Consul KV, each agent's endpoints and policy."""
    return {"kv": dict(lab.kv.backend.list("")),
            "nodes": [(n.cilium.endpoints(), n.cilium.policy_rules(), n.cilium.policy_revision)
                      for n in lab.nodes]}


def bi_writes(lab):
    return [(e["service"], e["method"], e["path"]) for e in lab.log.entries() if e["method"] in WRITE_METHODS]


class bi_nothing_written:
    """``with bi_nothing_written(lab):`` -- no write request, and the lab's state is unchanged."""

    def __init__(self, lab):
        self.lab = lab

    def __enter__(self):
        self.before = bi_snapshot(self.lab)
        self.lab.log.clear()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            assert bi_writes(self.lab) == []
            assert bi_snapshot(self.lab) == self.before


def bi_connection(lab, module):
    node = lab.nodes[0]
    args = {}
    if module in ("cilium_node_gc", "cilium_identity_gc", "cilium_kvstore_heartbeat"):
        args.update(kvstore="consul", consul_address=lab.consul_endpoint.url, consul_timeout=5)
    if module in ("cilium_node_gc", "cilium_endpoint"):
        args.update(nomad_address=lab.nomad_endpoint.url, nomad_timeout=5)
    if module in ("cilium_policy",):
        args.update(consul_address=lab.consul_endpoint.url)
    if module in ("cilium_endpoint", "cilium_policy", "cilium_agent_info"):
        args.update(cilium_socket=node.socket_path)
    if module == "cilium_endpoint":
        args.update(nomad_node_id=node.node_id)
    return args


# -- invalid policies ---------------------------------------------------------------------------
def test_the_corpus_is_big_enough():
    assert len(POLICIES) >= 20 and len({c["id"] for c in POLICIES}) == len(POLICIES)
    assert len(OPTIONS) >= 15 and len({c["id"] for c in OPTIONS}) == len(OPTIONS)


@pytest.mark.parametrize("case", POLICIES, ids=[c["id"] for c in POLICIES])
def test_invalid_policy_is_refused_before_publishing_or_applying(bi_lab, case):
    args = dict(bi_connection(bi_lab, "cilium_policy"), rules=case["rules"], publish=True, apply=True)
    if case.get("versions"):
        args["cilium_versions"] = case["versions"]
    with bi_nothing_written(bi_lab):
        result = run_module("cilium_policy", args)
    assert result.failed, result
    for text in case["expect"]:
        assert text in result["msg"], (text, result["msg"])
    assert "nothing was published or applied" in result["msg"]


def test_an_empty_peer_list_is_accepted_for_1_16_and_later_and_kept_as_deny(bi_lab):
    """Since 1.16 ``fromEndpoints: []`` selects no peer (an explicit deny-all item): the module
    publishes and applies it verbatim; for 1.15 and older it is refused (see the corpus)."""
    rules = [{"labels": ["unspec:name=deny-all-in"], "endpointSelector": {"matchLabels": {"app": "x"}},
              "ingress": [{"fromEndpoints": []}]}]
    args = dict(bi_connection(bi_lab, "cilium_policy"), rules=rules, apply=True, publish=True,
                cilium_versions=["1.16", "1.19"])
    published_before = bi_lab.kv.backend.get(POLICY_KEY)
    result = run_module("cilium_policy", args)
    try:
        assert not result.failed, result["msg"]
        assert result["applied"] and result["published"] and result["validated_for"] == ["1.16", "1.19"]
        # published verbatim (the agent's GET omits empty lists, Go's omitempty, so look at Consul)
        published = json.loads(bi_lab.kv.backend.get(POLICY_KEY))
        assert [r["ingress"] for r in published] == [[{"fromEndpoints": []}]]
        assert any(lbl.get("value") == "deny-all-in" for r in bi_lab.nodes[0].cilium.policy_rules()
                   for lbl in r.get("labels", []))
        refused = run_module("cilium_policy", dict(args, cilium_versions=["1.15", "1.16"]), check_mode=True)
        assert refused.failed and "(Cilium 1.15)" in refused["msg"]
    finally:
        run_module("cilium_policy", dict(bi_connection(bi_lab, "cilium_policy"), state="absent"))
        if published_before is None:
            bi_lab.kv.backend.delete(POLICY_KEY)
        else:
            bi_lab.kv.backend.put(POLICY_KEY, published_before)


def test_a_policy_over_consuls_value_limit_is_not_published(bi_lab):
    rules = [{"labels": ["unspec:name=huge"], "endpointSelector": {}, "description": "x" * (520 * 1024),
              "ingress": [{"fromEntities": ["world"]}]}]
    with bi_nothing_written(bi_lab):
        result = run_module("cilium_policy", dict(bi_connection(bi_lab, "cilium_policy"), rules=rules,
                                                  publish=True, apply=False))
    assert result.failed
    assert "more than Consul's limit of 524288 bytes (512 KiB)" in result["msg"]
    assert "nothing was published or applied" in result["msg"]


# -- invalid module options ---------------------------------------------------------------------
@pytest.mark.parametrize("case", OPTIONS, ids=[c["id"] for c in OPTIONS])
def test_invalid_option_is_refused(bi_lab, case):
    args = dict(bi_connection(bi_lab, case["module"]), **case["args"])
    for name, value in case.get("unset", {}).items():
        args.pop(name, None)
    with bi_nothing_written(bi_lab):
        result = run_module(case["module"], args)
    assert result.failed, result
    for text in case["expect"]:
        assert text in result["msg"], (text, result["msg"])


# -- malformed kvstore values -------------------------------------------------------------------
@pytest.fixture
def bi_keys(bi_lab):
    """Put raw keys into the lab's Consul for one test; removed afterwards."""
    previous = {}

    def put(key, value):
        previous.setdefault(key, bi_lab.kv.backend.get(key))
        bi_lab.kv.backend.put(key, value)

    yield put
    for key, value in previous.items():
        if value is None:
            bi_lab.kv.backend.delete(key)
        else:
            bi_lab.kv.backend.put(key, value)


def bi_node_gc(lab):
    return run_module("cilium_node_gc", dict(bi_connection(lab, "cilium_node_gc"), min_age=0))


def test_a_node_key_that_is_not_json_is_left_alone(bi_lab, bi_keys):
    key = bi_lab.kv.node_key("ghost-not-json")
    bi_keys(key, "this is not JSON")
    for unused in range(2):  # the first run would mark a stale node, the second delete it
        with bi_nothing_written(bi_lab):
            result = bi_node_gc(bi_lab)
        assert not result.failed, result["msg"]
        assert result["marked"] == result["deleted"] == []
        (kept,) = [k for k in result["kept"] if k["key"] == key]
        assert kept["reason"] == "value is not Cilium node JSON: left alone (not written by an agent)"


def test_a_node_key_whose_name_differs_is_left_alone(bi_lab, bi_keys):
    key = bi_lab.kv.node_key("ghost-renamed")
    node = bi_lab.kv.write_node("ghost-renamed", "198.51.100.40", "10.202.0.0/24")
    bi_keys(key, json.dumps(dict(node, Name="nomad-client-elsewhere")))
    for unused in range(2):
        with bi_nothing_written(bi_lab):
            result = bi_node_gc(bi_lab)
        assert not result.failed, result["msg"]
        assert result["marked"] == result["deleted"] == []
        (kept,) = [k for k in result["kept"] if k["key"] == key]
        assert "value names node 'nomad-client-elsewhere', not 'ghost-renamed'" in kept["reason"]


def bi_identity_gc(lab):
    return run_module("cilium_identity_gc", dict(bi_connection(lab, "cilium_identity_gc"), min_age=0))


@pytest.mark.parametrize("stored, reason", [
    ("not*base64url!", "is not base64url-encoded (Consul stores label keys base64url-encoded)"),
    (consul_encode("12345"), "'12345' is not a label key (source:key=value;...)"),
    (consul_encode('{"labels": "app=x"}'), "is not a label key"),
], ids=["bad-base64url", "a-number", "json"])
def test_an_identity_master_key_without_a_label_key_is_left_alone(bi_lab, bi_keys, stored, reason):
    bi_keys(IDS + "4000", stored)
    for unused in range(2):
        with bi_nothing_written(bi_lab):
            result = bi_identity_gc(bi_lab)
        assert not result.failed, result["msg"]
        assert result["marked"] == result["deleted"] == []
        (kept,) = [k for k in result["kept"] if k["key"] == IDS + "4000"]
        assert reason in kept["reason"] and kept["reason"].endswith(": left alone")


def test_an_identity_with_a_non_numeric_value_key_counts_as_used(bi_lab, bi_keys):
    """A value key whose value is not a number still names the label key: the identity is kept
    (never delete on doubt) and the value key is not touched either."""
    labels = "netreap:nomad.job_id=odd;"
    bi_keys(IDS + "4001", consul_encode(labels))
    bi_keys(VALUES + consul_encode(labels) + "/192.0.2.50", "not-a-number")
    for unused in range(2):
        with bi_nothing_written(bi_lab):
            result = bi_identity_gc(bi_lab)
        assert not result.failed, result["msg"]
        assert result["marked"] == result["deleted"] == []
        assert result["counts"]["in_use"] >= 1


def test_a_published_policy_that_is_not_json_is_not_applied(bi_lab, bi_keys):
    bi_keys(POLICY_KEY, '[{"endpointSelector": {}, "ingress": [')
    with bi_nothing_written(bi_lab):
        result = run_module("cilium_policy", dict(bi_connection(bi_lab, "cilium_policy"), from_consul=True))
    assert result.failed
    assert result["msg"].startswith("Consul key netreap.io/policy: invalid policy: ")
    assert "nothing was published or applied" in result["msg"]


def test_a_published_policy_with_an_invalid_rule_is_not_applied(bi_lab, bi_keys):
    bad = [{"labels": ["unspec:name=typo"], "endpointSelector": {}, "egress": [{"toEntities": ["wrld"]}]}]
    bi_keys(POLICY_KEY, json.dumps(bad))
    with bi_nothing_written(bi_lab):
        result = run_module("cilium_policy", dict(bi_connection(bi_lab, "cilium_policy"), from_consul=True))
    assert result.failed
    assert "rules[0] (name=typo) egress[0].toEntities[0]: unsupported entity: wrld" in result["msg"]
