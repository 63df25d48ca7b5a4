#!/usr/bin/env bash
# Start a drift lab per kvstore backend (Consul with Cilium 1.16, the real etcd with 1.19) and
# collect its stale nodes: check mode changes nothing, a mark run, a sweep run, a converged rerun.
set -eux
# shellcheck source=../../../lab/runme-lib.sh
source "${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium/tests/lab/runme-lib.sh"

for pair in 1.16:consul 1.19:etcd; do
  profile=${pair%%:*}
  kvstore=${pair##*:}
  lab up --state-dir "$LAB" --nodes 2 --cilium "$profile" --kvstore "$kvstore" --scenario drift
  ansible-playbook -i "$LAB/inventory.yml" test.yml -e "kvstore=$kvstore" "$@"
  lab down --state-dir "$LAB"
done
