# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): the run both kvstore GC modules share.

``GCRun`` is ``_run.Run`` with the GC's guard and lock: plan without writing; stop on a
planner's refusal (in check mode too); only if there is something to write and not in check
mode take the leader lock, plan again from a read made under the lock, commit fenced by the
lock (deletions in rate-limited windows), release it, and report what was done.  The options
every GC module shares, and their checks, live here too.
"""

from __future__ import annotations

import os
import socket
import time

from ansible_collections.netreap.cilium.plugins.module_utils._consul import key_options_problem
from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import (
    CONSUL_DEFAULT_LOCK_KEY,
    KVSTORE_REQUESTS,
    KVStoreError,
    LockHeld,
    LockLost,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_types import CommitResult
from ansible_collections.netreap.cilium.plugins.module_utils._run import Run, Stop

DEFAULT_STATE_PREFIX = "netreap/gc/v1"
DEFAULT_LOCK_TTL = 30

GC_ARGUMENT_SPEC = dict(
    kvstore_txn_max_ops=dict(type="int"),
    gc_state_prefix=dict(type="str", default=DEFAULT_STATE_PREFIX),
    lock_key=dict(type="str", no_log=False),
    lock_ttl=dict(type="int", default=DEFAULT_LOCK_TTL),
    on_lock_held=dict(type="str", choices=["skip", "fail"], default="skip"),
)

NOTHING_CHANGED = "Nothing was changed"
WRITE_FAILED_NOTE = ("What was done before the failure is listed in deleted/marked/unmarked; "
                     "run again to finish")


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


# -- report (pure) -------------------------------------------------------------------------------
_DONE = {"delete": "deleted", "mark": "marked", "unmark": "unmarked"}  # result list = past tense


def gc_report(plan, result=None):
    """Result lists: what was (``result`` a CommitResult) or would be (None) done; conflicts join
    ``kept``."""
    out = {"deleted": [], "marked": [], "unmarked": [], "kept": list(plan.kept),
           "not_applied": [], "unconfirmed": []}
    for action in plan.actions:
        tag, kind, item = action["tag"], action["action"], action["item"]
        if result is None or tag in result.done:
            out[_DONE[kind]].append(item)
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
    out["transactions"] = result.transactions if result is not None else 0
    out["changed"] = bool(out["deleted"] or out["marked"] or out["unmarked"])
    return out


def nothing_done(out):
    """A would-be report turned into one of a run that wrote nothing; the deletions it would
    have made become ``candidates``."""
    out = dict(out)
    out["candidates"] = out["deleted"]
    out["deleted"], out["marked"], out["unmarked"], out["changed"] = [], [], [], False
    out["counts"] = dict(out["counts"])
    out["counts"].update(deleted=0, marked=0, unmarked=0)
    return out


def gc_diff(plan, result=None):
    """Keys removed (before) and mark keys added (after) by what was (would be) done."""
    removed, added = set(), set()
    for action in plan.actions:
        if result is not None and action["tag"] not in result.done:
            continue
        item = action["item"]
        if action["action"] == "mark":
            added.add(item["mark_key"])
            continue
        removed.add(item["mark_key"])
        if action["action"] == "delete":
            removed.add(item["key"])
            removed.update(item.get("purged") or [])
    return {"before_header": "kvstore keys", "after_header": "kvstore keys",
            "before": "".join("%s\n" % k for k in sorted(removed)),
            "after": "".join("%s\n" % k for k in sorted(added))}


def deletion_groups(plan, sizes):
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


# -- the run ---------------------------------------------------------------------------------
class GCRun:
    """One GC module run over the adapter ``kv``.

    ``read()`` reads the kvstore (``self.list``) and Nomad and returns what ``plan(state)`` (the
    pure planner, returning a ``_kvstore_gc.Plan``) needs; ``check(plan)`` is an optional guard
    that may read (e.g. whether a Consul listing can be trusted).  ``windows(plan)`` returns the
    sizes of consecutive deletion windows spaced ``window_interval`` seconds apart (the identity
    GC rate limit); default: one window.  ``requests`` adds request labels to ``kvstore``.
    """

    def __init__(self, module, kv, module_name, lock_key, requests=None, sleep=time.sleep,
                 clock=time.monotonic):
        self.kv = kv
        self.module_name = module_name
        self.lock_key = lock_key
        self.run = Run(module, requests=dict(KVSTORE_REQUESTS, **(requests or {})))
        self.run.result.update(skipped=False, lock={"key": lock_key, "acquired": False})
        self.plan = None
        self.lock = None
        self._sleep = sleep
        self._clock = clock

    def list(self, prefix):
        """``kv.list(prefix)``, named for the failure message: a failed read changes nothing."""
        self.run.doing("list %s keys under %s" % (self.kv.name, prefix), note=NOTHING_CHANGED)
        return self.kv.list(prefix)

    def execute(self, read, plan, check=None, windows=None, window_interval=0.0):
        """Run and exit the module."""
        def planned(state):
            self.plan = plan(state)
            return self.plan

        def guard(current):
            if current.refusal:
                raise Stop(current.refusal, **nothing_done(gc_report(current)))
            if check is not None:
                _adapter_errors_stop(check, current)

        def apply(current, progress):
            progress["result"] = CommitResult()
            self._apply(current, progress["result"], windows, window_interval)

        self.run.execute(lambda: _adapter_errors_stop(read), planned,
                         has_changes=lambda current: bool(current.actions), apply=apply,
                         report=_report, diff=_diff, guard=guard, lock=self._leader_lock,
                         replan=True)

    def _leader_lock(self):
        holder = "%s pid %d (netreap.cilium.%s)" % (socket.gethostname(), os.getpid(), self.module_name)
        return _LeaderLock(self, self.kv.lock(self.lock_key, self.run.module.params["lock_ttl"], holder))

    def _apply(self, plan, total, windows, window_interval):
        sizes = windows(plan) if windows is not None else []
        try:
            for index, group in enumerate(deletion_groups(plan, sizes)):
                if index:
                    self._wait(window_interval)
                self._writing()
                self.kv.commit(group, fence=self.lock, between_batches=self._renew, result=total)
        except LockLost as exc:
            raise Stop("%s; stopped writing. Done before: see deleted/marked/unmarked" % exc)
        except KVStoreError as exc:
            raise Stop(str(exc))

    def _writing(self):
        self.run.doing("write to the %s kvstore failed" % self.kv.name, note=WRITE_FAILED_NOTE)

    def _renew(self):
        self.run.doing("renew the leader lock %s" % self.lock_key)
        self.lock.renew_if_due()
        self._writing()

    def _wait(self, interval):
        deadline = self._clock() + interval
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._sleep(min(remaining, max(self.lock.ttl / 3.0, 0.05)))
            self._renew()


class _LeaderLock:
    """The leader lock as the run's guard: a lock held elsewhere skips (or fails) the run, a
    failure to take it fails it, in the run's one exit."""

    def __init__(self, gc, lock):
        self.gc = gc
        self.lock = lock

    def __enter__(self):
        run = self.gc.run
        try:
            self.lock.acquire()
        except LockHeld as held:
            msg = "another reaper holds the lock %s (%s)" % (held.key, held.holder)
            lock_info = {"key": held.key, "acquired": False, "holder": held.holder}
            if run.module.params["on_lock_held"] == "fail":
                raise Stop(msg, lock=lock_info, lock_holder=held.holder)
            raise Stop("skipped: " + msg, failed=False, skipped=True, lock=lock_info,
                       **nothing_done(gc_report(self.gc.plan)))
        except ServiceError as exc:
            raise Stop("take the leader lock %s: %s" % (self.gc.lock_key, exc.describe()))
        self.gc.lock = self.lock
        run.result["lock"] = {"key": self.gc.lock_key, "acquired": True}
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _adapter_errors_stop(call, *args):
    """An adapter's own refusal (a listing ACLs filtered, listings that cannot be trusted) ends
    the run with its message."""
    try:
        return call(*args)
    except KVStoreError as exc:
        raise Stop(str(exc))


def _report(plan, progress):
    if progress is None:  # check mode, or nothing to write
        return gc_report(plan)
    if "result" not in progress:  # stopped under the lock before writing
        return nothing_done(gc_report(plan))
    return gc_report(plan, progress["result"])


def _diff(plan, progress):
    return gc_diff(plan, progress["result"] if progress else None)
