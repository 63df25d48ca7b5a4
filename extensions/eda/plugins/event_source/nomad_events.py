# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""netreap.cilium.nomad_events: one event per Nomad node whose allocations started or stopped.

DOCUMENTATION = r'''
name: nomad_events
short_description: Nomad allocation changes, one event per node
description:
  - Reads Nomad's event stream (C(/v1/event/stream), topic C(Allocation), every namespace).
  - Emits one event per node when allocations on it turn C(running) or finish (C(complete),
    C(failed), C(lost)), coalescing a burst of changes into one event: the event goes once no
    change came for C(window) seconds, and at the latest C(max_window) seconds after the first.
  - After a lost connection or a Nomad restart it reconnects with exponential backoff and resumes
    at the index after the last one it processed. Nomad may answer an old index with its oldest
    buffered event, or (after losing its state) with a lower index; every allocation's change is
    still emitted once, never twice.
  - The token is sent in a header and never logged or emitted.
options:
  nomad_address:
    description: Nomad HTTP address (C(http://host:4646), C(https://...), C(unix:///path)).
    env: [NOMAD_ADDR]
    default: http://127.0.0.1:4646
  nomad_token:
    description: ACL token; it needs C(read-job) in every namespace.
    env: [NOMAD_TOKEN]
  nomad_region:
    description: Region to read events of.
    env: [NOMAD_REGION]
  nomad_validate_certs:
    description: Verify the server's TLS certificate.
    env: [NOMAD_SKIP_VERIFY (inverted)]
    default: true
  nomad_ca_cert:
    description: CA bundle file.
    env: [NOMAD_CACERT]
  nomad_ca_path:
    description: Directory of CA certificates.
    env: [NOMAD_CAPATH]
  nomad_client_cert:
    description: Client certificate (mutual TLS).
    env: [NOMAD_CLIENT_CERT]
  nomad_client_key:
    description: Key of the client certificate.
    env: [NOMAD_CLIENT_KEY]
  nomad_tls_server_name:
    description: Server name to verify instead of the address's host.
    env: [NOMAD_TLS_SERVER_NAME]
  nomad_timeout:
    description: Seconds without any data (Nomad sends a heartbeat every 30 s) before reconnecting.
    default: 75
  namespace:
    description: Namespace to watch; C(*) is every namespace.
    default: "*"
  index:
    description: Index to start at; 0 replays what Nomad still buffers (labelling is idempotent).
    default: 0
  window:
    description: Seconds without a new change after which the collected changes are emitted.
    default: 0.5
  max_window:
    description: Longest time in seconds changes are collected, however long a burst lasts.
    default: 2.0
  group:
    description:
      - Emit the nodes whose changes fell in one window as one event (C(nomad_nodes), a list of
        the per-node bodies) instead of one event per node, so that one playbook run serves a
        burst on many nodes (each run costs an ansible-playbook start on the controller).
    default: false
  backoff:
    description: First reconnect delay in seconds; it doubles up to C(max_backoff).
    default: 0.5
  max_backoff:
    description: Longest reconnect delay in seconds.
    default: 30
'''

EXAMPLES = r'''
- name: Label new allocations
  hosts: all
  sources:
    - netreap.cilium.nomad_events:
        nomad_address: https://nomad.service.consul:4646
        window: 0.5
  rules:
    - name: Label the node's endpoints
      condition: event.nomad is defined
      action:
        run_playbook:
          name: netreap.cilium.event
          extra_vars:
            netreap_event_hosts: "{{ event.nomad.node_name }}"
'''

Event (under the key C(nomad)): C(node_id), C(node_name), C(started) and C(stopped) (allocation
IDs, sorted), C(index) (the highest Nomad index included). With C(group=true), one event per
window under the key C(nomad_nodes): the list of those bodies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections import OrderedDict

# ansible-rulebook runs this file by path (docs/upstream.md#eda-rulebook): make the collection's
# own module_utils importable.
_ROOT = os.path.dirname(os.path.abspath(__file__))
for _unused in range(7):
    _ROOT = os.path.dirname(_ROOT)
if _ROOT not in sys.path and os.path.isdir(os.path.join(_ROOT, "ansible_collections")):
    sys.path.append(_ROOT)

# pylint: disable=wrong-import-position
import aiohttp  # noqa: E402  (ansible-rulebook's own dependency)

from ansible_collections.netreap.cilium.plugins.module_utils._http import (  # noqa: E402
    settings_tls_context,
)
from ansible_collections.netreap.cilium.plugins.module_utils._nomad import (  # noqa: E402
    nomad_settings,
)

LOG = logging.getLogger("netreap.cilium.nomad_events")

RUNNING = "running"
# ClientStatus values after which an allocation's endpoint is to be removed (docs/upstream.md#nomad-event-stream).
TERMINAL = frozenset(("complete", "failed", "lost"))
# How many allocations' last state are remembered to recognise a replayed event.
MEMORY = 100000


def alloc_change(alloc):
    """``"started"``, ``"stopped"`` or None for an allocation of an event payload."""
    status = alloc.get("ClientStatus")
    if status == RUNNING:
        return "started"
    if status in TERMINAL:
        return "stopped"
    return None


class NodeCoalescer:
    """Turns allocation events into per-node changes; a replayed or repeated state emits nothing.

    Each allocation remembers the highest event index applied to it and the change emitted last.
    Allocation IDs are unique, so this holds across reconnects, index restarts and servers that
    lost their state (whose indexes start low again).
    """

    def __init__(self, memory=MEMORY):
        self.memory = memory
        self.allocs = OrderedDict()  # alloc ID -> (index, change emitted)
        self.pending = OrderedDict()  # node ID -> pending event body

    def add(self, index, alloc):
        """Record one allocation event; return the node ID when it changed a node, else None."""
        alloc_id = alloc.get("ID")
        node_id = alloc.get("NodeID")
        if not alloc_id or not node_id:
            return None
        seen_index, seen_change = self.allocs.get(alloc_id, (-1, None))
        if index <= seen_index:
            return None  # replayed
        change = alloc_change(alloc)
        if change is None or change == seen_change or (seen_change == "stopped"):
            self._remember(alloc_id, index, seen_change)
            return None
        self._remember(alloc_id, index, change)
        body = self.pending.get(node_id)
        if body is None:
            body = self.pending[node_id] = {"node_id": node_id, "node_name": alloc.get("NodeName"),
                                            "started": set(), "stopped": set(), "index": index}
        body["node_name"] = alloc.get("NodeName") or body["node_name"]
        body[change].add(alloc_id)
        (body["started"] if change == "stopped" else body["stopped"]).discard(alloc_id)
        body["index"] = max(body["index"], index)
        return node_id

    def _remember(self, alloc_id, index, change):
        self.allocs[alloc_id] = (index, change)
        self.allocs.move_to_end(alloc_id)
        while len(self.allocs) > self.memory:
            self.allocs.popitem(last=False)

    def take(self, node_id):
        """The event of one node, removed from the pending ones."""
        body = self.pending.pop(node_id)
        body["started"] = sorted(body["started"])
        body["stopped"] = sorted(body["stopped"])
        return {"nomad": body}


class NomadEventSource:
    def __init__(self, queue, args, env=None):
        self.queue = queue
        self.args = dict(args or {})
        self.settings = nomad_settings(self.args, env)
        self.namespace = self.args.get("namespace") or "*"
        self.index = int(self.args.get("index") or 0)
        self.window = float(self.args.get("window", 0.5))
        self.max_window = max(self.window, float(self.args.get("max_window", 2.0)))
        self.backoff = float(self.args.get("backoff", 0.5))
        self.max_backoff = float(self.args.get("max_backoff", 30.0))
        self.idle_timeout = float(self.args.get("nomad_timeout") or 75.0)
        self.group = bool(self.args.get("group", False))
        self.coalescer = NodeCoalescer()
        self.flushers = {}
        self.last_change = {}  # flush key -> loop time of its latest change
        self.connections = 0

    def _connector(self):
        if self.settings["unix_socket"]:
            return aiohttp.UnixConnector(path=self.settings["unix_socket"])
        return aiohttp.TCPConnector(ssl=settings_tls_context(self.settings))

    def _query(self):
        query = {"topic": "Allocation", "namespace": self.namespace}
        if self.index:
            query["index"] = str(self.index)
        if self.settings["region"]:
            query["region"] = self.settings["region"]
        return query

    async def _flush_later(self, key):
        loop = asyncio.get_running_loop()
        first = loop.time()
        while True:
            # Quiet for `window` seconds, or `max_window` after the first change of the burst.
            due = min(self.last_change[key] + self.window, first + self.max_window)
            if loop.time() >= due:
                break
            await asyncio.sleep(due - loop.time())
        self.flushers.pop(key, None)
        if not self.group:
            await self.queue.put(self.coalescer.take(key))
            return
        nodes = [self.coalescer.take(node_id)["nomad"] for node_id in list(self.coalescer.pending)]
        await self.queue.put({"nomad_nodes": nodes})

    def handle_frame(self, frame):
        """Apply one decoded frame (a heartbeat ``{}`` does nothing)."""
        index = frame.get("Index")
        if not isinstance(index, int):
            return
        for event in frame.get("Events") or []:
            if event.get("Topic") != "Allocation":
                continue
            alloc = (event.get("Payload") or {}).get("Allocation") or {}
            node_id = self.coalescer.add(event.get("Index", index), alloc)
            key = "*" if self.group else node_id
            if node_id:
                self.last_change[key] = asyncio.get_running_loop().time()
                if key not in self.flushers:
                    self.flushers[key] = asyncio.ensure_future(self._flush_later(key))
        # Resume after this index: Nomad's ``index`` starts at the first item >= it.
        self.index = max(self.index, index + 1)

    async def _read_stream(self, session):
        url = self.settings["base_url"] + "/v1/event/stream"
        headers = {}
        if self.settings["token"]:
            headers["X-Nomad-Token"] = self.settings["token"]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.idle_timeout)
        async with session.get(url, params=self._query(), headers=headers, timeout=timeout,
                               server_hostname=self.settings["tls_server_name"]) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                raise ConnectionError("Nomad answered %s: %s" % (resp.status, text.strip()))
            self.connections += 1
            LOG.info("reading Nomad events from index %s", self.index)
            buffer = b""
            async for data in resp.content.iter_any():
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self.handle_frame(json.loads(line))
                # A successful read resets the reconnect delay.
                self._delay = self.backoff
        raise ConnectionError("Nomad closed the event stream")

    async def run(self):
        self._delay = self.backoff
        try:
            while True:
                async with aiohttp.ClientSession(connector=self._connector()) as session:
                    try:
                        await self._read_stream(session)
                    except (aiohttp.ClientError, ConnectionError, OSError, asyncio.TimeoutError,
                            ValueError) as exc:
                        # Never the URL with its query or the headers: only the error's kind.
                        LOG.warning("Nomad event stream: %s; reconnecting in %.1fs",
                                    _describe(exc), self._delay)
                await asyncio.sleep(self._delay)
                self._delay = min(self.max_backoff, self._delay * 2)
        finally:
            for task in self.flushers.values():
                task.cancel()


def _describe(exc):
    if isinstance(exc, aiohttp.ClientResponseError):
        return "HTTP %s" % exc.status
    if isinstance(exc, asyncio.TimeoutError):
        return "no data within the timeout"
    return "%s: %s" % (type(exc).__name__, exc)


async def main(queue, args):
    """Entry point of ansible-rulebook."""
    await NomadEventSource(queue, args).run()
