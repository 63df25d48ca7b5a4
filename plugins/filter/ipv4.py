# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPv4 range planning for the agent role (the per-node ``--ipv4-range``): carve one node's range
out of a cluster range and find which other ranges overlap it. Runs on the controller with the
standard library only, so a play needs neither netaddr nor ansible.utils.

The documentation of each filter is in the file next to this one named after it."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# Dotted quad with decimal octets (no leading zeros beyond a single 0) and an explicit length:
# a bare address or a netmask would be accepted by ipaddress but is not what the role documents.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_NETWORK = re.compile(r"^%s(?:\.%s){3}/(?:3[0-2]|[12][0-9]|[0-9])$" % (_OCTET, _OCTET))


def _network(value, name=None):
    """``value`` as an IPv4Network, or AnsibleFilterError saying what is wrong with it (after
    ``name``, the key it was found under, if any)."""
    where = "%s: " % name if name is not None else ""
    if not isinstance(value, str):
        raise AnsibleFilterError("%sa network must be a string a.b.c.d/len, got %s %r" % (where, type(value).__name__, value))
    if not _NETWORK.match(value):
        raise AnsibleFilterError("%s'%s' is not an IPv4 network (a.b.c.d/len)" % (where, value))
    network = ipaddress.IPv4Network(value, strict=False)
    if str(network) != value:
        raise AnsibleFilterError("%s%s has host bits set (the network is %s)" % (where, value, network))
    return network


def _integer(value, name):
    """A whole number given as int or as a string of digits (inventory values are often strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AnsibleFilterError("%s must be a whole number, got %s %r" % (name, type(value).__name__, value))
    try:
        return int(value)
    except ValueError:
        raise AnsibleFilterError("%s must be a whole number, got %r" % (name, value)) from None


def ipv4_subnet(network, prefix=None, index=0):
    """The ``index``-th subnet of length ``prefix`` of ``network`` (by default the network itself)."""
    parent = _network(network)
    length = parent.prefixlen if prefix is None else _integer(prefix, "prefix")
    position = _integer(index, "index")
    if not parent.prefixlen <= length <= 32:
        raise AnsibleFilterError("cannot split %s into /%d subnets" % (network, length))
    count = 2 ** (length - parent.prefixlen)
    if not 0 <= position < count:
        raise AnsibleFilterError("index %d is outside %s, which has room for %d /%d subnet%s (index 0 to %d)"
                                 % (position, network, count, length, "s" if count > 1 else "", count - 1))
    first = int(parent.network_address) + position * 2 ** (32 - length)
    return "%s/%d" % (ipaddress.IPv4Address(first), length)


def ipv4_overlaps(network, others):
    """What of ``others`` (a mapping name -> network, or a list of networks) overlaps ``network``."""
    mine = _network(network)
    if isinstance(others, Mapping):
        named = [(name, _network(others[name], name)) for name in sorted(others, key=str)]
    elif isinstance(others, (list, tuple)):
        named = [(other, _network(other)) for other in others]
    else:
        raise AnsibleFilterError("the networks to compare with must be a mapping (name: network) or a list,"
                                 " got %s" % type(others).__name__)
    found = []
    for name, other in named:
        if mine.overlaps(other) and name not in found:
            found.append(name)
    return found


class FilterModule:
    """IPv4 range planning."""

    def filters(self):
        return {"ipv4_subnet": ipv4_subnet, "ipv4_overlaps": ipv4_overlaps}
