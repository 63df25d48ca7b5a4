"""Conformance of the lab's Consul simulator, driven through py-consul (the client our modules use).

Each test runs twice: against a fresh ``ConsulSim`` on 127.0.0.1 and against a real Consul server
(``CONSUL_BIN``; one per session, emptied between tests; skipped with the reason when unset), and
talks to it only through ``consul.Consul`` (plus raw requests where the point is the wire format
itself).  Where the two disagree the simulator is wrong.  Tests that drive the simulator itself
(its clock, its dispatch) run against it only.  Expected values come
from Consul's HTTP API as recorded in docs/upstream.md (#consul-http and the entries after it).
"""

import base64
import json
import threading
import time
import urllib.error
import urllib.request

import consul
import pytest
from consul.callback import CB
from consul.exceptions import BadRequest, ClientError

from tests.lab import httpd
from tests.lab.consul import (
    ANONYMOUS_ACCESSOR_ID,
    CONSUL_SKIP_REASON,
    LEADER_ADDRESS,
    ConsulSim,
    find_consul,
)
from tests.lab.lab import shared_real_consul

CONSUL_ENV_VARS = ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL",
                   "CONSUL_HTTP_SSL_VERIFY")
APP_SECRET = "3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
APP_ACCESSOR = "aaaaaaaa-1111-4222-8333-444444444444"
APP_KEY_RULES = {"app/": "write", "app/private/": "deny"}


class ConsulLab:
    """A running simulator -- or a real Consul server (``sim`` is None then) -- and a way to build
    py-consul clients for it.  ``state`` offers the simulator's direct calls (``kv_get``,
    ``kv_put``, ``kv_keys``) on both."""

    def __init__(self, sim, endpoint=None, real=None):
        self.sim = sim
        self.endpoint = endpoint
        self.real = real

    @property
    def state(self):
        return self.real if self.real is not None else self.sim

    @property
    def port(self):
        return self.real.port if self.real is not None else self.endpoint.port

    @property
    def leader(self):
        return self.real.leader if self.real is not None else LEADER_ADDRESS

    @property
    def management_token(self):
        return self.state.management_token

    def lab_only(self, why):
        """Skip against a real server: the test inspects or drives the simulator itself."""
        if self.real is not None:
            pytest.skip("simulator only: %s" % why)

    def client(self, token=None):
        return consul.Consul(host="127.0.0.1", port=self.port, token=token)

    def capture(self, client):
        """Record every requests.Response py-consul receives (to look at status and headers)."""
        seen = []
        client.http.session.hooks["response"].append(lambda resp, *a, **kw: seen.append(resp))
        return seen


def _start_lab(**sim_args):
    sim = ConsulSim(**sim_args)
    return ConsulLab(sim, httpd.serve_tcp(sim))


@pytest.fixture
def consul_clean_env(monkeypatch):
    # py-consul lets CONSUL_HTTP_TOKEN override token= and CONSUL_HTTP_ADDR override host/port.
    for name in CONSUL_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def real_consul():
    """The process's real Consul server (CONSUL_BIN), shared with the lab; emptied between tests."""
    if find_consul() is None:
        pytest.skip(CONSUL_SKIP_REASON)
    return shared_real_consul(acl=False)


@pytest.fixture(scope="session")
def real_consul_acl():
    """The process's real Consul server with ACLs on (default deny) and the app token of the ACL
    tests."""
    if find_consul() is None:
        pytest.skip(CONSUL_SKIP_REASON)
    server = shared_real_consul(acl=True)
    server.add_token(APP_SECRET, key_prefix_rules=APP_KEY_RULES, session_prefix_rules={"": "write"},
                     accessor_id=APP_ACCESSOR)
    return server


def _real_lab(request, fixture):
    server = request.getfixturevalue(fixture)
    server.reset()
    return ConsulLab(None, real=server)


@pytest.fixture(params=["lab", "real"])
def consul_lab(request, consul_clean_env):
    if request.param == "real":
        yield _real_lab(request, "real_consul")
        return
    lab = _start_lab()
    yield lab
    lab.endpoint.stop()


@pytest.fixture(params=["lab", "real"])
def consul_acl_lab(request, consul_clean_env):
    if request.param == "real":
        yield _real_lab(request, "real_consul_acl")
        return
    lab = _start_lab(acl_enabled=True, default_policy="deny")
    lab.sim.add_token(APP_SECRET, key_prefix_rules=APP_KEY_RULES,
                      session_prefix_rules={"": "write"}, accessor_id=APP_ACCESSOR)
    yield lab
    lab.endpoint.stop()


def empty_store_index(lab, index):
    """The index of an empty KV store: 1 on a fresh simulator (Consul never answers 0); on the
    shared real server, emptied between tests, the KV table's index of earlier tests (>= 1)."""
    if lab.real is None:
        return index == "1"
    return int(index) >= 1


def raw_request_no_redirect(lab, method, path, body=None):
    """``(status, headers, body text)`` of one request; a 301 is returned, not followed."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def assert_text_error(status, headers, body, expected_status, expected_body):
    """A Consul error: plain text (never JSON) with the exact message."""
    assert status == expected_status
    assert headers.get("Content-Type", "").startswith("text/plain"), headers.get("Content-Type")
    assert body == expected_body
    with pytest.raises(ValueError):
        json.loads(body)


def raw_request(lab, method, path):
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (lab.port, path), method=method)
    try:
        with urllib.request.build_opener().open(request, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


# ---------------------------------------------------------------------------------------------
# KV: get / put / delete
# ---------------------------------------------------------------------------------------------

def test_put_then_get_returns_entry_and_modify_index(consul_lab):
    c = consul_lab.client()
    assert c.kv.put("app/config", "hello") is True
    index, entry = c.kv.get("app/config")
    assert entry["Value"] == b"hello"
    assert entry["Flags"] == 0 and entry["LockIndex"] == 0
    assert "Session" not in entry
    assert entry["CreateIndex"] == entry["ModifyIndex"]
    assert index == str(entry["ModifyIndex"])


def test_missing_key_is_none_with_index_of_the_kv_table(consul_lab):
    c = consul_lab.client()
    index, entry = c.kv.get("nothing/here")
    assert entry is None and empty_store_index(consul_lab, index)
    c.kv.put("a", "1")
    c.kv.put("b", "2")
    index, entry = c.kv.get("nothing/here")
    assert entry is None
    assert index == str(consul_lab.state.kv_get("b")["ModifyIndex"])


def test_404_carries_index_and_leader_headers_and_empty_body(consul_lab):
    c = consul_lab.client()
    responses = consul_lab.capture(c)
    c.kv.put("present", "x")
    c.kv.get("absent")
    resp = responses[-1]
    assert resp.status_code == 404
    assert resp.content == b""
    assert resp.headers["X-Consul-Index"] == str(consul_lab.state.kv_get("present")["ModifyIndex"])
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert resp.headers["X-Consul-LastContact"] == "0"
    assert resp.headers["X-Consul-Default-ACL-Policy"] == "allow"


def test_suite_would_notice_a_missing_index_header(consul_lab, monkeypatch):
    """py-consul refuses a GET without X-Consul-Index, so the passing tests above prove the
    simulator sends it, on 200 and on 404 alike."""
    consul_lab.lab_only("patches the simulator to prove the suite notices a missing header")
    original = consul_lab.sim.dispatch

    def dispatch_without_index(req):
        resp = original(req)
        resp.headers.pop("X-Consul-Index", None)
        return resp

    monkeypatch.setattr(consul_lab.sim, "dispatch", dispatch_without_index)
    c = consul_lab.client()
    c.kv.put("k", "v")
    with pytest.raises(consul.ConsulException, match="Missing index header"):
        c.kv.get("k")
    with pytest.raises(consul.ConsulException, match="Missing index header"):
        c.kv.get("absent")


def test_empty_value_is_null_and_binary_round_trips(consul_lab):
    c = consul_lab.client()
    c.kv.put("empty", "")
    c.kv.put("none", None)
    c.kv.put("binary", b"\x00\xff\x10")
    assert c.kv.get("empty")[1]["Value"] is None
    assert c.kv.get("none")[1]["Value"] is None
    assert c.kv.get("binary")[1]["Value"] == b"\x00\xff\x10"


def test_identical_put_keeps_modify_index_and_changes_bump_it(consul_lab):
    c = consul_lab.client()
    c.kv.put("k", "v1")
    first = c.kv.get("k")[1]
    c.kv.put("k", "v1")
    assert c.kv.get("k")[1]["ModifyIndex"] == first["ModifyIndex"]
    c.kv.put("k", "v2")
    second = c.kv.get("k")[1]
    assert second["ModifyIndex"] > first["ModifyIndex"]
    assert second["CreateIndex"] == first["CreateIndex"]


def test_flags_are_stored_and_a_put_without_flags_resets_them(consul_lab):
    c = consul_lab.client()
    c.kv.put("k", "v", flags=42)
    assert c.kv.get("k")[1]["Flags"] == 42
    c.kv.put("k", "v")
    assert c.kv.get("k")[1]["Flags"] == 0


def test_recurse_lists_prefix_sorted_with_max_index(consul_lab):
    c = consul_lab.client()
    for key in ("web/b", "web/a", "web/sub/c", "webby", "other"):
        c.kv.put(key, key)
    index, entries = c.kv.get("web/", recurse=True)
    assert [e["Key"] for e in entries] == ["web/a", "web/b", "web/sub/c"]
    assert index == str(max(e["ModifyIndex"] for e in entries))
    assert int(index) < consul_lab.state.kv_get("other")["ModifyIndex"]


def test_recurse_index_includes_tombstones(consul_lab):
    c = consul_lab.client()
    c.kv.put("svc/a", "1")
    c.kv.put("svc/b", "2")
    before = c.kv.get("svc/", recurse=True)[0]
    c.kv.delete("svc/b")
    after, entries = c.kv.get("svc/", recurse=True)
    assert [e["Key"] for e in entries] == ["svc/a"]
    assert int(after) > int(before)  # the delete's tombstone keeps the index moving forward


def test_recurse_on_empty_store_is_404(consul_lab):
    index, entries = consul_lab.client().kv.get("", recurse=True)
    assert entries is None and empty_store_index(consul_lab, index)


def test_keys_and_separator_roll_up(consul_lab):
    c = consul_lab.client()
    for key in ("web/bar", "web/foo", "web/subdir/x", "web/subdir/y"):
        c.kv.put(key, "v")
    assert c.kv.get("web/", keys=True)[1] == ["web/bar", "web/foo", "web/subdir/x", "web/subdir/y"]
    assert c.kv.get("web/", keys=True, separator="/")[1] == ["web/bar", "web/foo", "web/subdir/"]
    # The historical misspelling is still honoured.
    keys = c.http.get(CB.json(index=True), "/v1/kv/web/",
                      params=[("keys", ""), ("seperator", "/")])[1]
    assert keys == ["web/bar", "web/foo", "web/subdir/"]


def test_keys_on_empty_root_is_empty_list_but_missing_prefix_is_404(consul_lab):
    c = consul_lab.client()
    index, keys = c.kv.get("", keys=True)
    assert keys == [] and empty_store_index(consul_lab, index)
    assert c.kv.get("nope/", keys=True)[1] is None


def test_raw_returns_the_bytes_as_text_plain(consul_lab):
    c = consul_lab.client()
    responses = consul_lab.capture(c)
    c.kv.put("raw", b"\x01plain")
    body = c.http.get(CB.binary(), "/v1/kv/raw", params=[("raw", "")], raw=True)
    assert body == b"\x01plain"
    assert responses[-1].headers["Content-Type"] == "text/plain"
    assert responses[-1].headers["X-Content-Type-Options"] == "nosniff"


def test_cas_create_only_and_index_match(consul_lab):
    c = consul_lab.client()
    assert c.kv.put("cas/k", "v1", cas=0) is True
    assert c.kv.put("cas/k", "v2", cas=0) is False  # cas=0 on an existing key
    index = c.kv.get("cas/k")[1]["ModifyIndex"]
    assert c.kv.put("cas/k", "v2", cas=index + 1000) is False
    assert c.kv.get("cas/k")[1]["Value"] == b"v1"
    assert c.kv.put("cas/k", "v2", cas=index) is True
    assert c.kv.get("cas/k")[1]["Value"] == b"v2"
    assert c.kv.put("cas/missing", "v", cas=5) is False


def test_delete_plain_cas_and_recurse(consul_lab):
    c = consul_lab.client()
    for key in ("d/a", "d/b", "d/c", "keep"):
        c.kv.put(key, "v")
    assert c.kv.delete("d/a") is True
    assert c.kv.delete("d/a") is True                # missing key: still true
    index = c.kv.get("d/b")[1]["ModifyIndex"]
    assert c.kv.delete("d/b", cas=index + 1) is False
    assert c.kv.delete("d/b", cas=0) is False        # cas=0 never deletes an existing key
    assert c.kv.delete("d/b", cas=index) is True
    assert c.kv.delete("d/b", cas=12345) is True     # cas on a missing key: true
    assert c.kv.delete("d/", recurse=True) is True
    assert consul_lab.state.kv_keys() == ["keep"]


def test_conflicting_flags_are_400_with_the_query(consul_lab):
    c = consul_lab.client()
    sid = c.session.create()
    with pytest.raises(BadRequest) as err:
        c.kv.put("k", "v", cas=0, acquire=sid)
    assert str(err.value) == "400 Conflicting flags: acquire=%s&cas=0" % sid  # no newline
    with pytest.raises(BadRequest, match=r"Conflicting flags: cas=5&recurse=1"):
        c.kv.delete("k", recurse=True, cas=5)


def test_value_over_kv_max_value_size_is_413(consul_lab):
    c = consul_lab.client()
    assert c.kv.put("big/ok", b"x" * 524288) is True
    with pytest.raises(ClientError) as err:
        c.kv.put("big/too", b"x" * 524289)
    assert str(err.value).startswith(
        "413 Request body(524289 bytes) too large, max size: 524288 bytes. See ")
    assert consul_lab.state.kv_get("big/too") is None


def test_bad_requests_answer_400(consul_lab):
    c = consul_lab.client()
    with pytest.raises(BadRequest, match="Missing key name"):
        c.kv.get("")
    with pytest.raises(BadRequest, match="Cannot specify \\?stale with \\?consistent"):
        c.http.get(CB.json(index=True), "/v1/kv/k", params=[("stale", "1"), ("consistent", "1")])
    with pytest.raises(BadRequest, match="Invalid wait time"):
        c.kv.get("k", index="5", wait="soon")
    with pytest.raises(BadRequest, match="Invalid index"):
        c.kv.get("k", index="abc")

    # A leading "/" in the key is a "//" in the path: Go's ServeMux redirects it before Consul
    # sees the request (docs/upstream.md#consul-cleans-kv-paths).
    status, headers, body = raw_request_no_redirect(consul_lab, "GET", "/v1/kv//leading")
    assert status == 301 and headers["Location"] == "/v1/kv/leading"


@pytest.mark.parametrize("path, cleaned", [
    ("/v1/kv/a//b", "/v1/kv/a/b"), ("/v1/kv/a/./b", "/v1/kv/a/b"), ("/v1/kv/a/../b", "/v1/kv/b"),
    ("/v1/kv/a/b/.", "/v1/kv/a/b"), ("/v1/kv//a", "/v1/kv/a"), ("/v1/kv/a/..", "/v1/kv/"),
])
def test_unclean_key_paths_are_redirected_and_nothing_is_written(consul_lab, path, cleaned):
    """Consul answers a KV path that Go's path.Clean would change with a 301 to the cleaned path
    (query kept) and writes nothing; GET answers carry a small HTML body, other methods none."""
    status, headers, body = raw_request_no_redirect(consul_lab, "PUT", path + "?flags=3", body=b"v")
    assert (status, headers["Location"], body) == (301, cleaned + "?flags=3", "")
    assert "Content-Type" not in headers and "X-Consul-Default-Acl-Policy" not in headers
    assert consul_lab.state.kv_keys() == []
    status, headers, body = raw_request_no_redirect(consul_lab, "GET", path + "?recurse")
    assert status == 301 and headers["Location"] == cleaned + "?recurse"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == '<a href="%s?recurse">Moved Permanently</a>.\n\n' % cleaned
    status, headers, body = raw_request_no_redirect(consul_lab, "PUT", "/v1/kv/a/b/", body=b"v")
    assert status == 200 and consul_lab.state.kv_keys() == ["a/b/"]  # a trailing "/" is kept


def test_routing_and_datacenter_errors(consul_lab):
    c = consul_lab.client()
    with pytest.raises(ClientError, match="405 method POST not allowed"):
        c.http.post(CB.json(), "/v1/kv/k", data="x")
    with pytest.raises(consul.NotFound, match="Invalid URL path"):
        c.http.get(CB.json(allow_404=False), "/v1/nope")
    with pytest.raises(consul.ConsulException, match="500 No path to datacenter"):
        c.kv.get("k", dc="dc2")
    index, entry = consul.Consul(host="127.0.0.1", port=consul_lab.port, dc="dc1",
                                 consistency="stale").kv.get("k")
    assert entry is None and empty_store_index(consul_lab, index)


def test_seeded_state_is_visible_and_direct_api_shapes(consul_lab):
    consul_lab.lab_only("checks the simulator's own seeding calls")
    sim = consul_lab.sim
    seeded = sim.kv_put("seed/a", "value", flags=7)
    assert seeded["Value"] == b"value" and seeded["Flags"] == 7
    assert consul_lab.client().kv.get("seed/a")[1]["Value"] == b"value"
    sim.kv_delete("seed/", recurse=True)
    assert sim.kv_get("seed/a") is None and sim.kv_keys("seed/") == []


# ---------------------------------------------------------------------------------------------
# Error bodies are text, not JSON
# ---------------------------------------------------------------------------------------------

def test_400_body_is_text_plain_on_the_wire(consul_lab):
    status, headers, body = raw_request(consul_lab, "GET", "/v1/kv/")
    assert_text_error(status, headers, body, 400, "Missing key name")
    assert headers["X-Consul-Default-ACL-Policy"] == "allow"


def test_text_error_check_rejects_a_json_error_body(consul_lab, monkeypatch):
    """If the simulator answered errors with JSON, the check above would fail."""
    consul_lab.lab_only("patches the simulator to prove the text check fails")
    monkeypatch.setattr(consul_lab.sim, "dispatch",
                        lambda req: httpd.json_response({"error": "Missing key name"}, 400))
    status, headers, body = raw_request(consul_lab, "GET", "/v1/kv/")
    with pytest.raises(AssertionError):
        assert_text_error(status, headers, body, 400, "Missing key name")


# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------

def _kv_op(verb, key, value=None, **extra):
    op = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode()
    op.update(extra)
    return {"KV": op}


def test_txn_success_results(consul_lab):
    c = consul_lab.client()
    c.kv.put("t/old", "x")
    old_index = c.kv.get("t/old")[1]["ModifyIndex"]
    result = c.txn.put([
        _kv_op("set", "t/a", b"A", Flags=3),
        _kv_op("get", "t/a"),
        _kv_op("check-index", "t/old", Index=old_index),
        _kv_op("delete", "t/old"),
        # lower-case field names work too (Go's case-insensitive JSON matching)
        {"kv": {"verb": "check-not-exists", "key": "t/old"}},
    ])
    assert result["Errors"] is None
    set_result, get_result, check_result = (r["KV"] for r in result["Results"])
    assert set_result["Value"] is None and set_result["Flags"] == 3
    assert get_result["Value"] == base64.b64encode(b"A").decode()
    assert set_result["ModifyIndex"] == get_result["ModifyIndex"]  # one raft index per txn
    assert check_result["Key"] == "t/old" and check_result["Value"] is None
    assert consul_lab.state.kv_get("t/old") is None


def test_txn_rollback_is_409_listing_every_failure(consul_lab):
    c = consul_lab.client()
    c.kv.put("r/exists", "v")
    with pytest.raises(ClientError) as err:
        c.txn.put([
            _kv_op("set", "r/new", b"should not survive"),
            _kv_op("cas", "r/exists", b"x", Index=999999),
            _kv_op("get", "r/missing"),
            _kv_op("check-not-exists", "r/exists"),
        ])
    status, payload = (str(err.value).split(" ", 1) + [""])[:2]
    assert status == "409"
    body = json.loads(payload)
    assert body["Results"] is None
    assert body["Errors"] == [
        {"OpIndex": 1, "What": 'failed to set key "r/exists", index is stale'},
        {"OpIndex": 2, "What": 'key "r/missing" doesn\'t exist'},
        {"OpIndex": 3, "What": 'key "r/exists" exists'},
    ]
    assert consul_lab.state.kv_get("r/new") is None


def test_txn_locks_and_session_checks(consul_lab):
    c = consul_lab.client()
    sid = c.session.create(lock_delay=0)
    result = c.txn.put([_kv_op("lock", "l/k", b"me", Session=sid),
                        _kv_op("check-session", "l/k", Session=sid)])
    lock_result, check_result = (r["KV"] for r in result["Results"])
    assert lock_result["Session"] == sid and lock_result["LockIndex"] == 1
    assert check_result["Session"] == sid
    with pytest.raises(ClientError) as err:
        c.txn.put([_kv_op("unlock", "l/k", Session="11111111-2222-3333-4444-555555555555"),
                   _kv_op("check-session", "l/k", Session="")])
    assert [e["What"] for e in json.loads(str(err.value)[4:])["Errors"]] == [
        'failed to unlock key "l/k", lock isn\'t held, or is held by another session',
        'failed session check for key "l/k", current session "%s" != ""' % sid]
    result = c.txn.put([_kv_op("unlock", "l/k", Session=sid), _kv_op("delete-tree", "l/")])
    assert [r["KV"]["Key"] for r in result["Results"]] == ["l/k"]
    assert consul_lab.state.kv_keys("l/") == []


def test_txn_op_limit_depends_on_version(consul_clean_env):
    for version, limit in (("1.16.0", 128), ("1.13.9", 64)):
        lab = _start_lab(version=version)
        try:
            c = lab.client()
            assert lab.sim.txn_max_ops == limit
            full = c.txn.put([_kv_op("set", "n/%d" % i, b"v") for i in range(limit)])
            assert full["Errors"] is None and len(full["Results"]) == limit
            with pytest.raises(ClientError) as err:
                c.txn.put([_kv_op("get", "n/0")] * (limit + 1))
            assert str(err.value) == "413 Transaction contains too many operations (%d > %d)" % (
                limit + 1, limit)
        finally:
            lab.endpoint.stop()


def test_txn_bad_base64_and_oversized_bodies(consul_lab):
    c = consul_lab.client()
    with pytest.raises(BadRequest,
                       match="Failed to parse body: illegal base64 data at input byte 4"):
        c.txn.put([{"KV": {"Verb": "set", "Key": "b", "Value": "aGVs!G8="}}])
    big = base64.b64encode(b"x" * 524289).decode()
    with pytest.raises(ClientError) as err:
        c.txn.put([{"KV": {"Verb": "set", "Key": "b", "Value": big}}])
    size = len(json.dumps([{"KV": {"Verb": "set", "Key": "b", "Value": big}}]))
    assert str(err.value) == (
        "413 Request body(%d bytes) too large, max size: 524288 bytes. See "
        "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len." % size)


def test_txn_value_over_kv_max_value_size_is_413(consul_clean_env):
    lab = _start_lab(kv_max_value_size=1024)
    try:
        value = base64.b64encode(b"x" * 1025).decode()
        with pytest.raises(ClientError, match=r'413 Value for key "b" is too large \(1025 > 1024'):
            lab.client().txn.put([{"KV": {"Verb": "set", "Key": "b", "Value": value}}])
    finally:
        lab.endpoint.stop()


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------

def test_session_lifecycle(consul_lab):
    c = consul_lab.client()
    sid = c.session.create(name="svc-leader", ttl=15, lock_delay=5, behavior="delete")
    info = c.session.info(sid)[1]
    assert info["ID"] == sid and info["Name"] == "svc-leader" and info["Node"] == "lab-consul"
    assert info["LockDelay"] == 5_000_000_000 and info["Behavior"] == "delete"
    assert info["TTL"] == "15s" and info["NodeChecks"] == ["serfHealth"]
    assert [s["ID"] for s in c.session.list()[1]] == [sid]
    assert [s["ID"] for s in c.session.node("lab-consul")[1]] == [sid]
    assert c.session.node("elsewhere")[1] == []
    assert c.session.renew(sid)["ID"] == sid
    assert c.session.destroy(sid) is True
    assert c.session.destroy(sid) is True  # idempotent
    assert c.session.info(sid)[1] is None  # unknown -> [] -> None
    with pytest.raises(consul.NotFound, match="Session id '%s' not found" % sid):
        c.session.renew(sid)


def test_session_create_body_rules(consul_lab):
    c = consul_lab.client()

    def create(body):
        sid = c.http.put(CB.json(is_id=True), "/v1/session/create", data=json.dumps(body))
        return c.session.info(sid)[1]

    assert create({"LockDelay": 5})["LockDelay"] == 5 * 10**9        # < 1000 -> seconds
    assert create({"lockdelay": "250ms"})["LockDelay"] == 250 * 10**6
    assert create({"LockDelay": "0s"})["LockDelay"] == 0
    assert create({"Checks": []})["NodeChecks"] == []
    assert c.session.info(c.session.create(checks=[]))[1]["NodeChecks"] == []
    with pytest.raises(consul.ConsulException) as err:
        create({"TTL": "5s"})
    assert str(err.value) == ("500 Invalid Session TTL '5000000000', must be between "
                              "[10s=24h0m0s]")
    with pytest.raises(consul.ConsulException, match="500 Invalid Behavior setting 'bogus'"):
        create({"Behavior": "bogus"})
    with pytest.raises(consul.ConsulException, match="^500 apply failed: Missing node registration$"):
        create({"Node": "ghost"})


# ---------------------------------------------------------------------------------------------
# Locks and leader election
# ---------------------------------------------------------------------------------------------

def test_acquire_and_release_rules(consul_lab):
    c = consul_lab.client()
    a, b = c.session.create(lock_delay=0), c.session.create(lock_delay=0)
    assert c.kv.put("svc/leader", "node-a", acquire=a) is True
    entry = c.kv.get("svc/leader")[1]
    assert entry["Session"] == a and entry["LockIndex"] == 1
    assert c.kv.put("svc/leader", "node-b", acquire=b) is False
    assert c.kv.put("svc/leader", "node-a2", acquire=a) is True  # holder re-acquires
    assert c.kv.get("svc/leader")[1]["LockIndex"] == 1
    c.kv.put("svc/leader", "plain write")                           # locks are advisory
    assert c.kv.get("svc/leader")[1]["Session"] == a
    assert c.kv.put("svc/leader", "x", release=b) is False
    assert c.kv.put("svc/leader", "released", release=a) is True
    entry = c.kv.get("svc/leader")[1]
    assert "Session" not in entry and entry["Value"] == b"released"
    assert c.kv.put("svc/leader", "node-b", acquire=b) is True    # no lock-delay after release
    assert c.kv.get("svc/leader")[1]["LockIndex"] > 0


def test_acquire_with_unknown_session_is_500(consul_lab):
    c = consul_lab.client()
    ghost = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(consul.ConsulException) as err:
        c.kv.put("svc/leader", "x", acquire=ghost)
    assert str(err.value).startswith("500 ")
    assert 'invalid session "%s"' % ghost in str(err.value)


def test_destroy_releases_and_starts_lock_delay(consul_lab):
    consul_lab.lab_only("moves the simulator's clock through the lock delay")
    c = consul_lab.client()
    a, b = c.session.create(), c.session.create()  # default lock-delay 15s
    assert c.kv.put("svc/leader", "a", acquire=a) is True
    c.session.destroy(a)
    entry = c.kv.get("svc/leader")[1]
    assert "Session" not in entry and entry["Value"] == b"a"
    assert c.kv.put("svc/leader", "b", acquire=b) is False          # inside lock-delay
    with pytest.raises(ClientError, match='failed to lock key \\\\"svc/leader\\\\" due to lock'):
        c.txn.put([_kv_op("lock", "svc/leader", b"b", Session=b)])
    consul_lab.sim.advance(15.1)
    assert c.kv.put("svc/leader", "b", acquire=b) is True


def test_ttl_expiry_after_twice_the_ttl(consul_lab):
    consul_lab.lab_only("moves the simulator's clock past session TTLs")
    c = consul_lab.client()
    sid = c.session.create(ttl=10, lock_delay=0)
    assert c.kv.put("svc/leader", "me", acquire=sid) is True
    consul_lab.sim.advance(19)
    assert c.session.renew(sid)["ID"] == sid    # past TTL but inside 2 x TTL: still alive
    consul_lab.sim.advance(19)
    assert c.kv.get("svc/leader")[1]["Session"] == sid
    consul_lab.sim.advance(2)                   # 21s since the renew
    assert "Session" not in c.kv.get("svc/leader")[1]
    assert c.session.info(sid)[1] is None
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)


def test_behavior_delete_removes_held_keys(consul_lab):
    consul_lab.lab_only("expires sessions through the simulator's clock")
    c = consul_lab.client()
    sid = c.session.create(ttl=10, behavior="delete")
    c.kv.put("ephemeral/node-1", "up", acquire=sid)
    c.kv.put("ephemeral/other", "stays")
    consul_lab.sim.advance(20)
    consul_lab.sim.expire_sessions_now()
    assert consul_lab.state.kv_keys("ephemeral/") == ["ephemeral/other"]


# ---------------------------------------------------------------------------------------------
# Blocking queries
# ---------------------------------------------------------------------------------------------

def test_blocking_get_returns_when_another_client_writes(consul_lab):
    c = consul_lab.client()
    c.kv.put("watch/me", "v1")
    index = c.kv.get("watch/me")[0]
    writer = threading.Timer(0.3, lambda: consul_lab.client().kv.put("watch/me", "v2"))
    writer.start()
    started = time.monotonic()
    new_index, entry = c.kv.get("watch/me", index=index, wait="10s")
    elapsed = time.monotonic() - started
    writer.join()
    assert 0.2 < elapsed < 5
    assert int(new_index) > int(index) and entry["Value"] == b"v2"


def test_blocking_get_times_out_after_wait(consul_lab):
    c = consul_lab.client()
    c.kv.put("quiet", "v")
    index = c.kv.get("quiet")[0]
    started = time.monotonic()
    same_index, entry = c.kv.get("quiet", index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3
    assert same_index == index and entry["Value"] == b"v"


def test_blocking_on_missing_key_ignores_unrelated_writes(consul_lab):
    c = consul_lab.client()
    index = c.kv.get("not/yet")[0]
    other = threading.Timer(0.1, lambda: consul_lab.client().kv.put("unrelated", "x"))
    other.start()
    started = time.monotonic()
    unused, entry = c.kv.get("not/yet", index=index, wait="600ms")
    other.join()
    assert entry is None and time.monotonic() - started > 0.5
    creator = threading.Timer(0.1, lambda: consul_lab.client().kv.put("not/yet", "here"))
    creator.start()
    unused, entry = c.kv.get("not/yet", index=c.kv.get("not/yet")[0], wait="5s")
    creator.join()
    assert entry["Value"] == b"here"


# ---------------------------------------------------------------------------------------------
# ACLs
# ---------------------------------------------------------------------------------------------

def test_acl_denial_is_403_text_with_accessor(consul_acl_lab):
    c = consul_acl_lab.client(token=APP_SECRET)
    assert c.kv.put("app/config", "ok") is True
    with pytest.raises(consul.ACLPermissionDenied) as err:
        c.kv.put("other/config", "no")
    assert str(err.value) == ("Permission denied: token with AccessorID '%s' lacks permission "
                              "'key:write' on \"other/config\"" % APP_ACCESSOR)
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:read'"):
        c.kv.get("app/private/secret")  # longest prefix wins: deny


def test_acl_anonymous_and_unknown_tokens(consul_acl_lab):
    with pytest.raises(consul.ACLPermissionDenied) as err:
        consul_acl_lab.client().kv.get("app/config")
    assert str(err.value) == (
        "Permission denied: anonymous token lacks permission 'key:read' on \"app/config\". The "
        "anonymous token is used implicitly when a request does not specify a token.")
    assert ANONYMOUS_ACCESSOR_ID not in str(err.value)
    with pytest.raises(consul.ACLPermissionDenied, match="^ACL not found$"):
        consul_acl_lab.client(token="no-such-secret").kv.get("app/config")


def test_acl_lists_filter_instead_of_403(consul_acl_lab):
    sim = consul_acl_lab.state
    for key in ("app/a", "app/private/b", "other/c"):
        sim.kv_put(key, "v")
    c = consul_acl_lab.client(token=APP_SECRET)
    responses = consul_acl_lab.capture(c)
    entries = c.kv.get("", recurse=True)[1]
    assert [e["Key"] for e in entries] == ["app/a"]
    assert responses[-1].headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    assert responses[-1].headers["X-Consul-Default-ACL-Policy"] == "deny"
    assert c.kv.get("app/", keys=True)[1] == ["app/a"]
    anonymous = consul_acl_lab.client()
    anon_responses = consul_acl_lab.capture(anonymous)
    assert anonymous.kv.get("app/", recurse=True)[1] is None  # all filtered -> 404
    assert "X-Consul-Results-Filtered-By-ACLs" not in anon_responses[-1].headers


def test_acl_token_transports_and_env_override(consul_acl_lab, monkeypatch):
    c = consul_acl_lab.client()
    c.http.session.headers["Authorization"] = "Bearer " + APP_SECRET
    assert c.kv.put("app/bearer", "v") is True
    # py-consul quirk: CONSUL_HTTP_TOKEN beats token=; setting .token afterwards fixes it.
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "no-such-secret")
    env_client = consul.Consul(host="127.0.0.1", port=consul_acl_lab.port, token=APP_SECRET)
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        env_client.kv.get("app/bearer")
    env_client.token = APP_SECRET
    assert env_client.kv.get("app/bearer")[1]["Value"] == b"v"


def test_acl_txn_needs_the_session_header_workaround(consul_acl_lab):
    c = consul_acl_lab.client(token=APP_SECRET)
    ops = [_kv_op("set", "app/t", b"v"), _kv_op("set", "other/t", b"v")]
    with pytest.raises(ClientError) as err:
        c.txn.put(ops)  # py-consul sends no token: anonymous, denied inside the txn
    body = json.loads(str(err.value).partition(" ")[2])
    assert str(err.value).startswith("409 ")
    assert [e["OpIndex"] for e in body["Errors"]] == [0, 1]
    assert body["Errors"][0]["What"].startswith(
        "Permission denied: anonymous token lacks permission 'key:write' on \"app/t\"")
    c.http.session.headers["X-Consul-Token"] = APP_SECRET
    with pytest.raises(ClientError) as err:
        c.txn.put(ops)
    assert json.loads(str(err.value).partition(" ")[2])["Errors"] == [{
        "OpIndex": 1, "What": "Permission denied: token with AccessorID '%s' lacks permission "
                              "'key:write' on \"other/t\"" % APP_ACCESSOR}]
    assert c.txn.put(ops[:1])["Errors"] is None
    assert consul_acl_lab.state.kv_get("app/t")["Value"] == b"v"


def test_acl_agent_self_and_status(consul_acl_lab):
    c = consul_acl_lab.client(token=consul_acl_lab.management_token)
    assert c.status.leader() == consul_acl_lab.leader  # no ACL needed
    assert c.status.peers() == [consul_acl_lab.leader]
    with pytest.raises(consul.ACLPermissionDenied, match="'agent:read' on \"lab-consul\""):
        c.agent.self()  # py-consul sends no token here
    c.http.session.headers["X-Consul-Token"] = consul_acl_lab.management_token
    config = c.agent.self()["Config"]
    assert config["NodeName"] == "lab-consul" and config["Datacenter"] == "dc1"
    assert config["Version"] == "1.16.0"


def test_acl_sessions_and_locks_with_a_token(consul_acl_lab):
    c = consul_acl_lab.client(token=APP_SECRET)
    sid = c.session.create(name="leader", ttl=10)
    assert c.kv.put("app/leader", "me", acquire=sid) is True
    with pytest.raises(consul.ACLPermissionDenied, match="'session:write' on \"lab-consul\""):
        consul_acl_lab.client().session.create()
    assert consul_acl_lab.client().session.list()[1] == []  # anonymous: filtered
    assert c.session.destroy(sid) is True


# ---------------------------------------------------------------------------------------------
# What the simulator once answered differently from Consul 1.16.0
# ---------------------------------------------------------------------------------------------

def test_read_only_txn_answers_with_query_metadata(consul_lab):
    consul_lab.client().kv.put("x", "1")
    body = json.dumps([_kv_op("get", "x")]).encode()
    status, headers, text = raw_request_no_redirect(consul_lab, "PUT", "/v1/txn", body=body)
    answer = json.loads(text)
    assert status == 200 and [r["KV"]["Key"] for r in answer["Results"]] == ["x"]
    assert {k: answer[k] for k in ("Errors", "Index", "LastContact", "KnownLeader", "ConsistencyLevel",
                                   "NotModified", "Backend", "ResultsFilteredByACLs")} == {
        "Errors": None, "Index": 1, "LastContact": 0, "KnownLeader": True, "ConsistencyLevel": "",
        "NotModified": False, "Backend": 0, "ResultsFilteredByACLs": False}
    write = json.dumps([_kv_op("set", "y", b"v")]).encode()
    status, headers, text = raw_request_no_redirect(consul_lab, "PUT", "/v1/txn", body=write)
    assert status == 200 and sorted(json.loads(text)) == ["Errors", "Results"]  # writes: no metadata


def test_every_answer_varies_on_encoding_and_names_no_server(consul_lab):
    consul_lab.client().kv.put("x", "1")
    for path in ("/v1/kv/x", "/v1/kv/absent", "/v1/status/leader"):
        status, headers, unused = raw_request_no_redirect(consul_lab, "GET", path)
        assert headers["Vary"] == "Accept-Encoding" and "Server" not in headers, (path, headers)
    status, headers, unused = raw_request_no_redirect(consul_lab, "GET", "/v1/kv/x")
    assert headers["X-Consul-Query-Backend"] == "blocking-query"


def test_token_self_without_acls_is_401(consul_lab):
    status, headers, body = raw_request_no_redirect(consul_lab, "GET", "/v1/acl/token/self")
    assert (status, body) == (401, "ACL support disabled")


def test_token_self_names_the_token_and_its_policies(consul_acl_lab):
    status, headers, body = _token_self(consul_acl_lab, APP_SECRET)
    token = json.loads(body)
    assert status == 200 and token["AccessorID"] == APP_ACCESSOR and token["SecretID"] == APP_SECRET
    assert "global-management" not in [p["Name"] for p in token["Policies"]]
    status, headers, body = _token_self(consul_acl_lab, consul_acl_lab.management_token)
    assert [p["ID"] for p in json.loads(body)["Policies"]] == ["00000000-0000-0000-0000-000000000001"]


def _token_self(lab, token):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=10)
    try:
        conn.request("GET", "/v1/acl/token/self", headers={"X-Consul-Token": token})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()
