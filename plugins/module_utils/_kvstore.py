# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): one interface over Cilium's kvstore backends.

``ConsulKV`` and ``EtcdKV`` offer the same calls to the GC modules:

* ``list(prefix)`` -> sorted ``KVEntry(key, value, revision)`` (Consul ModifyIndex, etcd
  mod_revision); a Consul listing that ACLs filtered raises ``KVStoreError`` instead of
  silently looking smaller than it is;
* ``get``/``put`` for single keys (the heartbeat);
* ``commit(changes, fence)``: apply groups of operations (``delete_if`` a key still has a
  revision, plain ``delete``/``put``, and ``absent_prefix`` -- "no key under this prefix", etcd
  only) in as few transactions as the server's op limit allows.  Each change is atomic; a change
  whose condition no longer holds is dropped from its batch and reported as a conflict, the rest
  of the batch is retried.  With a ``fence`` (the leader lock) every transaction also checks that
  we still hold the lock, so a reaper that lost its lock can never delete;
* ``lock(key, ttl, holder)``: the leader lock -- a Consul session (behaviour ``release``) that
  acquires ``key``, or an etcd lease with a create-if-absent ``key``.  Released on exit; if the
  process dies the session or lease expires after its TTL.

``GCRun`` is the flow both GC modules share: plan without writing, then (only if there is
something to write and not in check mode) take the lock, plan again from a fresh read, commit
fenced by the lock, release it, and report what was done.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections import namedtuple

from ansible_collections.netreap.cilium.plugins.module_utils._consul import (
    CONSUL_ARGUMENT_SPEC,
    ConsulClient,
    ConsulTxnError,
    key_options_problem,
)
from ansible_collections.netreap.cilium.plugins.module_utils._etcd import (
    ETCD_ARGUMENT_SPEC,
    TXN_MAX_OPS as ETCD_TXN_MAX_OPS,
    EtcdClient,
    b64,
    prefix_range_end,
)
from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError, failure_message

DEFAULT_STATE_PREFIX = "netreap/gc/v1"
# Netreap's leader key: a reaper from this collection and a running Netreap exclude each other.
CONSUL_DEFAULT_LOCK_KEY = "service/netreaper/leader"
DEFAULT_LOCK_TTL = 30
CONSUL_LOCK_DELAY = "15s"

KVSTORE_ARGUMENT_SPEC = dict(
    kvstore=dict(type="str", choices=["consul", "etcd"], default="etcd"),
)
KVSTORE_ARGUMENT_SPEC.update(CONSUL_ARGUMENT_SPEC)
KVSTORE_ARGUMENT_SPEC.update(ETCD_ARGUMENT_SPEC)

GC_ARGUMENT_SPEC = dict(
    kvstore_txn_max_ops=dict(type="int"),
    gc_state_prefix=dict(type="str", default=DEFAULT_STATE_PREFIX),
    lock_key=dict(type="str", no_log=False),
    lock_ttl=dict(type="int", default=DEFAULT_LOCK_TTL),
    on_lock_held=dict(type="str", choices=["skip", "fail"], default="skip"),
)

KVEntry = namedtuple("KVEntry", "key value revision")


class Op(namedtuple("Op", "kind key revision value")):
    """One kvstore operation inside a Change.

    kind: ``delete_if`` (delete only while ``key`` has ``revision``), ``delete``, ``put``,
    ``absent_prefix`` (fail the change if any key starts with ``key``; enforced by etcd only,
    Consul transactions have no prefix check).
    """

    __slots__ = ()


def delete_if(key, revision):
    return Op("delete_if", key, int(revision), None)


def delete(key):
    return Op("delete", key, None, None)


def put(key, value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return Op("put", key, None, value)


def absent_prefix(prefix):
    return Op("absent_prefix", prefix, None, None)


Change = namedtuple("Change", "tag ops")


class KVStoreError(Exception):
    """A kvstore call failed; ``cause`` is the ServiceError (if any)."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.cause = cause


class CommitResult:
    def __init__(self):
        self.done = []          # tags whose every operation committed
        self.conflicts = {}     # tag -> why it was not applied
        self.unconfirmed = []   # tags of a transaction whose outcome is unknown (timeout)
        self.partial = []       # tags split over transactions of which only the first ran
        self.transactions = 0


class CommitError(KVStoreError):
    """A write failed part-way; ``result`` says what was committed before."""

    def __init__(self, message, result, cause=None):
        super().__init__(message, cause)
        self.result = result


class LockLost(CommitError):
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

    def commit(self, changes, fence=None, between_batches=None):
        """Apply ``changes`` (list of Change) in batched transactions; returns CommitResult.

        ``fence`` is a held lock (checked inside every transaction); ``between_batches`` is
        called after each batch (to renew the lock).  Raises CommitError (with the partial
        result) when a transaction fails for any reason other than a conflict, LockLost when
        the fence check fails.
        """
        result = CommitResult()
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
                except LockLost as exc:
                    exc.result = result
                    raise
                except ServiceError as exc:
                    result.transactions += 1
                    if exc.kind in ("timeout", "transport"):
                        result.unconfirmed.extend(change.tag for change, unused, last in pending)
                    raise CommitError(str(exc), result, exc)
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
                if last:
                    result.done.append(change.tag)
                else:
                    result.partial.append(change.tag)
            if between_batches is not None:
                try:
                    between_batches()
                except LockLost as exc:
                    exc.result = result
                    raise
                except ServiceError as exc:
                    raise CommitError("renew the leader lock: %s" % exc.describe(), result, exc)
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

    @property
    def request_count(self):
        return self.client.http.request_count

    def max_ops(self):
        return self._max_ops or self.client.txn_max_ops()

    def list(self, prefix):
        http = self.client.http
        data, resp = http.request_json("GET", self.client._kv_path(prefix),
                                       query=self.client._query(recurse=""), expect=(200, 404),
                                       allow_empty=True)
        if (resp.header("x-consul-results-filtered-by-acls") or "").lower() == "true":
            raise KVStoreError("Consul hid part of %s from this token (X-Consul-Results-Filtered-By-ACLs):"
                               " the listing is incomplete; grant key:read on that prefix" % prefix)
        if resp.status == 404 or not data:
            return []
        entries = []
        for item in data:
            value = item.get("Value")
            entries.append(KVEntry(item["Key"], base64.b64decode(value) if value else b"",
                                   int(item.get("ModifyIndex") or 0)))
        return sorted(entries)

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
                    raise LockLost("lost the leader lock %s: %s" % (fence.key, what), None, exc)
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

    @property
    def request_count(self):
        return self.client.request_count

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

    def revision(self):
        """The store's current revision (moves on every write): proves a run wrote nothing."""
        data = self.client.call("kv/range", {"key": b64("\x00"), "count_only": True})
        return int((data.get("header") or {}).get("revision", 0))

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
                                   % (fence.key, fence.lease), None)
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
                               % (self.key, self.session), None, exc)
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
        data = self.backend.client.call("lease/keepalive", {"ID": str(self.lease)})
        if int((data.get("result") or data).get("TTL", 0) or 0) <= 0:
            self.held = False
            raise LockLost("lost the leader lock %s: etcd lease %s expired" % (self.key, self.lease),
                           None)

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


def decode_label_key(stored, encoded):
    """A label key as stored (base64url in Consul, raw in etcd) -> readable text."""
    if not encoded:
        return stored
    try:
        padded = stored + "=" * (-len(stored) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        return stored


# -- the run every GC module shares --------------------------------------------------------
class GCFailure(Exception):
    """A read failed or an input is wrong: the run stops before writing anything."""


def validate_gc_params(params):
    """Problems with the options every GC module shares, as one message (or None)."""
    problems = []
    prefix = params["gc_state_prefix"] or ""
    if not prefix.strip("/") or prefix.startswith("/"):
        problems.append("gc_state_prefix must be a relative key prefix such as netreap/gc/v1")
    elif prefix.startswith("cilium/"):
        problems.append("gc_state_prefix must not be under cilium/ (marks would look like Cilium state)")
    else:
        problems.append(key_options_problem(params, prefixes=("gc_state_prefix",)))
    problems.append(key_options_problem(params, keys=("lock_key",)))
    problems = [p for p in problems if p]
    ttl = params["lock_ttl"]
    if params["kvstore"] == "consul" and not 10 <= ttl <= 86400:
        problems.append("lock_ttl must be between 10 and 86400 seconds for a Consul session, not %s" % ttl)
    elif ttl < 2:
        problems.append("lock_ttl must be at least 2 seconds, not %s" % ttl)
    if params["kvstore_txn_max_ops"] is not None and params["kvstore_txn_max_ops"] < 2:
        problems.append("kvstore_txn_max_ops must be at least 2")
    for name in ("min_age", "max_delete", "down_after"):
        if params.get(name) is not None and params[name] < 0:
            problems.append("%s must not be negative" % name)
    percent = params.get("max_delete_percent")
    if percent is not None and not 0 <= percent <= 100:
        problems.append("max_delete_percent must be between 0 and 100")
    return "; ".join(problems) or None


def default_lock_key(params):
    if params["lock_key"]:
        return params["lock_key"]
    if params["kvstore"] == "consul":
        return CONSUL_DEFAULT_LOCK_KEY
    return "%s/leader" % params["gc_state_prefix"].rstrip("/")


def read_prefix(kv, prefix):
    try:
        return kv.list(prefix)
    except ServiceError as exc:
        raise GCFailure(failure_message("list %s keys under %s" % (kv.name, prefix), exc)
                        + ". Nothing was changed")


_DONE = {"delete": "deleted", "mark": "marked", "unmark": "unmarked"}  # result list = past tense


def _merge(total, part):
    total.done.extend(part.done)
    total.conflicts.update(part.conflicts)
    total.unconfirmed.extend(part.unconfirmed)
    total.partial.extend(part.partial)
    total.transactions += part.transactions


class GCRun:
    """plan -> (leader lock -> fresh plan under the lock -> fenced, batched commit) -> report.

    ``read_and_plan()`` reads the kvstore (and Nomad) and returns a ``_kvstore_gc.Plan``; it
    raises GCFailure for a failed read.  Nothing is written in check mode or when the plan is
    empty, so a converged run makes no write at all (not even the lock).  ``windows(plan)``
    returns the sizes of consecutive deletion windows spaced ``window_interval`` seconds apart
    (the identity GC rate limit); default: one window.
    """

    def __init__(self, module, kv, module_name, lock_key, request_counters=None,
                 sleep=time.sleep, clock=time.monotonic):
        self.module = module
        self.kv = kv
        self.module_name = module_name
        self.lock_key = lock_key
        self.request_counters = dict(request_counters or {})
        self.request_counters["kvstore"] = lambda: kv.request_count
        self._sleep = sleep
        self._clock = clock
        self.lock = None
        self.lock_acquired = False

    # -- reporting ------------------------------------------------------------------------
    def requests(self):
        return {name: counter() for name, counter in sorted(self.request_counters.items())}

    def report(self, plan, result=None, transactions=0):
        """Result lists: what was (or, in check mode, would be) done; conflicts join ``kept``."""
        out = {"deleted": [], "marked": [], "unmarked": [], "kept": list(plan.kept),
               "not_applied": [], "unconfirmed": []}
        removed, added = set(), set()
        for action in plan.actions:
            tag, kind, item = action["tag"], action["action"], action["item"]
            if result is None or tag in result.done:
                out[_DONE[kind]].append(item)
                if kind == "mark":
                    added.add(item["mark_key"])
                else:
                    removed.add(item["mark_key"])
                if kind == "delete":
                    removed.add(item["key"])
                    removed.update(item.get("purged") or [])
                continue
            if tag in result.partial:  # split over transactions: only its first part committed
                item = dict(item, partially_applied=True)
            if tag in result.conflicts:
                out["kept"].append(dict(item, reason="%s; not %s: %s" % (
                    item["reason"], _DONE[kind], result.conflicts[tag])))
            elif tag in result.unconfirmed:
                out["unconfirmed"].append(dict(item, action=kind))
            else:
                out["not_applied"].append(dict(item, action=kind))
        out["counts"] = dict(plan.counts, deleted=len(out["deleted"]), marked=len(out["marked"]),
                             unmarked=len(out["unmarked"]), kept=len(out["kept"]))
        out["transactions"] = transactions
        out["requests"] = self.requests()
        out["changed"] = bool(out["deleted"] or out["marked"] or out["unmarked"])
        if self.module._diff:
            out["diff"] = {"before_header": "kvstore keys", "after_header": "kvstore keys",
                           "before": "".join("%s\n" % k for k in sorted(removed)),
                           "after": "".join("%s\n" % k for k in sorted(added))}
        return out

    def fail(self, msg, plan=None, result=None, transactions=0, **extra):
        out = self.report(plan, result, transactions) if plan is not None else {
            "requests": self.requests()}
        if plan is not None and result is None:
            # a guard stopped the run before writing: say what would have happened, did nothing
            self._nothing_done(out)
        out.update(extra)
        out["lock"] = self._lock_info()
        self.module.fail_json(msg=msg, **out)

    @staticmethod
    def _nothing_done(out):
        """Turn a would-be report into one of a run that wrote nothing; deletions it would have
        made become ``candidates``."""
        out["candidates"] = out["deleted"]
        out["deleted"], out["marked"], out["unmarked"] = [], [], []
        out["counts"].update(deleted=0, marked=0, unmarked=0)
        out["changed"] = False
        out.pop("diff", None)

    def _lock_info(self):
        return {"key": self.lock_key, "acquired": self.lock_acquired}

    # -- flow ------------------------------------------------------------------------------
    def _plan(self, read_and_plan):
        try:
            return read_and_plan()
        except GCFailure as exc:
            self.fail(str(exc))
        except KVStoreError as exc:
            self.fail(str(exc))

    def execute(self, read_and_plan, windows=None, window_interval=0.0):
        params = self.module.params
        plan = self._plan(read_and_plan)
        if plan.refusal:
            self.fail(plan.refusal, plan)
        if self.module.check_mode or not plan.actions:
            out = self.report(plan)
            out["lock"] = self._lock_info()
            self.module.exit_json(skipped=False, **out)
        holder = "%s pid %d (netreap.cilium.%s)" % (
            socket.gethostname(), os.getpid(), self.module_name)
        self.lock = self.kv.lock(self.lock_key, params["lock_ttl"], holder)
        try:
            self.lock.acquire()
        except LockHeld as held:
            self.lock = None
            msg = "skipped: another reaper holds the lock %s (%s)" % (held.key, held.holder)
            if params["on_lock_held"] == "fail":
                self.fail(msg.replace("skipped: ", "", 1), lock_holder=held.holder)
            out = self.report(plan)
            self._nothing_done(out)
            out["lock"] = {"key": held.key, "acquired": False, "holder": held.holder}
            self.module.exit_json(skipped=True, msg=msg, **out)
        except ServiceError as exc:
            self.lock = None
            self.fail("take the leader lock %s: %s" % (self.lock_key, exc.describe()))
        self.lock_acquired = True
        total = CommitResult()
        try:
            plan = self._plan(read_and_plan)  # fresh: another reaper may have run meanwhile
            if plan.refusal:
                self.fail(plan.refusal, plan)
            sizes = windows(plan) if windows is not None else []
            for index, group in enumerate(self._groups(plan, sizes)):
                if index:
                    self._wait(window_interval)
                _merge(total, self.kv.commit(group, fence=self.lock,
                                             between_batches=self.lock.renew_if_due))
        except LockLost as exc:
            if exc.result is not None:
                _merge(total, exc.result)
            self.fail("%s; stopped writing. Done before: see deleted/marked/unmarked" % exc, plan,
                      total, total.transactions)
        except CommitError as exc:
            _merge(total, exc.result)
            self.fail("write to the %s kvstore failed: %s. What was done before the failure is "
                      "listed in deleted/marked/unmarked; run again to finish"
                      % (self.kv.name, exc), plan, total, total.transactions)
        except ServiceError as exc:
            self.fail("renew the leader lock %s: %s" % (self.lock_key, exc.describe()), plan, total,
                      total.transactions)
        finally:
            if self.lock is not None:
                self.lock.release()
        out = self.report(plan, total, total.transactions)
        out["lock"] = self._lock_info()
        self.module.exit_json(skipped=False, **out)

    @staticmethod
    def _groups(plan, sizes):
        """Marks and unmarks go with the first window; deletions are split over the windows."""
        deletes = [a["change"] for a in plan.actions if a["action"] == "delete"]
        others = [a["change"] for a in plan.actions if a["action"] != "delete"]
        sizes = sizes or [len(deletes)]
        groups, start = [], 0
        for size in sizes:
            groups.append(deletes[start:start + size])
            start += size
        groups[0] = groups[0] + others
        return [g for g in groups if g]

    def _wait(self, interval):
        deadline = self._clock() + interval
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._sleep(min(remaining, max(self.lock.ttl / 3.0, 0.05)))
            self.lock.renew_if_due()
