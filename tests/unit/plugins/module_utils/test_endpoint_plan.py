"""Planning for cilium_endpoint (pure): which labels an allocation gets, which endpoint belongs to
which allocation, what is patched, what is reaped and what is left alone - and why."""

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils._endpoint_plan import (
    LabelSettings,
    allocation_meta,
    canonical_label,
    desired_labels,
    endpoint_diff,
    is_label_value,
    is_selector_key,
    is_terminal,
    outcome,
    param_error,
    parse_label,
    plan_endpoints,
    run_warnings,
    sanitize_label_value,
    summarize_notes,
)

NODE = "5f7c1f0e-1b2a-4c3d-8e9f-0a1b2c3d4e5f"
OTHER_NODE = "6a8d2e1f-2c3b-4d4e-9f0a-1b2c3d4e5f60"
A1 = "8c9f2d3a-5b6e-4f1a-9c2d-1e2f3a4b5c6d"
A2 = "1d0c7a52-6f1e-4b8e-9d52-3f0a8b7c6e21"
A3 = "0b6f3b8e-58c2-4f6f-a3f0-7e0f1c2d3b4a"
NOW = 1_700_000_000 * 10 ** 9
THREE = ["netreap:nomad.job_id=web", "netreap:nomad.namespace=default", "netreap:nomad.task_group_id=frontend"]


def alloc(alloc_id=A1, job="web", group="frontend", namespace="default", job_meta=None, group_meta=None,
          tasks=None, client="running", desired="run", address="10.0.1.10", modify_time=NOW, node=NODE):
    """A full Allocation as Nomad's node allocations list returns it (empty fields omitted)."""
    task_list = [{"Name": name, "Meta": meta} for name, meta in (tasks or {"app": None}).items()]
    out = {"ID": alloc_id, "Namespace": namespace, "Name": "%s.%s[0]" % (job, group), "NodeID": node,
           "JobID": job, "TaskGroup": group, "ClientStatus": client, "DesiredStatus": desired,
           "Job": {"ID": job, "Namespace": namespace, "Meta": job_meta,
                   "TaskGroups": [{"Name": group, "Meta": group_meta, "Tasks": task_list}]},
           "NetworkStatus": {"InterfaceName": "eth0" if address else "", "Address": address or "",
                             "AddressIPv6": "", "DNS": None},
           "ModifyTime": modify_time}
    return {k: v for k, v in out.items() if v not in (None, "", 0)}


def endpoint(ep_id, container_id=None, security=("reserved:init",), derived=(), ipv4=None, attachment=None):
    ids = {"pod-name": "/"}
    if container_id:
        ids["container-id"] = container_id
    if attachment:
        ids["cni-attachment-id"] = attachment
    return {"id": ep_id, "status": {
        "external-identifiers": ids,
        "labels": {"security-relevant": list(security), "derived": list(derived), "disabled": [],
                   "realized": {"user": []}},
        "networking": {"addressing": [{"ipv4": ipv4}] if ipv4 else []},
        "state": "ready"}}


def plan(endpoints, allocations, **kw):
    kw.setdefault("now_ns", NOW)
    return plan_endpoints(endpoints, allocations, NODE, **kw)


def ids(items):
    return sorted(item["id"] for item in items)


def reason_of(result, ep_id):
    return [s["reason"] for s in result["skipped"] if s["id"] == ep_id][0]


# -- label syntax ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("netreap:nomad.job_id=web", ("netreap", "nomad.job_id", "web")),
    ("nomad:team=", ("nomad", "team", "")),
    ("nomad:url=a=b", ("nomad", "url", "a=b")),
    ("reserved:init", ("reserved", "init", "")),
    ("$host", ("reserved", "host", "")),
    ("app=web", ("unspec", "app", "web")),
])
def test_labels_parse_like_cilium(text, parsed):
    assert parse_label(text) == parsed


def test_empty_value_is_compared_in_the_agents_form():
    assert canonical_label("nomad:team=") == "nomad:team"
    assert canonical_label("nomad:team=a") == "nomad:team=a"


@pytest.mark.parametrize("value, valid", [
    ("", True), ("payments", True), ("a.b-c_d", True), ("A9", True), ("x" * 63, True),
    ("x" * 64, False), ("Jane Doe", False), ("-lead", False), ("trail.", False),
    ("batch/periodic-1700000000", False), ("ünïcode", False),
])
def test_label_value_syntax(value, valid):
    assert is_label_value(value) is valid


@pytest.mark.parametrize("key, valid", [
    ("team", True), ("app.kubernetes.io", True), ("example.com/team", True),
    ("k" * 57, True), ("k" * 58, False),  # "nomad." + key: the name part is at most 63
    ("two words", False), ("Example.COM/team", False), ("a/b/c", False), ("", False), ("a=b", False),
])
def test_selector_key_syntax(key, valid):
    assert is_selector_key("nomad", key) is valid


@pytest.mark.parametrize("value, fixed", [
    ("Jane Doe", "Jane-Doe"), ("--x--", "x"), ("a/b c", "a-b-c"), ("x" * 70, "x" * 63),
    ("  ", ""), ("ü", ""),
])
def test_sanitize_maps_onto_label_syntax(value, fixed):
    assert sanitize_label_value(value) == fixed
    assert is_label_value(sanitize_label_value(value))


# -- desired labels ----------------------------------------------------------------------------

def test_job_without_meta_gets_exactly_the_three_netreap_labels():
    assert desired_labels(alloc()) == (THREE, [])


def test_group_meta_wins_over_job_meta():
    labels, notes = desired_labels(alloc(job_meta={"team": "payments", "tier": "edge"},
                                         group_meta={"tier": "front"}))
    assert labels == sorted(THREE + ["nomad:team=payments", "nomad:tier=front"])
    assert notes == []


def test_meta_of_other_groups_is_ignored():
    a = alloc(group_meta={"tier": "front"})
    a["Job"]["TaskGroups"].insert(0, {"Name": "admin", "Meta": {"tier": "back", "admin": "yes"}})
    assert desired_labels(a)[0] == sorted(THREE + ["nomad:tier=front"])


def test_task_meta_only_when_asked_and_task_wins():
    a = alloc(job_meta={"tier": "edge"}, tasks={"app": {"tier": "app", "lang": "go"}, "sidecar": None})
    assert desired_labels(a)[0] == sorted(THREE + ["nomad:tier=edge"])
    labels, notes = desired_labels(a, LabelSettings(task_meta=True))
    # "sidecar" inherits tier=edge while "app" says tier=app: one endpoint, two values - dropped.
    assert labels == sorted(THREE + ["nomad:lang=go"])
    assert notes == [{"key": "tier", "value": None, "action": "dropped",
                      "reason": "tasks of group frontend set different values"}]


def test_task_meta_agreeing_tasks_override_the_group():
    a = alloc(group_meta={"tier": "front"}, tasks={"app": {"tier": "app"}, "log": {"tier": "app"}})
    meta, conflicts = allocation_meta(a, task_meta=True)
    assert meta == {"tier": "app"} and conflicts == []


@pytest.mark.parametrize("include, exclude, expected", [
    (["*"], [], ["nomad:owner=ops", "nomad:team=payments", "nomad:tier=front"]),
    (["t*"], [], ["nomad:team=payments", "nomad:tier=front"]),
    (["*"], ["tier", "own?r"], ["nomad:team=payments"]),
    ([], [], []),
])
def test_meta_key_allow_and_deny_lists(include, exclude, expected):
    a = alloc(job_meta={"team": "payments", "owner": "ops"}, group_meta={"tier": "front"})
    labels, notes = desired_labels(a, LabelSettings(meta_include=include, meta_exclude=exclude))
    assert labels == sorted(THREE + expected) and notes == []


def test_invalid_meta_values_are_skipped_by_default_and_reported():
    a = alloc(job_meta={"owner": "Jane Doe", "team": "payments"})
    labels, notes = desired_labels(a)
    assert labels == sorted(THREE + ["nomad:team=payments"])
    assert [(n["key"], n["value"], n["action"]) for n in notes] == [("owner", "Jane Doe", "dropped")]
    assert "not a valid label value" in notes[0]["reason"]


def test_invalid_meta_values_sanitized_on_request():
    a = alloc(job_meta={"owner": "Jane Doe", "path": "///"})
    labels, notes = desired_labels(a, LabelSettings(invalid_meta="sanitize"))
    assert labels == sorted(THREE + ["nomad:owner=Jane-Doe"])
    assert [(n["key"], n["action"]) for n in notes] == [("owner", "sanitized"), ("path", "dropped")]


def test_invalid_meta_kept_verbatim_like_netreap_on_request():
    a = alloc(job_meta={"owner": "Jane Doe", "two words": "x", "a=b": "c"})
    labels, notes = desired_labels(a, LabelSettings(invalid_meta="keep"))
    assert labels == sorted(THREE + ["nomad:owner=Jane Doe", "nomad:two words=x"])
    assert [(n["key"], n["action"]) for n in notes] == [("a=b", "dropped")]


@pytest.mark.parametrize("mode", ["skip", "sanitize"])
def test_invalid_meta_keys_are_never_sanitized(mode):
    labels, notes = desired_labels(alloc(job_meta={"two words": "x"}), LabelSettings(invalid_meta=mode))
    assert labels == THREE
    assert notes[0]["action"] == "dropped" and "label key" in notes[0]["reason"]


@pytest.mark.parametrize("mode", ["skip", "sanitize", "keep"])
def test_meta_cannot_replace_the_netreap_labels(mode):
    # Cilium keys labels by key alone: nomad:nomad.job_id would overwrite netreap:nomad.job_id.
    a = alloc(job_meta={"nomad.job_id": "billing", "nomad.namespace": "prod"})
    labels, notes = desired_labels(a, LabelSettings(invalid_meta=mode))
    assert labels == THREE
    assert sorted(n["key"] for n in notes) == ["nomad.job_id", "nomad.namespace"]


def test_empty_meta_value_is_a_label_without_value():
    assert desired_labels(alloc(job_meta={"canary": ""}))[0] == sorted(THREE + ["nomad:canary"])


def test_netreap_labels_are_verbatim_even_when_not_selectable():
    a = alloc(job="report/periodic-1700000000", group="main")
    assert "netreap:nomad.job_id=report/periodic-1700000000" in desired_labels(a)[0]


def test_allocation_without_job_snapshot_uses_its_own_fields():
    a = alloc(job_meta={"team": "x"})
    del a["Job"]
    assert desired_labels(a)[0] == THREE


def test_allocation_without_job_id_cannot_be_labelled():
    a = alloc()
    del a["JobID"], a["Job"]
    with pytest.raises(ValueError, match="without JobID"):
        desired_labels(a)


def test_unknown_invalid_meta_mode_is_refused():
    with pytest.raises(ValueError, match="invalid_meta"):
        LabelSettings(invalid_meta="maybe")


@pytest.mark.parametrize("client, desired, terminal", [
    ("running", "run", False), ("pending", "run", False), ("unknown", "run", False),
    ("complete", "run", True), ("failed", "run", True), ("lost", "stop", True),
    ("complete", "stop", True), ("running", "stop", False), ("running", "evict", False),
    ("unknown", "stop", False), ("pending", "stop", True), ("pending", "evict", True),
])
def test_terminal_allocations(client, desired, terminal):
    assert is_terminal({"ClientStatus": client, "DesiredStatus": desired}) is terminal


# -- plan: labelling ---------------------------------------------------------------------------

def test_unlabelled_endpoint_is_patched_like_netreap():
    result = plan([endpoint(7, A1)], [alloc(job_meta={"team": "payments"})])
    assert ids(result["patches"]) == [7]
    item = result["patches"][0]
    assert item["before"] == ["reserved:init"]
    assert item["request"] == {"container-id": A1, "container-name": "web.frontend[0]",
                               "labels": sorted(THREE + ["nomad:team=payments"]),
                               "state": "waiting-for-identity"}
    assert (item["job"], item["namespace"], item["task_group"], item["matched_by"]) == (
        "web", "default", "frontend", "container-id")


def test_endpoint_with_right_labels_is_unchanged():
    result = plan([endpoint(7, A1, security=THREE)], [alloc()])
    assert result["unchanged"] == [{"id": 7, "allocation": A1}]
    assert result["patches"] == [] and result["warnings"] == []


def test_outdated_labels_are_replaced():
    old = THREE[:2] + ["netreap:nomad.task_group_id=frontend-old", "nomad:gone=1"]
    result = plan([endpoint(7, A1, security=old)], [alloc()])
    assert result["patches"][0]["before"] == sorted(old)
    assert result["patches"][0]["labels"] == THREE


def test_labels_moved_to_derived_by_the_agents_filter_count_as_present():
    # --labels "netreap:.*": meta labels are derived, not security-relevant.
    ep = endpoint(7, A1, security=THREE, derived=["nomad:team=payments"])
    result = plan([ep], [alloc(job_meta={"team": "payments"})])
    assert ids(result["unchanged"]) == [7] and result["warnings"] == []


def test_endpoint_left_at_init_by_the_agents_filter_is_not_patched_again_but_warned():
    ep = endpoint(7, A1, security=["reserved:init"], derived=THREE)
    result = plan([ep], [alloc()])
    assert ids(result["unchanged"]) == [7]
    assert "--labels" in result["warnings"][0] and "reserved:init" in result["warnings"][0]


def test_labels_compared_in_canonical_form():
    ep = endpoint(7, A1, security=THREE + ["nomad:canary"])
    assert ids(plan([ep], [alloc(job_meta={"canary": ""})])["unchanged"]) == [7]


def test_cni_attachment_id_matches_when_container_id_is_absent():
    ep = endpoint(7, attachment=A1 + ":eth0")
    result = plan([ep], [alloc()])
    assert result["patches"][0]["allocation"] == A1
    assert result["patches"][0]["matched_by"] == "cni-attachment-id"
    ep = endpoint(7, attachment=A1 + ":eth0", security=THREE)
    assert ids(plan([ep], [alloc()])["unchanged"]) == [7]


def test_ip_fallback_labels_and_records_the_container_id():
    ep = endpoint(7, ipv4="10.0.1.10")
    result = plan([ep], [alloc(), alloc(A2, job="db", address="10.0.1.11")])
    item = result["patches"][0]
    assert (item["allocation"], item["matched_by"]) == (A1, "ip")
    assert item["request"]["container-id"] == A1
    # Even with the right labels: without container ID it would be matched by IP forever.
    ep = endpoint(7, ipv4="10.0.1.10", security=THREE)
    assert ids(plan([ep], [alloc()])["patches"]) == [7]


def test_ip_fallback_ignores_terminal_allocations_and_ambiguity():
    ep = endpoint(7, ipv4="10.0.1.10")
    result = plan([ep], [alloc(client="complete", desired="stop")])
    assert result["patches"] == [] and result["reaps"] == []
    assert "without a container ID" in reason_of(result, 7)
    result = plan([ep], [alloc(), alloc(A2, address="10.0.1.10")])
    assert result["patches"] == [] and "2 allocations" in reason_of(result, 7)


def test_stopping_allocation_that_still_runs_keeps_its_endpoint():
    result = plan([endpoint(7, A1, security=THREE)], [alloc(client="running", desired="stop")])
    assert ids(result["unchanged"]) == [7] and result["reaps"] == []


# -- plan: what is never touched ---------------------------------------------------------------

def test_reserved_endpoints_are_skipped():
    eps = [endpoint(1, security=["reserved:host"]), endpoint(4, security=["reserved:health"], ipv4="10.0.1.10")]
    result = plan(eps, [alloc()])
    assert ids(result["skipped"]) == [1, 4]
    assert reason_of(result, 1) == "reserved endpoint (reserved:host)"
    assert result["patches"] == result["reaps"] == result["lookups_needed"] == []


def test_init_endpoint_without_container_is_never_reaped():
    result = plan([endpoint(9, ipv4="10.9.9.9")], [alloc()])
    assert reason_of(result, 9).startswith("reserved:init endpoint without a container ID")
    assert result["reaps"] == [] and result["lookups_needed"] == []


@pytest.mark.parametrize("cid", ["3f1e9c0a7b6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f",
                                 "web-1", A1.upper()])
def test_foreign_container_ids_are_neither_labelled_nor_reaped(cid):
    result = plan([endpoint(9, cid, security=["container:app=x"])], [])
    assert "is not a Nomad allocation ID" in reason_of(result, 9)
    assert result["reaps"] == [] and result["lookups_needed"] == []


# -- plan: reaping -----------------------------------------------------------------------------

@pytest.mark.parametrize("client, desired", [("complete", "stop"), ("failed", "run"), ("lost", "stop"),
                                             ("pending", "evict")])
def test_endpoint_of_terminal_allocation_is_reaped(client, desired):
    result = plan([endpoint(7, A1, security=THREE)], [alloc(client=client, desired=desired)])
    assert ids(result["reaps"]) == [7]
    assert result["reaps"][0]["reason"] == "allocation is terminal (client status %s, desired status %s)" % (
        client, desired)
    assert result["reaps"][0]["labels"] == THREE


def test_reap_off_keeps_terminal_and_missing():
    eps = [endpoint(7, A1, security=THREE), endpoint(8, A2)]
    result = plan(eps, [alloc(client="complete", desired="stop")], reap=False)
    assert result["reaps"] == [] and result["lookups_needed"] == [] and result["patches"] == []
    assert reason_of(result, 7).endswith("reap is off") and reason_of(result, 8).endswith("(reap is off)")


def test_minimum_age_protects_recently_terminal_allocations():
    eps = [endpoint(7, A1), endpoint(8, A2)]
    allocs = [alloc(A1, client="complete", modify_time=NOW - 30 * 10 ** 9),
              alloc(A2, client="complete", modify_time=NOW - 600 * 10 ** 9)]
    result = plan(eps, allocs, reap_min_age=300)
    assert ids(result["reaps"]) == [8]
    assert "for 30s; kept until reap_min_age (300s)" in reason_of(result, 7)
    unknown = alloc(A1, client="complete", modify_time=None)
    assert plan([endpoint(7, A1)], [unknown], reap_min_age=300)["reaps"] == []


def test_missing_allocation_is_not_reaped_before_it_is_confirmed_gone():
    result = plan([endpoint(7, A1, security=THREE), endpoint(8, A2)], [alloc(A3)])
    assert result["reaps"] == [] and result["lookups_needed"] == [A1, A2]
    assert "not confirmed gone" in reason_of(result, 7)


def test_lookup_answers_decide_missing_allocations():
    eps = [endpoint(7, A1, security=THREE), endpoint(8, A2), endpoint(9, A3)]
    lookups = {A1: ("gone", None),
               A2: ("error", 'read allocation %s: nomad HTTP 500: Unknown allocation "%s"' % (A2, A2)),
               A3: ("found", alloc(A3, node=OTHER_NODE))}
    result = plan(eps, [], lookups=lookups)
    assert ids(result["reaps"]) == [7]
    assert result["reaps"][0]["reason"] == "allocation no longer exists in Nomad"
    assert reason_of(result, 8).startswith("kept: Nomad could not confirm that allocation %s is gone" % A2)
    assert reason_of(result, 9) == "allocation %s runs on Nomad node %s, not %s" % (A3, OTHER_NODE, NODE)
    assert result["lookups_needed"] == []


def test_allocation_found_by_lookup_on_this_node_is_handled_like_a_listed_one():
    lookups = {A1: ("found", alloc(A1)), A2: ("found", alloc(A2, client="failed"))}
    result = plan([endpoint(7, A1), endpoint(8, A2)], [], lookups=lookups)
    assert ids(result["patches"]) == [7] and ids(result["reaps"]) == [8]


def test_every_endpoint_lands_in_exactly_one_list():
    eps = [endpoint(1, security=["reserved:host"]), endpoint(7, A1), endpoint(8, A2, security=THREE),
           endpoint(9, A3), endpoint(10, ipv4="10.0.1.12")]
    allocs = [alloc(A1), alloc(A2, client="complete", desired="stop"), alloc("2" * 8 + A1[8:], address="10.0.1.12")]
    result = plan(eps, allocs)
    lists = [ids(result[name]) for name in ("patches", "reaps", "unchanged", "skipped")]
    assert lists == [[7, 10], [8], [], [1, 9]]


def test_notes_are_summarised_per_job_and_key():
    allocs = [alloc(a, job_meta={"owner": "Jane Doe"}) for a in (A1, A2, A3)]
    result = plan([endpoint(n, a) for n, a in ((7, A1), (8, A2), (9, A3))], allocs)
    summary = summarize_notes(result["notes"])
    assert len(summary) == 1
    assert (summary[0]["job"], summary[0]["key"], summary[0]["allocations"]) == ("web", "owner", 3)


# -- what the run reports ------------------------------------------------------------------------

def params(**over):
    out = dict(reap_min_age=0, retry_deadline=120.0, meta_include=["*"], meta_exclude=[])
    out.update(over)
    return out


@pytest.mark.parametrize("over, message", [
    (dict(reap_min_age=-1), "reap_min_age must be 0 or more seconds, got -1"),
    (dict(retry_deadline=-0.5), "retry_deadline must be 0 or more seconds, got -0.5"),
    (dict(meta_include=["team", "[ab"]), "meta_include: '[ab' is not a meta key pattern"),
    (dict(meta_exclude=[" "]), "meta_exclude: ' ' is not a meta key pattern"),
])
def test_parameters_refused_with_the_option_named(over, message):
    assert param_error(params(**over)).startswith(message)


def test_closed_brackets_and_defaults_are_accepted():
    assert param_error(params(meta_include=["team_[ab]", "[!x]*"])) is None


def test_a_vanished_endpoint_is_reported_skipped_not_labelled():
    result = plan([endpoint(7, A1), endpoint(8, A2)], [alloc(A1), alloc(A2, job="api")])
    first, second = result["patches"]
    done = outcome(result, dict(labelled=[first], reaped=[], vanished=[second], errors=[]))
    assert ids(done["labelled"]) == [first["id"]] and "request" not in done["labelled"][0]
    assert [(s["id"], s["reason"]) for s in done["skipped_endpoints"]] == [
        (second["id"], "endpoint vanished before it could be labelled")]
    would = outcome(result)  # check mode: every planned change
    assert ids(would["labelled"]) == [7, 8] and would["errors"] == []


def test_unconfirmed_allocations_warn_once_with_the_acl_to_grant():
    lookups = {A2: ("error", 'read allocation %s: nomad HTTP 500: Unknown allocation "%s"' % (A2, A2)),
               A3: ("error", 'read allocation %s: nomad HTTP 500: Unknown allocation "%s"' % (A3, A3))}
    result = plan([endpoint(8, A2), endpoint(9, A3)], [], lookups=lookups)
    warnings = run_warnings(result, [], outcome(result)["skipped_endpoints"])
    assert len(warnings) == 1 and warnings[0].startswith("2 endpoint(s) kept because Nomad could not confirm")
    assert 'capabilities = ["read-job"]' in warnings[0]


def test_diff_shows_labels_before_and_after_and_reaped_endpoints_leaving():
    result = plan([endpoint(7, A1), endpoint(8, A2, security=THREE)], [alloc(A1), alloc(A2, client="complete")])
    diff = endpoint_diff(outcome(result))
    assert diff["before"]["endpoint 7 (%s)" % A1] == ["reserved:init"]
    assert diff["after"]["endpoint 7 (%s)" % A1] == result["patches"][0]["labels"]
    assert diff["before"]["endpoint 8 (%s)" % A2] == THREE and "endpoint 8 (%s)" % A2 not in diff["after"]
