# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): Cilium agent REST client over its unix socket.

Also holds ``agent_capabilities``, the pure function that turns what the agent reports into
what it can do (REST policy writes, replace-with-labels, static policy directory, kvstore type).
"""

from __future__ import annotations

import json
import os
import re

from ansible_collections.netreap.cilium.plugins.module_utils._http import (
    HttpClient,
    ServiceError,
)
from ansible_collections.netreap.cilium.plugins.module_utils._options import CILIUM, resolve

DEFAULT_SOCKET = CILIUM.option("cilium_socket").default
DEFAULT_TIMEOUT = CILIUM.option("cilium_timeout").default

CILIUM_ARGUMENT_SPEC = CILIUM.argument_spec()


def cilium_settings(params, env=None):
    """The client's settings from the options of ``CILIUM`` (see ``_options.resolve``)."""
    values = resolve(CILIUM, params, os.environ if env is None else env)
    socket_path = values["cilium_socket"]
    if socket_path.startswith("unix://"):
        socket_path = socket_path[len("unix://"):]
    return dict(socket_path=socket_path, timeout=values["cilium_timeout"])


# With a deadline the count is not what limits 429 retries; keep it out of the way.
RETRIES_WITHIN_DEADLINE = 1000


class CiliumClient:
    """The agent's /v1 API.  The agent ignores the Host header, but Go's server rejects one with
    a '/', so we send ``Host: localhost`` like the fixed Go client (CVE-2023-29406)."""

    def __init__(self, socket_path=DEFAULT_SOCKET, timeout=DEFAULT_TIMEOUT, http=None, deadline=None):
        self.socket_path = socket_path
        self.http = http or HttpClient("cilium", "http://localhost/v1", unix_socket=socket_path,
                                       timeout=timeout, deadline=deadline)

    @classmethod
    def from_params(cls, params, env=None, deadline=None):
        settings = cilium_settings(params, env)
        return cls(settings["socket_path"], settings["timeout"], deadline=deadline)

    def _json(self, method, path, body=None, query=None, expect=(200,), allow_empty=False):
        return self.http.request_json(method, path, body=body, query=query, expect=expect,
                                      allow_empty=allow_empty)[0]

    # -- status ---------------------------------------------------------------------------
    def healthz(self):
        return self._json("GET", "/healthz")

    def config(self):
        return self._json("GET", "/config")

    def retry_within(self, seconds):
        """From now on, retry a 429 for as long as ``seconds`` last (the count does not limit it)."""
        self.http.deadline = max(seconds, 0.0)
        self.http.retries = RETRIES_WITHIN_DEADLINE

    # -- endpoints ------------------------------------------------------------------------
    def endpoints(self):
        """Every endpoint with labels (one request, whatever the count)."""
        return self._json("GET", "/endpoint") or []

    def patch_endpoint(self, endpoint_id, change):
        self.http.request("PATCH", "/endpoint/%s" % endpoint_id, body=change)

    def delete_endpoint(self, endpoint_id):
        """Delete one endpoint; 206 (partial errors) still deleted it, per the API."""
        resp = self.http.request("DELETE", "/endpoint/%s" % endpoint_id, expect=(200, 206))
        return resp.status

    # -- policy ---------------------------------------------------------------------------
    def policy_get(self):
        """``(rules, revision)`` of the agent's whole repository."""
        data = self._json("GET", "/policy")
        text = data.get("policy") or "null"
        return json.loads(text) or [], data.get("revision")

    def policy_put(self, rules, replace=None, replace_with_labels=None):
        """Add ``rules``; the body is the rules JSON *as a JSON string*, like the Go client."""
        query = {}
        if replace:
            query["replace"] = "true"
        if replace_with_labels:
            query["replace-with-labels"] = ",".join(replace_with_labels)
        data = self._json("PUT", "/policy", body=json.dumps(rules), query=query)
        return data.get("revision")

    def policy_delete(self, labels):
        """Delete rules carrying all ``labels``.  Never called with no labels: that deletes
        every rule in the agent, ours or not."""
        if not labels:
            raise ValueError("refusing to DELETE /policy without labels (it would delete all rules)")
        data = self._json("DELETE", "/policy", body=list(labels))
        return data.get("revision")


_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def parse_agent_version(healthz):
    """The agent reports its version in ``cilium.msg`` (``cilium status``: "Ok 1.16.5 (v1.16.5-…)")."""
    msg = ((healthz or {}).get("cilium") or {}).get("msg") or ""
    match = _VERSION_RE.search(msg)
    if not match:
        return None
    return "%s.%s.%s" % match.groups()


def version_tuple(version):
    match = _VERSION_RE.search(version or "")
    return tuple(int(p) for p in match.groups()) if match else None


def agent_capabilities(healthz, config, static_policy_dir=None):
    """What this agent can do, from its own answers (pure; no I/O).

    REST policy writes exist up to 1.18 (removed in 1.19); ``replace``/``replace-with-labels``
    since 1.15; static policy files (``--static-cnp-path``) since 1.16; Consul as kvstore up to 1.16.
    The agent does not reveal its ``--static-cnp-path`` (it lives in a hive cell's config, not in
    the daemon configuration map), so ``static_policy_dir`` is what the user tells us.
    """
    version = parse_agent_version(healthz)
    vt = version_tuple(version)
    status = (config or {}).get("status") or {}
    kv_config = status.get("kvstoreConfiguration") or {}
    kvstore = ((healthz or {}).get("kvstore") or {})
    directory = static_policy_dir
    known = vt is not None
    caps = dict(
        version=version,
        kvstore_type=kv_config.get("type") or None,
        kvstore_options=kv_config.get("options") or {},
        kvstore_state=kvstore.get("state"),
        kvstore_message=kvstore.get("msg"),
        rest_policy_write=bool(known and vt < (1, 19, 0)),
        policy_replace=bool(known and (1, 15, 0) <= vt < (1, 19, 0)),
        replace_with_labels=bool(known and (1, 15, 0) <= vt < (1, 19, 0)),
        static_policy_supported=bool(known and vt >= (1, 16, 0)),
        static_policy_dir=directory if (known and vt >= (1, 16, 0)) else None,
        consul_kvstore_supported=bool(known and vt < (1, 17, 0)),
        cni_attachment_id=bool(known and vt >= (1, 15, 0)),
        cli_name="cilium-dbg" if known and vt >= (1, 15, 0) else "cilium",
    )
    if caps["rest_policy_write"]:
        caps["policy_methods"] = ["replace-with-labels" if caps["replace_with_labels"]
                                  else "add-then-delete"]
    else:
        caps["policy_methods"] = []
    if caps["static_policy_dir"]:
        caps["policy_methods"].append("static-dir")
    return caps


__all__ = ["CiliumClient", "ServiceError", "agent_capabilities", "cilium_settings",
           "parse_agent_version", "CILIUM_ARGUMENT_SPEC"]
