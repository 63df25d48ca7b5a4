# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""netreap.cilium.consul_key: an event each time a Consul key's value changes.

DOCUMENTATION = r'''
name: consul_key
short_description: Changes of one Consul key's value
description:
  - Watches a key with Consul blocking queries (C(?index=&wait=)) and emits an event when its
    value changes, is created or is deleted. A new index with the same value emits nothing.
  - The first answer sets the baseline; C(emit_initial=true) also emits it.
  - Connection options and C(CONSUL_*) fallbacks are those of the collection's modules; the
    token is never logged or emitted.
options:
  key:
    description: The key to watch.
    default: netreap.io/policy
  wait:
    description: Longest time Consul holds a blocking query (Consul's C(wait), e.g. C(5m)).
    default: 5m
  emit_initial:
    description: Also emit the value found at start.
    default: false
  consul_address:
    env: [CONSUL_HTTP_ADDR]
    default: http://127.0.0.1:8500
  consul_token:
    env: [CONSUL_HTTP_TOKEN]
  consul_token_file:
    env: [CONSUL_HTTP_TOKEN_FILE]
  consul_use_ssl:
    env: [CONSUL_HTTP_SSL]
  consul_validate_certs:
    env: [CONSUL_HTTP_SSL_VERIFY]
    default: true
  consul_ca_cert:
    env: [CONSUL_CACERT]
  consul_ca_path:
    env: [CONSUL_CAPATH]
  consul_client_cert:
    env: [CONSUL_CLIENT_CERT]
  consul_client_key:
    env: [CONSUL_CLIENT_KEY]
  consul_tls_server_name:
    env: [CONSUL_TLS_SERVER_NAME]
  consul_datacenter:
    description: Datacenter to read the key in.
  backoff:
    description: First delay after a failed query, doubling up to 30 s.
    default: 1.0
'''

Event (under the key C(consul_key)): C(key), C(index), C(exists), C(value) (text; None when the
key is absent or its value is not UTF-8).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys

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
from ansible_collections.netreap.cilium.plugins.module_utils._consul import (  # noqa: E402
    consul_settings,
)

LOG = logging.getLogger("netreap.cilium.consul_key")
MAX_BACKOFF = 30.0


def next_index(previous, answered):
    """Consul's rule for the next blocking index: reset to 0 when it goes backwards, never 0."""
    # docs/upstream.md#consul-blocking
    if answered < previous or answered < 1:
        return 0 if answered < previous else 1
    return answered


class ConsulKeySource:
    def __init__(self, queue, args, env=None):
        self.queue = queue
        self.args = dict(args or {})
        self.settings = consul_settings(self.args, env)
        self.key = self.args.get("key") or "netreap.io/policy"
        self.wait = self.args.get("wait") or "5m"
        self.emit_initial = bool(self.args.get("emit_initial", False))
        self.backoff = float(self.args.get("backoff", 1.0))
        self.index = 0
        self.value = None
        self.known = False

    def _connector(self):
        if self.settings["unix_socket"]:
            return aiohttp.UnixConnector(path=self.settings["unix_socket"])
        return aiohttp.TCPConnector(ssl=settings_tls_context(self.settings))

    async def query_once(self, session):
        """One blocking query; returns the event to emit or None."""
        query = {"index": str(self.index), "wait": self.wait}
        if self.settings["datacenter"]:
            query["dc"] = self.settings["datacenter"]
        headers = {"X-Consul-Token": self.settings["token"]} if self.settings["token"] else {}
        async with session.get(self.settings["base_url"] + "/v1/kv/" + self.key, params=query,
                               headers=headers,
                               server_hostname=self.settings["tls_server_name"]) as resp:
            if resp.status not in (200, 404):
                raise ConnectionError("Consul answered %s" % resp.status)
            answered = int(resp.headers.get("X-Consul-Index") or 0)
            body = await resp.read()
        value = None
        exists = resp.status == 200
        if exists:
            entries = json.loads(body)
            raw = entries[0].get("Value") if entries else None
            value = base64.b64decode(raw) if raw is not None else b""
        self.index = next_index(self.index, answered)
        changed = (not self.known and self.emit_initial) or (self.known and value != self.value)
        self.known = True
        self.value = value
        if not changed:
            return None
        try:
            text = value.decode("utf-8") if value is not None else None
        except UnicodeDecodeError:
            text = None
        return {"consul_key": {"key": self.key, "index": answered, "exists": exists,
                               "value": text}}

    async def run(self):
        delay = self.backoff
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with aiohttp.ClientSession(connector=self._connector(), timeout=timeout) as session:
            while True:
                try:
                    event = await self.query_once(session)
                    delay = self.backoff
                except (aiohttp.ClientError, ConnectionError, OSError, asyncio.TimeoutError,
                        ValueError) as exc:
                    LOG.warning("Consul key %s: %s: %s; retrying in %.1fs", self.key,
                                type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(MAX_BACKOFF, delay * 2)
                    continue
                if event is not None:
                    await self.queue.put(event)


async def main(queue, args):
    """Entry point of ansible-rulebook."""
    await ConsulKeySource(queue, args).run()
