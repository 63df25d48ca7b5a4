"""netreap.cilium.nomad_events against a small local server speaking Nomad's event stream.

The server writes frames the way Nomad 1.6.5 does (docs/upstream.md#nomad-event-stream): one JSON
object per line, ``{}`` heartbeats, ``index`` resuming at the first item >= it, an old index
answered from the oldest buffered item.
"""

import asyncio
import json
import logging
import time

import pytest

from tests.support.eda import StreamServer, cancel, load_plugin

TOKEN = "5e3c7a1e-token-never-shown"


def alloc_frame(index, alloc_id, node, status, namespace="default"):
    return {"Index": index, "Events": [{
        "Topic": "Allocation", "Type": "AllocationUpdated", "Key": alloc_id,
        "Namespace": namespace, "FilterKeys": ["web", ""], "Index": index,
        "Payload": {"Allocation": {"ID": alloc_id, "NodeID": "id-" + node, "NodeName": node,
                                   "Namespace": namespace, "ClientStatus": status,
                                   "DesiredStatus": "run"}}}]}


class Collect:
    def __init__(self):
        self.events = []

    async def put(self, event):
        self.events.append(event)


def run_source(server, want, args=None, timeout=10.0):
    """Run the source until ``want`` events arrived (plus 1.5 s for extra ones), return them."""
    plugin = load_plugin()
    queue = Collect()
    options = {"nomad_address": server.address, "nomad_token": TOKEN, "window": 0.3,
               "backoff": 0.05, "max_backoff": 0.2}
    options.update(args or {})

    async def go():
        task = asyncio.ensure_future(plugin.main(queue, options))
        deadline = time.monotonic() + timeout
        while len(queue.events) < want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        await cancel(task)

    asyncio.run(go())
    return queue.events


@pytest.fixture
def make_server():
    servers = []

    def make(scripts):
        servers.append(StreamServer(scripts))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_burst_on_one_node_is_one_event_with_name_and_id(make_server):
    server = make_server([[
        alloc_frame(10, "a1", "n1", "pending"),
        alloc_frame(11, "a1", "n1", "running"),
        alloc_frame(12, "a2", "n1", "running"),
        alloc_frame(13, "a3", "n1", "running"),
        alloc_frame(14, "b1", "n2", "running"),
        alloc_frame(15, "a3", "n1", "running"),  # a health update: no new change
    ]])
    events = run_source(server, 2)
    by_node = {e["nomad"]["node_name"]: e["nomad"] for e in events}
    assert len(events) == 2
    assert by_node["n1"]["node_id"] == "id-n1"
    assert by_node["n1"]["started"] == ["a1", "a2", "a3"]
    assert by_node["n2"]["started"] == ["b1"]
    assert server.requests[0]["query"]["topic"] == ["Allocation"]
    assert server.requests[0]["query"]["namespace"] == ["*"]


def test_group_gives_one_event_for_the_nodes_of_a_window(make_server):
    server = make_server([[alloc_frame(10, "a1", "n1", "running"),
                           alloc_frame(11, "b1", "n2", "running"),
                           alloc_frame(12, "b2", "n2", "running")]])
    events = run_source(server, 1, args={"group": True})
    assert len(events) == 1
    assert [(n["node_name"], n["started"]) for n in events[0]["nomad_nodes"]] == [
        ("n1", ["a1"]), ("n2", ["b1", "b2"])]


def test_a_burst_is_one_event_until_it_pauses_for_the_window(make_server):
    # Changes 0.2 s apart with a 0.3 s window: one event once the burst pauses.
    spread = [item for k in range(5) for item in (("sleep", 0.2), alloc_frame(10 + k, "a%d" % k,
                                                                              "n%d" % k, "running"))]
    server = make_server([spread + [("sleep", 0.6), alloc_frame(20, "late", "n1", "running")]])
    events = run_source(server, 2, args={"group": True, "window": 0.3, "max_window": 5})
    assert [[n["node_name"] for n in e["nomad_nodes"]] for e in events] == [
        ["n0", "n1", "n2", "n3", "n4"], ["n1"]]


def test_a_burst_longer_than_max_window_is_cut(make_server):
    spread = [item for k in range(8) for item in (("sleep", 0.2), alloc_frame(10 + k, "a%d" % k,
                                                                              "n1", "running"))]
    server = make_server([spread])
    events = run_source(server, 2, args={"window": 0.3, "max_window": 0.9})
    assert len(events) >= 2
    assert sorted(a for e in events for a in e["nomad"]["started"]) == ["a%d" % k for k in range(8)]
    assert len(events[0]["nomad"]["started"]) < 8


def test_reconnect_resumes_and_index_restart_repeats_nothing(make_server):
    buffered = [alloc_frame(10, "a1", "n1", "running"), alloc_frame(11, "b1", "n2", "running")]
    server = make_server([
        buffered[:1] + [("sleep", 0.6), "close"],
        # The reconnect asks for 11; this server answers from its oldest buffered item (10).
        lambda index: buffered + [alloc_frame(12, "a1", "n1", "complete")],
    ])
    events = run_source(server, 3)
    assert server.requests[1]["query"]["index"] == ["11"]
    changes = [(e["nomad"]["node_name"], e["nomad"]["started"], e["nomad"]["stopped"])
               for e in events]
    assert changes == [("n1", ["a1"], []), ("n2", ["b1"], []), ("n1", [], ["a1"])]


def test_nomad_restart_mid_stream_loses_and_repeats_nothing(make_server):
    # First server: dies in the middle of a stream (after index 21, before the rest is read).
    first = [alloc_frame(20, "a1", "n1", "running"), alloc_frame(21, "a2", "n2", "running"),
             ("sleep", 0.5), "close"]
    # The restarted server (same raft state) has a new event buffer: it holds 21 again and what
    # happened while it was down.
    after = [alloc_frame(21, "a2", "n2", "running"), alloc_frame(22, "a3", "n3", "running"),
             alloc_frame(23, "a1", "n1", "failed")]
    # In between, a connection that the stopping server accepts and closes at once.
    server = make_server([first, ["close"], lambda index: after])
    events = run_source(server, 4)
    seen = sorted((e["nomad"]["node_name"], tuple(e["nomad"]["started"]),
                   tuple(e["nomad"]["stopped"])) for e in events)
    assert seen == [("n1", (), ("a1",)), ("n1", ("a1",), ()), ("n2", ("a2",), ()),
                    ("n3", ("a3",), ())]
    assert [r["query"].get("index") for r in server.requests[1:3]] == [["22"], ["22"]]


def test_server_that_lost_its_state_is_followed(make_server):
    # A Nomad whose state was wiped (a new dev agent) starts again at low indexes.
    server = make_server([
        [alloc_frame(500, "a1", "n1", "running"), ("sleep", 0.5), "close"],
        lambda index: [alloc_frame(7, "fresh", "n1", "running")],
    ])
    events = run_source(server, 2)
    assert [e["nomad"]["started"] for e in events] == [["a1"], ["fresh"]]


def test_heartbeats_only_emit_nothing_and_keep_the_connection(make_server):
    server = make_server([[("sleep", 1.0), alloc_frame(3, "a1", "n1", "running")]])
    events = run_source(server, 1, args={"nomad_timeout": 5})
    assert len(server.requests) == 1
    assert [e["nomad"]["started"] for e in events] == [["a1"]]


def test_token_is_sent_but_never_logged_or_emitted(make_server, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    server = make_server([["forbidden"], [alloc_frame(3, "a1", "n1", "running"), "close"]])
    events = run_source(server, 1)
    assert server.requests[0]["token"] == TOKEN
    assert events
    out = capsys.readouterr()
    assert "403" in caplog.text
    for text in (caplog.text, out.out, out.err, json.dumps(events)):
        assert TOKEN not in text


def test_token_comes_from_nomad_token_variable(make_server, monkeypatch):
    monkeypatch.setenv("NOMAD_TOKEN", "from-the-environment")
    server = make_server([[alloc_frame(3, "a1", "n1", "running")]])
    run_source(server, 1, args={"nomad_token": None})
    assert server.requests[0]["token"] == "from-the-environment"
