"""The shared run shape: check mode never writes, diff only in diff mode, one failure message for
any service error (with what was done before it), guards' own messages, requests counted by the
HTTP layer."""

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils._http import HttpClient, ServiceError
from ansible_collections.netreap.cilium.plugins.module_utils._run import Run, Stop
from tests.lab import httpd
from tests.support.modules import Exited, FakeModule


class Store:
    """A key/value "service" whose writes the tests can see."""

    def __init__(self, data):
        self.data = dict(data)
        self.writes = []

    def put(self, key, value):
        self.writes.append(key)
        self.data[key] = value


def run_sync(module, store, wanted, lock=None, replan=False, fail_on=None):
    """Make ``store`` hold ``wanted``: the smallest real module built on Run."""
    run = Run(module)

    def read():
        run.doing("read the store")
        return dict(store.data)

    def plan(state):
        return sorted(k for k, v in wanted.items() if state.get(k) != v)

    def apply(keys, progress):
        for key in keys:
            run.doing("write key %s" % key)
            if key == fail_on:
                raise ServiceError("store", "PUT", "http://store/" + key, status=500, body="disk full")
            store.put(key, wanted[key])
            progress.setdefault("written", []).append(key)

    def report(keys, progress):
        done = keys if progress is None else progress.get("written", [])
        return {"written": list(done)}

    with pytest.raises(Exited) as exited:
        run.execute(read, plan, has_changes=bool, apply=apply, report=report,
                    diff=lambda keys, progress: {"before": "", "after": "\n".join(keys)},
                    lock=lock, replan=replan)
    return exited.value


def test_apply_writes_and_reports_changed():
    store = Store({"a": 1})
    out = run_sync(FakeModule(), store, {"a": 1, "b": 2, "c": 3})
    assert not out.failed and out.result["changed"] is True
    assert out.result["written"] == ["b", "c"] and store.data == {"a": 1, "b": 2, "c": 3}
    assert "diff" not in out.result


def test_check_mode_reports_without_writing():
    store = Store({"a": 1})
    out = run_sync(FakeModule(check_mode=True, diff=True), store, {"a": 2})
    assert out.result["changed"] is True and out.result["written"] == ["a"]
    assert store.writes == [] and out.result["diff"] == {"before": "", "after": "a"}


def test_converged_run_is_unchanged_and_takes_no_lock():
    taken = []
    out = run_sync(FakeModule(), Store({"a": 1}), {"a": 1}, lock=lambda: taken.append(1))
    assert out.result["changed"] is False and taken == []


def test_service_error_fails_once_with_step_and_partial_progress():
    store = Store({})
    out = run_sync(FakeModule(), store, {"a": 1, "b": 2, "c": 3}, fail_on="b")
    assert out.failed
    assert out.result["msg"] == "write key b: store HTTP 500: disk full"
    assert out.result["written"] == ["a"] and store.writes == ["a"]


def test_read_failure_names_the_read_and_reports_nothing_done():
    module = FakeModule()
    run = Run(module)

    def read():
        run.doing("list keys under cilium/")
        raise ServiceError("etcd", "POST", "http://etcd/v3/kv/range", status=403, body="permission denied")

    with pytest.raises(Exited) as exited:
        run.execute(read, plan=list, has_changes=bool, apply=None, report=lambda p, g: {"x": 1})
    assert exited.value.failed
    assert exited.value.result == {"msg": "list keys under cilium/: etcd HTTP 403: permission denied",
                                   "requests": {}}


class Lock:
    def __init__(self, store, holder_writes=None):
        self.store = store
        self.holder_writes = holder_writes or {}
        self.held = False

    def __enter__(self):
        self.store.data.update(self.holder_writes)  # another writer got in before we held it
        self.held = True
        return self

    def __exit__(self, *exc):
        self.held = False


def test_replan_under_the_lock_writes_only_what_is_still_needed():
    store = Store({})
    lock = Lock(store, holder_writes={"a": 1})
    out = run_sync(FakeModule(), store, {"a": 1, "b": 2}, lock=lambda: lock, replan=True)
    assert out.result["written"] == ["b"] and store.writes == ["b"] and not lock.held


def test_guard_stop_fails_with_its_own_message_or_skips():
    def stop_with(failed):
        def lock():
            raise Stop("another writer holds the lock", failed=failed, holder="host1")
        with pytest.raises(Exited) as exited:
            Run(FakeModule()).execute(lambda: {}, plan=lambda s: ["a"], has_changes=bool,
                                      apply=None, report=lambda p, g: {"written": []}, lock=lock)
        return exited.value

    failed, skipped = stop_with(True), stop_with(False)
    assert failed.failed and failed.result["msg"] == "another writer holds the lock"
    assert failed.result["holder"] == "host1"
    assert not skipped.failed and skipped.result["msg"] == "another writer holds the lock"


@pytest.fixture
def server():
    service = httpd.Service("probe")
    service.route("GET", r"/ok", lambda r: httpd.json_response({"ok": True}))
    endpoint = httpd.serve_tcp(service)
    yield endpoint
    endpoint.stop()


def test_requests_are_counted_per_label_from_the_run_start(server):
    HttpClient("kvprobe", server.url).request("GET", "/ok")  # before the run: not counted
    run = Run(FakeModule(), requests={"kvstore": ("kvprobe",), "nomad": ("nomadprobe",)})
    kv, nomad = HttpClient("kvprobe", server.url), HttpClient("nomadprobe", server.url)

    def read():
        kv.request("GET", "/ok")
        kv.request("GET", "/ok")
        nomad.request("GET", "/ok")
        return {}

    with pytest.raises(Exited) as exited:
        run.execute(read, plan=lambda s: [], has_changes=bool, apply=None,
                    report=lambda p, g: {})
    assert exited.value.result["requests"] == {"kvstore": 2, "nomad": 1}


def test_guard_stops_in_check_mode_and_under_the_lock_before_any_write():
    """A guard runs after every plan: in check mode, and again on the plan made under the lock."""
    def run_guarded(check_mode, data, holder_writes):
        store = Store(data)
        lock = Lock(store, holder_writes=holder_writes)

        def guard(keys):
            if len(keys) > 1:
                raise Stop("refusing to reset %d keys" % len(keys), candidates=keys)

        with pytest.raises(Exited) as exited:
            Run(FakeModule(check_mode=check_mode)).execute(
                lambda: dict(store.data), plan=lambda state: sorted(k for k, v in state.items() if v == "stale"),
                has_changes=bool, apply=lambda keys, progress: [store.put(k, "ok") for k in keys],
                report=lambda keys, progress: {}, guard=guard, lock=lambda: lock, replan=True)
        return exited.value, store

    refused, store = run_guarded(True, {"a": "stale", "b": "stale"}, {})
    assert refused.failed and refused.result["msg"] == "refusing to reset 2 keys" and store.writes == []
    # one stale key when planned; two more went stale before the lock was held
    refused, store = run_guarded(False, {"a": "stale", "b": "ok", "c": "ok"}, {"b": "stale", "c": "stale"})
    assert refused.failed and refused.result["candidates"] == ["a", "b", "c"] and store.writes == []
