"""Static policy files as the agent reads them, and Cilium 1.19's GET /v1/policy answer.

The agent rewrites the peer selectors of a file it loads (docs/upstream.md#static-files-peer-selectors-rewritten):
the renderer names the two keys it would add, with DoesNotExist, so that the rewrite changes
nothing.  tests/lab_tests/plugins/modules/test_cilium_policy.py checks the effect on the lab agent's effective rules.
"""

import copy
import json

import yaml

from ansible_collections.netreap.cilium.plugins.module_utils import _policy_decode as dec
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_plan as planner
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_render as ren
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_apply as apply

NS_DNE = {"key": "k8s:io.kubernetes.pod.namespace", "operator": "DoesNotExist"}
CLUSTER_DNE = {"key": "k8s:io.cilium.k8s.policy.cluster", "operator": "DoesNotExist"}
WEB = {"matchLabels": {"netreap:nomad.job_id": "web"}}
CACHE = {"matchLabels": {"netreap:nomad.job_id": "cache"}}


def pinned(selector):
    out = copy.deepcopy(selector)
    out["matchExpressions"] = list(out.get("matchExpressions", [])) + [NS_DNE, CLUSTER_DNE]
    return out


def rule(**body):
    out = {"labels": [{"key": "name", "value": "cache-from-web", "source": "unspec"}], "endpointSelector": CACHE}
    out.update(body)
    return dec.normalize_rules([out])[0]


def test_every_endpoint_peer_selector_names_both_keys_in_every_direction():
    published = rule(
        ingress=[{"fromEndpoints": [WEB, {}], "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]},
                 {"fromRequires": [{"matchLabels": {"netreap:nomad.namespace": "default"}}]}],
        ingressDeny=[{"fromEndpoints": [{"matchExpressions": [
            {"key": "nomad:team", "operator": "NotIn", "values": ["payments"]}]}]},
            {"fromRequires": [WEB]}],
        egress=[{"toEndpoints": [WEB]}, {"toRequires": [WEB]}],
        egressDeny=[{"toEndpoints": [CACHE]}, {"toRequires": [CACHE]}])
    before = copy.deepcopy(published)
    spec = ren.static_spec(published)
    assert published == before  # the published rule is not changed in place
    assert spec["endpointSelector"] == CACHE  # the agent leaves the subject of a clusterwide file alone
    assert spec["ingress"][0]["fromEndpoints"] == [pinned(WEB), pinned({})]
    assert spec["ingress"][0]["toPorts"] == published["ingress"][0]["toPorts"]
    assert spec["ingress"][1]["fromRequires"] == [pinned({"matchLabels": {"netreap:nomad.namespace": "default"}})]
    assert spec["ingressDeny"][0]["fromEndpoints"] == [{"matchExpressions": [
        {"key": "nomad:team", "operator": "NotIn", "values": ["payments"]}, NS_DNE, CLUSTER_DNE]}]
    assert spec["ingressDeny"][1] == {"fromRequires": [pinned(WEB)]}
    assert spec["egress"] == [{"toEndpoints": [pinned(WEB)]}, {"toRequires": [pinned(WEB)]}]
    assert spec["egressDeny"] == [{"toEndpoints": [pinned(CACHE)]}, {"toRequires": [pinned(CACHE)]}]
    assert ren.static_spec(spec) == spec  # pinning twice adds nothing


def test_selectors_the_agent_leaves_alone_stay_as_published():
    host = {"matchLabels": {"reserved:host": ""}}
    published = rule(ingress=[{"fromEndpoints": [host]}, {"fromEntities": ["world"]}, {"fromCIDR": ["10.0.0.0/8"]}],
                     egress=[{"toServices": [{"k8sService": {"serviceName": "db", "namespace": "default"}}]},
                             {"toFQDNs": [{"matchName": "example.com"}],
                              "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}])
    assert ren.static_spec(published) == published


def test_a_key_the_selector_already_names_is_not_pinned_again():
    named_ns = {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "payments"}}
    any_cluster = {"matchLabels": {"any:io.cilium.k8s.policy.cluster": "east", "netreap:nomad.job_id": "web"}}
    bare_ns = {"matchExpressions": [{"key": "io.kubernetes.pod.namespace", "operator": "Exists"}]}
    other_source = {"matchLabels": {"netreap:io.kubernetes.pod.namespace": "x"}}  # not the agent's key
    spec = ren.static_spec(rule(ingress=[{"fromEndpoints": [named_ns, any_cluster, bare_ns, other_source]}]))
    assert spec["ingress"][0]["fromEndpoints"] == [
        dict(named_ns, matchExpressions=[CLUSTER_DNE]),
        dict(any_cluster, matchExpressions=[NS_DNE]),
        {"matchExpressions": bare_ns["matchExpressions"] + [CLUSTER_DNE]},
        dict(other_source, matchExpressions=[NS_DNE, CLUSTER_DNE]),
    ]


def test_file_holds_the_pinned_spec_and_the_published_rules_digest():
    published = rule(ingress=[{"fromEndpoints": [WEB]}])
    text = ren.render_policy_file(published, "netreap-cache-from-web.yaml", "cache-from-web")
    document = yaml.safe_load(text)
    assert document["kind"] == "CiliumClusterwideNetworkPolicy"
    assert document["spec"] == ren.static_spec(published)
    assert document["spec"]["ingress"][0]["fromEndpoints"] == [pinned(WEB)]
    assert "digest: %s" % dec.rule_digest(published) in text.split("\n")[1]


def test_a_file_written_before_pinning_is_rewritten_once():
    published = [rule(ingress=[{"fromEndpoints": [WEB]}])]
    [name] = ren.static_file_names(published)
    document = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                "metadata": {"name": name[:-5]}, "spec": published[0]}
    old = "\n".join([dec.STATIC_MARKER, "# rule: \"cache-from-web\"  digest: %s" % dec.rule_digest(published[0]),
                     "# Published with netreap.cilium.cilium_policy; the agent loads it from --static-cnp-path."]
                    ) + "\n" + ren.to_yaml(document)
    plan = planner.plan_static(published, {name: old})
    assert plan["changed"] and list(plan["write"]) == [name] and plan["diff"]["changed"] == ["cache-from-web"]
    assert planner.plan_static(published, {name: plan["write"][name]})["changed"] is False


# -- what the agent lists --------------------------------------------------------------------------

LOADED_1_19 = [  # GET /v1/policy "policy" text of Cilium 1.19: PolicyEntry objects, two for one file
    {"Tier": 0, "Priority": 0, "Authentication": None, "Log": {}, "Subject": CACHE, "L3": [pinned(WEB)],
     "L4": None, "Labels": [{"key": "filename", "value": "netreap-cache-from-web.yaml", "source": "directory"},
                            {"key": "policy-derived-from", "value": "CiliumClusterwideNetworkPolicy",
                             "source": "directory"}],
     "DefaultDeny": True, "Verdict": 0, "Ingress": True, "Node": False},
]
LOADED_1_19.append(dict(LOADED_1_19[0], Ingress=False))
LOADED_1_18 = [{"endpointSelector": CACHE, "labels": LOADED_1_19[0]["Labels"]}]


def test_loaded_files_are_read_from_rules_and_from_policy_entries():
    entries = json.loads(json.dumps(LOADED_1_19))
    assert planner.files_in_agent(entries) == {"netreap-cache-from-web.yaml"}
    assert planner.files_in_agent(LOADED_1_18) == {"netreap-cache-from-web.yaml"}
    assert not any(dec.is_owned_rule(e) for e in entries)
    owned = dict(LOADED_1_19[0], Labels=[{"key": "io.netreap.managed-by", "value": "netreap.cilium",
                                          "source": "netreap"}])
    assert dec.is_owned_rule(owned)


class _Agent:
    """``policy_get`` answers, one per call."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def policy_get(self):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_waiting_for_files_ends_when_1_19_lists_their_entries():
    agent = _Agent(([], 5), (LOADED_1_19, 6))
    revision, missing, stale = apply.wait_for_files(agent, ["netreap-cache-from-web.yaml"], [], 5,
                                                    sleep=lambda s: None)
    assert (revision, missing, stale) == (6, [], [])
