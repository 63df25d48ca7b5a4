"""Secrets hygiene: tokens never show up in Ansible's output, results, diffs or written files.

* every module, in a playbook at -vvv with --diff, against a lab whose Consul and Nomad require
  ACL tokens, with the tokens given as module options (from an extra-vars file) and as
  environment variables (CONSUL_HTTP_TOKEN, NOMAD_TOKEN);
* playbooks/reap.yml the same two ways;
* the agent and reaper roles converged on this host under a temporary prefix: the token is only
  in the 0600 environment file meant to hold it.

The runs must succeed (the lab refuses requests without the token), so the tokens were used.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from tests.lab.lab import Lab
from tests.support.playbook import FAST_GC_VARS
from tests.support import roles as role_helpers

BIN = os.path.dirname(sys.executable)


def sec_env(lab=None, tokens_in_env=False, **extra):
    env = role_helpers.ansible_env(ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_HOST_KEY_CHECKING="false",
                                   ANSIBLE_STDOUT_CALLBACK="default")
    for name in ("CONSUL_HTTP_TOKEN", "NOMAD_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "ETCDCTL_PASSWORD"):
        env.pop(name, None)
    if lab is not None:
        env.update(lab.env())
        if not tokens_in_env:
            env.pop("CONSUL_HTTP_TOKEN")
            env.pop("NOMAD_TOKEN")
    env.update(extra)
    return env


def sec_playbook(work, book, inventory, env, *args):
    """ansible-playbook -vvv --diff; returns (rc, stdout + stderr)."""
    cmd = [os.path.join(BIN, "ansible-playbook"), "-vvv", "--diff", "-i", inventory, book] + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(work), timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def sec_leaks(text, secrets):
    return [s for s in secrets if s and s in text]


@pytest.fixture
def sec_lab():
    """A fresh drifted cluster per test (each run has the same work to do)."""
    state_dir = tempfile.mkdtemp(prefix="sec-", dir="/tmp")
    lab = Lab(state_dir, nodes=1, cilium="1.16", kvstore="consul", scenario="drift", acl=True).start()
    yield lab
    lab.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


def sec_tokens(lab):
    tokens = [lab.tokens["consul"], lab.tokens["nomad"]]
    assert all(len(t) >= 16 for t in tokens)
    return tokens


def sec_module_play(lab, results_file, token_options):
    """Every module once (plus a failing call), each registered; the results saved to a file."""
    node = lab.nodes[0]
    consul = {"consul_address": lab.consul_endpoint.url}
    nomad = {}
    if token_options:
        consul["consul_token"] = "{{ sec_consul_token }}"
        nomad["nomad_token"] = "{{ sec_nomad_token }}"
    kv = dict(consul, kvstore="consul")
    rules = [{"labels": ["unspec:name=sec-web"], "endpointSelector": {"matchLabels": {"app": "web"}},
              "ingress": [{"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]
    tasks = [
        {"name": "agent info", "netreap.cilium.cilium_agent_info": {"cilium_socket": node.socket_path},
         "register": "sec_info"},
        {"name": "heartbeat", "netreap.cilium.cilium_kvstore_heartbeat": kv, "register": "sec_heartbeat"},
        {"name": "publish", "netreap.cilium.cilium_policy": dict(consul, rules=rules, publish=True, apply=False,
                                                                 consul_key="sec/policy"),
         "register": "sec_publish"},
        {"name": "apply", "netreap.cilium.cilium_policy": dict(consul, from_consul=True, consul_key="sec/policy",
                                                               cilium_socket=node.socket_path),
         "register": "sec_apply"},
        {"name": "endpoints", "netreap.cilium.cilium_endpoint": dict(nomad, cilium_socket=node.socket_path,
                                                                     nomad_address=node.nomad_address),
         "register": "sec_endpoints"},
        {"name": "node gc", "netreap.cilium.cilium_node_gc": dict(kv, **nomad, nomad_address=lab.nomad_endpoint.url,
                                                                  min_age=0),
         "register": "sec_node_gc"},
        {"name": "identity gc", "netreap.cilium.cilium_identity_gc": dict(kv, min_age=0),
         "register": "sec_identity_gc"},
        {"name": "a failing call",
         "netreap.cilium.cilium_node_gc": dict(kv, **nomad, nomad_address="http://127.0.0.1:9", nomad_timeout=2),
         "register": "sec_failing", "ignore_errors": True},
        {"name": "save the registered results", "diff": False,
         "ansible.builtin.copy": {"dest": results_file, "content": "{{ sec_all | to_json }}"},
         "vars": {"sec_all": {"info": "{{ sec_info }}", "heartbeat": "{{ sec_heartbeat }}",
                              "publish": "{{ sec_publish }}", "apply": "{{ sec_apply }}",
                              "endpoints": "{{ sec_endpoints }}", "node_gc": "{{ sec_node_gc }}",
                              "identity_gc": "{{ sec_identity_gc }}", "failing": "{{ sec_failing }}"}}},
    ]
    return [{"name": "Every module", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]


@pytest.mark.parametrize("via", ["options", "env"])
def test_modules_never_show_a_token(sec_lab, tmp_path, via):
    tokens = sec_tokens(sec_lab)
    results_file = str(tmp_path / "results.json")
    book = tmp_path / "modules.yml"
    book.write_text(yaml.safe_dump(sec_module_play(sec_lab, results_file, via == "options"), sort_keys=False))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    args = []
    if via == "options":
        secrets = tmp_path / "secrets.json"
        secrets.write_text(json.dumps({"sec_consul_token": tokens[0], "sec_nomad_token": tokens[1]}))
        args = ["-e", "@" + str(secrets)]
    rc, out = sec_playbook(tmp_path, str(book), str(inventory), sec_env(sec_lab, via == "env"), *args)
    assert rc == 0, out[-4000:]
    results = json.loads(open(results_file).read())
    # the tokens were needed and used: every module worked against the ACL lab
    for name, result in results.items():
        assert bool(result.get("failed")) == (name == "failing"), (name, result.get("msg"))
    assert results["publish"]["published"] and results["apply"]["applied"]
    assert results["node_gc"]["marked"] and results["endpoints"]["labelled"]
    assert "127.0.0.1:9" in results["failing"]["msg"]
    assert "consul:sec/policy" in out  # the diffs were shown
    assert sec_leaks(out, tokens) == []
    assert sec_leaks(json.dumps(results), tokens) == []


@pytest.mark.parametrize("via", ["options", "env"])
def test_reap_playbook_never_shows_a_token(sec_lab, tmp_path, via):
    tokens = sec_tokens(sec_lab)
    extra = dict(FAST_GC_VARS)
    if via == "options":
        extra.update(consul_token=tokens[0], nomad_token=tokens[1])
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps(extra))
    rc, out = sec_playbook(tmp_path, "netreap.cilium.reap", os.path.join(sec_lab.state_dir, "inventory.yml"),
                           sec_env(sec_lab, via == "env"), "-e", "@" + str(variables))
    assert rc == 0, out[-4000:]
    assert "operator duties: ok" in out and "kvstore nodes: 0 reaped, 2 marked" in out
    assert sec_leaks(out, tokens) == []


# -- roles ----------------------------------------------------------------------------------------
def sec_files_with(root, secrets):
    """``{relative path: mode}`` of the files under ``root`` that contain any of ``secrets``."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(s.encode() in data for s in secrets):
                found[str(path.relative_to(root))] = oct(path.stat().st_mode & 0o777)
    return found


def test_agent_role_keeps_the_token_in_its_env_file(tmp_path):
    token = "agent-consul-5e2b71c0-secret"
    root = tmp_path / "root"
    role_helpers.make_verify_root(root)
    (root / "controller").mkdir()
    (root / "controller/cilium-cni").write_text("#!/bin/sh\necho 'Cilium CNI plugin 1.16.5'\n")
    variables = role_helpers.render_vars(root, cilium_version="1.16.5", agent_kvstore="consul",
                                         agent_consul_token=token, agent_consul_address="10.0.0.5:8500")
    rc, out = role_helpers.playbook(tmp_path, role_helpers.node_play(variables), role_helpers.local_hosts("node1"),
                                    "-vvv", "--diff")
    assert rc == 0, out[-4000:]
    assert "cilium-agent.env" in out  # the task ran (and was shown, without its content)
    assert sec_files_with(root, [token]) == {"etc/cilium/cilium-agent.env": "0o600"}
    assert "CONSUL_HTTP_TOKEN=%s" % token in (root / "etc/cilium/cilium-agent.env").read_text()
    assert sec_leaks(out, [token]) == []


def test_reaper_role_keeps_the_tokens_in_its_env_file(tmp_path):
    root = tmp_path / "root"
    role_helpers.make_stub(root)
    secrets = ["nomad-7d1e-secret", "4b2f", "etcd-9a0c-secret"]  # the consul token holds " and \ around 4b2f
    assert set(role_helpers.SECRETS) == {"reaper_nomad_token", "reaper_consul_token", "reaper_etcd_password"}
    rc, out = role_helpers.converge(tmp_path, role_helpers.role_vars(root), "-vvv", "--diff")
    assert rc == 0, out[-4000:]
    env_file = "etc/netreap/reaper.env"
    assert sec_files_with(root, secrets) == {env_file: "0o600"}
    text = (root / env_file).read_text()
    assert 'NOMAD_TOKEN="nomad-7d1e-secret"' in text and 'ETCDCTL_PASSWORD="etcd-9a0c-secret"' in text
    assert sec_leaks(out, secrets) == []
