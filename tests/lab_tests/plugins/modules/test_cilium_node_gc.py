"""cilium_node_gc against the lab, for both kvstore backends: Consul (Cilium 1.16, the Consul
simulator) and etcd (Cilium 1.19, the real etcd behind a fault-injecting proxy).

Every guard has a test here that fails when the guard is removed: Nomad errors and an empty
Nomad list change nothing, max_delete/max_delete_percent stop a sweep, the first sighting only
marks, marks younger than min_age or of a rewritten key do not delete, a node that comes back is
unmarked, the leader lock makes a second reaper skip, and a reaper that lost its lock stops."""

import json
import time

import pytest

from tests.lab import httpd
from tests.lab.kvstore import NODES
from tests.support.modules import (
    CONSUL_KINDS,
    KV_BACKENDS,
    etcd_front,
    kvstore_args,
    kvstore_writes,
    module_result,
    run_module,
    run_module_subprocess,
    when_logged,
)

from ansible_collections.netreap.cilium.plugins.module_utils._etcd import EtcdClient
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import kvstore_from_params

BACKENDS = KV_BACKENDS
RETIRED = ["nomad-client-retired-1", "nomad-client-retired-2"]
LIVE = ["nomad-client-1", "nomad-client-2", "nomad-client-3"]
MARKS = "netreap/gc/v1/nodes/default/"


@pytest.fixture(params=BACKENDS)
def drift_lab(request, lab_factory):
    kvstore, cilium, consul = request.param
    return lab_factory(consul=consul, nodes=3, cilium=cilium, kvstore=kvstore, scenario="drift")


@pytest.fixture(params=CONSUL_KINDS)
def consul_drift_lab(request, lab_factory):
    """For behaviour decided by the planner alone (the same for both backends)."""
    return lab_factory(consul=request.param, nodes=3, cilium="1.16", kvstore="consul", scenario="drift")


def gc_args(lab, **extra):
    options = dict(nomad_address=lab.nomad_endpoint.url, nomad_timeout=5)
    options.update(extra)
    return kvstore_args(lab, **options)


def names(items):
    return sorted(i["name"] for i in items)


def node_keys(lab):
    return lab.kv.node_names()


def marks(lab):
    return {k[len(MARKS):]: json.loads(v) for k, v in lab.kv.backend.list(MARKS).items()}


def add_stale_nodes(lab, count, prefix="stale"):
    for i in range(count):
        lab.kv.write_node("%s-%03d" % (prefix, i), "198.18.%d.%d" % (i // 250, i % 250 + 1),
                          "10.210.%d.0/24" % (i % 250))
    return ["%s-%03d" % (prefix, i) for i in range(count)]


# -- the drift scenario, cleaned in two runs ---------------------------------------------------
def test_drift_is_cleaned_by_mark_then_sweep_and_converges(drift_lab):
    lab = drift_lab
    first = run_module("cilium_node_gc", gc_args(lab, min_age=0))
    assert not first.failed, first
    assert first["changed"] and first["deleted"] == [] and names(first["marked"]) == RETIRED
    # the down node is not collected unless down_after says so
    assert [(k["name"], k["reason"]) for k in first["kept"]] == [
        ("nomad-client-down-1", "down in Nomad (set down_after to collect nodes down for long)")]
    assert node_keys(lab) == sorted(LIVE + RETIRED + ["nomad-client-down-1"])
    stored = marks(lab)
    assert sorted(stored) == RETIRED
    assert stored[RETIRED[0]]["reason"] == "not known to Nomad"
    assert stored[RETIRED[0]]["key"] == NODES + "default/" + RETIRED[0]
    assert first["lock"] == {"key": "service/netreaper/leader" if lab.kvstore_type == "consul"
                             else "netreap/gc/v1/leader", "acquired": True}

    second = run_module("cilium_node_gc", gc_args(lab, min_age=0))
    assert not second.failed and second["changed"]
    assert names(second["deleted"]) == RETIRED and second["marked"] == []
    assert all(d["reason"] == "not known to Nomad" for d in second["deleted"])
    assert node_keys(lab) == sorted(LIVE + ["nomad-client-down-1"]) and marks(lab) == {}

    before = len(kvstore_writes(lab))
    third = run_module("cilium_node_gc", gc_args(lab, min_age=0))
    assert not third.failed and third["changed"] is False and third["deleted"] == []
    assert len(kvstore_writes(lab)) == before  # converged: not even the lock is taken
    assert third["lock"]["acquired"] is False


def test_down_nodes_and_their_state_are_collected_when_asked(drift_lab):
    lab = drift_lab
    retired_ip = "198.51.100.10"  # the drift scenario's nomad-client-retired-1
    lab.kv.write_identity_use("netreap:nomad.job_id=gone;", retired_ip, 4242)
    live_ip = lab.nodes[0].ip
    lab.kv.write_identity_use("netreap:nomad.job_id=web;", live_ip, 4243)
    args = gc_args(lab, min_age=0, down_after=86400, purge_node_state=True)
    assert names(run_module("cilium_node_gc", args)["marked"]) == sorted(RETIRED + ["nomad-client-down-1"])
    result = run_module("cilium_node_gc", args)
    assert not result.failed, result
    deleted = {d["name"]: d for d in result["deleted"]}
    assert sorted(deleted) == sorted(RETIRED + ["nomad-client-down-1"])
    assert deleted["nomad-client-down-1"]["reason"].startswith("down in Nomad since ")
    assert "longer than down_after=86400s" in deleted["nomad-client-down-1"]["reason"]
    gone_use = [u for u in lab.kv.identity_uses() if u[1] == retired_ip]
    assert gone_use == []
    assert sorted(deleted[RETIRED[0]]["purged"]) == sorted(
        ["cilium/state/ip/v1/default/10.201.0.100",
         lab.kv.value_key("netreap:nomad.job_id=gone;", retired_ip)])
    # live nodes' ipcache entries and identity uses stay
    assert not any(p["HostIP"].startswith("198.51.100.") for p in lab.kv.ipcache().values())
    assert any(p["HostIP"] == live_ip for p in lab.kv.ipcache().values())
    assert ("netreap:nomad.job_id=web;", live_ip, 4243) in lab.kv.identity_uses()


def test_down_node_purged_from_nomad_during_the_run_counts_as_gone(consul_drift_lab):
    lab = consul_drift_lab
    lab.nomad.faults.add(httpd.Fault(status=404, body="node not found", path="^/v1/node/"))
    result = run_module("cilium_node_gc", gc_args(lab, min_age=0, down_after=86400))
    assert not result.failed, result
    marked = {m["name"]: m["reason"] for m in result["marked"]}
    assert marked == {"nomad-client-down-1": "not known to Nomad", RETIRED[0]: "not known to Nomad",
                      RETIRED[1]: "not known to Nomad"}


def test_check_mode_reports_exactly_what_would_happen_and_writes_nothing(drift_lab):
    lab = drift_lab
    before = len(kvstore_writes(lab))
    preview = run_module("cilium_node_gc", gc_args(lab, min_age=0), check_mode=True, diff=True)
    assert not preview.failed and preview["changed"] and names(preview["marked"]) == RETIRED
    assert preview["diff"]["after"] == "".join(MARKS + n + "\n" for n in RETIRED)
    assert len(kvstore_writes(lab)) == before and marks(lab) == {}
    run_module("cilium_node_gc", gc_args(lab, min_age=0))

    before = len(kvstore_writes(lab))
    preview = run_module("cilium_node_gc", gc_args(lab, min_age=0), check_mode=True, diff=True)
    assert names(preview["deleted"]) == RETIRED
    purged = [p + "\n" for d in preview["deleted"] for p in d.get("purged", [])]
    assert bool(purged) is (lab.kvstore_type == "consul")  # purge_node_state: on by default with Consul
    assert preview["diff"]["before"] == "".join(sorted(
        [NODES + "default/" + n + "\n" for n in RETIRED] + [MARKS + n + "\n" for n in RETIRED] + purged))
    assert len(kvstore_writes(lab)) == before and node_keys(lab) == sorted(
        LIVE + RETIRED + ["nomad-client-down-1"])
    real = run_module("cilium_node_gc", gc_args(lab, min_age=0), diff=True)
    assert real["deleted"] == preview["deleted"] and real["diff"] == preview["diff"]


# -- guards: Nomad -------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, expected", [
    (httpd.Fault(status=503, body="No cluster leader", path=r"^/v1/nodes(\?|$)"),
     "list Nomad nodes: nomad HTTP 503: No cluster leader. Nothing was changed"),
    (httpd.Fault(status=403, body="Permission denied", path=r"^/v1/nodes(\?|$)"),
     "list Nomad nodes: nomad HTTP 403: Permission denied (the Nomad token lacks node:read "
     "(node { policy = \"read\" })). Nothing was changed"),
    (httpd.Fault(action="hang", delay=3, path=r"^/v1/nodes(\?|$)"), "timed out"),
    (httpd.Fault(action="garbage", path=r"^/v1/nodes(\?|$)"), "response is not valid JSON"),
], ids=["5xx", "403", "timeout", "garbage"])
def test_nomad_failure_changes_nothing(lab_factory, fault, expected):
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift")
    run_module("cilium_node_gc", gc_args(lab, min_age=0))  # mark the retired nodes
    lab.nomad.faults.add(fault)
    before = len(kvstore_writes(lab))
    result = run_module("cilium_node_gc", gc_args(lab, min_age=0, nomad_timeout=0.5))
    assert result.failed and expected in result["msg"]
    assert result["msg"].startswith("list Nomad nodes: ")
    assert len(kvstore_writes(lab)) == before
    assert sorted(RETIRED) == sorted(set(node_keys(lab)) & set(RETIRED))


@pytest.mark.parametrize("lab_args", BACKENDS)
def test_empty_nomad_list_is_refused(lab_factory, lab_args):
    kvstore, cilium, consul = lab_args
    lab = lab_factory(consul=consul, nodes=2, cilium=cilium, kvstore=kvstore, scenario="drift")
    for node in list(lab.nomad._nodes):
        lab.nomad.remove_node(node)
    before = len(kvstore_writes(lab))
    for unused in range(2):  # not even a mark, so a second run cannot delete either
        result = run_module("cilium_node_gc", gc_args(lab, min_age=0))
        assert result.failed
        assert result["msg"] == (
            "refusing to act: Nomad lists no nodes while the kvstore holds 5 node keys under "
            "cilium/state/nodes/v1/default/ (a Nomad token without node:read, the wrong region or a "
            "Nomad that lost its state looks like this). Nothing was changed")
    assert len(kvstore_writes(lab)) == before and marks(lab) == {} and len(node_keys(lab)) == 5


# -- guards: caps and two passes --------------------------------------------------------------------
def test_max_delete_stops_the_sweep_until_raised(consul_drift_lab):
    lab = consul_drift_lab
    stale = add_stale_nodes(lab, 3)
    run_module("cilium_node_gc", gc_args(lab, min_age=0, max_delete_percent=100))
    before = len(kvstore_writes(lab))
    result = run_module("cilium_node_gc", gc_args(lab, min_age=0, max_delete=4, max_delete_percent=100))
    assert result.failed and result["msg"] == (
        "refusing to delete 5 node keys: more than max_delete=4. Nothing was deleted; check why so "
        "many look stale, then raise max_delete if this is expected")
    assert result["deleted"] == [] and names(result["candidates"]) == sorted(RETIRED + stale)
    assert result["changed"] is False and result["counts"]["deleted"] == 0
    assert len(kvstore_writes(lab)) == before and set(RETIRED + stale) <= set(node_keys(lab))

    result = run_module("cilium_node_gc", gc_args(lab, min_age=0, max_delete=10))  # 5 of 9: 56%
    assert result.failed and result["msg"].startswith(
        "refusing to delete 5 of 9 node keys (56%): more than max_delete_percent=50.")
    assert len(kvstore_writes(lab)) == before

    result = run_module("cilium_node_gc", gc_args(lab, min_age=0, max_delete=5, max_delete_percent=60))
    assert not result.failed and names(result["deleted"]) == sorted(RETIRED + stale)


def test_marks_must_be_old_enough(consul_drift_lab):
    lab = consul_drift_lab
    assert names(run_module("cilium_node_gc", gc_args(lab, min_age=3600))["marked"]) == RETIRED
    before = len(kvstore_writes(lab))
    young = run_module("cilium_node_gc", gc_args(lab, min_age=3600))
    assert not young.failed and young["changed"] is False and young["deleted"] == []
    reasons = {k["name"]: k["reason"] for k in young["kept"]}
    assert reasons[RETIRED[0]].startswith("not known to Nomad; marked ")
    assert reasons[RETIRED[0]].endswith(" ago, deleted once marked for min_age=3600s")
    assert len(kvstore_writes(lab)) == before  # nothing to do: zero writes
    # a mark from an hour ago (written by an earlier run) is old enough
    for name, mark in marks(lab).items():
        mark["since"] -= 3601
        lab.kv.backend.put(MARKS + name, json.dumps(mark))
    assert names(run_module("cilium_node_gc", gc_args(lab, min_age=3600))["deleted"]) == RETIRED


def test_node_that_reappears_is_unmarked_and_kept(consul_drift_lab):
    lab = consul_drift_lab
    run_module("cilium_node_gc", gc_args(lab, min_age=0))
    lab.nomad.add_node(RETIRED[0], address="198.51.100.10")
    result = run_module("cilium_node_gc", gc_args(lab, min_age=0))
    assert not result.failed
    assert names(result["unmarked"]) == [RETIRED[0]]
    assert result["unmarked"][0]["reason"] == "no longer a candidate: known to Nomad (ready)"
    assert names(result["deleted"]) == [RETIRED[1]]
    assert RETIRED[0] in node_keys(lab) and RETIRED[0] not in marks(lab)
    again = run_module("cilium_node_gc", gc_args(lab, min_age=0))
    assert again["changed"] is False and RETIRED[0] in node_keys(lab)


def test_node_key_rewritten_after_marking_is_marked_again(consul_drift_lab):
    lab = consul_drift_lab
    run_module("cilium_node_gc", gc_args(lab, min_age=0))
    lab.kv.write_node(RETIRED[0], "198.51.100.99", "10.201.9.0/24")  # an agent wrote its key again
    result = run_module("cilium_node_gc", gc_args(lab, min_age=0))
    assert names(result["deleted"]) == [RETIRED[1]]
    (again,) = result["marked"]
    assert again["name"] == RETIRED[0] and "written since it was marked" in again["reason"]
    assert RETIRED[0] in node_keys(lab)


# -- batching and partial failure ---------------------------------------------------------------
@pytest.mark.parametrize("lab_args", BACKENDS)
def test_hundreds_of_deletions_take_a_handful_of_transactions(lab_factory, lab_args):
    kvstore, cilium, consul = lab_args
    lab = lab_factory(consul=consul, nodes=3, cilium=cilium, kvstore=kvstore, scenario="clean")
    stale = add_stale_nodes(lab, 300)
    args = gc_args(lab, min_age=0, max_delete=300, max_delete_percent=100)
    service = lab.kvstore_type if kvstore == "consul" else "etcd"
    txn_path = "^/v1/txn$" if kvstore == "consul" else "^/v3/kv/txn$"
    lock_txns = 0 if kvstore == "consul" else 1  # etcd takes the lock with a create-if-absent txn
    lab.log.clear()
    marked = run_module("cilium_node_gc", args)
    assert len(marked["marked"]) == 300 and marked["transactions"] == 3  # 127 marks + lock check each
    assert lab.log.count(service=service, path=txn_path) == 3 + lock_txns
    lab.log.clear()
    swept = run_module("cilium_node_gc", args)
    assert names(swept["deleted"]) == stale and node_keys(lab) == LIVE
    # 300 x (node key + mark) = 600 conditional deletes in 127-op transactions; Netreap: 300 DELETEs
    assert swept["transactions"] == 5
    assert lab.log.count(service=service, path=txn_path) == 5 + lock_txns
    # with Consul two more listings (ipcache, identity values) per plan for the default purge
    assert lab.log.count(service=service) == swept["requests"]["kvstore"] <= (18 if kvstore == "consul" else 14)
    assert swept["requests"]["nomad"] == 1


@pytest.mark.parametrize("lab_args", BACKENDS)
def test_write_failure_midway_reports_what_was_deleted_and_a_rerun_converges(lab_factory, lab_args):
    kvstore, cilium, consul = lab_args
    lab = lab_factory(consul=consul, nodes=3, cilium=cilium, kvstore=kvstore, scenario="clean")
    stale = add_stale_nodes(lab, 6)
    # 3 ops per transaction: the lock check plus one node (node key + its mark)
    args = gc_args(lab, min_age=0, max_delete_percent=100, kvstore_txn_max_ops=3)
    run_module("cilium_node_gc", args)
    service = lab.consul if kvstore == "consul" else etcd_front(lab)
    path = "^/v1/txn$" if kvstore == "consul" else "^/v3/kv/txn$"
    # the 3rd deletion transaction fails (etcd: after the lock's own txn)
    service.faults.add(httpd.Fault(status=500, body="raft apply failed", path=path,
                                   skip=2 if kvstore == "consul" else 3))
    failed = run_module("cilium_node_gc", args)
    assert failed.failed
    assert failed["msg"].startswith("write to the %s kvstore failed: " % kvstore)
    assert "HTTP 500: raft apply failed" in failed["msg"]
    assert names(failed["deleted"]) == stale[:2]
    assert names(failed["not_applied"]) == stale[2:]
    assert node_keys(lab) == sorted(LIVE + stale[2:])
    assert sorted(marks(lab)) == stale[2:]  # nothing else lost: the rest keep their marks
    rerun = run_module("cilium_node_gc", args)
    assert not rerun.failed and names(rerun["deleted"]) == stale[2:] and node_keys(lab) == LIVE
    assert run_module("cilium_node_gc", args)["changed"] is False


# -- the leader lock ----------------------------------------------------------------------------
def test_a_second_reaper_skips_while_the_lock_is_held_then_proceeds(drift_lab):
    lab = drift_lab
    args = gc_args(lab, min_age=0)
    run_module("cilium_node_gc", args)
    other = kvstore_from_params(dict(args, etcd_config=None, etcd_username=None, etcd_password=None,
                                     consul_token=None, consul_token_file=None))
    lock_key = "service/netreaper/leader" if lab.kvstore_type == "consul" else "netreap/gc/v1/leader"
    held = other.lock(lock_key, 30, "other-host pid 1 (netreap)").acquire()
    try:
        skipped = run_module("cilium_node_gc", args)
        assert not skipped.failed and skipped["skipped"] is True and skipped["changed"] is False
        assert skipped["msg"].startswith("skipped: another reaper holds the lock %s (other-host pid 1 "
                                         "(netreap) since " % lock_key)
        assert skipped["deleted"] == [] and names(skipped["candidates"]) == RETIRED
        assert set(RETIRED) <= set(node_keys(lab))
        failed = run_module("cilium_node_gc", dict(args, on_lock_held="fail"))
        assert failed.failed and failed["msg"].startswith("another reaper holds the lock " + lock_key)
    finally:
        held.release()
    assert names(run_module("cilium_node_gc", args)["deleted"]) == RETIRED


def test_lock_of_a_dead_reaper_expires_with_its_ttl(drift_lab):
    lab = drift_lab
    if lab.kvstore_type == "consul" and lab.consul_kind == "real":
        pytest.skip("simulator only: moves its clock past the session TTL")
    args = gc_args(lab, min_age=0)
    run_module("cilium_node_gc", args)
    key = "service/netreaper/leader" if lab.kvstore_type == "consul" else "netreap/gc/v1/leader"
    ttl = 10 if lab.kvstore_type == "consul" else 2
    kvstore_from_params(dict(args, etcd_config=None, etcd_username=None, etcd_password=None,
                             consul_token=None, consul_token_file=None)).lock(key, ttl, "dead").acquire()
    # the holder "dies": never renews, never releases
    assert run_module("cilium_node_gc", args)["skipped"] is True
    if lab.kvstore_type == "consul":
        lab.consul.advance(2 * ttl + 1)  # Consul invalidates the session at up to 2 x TTL ...
        assert run_module("cilium_node_gc", args)["skipped"] is True  # ... then a 15 s lock-delay
        lab.consul.advance(16)
    else:
        time.sleep(ttl + 1.5)
    result = run_module("cilium_node_gc", args)
    assert result["skipped"] is False and names(result["deleted"]) == RETIRED


def test_two_concurrent_reapers_delete_once(drift_lab):
    lab = drift_lab
    args = gc_args(lab, min_age=0)
    run_module("cilium_node_gc", args)
    # both runs wait on their Nomad listing together, so they plan on the same state and race
    # for the lock; the winner is then held inside its write (Consul) or its lock release (etcd,
    # where taking the lock is a txn too), so the other run meets a held lock
    lab.nomad.faults.add(httpd.Fault(action="delay", delay=1.0, path=r"^/v1/nodes(\?|$)", count=2))
    if lab.kvstore_type == "consul":
        lab.consul.faults.add(httpd.Fault(action="delay", delay=1.0, path="^/v1/txn$"))
    else:
        etcd_front(lab).faults.add(httpd.Fault(action="delay", delay=1.0, path="^/v3/lease/revoke$",
                                               count=2))
    procs = [run_module_subprocess("cilium_node_gc", args) for unused in range(2)]
    results = [module_result(p) for p in procs]
    assert not any(r.failed for r in results), results
    deleters = [r for r in results if r["deleted"]]
    assert len(deleters) == 1 and names(deleters[0]["deleted"]) == RETIRED
    (other,) = [r for r in results if not r["deleted"]]
    assert other["changed"] is False
    assert other["skipped"] is True and other["msg"].startswith("skipped: another reaper holds the lock")
    assert node_keys(lab) == sorted(LIVE + ["nomad-client-down-1"])


def end_lock_session(lab, key="service/netreaper/leader"):
    """End the Consul session holding the leader lock (the simulator or a real server): release
    the key, then destroy the session -- releasing first starts no lock-delay, so the next lab on
    a shared real server can take the lock at once."""
    import http.client
    session = lab.consul.kv_get(key)["Session"]
    host, port = lab.consul_endpoint.url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"X-Consul-Token": lab.tokens["consul"]} if lab.acl else {}
    try:
        for path in ("/v1/kv/%s?release=%s" % (key, session), "/v1/session/destroy/" + session):
            conn.request("PUT", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, (path, resp.status)
    finally:
        conn.close()


def test_reaper_that_loses_its_lock_stops_writing(drift_lab):
    lab = drift_lab
    stale = add_stale_nodes(lab, 2)
    args = gc_args(lab, min_age=0, max_delete_percent=100, kvstore_txn_max_ops=3,  # a node per txn
                   purge_node_state=False)
    run_module("cilium_node_gc", args)
    lab.log.clear()
    # the second deletion transaction is held for a second; meanwhile the lock goes away
    if lab.kvstore_type == "consul":
        lab.consul.faults.add(httpd.Fault(action="delay", delay=1.0, path="^/v1/txn$", skip=1))
        # the session ends (as when it expires): Consul releases the lock key under us
        thread = when_logged(lab, "consul", "^/v1/txn$", 1, lambda: end_lock_session(lab))
    else:
        etcd_front(lab).faults.add(httpd.Fault(action="delay", delay=1.0, path="^/v3/kv/txn$", skip=2))
        client = EtcdClient([lab.etcd.url])
        thread = when_logged(lab, "etcd", "^/v3/kv/txn$", 2, lambda: client.lease_revoke(
            client.get("netreap/gc/v1/leader")["lease"]))  # lock txn + first deletion
    try:
        result = run_module("cilium_node_gc", args)
    finally:
        thread.join()
    assert result.failed and result["msg"].startswith("lost the leader lock ")
    assert "stopped writing" in result["msg"]
    deleted = names(result["deleted"])
    assert len(deleted) == 1  # the first transaction, before the lock was lost
    remaining = sorted(set(RETIRED + stale) - set(deleted))
    assert names(result["not_applied"]) == remaining
    assert set(remaining) <= set(node_keys(lab)) and sorted(marks(lab)) == remaining


@pytest.mark.parametrize("consul", CONSUL_KINDS)
def test_on_consul_a_reaped_node_takes_its_identities_with_it(lab_factory, consul):
    """Consul never expires an agent's keys: a node removed from Nomad leaves its value keys and
    ipcache entries behind.  Node GC purges them by default on Consul, so identity GC collects
    the identities used only on that node within two runs; one also used on a live node stays."""
    from tests.lab.scenarios import netreap_labels

    lab = lab_factory(nodes=3, cilium="1.16", kvstore="consul", scenario="clean", consul=consul)
    gone, live = lab.nodes[2], lab.nodes[0]
    gone.cilium.add_endpoint(container_id="0a000000-0000-4000-8000-000000000001",
                             labels=netreap_labels("only-there", "default", "main"))
    shared = netreap_labels("everywhere", "default", "main")
    gone.cilium.add_endpoint(container_id="0a000000-0000-4000-8000-000000000002", labels=shared)
    live.cilium.add_endpoint(container_id="0a000000-0000-4000-8000-000000000003", labels=shared)
    by_job = {lkey.split(";")[0]: i for i, lkey in lab.kv.identities().items()}
    only_id = by_job["netreap:nomad.job_id=only-there"]
    shared_id = by_job["netreap:nomad.job_id=everywhere"]

    lab.nomad.remove_node(gone.node_id)  # the node and its agent are gone; Consul keeps its keys
    left_behind = sorted([k for k in lab.kv.backend.list("cilium/state/ip/v1/default/")
                          if json.loads(lab.kv.backend.get(k))["HostIP"] == gone.ip] +
                         [lab.kv.value_key(lkey, gone.ip) for lkey, suffix, unused in lab.kv.identity_uses()
                          if suffix == gone.ip])
    assert len(left_behind) >= 3  # its endpoints' ipcache entries and its two identity uses
    args = gc_args(lab, min_age=0)
    first = run_module("cilium_node_gc", args)
    assert not first.failed and names(first["marked"]) == [gone.name], first
    reaped = run_module("cilium_node_gc", args)
    assert not reaped.failed, reaped["msg"]
    (deleted,) = reaped["deleted"]
    assert deleted["name"] == gone.name and sorted(deleted["purged"]) == left_behind
    assert not any(u[1] == gone.ip for u in lab.kv.identity_uses())
    assert not any(p["HostIP"] == gone.ip for p in lab.kv.ipcache().values())

    identity_args = kvstore_args(lab, min_age=0)
    first = run_module("cilium_identity_gc", identity_args)
    second = run_module("cilium_identity_gc", identity_args)
    assert not first.failed and not second.failed, (first, second)
    assert [d["id"] for d in first["deleted"] + second["deleted"]] == [only_id]
    assert only_id not in lab.kv.identities() and shared_id in lab.kv.identities()


@pytest.mark.parametrize("consul", CONSUL_KINDS)
def test_on_consul_without_purge_a_reaped_nodes_identities_stay_in_use(lab_factory, consul):
    """The reason for the Consul default: with purge_node_state=false nothing ever removes the
    departed agent's value keys, so its identities look used forever."""
    from tests.lab.scenarios import netreap_labels

    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="clean", consul=consul)
    gone = lab.nodes[1]
    gone.cilium.add_endpoint(container_id="0b000000-0000-4000-8000-000000000001",
                             labels=netreap_labels("only-there", "default", "main"))
    lab.nomad.remove_node(gone.node_id)
    args = gc_args(lab, min_age=0, purge_node_state=False)
    run_module("cilium_node_gc", args)
    reaped = run_module("cilium_node_gc", args)
    assert names(reaped["deleted"]) == [gone.name] and "purged" not in reaped["deleted"][0]
    for unused in range(3):
        result = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
        assert result["marked"] == [] and result["deleted"] == []


def test_etcd_keeps_purge_off_by_default(lab_factory):
    """etcd expires a departed agent's keys with its lease: node GC leaves them to it."""
    lab = lab_factory(nodes=2, cilium="1.19", kvstore="etcd", scenario="clean")
    gone = lab.nodes[1]
    lab.kv.write_identity_use("netreap:nomad.job_id=x;", gone.ip, 4242)
    lab.nomad.remove_node(gone.node_id)
    args = gc_args(lab, min_age=0)
    run_module("cilium_node_gc", args)
    reaped = run_module("cilium_node_gc", args)
    assert names(reaped["deleted"]) == [gone.name] and "purged" not in reaped["deleted"][0]
    assert ("netreap:nomad.job_id=x;", gone.ip, 4242) in lab.kv.identity_uses()
