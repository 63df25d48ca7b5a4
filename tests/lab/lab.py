"""The lab: Consul, Nomad and one Cilium agent per Nomad client, next to a real etcd.

``Lab(state_dir, ...)`` starts everything in this process (threads) and writes ``lab.env``,
``inventory.yml`` and ``lab.json`` into ``state_dir``.  Tests use it in-process; the CLI
(``python -m tests.lab up``) runs it in a background process controlled over
``<state_dir>/control.sock``.  Test infrastructure: never imported by product code.
"""

import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile

from tests.lab import httpd
from tests.lab.cilium import PROFILES, CiliumAgentSim
from tests.lab.consul import ConsulProxy, ConsulSim, RealConsul
from tests.lab.etcd import EtcdServer
from tests.lab.kvstore import (
    CiliumKVStore,
    ConsulBackend,
    EtcdBackend,
    HeartbeatWatch,
    IdentityAllocator,
    labels_key,
)
from tests.lab.nomad import NomadSim
from tests.lab import scenarios

POLICY_KEY = "netreap.io/policy"  # docs/upstream.md#cilium-api-netreap-labels
MAX_SOCKET_PATH = 100


class LabNode:
    """One simulated Nomad client: its Nomad node, local Nomad agent and Cilium agent."""

    def __init__(self, name, index, node, agent_endpoint, cilium, cilium_endpoint, ip, ipv4_range,
                 static_policy_dir):
        self.name = name
        self.index = index
        self.node = node
        self.node_id = node["ID"]
        self.agent_endpoint = agent_endpoint
        self.cilium = cilium
        self.cilium_endpoint = cilium_endpoint
        self.ip = ip
        self.ipv4_range = ipv4_range
        self.static_policy_dir = static_policy_dir

    @property
    def socket_path(self):
        return self.cilium_endpoint.unix_path

    @property
    def nomad_address(self):
        return self.agent_endpoint.url


class Lab:
    def __init__(self, state_dir, nodes=3, cilium="1.16", kvstore="consul", scenario="clean",
                 acl=False, cluster_name="default", heartbeat_timeout=120.0, static_policy=None,
                 python=None, tls=False, consul="sim", consul_version="1.16.0",
                 nomad_event_heartbeat=NomadSim.EVENT_HEARTBEAT):
        if cilium not in PROFILES:
            raise ValueError("unknown Cilium profile %r (have %s)" % (cilium, ", ".join(PROFILES)))
        if kvstore not in ("consul", "etcd"):
            raise ValueError("kvstore must be consul or etcd")
        if kvstore == "consul" and not PROFILES[cilium]["consul_kvstore"]:
            raise ValueError("Cilium %s has no Consul kvstore (removed in 1.17): use --kvstore etcd"
                             % cilium)
        if scenario not in scenarios.SCENARIOS:
            raise ValueError("unknown scenario %r (have %s)" % (scenario, ", ".join(scenarios.SCENARIOS)))
        self.state_dir = os.path.abspath(state_dir)
        self.node_count = int(nodes)
        self.version = cilium
        self.profile = PROFILES[cilium]
        self.kvstore_type = kvstore
        self.scenario = scenario
        self.acl = acl
        self.cluster_name = cluster_name
        self.heartbeat_timeout = heartbeat_timeout
        self.static_policy = self.profile["static_policy_dir"] if static_policy is None else static_policy
        self.python = python or sys.executable
        # tls: False (plain HTTP), True (HTTPS with a CA made at start, tests/lab/tls.py) or
        # "mtls" (HTTPS and a client certificate required by Consul, Nomad and etcd).
        if tls not in (False, None, True, "tls", "mtls"):
            raise ValueError("tls must be false, true/'tls' or 'mtls', not %r" % (tls,))
        self.tls = {True: "tls", None: False}.get(tls, tls)
        # consul: "sim" (the simulator) or "real" (a real Consul server from CONSUL_BIN, shared by
        # the labs of this process and emptied for each, behind a proxy with faults and the log)
        if consul not in ("sim", "real"):
            raise ValueError("consul must be 'sim' or 'real', not %r" % (consul,))
        if consul == "real" and tls:
            raise ValueError("a real Consul lab runs without TLS")
        self.consul_kind = consul
        self.nomad_event_heartbeat = float(nomad_event_heartbeat)  # seconds between stream `{}`
        self.consul_version = consul_version  # of the simulator
        self.tls_ca = None        # tests/lab/tls.py LabCA
        self.tls_server = None    # CertFiles of the server certificate every listener presents
        self.tls_client = None    # CertFiles of a client certificate the CA signed
        self._tls_context = None
        self.log = httpd.RequestLog()
        self.nodes = []
        self.endpoints = []
        self.etcd = None
        self.consul = None
        self.nomad = None
        self.kv = None
        self.heartbeat = None
        self.tokens = {}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self):
        try:
            return self._start()
        except BaseException:
            self.stop()  # a half-started lab must not leave listeners or an etcd behind
            raise

    def _start(self):
        os.makedirs(self.state_dir, exist_ok=True)
        sock_dir = os.path.join(self.state_dir, "sock")
        os.makedirs(sock_dir, exist_ok=True)
        if len(os.path.join(sock_dir, "nomad-client-999.sock")) > MAX_SOCKET_PATH:
            raise ValueError("state dir %s is too long for unix socket paths; use a shorter one"
                             % self.state_dir)
        if self.tls:
            self._setup_tls()
        if self.consul_kind == "real":
            self.consul = shared_real_consul(self.acl)
            proxy = ConsulProxy(self.consul, log=self.log)
            self.consul.faults = proxy.faults
            self.consul_endpoint = self._serve(proxy)
        else:
            self.consul = ConsulSim(log=self.log, acl_enabled=self.acl, version=self.consul_version)
            self.consul_endpoint = self._serve(self.consul)
        self.nomad = NomadSim(log=self.log, acl_enabled=self.acl,
                              event_heartbeat=self.nomad_event_heartbeat)
        self.nomad_endpoint = self._serve(self.nomad)
        if self.acl:
            self.tokens = {"consul": self.consul.management_token,
                           "nomad": self.nomad.management_token}
        if self.kvstore_type == "etcd":
            self.etcd = EtcdServer(self.state_dir, tls_server=self.tls_server,
                                   tls_client=self.tls_client,
                                   client_cert_auth=self.tls == "mtls").start()
            backend = EtcdBackend(self.etcd.url, ssl_context=self.etcd.client_ssl_context)
        else:
            backend = ConsulBackend(self.consul)
        self.kv = CiliumKVStore(backend, self.cluster_name)
        if self.kvstore_type == "etcd":
            self.heartbeat = HeartbeatWatch(self.kv, timeout=self.heartbeat_timeout,
                                            mode=self.profile["heartbeat_check"])
        for index in range(1, self.node_count + 1):
            self.nodes.append(self._add_node(index, sock_dir))
        scenarios.SCENARIOS[self.scenario](self)
        self.write_files()
        return self

    def _setup_tls(self):
        from tests.lab.tls import LabCA, server_context
        self.tls_ca = LabCA(os.path.join(self.state_dir, "tls"))
        self.tls_server = self.tls_ca.server()
        self.tls_client = self.tls_ca.client()
        self._tls_context = server_context(self.tls_server,
                                           require_client_cert=self.tls == "mtls")

    def _serve(self, service, unix_path=None):
        endpoint = httpd.serve_unix(service, unix_path) if unix_path else \
            httpd.serve_tcp(service, ssl_context=self._tls_context)
        self.endpoints.append(endpoint)
        return endpoint

    def _add_node(self, index, sock_dir):
        name = "nomad-client-%d" % index
        # Data only, never contacted: TEST-NET-1 for the first 249 nodes, then the benchmarking
        # range 198.18.0.0/15, so that every node of a large lab has an address of its own.
        block, rest = divmod(index, 250)
        ip = "192.0.2.%d" % (rest + 1) if block == 0 else "198.18.%d.%d" % (block, rest + 1)
        ipv4_range = "10.%d.%d.0/24" % (200 + block, rest)  # each agent its own --ipv4-range
        node = self.nomad.add_node(name, address=ip, attributes={
            "plugins.cni.version.cilium-cni": self.profile["full_version"]})
        agent_endpoint = self._serve(self.nomad.client_agent(node["ID"]))
        static_dir = None
        if self.static_policy:
            static_dir = os.path.join(self.state_dir, "policies", name)
            os.makedirs(static_dir, exist_ok=True)
        cilium = CiliumAgentSim(
            name, version=self.version, log=self.log, kvstore=self.kvstore_type,
            kvstore_status=self.heartbeat.status if self.heartbeat else None,
            static_policy_dir=static_dir, cluster_name=self.cluster_name, node_ip=ip,
            # Value-key suffix = the node's IP (docs/upstream.md#kvstore-identity-keys).
            ipv4_range=ipv4_range, identity_allocator=IdentityAllocator(self.kv, ip))
        cilium_endpoint = self._serve(cilium, os.path.join(sock_dir, name + ".sock"))
        self.kv.write_node(name, ip, ipv4_range)
        cilium.add_endpoint(reserved="host")
        # UNCONFIRMED lab choice: the health endpoint takes .17 (the agent gets it from IPAM).
        cilium.add_endpoint(reserved="health", ipv4=ipv4_range.rsplit(".", 1)[0] + ".17")
        return LabNode(name, index, node, agent_endpoint, cilium, cilium_endpoint, ip, ipv4_range,
                       static_dir)

    def stop(self):
        for endpoint in reversed(self.endpoints):
            endpoint.stop()
        self.endpoints = []
        if self.etcd is not None:
            self.etcd.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- helpers for tests and scenarios ----------------------------------------------------
    def node(self, name_or_index):
        for node in self.nodes:
            if name_or_index in (node.name, node.index, node.node_id):
                return node
        raise KeyError(name_or_index)

    def service(self, name):
        """A simulated service by name: consul, nomad, or a node name (its Cilium agent)."""
        if name == "consul":
            return self.consul
        if name == "nomad":
            return self.nomad
        return self.node(name).cilium

    def endpoint_of(self, name):
        if name == "consul":
            return self.consul_endpoint
        if name == "nomad":
            return self.nomad_endpoint
        return self.node(name).cilium_endpoint

    def start_allocation(self, node, job_id, group=None, namespace="default", job_meta=None):
        """Start an allocation the way Nomad and cilium-cni do; returns its ID.

        Nomad places it (``pending``), the client's network hook runs cilium-cni's ADD (the
        node's agent gets an endpoint named by the allocation ID, with only ``reserved:init``,
        an address from the agent's IPAM), then the tasks run (``running``, with that address
        in ``NetworkStatus``). Each step is an event on Nomad's stream
        (docs/upstream.md#nomad-cni, #nomad-event-stream-wire). A missing namespace is created.
        """
        node = node if isinstance(node, LabNode) else self.node(node)
        with self.nomad.lock:
            if namespace not in self.nomad._namespaces:
                self.nomad.add_namespace(namespace)
        alloc = self.nomad.add_allocation(node.node_id, job_id, task_group=group or job_id,
                                          namespace=namespace, job_meta=job_meta,
                                          client_status="pending")
        endpoint = node.cilium.add_endpoint(container_id=alloc["ID"], container_name=alloc["Name"])
        address = endpoint["status"]["networking"]["addressing"][0]["ipv4"]
        self.nomad.update_allocation(alloc["ID"], client_status="running", address=address)
        return alloc["ID"]

    def stop_allocation(self, alloc_id, leak_endpoint=False):
        """Stop an allocation the way Nomad and cilium-cni do: the scheduler decides the stop
        (desired ``stop``), the client stops the tasks and runs cilium-cni's DEL (the endpoint
        goes; with ``leak_endpoint`` it stays, as after a failed DEL), then reports the
        allocation ``complete``. Returns the node's name."""
        alloc = self.nomad.get_allocation(alloc_id)
        node = self.node(alloc["NodeID"])
        self.nomad.update_allocation(alloc_id, desired_status="stop",
                                     desired_description="alloc is being stopped")
        if not leak_endpoint:
            for endpoint in node.cilium.endpoints():
                if (endpoint.get("status") or {}).get("external-identifiers", {}).get(
                        "container-id") == alloc_id:
                    node.cilium.remove_endpoint(endpoint["id"])
        self.nomad.update_allocation(alloc_id, client_status="complete")
        return node.name

    def label_endpoint_like_agent(self, node, endpoint_id, labels):
        """Record an identity use in the kvstore the way an agent would for these labels."""
        return self.kv.allocate(labels_key(labels), node.ip)

    # -- files ------------------------------------------------------------------------------
    def env(self):
        env = {
            "CONSUL_HTTP_ADDR": self.consul_endpoint.url,
            "NOMAD_ADDR": self.nomad_endpoint.url,
            "NETREAP_LAB_DIR": self.state_dir,
            "NETREAP_LAB_KVSTORE": self.kvstore_type,
            "NETREAP_LAB_CILIUM": self.version,
        }
        if self.etcd is not None:
            env["ETCDCTL_ENDPOINTS"] = self.etcd.url
            env["ETCDCTL_API"] = "3"
        if self.acl:
            env["CONSUL_HTTP_TOKEN"] = self.tokens["consul"]
            env["NOMAD_TOKEN"] = self.tokens["nomad"]
        if self.tls:
            env.update(self.tls_env())
        return env

    def tls_env(self):
        """The CLIs' TLS variables (CA, client certificate) for this lab's services."""
        ca, cert, key = self.tls_server.ca, self.tls_client.cert, self.tls_client.key
        env = {"CONSUL_CACERT": ca, "CONSUL_CLIENT_CERT": cert, "CONSUL_CLIENT_KEY": key,
               "NOMAD_CACERT": ca, "NOMAD_CLIENT_CERT": cert, "NOMAD_CLIENT_KEY": key}
        if self.etcd is not None:
            env.update(ETCDCTL_CACERT=ca, ETCDCTL_CERT=cert, ETCDCTL_KEY=key)
        return env

    def describe(self):
        return {
            "state_dir": self.state_dir, "cilium": self.version, "kvstore": self.kvstore_type,
            "scenario": self.scenario, "acl": self.acl, "tls": self.tls, "pid": os.getpid(),
            "consul": self.consul_endpoint.url, "nomad": self.nomad_endpoint.url,
            "etcd": self.etcd.url if self.etcd else None,
            "etcd_pid": self.etcd.process.pid if self.etcd and self.etcd.process else None,
            "nodes": [{"name": n.name, "node_id": n.node_id, "ip": n.ip,
                       "cilium_socket": n.socket_path, "nomad_address": n.nomad_address,
                       "ipv4_range": n.ipv4_range, "static_policy_dir": n.static_policy_dir}
                      for n in self.nodes],
        }

    def inventory(self):
        hosts = {}
        for n in self.nodes:
            host = {"ansible_connection": "local", "ansible_python_interpreter": self.python,
                    "cilium_socket": n.socket_path, "nomad_address": n.nomad_address,
                    "nomad_node_id": n.node_id, "nomad_node_name": n.name}
            if n.static_policy_dir:
                host["cilium_static_policy_dir"] = n.static_policy_dir
            hosts[n.name] = host
        # the playbooks' variables: a connection option's own name (playbooks/vars/connections.yml)
        group_vars = {"consul_address": self.consul_endpoint.url,
                      "netreap_kvstore": self.kvstore_type, "cilium_cluster_name": self.cluster_name}
        if self.etcd is not None:
            group_vars["etcd_endpoints"] = [self.etcd.url]
        if self.tls:
            # reap.yml's TLS variables (lab.env carries the same as the CLIs' variables)
            ca, cert, key = self.tls_server.ca, self.tls_client.cert, self.tls_client.key
            for service in ("consul", "nomad", "etcd"):
                group_vars.update({"%s_ca_cert" % service: ca, "%s_client_cert" % service: cert,
                                   "%s_client_key" % service: key})
        # a node's nomad_address is its own client agent; the reaper's, the cluster's API
        reaper_vars = dict(group_vars, nomad_address=self.nomad_endpoint.url)
        return {"all": {"children": {
            "cilium_nodes": {"hosts": hosts, "vars": group_vars},
            "reaper": {"hosts": {"reaper-controller": {
                "ansible_connection": "local", "ansible_python_interpreter": self.python}},
                "vars": reaper_vars},
        }}}

    def write_files(self):
        with open(os.path.join(self.state_dir, "lab.env"), "w") as handle:
            for key, value in sorted(self.env().items()):
                handle.write("export %s=%s\n" % (key, shlex.quote(value)))
        with open(os.path.join(self.state_dir, "lab.json"), "w") as handle:
            json.dump(self.describe(), handle, indent=2)
        # JSON is valid YAML: no PyYAML needed to write the inventory.
        with open(os.path.join(self.state_dir, "inventory.yml"), "w") as handle:
            handle.write("# Written by `python -m tests.lab up`; one host per simulated Nomad client.\n")
            json.dump(self.inventory(), handle, indent=2)
            handle.write("\n")


_REAL_CONSULS = {}


def shared_real_consul(acl=False):
    """This process's real Consul server (ACLs on or off), started on first use and stopped at
    exit; emptied (keys and sessions) for each lab that uses it."""
    server = _REAL_CONSULS.get(acl)
    if server is None:
        import atexit
        server = _REAL_CONSULS[acl] = RealConsul(acl=acl).start()
        atexit.register(server.stop)
    server.reset()
    return server


@contextlib.contextmanager
def lab_pool(prefix="lab-"):
    """Yield ``make(**Lab kwargs)``: each call starts a lab in a new short temp dir (unix socket
    paths must stay short); every lab is stopped and its dir removed when the block ends."""
    labs = []

    def make(**kwargs):
        state_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        labs.append((None, state_dir))
        lab = Lab(state_dir, **kwargs).start()
        labs[-1] = (lab, state_dir)
        return lab

    try:
        yield make
    finally:
        for lab, state_dir in labs:
            if lab is not None:
                lab.stop()
            shutil.rmtree(state_dir, ignore_errors=True)
