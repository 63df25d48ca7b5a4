#!/usr/bin/env bash
# Start a drift lab per kvstore backend (Consul with Cilium 1.16, the real etcd with 1.19) and
# collect its stale nodes: check mode changes nothing, a mark run, a sweep run, a converged rerun.
set -eux
ROOT="${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium"
PY="${NETREAP_LAB_PYTHON:-${ANSIBLE_TEST_PYTHON_INTERPRETER:-python3}}"
LAB=$(mktemp -d /tmp/lab-XXXXXX)
lab() { (cd "$ROOT" && "$PY" -m tests.lab "$@"); }
trap 'lab down --state-dir "$LAB" >/dev/null; rm -rf "$LAB"' EXIT

for pair in 1.16:consul 1.19:etcd; do
  profile=${pair%%:*}
  kvstore=${pair##*:}
  lab up --state-dir "$LAB" --nodes 2 --cilium "$profile" --kvstore "$kvstore" --scenario drift
  ansible-playbook -i "$LAB/inventory.yml" test.yml -e "kvstore=$kvstore" "$@"
  lab down --state-dir "$LAB"
done
