"""Each module documents the action groups meta/runtime.yml puts it in (what module_defaults
`group/netreap.cilium.<name>` reaches), and the attribute descriptions from the shared fragment."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

import ansible_collections.netreap.cilium as collection_package

ROOT = list(collection_package.__path__)[0]
COLLECTIONS_PATH = os.path.dirname(os.path.dirname(os.path.dirname(ROOT)))
MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "plugins", "modules"))
                 if name.endswith(".py") and not name.startswith("_"))


def runtime_groups():
    """Module short name -> the FQCN of every group that reaches it (extend_group followed)."""
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as handle:
        action_groups = yaml.safe_load(handle)["action_groups"]
    members, extends = {}, {}
    for group, entries in action_groups.items():
        members[group] = [e for e in entries if isinstance(e, str)]
        extends[group] = [g for e in entries if isinstance(e, dict) for g in e["metadata"].get("extend_group", [])]

    def modules_of(group):
        found = set(members[group])
        for other in extends[group]:
            found |= modules_of(other)
        return found

    result = {}
    for group in action_groups:
        for module in modules_of(group):
            result.setdefault(module, set()).add("netreap.cilium.%s" % group)
    return result


@pytest.fixture(scope="module")
def docs():
    ansible_doc = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    ansible_doc = ansible_doc if os.path.exists(ansible_doc) else shutil.which("ansible-doc")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([ansible_doc, "-t", "module", "--json"] + ["netreap.cilium.%s" % m for m in MODULES],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict((name.split(".")[-1], entry["doc"]) for name, entry in json.loads(proc.stdout).items())


def test_every_module_in_a_group_exists():
    assert set(runtime_groups()) <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_documented_action_groups_match_runtime(docs, module):
    action_group = docs[module]["attributes"]["action_group"]
    assert set(action_group["membership"]) == runtime_groups().get(module, set())
    for group in action_group["membership"]:
        assert "C(group/%s)" % group in action_group["description"]


@pytest.mark.parametrize("module", MODULES)
def test_check_and_diff_mode_are_described(docs, module):
    attributes = docs[module]["attributes"]
    for name in ("check_mode", "diff_mode"):
        assert attributes[name]["description"] and attributes[name]["support"] in ("full", "partial", "none")
