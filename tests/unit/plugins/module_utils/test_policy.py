"""Policy rules: normalisation, the agent's validation (the agent's messages),
planning for every apply method, diffs, static file names and YAML rendering.

Expected messages are Cilium's own (docs/upstream.md#rule-validation-per-release-recorded; the
recorded verdicts are replayed in full by test_policy_oracle_replay.py);
tests/lab_tests/plugins/modules/test_cilium_policy.py checks the same cases against the lab's independent agent
simulator.
"""

import copy
import json

import pytest
import yaml

from ansible_collections.netreap.cilium.plugins.module_utils import _policy_decode as dec
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_plan as planner
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_render as ren
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_validate as val

ALL = tuple(dec.SUPPORTED_MINORS)
# The agent lower-cased most messages in 1.16.7 and 1.17.0 (docs/upstream.md#rule-validation-per-release-recorded);
# a minor without patch means its latest release.
OLD_WORDING = (13, 14, 15)
LOWER_CASE = (16, 17, 18, 19)
WEB = {"matchLabels": {"netreap:nomad.job_id": "web"}}
API = {"matchLabels": {"netreap:nomad.job_id": "api"}}


def named(name, rule):
    rule = copy.deepcopy(rule)
    rule["labels"] = [{"key": "name", "value": name, "source": "unspec"}]
    return rule


def target(minor, **flags):
    return val.ValidationTarget(minor, flags.get("l7_proxy", True), flags.get("node_labels", False), True)


def check(rule, minors=ALL, **flags):
    """Validate one rule for ``minors``; return the error or None."""
    rules = dec.normalize_rules([rule])
    try:
        val.validate_rules(rules, [target(m, **flags) for m in minors])
    except dec.PolicyValidationError as exc:
        return exc
    return None


# ------------------------------------------------------------------------------------------------
# Accepted: examples from Cilium's policy documentation (selectors adapted to Nomad endpoints)
# ------------------------------------------------------------------------------------------------

DOC_EXAMPLES = {
    "l3-labels": {"endpointSelector": {"matchLabels": {"role": "backend"}},
                  "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}]}]},
    "l3-expressions": {"endpointSelector": {"matchExpressions": [
        {"key": "netreap:nomad.job_id", "operator": "In", "values": ["api", "web"]},
        {"key": "nomad:tier", "operator": "Exists"}]},
        "ingress": [{"fromEndpoints": [{"matchExpressions": [
            {"key": "nomad:team", "operator": "NotIn", "values": ["sandbox"]}]}]}]},
    "l4-ports": {"endpointSelector": {"matchLabels": {"app": "myService"}},
                 "egress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]},
    "l4-port-range-and-names": {"endpointSelector": API, "ingress": [{"fromEndpoints": [WEB], "toPorts": [
        {"ports": [{"port": "8000", "endPort": 8080, "protocol": "TCP"}, {"port": "https"},
                   {"port": "3868", "protocol": "SCTP"}, {"port": "53", "protocol": "udp"}]}]}]},
    "cidr": {"endpointSelector": {"matchLabels": {"app": "myService"}},
             "egress": [{"toCIDR": ["20.1.1.1/32", "192.0.2.7"]},
                        {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]},
                                       {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}]}]},
    "entities": {"endpointSelector": {"matchLabels": {"env": "dev"}},
                 "ingress": [{"fromEntities": ["host", "remote-node", "health"]}],
                 "egress": [{"toEntities": ["world"]}]},
    "dns-and-fqdn": {"endpointSelector": API, "egress": [
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                          "k8s:k8s-app": "kube-dns"}}],
         "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                      "rules": {"dns": [{"matchPattern": "*"}]}}]},
        {"toFQDNs": [{"matchName": "my-remote-service.com"}, {"matchPattern": "*.cilium.io"}],
         "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]},
    "http-l7": {"endpointSelector": {"matchLabels": {"app": "service"}}, "ingress": [{
        "fromEndpoints": [{"matchLabels": {"env": "prod"}}],
        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [
            {"method": "GET", "path": "/path1$"},
            {"method": "PUT", "path": "/path2$", "headers": ["X-My-Header: true"]}]}}]}]},
    "deny": {"endpointSelector": {"matchLabels": {"k8s-app.guestbook": "web"}},
             "ingress": [{"fromEntities": ["all"]}],
             "ingressDeny": [{"fromEntities": ["world"]}],
             "egressDeny": [{"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}],
                             "toPorts": [{"ports": [{"port": "25", "protocol": "TCP"}]}]}]},
    "host-policy": {"nodeSelector": {"matchLabels": {"node-access": "ssh"}},
                    "ingress": [{"fromEntities": ["cluster"]},
                                {"toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]},
    "icmp": {"endpointSelector": WEB, "egress": [
        {"icmps": [{"fields": [{"type": 8, "family": "IPv4"}, {"type": "EchoRequest"}]}]}]},
    "select-all": {"endpointSelector": {}, "egress": [{"toEndpoints": [{}]}]},
}


@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_documentation_examples_are_accepted_on_every_version(name):
    assert check(DOC_EXAMPLES[name]) is None


def test_netreap_key_format_is_accepted_as_text():
    text = json.dumps([named("web-ingress", {"endpointSelector": WEB,
                                             "ingress": [{"fromEntities": ["world"]}]})], indent=4)
    rules = dec.normalize_rules(text)
    assert rules[0]["labels"] == [{"key": "name", "value": "web-ingress", "source": "unspec"}]
    val.validate_rules(rules, [target(m) for m in ALL])


# ------------------------------------------------------------------------------------------------
# Rejected: one case per class of rule the agent refuses, with the agent's message
# (docs/upstream.md#rule-validation-per-release-recorded)
# ------------------------------------------------------------------------------------------------

def ing(**item):
    return {"endpointSelector": WEB, "ingress": [item]}


def eg(**item):
    return {"endpointSelector": WEB, "egress": [item]}


def http_port(port="80", protocol="TCP", **rules):
    return {"ports": [{"port": port, "protocol": protocol}], "rules": rules or {"http": [{"method": "GET"}]}}


QNAME = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
         "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
         "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
LVALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
          "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
          "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")

# name: (rule, field, message, versions the message applies to)
REJECTED = {
    "no-selector": ({"ingress": [{}]}, None, "rule must have one of EndpointSelector or NodeSelector", ALL),
    "both-selectors": ({"endpointSelector": WEB, "nodeSelector": {}, "ingress": [{}]}, None,
                       "rule cannot have both EndpointSelector and NodeSelector", ALL),
    "selector-operator": ({"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]},
                           "ingress": [{}]}, "endpointSelector",
                          'invalid label selector: matchExpressions[0].operator: Invalid value: "Equals": '
                          'not a valid selector operator', ALL),
    "selector-in-without-values": (
        {"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}, "ingress": [{}]},
        "endpointSelector", "invalid label selector: matchExpressions[0].values: Required value: must be "
        "specified when `operator` is 'In' or 'NotIn'", ALL),
    "selector-exists-with-values": (
        ing(fromEndpoints=[{"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}]),
        "ingress[0].fromEndpoints[0]", "invalid label selector: matchExpressions[0].values: Forbidden: may not "
        "be specified when `operator` is 'Exists' or 'DoesNotExist'", ALL),
    "selector-key": ({"endpointSelector": {"matchLabels": {"job id": "web"}}, "ingress": [{}]},
                     "endpointSelector",
                     'invalid label selector: matchLabels: Invalid value: "any.job id": name part ' + QNAME, ALL),
    "selector-value": (eg(toEndpoints=[{"matchLabels": {"netreap:nomad.job_id": "my job"}}]),
                       "egress[0].toEndpoints[0]",
                       'invalid label selector: matchLabels: Invalid value: "my job": ' + LVALUE, ALL),
    "two-l3-kinds": (ing(fromEndpoints=[WEB], fromCIDR=["10.0.0.0/8"]), "ingress[0]",
                     "Combining FromEndpoints and FromCIDR is not supported yet", OLD_WORDING),
    "two-l3-kinds-lower-case": (ing(fromEndpoints=[WEB], fromCIDR=["10.0.0.0/8"]), "ingress[0]",
                                "combining FromEndpoints and FromCIDR is not supported yet", LOWER_CASE),
    "services-and-ports": (eg(toServices=[{"k8sService": {"serviceName": "x"}}],
                              toPorts=[{"ports": [{"port": "80"}]}]), "egress[0]",
                           "Combining ToServices and ToPorts is not supported yet", OLD_WORDING),
    "services-and-ports-1.16": (eg(toServices=[{"k8sService": {"serviceName": "x"}}],
                                   toPorts=[{"ports": [{"port": "80"}]}]), "egress[0]",
                                "combining ToServices and ToPorts is not supported yet", [16]),
    "entity": (ing(fromEntities=["wrld"]), "ingress[0].fromEntities[0]", "unsupported entity: wrld", ALL),
    "entity-world-ipv4-before-1.15": (eg(toEntities=["world-ipv4"]), "egress[0].toEntities[0]",
                                      "unsupported entity: world-ipv4", [13, 14]),
    "cidr": (eg(toCIDR=["10.0.0.300/8"]), "egress[0].toCIDR[0]",
             'unable to parse CIDR: ParseAddr("10.0.0.300/8"): IPv4 field has value >255', ALL),
    "cidr-empty": (ing(fromCIDR=[""]), "ingress[0].fromCIDR[0]", "IP must be specified", ALL),
    "cidrset-bare-ip": (eg(toCIDRSet=[{"cidr": "10.0.0.1"}]), "egress[0].toCIDRSet[0].cidr",
                        'Unable to parse CIDRRule "10.0.0.1": netip.ParsePrefix("10.0.0.1"): no \'/\'', OLD_WORDING),
    "cidrset-bare-ip-lower-case": (eg(toCIDRSet=[{"cidr": "10.0.0.1"}]), "egress[0].toCIDRSet[0].cidr",
                                   'unable to parse CIDRRule "10.0.0.1": netip.ParsePrefix("10.0.0.1"): no \'/\'',
                                   LOWER_CASE),
    "cidrset-except-outside": (eg(toCIDRSet=[{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]),
                               "egress[0].toCIDRSet[0].except[0]",
                               "allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix 192.168.0.0/16",
                               ALL),
    "cidrset-except-family": (eg(toCIDRSet=[{"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}]),
                              "egress[0].toCIDRSet[0].except[0]",
                              "allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix fd00::/64", ALL),
    "port-empty": (ing(toPorts=[{"ports": [{"port": "", "protocol": "TCP"}]}]),
                   "ingress[0].toPorts[0].ports[0].port", "Port must be specified", ALL[:-1]),
    "port-empty-1.19": (ing(toPorts=[{"ports": [{"protocol": "TCP"}]}]),
                        "ingress[0].toPorts[0].ports[0].port", "port must be specified", [19]),
    "port-out-of-range": (ing(toPorts=[{"ports": [{"port": "99999"}]}]), "ingress[0].toPorts[0].ports[0].port",
                          'Unable to parse port: strconv.ParseUint: parsing "99999": value out of range', OLD_WORDING),
    "port-out-of-range-lower-case": (ing(toPorts=[{"ports": [{"port": "99999"}]}]),
                                     "ingress[0].toPorts[0].ports[0].port",
                                     'unable to parse port: strconv.ParseUint: parsing "99999": value out of range',
                                     LOWER_CASE),
    "port-not-a-name": (ing(toPorts=[{"ports": [{"port": "web_port"}]}]), "ingress[0].toPorts[0].ports[0].port",
                        'unable to parse port: strconv.ParseUint: parsing "web_port": invalid syntax', [19]),
    "protocol": (ing(toPorts=[{"ports": [{"port": "80", "protocol": "icmp"}]}]),
                 "ingress[0].toPorts[0].ports[0].protocol",
                 'invalid protocol "ICMP", must be { tcp | udp | sctp | any }', ALL[:-1]),
    "protocol-1.19": (ing(toPorts=[{"ports": [{"port": "80", "protocol": "icmp"}]}]),
                      "ingress[0].toPorts[0].ports[0].protocol",
                      'invalid protocol "ICMP", must be { tcp | udp | sctp | vrrp | igmp | any }', [19]),
    "41-ports": (ing(toPorts=[{"ports": [{"port": str(1000 + i)} for i in range(41)]}]),
                 "ingress[0].toPorts[0].ports", "too many ports, the max is 40", ALL),
    "41-icmp-fields": (eg(icmps=[{"fields": [{"type": i} for i in range(41)]}]), "egress[0].icmps[0].fields",
                       "too many types, the max is 40", ALL),
    "dns-on-ingress": (ing(toPorts=[http_port("53", "UDP", dns=[{"matchPattern": "*"}])]), "ingress[0]",
                       "L7 protocol DNS is not supported on ingress yet", ALL),
    "dns-without-ports": (eg(toEndpoints=[WEB], toPorts=[{"rules": {"dns": [{"matchPattern": "*"}]}}]),
                          "egress[0].toPorts[0].rules.dns", "Port 53 must be specified for DNS rules", OLD_WORDING),
    "dns-without-ports-lower-case": (eg(toEndpoints=[WEB], toPorts=[{"rules": {"dns": [{"matchPattern": "*"}]}}]),
                                     "egress[0].toPorts[0].rules.dns", "port 53 must be specified for DNS rules",
                                     LOWER_CASE),
    "dns-port-range": (eg(toPorts=[{"ports": [{"port": "53", "endPort": 60, "protocol": "UDP"}],
                                    "rules": {"dns": [{"matchPattern": "*"}]}}]),
                       "egress[0].toPorts[0].ports[0].endPort", "DNS rules do not support port ranges",
                       [13, 14, 15, 17, 18, 19]),
    "l7-port-range-1.16": (eg(toPorts=[{"ports": [{"port": "80", "endPort": 90, "protocol": "TCP"}],
                                        "rules": {"http": [{"method": "GET"}]}}]),
                           "egress[0].toPorts[0].ports[0].endPort", "L7 rules do not support port ranges", [16]),
    "l7-on-udp": (eg(toPorts=[http_port("80", "UDP")]), "egress[0].toPorts[0].ports[0].protocol",
                  "L7 rules can only apply to TCP (not UDP) except for DNS rules", ALL),
    "l7-on-port-0": (eg(toPorts=[http_port("0")]), "egress[0].toPorts[0].ports",
                     "L7 rules can not be used when a port is 0", ALL),
    "two-l7-types": (eg(toPorts=[http_port(http=[{"method": "GET"}], kafka=[{"topic": "t"}])]),
                     "egress[0].toPorts[0].rules", "multiple L7 protocol rule types specified in single rule", ALL),
    "l7-on-host-policy": ({"nodeSelector": {}, "ingress": [{"toPorts": [http_port()]}]}, "ingress[0]",
                          "host policies do not support L7 rules yet", [13, 14, 15, 16]),
    "l7-on-host-ingress-1.17": ({"nodeSelector": {}, "ingress": [{"toPorts": [http_port()]}]}, "ingress[0]",
                                "L7 policy is not supported on host ingress yet", [17, 18, 19]),
    "icmps-with-ports": (ing(icmps=[{"fields": [{"type": 8}]}], toPorts=[{"ports": [{"port": "80"}]}]), "ingress[0]",
                         "The ICMPs block may only be present without ToPorts. Define a separate rule to use ToPorts.",
                         OLD_WORDING),
    "icmps-with-ports-lower-case": (ing(icmps=[{"fields": [{"type": 8}]}], toPorts=[{"ports": [{"port": "80"}]}]),
                                    "ingress[0]", "the ICMPs block may only be present without ToPorts. Define a "
                                    "separate rule to use ToPorts", LOWER_CASE),
    "fqdn-name-and-pattern": (eg(toFQDNs=[{"matchName": "a.example.com", "matchPattern": "*.example.com"}]),
                              "egress[0].toFQDNs[0]",
                              "only one of MatchName or MatchPattern is allowed in an FQDNSelector", ALL),
    "fqdn-name-characters": (eg(toFQDNs=[{"matchName": "api example.com"}]), "egress[0].toFQDNs[0].matchName",
                             'Invalid characters in MatchName: "api example.com". Only 0-9, a-z, A-Z and . and - '
                             'characters are allowed', ALL[:-1]),
    "fqdn-name-characters-1.19": (eg(toFQDNs=[{"matchName": "api example.com"}]), "egress[0].toFQDNs[0].matchName",
                                  'Invalid characters in MatchName: "api example.com". Only 0-9, a-z, A-Z and ., -, _ '
                                  'characters are allowed', [19]),
    "fqdn-pattern-characters": (eg(toFQDNs=[{"matchPattern": "*.example.com/x"}]),
                                "egress[0].toFQDNs[0].matchPattern",
                                'Invalid characters in MatchPattern: "*.example.com/x". Only 0-9, a-z, A-Z and ., - '
                                'and * characters are allowed', ALL[:-1]),
    "fqdn-pattern-characters-1.19": (eg(toFQDNs=[{"matchPattern": "*.example.com/x"}]),
                                     "egress[0].toFQDNs[0].matchPattern",
                                     'Invalid characters in MatchPattern: "*.example.com/x". Only 0-9, a-z, A-Z and '
                                     '., -, _ and * characters are allowed', [19]),
    "http-regex": (eg(toPorts=[http_port(http=[{"path": "/v1/(.*"}])]), "egress[0].toPorts[0].rules.http[0].path",
                   "error parsing regexp: missing closing ): `/v1/(.*`", ALL),
    "no-direction-since-1.17": ({"endpointSelector": WEB}, None,
                                "rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny", [17, 18, 19]),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_each_rejection_class_has_the_agents_message(name):
    rule, field, message, minors = REJECTED[name]
    for minor in minors:
        exc = check(named("broken", rule), [minor])
        assert exc is not None, "Cilium 1.%d accepted %s" % (minor, name)
        assert exc.message == message
        assert (exc.index, exc.name, exc.field) == (0, "broken", field)
        assert exc.versions == [minor]


def test_l7_needs_the_l7_proxy_flag_of_the_agent():
    rule = eg(toPorts=[http_port()])
    exc = check(rule, [16], l7_proxy=False)
    assert exc.message == "L7 policy is not supported since L7 proxy is not enabled"
    assert check(rule, [16], l7_proxy=True) is None
    # Publishing without an agent: the flag is unknown, so the check is left to each node.
    val.validate_rules(dec.normalize_rules([rule]), [val.ValidationTarget(16)])


def test_from_nodes_needs_the_node_selector_flag_and_cilium_1_16():
    rule = ing(fromNodes=[{"matchLabels": {"node-role": "ingress"}}])
    exc = check(rule, [16], node_labels=False)
    assert exc.message == ('FromNodes/ToNodes rules can only be applied when the "enable-node-selector-labels" '
                           'flag is set')
    assert check(rule, [16, 19], node_labels=True) is None
    # Cilium 1.15 does not know the field and would silently drop it (the item would allow more).
    exc = check(rule, [15], node_labels=True)
    assert exc.field == "ingress[0].fromNodes"
    assert "not supported before Cilium 1.16" in exc.message


def test_rule_without_direction_is_accepted_before_1_17():
    assert check({"endpointSelector": WEB}, [13, 14, 15, 16]) is None


def test_error_names_the_rule_by_position_or_name_and_the_field_and_versions():
    rules = dec.normalize_rules([
        named("web-ingress", ing(fromEntities=["world"])),
        {"endpointSelector": API, "egress": [{"toEntities": ["world-ipv4"]}]},
    ])
    with pytest.raises(dec.PolicyValidationError) as info:
        val.validate_rules(rules, [target(m) for m in ALL])
    assert str(info.value) == ("invalid policy: rules[1] egress[0].toEntities[0]: unsupported entity: world-ipv4 "
                               "(Cilium 1.13, 1.14)")
    rules[0]["ingress"][0]["fromEntities"] = ["nowhere"]
    with pytest.raises(dec.PolicyValidationError) as info:
        val.validate_rules(rules, [target(16)])
    assert str(info.value) == ("invalid policy: rules[0] (name=web-ingress) ingress[0].fromEntities[0]: "
                               "unsupported entity: nowhere (Cilium 1.16)")


# ------------------------------------------------------------------------------------------------
# What the agent silently accepts but we refuse
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, where, words", [
    (ing(fromEndpoint=[WEB]), "rules[0].ingress[0].fromEndpoint", "unknown field"),
    ({"endpointSelector": {"matchLabel": {"app": "x"}}, "ingress": [{}]}, "rules[0].endpointSelector.matchLabel",
     "select every endpoint"),
    ({"endpointSelector": None, "ingress": [{}]}, "rules[0].endpointSelector", "null selector"),
    (ing(fromEndpoints=[None]), "rules[0].ingress[0].fromEndpoints[0]", "null list element"),
    (ing(toPorts=[{"ports": [{"port": True}]}]), "rules[0].ingress[0].toPorts[0].ports[0].port",
     "expected a string, got bool"),
    ({"endpointSelector": WEB, "ingressDeny": [{"toPorts": [http_port()]}]},
     "rules[0].ingressDeny[0].toPorts[0].rules", "unknown field"),
    ({"endpointSelector": WEB, "Ingress": [{}], "ingress": [{}]}, "rules[0].ingress", "given twice"),
    ({"labels": [{"value": "x"}], "endpointSelector": WEB}, "rules[0].labels[0]", "has no key"),
])
def test_input_the_agent_would_misread_is_refused(rule, where, words):
    with pytest.raises(dec.PolicyInputError) as info:
        dec.normalize_rules([rule])
    assert str(info.value).startswith(where + ": ") and words in str(info.value)


@pytest.mark.parametrize("value, words", [
    ("", "empty"), ("{not json", "not valid JSON"), ("42", "expected a list"), ([1], "expected a rule object"),
])
def test_unreadable_policy_text(value, words):
    with pytest.raises(dec.PolicyInputError) as info:
        dec.normalize_rules(value)
    assert words in str(info.value)


def test_fields_newer_than_the_agent_are_refused():
    rule = {"endpointSelector": WEB, "ingress": [{}], "enableDefaultDeny": {"ingress": False}}
    assert "enableDefaultDeny is not supported before Cilium 1.16" in check(rule, [15]).message
    assert check(rule, [16]) is None
    rule = {"endpointSelector": WEB, "ingress": [{}], "log": {"value": "audit"}}
    assert check(rule, [17]).field == "log"


# ------------------------------------------------------------------------------------------------
# Normalisation: one canonical form, so "unchanged" means unchanged
# ------------------------------------------------------------------------------------------------

def test_normalisation_is_canonical_and_idempotent():
    written = [{"Ingress": [{"FromEndpoints": [{"MatchLabels": {"app": "web"}}],
                             "toPorts": [{"ports": [{"port": 8080, "protocol": "TCP", "endPort": None}]}]}],
                "labels": ["name=web-ingress", "netreap:io.netreap.managed-by=netreap.cilium",
                           {"key": "io.netreap.policy-revision", "value": "abc", "source": "netreap"}],
                "EndpointSelector": {"matchLabels": {"b": "2", "a": 1, 3: "x"}}, "description": None}]
    rules = dec.normalize_rules(written)
    assert rules == [{"endpointSelector": {"matchLabels": {"3": "x", "a": "1", "b": "2"}},
                      "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                                   "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}],
                      "labels": [{"key": "name", "value": "web-ingress", "source": "unspec"}]}]
    assert list(rules[0]) == ["endpointSelector", "ingress", "labels"]
    assert dec.normalize_rules(dec.consul_value(rules)) == rules
    assert dec.policy_revision(dec.normalize_rules(json.dumps(written))) == dec.policy_revision(rules)


def test_consul_value_is_a_json_array_like_netreaps():
    rules = dec.normalize_rules([named("a", ing(fromEntities=["world"]))])
    assert json.loads(dec.consul_value(rules)) == rules


# ------------------------------------------------------------------------------------------------
# Diffs by name or position
# ------------------------------------------------------------------------------------------------

def test_diff_by_name_and_unnamed_rules_by_content():
    old = dec.normalize_rules([named("a", ing(fromEntities=["world"])), named("b", ing(fromEntities=["host"])),
                               ing(fromEntities=["cluster"])])
    new = dec.normalize_rules([named("a", ing(fromEntities=["host"])), named("c", ing(fromEntities=["world"])),
                               ing(fromEntities=["cluster"]), ing(fromEntities=["health"])])
    assert dec.diff_refs(dec.rule_refs(old), dec.rule_refs(new)) == {
        "added": ["c", "#3"], "removed": ["b"], "changed": ["a"]}
    assert dec.diff_refs(dec.rule_refs(new), dec.rule_refs(new)) == {"added": [], "removed": [], "changed": []}


# ------------------------------------------------------------------------------------------------
# REST plans
# ------------------------------------------------------------------------------------------------

FOREIGN = {"endpointSelector": {"matchLabels": {"any:reserved:health": ""}}, "ingress": [{}],
           "labels": [{"key": "name", "value": "operator-rule", "source": "unspec"}]}
V1 = dec.normalize_rules([named("web", ing(fromEntities=["world"])), named("cache", ing(fromEndpoints=[WEB]))])
V2 = dec.normalize_rules([named("web", ing(fromEntities=["world", "host"])), named("api", ing(fromEndpoints=[WEB]))])


def agent_after(put_rules, current=()):
    """What an agent holds after PUT (labels in the agent's object form)."""
    return list(current) + copy.deepcopy(put_rules)


def test_replace_with_labels_swaps_only_our_rules_in_one_put():
    agent = [FOREIGN]
    plan = planner.plan_rest(V1, agent, "replace-with-labels")
    assert plan["changed"] and plan["delete"] == []
    assert plan["replace_with_labels"] == ["netreap:io.netreap.managed-by=netreap.cilium"]
    labels = [{(lbl.get("source"), lbl["key"]) for lbl in rule["labels"]} for rule in plan["put"]]
    assert all({("netreap", dec.OWNER_KEY), ("netreap", dec.REVISION_KEY), ("netreap", dec.DIGEST_KEY),
                ("unspec", "name")} == set(lbls) for lbls in labels)
    agent = agent_after(plan["put"], agent)
    assert planner.plan_rest(V1, agent, "replace-with-labels")["changed"] is False
    plan = planner.plan_rest(V2, agent, "replace-with-labels")
    assert plan["changed"] and plan["diff"] == {"added": ["api"], "removed": ["cache"], "changed": ["web"]}


def test_add_then_delete_adds_a_new_revision_then_deletes_the_old_one():
    plan = planner.plan_rest(V1, [FOREIGN], "add-then-delete")
    assert plan["put"] and plan["delete"] == [] and plan["replace_with_labels"] is None
    agent = agent_after(plan["put"], [FOREIGN])
    old_revision = dec.policy_revision(V1)
    assert planner.plan_rest(V1, agent, "add-then-delete")["changed"] is False
    plan = planner.plan_rest(V2, agent, "add-then-delete")
    assert plan["revision"] == dec.policy_revision(V2)
    assert plan["delete"] == [[dec.OWNER_LABEL, "netreap:io.netreap.policy-revision=%s" % old_revision]]
    assert all(dec.label_value(r, dec.REVISION_KEY) == plan["revision"] for r in plan["put"])


def test_add_then_delete_finishes_an_interrupted_update_without_putting_again():
    first = planner.plan_rest(V1, [], "add-then-delete")["put"]
    second = planner.plan_rest(V2, first, "add-then-delete")["put"]
    agent = [FOREIGN] + first + second  # the DELETE of V1 never happened
    plan = planner.plan_rest(V2, agent, "add-then-delete")
    assert plan["changed"] and plan["put"] is None
    assert plan["delete"] == [[dec.OWNER_LABEL, dec.revision_label(dec.policy_revision(V1))]]


def test_add_then_delete_never_deletes_the_revision_it_adds():
    # Someone deleted one of our rules by hand: same revision, fewer rules.
    partial = planner.plan_rest(V1, [], "add-then-delete")["put"][:1]
    plan = planner.plan_rest(V1, partial, "add-then-delete", agent_revision=9)
    assert plan["revision"] == "%s-9" % dec.policy_revision(V1)
    assert plan["delete"] == [[dec.OWNER_LABEL, dec.revision_label(dec.policy_revision(V1))]]
    agent = list(partial) + plan["put"]
    agent = [r for r in agent if dec.label_value(r, dec.REVISION_KEY) == plan["revision"]]
    assert planner.plan_rest(V1, agent, "add-then-delete")["changed"] is False


def test_empty_policy_deletes_only_by_our_owner_label():
    agent = [FOREIGN] + planner.plan_rest(V1, [], "replace-with-labels")["put"]
    for method in ("replace-with-labels", "add-then-delete"):
        plan = planner.plan_rest([], agent, method)
        assert plan["put"] is None and plan["delete"] == [[dec.OWNER_LABEL]]
    assert planner.plan_rest([], [FOREIGN], "replace-with-labels")["changed"] is False


# ------------------------------------------------------------------------------------------------
# Static policy files
# ------------------------------------------------------------------------------------------------

def test_static_file_names_are_dns_1123_and_unique():
    rules = dec.normalize_rules([named("Web Ingress!", ing()), named("web-ingress", ing()), ing(),
                                 named("..x..y--", ing()), named("a" * 300, ing())])
    names = ren.static_file_names(rules)
    assert names[:4] == ["netreap-web-ingress.yaml", "netreap-web-ingress-2.yaml", "netreap-rule-2.yaml",
                         "netreap-x.y.yaml"]
    assert all(ren.is_static_file_name(n) and not val.dns1123_subdomain_errors(n) for n in names)


def test_static_plan_writes_changed_files_and_removes_only_ours():
    first = planner.plan_static(V1, {})
    assert sorted(first["write"]) == ["netreap-cache.yaml", "netreap-web.yaml"] and first["remove"] == []
    existing = dict(first["write"])
    existing["team-policy.yaml"] = None                      # somebody else's file
    existing["netreap-handmade.yaml"] = "kind: CiliumClusterwideNetworkPolicy\n"  # our prefix, not our marker
    existing[".netreap-web.yaml.tmp"] = None                # left by an interrupted run
    plan = planner.plan_static(V2, existing)
    assert sorted(plan["write"]) == ["netreap-api.yaml", "netreap-web.yaml"]
    assert plan["remove"] == ["netreap-cache.yaml"] and plan["cleanup"] == [".netreap-web.yaml.tmp"]
    assert plan["diff"] == {"added": ["api"], "removed": ["cache"], "changed": ["web"]}
    assert plan["conflicts"] == []
    done = {n: c for n, c in existing.items() if n not in plan["remove"] + plan["cleanup"]}
    done.update(plan["write"])
    assert planner.plan_static(V2, done)["changed"] is False


def test_static_plan_refuses_to_overwrite_a_file_it_did_not_write():
    plan = planner.plan_static(V1, {"netreap-web.yaml": "# mine\nspec: {}\n"})
    assert plan["conflicts"] == ["netreap-web.yaml"]


def test_policy_file_is_one_clusterwide_object_that_yaml_reads_back():
    rule = V1[0]
    text = ren.render_policy_file(rule, "netreap-web.yaml", "web")
    assert text.startswith(dec.STATIC_MARKER + "\n")
    assert ren.is_owned_static_file("netreap-web.yaml", text) and ren.static_header_ref(text) == "web"
    assert yaml.safe_load(text) == {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                                    "metadata": {"name": "netreap-web"}, "spec": rule}


# ------------------------------------------------------------------------------------------------
# YAML without PyYAML
# ------------------------------------------------------------------------------------------------

TRICKY = {
    "plain": "web", "yaml11-bools": ["yes", "no", "on", "off", "y", "n", "true", "null", "~"],
    "numbers-as-text": ["0x1F", "010", "1e3", "8080", ".5", "-1"], "colon: key": "a: b # not a comment",
    "quotes": "say \"hi\" and 'bye' \\ back", "unicode": "\u00fcber caf\u00e9 \U0001F600 \u2028 \u0085",
    "controls": "tab\there\nnew line\r\x00\x7f", "empty": "", "leading space": "  x  ", "*alias": "&anchor",
    "on": {"nested": [[1, 2], [], {}, {"k": False}, None, -3]}, "list-of-maps": [{"a": 1, "b": [{"c": "d"}]}],
    "!tag": "%directive", "": "empty key",
}


def test_yaml_round_trips_every_kind_of_value():
    assert yaml.safe_load(ren.to_yaml(TRICKY)) == TRICKY
    text = ren.to_yaml(TRICKY)
    assert text.isascii()


@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_yaml_round_trips_documentation_examples(name):
    rule = dec.normalize_rules([DOC_EXAMPLES[name]])[0]
    assert yaml.safe_load(ren.to_yaml({"spec": rule})) == {"spec": rule}


def test_versions_take_patch_releases():
    assert dec.parse_release("1.16.17") == (16, 17)
    assert dec.parse_release("v1.19.0-rc.1") == (19, 0)
    assert dec.parse_release("1.18") == (18, None)
    assert dec.parse_version("1.16.5") == 16
    for bad in ("2.0", "1.12.3", "1.16.x", ""):
        with pytest.raises(ValueError):
            dec.parse_release(bad)


@pytest.mark.parametrize("patch, message", [
    (6, "Combining FromEndpoints and FromCIDR is not supported yet"),
    (7, "combining FromEndpoints and FromCIDR is not supported yet"),
    (None, "combining FromEndpoints and FromCIDR is not supported yet"),
])
def test_message_wording_follows_the_agents_patch_release(patch, message):
    """1.16.7 lower-cased the agent's messages (docs/upstream.md#rule-validation-per-release-recorded)."""
    rules = dec.normalize_rules([named("broken", ing(fromEndpoints=[WEB], fromCIDR=["10.0.0.0/8"]))])
    with pytest.raises(dec.PolicyValidationError) as caught:
        val.validate_rules(rules, [val.ValidationTarget(16, True, False, True, patch=patch)])
    assert caught.value.message == message
