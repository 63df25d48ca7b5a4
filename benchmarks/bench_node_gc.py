"""Benchmark: cilium_node_gc against Netreap's node reaper, on the lab.

Builds a lab whose kvstore holds 10,000 Cilium node keys of which 1,000 belong to nodes Nomad
no longer knows (9,000 live Nomad nodes), then

1. runs netreap.cilium.cilium_node_gc twice (mark, then sweep; min_age 0) and reports the HTTP
   requests each run made (per service, from the module's own counters and the lab's request log)
   and the wall time;
2. counts what Netreap's reconcile needs for the same work, from its source (cosmonic-labs/netreap
   at f3bac8c, ``reapers/nodes.go``): one Nomad node list (the Go client does not
   paginate), one Consul KV list of the prefix and one DELETE per stale key;
3. replays that algorithm on the same lab (the 1,000 stale keys written again) to measure its
   requests and wall time too, and prints the ratio.

Not a test: nothing is asserted.  Usage (from the repository root, after ``bash scripts/setup.sh``):

    .venv/bin/python -m benchmarks.bench_node_gc [--kvstore consul|etcd] [--nodes 10000] [--stale 1000]
"""

import argparse
import shutil
import tempfile
import time

from benchmarks._env import prepare


def build(lab, total, stale):
    """``total`` node keys in the kvstore, ``total - stale`` of them known to Nomad."""
    live = total - stale
    present = len(lab.nodes)
    for i in range(present, live):
        address = "10.%d.%d.%d" % (i // 65536 + 100, i // 256 % 256, i % 256)
        lab.nomad.add_node("bench-live-%05d" % i, address=address)
    names = ["bench-live-%05d" % i for i in range(present, live)] + ["bench-stale-%05d" % i for i in range(stale)]
    write_nodes(lab, names)
    return ["bench-stale-%05d" % i for i in range(stale)]


def write_nodes(lab, names):
    """Node keys as agents write them (JSON from the lab's kvstore model), in bulk."""
    import json

    from ansible_collections.netreap.cilium.plugins.module_utils._etcd import EtcdClient, b64

    if lab.kvstore_type == "consul":
        for k, name in enumerate(names):
            lab.kv.write_node(name, "172.%d.%d.%d" % (16 + k // 65536, k // 256 % 256, k % 256),
                              "10.%d.%d.0/24" % (k // 256 % 256, k % 256))
        return
    client = EtcdClient([lab.etcd.url])
    ops = []
    for k, name in enumerate(names):
        node = {"Name": name, "Cluster": "default",
                "IPAddresses": [{"Type": "InternalIP", "IP": "172.%d.%d.%d" % (16 + k // 65536, k // 256 % 256,
                                                                               k % 256)}]}
        ops.append({"request_put": {"key": b64(lab.kv.node_key(name)), "value": b64(json.dumps(node))}})
        if len(ops) == 128:
            client.txn([], ops)
            ops = []
    if ops:
        client.txn([], ops)


def run_gc(lab, args):
    from tests.support.modules import run_module

    lab.log.clear()
    started = time.perf_counter()
    result = run_module("cilium_node_gc", args)
    elapsed = time.perf_counter() - started
    if result.get("failed"):
        raise SystemExit("cilium_node_gc failed: %s" % result["msg"])
    return result, elapsed


def netreap_replay(lab):
    """Netreap's reconcile (reapers/nodes.go) with the same building blocks: one unpaginated
    Nomad node list, one KV list of the node prefix, one DELETE per key Nomad does not know."""
    import json

    from ansible_collections.netreap.cilium.plugins.module_utils._consul import ConsulClient
    from ansible_collections.netreap.cilium.plugins.module_utils._etcd import EtcdClient
    from ansible_collections.netreap.cilium.plugins.module_utils._nomad import NomadClient

    prefix = lab.kv.node_key("")
    nomad = NomadClient(lab.nomad_endpoint.url)
    started = time.perf_counter()
    names = {n["Name"] for n in nomad.http.request_json("GET", "/v1/nodes")[0]}
    if lab.kvstore_type == "consul":
        kv = ConsulClient(lab.consul_endpoint.url)
        entries = kv.kv_list(prefix)[0]
        for entry in entries:
            if json.loads(entry["Value"])["Name"] not in names:
                kv.kv_delete(entry["Key"])
        kv_requests = kv.http.request_count
    else:  # Netreap has no etcd support: the same algorithm with etcd's delete
        kv = EtcdClient([lab.etcd.url])
        for item in kv.list_prefix(prefix)[0]:
            if json.loads(item["value"])["Name"] not in names:
                kv.delete(item["key"])
        kv_requests = kv.request_count
    elapsed = time.perf_counter() - started
    return {"kvstore": kv_requests, "nomad": nomad.http.request_count}, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--kvstore", choices=("consul", "etcd"), default="consul")
    parser.add_argument("--nodes", type=int, default=10000, help="node keys in the kvstore")
    parser.add_argument("--stale", type=int, default=1000, help="of which Nomad does not know")
    options = parser.parse_args()
    prepare()
    from tests.lab.lab import Lab
    from tests.support.modules import kvstore_args

    state_dir = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
    cilium = "1.16" if options.kvstore == "consul" else "1.19"
    lab = Lab(state_dir, nodes=1, cilium=cilium, kvstore=options.kvstore, scenario="clean").start()
    try:
        print("building: %d node keys (%d stale), %d Nomad nodes, kvstore %s ..."
              % (options.nodes, options.stale, options.nodes - options.stale, options.kvstore))
        started = time.perf_counter()
        stale = build(lab, options.nodes, options.stale)
        print("built in %.1fs\n" % (time.perf_counter() - started))
        args = kvstore_args(lab, nomad_address=lab.nomad_endpoint.url, min_age=0,
                            max_delete=options.stale, max_delete_percent=100, nomad_timeout=60,
                            consul_timeout=60, etcd_timeout=60)
        mark, mark_time = run_gc(lab, args)
        sweep, sweep_time = run_gc(lab, args)
        assert len(mark["marked"]) == options.stale and len(sweep["deleted"]) == options.stale
        assert len(lab.kv.node_names()) == options.nodes - options.stale

        write_nodes(lab, stale)  # the same stale keys again, for the replay
        replay, replay_time = netreap_replay(lab)
        assert len(lab.kv.node_names()) == options.nodes - options.stale

        ours = {k: mark["requests"][k] + sweep["requests"][k] for k in ("kvstore", "nomad")}
        ours_total = sum(ours.values())
        netreap_counted = 1 + 1 + options.stale
        replay_total = sum(replay.values())
        row = "%-44s %9s %9s %9s %10s %6s"
        print(row % ("", "requests", "kvstore", "nomad", "wall", "txns"))
        for label, requests, wall, txns in (
                ("cilium_node_gc, run 1 (mark %d)" % options.stale, mark["requests"], mark_time,
                 mark["transactions"]),
                ("cilium_node_gc, run 2 (delete %d)" % options.stale, sweep["requests"], sweep_time,
                 sweep["transactions"]),
                ("cilium_node_gc, both runs", ours, mark_time + sweep_time,
                 mark["transactions"] + sweep["transactions"])):
            print(row % (label, sum(requests.values()), requests["kvstore"], requests["nomad"],
                         "%.2fs" % wall, txns))
        print(row % ("Netreap reconcile, counted from its source", netreap_counted, 1 + options.stale, 1,
                     "-", "-"))
        print(row % ("Netreap algorithm replayed on this lab", replay_total, replay["kvstore"],
                     replay["nomad"], "%.2fs" % replay_time, "-"))
        print()
        print("ratio (Netreap requests / cilium_node_gc requests): %.1fx for both runs, %.1fx for the "
              "deleting run alone" % (netreap_counted / float(ours_total),
                                      netreap_counted / float(sum(sweep["requests"].values()))))
        print("cilium_node_gc deletes %d keys in %d transactions (each also deleting the key's mark and "
              "checking the leader lock); Netreap sends %d DELETEs, unguarded and one at a time."
              % (options.stale, sweep["transactions"], options.stale))
        print("cilium_node_gc pages the Nomad list (1,000 per page); its other requests are the lock "
              "(session or lease, acquire, release) and re-reading the kvstore under the lock.")
        print("Wall times are on localhost, where a round trip costs well under a millisecond; over a "
              "network every sequential request adds one round trip (%d for Netreap, %d here)."
              % (netreap_counted, ours_total))
    finally:
        lab.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
