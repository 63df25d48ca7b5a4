"""Pure kvstore GC planning: node and identity mark/sweep, guards, caps, purge, rate windows, and
the transaction packing/conflict handling of the backend adapter (with a fake client, no I/O)."""

import base64
import json

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils import _kvstore as kvs
from ansible_collections.netreap.cilium.plugins.module_utils._consul import (
    ConsulTxnError,
    key_option_problem,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore import ConsulKV, LockLost
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_types import (
    Change,
    CommitResult,
    KVEntry,
    absent_prefix,
    delete,
    delete_if,
    go_path_clean,
    put,
)
from ansible_collections.netreap.cilium.plugins.module_utils._kvstore_gc import (
    IDS_PREFIX,
    IPCACHE_PREFIX,
    VALUES_PREFIX,
    delete_cap_refusal,
    identity_range,
    mark_value,
    parse_mark,
    plan_identity_gc,
    plan_node_gc,
    rate_windows,
    value_must_match_id,
)

NOW = 1_700_000_000.0
NODES = "cilium/state/nodes/v1/default/"
MARKS = "netreap/gc/v1/nodes/default/"
ID_MARKS = "netreap/gc/v1/identities/"


def node_entry(name, ip="192.0.2.1", revision=10, cluster="default"):
    value = {"Name": name, "Cluster": cluster,
             "IPAddresses": [{"Type": "InternalIP", "IP": ip},
                             {"Type": "CiliumInternalIP", "IP": "10.0.0.1"}]}
    return KVEntry("cilium/state/nodes/v1/%s/%s" % (cluster, name), json.dumps(value).encode(), revision)


def nomad(name, status="ready", updated=None):
    node = {"Name": name, "ID": "id-" + name, "Status": status}
    if updated is not None:
        node["StatusUpdatedAt"] = updated
    return node


def mark(key, since, revision, mark_revision=50):
    return KVEntry(key, mark_value(since, revision, "not known to Nomad", "x"), mark_revision)


def names(plan, action):
    return sorted(a["item"]["name"] for a in plan.of(action))


def live_cluster(n=4):
    """n live nodes plus the stale node 'gone-1' (revision 7)."""
    kv = [node_entry("live-%d" % i, "192.0.2.%d" % (i + 10)) for i in range(n)]
    kv.append(node_entry("gone-1", "198.51.100.1", revision=7))
    return kv, [nomad("live-%d" % i) for i in range(n)]


# -- node GC: two passes ------------------------------------------------------------------------
def test_first_sighting_only_marks():
    kv, nomad_nodes = live_cluster()
    plan = plan_node_gc(kv, nomad_nodes, [], NOW, min_age=0)
    assert plan.of("delete") == []
    assert names(plan, "mark") == ["gone-1"]
    (change,) = plan.changes
    (op,) = change.ops
    assert op.kind == "put" and op.key == MARKS + "gone-1"
    assert parse_mark(KVEntry(op.key, op.value, 1)) == {
        "since": NOW, "revision": 7, "reason": "not known to Nomad", "key": NODES + "gone-1"}
    assert plan.counts == {"kvstore_nodes": 5, "nomad_nodes": 4, "live": 4, "candidates": 1}


def test_marked_long_enough_is_deleted_at_the_marked_revisions():
    kv, nomad_nodes = live_cluster()
    plan = plan_node_gc(kv, nomad_nodes, [mark(MARKS + "gone-1", NOW - 600, 7, mark_revision=33)],
                        NOW, min_age=300)
    assert names(plan, "delete") == ["gone-1"] and plan.of("mark") == []
    (action,) = plan.of("delete")
    # the node key is the last operation, both conditional on what was planned with
    assert action["change"].ops == [delete_if(MARKS + "gone-1", 33), delete_if(NODES + "gone-1", 7)]
    assert action["item"]["reason"] == "not known to Nomad"
    assert action["item"]["marked_since"] == "2023-11-14T22:03:20Z"
    assert plan.refusal is None


def test_mark_younger_than_min_age_keeps_the_node():
    kv, nomad_nodes = live_cluster()
    plan = plan_node_gc(kv, nomad_nodes, [mark(MARKS + "gone-1", NOW - 100, 7)], NOW, min_age=300)
    assert plan.actions == []
    (kept,) = plan.kept
    assert kept["name"] == "gone-1"
    assert kept["reason"] == "not known to Nomad; marked 100s ago, deleted once marked for min_age=300s"


def test_key_written_since_marked_is_marked_again_not_deleted():
    kv, nomad_nodes = live_cluster()
    plan = plan_node_gc(kv, nomad_nodes, [mark(MARKS + "gone-1", NOW - 600, revision=3)], NOW, min_age=0)
    assert plan.of("delete") == []
    (action,) = plan.of("mark")
    assert "written since it was marked" in action["item"]["reason"]
    assert parse_mark(KVEntry("k", action["change"].ops[0].value, 1))["revision"] == 7


def test_node_that_comes_back_is_unmarked_and_kept():
    kv, nomad_nodes = live_cluster()
    nomad_nodes.append(nomad("gone-1"))
    plan = plan_node_gc(kv, nomad_nodes, [mark(MARKS + "gone-1", NOW - 600, 7, mark_revision=41)],
                        NOW, min_age=0)
    assert plan.of("delete") == [] and names(plan, "unmark") == ["gone-1"]
    (action,) = plan.of("unmark")
    assert action["change"].ops == [delete_if(MARKS + "gone-1", 41)]
    assert action["item"]["reason"] == "no longer a candidate: known to Nomad (ready)"


def test_mark_of_a_vanished_node_key_is_removed():
    kv, nomad_nodes = live_cluster()
    plan = plan_node_gc(kv, nomad_nodes, [mark(MARKS + "expired", NOW - 60, 2)], NOW, min_age=0)
    (action,) = plan.of("unmark")
    assert action["item"]["name"] == "expired" and action["item"]["reason"] == "the node key is gone"


# -- node GC: what "gone" means ---------------------------------------------------------------
@pytest.mark.parametrize("nomad_nodes, down_after, verdict, reason", [
    ([nomad("n", "initializing")], None, "live", None),
    ([nomad("n", "disconnected")], 60, "kept", "disconnected in Nomad (disconnected nodes are never collected)"),
    ([nomad("n", "down", NOW - 10 * 86400)], None, "kept",
     "down in Nomad (set down_after to collect nodes down for long)"),
    ([nomad("n", "down", NOW - 100)], 3600, "kept", "down in Nomad for 100s (down_after=3600s not reached)"),
    ([nomad("n", "down", NOW - 7200)], 3600, "marked",
     "down in Nomad since 2023-11-14T20:13:20Z (longer than down_after=3600s)"),
    # a node that re-registered under a new ID while its old registration is down is live
    ([nomad("n", "down", NOW - 7200), nomad("n", "ready")], 3600, "live", None),
])
def test_nomad_status_decides(nomad_nodes, down_after, verdict, reason):
    others = [nomad("other")]
    plan = plan_node_gc([node_entry("n"), node_entry("other", "192.0.2.9")], nomad_nodes + others, [], NOW,
                        min_age=0, down_after=down_after)
    if verdict == "live":
        assert plan.actions == [] and plan.kept == [] and plan.counts["live"] == 2
    elif verdict == "kept":
        assert plan.actions == [] and [(k["name"], k["reason"]) for k in plan.kept] == [("n", reason)]
    else:
        assert [(a["item"]["name"], a["item"]["reason"]) for a in plan.of("mark")] == [("n", reason)]


def test_only_node_keys_of_the_own_cluster_are_considered():
    kv = [node_entry("live"), node_entry("gone"),
          KVEntry(NODES + "gone/sub", b"{}", 3)]  # not a node key
    plan = plan_node_gc(kv, [nomad("live")], [], NOW, min_age=0)
    assert names(plan, "mark") == ["gone"]
    assert plan.kept == [{"name": None, "key": NODES + "gone/sub",
                          "reason": "not a node key of cluster default"}]
    other = plan_node_gc([node_entry("x", cluster="eu")], [nomad("y")], [], NOW, cluster_name="eu",
                         min_age=0)
    assert [a["change"].ops[0].key for a in other.of("mark")] == ["netreap/gc/v1/nodes/eu/x"]


# -- node GC: guards ------------------------------------------------------------------------------
def test_empty_nomad_list_with_kvstore_nodes_refuses_and_plans_nothing():
    kv, unused = live_cluster()
    marks = [mark(MARKS + "gone-1", NOW - 600, 7)]
    plan = plan_node_gc(kv, [], marks, NOW, min_age=0)
    assert plan.actions == []
    assert plan.refusal.startswith("refusing to act: Nomad lists no nodes while the kvstore holds 5 node "
                                   "keys under cilium/state/nodes/v1/default/")


def test_empty_nomad_and_empty_kvstore_is_fine():
    plan = plan_node_gc([], [], [], NOW)
    assert plan.refusal is None and plan.actions == []


def _stale_cluster(live, stale):
    kv = [node_entry("live-%d" % i) for i in range(live)] + \
        [node_entry("gone-%d" % i, revision=5) for i in range(stale)]
    marks = [mark(MARKS + "gone-%d" % i, NOW - 3600, 5) for i in range(stale)]
    return kv, [nomad("live-%d" % i) for i in range(live)], marks


def test_max_delete_count_refuses():
    kv, nomad_nodes, marks = _stale_cluster(live=20, stale=4)
    plan = plan_node_gc(kv, nomad_nodes, marks, NOW, min_age=0, max_delete=3)
    assert plan.refusal == ("refusing to delete 4 node keys: more than max_delete=3. Nothing was deleted; "
                            "check why so many look stale, then raise max_delete if this is expected")
    assert plan_node_gc(kv, nomad_nodes, marks, NOW, min_age=0, max_delete=4).refusal is None


def test_max_delete_percent_refuses():
    kv, nomad_nodes, marks = _stale_cluster(live=5, stale=5)
    plan = plan_node_gc(kv, nomad_nodes, marks, NOW, min_age=0, max_delete=100, max_delete_percent=40)
    assert plan.refusal.startswith("refusing to delete 5 of 10 node keys (50%): more than max_delete_percent=40.")
    assert plan_node_gc(kv, nomad_nodes, marks, NOW, min_age=0, max_delete_percent=50).refusal is None


def test_marking_is_never_capped():
    kv, nomad_nodes, unused = _stale_cluster(live=1, stale=9)
    plan = plan_node_gc(kv, nomad_nodes, [], NOW, min_age=0, max_delete=1, max_delete_percent=10)
    assert plan.refusal is None and len(plan.of("mark")) == 9


# -- node GC: purge ---------------------------------------------------------------------------------
def ipcache(ip, host_ip, revision=20):
    return KVEntry(IPCACHE_PREFIX + ip, json.dumps({"IP": ip, "HostIP": host_ip}).encode(), revision)


def test_purge_deletes_the_nodes_ipcache_and_identity_uses_but_not_shared_ips():
    kv = [node_entry("live", "192.0.2.10"), node_entry("gone", "198.51.100.1", revision=7),
          node_entry("twin", "192.0.2.10", revision=8)]  # gone too, but its IP is reused by "live"
    marks = [mark(MARKS + "gone", NOW - 600, 7, 30), mark(MARKS + "twin", NOW - 600, 8, 31)]
    purge = {"ipcache": [ipcache("10.1.0.5", "198.51.100.1", 21), ipcache("10.2.0.5", "192.0.2.10", 22),
                         KVEntry(IPCACHE_PREFIX + "10.9.9.9", b"not json", 23)],
             "values": [KVEntry(VALUES_PREFIX + "a;/198.51.100.1", b"300", 24),
                        KVEntry(VALUES_PREFIX + "a;/192.0.2.10", b"300", 25)]}
    plan = plan_node_gc(kv, [nomad("live")], marks, NOW, min_age=0, max_delete_percent=100, purge=purge)
    deleted = {a["item"]["name"]: a for a in plan.of("delete")}
    assert deleted["gone"]["item"]["purged"] == [IPCACHE_PREFIX + "10.1.0.5", VALUES_PREFIX + "a;/198.51.100.1"]
    assert deleted["gone"]["change"].ops == [
        delete_if(IPCACHE_PREFIX + "10.1.0.5", 21), delete_if(VALUES_PREFIX + "a;/198.51.100.1", 24),
        delete_if(MARKS + "gone", 30), delete_if(NODES + "gone", 7)]
    assert deleted["twin"]["item"]["purged"] == []
    assert deleted["twin"]["item"]["purge_note"] == "not purged: 192.0.2.10 also belongs to a remaining node"


def test_an_unreadable_node_value_is_never_collected():
    kv = [node_entry("live"), KVEntry(NODES + "gone", b"garbage", 7)]
    plan = plan_node_gc(kv, [nomad("live")], [mark(MARKS + "gone", NOW - 600, 7)], NOW, min_age=0,
                        purge={"ipcache": [], "values": []})
    assert plan.of("delete") == []
    (kept,) = plan.kept
    assert kept["reason"] == "value is not Cilium node JSON: left alone (not written by an agent)"
    assert [a["item"]["mark_key"] for a in plan.of("unmark")] == [MARKS + "gone"]


# -- identity GC ----------------------------------------------------------------------------------
def enc(text):
    return base64.urlsafe_b64encode(text.encode()).decode()


def identities(encoded=False):
    """256 used (label key with a '/'), 300 unused, 301 unused whose label key is a prefix of
    a used one, 70000 from another cluster."""
    store = enc if encoded else (lambda t: t)
    used = "k8s:app.kubernetes.io/name=web;"
    ids = [KVEntry(IDS_PREFIX + "256", store(used).encode(), 11),
           KVEntry(IDS_PREFIX + "300", store("netreap:nomad.job_id=old;").encode(), 12),
           KVEntry(IDS_PREFIX + "301", store("k8s:app.kubernetes.io/name=we").encode(), 13),
           KVEntry(IDS_PREFIX + "70000", store("other;").encode(), 14)]
    values = [KVEntry(VALUES_PREFIX + store(used) + "/192.0.2.1", b"256", 15)]
    return ids, values


@pytest.mark.parametrize("encoded", [False, True], ids=["etcd", "consul"])
def test_identity_usage_by_exact_label_key(encoded):
    ids, values = identities(encoded)
    plan = plan_identity_gc(ids, values, [], NOW, encoded=encoded, min_age=0)
    marked = {a["item"]["id"]: a["item"] for a in plan.of("mark")}
    assert sorted(marked) == [300, 301]
    assert marked[300]["labels"] == "netreap:nomad.job_id=old;"  # decoded for Consul
    assert marked[301]["reason"] == "unused: no value key refers to it"
    (kept,) = plan.kept
    assert kept["id"] == 70000 and kept["reason"] == "outside this cluster's identity range 256-65535"
    assert plan.counts == {"identities": 3, "in_use": 1, "unused": 2, "out_of_range": 1}


@pytest.mark.parametrize("encoded", [False, True], ids=["etcd", "consul"])
def test_identity_sweep_requires_same_revision_and_checks_no_use_appeared(encoded):
    ids, values = identities(encoded)
    marks = [KVEntry(ID_MARKS + "300", mark_value(NOW - 1000, 12, "unused", "x"), 40),
             KVEntry(ID_MARKS + "301", mark_value(NOW - 1000, 99, "unused", "x"), 41)]
    plan = plan_identity_gc(ids, values, marks, NOW, encoded=encoded, min_age=900)
    (action,) = plan.of("delete")
    stored = enc("netreap:nomad.job_id=old;") if encoded else "netreap:nomad.job_id=old;"
    assert action["item"]["id"] == 300
    assert action["change"].ops == [absent_prefix(VALUES_PREFIX + stored + "/"),
                                    delete_if(ID_MARKS + "300", 40), delete_if(IDS_PREFIX + "300", 12)]
    (remark,) = plan.of("mark")
    assert remark["item"]["id"] == 301 and "marking again" in remark["item"]["reason"]


def test_identity_in_use_again_or_gone_loses_its_mark():
    ids, values = identities()
    marks = [KVEntry(ID_MARKS + "256", mark_value(NOW - 1000, 11, "unused", "x"), 40),
             KVEntry(ID_MARKS + "999", mark_value(NOW - 1000, 1, "unused", "x"), 41),
             KVEntry(ID_MARKS + "70000", mark_value(NOW - 1000, 14, "unused", "x"), 42)]
    plan = plan_identity_gc(ids, values, marks, NOW, min_age=0)
    unmarked = {a["item"]["id"]: a["item"]["reason"] for a in plan.of("unmark")}
    assert unmarked == {256: "in use again", 999: "the identity is gone",
                        70000: "outside this cluster's identity range 256-65535"}
    assert plan.of("delete") == []


def test_identity_caps():
    ids = [KVEntry(IDS_PREFIX + str(300 + i), ("k8s:l%d;" % i).encode(), 5) for i in range(10)]
    marks = [KVEntry(ID_MARKS + str(300 + i), mark_value(NOW - 1000, 5, "unused", "x"), 6) for i in range(10)]
    assert plan_identity_gc(ids, [], marks, NOW, min_age=0).refusal is None  # no cap by default
    assert plan_identity_gc(ids, [], marks, NOW, min_age=0, max_delete=9).refusal.startswith(
        "refusing to delete 10 identities: more than max_delete=9.")
    assert plan_identity_gc(ids, [], marks, NOW, min_age=0, max_delete_percent=90).refusal.startswith(
        "refusing to delete 10 of 10 identities (100%)")


@pytest.mark.parametrize("cluster_id, mcc, expected", [
    (0, 255, (256, 65535)), (1, 255, (65536, 131071)), (3, 511, (98304, 131071)), (0, 511, (256, 32767)),
])
def test_identity_range(cluster_id, mcc, expected):
    assert identity_range(cluster_id, mcc) == expected


# -- small pieces ---------------------------------------------------------------------------------
def test_rate_windows():
    assert rate_windows(0, 10) == []
    assert rate_windows(5, 0) == [5]
    assert rate_windows(5, 2) == [2, 2, 1]
    assert rate_windows(2500, 2500) == [2500]


def test_parse_mark_ignores_foreign_values():
    assert parse_mark(KVEntry("k", b"not json", 1)) is None
    assert parse_mark(KVEntry("k", b'{"since": 1}', 1)) is None
    assert parse_mark(None) is None


def test_cap_message_is_none_for_nothing_to_delete():
    assert delete_cap_refusal(0, 0, 0, 0, "x") is None


# -- adapter: packing and conflicts (fake Consul client) ---------------------------------------------
def test_chunks_keep_changes_whole_and_split_oversized_in_order():
    small = [Change("a", [delete("1"), delete("2")]), Change("b", [delete("3"), delete("4")])]
    big = Change("c", [delete(str(i)) for i in range(5)])
    batches = list(kvs._chunks(small + [big], capacity=3))
    assert [[(c.tag, len(ops), last) for c, ops, last in b] for b in batches] == [
        [("a", 2, True)], [("b", 2, True)], [("c", 3, False)], [("c", 2, True)]]


class FakeConsul:
    """Records transactions; answers 409 for ops whose keys are in ``stale`` (once each)."""

    def __init__(self, stale=(), lose_lock=False):
        self.stale = set(stale)
        self.lose_lock = lose_lock
        self.txns = []

    def txn_max_ops(self):
        return 128

    def txn(self, ops):
        self.txns.append(ops)
        errors = []
        if self.lose_lock:
            errors.append({"OpIndex": 0, "What": 'failed session check for key "lock"'})
        for index, op in enumerate(ops):
            if op["KV"]["Key"] in self.stale:
                errors.append({"OpIndex": index, "What": 'failed to delete key "%s", index is stale'
                               % op["KV"]["Key"]})
        if errors:
            raise ConsulTxnError("PUT", "/v1/txn", errors, json.dumps({"Errors": errors}))
        return []


class FakeFence:
    key = "lock"
    session = "sid"


def test_consul_commit_drops_conflicting_change_and_retries_the_rest():
    client = FakeConsul(stale={"n2"})
    backend = ConsulKV(client, max_ops=4)  # 4 ops per transaction
    changes = [Change("one", [delete_if("m1", 1), delete_if("n1", 2)]),
               Change("two", [delete_if("m2", 3), delete_if("n2", 4)]),
               Change("three", [put("m3", b"x")])]
    result = backend.commit(changes, fence=FakeFence())
    assert result.done == ["one", "three"]
    assert result.conflicts == {"two": "changed since planned (n2)"}
    # 3 ops per txn (one slot is the lock check): [one], [two + three] rolled back by the stale
    # key, then [three] again without the conflicting change
    assert [[op["KV"]["Verb"] for op in t] for t in client.txns] == [
        ["check-session", "delete-cas", "delete-cas"],
        ["check-session", "delete-cas", "delete-cas", "set"],
        ["check-session", "set"]]
    assert client.txns[0][1]["KV"] == {"Verb": "delete-cas", "Key": "m1", "Index": 1}
    assert result.transactions == 3


def test_consul_commit_stops_when_the_lock_is_lost():
    backend = ConsulKV(FakeConsul(lose_lock=True))
    result = CommitResult()
    with pytest.raises(LockLost) as caught:
        backend.commit([Change("one", [delete_if("n1", 2)])], fence=FakeFence(), result=result)
    assert "lost the leader lock lock" in str(caught.value)
    assert result.done == []


def test_change_larger_than_a_transaction_commits_its_node_key_last():
    # a node with many purged keys: split over transactions, the node key and mark in the last
    client = FakeConsul(stale={"node"})
    backend = ConsulKV(client, max_ops=3)  # two ops per transaction besides the lock check
    big = Change("big", [delete_if("ip1", 1), delete_if("ip2", 2), delete_if("mark", 3), delete_if("node", 4)])
    result = backend.commit([big], fence=FakeFence())
    assert [[op["KV"]["Key"] for op in t[1:]] for t in client.txns] == [["ip1", "ip2"], ["mark", "node"]]
    assert result.done == [] and result.partial == ["big"]
    assert result.conflicts == {"big": "changed since planned (node)"}


# -- Go's path.Clean and identity value keys after cleaning ---------------------------------------
@pytest.mark.parametrize("path, cleaned", [
    # the examples of Go's path.Clean documentation
    ("a/c", "a/c"), ("a//c", "a/c"), ("a/c/.", "a/c"), ("a/c/b/..", "a/c"), ("/../a/c", "/a/c"),
    ("/../a/b/../././/c", "/a/c"), ("", "."),
    # and the corner cases of its rules
    ("/", "/"), ("//", "/"), (".", "."), ("..", ".."), ("../..", "../.."), ("a/../..", ".."),
    ("a/", "a"), ("abc/def/../../..", ".."), ("/abc/def/../../..", "/"), ("https://x", "https:/x"),
])
def test_go_path_clean(path, cleaned):
    assert go_path_clean(path) == cleaned


URL_LABELS = "netreap:nomad.meta.url=https://example.org//a/./b;netreap:nomad.task_group_id=web;"


def test_identity_with_slashes_in_a_label_is_used_by_its_cleaned_value_keys():
    """Cilium writes value keys with path.Join: "https://example.org//a/./b" appears as
    "https:/example.org/a/b".  The identity is in use; the raw label key would say it is not."""
    ids = [KVEntry(IDS_PREFIX + "400", URL_LABELS.encode(), 11)]
    cleaned = VALUES_PREFIX + "netreap:nomad.meta.url=https:/example.org/a/b;netreap:nomad.task_group_id=web;"
    values = [KVEntry(cleaned + "/192.0.2.1", b"400", 15)]
    marks = [KVEntry(ID_MARKS + "400", mark_value(NOW - 1000, 11, "unused", "x"), 40)]
    plan = plan_identity_gc(ids, values, marks, NOW, min_age=0)
    assert plan.of("delete") == [] and plan.of("mark") == []
    assert [a["item"]["reason"] for a in plan.of("unmark")] == ["in use again"]
    assert plan.counts["in_use"] == 1
    # once the last user is gone it is collected, and the etcd guard checks the cleaned prefix
    plan = plan_identity_gc(ids, [], marks, NOW, min_age=0)
    (action,) = plan.of("delete")
    assert action["change"].ops[0] == absent_prefix(cleaned + "/")


def test_identity_whose_label_key_leaves_the_value_prefix_is_left_alone():
    ids = [KVEntry(IDS_PREFIX + "401", b"netreap:x=../../../../../y;", 11)]
    plan = plan_identity_gc(ids, [], [], NOW, min_age=0)
    assert plan.of("mark") == [] and "leaves the value prefix" in plan.kept[0]["reason"]


@pytest.mark.parametrize("version, rule", [
    (None, False), ("1.16.5", False), ("1.18.5", False), ("1.18.6", True), ("v1.18.10", True),
    ("1.19.0", True), ("2.0.0", True), ("not-a-version", False),
])
def test_value_must_match_id_from_1_18_6(version, rule):
    assert value_must_match_id(version) is rule


def test_value_key_holding_another_id_counts_only_before_1_18_6():
    """From 1.18.6 the operator counts a value key only when it holds the identity's ID."""
    ids = [KVEntry(IDS_PREFIX + "500", b"netreap:a=b;", 11), KVEntry(IDS_PREFIX + "501", b"netreap:c=d;", 12)]
    values = [KVEntry(VALUES_PREFIX + "netreap:a=b;/192.0.2.1", b"499", 15),   # stale: another ID
              KVEntry(VALUES_PREFIX + "netreap:c=d;/192.0.2.1", b"501", 16)]
    before = plan_identity_gc(ids, values, [], NOW, min_age=0)
    assert before.of("mark") == [] and before.counts["in_use"] == 2
    after = plan_identity_gc(ids, values, [], NOW, min_age=0, match_id=True)
    (marked,) = after.of("mark")
    assert marked["item"]["id"] == 500 and "holds its ID" in marked["item"]["reason"]
    marks = [KVEntry(ID_MARKS + "500", mark_value(NOW - 1000, 11, "unused", "x"), 40)]
    (action,) = plan_identity_gc(ids, values, marks, NOW, min_age=0, match_id=True).of("delete")
    # a value key (of another ID) stays under the prefix: no "nothing under the prefix" guard
    assert action["change"].ops == [delete_if(ID_MARKS + "500", 40), delete_if(IDS_PREFIX + "500", 11)]


# -- node purge never touches a node Nomad knows ----------------------------------------------------
def test_purge_spares_the_addresses_of_nodes_nomad_still_knows():
    kv = [node_entry("live", "192.0.2.10"), node_entry("gone", "198.51.100.1", revision=7)]
    marks = [mark(MARKS + "gone", NOW - 600, 7, 30)]
    purge = {"ipcache": [ipcache("10.1.0.5", "198.51.100.1", 21)],
             "values": [KVEntry(VALUES_PREFIX + "a;/198.51.100.1", b"300", 24)]}
    # "new" is known to Nomad with the departed node's address but has written no node key yet
    nomad_nodes = [nomad("live"), dict(nomad("new"), Address="198.51.100.1")]
    plan = plan_node_gc(kv, nomad_nodes, marks, NOW, min_age=0, max_delete_percent=100, purge=purge)
    (deleted,) = plan.of("delete")
    assert deleted["item"]["purged"] == [] and "198.51.100.1" in deleted["item"]["purge_note"]
    plan = plan_node_gc(kv, [nomad("live")], marks, NOW, min_age=0, max_delete_percent=100, purge=purge)
    assert plan.of("delete")[0]["item"]["purged"] == [IPCACHE_PREFIX + "10.1.0.5", VALUES_PREFIX + "a;/198.51.100.1"]


# -- key options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, value, problem", [
    ("key", "netreap.io/policy", None), ("key", "a//b", "empty segment ('//')"),
    ("key", "a/./b", "'.' segment"), ("key", "a/../b", "'..' segment"), ("key", "/a", "must not start with '/'"),
    ("key", "a/", "must not end with '/'"), ("key", "", "must not be empty"), ("key", "..", "'..' segment"),
    ("prefix", "netreap/gc/v1/", None), ("prefix", "netreap//gc", "empty segment"),
    ("prefix", "netreap/gc//", "must not end with '/'"), ("prefix", "netreap/./gc", "'.' segment"),
    ("name", "eu-west", None), ("name", "eu/west", "single name"), ("name", ".", "must not be '.'"),
    ("name", "..", "must not be '..'"), ("name", "", "must not be empty"),
])
def test_key_option_problem(kind, value, problem):
    found = key_option_problem("opt", value, kind)
    if problem is None:
        assert found is None
    else:
        assert found.startswith("opt ") and problem in found


def test_key_option_problem_names_the_redirect_target():
    assert key_option_problem("consul_key", "netreap.io//policy") == (
        "consul_key 'netreap.io//policy' must not contain an empty segment ('//'): Consul answers such a key "
        "with a redirect to 'netreap.io/policy' and writes nothing")


# -- listings Consul may have shortened -------------------------------------------------------------
class FakeResp:
    def __init__(self, status, body):
        self.status = status
        self.body = body.encode()

    def text(self):
        return self.body.decode()


class FakeHttp:
    def __init__(self, version, token_status, token_body):
        self.version = version
        self.token = (token_status, token_body)
        self.calls = []

    def request_json(self, method, path, **unused):
        self.calls.append(path)
        if self.version is None:
            raise kvs.ServiceError("consul", method, path, status=403, body="Permission denied")
        return {"Config": {"Version": self.version}}, None

    def request(self, method, path, **unused):
        self.calls.append(path)
        return FakeResp(*self.token)


@pytest.mark.parametrize("version, token, trusted", [
    ("1.16.0", (200, '{"Policies": []}'), True),                 # the header is sent: trusted
    ("1.11.0", (200, '{"Policies": []}'), True),
    ("1.8.7", (401, "ACL support disabled"), True),              # no ACLs: nothing is hidden
    ("1.8.7", (200, '{"Policies": [{"ID": "00000000-0000-0000-0000-000000000001"}]}'), True),
    ("1.8.7", (200, '{"Type": "management", "Legacy": true}'), True),
    ("1.8.7", (200, '{"Policies": [{"ID": "x", "Name": "gc"}]}'), False),
    (None, (200, '{"Policies": [{"ID": "x", "Name": "gc"}]}'), False),  # no agent:read
    (None, (403, "Permission denied"), False),
])
def test_acl_filtering_visible_only_when_the_server_can_tell(version, token, trusted):
    from ansible_collections.netreap.cilium.plugins.module_utils._consul import ConsulClient
    client = ConsulClient("http://consul:8500", http=FakeHttp(version, *token))
    ok, why = client.acl_filtering_visible()
    assert ok is trusted
    if not trusted:
        assert "X-Consul-Results-Filtered-By-ACLs" in why and "agent:read" in why
    backend = ConsulKV(client)
    if trusted:
        backend.check_listings_complete()
    else:
        with pytest.raises(kvs.KVStoreError, match="cannot trust the Consul listings"):
            backend.check_listings_complete()
