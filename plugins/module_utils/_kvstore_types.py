# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): kvstore value types and operation constructors.

What the planner (``_kvstore_gc``) produces and the adapter (``_kvstore``) consumes: entries read
from a kvstore, operations grouped into changes, the outcome of a commit, and the pure key
helpers both sides need.  A leaf: it imports nothing that does I/O.
"""

from __future__ import annotations

import base64
from collections import namedtuple

KVEntry = namedtuple("KVEntry", "key value revision")


class Op(namedtuple("Op", "kind key revision value")):
    """One kvstore operation inside a Change.

    kind: ``delete_if`` (delete only while ``key`` has ``revision``), ``delete``, ``put``,
    ``absent_prefix`` (fail the change if any key starts with ``key``; enforced by etcd only,
    Consul transactions have no prefix check).
    """

    __slots__ = ()


def delete_if(key, revision):
    return Op("delete_if", key, int(revision), None)


def delete(key):
    return Op("delete", key, None, None)


def put(key, value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return Op("put", key, None, value)


def absent_prefix(prefix):
    return Op("absent_prefix", prefix, None, None)


Change = namedtuple("Change", "tag ops")


class CommitResult:
    def __init__(self):
        self.done = []          # tags whose every operation committed
        self.conflicts = {}     # tag -> why it was not applied
        self.unconfirmed = []   # tags of a transaction whose outcome is unknown (timeout)
        self.partial = []       # tags split over transactions of which only the first ran
        self.transactions = 0


def decode_label_key(stored, encoded):
    """A label key as stored (base64url in Consul, raw in etcd) -> readable text."""
    if not encoded:
        return stored
    try:
        padded = stored + "=" * (-len(stored) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        return stored


def go_path_clean(path):
    """Go's ``path.Clean``: the shortest equivalent path (``//`` -> ``/``, ``.`` dropped, ``x/..``
    removed, no trailing slash; ``""`` -> ``"."``).  Cilium builds kvstore keys with ``path.Join``
    (which cleans) and Consul's HTTP server redirects any uncleaned ``/v1/kv/...`` path
    (docs/upstream.md#consul-cleans-kv-paths, #cilium-kvstore-value-keys-are-cleaned)."""
    rooted = path.startswith("/")
    out = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."
