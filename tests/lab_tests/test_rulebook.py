"""The rulebook netreap.cilium.netreap with real ansible-rulebook against a running lab.

The lab runs as a user runs it (``python -m tests.lab up``); the rulebook reads the lab Nomad's
event stream (docs/upstream.md#nomad-event-stream) and the lab Consul. ``python -m tests.lab alloc
start`` makes an allocation the way Nomad and cilium-cni do (its endpoint has only
``reserved:init``): the endpoint must carry its Nomad labels within seconds. ``alloc stop
--leak-endpoint`` completes it and leaves its endpoint behind (a failed CNI DEL): the endpoint must
go. Then a new policy published to Consul must reach every node's agent.
"""

import json
import os
import shlex
import subprocess
import time
import urllib.request

import pytest

from tests.lab.control import ControlClient
from tests.lab.scenarios import POLICY_KEY, POLICY_V2, netreap_labels
from tests.support.eda import (
    HTTP,
    RULEBOOK,
    lab_cli,
    lab_endpoint,
    lab_process,
    rulebook_env,
    rulebook_missing,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.skipif(bool(rulebook_missing()), reason=rulebook_missing())

# Generous for a loaded 2-core machine; the benchmark measures the real latency.
WITHIN = 90
STARTUP = 300


def lab_env(state):
    """The variables of the lab's ``lab.env`` (``export NAME=value`` lines)."""
    env = {}
    with open(os.path.join(state, "lab.env")) as handle:
        for line in handle:
            name, value = line[len("export "):].rstrip("\n").split("=", 1)
            env[name] = shlex.split(value)[0] if value else ""
    return env


def rule_names(rules):
    """Names of the published rules an agent runs (REST: the ``name`` label; static policy
    directory: the file ``netreap-<name>.yaml``)."""
    names = set()
    for rule in rules:
        for label in rule.get("labels", []):
            if label.get("key") == "name":
                names.add(label.get("value"))
            elif label.get("key") == "filename" and label.get("value", "").startswith("netreap-"):
                names.add(label["value"][len("netreap-"):-len(".yaml")])
    return names


def test_rulebook_labels_a_new_allocation_removes_a_leaked_endpoint_and_applies_policy(tmp_path):
    with lab_process("--nodes", 2) as (state, lab):
        env = rulebook_env(lab_env(state))
        log_path = tmp_path / "rulebook.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([RULEBOOK, "-r", "netreap.cilium.netreap", "-i",
                                     os.path.join(state, "inventory.yml")],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        try:
            # The source is reading once the lab Nomad logged its stream request (ansible-rulebook
            # starts a JVM first: slow on a busy machine, and not what is under test).
            control = ControlClient(os.path.join(state, "control.sock"))
            assert wait_for(lambda: control.call("GET", "/requests?service=nomad&path=/v1/event/stream")[
                "count"], STARTUP, 1.0), log_path.read_text()[-4000:]

            alloc_id = lab_cli("alloc", "start", "--state-dir", state, "--node", "nomad-client-1",
                               "--job", "checkout", "--group", "api", "--meta", "team=payments")
            started = time.monotonic()
            assert lab_endpoint(state, "nomad-client-1", alloc_id)["status"]["labels"][
                "security-relevant"] == ["reserved:init"]
            want = netreap_labels("checkout", "default", "api", {"team": "payments"})
            labelled = wait_for(lambda: lab_endpoint(state, "nomad-client-1", alloc_id)["status"][
                "labels"]["security-relevant"] == want, WITHIN)
            assert labelled, "endpoint not labelled:\n" + log_path.read_text()[-4000:]
            print("labelled after %.1f s" % (time.monotonic() - started))

            lab_cli("alloc", "stop", "--state-dir", state, "--alloc", alloc_id, "--leak-endpoint")
            assert lab_endpoint(state, "nomad-client-1", alloc_id) is not None  # leaked
            removed = wait_for(lambda: lab_endpoint(state, "nomad-client-1", alloc_id) is None,
                               WITHIN)
            assert removed, "leaked endpoint not removed:\n" + log_path.read_text()[-4000:]

            # A new policy published to Consul reaches every node's agent.
            request = urllib.request.Request(lab["consul"] + "/v1/kv/" + POLICY_KEY,
                                             data=json.dumps(POLICY_V2).encode(), method="PUT")
            with HTTP.open(request, timeout=10) as resp:
                assert json.loads(resp.read()) is True
            applied = wait_for(lambda: all({"web-ingress", "cache-from-web"} <= rule_names(
                control.call("GET", "/policy/" + node["name"])["rules"]) for node in lab["nodes"]),
                WITHIN)
            assert applied, "policy not applied on every node:\n" + log_path.read_text()[-4000:]
        finally:
            stop_process(proc)
