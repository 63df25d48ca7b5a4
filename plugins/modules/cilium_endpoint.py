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

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netreap.cilium.plugins.module_utils._cilium import (
    CILIUM_ARGUMENT_SPEC,
    CiliumClient,
)
from ansible_collections.netreap.cilium.plugins.module_utils._endpoint_apply import Applier, lookup_allocations
from ansible_collections.netreap.cilium.plugins.module_utils._endpoint_plan import (
    INVALID_META_CHOICES,
    LabelSettings,
    endpoint_diff,
    outcome,
    param_error,
    plan_endpoints,
    run_warnings,
    summarize_notes,
)
from ansible_collections.netreap.cilium.plugins.module_utils._nomad import (
    NOMAD_ARGUMENT_SPEC,
    NomadClient,
)
from ansible_collections.netreap.cilium.plugins.module_utils._run import Run, Stop


def read(run, params, clients):
    """The node's ID, its endpoints, then its allocations (an endpoint exists only after Nomad
    placed its allocation, so every endpoint listed has its allocation in the list that follows),
    and the answers for allocations missing from that list."""
    if param_error(params):
        raise Stop(param_error(params))
    try:
        nomad = clients["nomad"] = NomadClient.from_params(params)
    except ValueError as exc:
        raise Stop("Nomad connection settings: %s" % exc)
    # Reads keep the client's few retries (a wrong socket path fails in seconds); writes get
    # the run's whole retry_deadline (Applier).
    cilium = clients["cilium"] = CiliumClient.from_params(params, deadline=params["retry_deadline"])
    node_id = params["nomad_node_id"]
    if not node_id:
        run.doing("read the local Nomad agent (agent/self) for this node's ID")
        try:
            node_id = nomad.local_node_id()
        except ValueError as exc:
            raise Stop(str(exc))
    run.result["node_id"] = node_id
    run.doing("list endpoints of the Cilium agent at %s" % cilium.socket_path)
    state = dict(node_id=node_id, endpoints=cilium.endpoints(), now_ns=time.time_ns(), lookups=None)
    run.doing("read the allocations of Nomad node %s (nothing was changed)" % node_id)
    state["allocations"] = nomad.node_allocations(node_id)
    needed = plan(params, state)["lookups_needed"]
    if needed:
        if not state["allocations"]:
            # An unknown node ID also yields an empty list: then every endpoint would look orphaned.
            run.doing("check Nomad node %s, whose allocation list is empty (nothing was changed)" % node_id)
            nomad.node(node_id)
        state["lookups"] = lookup_allocations(nomad, needed)
    return state


def plan(params, state):
    settings = LabelSettings(params["meta_include"], params["meta_exclude"], params["task_meta"],
                             params["invalid_meta"])
    return dict(plan_endpoints(state["endpoints"], state["allocations"], state["node_id"], settings,
                               reap=params["reap"], reap_min_age=params["reap_min_age"], now_ns=state["now_ns"],
                               lookups=state["lookups"]), node_id=state["node_id"])


def apply(applier, steps, progress):
    progress.update(labelled=[], reaped=[], vanished=[], errors=applier.errors)
    for item in steps["patches"]:
        done = applier.label(item)
        if done or done is None:
            progress["labelled" if done else "vanished"].append(item)
    progress["reaped"] = [item for item in steps["reaps"] if applier.reap(item)]
    if applier.errors:
        raise Stop("cilium_endpoint on Nomad node %s: %d of %d changes not made: %s" % (
            steps["node_id"], len(applier.errors), len(steps["patches"]) + len(steps["reaps"]),
            "; ".join(f["msg"] for f in applier.errors)))


def report(module, steps, progress):
    result = dict(outcome(steps, progress), node_id=steps["node_id"], unchanged=steps["unchanged"],
                  meta_notes=summarize_notes(steps["notes"]))
    result["changed"] = bool(result["labelled"] or result["reaped"])
    for text in run_warnings(steps, result["meta_notes"], result["skipped_endpoints"]):
        module.warn(text)
    return result


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
    params, clients = module.params, {}
    run = Run(module, requests={"nomad": ("nomad",), "cilium": ("cilium",)})
    run.result.update(labelled=[], reaped=[], unchanged=[], skipped_endpoints=[], errors=[], meta_notes=[])
    deadline_at = time.monotonic() + params["retry_deadline"]
    run.execute(lambda: read(run, params, clients),
                plan=lambda state: plan(params, state),
                has_changes=lambda steps: bool(steps["patches"] or steps["reaps"]),
                apply=lambda steps, progress: apply(Applier(clients["cilium"], deadline_at), steps, progress),
                report=lambda steps, progress: report(module, steps, progress),
                diff=lambda steps, progress: endpoint_diff(outcome(steps, progress)))


if __name__ == "__main__":
    main()
