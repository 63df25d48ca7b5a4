# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium: kvstore backend selection and the options every kvstore GC module shares."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  kvstore:
    description:
      - The kvstore the Cilium agents use (C(--kvstore)). V(consul) exists up to Cilium 1.16; V(etcd) in every version.
      - With V(consul) the C(consul_*) options say how to reach Consul; with V(etcd) the C(etcd_*) options.
    type: str
    choices: [consul, etcd]
    default: etcd
"""

    GC = r"""
options:
  gc_state_prefix:
    description:
      - Key prefix, in the same kvstore, under which the two-pass marks are kept (each run is a new process, so
        marks must persist between runs). Node marks live under C(<gc_state_prefix>/nodes/<cluster_name>/<node>),
        identity marks under C(<gc_state_prefix>/identities/<id>). Each mark is JSON C({since, revision, reason, key}).
      - The token (Consul) or user (etcd) needs read and write access to this prefix.
    type: str
    default: netreap/gc/v1
  lock_key:
    description:
      - Key of the leader lock every GC module of this collection takes before writing, so that two reapers
        started at once never both delete.
      - With O(kvstore=consul) a Consul session (TTL O(lock_ttl), behaviour C(release)) acquires this key; the default
        is Netreap's own leader key V(service/netreaper/leader), so a still-running Netreap and this module exclude
        each other. With O(kvstore=etcd) the key is created only if absent, attached to a lease of O(lock_ttl) seconds;
        the default is C(<gc_state_prefix>/leader).
      - The lock is released when the run ends; if the process dies, it expires with its session or lease
        (Consul may take up to twice the TTL, plus a 15 s lock-delay).
      - Every write transaction also checks that the lock is still held, so a run that lost its lock stops instead
        of deleting.
      - The lock is only taken when there is something to write; check mode and runs with nothing to do take no lock.
    type: str
  lock_ttl:
    description:
      - Seconds the lock survives a reaper that died. Renewed while the run is writing.
      - Consul accepts 10 to 86400.
    type: int
    default: 30
  on_lock_held:
    description:
      - What to do when another reaper holds the lock.
      - "V(skip) succeeds without changes and reports C(skipped=true) with C(msg) starting
        C(skipped: another reaper holds the lock). V(fail) fails the task with the holder in the message."
    type: str
    choices: [skip, fail]
    default: skip
  kvstore_txn_max_ops:
    description:
      - Operations per transaction. Deletions and marks are batched into transactions of at most this many
        operations (one of them the lock check).
      - "Defaults to the server's limit. etcd: 128, its default C(--max-txn-ops); lower this if your etcd runs
        with a smaller one. Consul: 128 when C(/v1/agent/self) shows Consul 1.14 or later (the token needs
        C(agent:read)), else 64, the limit of Consul before 1.14."
    type: int
"""
