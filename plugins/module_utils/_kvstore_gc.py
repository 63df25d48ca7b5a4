# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): pure planners for kvstore garbage collection.

No I/O here: the modules read the kvstore and Nomad, hand the data to ``plan_node_gc`` or
``plan_identity_gc`` and apply the returned changes through ``_kvstore``.  Unit tests aim here.

Two-pass rule (both planners): a run never deletes what it first sees as garbage; it writes a
*mark* ``{since, revision}`` under ``<gc_state_prefix>/`` in the same kvstore.  A later run
deletes the key only if it is still garbage, its mark is at least ``min_age`` seconds old, and
the key's revision is the one that was marked (a key written in between is marked again).  A
key that stops being garbage loses its mark.
"""

from __future__ import annotations

import base64
import json
import re
import time

from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_types import (
    Change,
    absent_prefix,
    decode_label_key,
    delete_if,
    go_path_clean,
    put,
)

NODES_PREFIX = "cilium/state/nodes/v1/"
IDS_PREFIX = "cilium/state/identities/v1/id/"
VALUES_PREFIX = "cilium/state/identities/v1/value/"
IPCACHE_PREFIX = "cilium/state/ip/v1/default/"
HEARTBEAT_KEY = "cilium/.heartbeat"
MIN_IDENTITY = 256  # below: reserved identities, never in the kvstore
HOST_IP_TYPES = ("InternalIP", "ExternalIP")


# -- keys and marks -------------------------------------------------------------------------
def node_prefix(cluster_name):
    return "%s%s/" % (NODES_PREFIX, cluster_name)


def node_marks_prefix(state_prefix, cluster_name):
    return "%s/nodes/%s/" % (state_prefix.rstrip("/"), cluster_name)


def identity_marks_prefix(state_prefix):
    return "%s/identities/" % state_prefix.rstrip("/")


def mark_value(now, revision, reason, key):
    """What a mark stores: when the key was first seen as garbage, at which revision, and why."""
    return json.dumps({"since": round(float(now), 3), "revision": int(revision), "reason": reason,
                       "key": key}, sort_keys=True).encode("utf-8")


def parse_mark(entry):
    """A mark entry -> ``{since, revision, reason, key}``, or None if it is not one of ours."""
    if entry is None:
        return None
    try:
        data = json.loads(entry.value.decode("utf-8"))
        return {"since": float(data["since"]), "revision": int(data["revision"]),
                "reason": data.get("reason"), "key": data.get("key")}
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError):
        return None


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def seconds(value):
    return "%ds" % int(round(value))


def delete_cap_refusal(count, total, max_delete, max_delete_percent, noun):
    """The message that stops a run deleting more than the caps allow, or None."""
    if count == 0:
        return None
    if max_delete is not None and count > max_delete:
        return ("refusing to delete %d %s: more than max_delete=%d. Nothing was deleted; check "
                "why so many look stale, then raise max_delete if this is expected"
                % (count, noun, max_delete))
    if max_delete_percent is not None and total and count * 100.0 / total > max_delete_percent:
        return ("refusing to delete %d of %d %s (%.0f%%): more than max_delete_percent=%g. Nothing "
                "was deleted; check why so many look stale, then raise max_delete_percent if this "
                "is expected" % (count, total, noun, count * 100.0 / total, max_delete_percent))
    return None


def rate_windows(count, rate_limit):
    """Sizes of the consecutive deletion windows (at most ``rate_limit`` each; 0 = unlimited)."""
    if count <= 0:
        return []
    if not rate_limit or rate_limit <= 0 or count <= rate_limit:
        return [count]
    return [min(rate_limit, count - start) for start in range(0, count, rate_limit)]


def identity_range(cluster_id=0, max_connected_clusters=255):
    """Identities this cluster allocates (docs/upstream.md#kvstore-identity-keys): 256..65535 for cluster ID 0."""
    bits = 15 if max_connected_clusters == 511 else 16
    if cluster_id == 0:
        return MIN_IDENTITY, (1 << bits) - 1
    return cluster_id << bits, ((cluster_id + 1) << bits) - 1


class Plan:
    """What a GC run would do.

    ``actions``: ``{tag, action: delete|mark|unmark, item, change}`` where ``item`` is what the
    module reports and ``change`` the kvstore Change applying it; ``kept``: report items for
    what stays and why; ``refusal``: a guard's message (nothing may be written); ``counts``.
    """

    def __init__(self):
        self.actions = []
        self.kept = []
        self.refusal = None
        self.counts = {}

    def add(self, action, item, ops):
        tag = "%s:%d" % (action, len(self.actions))
        self.actions.append({"tag": tag, "action": action, "item": item, "change": Change(tag, ops)})

    def of(self, action):
        return [a for a in self.actions if a["action"] == action]

    @property
    def changes(self):
        return [a["change"] for a in self.actions]


def _mark_step(plan, now, min_age, entry, mark_entry, mark_key, item, reason):
    """Shared two-pass decision for one garbage key: mark, re-mark, keep waiting, or delete.

    Returns the ops of a deletion (the caller adds its own extra ops) or None."""
    mark = parse_mark(mark_entry)
    if mark is None:
        item = dict(item, reason=reason, mark_key=mark_key)
        plan.add("mark", item, [put(mark_key, mark_value(now, entry.revision, reason, entry.key))])
        return None
    if mark["revision"] != entry.revision:
        why = "%s; written since it was marked, marking again" % reason
        item = dict(item, reason=why, mark_key=mark_key)
        plan.add("mark", item, [put(mark_key, mark_value(now, entry.revision, reason, entry.key))])
        return None
    age = now - mark["since"]
    if age < min_age:
        plan.kept.append(dict(item, reason="%s; marked %s ago, deleted once marked for min_age=%s"
                              % (reason, seconds(age), seconds(min_age)),
                              marked_since=iso(mark["since"])))
        return None
    return mark


# -- node GC --------------------------------------------------------------------------------
def node_host_ips(value):
    """The node's InternalIP/ExternalIP addresses from its Node JSON, or None if unreadable."""
    try:
        node = json.loads(value.decode("utf-8"))
        return {a["IP"] for a in node.get("IPAddresses") or []
                if a.get("Type") in HOST_IP_TYPES and a.get("IP")}
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError):
        return None


def node_value_problem(name, value):
    """``(keep, reason)`` when a node key's value is not the Cilium node JSON of that node (it was
    not written by an agent for this key: never collected), else None."""
    try:
        node = json.loads(value.decode("utf-8"))
    except (ValueError, AttributeError, UnicodeError):
        return "keep", "value is not Cilium node JSON: left alone (not written by an agent)"
    if not isinstance(node, dict) or "Name" not in node:
        return "keep", "value is not Cilium node JSON (no Name): left alone (not written by an agent)"
    if node["Name"] != name:
        return "keep", ("value names node %r, not %r as its key does: left alone (not written by an agent "
                        "for this key)" % (node["Name"], name))
    return None


def node_verdict(nomad_nodes, now, down_after):
    """``(gone|live|keep, reason)`` for one node name against Nomad's nodes of that name."""
    if not nomad_nodes:
        return "gone", "not known to Nomad"
    statuses = sorted({n.get("Status") or "unknown" for n in nomad_nodes})
    up = [s for s in statuses if s not in ("down", "disconnected")]
    if up:
        return "live", "known to Nomad (%s)" % ", ".join(up)
    if "disconnected" in statuses:
        return "keep", "disconnected in Nomad (disconnected nodes are never collected)"
    if down_after is None:
        return "keep", "down in Nomad (set down_after to collect nodes down for long)"
    updated = [n.get("StatusUpdatedAt") for n in nomad_nodes]
    if any(u is None for u in updated):
        return "keep", "down in Nomad since an unknown time"
    age = now - max(updated)
    if age > down_after:
        return "gone", "down in Nomad since %s (longer than down_after=%s)" % (
            iso(max(updated)), seconds(down_after))
    return "keep", "down in Nomad for %s (down_after=%s not reached)" % (
        seconds(age), seconds(down_after))


def plan_node_purge(entry, remaining_ips, ipcache, values):
    """Ops and report for a deleted node's other state: ipcache entries whose HostIP is one of
    its IPs and identity value keys with its IP as suffix.  IPs that a remaining node key also
    carries, or that a node Nomad still knows has (an address reused by a live node), are never
    purged."""
    ips = node_host_ips(entry.value)
    if ips is None:
        return [], [], "node value is not Cilium node JSON: nothing purged"
    shared = sorted(ips & remaining_ips)
    ips = ips - remaining_ips
    ops, keys = [], []
    for item in ipcache:
        try:
            host_ip = json.loads(item.value.decode("utf-8")).get("HostIP")
        except (ValueError, AttributeError, UnicodeError):
            continue
        if host_ip in ips:
            ops.append(delete_if(item.key, item.revision))
            keys.append(item.key)
    for item in values:
        if item.key.rsplit("/", 1)[-1] in ips:
            ops.append(delete_if(item.key, item.revision))
            keys.append(item.key)
    note = None
    if shared:
        note = "not purged: %s also belongs to a remaining node" % ", ".join(shared)
    return ops, keys, note


def plan_node_gc(kv_nodes, nomad_nodes, marks, now, cluster_name="default", min_age=300,
                 down_after=None, max_delete=None, max_delete_percent=None,
                 state_prefix="netreap/gc/v1", purge=None):
    """Plan one node-GC run.

    kv_nodes: KVEntry list under ``cilium/state/nodes/v1/<cluster_name>/``; nomad_nodes: Nomad
    node stubs (``Name``, ``Status``; ``StatusUpdatedAt`` for down nodes when ``down_after`` is
    set); marks: KVEntry list under the node marks prefix; purge: None, or
    ``{"ipcache": [...], "values": [...]}`` to also delete a deleted node's other state.
    """
    plan = Plan()
    prefix = node_prefix(cluster_name)
    mprefix = node_marks_prefix(state_prefix, cluster_name)
    nodes = {}
    for entry in kv_nodes:
        name = entry.key[len(prefix):] if entry.key.startswith(prefix) else ""
        if not name or "/" in name:
            plan.kept.append({"name": None, "key": entry.key,
                              "reason": "not a node key of cluster %s" % cluster_name})
            continue
        nodes[name] = entry
    mark_entries = {m.key[len(mprefix):]: m for m in marks if m.key.startswith(mprefix)}
    by_name = {}
    for node in nomad_nodes:
        by_name.setdefault(node.get("Name"), []).append(node)
    plan.counts = {"kvstore_nodes": len(nodes), "nomad_nodes": len(nomad_nodes), "live": 0}
    if nodes and not nomad_nodes:
        plan.refusal = ("refusing to act: Nomad lists no nodes while the kvstore holds %d node keys "
                        "under %s (a Nomad token without node:read, the wrong region or a Nomad "
                        "that lost its state looks like this). Nothing was changed"
                        % (len(nodes), prefix))
        return plan
    verdicts = {name: (node_value_problem(name, nodes[name].value)
                       or node_verdict(by_name.get(name), now, down_after)) for name in nodes}
    to_delete = []
    for name in sorted(nodes):
        entry = nodes[name]
        verdict, reason = verdicts[name]
        mark_key = mprefix + name
        item = {"name": name, "key": entry.key}
        if verdict != "gone":
            if verdict == "live":
                plan.counts["live"] += 1
            else:
                plan.kept.append(dict(item, reason=reason))
            if name in mark_entries:
                plan.add("unmark", dict(item, mark_key=mark_key,
                                        reason="no longer a candidate: %s" % reason),
                         [delete_if(mark_key, mark_entries[name].revision)])
            continue
        mark = _mark_step(plan, now, min_age, entry, mark_entries.get(name), mark_key, item, reason)
        if mark is not None:
            to_delete.append((name, entry, mark, reason))
    for name in sorted(set(mark_entries) - set(nodes)):
        plan.add("unmark", {"name": name, "key": prefix + name, "mark_key": mprefix + name,
                            "reason": "the node key is gone"},
                 [delete_if(mprefix + name, mark_entries[name].revision)])
    deleting = {name for name, unused_entry, unused_mark, unused_reason in to_delete}
    remaining_ips = set()
    for name, entry in nodes.items():
        if name not in deleting:
            remaining_ips |= node_host_ips(entry.value) or set()
    # ... and every address of a node Nomad still knows (other than the ones being deleted):
    # its agent may not have written its node key yet, its state is never purged.
    remaining_ips |= {n.get("Address") for n in nomad_nodes
                      if n.get("Address") and n.get("Name") not in deleting}
    for name, entry, mark, reason in to_delete:
        mark_key = mprefix + name
        ops, purged, note = [], [], None
        if purge is not None:
            ops, purged, note = plan_node_purge(entry, remaining_ips, purge.get("ipcache") or [],
                                                purge.get("values") or [])
        # The node key goes last: if a long change is split, the node stays until all is purged.
        ops += [delete_if(mark_key, mark_entries[name].revision), delete_if(entry.key, entry.revision)]
        item = {"name": name, "key": entry.key, "reason": reason, "mark_key": mark_key,
                "marked_since": iso(mark["since"])}
        if purge is not None:
            item["purged"] = purged
            if note:
                item["purge_note"] = note
        plan.add("delete", item, ops)
    plan.counts["candidates"] = sum(1 for v, unused in verdicts.values() if v == "gone")
    plan.refusal = delete_cap_refusal(len(to_delete), len(nodes), max_delete, max_delete_percent,
                                      "node keys")
    return plan


# -- identity GC ----------------------------------------------------------------------------
def value_users(value_entries):
    """``{value key prefix: [content, ...]}``: for every value key, the part before its last
    ``/`` (label keys may contain ``/``; node suffixes do not) and what the key holds."""
    users = {}
    for entry in value_entries:
        if entry.key.startswith(VALUES_PREFIX) and "/" in entry.key[len(VALUES_PREFIX):]:
            users.setdefault(entry.key.rsplit("/", 1)[0], []).append(
                entry.value.decode("utf-8", "replace"))
    return users


def value_prefix_of(stored):
    """Where Cilium writes the value keys of a label key (as stored: raw in etcd, base64url in
    Consul): ``path.Join(value prefix, label key)``, which cleans the path -- ``//`` becomes
    ``/``, ``.`` and ``x/..`` segments go (docs/upstream.md#cilium-kvstore-value-keys-are-cleaned).
    None when cleaning leads out of the value prefix (no value key of it can be listed)."""
    cleaned = go_path_clean(VALUES_PREFIX + stored)
    if not cleaned.startswith(VALUES_PREFIX) or len(cleaned) == len(VALUES_PREFIX):
        return None
    return cleaned


def value_must_match_id(cilium_version):
    """Whether the operator of this Cilium release counts a value key as a user only when it
    holds the identity's ID: from 1.18.6 and in 1.19 (docs/upstream.md#cilium-value-equals-id).
    ``cilium_version`` is ``"1.18.6"``-like, or None (unknown: every value key counts, as before
    1.18.6 -- that never deletes an identity an agent of any release still uses)."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", cilium_version or "")
    if not match:
        return False
    major, minor, patch = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    return (major, minor, patch) >= (1, 18, 6)


_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+:.")  # source:key[=value]


def label_key_problem(stored, encoded):
    """Why a master key's value is not a label key (``source:key=value;`` ..., base64url-encoded
    in Consul), or None."""
    text = stored
    if encoded:
        try:
            if not _BASE64URL.match(stored) or len(stored) % 4 == 1:
                raise ValueError(stored)
            text = base64.urlsafe_b64decode((stored + "=" * (-len(stored) % 4)).encode("ascii")).decode("utf-8")
        except (ValueError, UnicodeError):
            return "%r is not base64url-encoded (Consul stores label keys base64url-encoded)" % stored[:80]
    labels = [part for part in text.split(";") if part]
    if not labels or not all(_LABEL.match(part) for part in labels):
        return "%r is not a label key (source:key=value;...)" % text[:80]
    return None


def plan_identity_gc(id_entries, value_entries, marks, now, id_range=(MIN_IDENTITY, 65535),
                     encoded=False, min_age=900, max_delete=None, max_delete_percent=None,
                     state_prefix="netreap/gc/v1", match_id=False):
    """Plan one identity-GC run (cilium-operator's mark/sweep, docs/upstream.md#kvstore-identity-gc).

    id_entries: master keys ``cilium/state/identities/v1/id/<id>`` (value = label key, base64url
    in Consul: ``encoded``); value_entries: every key under ``.../value/``; marks: KVEntry list
    under the identity marks prefix.  An identity is in use while any value key sits right under
    its label key's value prefix after Go's path cleaning (``value_prefix_of``); with
    ``match_id`` (Cilium 1.18.6+) only a value key holding the identity's ID counts.  Deletion
    also requires (etcd) that still no value key exists under that prefix at commit time.
    """
    plan = Plan()
    mprefix = identity_marks_prefix(state_prefix)
    users = value_users(value_entries)
    mark_entries = {m.key[len(mprefix):]: m for m in marks if m.key.startswith(mprefix)}
    low, high = id_range
    in_range, in_use, to_delete = 0, 0, []
    seen = set()
    for entry in id_entries:
        raw_id = entry.key[len(IDS_PREFIX):] if entry.key.startswith(IDS_PREFIX) else ""
        if not raw_id.isdigit():
            plan.kept.append({"id": None, "key": entry.key, "reason": "not an identity key"})
            continue
        identity = int(raw_id)
        stored = entry.value.decode("utf-8", "replace")
        item = {"id": identity, "key": entry.key, "labels": decode_label_key(stored, encoded)}
        mark_key = mprefix + raw_id
        seen.add(raw_id)
        if not low <= identity <= high:
            why = "outside this cluster's identity range %d-%d" % (low, high)
            plan.kept.append(dict(item, reason=why))
            if raw_id in mark_entries:
                plan.add("unmark", dict(item, mark_key=mark_key, reason=why),
                         [delete_if(mark_key, mark_entries[raw_id].revision)])
            continue
        in_range += 1
        if not stored:
            plan.kept.append(dict(item, reason="master key has no label key"))
            continue
        problem = label_key_problem(stored, encoded)
        if problem:
            plan.kept.append(dict(item, reason="master key value %s: left alone" % problem))
            continue
        vprefix = value_prefix_of(stored)
        if vprefix is None:
            plan.kept.append(dict(item, reason="label key leaves the value prefix after path cleaning: "
                                               "its users cannot be listed, left alone"))
            continue
        holders = users.get(vprefix, [])
        if match_id:
            holders = [v for v in holders if v == raw_id]
        if holders:
            in_use += 1
            if raw_id in mark_entries:
                plan.add("unmark", dict(item, mark_key=mark_key, reason="in use again"),
                         [delete_if(mark_key, mark_entries[raw_id].revision)])
            continue
        reason = "unused: no value key refers to it"
        if match_id and users.get(vprefix):
            reason = "unused: no value key holds its ID (%s, Cilium 1.18.6+ rule)" % raw_id
        mark = _mark_step(plan, now, min_age, entry, mark_entries.get(raw_id), mark_key, item, reason)
        if mark is not None:
            to_delete.append((raw_id, entry, stored, mark, item, reason))
    for raw_id in sorted(set(mark_entries) - seen):
        plan.add("unmark", {"id": int(raw_id) if raw_id.isdigit() else None,
                            "key": IDS_PREFIX + raw_id, "mark_key": mprefix + raw_id,
                            "reason": "the identity is gone"},
                 [delete_if(mprefix + raw_id, mark_entries[raw_id].revision)])
    for raw_id, entry, stored, mark, item, reason in to_delete:
        mark_key = mprefix + raw_id
        vprefix = value_prefix_of(stored)
        # etcd: no value key may have appeared since the listing.  Under the 1.18.6 rule value
        # keys holding another ID may stay; then that check cannot be made (as on Consul).
        guard = [] if users.get(vprefix) else [absent_prefix(vprefix + "/")]
        ops = guard + [delete_if(mark_key, mark_entries[raw_id].revision),
                       delete_if(entry.key, entry.revision)]
        plan.add("delete", dict(item, reason=reason, mark_key=mark_key,
                                marked_since=iso(mark["since"])), ops)
    plan.counts = {"identities": in_range, "in_use": in_use, "unused": in_range - in_use,
                   "out_of_range": sum(1 for k in plan.kept if "outside" in k["reason"])}
    plan.refusal = delete_cap_refusal(len(to_delete), in_range, max_delete, max_delete_percent,
                                      "identities")
    return plan
