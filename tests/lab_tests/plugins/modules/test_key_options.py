"""Key options with an empty or "."/".." segment are refused before any request.

Consul answers such a key path with a 301 to the cleaned path and writes nothing (the conformance
suite checks that on the simulator and on a real Consul), and the modules do not follow
redirects: such an option would fail on every real server.  Every module that builds a kvstore
key from an option refuses it up front, naming the option."""

import pytest

from tests.support.modules import CONSUL_KINDS, kvstore_args, run_module

EMPTY = "must not contain an empty segment ('//')"
CASES = [
    ("cilium_node_gc", "cluster_name", "eu/west", "cluster_name 'eu/west' must be a single name without '/'"),
    ("cilium_node_gc", "cluster_name", "..", "cluster_name must not be '..'"),
    ("cilium_node_gc", "gc_state_prefix", "netreap//gc", "gc_state_prefix 'netreap//gc' " + EMPTY),
    ("cilium_node_gc", "lock_key", "service/./leader", "lock_key 'service/./leader' must not contain a '.' segment"),
    ("cilium_identity_gc", "gc_state_prefix", "netreap/gc/../v1",
     "gc_state_prefix 'netreap/gc/../v1' must not contain a '..' segment"),
    ("cilium_identity_gc", "lock_key", "service/netreaper/", "lock_key 'service/netreaper/' must not end with '/'"),
    ("cilium_policy", "consul_key", "netreap.io//policy",
     "consul_key 'netreap.io//policy' " + EMPTY + ": Consul answers such a key with a redirect to "
     "'netreap.io/policy' and writes nothing"),
]


@pytest.mark.parametrize("consul", CONSUL_KINDS)
@pytest.mark.parametrize("module, option, value, message", CASES,
                         ids=["%s-%s-%s" % (c[0], c[1], c[2]) for c in CASES])
def test_key_option_with_empty_or_dot_segment_is_refused_before_any_request(
        lab_factory, consul, module, option, value, message):
    lab = lab_factory(nodes=1, cilium="1.16", kvstore="consul", scenario="clean", consul=consul)
    lab.log.clear()
    if module == "cilium_policy":
        args = {"consul_address": lab.consul_endpoint.url, "cilium_socket": lab.nodes[0].socket_path,
                "rules": [], "publish": True, "apply": False}
    else:
        args = kvstore_args(lab, nomad_address=lab.nomad_endpoint.url) if module == "cilium_node_gc" \
            else kvstore_args(lab)
    args[option] = value
    result = run_module(module, args)
    assert result.failed and message in result["msg"], result["msg"]
    assert lab.log.entries() == []  # not a single request to Consul, Nomad or the agent
