"""The IPv4 range filters the agent role plans each node's --ipv4-range with: the exact subnet of
an index, the exact overlaps, and the message a user gets for input that cannot be used."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.netreap.cilium.plugins.filter import ipv4
from ansible_collections.netreap.cilium.plugins.filter.ipv4 import ipv4_overlaps, ipv4_subnet
from tests.support.filters import signature_mismatches


@pytest.mark.parametrize("network, prefix, index, expected", [
    ("10.200.0.0/16", 24, 0, "10.200.0.0/24"),
    ("10.200.0.0/16", 24, 3, "10.200.3.0/24"),
    ("10.200.0.0/16", 24, 255, "10.200.255.0/24"),   # the last one
    ("10.210.0.0/16", 25, 9, "10.210.4.128/25"),
    ("10.210.0.0/16", "25", "9", "10.210.4.128/25"),  # inventory values are often strings
    ("192.0.2.0/24", 32, 255, "192.0.2.255/32"),      # /32: one address per node
    ("192.0.2.7/32", 32, 0, "192.0.2.7/32"),
    ("0.0.0.0/0", 1, 1, "128.0.0.0/1"),
    ("255.255.255.0/24", 26, 3, "255.255.255.192/26"),
])
def test_subnet_is_the_index_th_of_its_length(network, prefix, index, expected):
    assert ipv4_subnet(network, prefix, index) == expected


@pytest.mark.parametrize("network", ["10.210.0.0/25", "192.0.2.7/32", "0.0.0.0/0"])
def test_subnet_without_arguments_is_the_network_itself(network):
    assert ipv4_subnet(network) == network


@pytest.mark.parametrize("network, prefix, index, message", [
    # exhausted: more nodes than the cluster range has room for
    ("10.200.0.0/16", 24, 256, "index 256 is outside 10.200.0.0/16, which has room for 256 /24 subnets (index 0 to 255)"),
    ("10.200.0.0/16", 24, -1, "index -1 is outside 10.200.0.0/16, which has room for 256 /24 subnets (index 0 to 255)"),
    ("192.0.2.7/32", None, 1, "index 1 is outside 192.0.2.7/32, which has room for 1 /32 subnet (index 0 to 0)"),
    ("10.200.0.0/16", 8, 0, "cannot split 10.200.0.0/16 into /8 subnets"),
    ("10.200.0.0/16", 33, 0, "cannot split 10.200.0.0/16 into /33 subnets"),
    ("10.200.0.1/24", 26, 0, "10.200.0.1/24 has host bits set (the network is 10.200.0.0/24)"),
    ("10.200.0.0/16", "24a", 0, "prefix must be a whole number, got '24a'"),
    ("10.200.0.0/16", True, 0, "prefix must be a whole number, got bool True"),
    ("10.200.0.0/16", 24, 1.5, "index must be a whole number, got float 1.5"),
])
def test_subnet_refuses_what_it_cannot_plan(network, prefix, index, message):
    with pytest.raises(AnsibleFilterError) as raised:
        ipv4_subnet(network, prefix, index)
    assert raised.value.message == message


@pytest.mark.parametrize("network", ["10.300.0.0/16", "10.200.0.0", "10.200.0.0/255.255.0.0", "010.200.0.0/16",
                                     "10.200.0.0/33", "10.200.0/16", " 10.200.0.0/16", "", "fd00::/64"])
def test_subnet_refuses_what_is_not_a_network(network):
    with pytest.raises(AnsibleFilterError) as raised:
        ipv4_subnet(network)
    assert raised.value.message == "'%s' is not an IPv4 network (a.b.c.d/len)" % network


@pytest.mark.parametrize("value, shown", [(None, "NoneType None"), (167772160, "int 167772160"),
                                          (["10.0.0.0/8"], "list ['10.0.0.0/8']")])
def test_subnet_refuses_what_is_not_a_string(value, shown):
    with pytest.raises(AnsibleFilterError) as raised:
        ipv4_subnet(value)
    assert raised.value.message == "a network must be a string a.b.c.d/len, got " + shown


PEERS = {"node3": "10.200.8.0/24", "node2": "10.200.0.0/23", "node0": "10.200.0.0/24", "node1": "10.200.1.0/24"}


@pytest.mark.parametrize("network, others, expected", [
    # a mapping: the names, sorted; equal and containing ranges overlap, a neighbour does not
    ("10.200.0.0/24", PEERS, ["node0", "node2"]),
    ("10.200.0.0/23", PEERS, ["node0", "node1", "node2"]),
    ("10.200.2.0/24", PEERS, []),
    # a list: the networks, in the order given, each once
    ("172.18.5.0/24", ["192.168.0.0/16", "172.18.0.0/16", "172.16.0.0/12", "172.18.0.0/16"],
     ["172.18.0.0/16", "172.16.0.0/12"]),
    # /32 at the edges: the last address is inside, the next one is not
    ("10.200.0.0/24", ["10.200.0.255/32", "10.200.1.0/32", "10.199.255.255/32", "10.200.0.0/32"],
     ["10.200.0.255/32", "10.200.0.0/32"]),
    ("10.200.0.7/32", {"a": "10.200.0.7/32", "b": "10.200.0.6/32"}, ["a"]),
    ("0.0.0.0/0", ["10.0.0.0/8", "255.255.255.255/32"], ["10.0.0.0/8", "255.255.255.255/32"]),
    ("10.200.0.0/24", [], []),
    ("10.200.0.0/24", {}, []),
])
def test_overlaps_names_exactly_the_overlapping(network, others, expected):
    assert ipv4_overlaps(network, others) == expected


@pytest.mark.parametrize("network, others, message", [
    ("10.200.0.0/24", {"node2": "10.200.0.1/23"}, "node2: 10.200.0.1/23 has host bits set (the network is 10.200.0.0/23)"),
    ("10.200.0.0/24", {"node2": ""}, "node2: '' is not an IPv4 network (a.b.c.d/len)"),
    ("10.200.0.0/24", {"node2": None}, "node2: a network must be a string a.b.c.d/len, got NoneType None"),
    ("10.200.0.0/24", ["172.17.0.0/16", "172.18.0.1/16"], "172.18.0.1/16 has host bits set (the network is 172.18.0.0/16)"),
    ("10.200.0.9/24", ["172.17.0.0/16"], "10.200.0.9/24 has host bits set (the network is 10.200.0.0/24)"),
    ("10.200.0.0/24", "172.17.0.0/16",
     "the networks to compare with must be a mapping (name: network) or a list, got str"),
])
def test_overlaps_refuses_bad_networks_and_names_them(network, others, message):
    with pytest.raises(AnsibleFilterError) as raised:
        ipv4_overlaps(network, others)
    assert raised.value.message == message


def test_documentation_matches_the_filters():
    """ansible-doc shows, for each filter, exactly the options it takes and their defaults."""
    assert sorted(ipv4.FilterModule().filters()) == ["ipv4_overlaps", "ipv4_subnet"]
    assert signature_mismatches(ipv4) == []
