#!/usr/bin/env bash
# Start a drift lab per Cilium version profile and run cilium_endpoint on every simulated node:
# check mode first (no write reaches the agents), then for real, then again (nothing to do).
set -eux
# shellcheck source=../../../lab/runme-lib.sh
source "${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium/tests/lab/runme-lib.sh"

for profile in 1.13 1.16 1.19; do
  kvstore=consul
  [ "$profile" = "1.19" ] && kvstore=etcd
  lab up --state-dir "$LAB" --nodes 2 --cilium "$profile" --kvstore "$kvstore" --scenario drift
  ansible-playbook -i "$LAB/inventory.yml" test.yml -e "profile=$profile" \
    -e "lab_dir=$LAB" -e "lab_root=$NETREAP_ROOT" -e "lab_python=$NETREAP_LAB_PY" "$@"
  lab down --state-dir "$LAB"
done
