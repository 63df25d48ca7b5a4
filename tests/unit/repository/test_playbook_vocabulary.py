"""The playbooks speak the collection's one vocabulary: a connection option is set by the variable
of its own name (the README's table), in one place (playbooks/vars/connections.yml), and no
playbook reads a retired name or falls back from one name to another."""

import os
import re

import yaml

import ansible_collections.netreap.cilium as collection_package
from ansible_collections.netreap.cilium.plugins.module_utils._options import SERVICES

ROOT = list(collection_package.__path__)[0]
PLAYBOOKS = os.path.join(ROOT, "playbooks")
GROUP_VARIABLE = {"Consul": "netreap_consul_options", "Nomad": "netreap_nomad_options",
                  "Cilium": "netreap_cilium_options", "etcd": "netreap_etcd_options"}
# the names of before the one vocabulary (changelogs/fragments/playbook-vocabulary.yml)
RETIRED = re.compile(r"\bnetreap_(consul|nomad|etcd)_(?!options\b)\w+|\bnomad_cluster_address\b"
                     r"|\bnetreap_cluster_id\b|\bnetreap_policy_consul_key\b")


def playbook_files():
    for folder, unused, names in os.walk(PLAYBOOKS):
        for name in sorted(names):
            if name.endswith(".yml"):
                yield os.path.join(folder, name)


def test_every_connection_option_is_the_variable_of_its_name():
    with open(os.path.join(PLAYBOOKS, "vars", "connections.yml")) as handle:
        connections = yaml.safe_load(handle)
    for service in SERVICES:
        mapping = connections[GROUP_VARIABLE[service.name]]
        assert sorted(mapping) == sorted(option.name for option in service), service.name
        for name, template in mapping.items():
            assert re.match(r"^\{\{ %s \| default\(" % name, template), (name, template)


def test_the_playbooks_set_the_connection_options_only_through_that_file():
    for path in playbook_files():
        with open(path) as handle:
            text = handle.read()
        assert RETIRED.findall(text) == [], path
        for play in yaml.safe_load(text) or []:
            defaults = play.get("module_defaults") if isinstance(play, dict) else None
            if defaults:
                assert play.get("vars_files") == ["vars/connections.yml"], path
                for group, value in defaults.items():
                    assert re.match(r"^\{\{ netreap_\w+_options \}\}$", value), (path, group, value)
