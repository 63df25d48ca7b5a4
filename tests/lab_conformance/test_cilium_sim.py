"""Conformance of the lab's Cilium agent simulator (tests/lab/cilium.py, tests/lab/policy_rules.py).

Driven over the unix socket with a raw ``http.client`` connection, as the Go client and netreap
talk to the agent.  What these pin down comes from the Cilium and go-openapi sources recorded in
docs/upstream.md (#cilium-api-transport and the entries after it; the policy facts in its
"Cilium: policy" section): status codes, exact bodies, version differences.
"""

import json
import os
import shutil
import tempfile

import pytest

from tests.lab import httpd
from tests.lab import policy_rules as pr
from tests.lab.cilium import PROFILES, CiliumAgentSim, InMemoryIdentityAllocator
from tests.lab.control import UnixHTTPConnection


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Reply %s %r>" % (self.status, self.body[:300])


class AgentClient:
    """What a Cilium API client does: JSON over /v1 on the agent's unix socket."""

    def __init__(self, path):
        self.path = path

    def call(self, method, path, body=None, raw=None, content_type="application/json", headers=None):
        conn = UnixHTTPConnection(self.path, timeout=5)
        try:
            payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            hdrs = dict(headers or {})
            if payload is not None and content_type:
                hdrs["Content-Type"] = content_type
            conn.request(method, "/v1" + path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def patch(self, path, body=None, **kw):
        return self.call("PATCH", path, body, **kw)

    def put_policy(self, rules, query="", **kw):
        """PUT /policy the way the Go client does: the rules JSON wrapped in a JSON string."""
        return self.call("PUT", "/policy" + query, json.dumps(rules), **kw)

    def delete(self, path, body=None, **kw):
        return self.call("DELETE", path, body, **kw)


class Clock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="cil", dir="/tmp")  # AF_UNIX paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _agent_factory(sockdir, endpoints):
    def factory(version="1.16", **kwargs):
        sim = CiliumAgentSim("node-1", version=version, **kwargs)
        sim.add_endpoint(reserved="host")
        sim.add_endpoint(reserved="health")
        path = os.path.join(sockdir, "a%d.sock" % len(endpoints))
        endpoints.append(httpd.serve_unix(sim, path))
        return sim, AgentClient(path)
    return factory


@pytest.fixture
def make_agent(sockdir):
    endpoints = []
    yield _agent_factory(sockdir, endpoints)
    for endpoint in endpoints:
        endpoint.stop()


@pytest.fixture(scope="module")
def readonly_agent():
    """One agent per profile for tests that must leave it unchanged (saves server start/stop)."""
    sockdir = tempfile.mkdtemp(prefix="cil", dir="/tmp")
    endpoints, agents = [], {}
    factory = _agent_factory(sockdir, endpoints)

    def get(version):
        if version not in agents:
            agents[version] = factory(version)
            cni_endpoint(agents[version][0])
        return agents[version]

    yield get
    for endpoint in endpoints:
        endpoint.stop()
    shutil.rmtree(sockdir, ignore_errors=True)


ALLOC = "8c9f2d3a-5b6e-4f1a-9c2d-1e2f3a4b5c6d"
NETREAP_LABELS = ["netreap:nomad.job_id=example", "netreap:nomad.namespace=default",
                  "netreap:nomad.task_group_id=cache", "nomad:team=payments"]


def cni_endpoint(sim, alloc=ALLOC, ipv4="10.200.1.61"):
    return sim.add_endpoint(container_id=alloc, ipv4=ipv4, container_name="example.cache[0]")


# ------------------------------------------------------------------------------------------
# Profiles and agent start-up
# ------------------------------------------------------------------------------------------

def test_profiles_cover_every_version_with_the_required_flags():
    assert sorted(PROFILES) == ["1.13", "1.14", "1.15", "1.16", "1.17", "1.18", "1.19"]
    expect = {  # consul, rest write, replace, static dir, cni-attachment-id, batch delete, cli
        "1.13": (True, True, False, False, False, False, "cilium"),
        "1.14": (True, True, False, False, False, False, "cilium"),
        "1.15": (True, True, True, False, True, True, "cilium-dbg"),
        "1.16": (True, True, True, True, True, True, "cilium-dbg"),
        "1.17": (False, True, True, True, True, True, "cilium-dbg"),
        "1.18": (False, True, True, True, True, True, "cilium-dbg"),
        "1.19": (False, False, True, True, True, True, "cilium-dbg"),
    }
    for version, flags in expect.items():
        p = PROFILES[version]
        assert p["full_version"].startswith(version + ".")
        assert (p["consul_kvstore"], p["rest_policy_write"], p["policy_replace"], p["static_policy_dir"],
                p["cni_attachment_id"], p["endpoint_batch_delete"], p["cli_name"]) == flags, version
        assert p["world_ipv4_entities"] == (p["minor"] >= 15)
        assert p["empty_l3_selects_nothing"] == (p["minor"] >= 16)
        assert p["lowercase_combining"] == (p["minor"] == 19)


@pytest.mark.parametrize("version", ["1.17", "1.18", "1.19"])
def test_consul_kvstore_is_refused_from_1_17(version):
    with pytest.raises(ValueError, match="consul"):
        CiliumAgentSim("n", version=version, kvstore="consul")


def test_consul_kvstore_still_starts_on_1_16(make_agent):
    _sim, api = make_agent("1.16", kvstore="consul")
    cfg = api.get("/config").json
    assert cfg["status"]["kvstoreConfiguration"] == {"type": "consul",
                                                     "options": {"consul.address": "127.0.0.1:8500"}}


def test_static_cnp_path_is_an_unknown_flag_before_1_16(tmp_path):
    with pytest.raises(ValueError, match="static-cnp-path"):
        CiliumAgentSim("n", version="1.15", static_policy_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------
# healthz, config, routing
# ------------------------------------------------------------------------------------------

def test_healthz_omits_the_version_only_while_1_18_probes_are_pending(make_agent):
    for version, omitted in (("1.17", False), ("1.18", True), ("1.19", True)):
        sim, api = make_agent(version)
        sim.probes_pending = True
        status = api.get("/healthz").json
        if omitted:
            assert status["cilium"] == {"state": "Warning", "msg": "Not all probes executed at least once"}
        else:
            assert status["cilium"]["msg"].startswith(sim.profile["full_version"] + " ")
        sim.probes_pending = False
        assert api.get("/healthz").json["cilium"]["msg"].startswith(sim.profile["full_version"] + " ")


def test_healthz_reports_version_and_kvstore_and_degrades_with_it(make_agent):
    state = {"kv": ("Ok", "etcd: 1/1 connected, has-quorum=true")}
    _sim, api = make_agent("1.16", kvstore_status=lambda: state["kv"])
    reply = api.get("/healthz", headers={"Host": "localhost"})
    assert reply.status == 200 and reply.body.endswith(b"\n")
    status = reply.json
    assert status["cilium"] == {"state": "Ok", "msg": "1.16.5 (v1.16.5-0123abcd)"}
    assert status["kvstore"] == {"state": "Ok", "msg": "etcd: 1/1 connected, has-quorum=true"}
    assert status["kubernetes"] == {"state": "Disabled"}
    assert {"cluster", "controllers", "ipam"} <= set(status)
    state["kv"] = ("Failure", "quorum check failed 3 times in a row")
    status = api.get("/healthz").json
    assert status["kvstore"]["state"] == "Failure"
    # the version stays in the message while the kvstore is down (docs/upstream.md#cilium-healthz-version)
    assert status["cilium"] == {"state": "Failure",
                                "msg": "1.16.5 (v1.16.5-0123abcd)    Kvstore service is not ready: quorum "
                                       "check failed 3 times in a row"}
    brief = api.get("/healthz", headers={"brief": "true"}).json
    assert set(brief) == {"cilium", "cluster"} and brief["cilium"]["state"] == "Failure"


def test_config_exposes_kvstore_and_addressing_not_static_path(make_agent, tmp_path):
    _sim, api = make_agent("1.16", static_policy_dir=str(tmp_path), ipv4_range="10.200.7.0/24")
    status = api.get("/config").json["status"]
    assert status["kvstoreConfiguration"]["type"] == "etcd"
    assert status["addressing"]["ipv4"]["alloc-range"] == "10.200.7.0/24"
    # --static-cnp-path is a hive cell option, not part of the daemon configuration map
    assert str(tmp_path) not in json.dumps(status)


def test_unknown_routes_and_methods_answer_like_go_openapi(make_agent):
    _sim, api = make_agent("1.16")
    reply = api.get("/nope")
    assert (reply.status, reply.json) == (404, {"code": 404, "message": "path /v1/nope was not found"})
    reply = api.call("POST", "/endpoint")
    assert reply.status == 405
    assert reply.json == {"code": 405, "message": "method POST is not allowed, but [GET,DELETE] are"}
    assert reply.headers["Allow"] == "GET,DELETE"


def test_json_bodies_need_a_json_content_type(make_agent):
    sim, api = make_agent("1.16")
    ep = cni_endpoint(sim)
    reply = api.patch("/endpoint/%d" % ep["id"], {"state": "ready"}, content_type="text/plain")
    assert reply.status == 415
    assert reply.json == {"code": 415,
                          "message": 'unsupported media type "text/plain", only [application/json] are allowed'}


# ------------------------------------------------------------------------------------------
# Endpoint IDs
# ------------------------------------------------------------------------------------------

def test_every_endpoint_id_form_finds_the_endpoint(make_agent):
    sim, api = make_agent("1.16")
    ep = cni_endpoint(sim)
    for form in ("%d" % ep["id"], "cilium-local:%d" % ep["id"], hex(ep["id"]), "container-id:" + ALLOC,
                 "cni-attachment-id:%s:eth0" % ALLOC, "container-name:example.cache[0]", "ipv4:10.200.1.61"):
        reply = api.get("/endpoint/" + form)
        assert reply.status == 200, form
        assert reply.json["id"] == ep["id"], form
    ext = api.get("/endpoint/%d" % ep["id"]).json["status"]["external-identifiers"]
    assert ext["container-id"] == ALLOC and ext["cni-attachment-id"] == ALLOC + ":eth0"


@pytest.mark.parametrize("form, status, body", [
    ("foo:1", 400, '"unknown endpoint ID prefix \\"foo\\""'),
    ("70000", 400, '"endpoint id too large: 70000"'),
    ("abc", 400, '"invalid numeric cilium id: strconv.ParseInt: parsing \\"abc\\": invalid syntax"'),
    ("cilium-global:default:node-1:12", 400, '"unsupported IP address format"'),
    ("4096", 404, ""),
    ("container-id:no-such-alloc", 404, ""),
    ("ipv4:10.9.9.9", 404, ""),
    ("pod-name:web-0", 404, ""),
])
def test_bad_and_unknown_endpoint_ids(readonly_agent, form, status, body):
    _sim, api = readonly_agent("1.16")
    reply = api.get("/endpoint/" + form)
    assert (reply.status, reply.body.decode().strip()) == (status, body)


def test_cni_attachment_id_is_an_unknown_prefix_before_1_15(make_agent):
    sim, api = make_agent("1.13")
    cni_endpoint(sim)
    reply = api.get("/endpoint/cni-attachment-id:%s:eth0" % ALLOC)
    assert (reply.status, reply.json) == (400, 'unknown endpoint ID prefix "cni-attachment-id"')
    assert api.get("/endpoint/container-id:" + ALLOC).status == 200
    assert "cni-attachment-id" not in sim.endpoints()[-1]["status"]["external-identifiers"]


def test_disabled_legacy_identifiers_hide_container_id_lookups(make_agent):
    sim, api = make_agent("1.16")
    sim.add_endpoint(container_id=ALLOC, legacy_identifiers=False)
    assert api.get("/endpoint/container-id:" + ALLOC).status == 404
    assert api.get("/endpoint/cni-attachment-id:%s:eth0" % ALLOC).status == 200


# ------------------------------------------------------------------------------------------
# Endpoint PATCH (labelling) semantics
# ------------------------------------------------------------------------------------------

def test_fresh_cni_endpoint_is_init(make_agent):
    sim, api = make_agent("1.16")
    ep = api.get("/endpoint/%d" % cni_endpoint(sim)["id"]).json
    assert ep["status"]["labels"]["security-relevant"] == ["reserved:init"]
    assert ep["status"]["identity"]["id"] == 5


def test_patch_labels_an_init_endpoint_through_the_label_filter(make_agent):
    allocator = InMemoryIdentityAllocator()
    sim, api = make_agent("1.16", label_filter=["netreap:.*"], identity_allocator=allocator)
    ep_id = cni_endpoint(sim)["id"]
    reply = api.patch("/endpoint/cilium-local:%d" % ep_id, {
        "container-id": ALLOC, "container-name": "example.cache[0]", "labels": NETREAP_LABELS,
        "state": "waiting-for-identity"})
    assert (reply.status, reply.body) == (200, b"")
    ep = api.get("/endpoint/%d" % ep_id).json
    labels = ep["status"]["labels"]
    assert labels["security-relevant"] == NETREAP_LABELS[:3]
    assert labels["derived"] == ["nomad:team=payments"]
    assert ep["status"]["identity"]["labels"] == NETREAP_LABELS[:3]
    assert ep["status"]["identity"]["id"] == 256
    assert ep["status"]["state"] == "ready"
    key = "netreap:nomad.job_id=example;netreap:nomad.namespace=default;netreap:nomad.task_group_id=cache;"
    assert allocator.refs == {key: 1}


def test_patch_without_label_filter_makes_every_label_security_relevant(make_agent):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    assert api.patch("/endpoint/%d" % ep_id, {"labels": NETREAP_LABELS, "state": "ready"}).status == 200
    labels = api.get("/endpoint/%d/labels" % ep_id).json["status"]
    assert labels["security-relevant"] == sorted(NETREAP_LABELS) and labels["derived"] == []


def test_patch_keeps_container_id_when_empty_and_relabels_with_a_new_identity(make_agent):
    allocator = InMemoryIdentityAllocator()
    sim, api = make_agent("1.16", identity_allocator=allocator)
    ep_id = cni_endpoint(sim)["id"]
    api.patch("/endpoint/%d" % ep_id, {"labels": ["netreap:nomad.job_id=a"], "state": "ready"})
    api.patch("/endpoint/%d" % ep_id, {"container-id": "", "labels": ["netreap:nomad.job_id=b"], "state": "ready"})
    ep = api.get("/endpoint/%d" % ep_id).json
    assert ep["status"]["external-identifiers"]["container-id"] == ALLOC
    assert ep["status"]["identity"]["id"] == 257
    assert allocator.refs == {"netreap:nomad.job_id=a;": 0, "netreap:nomad.job_id=b;": 1}


def test_local_identity_users_are_counted_before_the_kvstore_is_released(make_agent):
    calls = []

    class Recording(InMemoryIdentityAllocator):
        def allocate(self, labels_key):
            calls.append(("allocate", labels_key))
            return super().allocate(labels_key)

        def release(self, labels_key):
            calls.append(("release", labels_key))
            super().release(labels_key)

    sim, _api = make_agent("1.16", identity_allocator=Recording())
    a = sim.add_endpoint(container_id="a", labels=["netreap:nomad.job_id=web"])
    b = sim.add_endpoint(container_id="b", labels=["netreap:nomad.job_id=web"])
    assert a["status"]["identity"]["id"] == b["status"]["identity"]["id"]
    sim.remove_endpoint(a["id"])
    assert calls == [("allocate", "netreap:nomad.job_id=web;")]
    sim.remove_endpoint(b["id"])
    assert calls[-1] == ("release", "netreap:nomad.job_id=web;")


def test_identity_allocation_failure_leaves_the_endpoint_waiting_until_a_retry_works(make_agent):
    class Flaky(InMemoryIdentityAllocator):
        down = True

        def allocate(self, labels_key):
            if self.down:
                raise OSError("etcd: context deadline exceeded")
            return super().allocate(labels_key)

    allocator = Flaky()
    sim, api = make_agent("1.16", identity_allocator=allocator)
    ep_id = cni_endpoint(sim)["id"]
    assert api.patch("/endpoint/%d" % ep_id, {"labels": NETREAP_LABELS, "state": "ready"}).status == 200
    ep = api.get("/endpoint/%d" % ep_id).json
    assert ep["status"]["state"] == "waiting-for-identity" and ep["status"]["identity"]["id"] == 5
    failing = [c for c in api.get("/healthz").json["controllers"] if c["status"]["consecutive-failure-count"]]
    assert failing[0]["name"] == "resolve-identity-%d" % ep_id
    assert "context deadline exceeded" in failing[0]["status"]["last-failure-msg"]
    allocator.down = False
    ep = api.get("/endpoint/%d" % ep_id).json
    assert ep["status"]["state"] == "ready" and ep["status"]["identity"]["id"] == 256


def test_reserved_endpoints_cannot_be_patched(make_agent):
    sim, api = make_agent("1.16")
    host = next(e for e in sim.endpoints() if e["status"]["labels"]["security-relevant"] == ["reserved:host"])
    reply = api.patch("/endpoint/%d" % host["id"], {"labels": ["netreap:x=y"], "state": "ready"})
    assert (reply.status, reply.json) == (400, "endpoint cannot be modified by API call")
    assert host["status"]["identity"]["id"] == 1


@pytest.mark.parametrize("body, status, expected", [
    (None, 422, {"code": 602, "message": "endpoint in body is required"}),
    ({"labels": ["a=b"]}, 422, {"code": 602, "message": "state in body is required"}),
    ({"state": "running"}, 422, {"code": 606, "message": "state in body should be one of [waiting-for-identity "
                                 "not-ready waiting-to-regenerate regenerating restoring ready disconnecting "
                                 "disconnected invalid]"}),
    ([1], 400, {"code": 400, "message": 'parsing endpoint body from "" failed, because json: cannot unmarshal '
                                        'array into Go value of type models.EndpointChangeRequest'}),
])
def test_patch_body_binding_errors(make_agent, body, status, expected):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    reply = api.patch("/endpoint/%d" % ep_id, body)
    assert (reply.status, reply.json) == (status, expected)


def test_patch_body_that_is_not_json(make_agent):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    reply = api.call("PATCH", "/endpoint/%d" % ep_id, raw=b'{"state": "ready"')
    assert (reply.status, reply.json) == (400, {"code": 400, "message": 'parsing endpoint body from "" failed, '
                                                                        'because unexpected EOF'})
    reply = api.call("PATCH", "/endpoint/%d" % ep_id, raw=b'{"state": ready}')
    assert reply.json["message"].endswith("invalid character 'r' looking for beginning of value")


def test_put_endpoint_creates_like_cni_add(make_agent):
    sim, api = make_agent("1.16")
    reply = api.call("PUT", "/endpoint/cilium-local:0", {
        "container-id": ALLOC, "container-interface-name": "eth0", "labels": [], "state": "waiting-for-identity",
        "addressing": {"ipv4": "10.200.1.80"}, "sync-build-endpoint": True})
    assert reply.status == 201
    created = reply.json
    assert created["status"]["labels"]["security-relevant"] == ["reserved:init"]
    assert api.get("/endpoint/ipv4:10.200.1.80").json["id"] == created["id"]
    assert api.call("PUT", "/endpoint/%d" % created["id"], {"state": "ready"}).status == 409
    _sim13, api13 = make_agent("1.13")
    reply = api13.call("PUT", "/endpoint/0", {"container-id": ALLOC, "state": "waiting-for-identity"})
    assert (reply.status, reply.body) == (201, b"")


def test_patch_unknown_endpoint_is_404_without_body(make_agent):
    _sim, api = make_agent("1.16")
    reply = api.patch("/endpoint/container-id:gone", {"labels": ["a=b"], "state": "ready"})
    assert (reply.status, reply.body) == (404, b"")


def test_endpoint_list_filters_by_labels_body(make_agent):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    api.patch("/endpoint/%d" % ep_id, {"labels": NETREAP_LABELS, "state": "ready"})
    assert len(api.get("/endpoint").json) == 3  # host, health, ours
    found = api.get("/endpoint", body=["netreap:nomad.job_id=example"]).json
    assert [e["id"] for e in found] == [ep_id]
    reply = api.get("/endpoint", body=["netreap:nomad.job_id=nothing"])
    assert (reply.status, reply.body) == (404, b"")


def test_custom_labels_patch(make_agent):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    assert api.patch("/endpoint/%d/labels" % ep_id, {"user": ["container:extra=1"]}).status == 200
    cfg = api.get("/endpoint/%d/labels" % ep_id).json
    assert cfg["spec"]["user"] == ["container:extra=1"] and cfg["status"]["realized"]["user"] == ["container:extra=1"]
    assert "container:extra=1" in api.get("/endpoint/%d" % ep_id).json["status"]["identity"]["labels"]


def test_endpoint_delete_and_batch_delete(make_agent):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    assert api.delete("/endpoint/%d" % ep_id).status == 200
    assert api.get("/endpoint/%d" % ep_id).status == 404
    cni_endpoint(sim)
    assert api.delete("/endpoint", {"container-id": ALLOC}).status == 200
    assert api.get("/endpoint/container-id:" + ALLOC).status == 404
    assert api.delete("/endpoint", {"container-id": ALLOC}).status == 404
    _sim13, api13 = make_agent("1.13")
    reply = api13.delete("/endpoint", {"container-id": ALLOC})
    assert (reply.status, reply.json["message"]) == (405, "method DELETE is not allowed, but [GET] are")


def test_identity_api(make_agent):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    api.patch("/endpoint/%d" % ep_id, {"labels": ["netreap:nomad.job_id=web"], "state": "ready"})
    ids = {i["id"]: i["labels"] for i in api.get("/identity").json}
    assert ids[1] == ["reserved:host"] and ids[9] == ["reserved:world-ipv4"]
    assert ids[256] == ["netreap:nomad.job_id=web"]
    assert api.get("/identity", body=["netreap:nomad.job_id=web"]).json[0]["id"] == 256
    assert api.get("/identity", body=["netreap:nomad.job_id=nope"]).status == 404


# ------------------------------------------------------------------------------------------
# Rate limiting
# ------------------------------------------------------------------------------------------

def test_rate_limit_answers_429_beyond_the_burst(make_agent):
    clock = Clock()
    sim, api = make_agent("1.16", clock=clock)
    ep_id = cni_endpoint(sim)["id"]
    sim.set_rate_limit(True, burst=2)
    body = {"labels": ["netreap:nomad.job_id=web"], "state": "ready"}
    assert [api.patch("/endpoint/%d" % ep_id, body).status for unused in range(2)] == [200, 200]
    reply = api.patch("/endpoint/%d" % ep_id, body)
    assert reply.status == 429
    assert reply.json == "request would have to wait 1s to be served (maximum wait duration: 15s)"
    assert api.get("/endpoint/%d" % ep_id).status == 200  # endpoint-get has its own limiter
    clock.now += 1.5
    assert api.patch("/endpoint/%d" % ep_id, body).status == 200
    sim.set_rate_limit(False)
    assert all(api.patch("/endpoint/%d" % ep_id, body).status == 200 for unused in range(5))


# ------------------------------------------------------------------------------------------
# Policy: accepted rules, one per Cilium doc family
# ------------------------------------------------------------------------------------------

ACCEPTED = {
    "l3-labels": {"endpointSelector": {"matchLabels": {"netreap:nomad.job_id": "api"}},
                  "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}]},
    "l4-ports": {"endpointSelector": {"matchLabels": {"app": "api"}},
                 "ingress": [{"toPorts": [{"ports": [{"port": "8080", "protocol": "tcp"}, {"port": "HTTPS"},
                                                     {"port": "9000", "endPort": 9010, "protocol": "UDP"}]}]}]},
    "cidr": {"endpointSelector": {}, "egress": [{"toCIDR": ["10.1.2.3", "192.168.0.0/16"]},
                                                {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}]},
    "entities": {"endpointSelector": {}, "egress": [{"toEntities": ["world", "cluster", "host", "kube-apiserver"]}]},
    "dns-fqdn": {"endpointSelector": {"matchLabels": {"app": "api"}}, "egress": [
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system"}}],
         "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                      "rules": {"dns": [{"matchPattern": "*.example.com"}, {"matchName": "api.example.com"}]}}]},
        {"toFQDNs": [{"matchName": "api.example.com"}, {"matchPattern": "*.svc.example.com"}]}]},
    "http-l7": {"endpointSelector": {"matchLabels": {"app": "api"}}, "ingress": [
        {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                      "rules": {"http": [{"method": "GET", "path": "/v1/.*"},
                                         {"method": "PUT", "path": "/v1/x", "headers": ["X-My: a"]}]}}]}]},
    "deny": {"endpointSelector": {"matchLabels": {"app": "api"}},
             "ingressDeny": [{"fromEntities": ["world"]}],
             "egressDeny": [{"toCIDR": ["169.254.169.254/32"], "toPorts": [{"ports": [{"port": "80"}]}]}]},
    "host-policy": {"nodeSelector": {"matchLabels": {"node-role": "worker"}},
                    "ingress": [{"fromEntities": ["remote-node", "health"],
                                 "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]},
    "icmp": {"endpointSelector": {}, "egress": [{"icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}]}]},
    "expressions": {"endpointSelector": {"matchExpressions": [
        {"key": "netreap:nomad.job_id", "operator": "In", "values": ["a", "b"]},
        {"key": "env", "operator": "Exists"}]}, "ingress": [{}]},
}


@pytest.mark.parametrize("family", sorted(ACCEPTED))
def test_accepted_policy_families(make_agent, family):
    sim, api = make_agent("1.16")
    rule = dict(ACCEPTED[family], labels=["netreap:policy=%s" % family])
    reply = api.put_policy([rule])
    assert reply.status == 200, reply
    out = reply.json
    assert out["revision"] == 2
    assert json.loads(out["policy"]) == sim.policy_rules()
    assert sim.policy_rules()[0]["labels"] == [{"key": "policy", "value": family, "source": "netreap"}]


def test_sanitised_output_is_what_the_agent_stores(make_agent):
    _sim, api = make_agent("1.16")
    rules = [ACCEPTED["l4-ports"], dict(ACCEPTED["l3-labels"], typo_field=1, labels=[
        {"key": "name", "value": "x", "source": "unspec"}])]
    out = json.loads(api.put_policy(rules).json["policy"])
    assert out[0]["endpointSelector"] == {"matchLabels": {"any:app": "api"}}
    assert out[0]["ingress"][0]["toPorts"][0]["ports"] == [
        {"port": "8080", "protocol": "TCP"}, {"port": "https", "protocol": "ANY"},
        {"port": "9000", "endPort": 9010, "protocol": "UDP"}]
    assert out[0]["enableDefaultDeny"] == {"ingress": True, "egress": False}
    assert "typo_field" not in out[1]
    assert out[1]["ingress"][0]["fromEndpoints"] == [{"matchLabels": {"any:app": "web"}}]
    assert list(out[1]) == ["endpointSelector", "ingress", "labels", "enableDefaultDeny"]
    policy_text = api.get("/policy").json["policy"]
    assert policy_text.startswith('[\n  {\n    "endpointSelector": {\n      "matchLabels": {\n        "any:app"')


def test_enable_default_deny_is_not_shown_before_1_16(make_agent):
    _sim, api = make_agent("1.15")
    out = json.loads(api.put_policy([ACCEPTED["l3-labels"]]).json["policy"])
    assert "enableDefaultDeny" not in out[0]


# ------------------------------------------------------------------------------------------
# Policy: every rejection class the agent has (docs/upstream.md, "Cilium: policy")
# ------------------------------------------------------------------------------------------

ES = {"matchLabels": {"app": "api"}}


def _ing(**item):
    return {"endpointSelector": ES, "ingress": [item]}


def _egr(**item):
    return {"endpointSelector": ES, "egress": [item]}


def _ports(*ports, rules=None):
    port_rule = {"ports": [dict(p) for p in ports]}
    if rules is not None:
        port_rule["rules"] = rules
    return [port_rule]


REJECTED = [
    ("no-selector", {"ingress": [{}]}, "rule must have one of EndpointSelector or NodeSelector"),
    ("both-selectors", {"endpointSelector": {}, "nodeSelector": {}, "ingress": [{}]},
     "rule cannot have both EndpointSelector and NodeSelector"),
    ("bad-operator", {"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "Equals",
                                                                 "values": ["x"]}]}, "ingress": [{}]},
     'invalid label selector: matchExpressions[0].operator: Invalid value: "Equals": not a valid selector operator'),
    ("in-without-values", {"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
                           "ingress": [{}]},
     "invalid label selector: matchExpressions[0].values: Required value: must be specified when `operator` is "
     "'In' or 'NotIn'"),
    ("exists-with-values", {"endpointSelector": {"matchExpressions": [
        {"key": "app", "operator": "Exists", "values": ["x"]}]}, "ingress": [{}]},
     "invalid label selector: matchExpressions[0].values: Forbidden: may not be specified when `operator` is "
     "'Exists' or 'DoesNotExist'"),
    ("bad-label-value", {"endpointSelector": {"matchLabels": {"nomad:owner": "team a/b"}}, "ingress": [{}]},
     'invalid label selector: matchLabels: Invalid value: "team a/b": a valid label must be an empty string or '
     "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
     "(e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is "
     "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
    ("combining", _ing(fromEndpoints=[{}], fromCIDR=["10.0.0.0/8"]),
     "Combining FromEndpoints and FromCIDR is not supported yet"),
    ("unknown-entity", _egr(toEntities=["internet"]), "unsupported entity: internet"),
    ("world-ipv4-on-1.14", _egr(toEntities=["world-ipv4"]), "unsupported entity: world-ipv4"),
    ("bad-cidr", _egr(toCIDR=["10.0.0.0/33"]),
     'unable to parse CIDR: ParseAddr("10.0.0.0/33"): unexpected character (at "/33")'),
    ("empty-cidr", _egr(toCIDR=[""]), "IP must be specified"),
    ("cidrset-bare-ip", _egr(toCIDRSet=[{"cidr": "10.0.0.1"}]),
     'Unable to parse CIDRRule "10.0.0.1": netip.ParsePrefix("10.0.0.1"): no \'/\''),
    ("cidrset-except-outside", _egr(toCIDRSet=[{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]),
     "allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix 192.168.0.0/16"),
    ("empty-port", _ing(toPorts=_ports({"protocol": "TCP"})), "Port must be specified"),
    ("port-out-of-range", _ing(toPorts=_ports({"port": "99999"})),
     'Unable to parse port: strconv.ParseUint: parsing "99999": value out of range'),
    ("bad-protocol", _ing(toPorts=_ports({"port": "80", "protocol": "foo"})),
     'invalid protocol "FOO", must be { tcp | udp | sctp | any }'),
    ("too-many-ports", _ing(toPorts=_ports(*[{"port": str(1000 + i)} for i in range(41)])),
     "too many ports, the max is 40"),
    ("dns-on-ingress", _ing(toPorts=_ports({"port": "53"}, rules={"dns": [{"matchName": "a.com"}]})),
     "L7 protocol DNS is not supported on ingress yet"),
    ("dns-without-port", _egr(toPorts=[{"rules": {"dns": [{"matchName": "a.com"}]}}]),
     "Port 53 must be specified for DNS rules"),
    ("dns-port-range", _egr(toPorts=_ports({"port": "53", "endPort": 60}, rules={"dns": [{"matchName": "a.com"}]})),
     "L7 rules do not support port ranges"),  # the 1.16 branch from 1.16.5
    ("l7-on-udp", _ing(toPorts=_ports({"port": "80", "protocol": "UDP"}, rules={"http": [{"path": "/"}]})),
     "L7 rules can only apply to TCP (not UDP) except for DNS rules"),
    ("l7-port-zero", _ing(toPorts=_ports({"port": "0", "protocol": "TCP"}, rules={"http": [{"path": "/"}]})),
     "L7 rules can not be used when a port is 0"),
    ("two-l7-types", _egr(toPorts=_ports({"port": "53", "protocol": "TCP"}, rules={
        "http": [{"path": "/"}], "dns": [{"matchName": "a.com"}]})),
     "multiple L7 protocol rule types specified in single rule"),
    ("l7-on-host-policy", {"nodeSelector": {}, "ingress": [{"toPorts": _ports(
        {"port": "80", "protocol": "TCP"}, rules={"http": [{"path": "/"}]})}]},
     "host policies do not support L7 rules yet"),
    ("icmps-with-ports", _egr(icmps=[{"fields": [{"type": 8}]}], toPorts=_ports({"port": "80"})),
     "The ICMPs block may only be present without ToPorts. Define a separate rule to use ToPorts."),
    ("fqdn-name-and-pattern", _egr(toFQDNs=[{"matchName": "a.com", "matchPattern": "*.a.com"}]),
     "only one of MatchName or MatchPattern is allowed in an FQDNSelector"),
    ("fqdn-bad-chars", _egr(toFQDNs=[{"matchName": "a.com/x"}]),
     'Invalid characters in MatchName: "a.com/x". Only 0-9, a-z, A-Z and . and - characters are allowed'),
    ("from-nodes-without-flag", _ing(fromNodes=[{"matchLabels": {"node-role": "db"}}]),
     'FromNodes/ToNodes rules can only be applied when the "enable-node-selector-labels" flag is set'),
    ("http-bad-regex", _ing(toPorts=_ports({"port": "80", "protocol": "TCP"}, rules={"http": [{"path": "(/v1"}]})),
     "error parsing regexp: missing closing ): `(/v1`"),
]


@pytest.mark.parametrize("name, rule, message", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_rules_answer_500_with_the_agent_message(readonly_agent, name, rule, message):
    version = "1.14" if name == "world-ipv4-on-1.14" else "1.16"
    sim, api = readonly_agent(version)
    reply = api.put_policy([rule])
    assert (reply.status, reply.json) == (500, message)
    assert reply.headers["Content-Type"] == "application/json"
    assert sim.policy_rules() == [] and sim.policy_revision == 1


def test_l7_needs_the_l7_proxy(make_agent):
    _sim, api = make_agent("1.16", enable_l7_proxy=False)
    reply = api.put_policy([ACCEPTED["http-l7"]])
    assert (reply.status, reply.json) == (500, "L7 policy is not supported since L7 proxy is not enabled")
    assert api.put_policy([ACCEPTED["l4-ports"]]).status == 200


def test_from_nodes_accepted_with_node_selector_labels(make_agent):
    _sim, api = make_agent("1.16", enable_node_selector_labels=True)
    assert api.put_policy([_ing(fromNodes=[{"matchLabels": {"node-role": "db"}}])]).status == 200


def test_rule_direction_requirement_starts_in_1_17():
    bare = {"endpointSelector": ES, "labels": ["a=b"]}
    assert pr.validate_rules([bare], PROFILES["1.16"])
    for version in ("1.17", "1.19"):
        with pytest.raises(pr.PolicyError) as exc:
            pr.validate_rules([bare], PROFILES[version])
        assert exc.value.message == "rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny"


def test_deny_rules_are_validated_from_1_17():
    rule = {"endpointSelector": ES, "egressDeny": [{"toCIDR": ["not-a-cidr"]}]}
    assert pr.validate_rules([rule], PROFILES["1.16"])  # accepted unvalidated before PR #36598
    with pytest.raises(pr.PolicyError, match="unable to parse CIDR"):
        pr.validate_rules([rule], PROFILES["1.17"])


def test_1_19_messages_are_lower_case():
    cases = [
        (_ing(fromEndpoints=[{}], fromCIDR=["10.0.0.0/8"]),
         "combining FromEndpoints and FromCIDR is not supported yet"),
        (_ing(toPorts=_ports({"protocol": "TCP"})), "port must be specified"),
        ({"nodeSelector": {}, "ingress": [{"toPorts": _ports({"port": "80", "protocol": "TCP"},
                                                             rules={"http": [{}]})}]},
         "L7 policy is not supported on host ingress yet"),
    ]
    for rule, message in cases:
        with pytest.raises(pr.PolicyError) as exc:
            pr.validate_rules([rule], PROFILES["1.19"])
        assert exc.value.message == message


def test_sctp_and_world_entities_by_profile():
    sctp = _ing(toPorts=_ports({"port": "36412", "protocol": "SCTP"}))
    assert pr.validate_rules([sctp], PROFILES["1.13"])[0]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] == "SCTP"
    world6 = _egr(toEntities=["world-ipv6"])
    with pytest.raises(pr.PolicyError, match="unsupported entity: world-ipv6"):
        pr.validate_rules([world6], PROFILES["1.14"])
    assert pr.validate_rules([world6], PROFILES["1.15"])


# ------------------------------------------------------------------------------------------
# PUT /policy transport errors
# ------------------------------------------------------------------------------------------

def test_put_policy_body_errors(make_agent):
    sim, api = make_agent("1.16")
    raw_array = api.call("PUT", "/policy", [ACCEPTED["l3-labels"]])
    assert raw_array.status == 400
    assert raw_array.json == {"code": 400, "message": 'parsing policy body from "" failed, because json: cannot '
                                                      'unmarshal array into Go value of type string'}
    missing = api.call("PUT", "/policy")
    assert (missing.status, missing.json) == (422, {"code": 602, "message": "policy in body is required"})
    not_rules = api.call("PUT", "/policy", "this is not JSON")
    assert (not_rules.status, not_rules.body) == (400, b"")
    wrong_type = api.put_policy([{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 80}]}]}]}])
    assert (wrong_type.status, wrong_type.body) == (400, b"")
    assert sim.policy_revision == 1


def test_put_policy_accepts_empty_arrays_and_bumps_the_revision(make_agent):
    sim, api = make_agent("1.16")
    reply = api.put_policy([])
    assert reply.status == 200 and reply.json == {"policy": "[]", "revision": 2}
    assert sim.policy_history[-1] == {"revision": 2, "rules": []}


def test_policy_write_api_is_gone_in_1_19(make_agent):
    _sim, api = make_agent("1.19")
    for method in ("PUT", "DELETE"):
        reply = api.call(method, "/policy", json.dumps([]))
        assert reply.status == 405
        assert reply.json == {"code": 405, "message": "method %s is not allowed, but [GET] are" % method}
        assert reply.headers["Allow"] == "GET"
    assert api.get("/policy").json == {"policy": "[]", "revision": 1}


# ------------------------------------------------------------------------------------------
# Replace, delete, revisions, history
# ------------------------------------------------------------------------------------------

def _labelled(name, **extra):
    return dict(ACCEPTED["l3-labels"], labels=["netreap:name=%s" % name] + extra.pop("more", []), **extra)


def test_replace_with_labels_from_1_15_and_ignored_on_1_13(make_agent):
    for version, expected in (("1.15", ["b", "c"]), ("1.13", ["a", "b", "c"])):
        sim, api = make_agent(version)
        api.put_policy([_labelled("a", more=["netreap:owner=netreap"])])
        api.put_policy([_labelled("b")])
        reply = api.put_policy([_labelled("c", more=["netreap:owner=netreap"])],
                               query="?replace-with-labels=netreap:owner=netreap")
        assert reply.status == 200 and reply.json["revision"] == 4
        names = [r["labels"][0]["value"] for r in sim.policy_rules()]
        assert names == expected, version


def test_replace_true_swaps_rules_with_the_same_labels(make_agent):
    sim, api = make_agent("1.16")
    api.put_policy([_labelled("a"), _labelled("b")])
    api.put_policy([_labelled("a", description="new")], query="?replace=true")
    rules = sim.policy_rules()
    assert [(r["labels"][0]["value"], r.get("description")) for r in rules] == [("b", None), ("a", "new")]
    history = sim.policy_history
    assert [h["revision"] for h in history] == [1, 2, 3]
    assert all(any(r["labels"][0]["value"] == "b" for r in h["rules"]) for h in history[1:])


def test_delete_policy_all_and_by_labels(make_agent):
    sim, api = make_agent("1.16")
    api.put_policy([_labelled("a"), _labelled("b")])
    reply = api.delete("/policy", ["netreap:name=a"])
    assert reply.status == 200 and reply.json["revision"] == 3
    assert [r["labels"][0]["value"] for r in json.loads(reply.json["policy"])] == ["b"]
    missing = api.delete("/policy", ["netreap:name=zzz"])
    assert (missing.status, missing.json) == (500, "policy not found")
    everything = api.delete("/policy")
    assert everything.status == 200 and everything.json == {"policy": "[]", "revision": 4}
    again = api.delete("/policy", [])
    assert again.json == {"policy": "[]", "revision": 4}  # nothing deleted: no new revision
    assert [h["revision"] for h in sim.policy_history] == [1, 2, 3, 4]


def test_delete_policy_with_unmatched_labels_is_200_on_1_17(make_agent):
    _sim, api = make_agent("1.17")
    api.put_policy([_labelled("a")])
    reply = api.delete("/policy", ["netreap:name=zzz"])
    assert reply.status == 200 and reply.json["revision"] == 2


def test_get_policy_label_filter(make_agent):
    _sim, api = make_agent("1.16")
    api.put_policy([_labelled("a"), _labelled("b")])
    only_b = json.loads(api.get("/policy", body=["netreap:name=b"]).json["policy"])
    assert [r["labels"][0]["value"] for r in only_b] == ["b"]
    assert api.get("/policy", body=["name=b"]).status == 200  # no source: "any"
    reply = api.get("/policy", body=["netreap:name=zzz"])
    assert (reply.status, reply.body) == (404, b"")


def test_endpoint_policy_enforcement_follows_selecting_rules(make_agent):
    sim, api = make_agent("1.16")
    ep_id = cni_endpoint(sim)["id"]
    api.patch("/endpoint/%d" % ep_id, {"labels": ["netreap:nomad.job_id=api"], "state": "ready"})
    assert api.get("/endpoint/%d" % ep_id).json["status"]["policy"]["realized"]["policy-enabled"] == "none"
    api.put_policy([ACCEPTED["l3-labels"]])
    policy = api.get("/endpoint/%d" % ep_id).json["status"]["policy"]["realized"]
    assert policy == {"policy-enabled": "ingress", "policy-revision": 2}


# ------------------------------------------------------------------------------------------
# Static policy directory (--static-cnp-path)
# ------------------------------------------------------------------------------------------

CCNP = """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: api-ingress
spec:
  endpointSelector:
    matchLabels:
      netreap:nomad.job_id: api
  ingress:
    - fromEndpoints:
        - matchLabels:
            netreap:nomad.job_id: web
      toPorts:
        - ports:
            - port: "8080"
              protocol: TCP
"""


def test_static_directory_loads_valid_files_and_keeps_old_rules_on_bad_ones(make_agent, tmp_path):
    sim, api = make_agent("1.16", static_policy_dir=str(tmp_path))
    assert sim.policy_rules() == []
    (tmp_path / "netreap-api.yaml").write_text(CCNP)
    (tmp_path / ".netreap-api.yaml.tmp.yaml").write_text("not: [valid")  # temp file: ignored
    (tmp_path / "other.yml").write_text(CCNP)  # only *.yaml is read
    (tmp_path / "Upper.yaml").write_text(CCNP)  # not a DNS-1123 name: ignored
    rules = json.loads(api.get("/policy").json["policy"])
    assert len(rules) == 1
    assert rules[0]["labels"] == [
        {"key": "filename", "value": "netreap-api.yaml", "source": "directory"},
        {"key": "policy-derived-from", "value": "CiliumClusterwideNetworkPolicy", "source": "directory"}]
    assert rules[0]["endpointSelector"] == {"matchLabels": {"netreap:nomad.job_id": "api"}}
    assert sim.static_policy_errors == []
    assert set(sim.static_policy_ignored) == {".netreap-api.yaml.tmp.yaml", "Upper.yaml"}
    revision = sim.policy_revision

    # A version that fails validation: the old rules stay, the error is recorded.
    (tmp_path / "netreap-api.yaml").write_text(CCNP.replace('"8080"', '"99999"'))
    assert sim.policy_rules() == rules and sim.policy_revision == revision
    [error] = sim.static_policy_errors
    assert error["file"] == "netreap-api.yaml" and not error["fatal"]
    assert error["error"].endswith("Invalid CiliumClusterwideNetworkPolicy spec: Unable to parse port: "
                                   'strconv.ParseUint: parsing "99999": value out of range')

    # Fixed: replaced in one revision; removed: gone in the next.
    (tmp_path / "netreap-api.yaml").write_text(CCNP.replace("web", "frontend"))
    fixed = sim.policy_rules()
    # The agent adds a namespace requirement to peer selectors of a clusterwide file
    # (docs/upstream.md#static-files-peer-selectors-rewritten).
    assert fixed[0]["ingress"][0]["fromEndpoints"] == [{
        "matchLabels": {"netreap:nomad.job_id": "frontend"},
        "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}]}]
    assert sim.policy_revision == revision + 1 and sim.static_policy_errors == []
    (tmp_path / "netreap-api.yaml").unlink()
    assert sim.policy_rules() == [] and sim.policy_revision == revision + 2
    assert all(h["rules"] for h in sim.policy_history if revision <= h["revision"] <= revision + 1)


def test_static_file_that_does_not_decode_is_fatal_for_the_agent(make_agent, tmp_path):
    sim, _api = make_agent("1.17", static_policy_dir=str(tmp_path))
    (tmp_path / "a.yaml").write_text(CCNP)
    assert len(sim.policy_rules()) == 1
    (tmp_path / "a.yaml").write_text(CCNP.replace("ingress:", "ingress: 7\n  x:"))
    assert len(sim.policy_rules()) == 1
    [error] = sim.static_policy_errors
    assert error["fatal"] and "cannot unmarshal number" in error["error"]


def test_static_namespaced_policy_is_scoped_to_its_k8s_namespace(make_agent, tmp_path):
    sim, _api = make_agent("1.16", static_policy_dir=str(tmp_path))
    cnp = CCNP.replace("kind: CiliumClusterwideNetworkPolicy", "kind: CiliumNetworkPolicy")
    (tmp_path / "ns.yaml").write_text(cnp.replace("  name: api-ingress", "  name: api-ingress\n  namespace: prod"))
    [rule] = sim.policy_rules()
    assert rule["endpointSelector"]["matchLabels"] == {"k8s:io.kubernetes.pod.namespace": "prod",
                                                       "netreap:nomad.job_id": "api"}
    assert {"key": "io.cilium.k8s.policy.namespace", "value": "prod", "source": "directory"} in rule["labels"]


def test_static_rules_are_validated_with_the_profile(make_agent, tmp_path):
    (tmp_path / "empty.yaml").write_text("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n"
                                         "metadata:\n  name: x\nspec:\n  endpointSelector: {}\n")
    sim, _api = make_agent("1.19", static_policy_dir=str(tmp_path))
    assert sim.policy_rules() == []
    [error] = sim.static_policy_errors
    assert error["fatal"]  # errors while reading the directory at start-up stop the agent
    assert error["error"].endswith("Invalid CiliumClusterwideNetworkPolicy spec: rule must have at least one of "
                                   "Ingress, IngressDeny, Egress, EgressDeny")


def test_delete_all_also_removes_static_rules_until_the_file_changes(make_agent, tmp_path):
    (tmp_path / "a.yaml").write_text(CCNP)
    sim, api = make_agent("1.16", static_policy_dir=str(tmp_path))
    api.put_policy([_labelled("x")])
    assert len(sim.policy_rules()) == 2
    api.delete("/policy")
    assert sim.policy_rules() == []
    (tmp_path / "a.yaml").write_text(CCNP + "# touched\n")
    assert len(sim.policy_rules()) == 1


def test_seed_policy_adds_foreign_rules(make_agent):
    sim, api = make_agent("1.19")
    revision = sim.seed_policy([{"labels": [{"key": "name", "value": "operator-managed", "source": "unspec"}],
                                 "endpointSelector": {"matchLabels": {"reserved:health": ""}},
                                 "ingress": [{"fromEntities": ["cluster"]}]}])
    assert revision == 2
    # 1.19 lists PolicyEntry objects (docs/upstream.md#get-policy-in-119-policyentry).
    [entry] = json.loads(api.get("/policy").json["policy"])
    assert entry["Subject"] == {"matchLabels": {"reserved:health": ""}} and entry["Ingress"] is True
    assert {"key": "name", "value": "operator-managed", "source": "unspec"} in entry["Labels"]
