"""The netreap.cilium.nomad inventory plugin, run by the real ansible-inventory against the lab's
Nomad simulator: which nodes become hosts, their groups and variables, token precedence,
caching, and the message users get when Nomad refuses."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import ansible_collections.netreap.cilium as collection_package
from ansible_collections.netreap.cilium.plugins.inventory.nomad import (
    InventoryModule,
    build_filter,
    pick_one_per_name,
)
from tests.lab import httpd
from tests.lab.nomad import NomadSim, compile_filter

# .../ansible_collections/netreap/cilium -> the directory holding ansible_collections/
COLLECTIONS_PATH = os.path.dirname(os.path.dirname(os.path.dirname(list(collection_package.__path__)[0])))
BIN = os.path.dirname(sys.executable)
CILIUM_ATTR = "plugins.cni.version.cilium-cni"


def tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


class Cluster:
    """A NomadSim behind a TCP listener, with the nodes most tests need."""

    def __init__(self, acl=False):
        self.sim = NomadSim(acl_enabled=acl)
        self.endpoint = httpd.serve_tcp(self.sim)
        self.url = self.endpoint.url

    def add(self, name, **kwargs):
        status = kwargs.pop("status", "ready")
        node = self.sim.add_node(name, **kwargs)
        if status != "ready":
            self.sim.set_node_status(node["ID"], status)
        return node["ID"]

    def requests(self, path=None):
        return self.sim.log.entries(service="nomad", path=path)


@pytest.fixture
def cluster():
    made = []

    def make(acl=False):
        made.append(Cluster(acl))
        return made[-1]

    yield make
    for item in made:
        item.endpoint.stop()


@pytest.fixture
def mixed(cluster):
    """a: Cilium, dc1, class web; b: Cilium, dc2; plain: no cilium-cni; gone: Cilium but down."""
    c = cluster()
    c.ids = {
        "a": c.add("node-a", address="10.0.0.1", node_class="web"),
        "b": c.add("node-b", address="10.0.0.2", datacenter="dc2", attributes={CILIUM_ATTR: "1.19.1"}),
        "plain": c.add("plain", address="10.0.0.3", attributes={CILIUM_ATTR: None}),
        "gone": c.add("gone", address="10.0.0.4", status="down"),
    }
    return c


def _plain(value):
    """ansible-inventory 2.19 --list wraps untrusted strings as {"__ansible_unsafe": ...}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_", "ANSIBLE_"))}
    env.update(ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_INVENTORY_UNPARSED_FAILED="1",
               ANSIBLE_NOCOLOR="1")
    env.update(extra)
    return env


class Inventory:
    def __init__(self, proc):
        self.proc = proc
        self.data = _plain(json.loads(proc.stdout)) if proc.returncode == 0 else {}

    @property
    def hostvars(self):
        return self.data.get("_meta", {}).get("hostvars", {})

    @property
    def hosts(self):
        return sorted(self.hostvars)

    def group(self, name):
        return sorted(self.data.get(name, {}).get("hosts", []))

    @property
    def groups(self):
        return {k for k in self.data if k not in ("_meta", "all", "ungrouped")}


def inventory(tmp_path, config, env=None, args=(), name="cluster.nomad.yml", expect_ok=True):
    source = tmp_path / name
    # JSON is YAML; templates in values stay strings for the plugin to render.
    source.write_text(json.dumps(dict({"plugin": "netreap.cilium.nomad"}, **config)))
    proc = subprocess.run([tool("ansible-inventory"), "-i", str(source), "--list"] + list(args),
                          capture_output=True, text=True, env=clean_env(**(env or {})), timeout=120,
                          check=False)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert proc.returncode != 0, proc.stdout[-2000:]
    return Inventory(proc)


# -- pure helpers --------------------------------------------------------------------------------

def test_filter_expressions_are_valid_bexpr_and_quote_values():
    expr = build_filter(True, ["ready", "disconnected"], ["eu1"], ["default"], 'Meta["x"] != "y"')
    assert expr == ('Attributes["plugins.cni.version.cilium-cni"] is not empty and '
                    '(Status == "ready" or Status == "disconnected") and (Datacenter == "eu1") and '
                    '(NodePool == "default") and (Meta["x"] != "y")')
    compile_filter(expr)  # the lab's go-bexpr parser accepts it
    # go-bexpr string literals take Go escapes (the lab's parser does not model them)
    assert build_filter(False, [], ['a"b\\c'], [], None) == '(Datacenter == "a\\"b\\\\c")'
    assert build_filter(False, [], [], [], None) is None


def test_one_host_per_name_prefers_ready_then_newest():
    rec = [{"name": "n", "status": "down", "create_index": 9, "id": "old-down"},
           {"name": "n", "status": "ready", "create_index": 5, "id": "ready"},
           {"name": "n", "status": "ready", "create_index": 7, "id": "ready-newer"},
           {"name": "m", "status": "down", "create_index": 1, "id": "m"}]
    kept, dropped = pick_one_per_name(rec)
    assert [r["id"] for r in kept] == ["m", "ready-newer"]
    assert sorted(r["id"] for r in dropped) == ["old-down", "ready"]


def test_verify_file_wants_a_nomad_yml_name(tmp_path):
    plugin = InventoryModule()
    for name, expected in (("c.nomad.yml", True), ("nomad.yaml", True), ("hosts.yml", False),
                           ("c.nomad.yml.bak", False)):
        path = tmp_path / name
        path.write_text("plugin: netreap.cilium.nomad\n")
        assert plugin.verify_file(str(path)) is expected, name
    assert plugin.verify_file(str(tmp_path / "missing.nomad.yml")) is False


# -- against the simulator -----------------------------------------------------------------------

def test_default_is_ready_cilium_nodes_in_one_request(tmp_path, mixed):
    inv = inventory(tmp_path, {"nomad_address": mixed.url})
    assert inv.hosts == ["node-a", "node-b"]
    requests = mixed.requests()
    assert len(requests) == 1 and requests[0]["path"] == "/v1/nodes"
    assert "cilium-cni" in requests[0]["query"] and "ready" in requests[0]["query"]
    assert inv.group("cilium_nodes") == ["node-a", "node-b"]
    assert inv.group("nomad_dc_dc1") == ["node-a"] and inv.group("nomad_dc_dc2") == ["node-b"]
    assert inv.group("nomad_class_web") == ["node-a"]
    assert inv.group("nomad_status_ready") == ["node-a", "node-b"]
    assert inv.group("nomad_pool_default") == ["node-a", "node-b"]
    assert "nomad_status_down" not in inv.groups and "nomad_without_cilium" not in inv.groups
    a = inv.hostvars["node-a"]
    assert a["ansible_host"] == "10.0.0.1" and a["nomad_node_address"] == "10.0.0.1"
    assert a["nomad_node_id"] == mixed.ids["a"] and a["nomad_node_name"] == "node-a"
    assert (a["nomad_datacenter"], a["nomad_node_class"], a["nomad_node_status"]) == ("dc1", "web", "ready")
    assert a["nomad_cilium_cni"] is True and a["nomad_node_drain"] is False
    assert a["nomad_version"] == mixed.sim.version
    assert "nomad_cilium_cni_version" not in a  # needs node_details (one request per node)


def test_statuses_option_adds_down_nodes(tmp_path, mixed):
    inv = inventory(tmp_path, {"nomad_address": mixed.url, "statuses": ["ready", "down"]})
    assert inv.hosts == ["gone", "node-a", "node-b"]
    assert inv.group("nomad_status_down") == ["gone"]
    assert inv.hostvars["gone"]["nomad_node_status"] == "down"
    every = inventory(tmp_path, {"nomad_address": mixed.url, "statuses": []})
    assert every.hosts == ["gone", "node-a", "node-b"]


def test_without_cilium_filter_marks_nodes_lacking_the_fingerprint(tmp_path, mixed):
    inv = inventory(tmp_path, {"nomad_address": mixed.url, "cilium_only": False})
    assert inv.hosts == ["node-a", "node-b", "plain"]
    assert inv.group("cilium_nodes") == ["node-a", "node-b"]
    assert inv.group("nomad_without_cilium") == ["plain"]
    assert inv.hostvars["plain"]["nomad_cilium_cni"] is False
    assert len(mixed.requests()) == 2  # the selection, and the same selection with the fingerprint


def test_node_details_add_the_cilium_cni_version(tmp_path, mixed):
    inv = inventory(tmp_path, {"nomad_address": mixed.url, "node_details": True, "cilium_only": False})
    b = inv.hostvars["node-b"]
    assert b["nomad_cilium_cni_version"] == "1.19.1" and b["nomad_cilium_cni"] is True
    assert b["nomad_node_http_addr"] == "10.0.0.2:4646"
    assert b["nomad_node_attributes"][CILIUM_ATTR] == "1.19.1"
    assert "connect.log_level" in b["nomad_node_meta"]
    assert inv.hostvars["plain"]["nomad_cilium_cni_version"] is None
    assert inv.group("nomad_without_cilium") == ["plain"]
    assert len(mixed.requests("^/v1/nodes$")) == 1
    assert len(mixed.requests("^/v1/node/")) == 3


def test_datacenter_and_custom_filter_select_nodes(tmp_path, cluster):
    c = cluster()
    c.add("keep", datacenter="eu1")
    c.add("skip", datacenter="eu1", meta={"netreap": "skip"})
    c.add("elsewhere", datacenter="us1")
    inv = inventory(tmp_path, {"nomad_address": c.url, "datacenters": ["eu1"],
                               "filter": 'Meta["netreap"] != "skip"'})
    assert inv.hosts == ["keep"]
    assert len(c.requests()) == 1


def test_group_names_are_prefixed_and_sanitised(tmp_path, cluster):
    c = cluster()
    c.add("n1", datacenter="eu-west.1", node_class="gpu-large")
    inv = inventory(tmp_path, {"nomad_address": c.url, "group_prefix": "nx_", "cilium_group": ""})
    assert inv.groups == {"nx_dc_eu_west_1", "nx_class_gpu_large", "nx_status_ready", "nx_pool_default"}


def test_constructed_options_compose_and_group(tmp_path, mixed):
    inv = inventory(tmp_path, {
        "nomad_address": mixed.url,
        "compose": {"ansible_user": "'core' if nomad_node_class == 'web' else 'netreap'",
                    "ansible_host": "nomad_node_name ~ '.nodes.example'"},
        "groups": {"web_tier": "nomad_node_class == 'web'"},
        "keyed_groups": [{"key": "nomad_datacenter", "prefix": "site"}],
    })
    assert inv.hostvars["node-a"]["ansible_user"] == "core"
    assert inv.hostvars["node-b"]["ansible_user"] == "netreap"
    assert inv.hostvars["node-b"]["ansible_host"] == "node-b.nodes.example"  # compose wins
    assert inv.group("web_tier") == ["node-a"]
    assert inv.group("site_dc2") == ["node-b"]


def test_duplicate_node_names_keep_the_live_node_and_warn(tmp_path, cluster):
    c = cluster()
    old = c.add("twin", address="10.0.0.8")
    c.sim.set_node_status(old, "down")
    new = c.add("twin", address="10.0.0.9")
    inv = inventory(tmp_path, {"nomad_address": c.url, "statuses": []})
    assert inv.hosts == ["twin"]
    assert inv.hostvars["twin"]["nomad_node_id"] == new
    assert inv.hostvars["twin"]["ansible_host"] == "10.0.0.9"
    assert "several nodes named twin; skipping node %s (status down)" % old in inv.proc.stderr


def test_token_option_wins_over_environment(tmp_path, cluster):
    c = cluster(acl=True)
    c.add("n1")
    good = c.sim.add_token("good-0000-token", node="read")
    bad = "bad-1111-token"
    ok = inventory(tmp_path, {"nomad_address": c.url, "nomad_token": good}, env={"NOMAD_TOKEN": bad})
    assert ok.hosts == ["n1"]
    refused = inventory(tmp_path, {"nomad_address": c.url, "nomad_token": bad}, env={"NOMAD_TOKEN": good},
                        expect_ok=False)
    assert "HTTP 403: ACL token not found" in refused.proc.stderr
    from_env = inventory(tmp_path, {"nomad_address": c.url}, env={"NOMAD_TOKEN": good})
    assert from_env.hosts == ["n1"]
    anonymous = inventory(tmp_path, {"nomad_address": c.url}, expect_ok=False)
    assert "HTTP 403: Permission denied" in anonymous.proc.stderr
    # a token with node:read (the plugin's whole documented need) works; one without says what is missing
    agent_only = c.sim.add_token("agent-3333-token", node=None, agent="read")
    lacking = inventory(tmp_path, {"nomad_address": c.url, "nomad_token": agent_only}, expect_ok=False,
                        env={"ANSIBLE_DISPLAY_TRACEBACK": "never", "COLUMNS": "1000"}, args=["-vvv"])
    assert "the Nomad token lacks node:read" in lacking.proc.stderr
    assert agent_only not in lacking.proc.stdout + lacking.proc.stderr
    for run in (ok, refused, from_env, anonymous):
        assert good not in run.proc.stdout + run.proc.stderr
        assert bad not in run.proc.stdout + run.proc.stderr


def test_address_and_token_from_environment_and_token_template(tmp_path, cluster):
    c = cluster(acl=True)
    c.add("n1")
    good = c.sim.add_token("tmpl-2222-token", node="read")
    inv = inventory(tmp_path, {"nomad_token": "{{ lookup('ansible.builtin.env', 'MY_NOMAD_SECRET') }}"},
                    env={"NOMAD_ADDR": c.url, "MY_NOMAD_SECRET": good})
    assert inv.hosts == ["n1"]
    # What an AWX credential injects for the inputs it leaves empty: ignored, not an error.
    awx = inventory(tmp_path, {}, env={"NOMAD_ADDR": c.url, "NOMAD_TOKEN": good, "NOMAD_CACERT": "",
                                       "NOMAD_REGION": "", "NOMAD_TLS_SERVER_NAME": ""})
    assert awx.hosts == ["n1"]
    assert "region=" not in c.requests()[-1]["query"]


def test_cache_serves_the_second_run_without_nomad(tmp_path, mixed):
    cache_dir = tmp_path / "cache"
    config = {"nomad_address": mixed.url, "nomad_token": "not-checked-without-acl", "cache": True,
              "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(cache_dir)}
    first = inventory(tmp_path, config)
    assert first.hosts == ["node-a", "node-b"] and len(mixed.requests()) == 1
    mixed.add("node-new")
    second = inventory(tmp_path, config)
    assert second.hosts == ["node-a", "node-b"]  # from the cache: Nomad was not asked
    assert len(mixed.requests()) == 1
    cached = "".join(p.read_text() for p in cache_dir.iterdir())
    assert "node-a" in cached and "not-checked-without-acl" not in cached
    flushed = inventory(tmp_path, config, args=["--flush-cache"])
    assert flushed.hosts == ["node-a", "node-b", "node-new"] and len(mixed.requests()) == 2
    changed = inventory(tmp_path, dict(config, statuses=["ready", "down"]))
    assert "gone" in changed.hosts and len(mixed.requests()) == 3  # other selection: not from the cache


def test_nomad_error_names_nomad_url_status_and_body(tmp_path, mixed):
    mixed.sim.faults.add(httpd.Fault(action="status", status=500, body="rpc error: No cluster leader",
                                     path="^/v1/nodes"))
    failed = inventory(tmp_path, {"nomad_address": mixed.url}, expect_ok=False)
    assert ("netreap.cilium.nomad: cannot list the Nomad client nodes: Nomad GET %s/v1/nodes?" % mixed.url
            in failed.proc.stderr)
    assert 'filter=Attributes["plugins.cni.version.cilium-cni"] is not empty' in failed.proc.stderr
    assert "-> HTTP 500: rpc error: No cluster leader" in failed.proc.stderr
    assert "Traceback" not in failed.proc.stderr


def test_bad_address_is_a_clear_error(tmp_path):
    failed = inventory(tmp_path, {"nomad_address": "ftp://nomad:4646"}, expect_ok=False)
    assert "netreap.cilium.nomad: invalid Nomad connection settings: unsupported scheme 'ftp'" in failed.proc.stderr


def test_other_file_names_are_left_to_other_plugins(tmp_path, mixed):
    source = tmp_path / "hosts.yml"
    source.write_text(json.dumps({"plugin": "netreap.cilium.nomad", "nomad_address": mixed.url}))
    env = clean_env(ANSIBLE_INVENTORY_ENABLED="netreap.cilium.nomad", ANSIBLE_INVENTORY_UNPARSED_FAILED="0")
    proc = subprocess.run([tool("ansible-inventory"), "-i", str(source), "--list"], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert _plain(json.loads(proc.stdout))["_meta"]["hostvars"] == {}
    assert mixed.requests() == []


def test_ansible_doc_renders_the_plugin():
    proc = subprocess.run([tool("ansible-doc"), "-t", "inventory", "netreap.cilium.nomad"], capture_output=True,
                          text=True, env=clean_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for word in ("NOMAD_TOKEN", "NOMAD_ADDR", "cilium_only", "node_details", "keyed_groups", "cache_plugin"):
        assert word in proc.stdout
