"""The Cilium kvstore as agents write it, in the lab's Consul or in the real etcd.

Layout, encodings and heartbeat rules follow Cilium 1.15-1.18 (``pkg/kvstore/``,
``pkg/kvstore/allocator/allocator.go``, ``pkg/node/types/node.go``, ``pkg/ipcache/kvstore.go``),
recorded with their releases in docs/upstream.md#kvstore-layout and the entries after it.

Two small backends with the same five calls (``put``, ``get``, ``delete``, ``list``,
``revision_of``) and, on top, ``CiliumKVStore`` which writes node keys, identity master/value
keys, ipcache entries and reads the heartbeat — with Consul's base64url encoding of label keys and
master values, and etcd's raw form.  Test infrastructure: never imported by product code.
"""

import base64
import ipaddress
import json
import threading
import time
import urllib.request

# A private opener: ansible's urls.Request installs a global urllib opener (possibly bound to a
# unix socket) when modules run in the test process, and urlopen() would use it.
_OPENER = urllib.request.build_opener()

# docs/upstream.md#kvstore-layout (pkg/node/store/store.go, pkg/identity/cache/allocator.go,
# pkg/ipcache/kvstore.go, pkg/kvstore/kvstore.go; same in 1.15-1.18).
NODES = "cilium/state/nodes/v1/"
IDS = "cilium/state/identities/v1/id/"
VALUES = "cilium/state/identities/v1/value/"
IPCACHE = "cilium/state/ip/v1/default/"
HEARTBEAT = "cilium/.heartbeat"


class ConsulBackend:
    """Writes straight into a ConsulSim's state (the agents' Consul sessions are not modelled).

    Like Cilium <= 1.16, whose Consul keys are not bound to its session and never expire
    (pkg/kvstore/consul.go ``Update``/``createOnly``; docs/upstream.md#kvstore-leases).
    """

    encode_keys = True

    def __init__(self, consul_sim):
        self.sim = consul_sim

    def put(self, key, value):
        self.sim.kv_put(key, value.encode() if isinstance(value, str) else value)

    def get(self, key):
        entry = self.sim.kv_get(key)
        return None if entry is None else (entry.get("Value") or b"")

    def revision_of(self, key):
        entry = self.sim.kv_get(key)
        return None if entry is None else entry["ModifyIndex"]

    def delete(self, key):
        self.sim.kv_delete(key)

    def list(self, prefix):
        result = {}
        for key in self.sim.kv_keys(prefix):
            value = self.get(key)
            if value is not None:
                result[key] = value
        return result


class EtcdBackend:
    """Talks to the real etcd through its JSON gateway (stdlib only).

    Keys are written without a lease: Cilium attaches its agent lease to node, ipcache and value
    keys (docs/upstream.md#kvstore-leases); lease expiry of a dead agent is not modelled.
    """

    encode_keys = False

    def __init__(self, url, timeout=5.0, ssl_context=None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ssl_context = ssl_context  # https etcd: CA and client certificate (tests/lab/tls.py)

    def _call(self, path, body):
        req = urllib.request.Request(self.url + "/v3/" + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        from tests.lab.etcd import opener_for
        opener = opener_for(self.url, self.ssl_context) if self.url.startswith("https") else _OPENER
        with opener.open(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode())

    @staticmethod
    def _b64(data):
        if isinstance(data, str):
            data = data.encode()
        return base64.b64encode(data).decode()

    def put(self, key, value):
        self._call("kv/put", {"key": self._b64(key), "value": self._b64(value)})

    def _range(self, key, range_end=None):
        body = {"key": self._b64(key)}
        if range_end is not None:
            body["range_end"] = self._b64(range_end)
        return self._call("kv/range", body).get("kvs") or []

    def get(self, key):
        kvs = self._range(key)
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def revision_of(self, key):
        kvs = self._range(key)
        return int(kvs[0]["mod_revision"]) if kvs else None

    def delete(self, key):
        self._call("kv/deleterange", {"key": self._b64(key)})

    def list(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in self._range(prefix, end)}


def go_path_clean(path):
    """Go's path.Clean, as Cilium's path.Join applies it to every key it builds."""
    rooted = path.startswith("/")
    out = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    return "/" + cleaned if rooted else (cleaned or ".")


def consul_encode(text):
    """Cilium's kvstore Encode for Consul: Go base64.URLEncoding (padded).

    pkg/kvstore/consul.go ``Encode`` (1.15, 1.16); docs/upstream.md#kvstore-identity-keys.
    """
    return base64.urlsafe_b64encode(text.encode()).decode()


def mask_b64(prefixlen, bits=32):
    # net.IPNet's Mask marshals as base64 bytes (docs/upstream.md#kvstore-node-keys).
    mask = (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF if bits == 32 else 0
    return base64.b64encode(mask.to_bytes(4, "big")).decode()


def labels_key(labels):
    """Sorted ``source:key=value;`` concatenation.

    pkg/labels/labels.go ``SortedList`` (1.15-1.18); docs/upstream.md#kvstore-identity-keys.
    """
    return "".join("%s;" % label for label in sorted(labels))


class CiliumKVStore:
    def __init__(self, backend, cluster_name="default", cluster_id=0):
        self.backend = backend
        self.cluster_name = cluster_name
        self.cluster_id = cluster_id
        self._lock = threading.Lock()

    # -- encoding ---------------------------------------------------------------------------
    def _enc(self, text):
        return consul_encode(text) if self.backend.encode_keys else text

    def _dec(self, text):
        if not self.backend.encode_keys:
            return text
        return base64.urlsafe_b64decode(text.encode()).decode()

    # -- nodes ------------------------------------------------------------------------------
    def node_key(self, name, cluster=None):
        return "%s%s/%s" % (NODES, cluster or self.cluster_name, name)

    def write_node(self, name, internal_ip, alloc_cidr, health_ip=None, cluster=None):
        net = ipaddress.ip_network(alloc_cidr)
        # Go field names of pkg/node/types/node.go Node (1.16); docs/upstream.md#kvstore-node-keys.
        node = {
            "Name": name, "Cluster": cluster or self.cluster_name,
            "IPAddresses": [{"Type": "InternalIP", "IP": internal_ip},
                            {"Type": "CiliumInternalIP", "IP": str(net.network_address + 1)}],
            "IPv4AllocCIDR": {"IP": str(net.network_address), "Mask": mask_b64(net.prefixlen)},
            "IPv4SecondaryAllocCIDRs": None, "IPv6AllocCIDR": None, "IPv6SecondaryAllocCIDRs": None,
            "IPv4HealthIP": health_ip or str(net.network_address + 17), "IPv6HealthIP": "",
            "IPv4IngressIP": "", "IPv6IngressIP": "", "ClusterID": self.cluster_id,
            "Source": "local", "EncryptionKey": 0, "Labels": {}, "Annotations": None,
            "NodeIdentity": 0, "WireguardPubKey": "",
        }
        self.backend.put(self.node_key(name, cluster), json.dumps(node))
        return node

    def node_names(self, cluster=None):
        prefix = "%s%s/" % (NODES, cluster or self.cluster_name)
        return sorted(k[len(prefix):] for k in self.backend.list(prefix))

    # -- identities -------------------------------------------------------------------------
    def id_range(self):
        # pkg/identity/numericidentity.go; docs/upstream.md#kvstore-identity-keys.
        if self.cluster_id == 0:
            return 256, 65535
        return self.cluster_id << 16, ((self.cluster_id + 1) << 16) - 1

    def identities(self):
        """``{id: labels_key}`` of every master key."""
        result = {}
        for key, value in self.backend.list(IDS).items():
            result[int(key[len(IDS):])] = self._dec(value.decode())
        return result

    def write_identity(self, identity, lkey):
        self.backend.put(IDS + str(identity), self._enc(lkey))

    def value_key(self, lkey, node_suffix):
        # The allocator joins value prefix, label key and node suffix with Go's path.Join, which
        # cleans the result: a label value "https://x" is stored as "https:/x" in etcd (in Consul
        # the label key is base64url, which has no "/" or ".").  See
        # docs/upstream.md#cilium-kvstore-value-keys-are-cleaned.
        return go_path_clean("%s%s/%s" % (VALUES, self._enc(lkey), node_suffix))

    def write_identity_use(self, lkey, node_suffix, identity):
        self.backend.put(self.value_key(lkey, node_suffix), str(identity))

    def identity_uses(self):
        """List of ``(labels_key, node_suffix, id)`` for every value (slave) key."""
        uses = []
        for key, value in self.backend.list(VALUES).items():
            rest = key[len(VALUES):]
            enc, suffix = rest.rsplit("/", 1)
            uses.append((self._dec(enc), suffix, int(value.decode() or 0)))
        return uses

    def allocate(self, lkey, node_suffix):
        """What an agent does for a new label set: reuse or create the master key, add a use.

        Lab choice: the lowest free ID, for reproducible tests; Cilium leases a random free ID
        (pkg/idpool/idpool.go ``LeaseAvailableID``; docs/upstream.md#kvstore-identity-keys).
        """
        with self._lock:
            existing = {v: k for k, v in self.identities().items()}
            identity = existing.get(lkey)
            if identity is None:
                low, high = self.id_range()
                taken = set(existing.values())
                identity = next(i for i in range(low, high + 1) if i not in taken)
                self.write_identity(identity, lkey)
            self.write_identity_use(lkey, node_suffix, identity)
            return identity

    def release(self, lkey, node_suffix):
        self.backend.delete(self.value_key(lkey, node_suffix))

    # -- ipcache ----------------------------------------------------------------------------
    def write_ipcache(self, ip, host_ip, identity, node_name, endpoint_id):
        # IPIdentityPair (pkg/identity/identity.go, 1.16); docs/upstream.md#kvstore-ipcache.
        pair = {"IP": ip, "Mask": None, "HostIP": host_ip, "ID": identity, "Key": 0,
                "Metadata": "cilium-global:default:%s:%s" % (node_name, endpoint_id)}
        self.backend.put(IPCACHE + ip, json.dumps(pair))

    def ipcache(self):
        return {k[len(IPCACHE):]: json.loads(v.decode()) for k, v in self.backend.list(IPCACHE).items()}

    # -- heartbeat --------------------------------------------------------------------------
    def heartbeat_revision(self):
        return self.backend.revision_of(HEARTBEAT)

    def write_heartbeat(self):
        # RFC 3339, as cilium-operator writes it (pkg/kvstore/heartbeat/); agents never parse it.
        self.backend.put(HEARTBEAT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


class IdentityAllocator:
    """The per-agent view the Cilium simulator uses: allocate/release for one node suffix."""

    def __init__(self, kvstore, node_suffix):
        self.kvstore = kvstore
        self.node_suffix = node_suffix

    def allocate(self, lkey):
        return self.kvstore.allocate(lkey, self.node_suffix)

    def release(self, lkey):
        self.kvstore.release(lkey, self.node_suffix)


class HeartbeatWatch:
    """kvstore health as an etcd-backed agent sees it, per release
    (docs/upstream.md#cilium-heartbeat-per-release, ``pkg/kvstore/etcd.go`` statusChecker):

    * ``watch-events`` (1.16 and older): every event of the agent's watch on the heartbeat key
      resets the two-minute timer -- writes, deletions, and the event that ends the initial
      listing, so the timer runs from connect;
    * ``agent-start`` (1.17, 1.18.0): the status checker starts the timer; only writes of the
      key reset it (deletions and the end of the listing no longer count);
    * ``clustermesh-only`` (1.18.1 and later): the check runs only for clustermesh clients, the
      node's own kvstore never degrades for want of a heartbeat.

    The lab sees an event as a change of the key's revision (a write, or with ``watch-events``
    also a deletion).
    A failed check counts once per ``interval``; after more than ``max_errors`` consecutive
    failures the state is Failure.
    """

    MODES = ("watch-events", "agent-start", "clustermesh-only")

    def __init__(self, kvstore, timeout=120.0, interval=None, max_errors=2, clock=time.monotonic,
                 mode="agent-start"):
        if mode not in self.MODES:
            raise ValueError("heartbeat mode must be one of %s" % ", ".join(self.MODES))
        self.kvstore = kvstore
        self.timeout = timeout
        self.interval = interval if interval is not None else timeout / 4.0
        self.max_errors = max_errors
        self.clock = clock
        self.mode = mode
        self._last_revision = kvstore.heartbeat_revision()
        self._last_change = clock()
        self._lock = threading.Lock()

    def status(self):
        with self._lock:
            now = self.clock()
            try:
                revision = self.kvstore.heartbeat_revision()
            except OSError as exc:
                return "Failure", "etcd: 0/1 connected: %s" % exc
            if revision != self._last_revision:
                self._last_revision = revision
                if revision is not None or self.mode == "watch-events":
                    self._last_change = now
            if self.mode == "clustermesh-only":
                return "Ok", "etcd: 1/1 connected, has-quorum=true: lab etcd - 3.5.1 (Leader)"
            stale = now - self._last_change
            if stale <= self.timeout:
                return "Ok", "etcd: 1/1 connected, has-quorum=true: lab etcd - 3.5.1 (Leader)"
            failures = int((stale - self.timeout) // self.interval) + 1
            detail = "%.0fs since last heartbeat update has been received" % stale
            # pkg/kvstore/etcd.go statusChecker, 1.16.7-1.18.10 (docs/upstream.md#kvstore-heartbeat):
            # below the threshold the state stays Ok and the message carries the error; above it
            # the state is Failure, "Err: ..." (1.16.7's daemon probe repeats the error).
            if failures > self.max_errors:
                error = "quorum check failed %d times in a row: %s" % (failures, detail)
                if self.mode == "watch-events":
                    return "Failure", "Err: %s - %s" % (error, error)
                return "Failure", "Err: %s" % error
            return "Ok", ("etcd: 1/1 connected, leases=1, lock leases=1, has-quorum=%s, consecutive-errors=%d: "
                          "lab etcd - 3.5.1 (Leader)" % (detail, failures))
