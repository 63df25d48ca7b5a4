# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): Cilium policy rules - static policy files.

Pure code (no I/O). ``render_policy_file``: one CiliumClusterwideNetworkPolicy per file, as YAML
written without PyYAML (block style, every string double-quoted, ASCII only); the names and
headers of the files this collection owns.
"""

from __future__ import annotations

import json
import re

from ansible_collections.netreap.cilium.plugins.module_utils._policy_decode import (
    STATIC_API_VERSION,
    STATIC_KIND,
    STATIC_MARKER,
    STATIC_PREFIX,
    STATIC_SUFFIX,
    parse_label,
    rule_digest,
    rule_name,
)
from ansible_collections.netreap.cilium.plugins.module_utils._policy_validate import (
    dns1123_subdomain_errors,
)

# ============================================================================================
# Static policy files
# ============================================================================================

_STATIC_NAME_RE = re.compile(r"netreap-[a-z0-9]([-a-z0-9.]*[a-z0-9])?\.yaml")


def _slug(text):
    text = text.lower()
    text = re.sub(r"[^a-z0-9.-]+", "-", text)
    parts = [re.sub(r"-+", "-", p).strip("-") for p in text.split(".")]
    return ".".join(p for p in parts if p)


def static_file_names(rules):
    """One DNS-1123 file name per rule: ``netreap-<name label>.yaml``, else ``netreap-rule-<index>.yaml``."""
    names, used = [], set()
    limit = 253 - len(STATIC_PREFIX) - len(STATIC_SUFFIX) - 4
    for index, rule in enumerate(rules):
        stem = _slug(rule_name(rule) or "")[:limit].strip("-.") or "rule-%d" % index  # as in rules[index]
        candidate, counter = stem, 1
        while candidate in used:
            counter += 1
            candidate = "%s-%d" % (stem, counter)
        used.add(candidate)
        names.append(STATIC_PREFIX + candidate + STATIC_SUFFIX)
    return names


def is_static_file_name(name):
    return _STATIC_NAME_RE.fullmatch(name) is not None and not dns1123_subdomain_errors(name)


def is_owned_static_file(name, content):
    """Ours = our name pattern *and* our marker as the first line (a hand-written
    ``netreap-x.yaml`` is left alone)."""
    return is_static_file_name(name) and content is not None and content.startswith(STATIC_MARKER + "\n")


def static_header_ref(content):
    """The rule reference recorded in a file we wrote (second line), or None."""
    lines = (content or "").split("\n", 2)
    if len(lines) > 1 and lines[1].startswith("# rule: "):
        try:
            return json.loads(lines[1][len("# rule: "):].split("  digest: ")[0])
        except ValueError:
            return None
    return None


# Labels the agent adds to peer selectors of a policy file that does not name them (see
# docs/upstream.md "Cilium: policy", static files); Nomad endpoints carry neither.
NAMESPACE_LABEL_KEY = "io.kubernetes.pod.namespace"
CLUSTER_LABEL_KEY = "io.cilium.k8s.policy.cluster"
_SCOPE_KEYS = (NAMESPACE_LABEL_KEY, CLUSTER_LABEL_KEY)
_PEER_SELECTOR_FIELDS = (("ingress", "fromEndpoints"), ("ingress", "fromRequires"),
                         ("ingressDeny", "fromEndpoints"), ("ingressDeny", "fromRequires"),
                         ("egress", "toEndpoints"), ("egress", "toRequires"),
                         ("egressDeny", "toEndpoints"), ("egressDeny", "toRequires"))


def _selector_keys(selector):
    """``(source, key)`` of every key a selector names, read as the agent reads them (a key
    without a source means any source)."""
    keys = list(selector.get("matchLabels") or {})
    keys += [expr.get("key") for expr in selector.get("matchExpressions") or [] if isinstance(expr, dict)]
    return [parse_label(key, "any")[:2] for key in keys if isinstance(key, str)]


def _pin_unscoped(selector, skip_reserved):
    keys = _selector_keys(selector)
    if skip_reserved and any(source == "reserved" for source, unused in keys):
        return selector  # the agent leaves selectors of reserved identities alone
    missing = [key for key in _SCOPE_KEYS if not any(s in ("k8s", "any") and k == key for s, k in keys)]
    if not missing:
        return selector
    selector = dict(selector)
    selector["matchExpressions"] = list(selector.get("matchExpressions") or []) + [
        {"key": "k8s:" + key, "operator": "DoesNotExist"} for key in missing]
    return selector


def static_spec(rule):
    """The rule as written into a policy file: what the agent enforces after loading it is
    what was published.

    On load the agent adds ``k8s:io.kubernetes.pod.namespace Exists`` (and, with
    ``--policy-default-local-cluster``, ``k8s:io.cilium.k8s.policy.cluster=<cluster>``) to every
    ``fromEndpoints``/``toEndpoints``/``fromRequires``/``toRequires`` selector that does not
    name that key.  Nomad endpoints carry neither label, so such a peer would select nothing.
    Naming each key with ``DoesNotExist`` makes the agent leave the selector as it is, and
    changes nothing for endpoints without K8s labels.  The subject and every other peer kind
    are not rewritten by the agent and stay as published.
    """
    out = dict(rule)
    for section, field in _PEER_SELECTOR_FIELDS:
        items = out.get(section)
        if not isinstance(items, list):
            continue
        new_items = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get(field), list):
                item = dict(item)
                item[field] = [_pin_unscoped(sel, field.endswith("Endpoints")) if isinstance(sel, dict) else sel
                               for sel in item[field]]
            new_items.append(item)
        out[section] = new_items
    return out


def render_policy_file(rule, file_name, ref):
    """One clusterwide policy object (one rule) as YAML: clusterwide, because a namespaced
    CiliumNetworkPolicy gets a namespace selector that matches nothing outside K8s.  Its spec
    is ``static_spec(rule)``; the header records the published rule's digest."""
    stem = file_name[:-len(STATIC_SUFFIX)]
    document = {"apiVersion": STATIC_API_VERSION, "kind": STATIC_KIND,
                "metadata": {"name": stem}, "spec": static_spec(rule)}
    header = [STATIC_MARKER,
              "# rule: %s  digest: %s" % (json.dumps(ref), rule_digest(rule)),
              "# Published with netreap.cilium.cilium_policy; the agent loads it from --static-cnp-path."]
    return "\n".join(header) + "\n" + to_yaml(document)


# ============================================================================================
# YAML without PyYAML
# ============================================================================================

_PLAIN_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# YAML 1.1 reads these plain words as booleans/null: never leave them unquoted.
_YAML_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}


def yaml_scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    out = []
    for char in str(value):
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append("\\x%02x" % code)
        elif code <= 0xFFFF:
            out.append("\\u%04x" % code)
        else:
            out.append("\\U%08x" % code)
    return '"' + "".join(out) + '"'


def _yaml_key(key):
    key = str(key)
    if _PLAIN_KEY_RE.fullmatch(key) and key.lower() not in _YAML_WORDS:
        return key
    return yaml_scalar(key)


def _is_leaf(value):
    return not isinstance(value, (dict, list)) or not value


def _leaf(value):
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return yaml_scalar(value)


def _yaml_lines(value, indent):
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_leaf(item):
                lines.append("%s%s: %s" % (pad, _yaml_key(key), _leaf(item)))
            else:
                lines.append("%s%s:" % (pad, _yaml_key(key)))
                lines.extend(_yaml_lines(item, indent + 2))
    else:
        for item in value:
            if _is_leaf(item):
                lines.append("%s- %s" % (pad, _leaf(item)))
            else:
                nested = _yaml_lines(item, indent + 2)
                lines.append("%s- %s" % (pad, nested[0][indent + 2:]))
                lines.extend(nested[1:])
    return lines


def to_yaml(document):
    """Block-style YAML for JSON-like data: strings always double-quoted and ASCII-escaped, so
    nothing is read back as another type by YAML 1.1 (go-yaml) or 1.2 parsers."""
    if _is_leaf(document):
        return _leaf(document) + "\n"
    return "\n".join(_yaml_lines(document, 0)) + "\n"
