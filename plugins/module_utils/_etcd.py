# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): etcd v3 client over etcd's JSON gateway.

Keys and values travel base64-encoded in JSON (``/v3/kv/range``, ``put``, ``deleterange``,
``txn``, ``/v3/lease/*``).  Settings may come from the same ``etcd.config`` YAML file the Cilium
agent reads; that file's small shape is parsed here so targets need no PyYAML.
"""

from __future__ import annotations

import base64
import os

from ansible_collections.netreap.cilium.plugins.module_utils._http import (
    HttpClient,
    ServiceError,
    parse_address,
)
from ansible_collections.netreap.cilium.plugins.module_utils._options import ETCD, resolve

DEFAULT_TIMEOUT = ETCD.option("etcd_timeout").default
# etcd's default --max-txn-ops.
TXN_MAX_OPS = 128

ETCD_ARGUMENT_SPEC = ETCD.argument_spec()

_CONFIG_KEYS = {"endpoints", "trusted-ca-file", "cert-file", "key-file", "username", "password",
                "insecure-skip-tls-verify", "insecure-transport", "dial-timeout"}


def _scalar(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in ("'", '"'):
        return text[1:-1]
    if " #" in text:
        text = text.split(" #", 1)[0].strip()
    return text


def parse_etcd_config(text):
    """Parse the etcd client YAML Cilium uses (``endpoints`` list plus ``key: value`` scalars).

    Supports block lists (``- url``) and flow lists (``[a, b]``), quotes and comments; raises
    ValueError naming the line for anything else, instead of guessing.
    """
    result = {}
    current_list = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0] if raw.lstrip().startswith("#") else raw
        if not line.strip() or line.strip() == "---":
            continue
        stripped = line.strip()
        if stripped.startswith("- ") or stripped == "-":
            if current_list is None:
                raise ValueError("etcd config line %d: list item outside a list: %r" % (number, raw))
            result[current_list].append(_scalar(stripped[1:]))
            continue
        if ":" not in stripped or line[0] in (" ", "\t"):
            raise ValueError("etcd config line %d: expected 'key: value': %r" % (number, raw))
        key, value = stripped.split(":", 1)
        key = key.strip()
        value = value.strip()
        current_list = None
        if key == "endpoints":
            if not value:
                result[key] = []
                current_list = key
            elif value.startswith("[") and value.endswith("]"):
                result[key] = [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
            else:
                result[key] = [_scalar(value)]
        else:
            result[key] = _scalar(value)
    unknown = sorted(set(result) - _CONFIG_KEYS)
    if unknown:
        result["_ignored"] = unknown
    return result


def etcd_settings(params, env=None):
    """The client's settings from the options of ``ETCD``: task options, then the etcd.config
    file the agent uses, then ETCDCTL_* variables (see ``_options.resolve``)."""
    file_conf = {}
    config_path = params.get("etcd_config")
    if config_path:
        try:
            with open(config_path, "r") as handle:
                file_conf = parse_etcd_config(handle.read())
        except (IOError, OSError) as exc:
            raise ValueError("cannot read etcd config %s: %s" % (config_path, exc))
    sources = {}
    values = resolve(ETCD, params, os.environ if env is None else env, config=file_conf, sources=sources)
    password = values["etcd_password"]
    # The password part of ETCDCTL_USER belongs to that user only.
    if sources["etcd_password"] == "env:ETCDCTL_USER" and sources["etcd_username"] != "env:ETCDCTL_USER":
        password = None
    return dict(
        endpoints=values["etcd_endpoints"],
        ca_file=values["etcd_ca_cert"],
        client_cert=values["etcd_client_cert"],
        client_key=values["etcd_client_key"],
        username=values["etcd_username"],
        password=password,
        validate_certs=values["etcd_validate_certs"],
        tls_server_name=values["etcd_tls_server_name"],
        timeout=values["etcd_timeout"],
    )


def b64(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    return base64.b64decode(text) if text else b""


def prefix_range_end(prefix):
    """The ``range_end`` that selects every key starting with ``prefix``."""
    data = bytearray(prefix.encode("utf-8") if isinstance(prefix, str) else prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\x00"


def _decode_kv(kv):
    return dict(key=unb64(kv.get("key")).decode("utf-8", "surrogateescape"),
                value=unb64(kv.get("value")),
                create_revision=int(kv.get("create_revision", 0)),
                mod_revision=int(kv.get("mod_revision", 0)),
                version=int(kv.get("version", 0)),
                lease=int(kv.get("lease", 0)))


class EtcdClient:
    """etcd v3 through the gRPC JSON gateway; tries endpoints in order on connection refused."""

    def __init__(self, endpoints, ca_file=None, client_cert=None, client_key=None, username=None,
                 password=None, validate_certs=True, tls_server_name=None, timeout=DEFAULT_TIMEOUT):
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        self.clients = []
        for endpoint in endpoints:
            base_url, unix_socket = parse_address(endpoint, 2379)
            self.clients.append(HttpClient(
                "etcd", base_url, unix_socket=unix_socket, timeout=timeout,
                validate_certs=validate_certs, ca_file=ca_file, client_cert=client_cert,
                client_key=client_key, tls_server_name=tls_server_name, retries=0))
        self.username = username
        self.password = password
        self._token = None

    @classmethod
    def from_params(cls, params, env=None):
        return cls(**etcd_settings(params, env))

    @property
    def request_count(self):
        return sum(c.request_count for c in self.clients)

    def _authenticate(self, client):
        data = client.request_json("POST", "/v3/auth/authenticate",
                                   body={"name": self.username, "password": self.password})[0]
        self._token = data.get("token")

    def call(self, path, body):
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that accepts connections."""
        last_error = None
        for client in self.clients:
            try:
                if self.username and self._token is None:
                    self._authenticate(client)
                headers = {"Authorization": self._token} if self._token else None
                return client.request_json("POST", "/v3/" + path, body=body, headers=headers)[0]
            except ServiceError as exc:
                if exc.kind in ("refused", "transport"):
                    last_error = exc
                    continue
                raise
        raise last_error

    # -- KV -------------------------------------------------------------------------------
    def get(self, key):
        data = self.call("kv/range", {"key": b64(key)})
        kvs = data.get("kvs") or []
        return _decode_kv(kvs[0]) if kvs else None

    def list_prefix(self, prefix, keys_only=False):
        """Every key under ``prefix`` with value and revisions; plus the store revision."""
        body = {"key": b64(prefix), "range_end": b64(prefix_range_end(prefix))}
        if keys_only:
            body["keys_only"] = True
        data = self.call("kv/range", body)
        revision = int((data.get("header") or {}).get("revision", 0))
        return [_decode_kv(kv) for kv in data.get("kvs") or []], revision

    def put(self, key, value, lease=None):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self.call("kv/put", body)

    def delete(self, key):
        data = self.call("kv/deleterange", {"key": b64(key)})
        return int(data.get("deleted", 0))

    def txn(self, compare, success, failure=None):
        """Raw txn; returns ``(succeeded, responses)``."""
        data = self.call("kv/txn", {"compare": compare, "success": success,
                                    "failure": failure or []})
        return bool(data.get("succeeded")), data.get("responses") or []

    def delete_if_unchanged(self, items, max_ops=TXN_MAX_OPS):
        """Delete ``(key, mod_revision)`` pairs in transactions of at most ``max_ops``.

        Each batch deletes only if every key still has the revision we planned with; a batch
        whose compare fails deletes nothing and is reported.  Returns
        ``(deleted_keys, conflicted_keys, batches)``.
        """
        deleted, conflicted, batches = [], [], 0
        for start in range(0, len(items), max_ops):
            chunk = items[start:start + max_ops]
            compare = [{"key": b64(k), "target": "MOD", "result": "EQUAL",
                        "mod_revision": str(rev)} for k, rev in chunk]
            success = [{"request_delete_range": {"key": b64(k)}} for k, unused_rev in chunk]
            ok = self.txn(compare, success)[0]
            batches += 1
            (deleted if ok else conflicted).extend(k for k, unused_rev in chunk)
        return deleted, conflicted, batches

    # -- leases ---------------------------------------------------------------------------
    def lease_grant(self, ttl):
        data = self.call("lease/grant", {"TTL": str(int(ttl))})
        return int(data["ID"])

    def lease_keepalive(self, lease_id):
        """Renew a lease once; returns its remaining TTL in seconds (0: it has expired)."""
        data = self.call("lease/keepalive", {"ID": str(lease_id)})
        return int((data.get("result") or data).get("TTL", 0) or 0)

    def lease_revoke(self, lease_id):
        self.call("lease/revoke", {"ID": str(lease_id)})

    def create_if_absent(self, key, value, lease=None):
        """Put ``key`` only if it does not exist (create_revision == 0); True when created."""
        put = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        compare = [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}]
        return self.txn(compare, [{"request_put": put}])[0]
