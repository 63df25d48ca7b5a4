"""cilium_identity_gc against the lab: the operator's two-pass mark/sweep over identity master
keys, with Consul (base64url-encoded label keys, Cilium 1.16) and the real etcd (Cilium 1.19)."""

import base64
import json

import pytest

from tests.lab import httpd
from tests.lab.kvstore import IDS, labels_key
from tests.lab.scenarios import netreap_labels
from tests.support.modules import (
    CONSUL_KINDS,
    KV_BACKENDS,
    etcd_front,
    kvstore_args,
    kvstore_writes,
    run_module,
    when_logged,
)

from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import kvstore_from_params

BACKENDS = KV_BACKENDS
DEAD = [5256, 5257, 5258]  # the drift scenario's retired-a/b/c identities
MARKS = "netreap/gc/v1/identities/"


@pytest.fixture(params=BACKENDS)
def drift_lab(request, lab_factory):
    kvstore, cilium, consul = request.param
    return lab_factory(consul=consul, nodes=2, cilium=cilium, kvstore=kvstore, scenario="drift")


@pytest.fixture(params=CONSUL_KINDS)
def consul_lab(request, lab_factory):
    return lab_factory(consul=request.param, nodes=2, cilium="1.16", kvstore="consul", scenario="drift")


def ids(items):
    return sorted(i["id"] for i in items)


def marks(lab):
    return {int(k[len(MARKS):]): json.loads(v) for k, v in lab.kv.backend.list(MARKS).items()}


def dead_labels(job):
    return labels_key(netreap_labels(job, "default", "main"))


def test_dead_identities_are_swept_on_the_second_run(drift_lab):
    lab = drift_lab
    used = sorted(set(lab.kv.identities()) - set(DEAD))
    uses_before = sorted(lab.kv.identity_uses())
    assert used and uses_before  # the agents use some identities

    first = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    assert not first.failed, first
    assert first["changed"] and first["deleted"] == [] and ids(first["marked"]) == DEAD
    labels = {m["id"]: m["labels"] for m in first["marked"]}
    assert labels[5256] == dead_labels("retired-a")  # decoded, also from Consul's base64url
    assert sorted(marks(lab)) == DEAD and marks(lab)[5256]["reason"] == "unused: no value key refers to it"
    assert first["counts"] == dict(identities=len(used) + 3, in_use=len(used), unused=3, out_of_range=0,
                                   deleted=0, marked=3, unmarked=0, kept=0)

    second = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    assert not second.failed and ids(second["deleted"]) == DEAD
    assert sorted(lab.kv.identities()) == used and marks(lab) == {}
    assert sorted(lab.kv.identity_uses()) == uses_before

    before = len(kvstore_writes(lab))
    third = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    assert not third.failed and third["changed"] is False and len(kvstore_writes(lab)) == before


def test_consul_stores_label_keys_base64url_encoded(consul_lab):
    lab = consul_lab
    raw = lab.consul.kv_get(IDS + "5256")["Value"].decode()
    assert base64.urlsafe_b64decode(raw).decode() == dead_labels("retired-a")
    # a use written the way Cilium writes it on Consul (encoded segment) keeps the identity
    lab.kv.write_identity_use(dead_labels("retired-a"), "192.0.2.77", 5256)
    assert ids(run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))["marked"]) == [5257, 5258]


def test_check_mode_writes_nothing_and_predicts_the_sweep(consul_lab):
    lab = consul_lab
    before = len(kvstore_writes(lab))
    preview = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0), check_mode=True, diff=True)
    assert preview["changed"] and ids(preview["marked"]) == DEAD
    assert preview["diff"]["after"] == "".join("%s%d\n" % (MARKS, i) for i in DEAD)
    assert len(kvstore_writes(lab)) == before and marks(lab) == {}
    run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    preview = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0), check_mode=True)
    assert ids(preview["deleted"]) == DEAD and set(DEAD) <= set(lab.kv.identities())
    assert ids(run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))["deleted"]) == DEAD


def test_identity_used_again_is_unmarked_and_kept(consul_lab):
    lab = consul_lab
    run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    lab.kv.write_identity_use(dead_labels("retired-a"), lab.nodes[0].ip, 5256)
    result = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    assert ids(result["unmarked"]) == [5256] and result["unmarked"][0]["reason"] == "in use again"
    assert ids(result["deleted"]) == [5257, 5258] and 5256 in lab.kv.identities()


def test_rewritten_master_key_is_marked_again(consul_lab):
    lab = consul_lab
    run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    lab.kv.write_identity(5256, dead_labels("retired-a2"))  # a new revision of the master key
    result = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    assert ids(result["deleted"]) == [5257, 5258]
    (again,) = result["marked"]
    assert again["id"] == 5256 and "written since it was marked" in again["reason"]


def test_marks_must_be_old_enough(consul_lab):
    lab = consul_lab
    run_module("cilium_identity_gc", kvstore_args(lab))  # default min_age: 900 s
    result = run_module("cilium_identity_gc", kvstore_args(lab))
    assert result["changed"] is False and result["deleted"] == []
    assert all(k["reason"].endswith("deleted once marked for min_age=900s") for k in result["kept"])


def test_only_this_clusters_identity_range_is_touched(consul_lab):
    lab = consul_lab
    lab.kv.write_identity(70000, "k8s:app=mesh-peer;")  # cluster 1's range, unused here
    result = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    assert ids(result["marked"]) == DEAD
    assert [(k["id"], k["reason"]) for k in result["kept"]] == [
        (70000, "outside this cluster's identity range 256-65535")]
    run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    assert 70000 in lab.kv.identities()
    as_cluster_1 = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0, cluster_id=1))
    assert ids(as_cluster_1["marked"]) == [70000]


def test_rate_limit_spreads_deletions_over_windows(consul_lab):
    lab = consul_lab
    for offset, job in enumerate(("retired-d", "retired-e")):
        lab.kv.write_identity(5259 + offset, dead_labels(job))
    args = kvstore_args(lab, min_age=0, rate_limit=2, rate_interval=0.2)
    run_module("cilium_identity_gc", args)
    lab.log.clear()
    result = run_module("cilium_identity_gc", args)
    assert ids(result["deleted"]) == DEAD + [5259, 5260]
    # 5 deletions, 2 per window: 3 transactions although one would hold them all
    assert result["transactions"] == 3 and lab.log.count(service="consul", path="^/v1/txn$") == 3


def test_max_delete_caps_a_sweep(consul_lab):
    lab = consul_lab
    run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))
    before = len(kvstore_writes(lab))
    result = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0, max_delete=2))
    assert result.failed and result["msg"].startswith(
        "refusing to delete 3 identities: more than max_delete=2. Nothing was deleted")
    assert ids(result["candidates"]) == DEAD and len(kvstore_writes(lab)) == before
    assert set(DEAD) <= set(lab.kv.identities())


GC_TOKEN = "6d0c1b1e-8b8a-4d47-9d55-3e0c5c0b7a11"
HIDE_VALUES = {"": "write", "cilium/state/identities/v1/value/": "deny"}


@pytest.mark.parametrize("consul", CONSUL_KINDS)
def test_consul_listing_hidden_by_acls_is_refused(lab_factory, consul):
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift", acl=True, consul=consul)
    lab.consul.add_token(GC_TOKEN, key_prefix_rules=HIDE_VALUES, session_prefix_rules={"": "write"})
    for unused in range(2):
        result = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0, consul_token=GC_TOKEN))
        assert result.failed
        assert result["msg"].startswith("Consul hid part of cilium/state/identities/v1/value/ from this "
                                        "token (X-Consul-Results-Filtered-By-ACLs)")
    assert marks(lab) == {} and len(lab.kv.identities()) == 6  # in-use identities were not marked


def test_old_consul_that_never_flags_hidden_keys_is_not_trusted(lab_factory):
    """Consul before 1.11 (1.8.7 checked) never sends X-Consul-Results-Filtered-By-ACLs: a token
    that cannot read the value keys sees every identity unused.  The run refuses to mark unless it
    knows nothing can be hidden (a management token, or ACLs off)."""
    lab = lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="drift", acl=True,
                      consul_version="1.8.7")
    lab.consul.add_token(GC_TOKEN, key_prefix_rules=HIDE_VALUES, session_prefix_rules={"": "write"},
                         agent_prefix_rules={"": "read"})
    result = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0, consul_token=GC_TOKEN))
    assert result.failed and result["msg"] == (
        "cannot trust the Consul listings: Consul 1.8 does not say whether ACLs hid keys from a listing "
        "(X-Consul-Results-Filtered-By-ACLs exists from Consul 1.11); grant the token agent:read so the "
        "version can be checked, or use a management token. Nothing was changed")
    assert marks(lab) == {} and len(lab.kv.identities()) == 6
    managed = run_module("cilium_identity_gc", kvstore_args(lab, min_age=0))  # the management token
    assert not managed.failed and ids(managed["marked"]) == DEAD


def test_etcd_keeps_an_identity_that_gets_a_user_while_being_deleted(lab_factory):
    lab = lab_factory(nodes=2, cilium="1.19", kvstore="etcd", scenario="drift")
    args = kvstore_args(lab, min_age=0)
    run_module("cilium_identity_gc", args)
    lab.log.clear()
    # hold the deletion transaction (the lock's txn passes) and let an agent use 5256 meanwhile,
    # after the run has read the kvstore under the lock (3 listings before, 3 under the lock)
    etcd_front(lab).faults.add(httpd.Fault(action="delay", delay=1.0, path="^/v3/kv/txn$", skip=1))
    thread = when_logged(lab, "etcd", "^/v3/kv/range$", 6, lambda: lab.kv.write_identity_use(
        dead_labels("retired-a"), lab.nodes[1].ip, 5256))
    try:
        result = run_module("cilium_identity_gc", args)
    finally:
        thread.join()
    assert not result.failed, result
    assert ids(result["deleted"]) == [5257, 5258]
    (kept,) = [k for k in result["kept"] if k["id"] == 5256]
    assert "not deleted: in use again (a key appeared under cilium/state/identities/v1/value/" in kept["reason"]
    assert 5256 in lab.kv.identities()


def test_shares_the_leader_lock_with_node_gc(consul_lab):
    lab = consul_lab
    args = kvstore_args(lab, min_age=0)
    run_module("cilium_identity_gc", args)
    other = kvstore_from_params(dict(args, etcd_config=None, etcd_username=None, etcd_password=None,
                                     consul_token=None, consul_token_file=None))
    held = other.lock("service/netreaper/leader", 30, "netreap.cilium.cilium_node_gc elsewhere").acquire()
    try:
        result = run_module("cilium_identity_gc", args)
        assert result["skipped"] is True and result["changed"] is False and result["deleted"] == []
        assert result["msg"].startswith("skipped: another reaper holds the lock service/netreaper/leader")
    finally:
        held.release()
    assert ids(run_module("cilium_identity_gc", args)["deleted"]) == DEAD


URL_META = {"url": "https://example.org//a/./b"}


def identity_with(lab, text):
    found = [i for i, lkey in lab.kv.identities().items() if text in lkey]
    assert len(found) == 1, lab.kv.identities()
    return found[0]


@pytest.mark.parametrize("lab_args", BACKENDS)
def test_identity_with_double_slash_in_a_label_survives_while_used(lab_factory, lab_args):
    """A nomad: meta value "https://example.org//a/./b" is in the label key; Cilium writes its value
    keys through Go's path.Join, cleaned ("https:/example.org/a/b" in etcd).  Used by a live endpoint
    it survives any number of runs; once its last user is gone it is collected in two."""
    kvstore, cilium, consul = lab_args
    lab = lab_factory(consul=consul, nodes=2, cilium=cilium, kvstore=kvstore, scenario="clean")
    node = lab.nodes[0]
    labels = netreap_labels("portal", "default", "web", job_meta=URL_META)
    endpoint = node.cilium.add_endpoint(container_id="c0ffee00-0000-4000-8000-000000000001", labels=labels)
    identity = identity_with(lab, "https://example.org//a/./b")
    if kvstore == "etcd":  # the value key as the agent wrote it: cleaned
        (uses,) = [u for u in lab.kv.identity_uses() if u[2] == identity]
        assert "https:/example.org/a/b" in uses[0]
    args = kvstore_args(lab, min_age=0)
    for unused in range(4):
        result = run_module("cilium_identity_gc", args)
        assert not result.failed, result["msg"]
        assert identity not in ids(result["marked"] + result["deleted"])
    assert identity in lab.kv.identities() and identity not in marks(lab)

    node.cilium.remove_endpoint(endpoint["id"])
    first = run_module("cilium_identity_gc", args)
    assert ids(first["marked"]) == [identity] and identity in lab.kv.identities()
    second = run_module("cilium_identity_gc", args)
    assert ids(second["deleted"]) == [identity] and identity not in lab.kv.identities()


def test_value_key_of_another_id_counts_only_before_1_18_6(lab_factory):
    """From 1.18.6 the operator counts a value key only when it holds the identity's ID: with
    cilium_version set to such a release, an identity whose only value key holds another ID (left by
    an earlier allocation of the same labels) is collected; unset, it is kept."""
    lab = lab_factory(nodes=2, cilium="1.19", kvstore="etcd", scenario="drift")
    lab.kv.write_identity_use(dead_labels("retired-a"), lab.nodes[0].ip, 4711)  # not 5256
    old_rule = kvstore_args(lab, min_age=0)
    for unused in range(2):
        result = run_module("cilium_identity_gc", old_rule)
        assert not result.failed and 5256 not in ids(result["marked"] + result["deleted"])
    new_rule = kvstore_args(lab, min_age=0, cilium_version=lab.profile["full_version"])
    first = run_module("cilium_identity_gc", new_rule)
    marked = {m["id"]: m for m in first["marked"]}
    assert "holds its ID" in marked[5256]["reason"]
    second = run_module("cilium_identity_gc", new_rule)
    assert 5256 in ids(second["deleted"]) and 5256 not in lab.kv.identities()
    result = run_module("cilium_identity_gc", kvstore_args(lab, cilium_version="1.19"))
    assert result.failed and "cilium_version must be a release such as 1.18.6" in result["msg"]
