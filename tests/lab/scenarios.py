"""Lab scenarios: the state a lab starts with.

``clean``: every Nomad client has running allocations whose Cilium endpoints already carry the
Netreap labels, the kvstore holds exactly the live nodes and used identities, heartbeat written.
``drift``: what a cluster without an operator accumulates — stale kvstore nodes (gone from
Nomad) with their ipcache entries, a node Nomad reports down for two days, dead identities,
unlabelled (``reserved:init``) endpoints, endpoints with outdated labels, endpoints of finished
and of vanished allocations, and a published policy newer than what the agents run, next to a
rule the collection does not own.

The state follows the upstream layouts in docs/upstream.md: endpoint labels
#cilium-api-netreap-labels, kvstore keys #kvstore-layout, Nomad node status #nomad-node-gc.
"""

import json
import time
import uuid

from tests.lab.kvstore import labels_key

POLICY_KEY = "netreap.io/policy"  # netreap's --policy-key default (docs/upstream.md#cilium-api-netreap-labels)

POLICY_V1 = [{
    "labels": [{"key": "name", "value": "web-ingress", "source": "unspec"}],
    "endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "web"}},
    "ingress": [{"fromEntities": ["world"],
                 "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}],
}]

POLICY_V2 = POLICY_V1 + [{
    "labels": [{"key": "name", "value": "cache-from-web", "source": "unspec"}],
    "endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "cache"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"netreap:nomad.job_id": "web"}}],
                 "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]}],
}]

FOREIGN_RULE = {
    "labels": [{"key": "name", "value": "operator-managed-host-rule", "source": "unspec"}],
    "endpointSelector": {"matchLabels": {"reserved:health": ""}},
    "ingress": [{"fromEntities": ["cluster"]}],
}

JOBS = (
    # job id, task group, job meta, group meta
    ("web", "frontend", {"team": "payments", "tier": "edge"}, {"tier": "front"}),
    ("cache", "redis", None, None),
)


def netreap_labels(job_id, namespace, group, job_meta=None, group_meta=None):
    """The labels Netreap puts on an endpoint: three netreap: labels plus nomad:<meta> (group wins).

    netreap reapers/endpoints.go (f3bac8c); docs/upstream.md#cilium-api-netreap-labels.
    """
    labels = ["netreap:nomad.job_id=%s" % job_id, "netreap:nomad.namespace=%s" % namespace,
              "netreap:nomad.task_group_id=%s" % group]
    meta = dict(job_meta or {})
    meta.update(group_meta or {})
    labels += ["nomad:%s=%s" % (k, v) for k, v in sorted(meta.items())]
    return sorted(labels)


def _alloc_ip(node, k):
    return node.ipv4_range.rsplit(".", 1)[0] + ".%d" % (100 + k)


def _run(lab, node, k, job_id, group, job_meta, group_meta, labelled=True, labels=None, **alloc):
    ip = _alloc_ip(node, k)
    allocation = lab.nomad.add_allocation(node.node_id, job_id, task_group=group, job_meta=job_meta,
                                          group_meta=group_meta, address=ip, **alloc)
    if labels is None and labelled:
        labels = netreap_labels(job_id, allocation["Namespace"], group, job_meta, group_meta)
    endpoint = node.cilium.add_endpoint(container_id=allocation["ID"], labels=labels or None,
                                        ipv4=ip, container_name=allocation["Name"])
    identity = (endpoint.get("status") or {}).get("identity", {}).get("id", 5)
    lab.kv.write_ipcache(ip, node.ip, identity, node.name, endpoint["id"])
    return allocation, endpoint


def clean(lab):
    for node in lab.nodes:
        for k, (job_id, group, job_meta, group_meta) in enumerate(JOBS):
            _run(lab, node, k, job_id, group, job_meta, group_meta)
    if lab.kvstore_type == "etcd":  # only etcd agents watch it (docs/upstream.md#kvstore-heartbeat)
        lab.kv.write_heartbeat()


def drift(lab):
    now = time.time()
    for node in lab.nodes:
        web, cache = JOBS
        # An endpoint Nomad's CNI call just created: no labels, reserved:init.
        _run(lab, node, 0, *web, labelled=False)
        # An endpoint labelled for an older version of its job (task group renamed).
        _run(lab, node, 1, cache[0], cache[1], None, None,
             labels=netreap_labels(cache[0], "default", "redis-old"))
        # A finished batch allocation whose endpoint was never cleaned up.
        _run(lab, node, 2, "nightly-report", "report", None, None, client_status="complete",
             desired_status="stop")
        # An endpoint whose allocation Nomad has already garbage-collected.
        ip = _alloc_ip(node, 3)
        node.cilium.add_endpoint(container_id=str(uuid.uuid4()),
                                 labels=netreap_labels("old-api", "default", "api"), ipv4=ip)
    # Nodes that left the cluster: Nomad no longer knows them, the kvstore still does (on Consul
    # their keys never expire, docs/upstream.md#kvstore-leases).
    for k, name in enumerate(("nomad-client-retired-1", "nomad-client-retired-2")):
        ip = "198.51.100.%d" % (k + 10)  # TEST-NET-2: data only
        lab.kv.write_node(name, ip, "10.201.%d.0/24" % k)
        lab.kv.write_ipcache("10.201.%d.100" % k, ip, 5, name, 100)
    # A node Nomad has reported down for two days (optional treatment in node GC).
    down = lab.nomad.add_node("nomad-client-down-1", address="198.51.100.50",
                              status_updated_at=int(now - 2 * 86400))
    lab.nomad.set_node_status(down["ID"], "down", status_updated_at=int(now - 2 * 86400))
    lab.kv.write_node("nomad-client-down-1", "198.51.100.50", "10.202.0.0/24")
    # Identities nothing uses any more: master keys without value keys, what identity GC collects
    # (docs/upstream.md#kvstore-identity-gc).
    low = lab.kv.id_range()[0]
    for offset, job in enumerate(("retired-a", "retired-b", "retired-c")):
        lab.kv.write_identity(low + 5000 + offset,
                              labels_key(netreap_labels(job, "default", "main")))
    # A published policy newer than what the agents run, plus a rule we do not own.
    lab.consul.kv_put(POLICY_KEY, json.dumps(POLICY_V2, indent=2))
    for node in lab.nodes:
        node.cilium.seed_policy([FOREIGN_RULE])


SCENARIOS = {"clean": clean, "drift": drift}
