"""Fixtures for module tests against the lab: start a lab in-process and run a module's main()
with given arguments, capturing what it would return to Ansible."""

import importlib
import json
import shutil
import tempfile

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from tests.lab.lab import Lab


class ModuleResult(dict):
    @property
    def failed(self):
        return bool(self.get("failed"))


class _Exit(Exception):
    def __init__(self, result):
        super().__init__(result.get("msg", ""))
        self.result = result


def run_module(name, args, check_mode=False, diff=False):
    """Run ``netreap.cilium.<name>`` in-process; returns the result dict (``failed`` on fail_json)."""
    module = importlib.import_module("ansible_collections.netreap.cilium.plugins.modules." + name)
    args = dict(args)
    args["_ansible_check_mode"] = check_mode
    args["_ansible_diff"] = diff

    def exit_json(self, **kwargs):
        kwargs.setdefault("changed", False)
        raise _Exit(kwargs)

    def fail_json(self, msg, **kwargs):
        kwargs["failed"] = True
        kwargs["msg"] = msg
        raise _Exit(kwargs)

    original = basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json
    basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json = exit_json, fail_json
    try:
        with patch_module_args(args):
            module.main()
    except _Exit as done:
        # round-trip through JSON like Ansible would, so results are plain data
        return ModuleResult(json.loads(json.dumps(done.result, default=str)))
    finally:
        basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json = original
    raise AssertionError("module %s returned without exit_json/fail_json" % name)


@pytest.fixture
def lab_factory():
    """``lab_factory(**Lab kwargs)`` starts a lab in a short temp dir; all are stopped at teardown."""
    labs = []

    def make(**kwargs):
        state_dir = tempfile.mkdtemp(prefix="lab-", dir="/tmp")
        lab = Lab(state_dir, **kwargs).start()
        labs.append((lab, state_dir))
        return lab

    yield make
    for lab, state_dir in labs:
        lab.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def lab(lab_factory):
    return lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="clean")
