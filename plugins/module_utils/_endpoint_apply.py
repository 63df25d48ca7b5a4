# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): the reads and writes of ``cilium_endpoint``
beyond one request each: confirming allocations missing from the node's list, and labelling or
deleting endpoints with 429s retried within the run's deadline."""

from __future__ import annotations

import time

from ansible_collections.netreap.cilium.plugins.module_utils._http import ServiceError, failure_message


def lookup_allocations(nomad, alloc_ids):
    """Confirm allocations missing from the node's list: ``{id: ("found"|"gone"|"error", ...)}``.

    Only Nomad's own 404 (``alloc not found``) means gone.  The list leaves out namespaces the
    token cannot read, and reading such an allocation answers 500/403 (``Unknown allocation``),
    so anything but that 404 keeps the endpoint.
    """
    answers = {}
    for alloc_id in alloc_ids:
        if alloc_id in answers:
            continue
        try:
            answers[alloc_id] = ("found", nomad.allocation(alloc_id))
        except ServiceError as exc:
            if exc.kind == "http" and exc.status == 404 and "not found" in exc.body.lower():
                answers[alloc_id] = ("gone", None)
            else:
                answers[alloc_id] = ("error", failure_message("read allocation %s" % alloc_id, exc))
    return answers


class Applier:
    """Makes the planned writes, each 429 retried within what is left of the run's deadline."""

    def __init__(self, cilium, deadline_at, clock=time.monotonic):
        self.cilium = cilium
        self.deadline_at = deadline_at
        self.clock = clock
        self.errors = []

    def _arm(self):
        """Every change is tried at least once; retries only while the run's deadline lasts."""
        self.cilium.retry_within(self.deadline_at - self.clock())

    def _fail(self, item, action, msg):
        self.errors.append({"id": item["id"], "allocation": item.get("allocation"), "action": action, "msg": msg})

    def label(self, item):
        """True when labelled; None when the endpoint vanished meanwhile; False on failure."""
        what = "label endpoint %s (allocation %s)" % (item["id"], item["allocation"])
        self._arm()
        try:
            self.cilium.patch_endpoint(item["id"], item["request"])
        except ServiceError as exc:
            if exc.kind == "http" and exc.status == 404:
                return None
            self._fail(item, "label", failure_message(what, exc))
            return False
        return True

    def reap(self, item):
        """True when deleted (or already gone); False on failure."""
        what = "delete endpoint %s (allocation %s)" % (item["id"], item["allocation"])
        self._arm()
        try:
            self.cilium.delete_endpoint(item["id"])
        except ServiceError as exc:
            if exc.kind == "http" and exc.status == 404:
                return True  # Nomad's CNI DEL (or the agent's own GC) was faster
            self._fail(item, "reap", failure_message(what, exc))
            return False
        return True
