# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): Cilium policy rules - validate.

Pure code (no I/O). ``validate_rules``: the checks the agent runs in ``Rule.Sanitize``/``Validate``
(Cilium 1.13 to 1.19, written from Cilium's source, not from the lab's simulator), with the
agent's messages for its patch release, naming the rule and the field; held to Cilium's own
recorded verdicts by ``tests/fixtures/cilium`` (docs/upstream.md#rule-validation-per-release-recorded).
"""

from __future__ import annotations

import ipaddress
import json
import re

from ansible_collections.netreap.cilium.plugins.module_utils._policy_decode import (
    FIELDS_SINCE,
    FIELDS_UNTIL,
    MAX_ICMP_FIELDS,
    MAX_PORTS,
    PolicyValidationError,
    at_least,
    rule_name,
)

# ============================================================================================
# Validation (Rule.Sanitize / Rule.Validate, Cilium 1.13 .. 1.19)
# ============================================================================================

_ENTITIES = ("all", "world", "cluster", "host", "init", "ingress", "unmanaged", "remote-node",
             "health", "none", "kube-apiserver")
_ENTITIES_SINCE_15 = ("world-ipv4", "world-ipv6")
_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")  # SCTP is accepted by every supported version
_PROTOCOLS_SINCE_19 = ("TCP", "UDP", "SCTP", "VRRP", "IGMP", "ANY")

_INGRESS_PEERS = ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "fromNodes", "fromGroups")
_EGRESS_PEERS = ("toCIDR", "toCIDRSet", "toEndpoints", "toEntities", "toServices", "toFQDNs",
                 "toGroups", "toNodes")
_GO_NAMES = {"fromCIDR": "FromCIDR", "fromCIDRSet": "FromCIDRSet", "toCIDR": "ToCIDR",
             "toCIDRSet": "ToCIDRSet", "toFQDNs": "ToFQDNs"}

_NODE_SELECTOR_MSG = ('FromNodes/ToNodes rules can only be applied when the '
                      '"enable-node-selector-labels" flag is set')
_FQDN_NAME_RE = re.compile(r"[-a-zA-Z0-9_.]+")
_FQDN_PATTERN_RE = re.compile(r"[-a-zA-Z0-9_.*]+")

# apimachinery (k8s.io/apimachinery/pkg/util/validation) formats and messages
_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_ERR = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
              "an alphanumeric character")
_LVALUE_FMT = "(" + _QNAME_FMT + ")?"
_LVALUE_ERR = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
               "or '.', and must start and end with an alphanumeric character")
_DNS_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN_FMT = _DNS_LABEL_FMT + "(\\." + _DNS_LABEL_FMT + ")*"
_DNS_SUBDOMAIN_ERR = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                      "'-' or '.', and must start and end with an alphanumeric character")


def _go_q(text):
    """Go's ``%q`` for the strings that occur here (JSON escaping, non-ASCII kept)."""
    return json.dumps(text, ensure_ascii=False)


def _regex_error(msg, fmt, *examples):
    if not examples:
        return "%s (regex used for validation is '%s')" % (msg, fmt)
    # Built like apimachinery's RegexError, whose joins leave two spaces before "or".
    text = msg + " (e.g. "
    for index, example in enumerate(examples):
        if index > 0:
            text += " or "
        text += "'" + example + "', "
    return text + "regex used for validation is '" + fmt + "')"


def _max_len(length, unit):
    return "must be no more than %d %s" % (length, unit)


def dns1123_subdomain_errors(value, unit="characters"):
    errors = []
    if len(value) > 253:
        errors.append(_max_len(253, unit))
    if not re.fullmatch(_DNS_SUBDOMAIN_FMT, value):
        errors.append(_regex_error(_DNS_SUBDOMAIN_ERR, _DNS_SUBDOMAIN_FMT, "example.com"))
    return errors


def _qualified_name_errors(value, newer=False):
    """apimachinery's ``IsQualifiedName``; ``newer``: the wording of the apimachinery Cilium 1.19
    vendors ("a valid label key", lengths in bytes; docs/upstream.md#rule-validation-per-release-recorded)."""
    unit = "bytes" if newer else "characters"
    parts = value.split("/")
    if len(parts) > 2:
        head = "a valid label key " if newer else "a qualified name "
        return [head + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    errors = []
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend("prefix part " + m for m in dns1123_subdomain_errors(parts[0], unit))
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part " + _max_len(63, unit))
    if not re.fullmatch(_QNAME_FMT, name):
        errors.append("name part " + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errors


def _label_value_errors(value, newer=False):
    errors = []
    if len(value) > 63:
        errors.append(_max_len(63, "bytes" if newer else "characters"))
    if not re.fullmatch(_LVALUE_FMT, value):
        errors.append(_regex_error(_LVALUE_ERR, _LVALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


def _extended_key(key, default_source="any"):
    """``labels.GetExtendedKeyFrom``: ``source:key`` -> ``source.key``; no source -> ``any.key``
    (``cidrgroup.key`` in a cidrGroupSelector)."""
    source, rest = "", key
    if key.startswith("$"):
        source, rest = "reserved", key[1:]
    elif ":" in key:
        source, rest = key.split(":", 1)
    elif key.startswith("reserved."):
        source, rest = "reserved", key[len("reserved."):]
    return "%s.%s" % (source or default_source, rest.split("=", 1)[0])


def selector_error(selector, default_source="any", newer=False):
    """``metav1validation.ValidateLabelSelector`` on the extended keys, or None."""
    errors = []
    labels = selector.get("matchLabels") or {}
    for key in sorted(labels):  # Go iterates the map in random order; we sort
        extended = _extended_key(key, default_source)
        errors += ["matchLabels: Invalid value: %s: %s" % (_go_q(extended), m)
                   for m in _qualified_name_errors(extended, newer)]
        errors += ["matchLabels: Invalid value: %s: %s" % (_go_q(labels[key]), m)
                   for m in _label_value_errors(labels[key], newer)]
    for index, req in enumerate(selector.get("matchExpressions") or []):
        at = "matchExpressions[%d]" % index
        operator, values = req.get("operator", ""), req.get("values") or []
        if operator in ("In", "NotIn"):
            if not values:
                errors.append("%s.values: Required value: must be specified when `operator` is 'In' or "
                              "'NotIn'" % at)
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                errors.append("%s.values: Forbidden: may not be specified when `operator` is 'Exists' or "
                              "'DoesNotExist'" % at)
        else:
            errors.append("%s.operator: Invalid value: %s: not a valid selector operator" % (at, _go_q(operator)))
        extended = _extended_key(req.get("key", ""), default_source)
        errors += ["%s.key: Invalid value: %s: %s" % (at, _go_q(extended), m)
                   for m in _qualified_name_errors(extended, newer)]
        for vindex, value in enumerate(values):
            errors += ["%s.values[%d]: Invalid value: %s: %s" % (at, vindex, _go_q(value), m)
                       for m in _label_value_errors(value, newer)]
    if not errors:
        return None
    return errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"


# -- Go net/netip and strconv error texts ------------------------------------------------------

def _parse_addr_error(text):
    """``netip.ParseAddr(text)`` error text, or None when it parses."""
    def err(msg, at=None):
        out = "ParseAddr(%s): %s" % (_go_q(text), msg)
        return out + (" (at %s)" % _go_q(at) if at is not None else "")

    for char in text:
        if char == ".":
            break
        if char == ":":
            return _parse_ipv6_error(text, err)
        if char == "%":
            return err("missing IPv6 address")
    else:
        return err("unable to parse IP")
    return _parse_ipv4_error(text, 0, len(text), err)


def _parse_ipv6_error(text, err):
    """Go's ``netip`` IPv6 parser, for its error texts (None when ``text`` parses)."""
    rest, zone = text, None
    if "%" in text:
        rest, zone = text.split("%", 1)
        if zone == "":
            return err("zone must be a non-empty string")
    groups, ellipsis = 0, -1  # in bytes, as Go counts
    if rest.startswith("::"):
        ellipsis, rest = 0, rest[2:]
        if rest == "":
            return None
    hexdigits = "0123456789abcdefABCDEF"
    while groups < 16:
        off, acc = 0, 0
        while off < len(rest) and rest[off] in hexdigits:
            acc = acc * 16 + int(rest[off], 16)
            if off > 3:
                return err("each group must have 4 or less digits", rest)
            if acc > 0xFFFF:
                return err("IPv6 field has value >=2^16", rest)
            off += 1
        if off == 0:
            return err("each colon-separated field must have at least one digit", rest)
        if off < len(rest) and rest[off] == ".":
            if ellipsis < 0 and groups != 12:
                return err("embedded IPv4 address must replace the final 2 fields of the address", rest)
            if groups + 4 > 16:
                return err("too many hex fields to fit an embedded IPv4 at the end of the address", rest)
            end = len(text) - (len(zone) + 1 if zone else 0)
            error = _parse_ipv4_error(text, end - len(rest), end, err)
            if error:
                return error
            rest, groups = "", groups + 4
            break
        groups += 2
        rest = rest[off:]
        if rest == "":
            break
        if rest[0] != ":":
            return err("unexpected character, want colon", rest)
        if len(rest) == 1:
            return err("colon must be followed by more characters", rest)
        rest = rest[1:]
        if rest[0] == ":":
            if ellipsis >= 0:
                return err("multiple :: in address", rest)
            ellipsis, rest = groups, rest[1:]
            if rest == "":
                break
    if rest != "":
        return err("trailing garbage after address", rest)
    if groups < 16 and ellipsis < 0:
        return err("address string too short")
    if groups >= 16 and ellipsis >= 0:
        return err("the :: must expand to at least one field of zeros")
    return None


def _parse_ipv4_error(whole, start, end, err):
    """Go's ``netip`` IPv4 field parser over ``whole[start:end]``, for its error texts."""
    text = whole[start:end]
    fields, value, digits = 0, 0, 0
    for index, char in enumerate(text):
        if "0" <= char <= "9":
            if digits == 1 and value == 0:
                return err("IPv4 field has octet with leading zero")
            value = value * 10 + int(char)
            digits += 1
            if value > 255:
                return err("IPv4 field has value >255")
        elif char == ".":
            if index == 0 or index == len(text) - 1 or text[index - 1] == ".":
                return err("IPv4 field must have at least one digit", text[index:])
            if fields == 3:
                return err("IPv4 address too long")
            fields += 1
            value, digits = 0, 0
        else:
            return err("unexpected character", text[index:])
    if fields < 3:
        return err("IPv4 address too short")
    return None


def _parse_prefix(text):
    """``netip.ParsePrefix(text)`` -> (network, None) or (None, error text)."""
    def err(msg):
        return None, "netip.ParsePrefix(%s): %s" % (_go_q(text), msg)

    slash = text.rfind("/")
    if slash < 0:
        return err("no '/'")
    addr, bits = text[:slash], text[slash + 1:]
    addr_error = _parse_addr_error(addr)
    if addr_error:
        return err(addr_error)
    if "%" in addr:
        return err("IPv6 zones cannot be present in a prefix")
    if not re.fullmatch(r"[0-9]+", bits) or (len(bits) > 1 and bits[0] == "0"):
        return err("bad bits after slash: %s" % _go_q(bits))
    address = ipaddress.ip_address(addr)
    if int(bits) > address.max_prefixlen:
        return err("prefix length out of range")
    return ipaddress.ip_network("%s/%s" % (addr, bits), strict=False), None


def _parse_port_number(text):
    """``strconv.ParseUint(text, 0, 16)`` -> (value, None) or (None, error text)."""
    prefix = "strconv.ParseUint: parsing %s: " % _go_q(text)
    body, base = text, 10
    if len(text) > 1 and text[0] == "0":
        marker = text[1].lower()
        base = {"x": 16, "o": 8, "b": 2}.get(marker, 8)
        body = text[2:] if marker in "xob" else text[1:]
        body = body.replace("_", "")
    digits = "0123456789abcdef"[:base]
    if not body or any(c.lower() not in digits for c in body):
        return None, prefix + "invalid syntax"
    value = int(body, base)
    if value > 0xFFFF:
        return None, prefix + "value out of range"
    return value, None


def _is_iana_service_name(name):
    """``iana.IsSvcName``: 1-15 letters/digits/hyphens, a letter, no leading/trailing/double hyphen."""
    return (0 < len(name) <= 15 and re.fullmatch(r"[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*", name) is not None
            and re.search(r"[a-zA-Z]", name) is not None)


def _regexp_error(expr):
    """A Go ``regexp.Compile`` (RE2) error for ``expr``, or None.  RE2 has no look-around and
    no back-references; other syntax errors are reported with Go's wording where we know it."""
    for perl in ("(?=", "(?!", "(?<=", "(?<!"):
        if perl in expr:
            return "error parsing regexp: invalid or unsupported Perl syntax: `%s`" % perl
    backref = re.search(r"\\[1-9]", expr)
    if backref:
        return "error parsing regexp: invalid escape sequence: `%s`" % backref.group(0)
    try:
        re.compile(expr)
    except re.error as exc:
        text = str(exc)
        if "missing )" in text:
            return "error parsing regexp: missing closing ): `%s`" % expr
        if "unbalanced parenthesis" in text:
            return "error parsing regexp: unexpected ): `%s`" % expr
        if "unterminated character set" in text:
            return "error parsing regexp: missing closing ]: `%s`" % expr[expr.rfind("["):]
        if "nothing to repeat" in text or "multiple repeat" in text:
            return "error parsing regexp: missing argument to repetition operator: `%s`" % (
                expr[exc.pos:exc.pos + 1] if exc.pos is not None else expr)
        return "error parsing regexp: %s: `%s`" % (text, expr)
    return None


# Kafka rules (cilium/proxy ``pkg/policy/api/kafka``, the same in 1.16 to 1.19): API keys by
# name, the two roles, topic length and characters.
_KAFKA_API_KEYS = frozenset((
    "produce", "fetch", "offsets", "metadata", "leaderandisr", "stopreplica", "updatemetadata",
    "controlledshutdown", "offsetcommit", "offsetfetch", "findcoordinator", "joingroup", "heartbeat",
    "leavegroup", "syncgroup", "describegroups", "listgroups", "saslhandshake", "apiversions",
    "createtopics", "deletetopics", "deleterecords", "initproducerid", "offsetforleaderepoch",
    "addpartitionstotxn", "addoffsetstotxn", "endtxn", "writetxnmarkers", "txnoffsetcommit",
    "describeacls", "createacls", "deleteacls", "describeconfigs", "alterconfigs"))
_KAFKA_TOPIC_RE = re.compile(r"[a-zA-Z0-9\\._\-]+")
_KAFKA_MAX_TOPIC_LEN = 255


def _kafka_error(rule):
    """The agent's Kafka ``PortRule.Sanitize`` message for ``rule`` (a JSON object), or None."""
    def text(key):
        value = rule.get(key, "")
        return value if isinstance(value, str) else ""

    role, api_key, api_version, topic = text("role"), text("apiKey"), text("apiVersion"), text("topic")
    if api_key and role:
        return "cannot set both Role %s and APIKey %s together" % (_go_q(role), _go_q(api_key))
    if api_key and api_key.lower() not in _KAFKA_API_KEYS:
        return "invalid Kafka APIKey %s" % _go_q(api_key)
    if role and role.lower() not in ("produce", "consume"):
        return "invalid Kafka Role %s" % _go_q(role)
    if api_version and not (re.fullmatch(r"[+-]?[0-9]+", api_version) and 0 <= int(api_version) <= 32767):
        return "invalid Kafka APIVersion %s" % _go_q(api_version)
    if topic:
        if len(topic) > _KAFKA_MAX_TOPIC_LEN:
            return "kafka topic exceeds maximum len of %d" % _KAFKA_MAX_TOPIC_LEN
        if not _KAFKA_TOPIC_RE.fullmatch(topic):
            return "invalid Kafka Topic name %s" % _go_q(topic)
    return None


class _Reject(Exception):
    def __init__(self, message, field):
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationTarget:
    """One agent configuration to validate for: a Cilium minor and the flags, where known."""

    def __init__(self, minor, l7_proxy=None, node_selector_labels=None, icmp_rules=None, patch=None):
        self.minor = minor
        self.patch = patch
        self.l7_proxy = l7_proxy
        self.node_selector_labels = node_selector_labels
        self.icmp_rules = icmp_rules

    def key(self):
        return (self.minor, self.patch, self.l7_proxy, self.node_selector_labels, self.icmp_rules)


class _RuleChecker(ValidationTarget):
    """The agent's checks for one Cilium minor version and (when known) its flags.

    ``l7_proxy`` / ``node_selector_labels`` / ``icmp_rules``: the agent's flags, or None when
    unknown (publishing without an agent): checks that depend on them are skipped then.
    """

    def __init__(self, minor, l7_proxy=None, node_selector_labels=None, icmp_rules=None, patch=None):
        super().__init__(minor, l7_proxy, node_selector_labels, icmp_rules, patch)
        # The agent lower-cased most validation messages in 1.16.7 and 1.17.0
        # (docs/upstream.md#rule-validation-per-release-recorded); a minor given without patch
        # means its latest behaviour.
        self.lower = at_least(minor, patch, 16, 7)
        self.protocols = _PROTOCOLS_SINCE_19 if minor >= 19 else _PROTOCOLS
        self.entities = set(_ENTITIES)
        if minor >= 15:
            self.entities.update(_ENTITIES_SINCE_15)

    def case(self, text):
        return text[0].lower() + text[1:] if self.lower else text

    def since(self, struct, obj, at):
        for key in obj:
            first = FIELDS_SINCE.get((struct, key))
            if first is not None and self.minor < first:
                raise _Reject("%s is not supported before Cilium 1.%d (this agent would silently ignore "
                              "it)" % (key, first), "%s.%s" % (at, key) if at else key)
            last = FIELDS_UNTIL.get((struct, key))
            if last is not None and self.minor > last:
                raise _Reject("%s was removed in Cilium 1.%d: the agent refuses it, and a policy file with it "
                              "stops the agent" % (key, last + 1), "%s.%s" % (at, key) if at else key)

    # -- rule ---------------------------------------------------------------------------------
    def rule(self, rule):
        self.since("Rule", rule, "")
        directions = ("ingress", "ingressDeny", "egress", "egressDeny")
        if self.minor >= 17 and not any(rule.get(d) for d in directions):
            raise _Reject("rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny", None)
        has_endpoints, has_nodes = "endpointSelector" in rule, "nodeSelector" in rule
        if not has_endpoints and not has_nodes:
            raise _Reject("rule must have one of EndpointSelector or NodeSelector", None)
        if has_endpoints and has_nodes:
            raise _Reject("rule cannot have both EndpointSelector and NodeSelector", None)
        subject = "endpointSelector" if has_endpoints else "nodeSelector"
        self.selector(rule[subject], subject)
        host = has_nodes
        for index, item in enumerate(rule.get("ingress") or []):
            at = "ingress[%d]" % index
            self.peer_item(item, at, "IngressRule", _INGRESS_PEERS, ingress=True, deny=False, host=host)
        for index, item in enumerate(rule.get("ingressDeny") or []):
            at = "ingressDeny[%d]" % index
            self.peer_item(item, at, "IngressDenyRule", _INGRESS_PEERS, ingress=True, deny=True, host=host)
        for index, item in enumerate(rule.get("egress") or []):
            at = "egress[%d]" % index
            self.peer_item(item, at, "EgressRule", _EGRESS_PEERS, ingress=False, deny=False, host=host)
        for index, item in enumerate(rule.get("egressDeny") or []):
            at = "egressDeny[%d]" % index
            self.peer_item(item, at, "EgressDenyRule", _EGRESS_PEERS, ingress=False, deny=True, host=host)

    def selector(self, selector, at):
        message = selector_error(selector, newer=self.minor >= 19)
        if message:
            raise _Reject("invalid label selector: " + message, at)

    # -- ingress / egress items ---------------------------------------------------------------
    def peer_item(self, item, at, struct, peers, ingress, deny, host):
        self.since(struct, item, at)
        if self.minor < 16:
            for peer in peers:
                if item.get(peer) == []:
                    # 1.16 changed the meaning of an explicitly empty peer list.
                    raise _Reject("an empty %s list selects every peer before Cilium 1.16 and none since: leave "
                                  "the field out, or write [{}] to mean every endpoint" % peer,
                                  "%s.%s" % (at, peer))
        present = [p for p in peers if item.get(p)]
        if len(present) > 1:
            # Go ranges over a map here, so the agent names the pair in random order.
            raise _Reject("%s %s and %s is not supported yet" % (
                self.case("Combining"), _GO_NAMES.get(present[0], present[0][0].upper() + present[0][1:]),
                _GO_NAMES.get(present[1], present[1][0].upper() + present[1][1:])), at)
        if not ingress and self.minor < 17 and item.get("toServices") and item.get("toPorts"):
            raise _Reject(self.case("Combining") + " ToServices and ToPorts is not supported yet", at)
        port_rules = item.get("toPorts") or []
        l7 = {} if deny else _l7_counts(port_rules)
        if l7:
            self.l7_placement(l7, at, ingress, host)
        if item.get("icmps"):
            if self.icmp_rules is False:
                raise _Reject('ICMP rules can only be applied when the "enable-icmp-rules" flag is set',
                              at + ".icmps")
            if port_rules:
                raise _Reject("The ICMPs block may only be present without ToPorts. Define a separate "
                              "rule to use ToPorts." if not self.lower else
                              "the ICMPs block may only be present without ToPorts. Define a separate "
                              "rule to use ToPorts", at)
        prefix = "from" if ingress else "to"
        for key in (prefix + "Endpoints", prefix + "Requires", prefix + "Nodes"):
            for index, selector in enumerate(item.get(key) or []):
                self.selector(selector, "%s.%s[%d]" % (at, key, index))
        for index, cidr in enumerate(item.get(prefix + "CIDR") or []):
            self.cidr(cidr, "%s.%sCIDR[%d]" % (at, prefix, index))
        for index, cidr_rule in enumerate(item.get(prefix + "CIDRSet") or []):
            self.cidr_rule(cidr_rule, "%s.%sCIDRSet[%d]" % (at, prefix, index))
        for index, entity in enumerate(item.get(prefix + "Entities") or []):
            if entity not in self.entities:
                raise _Reject("unsupported entity: %s" % entity, "%s.%sEntities[%d]" % (at, prefix, index))
        for index, fqdn in enumerate(item.get("toFQDNs") or []):
            self.fqdn(fqdn, "%s.toFQDNs[%d]" % (at, index), selector=True)
        for index, port_rule in enumerate(port_rules):
            where = "%s.toPorts[%d]" % (at, index)
            if deny:
                self.ports(port_rule.get("ports") or [], where, has_dns=False)
            else:
                self.port_rule(port_rule, where, ingress)
        for index, icmp in enumerate(item.get("icmps") or []):
            fields = icmp.get("fields") or []
            where = "%s.icmps[%d]" % (at, index)
            if len(fields) > MAX_ICMP_FIELDS:
                raise _Reject("too many types, the max is %d" % MAX_ICMP_FIELDS, where + ".fields")
            for findex, field in enumerate(fields):
                if field.get("family", "") not in ("", "IPv4", "IPv6"):
                    raise _Reject("wrong family: %s" % field["family"], "%s.fields[%d].family" % (where, findex))
        if item.get(prefix + "Nodes") and self.node_selector_labels is False:
            raise _Reject(_NODE_SELECTOR_MSG, "%s.%sNodes" % (at, prefix))

    def l7_placement(self, l7, at, ingress, host):
        if host:
            if self.minor >= 17:
                if ingress:
                    raise _Reject("L7 policy is not supported on host ingress yet", at)
                for member in ("HTTP", "Kafka"):
                    if l7.get(member):
                        raise _Reject("L7 protocol %s is not supported on host egress yet" % member, at)
            else:
                raise _Reject("host policies do not support L7 rules yet", at)
        if self.l7_proxy is False:
            raise _Reject("L7 policy is not supported since L7 proxy is not enabled", at)
        if ingress and l7.get("DNS"):
            raise _Reject("L7 protocol DNS is not supported on ingress yet", at)

    # -- L4 / L7 ------------------------------------------------------------------------------
    def port_rule(self, port_rule, at, ingress):
        rules = port_rule.get("rules")
        has_dns = bool(rules and rules.get("dns"))
        l7_empty = _l7_empty(rules)
        if ingress and has_dns:
            raise _Reject("DNS rules are not allowed on ingress", at + ".rules.dns")
        if port_rule.get("serverNames") and not l7_empty and "terminatingTLS" not in port_rule:
            raise _Reject("ServerNames are not allowed with L7 rules without TLS termination", at + ".serverNames")
        for index, server_name in enumerate(port_rule.get("serverNames") or []):
            if server_name == "":
                raise _Reject(self.case("Empty server name is not allowed"), "%s.serverNames[%d]" % (at, index))
        ports = port_rule.get("ports") or []
        have_zero = self.ports(ports, at, has_dns, has_l7=not l7_empty)
        if not l7_empty and not has_dns:
            for index, port in enumerate(ports):
                protocol = (port.get("protocol") or "ANY").upper()
                if protocol != "TCP":
                    raise _Reject("L7 rules can only apply to TCP (not %s) except for DNS rules" % protocol,
                                  "%s.ports[%d].protocol" % (at, index))
        listener = port_rule.get("listener")
        if listener is not None:
            name = listener.get("name", "")
            if ingress:
                raise _Reject("Listener is not allowed on ingress (%s)" % name, at + ".listener")
            if not l7_empty:
                raise _Reject("Listener is not allowed with L7 rules (%s)" % name, at + ".listener")
        if not l7_empty:
            if have_zero:
                raise _Reject("L7 rules can not be used when a port is 0", at + ".ports")
            self.l7_rules(rules, ports, at + ".rules")

    def ports(self, ports, at, has_dns, has_l7=False):
        """Checks every PortProtocol; returns whether one of them is port 0."""
        if len(ports) > MAX_PORTS:
            raise _Reject("too many ports, the max is %d" % MAX_PORTS, at + ".ports")
        have_zero = False
        for index, port in enumerate(ports):
            where = "%s.ports[%d]" % (at, index)
            text = port.get("port", "")
            if text == "":
                raise _Reject("port must be specified" if self.minor >= 19 else "Port must be specified",
                              where + ".port")
            if not _is_iana_service_name(text):
                if self.minor >= 19 and text != "0" and port.get("protocol") in ("VRRP", "IGMP"):
                    raise _Reject("port must be empty or 0", where + ".port")
                value, error = _parse_port_number(text)
                if error:
                    raise _Reject(self.case("Unable to parse port: ") + error, where + ".port")
                have_zero = have_zero or value == 0
                if self.minor == 16 and at_least(self.minor, self.patch, 16, 5):
                    # The 1.16 branch refuses port ranges with any L7 rule from 1.16.5.
                    if has_l7 and port.get("endPort", 0) > value:
                        raise _Reject("L7 rules do not support port ranges", where + ".endPort")
                elif has_dns and port.get("endPort", 0) > value:
                    raise _Reject("DNS rules do not support port ranges", where + ".endPort")
            protocol = port.get("protocol", "")
            if protocol and protocol.upper() not in self.protocols:
                raise _Reject("invalid protocol %s, must be { %s }" % (
                    _go_q(protocol.upper()), " | ".join(p.lower() for p in self.protocols[:-1] + ("ANY",))),
                    where + ".protocol")
        return have_zero

    def l7_rules(self, rules, ports, at):
        kinds = 0
        if "http" in rules:
            kinds += 1
            for index, http in enumerate(rules["http"]):
                where = "%s.http[%d]" % (at, index)
                for key in ("path", "method", "host"):
                    if http.get(key):
                        error = _regexp_error(http[key])
                        if error:
                            raise _Reject(error, "%s.%s" % (where, key))
                for mindex, match in enumerate(http.get("headerMatches") or []):
                    mwhere = "%s.headerMatches[%d]" % (where, mindex)
                    if not match.get("name"):
                        raise _Reject("Header name missing", mwhere)
                    if match.get("mismatch", "") not in ("", "LOG", "ADD", "DELETE", "REPLACE"):
                        raise _Reject("Invalid header action: %s" % match["mismatch"], mwhere + ".mismatch")
                    secret = match.get("secret")
                    if secret is not None and not secret.get("name"):
                        raise _Reject("Secret name missing", mwhere + ".secret")
        if "kafka" in rules:
            kinds += 1
            for index, kafka in enumerate(rules["kafka"]):
                error = _kafka_error(kafka)
                if error:
                    raise _Reject(error, "%s.kafka[%d]" % (at, index))
        if "dns" in rules:
            if not ports:
                raise _Reject(self.case("Port 53 must be specified for DNS rules"), at + ".dns")
            kinds += 1
            for index, dns in enumerate(rules["dns"]):
                self.fqdn(dns, "%s.dns[%d]" % (at, index), selector=False)
        if "l7" in rules and not rules.get("l7proto"):
            raise _Reject("'l7' may only be specified when a 'l7proto' is also specified", at + ".l7")
        if rules.get("l7proto"):
            kinds += 1
        if kinds > 1:
            raise _Reject("multiple L7 protocol rule types specified in single rule", at)

    def fqdn(self, fqdn, at, selector):
        name, pattern = fqdn.get("matchName", ""), fqdn.get("matchPattern", "")
        if selector and name and pattern:
            raise _Reject("only one of MatchName or MatchPattern is allowed in an FQDNSelector", at)
        # 1.19 names the underscore it has always allowed (docs/upstream.md#rule-validation-per-release-recorded).
        if name and not _FQDN_NAME_RE.fullmatch(name):
            raise _Reject('Invalid characters in MatchName: "%s". Only 0-9, a-z, A-Z and %s characters '
                          'are allowed' % (name, "., -, _" if selector and self.minor >= 19 else ". and -"),
                          at + ".matchName")
        if pattern and not _FQDN_PATTERN_RE.fullmatch(pattern):
            raise _Reject('Invalid characters in MatchPattern: "%s". Only 0-9, a-z, A-Z and %s and * '
                          'characters are allowed' % (pattern, "., -, _" if self.minor >= 19 else "., -"),
                          at + ".matchPattern")

    # -- CIDR ---------------------------------------------------------------------------------
    def cidr(self, text, at):
        if text == "":
            raise _Reject("IP must be specified", at)
        network, unused = _parse_prefix(text)
        if network is None:
            error = _parse_addr_error(text)  # a bare address is a /32 (or /128) here
            if error:
                raise _Reject("unable to parse CIDR: " + error, at)

    def cidr_rule(self, rule, at):
        self.since("CIDRRule", rule, at)
        if self.minor >= 17:
            # Exactly one of cidr, cidrGroupRef, cidrGroupSelector from 1.17
            # (docs/upstream.md#rule-validation-per-release-recorded).
            count = sum(1 for key in ("cidr", "cidrGroupRef") if rule.get(key)) + ("cidrGroupSelector" in rule)
            if "cidrGroupSelector" in rule:
                message = selector_error(rule["cidrGroupSelector"], default_source="cidrgroup", newer=self.minor >= 19)
                if message:
                    raise _Reject("failed to parse cidrGroupSelector %s: invalid label selector: %s" % (
                        self.go_selector_string(rule["cidrGroupSelector"]), message), at + ".cidrGroupSelector")
            if count == 0:
                raise _Reject("one of cidr, cidrGroupRef, or cidrGroupSelector is required", at)
            if count > 1:
                raise _Reject("more than one of cidr, cidrGroupRef, or cidrGroupSelector may not be set", at)
        if rule.get("cidrGroupRef") or "cidrGroupSelector" in rule:
            if self.minor <= 16 and rule.get("except"):
                raise _Reject("except with cidrGroupRef crashes Cilium 1.16", at + ".except")
            return  # resolved from CiliumCIDRGroups (K8s); nothing to parse
        text = rule.get("cidr", "")
        network, error = _parse_prefix(text)
        if error:
            raise _Reject("%s CIDRRule %s: %s" % (self.case("Unable to parse"), _go_q(text), error), at + ".cidr")
        for index, excluded in enumerate(rule.get("except") or []):
            except_net, error = _parse_prefix(excluded)
            if error:
                raise _Reject(error, "%s.except[%d]" % (at, index))
            # The agent checks that the allow prefix contains the exception's address as written.
            except_addr = ipaddress.ip_address(excluded[:excluded.rfind("/")])
            if self.minor <= 16 and except_net.prefixlen < network.prefixlen and except_addr in network:
                # 1.16 crashes computing the remaining prefixes (docs/upstream.md#rule-validation-per-release-recorded).
                raise _Reject("an except prefix wider than its cidr crashes Cilium 1.16", "%s.except[%d]" % (at, index))
            if except_addr.version != network.version or except_addr not in network:
                raise _Reject("allow CIDR prefix %s does not contain exclude CIDR prefix %s" % (text, excluded),
                              "%s.except[%d]" % (at, index))

    def go_selector_string(self, selector):
        """Go's ``%v`` of a ``LabelSelector`` (the generated ``String()``), as the agent prints it;
        1.19 prints the selector as JSON."""
        labels = selector.get("matchLabels") or {}
        if self.minor >= 19:
            shown = {key: selector[key] for key in ("matchLabels", "matchExpressions") if selector.get(key)}
            return json.dumps(shown, separators=(",", ":"), sort_keys=False)
        text = "&LabelSelector{MatchLabels:map[string]string{"
        text += "".join("%s: %s," % (key, labels[key]) for key in sorted(labels))
        text += "},MatchExpressions:[]LabelSelectorRequirement{"
        for req in selector.get("matchExpressions") or []:
            text += "LabelSelectorRequirement{Key:%s,Operator:%s,Values:[%s],}," % (
                req.get("key", ""), req.get("operator", ""), " ".join(req.get("values") or []))
        return text + "},}"


def _l7_empty(rules):
    """``L7Rules.IsEmpty``: no HTTP, Kafka, DNS or generic L7 rule (empty lists and a lone
    ``l7proto`` count as nothing; docs/upstream.md#rule-validation-per-release-recorded)."""
    if rules is None:
        return True
    return not any(rules.get(k) for k in ("http", "kafka", "dns", "l7"))


def _l7_counts(port_rules):
    """``countL7Rules``: rules per L7 protocol; empty when no PortRule carries L7 rules."""
    counts = {}
    for port_rule in port_rules:
        rules = port_rule.get("rules")
        if _l7_empty(rules):
            continue
        for member, key in (("DNS", "dns"), ("HTTP", "http"), ("Kafka", "kafka")):
            counts[member] = counts.get(member, 0) + len(rules.get(key) or [])
    return counts


def validate_rules(rules, targets):
    """Check normalised ``rules`` for every target; raise PolicyValidationError on the first
    rule that fails, naming it, the field, the agent's message and the versions it fails on."""
    checkers = [(t.minor, _RuleChecker(t.minor, t.l7_proxy, t.node_selector_labels, t.icmp_rules, t.patch))
                for t in sorted(targets, key=lambda t: (t.minor, 10 ** 6 if t.patch is None else t.patch))]
    for index, rule in enumerate(rules):
        first, failing = None, []
        for minor, checker in checkers:
            try:
                checker.rule(rule)
            except _Reject as exc:
                failing.append(minor)
                if first is None:
                    first = exc
        if first is not None:
            raise PolicyValidationError(first.message, index=index, name=rule_name(rule),
                                        field=first.field, versions=sorted(set(failing)))
