"""netreap.cilium.nomad_events against a real Nomad dev agent (NOMAD_BIN, Nomad 1.6.5).

Starting a raw_exec job must make the source emit, within seconds, an event naming the node
the allocation runs on; stopping it, an event with the allocation stopped.
"""

import asyncio
import time

import pytest

from tests.support.eda import (
    NOMAD_BIN,
    NOMAD_SKIP_REASON,
    SLEEP_JOB,
    cancel,
    load_plugin,
    nomad_api,
    nomad_dev_agent,
)

pytestmark = pytest.mark.skipif(not NOMAD_BIN, reason=NOMAD_SKIP_REASON)


@pytest.fixture
def nomad_agent(tmp_path):
    with nomad_dev_agent(tmp_path) as agent:
        yield agent


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
            await asyncio.to_thread(nomad_api, address, "POST", "/v1/jobs", SLEEP_JOB)
            started = await wait_for(lambda e: e["nomad"]["started"], 30)
            assert started is not None, "no event after the job started: %r" % events
            assert started["nomad"]["node_name"] == node["Name"]
            assert started["nomad"]["node_id"] == node["ID"]
            allocs = await asyncio.to_thread(nomad_api, address, "GET", "/v1/job/eda-probe/allocations")
            assert started["nomad"]["started"] == [allocs[0]["ID"]]
            assert [t for t, e in events if e is started][0] - started_at < 15
            await asyncio.to_thread(nomad_api, address, "DELETE", "/v1/job/eda-probe")
            stopped = await wait_for(lambda e: e["nomad"]["stopped"], 30)
            assert stopped is not None, "no event after the job stopped: %r" % events
            assert stopped["nomad"]["stopped"] == [allocs[0]["ID"]]
            assert stopped["nomad"]["node_name"] == node["Name"]
        finally:
            await cancel(source)

    asyncio.run(scenario())
