"""Conformance of the lab's Nomad simulator (tests/lab/nomad.py), driven only through python-nomad.

What these pin down comes from docs/upstream.md (#nomad-http and the entries after it) and Nomad 1.9 sources: exact
field sets and types, text/plain error bodies, ACL behaviour, list filtering, node liveness.
"""

import json
import re
import threading
import time
import types

import nomad
import pytest
from nomad.api import exceptions as nexc

from tests.lab import httpd
from tests.lab.nomad import NomadSim, compile_filter, parse_go_duration

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RFC3339_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")

NODE_STUB_KEYS = {"Address", "ID", "Datacenter", "Name", "NodePool", "NodeClass", "Version", "Drain",
                  "SchedulingEligibility", "Status", "StatusDescription", "Drivers", "HostVolumes",
                  "LastDrain", "CreateIndex", "ModifyIndex"}
ALLOC_STUB_KEYS = {"ID", "EvalID", "Name", "Namespace", "NodeID", "NodeName", "JobID", "JobType",
                   "JobVersion", "TaskGroup", "DesiredStatus", "DesiredDescription", "ClientStatus",
                   "ClientDescription", "DesiredTransition", "TaskStates", "DeploymentStatus",
                   "FollowupEvalID", "NextAllocation", "RescheduleTracker", "PreemptedAllocations",
                   "PreemptedByAllocation", "CreateIndex", "ModifyIndex", "CreateTime", "ModifyTime"}
CILIUM_FILTER = 'Attributes["plugins.cni.version.cilium-cni"] is not empty'


def nomad_client(url, token=None, **kwargs):
    return nomad.Nomad(address=url, token=token, timeout=5, **kwargs)


@pytest.fixture
def nomad_lab():
    """A seeded cluster: 2 nodes (one without cilium-cni), namespaces default/prod/secret,
    allocations in several namespaces, ACLs on, a server endpoint and node-1's client agent."""
    sim = NomadSim(acl_enabled=True)
    sim.add_namespace("prod", "production")
    sim.add_namespace("secret", "restricted")
    n1 = sim.add_node("node-1", address="192.168.50.11", meta={"rack": "r1"})
    n2 = sim.add_node("node-2", address="192.168.50.12",
                      attributes={"plugins.cni.version.cilium-cni": None})
    web = sim.add_allocation(n1["ID"], "web", task_group="frontend",
                             job_meta={"netreap.cilium/policy": "web"},
                             group_meta={"tier": "front"}, task_meta={"role": "server"})
    api = sim.add_allocation(n1["ID"], "api", namespace="prod", job_meta={"owner": "team-a"},
                             address="10.0.1.77")
    hidden = sim.add_allocation(n1["ID"], "vault-agent", namespace="secret")
    hostnet = sim.add_allocation(n2["ID"], "node-exporter", network_mode="host")
    server_ep = httpd.serve_tcp(sim)
    agent = sim.client_agent(n1["ID"])
    agent_ep = httpd.serve_tcp(agent)
    sim.add_token("prod-reader", namespaces={"prod": ["read-job"]}, node="read", agent="read")
    sim.add_token("no-node", namespaces={"*": ["read"]}, node=None, agent=None)
    lab = types.SimpleNamespace(
        sim=sim, n1=n1, n2=n2, web=web, api=api, hidden=hidden, hostnet=hostnet,
        url=server_ep.url, agent_url=agent_ep.url, agent=agent,
        admin=nomad_client(server_ep.url, sim.management_token))
    yield lab
    agent_ep.stop()
    server_ep.stop()


# ---------------------------------------------------------------------------------------------
# agent / status
# ---------------------------------------------------------------------------------------------

def test_agent_self_server_vs_client_agent(nomad_lab):
    server = nomad_lab.admin.agent.get_agent()
    assert set(server) == {"config", "member", "stats"}
    assert "client" not in server["stats"]
    assert server["stats"]["nomad"]["leader"] == "true"
    assert server["member"]["Status"] == "alive"
    assert server["config"]["Server"]["Enabled"] is True
    assert server["config"]["Client"]["Enabled"] is False
    assert server["config"]["Version"]["Version"] == "1.9.7"

    client = nomad_client(nomad_lab.agent_url, nomad_lab.sim.management_token).agent.get_agent()
    assert set(client) == {"config", "member", "stats"}
    assert client["stats"]["client"]["node_id"] == nomad_lab.n1["ID"]
    assert set(client["stats"]) == {"client", "runtime"}
    assert client["config"]["NodeName"] == "node-1"
    assert client["config"]["Client"]["Enabled"] is True
    assert client["config"]["Client"]["CNIConfigDir"] == "/opt/cni/config"
    assert client["member"]["Name"] == "" and client["member"]["Status"] == "none"
    for body in (server, client):
        for group in body["stats"].values():
            assert all(isinstance(v, str) for v in group.values()), group
    # the client agent's own answers and forwarded calls are logged under its name
    log = nomad_lab.sim.log
    assert log.count(service="nomad-agent:node-1", path="^/v1/agent/self$") == 1
    assert log.count(service="nomad", path="^/v1/agent/self$") == 1


def test_status_leader_and_health(nomad_lab):
    assert nomad_lab.admin.status.leader.get_leader() == "127.0.0.1:4647"
    health = nomad_lab.admin.agent.request("health", method="get").json()
    assert health == {"server": {"ok": True, "message": "ok"}}
    agent = nomad_client(nomad_lab.agent_url)  # health needs no token
    assert agent.agent.request("health", method="get").json() == \
        {"client": {"ok": True, "message": "ok"}}


def test_client_agent_forwards_to_servers(nomad_lab):
    via_agent = nomad_client(nomad_lab.agent_url, nomad_lab.sim.management_token)
    nodes = via_agent.nodes.get_nodes()
    assert {n["Name"] for n in nodes} == {"node-1", "node-2"}
    assert via_agent.allocation.get_allocation(nomad_lab.web["ID"])["JobID"] == "web"
    assert nomad_lab.sim.log.count(service="nomad-agent:node-1", path="^/v1/nodes$") == 1
    assert nomad_lab.sim.log.count(service="nomad", path="^/v1/nodes$") == 0
    # same ACL as the servers
    with pytest.raises(nexc.URLNotAuthorizedNomadException) as err:
        nomad_client(nomad_lab.agent_url, "no-node").nodes.get_nodes()
    assert err.value.nomad_resp.text == "Permission denied"
    # a fault injected on the servers reaches requests forwarded by the agent
    nomad_lab.sim.faults.add(httpd.Fault("status", status=500, body="rpc error: no leader",
                                         path="^/v1/nodes"))
    with pytest.raises(nexc.BaseNomadException) as err:
        via_agent.nodes.get_nodes()
    assert err.value.nomad_resp.status_code == 500


# ---------------------------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------------------------

def test_nodes_list_stub_shapes(nomad_lab):
    resp = nomad_lab.admin.nodes.request(method="get")
    assert resp.headers["Content-Type"] == "application/json"
    assert int(resp.headers["X-Nomad-Index"]) >= 1
    assert resp.headers["X-Nomad-KnownLeader"] == "true"
    assert resp.headers["X-Nomad-LastContact"] == "0"
    nodes = resp.json()
    assert [n["ID"] for n in nodes] == sorted(n["ID"] for n in nodes)
    for stub in nodes:
        assert set(stub) == NODE_STUB_KEYS
        assert stub["Version"] == "1.9.7" and stub["Drain"] is False
        assert isinstance(stub["CreateIndex"], int)
    by_name = {n["Name"]: n for n in nodes}
    assert by_name["node-1"]["Address"] == "192.168.50.11"

    with_os = nomad_lab.admin.nodes.get_nodes(os=True)  # sent as os=True (Python bool)
    assert all(set(n) == NODE_STUB_KEYS | {"Attributes"} for n in with_os)
    assert all(n["Attributes"] == {"os.name": "ubuntu"} for n in with_os)

    with_res = nomad_lab.admin.nodes.get_nodes(resources=True)
    n1 = next(n for n in with_res if n["Name"] == "node-1")
    assert set(n1) == NODE_STUB_KEYS | {"NodeResources", "ReservedResources"}
    assert "cni/cilium" in {net["Mode"] for net in n1["NodeResources"]["Networks"]}
    assert nomad_lab.admin.nodes.get_nodes(os=False, resources=False) == nodes

    with pytest.raises(nexc.BadRequestNomadException) as err:
        nomad_lab.admin.nodes.get_nodes(os="maybe")
    assert err.value.nomad_resp.text.startswith("Failed to parse node list fields")


def test_nodes_filter_prefix_and_pagination(nomad_lab):
    admin = nomad_lab.admin
    assert [n["Name"] for n in admin.nodes.get_nodes(filter_=CILIUM_FILTER)] == ["node-1"]
    assert len(admin.nodes.get_nodes(filter_='Status == "ready"')) == 2
    assert [n["Name"] for n in admin.nodes.get_nodes(
        filter_='Meta.rack == "r1" and Attributes["unique.hostname"] matches "^node-"')] == ["node-1"]
    assert admin.nodes.get_nodes(filter_='Name == "nope"') == []          # [] never null
    assert len(admin.nodes.get_nodes(filter_='not (Status == down)')) == 2
    # bad expressions -> 400 text
    with pytest.raises(nexc.BadRequestNomadException) as err:
        admin.nodes.get_nodes(filter_="Status ===")
    assert err.value.nomad_resp.text.startswith("failed to create result paginator")
    with pytest.raises(nexc.BadRequestNomadException) as err:
        admin.nodes.get_nodes(filter_='NoSuchField == "x"')
    assert err.value.nomad_resp.text.startswith("failed to read result page")

    ids = sorted([nomad_lab.n1["ID"], nomad_lab.n2["ID"]])
    assert [n["ID"] for n in admin.nodes.get_nodes(prefix=ids[0][:8])] == [ids[0]]
    first = admin.nodes.request(method="get", params={"per_page": 1})
    assert [n["ID"] for n in first.json()] == [ids[0]]
    assert first.headers["X-Nomad-NextToken"] == ids[1]
    second = admin.nodes.request(method="get", params={"per_page": 1, "next_token": ids[1]})
    assert [n["ID"] for n in second.json()] == [ids[1]]
    assert "X-Nomad-NextToken" not in second.headers


def test_get_node_full_and_404(nomad_lab):
    node = nomad_lab.admin.node.get_node(nomad_lab.n1["ID"])
    attrs = node["Attributes"]
    assert attrs["plugins.cni.version.cilium-cni"] == "1.16.5"
    assert "plugins.cni.version.bridge" in attrs
    assert attrs["unique.hostname"] == "node-1" and attrs["nomad.version"] == "1.9.7"
    assert node["HTTPAddr"] == "192.168.50.11:4646"
    assert node["SecretID"] == "" and node["Drain"] is False
    assert isinstance(node["StatusUpdatedAt"], int) and abs(node["StatusUpdatedAt"] - time.time()) < 60
    assert node["Meta"]["rack"] == "r1"
    res = node["NodeResources"]
    assert "cni/cilium" in {n["Mode"] for n in res["Networks"]}
    assert "cni/cilium" in {n["Mode"] for n in res["NodeNetworks"]}
    assert node["Events"][0]["Message"] == "Node registered"
    assert RFC3339_RE.match(node["Events"][0]["Timestamp"])
    n2 = nomad_lab.admin.node.get_node(nomad_lab.n2["ID"])
    assert "plugins.cni.version.cilium-cni" not in n2["Attributes"]
    assert "cni/cilium" not in {n["Mode"] for n in n2["NodeResources"]["Networks"]}

    for bad in (nomad_lab.n1["ID"][:8], "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(nexc.URLNotFoundNomadException) as err:
            nomad_lab.admin.node.get_node(bad)
        assert err.value.nomad_resp.text == "node not found"
        assert "X-Nomad-Index" in err.value.nomad_resp.headers
    with pytest.raises(KeyError):
        nomad_lab.admin.node["00000000-0000-0000-0000-000000000000"]


# ---------------------------------------------------------------------------------------------
# allocations
# ---------------------------------------------------------------------------------------------

def test_node_allocations_full_objects_all_namespaces(nomad_lab):
    allocs = nomad_lab.admin.node.get_allocations(nomad_lab.n1["ID"])
    assert {a["Namespace"] for a in allocs} == {"default", "prod", "secret"}
    web = next(a for a in allocs if a["JobID"] == "web")
    assert web["Job"]["Meta"] == {"netreap.cilium/policy": "web"}
    assert web["Job"]["TaskGroups"][0]["Meta"] == {"tier": "front"}
    assert web["Job"]["TaskGroups"][0]["Tasks"][0]["Meta"] == {"role": "server"}
    assert web["Name"] == "web.frontend[0]"
    assert web["NetworkStatus"]["InterfaceName"] == "eth0"
    assert web["NetworkStatus"]["Address"].startswith("10.")
    assert web["AllocatedResources"]["Shared"]["Networks"][0]["Mode"] == "cni/cilium"
    api = next(a for a in allocs if a["JobID"] == "api")
    assert api["NetworkStatus"]["Address"] == "10.0.1.77"
    assert api["Job"]["TaskGroups"][0]["Meta"] is None            # unset meta is null
    assert nomad_lab.admin.node.get_allocations("00000000-0000-0000-0000-000000000000") == []


def test_allocations_list_stubs_and_namespaces(nomad_lab):
    admin = nomad_lab.admin
    default = admin.allocations.get_allocations()
    assert {a["JobID"] for a in default} == {"web", "node-exporter"}   # namespace defaults to default
    everything = admin.allocations.get_allocations(namespace="*")
    assert {a["Namespace"] for a in everything} == {"default", "prod", "secret"}
    assert [a["CreateIndex"] for a in everything] == sorted(a["CreateIndex"] for a in everything)
    for stub in everything:
        assert set(stub) == ALLOC_STUB_KEYS
        assert "Job" not in stub and "NetworkStatus" not in stub
        assert isinstance(stub["CreateTime"], int) and stub["CreateTime"] > 10 ** 18
        assert stub["JobType"] == "service"
    assert admin.allocations.get_allocations(namespace="prod")[0]["JobID"] == "api"
    no_states = admin.allocations.get_allocations(namespace="*", task_states=False)
    assert all(s["TaskStates"] is None for s in no_states)
    with_res = admin.allocations.get_allocations(resources=True)
    assert all("AllocatedResources" in s for s in with_res)
    web_id = nomad_lab.web["ID"]
    assert [s["ID"] for s in admin.allocations.get_allocations(prefix=web_id[:8])] == [web_id]
    # filters see the full struct (Job.Meta) even though stubs do not carry it
    assert [s["JobID"] for s in admin.allocations.get_allocations(
        namespace="*", filter_='Job.Meta.owner == "team-a"')] == ["api"]
    # pagination over <CreateIndex>.<ID> tokens
    page = admin.allocations.request(method="get", params={"namespace": "*", "per_page": 2})
    token = page.headers["X-Nomad-NextToken"]
    rest = admin.allocations.get_allocations(namespace="*", next_token=token)
    assert [a["ID"] for a in page.json() + rest] == [a["ID"] for a in everything]


def test_get_allocation_full_and_404(nomad_lab):
    alloc = nomad_lab.admin.allocation.get_allocation(nomad_lab.web["ID"])
    assert alloc["ID"] == nomad_lab.web["ID"] and alloc["NodeName"] == "node-1"
    assert alloc["Job"]["ID"] == "web" and alloc["Job"]["Meta"]["netreap.cilium/policy"] == "web"
    assert alloc["ClientStatus"] == "running" and alloc["DesiredStatus"] == "run"
    assert UUID_RE.match(alloc["EvalID"])
    assert isinstance(alloc["CreateTime"], int) and isinstance(alloc["ModifyTime"], int)
    assert alloc["CreateIndex"] <= alloc["ModifyIndex"]
    state = alloc["TaskStates"]["app"]
    assert state["State"] == "running" and RFC3339_RE.match(state["StartedAt"])
    assert state["FinishedAt"] is None
    assert isinstance(state["Events"][0]["Time"], int)
    # Allocation is omitempty on the wire: empty fields are absent
    assert "DesiredDescription" not in alloc and "PreviousAllocation" not in alloc
    # host networking: the client reports an empty NetworkStatus
    host = nomad_lab.admin.allocation.get_allocation(nomad_lab.hostnet["ID"])
    assert host["NetworkStatus"] == {"InterfaceName": "", "Address": "", "AddressIPv6": "",
                                     "DNS": None}
    assert host["Job"]["TaskGroups"][0]["Networks"] == [{"Mode": "host"}]

    with pytest.raises(nexc.URLNotFoundNomadException) as err:
        nomad_lab.admin.allocation.get_allocation("00000000-0000-0000-0000-000000000000")
    assert err.value.nomad_resp.text == "alloc not found"
    assert "00000000-0000-0000-0000-000000000000" not in nomad_lab.admin.allocation
    with pytest.raises(nexc.URLNotFoundNomadException) as err:
        nomad_lab.admin.allocation.request(nomad_lab.web["ID"], "a", "b", method="get")
    assert err.value.nomad_resp.text == "resource not found"


def test_pending_alloc_gets_network_status_when_running(nomad_lab):
    sim = nomad_lab.sim
    pending = sim.add_allocation(nomad_lab.n1["ID"], "late", client_status="pending")
    got = nomad_lab.admin.allocation.get_allocation(pending["ID"])
    assert "NetworkStatus" not in got and got["TaskStates"]["app"]["State"] == "pending"
    sim.update_allocation(pending["ID"], client_status="running")
    got = nomad_lab.admin.allocation.get_allocation(pending["ID"])
    assert got["NetworkStatus"]["Address"].startswith("10.0.")
    assert got["TaskStates"]["app"]["State"] == "running"
    sim.update_allocation(pending["ID"], client_status="complete", desired_status="stop")
    got = nomad_lab.admin.allocation.get_allocation(pending["ID"])
    assert got["TaskStates"]["app"]["State"] == "dead"
    assert RFC3339_RE.match(got["TaskStates"]["app"]["FinishedAt"])
    assert got["AllocModifyIndex"] == got["ModifyIndex"]


def test_stop_allocation(nomad_lab):
    out = nomad_lab.admin.allocation.stop_allocation(nomad_lab.web["ID"])
    assert UUID_RE.match(out["EvalID"]) and isinstance(out["Index"], int)
    got = nomad_lab.admin.allocation.get_allocation(nomad_lab.web["ID"])
    assert got["DesiredStatus"] == "stop"
    assert got["DesiredTransition"]["Migrate"] is True


# ---------------------------------------------------------------------------------------------
# ACLs
# ---------------------------------------------------------------------------------------------

def test_acl_denials_are_403_text(nomad_lab):
    with pytest.raises(nexc.URLNotAuthorizedNomadException) as err:
        nomad_client(nomad_lab.url, "no-node").nodes.get_nodes()
    assert err.value.nomad_resp.text == "Permission denied"
    with pytest.raises(nexc.URLNotAuthorizedNomadException) as err:
        nomad_client(nomad_lab.url, "no-node").agent.get_agent()
    assert err.value.nomad_resp.text == "Permission denied"
    with pytest.raises(nexc.URLNotAuthorizedNomadException) as err:
        nomad_client(nomad_lab.url, "00000000-dead-beef-0000-000000000000").nodes.get_nodes()
    assert err.value.nomad_resp.text == "ACL token not found"
    with pytest.raises(nexc.URLNotAuthorizedNomadException):
        nomad_client(nomad_lab.url).nodes.get_nodes()      # anonymous: no rights by default
    # Authorization: Bearer works as well as X-Nomad-Token
    anon = nomad_client(nomad_lab.url)
    resp = anon.nodes.request(method="get",
                              headers={"Authorization": "Bearer " + nomad_lab.sim.management_token})
    assert len(resp.json()) == 2


def test_namespace_scoped_token_filters_lists(nomad_lab):
    reader = nomad_client(nomad_lab.url, "prod-reader")
    assert [a["JobID"] for a in reader.allocations.get_allocations(namespace="*")] == ["api"]
    assert [a["JobID"] for a in reader.allocations.get_allocations(namespace="prod")] == ["api"]
    with pytest.raises(nexc.URLNotAuthorizedNomadException) as err:
        reader.allocations.get_allocations()               # namespace default: not readable
    assert err.value.nomad_resp.text == "Permission denied"
    assert [a["JobID"] for a in reader.node.get_allocations(nomad_lab.n1["ID"])] == ["api"]
    assert [ns["Name"] for ns in reader.namespaces.get_namespaces()] == ["prod"]
    assert reader.namespace.get_namespace("prod")["Description"] == "production"
    with pytest.raises(nexc.URLNotAuthorizedNomadException):
        reader.namespace.get_namespace("secret")
    # reading one alloc of an unreadable namespace: 500, docs/upstream.md#nomad-allocations
    with pytest.raises(nexc.BaseNomadException) as err:
        reader.allocation.get_allocation(nomad_lab.hidden["ID"])
    assert err.value.nomad_resp.status_code == 500
    assert err.value.nomad_resp.text == 'Unknown allocation "%s"' % nomad_lab.hidden["ID"]
    assert reader.allocation.get_allocation(nomad_lab.api["ID"])["Namespace"] == "prod"
    names = [ns["Name"] for ns in nomad_lab.admin.namespaces.get_namespaces()]
    assert names == ["default", "prod", "secret"]


# ---------------------------------------------------------------------------------------------
# node liveness
# ---------------------------------------------------------------------------------------------

def test_node_down_makes_allocs_lost(nomad_lab):
    sim, admin, n1 = nomad_lab.sim, nomad_lab.admin, nomad_lab.n1["ID"]
    before = admin.node.get_node(n1)
    sim.set_node_status(n1, "down", status_updated_at=1_700_000_000)
    node = admin.node.get_node(n1)
    assert node["Status"] == "down" and node["StatusUpdatedAt"] == 1_700_000_000
    assert node["ModifyIndex"] > before["ModifyIndex"]
    assert node["Events"][-1]["Message"] == "Node heartbeat missed"
    assert {n["Name"]: n["Status"] for n in admin.nodes.get_nodes()}["node-1"] == "down"
    for alloc in admin.node.get_allocations(n1):
        assert alloc["ClientStatus"] == "lost" and alloc["DesiredStatus"] == "stop"
        assert alloc["DesiredDescription"] == "alloc is lost since its node is down"
        assert alloc["AllocStates"][-1]["Value"] == "lost"
    stub = admin.allocations.get_allocations(prefix=nomad_lab.web["ID"][:8])[0]
    assert stub["ClientStatus"] == "lost"
    # untouched node keeps its allocs
    assert admin.allocation.get_allocation(nomad_lab.hostnet["ID"])["ClientStatus"] == "running"

    sim.remove_node(n1)                                     # node GC / purge
    with pytest.raises(nexc.URLNotFoundNomadException) as err:
        admin.node.get_node(n1)
    assert err.value.nomad_resp.text == "node not found"
    assert [n["Name"] for n in admin.nodes.get_nodes()] == ["node-2"]
    sim.remove_allocation(nomad_lab.web["ID"])              # alloc GC
    with pytest.raises(nexc.URLNotFoundNomadException):
        admin.allocation.get_allocation(nomad_lab.web["ID"])


def test_node_disconnect_and_reconnect(nomad_lab):
    sim, admin, n1 = nomad_lab.sim, nomad_lab.admin, nomad_lab.n1["ID"]
    sim.set_node_status(n1, "disconnected")
    allocs = admin.node.get_allocations(n1)
    assert {a["ClientStatus"] for a in allocs} == {"unknown"}
    assert {a["DesiredStatus"] for a in allocs} == {"run"}
    sim.set_node_status(n1, "ready")
    assert {a["ClientStatus"] for a in admin.node.get_allocations(n1)} == {"running"}
    assert admin.node.get_node(n1)["Events"][-1]["Message"] == "Node reregistered by heartbeat"


def test_purge_node_through_api(nomad_lab):
    out = nomad_lab.admin.node.purge_node(nomad_lab.n2["ID"])
    assert out["NodeModifyIndex"] == out["Index"]
    assert nomad_lab.n2["ID"] not in nomad_lab.admin.node


# ---------------------------------------------------------------------------------------------
# wire-level behaviour
# ---------------------------------------------------------------------------------------------

def test_errors_are_plain_text_not_json(nomad_lab):
    """Fails if the simulator answered errors as JSON (e.g. {"error": "..."})."""
    admin = nomad_lab.admin
    failures = []

    def nodes_with_unknown_token():
        return nomad_client(nomad_lab.url, "no-node").nodes.get_nodes()

    for call in (lambda: admin.node.get_node("nope"),
                 lambda: admin.allocation.get_allocation("nope"),
                 nodes_with_unknown_token,
                 lambda: admin.nodes.get_nodes(filter_="((("),
                 lambda: admin.nodes.request(method="post")):
        with pytest.raises(nexc.BaseNomadException) as err:
            call()
        failures.append(err.value.nomad_resp)
    for resp in failures:
        assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers
        assert resp.text and not resp.text.lstrip().startswith(("{", "[", '"'))
        with pytest.raises(ValueError):
            json.loads(resp.text)
    assert [r.status_code for r in failures] == [404, 404, 403, 400, 405]
    assert failures[-1].text == "Invalid method"
    # unknown route: 404 with an empty body
    with pytest.raises(nexc.URLNotFoundNomadException) as err:
        admin.nodes.request("bogus", method="get")
    assert err.value.nomad_resp.text == ""


def test_region_and_bool_params(nomad_lab):
    other = nomad_client(nomad_lab.url, nomad_lab.sim.management_token, region="eu-west")
    with pytest.raises(nexc.BaseNomadException) as err:
        other.nodes.get_nodes()
    assert err.value.nomad_resp.status_code == 500
    assert err.value.nomad_resp.text == "No path to region"
    same = nomad_client(nomad_lab.url, nomad_lab.sim.management_token, region="global")
    assert len(same.nodes.get_nodes()) == 2
    for raw in ("True", "true", "1", "t", "TRUE"):
        nodes = nomad_lab.admin.nodes.get_nodes(os=raw)
        assert "Attributes" in nodes[0], raw
    # ...but Nomad reads ?reverse with == "true", so python-nomad's reverse=True ("True") is a no-op
    forward = [a["ID"] for a in nomad_lab.admin.allocations.get_allocations(namespace="*")]
    assert [a["ID"] for a in nomad_lab.admin.allocations.get_allocations(
        namespace="*", reverse=True)] == forward
    assert [a["ID"] for a in nomad_lab.admin.allocations.get_allocations(
        namespace="*", reverse="true")] == forward[::-1]


def test_blocking_query(nomad_lab):
    admin, sim = nomad_lab.admin, nomad_lab.sim
    resp = admin.node.request(nomad_lab.n2["ID"], method="get")
    index = int(resp.headers["X-Nomad-Index"])

    def later():
        time.sleep(0.3)
        sim.set_node_status(nomad_lab.n2["ID"], "down")

    threading.Thread(target=later, daemon=True).start()
    start = time.monotonic()
    resp = admin.node.request(nomad_lab.n2["ID"], method="get",
                              params={"index": index, "wait": "4s"})
    assert 0.2 < time.monotonic() - start < 3.5
    assert resp.json()["Status"] == "down" and int(resp.headers["X-Nomad-Index"]) > index
    # nothing changes: returns after ~wait with the same index
    index = int(resp.headers["X-Nomad-Index"])
    start = time.monotonic()
    resp = admin.nodes.request(method="get", params={"index": index + 5, "wait": "300ms"})
    assert 0.25 < time.monotonic() - start < 2.0
    for params, text in (({"wait": "5 minutes"}, "Invalid wait time"),
                         ({"index": "-1"}, "Invalid index")):
        with pytest.raises(nexc.BadRequestNomadException) as err:
            admin.nodes.request(method="get", params=params)
        assert err.value.nomad_resp.text == text


def test_acls_disabled_ignores_tokens():
    sim = NomadSim()
    node = sim.add_node("solo")
    endpoint = httpd.serve_tcp(sim)
    try:
        client = nomad_client(endpoint.url, "garbage-token")
        assert client.nodes.get_nodes()[0]["ID"] == node["ID"]
        assert client.agent.get_agent()["config"]["ACL"]["Enabled"] is False
    finally:
        endpoint.stop()


# ---------------------------------------------------------------------------------------------
# helpers (no HTTP)
# ---------------------------------------------------------------------------------------------

def test_go_duration_and_filter_helpers():
    assert parse_go_duration("1h30m") == 5400 and parse_go_duration("250ms") == 0.25
    assert parse_go_duration("0") == 0
    for bad in ("", "5", "1d", "5 m"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    datum = {"Status": "ready", "Attributes": {"a": "1"}, "Drivers": {}, "CreateIndex": 7,
             "Tags": ["x", "y"]}
    assert compile_filter('Attributes["b"] is empty')(datum)
    assert not compile_filter('Attributes.b == "1"')(datum)
    assert compile_filter('CreateIndex == 7 and "x" in Tags')(datum)
    assert compile_filter('Status != "down" or Status == "down"')(datum)
    assert compile_filter('"/Attributes/a" == "1"')(datum)
