# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: nomad
short_description: Nomad client nodes (those running Cilium by default) as inventory hosts
version_added: 0.1.0
description:
  - Lists the client nodes of a Nomad cluster and makes each one an inventory host, named after the
    Nomad node name (the name Cilium uses for its kvstore node keys) with C(ansible_host) set to the
    node's address.
  - By default only nodes that fingerprinted the C(cilium-cni) CNI plugin
    (C(attr.plugins.cni.version.cilium-cni)) and whose status is C(ready) are listed, so a play
    never targets a node that is down or does not run Cilium.
  - "One request per 1000 nodes: the selection is sent to Nomad as a server-side C(filter) expression
    on C(GET /v1/nodes) (Nomad applies it to the full node, attributes included, while the list
    itself only carries node stubs). O(cilium_only=false) costs one more request (to tell which nodes
    have Cilium); O(node_details=true) one more per node (C(GET /v1/node/<id>))."
  - "Groups (names sanitised, prefixed with O(group_prefix)): C(<prefix>dc_<datacenter>),
    C(<prefix>class_<node class>) (nodes without a class get none), C(<prefix>pool_<node pool>),
    C(<prefix>status_<status>), and O(cilium_group) for nodes with the C(cilium-cni) fingerprint
    (C(<prefix>without_cilium) for the others when O(cilium_only=false))."
  - "Host variables: C(nomad_node_id), C(nomad_node_name), C(nomad_node_address),
    C(nomad_datacenter), C(nomad_node_class), C(nomad_node_pool), C(nomad_node_status),
    C(nomad_node_eligibility), C(nomad_node_drain), C(nomad_version), C(nomad_cilium_cni) (bool) and,
    with O(node_details=true), C(nomad_cilium_cni_version), C(nomad_node_http_addr), C(nomad_node_meta)
    and C(nomad_node_attributes)."
  - The inventory file must end in C(nomad.yml) or C(nomad.yaml), for example C(cluster.nomad.yml).
author:
  - netreap.cilium maintainers (@netreap)
extends_documentation_fragment:
  - netreap.cilium._nomad
  - netreap.cilium._nomad.plugins
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks this file as a configuration of this plugin.
    required: true
    type: str
    choices: [netreap.cilium.nomad]
  cilium_only:
    description:
      - List only nodes with the C(cilium-cni) fingerprint (C(attr.plugins.cni.version.cilium-cni)).
      - With V(false) every node is listed (for example to provision Cilium on new nodes); nodes without
        the fingerprint go to C(<prefix>without_cilium) instead of O(cilium_group).
    type: bool
    default: true
  statuses:
    description:
      - Node statuses to list. An empty list lists every status.
      - The default lists only C(ready) nodes; a C(down) or C(disconnected) node cannot be reached, and
        C(netreap.cilium.reap) must not wait for it.
    type: list
    elements: str
    choices: [ready, initializing, down, disconnected]
    default: [ready]
  datacenters:
    description: List only nodes in these datacenters (exact names). Empty means all.
    type: list
    elements: str
    default: []
  node_pools:
    description: List only nodes in these node pools (Nomad 1.6 and later). Empty means all.
    type: list
    elements: str
    default: []
  filter:
    description:
      - An additional Nomad filter expression (go-bexpr, applied by Nomad to the full node), combined
        with the other selections by C(and), for example C(Meta["netreap"] != "skip").
    type: str
  node_details:
    description:
      - Read every listed node in full (one more request per node) for the host variables
        C(nomad_cilium_cni_version), C(nomad_node_http_addr), C(nomad_node_meta) and C(nomad_node_attributes).
    type: bool
    default: false
  group_prefix:
    description: Prefix of the datacenter, class, pool and status groups this plugin creates.
    type: str
    default: nomad_
  cilium_group:
    description:
      - Group of the nodes with the C(cilium-cni) fingerprint; C(netreap.cilium.reap) and
        C(netreap.cilium.provision) target C(cilium_nodes) by default. An empty string creates no such group.
    type: str
    default: cilium_nodes
notes:
  - Options set in the inventory file win over the environment variables.
  - O(nomad_address) may name a server or any client agent (which forwards the request). The token needs
    C(node:read); O(nomad_token) may be a template, for example a lookup of a secret store.
  - Several nodes can carry one name (a node re-registered with a new ID after its data directory was wiped);
    the plugin keeps the one in the best status (C(ready) first), then the newest, and warns.
  - With O(cache=true) the node list is kept in the cache plugin and read from Nomad again only when the cache
    expires, the selection options change, or C(--flush-cache) is given. The token is never cached.
seealso:
  - name: netreap.cilium scheduling and inventory guide
    description: How the inventory feeds C(netreap.cilium.reap) on a timer, in AWX or as a Nomad job.
    link: https://github.com/netreap/netreap.cilium/blob/main/docs/inventory.md
"""

EXAMPLES = r"""
# cluster.nomad.yml -- ready nodes running Cilium; token from NOMAD_TOKEN
plugin: netreap.cilium.nomad
nomad_address: https://nomad.service.consul:4646
nomad_ca_cert: /etc/nomad.d/tls/ca.pem

---
# all.nomad.yml -- every ready node, to provision Cilium on the new ones
# (they land in nomad_without_cilium), read in full, cached for 5 minutes
plugin: netreap.cilium.nomad
cilium_only: false
node_details: true
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/cache/netreap/inventory
cache_timeout: 300

---
# edge.nomad.yml -- one datacenter, a custom filter, an SSH user per node class
plugin: netreap.cilium.nomad
datacenters: [edge1]
filter: 'Meta["netreap"] != "skip"'
nomad_token: "{{ lookup('ansible.builtin.file', '/etc/netreap/nomad.token') }}"
compose:
  ansible_user: "'admin' if nomad_node_class == 'gpu' else 'netreap'"
keyed_groups:
  - key: nomad_version
    prefix: nomad_version
"""

import os
import ssl

from urllib.parse import unquote_plus

from ansible.errors import AnsibleParserError
from ansible.inventory.group import to_safe_group_name
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError
from ansible_collections.netreap.cilium.plugins.module_utils._nomad import (
    NomadClient,
    nomad_settings,
)
from ansible_collections.netreap.cilium.plugins.module_utils._options import NOMAD

CILIUM_CNI_ATTRIBUTE = "plugins.cni.version.cilium-cni"
CILIUM_FILTER = 'Attributes["%s"] is not empty' % CILIUM_CNI_ATTRIBUTE
# Best first, when several nodes carry one name.
STATUS_RANK = {"ready": 0, "initializing": 1, "disconnected": 2, "down": 3}
CACHE_FORMAT = 1
CONNECTION_OPTIONS = tuple(NOMAD.names)


def bexpr_string(value):
    """A go-bexpr double-quoted string literal."""
    return '"%s"' % to_text(value).replace("\\", "\\\\").replace('"', '\\"')


def _any_of(selector, values):
    return "(%s)" % " or ".join("%s == %s" % (selector, bexpr_string(v)) for v in values)


def build_filter(cilium_only=True, statuses=None, datacenters=None, node_pools=None, extra=None):
    """The server-side filter expression for GET /v1/nodes (None when nothing is filtered)."""
    parts = []
    if cilium_only:
        parts.append(CILIUM_FILTER)
    if statuses:
        parts.append(_any_of("Status", statuses))
    if datacenters:
        parts.append(_any_of("Datacenter", datacenters))
    if node_pools:
        parts.append(_any_of("NodePool", node_pools))
    if extra and extra.strip():
        parts.append("(%s)" % extra.strip())
    return " and ".join(parts) or None


def node_record(stub, has_cilium, full=None):
    """The cacheable facts about one node: the stub fields, plus the full node's when read."""
    record = {
        "id": stub.get("ID"),
        "name": stub.get("Name"),
        "address": stub.get("Address"),
        "datacenter": stub.get("Datacenter") or "",
        "node_class": stub.get("NodeClass") or "",
        "node_pool": stub.get("NodePool") or "",
        "status": stub.get("Status") or "",
        "eligibility": stub.get("SchedulingEligibility") or "",
        "drain": bool(stub.get("Drain")),
        "version": stub.get("Version") or "",
        "create_index": stub.get("CreateIndex") or 0,
        "cilium_cni": bool(has_cilium),
    }
    if full is not None:
        attributes = full.get("Attributes") or {}
        record["cilium_cni"] = bool(attributes.get(CILIUM_CNI_ATTRIBUTE))
        record["details"] = {
            "cilium_cni_version": attributes.get(CILIUM_CNI_ATTRIBUTE),
            "http_addr": full.get("HTTPAddr"),
            "meta": full.get("Meta") or {},
            "attributes": attributes,
        }
    return record


def pick_one_per_name(records):
    """Keep one node per name (best status, then the newest); returns (kept, dropped)."""
    best = {}
    dropped = []
    for record in records:
        name = record["name"]
        current = best.get(name)
        if current is None:
            best[name] = record
            continue
        key_new = (STATUS_RANK.get(record["status"], 9), -record["create_index"])
        key_old = (STATUS_RANK.get(current["status"], 9), -current["create_index"])
        if key_new < key_old:
            dropped.append(current)
            best[name] = record
        else:
            dropped.append(record)
    kept = sorted(best.values(), key=lambda r: r["name"])
    return kept, dropped


def host_variables(record):
    variables = {
        "ansible_host": record["address"],
        "nomad_node_id": record["id"],
        "nomad_node_name": record["name"],
        "nomad_node_address": record["address"],
        "nomad_datacenter": record["datacenter"],
        "nomad_node_class": record["node_class"],
        "nomad_node_pool": record["node_pool"],
        "nomad_node_status": record["status"],
        "nomad_node_eligibility": record["eligibility"],
        "nomad_node_drain": record["drain"],
        "nomad_version": record["version"],
        "nomad_cilium_cni": record["cilium_cni"],
    }
    details = record.get("details")
    if details is not None:
        variables.update({
            "nomad_cilium_cni_version": details["cilium_cni_version"],
            "nomad_node_http_addr": details["http_addr"],
            "nomad_node_meta": details["meta"],
            "nomad_node_attributes": details["attributes"],
        })
    return variables


def group_names(record, prefix, cilium_group, cilium_only):
    """The groups of one node; names are sanitised like Ansible's own (invalid characters -> _)."""
    raw = [prefix + "dc_" + record["datacenter"], prefix + "status_" + record["status"]]
    if record["node_class"]:
        raw.append(prefix + "class_" + record["node_class"])
    if record["node_pool"]:
        raw.append(prefix + "pool_" + record["node_pool"])
    if record["cilium_cni"]:
        if cilium_group:
            raw.append(cilium_group)
    elif not cilium_only:
        raw.append(prefix + "without_cilium")
    return [to_safe_group_name(name, force=True, silent=True) for name in raw]


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "netreap.cilium.nomad"

    def verify_file(self, path):
        if not super().verify_file(path):
            return False
        if path.endswith(("nomad.yml", "nomad.yaml")):
            return True
        self.display.vvv("netreap.cilium.nomad: skipping %s, the file name must end in nomad.yml or nomad.yaml"
                         % path)
        return False

    # -- options -----------------------------------------------------------------------------

    def _connection_params(self):
        params = {}
        for name in CONNECTION_OPTIONS:
            value = self.get_option(name)
            # An empty value counts as unset: AWX injects NOMAD_CACERT="" and the like for the
            # inputs a credential leaves empty.
            if value is not None and value != "":
                params[name] = value
        token = params.get("nomad_token")
        if isinstance(token, str) and self.templar.is_template(token):
            params["nomad_token"] = self.templar.template(token)
        return params

    def _selection(self):
        return {
            "cilium_only": bool(self.get_option("cilium_only")),
            "statuses": list(self.get_option("statuses") or []),
            "datacenters": list(self.get_option("datacenters") or []),
            "node_pools": list(self.get_option("node_pools") or []),
            "filter": self.get_option("filter") or None,
            "node_details": bool(self.get_option("node_details")),
        }

    # -- Nomad -------------------------------------------------------------------------------

    @staticmethod
    def _client(settings):
        try:
            return NomadClient(**settings)
        except (ValueError, OSError, ssl.SSLError) as exc:
            raise AnsibleParserError("netreap.cilium.nomad: invalid Nomad TLS settings: %s" % to_text(exc))

    def _fetch(self, client, selection):
        base_filter = build_filter(False, selection["statuses"], selection["datacenters"],
                                   selection["node_pools"], selection["filter"])
        if selection["cilium_only"]:
            stubs = client.nodes(build_filter(True, selection["statuses"], selection["datacenters"],
                                              selection["node_pools"], selection["filter"]))
            with_cilium = {stub.get("ID") for stub in stubs}
        else:
            stubs = client.nodes(base_filter)
            with_cilium = None
            if not selection["node_details"]:
                # One more list, same selection plus the fingerprint: which nodes have Cilium.
                cilium_expr = CILIUM_FILTER if base_filter is None else "%s and %s" % (CILIUM_FILTER, base_filter)
                with_cilium = {stub.get("ID") for stub in client.nodes(cilium_expr)}
        records = []
        for stub in stubs:
            full = client.node(stub["ID"]) if selection["node_details"] else None
            records.append(node_record(stub, with_cilium is not None and stub.get("ID") in with_cilium, full))
        return records

    def _load_records(self, settings, selection, path, cache):
        query = dict(selection, base_url=settings["base_url"], unix_socket=settings["unix_socket"],
                     region=settings["region"])
        cache_key = self.get_cache_key(path)
        use_cache = bool(self.get_option("cache"))
        if use_cache and cache:
            try:
                cached = self._cache[cache_key]
            except KeyError:
                cached = None
            if isinstance(cached, dict) and cached.get("format") == CACHE_FORMAT and cached.get("query") == query:
                return cached["nodes"]
        client = self._client(settings)
        try:
            records = self._fetch(client, selection)
        except ServiceError as exc:
            raise AnsibleParserError(self._failure(exc))
        if use_cache:
            self._cache[cache_key] = {"format": CACHE_FORMAT, "query": query, "nodes": records}
        return records

    @staticmethod
    def _failure(exc):
        if exc.kind == "http":
            detail = "HTTP %s: %s" % (exc.status, exc.body.strip() or "(empty body)")
            if getattr(exc, "hint", None):
                detail += " (%s)" % exc.hint
        else:
            detail = exc.describe().split(": ", 1)[-1]
        # The URL is shown decoded, so the filter expression reads as written.
        return "netreap.cilium.nomad: cannot list the Nomad client nodes: Nomad %s %s -> %s" % (
            exc.method, unquote_plus(exc.url), detail)

    # -- inventory ---------------------------------------------------------------------------

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            # Options already carry their NOMAD_* fallbacks (the `env:` entries above); the
            # environment is passed for NOMAD_SKIP_VERIFY, which inverts nomad_validate_certs.
            settings = nomad_settings(self._connection_params(), env=os.environ)
        except ValueError as exc:
            raise AnsibleParserError("netreap.cilium.nomad: invalid Nomad connection settings: %s" % to_text(exc))
        records = self._load_records(settings, self._selection(), path, cache)
        kept, dropped = pick_one_per_name(records)
        for record in dropped:
            self.display.warning(
                "netreap.cilium.nomad: Nomad has several nodes named %s; skipping node %s (status %s)"
                % (record["name"], record["id"], record["status"]))
        self._populate(kept)

    def _populate(self, records):
        prefix = self.get_option("group_prefix") or ""
        cilium_group = self.get_option("cilium_group") or ""
        cilium_only = bool(self.get_option("cilium_only"))
        strict = self.get_option("strict")
        for record in records:
            host = record["name"]
            self.inventory.add_host(host)
            variables = host_variables(record)
            for key, value in variables.items():
                self.inventory.set_variable(host, key, value)
            for group in group_names(record, prefix, cilium_group, cilium_only):
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)
