#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cilium_identity_gc
short_description: Delete Cilium security identities that nothing uses from the kvstore
version_added: 0.1.0
description:
  - "cilium-operator's kvstore identity garbage collection for clusters without Kubernetes. Each identity is a
    master key C(cilium/state/identities/v1/id/<id>) holding its label key; every agent that uses it holds a value
    key C(cilium/state/identities/v1/value/<label key>/<node IP>) on a lease. When the last user is gone the value keys
    expire but the master key stays forever, until allocation fails with C(no more available IDs)."
  - An identity is B(in use) while any value key refers to its label key (the last C(/) of the value key follows
    the label key exactly). Cilium builds value keys with Go's C(path.Join), which cleans the path, so the label
    key is compared after the same cleaning (C(//) becomes C(/), C(.) and C(..) segments are resolved); a label
    value such as C(https://example.org) is C(https:/example.org) in its value keys. With O(kvstore=consul) label
    keys and master values are base64url-encoded, as Cilium writes them; both are handled.
  - With O(cilium_version) 1.18.6 or later a value key counts only when it holds the identity's ID, as the
    operator of those releases requires.
  - B(Two passes), as the operator does. An unused identity is first I(marked) under O(gc_state_prefix) with the
    master key's revision. A later run deletes it only if it is still unused, its mark is at least O(min_age)
    seconds old, and the master key still has the marked revision (a different revision is marked again). An
    identity that is in use again loses its mark.
  - Each deletion is a transaction that deletes the master key only at the marked revision; with etcd it also
    checks that still no value key exists under the identity's label key, so an agent that starts using the
    identity between the listing and the delete keeps it (Consul transactions cannot check a prefix; there the
    window is the few milliseconds between the listing and the transaction).
  - Only identities in this cluster's range (O(cluster_id), O(max_connected_clusters)) are touched. Deletions are
    rate-limited (O(rate_limit) per O(rate_interval)) and optionally capped (O(max_delete), O(max_delete_percent)).
    Writes happen under the leader lock shared with M(netreap.cilium.cilium_node_gc).
author:
  - netreap.cilium maintainers (@netreap)
extends_documentation_fragment:
  - netreap.cilium._attributes
  - netreap.cilium._attributes.actiongroup_kvstore
  - netreap.cilium._kvstore
  - netreap.cilium._kvstore.gc
  - netreap.cilium._consul
  - netreap.cilium._etcd
options:
  cluster_id:
    description:
      - The agents' C(--cluster-id). Cluster 0 allocates identities 256 to 65535; cluster N from N*65536 to
        (N+1)*65536-1 (N*32768 to (N+1)*32768-1 with O(max_connected_clusters=511)). Identities outside that range
        belong to other clusters of a cluster mesh and are never touched.
    type: int
    default: 0
  max_connected_clusters:
    description:
      - The agents' C(--max-connected-clusters); decides how identity ranges are split between clusters.
    type: int
    choices: [255, 511]
    default: 255
  min_age:
    description:
      - Seconds an identity must have been marked unused, by an earlier run, before a run deletes it.
      - The default matches the operator's C(--identity-gc-interval) (15 minutes).
    type: int
    default: 900
  rate_limit:
    description:
      - Delete at most this many identities per O(rate_interval), as the operator's C(--identity-gc-rate-limit)
        does. Later windows wait (while renewing the leader lock). V(0) means no limit.
    type: int
    default: 2500
  rate_interval:
    description:
      - Seconds per rate-limit window (the operator's C(--identity-gc-rate-interval)).
    type: float
    default: 60
  max_delete:
    description:
      - Fail, deleting nothing, when a run would delete more than this many identities. Not set means no count cap.
    type: int
  max_delete_percent:
    description:
      - Fail, deleting nothing, when a run would delete more than this percentage of this cluster's identities.
        Not set means no percentage cap (identity churn routinely leaves more dead identities than live ones).
    type: float
  cilium_version:
    description:
      - The Cilium release of the agents (C(major.minor.patch), for example V(1.18.6)). From 1.18.6 (and in 1.19)
        cilium-operator counts a value key as a user only when its content is the identity's ID; with such a
        release set here this module does the same, so an identity whose only value keys hold another ID (left by
        an earlier allocation of the same labels) is collected.
      - Not set means every value key counts, as in every release before 1.18.6. That is never less safe - it only
        keeps such identities longer - so leave it unset for mixed or unknown releases. The GC runs away from the
        agents (no agent socket), so the release comes from this option, not from an agent.
    type: str
attributes:
  check_mode:
    support: full
    details: Reports exactly what would be deleted, marked and unmarked; takes no lock and writes nothing.
  diff_mode:
    support: full
    details: The diff lists the kvstore keys deleted (master keys and marks) and the marks written.
seealso:
  - module: netreap.cilium.cilium_node_gc
  - module: netreap.cilium.cilium_kvstore_heartbeat
  - name: Identity GC in cilium-operator and this collection
    description: The mark/sweep algorithm, guards and the leader lock (docs/kvstore-gc.md in the collection).
    link: https://github.com/netreap/netreap.cilium/blob/main/docs/kvstore-gc.md
notes:
  - A Consul token whose ACLs hide part of a listing makes the run fail (Consul answers with a filtered list, which
    would make used identities look unused). Consul flags such a listing with C(X-Consul-Results-Filtered-By-ACLs)
    only from 1.11; before a run marks or deletes anything on Consul it therefore checks that the server is 1.11
    or later (C(/v1/agent/self), needs C(agent:read)), or that ACLs are off or the token is a management token
    (C(/v1/acl/token/self)); otherwise it fails and changes nothing.
  - "Consul ACL: C(key:write) on C(cilium/state/identities/), O(gc_state_prefix) and O(lock_key), C(session:write),
    and C(agent:read) (the Consul version, see above)."
"""

EXAMPLES = r"""
- name: Collect unused identities (mark now, delete on a run at least 15 minutes later)
  netreap.cilium.cilium_identity_gc:
    kvstore: etcd
    etcd_config: /etc/cilium/etcd.yml
  register: identity_gc

- name: Cilium 1.16 on Consul, cluster 3 of a cluster mesh, never more than 500 deletions a run
  netreap.cilium.cilium_identity_gc:
    kvstore: consul
    cluster_id: 3
    max_delete: 500

- name: Show what would go
  netreap.cilium.cilium_identity_gc:
    kvstore: etcd
  check_mode: true
  register: preview

- name: List the label sets of the identities a run would delete
  ansible.builtin.debug:
    msg: "{{ preview.deleted | map(attribute='labels') | list }}"
"""

RETURN = r"""
deleted:
  description: Identities deleted (in check mode, that would be deleted), with labels, reason and mark time.
  returned: always
  type: list
  elements: dict
  sample: [{"id": 5256, "key": "cilium/state/identities/v1/id/5256",
            "labels": "netreap:nomad.job_id=retired-a;netreap:nomad.namespace=default;",
            "reason": "unused: no value key refers to it", "mark_key": "netreap/gc/v1/identities/5256",
            "marked_since": "2024-05-01T10:00:00Z"}]
marked:
  description: Unused identities marked by this run (first seen unused, or rewritten since they were marked).
  returned: always
  type: list
  elements: dict
unmarked:
  description: Marks removed because the identity is in use again, is gone, or is outside this cluster's range.
  returned: always
  type: list
  elements: dict
kept:
  description:
    - Identities that stay other than the ones in use, and why - outside this cluster's range, marked too recently,
      or in use again / changed while the run was writing.
  returned: always
  type: list
  elements: dict
  sample: [{"id": 70000, "key": "cilium/state/identities/v1/id/70000", "labels": "k8s:app=x;",
            "reason": "outside this cluster's identity range 256-65535"}]
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
  description: Identities in this cluster's range, in use, unused, outside the range, and the lengths of the lists.
  returned: always
  type: dict
  sample: {"identities": 120, "in_use": 80, "unused": 40, "out_of_range": 0, "deleted": 40, "marked": 0,
           "unmarked": 0, "kept": 0}
requests:
  description: HTTP requests this run made to the kvstore.
  returned: always
  type: dict
  sample: {"kvstore": 9}
transactions:
  description: kvstore write transactions this run committed or attempted.
  returned: always
  type: int
  sample: 1
skipped:
  description: True when another reaper held the leader lock and O(on_lock_held=skip).
  returned: always
  type: bool
  sample: false
msg:
  description: Why the run was skipped.
  returned: when skipped
  type: str
lock:
  description: The leader lock key, whether this run acquired it, and the holder when another reaper had it.
  returned: always
  type: dict
  sample: {"key": "netreap/gc/v1/leader", "acquired": true}
"""

import re
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import (
    KVSTORE_ARGUMENT_SPEC,
    kvstore_from_params,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc import (
    IDS_PREFIX,
    VALUES_PREFIX,
    identity_marks_prefix,
    identity_range,
    plan_identity_gc,
    rate_windows,
    value_must_match_id,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc_run import (
    GC_ARGUMENT_SPEC,
    GCRun,
    default_lock_key,
    validate_gc_params,
)


def main():
    argument_spec = dict(
        cluster_id=dict(type="int", default=0),
        max_connected_clusters=dict(type="int", choices=[255, 511], default=255),
        min_age=dict(type="int", default=900),
        rate_limit=dict(type="int", default=2500),
        rate_interval=dict(type="float", default=60.0),
        max_delete=dict(type="int"),
        max_delete_percent=dict(type="float"),
        cilium_version=dict(type="str"),
    )
    argument_spec.update(KVSTORE_ARGUMENT_SPEC)
    argument_spec.update(GC_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    problems = [validate_gc_params(params)]
    max_cluster = params["max_connected_clusters"]
    if not 0 <= params["cluster_id"] <= max_cluster:
        problems.append("cluster_id must be between 0 and %d" % max_cluster)
    if params["cilium_version"] is not None and not re.match(r"^v?\d+\.\d+\.\d+$", params["cilium_version"]):
        problems.append("cilium_version must be a release such as 1.18.6, not %r" % params["cilium_version"])
    if params["rate_limit"] < 0 or params["rate_interval"] < 0:
        problems.append("rate_limit and rate_interval must not be negative")
    problem = "; ".join(p for p in problems if p)
    if problem:
        module.fail_json(msg=problem)
    try:
        kv = kvstore_from_params(params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    gc = GCRun(module, kv, "cilium_identity_gc", default_lock_key(params))
    id_range = identity_range(params["cluster_id"], max_cluster)
    marks_prefix = identity_marks_prefix(params["gc_state_prefix"])

    def read():
        return gc.list(IDS_PREFIX), gc.list(VALUES_PREFIX), gc.list(marks_prefix), time.time()

    def plan(state):
        ids, values, marks, now = state
        return plan_identity_gc(ids, values, marks, now, id_range=id_range, encoded=kv.encodes_keys,
                                min_age=params["min_age"], max_delete=params["max_delete"],
                                max_delete_percent=params["max_delete_percent"],
                                state_prefix=params["gc_state_prefix"],
                                match_id=value_must_match_id(params["cilium_version"]))

    def check(planned):
        if planned.of("mark") or planned.of("delete"):
            # an identity looks unused: only if no value key can have been hidden from us
            kv.check_listings_complete()

    gc.execute(read, plan, check=check,
               windows=lambda planned: rate_windows(len(planned.of("delete")), params["rate_limit"]),
               window_interval=params["rate_interval"])


if __name__ == "__main__":
    main()
