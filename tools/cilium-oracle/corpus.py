# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy corpus the oracle is run over (see README.md).

Built systematically: a base rule, then every field of the rule schema (Cilium 1.16 to 1.19)
with its valid and invalid value classes put into that base, then the combinations the agent
checks together (two peer kinds in one item, L7 with a protocol, ICMP with ports, ...), the
whole-body shapes (not a list, ``null`` rules, type errors), every policy the project's tests
and docs already use, and the static files the collection renders for them.

``corpus()`` returns a list of cases ``{"id", "kind", "input", "flags"?}``:

* ``kind: rest``: ``input`` is the text of a ``PUT /v1/policy`` body;
* ``kind: static``: ``input`` is the text of one file in the agent's static policy directory.
"""

from __future__ import annotations

import ast
import copy
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WEB = {"matchLabels": {"netreap:nomad.job_id": "web"}}
CACHE = {"matchLabels": {"netreap:nomad.job_id": "cache"}}
BASE = {"endpointSelector": WEB, "ingress": [{"fromEndpoints": [CACHE]}]}

# Endpoints the selection answers are given for: Nomad endpoints as the collection labels them,
# and one Kubernetes-style endpoint for contrast.
ENDPOINTS = {
    "nomad-web": ["netreap:nomad.job_id=web", "netreap:nomad.task_group_id=web",
                  "netreap:nomad.namespace=default", "nomad:team=a"],
    "nomad-cache": ["netreap:nomad.job_id=cache", "netreap:nomad.task_group_id=cache",
                    "netreap:nomad.namespace=default"],
    "nomad-cache-prod": ["netreap:nomad.job_id=cache", "netreap:nomad.namespace=prod"],
    "nomad-db": ["netreap:nomad.job_id=db", "netreap:nomad.namespace=default", "nomad:tier=data"],
    "k8s-web": ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=default",
                "k8s:io.cilium.k8s.policy.cluster=default"],
}


def _j(value):
    return json.dumps(value, sort_keys=False)


class _Corpus:
    def __init__(self):
        self.cases = []
        self.ids = set()

    def add(self, case_id, body, kind="rest", flags=None, raw=False):
        if case_id in self.ids:
            raise ValueError("duplicate corpus id %s" % case_id)
        self.ids.add(case_id)
        case = {"id": case_id, "kind": kind, "input": body if raw else _j(body)}
        if flags:
            case["flags"] = flags
        self.cases.append(case)

    def rule(self, case_id, rule, flags=None):
        self.add(case_id, [rule], flags=flags)


def _with(path, value):
    """BASE with ``value`` set at ``path`` (a list of keys / indexes); value _DEL removes."""
    rule = copy.deepcopy(BASE)
    node = rule
    for key in path[:-1]:
        node = node[key]
    if value is _DEL:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return rule


_DEL = object()


def _ingress(item):
    return {"endpointSelector": WEB, "ingress": [item]}


def _egress(item):
    return {"endpointSelector": WEB, "egress": [item]}


def _ports(*ports, **extra):
    rule = {"ports": list(ports)}
    rule.update(extra)
    return rule


SELECTORS = {
    # valid
    "empty": {},
    "labels": {"matchLabels": {"netreap:nomad.job_id": "web"}},
    "labels-any": {"matchLabels": {"any:app": "web"}},
    "labels-nosource": {"matchLabels": {"app": "web"}},
    "labels-reserved": {"matchLabels": {"reserved:host": ""}},
    "labels-empty-value": {"matchLabels": {"netreap:nomad.job_id": ""}},
    "labels-dotted-key": {"matchLabels": {"nomad:nomad.task_group_id": "cache-1"}},
    "expr-in": {"matchExpressions": [{"key": "netreap:nomad.job_id", "operator": "In", "values": ["web", "cache"]}]},
    "expr-notin": {"matchExpressions": [{"key": "netreap:nomad.job_id", "operator": "NotIn", "values": ["db"]}]},
    "expr-exists": {"matchExpressions": [{"key": "netreap:nomad.job_id", "operator": "Exists"}]},
    "expr-doesnotexist": {"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace",
                                                "operator": "DoesNotExist"}]},
    "labels-and-expr": {"matchLabels": {"netreap:nomad.job_id": "web"},
                        "matchExpressions": [{"key": "nomad:team", "operator": "In", "values": ["a"]}]},
    # invalid
    "value-slash": {"matchLabels": {"netreap:nomad.job_id": "batch/periodic-1"}},
    "value-too-long": {"matchLabels": {"netreap:nomad.job_id": "v" * 64}},
    "value-dash-end": {"matchLabels": {"netreap:nomad.job_id": "web-"}},
    "value-space": {"matchLabels": {"app": "my web"}},
    "key-space": {"matchLabels": {"my app": "web"}},
    "key-too-long": {"matchLabels": {"k" * 64: "web"}},
    "key-two-slashes": {"matchLabels": {"a/b/c": "web"}},
    "key-empty": {"matchLabels": {"": "web"}},
    "expr-in-novalues": {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]},
    "expr-exists-values": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
    "expr-bad-operator": {"matchExpressions": [{"key": "app", "operator": "Near", "values": ["x"]}]},
    "expr-lower-operator": {"matchExpressions": [{"key": "app", "operator": "in", "values": ["x"]}]},
    "expr-bad-value": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a b"]}]},
    "expr-no-key": {"matchExpressions": [{"operator": "Exists"}]},
    "two-errors": {"matchLabels": {"b c": "a b"}},
    # decode classes
    "null": None,
    "string": "app=web",
    "list": [],
    "labels-number": {"matchLabels": {"app": 1}},
    "labels-null": {"matchLabels": None},
    "unknown-field": {"matchLabel": {"app": "web"}},
    "case-variant": {"MatchLabels": {"app": "web"}},
    "expr-values-string": {"matchExpressions": [{"key": "app", "operator": "In", "values": "web"}]},
}

CIDRS = {
    "v4": "10.0.0.0/8", "v4-host": "10.1.2.3/32", "v6": "2001:db8::/32", "v4-bare": "10.1.2.3",
    "v6-bare": "2001:db8::1", "all": "0.0.0.0/0", "empty": "", "bits-33": "10.0.0.0/33",
    "bits-129": "2001:db8::/129", "octet-256": "256.0.0.0/8", "leading-zero": "010.0.0.0/8",
    "no-bits": "10.0.0.0/", "word": "internet", "short": "10.0/16", "zone": "fe80::1%eth0/64",
    "host-bits": "10.1.2.3/8", "trailing-dot": "10.0.0.0./8",
}

PORTS = {
    "80": "80", "443": "443", "0": "0", "65535": "65535", "65536": "65536", "99999": "99999",
    "neg": "-1", "hex": "0x50", "octal": "0120", "name-http": "http", "name-upper": "HTTP",
    "name-dash": "dns-tcp", "name-long": "averyveryverylongname", "name-double-dash": "a--b",
    "empty": "", "space": "80 ", "alpha-digit": "8o", "range-text": "80-90",
}

PROTOCOLS = ["TCP", "UDP", "SCTP", "ANY", "tcp", "udp", "any", "ICMP", "ICMPv6", "VRRP", "IGMP", "HTTP", ""]

ENTITIES = ["all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "remote-node",
            "kube-apiserver", "ingress", "init", "health", "unmanaged", "none", "everything",
            "World", ""]

FQDNS = {
    "name": {"matchName": "example.com"}, "name-trailing-dot": {"matchName": "example.com."},
    "name-underscore": {"matchName": "_srv.example.com"}, "name-upper": {"matchName": "Example.COM"},
    "name-space": {"matchName": "exa mple.com"}, "name-star": {"matchName": "*.example.com"},
    "pattern": {"matchPattern": "*.example.com"}, "pattern-all": {"matchPattern": "*"},
    "pattern-double-star": {"matchPattern": "**.example.com"}, "pattern-bad": {"matchPattern": "ex?mple.com"},
    "both": {"matchName": "example.com", "matchPattern": "*.example.com"}, "neither": {},
    "name-slash": {"matchName": "example.com/x"},
}

HTTP_RULES = {
    "path": {"method": "GET", "path": "/api/.*"}, "host": {"host": "example\\.com"},
    "headers": {"headers": ["X-Token: 1"]}, "bad-regexp-paren": {"path": "/api/(v1"},
    "bad-regexp-bracket": {"path": "/a[b"}, "bad-regexp-repeat": {"path": "*x"},
    "lookahead": {"path": "/(?=x)"}, "backref": {"path": "(a)\\1"},
    "header-match": {"headerMatches": [{"name": "X-Env", "value": "prod"}]},
    "header-match-noname": {"headerMatches": [{"value": "prod"}]},
    "header-match-mismatch": {"headerMatches": [{"name": "X-Env", "mismatch": "LOG", "value": "x"}]},
    "header-match-bad-mismatch": {"headerMatches": [{"name": "X-Env", "mismatch": "DROP", "value": "x"}]},
    "header-match-secret-noname": {"headerMatches": [{"name": "X-Env", "secret": {"namespace": "x"}}]},
    "method-bad": {"method": "GE(T"},
    "empty": {},
}

ICMPS = {
    "type-8": [{"type": 8}], "type-name": [{"type": "EchoRequest"}], "v6-type": [{"family": "IPv6", "type": 128}],
    "v6-name": [{"family": "IPv6", "type": "EchoRequest"}], "bad-name": [{"type": "Ping"}],
    "bad-family": [{"family": "IPv5", "type": 8}], "type-256": [{"type": 256}], "type-neg": [{"type": -1}],
    "v4-name-in-v6": [{"family": "IPv6", "type": "TimestampRequest"}],
    "type-string-number": [{"type": "8"}], "many": [{"type": 8}] * 41, "forty": [{"type": 8}] * 40,
    "family-only": [{"family": "IPv4"}],
}


def _selector_cases(c):
    for name, sel in sorted(SELECTORS.items()):
        c.rule("selector/endpointSelector/%s" % name, _with(["endpointSelector"], sel))
        c.rule("selector/fromEndpoints/%s" % name, _with(["ingress", 0, "fromEndpoints"], [sel]))
        c.rule("selector/toEndpoints/%s" % name, {"endpointSelector": WEB, "egress": [{"toEndpoints": [sel]}]})
    for name in ("labels", "empty", "null", "value-slash", "expr-bad-operator"):
        sel = SELECTORS[name]
        c.rule("selector/nodeSelector/%s" % name,
               {"nodeSelector": sel, "ingress": [{"fromEntities": ["cluster"]}]})
        c.rule("selector/fromNodes/%s" % name, _ingress({"fromNodes": [sel]}),
               flags={"node_selector_labels": True})
        c.rule("selector/toNodes/%s" % name, _egress({"toNodes": [sel]}), flags={"node_selector_labels": True})
        c.rule("selector/fromRequires/%s" % name, _with(["ingress", 0, "fromRequires"], [sel]))
        c.rule("selector/toRequires/%s" % name, _egress({"toEndpoints": [CACHE], "toRequires": [sel]}))


def _rule_level_cases(c):
    c.rule("rule/base", BASE)
    c.rule("rule/no-subject", {"ingress": [{"fromEndpoints": [CACHE]}]})
    c.rule("rule/both-subjects", dict(BASE, nodeSelector={}))
    c.rule("rule/no-direction", {"endpointSelector": WEB})
    c.rule("rule/empty-directions", {"endpointSelector": WEB, "ingress": [], "egress": []})
    c.rule("rule/ingress-empty-item", {"endpointSelector": WEB, "ingress": [{}]})
    c.rule("rule/egress-empty-item", {"endpointSelector": WEB, "egress": [{}]})
    c.rule("rule/ingress-null-item", {"endpointSelector": WEB, "ingress": [None]})
    c.rule("rule/ingress-null", {"endpointSelector": WEB, "ingress": None, "egress": [{"toEntities": ["world"]}]})
    c.rule("rule/ingress-object", {"endpointSelector": WEB, "ingress": {"fromEntities": ["world"]}})
    c.rule("rule/ingressdeny-only", {"endpointSelector": WEB, "ingressDeny": [{"fromEntities": ["world"]}]})
    c.rule("rule/egressdeny-only", {"endpointSelector": WEB, "egressDeny": [{"toEntities": ["world"]}]})
    c.rule("rule/labels-strings", dict(BASE, labels=["unspec:name=web-in", "netreap:team=a"]))
    c.rule("rule/labels-objects", dict(BASE, labels=[{"key": "name", "value": "web-in", "source": "unspec"}]))
    c.rule("rule/labels-empty-list", dict(BASE, labels=[]))
    c.rule("rule/labels-empty-string", dict(BASE, labels=[""]))
    c.rule("rule/labels-number", dict(BASE, labels=[1]))
    c.rule("rule/labels-object-nokey", dict(BASE, labels=[{"value": "x"}]))
    c.rule("rule/labels-not-list", dict(BASE, labels="name=x"))
    c.rule("rule/description", dict(BASE, description="web accepts from cache"))
    c.rule("rule/description-number", dict(BASE, description=1))
    for value in (True, False):
        c.rule("rule/enableDefaultDeny/ingress-%s" % value, dict(BASE, enableDefaultDeny={"ingress": value}))
        c.rule("rule/enableDefaultDeny/egress-%s" % value, dict(BASE, enableDefaultDeny={"egress": value}))
    c.rule("rule/enableDefaultDeny/string", dict(BASE, enableDefaultDeny={"ingress": "false"}))
    c.rule("rule/enableDefaultDeny/bool", dict(BASE, enableDefaultDeny=False))
    c.rule("rule/log", dict(BASE, log={"value": "web-in"}))
    c.rule("rule/log-string", dict(BASE, log="web-in"))
    c.rule("rule/unknown-field", dict(BASE, ingres=[{"fromEntities": ["world"]}]))
    c.rule("rule/case-variant", {"EndpointSelector": WEB, "Ingress": [{"FromEndpoints": [CACHE]}]})
    c.rule("rule/field-twice-case", {"endpointSelector": WEB, "EndpointSelector": CACHE,
                                     "ingress": [{"fromEntities": ["world"]}]})
    c.rule("rule/unknown-in-ingress", _ingress({"fromEndpoint": [CACHE]}))
    c.rule("rule/unknown-in-ingress-only", _ingress({"fromEndpoint": [CACHE], "toPorts": [_ports({"port": "80"})]}))
    c.rule("rule/nodeselector-l7-ingress",
           {"nodeSelector": {}, "ingress": [{"fromEntities": ["world"], "toPorts": [
               _ports({"port": "80", "protocol": "TCP"}, rules={"http": [{"path": "/"}]})]}]})
    c.rule("rule/nodeselector-l7-egress-http",
           {"nodeSelector": {}, "egress": [{"toEntities": ["world"], "toPorts": [
               _ports({"port": "80", "protocol": "TCP"}, rules={"http": [{"path": "/"}]})]}]})
    c.rule("rule/nodeselector-l7-egress-dns",
           {"nodeSelector": {}, "egress": [{"toEntities": ["world"], "toPorts": [
               _ports({"port": "53", "protocol": "UDP"}, rules={"dns": [{"matchPattern": "*"}]})]}]})
    c.rule("rule/nodeselector-plain", {"nodeSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]})


def _body_cases(c):
    c.add("body/empty-list", [])
    c.add("body/object", BASE)
    c.add("body/null", None)
    c.add("body/null-rule", [None])
    c.add("body/rule-and-null", [BASE, None])
    c.add("body/string", "rules")
    c.add("body/number", 1)
    c.add("body/list-of-list", [[BASE]])
    c.add("body/list-of-string", ["rule"])
    c.add("body/two-rules-second-bad", [BASE, _with(["endpointSelector"], SELECTORS["value-slash"])])
    c.add("body/two-rules-first-bad", [_with(["endpointSelector"], SELECTORS["value-slash"]), BASE])
    c.add("body/not-json", "[{", raw=True)
    c.add("body/empty-text", "", raw=True)
    c.add("body/trailing-comma", '[{"endpointSelector": {}, "ingress": [{}],}]', raw=True)
    c.add("body/duplicate-key", '[{"endpointSelector": {}, "endpointSelector": {"matchLabels": {"a": "b"}},'
                                ' "ingress": [{}]}]', raw=True)
    c.add("body/big-number", '[{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80",'
                             ' "endPort": 99999999999}]}]}]}]', raw=True)


def _l3_cases(c):
    for name, cidr in sorted(CIDRS.items()):
        c.rule("cidr/fromCIDR/%s" % name, _ingress({"fromCIDR": [cidr]}))
        c.rule("cidr/toCIDR/%s" % name, _egress({"toCIDR": [cidr]}))
        c.rule("cidr/fromCIDRSet/%s" % name, _ingress({"fromCIDRSet": [{"cidr": cidr}]}))
        c.rule("cidr/toCIDRSet/%s" % name, _egress({"toCIDRSet": [{"cidr": cidr}]}))
    sets = {
        "except-inside": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]},
        "except-outside": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]},
        "except-equal": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]},
        "except-wider": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]},
        "except-bare-ip": {"cidr": "10.0.0.0/8", "except": ["10.1.2.3"]},
        "except-bad": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/40"]},
        "except-v6-in-v4": {"cidr": "10.0.0.0/8", "except": ["2001:db8::/32"]},
        "except-v6": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]},
        "group-ref": {"cidrGroupRef": "office"},
        "group-ref-and-cidr": {"cidr": "10.0.0.0/8", "cidrGroupRef": "office"},
        "group-selector": {"cidrGroupSelector": {"matchLabels": {"team": "a"}}},
        "group-selector-bad": {"cidrGroupSelector": {"matchLabels": {"team": "a b"}}},
        "group-selector-and-cidr": {"cidr": "10.0.0.0/8", "cidrGroupSelector": {}},
        "group-ref-and-selector": {"cidrGroupRef": "office", "cidrGroupSelector": {}},
        "group-ref-except": {"cidrGroupRef": "office", "except": ["10.0.0.0/8"]},
        "empty-object": {},
        "unknown-field": {"cidrs": "10.0.0.0/8"},
        "cidr-number": {"cidr": 10},
    }
    for name, cidr_rule in sorted(sets.items()):
        c.rule("cidrset/fromCIDRSet/%s" % name, _ingress({"fromCIDRSet": [cidr_rule]}))
        c.rule("cidrset/toCIDRSet/%s" % name, _egress({"toCIDRSet": [cidr_rule]}))
    for entity in ENTITIES:
        c.rule("entity/fromEntities/%s" % (entity or "empty"), _ingress({"fromEntities": [entity]}))
        c.rule("entity/toEntities/%s" % (entity or "empty"), _egress({"toEntities": [entity]}))
    c.rule("entity/fromEntities/number", _ingress({"fromEntities": [1]}))
    c.rule("groups/fromGroups/aws", _ingress({"fromGroups": [{"aws": {"securityGroupsIds": ["sg-1"]}}]}))
    c.rule("groups/toGroups/aws", _egress({"toGroups": [{"aws": {"securityGroupsIds": ["sg-1"]}}]}))
    c.rule("groups/toGroups/empty", _egress({"toGroups": [{}]}))
    services = {
        "name": {"k8sService": {"serviceName": "web", "namespace": "default"}},
        "selector": {"k8sServiceSelector": {"selector": {"matchLabels": {"app": "web"}}, "namespace": "default"}},
        "selector-bad": {"k8sServiceSelector": {"selector": {"matchLabels": {"app": "a b"}}}},
        "empty": {},
    }
    for name, svc in sorted(services.items()):
        c.rule("services/toServices/%s" % name, _egress({"toServices": [svc]}))
    c.rule("services/toServices-with-ports", _egress({"toServices": [services["name"]],
                                                      "toPorts": [_ports({"port": "80", "protocol": "TCP"})]}))
    for flag in (False, True):
        c.rule("nodes/fromNodes/flag-%s" % flag, _ingress({"fromNodes": [{}]}), flags={"node_selector_labels": flag})
        c.rule("nodes/toNodes/flag-%s" % flag, _egress({"toNodes": [CACHE]}), flags={"node_selector_labels": flag})
    for name, fqdn in sorted(FQDNS.items()):
        c.rule("fqdn/toFQDNs/%s" % name, _egress({"toFQDNs": [fqdn], "toPorts": [_ports({"port": "443"})]}))
    c.rule("fqdn/toFQDNs/alone", _egress({"toFQDNs": [FQDNS["name"]]}))
    c.rule("fqdn/toFQDNs/long-name", _egress({"toFQDNs": [{"matchName": ("a" * 60 + ".") * 5 + "com"}]}))
    # empty peer lists: an explicitly empty list selects nothing from 1.16 on
    for key, maker in (("fromEndpoints", _ingress), ("fromEntities", _ingress), ("fromCIDR", _ingress),
                       ("toEndpoints", _egress), ("toCIDRSet", _egress), ("toFQDNs", _egress)):
        c.rule("empty-peer/%s" % key, maker({key: []}))
        c.rule("null-element/%s" % key, maker({key: [None]}))


PEERS_IN = {"fromEndpoints": [CACHE], "fromCIDR": ["10.0.0.0/8"], "fromCIDRSet": [{"cidr": "10.0.0.0/8"}],
            "fromEntities": ["world"], "fromNodes": [{}], "fromGroups": [{"aws": {"securityGroupsIds": ["sg-1"]}}],
            "fromRequires": [CACHE]}
PEERS_OUT = {"toEndpoints": [CACHE], "toCIDR": ["10.0.0.0/8"], "toCIDRSet": [{"cidr": "10.0.0.0/8"}],
             "toEntities": ["world"], "toNodes": [{}], "toGroups": [{"aws": {"securityGroupsIds": ["sg-1"]}}],
             "toServices": [{"k8sService": {"serviceName": "web", "namespace": "default"}}],
             "toFQDNs": [{"matchName": "example.com"}], "toRequires": [CACHE]}


def _combination_cases(c):
    for direction, peers, maker in (("ingress", PEERS_IN, _ingress), ("egress", PEERS_OUT, _egress)):
        names = sorted(peers)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                flags = {"node_selector_labels": True} if "Nodes" in first + second else None
                c.rule("combine/%s/%s+%s" % (direction, first, second),
                       maker({first: peers[first], second: peers[second]}), flags=flags)
        for deny, dmaker in (("ingressDeny", lambda i: {"endpointSelector": WEB, "ingressDeny": [i]}),
                             ("egressDeny", lambda i: {"endpointSelector": WEB, "egressDeny": [i]})):
            if (deny == "ingressDeny") != (direction == "ingress"):
                continue
            for name in names:
                if name in ("toFQDNs",):
                    continue
                flags = {"node_selector_labels": True} if "Nodes" in name else None
                c.rule("deny/%s/%s" % (deny, name), dmaker({name: peers[name]}), flags=flags)
            first, second = names[0], names[2]
            c.rule("deny/%s/%s+%s" % (deny, first, second), dmaker({first: peers[first], second: peers[second]}))


def _port_cases(c):
    for name, port in sorted(PORTS.items()):
        c.rule("port/ingress/%s" % name, _ingress({"fromEndpoints": [CACHE],
                                                   "toPorts": [_ports({"port": port, "protocol": "TCP"})]}))
    c.rule("port/number", _ingress({"toPorts": [_ports({"port": 80})]}))
    c.rule("port/missing", _ingress({"toPorts": [_ports({"protocol": "TCP"})]}))
    c.rule("port/endPort", _ingress({"toPorts": [_ports({"port": "8000", "endPort": 8080})]}))
    c.rule("port/endPort-below", _ingress({"toPorts": [_ports({"port": "8080", "endPort": 8000})]}))
    c.rule("port/endPort-string", _ingress({"toPorts": [_ports({"port": "8000", "endPort": "8080"})]}))
    c.rule("port/endPort-big", _ingress({"toPorts": [_ports({"port": "8000", "endPort": 70000})]}))
    c.rule("port/endPort-named", _ingress({"toPorts": [_ports({"port": "http", "endPort": 8080})]}))
    c.rule("port/40", _ingress({"toPorts": [_ports(*[{"port": str(1000 + i)} for i in range(40)])]}))
    c.rule("port/41", _ingress({"toPorts": [_ports(*[{"port": str(1000 + i)} for i in range(41)])]}))
    c.rule("port/no-ports", _ingress({"toPorts": [{}]}))
    c.rule("port/ports-empty", _ingress({"toPorts": [{"ports": []}]}))
    c.rule("port/toPorts-empty", _ingress({"fromEntities": ["world"], "toPorts": []}))
    for proto in PROTOCOLS:
        c.rule("protocol/%s" % (proto or "empty"), _ingress({"toPorts": [_ports({"port": "80", "protocol": proto})]}))
    c.rule("protocol/number", _ingress({"toPorts": [_ports({"port": "80", "protocol": 6})]}))
    c.rule("deny-port/ingressDeny/80", {"endpointSelector": WEB, "ingressDeny": [
        {"fromEntities": ["world"], "toPorts": [_ports({"port": "80", "protocol": "TCP"})]}]})
    c.rule("deny-port/ingressDeny/bad", {"endpointSelector": WEB, "ingressDeny": [
        {"fromEntities": ["world"], "toPorts": [_ports({"port": "x y", "protocol": "TCP"})]}]})
    c.rule("deny-port/egressDeny/l7", {"endpointSelector": WEB, "egressDeny": [
        {"toEntities": ["world"], "toPorts": [_ports({"port": "80", "protocol": "TCP"},
                                                     rules={"http": [{"path": "/"}]})]}]})
    c.rule("deny-port/egressDeny/protocol", {"endpointSelector": WEB, "egressDeny": [
        {"toEntities": ["world"], "toPorts": [_ports({"port": "80", "protocol": "BAD"})]}]})


def _l7_cases(c):
    def http(rules_list, proto="TCP", direction="ingress", port="80"):
        item = {"toPorts": [_ports({"port": port, "protocol": proto}, rules={"http": rules_list})]}
        if direction == "ingress":
            item["fromEndpoints"] = [CACHE]
            return _ingress(item)
        item["toEndpoints"] = [CACHE]
        return _egress(item)

    for name, rule in sorted(HTTP_RULES.items()):
        c.rule("http/ingress/%s" % name, http([rule]))
    c.rule("http/egress/path", http([HTTP_RULES["path"]], direction="egress"))
    c.rule("http/empty-list", http([]))
    for proto in ("UDP", "ANY", "", "SCTP"):
        c.rule("http/protocol/%s" % (proto or "empty"), http([HTTP_RULES["path"]], proto=proto))
    c.rule("http/port-0", http([HTTP_RULES["path"]], port="0"))
    c.rule("http/named-port", http([HTTP_RULES["path"]], port="http"))
    c.rule("http/l7-proxy-off", http([HTTP_RULES["path"]]), flags={"l7_proxy": False})
    c.rule("http/l7-proxy-off-empty", http([]), flags={"l7_proxy": False})

    def dns(dns_rules, port="53", proto="UDP", direction="egress", extra=None):
        pr = _ports({"port": port, "protocol": proto}, rules={"dns": dns_rules})
        if extra:
            pr["ports"].append(extra)
        if direction == "egress":
            return _egress({"toEndpoints": [CACHE], "toPorts": [pr]})
        return _ingress({"fromEndpoints": [CACHE], "toPorts": [pr]})

    for name, fqdn in sorted(FQDNS.items()):
        c.rule("dns/egress/%s" % name, dns([fqdn]))
    c.rule("dns/ingress", dns([FQDNS["pattern"]], direction="ingress"))
    c.rule("dns/tcp", dns([FQDNS["pattern"]], proto="TCP"))
    c.rule("dns/any", dns([FQDNS["pattern"]], proto="ANY"))
    c.rule("dns/port-range", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "53", "endPort": 54, "protocol": "UDP"}, rules={"dns": [FQDNS["pattern"]]})]}))
    c.rule("dns/no-ports", _egress({"toEndpoints": [CACHE], "toPorts": [{"rules": {"dns": [FQDNS["pattern"]]}}]}))
    c.rule("dns/port-0", dns([FQDNS["pattern"]], port="0"))
    c.rule("dns/empty-list", dns([]))
    c.rule("dns/two-ports", dns([FQDNS["pattern"]], extra={"port": "5353", "protocol": "UDP"}))
    c.rule("dns/toFQDNs-with-dns", _egress({"toFQDNs": [FQDNS["pattern"]], "toPorts": [
        _ports({"port": "53", "protocol": "UDP"}, rules={"dns": [FQDNS["pattern"]]})]}))

    def l7(rules, proto="TCP"):
        return _egress({"toEndpoints": [CACHE], "toPorts": [_ports({"port": "9092", "protocol": proto}, rules=rules)]})

    c.rule("kafka/topic", l7({"kafka": [{"topic": "orders"}]}))
    c.rule("kafka/role-produce", l7({"kafka": [{"role": "produce", "topic": "orders"}]}))
    c.rule("kafka/role-bad", l7({"kafka": [{"role": "write", "topic": "orders"}]}))
    c.rule("kafka/role-and-apikey", l7({"kafka": [{"role": "produce", "apiKey": "produce"}]}))
    c.rule("kafka/apikey", l7({"kafka": [{"apiKey": "produce"}]}))
    c.rule("kafka/apikey-bad", l7({"kafka": [{"apiKey": "write"}]}))
    c.rule("kafka/topic-bad", l7({"kafka": [{"topic": "orders/eu"}]}))
    c.rule("kafka/topic-long", l7({"kafka": [{"topic": "t" * 256}]}))
    c.rule("kafka/empty", l7({"kafka": [{}]}))
    c.rule("kafka/udp", l7({"kafka": [{"topic": "orders"}]}, proto="UDP"))
    c.rule("l7proto/l7", l7({"l7proto": "envoy.filters.network.x", "l7": [{"action": "deny"}]}))
    c.rule("l7proto/only", l7({"l7proto": "envoy.filters.network.x"}))
    c.rule("l7proto/l7-without-proto", l7({"l7": [{"action": "deny"}]}))
    c.rule("l7proto/l7-number-value", l7({"l7proto": "x", "l7": [{"action": 1}]}))
    c.rule("l7/http-and-kafka", l7({"http": [{"path": "/"}], "kafka": [{"topic": "orders"}]}))
    c.rule("l7/http-and-dns", l7({"http": [{"path": "/"}], "dns": [{"matchPattern": "*"}]}))
    c.rule("l7/http-and-l7proto", l7({"http": [{"path": "/"}], "l7proto": "x"}))
    c.rule("l7/unknown", l7({"grpc": [{}]}))
    c.rule("l7/two-port-rules-mixed", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "80", "protocol": "TCP"}, rules={"http": [{}]}),
        _ports({"port": "53", "protocol": "UDP"}, rules={"dns": [{"matchPattern": "*"}]})]}))
    c.rule("tls/serverNames", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "443", "protocol": "TCP"}, serverNames=["example.com"])]}))
    c.rule("tls/serverNames-empty", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "443", "protocol": "TCP"}, serverNames=[""])]}))
    c.rule("tls/serverNames-with-l7", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "443", "protocol": "TCP"}, serverNames=["example.com"], rules={"http": [{}]})]}))
    c.rule("tls/serverNames-l7-terminating", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "443", "protocol": "TCP"}, serverNames=["example.com"], rules={"http": [{}]},
               terminatingTLS={"secret": {"name": "tls"}})]}))
    c.rule("tls/originating", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "443", "protocol": "TCP"}, originatingTLS={"secret": {"name": "ca"}})]}))
    c.rule("listener/egress", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "80", "protocol": "TCP"},
               listener={"envoyConfig": {"kind": "CiliumEnvoyConfig", "name": "x"}, "name": "l"})]}))
    c.rule("listener/ingress", _ingress({"fromEndpoints": [CACHE], "toPorts": [
        _ports({"port": "80", "protocol": "TCP"}, listener={"envoyConfig": {"name": "x"}, "name": "l"})]}))
    c.rule("listener/with-l7", _egress({"toEndpoints": [CACHE], "toPorts": [
        _ports({"port": "80", "protocol": "TCP"}, listener={"envoyConfig": {"name": "x"}, "name": "l"},
               rules={"http": [{}]})]}))


def _icmp_cases(c):
    for name, fields in sorted(ICMPS.items()):
        c.rule("icmp/ingress/%s" % name, _ingress({"fromEndpoints": [CACHE], "icmps": [{"fields": fields}]}))
    c.rule("icmp/egress/type-8", _egress({"toEndpoints": [CACHE], "icmps": [{"fields": [{"type": 8}]}]}))
    c.rule("icmp/with-ports", _ingress({"icmps": [{"fields": [{"type": 8}]}],
                                        "toPorts": [_ports({"port": "80"})]}))
    c.rule("icmp/flag-off", _ingress({"icmps": [{"fields": [{"type": 8}]}]}), flags={"icmp_rules": False})
    c.rule("icmp/empty-fields", _ingress({"icmps": [{"fields": []}]}))
    c.rule("icmp/deny", {"endpointSelector": WEB, "ingressDeny": [{"icmps": [{"fields": [{"type": 8}]}]}]})
    c.rule("icmp/type-float", _ingress({"icmps": [{"fields": [{"type": 8.5}]}]}))
    c.rule("icmp/type-bool", _ingress({"icmps": [{"fields": [{"type": True}]}]}))


def _auth_cases(c):
    for mode in ("required", "disabled", "always-fail", "test-always-fail", "mutual", ""):
        c.rule("auth/ingress/%s" % (mode or "empty"), _ingress({"fromEndpoints": [CACHE],
                                                                "authentication": {"mode": mode}}))
    c.rule("auth/egress/required", _egress({"toEndpoints": [CACHE], "authentication": {"mode": "required"}}))
    c.rule("auth/no-peer", _ingress({"authentication": {"mode": "required"}}))


# -- policies the project's tests and docs already use ---------------------------------------------

_SCAN = ("tests", "docs", "roles", "playbooks", "README.md", "plugins/modules")
_SKIP = ("tests/fixtures", "tests/output", "tests/lab/policy_rules.py")


def _looks_like_rules(value):
    if isinstance(value, dict):
        value = [value]
    return (isinstance(value, list) and value and all(isinstance(r, dict) for r in value)
            and all(("endpointSelector" in r or "nodeSelector" in r) and
                    any(k in r for k in ("ingress", "egress", "ingressDeny", "egressDeny")) for r in value))


def _walk_values(value, found):
    if _looks_like_rules(value):
        found.append(value if isinstance(value, list) else [value])
        return
    if isinstance(value, dict):
        for item in value.values():
            _walk_values(item, found)
    elif isinstance(value, list):
        for item in value:
            _walk_values(item, found)


def project_policies():
    """Rule lists found in the project's tests, docs, roles and playbooks (Python literals, YAML
    documents, fenced json/yaml blocks in Markdown), each with the file it came from."""
    import yaml  # only the recording host needs PyYAML

    out = []
    for top in _SCAN:
        path = os.path.join(ROOT, top)
        files = [path] if os.path.isfile(path) else [
            os.path.join(d, f) for d, unused, fs in os.walk(path) for f in fs]
        for name in sorted(files):
            rel = os.path.relpath(name, ROOT)
            if rel.startswith(_SKIP) or "/__pycache__/" in rel:
                continue
            found = []
            try:
                with open(name, encoding="utf-8") as handle:
                    text = handle.read()
            except (UnicodeDecodeError, OSError):
                continue
            if "endpointSelector" not in text and "nodeSelector" not in text:
                continue
            if name.endswith(".py"):
                try:
                    tree = ast.parse(text)
                except SyntaxError:
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Dict, ast.List)):
                        try:
                            _walk_values(ast.literal_eval(node), found)
                        except (ValueError, TypeError, SyntaxError, RecursionError):
                            pass
            elif name.endswith((".yml", ".yaml")):
                try:
                    for doc in yaml.safe_load_all(text):
                        _walk_values(doc, found)
                except yaml.YAMLError:
                    pass
            elif name.endswith(".md"):
                blocks = text.split("```")
                for block in blocks[1::2]:
                    body = block.split("\n", 1)[1] if "\n" in block else ""
                    try:
                        _walk_values(yaml.safe_load(body), found)
                    except yaml.YAMLError:
                        pass
            for rules in found:
                out.append((rel, rules))
    # the same list found twice (a literal nested in a bigger literal) counts once
    seen, unique = set(), []
    for rel, rules in out:
        key = json.dumps(rules, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            unique.append((rel, rules))
    return unique


def _project_cases(c):
    counts = {}
    for rel, rules in project_policies():
        counts[rel] = counts.get(rel, 0) + 1
        try:
            body = json.dumps(rules)
        except (TypeError, ValueError):
            continue
        c.add("project/%s#%d" % (rel, counts[rel]), body, raw=True)


# -- static files ----------------------------------------------------------------------------------

def _document(name, spec, kind="CiliumClusterwideNetworkPolicy", key="spec", extra_meta=None):
    meta = {"name": name}
    meta.update(extra_meta or {})
    return json.dumps({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, key: spec})


def _static_cases(c, rest_cases):
    """Static policy files: every accepted-looking REST rule of the corpus as a clusterwide
    document (what the agent makes of it, selection answers included), the static-only failure
    classes, and the files the collection renders."""
    for case in rest_cases:
        if not case["id"].startswith(("selector/", "rule/", "combine/", "project/", "deny/", "icmp/", "body/")):
            continue
        try:
            rules = json.loads(case["input"])
        except ValueError:
            continue
        if not isinstance(rules, list) or len(rules) != 1:
            continue
        c.add("static/" + case["id"], _document("corpus", rules[0]), kind="static", raw=True,
              flags=case.get("flags"))
    c.add("static/doc/specs", _document("two", [BASE, _with(["endpointSelector"], CACHE)], key="specs"),
          kind="static", raw=True)
    c.add("static/doc/namespaced", _document("ns", BASE, kind="CiliumNetworkPolicy",
                                             extra_meta={"namespace": "default"}), kind="static", raw=True)
    c.add("static/doc/cnp-no-namespace", _document("cnp", BASE, kind="CiliumNetworkPolicy"), kind="static", raw=True)
    c.add("static/doc/no-spec", json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                                            "metadata": {"name": "x"}}), kind="static", raw=True)
    c.add("static/doc/spec-and-specs", json.dumps({"apiVersion": "cilium.io/v2",
                                                   "kind": "CiliumClusterwideNetworkPolicy",
                                                   "metadata": {"name": "x"}, "spec": BASE, "specs": [BASE]}),
          kind="static", raw=True)
    c.add("static/doc/null-spec", _document("x", None), kind="static", raw=True)
    c.add("static/doc/specs-null-rule", _document("x", [None], key="specs"), kind="static", raw=True)
    c.add("static/doc/not-yaml", "kind: [", kind="static", raw=True)
    c.add("static/doc/yaml-tab", "kind:\tx\n\tspec: {}", kind="static", raw=True)
    c.add("static/doc/empty", "", kind="static", raw=True)
    c.add("static/doc/yaml-port-number",
          "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: x\nspec:\n"
          "  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: 80\n", kind="static", raw=True)
    c.add("static/doc/name-missing", json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                                                 "spec": BASE}), kind="static", raw=True)
    c.add("static/doc/peer-names-namespace",
          _document("x", _with(["ingress", 0, "fromEndpoints"], [
              {"matchLabels": {"netreap:nomad.job_id": "cache", "k8s:io.kubernetes.pod.namespace": "default"}}])),
          kind="static", raw=True)
    c.add("static/doc/peer-doesnotexist",
          _document("x", _with(["ingress", 0, "fromEndpoints"], [
              {"matchLabels": {"netreap:nomad.job_id": "cache"},
               "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "DoesNotExist"},
                                    {"key": "k8s:io.cilium.k8s.policy.cluster", "operator": "DoesNotExist"}]}])),
          kind="static", raw=True)
    c.add("static/doc/peer-entities", _document("x", _ingress({"fromEntities": ["cluster"]})), kind="static", raw=True)
    for case_id, content, rule in rendered_files():
        # The published rule as the agent reads it over REST (selectors as written) and the file
        # the collection renders for it: both selection answers are recorded, so a test can check
        # that the file selects what the rule meant.
        c.add("published/" + case_id.split("/", 1)[1], [rule])
        c.add(case_id, content, kind="static", raw=True)
        # and with --policy-default-local-cluster set both ways (1.18 default off, 1.19 on)
        for value in (True, False):
            c.add("%s@default-local-cluster=%s" % (case_id, str(value).lower()), content, kind="static", raw=True,
                  flags={"default_local_cluster": value})


def rendered_files():
    """The static files the collection renders for the project's policies and the corpus' base rules."""
    import importlib.util
    import sys

    # Load the product modules straight from this checkout, under their collection names (they
    # import one another and nothing else from the collection).
    mods = {}
    for part in ("decode", "validate", "render", "plan"):
        name = "ansible_collections.netreap.cilium.plugins.module_utils._policy_" + part
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(ROOT, "plugins", "module_utils", "_policy_%s.py" % part))
        mods[part] = importlib.util.module_from_spec(spec)
        sys.modules[name] = mods[part]
        spec.loader.exec_module(mods[part])
    sources = [("base", [dict(BASE, labels=["unspec:name=web-from-cache"])]),
               ("egress", [{"endpointSelector": CACHE, "egress": [{"toEndpoints": [WEB]}],
                            "labels": ["unspec:name=cache-to-web"]}])]
    sources += list(project_policies())
    out, seen = [], set()
    for origin, rules in sources:
        try:
            desired = mods["decode"].normalize_rules(rules)
            # only what the collection would write: rules valid for the releases with a static directory
            targets = [mods["validate"].ValidationTarget(m, True, False, True) for m in (16, 17, 18, 19)]
            mods["validate"].validate_rules(desired, targets)
            plan = mods["plan"].plan_static(desired, {})
        except Exception:  # noqa: BLE001 - rules the collection refuses are not rendered
            continue
        names = mods["render"].static_file_names(desired)
        for rule, name in zip(desired, names):
            content = plan["write"].get(name)
            if content is None or content in seen:
                continue
            seen.add(content)
            out.append(("rendered/%s/%d/%s" % (origin, len(out), name), content, rule))
    return out


def corpus():
    c = _Corpus()
    _body_cases(c)
    _rule_level_cases(c)
    _selector_cases(c)
    _l3_cases(c)
    _combination_cases(c)
    _port_cases(c)
    _l7_cases(c)
    _icmp_cases(c)
    _auth_cases(c)
    _project_cases(c)
    rest = list(c.cases)
    _static_cases(c, rest)
    return c.cases


if __name__ == "__main__":
    cases = corpus()
    kinds = {}
    for case in cases:
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
    print(json.dumps(kinds))
