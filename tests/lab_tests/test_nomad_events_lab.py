"""netreap.cilium.nomad_events against the lab's Nomad event stream (docs/upstream.md#nomad-event-stream-wire),
with ACLs on: Nomad restarts in the middle of the stream, the source loses and repeats nothing,
and its token never shows.
"""

import asyncio
import json
import logging
import time

from tests.support.eda import cancel, load_plugin


class Collect:
    def __init__(self):
        self.events = []

    async def put(self, event):
        self.events.append(event["nomad"])


async def until(check, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return False


def test_nomad_restart_mid_stream_loses_and_repeats_nothing_and_never_shows_the_token(
        lab_factory, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="clean", acl=True)
    token = lab.tokens["nomad"]
    nomad = lab.endpoint_of("nomad")
    node1, node2 = lab.nodes
    queue = Collect()

    def changes(kind, alloc_id):
        return [e["node_name"] for e in queue.events if alloc_id in e[kind]]

    async def scenario():
        source = asyncio.ensure_future(load_plugin().main(queue, {
            "nomad_address": nomad.url, "nomad_token": token, "window": 0.3, "backoff": 0.05,
            "max_backoff": 0.2}))
        try:
            first = await asyncio.to_thread(lab.start_allocation, node1, "web", "api")
            assert await until(lambda: changes("started", first)), queue.events

            # Nomad restarts with nothing new: the source asks for the index after the last one
            # it processed, which is past the newest item, so Nomad sends that item again.
            nomad.pause()
            await asyncio.sleep(0.5)
            nomad.resume()
            assert await until(lambda: lab.log.count(service="nomad", path="^/v1/event/stream$") >= 2)
            await asyncio.sleep(1.0)

            # Nomad restarts again; meanwhile an allocation started and the first one stopped.
            nomad.pause()
            second = await asyncio.to_thread(lab.start_allocation, node2, "cache", "redis")
            await asyncio.to_thread(lab.stop_allocation, first, True)
            await asyncio.sleep(0.5)
            nomad.resume()
            assert await until(lambda: changes("started", second) and changes("stopped", first))
            await asyncio.sleep(1.5)  # anything repeated would arrive now
            return first, second
        finally:
            await cancel(source)

    first, second = asyncio.run(scenario())
    assert changes("started", first) == [node1.name]
    assert changes("stopped", first) == [node1.name]
    assert changes("started", second) == [node2.name]
    assert {e["node_id"] for e in queue.events if first in e["started"]} == {node1.node_id}
    assert lab.log.count(service="nomad", path="^/v1/event/stream$") >= 3
    out = capsys.readouterr()
    requests = json.dumps(lab.log.entries(service="nomad"))
    for text in (caplog.text, out.out, out.err, json.dumps(queue.events), requests):
        assert token not in text
