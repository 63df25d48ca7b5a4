# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): Consul HTTP client (KV, txn, sessions, locks)."""

from __future__ import annotations

import base64
import json
import os
import re

from ansible_collections.netreap.cilium.plugins.module_utils._http import (
    HttpClient,
    ServiceError,
    parse_address,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_types import go_path_clean
from ansible_collections.netreap.cilium.plugins.module_utils._options import CONSUL, resolve

DEFAULT_TIMEOUT = CONSUL.option("consul_timeout").default
# Consul rejects a transaction with more operations than this (413): 64 up to 1.13, 128 since 1.14.
TXN_MAX_OPS_LEGACY = 64
TXN_MAX_OPS = 128
# First release sending X-Consul-Results-Filtered-By-ACLs (docs/upstream.md#consul-results-filtered-by-acls).
FILTERED_HEADER_SINCE = (1, 11)
GLOBAL_MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"

CONSUL_ARGUMENT_SPEC = CONSUL.argument_spec()


class ConsulTxnError(ServiceError):
    """A transaction was rolled back (HTTP 409); ``errors`` lists ``{OpIndex, What}``."""

    def __init__(self, method, url, errors, body):
        self.errors = errors or []
        super().__init__("consul", method, url, status=409, body=body)

    def describe(self):
        whats = "; ".join("op %s: %s" % (e.get("OpIndex"), e.get("What")) for e in self.errors)
        return "consul %s %s: HTTP 409: transaction rolled back: %s" % (
            self.method, self.url, whats or self.body)


def key_option_problem(option, value, kind="key"):
    """Why the option ``option`` cannot name a kvstore key, or None.

    ``kind``: ``key`` (a whole key: no leading or trailing ``/``), ``prefix`` (one trailing
    ``/`` allowed) or ``name`` (one path segment, e.g. the cluster name).  Empty segments
    (``a//b``) and ``.``/``..`` segments are refused: Consul answers such a path with a 301 to
    the cleaned path and writes nothing (docs/upstream.md#consul-cleans-kv-paths), so a key
    that works in a test double fails against a real server.
    """
    if value is None:
        return None
    if value == "":
        return "%s must not be empty" % option
    if kind == "name":
        if "/" in value:
            return "%s %r must be a single name without '/'" % (option, value)
        if value in (".", ".."):
            return "%s must not be %r (a path segment Consul and Cilium remove)" % (option, value)
        return None
    if value.startswith("/"):
        return "%s %r must not start with '/' (Consul keys are relative)" % (option, value)
    body = value[:-1] if kind == "prefix" and value.endswith("/") else value
    segments = body.split("/")
    if "" in segments:
        where = "end with '/'" if body.endswith("/") else "contain an empty segment ('//')"
        return ("%s %r must not %s: Consul answers such a key with a redirect to %r and writes nothing"
                % (option, value, where, go_path_clean(value)))
    bad = [s for s in segments if s in (".", "..")]
    if bad:
        return ("%s %r must not contain a %r segment: Consul answers such a key with a redirect to %r "
                "and writes nothing" % (option, value, bad[0], go_path_clean(value)))
    return None


def key_options_problem(params, keys=(), prefixes=(), names=()):
    """The problems of several key options of a module, as one message (or None)."""
    problems = [key_option_problem(n, params.get(n), "key") for n in keys]
    problems += [key_option_problem(n, params.get(n), "prefix") for n in prefixes]
    problems += [key_option_problem(n, params.get(n), "name") for n in names]
    return "; ".join(p for p in problems if p) or None


def fail_on_key_options(module, keys=(), prefixes=(), names=()):
    """``module.fail_json`` before any request when a key option cannot name a Consul key."""
    problem = key_options_problem(module.params, keys, prefixes, names)
    if problem:
        module.fail_json(msg=problem)


def consul_settings(params, env=None):
    """The client's settings from the options of ``CONSUL`` (see ``_options.resolve``; the token
    precedence follows the Consul CLI: option, token file, E(CONSUL_HTTP_TOKEN))."""
    values = resolve(CONSUL, params, os.environ if env is None else env)
    use_ssl = values["consul_use_ssl"]
    base_url, unix_socket = parse_address(values["consul_address"], 8500, "https" if use_ssl else "http")
    if use_ssl and base_url.startswith("http://") and unix_socket is None:
        base_url = "https://" + base_url[len("http://"):]
    return dict(
        base_url=base_url,
        unix_socket=unix_socket,
        token=values["consul_token"] or None,
        validate_certs=values["consul_validate_certs"],
        ca_file=values["consul_ca_cert"],
        ca_path=values["consul_ca_path"],
        client_cert=values["consul_client_cert"],
        client_key=values["consul_client_key"],
        # The CLI strips a port from the server name.
        tls_server_name=_strip_port(values["consul_tls_server_name"]),
        datacenter=values["consul_datacenter"],
        timeout=values["consul_timeout"],
    )


def _strip_port(name):
    if not name:
        return name
    return re.sub(r":\d+$", "", name)


def _decode_entry(entry):
    value = entry.get("Value")
    entry = dict(entry)
    entry["Value"] = base64.b64decode(value) if value is not None else None
    return entry


class ConsulClient:
    """The Consul HTTP API as used by netreap.cilium."""

    def __init__(self, base_url, unix_socket=None, token=None, validate_certs=True, ca_file=None,
                 ca_path=None, client_cert=None, client_key=None, tls_server_name=None,
                 datacenter=None, timeout=DEFAULT_TIMEOUT, http=None):
        headers = {"X-Consul-Token": token} if token else {}
        self.http = http or HttpClient("consul", base_url, unix_socket=unix_socket, headers=headers,
                                       timeout=timeout, validate_certs=validate_certs,
                                       ca_file=ca_file, ca_path=ca_path, client_cert=client_cert,
                                       client_key=client_key, tls_server_name=tls_server_name)
        self.datacenter = datacenter
        self._txn_max_ops = None
        self._server_version = False  # not asked yet

    @classmethod
    def from_params(cls, params, env=None):
        return cls(**consul_settings(params, env))

    def _query(self, **extra):
        query = {"dc": self.datacenter}
        query.update(extra)
        return query

    @staticmethod
    def _kv_path(key):
        if key.startswith("/"):
            raise ValueError("Consul key %r must not start with '/'" % key)
        return "/v1/kv/" + key

    # -- KV -------------------------------------------------------------------------------
    def kv_get(self, key, consistent=False):
        """One entry (``Value`` decoded to bytes) or None; also returns X-Consul-Index."""
        data, resp = self.http.request_json(
            "GET", self._kv_path(key), query=self._query(consistent="" if consistent else None),
            expect=(200, 404), allow_empty=True)
        index = int(resp.header("x-consul-index", "0") or 0)
        if resp.status == 404 or not data:
            return None, index
        return _decode_entry(data[0]), index

    def kv_list(self, prefix):
        """Every entry under ``prefix`` (recurse; [] when there is none), X-Consul-Index, and
        whether ACLs filtered the listing (X-Consul-Results-Filtered-By-ACLs: it is incomplete)."""
        data, resp = self.http.request_json("GET", self._kv_path(prefix),
                                            query=self._query(recurse=""), expect=(200, 404),
                                            allow_empty=True)
        index = int(resp.header("x-consul-index", "0") or 0)
        filtered = (resp.header("x-consul-results-filtered-by-acls") or "").lower() == "true"
        if resp.status == 404 or not data:
            return [], index, filtered
        return [_decode_entry(e) for e in data], index, filtered

    def kv_put(self, key, value, cas=None, flags=None, acquire=None, release=None):
        """Write ``value`` (bytes or str); returns Consul's true/false (CAS/lock outcome)."""
        if isinstance(value, str):
            value = value.encode("utf-8")
        data = self.http.request_json(
            "PUT", self._kv_path(key),
            query=self._query(cas=cas, flags=flags, acquire=acquire, release=release),
            raw_body=value if value is not None else b"",
            headers={"Content-Type": "application/octet-stream"})[0]
        return data is True

    def kv_delete(self, key, cas=None, recurse=False):
        data = self.http.request_json("DELETE", self._kv_path(key),
                                      query=self._query(cas=cas, recurse="" if recurse else None))[0]
        return data is True

    # -- Transactions -----------------------------------------------------------------------
    def server_version(self):
        """``(major, minor)`` of the Consul agent answering, from ``/v1/agent/self`` (needs
        ``agent:read``), or None when it cannot be read.  Asked once per client."""
        if self._server_version is False:
            self._server_version = None
            try:
                data = self.http.request_json("GET", "/v1/agent/self")[0]
                version = (data.get("Config") or {}).get("Version") or ""
                match = re.match(r"(\d+)\.(\d+)", version)
                if match:
                    self._server_version = (int(match.group(1)), int(match.group(2)))
            except ServiceError:
                pass  # no agent:read: callers fall back to what every version does
        return self._server_version

    def txn_max_ops(self):
        """The server's per-transaction operation limit (64 before Consul 1.14, 128 since)."""
        if self._txn_max_ops is None:
            version = self.server_version()
            self._txn_max_ops = TXN_MAX_OPS if version and version >= (1, 14) else TXN_MAX_OPS_LEGACY
        return self._txn_max_ops

    def acl_filtering_visible(self):
        """``(True, why)`` when a listing that ACLs shortened would be noticed, else ``(False, why)``.

        Consul flags a shortened listing with ``X-Consul-Results-Filtered-By-ACLs`` only from 1.11
        (docs/upstream.md#consul-results-filtered-by-acls); older servers (1.8.7 checked) never send
        it.  So a listing is trusted when the server is known to be 1.11 or later, when ACLs are
        off, or when the token is a management token (nothing is hidden from it); otherwise not.
        """
        version = self.server_version()
        if version is not None and version >= FILTERED_HEADER_SINCE:
            return True, "Consul %d.%d flags listings shortened by ACLs" % version
        resp = self.http.request("GET", "/v1/acl/token/self", query=self._query(),
                                 expect=(200, 401, 403, 404))
        if resp.status == 401 and "disabled" in resp.text().lower():
            return True, "ACLs are disabled on this Consul"
        try:
            data = json.loads(resp.text()) if resp.status == 200 else None
        except ValueError:
            data = None
        if isinstance(data, dict):
            policies = data.get("Policies") or []
            if data.get("Type") == "management" or any(
                    p.get("ID") == GLOBAL_MANAGEMENT_POLICY_ID for p in policies if isinstance(p, dict)):
                return True, "the token is a management token"
        seen = "Consul %d.%d" % version if version else "a Consul whose version this token cannot read"
        return False, ("%s does not say whether ACLs hid keys from a listing (X-Consul-Results-Filtered-By-ACLs "
                       "exists from Consul %d.%d); grant the token agent:read so the version can be checked, or "
                       "use a management token" % ((seen,) + FILTERED_HEADER_SINCE))

    def txn(self, ops):
        """Run one transaction (<= op limit); returns Results or raises ConsulTxnError."""
        url = self.http.url_for("/v1/txn", self._query())
        try:
            data = self.http.request_json("PUT", "/v1/txn", query=self._query(), body=ops)[0]
        except ServiceError as exc:
            if exc.status == 409:
                try:
                    errors = json.loads(exc.body).get("Errors")
                except ValueError:
                    errors = None
                raise ConsulTxnError("PUT", url, errors, exc.body)
            raise
        return data.get("Results") or []

    # -- Sessions and locks -----------------------------------------------------------------
    def session_create(self, name, ttl="30s", lock_delay="15s", behavior="release"):
        body = {"Name": name, "TTL": ttl, "LockDelay": lock_delay, "Behavior": behavior,
                # No serfHealth check: the reaper may run on a host that is no Consul node.
                "NodeChecks": []}
        data = self.http.request_json("PUT", "/v1/session/create", query=self._query(),
                                      body=body)[0]
        return data["ID"]

    def session_renew(self, session_id):
        data = self.http.request_json("PUT", "/v1/session/renew/" + session_id,
                                      query=self._query())[0]
        return data

    def session_destroy(self, session_id):
        data = self.http.request_json("PUT", "/v1/session/destroy/" + session_id,
                                      query=self._query())[0]
        return data is True

    def lock_acquire(self, key, session_id, value=b""):
        return self.kv_put(key, value, acquire=session_id)

    def lock_release(self, key, session_id):
        return self.kv_put(key, None, release=session_id)
