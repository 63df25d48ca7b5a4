"""The GC run over a fake kvstore adapter: check mode takes no lock, guards refuse before any write,
a held lock skips, a lost lock or a failed write reports exactly what was done before."""

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import LockHeld, LockLost
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc import Plan
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc_run import GCRun, deletion_groups
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_types import delete, put
from tests.support.modules import Exited, FakeModule


def gc_module(check_mode=False, diff=False, on_lock_held="skip"):
    return FakeModule(check_mode, diff, lock_ttl=30, on_lock_held=on_lock_held)


class FakeLock:
    ttl = 30

    def __init__(self, kv):
        self.kv = kv

    def acquire(self):
        if self.kv.held_by:
            raise LockHeld("gc/leader", self.kv.held_by)
        self.kv.events.append("acquire")

    def release(self):
        self.kv.events.append("release")

    def renew_if_due(self):
        self.kv.events.append("renew")


class FakeKV:
    name = "etcd"

    def __init__(self, held_by=None, fail_on_group=None, failure=None):
        self.held_by = held_by
        self.fail_on_group = fail_on_group
        self.failure = failure
        self.events = []
        self.groups = 0

    def lock(self, key, ttl, holder):
        return FakeLock(self)

    def commit(self, changes, fence=None, between_batches=None, result=None):
        self.groups += 1
        if self.groups == self.fail_on_group:
            raise self.failure
        for change in changes:
            result.done.append(change.tag)
            self.events.append("commit " + change.tag)
        result.transactions += 1
        return result


def plan_deleting(names, refusal=None):
    plan = Plan()
    for name in names:
        item = {"name": name, "key": "nodes/" + name, "mark_key": "marks/" + name, "reason": "gone"}
        plan.add("delete", item, [delete("nodes/" + name)])
    plan.add("mark", {"name": "new", "key": "nodes/new", "mark_key": "marks/new", "reason": "gone"},
             [put("marks/new", "{}")])
    plan.refusal = refusal
    return plan


def run_gc(kv, module, plan, windows=None):
    gc = GCRun(module, kv, "cilium_node_gc", "gc/leader", sleep=lambda s: None, clock=lambda: 0.0)
    with pytest.raises(Exited) as exited:
        gc.execute(read=lambda: None, plan=lambda state: plan, windows=windows)
    return exited.value


def names(items):
    return [item["name"] for item in items]


def test_check_mode_reports_without_lock_or_write():
    kv = FakeKV()
    out = run_gc(kv, gc_module(check_mode=True, diff=True), plan_deleting(["a", "b"]))
    assert not out.failed and out.result["changed"] is True and kv.events == []
    assert names(out.result["deleted"]) == ["a", "b"] and names(out.result["marked"]) == ["new"]
    assert out.result["lock"] == {"key": "gc/leader", "acquired": False}
    assert out.result["diff"]["before"] == "marks/a\nmarks/b\nnodes/a\nnodes/b\n"


def test_refusal_fails_before_any_write_and_lists_candidates():
    kv = FakeKV()
    out = run_gc(kv, gc_module(), plan_deleting(["a", "b"], refusal="refusing to delete 2 node keys"))
    assert out.failed and out.result["msg"] == "refusing to delete 2 node keys"
    assert names(out.result["candidates"]) == ["a", "b"] and out.result["deleted"] == []
    assert out.result["changed"] is False and kv.events == []


def test_lock_held_elsewhere_skips_or_fails_without_writing():
    kv = FakeKV(held_by="other-host pid 1")
    skipped = run_gc(kv, gc_module(), plan_deleting(["a"]))
    assert not skipped.failed and skipped.result["skipped"] is True
    assert skipped.result["msg"] == "skipped: another reaper holds the lock gc/leader (other-host pid 1)"
    assert names(skipped.result["candidates"]) == ["a"] and skipped.result["deleted"] == []
    failed = run_gc(kv, gc_module(on_lock_held="fail"), plan_deleting(["a"]))
    assert failed.failed and failed.result["msg"].startswith("another reaper holds the lock gc/leader")
    assert kv.events == []


def test_lost_lock_in_the_second_window_reports_the_first_and_releases():
    kv = FakeKV(fail_on_group=2, failure=LockLost("lost the leader lock gc/leader: lease 7 expired"))
    out = run_gc(kv, gc_module(), plan_deleting(["a", "b", "c"]), windows=lambda plan: [2, 1])
    assert out.failed and out.result["msg"] == (
        "lost the leader lock gc/leader: lease 7 expired; stopped writing. Done before: see "
        "deleted/marked/unmarked")
    assert names(out.result["deleted"]) == ["a", "b"] and names(out.result["marked"]) == ["new"]
    assert names(out.result["not_applied"]) == ["c"] and kv.events[-1] == "release"
    assert out.result["lock"] == {"key": "gc/leader", "acquired": True}


def test_failed_write_names_the_kvstore_status_and_what_to_do():
    failure = ServiceError("etcd", "POST", "http://etcd/v3/kv/txn", status=500, body="raft apply failed")
    kv = FakeKV(fail_on_group=1, failure=failure)
    out = run_gc(kv, gc_module(), plan_deleting(["a"]))
    assert out.failed and out.result["msg"] == (
        "write to the etcd kvstore failed: etcd HTTP 500: raft apply failed. What was done before the "
        "failure is listed in deleted/marked/unmarked; run again to finish")
    assert out.result["deleted"] == [] and names(out.result["not_applied"]) == ["a", "new"]
    assert kv.events == ["acquire", "release"]


def test_marks_go_with_the_first_deletion_window():
    plan = plan_deleting(["a", "b", "c"])
    groups = deletion_groups(plan, [2, 1])
    assert [[change.tag for change in group] for group in groups] == [
        ["delete:0", "delete:1", "mark:3"], ["delete:2"]]
