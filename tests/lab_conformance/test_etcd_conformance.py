"""The real etcd of the lab, driven by an independent client (etcd3gw) next to our own
EtcdClient and the lab's kvstore writer: what one writes, the others read."""

import shutil
import tempfile
from urllib.parse import urlsplit

import etcd3gw
import pytest

from ansible_collections.netreap.cilium.plugins.module_utils._etcd import EtcdClient
from tests.lab.etcd import EtcdServer
from tests.lab.kvstore import CiliumKVStore, EtcdBackend, labels_key


@pytest.fixture(scope="module")
def etcd_server():
    state_dir = tempfile.mkdtemp(prefix="etcd-", dir="/tmp")
    server = EtcdServer(state_dir).start()
    yield server
    server.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def gw(etcd_server):
    parts = urlsplit(etcd_server.url)
    client = etcd3gw.client(host=parts.hostname, port=parts.port)
    for prefix in ("cilium/", "p/", "lock/"):
        client.delete_prefix(prefix)
    return client


@pytest.fixture
def ours(etcd_server):
    return EtcdClient([etcd_server.url])


def test_our_writes_read_by_etcd3gw(gw, ours):
    ours.put("cilium/state/nodes/v1/default/n1", b'{"Name":"n1"}')
    assert gw.get("cilium/state/nodes/v1/default/n1") == [b'{"Name":"n1"}']
    assert ours.delete("cilium/state/nodes/v1/default/n1") == 1
    assert gw.get("cilium/state/nodes/v1/default/n1") == []


def test_etcd3gw_writes_read_by_us_with_revisions(gw, ours):
    gw.put("cilium/state/identities/v1/id/256", "a;")
    gw.put("cilium/state/identities/v1/id/257", "b;")
    gw.put("cilium/state/identities/v1/idx", "not in prefix")
    items, revision = ours.list_prefix("cilium/state/identities/v1/id/")
    assert [i["key"] for i in items] == ["cilium/state/identities/v1/id/256",
                                         "cilium/state/identities/v1/id/257"]
    assert all(0 < i["mod_revision"] <= revision for i in items)
    assert ours.get("cilium/state/identities/v1/id/257")["value"] == b"b;"
    assert ours.get("missing") is None


def test_conditional_batch_delete_keeps_changed_keys(gw, ours):
    for i in range(5):
        gw.put("p/%d" % i, "v")
    items = ours.list_prefix("p/")[0]
    gw.put("p/3", "changed since we read it")
    deleted, conflicted, batches = ours.delete_if_unchanged(
        [(i["key"], i["mod_revision"]) for i in items], max_ops=2)
    # batches of 2: [0,1] deleted, [2,3] conflict (3 changed) so nothing there is deleted, [4] deleted
    assert (deleted, conflicted, batches) == (["p/0", "p/1", "p/4"], ["p/2", "p/3"], 3)
    assert sorted(k["key"].decode() for _v, k in gw.get_prefix("p/")) == ["p/2", "p/3"]


def test_lease_and_create_if_absent(gw, ours):
    lease = ours.lease_grant(30)
    assert ours.create_if_absent("lock/reaper", b"me", lease=lease) is True
    assert ours.create_if_absent("lock/reaper", b"other") is False
    assert gw.get("lock/reaper") == [b"me"]
    ours.lease_revoke(lease)
    assert gw.get("lock/reaper") == []


def test_lab_kvstore_layout_in_real_etcd(gw, etcd_server):
    kv = CiliumKVStore(EtcdBackend(etcd_server.url))
    kv.write_node("nomad-client-1", "192.0.2.1", "10.200.1.0/24")
    lkey = labels_key(["netreap:nomad.job_id=web", "netreap:nomad.namespace=default"])
    identity = kv.allocate(lkey, "192.0.2.1")
    assert identity == 256
    assert gw.get("cilium/state/identities/v1/id/256") == [lkey.encode()]
    assert gw.get("cilium/state/identities/v1/value/%s/192.0.2.1" % lkey) == [b"256"]
    assert kv.node_names() == ["nomad-client-1"]
    assert kv.identity_uses() == [(lkey, "192.0.2.1", 256)]
