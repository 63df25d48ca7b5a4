"""Nomad client stand-in for the role test container (test infrastructure only).

Counts its starts (the cilium-cni restart check) and serves, on the addresses the modules use by
default, what the node duties of netreap.cilium.reap talk to besides the Cilium agent: the lab's
Nomad client agent for this node on 127.0.0.1:4646 and the lab's Consul on 127.0.0.1:8500, with
a policy published at netreap.io/policy (tests/lab/, copied to /opt/netreap-lab).
"""

import json
import os
import signal
import sys
import threading

LAB = "/opt/netreap-lab"
STARTS = "/var/lib/netreap-fake-nomad.starts"
POLICY = [{
    "labels": [{"key": "name", "value": "web-ingress", "source": "unspec"}],
    "endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "web"}},
    "ingress": [{"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}],
}]


def main():
    with open(STARTS, "a") as handle:
        handle.write("start\n")
    sys.path.insert(0, LAB)
    from tests.lab import httpd  # pylint: disable=import-outside-toplevel
    from tests.lab.consul import ConsulSim  # pylint: disable=import-outside-toplevel
    from tests.lab.nomad import NomadSim  # pylint: disable=import-outside-toplevel

    consul = ConsulSim()
    consul.kv_put("netreap.io/policy", json.dumps(POLICY))
    nomad = NomadSim()
    node = nomad.add_node(os.uname().nodename, address="127.0.0.1")
    endpoints = [httpd.serve_tcp(consul, port=8500), httpd.serve_tcp(nomad.client_agent(node["ID"]), port=4646)]
    print("fake nomad client %s: agent on 127.0.0.1:4646, consul on 127.0.0.1:8500" % node["ID"], flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_args: stopped.set())
    stopped.wait()
    for endpoint in endpoints:
        endpoint.stop()


if __name__ == "__main__":
    main()
