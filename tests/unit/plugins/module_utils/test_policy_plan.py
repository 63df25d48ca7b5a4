"""cilium_policy's plan from what the module read: parameters, the Consul entry, the source
file's bytes, the agent's state and the static directory's listing; nothing is read from disk."""

import json

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils import _policy_decode as dec
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_plan as planner
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_render as ren

RULE = {"endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"netreap:nomad.job_id": "cache"}}]}],
        "labels": [{"key": "name", "value": "web-from-cache", "source": "unspec"}]}
MISSING_DIR = "/etc/cilium/netreap-policies"


def params(**over):
    out = dict(rules=None, src=None, from_consul=False, consul_key="netreap.io/policy", publish=False, apply=True,
               method="auto", static_policy_dir=None, static_load_timeout=10.0, cilium_versions=None, state="present")
    out.update(over)
    return out


def agent(version="1.19.1", rules=(), static_dir=True):
    rest = version < "1.19"
    caps = dict(version=version, rest_policy_write=rest, replace_with_labels=rest,
                static_policy_supported=True, static_policy_dir=static_dir,
                policy_methods=(["replace-with-labels"] if rest else []) + (["static-dir"] if static_dir else []))
    return dict(caps=caps, rules=list(rules), revision=7, minor=int(version.split(".")[1]),
                flags={"EnableL7Proxy": True})


def plan(listing, **over):
    return planner.plan_policy(params(**over), None, None, agent(), listing, "/var/run/cilium/cilium.sock")


def test_static_files_are_planned_from_the_listing_given_not_from_disk():
    todo = plan({}, rules=[RULE], static_policy_dir=MISSING_DIR)
    name = ren.static_file_names(dec.normalize_rules([RULE]))[0]
    assert todo["apply"]["method"] == "static-dir"
    assert list(todo["apply"]["static"]["write"]) == [name]
    assert todo["result"]["applied"] and todo["result"]["files_written"] == [name]
    assert [d["after_header"] for d in todo["diffs"]] == [MISSING_DIR + "/" + name]


def test_a_listing_that_already_holds_the_files_plans_no_change():
    first = plan({}, rules=[RULE], static_policy_dir=MISSING_DIR)
    listing = dict(first["apply"]["static"]["write"])
    again = plan(listing, rules=[RULE], static_policy_dir=MISSING_DIR)
    assert not again["result"]["applied"] and again["diffs"] == []


def test_no_directory_to_list_refuses_static_dir_with_the_setup_to_do():
    with pytest.raises(dec.PolicyError, match="static_policy_dir %s does not exist" % MISSING_DIR):
        plan(None, rules=[RULE], static_policy_dir=MISSING_DIR)


def test_a_file_we_did_not_write_is_never_overwritten():
    name = ren.static_file_names(dec.normalize_rules([RULE]))[0]
    with pytest.raises(dec.PolicyError, match="already holds %s, which this collection did not write" % name):
        plan({name: "kind: CiliumClusterwideNetworkPolicy\n"}, rules=[RULE], static_policy_dir=MISSING_DIR)


def test_rules_the_agent_would_refuse_stop_before_anything_is_planned():
    bad = dict(RULE, ingress=[{"fromEntities": ["galaxy"]}])
    with pytest.raises(dec.PolicyError, match="nothing was published or applied") as caught:
        plan({}, rules=[bad], static_policy_dir=MISSING_DIR)
    assert caught.value.extra == {"validated_for": ["1.19"]}


def test_a_source_file_that_is_not_json_is_named_in_the_refusal():
    with pytest.raises(dec.PolicyError, match="policy file /etc/netreap/policy.json: .*not valid JSON"):
        planner.plan_policy(params(src="/etc/netreap/policy.json"), None, b"[{", None, None, None)


@pytest.mark.parametrize("over, message", [
    (dict(rules=[RULE], src="/etc/netreap/p.json"), "mutually exclusive: rules, src"),
    (dict(), "state=present needs one of rules, src or from_consul"),
    (dict(state="absent", publish=True), "state=absent removes"),
    (dict(from_consul=True, publish=True), "would write back what was read"),
])
def test_parameter_combinations_refused(over, message):
    with pytest.raises(dec.PolicyError, match=message):
        planner.check_params(params(**over))


def test_publishing_what_consul_holds_changes_nothing():
    desired = dec.normalize_rules([RULE])
    entry = {"Value": dec.consul_value(desired).encode(), "ModifyIndex": 42}
    publish, fields, diffs, warnings = planner.plan_publish("netreap.io/policy", entry, desired)
    assert not publish["changed"] and publish["cas"] == 42
    assert fields["published"] is False and diffs == [] and warnings == []


def test_publishing_over_a_value_that_is_not_a_policy_warns_and_replaces_it():
    desired = dec.normalize_rules([RULE])
    publish, fields, diffs, warnings = planner.plan_publish("k", {"Value": b"not json", "ModifyIndex": 3}, desired)
    assert publish["changed"] and fields["published"] and json.loads(diffs[0]["after"]) == json.loads(publish["value"])
    assert warnings and "not a valid policy" in warnings[0]


def test_a_policy_bigger_than_a_consul_value_is_refused():
    big = [dict(RULE, description="x" * dec.CONSUL_MAX_VALUE_SIZE)]
    with pytest.raises(dec.PolicyError, match="more than Consul's limit"):
        planner.plan_publish("k", None, dec.normalize_rules(big))
