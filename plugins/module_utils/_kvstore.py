# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): one interface over Cilium's kvstore backends.

``ConsulKV`` and ``EtcdKV`` adapt the Consul and etcd clients (through their public calls) to the
same calls, on the value types of ``_kvstore_types``:

* ``list(prefix)`` -> sorted ``KVEntry(key, value, revision)`` (Consul ModifyIndex, etcd
  mod_revision); a Consul listing that ACLs filtered raises ``KVStoreError`` instead of
  silently looking smaller than it is;
* ``get``/``put`` for single keys (the heartbeat);
* ``commit(changes, fence, result=...)``: apply groups of operations (``delete_if`` a key still
  has a revision, plain ``delete``/``put``, and ``absent_prefix`` -- "no key under this prefix",
  etcd only) in as few transactions as the server's op limit allows, recording what was done in
  ``result`` as it goes.  Each change is atomic; a change whose condition no longer holds is
  dropped from its batch and reported as a conflict, the rest of the batch is retried.  With a
  ``fence`` (the leader lock) every transaction also checks that we still hold the lock, so a
  reaper that lost its lock can never delete;
* ``lock(key, ttl, holder)``: the leader lock -- a Consul session (behaviour ``release``) that
  acquires ``key``, or an etcd lease with a create-if-absent ``key``.  Released on exit; if the
  process dies the session or lease expires after its TTL.
"""

from __future__ import annotations

import base64
import json
import time

from ansible_collections.netreap.cilium.plugins.module_utils._consul import (
    CONSUL_ARGUMENT_SPEC,
    ConsulClient,
    ConsulTxnError,
)
from ansible_collections.netreap.cilium.plugins.module_utils._etcd import (
    ETCD_ARGUMENT_SPEC,
    TXN_MAX_OPS as ETCD_TXN_MAX_OPS,
    EtcdClient,
    b64,
    prefix_range_end,
)
from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError, failure_message
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_types import (
    CommitResult,
    KVEntry,
    delete,
)

# Netreap's leader key: a reaper from this collection and a running Netreap exclude each other.
CONSUL_DEFAULT_LOCK_KEY = "service/netreaper/leader"
CONSUL_LOCK_DELAY = "15s"
# The HTTP-layer service names a run counts as "kvstore" requests (``_run.Run(requests=...)``).
KVSTORE_REQUESTS = {"kvstore": ("consul", "etcd")}

KVSTORE_ARGUMENT_SPEC = dict(
    kvstore=dict(type="str", choices=["consul", "etcd"], default="etcd"),
)
KVSTORE_ARGUMENT_SPEC.update(CONSUL_ARGUMENT_SPEC)
KVSTORE_ARGUMENT_SPEC.update(ETCD_ARGUMENT_SPEC)


class KVStoreError(Exception):
    """A kvstore call failed; ``cause`` is the ServiceError (if any)."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.cause = cause


class LockLost(KVStoreError):
    """The fence check failed: someone else holds (or nobody holds) the leader lock now."""


class LockHeld(KVStoreError):
    def __init__(self, key, holder):
        super().__init__("another reaper holds the lock %s (%s)" % (key, holder or "unknown holder"))
        self.key = key
        self.holder = holder


def kvstore_from_params(params):
    """The backend adapter the task asked for (``kvstore: consul|etcd``)."""
    if params.get("kvstore") == "consul":
        return ConsulKV(ConsulClient.from_params(params), params.get("kvstore_txn_max_ops"))
    return EtcdKV(EtcdClient.from_params(params), params.get("kvstore_txn_max_ops"))


def _chunks(changes, capacity):
    """Pack changes into batches of at most ``capacity`` operations, keeping each change whole.

    A change larger than a batch is split into consecutive chunks of its own, in order, so its
    last operations (the node key, by convention) are committed last.  Yields lists of
    ``(change, ops, is_last_chunk)``.
    """
    batch, size = [], 0
    for change in changes:
        cost = len(change.ops)
        if cost > capacity:
            if batch:
                yield batch
                batch, size = [], 0
            for start in range(0, cost, capacity):
                part = change.ops[start:start + capacity]
                yield [(change, part, start + capacity >= cost)]
            continue
        if size + cost > capacity and batch:
            yield batch
            batch, size = [], 0
        batch.append((change, list(change.ops), True))
        size += cost
    if batch:
        yield batch


class _Backend:
    name = None
    encodes_keys = False
    default_max_ops = 128
    attempts = 3

    def __init__(self, max_ops=None):
        self._max_ops = max_ops

    def max_ops(self):
        return self._max_ops or self.default_max_ops

    def commit(self, changes, fence=None, between_batches=None, result=None):
        """Apply ``changes`` (list of Change) in batched transactions; returns the CommitResult.

        ``fence`` is a held lock (checked inside every transaction); ``between_batches`` is
        called after each batch (to renew the lock).  What is done is recorded in ``result`` (a
        CommitResult, new if None) as it happens, so after an exception it still says what was
        committed: a ServiceError (the changes of a transaction that timed out are listed as
        ``unconfirmed``) or LockLost when the fence check fails.
        """
        result = CommitResult() if result is None else result
        capacity = self.max_ops() - (1 if fence is not None else 0)
        if capacity < 1:
            raise KVStoreError("kvstore_txn_max_ops must leave room for at least one operation")
        failed = set()
        for batch in _chunks(changes, capacity):
            pending = [item for item in batch if item[0].tag not in failed]
            committed = not pending
            for unused_attempt in range(self.attempts if pending else 0):
                try:
                    ok, conflicts, pending = self._commit_once(pending, fence)
                except ServiceError as exc:
                    result.transactions += 1
                    if exc.kind in ("timeout", "transport"):
                        result.unconfirmed.extend(change.tag for change, unused, last in pending)
                    raise
                result.transactions += 1
                for tag, why in conflicts.items():
                    failed.add(tag)
                    result.conflicts[tag] = why
                if ok or not pending:
                    committed = ok
                    break
            if not committed:
                for change, unused, last in pending:
                    failed.add(change.tag)
                    result.conflicts[change.tag] = "kept changing while being written"
                pending = []
            for change, unused, last in pending:
                (result.done if last else result.partial).append(change.tag)
            if between_batches is not None:
                between_batches()
        result.partial = [tag for tag in result.partial if tag not in result.done]
        return result

    def _commit_once(self, items, fence):
        """One transaction.  Returns ``(committed, conflicts, items)``: when not committed,
        ``items`` are what to retry (conflicting changes removed, vanished keys unguarded)."""
        raise NotImplementedError


class ConsulKV(_Backend):
    """Cilium's Consul kvstore (Cilium <= 1.16): label keys and master values base64url-encoded."""

    name = "consul"
    encodes_keys = True

    def __init__(self, client, max_ops=None):
        super().__init__(max_ops)
        self.client = client
        self._listings_checked = None

    def max_ops(self):
        return self._max_ops or self.client.txn_max_ops()

    def list(self, prefix):
        entries, unused_index, filtered = self.client.kv_list(prefix)
        if filtered:
            raise KVStoreError("Consul hid part of %s from this token (X-Consul-Results-Filtered-By-ACLs):"
                               " the listing is incomplete; grant key:read on that prefix" % prefix)
        return sorted(KVEntry(e["Key"], e.get("Value") or b"", int(e.get("ModifyIndex") or 0))
                      for e in entries)

    def check_listings_complete(self):
        """Raise KVStoreError unless a listing shortened by ACLs would have been noticed."""
        if self._listings_checked is None:
            try:
                self._listings_checked = self.client.acl_filtering_visible()
            except ServiceError as exc:
                raise KVStoreError(failure_message("check whether Consul may hide keys from this token", exc)
                                   + ". Nothing was changed", exc)
        ok, why = self._listings_checked
        if not ok:
            raise KVStoreError("cannot trust the Consul listings: %s. Nothing was changed" % why)

    def get(self, key):
        entry = self.client.kv_get(key)[0]
        if entry is None:
            return None
        return KVEntry(entry["Key"], entry.get("Value") or b"", int(entry.get("ModifyIndex") or 0))

    def put(self, key, value):
        self.client.kv_put(key, value)

    def lock(self, key, ttl, holder):
        return ConsulLock(self, key, ttl, holder)

    @staticmethod
    def _txn_op(op):
        if op.kind == "delete_if":
            return {"KV": {"Verb": "delete-cas", "Key": op.key, "Index": op.revision}}
        if op.kind == "delete":
            return {"KV": {"Verb": "delete", "Key": op.key}}
        if op.kind == "put":
            return {"KV": {"Verb": "set", "Key": op.key,
                           "Value": base64.b64encode(op.value).decode("ascii")}}
        return None  # absent_prefix: Consul has no prefix check inside a transaction

    def _commit_once(self, items, fence):
        ops, owner = [], []
        if fence is not None:
            ops.append({"KV": {"Verb": "check-session", "Key": fence.key, "Session": fence.session}})
            owner.append(None)
        for index, (change, part, unused_last) in enumerate(items):
            for op in part:
                txn_op = self._txn_op(op)
                if txn_op is not None:
                    ops.append(txn_op)
                    owner.append(index)
        if not ops or owner == [None]:
            return True, {}, items
        try:
            self.client.txn(ops)
            return True, {}, items
        except ConsulTxnError as exc:
            positions = [(e.get("OpIndex"), e.get("What") or "") for e in exc.errors]
            for position, what in positions:
                if fence is not None and position == 0:
                    raise LockLost("lost the leader lock %s: %s" % (fence.key, what), exc)
            conflicts = {}
            for position, what in positions:
                item = owner[position] if isinstance(position, int) and 0 <= position < len(owner) \
                    else None
                if item is None or "index is stale" not in what:
                    raise
                conflicts[items[item][0].tag] = "changed since planned (%s)" % ops[position]["KV"]["Key"]
            return False, conflicts, [it for it in items if it[0].tag not in conflicts]


class EtcdKV(_Backend):
    """Cilium's etcd kvstore: raw keys and values."""

    name = "etcd"
    encodes_keys = False
    default_max_ops = ETCD_TXN_MAX_OPS

    def __init__(self, client, max_ops=None):
        super().__init__(max_ops)
        self.client = client

    @staticmethod
    def check_listings_complete():
        """etcd has no ACL filtering of ranges: a range the user may not read fails instead."""

    def list(self, prefix):
        items = self.client.list_prefix(prefix)[0]
        return sorted(KVEntry(i["key"], i["value"], i["mod_revision"]) for i in items)

    def get(self, key):
        item = self.client.get(key)
        if item is None:
            return None
        return KVEntry(item["key"], item["value"], item["mod_revision"])

    def put(self, key, value):
        self.client.put(key, value)

    def lock(self, key, ttl, holder):
        return EtcdLock(self, key, ttl, holder)

    def _commit_once(self, items, fence):
        compare, success, failure, checks = [], [], [], []
        if fence is not None:
            compare.append({"key": b64(fence.key), "target": "LEASE", "result": "EQUAL",
                            "lease": str(fence.lease)})
            failure.append({"request_range": {"key": b64(fence.key), "keys_only": True}})
            checks.append(("fence", None, None))
        for index, (change, part, unused_last) in enumerate(items):
            for op in part:
                key = b64(op.key)
                if op.kind == "delete_if":
                    compare.append({"key": key, "target": "MOD", "result": "EQUAL",
                                    "mod_revision": str(op.revision)})
                    success.append({"request_delete_range": {"key": key}})
                    failure.append({"request_range": {"key": key, "keys_only": True}})
                    checks.append(("revision", index, op))
                elif op.kind == "absent_prefix":
                    end = b64(prefix_range_end(op.key))
                    compare.append({"key": key, "range_end": end, "target": "VERSION",
                                    "result": "EQUAL", "version": "0"})
                    failure.append({"request_range": {"key": key, "range_end": end,
                                                      "count_only": True}})
                    checks.append(("absent", index, op))
                elif op.kind == "delete":
                    success.append({"request_delete_range": {"key": key}})
                else:
                    success.append({"request_put": {"key": key, "value": b64(op.value)}})
        if not success:
            return True, {}, items
        ok, responses = self.client.txn(compare, success, failure)
        if ok:
            return True, {}, items
        conflicts, vanished = {}, {}
        for (what, index, op), response in zip(checks, responses):
            found = (response or {}).get("response_range") or {}
            kvs = found.get("kvs") or []
            if what == "fence":
                lease = int(kvs[0].get("lease", 0)) if kvs else 0
                if lease != fence.lease:
                    raise LockLost("lost the leader lock %s (lease %s no longer holds it)"
                                   % (fence.key, fence.lease))
            elif what == "revision":
                if not kvs:
                    vanished.setdefault(index, set()).add(op)  # already gone: nothing to guard
                elif int(kvs[0].get("mod_revision", 0)) != op.revision:
                    conflicts[items[index][0].tag] = "changed since planned (%s)" % op.key
            elif int(found.get("count", 0) or 0) > 0:
                conflicts[items[index][0].tag] = "in use again (a key appeared under %s)" % op.key
        remaining = []
        for index, (change, part, last) in enumerate(items):
            if change.tag in conflicts:
                continue
            gone = vanished.get(index)
            if gone:
                part = [delete(op.key) if op in gone else op for op in part]
            remaining.append((change, part, last))
        return False, conflicts, remaining


class _Lock:
    """The leader lock; ``acquire()`` raises LockHeld when another reaper has it."""

    def __init__(self, backend, key, ttl, holder):
        self.backend = backend
        self.key = key
        self.ttl = int(ttl)
        self.holder = holder
        self.held = False
        self._renewed = None

    def _value(self):
        return json.dumps({"holder": self.holder,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    @staticmethod
    def describe_holder(value):
        try:
            data = json.loads(value.decode("utf-8")) if value else None
        except (ValueError, UnicodeError):
            data = None
        if isinstance(data, dict) and data.get("holder"):
            return "%s since %s" % (data["holder"], data.get("since", "?"))
        return value.decode("utf-8", "replace") if value else None

    def renew_if_due(self):
        """Renew when a third of the TTL has passed; raises LockLost if the lock is gone."""
        if self.held and time.monotonic() - self._renewed >= self.ttl / 3.0:
            self._renew()
            self._renewed = time.monotonic()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class ConsulLock(_Lock):
    def __init__(self, backend, key, ttl, holder):
        super().__init__(backend, key, ttl, holder)
        self.session = None

    def acquire(self):
        client = self.backend.client
        self.session = client.session_create("netreap.cilium reaper", ttl="%ds" % self.ttl,
                                             lock_delay=CONSUL_LOCK_DELAY, behavior="release")
        try:
            acquired = client.lock_acquire(self.key, self.session, self._value().encode("utf-8"))
        except ServiceError:
            self._destroy()
            raise
        if not acquired:
            self._destroy()
            entry = client.kv_get(self.key)[0] or {}
            holder = self.describe_holder(entry.get("Value"))
            if entry.get("Session"):
                holder = "%s (Consul session %s)" % (holder or "holder", entry["Session"])
            raise LockHeld(self.key, holder or "lock-delay after a holder's session expired")
        self.held = True
        self._renewed = time.monotonic()
        return self

    def _renew(self):
        try:
            self.backend.client.session_renew(self.session)
        except ServiceError as exc:
            if exc.status == 404:
                self.held = False
                raise LockLost("lost the leader lock %s: Consul session %s expired"
                               % (self.key, self.session), exc)
            raise

    def _destroy(self):
        try:
            self.backend.client.session_destroy(self.session)
        except ServiceError:
            pass  # the TTL ends it anyway

    def release(self):
        """Release explicitly (no lock-delay for the next reaper), then end the session."""
        if self.session is None:
            return
        if self.held:
            try:
                self.backend.client.lock_release(self.key, self.session)
            except ServiceError:
                pass
            self.held = False
        self._destroy()
        self.session = None


class EtcdLock(_Lock):
    def __init__(self, backend, key, ttl, holder):
        super().__init__(backend, key, ttl, holder)
        self.lease = None

    def acquire(self):
        client = self.backend.client
        self.lease = client.lease_grant(self.ttl)
        try:
            created = client.create_if_absent(self.key, self._value(), lease=self.lease)
        except ServiceError:
            self._revoke()
            raise
        if not created:
            self._revoke()
            item = client.get(self.key)
            raise LockHeld(self.key, self.describe_holder(item["value"]) if item else None)
        self.held = True
        self._renewed = time.monotonic()
        return self

    def _renew(self):
        if self.backend.client.lease_keepalive(self.lease) <= 0:
            self.held = False
            raise LockLost("lost the leader lock %s: etcd lease %s expired" % (self.key, self.lease))

    def _revoke(self):
        try:
            self.backend.client.lease_revoke(self.lease)
        except ServiceError:
            pass  # already expired: the key went with it

    def release(self):
        """Revoking the lease deletes the lock key with it."""
        if self.lease is None:
            return
        self._revoke()
        self.held = False
        self.lease = None
