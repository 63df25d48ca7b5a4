# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): Nomad HTTP client (agent, nodes, allocations)."""

from __future__ import annotations

import os

from ansible_collections.netreap.cilium.plugins.module_utils._http import (
    HttpClient,
    ServiceError,
    parse_address,
)
from ansible_collections.netreap.cilium.plugins.module_utils._options import NOMAD, resolve

DEFAULT_TIMEOUT = NOMAD.option("nomad_timeout").default
PAGE_SIZE = 1000

NOMAD_ARGUMENT_SPEC = NOMAD.argument_spec()


def acl_permission_for(path):
    """The Nomad ACL permission a GET of ``path`` needs (Nomad's 403 body does not say)."""
    if path.startswith("/v1/agent/"):
        return 'agent:read (agent { policy = "read" })'
    if path.startswith(("/v1/node/", "/v1/nodes")):
        return 'node:read (node { policy = "read" })'
    if path.startswith(("/v1/allocation", "/v1/namespaces")):
        return 'read-job in the namespace (namespace "*" { capabilities = ["read-job"] })'
    return None


def nomad_settings(params, env=None):
    """The client's settings from the options of ``NOMAD`` (see ``_options.resolve``)."""
    values = resolve(NOMAD, params, os.environ if env is None else env)
    base_url, unix_socket = parse_address(values["nomad_address"], 4646)
    return dict(
        base_url=base_url,
        unix_socket=unix_socket,
        token=values["nomad_token"],
        region=values["nomad_region"],
        namespace=values["nomad_namespace"],
        validate_certs=values["nomad_validate_certs"],
        ca_file=values["nomad_ca_cert"],
        ca_path=values["nomad_ca_path"],
        client_cert=values["nomad_client_cert"],
        client_key=values["nomad_client_key"],
        tls_server_name=values["nomad_tls_server_name"],
        timeout=values["nomad_timeout"],
    )


class NomadClient:
    """The Nomad HTTP API as used by netreap.cilium (read-only)."""

    def __init__(self, base_url, unix_socket=None, token=None, region=None, namespace=None,
                 validate_certs=True, ca_file=None, ca_path=None, client_cert=None, client_key=None,
                 tls_server_name=None, timeout=DEFAULT_TIMEOUT, http=None):
        headers = {"X-Nomad-Token": token} if token else {}
        self.http = http or HttpClient("nomad", base_url, unix_socket=unix_socket, headers=headers,
                                       timeout=timeout, validate_certs=validate_certs,
                                       ca_file=ca_file, ca_path=ca_path, client_cert=client_cert,
                                       client_key=client_key, tls_server_name=tls_server_name)
        self.region = region
        self.namespace = namespace

    @classmethod
    def from_params(cls, params, env=None):
        return cls(**nomad_settings(params, env))

    def _get(self, path, **query):
        query["region"] = self.region
        try:
            data, resp = self.http.request_json("GET", path, query=query)
        except ServiceError as exc:
            permission = acl_permission_for(path)
            if exc.status == 403 and "Permission denied" in exc.body and permission:
                exc.hint = "the Nomad token lacks %s" % permission
            raise
        return data, resp

    def _get_paged(self, path, **query):
        items = []
        next_token = None
        while True:
            data, resp = self._get(path, per_page=PAGE_SIZE, next_token=next_token, **query)
            if not isinstance(data, list):
                raise ServiceError("nomad", "GET", self.http.url_for(path), status=resp.status,
                                   body=resp.text()[:500], kind="decode",
                                   reason="expected a JSON list")
            items.extend(data)
            next_token = resp.header("x-nomad-nexttoken")
            if not next_token:
                return items

    def agent_self(self):
        return self._get("/v1/agent/self")[0]

    def local_node_id(self):
        """The node ID of the client agent we talk to (``stats.client.node_id``)."""
        data = self.agent_self()
        node_id = ((data.get("stats") or {}).get("client") or {}).get("node_id")
        if not node_id:
            raise ValueError("the Nomad agent at %s is not a client (agent/self has no "
                             "stats.client.node_id); set nomad_node_id" % self.http.base_url)
        return node_id

    def nodes(self, filter_expr=None):
        """Every node stub (all pages)."""
        return self._get_paged("/v1/nodes", filter=filter_expr)

    def node(self, node_id):
        return self._get("/v1/node/" + node_id)[0]

    def node_allocations(self, node_id):
        """Full allocations (with Job and NetworkStatus) of one node, all readable namespaces."""
        data, resp = self._get("/v1/node/%s/allocations" % node_id)
        if not isinstance(data, list):
            raise ServiceError("nomad", "GET", resp and self.http.url_for(
                "/v1/node/%s/allocations" % node_id), status=resp.status, kind="decode",
                body=resp.text()[:500], reason="expected a JSON list")
        return data

    def allocation(self, alloc_id):
        return self._get("/v1/allocation/" + alloc_id)[0]
