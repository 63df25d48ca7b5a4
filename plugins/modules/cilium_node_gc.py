#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cilium_node_gc
short_description: Delete kvstore node keys of Cilium nodes that Nomad no longer knows
version_added: 0.1.0
description:
  - Compares the Cilium node keys C(cilium/state/nodes/v1/<cluster_name>/<node>) in the kvstore (Consul or etcd) with
    Nomad's node list, matched by node B(Name), and deletes the keys of nodes Nomad does not know. Without
    Kubernetes nothing else removes them (in etcd until their lease expires; in Consul never), and agents keep
    health-checking the ghosts.
  - Optionally (O(down_after)) nodes that Nomad has reported C(down) for longer than a given time are treated as
    gone too; C(disconnected) nodes never are. A deleted node's other state (ipcache entries, identity value keys)
    is deleted with it, by default with Consul (O(purge_node_state)).
  - B(Two passes.) A run never deletes a node the first time it sees it as stale; it writes a I(mark) under
    O(gc_state_prefix). A later run deletes the key only if the node is still stale, its mark is at least
    O(min_age) seconds old and the key was not written since it was marked (otherwise it is marked again).
    A node that comes back (known to Nomad again, or up again) loses its mark.
  - B(Guards.) The run fails and changes nothing when the Nomad listing fails (error, timeout, 403) or is empty
    while the kvstore holds node keys, or when it would delete more than O(max_delete) keys or more than
    O(max_delete_percent) percent of the cluster's node keys. Only keys under the O(cluster_name) prefix are ever
    touched. Writes happen under a leader lock (O(lock_key)) that every write transaction re-checks.
  - Deletions are batched into kvstore transactions (Consul C(/v1/txn), etcd C(txn)), each deleting a key only if
    it still has the revision the run planned with, so 1,000 deletions take a handful of requests and a node
    that re-registered in the meantime is kept.
  - Runs anywhere that reaches the kvstore and Nomad (typically once, on a controller, on a schedule).
author:
  - netreap.cilium maintainers (@netreap)
extends_documentation_fragment:
  - netreap.cilium._attributes
  - netreap.cilium._attributes.actiongroup_kvstore_nomad
  - netreap.cilium._kvstore
  - netreap.cilium._kvstore.gc
  - netreap.cilium._consul
  - netreap.cilium._etcd
  - netreap.cilium._nomad
options:
  cluster_name:
    description:
      - The agents' C(--cluster-name). Only node keys under C(cilium/state/nodes/v1/<cluster_name>/) are considered.
    type: str
    default: default
  min_age:
    description:
      - Seconds a node must have been marked as stale, by an earlier run, before a run deletes it.
      - V(0) deletes on the second run that still sees the node as stale; the first run only marks it.
    type: int
    default: 300
  down_after:
    description:
      - Also treat as gone the nodes that Nomad has reported C(down) for more than this many seconds (Nomad's
        C(StatusUpdatedAt)); each such node costs one extra Nomad request per run.
      - Not set (the default) means only nodes Nomad does not list at all are collected. Nomad itself
        garbage-collects down nodes after its C(node_gc_threshold) (24 h by default).
    type: int
  purge_node_state:
    description:
      - When a node key is deleted, also delete, in the same transaction, the ipcache entries
        C(cilium/state/ip/v1/default/<ip>) whose C(HostIP) is one of the node's InternalIP/ExternalIP addresses and
        the identity value keys C(cilium/state/identities/v1/value/<labels>/<node-ip>) it left behind. Each is named
        in RV(deleted[].purged). Identities used only on that node then have no user left, and
        M(netreap.cilium.cilium_identity_gc) collects them within its two passes.
      - Not set (the default) means V(true) with O(kvstore=consul) and V(false) with O(kvstore=etcd). Cilium's
        Consul client writes these keys "with its lease", but Consul ignores a session on a plain write, so in
        Consul they never expire and nothing else ever removes a departed node's state. In etcd they are bound
        to the agent's lease and expire with it (15 minutes after the agent stops, by default), so purging there
        only saves that delay, at the cost of listing the whole ipcache and every identity value key.
      - An address that a remaining node key carries, or that a node Nomad still knows has (its C(Address)), is not
        purged (an IP reused by a live node, or an agent that has not written its node key yet).
      - Costs two more listings on runs that delete.
    type: bool
  max_delete:
    description:
      - Fail, deleting nothing, when a run would delete more than this many node keys. Raise it deliberately when
        a large scale-down is expected.
    type: int
    default: 100
  max_delete_percent:
    description:
      - Fail, deleting nothing, when a run would delete more than this percentage of the cluster's node keys.
        V(100) turns the percentage cap off.
    type: float
    default: 50
attributes:
  check_mode:
    support: full
    details: Reports exactly what would be deleted, marked and unmarked; takes no lock and writes nothing.
  diff_mode:
    support: full
    details: The diff lists the kvstore keys deleted (node keys, purged keys, marks) and the marks written.
seealso:
  - module: netreap.cilium.cilium_identity_gc
  - module: netreap.cilium.cilium_kvstore_heartbeat
  - name: Node GC in cilium-operator and this collection
    description: Guards, marks and the leader lock explained (docs/kvstore-gc.md in the collection).
    link: https://github.com/netreap/netreap.cilium/blob/main/docs/kvstore-gc.md
notes:
  - Match is by node name, as Netreap did; the agents' node name (hostname or C(K8S_NODE_NAME)) must equal the Nomad
    client's C(name).
  - Nomad lists the nodes of one region; point O(nomad_region) at the region whose clients share this kvstore.
  - "Consul ACL: C(key:write) on C(cilium/state/), O(gc_state_prefix) and O(lock_key), C(session:write).
    Nomad ACL: C(node:read)."
"""

EXAMPLES = r"""
- name: Mark stale Cilium nodes now, delete them on a run at least 10 minutes later
  netreap.cilium.cilium_node_gc:
    kvstore: etcd
    etcd_endpoints: ["https://etcd.service.consul:2379"]
    etcd_ca_cert: /etc/cilium/etcd-ca.pem
    nomad_address: https://nomad.service.consul:4646
    min_age: 600
  register: node_gc

- name: Cilium 1.16 with Consul as kvstore, also collect nodes down for a day and their leftovers
  netreap.cilium.cilium_node_gc:
    kvstore: consul
    consul_address: 127.0.0.1:8500
    cluster_name: eu-west
    down_after: 86400
    purge_node_state: true
  register: node_gc

- name: Preview what would be deleted
  netreap.cilium.cilium_node_gc:
    kvstore: etcd
  check_mode: true
  diff: true
  register: preview

- name: A planned scale-down of 200 clients
  netreap.cilium.cilium_node_gc:
    kvstore: etcd
    max_delete: 250
    max_delete_percent: 80
"""

RETURN = r"""
deleted:
  description:
    - Node keys deleted (in check mode, that would be deleted), with the reason and when they were first marked.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "nomad-client-7", "key": "cilium/state/nodes/v1/default/nomad-client-7",
            "reason": "not known to Nomad", "mark_key": "netreap/gc/v1/nodes/default/nomad-client-7",
            "marked_since": "2024-05-01T10:00:00Z", "purged": ["cilium/state/ip/v1/default/10.200.7.12"]}]
  contains:
    name:
      description: The node name (the last segment of its key, as the agent wrote it).
      type: str
    key:
      description: The node key.
      type: str
    reason:
      description: Why the node counts as gone.
      type: str
    mark_key:
      description: Where the two-pass mark was kept.
      type: str
    marked_since:
      description: When an earlier run first marked the node (RFC 3339).
      type: str
    purged:
      description: Other keys of the node deleted with it (ipcache entries, identity value keys) when its state is
        purged (O(purge_node_state), on by default with Consul).
      type: list
      elements: str
marked:
  description: Stale nodes marked by this run (first seen as stale, or written since they were marked).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "nomad-client-9", "key": "cilium/state/nodes/v1/default/nomad-client-9",
            "reason": "not known to Nomad", "mark_key": "netreap/gc/v1/nodes/default/nomad-client-9"}]
unmarked:
  description: Marks removed because the node is no longer a candidate (it came back) or its key is gone.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "nomad-client-3", "key": "cilium/state/nodes/v1/default/nomad-client-3",
            "reason": "no longer a candidate: known to Nomad (ready)",
            "mark_key": "netreap/gc/v1/nodes/default/nomad-client-3"}]
kept:
  description:
    - Node keys (other than those of live nodes) that stay, and why - marked too recently, down or disconnected in
      Nomad, not a node key, or changed while the run was writing.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "nomad-client-9", "key": "cilium/state/nodes/v1/default/nomad-client-9",
            "reason": "not known to Nomad; marked 42s ago, deleted once marked for min_age=300s",
            "marked_since": "2024-05-01T10:00:00Z"}]
candidates:
  description: The deletions a guard, or the leader lock held by another reaper, prevented.
  returned: when a guard stopped the run or the run was skipped
  type: list
  elements: dict
not_applied:
  description: Planned changes a failed write never reached (with C(action)); a rerun applies them.
  returned: always
  type: list
  elements: dict
unconfirmed:
  description: Changes of a transaction whose outcome is unknown (the kvstore timed out); a rerun settles them.
  returned: always
  type: list
  elements: dict
counts:
  description: Node keys in the kvstore, nodes in Nomad, live nodes, stale candidates, and the lengths of the lists.
  returned: always
  type: dict
  sample: {"kvstore_nodes": 10000, "nomad_nodes": 9000, "live": 9000, "candidates": 1000, "deleted": 1000,
           "marked": 0, "unmarked": 0, "kept": 0}
requests:
  description: HTTP requests this run made, per service.
  returned: always
  type: dict
  sample: {"kvstore": 24, "nomad": 9}
transactions:
  description: kvstore write transactions this run committed or attempted.
  returned: always
  type: int
  sample: 16
skipped:
  description: True when another reaper held the leader lock and O(on_lock_held=skip).
  returned: always
  type: bool
  sample: false
msg:
  description: "Why the run was skipped: C(skipped: another reaper holds the lock <key> (<holder>))."
  returned: when skipped
  type: str
lock:
  description: The leader lock key, whether this run acquired it, and the holder when another reaper had it.
  returned: always
  type: dict
  sample: {"key": "service/netreaper/leader", "acquired": true}
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netreap.cilium.plugins.module_utils._consul import key_options_problem
from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import (
    KVSTORE_ARGUMENT_SPEC,
    kvstore_from_params,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc import (
    IPCACHE_PREFIX,
    VALUES_PREFIX,
    node_marks_prefix,
    node_prefix,
    plan_node_gc,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc_run import (
    GC_ARGUMENT_SPEC,
    NOTHING_CHANGED,
    GCRun,
    default_lock_key,
    validate_gc_params,
)
from ansible_collections.netreap.cilium.plugins.module_utils._nomad import (
    NOMAD_ARGUMENT_SPEC,
    NomadClient,
)


class NomadView:
    """Nomad's nodes, read once per run; ``StatusUpdatedAt`` fetched only for down nodes that
    still have a kvstore key (the node list stubs do not carry it)."""

    GONE = object()

    def __init__(self, client):
        self.client = client
        self.nodes = None
        self._down_since = {}

    def read(self, kv_names, down_after):
        if self.nodes is None:
            self.nodes = self.client.nodes()
        result = []
        for node in self.nodes:
            node = dict(node)
            if down_after is not None and node.get("Status") == "down" and node.get("Name") in kv_names:
                if node["ID"] not in self._down_since:
                    self._down_since[node["ID"]] = self._status_updated_at(node["ID"])
                if self._down_since[node["ID"]] is self.GONE:
                    continue  # purged since the listing: Nomad no longer knows it
                node["StatusUpdatedAt"] = self._down_since[node["ID"]]
            result.append(node)
        return result

    def _status_updated_at(self, node_id):
        try:
            return self.client.node(node_id).get("StatusUpdatedAt")
        except ServiceError as exc:
            if exc.status == 404:
                return self.GONE
            raise


def main():
    argument_spec = dict(
        cluster_name=dict(type="str", default="default"),
        min_age=dict(type="int", default=300),
        down_after=dict(type="int"),
        purge_node_state=dict(type="bool"),
        max_delete=dict(type="int", default=100),
        max_delete_percent=dict(type="float", default=50.0),
    )
    argument_spec.update(KVSTORE_ARGUMENT_SPEC)
    argument_spec.update(GC_ARGUMENT_SPEC)
    argument_spec.update(NOMAD_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    cluster = params["cluster_name"]
    problem = validate_gc_params(params)
    name_problem = key_options_problem(params, names=("cluster_name",))
    if name_problem:
        problem = name_problem + ("; " + problem if problem else "")
    if problem:
        module.fail_json(msg=problem)
    try:
        kv = kvstore_from_params(params)
        nomad = NomadClient.from_params(params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    gc = GCRun(module, kv, "cilium_node_gc", default_lock_key(params), requests={"nomad": ("nomad",)})
    nomad_view = NomadView(nomad)
    # Consul never expires an agent's keys (docs/upstream.md#cilium-consul-keys-never-expire): purge
    # by default there; etcd removes them with the agent's lease.
    purge_state = params["purge_node_state"]
    if purge_state is None:
        purge_state = params["kvstore"] == "consul"
    options = dict(cluster_name=cluster, min_age=params["min_age"], down_after=params["down_after"],
                   max_delete=params["max_delete"], max_delete_percent=params["max_delete_percent"],
                   state_prefix=params["gc_state_prefix"])

    def read():
        kv_nodes = gc.list(node_prefix(cluster))
        gc.run.doing("list Nomad nodes", note=NOTHING_CHANGED)
        nomad_nodes = nomad_view.read({e.key[len(node_prefix(cluster)):] for e in kv_nodes}, params["down_after"])
        marks = gc.list(node_marks_prefix(params["gc_state_prefix"], cluster))
        state = dict(kv_nodes=kv_nodes, nomad_nodes=nomad_nodes, marks=marks, now=time.time())
        draft = plan(state)
        if purge_state and draft.of("delete") and not draft.refusal:  # what else the deleted agents left
            state["purge"] = {"ipcache": gc.list(IPCACHE_PREFIX), "values": gc.list(VALUES_PREFIX)}
        return state

    def plan(state):
        return plan_node_gc(state["kv_nodes"], state["nomad_nodes"], state["marks"], state["now"],
                            purge=state.get("purge"), **options)

    gc.execute(read, plan)


if __name__ == "__main__":
    main()
