"""The option tables resolve outside AnsibleModule (inventory and event source plugins) exactly as the
modules resolve them, and produce the modules' argument spec."""

import os
import re

import pytest

import ansible_collections.netreap.cilium as collection_package
from ansible_collections.netreap.cilium.plugins.module_utils._options import (
    CILIUM,
    CONSUL,
    ETCD,
    NOMAD,
    SERVICES,
    argument_spec,
    parse_bool,
    resolve,
)


def test_plain_dicts_resolve_option_then_env_then_default():
    env = {"NOMAD_ADDR": "https://env:4646", "NOMAD_TOKEN": "env-token", "NOMAD_REGION": ""}
    sources = {}
    values = resolve(NOMAD, {"nomad_address": "http://opt:4646"}, env, sources=sources)
    assert values["nomad_address"] == "http://opt:4646"
    assert values["nomad_token"] == "env-token"
    # an empty variable is unset (AWX injects empty ones for credential inputs left blank)
    assert values["nomad_region"] is None
    assert values["nomad_timeout"] == 10.0 and values["nomad_validate_certs"] is True
    assert (sources["nomad_address"], sources["nomad_token"], sources["nomad_timeout"]) == (
        "option", "env:NOMAD_TOKEN", "default")


def test_inverted_variable_and_bad_boolean_named():
    assert resolve(NOMAD, {}, {"NOMAD_SKIP_VERIFY": "1"})["nomad_validate_certs"] is False
    assert resolve(NOMAD, {"nomad_validate_certs": True}, {"NOMAD_SKIP_VERIFY": "1"})["nomad_validate_certs"] is True
    with pytest.raises(ValueError, match="NOMAD_SKIP_VERIFY.*not a boolean"):
        resolve(NOMAD, {}, {"NOMAD_SKIP_VERIFY": "yes please"})


def test_token_file_comes_before_the_token_variable(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"CONSUL_HTTP_TOKEN": "from-env", "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    sources = {}
    assert resolve(CONSUL, {}, env, sources=sources)["consul_token"] == "from-file"
    assert sources["consul_token"] == "token_file"
    assert resolve(CONSUL, {"consul_token": "opt"}, env)["consul_token"] == "opt"
    assert resolve(CONSUL, {}, {"CONSUL_HTTP_TOKEN": "from-env"})["consul_token"] == "from-env"


def test_etcd_config_between_option_and_environment():
    config = {"endpoints": ["https://a:2379"], "insecure-skip-tls-verify": "true", "username": "cilium"}
    env = {"ETCDCTL_ENDPOINTS": "http://env:2379", "ETCDCTL_USER": "root:pw", "ETCDCTL_PASSWORD": "other"}
    values = resolve(ETCD, {}, env, config=config)
    assert values["etcd_endpoints"] == ["https://a:2379"]
    assert values["etcd_validate_certs"] is False
    assert values["etcd_username"] == "cilium"
    values = resolve(ETCD, {}, env)
    assert (values["etcd_username"], values["etcd_password"]) == ("root", "pw")
    assert resolve(ETCD, {}, {"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "pw2"})["etcd_password"] == "pw2"


def test_defaults_are_not_shared_between_calls():
    first = resolve(ETCD, {}, {})
    first["etcd_endpoints"].append("http://mutated:2379")
    assert resolve(ETCD, {}, {})["etcd_endpoints"] == ["http://127.0.0.1:2379"]


def test_argument_spec_hides_secrets_and_keeps_environment_defaults_out():
    spec = argument_spec(*SERVICES)
    assert spec["consul_token"]["no_log"] is True and spec["etcd_password"]["no_log"] is True
    assert spec["nomad_token"]["no_log"] is True
    # key paths only look secret: no_log=False says so to Ansible's heuristics
    assert all(spec[name]["no_log"] is False for name in spec if name.endswith("_client_key"))
    # a default in the spec would hide the environment variable behind it
    assert not any("default" in entry for entry in spec.values())
    assert spec["etcd_endpoints"] == {"type": "list", "elements": "str"}


@pytest.mark.parametrize("text, value", [("1", True), ("t", True), ("TRUE", True), ("0", False), ("False", False)])
def test_parse_bool_follows_go(text, value):
    assert parse_bool(text) is value


def test_parse_bool_refuses_yes():
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("yes")


README_ROWS = {"Consul": CONSUL, "Nomad": NOMAD, "Cilium agent": CILIUM, "etcd": ETCD}


def readme_rows():
    with open(os.path.join(list(collection_package.__path__)[0], "README.md")) as handle:
        lines = handle.read().splitlines()
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in README_ROWS:
            rows[cells[0]] = (re.findall(r"`([a-z]+_[a-z_]+)`", cells[1]), re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[2]))
    return rows


@pytest.mark.parametrize("row", sorted(README_ROWS))
def test_readme_connection_table_agrees_with_the_table(row):
    service = README_ROWS[row]
    options, variables = readme_rows()[row]
    assert options == service.names
    expected = []
    for option in service:
        expected += [name for name in option.env_names if name not in expected]
    assert sorted(variables) == sorted(expected)
