"""Run a module's main() in-process (or as its own process) with given arguments, capturing what it
would return to Ansible, and the kvstore helpers of the module tests against the lab."""

import importlib
import json
import tempfile

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from tests.lab.consul import CONSUL_SKIP_REASON, find_consul

# The kvstore backends a kvstore module test runs on: (kvstore, Cilium version, Consul kind).
# "consul-real" is a real Consul server (CONSUL_BIN) behind the lab's proxy; skipped without one.
REAL_CONSUL = pytest.mark.skipif(find_consul() is None, reason=CONSUL_SKIP_REASON)
KV_BACKENDS = [pytest.param(("consul", "1.16", "sim"), id="consul"),
               pytest.param(("consul", "1.16", "real"), id="consul-real", marks=REAL_CONSUL),
               pytest.param(("etcd", "1.19", "sim"), id="etcd")]
CONSUL_KINDS = [pytest.param("sim", id="consul"), pytest.param("real", id="consul-real", marks=REAL_CONSUL)]


class ModuleResult(dict):
    @property
    def failed(self):
        return bool(self.get("failed"))


class _Exit(Exception):
    def __init__(self, result):
        super().__init__(result.get("msg", ""))
        self.result = result


class Exited(Exception):
    """Raised by a FakeModule's exit: whether it failed, and what it returned."""

    def __init__(self, failed, result):
        super().__init__(result.get("msg"))
        self.failed = failed
        self.result = result


class FakeModule:
    """The part of AnsibleModule the shared run shapes use: check and diff mode, parameters, and
    exit_json/fail_json raising Exited, for unit tests that drive a run without a module."""

    _name = "fake_module"

    def __init__(self, check_mode=False, diff=False, **params):
        self.check_mode = check_mode
        self._diff = diff
        self.params = params

    def exit_json(self, **result):
        raise Exited(False, result)

    def fail_json(self, **result):
        raise Exited(True, result)


def run_module(name, args, check_mode=False, diff=False):
    """Run ``netreap.cilium.<name>`` in-process; returns the result dict (``failed`` on fail_json)."""
    module = importlib.import_module("ansible_collections.netreap.cilium.plugins.modules." + name)
    args = dict(args)
    args["_ansible_check_mode"] = check_mode
    args["_ansible_diff"] = diff

    warnings = []
    previous_warn = basic.AnsibleModule.warn  # a test may have patched it to watch warnings too

    def warn(self, warning, *args, **kwargs):
        warnings.append(warning)
        previous_warn(self, warning, *args, **kwargs)

    def exit_json(self, **kwargs):
        kwargs.setdefault("changed", False)
        kwargs["warnings"] = list(warnings)
        raise _Exit(kwargs)

    def fail_json(self, msg, **kwargs):
        kwargs["failed"] = True
        kwargs["msg"] = msg
        kwargs["warnings"] = list(warnings)
        raise _Exit(kwargs)

    # module.warn() is captured here: where it ends up otherwise depends on what else ran in this
    # process (a controller-side Display prints it instead of keeping it).
    original = basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json, basic.AnsibleModule.warn
    basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json, basic.AnsibleModule.warn = \
        exit_json, fail_json, warn
    try:
        with patch_module_args(args):
            module.main()
    except _Exit as done:
        # round-trip through JSON like Ansible would, so results are plain data
        return ModuleResult(json.loads(json.dumps(done.result, default=str)))
    finally:
        basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json, basic.AnsibleModule.warn = original
    raise AssertionError("module %s returned without exit_json/fail_json" % name)


# -- kvstore module helpers (kvstore GC and heartbeat tests) -------------------------------------
def etcd_front(lab):
    """The lab's real etcd behind an HTTP proxy that shares the lab's faults and request log
    (service ``etcd``); stopped with the lab.  Returns the proxy's Service (``.faults``, ``.url``)."""
    from tests.lab import httpd
    from tests.lab.etcd import EtcdProxy

    front = getattr(lab, "_etcd_front", None)
    if front is None:
        endpoint = httpd.serve_tcp(EtcdProxy(lab.etcd.url, log=lab.log))
        lab.endpoints.append(endpoint)
        endpoint.service.url = endpoint.url
        front = lab._etcd_front = endpoint.service
    return front


def kvstore_args(lab, **extra):
    """Connection options for a kvstore module against this lab (etcd through etcd_front)."""
    args = {"kvstore": lab.kvstore_type, "consul_address": lab.consul_endpoint.url,
            "consul_timeout": 5}
    if lab.kvstore_type == "etcd":
        args.update(etcd_endpoints=[etcd_front(lab).url], etcd_timeout=5)
    if lab.acl:
        args["consul_token"] = lab.tokens["consul"]
    args.update(extra)
    return args


def kvstore_service(lab):
    return lab.kvstore_type  # RequestLog service name: "consul" or "etcd" (the proxy)


def kvstore_writes(lab):
    """Write requests the kvstore received so far (PUT/DELETE to Consul, write calls to etcd)."""
    if lab.kvstore_type == "consul":
        return [e for e in lab.log.entries(service="consul") if e["method"] in ("PUT", "DELETE")]
    reads = ("/v3/kv/range",)
    return [e for e in lab.log.entries(service="etcd") if e["path"] not in reads]


def run_module_subprocess(name, args, timeout=120):
    """Start ``netreap.cilium.<name>`` as its own process (as Ansible would); returns the Popen.
    Use ``module_result(proc)`` for its result dict.  For concurrent runs: run_module patches
    process-wide state and is not thread-safe."""
    import os
    import subprocess
    import sys

    module = importlib.import_module("ansible_collections.netreap.cilium.plugins.modules." + name)
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="args-", dir="/tmp", delete=False)
    with handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, module.__file__, handle.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    proc.args_file = handle.name
    proc.wait_timeout = timeout
    return proc


def module_result(proc):
    import os

    try:
        out, err = proc.communicate(timeout=proc.wait_timeout)
    finally:
        os.unlink(proc.args_file)
    try:
        return ModuleResult(json.loads(out))
    except ValueError:
        raise AssertionError("module printed no JSON (rc %s):\n%s\n%s" % (proc.returncode, out, err))


def when_logged(lab, service, path, count, action, timeout=20.0):
    """Run ``action`` in a thread as soon as ``count`` requests to ``path`` were answered."""
    import threading
    import time

    def wait_then_act():
        deadline = time.monotonic() + timeout
        while lab.log.count(service=service, path=path) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        action()
    thread = threading.Thread(target=wait_then_act)
    thread.start()
    return thread
