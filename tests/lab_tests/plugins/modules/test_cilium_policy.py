"""cilium_policy against the lab: publish once, apply on every agent, across version profiles.

The simulated agents record every state of their policy repository (``policy_history``), so
these tests can assert that an update never leaves an agent without our rules, and that rules
we do not own (scenarios.FOREIGN_RULE, seeded by the drift scenario) survive every step.  The
simulator validates rules with its own implementation (tests/lab/policy_rules.py); where a test
feeds it the rules our module refused, the two validators check each other.
"""

import copy
import json
import os
import re

import pytest

from tests.lab import httpd, scenarios
from tests.lab import cilium as lab_cilium
from tests.lab import policy_rules as agent_validator
from tests.lab.control import UnixHTTPConnection
from tests.support.modules import run_module

KVSTORE = {"1.13": "consul", "1.15": "consul", "1.16": "consul", "1.18": "etcd", "1.19": "etcd"}
METHOD = {"1.13": "add-then-delete", "1.15": "replace-with-labels", "1.16": "replace-with-labels",
          "1.18": "replace-with-labels", "1.19": "static-dir"}
FOREIGN = "operator-managed-host-rule"
WEB = {"matchLabels": {"netreap:nomad.job_id": "web"}}


def rule(name, **body):
    out = {"labels": [{"key": "name", "value": name, "source": "unspec"}]}
    out.update(body)
    return out


# The drift scenario publishes POLICY_V2 (web-ingress, cache-from-web).  V4 changes web-ingress,
# drops cache-from-web and adds api-from-web.
V4 = [
    rule("web-ingress", endpointSelector=WEB, ingress=[{
        "fromEntities": ["world"],
        "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}, {"port": "8443", "protocol": "TCP"}]}]}]),
    rule("api-from-web", endpointSelector={"matchLabels": {"netreap:nomad.job_id": "api"}},
         ingress=[{"fromEndpoints": [WEB], "toPorts": [{"ports": [{"port": "9090", "protocol": "TCP"}]}]}]),
]


def start(lab_factory, profile, nodes=1):
    return lab_factory(nodes=nodes, cilium=profile, kvstore=KVSTORE.get(profile, "etcd"), scenario="drift")


def consul(lab):
    return {"consul_address": lab.consul_endpoint.url}


def on_node(lab, node, **args):
    out = dict(consul(lab), cilium_socket=node.socket_path)
    if node.static_policy_dir:
        out["static_policy_dir"] = node.static_policy_dir
    out.update(args)
    return out


def labels_of(agent_rule):
    return {(lbl.get("source"), lbl["key"]): lbl.get("value", "") for lbl in agent_rule.get("labels", [])}


def our_names(rules):
    """Names of the rules this collection put into an agent (REST: owner label; files: name)."""
    names = set()
    for agent_rule in rules:
        labels = labels_of(agent_rule)
        if labels.get(("netreap", "io.netreap.managed-by")) == "netreap.cilium":
            names.add(labels.get(("unspec", "name")))
        filename = labels.get(("directory", "filename"), "")
        if filename.startswith("netreap-"):
            names.add(filename[len("netreap-"):-len(".yaml")])
    return names


def foreign_present(rules):
    return any(labels_of(r).get(("unspec", "name")) == FOREIGN for r in rules)


def writes(lab):
    return [e for e in lab.log.entries() if e["method"] != "GET"]


def dir_state(path):
    if not path:
        return {}
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as handle:
            out[name] = handle.read()
    return out


def assert_never_without(node, since, keep):
    """Every repository state after revision ``since`` has the rules ``keep`` and the foreign rule."""
    states = [s for s in node.cilium.policy_history if s["revision"] > since]
    assert states, "nothing changed in %s" % node.name
    for state in states:
        assert keep <= our_names(state["rules"]), (node.name, state["revision"], our_names(state["rules"]))
        assert foreign_present(state["rules"]), (node.name, state["revision"])


def consul_rules(lab):
    return json.loads(lab.consul.kv_get(scenarios.POLICY_KEY)["Value"])


# ------------------------------------------------------------------------------------------------
# Done-when: a change published once reaches every agent in one run, with no policy gap
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", sorted(KVSTORE))
def test_published_once_reaches_every_agent_without_a_gap(lab_factory, profile):
    lab = start(lab_factory, profile, nodes=3)
    # First rollout of what is published already (the drift scenario's key).
    for node in lab.nodes:
        result = run_module("cilium_policy", on_node(lab, node, from_consul=True))
        assert not result.failed, result
        assert result["method"] == METHOD[profile] and result["applied"] is True
        assert our_names(node.cilium.policy_rules()) == {"web-ingress", "cache-from-web"}
        assert result["policy_revision"] == node.cilium.policy_revision
    before = {node.name: node.cilium.policy_revision for node in lab.nodes}

    published = run_module("cilium_policy", dict(consul(lab), rules=V4, publish=True, apply=False), diff=True)
    assert not published.failed, published
    assert published["published"] is True and published["changed"] is True
    assert published["publish_changes"] == {"added": ["api-from-web"], "removed": ["cache-from-web"],
                                            "changed": ["web-ingress"]}
    assert consul_rules(lab) == V4
    assert published["diff"][0]["before_header"] == "consul:netreap.io/policy"

    for node in lab.nodes:  # what reap.yml does on every node
        result = run_module("cilium_policy", on_node(lab, node, from_consul=True))
        assert not result.failed, result
        assert result["apply_changes"] == published["publish_changes"]
        assert result["policy_revision"] == node.cilium.policy_revision > before[node.name]
    for node in lab.nodes:
        rules = node.cilium.policy_rules()
        assert our_names(rules) == {"web-ingress", "api-from-web"} and foreign_present(rules)
        web = [r for r in rules if "web-ingress" in our_names([r])]
        assert len(web) == 1 and [p["port"] for p in web[0]["ingress"][0]["toPorts"][0]["ports"]] == ["8080", "8443"]
        assert_never_without(node, before[node.name], {"web-ingress"})
        assert node.cilium.static_policy_errors == [] if node.static_policy_dir else True

    # Idempotent: a second run changes nothing and writes nothing anywhere.
    files = {node.name: dir_state(node.static_policy_dir) for node in lab.nodes}
    lab.log.clear()
    assert run_module("cilium_policy", dict(consul(lab), rules=V4, publish=True, apply=False))["changed"] is False
    for node in lab.nodes:
        result = run_module("cilium_policy", on_node(lab, node, from_consul=True))
        assert result["changed"] is False and result["applied"] is False, result
        assert dir_state(node.static_policy_dir) == files[node.name]
    assert writes(lab) == []


def test_check_mode_predicts_and_writes_nothing(lab_factory):
    for profile in ("1.16", "1.19"):
        lab = start(lab_factory, profile)
        node = lab.nodes[0]
        lab.log.clear()
        files = dir_state(node.static_policy_dir)
        result = run_module("cilium_policy", on_node(lab, node, rules=V4, publish=True), check_mode=True, diff=True)
        assert not result.failed, result
        assert result["changed"] and result["published"] and result["applied"]
        assert result["apply_changes"]["added"] == ["web-ingress", "api-from-web"]
        assert writes(lab) == [] and dir_state(node.static_policy_dir) == files
        assert consul_rules(lab) == scenarios.POLICY_V2 and our_names(node.cilium.policy_rules()) == set()
        headers = [d["after_header"] for d in result["diff"]]
        assert headers[0] == "consul:netreap.io/policy"
        if profile == "1.19":
            assert os.path.join(node.static_policy_dir, "netreap-web-ingress.yaml") in headers


def test_normalised_equal_rules_are_not_published_again(lab_factory):
    lab = start(lab_factory, "1.16")
    same = copy.deepcopy(scenarios.POLICY_V2)
    same[0]["labels"] = ["name=web-ingress"]                     # short label form
    same[1]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = 6379  # a YAML number
    same[1] = {k.capitalize() if k == "ingress" else k: v for k, v in same[1].items()}  # Go matches any case
    lab.log.clear()
    result = run_module("cilium_policy", dict(consul(lab), rules=same, publish=True, apply=False))
    assert not result.failed and result["changed"] is False, result
    assert lab.log.count(service="consul", method="PUT") == 0


def test_concurrent_publishers_exactly_one_wins(lab_factory, monkeypatch):
    """B publishes between A's read and A's check-and-set write: B wins, A fails and writes nothing."""
    lab = start(lab_factory, "1.16")
    from ansible_collections.netreap.cilium.plugins.module_utils._consul import ConsulClient
    original = ConsulClient.kv_put
    other = [rule("b-only", endpointSelector=WEB, ingress=[{"fromEntities": ["host"]}])]
    outcome = {}

    def racing_put(self, key, value, **kwargs):
        if not outcome:  # A is about to write: B runs completely first
            outcome["b"] = None
            outcome["b"] = run_module("cilium_policy", dict(consul(lab), rules=other, publish=True, apply=False))
        return original(self, key, value, **kwargs)

    monkeypatch.setattr(ConsulClient, "kv_put", racing_put)
    result_a = run_module("cilium_policy", dict(consul(lab), rules=V4, publish=True, apply=False))
    assert not outcome["b"].failed and outcome["b"]["published"] is True
    assert result_a.failed and "changed by someone else" in result_a["msg"], result_a
    assert "nothing was published or applied" in result_a["msg"]
    assert consul_rules(lab) == other
    assert lab.log.count(service="consul", method="PUT") == 2  # B's write and A's refused CAS


# ------------------------------------------------------------------------------------------------
# The agent rejects: the old policy stays in force and the result says so
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["1.13", "1.16"])
def test_agent_rejecting_the_put_keeps_the_old_policy(lab_factory, profile):
    lab = start(lab_factory, profile)
    node = lab.nodes[0]
    assert not run_module("cilium_policy", on_node(lab, node, from_consul=True)).failed
    revision = node.cilium.policy_revision
    node.cilium.faults.add(httpd.Fault(status=500, body='"L7 policy is not supported since L7 proxy is not enabled"',
                                       method="PUT", path="^/v1/policy"))
    result = run_module("cilium_policy", on_node(lab, node, rules=V4))
    assert result.failed and result["status"] == 500
    assert result["msg"] == ('apply policy to Cilium agent at %s: cilium HTTP 500: "L7 policy is not supported since '
                             'L7 proxy is not enabled"; the agent kept its previous policy (revision %d)'
                             % (node.socket_path, revision))
    assert result["policy_revision"] == revision == node.cilium.policy_revision
    assert our_names(node.cilium.policy_rules()) == {"web-ingress", "cache-from-web"}


def test_interrupted_add_then_delete_is_finished_by_the_next_run(lab_factory):
    lab = start(lab_factory, "1.13")
    node = lab.nodes[0]
    assert not run_module("cilium_policy", on_node(lab, node, from_consul=True)).failed
    since = node.cilium.policy_revision
    node.cilium.faults.add(httpd.Fault(status=503, body='"busy"', method="DELETE", path="^/v1/policy"))
    result = run_module("cilium_policy", on_node(lab, node, rules=V4))
    assert result.failed and "the new rules are in force" in result["msg"] and "HTTP 503" in result["msg"]
    assert our_names(node.cilium.policy_rules()) == {"web-ingress", "cache-from-web", "api-from-web"}
    lab.log.clear()
    result = run_module("cilium_policy", on_node(lab, node, rules=V4))
    assert not result.failed and result["changed"] is True
    assert [e["method"] for e in writes(lab)] == ["DELETE"]  # no second PUT
    assert our_names(node.cilium.policy_rules()) == {"web-ingress", "api-from-web"}
    assert_never_without(node, since, {"web-ingress"})


# ------------------------------------------------------------------------------------------------
# Invalid input never reaches Consul or an agent; our messages match the agent's
# ------------------------------------------------------------------------------------------------

def item(direction="ingress", **body):
    return rule("broken", endpointSelector=WEB, **{direction: [body]})


def http(port="80", protocol="TCP", **rules):
    return {"ports": [{"port": port, "protocol": protocol}], "rules": rules or {"http": [{"method": "GET"}]}}


# One case per class of rule the agent refuses (docs/upstream.md#rule-validation-per-release-recorded),
# and the agent flags it depends on.
INVALID = {
    "no-selector": rule("broken", ingress=[{}]),
    "both-selectors": rule("broken", endpointSelector=WEB, nodeSelector={}, ingress=[{}]),
    "selector": rule("broken", endpointSelector={"matchExpressions": [{"key": "app", "operator": "In"}]},
                     ingress=[{}]),
    "selector-value": item(fromEndpoints=[{"matchLabels": {"netreap:nomad.job_id": "my job"}}]),
    "two-peer-kinds": item(fromEndpoints=[WEB], fromEntities=["world"]),
    "entity": item(fromEntities=["wrld"]),
    "cidr": item("egress", toCIDR=["10.0.0.256"]),
    "cidrset": item("egress", toCIDRSet=[{"cidr": "10.1.2.3"}]),
    "cidrset-except": item("egress", toCIDRSet=[{"cidr": "10.0.0.0/8", "except": ["172.16.0.0/12"]}]),
    "port": item(toPorts=[{"ports": [{"port": "70000"}]}]),
    "protocol": item(toPorts=[{"ports": [{"port": "80", "protocol": "ICMP"}]}]),
    "too-many-ports": item(toPorts=[{"ports": [{"port": str(2000 + i)} for i in range(41)]}]),
    "dns-ingress": item(toPorts=[http("53", "UDP", dns=[{"matchPattern": "*"}])]),
    "dns-no-ports": item("egress", toPorts=[{"rules": {"dns": [{"matchName": "example.com"}]}}]),
    "l7-udp": item("egress", toPorts=[http("80", "UDP")]),
    "l7-two-types": item("egress", toPorts=[http(http=[{}], kafka=[{}])]),
    "l7-host": rule("broken", nodeSelector={}, ingress=[{"toPorts": [http()]}]),
    "icmp-and-ports": item(icmps=[{"fields": [{"type": 8}]}], toPorts=[{"ports": [{"port": "80"}]}]),
    "fqdn": item("egress", toFQDNs=[{"matchName": "a.example.com", "matchPattern": "*.example.com"}]),
    "fqdn-characters": item("egress", toFQDNs=[{"matchPattern": "*.example.com:443"}]),
    "from-nodes-flag": item(fromNodes=[{"matchLabels": {"role": "edge"}}]),
    "no-direction": rule("broken", endpointSelector=WEB),  # 1.17+
}


def agent_message(node, bad_rule):
    """What the simulated agent itself says about the rule (None if it accepts it)."""
    try:
        agent_validator.validate_rules([bad_rule], node.cilium.profile, enable_l7_proxy=node.cilium.enable_l7_proxy,
                                       enable_node_selector_labels=node.cilium.enable_node_selector_labels)
    except agent_validator.PolicyError as exc:
        return exc.message
    return None


@pytest.mark.parametrize("profile", ["1.16", "1.19"])
def test_invalid_rules_never_reach_consul_or_an_agent(lab_factory, profile):
    lab = start(lab_factory, profile)
    node = lab.nodes[0]
    assert not run_module("cilium_policy", on_node(lab, node, from_consul=True)).failed
    files = dir_state(node.static_policy_dir)
    rules_before = node.cilium.policy_rules()
    lab.log.clear()
    for name, bad in sorted(INVALID.items()):
        expected = agent_message(node, bad)
        if expected is None:
            assert name == "no-direction" and profile == "1.16"  # the check exists from 1.17
            continue
        policy = V4 + [bad]
        for args in (on_node(lab, node, rules=policy, publish=True),       # publish + apply on a node
                     dict(consul(lab), rules=policy, publish=True, apply=False)):  # publish for the cluster
            result = run_module("cilium_policy", args)
            assert result.failed, (name, result)
            assert result["msg"].startswith("invalid policy: rules[2] (name=broken)"), (name, result["msg"])
            assert result["msg"].endswith("; nothing was published or applied")
            if name == "two-peer-kinds":  # Go names the pair in map order: either way round
                assert re.search(r"[cC]ombining (FromEndpoints and FromEntities|FromEntities and FromEndpoints)",
                                 expected)
                expected = expected.replace("FromEntities and FromEndpoints", "FromEndpoints and FromEntities")
            if "apply" not in args:  # validated for the agent's version: same words as the agent
                assert ": %s (Cilium %s)" % (expected, profile) in result["msg"], (name, expected, result["msg"])
    assert writes(lab) == []
    assert dir_state(node.static_policy_dir) == files and node.cilium.policy_rules() == rules_before
    assert consul_rules(lab) == scenarios.POLICY_V2


def test_l7_rules_are_refused_for_an_agent_without_l7_proxy(lab_factory):
    lab = start(lab_factory, "1.15")
    node = lab.nodes[0]
    node.cilium.enable_l7_proxy = False  # --enable-l7-proxy=false, as in Netreap's README
    bad = item("egress", toPorts=[http()])
    expected = agent_message(node, bad)
    assert expected == "L7 policy is not supported since L7 proxy is not enabled"
    lab.log.clear()
    result = run_module("cilium_policy", on_node(lab, node, rules=[bad]))
    assert result.failed and ": %s (Cilium 1.15)" % expected in result["msg"]
    assert writes(lab) == []


# ------------------------------------------------------------------------------------------------
# Accepted: Cilium's documentation examples, on old and new agents
# ------------------------------------------------------------------------------------------------

DOC_EXAMPLES = [
    rule("l3-labels", endpointSelector={"matchLabels": {"role": "backend"}},
         ingress=[{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}]}]),
    rule("l4-ports", endpointSelector={"matchLabels": {"app": "myService"}},
         egress=[{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]),
    rule("cidr", endpointSelector={"matchLabels": {"app": "myService"}},
         egress=[{"toCIDR": ["20.1.1.1/32"]}, {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}]),
    rule("entities", endpointSelector={"matchLabels": {"env": "dev"}}, egress=[{"toEntities": ["world"]}]),
    rule("dns-fqdn", endpointSelector={"matchLabels": {"app": "test-app"}}, egress=[
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                          "k8s:k8s-app": "kube-dns"}}],
         "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}]},
        {"toFQDNs": [{"matchName": "my-remote-service.com"}]}]),
    rule("http-l7", endpointSelector={"matchLabels": {"app": "service"}}, ingress=[{
        "fromEndpoints": [{"matchLabels": {"env": "prod"}}],
        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                     "rules": {"http": [{"method": "GET", "path": "/path1$"},
                                        {"method": "PUT", "path": "/path2$", "headers": ["X-My-Header: true"]}]}}]}]),
    rule("deny", endpointSelector={"matchLabels": {"app": "web"}}, ingress=[{"fromEntities": ["all"]}],
         ingressDeny=[{"fromEntities": ["world"]}]),
    rule("host-policy", nodeSelector={"matchLabels": {"node-access": "ssh"}},
         ingress=[{"fromEntities": ["cluster"]}, {"toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]),
]


@pytest.mark.parametrize("profile", ["1.13", "1.16", "1.19"])
def test_documentation_examples_are_applied(lab_factory, profile):
    lab = start(lab_factory, profile)
    node = lab.nodes[0]
    for example in DOC_EXAMPLES:
        assert agent_message(node, example) is None, example  # the simulated agent agrees
    result = run_module("cilium_policy", on_node(lab, node, rules=DOC_EXAMPLES, publish=True))
    assert not result.failed, result
    assert our_names(node.cilium.policy_rules()) == {r["labels"][0]["value"] for r in DOC_EXAMPLES}
    assert node.cilium.static_policy_errors == [] if node.static_policy_dir else True


# ------------------------------------------------------------------------------------------------
# state=absent, switching methods, limits, guards
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["1.15", "1.19"])
def test_state_absent_removes_only_our_rules_and_files(lab_factory, profile):
    lab = start(lab_factory, profile)
    node = lab.nodes[0]
    assert not run_module("cilium_policy", on_node(lab, node, from_consul=True)).failed
    if node.static_policy_dir:
        with open(os.path.join(node.static_policy_dir, "team-policy.yaml"), "w") as handle:
            handle.write("# someone else's\n")
    result = run_module("cilium_policy", on_node(lab, node, state="absent"), diff=True)
    assert not result.failed and result["changed"], result
    assert sorted(result["apply_changes"]["removed"]) == ["cache-from-web", "web-ingress"]
    rules = node.cilium.policy_rules()
    assert our_names(rules) == set() and foreign_present(rules)
    if node.static_policy_dir:
        assert sorted(os.listdir(node.static_policy_dir)) == ["team-policy.yaml"]
        assert sorted(result["files_removed"]) == ["netreap-cache-from-web.yaml", "netreap-web-ingress.yaml"]
    lab.log.clear()
    again = run_module("cilium_policy", on_node(lab, node, state="absent"))
    assert again["changed"] is False and writes(lab) == []


def test_switching_method_on_1_16_keeps_the_policy_in_force(lab_factory):
    lab = start(lab_factory, "1.16")
    node = lab.nodes[0]
    assert run_module("cilium_policy", on_node(lab, node, from_consul=True))["method"] == "replace-with-labels"
    since = node.cilium.policy_revision
    result = run_module("cilium_policy", on_node(lab, node, from_consul=True, method="static-dir"))
    assert not result.failed and result["method"] == "static-dir", result
    rules = node.cilium.policy_rules()
    assert not any(("netreap", "io.netreap.managed-by") in labels_of(r) for r in rules)  # REST copies gone
    assert our_names(rules) == {"web-ingress", "cache-from-web"} and len(rules) == 3
    result = run_module("cilium_policy", on_node(lab, node, from_consul=True))  # auto: back to REST
    assert not result.failed and result["files_removed"] == ["netreap-cache-from-web.yaml",
                                                             "netreap-web-ingress.yaml"]
    assert os.listdir(node.static_policy_dir) == [] and len(node.cilium.policy_rules()) == 3
    assert_never_without(node, since, {"web-ingress", "cache-from-web"})


def test_policy_over_consuls_value_limit_is_refused_before_any_write(lab_factory):
    lab = start(lab_factory, "1.16")
    big = [rule("big", endpointSelector=WEB, ingress=[{}], description="x" * 530000)]
    lab.log.clear()
    result = run_module("cilium_policy", dict(consul(lab), rules=big, publish=True, apply=False))
    assert result.failed and "more than Consul's limit of 524288 bytes" in result["msg"]
    assert writes(lab) == []


def test_static_dir_leaves_files_it_did_not_write(lab_factory):
    lab = start(lab_factory, "1.19")
    node = lab.nodes[0]
    path = os.path.join(node.static_policy_dir, "netreap-web-ingress.yaml")
    with open(path, "w") as handle:
        handle.write("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n")
    result = run_module("cilium_policy", on_node(lab, node, from_consul=True))
    assert result.failed and "did not write" in result["msg"]
    assert sorted(os.listdir(node.static_policy_dir)) == ["netreap-web-ingress.yaml"]


def test_guards_fail_clearly_and_change_nothing(lab_factory):
    lab = start(lab_factory, "1.19")
    node = lab.nodes[0]
    lab.log.clear()
    result = run_module("cilium_policy", dict(consul(lab), cilium_socket=node.socket_path, from_consul=True))
    assert result.failed and "set static_policy_dir" in result["msg"] and "removed in 1.19" in result["msg"]
    result = run_module("cilium_policy", on_node(lab, node, from_consul=True, method="replace-with-labels"))
    assert result.failed and "needs Cilium 1.15 to 1.18" in result["msg"]
    lab.consul.kv_delete(scenarios.POLICY_KEY)
    result = run_module("cilium_policy", on_node(lab, node, from_consul=True))
    assert result.failed and "does not exist: nothing to apply" in result["msg"]
    assert writes(lab) == [] and os.listdir(node.static_policy_dir) == []


def test_agent_reporting_no_version_still_gets_policy_through_its_static_directory(lab_factory):
    """A 1.19 agent whose status probes have not all run reports no version; the static directory
    needs none."""
    lab = lab_factory(nodes=1, cilium="1.19", kvstore="etcd", scenario="drift")
    node = lab.nodes[0]
    node.cilium.probes_pending = True  # "Not all probes executed at least once": no version
    assert run_module("cilium_agent_info", {"cilium_socket": node.socket_path})["version"] is None
    without_dir = run_module("cilium_policy", dict(consul(lab), cilium_socket=node.socket_path, rules=V4))
    assert without_dir.failed and "reports no version" in without_dir["msg"]
    result = run_module("cilium_policy", on_node(lab, node, rules=V4))
    assert not result.failed, result["msg"]
    assert result["method"] == "static-dir" and result["applied"]


# ------------------------------------------------------------------------------------------------
# Done-when: what the agent enforces from our policy files is what was published
# ------------------------------------------------------------------------------------------------

# Endpoints as cilium_endpoint labels them (netreap:nomad.*, nomad:<job meta>), plus the host.
ENDPOINTS = {
    "web": scenarios.netreap_labels("web", "default", "frontend", {"team": "payments"}),
    "cache": scenarios.netreap_labels("cache", "default", "redis"),
    "api": scenarios.netreap_labels("api", "default", "api", {"team": "payments"}),
    "batch": scenarios.netreap_labels("nightly-report", "default", "report", {"team": "data"}),
    "host": ["reserved:host"],
}
APP = {"web", "cache", "api", "batch"}


def job(name):
    return {"matchLabels": {"netreap:nomad.job_id": name}}


# Endpoint-to-endpoint rules, and for each the endpoints its subject and every peer list select.
ENDPOINT_RULES = [
    (rule("cache-from-web", endpointSelector=job("cache"), ingress=[
        {"fromEndpoints": [WEB], "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]}]),
     {"cache"}, [("ingress", 0, "fromEndpoints", {"web"})]),
    (rule("web-egress", endpointSelector=WEB, egress=[
        {"toEndpoints": [{"matchExpressions": [
            {"key": "netreap:nomad.job_id", "operator": "In", "values": ["api", "cache"]}]}]},
        {"toEndpoints": [{"matchLabels": {"reserved:host": ""}}]}]),
     {"web"}, [("egress", 0, "toEndpoints", {"api", "cache"}), ("egress", 1, "toEndpoints", {"host"})]),
    (rule("api-from-team-and-all", endpointSelector=job("api"), ingress=[
        {"fromEndpoints": [{"matchLabels": {"nomad:team": "payments"}}]},
        {"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "9090", "protocol": "TCP"}]}]}],
        ingressDeny=[{"fromEndpoints": [{"matchExpressions": [
            {"key": "nomad:team", "operator": "NotIn", "values": ["payments"]}]}]}]),
     {"api"}, [("ingress", 0, "fromEndpoints", {"web", "api"}),
               ("ingress", 1, "fromEndpoints", APP | {"host"}),
               ("ingressDeny", 0, "fromEndpoints", {"batch", "cache", "host"})]),
]


def selected(selectors):
    """Endpoints (of ENDPOINTS) that any of ``selectors`` selects."""
    return {name for name, labels in ENDPOINTS.items()
            if any(lab_cilium.selects(sel, labels) for sel in selectors)}


@pytest.mark.parametrize("profile,local_cluster", [
    ("1.16", None), ("1.18", None), ("1.18", True), ("1.19", None), ("1.19", False)])
def test_policy_files_select_the_intended_nomad_endpoints(lab_factory, profile, local_cluster):
    """The agent rewrites the peer selectors of a policy file on load (namespace, and with
    --policy-default-local-cluster the cluster: docs/upstream.md#static-files-peer-selectors-rewritten).
    What it enforces from our files must still select exactly the Nomad endpoints meant."""
    lab = lab_factory(nodes=1, cilium=profile, kvstore=KVSTORE[profile], scenario="clean", static_policy=True)
    node = lab.nodes[0]
    if local_cluster is not None:  # the agent was started with --policy-default-local-cluster=<value>
        node.cilium.policy_default_local_cluster = local_cluster
    published = [r for r, unused, unused in ENDPOINT_RULES]
    result = run_module("cilium_policy", on_node(lab, node, rules=published, method="static-dir"))
    assert not result.failed and result["applied"] and result["warnings"] == [], result
    assert node.cilium.static_policy_errors == []
    effective = node.cilium.static_effective_rules()
    assert sorted(effective) == sorted(result["files_written"])
    for published_rule, subject, peers in ENDPOINT_RULES:
        name = published_rule["labels"][0]["value"]
        [enforced] = effective["netreap-%s.yaml" % name]
        assert selected([enforced["endpointSelector"]]) == subject, name
        for section, index, field, want in peers:
            assert selected(enforced[section][index][field]) == want, (name, section, index, enforced[section][index])

    # The same rule in a file written by hand selects no Nomad peer: the rewrite is in force.
    with open(os.path.join(node.static_policy_dir, "by-hand.yaml"), "w") as handle:
        handle.write(json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                                 "metadata": {"name": "by-hand"}, "spec": ENDPOINT_RULES[0][0]}))
    [by_hand] = node.cilium.static_effective_rules()["by-hand.yaml"]
    assert selected(by_hand["ingress"][0]["fromEndpoints"]) == set()

    again = run_module("cilium_policy", on_node(lab, node, rules=published, method="static-dir"))
    assert not again.failed and again["changed"] is False and again["warnings"] == [], again


def agent_get_policy(node):
    conn = UnixHTTPConnection(node.socket_path)
    try:
        conn.request("GET", "/v1/policy")
        return json.loads(conn.getresponse().read().decode())
    finally:
        conn.close()


@pytest.mark.parametrize("local_cluster", [True, False])
def test_1_19_policy_entries_show_our_files_loaded(lab_factory, local_cluster):
    """1.19 lists PolicyEntry objects (``Labels``, one entry per ingress/egress item:
    docs/upstream.md#get-policy-in-119-policyentry); changed and unchanged runs see our files."""
    lab = start(lab_factory, "1.19")
    node = lab.nodes[0]
    node.cilium.policy_default_local_cluster = local_cluster
    first = run_module("cilium_policy", on_node(lab, node, from_consul=True, static_load_timeout=5))
    assert not first.failed and first["applied"] and first["warnings"] == [], first
    entries = json.loads(agent_get_policy(node)["policy"])
    assert entries and all("Labels" in e and "labels" not in e for e in entries)
    files = {lbl["value"] for e in entries for lbl in e["Labels"] if lbl["key"] == "filename"}
    assert files == {"netreap-web-ingress.yaml", "netreap-cache-from-web.yaml"}

    unchanged = run_module("cilium_policy", on_node(lab, node, from_consul=True))
    assert not unchanged.failed and unchanged["changed"] is False and unchanged["warnings"] == [], unchanged

    changed = run_module("cilium_policy", on_node(lab, node, rules=V4, static_load_timeout=5))
    assert not changed.failed and changed["applied"] and changed["warnings"] == [], changed
    assert changed["apply_changes"] == {"added": ["api-from-web"], "removed": ["cache-from-web"],
                                        "changed": ["web-ingress"]}
    assert our_names(node.cilium.policy_rules()) == {"web-ingress", "api-from-web"}
