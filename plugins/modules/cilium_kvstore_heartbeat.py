#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cilium_kvstore_heartbeat
short_description: Write the Cilium kvstore heartbeat that etcd-backed agents wait for
version_added: 0.1.0
description:
  - Writes the current time (RFC 3339, UTC) to C(cilium/.heartbeat), as cilium-operator does every minute.
  - Who needs it depends on the Cilium release of the agents using B(etcd) (agents on Consul never check it; writing
    it there is harmless). When an agent that checks it sees no update for more than 2 minutes its quorum check
    fails and, after C(--kvstore-max-consecutive-quorum-errors) more failures, it reports the kvstore as
    C(Failure).
  - B(Up to 1.16) any event on the agent's watch of the key resets its 2-minute timer, including the end of the
    initial listing, so the timer runs from the moment the agent connects. B(1.17 and 1.18.0) start the timer when
    the agent starts and only writes reset it. Clusters of these releases need this module B(every minute)
    (a systemd timer, cron, or an AWX schedule); without Kubernetes there is no operator to write it.
  - B(From 1.18.1) the check runs only for clustermesh clients (an agent's connection to another cluster's
    kvstore); an agent's own kvstore never degrades without a heartbeat. Run it every minute only on a cluster
    whose kvstore other clusters connect to.
  - One request per run (a single C(PUT)). The key is not attached to a lease, so it outlives the writer; agents only
    react to updates, never to the stored time.
  - Several writers are harmless, so no leader lock is taken.
author:
  - netreap.cilium maintainers (@netreap)
extends_documentation_fragment:
  - netreap.cilium._attributes
  - netreap.cilium._attributes.actiongroup_kvstore
  - netreap.cilium._kvstore
  - netreap.cilium._consul
  - netreap.cilium._etcd
options:
  min_interval:
    description:
      - When greater than 0, read the heartbeat first and write only if the stored time is at least this many
        seconds old (or missing, or not a time); the run is then C(changed=false) when it did not write.
        Costs one more request per run. Useful when several hosts run the heartbeat on the same schedule.
      - V(0) (the default) writes on every run, so every run reports C(changed=true) - the point of a heartbeat is
        the write.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    details: Reports the value it would write; writes nothing.
  diff_mode:
    support: none
seealso:
  - module: netreap.cilium.cilium_node_gc
  - module: netreap.cilium.cilium_identity_gc
  - module: netreap.cilium.cilium_agent_info
notes:
  - "Consul ACL: C(key:write) on C(cilium/.heartbeat). etcd: write access to that key."
  - The release rules follow Cilium's etcd client (C(pkg/kvstore/etcd.go)), recorded in the collection's
    docs/upstream.md (Heartbeat per release) and docs/kvstore-gc.md.
"""

EXAMPLES = r"""
- name: Keep etcd-backed Cilium agents healthy (run every minute)
  netreap.cilium.cilium_kvstore_heartbeat:
    kvstore: etcd
    etcd_config: /etc/cilium/etcd.yml

- name: Several schedulers, at most one write per 50 seconds
  netreap.cilium.cilium_kvstore_heartbeat:
    kvstore: etcd
    min_interval: 50
"""

RETURN = r"""
key:
  description: The heartbeat key.
  returned: always
  type: str
  sample: cilium/.heartbeat
value:
  description: The time written (or, when nothing was written, the time found).
  returned: always
  type: str
  sample: "2024-05-01T10:00:00Z"
previous:
  description: The time found before writing; only read when O(min_interval) is set.
  returned: when O(min_interval) is greater than 0
  type: str
  sample: "2024-05-01T09:59:00Z"
requests:
  description: HTTP requests this run made to the kvstore.
  returned: always
  type: dict
  sample: {"kvstore": 1}
"""

import calendar
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import (
    KVSTORE_ARGUMENT_SPEC,
    KVSTORE_REQUESTS,
    kvstore_from_params,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc import HEARTBEAT_KEY
from ansible_collections.netreap.cilium.plugins.module_utils._run import Run


def heartbeat_value(now):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def heartbeat_age(stored, now):
    """Seconds since an RFC 3339 heartbeat (any offset), or None when it is not one."""
    text = (stored or "").strip()
    try:
        base, zone = text[:19], text[19:]
        when = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
        if "." in zone[:1]:  # fractional seconds
            zone = zone.lstrip(".0123456789")
        if zone in ("Z", "z"):
            offset = 0
        elif len(zone) == 6 and zone[0] in "+-" and zone[3] == ":":
            offset = (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * (1 if zone[0] == "+" else -1)
        else:
            return None
        return now - (when - offset)
    except ValueError:
        return None


def plan_heartbeat(previous, now, min_interval):
    """Write unless ``min_interval`` is set and the stored heartbeat is younger than that."""
    age = heartbeat_age(previous, now) if min_interval > 0 else None
    if age is not None and age < min_interval:
        return {"write": False, "value": previous, "previous": previous}
    return {"write": True, "value": heartbeat_value(now), "previous": previous}


def main():
    argument_spec = dict(min_interval=dict(type="int", default=0))
    argument_spec.update(KVSTORE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    min_interval = module.params["min_interval"]
    if min_interval < 0:
        module.fail_json(msg="min_interval must not be negative")
    try:
        kv = kvstore_from_params(module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    run = Run(module, requests=KVSTORE_REQUESTS)
    run.result["key"] = HEARTBEAT_KEY
    now = time.time()

    def read():
        if min_interval <= 0:
            return None  # every run writes: no need to read
        run.doing("read %s from the %s kvstore" % (HEARTBEAT_KEY, kv.name))
        entry = kv.get(HEARTBEAT_KEY)
        return entry.value.decode("utf-8", "replace") if entry is not None else None

    def apply(plan, progress):
        run.doing("write %s to the %s kvstore" % (HEARTBEAT_KEY, kv.name))
        kv.put(HEARTBEAT_KEY, plan["value"])
        progress["written"] = True

    def report(plan, progress):
        out = {"value": plan["value"]}
        if min_interval > 0:
            out["previous"] = plan["previous"]
        return out

    run.execute(read, lambda previous: plan_heartbeat(previous, now, min_interval),
                has_changes=lambda plan: plan["write"], apply=apply, report=report)


if __name__ == "__main__":
    main()
