"""netreap.cilium.nomad_events against a real Nomad dev agent (NOMAD_BIN, Nomad 1.6.5).

Starting a raw_exec job must make the source emit, within seconds, an event naming the node
the allocation runs on; stopping it, an event with the allocation stopped.
"""

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.support.eda import load_plugin, stop_process

NOMAD_BIN = os.environ.get("NOMAD_BIN")

pytestmark = pytest.mark.skipif(not NOMAD_BIN, reason="NOMAD_BIN not set (path of a Nomad 1.6.5 "
                                                      "binary for the real-agent test)")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(address, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


@pytest.fixture
def nomad_agent(tmp_path):
    http, rpc, serf = free_port(), free_port(), free_port()
    config = tmp_path / "agent.hcl"
    config.write_text(
        'data_dir = "%s"\nports {\n  http = %d\n  rpc = %d\n  serf = %d\n}\n'
        'plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}\n'
        % (tmp_path / "data", http, rpc, serf))
    log = open(tmp_path / "agent.log", "w")
    proc = subprocess.Popen([NOMAD_BIN, "agent", "-dev", "-bind", "127.0.0.1", "-config",
                             str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = "http://127.0.0.1:%d" % http
    try:
        deadline = time.monotonic() + 60
        nodes = []
        while time.monotonic() < deadline:
            try:
                nodes = [n for n in api(address, "GET", "/v1/nodes") if n["Status"] == "ready"]
            except OSError:
                nodes = []
            if nodes:
                break
            time.sleep(0.5)
        assert nodes, "the Nomad dev agent did not become ready:\n" + (
            tmp_path / "agent.log").read_text()[-3000:]
        yield address, nodes[0]
    finally:
        stop_process(proc)
        log.close()


JOB = {"Job": {"ID": "eda-probe", "Name": "eda-probe", "Type": "service", "Datacenters": ["*"],
               "TaskGroups": [{"Name": "probe", "Count": 1, "Tasks": [{
                   "Name": "sleep", "Driver": "raw_exec",
                   "Config": {"command": "/bin/sleep", "args": ["600"]}}]}]}}


def test_raw_exec_job_start_and_stop_emit_events_naming_the_node(nomad_agent):
    address, node = nomad_agent
    plugin = load_plugin()
    events = []

    class Queue:
        async def put(self, event):
            events.append((time.monotonic(), event))

    async def wait_for(check, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for unused, e in events if check(e)]
            if found:
                return found[0]
            await asyncio.sleep(0.1)
        return None

    async def scenario():
        source = asyncio.ensure_future(plugin.main(Queue(), {"nomad_address": address,
                                                             "window": 0.5}))
        try:
            await asyncio.sleep(1)
            started_at = time.monotonic()
            await asyncio.to_thread(api, address, "POST", "/v1/jobs", JOB)
            started = await wait_for(lambda e: e["nomad"]["started"], 30)
            assert started is not None, "no event after the job started: %r" % events
            assert started["nomad"]["node_name"] == node["Name"]
            assert started["nomad"]["node_id"] == node["ID"]
            allocs = await asyncio.to_thread(api, address, "GET", "/v1/job/eda-probe/allocations")
            assert started["nomad"]["started"] == [allocs[0]["ID"]]
            assert [t for t, e in events if e is started][0] - started_at < 15
            await asyncio.to_thread(api, address, "DELETE", "/v1/job/eda-probe")
            stopped = await wait_for(lambda e: e["nomad"]["stopped"], 30)
            assert stopped is not None, "no event after the job stopped: %r" % events
            assert stopped["nomad"]["stopped"] == [allocs[0]["ID"]]
            assert stopped["nomad"]["node_name"] == node["Name"]
        finally:
            source.cancel()
            try:
                await source
            except asyncio.CancelledError:
                pass

    asyncio.run(scenario())
