#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cilium_endpoint
short_description: Label Cilium endpoints with Nomad metadata and reap endpoints whose allocation is gone
version_added: 0.1.0
description:
  - Runs on a Nomad client. Reads the local Cilium agent's endpoints (one C(GET /v1/endpoint)) and all of
    the node's Nomad allocations (one C(GET /v1/node/<id>/allocations)), then gives every endpoint of a live
    allocation the labels Netreap gave it and deletes endpoints whose allocation is gone or terminal.
  - Labels, compatible with Netreap - C(netreap:nomad.job_id=<JobID>), C(netreap:nomad.namespace=<Namespace>),
    C(netreap:nomad.task_group_id=<TaskGroup>), and C(nomad:<key>=<value>) for the job meta merged with the
    task group's meta (group wins), optionally with task meta (O(task_meta)).
  - Endpoints are matched to allocations by the container ID Nomad's CNI call passes (the allocation ID), as
    C(container-id) or, when only that is present, C(cni-attachment-id) (C(<alloc>:eth0), Cilium 1.15+); an
    endpoint without either is matched by its IP address against the allocations' C(NetworkStatus.Address).
  - Only endpoints whose labels differ are patched (C(PATCH /v1/endpoint/<id>) with container ID, container
    name, labels and state C(waiting-for-identity)), so the number of requests is 2 (3 without
    O(nomad_node_id)) plus one per change, whatever the number of endpoints. An endpoint whose allocation is
    missing from the node's list costs one more read (C(GET /v1/allocation/<id>)) before it is reaped.
  - Never touches reserved endpoints (host, health, ...), endpoints whose container ID is not a Nomad
    allocation ID, or C(reserved:init) endpoints without container ID and without an allocation at their
    address. Never deletes an endpoint on a failed or partial Nomad answer - if the allocation list cannot be
    read nothing is changed, and an endpoint whose allocation is not in the list is reaped only when
    C(GET /v1/allocation/<id>) answers 404 (an allocation the token cannot read is kept and reported).
  - HTTP 429 from the agent is retried with exponential backoff until O(retry_deadline) is spent; changes that
    could not be made are listed in RV(errors) and fail the task after every other change was made.
  - See C(docs/endpoints.md) in the collection for policies that select these labels and the agent's
    C(--labels) setting.
author:
  - netreap.cilium maintainers (@netreap)
extends_documentation_fragment:
  - netreap.cilium._attributes
  - netreap.cilium._attributes.actiongroup_nomad_cilium
  - netreap.cilium._cilium
  - netreap.cilium._nomad
options:
  nomad_node_id:
    description:
      - ID of this host's Nomad node.
      - If not set, it is read from the Nomad agent at O(nomad_address) (C(stats.client.node_id) of
        C(/v1/agent/self)), which must then be this host's client agent.
    type: str
  reap:
    description:
      - Delete endpoints whose allocation no longer exists in Nomad, or is terminal (client status
        C(complete), C(failed) or C(lost), or desired status C(stop)/C(evict) and no longer running).
    type: bool
    default: true
  reap_min_age:
    description:
      - Seconds an allocation must have been terminal (since its C(ModifyTime)) before its endpoint is reaped,
        to leave Nomad's own CNI teardown time to finish. Endpoints of allocations that no longer exist are
        reaped regardless (Nomad garbage-collects allocations long after they stopped).
    type: int
    default: 0
  meta_include:
    description:
      - Nomad meta keys to turn into C(nomad:) labels, as shell-style patterns (C(*), C(?), C([...])).
      - Every meta label takes part in the endpoint's identity unless the agent's C(--labels) filter leaves it
        out, and every distinct combination is one more identity. Keep only the keys policies need.
      - An empty list means no meta labels at all.
    type: list
    elements: str
    default: ['*']
  meta_exclude:
    description:
      - Meta keys (shell-style patterns) never turned into labels, even when O(meta_include) matches them.
    type: list
    elements: str
    default: []
  task_meta:
    description:
      - Also merge the meta of the group's tasks (task wins over group). One endpoint serves the whole group,
        so a key whose tasks set different values is dropped (with a warning).
    type: bool
    default: false
  invalid_meta:
    description:
      - What to do with a meta key or value that a Cilium selector cannot match. Cilium validates selector
        keys and values as Kubernetes labels (values at most 63 characters of C([-A-Za-z0-9_.]) with
        alphanumeric ends; C(nomad.<key>) a qualified name).
      - V(skip) leaves such a label out and warns. V(sanitize) replaces invalid characters in the value by
        C(-), cuts it to 63 characters and trims the ends (several values can then map to one label); invalid
        keys are still left out. V(keep) writes them verbatim, like Netreap (they still form identities, but
        no policy can select them).
      - Keys C(nomad.job_id), C(nomad.namespace) and C(nomad.task_group_id) are always left out - Cilium keys
        labels by name, so they would replace the C(netreap:) labels of the same name.
    type: str
    choices: [skip, sanitize, keep]
    default: skip
  retry_deadline:
    description:
      - Seconds, for the whole run, during which requests the agent refuses with HTTP 429 (its API rate
        limit) are retried with exponential backoff (honouring C(Retry-After)). Once it is spent, each remaining
        change is still tried once, without retries; changes refused then are reported in RV(errors).
    type: float
    default: 120
attributes:
  check_mode:
    support: full
    details: Reads Nomad and the agent (including the per-allocation confirmations) but writes nothing.
  diff_mode:
    support: full
    details: Per endpoint, its labels before and after; reaped endpoints are absent after.
seealso:
  - module: netreap.cilium.cilium_agent_info
  - name: Cilium endpoint labels and identity-relevant labels
    description: The agent's C(--labels) option decides which labels form identities.
    link: https://docs.cilium.io/en/stable/operations/performance/scalability/identity-relevant-labels/
  - name: Netreap
    description: The daemon whose endpoint labels this module reproduces.
    link: https://github.com/cosmonic-labs/netreap
notes:
  - Run it on every Nomad client with a Cilium agent, for example from a timer or AWX schedule. Nomad's CNI
    call creates endpoints without labels (C(reserved:init)); until this module runs, no policy selects them.
  - The Nomad token needs C(node:read) and C(read-job) in the namespaces whose endpoints should be labelled; a
    namespace it cannot read is left alone (its endpoints are neither labelled nor reaped, and are reported in
    RV(skipped_endpoints)).
"""

EXAMPLES = r"""
- name: Label endpoints and reap the leftovers of finished allocations
  netreap.cilium.cilium_endpoint:
    nomad_address: http://127.0.0.1:4646
    nomad_token: "{{ nomad_reaper_token }}"
  register: endpoints

- name: Only the meta keys our policies use, and never delete anything
  netreap.cilium.cilium_endpoint:
    cilium_socket: /var/run/cilium/cilium.sock
    nomad_node_id: "{{ nomad_node_id }}"
    meta_include: [team, tier]
    reap: false

- name: Preview the changes
  netreap.cilium.cilium_endpoint:
  check_mode: true
  diff: true
  register: preview

- name: Show what would be reaped
  ansible.builtin.debug:
    msg: "{{ preview.reaped | map(attribute='id') | list }}"
"""

RETURN = r"""
node_id:
  description: The Nomad node whose allocations were compared.
  returned: success
  type: str
  sample: 5f7c1f0e-1b2a-4c3d-8e9f-0a1b2c3d4e5f
labelled:
  description: Endpoints given new labels (in check mode, that would be).
  returned: always
  type: list
  elements: dict
  sample: [{"id": 1535, "allocation": "8c9f2d3a-5b6e-4f1a-9c2d-1e2f3a4b5c6d", "name": "web.frontend[0]",
            "job": "web", "namespace": "default", "task_group": "frontend", "matched_by": "container-id",
            "before": [], "labels": ["netreap:nomad.job_id=web", "netreap:nomad.namespace=default",
                                     "netreap:nomad.task_group_id=frontend", "nomad:team=payments"]}]
reaped:
  description: Endpoints deleted (in check mode, that would be), with the reason.
  returned: always
  type: list
  elements: dict
  sample: [{"id": 2210, "allocation": "1d0c7a52-6f1e-4b8e-9d52-3f0a8b7c6e21",
            "reason": "allocation is terminal (client status complete, desired status stop)",
            "labels": ["netreap:nomad.job_id=nightly-report"]}]
unchanged:
  description: Endpoints whose labels were already right.
  returned: always
  type: list
  elements: dict
  sample: [{"id": 871, "allocation": "0b6f3b8e-58c2-4f6f-a3f0-7e0f1c2d3b4a"}]
skipped_endpoints:
  description: Endpoints left alone, with the reason (reserved, not from Nomad, not confirmed gone, ...).
  returned: always
  type: list
  elements: dict
  sample: [{"id": 12, "container_id": null, "allocation": null, "reason": "reserved endpoint (reserved:host)"}]
errors:
  description: Changes that could not be made (the task then fails after making all the others).
  returned: always
  type: list
  elements: dict
  sample: [{"id": 1535, "allocation": "8c9f2d3a-5b6e-4f1a-9c2d-1e2f3a4b5c6d", "action": "label",
            "msg": "label endpoint 1535 (allocation 8c9f2d3a-5b6e-4f1a-9c2d-1e2f3a4b5c6d): cilium HTTP 429: ..."}]
meta_notes:
  description: Meta keys dropped or sanitised, once per job and key, with the number of allocations concerned.
  returned: always
  type: list
  elements: dict
  sample: [{"namespace": "default", "job": "web", "key": "owner", "value": "Jane Doe", "action": "dropped",
            "reason": "not a valid label value ...", "allocations": 3}]
requests:
  description: HTTP requests sent to each service (retries included).
  returned: always
  type: dict
  sample: {"nomad": 2, "cilium": 3}
"""

import re
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netreap.cilium.plugins.module_utils._cilium import (
    CILIUM_ARGUMENT_SPEC,
    CiliumClient,
)
from ansible_collections.netreap.cilium.plugins.module_utils._endpoint_plan import (
    INVALID_META_CHOICES,
    LabelSettings,
    plan_endpoints,
    summarize_notes,
)
from ansible_collections.netreap.cilium.plugins.module_utils._http import (
    ServiceError,
    failure_message,
)
from ansible_collections.netreap.cilium.plugins.module_utils._nomad import (
    NOMAD_ARGUMENT_SPEC,
    NomadClient,
)

# With a deadline the count is not what limits 429 retries; keep it out of the way.
RETRIES_WITHIN_DEADLINE = 1000


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
        self.cilium.http.deadline = max(self.deadline_at - self.clock(), 0.0)
        self.cilium.http.retries = RETRIES_WITHIN_DEADLINE

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


def build_diff(plan):
    before, after = {}, {}
    for item in plan["patches"]:
        key = "endpoint %s (%s)" % (item["id"], item["allocation"])
        before[key] = item["before"]
        after[key] = item["labels"]
    for item in plan["reaps"]:
        before["endpoint %s (%s)" % (item["id"], item["allocation"])] = item["labels"]
    return {"before": before, "after": after}


def public(item):
    return {k: v for k, v in item.items() if k != "request"}


def main():
    argument_spec = dict(
        nomad_node_id=dict(type="str"),
        reap=dict(type="bool", default=True),
        reap_min_age=dict(type="int", default=0),
        meta_include=dict(type="list", elements="str", default=["*"]),
        meta_exclude=dict(type="list", elements="str", default=[]),
        task_meta=dict(type="bool", default=False),
        invalid_meta=dict(type="str", choices=list(INVALID_META_CHOICES), default="skip"),
        retry_deadline=dict(type="float", default=120.0),
    )
    argument_spec.update(NOMAD_ARGUMENT_SPEC)
    argument_spec.update(CILIUM_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    if params["reap_min_age"] < 0:
        module.fail_json(msg="reap_min_age must be 0 or more seconds, got %s" % params["reap_min_age"])
    if params["retry_deadline"] < 0:
        module.fail_json(msg="retry_deadline must be 0 or more seconds, got %s" % params["retry_deadline"])
    for option in ("meta_include", "meta_exclude"):
        for pattern in params[option]:
            # fnmatch reads an unclosed "[" literally and "" matches no key: both are typos.
            if not pattern.strip() or "[" in re.sub(r"\[!?\]?[^\]]*\]", "", pattern):
                module.fail_json(msg="%s: %r is not a meta key pattern (an empty pattern or an unclosed '[')"
                                 % (option, pattern))
    started = time.monotonic()
    deadline_at = started + params["retry_deadline"]
    nomad = endpoints = allocations = None
    try:
        nomad = NomadClient.from_params(params)
    except ValueError as exc:
        module.fail_json(msg="Nomad connection settings: %s" % exc)
    # Reads keep the client's few retries (a wrong socket path fails in seconds); writes get
    # the run's whole retry_deadline (Applier).
    cilium = CiliumClient.from_params(params, deadline=params["retry_deadline"])
    settings = LabelSettings(params["meta_include"], params["meta_exclude"], params["task_meta"],
                             params["invalid_meta"])
    empty = dict(labelled=[], reaped=[], unchanged=[], skipped_endpoints=[], errors=[], meta_notes=[])

    def requests():
        return {"nomad": nomad.http.request_count, "cilium": cilium.http.request_count}

    def fail(msg, exc=None, **extra):
        result = dict(empty, requests=requests(), **extra)
        if exc is not None:
            result["status"] = exc.status
        module.fail_json(msg=msg, **result)

    node_id = params["nomad_node_id"]
    if not node_id:
        try:
            node_id = nomad.local_node_id()
        except ServiceError as exc:
            fail(failure_message("read the local Nomad agent (agent/self) for this node's ID", exc), exc)
        except ValueError as exc:
            fail(str(exc))

    # Endpoints first, then allocations: an endpoint exists only after Nomad placed its
    # allocation, so every endpoint listed has its allocation in the list that follows.
    try:
        endpoints = cilium.endpoints()
    except ServiceError as exc:
        fail(failure_message("list endpoints of the Cilium agent at %s" % cilium.socket_path, exc), exc,
             node_id=node_id)
    try:
        allocations = nomad.node_allocations(node_id)
    except ServiceError as exc:
        fail(failure_message("read the allocations of Nomad node %s (nothing was changed)" % node_id, exc), exc,
             node_id=node_id)

    def make_plan(lookups=None):
        return plan_endpoints(endpoints, allocations, node_id, settings, reap=params["reap"],
                              reap_min_age=params["reap_min_age"], now_ns=time.time_ns(), lookups=lookups)

    plan = make_plan()
    if plan["lookups_needed"]:
        if not allocations:
            # An unknown node ID also yields an empty list: then every endpoint would look orphaned.
            try:
                nomad.node(node_id)
            except ServiceError as exc:
                fail(failure_message("check Nomad node %s, whose allocation list is empty (nothing was changed)"
                                     % node_id, exc), exc, node_id=node_id)
        plan = make_plan(lookup_allocations(nomad, plan["lookups_needed"]))

    applier = Applier(cilium, deadline_at)
    labelled, reaped, skipped = [], [], list(plan["skipped"])
    for item in plan["patches"]:
        done = True if module.check_mode else applier.label(item)
        if done:
            labelled.append(public(item))
        elif done is None:
            skipped.append({"id": item["id"], "container_id": item["allocation"], "allocation": item["allocation"],
                            "reason": "endpoint vanished before it could be labelled"})
    for item in plan["reaps"]:
        if module.check_mode or applier.reap(item):
            reaped.append(item)

    warnings = list(plan["warnings"])
    notes = summarize_notes(plan["notes"])
    for note in notes:
        if note["action"] == "dropped":
            warnings.append("meta key %r of job %s/%s (%d allocation(s)) left out: %s" % (
                note["key"], note["namespace"], note["job"], note["allocations"], note["reason"]))
    unconfirmed = [s for s in skipped if s["reason"].startswith("kept: Nomad could not confirm")]
    if unconfirmed:
        warnings.append("%d endpoint(s) kept because Nomad could not confirm their allocation is gone (see "
                        "skipped_endpoints); is the Nomad token allowed to read every namespace? "
                        "(it needs the read-job capability there: namespace \"*\" { capabilities = "
                        "[\"read-job\"] })"
                        % len(unconfirmed))
    for text in warnings:
        module.warn(text)

    result = dict(changed=bool(labelled or reaped), node_id=node_id, labelled=labelled, reaped=reaped,
                  unchanged=plan["unchanged"], skipped_endpoints=skipped, errors=applier.errors, meta_notes=notes,
                  requests=requests())
    if module._diff:
        result["diff"] = build_diff({"patches": labelled, "reaps": reaped})
    if applier.errors:
        planned = len(plan["patches"]) + len(plan["reaps"])
        module.fail_json(msg="cilium_endpoint on Nomad node %s: %d of %d changes not made: %s" % (
            node_id, len(applier.errors), planned, "; ".join(f["msg"] for f in applier.errors)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
