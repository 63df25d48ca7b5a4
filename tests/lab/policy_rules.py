"""Agent-side Cilium policy decoding, validation and sanitisation for the lab.

Independent re-implementation of what cilium-agent does with the rules it receives over
``PUT /v1/policy`` or from a ``--static-cnp-path`` file (``pkg/policy/api``,
``pkg/policy/api/rule_validation.go``, ``pkg/labels``, k8s label-selector validation).  The
lab must never import product code; product code has its own validator, and this one is
what decides whether the product's validator tells the truth.

Three stages, as in the agent:

1. ``decode_rules``: Go ``encoding/json`` into ``api.Rules``.  Unknown fields are dropped
   (typos are *accepted*), keys match case-insensitively, ``null`` is "absent", a JSON type
   mismatch is an error.  The REST handler answers such errors with 400 and an empty body.
2. ``validate``: ``Rule.Sanitize()`` (<= 1.16 era) / ``Rule.Validate()`` (newest), with the
   agent's exact messages; the REST handler answers 500 with the message as a JSON string.
3. ``sanitize``: the JSON the agent gives back (``json.MarshalIndent`` of the stored rules):
   Go field order, ``omitempty``, selector keys with a source (``any:app``), protocols upper
   case (empty => ``ANY``), IANA port names lower case, ``enableDefaultDeny`` filled in (1.16+).

Version differences are driven by the profile dict of ``tests/lab/cilium.py`` (``minor``
plus feature flags).  Where the exact version of a change is not known the choice is marked
UNCONFIRMED.  Go iterates maps in random order, so where the agent's message depends on map
order ("Combining X and Y") we pick declaration order and say so.
"""

import ipaddress
import json
import re

from .httpd import json_kind

__all__ = [
    "PolicyError", "PolicyDecodeError", "validate_rules", "decode_rules", "validate_decoded",
    "parse_label", "parse_select_label", "label_string", "labels_kvstore_key", "selector_matches",
    "rule_labels", "labels_contain", "go_marshal_indent", "is_dns1123_subdomain", "ENTITIES_BASE",
]


class PolicyError(Exception):
    """A rule the agent rejects (``putPolicyFailure``: HTTP 500, message as JSON string)."""

    status = 500

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class PolicyDecodeError(PolicyError):
    """The rules JSON does not decode into ``[]api.Rule`` (``putPolicyInvalidPolicy``: 400, no body)."""

    status = 400


# --------------------------------------------------------------------------------------------
# Labels (pkg/labels)
# --------------------------------------------------------------------------------------------

SOURCE_ANY = "any"
SOURCE_UNSPEC = "unspec"
SOURCE_RESERVED = "reserved"


def _parse_source(text, delim=":"):
    """``parseSource``: ``$host`` => reserved, first delimiter splits, ``reserved.x`` => reserved."""
    if text == "":
        return "", ""
    if text[0] == "$":
        return SOURCE_RESERVED, text[1:]
    idx = text.find(delim)
    if idx < 0:
        if delim != "." and text.startswith("reserved."):
            return SOURCE_RESERVED, text[len("reserved."):]
        return "", text
    return text[:idx], text[idx + 1:]


def _parse_label_with(text, default_source):
    src, rest = _parse_source(text, ":")
    source = src or default_source
    idx = rest.find("=")
    if idx < 0:
        return source, rest, ""
    if idx == 0 and src == SOURCE_RESERVED:
        return source, rest[1:], ""
    return source, rest[:idx], rest[idx + 1:]


def parse_label(text):
    """``labels.ParseLabel``: ``[source:]key[=value]``; no source => ``unspec``."""
    return _parse_label_with(text, SOURCE_UNSPEC)


def parse_select_label(text):
    """``labels.ParseSelectLabel``: like ``parse_label`` but no source => ``any``."""
    return _parse_label_with(text, SOURCE_ANY)


def label_string(source, key, value):
    """``Label.String()``: ``source:key=value`` or ``source:key`` when the value is empty."""
    if value:
        return "%s:%s=%s" % (source, key, value)
    return "%s:%s" % (source, key)


def labels_kvstore_key(labels):
    """Identity key of a label set: ``source:key=value;`` per label, sorted by key (``SortedList``).

    ``labels`` is an iterable of ``(source, key, value)``.  Like Go's ``labels.Labels`` map, a key
    appears once (last one wins).
    """
    by_key = {}
    for source, key, value in labels:
        by_key[key] = (source, key, value)
    return "".join("%s:%s=%s;" % by_key[k] for k in sorted(by_key))


def _extended_key(key, default_source=SOURCE_ANY):
    """``GetExtendedKeyFrom``: ``src:key`` => ``src.key``; no source => ``any.key``."""
    src, rest = _parse_source(key, ":")
    if not src:
        src = default_source
    idx = rest.find("=")
    if idx >= 0:
        rest = rest[:idx]
    return src + "." + rest


def _cilium_key(extended):
    """``GetCiliumKeyFrom``: ``src.key`` => ``src:key``."""
    idx = extended.find(".")
    if idx >= 0:
        return extended[:idx] + ":" + extended[idx + 1:]
    return SOURCE_ANY + ":" + extended


def selector_matches(selector, labels):
    """Does a *sanitised* selector (keys ``source:key``) select an endpoint with ``labels``?

    ``labels`` is an iterable of ``(source, key, value)``.  ``any`` matches every source.
    ``reserved:all`` (never produced by the sanitiser for users) is not special-cased.
    """
    if selector is None:
        return False

    def lookup(sel_key):
        src, key = sel_key.split(":", 1) if ":" in sel_key else (SOURCE_ANY, sel_key)
        for lsrc, lkey, lval in labels:
            if lkey == key and (src == SOURCE_ANY or src == lsrc):
                return True, lval
        return False, None

    for key, want in (selector.get("matchLabels") or {}).items():
        found, value = lookup(key)
        if not found or value != want:
            return False
    for req in selector.get("matchExpressions") or []:
        found, value = lookup(req["key"])
        op = req["operator"]
        values = req.get("values") or []
        if op == "In" and not (found and value in values):
            return False
        if op == "NotIn" and found and value in values:
            return False
        if op == "Exists" and not found:
            return False
        if op == "DoesNotExist" and found:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Go formatting helpers
# --------------------------------------------------------------------------------------------

def _go_quote(value):
    """Go ``%q`` for a plain string (close enough to JSON string escaping for our inputs)."""
    return json.dumps(value, ensure_ascii=False)


def go_marshal_indent(obj):
    """``json.MarshalIndent(obj, "", "  ")``: Go escapes ``<``, ``>``, ``&`` inside strings."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_go_type_name = json_kind


# --------------------------------------------------------------------------------------------
# k8s validation (apimachinery util/validation, as vendored/slimmed by Cilium)
# --------------------------------------------------------------------------------------------

_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_MSG = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
              "with an alphanumeric character")
_LABEL_VALUE_FMT = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, "
                    "'-', '_' or '.', and must start and end with an alphanumeric character")
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUB_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUB_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                    "characters, '-' or '.', and must start and end with an alphanumeric character")


def _regex_error(msg, fmt, *examples):
    if not examples:
        return msg + " (regex used for validation is '" + fmt + "')"
    out = msg + " (e.g. "
    for i, example in enumerate(examples):
        if i > 0:
            out += " or "
        out += "'" + example + "', "
    return out + "regex used for validation is '" + fmt + "')"


def is_dns1123_subdomain(value, unit="characters"):
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 %s" % unit)
    if not re.fullmatch(_DNS1123_SUB_FMT, value):
        errs.append(_regex_error(_DNS1123_SUB_MSG, _DNS1123_SUB_FMT, "example.com"))
    return errs


def _is_qualified_name(value, newer=False):
    """apimachinery ``IsQualifiedName``; ``newer``: the apimachinery Cilium 1.19 vendors
    ("a valid label key", lengths in bytes)."""
    unit = "bytes" if newer else "characters"
    errs = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in is_dns1123_subdomain(prefix, unit))
    else:
        head = "a valid label key " if newer else "a qualified name "
        return [head + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 %s" % unit)
    if not re.fullmatch(_QNAME_FMT, name):
        errs.append("name part " + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def _is_valid_label_value(value, newer=False):
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 %s" % ("bytes" if newer else "characters"))
    if not re.fullmatch(_LABEL_VALUE_FMT, value):
        errs.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def _validate_label_selector(extended_selector, newer=False):
    """``ValidateLabelSelector(sel, {AllowInvalidLabelValueInSelector: false}, nil)``.

    Keys are validated in their extended form (``any.app``) as the agent does after source
    conversion.  Returns the aggregated message or None.
    """
    errs = []
    for key in sorted(extended_selector.get("matchLabels") or {}):  # Go map order is random
        value = extended_selector["matchLabels"][key]
        errs.extend('matchLabels: Invalid value: %s: %s' % (_go_quote(key), m)
                    for m in _is_qualified_name(key, newer))
        errs.extend('matchLabels: Invalid value: %s: %s' % (_go_quote(value), m)
                    for m in _is_valid_label_value(value, newer))
    for i, req in enumerate(extended_selector.get("matchExpressions") or []):
        path = "matchExpressions[%d]" % i
        op = req.get("operator", "")
        values = req.get("values") or []
        if op in ("In", "NotIn"):
            if not values:
                errs.append("%s.values: Required value: must be specified when `operator` is 'In' or 'NotIn'" % path)
        elif op in ("Exists", "DoesNotExist"):
            if values:
                errs.append("%s.values: Forbidden: may not be specified when `operator` is 'Exists' or "
                            "'DoesNotExist'" % path)
        else:
            errs.append("%s.operator: Invalid value: %s: not a valid selector operator" % (path, _go_quote(op)))
        key = req.get("key", "")
        errs.extend("%s.key: Invalid value: %s: %s" % (path, _go_quote(key), m)
                    for m in _is_qualified_name(key, newer))
        for j, value in enumerate(values):
            errs.extend("%s.values[%d]: Invalid value: %s: %s" % (path, j, _go_quote(value), m)
                        for m in _is_valid_label_value(value, newer))
    if not errs:
        return None
    if len(errs) == 1:
        return errs[0]
    return "[" + ", ".join(errs) + "]"


# --------------------------------------------------------------------------------------------
# Go-style netip / strconv error texts
# --------------------------------------------------------------------------------------------

def _go_parse_addr_error(text):
    """Error text of Go ``netip.ParseAddr(text)`` (go/src/net/netip/netip.go) or None."""
    head = "ParseAddr(%s): " % _go_quote(text)

    def err(msg, at=None):
        return head + msg + (" (at %s)" % _go_quote(at) if at is not None else "")

    for ch in text:
        if ch == ".":
            return _go_ipv4_error(text, 0, len(text), err)
        if ch == ":":
            return _go_ipv6_error(text, err)
        if ch == "%":
            return err("missing IPv6 address")
    return err("unable to parse IP")


def _go_ipv4_error(whole, start, end, err):
    text = whole[start:end]
    fields, value, ndigits = 0, 0, 0
    for i, ch in enumerate(text):
        if "0" <= ch <= "9":
            if ndigits == 1 and value == 0:
                return err("IPv4 field has octet with leading zero")
            value, ndigits = value * 10 + int(ch), ndigits + 1
            if value > 255:
                return err("IPv4 field has value >255")
        elif ch == ".":
            if i == 0 or i == len(text) - 1 or text[i - 1] == ".":
                return err("IPv4 field must have at least one digit", text[i:])
            if fields == 3:
                return err("IPv4 address too long")
            fields, value, ndigits = fields + 1, 0, 0
        else:
            return err("unexpected character", text[i:])
    if fields < 3:
        return err("IPv4 address too short")
    return None


def _go_ipv6_error(text, err):
    rest, zone = text, ""
    if "%" in text:
        rest, zone = text.split("%", 1)
        if not zone:
            return err("zone must be a non-empty string")
    count, ellipsis = 0, -1
    if rest.startswith("::"):
        ellipsis, rest = 0, rest[2:]
        if not rest:
            return None
    while count < 16:
        off, acc = 0, 0
        while off < len(rest) and rest[off] in "0123456789abcdefABCDEF":
            acc = acc * 16 + int(rest[off], 16)
            if off > 3:
                return err("each group must have 4 or less digits", rest)
            if acc > 0xFFFF:
                return err("IPv6 field has value >=2^16", rest)
            off += 1
        if off == 0:
            return err("each colon-separated field must have at least one digit", rest)
        if off < len(rest) and rest[off] == ".":
            if ellipsis < 0 and count != 12:
                return err("embedded IPv4 address must replace the final 2 fields of the address", rest)
            if count + 4 > 16:
                return err("too many hex fields to fit an embedded IPv4 at the end of the address", rest)
            end = len(text) - (len(zone) + 1 if zone else 0)
            bad = _go_ipv4_error(text, end - len(rest), end, err)
            if bad:
                return bad
            rest, count = "", count + 4
            break
        count += 2
        rest = rest[off:]
        if not rest:
            break
        if rest[0] != ":":
            return err("unexpected character, want colon", rest)
        if len(rest) == 1:
            return err("colon must be followed by more characters", rest)
        rest = rest[1:]
        if rest[0] == ":":
            if ellipsis >= 0:
                return err("multiple :: in address", rest)
            ellipsis, rest = count, rest[1:]
            if not rest:
                break
    if rest:
        return err("trailing garbage after address", rest)
    if count < 16 and ellipsis < 0:
        return err("address string too short")
    if count >= 16 and ellipsis >= 0:
        return err("the :: must expand to at least one field of zeros")
    return None


def _go_parse_prefix(text):
    """``netip.ParsePrefix``: returns (network, None) or (None, error text)."""
    head = "netip.ParsePrefix(%s): " % _go_quote(text)
    if "/" not in text:
        return None, head + "no '/'"
    addr, bits = text.rsplit("/", 1)
    err = _go_parse_addr_error(addr)
    if err:
        return None, head + err
    if "%" in addr:
        return None, head + "IPv6 zones cannot be present in a prefix"
    if not re.fullmatch(r"[0-9]+", bits) or (len(bits) > 1 and bits[0] == "0"):
        return None, head + "bad bits after slash: %s" % _go_quote(bits)
    ip = ipaddress.ip_address(addr)
    if int(bits) > ip.max_prefixlen:
        return None, head + "prefix length out of range"
    return ipaddress.ip_network("%s/%s" % (addr, bits), strict=False), None


def _go_parse_uint16(text):
    """``strconv.ParseUint(text, 0, 16)``: (value, None) or (None, error text)."""
    head = "strconv.ParseUint: parsing %s: " % _go_quote(text)
    body = text.replace("_", "") if re.match(r"^0[xXbBoO]", text) else text
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", body):
            value = int(body, 16)
        elif re.fullmatch(r"0[bB][01]+", body):
            value = int(body, 2)
        elif re.fullmatch(r"0[oO][0-7]+", body):
            value = int(body[2:], 8)
        elif len(body) > 1 and body[0] == "0":  # base 0: a leading zero means octal
            if not re.fullmatch(r"0[0-7_]+", body):
                return None, head + "invalid syntax"
            value = int(body.replace("_", ""), 8)
        elif re.fullmatch(r"[0-9]+", body):
            value = int(body, 10)
        else:
            return None, head + "invalid syntax"
    except ValueError:
        return None, head + "invalid syntax"
    if value > 0xFFFF:
        return None, head + "value out of range"
    return value, None


def _is_iana_svc_name(name):
    """``iana.IsSvcName``: 1-15 chars, alnum and non-consecutive inner hyphens, at least one letter."""
    return (0 < len(name) <= 15 and re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?", name) is not None
            and "--" not in name and re.search(r"[a-zA-Z]", name) is not None)


def _go_regexp_error(expr):
    """Go ``regexp.Compile`` error text (RE2) or None.  Approximate for exotic syntax."""
    for bad in ("(?=", "(?!", "(?<=", "(?<!"):
        if bad in expr:
            return "error parsing regexp: invalid or unsupported Perl syntax: `%s`" % bad
    backref = re.search(r"\\[1-9]", expr)
    if backref:
        return "error parsing regexp: invalid escape sequence: `%s`" % backref.group(0)
    try:
        re.compile(expr)
    except re.error as exc:
        msg = str(exc)
        if "missing )" in msg:
            return "error parsing regexp: missing closing ): `%s`" % expr
        if "unbalanced parenthesis" in msg:
            return "error parsing regexp: unexpected ): `%s`" % expr
        if "unterminated character set" in msg:
            return "error parsing regexp: missing closing ]: `%s`" % expr[expr.rfind("["):]
        if "nothing to repeat" in msg or "multiple repeat" in msg:
            return "error parsing regexp: missing argument to repetition operator: `%s`" % expr[exc.pos:exc.pos + 1]
        return "error parsing regexp: invalid regexp: `%s`" % expr
    return None


# --------------------------------------------------------------------------------------------
# Stage 1: decode (encoding/json into api.Rules)
# --------------------------------------------------------------------------------------------

# Struct layouts in Go field order: (json name, type, first minor version that knows the field).
# Types: "str", "int32", "bool", "any" (kept verbatim), "intstr", "strmap", "selector", "label",
# ("list", T), ("struct", Name).  Fields unknown to a version are dropped like any typo.
# Field introduction versions are best knowledge; fromNodes/toNodes 1.16 and log 1.18 are
# UNCONFIRMED.
_STRUCTS = {
    "Rule": [
        ("endpointSelector", "selector", 0), ("nodeSelector", "selector", 0),
        ("ingress", ("list", ("struct", "IngressRule")), 0),
        ("ingressDeny", ("list", ("struct", "IngressDenyRule")), 0),
        ("egress", ("list", ("struct", "EgressRule")), 0),
        ("egressDeny", ("list", ("struct", "EgressDenyRule")), 0),
        ("labels", ("list", "label"), 0),
        ("enableDefaultDeny", ("struct", "DefaultDenyConfig"), 16),
        ("description", "str", 0),
        ("log", ("struct", "LogConfig"), 18),
    ],
    "IngressRule": [
        ("fromEndpoints", ("list", "selector"), 0), ("fromRequires", "requires", 0),
        ("fromCIDR", ("list", "str"), 0), ("fromCIDRSet", ("list", ("struct", "CIDRRule")), 0),
        ("fromEntities", ("list", "str"), 0), ("fromGroups", ("list", "any"), 0),
        ("fromNodes", ("list", "selector"), 16),
        ("toPorts", ("list", ("struct", "PortRule")), 0), ("icmps", ("list", ("struct", "ICMPRule")), 0),
        ("authentication", "any", 14),
    ],
    "IngressDenyRule": [
        ("fromEndpoints", ("list", "selector"), 0), ("fromRequires", "requires", 0),
        ("fromCIDR", ("list", "str"), 0), ("fromCIDRSet", ("list", ("struct", "CIDRRule")), 0),
        ("fromEntities", ("list", "str"), 0), ("fromGroups", ("list", "any"), 0),
        ("fromNodes", ("list", "selector"), 16),
        ("toPorts", ("list", ("struct", "PortDenyRule")), 0), ("icmps", ("list", ("struct", "ICMPRule")), 0),
    ],
    "EgressRule": [
        ("toEndpoints", ("list", "selector"), 0), ("toRequires", "requires", 0),
        ("toCIDR", ("list", "str"), 0), ("toCIDRSet", ("list", ("struct", "CIDRRule")), 0),
        ("toEntities", ("list", "str"), 0), ("toServices", ("list", "any"), 0),
        ("toGroups", ("list", "any"), 0), ("toNodes", ("list", "selector"), 16),
        ("toPorts", ("list", ("struct", "PortRule")), 0), ("toFQDNs", ("list", ("struct", "FQDNSelector")), 0),
        ("icmps", ("list", ("struct", "ICMPRule")), 0), ("authentication", "any", 14),
    ],
    "EgressDenyRule": [
        ("toEndpoints", ("list", "selector"), 0), ("toRequires", "requires", 0),
        ("toCIDR", ("list", "str"), 0), ("toCIDRSet", ("list", ("struct", "CIDRRule")), 0),
        ("toEntities", ("list", "str"), 0), ("toServices", ("list", "any"), 0),
        ("toGroups", ("list", "any"), 0), ("toNodes", ("list", "selector"), 16),
        ("toPorts", ("list", ("struct", "PortDenyRule")), 0), ("icmps", ("list", ("struct", "ICMPRule")), 0),
    ],
    "CIDRRule": [("cidr", "str", 0), ("cidrGroupRef", "str", 14), ("cidrGroupSelector", "any", 17),
                 ("except", ("list", "str"), 0)],
    "PortRule": [
        ("ports", ("list", ("struct", "PortProtocol")), 0), ("terminatingTLS", "any", 0),
        ("originatingTLS", "any", 0), ("serverNames", ("list", "str"), 0), ("listener", "any", 0),
        ("rules", ("struct", "L7Rules"), 0),
    ],
    "PortDenyRule": [("ports", ("list", ("struct", "PortProtocol")), 0)],
    "PortProtocol": [("port", "str", 0), ("endPort", "int32", 0), ("protocol", "str", 0)],
    "L7Rules": [
        ("http", ("list", ("struct", "PortRuleHTTP")), 0), ("kafka", ("list", ("struct", "PortRuleKafka")), 0),
        ("dns", ("list", ("struct", "FQDNSelector")), 0), ("l7proto", "str", 0), ("l7", ("list", "strmap"), 0),
    ],
    "PortRuleHTTP": [("path", "str", 0), ("method", "str", 0), ("host", "str", 0),
                     ("headers", ("list", "str"), 0), ("headerMatches", ("list", "any"), 0)],
    "PortRuleKafka": [("role", "str", 0), ("apiKey", "str", 0), ("apiVersion", "str", 0),
                      ("clientID", "str", 0), ("topic", "str", 0)],
    "FQDNSelector": [("matchName", "str", 0), ("matchPattern", "str", 0)],
    "ICMPRule": [("fields", ("list", ("struct", "ICMPField")), 0)],
    "ICMPField": [("family", "str", 0), ("type", "intstr", 0)],
    "DefaultDenyConfig": [("ingress", "bool", 0), ("egress", "bool", 0)],
    "LogConfig": [("value", "str", 0)],
}

# ICMP type names per family (pkg/policy/api/icmp.go, the same in 1.16 .. 1.19).
_ICMP4_NAMES = {"EchoReply", "DestinationUnreachable", "Redirect", "Echo", "EchoRequest", "RouterAdvertisement",
                "RouterSelection", "TimeExceeded", "ParameterProblem", "Timestamp", "TimestampReply", "Photuris",
                "ExtendedEchoRequest", "ExtendedEchoReply"}
_ICMP6_NAMES = {"DestinationUnreachable", "PacketTooBig", "TimeExceeded", "ParameterProblem", "EchoRequest",
                "EchoReply", "MulticastListenerQuery", "MulticastListenerReport", "MulticastListenerDone",
                "RouterSolicitation", "RouterAdvertisement", "NeighborSolicitation", "NeighborAdvertisement",
                "RedirectMessage", "RouterRenumbering", "ICMPNodeInformationQuery", "ICMPNodeInformationResponse",
                "InverseNeighborDiscoverySolicitation", "InverseNeighborDiscoveryAdvertisement",
                "HomeAgentAddressDiscoveryRequest", "HomeAgentAddressDiscoveryReply", "MobilePrefixSolicitation",
                "MobilePrefixAdvertisement", "DuplicateAddressRequestCodeSuffix",
                "DuplicateAddressConfirmationCodeSuffix", "ExtendedEchoRequest", "ExtendedEchoReply"}

# Go type names, for decode error texts only.
_GO_TYPES = {"str": "string", "int32": "int32", "bool": "bool", "strmap": "map[string]string",
             "intstr": "intstr.IntOrString"}


class _Decoder:
    def __init__(self, minor):
        self.minor = minor

    def fail(self, value, where, gotype):
        raise PolicyDecodeError("json: cannot unmarshal %s into Go struct field %s of type %s"
                                % (_go_type_name(value), where, gotype))

    def decode(self, typ, value, where):
        """Decode ``value``; returns ``_ABSENT`` for JSON null (Go leaves the zero value)."""
        if isinstance(typ, tuple) and typ[0] == "list":
            if value is None:
                return _ABSENT
            if not isinstance(value, list):
                self.fail(value, where, "[]" + self._name(typ[1]))
            out = []
            for item in value:
                decoded = self.decode(typ[1], item, where)
                out.append(self._zero(typ[1]) if decoded is _ABSENT else decoded)
            return out
        if isinstance(typ, tuple) and typ[0] == "struct":
            if value is None:
                return _ABSENT
            if not isinstance(value, dict):
                self.fail(value, where, "api." + typ[1])
            return self.decode_struct(typ[1], value)
        if typ == "any":
            return value if value is not None else _ABSENT
        if typ == "selector":
            return self.decode_selector(value, where)
        if typ == "requires":
            # 1.19: fromRequires/toRequires became []string (always empty); a selector fails.
            if self.minor >= 19:
                return self.decode(("list", "str"), value, where)
            return self.decode(("list", "selector"), value, where)
        if typ == "label":
            return self.decode_label(value)
        if value is None:
            return _ABSENT
        if typ == "str":
            if not isinstance(value, str):
                self.fail(value, where, "string")
            return value
        if typ == "bool":
            if not isinstance(value, bool):
                self.fail(value, where, "bool")
            return value
        if typ == "int32":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float):
                    raise PolicyDecodeError("json: cannot unmarshal number %s into Go struct field %s of type int32"
                                            % (json.dumps(value), where))
                self.fail(value, where, "int32")
            if not -2 ** 31 <= value < 2 ** 31:
                raise PolicyDecodeError("json: cannot unmarshal number %d into Go struct field %s of type int32"
                                        % (value, where))
            return value
        if typ == "intstr":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                self.fail(value, where, "intstr.IntOrString")
            return value
        if typ == "strmap":
            if not isinstance(value, dict):
                self.fail(value, where, "map[string]string")
            out = {}
            for key, item in value.items():
                if item is not None and not isinstance(item, str):
                    self.fail(item, where, "string")
                out[key] = item or ""
            return out
        raise AssertionError("unknown type %r" % (typ,))

    @staticmethod
    def _name(typ):
        if isinstance(typ, tuple):
            return "api." + typ[1] if typ[0] == "struct" else "[]" + _Decoder._name(typ[1])
        return {"selector": "api.EndpointSelector", "label": "labels.Label"}.get(typ, _GO_TYPES.get(typ, typ))

    @staticmethod
    def _zero(typ):
        if isinstance(typ, tuple) and typ[0] == "struct":
            return {}
        return {"str": "", "int32": 0, "bool": False}.get(typ, None)

    def decode_struct(self, name, obj):
        fields = [f for f in _STRUCTS[name] if f[2] <= self.minor]
        out = {}
        for key, value in obj.items():
            field = next((f for f in fields if f[0] == key), None)
            if field is None:  # encoding/json falls back to a case-insensitive match
                field = next((f for f in fields if f[0].lower() == key.lower()), None)
            if field is None:
                continue  # unknown field: silently ignored
            decoded = self.decode(field[1], value, "%s.%s" % (name, field[0]))
            if decoded is _ABSENT:
                out.pop(field[0], None)
            else:
                out[field[0]] = decoded
        if name == "ICMPField":
            self.icmp_field(out)
        return out

    @staticmethod
    def icmp_field(field):
        """``ICMPField.UnmarshalJSON`` (``pkg/policy/api/icmp.go``): a missing type crashes the
        agent; a type name must exist for the family."""
        if field.get("type") is None:
            raise PolicyDecodeError("panic: runtime error: invalid memory address or nil pointer dereference")
        kind = field["type"]
        if isinstance(kind, str) and kind != "0" and not re.fullmatch(r"[+-]?[0-9]+", kind):
            table = _ICMP6_NAMES if field.get("family") == "IPv6" else _ICMP4_NAMES
            if kind not in table:
                raise PolicyDecodeError("ICMP type %s not found in %s" % (kind, field.get("family", "")))

    def decode_selector(self, value, where):
        # EndpointSelector.UnmarshalJSON allocates a LabelSelector before decoding, so even
        # ``null`` yields a non-nil, empty (= select-all) selector.
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(value, where, "api.EndpointSelector")
        out = {}
        for key, item in value.items():
            lkey = key.lower()
            if lkey == "matchlabels":
                if item is None:
                    continue
                out["matchLabels"] = self.decode("strmap", item, "LabelSelector.matchLabels")
            elif lkey == "matchexpressions":
                if item is None:
                    continue
                if not isinstance(item, list):
                    self.fail(item, "LabelSelector.matchExpressions", "[]v1.LabelSelectorRequirement")
                reqs = []
                for req in item:
                    if req is None:
                        reqs.append({"key": "", "operator": ""})
                        continue
                    if not isinstance(req, dict):
                        self.fail(req, "LabelSelector.matchExpressions", "v1.LabelSelectorRequirement")
                    dec = {"key": "", "operator": ""}
                    for rkey, rval in req.items():
                        lr = rkey.lower()
                        if lr in ("key", "operator"):
                            got = self.decode("str", rval, "LabelSelectorRequirement." + lr)
                            if got is not _ABSENT:
                                dec[lr] = got
                        elif lr == "values":
                            got = self.decode(("list", "str"), rval, "LabelSelectorRequirement.values")
                            if got is not _ABSENT:
                                dec["values"] = got
                    reqs.append(dec)
                out["matchExpressions"] = reqs
        return out

    def decode_label(self, value):
        # labels.Label.UnmarshalJSON: full object form first, then the short string form.
        if isinstance(value, dict):
            aux = {"source": "", "key": "", "value": ""}
            for key, item in value.items():
                lkey = key.lower()
                if lkey in aux:
                    if item is not None and not isinstance(item, str):
                        raise PolicyDecodeError("decode of Label as string failed: json: cannot unmarshal "
                                                "object into Go value of type string")
                    aux[lkey] = item or ""
            if not aux["key"]:
                raise PolicyDecodeError("invalid Label: '%s' does not contain label key"
                                        % json.dumps(value, separators=(",", ":")))
            return (aux["source"], aux["key"], aux["value"])
        if isinstance(value, str):
            if value == "":
                raise PolicyDecodeError('invalid Label: Failed to parse "" as a string')
            return parse_label(value)
        raise PolicyDecodeError("decode of Label as string failed: json: cannot unmarshal %s into Go value "
                                "of type string" % _go_type_name(value))


class _Absent:
    def __repr__(self):
        return "<absent>"


_ABSENT = _Absent()


def decode_rules(rules, profile):
    """Decode a parsed JSON value as ``api.Rules``; raises ``PolicyDecodeError``."""
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise PolicyDecodeError("json: cannot unmarshal %s into Go value of type api.Rules" % _go_type_name(rules))
    dec = _Decoder(profile["minor"])
    out = []
    for item in rules:
        if item is None:  # []*Rule with a null element: a nil rule, rejected like an empty one
            out.append({})
            continue
        if not isinstance(item, dict):
            raise PolicyDecodeError("json: cannot unmarshal %s into Go value of type api.Rule" % _go_type_name(item))
        out.append(dec.decode_struct("Rule", item))
    return out


# --------------------------------------------------------------------------------------------
# Stage 2: validation (Rule.Sanitize / Rule.Validate)
# --------------------------------------------------------------------------------------------

ENTITIES_BASE = ("all", "world", "cluster", "host", "init", "ingress", "unmanaged", "remote-node",
                 "health", "none", "kube-apiserver")
ENTITIES_WORLD_SPLIT = ("world-ipv4", "world-ipv6")

_INGRESS_L3 = ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "fromNodes", "fromGroups")
_EGRESS_L3 = ("toCIDR", "toCIDRSet", "toEndpoints", "toEntities", "toServices", "toFQDNs", "toGroups", "toNodes")
_L3_GO_NAMES = {name: name[0].upper() + name[1:] for name in _INGRESS_L3 + _EGRESS_L3}
_L3_GO_NAMES.update({"fromCIDR": "FromCIDR", "fromCIDRSet": "FromCIDRSet", "toCIDR": "ToCIDR",
                     "toCIDRSet": "ToCIDRSet", "toFQDNs": "ToFQDNs"})

_MATCH_NAME_RE = re.compile(r"^[-a-zA-Z0-9_.]+$")
_MATCH_PATTERN_RE = re.compile(r"^[-a-zA-Z0-9_.*]+$")
_MAX_PORTS = 40
_MAX_ICMP_FIELDS = 40
_NODE_SELECTOR_ERR = 'FromNodes/ToNodes rules can only be applied when the "enable-node-selector-labels" flag is set'
_ICMP_WITH_PORTS = "The ICMPs block may only be present without ToPorts. Define a separate rule to use ToPorts."


def _l7_rules_empty(rules):
    """``L7Rules.IsEmpty``: ``Len() == 0``, the number of HTTP, Kafka, DNS and generic L7 rules
    (``pkg/policy/api/l4.go``; empty lists and a lone ``l7proto`` count as nothing)."""
    if rules is None:
        return True
    return not any(rules.get(k) for k in ("http", "kafka", "dns", "l7"))


def _patch_of(profile):
    """The patch number of the profile's ``full_version`` (``1.16.9`` -> 9); a profile without
    one stands for the newest release of its minor."""
    parts = str(profile.get("full_version") or "").split("-", maxsplit=1)[0].split(".")
    return int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 10 ** 6


# Kafka rules: cilium/proxy pkg/policy/api/kafka (PortRule.Sanitize), the same in 1.16 .. 1.19.
_KAFKA_API_KEYS = {
    "produce", "fetch", "offsets", "metadata", "leaderandisr", "stopreplica", "updatemetadata",
    "controlledshutdown", "offsetcommit", "offsetfetch", "findcoordinator", "joingroup", "heartbeat",
    "leavegroup", "syncgroup", "describegroups", "listgroups", "saslhandshake", "apiversions", "createtopics",
    "deletetopics", "deleterecords", "initproducerid", "offsetforleaderepoch", "addpartitionstotxn",
    "addoffsetstotxn", "endtxn", "writetxnmarkers", "txnoffsetcommit", "describeacls", "createacls",
    "deleteacls", "describeconfigs", "alterconfigs"}


def _kafka_sanitize(rule):
    role, key = rule.get("role", ""), rule.get("apiKey", "")
    version, topic = rule.get("apiVersion", ""), rule.get("topic", "")
    if key and role:
        raise PolicyError("cannot set both Role %s and APIKey %s together" % (_go_quote(role), _go_quote(key)))
    if key and key.lower() not in _KAFKA_API_KEYS:
        raise PolicyError("invalid Kafka APIKey %s" % _go_quote(key))
    if role and role.lower() not in ("produce", "consume"):
        raise PolicyError("invalid Kafka Role %s" % _go_quote(role))
    if version and not (re.fullmatch(r"[+-]?\d+", version) and 0 <= int(version) <= 32767):
        raise PolicyError("invalid Kafka APIVersion %s" % _go_quote(version))
    if topic:
        if len(topic) > 255:
            raise PolicyError("kafka topic exceeds maximum len of 255")
        if not re.fullmatch(r"[a-zA-Z0-9\\._\-]+", topic):
            raise PolicyError("invalid Kafka Topic name %s" % _go_quote(topic))


class _Validator:
    def __init__(self, profile, enable_l7_proxy, enable_node_selector_labels, enable_icmp_rules):
        self.profile = profile
        self.minor = profile["minor"]
        patch = _patch_of(profile)
        # 1.19 validates with IngressCommonRule/EgressCommonRule.Validate (structure below).
        self.newest = bool(profile.get("lowercase_combining"))
        # Messages lower-cased in 1.16.7 and 1.17.0 (docs/upstream.md#rule-validation-per-release-recorded).
        self.lower = self.minor > 16 or (self.minor == 16 and patch >= 7)
        # 1.16.5+ (1.16 branch only) refuses port ranges with any L7 rule.
        self.l7_port_ranges = self.minor == 16 and patch >= 5
        # Host-policy L7 checks per direction from 1.17; one message before.
        self.host_split = self.minor >= 17
        self.l7_proxy = enable_l7_proxy
        self.node_labels = enable_node_selector_labels
        self.icmp = enable_icmp_rules
        entities = set(ENTITIES_BASE)
        if profile.get("world_ipv4_entities"):
            entities.update(ENTITIES_WORLD_SPLIT)
        self.entities = entities

    # -- message helpers: 1.19 lower-cased a handful of messages ------------------------------
    def msg(self, old, new):
        return new if self.lower else old

    def combining(self, m1, m2):
        return "%s %s and %s is not supported yet" % (self.msg("Combining", "combining"), m1, m2)

    # -- selectors ---------------------------------------------------------------------------
    def selector(self, sel):
        extended = {}
        if "matchLabels" in sel:
            extended["matchLabels"] = {_extended_key(k): v for k, v in sel["matchLabels"].items()}
        if "matchExpressions" in sel:
            extended["matchExpressions"] = [dict(r, key=_extended_key(r["key"])) for r in sel["matchExpressions"]]
        err = _validate_label_selector(extended, newer=self.newest)
        if err:
            raise PolicyError("invalid label selector: " + err)

    # -- rule --------------------------------------------------------------------------------
    def rule(self, rule):
        directions = ("ingress", "ingressDeny", "egress", "egressDeny")
        if self.profile.get("requires_rule_direction") and not any(rule.get(d) for d in directions):
            raise PolicyError("rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny")
        has_es, has_ns = "endpointSelector" in rule, "nodeSelector" in rule
        if not has_es and not has_ns:
            raise PolicyError("rule must have one of EndpointSelector or NodeSelector")
        if has_es and has_ns:
            raise PolicyError("rule cannot have both EndpointSelector and NodeSelector")
        if has_es:
            self.selector(rule["endpointSelector"])
        host = has_ns
        if host:
            self.selector(rule["nodeSelector"])
        # IngressDeny/EgressDeny validation: 1.17, backported to 1.16.7
        # (docs/upstream.md#rule-validation-per-release-recorded).
        validate_deny = self.profile.get("validate_deny_rules") or self.lower
        for item in rule.get("ingress", []):
            self.ingress(item, host)
            if host and not self.host_split and self.l7_members(item.get("toPorts")):
                raise PolicyError("host policies do not support L7 rules yet")
        if validate_deny:
            for item in rule.get("ingressDeny", []):
                self.deny(item, _INGRESS_L3, ingress=True)
        for item in rule.get("egress", []):
            self.egress(item, host)
            if host and not self.host_split and self.l7_members(item.get("toPorts")):
                raise PolicyError("host policies do not support L7 rules yet")
        if validate_deny:
            for item in rule.get("egressDeny", []):
                self.deny(item, _EGRESS_L3, ingress=False)

    @staticmethod
    def l7_members(port_rules):
        """``countL7Rules``: a map that has all three keys as soon as one PortRule has L7 rules."""
        counts = {}
        for pr in port_rules or []:
            if not _l7_rules_empty(pr.get("rules")):
                for kind, key in (("DNS", "dns"), ("HTTP", "http"), ("Kafka", "kafka")):
                    counts[kind] = counts.get(kind, 0) + len(pr["rules"].get(key) or [])
        return counts

    def l3_combining(self, item, members):
        present = [m for m in members if item.get(m)]
        if len(present) > 1:
            # Go iterates a map here, so the pair named varies between runs; we name the first
            # two in declaration order.
            raise PolicyError(self.combining(_L3_GO_NAMES[present[0]], _L3_GO_NAMES[present[1]]))

    def common_newest(self, item, members, nodes_key):
        """``IngressCommonRule.Validate`` / ``EgressCommonRule.Validate`` (1.19)."""
        self.l3_combining(item, members)
        ret = _NODE_SELECTOR_ERR if (item.get(nodes_key) and not self.node_labels) else None

        def join(err):
            return err + ("\n" + ret if ret else "")

        try:
            for key in (members[0] if members is _INGRESS_L3 else "toEndpoints", nodes_key):
                for sel in item.get(key, []):
                    self.selector(sel)
            for cidr in item.get(self._cidr_key(members), []):
                self.cidr(cidr)
            for rule in item.get(self._cidr_key(members) + "Set", []):
                self.cidr_rule(rule)
            for entity in item.get(self._entities_key(members), []):
                if entity not in self.entities:
                    raise PolicyError("unsupported entity: %s" % entity)
        except PolicyError as exc:
            raise PolicyError(join(exc.message))
        if ret:
            raise PolicyError(ret)

    @staticmethod
    def _cidr_key(members):
        return "fromCIDR" if members is _INGRESS_L3 else "toCIDR"

    @staticmethod
    def _entities_key(members):
        return "fromEntities" if members is _INGRESS_L3 else "toEntities"

    def icmp_checks(self, item):
        if item.get("icmps") and not self.icmp:
            raise PolicyError('ICMP rules can only be applied when the "enable-icmp-rules" flag is set')
        if item.get("icmps") and item.get("toPorts"):
            raise PolicyError(self.msg(_ICMP_WITH_PORTS, _ICMP_WITH_PORTS[0].lower() + _ICMP_WITH_PORTS[1:-1]))

    def icmp_fields(self, item):
        for icmp in item.get("icmps", []):
            fields = icmp.get("fields", [])
            if len(fields) > _MAX_ICMP_FIELDS:
                raise PolicyError("too many types, the max is %d" % _MAX_ICMP_FIELDS)
            for field in fields:
                family = field.get("family", "")
                if family not in ("IPv4", "IPv6", ""):
                    raise PolicyError("wrong family: %s" % family)

    def l7_checks(self, item, direction, host):
        l7 = self.l7_members(item.get("toPorts"))
        if self.host_split and host and direction == "ingress" and l7:
            raise PolicyError("L7 policy is not supported on host ingress yet")
        if l7 and not self.l7_proxy:
            raise PolicyError("L7 policy is not supported since L7 proxy is not enabled")
        for member in ("DNS", "HTTP", "Kafka"):
            if not l7.get(member):
                continue
            if direction == "ingress" and member == "DNS":
                raise PolicyError("L7 protocol DNS is not supported on ingress yet")
            if direction == "egress" and self.host_split and host and member != "DNS":
                raise PolicyError("L7 protocol %s is not supported on host egress yet" % member)

    def ingress(self, item, host):
        if self.newest:
            self.common_newest(item, _INGRESS_L3, "fromNodes")
            self.l7_checks(item, "ingress", host)
            self.icmp_checks(item)
            for pr in item.get("toPorts", []):
                self.port_rule(pr, ingress=True)
            self.icmp_fields(item)
            return
        self.l3_combining(item, _INGRESS_L3)
        self.l7_checks(item, "ingress", host)
        self.icmp_checks(item)
        ret = _NODE_SELECTOR_ERR if (item.get("fromNodes") and not self.node_labels) else None
        for key in ("fromEndpoints", "fromRequires"):
            for sel in item.get(key, []):
                self.selector(sel)
        for pr in item.get("toPorts", []):
            self.port_rule(pr, ingress=True)
        self.icmp_fields(item)
        for sel in item.get("fromNodes", []):
            self.selector(sel)
        for cidr in item.get("fromCIDR", []):
            self.cidr(cidr)
        for rule in item.get("fromCIDRSet", []):
            self.cidr_rule(rule)
        for entity in item.get("fromEntities", []):
            if entity not in self.entities:
                raise PolicyError("unsupported entity: %s" % entity)
        if ret:
            raise PolicyError(ret)

    def egress(self, item, host):
        if self.newest:
            self.common_newest(item, _EGRESS_L3, "toNodes")
            self.l7_checks(item, "egress", host)
            self.icmp_checks(item)
            for pr in item.get("toPorts", []):
                self.port_rule(pr, ingress=False)
            self.icmp_fields(item)
            for fqdn in item.get("toFQDNs", []):
                self.fqdn(fqdn)
            return
        self.l3_combining(item, _EGRESS_L3)
        # toServices with toPorts is accepted from 1.17 (docs/upstream.md#rule-validation-per-release-recorded).
        if self.minor < 17 and item.get("toServices") and item.get("toPorts"):
            raise PolicyError(self.combining("ToServices", "ToPorts"))
        self.l7_checks(item, "egress", host)
        self.icmp_checks(item)
        ret = _NODE_SELECTOR_ERR if (item.get("toNodes") and not self.node_labels) else None
        for key in ("toEndpoints", "toRequires"):
            for sel in item.get(key, []):
                self.selector(sel)
        for pr in item.get("toPorts", []):
            self.port_rule(pr, ingress=False)
        self.icmp_fields(item)
        for sel in item.get("toNodes", []):
            self.selector(sel)
        for cidr in item.get("toCIDR", []):
            self.cidr(cidr)
        for rule in item.get("toCIDRSet", []):
            self.cidr_rule(rule)
        for entity in item.get("toEntities", []):
            if entity not in self.entities:
                raise PolicyError("unsupported entity: %s" % entity)
        for fqdn in item.get("toFQDNs", []):
            self.fqdn(fqdn)
        if ret:
            raise PolicyError(ret)

    def deny(self, item, members, ingress):
        """IngressDeny/EgressDeny validation (PR #36598, 1.17; backported to late 1.16.x)."""
        nodes_key = "fromNodes" if ingress else "toNodes"
        if self.newest:
            self.common_newest(item, members, nodes_key)
        else:
            self.l3_combining(item, members)
            for key in (members[0] if ingress else "toEndpoints", nodes_key):
                for sel in item.get(key, []):
                    self.selector(sel)
            for cidr in item.get(self._cidr_key(members), []):
                self.cidr(cidr)
            for rule in item.get(self._cidr_key(members) + "Set", []):
                self.cidr_rule(rule)
            for entity in item.get(self._entities_key(members), []):
                if entity not in self.entities:
                    raise PolicyError("unsupported entity: %s" % entity)
            if item.get(nodes_key) and not self.node_labels:
                raise PolicyError(_NODE_SELECTOR_ERR)
        if not ingress and item.get("toServices") and item.get("toPorts"):
            raise PolicyError(self.combining("ToServices", "ToPorts"))
        self.icmp_checks(item)
        for pr in item.get("toPorts", []):
            ports = pr.get("ports", [])
            if len(ports) > _MAX_PORTS:
                raise PolicyError("too many ports, the max is %d" % _MAX_PORTS)
            for pp in ports:
                self.port_protocol(pp, has_dns=False)
        self.icmp_fields(item)

    # -- L4 / L7 -----------------------------------------------------------------------------
    def port_rule(self, pr, ingress):
        rules = pr.get("rules")
        has_dns = bool(rules and rules.get("dns"))
        rules_empty = _l7_rules_empty(rules)
        if ingress and has_dns:
            raise PolicyError("DNS rules are not allowed on ingress")
        if pr.get("serverNames") and not rules_empty and "terminatingTLS" not in pr:
            raise PolicyError("ServerNames are not allowed with L7 rules without TLS termination")
        if "" in pr.get("serverNames", []):
            raise PolicyError(self.msg("Empty server name is not allowed", "empty server name is not allowed"))
        ports = pr.get("ports", [])
        if len(ports) > _MAX_PORTS:
            raise PolicyError("too many ports, the max is %d" % _MAX_PORTS)
        have_zero = False
        for pp in ports:
            if self.port_protocol(pp, has_dns, has_l7=not rules_empty):
                have_zero = True
            proto = (pp.get("protocol") or "ANY").upper()
            if not rules_empty and not has_dns and proto != "TCP":
                raise PolicyError("L7 rules can only apply to TCP (not %s) except for DNS rules" % proto)
        listener = pr.get("listener")
        if listener is not None:
            name = listener.get("name", "") if isinstance(listener, dict) else ""
            if ingress:
                raise PolicyError("Listener is not allowed on ingress (%s)" % name)
            if not rules_empty:
                raise PolicyError("Listener is not allowed with L7 rules (%s)" % name)
        if not rules_empty:
            if have_zero:
                raise PolicyError("L7 rules can not be used when a port is 0")
            self.l7_rules(rules, ports)

    def port_protocol(self, pp, has_dns, has_l7=False):
        """Returns True for port 0."""
        port = pp.get("port", "")
        is_zero = False
        if port == "":
            # "port must be specified" in 1.19 (rule_validation.go); capitalised before.
            raise PolicyError("port must be specified" if self.newest else "Port must be specified")
        if not _is_iana_svc_name(port):
            if self.newest and port != "0" and pp.get("protocol") in ("VRRP", "IGMP"):
                raise PolicyError("port must be empty or 0")
            value, err = _go_parse_uint16(port)
            if err:
                raise PolicyError(self.msg("Unable to parse port: ", "unable to parse port: ") + err)
            is_zero = value == 0
            if self.l7_port_ranges:
                if has_l7 and pp.get("endPort", 0) > value:
                    raise PolicyError("L7 rules do not support port ranges")
            elif has_dns and pp.get("endPort", 0) > value:
                raise PolicyError("DNS rules do not support port ranges")
        proto = pp.get("protocol", "")
        if proto:
            allowed = ["TCP", "UDP", "SCTP", "ANY"] if self.profile.get("sctp") else ["TCP", "UDP", "ANY"]
            if self.newest:  # 1.19: VRRP and IGMP (pkg/policy/api/utils.go)
                allowed[-1:-1] = ["VRRP", "IGMP"]
            if proto.upper() not in allowed:
                choices = "{ %s }" % " | ".join(a.lower() for a in allowed)
                raise PolicyError("invalid protocol %s, must be %s" % (_go_quote(proto.upper()), choices))
        return is_zero

    def l7_rules(self, rules, ports):
        n_types = 0
        if "http" in rules:
            n_types += 1
            for http in rules["http"]:
                for key in ("path", "method"):
                    if http.get(key):
                        err = _go_regexp_error(http[key])
                        if err:
                            raise PolicyError(err)
                for match in http.get("headerMatches", []):
                    if not isinstance(match, dict) or not match.get("name"):
                        raise PolicyError("Header name missing")
                    if match.get("mismatch", "") not in ("", "LOG", "ADD", "DELETE", "REPLACE"):
                        raise PolicyError("Invalid header action: %s" % match.get("mismatch"))
                    secret = match.get("secret")
                    if isinstance(secret, dict) and not secret.get("name"):
                        raise PolicyError("Secret name missing")
                if http.get("host"):
                    err = _go_regexp_error(http["host"])
                    if err:
                        raise PolicyError(err)
        if "kafka" in rules:
            n_types += 1
            for kafka in rules["kafka"]:
                _kafka_sanitize(kafka)
        if "dns" in rules:
            if not ports:
                raise PolicyError(self.msg("Port 53 must be specified for DNS rules",
                                           "port 53 must be specified for DNS rules"))
            n_types += 1
            for dns in rules["dns"]:
                self.dns_rule(dns, selector=False)
        if "l7" in rules and not rules.get("l7proto"):
            raise PolicyError("'l7' may only be specified when a 'l7proto' is also specified")
        if rules.get("l7proto"):
            n_types += 1
        if n_types > 1:
            raise PolicyError("multiple L7 protocol rule types specified in single rule")

    def dns_rule(self, dns, selector):
        """1.19 (pkg/policy/api/fqdn.go, pkg/fqdn/matchpattern) names the underscore in the
        FQDNSelector's MatchName message and in every MatchPattern message."""
        name, pattern = dns.get("matchName", ""), dns.get("matchPattern", "")
        if name and not _MATCH_NAME_RE.match(name):
            chars = "., -, _" if self.newest and selector else ". and -"
            raise PolicyError('Invalid characters in MatchName: "%s". Only 0-9, a-z, A-Z and %s '
                              'characters are allowed' % (name, chars))
        if pattern and not _MATCH_PATTERN_RE.match(pattern):
            chars = "., -, _" if self.newest else "., -"
            raise PolicyError('Invalid characters in MatchPattern: "%s". Only 0-9, a-z, A-Z and %s and * '
                              'characters are allowed' % (pattern, chars))

    def fqdn(self, fqdn):
        if fqdn.get("matchName") and fqdn.get("matchPattern"):
            raise PolicyError("only one of MatchName or MatchPattern is allowed in an FQDNSelector")
        self.dns_rule(fqdn, selector=True)

    # -- CIDR --------------------------------------------------------------------------------
    def cidr(self, text):
        if text == "":
            raise PolicyError("IP must be specified")
        network = _go_parse_prefix(text)[0]
        if network is None:
            err = _go_parse_addr_error(text)
            if err:
                raise PolicyError("unable to parse CIDR: " + err)

    def cidr_rule(self, rule):
        if self.minor >= 17:
            # Exactly one of cidr, cidrGroupRef, cidrGroupSelector (rule_validation.go, 1.17+).
            count = (bool(rule.get("cidr")) + bool(rule.get("cidrGroupRef"))
                     + (rule.get("cidrGroupSelector") is not None))
            group_sel = rule.get("cidrGroupSelector")
            if group_sel is not None:
                extended = {}
                if isinstance(group_sel, dict) and group_sel.get("matchLabels"):
                    extended["matchLabels"] = {_extended_key(k, "cidrgroup"): v
                                               for k, v in group_sel["matchLabels"].items()}
                if isinstance(group_sel, dict) and group_sel.get("matchExpressions"):
                    extended["matchExpressions"] = [dict(r, key=_extended_key(r.get("key", ""), "cidrgroup"))
                                                    for r in group_sel["matchExpressions"]]
                err = _validate_label_selector(extended, newer=self.newest)
                if err:
                    raise PolicyError("failed to parse cidrGroupSelector %s: invalid label selector: %s"
                                      % (self._selector_text(group_sel), err))
            if count == 0:
                raise PolicyError("one of cidr, cidrGroupRef, or cidrGroupSelector is required")
            if count > 1:
                raise PolicyError("more than one of cidr, cidrGroupRef, or cidrGroupSelector may not be set")
        if rule.get("cidrGroupRef") or rule.get("cidrGroupSelector") is not None:
            if self.minor <= 16 and rule.get("except"):
                # 1.16 dereferences the missing prefix and crashes.
                raise PolicyError("panic: runtime error: invalid memory address or nil pointer dereference")
            return  # group references are resolved elsewhere; not validated as CIDRs
        text = rule.get("cidr", "")
        network, err = _go_parse_prefix(text)
        if err:
            raise PolicyError("%s CIDRRule %s: %s" % (
                self.msg("Unable to parse", "unable to parse"), _go_quote(text), err))
        for exc in rule.get("except", []):
            except_net, err = _go_parse_prefix(exc)
            if err:
                raise PolicyError(err)
            # prefix.Contains(except.Addr()): the exception's address as written.
            addr = ipaddress.ip_address(exc.rsplit("/", 1)[0])
            if addr.version != network.version or addr not in network:
                raise PolicyError("allow CIDR prefix %s does not contain exclude CIDR prefix %s" % (text, exc))
            if self.minor <= 16 and except_net.prefixlen < network.prefixlen:
                # 1.16 computes the remaining prefixes with a negative size and crashes.
                raise PolicyError("panic: runtime error: makeslice: cap out of range")

    def _selector_text(self, sel):
        """``%v`` of the cidrGroupSelector: the generated ``LabelSelector.String()`` up to 1.18,
        JSON in 1.19."""
        if self.newest:
            shown = {k: sel[k] for k in ("matchLabels", "matchExpressions") if sel.get(k)}
            return json.dumps(shown, separators=(",", ":"))
        labels = sel.get("matchLabels") or {}
        out = "&LabelSelector{MatchLabels:map[string]string{" + "".join(
            "%s: %s," % (k, labels[k]) for k in sorted(labels)) + "},MatchExpressions:[]LabelSelectorRequirement{"
        for req in sel.get("matchExpressions") or []:
            out += "LabelSelectorRequirement{Key:%s,Operator:%s,Values:[%s],}," % (
                req.get("key", ""), req.get("operator", ""), " ".join(req.get("values") or []))
        return out + "},}"


# --------------------------------------------------------------------------------------------
# Stage 3: sanitised output (json.MarshalIndent of the stored api.Rule)
# --------------------------------------------------------------------------------------------

def _sanitize_selector(sel):
    out = {}
    if sel.get("matchLabels"):
        converted = {_cilium_key(_extended_key(k)): v for k, v in sel["matchLabels"].items()}
        out["matchLabels"] = {k: converted[k] for k in sorted(converted)}  # Go sorts map keys
    if sel.get("matchExpressions"):
        reqs = []
        for req in sel["matchExpressions"]:
            item = {"key": _cilium_key(_extended_key(req["key"])), "operator": req["operator"]}
            if req.get("values"):
                item["values"] = list(req["values"])
            reqs.append(item)
        out["matchExpressions"] = reqs
    return out


def _encode(typ, value):
    if isinstance(typ, tuple) and typ[0] == "list":
        return [_encode(typ[1], item) for item in value]
    if isinstance(typ, tuple) and typ[0] == "struct":
        return _encode_struct(typ[1], value)
    if typ == "strmap":
        return {k: value[k] for k in sorted(value)}
    if typ == "selector":
        return _sanitize_selector(value)
    if typ == "label":
        source, key, val = value
        out = {"key": key}
        if val:
            out["value"] = val
        out["source"] = source
        return out
    return value


def _is_empty(value):
    """Go ``omitempty``: zero numbers, false, empty strings, empty slices and maps."""
    if isinstance(value, bool):
        return not value
    return value is None or value == "" or value == 0 or (isinstance(value, (list, dict)) and not value)


def _encode_struct(name, obj):
    out = {}
    for key, typ, _minor in _STRUCTS[name]:
        if key not in obj:
            continue
        value = obj[key]
        if name == "PortProtocol" and key == "protocol":
            value = (value or "ANY").upper()
        elif name == "PortProtocol" and key == "port" and _is_iana_svc_name(value):
            value = value.lower()
        encoded = _encode(typ, value)
        # Selectors and struct pointers (``"rules": {}``) are kept when set; a few fields have
        # no omitempty tag at all.
        keep_empty = typ == "selector" or (isinstance(typ, tuple) and typ[0] == "struct") or key in (
            "key", "source", "cidr", "type") or (typ == "bool" and name == "DefaultDenyConfig")
        if not keep_empty and _is_empty(encoded):
            continue
        out[key] = encoded
    if name == "PortProtocol" and "protocol" not in out:
        out["protocol"] = "ANY"
    return out


def _sanitize_rule(rule, profile):
    out = _encode_struct("Rule", rule)
    if profile.get("enable_default_deny_field"):
        # Sanitize fills in the default posture: deny in a direction that has rules.
        dd = dict(rule.get("enableDefaultDeny") or {})
        if "ingress" not in dd:
            dd["ingress"] = bool(rule.get("ingress") or rule.get("ingressDeny"))
        if "egress" not in dd:
            dd["egress"] = bool(rule.get("egress") or rule.get("egressDeny"))
        ordered = {"ingress": dd["ingress"], "egress": dd["egress"]}
        rebuilt = {}
        for key in out:
            if key == "enableDefaultDeny":
                continue
            if key in ("description", "log") and "enableDefaultDeny" not in rebuilt:
                rebuilt["enableDefaultDeny"] = ordered
            rebuilt[key] = out[key]
        rebuilt.setdefault("enableDefaultDeny", ordered)
        out = rebuilt
    return out


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def validate_decoded(decoded, profile, enable_l7_proxy=True, enable_node_selector_labels=False,
                     enable_icmp_rules=True):
    validator = _Validator(profile, enable_l7_proxy, enable_node_selector_labels, enable_icmp_rules)
    for rule in decoded:
        validator.rule(rule)
    return [_sanitize_rule(rule, profile) for rule in decoded]


def validate_rules(rules, profile, enable_l7_proxy=True, enable_node_selector_labels=False,
                   enable_icmp_rules=True):
    """Decode, validate and sanitise ``rules`` (a parsed JSON list) as the agent would.

    Returns the sanitised rules (what ``GET /policy`` shows).  Raises ``PolicyDecodeError``
    (HTTP 400, empty body) for JSON type errors and ``PolicyError`` (HTTP 500) for rejected rules.
    """
    decoded = decode_rules(rules, profile)
    return validate_decoded(decoded, profile, enable_l7_proxy, enable_node_selector_labels,
                            enable_icmp_rules)


def rule_labels(rule):
    """The ``(source, key, value)`` labels of a sanitised rule."""
    return [(lbl["source"], lbl["key"], lbl.get("value", "")) for lbl in rule.get("labels", [])]


def labels_contain(rule_lbls, needed):
    """``LabelArray.Contains``: every needed label is present; needed source ``any`` matches all."""
    for nsrc, nkey, nval in needed:
        if not any(key == nkey and val == nval and (src == nsrc or nsrc == SOURCE_ANY)
                   for src, key, val in rule_lbls):
            return False
    return True
