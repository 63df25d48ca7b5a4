# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): Cilium policy rules - decode, label, identify.

Pure code (no I/O) behind the ``cilium_policy`` module:

* ``normalize_rules``: decode rules the way the agent's Go JSON decoder would (field names match
  case-insensitively, ``null`` means absent, type errors are errors), but refuse what the agent
  silently ignores (unknown or misspelt fields, ``null`` selectors that would select every
  endpoint) and return them in one canonical form, so "unchanged" means unchanged.
* Ownership and revision labels, the policy revision, per-rule digests and rule diffs.
* Supported Cilium releases and their parsing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter


# -- ownership -------------------------------------------------------------------------------
# Every rule this collection puts into an agent over REST carries these labels (source
# ``netreap``, the label source Netreap already uses for endpoint labels).
OWNER_SOURCE = "netreap"
OWNER_KEY = "io.netreap.managed-by"
OWNER_VALUE = "netreap.cilium"
REVISION_KEY = "io.netreap.policy-revision"
DIGEST_KEY = "io.netreap.rule-digest"
OWNER_LABEL = "%s:%s=%s" % (OWNER_SOURCE, OWNER_KEY, OWNER_VALUE)
OUR_LABEL_KEYS = (OWNER_KEY, REVISION_KEY, DIGEST_KEY)

DEFAULT_CONSUL_KEY = "netreap.io/policy"
# Consul's default limits.kv_max_value_size: a bigger value is refused with HTTP 413.
CONSUL_MAX_VALUE_SIZE = 524288

# Static policy files (--static-cnp-path): ``netreap-<slug>.yaml``, first line STATIC_MARKER.
STATIC_PREFIX = "netreap-"
STATIC_SUFFIX = ".yaml"
STATIC_MARKER = "# Managed by netreap.cilium (cilium_policy); edits are overwritten."
STATIC_KIND = "CiliumClusterwideNetworkPolicy"
STATIC_API_VERSION = "cilium.io/v2"
# The agent labels every rule it read from a file with these (and drops the file's labels).
DIRECTORY_SOURCE = "directory"
DIRECTORY_FILE_KEY = "filename"

SUPPORTED_MINORS = tuple(range(13, 20))  # Cilium 1.13 .. 1.19
MAX_PORTS = 40
MAX_ICMP_FIELDS = 40


class PolicyError(ValueError):
    """What the plan refuses: ``msg`` for the user, ``extra`` result fields (the run ends with them)."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


class PolicyInputError(ValueError):
    """Rules that cannot be read at all (not JSON, not a list, a JSON type error)."""


class PolicyValidationError(ValueError):
    """A rule the agent (or our stricter checks) would refuse."""

    def __init__(self, message, index=None, name=None, field=None, versions=None):
        self.message = message
        self.index = index
        self.name = name
        self.field = field
        self.versions = list(versions or [])
        super().__init__(self.describe())

    def describe(self):
        where = "rules[%s]" % self.index if self.index is not None else "policy"
        if self.name:
            where += " (name=%s)" % self.name
        if self.field:
            where += " %s" % self.field
        text = "invalid policy: %s: %s" % (where, self.message)
        if self.versions:
            text += " (Cilium %s)" % ", ".join(format_version(m) for m in self.versions)
        return text


def format_version(minor, patch=None):
    return "1.%d" % minor if patch is None else "1.%d.%d" % (minor, patch)


def parse_release(text):
    """``1.16`` or ``1.16.17`` (optionally ``v``-prefixed, optionally with a pre-release or
    build suffix such as ``-rc.1`` or ``-dev``) -> (16, 17) or (16, None); ValueError otherwise.

    ``None`` as the patch means "the latest behaviour of that minor"."""
    match = re.match(r"^v?1\.(\d+)(?:\.(\d+))?(?:[-+][0-9A-Za-z.+-]*)?$", str(text).strip())
    if not match or int(match.group(1)) not in SUPPORTED_MINORS:
        raise ValueError("unsupported Cilium version %r (supported: %s; a patch version such as 1.16.17 "
                         "is also accepted)" % (text, ", ".join(format_version(m) for m in SUPPORTED_MINORS)))
    return int(match.group(1)), (int(match.group(2)) if match.group(2) is not None else None)


def parse_version(text):
    """``1.16`` or ``1.16.5`` (optionally ``v``-prefixed) -> minor 16; ValueError otherwise."""
    return parse_release(text)[0]


def at_least(minor, patch, want_minor, want_patch):
    """Whether release ``1.minor.patch`` (patch None: the latest of that minor) is at least
    ``1.want_minor.want_patch``."""
    if minor != want_minor:
        return minor > want_minor
    return patch is None or patch >= want_patch


# ============================================================================================
# Decoding: what the agent's JSON decoder reads, in one canonical form
# ============================================================================================

# Field tables in the agent's (Go struct) order.  A type is a scalar name, a struct name
# (capitalised) or a one-element list for "list of".  ``object`` is a JSON object kept as is
# (fields we pass through without a schema: TLS contexts, listeners, groups, services, ...).
_FIELDS = {
    "Rule": (("endpointSelector", "selector"), ("nodeSelector", "selector"),
             ("ingress", ["IngressRule"]), ("ingressDeny", ["IngressDenyRule"]),
             ("egress", ["EgressRule"]), ("egressDeny", ["EgressDenyRule"]),
             ("labels", ["label"]), ("enableDefaultDeny", "DefaultDenyConfig"),
             ("description", "string"), ("log", "LogConfig")),
    "IngressRule": (("fromEndpoints", ["selector"]), ("fromRequires", ["selector"]),
                    ("fromCIDR", ["string"]), ("fromCIDRSet", ["CIDRRule"]),
                    ("fromEntities", ["string"]), ("fromGroups", ["object"]),
                    ("fromNodes", ["selector"]), ("toPorts", ["PortRule"]),
                    ("icmps", ["ICMPRule"]), ("authentication", "Authentication")),
    "IngressDenyRule": (("fromEndpoints", ["selector"]), ("fromRequires", ["selector"]),
                        ("fromCIDR", ["string"]), ("fromCIDRSet", ["CIDRRule"]),
                        ("fromEntities", ["string"]), ("fromGroups", ["object"]),
                        ("fromNodes", ["selector"]), ("toPorts", ["PortDenyRule"]),
                        ("icmps", ["ICMPRule"])),
    "EgressRule": (("toEndpoints", ["selector"]), ("toRequires", ["selector"]),
                   ("toCIDR", ["string"]), ("toCIDRSet", ["CIDRRule"]),
                   ("toEntities", ["string"]), ("toServices", ["object"]),
                   ("toGroups", ["object"]), ("toNodes", ["selector"]),
                   ("toPorts", ["PortRule"]), ("toFQDNs", ["FQDNSelector"]),
                   ("icmps", ["ICMPRule"]), ("authentication", "Authentication")),
    "EgressDenyRule": (("toEndpoints", ["selector"]), ("toRequires", ["selector"]),
                       ("toCIDR", ["string"]), ("toCIDRSet", ["CIDRRule"]),
                       ("toEntities", ["string"]), ("toServices", ["object"]),
                       ("toGroups", ["object"]), ("toNodes", ["selector"]),
                       ("toPorts", ["PortDenyRule"]), ("icmps", ["ICMPRule"])),
    "CIDRRule": (("cidr", "string"), ("cidrGroupRef", "string"),
                 ("cidrGroupSelector", "object"), ("except", ["string"])),
    "PortRule": (("ports", ["PortProtocol"]), ("terminatingTLS", "object"),
                 ("originatingTLS", "object"), ("serverNames", ["string"]),
                 ("listener", "object"), ("rules", "L7Rules")),
    "PortDenyRule": (("ports", ["PortProtocol"]),),
    "PortProtocol": (("port", "port"), ("endPort", "int32"), ("protocol", "string")),
    "L7Rules": (("http", ["PortRuleHTTP"]), ("kafka", ["object"]), ("dns", ["FQDNSelector"]),
                ("l7proto", "string"), ("l7", ["strmap"])),
    "PortRuleHTTP": (("path", "string"), ("method", "string"), ("host", "string"),
                     ("headers", ["string"]), ("headerMatches", ["HeaderMatch"])),
    "HeaderMatch": (("mismatch", "string"), ("name", "string"), ("secret", "object"),
                    ("value", "string")),
    "FQDNSelector": (("matchName", "string"), ("matchPattern", "string")),
    "ICMPRule": (("fields", ["ICMPField"]),),
    "ICMPField": (("family", "string"), ("type", "intstr")),
    "DefaultDenyConfig": (("ingress", "bool"), ("egress", "bool")),
    "LogConfig": (("value", "string"),),
    "Authentication": (("mode", "string"),),
}

# First Cilium minor whose agent knows a field; older agents drop it silently (e.g. fromNodes
# up to 1.15: the item would then allow more than written).
# docs/upstream.md#rule-validation-per-release-recorded
FIELDS_SINCE = {
    ("Rule", "enableDefaultDeny"): 16, ("Rule", "log"): 18,
    ("IngressRule", "fromNodes"): 16, ("IngressDenyRule", "fromNodes"): 16,
    ("EgressRule", "toNodes"): 16, ("EgressDenyRule", "toNodes"): 16,
    ("IngressRule", "authentication"): 14, ("EgressRule", "authentication"): 14,
    ("CIDRRule", "cidrGroupRef"): 14, ("CIDRRule", "cidrGroupSelector"): 17,
}

# ICMP type names the agent knows, per family (``pkg/policy/api/icmp.go``, 1.16 to 1.19).
_ICMPV4_TYPES = frozenset((
    "EchoReply", "DestinationUnreachable", "Redirect", "Echo", "EchoRequest", "RouterAdvertisement",
    "RouterSelection", "TimeExceeded", "ParameterProblem", "Timestamp", "TimestampReply", "Photuris",
    "ExtendedEchoRequest", "ExtendedEchoReply"))
_ICMPV6_TYPES = frozenset((
    "DestinationUnreachable", "PacketTooBig", "TimeExceeded", "ParameterProblem", "EchoRequest", "EchoReply",
    "MulticastListenerQuery", "MulticastListenerReport", "MulticastListenerDone", "RouterSolicitation",
    "RouterAdvertisement", "NeighborSolicitation", "NeighborAdvertisement", "RedirectMessage",
    "RouterRenumbering", "ICMPNodeInformationQuery", "ICMPNodeInformationResponse",
    "InverseNeighborDiscoverySolicitation", "InverseNeighborDiscoveryAdvertisement",
    "HomeAgentAddressDiscoveryRequest", "HomeAgentAddressDiscoveryReply", "MobilePrefixSolicitation",
    "MobilePrefixAdvertisement", "DuplicateAddressRequestCodeSuffix", "DuplicateAddressConfirmationCodeSuffix",
    "ExtendedEchoRequest", "ExtendedEchoReply"))

# Last Cilium minor whose agent knows a field: 1.19 turned fromRequires/toRequires into a list
# that must stay empty; a selector there fails the decode of a static file, and the agent exits
# (docs/upstream.md#rule-validation-per-release-recorded).
FIELDS_UNTIL = {
    ("IngressRule", "fromRequires"): 18, ("IngressDenyRule", "fromRequires"): 18,
    ("EgressRule", "toRequires"): 18, ("EgressDenyRule", "toRequires"): 18,
}

_KIND_OF_JSON = ((bool, "bool"), (int, "number"), (float, "number"), (str, "string"),
                 (list, "array"), (dict, "object"))


def _json_kind(value):
    if value is None:
        return "null"
    for pytype, name in _KIND_OF_JSON:
        if isinstance(value, pytype):
            return name
    return type(value).__name__


class _Decoder:
    """Go ``encoding/json`` into ``api.Rules`` - strict where Go is silently lenient."""

    def __init__(self):
        self.path = []

    def where(self, extra=None):
        parts = self.path + ([extra] if extra else [])
        text = ""
        for part in parts:
            text += part if part.startswith("[") or not text else "." + part
        return text

    def fail(self, message, extra=None):
        raise PolicyInputError("%s: %s" % (self.where(extra) or "rules", message))

    def type_error(self, value, expected, extra=None):
        shown = json.dumps(value, default=str)[:80]
        self.fail("expected %s, got %s %s" % (expected, _json_kind(value), shown), extra)

    def rules(self, value):
        if value is None:
            raise PolicyInputError("rules: expected a list of rules, got null")
        if isinstance(value, dict):
            value = [value]  # one rule object: Netreap's key always held a list, be kind
        if not isinstance(value, list):
            raise PolicyInputError("rules: expected a list of rules, got %s" % _json_kind(value))
        out = []
        for index, item in enumerate(value):
            self.path = ["rules[%d]" % index]
            if not isinstance(item, dict):
                self.type_error(item, "a rule object")
            out.append(self.struct("Rule", item))
        self.path = []
        return out

    def struct(self, name, obj):
        fields = _FIELDS[name]
        by_lower = {}
        for key, ftype in fields:
            by_lower[key.lower()] = (key, ftype)
        out = {}
        seen = {}
        for key in obj:
            match = by_lower.get(key.lower()) if isinstance(key, str) else None
            if match is None:
                known = ", ".join(f[0] for f in fields)
                self.fail("unknown field %s (the agent would silently ignore it; known fields: %s)"
                          % (json.dumps(key), known), str(key))
            canonical, ftype = match
            if canonical in seen:
                twice = (json.dumps(seen[canonical]), json.dumps(key))
                self.fail("field given twice (as %s and %s)" % twice, canonical)
            seen[canonical] = key
            value = obj[key]
            if value is None:
                if ftype == "selector":
                    self.fail("null selector: the agent would select every endpoint; write {} "
                              "if that is what you mean", canonical)
                continue  # Go: null leaves the field unset
            self.path.append(canonical)
            decoded = self.value(ftype, value)
            self.path.pop()
            out[canonical] = decoded
        if name == "ICMPField":
            self.icmp_field(out)
        if name == "Rule":
            out["labels"] = [lbl for lbl in out.get("labels", []) if lbl["key"] not in OUR_LABEL_KEYS]
            if not out["labels"]:
                del out["labels"]
        return {key: out[key] for key, unused in fields if key in out}

    def icmp_field(self, field):
        """The agent's ``ICMPField`` decoding: a type is required (the agent crashes without one)
        and a type name must exist for the family (docs/upstream.md#rule-validation-per-release-recorded)."""
        if field.get("type") is None:
            self.fail("an ICMP field needs a type (the agent crashes on a field without one)")
        kind = field["type"]
        if isinstance(kind, str) and kind != "0" and not re.fullmatch(r"[+-]?[0-9]+", kind):
            names = _ICMPV6_TYPES if field.get("family") == "IPv6" else _ICMPV4_TYPES
            if kind not in names:
                self.fail("ICMP type %s not found in %s" % (kind, field.get("family", "")), "type")

    def value(self, ftype, value):
        if isinstance(ftype, list):
            if not isinstance(value, list):
                self.type_error(value, "a list")
            items = []
            for index, item in enumerate(value):
                self.path.append("[%d]" % index)
                if item is None:
                    self.fail("null list element (the agent would read it as an empty %s)"
                              % ("selector, selecting every endpoint" if ftype[0] == "selector"
                                 else "item"))
                items.append(self.value(ftype[0], item))
                self.path.pop()
            return items
        if ftype[0].isupper():
            if not isinstance(value, dict):
                self.type_error(value, "an object")
            return self.struct(ftype, value)
        return getattr(self, "scalar_" + ftype)(value)

    def scalar_string(self, value):
        if not isinstance(value, str):
            self.type_error(value, "a string")
        return value

    def scalar_port(self, value):
        # YAML turns ``port: 443`` into a number; the agent wants a string (else HTTP 400).
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.scalar_string(value)

    def scalar_int32(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            self.type_error(value, "an integer")
        if not -2 ** 31 <= value < 2 ** 31:
            self.fail("%d does not fit into int32" % value)
        return value

    def scalar_bool(self, value):
        if not isinstance(value, bool):
            self.type_error(value, "true or false")
        return value

    def scalar_intstr(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.type_error(value, "an integer or a string")
        return value

    def scalar_object(self, value):
        if not isinstance(value, dict):
            self.type_error(value, "an object")
        return value

    def scalar_strmap(self, value, numbers=False):
        """An object of strings; with ``numbers`` (matchLabels) a YAML number becomes its string,
        which is what the collection then writes (the agent refuses a number there)."""
        if not isinstance(value, dict):
            self.type_error(value, "an object of strings")
        out = {}
        for key in sorted(value, key=str):  # YAML may give non-string keys (``1: x``)
            item = value[key]
            if numbers and isinstance(item, int) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str):
                self.type_error(item, "a string", str(key))
            out[str(key)] = item
        return out

    def scalar_selector(self, value):
        if not isinstance(value, dict):
            self.type_error(value, "a label selector object")
        out = {}
        for key, item in value.items():
            lower = key.lower() if isinstance(key, str) else None
            if lower not in ("matchlabels", "matchexpressions"):
                self.fail("unknown selector field %s (the agent would ignore it and select every "
                          "endpoint; use matchLabels or matchExpressions)" % json.dumps(key), str(key))
            if item is None:
                continue
            if lower == "matchlabels":
                self.path.append("matchLabels")
                out["matchLabels"] = self.scalar_strmap(item, numbers=True)
                self.path.pop()
            else:
                self.path.append("matchExpressions")
                if not isinstance(item, list):
                    self.type_error(item, "a list")
                reqs = []
                for index, req in enumerate(item):
                    self.path.append("[%d]" % index)
                    reqs.append(self.requirement(req))
                    self.path.pop()
                self.path.pop()
                out["matchExpressions"] = reqs
        return {k: out[k] for k in ("matchLabels", "matchExpressions") if k in out}

    def requirement(self, req):
        if not isinstance(req, dict):
            self.type_error(req, "an object with key, operator and values")
        out = {"key": "", "operator": ""}
        for key, item in req.items():
            lower = key.lower() if isinstance(key, str) else None
            if lower not in ("key", "operator", "values"):
                self.fail("unknown field %s (known: key, operator, values)" % json.dumps(key), str(key))
            if item is None:
                continue
            if lower == "values":
                if not isinstance(item, list):
                    self.type_error(item, "a list of strings", "values")
                values = []
                for value in item:
                    if isinstance(value, int) and not isinstance(value, bool):
                        value = str(value)
                    if not isinstance(value, str):
                        self.type_error(value, "a string", "values")
                    values.append(value)
                out["values"] = values
            else:
                if not isinstance(item, str):
                    self.type_error(item, "a string", lower)
                out[lower] = item
        return out

    def scalar_label(self, value):
        """``labels.Label``: ``{"key", "value", "source"}`` or the short ``source:key=value``."""
        if isinstance(value, str):
            if value == "":
                self.fail("empty label")
            source, key, val = parse_label(value)
        elif isinstance(value, dict):
            parts = {"key": "", "value": "", "source": ""}
            for key, item in value.items():
                lower = key.lower() if isinstance(key, str) else None
                if lower not in parts:
                    self.fail("unknown label field %s (known: key, value, source)" % json.dumps(key))
                if item is not None and not isinstance(item, str):
                    self.type_error(item, "a string", lower)
                parts[lower] = item or ""
            if not parts["key"]:
                self.fail("label %s has no key" % json.dumps(value, sort_keys=True))
            source, key, val = parts["source"], parts["key"], parts["value"]
        else:
            self.type_error(value, "a label (string or object)")
        return label_object(source, key, val)


def normalize_rules(value):
    """Rules (a list, one rule object, or JSON text of either) -> canonical list of rules.

    Raises PolicyInputError.  Our own ownership labels are dropped (they are added when the
    rules are applied), so rules copied from an agent's ``GET /policy`` read back the same.
    """
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyInputError("rules are not UTF-8 text: %s" % exc)
    if isinstance(value, str):
        value = parse_rules_text(value)
    return _Decoder().rules(value)


def parse_rules_text(text, what="rules"):
    if not text.strip():
        raise PolicyInputError("%s: empty (expected a JSON list of rules)" % what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PolicyInputError("%s: not valid JSON: %s" % (what, exc))


# ============================================================================================
# Labels
# ============================================================================================

def parse_label(text, default_source="unspec"):
    """``labels.ParseLabel``: ``[source:]key[=value]``; ``$host`` means ``reserved:host``."""
    source, rest = "", text
    if text.startswith("$"):
        source, rest = "reserved", text[1:]
    elif ":" in text:
        source, rest = text.split(":", 1)
    key, sep, value = rest.partition("=")
    return source or default_source, key, value if sep else ""


def label_object(source, key, value):
    """A label in the agent's JSON form (``value``/``source`` left out when empty)."""
    out = {"key": key}
    if value:
        out["value"] = value
    if source:
        out["source"] = source
    return out


def label_triples(rule):
    """``(source, key, value)`` of every label of a rule, whichever form the labels are in.

    Also reads Cilium 1.19's ``PolicyEntry`` objects, whose field is ``Labels`` (docs/upstream.md
    "Cilium: policy")."""
    out = []
    labels = rule.get("labels") if "labels" in rule else rule.get("Labels")
    for label in labels or []:
        if isinstance(label, str):
            out.append(parse_label(label))
        elif isinstance(label, dict):
            out.append((label.get("source") or "", label.get("key") or "", label.get("value") or ""))
    return out


def label_value(rule, key, source=None):
    for lsource, lkey, lvalue in label_triples(rule):
        if lkey == key and (source is None or lsource == source):
            return lvalue
    return None


def is_owned_rule(rule):
    return label_value(rule, OWNER_KEY, OWNER_SOURCE) == OWNER_VALUE


def revision_label(revision):
    return "%s:%s=%s" % (OWNER_SOURCE, REVISION_KEY, revision)


def rule_name(rule):
    """The rule's ``name`` label (Netreap's and Cilium's docs' convention), else None."""
    for key in ("name", "io.cilium.k8s.policy.name"):
        for source, lkey, value in label_triples(rule):
            if lkey == key and source not in (OWNER_SOURCE, DIRECTORY_SOURCE) and value:
                return value
    return None


# ============================================================================================
# Identity of rules and policies
# ============================================================================================

def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def rule_digest(rule):
    """12 hex characters identifying a (user) rule's content."""
    return hashlib.sha256(canonical_json(rule).encode("utf-8")).hexdigest()[:12]


def policy_revision(rules):
    """16 hex characters identifying the whole rule list (order included)."""
    return hashlib.sha256(canonical_json(rules).encode("utf-8")).hexdigest()[:16]


def consul_value(rules):
    """The text published in Consul: a JSON array (Netreap's format), indented for humans."""
    return json.dumps(rules, indent=2, ensure_ascii=False) + "\n"


def rule_refs(rules):
    """``[(ref, digest)]``: ``ref`` is the name label, or ``#<position>`` for unnamed rules."""
    return [(rule_name(rule) or "#%d" % index, rule_digest(rule)) for index, rule in enumerate(rules)]


def diff_refs(old, new):
    """Added, removed and changed rules between two ``rule_refs`` lists.

    Named rules are matched by name (same name, other content = changed); unnamed rules by
    content, since their position says little about their identity.
    """
    def split(refs):
        named, unnamed = {}, Counter()
        for ref, digest in refs:
            if ref.startswith("#"):
                unnamed[digest] += 1
            else:
                named.setdefault(ref, []).append(digest)
        return named, unnamed

    old_named, old_unnamed = split(old)
    new_named, new_unnamed = split(new)
    added = [n for n in new_named if n not in old_named]
    removed = [n for n in old_named if n not in new_named]
    changed = [n for n in new_named if n in old_named and sorted(old_named[n]) != sorted(new_named[n])]
    refs_by_digest_new = {d: r for r, d in new if r.startswith("#")}
    refs_by_digest_old = {d: r for r, d in old if r.startswith("#")}
    for digest, count in (new_unnamed - old_unnamed).items():
        added.extend([refs_by_digest_new[digest]] * count)
    for digest, count in (old_unnamed - new_unnamed).items():
        removed.extend([refs_by_digest_old[digest]] * count)
    return {"added": added, "removed": removed, "changed": changed}


def labelled_for_agent(rules, revision):
    """Our rules as PUT to the agent: the user's labels plus owner, revision and digest."""
    out = []
    for rule in rules:
        rule = dict(rule)
        labels = list(rule.get("labels") or [])
        labels += [label_object(OWNER_SOURCE, OWNER_KEY, OWNER_VALUE),
                   label_object(OWNER_SOURCE, REVISION_KEY, revision),
                   label_object(OWNER_SOURCE, DIGEST_KEY, rule_digest(_strip_ours(rule)))]
        rule["labels"] = labels
        out.append(rule)
    return out


def _strip_ours(rule):
    rule = dict(rule)
    labels = [lbl for lbl in rule.get("labels") or [] if lbl.get("key") not in OUR_LABEL_KEYS]
    if labels:
        rule["labels"] = labels
    else:
        rule.pop("labels", None)
    return rule


def agent_rule_refs(agent_rules):
    """``rule_refs`` of the rules we own in an agent (from their digest labels)."""
    refs = []
    for index, rule in enumerate(r for r in agent_rules if is_owned_rule(r)):
        refs.append((rule_name(rule) or "#%d" % index, label_value(rule, DIGEST_KEY, OWNER_SOURCE) or ""))
    return refs
