"""Fast checks of the node roles without a container (the systemd scenarios are extensions/molecule).

* every role's meta/argument_specs.yml mirrors its defaults/main.yml, and ansible-doc renders it;
* what a role sets for itself is named __<role>_..., and no variable defaults to another one;
* the roles render on this host under a temporary prefix (``*_manage`` switches off), and the
  units they write pass ``systemd-analyze verify`` in a --root with stub executables;
* the agent flags follow the Cilium version and the Hubble settings; tokens stay out of the unit and
  the output;
* preflight refuses overlapping pod ranges, Consul as kvstore on 1.17+, ranges inside Docker's
  address pools and Hubble settings the agent would not serve.

Needs the collection copy from scripts/setup.sh (ANSIBLE_COLLECTIONS_PATH=build/collections).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.support.roles import (ansible_env, default_doubles, local_hosts, make_verify_root, node_play, playbook,
                                 render_vars, role_public_names, role_set_names, unprefixed_internals)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = ["kernel_modules", "bpffs", "cni", "agent", "node"]
BIN = os.path.dirname(sys.executable)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def agent_play(variables):
    return [{"name": "Agent preflight", "hosts": "cilium_nodes", "gather_facts": False, "vars": variables,
             "roles": [{"role": "netreap.cilium.agent"}],
             "post_tasks": [{"name": "Show the range", "ansible.builtin.debug": {
                 "msg": "RANGE {{ inventory_hostname }} {{ __agent_ipv4_range }}"}}]}]


# --- specs and docs ------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_mirror_defaults(role):
    base = os.path.join(ROOT, "roles", role)
    with open(os.path.join(base, "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    with open(os.path.join(base, "meta", "argument_specs.yml")) as handle:
        options = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, value in defaults.items():
        assert options[name].get("default") == value, name
        # A role's own variables carry its prefix; facts shared with the other roles and the
        # playbooks (version, image, socket, cluster) carry the cilium_ prefix.
        assert name.startswith((role + "_", "cilium_")), name
        assert options[name].get("description"), name


@pytest.mark.parametrize("role", ROLES)
def test_ansible_doc_renders_role(role):
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "role", "netreap.cilium." + role],
                          capture_output=True, text=True, env=ansible_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(ROOT, "roles", role, "defaults", "main.yml")) as handle:
        for name in yaml.safe_load(handle):
            assert name in proc.stdout


# --- names --------------------------------------------------------------------------------------

ROLES_DIR = os.path.join(ROOT, "roles")
VOCABULARY = tuple(name + "_" for name in os.listdir(ROLES_DIR)) + ("cilium_", "netreap_")


def test_role_internals_carry_the_role_prefix():
    """What a role sets for itself (vars/main.yml, register, set_fact, task vars, loop_var) is
    __<role>_...: an inventory variable cannot collide with it, and the public names are exactly
    the documented ones."""
    public = role_public_names(ROLES_DIR)
    internals = [entry for entry in role_set_names(ROLES_DIR) if entry[3] not in public]
    assert {kind for _role, _file, kind, _name in internals} == {"register", "set_fact", "vars", "loop_var"}
    assert unprefixed_internals(ROLES_DIR) == []


def test_no_variable_defaults_to_another():
    """One name per thing: a role variable's default lives in defaults/main.yml (mirrored in
    meta/argument_specs.yml), never in a ``x | default(y)`` fallback to a second name."""
    assert default_doubles(ROLES_DIR, VOCABULARY) == []


def test_the_name_checks_find_what_they_look_for(tmp_path):
    role = tmp_path / "demo"
    for folder, content in {
        "defaults": {"demo_public": 1},
        "vars": {"demo_derived": 2, "__demo_fine": 3},
        "tasks": [
            {"name": "Stat", "ansible.builtin.stat": {"path": "/"}, "register": "stat_result"},
            {"name": "Block", "block": [{"name": "Fact", "ansible.builtin.set_fact": {
                "cacheable": True, "__demo_fact": 1, "half": 2}}],
             "rescue": [{"name": "Show", "ansible.builtin.debug": {"msg": "{{ demo_public | default(demo_other) }}"},
                         "vars": {"demo_public": 5, "_demo_single": 1}, "loop": [1],
                         "loop_control": {"loop_var": "demo_item"}}]},
            {"name": "Fine", "ansible.builtin.debug": {"msg": "{{ x | default(omit) }} {{ y | d(ansible_host, true) }}"}},
        ],
    }.items():
        (role / folder).mkdir(parents=True)
        (role / folder / "main.yml").write_text(yaml.safe_dump(content, sort_keys=False))
    assert unprefixed_internals(str(tmp_path)) == [
        "demo/tasks/main.yml: register stat_result should be __demo_...",
        "demo/tasks/main.yml: set_fact half should be __demo_...",
        "demo/tasks/main.yml: vars _demo_single should be __demo_...",
        "demo/tasks/main.yml: loop_var demo_item should be __demo_...",
        "demo/vars/main.yml: vars demo_derived should be __demo_...",
    ]
    doubles = default_doubles(str(tmp_path), ("demo_",))
    assert len(doubles) == 1 and doubles[0].startswith("demo/tasks/main.yml:") and "default(demo_other)" in doubles[0]


# --- rendering + systemd-analyze verify ----------------------------------------------------------

def systemd_verify(root, unit):
    proc = subprocess.run([SYSTEMD_ANALYZE, "--root=" + str(root), "verify", "/etc/systemd/system/" + unit],
                          capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def render(tmp_path, **overrides):
    root = tmp_path / "root"
    make_verify_root(root)
    (root / "controller").mkdir()
    (root / "controller/cilium-cni").write_text("#!/bin/sh\necho 'Cilium CNI plugin 1.19.0'\n")
    rc, out = playbook(tmp_path, node_play(render_vars(root, **overrides)), local_hosts("node1"))
    return root, rc, out


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_render_writes_units_that_systemd_verifies(tmp_path, runtime):
    extra = {"node_container_runtime": runtime, "node_container_runtime_bin": "/usr/bin/" + runtime,
             "agent_identity_labels": ["netreap:.*", "k8s:app$", "50%"]}
    if runtime == "docker":
        (tmp_path / "root/usr/lib/systemd/system").mkdir(parents=True)
        (tmp_path / "root/usr/lib/systemd/system/docker.service").write_text(
            "[Service]\nExecStart=/usr/bin/docker\n")
    root, rc, out = render(tmp_path, **extra)
    assert rc == 0, out
    for unit in ("cilium-agent.service", "cilium-bpffs.service"):
        code, messages = systemd_verify(root, unit)
        assert code == 0 and messages.strip() == "", messages
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    assert '"--labels=k8s:app$$"' in unit and '"--labels=50%%"' in unit
    assert ("Requires=docker.service" in unit) == (runtime == "docker")
    conflist = json.loads((root / "opt/cni/config/cilium.conflist").read_text())
    assert conflist["name"] == "cilium" and [p["type"] for p in conflist["plugins"]] == ["cilium-cni"]
    assert os.access(str(root / "opt/cni/bin/cilium-cni"), os.X_OK)
    modules = (root / "etc/modules-load.d/cilium.conf").read_text().split()
    assert "iptable_nat" in modules and "xt_socket" in modules
    # A missing stub makes the unit fail verification: the check is real.
    (root / "bin/mountpoint").unlink()
    (root / "bin/mount").unlink()
    (root / "bin/sh").unlink()
    assert systemd_verify(root, "cilium-bpffs.service")[0] != 0


LOCAL_CLUSTER = "--policy-default-local-cluster=false"


@pytest.mark.parametrize("version, expected, absent", [
    # --enable-k8s exists from 1.14, --policy-default-local-cluster from 1.18 (docs/upstream.md#cilium-agent-deployment)
    ("1.13.18", ["--tunnel=geneve"], ["--routing-mode=tunnel", "--enable-k8s=false", LOCAL_CLUSTER]),
    ("1.14.19", ["--routing-mode=tunnel", "--tunnel-protocol=geneve", "--enable-k8s=false"],
     ["--tunnel=geneve", LOCAL_CLUSTER]),
    ("1.17.10", ["--enable-k8s=false"], [LOCAL_CLUSTER]),
    ("1.18.4", ["--enable-k8s=false", LOCAL_CLUSTER], []),
    ("1.19.0", ["--routing-mode=tunnel", "--tunnel-protocol=geneve", "--enable-k8s=false", LOCAL_CLUSTER],
     ["--tunnel=geneve"]),
])
def test_agent_flags_follow_the_version(tmp_path, version, expected, absent):
    root, rc, out = render(tmp_path, cilium_version=version, agent_tunnel_protocol="geneve")
    assert rc == 0, out
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    for flag in expected:
        assert '"%s"' % flag in unit
    for flag in absent:
        assert '"%s"' % flag not in unit
    assert '"quay.io/cilium/cilium:v%s"' % version in unit


def test_local_cluster_default_can_be_overridden(tmp_path):
    root, rc, out = render(tmp_path, agent_policy_default_local_cluster=True)
    assert rc == 0, out
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    assert '"--policy-default-local-cluster=true"' in unit and LOCAL_CLUSTER not in unit


HUBBLE_TLS_FILES = {"agent_hubble_tls_cert_src": "server.crt", "agent_hubble_tls_key_src": "server.key",
                    "agent_hubble_tls_client_ca_src": "client-ca.crt"}


@pytest.mark.parametrize("version, variables, expected", [
    # The flag names are the same in 1.13 to 1.19; --enable-hubble and --hubble-disable-tls are always
    # explicit, their defaults changed in 1.17.0 and 1.18 (docs/upstream.md#cilium-agent-deployment).
    ("1.19.0", {}, ["--enable-hubble=false"]),
    ("1.17.10", {}, ["--enable-hubble=false"]),
    ("1.13.18", {"agent_enable_hubble": True}, ["--enable-hubble=true", "--hubble-disable-tls=true"]),
    ("1.19.0", {"agent_enable_hubble": True}, ["--enable-hubble=true", "--hubble-disable-tls=true"]),
    ("1.17.10", {"agent_enable_hubble": True, "agent_hubble_listen_address": ":4244",
                 "agent_hubble_disable_tls": True},
     ["--enable-hubble=true", "--hubble-listen-address=:4244", "--hubble-disable-tls=true"]),
    ("1.18.4", {"agent_enable_hubble": True, "agent_hubble_listen_address": "[::]:4244",
                "agent_hubble_tls_cert_src": "server.crt", "agent_hubble_tls_key_src": "server.key"},
     ["--enable-hubble=true", "--hubble-listen-address=[::]:4244", "--hubble-disable-tls=false",
      "--hubble-tls-cert-file={config}/hubble/server.crt", "--hubble-tls-key-file={config}/hubble/server.key"]),
    ("1.14.19", {"agent_enable_hubble": True, "agent_hubble_listen_address": "0.0.0.0:4244",
                 **HUBBLE_TLS_FILES},
     ["--enable-hubble=true", "--hubble-listen-address=0.0.0.0:4244", "--hubble-disable-tls=false",
      "--hubble-tls-cert-file={config}/hubble/server.crt", "--hubble-tls-key-file={config}/hubble/server.key",
      "--hubble-tls-client-ca-files={config}/hubble/client-ca.crt"]),
])
def test_hubble_flags_follow_the_settings(tmp_path, version, variables, expected):
    """Exactly the Hubble flags the settings ask for, and the TLS files next to the agent's
    configuration (mounted read-only into the container), the key readable by root only."""
    sources = tmp_path / "pki"
    sources.mkdir()
    variables = dict(variables)
    for name in HUBBLE_TLS_FILES:
        if name in variables:
            (sources / variables[name]).write_text("PEM of %s\n" % name)
            variables[name] = str(sources / variables[name])
    root, rc, out = render(tmp_path, cilium_version=version, **variables)
    assert rc == 0, out
    config = str(root / "etc/cilium")
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    flags = [word.strip('"') for word in unit.split() if word.startswith(('"--enable-hubble', '"--hubble-'))]
    assert flags == [flag.format(config=config) for flag in expected]
    assert '"--volume=%s:%s:ro"' % (config, config) in unit
    copied = sorted(p.name for p in (root / "etc/cilium/hubble").iterdir()) \
        if (root / "etc/cilium/hubble").exists() else []
    assert copied == sorted(HUBBLE_TLS_FILES[name] for name in HUBBLE_TLS_FILES if name in variables)
    for name in copied:
        assert (root / "etc/cilium/hubble" / name).read_text() == (sources / name).read_text()
    if "server.key" in copied:
        assert oct((root / "etc/cilium/hubble/server.key").stat().st_mode & 0o777) == "0o600"
    if SYSTEMD_ANALYZE is not None:
        code, messages = systemd_verify(root, "cilium-agent.service")
        assert code == 0 and messages.strip() == "", messages


def test_unit_orders_nomad_after_the_socket_and_shares_lock_and_modules(tmp_path):
    """cilium-cni waits only 30 s for the agent, so Nomad starts after the agent's socket exists;
    the iptables lock and the kernel modules of the host are mounted into the container."""
    root, rc, out = render(tmp_path)
    assert rc == 0, out
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    assert "\nBefore=nomad.service\n" in unit
    assert 'ExecStartPre=/usr/bin/touch "/run/xtables.lock"' in unit
    start_post = [line for line in unit.splitlines() if line.startswith("ExecStartPost=")]
    assert len(start_post) == 1 and "/var/run/cilium/cilium.sock" in start_post[0] and "seq 120" in start_post[0]
    assert '"--volume=/run/xtables.lock:/run/xtables.lock"' in unit
    assert '"--volume=/lib/modules:/lib/modules:ro"' in unit
    # switched off here, so no host group file is mounted (the Molecule node scenario covers the group)
    assert "/etc/group" not in unit
    (tmp_path / "no-wait").mkdir()
    root, rc, out = render(tmp_path / "no-wait", agent_unit_before=[], agent_socket_wait_sec=0)
    assert rc == 0, out
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    assert "Before=" not in unit and "ExecStartPost=" not in unit


def test_node_name_turns_the_kubernetes_client_off_from_1_14(tmp_path):
    root, rc, out = render(tmp_path, cilium_version="1.14.19", agent_node_name="nomad-client-7")
    assert rc == 0, out
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    assert "K8S_NODE_NAME=nomad-client-7" in (root / "etc/cilium/cilium-agent.env").read_text()
    assert '"--enable-k8s=false"' in unit


@pytest.mark.parametrize("variables", [{"agent_node_name": "nomad-client-7"},
                                       {"agent_environment": {"K8S_NODE_NAME": "nomad-client-7"}}])
def test_preflight_refuses_a_node_name_on_1_13(tmp_path, variables):
    rc, out = playbook(tmp_path, agent_play(render_vars(tmp_path, cilium_version="1.13.18", **variables)),
                       local_hosts("node1"), "--check")
    assert rc != 0
    assert "agent_node_name (K8S_NODE_NAME) needs Cilium 1.14 or newer" in out


def test_cilium_cni_comes_from_the_agent_image(tmp_path):
    """A private registry is set once (cilium_image): the agent runs that image and cilium-cni
    is copied out of the same image."""
    calls = tmp_path / "runtime-calls.log"
    runtime = tmp_path / "runtime"
    runtime.write_text("#!/bin/sh\necho \"$@\" >> %s\n"
                       "if [ \"$1\" = cp ]; then printf '#!/bin/sh\\necho 1.19.0\\n' > \"$3\"; fi\n" % calls)
    runtime.chmod(0o755)
    root, rc, out = render(tmp_path, cilium_image="registry.example.com/mirror/cilium",
                           node_container_runtime_bin=str(runtime), cni_cilium_cni_source="image")
    assert rc == 0, out
    created = [line for line in calls.read_text().splitlines() if line.startswith("create ")]
    assert created and created[0].endswith(" registry.example.com/mirror/cilium:v1.19.0"), calls.read_text()
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    assert '"registry.example.com/mirror/cilium:v1.19.0"' in unit


def test_consul_token_stays_in_the_env_file(tmp_path):
    root, rc, out = render(tmp_path, cilium_version="1.16.5", agent_kvstore="consul",
                           agent_consul_token="tok-3f9c-secret", agent_consul_address="10.0.0.5:8500")
    assert rc == 0, out
    unit = (root / "etc/systemd/system/cilium-agent.service").read_text()
    env_file = root / "etc/cilium/cilium-agent.env"
    assert '"--kvstore=consul"' in unit and '"--kvstore-opt=consul.address=10.0.0.5:8500"' in unit
    assert "tok-3f9c-secret" not in unit and "tok-3f9c-secret" not in out
    assert "CONSUL_HTTP_TOKEN=tok-3f9c-secret" in env_file.read_text()
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"


def test_check_mode_writes_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "controller").mkdir()
    (root / "controller/cilium-cni").write_text("#!/bin/sh\n")
    rc, out = playbook(tmp_path, node_play(render_vars(root)), local_hosts("node1"), "--check")
    assert rc == 0, out
    assert sorted(p.name for p in root.iterdir()) == ["controller"]


# --- preflight failures --------------------------------------------------------------------------

def test_preflight_refuses_overlapping_ranges(tmp_path):
    inventory = local_hosts("node1", "node2", "node3", node1={"agent_ipv4_range": "10.200.0.0/24"},
                            node2={"agent_ipv4_range": "10.200.0.0/23"},
                            node3={"agent_ipv4_range": "10.200.8.0/24"})
    rc, out = playbook(tmp_path, agent_play(render_vars(tmp_path)), inventory, "--check")
    assert rc != 0
    assert "node1: --ipv4-range 10.200.0.0/24 overlaps the range of node2 (10.200.0.0/23)" in out
    assert "node2: --ipv4-range 10.200.0.0/23 overlaps the range of node1 (10.200.0.0/24)" in out
    assert "RANGE node3 10.200.8.0/24" in out  # the node with a range of its own carries on


def test_plan_gives_each_node_its_own_range(tmp_path):
    inventory = local_hosts("node-b", "node-a", "node-c", **{"node-c": {"agent_ipv4_node_index": 9}})
    variables = render_vars(tmp_path, agent_ipv4_cluster_cidr="10.210.0.0/16", agent_ipv4_node_prefix=25)
    rc, out = playbook(tmp_path, agent_play(variables), inventory, "--check")
    assert rc == 0, out
    assert "RANGE node-a 10.210.0.0/25" in out
    assert "RANGE node-b 10.210.0.128/25" in out
    assert "RANGE node-c 10.210.4.128/25" in out


def test_preflight_refuses_a_plan_without_room_for_the_node(tmp_path):
    """netreap.cilium.ipv4_subnet's message reaches the user: which range, how many nodes it fits."""
    inventory = local_hosts("node-a", "node-b", **{"node-b": {"agent_ipv4_node_index": 2}})
    variables = render_vars(tmp_path, agent_ipv4_cluster_cidr="10.200.0.0/24", agent_ipv4_node_prefix=25)
    rc, out = playbook(tmp_path, agent_play(variables), inventory, "--check")
    assert rc != 0
    assert "index 2 is outside 10.200.0.0/24, which has room for 2 /25 subnets (index 0 to 1)" in out
    assert "RANGE node-a 10.200.0.0/25" in out


def test_preflight_refuses_consul_on_1_17(tmp_path):
    variables = render_vars(tmp_path, cilium_version="1.17.3", agent_kvstore="consul")
    rc, out = playbook(tmp_path, agent_play(variables), local_hosts("node1"), "--check")
    assert rc != 0
    assert "Cilium 1.17.3 cannot use Consul as kvstore (support was removed in 1.17)" in out


def test_preflight_refuses_docker_pool_overlap(tmp_path):
    daemon = tmp_path / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    daemon.write_text(json.dumps({"default-address-pools": [{"base": "10.200.0.0/16", "size": 24}]}))
    rc, out = playbook(tmp_path, agent_play(render_vars(tmp_path)), local_hosts("node1"), "--check")
    assert rc != 0
    assert "node1: --ipv4-range 10.200.0.0/24 overlaps 10.200.0.0/16" in out
    assert str(daemon) in out


def test_preflight_refuses_docker_builtin_pools(tmp_path):
    variables = render_vars(tmp_path, agent_ipv4_range="172.18.5.0/24")
    rc, out = playbook(tmp_path, agent_play(variables), local_hosts("node1"), "--check")
    assert rc != 0
    assert "overlaps 172.18.0.0/16" in out and "Docker's built-in defaults" in out


def test_preflight_refuses_a_range_with_host_bits(tmp_path):
    variables = render_vars(tmp_path, agent_ipv4_range="10.200.0.1/24")
    rc, out = playbook(tmp_path, agent_play(variables), local_hosts("node1"), "--check")
    assert rc != 0
    assert "10.200.0.1/24 has host bits set (the network is 10.200.0.0/24)" in out


@pytest.mark.parametrize("variables, message", [
    ({"agent_hubble_listen_address": ":4244"},
     "agent_hubble_listen_address :4244 needs agent_enable_hubble=true."),
    ({"agent_enable_hubble": True, "agent_hubble_listen_address": "4244", "agent_hubble_disable_tls": True},
     "agent_hubble_listen_address 4244 is not host:port with a port from 1 to 65535"),
    ({"agent_enable_hubble": True, "agent_hubble_listen_address": ":65536", "agent_hubble_disable_tls": True},
     "agent_hubble_listen_address :65536 is not host:port with a port from 1 to 65535"),
    ({"agent_enable_hubble": True, "agent_hubble_listen_address": "::4244", "agent_hubble_disable_tls": True},
     "agent_hubble_listen_address ::4244 is not host:port"),
    ({"agent_enable_hubble": True, "agent_hubble_listen_address": ":4244"},
     "agent_hubble_listen_address :4244 is served with TLS and needs agent_hubble_tls_cert_src and"),
    ({"agent_enable_hubble": True, "agent_hubble_listen_address": ":4244", "agent_hubble_tls_cert_src": "/pki/a.crt"},
     "agent_hubble_listen_address :4244 is served with TLS and needs agent_hubble_tls_cert_src and"),
    ({"agent_enable_hubble": True, "agent_hubble_listen_address": ":4244", "agent_hubble_disable_tls": True,
      "agent_hubble_tls_cert_src": "/pki/a.crt", "agent_hubble_tls_key_src": "/pki/a.key"},
     "apply only to a Hubble listen address with TLS, and agent_hubble_disable_tls is true"),
    ({"agent_enable_hubble": True, "agent_hubble_tls_client_ca_src": "/pki/ca.crt"},
     "apply only to a Hubble listen address with TLS, and agent_hubble_listen_address is empty"),
])
def test_preflight_refuses_bad_hubble_settings(tmp_path, variables, message):
    rc, out = playbook(tmp_path, agent_play(render_vars(tmp_path, **variables)), local_hosts("node1"), "--check")
    assert rc != 0
    assert message in " ".join(out.split()), out
